//! Health probe bodies exchanged over NATS.

use serde::{Deserialize, Serialize};

/// A service's view of its own dependencies (e.g. its database).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyHealth {
    /// `healthy` or `unhealthy`.
    pub status: String,
    /// Engine name, e.g. `sqlite` or `scylla`.
    pub provider: String,
    /// Round-trip of the probe in milliseconds.
    pub latency: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
