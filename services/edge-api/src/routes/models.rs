//! Local models: `GET /api/models/:modelId/status` (from the status every edge replica reads in
//! `<prefix>-model-status`, kept by the ollama-loader — no provider round trip),
//! `POST /api/models/:modelId/load` (start or join a durable load job, 202),
//! `GET /api/models/:modelId/load/stream?jobId=` (SSE of the job's progress: the current state
//! first, then every change, a final `complete` or `error`; reconnectable on any replica) and
//! `DELETE /api/models/:modelId/load/:jobId` (cancel).

use super::User;
use crate::envelope::{EdgeError, Reply};
use crate::middleware::{RequestMeta, bus_context};
use crate::state::EdgeState;
use axum::Extension;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use polylogue_catalog::ModelEntry;
use polylogue_contracts::models::{
    CancelLoadReply, CancelLoadRequest, LoadJob, LoadReply, LoadRequest, ModelStatusRecord, job,
    job_key, status, status_key,
};
use polylogue_contracts::subjects::{loader, service};
use polylogue_contracts::{ApiError, ErrorCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn model<'a>(state: &'a EdgeState, id: &str) -> Result<&'a ModelEntry, EdgeError> {
    state.catalog.get(id).ok_or_else(|| {
        EdgeError::new(
            ErrorCode::NotFound,
            format!("model {id:?} is not in the catalog (see GET /api/models)"),
        )
    })
}

fn model_path(path: Result<Path<String>, PathRejection>) -> Result<String, EdgeError> {
    path.map(|Path(id)| id)
        .map_err(|_| EdgeError::new(ErrorCode::NotFound, "no such model"))
}

async fn bucket<'a>(
    state: &'a EdgeState,
    cell: &'a tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    name: String,
) -> Option<&'a async_nats::jetstream::kv::Store> {
    cell.get_or_try_init(|| async { state.js.get_key_value(name).await })
        .await
        .ok()
}

fn unavailable(model_id: &str, why: impl Into<String>) -> ModelStatusRecord {
    ModelStatusRecord {
        model_id: model_id.to_owned(),
        status: status::UNAVAILABLE.into(),
        error: Some(why.into()),
        ..ModelStatusRecord::default()
    }
}

/// The record as clients should see it: a record the loader stopped refreshing means nobody
/// knows, so `unavailable` with the reason.
pub(crate) async fn current_status(state: &EdgeState, model_id: &str) -> ModelStatusRecord {
    match reported_status(state, model_id).await {
        Ok(record) => record,
        Err(why) => unavailable(model_id, why),
    }
}

/// The loader's current record of a model, or why there is none (no loader reported it, it
/// could not be read, or the loader stopped refreshing it).
pub(crate) async fn reported_status(
    state: &EdgeState,
    model_id: &str,
) -> Result<ModelStatusRecord, String> {
    let Some(store) = bucket(
        state,
        &state.model_status,
        loader::status_bucket(state.bus.prefix()),
    )
    .await
    else {
        return Err("no ollama-loader has reported model status yet".into());
    };
    let record = match store.get(status_key(model_id)).await {
        Ok(Some(bytes)) => serde_json::from_slice::<ModelStatusRecord>(&bytes).ok(),
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(%error, "model status not read");
            return Err("the model status could not be read".into());
        }
    };
    let Some(record) = record else {
        return Err("no status reported for this model yet".into());
    };
    let age = OffsetDateTime::parse(&record.updated_at, &Rfc3339)
        .map(|t| OffsetDateTime::now_utc() - t)
        .unwrap_or(time::Duration::MAX);
    if age > state.status_stale {
        return Err(format!(
            "the status is {} s old: no ollama-loader is watching this model",
            age.whole_seconds().max(0)
        ));
    }
    Ok(record)
}

pub async fn status(
    State(state): State<Arc<EdgeState>>,
    User(_user): User,
    path: Result<Path<String>, PathRejection>,
) -> Result<Reply, EdgeError> {
    let id = model_path(path)?;
    let model = model(&state, &id)?;
    let r = current_status(&state, &model.id).await;
    let progress = match r.status.as_str() {
        status::LOADED => Some(100.0),
        status::LOADING => Some(r.load_progress.unwrap_or(0.0)),
        _ => None,
    };
    let mut data = json!({
        "modelId": model.id,
        "status": r.status,
        "loadProgress": progress,
        "memoryUsage": r.memory_usage,
        "lastLoaded": r.last_loaded,
        "estimatedLoadTime": if r.status == status::LOADED { None } else { r.estimated_load_time },
    });
    if let Some(obj) = data.as_object_mut() {
        if let Some(error) = r.error {
            obj.insert("error".into(), Value::String(error));
        }
        if let Some(job_id) = r.job_id.filter(|_| r.status == status::LOADING) {
            obj.insert("jobId".into(), Value::String(job_id));
        }
    }
    Ok(Reply::ok(data))
}

pub async fn load(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    path: Result<Path<String>, PathRejection>,
) -> Result<Reply, EdgeError> {
    let id = model_path(path)?;
    let model = model(&state, &id)?;
    let reply: LoadReply = state
        .bus
        .request(
            service::LOADER,
            loader::LOAD,
            &bus_context(&meta, &headers),
            &LoadRequest {
                model_id: model.id.clone(),
                user_id: Some(user.sub.clone()),
            },
        )
        .await?;
    let shown = if reply.status == job::COMPLETE {
        status::LOADED
    } else {
        status::LOADING
    };
    Ok(Reply::with_status(
        StatusCode::ACCEPTED,
        json!({
            "modelId": reply.model_id,
            "jobId": reply.job_id,
            "status": shown,
            "jobStatus": reply.status,
            "estimatedTime": reply.estimated_time,
            "joined": reply.joined,
        }),
    ))
}

pub async fn cancel(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Reply, EdgeError> {
    let Path((model_id, job_id)) =
        path.map_err(|_| EdgeError::new(ErrorCode::NotFound, "no such load job"))?;
    model(&state, &model_id)?;
    let current = read_job(&state, &job_id).await?;
    if current.model_id != model_id {
        return Err(EdgeError::new(ErrorCode::NotFound, "no such load job"));
    }
    let reply: CancelLoadReply = state
        .bus
        .request(
            service::LOADER,
            loader::CANCEL,
            &bus_context(&meta, &headers),
            &CancelLoadRequest {
                job_id: job_id.clone(),
                user_id: Some(user.sub.clone()),
            },
        )
        .await?;
    Ok(Reply::ok(job_view(&reply.job)))
}

fn job_view(j: &LoadJob) -> Value {
    json!({
        "jobId": j.job_id,
        "modelId": j.model_id,
        "status": j.status,
        "phase": j.phase,
        "progress": j.progress,
        "completedBytes": j.completed_bytes,
        "totalBytes": j.total_bytes,
        "error": j.error,
        "estimatedTime": j.estimated_time,
        "updatedAt": j.updated_at,
    })
}

async fn jobs_bucket(state: &EdgeState) -> Result<&async_nats::jetstream::kv::Store, EdgeError> {
    bucket(
        state,
        &state.load_jobs,
        loader::jobs_bucket(state.bus.prefix()),
    )
    .await
    .ok_or_else(|| EdgeError::new(ErrorCode::NotFound, "no such load job"))
}

async fn read_job(state: &EdgeState, job_id: &str) -> Result<LoadJob, EdgeError> {
    let store = jobs_bucket(state).await?;
    let bytes = store
        .get(job_key(job_id))
        .await
        .map_err(|_| EdgeError::new(ErrorCode::ServiceUnavailable, "load jobs cannot be read"))?
        .ok_or_else(|| EdgeError::new(ErrorCode::NotFound, "no such load job"))?;
    serde_json::from_slice(&bytes).map_err(|_| EdgeError::from(ApiError::internal()))
}

/// One SSE event for a job state: `progress` while it runs, `complete` or `error` at the end.
fn job_event(j: &LoadJob, revision: u64) -> Event {
    let name = match j.status.as_str() {
        job::COMPLETE => "complete",
        job::ERROR | job::CANCELLED => "error",
        _ => "progress",
    };
    let mut data = job_view(j);
    if name == "error"
        && let Some(obj) = data.as_object_mut()
    {
        let message = j
            .error
            .clone()
            .unwrap_or_else(|| format!("the load was {}", j.status));
        obj.insert("message".into(), Value::String(message));
    }
    Event::default()
        .event(name)
        .id(revision.to_string())
        .data(data.to_string())
}

pub async fn load_stream(
    State(state): State<Arc<EdgeState>>,
    User(_user): User,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, EdgeError> {
    let id = model_path(path)?;
    let model = model(&state, &id)?;
    let job_id = query
        .ok()
        .and_then(|Query(q)| q.get("jobId").cloned())
        .filter(|j| !j.is_empty())
        .ok_or_else(|| EdgeError::from(ApiError::validation("jobId", "jobId is required")))?;
    let current = read_job(&state, &job_id).await?;
    if current.model_id != model.id {
        return Err(EdgeError::new(ErrorCode::NotFound, "no such load job"));
    }
    let store = jobs_bucket(&state).await?.clone();
    let watch = store
        .watch_with_history(job_key(&job_id))
        .await
        .map_err(|_| EdgeError::new(ErrorCode::ServiceUnavailable, "load jobs cannot be read"))?;
    // The current state first (the watch starts with it), then every change; the stream ends
    // after the terminal event.
    let events = futures::stream::unfold((watch, false), |(mut watch, done)| async move {
        if done {
            return None;
        }
        loop {
            match watch.next().await {
                Some(Ok(entry))
                    if matches!(entry.operation, async_nats::jetstream::kv::Operation::Put) =>
                {
                    let Ok(j) = serde_json::from_slice::<LoadJob>(&entry.value) else {
                        continue;
                    };
                    let end = job::is_terminal(&j.status);
                    return Some((vec![job_event(&j, entry.revision)], (watch, end)));
                }
                Some(Ok(_)) | None | Some(Err(_)) => {
                    let gone = Event::default().event("error").data(
                        json!({ "message": "the load job is no longer available" }).to_string(),
                    );
                    return Some((vec![gone], (watch, true)));
                }
            }
        }
    })
    .flat_map(futures::stream::iter)
    .chain(futures::stream::once(async {
        Event::default().event("close").data("{}")
    }))
    .map(Ok::<_, Infallible>);
    let mut response = Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(state.inference.keepalive.max(Duration::from_secs(1)))
                .text("keep-alive"),
        )
        .into_response();
    let h = response.headers_mut();
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
