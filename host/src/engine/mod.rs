//! Generic, format-blind algorithms over open images, parallel with rayon:
//! the extent walk (map, compare, measure), the copy engine (convert, dd),
//! progress reporting and rate limiting.

pub mod buffer;
pub mod chain;
pub mod compare;
pub mod copy;
pub mod fill;
pub mod progress;
pub mod ratelimit;
pub mod sparse;
pub mod status;
pub mod turns;
pub mod workers;
