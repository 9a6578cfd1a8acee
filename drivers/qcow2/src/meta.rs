//! The image's mutable metadata, kept under the image's lock: the header,
//! the active L1 table, cached L2 tables, the refcount table and cached
//! refcount blocks (qcow2.txt "Host cluster management", "Cluster mapping").
//!
//! Metadata is written back, not through: [`Meta::flush`] writes it in the
//! order that keeps the file consistent across a crash — refcount blocks
//! (and a moved refcount table) first, then a flush, then L2 tables, a flush,
//! then the L1 table and the header. Guest data is written by the caller
//! before it asks for the L2 update, so an entry never points at data that
//! is not on disk, and a cluster is never referenced before it is counted:
//! the worst a crash leaves is leaked clusters.

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::header::Header;
use crate::layout::{ClusterKind, Entry, Layout, Sub, COPIED, OFFSET_MASK};
use crate::overlap::{MetaKind, MetadataMap};
use qimg_driver_api::abi_stable::std_types::RSlice;
use qimg_driver_api::{ByteStoreBox, Prealloc};
use qimg_driver_util::read_or_zero;
use qimg_driver_util::AlignedBuf;
use std::collections::{BTreeSet, HashMap, HashSet};

/// Metadata tables kept in memory at most (each one cluster); beyond this
/// clean tables are dropped and dirty ones written out.
const CACHE_BYTES: u64 = 32 << 20;

/// The stores an image reads and writes.
pub struct Io {
    /// The qcow2 file.
    pub file: ByteStoreBox,
    /// The external data file, if any.
    pub data: Option<ByteStoreBox>,
}

impl Io {
    /// Reads metadata or data from the qcow2 file (zeros past its end).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        // Past 63 bits no file has bytes: qemu's block layer fails such a
        // request with EIO before the file sees it.
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > i64::MAX as u64)
        {
            return Err(Error::Corrupt);
        }
        Ok(read_or_zero(&self.file, offset, buf)?)
    }
    /// Writes to the qcow2 file.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        Ok(self
            .file
            .write_at(offset, RSlice::from_slice(buf))
            .into_result()?)
    }
    /// The store guest data lives in.
    pub fn data_store(&self) -> &ByteStoreBox {
        self.data.as_ref().unwrap_or(&self.file)
    }
    /// Flushes both stores.
    pub fn flush(&self) -> Result<()> {
        if let Some(d) = &self.data {
            d.flush().into_result()?;
        }
        Ok(self.file.flush().into_result()?)
    }
}

/// Where a guest cluster's L2 entry lives.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    /// Host offset of the L2 table.
    pub table: u64,
    /// Index in the table.
    pub index: usize,
}

/// The image's metadata. Every method expects the image lock held.
pub struct Meta {
    /// The header as it should be on disk.
    pub header: Header,
    /// The header needs writing.
    pub header_dirty: bool,
    /// The header as last written or read (decides whether a header write
    /// must rewrite the extensions or only the fixed fields).
    pub on_disk: Header,
    /// The next header write rewrites the whole first cluster.
    pub header_full: bool,
    /// Geometry.
    pub layout: Layout,
    /// Guest clusters live in an external data file (not refcounted).
    pub data_file: bool,
    /// The active L1 table (entries past its length are zero).
    pub l1: Vec<u64>,
    /// The L1 table needs writing.
    pub l1_dirty: bool,
    /// Cached L2 tables.
    pub l2: Cache<Vec<Entry>>,
    /// The refcount table (entries past its length are zero).
    pub reftable: Vec<u64>,
    /// The refcount table needs writing.
    pub reftable_dirty: bool,
    /// Cached refcount blocks, raw.
    pub refblocks: Cache<Vec<u8>>,
    /// No cluster below this one is free.
    pub free_hint: u64,
    /// Where the next compressed cluster may start (0: in a new cluster).
    pub compressed_next: u64,
    /// Guest clusters with an allocation or read-modify-write under way.
    pub in_flight: HashSet<u64>,
    /// Host clusters holding metadata, for the overlap check.
    pub metadata: MetadataMap,
    /// Host clusters reserved for guest clusters (by cluster index) that a
    /// write will fill (see `Qcow2Image::reserve`); refcounted, not yet in
    /// the L2 tables.
    pub reserved: HashMap<u64, u64>,
    /// A corruption was already reported.
    pub corruption_reported: bool,
    /// The image is open for writing (a corruption then marks it corrupt).
    pub writable: bool,
    /// Internal snapshots, in table order.
    pub snapshots: Vec<crate::snapshot::Snapshot>,
    /// Bytes the snapshot table occupies.
    pub snapshots_size: u64,
    /// Faults of the snapshot table found at open, for `check`.
    pub snapshot_issues: Vec<crate::snapshot::TableIssue>,
    /// Persistent bitmaps (empty unless the directory is consistent).
    pub bitmaps: Vec<crate::bitmaps::Bitmap>,
    /// Host clusters the loaded bitmaps' tables and data occupy, until the
    /// bitmaps are stored anew: never handed out meanwhile, whatever a
    /// damaged refcount says (storing frees them).
    pub bitmap_clusters: BTreeSet<u64>,
    /// While `Some`, clusters whose refcount drops to zero are collected
    /// here, to be discarded (snapshot operations give space back).
    pub discarded: Option<Vec<u64>>,
    /// The file's length in clusters when the first allocation looked for
    /// a free cluster, and whether the clusters the tables reach were
    /// checked against their refcounts since (see [`Meta::adopt_uncounted`]).
    uncounted: Option<(u64, bool)>,
    /// Byte ranges whose references cached tables dropped: counted down by
    /// [`Meta::flush`] once the tables without them are on disk, so that a
    /// crash never leaves a table naming a cluster counted free (which a
    /// later allocation would hand out again).
    released: Vec<(u64, u64)>,
}

/// Where the header keeps the refcount table's offset and cluster count.
const REFTABLE_FIELDS: u64 = 48;

/// Gives the clusters at `offsets` (of `cluster_size` bytes) back to the
/// host's file system, as qemu's discards do: adjacent clusters in one
/// punch (a shrink freeing 8,192 clusters made 8,192 calls where qemu
/// makes 3); a cluster that reaches past the end of the file is punched
/// whole and the file keeps its length.
pub fn punch_clusters(io: &Io, offsets: &[u64], cluster_size: u64) -> Result<()> {
    let file_len = io.file.len().into_result()?;
    let mut inside: Vec<u64> = offsets
        .iter()
        .copied()
        .filter(|&at| at < file_len)
        .collect();
    inside.sort_unstable();
    inside.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for at in inside {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == at => *len += cluster_size,
            _ => runs.push((at, cluster_size)),
        }
    }
    let mut past_end = false;
    for (at, len) in runs {
        if at + len > file_len && !past_end {
            // The store punches only inside the file: lengthen it for
            // the punch, then cut it back.
            io.file.set_len(at + len, Prealloc::OFF).into_result()?;
            past_end = true;
        }
        io.file.write_zeroes(at, len, true).into_result()?;
    }
    if past_end {
        io.file.set_len(file_len, Prealloc::OFF).into_result()?;
    }
    Ok(())
}

/// A number as C's `%#x` prints it (`0` without prefix).
pub fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

fn be64_words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

pub(crate) fn words_be(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// Bytes of a table read or written at once: a large table (16 MiB of L1
/// for a 1 PiB disk) is not held twice, as words and as bytes.
const TABLE_PIECE: u64 = 1 << 20;

/// Writes `words` big-endian at `offset`, [`TABLE_PIECE`] bytes at a time.
fn write_words(io: &Io, offset: u64, words: &[u64]) -> Result<()> {
    let per_piece = (TABLE_PIECE / 8) as usize;
    for (i, piece) in words.chunks(per_piece).enumerate() {
        io.write(offset + i as u64 * TABLE_PIECE, &words_be(piece))?;
    }
    Ok(())
}

/// Reads a table of `entries` 64-bit words at `offset`, keeping only the part
/// that lies inside the file (the rest reads as zeros), so a header field
/// alone never decides how much memory is used.
pub fn read_table(io: &Io, offset: u64, entries: u64, file_len: u64) -> Result<Vec<u64>> {
    let in_file = file_len.saturating_sub(offset).div_ceil(8).min(entries);
    let mut words = Vec::with_capacity(in_file as usize);
    let mut bytes = AlignedBuf::zeroed((in_file * 8).min(TABLE_PIECE) as usize);
    let mut at = 0;
    while at < in_file * 8 {
        let n = (in_file * 8 - at).min(TABLE_PIECE) as usize;
        io.read(offset + at, &mut bytes[..n])?;
        words.extend(
            bytes[..n]
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
        );
        at += n as u64;
    }
    while words.last() == Some(&0) {
        words.pop();
    }
    Ok(words)
}

/// An L2 table as it is stored.
pub fn encode_l2(layout: &Layout, table: &[Entry]) -> Vec<u8> {
    let words: Vec<u64> = if layout.extended {
        table.iter().flat_map(|e| [e.word, e.bitmap]).collect()
    } else {
        table.iter().map(|e| e.word).collect()
    };
    words_be(&words)
}

/// The refcount of entry `i` of a refcount block of width `1 << order`.
pub fn get_refcount(block: &[u8], order: u32, i: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let bit = i * bits;
            u64::from((block[bit / 8] >> (bit % 8)) & ((1u16 << bits) - 1) as u8)
        }
        3 => u64::from(block[i]),
        4 => u64::from(u16::from_be_bytes([block[2 * i], block[2 * i + 1]])),
        5 => {
            let b = &block[4 * i..4 * i + 4];
            u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        _ => be64_words(&block[8 * i..8 * i + 8])[0],
    }
}

/// Sets entry `i` of a refcount block (the value fits the width).
pub fn put_refcount(block: &mut [u8], order: u32, i: usize, value: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let bit = i * bits;
            let mask = (((1u16 << bits) - 1) as u8) << (bit % 8);
            let byte = &mut block[bit / 8];
            *byte = (*byte & !mask) | (((value as u8) << (bit % 8)) & mask);
        }
        3 => block[i] = value as u8,
        4 => block[2 * i..2 * i + 2].copy_from_slice(&(value as u16).to_be_bytes()),
        5 => block[4 * i..4 * i + 4].copy_from_slice(&(value as u32).to_be_bytes()),
        _ => block[8 * i..8 * i + 8].copy_from_slice(&value.to_be_bytes()),
    }
}

impl Meta {
    /// Metadata for an opened image whose tables were read.
    pub fn new(header: Header, layout: Layout, l1: Vec<u64>, reftable: Vec<u64>) -> Meta {
        let tables = (CACHE_BYTES >> layout.cluster_bits).max(16) as usize;
        Meta {
            data_file: header.has_data_file(),
            on_disk: header.clone(),
            header_full: false,
            header,
            header_dirty: false,
            layout,
            l1,
            l1_dirty: false,
            l2: Cache::new(tables),
            reftable,
            reftable_dirty: false,
            refblocks: Cache::new(tables / 4),
            free_hint: 1,
            compressed_next: 0,
            in_flight: HashSet::new(),
            metadata: MetadataMap::default(),
            reserved: HashMap::new(),
            corruption_reported: false,
            writable: false,
            snapshots: Vec::new(),
            snapshots_size: 0,
            snapshot_issues: Vec::new(),
            bitmaps: Vec::new(),
            bitmap_clusters: BTreeSet::new(),
            discarded: None,
            uncounted: None,
            released: Vec::new(),
        }
    }

    /// Records `clusters` clusters at host `offset` as metadata of `kind`
    /// (when the overlap map is in use).
    pub fn note_metadata(&mut self, offset: u64, clusters: u64, kind: MetaKind) {
        if self.metadata.built {
            let bits = self.layout.cluster_bits;
            self.metadata.insert(offset, clusters << bits, kind, bits);
        }
    }

    /// Builds the overlap map from the tables (QEMU's "cached" set: every
    /// kind of metadata but snapshots' L2 tables).
    fn build_metadata_map(&mut self) {
        let bits = self.layout.cluster_bits;
        let cs = self.layout.cluster_size();
        let h = &self.header;
        let mut map = MetadataMap::default();
        map.insert(0, cs, MetaKind::Header, bits);
        map.insert(
            h.l1_table_offset,
            u64::from(h.l1_size) * 8,
            MetaKind::ActiveL1,
            bits,
        );
        for entry in &self.l1 {
            map.insert(entry & OFFSET_MASK, cs, MetaKind::ActiveL2, bits);
        }
        let reftable_bytes = u64::from(h.refcount_table_clusters) * cs;
        map.insert(
            h.refcount_table_offset,
            reftable_bytes,
            MetaKind::RefcountTable,
            bits,
        );
        for entry in &self.reftable {
            map.insert(entry & !511, cs, MetaKind::RefcountBlock, bits);
        }
        if h.nb_snapshots > 0 {
            map.insert(
                h.snapshots_offset,
                self.snapshots_size,
                MetaKind::SnapshotTable,
                bits,
            );
        }
        for snapshot in &self.snapshots {
            let bytes = u64::from(snapshot.l1_size) * 8;
            map.insert(snapshot.l1_table_offset, bytes, MetaKind::InactiveL1, bits);
        }
        if let Some(ext) = &h.ext.bitmaps {
            map.insert(
                ext.directory_offset,
                ext.directory_size,
                MetaKind::BitmapDirectory,
                bits,
            );
        }
        map.built = true;
        self.metadata = map;
    }

    /// Refuses a write of guest data to `[offset, offset+len)` of the qcow2
    /// file where metadata is, as QEMU's overlap check does: the image is
    /// marked corrupt (on disk at once) and the write fails.
    pub fn check_data_write(&mut self, io: &Io, offset: u64, len: u64) -> Result<()> {
        if self.data_file {
            return Ok(());
        }
        self.check_overlap(io, offset, len, None)
    }

    /// Refuses a write to `[offset, offset+len)` where metadata other than
    /// `own` (the kind being written) is, as QEMU checks before it writes
    /// data or a table: the image is marked corrupt (on disk at once) and
    /// the write fails. A damaged refcount table naming an L1 table as a
    /// refcount block is then never written over.
    pub fn check_overlap(
        &mut self,
        io: &Io,
        offset: u64,
        len: u64,
        own: Option<MetaKind>,
    ) -> Result<()> {
        if !self.metadata.built {
            self.build_metadata_map();
        }
        let found = self.metadata.overlap(offset, len, self.layout.cluster_bits);
        let Some(kind) = found.filter(|k| Some(*k) != own) else {
            return Ok(());
        };
        let error = self.corruption(format!(
            "Preventing invalid write on metadata (overlaps with {})",
            kind.name()
        ));
        if self.writable && self.header_dirty {
            self.write_header(io)?;
            io.flush()?;
        }
        Err(error)
    }

    /// True once this session marked the image corrupt: nothing but the
    /// header is written to it any more.
    pub fn marked_corrupt(&self) -> bool {
        self.corruption_reported && self.writable
    }

    /// Reports a metadata inconsistency the way qemu does (once per image)
    /// and returns the error the request fails with. A writable image is
    /// marked corrupt (qcow2.txt, incompatible bit 1) so that nothing writes
    /// to it again before a repair.
    pub fn corruption(&mut self, what: String) -> Error {
        if !self.corruption_reported {
            self.corruption_reported = true;
            if self.writable {
                eprintln!(
                    "qcow2: Marking image as corrupt: {what}; further corruption events will be suppressed"
                );
                self.header.incompatible_features |= crate::header::incompat::CORRUPT;
                self.header_dirty = true;
            } else {
                eprintln!(
                    "qcow2: Image is corrupt: {what}; further non-fatal corruption events will be suppressed"
                );
            }
        }
        Error::Corrupt
    }

    /// The L1 entry of guest L1 index `i`.
    pub fn l1_entry(&self, i: u64) -> u64 {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.l1.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Forgets every cached table (after the tables were rewritten on disk
    /// behind the caches' back, by a repair).
    pub fn clear_caches(&mut self) {
        self.metadata.invalidate();
        let tables = (CACHE_BYTES >> self.layout.cluster_bits).max(16) as usize;
        self.l2 = Cache::new(tables);
        self.refblocks = Cache::new(tables / 4);
        self.free_hint = 1;
        self.compressed_next = 0;
    }

    /// Sets L1 entry `i` (the table is written at the next flush).
    pub fn set_l1_entry(&mut self, i: usize, value: u64) {
        if self.l1.len() <= i {
            self.l1.resize(i + 1, 0);
        }
        self.l1[i] = value;
        self.l1_dirty = true;
    }

    /// The L2 table at `offset`, read into the cache if needed.
    pub fn l2_table(&mut self, io: &Io, offset: u64) -> Result<&mut Vec<Entry>> {
        if !self.l2.contains(offset) {
            let cs = self.layout.cluster_size() as usize;
            let mut bytes = AlignedBuf::zeroed(cs);
            io.read(offset, &mut bytes)?;
            let words = be64_words(&bytes);
            let table: Vec<Entry> = if self.layout.extended {
                words
                    .chunks_exact(2)
                    .map(|w| Entry {
                        word: w[0],
                        bitmap: w[1],
                    })
                    .collect()
            } else {
                words
                    .into_iter()
                    .map(|word| Entry { word, bitmap: 0 })
                    .collect()
            };
            self.l2.insert(offset, table, false);
        }
        self.l2
            .get(offset)
            .ok_or_else(|| Error::invalid("L2 table vanished from the cache"))
    }

    /// The L2 table offset for L1 index `l1i`, checked; 0 if unallocated.
    pub fn l2_offset(&mut self, l1i: u64) -> Result<u64> {
        let entry = self.l1_entry(l1i);
        self.l2_of(entry, l1i)
    }

    /// The L2 table offset of L1 entry `entry` (of any L1 table, at index
    /// `l1i`), checked for alignment as QEMU checks it; 0 if unallocated.
    pub fn l2_of(&mut self, entry: u64, l1i: u64) -> Result<u64> {
        let offset = entry & OFFSET_MASK;
        if self.layout.in_cluster(offset) != 0 {
            return Err(self.corruption(format!(
                "L2 table offset {} unaligned (L1 index: {})",
                hex(offset),
                hex(l1i)
            )));
        }
        Ok(offset)
    }

    /// Checks that host cluster offset `host`, named by entry `index` of
    /// the L2 table at `table`, is aligned, as QEMU checks it.
    pub fn check_cluster_offset(&mut self, host: u64, table: u64, index: u64) -> Result<()> {
        if self.layout.in_cluster(host) != 0 {
            return Err(self.corruption(format!(
                "Cluster allocation offset {} unaligned (L2 offset: {}, L2 index: {})",
                hex(host),
                hex(table),
                hex(index)
            )));
        }
        Ok(())
    }

    /// The L2 entry mapping guest offset `guest` (default if unallocated).
    pub fn entry(&mut self, io: &Io, guest: u64) -> Result<(Entry, Option<Slot>)> {
        let l1i = self.layout.l1_index(guest);
        let table = self.l2_offset(l1i)?;
        if table == 0 {
            return Ok((Entry::default(), None));
        }
        let index = self.layout.l2_index(guest);
        let entry = self.l2_table(io, table)?[index];
        Ok((entry, Some(Slot { table, index })))
    }

    /// The kind of the subcluster at `guest`, with a corruption check of the
    /// host offset's alignment.
    pub fn sub_at(&mut self, io: &Io, guest: u64) -> Result<(Sub, Entry, Option<Slot>)> {
        let (entry, slot) = self.entry(io, guest)?;
        let index = (self.layout.in_cluster(guest) / self.layout.subcluster_size()) as u32;
        let sub = entry.sub(&self.layout, self.data_file, index);
        if let (Some(host), Some(s)) = (sub.host(), slot) {
            self.check_cluster_offset(host, s.table, s.index as u64)?;
        }
        if sub == Sub::Invalid {
            if let Some(s) = slot {
                let what = format!(
                    "Invalid cluster entry found  (L2 offset: {}, L2 index: {})",
                    hex(s.table),
                    hex(s.index as u64)
                );
                return Err(self.corruption(what));
            }
        }
        Ok((sub, entry, slot))
    }

    // ---- refcounts ----

    /// The offset of refcount block `index` (0: none), checked.
    pub(crate) fn refblock_offset(&mut self, index: u64) -> Result<u64> {
        let entry = usize::try_from(index)
            .ok()
            .and_then(|i| self.reftable.get(i))
            .copied()
            .unwrap_or(0);
        let offset = entry & !511;
        if self.layout.in_cluster(offset) != 0 {
            return Err(self.corruption(format!(
                "Refblock offset {} unaligned (reftable index: {})",
                hex(offset),
                hex(index)
            )));
        }
        Ok(offset)
    }

    fn refblock(&mut self, io: &Io, offset: u64) -> Result<&mut Vec<u8>> {
        if !self.refblocks.contains(offset) {
            let mut block = vec![0u8; self.layout.cluster_size() as usize];
            io.read(offset, &mut block)?;
            self.refblocks.insert(offset, block, false);
        }
        self.refblocks
            .get(offset)
            .ok_or_else(|| Error::invalid("refcount block vanished from the cache"))
    }

    /// A copy of the refcount block at `offset` (through the cache).
    pub fn refblock_data(&mut self, io: &Io, offset: u64) -> Result<Vec<u8>> {
        Ok(self.refblock(io, offset)?.clone())
    }

    /// The refcount of host cluster `cluster` (0 where no block covers it).
    pub fn refcount(&mut self, io: &Io, cluster: u64) -> Result<u64> {
        let bits = self.layout.refblock_bits();
        let block = self.refblock_offset(cluster >> bits)?;
        if block == 0 {
            return Ok(0);
        }
        let order = self.layout.refcount_order;
        let i = (cluster & ((1 << bits) - 1)) as usize;
        Ok(get_refcount(self.refblock(io, block)?, order, i))
    }

    /// Entries the refcount table has room for.
    fn reftable_capacity(&self) -> u64 {
        u64::from(self.header.refcount_table_clusters) * self.layout.cluster_size() / 8
    }

    /// Sets the refcount of `cluster`, creating refcount blocks (and growing
    /// the refcount table) as needed, never inside `exclude` (clusters being
    /// allocated whose refcounts are not yet set).
    fn store_refcount(
        &mut self,
        io: &Io,
        cluster: u64,
        value: u64,
        exclude: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let bits = self.layout.refblock_bits();
        let index = cluster >> bits;
        if index >= self.reftable_capacity() {
            self.grow_reftable(io, index, exclude)?;
        }
        let mut block = self.refblock_offset(index)?;
        if block == 0 {
            block = self.new_refblock(io, index, exclude)?;
        }
        let order = self.layout.refcount_order;
        let i = (cluster & ((1 << bits) - 1)) as usize;
        put_refcount(self.refblock(io, block)?, order, i, value);
        self.refblocks.mark_dirty(block);
        if value == 0 {
            self.free_hint = self.free_hint.min(cluster);
            self.metadata.remove(cluster);
        }
        Ok(())
    }

    /// Creates the refcount block for table index `index`, placed in a free
    /// cluster outside `exclude`.
    fn new_refblock(&mut self, io: &Io, index: u64, exclude: &mut Vec<(u64, u64)>) -> Result<u64> {
        let at = self.find_free(io, 1, exclude)?;
        let offset = at << self.layout.cluster_bits;
        self.note_metadata(offset, 1, MetaKind::RefcountBlock);
        self.refblocks
            .insert(offset, vec![0u8; self.layout.cluster_size() as usize], true);
        let i = index as usize;
        if self.reftable.len() <= i {
            self.reftable.resize(i + 1, 0);
        }
        self.reftable[i] = offset;
        self.reftable_dirty = true;
        exclude.push((at, 1));
        self.store_refcount(io, at, 1, exclude)?;
        exclude.pop();
        Ok(offset)
    }

    /// Moves the refcount table to a larger place that covers table index
    /// `needed`, together with the refcount blocks that describe the new
    /// table itself.
    fn grow_reftable(&mut self, io: &Io, needed: u64, exclude: &mut Vec<(u64, u64)>) -> Result<()> {
        let cs = self.layout.cluster_size();
        let old_clusters = u64::from(self.header.refcount_table_clusters);
        let mut clusters = (old_clusters + old_clusters / 2).max(1);
        while clusters * cs / 8 <= needed {
            clusters += clusters.div_ceil(2);
        }
        self.place_reftable(io, clusters, false, exclude)
    }

    /// Moves the refcount table, `clusters` long, past the last cluster in
    /// use and frees the old one (qemu does this before full preallocation,
    /// so the table sits before the data). Never into a free run inside:
    /// one a damaged refcount counts free may hold guest data.
    pub fn move_reftable(&mut self, io: &Io, clusters: u64) -> Result<()> {
        let clusters = clusters.max(u64::from(self.header.refcount_table_clusters));
        self.place_reftable(io, clusters, true, &mut Vec::new())
    }

    /// Places a refcount table of `clusters` in the first free run, or with
    /// `at_end` past the last cluster in use.
    fn place_reftable(
        &mut self,
        io: &Io,
        clusters: u64,
        at_end: bool,
        exclude: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let cs = self.layout.cluster_size();
        let bits = self.layout.refblock_bits();
        let old_offset = self.header.refcount_table_offset;
        let old_clusters = u64::from(self.header.refcount_table_clusters);
        if clusters * cs > 8 << 20 {
            return Err(Error::Errno(27, "File too large".into()));
        }
        // The new table and the blocks for its own clusters go in one free
        // run: grow the run until every block it needs is inside it.
        let mut blocks = 0u64;
        let start = loop {
            let start = if at_end {
                self.used_end(io)?
            } else {
                self.find_free(io, clusters + blocks, exclude)?
            };
            let end = start + clusters + blocks;
            let missing = ((start >> bits)..=((end - 1) >> bits))
                .filter(|&ri| {
                    self.reftable
                        .get(ri as usize)
                        .is_none_or(|&e| e & !511 == 0)
                })
                .count() as u64;
            if missing <= blocks {
                break start;
            }
            blocks = missing;
        };
        if ((start + clusters + blocks) >> bits) >= clusters * cs / 8 {
            return Err(Error::Errno(27, "File too large".into()));
        }
        let mut table = self.reftable.clone();
        table.resize((clusters * cs / 8) as usize, 0);
        let mut next_block = start + clusters;
        let end = start + clusters + blocks;
        for ri in (start >> bits)..=((end - 1) >> bits) {
            if table[ri as usize] & !511 == 0 && next_block < end {
                let offset = next_block << self.layout.cluster_bits;
                table[ri as usize] = offset;
                self.refblocks.insert(offset, vec![0u8; cs as usize], true);
                next_block += 1;
            }
        }
        self.reftable = table;
        self.reftable_dirty = true;
        self.header.refcount_table_offset = start << self.layout.cluster_bits;
        self.header.refcount_table_clusters = clusters as u32;
        self.header_dirty = true;
        exclude.push((start, end - start));
        for c in start..end {
            self.store_refcount(io, c, 1, exclude)?;
        }
        exclude.pop();
        // As qemu: the new table is on disk and named by the header before
        // anything refers to clusters only it counts, and before the old
        // one is counted down (a crash in between leaks it).
        self.commit_reftable(io)?;
        let old = old_offset >> self.layout.cluster_bits;
        for c in old..old + old_clusters {
            let rc = self.refcount(io, c)?;
            self.store_refcount(io, c, rc.saturating_sub(1), exclude)?;
        }
        Ok(())
    }

    /// Writes the refcount blocks, a moved refcount table and the two
    /// header fields that name it (qemu writes those fields alone), each
    /// step durable before the next.
    fn commit_reftable(&mut self, io: &Io) -> Result<()> {
        self.write_refblocks(io)?;
        self.write_reftable(io, true)?;
        io.flush()?;
        let (offset, clusters) = (
            self.header.refcount_table_offset,
            self.header.refcount_table_clusters,
        );
        let mut fields = offset.to_be_bytes().to_vec();
        fields.extend_from_slice(&clusters.to_be_bytes());
        io.write(REFTABLE_FIELDS, &fields)?;
        io.flush()?;
        self.on_disk.refcount_table_offset = offset;
        self.on_disk.refcount_table_clusters = clusters;
        Ok(())
    }

    /// Refuses to allocate from refcounts that count the header's cluster
    /// free (a refcount table past the end of the file, zeroed blocks):
    /// qemu's allocator hands that cluster out and its overlap check
    /// stops the write, before any other table is written on such counts.
    pub fn refuse_uncounted_header(&mut self, io: &Io) -> Result<()> {
        if self.refcount(io, 0)? == 0 {
            let cs = self.layout.cluster_size();
            self.check_overlap(io, 0, cs, None)?;
        }
        Ok(())
    }

    /// True if cluster `c` holds a loaded bitmap's table or data: in use
    /// whatever its refcount says. (A cluster that metadata the header
    /// names is handed out as QEMU hands it out, and the overlap check
    /// stops the write: skipping it would hand out the next cluster a
    /// damaged refcount counts free, guest data that nothing checks.)
    pub fn held_by_bitmap(&self, c: u64) -> bool {
        self.bitmap_clusters.contains(&c)
    }

    /// The first run of `n` free clusters at or after the free hint,
    /// outside `exclude`. A cluster counted free that a loaded bitmap
    /// still holds, or that the tables reach (a damaged refcount), is not
    /// free.
    fn find_free(&mut self, io: &Io, n: u64, exclude: &[(u64, u64)]) -> Result<u64> {
        self.refuse_uncounted_header(io)?;
        let start = self.first_free_run(io, n, exclude)?;
        let (file_clusters, adopted) = match self.uncounted {
            Some(state) => state,
            None => {
                let len = io.file.len().into_result()?;
                (self.layout.clusters_for(len), false)
            }
        };
        self.uncounted = Some((file_clusters, adopted));
        if adopted || start >= file_clusters {
            return Ok(start);
        }
        // A free run inside the file: it may be a cluster a damaged
        // refcount counts free.
        self.uncounted = Some((file_clusters, true));
        if self.adopt_uncounted(io)? {
            self.first_free_run(io, n, exclude)
        } else {
            Ok(start)
        }
    }

    /// Gives every guest data cluster the tables reach (the active ones
    /// and the snapshots') that a damaged refcount counts free the
    /// refcount 1 its entry claims, so that it is never handed out: its
    /// data would be overwritten by whatever went there (QEMU hands it
    /// out). Runs once, before the first allocation into the file's
    /// inside. An image whose clusters are all counted reads its tables and
    /// changes nothing; clusters past the file's end and L2 tables are left
    /// as they are (the latter to the overlap check, see
    /// [`Meta::held_by_bitmap`]). Returns whether a refcount changed.
    fn adopt_uncounted(&mut self, io: &Io) -> Result<bool> {
        if self.data_file {
            return Ok(false);
        }
        let file_len = io.file.len().into_result()?;
        let file_clusters = self.layout.clusters_for(file_len);
        let mut l1s = vec![self.l1.clone()];
        for snapshot in self.snapshots.clone() {
            let l1 = read_table(
                io,
                snapshot.l1_table_offset,
                u64::from(snapshot.l1_size),
                file_len,
            )?;
            l1s.push(l1);
        }
        let layout = self.layout;
        let cs = layout.cluster_size();
        let mut seen = HashSet::new();
        let mut uncounted = BTreeSet::new();
        for l1 in l1s {
            for entry in l1 {
                let l2 = entry & OFFSET_MASK;
                if l2 == 0 || layout.in_cluster(l2) != 0 || l2 + cs > file_len || !seen.insert(l2) {
                    continue;
                }
                for word in self.l2_words(io, l2)? {
                    let (at, len) = match ClusterKind::of(word, &layout, false) {
                        ClusterKind::Compressed => layout.compressed_range(word),
                        ClusterKind::Normal | ClusterKind::ZeroAlloc
                            if layout.in_cluster(word & OFFSET_MASK) == 0 =>
                        {
                            (word & OFFSET_MASK, cs)
                        }
                        _ => continue,
                    };
                    let clusters =
                        (at >> layout.cluster_bits)..=((at + len - 1) >> layout.cluster_bits);
                    // Only clusters the file holds: one past its end holds
                    // no data, and counting it could grow the refcount
                    // table without bound.
                    for c in clusters.filter(|&c| c < file_clusters) {
                        if self.refcount(io, c)? == 0 {
                            uncounted.insert(c);
                        }
                    }
                }
            }
        }
        for &c in &uncounted {
            self.store_refcount(io, c, 1, &mut vec![(c, 1)])?;
        }
        Ok(!uncounted.is_empty())
    }

    /// The mapping words of the L2 table at `offset`: the cached table's,
    /// else read from the file without entering the cache (a walk of every
    /// table must not evict the ones a write is using).
    fn l2_words(&mut self, io: &Io, offset: u64) -> Result<Vec<u64>> {
        if let Some(table) = self.l2.get(offset) {
            return Ok(table.iter().map(|e| e.word).collect());
        }
        let mut bytes = AlignedBuf::zeroed(self.layout.cluster_size() as usize);
        io.read(offset, &mut bytes)?;
        let words = be64_words(&bytes);
        let step = if self.layout.extended { 2 } else { 1 };
        Ok(words.into_iter().step_by(step).collect())
    }

    /// The first run of `n` clusters free by their refcounts at or after
    /// the free hint, outside `exclude` (see [`Meta::find_free`]).
    fn first_free_run(&mut self, io: &Io, n: u64, exclude: &[(u64, u64)]) -> Result<u64> {
        let mut start = self.free_hint.max(1);
        let mut at = start;
        let mut first_free = None;
        while at < start + n {
            let pending = exclude.iter().any(|&(s, len)| at >= s && at < s + len);
            let busy = pending || self.refcount(io, at)? != 0 || self.held_by_bitmap(at);
            if !busy && first_free.is_none() {
                first_free = Some(at);
            }
            at += 1;
            if busy {
                start = at;
            }
        }
        // Everything below the first free cluster seen is in use: later
        // searches start there instead of rescanning.
        if let Some(f) = first_free {
            self.free_hint = self.free_hint.max(f);
        }
        Ok(start)
    }

    /// Allocates `n` contiguous clusters with refcount 1; returns the host
    /// offset of the first.
    pub fn alloc_clusters(&mut self, io: &Io, n: u64) -> Result<u64> {
        let start = self.find_free(io, n, &[])?;
        let offset = self.claim(io, start, n)?;
        if self.free_hint == start {
            self.free_hint = start + n;
        }
        Ok(offset)
    }

    /// Gives the `n` free clusters from cluster `start` on a refcount of 1;
    /// returns the host offset of the first.
    fn claim(&mut self, io: &Io, start: u64, n: u64) -> Result<u64> {
        let mut exclude = vec![(start, n)];
        for c in start..start + n {
            self.store_refcount(io, c, 1, &mut exclude)?;
        }
        Ok(start << self.layout.cluster_bits)
    }

    /// The cluster after the last one in use (refcount not zero).
    fn used_end(&mut self, io: &Io) -> Result<u64> {
        let bits = self.layout.refblock_bits();
        for index in (0..self.reftable.len() as u64).rev() {
            if self.refblock_offset(index)? == 0 {
                continue;
            }
            let first = index << bits;
            for cluster in (first..first + (1 << bits)).rev() {
                if self.refcount(io, cluster)? != 0 {
                    return Ok(cluster + 1);
                }
            }
        }
        Ok(0)
    }

    /// Allocates `n` contiguous clusters past the last cluster in use, where
    /// qemu puts the data it preallocates; returns the host offset of the
    /// first. Free clusters below may hold stale bytes (an old refcount
    /// table, discarded data), which preallocated data must never show.
    pub fn alloc_clusters_at_end(&mut self, io: &Io, n: u64) -> Result<u64> {
        let start = self.used_end(io)?;
        self.claim(io, start, n)
    }

    /// Counts the clusters of `[offset, offset+len)` that a write reaches
    /// in place through entries saying they own them (COPIED). A damaged
    /// image can leave such a cluster at refcount 0, where the allocator
    /// would hand it to another guest cluster and the next write there
    /// would land on this data; the cluster gets the refcount 1 its entry
    /// says it has.
    pub fn hold_owned(&mut self, io: &Io, offset: u64, len: u64) -> Result<()> {
        if self.data_file || len == 0 {
            return Ok(());
        }
        let bits = self.layout.cluster_bits;
        for c in (offset >> bits)..=((offset + len - 1) >> bits) {
            if self.refcount(io, c)? == 0 {
                self.store_refcount(io, c, 1, &mut vec![(c, 1)])?;
            }
        }
        Ok(())
    }

    /// Adds `delta` to the refcount of every cluster that `[offset,
    /// offset+len)` touches. A refcount reaching zero frees the cluster (and
    /// drops any table cached there).
    pub fn add_refcount(&mut self, io: &Io, offset: u64, len: u64, delta: i64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let bits = self.layout.cluster_bits;
        let max = self.layout.refcount_max();
        for c in (offset >> bits)..=((offset + len - 1) >> bits) {
            let rc = self.refcount(io, c)?;
            let value = if delta < 0 {
                rc.checked_sub(delta.unsigned_abs()).ok_or_else(|| {
                    self.corruption(format!(
                        "Refcount of cluster {} would become negative",
                        hex(c)
                    ))
                })?
            } else {
                rc.checked_add(delta as u64)
                    .filter(|v| *v <= max)
                    .ok_or_else(|| Error::Errno(22, "Invalid argument".into()))?
            };
            self.store_refcount(io, c, value, &mut Vec::new())?;
            if value == 0 {
                if let Some(list) = &mut self.discarded {
                    list.push(c);
                }
                self.l2.remove(c << bits);
                self.refblocks.remove(c << bits);
                if self.compressed_next >> bits == c {
                    self.compressed_next = 0;
                }
            }
        }
        Ok(())
    }

    /// Releases what an L2 entry held: its data cluster or compressed bytes
    /// (see [`Meta::drop_reference`]).
    pub fn release_entry(&mut self, entry: Entry) {
        if entry.compressed() {
            let (offset, len) = self.layout.compressed_range(entry.word);
            self.drop_reference(offset & !511, len + (offset & 511));
        } else if entry.host() != 0 && !self.data_file {
            self.drop_reference(entry.host(), self.layout.cluster_size());
        }
    }

    /// Notes that a cached table no longer names the clusters of `offset..
    /// offset + len`: their refcounts go down at the next flush, after the
    /// table is written.
    pub fn drop_reference(&mut self, offset: u64, len: u64) {
        self.released.push((offset, len));
    }

    /// The L2 table for guest offset `guest`, ready to be modified: allocated
    /// if missing, copied if shared with a snapshot.
    pub fn writable_l2(&mut self, io: &Io, guest: u64) -> Result<u64> {
        let l1i = self.layout.l1_index(guest);
        if l1i >= u64::from(self.header.l1_size) {
            return Err(Error::argument("L1 table too small for the request"));
        }
        let entry = self.l1_entry(l1i);
        let old = self.l2_offset(l1i)?;
        if old != 0 && entry & COPIED != 0 {
            return Ok(old);
        }
        let table = if old != 0 {
            self.l2_table(io, old)?.clone()
        } else {
            vec![Entry::default(); self.layout.l2_entries() as usize]
        };
        let new = self.alloc_clusters(io, 1)?;
        self.note_metadata(new, 1, MetaKind::ActiveL2);
        self.l2.insert(new, table, true);
        self.set_l1_entry(l1i as usize, new | COPIED);
        if old != 0 {
            self.drop_reference(old, 1);
        }
        Ok(new)
    }

    /// Stores `entry` at `slot` of a writable L2 table.
    pub fn set_entry(&mut self, io: &Io, slot: Slot, entry: Entry) -> Result<()> {
        let table = self.l2_table(io, slot.table)?;
        table[slot.index] = entry;
        self.l2.mark_dirty(slot.table);
        Ok(())
    }

    /// True when dirty metadata fills the caches and should be written out.
    pub fn needs_writeback(&self) -> bool {
        self.l2.full_of_dirty() || self.refblocks.full_of_dirty()
    }

    /// Writes every dirty table and the header, in crash-safe order, with
    /// flushes between the steps.
    pub fn flush(&mut self, io: &Io) -> Result<()> {
        if self.marked_corrupt() {
            // QEMU stops writing to an image it marked corrupt: only the
            // header that says so goes out; cached tables and refcounts,
            // which may point into metadata, are dropped.
            if self.header_dirty {
                self.write_header(io)?;
                io.flush()?;
            }
            return Ok(());
        }
        let cs = self.layout.cluster_size() as usize;
        // 1. Refcounts (and a moved refcount table) before anything refers
        //    to the clusters they count.
        let mut wrote = self.write_refblocks(io)?;
        if self.reftable_dirty {
            self.write_reftable(io, self.header_dirty)?;
            wrote = true;
        }
        // 2. Data and refcounts durable before L2 entries point at them.
        if wrote {
            io.flush()?;
        }
        let mut wrote = false;
        for offset in self.l2.dirty() {
            self.check_overlap(io, offset, cs as u64, Some(MetaKind::ActiveL2))?;
            if let Some(table) = self.l2.take_dirty(offset) {
                io.write(offset, &encode_l2(&self.layout, table))?;
                wrote = true;
            }
        }
        // 3. L2 tables durable before the L1 table points at them.
        if wrote {
            io.flush()?;
        }
        let mut wrote = false;
        if self.l1_dirty {
            let at = self.header.l1_table_offset;
            let len = self.l1.len() as u64 * 8;
            self.check_overlap(io, at, len, Some(MetaKind::ActiveL1))?;
            write_words(io, at, &self.l1)?;
            self.l1_dirty = false;
            wrote = true;
        }
        if self.header_dirty {
            self.write_header(io)?;
            wrote = true;
        }
        if wrote {
            io.flush()?;
        }
        // 4. Only now, with no table on disk naming them, may the clusters
        //    tables let go of be counted down (a crash before leaks them).
        if !self.released.is_empty() {
            for (offset, len) in std::mem::take(&mut self.released) {
                self.add_refcount(io, offset, len, -1)?;
            }
            self.write_refblocks(io)?;
        }
        Ok(())
    }

    /// Writes the dirty refcount blocks, each past the overlap check.
    /// Returns whether there were any.
    fn write_refblocks(&mut self, io: &Io) -> Result<bool> {
        let cs = self.layout.cluster_size();
        let mut wrote = false;
        for offset in self.refblocks.dirty() {
            self.check_overlap(io, offset, cs, Some(MetaKind::RefcountBlock))?;
            if let Some(block) = self.refblocks.take_dirty(offset) {
                io.write(offset, block)?;
                wrote = true;
            }
        }
        Ok(wrote)
    }

    /// Writes the refcount table where the header says, all of its
    /// clusters when `whole` (a new place: the tail must read as zeros).
    fn write_reftable(&mut self, io: &Io, whole: bool) -> Result<()> {
        let mut bytes = words_be(&self.reftable);
        if whole {
            let cs = self.layout.cluster_size() as usize;
            bytes.resize(self.header.refcount_table_clusters as usize * cs, 0);
        }
        io.write(self.header.refcount_table_offset, &bytes)?;
        self.reftable_dirty = false;
        Ok(())
    }

    /// Writes the header now (not waiting for a flush): only the fixed
    /// fields when the extensions and the backing name are unchanged, else
    /// the whole first cluster, as qemu does.
    pub fn write_header(&mut self, io: &Io) -> Result<()> {
        // Whatever moved (tables, snapshots, bitmaps) is found again.
        self.metadata.invalidate();
        let mut bytes = self.header.serialize()?;
        // Only the fields are rewritten when what follows them is already on
        // disk where the new fields say it is (a backing name placed apart
        // from where this layout puts it is rewritten with the rest).
        let same_tail = !self.header_full
            && self.header.ext == self.on_disk.ext
            && self.header.backing_file == self.on_disk.backing_file
            && self.header.backing_file_offset == self.on_disk.backing_file_offset
            && self.header.header_length == self.on_disk.header_length;
        if same_tail {
            bytes.truncate(self.header.header_length.max(crate::header::V2_HEADER_LEN) as usize);
        } else {
            bytes.resize(self.layout.cluster_size() as usize, 0);
        }
        io.write(0, &bytes)?;
        self.on_disk = self.header.clone();
        self.header_dirty = false;
        self.header_full = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcounts_of_every_width() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 512];
            let max = if order == 6 {
                u64::MAX
            } else {
                (1u64 << (1 << order)) - 1
            };
            put_refcount(&mut block, order, 3, max);
            put_refcount(&mut block, order, 4, 1);
            assert_eq!(get_refcount(&block, order, 3), max, "order {order}");
            assert_eq!(get_refcount(&block, order, 4), 1, "order {order}");
            assert_eq!(get_refcount(&block, order, 2), 0, "order {order}");
            put_refcount(&mut block, order, 3, 0);
            assert_eq!(get_refcount(&block, order, 3), 0, "order {order}");
        }
    }

    #[test]
    fn sub_byte_refcounts_use_low_bits_first() {
        let mut block = vec![0u8; 8];
        put_refcount(&mut block, 0, 0, 1);
        assert_eq!(block[0], 1);
        put_refcount(&mut block, 1, 1, 3);
        assert_eq!(block[0], 0b1101);
    }
}
