//! Locks that outlive a panicking holder: a panic is caught and reported
//! where it happens, and what the lock guards stays usable.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, whatever a panicking holder left.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
