//! The automatic path: a durable pull consumer of `message.created` events, shared by every
//! replica (each event goes to one of them, at least once).
//!
//! An event only names a history; its handler re-reads that history and its current summary and
//! summarizes only past the thresholds, so a redelivered or late event finds nothing due and is
//! acknowledged. Outcomes:
//!
//! - nothing due, or a summary written → ack;
//! - the history is locked by another writer → NAK, redelivered after `busy_retry_ms`;
//! - the thread (or model) is gone → ack;
//! - any other failure (provider down, thread service unavailable) → the history is marked
//!   stale, the previous summary stays, NAK with `backoff_ms[deliveries - 1]`; at
//!   `max_deliver` deliveries the event goes to the dead-letter subject with an advisory log line
//!   and `polylogue_summaries_dead_lettered_total`, and is terminated.

use crate::summarize::{History, Mode, Outcome, Summarizer};
use async_nats::jetstream::{self, AckKind, consumer};
use bytes::Bytes;
use futures::StreamExt;
use polylogue_bus::RequestContext;
use polylogue_contracts::subjects::{events, summarizer as names};
use polylogue_contracts::summaries::DeadLetter;
use polylogue_contracts::threads::DomainEvent;
use polylogue_contracts::{ApiError, ErrorCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Creates the dead-letter stream (or keeps the existing one).
pub async fn ensure_dead_letter_stream(
    js: &jetstream::Context,
    prefix: &str,
    retention: Duration,
) -> Result<(), async_nats::Error> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: names::dead_letter_stream(prefix),
        subjects: vec![names::dead_letter_subject(prefix)],
        storage: jetstream::stream::StorageType::File,
        max_age: retention,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    Ok(())
}

pub async fn run(summarizer: Arc<Summarizer>, shutdown: CancellationToken, tracker: TaskTracker) {
    let permits = Arc::new(Semaphore::new(summarizer.settings().max_concurrent));
    while !shutdown.is_cancelled() {
        if let Err(error) = consume(&summarizer, &permits, &shutdown, &tracker).await {
            tracing::warn!(%error, "summarizer consumer stopped; restarting");
        }
        tokio::select! {
            () = shutdown.cancelled() => {},
            () = tokio::time::sleep(Duration::from_millis(500)) => {},
        }
    }
}

async fn consume(
    summarizer: &Arc<Summarizer>,
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), async_nats::Error> {
    let js = summarizer.jetstream();
    let prefix = summarizer.prefix();
    let settings = summarizer.settings();
    // The thread service creates the events stream; until it has, this waits and retries.
    let stream = js.get_stream(events::stream(prefix)).await?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &settings.consumer,
            consumer::pull::Config {
                durable_name: Some(settings.consumer.clone()),
                filter_subject: events::subject(prefix, events::MESSAGE_CREATED),
                ack_policy: consumer::AckPolicy::Explicit,
                // Work in progress sends progress acks every third of the lock's TTL.
                ack_wait: Duration::from_secs(settings.lock_ttl_secs),
                // Deliveries are counted here, not by the server: past `max_deliver` the event
                // goes to the dead-letter subject.
                max_deliver: -1,
                max_ack_pending: 1000,
                ..Default::default()
            },
        )
        .await?;
    // Small batches, and a free slot before the next event is taken: an event waiting in this
    // process for a slot would run down its ack wait and come back as a spurious redelivery.
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(settings.max_concurrent)
        .heartbeat(Duration::from_secs(15))
        .messages()
        .await?;
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            permit = Arc::clone(permits).acquire_owned() => permit?,
        };
        let next = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let Some(message) = next else { return Ok(()) };
        let message = message?;
        let summarizer = Arc::clone(summarizer);
        tracker.spawn(async move {
            let _permit = permit;
            handle(&summarizer, message).await;
        });
    }
}

async fn handle(summarizer: &Summarizer, message: jetstream::Message) {
    let settings = summarizer.settings();
    let Ok(event) = serde_json::from_slice::<DomainEvent>(&message.payload) else {
        tracing::warn!("undecodable message event skipped");
        ack(&message, AckKind::Term).await;
        return;
    };
    let Some(model_id) = event.model_id.clone() else {
        ack(&message, AckKind::Ack).await;
        return;
    };
    let history = History {
        user_id: event.owner_id.clone(),
        thread_id: event.thread_id.clone(),
        model_id,
    };
    let deliveries = message
        .info()
        .ok()
        .and_then(|i| u64::try_from(i.delivered).ok())
        .unwrap_or(1);
    let ctx = RequestContext::internal();
    match summarizer
        .run(&ctx, &history, Mode::Auto, Some(&message))
        .await
    {
        Ok(Outcome::UpToDate | Outcome::Written(_)) => ack(&message, AckKind::Ack).await,
        Ok(Outcome::Busy) => {
            let delay = Duration::from_millis(settings.busy_retry_ms);
            ack(&message, AckKind::Nak(Some(delay))).await;
        }
        Ok(Outcome::Interrupted) => ack(&message, AckKind::Nak(None)).await,
        Err(e) if e.code == ErrorCode::NotFound => {
            tracing::debug!(thread_id = %history.thread_id, error = %e, "history gone; event dropped");
            ack(&message, AckKind::Ack).await;
        }
        Err(e) if deliveries >= settings.max_deliver => {
            if dead_letter(summarizer, &event, &e, deliveries).await {
                ack(&message, AckKind::Term).await;
            } else {
                ack(&message, AckKind::Nak(Some(backoff(settings, deliveries)))).await;
            }
        }
        Err(e) => {
            let delay = backoff(settings, deliveries);
            tracing::info!(
                thread_id = %history.thread_id,
                model_id = %history.model_id,
                deliveries,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %e,
                "summary failed; the previous summary stays, retrying later"
            );
            ack(&message, AckKind::Nak(Some(delay))).await;
        }
    }
}

/// The redelivery delay after failed delivery number `deliveries` (1-based).
pub fn backoff(settings: &polylogue_config::SummarizerSettings, deliveries: u64) -> Duration {
    let i = usize::try_from(deliveries.saturating_sub(1)).unwrap_or(usize::MAX);
    let ms = settings
        .backoff_ms
        .get(i)
        .or(settings.backoff_ms.last())
        .copied()
        .unwrap_or(1_000);
    Duration::from_millis(ms)
}

/// Publishes the event to the dead-letter stream; `false` when that failed (the event is then
/// retried, so nothing is lost).
async fn dead_letter(
    summarizer: &Summarizer,
    event: &DomainEvent,
    error: &ApiError,
    deliveries: u64,
) -> bool {
    let reason = format!("{}: {}", error.code, error.message);
    let letter = DeadLetter {
        event: event.clone(),
        reason: reason.clone(),
        deliveries,
        at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    };
    let Ok(payload) = serde_json::to_vec(&letter) else {
        return false;
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("dead:{}", event.id).as_str());
    let subject = names::dead_letter_subject(summarizer.prefix());
    let stored = match summarizer
        .jetstream()
        .publish_with_headers(subject, headers, Bytes::from(payload))
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match stored {
        Ok(()) => {
            metrics::counter!("polylogue_summaries_dead_lettered_total").increment(1);
            tracing::warn!(
                advisory = "summary_dead_lettered",
                thread_id = %event.thread_id,
                model_id = event.model_id.as_deref().unwrap_or_default(),
                event_id = %event.id,
                deliveries,
                %reason,
                "summary work dead-lettered after its last delivery; the previous summary stays in use"
            );
            true
        }
        Err(publish_error) => {
            tracing::error!(error = %publish_error, event_id = %event.id, "dead letter not stored; the event will be retried");
            false
        }
    }
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(%error, "summarizer ack failed; the event will be redelivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_list_and_repeats_its_last_delay() {
        let settings = polylogue_config::SummarizerSettings {
            backoff_ms: vec![10, 20, 40],
            ..Default::default()
        };
        let ms = |d: u64| backoff(&settings, d).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(4), ms(99)],
            [10, 10, 20, 40, 40, 40]
        );
    }
}
