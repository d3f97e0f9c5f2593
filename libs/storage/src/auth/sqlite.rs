//! SQLite adapter of the auth port: one file per service, WAL mode, migrations by `user_version`.
//!
//! One connection (see `sqlite_common`): the auth workload is tiny per request (argon2
//! dominates), so one writer is plenty and it keeps the compare-and-set of refresh-token rotation
//! trivially atomic.

use super::{AuthStore, ConsumeOutcome, RefreshTokenRecord, SessionRecord, UserRecord};
use crate::StoreError;
use crate::sqlite_common::{Db, from_ts, ts, unavailable, uuid_col};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;
use time::OffsetDateTime;
use uuid::Uuid;

const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE users (
        id TEXT PRIMARY KEY NOT NULL,
        username TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE sessions (
        id TEXT PRIMARY KEY NOT NULL,
        user_id TEXT NOT NULL REFERENCES users(id),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER
     );
     CREATE INDEX sessions_by_user ON sessions(user_id);
     CREATE TABLE refresh_tokens (
        token_hash TEXT PRIMARY KEY NOT NULL,
        session_id TEXT NOT NULL REFERENCES sessions(id),
        user_id TEXT NOT NULL,
        issued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER
     );
     CREATE INDEX refresh_tokens_by_session ON refresh_tokens(session_id);",
];

#[derive(Clone)]
pub struct SqliteAuthStore {
    db: Db,
}

impl SqliteAuthStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: Db::open(path, MIGRATIONS)?,
        })
    }

    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.db.with(f).await
    }
}

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        id: uuid_col(row, 0)?,
        username: row.get(1)?,
        display_name: row.get(2)?,
        password_hash: row.get(3)?,
        created_at: from_ts(row.get(4)?)?,
    })
}

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: uuid_col(row, 0)?,
        user_id: uuid_col(row, 1)?,
        created_at: from_ts(row.get(2)?)?,
        expires_at: from_ts(row.get(3)?)?,
        revoked_at: row.get::<_, Option<i64>>(4)?.map(from_ts).transpose()?,
    })
}

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<(RefreshTokenRecord, Option<i64>)> {
    Ok((
        RefreshTokenRecord {
            token_hash: row.get(0)?,
            session_id: uuid_col(row, 1)?,
            user_id: uuid_col(row, 2)?,
            issued_at: from_ts(row.get(3)?)?,
            expires_at: from_ts(row.get(4)?)?,
        },
        row.get(5)?,
    ))
}

const USER_COLS: &str = "id, username, display_name, password_hash, created_at";
const SESSION_COLS: &str = "id, user_id, created_at, expires_at, revoked_at";
const TOKEN_COLS: &str = "token_hash, session_id, user_id, issued_at, expires_at, used_at";

fn load_session(conn: &Connection, id: &str) -> Result<Option<SessionRecord>, StoreError> {
    conn.query_row(
        &format!("SELECT {SESSION_COLS} FROM sessions WHERE id = ?1"),
        [id],
        session_from_row,
    )
    .optional()
    .map_err(unavailable)
}

#[async_trait]
impl AuthStore for SqliteAuthStore {
    fn provider(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await
    }

    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let u = user.clone();
        self.with(move |c| {
            let res = c.execute(
                &format!("INSERT INTO users ({USER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
                params![
                    u.id.to_string(),
                    u.username,
                    u.display_name,
                    u.password_hash,
                    ts(u.created_at)
                ],
            );
            match res {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StoreError::Conflict("username is taken".into()))
                }
                Err(e) => Err(unavailable(e)),
            }
        })
        .await
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let name = username.to_owned();
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE username = ?1"),
                [name],
                user_from_row,
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn user_by_id(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                [id.to_string()],
                user_from_row,
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let s = session.clone();
        self.with(move |c| {
            c.execute(
                &format!("INSERT INTO sessions ({SESSION_COLS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
                params![
                    s.id.to_string(),
                    s.user_id.to_string(),
                    ts(s.created_at),
                    ts(s.expires_at),
                    s.revoked_at.map(ts)
                ],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn session(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError> {
        self.with(move |c| load_session(c, &id.to_string())).await
    }

    async fn revoke_session(
        &self,
        id: Uuid,
        at: OffsetDateTime,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.with(move |c| {
            c.execute(
                "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id.to_string(), ts(at)],
            )
            .map_err(unavailable)?;
            load_session(c, &id.to_string())
        })
        .await
    }

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> Result<(), StoreError> {
        let t = token.clone();
        self.with(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO refresh_tokens ({TOKEN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, NULL)"
                ),
                params![
                    t.token_hash,
                    t.session_id.to_string(),
                    t.user_id.to_string(),
                    ts(t.issued_at),
                    ts(t.expires_at)
                ],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn consume_refresh_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<ConsumeOutcome, StoreError> {
        let hash = token_hash.to_owned();
        self.with(move |c| {
            let tx = c.transaction().map_err(unavailable)?;
            let found = tx
                .query_row(
                    &format!("SELECT {TOKEN_COLS} FROM refresh_tokens WHERE token_hash = ?1"),
                    [&hash],
                    token_from_row,
                )
                .optional()
                .map_err(unavailable)?;
            let Some((token, used_at)) = found else {
                return Ok(ConsumeOutcome::Unknown);
            };
            let Some(session) = load_session(&tx, &token.session_id.to_string())? else {
                return Ok(ConsumeOutcome::Dead);
            };
            if used_at.is_some() {
                // Reuse is reported even for a dead session: the caller revokes either way.
                return Ok(ConsumeOutcome::Reused { token, session });
            }
            if session.revoked_at.is_some() || token.expires_at <= now || session.expires_at <= now
            {
                return Ok(ConsumeOutcome::Dead);
            }
            let changed = tx
                .execute(
                    "UPDATE refresh_tokens SET used_at = ?2 WHERE token_hash = ?1 AND used_at IS NULL",
                    params![hash, ts(now)],
                )
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            if changed == 1 {
                Ok(ConsumeOutcome::Fresh { token, session })
            } else {
                Ok(ConsumeOutcome::Reused { token, session })
            }
        })
        .await
    }

    async fn refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshTokenRecord>, StoreError> {
        let hash = token_hash.to_owned();
        self.with(move |c| {
            c.query_row(
                &format!("SELECT {TOKEN_COLS} FROM refresh_tokens WHERE token_hash = ?1"),
                [hash],
                token_from_row,
            )
            .optional()
            .map(|o| o.map(|(t, _)| t))
            .map_err(unavailable)
        })
        .await
    }
}
