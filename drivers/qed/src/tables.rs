//! The L1 table and a cache of L2 tables (spec, "Tables"), with the
//! crash-safe write-back order: new data clusters are made durable first,
//! then the L2 tables that point at them, then the L1 entries that point at
//! new L2 tables. A kill in between leaves at worst clusters nothing
//! references (leaks), never an entry pointing at unwritten data.

use crate::error::{Error, Result};
use crate::header::Header;
use qimg_driver_api::{ByteStoreBox, StoreExt};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Bytes of L2 tables kept in memory before the cache is written back and
/// emptied (at least one table is always kept).
const CACHE_BYTES: usize = 64 << 20;

/// Table entries per 512-byte sector: the unit a table is written back in.
const SECTOR_ENTRIES: usize = 512 / 8;

/// What a guest cluster's L2 entry says (spec, "Data cluster offsets").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cluster {
    /// Not allocated: read from the backing file, or zeros.
    Unallocated,
    /// Reads as zeros, hiding the backing file.
    Zero,
    /// Data at this file offset.
    Data(u64),
}

impl Cluster {
    /// The L2 entry for this cluster.
    pub fn entry(self) -> u64 {
        match self {
            Cluster::Unallocated => 0,
            Cluster::Zero => 1,
            Cluster::Data(offset) => offset,
        }
    }
}

/// The image's metadata, kept under the image lock.
pub struct Tables {
    /// The header as last written.
    pub header: Header,
    /// The L1 table.
    pub l1: Vec<u64>,
    /// L1 indexes changed since the last write-back.
    l1_dirty: BTreeSet<usize>,
    /// Cached L2 tables by file offset.
    l2: HashMap<u64, Vec<u64>>,
    /// Cached tables changed since the last write-back, with the sectors
    /// of each that changed. Only those are written: a damaged image's
    /// table can overlap data clusters, which the rest of the cached copy
    /// would write stale bytes over (qemu writes changed sectors too).
    l2_dirty: BTreeMap<u64, BTreeSet<usize>>,
    /// End of the file's whole clusters: where the next cluster is allocated.
    pub end: u64,
    /// `end` when the image was opened. An entry on disk past it (a file
    /// cut short) stays invalid when the file grows: as the file grows
    /// past it, it would name a cluster allocated since, for another guest
    /// cluster (qemu checks such entries against the grown file, so a copy
    /// into such an image fails or aliases clusters by the writes' order).
    open_end: u64,
    /// L1 indexes whose table offset was invalid at open.
    stale_l1: HashSet<usize>,
    /// L2 tables whose entries were screened against `open_end`.
    screened: HashSet<u64>,
    /// L2 entries (table offset, index) past `open_end` when read, until
    /// a write sets them.
    stale: HashSet<(u64, usize)>,
    /// Guest clusters given a place by `reserve` that no write has used
    /// yet, with their file offsets.
    pub reserved: BTreeMap<u64, u64>,
    /// Guest clusters given their place and being written outside the
    /// lock: their entries are set once the data is written.
    pub busy: BTreeSet<u64>,
}

/// What L2 entry `entry` says, checked against `header` and the end of
/// the file's clusters `end` (spec, "Data cluster offsets").
fn decode(entry: u64, header: &Header, end: u64) -> Result<Cluster> {
    match entry {
        0 => Ok(Cluster::Unallocated),
        1 => Ok(Cluster::Zero),
        e if header.cluster_offset_valid(e, end) => Ok(Cluster::Data(e)),
        _ => Err(Error::BadOffset),
    }
}

/// Reads a table of `entries` little-endian offsets at `offset`.
pub fn read_table(store: &ByteStoreBox, offset: u64, entries: u64) -> Result<Vec<u64>> {
    let mut raw = vec![0u8; (entries * 8) as usize];
    // The file's last sector reads whole, its missing bytes as zeros,
    // as qemu reads it.
    store.read_or_zero_at(offset, &mut raw)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect())
}

fn table_bytes(table: &[u64]) -> Vec<u8> {
    table.iter().flat_map(|e| e.to_le_bytes()).collect()
}

impl Tables {
    /// Loads the L1 table of an image whose header was checked against a
    /// file of `file_len` bytes.
    pub fn load(store: &ByteStoreBox, header: Header, file_len: u64) -> Result<Tables> {
        let l1 = read_table(store, header.l1_table_offset, header.table_entries())?;
        let end = header.file_clusters_end(file_len);
        let stale_l1 = l1
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t != 0 && !header.table_offset_valid(t, end))
            .map(|(i, _)| i)
            .collect();
        Ok(Tables {
            header,
            l1,
            l1_dirty: BTreeSet::new(),
            l2: HashMap::new(),
            l2_dirty: BTreeMap::new(),
            end,
            open_end: end,
            stale_l1,
            screened: HashSet::new(),
            stale: HashSet::new(),
            reserved: BTreeMap::new(),
            busy: BTreeSet::new(),
        })
    }

    /// The L2 table at `offset`, read if not cached. The offset must have
    /// been checked with [`Header::table_offset_valid`].
    fn l2_table(&mut self, store: &ByteStoreBox, offset: u64) -> Result<&mut Vec<u64>> {
        if !self.l2.contains_key(&offset) {
            let bytes = self.header.table_bytes() as usize;
            if !self.l2.is_empty() && (self.l2.len() + 1) * bytes > CACHE_BYTES {
                self.write_back(store)?;
                self.l2.clear();
            }
            let table = read_table(store, offset, self.header.table_entries())?;
            if self.screened.insert(offset) {
                for (i, &e) in table.iter().enumerate() {
                    if e > 1 && !self.header.cluster_offset_valid(e, self.open_end) {
                        self.stale.insert((offset, i));
                    }
                }
            }
            self.l2.insert(offset, table);
        }
        self.l2.get_mut(&offset).ok_or(Error::BadOffset)
    }

    /// The L2 table offset for L1 index `index`, checked (0: none).
    fn l2_offset(&self, index: usize) -> Result<u64> {
        match self.l1.get(index).copied() {
            None | Some(0) => Ok(0),
            Some(_) if self.stale_l1.contains(&index) => Err(Error::BadOffset),
            Some(t) if self.header.table_offset_valid(t, self.end) => Ok(t),
            Some(_) => Err(Error::BadOffset),
        }
    }

    /// What guest cluster `cluster` maps to.
    pub fn lookup(&mut self, store: &ByteStoreBox, cluster: u64) -> Result<Cluster> {
        let entries = self.header.table_entries();
        let table = self.l2_offset((cluster / entries) as usize)?;
        if table == 0 {
            return Ok(Cluster::Unallocated);
        }
        let at = (cluster % entries) as usize;
        let entry = self.l2_table(store, table)?[at];
        if self.stale.contains(&(table, at)) {
            return Err(Error::BadOffset);
        }
        decode(entry, &self.header, self.end)
    }

    /// How many clusters from `cluster` on (at most `max`) `keep` accepts,
    /// given each one's distance from `cluster` and what it maps to: the
    /// first it refuses ends the count. Entries are read a table at a time
    /// (one cache lookup per table, not per cluster); an invalid one ends
    /// the count too, and [`Tables::lookup`] fails when a run starts there
    /// (qemu checks the first cluster of a run only, so what comes before
    /// an invalid entry maps and reads).
    pub fn count_while(
        &mut self,
        store: &ByteStoreBox,
        cluster: u64,
        max: u64,
        mut keep: impl FnMut(u64, Cluster) -> bool,
    ) -> Result<u64> {
        let entries = self.header.table_entries();
        let header = self.header.clone();
        let end = self.end;
        let mut n = 0;
        while n < max {
            let c = cluster + n;
            let first = c % entries;
            let count = (entries - first).min(max - n);
            // An invalid table offset ends the count as an invalid entry
            // does: the lookup that starts there fails.
            let Ok(table) = self.l2_offset((c / entries) as usize) else {
                return Ok(n);
            };
            if table == 0 {
                for i in 0..count {
                    if !keep(n + i, Cluster::Unallocated) {
                        return Ok(n + i);
                    }
                }
            } else {
                self.l2_table(store, table)?;
                let l2 = self.l2.get(&table).ok_or(Error::BadOffset)?;
                for i in 0..count {
                    let at = (first + i) as usize;
                    if self.stale.contains(&(table, at)) {
                        return Ok(n + i);
                    }
                    let Ok(what) = decode(l2[at], &header, end) else {
                        return Ok(n + i);
                    };
                    if !keep(n + i, what) {
                        return Ok(n + i);
                    }
                }
            }
            n += count;
        }
        Ok(n)
    }

    /// Reserves `clusters` clusters at the end of the file.
    pub fn allocate(&mut self, clusters: u64) -> u64 {
        let at = self.end;
        self.end += clusters * self.header.cluster_bytes();
        at
    }

    /// Points guest cluster `cluster` at `what`, allocating its L2 table
    /// (after any data just allocated) if it has none. Written back by
    /// [`Tables::write_back`].
    pub fn set(&mut self, store: &ByteStoreBox, cluster: u64, what: Cluster) -> Result<()> {
        let entries = self.header.table_entries();
        let table = self.l2_for(cluster)?;
        let at = (cluster % entries) as usize;
        self.l2_table(store, table)?[at] = what.entry();
        self.stale.remove(&(table, at));
        self.l2_dirty
            .entry(table)
            .or_default()
            .insert(at / SECTOR_ENTRIES);
        Ok(())
    }

    /// The offset of the L2 table for guest cluster `cluster`, allocating
    /// an empty one at the end of the file if it has none.
    pub fn l2_for(&mut self, cluster: u64) -> Result<u64> {
        let entries = self.header.table_entries();
        let index = (cluster / entries) as usize;
        let table = self.l2_offset(index)?;
        if table != 0 {
            return Ok(table);
        }
        let slot = self.l1.get_mut(index).ok_or(Error::BadOffset)?;
        let table = self.end;
        *slot = table;
        self.allocate(self.header.table_size.into());
        self.screened.insert(table);
        self.l2.insert(table, vec![0; entries as usize]);
        self.l1_dirty.insert(index);
        let sectors = entries as usize / SECTOR_ENTRIES;
        self.l2_dirty.insert(table, (0..sectors).collect());
        Ok(table)
    }

    /// True if tables changed since the last write-back.
    pub fn dirty(&self) -> bool {
        !self.l1_dirty.is_empty() || !self.l2_dirty.is_empty()
    }

    /// Writes changed tables back in the crash-safe order: data (already
    /// written) flushed, then L2 tables, flushed, then L1 entries.
    pub fn write_back(&mut self, store: &ByteStoreBox) -> Result<()> {
        if !self.dirty() {
            return Ok(());
        }
        store.flush().into_result()?;
        for (offset, sectors) in std::mem::take(&mut self.l2_dirty) {
            let Some(table) = self.l2.get(&offset) else {
                continue;
            };
            // Runs of consecutive changed sectors, one write each.
            let mut sectors = sectors.into_iter().peekable();
            while let Some(first) = sectors.next() {
                let mut last = first;
                while sectors.next_if(|&s| s == last + 1).is_some() {
                    last += 1;
                }
                let entries = &table[first * SECTOR_ENTRIES..(last + 1) * SECTOR_ENTRIES];
                let at = offset + (first * 512) as u64;
                store.write_all_at(at, &table_bytes(entries))?;
            }
        }
        if !self.l1_dirty.is_empty() {
            store.flush().into_result()?;
            let bytes = table_bytes(&self.l1);
            for index in std::mem::take(&mut self.l1_dirty) {
                let at = index * 8;
                store.write_all_at(self.header.l1_table_offset + at as u64, &bytes[at..at + 8])?;
            }
        }
        Ok(())
    }

    /// Writes the header (64 bytes; the backing name after it is kept).
    pub fn write_header(&self, store: &ByteStoreBox) -> Result<()> {
        store.write_all_at(0, &self.header.to_bytes())?;
        Ok(())
    }

    /// Forgets cached L2 tables (after a repair rewrote them on disk,
    /// clearing every entry invalid against the file as it is now: tables
    /// are screened against it from here on).
    pub fn drop_cache(&mut self) {
        self.l2.clear();
        self.l2_dirty.clear();
        self.open_end = self.end;
        self.stale_l1.clear();
        self.screened.clear();
        self.stale.clear();
    }
}
