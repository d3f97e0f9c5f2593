//! Storage ports and their adapters. Each port is a trait with an embedded adapter (SQLite, the
//! single-node default) and a scale-out adapter (ScyllaDB); `contract` holds the one test suite
//! every adapter must pass.

pub mod auth;
pub mod contract;
mod error;

pub use auth::{AuthStore, ConsumeOutcome, RefreshTokenRecord, SessionRecord, UserRecord};
pub use error::StoreError;
