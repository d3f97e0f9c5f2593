use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    /// A uniqueness rule was broken (e.g. a username that is taken).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The engine could not be reached or failed; the operation may be retried.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be read back (corruption or a schema mismatch).
    #[error("corrupt record: {0}")]
    Corrupt(String),
}
