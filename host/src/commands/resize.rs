//! `resize` (not yet implemented).
