//! `convert` (not yet implemented).
