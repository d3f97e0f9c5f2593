//! NATS subject names. Every subject is `<prefix>.<service>.<verb>`; the prefix is configuration
//! (`nats.subject_prefix`, default `polylogue`) so that several installations can share one NATS.

/// Service names as registered with the NATS service API (`$SRV.PING.<name>`).
pub mod service {
    pub const AUTH: &str = "auth";
    pub const EDGE: &str = "edge-api";
    pub const THREAD: &str = "thread";
    pub const INFERENCE: &str = "inference";
    pub const SUMMARIZER: &str = "summarizer";
    pub const LOADER: &str = "ollama-loader";
}

/// Verbs of the ollama-loader, relative to `<prefix>.ollama-loader`, and its JetStream names.
pub mod loader {
    /// Start or join the load of a local model (`LoadRequest` → `LoadReply`).
    pub const LOAD: &str = "load";
    /// Cancel a load job (`CancelLoadRequest` → `CancelLoadReply`).
    pub const CANCEL: &str = "cancel";
    pub const HEALTH: &str = "health";

    /// KV bucket of every catalog model's status, kept current by the loader.
    pub fn status_bucket(prefix: &str) -> String {
        format!("{prefix}-model-status")
    }

    /// KV bucket of load jobs (`job.<id>`) and each model's active job (`active.<model>`).
    pub fn jobs_bucket(prefix: &str) -> String {
        format!("{prefix}-load-jobs")
    }

    /// Work-queue stream of load jobs to run (one message per job).
    pub fn queue_stream(prefix: &str) -> String {
        format!("{prefix}-load-queue")
    }

    /// Subject of the work queue.
    pub fn queue_subject(prefix: &str) -> String {
        format!("{prefix}.loader.jobs")
    }
}

/// Verbs of the inference router, relative to `<prefix>.inference`.
pub mod inference {
    /// Validate, store the user message and start a generation; replies at once.
    pub const SEND: &str = "send";
    pub const HEALTH: &str = "health";

    /// `<prefix>.inference.cancel.<messageId>`: the router running that generation listens here
    /// while it runs; no responder means nothing is running.
    pub fn cancel_subject(prefix: &str, message_id: &str) -> String {
        format!("{prefix}.inference.cancel.{message_id}")
    }

    /// `<prefix>.tokens.<messageId>`: the events of one generation, kept on the tokens stream.
    pub fn tokens_subject(prefix: &str, message_id: &str) -> String {
        format!("{prefix}.tokens.{message_id}")
    }

    /// The JetStream stream holding every generation's events for a short retention.
    pub fn tokens_stream(prefix: &str) -> String {
        format!("{prefix}-tokens")
    }

    /// KV bucket of running generations (`gen.<messageId>`) and router heartbeats
    /// (`router.<routerId>`).
    pub fn generations_bucket(prefix: &str) -> String {
        format!("{prefix}-generations")
    }

    /// Header on every event of the tokens stream: the SSE event name.
    pub const EVENT_HEADER: &str = "Polylogue-Event";
}

/// Verbs of the thread service, relative to `<prefix>.thread`.
pub mod thread {
    pub const CREATE: &str = "create";
    pub const LIST: &str = "list";
    pub const GET: &str = "get";
    pub const RENAME: &str = "rename";
    pub const DELETE: &str = "delete";
    pub const MESSAGES_LIST: &str = "messages.list";
    pub const MESSAGES_APPEND: &str = "messages.append";
    pub const MESSAGES_UPDATE: &str = "messages.update";
    pub const MESSAGES_GET: &str = "messages.get";
    pub const HISTORY: &str = "history";
    pub const SUMMARY_PUT: &str = "summary.put";
    pub const HEALTH: &str = "health";
}

/// Verbs of the summarizer, relative to `<prefix>.summarizer`, and its JetStream names.
pub mod summarizer {
    /// Summarize a (thread, model) history now (the manual endpoint).
    pub const SUMMARIZE: &str = "summarize";
    pub const HEALTH: &str = "health";

    /// `<prefix>.summarizer.dead`: message events whose summary could not be written within the
    /// configured deliveries, kept on the dead-letter stream.
    pub fn dead_letter_subject(prefix: &str) -> String {
        format!("{prefix}.summarizer.dead")
    }

    /// The stream keeping dead letters.
    pub fn dead_letter_stream(prefix: &str) -> String {
        format!("{prefix}-summarizer-dead")
    }

    /// KV bucket of per-history locks (`<threadId>.<model key>`): one writer per history.
    pub fn locks_bucket(prefix: &str) -> String {
        format!("{prefix}-summarizer-locks")
    }

    /// KV bucket of internal per-history state: histories whose summary is stale.
    pub fn state_bucket(prefix: &str) -> String {
        format!("{prefix}-summarizer-state")
    }
}

/// Domain events: `<prefix>.events.<kind>` on the `<prefix>-events` JetStream stream.
pub mod events {
    pub const THREAD_CREATED: &str = "thread.created";
    pub const THREAD_RENAMED: &str = "thread.renamed";
    pub const THREAD_DELETED: &str = "thread.deleted";
    pub const MESSAGE_CREATED: &str = "message.created";
    pub const SUMMARY_UPDATED: &str = "summary.updated";

    pub fn subject(prefix: &str, kind: &str) -> String {
        format!("{prefix}.events.{kind}")
    }

    pub fn stream(prefix: &str) -> String {
        format!("{prefix}-events")
    }
}

/// Verbs of the auth service, relative to `<prefix>.auth`.
pub mod auth {
    pub const LOGIN: &str = "login";
    pub const REGISTER: &str = "register";
    pub const REFRESH: &str = "refresh";
    pub const LOGOUT: &str = "logout";
    pub const USER_GET: &str = "user.get";
    pub const HEALTH: &str = "health";
    pub const ADMIN_USER_CREATE: &str = "admin.user.create";
    pub const PROFILE_GET: &str = "profile.get";
    pub const PROFILE_UPDATE: &str = "profile.update";
    /// A user's settings only (system prompt, default temperature), for the inference router.
    pub const PROFILE_SETTINGS: &str = "profile.settings";
    /// Store keys already sealed by the edge.
    pub const KEYS_PUT: &str = "keys.put";
    pub const KEYS_DELETE: &str = "keys.delete";
    /// A user's sealed key for one provider (the inference router and summarizer ask).
    pub const KEYS_ENVELOPE: &str = "keys.envelope";
    /// Re-wrap every stored data key under the KMS's newest version.
    pub const KEYS_REWRAP: &str = "keys.rewrap";
    /// Published (core NATS, not an endpoint) when a key is added, replaced or deleted.
    pub const KEYS_CHANGED: &str = "keys.changed";
}

/// The audit stream: security-relevant events kept on JetStream (`<prefix>-audit`).
pub mod audit {
    /// The stream holding `<prefix>.audit.>`.
    pub fn stream(prefix: &str) -> String {
        format!("{prefix}-audit")
    }

    /// A stored provider key was used for a provider call.
    pub fn key_used(prefix: &str) -> String {
        format!("{prefix}.audit.keys.used")
    }

    /// A stored provider key failed to decrypt.
    pub fn key_failed(prefix: &str) -> String {
        format!("{prefix}.audit.keys.failed")
    }
}

/// Key-value buckets.
pub mod kv {
    /// Revoked session ids, watched by every edge replica. Entries expire after the
    /// access-token lifetime, when the tokens they revoke have expired anyway.
    pub const REVOKED_SESSIONS: &str = "polylogue-revoked-sessions";
}

/// `<prefix>.<service>.<verb>`
pub fn subject(prefix: &str, service: &str, verb: &str) -> String {
    format!("{prefix}.{service}.{verb}")
}
