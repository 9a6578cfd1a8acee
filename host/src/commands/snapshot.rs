//! `snapshot` (not yet implemented).
