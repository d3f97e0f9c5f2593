//! The auth service: users, argon2id passwords, sessions with rotating refresh tokens, and
//! revocations that every edge replica learns through a NATS KV bucket.
//! `start` wires it to NATS; `main.rs` only adds configuration, telemetry and signals.

pub mod passwords;
pub mod profile;
pub mod service;

use anyhow::Context;
use polylogue_bus::{Bus, ServiceHost, handler};
use polylogue_config::Settings;
use polylogue_contracts::auth::{
    LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest, UserGetRequest,
};
use polylogue_contracts::profile::{
    EnvelopeRequest, KeysDeleteRequest, KeysPutRequest, ProfileGetRequest, ProfileUpdateRequest,
    RewrapRequest,
};
use polylogue_contracts::subjects::{auth as verbs, service as names};
use polylogue_storage::AuthStore;
use polylogue_storage::auth::scylla::{ScyllaAuthStore, ScyllaConfig};
use polylogue_storage::auth::sqlite::SqliteAuthStore;
use profile::Profiles;
use secrecy::ExposeSecret;
use service::AuthService;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Opens the configured store engine.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn AuthStore>> {
    match settings.auth.store.engine.as_str() {
        "scylla" => {
            let s = &settings.auth.store.scylla;
            let config = ScyllaConfig {
                nodes: s.nodes.clone(),
                keyspace: s.keyspace.clone(),
                replication_factor: s.replication_factor,
                username: s.username.clone(),
                password: s.password.as_ref().map(|p| p.expose_secret().to_owned()),
            };
            Ok(Arc::new(
                ScyllaAuthStore::connect(&config)
                    .await
                    .context("connecting to ScyllaDB")?,
            ))
        }
        _ => {
            let path = settings.sqlite_file(settings.auth.store.sqlite_path.as_ref(), "auth");
            Ok(Arc::new(
                SqliteAuthStore::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?,
            ))
        }
    }
}

/// A running auth service.
pub struct Running {
    pub service: Arc<AuthService>,
    pub profiles: Arc<Profiles>,
    host: ServiceHost,
}

impl Running {
    /// Stops answering (and being pinged); in-flight requests finish on the tracker.
    pub async fn stop(self) {
        self.host.stop().await;
    }
}

/// Registers the auth endpoints on NATS and serves them until `shutdown`.
pub async fn start(
    settings: &Settings,
    bus: &Bus,
    store: Arc<dyn AuthStore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> anyhow::Result<Running> {
    let revoked =
        polylogue_bus::revocations::open(bus, Duration::from_secs(settings.jwt.access_ttl_secs))
            .await
            .map_err(|e| anyhow::anyhow!("opening the revocation bucket: {e}"))?;
    let catalog = Arc::new(
        polylogue_catalog::Catalog::load(settings.catalog.path.as_deref())
            .context("loading the model catalog")?,
    );
    let kms = polylogue_crypto::kms_from_settings(settings)
        .await
        .context("opening the key-management service")?;
    let profiles = Arc::new(Profiles::new(Arc::clone(&store), catalog, kms, bus.clone()));
    profile::keep_last_used(
        bus.clone(),
        Arc::clone(&store),
        Duration::from_millis(settings.keys.last_used_flush_ms),
        Duration::from_secs(settings.keys.audit_retention_secs),
        shutdown.clone(),
    )
    .await?;
    let service =
        Arc::new(AuthService::new(settings, store, revoked).map_err(|e| anyhow::anyhow!("{e}"))?);
    let host = ServiceHost::start(
        bus,
        names::AUTH,
        env!("CARGO_PKG_VERSION"),
        "users, sessions and tokens",
        shutdown,
        tracker,
    )
    .await
    .map_err(|e| anyhow::anyhow!("registering the auth service: {e}"))?;

    let s = Arc::clone(&service);
    add(
        &host,
        verbs::LOGIN,
        handler(
            move |ctx: polylogue_bus::RequestContext, req: LoginRequest| {
                let s = Arc::clone(&s);
                async move { s.login(req, ctx.deadline).await }
            },
        ),
    )
    .await?;
    let s = Arc::clone(&service);
    add(
        &host,
        verbs::REGISTER,
        handler(
            move |ctx: polylogue_bus::RequestContext, req: RegisterRequest| {
                let s = Arc::clone(&s);
                async move { s.register(req, false, ctx.deadline).await }
            },
        ),
    )
    .await?;
    let s = Arc::clone(&service);
    add(
        &host,
        verbs::ADMIN_USER_CREATE,
        handler(
            move |ctx: polylogue_bus::RequestContext, req: RegisterRequest| {
                let s = Arc::clone(&s);
                async move { s.register(req, true, ctx.deadline).await }
            },
        ),
    )
    .await?;
    let s = Arc::clone(&service);
    add(
        &host,
        verbs::REFRESH,
        handler(move |_ctx, req: RefreshRequest| {
            let s = Arc::clone(&s);
            async move { s.refresh(req).await }
        }),
    )
    .await?;
    let s = Arc::clone(&service);
    add(
        &host,
        verbs::LOGOUT,
        handler(move |_ctx, req: LogoutRequest| {
            let s = Arc::clone(&s);
            async move { s.logout(req).await }
        }),
    )
    .await?;
    let s = Arc::clone(&service);
    add(
        &host,
        verbs::USER_GET,
        handler(move |_ctx, req: UserGetRequest| {
            let s = Arc::clone(&s);
            async move { s.user(req).await }
        }),
    )
    .await?;
    let s = Arc::clone(&service);
    add(
        &host,
        verbs::HEALTH,
        handler(move |_ctx, _req: serde_json::Value| {
            let s = Arc::clone(&s);
            async move { Ok(s.health().await) }
        }),
    )
    .await?;
    let p = Arc::clone(&profiles);
    add(
        &host,
        verbs::PROFILE_GET,
        handler(move |_ctx, req: ProfileGetRequest| {
            let p = Arc::clone(&p);
            async move { p.get(req).await }
        }),
    )
    .await?;
    let p = Arc::clone(&profiles);
    add(
        &host,
        verbs::PROFILE_SETTINGS,
        handler(move |_ctx, req: ProfileGetRequest| {
            let p = Arc::clone(&p);
            async move { p.settings(req).await }
        }),
    )
    .await?;
    let p = Arc::clone(&profiles);
    add(
        &host,
        verbs::PROFILE_UPDATE,
        handler(move |_ctx, req: ProfileUpdateRequest| {
            let p = Arc::clone(&p);
            async move { p.update(req).await }
        }),
    )
    .await?;
    let p = Arc::clone(&profiles);
    add(
        &host,
        verbs::KEYS_PUT,
        handler(move |_ctx, req: KeysPutRequest| {
            let p = Arc::clone(&p);
            async move { p.put_keys(req).await }
        }),
    )
    .await?;
    let p = Arc::clone(&profiles);
    add(
        &host,
        verbs::KEYS_DELETE,
        handler(move |_ctx, req: KeysDeleteRequest| {
            let p = Arc::clone(&p);
            async move { p.delete_key(req).await }
        }),
    )
    .await?;
    let p = Arc::clone(&profiles);
    add(
        &host,
        verbs::KEYS_ENVELOPE,
        handler(move |_ctx, req: EnvelopeRequest| {
            let p = Arc::clone(&p);
            async move { p.envelope(req).await }
        }),
    )
    .await?;
    let p = Arc::clone(&profiles);
    add(
        &host,
        verbs::KEYS_REWRAP,
        handler(move |_ctx, req: RewrapRequest| {
            let p = Arc::clone(&p);
            async move { p.rewrap(req).await }
        }),
    )
    .await?;
    Ok(Running {
        service,
        profiles,
        host,
    })
}

async fn add(host: &ServiceHost, verb: &str, h: polylogue_bus::Handler) -> anyhow::Result<()> {
    host.endpoint(verb, h)
        .await
        .map_err(|e| anyhow::anyhow!("adding endpoint {verb}: {e}"))
}
