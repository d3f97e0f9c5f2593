//! Threads and message histories: query/path/body checks here, everything else in the thread
//! service, which also enforces ownership.

use super::User;
use crate::envelope::{EdgeError, Reply};
use crate::json::ValidJson;
use crate::middleware::{RequestMeta, bus_context};
use crate::state::EdgeState;
use axum::Extension;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use polylogue_contracts::subjects::{service, thread as verbs};
use polylogue_contracts::threads::{
    CreateThreadRequest, DeletedThread, ListMessagesRequest, ListThreadsRequest, MessagePage,
    RenameThreadRequest, RenamedThread, ThreadDetail, ThreadPage, ThreadRef, ThreadView,
};
use polylogue_contracts::{ApiError, ErrorCode};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TitleBody {
    pub title: String,
}

fn not_found() -> EdgeError {
    EdgeError::new(ErrorCode::NotFound, "thread not found")
}

fn query(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, EdgeError> {
    q.map(|Query(map)| map)
        .map_err(|_| ApiError::validation("query", "the query string could not be parsed").into())
}

fn limit(params: &HashMap<String, String>, default: u32) -> Result<u32, EdgeError> {
    match params.get("limit") {
        None => Ok(default),
        Some(raw) => raw.trim().parse::<u32>().map_err(|_| {
            EdgeError::from(
                ApiError::validation("limit", "limit must be a positive integer")
                    .with_details(json!({ "field": "limit", "expected": "integer" })),
            )
        }),
    }
}

pub async fn list(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Reply, EdgeError> {
    let params = query(params)?;
    let request = ListThreadsRequest {
        user_id: user.sub.clone(),
        limit: limit(&params, 20)?,
        cursor: params.get("cursor").cloned(),
        q: params.get("q").cloned(),
        order_by: params
            .get("orderBy")
            .cloned()
            .unwrap_or_else(|| "updated_at".into()),
        order: params
            .get("order")
            .cloned()
            .unwrap_or_else(|| "desc".into()),
    };
    let page: ThreadPage = state
        .bus
        .request(
            service::THREAD,
            verbs::LIST,
            &bus_context(&meta, &headers),
            &request,
        )
        .await?;
    Ok(Reply::paged(
        json!({ "threads": page.threads }),
        page.pagination,
    ))
}

pub async fn create(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    ValidJson(body): ValidJson<TitleBody>,
) -> Result<Reply, EdgeError> {
    let request = CreateThreadRequest {
        user_id: user.sub.clone(),
        title: body.title,
    };
    let thread: ThreadView = state
        .bus
        .request(
            service::THREAD,
            verbs::CREATE,
            &bus_context(&meta, &headers),
            &request,
        )
        .await?;
    Ok(Reply::with_status(
        StatusCode::CREATED,
        json!({ "thread": thread }),
    ))
}

pub async fn get(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    path: Result<Path<String>, PathRejection>,
) -> Result<Reply, EdgeError> {
    let Path(thread_id) = path.map_err(|_| not_found())?;
    let request = ThreadRef {
        user_id: user.sub.clone(),
        thread_id,
    };
    let thread: ThreadDetail = state
        .bus
        .request(
            service::THREAD,
            verbs::GET,
            &bus_context(&meta, &headers),
            &request,
        )
        .await?;
    Ok(Reply::ok(json!({ "thread": thread })))
}

pub async fn delete(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    path: Result<Path<String>, PathRejection>,
) -> Result<Reply, EdgeError> {
    let Path(thread_id) = path.map_err(|_| not_found())?;
    let request = ThreadRef {
        user_id: user.sub.clone(),
        thread_id,
    };
    let deleted: DeletedThread = state
        .bus
        .request(
            service::THREAD,
            verbs::DELETE,
            &bus_context(&meta, &headers),
            &request,
        )
        .await?;
    Ok(Reply::ok(deleted))
}

pub async fn rename(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    path: Result<Path<String>, PathRejection>,
    ValidJson(body): ValidJson<TitleBody>,
) -> Result<Reply, EdgeError> {
    let Path(thread_id) = path.map_err(|_| not_found())?;
    let request = RenameThreadRequest {
        user_id: user.sub.clone(),
        thread_id,
        title: body.title,
    };
    let thread: RenamedThread = state
        .bus
        .request(
            service::THREAD,
            verbs::RENAME,
            &bus_context(&meta, &headers),
            &request,
        )
        .await?;
    Ok(Reply::ok(json!({ "thread": thread })))
}

pub async fn messages(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Reply, EdgeError> {
    let Path((thread_id, model_id)) = path.map_err(|_| not_found())?;
    let params = query(params)?;
    let request = ListMessagesRequest {
        user_id: user.sub.clone(),
        thread_id,
        model_id,
        limit: limit(&params, 50)?,
        cursor: params.get("cursor").cloned(),
        order: params
            .get("order")
            .cloned()
            .unwrap_or_else(|| "desc".into()),
    };
    let page: MessagePage = state
        .bus
        .request(
            service::THREAD,
            verbs::MESSAGES_LIST,
            &bus_context(&meta, &headers),
            &request,
        )
        .await?;
    Ok(Reply::paged(
        json!({ "messages": page.messages }),
        page.pagination,
    ))
}
