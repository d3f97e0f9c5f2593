//! ScyllaDB adapter of the auth port: the scale-out twin of the SQLite adapter, same contract.
//!
//! Uniqueness and single use rest on lightweight transactions at SERIAL; everything else reads
//! and writes at LOCAL_QUORUM. Schema and reasons: `migrations/scylla`, `docs/storage-scylla.md`.
//!
//! Rows that are ever conditionally updated are only ever written through lightweight
//! transactions (Scylla orders Paxos and plain writes to one row only by timestamp): `users`
//! (inserted `IF NOT EXISTS`, patched `IF EXISTS`), `sessions`, `refresh_tokens` and `api_keys`.

use super::{
    ApiKeyRecord, AuthStore, ConsumeOutcome, ProfilePatch, ProfileSettings, RefreshTokenRecord,
    SessionRecord, UserRecord,
};
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
const MIGRATIONS: &[Migration] = &[
    (
        1,
        "0001_auth",
        include_str!("../../migrations/scylla/0001_auth.cql"),
    ),
    (
        3,
        "0003_auth_profile_keys",
        include_str!("../../migrations/scylla/0003_auth_profile_keys.cql"),
    ),
];

/// Rounds of a read-then-CAS loop (or of put's insert-or-overwrite) before giving up.
const CAS_ROUNDS: usize = 16;

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
    user_by_id_serial: PreparedStatement,
    update_profile: PreparedStatement,
    insert_session: PreparedStatement,
    session_by_id: PreparedStatement,
    revoke_session: PreparedStatement,
    insert_token: PreparedStatement,
    token_by_hash: PreparedStatement,
    token_by_hash_serial: PreparedStatement,
    spend_token: PreparedStatement,
    insert_key: PreparedStatement,
    overwrite_key: PreparedStatement,
    key_by_provider: PreparedStatement,
    key_by_provider_serial: PreparedStatement,
    keys_by_user: PreparedStatement,
    delete_key: PreparedStatement,
    touch_key_later: PreparedStatement,
    touch_key_first: PreparedStatement,
    replace_envelope: PreparedStatement,
    keys_first_page: PreparedStatement,
    keys_rest_of_partition: PreparedStatement,
    keys_after_partition: PreparedStatement,
}

impl Statements {
    async fn prepare(cql: &Cql, ks: &str) -> Result<Self, StoreError> {
        let read = |stmt: String| cql.prepare(stmt, Mode::Read);
        let serial_read = |stmt: String| cql.prepare(stmt, Mode::SerialRead);
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
            // Conditional although the id is fresh: the row is later patched by conditional
            // updates (see the module comment).
            insert_user: lwt(format!(
                "INSERT INTO {ks}.users ({USER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            user_by_id: read(format!("SELECT {USER_COLS} FROM {ks}.users WHERE id = ?")).await?,
            user_by_id_serial: serial_read(format!(
                "SELECT {USER_COLS} FROM {ks}.users WHERE id = ?"
            ))
            .await?,
            // Unset values leave their columns alone, so this writes only the patched ones.
            // `IF EXISTS`: a plain UPDATE would create a partial row for an unknown id.
            update_profile: lwt(format!(
                "UPDATE {ks}.users SET display_name = ?, default_model = ?, \
                     default_temperature = ?, system_prompt = ? \
                 WHERE id = ? IF EXISTS"
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
            insert_key: lwt(format!(
                "INSERT INTO {ks}.api_keys ({KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            overwrite_key: lwt(format!(
                "UPDATE {ks}.api_keys \
                 SET key_version = ?, envelope = ?, hint = ?, created_at = ?, last_used = ? \
                 WHERE user_id = ? AND provider = ? IF EXISTS"
            ))
            .await?,
            key_by_provider: read(format!(
                "SELECT {KEY_COLS} FROM {ks}.api_keys WHERE user_id = ? AND provider = ?"
            ))
            .await?,
            key_by_provider_serial: serial_read(format!(
                "SELECT {KEY_COLS} FROM {ks}.api_keys WHERE user_id = ? AND provider = ?"
            ))
            .await?,
            keys_by_user: read(format!(
                "SELECT {KEY_COLS} FROM {ks}.api_keys WHERE user_id = ?"
            ))
            .await?,
            delete_key: lwt(format!(
                "DELETE FROM {ks}.api_keys WHERE user_id = ? AND provider = ? IF EXISTS"
            ))
            .await?,
            // In a condition, `last_used < ?` is false when last_used is null (Scylla's
            // `null_handling_style::lwt_nulls`, and Cassandra alike), hence a second statement
            // for a key never used.
            touch_key_later: lwt(format!(
                "UPDATE {ks}.api_keys SET last_used = ? WHERE user_id = ? AND provider = ? \
                 IF key_version = ? AND last_used < ?"
            ))
            .await?,
            touch_key_first: lwt(format!(
                "UPDATE {ks}.api_keys SET last_used = ? WHERE user_id = ? AND provider = ? \
                 IF key_version = ? AND last_used = null"
            ))
            .await?,
            replace_envelope: lwt(format!(
                "UPDATE {ks}.api_keys SET envelope = ? WHERE user_id = ? AND provider = ? \
                 IF key_version = ? AND envelope = ?"
            ))
            .await?,
            // The whole-table walk of `api_keys_page`, in (token(user_id), provider) order.
            keys_first_page: read(format!("SELECT {KEY_COLS} FROM {ks}.api_keys LIMIT ?")).await?,
            keys_rest_of_partition: read(format!(
                "SELECT {KEY_COLS} FROM {ks}.api_keys WHERE user_id = ? AND provider > ? LIMIT ?"
            ))
            .await?,
            keys_after_partition: read(format!(
                "SELECT {KEY_COLS} FROM {ks}.api_keys WHERE token(user_id) > token(?) LIMIT ?"
            ))
            .await?,
        })
    }
}

const TOKEN_COLS: &str =
    "token_hash, session_id, user_id, issued_at, expires_at, used_at, consumed_by";
const USER_COLS: &str = "id, username, display_name, password_hash, created_at, \
                         default_model, default_temperature, system_prompt";
const KEY_COLS: &str = "user_id, provider, key_version, envelope, hint, created_at, last_used";

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

    /// Writes the user row of a won claim: `Ok` once it is there (also when an earlier,
    /// timed-out attempt of ours landed).
    async fn insert_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let s = &user.settings;
        let values = (
            user.id,
            &user.username,
            &user.display_name,
            &user.password_hash,
            user.created_at,
            // Unset rather than null: a null would write a tombstone into every new user.
            MaybeUnset::from_option(s.default_model.as_deref()),
            MaybeUnset::from_option(s.default_temperature),
            MaybeUnset::from_option(s.system_prompt.as_deref()),
        );
        for _ in 0..LWT_ATTEMPTS {
            let existing = match self.cql.lwt(&self.st.insert_user, values).await? {
                Some(outcome) if outcome.applied => return Ok(()),
                Some(outcome) => outcome.text("username")?.map(str::to_owned),
                None => self
                    .cql
                    .fetch::<UserRow>(&self.st.user_by_id_serial, (user.id,))
                    .await?
                    .map(|row| row.username),
            };
            match existing {
                // A retry of our own earlier insert: the claim holds our id, so the name is ours.
                Some(name) if name == user.username => return Ok(()),
                Some(_) => {
                    return Err(StoreError::Conflict(format!(
                        "user {} already exists",
                        user.id
                    )));
                }
                // Our timed-out attempt did not land: try again.
                None => {}
            }
        }
        Err(StoreError::Unavailable(
            "writing the user kept timing out".into(),
        ))
    }

    async fn load_key(
        &self,
        stmt: &PreparedStatement,
        user_id: Uuid,
        provider: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.cql
            .fetch::<KeyRow>(stmt, (user_id, provider))
            .await?
            .map(ApiKeyRecord::try_from)
            .transpose()
    }

    async fn fetch_keys(
        &self,
        stmt: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.cql
            .fetch_all::<KeyRow>(stmt, values)
            .await?
            .into_iter()
            .map(ApiKeyRecord::try_from)
            .collect()
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
        self.insert_user(user).await
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

    async fn update_profile(
        &self,
        user_id: Uuid,
        patch: &ProfilePatch,
    ) -> Result<Option<UserRecord>, StoreError> {
        if patch.is_empty() {
            return self.user_by_id(user_id).await;
        }
        let values = (
            MaybeUnset::from_option(patch.display_name.as_deref()),
            MaybeUnset::from_option(patch.default_model.as_ref().map(Option::as_deref)),
            MaybeUnset::from_option(patch.default_temperature),
            MaybeUnset::from_option(patch.system_prompt.as_ref().map(Option::as_deref)),
            user_id,
        );
        let mut found = None;
        for _ in 0..LWT_ATTEMPTS {
            // On a timeout the update is simply run again: it writes the same values, and only
            // the patched columns.
            if let Some(outcome) = self.cql.lwt(&self.st.update_profile, values).await? {
                found = Some(outcome.applied);
                break;
            }
        }
        match found {
            None => Err(StoreError::Unavailable(
                "updating the profile kept timing out".into(),
            )),
            Some(false) => Ok(None),
            // The commit was learned at LOCAL_QUORUM, so this read sees it (and any patch that
            // landed since).
            Some(true) => self.user_by_id(user_id).await,
        }
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let version = stored_version(key.key_version)?;
        let insert = (
            key.user_id,
            &key.provider,
            version,
            &key.envelope,
            &key.hint,
            key.created_at,
            // Unset rather than null: no tombstone in a fresh row.
            MaybeUnset::from_option(key.last_used),
        );
        let overwrite = (
            version,
            &key.envelope,
            &key.hint,
            key.created_at,
            // Null clears the last use of the key this one replaces.
            key.last_used,
            key.user_id,
            &key.provider,
        );
        // An upsert made of two conditional writes, since every write to the row is Paxos: a
        // refused insert means the row exists, so it is overwritten; a refused overwrite means it
        // was deleted in between, so the insert is tried again. Both write the same values, so
        // a timed-out attempt is simply followed by the next.
        for _ in 0..CAS_ROUNDS {
            match self.cql.lwt(&self.st.insert_key, insert).await? {
                Some(outcome) if outcome.applied => return Ok(()),
                Some(_) => {}
                None => continue,
            }
            if let Some(outcome) = self.cql.lwt(&self.st.overwrite_key, overwrite).await?
                && outcome.applied
            {
                return Ok(());
            }
        }
        Err(lost("storing the API key"))
    }

    async fn api_key(
        &self,
        user_id: Uuid,
        provider: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.load_key(&self.st.key_by_provider, user_id, provider)
            .await
    }

    async fn api_keys(&self, user_id: Uuid) -> Result<Vec<ApiKeyRecord>, StoreError> {
        // One partition, in clustering (provider) order; at most one row per provider.
        self.fetch_keys(&self.st.keys_by_user, (user_id,)).await
    }

    async fn delete_api_key(&self, user_id: Uuid, provider: &str) -> Result<bool, StoreError> {
        for _ in 0..LWT_ATTEMPTS {
            match self
                .cql
                .lwt(&self.st.delete_key, (user_id, provider))
                .await?
            {
                Some(outcome) => return Ok(outcome.applied),
                None => {
                    // A timed-out delete that left the key gone is counted as ours: it existed
                    // when we asked, unless it vanished concurrently, which reads the same.
                    if self
                        .load_key(&self.st.key_by_provider_serial, user_id, provider)
                        .await?
                        .is_none()
                    {
                        return Ok(true);
                    }
                }
            }
        }
        Err(StoreError::Unavailable(
            "deleting the API key kept timing out".into(),
        ))
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
        // Set when an attempt's outcome is unknown: finding `at` stored afterwards means that
        // attempt (most likely ours) landed.
        let mut timed_out = false;
        for _ in 0..CAS_ROUNDS {
            let Some(outcome) = self
                .cql
                .lwt(
                    &self.st.touch_key_later,
                    (at, user_id, provider, version, at),
                )
                .await?
            else {
                timed_out = true;
                continue;
            };
            if outcome.applied {
                return Ok(true);
            }
            // A refused transaction answers with the condition's columns. No row, or another
            // version: nothing to touch (and nothing is created).
            if outcome.bigint("key_version")? != Some(version) {
                return Ok(false);
            }
            if let Some(stored) = outcome.timestamp("last_used")? {
                // Already at `at` or later: never move backwards.
                return Ok(timed_out && stored == at);
            }
            // Never used: `last_used < ?` cannot hold for null, so claim the first use.
            match self
                .cql
                .lwt(&self.st.touch_key_first, (at, user_id, provider, version))
                .await?
            {
                Some(outcome) if outcome.applied => return Ok(true),
                // Touched, replaced or deleted in between: look again.
                Some(_) => {}
                None => timed_out = true,
            }
        }
        Err(lost("touching the API key"))
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
        let values = (new_envelope, user_id, provider, version, expected_envelope);
        for _ in 0..LWT_ATTEMPTS {
            if let Some(outcome) = self.cql.lwt(&self.st.replace_envelope, values).await? {
                return Ok(outcome.applied);
            }
            // Outcome unknown: the row at SERIAL tells whether our replacement landed.
            match self
                .load_key(&self.st.key_by_provider_serial, user_id, provider)
                .await?
            {
                Some(key) if key.key_version == key_version && key.envelope == new_envelope => {
                    return Ok(true);
                }
                // Still the expected value: our attempt did not land; try again.
                Some(key)
                    if key.key_version == key_version && key.envelope == expected_envelope => {}
                _ => return Ok(false),
            }
        }
        Err(StoreError::Unavailable(
            "replacing the envelope kept timing out".into(),
        ))
    }

    /// Walks the table in its storage order, `(token(user_id), provider)`: the rest of the
    /// `after` user's partition (`provider > ?`, a clustering slice), then the following
    /// partitions (`token(user_id) > token(?)`, a range scan, which yields each partition's rows
    /// in clustering order). Both reads are bounded by `LIMIT`, unpaged. Two users whose ids
    /// share a 64-bit token would have the second skipped after a page ending in the first;
    /// with random ids the odds are about n²/2⁶⁵ for n users, which is accepted. Keys written
    /// during a walk may or may not be visited; none is visited twice.
    async fn api_keys_page(
        &self,
        after: Option<(Uuid, String)>,
        limit: u32,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some((user_id, provider)) = after else {
            return self
                .fetch_keys(&self.st.keys_first_page, (page_size(limit),))
                .await;
        };
        let mut page = self
            .fetch_keys(
                &self.st.keys_rest_of_partition,
                (user_id, &provider, page_size(limit)),
            )
            .await?;
        if page.len() < limit {
            let rest = self
                .fetch_keys(
                    &self.st.keys_after_partition,
                    (user_id, page_size(limit - page.len())),
                )
                .await?;
            page.extend(rest);
        }
        Ok(page)
    }
}

#[derive(DeserializeRow)]
struct UserRow {
    id: Uuid,
    username: String,
    display_name: String,
    password_hash: String,
    created_at: OffsetDateTime,
    default_model: Option<String>,
    default_temperature: Option<f64>,
    system_prompt: Option<String>,
}

impl From<UserRow> for UserRecord {
    fn from(r: UserRow) -> Self {
        Self {
            id: r.id,
            username: r.username,
            display_name: r.display_name,
            password_hash: r.password_hash,
            created_at: r.created_at,
            settings: ProfileSettings {
                default_model: r.default_model,
                default_temperature: r.default_temperature,
                system_prompt: r.system_prompt,
            },
        }
    }
}

#[derive(DeserializeRow)]
struct KeyRow {
    user_id: Uuid,
    provider: String,
    key_version: i64,
    envelope: String,
    hint: String,
    created_at: OffsetDateTime,
    last_used: Option<OffsetDateTime>,
}

impl TryFrom<KeyRow> for ApiKeyRecord {
    type Error = StoreError;

    fn try_from(r: KeyRow) -> Result<Self, StoreError> {
        Ok(Self {
            user_id: r.user_id,
            provider: r.provider,
            key_version: u64::try_from(r.key_version).map_err(|_| {
                StoreError::Corrupt(format!("negative key_version {}", r.key_version))
            })?,
            envelope: r.envelope,
            hint: r.hint,
            created_at: r.created_at,
            last_used: r.last_used,
        })
    }
}

/// `key_version` as stored (CQL `bigint`): an error, not a wrapped value, above `i64::MAX`.
fn stored_version(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| {
        StoreError::Corrupt(format!(
            "key_version {v} does not fit the store (at most {})",
            i64::MAX
        ))
    })
}

/// CQL `LIMIT` binds an `int`.
fn page_size(limit: usize) -> i32 {
    i32::try_from(limit).unwrap_or(i32::MAX)
}

fn lost(what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "{what} kept losing to concurrent writes or timing out"
    ))
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
    use crate::scylla_common::{LwtOutcome, added_column, keyspace_name, split_statements};
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
    fn the_profile_and_keys_migration_adds_one_column_per_alter() {
        assert_eq!(MIGRATIONS[1].0, 3);
        let statements = split_statements(MIGRATIONS[1].2);
        let added: Vec<_> = statements.iter().filter_map(|s| added_column(s)).collect();
        assert_eq!(
            added,
            [
                ("users".to_owned(), "default_model".to_owned()),
                ("users".to_owned(), "default_temperature".to_owned()),
                ("users".to_owned(), "system_prompt".to_owned()),
            ]
        );
        for s in &statements {
            assert!(!s.contains("--") && !s.contains(';'), "{s}");
            // Every statement is idempotent: the runner guards the ALTERs, DDL says IF NOT EXISTS.
            assert!(
                added_column(s).is_some() || s.starts_with("CREATE TABLE IF NOT EXISTS "),
                "{s}"
            );
        }
        assert_eq!(statements.len(), 4);
        assert!(statements[3].starts_with("CREATE TABLE IF NOT EXISTS api_keys "));
        assert!(statements[3].contains("PRIMARY KEY ((user_id), provider)"));
    }

    #[test]
    fn only_single_column_adds_are_guarded() {
        assert_eq!(
            added_column("ALTER TABLE Users ADD Default_Model text"),
            Some(("users".to_owned(), "default_model".to_owned()))
        );
        assert_eq!(
            added_column("alter table users\n    add x map<text, int>"),
            Some(("users".to_owned(), "x".to_owned()))
        );
        for other in [
            "ALTER TABLE users ADD (a text, b text)",
            "ALTER TABLE users ADD a",
            "ALTER TABLE ks.users ADD a text",
            "ALTER TABLE users ADD IF NOT EXISTS a text",
            "ALTER TABLE users DROP a",
            "ALTER TABLE users ADD \"A\" text",
            "CREATE TABLE IF NOT EXISTS t (a int PRIMARY KEY)",
        ] {
            assert_eq!(added_column(other), None, "{other}");
        }
    }

    /// Versions are unique across every store's files (stores share a keyspace's ledger), and
    /// each of ours is the number its file name starts with.
    #[test]
    fn migration_versions_are_unique_and_match_their_files() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/scylla");
        let mut versions: Vec<i32> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let name = entry.unwrap().file_name().into_string().unwrap();
                name.split('_').next().unwrap().parse().unwrap()
            })
            .collect();
        let files = versions.len();
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(versions.len(), files, "two migration files share a version");
        for (version, name, _) in MIGRATIONS {
            let prefix: i32 = name.split('_').next().unwrap().parse().unwrap();
            assert_eq!(prefix, *version, "{name}");
            assert!(versions.contains(version));
        }
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

        let touched = LwtOutcome::parse(
            names(&[
                "[applied]",
                "user_id",
                "provider",
                "key_version",
                "last_used",
            ]),
            Row {
                columns: vec![
                    Some(CqlValue::Boolean(false)),
                    Some(CqlValue::Uuid(id)),
                    Some(CqlValue::Text("claude".into())),
                    Some(CqlValue::BigInt(7)),
                    None,
                ],
            },
        )
        .unwrap();
        assert_eq!(touched.bigint("key_version").unwrap(), Some(7));
        assert_eq!(touched.text("provider").unwrap(), Some("claude"));
        assert_eq!(touched.timestamp("last_used").unwrap(), None);
        assert!(touched.bigint("provider").is_err());
        assert!(touched.text("key_version").is_err());

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
