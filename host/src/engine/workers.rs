//! Worker threads for the copy engine: items handed out in increasing order
//! (what [`super::turns::Turns`] relies on), and an ordered pipeline where
//! items are prepared in parallel and consumed strictly in order.

use crate::sync::lock;
use qimg_driver_api::DriverError;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Runs `work` on items `0..count` with `threads` workers that take the
/// items in increasing order; stops handing out items after the first
/// error (items already taken finish) and returns the error of the lowest
/// item that failed, as a copy in order would meet it.
pub fn run_workers(
    threads: usize,
    count: usize,
    work: impl Fn(usize) -> Result<(), DriverError> + Sync,
) -> Result<(), DriverError> {
    run_gated(threads, &Gate::new(threads, &|| true), count, work)
}

/// Which of a pool's workers take items: the first few, and all of them
/// once `opens` says so. The others wait without holding anything, asking
/// `opens` every [`GATE_POLL`].
pub struct Gate<'a> {
    admitted: usize,
    opens: &'a (dyn Fn() -> bool + Sync),
    waiting: Mutex<()>,
    woken: Condvar,
}

/// How often workers waiting at a [`Gate`] ask whether it opened.
const GATE_POLL: Duration = Duration::from_millis(2);

impl<'a> Gate<'a> {
    /// A gate that admits the first `admitted` workers (at least one), and
    /// the others once `opens` returns true.
    pub fn new(admitted: usize, opens: &'a (dyn Fn() -> bool + Sync)) -> Gate<'a> {
        Gate {
            admitted: admitted.max(1),
            opens,
            waiting: Mutex::new(()),
            woken: Condvar::new(),
        }
    }

    /// Waits until worker `worker` is admitted (true) or `done` says that
    /// nothing is left to take (false).
    fn enter(&self, worker: usize, done: impl Fn() -> bool) -> bool {
        if worker < self.admitted {
            return true;
        }
        let mut waiting = lock(&self.waiting);
        loop {
            if done() {
                return false;
            }
            if (self.opens)() {
                return true;
            }
            waiting = self
                .woken
                .wait_timeout(waiting, GATE_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Wakes the waiting workers to ask `done` again.
    fn wake(&self) {
        let _waiting = lock(&self.waiting);
        self.woken.notify_all();
    }
}

/// Dropped when an admitted worker stops, whether its loop ended (nothing
/// left, or an error) or it panicked: nothing more is handed out, and the
/// workers waiting at the gate are woken to see that (rather than wait for
/// items no one takes).
struct Leaving<'a> {
    next: &'a AtomicUsize,
    count: usize,
    gate: &'a Gate<'a>,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.next.fetch_max(self.count, Ordering::Relaxed);
        self.gate.wake();
    }
}

/// [`run_workers`] with `threads` workers of which only those `gate`
/// admits take items.
pub fn run_gated(
    threads: usize,
    gate: &Gate,
    count: usize,
    work: impl Fn(usize) -> Result<(), DriverError> + Sync,
) -> Result<(), DriverError> {
    let next = AtomicUsize::new(0);
    // The failed item with the lowest index: every item before it was
    // taken (and finished) before the others stopped, so this is the
    // error a copy in order meets first, whichever worker failed first.
    let failed: Mutex<Option<(usize, DriverError)>> = Mutex::new(None);
    let (next, failed, work) = (&next, &failed, &work);
    std::thread::scope(|scope| {
        for worker in 0..threads.max(1).min(count) {
            scope.spawn(move || {
                if !gate.enter(worker, || next.load(Ordering::Relaxed) >= count) {
                    return;
                }
                let _leaving = Leaving { next, count, gate };
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= count {
                        break;
                    }
                    if let Err(e) = work(index) {
                        next.store(count, Ordering::Relaxed);
                        let mut first = lock(failed);
                        if first.as_ref().is_none_or(|(at, _)| index < *at) {
                            *first = Some((index, e));
                        }
                        break;
                    }
                }
            });
        }
    });
    let first = lock(failed).take();
    match first {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// The state of an ordered pipeline.
struct Pipeline<T> {
    /// Prepared items not yet consumed.
    ready: BTreeMap<usize, T>,
    /// Items consumed so far (the next one to consume).
    consumed: usize,
    /// A worker is consuming.
    consuming: bool,
    /// The first error; everyone stops.
    failed: Option<DriverError>,
}

/// Prepares items `0..count` on `threads` workers, at most `window` items
/// ahead of the consumer, and consumes them strictly in order: the worker
/// that finds the next item ready consumes it (and those after it that are
/// ready) while the others keep preparing. Returns the first error.
pub fn run_in_order<T: Send>(
    threads: usize,
    count: usize,
    window: usize,
    prepare: impl Fn(usize) -> Result<T, DriverError> + Sync,
    consume: impl Fn(usize, T) -> Result<(), DriverError> + Sync,
) -> Result<(), DriverError> {
    let window = window.max(1);
    let state = Mutex::new(Pipeline {
        ready: BTreeMap::new(),
        consumed: 0,
        consuming: false,
        failed: None,
    });
    let changed = Condvar::new();
    run_workers(threads, count, |index| {
        let mut st = lock(&state);
        while index >= st.consumed + window && st.failed.is_none() {
            st = changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        drop(st);
        let prepared = prepare(index);
        let mut st = lock(&state);
        match prepared {
            Ok(item) => st.ready.insert(index, item),
            Err(e) => return fail(st, &changed, e),
        };
        if st.consuming || st.failed.is_some() {
            return Ok(());
        }
        st.consuming = true;
        loop {
            let next = st.consumed;
            let Some(item) = st.ready.remove(&next) else {
                break;
            };
            drop(st);
            let result = consume(next, item);
            st = lock(&state);
            if let Err(e) = result {
                st.consuming = false;
                return fail(st, &changed, e);
            }
            st.consumed += 1;
            changed.notify_all();
        }
        st.consuming = false;
        Ok(())
    })
}

/// Records the pipeline's first error and wakes the waiting workers.
fn fail<T>(
    mut st: MutexGuard<'_, Pipeline<T>>,
    changed: &Condvar,
    e: DriverError,
) -> Result<(), DriverError> {
    st.failed.get_or_insert(e.clone());
    changed.notify_all();
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::{run_gated, run_in_order, run_workers, Gate};
    use qimg_driver_api::DriverError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    #[test]
    fn items_are_consumed_in_order_and_never_too_far_ahead() {
        let consumed = Mutex::new(Vec::new());
        let prepared = Mutex::new(Vec::new());
        run_in_order(
            4,
            300,
            3,
            |i| {
                // The consumer is at most a window behind.
                let behind = consumed.lock().unwrap().len();
                assert!(i < behind + 3, "item {i} prepared with {behind} consumed");
                if i % 5 == 0 {
                    std::thread::yield_now();
                }
                prepared.lock().unwrap().push(i);
                Ok(i * 2)
            },
            |i, v| {
                assert_eq!(v, i * 2);
                consumed.lock().unwrap().push(i);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(consumed.into_inner().unwrap(), (0..300).collect::<Vec<_>>());
        assert_eq!(prepared.into_inner().unwrap().len(), 300);
    }

    #[test]
    fn the_first_error_stops_the_pipeline() {
        let consumed = Mutex::new(Vec::new());
        let result = run_in_order(
            2,
            1000,
            4,
            |i| {
                if i == 50 {
                    Err(DriverError::corrupt("bad item"))
                } else {
                    Ok(i)
                }
            },
            |i, _| {
                consumed.lock().unwrap().push(i);
                Ok(())
            },
        );
        assert_eq!(result.unwrap_err().message.as_str(), "bad item");
        let consumed = consumed.into_inner().unwrap();
        assert!(consumed.len() <= 50, "consumed past the failure");
        assert_eq!(consumed, (0..consumed.len()).collect::<Vec<_>>());
    }

    #[test]
    fn the_lowest_failed_item_is_reported_whichever_failed_first() {
        let result = run_workers(2, 100, |i| match i {
            0 => {
                // Fails after item 1 has failed.
                std::thread::sleep(std::time::Duration::from_millis(50));
                Err(DriverError::corrupt("item 0"))
            }
            1 => Err(DriverError::corrupt("item 1")),
            _ => Ok(()),
        });
        assert_eq!(result.unwrap_err().message.as_str(), "item 0");
    }

    #[test]
    fn workers_take_items_in_order_and_stop_after_an_error() {
        let seen = Mutex::new(Vec::new());
        let result = run_workers(3, 100, |i| {
            seen.lock().unwrap().push(i);
            if i == 10 {
                return Err(DriverError::corrupt("stop"));
            }
            Ok(())
        });
        assert!(result.is_err());
        // Items after the failure are not all handed out.
        assert!(seen.into_inner().unwrap().len() < 100);
    }

    /// Runs 24 items of 5 ms each on four workers of which one is admitted
    /// and the others once item `open_after` (if any) has run; returns the
    /// most items in progress at once before and after the gate opened.
    fn concurrency(open_after: Option<usize>) -> (usize, usize) {
        let active = AtomicUsize::new(0);
        let most = [AtomicUsize::new(0), AtomicUsize::new(0)];
        let opened = AtomicUsize::new(0);
        let opens = || opened.load(Ordering::SeqCst) == 1;
        run_gated(4, &Gate::new(1, &opens), 24, |i| {
            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
            most[opened.load(Ordering::SeqCst)].fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            active.fetch_sub(1, Ordering::SeqCst);
            if Some(i) == open_after {
                opened.store(1, Ordering::SeqCst);
            }
            Ok(())
        })
        .unwrap();
        (
            most[0].load(Ordering::SeqCst),
            most[1].load(Ordering::SeqCst),
        )
    }

    #[test]
    fn a_gate_admits_its_workers_only_and_the_rest_once_open() {
        // Never opened: one worker does everything, the others leave at the end.
        assert_eq!(concurrency(None), (1, 0));
        let (before, after) = concurrency(Some(3));
        assert_eq!(before, 1);
        assert!(after > 1, "the open gate let in no one: {after}");
    }

    #[test]
    fn a_worker_that_panics_lets_the_waiting_ones_go() {
        let (sent, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = std::panic::catch_unwind(|| {
                run_gated(4, &Gate::new(1, &|| false), 24, |i| {
                    assert_ne!(i, 2, "item 2 panics");
                    Ok(())
                })
            });
            sent.send(result.is_err()).unwrap();
        });
        let panicked = got
            .recv_timeout(Duration::from_secs(10))
            .expect("the workers waiting at the gate hang");
        assert!(panicked);
    }
}
