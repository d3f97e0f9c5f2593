//! The summarizer: keeps a summary of every long (thread, model) history so that context assembly
//! can send the summary and only the messages after it. Work comes from `message.created` events
//! (a durable JetStream consumer shared by the replicas) and from the manual endpoint; a
//! per-history lock in JetStream KV makes one replica at a time write a history's summary.

pub mod consumer;
pub mod prompt;
pub mod state;
pub mod summarize;

pub use state::StaleEntry;
pub use summarize::{History, Mode, Outcome, Summarizer};

use anyhow::Context;
use async_nats::jetstream;
use polylogue_bus::{Bus, ServiceHost, handler};
use polylogue_catalog::Catalog;
use polylogue_config::Settings;
use polylogue_contracts::subjects::{service as names, summarizer as verbs};
use polylogue_contracts::summaries::SummarizeRequest;
use polylogue_providers::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Running {
    pub summarizer: Arc<Summarizer>,
    host: ServiceHost,
    background: CancellationToken,
}

impl Running {
    /// Stops taking requests and events; work in progress is interrupted, its lock released and
    /// its event handed back for another replica.
    pub async fn stop(self) {
        self.host.stop().await;
        self.background.cancel();
    }
}

pub async fn start(
    settings: &Settings,
    bus: &Bus,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> anyhow::Result<Running> {
    let s = settings.summarizer.clone();
    let catalog = Arc::new(
        Catalog::load(settings.catalog.path.as_deref()).context("loading the model catalog")?,
    );
    if let Some(model) = &s.model
        && !catalog.contains(model)
    {
        anyhow::bail!("summarizer.model {model:?} is not in the model catalog");
    }
    let registry = Registry::new(&catalog, &settings.inference)
        .map_err(|e| anyhow::anyhow!("building the provider clients: {e}"))?
        .with_user_keys(
            polylogue_crypto::UserKeys::from_settings(
                settings,
                bus,
                "summarizer",
                shutdown.clone(),
            )
            .await?,
        );
    if settings.inference.warm_up_tokenizers {
        tokio::task::spawn_blocking(polylogue_providers::tokens::warm_up)
            .await
            .context("building the tokenizer tables")?;
    }
    let js = jetstream::new(bus.client().clone());
    let retention = Duration::from_secs(s.dead_letter_retention_secs);
    consumer::ensure_dead_letter_stream(&js, bus.prefix(), retention)
        .await
        .map_err(|e| anyhow::anyhow!("opening the dead-letter stream: {e}"))?;
    let replica = uuid::Uuid::now_v7().simple().to_string();
    let locks = state::Locks::open(
        &js,
        bus.prefix(),
        Duration::from_secs(s.lock_ttl_secs),
        replica.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("opening the lock bucket: {e}"))?;
    let stale = state::StaleState::open(&js, bus.prefix(), retention)
        .await
        .map_err(|e| anyhow::anyhow!("opening the state bucket: {e}"))?;
    let background = shutdown.child_token();
    let summarizer = Arc::new(Summarizer::new(summarize::Parts {
        bus: bus.clone(),
        settings: s,
        reply_budget_tokens: settings.inference.reply_budget_tokens,
        catalog,
        registry,
        locks,
        stale,
        js,
        shutdown: background.clone(),
    }));
    tracker.spawn(consumer::run(
        Arc::clone(&summarizer),
        background.clone(),
        tracker.clone(),
    ));
    tracing::info!(replica = %replica, "summarizer started");

    let host = ServiceHost::start(
        bus,
        names::SUMMARIZER,
        env!("CARGO_PKG_VERSION"),
        "per-model summaries of long histories",
        shutdown,
        tracker,
    )
    .await
    .map_err(|e| anyhow::anyhow!("registering the summarizer service: {e}"))?;
    let z = Arc::clone(&summarizer);
    host.endpoint(
        verbs::SUMMARIZE,
        handler(move |ctx, req: SummarizeRequest| {
            let z = Arc::clone(&z);
            async move {
                z.manual(
                    &ctx,
                    History {
                        user_id: req.user_id,
                        thread_id: req.thread_id,
                        model_id: req.model_id,
                    },
                )
                .await
            }
        }),
    )
    .await
    .map_err(|e| anyhow::anyhow!("adding endpoint summarize: {e}"))?;
    let z = Arc::clone(&summarizer);
    host.endpoint(
        verbs::HEALTH,
        handler(move |_ctx, _req: serde_json::Value| {
            let z = Arc::clone(&z);
            async move { Ok(z.health()) }
        }),
    )
    .await
    .map_err(|e| anyhow::anyhow!("adding endpoint health: {e}"))?;
    Ok(Running {
        summarizer,
        host,
        background,
    })
}
