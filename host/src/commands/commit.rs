//! `commit` (not yet implemented).
