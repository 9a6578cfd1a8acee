//! Worker threads for the copy engine: items handed out in increasing order
//! (what [`super::turns::Turns`] relies on), and an ordered pipeline where
//! items are prepared in parallel and consumed strictly in order.

use crate::sync::lock;
use qimg_driver_api::DriverError;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Runs `work` on items `0..count` with `threads` workers that take the
/// items in increasing order; stops handing out items after the first
/// error (items already taken finish) and returns the error of the lowest
/// item that failed, as a copy in order would meet it.
pub fn run_workers(
    threads: usize,
    count: usize,
    work: impl Fn(usize) -> Result<(), DriverError> + Sync,
) -> Result<(), DriverError> {
    let next = AtomicUsize::new(0);
    // The failed item with the lowest index: every item before it was
    // taken (and finished) before the others stopped, so this is the
    // error a copy in order meets first, whichever worker failed first.
    let failed: Mutex<Option<(usize, DriverError)>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1).min(count) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                if let Err(e) = work(index) {
                    next.store(count, Ordering::Relaxed);
                    let mut first = lock(&failed);
                    if first.as_ref().is_none_or(|(at, _)| index < *at) {
                        *first = Some((index, e));
                    }
                    break;
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
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
    use super::{run_in_order, run_workers};
    use qimg_driver_api::DriverError;
    use std::sync::Mutex;

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
}
