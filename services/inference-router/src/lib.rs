//! The inference router: validates a send, assembles the context of the (thread, model) history,
//! stores the user message, then runs the generation in the background — provider call with
//! retries before the first token, tokens published to the tokens stream, the assistant message
//! stored from its first token to its end — while the edge relays the stream to the client.
//! Generations hold leases; a router that dies mid-stream has its generations ended
//! `interrupted` by the routers that remain.

pub mod assembly;
pub mod events;
mod generation;
pub mod loading;
mod persist;

use anyhow::Context;
use async_nats::jetstream;
use dashmap::DashMap;
use loading::Readiness;
use polylogue_bus::generations::Leases;
use polylogue_bus::{Bus, RequestContext, ServiceHost, handler};
use polylogue_catalog::{Catalog, ModelEntry};
use polylogue_config::{InferenceSettings, Settings};
use polylogue_contracts::inference::{SendMessageReply, SendMessageRequest};
use polylogue_contracts::models::job;
use polylogue_contracts::profile::{ProfileGetRequest, ProfileSettingsView};
use polylogue_contracts::subjects::{
    auth as auth_verbs, inference as verbs, service as names, thread as thread_verbs,
};
use polylogue_contracts::threads::{
    AppendMessageReply, AppendMessageRequest, HistoryReply, HistoryRequest,
};
use polylogue_contracts::{ApiError, ErrorCode};
use polylogue_providers::tokens::TokenCounter;
use polylogue_providers::{CompletionRequest, ProviderKind, Registry, RetryPolicy};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use generation::Job;

pub struct Router {
    bus: Bus,
    settings: InferenceSettings,
    catalog: Arc<Catalog>,
    /// Provider clients and keys, per catalog model.
    registry: Registry,
    js: jetstream::Context,
    /// The ollama-loader's buckets: model status, load jobs.
    loads: loading::Buckets,
    leases: Leases,
    retry: RetryPolicy,
    permits: Arc<Semaphore>,
    /// Running generations, so a crash test can abort them without any goodbye.
    running: DashMap<String, tokio::task::AbortHandle>,
    tasks: TaskTracker,
}

pub struct Running {
    pub router: Arc<Router>,
    host: ServiceHost,
    background: CancellationToken,
}

impl Running {
    /// Stops taking sends, lets running generations finish (up to `grace`), then stops the
    /// heartbeat; generations still running after `grace` are ended `interrupted` by the routers
    /// that remain.
    pub async fn stop(self, grace: Duration) {
        self.host.stop().await;
        self.router.tasks.close();
        let _ = tokio::time::timeout(grace, self.router.tasks.wait()).await;
        for entry in &self.router.running {
            entry.value().abort();
        }
        self.background.cancel();
        self.router.leases.retire().await;
    }

    /// Dies like a crashed process: no more heartbeats, every running generation aborted where
    /// it stands, nothing written on the way out. For tests of the interruption path.
    pub async fn kill(self) {
        self.background.cancel();
        for entry in &self.router.running {
            entry.value().abort();
        }
        self.host.stop().await;
    }
}

pub async fn start(
    settings: &Settings,
    bus: &Bus,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) -> anyhow::Result<Running> {
    let s = settings.inference.clone();
    let catalog = Arc::new(
        Catalog::load(settings.catalog.path.as_deref()).context("loading the model catalog")?,
    );
    let registry = Registry::new(&catalog, &s)
        .map_err(|e| anyhow::anyhow!("building the provider clients: {e}"))?
        .with_user_keys(
            polylogue_crypto::UserKeys::from_settings(
                settings,
                bus,
                "inference-router",
                shutdown.clone(),
            )
            .await?,
        );
    // The BPE tables take a moment to build; pay for it before taking requests.
    if s.warm_up_tokenizers {
        tokio::task::spawn_blocking(polylogue_providers::tokens::warm_up)
            .await
            .context("building the tokenizer tables")?;
    }
    let js = jetstream::new(bus.client().clone());
    events::ensure_stream(
        &js,
        bus.prefix(),
        Duration::from_secs(s.stream_retention_secs),
    )
    .await
    .map_err(|e| anyhow::anyhow!("opening the tokens stream: {e}"))?;
    let kv = polylogue_bus::generations::open_bucket(&js, bus.prefix())
        .await
        .map_err(|e| anyhow::anyhow!("opening the generations bucket: {e}"))?;
    let router_id = uuid::Uuid::now_v7().simple().to_string();
    let leases = Leases::new(kv, router_id.clone());
    leases
        .heartbeat()
        .await
        .map_err(|e| anyhow::anyhow!("first heartbeat: {e}"))?;
    let router = Arc::new(Router {
        bus: bus.clone(),
        retry: registry.retry_policy().clone(),
        permits: Arc::new(Semaphore::new(s.max_concurrent)),
        settings: s,
        catalog,
        registry,
        loads: loading::Buckets::new(js.clone(), bus.prefix()),
        js,
        leases,
        running: DashMap::new(),
        tasks: TaskTracker::new(),
    });
    let background = shutdown.child_token();
    tracker.spawn(generation::keep_leases(
        Arc::clone(&router),
        background.clone(),
    ));
    tracing::info!(router_id = %router_id, "inference router started");

    let host = ServiceHost::start(
        bus,
        names::INFERENCE,
        env!("CARGO_PKG_VERSION"),
        "context assembly, provider calls and token streams",
        shutdown,
        tracker,
    )
    .await
    .map_err(|e| anyhow::anyhow!("registering the inference service: {e}"))?;
    let r = Arc::clone(&router);
    host.endpoint(
        verbs::SEND,
        handler(move |ctx, req: SendMessageRequest| {
            let r = Arc::clone(&r);
            async move { r.send(ctx, req).await }
        }),
    )
    .await
    .map_err(|e| anyhow::anyhow!("adding endpoint send: {e}"))?;
    let r = Arc::clone(&router);
    host.endpoint(
        verbs::HEALTH,
        handler(move |_ctx, _req: serde_json::Value| {
            let r = Arc::clone(&r);
            async move { Ok(r.health()) }
        }),
    )
    .await
    .map_err(|e| anyhow::anyhow!("adding endpoint health: {e}"))?;
    Ok(Running {
        router,
        host,
        background,
    })
}

impl Router {
    /// Whether this router runs the generation of `message_id` right now.
    pub fn is_running(&self, message_id: &str) -> bool {
        self.running.contains_key(message_id)
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "running": self.running.len(),
            "capacity": self.settings.max_concurrent,
        })
    }

    /// The user's profile settings (system prompt, default temperature); the installation's
    /// defaults when the auth service does not answer (a generation never fails for it).
    async fn profile_settings(&self, ctx: &RequestContext, user_id: &str) -> ProfileSettingsView {
        match self
            .bus
            .request::<_, ProfileSettingsView>(
                names::AUTH,
                auth_verbs::PROFILE_SETTINGS,
                ctx,
                &ProfileGetRequest {
                    user_id: user_id.to_owned(),
                },
            )
            .await
        {
            Ok(settings) => settings,
            Err(error) => {
                tracing::warn!(code = %error.code, "profile settings unavailable; installation defaults used");
                ProfileSettingsView::default()
            }
        }
    }

    pub async fn send(
        self: &Arc<Self>,
        ctx: RequestContext,
        req: SendMessageRequest,
    ) -> Result<SendMessageReply, ApiError> {
        let model = self.catalog.get(&req.model_id).ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("model {:?} is not in the catalog", req.model_id),
            )
        })?;
        if req.content.trim().is_empty() {
            return Err(ApiError::validation("content", "content must not be empty"));
        }
        if req.content.len() > self.settings.max_content_bytes {
            return Err(ApiError::new(
                ErrorCode::ValidationError,
                format!(
                    "content is longer than {} bytes",
                    self.settings.max_content_bytes
                ),
            )
            .with_details(serde_json::json!({
                "field": "content",
                "expected": format!("at most {} bytes", self.settings.max_content_bytes),
            })));
        }
        if let Some(t) = req.temperature {
            temperature(model, Some(t))?;
        }
        if req.max_tokens == Some(0) {
            return Err(ApiError::validation(
                "maxTokens",
                "maxTokens must be a positive integer",
            ));
        }
        let provider = self.registry.provider(&model.id)?;
        // The user's own key and profile settings, both from the auth service, at once.
        let (key, profile) = tokio::join!(
            self.registry.key(model, &req.user_id),
            self.profile_settings(&ctx, &req.user_id)
        );
        let key = key?;
        let temperature = temperature(
            model,
            req.temperature.or(profile.default_temperature.filter(|t| {
                (model.temperature_range.min..=model.temperature_range.max).contains(t)
            })),
        )?;
        let system_prompt = profile
            .system_prompt
            .filter(|p| !p.trim().is_empty())
            .unwrap_or_else(|| self.settings.default_system_prompt.clone());
        let history: HistoryReply = self
            .bus
            .request(
                names::THREAD,
                thread_verbs::HISTORY,
                &ctx,
                &HistoryRequest {
                    user_id: req.user_id.clone(),
                    thread_id: req.thread_id.clone(),
                    model_id: model.id.clone(),
                    limit: self.settings.history_window,
                    oldest_first: false,
                },
            )
            .await?;
        let kind = provider.kind();
        let counter = TokenCounter::for_model(kind, &model.provider_model);
        let reply_budget = assembly::reply_budget(
            req.max_tokens,
            self.settings.reply_budget_tokens,
            model.context_length,
        );
        let assembled = assembly::assemble(
            &assembly::Inputs {
                system_prompt: &system_prompt,
                summary: history.summary.as_ref(),
                history: &history.messages,
                user_content: &req.content,
                context_length: model.context_length,
                reply_budget,
            },
            &counter,
        )
        .map_err(|t| {
            ApiError::new(
                ErrorCode::ContextTooLarge,
                format!(
                    "the message needs about {} tokens but model {} leaves {} for the prompt",
                    t.needed, model.id, t.budget
                ),
            )
            .with_details(serde_json::json!({
                "neededTokens": t.needed,
                "budgetTokens": t.budget,
                "contextLength": model.context_length,
            }))
        })?;
        // A local model that is not loaded: start or join its load. A non-streaming send waits
        // for it here (nothing is stored if it does not finish in time); a streaming one goes on
        // and its generation reports the load as `status` events.
        let load = match loading::ensure(&self.bus, &self.loads, &ctx, model, &req.user_id).await? {
            Readiness::Ready => None,
            Readiness::Loading {
                job_id,
                estimated_time,
            } if !req.stream => {
                let limit = Duration::from_secs(self.settings.load_wait_secs);
                match loading::wait(&self.loads, &job_id, limit).await {
                    Ok(()) => None,
                    Err(Some(job)) if job::is_terminal(&job.status) => {
                        return Err(loading::load_failed(&model.id, &job));
                    }
                    Err(last) => {
                        let progress = last.as_ref().map_or(0.0, |j| j.progress);
                        return Err(ApiError::new(
                            ErrorCode::ServiceUnavailable,
                            format!(
                                "model {} is loading ({progress:.0} % done); retry shortly or stream the reply to follow the load",
                                model.id
                            ),
                        )
                        .with_details(serde_json::json!({
                            "retryAfter": loading::retry_after(last.as_ref(), estimated_time),
                            "jobId": job_id,
                            "modelId": model.id,
                            "loadProgress": progress,
                        })));
                    }
                }
            }
            Readiness::Loading { job_id, .. } => Some(job_id),
        };
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return Err(ApiError::new(
                ErrorCode::ServiceUnavailable,
                "this router is at its generation limit; retry shortly",
            )
            .with_details(serde_json::json!({ "retryAfter": 1 })));
        };
        // Both ids are made here so that the reply sorts after the message it answers.
        let user_message_id = uuid::Uuid::now_v7();
        let mut reply_uuid = uuid::Uuid::now_v7();
        while reply_uuid <= user_message_id {
            reply_uuid = uuid::Uuid::now_v7();
        }
        let reply_id = reply_uuid.to_string();
        let appended: AppendMessageReply = self
            .bus
            .request(
                names::THREAD,
                thread_verbs::MESSAGES_APPEND,
                &ctx,
                &AppendMessageRequest {
                    user_id: req.user_id.clone(),
                    thread_id: req.thread_id.clone(),
                    model_id: model.id.clone(),
                    message_id: Some(user_message_id.to_string()),
                    idempotency_key: req.idempotency_key.clone(),
                    role: "user".into(),
                    content: req.content.clone(),
                    status: Some("complete".into()),
                    tokens: Some(assembled.receipt.tokens.user_message),
                    temperature: None,
                    context: Some(serde_json::json!({ "replyId": reply_id })),
                },
            )
            .await?;
        if appended.duplicate {
            let previous = appended
                .context
                .as_ref()
                .and_then(|c| c.get("replyId"))
                .and_then(|v| v.as_str())
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::Conflict,
                        "this Idempotency-Key was used for a message without a reply",
                    )
                })?;
            return Ok(SendMessageReply {
                user_message: appended.message,
                assistant_message_id: previous.to_owned(),
                replayed: true,
            });
        }
        let job = Job {
            message_id: reply_id.clone(),
            user_id: req.user_id,
            thread_id: req.thread_id,
            model_id: model.id.clone(),
            provider,
            key,
            request: CompletionRequest {
                model: model.provider_model.clone(),
                system: assembled.system,
                messages: assembled.messages,
                temperature: Some(temperature),
                max_tokens: reply_budget,
                num_ctx: (kind == ProviderKind::Ollama).then_some(model.context_length),
            },
            receipt: assembled.receipt,
            temperature,
            counter,
            request_id: ctx.request_id.clone(),
            load,
        };
        generation::spawn(Arc::clone(self), job, permit);
        metrics::counter!("polylogue_generations_started_total", "model" => model.id.clone())
            .increment(1);
        Ok(SendMessageReply {
            user_message: appended.message,
            assistant_message_id: reply_id,
            replayed: false,
        })
    }
}

/// The request's temperature, or the model's default; outside the model's range → 400 with the
/// spec's `details` (`field`, `expected`).
fn temperature(model: &ModelEntry, requested: Option<f64>) -> Result<f64, ApiError> {
    let range = &model.temperature_range;
    let t = requested.unwrap_or(range.default);
    if t.is_finite() && t >= range.min && t <= range.max {
        Ok(t)
    } else {
        Err(ApiError::new(
            ErrorCode::ValidationError,
            format!(
                "temperature must be between {} and {} for model {}",
                range.min, range.max, model.id
            ),
        )
        .with_details(serde_json::json!({
            "field": "temperature",
            "expected": format!("number between {} and {}", range.min, range.max),
        })))
    }
}
