//! Sealing and opening a provider key: AES-256-GCM under a fresh data key per envelope, the
//! associated data binding it to a user, a provider and a key version.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use polylogue_contracts::keys::KeyEnvelope;
use secrecy::SecretString;
use zeroize::{Zeroize, Zeroizing};

use crate::aead::{NONCE_LEN, TAG_LEN, decrypt_in_place, encrypt_in_place};
use crate::kms::{DATA_KEY_LEN, DataKey, Kms, KmsError, os_random};

/// Why sealing or opening failed. Messages carry no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The KMS failed (see [`KmsError`]).
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// The envelope does not authenticate for this context: tampered, malformed, or sealed for
    /// another user, provider or key version.
    #[error("the stored key does not decrypt for this user and provider")]
    Tampered,
}

impl CryptoError {
    /// Whether the caller should answer "service unavailable" (the KMS is down).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Kms(e) if e.is_unavailable())
    }
}

/// What an envelope is bound to: its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyContext<'a> {
    /// The user who owns the key.
    pub user_id: &'a str,
    /// The provider the key is for (`claude`, `openai`, `google`).
    pub provider: &'a str,
    /// The version of this user's key for this provider.
    pub key_version: u64,
}

impl KeyContext<'_> {
    /// `polylogue-apikey:v1\0<user_id>\0<provider>\0<key_version>`.
    fn aad(&self) -> Vec<u8> {
        let version = self.key_version.to_string();
        let mut aad = Vec::with_capacity(
            AAD_PREFIX.len() + self.user_id.len() + self.provider.len() + version.len() + 2,
        );
        aad.extend_from_slice(AAD_PREFIX);
        aad.extend_from_slice(self.user_id.as_bytes());
        aad.push(0);
        aad.extend_from_slice(self.provider.as_bytes());
        aad.push(0);
        aad.extend_from_slice(version.as_bytes());
        aad
    }
}

const AAD_PREFIX: &[u8] = b"polylogue-apikey:v1\0";

/// Seals `secret` for `ctx` under a fresh data key from `kms`.
pub async fn seal(
    kms: &dyn Kms,
    secret: &str,
    ctx: &KeyContext<'_>,
) -> Result<KeyEnvelope, CryptoError> {
    let data_key = kms.generate_data_key().await?;
    seal_with_key(&data_key, secret, ctx)
}

/// Opens an envelope sealed for `ctx`: unwraps its data key with `kms` and decrypts.
pub async fn open(
    kms: &dyn Kms,
    env: &KeyEnvelope,
    ctx: &KeyContext<'_>,
) -> Result<SecretString, CryptoError> {
    if env.key_version != ctx.key_version {
        return Err(CryptoError::Tampered);
    }
    let key = kms.unwrap_key(&env.wrapped_key).await?;
    open_with_key(&key, env, ctx)
}

/// Synchronous [`seal`] with a given data key (a fresh random nonce per call). Reusing a data key
/// is safe for up to about 2³² envelopes; [`seal`] uses one per envelope.
pub fn seal_with_key(
    data_key: &DataKey,
    secret: &str,
    ctx: &KeyContext<'_>,
) -> Result<KeyEnvelope, CryptoError> {
    let nonce = os_random::<NONCE_LEN>()?;
    let mut buf = Vec::with_capacity(secret.len() + TAG_LEN);
    buf.extend_from_slice(secret.as_bytes());
    let Ok(tag) = encrypt_in_place(data_key.plaintext(), &nonce, &ctx.aad(), &mut buf) else {
        // Only possible past AES-GCM's message size limit; the buffer may still hold plaintext.
        buf.zeroize();
        return Err(CryptoError::Tampered);
    };
    buf.extend_from_slice(&tag);
    Ok(KeyEnvelope {
        key_version: ctx.key_version,
        wrapped_key: data_key.wrapped().clone(),
        nonce: STANDARD.encode(*nonce),
        ciphertext: STANDARD.encode(&buf),
    })
}

/// Synchronous [`open`] with the unwrapped data key.
pub fn open_with_key(
    data_key: &[u8; DATA_KEY_LEN],
    env: &KeyEnvelope,
    ctx: &KeyContext<'_>,
) -> Result<SecretString, CryptoError> {
    if env.key_version != ctx.key_version {
        return Err(CryptoError::Tampered);
    }
    let nonce: [u8; NONCE_LEN] = STANDARD
        .decode(&env.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or(CryptoError::Tampered)?;
    let sealed = STANDARD
        .decode(&env.ciphertext)
        .map_err(|_| CryptoError::Tampered)?;
    let Some(text_len) = sealed.len().checked_sub(TAG_LEN) else {
        return Err(CryptoError::Tampered);
    };
    let (body, tag) = sealed.split_at(text_len);
    let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| CryptoError::Tampered)?;
    // Exact capacity, so turning it into a boxed str does not reallocate (and leave a copy).
    let mut plain = Zeroizing::new(Vec::with_capacity(text_len));
    plain.extend_from_slice(body);
    decrypt_in_place(data_key, &nonce, &ctx.aad(), &mut plain, tag)
        .map_err(|_| CryptoError::Tampered)?;
    match String::from_utf8(std::mem::take(&mut *plain)) {
        Ok(text) => Ok(SecretString::from(text)),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(CryptoError::Tampered)
        }
    }
}

/// A display hint for a stored key: `…` and its last 4 characters, or `…` alone when the key is
/// shorter than 8 characters.
pub fn hint(secret: &str) -> String {
    let count = secret.chars().count();
    if count < 8 {
        return "…".to_owned();
    }
    let tail: String = secret.chars().skip(count - 4).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use polylogue_contracts::keys::WrappedKey;
    use secrecy::ExposeSecret;

    fn test_key() -> DataKey {
        DataKey::new(
            os_random::<DATA_KEY_LEN>().unwrap(),
            WrappedKey {
                kms: "test".into(),
                version: 1,
                ciphertext: "test:v1:x".into(),
            },
        )
    }

    const CTX: KeyContext<'static> = KeyContext {
        user_id: "user-1",
        provider: "openai",
        key_version: 3,
    };

    #[test]
    fn aad_layout() {
        assert_eq!(
            CTX.aad(),
            b"polylogue-apikey:v1\x00user-1\x00openai\x003".to_vec()
        );
    }

    #[test]
    fn sync_round_trip_and_context_binding() {
        let key = test_key();
        let env = seal_with_key(&key, "sk-secret-value", &CTX).unwrap();
        assert_eq!(env.key_version, 3);
        assert_eq!(STANDARD.decode(&env.nonce).unwrap().len(), NONCE_LEN);
        assert_eq!(
            STANDARD.decode(&env.ciphertext).unwrap().len(),
            "sk-secret-value".len() + TAG_LEN
        );
        let opened = open_with_key(key.plaintext(), &env, &CTX).unwrap();
        assert_eq!(opened.expose_secret(), "sk-secret-value");

        for ctx in [
            KeyContext {
                user_id: "user-2",
                ..CTX
            },
            KeyContext {
                provider: "claude",
                ..CTX
            },
        ] {
            assert_eq!(
                open_with_key(key.plaintext(), &env, &ctx).unwrap_err(),
                CryptoError::Tampered
            );
        }
        // Another key version: refused by the version check, and by the AAD when the envelope's
        // own version field is changed to match.
        let other = KeyContext {
            key_version: 4,
            ..CTX
        };
        assert_eq!(
            open_with_key(key.plaintext(), &env, &other).unwrap_err(),
            CryptoError::Tampered
        );
        let mut relabelled = env.clone();
        relabelled.key_version = 4;
        assert_eq!(
            open_with_key(key.plaintext(), &relabelled, &other).unwrap_err(),
            CryptoError::Tampered
        );
        // Another data key.
        let other_key = test_key();
        assert_eq!(
            open_with_key(other_key.plaintext(), &env, &CTX).unwrap_err(),
            CryptoError::Tampered
        );
    }

    #[test]
    fn malformed_envelopes_are_tampered() {
        let key = test_key();
        let env = seal_with_key(&key, "sk-secret-value", &CTX).unwrap();
        let cases = [
            KeyEnvelope {
                nonce: "not base64!".into(),
                ..env.clone()
            },
            KeyEnvelope {
                nonce: STANDARD.encode([0u8; 8]),
                ..env.clone()
            },
            KeyEnvelope {
                ciphertext: STANDARD.encode([0u8; 10]),
                ..env.clone()
            },
            KeyEnvelope {
                ciphertext: "%%%".into(),
                ..env.clone()
            },
        ];
        for bad in cases {
            assert_eq!(
                open_with_key(key.plaintext(), &bad, &CTX).unwrap_err(),
                CryptoError::Tampered
            );
        }
    }

    #[test]
    fn empty_and_unicode_secrets_round_trip() {
        let key = test_key();
        for secret in ["", "ключ-🔑-секрет"] {
            let env = seal_with_key(&key, secret, &CTX).unwrap();
            assert_eq!(
                open_with_key(key.plaintext(), &env, &CTX)
                    .unwrap()
                    .expose_secret(),
                secret
            );
        }
    }

    #[test]
    fn hundred_thousand_seals_never_repeat_a_nonce() {
        let key = test_key();
        let mut seen = std::collections::HashSet::with_capacity(100_000);
        for _ in 0..100_000 {
            let env = seal_with_key(&key, "k", &CTX).unwrap();
            assert!(seen.insert(env.nonce), "repeated nonce");
        }
    }

    #[test]
    fn hint_shows_only_the_last_four_characters_of_long_secrets() {
        assert_eq!(hint("sk-abcdefgh1234"), "…1234");
        assert_eq!(hint("12345678"), "…5678");
        assert_eq!(hint("1234567"), "…");
        assert_eq!(hint(""), "…");
        // Characters, not bytes.
        assert_eq!(hint("ключ-секрет"), "…крет");
        assert_eq!(hint("🔑🔑🔑🔑🔑🔑🔑🔑"), "…🔑🔑🔑🔑");
        assert_eq!(hint("🔑🔑🔑🔑🔑🔑🔑"), "…");
    }

    #[test]
    fn errors_say_nothing_about_values() {
        let e = CryptoError::Tampered;
        assert_eq!(
            e.to_string(),
            "the stored key does not decrypt for this user and provider"
        );
        assert!(!e.is_unavailable());
        assert!(CryptoError::Kms(KmsError::Unavailable("vault is sealed".into())).is_unavailable());
        assert!(!CryptoError::Kms(KmsError::Denied("permission denied".into())).is_unavailable());
    }
}
