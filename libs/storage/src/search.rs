//! Thread search port: full-text over title and summary, always filtered by owner inside the
//! engine's own query, ordered and paged like thread listings (keyset on the sort timestamp + id).

pub mod meili;
pub mod sqlite;

use crate::StoreError;
use crate::threads::{Direction, SortField, ThreadKey};
use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

/// What the index holds of a thread.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchDoc {
    pub thread_id: Uuid,
    pub owner_id: Uuid,
    pub title: String,
    pub summary: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[async_trait]
pub trait ThreadSearch: Send + Sync + 'static {
    fn provider(&self) -> &'static str;

    /// Inserts or replaces the document of `doc.thread_id` (idempotent).
    async fn upsert(&self, doc: &SearchDoc) -> Result<(), StoreError>;

    /// Removes a thread's document (idempotent).
    async fn delete(&self, thread_id: Uuid) -> Result<(), StoreError>;

    /// Ids of the owner's threads matching `query`, after `after`, in the given order.
    async fn search(
        &self,
        owner: Uuid,
        query: &str,
        sort: SortField,
        direction: Direction,
        after: Option<ThreadKey>,
        limit: usize,
    ) -> Result<Vec<Uuid>, StoreError>;

    /// How many of the owner's threads match `query`.
    async fn count(&self, owner: Uuid, query: &str) -> Result<u64, StoreError>;
}

/// Splits a user's query into plain search terms: letters and digits only, at most 16 terms, each
/// at most 64 characters. Engines turn these into their own syntax; nothing the user types is ever
/// interpreted as query syntax.
pub fn terms(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.chars().take(64).collect::<String>().to_lowercase())
        .take(16)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_syntax_is_never_passed_through() {
        assert_eq!(
            super::terms(r#"owner:"x" OR title:* NEAR(a b) -- "drop""#),
            vec!["owner", "x", "or", "title", "near", "a", "b", "drop"]
        );
        assert!(super::terms("  ** ").is_empty());
    }
}
