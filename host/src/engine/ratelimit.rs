//! `-r RATE`: a byte-rate limit shared by every worker thread.

use crate::sync::lock;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits throughput to `rate` bytes per second (0: unlimited).
pub struct RateLimit {
    rate: u64,
    state: Mutex<(Instant, u64)>,
}

impl RateLimit {
    /// A limiter for `rate` bytes per second.
    pub fn new(rate: u64) -> RateLimit {
        RateLimit {
            rate,
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Accounts `bytes` and sleeps long enough to keep the average at the rate.
    pub fn take(&self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let wait = {
            let mut state = lock(&self.state);
            state.1 += bytes;
            let due = Duration::from_secs_f64(state.1 as f64 / self.rate as f64);
            due.saturating_sub(state.0.elapsed())
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}
