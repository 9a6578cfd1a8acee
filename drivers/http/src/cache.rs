//! The readahead cache: the last few blocks fetched for small reads, so
//! that a format driver reading its header and tables a few KiB at a time
//! does not pay a round trip for each read.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

/// Blocks kept; a few, for readers in parallel.
pub const BLOCKS: usize = 8;

/// Recently fetched blocks, most recent first.
#[derive(Default)]
pub struct Cache {
    blocks: Mutex<VecDeque<(u64, Vec<u8>)>>,
}

impl Cache {
    fn blocks(&self) -> MutexGuard<'_, VecDeque<(u64, Vec<u8>)>> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies the bytes at `offset` into `buf` if one block holds them all.
    pub fn lookup(&self, offset: u64, buf: &mut [u8]) -> bool {
        let mut blocks = self.blocks();
        let end = offset + buf.len() as u64;
        let found = blocks
            .iter()
            .position(|(start, data)| *start <= offset && end <= start + data.len() as u64);
        let Some(index) = found else {
            return false;
        };
        let Some(block) = blocks.remove(index) else {
            return false;
        };
        let at = (offset - block.0) as usize;
        buf.copy_from_slice(&block.1[at..at + buf.len()]);
        blocks.push_front(block);
        true
    }

    /// A buffer of `len` bytes to fetch the next block into: once the
    /// cache is full, the least recently used block's, taken out of it (so
    /// that a copy does not allocate, and fault in, a new one per block).
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        let mut blocks = self.blocks();
        let mut data = if blocks.len() >= BLOCKS {
            blocks.pop_back().map(|(_, data)| data).unwrap_or_default()
        } else {
            Vec::new()
        };
        drop(blocks);
        data.truncate(len);
        data.resize(len, 0);
        data
    }

    /// Keeps `data`, the bytes at `offset`, dropping the least recently
    /// used block if the cache is full.
    pub fn insert(&self, offset: u64, data: Vec<u8>) {
        let mut blocks = self.blocks();
        blocks.push_front((offset, data));
        blocks.truncate(BLOCKS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_misses_and_eviction() {
        let cache = Cache::default();
        let mut buf = [0u8; 4];
        assert!(!cache.lookup(0, &mut buf));
        cache.insert(100, (0..16).collect());
        assert!(cache.lookup(100, &mut buf));
        assert_eq!(buf, [0, 1, 2, 3]);
        assert!(cache.lookup(112, &mut buf));
        assert_eq!(buf, [12, 13, 14, 15]);
        assert!(!cache.lookup(113, &mut buf), "past the block's end");
        assert!(!cache.lookup(98, &mut buf), "before the block");
        for i in 0..BLOCKS as u64 {
            cache.insert(1000 * (i + 1), vec![i as u8; 16]);
        }
        assert!(!cache.lookup(100, &mut buf), "evicted");
        assert!(cache.lookup(1000, &mut buf));
        assert_eq!(buf, [0; 4]);
        let mut empty = [];
        assert!(cache.lookup(1000, &mut empty));
    }

    #[test]
    fn a_full_cache_lends_its_oldest_block() {
        let cache = Cache::default();
        assert_eq!(cache.buffer(16), vec![0; 16]);
        for i in 0..BLOCKS as u64 {
            cache.insert(1000 * (i + 1), vec![i as u8; 16]);
        }
        let mut buf = [0u8; 4];
        assert!(cache.lookup(1000, &mut buf), "the oldest, now most recent");
        let lent = cache.buffer(8);
        assert_eq!(lent, vec![1; 8], "the least recently used block's buffer");
        assert!(!cache.lookup(2000, &mut buf), "no longer cached");
        assert!(cache.lookup(1000, &mut buf));
    }
}
