//! The ollama-loader: keeps every catalog model's status in `<prefix>-model-status` (Ollama
//! hosts, OpenAI-compatible local servers, cloud providers' reachability) and runs durable load
//! jobs for local models — pull with progress, then load into memory — from a JetStream work
//! queue shared by its replicas. Jobs survive a loader that dies: the next delivery takes them
//! over.

pub mod jobs;
pub mod loader;
pub mod ollama;
pub mod progress;
pub mod runner;
pub mod state;
pub mod status;

pub use loader::{Loader, is_local};

use anyhow::Context;
use async_nats::jetstream;
use polylogue_bus::{Bus, ServiceHost, handler};
use polylogue_catalog::Catalog;
use polylogue_config::Settings;
use polylogue_contracts::models::{CancelLoadRequest, LoadRequest};
use polylogue_contracts::subjects::{loader as verbs, service as names};
use polylogue_providers::{HttpSettings, Registry};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a graceful stop waits for running jobs to hand their messages back.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Bound on one status probe of a runtime.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence of a pull stream before the job fails (Ollama reports several times a second).
const PULL_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Running {
    pub loader: Arc<Loader>,
    host: ServiceHost,
    background: CancellationToken,
}

impl Running {
    /// Stops taking requests and jobs; running jobs are handed back (not acknowledged) for
    /// another replica, or this one after a restart, to take over.
    pub async fn stop(self) {
        self.host.stop().await;
        self.background.cancel();
        self.loader.tasks.close();
        let _ = tokio::time::timeout(STOP_GRACE, self.loader.tasks.wait()).await;
    }

    /// Dies like a crashed process: every job aborted where it stands, nothing written or
    /// acknowledged on the way out; the jobs come back after `ack_wait_secs`. For tests.
    pub async fn kill(self) {
        self.loader.killed.store(true, Ordering::Relaxed);
        self.background.cancel();
        for entry in &self.loader.running {
            entry.value().abort.abort();
        }
        self.host.stop().await;
    }
}

/// The Ollama hosts to manage: `loader.ollama_hosts`, else `inference.ollama_url`, else the
/// distinct `baseUrl`s of the catalog's Ollama models.
pub fn ollama_hosts(settings: &Settings, catalog: &Catalog) -> Vec<String> {
    let configured: Vec<String> = if !settings.loader.ollama_hosts.is_empty() {
        settings.loader.ollama_hosts.clone()
    } else if let Some(url) = &settings.inference.ollama_url {
        vec![url.clone()]
    } else {
        catalog
            .models()
            .iter()
            .filter(|m| m.provider == "ollama")
            .map(|m| {
                m.base_url.clone().unwrap_or_else(|| {
                    polylogue_providers::ProviderKind::Ollama
                        .default_base_url()
                        .unwrap_or_default()
                        .to_owned()
                })
            })
            .collect()
    };
    let mut hosts: Vec<String> = Vec::new();
    for host in configured {
        let host = host.trim().trim_end_matches('/').to_owned();
        if !host.is_empty() && !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts
}

pub async fn start(
    settings: &Settings,
    bus: &Bus,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> anyhow::Result<Running> {
    let s = settings.loader.clone();
    anyhow::ensure!(
        s.max_concurrent_jobs > 0,
        "loader.max_concurrent_jobs must be at least 1"
    );
    anyhow::ensure!(
        s.poll_interval_ms > 0,
        "loader.poll_interval_ms must be at least 1"
    );
    anyhow::ensure!(
        s.progress_interval_ms > 0,
        "loader.progress_interval_ms must be at least 1"
    );
    anyhow::ensure!(
        s.ack_wait_secs > 0,
        "loader.ack_wait_secs must be at least 1"
    );
    let catalog = Arc::new(
        Catalog::load(settings.catalog.path.as_deref()).context("loading the model catalog")?,
    );
    let registry = Registry::new(&catalog, &settings.inference)
        .map_err(|e| anyhow::anyhow!("building the provider clients: {e}"))?;
    let http = polylogue_providers::http_client(&HttpSettings {
        connect_timeout: Duration::from_millis(settings.inference.connect_timeout_ms),
        ..HttpSettings::default()
    })
    .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))?;
    let runtimes = ollama::Runtimes::new(http, PROBE_TIMEOUT, PULL_IDLE_TIMEOUT);
    let hosts = ollama_hosts(settings, &catalog);
    let js = jetstream::new(bus.client().clone());
    let retention = Duration::from_secs(s.job_retention_secs);
    let statuses = state::Statuses::open(&js, bus.prefix())
        .await
        .map_err(|e| anyhow::anyhow!("opening the model-status bucket: {e}"))?;
    let jobs = state::Jobs::open(&js, bus.prefix(), retention)
        .await
        .map_err(|e| anyhow::anyhow!("opening the load-jobs bucket: {e}"))?;
    state::ensure_queue(&js, bus.prefix(), retention)
        .await
        .map_err(|e| anyhow::anyhow!("opening the load queue: {e}"))?;
    let background = shutdown.child_token();
    let loader = Arc::new(Loader::new(loader::Parts {
        bus: bus.clone(),
        settings: s,
        catalog,
        registry,
        runtimes,
        hosts,
        js,
        statuses,
        jobs,
        background: background.clone(),
    }));
    tracker.spawn(status::run(Arc::clone(&loader), background.clone()));
    tracker.spawn(status::run_cloud(Arc::clone(&loader), background.clone()));
    tracker.spawn(runner::run(Arc::clone(&loader), background.clone()));
    tracing::info!(hosts = ?loader.hosts(), "ollama-loader started");

    let host = ServiceHost::start(
        bus,
        names::LOADER,
        env!("CARGO_PKG_VERSION"),
        "local-model loading and every model's status",
        shutdown,
        tracker,
    )
    .await
    .map_err(|e| anyhow::anyhow!("registering the ollama-loader service: {e}"))?;
    let l = Arc::clone(&loader);
    host.endpoint(
        verbs::LOAD,
        handler(move |_ctx, req: LoadRequest| {
            let l = Arc::clone(&l);
            async move { l.load(req).await }
        }),
    )
    .await
    .map_err(|e| anyhow::anyhow!("adding endpoint load: {e}"))?;
    let l = Arc::clone(&loader);
    host.endpoint(
        verbs::CANCEL,
        handler(move |_ctx, req: CancelLoadRequest| {
            let l = Arc::clone(&l);
            async move { l.cancel(req).await }
        }),
    )
    .await
    .map_err(|e| anyhow::anyhow!("adding endpoint cancel: {e}"))?;
    let l = Arc::clone(&loader);
    host.endpoint(
        verbs::HEALTH,
        handler(move |_ctx, _req: serde_json::Value| {
            let l = Arc::clone(&l);
            async move { Ok(l.health()) }
        }),
    )
    .await
    .map_err(|e| anyhow::anyhow!("adding endpoint health: {e}"))?;
    // A round trip on this connection: the server has processed the endpoints' subscriptions
    // before it routes the ping, so callers are served once this returns.
    if let Err(error) = bus
        .ping_service(names::LOADER, Duration::from_secs(2))
        .await
    {
        tracing::warn!(%error, "the loader's own service ping failed");
    }
    Ok(Running {
        loader,
        host,
        background,
    })
}
