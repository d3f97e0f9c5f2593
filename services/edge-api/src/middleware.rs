//! The edge's request pipeline, outermost first:
//! `envelope` (request id, envelope rendering) → `authenticate` (local JWT check) → `rate_limit`.

use crate::cookies;
use crate::envelope::{Body, code_for_status, message_for_status};
use crate::ratelimit::{Decision, Scope};
use crate::state::EdgeState;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use polylogue_contracts::auth::AccessClaims;
use polylogue_contracts::{ApiError, ErrorCode, headers};
use polylogue_tokens::TokenError;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Per-request facts the handlers read.
#[derive(Clone, Debug)]
pub struct RequestMeta {
    pub request_id: String,
    pub client_ip: IpAddr,
}

/// The outcome of the local token check.
#[derive(Clone, Debug)]
pub enum Auth {
    Anonymous,
    Valid(Arc<AccessClaims>),
    Invalid(&'static str),
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn acceptable_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn client_ip(state: &EdgeState, headers: &HeaderMap, peer: Option<SocketAddr>) -> IpAddr {
    if state.trust_forwarded_for
        && let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return ip;
    }
    peer.map(|p| p.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Assigns the request id, then renders whatever the inner layers answered as the spec's envelope.
pub async fn envelope(
    State(state): State<Arc<EdgeState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::now_v7().simple()));
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let ip = client_ip(&state, req.headers(), peer);
    req.extensions_mut().insert(RequestMeta {
        request_id: request_id.clone(),
        client_ip: ip,
    });
    let method = req.method().clone();
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, path = %req.uri().path());
    let mut response = tracing::Instrument::instrument(next.run(req), span).await;
    let status = response.status();
    let body = response.extensions_mut().remove::<Body>();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let rendered = match body {
        Some(Body::Data { data, pagination }) => {
            let mut doc = serde_json::json!({
                "success": true,
                "data": data,
                "timestamp": now_rfc3339(),
                "requestId": request_id,
            });
            if let Some(p) = pagination {
                doc["pagination"] = p;
            }
            Some(doc)
        }
        Some(Body::Error(error)) => Some(error_doc(&error, &request_id)),
        // A bare error status from axum itself (unmatched route, method, body limit, panic).
        None if (status.is_client_error() || status.is_server_error()) && !is_json => {
            let error = ApiError::new(code_for_status(status), message_for_status(status));
            Some(error_doc(&error, &request_id))
        }
        None => None,
    };
    if let Some(doc) = rendered {
        let (mut parts, _) = response.into_parts();
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        response = Response::from_parts(
            parts,
            axum::body::Body::from(serde_json::to_vec(&doc).unwrap_or_default()),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    metrics::histogram!("polylogue_http_request_seconds", "method" => method.to_string(), "status" => status.as_u16().to_string())
        .record(started.elapsed().as_secs_f64());
    if status.is_server_error() {
        tracing::warn!(request_id = %request_id, status = status.as_u16(), "request failed");
    }
    response
}

fn error_doc(error: &ApiError, request_id: &str) -> serde_json::Value {
    serde_json::json!({
        "success": false,
        "error": error,
        "timestamp": now_rfc3339(),
        "requestId": request_id,
    })
}

/// Verifies the access token (cookie, or `Authorization: Bearer`) locally and checks revocations.
pub async fn authenticate(
    State(state): State<Arc<EdgeState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = cookies::get(req.headers(), cookies::ACCESS)
        .map(str::to_owned)
        .or_else(|| {
            req.headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|v| v.trim().to_owned())
        });
    let auth = match token {
        None => Auth::Anonymous,
        Some(token) => match state.keys.verify(&token) {
            Ok(claims) if state.revoked.contains_key(&claims.sid) => {
                Auth::Invalid("the session has been logged out")
            }
            Ok(claims) => Auth::Valid(Arc::new(claims)),
            Err(TokenError::Expired) => Auth::Invalid("the access token has expired; refresh it"),
            Err(_) => Auth::Invalid("the access token is invalid"),
        },
    };
    req.extensions_mut().insert(auth);
    next.run(req).await
}

/// Applies the route's limit and adds `X-RateLimit-*` to every response.
pub async fn rate_limit(State(state): State<Arc<EdgeState>>, req: Request, next: Next) -> Response {
    let pattern = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let route = state
        .limiter
        .route(req.method().as_str(), pattern.as_deref());
    let ip = req
        .extensions()
        .get::<RequestMeta>()
        .map(|m| m.client_ip.to_string())
        .unwrap_or_default();
    let key = match (route.scope, req.extensions().get::<Auth>()) {
        (Scope::User, Some(Auth::Valid(claims))) => format!("user:{}", claims.sub),
        _ => format!("ip:{ip}"),
    };
    let Some(decision) = state.limiter.check(&route, &key) else {
        return next.run(req).await;
    };
    if !decision.allowed {
        let retry_after = decision.reset.saturating_sub(now_unix()).max(1);
        let error = ApiError::new(ErrorCode::RateLimited, "too many requests; slow down")
            .with_details(serde_json::json!({ "limit": decision.limit, "window": decision.window, "retryAfter": retry_after }));
        let mut response = crate::envelope::EdgeError::from(error).into_response();
        add_rate_headers(response.headers_mut(), &decision);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after));
        metrics::counter!("polylogue_http_rate_limited_total", "route" => route.name).increment(1);
        return response;
    }
    let mut response = next.run(req).await;
    if response.headers().contains_key("x-ratelimit-limit") {
        // An inner limit (per account) answered with its own headers; keep them. (A provider's
        // 429 passed through carries the provider's Retry-After and this route's headers.)
        return response;
    }
    add_rate_headers(response.headers_mut(), &decision);
    response
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn add_rate_headers(headers: &mut HeaderMap, d: &Decision) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(d.reset));
    headers.insert("x-ratelimit-window", HeaderValue::from(d.window));
}

/// The request id as a bus context, with the trace context passed through.
pub fn bus_context(meta: &RequestMeta, headers: &HeaderMap) -> polylogue_bus::RequestContext {
    polylogue_bus::RequestContext {
        request_id: meta.request_id.clone(),
        traceparent: headers
            .get(headers::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        deadline: None,
    }
}
