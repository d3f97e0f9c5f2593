//! `polylogue-bench-inference`: what the edge → NATS → inference-router path adds to a model call,
//! against the same call made straight to the provider simulator (`tools/provider-sim`).
//!
//! Modes (`--mode`), each against `--target direct` (the simulator's OpenAI API) or `--target
//! edge` (`POST /api/threads/{id}/models/{model}/messages` with a session cookie):
//!
//! - `json`: non-streaming calls on a fixed schedule (open loop: call `i` is due at
//!   `start + i / rate` whatever the earlier calls did; latency from that scheduled instant to the
//!   end of the body). The first `--warmup` seconds of the schedule are sent but not recorded.
//! - `stream`: streamed calls started on a fixed schedule; per stream the time to the first token
//!   (first `token` SSE event, or first non-empty `delta.content` chunk) from the scheduled
//!   instant, and every gap between two successive token events as the client sees them.
//! - `hold`: `--streams` streams through the edge opened over `--ramp` seconds and kept open (the
//!   simulator's reply must be slow, e.g. `[sim gap=1000 tokens=120]` in `--prompt`); once each
//!   has had `message_start` and a token, the RSS of the `--pid` processes is read and compared
//!   with the reading before the first stream was opened; then every stream is followed to its
//!   end and checked.
//!
//! - `nats-limit`: sets `max_consumers` of the tokens stream (`--stream`) to `--max-consumers`
//!   through `--nats`, and prints the value before and after. Each edge SSE reader is an ephemeral
//!   ordered JetStream consumer that lingers 30 s (its inactive threshold) after the reader has gone,
//!   and nats-server 2.15 gives a stream that sets no limit a default of 1,000 consumers: without
//!   this, more than ~33 generations/s through the edge, or 1,000 open streams, fail with 503
//!   "the token stream is unavailable".
//!
//! `--nats-monitor` (the NATS HTTP monitoring URL) adds the tokens stream's consumer count to the
//! report. Every mode prints one JSON line on stdout (the script turns it into Markdown) and its progress
//! on stderr. `--pid name=PID` (repeatable) adds the RSS and CPU seconds of those processes.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The cookie that carries the access token (`services/edge-api/src/cookies.rs`).
const ACCESS_COOKIE: &str = "polylogue_access";
/// Highest value the histograms hold: one hour, in microseconds.
const HIST_MAX_US: u64 = 3_600_000_000;

#[derive(Parser)]
#[command(
    name = "polylogue-bench-inference",
    about = "Direct-to-provider vs through-the-edge inference latency, and memory per open stream"
)]
struct Cli {
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, value_enum, default_value = "edge")]
    target: Target,
    /// Base URL of the edge API, e.g. http://127.0.0.1:8080 (target edge).
    #[arg(long)]
    edge: Option<String>,
    /// Base URL of the provider simulator, e.g. http://127.0.0.1:9000 (target direct).
    #[arg(long)]
    sim: Option<String>,
    #[arg(long)]
    username: Option<String>,
    /// Name of the environment variable that holds the password (target edge).
    #[arg(long)]
    password_env: Option<String>,
    /// Catalog model id (edge) and provider model (direct).
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// The user message of every call (simulator directives such as `[sim tokens=50]` go here).
    #[arg(long, default_value = "Hello! Please answer briefly.")]
    prompt: String,
    /// System prompt of the direct call: the router's default, so both prompts match.
    #[arg(long, default_value = "You are a helpful assistant.")]
    system: String,
    /// `max_completion_tokens` of the direct call: the router's default reply budget.
    #[arg(long, default_value_t = 1024)]
    max_tokens: u32,
    /// Calls (json) or new streams (stream) per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of the schedule that are recorded.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds of the schedule before the recorded part: sent at the same rate, not recorded.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Threads to create up front (target edge); call `i` goes to thread `i % threads`.
    #[arg(long, default_value_t = 500)]
    threads: usize,
    /// Streams to hold open at once (hold).
    #[arg(long, default_value_t = 1000)]
    streams: u64,
    /// Seconds over which the hold streams are opened.
    #[arg(long, default_value_t = 10.0)]
    ramp: f64,
    /// Seconds to wait after every stream is open before reading memory (hold).
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Short streams (5 tokens, no delay) sent before the hold's baseline reading, so that what
    /// the first generations allocate once (connections, caches) is not counted per stream.
    #[arg(long, default_value_t = 0)]
    prewarm: u64,
    /// Seconds between memory readings while the streams are open (hold).
    #[arg(long, default_value_t = 10.0)]
    sample_every: f64,
    /// Tokens each reply must have (checked when given).
    #[arg(long)]
    expect_tokens: Option<u64>,
    /// Per-call timeout in seconds, the whole body included.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Processes to watch, `name=PID` (repeatable): RSS (VmRSS) and CPU seconds.
    #[arg(long = "pid", value_parser = parse_pid)]
    pids: Vec<(String, u32)>,
    /// Name of the run in the report.
    #[arg(long)]
    label: Option<String>,
    /// NATS URL (nats-limit), e.g. nats://127.0.0.1:4222
    #[arg(long)]
    nats: Option<String>,
    /// NATS HTTP monitoring URL, e.g. http://127.0.0.1:8222: the tokens stream's consumer count.
    #[arg(long)]
    nats_monitor: Option<String>,
    /// The tokens stream (`<nats.subject_prefix>-tokens`).
    #[arg(long, default_value = "polylogue-tokens")]
    stream: String,
    /// New `max_consumers` of `--stream` (nats-limit).
    #[arg(long, default_value_t = 100_000)]
    max_consumers: i32,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Json,
    Stream,
    Hold,
    NatsLimit,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// The simulator's `POST /v1/chat/completions`.
    Direct,
    /// The edge's `POST /api/threads/{id}/models/{model}/messages`.
    Edge,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Stream => "stream",
            Self::Hold => "hold",
            Self::NatsLimit => "nats-limit",
        }
    }
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Edge => "edge",
        }
    }
}

fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("expected name=PID, got {s}"))?;
    let pid = pid
        .parse::<u32>()
        .map_err(|e| format!("bad PID in {s}: {e}"))?;
    Ok((name.to_owned(), pid))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run(cli))
}

fn progress(msg: &str) {
    let mut err = std::io::stderr().lock();
    // Progress only: a closed stderr must not stop the run.
    let _ = writeln!(err, "[inference] {msg}");
}

// ---------------------------------------------------------------------------------------------
// Setup: the request every call sends.

/// What every call needs; shared by all tasks.
struct Ctx {
    client: reqwest::Client,
    target: Target,
    /// One URL per thread (edge) or the simulator's endpoint (direct).
    urls: Vec<String>,
    cookie: Option<String>,
    /// The JSON body of a non-streaming and of a streaming call.
    body_json: String,
    body_stream: String,
    timeout: Duration,
}

impl Ctx {
    fn request(&self, i: u64, stream: bool) -> reqwest::RequestBuilder {
        let n = self.urls.len().max(1) as u64;
        let url = self
            .urls
            .get(usize::try_from(i % n).unwrap_or(0))
            .map_or("", String::as_str);
        let body = if stream {
            &self.body_stream
        } else {
            &self.body_json
        };
        let mut builder = self
            .client
            .post(url)
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone());
        match self.target {
            Target::Direct => builder = builder.bearer_auth("sk-bench"),
            Target::Edge => {
                if let Some(cookie) = &self.cookie {
                    builder = builder.header(COOKIE, cookie);
                }
            }
        }
        builder
    }

    /// Whether a non-streaming answer holds a reply.
    fn reply_ok(&self, body: &[u8]) -> bool {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return false;
        };
        let content = match self.target {
            Target::Direct => v.pointer("/choices/0/message/content"),
            Target::Edge => v.pointer("/data/assistantMessage/content"),
        };
        content
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty())
    }
}

async fn setup(cli: &Cli) -> Result<Ctx> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let timeout = Duration::from_secs_f64(cli.timeout);
    match cli.target {
        Target::Direct => {
            let sim = cli.sim.as_deref().context("--target direct needs --sim")?;
            let sim = sim.trim_end_matches('/').trim_end_matches("/v1");
            let body = |stream: bool| {
                let mut b = json!({
                    "model": cli.model,
                    "messages": [
                        {"role": "system", "content": cli.system},
                        {"role": "user", "content": cli.prompt},
                    ],
                    "temperature": 0.7,
                    "max_completion_tokens": cli.max_tokens,
                    "stream": stream,
                });
                if stream {
                    // As the router asks for it.
                    b["stream_options"] = json!({"include_usage": true});
                }
                b.to_string()
            };
            Ok(Ctx {
                client,
                target: Target::Direct,
                urls: vec![format!("{sim}/v1/chat/completions")],
                cookie: None,
                body_json: body(false),
                body_stream: body(true),
                timeout,
            })
        }
        Target::Edge => {
            let edge = cli.edge.as_deref().context("--target edge needs --edge")?;
            let edge = edge.trim_end_matches('/').to_owned();
            let username = cli
                .username
                .as_deref()
                .context("--target edge needs --username")?;
            let var = cli
                .password_env
                .as_deref()
                .context("--target edge needs --password-env")?;
            let password = std::env::var(var)
                .with_context(|| format!("environment variable {var} is not set"))?;
            let cookie = login_cookie(&client, &edge, username, &password).await?;
            if cli.threads == 0 {
                bail!("--threads must be at least 1");
            }
            let began = Instant::now();
            let threads = create_threads(&client, &edge, &cookie, cli.threads).await?;
            progress(&format!(
                "created {} threads in {:.1} s",
                threads.len(),
                began.elapsed().as_secs_f64()
            ));
            let urls = threads
                .iter()
                .map(|t| format!("{edge}/api/threads/{t}/models/{}/messages", cli.model))
                .collect();
            let body = |stream: bool| json!({"content": cli.prompt, "stream": stream}).to_string();
            Ok(Ctx {
                client,
                target: Target::Edge,
                urls,
                cookie: Some(cookie),
                body_json: body(false),
                body_stream: body(true),
                timeout,
            })
        }
    }
}

/// Logs in and returns `polylogue_access=<token>` from the `Set-Cookie` headers.
async fn login_cookie(
    client: &reqwest::Client,
    base: &str,
    username: &str,
    password: &str,
) -> Result<String> {
    let response = client
        .post(format!("{base}/api/login"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .context("POST /api/login")?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("login failed with {status}: {text}");
    }
    for value in response.headers().get_all(SET_COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        let pair = value.split(';').next().unwrap_or_default().trim();
        if let Some(token) = pair
            .strip_prefix(ACCESS_COOKIE)
            .and_then(|r| r.strip_prefix('='))
            && !token.is_empty()
        {
            return Ok(format!("{ACCESS_COOKIE}={token}"));
        }
    }
    bail!("the login response set no {ACCESS_COOKIE} cookie")
}

/// Creates `n` threads (16 requests in flight) and returns their ids.
async fn create_threads(
    client: &reqwest::Client,
    base: &str,
    cookie: &str,
    n: usize,
) -> Result<Vec<String>> {
    let url = format!("{base}/api/threads");
    let results: Vec<Result<String>> = futures::stream::iter(0..n)
        .map(|i| {
            let request = client
                .post(&url)
                .header(COOKIE, cookie)
                .json(&json!({ "title": format!("bench inference {i}") }));
            async move {
                let response = request.send().await.context("POST /api/threads")?;
                let status = response.status();
                let body: Value = response
                    .json()
                    .await
                    .context("POST /api/threads: reading the body")?;
                body.pointer("/data/thread/id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("POST /api/threads answered {status}: {body}"))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Open-loop scheduling

/// Spawns `make(i, scheduled)` at `scheduled = start + i / rate` for `i` in `0..count`, from a
/// dedicated OS thread that sleeps with `std::thread::sleep` (tokio's timer has 1 ms slack).
fn schedule<F, Fut, T>(
    start: Instant,
    rate: f64,
    count: u64,
    make: F,
) -> Result<std::thread::JoinHandle<Vec<JoinHandle<T>>>>
where
    F: Fn(u64, Instant) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || {
            let mut handles = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
            for i in 0..count {
                let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                }
                handles.push(runtime.spawn(make(i, scheduled)));
            }
            handles
        })
        .context("starting the scheduler thread")
}

async fn join_all<T: Send + 'static>(
    scheduler: std::thread::JoinHandle<Vec<JoinHandle<T>>>,
) -> Result<Vec<T>> {
    let handles = tokio::task::spawn_blocking(move || scheduler.join())
        .await
        .context("waiting for the scheduler")?
        .map_err(|_| anyhow!("the scheduler thread panicked"))?;
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.context("a request task failed")?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Calls

#[derive(Debug, Clone)]
enum Outcome {
    Success,
    /// A non-2xx status.
    Status(u16),
    /// Connect, timeout or body error.
    Transport(String),
    /// 2xx, but the answer is not a whole reply (no content, no end event, wrong token count…).
    Incomplete(String),
}

impl Outcome {
    fn key(&self) -> String {
        match self {
            Self::Success => "ok".into(),
            Self::Status(code) => format!("status {code}"),
            Self::Transport(kind) => format!("transport {kind}"),
            Self::Incomplete(why) => format!("incomplete: {why}"),
        }
    }
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if e.is_body() || e.is_decode() {
        "body".into()
    } else {
        "other".into()
    }
}

struct JsonSample {
    scheduled: Instant,
    sent: Instant,
    done: Instant,
    outcome: Outcome,
}

async fn json_call(ctx: Arc<Ctx>, i: u64, scheduled: Instant) -> JsonSample {
    let sent = Instant::now();
    let outcome = match ctx.request(i, false).send().await {
        Ok(response) => {
            let status = response.status();
            match response.bytes().await {
                Ok(body) if status.is_success() => {
                    if ctx.reply_ok(&body) {
                        Outcome::Success
                    } else {
                        Outcome::Incomplete("no reply content".into())
                    }
                }
                Ok(_) => Outcome::Status(status.as_u16()),
                Err(e) => Outcome::Transport(error_kind(&e)),
            }
        }
        Err(e) => Outcome::Transport(error_kind(&e)),
    };
    JsonSample {
        scheduled,
        sent,
        done: Instant::now(),
        outcome,
    }
}

/// One server-sent event.
#[derive(Default)]
struct SseEvent {
    event: String,
    data: String,
}

/// Incremental `text/event-stream` parser: feed it chunks, take whole events.
#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = self
            .buf
            .get(start..)
            .and_then(|rest| rest.windows(2).position(|w| w == b"\n\n"))
        {
            if let Some(block) = self.buf.get(start..start + pos)
                && let Some(e) = parse_block(block)
            {
                out.push(e);
            }
            start += pos + 2;
        }
        self.buf.drain(..start);
    }
}

fn parse_block(block: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(block);
    let mut e = SseEvent::default();
    let mut any = false;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => {
                e.event = value.to_owned();
                any = true;
            }
            "data" => {
                if !e.data.is_empty() {
                    e.data.push('\n');
                }
                e.data.push_str(value);
                any = true;
            }
            _ => {}
        }
    }
    any.then_some(e)
}

/// What the client saw of one stream.
#[derive(Default, Clone, Copy)]
struct StreamMarks {
    started: bool,
    tokens: u64,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    completed: bool,
}

enum Seen {
    Start,
    Token,
    Complete,
    Error,
    Other,
}

fn classify(target: Target, e: &SseEvent) -> Seen {
    match target {
        Target::Edge => match e.event.as_str() {
            "message_start" => Seen::Start,
            "token" => Seen::Token,
            "message_complete" => Seen::Complete,
            "error" => Seen::Error,
            _ => Seen::Other,
        },
        Target::Direct => {
            if e.data == "[DONE]" {
                return Seen::Complete;
            }
            let Ok(v) = serde_json::from_str::<Value>(&e.data) else {
                return Seen::Error;
            };
            if v.get("error").is_some() {
                return Seen::Error;
            }
            let delta = v.pointer("/choices/0/delta");
            if delta
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str)
                .is_some_and(|c| !c.is_empty())
            {
                Seen::Token
            } else if delta.and_then(|d| d.get("role")).is_some() {
                Seen::Start
            } else {
                Seen::Other
            }
        }
    }
}

/// `CODE: message` of an `error` event (or a provider error chunk), without the message id, so
/// that equal errors count together.
fn error_summary(data: &str) -> String {
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let e = v.get("error").unwrap_or(&v);
    let code = e
        .get("code")
        .and_then(Value::as_str)
        .or_else(|| e.get("type").and_then(Value::as_str))
        .unwrap_or("?");
    let message = e.get("message").and_then(Value::as_str).unwrap_or(data);
    format!("{code}: {}", message.chars().take(120).collect::<String>())
}

/// Counters the hold mode watches while its streams run.
#[derive(Default)]
struct Live {
    /// Streams that have had their start and a first token.
    ready: AtomicU64,
    /// Streams that have ended (any way), counted after `ready` if they got there.
    ended: AtomicU64,
    /// Streams that ended before being ready.
    failed_early: AtomicU64,
}

struct StreamSample {
    scheduled: Instant,
    sent: Instant,
    done: Instant,
    marks: StreamMarks,
    /// Gaps between successive token events, nanoseconds.
    gaps: Vec<u64>,
    outcome: Outcome,
}

async fn stream_call(
    ctx: Arc<Ctx>,
    i: u64,
    scheduled: Instant,
    expect: Option<u64>,
    live: Option<Arc<Live>>,
) -> StreamSample {
    let sent = Instant::now();
    let mut marks = StreamMarks::default();
    let mut gaps = Vec::with_capacity(64);
    let mut ready = false;
    let outcome = match ctx.request(i, true).send().await {
        Err(e) => Outcome::Transport(error_kind(&e)),
        Ok(response) if !response.status().is_success() => {
            Outcome::Status(response.status().as_u16())
        }
        Ok(response) => {
            let mut body = response.bytes_stream();
            let mut parser = SseParser::default();
            let mut events = Vec::new();
            let mut error = None;
            let mut transport = None;
            'read: while let Some(chunk) = body.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        transport = Some(error_kind(&e));
                        break;
                    }
                };
                let at = Instant::now();
                parser.push(&chunk, &mut events);
                for e in events.drain(..) {
                    match classify(ctx.target, &e) {
                        Seen::Start => marks.started = true,
                        Seen::Token => {
                            if let Some(last) = marks.last_token {
                                gaps.push(nanos(at.saturating_duration_since(last)));
                            } else {
                                marks.first_token = Some(at);
                            }
                            marks.last_token = Some(at);
                            marks.tokens += 1;
                        }
                        Seen::Complete => marks.completed = true,
                        Seen::Error => {
                            error = Some(error_summary(&e.data));
                            break 'read;
                        }
                        Seen::Other => {}
                    }
                }
                if !ready
                    && marks.started
                    && marks.tokens > 0
                    && let Some(live) = &live
                {
                    ready = true;
                    live.ready.fetch_add(1, Ordering::SeqCst);
                }
            }
            if let Some(kind) = transport {
                Outcome::Transport(kind)
            } else if let Some(data) = error {
                Outcome::Incomplete(format!(
                    "error event after start={} tokens={} ({data})",
                    marks.started,
                    marks.tokens.min(1)
                ))
            } else if !marks.started {
                Outcome::Incomplete("no start event".into())
            } else if !marks.completed {
                Outcome::Incomplete("no completion event".into())
            } else if let Some(n) = expect
                && marks.tokens != n
            {
                Outcome::Incomplete(format!("{} tokens, expected {n}", marks.tokens))
            } else if marks.tokens == 0 {
                Outcome::Incomplete("no token".into())
            } else {
                Outcome::Success
            }
        }
    };
    if let Some(live) = &live {
        if !ready {
            live.failed_early.fetch_add(1, Ordering::SeqCst);
        }
        live.ended.fetch_add(1, Ordering::SeqCst);
    }
    StreamSample {
        scheduled,
        sent,
        done: Instant::now(),
        marks,
        gaps,
        outcome,
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: RSS and CPU from /proc

#[derive(Clone)]
struct ProcSnap {
    rss_kb: Option<u64>,
    cpu_s: Option<f64>,
}

fn proc_snap(pid: u32) -> ProcSnap {
    let rss_kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        });
    ProcSnap {
        rss_kb,
        cpu_s: proc_cpu_seconds(&format!("/proc/{pid}/stat")),
    }
}

/// User + system CPU seconds from a `/proc/.../stat` file (clock ticks, 100 per second).
fn proc_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' start at field 3.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

fn snapshot(pids: &[(String, u32)]) -> BTreeMap<String, ProcSnap> {
    let mut out: BTreeMap<String, ProcSnap> = pids
        .iter()
        .map(|(name, pid)| (name.clone(), proc_snap(*pid)))
        .collect();
    out.insert(
        "bench".into(),
        ProcSnap {
            rss_kb: None,
            cpu_s: proc_cpu_seconds("/proc/self/stat"),
        },
    );
    out
}

fn rss_json(s: &BTreeMap<String, ProcSnap>) -> Value {
    s.iter()
        .filter_map(|(k, v)| v.rss_kb.map(|r| (k.clone(), json!(r))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn cpu_json(before: &BTreeMap<String, ProcSnap>, after: &BTreeMap<String, ProcSnap>) -> Value {
    before
        .iter()
        .filter_map(|(k, b)| {
            let a = after.get(k)?;
            Some((k.clone(), json!(a.cpu_s? - b.cpu_s?)))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

// ---------------------------------------------------------------------------------------------
// Statistics

fn hist() -> Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, HIST_MAX_US, 3).context("histogram")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Like `hist_json`, for a histogram of nanoseconds, in microseconds.
fn hist_json_ns(h: &Histogram<u64>) -> Value {
    let us = |v: u64| v as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_us": if h.is_empty() { 0.0 } else { us(h.value_at_quantile(0.50)) },
        "p90_us": if h.is_empty() { 0.0 } else { us(h.value_at_quantile(0.90)) },
        "p99_us": if h.is_empty() { 0.0 } else { us(h.value_at_quantile(0.99)) },
        "max_us": if h.is_empty() { 0.0 } else { us(h.max()) },
        "mean_us": if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
    })
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

fn hist_json(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_ms": pct(h, 0.50),
        "p90_ms": pct(h, 0.90),
        "p99_ms": pct(h, 0.99),
        "max_ms": if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
        "mean_ms": if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
    })
}

#[derive(Default)]
struct Tally {
    requests: u64,
    ok: u64,
    outcomes: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, o: &Outcome) {
        self.requests += 1;
        if matches!(o, Outcome::Success) {
            self.ok += 1;
        }
        *self.outcomes.entry(o.key()).or_default() += 1;
    }

    fn json(&self) -> Value {
        json!({
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.requests - self.ok,
            "outcomes": self.outcomes,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Modes

async fn run(cli: Cli) -> Result<()> {
    for (name, v) in [
        ("--rate", cli.rate),
        ("--duration", cli.duration),
        ("--timeout", cli.timeout),
        ("--ramp", cli.ramp),
        ("--sample-every", cli.sample_every),
    ] {
        if !(v.is_finite() && v > 0.0) {
            bail!("{name} must be a positive number");
        }
    }
    if !(cli.warmup.is_finite() && cli.warmup >= 0.0 && cli.settle.is_finite() && cli.settle >= 0.0)
    {
        bail!("--warmup and --settle must be 0 or more");
    }
    if cli.mode == Mode::NatsLimit {
        let summary = nats_limit(&cli).await?;
        writeln!(std::io::stdout().lock(), "{summary}")?;
        return Ok(());
    }
    if cli.mode == Mode::Hold && cli.target != Target::Edge {
        bail!("--mode hold measures the edge: use --target edge");
    }
    let ctx = Arc::new(setup(&cli).await?);
    // One call before the run: a configuration error fails here, not thousands of times.
    check(&ctx, &cli).await?;
    let mut summary = match cli.mode {
        Mode::Json => run_json(&cli, ctx).await?,
        Mode::Stream => run_stream(&cli, ctx).await?,
        Mode::Hold | Mode::NatsLimit => run_hold(&cli, ctx).await?,
    };
    summary["consumers_at_end"] = json!(consumers(&cli).await);
    summary["tokens_stream_last_seq_at_end"] = json!(stream_state(&cli, "last_seq").await);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{summary}")?;
    Ok(())
}

async fn check(ctx: &Arc<Ctx>, cli: &Cli) -> Result<()> {
    let stream = cli.mode != Mode::Json;
    if stream && cli.mode == Mode::Hold {
        // A hold-mode reply lasts minutes; the stream calls of the run check themselves.
        return Ok(());
    }
    let outcome = if stream {
        stream_call(Arc::clone(ctx), 0, Instant::now(), cli.expect_tokens, None)
            .await
            .outcome
    } else {
        json_call(Arc::clone(ctx), 0, Instant::now()).await.outcome
    };
    if !matches!(outcome, Outcome::Success) {
        // Show the answer in full.
        let response = ctx
            .request(0, stream)
            .send()
            .await
            .context("the check call")?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        bail!(
            "the check call failed ({}): {status} {}",
            outcome.key(),
            text.chars().take(2000).collect::<String>()
        );
    }
    Ok(())
}

fn base_json(cli: &Cli, ctx: &Ctx) -> Value {
    json!({
        "kind": "inference",
        "mode": cli.mode.name(),
        "target": cli.target.name(),
        "label": cli.label,
        "model": cli.model,
        "prompt": cli.prompt,
        "threads": if ctx.target == Target::Edge { json!(ctx.urls.len()) } else { Value::Null },
    })
}

fn counts(cli: &Cli) -> (u64, u64) {
    let warm = (cli.rate * cli.warmup).round() as u64;
    let measured = (cli.rate * cli.duration).round() as u64;
    (warm, measured)
}

async fn run_json(cli: &Cli, ctx: Arc<Ctx>) -> Result<Value> {
    let (warm, measured) = counts(cli);
    progress(&format!(
        "json {}: {} calls/s, {} s warm-up + {} s recorded",
        cli.target.name(),
        cli.rate,
        cli.warmup,
        cli.duration
    ));
    let start = Instant::now() + Duration::from_millis(20);
    let before = snapshot(&cli.pids);
    let c = Arc::clone(&ctx);
    let scheduler = schedule(start, cli.rate, warm + measured, move |i, at| {
        json_call(Arc::clone(&c), i + 1, at)
    })?;
    let samples = join_all(scheduler).await?;
    let after = snapshot(&cli.pids);

    let (mut latency, mut latency_ok, mut service, mut lag) = (hist()?, hist()?, hist()?, hist()?);
    let mut tally = Tally::default();
    // p99 per quarter of the recorded schedule: alike at a sustainable rate, climbing above it.
    let mut quarters = [hist()?, hist()?, hist()?, hist()?];
    let n = usize::try_from(measured).unwrap_or(1).max(1);
    let rec_start = start + Duration::from_secs_f64(cli.warmup);
    let mut last = rec_start;
    for (i, s) in samples
        .iter()
        .skip(usize::try_from(warm).unwrap_or(0))
        .enumerate()
    {
        let l = micros(s.done.saturating_duration_since(s.scheduled));
        latency.saturating_record(l);
        if let Some(q) = quarters.get_mut(i * 4 / n) {
            q.saturating_record(l);
        }
        if matches!(s.outcome, Outcome::Success) {
            latency_ok.saturating_record(l);
        }
        service.saturating_record(micros(s.done.saturating_duration_since(s.sent)));
        lag.saturating_record(micros(s.sent.saturating_duration_since(s.scheduled)));
        tally.add(&s.outcome);
        last = last.max(s.done);
    }
    let warm_errors = samples
        .iter()
        .take(usize::try_from(warm).unwrap_or(0))
        .filter(|s| !matches!(s.outcome, Outcome::Success))
        .count();
    let elapsed = last.saturating_duration_since(rec_start).as_secs_f64();
    let mut v = base_json(cli, &ctx);
    v["rate"] = json!(cli.rate);
    v["warmup_s"] = json!(cli.warmup);
    v["duration_s"] = json!(cli.duration);
    v["tally"] = tally.json();
    v["warmup_errors"] = json!(warm_errors);
    v["achieved_ok_per_s"] = json!(if elapsed > 0.0 {
        tally.ok as f64 / elapsed
    } else {
        0.0
    });
    v["latency"] = hist_json(&latency);
    v["latency_ok"] = hist_json(&latency_ok);
    v["latency_by_quarter"] = quarters.iter().map(hist_json).collect::<Vec<_>>().into();
    v["service"] = hist_json(&service);
    v["send_lag"] = hist_json(&lag);
    v["cpu_s"] = cpu_json(&before, &after);
    v["rss_kb_after"] = rss_json(&after);
    Ok(v)
}

async fn run_stream(cli: &Cli, ctx: Arc<Ctx>) -> Result<Value> {
    let (warm, measured) = counts(cli);
    progress(&format!(
        "stream {}: {} new streams/s, {} s warm-up + {} s recorded",
        cli.target.name(),
        cli.rate,
        cli.warmup,
        cli.duration
    ));
    let start = Instant::now() + Duration::from_millis(20);
    let before = snapshot(&cli.pids);
    let c = Arc::clone(&ctx);
    let expect = cli.expect_tokens;
    let scheduler = schedule(start, cli.rate, warm + measured, move |i, at| {
        stream_call(Arc::clone(&c), i + 1, at, expect, None)
    })?;
    let samples = join_all(scheduler).await?;
    let after = snapshot(&cli.pids);

    let (mut ttft, mut ttft_service, mut total) = (hist()?, hist()?, hist()?);
    // Gaps in nanoseconds: at zero delay most are a few microseconds.
    let mut gaps =
        Histogram::<u64>::new_with_bounds(1, HIST_MAX_US * 1000, 3).context("histogram")?;
    let mut per_stream_mean_gap = gaps.clone();
    let mut back_to_back = 0_u64;
    let mut tally = Tally::default();
    let (mut min_tokens, mut max_tokens) = (u64::MAX, 0);
    for s in samples.iter().skip(usize::try_from(warm).unwrap_or(0)) {
        tally.add(&s.outcome);
        min_tokens = min_tokens.min(s.marks.tokens);
        max_tokens = max_tokens.max(s.marks.tokens);
        if let Some(first) = s.marks.first_token {
            ttft.saturating_record(micros(first.saturating_duration_since(s.scheduled)));
            ttft_service.saturating_record(micros(first.saturating_duration_since(s.sent)));
        }
        for g in &s.gaps {
            gaps.saturating_record(*g);
            if *g < 5_000 {
                back_to_back += 1;
            }
        }
        if !s.gaps.is_empty() {
            per_stream_mean_gap.saturating_record(s.gaps.iter().sum::<u64>() / s.gaps.len() as u64);
        }
        total.saturating_record(micros(s.done.saturating_duration_since(s.scheduled)));
    }
    let warm_errors = samples
        .iter()
        .take(usize::try_from(warm).unwrap_or(0))
        .filter(|s| !matches!(s.outcome, Outcome::Success))
        .count();
    let mut v = base_json(cli, &ctx);
    v["rate"] = json!(cli.rate);
    v["warmup_s"] = json!(cli.warmup);
    v["duration_s"] = json!(cli.duration);
    v["tally"] = tally.json();
    v["warmup_errors"] = json!(warm_errors);
    v["tokens_per_stream"] = json!({
        "min": if min_tokens == u64::MAX { 0 } else { min_tokens },
        "max": max_tokens,
    });
    v["ttft"] = hist_json(&ttft);
    v["ttft_from_sent"] = hist_json(&ttft_service);
    v["gap"] = hist_json_ns(&gaps);
    // Gaps under 5 µs: tokens that arrived together with the one before (one read, one batch).
    v["gap_under_5us_share"] = json!(if gaps.is_empty() {
        0.0
    } else {
        back_to_back as f64 / gaps.len() as f64
    });
    v["gap_stream_mean"] = hist_json_ns(&per_stream_mean_gap);
    v["stream_total"] = hist_json(&total);
    v["cpu_s"] = cpu_json(&before, &after);
    v["rss_kb_after"] = rss_json(&after);
    Ok(v)
}

async fn run_hold(cli: &Cli, ctx: Arc<Ctx>) -> Result<Value> {
    let n = cli.streams;
    if n == 0 {
        bail!("--streams must be at least 1");
    }
    let rate = n as f64 / cli.ramp;
    if cli.prewarm > 0 {
        let warm = Arc::new(Ctx {
            client: ctx.client.clone(),
            target: ctx.target,
            urls: ctx.urls.clone(),
            cookie: ctx.cookie.clone(),
            body_json: String::new(),
            body_stream: json!({"content": "Hello! [sim tokens=5]", "stream": true}).to_string(),
            timeout: ctx.timeout,
        });
        let outcomes: Vec<Outcome> = futures::stream::iter(0..cli.prewarm)
            .map(|i| {
                let w = Arc::clone(&warm);
                async move {
                    stream_call(w, i, Instant::now(), Some(5), None)
                        .await
                        .outcome
                }
            })
            .buffer_unordered(10)
            .collect()
            .await;
        if let Some(bad) = outcomes.iter().find(|o| !matches!(o, Outcome::Success)) {
            bail!("a pre-warm stream failed: {}", bad.key());
        }
        progress(&format!("hold: {} pre-warm streams done", cli.prewarm));
    }
    // Let whatever the setup (thread creation) started settle before the baseline, and the
    // consumers of earlier streams (they linger 30 s) go away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet_by = Instant::now() + Duration::from_secs(60);
    while let Some(c) = consumers(cli).await
        && c > 0
        && Instant::now() < quiet_by
    {
        progress(&format!(
            "hold: waiting for {c} lingering consumers to expire"
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let baseline = snapshot(&cli.pids);
    let consumers_before = consumers(cli).await;
    let last_seq_before = stream_state(cli, "last_seq").await;
    progress(&format!(
        "hold: opening {n} streams over {} s ({rate:.0}/s)",
        cli.ramp
    ));
    let live = Arc::new(Live::default());
    let start = Instant::now() + Duration::from_millis(20);
    let (c, l) = (Arc::clone(&ctx), Arc::clone(&live));
    let expect = cli.expect_tokens;
    let scheduler = schedule(start, rate, n, move |i, at| {
        stream_call(Arc::clone(&c), i, at, expect, Some(Arc::clone(&l)))
    })?;

    // Until every stream is ready or has failed.
    let deadline = start + Duration::from_secs_f64(cli.ramp + 120.0);
    let mut last_note = Instant::now();
    loop {
        let ready = live.ready.load(Ordering::SeqCst);
        let failed = live.failed_early.load(Ordering::SeqCst);
        if ready + failed >= n || Instant::now() >= deadline {
            break;
        }
        if last_note.elapsed() >= Duration::from_secs(2) {
            progress(&format!("hold: {ready} ready, {failed} failed"));
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_ready_after = start.elapsed().as_secs_f64();
    progress(&format!(
        "hold: {} ready, {} failed after {all_ready_after:.1} s",
        live.ready.load(Ordering::SeqCst),
        live.failed_early.load(Ordering::SeqCst)
    ));
    tokio::time::sleep(Duration::from_secs_f64(cli.settle)).await;
    let open_before_read = open(&live);
    let at_open = snapshot(&cli.pids);
    let open_after_read = open(&live);
    let consumers_open = consumers(cli).await;
    progress(&format!(
        "hold: read memory with {open_before_read}..{open_after_read} streams open"
    ));

    // Readings while the streams run, until they have all ended.
    let mut series = vec![series_point(
        start,
        &live,
        &at_open,
        consumers_open,
        "all open (the reading used)",
    )];
    let waiter = tokio::spawn(join_all(scheduler));
    let every = Duration::from_secs_f64(cli.sample_every);
    let mut next = Instant::now() + every;
    while !waiter.is_finished() {
        if Instant::now() >= next {
            let s = snapshot(&cli.pids);
            let c = consumers(cli).await;
            series.push(series_point(start, &live, &s, c, ""));
            progress(&format!("hold: {} streams open", open(&live)));
            next += every;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let samples = waiter.await.context("waiting for the streams")??;
    let ended_after = start.elapsed().as_secs_f64();
    // Past the 30 s for which the ended streams' consumers linger.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let after = snapshot(&cli.pids);
    let c = consumers(cli).await;
    series.push(series_point(
        start,
        &live,
        &after,
        c,
        "40 s after the last ended",
    ));

    let mut tally = Tally::default();
    let mut ttft = hist()?;
    let mut duration = hist()?;
    for s in &samples {
        tally.add(&s.outcome);
        if let Some(first) = s.marks.first_token {
            ttft.saturating_record(micros(first.saturating_duration_since(s.scheduled)));
        }
        duration.saturating_record(micros(s.done.saturating_duration_since(s.sent)));
    }
    let mut per_stream = serde_json::Map::new();
    let mut total_kb = 0.0;
    let open_n = open_before_read.min(open_after_read);
    for (name, b) in &baseline {
        let (Some(before), Some(during)) = (b.rss_kb, at_open.get(name).and_then(|s| s.rss_kb))
        else {
            continue;
        };
        let kb = (during as f64 - before as f64) / open_n.max(1) as f64;
        per_stream.insert(name.clone(), json!(kb));
        if matches!(name.as_str(), "edge" | "router" | "nats") {
            total_kb += kb;
        }
    }
    let mut v = base_json(cli, &ctx);
    v["streams"] = json!(n);
    v["ramp_s"] = json!(cli.ramp);
    v["all_ready_after_s"] = json!(all_ready_after);
    v["ready"] = json!(live.ready.load(Ordering::SeqCst));
    v["failed_before_ready"] = json!(live.failed_early.load(Ordering::SeqCst));
    v["open_at_reading"] = json!([open_before_read, open_after_read]);
    v["consumers_before"] = json!(consumers_before);
    v["tokens_stream_last_seq_before"] = json!(last_seq_before);
    v["consumers_open"] = json!(consumers_open);
    v["rss_kb_before"] = rss_json(&baseline);
    v["rss_kb_open"] = rss_json(&at_open);
    v["rss_kb_after"] = rss_json(&after);
    v["kb_per_stream"] = Value::Object(per_stream);
    v["kb_per_stream_edge_router_nats"] = json!(total_kb);
    v["tally"] = tally.json();
    v["ttft"] = hist_json(&ttft);
    v["stream_duration"] = hist_json(&duration);
    v["last_ended_after_s"] = json!(ended_after);
    v["cpu_s_open_to_end"] = cpu_json(&at_open, &after);
    v["cpu_s_ramp"] = cpu_json(&baseline, &at_open);
    v["series"] = Value::Array(series);
    Ok(v)
}

fn open(live: &Live) -> u64 {
    let ready = live.ready.load(Ordering::SeqCst);
    let ended = live.ended.load(Ordering::SeqCst);
    let failed = live.failed_early.load(Ordering::SeqCst);
    // `ended` counts the early failures too; they were never ready.
    ready.saturating_sub(ended.saturating_sub(failed))
}

fn series_point(
    start: Instant,
    live: &Live,
    snap: &BTreeMap<String, ProcSnap>,
    consumers: Option<u64>,
    note: &str,
) -> Value {
    json!({
        "t_s": start.elapsed().as_secs_f64(),
        "open": open(live),
        "consumers": consumers,
        "rss_kb": rss_json(snap),
        "cpu_s": snap.iter().filter_map(|(k, v)| v.cpu_s.map(|c| (k.clone(), json!(c)))).collect::<serde_json::Map<_, _>>(),
        "note": note,
    })
}

// ---------------------------------------------------------------------------------------------
// NATS: the tokens stream's consumers

/// The tokens stream's consumer count from the NATS monitoring endpoint, if one was given.
async fn consumers(cli: &Cli) -> Option<u64> {
    stream_state(cli, "consumer_count").await
}

/// A field of the tokens stream's state (`consumer_count`, `messages`) from `/jsz`.
async fn stream_state(cli: &Cli, field: &str) -> Option<u64> {
    let base = cli.nats_monitor.as_deref()?.trim_end_matches('/');
    let body: Value = reqwest::get(format!("{base}/jsz?streams=true"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body.get("account_details")?
        .as_array()?
        .iter()
        .filter_map(|a| a.get("stream_detail")?.as_array())
        .flatten()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(cli.stream.as_str()))?
        .get("state")?
        .get(field)?
        .as_u64()
}

async fn nats_limit(cli: &Cli) -> Result<Value> {
    let url = cli
        .nats
        .as_deref()
        .context("--mode nats-limit needs --nats")?;
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(&cli.stream)
        .await
        .with_context(|| format!("stream {}", cli.stream))?;
    let mut config = stream.info().await.context("stream info")?.config.clone();
    let before = config.max_consumers;
    config.max_consumers = cli.max_consumers;
    let info = js
        .update_stream(config)
        .await
        .context("updating the stream")?;
    progress(&format!(
        "{}: max_consumers {before} -> {}",
        cli.stream, info.config.max_consumers
    ));
    Ok(json!({
        "kind": "nats-limit",
        "label": cli.label,
        "stream": cli.stream,
        "max_consumers_before": before,
        "max_consumers_after": info.config.max_consumers,
        "consumers": consumers(cli).await,
    }))
}
