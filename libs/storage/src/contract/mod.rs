//! The contracts every adapter of a port must satisfy. `tests/contract.rs` runs them against the
//! embedded adapters always and against ScyllaDB / Meilisearch when `SCYLLA_URL` / `MEILI_URL` are
//! set; an adapter is done when it passes.
//!
//! Functions return `Err(String)` describing the broken rule instead of panicking, so the suites
//! can live in the library (under the no-panic lints) and every runner reports the same words.

pub mod auth;
pub mod search;
pub mod threads;

pub use auth::*;

fn check(cond: bool, what: &str) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what.to_owned()) }
}

fn e(err: crate::StoreError) -> String {
    format!("store error: {err}")
}
