//! `check` and `check -r`: every refcount compared with the references the
//! image really makes (qcow2.txt "Host cluster management"): the header,
//! the active and the snapshots' L1 tables and their L2 tables, the data
//! and compressed clusters, the snapshot table, the refcount table and
//! blocks, the encryption header and the bitmap directory and tables.
//!
//! The report (lines, counts, exit status) is the one qemu-img prints; the
//! repairs are the ones it makes: leaked clusters get their refcounts
//! lowered (`-r leaks`), missing references raised and wrong copied flags
//! set right (`-r all`), and refcount structures that cannot be trusted
//! are rebuilt from scratch (`-r all`).
//!
//! Every count is kept for clusters inside the file (a reference that ends
//! a cluster or more past its end is reported, not counted), so the memory
//! used follows the file's size, never a header field alone.

use crate::error::{Error, Result};
use crate::header::incompat;
use crate::image::Qcow2Image;
use crate::layout::{ClusterKind, Layout, COPIED, OFFSET_MASK, ZERO};
use crate::meta::{get_refcount, hex, punch_clusters, put_refcount, read_table, Io, Meta};
use crate::overlap::MetaKind;
use crate::snapshot::{TableIssue, MAX_EXTRA_DATA};
use qimg_driver_api::schema::{CheckReport, Repair};
use qimg_driver_api::Prealloc;
use std::collections::{BTreeSet, HashMap};

/// Reserved bits of an L1 entry (qcow2.txt "L1 table entry": 0-8, 56-62).
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
/// Reserved bits of a standard cluster descriptor (1-8 and 56-61).
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Reserved bits of a refcount table entry (0-8).
const REFTABLE_RESERVED: u64 = 0x1ff;
/// Reserved bits of a bitmap table entry (1-8, 56-63).
const BITMAP_ENTRY_RESERVED: u64 = 0xff00_0000_0000_01fe;
/// Allocation bits of an extended L2 bitmap.
const ALL_ALLOC: u64 = 0xffff_ffff;
/// Largest snapshot L1 table qemu accepts (32 MiB of entries).
const MAX_SNAPSHOT_L1_ENTRIES: u32 = (32 << 20) / 8;
/// How far past the end of the file `check -r all` moves the end of the
/// file to take in a refcount block found outside it; farther blocks are
/// dropped by rebuilding the refcount structures instead (a hostile table
/// entry must not make the file, or the counts kept for it, huge).
const MAX_GROWTH: u64 = 1 << 30;

/// The repairs asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fix {
    leaks: bool,
    errors: bool,
}

impl Fix {
    const NONE: Fix = Fix {
        leaks: false,
        errors: false,
    };
    fn any(self) -> bool {
        self.leaks || self.errors
    }
}

/// The counts qemu keeps while checking (its `BdrvCheckResult`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    corruptions: u64,
    leaks: u64,
    check_errors: u64,
    corruptions_fixed: u64,
    leaks_fixed: u64,
    allocated: u64,
    fragmented: u64,
    compressed: u64,
}

/// Why a refcount could not be read.
enum RefcountError {
    /// The refcount block's offset is not cluster aligned (EIO).
    Unaligned,
    /// The store failed.
    Io(Error),
}

/// One pass over an image's metadata.
struct Checker<'a> {
    io: &'a Io,
    layout: Layout,
    meta: &'a mut Meta,
    file_len: u64,
    writable: bool,
    /// The refcount table as on disk, and its size in entries.
    reftable: Vec<u64>,
    reftable_entries: u64,
    /// Refcount blocks read (and changed) during the check, by offset.
    blocks: HashMap<u64, Vec<u8>>,
    dirty_blocks: BTreeSet<u64>,
    /// Clusters freed by a repair, to be discarded.
    freed: Vec<u64>,
    /// The active L1 table.
    l1: Vec<u64>,
    /// References counted per cluster (the in-memory refcount table).
    refs: Vec<u32>,
    /// Largest count `refs` holds: the refcount width's maximum.
    max: u32,
    t: Tally,
    messages: Vec<String>,
    /// A corruption was signalled (printed once, as qemu does).
    signalled: bool,
    /// The refcount structures were rebuilt.
    rebuilt: bool,
}

impl Checker<'_> {
    fn say(&mut self, line: String) {
        self.messages.push(line);
    }

    fn cs(&self) -> u64 {
        self.layout.cluster_size()
    }

    // ---- counting references ----

    /// Counts one reference to every cluster `[offset, offset+size)`
    /// touches. A region ending a cluster or more past the end of the file
    /// is a corruption and is not counted.
    fn count(&mut self, offset: u64, size: u64) {
        if size == 0 {
            return;
        }
        let end = u128::from(offset) + u128::from(size);
        if end >= u128::from(self.file_len) + u128::from(self.cs()) {
            self.say(format!(
                "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset {offset:#x} size {size:#x}"
            ));
            self.t.corruptions += 1;
            return;
        }
        let bits = self.layout.cluster_bits;
        let first = offset >> bits;
        let last = ((end - 1) >> bits) as u64;
        for c in first..=last {
            let i = c as usize;
            if i >= self.refs.len() {
                self.refs.resize(i + 1, 0);
            }
            if self.refs[i] == self.max {
                self.say(format!("ERROR: overflow cluster offset={:#x}", c << bits));
                self.say("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing".into());
                self.t.corruptions += 1;
                continue;
            }
            self.refs[i] += 1;
        }
    }

    /// Reads a table of `entries` 64-bit words at `offset`.
    fn table(&mut self, offset: u64, entries: u64) -> Result<Vec<u64>> {
        read_table(self.io, offset, entries, self.file_len)
    }

    /// Counts an L1 table, its L2 tables and what they reference.
    fn count_l1(&mut self, offset: u64, entries: u32, frag: bool, fix: Fix) -> Result<()> {
        if entries == 0 {
            return Ok(());
        }
        self.count(offset, u64::from(entries) * 8);
        // The active table is the one the checker holds (every repair
        // writes it there and to the file): not read a second time (16 MiB
        // for a 1 PiB disk).
        if offset == self.meta.header.l1_table_offset && entries == self.meta.header.l1_size {
            let l1 = std::mem::take(&mut self.l1);
            let counted = self.count_l1_entries(&l1, frag, fix);
            self.l1 = l1;
            return counted;
        }
        let l1 = self.table(offset, u64::from(entries))?;
        self.count_l1_entries(&l1, frag, fix)
    }

    /// Counts the L2 tables the entries of an L1 table name, and what they
    /// reference.
    fn count_l1_entries(&mut self, l1: &[u64], frag: bool, fix: Fix) -> Result<()> {
        for &e in l1 {
            if e == 0 {
                continue;
            }
            if e & L1_RESERVED != 0 {
                self.say(format!(
                    "ERROR found L1 entry with reserved bits set: {e:x}"
                ));
                self.t.corruptions += 1;
            }
            let l2 = e & OFFSET_MASK;
            self.count(l2, self.cs());
            if self.layout.in_cluster(l2) != 0 {
                self.say(format!(
                    "ERROR l2_offset={l2:x}: Table is not cluster aligned; L1 entry corrupted"
                ));
                self.t.corruptions += 1;
            }
            self.count_l2(l2, frag, fix)?;
        }
        Ok(())
    }

    /// Reads the L2 table at `offset` as (descriptor, bitmap) pairs.
    fn l2_entries(&self, offset: u64) -> Result<Vec<(u64, u64)>> {
        let mut bytes = vec![0u8; self.cs() as usize];
        self.io.read(offset, &mut bytes)?;
        let words: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        Ok(if self.layout.extended {
            words.chunks_exact(2).map(|w| (w[0], w[1])).collect()
        } else {
            words.into_iter().map(|w| (w, 0)).collect()
        })
    }

    /// Counts the references of one L2 table, checking its entries.
    fn count_l2(&mut self, offset: u64, frag: bool, fix: Fix) -> Result<()> {
        let layout = self.layout;
        let cs = self.cs();
        let data_file = self.meta.data_file;
        let entries = self.l2_entries(offset)?;
        let mut next_contiguous = 0u64;
        for (i, &(word, bitmap)) in entries.iter().enumerate() {
            let kind = ClusterKind::of(word, &layout, data_file);
            if kind != ClusterKind::Compressed && word & L2_RESERVED != 0 {
                self.say(format!(
                    "ERROR found l2 entry with reserved bits set: {word:x}"
                ));
                self.t.corruptions += 1;
            }
            match kind {
                ClusterKind::Compressed => {
                    let mut word = word;
                    if word & COPIED != 0 {
                        let mask = (1u64 << layout.csize_shift()) - 1;
                        self.say(format!(
                            "ERROR: coffset={:#x}: copied flag must never be set for compressed clusters",
                            word & mask
                        ));
                        word &= !COPIED;
                        self.t.corruptions += 1;
                    }
                    if data_file {
                        self.say(format!(
                            "ERROR compressed cluster {i} with data file, entry={word:#x}"
                        ));
                        self.t.corruptions += 1;
                        continue;
                    }
                    if bitmap != 0 {
                        self.say(format!(
                            "ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, entry={word:#x}"
                        ));
                        self.t.corruptions += 1;
                        continue;
                    }
                    let (at, len) = layout.compressed_range(word);
                    self.count(at, len);
                    if frag {
                        self.t.allocated += 1;
                        self.t.compressed += 1;
                        // Compressed clusters are fragmented by nature.
                        self.t.fragmented += 1;
                    }
                }
                ClusterKind::Normal | ClusterKind::ZeroAlloc => {
                    let host = word & OFFSET_MASK;
                    if (bitmap >> 32) & bitmap != 0 {
                        self.t.corruptions += 1;
                        self.say(format!(
                            "ERROR offset={host:x}: Allocated cluster has corrupted subcluster allocation bitmap"
                        ));
                    }
                    if layout.in_cluster(host) != 0 {
                        self.t.corruptions += 1;
                        let has_data = if layout.extended {
                            bitmap & ALL_ALLOC != 0
                        } else {
                            word & ZERO == 0
                        };
                        if has_data {
                            self.say(format!(
                                "ERROR offset={host:x}: Data cluster is not properly aligned; L2 entry corrupted."
                            ));
                        } else {
                            let verb = if fix.errors { "Repairing" } else { "ERROR" };
                            self.say(format!(
                                "{verb} offset={host:x}: Preallocated cluster is not properly aligned; L2 entry corrupted."
                            ));
                            if fix.errors {
                                self.zero_entry(offset, i, bitmap)?;
                                continue;
                            }
                        }
                    }
                    if frag {
                        self.t.allocated += 1;
                        if next_contiguous != 0 && host != next_contiguous {
                            self.t.fragmented += 1;
                        }
                        next_contiguous = host.wrapping_add(cs);
                    }
                    if !data_file {
                        self.count(host, cs);
                    }
                }
                ClusterKind::ZeroPlain => {}
                ClusterKind::Unallocated => {
                    if bitmap & ALL_ALLOC != 0 {
                        self.t.corruptions += 1;
                        self.say(
                            "ERROR: Unallocated cluster has non-zero subcluster allocation map"
                                .into(),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Turns a preallocated zero cluster whose offset is unaligned into a
    /// zero cluster without allocation (subclusters stay zero).
    fn zero_entry(&mut self, table: u64, index: usize, bitmap: u64) -> Result<()> {
        let size = self.layout.l2_entry_size();
        let at = table + index as u64 * size;
        let mut bytes = Vec::with_capacity(size as usize);
        if self.layout.extended {
            let zero = (bitmap | bitmap << 32) & !ALL_ALLOC;
            bytes.extend_from_slice(&0u64.to_be_bytes());
            bytes.extend_from_slice(&zero.to_be_bytes());
        } else {
            bytes.extend_from_slice(&ZERO.to_be_bytes());
        }
        self.io.write(at, &bytes)?;
        self.io.flush()?;
        self.t.corruptions -= 1;
        self.t.corruptions_fixed += 1;
        Ok(())
    }

    /// Counts the persistent bitmaps' directory, tables and data clusters.
    fn count_bitmaps(&mut self) -> Result<()> {
        let header = &self.meta.header;
        let Some(ext) = header.ext.bitmaps else {
            return Ok(());
        };
        if ext.nb_bitmaps == 0 || header.autoclear_features & crate::header::autoclear::BITMAPS == 0
        {
            return Ok(());
        }
        self.count(ext.directory_offset, ext.directory_size);
        let bitmaps: Vec<_> = self
            .meta
            .bitmaps
            .iter()
            .filter(|b| b.on_disk)
            .cloned()
            .collect();
        for b in &bitmaps {
            self.count(b.table_offset, u64::from(b.table_size) * 8);
            let table = self.table(b.table_offset, u64::from(b.table_size))?;
            for e in table {
                let at = e & OFFSET_MASK;
                let bad = e & BITMAP_ENTRY_RESERVED != 0
                    || (at != 0 && (e & 1 != 0 || self.layout.in_cluster(at) != 0));
                if bad {
                    self.t.corruptions += 1;
                    continue;
                }
                if at != 0 {
                    self.count(at, self.cs());
                }
            }
        }
        Ok(())
    }

    /// Counts the refcount blocks and checks their table entries; sets
    /// `rebuild` when the refcount structures cannot be trusted.
    fn count_refblocks(&mut self, fix: Fix, rebuild: &mut bool) -> Result<()> {
        let bits = self.layout.cluster_bits;
        let cs = self.cs();
        for i in 0..self.reftable.len() {
            let e = self.reftable[i];
            let offset = e & !REFTABLE_RESERVED;
            let cluster = offset >> bits;
            if e & REFTABLE_RESERVED != 0 {
                self.say(format!(
                    "ERROR refcount table entry {i} has reserved bits set"
                ));
                self.t.corruptions += 1;
                *rebuild = true;
                continue;
            }
            if self.layout.in_cluster(offset) != 0 {
                self.say(format!(
                    "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
                ));
                self.t.corruptions += 1;
                *rebuild = true;
                continue;
            }
            if cluster >= self.refs.len() as u64 {
                self.t.corruptions += 1;
                let verb = if fix.errors { "Repairing" } else { "ERROR" };
                self.say(format!("{verb} refcount block {i} is outside image"));
                if fix.errors {
                    match self.grow_file(offset + cs) {
                        Ok(()) => {
                            self.t.corruptions -= 1;
                            self.t.corruptions_fixed += 1;
                            self.count(offset, cs);
                        }
                        Err(text) => {
                            *rebuild = true;
                            self.say(format!("{{prog}}: Could not resize file: {text}"));
                            self.say(format!("ERROR could not resize image: {text}"));
                        }
                    }
                }
                continue;
            }
            if offset != 0 {
                self.count(offset, cs);
                let n = self.refs[cluster as usize];
                if n != 1 {
                    self.say(format!("ERROR refcount block {i} refcount={n}"));
                    self.t.corruptions += 1;
                    *rebuild = true;
                }
            }
        }
        Ok(())
    }

    /// Makes the file `len` bytes long so that a refcount block past its
    /// end lies inside it.
    fn grow_file(&mut self, len: u64) -> std::result::Result<(), String> {
        if len > self.file_len.saturating_add(MAX_GROWTH) {
            return Err("File too large".into());
        }
        self.io
            .file
            .set_len(len, Prealloc::OFF)
            .into_result()
            .map_err(|e| e.message.to_string())?;
        self.file_len = len;
        let clusters = self.layout.clusters_for(len) as usize;
        if clusters > self.refs.len() {
            self.refs.resize(clusters, 0);
        }
        Ok(())
    }

    /// Counts every reference in the image.
    fn count_all(&mut self, fix: Fix, rebuild: &mut bool) -> Result<()> {
        let cs = self.cs();
        let h = self.meta.header.clone();
        self.count(0, cs);
        self.count_l1(h.l1_table_offset, h.l1_size, true, fix)?;
        let snapshots = self.meta.snapshots.clone();
        if self.meta.data_file && !snapshots.is_empty() {
            self.say(format!(
                "ERROR {} snapshots in image with data file",
                snapshots.len()
            ));
            self.t.corruptions += 1;
        }
        for s in &snapshots {
            if self.layout.in_cluster(s.l1_table_offset) != 0 {
                self.say(format!(
                    "ERROR snapshot {} ({}) l1_offset={}: L1 table is not cluster aligned; snapshot table entry corrupted",
                    String::from_utf8_lossy(&s.id),
                    String::from_utf8_lossy(&s.name),
                    hex(s.l1_table_offset)
                ));
                self.t.corruptions += 1;
                continue;
            }
            if s.l1_size > MAX_SNAPSHOT_L1_ENTRIES {
                self.say(format!(
                    "ERROR snapshot {} ({}) l1_size={}: L1 table is too large; snapshot table entry corrupted",
                    String::from_utf8_lossy(&s.id),
                    String::from_utf8_lossy(&s.name),
                    hex(u64::from(s.l1_size))
                ));
                self.t.corruptions += 1;
                continue;
            }
            self.count_l1(s.l1_table_offset, s.l1_size, false, fix)?;
        }
        self.count(h.snapshots_offset, self.meta.snapshots_size);
        self.count(h.refcount_table_offset, self.reftable_entries * 8);
        if let Some((offset, len)) = h.ext.crypto {
            self.count(offset, len);
        }
        self.count_bitmaps()?;
        self.count_refblocks(fix, rebuild)
    }

    // ---- refcounts on disk ----

    /// The refcount of `cluster` as the refcount structures record it.
    fn refcount(&mut self, cluster: u64) -> std::result::Result<u64, RefcountError> {
        let bits = self.layout.refblock_bits();
        let index = cluster >> bits;
        let entry = usize::try_from(index)
            .ok()
            .and_then(|i| self.reftable.get(i))
            .copied()
            .unwrap_or(0);
        let block = entry & !REFTABLE_RESERVED;
        if block == 0 {
            return Ok(0);
        }
        if self.layout.in_cluster(block) != 0 {
            self.signal(format!(
                "Refblock offset {} unaligned (reftable index: {})",
                hex(block),
                hex(index)
            ));
            return Err(RefcountError::Unaligned);
        }
        let order = self.layout.refcount_order;
        let i = (cluster & ((1 << bits) - 1)) as usize;
        let data = self.block(block).map_err(RefcountError::Io)?;
        Ok(get_refcount(data, order, i))
    }

    fn block(&mut self, offset: u64) -> Result<&mut Vec<u8>> {
        if !self.blocks.contains_key(&offset) {
            let mut data = vec![0u8; self.cs() as usize];
            self.io.read(offset, &mut data)?;
            self.blocks.insert(offset, data);
        }
        self.blocks
            .get_mut(&offset)
            .ok_or_else(|| Error::invalid("refcount block vanished"))
    }

    /// Stores a refcount in an existing refcount block (written out by
    /// [`Checker::write_blocks`]).
    fn set_refcount(&mut self, cluster: u64, value: u64) -> Result<()> {
        let bits = self.layout.refblock_bits();
        let entry = self
            .reftable
            .get((cluster >> bits) as usize)
            .copied()
            .unwrap_or(0);
        let block = entry & !REFTABLE_RESERVED;
        if block == 0 || self.layout.in_cluster(block) != 0 {
            return Err(Error::Corrupt);
        }
        let order = self.layout.refcount_order;
        let i = (cluster & ((1 << bits) - 1)) as usize;
        put_refcount(self.block(block)?, order, i, value);
        self.dirty_blocks.insert(block);
        if value == 0 {
            self.freed.push(cluster);
        }
        Ok(())
    }

    /// Writes the changed refcount blocks, then discards freed clusters.
    fn write_blocks(&mut self) -> Result<()> {
        let cs = self.layout.cluster_size();
        for offset in std::mem::take(&mut self.dirty_blocks) {
            // A damaged table may name other metadata as a refcount block.
            self.meta
                .check_overlap(self.io, offset, cs, Some(MetaKind::RefcountBlock))?;
            if let Some(data) = self.blocks.get(&offset) {
                self.io.write(offset, data)?;
            }
        }
        self.io.flush()?;
        let bits = self.layout.cluster_bits;
        let freed: Vec<u64> = std::mem::take(&mut self.freed)
            .into_iter()
            .map(|c| c << bits)
            .collect();
        punch_clusters(self.io, &freed, self.cs())
    }

    /// Reports a corruption the way qemu does, once per image: an image
    /// open for writing is marked corrupt.
    fn signal(&mut self, what: String) {
        if self.signalled {
            return;
        }
        self.signalled = true;
        if self.writable {
            self.say(format!(
                "qcow2: Marking image as corrupt: {what}; further corruption events will be suppressed"
            ));
            self.meta.header.incompatible_features |= incompat::CORRUPT;
            self.meta.header_dirty = true;
        } else {
            self.say(format!(
                "qcow2: Image is corrupt: {what}; further non-fatal corruption events will be suppressed"
            ));
        }
    }

    /// Compares the counted references with the refcounts, repairing as
    /// `fix` allows; returns the highest cluster in use.
    fn compare(&mut self, fix: Fix, rebuild: &mut bool) -> Result<u64> {
        let mut highest = 0;
        for i in 0..self.refs.len() as u64 {
            let on_disk = match self.refcount(i) {
                Ok(n) => n,
                Err(RefcountError::Unaligned) => {
                    self.say(format!(
                        "Can't get refcount for cluster {i}: Input/output error"
                    ));
                    self.t.check_errors += 1;
                    continue;
                }
                Err(RefcountError::Io(e)) => {
                    self.say(format!("Can't get refcount for cluster {i}: {e}"));
                    self.t.check_errors += 1;
                    continue;
                }
            };
            let counted = u64::from(self.refs[i as usize]);
            if on_disk > 0 || counted > 0 {
                highest = i;
            }
            if on_disk == counted {
                continue;
            }
            let repair = if on_disk == 0 {
                *rebuild = true;
                false
            } else if on_disk > counted {
                fix.leaks
            } else {
                fix.errors
            };
            let verb = if repair {
                "Repairing"
            } else if on_disk < counted {
                "ERROR"
            } else {
                "Leaked"
            };
            self.say(format!(
                "{verb} cluster {i} refcount={on_disk} reference={counted}"
            ));
            if repair && self.set_refcount(i, counted).is_ok() {
                if on_disk > counted {
                    self.t.leaks_fixed += 1;
                } else {
                    self.t.corruptions_fixed += 1;
                }
                continue;
            }
            if on_disk < counted {
                self.t.corruptions += 1;
            } else {
                self.t.leaks += 1;
            }
        }
        self.write_blocks()?;
        Ok(highest)
    }

    /// Checks that bit 63 (QCOW_OFLAG_COPIED) of the active L1 and L2
    /// entries says whether the refcount is exactly one, repairing when
    /// asked (or, with `-r leaks`, when everything else is now clean).
    fn check_copied(&mut self, fix: Fix) -> Result<()> {
        let repair = fix.errors
            || (fix.leaks
                && self.t.check_errors == 0
                && self.t.corruptions == 0
                && self.t.leaks == 0);
        let verb = if repair { "Repairing" } else { "ERROR" };
        let bits = self.layout.cluster_bits;
        let layout = self.layout;
        let data_file = self.meta.data_file;
        let l1_offset = self.meta.header.l1_table_offset;
        for i in 0..self.l1.len() {
            let e = self.l1[i];
            let l2 = e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            let Ok(rc) = self.refcount(l2 >> bits) else {
                continue;
            };
            if (rc == 1) != (e & COPIED != 0) {
                self.t.corruptions += 1;
                self.say(format!(
                    "{verb} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={rc}"
                ));
                if repair {
                    let at = l1_offset + i as u64 * 8;
                    // QEMU's overlap check: the L1 table is not written
                    // where it is also an active L2 table (a repair there
                    // would rewrite guest data); the image is marked
                    // corrupt and the check fails instead.
                    let cluster = at >> bits << bits;
                    if self.l1.iter().any(|&x| x & OFFSET_MASK == cluster) {
                        let error = self.meta.corruption(
                            "Preventing invalid write on metadata (overlaps with active L2 table)"
                                .into(),
                        );
                        self.meta.write_header(self.io)?;
                        self.io.flush()?;
                        return Err(error);
                    }
                    let fixed = if rc == 1 { e | COPIED } else { e & !COPIED };
                    self.l1[i] = fixed;
                    let at = l1_offset + i as u64 * 8;
                    let own = Some(MetaKind::ActiveL1);
                    self.meta.check_overlap(self.io, at, 8, own)?;
                    self.io.write(at, &fixed.to_be_bytes())?;
                    self.t.corruptions -= 1;
                    self.t.corruptions_fixed += 1;
                }
            }
            let mut entries = self.l2_entries(l2)?;
            let mut changed = 0u64;
            for entry in entries.iter_mut() {
                let word = entry.0;
                if !matches!(
                    ClusterKind::of(word, &layout, data_file),
                    ClusterKind::Normal | ClusterKind::ZeroAlloc
                ) {
                    continue;
                }
                let rc = if data_file {
                    1
                } else {
                    match self.refcount((word & OFFSET_MASK) >> bits) {
                        Ok(n) => n,
                        Err(_) => continue,
                    }
                };
                if (rc == 1) != (word & COPIED != 0) {
                    self.t.corruptions += 1;
                    self.say(format!(
                        "{verb} OFLAG_COPIED data cluster: l2_entry={word:x} refcount={rc}"
                    ));
                    if repair {
                        entry.0 = if rc == 1 {
                            word | COPIED
                        } else {
                            word & !COPIED
                        };
                        changed += 1;
                    }
                }
            }
            if changed > 0 {
                let mut bytes = Vec::with_capacity(self.cs() as usize);
                for (word, bitmap) in &entries {
                    bytes.extend_from_slice(&word.to_be_bytes());
                    if layout.extended {
                        bytes.extend_from_slice(&bitmap.to_be_bytes());
                    }
                }
                self.io.write(l2, &bytes)?;
                self.t.corruptions -= changed;
                self.t.corruptions_fixed += changed;
            }
        }
        self.io.flush()
    }

    // ---- rebuilding the refcount structures ----

    /// Finds `n` contiguous clusters without references, from
    /// `*first_free` on (which moves to the first free cluster seen), past
    /// the end if need be, and counts them as used.
    fn alloc(&mut self, n: u64, first_free: &mut u64) -> u64 {
        let mut c = *first_free;
        let mut run = 0u64;
        let mut first_gap = true;
        while c < self.refs.len() as u64 && run < n {
            if self.refs[c as usize] == 0 {
                run += 1;
                if first_gap {
                    *first_free = c;
                    first_gap = false;
                }
            } else {
                run = 0;
            }
            c += 1;
        }
        if run < n {
            let need = (c + n - run) as usize;
            if need > self.refs.len() {
                self.refs.resize(need, 0);
            }
        }
        let start = c - run;
        for k in start..start + n {
            self.refs[k as usize] = 1;
        }
        start << self.layout.cluster_bits
    }

    /// Writes a refcount block for every range of clusters in `[first,
    /// end)` that holds a counted cluster, allocating the blocks (and
    /// entries in `table`) that do not exist yet. Returns true if `table`
    /// had to grow.
    fn write_refblocks(&mut self, first: u64, mut end: u64, table: &mut Vec<u64>) -> Result<bool> {
        let bits = self.layout.refblock_bits();
        let per_block = 1u64 << bits;
        let cs = self.cs();
        let mut first_free = 0u64;
        let mut grown = false;
        let mut c = first;
        while c < end {
            if self.refs.get(c as usize).copied().unwrap_or(0) == 0 {
                c += 1;
                continue;
            }
            let index = c >> bits;
            let start = index << bits;
            let offset = match table.get(index as usize) {
                Some(&o) if o != 0 => o,
                _ => {
                    first_free = first_free.max(start);
                    let o = self.alloc(1, &mut first_free);
                    let at = o >> self.layout.cluster_bits;
                    if at >= end {
                        end = at + 1;
                    }
                    if table.len() as u64 <= index {
                        let entries = ((index + 1) * 8).next_multiple_of(cs) / 8;
                        if entries * 8 > 8 << 20 {
                            return Err(Error::Errno(27, "File too large".into()));
                        }
                        table.resize(entries as usize, 0);
                        grown = true;
                    }
                    table[index as usize] = o;
                    o
                }
            };
            let mut block = vec![0u8; cs as usize];
            let order = self.layout.refcount_order;
            for k in start..start + per_block {
                match self.refs.get(k as usize) {
                    Some(&n) if n > 0 => {
                        put_refcount(&mut block, order, (k - start) as usize, u64::from(n))
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            // The counts miss what a damaged image hides (an L1 table past
            // its end): never write where the header says metadata is.
            let kind = Some(MetaKind::RefcountBlock);
            if let Err(e) = self.meta.check_overlap(self.io, offset, cs, kind) {
                self.say(format!("{{prog}}: ERROR writing refblock: {e}"));
                return Err(e);
            }
            self.io.write(offset, &block)?;
            c = start + per_block;
        }
        Ok(grown)
    }

    /// Writes new refcount blocks and a new refcount table from the
    /// counted references, then points the header at the table. The old
    /// structures are left behind as leaks for the caller to free.
    fn rebuild(&mut self) -> Result<()> {
        self.blocks.clear();
        self.dirty_blocks.clear();
        let cs = self.cs();
        let mut table = Vec::new();
        let all = self.refs.len() as u64;
        self.write_refblocks(0, all, &mut table)?;
        let (offset, clusters) = loop {
            let clusters = (table.len() as u64 * 8).div_ceil(cs);
            let mut first_free = 0;
            let offset = self.alloc(clusters, &mut first_free);
            let start = offset >> self.layout.cluster_bits;
            if !self.write_refblocks(start, start + clusters, &mut table)? {
                break (offset, clusters);
            }
        };
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        let kind = Some(MetaKind::RefcountTable);
        let len = bytes.len() as u64;
        if let Err(e) = self.meta.check_overlap(self.io, offset, len, kind) {
            self.say(format!("{{prog}}: ERROR writing reftable: {e}"));
            return Err(e);
        }
        self.io.write(offset, &bytes)?;
        self.io.flush()?;
        let mut fields = offset.to_be_bytes().to_vec();
        fields.extend_from_slice(&(clusters as u32).to_be_bytes());
        self.io.write(48, &fields)?;
        self.io.flush()?;
        self.meta.header.refcount_table_offset = offset;
        self.meta.header.refcount_table_clusters = clusters as u32;
        self.meta.on_disk.refcount_table_offset = offset;
        self.meta.on_disk.refcount_table_clusters = clusters as u32;
        self.reftable_entries = table.len() as u64;
        while table.last() == Some(&0) {
            table.pop();
        }
        self.reftable = table;
        self.file_len = self.io.file.len().into_result()?;
        self.rebuilt = true;
        Ok(())
    }

    /// Recounts every reference from scratch.
    fn recount(&mut self, fix: Fix, rebuild: &mut bool) -> Result<()> {
        self.refs.clear();
        self.refs
            .resize(self.layout.clusters_for(self.file_len) as usize, 0);
        self.count_all(fix, rebuild)
    }

    /// The whole check of the refcounts (qemu's order of steps and counts).
    fn run(&mut self, fix: Fix) -> Result<u64> {
        let mut rebuild = false;
        self.recount(fix, &mut rebuild)?;
        let before = self.t;
        let mut highest = self.compare(Fix::NONE, &mut rebuild)?;
        if rebuild && fix.errors {
            let old = self.t;
            self.say("Rebuilding refcount structure".into());
            self.rebuild()?;
            self.t.corruptions = 0;
            self.t.leaks = 0;
            rebuild = false;
            let keep = self.refs.len();
            self.refs.clear();
            self.refs.resize(keep, 0);
            self.count_all(Fix::NONE, &mut rebuild)?;
            let mut fresh_leaks = 0;
            if fix.leaks {
                let saved = self.t;
                self.t = Tally::default();
                highest = self.compare(
                    Fix {
                        leaks: true,
                        errors: false,
                    },
                    &mut rebuild,
                )?;
                if rebuild {
                    self.say("ERROR rebuilt refcount structure is still broken".into());
                }
                fresh_leaks = self.t.leaks;
                self.t = saved;
            }
            if self.t.corruptions < old.corruptions {
                self.t.corruptions_fixed += old.corruptions - self.t.corruptions;
            }
            if self.t.leaks < old.leaks {
                self.t.leaks_fixed += old.leaks - self.t.leaks;
            }
            self.t.leaks += fresh_leaks;
        } else if fix.any() {
            if rebuild {
                self.say("ERROR need to rebuild refcount structures".into());
                self.t.check_errors += 1;
                return Err(Error::Errno(crate::error::EIO, "Input/output error".into()));
            }
            if self.t.leaks > 0 || self.t.corruptions > 0 {
                self.t = before;
                highest = self.compare(fix, &mut rebuild)?;
            }
        }
        self.check_copied(fix)?;
        Ok(highest)
    }
}

/// What the snapshot table's faults (found at open) add to a check.
struct TableFaults {
    /// Lines to print first.
    messages: Vec<String>,
    /// Faults left.
    corruptions: u64,
    /// Faults repaired (the table is then written anew).
    fixed: u64,
}

/// The snapshot table's faults as qemu-img reports them. A table qemu
/// cannot read at all ends the check: the report is the error.
fn table_faults(
    issues: &[TableIssue],
    fix: Fix,
) -> std::result::Result<TableFaults, Box<CheckReport>> {
    let mut out = TableFaults {
        messages: Vec::new(),
        corruptions: 0,
        fixed: 0,
    };
    let unreadable = |lines: [String; 2]| {
        Box::new(CheckReport {
            messages: lines.to_vec(),
            check_errors: 1,
            failure: Some("File too large".into()),
            ..CheckReport::default()
        })
    };
    for issue in issues {
        match *issue {
            // qemu-img's repair of this one writes over its own metadata;
            // qimg leaves the image alone in every mode.
            TableIssue::TooMany { overhang } => {
                return Err(unreadable([
                    "{prog}: ERROR snapshot table too large".into(),
                    format!("You can force-remove all {overhang} overhanging snapshots with qemu-img check -r all"),
                ]))
            }
            TableIssue::TooMuchExtra { entry, .. } if !fix.errors => {
                return Err(unreadable([
                    format!("{{prog}}: ERROR failed to read the snapshot table: Too much extra metadata in snapshot table entry {entry}"),
                    "You can force-remove this extra metadata with qemu-img check -r all".into(),
                ]))
            }
            TableIssue::TooMuchExtra { entry, size } => {
                out.messages.push(format!(
                    "Discarding too much extra metadata in snapshot table entry {entry} ({size} > {MAX_EXTRA_DATA})"
                ));
                out.fixed += 1;
            }
            TableIssue::Incomplete { entry } if fix.errors => {
                out.messages.push(format!(
                    "Repairing snapshot table entry {entry} is incomplete"
                ));
                out.fixed += 1;
            }
            TableIssue::Incomplete { entry } => {
                out.messages
                    .push(format!("ERROR snapshot table entry {entry} is incomplete"));
                out.corruptions += 1;
            }
        }
    }
    Ok(out)
}

impl Qcow2Image {
    /// Checks the image (repairing as `repair` says) and reports as
    /// qemu-img does. A check that cannot go on reports its messages and
    /// the reason in `failure`.
    pub fn check(&self, repair: Repair) -> Result<CheckReport> {
        let fix = match repair {
            Repair::None => Fix::NONE,
            Repair::Leaks => Fix {
                leaks: true,
                errors: false,
            },
            Repair::All => Fix {
                leaks: true,
                errors: true,
            },
        };
        if fix.any() && !self.writable {
            return Err(Error::ReadOnly);
        }
        let mut meta = self.lock();
        meta.flush(&self.io)?;
        let table = match table_faults(&meta.snapshot_issues, fix) {
            Ok(table) => table,
            Err(report) => return Ok(*report),
        };
        let file_len = self.io.file.len().into_result()?;
        let layout = meta.layout;
        let h = meta.header.clone();
        let reftable_entries = u64::from(h.refcount_table_clusters) * layout.cluster_size() / 8;
        let reftable = read_table(
            &self.io,
            h.refcount_table_offset,
            reftable_entries,
            file_len,
        )?;
        let l1 = read_table(&self.io, h.l1_table_offset, u64::from(h.l1_size), file_len)?;
        let max = layout.refcount_max().min(u64::from(u32::MAX)) as u32;
        let mut checker = Checker {
            io: &self.io,
            layout,
            meta: &mut meta,
            file_len,
            writable: self.writable,
            reftable,
            reftable_entries,
            blocks: HashMap::new(),
            dirty_blocks: BTreeSet::new(),
            freed: Vec::new(),
            l1,
            refs: Vec::new(),
            max,
            t: Tally::default(),
            messages: Vec::new(),
            signalled: false,
            rebuilt: false,
        };
        let outcome = checker.run(fix);
        let t = checker.t;
        // Refcounts that could not be read are errors of the old refcount
        // structures; once those are rebuilt, the image is consistent.
        let errors_gone = t.check_errors == 0 || checker.rebuilt;
        let mut messages = table.messages;
        messages.append(&mut checker.messages);
        let l1 = std::mem::take(&mut checker.l1);
        drop(checker);
        let mut report = CheckReport {
            corruptions: t.corruptions + table.corruptions,
            leaks: t.leaks,
            check_errors: t.check_errors,
            corruptions_fixed: t.corruptions_fixed + table.fixed,
            leaks_fixed: t.leaks_fixed,
            total_clusters: Some(layout.clusters_for(self.size().div_ceil(512) * 512)),
            allocated_clusters: Some(t.allocated),
            fragmented_clusters: Some(t.fragmented),
            compressed_clusters: Some(t.compressed),
            messages,
            ..CheckReport::default()
        };
        match outcome {
            Ok(highest) => {
                report.image_end_offset = Some((highest + 1) * layout.cluster_size());
                let marks = incompat::DIRTY | incompat::CORRUPT;
                if fix.any()
                    && errors_gone
                    && t.corruptions == 0
                    && meta.header.incompatible_features & marks != 0
                {
                    meta.header.incompatible_features &= !marks;
                    meta.header_dirty = true;
                }
            }
            Err(e) => report.failure = Some(e.to_string()),
        }
        if fix.any() {
            refresh(&mut meta, &self.io, l1)?;
        }
        if table.fixed > 0 && report.failure.is_none() {
            // The old table's clusters are given back, as qemu does.
            meta.discarded = Some(Vec::new());
            let rewritten = meta.rewrite_snapshot_table(&self.io);
            let freed = meta.discarded.take().unwrap_or_default();
            rewritten?;
            self.discard_freed(&mut meta, &freed)?;
            meta.snapshot_issues.clear();
        }
        if meta.header_dirty {
            meta.write_header(&self.io)?;
            self.io.flush()?;
        }
        Ok(report)
    }
}

impl Qcow2Image {
    /// Repairs the refcounts of an image opened for writing with the dirty
    /// bit set, as qemu does on open: a full `check -r all`, its lines on
    /// stderr.
    pub(crate) fn repair_dirty(&self) -> Result<()> {
        let report = self.check(Repair::All)?;
        for line in &report.messages {
            eprintln!("{}", line.strip_prefix("{prog}: ").unwrap_or(line));
        }
        let reason = match (&report.failure, report.check_errors) {
            (Some(reason), _) => reason.clone(),
            (None, 0) => return Ok(()),
            (None, _) => "Input/output error".into(),
        };
        Err(Error::invalid(format!(
            "Could not repair dirty image: {reason}"
        )))
    }
}

/// Brings the cached metadata in line with what a repair wrote to disk.
fn refresh(meta: &mut Meta, io: &Io, l1: Vec<u64>) -> Result<()> {
    let file_len = io.file.len().into_result()?;
    let h = &meta.header;
    let entries = u64::from(h.refcount_table_clusters) * meta.layout.cluster_size() / 8;
    meta.reftable = read_table(io, h.refcount_table_offset, entries, file_len)?;
    meta.l1 = l1;
    while meta.l1.last() == Some(&0) {
        meta.l1.pop();
    }
    meta.clear_caches();
    Ok(())
}
