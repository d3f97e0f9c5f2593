//! A bounded, expiring cache of opened provider keys, so the inference path does not call the
//! KMS for every request.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;
use secrecy::SecretString;

/// Opened keys by (user, provider), least recently used evicted first, each kept at most `ttl`.
/// Evicted and expired keys are zeroized when dropped.
pub struct SecretCache {
    ttl: Duration,
    entries: Option<Mutex<LruCache<(String, String), Entry>>>,
}

struct Entry {
    key_version: u64,
    secret: SecretString,
    expires_at: Instant,
}

impl fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretCache")
            .field("ttl", &self.ttl)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl SecretCache {
    /// A cache of at most `capacity` keys, each kept for `ttl`. Capacity 0 disables it.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            ttl,
            entries: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
        }
    }

    fn lock(&self) -> Option<MutexGuard<'_, LruCache<(String, String), Entry>>> {
        self.entries
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The cached key version and key, if present and not expired (an expired entry is removed).
    pub fn get(&self, user_id: &str, provider: &str) -> Option<(u64, SecretString)> {
        let mut entries = self.lock()?;
        let key = (user_id.to_owned(), provider.to_owned());
        let expired = entries.peek(&key)?.expires_at <= Instant::now();
        if expired {
            entries.pop(&key);
            return None;
        }
        entries.get(&key).map(|e| (e.key_version, e.secret.clone()))
    }

    /// Caches an opened key, replacing any entry for the same user and provider.
    pub fn insert(&self, user_id: &str, provider: &str, key_version: u64, secret: SecretString) {
        let Some(mut entries) = self.lock() else {
            return;
        };
        let Some(expires_at) = Instant::now().checked_add(self.ttl) else {
            return;
        };
        entries.put(
            (user_id.to_owned(), provider.to_owned()),
            Entry {
                key_version,
                secret,
                expires_at,
            },
        );
    }

    /// Forgets the key of one user for one provider.
    pub fn invalidate(&self, user_id: &str, provider: &str) {
        if let Some(mut entries) = self.lock() {
            entries.pop(&(user_id.to_owned(), provider.to_owned()));
        }
    }

    /// Forgets all keys of a user.
    pub fn invalidate_user(&self, user_id: &str) {
        if let Some(mut entries) = self.lock() {
            let keys: Vec<(String, String)> = entries
                .iter()
                .filter(|((user, _), _)| user == user_id)
                .map(|(k, _)| k.clone())
                .collect();
            for key in keys {
                entries.pop(&key);
            }
        }
    }

    /// Number of entries (expired ones included until they are looked up or evicted).
    pub fn len(&self) -> usize {
        self.lock().map_or(0, |entries| entries.len())
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn s(v: &str) -> SecretString {
        SecretString::from(v)
    }

    #[test]
    fn get_returns_what_was_inserted() {
        let cache = SecretCache::new(4, Duration::from_secs(60));
        assert!(cache.get("u1", "openai").is_none());
        cache.insert("u1", "openai", 2, s("sk-1"));
        let (version, secret) = cache.get("u1", "openai").unwrap();
        assert_eq!(version, 2);
        assert_eq!(secret.expose_secret(), "sk-1");
        assert!(cache.get("u1", "claude").is_none());
        assert!(cache.get("u2", "openai").is_none());
        cache.insert("u1", "openai", 3, s("sk-2"));
        assert_eq!(cache.get("u1", "openai").unwrap().0, 3);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn expired_entries_are_removed_and_miss() {
        let cache = SecretCache::new(4, Duration::from_millis(50));
        cache.insert("u1", "openai", 1, s("sk"));
        assert!(cache.get("u1", "openai").is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(cache.len(), 1);
        assert!(cache.get("u1", "openai").is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let cache = SecretCache::new(2, Duration::from_secs(60));
        cache.insert("u1", "openai", 1, s("a"));
        cache.insert("u2", "openai", 1, s("b"));
        assert!(cache.get("u1", "openai").is_some()); // u2 is now least recent
        cache.insert("u3", "openai", 1, s("c"));
        assert_eq!(cache.len(), 2);
        assert!(cache.get("u2", "openai").is_none());
        assert!(cache.get("u1", "openai").is_some());
        assert!(cache.get("u3", "openai").is_some());
    }

    #[test]
    fn invalidation() {
        let cache = SecretCache::new(8, Duration::from_secs(60));
        cache.insert("u1", "openai", 1, s("a"));
        cache.insert("u1", "claude", 1, s("b"));
        cache.insert("u2", "openai", 1, s("c"));
        cache.invalidate("u1", "openai");
        assert!(cache.get("u1", "openai").is_none());
        assert!(cache.get("u1", "claude").is_some());
        cache.insert("u1", "google", 1, s("d"));
        cache.invalidate_user("u1");
        assert!(cache.get("u1", "claude").is_none());
        assert!(cache.get("u1", "google").is_none());
        assert!(cache.get("u2", "openai").is_some());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn zero_capacity_disables() {
        let cache = SecretCache::new(0, Duration::from_secs(60));
        cache.insert("u1", "openai", 1, s("a"));
        assert!(cache.get("u1", "openai").is_none());
        assert_eq!(cache.len(), 0);
        assert!(cache.is_empty());
    }

    #[test]
    fn debug_shows_no_secret() {
        let cache = SecretCache::new(2, Duration::from_secs(60));
        cache.insert("u1", "openai", 1, s("sk-very-secret"));
        assert!(!format!("{cache:?}").contains("sk-very-secret"));
    }
}
