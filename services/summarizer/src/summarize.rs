//! One history's summary, start to end: take the history's lock, read the summary and the
//! messages after it (oldest first), decide whether a summary is due, fit the previous summary and
//! the newly covered messages into the summarizing model's window, call the model (one corrective
//! retry, then a trim), and store the next version through the thread service.

use crate::prompt::{self, Bounds};
use crate::state::{Locks, StaleState, history_key};
use async_nats::jetstream;
use polylogue_bus::{Bus, RequestContext};
use polylogue_catalog::{Catalog, ModelEntry};
use polylogue_config::SummarizerSettings;
use polylogue_contracts::subjects::{service as names, thread as thread_verbs};
use polylogue_contracts::summaries::SummarizeReply;
use polylogue_contracts::threads::{
    HistoryReply, HistoryRequest, MessageView, PutSummaryReply, PutSummaryRequest, SummaryView,
};
use polylogue_contracts::{ApiError, ErrorCode};
use polylogue_providers::tokens::{self, TokenCounter};
use polylogue_providers::{
    ChatMessage, CompletionRequest, Provider, ProviderKind, Registry, Role, SecretString,
    generate_with_retry,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

/// Messages read per round, at least: like context assembly's default window. A longer
/// uncovered stretch is summarized over several rounds, oldest first.
const HISTORY_WINDOW: u32 = 200;
/// The thread service's largest history page.
const HISTORY_MAX: u32 = 1000;
/// Rounds one run may write (each covers what fits the summarizing model's window).
const MAX_ROUNDS: usize = 8;
/// How long a manual request waits for a history another replica is summarizing.
const MANUAL_LOCK_WAIT: Duration = Duration::from_secs(2);
/// Sampling temperature of summaries (clamped to the model's range): faithful, not creative.
const TEMPERATURE: f64 = 0.3;

/// Which (thread, model) history, for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub user_id: String,
    pub thread_id: String,
    pub model_id: String,
}

/// Who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A message event: summarize only past the thresholds, keep the newest messages verbatim.
    Auto,
    /// The owner, through the API: cover every message now.
    Manual,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing was due.
    UpToDate,
    /// Summaries were written; this is the newest.
    Written(SummarizeReply),
    /// Another replica is writing this history's summary.
    Busy,
    /// This replica is shutting down; the work was left for another one.
    Interrupted,
}

enum Round {
    Nothing,
    Written { reply: SummarizeReply, more: bool },
}

pub struct Summarizer {
    bus: Bus,
    settings: SummarizerSettings,
    /// `inference.reply_budget_tokens`, for the prompt budget the trigger compares against.
    reply_budget_tokens: u32,
    catalog: Arc<Catalog>,
    registry: Registry,
    locks: Locks,
    stale: StaleState,
    js: jetstream::Context,
    shutdown: CancellationToken,
    busy: AtomicU64,
    running: AtomicU64,
}

pub(crate) struct Parts {
    pub bus: Bus,
    pub settings: SummarizerSettings,
    pub reply_budget_tokens: u32,
    pub catalog: Arc<Catalog>,
    pub registry: Registry,
    pub locks: Locks,
    pub stale: StaleState,
    pub js: jetstream::Context,
    pub shutdown: CancellationToken,
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn context_message(m: &MessageView) -> bool {
    prompt::usable(m)
}

impl Summarizer {
    pub(crate) fn new(p: Parts) -> Self {
        Self {
            bus: p.bus,
            settings: p.settings,
            reply_budget_tokens: p.reply_budget_tokens,
            catalog: p.catalog,
            registry: p.registry,
            locks: p.locks,
            stale: p.stale,
            js: p.js,
            shutdown: p.shutdown,
            busy: AtomicU64::new(0),
            running: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &SummarizerSettings {
        &self.settings
    }

    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub(crate) fn prefix(&self) -> &str {
        self.bus.prefix()
    }

    /// How often this replica found a history locked by another writer (tests, health).
    pub fn busy_count(&self) -> u64 {
        self.busy.load(Ordering::Relaxed)
    }

    /// The stale marker of a history: its last summary attempt failed and the previous summary
    /// (if any) is still the one in use.
    pub async fn stale(&self, thread_id: &str, model_id: &str) -> Option<crate::StaleEntry> {
        self.stale.get(thread_id, model_id).await
    }

    pub fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "running": self.running.load(Ordering::Relaxed),
            "capacity": self.settings.max_concurrent,
            "busy": self.busy_count(),
        })
    }

    /// The manual endpoint: summarize everything the summary does not cover yet.
    pub async fn manual(
        &self,
        ctx: &RequestContext,
        history: History,
    ) -> Result<SummarizeReply, ApiError> {
        if !self.catalog.contains(&history.model_id) {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("unknown model {:?}", history.model_id),
            ));
        }
        match self.run(ctx, &history, Mode::Manual, None).await? {
            Outcome::Written(reply) => Ok(reply),
            Outcome::UpToDate => Err(nothing_to_summarize()),
            Outcome::Busy => {
                // Say "not found" rather than "busy" to someone else's thread.
                self.read(ctx, &history, 1).await?;
                Err(ApiError::new(
                    ErrorCode::Conflict,
                    "a summary of this history is being written; try again in a moment",
                ))
            }
            Outcome::Interrupted => Err(ApiError::new(
                ErrorCode::ServiceUnavailable,
                "the summarizer is restarting; try again",
            )),
        }
    }

    /// Runs the work of one history under its lock. `event` (the automatic path) gets progress
    /// acks while the work lasts, so JetStream does not hand it to another replica meanwhile.
    pub async fn run(
        &self,
        ctx: &RequestContext,
        history: &History,
        mode: Mode,
        event: Option<&jetstream::Message>,
    ) -> Result<Outcome, ApiError> {
        let key = history_key(&history.thread_id, &history.model_id);
        let Some(mut lock) = self.acquire(&key, mode).await? else {
            self.busy.fetch_add(1, Ordering::Relaxed);
            return Ok(Outcome::Busy);
        };
        self.running.fetch_add(1, Ordering::Relaxed);
        let work = self.rounds(ctx, history, mode);
        tokio::pin!(work);
        let mut tick = tokio::time::interval(self.locks.ttl() / 3);
        tick.tick().await;
        let result = loop {
            tokio::select! {
                result = &mut work => break result.map(|r| r.map_or(Outcome::UpToDate, Outcome::Written)),
                () = self.shutdown.cancelled() => break Ok(Outcome::Interrupted),
                _ = tick.tick() => {
                    if !lock.refresh().await {
                        break Err(ApiError::new(
                            ErrorCode::ServiceUnavailable,
                            "the history's lock was lost; the summary will be retried",
                        ));
                    }
                    if let Some(event) = event
                        && let Err(error) = event.ack_with(jetstream::AckKind::Progress).await
                    {
                        tracing::debug!(%error, "progress ack failed");
                    }
                }
            }
        };
        lock.release().await;
        self.running.fetch_sub(1, Ordering::Relaxed);
        match &result {
            Ok(Outcome::Written(_)) => {
                self.stale
                    .clear(&history.thread_id, &history.model_id)
                    .await;
            }
            Err(e) if failure(e.code) => {
                let version = self
                    .read(ctx, history, 1)
                    .await
                    .ok()
                    .and_then(|h| h.summary.map(|s| s.version));
                self.stale
                    .mark(
                        &history.thread_id,
                        &history.model_id,
                        &format!("{}: {}", e.code, e.message),
                        version,
                        now_rfc3339(),
                    )
                    .await;
            }
            _ => {}
        }
        result
    }

    async fn acquire(&self, key: &str, mode: Mode) -> Result<Option<crate::state::Lock>, ApiError> {
        let started = Instant::now();
        loop {
            let lock = self.locks.try_acquire(key).await.map_err(|error| {
                tracing::warn!(%error, "summary lock unavailable");
                ApiError::new(
                    ErrorCode::ServiceUnavailable,
                    "the summarizer's lock store is unavailable",
                )
            })?;
            if lock.is_some() || mode == Mode::Auto || started.elapsed() >= MANUAL_LOCK_WAIT {
                return Ok(lock);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn rounds(
        &self,
        ctx: &RequestContext,
        history: &History,
        mode: Mode,
    ) -> Result<Option<SummarizeReply>, ApiError> {
        let mut newest = None;
        for _ in 0..MAX_ROUNDS {
            match self.round(ctx, history, mode).await? {
                Round::Nothing => break,
                Round::Written { reply, more } => {
                    newest = Some(reply);
                    // The automatic path goes on while the thresholds still hold; the manual one
                    // until every message is covered.
                    if mode == Mode::Manual && !more {
                        break;
                    }
                }
            }
        }
        match (mode, newest) {
            (Mode::Manual, None) => Err(nothing_to_summarize()),
            (_, newest) => Ok(newest),
        }
    }

    async fn read(
        &self,
        ctx: &RequestContext,
        history: &History,
        limit: u32,
    ) -> Result<HistoryReply, ApiError> {
        self.bus
            .request(
                names::THREAD,
                thread_verbs::HISTORY,
                ctx,
                &HistoryRequest {
                    user_id: history.user_id.clone(),
                    thread_id: history.thread_id.clone(),
                    model_id: history.model_id.clone(),
                    limit,
                    oldest_first: true,
                },
            )
            .await
    }

    /// Whether the uncovered part of a history is past a threshold: `trigger_messages` context
    /// messages, or `trigger_share` of the prompt budget context assembly would have. A reply
    /// still streaming counts: it is context once complete, and its completion brings no event.
    fn due(&self, model: &ModelEntry, uncovered: &[MessageView]) -> bool {
        let context: Vec<&MessageView> = uncovered
            .iter()
            .filter(|m| context_message(m) || m.status == "streaming")
            .collect();
        if context.len() >= self.settings.trigger_messages as usize {
            return true;
        }
        let Some(kind) = ProviderKind::parse(&model.provider) else {
            return false;
        };
        let counter = TokenCounter::for_model(kind, &model.provider_model);
        let reply = tokens::reply_budget(None, self.reply_budget_tokens, model.context_length);
        let budget = counter.prompt_budget(model.context_length, reply);
        let used: u64 = context
            .iter()
            .map(|m| u64::from(counter.count_message(&m.content)))
            .sum();
        #[expect(
            clippy::cast_precision_loss,
            reason = "token counts are far below 2^52"
        )]
        let used = used as f64;
        used > self.settings.trigger_share * f64::from(budget)
    }

    async fn round(
        &self,
        ctx: &RequestContext,
        history: &History,
        mode: Mode,
    ) -> Result<Round, ApiError> {
        // Enough to see the count threshold passed, and never a page the thread service refuses.
        let window = (self.settings.trigger_messages + self.settings.keep_recent)
            .clamp(HISTORY_WINDOW, HISTORY_MAX);
        let read = self.read(ctx, history, window).await?;
        let model = self.catalog.get(&history.model_id).ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("unknown model {:?}", history.model_id),
            )
        })?;
        let uncovered = &read.messages;
        // A reply still being written is not summarized, nor anything after it.
        let end = uncovered
            .iter()
            .position(|m| m.status == "streaming")
            .unwrap_or(uncovered.len());
        let end = match mode {
            Mode::Auto => end.min(
                uncovered
                    .len()
                    .saturating_sub(self.settings.keep_recent as usize),
            ),
            Mode::Manual => end,
        };
        let candidates = &uncovered[..end];
        if !candidates.iter().any(context_message) {
            return Ok(Round::Nothing);
        }
        if mode == Mode::Auto && !self.due(model, uncovered) {
            return Ok(Round::Nothing);
        }
        let writer_id = self.settings.model.as_deref().unwrap_or(&model.id);
        let writer = self.catalog.get(writer_id).ok_or_else(|| {
            ApiError::new(
                ErrorCode::ServiceUnavailable,
                format!("the summarizer model {writer_id:?} is not in the catalog"),
            )
        })?;
        let provider = self.registry.provider(&writer.id)?;
        let key = self.registry.key(writer, &history.user_id).await?;
        let counter = TokenCounter::for_model(provider.kind(), &writer.provider_model);
        let bounds = Bounds {
            min: self.settings.min_tokens,
            max: self.settings.max_tokens,
        };
        // Room for a summary a little over the bound (it is measured and trimmed afterwards),
        // but never more than a third of a small window.
        let reply_tokens = (bounds.max + bounds.max / 2)
            .min(writer.context_length / 3)
            .max(1);
        let budget = counter.prompt_budget(writer.context_length, reply_tokens);
        let previous = read.summary.as_ref();
        let Some(prompt) = prompt::fit(
            previous.map(|s| s.content.as_str()),
            candidates,
            &counter,
            budget,
            &bounds,
        ) else {
            let error = ApiError::new(
                ErrorCode::ContextTooLarge,
                format!(
                    "model {} leaves {budget} tokens for a summary prompt: too few for the \
                     earlier summary and a message",
                    writer.id
                ),
            )
            .with_details(serde_json::json!({
                "budgetTokens": budget,
                "contextLength": writer.context_length,
            }));
            if mode == Mode::Manual {
                return Err(error);
            }
            tracing::warn!(thread_id = %history.thread_id, model_id = %history.model_id, %error, "history cannot be summarized");
            return Ok(Round::Nothing);
        };
        let Some(last) = candidates.get(prompt.covered.saturating_sub(1)) else {
            return Ok(Round::Nothing);
        };
        let started = Instant::now();
        let written = self
            .write(
                provider.as_ref(),
                key.as_ref(),
                writer,
                &counter,
                &prompt,
                reply_tokens,
                budget,
                &bounds,
            )
            .await;
        let (content, tokens, outcome) = match written {
            Ok(w) => w,
            Err(error) => {
                metrics::counter!("polylogue_summaries_total", "outcome" => "failed").increment(1);
                return Err(error);
            }
        };
        let version = previous.map_or(1, |s| s.version + 1);
        let put: PutSummaryReply = self
            .bus
            .request(
                names::THREAD,
                thread_verbs::SUMMARY_PUT,
                ctx,
                &PutSummaryRequest {
                    user_id: history.user_id.clone(),
                    thread_id: history.thread_id.clone(),
                    model_id: history.model_id.clone(),
                    summary: SummaryView {
                        version,
                        content: content.clone(),
                        tokens,
                        covers_until: last.id.clone(),
                        model_used: writer.id.clone(),
                        generated_at: now_rfc3339(),
                    },
                },
            )
            .await?;
        if !put.stored {
            // Only a writer that lost its lock gets here: a newer version stands, keep it.
            metrics::counter!("polylogue_summaries_total", "outcome" => "superseded").increment(1);
            tracing::warn!(thread_id = %history.thread_id, model_id = %history.model_id, version, current = put.current_version, "summary not stored: a newer one exists");
            return match mode {
                Mode::Auto => Ok(Round::Nothing),
                Mode::Manual => Err(ApiError::new(
                    ErrorCode::Conflict,
                    "a newer summary of this history was written meanwhile",
                )),
            };
        }
        metrics::counter!("polylogue_summaries_total", "outcome" => outcome).increment(1);
        metrics::histogram!("polylogue_summary_tokens").record(f64::from(tokens));
        metrics::histogram!("polylogue_summary_seconds").record(started.elapsed().as_secs_f64());
        tracing::info!(
            thread_id = %history.thread_id,
            model_id = %history.model_id,
            model_used = %writer.id,
            version,
            tokens,
            min_tokens = bounds.min,
            max_tokens = bounds.max,
            covered = prompt.covered,
            prompt_tokens = prompt.tokens,
            outcome,
            "summary written"
        );
        Ok(Round::Written {
            reply: SummarizeReply {
                summary: content,
                tokens,
                generated_at: put.generated_at.unwrap_or_else(now_rfc3339),
                model_used: writer.id.clone(),
                version,
                covers_until: last.id.clone(),
            },
            more: prompt.covered < candidates.len(),
        })
    }

    /// Asks for the summary, measures it, corrects once, trims: the text, its token count and
    /// how it came about (`ok`, `corrected`, `trimmed`, `short`).
    #[expect(
        clippy::too_many_arguments,
        reason = "one call's worth of plain values"
    )]
    async fn write(
        &self,
        provider: &dyn Provider,
        key: Option<&SecretString>,
        writer: &ModelEntry,
        counter: &TokenCounter,
        prompt: &prompt::Prompt,
        reply_tokens: u32,
        budget: u32,
        bounds: &Bounds,
    ) -> Result<(String, u32, &'static str), ApiError> {
        let range = &writer.temperature_range;
        let request = |messages: Vec<ChatMessage>| CompletionRequest {
            model: writer.provider_model.clone(),
            system: Some(prompt.system.clone()),
            messages,
            temperature: Some(TEMPERATURE.clamp(range.min, range.max)),
            max_tokens: reply_tokens,
            num_ctx: (provider.kind() == ProviderKind::Ollama).then_some(writer.context_length),
        };
        let user = |content: &str| ChatMessage {
            role: Role::User,
            content: content.to_owned(),
        };
        let first = self
            .call(provider, key, &request(vec![user(&prompt.user)]))
            .await?;
        let n = counter.count_text(&first);
        if (bounds.min..=bounds.max).contains(&n) {
            return Ok((first, n, "ok"));
        }
        // One corrective retry: the model sees its summary and how far off it was. When that
        // conversation does not fit the window, the correction replaces the instruction.
        let fix = prompt::correction(n, bounds, counter);
        let messages =
            if prompt::prompt_tokens(counter, &prompt.system, &[&prompt.user, &first, &fix])
                <= budget
            {
                vec![
                    user(&prompt.user),
                    ChatMessage {
                        role: Role::Assistant,
                        content: first.clone(),
                    },
                    user(&fix),
                ]
            } else {
                vec![user(&format!("{}\n\n{fix}", prompt.user))]
            };
        let second = match self.call(provider, key, &request(messages)).await {
            Ok(text) => Some(text),
            Err(error) => {
                tracing::warn!(%error, "corrective summary call failed; keeping the first");
                None
            }
        };
        let m = second.as_deref().map(|s| counter.count_text(s));
        let (text, outcome) = match (second, m) {
            (Some(s), Some(m)) if (bounds.min..=bounds.max).contains(&m) => (s, "corrected"),
            (Some(s), Some(m)) if m > bounds.max => {
                (prompt::trim(&s, bounds.max, counter), "trimmed")
            }
            _ if n > bounds.max => (prompt::trim(&first, bounds.max, counter), "trimmed"),
            (Some(s), Some(m)) if m > n => (s, "short"),
            _ => (first, "short"),
        };
        let tokens = counter.count_text(&text);
        if tokens < bounds.min {
            tracing::warn!(
                tokens,
                min_tokens = bounds.min,
                model = %writer.id,
                "summary shorter than the bound after a corrective retry; kept"
            );
        }
        if text.is_empty() {
            return Err(ApiError::new(
                ErrorCode::ServiceUnavailable,
                "the model's summary was empty",
            ));
        }
        Ok((text, tokens, outcome))
    }

    async fn call(
        &self,
        provider: &dyn Provider,
        key: Option<&SecretString>,
        request: &CompletionRequest,
    ) -> Result<String, ApiError> {
        let (completion, _attempts) =
            generate_with_retry(provider, key, request, self.registry.retry_policy())
                .await
                .map_err(|e| e.to_api_error(provider.kind()))?;
        let text = completion.content.trim().to_owned();
        if text.is_empty() {
            return Err(ApiError::new(
                ErrorCode::ServiceUnavailable,
                "the model returned an empty summary",
            ));
        }
        Ok(text)
    }
}

/// Errors that leave a history's summary behind (the provider or a service failed), as opposed
/// to answers about the request (not found, nothing to do, too large, superseded).
fn failure(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::ServiceUnavailable
            | ErrorCode::GatewayTimeout
            | ErrorCode::RateLimited
            | ErrorCode::InternalError
            | ErrorCode::InvalidApiKey
            | ErrorCode::ApiKeyRequired
            | ErrorCode::UnprocessableEntity
            | ErrorCode::PayloadTooLarge
    )
}

fn nothing_to_summarize() -> ApiError {
    ApiError::new(
        ErrorCode::NothingToSummarize,
        "nothing to summarize: this history has no message its summary does not already cover",
    )
}
