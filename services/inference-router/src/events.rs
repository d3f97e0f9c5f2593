//! The tokens stream: every generation's events on `<prefix>.tokens.<messageId>`, kept for
//! `inference.stream_retention_secs` so any edge replica can resume or replay them.
//!
//! Events are published in order on one connection and their acks are awaited in a pipeline (up
//! to `PIPELINE` outstanding), so a token costs no round trip; terminal events wait for every ack.
//! Terminal events carry `Nats-Msg-Id: <messageId>-end` / `-close`, so the router and a sweeper
//! that both try to end a generation store one ending.

use async_nats::jetstream::{self, context::PublishAckFuture};
use polylogue_contracts::subjects::inference as subjects;
use serde::Serialize;
use std::collections::VecDeque;
use std::time::Duration;

const PIPELINE: usize = 64;

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
    pending: VecDeque<PublishAckFuture>,
    lost: u64,
}

impl EventWriter {
    pub fn new(js: jetstream::Context, prefix: &str, message_id: &str) -> Self {
        Self {
            js,
            subject: subjects::tokens_subject(prefix, message_id),
            message_id: message_id.to_owned(),
            pending: VecDeque::new(),
            lost: 0,
        }
    }

    /// Queues an event; waits only when `PIPELINE` acks are outstanding.
    pub async fn send<T: Serialize>(&mut self, event: &str, data: &T) {
        self.send_with_id(event, data, None).await;
    }

    /// A terminal event (`message_complete` or `error`) followed by `close`, both de-duplicated
    /// by message id, and every outstanding ack awaited.
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
        if self.pending.len() >= PIPELINE {
            self.await_oldest().await;
        }
        match self
            .js
            .publish_with_headers(self.subject.clone(), headers, payload.into())
            .await
        {
            Ok(ack) => self.pending.push_back(ack),
            Err(error) => {
                self.lost += 1;
                metrics::counter!("polylogue_stream_events_lost_total").increment(1);
                tracing::warn!(%error, message_id = %self.message_id, event, "stream event not published");
            }
        }
    }

    async fn await_oldest(&mut self) {
        if let Some(ack) = self.pending.pop_front()
            && let Err(error) = ack.await
        {
            self.lost += 1;
            metrics::counter!("polylogue_stream_events_lost_total").increment(1);
            tracing::warn!(%error, message_id = %self.message_id, "stream event not acknowledged");
        }
    }

    pub async fn flush(&mut self) {
        while !self.pending.is_empty() {
            self.await_oldest().await;
        }
    }

    /// Events that could not be stored on the stream.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}
