//! The loader's JetStream state, shared by its replicas:
//!
//! - `<prefix>-model-status` (KV, history 1): every catalog model's [`ModelStatusRecord`] under
//!   [`status_key`]. Pollers write with compare-and-set against what they read, so a runner's
//!   newer record is never overwritten by an older observation.
//! - `<prefix>-load-jobs` (KV, history 1, `max_age` = `job_retention_secs`): each [`LoadJob`]
//!   under [`job_key`], and under [`active_key`] the id of a model's job in progress (created
//!   atomically, so concurrent loads join one job).
//! - `<prefix>-load-queue` (work-queue stream on `<prefix>.loader.jobs`): one message per job,
//!   its id; the runners' durable consumer takes it.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use polylogue_contracts::models::{LoadJob, ModelStatusRecord, active_key, job_key, status_key};
use polylogue_contracts::subjects::loader as names;
use std::time::Duration;

/// Compare-and-set attempts before an update gives up.
const CAS_ATTEMPTS: usize = 8;

async fn bucket(
    js: &jetstream::Context,
    name: String,
    max_age: Duration,
) -> Result<kv::Store, async_nats::Error> {
    Ok(js
        .create_or_update_key_value(kv::Config {
            bucket: name,
            history: 1,
            storage: jetstream::stream::StorageType::File,
            max_age,
            ..Default::default()
        })
        .await?)
}

/// Creates the work-queue stream of load jobs (or updates it to this configuration).
pub async fn ensure_queue(
    js: &jetstream::Context,
    prefix: &str,
    retention: Duration,
) -> Result<(), async_nats::Error> {
    js.create_or_update_stream(jetstream::stream::Config {
        name: names::queue_stream(prefix),
        subjects: vec![names::queue_subject(prefix)],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::File,
        max_age: retention,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// A value and the revision it was read at.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: u64,
}

/// Why a compare-and-set did not happen.
#[derive(Debug)]
pub enum CasError {
    /// Someone wrote in between.
    Conflict,
    /// The bucket could not be reached.
    Failed(String),
}

fn cas_error(e: &kv::UpdateError) -> CasError {
    match e.kind() {
        kv::UpdateErrorKind::WrongLastRevision => CasError::Conflict,
        _ => CasError::Failed(e.to_string()),
    }
}

/// The model-status bucket.
#[derive(Clone)]
pub struct Statuses {
    kv: kv::Store,
}

impl Statuses {
    pub async fn open(js: &jetstream::Context, prefix: &str) -> Result<Self, async_nats::Error> {
        Ok(Self {
            kv: bucket(js, names::status_bucket(prefix), Duration::ZERO).await?,
        })
    }

    /// The record of `model_id` and its revision; `Ok(None)` when there is none.
    pub async fn get(
        &self,
        model_id: &str,
    ) -> Result<Option<Versioned<ModelStatusRecord>>, String> {
        let entry = self
            .kv
            .entry(status_key(model_id))
            .await
            .map_err(|e| e.to_string())?;
        Ok(entry.and_then(|e| {
            if e.operation != kv::Operation::Put {
                return None;
            }
            serde_json::from_slice(&e.value)
                .ok()
                .map(|value| Versioned {
                    value,
                    revision: e.revision,
                })
        }))
    }

    /// Writes `record` unconditionally (the writer owns the model's status: a job runner).
    pub async fn put(&self, record: &ModelStatusRecord) {
        let Ok(value) = serde_json::to_vec(record) else {
            return;
        };
        match self
            .kv
            .put(status_key(&record.model_id), Bytes::from(value))
            .await
        {
            Ok(_) => metrics::counter!("polylogue_loader_status_writes_total").increment(1),
            Err(error) => {
                tracing::warn!(%error, model = %record.model_id, "model status not written");
            }
        }
    }

    /// Writes `record` if the stored one is still at `revision` (`None`: there is none).
    pub async fn put_if(
        &self,
        record: &ModelStatusRecord,
        revision: Option<u64>,
    ) -> Result<(), CasError> {
        let value = serde_json::to_vec(record)
            .map(Bytes::from)
            .map_err(|e| CasError::Failed(e.to_string()))?;
        let key = status_key(&record.model_id);
        let written = match revision {
            Some(r) => self
                .kv
                .update(key, value, r)
                .await
                .map_err(|e| cas_error(&e)),
            None => self.kv.create(key, value).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    CasError::Conflict
                } else {
                    CasError::Failed(e.to_string())
                }
            }),
        };
        if written.is_ok() {
            metrics::counter!("polylogue_loader_status_writes_total").increment(1);
        }
        written.map(drop)
    }
}

/// The jobs bucket.
#[derive(Clone)]
pub struct Jobs {
    kv: kv::Store,
}

/// A model's active job, as its `active.<model>` key names it.
#[derive(Debug, Clone)]
pub struct Active {
    pub job_id: String,
    pub revision: u64,
}

impl Jobs {
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        retention: Duration,
    ) -> Result<Self, async_nats::Error> {
        Ok(Self {
            kv: bucket(js, names::jobs_bucket(prefix), retention).await?,
        })
    }

    /// A job and its revision; `Ok(None)` when it does not exist (or expired).
    pub async fn get(&self, job_id: &str) -> Result<Option<Versioned<LoadJob>>, String> {
        let entry = self
            .kv
            .entry(job_key(job_id))
            .await
            .map_err(|e| e.to_string())?;
        Ok(entry.and_then(|e| {
            if e.operation != kv::Operation::Put {
                return None;
            }
            serde_json::from_slice(&e.value)
                .ok()
                .map(|value| Versioned {
                    value,
                    revision: e.revision,
                })
        }))
    }

    /// Stores a new job; returns its revision.
    pub async fn insert(&self, job: &LoadJob) -> Result<u64, String> {
        let value = serde_json::to_vec(job).map_err(|e| e.to_string())?;
        self.kv
            .create(job_key(&job.job_id), Bytes::from(value))
            .await
            .map_err(|e| e.to_string())
    }

    /// Replaces the job stored at `revision`; returns the new revision.
    pub async fn update(&self, job: &LoadJob, revision: u64) -> Result<u64, CasError> {
        let value = serde_json::to_vec(job).map_err(|e| CasError::Failed(e.to_string()))?;
        self.kv
            .update(job_key(&job.job_id), Bytes::from(value), revision)
            .await
            .map_err(|e| cas_error(&e))
    }

    /// Read, change, compare-and-set, again on conflict. `change` returns `false` to leave the
    /// job as it is. `Ok(None)` when the job does not exist.
    pub async fn modify(
        &self,
        job_id: &str,
        mut change: impl FnMut(&mut LoadJob) -> bool,
    ) -> Result<Option<Versioned<LoadJob>>, String> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(mut current) = self.get(job_id).await? else {
                return Ok(None);
            };
            if !change(&mut current.value) {
                return Ok(Some(current));
            }
            match self.update(&current.value, current.revision).await {
                Ok(revision) => {
                    return Ok(Some(Versioned {
                        value: current.value,
                        revision,
                    }));
                }
                Err(CasError::Conflict) => {}
                Err(CasError::Failed(e)) => return Err(e),
            }
        }
        Err(format!("job {job_id} kept changing; try again"))
    }

    /// Deletes a job record (one that lost the race for its model's active key).
    pub async fn remove(&self, job_id: &str) {
        if let Err(error) = self.kv.delete(job_key(job_id)).await {
            tracing::debug!(%error, job_id, "orphan job not deleted; it expires");
        }
    }

    /// The job `active.<model>` names, if any.
    pub async fn active(&self, model_id: &str) -> Result<Option<Active>, String> {
        let entry = self
            .kv
            .entry(active_key(model_id))
            .await
            .map_err(|e| e.to_string())?;
        Ok(entry.and_then(|e| {
            (e.operation == kv::Operation::Put).then(|| Active {
                job_id: String::from_utf8_lossy(&e.value).into_owned(),
                revision: e.revision,
            })
        }))
    }

    /// Makes `job_id` the model's active job; `Ok(false)` when another job already is.
    pub async fn claim(&self, model_id: &str, job_id: &str) -> Result<bool, String> {
        match self
            .kv
            .create(active_key(model_id), Bytes::from(job_id.to_owned()))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Frees the model's active key if it still names `job_id`.
    pub async fn release(&self, model_id: &str, job_id: &str) {
        match self.active(model_id).await {
            Ok(Some(active)) if active.job_id == job_id => {
                self.release_stale(model_id, &active).await;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, model_id, job_id, "active job not released"),
        }
    }

    /// Deletes the active key read as `active` (unless it changed since).
    pub async fn release_stale(&self, model_id: &str, active: &Active) {
        if let Err(error) = self
            .kv
            .delete_expect_revision(active_key(model_id), Some(active.revision))
            .await
        {
            tracing::debug!(%error, model_id, job_id = %active.job_id, "active key not deleted");
        }
    }
}
