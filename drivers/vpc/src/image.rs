//! An open VHD: a fixed disk (the guest's bytes, then the footer) or a
//! dynamic one (footer copy, dynamic disk header, Block Allocation Table,
//! blocks of a sector bitmap and data, footer).
//!
//! Like QEMU, the driver reads a dynamic disk's allocated blocks whole
//! (their sector bitmaps are not consulted) and, the first time it writes
//! into a block, marks all its sectors present.
//!
//! A differencing disk is read, beyond qemu-img, over its parent: a
//! sector whose bit is clear in its block's bitmap (and every sector of an
//! unallocated block) reads from the parent, found through the header's
//! locators (see `parent`). Writing to one is refused.
//!
//! Writes to a dynamic disk run in parallel: a writer takes the metadata
//! lock only to look a block up or to place a new one at the end of the
//! file, and writes the block's bitmap and data outside it. New table
//! entries are kept in memory and written in a batch at flush, after the
//! data and a footer at the new end of the file are durable: a crash
//! before that leaks the new blocks, and the image stays valid (its first
//! footer copy and its table are untouched).

use crate::bat::{Bat, UNALLOCATED};
use crate::error::{Result, VpcError};
use crate::footer::{be32, has_cookie, Footer, SizeCalc, FOOTER_SIZE, TYPE_FIXED};
use crate::header::{DynamicHeader, HEADER_SIZE};
use crate::parent::{self, ParentLink, TYPE_DIFFERENCING};
use qimg_driver_api::schema::ImageInfo;
use qimg_driver_api::{
    extent_flags, open_flags, zero_flags, BackingBox, ByteStoreBox, DriverError, Extent, HostExt,
    HostServicesBox, ImageImpl, Prealloc, StoreExt,
};
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Extents answered per `block_status` call at most.
const MAX_EXTENTS: usize = 1024;

/// An open VHD.
pub struct VpcImage {
    store: ByteStoreBox,
    /// The footer, as written at the end of the file.
    footer: Mutex<Footer>,
    /// Guest size in bytes.
    size: AtomicU64,
    writable: bool,
    /// A dynamic disk's blocks; `None` for a fixed disk.
    dynamic: Option<Dynamic>,
    /// The guest's bytes are the file's from offset 0: a fixed disk, or,
    /// as QEMU reads it, a dynamic layout whose footer says "fixed".
    passthrough: bool,
    /// A differencing disk's parent.
    parent: Option<Parent>,
}

/// The parent of a differencing disk.
struct Parent {
    /// Its file name, as found through the header's locators.
    name: String,
    /// The parent image, unless the chain was not opened.
    image: Option<BackingBox>,
}

impl Parent {
    /// Finds the parent of the differencing disk whose dynamic header is at
    /// `header_at`, checks that its unique id is the one the child
    /// records, and opens it (unless `flags` say not to).
    fn open(
        store: &ByteStoreBox,
        host: &HostServicesBox,
        header_at: u64,
        file_len: u64,
        flags: u32,
    ) -> Result<Parent> {
        let mut header = [0u8; HEADER_SIZE];
        store.read_or_zero_at(header_at, &mut header)?;
        let link = parent::read(store, &header, file_len)?;
        if flags & open_flags::NO_BACKING != 0 {
            return Ok(Parent {
                name: link.name,
                image: None,
            });
        }
        check_parent_id(&host.related(&link.name, false, false)?, &link)?;
        Ok(Parent {
            image: Some(host.backing(&link.name, Some("vpc"))?),
            name: link.name,
        })
    }

    /// Reads guest bytes of the parent (zeros where there is none).
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match &self.image {
            Some(image) => Ok(image.read_at(offset, buf.into()).into_result()?),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }
}

/// Refuses a parent whose footer's unique id is not the one the child
/// records (a parent replaced or modified since the child was made).
fn check_parent_id(store: &ByteStoreBox, link: &ParentLink) -> Result<()> {
    let mut footer = [0u8; FOOTER_SIZE];
    store.read_or_zero_at(0, &mut footer)?;
    if !has_cookie(&footer) {
        let end = store.size()?.next_multiple_of(512);
        store.read_or_zero_at(end.saturating_sub(FOOTER_SIZE as u64), &mut footer)?;
    }
    if !has_cookie(&footer) || footer[68..84] != link.uuid {
        return Err(VpcError::ParentMismatch(link.name.clone()));
    }
    Ok(())
}

/// What a dynamic disk adds.
struct Dynamic {
    /// Guest bytes per block.
    block_size: u64,
    /// Bytes of each block's sector bitmap.
    bitmap_size: u64,
    /// Where the dynamic disk header is.
    header_offset: u64,
    /// The first file offset a block may start at: past the footer copy
    /// and the dynamic disk header.
    data_start: u64,
    /// The file's length at open. A block placed below it (a damaged file
    /// holds bytes past its footer) has its data area zeroed first: its
    /// all-ones bitmap would show those bytes as guest data.
    stale_end: u64,
    meta: Mutex<Meta>,
}

/// A dynamic disk's mutable metadata.
struct Meta {
    bat: Bat,
    /// Where the table starts.
    table_offset: u64,
    /// Where the next block goes; the footer's place once flushed.
    free: u64,
    /// The footer at the end of the file is at `free` and every entry is
    /// on disk.
    clean: bool,
    /// Blocks whose data is written and whose entries are not yet.
    dirty: BTreeSet<u64>,
    /// Blocks whose bitmap this session has set to all ones.
    full_bitmaps: HashSet<u64>,
    /// Blocks placed by [`ImageImpl::reserve`] and not yet written.
    reserved: HashSet<u64>,
}

/// A block placed for a write: where it is, whether its bitmap needs
/// writing, whether it is new.
struct Placed {
    offset: u64,
    write_bitmap: bool,
    new: bool,
}

impl VpcImage {
    /// Opens the VHD in `store`.
    pub fn open(store: ByteStoreBox, host: &HostServicesBox, flags: u32) -> Result<VpcImage> {
        let mode = host
            .option("force_size_calc")
            .map(|m| SizeCalc::parse(&m))
            .transpose()?;
        let len = store.size()?;
        // A dynamic disk has a copy of its footer at the start; a fixed
        // disk has it only at the end. QEMU goes by where it finds it (the
        // footer's `Disk Type` is not consulted), looking at the end of
        // the file rounded up to whole sectors.
        let mut bytes = [0u8; FOOTER_SIZE];
        store.read_or_zero_at(0, &mut bytes)?;
        let at_start = has_cookie(&bytes);
        if !at_start {
            let rounded = len.next_multiple_of(512);
            if rounded < FOOTER_SIZE as u64 {
                return Err(VpcError::TooSmall);
            }
            store.read_or_zero_at(rounded - FOOTER_SIZE as u64, &mut bytes)?;
            // A footer found only at the end must be a fixed disk's.
            if !has_cookie(&bytes) || be32(&bytes, 60) != TYPE_FIXED {
                return Err(VpcError::NotVpc);
            }
        }
        let footer = Footer::parse(&bytes)?;
        let size = footer.guest_size(mode);
        // At most 2040 GiB, checked before the dynamic header, as in qemu.
        if size / 512 > crate::create::MAX_SECTORS {
            return Err(VpcError::SizeTooLarge(store.display_name()));
        }
        let dynamic = if at_start {
            Some(Dynamic::open(&store, &footer, size, len)?)
        } else {
            None
        };
        let parent = if at_start && footer.disk_type == TYPE_DIFFERENCING {
            Some(Parent::open(&store, host, footer.data_offset, len, flags)?)
        } else {
            None
        };
        Ok(VpcImage {
            parent,
            passthrough: footer.disk_type == TYPE_FIXED,
            store,
            footer: Mutex::new(footer),
            size: AtomicU64::new(size),
            writable: flags & open_flags::WRITE != 0,
            dynamic,
        })
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn footer(&self) -> MutexGuard<'_, Footer> {
        self.footer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(VpcError::ReadOnly);
        }
        if self.parent.is_some() {
            return Err(VpcError::DifferencingWrite);
        }
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(VpcError::OutOfRange(offset, len, size)),
        }
    }

    /// Changes the guest size (beyond qemu-img, which cannot resize a
    /// VHD). The new size is rounded as `create` rounds it for this disk
    /// (to a geometry, unless the disk is sized by `Current Size`). A
    /// fixed disk's footer moves: growing, a copy saying the old size is
    /// written at the new end, the old one zeroed, then the new size
    /// written; shrinking, the new footer is written at the new end, then
    /// the file cut. A dynamic disk
    /// changes within what its table covers; blocks past a smaller end
    /// are dropped from the table (their space leaks).
    fn resize_to(&self, new_size: u64, shrink: bool) -> Result<()> {
        if !self.writable {
            return Err(VpcError::ReadOnly);
        }
        if self.parent.is_some() {
            return Err(VpcError::DifferencingWrite);
        }
        let mut footer = self.footer();
        let exact = footer.guest_size(None) == footer.current_size / 512 * 512;
        let (geometry, sectors) = crate::create::sizing(new_size.div_ceil(512), exact);
        if sectors > crate::create::MAX_SECTORS {
            return Err(VpcError::TooLarge);
        }
        let size = sectors * 512;
        let old = self.size();
        if size < old && !shrink {
            return Err(VpcError::Unsupported(
                "Use the --shrink option to perform a shrink operation.".into(),
            ));
        }
        let mut next = footer.clone();
        next.current_size = size;
        next.geometry = geometry;
        let bytes = next.to_bytes();
        match self.dynamic.as_ref().filter(|_| !self.passthrough) {
            None if self.dynamic.is_some() => {
                return Err(VpcError::Unsupported(
                    "Cannot resize this image: its footer says fixed, its layout dynamic".into(),
                ))
            }
            None => {
                let footer_at = self.store.size()?.saturating_sub(FOOTER_SIZE as u64);
                if size > footer_at {
                    // Growing: the footer at the new end says the old size
                    // until the old one is zeroed, so that no step shows
                    // the old footer as guest data (both tools read a
                    // fixed disk by the footer at the file's end).
                    self.store.write_all_at(size, &footer.to_bytes())?;
                    self.store.sync()?;
                    self.store.zero_range(
                        footer_at,
                        (FOOTER_SIZE as u64).min(size - footer_at),
                        true,
                    )?;
                    self.store.sync()?;
                }
                self.store.write_all_at(size, &bytes)?;
                self.store.sync()?;
                self.store
                    .set_size(size + FOOTER_SIZE as u64, Prealloc::OFF)?;
            }
            Some(d) => {
                d.resize(&self.store, size, old, &bytes)?;
            }
        }
        *footer = next;
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    /// Checks that a write of `[offset, offset + len)` to a fixed disk
    /// stays clear of its footer (and of a dynamic layout's headers, which
    /// QEMU would write over).
    fn check_fixed(&self, offset: u64, len: u64) -> Result<()> {
        let footer_at = self.store.size()?.saturating_sub(FOOTER_SIZE as u64);
        if self.dynamic.is_some() || offset + len > footer_at {
            return Err(VpcError::OverMetadata);
        }
        Ok(())
    }

    /// Reads `buf` at guest `offset` (inside one block) of a differencing
    /// disk: the block's present sectors from the file, the others from
    /// the parent.
    fn read_differencing(
        &self,
        d: &Dynamic,
        parent: &Parent,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let Some(block) = d.block(offset / d.block_size) else {
            return parent.read(offset, buf);
        };
        for (at, len, present) in d.sector_runs(&self.store, block, offset, buf.len() as u64)? {
            let part = &mut buf[(at - offset) as usize..(at - offset + len) as usize];
            if present {
                let host = block + d.bitmap_size + at % d.block_size;
                self.store.read_or_zero_at(host, part)?;
            } else {
                parent.read(at, part)?;
            }
        }
        Ok(())
    }

    /// Block status of a differencing disk: present sectors are this
    /// layer's data; the rest is not allocated here (the parent decides).
    fn status_differencing(&self, d: &Dynamic, offset: u64, end: u64) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        let mut at = offset;
        while at < end && out.len() < MAX_EXTENTS {
            let n = (d.block_size - at % d.block_size).min(end - at);
            let runs = match d.block(at / d.block_size) {
                Some(block) => d
                    .sector_runs(&self.store, block, at, n)?
                    .into_iter()
                    .map(|(o, l, present)| (o, l, present.then_some(block)))
                    .collect(),
                None => vec![(at, n, None)],
            };
            for (o, l, block) in runs {
                let ext = match block {
                    Some(block) => Extent {
                        offset: o,
                        length: l,
                        flags: extent_flags::DATA
                            | extent_flags::ALLOCATED
                            | extent_flags::OFFSET_VALID,
                        store: 0,
                        host_offset: block + d.bitmap_size + o % d.block_size,
                    },
                    None => Extent {
                        offset: o,
                        length: l,
                        flags: 0,
                        store: 0,
                        host_offset: 0,
                    },
                };
                push_merged(&mut out, ext);
            }
            at += n;
        }
        Ok(out)
    }

    fn flush_all(&self) -> Result<()> {
        if let Some(d) = &self.dynamic {
            let footer = self.footer().clone();
            d.flush(&self.store, &footer)?;
        }
        Ok(self.store.sync()?)
    }

    fn status_fixed(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        // QEMU hands a fixed disk's status to the file: data where the file
        // has data, and its holes (and what lies past its end) as data that
        // reads as zeros.
        let file_len = self.store.size()?;
        let (data, length) = if offset >= file_len {
            (false, len)
        } else {
            let run = self.store.run(offset, len)?;
            (run.data, run.length.clamp(1, len))
        };
        let zero = if data { 0 } else { extent_flags::ZERO };
        Ok(vec![Extent {
            offset,
            length,
            flags: extent_flags::DATA | zero | extent_flags::ALLOCATED | extent_flags::OFFSET_VALID,
            store: 0,
            host_offset: offset,
        }])
    }
}

impl Dynamic {
    fn open(store: &ByteStoreBox, footer: &Footer, size: u64, file_len: u64) -> Result<Dynamic> {
        let at = footer.data_offset;
        if at > i64::MAX as u64 - HEADER_SIZE as u64 {
            return Err(VpcError::DynamicHeaderUnreadable);
        }
        let mut bytes = [0u8; HEADER_SIZE];
        store.read_or_zero_at(at, &mut bytes)?;
        let header = DynamicHeader::parse(&bytes)?;
        let (bat, free) = Bat::load(store, &header, size, file_len)?;
        Ok(Dynamic {
            block_size: u64::from(header.block_size),
            bitmap_size: header.bitmap_size(),
            header_offset: at,
            data_start: at + HEADER_SIZE as u64,
            stale_end: file_len,
            meta: Mutex::new(Meta {
                bat,
                table_offset: header.table_offset,
                free,
                clean: true,
                dirty: BTreeSet::new(),
                full_bitmaps: HashSet::new(),
                reserved: HashSet::new(),
            }),
        })
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file offset of guest byte `offset` (inside block `offset /
    /// block_size`), or `None` if its block is not allocated (or only
    /// reserved: nothing is written there yet).
    fn locate(&self, offset: u64) -> Option<u64> {
        self.block(offset / self.block_size)
            .map(|at| at + self.bitmap_size + offset % self.block_size)
    }

    /// The file offset of block `index` (its sector bitmap), or `None` if
    /// it is not allocated (or only reserved).
    fn block(&self, index: u64) -> Option<u64> {
        let meta = self.meta();
        let entry = meta.bat.get(index);
        (entry != UNALLOCATED && !meta.reserved.contains(&index)).then(|| u64::from(entry) * 512)
    }

    /// The runs of `[offset, offset + len)` (inside one block, which is
    /// allocated at `block`) whose sectors are present in the block or
    /// not, by the block's sector bitmap (most significant bit first):
    /// (offset, length, present).
    fn sector_runs(
        &self,
        store: &ByteStoreBox,
        block: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64, bool)>> {
        let in_block = offset % self.block_size;
        let first = in_block / 512;
        let last = (in_block + len - 1) / 512;
        let mut bits = vec![0u8; (last / 8 - first / 8 + 1) as usize];
        store.read_or_zero_at(block + first / 8, &mut bits)?;
        let present = |sector: u64| {
            let byte = bits[(sector / 8 - first / 8) as usize];
            byte & (0x80 >> (sector % 8)) != 0
        };
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        let end = offset + len;
        for sector in first..=last {
            let start = (offset - in_block + sector * 512).max(offset);
            let stop = (offset - in_block + (sector + 1) * 512).min(end);
            let here = present(sector);
            match runs.last_mut() {
                Some(run) if run.2 == here => run.1 += stop - start,
                _ => runs.push((start, stop - start, here)),
            }
        }
        Ok(runs)
    }

    /// Finds block `index` for a write, placing it at the end of the file
    /// if it has none. A block new to the file is cleared of what the file
    /// held there before anyone writes to it.
    fn place(&self, store: &ByteStoreBox, index: u64) -> Result<Placed> {
        let mut meta = self.meta();
        let placed = self.find_place(&mut meta, index)?;
        if placed.new {
            // Under the lock: another writer of the block places it after
            // this, and writes its data only once the clearing is done.
            let data = placed.offset + self.bitmap_size;
            let end = (data + self.block_size).min(self.stale_end);
            if end > data {
                store.zero_range(data, end - data, false)?;
            }
        }
        Ok(placed)
    }

    /// [`Dynamic::place`] without the clearing.
    fn find_place(&self, meta: &mut Meta, index: u64) -> Result<Placed> {
        let entry = meta.bat.get(index);
        if entry != UNALLOCATED {
            let offset = u64::from(entry) * 512;
            // A damaged table may point a block at the headers or the table.
            let table_end = meta.table_offset + u64::from(meta.bat.max()) * 4;
            let block_end = offset + self.bitmap_size + self.block_size;
            if offset < self.data_start || (offset < table_end && block_end > meta.table_offset) {
                return Err(VpcError::OverMetadata);
            }
            // The first write to a reserved block makes it a new one.
            let new = meta.reserved.remove(&index);
            let write_bitmap = meta.full_bitmaps.insert(index);
            return Ok(Placed {
                offset,
                write_bitmap,
                new,
            });
        }
        let offset = Self::allocate(meta, index, self.bitmap_size + self.block_size)?;
        meta.full_bitmaps.insert(index);
        Ok(Placed {
            offset,
            write_bitmap: true,
            new: true,
        })
    }

    /// Gives block `index` the `span` bytes at the end of the file, in
    /// memory only.
    fn allocate(meta: &mut Meta, index: u64, span: u64) -> Result<u64> {
        let offset = meta.free;
        let sector = u32::try_from(offset / 512)
            .ok()
            .filter(|&s| s != UNALLOCATED)
            .ok_or(VpcError::TooLarge)?;
        if !meta.bat.set(index, sector) {
            return Err(VpcError::OverMetadata);
        }
        meta.free += span;
        meta.clean = false;
        Ok(offset)
    }

    /// Places the unallocated blocks of `[offset, end)` at the end of the
    /// file in guest order, for the writes that follow.
    fn reserve(&self, offset: u64, end: u64) -> Result<()> {
        let mut meta = self.meta();
        let span = self.bitmap_size + self.block_size;
        let mut index = offset / self.block_size;
        while index * self.block_size < end {
            if meta.bat.get(index) == UNALLOCATED {
                Self::allocate(&mut meta, index, span)?;
                meta.reserved.insert(index);
            }
            index += 1;
        }
        Ok(())
    }

    /// Gives back the reservations never written: their entries go, and
    /// those at the end of the file give their space back.
    fn release(&self) {
        let mut meta = self.meta();
        let span = self.bitmap_size + self.block_size;
        let reserved: Vec<u64> = meta.reserved.drain().collect();
        let mut blocks: Vec<(u64, u64)> = reserved
            .into_iter()
            .map(|i| (u64::from(meta.bat.get(i)) * 512, i))
            .collect();
        blocks.sort_unstable();
        for &(offset, index) in blocks.iter().rev() {
            meta.bat.set(index, UNALLOCATED);
            if offset + span == meta.free {
                meta.free = offset;
            }
        }
    }

    /// Writes `buf` at guest `offset`, inside one block.
    fn write_in_block(&self, store: &ByteStoreBox, offset: u64, buf: &[u8]) -> Result<()> {
        let index = offset / self.block_size;
        let placed = self.place(store, index)?;
        let data = placed.offset + self.bitmap_size;
        store.write_all_at(data + offset % self.block_size, buf)?;
        if placed.write_bitmap {
            store.write_all_at(placed.offset, &vec![0xff; self.bitmap_size as usize])?;
        }
        if placed.new {
            self.meta().dirty.insert(index);
        }
        Ok(())
    }

    /// Writes the footer at the end and the new table entries, in that order,
    /// each after what it makes reachable is durable.
    fn flush(&self, store: &ByteStoreBox, footer: &Footer) -> Result<()> {
        let mut meta = self.meta();
        if meta.clean {
            return Ok(());
        }
        store.write_all_at(meta.free, &footer.to_bytes())?;
        store.sync()?;
        let dirty: Vec<u64> = meta.dirty.iter().copied().collect();
        let mut i = 0;
        while i < dirty.len() {
            let first = dirty[i];
            let mut count = 1;
            while i + (count as usize) < dirty.len() && dirty[i + count as usize] == first + count {
                count += 1;
            }
            let bytes = meta.bat.encode(first, count);
            store.write_all_at(meta.table_offset + first * 4, &bytes)?;
            i += count as usize;
        }
        store.sync()?;
        meta.dirty.clear();
        meta.clean = true;
        Ok(())
    }

    /// Makes the disk `size` bytes long (from `old`): checks that the table
    /// covers it, zeroes the block that holds the smaller end from there
    /// on, drops the blocks past the new end from the table, and writes
    /// `footer` at the start and (at flush) at the end. Whatever lay past
    /// an end never reads again.
    fn resize(
        &self,
        store: &ByteStoreBox,
        size: u64,
        old: u64,
        footer: &[u8; FOOTER_SIZE],
    ) -> Result<()> {
        let mut meta = self.meta();
        let capacity = u64::from(meta.bat.max()) * self.block_size;
        if size > capacity {
            self.grow_table(store, &mut meta, size.div_ceil(self.block_size))?;
        }
        let end = size.min(old);
        let in_block = end % self.block_size;
        let block = meta.bat.get(end / self.block_size);
        if in_block != 0 && block != UNALLOCATED {
            let host = u64::from(block) * 512 + self.bitmap_size + in_block;
            store
                .write_zeroes(host, self.block_size - in_block, true)
                .into_result()?;
        }
        let first_gone = size.div_ceil(self.block_size);
        let mut gone = Vec::new();
        for index in first_gone..u64::from(meta.bat.max()) {
            if meta.bat.get(index) != UNALLOCATED && meta.bat.set(index, UNALLOCATED) {
                gone.push(index);
            }
        }
        meta.dirty.extend(gone);
        meta.clean = false;
        store.write_all_at(0, footer)?;
        Ok(())
    }

    /// Gives the disk a table of `entries` entries: a copy of the table
    /// with the new entries unallocated, written at the end of the file
    /// (the old one's space leaks), then the header is pointed at it. At
    /// every step the file is a valid image of the old size.
    fn grow_table(&self, store: &ByteStoreBox, meta: &mut Meta, entries: u64) -> Result<()> {
        let max = u32::try_from(entries).map_err(|_| VpcError::TooLarge)?;
        let mut bat = meta.bat.grown(max).ok_or_else(|| {
            VpcError::Unsupported("Cannot grow an image whose block table is damaged".into())
        })?;
        let at = meta.free;
        let table_bytes = (entries * 4).next_multiple_of(512);
        let mut table = bat.encode(0, entries);
        table.resize(table_bytes as usize, 0xff);
        store.write_all_at(at, &table)?;
        store.sync()?;
        let mut header = [0u8; HEADER_SIZE];
        store.read_or_zero_at(self.header_offset, &mut header)?;
        DynamicHeader::parse(&header)?;
        header[16..24].copy_from_slice(&at.to_be_bytes());
        header[28..32].copy_from_slice(&max.to_be_bytes());
        header[36..40].fill(0);
        let sum = !header
            .iter()
            .fold(0u32, |s, &x| s.wrapping_add(u32::from(x)));
        header[36..40].copy_from_slice(&sum.to_be_bytes());
        store.write_all_at(self.header_offset, &header)?;
        // The footer that gives the larger size comes after.
        store.sync()?;
        std::mem::swap(&mut meta.bat, &mut bat);
        meta.table_offset = at;
        meta.free = at + table_bytes;
        meta.clean = false;
        Ok(())
    }

    fn status(&self, offset: u64, end: u64) -> Vec<Extent> {
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < end && out.len() < MAX_EXTENTS {
            let n = (self.block_size - at % self.block_size).min(end - at);
            let ext = match self.locate(at) {
                Some(host) => Extent {
                    offset: at,
                    length: n,
                    flags: extent_flags::DATA
                        | extent_flags::ALLOCATED
                        | extent_flags::OFFSET_VALID,
                    store: 0,
                    host_offset: host,
                },
                None => Extent {
                    offset: at,
                    length: n,
                    flags: extent_flags::ZERO | extent_flags::ALLOCATED,
                    store: 0,
                    host_offset: 0,
                },
            };
            push_merged(&mut out, ext);
            at += n;
        }
        out
    }
}

/// Appends `ext` to `out`, extending the last extent when it continues it
/// (same flags, and contiguous in the file where the offset counts).
fn push_merged(out: &mut Vec<Extent>, ext: Extent) {
    match out.last_mut() {
        Some(last)
            if last.flags == ext.flags
                && (!ext.has(extent_flags::OFFSET_VALID)
                    || last.host_offset + last.length == ext.host_offset) =>
        {
            last.length += ext.length
        }
        _ => out.push(ext),
    }
}

impl ImageImpl for VpcImage {
    fn virtual_size(&self) -> u64 {
        self.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), DriverError> {
        let inside = (buf.len() as u64).min(self.size().saturating_sub(offset)) as usize;
        buf[inside..].fill(0);
        let Some(d) = self.dynamic.as_ref().filter(|_| !self.passthrough) else {
            return self.store.read_or_zero_at(offset, &mut buf[..inside]);
        };
        let mut done = 0usize;
        while done < inside {
            let at = offset + done as u64;
            let n = ((d.block_size - at % d.block_size) as usize).min(inside - done);
            let part = &mut buf[done..done + n];
            match &self.parent {
                Some(parent) => self.read_differencing(d, parent, at, part)?,
                None => match d.locate(at) {
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
        let Some(d) = self.dynamic.as_ref().filter(|_| !self.passthrough) else {
            self.check_fixed(offset, buf.len() as u64)?;
            return self.store.write_all_at(offset, buf);
        };
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let n = ((d.block_size - at % d.block_size) as usize).min(buf.len() - done);
            d.write_in_block(&self.store, at, &buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: u32,
    ) -> std::result::Result<(), DriverError> {
        self.check_write(offset, len)?;
        let Some(d) = self.dynamic.as_ref().filter(|_| !self.passthrough) else {
            self.check_fixed(offset, len)?;
            return self
                .store
                .zero_range(offset, len, flags & zero_flags::MAY_UNMAP != 0);
        };
        // Blocks not allocated read as zeros already; in allocated ones the
        // file's range is zeroed (a hole where unmapping is allowed), after
        // the block's bitmap is set as for any write.
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let n = (d.block_size - at % d.block_size).min(end - at);
            if d.locate(at).is_some() {
                let placed = d.place(&self.store, at / d.block_size)?;
                let data = placed.offset + d.bitmap_size + at % d.block_size;
                self.store
                    .zero_range(data, n, flags & zero_flags::MAY_UNMAP != 0)?;
                if placed.write_bitmap {
                    self.store
                        .write_all_at(placed.offset, &vec![0xff; d.bitmap_size as usize])?;
                }
            }
            at += n;
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> std::result::Result<Vec<Extent>, DriverError> {
        let len = len.min(self.size().saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        match self.dynamic.as_ref().filter(|_| !self.passthrough) {
            Some(d) if self.parent.is_some() => {
                Ok(self.status_differencing(d, offset, offset + len)?)
            }
            Some(d) => Ok(d.status(offset, offset + len)),
            None => Ok(self.status_fixed(offset, len)?),
        }
    }

    fn flush(&self) -> std::result::Result<(), DriverError> {
        Ok(self.flush_all()?)
    }

    fn info(&self) -> std::result::Result<ImageInfo, DriverError> {
        Ok(ImageInfo {
            cluster_size: self
                .dynamic
                .as_ref()
                .filter(|_| !self.passthrough)
                .map(|d| d.block_size),
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

    fn reserve(&self, offset: u64, len: u64) -> std::result::Result<bool, DriverError> {
        let Some(d) = self.dynamic.as_ref().filter(|_| !self.passthrough) else {
            return Ok(false);
        };
        self.check_write(offset, len)?;
        d.reserve(offset, offset + len)?;
        Ok(true)
    }

    fn close(&self) -> std::result::Result<(), DriverError> {
        if let Some(d) = &self.dynamic {
            d.release();
        }
        Ok(self.flush_all()?)
    }
}
