//! QEMU-compatible image locks.
//!
//! QEMU marks each permission it holds on an image with a shared OFD read lock
//! on byte 100+bit, and each permission it refuses to share with one on byte
//! 200+bit (bits: consistent read 0, write 1, write unchanged 2, resize 3). A
//! conflict is found by asking F_OFD_GETLK whether a one-byte write lock could be
//! placed: it could not if any other open file description holds a read lock there.

use qimg_driver_api::{DriverError, ErrorKind};
use std::fs::File;
use std::os::unix::io::AsRawFd;

/// Permission bits, as QEMU numbers them.
pub mod perm {
    /// Consistent read.
    pub const READ: u32 = 1 << 0;
    /// Write.
    pub const WRITE: u32 = 1 << 1;
    // Bit 2, "write unchanged", is never taken by qemu-img's commands.
    /// Resize.
    pub const RESIZE: u32 = 1 << 3;
}

/// Number of permission bits QEMU locks.
const PERM_BITS: u32 = 4;
/// First byte of the "permission held" locks.
const PERM_BASE: i64 = 100;
/// First byte of the "permission not shared" locks.
const SHARED_BASE: i64 = 200;

/// The name QEMU gives a permission bit in its messages.
fn perm_name(bit: u32) -> &'static str {
    match bit {
        0 => "consistent read",
        1 => "write",
        2 => "write unchanged",
        _ => "resize",
    }
}

/// What a file an image keeps besides its own holds, for its locks
/// ([`LockSpec::for_related`]), as QEMU locks each kind (measured against
/// qemu-io and qemu-nbd holders).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Related {
    /// Metadata of its own (a sparse vmdk extent): locked as the image file
    /// of a format with metadata.
    Metadata,
    /// A detached LUKS header: the command's locks alone.
    Header,
    /// Guest data only (a qcow2 data file, a flat extent): never resized by
    /// others while anything is held, and resized by a writer.
    Data,
}

/// What a command's open needs and what it refuses to share, before the
/// image's format adds its own needs ([`LockSpec::for_format`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockSpec {
    /// Permissions held.
    pub perm: u32,
    /// Permissions others may not hold.
    pub unshared: u32,
    /// `-U` (force-share): the user shares everything, and so does the
    /// format's metadata, as QEMU's force-share does.
    pub forced: bool,
}

impl LockSpec {
    /// Describing an image (`info`): no permission held.
    pub const DESCRIBE: LockSpec = LockSpec {
        perm: 0,
        unshared: 0,
        forced: false,
    };
    /// A read-only open that lets others do anything with the data (map,
    /// compare, measure…); a format with metadata still refuses writers.
    pub const READ_SHARED: LockSpec = LockSpec {
        perm: perm::READ,
        unshared: 0,
        forced: false,
    };
    /// A read-only open with `-U`: shares everything, whatever the format.
    pub const FORCE_SHARED: LockSpec = LockSpec {
        perm: perm::READ,
        unshared: 0,
        forced: true,
    };
    /// A read-only open whose content must not change underneath (convert source).
    pub const READ_STABLE: LockSpec = LockSpec {
        perm: perm::READ,
        unshared: perm::WRITE | perm::RESIZE,
        forced: false,
    };
    /// A read-write open.
    pub const READ_WRITE: LockSpec = LockSpec {
        perm: perm::READ | perm::WRITE,
        unshared: 0,
        forced: false,
    };
    /// A read-write open that also resizes.
    pub const RESIZE: LockSpec = LockSpec {
        perm: perm::READ | perm::WRITE | perm::RESIZE,
        unshared: 0,
        forced: false,
    };
    /// Creating an image (held while it is formatted).
    pub const CREATE: LockSpec = LockSpec {
        perm: perm::WRITE | perm::RESIZE,
        unshared: perm::RESIZE,
        forced: false,
    };

    /// A reader's locks: [`LockSpec::FORCE_SHARED`] with `-U`, else
    /// [`LockSpec::READ_SHARED`].
    pub fn reader(force_share: bool) -> LockSpec {
        if force_share {
            LockSpec::FORCE_SHARED
        } else {
            LockSpec::READ_SHARED
        }
    }

    /// A reader whose content must not change: [`LockSpec::FORCE_SHARED`]
    /// with `-U`, else [`LockSpec::READ_STABLE`].
    pub fn stable_reader(force_share: bool) -> LockSpec {
        if force_share {
            LockSpec::FORCE_SHARED
        } else {
            LockSpec::READ_STABLE
        }
    }

    /// The locks on a file an image keeps besides its own (`kind`): the
    /// command's, as QEMU hands its permissions down to such a file, with
    /// write only where the file is opened for writing.
    pub fn for_related(self, writable: bool, kind: Related) -> LockSpec {
        let mut spec = match kind {
            Related::Metadata => self.for_format(true),
            Related::Data | Related::Header => self,
        };
        if writable {
            spec.perm |= perm::WRITE;
        } else {
            spec.perm &= !(perm::WRITE | perm::RESIZE);
        }
        if kind == Related::Data && !spec.forced && spec.perm != 0 {
            if writable {
                spec.perm |= perm::RESIZE;
            }
            spec.unshared |= perm::RESIZE;
        }
        spec
    }

    /// The locks on the image file once its format is known. A format that
    /// keeps metadata in the file (every one but raw, whose guest bytes are
    /// the file's: `caps::IDENTITY_MAPPED`) can never let another process
    /// write or resize the file under it, reading or writing, and may grow
    /// the file whenever it writes; this is what QEMU takes (measured with
    /// qemu-io: a read-write qcow2 holds bytes 100, 101, 103, 201 and 203, a
    /// read-only one 100, 201 and 203; raw only what its user asks). `-U`
    /// lifts the refusals, as QEMU's force-share does.
    pub fn for_format(self, has_metadata: bool) -> LockSpec {
        if !has_metadata {
            return self;
        }
        let mut spec = self;
        if spec.perm & perm::WRITE != 0 {
            spec.perm |= perm::RESIZE;
        }
        if !spec.forced {
            spec.unshared |= perm::WRITE | perm::RESIZE;
        }
        spec
    }
}

/// Locks held on one open file description; released on drop.
#[derive(Debug)]
pub struct ImageLock {
    file: File,
}

fn flock(kind: i32, start: i64) -> libc::flock {
    // SAFETY: flock is plain data; zero is a valid initial state.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = 1;
    fl
}

fn set(file: &File, kind: i32, start: i64) -> Result<(), i32> {
    let mut fl = flock(kind, start);
    // SAFETY: fcntl with a valid flock pointer on an fd we own.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    }
}

/// True if another open file description holds a lock on `byte`.
fn taken(file: &File, byte: i64) -> Result<bool, i32> {
    let mut fl = flock(libc::F_WRLCK, byte);
    // SAFETY: fcntl with a valid flock pointer on an fd we own.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(fl.l_type != libc::F_UNLCK as i16)
}

impl ImageLock {
    /// Takes the locks of `spec` on `file` and checks for conflicts, with QEMU's
    /// message (`Failed to get "write" lock` + hint naming `name`).
    pub fn acquire(file: &File, spec: LockSpec, name: &str) -> Result<ImageLock, DriverError> {
        let file = file.try_clone().map_err(DriverError::from)?;
        let lock = ImageLock { file };
        let conflict = |message: String| {
            DriverError::new(
                ErrorKind::LOCKED,
                format!("{message}\nIs another process using the image [{name}]?"),
            )
        };
        // A byte another process holds a write lock on cannot be locked at
        // all: QEMU says so without its hint.
        let unlockable =
            |byte: i64| DriverError::new(ErrorKind::LOCKED, format!("Failed to lock byte {byte}"));
        for bit in 0..PERM_BITS {
            if spec.perm & (1 << bit) != 0 {
                set(&lock.file, libc::F_RDLCK, PERM_BASE + bit as i64)
                    .map_err(|_| unlockable(PERM_BASE + bit as i64))?;
            }
            if spec.unshared & (1 << bit) != 0 {
                set(&lock.file, libc::F_RDLCK, SHARED_BASE + bit as i64)
                    .map_err(|_| unlockable(SHARED_BASE + bit as i64))?;
            }
        }
        for bit in 0..PERM_BITS {
            if spec.perm & (1 << bit) != 0
                && taken(&lock.file, SHARED_BASE + bit as i64).unwrap_or(false)
            {
                return Err(conflict(format!(
                    "Failed to get \"{}\" lock",
                    perm_name(bit)
                )));
            }
        }
        for bit in 0..PERM_BITS {
            if spec.unshared & (1 << bit) != 0
                && taken(&lock.file, PERM_BASE + bit as i64).unwrap_or(false)
            {
                return Err(conflict(format!(
                    "Failed to get shared \"{}\" lock",
                    perm_name(bit)
                )));
            }
        }
        Ok(lock)
    }
}

impl Drop for ImageLock {
    fn drop(&mut self) {
        for bit in 0..PERM_BITS as i64 {
            let _ = set(&self.file, libc::F_UNLCK, PERM_BASE + bit);
            let _ = set(&self.file, libc::F_UNLCK, SHARED_BASE + bit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("qimg-lock-{}-{name}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    #[test]
    fn stable_reader_blocks_writer_and_is_released_on_drop() {
        let (path, a) = temp("rw");
        let b = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let reader = ImageLock::acquire(&a, LockSpec::READ_STABLE, "x").unwrap();
        let err = ImageLock::acquire(&b, LockSpec::READ_WRITE, "x").unwrap_err();
        assert_eq!(
            err.message.as_str(),
            "Failed to get \"write\" lock\nIs another process using the image [x]?"
        );
        drop(reader);
        ImageLock::acquire(&b, LockSpec::READ_WRITE, "x").unwrap();
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn metadata_formats_refuse_writers_unless_forced() {
        let reader = LockSpec::READ_SHARED.for_format(true);
        assert_eq!(reader.perm, perm::READ);
        assert_eq!(reader.unshared, perm::WRITE | perm::RESIZE);
        let writer = LockSpec::READ_WRITE.for_format(true);
        assert_eq!(writer.perm, perm::READ | perm::WRITE | perm::RESIZE);
        assert_eq!(writer.unshared, perm::WRITE | perm::RESIZE);
        assert_eq!(LockSpec::FORCE_SHARED.for_format(true).unshared, 0);
        assert_eq!(LockSpec::READ_WRITE.for_format(false), LockSpec::READ_WRITE);
    }

    #[test]
    fn two_metadata_writers_exclude_each_other() {
        let (path, a) = temp("twowriters");
        let b = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let writer = LockSpec::READ_WRITE.for_format(true);
        let _first = ImageLock::acquire(&a, writer, "z").unwrap();
        let err = ImageLock::acquire(&b, writer, "z").unwrap_err();
        assert!(err.message.starts_with("Failed to get \"write\" lock"));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn writer_blocks_stable_reader_with_shared_message() {
        let (path, a) = temp("shared");
        let b = std::fs::OpenOptions::new().read(true).open(&path).unwrap();
        let _writer = ImageLock::acquire(&a, LockSpec::READ_WRITE, "y").unwrap();
        let err = ImageLock::acquire(&b, LockSpec::READ_STABLE, "y").unwrap_err();
        assert!(err
            .message
            .starts_with("Failed to get shared \"write\" lock"));
        ImageLock::acquire(&b, LockSpec::READ_SHARED, "y").unwrap();
        std::fs::remove_file(path).unwrap();
    }
}
