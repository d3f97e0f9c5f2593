//! Provider simulator: impersonates the Anthropic, OpenAI, Gemini and Ollama HTTP APIs
//! on one port, with deterministic replies, configurable latency and fault injection.
//!
//! Replies are `"tok0 tok1 ... "`, or deterministic sentences when the system prompt or
//! last user message (Ollama `/api/generate`: the `system` and `prompt`) contains
//! `summarize`. The last user message may carry `[sim key=value ...]` with keys `ttft`,
//! `gap`, `header_delay` (ms), `tokens`, `fail` (status), `retry_after` (s),
//! `fail_times` + `id`, `cut_after`, `abort_after`, `malformed_after`, `summary_words` and
//! `text` (token prefix).
//!
//! # Ollama models
//!
//! The simulated Ollama keeps installed (on disk) and loaded (in memory) models, configured
//! by [`SimOptions::ollama`] ([`OllamaOptions`]); by default `llama3.2:latest`, `qwen2.5:7b`
//! and `mistral:latest` are installed and nothing is loaded. Names are case-insensitive and
//! an untagged name means `:latest`. Following Ollama's API:
//!
//! - `GET /api/tags`: installed models (`name`, `model`, `modified_at`, `size`, `digest`,
//!   `details`), most recently modified first.
//! - `POST /api/show` `{"model"}`: `modelfile`, `parameters`, `template`, `details`,
//!   `model_info`, `capabilities`, `license`; 404 `{"error":"model 'x' not found"}`.
//! - `POST /api/pull` `{"model", "stream"?}`: NDJSON `{"status":"pulling manifest"}`, then per
//!   layer (weights, template, license, params, config) `{"status":"pulling <12 hex>",
//!   "digest":"sha256:…","total":N,"completed":M}` every progress interval (60 ms) at the
//!   pull speed, then `verifying sha256 digest`, `writing manifest` (the model is installed)
//!   and `success`. Blobs already on disk count as complete at once. With `"stream": false`
//!   one `{"status":"success"}`, or 500 `{"error"}`. A name containing `missing` fails with
//!   `{"error":"pull model manifest: file does not exist"}` after `pulling manifest` (a last
//!   NDJSON line of the 200 stream, as Ollama does); one containing `fail-midway` streams
//!   progress and fails with an error line once half the weights arrived, installing nothing;
//!   one containing `fail-once` does so only when it starts from none of the weights, so a
//!   retry (which resumes from the half already there) succeeds.
//!   Concurrent pulls of one model share one download; when every puller disconnects the
//!   download stops and the next pull resumes from the bytes already there.
//! - `POST /api/generate` / `POST /api/chat` with no `prompt` / `messages`: loads the model
//!   (taking the load time) and answers `{"done":true,"done_reason":"load"}`; with
//!   `keep_alive: 0` unloads it (`"done_reason":"unload"`). A model that is not installed
//!   gets 404 `{"error":"model \"x\" not found, try pulling it first"}`. `keep_alive` is
//!   seconds or a Go duration (`"5m"`), negative for forever, 5 minutes by default. A chat
//!   or generation with an installed model loads it first when needed (`load_duration`);
//!   with a model that is not installed it is answered without loading anything, or 404
//!   with [`OllamaOptions::strict_models`].
//! - `GET /api/ps`: loaded (and loading) models with `size`, `size_vram`, `expires_at`,
//!   `context_length`; models are evicted once `expires_at` passes.
//! - `DELETE /api/delete` `{"model"}`: 200 with an empty body, or 404.
//!
//! Pulls, shows, deletes and generations are recorded like chats (`GET` requests are not).
//! Test controls, also as [`SimServer`] methods: `GET /_sim/ollama` ([`OllamaSnapshot`]:
//! models, pulls in progress, `downloads` and `downloadedBytes` counters), `PUT
//! /_sim/ollama/installed` (`["name", {"name", "weightsBytes", "memoryBytes", ...}]`), `PUT
//! /_sim/ollama/loaded` (`["name"]`), `PUT /_sim/ollama/pull-speed` (`{"bytesPerSec"}`) and
//! `POST /_sim/ollama/reset`.

mod anthropic;
mod common;
mod directives;
mod gemini;
mod ollama;
mod ollama_models;
mod openai;
mod reply;

pub use ollama_models::{
    DEFAULT_PULL_BYTES_PER_SEC, DEFAULT_WEIGHTS_BYTES, OllamaModel, OllamaOptions, OllamaSnapshot,
    default_ollama_models,
};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::serve::ListenerExt as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Global defaults; per-request `[sim ...]` directives override them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Delay between the response headers and the first token.
    pub ttft: Duration,
    /// Delay between tokens.
    pub gap: Duration,
    /// Tokens in a default reply.
    pub reply_tokens: u32,
    /// Delay before the response headers are sent.
    pub header_delay: Duration,
    /// Words in a summary-mode reply.
    pub summary_words: u32,
    /// How many requests to keep for inspection.
    pub record: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            ttft: Duration::ZERO,
            gap: Duration::ZERO,
            reply_tokens: 12,
            header_delay: Duration::ZERO,
            summary_words: 400,
            record: 1000,
        }
    }
}

/// Server options that are not timing defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimOptions {
    /// Reject OpenAI requests without an `Authorization: Bearer` key.
    pub require_auth_openai: bool,
    /// The simulated Ollama's models: installed and loaded at start, pull speed, load time.
    pub ollama: OllamaOptions,
}

/// One recorded provider request (the key itself is never stored).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    /// `anthropic`, `openai`, `google` or `ollama`.
    pub provider: String,
    /// Request path without the query string.
    pub path: String,
    /// Model named by the request, if any.
    pub model: Option<String>,
    /// Whether a streamed reply was requested.
    pub stream: bool,
    /// Whether a non-empty key was sent.
    pub has_key: bool,
    /// Parsed JSON body (`null` when the body was not JSON).
    pub body: serde_json::Value,
}

/// Shared server state.
#[derive(Debug)]
pub(crate) struct State {
    pub config: SimConfig,
    pub options: SimOptions,
    records: Mutex<VecDeque<RecordedRequest>>,
    fail_counts: Mutex<HashMap<String, u32>>,
    pub ids: AtomicU64,
    /// The simulated Ollama's models.
    pub ollama: Arc<ollama_models::OllamaState>,
}

impl State {
    fn new(config: SimConfig, options: SimOptions) -> Self {
        Self {
            records: Mutex::new(VecDeque::with_capacity(config.record.min(4096))),
            ollama: Arc::new(ollama_models::OllamaState::new(options.ollama.clone())),
            config,
            options,
            fail_counts: Mutex::new(HashMap::new()),
            ids: AtomicU64::new(1),
        }
    }

    pub(crate) fn record(&self, req: RecordedRequest) {
        let cap = self.config.record;
        if cap == 0 {
            return;
        }
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        while records.len() >= cap {
            records.pop_front();
        }
        records.push_back(req);
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        records.iter().cloned().collect()
    }

    pub(crate) fn clear(&self) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Counts a `fail_times` request for `id`; true while it should still fail.
    pub(crate) fn should_fail(&self, id: &str, times: u32) -> bool {
        let mut counts = self
            .fail_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seen = counts.entry(id.to_owned()).or_insert(0);
        if *seen >= times {
            false
        } else {
            *seen += 1;
            true
        }
    }
}

/// Builds the router serving every simulated provider.
fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(common::list_models_v1))
        .route("/v1beta/models", get(gemini::list_models))
        .route(
            "/v1beta/models/{model_and_method}",
            post(gemini::generate).get(gemini::get_model),
        )
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama_models::tags))
        .route("/api/show", post(ollama_models::show))
        .route("/api/pull", post(ollama_models::pull))
        .route("/api/ps", get(ollama_models::ps))
        .route("/api/delete", delete(ollama_models::delete))
        .route("/_sim/ollama", get(ollama_models::sim_state))
        .route("/_sim/ollama/installed", put(ollama_models::sim_installed))
        .route("/_sim/ollama/loaded", put(ollama_models::sim_loaded))
        .route(
            "/_sim/ollama/pull-speed",
            put(ollama_models::sim_pull_speed),
        )
        .route("/_sim/ollama/reset", post(ollama_models::sim_reset))
        .route(
            "/_sim/requests",
            get(common::get_requests).delete(common::delete_requests),
        )
        .route("/_sim/health", get(common::health))
        .fallback(common::not_found)
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(state)
}

/// A running simulator.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SimServer {
    /// Starts on `127.0.0.1` with an ephemeral port.
    pub async fn start(config: SimConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        Self::start_on(config, listener).await
    }

    /// Starts on an already bound listener.
    pub async fn start_on(
        config: SimConfig,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<Self> {
        Self::start_with(config, SimOptions::default(), listener).await
    }

    /// Starts on an already bound listener with extra options.
    pub async fn start_with(
        config: SimConfig,
        options: SimOptions,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(config, options));
        let app = router(Arc::clone(&state));
        let (tx, rx) = oneshot::channel::<()>();
        let listener = listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(%err, "set_nodelay failed");
            }
        });
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(err) = serve.await {
                tracing::warn!(%err, "provider-sim server error");
            }
        });
        Ok(Self {
            addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` of the server.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Recorded requests, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    /// Forgets all recorded requests.
    pub fn clear_requests(&self) {
        self.state.clear();
    }

    /// The simulated Ollama's installed, loaded and pulling models and pull counters.
    pub fn ollama_state(&self) -> OllamaSnapshot {
        self.state.ollama.snapshot()
    }

    /// Replaces the installed Ollama models (loaded models stay loaded).
    pub fn set_ollama_installed(&self, models: impl IntoIterator<Item = OllamaModel>) {
        self.state
            .ollama
            .set_installed(models.into_iter().collect());
    }

    /// Replaces the loaded Ollama models (already loaded, with the default keep-alive);
    /// names that are not installed are installed first.
    pub fn set_ollama_loaded<S: AsRef<str>>(&self, names: impl IntoIterator<Item = S>) {
        let names: Vec<S> = names.into_iter().collect();
        self.state.ollama.set_loaded(&names);
    }

    /// Sets the simulated download speed of Ollama pulls, including those in progress.
    pub fn set_ollama_pull_speed(&self, bytes_per_sec: u64) {
        self.state.ollama.set_pull_speed(bytes_per_sec);
    }

    /// Back to the configured Ollama models and speed: pulls in progress fail, counters
    /// restart at zero.
    pub fn reset_ollama(&self) {
        self.state.ollama.reset();
    }

    /// Stops accepting connections and waits (up to 2 s) for open ones to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
