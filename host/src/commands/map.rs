//! `map` (not yet implemented).
