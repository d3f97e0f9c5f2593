//! argon2id hashing on the blocking pool, bounded so that a login burst cannot take
//! `max_concurrent × memory_kib` beyond what the operator planned.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use polylogue_config::Argon2Settings;
use polylogue_contracts::ApiError;
use polylogue_contracts::ErrorCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Semaphore, SemaphorePermit};

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    /// Callers waiting for a permit, bounded by `max_queue`: past it a login is refused at once
    /// (503, retry shortly) instead of joining a line longer than anyone will wait.
    waiting: Arc<AtomicUsize>,
    max_queue: usize,
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
            waiting: Arc::new(AtomicUsize::new(0)),
            max_queue: settings.max_queue,
            dummy_hash: Arc::from(dummy),
        })
    }

    /// A hashing slot. Refused when the line is full, and when the caller's deadline (unix ms)
    /// passed while waiting: a hash nobody will read is the most expensive thing to waste.
    async fn slot(&self, deadline: Option<u64>) -> Result<SemaphorePermit<'_>, ApiError> {
        let busy = || {
            metrics::counter!("polylogue_auth_hash_shed_total").increment(1);
            ApiError::new(
                ErrorCode::ServiceUnavailable,
                "the auth service is busy; try again in a moment",
            )
            .with_details(serde_json::json!({ "retryAfter": 1 }))
        };
        if self.permits.available_permits() == 0
            && self.waiting.load(Ordering::Relaxed) >= self.max_queue
        {
            return Err(busy());
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = self.permits.acquire().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let permit = permit.map_err(|_| ApiError::internal())?;
        if deadline.is_some_and(|d| polylogue_bus::unix_ms() > d) {
            return Err(busy());
        }
        Ok(permit)
    }

    pub async fn hash(&self, password: String, deadline: Option<u64>) -> Result<String, ApiError> {
        let _permit = self.slot(deadline).await?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || hash_with(&params, &password))
            .await
            .map_err(|_| ApiError::internal())?
    }

    /// `Some(hash)` checks against that hash, `None` against the dummy; both take the same work.
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
        deadline: Option<u64>,
    ) -> Result<bool, ApiError> {
        let _permit = self.slot(deadline).await?;
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
        let hash = p.hash("correct horse battery".into(), None).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            p.verify("correct horse battery".into(), Some(hash.clone()), None)
                .await
                .unwrap()
        );
        assert!(
            !p.verify("correct horse batterY".into(), Some(hash), None)
                .await
                .unwrap()
        );
        // The dummy never lets anyone in, even with the dummy's own password.
        assert!(
            !p.verify("polylogue-dummy-password-for-timing".into(), None, None)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_full_line_and_an_expired_deadline_are_refused_without_hashing() {
        let settings = Argon2Settings {
            max_concurrent: 1,
            max_queue: 1,
            ..Argon2Settings::default()
        };
        let p = Passwords::new(&settings).unwrap();
        let past = polylogue_bus::unix_ms() - 1;
        let err = p
            .verify("whatever-password".into(), None, Some(past))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::ServiceUnavailable);
        // One hashing, one waiting: the third is turned away at once.
        let held = p.permits.acquire().await.unwrap();
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.verify("x-password".into(), None, None).await })
        };
        while p.waiting.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let err = p.verify("y-password".into(), None, None).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ServiceUnavailable);
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
        drop(held);
        assert!(
            !waiter.await.unwrap().unwrap(),
            "the queued caller is served once a slot frees"
        );
    }
}
