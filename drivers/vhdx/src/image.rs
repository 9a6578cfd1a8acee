//! An open VHDX: its headers, regions, metadata and BAT, guest reads and
//! writes, and the log through which every BAT change goes.
//!
//! Writes run in parallel: a writer takes the metadata lock only to look a
//! block up or to give it space at the end of the file, and writes the
//! data outside it. New BAT entries are kept in memory and written at
//! flush, after the data is durable, through the log ([MS-VHDX] 2.3): the
//! changed 4 KiB BAT sectors go into a log entry, which is made durable,
//! then written in place. A crash before the entry is durable leaks the
//! new blocks; after it, the next writable open replays the entry.
//!
//! A differencing disk (beyond qemu-img, which refuses one) reads over its
//! parent: a NOT_PRESENT block, and the sectors of a PARTIALLY_PRESENT
//! block whose bits in the chunk's sector bitmap block are clear, come from
//! the parent. A write to such a block first fills it from the parent and
//! makes it FULLY_PRESENT, so the sector bitmaps never change.

use crate::bat::{self, Geometry};
use crate::error::{Result, VhdxError};
use crate::format::{random_guid, MIB, ZERO_GUID};
use crate::header::{self, Header};
use crate::log::{Log, SECTOR};
use crate::metadata::{self, Metadata, MAX_DISK_SIZE};
use crate::parent;
use crate::region::{self, Regions};
use qimg_driver_api::schema::{CheckReport, CheckRequest, ImageInfo, Repair};
use qimg_driver_api::{
    extent_flags, open_flags, ByteStoreBox, DriverError, Extent, HostServicesBox, ImageImpl,
    Prealloc, StoreExt,
};
use qimg_driver_util::parent::Parent;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// An open VHDX.
pub struct VhdxImage {
    store: ByteStoreBox,
    writable: bool,
    regions: Regions,
    md: Metadata,
    geometry: Geometry,
    /// The log was replayed when the image was opened (check reports it
    /// as a repaired corruption, as qemu-img does).
    replayed: AtomicBool,
    /// The virtual disk size (changed by resize).
    disk_size: AtomicU64,
    meta: Mutex<Meta>,
    /// A differencing disk's parent.
    parent: Option<Parent>,
    /// Present blocks outside the file or over its metadata, counted when
    /// the image is opened for `check` (any other open refuses them).
    bad_blocks: u64,
}

/// The mutable metadata.
struct Meta {
    /// The BAT entries, as the guest sees them (new entries included), up
    /// to the last one the file holds or this session set.
    bat: Vec<u64>,
    /// The current header and which copy it is.
    header: Header,
    header_index: usize,
    /// The log, once this session has started one.
    log: Option<LogCursor>,
    /// BAT sectors (4 KiB units of the BAT region) changed in memory only.
    dirty: BTreeSet<u64>,
    /// Where the next new block goes.
    file_end: u64,
}

impl Meta {
    /// BAT entry `index`; those past the part of the table the file holds
    /// are zero (NOT_PRESENT).
    fn entry(&self, index: u64) -> u64 {
        self.bat.get(index as usize).copied().unwrap_or(0)
    }
}

/// Where the next log entry goes and its sequence number.
struct LogCursor {
    log: Log,
    at: u64,
    sequence: u64,
}

impl VhdxImage {
    /// Opens the VHDX in `store`.
    pub fn open(store: ByteStoreBox, host: &HostServicesBox, flags: u32) -> Result<VhdxImage> {
        let name = store.display_name();
        Self::open_named(store, host, flags).map_err(|e| e.in_file(&name))
    }

    fn open_named(store: ByteStoreBox, host: &HostServicesBox, flags: u32) -> Result<VhdxImage> {
        let writable = flags & open_flags::WRITE != 0;
        let mut head = [0u8; 8];
        store.read_or_zero_at(0, &mut head)?;
        if !header::has_signature(&head) {
            return Err(VhdxError::Invalid);
        }
        let (mut hdr, mut index) = header::read_current(&store)?;
        let file_len = store.size()?;
        // [MS-VHDX] 2.2.2.1: the log is placed past the headers in whole
        // MiB; its length matters only when there is a log (a log GUID
        // and a length), as qemu checks it.
        if hdr.log_offset < MIB || !hdr.log_offset.is_multiple_of(MIB) || hdr.log_version != 0 {
            return Err(VhdxError::Invalid);
        }
        let has_log = hdr.log_guid != ZERO_GUID && hdr.log_length != 0;
        if has_log && !u64::from(hdr.log_length).is_multiple_of(MIB) {
            return Err(VhdxError::Invalid);
        }
        let mut replayed = false;
        if has_log {
            let (offset, length) = hdr.log_range(file_len).ok_or(VhdxError::Invalid)?;
            let log = Log {
                offset,
                length,
                guid: hdr.log_guid,
            };
            if !writable {
                if log.needs_replay(&store)? {
                    return Err(VhdxError::NeedsReplay(store.display_name()));
                }
            } else {
                replayed = log.replay(&store)?;
                let mut next = hdr.clone();
                next.log_guid = ZERO_GUID;
                index = header::write_next(&store, index, &mut next)?;
                hdr = next;
            }
        }
        // The file's length in whole sectors, as qemu's block layer has it:
        // a last sector cut short still holds the blocks that reach into it.
        let file_len = store.size()?.next_multiple_of(512);
        let regions = region::read(&store)?;
        // The log and the regions must not overlap, checked as qemu-img
        // registers them: the log, then the table's entries in order.
        let mut known = vec![(hdr.log_offset, u64::from(hdr.log_length))];
        for (at, len) in regions.in_table_order() {
            if let Some(region) = region::overlapping(&known, at, at + len) {
                return Err(region::report_overlap(at, at + len, region));
            }
            known.push((at, len));
        }
        let md = metadata::read(&store, regions.metadata)?;
        let mut geometry = Geometry::new(md.disk_size, md.block_size, md.logical_sector_size);
        if md.parent.is_some() {
            geometry = geometry.with_bitmaps();
        }
        let table = bat::read(&store, regions.bat, &geometry)?;
        let bad_blocks = bat::check_blocks(
            &table,
            &geometry,
            md.disk_size,
            file_len,
            &known,
            flags & open_flags::CHECK != 0,
            md.parent.is_some(),
        )?;
        let parent = match &md.parent {
            Some(locator) => Some(parent::open(host, locator, flags)?),
            None => None,
        };
        Ok(VhdxImage {
            parent,
            disk_size: AtomicU64::new(md.disk_size),
            writable,
            regions,
            md,
            geometry,
            replayed: AtomicBool::new(replayed),
            bad_blocks,
            meta: Mutex::new(Meta {
                bat: table,
                header: hdr,
                header_index: index,
                log: None,
                dirty: BTreeSet::new(),
                file_end: file_len.next_multiple_of(MIB),
            }),
            store,
        })
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The guest size: whole sectors, as qemu-img counts them.
    fn size(&self) -> u64 {
        self.disk_size.load(Ordering::Acquire) / 512 * 512
    }

    /// The file offset of guest byte `offset` of a disk without a parent,
    /// or `None` if its block reads as zeros.
    fn locate(&self, offset: u64) -> Result<Option<u64>> {
        let block = offset / self.geometry.block_size;
        let e = self.meta().entry(self.geometry.index(block));
        // Without a parent, every state but "present" reads as zeros
        // ([MS-VHDX] 2.5.1.1); PARTIALLY_PRESENT belongs to differencing
        // disks only, which read through `read_differencing`, and state 4
        // is none.
        match bat::state(e) {
            bat::PAYLOAD_FULLY_PRESENT => {
                Ok(Some(bat::offset(e) + offset % self.geometry.block_size))
            }
            bat::PAYLOAD_PARTIALLY_PRESENT | bat::PAYLOAD_INVALID => Err(VhdxError::BadBlockState),
            _ => Ok(None),
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(VhdxError::ReadOnly);
        }
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(VhdxError::OutOfRange(offset, len, size)),
        }
    }

    /// Starts this session's log the first time anything changes: a new
    /// header with fresh FileWriteGuid and DataWriteGuid ([MS-VHDX] 2.2.2:
    /// changed before the first write) and the GUID the session's log
    /// entries carry.
    fn begin(&self, meta: &mut Meta) -> Result<()> {
        if meta.log.is_some() {
            return Ok(());
        }
        // The BAT is written in place in 4 KiB sectors: a table placed
        // over the header section (which only a damaged region table
        // does) is never written.
        if self.regions.bat.offset < MIB || !self.regions.bat.offset.is_multiple_of(SECTOR) {
            return Err(VhdxError::OverMetadata);
        }
        let file_len = self.store.size()?;
        let (offset, length) = meta
            .header
            .log_range(file_len)
            .ok_or(VhdxError::OverMetadata)?;
        let mut next = meta.header.clone();
        next.file_write_guid = random_guid();
        next.data_write_guid = random_guid();
        next.log_guid = random_guid();
        meta.header_index = header::write_next(&self.store, meta.header_index, &mut next)?;
        meta.log = Some(LogCursor {
            log: Log {
                offset,
                length,
                guid: next.log_guid,
            },
            at: 0,
            sequence: 1,
        });
        meta.header = next;
        Ok(())
    }

    /// Records `entry` for table index `index` in memory.
    fn set_entry(meta: &mut Meta, index: u64, entry: u64) {
        let i = index as usize;
        if i >= meta.bat.len() {
            meta.bat.resize(i + 1, 0);
        }
        meta.bat[i] = entry;
        meta.dirty.insert(index * bat::ENTRY_SIZE / SECTOR);
    }

    /// The file offset of block `block`'s data for a write, giving the
    /// block space at the end of the file if it has none.
    fn place(&self, block: u64) -> Result<u64> {
        let mut meta = self.meta();
        let index = self.geometry.index(block);
        let e = meta.entry(index);
        if bat::state(e) == bat::PAYLOAD_FULLY_PRESENT {
            let at = bat::offset(e);
            if self.over_metadata(&meta, at, at + self.geometry.block_size) {
                return Err(VhdxError::OverMetadata);
            }
            return Ok(at);
        }
        let partial = bat::state(e) == bat::PAYLOAD_PARTIALLY_PRESENT;
        if partial && self.parent.is_none() {
            // Never checked at open without a parent: qemu fails the write.
            return Err(VhdxError::BadBlockState);
        }
        self.begin(&mut meta)?;
        let at = if partial {
            // Checked at open (in a differencing disk) to lie inside the
            // file, clear of metadata.
            bat::offset(e)
        } else {
            let at = meta.file_end;
            let end = at + self.geometry.block_size;
            // The new block reads as zeros until written: the file grows
            // over it now, so no reader sees stale bytes.
            self.store.set_size(end, Prealloc::OFF)?;
            meta.file_end = end;
            at
        };
        if let Some(parent) = &self.parent {
            if partial || bat::state(e) == bat::PAYLOAD_NOT_PRESENT {
                self.fill_from_parent(&meta, parent, block, at)?;
            }
        }
        Self::set_entry(&mut meta, index, bat::entry(bat::PAYLOAD_FULLY_PRESENT, at));
        Ok(at)
    }

    /// Copies into block `block`, placed at file offset `at`, the parent's
    /// data for every sector the block does not hold yet.
    fn fill_from_parent(&self, meta: &Meta, parent: &Parent, block: u64, at: u64) -> Result<()> {
        let bs = self.geometry.block_size;
        let start = block * bs;
        let end = (start + bs).min(self.size());
        let mut buf = vec![0u8; MIB.min(bs) as usize];
        let mut done = start;
        while done < end {
            let n = (buf.len() as u64).min(end - done);
            for (o, l, present) in self.sector_runs(meta, block, done, n)? {
                if !present {
                    let part = &mut buf[..l as usize];
                    parent.read(o, part)?;
                    self.store.write_all_at(at + o - start, part)?;
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Splits `[offset, offset + len)` of block `block` into runs of
    /// sectors this file holds (`true`) and sectors the parent holds, by
    /// the block's state and its chunk's sector bitmap.
    fn sector_runs(
        &self,
        meta: &Meta,
        block: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64, bool)>> {
        let g = &self.geometry;
        let e = meta.entry(g.index(block));
        if bat::state(e) != bat::PAYLOAD_PARTIALLY_PRESENT {
            let present = bat::state(e) != bat::PAYLOAD_NOT_PRESENT;
            return Ok(vec![(offset, len, present)]);
        }
        let chunk = block / g.chunk_ratio;
        let sb = meta.entry(chunk * (g.chunk_ratio + 1) + g.chunk_ratio);
        if bat::state(sb) != bat::SB_BLOCK_PRESENT {
            return Err(VhdxError::Invalid);
        }
        let chunk_start = chunk * g.chunk_ratio * g.block_size / 512;
        let (first, last) = (offset / 512, (offset + len - 1) / 512);
        let (bit0, bit1) = (first - chunk_start, last - chunk_start);
        let mut bits = vec![0u8; (bit1 / 8 - bit0 / 8 + 1) as usize];
        self.store
            .read_or_zero_at(bat::offset(sb) + bit0 / 8, &mut bits)?;
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        for s in first..=last {
            let bit = s - chunk_start - bit0 / 8 * 8;
            let present = bits[(bit / 8) as usize] >> (bit % 8) & 1 == 1;
            let from = (s * 512).max(offset);
            let to = (s * 512 + 512).min(offset + len);
            match runs.last_mut() {
                Some(run) if run.2 == present => run.1 += to - from,
                _ => runs.push((from, to - from, present)),
            }
        }
        Ok(runs)
    }

    /// Reads `buf` at guest `offset`, inside one block, of a differencing
    /// disk.
    fn read_differencing(&self, parent: &Parent, offset: u64, buf: &mut [u8]) -> Result<()> {
        let block = offset / self.geometry.block_size;
        let (e, runs) = {
            let meta = self.meta();
            let e = meta.entry(self.geometry.index(block));
            (e, self.sector_runs(&meta, block, offset, buf.len() as u64)?)
        };
        let in_block = offset % self.geometry.block_size;
        for (at, len, present) in runs {
            let part = &mut buf[(at - offset) as usize..(at - offset + len) as usize];
            match bat::state(e) {
                bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT if present => {
                    let host = bat::offset(e) + in_block + (at - offset);
                    self.store.read_or_zero_at(host, part)?;
                }
                _ if present => part.fill(0),
                _ => parent.read(at, part)?,
            }
        }
        Ok(())
    }

    /// Block status of a differencing disk: what this file holds is data
    /// (or zeros) of this layer; the rest is the parent's.
    fn status_differencing(&self, offset: u64, end: u64) -> Result<Vec<Extent>> {
        let bs = self.geometry.block_size;
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < end {
            let n = (bs - at % bs).min(end - at);
            let block = at / bs;
            let (e, runs) = {
                let meta = self.meta();
                let e = meta.entry(self.geometry.index(block));
                (e, self.sector_runs(&meta, block, at, n)?)
            };
            for (o, l, present) in runs {
                let flags = match bat::state(e) {
                    _ if !present => 0,
                    bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT => {
                        extent_flags::DATA | extent_flags::ALLOCATED
                    }
                    _ => extent_flags::ZERO | extent_flags::ALLOCATED,
                };
                match out.last_mut() {
                    Some(last) if last.flags == flags => last.length += l,
                    _ => out.push(Extent {
                        offset: o,
                        length: l,
                        flags,
                        store: 0,
                        host_offset: 0,
                    }),
                }
            }
            at += n;
        }
        Ok(out)
    }

    /// Whether `[start, end)` of the file holds the image's own metadata.
    fn over_metadata(&self, meta: &Meta, start: u64, end: u64) -> bool {
        let log_end = meta.header.log_offset + u64::from(meta.header.log_length);
        start < MIB
            || self.regions.bat.overlaps(start, end)
            || self.regions.metadata.overlaps(start, end)
            || (start < log_end && meta.header.log_offset < end)
    }

    /// Writes the changed BAT sectors through the log: after the data is
    /// durable, each batch goes into a log entry made durable, then in
    /// place, then is made durable.
    fn flush_all(&self) -> Result<()> {
        let mut meta = self.meta();
        if meta.dirty.is_empty() {
            return Ok(self.store.sync()?);
        }
        self.store.sync()?;
        let dirty: Vec<u64> = meta.dirty.iter().copied().collect();
        let Some(per_entry) = meta.log.as_ref().map(|c| c.log.max_sectors_per_entry()) else {
            return Err(VhdxError::OverMetadata);
        };
        for batch in dirty.chunks(per_entry) {
            let sectors: Vec<(u64, Vec<u8>)> = batch
                .iter()
                .map(|&s| {
                    (
                        self.regions.bat.offset + s * SECTOR,
                        encode_sector(&meta.bat, s),
                    )
                })
                .collect();
            self.log_and_apply(&mut meta, &sectors)?;
            for s in batch {
                meta.dirty.remove(s);
            }
        }
        Ok(())
    }

    /// Writes `sectors` (file offset, 4 KiB) as one log entry, makes it
    /// durable, then writes them in place and makes them durable.
    fn log_and_apply(&self, meta: &mut Meta, sectors: &[(u64, Vec<u8>)]) -> Result<()> {
        let file_len = self.store.size()?;
        let Some(cursor) = meta.log.as_mut() else {
            return Err(VhdxError::OverMetadata);
        };
        cursor.at =
            cursor
                .log
                .write_entry(&self.store, cursor.at, cursor.sequence, sectors, file_len)?;
        cursor.sequence += 1;
        for (at, bytes) in sectors {
            self.store.write_all_at(*at, bytes)?;
        }
        Ok(self.store.sync()?)
    }

    /// Changes the guest size (beyond qemu-img, which cannot resize a
    /// VHDX) within what the BAT region holds. The virtual disk size item
    /// and the BAT entries of blocks past a smaller end change in one log
    /// entry; the tail of a block cut in two is zeroed first, so that a
    /// later growth reads zeros there.
    fn resize_to(&self, new_size: u64, shrink: bool) -> Result<()> {
        if !self.writable {
            return Err(VhdxError::ReadOnly);
        }
        if self.parent.is_some() {
            return Err(VhdxError::Unsupported(
                "Cannot resize a differencing VHDX: it must keep its parent's size".into(),
            ));
        }
        let size = new_size.next_multiple_of(512);
        let old = self.size();
        if size < old && !shrink {
            return Err(VhdxError::Unsupported(
                "Use the --shrink option to perform a shrink operation.".into(),
            ));
        }
        if size > MAX_DISK_SIZE {
            return Err(VhdxError::InvalidOption(
                "Image size too large; max of 64TB".into(),
            ));
        }
        let geometry = Geometry::new(size, self.geometry.block_size, self.md.logical_sector_size);
        if geometry.entries * bat::ENTRY_SIZE > self.regions.bat.length {
            return Err(VhdxError::Unsupported(
                "Cannot grow this VHDX: its BAT region is too small for the new size".into(),
            ));
        }
        let bs = self.geometry.block_size;
        // What lies past the smaller end in its block never reads again,
        // nor what a damaged table names for the blocks in between.
        let end = size.min(old);
        if !end.is_multiple_of(bs) {
            if let Some(host) = self.locate(end)? {
                let start = host - end % bs;
                if self.over_metadata(&self.meta(), start, start + bs) {
                    return Err(VhdxError::OverMetadata);
                }
                self.store.zero_range(host, bs - end % bs, false)?;
            }
        }
        self.flush_all()?;
        let item = metadata::disk_size_offset(&self.store, self.regions.metadata)?;
        let mut meta = self.meta();
        self.begin(&mut meta)?;
        let blocks = end.div_ceil(bs)..size.max(old).div_ceil(bs);
        // Entries past the old end were never loaded: a damaged table may
        // hold some there, which growing would bring to light. They are
        // read from disk (inside the BAT region, checked above).
        let loaded = meta.bat.len() as u64;
        let first = self.geometry.index(blocks.start).max(loaded);
        let last = blocks.end.checked_sub(1).map(|b| self.geometry.index(b));
        let mut on_disk = Vec::new();
        if let Some(last) = last.filter(|&l| l >= first) {
            let mut raw = vec![0u8; ((last - first + 1) * bat::ENTRY_SIZE) as usize];
            let at = self.regions.bat.offset + first * bat::ENTRY_SIZE;
            self.store.read_or_zero_at(at, &mut raw)?;
            on_disk = raw
                .chunks_exact(bat::ENTRY_SIZE as usize)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect();
        }
        for block in blocks {
            let index = self.geometry.index(block);
            let stale = match index.checked_sub(first) {
                Some(k) if index >= loaded => on_disk.get(k as usize).copied().unwrap_or(0),
                _ => meta.entry(index),
            };
            if stale != 0 {
                Self::set_entry(&mut meta, index, 0);
            }
        }
        let sector_at = item / SECTOR * SECTOR;
        let mut md_sector = vec![0u8; SECTOR as usize];
        self.store.read_or_zero_at(sector_at, &mut md_sector)?;
        let at = (item - sector_at) as usize;
        md_sector[at..at + 8].copy_from_slice(&size.to_le_bytes());
        let mut sectors = vec![(sector_at, md_sector)];
        let dirty: Vec<u64> = std::mem::take(&mut meta.dirty).into_iter().collect();
        let per_entry = meta
            .log
            .as_ref()
            .map_or(1, |c| c.log.max_sectors_per_entry());
        if dirty.len() + 1 > per_entry {
            return Err(VhdxError::Unsupported(
                "Cannot shrink this VHDX by that much at once: its log is too small".into(),
            ));
        }
        sectors.extend(dirty.iter().map(|&s| {
            (
                self.regions.bat.offset + s * SECTOR,
                encode_sector(&meta.bat, s),
            )
        }));
        self.log_and_apply(&mut meta, &sectors)?;
        self.disk_size.store(size, Ordering::Release);
        Ok(())
    }

    /// Ends the session: with every change applied, the header's log GUID
    /// is cleared, so that no reader replays the (applied) log.
    fn finish(&self) -> Result<()> {
        self.flush_all()?;
        let mut meta = self.meta();
        if meta.log.take().is_none() {
            return Ok(());
        }
        let mut next = meta.header.clone();
        next.log_guid = ZERO_GUID;
        meta.header_index = header::write_next(&self.store, meta.header_index, &mut next)?;
        meta.header = next;
        Ok(())
    }

    /// Writes `buf` at guest `offset`, inside one block.
    fn write_in_block(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let at = self.place(offset / self.geometry.block_size)?;
        Ok(self
            .store
            .write_all_at(at + offset % self.geometry.block_size, buf)?)
    }

    /// Makes whole blocks of `[offset, offset + len)` read as zeros by
    /// their state, and zeroes the partial blocks at the edges in place.
    fn zero_range(&self, offset: u64, len: u64, whole_blocks_only: bool) -> Result<()> {
        let bs = self.geometry.block_size;
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let n = (bs - at % bs).min(end - at);
            let block = at / bs;
            if n == bs || (at + n == self.size() && at.is_multiple_of(bs)) {
                let mut meta = self.meta();
                let index = self.geometry.index(block);
                if bat::state(meta.entry(index)) != bat::PAYLOAD_ZERO {
                    self.begin(&mut meta)?;
                    Self::set_entry(&mut meta, index, bat::entry(bat::PAYLOAD_ZERO, 0));
                }
            } else if !whole_blocks_only {
                // In a differencing disk, the parent's data must not show
                // through: the block is filled from it first.
                let host = match self.parent {
                    Some(_) => Some(self.place(block)? + at % bs),
                    None => self.locate(at)?,
                };
                if let Some(host) = host {
                    self.store.zero_range(host, n, false)?;
                }
            }
            at += n;
        }
        Ok(())
    }

    fn run_check(&self, request: &CheckRequest) -> CheckReport {
        let mut report = CheckReport {
            corruptions: self.bad_blocks,
            ..CheckReport::default()
        };
        if request.repair != Repair::None && self.replayed.swap(false, Ordering::AcqRel) {
            report.corruptions_fixed = 1;
        }
        report
    }
}

/// The 4 KiB BAT sector `sector` of `table`, as stored.
fn encode_sector(table: &[u64], sector: u64) -> Vec<u8> {
    let per = (SECTOR / bat::ENTRY_SIZE) as usize;
    let first = sector as usize * per;
    let mut b = vec![0u8; SECTOR as usize];
    for (i, e) in table.iter().skip(first).take(per).enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
    }
    b
}

impl ImageImpl for VhdxImage {
    fn virtual_size(&self) -> u64 {
        self.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), DriverError> {
        let inside = (buf.len() as u64).min(self.size().saturating_sub(offset)) as usize;
        buf[inside..].fill(0);
        let bs = self.geometry.block_size;
        let mut done = 0usize;
        while done < inside {
            let at = offset + done as u64;
            let n = ((bs - at % bs) as usize).min(inside - done);
            let part = &mut buf[done..done + n];
            match &self.parent {
                Some(parent) => self.read_differencing(parent, at, part)?,
                None => match self.locate(at)? {
                    Some(host) => self.store.read_or_zero_at(host, part)?,
                    None => part.fill(0),
                },
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> std::result::Result<(), DriverError> {
        self.check_write(offset, buf.len() as u64)?;
        let bs = self.geometry.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let n = ((bs - at % bs) as usize).min(buf.len() - done);
            self.write_in_block(at, &buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _flags: u32,
    ) -> std::result::Result<(), DriverError> {
        self.check_write(offset, len)?;
        Ok(self.zero_range(offset, len, false)?)
    }

    fn discard(&self, offset: u64, len: u64) -> std::result::Result<(), DriverError> {
        self.check_write(offset, len)?;
        Ok(self.zero_range(offset, len, true)?)
    }

    fn block_status(&self, offset: u64, len: u64) -> std::result::Result<Vec<Extent>, DriverError> {
        // qemu-img's vhdx driver reports no block status: every byte is
        // data of this layer, at no known offset.
        let len = len.min(self.size().saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        if self.parent.is_some() {
            return Ok(self.status_differencing(offset, offset + len)?);
        }
        Ok(vec![Extent {
            offset,
            length: len,
            flags: extent_flags::DATA | extent_flags::ALLOCATED,
            store: 0,
            host_offset: 0,
        }])
    }

    fn flush(&self) -> std::result::Result<(), DriverError> {
        Ok(self.flush_all()?)
    }

    fn info(&self) -> std::result::Result<ImageInfo, DriverError> {
        Ok(ImageInfo {
            cluster_size: Some(self.geometry.block_size),
            dirty_flag: Some(false),
            backing_filename: self.parent.as_ref().map(|p| p.name.clone()),
            ..ImageInfo::default()
        })
    }

    fn store_name(&self, _index: u32) -> String {
        self.store.display_name()
    }

    fn resize(
        &self,
        new_size: u64,
        _prealloc: Prealloc,
        shrink: bool,
    ) -> std::result::Result<(), DriverError> {
        Ok(self.resize_to(new_size, shrink)?)
    }

    fn check(&self, request: CheckRequest) -> std::result::Result<CheckReport, DriverError> {
        Ok(self.run_check(&request))
    }

    fn close(&self) -> std::result::Result<(), DriverError> {
        Ok(self.finish()?)
    }
}
