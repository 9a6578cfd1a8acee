//! Turns: one step of numbered work items run strictly in item order while
//! the rest of each item runs in parallel. Writers use it to reserve target
//! space in guest order (`BlockImage::reserve`), so a parallel copy is laid
//! out as a sequential one.
//!
//! Items must be handed out in increasing order (an atomic counter), and
//! every item handed out must take its turn exactly once, even when it
//! failed: item k waits only for items below k, which are all being worked
//! on by other threads, so no one waits forever.

use crate::sync::lock;
use std::sync::{Condvar, Mutex, MutexGuard};

/// The next item whose turn it is.
pub struct Turns {
    next: Mutex<usize>,
    passed: Condvar,
}

/// Advances the turn when dropped, so a step that fails (or panics) still
/// lets the next item go.
struct Pass<'a> {
    turns: &'a Turns,
    next: MutexGuard<'a, usize>,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        *self.next += 1;
        self.turns.passed.notify_all();
    }
}

impl Turns {
    /// Turns starting at item 0.
    pub fn new() -> Turns {
        Turns {
            next: Mutex::new(0),
            passed: Condvar::new(),
        }
    }

    /// Waits for item `index`'s turn, runs `step`, then passes the turn to
    /// `index + 1`.
    pub fn take<R>(&self, index: usize, step: impl FnOnce() -> R) -> R {
        let mut next = lock(&self.next);
        while *next != index {
            next = self.passed.wait(next).unwrap_or_else(|e| e.into_inner());
        }
        let _pass = Pass { turns: self, next };
        step()
    }
}

#[cfg(test)]
mod tests {
    use super::Turns;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn steps_run_in_item_order_whatever_order_threads_arrive_in() {
        let turns = Turns::new();
        let next = AtomicUsize::new(0);
        let order = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (turns, next, order) = (&turns, &next, &order);
                scope.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= 200 {
                        break;
                    }
                    // Later items sometimes arrive first.
                    if (i + t) % 3 == 0 {
                        std::thread::yield_now();
                    }
                    turns.take(i, || order.lock().unwrap().push(i));
                });
            }
        });
        let order = order.into_inner().unwrap();
        assert_eq!(order, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_step_still_passes_the_turn() {
        let turns = Turns::new();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            turns.take(0, || panic!("step failed"))
        }));
        assert!(caught.is_err());
        assert_eq!(turns.take(1, || 41) + 1, 42);
    }
}
