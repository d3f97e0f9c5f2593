//! One generation, from the provider call to the last event: tokens to the tokens stream, the
//! assistant message created at the first token (`streaming`), checkpointed while it streams,
//! and ended `complete`, `error` or `cancelled`. Cancel requests arrive on
//! `<prefix>.inference.cancel.<messageId>` while it runs.

use crate::Router;
use crate::assembly::ContextReceipt;
use crate::events::EventWriter;
use crate::persist::{Reply, Target};
use async_nats::Subscriber;
use futures::StreamExt;
use polylogue_bus::RequestContext;
use polylogue_bus::generations::GenerationLease;
use polylogue_contracts::inference::{
    CancelReply, ErrorData, MessageCompleteData, MessageStartData, StatusData, TokenData, event,
};
use polylogue_contracts::models::{LoadJob, job};
use polylogue_contracts::subjects::inference as subjects;
use polylogue_contracts::{ApiError, ErrorCode};
use polylogue_providers::tokens::TokenCounter;
use polylogue_providers::{
    CompletionRequest, Provider, ProviderError, ProviderKind, StreamEvent, Usage,
};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

pub struct Job {
    pub message_id: String,
    pub user_id: String,
    pub thread_id: String,
    pub model_id: String,
    pub provider: Arc<dyn Provider>,
    pub key: Option<SecretString>,
    pub request: CompletionRequest,
    pub receipt: ContextReceipt,
    pub temperature: f64,
    pub counter: TokenCounter,
    pub request_id: String,
    /// The load job of the model, when it was not loaded yet: waited for (with `status`
    /// events) before the provider is called.
    pub load: Option<String>,
}

pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

pub fn spawn(router: Arc<Router>, job: Job, permit: OwnedSemaphorePermit) {
    let id = job.message_id.clone();
    let r = Arc::clone(&router);
    let handle = router.tasks.spawn(async move {
        let id = job.message_id.clone();
        run(&r, job).await;
        r.running.remove(&id);
        drop(permit);
    });
    router.running.insert(id, handle.abort_handle());
}

enum End {
    Complete { finish_reason: Option<String> },
    Failed(ApiError),
    Cancelled(Option<async_nats::Message>),
}

async fn next_cancel(sub: &mut Option<Subscriber>) -> Option<async_nats::Message> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

fn provider_error(kind: ProviderKind, e: &ProviderError) -> ApiError {
    let mut api = e.to_api_error(kind);
    if matches!(e, ProviderError::InvalidKey { .. }) {
        api.code = ErrorCode::InvalidApiKey;
    }
    api
}

async fn run(router: &Router, job: Job) {
    let started = Instant::now();
    let prefix = router.bus.prefix().to_owned();
    let ctx = RequestContext::new(job.request_id.clone());
    let target = Target {
        bus: &router.bus,
        ctx: &ctx,
        user_id: &job.user_id,
        thread_id: &job.thread_id,
        model_id: &job.model_id,
        message_id: &job.message_id,
    };
    let mut writer = EventWriter::new(router.js.clone(), &prefix, &job.message_id);
    let lease = GenerationLease {
        router_id: router.leases.router_id.clone(),
        user_id: job.user_id.clone(),
        thread_id: job.thread_id.clone(),
        model_id: job.model_id.clone(),
        started_at: polylogue_bus::unix_ms(),
        claimed_by: None,
    };
    if let Err(error) = router.leases.acquire(&job.message_id, &lease).await {
        tracing::warn!(%error, message_id = %job.message_id, "lease not stored; an interruption would go unnoticed");
    }
    let mut cancel = match router
        .bus
        .client()
        .subscribe(subjects::cancel_subject(&prefix, &job.message_id))
        .await
    {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::warn!(%error, "cancel subscription failed");
            None
        }
    };
    writer
        .send(
            event::MESSAGE_START,
            &MessageStartData {
                message_id: job.message_id.clone(),
                timestamp: now_rfc3339(),
            },
        )
        .await;

    let kind = job.provider.kind();
    let mut content = String::new();
    let mut usage = Usage::default();
    let mut created = false;
    let mut attempts = 0;
    let mut first_token_at = None;
    // A model being loaded: its progress as `status` events, then the call (or the failure).
    let mut loaded = None;
    if let Some(job_id) = &job.load {
        let limit = Duration::from_secs(router.settings.load_timeout_secs);
        let status = |state: &str, progress: f64, phase: &str| StatusData {
            message_id: job.message_id.clone(),
            model_id: job.model_id.clone(),
            status: state.into(),
            load_progress: progress,
            phase: phase.into(),
            job_id: job_id.clone(),
            timestamp: now_rfc3339(),
        };
        let deadline = tokio::time::Instant::now() + limit;
        let failed = |state: Option<&LoadJob>| match state {
            Some(state) if job::is_terminal(&state.status) => {
                End::Failed(crate::loading::load_failed(&job.model_id, state))
            }
            _ => End::Failed(ApiError::new(
                ErrorCode::GatewayTimeout,
                format!(
                    "model {} did not finish loading within {} s",
                    job.model_id,
                    limit.as_secs()
                ),
            )),
        };
        let lost = || {
            End::Failed(ApiError::new(
                ErrorCode::ServiceUnavailable,
                format!(
                    "the load job of model {} could not be followed (no ollama-loader state for it)",
                    job.model_id
                ),
            ))
        };
        let waited = match crate::loading::follow(&router.loads, job_id).await {
            None => Some(lost()),
            Some(mut states) => loop {
                tokio::select! {
                    biased;
                    req = next_cancel(&mut cancel) => break Some(End::Cancelled(req)),
                    () = tokio::time::sleep_until(deadline) => break Some(failed(None)),
                    state = states.next() => match state {
                        None => break Some(lost()),
                        Some(state) if state.status == job::COMPLETE => break None,
                        Some(state) if job::is_terminal(&state.status) => break Some(failed(Some(&state))),
                        Some(state) => {
                            writer
                                .send(event::STATUS, &status("loading", state.progress, &state.phase))
                                .await;
                        }
                    }
                }
            },
        };
        if waited.is_none() {
            writer
                .send(event::STATUS, &status("loaded", 100.0, "ready"))
                .await;
        }
        loaded = waited;
    }
    let connect = polylogue_providers::stream_with_retry(
        job.provider.as_ref(),
        job.key.as_ref(),
        &job.request,
        &router.retry,
    );
    let end = if let Some(end) = loaded {
        end
    } else {
        tokio::select! {
            biased;
            req = next_cancel(&mut cancel) => End::Cancelled(req),
            result = connect => match result {
                Err(e) => End::Failed(provider_error(kind, &e)),
                Ok((mut stream, n)) => {
                    attempts = n;
                    let checkpoint = Duration::from_millis(router.settings.checkpoint_ms);
                    let mut last_checkpoint = Instant::now();
                    loop {
                        tokio::select! {
                            biased;
                            req = next_cancel(&mut cancel) => break End::Cancelled(req),
                            item = stream.next() => match item {
                                Some(Ok(StreamEvent::Token(t))) => {
                                    content.push_str(&t);
                                    if !created {
                                        first_token_at = Some(started.elapsed());
                                        let reply = Reply {
                                            content: content.clone(),
                                            status: "streaming".into(),
                                            temperature: Some(job.temperature),
                                            ..Reply::default()
                                        };
                                        match target.create(&reply).await {
                                            Ok(_) => created = true,
                                            Err(error) => tracing::warn!(code = %error.code, message_id = %job.message_id, "assistant message not created at first token"),
                                        }
                                        last_checkpoint = Instant::now();
                                    }
                                    writer.send(event::TOKEN, &TokenData { token: t, message_id: job.message_id.clone() }).await;
                                    if created && last_checkpoint.elapsed() >= checkpoint {
                                        last_checkpoint = Instant::now();
                                        let reply = Reply { content: content.clone(), status: "streaming".into(), ..Reply::default() };
                                        if let Err(error) = target.update(&reply).await {
                                            tracing::warn!(code = %error.code, "checkpoint failed");
                                        }
                                    }
                                }
                                Some(Ok(StreamEvent::Usage(u))) => {
                                    usage.input_tokens = u.input_tokens.or(usage.input_tokens);
                                    usage.output_tokens = u.output_tokens.or(usage.output_tokens);
                                }
                                Some(Ok(StreamEvent::Done { finish_reason })) => break End::Complete { finish_reason },
                                Some(Err(e)) => break End::Failed(provider_error(kind, &e)),
                                None => break End::Complete { finish_reason: None },
                            }
                        }
                    }
                }
            }
        }
    };
    // Dropping the provider stream here aborts its HTTP request (cancel) or releases it.
    drop(cancel.take());

    let estimated_output = job.counter.count_text(&content);
    let tokens = usage.output_tokens.unwrap_or(estimated_output);
    let mut receipt = serde_json::to_value(&job.receipt).unwrap_or_default();
    if let Some(obj) = receipt.as_object_mut() {
        obj.insert(
            "usage".into(),
            serde_json::json!({
                "inputTokens": usage.input_tokens,
                "outputTokens": usage.output_tokens,
                "estimatedOutputTokens": estimated_output,
            }),
        );
        obj.insert("attempts".into(), attempts.into());
        obj.insert("provider".into(), kind.as_str().into());
    }
    if let (Some(reported), total) = (usage.input_tokens, job.receipt.tokens.total)
        && reported > 0
    {
        // How far the counter is from the provider's own count (>1 = we overestimate).
        metrics::histogram!("polylogue_token_estimate_ratio", "provider" => kind.as_str())
            .record(f64::from(total) / f64::from(reported));
    }
    let (status, outcome) = match &end {
        End::Complete { finish_reason } => {
            if let Some(obj) = receipt.as_object_mut() {
                obj.insert("finishReason".into(), finish_reason.clone().into());
            }
            ("complete", "complete")
        }
        End::Failed(e) => {
            if let Some(obj) = receipt.as_object_mut() {
                obj.insert(
                    "error".into(),
                    serde_json::json!({"code": e.code, "message": e.message}),
                );
            }
            ("error", e.code.as_str())
        }
        End::Cancelled(_) => ("cancelled", "cancelled"),
    };
    let reply = Reply {
        content: content.clone(),
        status: status.into(),
        tokens: Some(tokens),
        temperature: Some(job.temperature),
        context: Some(receipt),
    };
    if let Err(error) = target.upsert(&reply, created).await {
        metrics::counter!("polylogue_replies_unsaved_total").increment(1);
        tracing::error!(code = %error.code, message_id = %job.message_id, "assistant message could not be stored");
    }
    match &end {
        End::Complete { .. } => {
            writer
                .finish(
                    event::MESSAGE_COMPLETE,
                    &MessageCompleteData {
                        message_id: job.message_id.clone(),
                        total_tokens: tokens,
                        timestamp: now_rfc3339(),
                    },
                )
                .await;
        }
        End::Failed(e) => {
            writer
                .finish(
                    event::ERROR,
                    &ErrorData {
                        message_id: job.message_id.clone(),
                        error: e.clone(),
                        timestamp: now_rfc3339(),
                    },
                )
                .await;
        }
        End::Cancelled(_) => {
            writer
                .finish(
                    event::ERROR,
                    &ErrorData {
                        message_id: job.message_id.clone(),
                        error: ApiError::new(
                            ErrorCode::GenerationCancelled,
                            "the generation was cancelled",
                        )
                        .with_details(serde_json::json!({ "status": "cancelled" })),
                        timestamp: now_rfc3339(),
                    },
                )
                .await;
        }
    }
    router.leases.release(&job.message_id).await;
    if let End::Cancelled(Some(request)) = &end
        && let Some(reply_to) = &request.reply
    {
        let body = serde_json::to_vec(&CancelReply {
            message_id: job.message_id.clone(),
            status: "cancelled".into(),
        })
        .unwrap_or_default();
        if let Err(error) = router
            .bus
            .client()
            .publish(reply_to.clone(), body.into())
            .await
        {
            tracing::warn!(%error, "cancel reply not sent");
        }
    }
    metrics::counter!("polylogue_generations_finished_total", "model" => job.model_id.clone(), "outcome" => outcome.to_owned()).increment(1);
    if let Some(ttft) = first_token_at {
        metrics::histogram!("polylogue_generation_first_token_seconds", "model" => job.model_id.clone())
            .record(ttft.as_secs_f64());
    }
    tracing::info!(
        message_id = %job.message_id,
        model = %job.model_id,
        outcome,
        attempts,
        tokens,
        lost_events = writer.lost(),
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "generation ended"
    );
}

/// Heartbeat, and the sweep that ends dead routers' generations `interrupted`.
pub async fn keep_leases(router: Arc<Router>, stop: CancellationToken) {
    let beat = Duration::from_millis(router.settings.heartbeat_ms);
    let timeout = Duration::from_millis(router.settings.lease_timeout_ms);
    let mut tick = tokio::time::interval(beat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = router.leases.heartbeat().await {
            tracing::warn!(%error, "heartbeat failed");
        }
        for (message_id, lease) in router.leases.claim_orphans(timeout).await {
            interrupt(&router, &message_id, &lease).await;
        }
    }
}

async fn interrupt(router: &Router, message_id: &str, lease: &GenerationLease) {
    let ctx = RequestContext::internal();
    let target = Target {
        bus: &router.bus,
        ctx: &ctx,
        user_id: &lease.user_id,
        thread_id: &lease.thread_id,
        model_id: &lease.model_id,
        message_id,
    };
    // Keep whatever the dead router checkpointed; only the status changes.
    let stored = router
        .bus
        .request::<_, polylogue_contracts::threads::MessageView>(
            polylogue_contracts::subjects::service::THREAD,
            polylogue_contracts::subjects::thread::MESSAGES_GET,
            &ctx,
            &polylogue_contracts::threads::GetMessageRequest {
                user_id: lease.user_id.clone(),
                thread_id: lease.thread_id.clone(),
                model_id: lease.model_id.clone(),
                message_id: message_id.to_owned(),
            },
        )
        .await;
    let reply = Reply {
        content: stored
            .as_ref()
            .map(|m| m.content.clone())
            .unwrap_or_default(),
        status: "interrupted".into(),
        tokens: stored.as_ref().ok().and_then(|m| m.tokens),
        temperature: stored.as_ref().ok().and_then(|m| m.temperature),
        context: None,
    };
    let result = target.upsert(&reply, stored.is_ok()).await;
    if let Err(error) = &result {
        tracing::error!(code = %error.code, message_id, "interrupted message not stored");
    }
    let mut writer = EventWriter::new(router.js.clone(), router.bus.prefix(), message_id);
    writer
        .finish(
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
        )
        .await;
    router.leases.release(message_id).await;
    metrics::counter!("polylogue_generations_interrupted_total").increment(1);
    tracing::warn!(message_id, dead_router = %lease.router_id, "generation interrupted");
}
