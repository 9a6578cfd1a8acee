//! The allocation runs of the last block status reply, so that walking a
//! large export asks the server once per reply rather than once per run.

use crate::reply::Extent;
use crate::wire::state;
use qimg_driver_api::StoreRun;

/// Runs from one reply, contiguous from `start`, adjacent runs of the same
/// kind merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentCache {
    start: u64,
    /// `(end, data)` pairs in ascending order of `end`.
    runs: Vec<(u64, bool)>,
}

impl ExtentCache {
    /// The runs a reply describes from `start`, cut at `limit` (the
    /// export's end): a server may describe past what it was asked.
    pub fn from_reply(start: u64, extents: &[Extent], limit: u64) -> ExtentCache {
        let mut runs: Vec<(u64, bool)> = Vec::with_capacity(extents.len());
        let mut pos = start;
        for extent in extents {
            if pos >= limit {
                break;
            }
            let end = pos.saturating_add(u64::from(extent.length)).min(limit);
            let data = extent.flags & state::HOLE == 0;
            match runs.last_mut() {
                Some(last) if last.1 == data => last.0 = end,
                _ => runs.push((end, data)),
            }
            pos = end;
        }
        ExtentCache { start, runs }
    }

    /// The run at `offset`, at most `max` bytes long, if the cache covers
    /// `offset`.
    pub fn run_at(&self, offset: u64, max: u64) -> Option<StoreRun> {
        if offset < self.start {
            return None;
        }
        let index = self.runs.partition_point(|&(end, _)| end <= offset);
        let &(end, data) = self.runs.get(index)?;
        Some(StoreRun {
            data,
            length: (end - offset).min(max),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(length: u32, hole: bool) -> Extent {
        Extent {
            length,
            flags: if hole { state::HOLE | 2 } else { 0 },
        }
    }

    #[test]
    fn runs_merge_and_answer_lookups() {
        let cache = ExtentCache::from_reply(
            1000,
            &[
                extent(100, true),
                extent(50, true),
                extent(200, false),
                extent(10, true),
            ],
            u64::MAX,
        );
        assert_eq!(cache.runs, vec![(1150, false), (1350, true), (1360, false)]);
        assert_eq!(cache.run_at(999, 10), None);
        assert_eq!(
            cache.run_at(1000, 1000),
            Some(StoreRun {
                data: false,
                length: 150
            })
        );
        assert_eq!(
            cache.run_at(1149, 1000),
            Some(StoreRun {
                data: false,
                length: 1
            })
        );
        assert_eq!(
            cache.run_at(1150, 100),
            Some(StoreRun {
                data: true,
                length: 100
            })
        );
        assert_eq!(
            cache.run_at(1355, 100),
            Some(StoreRun {
                data: false,
                length: 5
            })
        );
        assert_eq!(cache.run_at(1360, 100), None);
    }

    #[test]
    fn runs_stop_at_the_limit() {
        let cache = ExtentCache::from_reply(0, &[extent(4096, false), extent(4096, true)], 5000);
        assert_eq!(cache.runs, vec![(4096, true), (5000, false)]);
        assert_eq!(cache.run_at(5000, 1), None);
        let cache = ExtentCache::from_reply(0, &[extent(u32::MAX, false)], 10);
        assert_eq!(
            cache.run_at(0, 100),
            Some(StoreRun {
                data: true,
                length: 10
            })
        );
    }
}
