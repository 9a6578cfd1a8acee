//! An open VDI image: reads, writes, allocation status, flush and `info`.
//!
//! Allocation is crash-safe: a new block's data is written first and its
//! block map entry set in memory only afterwards; at flush the data is
//! made durable, then the header's allocated-block count (the index of the
//! next free block), then the block map entries naming the new blocks. A
//! kill at any point leaves at worst a block counted but unreferenced,
//! never one handed out twice.
//!
//! A differencing image (VirtualBox's snapshots; qemu-img refuses them)
//! opens when its parent is named the way qemu names a node's backing
//! image, `backing.file.filename=PARENT` (`--image-opts` or `json:`):
//! VirtualBox links the two by UUID only and keeps the parent's file name
//! in its `.vbox` file. The parent must carry the image UUID the child
//! links to. An unallocated block reads from it; a block's first write
//! fills the rest of the block from it.

use crate::blockmap::BlockMap;
use crate::error::{Result, VdiError};
use crate::header::{
    self, is_allocated, Header, BLOCKS_ALLOCATED_AT, BLOCK_SIZE, DISK_SIZE_AT, HEADER_SIZE,
    IMAGE_UUID_AT, MAX_BLOCKS, MAX_DISK_SIZE, SECTOR, TYPE_STATIC, UNALLOCATED,
};
use qimg_driver_api::schema::{CheckReport, CheckRequest, ImageInfo, Repair};
use qimg_driver_api::{
    extent_flags as ef, open_flags, zero_flags, ByteStoreBox, DriverError, Extent, HostExt,
    HostServicesBox, ImageImpl, Prealloc,
};
use qimg_driver_util::parent::Parent;
use qimg_driver_util::{read_or_zero, write_all};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Most extents one `block_status` call answers.
const MAX_EXTENTS: usize = 1024;

/// What changes while the image is open.
struct State {
    bmap: BlockMap,
    /// Index of the next free data block (the header's allocated count).
    next_free: u32,
    /// `next_free` changed since the header was last written.
    count_dirty: bool,
    /// Blocks given a data block ahead of their first write
    /// ([`ImageImpl::reserve`]), by guest block.
    reserved: HashMap<u32, u32>,
    /// Guest blocks whose first write is under way: their data block is
    /// being filled and their entry is not set yet.
    busy: HashSet<u32>,
}

/// An open image.
pub struct VdiImage {
    store: ByteStoreBox,
    header: Header,
    /// Guest size (grows with `resize`).
    size: AtomicU64,
    writable: bool,
    /// Why writes are refused although the image was opened for writing.
    unwritable: Option<&'static str>,
    state: Mutex<State>,
    /// Signalled when a block leaves `busy`.
    settled: Condvar,
    /// A differencing image's parent.
    parent: Option<Parent>,
}

/// Where one guest block stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    /// Not allocated (or discarded): reads as zeros.
    Zero,
    /// Not allocated in a differencing image: reads from the parent.
    Parent,
    /// Stored at this byte offset of the file.
    At(u64),
}

impl VdiImage {
    /// Opens the image in `store`.
    pub fn open(store: ByteStoreBox, host: &HostServicesBox, flags: u32) -> Result<VdiImage> {
        let writable = flags & open_flags::WRITE != 0;
        let mut head = [0u8; HEADER_SIZE];
        read_or_zero(&store, 0, &mut head)?;
        // Only a differencing image asks for its parent's name: for any
        // other, the option is refused as qemu-img refuses it.
        let parent_name = if header::has_parent(&head) {
            host.option("backing.file.filename")
        } else {
            None
        };
        let header = Header::parse(&head, parent_name.is_some())?;
        let parent = match parent_name {
            Some(name) => Some(open_parent(host, &header, name, flags)?),
            None => None,
        };
        let file_len = store.len().into_result()?;
        let bmap = BlockMap::load(&store, &header, file_len)?;
        // A count below what the map references would hand a block out
        // twice: allocate past both.
        let next_free = u64::from(header.blocks_allocated)
            .max(bmap.blocks_referenced())
            .min(u64::from(u32::MAX)) as u32;
        let unwritable = unwritable(&header, &bmap);
        Ok(VdiImage {
            store,
            size: AtomicU64::new(header.disk_size),
            header,
            writable,
            unwritable,
            state: Mutex::new(State {
                bmap,
                next_free,
                count_dirty: false,
                reserved: HashMap::new(),
                busy: HashSet::new(),
            }),
            settled: Condvar::new(),
            parent,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn locate(&self, st: &State, block: u32) -> Block {
        let entry = st.bmap.get(block);
        if is_allocated(entry) {
            Block::At(self.header.block_offset(entry))
        } else if entry == UNALLOCATED && self.parent.is_some() {
            Block::Parent
        } else {
            Block::Zero
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(VdiError::ReadOnly);
        }
        if let Some(why) = self.unwritable {
            return Err(VdiError::Unwritable(why));
        }
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(VdiError::OutOfRange(offset, len, size)),
        }
    }

    /// Calls `f(block, offset within the block, piece)` for each block
    /// piece of `[offset, offset + len)`; `at` is the piece's position in
    /// the request.
    fn pieces(
        offset: u64,
        len: u64,
        mut f: impl FnMut(u32, u64, u64, usize) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            let within = at % BLOCK_SIZE;
            let n = (BLOCK_SIZE - within).min(len - done);
            f((at / BLOCK_SIZE) as u32, within, n, done as usize)?;
            done += n;
        }
        Ok(())
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let inside = (self.size().saturating_sub(offset) as usize).min(buf.len());
        buf[inside..].fill(0);
        Self::pieces(offset, inside as u64, |block, within, n, at| {
            let piece = &mut buf[at..at + n as usize];
            let loc = self.locate(&self.lock(), block);
            match (loc, &self.parent) {
                (Block::At(host), _) => read_or_zero(&self.store, host + within, piece)?,
                (Block::Parent, Some(parent)) => parent.read(at as u64 + offset, piece)?,
                _ => piece.fill(0),
            }
            Ok(())
        })
    }

    fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check_write(offset, buf.len() as u64)?;
        Self::pieces(offset, buf.len() as u64, |block, within, n, at| {
            self.write_piece(block, within, &buf[at..at + n as usize])
        })
    }

    /// Writes `data` at `within` of guest block `block`, allocating the
    /// block on its first write: the whole block is written (zeros around
    /// the data), as qemu-img writes it, before its entry is set.
    fn write_piece(&self, block: u32, within: u64, data: &[u8]) -> Result<()> {
        let mut st = self.lock();
        let from_parent = self.locate(&st, block) == Block::Parent;
        let index = loop {
            if let Block::At(host) = self.locate(&st, block) {
                drop(st);
                return Ok(write_all(&self.store, host + within, data)?);
            }
            if !st.busy.contains(&block) {
                break match st.reserved.remove(&block) {
                    Some(index) => index,
                    None => allocate(&mut st)?,
                };
            }
            st = self.settled.wait(st).unwrap_or_else(|e| e.into_inner());
        };
        st.busy.insert(block);
        drop(st);
        let host = self.header.block_offset(index);
        let written = if within == 0 && data.len() as u64 == BLOCK_SIZE {
            write_all(&self.store, host, data)
        } else {
            let mut whole = vec![0u8; BLOCK_SIZE as usize];
            let filled = match (&self.parent, from_parent) {
                (Some(parent), true) => parent.read(u64::from(block) * BLOCK_SIZE, &mut whole),
                _ => Ok(()),
            };
            whole[within as usize..within as usize + data.len()].copy_from_slice(data);
            filled.and_then(|()| write_all(&self.store, host, &whole))
        };
        let mut st = self.lock();
        st.busy.remove(&block);
        if written.is_ok() {
            st.bmap.set(block, index);
        }
        drop(st);
        self.settled.notify_all();
        Ok(written?)
    }

    fn zero(&self, offset: u64, len: u64, flags: u32) -> Result<()> {
        self.check_write(offset, len)?;
        Self::pieces(offset, len, |block, within, n, _| {
            let loc = self.locate(&self.lock(), block);
            match loc {
                // Unallocated blocks read as zeros already.
                Block::Zero => Ok(()),
                // Over a parent, zeros must be written.
                Block::Parent if flags & zero_flags::NO_FALLBACK != 0 => Err(VdiError::Host(
                    DriverError::unsupported("vdi cannot mark blocks as zero"),
                )),
                Block::Parent => self.write_piece(block, within, &vec![0u8; n as usize]),
                Block::At(_) if flags & zero_flags::NO_FALLBACK != 0 => Err(VdiError::Host(
                    DriverError::unsupported("vdi cannot mark blocks as zero"),
                )),
                Block::At(host) => Ok(self
                    .store
                    .write_zeroes(host + within, n, false)
                    .into_result()?),
            }
        })
    }

    fn reserve_range(&self, offset: u64, len: u64) -> Result<bool> {
        if !self.writable || self.unwritable.is_some() {
            return Ok(false);
        }
        if len == 0 {
            return Ok(true);
        }
        self.check_write(offset, len)?;
        let mut st = self.lock();
        let first = (offset / BLOCK_SIZE) as u32;
        let last = ((offset + len - 1) / BLOCK_SIZE) as u32;
        for block in first..=last {
            if self.locate(&st, block) == Block::Zero
                && !st.reserved.contains_key(&block)
                && !st.busy.contains(&block)
            {
                let index = allocate(&mut st)?;
                st.reserved.insert(block, index);
            }
        }
        Ok(true)
    }

    /// Allocation status from `offset`, block by block: unallocated blocks,
    /// and allocated blocks refined by what the file holds there in a static
    /// image only (a hole in it reads as zeros): qemu-img asks the file
    /// about a static image's blocks, never about a dynamic one's.
    fn status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size());
        let file_len = self.store.len().into_result()?;
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < end && out.len() < MAX_EXTENTS {
            let block = (at / BLOCK_SIZE) as u32;
            let within = at % BLOCK_SIZE;
            let n = (BLOCK_SIZE - within).min(end - at);
            let loc = self.locate(&self.lock(), block);
            let ext = match loc {
                // The parent decides.
                Block::Parent => Extent {
                    offset: at,
                    length: n,
                    flags: 0,
                    store: 0,
                    host_offset: 0,
                },
                Block::Zero => Extent {
                    offset: at,
                    length: n,
                    flags: ef::ZERO | ef::ALLOCATED,
                    store: 0,
                    host_offset: 0,
                },
                Block::At(base) => {
                    let host = base + within;
                    let mut ext = Extent {
                        offset: at,
                        length: n,
                        flags: ef::DATA | ef::ALLOCATED | ef::OFFSET_VALID,
                        store: 0,
                        host_offset: host,
                    };
                    // Past the end of the file the block reads as zeros.
                    if self.header.image_type == TYPE_STATIC {
                        if host >= file_len {
                            ext.flags |= ef::ZERO;
                        } else {
                            let run = self
                                .store
                                .run_at(host, n.min(file_len - host))
                                .into_result()?;
                            ext.length = run.length.clamp(1, n);
                            if !run.data {
                                ext.flags |= ef::ZERO;
                                // A hole that runs to the end of the file
                                // and what lies past it are one run.
                                if host + ext.length >= file_len {
                                    ext.length = n;
                                }
                            }
                        }
                    }
                    ext
                }
            };
            // One extent per block at most, as qemu-img's vdi answers:
            // `compare -p` moves block by block (map joins them again).
            at += ext.length;
            out.push(ext);
        }
        Ok(out)
    }

    /// Writes what allocation changed: the data first, then the header's
    /// count and the block map entries, in one write where the map follows
    /// the header closely enough (else the count, then the entries, each
    /// made durable before the next).
    fn do_flush(&self) -> Result<()> {
        self.flush_locked(&mut self.lock())
    }

    fn flush_locked(&self, st: &mut State) -> Result<()> {
        self.store.flush().into_result()?;
        if !st.count_dirty && !st.bmap.is_dirty() {
            return Ok(());
        }
        if let Some((at, bytes)) =
            st.bmap
                .span_with_count(&self.store, &self.header, st.next_free)?
        {
            write_all(&self.store, at, &bytes)?;
            st.bmap.written();
            st.count_dirty = false;
            return Ok(self.store.flush().into_result()?);
        }
        if st.count_dirty {
            write_all(
                &self.store,
                BLOCKS_ALLOCATED_AT,
                &st.next_free.to_le_bytes(),
            )?;
            self.store.flush().into_result()?;
            st.count_dirty = false;
        }
        st.bmap.write_dirty(&self.store, &self.header)?;
        Ok(self.store.flush().into_result()?)
    }

    /// Settles reservations never written: given back when they are the
    /// last blocks handed out, otherwise filled with zeros and mapped, so
    /// the count matches the map.
    fn release_reservations(&self) -> Result<()> {
        let leftover: Vec<(u32, u32)> = {
            let mut st = self.lock();
            let mut left: Vec<(u32, u32)> = st.reserved.drain().collect();
            left.sort_by_key(|&(_, index)| std::cmp::Reverse(index));
            while let Some(&(_, index)) = left.first() {
                if index + 1 != st.next_free {
                    break;
                }
                st.next_free = index;
                st.count_dirty = true;
                left.remove(0);
            }
            st.reserved.extend(left.iter().copied());
            left
        };
        for (block, _) in leftover {
            self.write_piece(block, 0, &[])?;
        }
        Ok(())
    }

    /// Grows the image to `new_size` (rounded up to a sector): the block
    /// map gains entries where its space allows (unallocated ones, or for a
    /// static image new blocks at the end of the file), written before the
    /// header that counts them. qemu-img resizes no vdi image; shrinking is
    /// refused with its message.
    fn grow(&self, new_size: u64) -> Result<()> {
        if !self.writable {
            return Err(VdiError::ReadOnly);
        }
        if let Some(why) = self.unwritable {
            return Err(VdiError::Unwritable(why));
        }
        let new_size = new_size.next_multiple_of(SECTOR);
        let old_size = self.size();
        if new_size < old_size {
            return Err(VdiError::CannotShrink);
        }
        if new_size > MAX_DISK_SIZE {
            return Err(VdiError::SizeTooLarge(new_size, MAX_DISK_SIZE));
        }
        self.release_reservations()?;
        let mut st = self.lock();
        self.flush_locked(&mut st)?;
        let h = &self.header;
        let old_blocks = st.bmap.len();
        let new_blocks = new_size.div_ceil(BLOCK_SIZE) as u32;
        if new_blocks > old_blocks {
            let map_start = u64::from(h.offset_bmap);
            let room = u64::from(h.offset_data).saturating_sub(map_start) / 4;
            if u64::from(new_blocks) > room {
                return Err(VdiError::MapFull(
                    room.min(u64::from(MAX_BLOCKS)) * BLOCK_SIZE,
                ));
            }
            let added = new_blocks - old_blocks;
            let entries: Vec<u32> = if h.image_type == TYPE_STATIC {
                if u64::from(st.next_free) + u64::from(added) > u64::from(new_blocks) {
                    return Err(VdiError::Full);
                }
                let end = h.block_offset(st.next_free + added);
                if end > self.store.len().into_result()? {
                    self.store.set_len(end, Prealloc::OFF).into_result()?;
                }
                (st.next_free..st.next_free + added).collect()
            } else {
                vec![UNALLOCATED; added as usize]
            };
            let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            write_all(&self.store, map_start + u64::from(old_blocks) * 4, &bytes)?;
            self.store.flush().into_result()?;
            st.bmap.extend(&entries);
            if h.image_type == TYPE_STATIC {
                st.next_free += added;
            }
        }
        // What lay past the old end of the last block reads as zeros.
        let tail_end = new_size.min(old_size.next_multiple_of(BLOCK_SIZE));
        if tail_end > old_size {
            if let Block::At(host) = self.locate(&st, (old_size / BLOCK_SIZE) as u32) {
                let within = old_size % BLOCK_SIZE;
                self.store
                    .write_zeroes(host + within, tail_end - old_size, false)
                    .into_result()?;
            }
        }
        // Disk size, block count and (when growing a static image made
        // blocks) allocated count, in one write. The count is otherwise
        // left as it is: where a damaged map names a block past the data
        // area, the count allocation goes by is not the one to record.
        let mut fields = [0u8; 24];
        read_or_zero(&self.store, DISK_SIZE_AT, &mut fields)?;
        fields[..8].copy_from_slice(&new_size.to_le_bytes());
        fields[8..12].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        fields[16..20].copy_from_slice(&st.bmap.len().to_le_bytes());
        if h.image_type == TYPE_STATIC && new_blocks > old_blocks {
            fields[20..24].copy_from_slice(&st.next_free.to_le_bytes());
        }
        write_all(&self.store, DISK_SIZE_AT, &fields)?;
        st.count_dirty = false;
        self.store.flush().into_result()?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }

    /// The block map and header, for `check`.
    fn check_report(&self) -> CheckReport {
        let st = self.lock();
        crate::check::check(&self.header, &st.bmap)
    }
}

/// Opens `name` as the parent of the differencing image `header`
/// describes: it must carry the image UUID the child links to.
fn open_parent(
    host: &HostServicesBox,
    header: &Header,
    name: String,
    flags: u32,
) -> Result<Parent> {
    if flags & open_flags::NO_BACKING != 0 {
        return Ok(Parent::new(name, None));
    }
    // The name is the user's, relative to the working directory (as the
    // host takes it for the backing image), not to the child's.
    let path = match std::env::current_dir() {
        Ok(dir) if !name.starts_with('/') => dir.join(&name).to_string_lossy().into_owned(),
        _ => name.clone(),
    };
    let store = host.related(&path, false, false)?;
    let mut head = [0u8; HEADER_SIZE];
    read_or_zero(&store, 0, &mut head)?;
    if header::uuid_at(&head, IMAGE_UUID_AT) != header.link_uuid {
        return Err(VdiError::ParentMismatch(name));
    }
    let image = host.backing(&name, Some("vdi"))?;
    Ok(Parent::new(name, Some(image)))
}

/// Hands out the next free data block.
fn allocate(st: &mut State) -> Result<u32> {
    let index = st.next_free;
    if index >= st.bmap.len() {
        return Err(VdiError::Full);
    }
    st.next_free += 1;
    st.count_dirty = true;
    Ok(index)
}

/// Why writes to the image could damage its tables, if they could: a map
/// running past the end of the file (its missing entries all name block 0),
/// or tables that overlap each other or the data. Such images are read as
/// qemu-img reads them, and checked, but not written.
fn unwritable(header: &Header, bmap: &BlockMap) -> Option<&'static str> {
    if !bmap.complete() {
        return Some("the block map runs past the end of the file");
    }
    let map_start = u64::from(header.offset_bmap);
    let map_end = map_start + header.bmap_bytes();
    let data_start = u64::from(header.offset_data);
    let data_end = header.block_offset(header.blocks_in_image);
    let header_end = HEADER_SIZE as u64;
    if map_start < header_end || data_start < header_end {
        return Some("a table overlaps the header");
    }
    if map_end > data_start && map_start < data_end {
        return Some("the block map overlaps the data area");
    }
    None
}

impl Drop for VdiImage {
    /// Writes the block map a writer forgot to flush.
    fn drop(&mut self) {
        if self.writable {
            let _ = self.do_flush();
        }
    }
}

impl ImageImpl for VdiImage {
    fn virtual_size(&self) -> u64 {
        self.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), DriverError> {
        Ok(self.read(offset, buf)?)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> std::result::Result<(), DriverError> {
        Ok(self.write(offset, buf)?)
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: u32,
    ) -> std::result::Result<(), DriverError> {
        Ok(self.zero(offset, len, flags)?)
    }

    fn block_status(&self, offset: u64, len: u64) -> std::result::Result<Vec<Extent>, DriverError> {
        Ok(self.status(offset, len)?)
    }

    fn flush(&self) -> std::result::Result<(), DriverError> {
        Ok(self.do_flush()?)
    }

    fn info(&self) -> std::result::Result<ImageInfo, DriverError> {
        Ok(ImageInfo {
            cluster_size: Some(BLOCK_SIZE),
            dirty_flag: Some(false),
            backing_filename: self.parent.as_ref().map(|p| p.name.clone()),
            ..ImageInfo::default()
        })
    }

    fn store_name(&self, _index: u32) -> String {
        self.store.name().into()
    }

    fn check(&self, request: CheckRequest) -> std::result::Result<CheckReport, DriverError> {
        // qemu-img cannot repair a vdi: any -r is answered as if the format
        // could not be checked at all (exit 63).
        if request.repair != Repair::None {
            return Err(DriverError::unsupported(
                "This image format does not support checks",
            ));
        }
        Ok(self.check_report())
    }

    fn resize(
        &self,
        new_size: u64,
        _prealloc: Prealloc,
        _shrink: bool,
    ) -> std::result::Result<(), DriverError> {
        Ok(self.grow(new_size)?)
    }

    fn reserve(&self, offset: u64, len: u64) -> std::result::Result<bool, DriverError> {
        Ok(self.reserve_range(offset, len)?)
    }

    fn close(&self) -> std::result::Result<(), DriverError> {
        if self.writable {
            self.release_reservations()?;
        }
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::VdiImage;
    use qimg_driver_api::schema::{CheckRequest, CreateRequest};
    use qimg_driver_api::{open_flags, ImageImpl};
    use qimg_driver_util::memfile::MemFile;
    use qimg_driver_util::nohost::no_host;

    /// A 4 MiB dynamic image with two blocks written.
    fn image() -> MemFile {
        let file = MemFile::default();
        let request = CreateRequest {
            size: 4 << 20,
            ..CreateRequest::default()
        };
        crate::create::create(&file.store("t.vdi"), &request).unwrap();
        let image = VdiImage::open(file.store("t.vdi"), &no_host(), open_flags::WRITE).unwrap();
        image.write_at(3 << 20, &[1u8; 4096]).unwrap();
        image.write_at(0, &[2u8; 65536]).unwrap();
        image.close().unwrap();
        file
    }

    /// A small deterministic generator for the mutations below.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn blocks_are_allocated_in_write_order_and_read_back() {
        let file = image();
        let bytes = file.bytes();
        // Block 3 got data block 0, block 0 data block 1; the count is 2.
        let entry =
            |i: usize| u32::from_le_bytes(bytes[512 + 4 * i..516 + 4 * i].try_into().unwrap());
        assert_eq!((entry(0), entry(1), entry(3)), (1, u32::MAX, 0));
        assert_eq!(&bytes[0x184..0x188], &2u32.to_le_bytes());
        let image = VdiImage::open(file.store("t.vdi"), &no_host(), 0).unwrap();
        let mut buf = vec![0u8; 8192];
        image.read_at((3 << 20) - 4096, &mut buf).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0) && buf[4096..].iter().all(|&b| b == 1));
        let report = image.check(CheckRequest::default()).unwrap();
        assert_eq!(report.corruptions, 0, "{:?}", report.messages);
    }

    #[test]
    fn mutated_images_give_errors_never_panics() {
        let base = image().bytes();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..600 {
            let mut bytes = base.clone();
            for _ in 0..1 + xorshift(&mut seed) % 4 {
                // Mostly the header and the map, sometimes anywhere.
                let span = if xorshift(&mut seed).is_multiple_of(4) {
                    bytes.len()
                } else {
                    1024
                };
                let at = (xorshift(&mut seed) % span as u64) as usize;
                bytes[at] = xorshift(&mut seed) as u8;
            }
            if xorshift(&mut seed).is_multiple_of(8) {
                bytes.truncate((xorshift(&mut seed) % bytes.len() as u64) as usize);
            }
            let file = MemFile::default();
            *file.0.lock().unwrap() = bytes;
            for flags in [0, open_flags::WRITE] {
                let Ok(image) = VdiImage::open(file.store("t.vdi"), &no_host(), flags) else {
                    continue;
                };
                let size = image.virtual_size();
                let _ = image.block_status(0, size);
                let mut buf = vec![0u8; 4096];
                let _ = image.read_at(size.saturating_sub(2048), &mut buf);
                let _ = image.check(CheckRequest::default());
                // The in-memory file holds what is written: only images
                // whose next block lies near their start are written to.
                let next = image.header.block_offset(image.lock().next_free);
                if next < 64 << 20 {
                    let _ = image.write_at(size / 2, &[7u8; 512]);
                    let _ = image.resize(size + (1 << 20), qimg_driver_api::Prealloc::OFF, false);
                }
                let _ = image.close();
            }
        }
    }
}
