//! `bitmap` (not yet implemented).
