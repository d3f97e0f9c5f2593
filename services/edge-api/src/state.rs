use crate::cookies::CookiePolicy;
use crate::ratelimit::RateLimiter;
use dashmap::DashMap;
use polylogue_bus::Bus;
use polylogue_tokens::KeyRing;
use std::time::Instant;

/// Build facts baked in by `build.rs`.
pub struct BuildInfo {
    pub version: &'static str,
    pub build_time: &'static str,
    pub commit: &'static str,
}

pub const BUILD: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    build_time: env!("POLYLOGUE_BUILD_TIME"),
    commit: env!("POLYLOGUE_GIT_COMMIT"),
};

pub struct EdgeState {
    pub bus: Bus,
    pub keys: KeyRing,
    /// Session ids logged out, with when this replica learnt it (for sweeping).
    pub revoked: DashMap<String, Instant>,
    pub limiter: RateLimiter,
    pub cookies: CookiePolicy,
    pub trust_forwarded_for: bool,
    pub environment: String,
    pub started: Instant,
    pub access_ttl: u64,
}
