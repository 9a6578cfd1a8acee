//! Allocation ahead of a copy into a file that allocates its blocks as it
//! is written (a raw image in a local file): the data ranges of the plan
//! are allocated ([`Store::allocate`]) in target order, a window ahead of
//! the items being copied, before their data is written.
//!
//! ext4 fills allocated blocks faster than it allocates them write by
//! write (its delayed allocation). Allocating whole data ranges in target
//! order, by one worker at a time, also lays the file out as a sequential
//! copy does: allocating just before each write, the parallel workers
//! scattered a raw target's pieces over the disk. Only holes are
//! allocated, and the zero runs the copy then finds inside the data give
//! their newly allocated blocks back ([`Filler::give_back`]), so the file
//! holds the blocks qemu-img's copy holds.
//!
//! Giving blocks back costs a `fallocate` each (134 us on ext4 mounted
//! with `discard`: a vdi -> raw copy, whose blocks hold a fifth zeros, took
//! 146 ms instead of 109), so the filler starts only once the first
//! [`WINDOW`] of data the copy wrote held next to no zero runs (a qcow2 or
//! qed source, whose zeros are unallocated), and stops if more than a
//! little comes back later.

use crate::store::Store;
use crate::sync::lock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How far past the item being copied the data ranges are allocated: large
/// enough that a range is allocated in one call and placed after the one
/// before it, small enough that little is held for zero runs at a time.
const WINDOW: u64 = 32 << 20;

/// The share of zeros (1 / this) in the data written before the filler
/// starts, or in what it allocated, above which it stops.
const ZEROS_DIVISOR: u64 = 64;

/// A copy of less data than this is left to the file system: it would gain
/// a few milliseconds at most, and a file of a few extents could end up
/// with an extent-tree block more than qemu-img's (ext4 splits an
/// allocated extent as it is written, and keeps the tree that took).
const MIN_DATA: u64 = 2 * WINDOW;

/// The data ranges of a segment of the plan, allocated a window ahead.
pub struct Filler<'a> {
    store: &'a Store,
    /// Target ranges (offset, length) that data will be written to, in
    /// target order, contiguous ones merged (at most [`WINDOW`] each).
    ranges: Vec<(u64, u64)>,
    /// The first range not yet allocated.
    next: Mutex<usize>,
    /// Every range below this target offset is allocated (or allocation
    /// stopped: `u64::MAX`).
    covered: AtomicU64,
    /// The holes allocated: start -> end.
    allocated: Mutex<BTreeMap<u64, u64>>,
    /// Bytes allocated, and bytes of them given back (see [`Filler::give_back`]).
    allocated_bytes: AtomicU64,
    given_back: AtomicU64,
    /// Bytes of data units the copy wrote, and of the zero runs found in
    /// them before the filler started (see [`Filler::note`]).
    written: AtomicU64,
    zeros: AtomicU64,
    /// The highest end of a unit the copy started on: units below it may
    /// be written without the filler, which must not allocate there.
    started: AtomicU64,
}

impl<'a> Filler<'a> {
    /// The filler of `store` for data written to `ranges` (in target
    /// order), if they hold [`MIN_DATA`] bytes or more.
    pub fn new(
        store: &'a Store,
        ranges: impl IntoIterator<Item = (u64, u64)>,
    ) -> Option<Filler<'a>> {
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (mut at, mut len) in ranges {
            while len > 0 {
                match merged.last_mut() {
                    Some(last) if last.0 + last.1 == at && last.1 < WINDOW => {
                        let n = len.min(WINDOW - last.1);
                        last.1 += n;
                        (at, len) = (at + n, len - n);
                    }
                    _ => {
                        let n = len.min(WINDOW);
                        merged.push((at, n));
                        (at, len) = (at + n, len - n);
                    }
                }
            }
        }
        if merged.iter().map(|r| r.1).sum::<u64>() < MIN_DATA {
            return None;
        }
        Some(Filler {
            store,
            ranges: merged,
            next: Mutex::new(0),
            covered: AtomicU64::new(0),
            allocated: Mutex::new(BTreeMap::new()),
            allocated_bytes: AtomicU64::new(0),
            given_back: AtomicU64::new(0),
            written: AtomicU64::new(0),
            zeros: AtomicU64::new(0),
            started: AtomicU64::new(0),
        })
    }

    /// Called before the copy starts on a data unit that ends at target
    /// offset `end`: once the filler has started, allocates the ranges up
    /// to [`WINDOW`] past it, unless half a window is allocated already.
    pub fn cover(&self, end: u64) {
        self.started.fetch_max(end, Ordering::AcqRel);
        if end.saturating_add(WINDOW / 2) <= self.covered.load(Ordering::Acquire) {
            return;
        }
        let mut next = lock(&self.next);
        let want = end.saturating_add(WINDOW);
        while self.covered.load(Ordering::Acquire) < want {
            let Some(&(at, len)) = self.ranges.get(*next) else {
                self.covered.store(u64::MAX, Ordering::Release);
                break;
            };
            let written = self.written.load(Ordering::Relaxed);
            if written < WINDOW {
                return; // not yet started
            }
            if !self.store.allocates() || self.wasteful() {
                // Allocation failed once, or zeros come back: the writes
                // allocate from here on.
                self.covered.store(u64::MAX, Ordering::Release);
                break;
            }
            if at < self.started.load(Ordering::Acquire) {
                // Units the copy started on before the filler did.
                *next += 1;
                continue;
            }
            let holes = self.store.allocate(at, len);
            let bytes: u64 = holes.iter().map(|h| h.1).sum();
            self.allocated_bytes.fetch_add(bytes, Ordering::Relaxed);
            lock(&self.allocated).extend(holes.into_iter().map(|(at, len)| (at, at + len)));
            *next += 1;
            self.covered.store(at + len, Ordering::Release);
        }
    }

    /// Whether the data holds zero runs: more than one [`ZEROS_DIVISOR`]th
    /// of what was written before the filler started, or of what it
    /// allocated (a raw file with zeros written, vdi or parallels blocks
    /// written in part, a format without block status). Giving their
    /// blocks back costs more than allocating saves.
    fn wasteful(&self) -> bool {
        let allocated = self.allocated_bytes.load(Ordering::Relaxed);
        let written = self.written.load(Ordering::Relaxed);
        self.zeros.load(Ordering::Relaxed) > written / ZEROS_DIVISOR
            || self.given_back.load(Ordering::Relaxed) > allocated / ZEROS_DIVISOR
    }

    /// Counts a data unit the copy writes: `data` bytes of data runs and
    /// `zeros` bytes of zero runs (left out, or given back once the filler
    /// has started).
    pub fn note(&self, data: u64, zeros: u64) {
        self.written.fetch_add(data + zeros, Ordering::Relaxed);
        if self.allocated_bytes.load(Ordering::Relaxed) == 0 {
            self.zeros.fetch_add(zeros, Ordering::Relaxed);
        }
    }

    /// The parts of `len` bytes at `offset` (a zero run the copy found
    /// inside data) that were holes this filler allocated: the caller gives
    /// their blocks back.
    pub fn give_back(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let end = offset.saturating_add(len);
        let allocated = lock(&self.allocated);
        let mut parts: Vec<(u64, u64)> = allocated
            .range(..end)
            .rev()
            .take_while(|(_, &hole_end)| hole_end > offset)
            .map(|(&start, &hole_end)| {
                let (from, to) = (start.max(offset), hole_end.min(end));
                (from, to - from)
            })
            .collect();
        parts.reverse();
        let bytes: u64 = parts.iter().map(|p| p.1).sum();
        self.given_back.fetch_add(bytes, Ordering::Relaxed);
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::{LocalFile, OpenMode};
    use crate::store::CacheMode;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

    /// A sparse scratch file of `len` bytes, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str, len: u64) -> Scratch {
            let path =
                std::env::temp_dir().join(format!("qimg-fill-{}-{name}", std::process::id()));
            std::fs::File::create(&path).unwrap().set_len(len).unwrap();
            Scratch(path)
        }
        fn store(&self) -> Store {
            let mode = OpenMode {
                write: true,
                create: false,
                cache: CacheMode::Writeback,
            };
            Store::File(LocalFile::open(&self.0, "scratch", mode).unwrap())
        }
        fn allocated(&self) -> u64 {
            std::fs::metadata(&self.0).unwrap().blocks() * 512
        }
        /// Asserts that `mib` MiB are allocated, give or take the extent
        /// tree's own blocks.
        fn assert_mib(&self, mib: u64) {
            let bytes = self.allocated();
            assert!(
                (mib << 20..(mib << 20) + (64 << 10)).contains(&bytes),
                "{bytes} bytes allocated, not {mib} MiB"
            );
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn contiguous_ranges_merge_up_to_a_window() {
        let scratch = Scratch::new("merge", 1 << 30);
        let store = scratch.store();
        let mib = 1u64 << 20;
        let ranges = (0..80).map(|i| (i * mib, mib)).chain([(90 * mib, mib)]);
        let filler = Filler::new(&store, ranges).unwrap();
        let merged = [
            (0, 32 * mib),
            (32 * mib, 32 * mib),
            (64 * mib, 16 * mib),
            (90 * mib, mib),
        ];
        assert_eq!(filler.ranges, merged);
        // Too little data to be worth it.
        assert!(Filler::new(&store, [(0, 63 * mib)]).is_none());
    }

    #[test]
    fn data_ranges_are_allocated_a_window_ahead_and_no_further() {
        let scratch = Scratch::new("ahead", 1 << 30);
        let store = scratch.store();
        if !store.allocates() || store.allocate(0, 4096) != [(0, 4096)] {
            return; // a file system that cannot allocate: nothing to see
        }
        let mib = 1u64 << 20;
        // 1 MiB of data every 2 MiB: the holes between stay holes.
        let filler = Filler::new(&store, (0..100).map(|i| (2 * i * mib, mib))).unwrap();
        // Nothing before a window of data without zeros was written.
        filler.cover(mib);
        scratch.assert_mib(0);
        filler.note(32 * mib, 0);
        // From the next unit on, until a range ends at or past 1 + 32 MiB:
        // the 16 ranges from 2 MiB on.
        filler.cover(mib);
        scratch.assert_mib(16);
        // Half a window ahead is enough: nothing more yet.
        filler.cover(17 * mib);
        scratch.assert_mib(16);
        // Until one ends at or past 18 + 32 MiB: 9 more, the last at 50 MiB.
        filler.cover(18 * mib);
        scratch.assert_mib(25);
        // A unit started past what is allocated: the ranges below it are
        // left to the writes, the 17 from 60 MiB to 92 MiB allocated.
        filler.cover(60 * mib);
        scratch.assert_mib(42);
        assert_eq!(filler.give_back(31 * mib, 3 * mib), [(32 * mib, mib)]);
    }

    #[test]
    fn only_holes_are_allocated_and_given_back() {
        let scratch = Scratch::new("holes", 128 << 20);
        let store = scratch.store();
        let mib = 1u64 << 20;
        // Data at 9 MiB (qemu's first block of a new raw file is one).
        std::fs::OpenOptions::new()
            .write(true)
            .open(&scratch.0)
            .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[7; 4096], 9 * mib))
            .unwrap();
        if !store.allocates() {
            return;
        }
        let filler = Filler::new(&store, [(8 * mib, 64 * mib)]).unwrap();
        filler.note(32 * mib, 0);
        // Up to 4 + 32 MiB: the first range (32 MiB, the data block included).
        filler.cover(4 * mib);
        scratch.assert_mib(32);
        // The zero run over the data block gives back only the holes.
        let back = filler.give_back(8 * mib + mib / 2, mib);
        assert_eq!(
            back,
            [
                (8 * mib + mib / 2, mib / 2),
                (9 * mib + 4096, mib / 2 - 4096)
            ]
        );
        assert!(filler.give_back(41 * mib, mib).is_empty());
    }

    #[test]
    fn zeros_in_the_data_keep_the_filler_off() {
        let scratch = Scratch::new("zeros", 1 << 30);
        let store = scratch.store();
        if !store.allocates() {
            return;
        }
        let mib = 1u64 << 20;
        // Zero runs in the first window: it never starts.
        let filler = Filler::new(&store, [(0, 1 << 30)]).unwrap();
        filler.note(31 * mib, mib);
        filler.cover(40 * mib);
        assert_eq!(filler.covered.load(Ordering::Relaxed), u64::MAX);
        scratch.assert_mib(0);
        // Zero runs given back later: it stops.
        let filler = Filler::new(&store, [(0, 1 << 30)]).unwrap();
        filler.note(32 * mib, 0);
        filler.cover(mib);
        scratch.assert_mib(32);
        filler.give_back(32 * mib, mib);
        filler.cover(50 * mib);
        assert_eq!(filler.covered.load(Ordering::Relaxed), u64::MAX);
        scratch.assert_mib(32);
    }
}
