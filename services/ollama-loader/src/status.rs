//! The status keeper: every `poll_interval_ms` each catalog model's [`ModelStatusRecord`] is
//! brought up to date in `<prefix>-model-status`.
//!
//! - Ollama models: `/api/ps` and `/api/tags` of every host; the first host that has the model
//!   serves it (loaded beats installed). Not loaded anywhere → `not_loaded` with an estimate;
//!   no host answering → `unavailable`.
//! - OpenAI-compatible servers: `<baseUrl>/models` answering → `loaded`, else `unavailable`.
//! - Cloud models: the provider's reachability, checked every `cloud_check_secs`.
//!
//! A record is written when it changed, or when it is older than the refresh interval (so
//! `updatedAt` tells readers a loader is watching). Writes are compare-and-set against the record
//! read, so an observation never overwrites a newer record. While a model has a job in progress
//! its runner owns the record; the poller writes `loading` from the job only when nobody has
//! written for two refresh intervals (the job waits in the queue, or its loader died). A job's
//! `error` stays for [`ERROR_HOLD`] after the job ended — unless the model is seen loaded or
//! another job starts — so the reason stays visible.

use crate::loader::{
    HostHealth, Loader, age, is_local, load_secs, lock, now_rfc3339, remaining_secs,
};
use crate::ollama::HostView;
use crate::state::CasError;
use polylogue_catalog::ModelEntry;
use polylogue_contracts::models::{LoadJob, ModelStatusRecord, human_bytes, job, status};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

/// How long a failed job's `error` stays on its model.
pub const ERROR_HOLD: Duration = Duration::from_secs(60);

/// Polls until `shutdown`.
pub async fn run(loader: Arc<Loader>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        loader.settings.poll_interval_ms.max(1),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = loader.poll() => {}
        }
    }
}

/// Checks the cloud providers' reachability every `cloud_check_secs` until `shutdown`.
pub async fn run_cloud(loader: Arc<Loader>, shutdown: CancellationToken) {
    if loader.catalog.models().iter().all(is_local) {
        return;
    }
    let mut tick =
        tokio::time::interval(Duration::from_secs(loader.settings.cloud_check_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = loader.check_cloud() => {}
        }
    }
}

impl Loader {
    /// One poll of every runtime, and the records that changed (or are due) written.
    pub async fn poll(&self) {
        let started = Instant::now();
        let observed_at = OffsetDateTime::now_utc();
        let views: Vec<Result<HostView, String>> =
            futures::future::join_all(self.hosts.iter().map(|h| self.runtimes.view(h))).await;
        self.note_hosts(&views);
        let records = futures::future::join_all(self.catalog.models().iter().map(|model| {
            let views = &views;
            async move {
                let observed = match model.provider.as_str() {
                    "ollama" => Some(self.observe_ollama(model, views)),
                    "openai-compatible" => Some(self.observe_compatible(model).await),
                    _ => self.observe_cloud(model),
                };
                if let Some(record) = observed {
                    self.publish(model, record, observed_at).await;
                }
            }
        }));
        records.await;
        metrics::histogram!("polylogue_loader_poll_seconds")
            .record(started.elapsed().as_secs_f64());
    }

    fn note_hosts(&self, views: &[Result<HostView, String>]) {
        let checked_at = now_rfc3339();
        let health: Vec<HostHealth> = self
            .hosts
            .iter()
            .zip(views)
            .map(|(host, view)| {
                let up = view.is_ok();
                metrics::gauge!("polylogue_loader_host_reachable", "host" => host.clone())
                    .set(if up { 1.0 } else { 0.0 });
                HostHealth {
                    host: host.clone(),
                    reachable: up,
                    error: view.as_ref().err().cloned(),
                    checked_at: checked_at.clone(),
                }
            })
            .collect();
        *lock(&self.reachability) = health;
    }

    /// The status of an Ollama model from what the hosts have.
    fn observe_ollama(
        &self,
        model: &ModelEntry,
        views: &[Result<HostView, String>],
    ) -> ModelStatusRecord {
        let name = &model.provider_model;
        let hosts = || self.hosts.iter().zip(views);
        let record = |status: &str, host: &str| ModelStatusRecord {
            model_id: model.id.clone(),
            status: status.to_owned(),
            host: Some(host.to_owned()),
            ..ModelStatusRecord::default()
        };
        for (host, view) in hosts() {
            if let Ok(Some(m)) = view.as_ref().map(|v| v.loaded(name)) {
                let bytes = if m.size > 0 { m.size } else { m.size_vram };
                return ModelStatusRecord {
                    load_progress: Some(100.0),
                    memory_usage: (bytes > 0).then(|| human_bytes(bytes)),
                    memory_bytes: (bytes > 0).then_some(bytes),
                    ..record(status::LOADED, host)
                };
            }
        }
        for (host, view) in hosts() {
            if let Ok(Some(m)) = view.as_ref().map(|v| v.installed(name)) {
                return ModelStatusRecord {
                    estimated_load_time: Some(load_secs(m.size)),
                    ..record(status::NOT_LOADED, host)
                };
            }
        }
        if let Some((host, _)) = hosts().find(|(_, v)| v.is_ok()) {
            return ModelStatusRecord {
                estimated_load_time: Some(self.full_load_secs(model)),
                ..record(status::NOT_LOADED, host)
            };
        }
        let reason = views
            .iter()
            .find_map(|v| v.as_ref().err())
            .map_or("no Ollama host is configured", String::as_str);
        let error = if self.hosts.len() > 1 {
            format!("no Ollama host answers: {reason}")
        } else {
            format!("Ollama does not answer: {reason}")
        };
        ModelStatusRecord {
            model_id: model.id.clone(),
            status: status::UNAVAILABLE.to_owned(),
            error: Some(error),
            ..ModelStatusRecord::default()
        }
    }

    /// The status of an OpenAI-compatible server's model: reachable means loaded.
    async fn observe_compatible(&self, model: &ModelEntry) -> ModelStatusRecord {
        let mut record = ModelStatusRecord {
            model_id: model.id.clone(),
            host: model.base_url.clone(),
            ..ModelStatusRecord::default()
        };
        let Some(base) = model.base_url.as_deref() else {
            record.status = status::UNAVAILABLE.to_owned();
            record.error = Some("the catalog gives this model no baseUrl".to_owned());
            return record;
        };
        match self.runtimes.compatible(base, &model.provider_model).await {
            Ok(bytes) => {
                record.status = status::LOADED.to_owned();
                record.load_progress = Some(100.0);
                record.memory_bytes = bytes;
                record.memory_usage = bytes.map(human_bytes);
            }
            Err(e) => {
                record.status = status::UNAVAILABLE.to_owned();
                record.error = Some(format!("the server does not answer: {e}"));
            }
        }
        record
    }

    /// The status of a cloud model from the last reachability check (`None` before the first).
    fn observe_cloud(&self, model: &ModelEntry) -> Option<ModelStatusRecord> {
        let checked = lock(&self.cloud).get(&model.id).cloned()?;
        let mut record = ModelStatusRecord {
            model_id: model.id.clone(),
            ..ModelStatusRecord::default()
        };
        match checked {
            Ok(()) => {
                record.status = status::LOADED.to_owned();
                record.load_progress = Some(100.0);
            }
            Err(reason) => {
                record.status = status::UNAVAILABLE.to_owned();
                record.error = Some(reason);
            }
        }
        Some(record)
    }

    /// Checks each cloud provider once (with its first model's client) and notes the result for
    /// every model it serves. `status(None)` sends no key.
    pub async fn check_cloud(&self) {
        let mut by_provider: BTreeMap<&str, Vec<&ModelEntry>> = BTreeMap::new();
        for model in self.catalog.models().iter().filter(|m| !is_local(m)) {
            by_provider.entry(&model.provider).or_default().push(model);
        }
        let checks = by_provider.into_iter().map(|(provider, models)| async move {
            let first = models.first().map(|m| m.id.as_str()).unwrap_or_default();
            let result = match self.registry.provider(first) {
                Ok(client) => {
                    let kind = client.kind();
                    client
                        .status(None)
                        .await
                        .map_err(|e| e.to_api_error(kind).message)
                }
                Err(e) => Err(e.message),
            };
            if let Err(reason) = &result {
                tracing::info!(provider, %reason, "cloud provider unreachable");
            }
            let up = result.is_ok();
            metrics::gauge!("polylogue_loader_provider_reachable", "provider" => provider.to_owned())
                .set(if up { 1.0 } else { 0.0 });
            models
                .into_iter()
                .map(|m| (m.id.clone(), result.clone()))
                .collect::<Vec<_>>()
        });
        let results = futures::future::join_all(checks).await;
        let mut cloud = lock(&self.cloud);
        for (model_id, result) in results.into_iter().flatten() {
            cloud.insert(model_id, result);
        }
    }

    /// Writes `next` (an observation made at `observed_at`) for `model` unless a job owns the
    /// record, the record is newer than the observation (a job just ended), it would hide a recent
    /// error, or nothing changed and the record is still fresh.
    async fn publish(
        &self,
        model: &ModelEntry,
        mut next: ModelStatusRecord,
        observed_at: OffsetDateTime,
    ) {
        let previous = match self.statuses.get(&model.id).await {
            Ok(p) => p,
            Err(error) => {
                tracing::debug!(%error, model = %model.id, "status not read; poll skipped");
                return;
            }
        };
        let prev = previous.as_ref().map(|p| &p.value);
        if prev
            .and_then(|p| OffsetDateTime::parse(&p.updated_at, &Rfc3339).ok())
            .is_some_and(|written| written > observed_at)
        {
            return;
        }
        let refresh = self.refresh_interval();
        if is_local(model) {
            match self.active_job(&model.id).await {
                Err(()) => return,
                Ok(Some(job)) => {
                    // The runner writes; step in only when nobody has for a while.
                    if prev.is_some_and(|p| age(&p.updated_at).is_some_and(|a| a < refresh * 2)) {
                        return;
                    }
                    next = self.queued_record(model, &job, prev);
                }
                Ok(None) => {
                    if let Some(p) = prev
                        && next.status != status::LOADED
                        && self.error_holds(p).await
                    {
                        next = p.clone();
                    }
                }
            }
        }
        next.last_loaded = if next.status == status::LOADED {
            Some(now_rfc3339())
        } else {
            prev.and_then(|p| p.last_loaded.clone())
        };
        let due =
            prev.is_none_or(|p| !same(p, &next) || age(&p.updated_at).is_none_or(|a| a >= refresh));
        if !due {
            return;
        }
        next.updated_at = now_rfc3339();
        match self
            .statuses
            .put_if(&next, previous.as_ref().map(|p| p.revision))
            .await
        {
            Ok(()) => {
                if prev.is_none_or(|p| p.status != next.status) {
                    tracing::info!(model = %model.id, status = %next.status, error = next.error.as_deref().unwrap_or_default(), "model status");
                }
            }
            Err(CasError::Conflict) => {
                tracing::debug!(model = %model.id, "status changed meanwhile; next poll");
            }
            Err(CasError::Failed(error)) => {
                tracing::warn!(%error, model = %model.id, "model status not written");
            }
        }
    }

    /// The model's job in progress, if any; `Err` when the bucket could not be read.
    async fn active_job(&self, model_id: &str) -> Result<Option<LoadJob>, ()> {
        let Some(active) = self.jobs.active(model_id).await.map_err(drop)? else {
            return Ok(None);
        };
        let job = self.jobs.get(&active.job_id).await.map_err(drop)?;
        Ok(job
            .map(|j| j.value)
            .filter(|j| !job::is_terminal(&j.status)))
    }

    /// `loading` from a job's record (a job waiting in the queue, or whose loader died).
    fn queued_record(
        &self,
        model: &ModelEntry,
        job: &LoadJob,
        prev: Option<&ModelStatusRecord>,
    ) -> ModelStatusRecord {
        let shown = prev
            .filter(|p| p.job_id.as_deref() == Some(job.job_id.as_str()))
            .and_then(|p| p.load_progress)
            .unwrap_or(0.0);
        ModelStatusRecord {
            model_id: model.id.clone(),
            status: status::LOADING.to_owned(),
            load_progress: Some(job.progress.max(shown)),
            estimated_load_time: remaining_secs(job),
            job_id: Some(job.job_id.clone()),
            host: job.host.clone(),
            ..ModelStatusRecord::default()
        }
    }

    /// Whether `record` is a job's `error` that should stay: the job ended less than
    /// [`ERROR_HOLD`] ago.
    async fn error_holds(&self, record: &ModelStatusRecord) -> bool {
        if record.status != status::ERROR {
            return false;
        }
        let Some(job_id) = &record.job_id else {
            return false;
        };
        match self.jobs.get(job_id).await {
            Ok(Some(j)) => {
                j.value.status == job::ERROR
                    && age(&j.value.updated_at).is_some_and(|a| a < ERROR_HOLD)
            }
            _ => false,
        }
    }
}

/// Equal but for the times that change on every write.
fn same(a: &ModelStatusRecord, b: &ModelStatusRecord) -> bool {
    let strip = |r: &ModelStatusRecord| ModelStatusRecord {
        updated_at: String::new(),
        last_loaded: None,
        ..r.clone()
    };
    strip(a) == strip(b)
}

/// The record of a model as a finished job leaves it.
pub(crate) fn loaded_record(
    model_id: &str,
    host: Option<String>,
    memory: Option<u64>,
) -> ModelStatusRecord {
    let now = now_rfc3339();
    ModelStatusRecord {
        model_id: model_id.to_owned(),
        status: status::LOADED.to_owned(),
        load_progress: Some(100.0),
        memory_usage: memory.map(human_bytes),
        memory_bytes: memory,
        last_loaded: Some(now.clone()),
        host,
        updated_at: now,
        ..ModelStatusRecord::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sameness_ignores_the_times() {
        let a = ModelStatusRecord {
            model_id: "m".into(),
            status: "loaded".into(),
            updated_at: "2025-01-01T00:00:00Z".into(),
            last_loaded: Some("2025-01-01T00:00:00Z".into()),
            ..ModelStatusRecord::default()
        };
        let b = ModelStatusRecord {
            updated_at: "2025-01-02T00:00:00Z".into(),
            last_loaded: None,
            ..a.clone()
        };
        assert!(same(&a, &b));
        assert!(!same(
            &a,
            &ModelStatusRecord {
                status: "error".into(),
                ..a.clone()
            }
        ));
    }
}
