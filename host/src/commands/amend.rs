//! `amend` (not yet implemented).
