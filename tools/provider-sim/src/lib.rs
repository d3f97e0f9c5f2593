//! Provider simulator: impersonates the Anthropic, OpenAI, Gemini and Ollama HTTP APIs
//! on one port, with deterministic replies, configurable latency and fault injection.
//!
//! Replies are `"tok0 tok1 ... "`, or deterministic sentences when the system prompt or
//! last user message contains `summarize`. The last user message may carry
//! `[sim key=value ...]` with keys `ttft`, `gap`, `header_delay` (ms), `tokens`,
//! `fail` (status), `retry_after` (s), `fail_times` + `id`, `cut_after`, `abort_after`,
//! `malformed_after`, `summary_words` and `text` (token prefix).

mod anthropic;
mod common;
mod directives;
mod gemini;
mod ollama;
mod openai;
mod reply;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
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
}

impl State {
    fn new(config: SimConfig, options: SimOptions) -> Self {
        Self {
            records: Mutex::new(VecDeque::with_capacity(config.record.min(4096))),
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
        .route("/api/tags", get(ollama::tags))
        .route("/api/version", get(ollama::version))
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
