//! Reading a generation's events off the tokens stream, for SSE clients and for non-streaming
//! replies. Each reader is an ordered JetStream consumer filtered to `<prefix>.tokens.<id>`,
//! starting at the beginning or after the client's `Last-Event-ID` (the stream sequence, which
//! is every event's SSE `id`), so any replica can resume any stream.
//!
//! A watchdog covers the cases where no more events will come: when the stream is idle for a
//! lease timeout, the generation's lease is checked; a dead router means an `error` event now
//! (a surviving router also stores `interrupted`); no lease and a finished stored message (its
//! events expired) means the stored message is replayed as events.

use crate::middleware::now_rfc3339;
use crate::state::EdgeState;
use async_nats::jetstream::consumer::{DeliverPolicy, push};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use polylogue_bus::RequestContext;
use polylogue_contracts::inference::{
    ErrorData, MessageCompleteData, MessageStartData, TokenData, event,
};
use polylogue_contracts::subjects::{inference as subjects, service, thread as verbs};
use polylogue_contracts::threads::{GetMessageRequest, MessageView};
use polylogue_contracts::{ApiError, ErrorCode};
use std::sync::Arc;
use std::time::Duration;

/// One event of a generation.
#[derive(Debug, Clone)]
pub struct GenEvent {
    /// Stream sequence (the SSE `id`); `None` for events the edge made up from stored state.
    pub seq: Option<u64>,
    pub event: String,
    pub data: Bytes,
}

impl GenEvent {
    fn made_up<T: serde::Serialize>(event: &str, data: &T) -> Self {
        Self {
            seq: None,
            event: event.to_owned(),
            data: serde_json::to_vec(data).unwrap_or_default().into(),
        }
    }
}

/// Whose generation it is, for the stored-message lookups of the watchdog.
#[derive(Debug, Clone)]
pub struct Owner {
    pub user_id: String,
    pub thread_id: String,
    pub model_id: String,
    pub message_id: String,
}

pub async fn stored_message(
    state: &EdgeState,
    ctx: &RequestContext,
    owner: &Owner,
) -> Result<MessageView, ApiError> {
    state
        .bus
        .request(
            service::THREAD,
            verbs::MESSAGES_GET,
            ctx,
            &GetMessageRequest {
                user_id: owner.user_id.clone(),
                thread_id: owner.thread_id.clone(),
                model_id: owner.model_id.clone(),
                message_id: owner.message_id.clone(),
            },
        )
        .await
}

fn terminal(status: &str) -> bool {
    matches!(status, "complete" | "error" | "cancelled" | "interrupted")
}

/// The events a finished stored message stands for, when its own events are gone.
fn from_stored(m: &MessageView) -> Vec<GenEvent> {
    let mut out = vec![GenEvent::made_up(
        event::MESSAGE_START,
        &MessageStartData {
            message_id: m.id.clone(),
            timestamp: m.created_at.clone(),
        },
    )];
    if !m.content.is_empty() {
        out.push(GenEvent::made_up(
            event::TOKEN,
            &TokenData {
                token: m.content.clone(),
                message_id: m.id.clone(),
            },
        ));
    }
    if m.status == "complete" {
        out.push(GenEvent::made_up(
            event::MESSAGE_COMPLETE,
            &MessageCompleteData {
                message_id: m.id.clone(),
                total_tokens: m.tokens.unwrap_or(0),
                timestamp: now_rfc3339(),
            },
        ));
    } else {
        let code = match m.status.as_str() {
            "cancelled" => ErrorCode::GenerationCancelled,
            "interrupted" => ErrorCode::GenerationInterrupted,
            _ => ErrorCode::ServiceUnavailable,
        };
        out.push(GenEvent::made_up(
            event::ERROR,
            &ErrorData {
                message_id: m.id.clone(),
                error: ApiError::new(code, format!("the generation ended {}", m.status))
                    .with_details(serde_json::json!({ "status": m.status })),
                timestamp: now_rfc3339(),
            },
        ));
    }
    out.push(GenEvent::made_up(event::CLOSE, &serde_json::json!({})));
    out
}

fn interrupted(message_id: &str) -> Vec<GenEvent> {
    vec![
        GenEvent::made_up(
            event::ERROR,
            &ErrorData {
                message_id: message_id.to_owned(),
                error: ApiError::new(
                    ErrorCode::GenerationInterrupted,
                    "the generation stopped: the router running it went away",
                )
                .with_details(serde_json::json!({ "status": "interrupted" })),
                timestamp: now_rfc3339(),
            },
        ),
        GenEvent::made_up(event::CLOSE, &serde_json::json!({})),
    ]
}

/// Whether the tokens stream still holds any event of this message.
pub async fn has_events(state: &EdgeState, message_id: &str) -> Result<bool, ApiError> {
    let stream = state.tokens_stream().await?;
    let subject = subjects::tokens_subject(state.bus.prefix(), message_id);
    Ok(stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .is_ok())
}

/// The events of a generation after `after` (a stream sequence), ending after `close`.
pub async fn events(
    state: Arc<EdgeState>,
    ctx: RequestContext,
    owner: Owner,
    after: Option<u64>,
) -> Result<impl Stream<Item = GenEvent> + Send + 'static, ApiError> {
    let stream = state.tokens_stream().await?;
    let subject = subjects::tokens_subject(state.bus.prefix(), &owner.message_id);
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: state.bus.client().new_inbox(),
            filter_subject: subject,
            deliver_policy: match after {
                Some(seq) => DeliverPolicy::ByStartSequence {
                    start_sequence: seq.saturating_add(1),
                },
                None => DeliverPolicy::All,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "tokens consumer not created");
            ApiError::new(
                ErrorCode::ServiceUnavailable,
                "the token stream is unavailable",
            )
        })?;
    let messages = consumer.messages().await.map_err(|e| {
        tracing::warn!(error = %e, "tokens consumer not started");
        ApiError::new(
            ErrorCode::ServiceUnavailable,
            "the token stream is unavailable",
        )
    })?;
    let idle = state.inference.lease_timeout + state.inference.heartbeat;
    Ok(async_stream(state, ctx, owner, messages, idle))
}

fn async_stream(
    state: Arc<EdgeState>,
    ctx: RequestContext,
    owner: Owner,
    messages: push::Ordered,
    idle: Duration,
) -> impl Stream<Item = GenEvent> + Send + 'static {
    struct S {
        state: Arc<EdgeState>,
        ctx: RequestContext,
        owner: Owner,
        messages: push::Ordered,
        idle: Duration,
        queued: std::collections::VecDeque<GenEvent>,
        done: bool,
        quiet_checks: u32,
    }
    let s = S {
        state,
        ctx,
        owner,
        messages,
        idle,
        queued: std::collections::VecDeque::new(),
        done: false,
        quiet_checks: 0,
    };
    futures::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(e) = s.queued.pop_front() {
                if e.event == event::CLOSE {
                    s.done = true;
                }
                return Some((e, s));
            }
            if s.done {
                return None;
            }
            match tokio::time::timeout(s.idle, s.messages.next()).await {
                Ok(Some(Ok(m))) => {
                    s.quiet_checks = 0;
                    let seq = m.info().map(|i| i.stream_sequence).ok();
                    let name = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(subjects::EVENT_HEADER))
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_else(|| event::TOKEN.to_owned());
                    s.queued.push_back(GenEvent {
                        seq,
                        event: name,
                        data: m.payload.clone(),
                    });
                }
                Ok(Some(Err(error))) => {
                    tracing::warn!(%error, "token stream read error");
                }
                Ok(None) => {
                    s.queued.extend(interrupted(&s.owner.message_id));
                }
                Err(_) => {
                    // Idle: is anyone still generating?
                    let lease = match &s.state.generations {
                        Some(kv) => {
                            polylogue_bus::generations::generation_alive(
                                kv,
                                &s.owner.message_id,
                                s.state.inference.lease_timeout,
                            )
                            .await
                        }
                        None => None,
                    };
                    match lease {
                        Some(true) => {}
                        Some(false) => s.queued.extend(interrupted(&s.owner.message_id)),
                        None => match stored_message(&s.state, &s.ctx, &s.owner).await {
                            Ok(m) if terminal(&m.status) => s.queued.extend(from_stored(&m)),
                            _ => {
                                s.quiet_checks += 1;
                                if s.quiet_checks >= 3 {
                                    s.queued.extend(interrupted(&s.owner.message_id));
                                }
                            }
                        },
                    }
                }
            }
        }
    })
}

/// For a message whose events may have expired: the stored message as events, when it is
/// finished and the stream no longer holds it.
pub async fn replay_if_expired(
    state: &EdgeState,
    ctx: &RequestContext,
    owner: &Owner,
) -> Result<Option<Vec<GenEvent>>, ApiError> {
    if has_events(state, &owner.message_id).await? {
        return Ok(None);
    }
    match stored_message(state, ctx, owner).await {
        Ok(m) if terminal(&m.status) => Ok(Some(from_stored(&m))),
        _ => Ok(None),
    }
}
