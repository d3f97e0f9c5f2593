//! The tokens stream: every generation's events on `<prefix>.tokens.<messageId>`, kept for
//! `inference.stream_retention_secs` so any edge replica can resume or replay them.
//!
//! Events are published in order on one connection; each writer hands its acks to a task of its
//! own that awaits them as they come (at most `PIPELINE` queued), so a token costs no round trip
//! and acks never wait on a publisher. (Holding acks until a writer's own next publish deadlocked
//! the router once ~79 generations held 64 each: the JetStream context allows 5,000 unacked
//! publishes and every publisher waited for a permit only another waiting publisher could free.)
//! Terminal events wait for every ack.
//! Terminal events carry `Nats-Msg-Id: <messageId>-end` / `-close`, so the router and a sweeper
//! that both try to end a generation store one ending.

use async_nats::jetstream::{self, context::PublishAckFuture};
use polylogue_contracts::subjects::inference as subjects;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

const PIPELINE: usize = 64;

/// Readers (ordered consumers) the tokens stream allows at once.
pub const MAX_CONSUMERS: i32 = 100_000;

/// Creates or updates the tokens stream.
pub async fn ensure_stream(
    js: &jetstream::Context,
    prefix: &str,
    retention: Duration,
) -> Result<(), async_nats::Error> {
    let config = jetstream::stream::Config {
        name: subjects::tokens_stream(prefix),
        subjects: vec![subjects::tokens_subject(prefix, ">")],
        storage: jetstream::stream::StorageType::File,
        max_age: retention,
        duplicate_window: retention.min(Duration::from_secs(120)),
        allow_direct: true,
        // Every SSE reader is an ordered consumer that lingers ~30 s after it ends; nats-server
        // 2.15 caps a stream without a positive limit (-1 included) at 1,000 consumers, which
        // held the edge near 33 generations/s. A positive limit lifts it.
        max_consumers: MAX_CONSUMERS,
        ..Default::default()
    };
    match js.get_stream(&config.name).await {
        Ok(_) => {
            js.update_stream(config).await?;
        }
        Err(_) => {
            js.get_or_create_stream(config).await?;
        }
    }
    Ok(())
}

/// Publishes one generation's events in order.
pub struct EventWriter {
    js: jetstream::Context,
    subject: String,
    message_id: String,
    acks: Option<mpsc::Sender<PublishAckFuture>>,
    acker: Option<tokio::task::JoinHandle<()>>,
    lost: Arc<AtomicU64>,
}

impl EventWriter {
    pub fn new(js: jetstream::Context, prefix: &str, message_id: &str) -> Self {
        let (tx, mut rx) = mpsc::channel::<PublishAckFuture>(PIPELINE);
        let lost = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&lost);
        let id = message_id.to_owned();
        let acker = tokio::spawn(async move {
            while let Some(ack) = rx.recv().await {
                if let Err(error) = ack.await {
                    counter.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("polylogue_stream_events_lost_total").increment(1);
                    tracing::warn!(%error, message_id = %id, "stream event not acknowledged");
                }
            }
        });
        Self {
            js,
            subject: subjects::tokens_subject(prefix, message_id),
            message_id: message_id.to_owned(),
            acks: Some(tx),
            acker: Some(acker),
            lost,
        }
    }

    /// Publishes an event; waits only when `PIPELINE` acks are queued.
    pub async fn send<T: Serialize>(&mut self, event: &str, data: &T) {
        self.send_with_id(event, data, None).await;
    }

    /// A terminal event (`message_complete` or `error`) followed by `close`, both de-duplicated
    /// by message id, and every outstanding ack awaited. The writer is done afterwards.
    pub async fn finish<T: Serialize>(&mut self, event: &str, data: &T) {
        let end = format!("{}-end", self.message_id);
        let close = format!("{}-close", self.message_id);
        self.send_with_id(event, data, Some(&end)).await;
        self.send_with_id(
            polylogue_contracts::inference::event::CLOSE,
            &serde_json::json!({}),
            Some(&close),
        )
        .await;
        self.flush().await;
    }

    async fn send_with_id<T: Serialize>(&mut self, event: &str, data: &T, msg_id: Option<&str>) {
        let Ok(payload) = serde_json::to_vec(data) else {
            return;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(subjects::EVENT_HEADER, event);
        if let Some(id) = msg_id {
            headers.insert("Nats-Msg-Id", id);
        }
        match self
            .js
            .publish_with_headers(self.subject.clone(), headers, payload.into())
            .await
        {
            Ok(ack) => {
                let queued = match &self.acks {
                    Some(tx) => tx.send(ack).await.is_ok(),
                    None => false,
                };
                if !queued {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("polylogue_stream_events_lost_total").increment(1);
                tracing::warn!(%error, message_id = %self.message_id, event, "stream event not published");
            }
        }
    }

    /// Waits for every ack; later sends are counted as lost.
    pub async fn flush(&mut self) {
        self.acks.take();
        if let Some(acker) = self.acker.take() {
            let _ = acker.await;
        }
    }

    /// Events that could not be stored on the stream.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        // An aborted generation (crash test, shutdown) leaves its acks to the runtime's end.
        if let Some(acker) = self.acker.take() {
            acker.abort();
        }
    }
}
