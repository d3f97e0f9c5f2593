//! ScyllaDB adapter of the auth port: the scale-out twin of the SQLite adapter, same contract.
//!
//! Uniqueness and single use rest on lightweight transactions at SERIAL; everything else reads
//! and writes at LOCAL_QUORUM. Schema and reasons: `migrations/scylla`, `docs/storage-scylla.md`.

use super::{AuthStore, ConsumeOutcome, RefreshTokenRecord, SessionRecord, UserRecord};
use crate::StoreError;
use crate::scylla_common::{self, Cql, LWT_ATTEMPTS, Migration, Mode};
use async_trait::async_trait;
use scylla::DeserializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

pub use crate::scylla_common::ScyllaConfig;

/// Versioned schema files, applied in order and recorded in `schema_migrations`. The auth store
/// applies only its own files (see `scylla_common::Migration`).
const MIGRATIONS: &[Migration] = &[(
    1,
    "0001_auth",
    include_str!("../../migrations/scylla/0001_auth.cql"),
)];

/// Sessions and tokens outlive `expires_at` by this much before their TTL removes them, so a
/// late replay is still reported as `Reused`/`Dead` instead of `Unknown`, and clock skew between
/// the service and the cluster cannot cut a live row short.
const RETENTION: Duration = Duration::days(1);

/// Conditional updates rewrite every column with a TTL this much longer than the insert's: their
/// cells then always outlive the insert's row marker, so the row can never decay into a key with
/// null columns (which would read back as corrupt).
const REWRITE_SLACK: Duration = Duration::hours(1);

/// CQL's ceiling for `USING TTL` (20 years).
const MAX_TTL_SECS: i64 = 630_720_000;

pub struct ScyllaAuthStore {
    cql: Cql,
    st: Statements,
}

/// Every statement the adapter runs, prepared once at connect time.
struct Statements {
    ping: PreparedStatement,
    claim_username: PreparedStatement,
    username_owner: PreparedStatement,
    username_owner_serial: PreparedStatement,
    insert_user: PreparedStatement,
    user_by_id: PreparedStatement,
    insert_session: PreparedStatement,
    session_by_id: PreparedStatement,
    revoke_session: PreparedStatement,
    insert_token: PreparedStatement,
    token_by_hash: PreparedStatement,
    token_by_hash_serial: PreparedStatement,
    spend_token: PreparedStatement,
}

impl Statements {
    async fn prepare(cql: &Cql, ks: &str) -> Result<Self, StoreError> {
        let read = |stmt: String| cql.prepare(stmt, Mode::Read);
        let serial_read = |stmt: String| cql.prepare(stmt, Mode::SerialRead);
        let write = |stmt: String| cql.prepare(stmt, Mode::Write);
        let lwt = |stmt: String| cql.prepare(stmt, Mode::Lwt);
        Ok(Self {
            ping: read("SELECT key FROM system.local WHERE key = 'local'".into()).await?,
            claim_username: lwt(format!(
                "INSERT INTO {ks}.users_by_username (username, user_id) VALUES (?, ?) IF NOT EXISTS"
            ))
            .await?,
            username_owner: read(format!(
                "SELECT user_id FROM {ks}.users_by_username WHERE username = ?"
            ))
            .await?,
            username_owner_serial: serial_read(format!(
                "SELECT user_id FROM {ks}.users_by_username WHERE username = ?"
            ))
            .await?,
            insert_user: write(format!(
                "INSERT INTO {ks}.users (id, username, display_name, password_hash, created_at) \
                 VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            user_by_id: read(format!(
                "SELECT id, username, display_name, password_hash, created_at \
                 FROM {ks}.users WHERE id = ?"
            ))
            .await?,
            insert_session: lwt(format!(
                "INSERT INTO {ks}.sessions (id, user_id, created_at, expires_at, revoked_at) \
                 VALUES (?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?"
            ))
            .await?,
            session_by_id: read(format!(
                "SELECT id, user_id, created_at, expires_at, revoked_at \
                 FROM {ks}.sessions WHERE id = ?"
            ))
            .await?,
            revoke_session: lwt(format!(
                "UPDATE {ks}.sessions USING TTL ? \
                 SET user_id = ?, created_at = ?, expires_at = ?, revoked_at = ? \
                 WHERE id = ? IF revoked_at = null"
            ))
            .await?,
            insert_token: lwt(format!(
                "INSERT INTO {ks}.refresh_tokens \
                 (token_hash, session_id, user_id, issued_at, expires_at) \
                 VALUES (?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?"
            ))
            .await?,
            token_by_hash: read(format!(
                "SELECT {TOKEN_COLS} FROM {ks}.refresh_tokens WHERE token_hash = ?"
            ))
            .await?,
            token_by_hash_serial: serial_read(format!(
                "SELECT {TOKEN_COLS} FROM {ks}.refresh_tokens WHERE token_hash = ?"
            ))
            .await?,
            spend_token: lwt(format!(
                "UPDATE {ks}.refresh_tokens USING TTL ? \
                 SET session_id = ?, user_id = ?, issued_at = ?, expires_at = ?, \
                     used_at = ?, consumed_by = ? \
                 WHERE token_hash = ? IF used_at = null"
            ))
            .await?,
        })
    }
}

const TOKEN_COLS: &str =
    "token_hash, session_id, user_id, issued_at, expires_at, used_at, consumed_by";

impl ScyllaAuthStore {
    /// Connects, creates the keyspace if it is missing, applies pending migrations and prepares
    /// every statement.
    pub async fn connect(config: &ScyllaConfig) -> Result<Self, StoreError> {
        let (cql, keyspace) = scylla_common::connect(config, MIGRATIONS).await?;
        let st = Statements::prepare(&cql, &keyspace).await?;
        Ok(Self { cql, st })
    }

    /// Claims the username for `user.id`: `Ok` once the claim is ours (also when an earlier,
    /// timed-out attempt of ours landed), `Conflict` when another id holds it.
    async fn claim_username(&self, user: &UserRecord) -> Result<(), StoreError> {
        for _ in 0..LWT_ATTEMPTS {
            let owner = match self
                .cql
                .lwt(&self.st.claim_username, (&user.username, user.id))
                .await?
            {
                Some(outcome) if outcome.applied => return Ok(()),
                Some(outcome) => Some(outcome.uuid("user_id")?.ok_or_else(|| {
                    StoreError::Corrupt("a username claim without an owner".into())
                })?),
                None => self
                    .cql
                    .fetch::<(Uuid,)>(&self.st.username_owner_serial, (&user.username,))
                    .await?
                    .map(|(id,)| id),
            };
            match owner {
                Some(id) if id == user.id => return Ok(()),
                Some(_) => return Err(StoreError::Conflict("username is taken".into())),
                // Our timed-out attempt did not land and nobody else's did: try again.
                None => {}
            }
        }
        Err(StoreError::Unavailable(
            "the username claim kept timing out".into(),
        ))
    }

    async fn load_session(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self
            .cql
            .fetch::<SessionRow>(&self.st.session_by_id, (id,))
            .await?
            .map(SessionRecord::from))
    }

    /// Spends an unspent token; `Fresh` only for the caller whose transaction landed.
    async fn spend(
        &self,
        token: RefreshTokenRecord,
        session: SessionRecord,
        now: OffsetDateTime,
    ) -> Result<ConsumeOutcome, StoreError> {
        // A per-call id written with the spend lets a caller whose transaction timed out tell
        // its own landed write from a rival's: `used_at` alone could be equal for both.
        let me = Uuid::new_v4();
        let ttl = ttl_secs(token.expires_at, RETENTION + REWRITE_SLACK);
        for _ in 0..LWT_ATTEMPTS {
            let values = (
                ttl,
                token.session_id,
                token.user_id,
                token.issued_at,
                token.expires_at,
                now,
                me,
                &token.token_hash,
            );
            let won = match self.cql.lwt(&self.st.spend_token, values).await? {
                Some(outcome) => outcome.applied,
                None => match self
                    .cql
                    .fetch::<TokenRow>(&self.st.token_by_hash_serial, (&token.token_hash,))
                    .await?
                {
                    Some(row) if row.used_at.is_some() => row.consumed_by == Some(me),
                    // Our timed-out attempt did not land and nobody else's did: try again.
                    Some(_) => continue,
                    None => return Ok(ConsumeOutcome::Dead),
                },
            };
            return Ok(if won {
                ConsumeOutcome::Fresh { token, session }
            } else {
                ConsumeOutcome::Reused { token, session }
            });
        }
        Err(StoreError::Unavailable(
            "spending the refresh token kept timing out".into(),
        ))
    }
}

#[async_trait]
impl AuthStore for ScyllaAuthStore {
    fn provider(&self) -> &'static str {
        "scylla"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.cql.run(&self.st.ping, ()).await.map(|_| ())
    }

    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        // The claim comes first and only its winner writes `users`, so a refused registration
        // leaves nothing readable. A crash in between leaves a claimed name without a user:
        // lookups by name then find nothing, and a retry with the same record completes it.
        self.claim_username(user).await?;
        self.cql
            .run(
                &self.st.insert_user,
                (
                    user.id,
                    &user.username,
                    &user.display_name,
                    &user.password_hash,
                    user.created_at,
                ),
            )
            .await
            .map(|_| ())
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let Some((id,)) = self
            .cql
            .fetch::<(Uuid,)>(&self.st.username_owner, (username,))
            .await?
        else {
            return Ok(None);
        };
        match self.user_by_id(id).await? {
            Some(user) if user.username != username => Err(StoreError::Corrupt(format!(
                "username {username} is claimed by user {id}, whose record names another"
            ))),
            found => Ok(found),
        }
    }

    async fn user_by_id(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        Ok(self
            .cql
            .fetch::<UserRow>(&self.st.user_by_id, (id,))
            .await?
            .map(UserRecord::from))
    }

    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let values = (
            session.id,
            session.user_id,
            session.created_at,
            session.expires_at,
            // Unset rather than null: a null would write a tombstone into every new session.
            MaybeUnset::from_option(session.revoked_at),
            ttl_secs(session.expires_at, RETENTION),
        );
        match self.cql.lwt(&self.st.insert_session, values).await? {
            Some(outcome) if outcome.applied => Ok(()),
            // A retry of our own earlier insert, not a clash of random ids.
            Some(outcome) if outcome.uuid("user_id")? == Some(session.user_id) => Ok(()),
            Some(_) => Err(StoreError::Conflict(format!(
                "session {} already exists",
                session.id
            ))),
            None => Err(StoreError::Unavailable(
                "creating the session timed out".into(),
            )),
        }
    }

    async fn session(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError> {
        self.load_session(id).await
    }

    async fn revoke_session(
        &self,
        id: Uuid,
        at: OffsetDateTime,
    ) -> Result<Option<SessionRecord>, StoreError> {
        // Read first: UPDATE is an upsert, so a missing id must be answered before any write,
        // and the read supplies the columns the conditional update rewrites (see REWRITE_SLACK).
        let Some(session) = self.load_session(id).await? else {
            return Ok(None);
        };
        if session.revoked_at.is_some() {
            return Ok(Some(session));
        }
        let values = (
            ttl_secs(session.expires_at, RETENTION + REWRITE_SLACK),
            session.user_id,
            session.created_at,
            session.expires_at,
            at,
            id,
        );
        let revoked_at = match self.cql.lwt(&self.st.revoke_session, values).await? {
            Some(outcome) if outcome.applied => at,
            // Someone revoked first; the transaction reports the time that stands.
            Some(outcome) => outcome.timestamp("revoked_at")?.ok_or_else(|| {
                StoreError::Corrupt("a refused revocation without a revocation time".into())
            })?,
            None => {
                return Err(StoreError::Unavailable(
                    "revoking the session timed out".into(),
                ));
            }
        };
        Ok(Some(SessionRecord {
            revoked_at: Some(revoked_at),
            ..session
        }))
    }

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> Result<(), StoreError> {
        // Conditional although the hash is fresh: the row is later spent by a conditional
        // update, and Scylla orders Paxos writes and plain writes to one row only by timestamp.
        let values = (
            &token.token_hash,
            token.session_id,
            token.user_id,
            token.issued_at,
            token.expires_at,
            ttl_secs(token.expires_at, RETENTION),
        );
        match self.cql.lwt(&self.st.insert_token, values).await? {
            Some(outcome) if outcome.applied => Ok(()),
            Some(outcome) if outcome.uuid("session_id")? == Some(token.session_id) => Ok(()),
            Some(_) => Err(StoreError::Conflict(
                "refresh token hash already exists".into(),
            )),
            None => Err(StoreError::Unavailable(
                "storing the refresh token timed out".into(),
            )),
        }
    }

    async fn consume_refresh_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<ConsumeOutcome, StoreError> {
        let Some(row) = self
            .cql
            .fetch::<TokenRow>(&self.st.token_by_hash, (token_hash,))
            .await?
        else {
            return Ok(ConsumeOutcome::Unknown);
        };
        let spent = row.used_at.is_some();
        let token = RefreshTokenRecord::from(row);
        let Some(session) = self.load_session(token.session_id).await? else {
            return Ok(ConsumeOutcome::Dead);
        };
        if spent {
            // Reuse is reported even for a dead session: the caller revokes either way.
            return Ok(ConsumeOutcome::Reused { token, session });
        }
        if session.revoked_at.is_some() || token.expires_at <= now || session.expires_at <= now {
            return Ok(ConsumeOutcome::Dead);
        }
        // The read above may be stale; the conditional update is what decides.
        self.spend(token, session, now).await
    }

    async fn refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshTokenRecord>, StoreError> {
        Ok(self
            .cql
            .fetch::<TokenRow>(&self.st.token_by_hash, (token_hash,))
            .await?
            .map(RefreshTokenRecord::from))
    }
}

#[derive(DeserializeRow)]
struct UserRow {
    id: Uuid,
    username: String,
    display_name: String,
    password_hash: String,
    created_at: OffsetDateTime,
}

impl From<UserRow> for UserRecord {
    fn from(r: UserRow) -> Self {
        Self {
            id: r.id,
            username: r.username,
            display_name: r.display_name,
            password_hash: r.password_hash,
            created_at: r.created_at,
        }
    }
}

#[derive(DeserializeRow)]
struct SessionRow {
    id: Uuid,
    user_id: Uuid,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
}

impl From<SessionRow> for SessionRecord {
    fn from(r: SessionRow) -> Self {
        Self {
            id: r.id,
            user_id: r.user_id,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
        }
    }
}

#[derive(DeserializeRow)]
struct TokenRow {
    token_hash: String,
    session_id: Uuid,
    user_id: Uuid,
    issued_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    used_at: Option<OffsetDateTime>,
    consumed_by: Option<Uuid>,
}

impl From<TokenRow> for RefreshTokenRecord {
    fn from(r: TokenRow) -> Self {
        Self {
            token_hash: r.token_hash,
            session_id: r.session_id,
            user_id: r.user_id,
            issued_at: r.issued_at,
            expires_at: r.expires_at,
        }
    }
}

/// `USING TTL` seconds that keep a row until `keep` after `expires_at`, measured on this host's
/// clock (the caller's `now` may be synthetic). Rounded up, and kept within what CQL accepts: 0
/// would mean "never expire", so a row already past its time still gets 1.
fn ttl_secs(expires_at: OffsetDateTime, keep: Duration) -> i32 {
    ttl_between(OffsetDateTime::now_utc(), expires_at.checked_add(keep))
}

/// `until` is `None` when it lies beyond the calendar, which is beyond any TTL too.
fn ttl_between(now: OffsetDateTime, until: Option<OffsetDateTime>) -> i32 {
    let secs = until.map_or(MAX_TTL_SECS, |until| {
        let left = until - now;
        left.whole_seconds() + i64::from(left.subsec_nanoseconds() > 0)
    });
    i32::try_from(secs.clamp(1, MAX_TTL_SECS)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scylla_common::{LwtOutcome, keyspace_name, split_statements};
    use scylla::value::{CqlValue, Row};

    #[test]
    fn the_migration_splits_into_its_create_statements() {
        let statements = split_statements(MIGRATIONS[0].2);
        let tables: Vec<_> = statements
            .iter()
            .map(|s| {
                assert!(s.starts_with("CREATE TABLE IF NOT EXISTS "), "{s}");
                assert!(!s.contains("--") && !s.contains(';'), "{s}");
                s.split_whitespace().nth(5).unwrap_or_default()
            })
            .collect();
        assert_eq!(
            tables,
            ["users_by_username", "users", "sessions", "refresh_tokens"]
        );
    }

    #[test]
    fn keyspace_names_are_plain_identifiers() {
        assert_eq!(keyspace_name("Polylogue_1").unwrap(), "polylogue_1");
        for bad in ["", "1abc", "a-b", "a;DROP", "\"q\"", &"k".repeat(49)] {
            assert!(keyspace_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ttls_round_up_and_stay_in_range() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let max = i32::try_from(MAX_TTL_SECS).unwrap();
        assert_eq!(ttl_between(now, Some(now + Duration::seconds(10))), 10);
        assert_eq!(
            ttl_between(now, Some(now + Duration::milliseconds(10_001))),
            11
        );
        assert_eq!(ttl_between(now, Some(now - Duration::days(3))), 1);
        assert_eq!(ttl_between(now, Some(now)), 1);
        assert_eq!(ttl_between(now, Some(now + Duration::days(365 * 100))), max);
        assert_eq!(ttl_between(now, None), max);
        assert_eq!(
            ttl_secs(
                OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT),
                RETENTION
            ),
            max
        );
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn lwt_answers_are_read_by_column_name() {
        let id = Uuid::now_v7();
        let refused = LwtOutcome::parse(
            names(&["[applied]", "username", "user_id"]),
            Row {
                columns: vec![
                    Some(CqlValue::Boolean(false)),
                    Some(CqlValue::Text("bob".into())),
                    Some(CqlValue::Uuid(id)),
                ],
            },
        )
        .unwrap();
        assert!(!refused.applied);
        assert_eq!(refused.uuid("user_id").unwrap(), Some(id));
        assert_eq!(refused.uuid("absent").unwrap(), None);
        assert!(refused.timestamp("username").is_err());

        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123 * 1_000_000).unwrap();
        let revoked = LwtOutcome::parse(
            names(&["[applied]", "id", "revoked_at"]),
            Row {
                columns: vec![
                    Some(CqlValue::Boolean(false)),
                    Some(CqlValue::Uuid(id)),
                    Some(CqlValue::Timestamp(scylla::value::CqlTimestamp(
                        1_700_000_000_123,
                    ))),
                ],
            },
        )
        .unwrap();
        assert_eq!(revoked.timestamp("revoked_at").unwrap(), Some(at));

        // Cassandra answers a won transaction with [applied] alone.
        let won = LwtOutcome::parse(
            names(&["[applied]"]),
            Row {
                columns: vec![Some(CqlValue::Boolean(true))],
            },
        )
        .unwrap();
        assert!(won.applied);
        assert_eq!(won.timestamp("revoked_at").unwrap(), None);

        assert!(
            LwtOutcome::parse(
                names(&["x"]),
                Row {
                    columns: vec![None]
                }
            )
            .is_err()
        );
        assert!(
            LwtOutcome::parse(
                names(&["[applied]", "x"]),
                Row {
                    columns: vec![None]
                }
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_unavailable() {
        let config = ScyllaConfig {
            // Port 1 on loopback: refused at once, no waiting on a timeout.
            nodes: vec!["127.0.0.1:1".into()],
            keyspace: "polylogue".into(),
            replication_factor: 1,
            username: None,
            password: None,
        };
        match ScyllaAuthStore::connect(&config).await {
            Err(StoreError::Unavailable(_)) => {}
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("connected to nothing"),
        }
    }

    #[tokio::test]
    async fn bad_settings_are_refused_before_connecting() {
        let good = ScyllaConfig {
            nodes: vec!["127.0.0.1:1".into()],
            keyspace: "polylogue".into(),
            replication_factor: 1,
            username: None,
            password: None,
        };
        let cases = [
            ScyllaConfig {
                keyspace: "no-dashes".into(),
                ..good.clone()
            },
            ScyllaConfig {
                nodes: vec![],
                ..good.clone()
            },
            ScyllaConfig {
                replication_factor: 0,
                ..good.clone()
            },
            ScyllaConfig {
                username: Some("u".into()),
                ..good.clone()
            },
        ];
        for config in cases {
            assert!(matches!(
                ScyllaAuthStore::connect(&config).await,
                Err(StoreError::Unavailable(_))
            ));
        }
    }
}
