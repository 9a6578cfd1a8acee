//! `rebase` (not yet implemented).
