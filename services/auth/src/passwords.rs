//! argon2id hashing on the blocking pool, bounded so that a login burst cannot take
//! `max_concurrent × memory_kib` beyond what the operator planned.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use polylogue_config::Argon2Settings;
use polylogue_contracts::ApiError;
use std::sync::Arc;
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    /// Verified against when the user does not exist, so that an unknown user costs the same
    /// time as a wrong password.
    dummy_hash: Arc<str>,
}

impl Passwords {
    pub fn new(settings: &Argon2Settings) -> Result<Self, ApiError> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|_| ApiError::internal())?;
        let dummy = hash_with(&params, "polylogue-dummy-password-for-timing")?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(settings.max_concurrent)),
            dummy_hash: Arc::from(dummy),
        })
    }

    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ApiError::internal())?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || hash_with(&params, &password))
            .await
            .map_err(|_| ApiError::internal())?
    }

    /// `Some(hash)` checks against that hash, `None` against the dummy; both take the same work.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ApiError::internal())?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let params = self.params.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            argon(&params)
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .await
        .map_err(|_| ApiError::internal())?;
        Ok(ok && known)
    }
}

fn argon(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_with(params: &Params, password: &str) -> Result<String, ApiError> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|_| ApiError::internal())?;
    argon(params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| ApiError::internal())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_owasp_argon2id_and_verify_only_the_right_password() {
        let p = Passwords::new(&Argon2Settings::default()).unwrap();
        let hash = p.hash("correct horse battery".into()).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            p.verify("correct horse battery".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !p.verify("correct horse batterY".into(), Some(hash))
                .await
                .unwrap()
        );
        // The dummy never lets anyone in, even with the dummy's own password.
        assert!(
            !p.verify("polylogue-dummy-password-for-timing".into(), None)
                .await
                .unwrap()
        );
    }
}
