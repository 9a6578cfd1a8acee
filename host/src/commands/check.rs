//! `check` (not yet implemented).
