//! Local models: the status every edge replica reads (`<prefix>-model-status` KV, kept current by
//! the ollama-loader), durable load jobs (`<prefix>-load-jobs` KV + the `<prefix>-load-queue`
//! work queue) and the loader's NATS messages.

use serde::{Deserialize, Serialize};

/// `status` values of the spec.
pub mod status {
    pub const NOT_LOADED: &str = "not_loaded";
    pub const LOADING: &str = "loading";
    pub const LOADED: &str = "loaded";
    pub const ERROR: &str = "error";
    pub const UNAVAILABLE: &str = "unavailable";
}

/// Job states.
pub mod job {
    pub const QUEUED: &str = "queued";
    pub const RUNNING: &str = "running";
    pub const COMPLETE: &str = "complete";
    pub const ERROR: &str = "error";
    pub const CANCELLED: &str = "cancelled";

    /// Whether a job in `state` has ended.
    pub fn is_terminal(state: &str) -> bool {
        matches!(state, COMPLETE | ERROR | CANCELLED)
    }
}

/// One model's status: the value under [`status_key`] in `<prefix>-model-status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatusRecord {
    pub model_id: String,
    /// One of [`status`].
    pub status: String,
    /// 0–100 while loading (never decreasing within a job); 100 when loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_progress: Option<f64>,
    /// Memory the loaded model takes, human-readable (`2.1GB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_usage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// When the model was last seen loaded or finished loading (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_loaded: Option<String>,
    /// Seconds a load is expected to take from now (not loaded or loading), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_load_time: Option<u64>,
    /// Why the model is `error` or `unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The running load job, while `loading`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The runtime host serving the model (local models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When the loader wrote this (RFC 3339); old records mean no loader is watching.
    pub updated_at: String,
}

/// A load job: the value under [`job_key`] in `<prefix>-load-jobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadJob {
    pub job_id: String,
    pub model_id: String,
    /// One of [`job`].
    pub status: String,
    /// What the job is doing: `queued`, Ollama's pull statuses (`pulling manifest`,
    /// `downloading`, `verifying sha256 digest`, `writing manifest`), `loading`, `ready`, ….
    pub phase: String,
    /// Overall 0–100, never decreasing.
    pub progress: f64,
    pub completed_bytes: u64,
    pub total_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Deliveries of the job so far (a loader that died mid-job is one).
    pub attempts: u32,
    /// Set by a cancel; the runner stops at its next step.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Seconds the whole load was expected to take when it was queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_time: Option<u64>,
    pub created_at: String,
    pub updated_at: String,
}

/// NATS `ollama-loader.load`: start, or join, the load of a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadRequest {
    pub model_id: String,
    /// Who asked (audit and logs): the user of `POST .../load`, or whose chat needed the model
    /// when the router loads it on demand; `None` when nobody in particular did.
    #[serde(default)]
    pub user_id: Option<String>,
}

/// Reply of `ollama-loader.load`; the edge answers it as 202 `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReply {
    pub model_id: String,
    pub job_id: String,
    /// The job's state (`queued`, `running`, or already `complete`).
    pub status: String,
    /// Seconds the load is expected to take from now.
    pub estimated_time: Option<u64>,
    /// Whether this request joined a job that was already running.
    pub joined: bool,
}

/// NATS `ollama-loader.cancel`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelLoadRequest {
    pub job_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
}

/// The job as it stands after the cancel (`cancelled`, or already ended).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelLoadReply {
    pub job: LoadJob,
}

/// KV key of a model's status (catalog ids are already valid keys; anything else is hex-encoded).
pub fn status_key(model_id: &str) -> String {
    kv_safe(model_id)
}

/// KV key of a job.
pub fn job_key(job_id: &str) -> String {
    format!("job.{}", kv_safe(job_id))
}

/// KV key naming a model's active job (created atomically, so concurrent loads join one job).
pub fn active_key(model_id: &str) -> String {
    format!("active.{}", kv_safe(model_id))
}

fn kv_safe(s: &str) -> String {
    let ok = !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        s.to_owned()
    } else {
        let mut out = String::from("x");
        for b in s.bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// Bytes as the spec shows memory: `2.1GB`, `512MB`.
pub fn human_bytes(bytes: u64) -> String {
    const GB: f64 = 1_000_000_000.0;
    const MB: f64 = 1_000_000.0;
    let b = bytes as f64;
    if b >= GB {
        format!("{:.1}GB", b / GB)
    } else {
        format!("{:.0}MB", (b / MB).max(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kv_safe() {
        assert_eq!(status_key("gemma-2b-local"), "gemma-2b-local");
        assert_eq!(job_key("load_abc"), "job.load_abc");
        assert_eq!(active_key("a.b"), "active.x612e62");
        assert_eq!(human_bytes(2_100_000_000), "2.1GB");
        assert_eq!(human_bytes(512_000_000), "512MB");
        assert!(job::is_terminal("cancelled") && !job::is_terminal("running"));
    }
}
