//! Fixed-window rate limits per (route, client). The spec's table is the default; operators
//! override per route name. Counters are per edge replica (documented in `docs/api.md`): with N
//! replicas behind a balancer a client can reach up to N× the limit.

use dashmap::DashMap;
use polylogue_config::RateLimitSettings;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Whose requests a route counts together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Ip,
    /// The authenticated user, or the client address for anonymous requests.
    User,
}

#[derive(Clone, Copy, Debug)]
pub struct RouteLimit {
    pub name: &'static str,
    pub limit: u32,
    pub scope: Scope,
}

/// The spec's limits, by (method, route pattern). Routes of later services are listed too so that
/// the whole table lives in one place.
const SPEC: &[(&str, &str, &str, u32, Scope)] = &[
    ("POST", "/api/login", "login", 5, Scope::Ip),
    ("POST", "/api/register", "register", 5, Scope::Ip),
    ("POST", "/api/auth/refresh", "refresh", 30, Scope::Ip),
    ("GET", "/api/health", "health", 10, Scope::Ip),
    ("GET", "/api/version", "version", 30, Scope::User),
    ("GET", "/api/profile", "profile_get", 60, Scope::User),
    ("PATCH", "/api/profile", "profile_update", 20, Scope::User),
    ("POST", "/api/profile/api-keys", "api_keys", 5, Scope::User),
    (
        "GET",
        "/api/models/{modelId}/load/stream",
        "model_load_stream",
        30,
        Scope::User,
    ),
    (
        "DELETE",
        "/api/models/{modelId}/load/{jobId}",
        "model_load_cancel",
        10,
        Scope::User,
    ),
    (
        "DELETE",
        "/api/profile/api-keys/{provider}",
        "api_keys_delete",
        20,
        Scope::User,
    ),
    ("GET", "/api/models", "models", 60, Scope::User),
    (
        "GET",
        "/api/models/{modelId}/status",
        "model_status",
        30,
        Scope::User,
    ),
    (
        "POST",
        "/api/models/{modelId}/load",
        "model_load",
        3,
        Scope::User,
    ),
    ("GET", "/api/threads", "threads_list", 100, Scope::User),
    ("POST", "/api/threads", "threads_create", 10, Scope::User),
    (
        "GET",
        "/api/threads/{threadId}",
        "thread_get",
        60,
        Scope::User,
    ),
    (
        "DELETE",
        "/api/threads/{threadId}",
        "thread_delete",
        5,
        Scope::User,
    ),
    (
        "PATCH",
        "/api/threads/{threadId}/title",
        "thread_title",
        20,
        Scope::User,
    ),
    (
        "GET",
        "/api/threads/{threadId}/models/{modelId}/messages",
        "messages_list",
        100,
        Scope::User,
    ),
    (
        "POST",
        "/api/threads/{threadId}/models/{modelId}/messages",
        "messages_send",
        20,
        Scope::User,
    ),
    (
        "GET",
        "/api/threads/{threadId}/models/{modelId}/messages/{messageId}/stream",
        "messages_stream",
        60,
        Scope::User,
    ),
    (
        "POST",
        "/api/threads/{threadId}/models/{modelId}/messages/{messageId}/cancel",
        "messages_cancel",
        30,
        Scope::User,
    ),
    (
        "POST",
        "/api/threads/{threadId}/models/{modelId}/summarize",
        "summarize",
        5,
        Scope::User,
    ),
];

/// Routes the spec leaves unlimited (logout) and unknown paths share a generous default, so that
/// every response still carries the rate-limit headers and no path is a free-for-all.
pub const DEFAULT: RouteLimit = RouteLimit {
    name: "default",
    limit: 300,
    scope: Scope::User,
};

pub struct Decision {
    pub limit: u32,
    pub remaining: u32,
    /// Unix seconds when the window resets.
    pub reset: u64,
    pub window: u64,
    pub allowed: bool,
}

pub struct RateLimiter {
    enabled: bool,
    window: u64,
    routes: HashMap<(&'static str, &'static str), RouteLimit>,
    default: RouteLimit,
    login_per_account: u32,
    counters: DashMap<(&'static str, String), (u64, u32)>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl RateLimiter {
    pub fn new(settings: &RateLimitSettings) -> Self {
        let limit_for = |name: &'static str, spec: u32| -> u32 {
            settings.overrides.get(name).copied().unwrap_or(spec)
        };
        let routes = SPEC
            .iter()
            .map(|&(method, path, name, limit, scope)| {
                (
                    (method, path),
                    RouteLimit {
                        name,
                        limit: limit_for(name, limit),
                        scope,
                    },
                )
            })
            .collect();
        Self {
            enabled: settings.enabled,
            window: settings.window_secs,
            routes,
            default: RouteLimit {
                limit: limit_for(DEFAULT.name, DEFAULT.limit),
                ..DEFAULT
            },
            login_per_account: settings.login_per_account,
            counters: DashMap::new(),
        }
    }

    pub fn route(&self, method: &str, pattern: Option<&str>) -> RouteLimit {
        pattern
            .and_then(|p| {
                self.routes
                    .iter()
                    .find(|((m, path), _)| *m == method && *path == p)
                    .map(|(_, r)| *r)
            })
            .unwrap_or(self.default)
    }

    /// Counts one request of `key` against `route` and says whether it may proceed.
    pub fn check(&self, route: &RouteLimit, key: &str) -> Option<Decision> {
        if !self.enabled || route.limit == 0 {
            return None;
        }
        Some(self.hit(route.name, key, route.limit, true))
    }

    fn hit(&self, bucket: &'static str, key: &str, limit: u32, count: bool) -> Decision {
        let now = now_secs();
        let start = now - now % self.window;
        let mut entry = self
            .counters
            .entry((bucket, key.to_owned()))
            .or_insert((start, 0));
        if entry.0 != start {
            *entry = (start, 0);
        }
        let allowed = entry.1 < limit;
        if allowed && count {
            entry.1 += 1;
        }
        Decision {
            limit,
            remaining: limit.saturating_sub(entry.1),
            reset: start + self.window,
            window: self.window,
            allowed,
        }
    }

    /// Whether `account` may try to log in now (failed attempts so far are under the limit).
    pub fn account_allows_login(&self, account: &str) -> Option<Decision> {
        if !self.enabled || self.login_per_account == 0 {
            return None;
        }
        let d = self.hit("login_account", account, self.login_per_account, false);
        (!d.allowed).then_some(d)
    }

    pub fn record_failed_login(&self, account: &str) {
        if self.enabled && self.login_per_account > 0 {
            self.hit("login_account", account, self.login_per_account, true);
        }
    }

    /// Drops counters of past windows; run once per window.
    pub fn sweep(&self) {
        let now = now_secs();
        let start = now - now % self.window;
        self.counters
            .retain(|_, (window_start, _)| *window_start == start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_allows_its_limit_then_refuses_and_keys_are_independent() {
        let limiter = RateLimiter::new(&RateLimitSettings::default());
        let login = limiter.route("POST", Some("/api/login"));
        assert_eq!(
            (login.name, login.limit, login.scope),
            ("login", 5, Scope::Ip)
        );
        for i in 0..5 {
            let d = limiter.check(&login, "1.2.3.4").unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, 4 - i);
        }
        assert!(!limiter.check(&login, "1.2.3.4").unwrap().allowed);
        assert!(limiter.check(&login, "5.6.7.8").unwrap().allowed);
        // Another route has its own counter.
        let health = limiter.route("GET", Some("/api/health"));
        assert!(limiter.check(&health, "1.2.3.4").unwrap().allowed);
    }

    #[test]
    fn overrides_replace_the_spec_limit_and_unknown_routes_get_the_default() {
        let mut settings = RateLimitSettings::default();
        settings.overrides.insert("login".into(), 50);
        let limiter = RateLimiter::new(&settings);
        assert_eq!(limiter.route("POST", Some("/api/login")).limit, 50);
        assert_eq!(limiter.route("GET", Some("/nope")).name, "default");
        assert_eq!(limiter.route("GET", None).limit, DEFAULT.limit);
    }
}
