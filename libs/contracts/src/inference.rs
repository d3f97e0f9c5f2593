//! The inference router's NATS messages and the events of a generation (what SSE clients see).

use crate::error::ApiError;
use crate::threads::MessageView;
use serde::{Deserialize, Serialize};

/// Edge → router: send a user message to a model of a thread.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessageRequest {
    pub user_id: String,
    pub thread_id: String,
    pub model_id: String,
    pub content: String,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    pub stream: bool,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Router → edge, sent once the user message is stored and the generation has started.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessageReply {
    pub user_message: MessageView,
    /// Id the assistant message has (or will have, at its first token).
    pub assistant_message_id: String,
    /// `true` when the idempotency key was seen before: no new generation was started.
    pub replayed: bool,
}

/// Router → edge: the answer to a cancel request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelReply {
    pub message_id: String,
    pub status: String,
}

/// Names of generation events; they are the SSE `event:` names.
pub mod event {
    pub const MESSAGE_START: &str = "message_start";
    pub const TOKEN: &str = "token";
    pub const MESSAGE_COMPLETE: &str = "message_complete";
    pub const ERROR: &str = "error";
    pub const STATUS: &str = "status";
    pub const CLOSE: &str = "close";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStartData {
    pub message_id: String,
    pub timestamp: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenData {
    pub token: String,
    pub message_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageCompleteData {
    pub message_id: String,
    pub total_tokens: u32,
    pub timestamp: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorData {
    pub message_id: String,
    pub error: ApiError,
    pub timestamp: String,
}

/// `status` event: the model a streaming message waits for is loading (sent before
/// `message_start`'s first token; the last one says `loaded`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusData {
    pub message_id: String,
    pub model_id: String,
    /// `loading` or `loaded`.
    pub status: String,
    /// 0–100, never decreasing.
    pub load_progress: f64,
    /// What the load is doing (`downloading`, `loading`, …).
    pub phase: String,
    pub job_id: String,
    pub timestamp: String,
}
