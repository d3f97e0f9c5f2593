//! The auth service's port: users (with their profile settings), sessions (refresh-token
//! families), refresh tokens and the users' sealed provider API keys.

pub mod scylla;
pub mod sqlite;

use crate::StoreError;
use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: Uuid,
    /// Normalised (trimmed, lower-case); unique.
    pub username: String,
    pub display_name: String,
    /// PHC string (argon2id).
    pub password_hash: String,
    pub created_at: OffsetDateTime,
    pub settings: ProfileSettings,
}

/// Profile settings; every field optional (unset = the installation's default applies).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProfileSettings {
    pub default_model: Option<String>,
    pub default_temperature: Option<f64>,
    pub system_prompt: Option<String>,
}

/// A partial profile update, applied atomically by the store: fields left `None` are not
/// touched, so concurrent patches of different fields all survive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfilePatch {
    pub display_name: Option<String>,
    /// `Some(None)` clears the setting.
    pub default_model: Option<Option<String>>,
    pub default_temperature: Option<Option<f64>>,
    pub system_prompt: Option<Option<String>>,
}

impl ProfilePatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.display_name.is_none()
            && self.default_model.is_none()
            && self.default_temperature.is_none()
            && self.system_prompt.is_none()
    }
}

/// A user's key for one provider, sealed. One per (user, provider).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    pub user_id: Uuid,
    /// `claude`, `openai` or `google`.
    pub provider: String,
    /// Stored as a signed 64-bit integer: versions above `i64::MAX` are refused.
    pub key_version: u64,
    /// The sealed key (JSON of `polylogue_contracts::keys::KeyEnvelope`); opaque here.
    pub envelope: String,
    /// Masked hint shown to the user, e.g. `…a1b2`.
    pub hint: String,
    pub created_at: OffsetDateTime,
    pub last_used: Option<OffsetDateTime>,
}

/// A login session: the family of refresh tokens issued from one login.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// Set when the session was logged out or its refresh token was reused.
    pub revoked_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RefreshTokenRecord {
    /// Hex SHA-256 of the token; the token itself is never stored.
    pub token_hash: String,
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// What happened when a refresh token was presented.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsumeOutcome {
    /// First use: the token is now spent and the session may be extended with a new token.
    Fresh {
        token: RefreshTokenRecord,
        session: SessionRecord,
    },
    /// The token had been spent before: the whole family must be revoked.
    Reused {
        token: RefreshTokenRecord,
        session: SessionRecord,
    },
    /// The token is expired or its session is revoked or gone.
    Dead,
    /// No such token.
    Unknown,
}

#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    /// Engine name for health reports (`sqlite`, `scylla`).
    fn provider(&self) -> &'static str;

    /// Cheap round trip to the engine.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts a user; `Conflict` when the username is taken (atomically, across replicas).
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;

    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;

    async fn user_by_id(&self, id: Uuid) -> Result<Option<UserRecord>, StoreError>;

    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError>;

    async fn session(&self, id: Uuid) -> Result<Option<SessionRecord>, StoreError>;

    /// Marks the session revoked (idempotent). Returns the session if it exists.
    async fn revoke_session(
        &self,
        id: Uuid,
        at: OffsetDateTime,
    ) -> Result<Option<SessionRecord>, StoreError>;

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> Result<(), StoreError>;

    /// Atomically spends a refresh token: exactly one concurrent caller gets `Fresh`, every
    /// other (and every later) caller gets `Reused`.
    async fn consume_refresh_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<ConsumeOutcome, StoreError>;

    /// Looks a refresh token up without spending it.
    async fn refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshTokenRecord>, StoreError>;

    /// Applies the patch; returns the updated user, `None` when there is no such user (and then
    /// writes nothing). An empty patch just returns the user.
    async fn update_profile(
        &self,
        user_id: Uuid,
        patch: &ProfilePatch,
    ) -> Result<Option<UserRecord>, StoreError>;

    /// Upserts by (user_id, provider): replaces envelope, version, hint and created_at, and sets
    /// last_used to the record's value.
    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    async fn api_key(
        &self,
        user_id: Uuid,
        provider: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// The user's keys, ordered by provider.
    async fn api_keys(&self, user_id: Uuid) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Deletes the key; returns whether one existed.
    async fn delete_api_key(&self, user_id: Uuid, provider: &str) -> Result<bool, StoreError>;

    /// Sets last_used to `at` when the stored key still has `key_version` and `at` is later than
    /// the stored last_used (never moves backwards, never creates a row). Returns whether it
    /// changed.
    async fn touch_api_key(
        &self,
        user_id: Uuid,
        provider: &str,
        key_version: u64,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Replaces the envelope only if the row still holds `key_version` and exactly
    /// `expected_envelope` (compare-and-set for the rewrap command, so a concurrent key update
    /// is never overwritten). Returns whether it replaced.
    async fn replace_envelope(
        &self,
        user_id: Uuid,
        provider: &str,
        key_version: u64,
        expected_envelope: &str,
        new_envelope: &str,
    ) -> Result<bool, StoreError>;

    /// One page of every stored key (all users) for the rewrap command, in an order that is
    /// stable for the adapter and keeps each user's keys together, by provider; `after` is the
    /// last (user_id, provider) of the previous page. A page shorter than `limit` is the last.
    async fn api_keys_page(
        &self,
        after: Option<(Uuid, String)>,
        limit: u32,
    ) -> Result<Vec<ApiKeyRecord>, StoreError>;
}
