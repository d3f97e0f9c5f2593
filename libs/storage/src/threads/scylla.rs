//! ScyllaDB adapter of the thread port: the scale-out twin of the SQLite adapter, same contract.
//!
//! Every statement names its partition key. The live rows of `threads`, `messages` and
//! `message_keys` change only through lightweight transactions (Paxos at SERIAL, commit at
//! LOCAL_QUORUM); the listing indexes and the model directory take plain LOCAL_QUORUM writes.
//! Operations that span partitions are ordered so that a crash leaves nothing a reader could
//! trip over, and so that repeating the operation completes it. Schema and reasons:
//! `migrations/scylla/0002_threads.cql`, `docs/storage-scylla.md` ("Thread port").

use super::{
    AppendOutcome, Direction, LAST_MESSAGE_PREVIEW, LastMessage, MessageRecord, MessageUpdate,
    ModelHistory, SortField, SummaryOutcome, SummaryRecord, ThreadKey, ThreadRecord, ThreadStore,
};
use crate::StoreError;
use crate::auth::scylla::ScyllaConfig;
use crate::scylla_common::{self, Cql, LWT_ATTEMPTS, Migration, Mode, corrupt};
use async_trait::async_trait;
use futures::future::try_join_all;
use scylla::DeserializeRow;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;
use time::OffsetDateTime;
use uuid::Uuid;

/// Versioned schema files of this store, applied in order and recorded in `schema_migrations`.
const MIGRATIONS: &[Migration] = &[(
    2,
    "0002_threads",
    include_str!("../../migrations/scylla/0002_threads.cql"),
)];

/// Rounds of a read-then-compare-and-set loop. A round is lost only when another writer changed
/// the row in between (or a timeout left the outcome unknown), so this bounds how much concurrent
/// traffic on one thread a call rides out before it answers `Unavailable`.
const CAS_ATTEMPTS: usize = 16;

const THREAD_COLS: &str = "id, owner_id, title, created_at, updated_at, message_count, last_id, \
                           last_content, last_role, last_model, last_at, revision, deleted_at, \
                           deleted_messages";
const MESSAGE_COLS: &str = "id, thread_id, model_id, role, content, tokens, temperature, status, \
                            created_at, updated_at, idempotency_key, context, writer";
const HISTORY_COLS: &str = "message_count, last_message_at, summary_version, summary, \
                            summary_tokens, summary_covers_until, summary_model, summary_at";
const KEY_COLS: &str = "message_id, writer, role, content, tokens, temperature, status, \
                        created_at, updated_at, context";

pub struct ScyllaThreadStore {
    cql: Cql,
    st: Statements,
}

/// A keyset listing: its first page and the pages after a key.
struct Listing {
    first: PreparedStatement,
    after: PreparedStatement,
}

/// Every statement the adapter runs, prepared once at connect time.
struct Statements {
    ping: PreparedStatement,
    // threads
    insert_thread: PreparedStatement,
    thread: PreparedStatement,
    thread_serial: PreparedStatement,
    bump_thread: PreparedStatement,
    bump_thread_last: PreparedStatement,
    rename_thread: PreparedStatement,
    set_preview: PreparedStatement,
    mark_deleted: PreparedStatement,
    drop_thread: PreparedStatement,
    // listing indexes
    created_asc: Listing,
    created_desc: Listing,
    updated_asc: Listing,
    updated_desc: Listing,
    index_created: PreparedStatement,
    unindex_created: PreparedStatement,
    index_updated: PreparedStatement,
    unindex_updated: PreparedStatement,
    count_threads: PreparedStatement,
    // model directory
    add_model: PreparedStatement,
    models: PreparedStatement,
    drop_models: PreparedStatement,
    // histories
    history: PreparedStatement,
    history_serial: PreparedStatement,
    message: PreparedStatement,
    message_serial: PreparedStatement,
    /// `INSERT … IF NOT EXISTS` + `message_count: null → 1`, one Paxos round.
    append_first: Batch,
    /// `INSERT … IF NOT EXISTS` + `message_count: n → n + 1`, one Paxos round.
    append_next: Batch,
    update_message: PreparedStatement,
    messages_asc: Listing,
    messages_desc: Listing,
    messages_newest_after: PreparedStatement,
    put_summary_first: PreparedStatement,
    put_summary_next: PreparedStatement,
    /// The partition delete Scylla documents for LWT tables: a conditional statement on the
    /// static row plus the delete, one Paxos round, so it is ordered after every append.
    drop_history: Batch,
    // idempotency keys
    claim_key: PreparedStatement,
    key_serial: PreparedStatement,
    drop_keys: PreparedStatement,
}

impl Statements {
    async fn prepare(cql: &Cql, ks: &str) -> Result<Self, StoreError> {
        let read = |stmt: String| cql.prepare(stmt, Mode::Read);
        let serial_read = |stmt: String| cql.prepare(stmt, Mode::SerialRead);
        let write = |stmt: String| cql.prepare(stmt, Mode::Write);
        let lwt = |stmt: String| cql.prepare(stmt, Mode::Lwt);

        let listing = |sort: SortField, direction: Direction| async move {
            let (cmp, order) = match direction {
                Direction::Asc => (">", "ASC"),
                Direction::Desc => ("<", "DESC"),
            };
            let (table, column) = match sort {
                SortField::CreatedAt => (format!("{ks}.threads_by_owner_created"), "created_at"),
                SortField::UpdatedAt => (format!("{ks}.threads_by_owner_updated"), "updated_at"),
            };
            Ok::<_, StoreError>(Listing {
                first: read(format!(
                    "SELECT {column}, id FROM {table} WHERE owner_id = ? \
                     ORDER BY {column} {order}, id {order} LIMIT ?"
                ))
                .await?,
                after: read(format!(
                    "SELECT {column}, id FROM {table} WHERE owner_id = ? \
                     AND ({column}, id) {cmp} (?, ?) ORDER BY {column} {order}, id {order} LIMIT ?"
                ))
                .await?,
            })
        };
        let message_listing = |direction: Direction| async move {
            let (cmp, order) = match direction {
                Direction::Asc => (">", "ASC"),
                Direction::Desc => ("<", "DESC"),
            };
            Ok::<_, StoreError>(Listing {
                first: read(format!(
                    "SELECT {MESSAGE_COLS} FROM {ks}.messages WHERE thread_id = ? AND model_id = ? \
                     ORDER BY id {order} LIMIT ?"
                ))
                .await?,
                after: read(format!(
                    "SELECT {MESSAGE_COLS} FROM {ks}.messages WHERE thread_id = ? AND model_id = ? \
                     AND id {cmp} ? ORDER BY id {order} LIMIT ?"
                ))
                .await?,
            })
        };

        let insert_message = lwt(format!(
            "INSERT INTO {ks}.messages (thread_id, model_id, id, role, content, tokens, \
             temperature, status, created_at, updated_at, idempotency_key, context, writer) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
        ))
        .await?;
        let count_first = lwt(format!(
            "UPDATE {ks}.messages SET message_count = ?, last_message_at = ? \
             WHERE thread_id = ? AND model_id = ? IF message_count = null"
        ))
        .await?;
        let count_next = lwt(format!(
            "UPDATE {ks}.messages SET message_count = ?, last_message_at = ? \
             WHERE thread_id = ? AND model_id = ? IF message_count = ?"
        ))
        .await?;
        let close_history = lwt(format!(
            "UPDATE {ks}.messages SET message_count = null \
             WHERE thread_id = ? AND model_id = ? IF EXISTS"
        ))
        .await?;
        let delete_history = write(format!(
            "DELETE FROM {ks}.messages WHERE thread_id = ? AND model_id = ?"
        ))
        .await?;
        let summary_set = "summary_version = ?, summary = ?, summary_tokens = ?, \
                           summary_covers_until = ?, summary_model = ?, summary_at = ?";

        Ok(Self {
            ping: read("SELECT key FROM system.local WHERE key = 'local'".into()).await?,
            insert_thread: lwt(format!(
                "INSERT INTO {ks}.threads \
                 (id, owner_id, title, created_at, updated_at, message_count, revision) \
                 VALUES (?, ?, ?, ?, ?, 0, 0) IF NOT EXISTS"
            ))
            .await?,
            thread: read(format!(
                "SELECT {THREAD_COLS} FROM {ks}.threads WHERE id = ?"
            ))
            .await?,
            thread_serial: serial_read(format!(
                "SELECT {THREAD_COLS} FROM {ks}.threads WHERE id = ?"
            ))
            .await?,
            bump_thread: lwt(format!(
                "UPDATE {ks}.threads SET message_count = ?, updated_at = ?, revision = ? \
                 WHERE id = ? IF revision = ?"
            ))
            .await?,
            bump_thread_last: lwt(format!(
                "UPDATE {ks}.threads SET message_count = ?, updated_at = ?, last_id = ?, \
                 last_content = ?, last_role = ?, last_model = ?, last_at = ?, revision = ? \
                 WHERE id = ? IF revision = ?"
            ))
            .await?,
            rename_thread: lwt(format!(
                "UPDATE {ks}.threads SET title = ?, updated_at = ?, revision = ? \
                 WHERE id = ? IF revision = ?"
            ))
            .await?,
            set_preview: lwt(format!(
                "UPDATE {ks}.threads SET last_content = ?, revision = ? \
                 WHERE id = ? IF revision = ?"
            ))
            .await?,
            mark_deleted: lwt(format!(
                "UPDATE {ks}.threads SET deleted_at = ?, deleted_messages = ?, revision = ? \
                 WHERE id = ? IF revision = ?"
            ))
            .await?,
            drop_thread: lwt(format!("DELETE FROM {ks}.threads WHERE id = ? IF EXISTS")).await?,
            created_asc: listing(SortField::CreatedAt, Direction::Asc).await?,
            created_desc: listing(SortField::CreatedAt, Direction::Desc).await?,
            updated_asc: listing(SortField::UpdatedAt, Direction::Asc).await?,
            updated_desc: listing(SortField::UpdatedAt, Direction::Desc).await?,
            index_created: write(format!(
                "INSERT INTO {ks}.threads_by_owner_created (owner_id, created_at, id) \
                 VALUES (?, ?, ?)"
            ))
            .await?,
            unindex_created: write(format!(
                "DELETE FROM {ks}.threads_by_owner_created \
                 WHERE owner_id = ? AND created_at = ? AND id = ?"
            ))
            .await?,
            index_updated: write(format!(
                "INSERT INTO {ks}.threads_by_owner_updated (owner_id, updated_at, id) \
                 VALUES (?, ?, ?)"
            ))
            .await?,
            unindex_updated: write(format!(
                "DELETE FROM {ks}.threads_by_owner_updated \
                 WHERE owner_id = ? AND updated_at = ? AND id = ?"
            ))
            .await?,
            count_threads: read(format!(
                "SELECT COUNT(*) FROM {ks}.threads_by_owner_created WHERE owner_id = ?"
            ))
            .await?,
            add_model: write(format!(
                "INSERT INTO {ks}.thread_models (thread_id, model_id) VALUES (?, ?)"
            ))
            .await?,
            models: read(format!(
                "SELECT model_id FROM {ks}.thread_models WHERE thread_id = ?"
            ))
            .await?,
            drop_models: write(format!(
                "DELETE FROM {ks}.thread_models WHERE thread_id = ?"
            ))
            .await?,
            history: read(format!(
                "SELECT {HISTORY_COLS} FROM {ks}.messages \
                 WHERE thread_id = ? AND model_id = ? LIMIT 1"
            ))
            .await?,
            history_serial: serial_read(format!(
                "SELECT {HISTORY_COLS} FROM {ks}.messages \
                 WHERE thread_id = ? AND model_id = ? LIMIT 1"
            ))
            .await?,
            message: read(format!(
                "SELECT {MESSAGE_COLS} FROM {ks}.messages \
                 WHERE thread_id = ? AND model_id = ? AND id = ?"
            ))
            .await?,
            message_serial: serial_read(format!(
                "SELECT {MESSAGE_COLS} FROM {ks}.messages \
                 WHERE thread_id = ? AND model_id = ? AND id = ?"
            ))
            .await?,
            append_first: Cql::lwt_batch_of(&[&insert_message, &count_first]),
            append_next: Cql::lwt_batch_of(&[&insert_message, &count_next]),
            update_message: lwt(format!(
                "UPDATE {ks}.messages SET content = ?, status = ?, tokens = ?, temperature = ?, \
                 context = ?, updated_at = ? WHERE thread_id = ? AND model_id = ? AND id = ? \
                 IF EXISTS"
            ))
            .await?,
            messages_asc: message_listing(Direction::Asc).await?,
            messages_desc: message_listing(Direction::Desc).await?,
            messages_newest_after: read(format!(
                "SELECT {MESSAGE_COLS} FROM {ks}.messages WHERE thread_id = ? AND model_id = ? \
                 AND id > ? ORDER BY id DESC LIMIT ?"
            ))
            .await?,
            put_summary_first: lwt(format!(
                "UPDATE {ks}.messages SET {summary_set} WHERE thread_id = ? AND model_id = ? \
                 IF summary_version = null"
            ))
            .await?,
            put_summary_next: lwt(format!(
                "UPDATE {ks}.messages SET {summary_set} WHERE thread_id = ? AND model_id = ? \
                 IF summary_version = ?"
            ))
            .await?,
            drop_history: Cql::lwt_batch_of(&[&close_history, &delete_history]),
            claim_key: lwt(format!(
                "INSERT INTO {ks}.message_keys (thread_id, model_id, idempotency_key, {KEY_COLS}) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            key_serial: serial_read(format!(
                "SELECT {KEY_COLS} FROM {ks}.message_keys \
                 WHERE thread_id = ? AND model_id = ? AND idempotency_key = ?"
            ))
            .await?,
            drop_keys: write(format!(
                "DELETE FROM {ks}.message_keys WHERE thread_id = ? AND model_id = ?"
            ))
            .await?,
        })
    }

    fn listing(&self, sort: SortField, direction: Direction) -> &Listing {
        match (sort, direction) {
            (SortField::CreatedAt, Direction::Asc) => &self.created_asc,
            (SortField::CreatedAt, Direction::Desc) => &self.created_desc,
            (SortField::UpdatedAt, Direction::Asc) => &self.updated_asc,
            (SortField::UpdatedAt, Direction::Desc) => &self.updated_desc,
        }
    }
}

#[derive(DeserializeRow, Clone)]
struct ThreadRow {
    id: Uuid,
    owner_id: Uuid,
    title: String,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    message_count: i64,
    last_id: Option<Uuid>,
    last_content: Option<String>,
    last_role: Option<String>,
    last_model: Option<String>,
    last_at: Option<OffsetDateTime>,
    revision: i64,
    deleted_at: Option<OffsetDateTime>,
    deleted_messages: Option<i64>,
}

impl ThreadRow {
    /// A thread that is being deleted is already gone for every reader, its owner included.
    fn visible_to(&self, owner: Uuid) -> bool {
        self.owner_id == owner && self.deleted_at.is_none()
    }

    fn sort_key(&self, sort: SortField) -> OffsetDateTime {
        match sort {
            SortField::CreatedAt => self.created_at,
            SortField::UpdatedAt => self.updated_at,
        }
    }

    fn next_revision(&self) -> Result<i64, StoreError> {
        self.revision
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt(format!("thread {} revision overflow", self.id)))
    }

    fn record(&self) -> ThreadRecord {
        let last_message = self.last_at.map(|at| LastMessage {
            content: self.last_content.clone().unwrap_or_default(),
            role: self.last_role.clone().unwrap_or_default(),
            model_id: self.last_model.clone().unwrap_or_default(),
            at,
        });
        ThreadRecord {
            id: self.id,
            owner_id: self.owner_id,
            title: self.title.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            message_count: count(self.message_count),
            last_message,
        }
    }
}

/// A `messages` row. `id` is null only in the row Scylla returns for a partition that holds
/// static columns (a summary) but no message yet; such a row is not a message.
#[derive(DeserializeRow)]
struct MessageRow {
    id: Option<Uuid>,
    thread_id: Uuid,
    model_id: String,
    role: Option<String>,
    content: Option<String>,
    tokens: Option<i64>,
    temperature: Option<f64>,
    status: Option<String>,
    created_at: Option<OffsetDateTime>,
    updated_at: Option<OffsetDateTime>,
    idempotency_key: Option<String>,
    context: Option<String>,
    writer: Option<Uuid>,
}

impl MessageRow {
    fn into_record(self) -> Result<Option<MessageRecord>, StoreError> {
        let Some(id) = self.id else {
            return Ok(None);
        };
        let missing = |column: &str| StoreError::Corrupt(format!("message {id} has no {column}"));
        Ok(Some(MessageRecord {
            id,
            thread_id: self.thread_id,
            model_id: self.model_id,
            role: self.role.ok_or_else(|| missing("role"))?,
            content: self.content.ok_or_else(|| missing("content"))?,
            tokens: self
                .tokens
                .map(u32::try_from)
                .transpose()
                .map_err(corrupt)?,
            temperature: self.temperature,
            status: self.status.ok_or_else(|| missing("status"))?,
            created_at: self.created_at.ok_or_else(|| missing("created_at"))?,
            updated_at: self.updated_at.ok_or_else(|| missing("updated_at"))?,
            idempotency_key: self.idempotency_key,
            context: self.context,
        }))
    }
}

fn messages(rows: Vec<MessageRow>) -> Result<Vec<MessageRecord>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(message) = row.into_record()? {
            out.push(message);
        }
    }
    Ok(out)
}

/// The static columns of a history partition: its count, last activity and summary.
#[derive(DeserializeRow)]
struct HistoryRow {
    message_count: Option<i64>,
    last_message_at: Option<OffsetDateTime>,
    summary_version: Option<i64>,
    summary: Option<String>,
    summary_tokens: Option<i64>,
    summary_covers_until: Option<Uuid>,
    summary_model: Option<String>,
    summary_at: Option<OffsetDateTime>,
}

impl HistoryRow {
    fn summary(&self) -> Result<Option<SummaryRecord>, StoreError> {
        let Some(version) = self.summary_version else {
            return Ok(None);
        };
        let missing = |column: &str| StoreError::Corrupt(format!("a summary without {column}"));
        Ok(Some(SummaryRecord {
            version: count(version),
            content: self.summary.clone().unwrap_or_default(),
            tokens: u32::try_from(self.summary_tokens.unwrap_or(0)).map_err(corrupt)?,
            covers_until: self
                .summary_covers_until
                .ok_or_else(|| missing("covers_until"))?,
            model_used: self.summary_model.clone().unwrap_or_default(),
            generated_at: self.summary_at.ok_or_else(|| missing("generated_at"))?,
        }))
    }

    /// `None` for a directory entry whose history never got a message or a summary (an append
    /// that failed after naming its model).
    fn into_model(self, model_id: String) -> Result<Option<ModelHistory>, StoreError> {
        let summary = self.summary()?;
        let message_count = count(self.message_count.unwrap_or(0));
        if message_count == 0 && summary.is_none() {
            return Ok(None);
        }
        Ok(Some(ModelHistory {
            model_id,
            message_count,
            last_message_at: self.last_message_at,
            summary,
        }))
    }
}

/// An idempotency key's claim: the message it was made for, and the claimant's per-call id.
#[derive(DeserializeRow)]
struct KeyRow {
    message_id: Uuid,
    writer: Uuid,
    role: String,
    content: String,
    tokens: Option<i64>,
    temperature: Option<f64>,
    status: String,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    context: Option<String>,
}

enum KeyClaim {
    /// The key is ours (also when an earlier attempt of ours claimed it): store our message.
    Ours,
    /// The key belongs to an earlier request: this is its message, to be stored if it is not yet.
    Held {
        message: Box<MessageRecord>,
        writer: Uuid,
    },
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn preview(content: &str) -> String {
    content.chars().take(LAST_MESSAGE_PREVIEW).collect()
}

fn page_size(limit: usize) -> i32 {
    i32::try_from(limit).unwrap_or(i32::MAX)
}

fn applied(outcome: &Option<scylla_common::LwtOutcome>) -> bool {
    outcome.as_ref().is_some_and(|o| o.applied)
}

fn lost(what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "{what} kept losing to concurrent writes or timing out"
    ))
}

/// The values of a message row insert, in `insert_message` order.
type MessageValues<'a> = (
    Uuid,
    &'a str,
    Uuid,
    &'a str,
    &'a str,
    MaybeUnset<i64>,
    MaybeUnset<f64>,
    &'a str,
    OffsetDateTime,
    OffsetDateTime,
    MaybeUnset<&'a str>,
    MaybeUnset<&'a str>,
    Uuid,
);

/// Optional fields are left unset rather than null: a null would write a tombstone.
fn message_values(m: &MessageRecord, writer: Uuid) -> MessageValues<'_> {
    (
        m.thread_id,
        &m.model_id,
        m.id,
        &m.role,
        &m.content,
        MaybeUnset::from_option(m.tokens.map(i64::from)),
        MaybeUnset::from_option(m.temperature),
        &m.status,
        m.created_at,
        m.updated_at,
        MaybeUnset::from_option(m.idempotency_key.as_deref()),
        MaybeUnset::from_option(m.context.as_deref()),
        writer,
    )
}

impl ScyllaThreadStore {
    /// Connects, creates the keyspace if it is missing, applies this store's pending migrations
    /// and prepares every statement.
    pub async fn connect(config: &ScyllaConfig) -> Result<Self, StoreError> {
        let (cql, keyspace) = scylla_common::connect(config, MIGRATIONS).await?;
        let st = Statements::prepare(&cql, &keyspace).await?;
        Ok(Self { cql, st })
    }

    /// The thread row, deleted-in-progress or not. `serial` reads through Paxos: needed after a
    /// lost compare-and-set, whose winner may not have reached a LOCAL_QUORUM yet.
    async fn load_thread(&self, id: Uuid, serial: bool) -> Result<Option<ThreadRow>, StoreError> {
        let stmt = if serial {
            &self.st.thread_serial
        } else {
            &self.st.thread
        };
        self.cql.fetch::<ThreadRow>(stmt, (id,)).await
    }

    /// The thread if it exists, is not being deleted and is `owner`'s: the ownership check every
    /// operation starts with, one single-partition read.
    async fn owned(&self, owner: Uuid, id: Uuid) -> Result<Option<ThreadRow>, StoreError> {
        Ok(self
            .load_thread(id, false)
            .await?
            .filter(|t| t.visible_to(owner)))
    }

    async fn history(
        &self,
        thread: Uuid,
        model: &str,
        serial: bool,
    ) -> Result<Option<HistoryRow>, StoreError> {
        let stmt = if serial {
            &self.st.history_serial
        } else {
            &self.st.history
        };
        self.cql.fetch::<HistoryRow>(stmt, (thread, model)).await
    }

    async fn load_message(
        &self,
        thread: Uuid,
        model: &str,
        id: Uuid,
        serial: bool,
    ) -> Result<Option<(MessageRecord, Option<Uuid>)>, StoreError> {
        let stmt = if serial {
            &self.st.message_serial
        } else {
            &self.st.message
        };
        let Some(row) = self
            .cql
            .fetch::<MessageRow>(stmt, (thread, model, id))
            .await?
        else {
            return Ok(None);
        };
        let writer = row.writer;
        Ok(row.into_record()?.map(|m| (m, writer)))
    }

    async fn model_ids(&self, thread: Uuid) -> Result<Vec<String>, StoreError> {
        let rows = self
            .cql
            .fetch_all::<(String,)>(&self.st.models, (thread,))
            .await?;
        Ok(rows.into_iter().map(|(m,)| m).collect())
    }

    /// The sum of the per-model counts: the exact number of messages of the thread.
    async fn total_messages(&self, thread: Uuid) -> Result<i64, StoreError> {
        let models = self.model_ids(thread).await?;
        let histories = try_join_all(models.iter().map(|m| self.history(thread, m, false))).await?;
        Ok(histories
            .iter()
            .flatten()
            .filter_map(|h| h.message_count)
            .fold(0i64, i64::saturating_add))
    }

    /// Claims `key` for `m` or learns which message holds it.
    async fn claim_key(
        &self,
        m: &MessageRecord,
        key: &str,
        me: Uuid,
    ) -> Result<KeyClaim, StoreError> {
        let values = (
            m.thread_id,
            m.model_id.as_str(),
            key,
            m.id,
            me,
            m.role.as_str(),
            m.content.as_str(),
            MaybeUnset::from_option(m.tokens.map(i64::from)),
            MaybeUnset::from_option(m.temperature),
            m.status.as_str(),
            m.created_at,
            m.updated_at,
            MaybeUnset::from_option(m.context.as_deref()),
        );
        for _ in 0..LWT_ATTEMPTS {
            if applied(&self.cql.lwt(&self.st.claim_key, values).await?) {
                return Ok(KeyClaim::Ours);
            }
            // Refused or timed out: the Paxos read tells who holds the key.
            let holder = self
                .cql
                .fetch::<KeyRow>(&self.st.key_serial, (m.thread_id, &m.model_id, key))
                .await?;
            match holder {
                // Our own claim (a timed-out attempt that landed, or an earlier call with this
                // very message): the message insert below settles which call stored it.
                Some(k) if k.message_id == m.id => return Ok(KeyClaim::Ours),
                Some(k) => {
                    let message = MessageRecord {
                        id: k.message_id,
                        thread_id: m.thread_id,
                        model_id: m.model_id.clone(),
                        role: k.role,
                        content: k.content,
                        tokens: k.tokens.map(u32::try_from).transpose().map_err(corrupt)?,
                        temperature: k.temperature,
                        status: k.status,
                        created_at: k.created_at,
                        updated_at: k.updated_at,
                        idempotency_key: Some(key.to_owned()),
                        context: k.context,
                    };
                    return Ok(KeyClaim::Held {
                        message: Box::new(message),
                        writer: k.writer,
                    });
                }
                // Our timed-out claim did not land and nobody else's did: try again.
                None => {}
            }
        }
        Err(lost("claiming the idempotency key"))
    }

    /// Stores `m` and counts it, atomically, unless its id is already in the history. Returns the
    /// stored message and the per-call id of whoever stored it.
    async fn insert_message(
        &self,
        m: &MessageRecord,
        writer: Uuid,
    ) -> Result<(MessageRecord, Option<Uuid>), StoreError> {
        let row = message_values(m, writer);
        for attempt in 0..CAS_ATTEMPTS {
            let state = self.history(m.thread_id, &m.model_id, attempt > 0).await?;
            let current = state.as_ref().and_then(|h| h.message_count);
            let last_at = state
                .as_ref()
                .and_then(|h| h.last_message_at)
                .map_or(m.created_at, |at| at.max(m.created_at));
            let outcome = match current {
                None => {
                    let count = (1i64, last_at, m.thread_id, m.model_id.as_str());
                    self.cql
                        .lwt_batch(&self.st.append_first, (row, count))
                        .await?
                }
                Some(n) => {
                    let next = n
                        .checked_add(1)
                        .ok_or_else(|| StoreError::Corrupt("message count overflow".into()))?;
                    let count = (next, last_at, m.thread_id, m.model_id.as_str(), n);
                    self.cql
                        .lwt_batch(&self.st.append_next, (row, count))
                        .await?
                }
            };
            if applied(&outcome) {
                return Ok((m.clone(), Some(writer)));
            }
            // Refused or timed out. Either the id is taken (a retry, or our own timed-out batch
            // that landed: `writer` tells which), or the count moved under us: read and retry.
            if let Some(stored) = self
                .load_message(m.thread_id, &m.model_id, m.id, true)
                .await?
            {
                return Ok(stored);
            }
        }
        Err(lost("appending the message"))
    }

    /// Brings the thread row up to date with a stored message: count = sum of the per-model
    /// counts (never lowered), `updated_at` = the later of the two, and the listing preview if the
    /// message is the newest. Every step is monotonic, so running it again (a retry, a duplicate)
    /// or concurrently with other appends converges on the same row. `first` is a recent read.
    async fn settle_thread(
        &self,
        first: ThreadRow,
        newest: &MessageRecord,
    ) -> Result<(), StoreError> {
        let mut cached = Some(first);
        for _ in 0..CAS_ATTEMPTS {
            let row = match cached.take() {
                Some(row) => Some(row),
                None => self.load_thread(newest.thread_id, true).await?,
            };
            let Some(t) = row.filter(|t| t.deleted_at.is_none()) else {
                return Ok(());
            };
            let total = self.total_messages(t.id).await?;
            let message_count = t.message_count.max(total);
            let updated_at = t.updated_at.max(newest.created_at);
            let newer = match (t.last_at, t.last_id) {
                (Some(at), Some(id)) => (newest.created_at, newest.id) > (at, id),
                (Some(at), None) => newest.created_at >= at,
                (None, _) => true,
            };
            if message_count == t.message_count && updated_at == t.updated_at && !newer {
                return Ok(());
            }
            let moved = updated_at != t.updated_at;
            if moved {
                // The new listing position exists before the thread row points at it.
                self.cql
                    .run(&self.st.index_updated, (t.owner_id, updated_at, t.id))
                    .await?;
            }
            let outcome = if newer {
                let values = (
                    message_count,
                    updated_at,
                    newest.id,
                    preview(&newest.content),
                    &newest.role,
                    &newest.model_id,
                    newest.created_at,
                    t.next_revision()?,
                    t.id,
                    t.revision,
                );
                self.cql.lwt(&self.st.bump_thread_last, values).await?
            } else {
                let values = (
                    message_count,
                    updated_at,
                    t.next_revision()?,
                    t.id,
                    t.revision,
                );
                self.cql.lwt(&self.st.bump_thread, values).await?
            };
            if applied(&outcome) {
                if moved {
                    self.unindex_updated(t.owner_id, t.updated_at, t.id).await?;
                }
                return Ok(());
            }
        }
        Err(lost("updating the thread's counters"))
    }

    async fn unindex_updated(
        &self,
        owner: Uuid,
        at: OffsetDateTime,
        id: Uuid,
    ) -> Result<(), StoreError> {
        self.cql
            .run(&self.st.unindex_updated, (owner, at, id))
            .await
            .map(|_| ())
    }

    /// Keeps the listing preview true when the newest message's content changes.
    async fn refresh_preview(
        &self,
        thread: Uuid,
        id: Uuid,
        content: &str,
    ) -> Result<(), StoreError> {
        let text = preview(content);
        for attempt in 0..CAS_ATTEMPTS {
            let Some(t) = self.load_thread(thread, attempt > 0).await? else {
                return Ok(());
            };
            if t.deleted_at.is_some()
                || t.last_id != Some(id)
                || t.last_content.as_deref() == Some(text.as_str())
            {
                return Ok(());
            }
            let values = (&text, t.next_revision()?, thread, t.revision);
            if applied(&self.cql.lwt(&self.st.set_preview, values).await?) {
                return Ok(());
            }
        }
        Err(lost("updating the thread preview"))
    }

    /// Deletes index rows a listing found out of date: the thread moved on to a later
    /// position, or no longer exists. Confirmed by a Paxos read first, because a LOCAL_QUORUM
    /// read in another datacenter may not see a thread row that is already there. Failures only
    /// leave the row for the next listing to try again.
    async fn sweep(&self, owner: Uuid, sort: SortField, stale: Vec<(OffsetDateTime, Uuid)>) {
        for (at, id) in stale {
            let confirmed = match self.load_thread(id, true).await {
                Ok(None) => true,
                Ok(Some(t)) => t.sort_key(sort) > at,
                Err(e) => {
                    tracing::warn!(thread_id = %id, error = %e, "cannot confirm a stale listing row");
                    false
                }
            };
            if !confirmed {
                continue;
            }
            let stmt = match sort {
                SortField::CreatedAt => &self.st.unindex_created,
                SortField::UpdatedAt => &self.st.unindex_updated,
            };
            if let Err(e) = self.cql.run(stmt, (owner, at, id)).await {
                tracing::warn!(thread_id = %id, error = %e, "cannot delete a stale listing row");
            }
        }
    }

    /// Removes everything of a thread already marked deleted: listing rows first (so it leaves
    /// listings and counts), then its histories, keys and directory, and the thread row last, so
    /// a crash part-way leaves the mark from which a retried delete finishes the job.
    async fn tear_down(&self, t: &ThreadRow) -> Result<(), StoreError> {
        self.cql
            .run(&self.st.unindex_created, (t.owner_id, t.created_at, t.id))
            .await?;
        self.unindex_updated(t.owner_id, t.updated_at, t.id).await?;
        let models = self.model_ids(t.id).await?;
        try_join_all(models.iter().map(|model| async move {
            let key = (t.id, model.as_str());
            // Not applied means the history is already gone. An unknown outcome (a timeout)
            // fails the delete before the mark goes, so the caller's retry tears down again.
            if self
                .cql
                .lwt_batch(&self.st.drop_history, (key, key))
                .await?
                .is_none()
            {
                return Err(lost("deleting a history"));
            }
            self.cql
                .run(&self.st.drop_keys, (t.id, model.as_str()))
                .await
        }))
        .await?;
        self.cql.run(&self.st.drop_models, (t.id,)).await?;
        // Applied here or by a concurrent delete of the same thread: either way it is gone.
        self.cql.lwt(&self.st.drop_thread, (t.id,)).await?;
        Ok(())
    }
}

#[async_trait]
impl ThreadStore for ScyllaThreadStore {
    fn provider(&self) -> &'static str {
        "scylla"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.cql.run(&self.st.ping, ()).await.map(|_| ())
    }

    async fn create_thread(&self, t: &ThreadRecord) -> Result<(), StoreError> {
        let values = (t.id, t.owner_id, &t.title, t.created_at, t.updated_at);
        let mut updated_at = None;
        for _ in 0..LWT_ATTEMPTS {
            if applied(&self.cql.lwt(&self.st.insert_thread, values).await?) {
                updated_at = Some(t.updated_at);
                break;
            }
            match self.load_thread(t.id, true).await? {
                // An earlier attempt of this same creation landed (a timeout, or the caller's
                // retry): finish it below. Its updated_at may have moved on since.
                Some(row)
                    if row.owner_id == t.owner_id
                        && row.created_at == t.created_at
                        && row.deleted_at.is_none() =>
                {
                    updated_at = Some(row.updated_at);
                    break;
                }
                Some(_) => return Err(StoreError::Conflict("thread id exists".into())),
                // Our timed-out insert did not land: try again.
                None => {}
            }
        }
        let Some(updated_at) = updated_at else {
            return Err(lost("creating the thread"));
        };
        // Listing rows after the thread row: a listing never meets a row without its thread.
        self.cql
            .run(&self.st.index_created, (t.owner_id, t.created_at, t.id))
            .await?;
        self.cql
            .run(&self.st.index_updated, (t.owner_id, updated_at, t.id))
            .await?;
        Ok(())
    }

    async fn thread(&self, owner: Uuid, id: Uuid) -> Result<Option<ThreadRecord>, StoreError> {
        Ok(self.owned(owner, id).await?.map(|t| t.record()))
    }

    async fn threads_by_ids(
        &self,
        owner: Uuid,
        ids: &[Uuid],
    ) -> Result<Vec<ThreadRecord>, StoreError> {
        let rows = try_join_all(ids.iter().map(|&id| self.owned(owner, id))).await?;
        Ok(rows.into_iter().flatten().map(|t| t.record()).collect())
    }

    async fn list_threads(
        &self,
        owner: Uuid,
        sort: SortField,
        direction: Direction,
        after: Option<ThreadKey>,
        limit: usize,
    ) -> Result<Vec<ThreadRecord>, StoreError> {
        let listing = self.st.listing(sort, direction);
        let mut out = Vec::with_capacity(limit.min(1000));
        let mut cursor = after.map(|k| (k.at, k.id));
        while out.len() < limit {
            let want = limit - out.len();
            let keys: Vec<(OffsetDateTime, Uuid)> = match cursor {
                None => {
                    self.cql
                        .fetch_all(&listing.first, (owner, page_size(want)))
                        .await?
                }
                Some((at, id)) => {
                    self.cql
                        .fetch_all(&listing.after, (owner, at, id, page_size(want)))
                        .await?
                }
            };
            let rows =
                try_join_all(keys.iter().map(|&(_, id)| self.load_thread(id, false))).await?;
            let mut stale = Vec::new();
            for (&(at, id), row) in keys.iter().zip(rows) {
                match row {
                    Some(t) if t.visible_to(owner) => {
                        let current = t.sort_key(sort);
                        if current == at {
                            out.push(t.record());
                        } else if current > at {
                            stale.push((at, id));
                        }
                        // current < at: a move still in flight; the thread is listed at its
                        // current position, which still has its row.
                    }
                    // Being deleted: its teardown removes the row.
                    Some(_) => {}
                    None => stale.push((at, id)),
                }
            }
            if !stale.is_empty() {
                self.sweep(owner, sort, stale).await;
            }
            if keys.len() < want {
                break;
            }
            cursor = keys.last().copied();
        }
        Ok(out)
    }

    async fn count_threads(&self, owner: Uuid) -> Result<u64, StoreError> {
        let (n,) = self
            .cql
            .fetch::<(i64,)>(&self.st.count_threads, (owner,))
            .await?
            .unwrap_or((0,));
        Ok(count(n))
    }

    async fn rename_thread(
        &self,
        owner: Uuid,
        id: Uuid,
        title: &str,
        at: OffsetDateTime,
    ) -> Result<Option<ThreadRecord>, StoreError> {
        for attempt in 0..CAS_ATTEMPTS {
            let Some(t) = self
                .load_thread(id, attempt > 0)
                .await?
                .filter(|t| t.visible_to(owner))
            else {
                return Ok(None);
            };
            let updated_at = t.updated_at.max(at);
            if t.title == title && t.updated_at == updated_at {
                // Nothing to change (or our timed-out attempt landed).
                return Ok(Some(t.record()));
            }
            let moved = updated_at != t.updated_at;
            if moved {
                self.cql
                    .run(&self.st.index_updated, (owner, updated_at, id))
                    .await?;
            }
            let values = (title, updated_at, t.next_revision()?, id, t.revision);
            if applied(&self.cql.lwt(&self.st.rename_thread, values).await?) {
                if moved {
                    self.unindex_updated(owner, t.updated_at, id).await?;
                }
                let mut renamed = t.record();
                renamed.title = title.to_owned();
                renamed.updated_at = updated_at;
                return Ok(Some(renamed));
            }
        }
        Err(lost("renaming the thread"))
    }

    async fn delete_thread(&self, owner: Uuid, id: Uuid) -> Result<Option<u64>, StoreError> {
        for attempt in 0..CAS_ATTEMPTS {
            let Some(t) = self.load_thread(id, attempt > 0).await? else {
                return Ok(None);
            };
            if t.owner_id != owner {
                return Ok(None);
            }
            let deleted = match (t.deleted_at, t.deleted_messages) {
                // A delete already under way (or one that crashed): finish it.
                (Some(_), Some(n)) => n,
                _ => {
                    // Marking first hides the thread from every reader and turns away appends;
                    // the count reported is the one recorded with the mark.
                    let n = self.total_messages(id).await?;
                    let values = (crate::now_ms(), n, t.next_revision()?, id, t.revision);
                    if !applied(&self.cql.lwt(&self.st.mark_deleted, values).await?) {
                        continue;
                    }
                    n
                }
            };
            self.tear_down(&t).await?;
            return Ok(Some(count(deleted)));
        }
        Err(lost("deleting the thread"))
    }

    async fn models(&self, owner: Uuid, thread: Uuid) -> Result<Vec<ModelHistory>, StoreError> {
        if self.owned(owner, thread).await?.is_none() {
            return Ok(Vec::new());
        }
        let ids = self.model_ids(thread).await?;
        let histories = try_join_all(ids.iter().map(|m| self.history(thread, m, false))).await?;
        let mut out = Vec::with_capacity(ids.len());
        // The directory's clustering order is model_id ascending.
        for (model, history) in ids.into_iter().zip(histories) {
            if let Some(entry) = history.map(|h| h.into_model(model)).transpose()?.flatten() {
                out.push(entry);
            }
        }
        Ok(out)
    }

    async fn append_message(
        &self,
        owner: Uuid,
        message: &MessageRecord,
    ) -> Result<AppendOutcome, StoreError> {
        let Some(thread) = self.owned(owner, message.thread_id).await? else {
            return Ok(AppendOutcome::NoThread);
        };
        // A per-call id stored with the message: after a timeout it tells this call's landed
        // insert from a concurrent duplicate's.
        let me = Uuid::new_v4();
        let (target, writer) = match &message.idempotency_key {
            Some(key) => match self.claim_key(message, key, me).await? {
                KeyClaim::Ours => (message.clone(), me),
                // Store the key holder's message under its claimant's id, in case it never got
                // there: the claimant, if alive, then still recognises the insert as its own.
                KeyClaim::Held { message, writer } => (*message, writer),
            },
            None => (message.clone(), me),
        };
        // The directory names the history before it exists, so nothing can hold messages
        // that a read or a delete would not find.
        self.cql
            .run(&self.st.add_model, (target.thread_id, &target.model_id))
            .await?;
        let (stored, stored_by) = self.insert_message(&target, writer).await?;
        self.settle_thread(thread, &stored).await?;
        Ok(if stored.id == message.id && stored_by == Some(me) {
            AppendOutcome::Inserted(stored)
        } else {
            AppendOutcome::Duplicate(stored)
        })
    }

    async fn update_message(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
        id: Uuid,
        update: &MessageUpdate,
        at: OffsetDateTime,
    ) -> Result<Option<MessageRecord>, StoreError> {
        if self.owned(owner, thread).await?.is_none() {
            return Ok(None);
        }
        let values = (
            MaybeUnset::from_option(update.content.as_deref()),
            MaybeUnset::from_option(update.status.as_deref()),
            MaybeUnset::from_option(update.tokens.map(i64::from)),
            MaybeUnset::from_option(update.temperature),
            MaybeUnset::from_option(update.context.as_deref()),
            at,
            thread,
            model,
            id,
        );
        let mut found = None;
        for _ in 0..LWT_ATTEMPTS {
            // `IF EXISTS`: a plain UPDATE would create the row of an unknown id. On a timeout
            // the update is simply run again: it writes the same values.
            if let Some(outcome) = self.cql.lwt(&self.st.update_message, values).await? {
                found = Some(outcome.applied);
                break;
            }
        }
        match found {
            None => return Err(lost("updating the message")),
            Some(false) => return Ok(None),
            Some(true) => {}
        }
        let message = self
            .load_message(thread, model, id, false)
            .await?
            .map(|(m, _)| m);
        if let (Some(content), Some(_)) = (&update.content, &message) {
            self.refresh_preview(thread, id, content).await?;
        }
        Ok(message)
    }

    async fn message(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
        id: Uuid,
    ) -> Result<Option<MessageRecord>, StoreError> {
        if self.owned(owner, thread).await?.is_none() {
            return Ok(None);
        }
        Ok(self
            .load_message(thread, model, id, false)
            .await?
            .map(|(m, _)| m))
    }

    async fn list_messages(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
        direction: Direction,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Option<Vec<MessageRecord>>, StoreError> {
        if self.owned(owner, thread).await?.is_none() {
            return Ok(None);
        }
        if limit == 0 {
            // CQL refuses `LIMIT 0`.
            return Ok(Some(Vec::new()));
        }
        let listing = match direction {
            Direction::Asc => &self.st.messages_asc,
            Direction::Desc => &self.st.messages_desc,
        };
        let rows: Vec<MessageRow> = match after {
            None => {
                self.cql
                    .fetch_all(&listing.first, (thread, model, page_size(limit)))
                    .await?
            }
            Some(after) => {
                self.cql
                    .fetch_all(&listing.after, (thread, model, after, page_size(limit)))
                    .await?
            }
        };
        messages(rows).map(Some)
    }

    async fn recent_messages(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Option<Vec<MessageRecord>>, StoreError> {
        if self.owned(owner, thread).await?.is_none() {
            return Ok(None);
        }
        if limit == 0 {
            return Ok(Some(Vec::new()));
        }
        // Newest first from the clustering order, bounded below by `after`, then flipped.
        let rows: Vec<MessageRow> = match after {
            None => {
                self.cql
                    .fetch_all(
                        &self.st.messages_desc.first,
                        (thread, model, page_size(limit)),
                    )
                    .await?
            }
            Some(after) => {
                self.cql
                    .fetch_all(
                        &self.st.messages_newest_after,
                        (thread, model, after, page_size(limit)),
                    )
                    .await?
            }
        };
        let mut newest_first = messages(rows)?;
        newest_first.reverse();
        Ok(Some(newest_first))
    }

    async fn summary(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
    ) -> Result<Option<SummaryRecord>, StoreError> {
        if self.owned(owner, thread).await?.is_none() {
            return Ok(None);
        }
        match self.history(thread, model, false).await? {
            Some(history) => history.summary(),
            None => Ok(None),
        }
    }

    async fn put_summary(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
        summary: &SummaryRecord,
    ) -> Result<SummaryOutcome, StoreError> {
        if self.owned(owner, thread).await?.is_none() {
            return Ok(SummaryOutcome::NoThread);
        }
        self.cql.run(&self.st.add_model, (thread, model)).await?;
        let version = i64::try_from(summary.version).unwrap_or(i64::MAX);
        let tokens = i64::from(summary.tokens);
        // Set when a conditional write of ours timed out: it may have landed.
        let mut maybe_landed = false;
        for attempt in 0..CAS_ATTEMPTS {
            let history = self.history(thread, model, attempt > 0).await?;
            let current = history.as_ref().and_then(|h| h.summary_version);
            if let Some(current) = current
                && current >= version
            {
                let stored = history.as_ref().map(HistoryRow::summary).transpose()?;
                let ours = maybe_landed && stored.flatten().as_ref() == Some(summary);
                return Ok(if ours {
                    SummaryOutcome::Stored
                } else {
                    SummaryOutcome::Stale {
                        current_version: count(current),
                    }
                });
            }
            let (content, covers, used, at) = (
                &summary.content,
                summary.covers_until,
                &summary.model_used,
                summary.generated_at,
            );
            let outcome = match current {
                None => {
                    let values = (version, content, tokens, covers, used, at, thread, model);
                    self.cql.lwt(&self.st.put_summary_first, values).await?
                }
                Some(current) => {
                    let values = (
                        version, content, tokens, covers, used, at, thread, model, current,
                    );
                    self.cql.lwt(&self.st.put_summary_next, values).await?
                }
            };
            match outcome {
                Some(outcome) if outcome.applied => return Ok(SummaryOutcome::Stored),
                Some(_) => {}
                None => maybe_landed = true,
            }
        }
        Err(lost("storing the summary"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scylla_common::split_statements;

    #[test]
    fn the_migration_splits_into_its_create_statements() {
        let statements = split_statements(MIGRATIONS[0].2);
        let tables: Vec<_> = statements
            .iter()
            .map(|s| {
                assert!(s.starts_with("CREATE TABLE IF NOT EXISTS "), "{s}");
                assert!(!s.contains("--") && !s.contains(';'), "{s}");
                assert!(!s.to_ascii_uppercase().contains("ALLOW FILTERING"), "{s}");
                s.split_whitespace().nth(5).unwrap_or_default()
            })
            .collect();
        assert_eq!(
            tables,
            [
                "threads",
                "threads_by_owner_updated",
                "threads_by_owner_created",
                "thread_models",
                "messages",
                "message_keys"
            ]
        );
    }

    #[test]
    fn versions_are_unique_across_stores() {
        assert!(MIGRATIONS.iter().all(|(v, _, _)| *v >= 2));
    }

    #[test]
    fn static_only_rows_are_not_messages() {
        let row = MessageRow {
            id: None,
            thread_id: Uuid::now_v7(),
            model_id: "m".into(),
            role: None,
            content: None,
            tokens: None,
            temperature: None,
            status: None,
            created_at: None,
            updated_at: None,
            idempotency_key: None,
            context: None,
            writer: None,
        };
        assert!(messages(vec![row]).unwrap().is_empty());
    }

    #[test]
    fn a_history_without_messages_or_summary_is_no_model() {
        let empty = HistoryRow {
            message_count: None,
            last_message_at: None,
            summary_version: None,
            summary: None,
            summary_tokens: None,
            summary_covers_until: None,
            summary_model: None,
            summary_at: None,
        };
        assert!(empty.into_model("m".into()).unwrap().is_none());
        let half = HistoryRow {
            message_count: Some(2),
            last_message_at: None,
            summary_version: Some(1),
            summary: Some("s".into()),
            summary_tokens: Some(3),
            summary_covers_until: None,
            summary_model: None,
            summary_at: None,
        };
        assert!(matches!(
            half.into_model("m".into()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn previews_cut_on_characters() {
        let long = "é".repeat(LAST_MESSAGE_PREVIEW + 5);
        assert_eq!(preview(&long).chars().count(), LAST_MESSAGE_PREVIEW);
        assert_eq!(preview("short"), "short");
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_unavailable() {
        let config = ScyllaConfig {
            nodes: vec!["127.0.0.1:1".into()],
            keyspace: "polylogue".into(),
            replication_factor: 1,
            username: None,
            password: None,
        };
        assert!(matches!(
            ScyllaThreadStore::connect(&config).await,
            Err(StoreError::Unavailable(_))
        ));
    }
}
