//! The veil over a new image that `convert` or `dd` is still writing: the
//! bytes that make the file an image are kept in memory and the file holds
//! zeros there until the copy is complete and the image closed. A copy
//! killed at any point (SIGKILL, power loss) leaves a file that neither
//! qemu nor qimg opens as an image, never one that passes for a complete
//! copy.
//!
//! Veiled are the first [`VEILED`] bytes (every format's magic, and a
//! dynamic VHD's header too) and every sector the creation writes further
//! on that starts with a format's magic (a VHD's footer, the only thing
//! that makes a fixed VHD one).
//!
//! A veil belongs to a file (device and inode) or a network store (its
//! node name), not to one open handle: every store this process opens on
//! it while it is veiled reads and writes through the same veil, so the
//! driver that creates the image and the one that then writes it agree.

use crate::sync::lock;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// How many bytes at the start of the file a veil keeps.
pub const VEILED: u64 = 4096;

/// The size of a footer a veil keeps.
const SECTOR: usize = 512;

/// What a veil is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// A local file: its device and inode.
    File(u64, u64),
    /// A network store: its node name.
    Node(String),
}

impl Key {
    /// The key of the local file `meta` describes.
    pub fn of_file(meta: &Metadata) -> Key {
        Key::File(meta.dev(), meta.ino())
    }
}

/// The bytes that make a file being written an image, as its writers see
/// them.
pub struct Veil {
    /// What it is over.
    key: Key,
    /// The veiled ranges (offset, what the writers put there: zeros where
    /// they wrote nothing or the file ends). The head comes first.
    parts: Mutex<Vec<(u64, Vec<u8>)>>,
    /// The image is being created: footers it writes are veiled too.
    creating: AtomicBool,
    /// Still veiled: cleared when the real bytes are written.
    active: AtomicBool,
}

/// The veils this process holds.
static VEILS: Mutex<Vec<Arc<Veil>>> = Mutex::new(Vec::new());

/// Veils the store `key` names (an image is about to be created there).
pub fn cover(key: Key) -> Arc<Veil> {
    let veil = Arc::new(Veil::new(key));
    lock(&VEILS).push(veil.clone());
    veil
}

/// The veil over the store `key` names, if it has one.
pub fn find(key: &Key) -> Option<Arc<Veil>> {
    let veils = lock(&VEILS);
    veils.iter().find(|v| v.key == *key && v.active()).cloned()
}

/// Where `offset..offset+len` and the part at `at` of `size` bytes meet:
/// (index into the part, index into the range, length).
fn meet(at: u64, size: usize, offset: u64, len: u64) -> Option<(usize, usize, usize)> {
    let start = at.max(offset);
    let end = (at + size as u64).min(offset.saturating_add(len));
    if start >= end {
        return None;
    }
    Some((
        (start - at) as usize,
        (start - offset) as usize,
        (end - start) as usize,
    ))
}

impl Veil {
    fn new(key: Key) -> Veil {
        Veil {
            key,
            parts: Mutex::new(vec![(0, vec![0; VEILED as usize])]),
            creating: AtomicBool::new(true),
            active: AtomicBool::new(true),
        }
    }

    /// Whether the file is still veiled.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// The image is created: from now on only what is veiled stays so.
    pub fn created(&self) {
        self.creating.store(false, Ordering::Release);
    }

    /// Puts the writers' bytes over `buf`, which holds the `got` bytes read
    /// from the file at `offset`.
    pub fn read_over(&self, offset: u64, buf: &mut [u8], got: u64) {
        for (at, bytes) in lock(&self.parts).iter() {
            if let Some((from, to, n)) = meet(*at, bytes.len(), offset, got) {
                buf[to..to + n].copy_from_slice(&bytes[from..from + n]);
            }
        }
    }

    /// Takes the veiled part of a write of `buf` at `offset`. Returns what
    /// to write to the file instead, zeros there, or `None` when the write
    /// touches nothing veiled.
    pub fn write_over(&self, offset: u64, buf: &[u8]) -> Option<Vec<u8>> {
        let mut parts = lock(&self.parts);
        if self.creating.load(Ordering::Acquire)
            && offset >= VEILED
            && buf.len() >= SECTOR
            && crate::block::magic::recognise(&buf[..SECTOR], "").is_some()
            && !parts.iter().any(|(at, _)| *at == offset)
        {
            parts.push((offset, vec![0; SECTOR]));
        }
        let mut file_bytes: Option<Vec<u8>> = None;
        for (at, bytes) in parts.iter_mut() {
            if let Some((from, to, n)) = meet(*at, bytes.len(), offset, buf.len() as u64) {
                bytes[from..from + n].copy_from_slice(&buf[to..to + n]);
                file_bytes.get_or_insert_with(|| buf.to_vec())[to..to + n].fill(0);
            }
        }
        file_bytes
    }

    /// Notes that `offset..offset+len` now reads as zeros (zeroed, or cut
    /// off and grown again).
    pub fn zeroed(&self, offset: u64, len: u64) {
        for (at, bytes) in lock(&self.parts).iter_mut() {
            if let Some((from, _, n)) = meet(*at, bytes.len(), offset, len) {
                bytes[from..from + n].fill(0);
            }
        }
    }

    /// Ends the veil: returns what to write where in a file now `len`
    /// bytes long. Later handles on the file see it as it is.
    pub fn lift(&self, len: u64) -> Vec<(u64, Vec<u8>)> {
        self.active.store(false, Ordering::Release);
        lock(&VEILS).retain(|v| v.key != self.key);
        lock(&self.parts)
            .iter()
            .filter_map(|(at, bytes)| {
                let (from, _, n) = meet(*at, bytes.len(), 0, len)?;
                Some((*at, bytes[from..from + n].to_vec()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_into_the_head_reach_the_file_as_zeros_and_read_back() {
        let v = Veil::new(Key::File(0, 0));
        let buf = vec![7u8; 8192];
        let to_file = v.write_over(4000, &buf).expect("overlaps");
        assert!(to_file[..96].iter().all(|&b| b == 0));
        assert!(to_file[96..].iter().all(|&b| b == 7));
        let mut read = vec![0u8; 200];
        v.read_over(3950, &mut read, 200);
        assert!(read[..50].iter().all(|&b| b == 0));
        assert!(read[50..146].iter().all(|&b| b == 7));
        // Past the head, and past what the file returned, nothing is put in.
        assert!(read[146..].iter().all(|&b| b == 0));
        let mut short = vec![0u8; 200];
        v.read_over(3950, &mut short, 100);
        assert!(short[50..100].iter().all(|&b| b == 7));
        assert!(short[100..].iter().all(|&b| b == 0));
        assert!(v.write_over(VEILED, &buf).is_none());
    }

    #[test]
    fn footers_written_while_creating_are_veiled_and_later_data_is_not() {
        let v = Veil::new(Key::File(0, 0));
        let mut footer = vec![0u8; 512];
        footer[..8].copy_from_slice(b"conectix");
        let to_file = v.write_over(1 << 20, &footer).expect("a footer");
        assert!(to_file.iter().all(|&b| b == 0));
        v.created();
        assert!(v.write_over(2 << 20, &footer).is_none());
        // Guest data over the footer's place: veiled until the end.
        let data = vec![5u8; 1024];
        let to_file = v.write_over((1 << 20) - 512, &data).expect("overlaps");
        assert!(to_file[..512].iter().all(|&b| b == 5));
        assert!(to_file[512..].iter().all(|&b| b == 0));
        let lifted = v.lift(3 << 20);
        assert_eq!(lifted.len(), 2);
        assert_eq!(lifted[1], (1 << 20, vec![5u8; 512]));
    }

    #[test]
    fn zeroed_bytes_and_the_lifted_head_follow_the_file() {
        let v = Veil::new(Key::File(0, 0));
        v.write_over(0, &[1u8; 100]);
        v.zeroed(50, 1000);
        let lifted = v.lift(80);
        assert_eq!(lifted.len(), 1);
        let (at, head) = &lifted[0];
        assert_eq!((*at, head.len()), (0, 80));
        assert!(head[..50].iter().all(|&b| b == 1));
        assert!(head[50..].iter().all(|&b| b == 0));
        assert!(!v.active());
    }
}
