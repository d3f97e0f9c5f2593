//! The job runner: a durable pull consumer of the work queue shared by every loader replica, at
//! most `max_concurrent_jobs` jobs at once per replica (a message is fetched only when a slot is
//! free, so none waits here while its ack wait runs down).
//!
//! Per message: read the job; ended → ack; `cancelRequested` → `cancelled`, ack; count the
//! attempt (the record's `attempts`, not the server's deliveries) and past `max_attempts` end it
//! `error`; else mark it `running` and work:
//!
//! - Ollama: pick the host (the one with the model loaded or installed, else the first that
//!   answers), pull when not installed (progress 0–90 %, never decreasing), then load with
//!   `keep_alive` (90–100 %).
//! - OpenAI-compatible: the server answering its model list completes the job.
//!
//! While it works the runner writes the job (and the model's `loading` status) at most every
//! `progress_interval_ms` and on phase changes, re-reads it for a cancel, and sends progress acks
//! every third of `ack_wait_secs`. A record written meanwhile by someone else either carries a
//! cancel (stop: the pull stream is dropped, which stops Ollama's download) or a newer attempt
//! (another runner took the job over: stop without a word). At the end: the final job record
//! first, then the model's status, then the `active` key freed, then the ack.
//!
//! A loader that stops gracefully hands its jobs back (their attempt returned, then a NAK, so
//! another replica takes them over at once); a killed one just goes quiet, and the job is
//! redelivered after `ack_wait_secs`. Either way the next delivery runs the
//! job again from the start — Ollama resumes downloads — clamped to the progress already shown.

use crate::loader::{JobView, Loader, RunningJob, is_ollama, lock, now_rfc3339, remaining_secs};
use crate::ollama::PullLine;
use crate::progress::{self, PullProgress};
use crate::state::{CasError, Versioned};
use crate::status::loaded_record;
use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use polylogue_catalog::ModelEntry;
use polylogue_contracts::models::{LoadJob, ModelStatusRecord, job, status};
use polylogue_contracts::subjects::loader as names;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// The durable consumer shared by the replicas.
pub const CONSUMER: &str = "ollama-loader";
/// How long one fetch waits for a job before asking again.
const FETCH_WAIT: Duration = Duration::from_secs(5);
/// Redelivery delay after a failure to read or write the job store.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Compare-and-set rounds of a state change before giving up.
const CAS_ROUNDS: usize = 8;

/// Phases the runner sets itself (the rest are Ollama's pull statuses).
pub mod phase {
    pub const STARTING: &str = "starting";
    pub const LOADING: &str = "loading";
    pub const CHECKING: &str = "checking";
    /// Waiting to pull again after a passing failure (`loader.pull_retries`).
    pub const RETRYING: &str = "retrying";
    pub const READY: &str = "ready";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
}

/// Consumes the work queue until `shutdown`, reconnecting after errors.
pub async fn run(loader: Arc<Loader>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(loader.settings.max_concurrent_jobs.max(1)));
    while !shutdown.is_cancelled() {
        if let Err(error) = consume(&loader, &permits, &shutdown).await {
            tracing::warn!(%error, "load-job consumer stopped; restarting");
        }
        tokio::select! {
            () = shutdown.cancelled() => {},
            () = tokio::time::sleep(Duration::from_millis(500)) => {},
        }
    }
}

async fn consume(
    loader: &Arc<Loader>,
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Result<(), async_nats::Error> {
    let settings = &loader.settings;
    let stream = loader
        .js
        .get_stream(names::queue_stream(loader.prefix()))
        .await?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(settings.ack_wait_secs.max(1)),
            // Attempts are counted in the job record; past `max_attempts` the job ends `error`.
            max_deliver: -1,
            // Shared by every replica: room for all their running jobs.
            max_ack_pending: i64::try_from(settings.max_concurrent_jobs)
                .unwrap_or(i64::MAX)
                .max(1000),
            ..Default::default()
        })
        .await?;
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            permit = Arc::clone(permits).acquire_owned() => permit?,
        };
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(FETCH_WAIT)
            .messages()
            .await?;
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = batch.next() => next,
        };
        let Some(message) = next else { continue };
        let message = message?;
        spawn(loader, message, permit);
    }
}

/// Runs one message's job as an abortable task (so `kill` can stop it where it stands).
fn spawn(
    loader: &Arc<Loader>,
    message: jetstream::Message,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let run_id = loader
        .next_run
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let view = Arc::new(Mutex::new(JobView::default()));
    let work = {
        let loader = Arc::clone(loader);
        let view = Arc::clone(&view);
        async move {
            let _permit = permit;
            handle(&loader, message, view).await;
        }
    };
    let (work, abort) = futures::future::abortable(work);
    loader.running.insert(run_id, RunningJob { view, abort });
    let loader = Arc::clone(loader);
    loader.tasks.clone().spawn(async move {
        let _ = work.await;
        loader.running.remove(&run_id);
    });
}

/// What becomes of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    Ack,
    Nak(Option<Duration>),
    /// No answer: another runner owns the job, or this loader is dead.
    Leave,
}

async fn handle(loader: &Loader, message: jetstream::Message, view: Arc<Mutex<JobView>>) {
    let job_id = String::from_utf8_lossy(&message.payload).trim().to_owned();
    lock(&view).job_id.clone_from(&job_id);
    metrics::gauge!("polylogue_loader_jobs_running").increment(1.0);
    let disposition = process(loader, &message, &job_id, &view).await;
    metrics::gauge!("polylogue_loader_jobs_running").decrement(1.0);
    if loader.is_killed() {
        return;
    }
    let kind = match disposition {
        Disposition::Ack => AckKind::Ack,
        Disposition::Nak(delay) => AckKind::Nak(delay),
        Disposition::Leave => return,
    };
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(%error, job_id, "load-job ack failed; the job will be redelivered");
    }
}

/// Takes the job (or finds it needs no running) and runs it.
async fn process(
    loader: &Loader,
    message: &jetstream::Message,
    job_id: &str,
    view: &Arc<Mutex<JobView>>,
) -> Disposition {
    for _ in 0..CAS_ROUNDS {
        let current = match loader.jobs.get(job_id).await {
            Ok(Some(current)) => current,
            Ok(None) => {
                tracing::debug!(job_id, "load job gone (expired); message dropped");
                return Disposition::Ack;
            }
            Err(error) => {
                tracing::warn!(%error, job_id, "load job not read; retrying");
                return Disposition::Nak(Some(STORE_RETRY));
            }
        };
        if job::is_terminal(&current.value.status) {
            return Disposition::Ack;
        }
        lock(view).model_id.clone_from(&current.value.model_id);
        let Some(model) = loader.catalog.get(&current.value.model_id).cloned() else {
            let reason = format!("model {} is not in the catalog", current.value.model_id);
            let gone = placeholder(&current.value.model_id);
            return Runner::new(loader, message, view, gone, current)
                .finish(Outcome::Error(reason))
                .await;
        };
        let mut runner = Runner::new(loader, message, view, model, current);
        if runner.job.cancel_requested {
            return runner.finish(Outcome::Cancelled).await;
        }
        let attempts = runner.job.attempts.saturating_add(1);
        if attempts > loader.settings.max_attempts {
            let times = match runner.job.attempts {
                1 => "once".to_owned(),
                n => format!("{n} times"),
            };
            let reason = format!("the loader stopped {times} while loading; giving up");
            return runner.finish(Outcome::Error(reason)).await;
        }
        let mut next = runner.job.clone();
        next.attempts = attempts;
        next.status = job::RUNNING.to_owned();
        phase::STARTING.clone_into(&mut next.phase);
        next.error = None;
        next.updated_at = now_rfc3339();
        match loader.jobs.update(&next, runner.revision).await {
            Ok(revision) => {
                if attempts > 1 {
                    metrics::counter!("polylogue_loader_jobs_taken_over_total").increment(1);
                    tracing::info!(
                        job_id,
                        attempts,
                        "load job taken over after its loader stopped"
                    );
                }
                runner.adopt_own(next, revision);
                return runner.run().await;
            }
            Err(CasError::Conflict) => {}
            Err(CasError::Failed(error)) => {
                tracing::warn!(%error, job_id, "load job not started; retrying");
                return Disposition::Nak(Some(STORE_RETRY));
            }
        }
    }
    Disposition::Nak(Some(STORE_RETRY))
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Complete {
        host: Option<String>,
        memory: Option<u64>,
    },
    Error(String),
    Cancelled,
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Self::Complete { .. } => job::COMPLETE,
            Self::Error(_) => job::ERROR,
            Self::Cancelled => job::CANCELLED,
        }
    }
}

/// What the work reports while it runs.
#[derive(Debug, Clone, PartialEq)]
struct Update {
    phase: String,
    progress: f64,
    completed_bytes: u64,
    total_bytes: u64,
    host: Option<String>,
    /// Whether the model's status should say `loading` (not when it is already loaded, or an
    /// OpenAI-compatible server is only being checked).
    shows_loading: bool,
}

/// After a write or a look at the record.
enum Flow {
    Continue,
    Cancel,
    /// Another runner owns the job now, or it ended without us.
    Lost,
}

/// One job being run by this replica.
struct Runner<'a> {
    loader: &'a Loader,
    message: &'a jetstream::Message,
    view: &'a Arc<Mutex<JobView>>,
    model: ModelEntry,
    job: LoadJob,
    revision: u64,
    /// This run's attempt number; a record with another one belongs to another runner.
    attempt: u32,
    shows_loading: bool,
    last_status: Option<Instant>,
    last_ack: Instant,
}

impl<'a> Runner<'a> {
    fn new(
        loader: &'a Loader,
        message: &'a jetstream::Message,
        view: &'a Arc<Mutex<JobView>>,
        model: ModelEntry,
        current: Versioned<LoadJob>,
    ) -> Self {
        Self {
            loader,
            message,
            view,
            model,
            attempt: current.value.attempts,
            job: current.value,
            revision: current.revision,
            shows_loading: false,
            last_status: None,
            last_ack: Instant::now(),
        }
    }

    fn adopt_own(&mut self, job: LoadJob, revision: u64) {
        self.attempt = job.attempts;
        self.job = job;
        self.revision = revision;
    }

    async fn run(mut self) -> Disposition {
        let started = Instant::now();
        let settings = &self.loader.settings;
        tracing::info!(job_id = %self.job.job_id, model = %self.model.id, attempt = self.attempt, "load job running");
        let (tx, mut rx) = watch::channel(Update {
            phase: self.job.phase.clone(),
            progress: self.job.progress,
            completed_bytes: self.job.completed_bytes,
            total_bytes: self.job.total_bytes,
            host: self.job.host.clone(),
            shows_loading: false,
        });
        let mut work = Box::pin(work(self.loader, self.model.clone(), self.job.progress, tx));
        let deadline = tokio::time::sleep(Duration::from_secs(settings.job_timeout_secs));
        tokio::pin!(deadline);
        let mut tick =
            tokio::time::interval(Duration::from_millis(settings.progress_interval_ms.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut updates_open = true;
        let outcome = loop {
            let flow = tokio::select! {
                result = &mut work => break match result {
                    Ok((host, memory)) => Outcome::Complete { host, memory },
                    Err(reason) => Outcome::Error(reason),
                },
                () = &mut deadline => break Outcome::Error(format!(
                    "the load did not finish within {} s", settings.job_timeout_secs
                )),
                () = self.loader.background.cancelled() => {
                    drop(work);
                    return self.hand_back().await;
                }
                changed = rx.changed(), if updates_open => {
                    if changed.is_err() {
                        updates_open = false;
                        continue;
                    }
                    let update = rx.borrow_and_update().clone();
                    if update.phase == self.job.phase {
                        continue;
                    }
                    self.flush(&update).await
                }
                _ = tick.tick() => {
                    let update = rx.borrow().clone();
                    let flow = self.flush(&update).await;
                    self.keep_message().await;
                    flow
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Cancel => break Outcome::Cancelled,
                Flow::Lost => {
                    drop(work);
                    tracing::info!(job_id = %self.job.job_id, "load job taken over or ended elsewhere; leaving it");
                    return Disposition::Leave;
                }
            }
        };
        // The pull stream closes here, before anything is written: Ollama stops the download.
        drop(work);
        let last = rx.borrow().clone();
        if outcome == Outcome::Cancelled
            && last.phase == phase::LOADING
            && let Some(host) = &last.host
            && let Err(error) = self
                .loader
                .runtimes
                .unload(host, &self.model.provider_model)
                .await
        {
            tracing::debug!(%error, model = %self.model.id, "unload after cancel failed");
        }
        self.job.host = last.host.or(self.job.host.take());
        metrics::histogram!("polylogue_loader_job_seconds", "outcome" => outcome.label())
            .record(started.elapsed().as_secs_f64());
        self.finish(outcome).await
    }

    /// Graceful stop: the job is handed back as it stands, its attempt returned (only loaders
    /// that die count against `max_attempts`), for another runner to take over at once.
    async fn hand_back(&self) -> Disposition {
        if self.loader.is_killed() {
            return Disposition::Leave;
        }
        let mut back = self.job.clone();
        back.attempts = back.attempts.saturating_sub(1);
        back.updated_at = now_rfc3339();
        if let Err(error) = self.loader.jobs.update(&back, self.revision).await {
            tracing::debug!(?error, job_id = %self.job.job_id, "attempt not returned");
        }
        tracing::info!(job_id = %self.job.job_id, "loader stopping; load job handed back");
        Disposition::Nak(None)
    }

    /// Writes the job's progress when it changed (else looks for a cancel), and the model's
    /// `loading` status with it.
    async fn flush(&mut self, update: &Update) -> Flow {
        self.shows_loading = update.shows_loading;
        let progress = update.progress.max(self.job.progress);
        let changed = progress != self.job.progress
            || update.phase != self.job.phase
            || update.completed_bytes != self.job.completed_bytes
            || update.total_bytes != self.job.total_bytes
            || update.host != self.job.host;
        if changed {
            let mut next = self.job.clone();
            next.progress = progress;
            next.phase.clone_from(&update.phase);
            next.completed_bytes = update.completed_bytes;
            next.total_bytes = update.total_bytes;
            next.host.clone_from(&update.host);
            next.updated_at = now_rfc3339();
            match self.loader.jobs.update(&next, self.revision).await {
                Ok(revision) => {
                    self.job = next;
                    self.revision = revision;
                    {
                        let mut view = lock(self.view);
                        view.phase.clone_from(&self.job.phase);
                        view.progress = self.job.progress;
                    }
                    self.write_loading().await;
                }
                Err(CasError::Conflict) => return self.reconcile().await,
                Err(CasError::Failed(error)) => {
                    tracing::warn!(%error, job_id = %self.job.job_id, "job progress not written");
                }
            }
        } else {
            match self.loader.jobs.get(&self.job.job_id).await {
                Ok(Some(current)) if current.revision != self.revision => {
                    return self.adopt(current);
                }
                Ok(None) => return Flow::Lost,
                _ => {}
            }
            if self
                .last_status
                .is_none_or(|t| t.elapsed() >= self.loader.refresh_interval())
            {
                self.write_loading().await;
            }
        }
        Flow::Continue
    }

    async fn reconcile(&mut self) -> Flow {
        match self.loader.jobs.get(&self.job.job_id).await {
            Ok(Some(current)) => self.adopt(current),
            Ok(None) => Flow::Lost,
            Err(error) => {
                tracing::warn!(%error, job_id = %self.job.job_id, "job not read");
                Flow::Continue
            }
        }
    }

    /// Takes in a record someone else wrote.
    fn adopt(&mut self, current: Versioned<LoadJob>) -> Flow {
        if current.value.attempts != self.attempt || job::is_terminal(&current.value.status) {
            return Flow::Lost;
        }
        let cancel = current.value.cancel_requested;
        // Keep what we know of the progress; take the rest (the cancel flag) from the store.
        let mut job = current.value;
        job.progress = job.progress.max(self.job.progress);
        self.job = job;
        self.revision = current.revision;
        if cancel { Flow::Cancel } else { Flow::Continue }
    }

    async fn write_loading(&mut self) {
        if !self.shows_loading || self.loader.is_killed() {
            return;
        }
        self.last_status = Some(Instant::now());
        self.loader
            .statuses
            .put(&ModelStatusRecord {
                model_id: self.model.id.clone(),
                status: status::LOADING.to_owned(),
                load_progress: Some(self.job.progress),
                estimated_load_time: remaining_secs(&self.job),
                job_id: Some(self.job.job_id.clone()),
                host: self.job.host.clone(),
                updated_at: now_rfc3339(),
                ..ModelStatusRecord::default()
            })
            .await;
    }

    /// A progress ack every third of the ack wait, so JetStream leaves the job with us.
    async fn keep_message(&mut self) {
        let every = Duration::from_secs(self.loader.settings.ack_wait_secs.max(1)) / 3;
        if self.last_ack.elapsed() < every {
            return;
        }
        self.last_ack = Instant::now();
        if let Err(error) = self.message.ack_with(AckKind::Progress).await {
            tracing::debug!(%error, job_id = %self.job.job_id, "progress ack failed");
        }
    }

    /// The final writes: the job record, the model's status, the model's `active` key.
    async fn finish(mut self, outcome: Outcome) -> Disposition {
        if self.loader.is_killed() {
            return Disposition::Leave;
        }
        for _ in 0..CAS_ROUNDS {
            let mut next = self.job.clone();
            next.status = outcome.label().to_owned();
            next.updated_at = now_rfc3339();
            match &outcome {
                Outcome::Complete { host, .. } => {
                    next.progress = progress::COMPLETE;
                    phase::READY.clone_into(&mut next.phase);
                    next.error = None;
                    if host.is_some() {
                        next.host.clone_from(host);
                    }
                }
                Outcome::Error(reason) => {
                    phase::FAILED.clone_into(&mut next.phase);
                    next.error = Some(reason.clone());
                }
                Outcome::Cancelled => {
                    phase::CANCELLED.clone_into(&mut next.phase);
                    next.cancel_requested = true;
                }
            }
            match self.loader.jobs.update(&next, self.revision).await {
                Ok(_) => {
                    self.job = next;
                    break;
                }
                Err(CasError::Conflict) => match self.reconcile().await {
                    // A cancel that came too late changes nothing of how the job ended.
                    Flow::Continue | Flow::Cancel => {}
                    Flow::Lost => return Disposition::Leave,
                },
                Err(CasError::Failed(error)) => {
                    tracing::warn!(%error, job_id = %self.job.job_id, "final job state not written; retrying");
                    return Disposition::Nak(Some(STORE_RETRY));
                }
            }
        }
        if !job::is_terminal(&self.job.status) {
            return Disposition::Nak(Some(STORE_RETRY));
        }
        let job_id = self.job.job_id.clone();
        let model_id = self.model.id.clone();
        if !self.loader.catalog.contains(&model_id) {
            self.loader.jobs.release(&model_id, &job_id).await;
            return Disposition::Ack;
        }
        match &outcome {
            Outcome::Complete { host, memory } => {
                self.loader
                    .statuses
                    .put(&loaded_record(
                        &model_id,
                        host.clone().or(self.job.host.clone()),
                        *memory,
                    ))
                    .await;
                tracing::info!(job_id, model = %model_id, "model loaded");
            }
            Outcome::Error(reason) => {
                self.loader
                    .statuses
                    .put(&ModelStatusRecord {
                        model_id: model_id.clone(),
                        status: status::ERROR.to_owned(),
                        error: Some(reason.clone()),
                        job_id: Some(job_id.clone()),
                        host: self.job.host.clone(),
                        updated_at: now_rfc3339(),
                        ..ModelStatusRecord::default()
                    })
                    .await;
                tracing::warn!(job_id, model = %model_id, %reason, "load job failed");
            }
            Outcome::Cancelled => {
                // Back to what it was; the next poll fills in the details.
                self.loader
                    .statuses
                    .put(&ModelStatusRecord {
                        model_id: model_id.clone(),
                        status: status::NOT_LOADED.to_owned(),
                        host: self.job.host.clone(),
                        updated_at: now_rfc3339(),
                        ..ModelStatusRecord::default()
                    })
                    .await;
                tracing::info!(job_id, model = %model_id, "load job cancelled");
            }
        }
        self.loader.jobs.release(&model_id, &job_id).await;
        metrics::counter!("polylogue_loader_jobs_finished_total", "outcome" => outcome.label())
            .increment(1);
        Disposition::Ack
    }
}

/// The load itself; reports through `tx`. Returns the host and the model's memory.
async fn work(
    loader: &Loader,
    model: ModelEntry,
    floor: f64,
    tx: watch::Sender<Update>,
) -> Result<(Option<String>, Option<u64>), String> {
    if is_ollama(&model) {
        ollama(loader, &model, floor, &tx).await
    } else {
        compatible(loader, &model, &tx).await
    }
}

async fn compatible(
    loader: &Loader,
    model: &ModelEntry,
    tx: &watch::Sender<Update>,
) -> Result<(Option<String>, Option<u64>), String> {
    let base = model
        .base_url
        .clone()
        .ok_or_else(|| "the catalog gives this model no baseUrl".to_owned())?;
    tx.send_modify(|u| {
        phase::CHECKING.clone_into(&mut u.phase);
        u.host = Some(base.clone());
    });
    let memory = loader
        .runtimes
        .compatible(&base, &model.provider_model)
        .await
        .map_err(|e| {
            format!(
                "the OpenAI-compatible server does not answer ({e}); the loader cannot start it"
            )
        })?;
    Ok((Some(base), memory))
}

async fn ollama(
    loader: &Loader,
    model: &ModelEntry,
    floor: f64,
    tx: &watch::Sender<Update>,
) -> Result<(Option<String>, Option<u64>), String> {
    let name = &model.provider_model;
    let views =
        futures::future::join_all(loader.hosts.iter().map(|h| loader.runtimes.view(h))).await;
    let hosts = || loader.hosts.iter().zip(&views);
    let loaded = hosts().find(|(_, v)| v.as_ref().is_ok_and(|v| v.loaded(name).is_some()));
    let installed = hosts().find(|(_, v)| v.as_ref().is_ok_and(|v| v.installed(name).is_some()));
    let reachable = hosts().find(|(_, v)| v.is_ok());
    let Some((host, _)) = loaded.or(installed).or(reachable) else {
        let reason = views
            .iter()
            .find_map(|v| v.as_ref().err())
            .map_or("no Ollama host is configured", String::as_str);
        return Err(format!("no Ollama host answers: {reason}"));
    };
    let host = host.clone();
    tx.send_modify(|u| {
        u.host = Some(host.clone());
        u.shows_loading = loaded.is_none();
    });
    if loaded.is_none() && installed.is_none() {
        pull_with_retries(loader, &host, name, floor, tx).await?;
    }
    tx.send_modify(|u| {
        phase::LOADING.clone_into(&mut u.phase);
        u.progress = u.progress.max(progress::DOWNLOADED);
    });
    loader
        .runtimes
        .load(
            &host,
            name,
            model.context_length,
            &loader.settings.keep_alive,
            Duration::from_secs(loader.settings.job_timeout_secs.max(1)),
        )
        .await?;
    let memory = loader
        .runtimes
        .ps(&host)
        .await
        .ok()
        .and_then(|ps| {
            crate::ollama::HostView {
                loaded: ps,
                installed: Vec::new(),
            }
            .loaded(name)
            .map(|m| if m.size > 0 { m.size } else { m.size_vram })
        })
        .filter(|b| *b > 0);
    Ok((Some(host), memory))
}

/// Pulls `name` onto `host`, reporting progress; `Ok` once Ollama said `success`.
/// Failures of a pull that another try cannot mend: the registry has no such model (Ollama says
/// so only in words: `pull model manifest: file does not exist`, `… not found`), or the name is
/// refused.
fn permanent(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    [
        "does not exist",
        "not found",
        "invalid model name",
        "manifest unknown",
        "unauthorized",
    ]
    .iter()
    .any(|p| r.contains(p))
}

/// Wait before retry `n` (0-based): the base doubled each time, at most 60 s.
fn backoff(base_ms: u64, n: u32) -> Duration {
    Duration::from_millis(base_ms.saturating_mul(1 << n.min(16)).min(60_000))
}

/// [`pull`], tried again after a passing failure (a lost connection, a stalled or cut-off
/// download, Ollama's own "max retries exceeded") up to `loader.pull_retries` times with
/// exponential backoff; Ollama resumes the download, and the progress shown never goes back.
/// The last failure's reason says how many retries there were.
async fn pull_with_retries(
    loader: &Loader,
    host: &str,
    name: &str,
    floor: f64,
    tx: &watch::Sender<Update>,
) -> Result<(), String> {
    let settings = &loader.settings;
    let mut retries = 0;
    loop {
        let floor = floor.max(tx.borrow().progress);
        match pull(loader, host, name, floor, tx).await {
            Ok(()) => return Ok(()),
            Err(reason) if retries < settings.pull_retries && !permanent(&reason) => {
                let wait = backoff(settings.pull_retry_backoff_ms, retries);
                retries += 1;
                tracing::warn!(model = name, host, retry = retries, %reason, wait_ms = wait.as_millis(), "pull failed; retrying");
                metrics::counter!("polylogue_loader_pull_retries_total").increment(1);
                tx.send_modify(|u| phase::RETRYING.clone_into(&mut u.phase));
                tokio::time::sleep(wait).await;
            }
            Err(reason) if retries > 0 => {
                return Err(format!(
                    "{reason} (after {retries} {})",
                    if retries == 1 { "retry" } else { "retries" }
                ));
            }
            Err(reason) => return Err(reason),
        }
    }
}

async fn pull(
    loader: &Loader,
    host: &str,
    name: &str,
    floor: f64,
    tx: &watch::Sender<Update>,
) -> Result<(), String> {
    tx.send_modify(|u| "pulling manifest".clone_into(&mut u.phase));
    let mut stream = loader.runtimes.pull(host, name).await?;
    let mut progress = PullProgress::new(floor);
    let started = Instant::now();
    let mut first_bytes: Option<u64> = None;
    let mut success = false;
    while let Some(line) = stream.next().await {
        let line: PullLine = line?;
        if let Some(error) = line.error {
            return Err(error);
        }
        success |= line.status.as_deref() == Some("success");
        let phase = progress.observe(&line);
        let (completed, total) = progress.bytes();
        if line.completed.is_some() {
            first_bytes.get_or_insert(completed);
        }
        let percent = progress.percent();
        tx.send_modify(|u| {
            if let Some(phase) = phase {
                u.phase = phase;
            }
            u.progress = u.progress.max(percent);
            u.completed_bytes = completed;
            u.total_bytes = total;
        });
    }
    if !success {
        return Err("the pull ended before Ollama reported success".to_owned());
    }
    let (completed, _) = progress.bytes();
    let moved = completed.saturating_sub(first_bytes.unwrap_or(completed));
    metrics::counter!("polylogue_loader_pulled_bytes_total").increment(moved);
    loader.measured(moved, started.elapsed());
    Ok(())
}

/// The entry of a job whose model left the catalog: only the job's end is written.
fn placeholder(model_id: &str) -> ModelEntry {
    ModelEntry {
        id: model_id.to_owned(),
        name: String::new(),
        provider: String::new(),
        provider_model: String::new(),
        base_url: None,
        api_key_required: None,
        requires_loading: false,
        capabilities: Vec::new(),
        context_length: 1,
        pricing: None,
        temperature_range: polylogue_catalog::TemperatureRange {
            min: 0.0,
            max: 1.0,
            step: 0.1,
            default: 0.5,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{backoff, permanent};
    use std::time::Duration;

    #[test]
    fn missing_models_are_not_retried_and_network_failures_are() {
        assert!(permanent("pull model manifest: file does not exist"));
        assert!(permanent("model \"x\" not found, try pulling it first"));
        assert!(!permanent("max retries exceeded: unexpected EOF"));
        assert!(!permanent("Ollama reported no progress for 30 s"));
        assert!(!permanent("the pull ended before Ollama reported success"));
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        assert_eq!(backoff(1_000, 0), Duration::from_secs(1));
        assert_eq!(backoff(1_000, 2), Duration::from_secs(4));
        assert_eq!(backoff(1_000, 10), Duration::from_secs(60));
        assert_eq!(backoff(u64::MAX, 30), Duration::from_secs(60));
    }
}
