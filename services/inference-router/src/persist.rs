//! Writes to the thread service for a running generation, retried with backoff: a reply that was
//! generated must not be lost because the thread service restarted for a moment.

use polylogue_bus::{Bus, RequestContext};
use polylogue_contracts::subjects::{service as names, thread as verbs};
use polylogue_contracts::threads::{
    AppendMessageReply, AppendMessageRequest, MessageView, UpdateMessageRequest,
};
use polylogue_contracts::{ApiError, ErrorCode};
use std::time::Duration;

const ATTEMPTS: u32 = 6;

/// The fields of an assistant message at one moment of its life.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub content: String,
    pub status: String,
    pub tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub context: Option<serde_json::Value>,
}

pub struct Target<'a> {
    pub bus: &'a Bus,
    pub ctx: &'a RequestContext,
    pub user_id: &'a str,
    pub thread_id: &'a str,
    pub model_id: &'a str,
    pub message_id: &'a str,
}

impl Target<'_> {
    pub async fn create(&self, reply: &Reply) -> Result<MessageView, ApiError> {
        let request = AppendMessageRequest {
            user_id: self.user_id.to_owned(),
            thread_id: self.thread_id.to_owned(),
            model_id: self.model_id.to_owned(),
            message_id: Some(self.message_id.to_owned()),
            idempotency_key: None,
            role: "assistant".into(),
            content: reply.content.clone(),
            status: Some(reply.status.clone()),
            tokens: reply.tokens,
            temperature: reply.temperature,
            context: reply.context.clone(),
        };
        retry(|| async {
            self.bus
                .request::<_, AppendMessageReply>(
                    names::THREAD,
                    verbs::MESSAGES_APPEND,
                    self.ctx,
                    &request,
                )
                .await
                .map(|r| r.message)
        })
        .await
    }

    pub async fn update(&self, reply: &Reply) -> Result<MessageView, ApiError> {
        let request = UpdateMessageRequest {
            user_id: self.user_id.to_owned(),
            thread_id: self.thread_id.to_owned(),
            model_id: self.model_id.to_owned(),
            message_id: self.message_id.to_owned(),
            content: Some(reply.content.clone()),
            status: Some(reply.status.clone()),
            tokens: reply.tokens,
            temperature: reply.temperature,
            context: reply.context.clone(),
        };
        retry(|| async {
            self.bus
                .request::<_, MessageView>(
                    names::THREAD,
                    verbs::MESSAGES_UPDATE,
                    self.ctx,
                    &request,
                )
                .await
        })
        .await
    }

    /// Updates the message, or creates it when it was never created (no first token).
    pub async fn upsert(&self, reply: &Reply, created: bool) -> Result<MessageView, ApiError> {
        if created {
            match self.update(reply).await {
                Err(e) if e.code == ErrorCode::NotFound => self.create(reply).await,
                other => other,
            }
        } else {
            self.create(reply).await
        }
    }
}

/// Retries errors that may pass (no responder, timeout, overload); a 4xx answer is final.
async fn retry<T, F, Fut>(mut f: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < ATTEMPTS && transient(&e) => {
                tracing::warn!(code = %e.code, attempt, "thread service write retry");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn transient(e: &ApiError) -> bool {
    matches!(
        e.code,
        ErrorCode::ServiceUnavailable | ErrorCode::GatewayTimeout | ErrorCode::InternalError
    )
}
