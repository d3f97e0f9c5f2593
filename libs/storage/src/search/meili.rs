//! Meilisearch adapter of the thread-search port (`docs/search.md` has the design).
//!
//! One document per thread, primary key `id` (the thread's UUID). The owner filter is a
//! Meilisearch `filter` of the same search request, never applied afterwards. Filters compare
//! with `<`/`>` on numbers only (strings only since Meilisearch 1.15), and numbers are `f64`, exact
//! up to 2^53: so timestamps are unix milliseconds and the id tie-breaker is the UUID's 128 bits
//! split into three numeric fields (48 + 40 + 40 bits). Their order is the order of the UUID's
//! text, which is the tie-breaker of the SQL adapters.
//!
//! Writes are asynchronous tasks. With `wait_for_tasks` every write waits for its task and
//! returns its failure; without it a write returns once enqueued and a background watcher logs
//! the tasks that fail (`tracing` error) and counts them ([`MeiliThreadSearch::failed_tasks`]).

use super::{SearchDoc, ThreadSearch, terms};
use crate::StoreError;
use crate::threads::{Direction, SortField, ThreadKey};
use async_trait::async_trait;
use meilisearch_sdk::client::Client;
use meilisearch_sdk::errors::{Error as MeiliError, ErrorCode, ErrorType, MeilisearchError};
use meilisearch_sdk::indexes::Index;
use meilisearch_sdk::search::{MatchingStrategies, Selectors};
use meilisearch_sdk::settings::{
    MinWordSizeForTypos, PaginationSetting, Settings, TypoToleranceSettings,
};
use meilisearch_sdk::task_info::TaskInfo;
use meilisearch_sdk::tasks::{Task, TasksSearchQuery};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// The index's primary key: the thread id as a hyphenated lowercase UUID string.
pub const PRIMARY_KEY: &str = "id";
const OWNER: &str = "owner_id";
const TITLE: &str = "title";
const SUMMARY: &str = "summary";
const CREATED_AT: &str = "created_at";
const UPDATED_AT: &str = "updated_at";
/// The UUID's bits 127..80, 79..40 and 39..0: each below 2^53, so exact as a Meilisearch number.
const ID_HI: &str = "id_hi";
const ID_MID: &str = "id_mid";
const ID_LO: &str = "id_lo";
const ID_ONLY: &[&str] = &[PRIMARY_KEY];

/// Upper bound of `totalHits` (the `pagination.maxTotalHits` setting, default 1000): `count`
/// is exact up to this many matches of one owner and query.
pub const MAX_TOTAL_HITS: usize = 100_000;
/// Every HTTP call is bounded (the SDK's reqwest client has no timeout of its own).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const TASK_POLL: Duration = Duration::from_millis(25);
/// How long a write waits for its task when `wait_for_tasks` is set.
const DOCUMENT_TASK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `connect` waits for index creation and settings (a settings change re-indexes).
const SETUP_TASK_TIMEOUT: Duration = Duration::from_secs(600);
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
const WATCH_BATCH: usize = 200;
const WATCH_MAX_PENDING: usize = 100_000;

#[derive(Clone)]
pub struct MeiliConfig {
    /// Base URL, e.g. `http://localhost:7700`.
    pub url: String,
    /// Sent as `Authorization: Bearer …`; needs search, documents, settings, indexes and tasks
    /// rights on `index` (the master key, or an admin key scoped to the index).
    pub api_key: Option<String>,
    /// Index uid: ASCII letters, digits, `-` and `_`.
    pub index: String,
    /// Make every write wait until Meilisearch has applied it (and fail if its task failed), so
    /// the next search sees it. For tests and tools; services leave it off and let the watcher
    /// report failed tasks.
    pub wait_for_tasks: bool,
}

impl fmt::Debug for MeiliConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeiliConfig")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("index", &self.index)
            .field("wait_for_tasks", &self.wait_for_tasks)
            .finish()
    }
}

#[derive(Clone)]
pub struct MeiliThreadSearch {
    client: Client,
    index: Index,
    wait_for_tasks: bool,
    watch: Arc<Watch>,
}

impl MeiliThreadSearch {
    /// Connects, creates the index (primary key `id`) if it is missing, refuses an index with
    /// another primary key, and applies the settings this adapter relies on, waiting for both.
    pub async fn connect(config: &MeiliConfig) -> Result<Self, StoreError> {
        check_index_uid(&config.index)?;
        if let Some(key) = &config.api_key {
            check_api_key(key)?;
        }
        let url = config.url.trim().trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(StoreError::Unavailable(format!(
                "meilisearch url must start with http:// or https://, got {url:?}"
            )));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|err| {
            StoreError::Unavailable(format!(
                "the meilisearch adapter needs a tokio runtime: {err}"
            ))
        })?;
        let client = Client::new(url, config.api_key.as_deref()).map_err(store_error)?;
        ensure_index(&client, &config.index).await?;
        let index = client.index(&config.index);
        let task = timed(index.set_settings(&index_settings())).await?;
        let done = wait(&client, task, SETUP_TASK_TIMEOUT).await?;
        succeeded(done, "applying the index settings")?;
        let watch = Arc::new(Watch::default());
        if !config.wait_for_tasks {
            runtime.spawn(watch_tasks(
                client.clone(),
                config.index.clone(),
                Arc::downgrade(&watch),
            ));
        }
        Ok(Self {
            client,
            index,
            wait_for_tasks: config.wait_for_tasks,
            watch,
        })
    }

    /// Writes whose task failed since `connect` (only counted when not waiting for tasks; each
    /// one is also logged at error level with its thread id).
    pub fn failed_tasks(&self) -> u64 {
        self.watch.failed.load(Ordering::Relaxed)
    }

    /// Writes enqueued but not yet seen finished by the watcher.
    pub fn pending_tasks(&self) -> usize {
        self.watch.lock().len()
    }

    /// Deletes the whole index and waits for it (tests and tools; the adapter is unusable after).
    pub async fn delete_index(&self) -> Result<(), StoreError> {
        let task = timed(self.client.delete_index(&self.index.uid)).await?;
        let done = wait(&self.client, task, SETUP_TASK_TIMEOUT).await?;
        succeeded(done, "deleting the index")
    }

    /// Returns once the write is applied (`wait_for_tasks`) or handed to the watcher.
    async fn settle(
        &self,
        task: TaskInfo,
        op: &'static str,
        thread_id: Uuid,
    ) -> Result<(), StoreError> {
        if self.wait_for_tasks {
            let done = wait(&self.client, task, DOCUMENT_TASK_TIMEOUT).await?;
            return succeeded(done, op);
        }
        self.watch.push(Pending {
            uid: task.task_uid,
            op,
            thread_id,
        });
        Ok(())
    }
}

/// What the index stores of a thread.
#[derive(Debug, Serialize)]
struct IndexedDoc<'a> {
    id: Uuid,
    owner_id: Uuid,
    title: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<&'a str>,
    created_at: i64,
    updated_at: i64,
    id_hi: u64,
    id_mid: u64,
    id_lo: u64,
}

impl<'a> From<&'a SearchDoc> for IndexedDoc<'a> {
    fn from(d: &'a SearchDoc) -> Self {
        let key = IdKey::of(d.thread_id);
        Self {
            id: d.thread_id,
            owner_id: d.owner_id,
            title: &d.title,
            summary: d.summary.as_deref(),
            created_at: unix_ms(d.created_at),
            updated_at: unix_ms(d.updated_at),
            id_hi: key.hi,
            id_mid: key.mid,
            id_lo: key.lo,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Hit {
    id: Uuid,
}

/// A UUID as three integers below 2^53, ordered like the UUID (and like its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct IdKey {
    hi: u64,
    mid: u64,
    lo: u64,
}

impl IdKey {
    const MASK_40: u128 = (1 << 40) - 1;

    fn of(id: Uuid) -> Self {
        let bits = id.as_u128();
        let part = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
        Self {
            hi: part(bits >> 80),
            mid: part((bits >> 40) & Self::MASK_40),
            lo: part(bits & Self::MASK_40),
        }
    }
}

/// Milliseconds since the epoch, the precision every adapter keeps (exact in Meilisearch's f64
/// for any date within ±285,000 years).
fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The `q` parameter: the port's plain terms joined by spaces; `None` matches nothing.
fn query_text(query: &str) -> Option<String> {
    let terms = terms(query);
    (!terms.is_empty()).then(|| terms.join(" "))
}

fn sort_attribute(sort: SortField) -> &'static str {
    match sort {
        SortField::CreatedAt => CREATED_AT,
        SortField::UpdatedAt => UPDATED_AT,
    }
}

/// The `sort` parameter: the timestamp, then the id parts, all in the listing's direction.
fn sort_criteria(sort: SortField, direction: Direction) -> Vec<String> {
    let dir = match direction {
        Direction::Asc => "asc",
        Direction::Desc => "desc",
    };
    [sort_attribute(sort), ID_HI, ID_MID, ID_LO]
        .iter()
        .map(|attr| format!("{attr}:{dir}"))
        .collect()
}

/// `owner_id = "<uuid>"` (a UUID's text needs no escaping).
fn owner_filter(owner: Uuid) -> String {
    format!("{OWNER} = \"{owner}\"")
}

/// The owner filter, then the keyset condition when paging: the documents strictly after
/// `(at, id)` in the listing's order, written as nested comparisons because a filter has no
/// tuple comparison.
fn search_filter(
    owner: Uuid,
    sort: SortField,
    direction: Direction,
    after: Option<ThreadKey>,
) -> String {
    let owner_filter = owner_filter(owner);
    let Some(after) = after else {
        return owner_filter;
    };
    let op = match direction {
        Direction::Asc => ">",
        Direction::Desc => "<",
    };
    let at = unix_ms(after.at);
    let key = IdKey::of(after.id);
    let col = sort_attribute(sort);
    format!(
        "{owner_filter} AND ({col} {op} {at} OR ({col} = {at} AND \
         ({ID_HI} {op} {hi} OR ({ID_HI} = {hi} AND \
         ({ID_MID} {op} {mid} OR ({ID_MID} = {mid} AND {ID_LO} {op} {lo}))))))",
        hi = key.hi,
        mid = key.mid,
        lo = key.lo,
    )
}

/// Everything matching depends on is pinned here, so an index touched by hand is put back.
fn index_settings() -> Settings {
    Settings::new()
        .with_searchable_attributes([TITLE, SUMMARY])
        // Searches retrieve `id` only, which must stay displayed.
        .with_displayed_attributes(["*"])
        .with_filterable_attributes([OWNER, CREATED_AT, UPDATED_AT, ID_HI, ID_MID, ID_LO])
        .with_sortable_attributes([CREATED_AT, UPDATED_AT, ID_HI, ID_MID, ID_LO])
        // `sort` first: the requested order is the whole order, relevance never reorders a page.
        .with_ranking_rules([
            "sort",
            "words",
            "typo",
            "proximity",
            "attribute",
            "exactness",
        ])
        .with_pagination(PaginationSetting {
            max_total_hits: MAX_TOTAL_HITS,
        })
        // Meilisearch's defaults, stated: terms before the last match whole words only, and one
        // typo (from 5 letters) lets `microservice` match `microservices` as FTS5's prefix does.
        .with_typo_tolerance(TypoToleranceSettings {
            enabled: Some(true),
            disable_on_attributes: Some(Vec::new()),
            disable_on_words: Some(Vec::new()),
            min_word_size_for_typos: Some(MinWordSizeForTypos {
                one_typo: Some(5),
                two_typos: Some(9),
            }),
            disable_on_numbers: None,
        })
        .with_stop_words(Vec::<String>::new())
        .with_synonyms(std::collections::HashMap::<String, Vec<String>>::new())
        .with_distinct_attribute(None::<&str>)
}

#[async_trait]
impl ThreadSearch for MeiliThreadSearch {
    fn provider(&self) -> &'static str {
        "meilisearch"
    }

    async fn upsert(&self, doc: &SearchDoc) -> Result<(), StoreError> {
        // `POST /documents` replaces the whole document with the same primary key.
        let task = timed(self.index.add_or_replace(&[IndexedDoc::from(doc)], None)).await?;
        self.settle(task, "upsert", doc.thread_id).await
    }

    async fn delete(&self, thread_id: Uuid) -> Result<(), StoreError> {
        // Deleting a missing document is a task that succeeds with nothing deleted.
        let task = timed(self.index.delete_document(thread_id)).await?;
        self.settle(task, "delete", thread_id).await
    }

    async fn search(
        &self,
        owner: Uuid,
        query: &str,
        sort: SortField,
        direction: Direction,
        after: Option<ThreadKey>,
        limit: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        let Some(q) = query_text(query) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = search_filter(owner, sort, direction, after);
        let criteria = sort_criteria(sort, direction);
        let criteria: Vec<&str> = criteria.iter().map(String::as_str).collect();
        let mut request = self.index.search();
        request
            .with_query(&q)
            .with_filter(&filter)
            .with_sort(&criteria)
            .with_matching_strategy(MatchingStrategies::ALL)
            .with_attributes_to_retrieve(Selectors::Some(ID_ONLY))
            .with_offset(0)
            .with_limit(limit.min(MAX_TOTAL_HITS));
        let found = timed(request.execute::<Hit>()).await?;
        Ok(found.hits.into_iter().map(|hit| hit.result.id).collect())
    }

    async fn count(&self, owner: Uuid, query: &str) -> Result<u64, StoreError> {
        let Some(q) = query_text(query) else {
            return Ok(0);
        };
        let filter = owner_filter(owner);
        let mut request = self.index.search();
        // `page` + `hitsPerPage` make `totalHits` exhaustive; `hitsPerPage: 0` returns no hits.
        request
            .with_query(&q)
            .with_filter(&filter)
            .with_matching_strategy(MatchingStrategies::ALL)
            .with_attributes_to_retrieve(Selectors::Some(ID_ONLY))
            .with_page(1)
            .with_hits_per_page(0);
        let found = timed(request.execute::<Hit>()).await?;
        let total = found.total_hits.ok_or_else(|| {
            StoreError::Corrupt("meilisearch answered a paged search without totalHits".into())
        })?;
        if total >= MAX_TOTAL_HITS {
            tracing::warn!(
                %owner,
                total,
                "meilisearch count reached maxTotalHits; the count is a lower bound"
            );
        }
        Ok(u64::try_from(total).unwrap_or(u64::MAX))
    }
}

/// Creates the index with primary key `id` unless it exists; any other primary key is refused.
async fn ensure_index(client: &Client, uid: &str) -> Result<(), StoreError> {
    let primary_key = match index_primary_key(client, uid).await? {
        Some(primary_key) => primary_key,
        None => {
            let task = timed(client.create_index(uid, Some(PRIMARY_KEY))).await?;
            match wait(client, task, SETUP_TASK_TIMEOUT).await? {
                // Another instance created it first: fine if its primary key is ours (below).
                Task::Failed { content }
                    if content.error.error_code == ErrorCode::IndexAlreadyExists => {}
                done => succeeded(done, "creating the index")?,
            }
            index_primary_key(client, uid).await?.ok_or_else(|| {
                StoreError::Unavailable(format!("meilisearch index {uid} vanished after creation"))
            })?
        }
    };
    match primary_key.as_deref() {
        Some(PRIMARY_KEY) => Ok(()),
        Some(other) => Err(StoreError::Corrupt(format!(
            "meilisearch index {uid} has primary key {other:?}, this adapter needs {PRIMARY_KEY:?}"
        ))),
        None => {
            // An index without a primary key has no documents yet: give it ours.
            let mut index = client.index(uid);
            let task = timed(index.set_primary_key(PRIMARY_KEY)).await?;
            let done = wait(client, task, SETUP_TASK_TIMEOUT).await?;
            succeeded(done, "setting the index primary key")
        }
    }
}

/// `None` when the index does not exist, else its primary key (if it has one yet).
async fn index_primary_key(
    client: &Client,
    uid: &str,
) -> Result<Option<Option<String>>, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, client.get_index(uid)).await {
        Err(_) => Err(timed_out()),
        Ok(Ok(index)) => Ok(Some(index.primary_key)),
        Ok(Err(MeiliError::Meilisearch(err))) if err.error_code == ErrorCode::IndexNotFound => {
            Ok(None)
        }
        Ok(Err(err)) => Err(store_error(err)),
    }
}

/// Waits for a task to finish (`Task::Succeeded` or `Task::Failed`), at most `limit`.
async fn wait(client: &Client, task: TaskInfo, limit: Duration) -> Result<Task, StoreError> {
    let uid = task.task_uid;
    let waiting = task.wait_for_completion(client, Some(TASK_POLL), Some(limit));
    // The SDK counts only its sleeps against `limit`; this bounds the wall time too.
    match tokio::time::timeout(limit + REQUEST_TIMEOUT, waiting).await {
        Ok(Ok(done)) => Ok(done),
        Err(_) | Ok(Err(MeiliError::Timeout)) => Err(StoreError::Unavailable(format!(
            "meilisearch task {uid} did not finish within {limit:?}"
        ))),
        Ok(Err(err)) => Err(store_error(err)),
    }
}

fn succeeded(task: Task, what: &str) -> Result<(), StoreError> {
    match task {
        Task::Succeeded { .. } => Ok(()),
        Task::Failed { content } => Err(task_failed(what, content.task.uid, &content.error)),
        Task::Enqueued { content } => Err(StoreError::Unavailable(format!(
            "{what}: meilisearch task {} is still enqueued",
            content.uid
        ))),
        Task::Processing { content } => Err(StoreError::Unavailable(format!(
            "{what}: meilisearch task {} is still processing",
            content.uid
        ))),
    }
}

fn task_failed(what: &str, uid: u32, err: &MeilisearchError) -> StoreError {
    match meili_error(err) {
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{what}: task {uid} failed: {m}")),
        StoreError::Conflict(m) => StoreError::Conflict(format!("{what}: task {uid} failed: {m}")),
        StoreError::Unavailable(m) => {
            StoreError::Unavailable(format!("{what}: task {uid} failed: {m}"))
        }
    }
}

/// One HTTP call, bounded by `REQUEST_TIMEOUT`.
async fn timed<T>(call: impl Future<Output = Result<T, MeiliError>>) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result.map_err(store_error),
        Err(_) => Err(timed_out()),
    }
}

fn timed_out() -> StoreError {
    StoreError::Unavailable(format!(
        "meilisearch did not answer within {REQUEST_TIMEOUT:?}"
    ))
}

/// Transport, authentication, internal and timeout errors may pass: `Unavailable`. A request the
/// engine refuses as invalid (an attribute not filterable, a missing index) means the index does
/// not have the schema this adapter set up: `Corrupt`, like an answer that cannot be parsed.
fn store_error(err: MeiliError) -> StoreError {
    match err {
        MeiliError::Meilisearch(err) => meili_error(&err),
        MeiliError::ParseError(err) => {
            StoreError::Corrupt(format!("meilisearch answer could not be read: {err}"))
        }
        other => StoreError::Unavailable(format!("meilisearch: {other}")),
    }
}

fn meili_error(err: &MeilisearchError) -> StoreError {
    match err.error_type {
        ErrorType::InvalidRequest => StoreError::Corrupt(format!("meilisearch refused: {err}")),
        _ => StoreError::Unavailable(format!("meilisearch: {err}")),
    }
}

/// Index uids are alphanumeric with `-` and `_`, at most 400 bytes (they go into URL paths).
fn check_index_uid(uid: &str) -> Result<(), StoreError> {
    let valid = !uid.is_empty()
        && uid.len() <= 400
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "invalid meilisearch index uid {uid:?}: use ASCII letters, digits, - and _"
        )))
    }
}

/// The SDK puts the key in a header and panics if it is not a valid header value; refuse first.
fn check_api_key(key: &str) -> Result<(), StoreError> {
    if key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(StoreError::Unavailable(
            "invalid meilisearch api key: only visible ASCII characters are allowed".into(),
        ))
    }
}

/// A write whose task has not been seen finished yet.
#[derive(Debug, Clone, Copy)]
struct Pending {
    uid: u32,
    op: &'static str,
    thread_id: Uuid,
}

#[derive(Default)]
struct Watch {
    pending: Mutex<VecDeque<Pending>>,
    failed: AtomicU64,
}

impl Watch {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, task: Pending) {
        let mut pending = self.lock();
        if pending.len() >= WATCH_MAX_PENDING
            && let Some(dropped) = pending.pop_front()
        {
            tracing::warn!(
                task = dropped.uid,
                op = dropped.op,
                thread_id = %dropped.thread_id,
                "too many unfinished meilisearch tasks; this one is no longer watched"
            );
        }
        pending.push_back(task);
    }

    fn oldest(&self, n: usize) -> Vec<Pending> {
        self.lock().iter().take(n).copied().collect()
    }

    fn forget(&self, finished: &HashSet<u32>) {
        self.lock().retain(|p| !finished.contains(&p.uid));
    }
}

/// Polls the oldest unfinished writes once a second until the adapter is dropped.
async fn watch_tasks(client: Client, index_uid: String, watch: Weak<Watch>) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(watch) = watch.upgrade() else {
            return;
        };
        let batch = watch.oldest(WATCH_BATCH);
        if batch.is_empty() {
            continue;
        }
        if let Err(err) = check_tasks(&client, &index_uid, &watch, &batch).await {
            tracing::warn!(error = %err, "could not check meilisearch tasks; retrying");
        }
    }
}

/// Finds which of `batch` finished (first: a task seen unfinished is kept for the next round),
/// then which of those failed, logs and counts the failures and forgets the finished.
async fn check_tasks(
    client: &Client,
    index_uid: &str,
    watch: &Watch,
    batch: &[Pending],
) -> Result<(), StoreError> {
    let uids: Vec<u32> = batch.iter().map(|p| p.uid).collect();
    let limit = u32::try_from(uids.len()).unwrap_or(u32::MAX);
    let mut unfinished_query = TasksSearchQuery::new(client);
    unfinished_query
        .with_index_uids([index_uid])
        .with_uids(uids.iter())
        .with_statuses(["enqueued", "processing"])
        .with_limit(limit);
    let unfinished: HashSet<u32> = timed(client.get_tasks_with(&unfinished_query))
        .await?
        .results
        .iter()
        .map(Task::get_uid)
        .collect();
    let finished: Vec<u32> = uids
        .iter()
        .copied()
        .filter(|uid| !unfinished.contains(uid))
        .collect();
    if finished.is_empty() {
        return Ok(());
    }
    let mut failed_query = TasksSearchQuery::new(client);
    failed_query
        .with_index_uids([index_uid])
        .with_uids(finished.iter())
        .with_statuses(["failed"])
        .with_limit(limit);
    for task in timed(client.get_tasks_with(&failed_query)).await?.results {
        if let Task::Failed { content } = task {
            let uid = content.task.uid;
            let write = batch.iter().find(|p| p.uid == uid);
            watch.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                task = uid,
                op = write.map(|p| p.op),
                thread_id = ?write.map(|p| p.thread_id),
                error = %content.error,
                "meilisearch task failed: the search index misses this write"
            );
        }
    }
    watch.forget(&finished.into_iter().collect());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn id_parts_keep_the_order_of_the_uuid_text() {
        let mut ids: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
        ids.extend((0..50).map(|_| Uuid::now_v7()));
        ids.push(Uuid::nil());
        ids.push(Uuid::max());
        ids.push(Uuid::from_u128(1 << 40));
        ids.push(Uuid::from_u128((1 << 40) - 1));
        ids.push(Uuid::from_u128(1 << 80));
        let mut by_text = ids.clone();
        by_text.sort_by_key(|id| id.to_string());
        let mut by_parts = ids;
        by_parts.sort_by_key(|id| IdKey::of(*id));
        assert_eq!(by_text, by_parts);
        let max = IdKey::of(Uuid::max());
        assert_eq!(
            (max.hi, max.mid, max.lo),
            ((1 << 48) - 1, (1 << 40) - 1, (1 << 40) - 1)
        );
        assert!(max.hi < 1 << 53 && max.mid < 1 << 53 && max.lo < 1 << 53);
    }

    #[test]
    fn documents_carry_numbers_for_every_comparison() {
        let doc = SearchDoc {
            thread_id: Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001),
            owner_id: Uuid::from_u128(2),
            title: "Title".into(),
            summary: None,
            created_at: datetime!(2024-01-02 03:04:05.678901 UTC),
            updated_at: datetime!(2024-01-02 03:04:06 UTC),
        };
        let json = serde_json::to_value(IndexedDoc::from(&doc)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "01930000-0000-7000-8000-000000000001",
                "owner_id": "00000000-0000-0000-0000-000000000002",
                "title": "Title",
                "created_at": 1_704_164_645_678_i64,
                "updated_at": 1_704_164_646_000_i64,
                "id_hi": 0x0193_0000_0000_u64,
                "id_mid": 0x70_0080_0000_u64,
                "id_lo": 1,
            })
        );
    }

    #[test]
    fn the_owner_is_always_in_the_filter_and_the_keyset_is_strict() {
        let owner = Uuid::from_u128(7);
        assert_eq!(
            search_filter(owner, SortField::UpdatedAt, Direction::Desc, None),
            r#"owner_id = "00000000-0000-0000-0000-000000000007""#
        );
        let after = ThreadKey {
            at: datetime!(1970-01-01 00:00:01.5 UTC),
            id: Uuid::from_u128((3 << 80) | (2 << 40) | 1),
        };
        assert_eq!(
            search_filter(owner, SortField::CreatedAt, Direction::Asc, Some(after)),
            "owner_id = \"00000000-0000-0000-0000-000000000007\" AND \
             (created_at > 1500 OR (created_at = 1500 AND \
             (id_hi > 3 OR (id_hi = 3 AND (id_mid > 2 OR (id_mid = 2 AND id_lo > 1))))))"
        );
        assert!(
            search_filter(owner, SortField::UpdatedAt, Direction::Desc, Some(after))
                .contains("(updated_at < 1500 OR (updated_at = 1500 AND (id_hi < 3")
        );
        assert_eq!(
            sort_criteria(SortField::UpdatedAt, Direction::Desc),
            ["updated_at:desc", "id_hi:desc", "id_mid:desc", "id_lo:desc"]
        );
    }

    #[test]
    fn user_input_reaches_the_engine_as_plain_terms_only() {
        assert_eq!(
            query_text(r#"owner_id = "x" OR -title "phrase" *"#).as_deref(),
            Some("owner id x or title phrase")
        );
        assert_eq!(query_text(" \"* -- "), None);
    }

    #[test]
    fn bad_configuration_is_refused_before_any_request() {
        assert!(check_index_uid("polylogue_threads-1").is_ok());
        assert!(check_index_uid("").is_err());
        assert!(check_index_uid("a/b").is_err());
        assert!(check_index_uid("a b").is_err());
        assert!(check_api_key("masterKey-123_abc").is_ok());
        assert!(check_api_key("bad\nkey").is_err());
        let config = MeiliConfig {
            url: "http://x".into(),
            api_key: Some("secret".into()),
            index: "i".into(),
            wait_for_tasks: false,
        };
        assert!(!format!("{config:?}").contains("secret"));
    }

    #[test]
    fn the_settings_put_sort_first_and_restrict_search_to_title_and_summary() {
        let json = serde_json::to_value(index_settings()).unwrap();
        assert_eq!(json["rankingRules"][0], "sort");
        assert_eq!(
            json["searchableAttributes"],
            serde_json::json!(["title", "summary"])
        );
        assert_eq!(json["pagination"]["maxTotalHits"], MAX_TOTAL_HITS);
        assert_eq!(json["distinctAttribute"], serde_json::Value::Null);
        for attr in [
            "owner_id",
            "created_at",
            "updated_at",
            "id_hi",
            "id_mid",
            "id_lo",
        ] {
            assert!(
                json["filterableAttributes"]
                    .as_array()
                    .unwrap()
                    .contains(&attr.into())
            );
        }
    }
}
