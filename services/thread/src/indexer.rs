//! Keeps the search index in step with the threads, from the domain events: a durable JetStream
//! consumer (at-least-once). Each event only says *which* thread changed; the indexer re-reads that
//! thread's current state and upserts it (or deletes it when it is gone), so redeliveries and
//! out-of-order events converge on the truth.

use crate::service::ThreadService;
use async_nats::jetstream::consumer::{self, pull};
use futures::StreamExt;
use polylogue_contracts::subjects::events;
use polylogue_contracts::threads::DomainEvent;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const CONSUMER: &str = "thread-search-indexer";

pub async fn run(
    service: Arc<ThreadService>,
    js: async_nats::jetstream::Context,
    prefix: String,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if let Err(error) = consume(&service, &js, &prefix, &shutdown).await {
            tracing::warn!(%error, "search indexer stopped; restarting");
        }
        tokio::select! {
            () = shutdown.cancelled() => {},
            () = tokio::time::sleep(Duration::from_millis(500)) => {},
        }
    }
}

async fn consume(
    service: &ThreadService,
    js: &async_nats::jetstream::Context,
    prefix: &str,
    shutdown: &CancellationToken,
) -> Result<(), async_nats::Error> {
    let stream = js.get_stream(events::stream(prefix)).await?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                filter_subjects: vec![
                    events::subject(prefix, "thread.>"),
                    events::subject(prefix, "summary.>"),
                ],
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 1000,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let Some(message) = next else { return Ok(()) };
        let message = message?;
        match handle(service, &message.payload).await {
            Ok(()) => {
                if let Err(error) = message.ack().await {
                    tracing::warn!(%error, "index ack failed; the event will be redelivered");
                }
                metrics::counter!("polylogue_search_indexed_total", "outcome" => "ok").increment(1);
            }
            Err(error) => {
                metrics::counter!("polylogue_search_indexed_total", "outcome" => "retry")
                    .increment(1);
                tracing::warn!(%error, "indexing failed; retrying later");
                let _ = message
                    .ack_with(async_nats::jetstream::AckKind::Nak(Some(
                        Duration::from_secs(1),
                    )))
                    .await;
            }
        }
    }
}

async fn handle(service: &ThreadService, payload: &[u8]) -> Result<(), String> {
    let Ok(event) = serde_json::from_slice::<DomainEvent>(payload) else {
        // Not ours to understand: acknowledge so it does not block the stream.
        tracing::warn!("undecodable domain event skipped");
        return Ok(());
    };
    let (Ok(owner), Ok(thread)) = (
        Uuid::parse_str(&event.owner_id),
        Uuid::parse_str(&event.thread_id),
    ) else {
        return Ok(());
    };
    let doc = if event.kind == events::THREAD_DELETED {
        None
    } else {
        service
            .search_doc(owner, thread)
            .await
            .map_err(|e| e.to_string())?
    };
    match doc {
        Some(doc) => service.search.upsert(&doc).await.map_err(|e| e.to_string()),
        None => service
            .search
            .delete(thread)
            .await
            .map_err(|e| e.to_string()),
    }
}
