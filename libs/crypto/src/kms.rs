//! The KMS port: something that wraps and unwraps data keys under a key-encryption key (KEK).

use std::fmt;

use async_trait::async_trait;
use polylogue_contracts::keys::WrappedKey;
use zeroize::Zeroizing;

/// Length in bytes of a data key (AES-256).
pub const DATA_KEY_LEN: usize = 32;

/// A fresh data key: its plaintext (zeroized on drop, redacted in `Debug`) and the same key
/// wrapped by the KMS that made it.
pub struct DataKey {
    plaintext: Zeroizing<[u8; DATA_KEY_LEN]>,
    wrapped: WrappedKey,
}

impl DataKey {
    /// Pairs a plaintext data key with its wrapped form (for [`Kms`] implementations).
    pub fn new(plaintext: Zeroizing<[u8; DATA_KEY_LEN]>, wrapped: WrappedKey) -> Self {
        Self { plaintext, wrapped }
    }

    /// The plaintext key bytes.
    pub fn plaintext(&self) -> &[u8; DATA_KEY_LEN] {
        &self.plaintext
    }

    /// The key as wrapped by the KMS, safe to store.
    pub fn wrapped(&self) -> &WrappedKey {
        &self.wrapped
    }

    /// Splits into the plaintext and the wrapped key.
    pub fn into_parts(self) -> (Zeroizing<[u8; DATA_KEY_LEN]>, WrappedKey) {
        (self.plaintext, self.wrapped)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("plaintext", &"[REDACTED]")
            .field("wrapped", &self.wrapped)
            .finish()
    }
}

/// Why a KMS operation failed. Messages name the operation and the cause, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    /// The KMS cannot answer now (sealed, unreachable, timed out, 5xx): callers answer 503.
    #[error("kms unavailable: {0}")]
    Unavailable(String),
    /// The KMS refused the operation (permission denied).
    #[error("kms denied the operation: {0}")]
    Denied(String),
    /// The wrapped key does not unwrap: wrong or unknown KEK version, tampered, or made by
    /// another KMS.
    #[error("invalid wrapped key: {0}")]
    Invalid(String),
    /// The KMS is misconfigured (bad key file, bad address, missing transit key).
    #[error("kms configuration error: {0}")]
    Config(String),
}

impl KmsError {
    /// Whether the caller should answer "service unavailable" (and may retry later).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A key management service that wraps data keys under a versioned key-encryption key.
#[async_trait]
pub trait Kms: Send + Sync {
    /// Short name written into [`WrappedKey::kms`]: `"local"` or `"vault"`.
    fn name(&self) -> &'static str;

    /// A fresh random 256-bit data key, in plaintext and wrapped under the current KEK version.
    async fn generate_data_key(&self) -> Result<DataKey, KmsError>;

    /// The plaintext of a wrapped data key. A key wrapped by another KMS is `Invalid`.
    async fn unwrap_key(
        &self,
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, KmsError>;

    /// The same data key wrapped under the newest KEK version (inside the KMS where it can).
    async fn rewrap(&self, wrapped: &WrappedKey) -> Result<WrappedKey, KmsError>;

    /// Adds a KEK version and makes it current; older versions keep unwrapping.
    /// Returns the new version.
    async fn rotate(&self) -> Result<u32, KmsError>;

    /// The KEK version new data keys are wrapped under.
    async fn current_version(&self) -> Result<u32, KmsError>;

    /// Ok when the KMS can serve requests.
    async fn health(&self) -> Result<(), KmsError>;
}

/// Checks that `wrapped` was made by the KMS called `name`.
pub(crate) fn check_kms_name(name: &str, wrapped: &WrappedKey) -> Result<(), KmsError> {
    if wrapped.kms == name {
        Ok(())
    } else {
        Err(KmsError::Invalid(format!(
            "the key was wrapped by another kms, not by {name}"
        )))
    }
}

/// `N` random bytes from the operating system's generator.
pub(crate) fn os_random<const N: usize>() -> Result<Zeroizing<[u8; N]>, KmsError> {
    use rand::TryRngCore;
    let mut out = Zeroizing::new([0u8; N]);
    rand::rngs::OsRng
        .try_fill_bytes(out.as_mut_slice())
        .map_err(|_| KmsError::Unavailable("the system random number generator failed".into()))?;
    Ok(out)
}

/// Parses the version out of a `<prefix>:v<N>:<payload>` ciphertext, returning it and the
/// payload.
pub(crate) fn parse_versioned<'a>(prefix: &str, ciphertext: &'a str) -> Option<(u32, &'a str)> {
    let rest = ciphertext.strip_prefix(prefix)?.strip_prefix(":v")?;
    let (version, payload) = rest.split_once(':')?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version: u32 = version.parse().ok()?;
    (version > 0).then_some((version, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_versioned_accepts_only_well_formed_prefixes() {
        assert_eq!(parse_versioned("vault", "vault:v3:abc"), Some((3, "abc")));
        assert_eq!(parse_versioned("local", "local:v12:a:b"), Some((12, "a:b")));
        assert_eq!(parse_versioned("vault", "local:v3:abc"), None);
        assert_eq!(parse_versioned("vault", "vault:v0:abc"), None);
        assert_eq!(parse_versioned("vault", "vault:v:abc"), None);
        assert_eq!(parse_versioned("vault", "vault:v+3:abc"), None);
        assert_eq!(parse_versioned("vault", "vault:v3"), None);
        assert_eq!(parse_versioned("vault", "vault:v99999999999:abc"), None);
    }

    #[test]
    fn data_key_debug_is_redacted() {
        let key = DataKey::new(
            Zeroizing::new([0xAB; DATA_KEY_LEN]),
            WrappedKey {
                kms: "local".into(),
                version: 1,
                ciphertext: "local:v1:xyz".into(),
            },
        );
        let debug = format!("{key:?}");
        assert!(debug.contains("REDACTED"), "{debug}");
        assert!(!debug.contains("171"), "{debug}"); // 0xAB as decimal
        assert!(!debug.to_lowercase().contains("ab, ab"), "{debug}");
        assert!(debug.contains("local:v1:xyz"), "{debug}");
    }

    #[test]
    fn os_random_differs_between_calls() {
        let a = os_random::<32>().unwrap();
        let b = os_random::<32>().unwrap();
        assert_ne!(*a, *b);
    }
}
