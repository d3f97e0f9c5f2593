//! Per-user provider keys at rest and in transit: an envelope (the secret sealed with a per-key
//! data key under AES-256-GCM, the data key wrapped by the KMS). Nothing here is plaintext; the
//! envelope may cross NATS and sit in any store.

use serde::{Deserialize, Serialize};

/// The providers a user can keep a key for, as named by the API (`claude`, `openai`, `google`).
pub const PROVIDERS: [&str; 3] = ["claude", "openai", "google"];

/// A data key wrapped by a KMS. `ciphertext` is opaque to everyone but that KMS
/// (`vault:v3:…` for Vault transit, `local:v2:…` for the local key-encryption key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// Which KMS wrapped it: `local` or `vault`.
    pub kms: String,
    /// Version of the key-encryption key (local KEK version, or transit key version).
    pub version: u32,
    pub ciphertext: String,
}

/// One stored provider key, sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEnvelope {
    /// Version of this user's key for this provider; part of the associated data, so an envelope
    /// only opens as the version it was sealed for.
    pub key_version: u64,
    pub wrapped_key: WrappedKey,
    /// Base64 (standard, padded) 96-bit AES-GCM nonce.
    pub nonce: String,
    /// Base64 (standard, padded) AES-256-GCM ciphertext with its 16-byte tag.
    pub ciphertext: String,
}
