//! Shared state of the summarizer replicas, in JetStream KV:
//!
//! - `<prefix>-summarizer-locks`: one key per (thread, model) history while a replica writes its
//!   summary. Taken with `create` (fails when the key exists), refreshed by compare-and-set every
//!   third of the bucket's `max_age`, deleted when done; a crashed holder's key expires with the
//!   bucket's `max_age` (`summarizer.lock_ttl_secs`), so a history is never locked for longer.
//! - `<prefix>-summarizer-state`: internal per-history state, today the histories whose summary is
//!   stale (the last attempt failed; the previous summary is still the one in use).
//!
//! Keys are `<threadId>.<model>`, the model id escaped to KV's key alphabet.

use async_nats::jetstream::{self, kv};
use polylogue_contracts::subjects::summarizer as names;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::Duration;

/// The KV key of a (thread, model) history. Model ids may hold `:` and `.`, which KV keys
/// cannot (or would split into tokens): everything outside `[A-Za-z0-9_-]` becomes `=XX`.
pub fn history_key(thread_id: &str, model_id: &str) -> String {
    let mut key = String::with_capacity(thread_id.len() + model_id.len() + 1);
    for part in [thread_id, ".", model_id] {
        if part == "." {
            key.push('.');
            continue;
        }
        for b in part.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                key.push(char::from(b));
            } else {
                let _ = write!(key, "={b:02X}");
            }
        }
    }
    key
}

async fn bucket(
    js: &jetstream::Context,
    name: String,
    max_age: Duration,
) -> Result<kv::Store, async_nats::Error> {
    Ok(js
        .create_or_update_key_value(kv::Config {
            bucket: name,
            history: 1,
            storage: jetstream::stream::StorageType::File,
            max_age,
            ..Default::default()
        })
        .await?)
}

/// Per-history locks.
#[derive(Clone)]
pub struct Locks {
    kv: kv::Store,
    owner: String,
    ttl: Duration,
}

/// A held lock; refresh it within the TTL, release it when done.
pub struct Lock {
    kv: kv::Store,
    key: String,
    owner: String,
    revision: u64,
}

impl Locks {
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        ttl: Duration,
        owner: String,
    ) -> Result<Self, async_nats::Error> {
        Ok(Self {
            kv: bucket(js, names::locks_bucket(prefix), ttl).await?,
            owner,
            ttl,
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lock of `key`: `Ok(None)` when another holder has it.
    pub async fn try_acquire(&self, key: &str) -> Result<Option<Lock>, async_nats::Error> {
        match self.kv.create(key, self.owner.clone().into()).await {
            Ok(revision) => Ok(Some(Lock {
                kv: self.kv.clone(),
                key: key.to_owned(),
                owner: self.owner.clone(),
                revision,
            })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl Lock {
    /// Extends the lock by its TTL; `false` when it was lost (it expired and someone else took
    /// it, or the bucket is unreachable) — the holder must stop.
    pub async fn refresh(&mut self) -> bool {
        match self
            .kv
            .update(&self.key, self.owner.clone().into(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                true
            }
            Err(error) => {
                tracing::warn!(%error, key = %self.key, "summary lock lost");
                false
            }
        }
    }

    /// Frees the lock if it is still ours (a lock that expired and was taken is left alone).
    pub async fn release(self) {
        if let Err(error) = self
            .kv
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
        {
            tracing::debug!(%error, key = %self.key, "summary lock not released; it expires");
        }
    }
}

/// Why a history's summary is behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StaleEntry {
    pub thread_id: String,
    pub model_id: String,
    /// RFC 3339: the first failure since the last summary was written.
    pub since: String,
    pub failures: u64,
    /// The last error (code and message; never a key).
    pub last_error: String,
    /// The summary version still in use, if any.
    pub summary_version: Option<u64>,
}

/// Internal per-history state (`<prefix>-summarizer-state`).
#[derive(Clone)]
pub struct StaleState {
    kv: kv::Store,
}

impl StaleState {
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        retention: Duration,
    ) -> Result<Self, async_nats::Error> {
        Ok(Self {
            kv: bucket(js, names::state_bucket(prefix), retention).await?,
        })
    }

    /// The stale marker of a history, if its last attempt failed.
    pub async fn get(&self, thread_id: &str, model_id: &str) -> Option<StaleEntry> {
        let value = self.kv.get(history_key(thread_id, model_id)).await.ok()??;
        serde_json::from_slice(&value).ok()
    }

    /// Records a failed attempt: the previous summary stays in use, marked stale.
    pub async fn mark(
        &self,
        thread_id: &str,
        model_id: &str,
        error: &str,
        summary_version: Option<u64>,
        now: String,
    ) {
        let previous = self.get(thread_id, model_id).await;
        let entry = StaleEntry {
            thread_id: thread_id.to_owned(),
            model_id: model_id.to_owned(),
            since: previous.as_ref().map_or(now, |p| p.since.clone()),
            failures: previous.as_ref().map_or(0, |p| p.failures) + 1,
            last_error: error.to_owned(),
            summary_version,
        };
        let Ok(value) = serde_json::to_vec(&entry) else {
            return;
        };
        if let Err(error) = self
            .kv
            .put(history_key(thread_id, model_id), value.into())
            .await
        {
            tracing::warn!(%error, thread_id, model_id, "stale marker not stored");
        }
    }

    /// A summary was written: the history is current again.
    pub async fn clear(&self, thread_id: &str, model_id: &str) {
        let key = history_key(thread_id, model_id);
        if matches!(self.kv.get(&key).await, Ok(Some(_)))
            && let Err(error) = self.kv.delete(&key).await
        {
            tracing::warn!(%error, thread_id, model_id, "stale marker not cleared");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_what_kv_cannot_hold() {
        assert_eq!(history_key("t-1", "claude-opus"), "t-1.claude-opus");
        assert_eq!(history_key("t", "llama3.2:3b"), "t.llama3=2E2=3A3b");
        assert_eq!(history_key("t", "a/b c"), "t.a=2Fb=20c");
        assert_ne!(history_key("t", "a.b"), history_key("t", "a_b"));
    }
}
