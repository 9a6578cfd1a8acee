//! Page-aligned data buffers, reused between pieces of work.
//!
//! Reads land in page-aligned memory (see [`AlignedBuf`] for why), and a
//! piece of work takes a buffer from a small shared pool instead of
//! allocating one: a fresh multi-MiB allocation per piece costs an `mmap`,
//! a page fault per 4 KiB and a `munmap` (it made `compare` twice as slow).
//! A pool rather than thread-local buffers, because rayon may run another
//! piece on a thread that is waiting inside `join`.

use qimg_driver_util::AlignedBuf;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Buffers kept for reuse.
static POOL: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());
/// At most this many buffers are kept (they exist at the peak anyway:
/// enough for 16 copy workers, `-m 16`, two buffers each)...
const KEPT: usize = 32;
/// ...and none larger than this.
const KEPT_BYTES: usize = 8 << 20;

/// A buffer of a given length taken from the pool; it goes back when dropped.
pub struct Buffer {
    buf: AlignedBuf,
    len: usize,
}

impl Buffer {
    /// A buffer of `len` bytes whose content is whatever its last user left:
    /// the caller fills it.
    pub fn take(len: usize) -> Buffer {
        let mut buf = lock().pop().unwrap_or_default();
        buf.ensure(len);
        Buffer { buf, len }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.buf.len() <= KEPT_BYTES {
            let mut pool = lock();
            if pool.len() < KEPT {
                pool.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<AlignedBuf>> {
    crate::sync::lock(&POOL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_sized_and_reused() {
        let mut first = Buffer::take(3 << 20);
        assert_eq!(first.len(), 3 << 20);
        assert_eq!(first.as_ptr() as usize % qimg_driver_util::BUFFER_ALIGN, 0);
        first[0] = 9;
        let at = first.as_ptr();
        drop(first);
        let second = Buffer::take(1 << 20);
        assert_eq!(second.len(), 1 << 20);
        // Other tests may use the pool concurrently, so getting the same
        // buffer back is likely, not certain: when it comes back, it is
        // kept whole, content included (callers fill what they take).
        if second.as_ptr() == at {
            assert_eq!(second[0], 9);
        }
    }
}
