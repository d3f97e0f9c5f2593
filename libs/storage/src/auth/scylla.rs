//! ScyllaDB adapter of the auth port (being written).

use super::{AuthStore, ConsumeOutcome, RefreshTokenRecord, SessionRecord, UserRecord};
use crate::StoreError;
use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

/// Connection settings for the ScyllaDB adapter.
#[derive(Clone)]
pub struct ScyllaConfig {
    /// `host:port` contact points.
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication_factor: u32,
    pub username: Option<String>,
    pub password: Option<String>,
}

pub struct ScyllaAuthStore;

impl ScyllaAuthStore {
    pub async fn connect(_config: &ScyllaConfig) -> Result<Self, StoreError> {
        Err(StoreError::Unavailable("scylla adapter not built yet".into()))
    }
}

#[async_trait]
impl AuthStore for ScyllaAuthStore {
    fn provider(&self) -> &'static str {
        "scylla"
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("scylla adapter not built yet".into()))
    }
    async fn create_user(&self, _user: &UserRecord) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("scylla adapter not built yet".into()))
    }
    async fn user_by_username(&self, _username: &str) -> Result<Option<UserRecord>, StoreError> {
        Err(StoreError::Unavailable("scylla adapter not built yet".into()))
    }
    async fn user_by_id(&self, _id: Uuid) -> Result<Option<UserRecord>, StoreError> {
        Err(StoreError::Unavailable("scylla adapter not built yet".into()))
    }
    async fn create_session(&self, _session: &SessionRecord) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("scylla adapter not built yet".into()))
    }
    async fn session(&self, _id: Uuid) -> Result<Option<SessionRecord>, StoreError> {
        Err(StoreError::Unavailable("scylla adapter not built yet".into()))
    }
    async fn revoke_session(
        &self,
        _id: Uuid,
        _at: OffsetDateTime,
    ) -> Result<Option<SessionRecord>, StoreError> {
        Err(StoreError::Unavailable("scylla adapter not built yet".into()))
    }
    async fn insert_refresh_token(&self, _token: &RefreshTokenRecord) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("scylla adapter not built yet".into()))
    }
    async fn consume_refresh_token(
        &self,
        _token_hash: &str,
        _now: OffsetDateTime,
    ) -> Result<ConsumeOutcome, StoreError> {
        Err(StoreError::Unavailable("scylla adapter not built yet".into()))
    }
    async fn refresh_token(
        &self,
        _token_hash: &str,
    ) -> Result<Option<RefreshTokenRecord>, StoreError> {
        Err(StoreError::Unavailable("scylla adapter not built yet".into()))
    }
}
