//! `bench` (not yet implemented).
