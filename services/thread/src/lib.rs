//! The thread service: threads, per-model message histories and summaries (behind the storage
//! port), domain events on JetStream, and the search index fed from those events.

pub mod cursor;
pub mod events;
pub mod indexer;
pub mod service;

use anyhow::Context;
use polylogue_bus::{Bus, ServiceHost, handler};
use polylogue_catalog::Catalog;
use polylogue_config::Settings;
use polylogue_contracts::subjects::{service as names, thread as verbs};
use polylogue_contracts::threads::{
    AppendMessageRequest, CreateThreadRequest, GetMessageRequest, HistoryRequest,
    ListMessagesRequest, ListThreadsRequest, PutSummaryRequest, RenameThreadRequest, ThreadRef,
    UpdateMessageRequest,
};
use polylogue_storage::search::ThreadSearch;
use polylogue_storage::threads::ThreadStore;
use secrecy::ExposeSecret;
use service::ThreadService;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn ThreadStore>> {
    let store = &settings.thread.store;
    match store.engine.as_str() {
        "scylla" => scylla_store(settings).await,
        _ => {
            let path = settings.sqlite_file(store.sqlite_path.as_ref(), "thread");
            Ok(Arc::new(
                polylogue_storage::threads::sqlite::SqliteThreadStore::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?,
            ))
        }
    }
}

pub async fn open_search(settings: &Settings) -> anyhow::Result<Arc<dyn ThreadSearch>> {
    let search = &settings.thread.search;
    match search.engine.as_str() {
        "meilisearch" => meili_search(settings).await,
        _ => {
            let path = settings.sqlite_file(search.sqlite_path.as_ref(), "thread-search");
            Ok(Arc::new(
                polylogue_storage::search::sqlite::SqliteThreadSearch::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?,
            ))
        }
    }
}

async fn scylla_store(settings: &Settings) -> anyhow::Result<Arc<dyn ThreadStore>> {
    let s = &settings.thread.store.scylla;
    let config = polylogue_storage::auth::scylla::ScyllaConfig {
        nodes: s.nodes.clone(),
        keyspace: s.keyspace.clone(),
        replication_factor: s.replication_factor,
        username: s.username.clone(),
        password: s.password.as_ref().map(|p| p.expose_secret().to_owned()),
    };
    Ok(Arc::new(
        polylogue_storage::threads::scylla::ScyllaThreadStore::connect(&config)
            .await
            .context("connecting to ScyllaDB")?,
    ))
}

async fn meili_search(settings: &Settings) -> anyhow::Result<Arc<dyn ThreadSearch>> {
    let m = &settings.thread.search.meilisearch;
    let config = polylogue_storage::search::meili::MeiliConfig {
        url: m.url.clone(),
        api_key: m.api_key.as_ref().map(|k| k.expose_secret().to_owned()),
        index: m.index.clone(),
        // The indexer is asynchronous anyway; the adapter's watcher reports failed tasks.
        wait_for_tasks: false,
    };
    Ok(Arc::new(
        polylogue_storage::search::meili::MeiliThreadSearch::connect(&config)
            .await
            .context("connecting to Meilisearch")?,
    ))
}

pub struct Running {
    pub service: Arc<ThreadService>,
    host: ServiceHost,
}

impl Running {
    pub async fn stop(self) {
        self.host.stop().await;
    }
}

pub async fn start(
    settings: &Settings,
    bus: &Bus,
    store: Arc<dyn ThreadStore>,
    search: Arc<dyn ThreadSearch>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> anyhow::Result<Running> {
    let catalog = Arc::new(
        Catalog::load(settings.catalog.path.as_deref()).context("loading the model catalog")?,
    );
    let key = settings
        .jwt
        .keys
        .first()
        .map(|k| k.secret.expose_secret().as_bytes().to_vec())
        .context("jwt.keys is empty")?;
    let events = events::Events::open(bus.client(), bus.prefix())
        .await
        .map_err(|e| anyhow::anyhow!("opening the events stream: {e}"))?;
    let service = Arc::new(ThreadService::new(
        store,
        search,
        catalog,
        cursor::CursorKey::derive(&key),
        events.clone(),
    ));
    tracker.spawn(indexer::run(
        Arc::clone(&service),
        events.jetstream().clone(),
        bus.prefix().to_owned(),
        shutdown.clone(),
    ));
    let host = ServiceHost::start(
        bus,
        names::THREAD,
        env!("CARGO_PKG_VERSION"),
        "threads, messages, summaries and search",
        shutdown,
        tracker,
    )
    .await
    .map_err(|e| anyhow::anyhow!("registering the thread service: {e}"))?;

    macro_rules! endpoint {
        ($verb:expr, $req:ty, $method:ident) => {{
            let s = Arc::clone(&service);
            host.endpoint(
                $verb,
                handler(move |_ctx, req: $req| {
                    let s = Arc::clone(&s);
                    async move { s.$method(req).await }
                }),
            )
            .await
            .map_err(|e| anyhow::anyhow!("adding endpoint {}: {e}", $verb))?;
        }};
    }
    endpoint!(verbs::CREATE, CreateThreadRequest, create);
    endpoint!(verbs::LIST, ListThreadsRequest, list);
    endpoint!(verbs::GET, ThreadRef, get);
    endpoint!(verbs::RENAME, RenameThreadRequest, rename);
    endpoint!(verbs::DELETE, ThreadRef, delete);
    endpoint!(verbs::MESSAGES_LIST, ListMessagesRequest, messages);
    endpoint!(verbs::MESSAGES_APPEND, AppendMessageRequest, append);
    endpoint!(verbs::MESSAGES_UPDATE, UpdateMessageRequest, update);
    endpoint!(verbs::MESSAGES_GET, GetMessageRequest, message);
    endpoint!(verbs::HISTORY, HistoryRequest, history);
    endpoint!(verbs::SUMMARY_PUT, PutSummaryRequest, put_summary);
    let s = Arc::clone(&service);
    host.endpoint(
        verbs::HEALTH,
        handler(move |_ctx, _req: serde_json::Value| {
            let s = Arc::clone(&s);
            async move { Ok(s.health().await) }
        }),
    )
    .await
    .map_err(|e| anyhow::anyhow!("adding endpoint health: {e}"))?;
    Ok(Running { service, host })
}
