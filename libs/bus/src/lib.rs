//! Typed request/reply over NATS for Polylogue services.
//! Servers register endpoints through the async-nats service API (queue groups, `$SRV.PING/INFO/STATS`);
//! clients send JSON requests carrying the request id and trace context in headers; errors travel
//! back as the spec's `ApiError` and map to HTTP in one place (the edge).

mod client;
pub mod revocations;
mod server;

pub use client::{Bus, BusConnectError};
pub use server::{Handler, ServiceHost, handler};

use async_nats::HeaderMap;
use polylogue_contracts::headers;

/// Carried on every NATS message of one client request.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request_id: String,
    pub traceparent: Option<String>,
}

impl RequestContext {
    pub fn new(request_id: impl Into<String>) -> Self {
        Self {
            request_id: request_id.into(),
            traceparent: None,
        }
    }

    /// A context for work that did not start from a client request (CLI, background jobs).
    pub fn internal() -> Self {
        Self::new(format!("int_{}", uuid::Uuid::now_v7().simple()))
    }

    fn to_headers(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(headers::REQUEST_ID, self.request_id.as_str());
        if let Some(tp) = &self.traceparent {
            map.insert(headers::TRACEPARENT, tp.as_str());
        }
        map
    }

    fn from_headers(map: Option<&HeaderMap>) -> Self {
        let get = |name: &str| map.and_then(|m| m.get(name)).map(|v| v.as_str().to_owned());
        Self {
            request_id: get(headers::REQUEST_ID).unwrap_or_default(),
            traceparent: get(headers::TRACEPARENT),
        }
    }
}

/// Header with the JSON `ApiError` of a failed request (the service API's own error headers
/// carry only a status string and a number).
pub const ERROR_HEADER: &str = "Polylogue-Error";

/// The service name registered with the NATS service API: `<prefix>-<service>`, so that two
/// installations sharing a NATS cluster never answer each other's pings.
pub fn service_name(prefix: &str, service: &str) -> String {
    format!("{prefix}-{service}")
}
