//! Helpers shared by the provider handlers, and the `/_sim` inspection routes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use crate::directives::Directives;
use crate::reply::{Frames, Plan, TokenStream};
use crate::{State, anthropic, openai};

/// Shared state as an axum extractor.
pub(crate) type St = AxState<Arc<State>>;

/// What the request carried as its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Missing,
    Invalid,
    Valid,
}

impl Key {
    pub(crate) fn classify(key: Option<&str>) -> Self {
        match key.map(str::trim) {
            None | Some("") => Self::Missing,
            Some(k) if k.contains("invalid") => Self::Invalid,
            Some(_) => Self::Valid,
        }
    }

    pub(crate) fn present(self) -> bool {
        self != Self::Missing
    }
}

/// The value of a header as a string, if valid UTF-8.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The key of an `Authorization: Bearer KEY` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = header_str(headers, "authorization")?.trim();
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(key.trim())
}

/// Parses a JSON body; `Value::Null` when it is not JSON.
pub(crate) fn parse_body(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A process-unique number for response ids.
pub(crate) fn next_id(state: &State) -> u64 {
    state.ids.fetch_add(1, Ordering::Relaxed)
}

/// Sleeps unless `d` is zero.
pub(crate) async fn delay(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// Header delay for this request.
pub(crate) fn header_delay(state: &State, d: &Directives) -> Duration {
    d.header_delay.unwrap_or(state.config.header_delay)
}

/// An injected failure to answer with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failure {
    pub status: u16,
    pub retry_after: Option<u64>,
}

/// Evaluates `fail` / `fail_times` / `id` for this request.
pub(crate) fn injected_failure(state: &State, d: &Directives) -> Option<Failure> {
    let status = d.fail?;
    if let Some(times) = d.fail_times
        && !state.should_fail(d.id.as_deref().unwrap_or(""), times)
    {
        return None;
    }
    let retry_after = d.retry_after.or((status == 429).then_some(1));
    Some(Failure {
        status,
        retry_after,
    })
}

/// A JSON response with an explicit status.
pub(crate) fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

/// Adds `retry-after` when set.
pub(crate) fn with_retry_after(mut resp: Response, retry_after: Option<u64>) -> Response {
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Adds a header with a value known to be valid.
pub(crate) fn with_header(mut resp: Response, name: &'static str, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(HeaderName::from_static(name), v);
    }
    resp
}

/// A streaming 200 response.
pub(crate) fn stream_response<F: Frames>(
    frames: F,
    plan: Plan,
    content_type: &'static str,
) -> Response {
    let body = Body::from_stream(TokenStream::new(frames, plan));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// A 200 JSON body that is cut in half (for cut/malformed non-stream requests).
pub(crate) fn broken_json_response(body: &Value) -> Response {
    let mut bytes = crate::reply::json_bytes(body);
    bytes.truncate(bytes.len() / 2);
    let mut resp = Response::new(Body::from(bytes));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Appends the text of a message `content` (a string, or an array of blocks with `text`).
pub(crate) fn content_text(content: &Value, out: &mut String) {
    match content {
        Value::String(s) => out.push_str(s),
        Value::Array(parts) => {
            for part in parts {
                match part {
                    Value::String(s) => out.push_str(s),
                    Value::Object(obj) => {
                        if let Some(Value::String(t)) = obj.get("text") {
                            out.push_str(t);
                        } else if let Some(inner) = obj.get("content") {
                            content_text(inner, out);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// A non-negative integer field, if present.
pub(crate) fn u64_field(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// `GET /v1/models`: Anthropic format when Anthropic headers are present, else OpenAI.
pub(crate) async fn list_models_v1(state: St, headers: HeaderMap) -> Response {
    if headers.contains_key("x-api-key") || headers.contains_key("anthropic-version") {
        anthropic::list_models(state, headers).await
    } else {
        openai::list_models(state, headers).await
    }
}

/// `GET /_sim/requests`.
pub(crate) async fn get_requests(AxState(state): St) -> Response {
    Json(state.requests()).into_response()
}

/// `DELETE /_sim/requests`.
pub(crate) async fn delete_requests(AxState(state): St) -> StatusCode {
    state.clear();
    StatusCode::NO_CONTENT
}

/// `GET /_sim/health`.
pub(crate) async fn health() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Unknown routes.
pub(crate) async fn not_found() -> Response {
    json_response(
        404,
        &serde_json::json!({"error": {"message": "provider-sim: no such route", "type": "not_found", "code": 404}}),
    )
}
