//! Wire contracts shared by every Polylogue service and by clients of the edge.
//! A leaf crate: serde types, NATS subject names and the error codes of the API spec —
//! no runtime, no I/O — so that every service can depend on it cheaply.

pub mod auth;
pub mod error;
pub mod health;
pub mod inference;
pub mod keys;
pub mod models;
pub mod profile;
pub mod secret;
pub mod subjects;
pub mod summaries;
pub mod threads;

pub use error::{ApiError, ErrorCode};
pub use secret::Secret;

/// Header names used on NATS messages and HTTP responses.
pub mod headers {
    /// Correlates one client request across the edge and every service it reaches.
    pub const REQUEST_ID: &str = "X-Request-Id";
    /// W3C trace context, carried on NATS messages unchanged.
    pub const TRACEPARENT: &str = "traceparent";
}
