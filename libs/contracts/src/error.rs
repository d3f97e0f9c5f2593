//! The error codes of the API spec and the one error body that travels over NATS and HTTP.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Every error the API can answer with. The string form is what clients see in `error.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    ValidationError,
    InvalidCredentials,
    Unauthorized,
    TokenReused,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnprocessableEntity,
    /// The model needs a provider key that neither the user nor the operator has (422).
    ApiKeyRequired,
    /// The provider rejected the key (422).
    InvalidApiKey,
    /// Even the newest message does not fit the model's context window (422).
    ContextTooLarge,
    /// A summary was asked for a history with no message it does not already cover (422).
    NothingToSummarize,
    /// The generation was cancelled by its owner (409; also an SSE `error` event).
    GenerationCancelled,
    /// The router that ran the generation stopped mid-stream (503; also an SSE `error` event).
    GenerationInterrupted,
    RateLimited,
    InternalError,
    ServiceUnavailable,
    GatewayTimeout,
}

impl ErrorCode {
    /// The HTTP status this code maps to: the single place where that mapping lives.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::ValidationError => 400,
            Self::InvalidCredentials | Self::Unauthorized | Self::TokenReused => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::UnprocessableEntity
            | Self::ApiKeyRequired
            | Self::InvalidApiKey
            | Self::ContextTooLarge
            | Self::NothingToSummarize => 422,
            Self::GenerationCancelled => 409,
            Self::GenerationInterrupted => 503,
            Self::RateLimited => 429,
            Self::InternalError => 500,
            Self::ServiceUnavailable => 503,
            Self::GatewayTimeout => 504,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ValidationError => "VALIDATION_ERROR",
            Self::InvalidCredentials => "INVALID_CREDENTIALS",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::TokenReused => "TOKEN_REUSED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Conflict => "CONFLICT",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::UnprocessableEntity => "UNPROCESSABLE_ENTITY",
            Self::ApiKeyRequired => "API_KEY_REQUIRED",
            Self::InvalidApiKey => "INVALID_API_KEY",
            Self::ContextTooLarge => "CONTEXT_TOO_LARGE",
            Self::NothingToSummarize => "NOTHING_TO_SUMMARIZE",
            Self::GenerationCancelled => "GENERATION_CANCELLED",
            Self::GenerationInterrupted => "GENERATION_INTERRUPTED",
            Self::RateLimited => "RATE_LIMITED",
            Self::InternalError => "INTERNAL_ERROR",
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Self::GatewayTimeout => "GATEWAY_TIMEOUT",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` object of the spec's error envelope; also the error body of a NATS reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// A validation error naming the offending field, as the spec's example shows.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(ErrorCode::ValidationError, message.clone())
            .with_details(serde_json::json!({ "field": field, "reason": message }))
    }

    pub fn internal() -> Self {
        Self::new(ErrorCode::InternalError, "internal error")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_the_spec_spells_them() {
        let json = serde_json::to_string(&ErrorCode::RateLimited).unwrap();
        assert_eq!(json, "\"RATE_LIMITED\"");
        assert_eq!(ErrorCode::RateLimited.as_str(), "RATE_LIMITED");
        let back: ErrorCode = serde_json::from_str("\"VALIDATION_ERROR\"").unwrap();
        assert_eq!(back, ErrorCode::ValidationError);
        assert_eq!(back.http_status(), 400);
    }

    #[test]
    fn as_str_agrees_with_serde_for_every_code() {
        for code in [
            ErrorCode::ValidationError,
            ErrorCode::InvalidCredentials,
            ErrorCode::Unauthorized,
            ErrorCode::TokenReused,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Conflict,
            ErrorCode::PayloadTooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::UnprocessableEntity,
            ErrorCode::ApiKeyRequired,
            ErrorCode::InvalidApiKey,
            ErrorCode::ContextTooLarge,
            ErrorCode::NothingToSummarize,
            ErrorCode::GenerationCancelled,
            ErrorCode::GenerationInterrupted,
            ErrorCode::RateLimited,
            ErrorCode::InternalError,
            ErrorCode::ServiceUnavailable,
            ErrorCode::GatewayTimeout,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
