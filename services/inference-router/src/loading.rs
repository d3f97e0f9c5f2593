//! On-demand loading of local models. A message to a model that `requiresLoading` and is not
//! `loaded` (per the status the ollama-loader keeps in `<prefix>-model-status`) starts or joins
//! its load job. A non-streaming send waits for it (up to `inference.load_wait_secs`, else 503
//! with `Retry-After`, nothing stored); a streaming one is accepted at once and its generation
//! emits `status` events with the job's progress before the first token.

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use polylogue_bus::{Bus, RequestContext};
use polylogue_catalog::ModelEntry;
use polylogue_contracts::models::{
    LoadJob, LoadReply, LoadRequest, ModelStatusRecord, job, job_key, status, status_key,
};
use polylogue_contracts::subjects::{loader, service};
use polylogue_contracts::{ApiError, ErrorCode};
use std::time::Duration;
use tokio::sync::OnceCell;

/// What a message to a model has to wait for.
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    /// Loaded, or a model that needs no loading, or no loader to ask (the runtime then loads it
    /// itself on the first request, as Ollama does).
    Ready,
    /// Its load job is running.
    Loading {
        job_id: String,
        estimated_time: Option<u64>,
    },
}

/// The ollama-loader's two buckets, each looked up once (a lookup is a JetStream API round trip,
/// not to be paid per message) and only after a loader has created it.
pub struct Buckets {
    js: jetstream::Context,
    prefix: String,
    status: OnceCell<kv::Store>,
    jobs: OnceCell<kv::Store>,
}

impl Buckets {
    pub fn new(js: jetstream::Context, prefix: &str) -> Self {
        Self {
            js,
            prefix: prefix.to_owned(),
            status: OnceCell::new(),
            jobs: OnceCell::new(),
        }
    }

    async fn status(&self) -> Option<&kv::Store> {
        let name = loader::status_bucket(&self.prefix);
        self.status
            .get_or_try_init(|| self.js.get_key_value(name))
            .await
            .ok()
    }

    async fn jobs(&self) -> Option<&kv::Store> {
        let name = loader::jobs_bucket(&self.prefix);
        self.jobs
            .get_or_try_init(|| self.js.get_key_value(name))
            .await
            .ok()
    }
}

/// The model's status as the loader last wrote it.
pub async fn model_status(buckets: &Buckets, model_id: &str) -> Option<ModelStatusRecord> {
    let entry = buckets
        .status()
        .await?
        .get(status_key(model_id))
        .await
        .ok()??;
    serde_json::from_slice(&entry).ok()
}

/// Checks a model that needs loading and starts or joins its load when it is not loaded.
pub async fn ensure(
    bus: &Bus,
    buckets: &Buckets,
    ctx: &RequestContext,
    model: &ModelEntry,
    user_id: &str,
) -> Result<Readiness, ApiError> {
    if !model.requires_loading {
        return Ok(Readiness::Ready);
    }
    if model_status(buckets, &model.id)
        .await
        .is_some_and(|s| s.status == status::LOADED)
    {
        return Ok(Readiness::Ready);
    }
    let reply: Result<LoadReply, ApiError> = bus
        .request(
            service::LOADER,
            loader::LOAD,
            ctx,
            &LoadRequest {
                model_id: model.id.clone(),
                user_id: Some(user_id.to_owned()),
            },
        )
        .await;
    match reply {
        Ok(r) if r.status == job::COMPLETE => Ok(Readiness::Ready),
        Ok(r) => {
            tracing::info!(model = %model.id, job_id = %r.job_id, joined = r.joined, "model not loaded; waiting for its load");
            metrics::counter!("polylogue_on_demand_loads_total", "model" => model.id.clone())
                .increment(1);
            Ok(Readiness::Loading {
                job_id: r.job_id,
                estimated_time: r.estimated_time,
            })
        }
        Err(e) if e.code == ErrorCode::ServiceUnavailable => {
            tracing::warn!(model = %model.id, "no ollama-loader answered; the runtime loads the model itself");
            Ok(Readiness::Ready)
        }
        Err(e) => Err(e),
    }
}

/// Why a wait for a load ended without the model.
pub fn load_failed(model_id: &str, job: &LoadJob) -> ApiError {
    let reason = job
        .error
        .clone()
        .unwrap_or_else(|| format!("the load was {}", job.status));
    ApiError::new(
        ErrorCode::ServiceUnavailable,
        format!("model {model_id} could not be loaded: {reason}"),
    )
    .with_details(serde_json::json!({ "jobId": job.job_id, "modelId": model_id }))
}

/// Every state of a load job, the current one first, until the job's record goes away.
/// `None` when there is no jobs bucket (no loader has ever started).
pub async fn follow(
    buckets: &Buckets,
    job_id: &str,
) -> Option<futures::stream::BoxStream<'static, LoadJob>> {
    let watch = buckets
        .jobs()
        .await?
        .watch_with_history(job_key(job_id))
        .await
        .ok()?;
    Some(
        watch
            .take_while(|entry| {
                std::future::ready(
                    entry
                        .as_ref()
                        .is_ok_and(|e| matches!(e.operation, kv::Operation::Put)),
                )
            })
            .filter_map(|entry| {
                std::future::ready(
                    entry
                        .ok()
                        .and_then(|e| serde_json::from_slice::<LoadJob>(&e.value).ok()),
                )
            })
            .boxed(),
    )
}

/// Waits until a load job ends or `limit` passes. `Ok(())` when the model is loaded; else the
/// last state seen (terminal: the job failed; not terminal or `None`: the wait ran out).
pub async fn wait(buckets: &Buckets, job_id: &str, limit: Duration) -> Result<(), Option<LoadJob>> {
    let Some(mut states) = follow(buckets, job_id).await else {
        return Err(None);
    };
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = None;
    while let Ok(Some(state)) = tokio::time::timeout_at(deadline, states.next()).await {
        if state.status == job::COMPLETE {
            return Ok(());
        }
        let ended = job::is_terminal(&state.status);
        last = Some(state);
        if ended {
            break;
        }
    }
    Err(last)
}

/// Seconds a client should wait before retrying, from the job's estimate and progress.
pub fn retry_after(job: Option<&LoadJob>, estimated: Option<u64>) -> u64 {
    let remaining = match job {
        Some(j) if j.progress > 0.0 && j.progress < 100.0 => j
            .estimated_time
            .or(estimated)
            .map(|t| ((t as f64) * (100.0 - j.progress) / 100.0).ceil() as u64),
        _ => estimated,
    };
    remaining.unwrap_or(5).clamp(1, 300)
}
