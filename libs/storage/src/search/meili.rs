//! Meilisearch adapter of the thread-search port (being written).
