//! The auth-port contract against every reachable adapter.

use polylogue_storage::auth::scylla::{ScyllaAuthStore, ScyllaConfig};
use polylogue_storage::auth::sqlite::SqliteAuthStore;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fts5_adapter_keeps_the_search_contract() {
    let dir = tempfile::tempdir().unwrap();
    let search = polylogue_storage::search::sqlite::SqliteThreadSearch::open(
        &dir.path().join("thread-search.sqlite"),
    )
    .unwrap();
    contract::search::run_all(&search).await.unwrap();
}
