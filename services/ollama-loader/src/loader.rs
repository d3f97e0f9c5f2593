//! The loader's shared state: catalog, runtime and provider clients, buckets, the jobs this
//! replica runs, and the estimates every part uses.

use crate::ollama::Runtimes;
use crate::state::{Jobs, Statuses};
use async_nats::jetstream;
use dashmap::DashMap;
use polylogue_bus::Bus;
use polylogue_catalog::{Catalog, ModelEntry};
use polylogue_config::LoaderSettings;
use polylogue_contracts::models::LoadJob;
use polylogue_providers::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Seconds a model needs to go from disk into memory, at least.
const LOAD_BASE_SECS: u64 = 3;
/// Disk-to-memory speed assumed for the rest of the load estimate.
const LOAD_BYTES_PER_SEC: u64 = 1_000_000_000;
/// Size assumed for a model whose size nothing tells (a 7B model at 4-bit quantization).
const DEFAULT_MODEL_BYTES: u64 = 4_000_000_000;
/// Bytes per parameter of the usual 4-bit quantizations (Q4_K_M: ~4.85 bits).
const BYTES_PER_PARAMETER: f64 = 0.61;

/// A job this replica runs, for health and for `kill`.
pub(crate) struct RunningJob {
    pub view: Arc<Mutex<JobView>>,
    pub abort: futures::future::AbortHandle,
}

/// What health shows of a running job.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobView {
    pub job_id: String,
    pub model_id: String,
    pub phase: String,
    pub progress: f64,
}

/// A host's reachability as the last poll found it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HostHealth {
    pub host: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub checked_at: String,
}

pub struct Loader {
    pub(crate) bus: Bus,
    pub(crate) settings: LoaderSettings,
    pub(crate) catalog: Arc<Catalog>,
    /// Provider clients, for cloud reachability.
    pub(crate) registry: Registry,
    pub(crate) runtimes: Runtimes,
    /// Ollama hosts, in order of preference.
    pub(crate) hosts: Vec<String>,
    pub(crate) js: jetstream::Context,
    pub(crate) statuses: Statuses,
    pub(crate) jobs: Jobs,
    pub(crate) running: DashMap<u64, RunningJob>,
    pub(crate) next_run: AtomicU64,
    pub(crate) reachability: Mutex<Vec<HostHealth>>,
    /// Last reachability check of each cloud model: `Err` holds the reason.
    pub(crate) cloud: Mutex<HashMap<String, Result<(), String>>>,
    /// Download speed measured by the last pull that moved enough bytes (0: none yet).
    pub(crate) measured_bytes_per_sec: AtomicU64,
    pub(crate) background: CancellationToken,
    /// Set by `kill`: nothing more is written or acknowledged.
    pub(crate) killed: AtomicBool,
    /// Running jobs, so `stop` can wait for them to hand their messages back.
    pub(crate) tasks: TaskTracker,
}

pub(crate) struct Parts {
    pub bus: Bus,
    pub settings: LoaderSettings,
    pub catalog: Arc<Catalog>,
    pub registry: Registry,
    pub runtimes: Runtimes,
    pub hosts: Vec<String>,
    pub js: jetstream::Context,
    pub statuses: Statuses,
    pub jobs: Jobs,
    pub background: CancellationToken,
}

impl Loader {
    pub(crate) fn new(p: Parts) -> Self {
        Self {
            bus: p.bus,
            settings: p.settings,
            catalog: p.catalog,
            registry: p.registry,
            runtimes: p.runtimes,
            hosts: p.hosts,
            js: p.js,
            statuses: p.statuses,
            jobs: p.jobs,
            running: DashMap::new(),
            next_run: AtomicU64::new(1),
            reachability: Mutex::new(Vec::new()),
            cloud: Mutex::new(HashMap::new()),
            measured_bytes_per_sec: AtomicU64::new(0),
            background: p.background,
            killed: AtomicBool::new(false),
            tasks: TaskTracker::new(),
        }
    }

    pub fn settings(&self) -> &LoaderSettings {
        &self.settings
    }

    /// The Ollama hosts this loader manages.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Ids of the jobs this replica is running.
    pub fn running_jobs(&self) -> Vec<String> {
        self.running
            .iter()
            .map(|e| lock(&e.value().view).job_id.clone())
            .filter(|id| !id.is_empty())
            .collect()
    }

    pub(crate) fn prefix(&self) -> &str {
        self.bus.prefix()
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Running jobs and the hosts' reachability.
    pub fn health(&self) -> serde_json::Value {
        let running: Vec<JobView> = self
            .running
            .iter()
            .map(|e| lock(&e.value().view).clone())
            .filter(|v| !v.job_id.is_empty())
            .collect();
        let hosts = lock(&self.reachability).clone();
        serde_json::json!({
            "running": running,
            "capacity": self.settings.max_concurrent_jobs,
            "hosts": hosts,
        })
    }

    /// How often an unchanged status record is written again, so readers see it is current:
    /// every five polls, and at least three times within `status_stale_secs`.
    pub(crate) fn refresh_interval(&self) -> Duration {
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        let third_of_stale = Duration::from_millis(self.settings.status_stale_secs * 1000 / 3);
        (poll * 5).min(third_of_stale).max(poll)
    }

    /// Seconds to download `bytes`, at the measured speed or else the assumed one.
    pub(crate) fn download_secs(&self, bytes: u64) -> u64 {
        let measured = self.measured_bytes_per_sec.load(Ordering::Relaxed);
        let speed = if measured > 0 {
            measured
        } else {
            self.settings.assumed_download_bytes_per_sec.max(1)
        };
        bytes.div_ceil(speed)
    }

    /// Remembers the speed of a pull that moved `bytes` in `elapsed`.
    pub(crate) fn measured(&self, bytes: u64, elapsed: Duration) {
        if bytes < 1_000_000 || elapsed < Duration::from_millis(200) {
            return;
        }
        let speed = (bytes as f64 / elapsed.as_secs_f64()) as u64;
        self.measured_bytes_per_sec
            .store(speed.max(1), Ordering::Relaxed);
    }

    /// Seconds a whole load of a model that is not installed is expected to take.
    pub(crate) fn full_load_secs(&self, model: &ModelEntry) -> u64 {
        let bytes = guess_bytes(&model.provider_model);
        self.download_secs(bytes) + load_secs(bytes)
    }
}

/// Seconds to load an installed model of `bytes` into memory.
pub(crate) fn load_secs(bytes: u64) -> u64 {
    LOAD_BASE_SECS + bytes / LOAD_BYTES_PER_SEC
}

/// The size of a model that is not installed, from its tag (`gemma:2b` → 2 B parameters at
/// 4-bit quantization), else [`DEFAULT_MODEL_BYTES`].
pub(crate) fn guess_bytes(provider_model: &str) -> u64 {
    let tag = provider_model
        .rsplit_once(':')
        .map_or("", |(_, tag)| tag)
        .to_ascii_lowercase();
    let size = tag.split(['-', '_']).next().unwrap_or_default();
    let scale = match size.chars().last() {
        Some('b') => 1e9,
        Some('m') => 1e6,
        _ => return DEFAULT_MODEL_BYTES,
    };
    let number = &size[..size.len() - 1];
    let params: Option<f64> = number
        .split('x')
        .map(|p| p.parse::<f64>().ok())
        .try_fold(1.0, |acc, p| p.map(|p| acc * p));
    match params {
        Some(p) if p > 0.0 => (p * scale * BYTES_PER_PARAMETER) as u64,
        _ => DEFAULT_MODEL_BYTES,
    }
}

/// Whether the loader manages the model (Ollama, or an OpenAI-compatible local server).
pub fn is_local(model: &ModelEntry) -> bool {
    matches!(model.provider.as_str(), "ollama" | "openai-compatible")
}

pub(crate) fn is_ollama(model: &ModelEntry) -> bool {
    model.provider == "ollama"
}

/// Seconds left of a job, from its estimate and progress.
pub(crate) fn remaining_secs(job: &LoadJob) -> Option<u64> {
    let left = (100.0 - job.progress).clamp(0.0, 100.0) / 100.0;
    job.estimated_time
        .map(|total| (total as f64 * left).ceil() as u64)
}

pub(crate) fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// How long ago an RFC 3339 time was; `None` when it does not parse.
pub(crate) fn age(rfc3339: &str) -> Option<Duration> {
    let then = OffsetDateTime::parse(rfc3339, &Rfc3339).ok()?;
    let elapsed = OffsetDateTime::now_utc() - then;
    Some(elapsed.try_into().unwrap_or(Duration::ZERO))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_guessed_from_tags() {
        assert_eq!(guess_bytes("gemma:2b"), 1_220_000_000);
        assert_eq!(guess_bytes("qwen2:0.5b-instruct"), 305_000_000);
        assert_eq!(guess_bytes("mixtral:8x7b"), 34_160_000_000);
        assert_eq!(guess_bytes("llama3.2"), DEFAULT_MODEL_BYTES);
        assert_eq!(guess_bytes("x:latest"), DEFAULT_MODEL_BYTES);
        assert_eq!(load_secs(2_500_000_000), 5);
    }

    #[test]
    fn remaining_time_follows_progress() {
        let job = LoadJob {
            progress: 75.0,
            estimated_time: Some(40),
            ..LoadJob::default()
        };
        assert_eq!(remaining_secs(&job), Some(10));
        assert!(age("not a time").is_none());
        assert!(age(&now_rfc3339()).is_some_and(|a| a < Duration::from_secs(5)));
    }
}
