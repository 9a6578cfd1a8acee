//! The copy engine behind `convert` (and `dd`): an extent-driven plan that
//! never reads what the source reports as zero, then parallel reads and writes
//! in large aligned chunks, with zero detection (`-S`), copy offload (`-C`),
//! salvage, rate limiting and in-order progress.

use super::progress::Progress;
use super::ratelimit::RateLimit;
use super::sparse::Sparse;
use super::status::Walker;
use super::zero::is_zero;
use crate::block::BlockImage;
use qimg_driver_api::{zero_flags, DriverError, ErrorKind};
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What one piece of work does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Read from the source and write what is not zero.
    Data,
    /// The source reads as zeros here.
    Zero,
    /// Write explicit zero bytes (`-S 0`: the target is fully allocated).
    ZeroData,
    /// Whole target clusters, read through the flat source view and written
    /// compressed (`-c`); all-zero clusters are skipped.
    Compressed,
}

/// One piece of work: `len` bytes of source `source` at `src_offset`, going to
/// `dst_offset` in the target.
#[derive(Clone, Copy, Debug)]
struct Item {
    source: usize,
    src_offset: u64,
    dst_offset: u64,
    len: u64,
    kind: Kind,
}

/// Everything a copy needs to know.
pub struct CopyJob<'a> {
    /// Sources, concatenated in order.
    pub sources: &'a [Arc<BlockImage>],
    /// The target, open for writing.
    pub target: &'a BlockImage,
    /// The target already reads as zeros everywhere (fresh image of a format
    /// that guarantees it, or `--target-is-zero`): zero areas are skipped.
    pub target_zeroed: bool,
    /// `-S`: zero runs of this many aligned bytes inside data are not written
    /// (0: write everything, zeros included, as data).
    pub min_sparse: u64,
    /// Size of one unit of work.
    pub chunk: u64,
    /// The target's allocation unit (cluster size): a unit of work that is cut
    /// by the chunk limit ends on a multiple of it.
    pub align: u64,
    /// Worker threads.
    pub threads: usize,
    /// `-B`: copy only what the source's top layer allocates.
    pub top_only: bool,
    /// `-C`: use copy_file_range between the two files.
    pub offload: bool,
    /// `--salvage`: treat unreadable areas as zeros, with a warning.
    pub salvage: bool,
    /// The target must be written strictly in order.
    pub sequential: bool,
    /// `-c`: write whole clusters compressed (`align` is the cluster size).
    pub compress: bool,
    /// Progress reporting.
    pub progress: &'a Progress,
    /// `-r`.
    pub rate: &'a RateLimit,
}

/// The compressed clusters of one item: (target offset, bytes).
type Prepared = Vec<(u64, Vec<u8>)>;

/// Items per worker compressed in parallel before the ordered writer takes
/// them (each holds up to a chunk of data and its compressed copy).
const ORDERED_WINDOW_PER_THREAD: usize = 2;
/// Data is copied in steps of this many bytes (aligned in the target).
const STEP: u64 = 256 << 10;
/// Largest zero run handled as one write-zeroes request.
const MAX_ZERO_REQUEST: u64 = 1 << 30;

impl CopyJob<'_> {
    /// Builds the plan: statuses of every source, split at chunk boundaries of
    /// the target offset.
    fn plan(&self) -> Result<Vec<Item>, DriverError> {
        let mut items = Vec::new();
        let mut dst = 0u64;
        for (index, source) in self.sources.iter().enumerate() {
            let size = source.size();
            let mut walker = Walker::default();
            let mut offset = 0u64;
            while offset < size {
                let bottom = if self.top_only { Some(0) } else { None };
                let status = walker.status(source, offset, size - offset, bottom)?;
                let len = status.length;
                let kind = if self.top_only && !status.present {
                    None
                } else if status.zero {
                    Some(if self.min_sparse == 0 {
                        Kind::ZeroData
                    } else {
                        Kind::Zero
                    })
                } else {
                    Some(Kind::Data)
                };
                if let Some(kind) = kind {
                    let step = if kind == Kind::Zero {
                        MAX_ZERO_REQUEST
                    } else {
                        self.chunk
                    };
                    let mut done = 0;
                    while done < len {
                        let at = dst + offset + done;
                        let mut n = (len - done).min(step);
                        if n < len - done {
                            let end = (at + n) / self.align * self.align;
                            if end > at {
                                n = end - at;
                            }
                        }
                        items.push(Item {
                            source: index,
                            src_offset: offset + done,
                            dst_offset: at,
                            len: n,
                            kind,
                        });
                        done += n;
                    }
                }
                offset += len;
            }
            dst += size;
        }
        if self.compress {
            items = self.compressed_plan(items);
        }
        Ok(items)
    }

    /// Turns the data items into cluster-aligned compressed items (a cluster
    /// is compressed whole, holes inside it included) and trims the zero items
    /// those clusters now cover.
    fn compressed_plan(&self, items: Vec<Item>) -> Vec<Item> {
        let total: u64 = self.sources.iter().map(|s| s.size()).sum();
        let cluster = self.align.max(512);
        let mut spans: Vec<(u64, u64)> = Vec::new();
        // With -S 0 qemu-img compresses every cluster, zeros included.
        let compressed = |i: &&Item| i.kind == Kind::Data || i.kind == Kind::ZeroData;
        for item in items.iter().filter(compressed) {
            let start = item.dst_offset / cluster * cluster;
            let end = (item.dst_offset + item.len)
                .div_ceil(cluster)
                .saturating_mul(cluster)
                .min(total);
            match spans.last_mut() {
                Some(last) if last.1 >= start => last.1 = last.1.max(end),
                _ => spans.push((start, end)),
            }
        }
        let mut out = Vec::new();
        for &(start, end) in &spans {
            let step = (self.chunk / cluster).max(1) * cluster;
            let mut at = start;
            while at < end {
                let n = (end - at).min(step);
                out.push(Item {
                    source: 0,
                    src_offset: at,
                    dst_offset: at,
                    len: n,
                    kind: Kind::Compressed,
                });
                at += n;
            }
        }
        for item in items.into_iter().filter(|i| !compressed(&i)) {
            out.extend(subtract(item, &spans));
        }
        out.sort_by_key(|i| i.dst_offset);
        out
    }

    /// Reads `buf.len()` bytes at target offset `offset` from the sources laid
    /// end to end.
    fn read_flat(&self, mut offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        let mut base = 0u64;
        let mut done = 0usize;
        for source in self.sources {
            let size = source.size();
            if done < buf.len() && offset < base + size {
                let n = ((base + size - offset) as usize).min(buf.len() - done);
                source.read(offset - base, &mut buf[done..done + n])?;
                done += n;
                offset += n as u64;
            }
            base += size;
        }
        buf[done..].fill(0);
        Ok(())
    }

    /// Runs the copy. Returns the first error.
    pub fn run(&self) -> Result<(), DriverError> {
        let items = self.plan()?;
        let counted = |i: &Item| i.kind != Kind::Zero;
        let total: u64 = items.iter().filter(|i| counted(i)).map(|i| i.len).sum();
        let tracker = InOrder::new();
        let done = AtomicU64::new(0);
        let work = |index: usize| -> Result<(), DriverError> {
            let item = &items[index];
            self.rate
                .take(if item.kind == Kind::Zero { 0 } else { item.len });
            self.copy_item(item)?;
            tracker.finish(index, |finished| {
                if counted(&items[finished]) {
                    let now = done.fetch_add(items[finished].len, Ordering::Relaxed)
                        + items[finished].len;
                    self.progress.fraction(now, total);
                }
            });
            Ok(())
        };
        if self.sequential && self.compress {
            self.run_ordered(&items, &done, total)?;
        } else if self.sequential || self.threads <= 1 {
            (0..items.len()).try_for_each(work)?;
        } else {
            let pool = worker_pool(self.threads)?;
            pool.install(|| (0..items.len()).into_par_iter().try_for_each(work))?;
        }
        self.progress.print(100.0, 0);
        Ok(())
    }

    /// For targets written strictly in order: clusters are read and compressed
    /// by the workers a window at a time, then written in order by this thread.
    fn run_ordered(&self, items: &[Item], done: &AtomicU64, total: u64) -> Result<(), DriverError> {
        let pool = worker_pool(self.threads)?;
        let cluster = self.align.max(512) as usize;
        let windows: Vec<&[Item]> = items
            .chunks(ORDERED_WINDOW_PER_THREAD * self.threads.max(1))
            .collect();
        let compress = |window: &[Item]| -> Result<Vec<Prepared>, DriverError> {
            window
                .par_iter()
                .map(|item| self.prepare(item, cluster))
                .collect()
        };
        let write = |window: &[Item], prepared: Vec<Prepared>| -> Result<(), DriverError> {
            for (item, clusters) in window.iter().zip(prepared) {
                if item.kind == Kind::Zero && !self.target_zeroed {
                    self.target
                        .write_zeroes(item.dst_offset, item.len, zero_flags::MAY_UNMAP)?;
                }
                for (at, data) in clusters {
                    self.target.write_prepared(at, &data)?;
                }
                if item.kind != Kind::Zero {
                    let now = done.fetch_add(item.len, Ordering::Relaxed) + item.len;
                    self.progress.fraction(now, total);
                }
            }
            Ok(())
        };
        // Window k is written while window k+1 is compressed.
        pool.install(|| {
            let mut pending = match windows.first() {
                Some(first) => compress(first)?,
                None => return Ok(()),
            };
            for (k, window) in windows.iter().enumerate() {
                let ready = std::mem::take(&mut pending);
                let (written, next) = rayon::join(
                    || write(window, ready),
                    || windows.get(k + 1).map(|w| compress(w)).transpose(),
                );
                written?;
                pending = next?.unwrap_or_default();
            }
            Ok(())
        })
    }

    /// Reads a compressed item and compresses its non-zero clusters.
    fn prepare(&self, item: &Item, cluster: usize) -> Result<Prepared, DriverError> {
        if item.kind != Kind::Compressed {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        self.each_cluster(item, cluster, |at, piece| {
            out.push((at, self.target.compress_cluster(at, piece)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads a compressed item and hands each of its clusters that is not
    /// all zeros (with `-S 0`: every cluster) to `each`, with its target
    /// offset.
    fn each_cluster(
        &self,
        item: &Item,
        cluster: usize,
        mut each: impl FnMut(u64, &[u8]) -> Result<(), DriverError>,
    ) -> Result<(), DriverError> {
        with_buffer(item.len as usize, |buf| {
            self.read_flat(item.dst_offset, buf)?;
            for (index, piece) in buf.chunks(cluster).enumerate() {
                if self.min_sparse == 0 || !is_zero(piece) {
                    each(item.dst_offset + (index * cluster) as u64, piece)?;
                }
            }
            Ok(())
        })
    }

    fn copy_item(&self, item: &Item) -> Result<(), DriverError> {
        let target = self.target;
        match item.kind {
            Kind::Compressed => {
                let cluster = self.align.max(512) as usize;
                self.each_cluster(item, cluster, |at, piece| {
                    target.write_compressed(at, piece)
                })
            }
            Kind::Zero if self.target_zeroed => Ok(()),
            Kind::Zero => target.write_zeroes(item.dst_offset, item.len, zero_flags::MAY_UNMAP),
            Kind::ZeroData => with_buffer(item.len as usize, |buf| {
                buf.fill(0);
                target.write(item.dst_offset, buf)
            }),
            Kind::Data => {
                let source = &self.sources[item.source];
                if self.offload {
                    if let Some(result) = offload(source, target, item) {
                        return result;
                    }
                }
                // Read, scanned and written a step at a time, the data
                // stays in the core's cache between the three passes. A
                // target that allocates clusters gets whole items, so that
                // each item's clusters are allocated together.
                let steps = self.align <= 4096
                    && (self.min_sparse == 0 || STEP.is_multiple_of(self.min_sparse));
                if !steps {
                    return self.copy_data(source, item.src_offset, item.dst_offset, item.len);
                }
                let mut at = 0;
                while at < item.len {
                    let dst = item.dst_offset + at;
                    let len = ((dst / STEP + 1) * STEP - dst).min(item.len - at);
                    self.copy_data(source, item.src_offset + at, dst, len)?;
                    at += len;
                }
                Ok(())
            }
        }
    }

    /// Copies `len` bytes of data from `source` at `src` to the target at `dst`.
    fn copy_data(
        &self,
        source: &BlockImage,
        src: u64,
        dst: u64,
        len: u64,
    ) -> Result<(), DriverError> {
        with_buffer(len as usize, |buf| {
            if let Err(e) = source.read(src, buf) {
                if !self.salvage {
                    return Err(e);
                }
                eprintln!(
                    "{}: warning: error while reading offset {src}: {}",
                    crate::cli::program(),
                    e.message
                );
                buf.fill(0);
            }
            self.write_sparse(dst, buf)
        })
    }

    /// Writes `buf`, leaving out (or zeroing) the zero runs `-S` makes
    /// holes of, by qemu-img's rule ([`Sparse`]).
    fn write_sparse(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        let target = self.target;
        if self.min_sparse == 0 {
            return target.write(offset, buf);
        }
        let sparse = Sparse::new(self.min_sparse, self.align);
        for (start, end, data) in sparse.runs(buf, offset) {
            let at = offset + start as u64;
            if data {
                target.write(at, &buf[start..end])?;
            } else if !self.target_zeroed {
                target.write_zeroes(at, (end - start) as u64, zero_flags::MAY_UNMAP)?;
            }
        }
        Ok(())
    }
}

thread_local! {
    /// Each worker's data buffer, kept between items: a fresh zeroed
    /// allocation per item costs page faults and a memset per byte copied.
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's buffer cut to `len` bytes (its content is
/// whatever the last item left: callers fill it).
fn with_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    BUFFER.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        f(&mut buf[..len])
    })
}

/// A rayon pool of `threads` workers (at least one) for one copy.
fn worker_pool(threads: usize) -> Result<rayon::ThreadPool, DriverError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| {
            DriverError::new(
                ErrorKind::OTHER,
                format!("cannot start worker threads: {e}"),
            )
        })
}

/// The parts of `item` outside the sorted, disjoint `spans`.
fn subtract(item: Item, spans: &[(u64, u64)]) -> Vec<Item> {
    let mut pieces = Vec::new();
    let mut start = item.dst_offset;
    let end = item.dst_offset + item.len;
    for &(s, e) in spans {
        if e <= start || s >= end {
            continue;
        }
        if s > start {
            pieces.push((start, s));
        }
        start = start.max(e);
    }
    if start < end {
        pieces.push((start, end));
    }
    pieces
        .into_iter()
        .map(|(s, e)| Item {
            src_offset: item.src_offset + (s - item.dst_offset),
            dst_offset: s,
            len: e - s,
            ..item
        })
        .collect()
}

/// copy_file_range between two identity-mapped local files; `None` when offload
/// does not apply (then the ordinary path runs).
fn offload(
    source: &BlockImage,
    target: &BlockImage,
    item: &Item,
) -> Option<Result<(), DriverError>> {
    use qimg_driver_api::caps::IDENTITY_MAPPED;
    if !source.driver.can(IDENTITY_MAPPED)
        || !target.driver.can(IDENTITY_MAPPED)
        || source.backing.is_some()
    {
        return None;
    }
    let src_fd = source.store.file().as_raw_fd();
    let dst_fd = target.store.file().as_raw_fd();
    let mut src_off = item.src_offset as i64;
    let mut dst_off = item.dst_offset as i64;
    let mut left = item.len as usize;
    while left > 0 {
        // SAFETY: both fds are open for the duration; offsets are passed by pointer.
        let n =
            unsafe { libc::copy_file_range(src_fd, &mut src_off, dst_fd, &mut dst_off, left, 0) };
        if n < 0 {
            let errno = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if left == item.len as usize
                && matches!(
                    errno,
                    libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP
                )
            {
                return None;
            }
            return Some(Err(DriverError::from_errno(
                errno,
                "copy_file_range failed",
            )));
        }
        if n == 0 {
            break;
        }
        left -= n as usize;
    }
    if left > 0 {
        // Source shorter than its virtual size: the rest reads as zeros.
        return Some(target.write(dst_off as u64, &vec![0u8; left]));
    }
    Some(Ok(()))
}

/// Releases completed item indexes in index order, so progress advances as if
/// the work had been done sequentially.
struct InOrder {
    state: Mutex<(usize, BTreeSet<usize>)>,
}

impl InOrder {
    fn new() -> InOrder {
        InOrder {
            state: Mutex::new((0, BTreeSet::new())),
        }
    }

    /// Marks `index` done and calls `release` for every index now complete in
    /// order, under the tracker's lock, so releases from different workers
    /// cannot overtake each other.
    fn finish(&self, index: usize, mut release: impl FnMut(usize)) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (next, done) = &mut *guard;
        done.insert(index);
        while done.remove(next) {
            release(*next);
            *next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{subtract, InOrder, Item, Kind};

    #[test]
    fn zero_items_are_trimmed_by_compressed_spans() {
        let item = Item {
            source: 0,
            src_offset: 100,
            dst_offset: 100,
            len: 900,
            kind: Kind::Zero,
        };
        let parts = subtract(item, &[(0, 200), (400, 500), (900, 2000)]);
        let ranges: Vec<(u64, u64, u64)> = parts
            .iter()
            .map(|p| (p.dst_offset, p.len, p.src_offset))
            .collect();
        assert_eq!(ranges, vec![(200, 200, 200), (500, 400, 500)]);
        assert!(subtract(item, &[(0, 4096)]).is_empty());
    }

    #[test]
    fn in_order_release() {
        let t = InOrder::new();
        let released = |index| {
            let mut out = Vec::new();
            t.finish(index, |i| out.push(i));
            out
        };
        assert!(released(1).is_empty());
        assert_eq!(released(0), vec![0, 1]);
        assert!(released(3).is_empty());
        assert_eq!(released(2), vec![2, 3]);
    }
}
