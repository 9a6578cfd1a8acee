//! Persistent dirty bitmaps (qcow2.txt "Bitmaps"): the bitmap directory,
//! bitmap tables and data, and what `qemu-img bitmap` and QEMU do with
//! them.
//!
//! The life cycle is QEMU's, so that an image qimg changed carries the
//! bitmaps QEMU would have recorded, laid out where QEMU lays them out:
//!
//! - an image opened for writing loads every consistent bitmap into memory
//!   and marks it in use on disk (flag bit 0); a bitmap already in use at
//!   that moment was not saved cleanly and stays as it is (inconsistent);
//! - writes, zero writes and discards set the bits of enabled bitmaps
//!   (flag bit 1, "auto") for every granule they touch;
//! - closing stores every loaded bitmap anew (data clusters for the parts
//!   with bits set, a table, then a new directory) and frees the old
//!   clusters, which clears the in-use flags;
//! - `--remove` rewrites the directory at once.
//!
//! Bitmap data is held sparsely, one bitmap cluster at a time and only
//! where bits are set, so memory follows the data, not the guest size.

use crate::error::{Error, Result};
use crate::header::{autoclear, BitmapsExt};
use crate::image::Qcow2Image;
use crate::layout::{Layout, OFFSET_MASK};
use crate::meta::{self, Io, Meta};
use crate::overlap::MetaKind;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Most bitmaps qemu supports in one image.
const MAX_BITMAPS: usize = 65535;
/// Largest directory qemu accepts.
const MAX_DIRECTORY_BYTES: u64 = 64 << 20;
/// Longest bitmap name (qcow2.txt: `name_size` at most 1023).
const MAX_NAME: usize = 1023;
/// Smallest and largest granularity qemu handles, as log2 of bytes.
const MIN_GRANULARITY_BITS: u32 = 9;
/// See [`MIN_GRANULARITY_BITS`].
const MAX_GRANULARITY_BITS: u32 = 31;
/// Most bytes of bitmap data qemu stores for one bitmap.
const MAX_PHYS_BYTES: u64 = 512 << 20;

/// Bit 0 of an entry's flags: the bitmap was not saved cleanly.
pub const FLAG_IN_USE: u32 = 1;
/// Bit 1: the bitmap tracks writes.
pub const FLAG_AUTO: u32 = 2;
/// Bit 2: extra data may be ignored by readers that do not know it.
const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 4;
/// Bit 0 of a bitmap table entry: with offset 0, every bit is set.
const ENTRY_ALL_ONES: u64 = 1;

/// One bitmap cluster's bits.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Chunk {
    /// Every bit set (a table entry with bit 0 and no cluster).
    Ones,
    /// The bits, one cluster of them.
    Bytes(Vec<u8>),
}

/// The bits of a bitmap, by bitmap cluster; clusters without bits set are
/// absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bits {
    chunks: BTreeMap<u64, Chunk>,
}

impl Bits {
    /// Sets bits `[first, last]` (bit `i` of byte `j` of a cluster is bit
    /// `8j + i`, qcow2.txt "Bitmap data"), in clusters of `cs` bytes.
    fn set(&mut self, first: u64, last: u64, cs: u64) {
        let per = cs * 8;
        let mut bit = first;
        while bit <= last {
            let index = bit / per;
            let end = last.min((index + 1) * per - 1);
            let chunk = self
                .chunks
                .entry(index)
                .or_insert_with(|| Chunk::Bytes(vec![0u8; cs as usize]));
            if let Chunk::Bytes(bytes) = chunk {
                for b in (bit - index * per)..=(end - index * per) {
                    bytes[(b / 8) as usize] |= 1 << (b % 8);
                }
            }
            bit = end + 1;
        }
    }

    /// Every bit that is set, as runs `[first, last]` of bit numbers below
    /// `count`.
    fn runs(&self, count: u64, cs: u64) -> Vec<(u64, u64)> {
        let per = cs * 8;
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut push = |a: u64, b: u64| match out.last_mut() {
            Some(last) if last.1 + 1 == a => last.1 = b,
            _ => out.push((a, b)),
        };
        for (&index, chunk) in &self.chunks {
            let base = index * per;
            if base >= count {
                break;
            }
            match chunk {
                Chunk::Ones => push(base, (base + per).min(count) - 1),
                Chunk::Bytes(bytes) => {
                    for (i, &byte) in bytes.iter().enumerate() {
                        if byte == 0 {
                            continue;
                        }
                        for k in 0..8 {
                            let bit = base + i as u64 * 8 + k;
                            if byte >> k & 1 != 0 && bit < count {
                                push(bit, bit);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Drops every bit at or past `count`.
    fn truncate(&mut self, count: u64, cs: u64) {
        let per = cs * 8;
        let keep = count.div_ceil(per);
        self.chunks.retain(|&i, _| i < keep);
        if !count.is_multiple_of(per) {
            if let Some(chunk) = self.chunks.get_mut(&(count / per)) {
                let mut bytes = match chunk {
                    Chunk::Ones => vec![0xffu8; cs as usize],
                    Chunk::Bytes(b) => std::mem::take(b),
                };
                for bit in (count % per)..per {
                    bytes[(bit / 8) as usize] &= !(1 << (bit % 8));
                }
                *chunk = Chunk::Bytes(bytes);
            }
        }
    }

    /// The cluster `index` as stored, if any bit in it is set.
    fn cluster(&self, index: u64, cs: u64) -> Option<Vec<u8>> {
        match self.chunks.get(&index)? {
            Chunk::Ones => Some(vec![0xff; cs as usize]),
            Chunk::Bytes(b) if b.iter().any(|&x| x != 0) => Some(b.clone()),
            Chunk::Bytes(_) => None,
        }
    }
}

/// One persistent bitmap: its directory entry and, while the image is open
/// for writing, its bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    /// Its name, bytes as stored.
    pub name: Vec<u8>,
    /// log2 of the bytes of guest data per bit.
    pub granularity_bits: u32,
    /// Flags as the directory on disk holds them.
    pub flags: u32,
    /// Offset of its bitmap table on disk (0: not stored yet).
    pub table_offset: u64,
    /// Entries in its bitmap table.
    pub table_size: u32,
    /// Extra data of its directory entry, kept as found.
    pub extra: Vec<u8>,
    /// The bitmap is in the directory on disk.
    pub on_disk: bool,
    /// The bitmap records writes.
    pub enabled: bool,
    /// It was in use when the image was opened: not saved cleanly, so its
    /// bits cannot be trusted and it is left as it is.
    pub inconsistent: bool,
    /// Its bits, when loaded (images open for writing).
    pub bits: Option<Bits>,
}

impl Bitmap {
    /// Bytes of guest data per bit.
    pub fn granularity(&self) -> u64 {
        1 << self.granularity_bits
    }

    /// The name as text.
    pub fn name_text(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// The object `info` prints under `bitmaps`.
    pub fn info(&self) -> Value {
        let mut flags = Vec::new();
        if self.flags & FLAG_IN_USE != 0 {
            flags.push("in-use");
        }
        if self.flags & FLAG_AUTO != 0 {
            flags.push("auto");
        }
        json!({"flags": flags, "name": self.name_text(), "granularity": self.granularity()})
    }

    /// Appends the directory entry (qcow2.txt "Bitmap directory"), padded
    /// to 8 bytes.
    fn serialize(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.table_offset.to_be_bytes());
        out.extend_from_slice(&self.table_size.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.push(1);
        out.push(self.granularity_bits as u8);
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.extra.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.extra);
        out.extend_from_slice(&self.name);
        out.resize(out.len().next_multiple_of(8), 0);
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the directory the extension points to, bounded by the file, and
/// checks each entry as qemu does before it uses any (for an image of
/// `size` guest bytes in clusters of `cs` bytes).
pub fn read_directory(
    io: &Io,
    ext: &BitmapsExt,
    file_len: u64,
    size: u64,
    cs: u64,
) -> Result<Vec<Bitmap>> {
    if ext.nb_bitmaps == 0 {
        return Ok(Vec::new());
    }
    if ext.nb_bitmaps as usize > MAX_BITMAPS {
        return Err(Error::invalid(format!(
            "bitmaps_ext: File {} has too many bitmaps",
            ext.nb_bitmaps
        )));
    }
    if ext.directory_size > MAX_DIRECTORY_BYTES
        || ext.directory_offset.saturating_add(ext.directory_size) > file_len
    {
        return Err(Error::invalid("bitmaps_ext: Bitmap directory is too large"));
    }
    let mut dir = vec![0u8; ext.directory_size as usize];
    io.read(ext.directory_offset, &mut dir)?;
    let bad = || Error::invalid("Failed to read bitmap directory");
    let mut out = Vec::new();
    let mut at = 0usize;
    for _ in 0..ext.nb_bitmaps {
        let fixed = dir.get(at..at + 24).ok_or_else(bad)?;
        let name_len = usize::from(u16::from_be_bytes([fixed[18], fixed[19]]));
        let extra_len = be32(fixed, 20) as usize;
        let granularity_bits = u32::from(fixed[17]);
        let start = at + 24;
        let extra = dir.get(start..start + extra_len).ok_or_else(bad)?.to_vec();
        let name = dir
            .get(start + extra_len..start + extra_len + name_len)
            .ok_or_else(bad)?
            .to_vec();
        let flags = be32(fixed, 12);
        let table_offset = u64::from(be32(fixed, 0)) << 32 | u64::from(be32(fixed, 4));
        let table_size = be32(fixed, 8);
        let text = String::from_utf8_lossy(&name).into_owned();
        // qcow2.txt "Bitmap directory": type 1, granularity 2^9..2^31 in
        // qemu, a name, a cluster-aligned table, at most 512 MiB of data.
        let fits = fixed[16] == 1
            && (MIN_GRANULARITY_BITS..=MAX_GRANULARITY_BITS).contains(&granularity_bits)
            && (1..=MAX_NAME).contains(&name_len)
            && table_offset != 0
            && table_offset % cs == 0
            && u64::from(table_size) * cs <= MAX_PHYS_BYTES;
        if !fits {
            return Err(Error::invalid(format!(
                "Bitmap '{text}' doesn't satisfy the constraints"
            )));
        }
        if flags & FLAG_IN_USE == 0
            && u64::from(table_size) != table_entries(size, granularity_bits, cs)
        {
            return Err(Error::invalid(format!(
                "Could not read bitmap '{text}' from image: Invalid argument"
            )));
        }
        out.push(Bitmap {
            name,
            granularity_bits,
            flags,
            table_offset,
            table_size,
            extra,
            on_disk: true,
            enabled: flags & FLAG_AUTO != 0,
            inconsistent: flags & FLAG_IN_USE != 0,
            bits: None,
        });
        at = (start + extra_len + name_len).next_multiple_of(8);
    }
    Ok(out)
}

/// Bits in a bitmap of `granularity_bits` over `size` guest bytes.
fn bit_count(size: u64, granularity_bits: u32) -> u64 {
    size.div_ceil(1 << granularity_bits)
}

/// Entries of the bitmap table of such a bitmap.
fn table_entries(size: u64, granularity_bits: u32, cs: u64) -> u64 {
    bit_count(size, granularity_bits).div_ceil(8).div_ceil(cs)
}

/// The bitmap's bits as its table on disk records them; the clusters its
/// table and data occupy go into `held`.
fn load_bits(
    io: &Io,
    b: &Bitmap,
    layout: &Layout,
    file_len: u64,
    held: &mut BTreeSet<u64>,
) -> Result<Bits> {
    let cs = layout.cluster_size();
    let mut bits = Bits::default();
    let table = meta::read_table(io, b.table_offset, u64::from(b.table_size), file_len)?;
    let table_bytes = u64::from(b.table_size) * 8;
    if table_bytes > 0 {
        let first = b.table_offset >> layout.cluster_bits;
        held.extend(first..=(b.table_offset + table_bytes - 1) >> layout.cluster_bits);
    }
    for (i, &e) in table.iter().enumerate() {
        let at = e & OFFSET_MASK;
        if at != 0 {
            held.insert(at >> layout.cluster_bits);
            let mut data = vec![0u8; cs as usize];
            io.read(at, &mut data)?;
            if data.iter().any(|&x| x != 0) {
                bits.chunks.insert(i as u64, Chunk::Bytes(data));
            }
        } else if e & ENTRY_ALL_ONES != 0 {
            bits.chunks.insert(i as u64, Chunk::Ones);
        }
    }
    Ok(bits)
}

/// The inconsistent bitmap refusal (two lines, as qemu words it).
fn inconsistent(b: &Bitmap) -> Error {
    Error::argument(format!(
        "Bitmap '{}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk",
        b.name_text()
    ))
}

fn not_found(name: &str) -> Error {
    Error::argument(format!("Dirty bitmap '{name}' not found"))
}

/// Guest byte runs a bitmap has dirty, from its bit runs.
fn guest_runs(runs: &[(u64, u64)], granularity_bits: u32, size: u64) -> Vec<[u64; 2]> {
    runs.iter()
        .map(|&(a, b)| {
            let start = a << granularity_bits;
            let end = ((b + 1) << granularity_bits).min(size);
            [start, end - start]
        })
        .collect()
}

impl Meta {
    /// The bitmap directory as written for the bitmaps on disk.
    fn directory_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for b in self.bitmaps.iter().filter(|b| b.on_disk) {
            b.serialize(&mut out);
        }
        out
    }

    /// Writes a new directory for the bitmaps marked on disk (or removes
    /// the extension when there are none), points the header at it and
    /// frees the old one.
    fn write_directory(&mut self, io: &Io) -> Result<()> {
        let bytes = self.directory_bytes();
        let old = self.header.ext.bitmaps;
        let count = self.bitmaps.iter().filter(|b| b.on_disk).count() as u32;
        if count > 0 {
            let offset = self.alloc_clusters(io, self.layout.clusters_for(bytes.len() as u64))?;
            self.flush(io)?;
            self.check_overlap(io, offset, bytes.len() as u64, None)?;
            io.write(offset, &bytes)?;
            io.flush()?;
            self.header.ext.bitmaps = Some(BitmapsExt {
                nb_bitmaps: count,
                directory_size: bytes.len() as u64,
                directory_offset: offset,
            });
            self.header.autoclear_features |= autoclear::BITMAPS;
        } else {
            self.header.ext.bitmaps = None;
            self.header.autoclear_features &= !autoclear::BITMAPS;
        }
        self.write_header(io)?;
        io.flush()?;
        if let Some(old) = old.filter(|o| o.directory_size > 0) {
            self.free_named(io, old.directory_offset, old.directory_size)?;
        }
        Ok(())
    }

    /// Drops the reference a structure just replaced held on the clusters
    /// of `[offset, offset+len)`. Where a damaged table named a cluster
    /// twice, the second drop finds it free already: as qemu's
    /// `qcow2_free_clusters`, that is reported and the range left as it
    /// is, and the image is not marked corrupt.
    fn free_named(&mut self, io: &Io, offset: u64, len: u64) -> Result<()> {
        let bits = self.layout.cluster_bits;
        for c in (offset >> bits)..=((offset + len - 1) >> bits) {
            self.bitmap_clusters.remove(&c);
        }
        for c in (offset >> bits)..=((offset + len - 1) >> bits) {
            if self.refcount(io, c)? == 0 {
                eprintln!("qcow2_free_clusters failed: Invalid argument");
                return Ok(());
            }
        }
        self.add_refcount(io, offset, len, -1)
    }

    /// Frees a stored bitmap table and its data clusters (the data goes
    /// back to the file system, as qemu discards it).
    fn free_table(&mut self, io: &Io, offset: u64, size: u32) -> Result<Vec<u64>> {
        if offset == 0 {
            return Ok(Vec::new());
        }
        let file_len = io.file.len().into_result()?;
        let cs = self.layout.cluster_size();
        let table = meta::read_table(io, offset, u64::from(size), file_len)?;
        let mut freed = Vec::new();
        for e in table {
            let at = e & OFFSET_MASK;
            if at != 0 && self.layout.in_cluster(at) == 0 {
                self.free_named(io, at, cs)?;
                if self.refcount(io, at >> self.layout.cluster_bits)? == 0 {
                    freed.push(at);
                }
            }
        }
        self.free_named(io, offset, u64::from(size) * 8)?;
        Ok(freed)
    }

    /// Stores every loaded bitmap anew, as QEMU does when it closes an
    /// image: data clusters for the bitmap clusters with bits set, a
    /// table, a new directory; then the old tables and data are freed.
    pub fn store_bitmaps(&mut self, io: &Io, size: u64) -> Result<()> {
        if !self.bitmaps.iter().any(|b| b.bits.is_some()) {
            return Ok(());
        }
        let cs = self.layout.cluster_size();
        let mut old_tables = Vec::new();
        for b in self.bitmaps.iter_mut().filter(|b| b.bits.is_some()) {
            if b.on_disk && b.table_offset != 0 {
                old_tables.push((b.table_offset, b.table_size));
            }
            b.table_offset = 0;
            b.table_size = 0;
            let keep = b.flags & FLAG_EXTRA_DATA_COMPATIBLE;
            b.flags = keep | if b.enabled { FLAG_AUTO } else { 0 };
            b.on_disk = true;
        }
        for i in 0..self.bitmaps.len() {
            let Some(bits) = self.bitmaps[i].bits.clone() else {
                continue;
            };
            let entries = table_entries(size, self.bitmaps[i].granularity_bits, cs);
            let mut table = vec![0u64; entries as usize];
            for (index, slot) in table.iter_mut().enumerate() {
                if let Some(data) = bits.cluster(index as u64, cs) {
                    let at = self.alloc_clusters(io, 1)?;
                    // Damaged refcounts may hand out clusters other
                    // metadata holds: never written over (qemu's check).
                    self.check_overlap(io, at, cs, None)?;
                    io.write(at, &data)?;
                    *slot = at;
                }
            }
            let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
            let offset = self.alloc_clusters(io, self.layout.clusters_for(bytes.len() as u64))?;
            self.check_overlap(io, offset, bytes.len() as u64, None)?;
            io.write(offset, &bytes)?;
            self.bitmaps[i].table_offset = offset;
            self.bitmaps[i].table_size = entries as u32;
        }
        self.flush(io)?;
        io.flush()?;
        self.write_directory(io)?;
        let mut freed = Vec::new();
        for (offset, size) in old_tables {
            freed.extend(self.free_table(io, offset, size)?);
        }
        self.flush(io)?;
        self.bitmap_clusters.clear();
        meta::punch_clusters(io, &freed, cs)
    }

    /// Removes every bitmap: the directory and extension go, then their
    /// tables and data (a downgrade to version 2, which cannot hold them).
    pub fn remove_all_bitmaps(&mut self, io: &Io) -> Result<()> {
        let gone = std::mem::take(&mut self.bitmaps);
        self.write_directory(io)?;
        let mut freed = Vec::new();
        for b in gone.iter().filter(|b| b.on_disk) {
            freed.extend(self.free_table(io, b.table_offset, b.table_size)?);
        }
        self.flush(io)?;
        meta::punch_clusters(io, &freed, self.layout.cluster_size())
    }

    /// Marks every consistent bitmap in use on disk, rewriting the
    /// directory in place (the auto-clear bit is dropped while it is
    /// rewritten, so that a crash in between loses the bitmaps rather than
    /// trusting a half-written directory).
    fn mark_in_use(&mut self, io: &Io) -> Result<()> {
        let Some(ext) = self.header.ext.bitmaps else {
            return Ok(());
        };
        let mut changed = false;
        for b in self.bitmaps.iter_mut().filter(|b| b.bits.is_some()) {
            if b.flags & FLAG_IN_USE == 0 {
                b.flags |= FLAG_IN_USE;
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        self.header.autoclear_features &= !autoclear::BITMAPS;
        self.write_header(io)?;
        io.flush()?;
        let bytes = self.directory_bytes();
        let own = Some(MetaKind::BitmapDirectory);
        self.check_overlap(io, ext.directory_offset, bytes.len() as u64, own)?;
        io.write(ext.directory_offset, &bytes)?;
        io.flush()?;
        self.header.autoclear_features |= autoclear::BITMAPS;
        self.write_header(io)?;
        io.flush()
    }
}

impl Qcow2Image {
    /// Loads the bitmaps of an image opened for writing and marks the
    /// consistent ones in use.
    pub(crate) fn load_bitmaps(&self) -> Result<()> {
        let mut meta = self.lock();
        if meta.bitmaps.is_empty() {
            return Ok(());
        }
        let cs = self.layout.cluster_size();
        let file_len = self.io.file.len().into_result()?;
        let size = self.size();
        for i in 0..meta.bitmaps.len() {
            let b = &meta.bitmaps[i];
            // Extra data this driver cannot vouch for keeps a bitmap as
            // it is (qcow2.txt, flag bit 2).
            let foreign = !b.extra.is_empty() && b.flags & FLAG_EXTRA_DATA_COMPATIBLE == 0;
            if b.inconsistent || foreign {
                continue;
            }
            let granularity_bits = b.granularity_bits;
            let mut held = std::mem::take(&mut meta.bitmap_clusters);
            let loaded = load_bits(
                &self.io,
                &meta.bitmaps[i],
                &self.layout,
                file_len,
                &mut held,
            );
            meta.bitmap_clusters = held;
            let mut bits = loaded?;
            bits.truncate(bit_count(size, granularity_bits), cs);
            meta.bitmaps[i].bits = Some(bits);
        }
        self.tracking.store(
            meta.bitmaps.iter().any(|b| b.bits.is_some() && b.enabled),
            std::sync::atomic::Ordering::Release,
        );
        meta.mark_in_use(&self.io)
    }

    /// Stores the loaded bitmaps and stops tracking writes. Once only,
    /// whatever the outcome: a store that failed half way is not tried
    /// again on what it left.
    pub(crate) fn release_bitmaps(&self, meta: &mut Meta) -> Result<()> {
        let stored = meta.store_bitmaps(&self.io, self.size());
        for b in meta.bitmaps.iter_mut() {
            b.bits = None;
        }
        self.tracking
            .store(false, std::sync::atomic::Ordering::Release);
        stored
    }

    /// Sets the bits of every enabled bitmap for `[offset, offset+len)`.
    pub(crate) fn mark_dirty(&self, offset: u64, len: u64) {
        if len == 0 || !self.tracking.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let cs = self.layout.cluster_size();
        let mut meta = self.lock();
        for b in meta.bitmaps.iter_mut().filter(|b| b.enabled) {
            let g = b.granularity_bits;
            if let Some(bits) = &mut b.bits {
                bits.set(offset >> g, (offset + len - 1) >> g, cs);
            }
        }
    }

    /// Cuts the bitmaps to a new guest size (bits past it go; growing adds
    /// clear bits).
    pub(crate) fn resize_bitmaps(&self, new_size: u64) {
        let cs = self.layout.cluster_size();
        let mut meta = self.lock();
        for b in meta.bitmaps.iter_mut() {
            let g = b.granularity_bits;
            if let Some(bits) = &mut b.bits {
                bits.truncate(bit_count(new_size, g), cs);
            }
        }
    }

    /// Refuses a resize while a bitmap is inconsistent (its bits could not
    /// be resized), with qemu's message.
    pub(crate) fn check_bitmaps_resizable(&self) -> Result<()> {
        let meta = self.lock();
        match meta.bitmaps.iter().find(|b| b.inconsistent) {
            Some(b) => Err(inconsistent(b)),
            None => Ok(()),
        }
    }

    /// One `qemu-img bitmap` operation: `add`, `remove`, `clear`,
    /// `enable`, `disable`, `merge` (from `source` in this image, or from
    /// `ranges` of guest bytes read from another image), or `dirty`, which
    /// answers the bitmap's dirty ranges.
    pub fn bitmap_op(
        &self,
        action: &str,
        name: &str,
        granularity: Option<u64>,
        source: Option<&str>,
        ranges: Option<&[[u64; 2]]>,
    ) -> Result<Value> {
        if action == "dirty" {
            return self.dirty_ranges(name);
        }
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let cs = self.layout.cluster_size();
        let size = self.size();
        let mut meta = self.lock();
        let found = meta.bitmaps.iter().position(|b| b.name == name.as_bytes());
        match action {
            "add" => {
                if found.is_some() {
                    return Err(Error::argument(format!("Bitmap already exists: {name}")));
                }
                let granularity = match granularity {
                    Some(g) => g,
                    None => cs.clamp(4096, 65536),
                };
                if granularity < 512 || !granularity.is_power_of_two() {
                    return Err(Error::argument(
                        "Granularity must be power of 2 and at least 512",
                    ));
                }
                if name.is_empty() {
                    return Err(Error::argument("Bitmap name cannot be empty"));
                }
                let store = self.io.file.name();
                let refuse = |why: &str| {
                    Error::argument(format!(
                        "Can't make bitmap '{name}' persistent in '{store}': {why}"
                    ))
                };
                if !self.layout.v3 {
                    return Err(refuse("Cannot store dirty bitmaps in qcow2 v2 files"));
                }
                if name.len() > MAX_NAME {
                    return Err(refuse("Name length exceeds maximum (1023 characters)"));
                }
                if meta.bitmaps.len() >= MAX_BITMAPS {
                    return Err(refuse(
                        "Maximum number of persistent bitmaps is already reached",
                    ));
                }
                let bits = granularity.trailing_zeros();
                if bit_count(size, bits).div_ceil(8) > MAX_PHYS_BYTES {
                    return Err(refuse("Too large bitmap"));
                }
                if size == 0 {
                    // No table can describe it: qemu adds it, then loses it
                    // on close with these words and fails.
                    return Err(Error::argument(format!(
                        "Lost persistent bitmaps during inactivation of node '{store}': No memory"
                    )));
                }
                meta.bitmaps.push(Bitmap {
                    name: name.as_bytes().to_vec(),
                    granularity_bits: bits,
                    flags: FLAG_AUTO,
                    table_offset: 0,
                    table_size: 0,
                    extra: Vec::new(),
                    on_disk: false,
                    enabled: true,
                    inconsistent: false,
                    bits: Some(Bits::default()),
                });
                self.tracking
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            "remove" => {
                let i = found.ok_or_else(|| not_found(name))?;
                let b = meta.bitmaps.remove(i);
                if b.on_disk {
                    meta.write_directory(&self.io)?;
                    let freed = meta.free_table(&self.io, b.table_offset, b.table_size)?;
                    meta.flush(&self.io)?;
                    meta::punch_clusters(&self.io, &freed, cs)?;
                }
            }
            "clear" | "enable" | "disable" | "merge" => {
                let i = found.ok_or_else(|| not_found(name))?;
                if meta.bitmaps[i].inconsistent {
                    return Err(inconsistent(&meta.bitmaps[i]));
                }
                match action {
                    "clear" => meta.bitmaps[i].bits = Some(Bits::default()),
                    "enable" => {
                        meta.bitmaps[i].enabled = true;
                        self.tracking
                            .store(true, std::sync::atomic::Ordering::Release);
                    }
                    "disable" => meta.bitmaps[i].enabled = false,
                    _ => {
                        let runs = match (ranges, source) {
                            (Some(r), _) => r.to_vec(),
                            (None, Some(src)) => {
                                let j = meta
                                    .bitmaps
                                    .iter()
                                    .position(|b| b.name == src.as_bytes())
                                    .ok_or_else(|| not_found(src))?;
                                let s = &meta.bitmaps[j];
                                if s.inconsistent {
                                    return Err(inconsistent(s));
                                }
                                let count = bit_count(size, s.granularity_bits);
                                let bits = s.bits.as_ref().map(|b| b.runs(count, cs));
                                guest_runs(&bits.unwrap_or_default(), s.granularity_bits, size)
                            }
                            (None, None) => Vec::new(),
                        };
                        let b = &mut meta.bitmaps[i];
                        let g = b.granularity_bits;
                        let bits = b.bits.get_or_insert_with(Bits::default);
                        for [start, len] in runs {
                            if len > 0 && start < size {
                                let end = (start + len).min(size);
                                bits.set(start >> g, (end - 1) >> g, cs);
                            }
                        }
                    }
                }
            }
            other => {
                return Err(Error::unsupported(format!(
                    "Unknown bitmap operation '{other}'"
                )))
            }
        }
        Ok(Value::Null)
    }

    /// The guest byte ranges a bitmap has dirty, for merging into another
    /// image: `{"size": guest size, "ranges": [[start, length], ...]}`.
    fn dirty_ranges(&self, name: &str) -> Result<Value> {
        let cs = self.layout.cluster_size();
        let size = self.size();
        let file_len = self.io.file.len().into_result()?;
        let meta = self.lock();
        let b = meta
            .bitmaps
            .iter()
            .find(|b| b.name == name.as_bytes())
            .ok_or_else(|| not_found(name))?;
        if b.inconsistent {
            return Err(inconsistent(b));
        }
        let bits = match &b.bits {
            Some(bits) => bits.clone(),
            None => load_bits(&self.io, b, &self.layout, file_len, &mut BTreeSet::new())?,
        };
        let runs = bits.runs(bit_count(size, b.granularity_bits), cs);
        Ok(json!({
            "size": size,
            "ranges": guest_runs(&runs, b.granularity_bits, size),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_little_endian_within_bytes() {
        let mut bits = Bits::default();
        bits.set(0, 0, 512);
        bits.set(9, 10, 512);
        assert_eq!(bits.cluster(0, 512).unwrap()[..2], [0x01, 0x06]);
        assert_eq!(bits.runs(4096, 512), vec![(0, 0), (9, 10)]);
    }

    #[test]
    fn runs_cross_clusters_and_stop_at_the_end() {
        let mut bits = Bits::default();
        bits.set(4090, 4100, 512);
        assert_eq!(bits.runs(8192, 512), vec![(4090, 4100)]);
        bits.chunks.insert(3, Chunk::Ones);
        assert_eq!(bits.runs(13000, 512).last(), Some(&(12288, 12999)));
        bits.truncate(4095, 512);
        assert_eq!(bits.runs(8192, 512), vec![(4090, 4094)]);
    }

    #[test]
    fn entries_are_padded_to_eight_bytes() {
        let b = Bitmap {
            name: b"b0".to_vec(),
            granularity_bits: 16,
            flags: FLAG_AUTO,
            table_offset: 0x50000,
            table_size: 1,
            extra: Vec::new(),
            on_disk: true,
            enabled: true,
            inconsistent: false,
            bits: None,
        };
        let mut out = Vec::new();
        b.serialize(&mut out);
        assert_eq!(out.len(), 32);
        assert_eq!(out[16..20], [1, 16, 0, 2]);
        assert_eq!(
            guest_runs(&[(1, 2)], 16, 150_000),
            vec![[65536, 150_000 - 65536]]
        );
    }
}
