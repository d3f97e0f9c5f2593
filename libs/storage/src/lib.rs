//! Storage ports and their adapters. Each port is a trait with an embedded adapter (SQLite, the
//! single-node default) and a scale-out adapter (ScyllaDB); `contract` holds the one test suite
//! every adapter must pass.

pub mod auth;
pub mod contract;
mod error;
mod scylla_common;
pub mod search;
mod sqlite_common;
pub mod threads;

pub use auth::{
    ApiKeyRecord, AuthStore, ConsumeOutcome, ProfilePatch, ProfileSettings, RefreshTokenRecord,
    SessionRecord, UserRecord,
};
pub use error::StoreError;

/// Now, truncated to the millisecond precision every adapter keeps (CQL `timestamp`).
pub fn now_ms() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    let ms = now.unix_timestamp_nanos() / 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).unwrap_or(now)
}
