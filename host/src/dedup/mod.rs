//! Dedup store (being written): see ARCHITECTURE.md.
