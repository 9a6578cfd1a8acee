//! Sparse extents: the grain directory and grain tables that map a grain of
//! guest data to a place in the extent file (VDF 1.1 §"Grain Directories
//! and Grain Tables"), zeroed grains (VDF 5.0) and compressed grains
//! (VDF 5.0 §"Stream-Optimized Compressed Sparse Extents").
//!
//! Metadata lives behind one mutex per extent; grain data is read outside
//! it. Grain table updates are kept in memory and written by
//! [`SparseExtent::flush_metadata`] after the data they point to has been
//! flushed, so a crash never leaves a table entry pointing at unwritten data.

use crate::error::{Result, VmdkError};
use crate::header::{
    entries_from_bytes, entries_to_bytes, CowdHeader, SparseHeader, COWD_GTES_PER_GT, FLAG_RGD,
    FLAG_ZEROED_GRAIN, GD_AT_END, GRAIN_MARKER_LEN, MARKER_FOOTER, SECTOR,
};
use crate::inflate::{Inflaters, PackedGrain, WHOLE_GRAIN};
use crate::stream::StreamWriter;
use qimg_driver_api::ByteStoreBox;
use qimg_driver_util::{read_or_zero, write_all};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// Largest grain accepted: a gigabyte per grain is no real image.
const MAX_GRAIN_SECTORS: u64 = 0x20_0000;
/// Most grain directory entries accepted (qemu-img's limit too: enough for
/// any capacity either sparse format can describe).
pub(crate) const MAX_GD_ENTRIES: u64 = 32 * 1024 * 1024;
/// Most grain table entries per table in a hosted sparse extent.
const MAX_GTES_PER_GT: u32 = 512;
/// Grain tables kept in memory before clean ones are dropped (at most
/// 64 MiB of ESX Server tables, 8 MiB of hosted ones).
const MAX_CACHED_TABLES: usize = 4096;
/// Grain table entry of a zeroed grain (VDF 5.0, "Zeroed-Grain GTE").
const ZEROED_GTE: u32 = 1;

/// Where a grain's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrainLoc {
    /// Not allocated: reads from the parent, or as zeros without one.
    Unallocated,
    /// Reads as zeros whatever the parent holds.
    Zeroed,
    /// Plain data at this byte offset of the extent file.
    Data(u64),
    /// A compressed grain (with its marker, if the extent has markers) at
    /// this byte offset.
    Compressed(u64),
}

/// One grain table held in memory.
struct Table {
    entries: Vec<u32>,
    /// The 512-byte sectors of the table changed since it was last
    /// written, one bit each (a table has at most 32). Only those are
    /// written back: a damaged directory can name tables that overlap,
    /// and a whole stale copy would undo the other table's entries (qemu
    /// writes the changed entry alone).
    dirty: u64,
}

impl Table {
    /// Marks entries `[from, to)` changed.
    fn touch(&mut self, from: usize, to: usize) {
        if from < to {
            for sector in from * 4 / 512..=(to * 4 - 1) / 512 {
                self.dirty |= 1 << sector;
            }
        }
    }
}

/// The mutable part of a sparse extent.
pub struct SparseState {
    gd: Vec<u32>,
    rgd: Option<Vec<u32>>,
    /// Sector of the grain directory.
    gd_at: u64,
    /// Sector of the redundant grain directory, if one is kept.
    rgd_at: Option<u64>,
    /// Sectors of guest data (changed by `grow`).
    capacity: u64,
    gd_dirty: bool,
    tables: HashMap<u32, Table>,
    /// Next free byte of the extent file (allocations go here).
    end: u64,
    /// The in-order writer of a new stream-optimized extent.
    pub stream: Option<StreamWriter>,
    /// Grains (by number) whose data space was reserved ahead of their
    /// write (`VmdkImage::reserve`), with the byte offset reserved.
    pub reserved: HashMap<u64, u64>,
    /// Byte offsets of the grain tables both directories name, gathered on
    /// the first in-place write (see [`SparseExtent::over_metadata`]).
    table_offsets: Option<BTreeSet<u64>>,
}

impl SparseState {
    /// Points grain directory entry `gt` at the grain table at `sector`.
    pub fn set_gd_entry(&mut self, gt: u32, sector: u32) {
        if let Some(e) = self.gd.get_mut(gt as usize) {
            *e = sector;
            self.table_offsets = None;
        }
    }
    /// The grain directory.
    pub fn gd_entries(&self) -> &[u32] {
        &self.gd
    }
}

/// A sparse extent: hosted (`KDMV`, versions 1 to 3) or ESX Server (`COWD`).
pub struct SparseExtent {
    /// The extent file.
    pub store: Arc<ByteStoreBox>,
    /// The extent's header (hosted sparse extents only).
    pub header: Option<SparseHeader>,
    /// Sectors of guest data when the extent was opened.
    pub capacity: u64,
    /// Sectors per grain.
    pub grain_sectors: u64,
    /// Entries per grain table.
    pub gtes_per_gt: u32,
    /// Grains are compressed.
    pub compressed: bool,
    /// Compressed grains start with a grain marker.
    pub markers: bool,
    /// A grain table entry of 1 means a zeroed grain.
    pub zeroed_grain: bool,
    /// The grain directory is found through the footer (`GD_AT_END`): the
    /// extent is a stream, only appended to while it is being written.
    pub footer_directory: bool,
    /// Inflaters parked part-way through large compressed grains.
    inflaters: Inflaters,
    state: Mutex<SparseState>,
}

/// Reads a table of `count` 32-bit entries at byte `offset`, failing if it
/// does not lie inside the file.
fn read_table(
    store: &ByteStoreBox,
    offset: u64,
    count: usize,
    len: u64,
    what: &'static str,
) -> Result<Vec<u32>> {
    let bytes = count as u64 * 4;
    if offset.checked_add(bytes).is_none_or(|end| end > len) {
        return Err(VmdkError::PastEof(what));
    }
    let mut buf = vec![0u8; bytes as usize];
    read_or_zero(store, offset, &mut buf)?;
    Ok(entries_from_bytes(&buf))
}

impl SparseExtent {
    /// Opens a hosted sparse extent from its header. A stream-optimized
    /// extent whose header says `GD_AT_END` takes the grain directory
    /// offset from its footer (VDF 5.0, "The Footer").
    pub fn open_hosted(
        store: Arc<ByteStoreBox>,
        header: SparseHeader,
        writable: bool,
    ) -> Result<SparseExtent> {
        if header.version > 3 {
            return Err(VmdkError::UnsupportedVersion(header.version));
        }
        if header.version == 3 && writable && !header.compressed() {
            return Err(VmdkError::Version3Writable);
        }
        let len = store.len().into_result()?;
        let mut header = header;
        let stream_layout = header.gd_offset == GD_AT_END;
        if stream_layout {
            header.gd_offset = footer_gd_offset(&store, len)?;
        }
        if header.num_gtes_per_gt > MAX_GTES_PER_GT {
            return Err(VmdkError::L2TooBig);
        }
        // Sectors one grain directory entry covers, and the number of
        // entries, are 32-bit quantities (as qemu-img computes them: a
        // product or quotient that does not fit is cut to its low bits).
        let per_gd_entry =
            u64::from((u64::from(header.num_gtes_per_gt).wrapping_mul(header.grain_size)) as u32);
        if per_gd_entry == 0 {
            return Err(VmdkError::L1EntryInvalid);
        }
        if header.grain_size > MAX_GRAIN_SECTORS {
            return Err(VmdkError::BadGranularity);
        }
        let gd_entries = u64::from(header.capacity.div_ceil(per_gd_entry) as u32);
        if gd_entries > MAX_GD_ENTRIES {
            return Err(VmdkError::L1TooBig);
        }
        // qemu multiplies in 64 bits, wrapping, and prints the product
        // signed.
        let overhead_bytes = header.overhead.wrapping_mul(SECTOR);
        if len < overhead_bytes {
            return Err(VmdkError::Truncated(overhead_bytes as i64));
        }
        let rgd_offset = (header.flags & FLAG_RGD != 0).then_some(header.rgd_offset);
        let gd = read_table(
            &store,
            header.gd_offset.saturating_mul(SECTOR),
            gd_entries as usize,
            len,
            "Grain directory",
        )?;
        let rgd = match rgd_offset {
            Some(at) if writable => Some(read_table(
                &store,
                at.saturating_mul(SECTOR),
                gd_entries as usize,
                len,
                "Redundant grain directory",
            )?),
            _ => None,
        };
        // A stream-optimized extent that holds no grain yet (as `create`
        // leaves it) is written from the start of its data area, in order.
        let fresh_stream =
            writable && stream_layout && header.compressed() && gd.iter().all(|&e| e == 0);
        let stream = fresh_stream.then(|| StreamWriter::new(header.overhead * SECTOR));
        Ok(SparseExtent {
            capacity: header.capacity,
            grain_sectors: header.grain_size,
            gtes_per_gt: header.num_gtes_per_gt,
            compressed: header.compressed(),
            markers: header.markers(),
            zeroed_grain: header.flags & FLAG_ZEROED_GRAIN != 0,
            footer_directory: stream_layout,
            inflaters: Inflaters::default(),
            state: Mutex::new(SparseState {
                gd_at: header.gd_offset,
                rgd_at: if rgd.is_some() { rgd_offset } else { None },
                capacity: header.capacity,
                gd,
                rgd,
                gd_dirty: false,
                tables: HashMap::new(),
                end: len.div_ceil(SECTOR) * SECTOR,
                reserved: HashMap::new(),
                stream,
                table_offsets: None,
            }),
            header: Some(header),
            store,
        })
    }

    /// Opens an ESX Server sparse extent (`COWD`, VMDK3).
    pub fn open_cowd(store: Arc<ByteStoreBox>, header: CowdHeader) -> Result<SparseExtent> {
        let len = store.len().into_result()?;
        let grain = u64::from(header.grain_size);
        if grain == 0 {
            return Err(VmdkError::L1EntryInvalid);
        }
        if grain > MAX_GRAIN_SECTORS {
            return Err(VmdkError::BadGranularity);
        }
        let gd_entries = u64::from(header.num_gd_entries);
        if gd_entries > MAX_GD_ENTRIES {
            return Err(VmdkError::L1TooBig);
        }
        let gd = read_table(
            &store,
            u64::from(header.gd_offset) * SECTOR,
            gd_entries as usize,
            len,
            "Grain directory",
        )?;
        Ok(SparseExtent {
            header: None,
            capacity: u64::from(header.num_sectors),
            grain_sectors: grain,
            gtes_per_gt: COWD_GTES_PER_GT,
            compressed: false,
            markers: false,
            zeroed_grain: false,
            footer_directory: false,
            inflaters: Inflaters::default(),
            state: Mutex::new(SparseState {
                gd_at: u64::from(header.gd_offset),
                rgd_at: None,
                capacity: u64::from(header.num_sectors),
                gd,
                rgd: None,
                gd_dirty: false,
                tables: HashMap::new(),
                end: len.div_ceil(SECTOR) * SECTOR,
                reserved: HashMap::new(),
                stream: None,
                table_offsets: None,
            }),
            store,
        })
    }

    /// Bytes per grain.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors * SECTOR
    }

    /// Locks the metadata.
    pub fn lock(&self) -> MutexGuard<'_, SparseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The grain table `gt` (loaded on first use), or `None` if the grain
    /// directory has no table there.
    fn table<'a>(&self, st: &'a mut SparseState, gt: u32) -> Result<Option<&'a mut Table>> {
        let Some(&gde) = st.gd.get(gt as usize) else {
            return Ok(None);
        };
        if gde == 0 && !st.tables.contains_key(&gt) {
            return Ok(None);
        }
        if !st.tables.contains_key(&gt) && st.tables.len() >= MAX_CACHED_TABLES {
            // Keep memory bounded whatever the grain directory says: clean
            // tables can be read again.
            st.tables.retain(|_, t| t.dirty != 0);
        }
        if !st.tables.contains_key(&gt) {
            let at = u64::from(gde) * SECTOR;
            let mut buf = vec![0u8; self.gtes_per_gt as usize * 4];
            read_or_zero(&self.store, at, &mut buf)?;
            let entries = entries_from_bytes(&buf);
            // A table or grain may run past the end of a damaged file: new
            // grains go after it, never over it.
            let mut reach = at + buf.len() as u64;
            if !self.compressed {
                for &e in &entries {
                    if e != 0 && !(self.zeroed_grain && e == ZEROED_GTE) {
                        reach = reach.max(u64::from(e) * SECTOR + self.grain_bytes());
                    }
                }
            }
            st.end = st.end.max(reach.div_ceil(SECTOR) * SECTOR);
            st.tables.insert(gt, Table { entries, dirty: 0 });
        }
        Ok(st.tables.get_mut(&gt))
    }

    /// True if `[host, host+len)` of the extent file holds its metadata:
    /// the header, what a hosted header counts as overhead (descriptor,
    /// directories and the tables made with them), either directory or a
    /// grain table. A damaged grain table entry can point there, and a
    /// write in place would destroy the extent.
    pub fn over_metadata(&self, st: &mut SparseState, host: u64, len: u64) -> bool {
        let end = host.saturating_add(len);
        let overhead = self.header.as_ref().map_or(0, |h| h.overhead);
        if host < overhead.max(1).saturating_mul(SECTOR) {
            return true;
        }
        let overlaps = |at: u64, bytes: u64| at < end && host < at.saturating_add(bytes);
        let dir_bytes = st.gd.len() as u64 * 4;
        if overlaps(st.gd_at.saturating_mul(SECTOR), dir_bytes)
            || st
                .rgd_at
                .is_some_and(|at| overlaps(at.saturating_mul(SECTOR), dir_bytes))
        {
            return true;
        }
        let table_bytes = (u64::from(self.gtes_per_gt) * 4).div_ceil(SECTOR) * SECTOR;
        let tables = st.table_offsets.get_or_insert_with(|| {
            let rgd = st.rgd.iter().flatten();
            st.gd
                .iter()
                .chain(rgd)
                .filter(|&&e| e != 0)
                .map(|&e| u64::from(e) * SECTOR)
                .collect()
        });
        let from = host.saturating_sub(table_bytes - 1);
        tables.range(from..end).next().is_some()
    }

    /// Where grain number `grain` is. A grain the directory does not cover
    /// is an I/O error, as in qemu-img (a capacity whose directory entry
    /// count overflowed 32 bits): answering "unallocated" instead would let
    /// a walk over a 2^57-byte hostile disk run grain by grain forever.
    pub fn locate(&self, st: &mut SparseState, grain: u64) -> Result<GrainLoc> {
        let per = u64::from(self.gtes_per_gt);
        let gt = grain / per;
        if gt >= st.gd.len() as u64 {
            return Err(VmdkError::BeyondDirectory);
        }
        let gt = gt as u32;
        let index = (grain % per) as usize;
        let entry = match self.table(st, gt)? {
            Some(t) => t.entries[index],
            None => 0,
        };
        Ok(match entry {
            0 => GrainLoc::Unallocated,
            ZEROED_GTE if self.zeroed_grain => GrainLoc::Zeroed,
            e if self.compressed => GrainLoc::Compressed(u64::from(e) * SECTOR),
            e => GrainLoc::Data(u64::from(e) * SECTOR),
        })
    }

    /// How many grains from `grain` on, up to the end of its grain table,
    /// have the same grain table entry as `grain` when that entry is 0 or
    /// the zeroed marker (runs that need no per-grain work); 0 otherwise.
    pub fn uniform_run(&self, st: &mut SparseState, grain: u64) -> Result<u64> {
        let per = u64::from(self.gtes_per_gt);
        if grain / per >= st.gd.len() as u64 {
            return Err(VmdkError::BeyondDirectory);
        }
        let index = (grain % per) as usize;
        let Some(table) = self.table(st, (grain / per) as u32)? else {
            return Ok(per - index as u64);
        };
        let entry = table.entries[index];
        if entry != 0 && !(entry == ZEROED_GTE && self.zeroed_grain) {
            return Ok(0);
        }
        let same = table.entries[index..]
            .iter()
            .take_while(|&&e| e == entry)
            .count();
        Ok(same as u64)
    }

    /// Points grain `grain` at `entry` (a sector number, 0 or 1), creating
    /// its grain table at the end of the file if it has none.
    pub fn set_entry(&self, st: &mut SparseState, grain: u64, entry: u32) -> Result<()> {
        let per = u64::from(self.gtes_per_gt);
        let index = (grain % per) as usize;
        if grain / per >= st.gd.len() as u64 {
            return Err(VmdkError::DirectoryTooSmall);
        }
        let gt = (grain / per) as u32;
        self.ensure_table(st, grain)?;
        if let Some(t) = st.tables.get_mut(&gt) {
            t.entries[index] = entry;
            t.touch(index, index + 1);
        }
        Ok(())
    }

    /// Creates the grain table of grain `grain` at the end of the file if
    /// the grain directory has none for it.
    pub fn ensure_table(&self, st: &mut SparseState, grain: u64) -> Result<()> {
        let gt = grain / u64::from(self.gtes_per_gt);
        if gt >= st.gd.len() as u64 {
            return Err(VmdkError::DirectoryTooSmall);
        }
        if self.table(st, gt as u32)?.is_none() {
            self.new_table(st, gt as u32)?;
        }
        Ok(())
    }

    /// Allocates an empty grain table (and its redundant copy) at the end of
    /// the file for a grain directory entry that has none.
    fn new_table(&self, st: &mut SparseState, gt: u32) -> Result<()> {
        let bytes = (u64::from(self.gtes_per_gt) * 4).div_ceil(SECTOR) * SECTOR;
        let at = self.allocate(st, bytes)?;
        write_all(&self.store, at, &vec![0u8; bytes as usize])?;
        st.gd[gt as usize] = sector_of(at)?;
        st.table_offsets = None;
        if let Some(rgd) = st.rgd.as_mut() {
            let copy = at + bytes;
            st.end += bytes;
            write_all(&self.store, copy, &vec![0u8; bytes as usize])?;
            rgd[gt as usize] = sector_of(copy)?;
        }
        st.gd_dirty = true;
        st.tables.insert(
            gt,
            Table {
                entries: vec![0; self.gtes_per_gt as usize],
                dirty: u64::MAX,
            },
        );
        Ok(())
    }

    /// Reserves `bytes` at the end of the extent file: past every place
    /// handed out, and past the file's end (a grain rewritten in place may
    /// have grown a short file).
    pub fn allocate(&self, st: &mut SparseState, bytes: u64) -> Result<u64> {
        let len = self.store.len().into_result()?;
        let at = st.end.max(len.div_ceil(SECTOR) * SECTOR);
        st.end = at
            .checked_add(bytes.div_ceil(SECTOR) * SECTOR)
            .ok_or(VmdkError::TooLarge)?;
        // Grain table entries are 32-bit sector numbers.
        sector_of(at)?;
        Ok(at)
    }

    /// Fills `out` with the inflated bytes from `within` on of the
    /// compressed grain at byte `offset`. Small grains are inflated whole;
    /// large ones are streamed (see [`crate::inflate`]).
    pub fn read_compressed(&self, offset: u64, within: u64, out: &mut [u8]) -> Result<()> {
        let limit = self.grain_bytes() * 2 + 1024;
        let (data_at, size) = if self.markers {
            let mut marker = [0u8; GRAIN_MARKER_LEN];
            read_or_zero(&self.store, offset, &mut marker)?;
            let size = u32::from_le_bytes([marker[8], marker[9], marker[10], marker[11]]);
            (offset + GRAIN_MARKER_LEN as u64, u64::from(size))
        } else {
            (offset, limit)
        };
        if size == 0 || size > limit {
            return Err(VmdkError::BadCompressedGrain);
        }
        if self.grain_bytes() > WHOLE_GRAIN {
            let grain = PackedGrain {
                at: offset,
                data_at,
                max_len: size,
            };
            return self.inflaters.read(&self.store, grain, within, out);
        }
        let mut packed = vec![0u8; size as usize];
        read_or_zero(&self.store, data_at, &mut packed)?;
        let mut whole = vec![0u8; self.grain_bytes() as usize];
        let inflated = crate::stream::inflate(&packed, &mut whole)
            .map_err(|_| VmdkError::BadCompressedGrain)?;
        // A read past what the grain holds fails, as in qemu (a grain
        // shorter than the header's grain size is no data to read as zeros).
        let end = within as usize + out.len();
        if end > inflated {
            return Err(VmdkError::BadCompressedGrain);
        }
        out.copy_from_slice(&whole[within as usize..end]);
        Ok(())
    }

    /// Writes the grain tables and directories changed since the last call.
    /// The caller flushes the data first.
    pub fn flush_metadata(&self) -> Result<bool> {
        let mut st = self.lock();
        let mut wrote = false;
        let mut dirty: Vec<u32> = st
            .tables
            .iter()
            .filter(|(_, t)| t.dirty != 0)
            .map(|(&k, _)| k)
            .collect();
        dirty.sort_unstable();
        for gt in dirty {
            let (bytes, mask) = match st.tables.get(&gt) {
                Some(t) => (entries_to_bytes(&t.entries), t.dirty),
                None => continue,
            };
            let sectors = bytes.len().div_ceil(SECTOR as usize);
            let gde = st.gd[gt as usize];
            let rgde = st.rgd.as_ref().map_or(0, |r| r[gt as usize]);
            // Runs of changed sectors, each written to both copies.
            let mut s = 0;
            while s < sectors {
                if mask & (1 << s) == 0 {
                    s += 1;
                    continue;
                }
                let first = s;
                while s < sectors && mask & (1 << s) != 0 {
                    s += 1;
                }
                let piece = &bytes[first * SECTOR as usize..(s * SECTOR as usize).min(bytes.len())];
                let at = first as u64 * SECTOR;
                write_all(&self.store, u64::from(gde) * SECTOR + at, piece)?;
                if rgde != 0 {
                    write_all(&self.store, u64::from(rgde) * SECTOR + at, piece)?;
                }
            }
            if let Some(t) = st.tables.get_mut(&gt) {
                t.dirty = 0;
            }
            wrote = true;
        }
        if st.gd_dirty {
            write_all(&self.store, st.gd_at * SECTOR, &entries_to_bytes(&st.gd))?;
            if let (Some(at), Some(rgd)) = (st.rgd_at, st.rgd.as_ref()) {
                write_all(&self.store, at * SECTOR, &entries_to_bytes(rgd))?;
            }
            st.gd_dirty = false;
            wrote = true;
        }
        Ok(wrote)
    }

    /// Changes the extent's capacity to `capacity` sectors. Growing past
    /// what the grain directory maps moves both directories to the end of
    /// the file, larger, with zeroed grain tables for the new part (readers
    /// such as qemu-img expect every table of a hosted sparse extent to
    /// exist); then rewrites the header. Returns nothing to do for
    /// stream-optimized and ESX Server extents, which cannot change.
    pub fn grow(&self, capacity: u64) -> Result<()> {
        let Some(header) = self.header.as_ref().filter(|_| !self.compressed) else {
            return Err(VmdkError::CannotResize);
        };
        let per = u64::from(self.gtes_per_gt) * self.grain_sectors;
        let entries = capacity.div_ceil(per);
        if entries > MAX_GD_ENTRIES {
            return Err(VmdkError::L1TooBig);
        }
        let mut st = self.lock();
        let old = st.gd.len() as u64;
        let room = (old * 4).div_ceil(SECTOR) * SECTOR / 4;
        if entries > old {
            let gt_bytes = (u64::from(self.gtes_per_gt) * 4).div_ceil(SECTOR) * SECTOR;
            let new_tables = entries - old;
            let copies = if st.rgd.is_some() { 2 } else { 1 };
            for copy in 0..copies {
                let at = self.allocate(&mut st, new_tables * gt_bytes)?;
                self.store
                    .write_zeroes(at, new_tables * gt_bytes, true)
                    .into_result()?;
                let dir = if copy == 0 {
                    &mut st.gd
                } else {
                    st.rgd.get_or_insert_with(Vec::new)
                };
                for i in 0..new_tables {
                    dir.push(sector_of(at + i * gt_bytes)?);
                }
            }
            if entries > room {
                let dir_bytes = (entries * 4).div_ceil(SECTOR) * SECTOR;
                let gd_at = self.allocate(&mut st, dir_bytes)?;
                st.gd_at = gd_at / SECTOR;
                if st.rgd.is_some() {
                    let rgd_at = self.allocate(&mut st, dir_bytes)?;
                    st.rgd_at = Some(rgd_at / SECTOR);
                }
            }
            st.gd_dirty = true;
        }
        st.capacity = capacity;
        let new_header = SparseHeader {
            capacity,
            gd_offset: st.gd_at,
            rgd_offset: st.rgd_at.unwrap_or(header.rgd_offset),
            ..header.clone()
        };
        drop(st);
        self.flush_metadata()?;
        self.store.flush().into_result()?;
        write_all(&self.store, 0, &new_header.to_sector())?;
        Ok(())
    }

    /// Forgets the data from guest sector `sector` on (before a resize from
    /// or to that size): the rest of the grain holding it is zeroed in the
    /// file, and the grains after it are dropped from their tables (their
    /// space leaks). Whatever lay past an end never reads again.
    pub fn forget_from(&self, sector: u64) -> Result<()> {
        let mut st = self.lock();
        let grain = sector / self.grain_sectors;
        let within = sector % self.grain_sectors * SECTOR;
        let per = u64::from(self.gtes_per_gt);
        let covered = st.gd.len() as u64 * per;
        let mut next = grain;
        if within != 0 && grain < covered {
            if let GrainLoc::Data(host) = self.locate(&mut st, grain)? {
                if self.over_metadata(&mut st, host, self.grain_bytes()) {
                    return Err(VmdkError::GrainOverMetadata);
                }
                self.store
                    .write_zeroes(host + within, self.grain_bytes() - within, true)
                    .into_result()?;
            }
            next += 1;
        }
        while next < covered {
            let table_end = (next / per + 1) * per;
            if let Some(t) = self.table(&mut st, (next / per) as u32)? {
                let from = (next % per) as usize;
                if t.entries[from..].iter().any(|&e| e != 0) {
                    t.entries[from..].fill(0);
                    let to = t.entries.len();
                    t.touch(from, to);
                }
            }
            next = table_end;
        }
        Ok(())
    }

    /// Calls `visit` with each allocated grain's number and location, in
    /// order, until it returns `false` (for `check`; nothing is collected,
    /// so a large disk costs no memory).
    pub fn for_each_allocated(&self, mut visit: impl FnMut(u64, GrainLoc) -> bool) -> Result<()> {
        let mut st = self.lock();
        let grains = st.capacity.div_ceil(self.grain_sectors);
        let per = u64::from(self.gtes_per_gt);
        let tables = st.gd.len() as u64;
        for gt in 0..tables {
            if st.gd[gt as usize] == 0 && !st.tables.contains_key(&(gt as u32)) {
                continue;
            }
            for index in 0..per {
                let grain = gt * per + index;
                if grain >= grains {
                    return Ok(());
                }
                let loc = self.locate(&mut st, grain)?;
                if loc != GrainLoc::Unallocated && !visit(grain, loc) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// A byte offset as a 32-bit sector number, as tables store them.
fn sector_of(offset: u64) -> Result<u32> {
    u32::try_from(offset / SECTOR).map_err(|_| VmdkError::TooLarge)
}

/// The grain directory offset recorded in the footer of a stream-optimized
/// extent: the last three sectors are the footer marker, the footer (a copy
/// of the header with the real `gdOffset`) and the end-of-stream marker.
fn footer_gd_offset(store: &ByteStoreBox, len: u64) -> Result<u64> {
    if len < 3 * SECTOR {
        return Err(VmdkError::InvalidFooter);
    }
    let mut tail = vec![0u8; 2 * SECTOR as usize];
    read_or_zero(store, len - 3 * SECTOR, &mut tail)?;
    let marker = crate::header::Marker::parse(&tail).ok_or(VmdkError::InvalidFooter)?;
    let footer = SparseHeader::parse(&tail[SECTOR as usize..]).ok_or(VmdkError::InvalidFooter)?;
    if marker.size != 0 || marker.kind != MARKER_FOOTER || footer.gd_offset == GD_AT_END {
        return Err(VmdkError::InvalidFooter);
    }
    Ok(footer.gd_offset)
}
