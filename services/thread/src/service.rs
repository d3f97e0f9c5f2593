//! Thread business logic on plain values: validation, ids and timestamps, cursors, views.

use crate::cursor::{CursorKey, Position};
use crate::events::Events;
use polylogue_catalog::Catalog;
use polylogue_contracts::health::DependencyHealth;
use polylogue_contracts::subjects::events as kinds;
use polylogue_contracts::threads::{
    AppendMessageReply, AppendMessageRequest, CreateThreadRequest, DeletedThread, DomainEvent,
    GetMessageRequest, HistoryReply, HistoryRequest, LastMessageView, ListMessagesRequest,
    ListThreadsRequest, MessagePage, MessageView, ModelHistoryView, Pagination, PutSummaryReply,
    PutSummaryRequest, RenameThreadRequest, RenamedThread, SummaryView, ThreadDetail, ThreadPage,
    ThreadRef, ThreadView, UpdateMessageRequest,
};
use polylogue_contracts::{ApiError, ErrorCode};
use polylogue_storage::search::{SearchDoc, ThreadSearch};
use polylogue_storage::threads::{
    AppendOutcome, Direction, MessageRecord, MessageUpdate, ModelHistory, SortField,
    SummaryOutcome, SummaryRecord, ThreadKey, ThreadRecord, ThreadStore,
};
use polylogue_storage::{StoreError, now_ms};
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

pub const TITLE_MAX: usize = 200;
pub const THREADS_LIMIT_MAX: u32 = 100;
pub const MESSAGES_LIMIT_MAX: u32 = 200;
pub const CONTENT_MAX: usize = 1_000_000;
const ROLES: &[&str] = &["user", "assistant", "system"];
const STATUSES: &[&str] = &["complete", "streaming", "error", "cancelled", "interrupted"];

pub struct ThreadService {
    pub store: Arc<dyn ThreadStore>,
    pub search: Arc<dyn ThreadSearch>,
    catalog: Arc<Catalog>,
    cursors: CursorKey,
    events: Events,
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
        StoreError::Unavailable(reason) | StoreError::Corrupt(reason) => {
            tracing::error!(%reason, "thread store failed");
            ApiError::new(
                ErrorCode::ServiceUnavailable,
                "the thread store is unavailable",
            )
        }
    }
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn from_ms(v: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1_000_000).ok()
}

fn thread_not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "thread not found")
}

fn user_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::new(ErrorCode::Unauthorized, "unknown user"))
}

/// A thread id from a URL: anything that is not one of ours is simply not found.
fn thread_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| thread_not_found())
}

pub fn validate_title(raw: &str) -> Result<String, ApiError> {
    let title = raw.trim();
    let n = title.chars().count();
    if n == 0 || n > TITLE_MAX {
        return Err(ApiError::validation(
            "title",
            format!("title must be 1-{TITLE_MAX} characters after trimming"),
        ));
    }
    if title.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "title",
            "title cannot contain control characters",
        ));
    }
    Ok(title.to_owned())
}

fn limit(raw: u32, max: u32) -> Result<usize, ApiError> {
    if raw == 0 || raw > max {
        return Err(
            ApiError::validation("limit", format!("limit must be 1-{max}")).with_details(
                serde_json::json!({ "field": "limit", "expected": format!("integer 1-{max}") }),
            ),
        );
    }
    Ok(raw as usize)
}

fn direction(raw: &str) -> Result<Direction, ApiError> {
    match raw {
        "asc" => Ok(Direction::Asc),
        "desc" => Ok(Direction::Desc),
        _ => Err(ApiError::validation("order", "order must be asc or desc")
            .with_details(serde_json::json!({ "field": "order", "expected": "asc | desc" }))),
    }
}

fn sort_field(raw: &str) -> Result<SortField, ApiError> {
    match raw {
        "created_at" => Ok(SortField::CreatedAt),
        "updated_at" => Ok(SortField::UpdatedAt),
        _ => Err(ApiError::validation("orderBy", "orderBy must be created_at or updated_at")
            .with_details(serde_json::json!({ "field": "orderBy", "expected": "created_at | updated_at" }))),
    }
}

fn stored_context(m: &MessageRecord) -> Option<serde_json::Value> {
    m.context
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok())
}

pub fn message_view(m: &MessageRecord) -> MessageView {
    MessageView {
        id: m.id.to_string(),
        thread_id: m.thread_id.to_string(),
        model_id: m.model_id.clone(),
        role: m.role.clone(),
        content: m.content.clone(),
        tokens: m.tokens,
        temperature: m.temperature,
        created_at: rfc3339(m.created_at),
        status: m.status.clone(),
    }
}

fn summary_view(s: &SummaryRecord) -> SummaryView {
    SummaryView {
        version: s.version,
        content: s.content.clone(),
        tokens: s.tokens,
        covers_until: s.covers_until.to_string(),
        model_used: s.model_used.clone(),
        generated_at: rfc3339(s.generated_at),
    }
}

/// The thread-level summary: the newest of its per-model summaries.
fn latest_summary(models: &[ModelHistory]) -> Option<&SummaryRecord> {
    models
        .iter()
        .filter_map(|m| m.summary.as_ref())
        .max_by_key(|s| s.generated_at)
}

fn thread_view(t: &ThreadRecord, models: &[ModelHistory]) -> ThreadView {
    ThreadView {
        id: t.id.to_string(),
        title: t.title.clone(),
        created_at: rfc3339(t.created_at),
        updated_at: rfc3339(t.updated_at),
        message_count: t.message_count,
        active_models: models
            .iter()
            .filter(|m| m.message_count > 0)
            .map(|m| m.model_id.clone())
            .collect(),
        last_message: t.last_message.as_ref().map(|l| LastMessageView {
            content: l.content.clone(),
            role: l.role.clone(),
            model: l.model_id.clone(),
            timestamp: rfc3339(l.at),
        }),
        summary: latest_summary(models).map(|s| s.content.clone()),
    }
}

impl ThreadService {
    pub fn new(
        store: Arc<dyn ThreadStore>,
        search: Arc<dyn ThreadSearch>,
        catalog: Arc<Catalog>,
        cursors: CursorKey,
        events: Events,
    ) -> Self {
        Self {
            store,
            search,
            catalog,
            cursors,
            events,
        }
    }

    fn model(&self, id: &str) -> Result<(), ApiError> {
        if self.catalog.contains(id) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::NotFound,
                format!("unknown model {id:?}"),
            ))
        }
    }

    async fn event(
        &self,
        kind: &str,
        id_suffix: &str,
        owner: Uuid,
        thread: Uuid,
        model: Option<&str>,
        message: Option<Uuid>,
    ) {
        self.events
            .publish(&DomainEvent {
                id: format!("{kind}:{id_suffix}"),
                kind: kind.to_owned(),
                owner_id: owner.to_string(),
                thread_id: thread.to_string(),
                model_id: model.map(str::to_owned),
                message_id: message.map(|m| m.to_string()),
                at: rfc3339(OffsetDateTime::now_utc()),
            })
            .await;
    }

    pub async fn create(&self, req: CreateThreadRequest) -> Result<ThreadView, ApiError> {
        let owner = user_id(&req.user_id)?;
        let title = validate_title(&req.title)?;
        let now = now_ms();
        let thread = ThreadRecord {
            id: Uuid::now_v7(),
            owner_id: owner,
            title,
            created_at: now,
            updated_at: now,
            message_count: 0,
            last_message: None,
        };
        self.store
            .create_thread(&thread)
            .await
            .map_err(store_error)?;
        self.event(
            kinds::THREAD_CREATED,
            &thread.id.to_string(),
            owner,
            thread.id,
            None,
            None,
        )
        .await;
        Ok(thread_view(&thread, &[]))
    }

    pub async fn list(&self, req: ListThreadsRequest) -> Result<ThreadPage, ApiError> {
        let owner = user_id(&req.user_id)?;
        let limit = limit(req.limit, THREADS_LIMIT_MAX)?;
        let sort = sort_field(&req.order_by)?;
        let dir = direction(&req.order)?;
        let query = req.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
        if query.is_some_and(|q| q.chars().count() > 200) {
            return Err(ApiError::validation(
                "q",
                "q must be at most 200 characters",
            ));
        }
        let listing = format!(
            "threads:{}:{}:{}",
            req.order_by,
            req.order,
            query.unwrap_or("")
        );
        let after = match req.cursor.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => {
                let p = self.cursors.decode(c, &req.user_id, &listing)?;
                let at = p.a.and_then(from_ms);
                let id = Uuid::parse_str(&p.i).ok();
                match (at, id) {
                    (Some(at), Some(id)) => Some(ThreadKey { at, id }),
                    _ => {
                        return Err(ApiError::validation(
                            "cursor",
                            "the cursor is invalid for this listing",
                        ));
                    }
                }
            }
            None => None,
        };
        // One more than asked tells whether another page exists.
        let (mut threads, total) = match query {
            None => {
                let threads = self
                    .store
                    .list_threads(owner, sort, dir, after, limit + 1)
                    .await
                    .map_err(store_error)?;
                let total = self.store.count_threads(owner).await.map_err(store_error)?;
                (threads, total)
            }
            Some(q) => {
                let ids = self
                    .search
                    .search(owner, q, sort, dir, after, limit + 1)
                    .await
                    .map_err(store_error)?;
                let threads = self
                    .store
                    .threads_by_ids(owner, &ids)
                    .await
                    .map_err(store_error)?;
                let total = self.search.count(owner, q).await.map_err(store_error)?;
                (threads, total)
            }
        };
        let has_more = threads.len() > limit;
        threads.truncate(limit);
        let cursor = if has_more {
            threads.last().map(|t| {
                let at = match sort {
                    SortField::CreatedAt => t.created_at,
                    SortField::UpdatedAt => t.updated_at,
                };
                self.cursors.encode(&Position {
                    u: req.user_id.clone(),
                    l: listing.clone(),
                    a: Some(ms(at)),
                    i: t.id.to_string(),
                })
            })
        } else {
            None
        };
        let mut views = Vec::with_capacity(threads.len());
        for t in &threads {
            let models = self.store.models(owner, t.id).await.map_err(store_error)?;
            views.push(thread_view(t, &models));
        }
        Ok(ThreadPage {
            threads: views,
            pagination: Pagination {
                cursor,
                limit: req.limit,
                has_more,
                total_count: Some(total),
            },
        })
    }

    pub async fn get(&self, req: ThreadRef) -> Result<ThreadDetail, ApiError> {
        let owner = user_id(&req.user_id)?;
        let id = thread_id(&req.thread_id)?;
        let t = self
            .store
            .thread(owner, id)
            .await
            .map_err(store_error)?
            .ok_or_else(thread_not_found)?;
        let models = self.store.models(owner, id).await.map_err(store_error)?;
        Ok(ThreadDetail {
            id: t.id.to_string(),
            title: t.title,
            created_at: rfc3339(t.created_at),
            updated_at: rfc3339(t.updated_at),
            message_count: t.message_count,
            models: models
                .into_iter()
                .map(|m| {
                    (
                        m.model_id,
                        ModelHistoryView {
                            message_count: m.message_count,
                            last_message_at: m.last_message_at.map(rfc3339),
                            summary: m.summary.as_ref().map(|s| s.content.clone()),
                            summary_updated_at: m.summary.as_ref().map(|s| rfc3339(s.generated_at)),
                        },
                    )
                })
                .collect(),
        })
    }

    pub async fn rename(&self, req: RenameThreadRequest) -> Result<RenamedThread, ApiError> {
        let owner = user_id(&req.user_id)?;
        let id = thread_id(&req.thread_id)?;
        let title = validate_title(&req.title)?;
        let at = now_ms();
        let t = self
            .store
            .rename_thread(owner, id, &title, at)
            .await
            .map_err(store_error)?
            .ok_or_else(thread_not_found)?;
        self.event(
            kinds::THREAD_RENAMED,
            &format!("{id}:{}", ms(at)),
            owner,
            id,
            None,
            None,
        )
        .await;
        Ok(RenamedThread {
            id: t.id.to_string(),
            title: t.title,
            updated_at: rfc3339(t.updated_at),
        })
    }

    pub async fn delete(&self, req: ThreadRef) -> Result<DeletedThread, ApiError> {
        let owner = user_id(&req.user_id)?;
        let id = thread_id(&req.thread_id)?;
        let deleted = self
            .store
            .delete_thread(owner, id)
            .await
            .map_err(store_error)?
            .ok_or_else(thread_not_found)?;
        self.event(
            kinds::THREAD_DELETED,
            &id.to_string(),
            owner,
            id,
            None,
            None,
        )
        .await;
        Ok(DeletedThread {
            deleted_thread: id.to_string(),
            deleted_messages: deleted,
        })
    }

    pub async fn messages(&self, req: ListMessagesRequest) -> Result<MessagePage, ApiError> {
        let owner = user_id(&req.user_id)?;
        let id = thread_id(&req.thread_id)?;
        self.model(&req.model_id)?;
        let limit = limit(req.limit, MESSAGES_LIMIT_MAX)?;
        let dir = direction(&req.order)?;
        let listing = format!("messages:{id}:{}:{}", req.model_id, req.order);
        let after = match req.cursor.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => {
                let p = self.cursors.decode(c, &req.user_id, &listing)?;
                Some(Uuid::parse_str(&p.i).map_err(|_| {
                    ApiError::validation("cursor", "the cursor is invalid for this listing")
                })?)
            }
            None => None,
        };
        let mut messages = self
            .store
            .list_messages(owner, id, &req.model_id, dir, after, limit + 1)
            .await
            .map_err(store_error)?
            .ok_or_else(thread_not_found)?;
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        let cursor = if has_more {
            messages.last().map(|m| {
                self.cursors.encode(&Position {
                    u: req.user_id.clone(),
                    l: listing.clone(),
                    a: None,
                    i: m.id.to_string(),
                })
            })
        } else {
            None
        };
        Ok(MessagePage {
            messages: messages.iter().map(message_view).collect(),
            pagination: Pagination {
                cursor,
                limit: req.limit,
                has_more,
                total_count: None,
            },
        })
    }

    pub async fn append(&self, req: AppendMessageRequest) -> Result<AppendMessageReply, ApiError> {
        let owner = user_id(&req.user_id)?;
        let thread = thread_id(&req.thread_id)?;
        self.model(&req.model_id)?;
        if !ROLES.contains(&req.role.as_str()) {
            return Err(ApiError::validation(
                "role",
                "role must be user, assistant or system",
            ));
        }
        let status = req.status.unwrap_or_else(|| "complete".to_owned());
        if !STATUSES.contains(&status.as_str()) {
            return Err(ApiError::validation("status", "unknown message status"));
        }
        if req.content.len() > CONTENT_MAX {
            return Err(ApiError::validation("content", "content is too long"));
        }
        if req
            .idempotency_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > 200)
        {
            return Err(ApiError::validation(
                "idempotencyKey",
                "idempotency key must be 1-200 bytes",
            ));
        }
        let id = match &req.message_id {
            Some(raw) => Uuid::parse_str(raw)
                .map_err(|_| ApiError::validation("messageId", "messageId must be a UUID"))?,
            None => Uuid::now_v7(),
        };
        let now = now_ms();
        let record = MessageRecord {
            id,
            thread_id: thread,
            model_id: req.model_id.clone(),
            role: req.role,
            content: req.content,
            tokens: req.tokens,
            temperature: req.temperature,
            status,
            created_at: now,
            updated_at: now,
            idempotency_key: req.idempotency_key,
            context: req.context.map(|c| c.to_string()),
        };
        match self
            .store
            .append_message(owner, &record)
            .await
            .map_err(store_error)?
        {
            AppendOutcome::Inserted(m) => {
                self.event(
                    kinds::MESSAGE_CREATED,
                    &m.id.to_string(),
                    owner,
                    thread,
                    Some(&m.model_id),
                    Some(m.id),
                )
                .await;
                Ok(AppendMessageReply {
                    message: message_view(&m),
                    duplicate: false,
                    context: stored_context(&m),
                })
            }
            AppendOutcome::Duplicate(m) => Ok(AppendMessageReply {
                message: message_view(&m),
                duplicate: true,
                context: stored_context(&m),
            }),
            AppendOutcome::NoThread => Err(thread_not_found()),
        }
    }

    pub async fn update(&self, req: UpdateMessageRequest) -> Result<MessageView, ApiError> {
        let owner = user_id(&req.user_id)?;
        let thread = thread_id(&req.thread_id)?;
        let id = Uuid::parse_str(&req.message_id)
            .map_err(|_| ApiError::new(ErrorCode::NotFound, "message not found"))?;
        if req
            .status
            .as_ref()
            .is_some_and(|s| !STATUSES.contains(&s.as_str()))
        {
            return Err(ApiError::validation("status", "unknown message status"));
        }
        let update = MessageUpdate {
            content: req.content,
            status: req.status,
            tokens: req.tokens,
            temperature: req.temperature,
            context: req.context.map(|c| c.to_string()),
        };
        let m = self
            .store
            .update_message(owner, thread, &req.model_id, id, &update, now_ms())
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "message not found"))?;
        Ok(message_view(&m))
    }

    pub async fn message(&self, req: GetMessageRequest) -> Result<MessageView, ApiError> {
        let owner = user_id(&req.user_id)?;
        let thread = thread_id(&req.thread_id)?;
        let not_found = || ApiError::new(ErrorCode::NotFound, "message not found");
        let id = Uuid::parse_str(&req.message_id).map_err(|_| not_found())?;
        let m = self
            .store
            .message(owner, thread, &req.model_id, id)
            .await
            .map_err(store_error)?
            .ok_or_else(not_found)?;
        Ok(message_view(&m))
    }

    pub async fn history(&self, req: HistoryRequest) -> Result<HistoryReply, ApiError> {
        let owner = user_id(&req.user_id)?;
        let thread = thread_id(&req.thread_id)?;
        self.model(&req.model_id)?;
        let limit = limit(req.limit, 1000)?;
        let summary = self
            .store
            .summary(owner, thread, &req.model_id)
            .await
            .map_err(store_error)?;
        let covered = summary.as_ref().map(|s| s.covers_until);
        let messages = if req.oldest_first {
            self.store
                .list_messages(owner, thread, &req.model_id, Direction::Asc, covered, limit)
                .await
        } else {
            self.store
                .recent_messages(owner, thread, &req.model_id, covered, limit)
                .await
        }
        .map_err(store_error)?
        .ok_or_else(thread_not_found)?;
        Ok(HistoryReply {
            summary: summary.as_ref().map(summary_view),
            messages: messages.iter().map(message_view).collect(),
        })
    }

    pub async fn put_summary(&self, req: PutSummaryRequest) -> Result<PutSummaryReply, ApiError> {
        let owner = user_id(&req.user_id)?;
        let thread = thread_id(&req.thread_id)?;
        self.model(&req.model_id)?;
        let s = &req.summary;
        let record = SummaryRecord {
            version: s.version,
            content: s.content.clone(),
            tokens: s.tokens,
            covers_until: Uuid::parse_str(&s.covers_until)
                .map_err(|_| ApiError::validation("summary.coversUntil", "must be a message id"))?,
            model_used: s.model_used.clone(),
            generated_at: now_ms(),
        };
        match self
            .store
            .put_summary(owner, thread, &req.model_id, &record)
            .await
            .map_err(store_error)?
        {
            SummaryOutcome::Stored => {
                self.event(
                    kinds::SUMMARY_UPDATED,
                    &format!("{thread}:{}:{}", req.model_id, record.version),
                    owner,
                    thread,
                    Some(&req.model_id),
                    None,
                )
                .await;
                Ok(PutSummaryReply {
                    stored: true,
                    current_version: record.version,
                    generated_at: Some(rfc3339(record.generated_at)),
                })
            }
            SummaryOutcome::Stale { current_version } => Ok(PutSummaryReply {
                stored: false,
                current_version,
                generated_at: None,
            }),
            SummaryOutcome::NoThread => Err(thread_not_found()),
        }
    }

    /// The search document of a thread as it is now; `None` when it is gone.
    pub async fn search_doc(
        &self,
        owner: Uuid,
        thread: Uuid,
    ) -> Result<Option<SearchDoc>, StoreError> {
        let Some(t) = self.store.thread(owner, thread).await? else {
            return Ok(None);
        };
        let models = self.store.models(owner, thread).await?;
        let mut summaries: Vec<&SummaryRecord> =
            models.iter().filter_map(|m| m.summary.as_ref()).collect();
        summaries.sort_by_key(|s| std::cmp::Reverse(s.generated_at));
        let summary = (!summaries.is_empty()).then(|| {
            summaries
                .iter()
                .map(|s| s.content.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        });
        Ok(Some(SearchDoc {
            thread_id: t.id,
            owner_id: t.owner_id,
            title: t.title,
            summary,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }))
    }

    pub async fn health(&self) -> DependencyHealth {
        let started = Instant::now();
        let result = self.store.ping().await;
        DependencyHealth {
            status: if result.is_ok() {
                "healthy"
            } else {
                "unhealthy"
            }
            .into(),
            provider: self.store.provider().into(),
            latency: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            error: result
                .err()
                .map(|_| "the thread store did not answer".to_owned()),
        }
    }
}
