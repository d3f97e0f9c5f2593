use crate::cookies::CookiePolicy;
use crate::ratelimit::RateLimiter;
use dashmap::DashMap;
use polylogue_bus::Bus;
use polylogue_catalog::Catalog;
use polylogue_contracts::{ApiError, ErrorCode};
use polylogue_tokens::KeyRing;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Build facts baked in by `build.rs`.
pub struct BuildInfo {
    pub version: &'static str,
    pub build_time: &'static str,
    pub commit: &'static str,
}

pub const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    build_time: env!("POLYLOGUE_BUILD_TIME"),
    commit: env!("POLYLOGUE_GIT_COMMIT"),
};

pub struct EdgeState {
    pub bus: Bus,
    pub keys: KeyRing,
    /// Session ids logged out, with when this replica learnt it (for sweeping).
    pub revoked: DashMap<String, Instant>,
    pub limiter: RateLimiter,
    pub cookies: CookiePolicy,
    pub trust_forwarded_for: bool,
    pub environment: String,
    pub started: Instant,
    pub access_ttl: u64,
    pub catalog: Arc<Catalog>,
    pub js: async_nats::jetstream::Context,
    /// Leases of running generations (for the SSE watchdog); `None` if it could not be opened.
    pub generations: Option<async_nats::jetstream::kv::Store>,
    pub tokens: OnceCell<async_nats::jetstream::stream::Stream>,
    pub inference: InferenceTimings,
    /// How long `POST .../summarize` waits for the summarizer.
    pub summarize_timeout: Duration,
    /// Seals provider keys as they are added (the KMS gives each a fresh data key).
    pub kms: Arc<dyn polylogue_crypto::Kms>,
    /// Clients that check a key with its provider when it is added, by provider name.
    pub key_verifiers: std::collections::HashMap<String, Arc<dyn polylogue_providers::Provider>>,
    pub key_verify_timeout: Duration,
    /// Local models' status (written by the ollama-loader), looked up once it exists.
    pub model_status: OnceCell<async_nats::jetstream::kv::Store>,
    /// Load jobs, looked up once they exist.
    pub load_jobs: OnceCell<async_nats::jetstream::kv::Store>,
    /// A status record older than this reads as `unavailable`.
    pub status_stale: Duration,
}

pub struct InferenceTimings {
    pub keepalive: Duration,
    /// How long a send may take: the bus timeout, or (non-streaming, a model that needs
    /// loading) that plus `inference.load_wait_secs`.
    pub send_timeout: Duration,
    pub send_timeout_loading: Duration,
    pub reply_timeout: Duration,
    pub lease_timeout: Duration,
    pub heartbeat: Duration,
}

impl EdgeState {
    /// The tokens stream (created by the inference router), looked up once.
    pub async fn tokens_stream(&self) -> Result<&async_nats::jetstream::stream::Stream, ApiError> {
        let name = polylogue_contracts::subjects::inference::tokens_stream(self.bus.prefix());
        self.tokens
            .get_or_try_init(|| async {
                self.js.get_stream(&name).await.map_err(|error| {
                    tracing::warn!(%error, "tokens stream not found");
                    ApiError::new(
                        ErrorCode::ServiceUnavailable,
                        "inference is not available: no router has started",
                    )
                })
            })
            .await
    }
}
