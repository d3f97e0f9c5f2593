//! Every storage port's contract against every reachable adapter: the embedded ones always,
//! ScyllaDB when `SCYLLA_URL` is set, Meilisearch when `MEILI_URL` is set.

use polylogue_storage::auth::scylla::{ScyllaAuthStore, ScyllaConfig};
use polylogue_storage::auth::sqlite::SqliteAuthStore;
use polylogue_storage::search::meili::{MeiliConfig, MeiliThreadSearch};
use polylogue_storage::search::{SearchDoc, ThreadSearch};
use polylogue_storage::{AuthStore, contract};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_adapter_keeps_the_auth_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn AuthStore> =
        Arc::new(SqliteAuthStore::open(&dir.path().join("auth.sqlite")).unwrap());
    contract::run_all(store).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_adapter_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.sqlite");
    let store = SqliteAuthStore::open(&path).unwrap();
    contract::users_round_trip(&store).await.unwrap();
    drop(store);
    // Migrations are idempotent and data persists.
    let reopened: Arc<dyn AuthStore> = Arc::new(SqliteAuthStore::open(&path).unwrap());
    contract::run_all(reopened).await.unwrap();
}

/// Runs only where a ScyllaDB is reachable (`SCYLLA_URL=host:9042`); prints why it skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scylla_adapter_keeps_the_auth_contract() {
    let Ok(url) = std::env::var("SCYLLA_URL") else {
        eprintln!("SCYLLA_URL not set: ScyllaDB contract skipped");
        return;
    };
    let keyspace = format!("polylogue_test_{}", std::process::id());
    let config = ScyllaConfig {
        nodes: url.split(',').map(str::to_owned).collect(),
        keyspace,
        replication_factor: 1,
        username: std::env::var("SCYLLA_USERNAME").ok(),
        password: std::env::var("SCYLLA_PASSWORD").ok(),
    };
    let store: Arc<dyn AuthStore> = Arc::new(ScyllaAuthStore::connect(&config).await.unwrap());
    contract::run_all(store).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_adapter_keeps_the_thread_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn polylogue_storage::threads::ThreadStore> = Arc::new(
        polylogue_storage::threads::sqlite::SqliteThreadStore::open(
            &dir.path().join("thread.sqlite"),
        )
        .unwrap(),
    );
    contract::threads::run_all(store).await.unwrap();
}

/// Runs only where a ScyllaDB is reachable (`SCYLLA_URL=host:9042`); prints why it skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scylla_adapter_keeps_the_thread_contract() {
    let Ok(url) = std::env::var("SCYLLA_URL") else {
        eprintln!("SCYLLA_URL not set: ScyllaDB thread contract skipped");
        return;
    };
    let config = ScyllaConfig {
        nodes: url.split(',').map(str::to_owned).collect(),
        keyspace: format!("polylogue_threads_test_{}", std::process::id()),
        replication_factor: 1,
        username: std::env::var("SCYLLA_USERNAME").ok(),
        password: std::env::var("SCYLLA_PASSWORD").ok(),
    };
    let store: Arc<dyn polylogue_storage::threads::ThreadStore> = Arc::new(
        polylogue_storage::threads::scylla::ScyllaThreadStore::connect(&config)
            .await
            .unwrap(),
    );
    // Stores may share a keyspace and its migration ledger; each applies only its own files,
    // and connecting again finds them applied.
    ScyllaAuthStore::connect(&config).await.unwrap();
    polylogue_storage::threads::scylla::ScyllaThreadStore::connect(&config)
        .await
        .unwrap();
    contract::threads::run_all(store).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fts5_adapter_keeps_the_search_contract() {
    let dir = tempfile::tempdir().unwrap();
    let search = polylogue_storage::search::sqlite::SqliteThreadSearch::open(
        &dir.path().join("thread-search.sqlite"),
    )
    .unwrap();
    contract::search::run_all(&search).await.unwrap();
}

#[expect(
    clippy::print_stderr,
    reason = "says why the engine's contract was skipped"
)]
fn meili_config(wait_for_tasks: bool) -> Option<MeiliConfig> {
    let Ok(url) = std::env::var("MEILI_URL") else {
        eprintln!("MEILI_URL not set: Meilisearch contract skipped");
        return None;
    };
    Some(MeiliConfig {
        url,
        api_key: std::env::var("MEILI_KEY").ok(),
        // One index per run; deleted at the end.
        index: format!("polylogue_test_{}", uuid::Uuid::now_v7().simple()),
        wait_for_tasks,
    })
}

/// Runs only where a Meilisearch is reachable (`MEILI_URL=http://host:7700`, and `MEILI_KEY`
/// when the instance has a master key); prints why it skipped otherwise. Writes wait for their
/// tasks, so every call of the suite sees the previous ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meilisearch_adapter_keeps_the_search_contract() {
    let Some(config) = meili_config(true) else {
        return;
    };
    let search = MeiliThreadSearch::connect(&config).await.unwrap();
    // Connecting again finds the index and re-applies the same settings.
    let search_again = MeiliThreadSearch::connect(&config).await.unwrap();
    let outcome = contract::search::run_all(&search).await;
    search_again.delete_index().await.unwrap();
    outcome.unwrap();
}

/// Without waiting, writes return once enqueued; the watcher sees their tasks finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meilisearch_watcher_follows_unawaited_writes() {
    let Some(config) = meili_config(false) else {
        return;
    };
    let search = MeiliThreadSearch::connect(&config).await.unwrap();
    let owner = uuid::Uuid::now_v7();
    let at = polylogue_storage::now_ms();
    let doc = SearchDoc {
        thread_id: uuid::Uuid::now_v7(),
        owner_id: owner,
        title: "Watched write".into(),
        summary: None,
        created_at: at,
        updated_at: at,
    };
    search.upsert(&doc).await.unwrap();
    for _ in 0..300 {
        if search.pending_tasks() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let pending = search.pending_tasks();
    let failed = search.failed_tasks();
    let found = search.count(owner, "watched").await;
    search.delete_index().await.unwrap();
    assert_eq!((pending, failed), (0, 0));
    assert_eq!(found.unwrap(), 1);
}
