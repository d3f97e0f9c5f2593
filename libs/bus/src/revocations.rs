//! The revoked-session bucket: the auth service writes a session id when it is logged out or its
//! refresh token is reused; every edge replica watches the bucket and refuses access tokens of
//! those sessions. Entries only need to outlive the access tokens they revoke.

use crate::Bus;
use async_nats::jetstream::kv;
use std::time::Duration;

pub fn bucket_name(prefix: &str) -> String {
    format!("{prefix}-revoked-sessions")
}

/// Opens the bucket, creating it (idempotently, with the same settings from any service) if needed.
pub async fn open(bus: &Bus, access_ttl: Duration) -> Result<kv::Store, async_nats::Error> {
    let js = async_nats::jetstream::new(bus.client().clone());
    let store = js
        .create_or_update_key_value(kv::Config {
            bucket: bucket_name(bus.prefix()),
            description: "session ids whose access tokens are refused".into(),
            history: 1,
            // A revocation must outlive every token it revokes, with slack for clock skew.
            max_age: access_ttl + Duration::from_secs(120),
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    Ok(store)
}
