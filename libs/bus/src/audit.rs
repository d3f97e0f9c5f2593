//! The audit stream: security-relevant events (a stored provider key used, or failing to
//! decrypt) kept on JetStream for `keys.audit_retention_secs`. The auth service reads key-use
//! events to keep `lastUsed`; operators read the stream for audits.

use async_nats::jetstream::{self, stream};
use polylogue_contracts::subjects::audit;
use std::time::Duration;

/// Opens the stream, creating or updating it with the same settings from any service.
pub async fn open_stream(
    js: &jetstream::Context,
    prefix: &str,
    retention: Duration,
) -> Result<(), async_nats::Error> {
    js.create_or_update_stream(stream::Config {
        name: audit::stream(prefix),
        description: Some("audit events: provider keys used or failing to decrypt".into()),
        subjects: vec![format!("{prefix}.audit.>")],
        max_age: retention,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// Publishes `event` on `subject` without making the caller wait for the stream's ack; a lost
/// ack is logged (the event is audit, not data the caller depends on).
pub fn publish_detached<T: serde::Serialize>(js: &jetstream::Context, subject: String, event: &T) {
    let payload = match serde_json::to_vec(event) {
        Ok(p) => p,
        Err(error) => {
            tracing::error!(%error, "audit event not encoded");
            return;
        }
    };
    let js = js.clone();
    tokio::spawn(async move {
        let acked = match js.publish(subject.clone(), payload.into()).await {
            Ok(ack) => tokio::time::timeout(Duration::from_secs(5), ack)
                .await
                .map_err(|_| "no ack within 5 s".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string())),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = acked {
            metrics::counter!("polylogue_audit_publish_failures_total").increment(1);
            tracing::warn!(%error, %subject, "audit event not stored");
        }
    });
}
