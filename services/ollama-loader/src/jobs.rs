//! The NATS verbs `load` and `cancel`.
//!
//! A load joins the model's job in progress, or creates one: the job record (`queued`), then the
//! model's `active` key with an atomic create — a request that loses that race deletes its own
//! record and joins the winner — then the job id on the work queue. A model already loaded gets a
//! job too; it completes at once after refreshing Ollama's `keep_alive`.
//!
//! A cancel sets `cancelRequested` by compare-and-set. A queued job ends `cancelled` at once and
//! frees its model; a running one is stopped by its runner within about one progress interval.

use crate::loader::{Loader, is_local, is_ollama, now_rfc3339, remaining_secs};
use async_nats::HeaderMap;
use bytes::Bytes;
use polylogue_contracts::models::{
    CancelLoadReply, CancelLoadRequest, LoadJob, LoadReply, LoadRequest, ModelStatusRecord, job,
    status,
};
use polylogue_contracts::subjects::loader as names;
use polylogue_contracts::{ApiError, ErrorCode};

/// Rounds of "join or create" before a load request gives up (each lost race is one).
const LOAD_ROUNDS: usize = 8;

/// Phase of a job that waits for a runner.
pub const QUEUED_PHASE: &str = "queued";

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "load-job state unavailable");
    ApiError::new(
        ErrorCode::ServiceUnavailable,
        "the loader's job store is unavailable; try again",
    )
}

fn reply(job: &LoadJob, joined: bool) -> LoadReply {
    LoadReply {
        model_id: job.model_id.clone(),
        job_id: job.job_id.clone(),
        status: job.status.clone(),
        estimated_time: remaining_secs(job),
        joined,
    }
}

impl Loader {
    /// `ollama-loader.load`: starts or joins the load of a local model.
    pub async fn load(&self, req: LoadRequest) -> Result<LoadReply, ApiError> {
        let model = self.catalog.get(&req.model_id).ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("unknown model {:?}", req.model_id),
            )
        })?;
        if !is_local(model) {
            return Err(ApiError::new(
                ErrorCode::UnprocessableEntity,
                format!(
                    "only local models are loaded; {} is served by its provider",
                    model.id
                ),
            ));
        }
        for _ in 0..LOAD_ROUNDS {
            if let Some(active) = self.jobs.active(&model.id).await.map_err(unavailable)? {
                match self.jobs.get(&active.job_id).await.map_err(unavailable)? {
                    Some(current) if !job::is_terminal(&current.value.status) => {
                        metrics::counter!("polylogue_loader_jobs_joined_total").increment(1);
                        return Ok(reply(&current.value, true));
                    }
                    // Its runner ended it but stopped before freeing the model.
                    _ => {
                        self.jobs.release_stale(&model.id, &active).await;
                        continue;
                    }
                }
            }
            let now = now_rfc3339();
            let previous = self.statuses.get(&model.id).await.ok().flatten();
            let loaded = previous
                .as_ref()
                .is_some_and(|p| p.value.status == status::LOADED);
            let estimated_time = if loaded || !is_ollama(model) {
                Some(1)
            } else {
                previous
                    .as_ref()
                    .and_then(|p| p.value.estimated_load_time)
                    .or_else(|| Some(self.full_load_secs(model)))
            };
            let new = LoadJob {
                job_id: format!("load_{}", uuid::Uuid::now_v7().simple()),
                model_id: model.id.clone(),
                status: job::QUEUED.to_owned(),
                phase: QUEUED_PHASE.to_owned(),
                estimated_time,
                created_at: now.clone(),
                updated_at: now,
                ..LoadJob::default()
            };
            self.jobs.insert(&new).await.map_err(unavailable)?;
            match self.jobs.claim(&model.id, &new.job_id).await {
                Ok(true) => {}
                Ok(false) => {
                    self.jobs.remove(&new.job_id).await;
                    continue;
                }
                Err(e) => {
                    self.jobs.remove(&new.job_id).await;
                    return Err(unavailable(e));
                }
            }
            if let Err(e) = self.enqueue(&new.job_id).await {
                // Nobody would ever run it: end it rather than leave the model waiting.
                let _ = self
                    .jobs
                    .modify(&new.job_id, |j| {
                        j.status = job::ERROR.to_owned();
                        j.phase = "failed".to_owned();
                        j.error = Some("the job could not be queued".to_owned());
                        j.updated_at = now_rfc3339();
                        true
                    })
                    .await;
                self.jobs.release(&model.id, &new.job_id).await;
                return Err(unavailable(e));
            }
            if is_ollama(model) && !loaded {
                self.statuses
                    .put(&ModelStatusRecord {
                        model_id: model.id.clone(),
                        status: status::LOADING.to_owned(),
                        load_progress: Some(0.0),
                        estimated_load_time: new.estimated_time,
                        job_id: Some(new.job_id.clone()),
                        last_loaded: previous.and_then(|p| p.value.last_loaded),
                        updated_at: now_rfc3339(),
                        ..ModelStatusRecord::default()
                    })
                    .await;
            }
            metrics::counter!("polylogue_loader_jobs_started_total").increment(1);
            tracing::info!(
                model = %model.id,
                job_id = %new.job_id,
                user_id = req.user_id.as_deref().unwrap_or("-"),
                "load job queued"
            );
            return Ok(reply(&new, false));
        }
        Err(ApiError::new(
            ErrorCode::ServiceUnavailable,
            "the model's load kept changing hands; try again",
        ))
    }

    /// `ollama-loader.cancel`: asks a job to stop; replies with the job as it now stands.
    pub async fn cancel(&self, req: CancelLoadRequest) -> Result<CancelLoadReply, ApiError> {
        let mut was_queued = false;
        let changed = self
            .jobs
            .modify(&req.job_id, |j| {
                was_queued = false;
                if job::is_terminal(&j.status) {
                    return false;
                }
                j.cancel_requested = true;
                if j.status == job::QUEUED {
                    was_queued = true;
                    j.status = job::CANCELLED.to_owned();
                    "cancelled".clone_into(&mut j.phase);
                }
                j.updated_at = now_rfc3339();
                true
            })
            .await
            .map_err(unavailable)?;
        let Some(current) = changed else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("unknown load job {:?}", req.job_id),
            ));
        };
        let job = current.value;
        if was_queued {
            self.jobs.release(&job.model_id, &job.job_id).await;
            metrics::counter!("polylogue_loader_jobs_finished_total", "outcome" => "cancelled")
                .increment(1);
        }
        tracing::info!(
            job_id = %job.job_id,
            model = %job.model_id,
            status = %job.status,
            user_id = req.user_id.as_deref().unwrap_or("-"),
            "load job cancel requested"
        );
        Ok(CancelLoadReply { job })
    }

    /// Puts a job id on the work queue (deduplicated by id).
    async fn enqueue(&self, job_id: &str) -> Result<(), String> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", job_id);
        self.js
            .publish_with_headers(
                names::queue_subject(self.prefix()),
                headers,
                Bytes::from(job_id.to_owned()),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}
