//! SQLite adapter of the auth port: one file per service, WAL mode, migrations by `user_version`.
//!
//! One connection (see `sqlite_common`): the auth workload is tiny per request (argon2
//! dominates), so one writer is plenty and it keeps the compare-and-set of refresh-token rotation
//! trivially atomic, and the same for profile patches and the compare-and-sets on API keys.

use super::{
    ApiKeyRecord, AuthStore, ConsumeOutcome, ProfilePatch, ProfileSettings, RefreshTokenRecord,
    SessionRecord, UserRecord,
};
use crate::StoreError;
use crate::sqlite_common::{Db, from_ts, ts, unavailable, uuid_col};
use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
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
    // v2: profile settings (NULL = the installation's default) and sealed provider keys. The
    // envelope is opaque JSON text; key_version is a u64 kept within i64's range.
    "ALTER TABLE users ADD COLUMN default_model TEXT;
     ALTER TABLE users ADD COLUMN default_temperature REAL;
     ALTER TABLE users ADD COLUMN system_prompt TEXT;
     CREATE TABLE api_keys (
        user_id TEXT NOT NULL,
        provider TEXT NOT NULL,
        key_version INTEGER NOT NULL,
        envelope TEXT NOT NULL,
        hint TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_used INTEGER,
        PRIMARY KEY (user_id, provider)
     );",
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
        settings: ProfileSettings {
            default_model: row.get(5)?,
            default_temperature: row.get(6)?,
            system_prompt: row.get(7)?,
        },
    })
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    let version: i64 = row.get(2)?;
    Ok(ApiKeyRecord {
        user_id: uuid_col(row, 0)?,
        provider: row.get(1)?,
        key_version: u64::try_from(version).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Integer,
                Box::new(e),
            )
        })?,
        envelope: row.get(3)?,
        hint: row.get(4)?,
        created_at: from_ts(row.get(5)?)?,
        last_used: row.get::<_, Option<i64>>(6)?.map(from_ts).transpose()?,
    })
}

/// `key_version` as stored: an error, not a wrapped value, above `i64::MAX`.
fn stored_version(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| {
        StoreError::Corrupt(format!(
            "key_version {v} does not fit the store (at most {})",
            i64::MAX
        ))
    })
}

fn load_user(conn: &Connection, id: &str) -> Result<Option<UserRecord>, StoreError> {
    conn.query_row(
        &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
        [id],
        user_from_row,
    )
    .optional()
    .map_err(unavailable)
}

fn load_key(
    conn: &Connection,
    user_id: &str,
    provider: &str,
) -> Result<Option<ApiKeyRecord>, StoreError> {
    conn.query_row(
        &format!("SELECT {KEY_COLS} FROM api_keys WHERE user_id = ?1 AND provider = ?2"),
        [user_id, provider],
        key_from_row,
    )
    .optional()
    .map_err(unavailable)
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

const USER_COLS: &str = "id, username, display_name, password_hash, created_at, \
                         default_model, default_temperature, system_prompt";
const KEY_COLS: &str = "user_id, provider, key_version, envelope, hint, created_at, last_used";
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
                &format!("INSERT INTO users ({USER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![
                    u.id.to_string(),
                    u.username,
                    u.display_name,
                    u.password_hash,
                    ts(u.created_at),
                    u.settings.default_model,
                    u.settings.default_temperature,
                    u.settings.system_prompt
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
        self.with(move |c| load_user(c, &id.to_string())).await
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
    async fn update_profile(
        &self,
        user_id: Uuid,
        patch: &ProfilePatch,
    ) -> Result<Option<UserRecord>, StoreError> {
        let patch = patch.clone();
        self.with(move |c| {
            let id = user_id.to_string();
            // Only the patched columns are written, so a concurrent patch of other fields
            // survives (and the single connection serialises the two anyway).
            let mut sets = Vec::new();
            let mut values = vec![Value::Text(id.clone())];
            let mut set = |column: &str, value: Value| {
                values.push(value);
                sets.push(format!("{column} = ?{}", values.len()));
            };
            if let Some(name) = patch.display_name {
                set("display_name", Value::Text(name));
            }
            if let Some(model) = patch.default_model {
                set("default_model", model.map_or(Value::Null, Value::Text));
            }
            if let Some(temperature) = patch.default_temperature {
                set(
                    "default_temperature",
                    temperature.map_or(Value::Null, Value::Real),
                );
            }
            if let Some(prompt) = patch.system_prompt {
                set("system_prompt", prompt.map_or(Value::Null, Value::Text));
            }
            let tx = c.transaction().map_err(unavailable)?;
            if !sets.is_empty() {
                let changed = tx
                    .execute(
                        &format!("UPDATE users SET {} WHERE id = ?1", sets.join(", ")),
                        params_from_iter(values),
                    )
                    .map_err(unavailable)?;
                if changed == 0 {
                    return Ok(None);
                }
            }
            let user = load_user(&tx, &id)?;
            tx.commit().map_err(unavailable)?;
            Ok(user)
        })
        .await
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let k = key.clone();
        let version = stored_version(k.key_version)?;
        self.with(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO api_keys ({KEY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (user_id, provider) DO UPDATE SET \
                        key_version = excluded.key_version, envelope = excluded.envelope, \
                        hint = excluded.hint, created_at = excluded.created_at, \
                        last_used = excluded.last_used"
                ),
                params![
                    k.user_id.to_string(),
                    k.provider,
                    version,
                    k.envelope,
                    k.hint,
                    ts(k.created_at),
                    k.last_used.map(ts)
                ],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn api_key(
        &self,
        user_id: Uuid,
        provider: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let provider = provider.to_owned();
        self.with(move |c| load_key(c, &user_id.to_string(), &provider))
            .await
    }

    async fn api_keys(&self, user_id: Uuid) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.with(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {KEY_COLS} FROM api_keys WHERE user_id = ?1 ORDER BY provider"
                ))
                .map_err(unavailable)?;
            stmt.query_map([user_id.to_string()], key_from_row)
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)
        })
        .await
    }

    async fn delete_api_key(&self, user_id: Uuid, provider: &str) -> Result<bool, StoreError> {
        let provider = provider.to_owned();
        self.with(move |c| {
            c.execute(
                "DELETE FROM api_keys WHERE user_id = ?1 AND provider = ?2",
                params![user_id.to_string(), provider],
            )
            .map(|n| n > 0)
            .map_err(unavailable)
        })
        .await
    }

    async fn touch_api_key(
        &self,
        user_id: Uuid,
        provider: &str,
        key_version: u64,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        // No stored key can hold a version beyond i64.
        let Ok(version) = i64::try_from(key_version) else {
            return Ok(false);
        };
        let provider = provider.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE api_keys SET last_used = ?4 \
                 WHERE user_id = ?1 AND provider = ?2 AND key_version = ?3 \
                   AND (last_used IS NULL OR last_used < ?4)",
                params![user_id.to_string(), provider, version, ts(at)],
            )
            .map(|n| n > 0)
            .map_err(unavailable)
        })
        .await
    }

    async fn replace_envelope(
        &self,
        user_id: Uuid,
        provider: &str,
        key_version: u64,
        expected_envelope: &str,
        new_envelope: &str,
    ) -> Result<bool, StoreError> {
        let Ok(version) = i64::try_from(key_version) else {
            return Ok(false);
        };
        let provider = provider.to_owned();
        let expected = expected_envelope.to_owned();
        let new = new_envelope.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE api_keys SET envelope = ?5 \
                 WHERE user_id = ?1 AND provider = ?2 AND key_version = ?3 AND envelope = ?4",
                params![user_id.to_string(), provider, version, expected, new],
            )
            .map(|n| n > 0)
            .map_err(unavailable)
        })
        .await
    }

    async fn api_keys_page(
        &self,
        after: Option<(Uuid, String)>,
        limit: u32,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        // Keyset paging on the primary key: (user_id as hyphenated text, provider).
        self.with(move |c| {
            let limit = i64::from(limit);
            let rows = match after {
                None => {
                    let mut stmt = c
                        .prepare(&format!(
                            "SELECT {KEY_COLS} FROM api_keys \
                             ORDER BY user_id, provider LIMIT ?1"
                        ))
                        .map_err(unavailable)?;
                    stmt.query_map([limit], key_from_row)
                        .map_err(unavailable)?
                        .collect::<Result<Vec<_>, _>>()
                }
                Some((user_id, provider)) => {
                    let mut stmt = c
                        .prepare(&format!(
                            "SELECT {KEY_COLS} FROM api_keys \
                             WHERE (user_id, provider) > (?1, ?2) \
                             ORDER BY user_id, provider LIMIT ?3"
                        ))
                        .map_err(unavailable)?;
                    stmt.query_map(params![user_id.to_string(), provider, limit], key_from_row)
                        .map_err(unavailable)?
                        .collect::<Result<Vec<_>, _>>()
                }
            };
            rows.map_err(unavailable)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::now_ms;

    /// A file written by the v1 schema opens under v2 with its users intact and unset settings.
    #[tokio::test]
    async fn a_v1_database_gains_settings_and_keys_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.sqlite");
        let id = Uuid::now_v7();
        let created_at = now_ms();
        let v1 = Db::open(&path, &MIGRATIONS[..1]).unwrap();
        v1.with_blocking(|c| {
            c.execute(
                "INSERT INTO users (id, username, display_name, password_hash, created_at) \
                 VALUES (?1, 'old@example.test', 'Old', 'hash', ?2)",
                params![id.to_string(), ts(created_at)],
            )
            .map_err(unavailable)
        })
        .unwrap();
        drop(v1);

        let store = SqliteAuthStore::open(&path).unwrap();
        let user = store.user_by_id(id).await.unwrap().unwrap();
        assert_eq!(user.settings, ProfileSettings::default());
        assert_eq!(user.created_at, created_at);
        let version: i64 = store
            .db
            .with_blocking(|c| {
                c.query_row("PRAGMA user_version", [], |r| r.get(0))
                    .map_err(unavailable)
            })
            .unwrap();
        assert_eq!(version, 2);
        assert!(store.api_keys(id).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn versions_beyond_i64_are_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteAuthStore::open(&dir.path().join("auth.sqlite")).unwrap();
        let key = ApiKeyRecord {
            user_id: Uuid::now_v7(),
            provider: "claude".into(),
            key_version: u64::MAX,
            envelope: "{}".into(),
            hint: "…x".into(),
            created_at: now_ms(),
            last_used: None,
        };
        assert!(matches!(
            store.put_api_key(&key).await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(
            store
                .api_key(key.user_id, "claude")
                .await
                .unwrap()
                .is_none()
        );
        let top = ApiKeyRecord {
            key_version: u64::try_from(i64::MAX).unwrap(),
            ..key.clone()
        };
        store.put_api_key(&top).await.unwrap();
        assert_eq!(
            store.api_key(key.user_id, "claude").await.unwrap(),
            Some(top)
        );
        assert!(
            !store
                .touch_api_key(key.user_id, "claude", u64::MAX, now_ms())
                .await
                .unwrap()
        );
    }
}
