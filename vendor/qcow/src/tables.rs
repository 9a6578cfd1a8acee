//! The L1 table and a small cache of L2 tables, with the file's current
//! length (where the next table or cluster goes).
//!
//! Only the L1 entries inside the file are read (and held): those past its
//! end read as 0, as qemu reads zeros there, so a header's table size
//! never sizes an allocation beyond the file's. Entries written past that
//! part are kept aside.
//!
//! Before the first write, [`Tables::guard`] reads every L2 table once:
//! new tables and clusters then go past everything the image names (a
//! damaged image may name space past its end, where the file's end would
//! otherwise hand it out again), and a data cluster lying over the
//! image's own tables is never written in place.

use qimg_driver_api::{ByteStoreBox, DriverError, StoreExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// L2 tables kept in memory (at most 512 KiB each).
const L2_CACHE: usize = 32;
/// EIO, for a table no file can hold.
const EIO: i32 = 5;

/// The furthest byte qemu's block layer addresses: `INT64_MAX` rounded
/// down to 1 GiB (its `BDRV_MAX_LENGTH`).
const MAX_LENGTH: u64 = i64::MAX as u64 & !((1 << 30) - 1);
/// The longest single request qemu's block layer takes: `INT_MAX`
/// rounded down to a sector (its `BDRV_REQUEST_MAX_BYTES`).
const MAX_REQUEST: u64 = i32::MAX as u64 & !511;

/// The error qemu reports for I/O beyond what a file can address.
pub fn eio() -> DriverError {
    DriverError::from_errno(EIO, "Input/output error")
}

/// Refuses, with EIO as qemu's block layer does, a file request of `len`
/// bytes at `offset` that ends past what it addresses.
pub fn check_request(offset: u64, len: u64) -> Result<(), DriverError> {
    match offset.checked_add(len) {
        Some(end) if end <= MAX_LENGTH && len <= MAX_REQUEST => Ok(()),
        _ => Err(eio()),
    }
}

/// The image's tables.
pub struct Tables {
    /// Where the L1 table starts.
    l1_offset: u64,
    /// How many entries the L1 table has.
    l1_entries: u64,
    /// The L1 entries that lie inside the file when opened.
    l1: Vec<u64>,
    /// L1 entries written past that part.
    l1_beyond: BTreeMap<u64, u64>,
    /// Entries in an L2 table.
    l2_entries: usize,
    /// L2 tables by file offset.
    l2_cache: HashMap<u64, Arc<Vec<u64>>>,
    /// The file's length, and past it, everything the tables name once
    /// guarded: where the next table or cluster goes.
    pub end: u64,
    /// The image's own metadata (header, L1 and L2 tables) as sorted
    /// byte ranges, once guarded.
    metadata: Option<Vec<(u64, u64)>>,
}

/// What [`Tables::guard`] may read: a little more than the file, since
/// a sound image's tables do not overlap.
const GUARD_SLACK: u64 = 64 << 20;

impl Tables {
    /// Reads the L1 table of `l1_entries` entries at `l1_offset`.
    pub fn load(
        store: &ByteStoreBox,
        l1_offset: u64,
        l1_entries: u64,
        l2_bits: u8,
    ) -> Result<Tables, DriverError> {
        // qemu reads the whole table in one request, so one it cannot
        // make fails the open; the entries past the file's end are zeros.
        check_request(l1_offset, l1_entries * 8)?;
        let end = store.size()?;
        let in_file = end.saturating_sub(l1_offset) / 8;
        let count = in_file.min(l1_entries) as usize;
        let mut raw = vec![0u8; count * 8];
        store.read_or_zero_at(l1_offset, &mut raw)?;
        Ok(Tables {
            l1_offset,
            l1_entries,
            l1: be_entries(&raw),
            l1_beyond: BTreeMap::new(),
            l2_entries: 1 << l2_bits,
            l2_cache: HashMap::new(),
            end,
            metadata: None,
        })
    }

    /// Readies the tables for writing (once): records the image's metadata
    /// ranges, the header's `header_end` bytes included, and moves `end`
    /// past every table and cluster they name (compressed clusters are
    /// decoded with `cluster_bits`). Refused (EIO) when the L2 tables
    /// inside the file add up to more than it holds, which only tables
    /// overlapping each other do.
    pub fn guard(
        &mut self,
        store: &ByteStoreBox,
        header_end: u64,
        cluster_bits: u8,
    ) -> Result<(), DriverError> {
        if self.metadata.is_some() {
            return Ok(());
        }
        let file_len = self.end;
        let l2_bytes = self.l2_bytes();
        let mut ranges = vec![(0, header_end), (self.l1_offset, self.l1_entries * 8)];
        let mut tables: Vec<u64> = self.l1.iter().copied().filter(|&e| e != 0).collect();
        tables.sort_unstable();
        tables.dedup();
        let inside = tables.iter().filter(|&&t| t < file_len).count() as u64;
        if inside.saturating_mul(l2_bytes) > file_len + GUARD_SLACK {
            return Err(eio());
        }
        let mut floor = file_len.max(self.l1_offset + self.l1_entries * 8);
        let cs = 1u64 << cluster_bits;
        for &t in &tables {
            ranges.push((t, l2_bytes));
            floor = floor.max(t.saturating_add(l2_bytes));
            if t >= file_len {
                continue;
            }
            for &e in self.l2(store, t)?.iter() {
                let end = if e & crate::header::COMPRESSED != 0 {
                    let offset = e & ((1u64 << (63 - cluster_bits)) - 1);
                    offset.saturating_add((e >> (63 - cluster_bits)) & (cs - 1))
                } else {
                    e.saturating_add(cs)
                };
                if e != 0 {
                    floor = floor.max(end);
                }
            }
        }
        ranges.sort_unstable();
        self.metadata = Some(ranges);
        self.end = floor;
        Ok(())
    }

    /// Whether `[offset, offset + len)` of the file holds the image's
    /// metadata (after [`Tables::guard`]).
    pub fn over_metadata(&self, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len);
        self.metadata.as_ref().is_some_and(|ranges| {
            ranges
                .iter()
                .any(|&(at, n)| at < end && offset < at.saturating_add(n))
        })
    }

    /// Bytes of an L2 table.
    pub fn l2_bytes(&self) -> u64 {
        self.l2_entries as u64 * 8
    }

    /// The L1 entry `index` (0 for entries past the table).
    pub fn l1_entry(&self, index: u64) -> u64 {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.l1.get(i).copied())
            .or_else(|| self.l1_beyond.get(&index).copied())
            .unwrap_or(0)
    }

    /// Records a new L2 table for L1 entry `index`.
    pub fn set_l1_entry(
        &mut self,
        store: &ByteStoreBox,
        index: u64,
        l2_offset: u64,
    ) -> Result<(), DriverError> {
        if index >= self.l1_entries {
            return Err(eio());
        }
        let at = self.l1_offset + index * 8;
        store.write_all_at(at, &l2_offset.to_be_bytes())?;
        self.end = self.end.max(at + 8);
        match usize::try_from(index).ok().and_then(|i| self.l1.get_mut(i)) {
            Some(slot) => *slot = l2_offset,
            None => {
                self.l1_beyond.insert(index, l2_offset);
            }
        }
        Ok(())
    }

    /// The L2 table at `offset`, from the cache or the file (zeros past
    /// its end, as qemu reads them).
    pub fn l2(&mut self, store: &ByteStoreBox, offset: u64) -> Result<Arc<Vec<u64>>, DriverError> {
        if let Some(t) = self.l2_cache.get(&offset) {
            return Ok(Arc::clone(t));
        }
        let mut raw = vec![0u8; self.l2_entries * 8];
        check_request(offset, raw.len() as u64)?;
        store.read_or_zero_at(offset, &mut raw)?;
        let table = Arc::new(be_entries(&raw));
        self.cache(offset, Arc::clone(&table));
        Ok(table)
    }

    /// Keeps `table` (at `offset`) in the cache, dropping another if full.
    fn cache(&mut self, offset: u64, table: Arc<Vec<u64>>) {
        if self.l2_cache.len() >= L2_CACHE {
            if let Some(&old) = self.l2_cache.keys().next() {
                self.l2_cache.remove(&old);
            }
        }
        self.l2_cache.insert(offset, table);
    }

    /// Writes a new, empty L2 table at `offset`.
    pub fn new_l2(&mut self, store: &ByteStoreBox, offset: u64) -> Result<(), DriverError> {
        let zeros = vec![0u8; self.l2_entries * 8];
        store.write_all_at(offset, &zeros)?;
        self.end = self.end.max(offset + zeros.len() as u64);
        self.cache(offset, Arc::new(vec![0; self.l2_entries]));
        Ok(())
    }

    /// Sets entry `index` of the L2 table at `l2_offset` to `entry`.
    pub fn set_l2_entry(
        &mut self,
        store: &ByteStoreBox,
        l2_offset: u64,
        index: usize,
        entry: u64,
    ) -> Result<(), DriverError> {
        drop(self.l2(store, l2_offset)?);
        let table = self.l2_cache.get_mut(&l2_offset).ok_or_else(eio)?;
        // Copied only if a reader still holds the old table.
        let slot = Arc::make_mut(table).get_mut(index).ok_or_else(eio)?;
        *slot = entry;
        store.write_all_at(l2_offset + index as u64 * 8, &entry.to_be_bytes())
    }
}

/// Big-endian u64s.
fn be_entries(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|b| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect()
}
