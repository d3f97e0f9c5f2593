//! `polylogue-bench`: latency and throughput of the edge API under a fixed arrival rate, and the
//! cost of one argon2id hash with the auth service's parameters.
//!
//! `http` sends requests on a fixed schedule (open loop): request `i` is due at
//! `start + i / rate`, whether or not earlier requests have answered, and its latency is measured
//! from that *scheduled* instant to the end of its response body. A closed-loop client (N workers
//! that each wait for an answer before sending again) slows down when the server does, so it never
//! sends the requests that would have waited and reports a latency far better than the one real
//! users see ("coordinated omission"). Here a stall shows up in every request scheduled during it,
//! and a rate above what the server can sustain shows up as latency that grows for the whole run.
//!
//! The scheduler runs on its own OS thread and sleeps with `std::thread::sleep` (tens of
//! microseconds of slack on Linux, against tokio's 1 ms timer wheel); each request is spawned on
//! the tokio runtime at its instant. Besides latency from the scheduled instant it reports the
//! *service time* (from the moment the request actually left to its answer) and the *send lag*
//! (how late the scheduler fired), so one can tell a slow server from a starved load generator.
//!
//! `argon2` times `hash_password` with `Params::new(19456, 2, 1, None)`, argon2id v0x13 — what
//! every `POST /api/login` costs the auth service — which bounds the login rate per core.

use anyhow::{Context, Result, anyhow, bail};
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The cookie that carries the access token (`services/edge-api/src/cookies.rs`).
const ACCESS_COOKIE: &str = "polylogue_access";
/// Highest latency the histograms hold: one hour, in microseconds.
const HIST_MAX_US: u64 = 3_600_000_000;

#[derive(Parser)]
#[command(
    name = "polylogue-bench",
    about = "Open-loop load generator for Polylogue"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fixed-rate HTTP load against a running edge API.
    Http(HttpArgs),
    /// Time argon2id hashes with the auth service's parameters.
    Argon2(Argon2Args),
}

#[derive(Args)]
struct HttpArgs {
    /// Base URL of the edge API, e.g. http://127.0.0.1:8080
    #[arg(long)]
    url: String,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Requests per second (the arrival rate, kept whatever the latency).
    #[arg(long)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long)]
    duration: f64,
    #[arg(long)]
    username: String,
    /// Name of the environment variable that holds the password.
    #[arg(long)]
    password_env: String,
    /// Cap on requests in flight (and idle keep-alive connections). A request that waits for a
    /// slot still counts its wait. Default: no cap, one connection per concurrent request.
    #[arg(long)]
    connections: Option<usize>,
    /// Per-request timeout in seconds; a request that exceeds it is a transport error.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Print the Markdown table header before the row.
    #[arg(long)]
    header: bool,
    /// Path and query for `--scenario get`, e.g. `/api/threads?limit=20`.
    #[arg(long)]
    path: Option<String>,
    /// Name of the row in the report (default: the scenario's).
    #[arg(long)]
    label: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    /// `GET /api/version` with a session cookie (logged in once before the run).
    Version,
    /// `POST /api/login` with the user's credentials (one argon2id verification each).
    Login,
    /// `GET --path` with a session cookie (logged in once before the run).
    Get,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Version => "GET /api/version",
            Self::Login => "POST /api/login",
            Self::Get => "GET",
        }
    }
}

#[derive(Args)]
struct Argon2Args {
    /// Hashes to time (per thread).
    #[arg(long, default_value_t = 20)]
    iterations: u32,
    /// Threads hashing at once; above 1 it also reports the aggregate hashes per second.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Seconds of untimed hashing first (per thread), so that an idle CPU has woken up: on this
    /// VM the first hashes after a pause take up to twice as long.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Print the Markdown table header before the row.
    #[arg(long)]
    header: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Http(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("building the tokio runtime")?;
            runtime.block_on(run_http(args))
        }
        Command::Argon2(args) => run_argon2(&args),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// What one request needs; cloned into every spawned task.
#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    scenario: Scenario,
    url: String,
    /// `polylogue_access=<token>` for `version`.
    cookie: Option<String>,
    /// JSON credentials for `login`.
    body: String,
    slots: Option<Arc<Semaphore>>,
}

enum Outcome {
    Success,
    Status(u16),
    Transport(String),
}

struct Sample {
    scheduled: Instant,
    /// When the request left (after the scheduler fired and a slot was free).
    sent: Instant,
    done: Instant,
    outcome: Outcome,
}

async fn run_http(args: HttpArgs) -> Result<()> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number");
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    if args.connections == Some(0) {
        bail!("--connections must be at least 1");
    }
    let password = std::env::var(&args.password_env)
        .with_context(|| format!("environment variable {} is not set", args.password_env))?;
    let base = args.url.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections.unwrap_or(usize::MAX))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs_f64(args.timeout))
        .build()
        .context("building the HTTP client")?;
    let body = serde_json::json!({ "username": args.username, "password": password }).to_string();

    let (url, cookie) = match args.scenario {
        Scenario::Version | Scenario::Get => {
            let cookie = login_cookie(&client, &base, &body).await?;
            let path = match args.scenario {
                Scenario::Get => args.path.clone().context("--scenario get needs --path")?,
                _ => "/api/version".to_owned(),
            };
            let url = format!("{base}{path}");
            // Fail before the run, not 10 000 times during it.
            let check = client
                .get(&url)
                .header(COOKIE, &cookie)
                .send()
                .await
                .with_context(|| format!("GET {path} before the run"))?;
            if !check.status().is_success() {
                bail!(
                    "GET {path} with the session cookie answered {} before the run",
                    check.status()
                );
            }
            (url, Some(cookie))
        }
        Scenario::Login => (format!("{base}/api/login"), None),
    };

    let target = Target {
        client,
        scenario: args.scenario,
        url,
        cookie,
        body,
        slots: args.connections.map(|c| Arc::new(Semaphore::new(c))),
    };
    let count = (args.rate * args.duration).round() as u64;
    let rate = args.rate;
    let runtime = tokio::runtime::Handle::current();
    // A little head room so the first instants are not already late.
    let start = Instant::now() + Duration::from_millis(20);
    let cpu_before = process_cpu_seconds();
    let scheduler = std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || schedule(&runtime, &target, start, rate, count))
        .context("starting the scheduler thread")?;
    let handles = tokio::task::spawn_blocking(move || scheduler.join())
        .await
        .context("waiting for the scheduler")?
        .map_err(|_| anyhow!("the scheduler thread panicked"))?;

    let mut samples = Vec::with_capacity(handles.len());
    for handle in handles {
        samples.push(handle.await.context("a request task failed")?);
    }
    let mut report = Report::new(&args, start, &samples)?;
    report.bench_cpu = cpu_before
        .zip(process_cpu_seconds())
        .map(|(before, after)| after - before);
    print_http(&report, args.header);
    Ok(())
}

/// Logs in once and returns `polylogue_access=<token>` from the `Set-Cookie` headers.
async fn login_cookie(client: &reqwest::Client, base: &str, body: &str) -> Result<String> {
    let response = client
        .post(format!("{base}/api/login"))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_owned())
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

/// Spawns request `i` at `start + i / rate` for `i` in `0..count`; never waits for answers.
fn schedule(
    runtime: &tokio::runtime::Handle,
    target: &Target,
    start: Instant,
    rate: f64,
    count: u64,
) -> Vec<JoinHandle<Sample>> {
    let mut handles = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for i in 0..count {
        let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        handles.push(runtime.spawn(request(target.clone(), scheduled)));
    }
    handles
}

async fn request(target: Target, scheduled: Instant) -> Sample {
    let _slot = match &target.slots {
        // The semaphore is never closed, so acquiring only fails if it were; count it as sent.
        Some(slots) => slots.clone().acquire_owned().await.ok(),
        None => None,
    };
    let sent = Instant::now();
    let builder = match target.scenario {
        Scenario::Version | Scenario::Get => {
            let builder = target.client.get(&target.url);
            match &target.cookie {
                Some(cookie) => builder.header(COOKIE, cookie),
                None => builder,
            }
        }
        Scenario::Login => target
            .client
            .post(&target.url)
            .header(CONTENT_TYPE, "application/json")
            .body(target.body.clone()),
    };
    let outcome = match builder.send().await {
        Ok(response) => {
            let status = response.status();
            // The latency ends with the whole body, not the headers.
            match response.bytes().await {
                Ok(_) if status.is_success() => Outcome::Success,
                Ok(_) => Outcome::Status(status.as_u16()),
                Err(e) => Outcome::Transport(error_kind(&e)),
            }
        }
        Err(e) => Outcome::Transport(error_kind(&e)),
    };
    Sample {
        scheduled,
        sent,
        done: Instant::now(),
        outcome,
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

struct Report {
    scenario: String,
    rate: f64,
    duration: f64,
    connections: Option<usize>,
    requests: u64,
    ok: u64,
    non_2xx: u64,
    transport: u64,
    statuses: BTreeMap<u16, u64>,
    transport_kinds: BTreeMap<String, u64>,
    /// Seconds from the first scheduled instant to the last answer.
    elapsed: f64,
    /// Every request, from its scheduled instant to its answer (errors included).
    latency: Histogram<u64>,
    /// 2xx requests only, from the scheduled instant.
    latency_ok: Histogram<u64>,
    /// From the moment the request left to its answer.
    service: Histogram<u64>,
    /// How late the request left after its scheduled instant (scheduler + slot wait).
    send_lag: Histogram<u64>,
    /// Latency from the scheduled instant, per quarter of the schedule: under a sustainable rate
    /// the quarters look alike; above it the queue, and so the latency, grows quarter by quarter.
    quarters: [Histogram<u64>; 4],
    /// CPU seconds (user + system, all threads) this process spent during the run.
    bench_cpu: Option<f64>,
}

impl Report {
    fn new(args: &HttpArgs, start: Instant, samples: &[Sample]) -> Result<Self> {
        let hist = || Histogram::<u64>::new_with_bounds(1, HIST_MAX_US, 3);
        let mut report = Self {
            scenario: args
                .label
                .clone()
                .unwrap_or_else(|| args.scenario.name().to_owned()),
            rate: args.rate,
            duration: args.duration,
            connections: args.connections,
            requests: samples.len() as u64,
            ok: 0,
            non_2xx: 0,
            transport: 0,
            statuses: BTreeMap::new(),
            transport_kinds: BTreeMap::new(),
            elapsed: 0.0,
            latency: hist()?,
            latency_ok: hist()?,
            service: hist()?,
            send_lag: hist()?,
            quarters: [hist()?, hist()?, hist()?, hist()?],
            bench_cpu: None,
        };
        let mut last = start;
        let n = samples.len().max(1);
        // In schedule order: sample i is the i-th request sent.
        for (i, s) in samples.iter().enumerate() {
            let latency = micros(s.done.saturating_duration_since(s.scheduled));
            report.latency.saturating_record(latency);
            if let Some(q) = report.quarters.get_mut(i * 4 / n) {
                q.saturating_record(latency);
            }
            report
                .service
                .saturating_record(micros(s.done.saturating_duration_since(s.sent)));
            report
                .send_lag
                .saturating_record(micros(s.sent.saturating_duration_since(s.scheduled)));
            match &s.outcome {
                Outcome::Success => {
                    report.ok += 1;
                    report.latency_ok.saturating_record(latency);
                }
                Outcome::Status(code) => {
                    report.non_2xx += 1;
                    *report.statuses.entry(*code).or_default() += 1;
                }
                Outcome::Transport(kind) => {
                    report.transport += 1;
                    *report.transport_kinds.entry(kind.clone()).or_default() += 1;
                }
            }
            last = last.max(s.done);
        }
        report.elapsed = last.saturating_duration_since(start).as_secs_f64();
        Ok(report)
    }

    /// 2xx answers per second over the whole run, including the tail after the last send.
    fn throughput(&self) -> f64 {
        if self.elapsed > 0.0 {
            self.ok as f64 / self.elapsed
        } else {
            0.0
        }
    }
}

/// User + system CPU seconds of this process so far, from `/proc/self/stat` (Linux; `None`
/// elsewhere). Fields 14 and 15 count clock ticks, which Linux exposes at 100 per second.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis start
    // at field 3.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        ms(h.value_at_quantile(q))
    }
}

fn hist_json(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "count": h.len(),
        "p50_ms": pct(h, 0.50),
        "p90_ms": pct(h, 0.90),
        "p99_ms": pct(h, 0.99),
        "p999_ms": pct(h, 0.999),
        "max_ms": if h.is_empty() { 0.0 } else { ms(h.max()) },
        "mean_ms": h.mean() / 1000.0,
    })
}

#[expect(
    clippy::print_stdout,
    reason = "a benchmark binary: printing its results is its purpose"
)]
fn print_http(r: &Report, header: bool) {
    if header {
        println!(
            "| scenario | target req/s | duration s | requests | 2xx | non-2xx | transport errors | achieved 2xx/s | p50 ms | p90 ms | p99 ms | max ms | service p50 / p99 ms | send lag p99 / max ms |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    }
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
        r.scenario,
        r.rate,
        r.duration,
        r.requests,
        r.ok,
        r.non_2xx,
        r.transport,
        r.throughput(),
        pct(&r.latency, 0.50),
        pct(&r.latency, 0.90),
        pct(&r.latency, 0.99),
        pct(&r.latency, 1.0),
        pct(&r.service, 0.50),
        pct(&r.service, 0.99),
        pct(&r.send_lag, 0.99),
        pct(&r.send_lag, 1.0),
    );
    let json = serde_json::json!({
        "kind": "http",
        "scenario": r.scenario,
        "target_rps": r.rate,
        "duration_s": r.duration,
        "connections": r.connections,
        "requests": r.requests,
        "ok": r.ok,
        "non_2xx": r.non_2xx,
        "transport_errors": r.transport,
        "statuses": r.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "transport_error_kinds": r.transport_kinds,
        "elapsed_s": r.elapsed,
        "achieved_ok_rps": r.throughput(),
        "latency_from_scheduled": hist_json(&r.latency),
        "latency_from_scheduled_2xx": hist_json(&r.latency_ok),
        "service_time": hist_json(&r.service),
        "send_lag": hist_json(&r.send_lag),
        "latency_by_quarter": r.quarters.iter().map(hist_json).collect::<Vec<_>>(),
        "bench_cpu_s": r.bench_cpu,
    });
    println!("{json}");
}

// ---------------------------------------------------------------------------------------------
// argon2

fn run_argon2(args: &Argon2Args) -> Result<()> {
    if args.iterations == 0 || args.threads == 0 {
        bail!("--iterations and --threads must be at least 1");
    }
    if !(args.warmup.is_finite() && args.warmup >= 0.0) {
        bail!("--warmup must be a number of seconds, 0 or more");
    }
    // The auth service's defaults (`libs/config`, `Argon2Settings`): OWASP's minimum.
    let params = Params::new(19_456, 2, 1, None).map_err(|e| anyhow!("argon2 params: {e}"))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);

    // Every thread warms up, then all start the timed hashes together.
    let barrier = std::sync::Barrier::new(args.threads as usize + 1);
    let (mut times, wall) = std::thread::scope(|scope| -> Result<(Vec<Duration>, Duration)> {
        let workers: Vec<_> = (0..args.threads)
            .map(|t| {
                let (argon, barrier) = (&argon, &barrier);
                scope.spawn(move || -> Result<Vec<Duration>> {
                    let warmed = warm_up(argon, t, args.warmup);
                    // Reached even after an error, so that nobody waits forever.
                    barrier.wait();
                    warmed?;
                    (0..args.iterations)
                        .map(|i| {
                            let began = Instant::now();
                            hash_once(argon, t.wrapping_mul(1_000_003).wrapping_add(i))?;
                            Ok(began.elapsed())
                        })
                        .collect()
                })
            })
            .collect();
        barrier.wait();
        let began = Instant::now();
        let mut all = Vec::new();
        for worker in workers {
            all.extend(
                worker
                    .join()
                    .map_err(|_| anyhow!("a hashing thread panicked"))??,
            );
        }
        Ok((all, began.elapsed()))
    })?;
    // Warm-up included: what this process took from the machine.
    let cpu = process_cpu_seconds();
    times.sort_unstable();
    let n = times.len();
    let at = |q: f64| times[((n - 1) as f64 * q).round() as usize];
    let mean = times.iter().sum::<Duration>() / u32::try_from(n).unwrap_or(u32::MAX);
    let summary = Argon2Summary {
        threads: args.threads,
        hashes: n,
        median: at(0.5),
        min: times[0],
        max: times[n - 1],
        mean,
        per_second: n as f64 / wall.as_secs_f64(),
        wall,
        cpu,
    };
    print_argon2(&summary, args.header);
    Ok(())
}

/// Untimed hashes: at least one (the first allocation of the 19 MiB), then until `secs` passed.
fn warm_up(argon: &Argon2<'_>, thread: u32, secs: f64) -> Result<()> {
    let began = Instant::now();
    let mut seed = thread.wrapping_mul(1_000_003).wrapping_add(500_000);
    loop {
        hash_once(argon, seed)?;
        seed = seed.wrapping_add(1);
        if began.elapsed().as_secs_f64() >= secs {
            return Ok(());
        }
    }
}

fn hash_once(argon: &Argon2<'_>, seed: u32) -> Result<()> {
    // A distinct salt per hash, as the service uses a random one; the cost does not depend on it.
    let mut salt = [0x5a_u8; 16];
    salt[..4].copy_from_slice(&seed.to_le_bytes());
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow!("salt: {e}"))?;
    let hash = argon
        .hash_password(b"correct horse battery staple", &salt)
        .map_err(|e| anyhow!("argon2id hash: {e}"))?;
    std::hint::black_box(hash);
    Ok(())
}

struct Argon2Summary {
    threads: u32,
    hashes: usize,
    median: Duration,
    min: Duration,
    max: Duration,
    mean: Duration,
    per_second: f64,
    wall: Duration,
    /// CPU seconds this process spent, warm-up included (all threads).
    cpu: Option<f64>,
}

#[expect(
    clippy::print_stdout,
    reason = "a benchmark binary: printing its results is its purpose"
)]
fn print_argon2(s: &Argon2Summary, header: bool) {
    let f = |d: Duration| d.as_secs_f64() * 1000.0;
    if header {
        println!(
            "| argon2id (m=19456 KiB, t=2, p=1) | threads | hashes | median ms | min ms | mean ms | max ms | hashes/s (all threads) |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    }
    println!(
        "| hash_password | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} |",
        s.threads,
        s.hashes,
        f(s.median),
        f(s.min),
        f(s.mean),
        f(s.max),
        s.per_second,
    );
    let json = serde_json::json!({
        "kind": "argon2",
        "params": { "m_kib": 19456, "t": 2, "p": 1, "algorithm": "argon2id", "version": "0x13" },
        "threads": s.threads,
        "hashes": s.hashes,
        "median_ms": f(s.median),
        "min_ms": f(s.min),
        "mean_ms": f(s.mean),
        "max_ms": f(s.max),
        "hashes_per_s": s.per_second,
        "elapsed_s": s.wall.as_secs_f64(),
        "bench_cpu_s": s.cpu,
    });
    println!("{json}");
}
