//! SQLite FTS5 adapter of the thread-search port. The owner is an indexed column of the FTS table
//! holding one token (`u<uuid hex>`), and every MATCH expression requires it, so the owner filter is
//! part of the full-text query itself; the join on `thread_docs` re-checks it and provides ordering.

use super::{SearchDoc, ThreadSearch, terms};
use crate::StoreError;
use crate::sqlite_common::{Db, ts, unavailable, uuid_col};
use crate::threads::{Direction, SortField, ThreadKey};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use std::path::Path;
use uuid::Uuid;

const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE VIRTUAL TABLE thread_fts USING fts5(
        owner, title, summary,
        tokenize = 'unicode61 remove_diacritics 2',
        prefix = '2 3'
     );
     CREATE TABLE thread_docs (
        thread_id TEXT PRIMARY KEY NOT NULL,
        row INTEGER NOT NULL UNIQUE,
        owner_id TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE INDEX thread_docs_by_owner_updated ON thread_docs(owner_id, updated_at, thread_id);
     CREATE INDEX thread_docs_by_owner_created ON thread_docs(owner_id, created_at, thread_id);",
];

#[derive(Clone)]
pub struct SqliteThreadSearch {
    db: Db,
}

impl SqliteThreadSearch {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::open(path, MIGRATIONS)?,
        })
    }
}

fn owner_token(owner: Uuid) -> String {
    format!("u{}", owner.simple())
}

/// `owner : "u…" AND {title summary} : ("t1"* AND "t2"*)`; `None` when there is nothing to match.
fn match_expression(owner: Uuid, query: &str) -> Option<String> {
    let terms = terms(query);
    if terms.is_empty() {
        return None;
    }
    let wanted = terms
        .iter()
        .map(|t| format!("\"{t}\"*"))
        .collect::<Vec<_>>()
        .join(" AND ");
    Some(format!(
        "owner : \"{}\" AND {{title summary}} : ({wanted})",
        owner_token(owner)
    ))
}

#[async_trait]
impl ThreadSearch for SqliteThreadSearch {
    fn provider(&self) -> &'static str {
        "sqlite-fts5"
    }

    async fn upsert(&self, doc: &SearchDoc) -> Result<(), StoreError> {
        let d = doc.clone();
        self.db
            .with(move |c| {
                let tx = c.transaction().map_err(unavailable)?;
                let id = d.thread_id.to_string();
                let row: Option<i64> = tx
                    .query_row("SELECT row FROM thread_docs WHERE thread_id = ?1", [&id], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(unavailable)?;
                let summary = d.summary.clone().unwrap_or_default();
                match row {
                    Some(row) => {
                        tx.execute(
                            "UPDATE thread_fts SET owner = ?2, title = ?3, summary = ?4 WHERE rowid = ?1",
                            params![row, owner_token(d.owner_id), d.title, summary],
                        )
                        .map_err(unavailable)?;
                        tx.execute(
                            "UPDATE thread_docs SET owner_id = ?2, created_at = ?3, updated_at = ?4
                             WHERE thread_id = ?1",
                            params![id, d.owner_id.to_string(), ts(d.created_at), ts(d.updated_at)],
                        )
                        .map_err(unavailable)?;
                    }
                    None => {
                        tx.execute(
                            "INSERT INTO thread_fts (owner, title, summary) VALUES (?1, ?2, ?3)",
                            params![owner_token(d.owner_id), d.title, summary],
                        )
                        .map_err(unavailable)?;
                        let row = tx.last_insert_rowid();
                        tx.execute(
                            "INSERT INTO thread_docs (thread_id, row, owner_id, created_at, updated_at)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![id, row, d.owner_id.to_string(), ts(d.created_at), ts(d.updated_at)],
                        )
                        .map_err(unavailable)?;
                    }
                }
                tx.commit().map_err(unavailable)
            })
            .await
    }

    async fn delete(&self, thread_id: Uuid) -> Result<(), StoreError> {
        self.db
            .with(move |c| {
                let tx = c.transaction().map_err(unavailable)?;
                let id = thread_id.to_string();
                if let Some(row) = tx
                    .query_row(
                        "SELECT row FROM thread_docs WHERE thread_id = ?1",
                        [&id],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()
                    .map_err(unavailable)?
                {
                    tx.execute("DELETE FROM thread_fts WHERE rowid = ?1", [row])
                        .map_err(unavailable)?;
                    tx.execute("DELETE FROM thread_docs WHERE thread_id = ?1", [&id])
                        .map_err(unavailable)?;
                }
                tx.commit().map_err(unavailable)
            })
            .await
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
        let Some(expr) = match_expression(owner, query) else {
            return Ok(Vec::new());
        };
        let col = match sort {
            SortField::CreatedAt => "d.created_at",
            SortField::UpdatedAt => "d.updated_at",
        };
        let (cmp, dir) = match direction {
            Direction::Asc => (">", "ASC"),
            Direction::Desc => ("<", "DESC"),
        };
        let keyset = if after.is_some() {
            format!("AND ({col}, d.thread_id) {cmp} (?3, ?4)")
        } else {
            "AND ?3 IS NULL AND ?4 IS NULL".to_owned()
        };
        let sql = format!(
            "SELECT d.thread_id FROM thread_fts f JOIN thread_docs d ON d.row = f.rowid
             WHERE thread_fts MATCH ?1 AND d.owner_id = ?2 {keyset}
             ORDER BY {col} {dir}, d.thread_id {dir} LIMIT ?5"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .with(move |c| {
                let mut stmt = c.prepare_cached(&sql).map_err(unavailable)?;
                let rows = stmt
                    .query_map(
                        params![
                            expr,
                            owner.to_string(),
                            after.map(|k| ts(k.at)),
                            after.map(|k| k.id.to_string()),
                            limit
                        ],
                        |r| uuid_col(r, 0),
                    )
                    .map_err(unavailable)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
            })
            .await
    }

    async fn count(&self, owner: Uuid, query: &str) -> Result<u64, StoreError> {
        let Some(expr) = match_expression(owner, query) else {
            return Ok(0);
        };
        self.db
            .with(move |c| {
                c.query_row(
                    "SELECT COUNT(*) FROM thread_fts f JOIN thread_docs d ON d.row = f.rowid
                     WHERE thread_fts MATCH ?1 AND d.owner_id = ?2",
                    params![expr, owner.to_string()],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(unavailable)
            })
            .await
    }
}
