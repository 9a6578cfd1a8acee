//! The copy engine behind `convert` (and `dd`): an extent-driven plan that
//! never reads what the source reports as zero, then parallel reads and writes
//! in large aligned chunks, with zero detection (`-S`), copy offload (`-C`),
//! salvage, rate limiting and in-order progress.

use super::buffer::Buffer;
use super::fill::Filler;
use super::progress::Progress;
use super::ratelimit::RateLimit;
use super::sparse::Sparse;
use super::status::Walker;
use super::turns::Turns;
use super::workers::{run_gated, run_in_order, Gate};
use crate::block::BlockImage;
use crate::store::{RemoteStore, Store};
use crate::sync::lock;
use qimg_driver_api::{zero_flags, DriverError, ErrorKind};
use qimg_driver_util::is_zero;
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

impl Item {
    /// Whether progress counts the item (it copies bytes, not a zero run).
    fn counted(&self) -> bool {
        self.kind != Kind::Zero
    }
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
    /// How many of the workers copy from the start; the others join once a
    /// source proves far ([`Store::is_far`]). Each request in flight holds
    /// a buffer, and only round trips need more of them than the cores keep
    /// busy.
    pub near_threads: usize,
    /// `-B`: copy only what the source's top layer allocates.
    pub top_only: bool,
    /// `-C`: use copy_file_range between the two files.
    pub offload: bool,
    /// `--salvage`: treat unreadable sectors as zeros, with a warning.
    pub salvage: bool,
    /// `-q`: no warnings.
    pub quiet: bool,
    /// The target must be written strictly in order.
    pub sequential: bool,
    /// The target gets the host layout of writes in guest order (no `-W`):
    /// workers reserve their target space in plan order before writing
    /// (drivers that reserve, see `BlockImage::reserve`).
    pub in_order: bool,
    /// `-c`: write whole clusters compressed (`align` is the cluster size);
    /// the target is told when the copy ends (qcow2 then aligns its file's
    /// end, as after qemu-img's `convert -c`).
    pub compress: bool,
    /// Progress reporting.
    pub progress: &'a Progress,
    /// `-r`.
    pub rate: &'a RateLimit,
}

/// A failed copy step: which side failed decides qemu-img's message.
#[derive(Clone, Debug)]
enum CopyError {
    /// Reading the source failed, for the request at target offset `at`.
    Read {
        /// Target offset of the failed read request.
        at: u64,
        /// What the source said.
        error: DriverError,
    },
    /// Writing the target failed.
    Write(DriverError),
}

impl From<DriverError> for CopyError {
    fn from(error: DriverError) -> Self {
        CopyError::Write(error)
    }
}

impl CopyError {
    /// The error with qemu-img's words: "error while reading (writing) at
    /// byte N"; a failed write names `at`, the start of its item.
    fn into_error(self, at: u64) -> DriverError {
        let (side, at, error) = match self {
            CopyError::Read { at, error } => ("reading", at, error),
            CopyError::Write(error) => ("writing", at, error),
        };
        DriverError {
            message: format!("error while {side} at byte {at}: {}", error.message).into(),
            ..error
        }
    }
}

/// The outcome of one copy step.
type Step = Result<(), CopyError>;

/// One cluster of a compressed item, ready for the ordered writer.
enum Cluster {
    /// What the driver's `compress_cluster` made of it.
    Prepared(Vec<u8>),
    /// The cluster itself (the driver compresses only as it writes).
    Plain(Vec<u8>),
    /// An all-zero cluster of this many bytes, for a target that may hold
    /// old data there (`-n`): written as zeroes, not compressed.
    Zero(u64),
}

/// A cluster of a compressed item as read.
enum Piece<'a> {
    /// Its bytes, to compress.
    Data(&'a [u8]),
    /// All zeros, this many bytes long, over a target that is not known to
    /// read as zeros.
    Zero(u64),
}

/// The compressed clusters of one item, with their target offsets.
type Prepared = Vec<(u64, Cluster)>;

/// An item's place in the in-order step of a parallel copy (see [`Turns`]).
#[derive(Clone, Copy)]
struct Turn<'a> {
    turns: &'a Turns,
    index: usize,
}

impl Turn<'_> {
    /// Runs `step` in item order.
    fn take<R>(self, step: impl FnOnce() -> R) -> R {
        self.turns.take(self.index, step)
    }
}

/// Items per worker compressed in parallel before the ordered writer takes
/// them (each holds up to a chunk of data and its compressed copy).
const ORDERED_WINDOW_PER_THREAD: usize = 2;
/// Data is copied in steps of this many bytes (aligned in the target).
const STEP: u64 = 256 << 10;
/// Steps of a store served on this machine (an NBD unix socket): qemu-nbd
/// serves 1 MiB requests fastest. Reading the 1 GiB workload: 0.39 s,
/// 0.41 s in 256 KiB, 0.49 s in whole 2 MiB items. Writing it (medians of
/// six runs): 0.30 s, 0.33 s in 256 KiB, 0.40 s in 2 MiB items, whose
/// buffers make qemu-nbd's allocator return memory and fault it back.
const LOCAL_SERVER_STEP: u64 = 1 << 20;
/// Unit in which `--salvage` reads a failed request again.
const SECTOR: usize = 512;
/// Largest zero run handled as one write-zeroes request.
const MAX_ZERO_REQUEST: u64 = 1 << 30;

/// Items planned at once (2.6 MB of plan, 128 GiB of data in 2 MiB items):
/// the copy runs a segment of the plan, then plans the next, so that a
/// disk of any size is copied in bounded memory (a 60 TiB VHDX, which
/// reports data everywhere, made a plan of 1.3 GB).
const SEGMENT_ITEMS: usize = 1 << 16;

/// Where planning stopped: the source, the offset in it, and where that
/// source starts in the target.
#[derive(Default)]
struct Planner {
    source: usize,
    offset: u64,
    dst: u64,
    walker: Walker,
}

/// Zeroes `len` bytes of `target` at `offset`, a request per
/// [`MAX_ZERO_REQUEST`] bytes.
fn zero_range(target: &BlockImage, offset: u64, len: u64) -> Result<(), DriverError> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MAX_ZERO_REQUEST);
        target.write_zeroes(offset + done, n, zero_flags::MAY_UNMAP)?;
        done += n;
    }
    Ok(())
}

impl CopyJob<'_> {
    /// Plans the next segment of the copy: statuses of the sources from
    /// where `planner` stopped, split at chunk boundaries of the target
    /// offset (zero runs whole), until the segment holds [`SEGMENT_ITEMS`]
    /// items and ends on a cluster boundary of the target. Empty at the end.
    fn plan(&self, planner: &mut Planner) -> Result<Vec<Item>, DriverError> {
        let mut items: Vec<Item> = Vec::new();
        let full = |items: &Vec<Item>| {
            items.len() >= SEGMENT_ITEMS
                && items
                    .last()
                    .is_some_and(|i| (i.dst_offset + i.len).is_multiple_of(self.align))
        };
        while let Some(source) = self.sources.get(planner.source) {
            let index = planner.source;
            let size = source.size();
            let dst = planner.dst;
            while planner.offset < size && !full(&items) {
                let offset = planner.offset;
                let bottom = if self.top_only { Some(0) } else { None };
                let status = planner
                    .walker
                    .status(source, offset, size - offset, bottom)
                    .map_err(|e| DriverError {
                        message: format!(
                            "error while reading block status at offset {}: {}",
                            dst + offset,
                            e.message
                        )
                        .into(),
                        ..e
                    })?;
                // qemu-img copies whole sectors: a status ending inside one
                // (a raw file's end) takes the rest of it, read as zeros.
                let mut len = (offset + status.length)
                    .next_multiple_of(SECTOR as u64)
                    .min(size)
                    - offset;
                // What the source's own backing file holds is taken to be
                // in the target's (-B); a source without one reads zeros
                // there, which must hide the target's backing file.
                let kind = if self.top_only && !status.present && source.backing.is_some() {
                    None
                } else if status.reads_zero() {
                    Some(if self.min_sparse == 0 {
                        Kind::ZeroData
                    } else {
                        Kind::Zero
                    })
                } else {
                    Some(Kind::Data)
                };
                if kind == Some(Kind::Zero) {
                    // A zero run is one item however long, and however many
                    // statuses say it: it is written a request per
                    // MAX_ZERO_REQUEST when it runs (an item per 1 GiB made
                    // a plan of 80 MB for a 1 PiB image).
                    let at = dst + offset;
                    match items.last_mut() {
                        Some(last)
                            if last.kind == Kind::Zero
                                && last.source == index
                                && last.dst_offset + last.len == at =>
                        {
                            last.len += len
                        }
                        _ => items.push(Item {
                            source: index,
                            src_offset: offset,
                            dst_offset: at,
                            len,
                            kind: Kind::Zero,
                        }),
                    }
                } else if let Some(kind) = kind {
                    let step = self.chunk;
                    let mut done = 0;
                    while done < len && !full(&items) {
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
                    // A full segment ends inside the status: the next one
                    // asks for the rest.
                    len = done;
                }
                planner.offset += len;
            }
            if planner.offset < size {
                break;
            }
            planner.source += 1;
            planner.offset = 0;
            planner.dst += size;
            planner.walker = Walker::default();
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

    /// Runs the copy a segment of the plan at a time. Returns the first
    /// error.
    pub fn run(&self) -> Result<(), DriverError> {
        let sum =
            |items: &[Item]| -> u64 { items.iter().filter(|i| i.counted()).map(|i| i.len).sum() };
        let mut planner = Planner::default();
        let mut items = self.plan(&mut planner)?;
        // Progress (-p, or a SIGUSR1 line) needs the total first: a plan of
        // one segment has it, a longer one is walked once more ahead
        // (qemu-img counts the allocated sectors before it copies, too).
        let mut total = sum(&items);
        if planner.source < self.sources.len() {
            let mut ahead = Planner {
                walker: Walker::default(),
                ..planner
            };
            loop {
                let more = self.plan(&mut ahead)?;
                if more.is_empty() {
                    break;
                }
                total += sum(&more);
            }
        }
        let done = AtomicU64::new(0);
        while !items.is_empty() {
            self.run_segment(&items, &done, total)?;
            items = self.plan(&mut planner)?;
        }
        if self.compress {
            self.target.end_compressed()?;
        }
        self.progress.print(100.0, 0);
        Ok(())
    }

    /// Copies the items of one segment of the plan; `done` counts the bytes
    /// copied so far of the `total` progress shows.
    fn run_segment(&self, items: &[Item], done: &AtomicU64, total: u64) -> Result<(), DriverError> {
        let tracker = InOrder::new();
        let parallel = !self.sequential && self.threads > 1;
        // Reserving costs a step in item order: only worth it when workers
        // would otherwise allocate in the order they finish.
        let turns = (parallel && self.in_order && !self.compress && self.target.reserve(0, 0)?)
            .then(Turns::new);
        let far = || self.sources.iter().any(|s| s.store.is_far());
        let gate = Gate::new(self.near_threads, &far);
        let writes_data = |item: &Item| matches!(item.kind, Kind::Data | Kind::ZeroData);
        // A raw image in a local file gets its data's blocks allocated
        // ahead, in target order (see `fill`).
        let filler = if self.target.identity_mapped() && self.target.store.allocates() {
            let data = items.iter().filter(|i| writes_data(i));
            Filler::new(&self.target.store, data.map(|i| (i.dst_offset, i.len)))
        } else {
            None
        };
        let work = |index: usize| -> Result<(), DriverError> {
            let item = &items[index];
            self.rate
                .take(if item.kind == Kind::Zero { 0 } else { item.len });
            let fill = filler.as_ref().filter(|_| writes_data(item));
            if let Some(filler) = fill {
                filler.cover(item.dst_offset + item.len);
            }
            let turn = turns.as_ref().map(|turns| Turn { turns, index });
            self.copy_item(item, turn, fill)
                .map_err(|e| e.into_error(item.dst_offset))?;
            tracker.finish(index, |finished| {
                if items[finished].counted() {
                    let now = done.fetch_add(items[finished].len, Ordering::Relaxed)
                        + items[finished].len;
                    self.progress.fraction(now, total);
                }
            });
            Ok(())
        };
        if self.sequential && self.compress {
            self.run_ordered(items, done, total)
        } else if parallel {
            run_gated(self.threads, &gate, items.len(), work)
        } else {
            (0..items.len()).try_for_each(work)
        }
    }

    /// For targets written strictly in order: the workers read and compress
    /// items ahead (at most a window of them), and whichever worker finds
    /// the next item in order ready writes it.
    fn run_ordered(&self, items: &[Item], done: &AtomicU64, total: u64) -> Result<(), DriverError> {
        let cluster = self.align.max(512) as usize;
        let write = |index: usize, clusters: Prepared| -> Result<(), DriverError> {
            let item = &items[index];
            self.write_prepared(item, clusters, done, total)
                .map_err(|e| CopyError::from(e).into_error(item.dst_offset))
        };
        run_in_order(
            self.threads,
            items.len(),
            ORDERED_WINDOW_PER_THREAD * self.threads.max(1),
            |index| {
                self.prepare(&items[index], cluster)
                    .map_err(|e| e.into_error(items[index].dst_offset))
            },
            write,
        )
    }

    /// Writes a prepared item (ordered targets) and reports its progress.
    fn write_prepared(
        &self,
        item: &Item,
        clusters: Prepared,
        done: &AtomicU64,
        total: u64,
    ) -> Result<(), DriverError> {
        if item.kind == Kind::Zero && !self.target_zeroed {
            zero_range(self.target, item.dst_offset, item.len)?;
        }
        for (at, cluster) in clusters {
            match cluster {
                Cluster::Prepared(data) => self.target.write_prepared(at, &data)?,
                Cluster::Plain(data) => self.target.write_compressed(at, &data)?,
                Cluster::Zero(len) => self.target.write_zeroes(at, len, zero_flags::MAY_UNMAP)?,
            }
        }
        if item.counted() {
            let now = done.fetch_add(item.len, Ordering::Relaxed) + item.len;
            self.progress.fraction(now, total);
        }
        Ok(())
    }

    /// Reads a compressed item and compresses its non-zero clusters (a
    /// driver that cannot compress ahead gets the plain cluster, to write
    /// with `write_compressed`).
    fn prepare(&self, item: &Item, cluster: usize) -> Result<Prepared, CopyError> {
        if item.kind != Kind::Compressed {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        self.each_cluster(item, cluster, |at, piece| {
            let prepared = match piece {
                Piece::Zero(len) => Cluster::Zero(len),
                Piece::Data(piece) => match self.target.compress_cluster(at, piece) {
                    Ok(data) => Cluster::Prepared(data),
                    Err(e) if e.kind == ErrorKind::UNSUPPORTED => Cluster::Plain(piece.to_vec()),
                    Err(e) => return Err(e),
                },
            };
            out.push((at, prepared));
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads a compressed item and hands each of its clusters that is not
    /// all zeros (with `-S 0`: every cluster) to `each`, with its target
    /// offset; an all-zero cluster goes as [`Piece::Zero`] unless the target
    /// already reads as zeros there (qemu-img writes zeroes over what `-n`
    /// leaves in the target).
    fn each_cluster(
        &self,
        item: &Item,
        cluster: usize,
        mut each: impl FnMut(u64, Piece<'_>) -> Result<(), DriverError>,
    ) -> Step {
        with_buffer(item.len as usize, |buf| {
            self.read_flat(item.dst_offset, buf)
                .map_err(|error| CopyError::Read {
                    at: item.dst_offset,
                    error,
                })?;
            for (index, piece) in buf.chunks(cluster).enumerate() {
                let at = item.dst_offset + (index * cluster) as u64;
                if self.min_sparse == 0 || !is_zero(piece) {
                    each(at, Piece::Data(piece))?;
                } else if !self.target_zeroed {
                    each(at, Piece::Zero(piece.len() as u64))?;
                }
            }
            Ok(())
        })
    }

    /// Copies one item. With a `turn`, the target space (or, for zero
    /// items, the metadata) the item needs is set up in item order, and the
    /// turn is taken exactly once whatever fails.
    fn copy_item(&self, item: &Item, turn: Option<Turn>, fill: Option<&Filler>) -> Step {
        let target = self.target;
        let in_turn = |step: &dyn Fn() -> Result<(), DriverError>| -> Step {
            Ok(match turn {
                Some(turn) => turn.take(step),
                None => step(),
            }?)
        };
        match item.kind {
            Kind::Compressed => {
                let cluster = self.align.max(512) as usize;
                self.each_cluster(item, cluster, |at, piece| match piece {
                    Piece::Data(data) => target.write_compressed(at, data),
                    Piece::Zero(len) => target.write_zeroes(at, len, zero_flags::MAY_UNMAP),
                })
            }
            Kind::Zero if self.target_zeroed => in_turn(&|| Ok(())),
            Kind::Zero => in_turn(&|| zero_range(target, item.dst_offset, item.len)),
            Kind::ZeroData => with_buffer(item.len as usize, |buf| {
                buf.fill(0);
                in_turn(&|| target.reserve(item.dst_offset, item.len).map(drop))?;
                Ok(target.write(item.dst_offset, buf)?)
            }),
            Kind::Data => {
                let source = &self.sources[item.source];
                if let Some(turn) = turn {
                    return self.copy_reserved(source, item, turn);
                }
                if self.offload {
                    if let Some(result) = offload(source, target, item) {
                        return Ok(result?);
                    }
                }
                // Read, scanned and written a step at a time, the data
                // stays in the core's cache between the three passes. A
                // target that allocates clusters gets whole items, so that
                // each item's clusters are allocated together. A network
                // store, source or target, gets whole items, qemu-img's
                // request size: each request costs a round trip, and steps
                // would keep a quarter of the data in flight (8.6 times
                // qemu-img's time from an export answering in 20 ms). A
                // server on this machine (an NBD unix socket) costs no
                // round trip and serves 1 MiB requests with less work,
                // unless it proves far (a slow server behind the socket;
                // only reads are timed, so a target never does).
                let step = match (&*source.store, &*target.store) {
                    (Store::Remote(r), _) | (_, Store::Remote(r)) if serves_nearby(r) => {
                        LOCAL_SERVER_STEP
                    }
                    (Store::Remote(_), _) | (_, Store::Remote(_)) => item.len,
                    _ => STEP,
                };
                let steps = self.align <= 4096
                    && (self.min_sparse == 0 || step.is_multiple_of(self.min_sparse))
                    && step < item.len;
                if !steps {
                    let (src, dst) = (item.src_offset, item.dst_offset);
                    return self.copy_data(source, src, dst, item.len, fill);
                }
                let mut at = 0;
                while at < item.len {
                    let dst = item.dst_offset + at;
                    let len = ((dst / step + 1) * step - dst).min(item.len - at);
                    match self.copy_data(source, item.src_offset + at, dst, len, fill) {
                        // qemu-img's request is the item: a failed read
                        // names the item's start, or (a local source, read
                        // extent by extent) the failed extent's, which may
                        // lie before this step.
                        Err(CopyError::Read { error, .. }) => {
                            let within = match *source.store {
                                Store::Remote(_) => None,
                                _ => with_buffer(item.len as usize, |buf| {
                                    failed_extent(source, item.src_offset, buf)
                                }),
                            };
                            return Err(CopyError::Read {
                                at: item.dst_offset + within.unwrap_or(0),
                                error,
                            });
                        }
                        done => done?,
                    }
                    at += len;
                }
                Ok(())
            }
        }
    }

    /// Copies a data item whose target space is reserved in item order: the
    /// item is read, its data runs reserved and its zero runs written in
    /// its turn (as qemu-img, which writes in order, zeroes them before a
    /// later item allocates), then its data written.
    fn copy_reserved(&self, source: &BlockImage, item: &Item, turn: Turn) -> Step {
        let target = self.target;
        with_buffer(item.len as usize, |buf| {
            let read = self.fetch(source, item.src_offset, item.dst_offset, buf);
            let runs = match read {
                Ok(()) => self.runs(buf, item.dst_offset),
                Err(_) => Vec::new(),
            };
            turn.take(|| -> Step {
                read.clone()?;
                for &(start, end, data) in &runs {
                    let at = item.dst_offset + start as u64;
                    let len = (end - start) as u64;
                    if data {
                        target.reserve(at, len)?;
                    } else if !self.target_zeroed {
                        target.write_zeroes(at, len, zero_flags::MAY_UNMAP)?;
                    }
                }
                Ok(())
            })?;
            Ok(self.write_runs(item.dst_offset, buf, &runs, false, None)?)
        })
    }

    /// Reads `buf.len()` bytes of `source` at `src` (target offset `dst`).
    /// A failed read is reported as qemu-img reports it, with the target
    /// offset of the request; with `--salvage` the request is read again
    /// sector by sector and only the unreadable sectors read as zeros, each
    /// with a warning (unless `-q`).
    fn fetch(&self, source: &BlockImage, src: u64, dst: u64, buf: &mut [u8]) -> Step {
        let Err(error) = source.read(src, buf) else {
            return Ok(());
        };
        if !self.salvage {
            // A network source is read a request per item, as qemu-img
            // reads it: the request failed at its start. (Looking for the
            // failed extent would ask again, and a store that reconnects
            // waits its reconnect-delay for every such question.)
            let at = match *source.store {
                Store::Remote(_) => dst,
                _ => dst + failed_extent(source, src, buf).unwrap_or(0),
            };
            return Err(CopyError::Read { at, error });
        }
        for (index, sector) in buf.chunks_mut(SECTOR).enumerate() {
            let at = src + (index * SECTOR) as u64;
            if let Err(e) = source.read(at, sector) {
                if !self.quiet {
                    errln!(
                        "{}: warning: error while reading offset {at}: {}",
                        crate::cli::program(),
                        e.message
                    );
                }
                sector.fill(0);
            }
        }
        Ok(())
    }

    /// Copies `len` bytes of data from `source` at `src` to the target at `dst`.
    fn copy_data(
        &self,
        source: &BlockImage,
        src: u64,
        dst: u64,
        len: u64,
        fill: Option<&Filler>,
    ) -> Step {
        with_buffer(len as usize, |buf| {
            self.fetch(source, src, dst, buf)?;
            Ok(self.write_sparse(dst, buf, fill)?)
        })
    }

    /// The runs of `buf` (written at target `offset`) as `-S` cuts them:
    /// (start, end, is data); all of it is data with `-S 0`.
    fn runs(&self, buf: &[u8], offset: u64) -> Vec<(usize, usize, bool)> {
        if self.min_sparse == 0 {
            return vec![(0, buf.len(), true)];
        }
        Sparse::new(self.min_sparse).runs(buf, offset)
    }

    /// Writes `buf`, leaving out (or zeroing) the zero runs `-S` makes
    /// holes of, by qemu-img's rule ([`Sparse`]).
    fn write_sparse(
        &self,
        offset: u64,
        buf: &[u8],
        fill: Option<&Filler>,
    ) -> Result<(), DriverError> {
        self.write_runs(offset, buf, &self.runs(buf, offset), true, fill)
    }

    /// Writes the data runs of `buf` (at target `offset`) and, with
    /// `zeros`, zeroes its zero runs where the target does not already
    /// read as zeros, or gives back the blocks `fill` allocated there.
    fn write_runs(
        &self,
        offset: u64,
        buf: &[u8],
        runs: &[(usize, usize, bool)],
        zeros: bool,
        fill: Option<&Filler>,
    ) -> Result<(), DriverError> {
        let target = self.target;
        if let Some(fill) = fill {
            let data: usize = runs.iter().filter(|r| r.2).map(|r| r.1 - r.0).sum();
            fill.note(data as u64, (buf.len() - data) as u64);
        }
        for &(start, end, data) in runs {
            let (at, len) = (offset + start as u64, (end - start) as u64);
            if data {
                target.write(at, &buf[start..end])?;
            } else if zeros && !self.target_zeroed {
                target.write_zeroes(at, len, zero_flags::MAY_UNMAP)?;
            } else if let Some(fill) = fill.filter(|_| zeros) {
                for (at, len) in fill.give_back(at, len) {
                    target.write_zeroes(at, len, zero_flags::MAY_UNMAP)?;
                }
            }
        }
        Ok(())
    }
}

/// Runs `f` on a pooled buffer of `len` bytes (its content is whatever
/// its last user left: callers fill it).
fn with_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    f(&mut Buffer::take(len))
}

/// Where in `buf` (read from `source` at `src`) the first extent the
/// source reports that cannot be read starts: qemu-img reads extent by
/// extent, and names the failed request's start (a compressed qcow2
/// cluster is an extent of its own).
fn failed_extent(source: &BlockImage, src: u64, buf: &mut [u8]) -> Option<u64> {
    use qimg_driver_api::extent_flags::COMPRESSED;
    let cluster = source.info().ok()?.cluster_size.unwrap_or(0);
    let end = src + buf.len() as u64;
    let mut at = src;
    while at < end {
        let extents = source.block_status(at, end - at).ok()?;
        for extent in extents {
            let stop = extent.end().min(end);
            if stop <= at {
                return None;
            }
            while at < stop {
                let piece_end = if extent.has(COMPRESSED) && cluster > 0 {
                    ((at / cluster + 1) * cluster).min(stop)
                } else {
                    stop
                };
                let (from, to) = ((at - src) as usize, (piece_end - src) as usize);
                if source.read(at, &mut buf[from..to]).is_err() {
                    return Some(from as u64);
                }
                at = piece_end;
            }
        }
    }
    None
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

/// A network store served on this machine (an NBD unix socket) that has
/// not proved far (see [`RemoteStore::is_far`]).
fn serves_nearby(store: &RemoteStore) -> bool {
    store.node_name.starts_with("nbd+unix:") && !store.is_far()
}

/// copy_file_range between two identity-mapped local files; `None` when offload
/// does not apply (then the ordinary path runs).
fn offload(
    source: &BlockImage,
    target: &BlockImage,
    item: &Item,
) -> Option<Result<(), DriverError>> {
    if !source.identity_mapped() || !target.identity_mapped() || source.backing.is_some() {
        return None;
    }
    let src_fd = source.store.file()?.as_raw_fd();
    let dst_fd = target.store.file()?.as_raw_fd();
    // One copy at a time: the kernel serialises copies into a file on its
    // inode lock, and the workers that wait for it spin on a CPU (-C of
    // the 1 GiB bench workload: 0.19 s wall and 0.19 s CPU one at a time;
    // 0.20 s and 0.35 s from four workers, and runs of 1.06 s and 1.8 s
    // CPU when the spinners hold a virtual machine's other core).
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _copying = lock(&ONE_AT_A_TIME);
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
        let mut guard = lock(&self.state);
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
