//! `dd` (not yet implemented).
