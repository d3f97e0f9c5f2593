//! ScyllaDB adapter of the thread port (being written).
