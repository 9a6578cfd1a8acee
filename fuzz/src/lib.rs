//! The harness shared by qimg's fuzz targets.
//!
//! A target hands [`fuzz_image`] a format driver and the fuzzer's bytes; the
//! bytes become an image file held in memory ([`MemFile`]), which the driver
//! opens through its plain-Rust [`DriverImpl`] / [`ImageImpl`] traits — not
//! through driver-api's guard, so that a panic reaches libFuzzer instead of
//! becoming an error. The image is then driven the way `qimg info`, `map`,
//! `convert`, `check` and a small write drive it, every loop bounded so that
//! one input costs little whatever sizes its header claims.
//!
//! Besides panics, the harness asserts a few facts any driver owes its host
//! (each a `panic!` that libFuzzer reports as a crash):
//! - block status answers are contiguous, non-empty and inside the range asked;
//! - areas block status reports as reading as zeros do read as zeros;
//! - a read fills every byte of its buffer, and reads past the end give zeros;
//! - an image opened read-only is never written;
//! - on an image `check` finds clean, what was written reads back, and
//!   `check` finds no corruption after the write (leaks are allowed: qemu-img
//!   leaks clusters on some clean images too).
//!
//! The host services refuse every other file (backing files, extents,
//! external data files) and every secret, so an input can reach nothing but
//! itself.

use qimg_driver_api::abi_stable::sabi_trait::TD_Opaque;
use qimg_driver_api::abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};
use qimg_driver_api::schema::{CheckReport, CheckRequest, MetadataRequest, Repair};
use qimg_driver_api::{
    caps, extent_flags, open_flags, zero_flags, BackingBox, ByteStore, ByteStoreBox, ByteStore_TO,
    DriverError, DriverImpl, Extent, HostServices, HostServicesBox, HostServices_TO, ImageImpl,
    Prealloc, StoreRun,
};
use std::sync::{Arc, Mutex};

/// A store never grows past this: a write or resize beyond it fails with
/// ENOSPC, as a full disk would, instead of exhausting the fuzzer's memory.
pub const MAX_STORE_LEN: u64 = 256 << 20;
/// Guest bytes one open image is read, in all, per input.
pub const READ_BUDGET: u64 = 2 << 20;
/// Size of one read.
pub const CHUNK: u64 = 64 << 10;
/// A block-status walk stops after this many extents...
pub const MAX_EXTENTS: usize = 10_000;
/// ...or this many calls.
pub const MAX_STATUS_CALLS: usize = 10_000;
/// Hole granularity of [`MemFile`]: an all-zero aligned block of this size
/// is a hole for `run_at`, as in a sparse file.
const HOLE_BLOCK: u64 = 4096;
/// What an unread buffer is filled with before a read.
const POISON: [u8; 2] = [0xa5, 0x5a];
/// The name the image's store goes by.
pub const IMAGE_NAME: &str = "fuzz.img";

/// ENOSPC.
const ENOSPC: i32 = 28;

/// A file held in memory, shared by the harness and the stores on it.
#[derive(Clone, Default)]
pub struct MemFile(Arc<Mutex<Mem>>);

/// The bytes of a [`MemFile`]: those stored, then zeros up to its length,
/// so that growing a file (a driver's preallocation) costs no memory, as
/// in a sparse file.
#[derive(Clone, Default, PartialEq, Eq)]
struct Mem {
    /// The bytes up to the last one written (never past `len`).
    bytes: Vec<u8>,
    /// The file's length.
    len: u64,
}

impl MemFile {
    /// A file holding a copy of `bytes`.
    pub fn new(bytes: &[u8]) -> MemFile {
        MemFile(Arc::new(Mutex::new(Mem {
            bytes: bytes.to_vec(),
            len: bytes.len() as u64,
        })))
    }
    /// A separate file with the same contents.
    pub fn duplicate(&self) -> MemFile {
        MemFile(Arc::new(Mutex::new(self.lock().clone())))
    }
    /// Whether the file holds exactly `data`.
    pub fn holds(&self, data: &[u8]) -> bool {
        let mem = self.lock();
        let stored = mem.bytes.len();
        mem.len == data.len() as u64 && data[..stored] == mem.bytes[..] && is_zero(&data[stored..])
    }
    /// A store on this file. A read-only store refuses writes (and counts
    /// them: see [`MemFile::writes_refused`]).
    pub fn store(&self, name: &str, writable: bool) -> ByteStoreBox {
        ByteStore_TO::from_value(
            MemStore {
                file: self.clone(),
                name: name.to_string(),
                writable,
            },
            TD_Opaque,
        )
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Mem> {
        // A panic while a store was locked is already a finding; go on.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A [`ByteStore`] over a [`MemFile`].
struct MemStore {
    file: MemFile,
    name: String,
    writable: bool,
}

impl MemStore {
    fn refuse_if_read_only(&self, what: &str) -> Result<(), DriverError> {
        if self.writable {
            return Ok(());
        }
        panic!("the driver tried to {what} the store of an image opened read-only");
    }
    /// The end of `[offset, offset+len)` if the store may grow to it.
    fn end_within_limit(offset: u64, len: u64) -> Result<u64, DriverError> {
        offset
            .checked_add(len)
            .filter(|&end| end <= MAX_STORE_LEN)
            .ok_or_else(|| DriverError::from_errno(ENOSPC, "No space left on device"))
    }
}

/// True if every byte is zero. Compares a page at a time (memcmp): a loop
/// over bytes would call libFuzzer's comparison hook once a byte.
fn is_zero(bytes: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

impl ByteStore for MemStore {
    fn read_at(&self, offset: u64, mut buf: RSliceMut<'_, u8>) -> RResult<u64, DriverError> {
        let mem = self.file.lock();
        let n = mem.len.saturating_sub(offset).min(buf.len() as u64) as usize;
        let stored = (mem.bytes.len() as u64)
            .saturating_sub(offset)
            .min(n as u64) as usize;
        if stored > 0 {
            let start = offset as usize;
            buf[..stored].copy_from_slice(&mem.bytes[start..start + stored]);
        }
        buf[stored..n].fill(0);
        RResult::ROk(n as u64)
    }
    fn write_at(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<(), DriverError> {
        if let Err(e) = self.refuse_if_read_only("write") {
            return RResult::RErr(e);
        }
        let end = match Self::end_within_limit(offset, buf.len() as u64) {
            Ok(end) => end as usize,
            Err(e) => return RResult::RErr(e),
        };
        let mut mem = self.file.lock();
        if mem.bytes.len() < end {
            mem.bytes.resize(end, 0);
        }
        mem.bytes[offset as usize..end].copy_from_slice(&buf);
        mem.len = mem.len.max(end as u64);
        RResult::ROk(())
    }
    fn len(&self) -> RResult<u64, DriverError> {
        RResult::ROk(self.file.lock().len)
    }
    fn set_len(&self, len: u64, _prealloc: Prealloc) -> RResult<(), DriverError> {
        if let Err(e) = self.refuse_if_read_only("resize") {
            return RResult::RErr(e);
        }
        if len > MAX_STORE_LEN {
            return RResult::RErr(DriverError::from_errno(
                ENOSPC,
                "Could not resize file: No space left on device",
            ));
        }
        let mut mem = self.file.lock();
        mem.bytes.truncate(len as usize);
        mem.len = len;
        RResult::ROk(())
    }
    fn flush(&self) -> RResult<(), DriverError> {
        RResult::ROk(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _punch: bool) -> RResult<(), DriverError> {
        if let Err(e) = self.refuse_if_read_only("zero") {
            return RResult::RErr(e);
        }
        let end = match Self::end_within_limit(offset, len) {
            Ok(end) => end as usize,
            Err(e) => return RResult::RErr(e),
        };
        // Like the host's file store: the file grows to the end of the range.
        let mut mem = self.file.lock();
        let stored = mem.bytes.len();
        if (offset as usize) < stored {
            mem.bytes[offset as usize..end.min(stored)].fill(0);
        }
        mem.len = mem.len.max(end as u64);
        RResult::ROk(())
    }
    fn run_at(&self, offset: u64, max: u64) -> RResult<StoreRun, DriverError> {
        // SEEK_DATA / SEEK_HOLE over a file whose all-zero blocks are holes,
        // answered as the host's file store answers.
        let mem = self.file.lock();
        let data = &mem.bytes;
        // Past the stored bytes everything is a hole.
        let len = data.len() as u64;
        if offset >= len || max == 0 {
            return RResult::ROk(StoreRun {
                data: false,
                length: max,
            });
        }
        let block_is_data = |at: u64| {
            let start = at / HOLE_BLOCK * HOLE_BLOCK;
            let end = (start + HOLE_BLOCK).min(len);
            !is_zero(&data[start as usize..end as usize])
        };
        let kind = block_is_data(offset);
        let mut at = (offset / HOLE_BLOCK + 1) * HOLE_BLOCK;
        while at < len && at - offset < max && block_is_data(at) == kind {
            at += HOLE_BLOCK;
        }
        let length = if !kind && at >= len {
            // A hole up to the end of the file: no data follows.
            max
        } else {
            (at.min(len) - offset).clamp(1, max)
        };
        RResult::ROk(StoreRun { data: kind, length })
    }
    fn allocated_size(&self) -> RResult<u64, DriverError> {
        let mem = self.file.lock();
        let blocks = mem
            .bytes
            .chunks(HOLE_BLOCK as usize)
            .filter(|b| !is_zero(b))
            .count() as u64;
        RResult::ROk(blocks * HOLE_BLOCK)
    }
    fn name(&self) -> RString {
        self.name.as_str().into()
    }
}

/// Host services that offer nothing but warnings nobody reads: no other
/// file, no backing image, no secret, no open option.
struct NoHost;

impl HostServices for NoHost {
    fn open_related(
        &self,
        name: RStr<'_>,
        _writable: bool,
        _create: bool,
    ) -> RResult<ByteStoreBox, DriverError> {
        RResult::RErr(DriverError::from_errno(
            2,
            format!("Could not open '{name}': No such file or directory"),
        ))
    }
    fn open_backing(
        &self,
        name: RStr<'_>,
        _format: ROption<RStr<'_>>,
    ) -> RResult<BackingBox, DriverError> {
        RResult::RErr(DriverError::from_errno(
            2,
            format!("Could not open backing file '{name}': No such file or directory"),
        ))
    }
    fn secret(&self, id: RStr<'_>) -> RResult<RString, DriverError> {
        RResult::RErr(DriverError::invalid_argument(format!(
            "No secret with id '{id}'"
        )))
    }
    fn warn(&self, _message: RStr<'_>) {}
    fn open_option(&self, _key: RStr<'_>) -> ROption<RString> {
        ROption::RNone
    }
}

/// Host services that refuse everything (see [`NoHost`]).
pub fn no_host() -> HostServicesBox {
    HostServices_TO::from_value(NoHost, TD_Opaque)
}

/// Opens `file` with `flags`; the store is writable only with `WRITE`.
pub fn open(
    driver: &dyn DriverImpl,
    file: &MemFile,
    flags: u32,
) -> Result<Box<dyn ImageImpl>, DriverError> {
    let writable = flags & open_flags::WRITE != 0;
    driver.open(file.store(IMAGE_NAME, writable), no_host(), flags)
}

/// True if a check report shows nothing wrong.
pub fn is_clean(report: &CheckReport) -> bool {
    report.corruptions == 0
        && report.leaks == 0
        && report.check_errors == 0
        && report.failure.is_none()
}

/// Runs a report-only `check`. `Some(true)`: the image is clean; `Some(false)`:
/// it is not, or the check failed; `None`: the driver has no `check`.
fn check(driver: &dyn DriverImpl, image: &dyn ImageImpl) -> Option<bool> {
    let result = image.check(CheckRequest {
        repair: Repair::None,
    });
    if driver.capabilities() & caps::CHECK == 0 {
        return None;
    }
    Some(matches!(result, Ok(report) if is_clean(&report)))
}

/// True if an extent reads as zeros on an image without a backing image.
fn reads_as_zero(e: &Extent) -> bool {
    e.has(extent_flags::ZERO) || !e.has(extent_flags::DATA)
}

/// One `block_status(offset, len)` answer must start at `offset`, be
/// contiguous, cover at least a byte and stay inside the range and the disk.
fn check_extents(offset: u64, len: u64, size: u64, extents: &[Extent]) {
    let asked = format!("block_status({offset:#x}, {len:#x}) of a {size:#x}-byte disk");
    assert!(!extents.is_empty(), "{asked} answered no extent");
    let end = offset + len;
    let mut at = offset;
    for (i, e) in extents.iter().enumerate() {
        assert_eq!(
            e.offset, at,
            "{asked}: extent {i} starts at {:#x}, not {at:#x}: {extents:?}",
            e.offset
        );
        assert!(e.length > 0, "{asked}: extent {i} is empty: {e:?}");
        let e_end = e.offset.checked_add(e.length);
        assert!(
            e_end.is_some_and(|x| x <= end && x <= size),
            "{asked}: extent {i} ends past the asked range: {e:?}"
        );
        at = e.offset + e.length;
    }
}

/// Walks the block status of `[0, size)`, checking each answer; stops after
/// [`MAX_EXTENTS`] extents or [`MAX_STATUS_CALLS`] calls, or at an error.
/// Returns the extents seen.
pub fn walk_status(image: &dyn ImageImpl, size: u64) -> Vec<Extent> {
    let mut seen = Vec::new();
    let mut offset = 0u64;
    for _ in 0..MAX_STATUS_CALLS {
        if offset >= size || seen.len() >= MAX_EXTENTS {
            break;
        }
        let len = size - offset;
        let Ok(extents) = image.block_status(offset, len) else {
            break;
        };
        check_extents(offset, len, size, &extents);
        offset = extents.last().map_or(size, |e| e.offset + e.length);
        let room = MAX_EXTENTS - seen.len();
        seen.extend(extents.into_iter().take(room));
    }
    seen
}

/// Reads `len` bytes at `offset` twice, into buffers poisoned differently:
/// both reads must succeed or fail alike and agree byte for byte (a byte
/// the driver left unwritten differs). Returns the bytes read.
fn read_twice(image: &dyn ImageImpl, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut a = vec![POISON[0]; len];
    let first = image.read_at(offset, &mut a);
    let mut b = vec![POISON[1]; len];
    let second = image.read_at(offset, &mut b);
    match (first, second) {
        (Ok(()), Ok(())) => {
            if a == b {
                return Some(a);
            }
            if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
                panic!(
                    "read_at({offset:#x}, {len}) left byte {:#x} unwritten or is not \
                     repeatable ({:#04x} then {:#04x})",
                    offset + i as u64,
                    a[i],
                    b[i]
                );
            }
            Some(a)
        }
        // A read may fail (corrupt tables); an error the first time that
        // vanishes the second is suspicious but could be a cache filled by
        // the failed read: accept either order.
        _ => None,
    }
}

/// Reads one chunk and holds it to the extents that say it reads as zeros.
fn read_chunk(image: &dyn ImageImpl, offset: u64, len: usize, extents: &[Extent], twice: bool) {
    let bytes = if twice {
        read_twice(image, offset, len)
    } else {
        let mut buf = vec![POISON[0]; len];
        image.read_at(offset, &mut buf).ok().map(|()| buf)
    };
    let Some(bytes) = bytes else {
        return;
    };
    let end = offset + len as u64;
    let first = extents.partition_point(|e| e.offset + e.length <= offset);
    for e in extents[first..].iter().take_while(|e| e.offset < end) {
        if !reads_as_zero(e) {
            continue;
        }
        let from = e.offset.max(offset);
        let to = (e.offset + e.length).min(end);
        let part = &bytes[(from - offset) as usize..(to - offset) as usize];
        if is_zero(part) {
            continue;
        }
        if let Some(i) = part.iter().position(|&b| b != 0) {
            panic!(
                "block status reports {:#x}+{:#x} as reading as zeros (flags {:#x}), \
                 but a read gives {:#04x} at {:#x}",
                e.offset,
                e.length,
                e.flags,
                part[i],
                from + i as u64
            );
        }
    }
}

/// Guest offsets to read, [`CHUNK`] bytes each (the last may be shorter),
/// at most [`READ_BUDGET`] bytes in all: the whole disk if it is small,
/// otherwise its start and end, where block status found data, and a
/// spread of places in between.
fn read_plan(size: u64, extents: &[Extent]) -> Vec<u64> {
    let chunks = READ_BUDGET / CHUNK;
    if size <= READ_BUDGET {
        return (0..size.div_ceil(CHUNK)).map(|i| i * CHUNK).collect();
    }
    let last = (size - CHUNK) / 512 * 512;
    let mut plan = vec![0, CHUNK, last, last.saturating_sub(CHUNK)];
    plan.extend(
        extents
            .iter()
            .filter(|e| e.has(extent_flags::DATA) && !e.has(extent_flags::ZERO))
            .take((chunks / 2) as usize)
            .map(|e| e.offset.min(last)),
    );
    let spread = chunks.saturating_sub(plan.len() as u64).max(1);
    plan.extend((1..=spread).map(|i| (size / (spread + 1) * i) / 512 * 512));
    plan.sort_unstable();
    plan.dedup();
    plan.truncate(chunks as usize);
    plan
}

/// Reads, block status and odd-sized reads of an open image.
fn read_pass(image: &dyn ImageImpl) {
    let size = image.virtual_size();
    let _ = image.store_name(0);
    if let Ok(info) = image.info() {
        // What driver-api's guard sends the host.
        let _ = serde_json::to_string(&info);
    }
    let extents = walk_status(image, size);
    for (n, offset) in read_plan(size, &extents).into_iter().enumerate() {
        let len = CHUNK.min(size - offset) as usize;
        read_chunk(image, offset, len, &extents, n < 2);
    }
    // Reads that straddle sectors, clusters and the end of the disk: what
    // lies past the end reads as zeros.
    for (offset, len) in [(1, 1000), (511, 2), (size.saturating_sub(100), 4096)] {
        let mut buf = vec![POISON[0]; len];
        if image.read_at(offset, &mut buf).is_ok() {
            let inside = size.saturating_sub(offset).min(len as u64) as usize;
            assert!(
                is_zero(&buf[inside..]),
                "read_at({offset:#x}, {len}) past the end of a {size:#x}-byte disk \
                 is not zeros"
            );
        }
    }
    // Block status of small, unaligned windows.
    for (offset, len) in [
        (1, 511),
        (size / 2 + 3, 100_000),
        (size.saturating_sub(1), 1),
    ] {
        let len = len.min(size.saturating_sub(offset));
        if len > 0 {
            if let Ok(extents) = image.block_status(offset, len) {
                check_extents(offset, len, size, &extents);
            }
        }
    }
}

/// The snapshot and bitmap metadata an image names, read the way `convert
/// -l` and `convert --bitmaps` read them.
fn metadata_pass(image: &dyn ImageImpl) {
    let Ok(info) = image.info() else {
        return;
    };
    if let Some(bitmap) = info.bitmaps.as_ref().and_then(|b| b.first()) {
        let _ = image.metadata(MetadataRequest::Bitmap {
            action: "dirty".into(),
            name: bitmap.name.clone(),
            granularity: None,
            source: None,
            ranges: None,
        });
    }
    if let Some(snapshot) = info.snapshots.first() {
        let loaded = image.metadata(MetadataRequest::SnapshotLoad {
            id: Some(snapshot.id.clone()),
            name: None,
        });
        if loaded.is_ok() {
            let size = image.virtual_size();
            let extents = walk_status(image, size.min(READ_BUDGET));
            for offset in (0..size.min(4 * CHUNK)).step_by(CHUNK as usize) {
                let len = CHUNK.min(size - offset) as usize;
                read_chunk(image, offset, len, &extents, false);
            }
        }
    }
}

/// The guest bytes the write pass wrote: each write (or zeroing) in order.
#[derive(Default)]
struct Written(Vec<(u64, Vec<u8>)>);

impl Written {
    fn write(&mut self, offset: u64, bytes: &[u8]) {
        self.0.push((offset, bytes.to_vec()));
    }
    /// What `[offset, offset+len)` should read, if every byte of it was written.
    fn expected(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut want = vec![0u8; len as usize];
        let end = offset + len;
        for (at, bytes) in &self.0 {
            let from = offset.max(*at);
            let to = end.min(at + bytes.len() as u64);
            if from < to {
                want[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&bytes[(from - at) as usize..(to - at) as usize]);
            }
        }
        want
    }
}

/// The small writes of the write pass: `(offset, length, fill)`, a fill of
/// `None` being a `write_zeroes`. The disk is at least one byte long.
fn write_plan(size: u64) -> Vec<(u64, u64, Option<u8>)> {
    let len = |at: u64, want: u64| want.min(size - at);
    let mid = size / 2 / 512 * 512;
    let odd = (size / 3).saturating_sub(7);
    let tail = size.saturating_sub(4096) / 512 * 512;
    vec![
        (0, len(0, 4096), Some(0x5a)),
        (mid, len(mid, 4096), Some(0xc3)),
        (odd, len(odd, 1000), Some(0x3c)),
        (tail, len(tail, 4096), None),
    ]
}

/// Opens a copy of `data` read-write, writes a little, flushes, reads it
/// back and closes; if the original was clean (`clean_before`), the copy
/// must read back what was written and check clean afterwards.
fn write_pass(driver: &dyn DriverImpl, data: &[u8], clean_before: bool) {
    let file = MemFile::new(data);
    let flags = open_flags::WRITE | open_flags::RESIZE | open_flags::NO_BACKING;
    let Ok(image) = open(driver, &file, flags) else {
        return;
    };
    let size = image.virtual_size();
    if size == 0 {
        let _ = image.close();
        return;
    }
    let mut model = Written::default();
    let mut all_ok = true;
    for (offset, len, fill) in write_plan(size) {
        let result = match fill {
            Some(byte) => {
                let buf = vec![byte; len as usize];
                image
                    .write_at(offset, &buf)
                    .map(|()| model.write(offset, &buf))
            }
            None => image
                .write_zeroes(offset, len, zero_flags::MAY_UNMAP)
                .map(|()| model.write(offset, &vec![0; len as usize])),
        };
        all_ok &= result.is_ok();
    }
    all_ok &= image.flush().is_ok();
    let oracle = clean_before && all_ok;
    if oracle {
        for (offset, len, _) in write_plan(size) {
            let mut buf = vec![POISON[0]; len as usize];
            let read = image.read_at(offset, &mut buf);
            assert!(
                read.is_ok(),
                "reading back {offset:#x}+{len} of a clean image after writing it: {read:?}"
            );
            let want = model.expected(offset, len);
            if buf != want {
                let i = buf.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                panic!(
                    "a clean image reads {:#04x} at {:#x} after {:#04x} was written there",
                    buf[i],
                    offset + i as u64,
                    want[i]
                );
            }
        }
    }
    let _ = walk_status(&*image, size);
    let closed = image.close().is_ok();
    drop(image);
    if !(oracle && closed) {
        return;
    }
    // The copy as written: a clean image stays clean.
    let after = file.duplicate();
    if let Ok(image) = open(driver, &after, open_flags::NO_BACKING | open_flags::CHECK) {
        if let Ok(report) = image.check(CheckRequest {
            repair: Repair::None,
        }) {
            // Leaks are allowed: qemu-img itself leaks clusters writing to
            // some clean images (a file that ends inside a cluster).
            assert!(
                report.corruptions == 0 && report.check_errors == 0 && report.failure.is_none(),
                "a clean image is corrupt after a few writes: {report:?}"
            );
        }
        let _ = image.close();
    }
}

/// Fuzzes one image: `data` is the whole image file. Opens it for `info`
/// only; then read-only (with its backing image asked for, which the host
/// refuses, then without), reads it, walks its block status, checks it and
/// reads its snapshot and bitmap metadata; then writes a little to a
/// read-write copy.
pub fn fuzz_image(driver: &dyn DriverImpl, data: &[u8]) {
    let _ = driver.probe(&data[..data.len().min(2048)], IMAGE_NAME);
    let file = MemFile::new(data);
    // What `qimg info` opens: described only, no data read.
    if let Ok(image) = open(driver, &file, open_flags::NO_IO | open_flags::NO_BACKING) {
        let _ = image.info().map(|info| serde_json::to_string(&info));
        let _ = image.close();
    }
    let opened = open(driver, &file, 0).or_else(|_| open(driver, &file, open_flags::NO_BACKING));
    let clean = match opened {
        Ok(image) => {
            read_pass(&*image);
            let clean = check(driver, &*image);
            metadata_pass(&*image);
            let _ = image.close();
            clean
        }
        // What `qimg check` opens.
        Err(_) => match open(driver, &file, open_flags::NO_BACKING | open_flags::CHECK) {
            Ok(image) => {
                let clean = check(driver, &*image);
                let _ = image.close();
                clean
            }
            Err(_) => Some(false),
        },
    };
    assert!(
        file.holds(data),
        "opening, reading and checking read-only changed the image"
    );
    write_pass(driver, data, clean.unwrap_or(true));
}

/// Opens a copy of `data` read-write and grows it by `grow_by` bytes, then
/// reopens it and reads its info and block status (for vmdk descriptor
/// files: the descriptor rewrites of a resize).
pub fn resize_pass(driver: &dyn DriverImpl, data: &[u8], grow_by: u64) {
    let file = MemFile::new(data);
    let flags = open_flags::WRITE | open_flags::RESIZE | open_flags::NO_BACKING;
    let Ok(image) = open(driver, &file, flags) else {
        return;
    };
    let new_size = image.virtual_size().saturating_add(grow_by);
    let resized = image.resize(new_size, Prealloc::OFF, false).is_ok();
    let closed = image.close().is_ok();
    drop(image);
    if !(resized && closed) {
        return;
    }
    let after = file.duplicate();
    if let Ok(image) = open(driver, &after, open_flags::NO_BACKING) {
        let _ = image.info();
        let _ = walk_status(&*image, image.virtual_size().min(READ_BUDGET));
        let _ = image.close();
    }
}
