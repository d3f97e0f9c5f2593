//! SQLite FTS5 adapter of the thread-search port. Every indexed word is scoped by its owner: the
//! word `kubernetes` of a thread of user U is stored as the token `<U hex>xkubernetes`, and a
//! query only ever asks for U's tokens. So the owner filter is the full-text query itself, and a
//! query reads only the posting lists of that owner's words (not everyone's, and not a posting
//! list of all of U's threads). The join on `thread_docs` re-checks the owner and orders the page.

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
    // v2: owner-scoped words (see the module comment); `open` moves v1 rows over, then drops v1.
    "CREATE VIRTUAL TABLE thread_words USING fts5(
        words,
        tokenize = 'unicode61 remove_diacritics 2'
     );
     CREATE TABLE search_rebuild (pending INTEGER NOT NULL);
     INSERT INTO search_rebuild (pending) VALUES (1);",
];

#[derive(Clone)]
pub struct SqliteThreadSearch {
    db: Db,
}

impl SqliteThreadSearch {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Db::open(path, MIGRATIONS)?;
        let search = Self { db };
        search.rebuild_v1()?;
        Ok(search)
    }

    /// Moves documents indexed by schema v1 (words shared by all owners) into the owner-scoped
    /// table, once, in one transaction.
    fn rebuild_v1(&self) -> Result<(), StoreError> {
        let run = |c: &mut rusqlite::Connection| -> Result<(), StoreError> {
            let pending: Option<i64> = c
                .query_row("SELECT pending FROM search_rebuild LIMIT 1", [], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(unavailable)?;
            if pending.is_none() {
                return Ok(());
            }
            let tx = c.transaction().map_err(unavailable)?;
            {
                let mut read = tx
                    .prepare(
                        "SELECT d.row, d.owner_id, f.title, f.summary
                         FROM thread_docs d JOIN thread_fts f ON f.rowid = d.row",
                    )
                    .map_err(unavailable)?;
                let rows = read
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            uuid_col(r, 1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<String>>(3)?,
                        ))
                    })
                    .map_err(unavailable)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(unavailable)?;
                let mut write = tx
                    .prepare("INSERT INTO thread_words (rowid, words) VALUES (?1, ?2)")
                    .map_err(unavailable)?;
                for (row, owner, title, summary) in rows {
                    write
                        .execute(params![
                            row,
                            scoped_words(owner, &title, summary.as_deref())
                        ])
                        .map_err(unavailable)?;
                }
            }
            tx.execute_batch("DROP TABLE thread_fts; DELETE FROM search_rebuild;")
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        };
        self.db.with_blocking(run)
    }
}

/// The owner's scope prefix of every word.
fn scope(owner: Uuid) -> String {
    format!("{}x", owner.simple())
}

/// Title and summary as owner-scoped words, for the index.
fn scoped_words(owner: Uuid, title: &str, summary: Option<&str>) -> String {
    let scope = scope(owner);
    title
        .split(|c: char| !c.is_alphanumeric())
        .chain(
            summary
                .unwrap_or_default()
                .split(|c: char| !c.is_alphanumeric()),
        )
        .filter(|w| !w.is_empty())
        .map(|w| {
            format!(
                "{scope}{}",
                w.chars().take(64).collect::<String>().to_lowercase()
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `"<owner>xt1"* AND "<owner>xt2"*`; `None` when there is nothing to match.
fn match_expression(owner: Uuid, query: &str) -> Option<String> {
    let terms = terms(query);
    if terms.is_empty() {
        return None;
    }
    let scope = scope(owner);
    Some(
        terms
            .iter()
            .map(|t| format!("\"{scope}{t}\"*"))
            .collect::<Vec<_>>()
            .join(" AND "),
    )
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
                let words = scoped_words(d.owner_id, &d.title, d.summary.as_deref());
                match row {
                    Some(row) => {
                        tx.execute(
                            "UPDATE thread_words SET words = ?2 WHERE rowid = ?1",
                            params![row, words],
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
                        tx.execute("INSERT INTO thread_words (words) VALUES (?1)", [words])
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
                    tx.execute("DELETE FROM thread_words WHERE rowid = ?1", [row])
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
            "SELECT d.thread_id FROM thread_words f JOIN thread_docs d ON d.row = f.rowid
             WHERE thread_words MATCH ?1 AND d.owner_id = ?2 {keyset}
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
                    "SELECT COUNT(*) FROM thread_words f JOIN thread_docs d ON d.row = f.rowid
                     WHERE thread_words MATCH ?1 AND d.owner_id = ?2",
                    params![expr, owner.to_string()],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(unavailable)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn documents_of_schema_v1_move_to_owner_scoped_words_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("search.sqlite");
        let owner = Uuid::now_v7();
        let thread = Uuid::now_v7();
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO thread_fts (rowid, owner, title, summary) VALUES (5, ?1, 'Kubernetes notes', 'about pods')",
                [format!("u{}", owner.simple())],
            )
            .unwrap();
            c.execute(
                "INSERT INTO thread_docs (thread_id, row, owner_id, created_at, updated_at) VALUES (?1, 5, ?2, 0, 0)",
                [thread.to_string(), owner.to_string()],
            )
            .unwrap();
        }
        let s = SqliteThreadSearch::open(&path).unwrap();
        let found = s
            .search(
                owner,
                "pod kuber",
                SortField::UpdatedAt,
                Direction::Desc,
                None,
                10,
            )
            .await
            .unwrap();
        assert_eq!(found, vec![thread]);
        let other = s
            .search(
                Uuid::now_v7(),
                "pods",
                SortField::UpdatedAt,
                Direction::Desc,
                None,
                10,
            )
            .await
            .unwrap();
        assert!(other.is_empty());
        drop(s);
        // Reopening does not rebuild again or lose anything.
        let s = SqliteThreadSearch::open(&path).unwrap();
        assert_eq!(s.count(owner, "kubernetes").await.unwrap(), 1);
    }
}
