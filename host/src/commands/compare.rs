//! `compare` (not yet implemented).
