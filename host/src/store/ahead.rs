//! Allocation ahead of appends: a write that extends a local file first
//! allocates the blocks up to `WINDOW` bytes past its end (`fallocate` with
//! `FALLOC_FL_KEEP_SIZE`: the file's length and content do not change).
//!
//! Formats that grow their file by appending whole clusters (qcow2, qed,
//! vdi, vmdk's sparse extents) then write into blocks already allocated,
//! in large contiguous extents laid out in file order, instead of having
//! the file system allocate every appended block on its own (ext4's
//! delayed allocation costs about a fifth of a buffered append's system
//! time). What is still allocated past the end when the file is closed is
//! released; after a crash it stays allocated past the end (space, not
//! data) until the file is truncated or removed.
//! QEMU's `preallocate` filter does the same for the same reason.
//!
//! It is on only for a file whose driver says it grows densely
//! (`ByteStore::grow_densely`): a format that leaves holes inside its file
//! would find them allocated. As a second guard, only an append (a write
//! that starts at or before the end of what is allocated) starts a window.

use crate::sync::lock;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// How far past a write that extends the file its blocks are allocated.
/// Large enough that the file system places the extents of one window
/// together (8 MiB windows came out in scrambled order on a fragmented
/// ext4), small enough that a closed file never held much more.
const WINDOW: u64 = 32 << 20;

/// The allocation state of one writable regular file.
pub struct Ahead {
    /// Writes that end at or below this need nothing: the file is at least
    /// this long, or its blocks up to here are allocated ahead.
    horizon: AtomicU64,
    /// Blocks past the file's end may be allocated (released on drop).
    active: AtomicBool,
    /// The file can allocate ahead (a writable regular file).
    allowed: bool,
    /// Allocation ahead is on: [`Ahead::enable`] turns it on, a failed
    /// `fallocate` (unsupported, or no space) off for good.
    on: AtomicBool,
    /// Serialises the allocations (the fast path takes no lock).
    lock: Mutex<()>,
}

impl Ahead {
    /// The state of a file that is `len` bytes long, off until enabled;
    /// `allowed` is false for anything but a writable regular file (a
    /// block device has nothing to allocate).
    pub fn new(len: u64, allowed: bool) -> Ahead {
        Ahead {
            horizon: AtomicU64::new(len),
            active: AtomicBool::new(false),
            allowed,
            on: AtomicBool::new(false),
            lock: Mutex::new(()),
        }
    }

    /// Turns allocation ahead on, if the file allows it.
    pub fn enable(&self) {
        self.on.store(self.allowed, Ordering::Relaxed);
    }

    /// Turns allocation ahead off (what is allocated stays until release).
    pub fn disable(&self) {
        self.on.store(false, Ordering::Relaxed);
    }

    /// Called before writing up to byte `end` of `file`: if the write
    /// extends the file past what is allocated ahead, allocates the next
    /// window. Failures only switch the allocation off: the write itself
    /// then allocates, and reports what is really wrong.
    pub fn before_write(&self, file: &File, offset: u64, end: u64) {
        if end <= self.horizon.load(Ordering::Acquire) || !self.on.load(Ordering::Relaxed) {
            return;
        }
        let _guard = lock(&self.lock);
        let horizon = self.horizon.load(Ordering::Acquire);
        if end <= horizon {
            return;
        }
        let Ok(meta) = file.metadata() else {
            return;
        };
        let len = meta.len();
        if end <= len {
            // A write inside the file (a raw target): nothing to allocate.
            self.horizon.store(len, Ordering::Release);
            return;
        }
        let from = len.max(horizon);
        if offset > from {
            // Not an append: whatever lies between the end and the write
            // may stay a hole (vpc writes its footer a block past its
            // end), and blocks allocated there would stay allocated.
            return;
        }
        let to = end.saturating_add(WINDOW);
        self.active.store(true, Ordering::Release);
        if fallocate(file, libc::FALLOC_FL_KEEP_SIZE, from, to - from) {
            self.horizon.store(to, Ordering::Release);
        } else {
            self.on.store(false, Ordering::Relaxed);
        }
    }

    /// Notes that the file's length was set to `len`: a shorter file lost
    /// its blocks past `len` (truncation frees them), a longer one needs
    /// nothing up to `len`.
    pub fn resized(&self, old_len: u64, len: u64) {
        let _guard = lock(&self.lock);
        if len < old_len {
            self.horizon.store(len, Ordering::Release);
        } else {
            self.horizon.fetch_max(len, Ordering::AcqRel);
        }
    }

    /// Releases the blocks still allocated past the file's end. Called
    /// when the file is dropped, so no write can race with it: a write
    /// into the released range would lose its data.
    pub fn release(&mut self, file: &File) {
        if !*self.active.get_mut() {
            return;
        }
        let horizon = *self.horizon.get_mut();
        let Ok(meta) = file.metadata() else {
            return;
        };
        let len = meta.len();
        if horizon > len {
            // ext4 frees blocks past the end on a truncation to the same
            // length, and ignores a hole punched there; other file systems
            // may do it the other way round.
            let _ = file.set_len(len);
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            fallocate(file, mode, len, horizon - len);
        }
    }
}

/// `fallocate(2)`; true on success.
pub(super) fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> bool {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return false;
    };
    // SAFETY: plain syscall on a descriptor the caller owns.
    unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    /// A scratch file, removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> (Scratch, File) {
            let path =
                std::env::temp_dir().join(format!("qimg-ahead-{}-{name}", std::process::id()));
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            (Scratch(path), file)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn allocated(file: &File) -> u64 {
        file.metadata().unwrap().blocks() * 512
    }

    /// Writes `len` bytes of 0xa5 at `offset` the way `LocalFile` does.
    fn write(ahead: &Ahead, file: &File, offset: u64, len: usize) {
        ahead.before_write(file, offset, offset + len as u64);
        file.write_all_at(&vec![0xa5; len], offset).unwrap();
    }

    /// True when the file system under the temporary directory can
    /// allocate ahead (tmpfs and ext4 can; some cannot, and then there is
    /// nothing to see).
    fn supported(file: &File) -> bool {
        fallocate(file, libc::FALLOC_FL_KEEP_SIZE, 0, 4096)
            && file.set_len(0).is_ok()
            && allocated(file) == 0
    }

    #[test]
    fn appends_allocate_ahead_and_the_rest_is_released() {
        let (_scratch, file) = Scratch::new("append");
        if !supported(&file) {
            return;
        }
        let mut ahead = Ahead::new(0, true);
        ahead.enable();
        for i in 0..4u64 {
            write(&ahead, &file, i << 20, 1 << 20);
        }
        assert_eq!(file.metadata().unwrap().len(), 4 << 20);
        // The first append allocated a window past its end.
        assert!(allocated(&file) >= (1 << 20) + WINDOW);
        ahead.release(&file);
        assert_eq!(allocated(&file), 4 << 20);
        assert_eq!(file.metadata().unwrap().len(), 4 << 20);
        let mut back = vec![0; 4 << 20];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 0xa5));
    }

    #[test]
    fn a_write_past_a_gap_or_inside_the_file_allocates_nothing_more() {
        let (_scratch, file) = Scratch::new("gap");
        if !supported(&file) {
            return;
        }
        let ahead = Ahead::new(0, true);
        ahead.enable();
        // vpc's footer, a block past the end: the block stays a hole.
        write(&ahead, &file, 2 << 20, 512);
        assert!(allocated(&file) <= 64 << 10);
        // Inside the file now: no allocation ahead either.
        write(&ahead, &file, 1 << 20, 4096);
        assert!(allocated(&file) <= 128 << 10);
    }

    #[test]
    fn off_unless_enabled_and_allowed() {
        let (_scratch, file) = Scratch::new("off");
        let not_enabled = Ahead::new(0, true);
        write(&not_enabled, &file, 0, 1 << 20);
        let not_allowed = Ahead::new(1 << 20, false);
        not_allowed.enable();
        write(&not_allowed, &file, 1 << 20, 1 << 20);
        assert!(allocated(&file) <= 2 << 20);
    }

    #[test]
    fn a_shrunk_file_needs_allocation_again() {
        let (_scratch, file) = Scratch::new("shrink");
        if !supported(&file) {
            return;
        }
        let mut ahead = Ahead::new(0, true);
        ahead.enable();
        write(&ahead, &file, 0, 1 << 20);
        file.set_len(4096).unwrap();
        ahead.resized(1 << 20, 4096);
        write(&ahead, &file, 4096, 1 << 20);
        assert!(allocated(&file) >= (1 << 20) + WINDOW);
        ahead.release(&file);
        assert_eq!(allocated(&file), (1 << 20) + 4096);
    }
}
