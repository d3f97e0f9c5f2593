//! Envelope encryption of per-user provider keys.
//!
//! A provider key is sealed with AES-256-GCM under a fresh 256-bit data key, bound by its
//! associated data to the user, the provider and the key version; the data key is wrapped by a
//! [`Kms`]: [`LocalKek`] (a key file, the embedded default) or [`VaultTransit`] (Vault / OpenBao
//! transit). [`SecretCache`] keeps opened keys briefly for the inference path.
//!
//! Keys, data keys and plaintexts never appear in `Debug` output, error messages or logs.

mod aead;
mod cache;
mod envelope;
mod kms;
mod local;
mod resolver;
mod settings;
mod vault;

pub use cache::SecretCache;
pub use envelope::{CryptoError, KeyContext, hint, open, open_with_key, seal, seal_with_key};
pub use kms::{DATA_KEY_LEN, DataKey, Kms, KmsError};
pub use local::LocalKek;
pub use polylogue_contracts::keys::{KeyEnvelope, WrappedKey};
pub use resolver::UserKeys;
pub use settings::kms_from_settings;
pub use vault::{VaultConfig, VaultTransit};
