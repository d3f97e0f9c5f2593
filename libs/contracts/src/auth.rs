//! Auth requests and replies: the JSON bodies of the public routes and the NATS messages behind them.

use crate::Secret;
use serde::{Deserialize, Serialize};

/// Public view of a user, as `data.user` of the spec's login response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub display_name: String,
    /// RFC 3339.
    pub created_at: String,
}

/// `POST /api/login` body. Unknown fields are refused by the edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub username: String,
    pub password: Secret,
}

/// `POST /api/register` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegisterBody {
    pub username: String,
    pub password: Secret,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// NATS `auth.login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: Secret,
    /// Client address as seen by the edge, for audit logs.
    #[serde(default)]
    pub client_ip: Option<String>,
}

/// NATS `auth.register` and `auth.admin.user.create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub username: String,
    pub password: Secret,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// A freshly issued session: the access token (a JWT) and the opaque refresh token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionTokens {
    pub access_token: Secret,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub refresh_token: Secret,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
}

/// Reply of `auth.login` and `auth.refresh`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionReply {
    pub user: UserView,
    pub tokens: SessionTokens,
}

/// NATS `auth.refresh`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshRequest {
    pub refresh_token: Secret,
}

/// NATS `auth.logout`: revoke the session named by the access token (if still valid) and/or the
/// session the refresh token belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LogoutRequest {
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LogoutReply {
    /// Session ids that were revoked by this call (empty when there was nothing to revoke).
    pub revoked_sessions: Vec<String>,
}

/// NATS `auth.user.get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserGetRequest {
    pub user_id: String,
}

/// JWT claims of an access token: the spec's claims plus `aud`, `iss`, `jti` and the session id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    pub username: String,
    pub iat: u64,
    pub exp: u64,
    pub scope: Vec<String>,
    pub aud: String,
    pub iss: String,
    pub jti: String,
    /// Session (refresh-token family) id; revoking it revokes this token at every edge.
    pub sid: String,
}

/// JWT audience and issuer, fixed so that tokens of another system are refused.
pub const JWT_AUDIENCE: &str = "polylogue-api";
pub const JWT_ISSUER: &str = "polylogue-auth";
