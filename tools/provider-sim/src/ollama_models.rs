//! Simulated Ollama model management: which models are installed (on disk) and loaded (in
//! memory), pulls with streamed progress that concurrent requests share, and the routes
//! `GET /api/tags`, `POST /api/show`, `POST /api/pull`, `GET /api/ps`, `DELETE /api/delete`
//! plus the `/_sim/ollama` test controls. Loading and unloading through `/api/generate` and
//! `/api/chat` is in `ollama.rs`, which calls [`OllamaState::acquire`] / [`OllamaState::unload`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;

use crate::common::{Key, St, bearer, json_response, parse_body};
use crate::{RecordedRequest, State};

/// Default simulated download speed of `/api/pull`: 200 MB/s.
pub const DEFAULT_PULL_BYTES_PER_SEC: u64 = 200_000_000;
/// Default size of the weights layer of a pulled model: 120 MB.
pub const DEFAULT_WEIGHTS_BYTES: u64 = 120_000_000;

/// Error of a pull whose model name contains `missing` (the registry has no such manifest).
const MISSING_ERROR: &str = "pull model manifest: file does not exist";
/// Error of a pull whose model name contains `fail-midway` (or `fail-once`, on its first pull
/// only: one that starts with none of the weights), sent once half the weights arrived.
const MIDWAY_ERROR: &str = "max retries exceeded: unexpected EOF";
/// Error of a pull that [`OllamaState::reset`] interrupted.
const RESET_ERROR: &str = "pull canceled: simulator reset";
/// Statuses after every layer is downloaded, in order.
const FINAL_STATUSES: [&str; 3] = ["verifying sha256 digest", "writing manifest", "success"];

const TEMPLATE: &str = "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n";
const LICENSE: &str =
    "Simulated model served by provider-sim. No weights, no warranty; for tests only.";
const PARAMS: &str = "{\"stop\":[\"<|im_start|>\",\"<|im_end|>\"]}";
const STOP: [&str; 2] = ["<|im_start|>", "<|im_end|>"];
/// Size of the config blob of a manifest (`application/vnd.docker.container.image.v1+json`).
const CONFIG_BYTES: u64 = 561;

/// A model the simulated Ollama can have on disk and in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaModel {
    /// `name:tag` as listed; `llama3.2` is stored as `llama3.2:latest`.
    pub name: String,
    /// `details.family`, e.g. `llama`.
    pub family: String,
    /// `details.parameter_size`, e.g. `3.2B`.
    pub parameter_size: String,
    /// `details.quantization_level`, e.g. `Q4_K_M`.
    pub quantization_level: String,
    /// Size of the weights layer. The model's `size` adds the small template, license,
    /// params and config layers.
    pub weights_bytes: u64,
    /// `size` and `size_vram` in `/api/ps` while loaded.
    pub memory_bytes: u64,
    /// Context length while loaded (`/api/ps`, `/api/show` `model_info`).
    pub context_length: u64,
}

impl OllamaModel {
    /// A model whose family and parameter size are guessed from the name (`qwen2:0.5b` →
    /// `qwen`, `0.5B`; without a size tag, from `weights_bytes` at ~4.85 bits per parameter).
    /// Memory when loaded is the weights plus a quarter (KV cache and buffers).
    pub fn new(name: &str, weights_bytes: u64) -> Self {
        let name = display_name(name);
        let (path, tag) = name.rsplit_once(':').unwrap_or((name.as_str(), "latest"));
        let base = path.rsplit_once('/').map_or(path, |(_, b)| b);
        let family: String = base
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .collect::<String>()
            .to_ascii_lowercase();
        let family = if family.is_empty() {
            "llama".to_owned()
        } else {
            family
        };
        let parameter_size =
            size_from_tag(tag).unwrap_or_else(|| parameters_from_bytes(weights_bytes));
        Self {
            family,
            parameter_size,
            quantization_level: "Q4_K_M".to_owned(),
            weights_bytes,
            memory_bytes: weights_bytes.saturating_add(weights_bytes / 4),
            context_length: 4096,
            name,
        }
    }

    /// Sets `details.family` and `details.parameter_size`.
    #[must_use]
    pub fn with_details(mut self, family: &str, parameter_size: &str) -> Self {
        family.clone_into(&mut self.family);
        parameter_size.clone_into(&mut self.parameter_size);
        self
    }

    /// Sets the size in memory while loaded.
    #[must_use]
    pub fn with_memory_bytes(mut self, bytes: u64) -> Self {
        self.memory_bytes = bytes;
        self
    }

    /// Whether `name` names this model (case-insensitive, a missing tag means `latest`).
    pub fn is_named(&self, name: &str) -> bool {
        model_key(&self.name) == model_key(name)
    }

    /// On-disk size: every layer of the manifest, as `/api/tags` reports it.
    pub fn size(&self) -> u64 {
        self.layers().iter().map(|l| l.size).sum()
    }

    /// Manifest digest (64 hex digits) as `/api/tags` and `/api/ps` report it.
    pub fn digest(&self) -> String {
        pseudo_sha256(&format!("manifest:{}", model_key(&self.name)))
    }

    /// The manifest's blobs in pull order: weights, template, license, params, config.
    pub(crate) fn layers(&self) -> Vec<Layer> {
        let key = model_key(&self.name);
        let family = &self.family;
        let blob = |media_type: &'static str, seed: String, size: u64| Layer {
            media_type,
            digest: format!("sha256:{}", pseudo_sha256(&seed)),
            size,
        };
        vec![
            blob(
                "application/vnd.ollama.image.model",
                format!("model:{key}"),
                self.weights_bytes,
            ),
            blob(
                "application/vnd.ollama.image.template",
                format!("template:{family}"),
                TEMPLATE.len() as u64,
            ),
            blob(
                "application/vnd.ollama.image.license",
                format!("license:{family}"),
                LICENSE.len() as u64,
            ),
            blob(
                "application/vnd.ollama.image.params",
                format!("params:{family}"),
                PARAMS.len() as u64,
            ),
            blob(
                "application/vnd.docker.container.image.v1+json",
                format!("config:{key}"),
                CONFIG_BYTES,
            ),
        ]
    }
}

/// The models `/api/tags` listed before model management existed; installed by default.
pub fn default_ollama_models() -> Vec<OllamaModel> {
    vec![
        OllamaModel::new("llama3.2:latest", 2_019_377_376).with_details("llama", "3.2B"),
        OllamaModel::new("qwen2.5:7b", 4_683_073_184).with_details("qwen2", "7.6B"),
        OllamaModel::new("mistral:latest", 4_113_289_216).with_details("llama", "7.2B"),
    ]
}

/// Model-management knobs of the simulated Ollama (part of [`crate::SimOptions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaOptions {
    /// Models on disk at start and after a reset ([`default_ollama_models`] by default).
    pub installed: Vec<OllamaModel>,
    /// Models in memory at start and after a reset (installed too when missing).
    pub loaded: Vec<String>,
    /// Simulated `/api/pull` download speed in bytes per second (0 stalls pulls).
    pub pull_bytes_per_sec: u64,
    /// Weights-layer size of a model that is pulled without being installed.
    pub pull_weights_bytes: u64,
    /// How often a pull advances and every pull stream gets a progress line (Ollama: 60 ms).
    pub progress_interval: Duration,
    /// Time to load a model into memory.
    pub load_time: Duration,
    /// `keep_alive` of requests that name none (Ollama: 5 minutes).
    pub keep_alive: Duration,
    /// Chats and generations with a model that is not installed get 404, as from Ollama.
    /// When false they are answered anyway (and nothing is loaded), so any model name works.
    pub strict_models: bool,
}

impl Default for OllamaOptions {
    fn default() -> Self {
        Self {
            installed: default_ollama_models(),
            loaded: Vec::new(),
            pull_bytes_per_sec: DEFAULT_PULL_BYTES_PER_SEC,
            pull_weights_bytes: DEFAULT_WEIGHTS_BYTES,
            progress_interval: Duration::from_millis(60),
            load_time: Duration::from_millis(300),
            keep_alive: Duration::from_secs(300),
            strict_models: false,
        }
    }
}

/// What the simulated Ollama holds right now (`GET /_sim/ollama`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OllamaSnapshot {
    /// Installed models, by name.
    pub installed: Vec<String>,
    /// Loaded (or loading) models, by name.
    pub loaded: Vec<String>,
    /// Models with a pull in progress.
    pub pulling: Vec<String>,
    /// Pulls that had to transfer bytes (joined and fully cached pulls do not count).
    pub downloads: u64,
    /// Bytes transferred by all pulls.
    pub downloaded_bytes: u64,
    /// Current simulated download speed.
    pub pull_bytes_per_sec: u64,
}

/// One blob of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layer {
    pub media_type: &'static str,
    /// `sha256:` and 64 hex digits.
    pub digest: String,
    pub size: u64,
}

#[derive(Debug)]
struct Installed {
    model: OllamaModel,
    modified_at: OffsetDateTime,
}

#[derive(Debug)]
struct Loaded {
    model: OllamaModel,
    /// When loading finishes (in the past once loaded).
    ready_at: Instant,
    /// When it is evicted; `None` keeps it forever.
    expires: Option<Instant>,
    expires_at: OffsetDateTime,
}

/// Where a pull is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    Downloading,
    Verifying,
    Success,
    Failed(String),
}

/// Progress of a pull as every waiting request sees it.
#[derive(Debug, Clone)]
struct PullProgress {
    /// Bytes per layer.
    completed: Vec<u64>,
    stage: Stage,
}

/// A pull in progress; requests for the same model subscribe to it.
#[derive(Debug)]
struct PullJob {
    key: String,
    model: OllamaModel,
    layers: Arc<[Layer]>,
    tx: watch::Sender<PullProgress>,
    epoch: u64,
    fail_midway: bool,
}

#[derive(Debug)]
struct Inner {
    /// By [`model_key`].
    installed: BTreeMap<String, Installed>,
    loaded: BTreeMap<String, Loaded>,
    pulls: HashMap<String, Arc<PullJob>>,
    /// Bytes of blobs kept from pulls that stopped early (resumed by the next pull).
    partial: HashMap<String, u64>,
    pull_bytes_per_sec: u64,
    downloads: u64,
    downloaded_bytes: u64,
    /// Bumped by a reset; pulls of an older epoch stop.
    epoch: u64,
}

impl Inner {
    fn new(opts: &OllamaOptions, epoch: u64) -> Self {
        let mut inner = Self {
            installed: BTreeMap::new(),
            loaded: BTreeMap::new(),
            pulls: HashMap::new(),
            partial: HashMap::new(),
            pull_bytes_per_sec: opts.pull_bytes_per_sec,
            downloads: 0,
            downloaded_bytes: 0,
            epoch,
        };
        let now = OffsetDateTime::now_utc();
        for model in &opts.installed {
            inner.install(model.clone(), now);
        }
        inner.set_loaded(opts, &opts.loaded);
        inner
    }

    fn install(&mut self, model: OllamaModel, modified_at: OffsetDateTime) {
        self.installed
            .insert(model_key(&model.name), Installed { model, modified_at });
    }

    fn set_loaded<S: AsRef<str>>(&mut self, opts: &OllamaOptions, names: &[S]) {
        let now = Instant::now();
        self.loaded.clear();
        for name in names {
            let key = model_key(name.as_ref());
            let model = match self.installed.get(&key) {
                Some(i) => i.model.clone(),
                None => {
                    let model = OllamaModel::new(name.as_ref(), opts.pull_weights_bytes);
                    self.install(model.clone(), OffsetDateTime::now_utc());
                    model
                }
            };
            let (expires, expires_at) = expiry(now, now, Some(opts.keep_alive));
            self.loaded.insert(
                key,
                Loaded {
                    model,
                    ready_at: now,
                    expires,
                    expires_at,
                },
            );
        }
    }

    fn evict_expired(&mut self, now: Instant) {
        self.loaded.retain(|_, l| l.expires.is_none_or(|e| e > now));
    }

    /// Digests of every blob on disk.
    fn present_blobs(&self) -> HashSet<String> {
        self.installed
            .values()
            .flat_map(|i| i.model.layers().into_iter().map(|l| l.digest))
            .collect()
    }

    /// Keeps the bytes of a pull that stops early so the next pull resumes.
    fn keep_partial(&mut self, job: &PullJob) {
        let progress = job.tx.borrow();
        for (layer, done) in job.layers.iter().zip(&progress.completed) {
            if *done > 0 {
                self.partial.insert(layer.digest.clone(), *done);
            }
        }
    }

    fn finish(&mut self, job: &Arc<PullJob>) {
        if self
            .pulls
            .get(&job.key)
            .is_some_and(|j| Arc::ptr_eq(j, job))
        {
            self.pulls.remove(&job.key);
        }
    }
}

/// The simulated Ollama's models.
#[derive(Debug)]
pub(crate) struct OllamaState {
    opts: OllamaOptions,
    inner: Mutex<Inner>,
}

/// A request's view of a pull: its blobs and progress, or `None` when the manifest is missing.
pub(crate) struct PullSubscription {
    layers: Arc<[Layer]>,
    rx: Option<watch::Receiver<PullProgress>>,
}

impl OllamaState {
    pub(crate) fn new(opts: OllamaOptions) -> Self {
        let inner = Mutex::new(Inner::new(&opts, 0));
        Self { opts, inner }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn strict_models(&self) -> bool {
        self.opts.strict_models
    }

    pub(crate) fn default_keep_alive(&self) -> Duration {
        self.opts.keep_alive
    }

    /// Back to the configured models and speed; stops pulls and zeroes the counters.
    pub(crate) fn reset(&self) {
        let mut inner = self.lock();
        let epoch = inner.epoch.wrapping_add(1);
        *inner = Inner::new(&self.opts, epoch);
    }

    pub(crate) fn snapshot(&self) -> OllamaSnapshot {
        let mut inner = self.lock();
        inner.evict_expired(Instant::now());
        let mut pulling: Vec<String> = inner.pulls.values().map(|j| j.model.name.clone()).collect();
        pulling.sort();
        OllamaSnapshot {
            installed: inner
                .installed
                .values()
                .map(|i| i.model.name.clone())
                .collect(),
            loaded: inner
                .loaded
                .values()
                .map(|l| l.model.name.clone())
                .collect(),
            pulling,
            downloads: inner.downloads,
            downloaded_bytes: inner.downloaded_bytes,
            pull_bytes_per_sec: inner.pull_bytes_per_sec,
        }
    }

    /// Replaces the installed models (loaded ones stay loaded, as after a delete in Ollama).
    pub(crate) fn set_installed(&self, models: Vec<OllamaModel>) {
        let mut inner = self.lock();
        inner.installed.clear();
        let now = OffsetDateTime::now_utc();
        for model in models {
            inner.install(model, now);
        }
    }

    /// Replaces the loaded models; names that are not installed are installed first.
    pub(crate) fn set_loaded<S: AsRef<str>>(&self, names: &[S]) {
        self.lock().set_loaded(&self.opts, names);
    }

    pub(crate) fn set_pull_speed(&self, bytes_per_sec: u64) {
        self.lock().pull_bytes_per_sec = bytes_per_sec;
    }

    /// Marks an installed model as used: loads it unless loaded and sets its expiry from
    /// `keep_alive` (`None`: never). Returns how long until it is ready, or `None` when the
    /// model is not installed.
    pub(crate) fn acquire(&self, name: &str, keep_alive: Option<Duration>) -> Option<Duration> {
        let key = model_key(name);
        let now = Instant::now();
        let mut inner = self.lock();
        inner.evict_expired(now);
        let model = inner.installed.get(&key)?.model.clone();
        let ready_at = match inner.loaded.get(&key) {
            Some(l) => l.ready_at,
            None => now.checked_add(self.opts.load_time).unwrap_or(now),
        };
        let (expires, expires_at) = expiry(now, ready_at, keep_alive);
        inner.loaded.insert(
            key,
            Loaded {
                model,
                ready_at,
                expires,
                expires_at,
            },
        );
        Some(ready_at.saturating_duration_since(now))
    }

    /// Unloads a model; false when it is not installed (Ollama answers 404 then).
    pub(crate) fn unload(&self, name: &str) -> bool {
        let key = model_key(name);
        let mut inner = self.lock();
        if !inner.installed.contains_key(&key) {
            return false;
        }
        inner.loaded.remove(&key);
        true
    }

    /// `/api/tags` entries, most recently modified first.
    fn list(&self) -> Vec<Value> {
        let inner = self.lock();
        let mut models: Vec<&Installed> = inner.installed.values().collect();
        models.sort_by_key(|i| std::cmp::Reverse(i.modified_at));
        models
            .into_iter()
            .map(|i| {
                let m = &i.model;
                json!({
                    "name": m.name,
                    "model": m.name,
                    "modified_at": rfc3339(i.modified_at),
                    "size": m.size(),
                    "digest": m.digest(),
                    "details": details(m),
                })
            })
            .collect()
    }

    /// `/api/ps` entries, longest remaining first.
    fn running(&self) -> Vec<Value> {
        let mut inner = self.lock();
        inner.evict_expired(Instant::now());
        let mut models: Vec<&Loaded> = inner.loaded.values().collect();
        models.sort_by_key(|l| std::cmp::Reverse(l.expires_at));
        models
            .into_iter()
            .map(|l| {
                let m = &l.model;
                json!({
                    "name": m.name,
                    "model": m.name,
                    "size": m.memory_bytes,
                    "digest": m.digest(),
                    "details": details(m),
                    "expires_at": rfc3339(l.expires_at),
                    "size_vram": m.memory_bytes,
                    "context_length": m.context_length,
                })
            })
            .collect()
    }

    /// The `/api/show` body of an installed model.
    fn show(&self, name: &str) -> Option<Value> {
        let inner = self.lock();
        let installed = inner.installed.get(&model_key(name))?;
        Some(show_body(&installed.model, installed.modified_at))
    }

    /// Removes an installed model; false when there is none.
    fn delete(&self, name: &str) -> bool {
        self.lock().installed.remove(&model_key(name)).is_some()
    }

    /// Starts a pull of `name`, or joins the one in progress.
    fn start_pull(self: &Arc<Self>, name: &str) -> PullSubscription {
        let missing = name.to_ascii_lowercase().contains("missing");
        let key = model_key(name);
        let mut inner = self.lock();
        if missing {
            return PullSubscription {
                layers: Arc::from(Vec::new()),
                rx: None,
            };
        }
        if let Some(job) = inner.pulls.get(&key) {
            return PullSubscription {
                layers: Arc::clone(&job.layers),
                rx: Some(job.tx.subscribe()),
            };
        }
        let model = match inner.installed.get(&key) {
            Some(i) => i.model.clone(),
            None => OllamaModel::new(name, self.opts.pull_weights_bytes),
        };
        let layers: Arc<[Layer]> = Arc::from(model.layers());
        let present = inner.present_blobs();
        let completed: Vec<u64> = layers
            .iter()
            .map(|l| {
                if present.contains(&l.digest) {
                    l.size
                } else {
                    inner
                        .partial
                        .get(&l.digest)
                        .copied()
                        .unwrap_or(0)
                        .min(l.size)
                }
            })
            .collect();
        if completed
            .iter()
            .zip(layers.iter())
            .any(|(c, l)| *c < l.size)
        {
            inner.downloads += 1;
        }
        let fail_midway = {
            let lower = name.to_ascii_lowercase();
            lower.contains("fail-midway")
                || (lower.contains("fail-once") && completed.first().copied() == Some(0))
        };
        let (tx, rx) = watch::channel(PullProgress {
            completed,
            stage: Stage::Downloading,
        });
        let job = Arc::new(PullJob {
            key: key.clone(),
            fail_midway,
            model,
            layers: Arc::clone(&layers),
            tx,
            epoch: inner.epoch,
        });
        inner.pulls.insert(key, Arc::clone(&job));
        drop(inner);
        tokio::spawn(run_pull(Arc::clone(self), job));
        PullSubscription {
            layers,
            rx: Some(rx),
        }
    }
}

/// Drives one pull: every tick, moves bytes at the current speed through the layers in
/// order; then verifies, installs and succeeds. Stops early, keeping the bytes, when no
/// request waits any more (Ollama cancels a download nobody waits for and resumes it later).
async fn run_pull(state: Arc<OllamaState>, job: Arc<PullJob>) {
    let tick = state.opts.progress_interval.max(Duration::from_millis(1));
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(last);
        last = now;
        let mut inner = state.lock();
        if inner.epoch != job.epoch {
            job.tx
                .send_modify(|p| p.stage = Stage::Failed(RESET_ERROR.to_owned()));
            inner.finish(&job);
            return;
        }
        let stage = job.tx.borrow().stage.clone();
        match stage {
            Stage::Downloading => {
                if job.tx.receiver_count() == 0 {
                    inner.keep_partial(&job);
                    inner.finish(&job);
                    return;
                }
                let budget = bytes_in(inner.pull_bytes_per_sec, elapsed);
                let mut moved = 0;
                let mut failed = false;
                job.tx.send_modify(|p| {
                    advance(&job.layers, &mut p.completed, budget, &mut moved);
                    let weights_half = job.layers.first().map_or(0, |l| l.size / 2);
                    let weights_done = p.completed.first().copied().unwrap_or(0);
                    if job.fail_midway && weights_done >= weights_half {
                        p.stage = Stage::Failed(MIDWAY_ERROR.to_owned());
                        failed = true;
                    } else if p
                        .completed
                        .iter()
                        .zip(job.layers.iter())
                        .all(|(c, l)| *c >= l.size)
                    {
                        p.stage = Stage::Verifying;
                    }
                });
                inner.downloaded_bytes = inner.downloaded_bytes.saturating_add(moved);
                if failed {
                    inner.keep_partial(&job);
                    inner.finish(&job);
                    return;
                }
            }
            Stage::Verifying => {
                // "writing manifest": the model is on disk from here on.
                inner.install(job.model.clone(), OffsetDateTime::now_utc());
                for layer in job.layers.iter() {
                    inner.partial.remove(&layer.digest);
                }
                job.tx.send_modify(|p| p.stage = Stage::Success);
                inner.finish(&job);
                return;
            }
            Stage::Success | Stage::Failed(_) => {
                inner.finish(&job);
                return;
            }
        }
    }
}

/// Moves up to `budget` bytes into the layers, first unfinished layer first.
fn advance(layers: &[Layer], completed: &mut [u64], mut budget: u64, moved: &mut u64) {
    for (done, layer) in completed.iter_mut().zip(layers) {
        if budget == 0 {
            break;
        }
        let take = layer.size.saturating_sub(*done).min(budget);
        *done += take;
        budget -= take;
        *moved += take;
    }
}

/// Bytes transferred in `elapsed` at `bytes_per_sec`.
fn bytes_in(bytes_per_sec: u64, elapsed: Duration) -> u64 {
    let bytes = u128::from(bytes_per_sec) * elapsed.as_micros() / 1_000_000;
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// What a request has already reported of a pull.
#[derive(Debug, Default)]
struct Cursor {
    /// First layer not yet reported complete.
    layer: usize,
    /// Final statuses reported so far.
    finals: usize,
    /// The error reported, if the pull failed.
    failed: Option<String>,
}

impl Cursor {
    /// Appends the lines that `progress` adds; true once the stream is over.
    fn step(&mut self, layers: &[Layer], progress: &PullProgress, out: &mut String) -> bool {
        while let Some(layer) = layers.get(self.layer) {
            let done = progress
                .completed
                .get(self.layer)
                .copied()
                .unwrap_or(0)
                .min(layer.size);
            layer_line(out, layer, done);
            if done < layer.size {
                break;
            }
            self.layer += 1;
        }
        if let Stage::Failed(message) = &progress.stage {
            error_line(out, message);
            self.failed = Some(message.clone());
            return true;
        }
        if self.layer < layers.len() {
            return false;
        }
        let reached = match progress.stage {
            Stage::Downloading | Stage::Failed(_) => 0,
            Stage::Verifying => 1,
            Stage::Success => FINAL_STATUSES.len(),
        };
        while self.finals < reached {
            if let Some(status) = FINAL_STATUSES.get(self.finals) {
                status_line(out, status);
            }
            self.finals += 1;
        }
        self.finals == FINAL_STATUSES.len()
    }
}

/// Turns a pull's progress into the NDJSON lines of one request: what is there when it
/// starts, then one step per progress update (each update repeats the current layer's line,
/// like Ollama's ticker does, so a stalled pull still shows signs of life).
struct PullWatcher {
    sub: PullSubscription,
    cursor: Cursor,
    started: bool,
}

impl PullWatcher {
    fn new(sub: PullSubscription) -> Self {
        Self {
            sub,
            cursor: Cursor::default(),
            started: false,
        }
    }

    /// The next lines (at least one) and whether the stream is over.
    async fn next_chunk(&mut self) -> (String, bool) {
        let mut out = String::new();
        let Some(rx) = self.sub.rx.as_mut() else {
            status_line(&mut out, "pulling manifest");
            error_line(&mut out, MISSING_ERROR);
            self.cursor.failed = Some(MISSING_ERROR.to_owned());
            return (out, true);
        };
        loop {
            if self.started {
                if rx.changed().await.is_err() {
                    // The pull ended; its last state is final.
                    let progress = rx.borrow().clone();
                    if !self.cursor.step(&self.sub.layers, &progress, &mut out) {
                        error_line(&mut out, "pull canceled");
                        self.cursor.failed = Some("pull canceled".to_owned());
                    }
                    return (out, true);
                }
            } else {
                self.started = true;
                status_line(&mut out, "pulling manifest");
            }
            let done = {
                let progress = rx.borrow_and_update();
                self.cursor.step(&self.sub.layers, &progress, &mut out)
            };
            if done || !out.is_empty() {
                return (out, done);
            }
        }
    }
}

fn status_line(out: &mut String, status: &str) {
    out.push_str("{\"status\":");
    out.push_str(&Value::from(status).to_string());
    out.push_str("}\n");
}

fn error_line(out: &mut String, message: &str) {
    out.push_str("{\"error\":");
    out.push_str(&Value::from(message).to_string());
    out.push_str("}\n");
}

/// `{"status":"pulling <12 hex>","digest":"sha256:…","total":N,"completed":M}`; like Ollama's
/// `omitempty`, `completed` is left out while zero.
fn layer_line(out: &mut String, layer: &Layer, completed: u64) {
    let short = layer.digest.get(7..19).unwrap_or_default();
    let _ = write!(
        out,
        "{{\"status\":\"pulling {short}\",\"digest\":\"{}\",\"total\":{}",
        layer.digest, layer.size
    );
    if completed > 0 {
        let _ = write!(out, ",\"completed\":{completed}");
    }
    out.push_str("}\n");
}

// ---------- names, digests, JSON ----------

/// `name:tag` with the default registry prefix removed and `:latest` added when untagged.
pub(crate) fn display_name(name: &str) -> String {
    let mut n = name.trim();
    for prefix in ["registry.ollama.ai/library/", "registry.ollama.ai/"] {
        if n.len() >= prefix.len()
            && n.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        {
            n = n.get(prefix.len()..).unwrap_or(n);
            break;
        }
    }
    let last = n.rsplit_once('/').map_or(n, |(_, l)| l);
    if last.contains(':') {
        n.to_owned()
    } else {
        format!("{n}:latest")
    }
}

/// Case-insensitive identity of a model name.
fn model_key(name: &str) -> String {
    display_name(name).to_ascii_lowercase()
}

/// `7b` → `7B`, `0.5b-instruct` → `0.5B`, `8x7b` → `8x7B`; `None` for other tags.
fn size_from_tag(tag: &str) -> Option<String> {
    let size = tag.split(['-', '_']).next()?;
    let (number, unit) = size.split_at(size.len().checked_sub(1)?);
    let unit = unit.to_ascii_uppercase();
    let valid = matches!(unit.as_str(), "B" | "M")
        && !number.is_empty()
        && number.starts_with(|c: char| c.is_ascii_digit())
        && number
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == 'x');
    valid.then(|| format!("{number}{unit}"))
}

/// Parameter count of Q4_K_M weights (~4.85 bits each), e.g. `198.0M`, `3.3B`.
fn parameters_from_bytes(bytes: u64) -> String {
    let params = bytes as f64 * 8.0 / 4.85;
    if params >= 1e9 {
        format!("{:.1}B", params / 1e9)
    } else {
        format!("{:.1}M", params / 1e6)
    }
}

/// `3.2B` → 3.2e9 (`8x7B` → 56e9), for `general.parameter_count`.
fn parameter_count(size: &str) -> u64 {
    let (number, scale) = match size.chars().last() {
        Some('B' | 'b') => (&size[..size.len() - 1], 1e9),
        Some('M' | 'm') => (&size[..size.len() - 1], 1e6),
        Some('K' | 'k') => (&size[..size.len() - 1], 1e3),
        _ => (size, 1.0),
    };
    let value: f64 = number
        .split('x')
        .map(|p| p.parse::<f64>().unwrap_or(0.0))
        .product();
    (value * scale) as u64
}

/// A deterministic stand-in for a SHA-256 digest: 64 hex digits derived from `seed`.
fn pseudo_sha256(seed: &str) -> String {
    // FNV-1a, then splitmix64 for four words.
    let mut state = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut out = String::with_capacity(64);
    for _ in 0..4 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let _ = write!(out, "{z:016x}");
    }
    out
}

/// RFC 3339 in UTC.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// `(evict at, expires_at)` for a model ready at `ready_at` kept for `keep_alive`.
fn expiry(
    now: Instant,
    ready_at: Instant,
    keep_alive: Option<Duration>,
) -> (Option<Instant>, OffsetDateTime) {
    let wall_now = OffsetDateTime::now_utc();
    // Ollama's "forever" is the largest duration, about 292 years.
    let forever = wall_now
        .checked_add(time::Duration::nanoseconds(i64::MAX))
        .unwrap_or(wall_now);
    let Some(keep) = keep_alive else {
        return (None, forever);
    };
    let until = ready_at.saturating_duration_since(now).saturating_add(keep);
    let expires_at = time::Duration::try_from(until)
        .ok()
        .and_then(|d| wall_now.checked_add(d))
        .unwrap_or(forever);
    (now.checked_add(until), expires_at)
}

fn details(m: &OllamaModel) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": m.family,
        "families": [m.family],
        "parameter_size": m.parameter_size,
        "quantization_level": m.quantization_level,
    })
}

fn show_body(m: &OllamaModel, modified_at: OffsetDateTime) -> Value {
    let weights = m
        .layers()
        .first()
        .map(|l| l.digest.replacen(':', "-", 1))
        .unwrap_or_default();
    let mut modelfile = format!(
        "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {}\n\nFROM /root/.ollama/models/blobs/{weights}\nTEMPLATE \"\"\"{TEMPLATE}\"\"\"\n",
        m.name
    );
    for stop in STOP {
        let _ = writeln!(modelfile, "PARAMETER stop {stop}");
    }
    let _ = writeln!(modelfile, "LICENSE \"\"\"{LICENSE}\"\"\"");
    let parameters: Vec<String> = STOP
        .iter()
        .map(|s| format!("{:<30} {}", "stop", Value::from(*s)))
        .collect();
    let family = &m.family;
    let mut info = Map::new();
    info.insert("general.architecture".into(), json!(family));
    info.insert("general.file_type".into(), json!(15));
    info.insert(
        "general.parameter_count".into(),
        json!(parameter_count(&m.parameter_size)),
    );
    info.insert("general.quantization_version".into(), json!(2));
    info.insert(format!("{family}.context_length"), json!(m.context_length));
    info.insert(format!("{family}.embedding_length"), json!(3072));
    info.insert(format!("{family}.block_count"), json!(28));
    info.insert(format!("{family}.attention.head_count"), json!(24));
    info.insert(format!("{family}.attention.head_count_kv"), json!(8));
    info.insert("tokenizer.ggml.model".into(), json!("gpt2"));
    info.insert("tokenizer.ggml.tokens".into(), json!([]));
    json!({
        "license": LICENSE,
        "modelfile": modelfile,
        "parameters": parameters.join("\n"),
        "template": TEMPLATE,
        "details": details(m),
        "model_info": info,
        "capabilities": ["completion"],
        "modified_at": rfc3339(modified_at),
    })
}

// ---------- handlers ----------

fn error(status: u16, message: &str) -> Response {
    json_response(status, &json!({"error": message}))
}

/// `model` (or the legacy `name`) of a request body.
fn model_field(body: &Value) -> Option<String> {
    ["model", "name"]
        .iter()
        .filter_map(|k| body.get(*k).and_then(Value::as_str))
        .find(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

/// 400 for an empty or non-object body, as Ollama's JSON binding answers.
fn bad_body(raw: &Bytes, body: &Value) -> Option<Response> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        Some(error(400, "missing request body"))
    } else if !body.is_object() {
        Some(error(400, "invalid JSON request body"))
    } else {
        None
    }
}

fn record(state: &State, headers: &HeaderMap, path: &str, stream: bool, body: Value) {
    state.record(RecordedRequest {
        provider: "ollama".into(),
        path: path.into(),
        model: model_field(&body),
        stream,
        has_key: Key::classify(bearer(headers)).present(),
        body,
    });
}

/// `GET /api/tags`.
pub(crate) async fn tags(AxState(state): St) -> Response {
    json_response(200, &json!({"models": state.ollama.list()}))
}

/// `GET /api/ps`.
pub(crate) async fn ps(AxState(state): St) -> Response {
    json_response(200, &json!({"models": state.ollama.running()}))
}

/// `POST /api/show`.
pub(crate) async fn show(AxState(state): St, headers: HeaderMap, raw: Bytes) -> Response {
    let body = parse_body(&raw);
    let model = model_field(&body);
    record(&state, &headers, "/api/show", false, body.clone());
    if let Some(resp) = bad_body(&raw, &body) {
        return resp;
    }
    let Some(model) = model else {
        return error(400, "model is required");
    };
    match state.ollama.show(&model) {
        Some(v) => json_response(200, &v),
        None => error(404, &format!("model '{}' not found", display_name(&model))),
    }
}

/// `DELETE /api/delete`: 200 with an empty body, or 404.
pub(crate) async fn delete(AxState(state): St, headers: HeaderMap, raw: Bytes) -> Response {
    let body = parse_body(&raw);
    let model = model_field(&body);
    record(&state, &headers, "/api/delete", false, body.clone());
    if let Some(resp) = bad_body(&raw, &body) {
        return resp;
    }
    let Some(model) = model else {
        return error(400, "name \"\" is invalid");
    };
    if state.ollama.delete(&model) {
        StatusCode::OK.into_response()
    } else {
        error(404, &format!("model '{model}' not found"))
    }
}

/// `POST /api/pull`: NDJSON progress (errors as a last `{"error"}` line of the 200 stream),
/// or with `"stream": false` one `{"status":"success"}` (500 `{"error"}` on failure).
pub(crate) async fn pull(AxState(state): St, headers: HeaderMap, raw: Bytes) -> Response {
    let body = parse_body(&raw);
    let model = model_field(&body);
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(true);
    record(&state, &headers, "/api/pull", stream, body.clone());
    if let Some(resp) = bad_body(&raw, &body) {
        return resp;
    }
    let Some(model) = model else {
        return error(400, "invalid model name");
    };
    let mut watcher = PullWatcher::new(state.ollama.start_pull(&model));
    if !stream {
        loop {
            let (_, done) = watcher.next_chunk().await;
            if done {
                break;
            }
        }
        return match watcher.cursor.failed {
            Some(message) => error(500, &message),
            None => json_response(200, &json!({"status": "success"})),
        };
    }
    let lines = futures::stream::unfold(Some(watcher), |watcher| async move {
        let mut watcher = watcher?;
        let (chunk, done) = watcher.next_chunk().await;
        Some((
            Ok::<_, Infallible>(Bytes::from(chunk)),
            (!done).then_some(watcher),
        ))
    });
    let mut resp = Response::new(Body::from_stream(lines));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

// ---------- /_sim/ollama ----------

/// `GET /_sim/ollama`.
pub(crate) async fn sim_state(AxState(state): St) -> Response {
    Json(state.ollama.snapshot()).into_response()
}

/// One entry of `PUT /_sim/ollama/installed`: a name, or an object with `name` and optional
/// `weightsBytes`, `memoryBytes`, `family`, `parameterSize`, `quantizationLevel`,
/// `contextLength`.
fn model_from_json(v: &Value, default_weights: u64) -> Option<OllamaModel> {
    if let Some(name) = v.as_str() {
        return Some(OllamaModel::new(name, default_weights));
    }
    let name = v.get("name").and_then(Value::as_str)?;
    let weights = v
        .get("weightsBytes")
        .and_then(Value::as_u64)
        .unwrap_or(default_weights);
    let mut m = OllamaModel::new(name, weights);
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    if let Some(f) = text("family") {
        m.family = f;
    }
    if let Some(p) = text("parameterSize") {
        m.parameter_size = p;
    }
    if let Some(q) = text("quantizationLevel") {
        m.quantization_level = q;
    }
    if let Some(b) = v.get("memoryBytes").and_then(Value::as_u64) {
        m.memory_bytes = b;
    }
    if let Some(c) = v.get("contextLength").and_then(Value::as_u64) {
        m.context_length = c;
    }
    Some(m)
}

/// `PUT /_sim/ollama/installed` with a JSON array of names or model objects.
pub(crate) async fn sim_installed(AxState(state): St, raw: Bytes) -> Response {
    let body = parse_body(&raw);
    let weights = state.ollama.opts.pull_weights_bytes;
    let models: Option<Vec<OllamaModel>> = body
        .as_array()
        .map(|a| a.iter().map(|v| model_from_json(v, weights)).collect())
        .unwrap_or(None);
    let Some(models) = models else {
        return error(
            400,
            "expected an array of model names or {\"name\": ...} objects",
        );
    };
    state.ollama.set_installed(models);
    Json(state.ollama.snapshot()).into_response()
}

/// `PUT /_sim/ollama/loaded` with a JSON array of names.
pub(crate) async fn sim_loaded(AxState(state): St, raw: Bytes) -> Response {
    let body = parse_body(&raw);
    let names: Option<Vec<&str>> = body
        .as_array()
        .map(|a| a.iter().map(Value::as_str).collect())
        .unwrap_or(None);
    let Some(names) = names else {
        return error(400, "expected an array of model names");
    };
    state.ollama.set_loaded(&names);
    Json(state.ollama.snapshot()).into_response()
}

/// `PUT /_sim/ollama/pull-speed` with `{"bytesPerSec": N}`.
pub(crate) async fn sim_pull_speed(AxState(state): St, raw: Bytes) -> Response {
    let Some(speed) = parse_body(&raw).get("bytesPerSec").and_then(Value::as_u64) else {
        return error(400, "expected {\"bytesPerSec\": N}");
    };
    state.ollama.set_pull_speed(speed);
    Json(state.ollama.snapshot()).into_response()
}

/// `POST /_sim/ollama/reset`.
pub(crate) async fn sim_reset(AxState(state): St) -> Response {
    state.ollama.reset();
    Json(state.ollama.snapshot()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized() {
        assert_eq!(display_name("llama3.2"), "llama3.2:latest");
        assert_eq!(
            display_name("registry.ollama.ai/library/qwen2:0.5b"),
            "qwen2:0.5b"
        );
        assert_eq!(display_name("me/model"), "me/model:latest");
        assert_eq!(
            display_name("host:5000/me/model"),
            "host:5000/me/model:latest"
        );
        assert_eq!(model_key("Llama3.2"), model_key("llama3.2:latest"));
    }

    #[test]
    fn sizes_from_tags_and_bytes() {
        assert_eq!(size_from_tag("7b").as_deref(), Some("7B"));
        assert_eq!(
            size_from_tag("0.5b-instruct-q4_K_M").as_deref(),
            Some("0.5B")
        );
        assert_eq!(size_from_tag("8x7b").as_deref(), Some("8x7B"));
        assert_eq!(size_from_tag("latest"), None);
        assert_eq!(size_from_tag("b"), None);
        assert_eq!(parameters_from_bytes(120_000_000), "197.9M");
        assert_eq!(parameter_count("3.2B"), 3_200_000_000);
        assert_eq!(parameter_count("8x7B"), 56_000_000_000);
        let m = OllamaModel::new("qwen2:0.5b", 1000);
        assert_eq!(
            (m.family.as_str(), m.parameter_size.as_str()),
            ("qwen", "0.5B")
        );
    }

    #[test]
    fn digests_look_like_sha256() {
        let d = pseudo_sha256("x");
        assert_eq!(d.len(), 64);
        assert!(d.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(d, pseudo_sha256("y"));
        let layers = OllamaModel::new("a", 10).layers();
        assert_eq!(layers.len(), 5);
        assert!(layers.iter().all(|l| l.digest.len() == 71));
    }

    #[test]
    fn cursor_reports_every_layer_and_final_statuses_in_order() {
        let layers = OllamaModel::new("a", 100).layers();
        let mut cursor = Cursor::default();
        let mut out = String::new();
        let mut progress = PullProgress {
            completed: vec![0; layers.len()],
            stage: Stage::Downloading,
        };
        assert!(!cursor.step(&layers, &progress, &mut out));
        progress.completed = layers.iter().map(|l| l.size).collect();
        progress.stage = Stage::Success;
        assert!(cursor.step(&layers, &progress, &mut out));
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect();
        assert_eq!(lines.len(), 1 + layers.len() + 3);
        assert!(lines[0].get("completed").is_none());
        assert_eq!(lines[1]["completed"], 100);
        assert_eq!(lines[lines.len() - 3]["status"], "verifying sha256 digest");
        assert_eq!(lines[lines.len() - 1]["status"], "success");
    }

    #[test]
    fn bytes_in_time() {
        assert_eq!(bytes_in(200_000_000, Duration::from_millis(60)), 12_000_000);
        assert_eq!(bytes_in(u64::MAX, Duration::from_secs(1000)), u64::MAX);
    }
}
