//! A local file as a [`ByteStore`]: positioned I/O, sparse allocation queries
//! (SEEK_DATA / SEEK_HOLE), hole punching and zero ranges (fallocate), and
//! O_DIRECT with aligned bounce buffers when the cache mode asks for it.

use super::ahead::Ahead;
use super::faults::before_change;
use super::veil::{self, Veil};
use super::CacheMode;
use crate::block::lock::ImageLock;
use crate::sync::lock;
use qimg_driver_api::abi_stable::std_types::{RResult, RSlice, RSliceMut, RString};
use qimg_driver_api::{guard::catch, ByteStore, DriverError, Prealloc, StoreRun};
use qimg_driver_util::{AlignedBuf, BUFFER_ALIGN};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Alignment used for O_DIRECT transfers (covers 512- and 4096-byte sectors).
const DIRECT_ALIGN: usize = BUFFER_ALIGN;
/// Chunk used when zeros must be written by hand.
const ZERO_CHUNK: usize = 1 << 20;

/// Writes at least this large start their writeback at once in writeback
/// mode (see `LocalFile::pwrite`).
const WRITE_BEHIND_MIN: u64 = 64 << 10;

/// An open local file.
pub struct LocalFile {
    file: File,
    name: String,
    cache: CacheMode,
    /// Serialises read-modify-write cycles of unaligned O_DIRECT writes.
    rmw: Mutex<()>,
    /// The QEMU-compatible image lock held on this file, released on drop.
    lock: Option<ImageLock>,
    /// Set by [`LocalFile::stream_writes`]: large written ranges not yet
    /// retired from the page cache, oldest first, and their total.
    streamed: Option<Mutex<Streamed>>,
    /// Something was written since the last flush. Like QEMU, a flush
    /// with nothing new to make durable does not sync the file.
    unsynced: AtomicBool,
    /// Blocks allocated ahead of appends (see [`Ahead`]).
    ahead: Ahead,
    /// [`LocalFile::allocate`] is on: a writable regular file on ext4
    /// whose `fallocate` has not failed.
    fills: AtomicBool,
    /// A block or character device, which qemu opens with its
    /// `host_device` protocol driver.
    device: bool,
    /// The veil over the bytes that make the file an image, while a copy
    /// writes it.
    veil: Option<Arc<Veil>>,
    /// A file opened only for reading: where the last `SEEK_DATA` found data
    /// after a hole ([`NO_HINT`]: nowhere). A walk asks about that offset
    /// next, which then needs only its `SEEK_HOLE` (what qemu's block-status
    /// cache saves too).
    data_hint: Option<AtomicU64>,
}

/// `LocalFile::data_hint` holds no offset.
const NO_HINT: u64 = u64::MAX;

/// Written ranges (offset, length) of a streaming store, and their total.
type Streamed = (VecDeque<(u64, u64)>, u64);

/// A streaming store keeps at most this many written bytes in the page cache.
const STREAM_WINDOW: u64 = 32 << 20;

/// How to open a file.
#[derive(Clone, Copy, Debug)]
pub struct OpenMode {
    /// Open for writing.
    pub write: bool,
    /// Create (and truncate) the file.
    pub create: bool,
    /// Cache mode.
    pub cache: CacheMode,
}

/// Whether `file` is on ext4 (or ext2/3, which share its magic).
fn on_ext4(file: &File) -> bool {
    const EXT4_SUPER_MAGIC: libc::c_long = 0xef53;
    // SAFETY: fstatfs fills the zeroed struct we own.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } == 0)
        && fs.f_type as libc::c_long == EXT4_SUPER_MAGIC
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

impl LocalFile {
    /// Opens `path` (as the user named it: messages quote `name`).
    pub fn open(path: &Path, name: &str, mode: OpenMode) -> Result<LocalFile, DriverError> {
        let mut options = OpenOptions::new();
        options.read(true).write(mode.write);
        if mode.create {
            options.create(true).truncate(true);
        }
        let mut flags = libc::O_CLOEXEC;
        if mode.cache.direct() {
            flags |= libc::O_DIRECT;
        }
        if mode.cache.dsync() {
            flags |= libc::O_DSYNC;
        }
        options.custom_flags(flags);
        let file = options.open(path).map_err(|e| {
            let verb = if mode.create { "create" } else { "open" };
            DriverError::from_errno(
                errno_of(&e),
                format!(
                    "Could not {verb} '{name}': {}",
                    qimg_driver_api::error::io_message(&e)
                ),
            )
        })?;
        let meta = file.metadata().map_err(DriverError::from)?;
        if meta.is_dir() {
            return Err(DriverError::invalid_argument(format!(
                "'file' driver requires '{name}' to be a regular file"
            )));
        }
        let fills = mode.write && meta.is_file() && on_ext4(&file);
        Ok(LocalFile {
            file,
            name: name.to_string(),
            cache: mode.cache,
            rmw: Mutex::new(()),
            lock: None,
            streamed: None,
            unsynced: AtomicBool::new(false),
            ahead: Ahead::new(meta.len(), mode.write && meta.is_file()),
            fills: AtomicBool::new(fills),
            device: {
                use std::os::unix::fs::FileTypeExt;
                let kind = meta.file_type();
                kind.is_block_device() || kind.is_char_device()
            },
            veil: veil::find(&veil::Key::of_file(&meta)),
            data_hint: (!mode.write).then(|| AtomicU64::new(NO_HINT)),
        })
    }

    /// Creates `path` if it is missing and opens it for writing without
    /// emptying it, so that the caller can check the locks of whoever holds
    /// it before [`LocalFile::empty`] (qemu's file creation checks before it
    /// truncates). Opened for reading too, as qemu opens it: opening a FIFO
    /// only for writing would wait for a reader.
    pub fn create_unemptied(
        path: &Path,
        name: &str,
        cache: CacheMode,
    ) -> Result<LocalFile, DriverError> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                DriverError::from_errno(
                    errno_of(&e),
                    format!(
                        "Could not create '{name}': {}",
                        qimg_driver_api::error::io_message(&e)
                    ),
                )
            })?;
        let mode = OpenMode {
            write: true,
            create: false,
            cache,
        };
        LocalFile::open(path, name, mode)
    }

    /// Empties the file (qemu's `Could not resize file` where that fails).
    pub fn empty(&self) -> Result<(), DriverError> {
        let old = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        self.file.set_len(0).map_err(|e| {
            DriverError::from_errno(
                errno_of(&e),
                format!(
                    "Could not resize file: {}",
                    qimg_driver_api::error::io_message(&e)
                ),
            )
        })?;
        self.ahead.resized(old, 0);
        Ok(())
    }

    /// Veils the bytes that make the file an image (see [`veil`]) until
    /// [`super::Store::lift_veil`]; for an image about to be created.
    /// Returns the veil too, to be told when the creation is done.
    pub fn veiled(mut self) -> Result<(Self, Arc<Veil>), DriverError> {
        let meta = self.file.metadata().map_err(DriverError::from)?;
        let veil = veil::cover(veil::Key::of_file(&meta));
        self.veil = Some(veil.clone());
        Ok((self, veil))
    }

    /// The veil over the file, if one was put over it.
    pub fn veil(&self) -> Option<&Veil> {
        self.veil.as_deref()
    }

    /// Whether this is a block or character device rather than a file.
    pub fn is_device(&self) -> bool {
        self.device
    }

    /// Makes this a streaming store (dd's output, written once front to
    /// back and flushed at the end): once a written range is 32 MiB behind,
    /// its writeback is waited for and its pages are dropped from the page
    /// cache. The copy then recycles a small set of pages instead of
    /// filling memory with a file nobody reads back, and the final flush has
    /// only the last 32 MiB to wait for. Only for writeback mode.
    pub fn stream_writes(mut self) -> Self {
        if self.cache == CacheMode::Writeback {
            self.streamed = Some(Mutex::new((VecDeque::new(), 0)));
        }
        self
    }

    /// Retires the oldest written ranges of a streaming store beyond the window.
    fn retire(&self, offset: u64, len: u64) -> Result<(), DriverError> {
        let Some(streamed) = &self.streamed else {
            return Ok(());
        };
        let mut guard = lock(streamed);
        let (queue, total) = &mut *guard;
        queue.push_back((offset, len));
        *total += len;
        while *total > STREAM_WINDOW {
            let Some((at, n)) = queue.pop_front() else {
                break;
            };
            *total -= n;
            let fd = self.file.as_raw_fd();
            let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            // SAFETY: plain syscalls on our own descriptor.
            if unsafe { libc::sync_file_range(fd, at as i64, n as i64, wait) } != 0 {
                return Err(DriverError::from_errno(
                    last_errno(),
                    format!("Could not write to '{}'", self.name),
                ));
            }
            // SAFETY: as above; a failed hint changes nothing.
            unsafe { libc::posix_fadvise(fd, at as i64, n as i64, libc::POSIX_FADV_DONTNEED) };
        }
        Ok(())
    }

    /// Attaches the lock that guards this file (kept until the store is dropped).
    pub fn with_lock(mut self, lock: ImageLock) -> Self {
        self.lock = Some(lock);
        self
    }

    /// Whether the file is locked (it is unless `file.locking=off`).
    pub fn is_locked(&self) -> bool {
        self.lock.is_some()
    }

    /// The underlying file (for locks and copy_file_range).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn direct(&self) -> bool {
        self.cache.direct()
    }

    fn len_now(&self) -> Result<u64, DriverError> {
        Ok(self.file.metadata().map_err(DriverError::from)?.len())
    }

    fn pread(&self, offset: u64, buf: &mut [u8]) -> Result<u64, DriverError> {
        if self.direct() {
            return self.pread_direct(offset, buf);
        }
        let mut done = 0usize;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(done as u64)
    }

    fn pwrite(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        // Only a locked file is ours alone: releasing what is left ahead at
        // the end must not race with another process's appends.
        if self.lock.is_some() {
            let end = offset.saturating_add(buf.len() as u64);
            self.ahead.before_write(&self.file, offset, end);
        }
        if self.direct() {
            return self.pwrite_direct(offset, buf);
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(DriverError::from)?;
        if self.cache == CacheMode::Writeback && buf.len() as u64 >= WRITE_BEHIND_MIN {
            // A writeback store is flushed when it is closed: start writing
            // large data out now, so that the disk works while the copy goes
            // on and the final flush has little left to wait for. (Only a
            // hint: its failure changes nothing, the flush reports errors.)
            // SAFETY: plain syscall on our own descriptor.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    offset as i64,
                    buf.len() as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.retire(offset, buf.len() as u64)?;
        }
        Ok(())
    }

    fn pread_direct(&self, offset: u64, buf: &mut [u8]) -> Result<u64, DriverError> {
        let start = offset / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
        let end = (offset + buf.len() as u64).div_ceil(DIRECT_ALIGN as u64) * DIRECT_ALIGN as u64;
        let mut bounce = AlignedBuf::zeroed((end - start) as usize);
        let mut got = 0usize;
        while got < bounce.len() {
            match self.file.read_at(&mut bounce[got..], start + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let skip = (offset - start) as usize;
        let available = got.saturating_sub(skip).min(buf.len());
        buf[..available].copy_from_slice(&bounce[skip..skip + available]);
        Ok(available as u64)
    }

    fn pwrite_direct(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        let align = DIRECT_ALIGN as u64;
        let start = offset / align * align;
        let end = (offset + buf.len() as u64).div_ceil(align) * align;
        let _guard = lock(&self.rmw);
        let old_len = self.len_now()?;
        let mut bounce = AlignedBuf::zeroed((end - start) as usize);
        if start != offset || end != offset + buf.len() as u64 {
            self.pread_direct(start, &mut bounce)?;
        }
        let skip = (offset - start) as usize;
        bounce[skip..skip + buf.len()].copy_from_slice(buf);
        self.file
            .write_all_at(&bounce, start)
            .map_err(DriverError::from)?;
        let new_end = offset + buf.len() as u64;
        if end > old_len.max(new_end) {
            // The aligned write extended the file past what was asked: trim it.
            self.file
                .set_len(old_len.max(new_end))
                .map_err(DriverError::from)?;
        }
        Ok(())
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> Result<(), i32> {
        // SAFETY: plain syscall on an fd we own.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as i64, len as i64) };
        if r == 0 {
            Ok(())
        } else {
            Err(last_errno())
        }
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<(), DriverError> {
        let chunk = vec![0u8; ZERO_CHUNK.min(len as usize).max(1)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk.len() as u64) as usize;
            self.pwrite(offset + done, &chunk[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    fn zeroes(&self, offset: u64, len: u64, punch: bool) -> Result<(), DriverError> {
        if len == 0 {
            return Ok(());
        }
        let file_len = self.len_now()?;
        if punch && offset >= file_len {
            // Past the end, a longer file reads as zeros and holds no blocks.
            return self.file.set_len(offset + len).map_err(DriverError::from);
        }
        if punch {
            let inside = len.min(file_len - offset);
            if self
                .fallocate(
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset,
                    inside,
                )
                .is_ok()
            {
                if offset + len > file_len {
                    self.file.set_len(offset + len).map_err(DriverError::from)?;
                }
                return Ok(());
            }
        }
        if self
            .fallocate(libc::FALLOC_FL_ZERO_RANGE, offset, len)
            .is_ok()
        {
            return Ok(());
        }
        self.write_zero_bytes(offset, len)
    }

    fn seek(&self, offset: u64, whence: i32) -> Result<Option<u64>, DriverError> {
        // SAFETY: plain syscall on an fd we own.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as i64, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        match last_errno() {
            libc::ENXIO => Ok(None),
            errno => Err(DriverError::from_errno(errno, "lseek failed")),
        }
    }

    /// The data or hole run at `offset`. The file's length is looked up
    /// only where lseek cannot tell (past the end it answers ENXIO): a walk
    /// asks once per run, and a `statx` each would double its system calls.
    fn run(&self, offset: u64, max: u64) -> Result<StoreRun, DriverError> {
        let hole = StoreRun {
            data: false,
            length: max,
        };
        if self.device && offset >= self.len_now()? {
            return Ok(hole);
        }
        let hinted = self
            .data_hint
            .as_ref()
            .is_some_and(|hint| hint.swap(NO_HINT, Ordering::Relaxed) == offset);
        let data = if hinted {
            Ok(Some(offset))
        } else {
            self.seek(offset, libc::SEEK_DATA)
        };
        let data = match data {
            Ok(found) => found,
            // No SEEK_DATA support (or an offset lseek cannot take):
            // everything before the end is data.
            Err(e) if e.errno == libc::EINVAL => {
                let file_len = self.len_now()?;
                if offset >= file_len {
                    return Ok(hole);
                }
                return Ok(StoreRun {
                    data: true,
                    length: max.min(file_len - offset),
                });
            }
            Err(e) => return Err(e),
        };
        match data {
            Some(d) if d == offset => {
                let end = match self.seek(offset, libc::SEEK_HOLE)? {
                    Some(end) => end,
                    None => self.len_now()?,
                };
                Ok(StoreRun {
                    data: true,
                    length: end.saturating_sub(offset).clamp(1, max),
                })
            }
            Some(d) => {
                if let Some(hint) = &self.data_hint {
                    hint.store(d, Ordering::Relaxed);
                }
                Ok(StoreRun {
                    data: false,
                    length: (d - offset).clamp(1, max),
                })
            }
            None => Ok(hole),
        }
    }

    fn resize(&self, len: u64, prealloc: Prealloc) -> Result<(), DriverError> {
        // ftruncate's off_t is signed: past it the kernel's EINVAL (std
        // would refuse with words of its own).
        if i64::try_from(len).is_err() {
            return Err(DriverError::from_errno(
                libc::EINVAL,
                "Could not resize file: Invalid argument",
            ));
        }
        let old = self.len_now()?;
        let too_large = |e: std::io::Error| {
            DriverError::from_errno(
                errno_of(&e),
                format!(
                    "Could not resize file: {}",
                    qimg_driver_api::error::io_message(&e)
                ),
            )
        };
        match prealloc {
            Prealloc::FALLOC if len > old => {
                self.fallocate(0, old, len - old).map_err(|errno| {
                    DriverError::from_errno(
                        errno,
                        format!(
                            "Could not preallocate new data: {}",
                            qimg_driver_api::error::io_message(&std::io::Error::from_raw_os_error(
                                errno
                            ))
                        ),
                    )
                })?;
            }
            Prealloc::FULL if len > old => {
                self.file.set_len(len).map_err(too_large)?;
                self.write_zero_bytes(old, len - old)?;
            }
            _ => self.file.set_len(len).map_err(too_large)?,
        }
        self.ahead.resized(old, len);
        Ok(())
    }

    /// Notes that the file changed (whatever `result` says: a failed
    /// write may have written part of its range).
    fn changed<T>(&self, result: Result<T, DriverError>) -> Result<T, DriverError> {
        self.unsynced.store(true, Ordering::Release);
        result
    }

    /// Allocates the holes in `len` bytes at `offset` that data is about
    /// to be written to (`fallocate` with `FALLOC_FL_KEEP_SIZE`: the
    /// content does not change), only below the file's end, and returns
    /// them (offset, length) (see `engine::fill`). Only on ext4, whose
    /// delayed allocation makes writes into unallocated blocks slower
    /// (convert qcow2 -> raw 18% faster with it; on XFS it gained nothing,
    /// and on tmpfs, which zeroes the pages it allocates, it lost 6%). A
    /// failure (unsupported, no space) turns this off for good: the writes
    /// then allocate, and report what is really wrong.
    pub fn allocate(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let mut holes = Vec::new();
        if !self.fills.load(Ordering::Relaxed) {
            return holes;
        }
        let Ok(file_len) = self.len_now() else {
            return holes;
        };
        let end = offset.saturating_add(len).min(file_len);
        let mut at = offset;
        while at < end {
            let Ok(Some(hole)) = self.seek(at, libc::SEEK_HOLE) else {
                break;
            };
            if hole >= end {
                break;
            }
            let next = match self.seek(hole, libc::SEEK_DATA) {
                Ok(Some(data)) => data.min(end),
                _ => end,
            };
            // Returned even if it fails: a failed call may allocate part.
            holes.push((hole, next - hole));
            let mode = libc::FALLOC_FL_KEEP_SIZE;
            if !super::ahead::fallocate(&self.file, mode, hole, next - hole) {
                self.fills.store(false, Ordering::Relaxed);
                break;
            }
            at = next;
        }
        holes
    }

    /// Whether [`LocalFile::allocate`] is on.
    pub fn allocates(&self) -> bool {
        self.fills.load(Ordering::Relaxed)
    }

    /// Bytes allocated on disk.
    pub fn allocated(&self) -> Result<u64, DriverError> {
        Ok(self.file.metadata().map_err(DriverError::from)?.blocks() * 512)
    }
}

impl Drop for LocalFile {
    fn drop(&mut self) {
        self.ahead.release(&self.file);
    }
}

impl ByteStore for LocalFile {
    fn read_at(&self, offset: u64, mut buf: RSliceMut<'_, u8>) -> RResult<u64, DriverError> {
        catch(|| self.pread(offset, buf.as_mut_slice()))
    }
    fn write_at(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<(), DriverError> {
        catch(|| {
            before_change()?;
            self.changed(self.pwrite(offset, buf.as_slice()))
        })
    }
    fn len(&self) -> RResult<u64, DriverError> {
        catch(|| self.len_now())
    }
    fn set_len(&self, len: u64, prealloc: Prealloc) -> RResult<(), DriverError> {
        catch(|| {
            before_change()?;
            self.changed(self.resize(len, prealloc))
        })
    }
    fn flush(&self) -> RResult<(), DriverError> {
        catch(|| {
            before_change()?;
            if self.cache.flushes() && self.unsynced.swap(false, Ordering::AcqRel) {
                if let Err(e) = self.file.sync_data() {
                    self.unsynced.store(true, Ordering::Release);
                    return Err(DriverError::from(e));
                }
            }
            Ok(())
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> RResult<(), DriverError> {
        catch(|| {
            before_change()?;
            self.changed(self.zeroes(offset, len, punch))
        })
    }
    fn run_at(&self, offset: u64, max: u64) -> RResult<StoreRun, DriverError> {
        catch(|| self.run(offset, max))
    }
    fn allocated_size(&self) -> RResult<u64, DriverError> {
        catch(|| self.allocated())
    }
    fn name(&self) -> RString {
        RString::from(self.name.as_str())
    }
    /// Allocates the file's blocks ahead of its end as it grows (see
    /// [`Ahead`]), once the file is locked.
    fn grow_densely(&self, dense: bool) {
        if dense {
            self.ahead.enable();
        } else {
            self.ahead.disable();
        }
    }
}
