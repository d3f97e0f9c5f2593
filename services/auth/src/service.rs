//! Auth business logic on plain values: what login, registration, refresh and logout mean.
//! Handlers in `lib.rs` only decode and encode.

use crate::passwords::Passwords;
use async_nats::jetstream::kv;
use base64::Engine;
use polylogue_config::Settings;
use polylogue_contracts::auth::{
    AccessClaims, JWT_AUDIENCE, JWT_ISSUER, LoginRequest, LogoutReply, LogoutRequest,
    RefreshRequest, RegisterRequest, SessionReply, SessionTokens, UserGetRequest, UserView,
};
use polylogue_contracts::health::DependencyHealth;
use polylogue_contracts::{ApiError, ErrorCode, Secret};
use polylogue_storage::{
    AuthStore, ConsumeOutcome, RefreshTokenRecord, SessionRecord, StoreError, UserRecord, now_ms,
};
use polylogue_tokens::KeyRing;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 254;
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;
pub const DISPLAY_NAME_MAX: usize = 100;

pub struct AuthService {
    store: Arc<dyn AuthStore>,
    passwords: Passwords,
    keys: KeyRing,
    revoked: kv::Store,
    access_ttl: u64,
    refresh_ttl: u64,
    registration_enabled: bool,
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(_) => ApiError::new(ErrorCode::Conflict, "the username is taken"),
        StoreError::Unavailable(reason) | StoreError::Corrupt(reason) => {
            tracing::error!(%reason, "auth store failed");
            ApiError::new(
                ErrorCode::ServiceUnavailable,
                "the user store is unavailable",
            )
        }
    }
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidCredentials,
        "invalid username or password",
    )
}

/// Usernames compare case-insensitively and without surrounding blanks.
pub fn normalize_username(raw: &str) -> String {
    raw.trim().to_lowercase()
}

pub fn validate_username(name: &str) -> Result<(), ApiError> {
    let n = name.chars().count();
    if !(USERNAME_MIN..=USERNAME_MAX).contains(&n) {
        return Err(ApiError::validation(
            "username",
            format!("username must be {USERNAME_MIN}-{USERNAME_MAX} characters"),
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::validation(
            "username",
            "username cannot contain spaces or control characters",
        ));
    }
    Ok(())
}

/// 8–128 characters (not bytes); any character allowed; never truncated.
pub fn validate_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(ApiError::validation(
            "password",
            format!("password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters"),
        ));
    }
    Ok(())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn view(user: &UserRecord) -> UserView {
    UserView {
        id: user.id.to_string(),
        username: user.username.clone(),
        display_name: user.display_name.clone(),
        created_at: rfc3339(user.created_at),
    }
}

fn token_hash(token: &str) -> String {
    hex_lower(&Sha256::digest(token.as_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}

impl AuthService {
    pub fn new(
        settings: &Settings,
        store: Arc<dyn AuthStore>,
        revoked: kv::Store,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            store,
            passwords: Passwords::new(&settings.auth.argon2)?,
            keys: KeyRing::new(&settings.jwt).map_err(|_| ApiError::internal())?,
            revoked,
            access_ttl: settings.jwt.access_ttl_secs,
            refresh_ttl: settings.jwt.refresh_ttl_secs,
            registration_enabled: settings.registration_enabled(),
        })
    }

    pub async fn register(
        &self,
        req: RegisterRequest,
        admin: bool,
        deadline: Option<u64>,
    ) -> Result<UserView, ApiError> {
        if !admin && !self.registration_enabled {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "registration is closed on this installation; ask an operator for an account",
            ));
        }
        let username = normalize_username(&req.username);
        validate_username(&username)?;
        validate_password(req.password.expose())?;
        let display_name = match req.display_name.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => name.to_owned(),
            Some(_) => {
                return Err(ApiError::validation(
                    "displayName",
                    "displayName cannot be blank",
                ));
            }
            None => username.split('@').next().unwrap_or(&username).to_owned(),
        };
        if display_name.chars().count() > DISPLAY_NAME_MAX {
            return Err(ApiError::validation(
                "displayName",
                format!("displayName must be at most {DISPLAY_NAME_MAX} characters"),
            ));
        }
        // Cheap pre-check so a taken name does not cost a hash; the store's unique insert decides.
        if self
            .store
            .user_by_username(&username)
            .await
            .map_err(store_error)?
            .is_some()
        {
            return Err(ApiError::new(ErrorCode::Conflict, "the username is taken"));
        }
        let password_hash = self
            .passwords
            .hash(req.password.expose().to_owned(), deadline)
            .await?;
        let user = UserRecord {
            id: Uuid::now_v7(),
            username,
            display_name,
            password_hash,
            created_at: now_ms(),
            settings: polylogue_storage::ProfileSettings::default(),
        };
        self.store.create_user(&user).await.map_err(store_error)?;
        tracing::info!(user_id = %user.id, admin, "user created");
        metrics::counter!("polylogue_auth_users_created_total").increment(1);
        Ok(view(&user))
    }

    pub async fn login(
        &self,
        req: LoginRequest,
        deadline: Option<u64>,
    ) -> Result<SessionReply, ApiError> {
        let username = normalize_username(&req.username);
        if username.is_empty() || req.password.expose().is_empty() {
            return Err(invalid_credentials());
        }
        // Longer than any accepted password: refuse without hashing, same answer as a wrong one.
        if req.password.expose().chars().count() > PASSWORD_MAX {
            return Err(invalid_credentials());
        }
        let user = self
            .store
            .user_by_username(&username)
            .await
            .map_err(store_error)?;
        let ok = self
            .passwords
            .verify(
                req.password.expose().to_owned(),
                user.as_ref().map(|u| u.password_hash.clone()),
                deadline,
            )
            .await?;
        let user = match (ok, user) {
            (true, Some(user)) => user,
            _ => {
                metrics::counter!("polylogue_auth_logins_total", "outcome" => "refused")
                    .increment(1);
                tracing::info!(
                    client_ip = req.client_ip.as_deref().unwrap_or("-"),
                    "login refused"
                );
                return Err(invalid_credentials());
            }
        };
        let now = now_ms();
        let session = SessionRecord {
            id: Uuid::now_v7(),
            user_id: user.id,
            created_at: now,
            expires_at: now
                + time::Duration::seconds(i64::try_from(self.refresh_ttl).unwrap_or(i64::MAX)),
            revoked_at: None,
        };
        self.store
            .create_session(&session)
            .await
            .map_err(store_error)?;
        let tokens = self.issue(&user, &session).await?;
        metrics::counter!("polylogue_auth_logins_total", "outcome" => "ok").increment(1);
        tracing::info!(user_id = %user.id, session_id = %session.id, "login");
        Ok(SessionReply {
            user: view(&user),
            tokens,
        })
    }

    /// A new refresh token in the session's family plus a fresh access token.
    async fn issue(
        &self,
        user: &UserRecord,
        session: &SessionRecord,
    ) -> Result<SessionTokens, ApiError> {
        let now = now_ms();
        let refresh = new_refresh_token();
        let expires_at = session.expires_at;
        self.store
            .insert_refresh_token(&RefreshTokenRecord {
                token_hash: token_hash(&refresh),
                session_id: session.id,
                user_id: user.id,
                issued_at: now,
                expires_at,
            })
            .await
            .map_err(store_error)?;
        let iat = unix(now);
        let claims = AccessClaims {
            sub: user.id.to_string(),
            username: user.username.clone(),
            iat,
            exp: iat + self.access_ttl,
            scope: vec!["read".into(), "write".into()],
            aud: JWT_AUDIENCE.into(),
            iss: JWT_ISSUER.into(),
            jti: Uuid::new_v4().to_string(),
            sid: session.id.to_string(),
        };
        let access = self.keys.sign(&claims).map_err(|_| ApiError::internal())?;
        Ok(SessionTokens {
            access_token: Secret::new(access),
            expires_in: self.access_ttl,
            refresh_token: Secret::new(refresh),
            refresh_expires_in: u64::try_from((expires_at - now).whole_seconds()).unwrap_or(0),
        })
    }

    pub async fn refresh(&self, req: RefreshRequest) -> Result<SessionReply, ApiError> {
        let unauthorized = || {
            ApiError::new(
                ErrorCode::Unauthorized,
                "the session has ended; log in again",
            )
        };
        let hash = token_hash(req.refresh_token.expose());
        match self
            .store
            .consume_refresh_token(&hash, now_ms())
            .await
            .map_err(store_error)?
        {
            ConsumeOutcome::Fresh { token, session } => {
                let user = self
                    .store
                    .user_by_id(token.user_id)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(unauthorized)?;
                let tokens = self.issue(&user, &session).await?;
                metrics::counter!("polylogue_auth_refreshes_total", "outcome" => "ok").increment(1);
                Ok(SessionReply {
                    user: view(&user),
                    tokens,
                })
            }
            ConsumeOutcome::Reused { session, .. } => {
                // A spent token came back: someone holds a copy. End the whole family.
                self.revoke(session.id).await?;
                metrics::counter!("polylogue_auth_refreshes_total", "outcome" => "reused")
                    .increment(1);
                tracing::warn!(session_id = %session.id, user_id = %session.user_id, "refresh token reused; session revoked");
                Err(ApiError::new(
                    ErrorCode::TokenReused,
                    "this refresh token was already used; the session has been revoked",
                ))
            }
            ConsumeOutcome::Dead | ConsumeOutcome::Unknown => {
                metrics::counter!("polylogue_auth_refreshes_total", "outcome" => "refused")
                    .increment(1);
                Err(unauthorized())
            }
        }
    }

    pub async fn logout(&self, req: LogoutRequest) -> Result<LogoutReply, ApiError> {
        let mut sessions = Vec::new();
        if let Some(sid) = req
            .session_id
            .as_deref()
            .and_then(|s| Uuid::parse_str(s).ok())
        {
            sessions.push(sid);
        }
        if let Some(refresh) = &req.refresh_token
            && let Some(token) = self
                .store
                .refresh_token(&token_hash(refresh.expose()))
                .await
                .map_err(store_error)?
            && !sessions.contains(&token.session_id)
        {
            sessions.push(token.session_id);
        }
        let mut revoked = Vec::new();
        for sid in sessions {
            if self.revoke(sid).await? {
                revoked.push(sid.to_string());
            }
        }
        Ok(LogoutReply {
            revoked_sessions: revoked,
        })
    }

    /// Revokes a session in the store and announces it to every edge. Returns whether it existed.
    async fn revoke(&self, sid: Uuid) -> Result<bool, ApiError> {
        let existed = self
            .store
            .revoke_session(sid, now_ms())
            .await
            .map_err(store_error)?
            .is_some();
        if existed {
            self.revoked
                .put(sid.to_string(), rfc3339(OffsetDateTime::now_utc()).into())
                .await
                .map_err(|error| {
                    tracing::error!(%error, session_id = %sid, "revocation not published");
                    ApiError::new(
                        ErrorCode::ServiceUnavailable,
                        "the revocation could not be published",
                    )
                })?;
        }
        Ok(existed)
    }

    pub async fn user(&self, req: UserGetRequest) -> Result<UserView, ApiError> {
        let not_found = || ApiError::new(ErrorCode::NotFound, "no such user");
        let id = Uuid::parse_str(&req.user_id).map_err(|_| not_found())?;
        let user = self
            .store
            .user_by_id(id)
            .await
            .map_err(store_error)?
            .ok_or_else(not_found)?;
        Ok(view(&user))
    }

    pub async fn health(&self) -> DependencyHealth {
        let started = Instant::now();
        let result = self.store.ping().await;
        DependencyHealth {
            status: if result.is_ok() {
                "healthy"
            } else {
                "unhealthy"
            }
            .into(),
            provider: self.store.provider().into(),
            latency: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            error: result
                .err()
                .map(|_| "the user store did not answer".to_owned()),
        }
    }
}
