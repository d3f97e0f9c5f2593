//! The thread service's port: threads, per-(thread, model) message histories and their summaries.
//! Every read and write names the owner, and adapters enforce it inside the query: a thread that is
//! not the caller's behaves exactly like one that does not exist.

pub mod scylla;
pub mod sqlite;

use crate::StoreError;
use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

/// Which timestamp orders a thread listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SortField {
    CreatedAt,
    UpdatedAt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Asc,
    Desc,
}

/// A keyset position in a thread listing: the last item's sort timestamp and id. The next page
/// holds the items strictly after it in the listing's order (ties broken by id, same direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadKey {
    pub at: OffsetDateTime,
    pub id: Uuid,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LastMessage {
    /// The first characters of the message (see `LAST_MESSAGE_PREVIEW`).
    pub content: String,
    pub role: String,
    pub model_id: String,
    pub at: OffsetDateTime,
}

/// How many characters of the newest message a thread row keeps for listings.
pub const LAST_MESSAGE_PREVIEW: usize = 280;

#[derive(Debug, Clone, PartialEq)]
pub struct ThreadRecord {
    /// UUIDv7, made by the business layer.
    pub id: Uuid,
    pub owner_id: Uuid,
    pub title: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub message_count: u64,
    pub last_message: Option<LastMessage>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRecord {
    /// Increases by one per new summary of the history; a store refuses to go backwards.
    pub version: u64,
    pub content: String,
    pub tokens: u32,
    /// Id of the newest message the summary covers.
    pub covers_until: Uuid,
    pub model_used: String,
    pub generated_at: OffsetDateTime,
}

/// One model's history inside a thread.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelHistory {
    pub model_id: String,
    pub message_count: u64,
    pub last_message_at: Option<OffsetDateTime>,
    pub summary: Option<SummaryRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MessageRecord {
    /// UUIDv7: ordering by id is ordering by creation.
    pub id: Uuid,
    pub thread_id: Uuid,
    pub model_id: String,
    /// `user`, `assistant` or `system`.
    pub role: String,
    pub content: String,
    pub tokens: Option<u32>,
    pub temperature: Option<f64>,
    /// `complete`, `streaming`, `error`, `cancelled` or `interrupted`.
    pub status: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Client-supplied key that makes a retried append a no-op (unique per thread and model).
    pub idempotency_key: Option<String>,
    /// JSON context receipt of an assistant reply (what it was given).
    pub context: Option<String>,
}

/// Fields an update may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageUpdate {
    pub content: Option<String>,
    pub status: Option<String>,
    pub tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub context: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AppendOutcome {
    Inserted(MessageRecord),
    /// The id or idempotency key was seen before: this is the stored message, nothing changed.
    Duplicate(MessageRecord),
    /// The thread does not exist or is not the caller's.
    NoThread,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SummaryOutcome {
    Stored,
    /// A summary with this or a newer version is already stored; it was kept.
    Stale {
        current_version: u64,
    },
    NoThread,
}

#[async_trait]
pub trait ThreadStore: Send + Sync + 'static {
    fn provider(&self) -> &'static str;

    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_thread(&self, thread: &ThreadRecord) -> Result<(), StoreError>;

    async fn thread(&self, owner: Uuid, id: Uuid) -> Result<Option<ThreadRecord>, StoreError>;

    /// The caller's threads among `ids`, in the order of `ids`; others are left out.
    async fn threads_by_ids(
        &self,
        owner: Uuid,
        ids: &[Uuid],
    ) -> Result<Vec<ThreadRecord>, StoreError>;

    /// Up to `limit` of the owner's threads after `after`, in the given order.
    async fn list_threads(
        &self,
        owner: Uuid,
        sort: SortField,
        direction: Direction,
        after: Option<ThreadKey>,
        limit: usize,
    ) -> Result<Vec<ThreadRecord>, StoreError>;

    async fn count_threads(&self, owner: Uuid) -> Result<u64, StoreError>;

    async fn rename_thread(
        &self,
        owner: Uuid,
        id: Uuid,
        title: &str,
        at: OffsetDateTime,
    ) -> Result<Option<ThreadRecord>, StoreError>;

    /// Deletes the thread with its messages and summaries; returns how many messages went.
    async fn delete_thread(&self, owner: Uuid, id: Uuid) -> Result<Option<u64>, StoreError>;

    /// The per-model histories of a thread (empty when the thread is not the caller's).
    async fn models(&self, owner: Uuid, thread: Uuid) -> Result<Vec<ModelHistory>, StoreError>;

    /// Appends to the (thread, model) history and bumps the thread's counters and `updated_at`.
    async fn append_message(
        &self,
        owner: Uuid,
        message: &MessageRecord,
    ) -> Result<AppendOutcome, StoreError>;

    async fn update_message(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
        id: Uuid,
        update: &MessageUpdate,
        at: OffsetDateTime,
    ) -> Result<Option<MessageRecord>, StoreError>;

    async fn message(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
        id: Uuid,
    ) -> Result<Option<MessageRecord>, StoreError>;

    /// A page of a history by id order; `None` when the thread is not the caller's.
    async fn list_messages(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
        direction: Direction,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Option<Vec<MessageRecord>>, StoreError>;

    /// The newest `limit` messages of a history that come after `after` (if given), oldest first.
    async fn recent_messages(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Option<Vec<MessageRecord>>, StoreError>;

    async fn summary(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
    ) -> Result<Option<SummaryRecord>, StoreError>;

    /// Stores a summary unless one with the same or a newer version exists.
    async fn put_summary(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
        summary: &SummaryRecord,
    ) -> Result<SummaryOutcome, StoreError>;
}
