//! The ollama-loader against a real `nats-server` (JetStream) and the provider simulator's
//! Ollama and OpenAI-compatible APIs, through its NATS verbs and KV buckets.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "tests: a broken fixture or a missed expectation must stop the test at once"
)]

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use polylogue_bus::{Bus, RequestContext};
use polylogue_config::Settings;
use polylogue_contracts::models::{
    CancelLoadReply, CancelLoadRequest, LoadJob, LoadReply, LoadRequest, ModelStatusRecord, job,
    status, status_key,
};
use polylogue_contracts::subjects::{loader as verbs, service};
use polylogue_contracts::{ApiError, ErrorCode};
use polylogue_ollama_loader::Running;
use polylogue_provider_sim::{OllamaOptions, SimConfig, SimOptions, SimServer};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

// ---------- fixture ----------

fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/py/bin/nats-server");
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
struct NatsServer {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl NatsServer {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = nats_server_bin();
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {} ({e})", bin.display()));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        child,
                        url: format!("nats://127.0.0.1:{port}"),
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
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

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test catalog: one cloud model and local models on the simulator (and one that is down).
fn catalog(sim: &str, closed_port: u16) -> String {
    let mut text = String::new();
    let mut model = |id: &str, provider: &str, provider_model: &str, base: Option<&str>| {
        text.push_str(&format!(
            "[[models]]\nid = \"{id}\"\nname = \"{id}\"\nprovider = \"{provider}\"\n\
             providerModel = \"{provider_model}\"\ncapabilities = [\"text\"]\ncontextLength = 4096\n\
             temperatureRange = {{ min = 0.0, max = 1.0, step = 0.1, default = 0.5 }}\n"
        ));
        if let Some(base) = base {
            text.push_str(&format!("baseUrl = \"{base}\"\n"));
        }
        if provider == "ollama" {
            text.push_str("requiresLoading = true\n");
        }
        if provider == "anthropic" {
            text.push_str("apiKeyRequired = \"claude\"\n");
        }
        text.push('\n');
    };
    model("cloud-sim", "anthropic", "claude-sim", None);
    model("ollama-installed", "ollama", "llama3.2", Some(sim));
    model("ollama-loaded", "ollama", "qwen2.5:7b", Some(sim));
    model("ollama-new", "ollama", "tinyllama:1b", Some(sim));
    model("ollama-slow", "ollama", "slowpoke:3b", Some(sim));
    model("ollama-missing", "ollama", "missing-model:1b", Some(sim));
    model("ollama-midway", "ollama", "fail-midway:1b", Some(sim));
    model("ollama-flaky", "ollama", "fail-once:1b", Some(sim));
    model(
        "llama-sim",
        "openai-compatible",
        "sim-local",
        Some(&format!("{sim}/v1")),
    );
    model(
        "llama-down",
        "openai-compatible",
        "down",
        Some(&format!("http://127.0.0.1:{closed_port}/v1")),
    );
    text
}

struct Fixture {
    _nats: NatsServer,
    sim: SimServer,
    _dir: TempDir,
    settings: Settings,
    loaders: Vec<(Running, CancellationToken, TaskTracker)>,
    bus: Bus,
    js: jetstream::Context,
}

impl Fixture {
    async fn start(configure: impl FnOnce(&mut Settings)) -> Self {
        let nats = NatsServer::start();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("sim listener");
        let sim = SimServer::start_with(
            SimConfig::default(),
            SimOptions {
                ollama: OllamaOptions {
                    loaded: vec!["qwen2.5:7b".to_owned()],
                    progress_interval: Duration::from_millis(20),
                    load_time: Duration::from_millis(100),
                    ..OllamaOptions::default()
                },
                ..SimOptions::default()
            },
            listener,
        )
        .await
        .expect("provider simulator");
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog_path = dir.path().join("models.toml");
        std::fs::write(&catalog_path, catalog(&sim.base_url(), free_port())).expect("catalog");
        let mut settings = Settings {
            environment: "test".into(),
            data_dir: dir.path().to_path_buf(),
            ..Settings::default()
        };
        settings.nats.url = nats.url.clone();
        settings.nats.request_timeout_ms = 5_000;
        settings.catalog.path = Some(catalog_path);
        settings.inference.anthropic_url = Some(sim.base_url());
        settings.inference.allow_private_base_urls = true;
        settings.loader.ops_listen = "127.0.0.1:0".into();
        settings.loader.ollama_hosts = vec![sim.base_url()];
        settings.loader.poll_interval_ms = 100;
        settings.loader.progress_interval_ms = 50;
        settings.loader.cloud_check_secs = 1;
        settings.loader.ack_wait_secs = 3;
        settings.loader.pull_retry_backoff_ms = 20;
        configure(&mut settings);
        let bus = Bus::connect(&settings.nats, "loader-test")
            .await
            .expect("test bus");
        let js = jetstream::new(bus.client().clone());
        let mut fixture = Self {
            _nats: nats,
            sim,
            _dir: dir,
            settings,
            loaders: Vec::new(),
            bus,
            js,
        };
        fixture.start_loader().await;
        fixture
    }

    /// Starts one more loader replica (its own NATS connection); returns its index.
    async fn start_loader(&mut self) -> usize {
        self.start_loader_with(|_| {}).await
    }

    async fn start_loader_with(&mut self, configure: impl FnOnce(&mut Settings)) -> usize {
        let mut settings = self.settings.clone();
        configure(&mut settings);
        let bus = Bus::connect(&settings.nats, "ollama-loader")
            .await
            .expect("loader bus");
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let running =
            polylogue_ollama_loader::start(&settings, &bus, shutdown.clone(), tracker.clone())
                .await
                .expect("loader started");
        self.loaders.push((running, shutdown, tracker));
        self.loaders.len() - 1
    }

    async fn kill_loader(&mut self, index: usize) {
        let (running, shutdown, _) = self.loaders.remove(index);
        running.kill().await;
        shutdown.cancel();
    }

    async fn load(&self, model_id: &str) -> Result<LoadReply, ApiError> {
        self.bus
            .request(
                service::LOADER,
                verbs::LOAD,
                &RequestContext::internal(),
                &LoadRequest {
                    model_id: model_id.to_owned(),
                    user_id: Some("u-test".to_owned()),
                },
            )
            .await
    }

    async fn cancel(&self, job_id: &str) -> Result<CancelLoadReply, ApiError> {
        self.bus
            .request(
                service::LOADER,
                verbs::CANCEL,
                &RequestContext::internal(),
                &CancelLoadRequest {
                    job_id: job_id.to_owned(),
                    user_id: None,
                },
            )
            .await
    }

    async fn bucket(&self, name: String) -> kv::Store {
        self.js.get_key_value(name).await.expect("bucket")
    }

    async fn status(&self, model_id: &str) -> Option<ModelStatusRecord> {
        let store = self.bucket(verbs::status_bucket(self.bus.prefix())).await;
        let value = store.get(status_key(model_id)).await.ok()??;
        serde_json::from_slice(&value).ok()
    }

    /// Waits until the model's status satisfies `ok`; returns it.
    async fn wait_status(
        &self,
        model_id: &str,
        limit: Duration,
        ok: impl Fn(&ModelStatusRecord) -> bool,
    ) -> ModelStatusRecord {
        let deadline = Instant::now() + limit;
        loop {
            let current = self.status(model_id).await;
            if let Some(s) = &current
                && ok(s)
            {
                return s.clone();
            }
            if Instant::now() > deadline {
                panic!("status of {model_id} never matched; last: {current:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn job(&self, job_id: &str) -> Option<LoadJob> {
        let store = self.bucket(verbs::jobs_bucket(self.bus.prefix())).await;
        let value = store
            .get(polylogue_contracts::models::job_key(job_id))
            .await
            .ok()??;
        serde_json::from_slice(&value).ok()
    }

    async fn wait_job(
        &self,
        job_id: &str,
        limit: Duration,
        ok: impl Fn(&LoadJob) -> bool,
    ) -> LoadJob {
        let deadline = Instant::now() + limit;
        loop {
            let current = self.job(job_id).await;
            if let Some(j) = &current
                && ok(j)
            {
                return j.clone();
            }
            if Instant::now() > deadline {
                panic!("job {job_id} never matched; last: {current:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every job record written from now on, in order.
    async fn watch_jobs(&self) -> kv::Watch {
        self.bucket(verbs::jobs_bucket(self.bus.prefix()))
            .await
            .watch("job.>")
            .await
            .expect("jobs watch")
    }

    async fn wait_sim(
        &self,
        limit: Duration,
        ok: impl Fn(&polylogue_provider_sim::OllamaSnapshot) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.sim.ollama_state();
            if ok(&state) {
                return;
            }
            if Instant::now() > deadline {
                panic!("the simulator never got there; last: {state:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for (_, shutdown, _) in &self.loaders {
            shutdown.cancel();
        }
    }
}

/// The states of `job_id` as a watch saw them, until it ended.
async fn follow(watch: &mut kv::Watch, job_id: &str, limit: Duration) -> Vec<LoadJob> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let entry = match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(entry))) => entry,
            other => panic!("job {job_id} did not end; saw {seen:?} ({other:?})"),
        };
        let Ok(state) = serde_json::from_slice::<LoadJob>(&entry.value) else {
            continue;
        };
        if state.job_id != job_id {
            continue;
        }
        let ended = job::is_terminal(&state.status);
        seen.push(state);
        if ended {
            return seen;
        }
    }
}

fn assert_progress_never_drops(states: &[LoadJob]) {
    for pair in states.windows(2) {
        assert!(
            pair[1].progress >= pair[0].progress,
            "progress went back: {} → {} ({:?} → {:?})",
            pair[0].progress,
            pair[1].progress,
            pair[0].phase,
            pair[1].phase
        );
    }
}

/// The distinct job states in the order they were seen.
fn states(seen: &[LoadJob]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in seen {
        if out.last() != Some(&s.status) {
            out.push(s.status.clone());
        }
    }
    out
}

const PATIENCE: Duration = Duration::from_secs(10);

// ---------- tests ----------

#[tokio::test]
async fn statuses_follow_what_the_runtimes_have() {
    let f = Fixture::start(|_| {}).await;
    let installed = f
        .wait_status("ollama-installed", PATIENCE, |s| {
            s.status == status::NOT_LOADED
        })
        .await;
    assert!(installed.estimated_load_time.is_some_and(|t| t > 0));
    assert_eq!(installed.host.as_deref(), Some(f.sim.base_url().as_str()));
    let loaded = f
        .wait_status("ollama-loaded", PATIENCE, |s| s.status == status::LOADED)
        .await;
    assert!(loaded.memory_bytes.is_some_and(|b| b > 1_000_000_000));
    assert!(
        loaded
            .memory_usage
            .as_deref()
            .is_some_and(|m| m.ends_with("GB"))
    );
    assert!(loaded.last_loaded.is_some());
    let new = f
        .wait_status("ollama-new", PATIENCE, |s| s.status == status::NOT_LOADED)
        .await;
    assert!(
        new.estimated_load_time > installed.estimated_load_time,
        "a download takes longer than a load: {new:?} vs {installed:?}"
    );
    f.wait_status("llama-sim", PATIENCE, |s| s.status == status::LOADED)
        .await;
    let down = f
        .wait_status("llama-down", PATIENCE, |s| s.status == status::UNAVAILABLE)
        .await;
    assert!(
        down.error
            .as_deref()
            .is_some_and(|e| e.contains("cannot connect")),
        "{down:?}"
    );
    f.wait_status("cloud-sim", PATIENCE, |s| s.status == status::LOADED)
        .await;

    // Unchanged records are written again, so readers can tell a loader is watching.
    let before = f.status("ollama-installed").await.expect("status");
    let refreshed = f
        .wait_status("ollama-installed", Duration::from_secs(3), |s| {
            s.updated_at != before.updated_at
        })
        .await;
    assert_eq!(refreshed.status, status::NOT_LOADED);

    // A model loaded behind the loader's back shows up at the next poll.
    f.sim.set_ollama_loaded(["qwen2.5:7b", "llama3.2"]);
    f.wait_status("ollama-installed", PATIENCE, |s| s.status == status::LOADED)
        .await;

    // A loader whose only Ollama host is down says so (another installation on the same NATS).
    let closed = free_port();
    let mut other = f.settings.clone();
    other.nats.subject_prefix = "other".into();
    other.loader.ollama_hosts = vec![format!("http://127.0.0.1:{closed}")];
    let bus = Bus::connect(&other.nats, "other-loader")
        .await
        .expect("bus");
    let shutdown = CancellationToken::new();
    let running =
        polylogue_ollama_loader::start(&other, &bus, shutdown.clone(), TaskTracker::new())
            .await
            .expect("second installation");
    let store = f.bucket(verbs::status_bucket("other")).await;
    let deadline = Instant::now() + PATIENCE;
    let record = loop {
        let record: Option<ModelStatusRecord> = store
            .get(status_key("ollama-installed"))
            .await
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok());
        if let Some(r) = record.filter(|r| r.status == status::UNAVAILABLE) {
            break r;
        }
        assert!(Instant::now() < deadline, "never unavailable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        record
            .error
            .as_deref()
            .is_some_and(|e| e.contains("Ollama does not answer")),
        "{record:?}"
    );
    running.stop().await;
    shutdown.cancel();
}

#[tokio::test]
async fn only_local_models_are_loaded_and_compatible_servers_only_checked() {
    let f = Fixture::start(|_| {}).await;
    let cloud = f.load("cloud-sim").await.expect_err("a cloud model");
    assert_eq!(cloud.code, ErrorCode::UnprocessableEntity);
    assert!(
        cloud.message.contains("served by its provider"),
        "{}",
        cloud.message
    );
    let unknown = f.load("no-such-model").await.expect_err("unknown");
    assert_eq!(unknown.code, ErrorCode::NotFound);
    // OpenAI-compatible servers are only checked: the loader cannot start them.
    let up = f.load("llama-sim").await.expect("load accepted");
    let done = f
        .wait_job(&up.job_id, PATIENCE, |j| job::is_terminal(&j.status))
        .await;
    assert_eq!(
        (done.status.as_str(), done.progress),
        (job::COMPLETE, 100.0)
    );
    let down = f.load("llama-down").await.expect("load accepted");
    let failed = f
        .wait_job(&down.job_id, PATIENCE, |j| job::is_terminal(&j.status))
        .await;
    assert_eq!(failed.status, job::ERROR);
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cannot start it")),
        "{failed:?}"
    );
    let unknown_job = f.cancel("load_nope").await.expect_err("unknown job");
    assert_eq!(unknown_job.code, ErrorCode::NotFound);
    let health: serde_json::Value = f
        .bus
        .request(
            service::LOADER,
            verbs::HEALTH,
            &RequestContext::internal(),
            &serde_json::json!({}),
        )
        .await
        .expect("health");
    assert_eq!(health["capacity"], 2);
    assert!(health["running"].as_array().is_some_and(Vec::is_empty));
}

#[tokio::test]
async fn a_load_pulls_then_loads_with_rising_progress() {
    let f = Fixture::start(|_| {}).await;
    f.sim.set_ollama_pull_speed(100_000_000);
    f.wait_status("ollama-new", PATIENCE, |s| s.status == status::NOT_LOADED)
        .await;
    let mut watch = f.watch_jobs().await;
    let reply = f.load("ollama-new").await.expect("load accepted");
    assert!(!reply.joined);
    assert_eq!(reply.status, job::QUEUED);
    assert!(reply.job_id.starts_with("load_"));
    assert!(reply.estimated_time.is_some());
    let seen = follow(&mut watch, &reply.job_id, PATIENCE).await;
    assert_eq!(states(&seen), [job::QUEUED, job::RUNNING, job::COMPLETE]);
    assert_progress_never_drops(&seen);
    let last = seen.last().expect("a final state");
    assert_eq!(last.progress, 100.0);
    assert_eq!(last.phase, "ready");
    assert_eq!(last.attempts, 1);
    assert!(last.total_bytes > 100_000_000 && last.completed_bytes == last.total_bytes);
    assert!(
        seen.iter()
            .any(|s| s.phase == "downloading" && s.progress > 0.0 && s.progress < 90.0),
        "progress was reported while downloading: {seen:?}"
    );
    assert!(seen.iter().any(|s| s.phase == "loading"));
    let model = f.status("ollama-new").await.expect("status");
    assert_eq!(model.status, status::LOADED, "{model:?}");
    assert!(model.memory_bytes.is_some() && model.last_loaded.is_some());
    let sim = f.sim.ollama_state();
    assert!(sim.installed.iter().any(|m| m == "tinyllama:1b"));
    assert!(sim.loaded.iter().any(|m| m == "tinyllama:1b"));
    // The load sent the configured keep_alive ...
    let load = f
        .sim
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/generate")
        .expect("a load request");
    assert_eq!(load.body["keep_alive"], "30m");
    // ... and the catalog's context length, as every chat to it does (else Ollama reloads).
    assert_eq!(load.body["options"]["num_ctx"], 4096);
    // The model stays loaded across polls.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        f.status("ollama-new").await.map(|s| s.status).as_deref(),
        Some(status::LOADED)
    );
}

#[tokio::test]
async fn a_pull_cut_off_midway_is_retried_and_resumes() {
    let f = Fixture::start(|_| {}).await;
    f.sim.set_ollama_pull_speed(100_000_000);
    let mut watch = f.watch_jobs().await;
    let reply = f.load("ollama-flaky").await.expect("load accepted");
    let seen = follow(&mut watch, &reply.job_id, PATIENCE).await;
    let last = seen.last().expect("a final state");
    assert_eq!(last.status, job::COMPLETE, "{seen:?}");
    assert!(seen.iter().any(|s| s.phase == "retrying"), "{seen:?}");
    assert_progress_never_drops(&seen);
    // One run of the job (no redelivery), two pulls of which the second resumed.
    assert_eq!(last.attempts, 1);
    let pulls = f
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/pull")
        .count();
    assert_eq!(pulls, 2);
    assert!(
        f.sim
            .ollama_state()
            .installed
            .iter()
            .any(|m| m == "fail-once:1b")
    );
}

#[tokio::test]
async fn concurrent_loads_share_one_job_and_one_download() {
    let f = Fixture::start(|_| {}).await;
    f.sim.set_ollama_pull_speed(50_000_000);
    let (a, b) = tokio::join!(f.load("ollama-new"), f.load("ollama-new"));
    let (a, b) = (a.expect("first load"), b.expect("second load"));
    assert_eq!(a.job_id, b.job_id);
    assert!(
        a.joined != b.joined,
        "one started it, one joined: {a:?} {b:?}"
    );
    let done = f
        .wait_job(&a.job_id, PATIENCE, |j| job::is_terminal(&j.status))
        .await;
    assert_eq!(done.status, job::COMPLETE, "{done:?}");
    assert_eq!(f.sim.ollama_state().downloads, 1);
    // A model that is loaded gets a job too: it completes at once, without a download.
    let again = f.load("ollama-new").await.expect("load of a loaded model");
    assert!(!again.joined);
    assert_ne!(again.job_id, a.job_id);
    let done = f
        .wait_job(&again.job_id, PATIENCE, |j| job::is_terminal(&j.status))
        .await;
    assert_eq!(done.status, job::COMPLETE);
    assert_eq!(f.sim.ollama_state().downloads, 1);
    assert_eq!(
        f.status("ollama-new").await.map(|s| s.status).as_deref(),
        Some(status::LOADED)
    );
}

#[tokio::test]
async fn failed_pulls_end_in_error_with_ollamas_reason() {
    let f = Fixture::start(|_| {}).await;
    let missing = f.load("ollama-missing").await.expect("load accepted");
    let midway = f.load("ollama-midway").await.expect("load accepted");
    let failed = f
        .wait_job(&missing.job_id, PATIENCE, |j| job::is_terminal(&j.status))
        .await;
    assert_eq!(failed.status, job::ERROR);
    assert_eq!(
        failed.error.as_deref(),
        Some("pull model manifest: file does not exist")
    );
    let failed = f
        .wait_job(&midway.job_id, PATIENCE, |j| job::is_terminal(&j.status))
        .await;
    assert_eq!(failed.status, job::ERROR);
    // A passing failure is retried (`pull_retries`, 3 by default), then reported with Ollama's
    // reason; a missing model (above) is not retried.
    assert_eq!(
        failed.error.as_deref(),
        Some("max retries exceeded: unexpected EOF (after 3 retries)")
    );
    assert!(
        failed.progress > 0.0 && failed.progress < 90.0,
        "{failed:?}"
    );
    for (model, reason) in [
        ("ollama-missing", "file does not exist"),
        ("ollama-midway", "unexpected EOF"),
    ] {
        let s = f
            .wait_status(model, PATIENCE, |s| s.status == status::ERROR)
            .await;
        assert!(
            s.error.as_deref().is_some_and(|e| e.contains(reason)),
            "{s:?}"
        );
    }
    // The error stays visible across polls.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let s = f.status("ollama-missing").await.expect("status");
    assert_eq!(s.status, status::ERROR, "{s:?}");
    // A new load replaces it (and fails the same way).
    let again = f.load("ollama-missing").await.expect("load accepted");
    assert_ne!(again.job_id, missing.job_id);
}

#[tokio::test]
async fn a_cancel_stops_the_pull_and_frees_the_model() {
    let f = Fixture::start(|s| s.loader.max_concurrent_jobs = 1).await;
    f.sim.set_ollama_pull_speed(5_000_000);
    let slow = f.load("ollama-slow").await.expect("load accepted");
    f.wait_job(&slow.job_id, PATIENCE, |j| {
        j.status == job::RUNNING && j.progress > 0.0
    })
    .await;
    f.wait_status("ollama-slow", PATIENCE, |s| {
        s.status == status::LOADING && s.job_id.as_deref() == Some(slow.job_id.as_str())
    })
    .await;

    // With the only slot taken, a second load waits in the queue; its cancel ends it at once.
    let queued = f.load("ollama-new").await.expect("load accepted");
    assert_eq!(queued.status, job::QUEUED);
    let cancelled = f.cancel(&queued.job_id).await.expect("cancel").job;
    assert_eq!(cancelled.status, job::CANCELLED);
    assert!(cancelled.cancel_requested);
    let fresh = f.load("ollama-new").await.expect("load accepted");
    assert_ne!(
        fresh.job_id, queued.job_id,
        "the cancelled job freed its model"
    );
    f.cancel(&fresh.job_id).await.expect("cancel");

    let started = Instant::now();
    let reply = f.cancel(&slow.job_id).await.expect("cancel").job;
    assert!(reply.cancel_requested);
    assert_eq!(reply.status, job::RUNNING);
    let ended = f
        .wait_job(&slow.job_id, PATIENCE, |j| job::is_terminal(&j.status))
        .await;
    assert_eq!(ended.status, job::CANCELLED, "{ended:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    f.wait_sim(PATIENCE, |s| s.pulling.is_empty()).await;
    let sim = f.sim.ollama_state();
    assert!(
        !sim.installed.iter().any(|m| m.starts_with("slowpoke")),
        "{sim:?}"
    );
    assert!(
        !sim.loaded.iter().any(|m| m.starts_with("slowpoke")),
        "{sim:?}"
    );
    f.wait_status("ollama-slow", PATIENCE, |s| s.status == status::NOT_LOADED)
        .await;
    // Cancelling an ended job changes nothing.
    let again = f.cancel(&slow.job_id).await.expect("cancel").job;
    assert_eq!(again.status, job::CANCELLED);
    assert_eq!(again.updated_at, ended.updated_at);
}

#[tokio::test]
async fn a_job_of_a_killed_loader_is_taken_over() {
    let mut f = Fixture::start(|_| {}).await;
    f.sim.set_ollama_pull_speed(10_000_000);
    let mut watch = f.watch_jobs().await;
    let reply = f.load("ollama-slow").await.expect("load accepted");
    f.wait_job(&reply.job_id, PATIENCE, |j| {
        j.status == job::RUNNING && j.progress >= 5.0
    })
    .await;
    f.start_loader().await;
    f.kill_loader(0).await;
    let killed_at = Instant::now();
    // The second loader takes the job over once the first one's ack wait (3 s) ran out.
    f.wait_job(&reply.job_id, PATIENCE, |j| j.attempts == 2)
        .await;
    assert!(
        killed_at.elapsed() >= Duration::from_secs(2),
        "taken over too soon"
    );
    f.sim.set_ollama_pull_speed(500_000_000);
    let seen = follow(&mut watch, &reply.job_id, PATIENCE).await;
    let last = seen.last().expect("a final state");
    assert_eq!(last.status, job::COMPLETE, "{last:?}");
    assert_eq!(last.attempts, 2);
    assert_progress_never_drops(&seen);
    assert_eq!(
        f.status("ollama-slow").await.map(|s| s.status).as_deref(),
        Some(status::LOADED)
    );
    assert!(
        f.sim
            .ollama_state()
            .loaded
            .iter()
            .any(|m| m == "slowpoke:3b")
    );
}

#[tokio::test]
async fn a_job_whose_loaders_keep_dying_ends_in_error() {
    let mut f = Fixture::start(|s| s.loader.max_attempts = 1).await;
    f.sim.set_ollama_pull_speed(5_000_000);
    let reply = f.load("ollama-slow").await.expect("load accepted");
    f.wait_job(&reply.job_id, PATIENCE, |j| {
        j.status == job::RUNNING && j.progress > 0.0
    })
    .await;
    f.start_loader().await;
    f.kill_loader(0).await;
    let ended = f
        .wait_job(&reply.job_id, PATIENCE, |j| job::is_terminal(&j.status))
        .await;
    assert_eq!(ended.status, job::ERROR);
    assert_eq!(
        ended.error.as_deref(),
        Some("the loader stopped once while loading; giving up")
    );
    f.wait_status("ollama-slow", PATIENCE, |s| s.status == status::ERROR)
        .await;
}

#[tokio::test]
async fn a_loader_that_stops_hands_its_job_over_at_once() {
    let mut f = Fixture::start(|_| {}).await;
    f.sim.set_ollama_pull_speed(10_000_000);
    let reply = f.load("ollama-slow").await.expect("load accepted");
    f.wait_job(&reply.job_id, PATIENCE, |j| {
        j.status == job::RUNNING && j.progress >= 5.0
    })
    .await;
    f.start_loader().await;
    let (first, shutdown, _) = f.loaders.remove(0);
    let stopped_at = Instant::now();
    first.stop().await;
    shutdown.cancel();
    f.sim.set_ollama_pull_speed(500_000_000);
    let done = f
        .wait_job(&reply.job_id, PATIENCE, |j| job::is_terminal(&j.status))
        .await;
    assert_eq!(done.status, job::COMPLETE, "{done:?}");
    // Taken over without waiting for the ack wait, and the stop did not count as an attempt.
    assert!(
        stopped_at.elapsed() < Duration::from_secs(3),
        "took {:?}",
        stopped_at.elapsed()
    );
    assert_eq!(done.attempts, 1);
}
