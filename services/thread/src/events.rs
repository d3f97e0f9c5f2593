//! Domain events on JetStream: `<prefix>.events.<kind>` in the `<prefix>-events` stream, each with
//! `Nats-Msg-Id` so a retried publish is stored once (within the stream's duplicate window).

use async_nats::jetstream;
use polylogue_contracts::subjects::events;
use polylogue_contracts::threads::DomainEvent;
use std::time::Duration;

#[derive(Clone)]
pub struct Events {
    js: jetstream::Context,
    prefix: String,
}

impl Events {
    /// Creates (or updates) the stream; every service that publishes may call it.
    pub async fn open(
        client: &async_nats::Client,
        prefix: &str,
    ) -> Result<Self, async_nats::Error> {
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(jetstream::stream::Config {
            name: events::stream(prefix),
            subjects: vec![events::subject(prefix, ">")],
            storage: jetstream::stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
        Ok(Self {
            js,
            prefix: prefix.to_owned(),
        })
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Publishes and waits for the stream's ack, retrying a few times. Failure is logged, not
    /// returned: the write it announces is already stored, and the caller's answer must not lie
    /// about that. Consumers re-read the current state, so a late duplicate is harmless.
    pub async fn publish(&self, event: &DomainEvent) {
        let subject = events::subject(&self.prefix, &event.kind);
        let Ok(payload) = serde_json::to_vec(event) else {
            return;
        };
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=5 {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.id.as_str());
            let result = match self
                .js
                .publish_with_headers(subject.clone(), headers, payload.clone().into())
                .await
            {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => {
                    metrics::counter!("polylogue_events_published_total", "kind" => event.kind.clone()).increment(1);
                    return;
                }
                Err(error) if attempt < 5 => {
                    tracing::warn!(%error, attempt, kind = %event.kind, "event publish retry");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(error) => {
                    metrics::counter!("polylogue_events_lost_total", "kind" => event.kind.clone())
                        .increment(1);
                    tracing::error!(%error, kind = %event.kind, event_id = %event.id, "event not published");
                }
            }
        }
    }
}
