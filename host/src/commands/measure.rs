//! `measure` (not yet implemented).
