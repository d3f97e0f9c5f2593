//! SQLite adapter of the thread port. Ownership is a condition of every statement (or of the
//! transaction's first statement), never a check left to the caller. Deletes cascade through
//! foreign keys: thread → per-model rows → messages.

use super::{
    AppendOutcome, Direction, LAST_MESSAGE_PREVIEW, LastMessage, MessageRecord, MessageUpdate,
    ModelHistory, SortField, SummaryOutcome, SummaryRecord, ThreadKey, ThreadRecord, ThreadStore,
};
use crate::StoreError;
use crate::sqlite_common::{Db, from_ts, ts, unavailable, uuid_col};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use std::path::Path;
use time::OffsetDateTime;
use uuid::Uuid;

const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE threads (
        id TEXT PRIMARY KEY NOT NULL,
        owner_id TEXT NOT NULL,
        title TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        message_count INTEGER NOT NULL DEFAULT 0,
        last_id TEXT,
        last_content TEXT,
        last_role TEXT,
        last_model TEXT,
        last_at INTEGER
     );
     CREATE INDEX threads_by_owner_updated ON threads(owner_id, updated_at, id);
     CREATE INDEX threads_by_owner_created ON threads(owner_id, created_at, id);
     CREATE TABLE thread_models (
        thread_id TEXT NOT NULL REFERENCES threads(id) ON DELETE CASCADE,
        model_id TEXT NOT NULL,
        message_count INTEGER NOT NULL DEFAULT 0,
        last_message_at INTEGER,
        summary_version INTEGER,
        summary TEXT,
        summary_tokens INTEGER,
        summary_covers_until TEXT,
        summary_model TEXT,
        summary_at INTEGER,
        PRIMARY KEY (thread_id, model_id)
     ) WITHOUT ROWID;
     CREATE TABLE messages (
        thread_id TEXT NOT NULL,
        model_id TEXT NOT NULL,
        id TEXT NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        tokens INTEGER,
        temperature REAL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        idempotency_key TEXT,
        context TEXT,
        PRIMARY KEY (thread_id, model_id, id),
        FOREIGN KEY (thread_id, model_id) REFERENCES thread_models(thread_id, model_id) ON DELETE CASCADE
     ) WITHOUT ROWID;
     CREATE UNIQUE INDEX messages_by_id ON messages(id);
     CREATE UNIQUE INDEX messages_by_idempotency_key
        ON messages(thread_id, model_id, idempotency_key) WHERE idempotency_key IS NOT NULL;",
    // v2: per-owner thread counts, so `totalCount` costs one row instead of an index scan.
    "CREATE TABLE owner_counts (
        owner_id TEXT PRIMARY KEY NOT NULL,
        threads INTEGER NOT NULL
     ) WITHOUT ROWID;
     INSERT INTO owner_counts (owner_id, threads)
        SELECT owner_id, COUNT(*) FROM threads GROUP BY owner_id;",
];

#[derive(Clone)]
pub struct SqliteThreadStore {
    db: Db,
}

impl SqliteThreadStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::open(path, MIGRATIONS)?,
        })
    }
}

const THREAD_COLS: &str = "id, owner_id, title, created_at, updated_at, message_count, \
                           last_content, last_role, last_model, last_at";
const MESSAGE_COLS: &str = "id, thread_id, model_id, role, content, tokens, temperature, status, \
                            created_at, updated_at, idempotency_key, context";
const MODEL_COLS: &str = "model_id, message_count, last_message_at, summary_version, summary, \
                          summary_tokens, summary_covers_until, summary_model, summary_at";

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn thread_from_row(row: &Row<'_>) -> rusqlite::Result<ThreadRecord> {
    let last_at: Option<i64> = row.get(9)?;
    let last_message = match last_at {
        Some(at) => Some(LastMessage {
            content: row.get::<_, Option<String>>(6)?.unwrap_or_default(),
            role: row.get::<_, Option<String>>(7)?.unwrap_or_default(),
            model_id: row.get::<_, Option<String>>(8)?.unwrap_or_default(),
            at: from_ts(at)?,
        }),
        None => None,
    };
    Ok(ThreadRecord {
        id: uuid_col(row, 0)?,
        owner_id: uuid_col(row, 1)?,
        title: row.get(2)?,
        created_at: from_ts(row.get(3)?)?,
        updated_at: from_ts(row.get(4)?)?,
        message_count: count(row.get(5)?),
        last_message,
    })
}

fn message_from_row(row: &Row<'_>) -> rusqlite::Result<MessageRecord> {
    Ok(MessageRecord {
        id: uuid_col(row, 0)?,
        thread_id: uuid_col(row, 1)?,
        model_id: row.get(2)?,
        role: row.get(3)?,
        content: row.get(4)?,
        tokens: row.get(5)?,
        temperature: row.get(6)?,
        status: row.get(7)?,
        created_at: from_ts(row.get(8)?)?,
        updated_at: from_ts(row.get(9)?)?,
        idempotency_key: row.get(10)?,
        context: row.get(11)?,
    })
}

fn model_from_row(row: &Row<'_>) -> rusqlite::Result<ModelHistory> {
    let version: Option<i64> = row.get(3)?;
    let summary = match version {
        Some(v) => Some(SummaryRecord {
            version: count(v),
            content: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
            tokens: row.get::<_, Option<u32>>(5)?.unwrap_or(0),
            covers_until: uuid_col(row, 6)?,
            model_used: row.get::<_, Option<String>>(7)?.unwrap_or_default(),
            generated_at: from_ts(row.get(8)?)?,
        }),
        None => None,
    };
    Ok(ModelHistory {
        model_id: row.get(0)?,
        message_count: count(row.get(1)?),
        last_message_at: row.get::<_, Option<i64>>(2)?.map(from_ts).transpose()?,
        summary,
    })
}

fn owns(tx: &Connection, owner: Uuid, thread: Uuid) -> Result<bool, StoreError> {
    tx.query_row(
        "SELECT 1 FROM threads WHERE id = ?1 AND owner_id = ?2",
        params![thread.to_string(), owner.to_string()],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
    .map_err(unavailable)
}

fn load_thread(c: &Connection, owner: Uuid, id: Uuid) -> Result<Option<ThreadRecord>, StoreError> {
    c.query_row(
        &format!("SELECT {THREAD_COLS} FROM threads WHERE id = ?1 AND owner_id = ?2"),
        params![id.to_string(), owner.to_string()],
        thread_from_row,
    )
    .optional()
    .map_err(unavailable)
}

fn load_message(
    c: &Connection,
    thread: Uuid,
    model: &str,
    id: Uuid,
) -> Result<Option<MessageRecord>, StoreError> {
    c.query_row(
        &format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE thread_id = ?1 AND model_id = ?2 AND id = ?3"
        ),
        params![thread.to_string(), model, id.to_string()],
        message_from_row,
    )
    .optional()
    .map_err(unavailable)
}

fn preview(content: &str) -> String {
    content.chars().take(LAST_MESSAGE_PREVIEW).collect()
}

fn append(
    tx: &Transaction<'_>,
    owner: Uuid,
    m: &MessageRecord,
) -> Result<AppendOutcome, StoreError> {
    if !owns(tx, owner, m.thread_id)? {
        return Ok(AppendOutcome::NoThread);
    }
    let by_id = tx
        .query_row(
            &format!("SELECT {MESSAGE_COLS} FROM messages WHERE id = ?1"),
            [m.id.to_string()],
            message_from_row,
        )
        .optional()
        .map_err(unavailable)?;
    if let Some(existing) = by_id {
        return Ok(if existing.thread_id == m.thread_id {
            AppendOutcome::Duplicate(existing)
        } else {
            // An id of another thread: never reveal it, never overwrite it.
            AppendOutcome::NoThread
        });
    }
    if let Some(key) = &m.idempotency_key {
        let by_key = tx
            .query_row(
                &format!(
                    "SELECT {MESSAGE_COLS} FROM messages
                     WHERE thread_id = ?1 AND model_id = ?2 AND idempotency_key = ?3"
                ),
                params![m.thread_id.to_string(), m.model_id, key],
                message_from_row,
            )
            .optional()
            .map_err(unavailable)?;
        if let Some(existing) = by_key {
            return Ok(AppendOutcome::Duplicate(existing));
        }
    }
    let thread = m.thread_id.to_string();
    tx.execute(
        "INSERT OR IGNORE INTO thread_models (thread_id, model_id) VALUES (?1, ?2)",
        params![thread, m.model_id],
    )
    .map_err(unavailable)?;
    tx.execute(
        &format!(
            "INSERT INTO messages ({MESSAGE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ),
        params![
            m.id.to_string(),
            thread,
            m.model_id,
            m.role,
            m.content,
            m.tokens,
            m.temperature,
            m.status,
            ts(m.created_at),
            ts(m.updated_at),
            m.idempotency_key,
            m.context
        ],
    )
    .map_err(unavailable)?;
    tx.execute(
        "UPDATE thread_models SET message_count = message_count + 1,
            last_message_at = MAX(COALESCE(last_message_at, 0), ?3)
         WHERE thread_id = ?1 AND model_id = ?2",
        params![thread, m.model_id, ts(m.created_at)],
    )
    .map_err(unavailable)?;
    tx.execute(
        "UPDATE threads SET message_count = message_count + 1, updated_at = MAX(updated_at, ?2)
         WHERE id = ?1",
        params![thread, ts(m.created_at)],
    )
    .map_err(unavailable)?;
    // The listing's preview follows the newest message only.
    tx.execute(
        "UPDATE threads SET last_id = ?3, last_content = ?4, last_role = ?5, last_model = ?6,
            last_at = ?2
         WHERE id = ?1 AND (last_at IS NULL OR last_at <= ?2)",
        params![
            thread,
            ts(m.created_at),
            m.id.to_string(),
            preview(&m.content),
            m.role,
            m.model_id
        ],
    )
    .map_err(unavailable)?;
    Ok(AppendOutcome::Inserted(m.clone()))
}

#[async_trait]
impl ThreadStore for SqliteThreadStore {
    fn provider(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await
    }

    async fn create_thread(&self, t: &ThreadRecord) -> Result<(), StoreError> {
        let t = t.clone();
        self.db
            .with(move |c| {
                let tx = c.transaction().map_err(unavailable)?;
                tx.execute(
                    "INSERT INTO threads (id, owner_id, title, created_at, updated_at, message_count)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                    params![
                        t.id.to_string(),
                        t.owner_id.to_string(),
                        t.title,
                        ts(t.created_at),
                        ts(t.updated_at)
                    ],
                )
                .map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        StoreError::Conflict("thread id exists".into())
                    }
                    e => unavailable(e),
                })?;
                tx.execute(
                    "INSERT INTO owner_counts (owner_id, threads) VALUES (?1, 1)
                     ON CONFLICT (owner_id) DO UPDATE SET threads = threads + 1",
                    [t.owner_id.to_string()],
                )
                .map_err(unavailable)?;
                tx.commit().map_err(unavailable)
            })
            .await
    }

    async fn thread(&self, owner: Uuid, id: Uuid) -> Result<Option<ThreadRecord>, StoreError> {
        self.db.with(move |c| load_thread(c, owner, id)).await
    }

    async fn threads_by_ids(
        &self,
        owner: Uuid,
        ids: &[Uuid],
    ) -> Result<Vec<ThreadRecord>, StoreError> {
        let ids = ids.to_vec();
        self.db
            .with(move |c| {
                let mut stmt = c
                    .prepare_cached(&format!(
                        "SELECT {THREAD_COLS} FROM threads WHERE id = ?1 AND owner_id = ?2"
                    ))
                    .map_err(unavailable)?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(t) = stmt
                        .query_row(params![id.to_string(), owner.to_string()], thread_from_row)
                        .optional()
                        .map_err(unavailable)?
                    {
                        out.push(t);
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn list_threads(
        &self,
        owner: Uuid,
        sort: SortField,
        direction: Direction,
        after: Option<ThreadKey>,
        limit: usize,
    ) -> Result<Vec<ThreadRecord>, StoreError> {
        let col = match sort {
            SortField::CreatedAt => "created_at",
            SortField::UpdatedAt => "updated_at",
        };
        let (cmp, dir) = match direction {
            Direction::Asc => (">", "ASC"),
            Direction::Desc => ("<", "DESC"),
        };
        let keyset = if after.is_some() {
            format!("AND ({col}, id) {cmp} (?2, ?3)")
        } else {
            "AND ?2 IS NULL AND ?3 IS NULL".to_owned()
        };
        let sql = format!(
            "SELECT {THREAD_COLS} FROM threads INDEXED BY threads_by_owner_{col_short}
             WHERE owner_id = ?1 {keyset}
             ORDER BY {col} {dir}, id {dir} LIMIT ?4",
            col_short = if sort == SortField::CreatedAt {
                "created"
            } else {
                "updated"
            }
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .with(move |c| {
                let mut stmt = c.prepare_cached(&sql).map_err(unavailable)?;
                let rows = stmt
                    .query_map(
                        params![
                            owner.to_string(),
                            after.map(|k| ts(k.at)),
                            after.map(|k| k.id.to_string()),
                            limit
                        ],
                        thread_from_row,
                    )
                    .map_err(unavailable)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
            })
            .await
    }

    async fn count_threads(&self, owner: Uuid) -> Result<u64, StoreError> {
        self.db
            .with(move |c| {
                c.query_row(
                    "SELECT threads FROM owner_counts WHERE owner_id = ?1",
                    [owner.to_string()],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map(|n| n.map(count).unwrap_or(0))
                .map_err(unavailable)
            })
            .await
    }

    async fn rename_thread(
        &self,
        owner: Uuid,
        id: Uuid,
        title: &str,
        at: OffsetDateTime,
    ) -> Result<Option<ThreadRecord>, StoreError> {
        let title = title.to_owned();
        self.db
            .with(move |c| {
                c.execute(
                    "UPDATE threads SET title = ?3, updated_at = MAX(updated_at, ?4)
                     WHERE id = ?1 AND owner_id = ?2",
                    params![id.to_string(), owner.to_string(), title, ts(at)],
                )
                .map_err(unavailable)?;
                load_thread(c, owner, id)
            })
            .await
    }

    async fn delete_thread(&self, owner: Uuid, id: Uuid) -> Result<Option<u64>, StoreError> {
        self.db
            .with(move |c| {
                let tx = c.transaction().map_err(unavailable)?;
                if !owns(&tx, owner, id)? {
                    return Ok(None);
                }
                let messages: i64 = tx
                    .query_row(
                        "SELECT COUNT(*) FROM messages WHERE thread_id = ?1",
                        [id.to_string()],
                        |r| r.get(0),
                    )
                    .map_err(unavailable)?;
                tx.execute(
                    "DELETE FROM threads WHERE id = ?1 AND owner_id = ?2",
                    params![id.to_string(), owner.to_string()],
                )
                .map_err(unavailable)?;
                tx.execute(
                    "UPDATE owner_counts SET threads = MAX(threads - 1, 0) WHERE owner_id = ?1",
                    [owner.to_string()],
                )
                .map_err(unavailable)?;
                tx.commit().map_err(unavailable)?;
                Ok(Some(count(messages)))
            })
            .await
    }

    async fn models(&self, owner: Uuid, thread: Uuid) -> Result<Vec<ModelHistory>, StoreError> {
        self.db
            .with(move |c| {
                let mut stmt = c
                    .prepare_cached(&format!(
                        "SELECT {MODEL_COLS} FROM thread_models tm
                         WHERE tm.thread_id = ?1
                           AND EXISTS (SELECT 1 FROM threads t WHERE t.id = ?1 AND t.owner_id = ?2)
                         ORDER BY tm.model_id"
                    ))
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(
                        params![thread.to_string(), owner.to_string()],
                        model_from_row,
                    )
                    .map_err(unavailable)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
            })
            .await
    }

    async fn append_message(
        &self,
        owner: Uuid,
        message: &MessageRecord,
    ) -> Result<AppendOutcome, StoreError> {
        let m = message.clone();
        self.db
            .with(move |c| {
                let tx = c.transaction().map_err(unavailable)?;
                let outcome = append(&tx, owner, &m)?;
                tx.commit().map_err(unavailable)?;
                Ok(outcome)
            })
            .await
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
        let model = model.to_owned();
        let u = update.clone();
        self.db
            .with(move |c| {
                let tx = c.transaction().map_err(unavailable)?;
                if !owns(&tx, owner, thread)? {
                    return Ok(None);
                }
                let changed = tx
                    .execute(
                        "UPDATE messages SET
                            content = COALESCE(?4, content),
                            status = COALESCE(?5, status),
                            tokens = COALESCE(?6, tokens),
                            temperature = COALESCE(?7, temperature),
                            context = COALESCE(?8, context),
                            updated_at = ?9
                         WHERE thread_id = ?1 AND model_id = ?2 AND id = ?3",
                        params![
                            thread.to_string(),
                            model,
                            id.to_string(),
                            u.content,
                            u.status,
                            u.tokens,
                            u.temperature,
                            u.context,
                            ts(at)
                        ],
                    )
                    .map_err(unavailable)?;
                if changed == 0 {
                    return Ok(None);
                }
                if let Some(content) = &u.content {
                    // Keep the listing's preview true when the newest message grows.
                    tx.execute(
                        "UPDATE threads SET last_content = ?3 WHERE id = ?1 AND last_id = ?2",
                        params![thread.to_string(), id.to_string(), preview(content)],
                    )
                    .map_err(unavailable)?;
                }
                let message = load_message(&tx, thread, &model, id)?;
                tx.commit().map_err(unavailable)?;
                Ok(message)
            })
            .await
    }

    async fn message(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
        id: Uuid,
    ) -> Result<Option<MessageRecord>, StoreError> {
        let model = model.to_owned();
        self.db
            .with(move |c| {
                if !owns(c, owner, thread)? {
                    return Ok(None);
                }
                load_message(c, thread, &model, id)
            })
            .await
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
        let model = model.to_owned();
        let (cmp, dir) = match direction {
            Direction::Asc => (">", "ASC"),
            Direction::Desc => ("<", "DESC"),
        };
        let sql = format!(
            "SELECT {MESSAGE_COLS} FROM messages
             WHERE thread_id = ?1 AND model_id = ?2 AND (?3 IS NULL OR id {cmp} ?3)
             ORDER BY id {dir} LIMIT ?4"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .with(move |c| {
                if !owns(c, owner, thread)? {
                    return Ok(None);
                }
                let mut stmt = c.prepare_cached(&sql).map_err(unavailable)?;
                let rows = stmt
                    .query_map(
                        params![
                            thread.to_string(),
                            model,
                            after.map(|a| a.to_string()),
                            limit
                        ],
                        message_from_row,
                    )
                    .map_err(unavailable)?;
                rows.collect::<Result<Vec<_>, _>>()
                    .map(Some)
                    .map_err(unavailable)
            })
            .await
    }

    async fn recent_messages(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Option<Vec<MessageRecord>>, StoreError> {
        let newest_first = self
            .list_messages(owner, thread, model, Direction::Desc, None, limit)
            .await?;
        Ok(newest_first.map(|mut messages| {
            if let Some(after) = after {
                messages.retain(|m| m.id > after);
            }
            messages.reverse();
            messages
        }))
    }

    async fn summary(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
    ) -> Result<Option<SummaryRecord>, StoreError> {
        Ok(self
            .models(owner, thread)
            .await?
            .into_iter()
            .find(|m| m.model_id == model)
            .and_then(|m| m.summary))
    }

    async fn put_summary(
        &self,
        owner: Uuid,
        thread: Uuid,
        model: &str,
        summary: &SummaryRecord,
    ) -> Result<SummaryOutcome, StoreError> {
        let model = model.to_owned();
        let s = summary.clone();
        self.db
            .with(move |c| {
                let tx = c.transaction().map_err(unavailable)?;
                if !owns(&tx, owner, thread)? {
                    return Ok(SummaryOutcome::NoThread);
                }
                tx.execute(
                    "INSERT OR IGNORE INTO thread_models (thread_id, model_id) VALUES (?1, ?2)",
                    params![thread.to_string(), model],
                )
                .map_err(unavailable)?;
                let version = i64::try_from(s.version).unwrap_or(i64::MAX);
                let changed = tx
                    .execute(
                        "UPDATE thread_models SET summary_version = ?3, summary = ?4,
                            summary_tokens = ?5, summary_covers_until = ?6, summary_model = ?7,
                            summary_at = ?8
                         WHERE thread_id = ?1 AND model_id = ?2
                           AND (summary_version IS NULL OR summary_version < ?3)",
                        params![
                            thread.to_string(),
                            model,
                            version,
                            s.content,
                            s.tokens,
                            s.covers_until.to_string(),
                            s.model_used,
                            ts(s.generated_at)
                        ],
                    )
                    .map_err(unavailable)?;
                let outcome = if changed == 1 {
                    SummaryOutcome::Stored
                } else {
                    let current: Option<i64> = tx
                        .query_row(
                            "SELECT summary_version FROM thread_models WHERE thread_id = ?1 AND model_id = ?2",
                            params![thread.to_string(), model],
                            |r| r.get(0),
                        )
                        .map_err(unavailable)?;
                    SummaryOutcome::Stale {
                        current_version: current.map(count).unwrap_or(0),
                    }
                };
                tx.commit().map_err(unavailable)?;
                Ok(outcome)
            })
            .await
    }
}
