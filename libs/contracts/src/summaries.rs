//! The summarizer's NATS messages: the manual summarize request (edge → summarizer), its reply
//! (the spec's response of `POST /api/threads/:threadId/models/:modelId/summarize`) and the body
//! of a dead letter.

use crate::threads::DomainEvent;
use serde::{Deserialize, Serialize};

/// Edge → summarizer: summarize the whole (thread, model) history now, for its owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummarizeRequest {
    pub user_id: String,
    pub thread_id: String,
    pub model_id: String,
}

/// Summarizer → edge: the summary now stored for the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummarizeReply {
    pub summary: String,
    /// Its length, counted with the token counter of the model that wrote it.
    pub tokens: u32,
    pub generated_at: String,
    /// The catalog id of the model that wrote it.
    pub model_used: String,
    /// Internal: the stored version and the newest message it covers (not shown by the edge).
    pub version: u64,
    pub covers_until: String,
}

/// What the summarizer publishes on `<prefix>.summarizer.dead` when a message event could not be
/// worked off within the configured deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The event as it was delivered.
    pub event: DomainEvent,
    /// The last failure (provider error code and message; never a key).
    pub reason: String,
    pub deliveries: u64,
    /// RFC 3339.
    pub at: String,
}
