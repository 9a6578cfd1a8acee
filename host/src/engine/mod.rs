//! Generic, format-blind algorithms.
