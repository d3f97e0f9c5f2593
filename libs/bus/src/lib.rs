//! Typed request/reply over NATS for Polylogue services.
//! Servers register endpoints through the async-nats service API (queue groups, `$SRV.PING/INFO/STATS`);
//! clients send JSON requests carrying the request id and trace context in headers; errors travel
//! back as the spec's `ApiError` and map to HTTP in one place (the edge).

pub mod audit;
mod client;
pub mod generations;
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
    /// Unix milliseconds after which the caller no longer waits for the answer. Set by the bus on
    /// every request; a service skips work whose caller has given up.
    pub deadline: Option<u64>,
}

impl RequestContext {
    pub fn new(request_id: impl Into<String>) -> Self {
        Self {
            request_id: request_id.into(),
            traceparent: None,
            deadline: None,
        }
    }

    /// Whether the caller has stopped waiting.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| unix_ms() > d)
    }

    /// A context for work that did not start from a client request (CLI, background jobs).
    pub fn internal() -> Self {
        Self::new(format!("int_{}", uuid::Uuid::now_v7().simple()))
    }

    /// Headers for a request that the caller waits `timeout` for; an inherited deadline that is
    /// sooner wins.
    fn to_headers(&self, timeout: std::time::Duration) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(headers::REQUEST_ID, self.request_id.as_str());
        let own = unix_ms().saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let deadline = self.deadline.map_or(own, |d| d.min(own));
        map.insert(DEADLINE_HEADER, deadline.to_string().as_str());
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
            deadline: get(DEADLINE_HEADER).and_then(|v| v.parse().ok()),
        }
    }
}

/// Unix milliseconds, now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// When the caller stops waiting, in unix milliseconds (clocks of one cluster agree closely
/// enough for a bound measured in seconds).
pub const DEADLINE_HEADER: &str = "Polylogue-Deadline";

/// Header with the JSON `ApiError` of a failed request (the service API's own error headers
/// carry only a status string and a number).
pub const ERROR_HEADER: &str = "Polylogue-Error";

/// The service name registered with the NATS service API: `<prefix>-<service>`, so that two
/// installations sharing a NATS cluster never answer each other's pings.
pub fn service_name(prefix: &str, service: &str) -> String {
    format!("{prefix}-{service}")
}
