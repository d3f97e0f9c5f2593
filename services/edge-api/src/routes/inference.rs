//! The model catalog and generations: `GET /api/models`, `POST .../messages` (JSON or SSE),
//! `GET .../messages/:messageId/stream` (resume/replay from `Last-Event-ID`) and
//! `POST .../messages/:messageId/cancel`.

use super::User;
use crate::envelope::{EdgeError, Reply};
use crate::json::ValidJson;
use crate::middleware::{RequestMeta, bus_context};
use crate::relay::{self, GenEvent, Owner};
use crate::state::EdgeState;
use axum::Extension;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use polylogue_bus::RequestContext;
use polylogue_contracts::inference::{
    CancelReply, ErrorData, SendMessageReply, SendMessageRequest, event,
};
use polylogue_contracts::subjects::{inference as subjects, service};
use polylogue_contracts::{ApiError, ErrorCode};
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SendBody {
    pub content: String,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub stream: bool,
    /// Extension: an upper bound on the reply's tokens (capped by the model's window).
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

fn not_found(what: &str) -> EdgeError {
    EdgeError::new(ErrorCode::NotFound, format!("{what} not found"))
}

pub async fn models(State(state): State<Arc<EdgeState>>, User(_user): User) -> Reply {
    Reply::ok(json!({ "models": state.catalog.models() }))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, EdgeError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = raw
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic()));
    match key {
        Some(k) => Ok(Some(k.to_owned())),
        None => Err(ApiError::new(
            ErrorCode::ValidationError,
            "Idempotency-Key must be 1-200 visible ASCII characters",
        )
        .with_details(
            json!({ "field": "Idempotency-Key", "expected": "1-200 visible ASCII characters" }),
        )
        .into()),
    }
}

fn sse_event(e: GenEvent) -> Event {
    let data = String::from_utf8_lossy(&e.data);
    let mut out = Event::default().event(e.event).data(data);
    if let Some(seq) = e.seq {
        out = out.id(seq.to_string());
    }
    out
}

fn sse<S>(state: &EdgeState, events: S) -> Response
where
    S: Stream<Item = GenEvent> + Send + 'static,
{
    let body = events.map(|e| Ok::<_, Infallible>(sse_event(e)));
    let mut response = Sse::new(body)
        .keep_alive(
            KeepAlive::new()
                .interval(state.inference.keepalive)
                .text("keep-alive"),
        )
        .into_response();
    let h = response.headers_mut();
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

pub async fn send(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
    ValidJson(body): ValidJson<SendBody>,
) -> Result<Response, EdgeError> {
    let Path((thread_id, model_id)) = path.map_err(|_| not_found("thread"))?;
    let idempotency_key = idempotency_key(&headers)?;
    let ctx = bus_context(&meta, &headers);
    let stream = body.stream;
    // A non-streaming message to a local model that is not loaded waits for the load in the
    // router (`inference.load_wait_secs`): give the request that long on top.
    let needs_loading = state
        .catalog
        .get(&model_id)
        .is_some_and(|m| m.requires_loading);
    let timeout = if needs_loading && !stream {
        state.inference.send_timeout_loading
    } else {
        state.inference.send_timeout
    };
    let sent: SendMessageReply = state
        .bus
        .request_with_timeout(
            service::INFERENCE,
            subjects::SEND,
            &ctx,
            &SendMessageRequest {
                user_id: user.sub.clone(),
                thread_id: thread_id.clone(),
                model_id: model_id.clone(),
                content: body.content,
                temperature: body.temperature,
                max_tokens: body.max_tokens,
                stream,
                idempotency_key,
            },
            timeout,
        )
        .await?;
    let owner = Owner {
        user_id: user.sub.clone(),
        thread_id,
        model_id,
        message_id: sent.assistant_message_id.clone(),
    };
    let replayed = if sent.replayed {
        relay::replay_if_expired(&state, &ctx, &owner).await?
    } else {
        None
    };
    if stream {
        let events = match replayed {
            Some(events) => futures::stream::iter(events).boxed(),
            None => relay::events(Arc::clone(&state), ctx, owner, None)
                .await?
                .boxed(),
        };
        return Ok(sse(&state, events));
    }
    let events = match replayed {
        Some(events) => futures::stream::iter(events).boxed(),
        None => relay::events(Arc::clone(&state), ctx.clone(), owner.clone(), None)
            .await?
            .boxed(),
    };
    let outcome = tokio::time::timeout(state.inference.reply_timeout, finished(events)).await;
    match outcome {
        Err(_) => Err(ApiError::new(
            ErrorCode::GatewayTimeout,
            "the reply is taking longer than this request may wait; it will be stored",
        )
        .with_details(json!({ "messageId": owner.message_id }))
        .into()),
        Ok(Err(error)) => Err(error.into()),
        Ok(Ok(())) => {
            let m = relay::stored_message(&state, &ctx, &owner).await?;
            Ok(Reply::ok(json!({
                "userMessage": {
                    "id": sent.user_message.id,
                    "content": sent.user_message.content,
                    "createdAt": sent.user_message.created_at,
                },
                "assistantMessage": {
                    "id": m.id,
                    "content": m.content,
                    "tokens": m.tokens,
                    "temperature": m.temperature,
                    "createdAt": m.created_at,
                },
            }))
            .into_response())
        }
    }
}

/// Waits for the end of a generation: `Ok` on `message_complete`, the event's error otherwise.
async fn finished<S>(mut events: S) -> Result<(), ApiError>
where
    S: Stream<Item = GenEvent> + Unpin,
{
    while let Some(e) = events.next().await {
        match e.event.as_str() {
            event::MESSAGE_COMPLETE => return Ok(()),
            event::ERROR => {
                return Err(serde_json::from_slice::<ErrorData>(&e.data)
                    .map(|d| d.error)
                    .unwrap_or_else(|_| {
                        ApiError::new(ErrorCode::ServiceUnavailable, "the generation failed")
                    }));
            }
            _ => {}
        }
    }
    Err(ApiError::new(
        ErrorCode::ServiceUnavailable,
        "the generation ended without a result",
    ))
}

/// The caller owns the message: it is stored in their (thread, model), or — before its first
/// token — its running generation's lease names them.
async fn check_owner(
    state: &EdgeState,
    ctx: &RequestContext,
    owner: &Owner,
) -> Result<(), EdgeError> {
    match relay::stored_message(state, ctx, owner).await {
        Ok(m) if m.role == "assistant" => Ok(()),
        Ok(_) => Err(not_found("message")),
        Err(e) if e.code == ErrorCode::NotFound => {
            let lease = match &state.generations {
                Some(kv) => kv
                    .get(polylogue_bus::generations::gen_key(&owner.message_id))
                    .await
                    .ok()
                    .flatten()
                    .and_then(|v| {
                        serde_json::from_slice::<polylogue_bus::generations::GenerationLease>(&v)
                            .ok()
                    }),
                None => None,
            };
            match lease {
                Some(l)
                    if l.user_id == owner.user_id
                        && l.thread_id == owner.thread_id
                        && l.model_id == owner.model_id =>
                {
                    Ok(())
                }
                _ => Err(not_found("message")),
            }
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn resume(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, EdgeError> {
    let Path((thread_id, model_id, message_id)) = path.map_err(|_| not_found("message"))?;
    let after = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    EdgeError::from(
                        ApiError::new(
                            ErrorCode::ValidationError,
                            "Last-Event-ID must be the id of an event of this stream",
                        )
                        .with_details(json!({ "field": "Last-Event-ID", "expected": "integer" })),
                    )
                })?,
        ),
    };
    let ctx = bus_context(&meta, &headers);
    let owner = Owner {
        user_id: user.sub.clone(),
        thread_id,
        model_id,
        message_id,
    };
    check_owner(&state, &ctx, &owner).await?;
    if after.is_none()
        && let Some(events) = relay::replay_if_expired(&state, &ctx, &owner).await?
    {
        return Ok(sse(&state, futures::stream::iter(events)));
    }
    let events = relay::events(Arc::clone(&state), ctx, owner, after).await?;
    Ok(sse(&state, events))
}

pub async fn cancel(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Reply, EdgeError> {
    let Path((thread_id, model_id, message_id)) = path.map_err(|_| not_found("message"))?;
    let ctx = bus_context(&meta, &headers);
    let owner = Owner {
        user_id: user.sub.clone(),
        thread_id,
        model_id,
        message_id,
    };
    check_owner(&state, &ctx, &owner).await?;
    let subject = subjects::cancel_subject(state.bus.prefix(), &owner.message_id);
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        state.bus.client().request(subject, bytes::Bytes::new()),
    )
    .await;
    if let Ok(Ok(m)) = answer
        && let Ok(reply) = serde_json::from_slice::<CancelReply>(&m.payload)
    {
        return Ok(Reply::ok(reply));
    }
    // Nothing running: say how it ended.
    let m = relay::stored_message(&state, &ctx, &owner).await?;
    if m.status == "cancelled" {
        return Ok(Reply::ok(CancelReply {
            message_id: m.id,
            status: m.status,
        }));
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        format!("the generation is not running; it ended {}", m.status),
    )
    .with_details(json!({ "messageId": m.id, "status": m.status }))
    .into())
}
