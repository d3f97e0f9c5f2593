//! `POST /api/threads/:threadId/models/:modelId/summarize`: the summarizer writes the summary of
//! the whole history now (owner only; the thread service's ownership check answers 404 for
//! anyone else). A summary is a model call, so this request waits `summarizer.request_timeout_secs`
//! rather than the bus's default bound.

use super::User;
use crate::envelope::{EdgeError, Reply};
use crate::middleware::{RequestMeta, bus_context};
use crate::state::EdgeState;
use axum::Extension;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use polylogue_contracts::ErrorCode;
use polylogue_contracts::subjects::{service, summarizer as verbs};
use polylogue_contracts::summaries::{SummarizeReply, SummarizeRequest};
use serde_json::json;
use std::sync::Arc;

pub async fn summarize(
    State(state): State<Arc<EdgeState>>,
    Extension(meta): Extension<RequestMeta>,
    headers: HeaderMap,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Reply, EdgeError> {
    let Path((thread_id, model_id)) =
        path.map_err(|_| EdgeError::new(ErrorCode::NotFound, "thread not found"))?;
    let reply: SummarizeReply = state
        .bus
        .request_with_timeout(
            service::SUMMARIZER,
            verbs::SUMMARIZE,
            &bus_context(&meta, &headers),
            &SummarizeRequest {
                user_id: user.sub.clone(),
                thread_id,
                model_id,
            },
            state.summarize_timeout,
        )
        .await?;
    Ok(Reply::ok(json!({
        "summary": reply.summary,
        "tokens": reply.tokens,
        "generatedAt": reply.generated_at,
        "modelUsed": reply.model_used,
    })))
}
