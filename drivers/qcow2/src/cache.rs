//! A write-back cache of metadata tables (L2 tables, refcount blocks), keyed
//! by host offset. Dirty tables stay until the owner writes them out in the
//! order crash consistency needs (see [`crate::meta::Meta::flush`]); clean
//! ones are evicted least-recently-used once the cache holds `limit` tables.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a table's host offset with one multiply:
/// lookups happen for every cluster a walk visits, and SipHash's
/// resistance to chosen keys buys nothing for offsets read from our own
/// tables.
#[derive(Default)]
struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // The product's well-mixed high half is folded into the low bits,
        // which pick the bucket.
        let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 32);
    }
}

/// The map type of the cache.
type Slots<T> = HashMap<u64, Slot<T>, BuildHasherDefault<OffsetHasher>>;

struct Slot<T> {
    table: T,
    dirty: bool,
    tick: u64,
}

/// Tables of type `T` by host offset.
pub struct Cache<T> {
    slots: Slots<T>,
    tick: u64,
    limit: usize,
}

impl<T> Cache<T> {
    /// An empty cache that keeps up to `limit` tables (at least 4).
    pub fn new(limit: usize) -> Self {
        Cache {
            slots: Slots::default(),
            tick: 0,
            limit: limit.max(4),
        }
    }

    /// The table at `offset`, if cached.
    pub fn get(&mut self, offset: u64) -> Option<&mut T> {
        self.tick += 1;
        let tick = self.tick;
        self.slots.get_mut(&offset).map(|s| {
            s.tick = tick;
            &mut s.table
        })
    }

    /// True if the table at `offset` is cached.
    pub fn contains(&self, offset: u64) -> bool {
        self.slots.contains_key(&offset)
    }

    /// Adds a table, evicting clean ones first if the cache is full.
    pub fn insert(&mut self, offset: u64, table: T, dirty: bool) {
        if self.slots.len() >= self.limit {
            self.evict_clean();
        }
        self.tick += 1;
        self.slots.insert(
            offset,
            Slot {
                table,
                dirty,
                tick: self.tick,
            },
        );
    }

    /// Marks the table at `offset` as needing a write.
    pub fn mark_dirty(&mut self, offset: u64) {
        if let Some(s) = self.slots.get_mut(&offset) {
            s.dirty = true;
        }
    }

    /// Forgets the table at `offset` (its cluster was freed).
    pub fn remove(&mut self, offset: u64) {
        self.slots.remove(&offset);
    }

    /// True once dirty tables fill the cache: the owner should write them out.
    pub fn full_of_dirty(&self) -> bool {
        self.slots.len() >= self.limit && self.slots.values().all(|s| s.dirty)
    }

    /// Offsets of the dirty tables, ascending.
    pub fn dirty(&self) -> Vec<u64> {
        let mut list: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, _)| *k)
            .collect();
        list.sort_unstable();
        list
    }

    /// The table at `offset` for writing out; marks it clean.
    pub fn take_dirty(&mut self, offset: u64) -> Option<&T> {
        self.slots.get_mut(&offset).map(|s| {
            s.dirty = false;
            &s.table
        })
    }

    /// Drops the least recently used half of the clean tables.
    fn evict_clean(&mut self) {
        let mut clean: Vec<(u64, u64)> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.dirty)
            .map(|(k, s)| (s.tick, *k))
            .collect();
        clean.sort_unstable();
        let drop = clean.len().div_ceil(2);
        for (_, k) in clean.into_iter().take(drop) {
            self.slots.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_tables_are_evicted_dirty_ones_kept() {
        let mut c = Cache::new(4);
        c.insert(0, 0u8, true);
        for k in 1..10 {
            c.insert(k, k as u8, false);
        }
        assert!(c.contains(0));
        assert!(c.slots.len() <= 5);
        assert_eq!(c.dirty(), vec![0]);
        assert_eq!(c.take_dirty(0), Some(&0));
        assert!(c.dirty().is_empty());
    }
}
