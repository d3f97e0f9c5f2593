//! edge-api: the only HTTP listener. Envelopes, request ids, local JWT checks, rate limits and
//! validation happen here; everything else is a NATS request to the service that owns it.
//! Stateless apart from caches: any number of replicas, no sticky sessions.

pub mod cookies;
pub mod envelope;
pub mod json;
pub mod middleware;
pub mod ratelimit;
pub mod relay;
pub mod routes;
pub mod state;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use futures::StreamExt;
use polylogue_bus::Bus;
use polylogue_config::Settings;
use state::EdgeState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub fn router(state: Arc<EdgeState>, body_limit: usize) -> Router {
    use axum::routing::{delete, patch};
    use routes::{auth, inference, models, profile, summaries, system, threads};
    Router::new()
        .route("/api/login", post(auth::login))
        .route("/api/logout", post(auth::logout))
        .route("/api/register", post(auth::register))
        .route("/api/auth/refresh", post(auth::refresh))
        .route("/api/health", get(system::health))
        .route("/api/version", get(system::version))
        .route("/api/threads", get(threads::list).post(threads::create))
        .route(
            "/api/threads/{threadId}",
            get(threads::get).delete(threads::delete),
        )
        .route("/api/threads/{threadId}/title", patch(threads::rename))
        .route(
            "/api/threads/{threadId}/models/{modelId}/messages",
            get(threads::messages).post(inference::send),
        )
        .route(
            "/api/threads/{threadId}/models/{modelId}/messages/{messageId}/stream",
            get(inference::resume),
        )
        .route(
            "/api/threads/{threadId}/models/{modelId}/messages/{messageId}/cancel",
            post(inference::cancel),
        )
        .route(
            "/api/threads/{threadId}/models/{modelId}/summarize",
            post(summaries::summarize),
        )
        .route("/api/profile", get(profile::get).patch(profile::update))
        .route("/api/profile/api-keys", post(profile::put_keys))
        .route(
            "/api/profile/api-keys/{provider}",
            delete(profile::delete_key),
        )
        .route("/api/models", get(inference::models))
        .route("/api/models/{modelId}/status", get(models::status))
        .route("/api/models/{modelId}/load", post(models::load))
        .route(
            "/api/models/{modelId}/load/stream",
            get(models::load_stream),
        )
        .route("/api/models/{modelId}/load/{jobId}", delete(models::cancel))
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
        .method_not_allowed_fallback(|| async { axum::http::StatusCode::METHOD_NOT_ALLOWED })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::rate_limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::authenticate,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            middleware::envelope,
        ))
        .with_state(state)
}

/// A running edge: its bound address and shared state.
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<EdgeState>,
}

/// Binds the HTTP listener and serves until `shutdown`; open requests finish first (bounded by
/// `edge.shutdown_grace_secs`, enforced by the caller waiting on `tracker`).
pub async fn start(
    settings: &Settings,
    bus: Bus,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Running> {
    let keys = polylogue_tokens::KeyRing::new(&settings.jwt)
        .map_err(|e| anyhow::anyhow!("jwt key ring: {e}"))?;
    let state = Arc::new(EdgeState {
        bus: bus.clone(),
        keys,
        revoked: dashmap::DashMap::new(),
        limiter: ratelimit::RateLimiter::new(&settings.edge.rate_limits),
        cookies: cookies::CookiePolicy {
            secure: settings.edge.cookie_secure,
            same_site: settings.edge.cookie_same_site.clone(),
        },
        trust_forwarded_for: settings.edge.trust_forwarded_for,
        environment: settings.environment.clone(),
        started: Instant::now(),
        access_ttl: settings.jwt.access_ttl_secs,
        catalog: Arc::new(
            polylogue_catalog::Catalog::load(settings.catalog.path.as_deref())
                .context("loading the model catalog")?,
        ),
        js: async_nats::jetstream::new(bus.client().clone()),
        generations: polylogue_bus::generations::open_bucket(
            &async_nats::jetstream::new(bus.client().clone()),
            bus.prefix(),
        )
        .await
        .map_err(|error| tracing::warn!(%error, "generations bucket not opened"))
        .ok(),
        tokens: tokio::sync::OnceCell::new(),
        inference: state::InferenceTimings {
            keepalive: Duration::from_secs(settings.edge.sse_keepalive_secs.max(1)),
            send_timeout: Duration::from_millis(settings.nats.request_timeout_ms),
            send_timeout_loading: Duration::from_millis(settings.nats.request_timeout_ms)
                + Duration::from_secs(settings.inference.load_wait_secs + 2),
            reply_timeout: Duration::from_secs(settings.edge.reply_timeout_secs),
            lease_timeout: Duration::from_millis(settings.inference.lease_timeout_ms),
            heartbeat: Duration::from_millis(settings.inference.heartbeat_ms),
        },
        summarize_timeout: Duration::from_secs(settings.summarizer.request_timeout_secs),
        kms: polylogue_crypto::kms_from_settings(settings)
            .await
            .context("opening the key-management service")?,
        key_verifiers: polylogue_providers::key_verifiers(&settings.inference)
            .map_err(|e| anyhow::anyhow!("provider clients for key verification: {e}"))?,
        key_verify_timeout: Duration::from_millis(settings.keys.verify_timeout_ms),
        model_status: tokio::sync::OnceCell::new(),
        load_jobs: tokio::sync::OnceCell::new(),
        status_stale: Duration::from_secs(settings.loader.status_stale_secs),
    });
    let revocations =
        polylogue_bus::revocations::open(&bus, Duration::from_secs(settings.jwt.access_ttl_secs))
            .await
            .map_err(|e| anyhow::anyhow!("opening the revocation bucket: {e}"))?;
    tracker.spawn(watch_revocations(
        revocations,
        Arc::clone(&state),
        shutdown.clone(),
    ));
    tracker.spawn(sweep(
        Arc::clone(&state),
        settings.edge.rate_limits.window_secs,
        shutdown.clone(),
    ));

    let app = router(Arc::clone(&state), settings.edge.body_limit_bytes);
    let listener = tokio::net::TcpListener::bind(&settings.edge.listen)
        .await
        .with_context(|| format!("binding {}", settings.edge.listen))?;
    let addr = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
    });
    tracker.spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
        if let Err(error) = served {
            tracing::error!(%error, "http server stopped");
        }
    });
    tracing::info!(%addr, "edge listening");
    Ok(Running { addr, state })
}

/// Keeps this replica's revoked-session set in step with the KV bucket, from its full history,
/// re-subscribing after NATS hiccups.
async fn watch_revocations(
    kv: async_nats::jetstream::kv::Store,
    state: Arc<EdgeState>,
    shutdown: CancellationToken,
) {
    use async_nats::jetstream::kv::Operation;
    while !shutdown.is_cancelled() {
        match kv.watch_with_history(">").await {
            Ok(watch) => {
                let mut watch = std::pin::pin!(watch.take_until(shutdown.cancelled()));
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(e) if e.operation == Operation::Put => {
                            state.revoked.insert(e.key, Instant::now());
                        }
                        Ok(e) => {
                            state.revoked.remove(&e.key);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "revocation watch error");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "revocation watch could not start"),
        }
        tokio::select! {
            () = shutdown.cancelled() => {},
            () = tokio::time::sleep(Duration::from_millis(500)) => {},
        }
    }
}

/// Drops rate-limit windows and revocations that can no longer matter.
async fn sweep(state: Arc<EdgeState>, window_secs: u64, shutdown: CancellationToken) {
    let keep = Duration::from_secs(state.access_ttl + 120);
    let mut tick = tokio::time::interval(Duration::from_secs(window_secs.max(1)));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                state.limiter.sweep();
                state.revoked.retain(|_, learnt| learnt.elapsed() < keep);
            }
        }
    }
}
