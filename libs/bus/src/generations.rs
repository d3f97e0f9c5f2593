//! Leases: who runs which generation, and who is alive. KV bucket `<prefix>-generations` holds
//! `gen.<messageId>` (the generation and the id of the router running it) and
//! `router.<routerId>` (that router's heartbeat, unix ms, refreshed every `heartbeat_ms`).
//!
//! Every router sweeps: a `gen.*` entry whose router's heartbeat is older than `lease_timeout_ms`
//! (or gone) belongs to a dead router. The sweeper claims it with a compare-and-set on the entry's
//! revision (so one sweeper wins), marks the message `interrupted` in the thread service (the
//! content stays what the dead router last checkpointed), ends its event stream with an `error`
//! event and `close`, and deletes the entry.

use crate::unix_ms;
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationLease {
    pub router_id: String,
    pub user_id: String,
    pub thread_id: String,
    pub model_id: String,
    pub started_at: u64,
    /// Set by the sweeper that claimed an orphan.
    #[serde(default)]
    pub claimed_by: Option<String>,
}

#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
    pub router_id: String,
}

pub fn gen_key(message_id: &str) -> String {
    format!("gen.{message_id}")
}

pub fn router_key(router_id: &str) -> String {
    format!("router.{router_id}")
}

pub async fn open_bucket(
    js: &jetstream::Context,
    prefix: &str,
) -> Result<kv::Store, async_nats::Error> {
    let bucket = polylogue_contracts::subjects::inference::generations_bucket(prefix);
    match js.get_key_value(&bucket).await {
        Ok(kv) => Ok(kv),
        Err(_) => Ok(js
            .create_or_update_key_value(kv::Config {
                bucket,
                history: 1,
                storage: jetstream::stream::StorageType::File,
                // Entries are deleted when generations end; the age bound only clears leftovers.
                max_age: Duration::from_secs(24 * 3600),
                ..Default::default()
            })
            .await?),
    }
}

impl Leases {
    pub fn new(kv: kv::Store, router_id: String) -> Self {
        Self { kv, router_id }
    }

    pub fn store(&self) -> &kv::Store {
        &self.kv
    }

    pub async fn heartbeat(&self) -> Result<(), async_nats::Error> {
        self.kv
            .put(router_key(&self.router_id), unix_ms().to_string().into())
            .await?;
        Ok(())
    }

    pub async fn retire(&self) {
        let _ = self.kv.delete(router_key(&self.router_id)).await;
    }

    pub async fn acquire(
        &self,
        message_id: &str,
        lease: &GenerationLease,
    ) -> Result<(), async_nats::Error> {
        let value = serde_json::to_vec(lease)?;
        self.kv.put(gen_key(message_id), value.into()).await?;
        Ok(())
    }

    pub async fn release(&self, message_id: &str) {
        if let Err(error) = self.kv.delete(gen_key(message_id)).await {
            tracing::warn!(%error, message_id, "lease not released");
        }
    }

    /// Generations whose router is dead, claimed by this router (compare-and-set).
    pub async fn claim_orphans(&self, lease_timeout: Duration) -> Vec<(String, GenerationLease)> {
        let mut orphans = Vec::new();
        let Ok(mut keys) = self.kv.keys().await else {
            return orphans;
        };
        let mut gens = Vec::new();
        while let Some(Ok(key)) = keys.next().await {
            if let Some(id) = key.strip_prefix("gen.") {
                gens.push(id.to_owned());
            }
        }
        let now = unix_ms();
        let timeout = u64::try_from(lease_timeout.as_millis()).unwrap_or(u64::MAX);
        for id in gens {
            let Ok(Some(entry)) = self.kv.entry(gen_key(&id)).await else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let Ok(mut lease) = serde_json::from_slice::<GenerationLease>(&entry.value) else {
                continue;
            };
            if lease.router_id == self.router_id {
                continue;
            }
            if let Some(claimer) = &lease.claimed_by
                && claimer != &self.router_id
                && self.alive(claimer, now, timeout).await
            {
                continue;
            }
            if self.alive(&lease.router_id, now, timeout).await {
                continue;
            }
            lease.claimed_by = Some(self.router_id.clone());
            let Ok(value) = serde_json::to_vec(&lease) else {
                continue;
            };
            if self
                .kv
                .update(gen_key(&id), value.into(), entry.revision)
                .await
                .is_ok()
            {
                orphans.push((id, lease));
            }
        }
        orphans
    }

    async fn alive(&self, router_id: &str, now: u64, timeout: u64) -> bool {
        router_alive(&self.kv, router_id, now, timeout).await
    }
}

/// Whether `router_id`'s heartbeat is at most `timeout` ms old at `now`.
async fn router_alive(kv: &kv::Store, router_id: &str, now: u64, timeout: u64) -> bool {
    match kv.get(router_key(router_id)).await {
        Ok(Some(v)) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|at| now.saturating_sub(at) <= timeout),
        _ => false,
    }
}

/// Whether a generation is still being run by a live router, as an edge sees it: `Some(true)`
/// alive, `Some(false)` its router is dead, `None` no lease (ended, or never started).
pub async fn generation_alive(
    kv: &kv::Store,
    message_id: &str,
    lease_timeout: Duration,
) -> Option<bool> {
    let entry = kv.get(gen_key(message_id)).await.ok()??;
    let lease: GenerationLease = serde_json::from_slice(&entry).ok()?;
    let timeout = u64::try_from(lease_timeout.as_millis()).unwrap_or(u64::MAX);
    let now = unix_ms();
    let router = lease.claimed_by.as_deref().unwrap_or(&lease.router_id);
    let alive = router_alive(kv, router, now, timeout).await;
    Some(alive)
}
