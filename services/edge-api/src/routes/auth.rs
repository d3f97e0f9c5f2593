//! `POST /api/login`, `/api/logout`, `/api/register`, `/api/auth/refresh`: validation and cookies
//! here, the decisions in the auth service.

use crate::cookies;
use crate::envelope::{EdgeError, Reply};
use crate::json::ValidJson;
use crate::middleware::{Auth, RequestMeta, add_rate_headers, bus_context, now_unix};
use crate::state::EdgeState;
use axum::Extension;
use axum::extract::State;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use polylogue_contracts::auth::{
    LoginBody, LoginRequest, LogoutReply, LogoutRequest, RefreshRequest, RegisterBody,
    RegisterRequest, SessionReply, UserView,
};
use polylogue_contracts::subjects::{auth as verbs, service};
use polylogue_contracts::{ApiError, ErrorCode, Secret};
use serde_json::json;
use std::sync::Arc;

fn required(field: &str, value: &str) -> Result<(), EdgeError> {
    if value.trim().is_empty() {
        return Err(ApiError::validation(field, format!("{field} is required")).into());
    }
    Ok(())
}

fn session_reply(state: &EdgeState, reply: SessionReply, status: StatusCode) -> Reply {
    let (access_name, access_value) = state
        .cookies
        .access(reply.tokens.access_token.expose(), reply.tokens.expires_in);
    let (refresh_name, refresh_value) = state.cookies.refresh(
        reply.tokens.refresh_token.expose(),
        reply.tokens.refresh_expires_in,
    );
    Reply::with_status(
        status,
        json!({ "user": reply.user, "expiresIn": reply.tokens.expires_in }),
    )
    .header(access_name, access_value)
    .header(refresh_name, refresh_value)
}

pub async fn login(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<LoginBody>,
) -> Result<Reply, EdgeError> {
    required("username", &body.username)?;
    required("password", body.password.expose())?;
    let account = body.username.trim().to_lowercase();
    if let Some(decision) = state.limiter.account_allows_login(&account) {
        let retry_after = decision.reset.saturating_sub(now_unix()).max(1);
        let mut err = EdgeError::from(
            ApiError::new(
                ErrorCode::RateLimited,
                "too many failed logins for this account; try again later",
            )
            .with_details(json!({ "retryAfter": retry_after })),
        )
        .header(RETRY_AFTER, HeaderValue::from(retry_after));
        let mut h = HeaderMap::new();
        add_rate_headers(&mut h, &decision);
        for (name, value) in &h {
            err = err.header(name.clone(), value.clone());
        }
        return Err(err);
    }
    let request = LoginRequest {
        username: body.username,
        password: body.password,
        client_ip: Some(meta.client_ip.to_string()),
    };
    let ctx = bus_context(&meta, &headers);
    match state
        .bus
        .request::<_, SessionReply>(service::AUTH, verbs::LOGIN, &ctx, &request)
        .await
    {
        Ok(reply) => Ok(session_reply(&state, reply, StatusCode::OK)),
        Err(e) => {
            if e.code == ErrorCode::InvalidCredentials {
                state.limiter.record_failed_login(&account);
            }
            Err(e.into())
        }
    }
}

pub async fn register(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    ValidJson(body): ValidJson<RegisterBody>,
) -> Result<Reply, EdgeError> {
    required("username", &body.username)?;
    required("password", body.password.expose())?;
    let request = RegisterRequest {
        username: body.username,
        password: body.password,
        display_name: body.display_name,
    };
    let ctx = bus_context(&meta, &headers);
    let user: UserView = state
        .bus
        .request(service::AUTH, verbs::REGISTER, &ctx, &request)
        .await?;
    Ok(Reply::with_status(
        StatusCode::CREATED,
        json!({ "user": user }),
    ))
}

pub async fn refresh(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
) -> Result<Reply, EdgeError> {
    let clear = |e: EdgeError| {
        state
            .cookies
            .clear()
            .into_iter()
            .fold(e, |e, (name, value)| e.header(name, value))
    };
    let Some(token) = cookies::get(&headers, cookies::REFRESH) else {
        return Err(EdgeError::new(
            ErrorCode::Unauthorized,
            "no refresh token; log in again",
        ));
    };
    let request = RefreshRequest {
        refresh_token: Secret::new(token),
    };
    let ctx = bus_context(&meta, &headers);
    match state
        .bus
        .request::<_, SessionReply>(service::AUTH, verbs::REFRESH, &ctx, &request)
        .await
    {
        Ok(reply) => Ok(session_reply(&state, reply, StatusCode::OK)),
        Err(e) if matches!(e.code, ErrorCode::Unauthorized | ErrorCode::TokenReused) => {
            Err(clear(e.into()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Revokes the session server-side (both the access token's and the refresh token's), tells this
/// replica at once, and clears the cookies. Works without a valid session too (spec: optional auth).
pub async fn logout(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    Extension(auth): Extension<Auth>,
    headers: HeaderMap,
) -> Result<Reply, EdgeError> {
    let session_id = match &auth {
        Auth::Valid(claims) => Some(claims.sid.clone()),
        _ => None,
    };
    let refresh_token = cookies::get(&headers, cookies::REFRESH).map(Secret::new);
    let mut reply = Reply::ok(json!({ "message": "Successfully logged out" }));
    for (name, value) in state.cookies.clear() {
        reply = reply.header(name, value);
    }
    if session_id.is_none() && refresh_token.is_none() {
        return Ok(reply);
    }
    let ctx = bus_context(&meta, &headers);
    let request = LogoutRequest {
        session_id,
        refresh_token,
    };
    match state
        .bus
        .request::<_, LogoutReply>(service::AUTH, verbs::LOGOUT, &ctx, &request)
        .await
    {
        Ok(done) => {
            // Other replicas learn it from the KV watch; this one must not wait for that.
            for sid in done.revoked_sessions {
                state.revoked.insert(sid, std::time::Instant::now());
            }
            Ok(reply)
        }
        Err(e) => Err(state
            .cookies
            .clear()
            .into_iter()
            .fold(EdgeError::from(e), |e, (name, value)| e.header(name, value))),
    }
}
