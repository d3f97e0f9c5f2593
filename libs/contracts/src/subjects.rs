//! NATS subject names. Every subject is `<prefix>.<service>.<verb>`; the prefix is configuration
//! (`nats.subject_prefix`, default `polylogue`) so that several installations can share one NATS.

/// Service names as registered with the NATS service API (`$SRV.PING.<name>`).
pub mod service {
    pub const AUTH: &str = "auth";
    pub const EDGE: &str = "edge-api";
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
