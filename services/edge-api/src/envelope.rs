//! The spec's envelopes. Handlers return [`Reply`] or [`EdgeError`]; both only *describe* the body.
//! The outermost middleware (`middleware::envelope`) renders it with the request id and timestamp,
//! and wraps any other non-JSON error (axum's own 404/405/413, a caught panic) the same way, so
//! every response a client sees has the spec's shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use polylogue_contracts::{ApiError, ErrorCode};
use serde::Serialize;
use serde_json::Value;

/// What the envelope middleware renders.
#[derive(Clone, Debug)]
pub enum Body {
    Data {
        data: Value,
        pagination: Option<Value>,
    },
    Error(ApiError),
}

/// A success reply: status + `data`.
pub struct Reply {
    pub status: StatusCode,
    pub data: Value,
    pub pagination: Option<Value>,
    pub headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
}

impl Reply {
    pub fn ok(data: impl Serialize) -> Self {
        Self::with_status(StatusCode::OK, data)
    }

    pub fn with_status(status: StatusCode, data: impl Serialize) -> Self {
        Self {
            status,
            data: serde_json::to_value(data).unwrap_or(Value::Null),
            pagination: None,
            headers: Vec::new(),
        }
    }

    /// A list reply: `data` plus the envelope's top-level `pagination`.
    pub fn paged(data: impl Serialize, pagination: impl Serialize) -> Self {
        let mut reply = Self::ok(data);
        reply.pagination = serde_json::to_value(pagination).ok();
        reply
    }

    pub fn header(mut self, name: axum::http::HeaderName, value: axum::http::HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response.extensions_mut().insert(Body::Data {
            data: self.data,
            pagination: self.pagination,
        });
        response
    }
}

/// An error reply; `Set-Cookie` and other headers may ride along (e.g. clearing cookies).
#[derive(Debug)]
pub struct EdgeError {
    pub error: ApiError,
    pub headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
}

impl EdgeError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::new(code, message).into()
    }

    pub fn header(mut self, name: axum::http::HeaderName, value: axum::http::HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl From<ApiError> for EdgeError {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            headers: Vec::new(),
        }
    }
}

pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        let mut response = status_of(self.error.code).into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        // A service that says when to come back (429, or 503 while shedding load) gets the
        // standard header too.
        let retry_after = self
            .error
            .details
            .as_ref()
            .and_then(|d| d.get("retryAfter"))
            .and_then(serde_json::Value::as_u64);
        if let Some(secs) = retry_after
            && !response
                .headers()
                .contains_key(axum::http::header::RETRY_AFTER)
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response.extensions_mut().insert(Body::Error(self.error));
        response
    }
}

/// The error code used when wrapping a bare status that carries no `Body`.
pub fn code_for_status(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        400 => ErrorCode::ValidationError,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        409 => ErrorCode::Conflict,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        422 => ErrorCode::UnprocessableEntity,
        429 => ErrorCode::RateLimited,
        503 => ErrorCode::ServiceUnavailable,
        504 => ErrorCode::GatewayTimeout,
        _ => ErrorCode::InternalError,
    }
}

pub fn message_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "no such route",
        405 => "method not allowed on this route",
        413 => "the request body is too large",
        _ => status.canonical_reason().unwrap_or("error"),
    }
}
