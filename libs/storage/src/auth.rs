//! The auth service's port: users, sessions (refresh-token families) and refresh tokens.

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
}
