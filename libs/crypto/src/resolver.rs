//! Users' own provider keys for the services that call providers (inference router,
//! summarizer): the sealed key is asked from the auth service over NATS, opened here in memory
//! and cached briefly (bounded LRU + TTL). Every use is an audit event; the auth service turns
//! those into `lastUsed`. A key added, replaced or deleted is dropped from every replica's cache
//! at once (`auth.keys.changed`), and at the latest after the TTL.

use crate::{CryptoError, KeyContext, Kms, SecretCache, open};
use async_nats::jetstream;
use futures::StreamExt;
use polylogue_bus::{Bus, RequestContext};
use polylogue_contracts::profile::{
    EnvelopeReply, EnvelopeRequest, KeyFailed, KeyUsed, KeysChanged,
};
use polylogue_contracts::subjects::{audit, auth as verbs, service};
use polylogue_contracts::{ApiError, ErrorCode};
use polylogue_providers::UserKeySource;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

/// The resolver of users' keys; one per service replica.
pub struct UserKeys {
    bus: Bus,
    js: jetstream::Context,
    kms: Arc<dyn Kms>,
    cache: SecretCache,
    service: &'static str,
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

impl UserKeys {
    /// Builds the resolver and listens for key changes until `shutdown`.
    pub async fn start(
        bus: Bus,
        kms: Arc<dyn Kms>,
        cache_capacity: usize,
        cache_ttl: Duration,
        service: &'static str,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, async_nats::Error> {
        let changes = bus
            .client()
            .subscribe(bus.subject(service::AUTH, verbs::KEYS_CHANGED))
            .await?;
        let keys = Arc::new(Self {
            js: jetstream::new(bus.client().clone()),
            bus,
            kms,
            cache: SecretCache::new(cache_capacity, cache_ttl),
            service,
        });
        let weak = Arc::downgrade(&keys);
        tokio::spawn(async move {
            let mut changes = changes;
            loop {
                let msg = tokio::select! {
                    () = shutdown.cancelled() => break,
                    msg = changes.next() => msg,
                };
                let Some(msg) = msg else { break };
                let Some(keys) = weak.upgrade() else { break };
                match serde_json::from_slice::<KeysChanged>(&msg.payload) {
                    Ok(c) => keys.cache.invalidate(&c.user_id, &c.provider),
                    Err(error) => tracing::warn!(%error, "undecodable keys.changed"),
                }
            }
        });
        Ok(keys)
    }

    /// Decrypted keys currently cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    fn used(&self, user_id: &str, provider: &str, key_version: u64, model_id: &str) {
        polylogue_bus::audit::publish_detached(
            &self.js,
            audit::key_used(self.bus.prefix()),
            &KeyUsed {
                user_id: user_id.to_owned(),
                provider: provider.to_owned(),
                key_version,
                model: model_id.to_owned(),
                service: self.service.to_owned(),
                at: now_rfc3339(),
            },
        );
    }

    /// The sealed key from the auth service, opened. `None` when the user has none.
    async fn fetch(
        &self,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<(u64, SecretString)>, ApiError> {
        let reply: EnvelopeReply = self
            .bus
            .request(
                service::AUTH,
                verbs::KEYS_ENVELOPE,
                &RequestContext::new(uuid::Uuid::new_v4().to_string()),
                &EnvelopeRequest {
                    user_id: user_id.to_owned(),
                    provider: provider.to_owned(),
                },
            )
            .await?;
        let Some(envelope) = reply.envelope else {
            return Ok(None);
        };
        let ctx = KeyContext {
            user_id,
            provider,
            key_version: envelope.key_version,
        };
        match open(self.kms.as_ref(), &envelope, &ctx).await {
            Ok(secret) => Ok(Some((envelope.key_version, secret))),
            Err(e) if e.is_unavailable() => {
                tracing::error!(error = %e, "key management unavailable; user key not opened");
                Err(ApiError::new(
                    ErrorCode::ServiceUnavailable,
                    "stored API keys cannot be opened right now (key management is unavailable); try again shortly",
                ))
            }
            Err(e) => {
                metrics::counter!("polylogue_user_key_failures_total", "provider" => provider.to_owned())
                    .increment(1);
                tracing::error!(user_id, provider, key_version = envelope.key_version, error = %e, "stored provider key does not decrypt");
                polylogue_bus::audit::publish_detached(
                    &self.js,
                    audit::key_failed(self.bus.prefix()),
                    &KeyFailed {
                        user_id: user_id.to_owned(),
                        provider: provider.to_owned(),
                        key_version: envelope.key_version,
                        reason: failure_reason(&e),
                        service: self.service.to_owned(),
                        at: now_rfc3339(),
                    },
                );
                Err(ApiError::new(
                    ErrorCode::InvalidApiKey,
                    format!("your stored {provider} key could not be decrypted; add it again in your profile"),
                )
                .with_details(serde_json::json!({ "apiKey": provider })))
            }
        }
    }
}

fn failure_reason(e: &CryptoError) -> String {
    e.to_string()
}

#[async_trait::async_trait]
impl UserKeySource for UserKeys {
    async fn user_key(
        &self,
        user_id: &str,
        provider: &str,
        model_id: &str,
    ) -> Result<Option<SecretString>, ApiError> {
        let started = Instant::now();
        if let Some((version, key)) = self.cache.get(user_id, provider) {
            metrics::counter!("polylogue_user_key_resolutions_total", "outcome" => "cached")
                .increment(1);
            self.used(user_id, provider, version, model_id);
            return Ok(Some(key));
        }
        let resolved = self.fetch(user_id, provider).await;
        let outcome = match &resolved {
            Ok(Some(_)) => "opened",
            Ok(None) => "none",
            Err(_) => "failed",
        };
        metrics::counter!("polylogue_user_key_resolutions_total", "outcome" => outcome)
            .increment(1);
        metrics::histogram!("polylogue_user_key_resolution_seconds")
            .record(started.elapsed().as_secs_f64());
        match resolved? {
            Some((version, key)) => {
                self.cache.insert(user_id, provider, version, key.clone());
                self.used(user_id, provider, version, model_id);
                Ok(Some(key))
            }
            None => Ok(None),
        }
    }
}

impl UserKeys {
    /// Opens the configured KMS (`[kms]`) and starts the resolver with the `[keys]` cache
    /// settings.
    pub async fn from_settings(
        settings: &polylogue_config::Settings,
        bus: &Bus,
        service: &'static str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let kms = crate::kms_from_settings(settings).await?;
        Self::start(
            bus.clone(),
            kms,
            settings.keys.cache_capacity,
            Duration::from_secs(settings.keys.cache_ttl_secs),
            service,
            shutdown,
        )
        .await
        .map_err(|e| anyhow::anyhow!("listening for key changes: {e}"))
    }
}
