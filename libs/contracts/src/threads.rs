//! Threads, messages and summaries: the public JSON shapes of the spec and the NATS messages of the
//! thread service. Every request names the user it acts for; the thread service enforces ownership.

use serde::{Deserialize, Serialize};

/// `lastMessage` of a thread in listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastMessageView {
    pub content: String,
    pub role: String,
    pub model: String,
    pub timestamp: String,
}

/// A thread as `GET /api/threads` and `POST /api/threads` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadView {
    pub id: String,
    pub title: String,
    pub created_at: String,
    pub updated_at: String,
    pub message_count: u64,
    pub active_models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<LastMessageView>,
    pub summary: Option<String>,
}

/// One model's history in `GET /api/threads/:threadId`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelHistoryView {
    pub message_count: u64,
    pub last_message_at: Option<String>,
    pub summary: Option<String>,
    pub summary_updated_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadDetail {
    pub id: String,
    pub title: String,
    pub created_at: String,
    pub updated_at: String,
    pub message_count: u64,
    pub models: std::collections::BTreeMap<String, ModelHistoryView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    pub cursor: Option<String>,
    pub limit: u32,
    pub has_more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_count: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadPage {
    pub threads: Vec<ThreadView>,
    pub pagination: Pagination,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenamedThread {
    pub id: String,
    pub title: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletedThread {
    pub deleted_thread: String,
    pub deleted_messages: u64,
}

/// A message as `GET .../messages` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    pub id: String,
    pub thread_id: String,
    pub model_id: String,
    pub role: String,
    pub content: String,
    pub tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    pub created_at: String,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    pub pagination: Pagination,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryView {
    pub version: u64,
    pub content: String,
    pub tokens: u32,
    /// Id of the newest message the summary covers.
    pub covers_until: String,
    pub model_used: String,
    pub generated_at: String,
}

// ---- NATS requests -------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateThreadRequest {
    pub user_id: String,
    pub title: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListThreadsRequest {
    pub user_id: String,
    pub limit: u32,
    pub cursor: Option<String>,
    pub q: Option<String>,
    /// `created_at` or `updated_at`.
    pub order_by: String,
    /// `asc` or `desc`.
    pub order: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadRef {
    pub user_id: String,
    pub thread_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenameThreadRequest {
    pub user_id: String,
    pub thread_id: String,
    pub title: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMessagesRequest {
    pub user_id: String,
    pub thread_id: String,
    pub model_id: String,
    pub limit: u32,
    pub cursor: Option<String>,
    pub order: String,
}

/// Internal: append to a (thread, model) history. A repeated `messageId` or `idempotencyKey`
/// returns the stored message and changes nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppendMessageRequest {
    pub user_id: String,
    pub thread_id: String,
    pub model_id: String,
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    pub role: String,
    pub content: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub context: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppendMessageReply {
    pub message: MessageView,
    pub duplicate: bool,
    /// The stored message's context receipt (for a duplicate: what the first append stored).
    #[serde(default)]
    pub context: Option<serde_json::Value>,
}

/// Internal: one message of a (thread, model) history, owner-checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetMessageRequest {
    pub user_id: String,
    pub thread_id: String,
    pub model_id: String,
    pub message_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateMessageRequest {
    pub user_id: String,
    pub thread_id: String,
    pub model_id: String,
    pub message_id: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub context: Option<serde_json::Value>,
}

/// Internal: what context assembly needs — the summary and the newest messages after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRequest {
    pub user_id: String,
    pub thread_id: String,
    pub model_id: String,
    pub limit: u32,
    /// `false` (context assembly): the newest `limit` messages after the covered range.
    /// `true` (the summarizer, which reads forward): the oldest `limit` messages after it, so
    /// that a long uncovered stretch is summarized from its start, without a gap.
    #[serde(default)]
    pub oldest_first: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryReply {
    pub summary: Option<SummaryView>,
    /// Oldest first; only messages after the summary's covered range.
    pub messages: Vec<MessageView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutSummaryRequest {
    pub user_id: String,
    pub thread_id: String,
    pub model_id: String,
    pub summary: SummaryView,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutSummaryReply {
    pub stored: bool,
    pub current_version: u64,
    /// When the stored summary was written (the thread service's clock, as `summaryUpdatedAt`
    /// shows it); `None` when nothing was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<String>,
}

/// A domain event on `<prefix>.events.<kind>`, de-duplicated by `Nats-Msg-Id` = `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainEvent {
    pub id: String,
    /// `thread.created`, `thread.renamed`, `thread.deleted`, `message.created`, `summary.updated`.
    pub kind: String,
    pub owner_id: String,
    pub thread_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub at: String,
}
