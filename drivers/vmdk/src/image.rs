//! An open VMDK disk: its descriptor, its extents laid end to end, and its
//! parent; reads, writes, allocation status and `info`.

use crate::descriptor::{self, Access, ExtentType};
use crate::error::{Result, VmdkError};
use crate::extent::{open_sparse, Extent, ExtentData};
use crate::header::{CowdHeader, SparseHeader, SECTOR};
use crate::sparse::{GrainLoc, SparseExtent};
use crate::stream;
use qimg_driver_api::schema::{CheckReport, CheckRequest, ChildFile, ImageInfo, Repair};
use qimg_driver_api::{
    extent_flags as ef, open_flags, related_kind, zero_flags, BackingBox, ByteStoreBox,
    DriverError, Extent as Status, HostServicesBox, ImageImpl, Prealloc,
};
use qimg_driver_util::{read_or_zero, write_all};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Largest descriptor file read: real ones are a few hundred bytes.
const MAX_DESCRIPTOR: u64 = 1 << 20;
/// Most extents a disk may have (a 16 TiB disk of 2 GiB extents has 8192).
const MAX_EXTENTS: usize = 8192;
/// Writes of in-order output gathered before they go to the file.
const MAX_PENDING: usize = 4 << 20;
/// Sectors of descriptor looked for after an ESX Server sparse header.
const EMBEDDED_DESCRIPTOR_SECTORS: u64 = 20;

/// Where the descriptor lives, for rewriting it when the CID changes.
enum DescriptorPlace {
    /// Inside the sparse extent of extent 0, at this byte offset, with room
    /// for this many bytes.
    Embedded { offset: u64, room: u64 },
    /// In the image's own file.
    File,
    /// Nowhere it may be rewritten (an ESX Server sparse extent opened by
    /// itself).
    None,
}

/// The descriptor's mutable state.
struct DescriptorState {
    text: String,
    cid: u32,
    /// The CID has been changed since the disk was opened (it changes once,
    /// at the first write, so a child can tell its parent was modified).
    cid_updated: bool,
}

/// An open disk.
pub struct VmdkImage {
    own: Arc<ByteStoreBox>,
    extents: Vec<Extent>,
    size: AtomicU64,
    place: DescriptorPlace,
    descriptor: Mutex<DescriptorState>,
    parent_cid: u32,
    create_type: Option<String>,
    parent_hint: Option<String>,
    backing: Option<BackingBox>,
    writable: bool,
    /// Output written in order through `write_prepared`, not yet in the file.
    pending: Mutex<Option<(u64, Vec<u8>)>>,
}

/// Reads the text of a descriptor: up to its first NUL byte.
fn descriptor_text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A new content ID: qemu-img draws one at random for each new disk and at
/// the first write after opening.
pub fn random_cid() -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

impl VmdkImage {
    /// Opens the disk in `store`: a monolithic sparse extent with its
    /// descriptor embedded, an ESX Server sparse extent, or a descriptor file
    /// naming its extents.
    pub fn open(store: ByteStoreBox, host: &HostServicesBox, flags: u32) -> Result<VmdkImage> {
        let writable = flags & open_flags::WRITE != 0;
        let own = Arc::new(store);
        let name = own.name().to_string();
        if own.len().into_result()? == 0 {
            return Err(VmdkError::TooSmall);
        }
        let mut head = vec![0u8; SECTOR as usize];
        read_or_zero(&own, 0, &mut head)?;
        let wrapper = SparseHeader::parse(&head)
            .filter(|h| h.capacity == 0 && h.descriptor_offset != 0)
            .map(|h| h.descriptor_offset.saturating_mul(SECTOR));
        let (extents, place, text, kind) = if let Some(at) = wrapper {
            // A sparse header with no capacity wraps a descriptor file at
            // its descriptor offset, as qemu reads it (so an empty
            // monolithicSparse disk is refused, as by qemu-img).
            let (extents, place, text) =
                Self::open_descriptor_file(&own, &name, host, writable, at)?;
            (extents, place, text, None)
        } else if let Some(header) = SparseHeader::parse(&head) {
            // The type of a disk that is one sparse file is its extent's,
            // whatever the embedded descriptor says (as qemu-img reports it).
            let kind = if header.compressed() {
                "streamOptimized"
            } else {
                "monolithicSparse"
            };
            let (extents, place, text) = Self::open_monolithic(&own, &name, header, writable)?;
            (extents, place, text, Some(kind.to_string()))
        } else if CowdHeader::parse(&head).is_some() {
            let sparse = open_sparse(own.clone(), writable)?;
            let len = sparse.capacity * SECTOR;
            let extent = Extent {
                start: 0,
                len: AtomicU64::new(len),
                access: Access::ReadWrite,
                type_word: String::new(),
                store: Some(own.clone()),
                name: name.clone(),
                data: ExtentData::Sparse(Box::new(sparse)),
            };
            // Like qemu-img, look for a descriptor in the sectors after the
            // header (there is none in an ESX Server sparse extent, so
            // opening one by itself fails on its missing content IDs).
            let mut bytes = vec![0u8; (EMBEDDED_DESCRIPTOR_SECTORS * SECTOR) as usize];
            read_or_zero(&own, SECTOR, &mut bytes)?;
            (
                vec![extent],
                DescriptorPlace::None,
                descriptor_text(&bytes),
                None,
            )
        } else {
            let (extents, place, text) =
                Self::open_descriptor_file(&own, &name, host, writable, 0)?;
            (extents, place, text, None)
        };
        let (cid, parent_cid, parent_hint) = descriptor::parse_fields(&text, &name)?;
        let create_type = kind.or_else(|| descriptor::quoted_value(&text, "createType"));
        let mut total = 0u64;
        for e in &extents {
            total = total
                .checked_add(e.len())
                .filter(|t| *t <= i64::MAX as u64)
                .ok_or(VmdkError::TotalTooLarge)?;
        }
        let backing = match &parent_hint {
            Some(hint) if flags & open_flags::NO_BACKING == 0 => Some(
                host.open_backing(
                    hint.as_str().into(),
                    qimg_driver_api::abi_stable::std_types::ROption::RSome("vmdk".into()),
                )
                .into_result()?,
            ),
            _ => None,
        };
        Ok(VmdkImage {
            own,
            extents,
            size: AtomicU64::new(total),
            place,
            descriptor: Mutex::new(DescriptorState {
                text,
                cid,
                cid_updated: false,
            }),
            parent_cid,
            create_type,
            parent_hint,
            backing,
            writable,
            pending: Mutex::new(None),
        })
    }

    fn open_monolithic(
        own: &Arc<ByteStoreBox>,
        name: &str,
        header: SparseHeader,
        writable: bool,
    ) -> Result<(Vec<Extent>, DescriptorPlace, String)> {
        // qemu reads (and rewrites) an embedded descriptor at sector 1,
        // whatever the header's offset field says; it reads 20 sectors of
        // it, and qimg writes no more than the header's size field allows,
        // nor past the first table or grain the header places after it (a
        // damaged size must not make a new CID zero the grains).
        let offset = SECTOR;
        let first_table = [header.overhead, header.gd_offset, header.rgd_offset]
            .into_iter()
            .filter(|&sector| sector > 1)
            .min()
            .unwrap_or(1);
        let room = header
            .descriptor_size
            .saturating_mul(SECTOR)
            .min(MAX_DESCRIPTOR)
            .min((first_table - 1).saturating_mul(SECTOR));
        let mut bytes = vec![0u8; room.max(EMBEDDED_DESCRIPTOR_SECTORS * SECTOR) as usize];
        read_or_zero(own, offset, &mut bytes)?;
        let text = descriptor_text(&bytes);
        let sparse = SparseExtent::open_hosted(own.clone(), header, writable)?;
        let extent = Extent {
            start: 0,
            len: AtomicU64::new(sparse.capacity.saturating_mul(SECTOR)),
            access: Access::ReadWrite,
            type_word: String::new(),
            store: Some(own.clone()),
            name: name.to_string(),
            data: ExtentData::Sparse(Box::new(sparse)),
        };
        Ok((
            vec![extent],
            DescriptorPlace::Embedded { offset, room },
            text,
        ))
    }

    /// Opens the extents the descriptor at byte `at` of `own` names.
    fn open_descriptor_file(
        own: &Arc<ByteStoreBox>,
        name: &str,
        host: &HostServicesBox,
        writable: bool,
        at: u64,
    ) -> Result<(Vec<Extent>, DescriptorPlace, String)> {
        // As qemu: at most a MiB (less a byte) is the descriptor; a larger
        // file that is no descriptor fails as one.
        let len = own.len().into_result()?.min(MAX_DESCRIPTOR - 1);
        let mut bytes = vec![0u8; len as usize];
        read_or_zero(own, at, &mut bytes)?;
        let text = descriptor_text(&bytes);
        let desc = descriptor::parse_file(&text, name)?;
        if desc.extents.len() > MAX_EXTENTS {
            return Err(VmdkError::InvalidDescriptor);
        }
        let mut extents = Vec::with_capacity(desc.extents.len());
        let mut start = 0u64;
        for line in &desc.extents {
            // The line's size (a sparse extent's comes from its header).
            let line_len = || {
                line.sectors
                    .checked_mul(SECTOR)
                    .ok_or(VmdkError::TotalTooLarge)
            };
            let len;
            let rw = writable && line.access == Access::ReadWrite;
            let (store, data) = match line.kind {
                ExtentType::Zero => {
                    len = line_len()?;
                    (None, ExtentData::Zero)
                }
                kind => {
                    let flat = matches!(kind, ExtentType::Flat | ExtentType::Vmfs);
                    let held = if flat {
                        related_kind::DATA
                    } else {
                        related_kind::METADATA
                    };
                    let store = Arc::new(
                        host.open_related_as(line.file.as_str().into(), rw, false, held)
                            .into_result()?,
                    );
                    let data = if flat {
                        len = line_len()?;
                        ExtentData::Flat {
                            offset: line
                                .offset
                                .checked_mul(SECTOR)
                                .ok_or(VmdkError::TotalTooLarge)?,
                        }
                    } else {
                        // A sparse extent is as long as its header says,
                        // whatever the descriptor's line says (as in qemu).
                        let sparse = open_sparse(store.clone(), rw)?;
                        if sparse.capacity == 0 {
                            return Err(VmdkError::InvalidDescriptor);
                        }
                        len = sparse.capacity.saturating_mul(SECTOR);
                        ExtentData::Sparse(Box::new(sparse))
                    };
                    (Some(store), data)
                }
            };
            let name = store
                .as_ref()
                .map(|s| s.name().to_string())
                .unwrap_or_default();
            extents.push(Extent {
                start,
                len: AtomicU64::new(len),
                access: line.access,
                type_word: line.kind.word().to_string(),
                store,
                name,
                data,
            });
            start = start.checked_add(len).ok_or(VmdkError::TotalTooLarge)?;
        }
        // A wrapped descriptor is left as it is: rewriting it as a file
        // would truncate its wrapper.
        let place = if at == 0 {
            DescriptorPlace::File
        } else {
            DescriptorPlace::None
        };
        Ok((extents, place, text))
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// The extent holding guest byte `offset`.
    fn extent_at(&self, offset: u64) -> Option<&Extent> {
        let i = self.extents.partition_point(|e| e.end() <= offset);
        self.extents.get(i).filter(|e| e.start <= offset)
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(VmdkError::ReadOnly);
        }
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(VmdkError::OutOfRange(offset, len, size)),
        }
    }

    /// Gives the disk a new content ID once its first change is written, as
    /// qemu does: a write that fails leaves the ID, and so the children
    /// that name it as their parent's, as they were.
    fn touch(&self) -> Result<()> {
        let mut d = self.descriptor.lock().unwrap_or_else(|e| e.into_inner());
        if d.cid_updated {
            return Ok(());
        }
        d.cid_updated = true;
        let cid = random_cid();
        let text = descriptor::with_cid(&d.text, cid);
        self.write_descriptor(&text)?;
        d.text = text;
        d.cid = cid;
        Ok(())
    }

    fn write_descriptor(&self, text: &str) -> Result<()> {
        match self.place {
            DescriptorPlace::Embedded { offset, room } => {
                if offset == 0 || text.len() as u64 > room {
                    return Ok(());
                }
                let mut bytes = text.as_bytes().to_vec();
                bytes.resize(room as usize, 0);
                write_all(&self.own, offset, &bytes)?;
            }
            DescriptorPlace::File => {
                // Rewritten in whole sectors, the rest zero-filled, as
                // qemu-img rewrites it (readers stop at the first NUL).
                let mut bytes = text.as_bytes().to_vec();
                bytes.resize(
                    (bytes.len() as u64).div_ceil(SECTOR) as usize * SECTOR as usize,
                    0,
                );
                write_all(&self.own, 0, &bytes)?;
                self.own
                    .set_len(bytes.len() as u64, Prealloc::OFF)
                    .into_result()?;
            }
            DescriptorPlace::None => {}
        }
        Ok(())
    }

    /// Reads `buf` from the parent at guest `offset` (zeros without one).
    fn read_backing(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match &self.backing {
            Some(b) => Ok(b
                .read_at(
                    offset,
                    qimg_driver_api::abi_stable::std_types::RSliceMut::from_mut_slice(buf),
                )
                .into_result()?),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    fn read_extent(&self, e: &Extent, rel: u64, buf: &mut [u8]) -> Result<()> {
        if e.access == Access::Denied {
            return Err(VmdkError::NoAccess);
        }
        match (&e.data, &e.store) {
            (ExtentData::Flat { offset }, Some(store)) => {
                Ok(read_or_zero(store, offset.saturating_add(rel), buf)?)
            }
            (ExtentData::Sparse(sp), _) => self.read_sparse(e, sp, rel, buf),
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    fn read_sparse(&self, e: &Extent, sp: &SparseExtent, rel: u64, buf: &mut [u8]) -> Result<()> {
        let gb = sp.grain_bytes();
        let mut done = 0usize;
        while done < buf.len() {
            let at = rel + done as u64;
            let grain = at / gb;
            let within = at % gb;
            let n = ((gb - within) as usize).min(buf.len() - done);
            let piece = &mut buf[done..done + n];
            let loc = {
                let mut st = sp.lock();
                sp.locate(&mut st, grain)?
            };
            match loc {
                GrainLoc::Unallocated => self.read_backing(e.start + at, piece)?,
                GrainLoc::Zeroed => piece.fill(0),
                GrainLoc::Data(host) => read_or_zero(&sp.store, host + within, piece)?,
                GrainLoc::Compressed(host) => sp.read_compressed(host, within, piece)?,
            }
            done += n;
        }
        Ok(())
    }

    fn write_extent(&self, e: &Extent, rel: u64, buf: &[u8]) -> Result<()> {
        if e.access != Access::ReadWrite {
            return Err(VmdkError::ReadOnly);
        }
        match (&e.data, &e.store) {
            (ExtentData::Flat { offset }, Some(store)) => {
                Ok(write_all(store, offset.saturating_add(rel), buf)?)
            }
            (ExtentData::Sparse(sp), _) => self.write_sparse(e, sp, rel, buf),
            _ => Err(VmdkError::ReadOnly),
        }
    }

    /// The content a partial write into grain `grain` starts from.
    fn grain_base(
        &self,
        e: &Extent,
        sp: &SparseExtent,
        grain: u64,
        loc: GrainLoc,
    ) -> Result<Vec<u8>> {
        let gb = sp.grain_bytes();
        let mut base = vec![0u8; gb as usize];
        if loc == GrainLoc::Unallocated {
            let start = grain * gb;
            let n = gb.min(e.len().saturating_sub(start)) as usize;
            self.read_backing(e.start + start, &mut base[..n])?;
        }
        Ok(base)
    }

    fn write_sparse(&self, e: &Extent, sp: &SparseExtent, rel: u64, buf: &[u8]) -> Result<()> {
        let gb = sp.grain_bytes();
        let mut done = 0usize;
        while done < buf.len() {
            let at = rel + done as u64;
            let grain = at / gb;
            let within = (at % gb) as usize;
            let n = (gb as usize - within).min(buf.len() - done);
            let piece = &buf[done..done + n];
            let mut st = sp.lock();
            let loc = sp.locate(&mut st, grain)?;
            match loc {
                GrainLoc::Data(host) => {
                    if sp.over_metadata(&mut st, host, gb) {
                        return Err(VmdkError::GrainOverMetadata);
                    }
                    drop(st);
                    write_all(&sp.store, host + within as u64, piece)?;
                }
                GrainLoc::Compressed(_) => return Err(VmdkError::StreamRewrite),
                GrainLoc::Unallocated | GrainLoc::Zeroed => {
                    let mut grain_buf = if n == gb as usize {
                        piece.to_vec()
                    } else {
                        let mut b = self.grain_base(e, sp, grain, loc)?;
                        b[within..within + n].copy_from_slice(piece);
                        b
                    };
                    if sp.compressed {
                        grain_buf.resize(gb as usize, 0);
                        let packed = stream::pack_grain(grain * sp.grain_sectors, &grain_buf)?;
                        store_packed(sp, &mut st, grain, &packed)?;
                    } else {
                        let host = match st.reserved.remove(&grain) {
                            Some(host) => host,
                            None => sp.allocate(&mut st, gb)?,
                        };
                        write_all(&sp.store, host, &grain_buf)?;
                        sp.set_entry(&mut st, grain, (host / SECTOR) as u32)?;
                    }
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Allocates, in call order, the grains (and grain tables) a write of
    /// `[offset, offset+len)` would allocate, so that writes from many
    /// threads are laid out as writes in guest order. Reservations never
    /// written stay unused space (the format keeps no free-space count).
    fn reserve(&self, offset: u64, len: u64) -> Result<bool> {
        self.check_write(offset, len)?;
        self.for_each_piece(offset, len, |e, rel, n, _| {
            let ExtentData::Sparse(sp) = &e.data else {
                return Ok(());
            };
            if e.access != Access::ReadWrite || sp.compressed || n == 0 {
                return Ok(());
            }
            let gb = sp.grain_bytes();
            let mut st = sp.lock();
            for grain in rel / gb..=(rel + n - 1) / gb {
                if st.reserved.contains_key(&grain) {
                    continue;
                }
                if matches!(
                    sp.locate(&mut st, grain)?,
                    GrainLoc::Unallocated | GrainLoc::Zeroed
                ) {
                    let host = sp.allocate(&mut st, gb)?;
                    sp.ensure_table(&mut st, grain)?;
                    st.reserved.insert(grain, host);
                }
            }
            Ok(())
        })?;
        Ok(true)
    }

    fn zero_extent(&self, e: &Extent, rel: u64, len: u64, flags: u32) -> Result<()> {
        if e.access != Access::ReadWrite {
            return Err(VmdkError::ReadOnly);
        }
        match (&e.data, &e.store) {
            (ExtentData::Flat { offset }, Some(store)) => Ok(store
                .write_zeroes(
                    offset.saturating_add(rel),
                    len,
                    flags & zero_flags::MAY_UNMAP != 0,
                )
                .into_result()?),
            (ExtentData::Sparse(sp), _) => {
                let gb = sp.grain_bytes();
                let mut at = rel;
                let end = rel + len;
                while at < end {
                    let grain = at / gb;
                    let within = at % gb;
                    let n = (gb - within).min(end - at);
                    let whole = within == 0 && (n == gb || at + n == e.len());
                    let loc = {
                        let mut st = sp.lock();
                        let loc = sp.locate(&mut st, grain)?;
                        if whole && sp.zeroed_grain && !sp.compressed {
                            // VDF 5.0: a zeroed-grain entry reads as zeros
                            // without storing any.
                            sp.set_entry(&mut st, grain, 1)?;
                            None
                        } else {
                            Some(loc)
                        }
                    };
                    match loc {
                        None | Some(GrainLoc::Zeroed) => {}
                        Some(GrainLoc::Unallocated) if self.backing.is_none() => {}
                        Some(_) => self.write_sparse(e, sp, at, &vec![0u8; n as usize])?,
                    }
                    at += n;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Runs `f` on each extent piece of `[offset, offset+len)`.
    fn for_each_piece(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&Extent, u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let Some(e) = self.extent_at(at) else {
                break;
            };
            let n = (e.end() - at).min(end - at);
            f(e, at - e.start, n, at - offset)?;
            at += n;
        }
        Ok(())
    }

    /// Writes out what `write_prepared` gathered.
    fn flush_pending(&self) -> Result<()> {
        let taken = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((offset, data)) = taken {
            self.write(offset, &data)?;
        }
        Ok(())
    }

    fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check_write(offset, buf.len() as u64)?;
        self.for_each_piece(offset, buf.len() as u64, |e, rel, n, at| {
            self.write_extent(e, rel, &buf[at as usize..(at + n) as usize])?;
            self.touch()
        })
    }

    fn do_flush(&self) -> Result<()> {
        self.flush_pending()?;
        if !self.writable {
            return Ok(());
        }
        // Data first: only then may tables point at it.
        for e in &self.extents {
            if let Some(store) = &e.store {
                store.flush().into_result()?;
            }
        }
        for e in &self.extents {
            if let Some(sp) = e.sparse() {
                if sp.flush_metadata()? {
                    sp.store.flush().into_result()?;
                }
            }
        }
        self.own.flush().into_result()?;
        Ok(())
    }

    fn status(&self, offset: u64, len: u64) -> Result<Vec<Status>> {
        let len = len.min(self.size().saturating_sub(offset));
        let Some(e) = self.extent_at(offset).filter(|_| len > 0) else {
            return Ok(Vec::new());
        };
        let index = self
            .extents
            .iter()
            .position(|x| std::ptr::eq(x, e))
            .unwrap_or(0) as u32;
        let rel = offset - e.start;
        let max = len.min(e.end() - offset);
        let mut s = Status {
            offset,
            length: max,
            flags: 0,
            store: index,
            host_offset: 0,
        };
        match (&e.data, &e.store) {
            (ExtentData::Flat { offset: base }, Some(store)) => {
                let run = store.run_at(base.saturating_add(rel), max).into_result()?;
                s.length = run.length.clamp(1, max);
                s.flags = ef::DATA | ef::ALLOCATED | ef::OFFSET_VALID;
                if !run.data {
                    s.flags |= ef::ZERO;
                }
                s.host_offset = base.saturating_add(rel);
            }
            (ExtentData::Sparse(sp), _) => {
                let gb = sp.grain_bytes();
                let mut st = sp.lock();
                let first = sp.locate(&mut st, rel / gb)?;
                let mut covered = (gb - rel % gb).min(max);
                // Unallocated and zeroed runs go a grain table's stretch at
                // a time, not grain by grain (an empty 2 TiB disk has 2^25
                // grains).
                let uniform = matches!(first, GrainLoc::Unallocated | GrainLoc::Zeroed);
                while covered < max {
                    if uniform {
                        let grain = (rel + covered) / gb;
                        let run = sp.uniform_run(&mut st, grain)?;
                        if run == 0 || sp.locate(&mut st, grain)? != first {
                            break;
                        }
                        covered = covered.saturating_add(run.saturating_mul(gb)).min(max);
                        continue;
                    }
                    let next = sp.locate(&mut st, (rel + covered) / gb)?;
                    let same = match (first, next) {
                        (GrainLoc::Data(a), GrainLoc::Data(b)) => {
                            b == a + ((rel + covered) / gb - rel / gb) * gb
                        }
                        (GrainLoc::Compressed(_), GrainLoc::Compressed(_)) => true,
                        (a, b) => a == b,
                    };
                    if !same {
                        break;
                    }
                    covered = (covered + gb).min(max);
                }
                s.length = covered;
                match first {
                    GrainLoc::Unallocated => {}
                    GrainLoc::Zeroed => s.flags = ef::ZERO | ef::ALLOCATED,
                    GrainLoc::Data(host) => {
                        s.flags = ef::DATA | ef::ALLOCATED | ef::OFFSET_VALID;
                        s.host_offset = host + rel % gb;
                    }
                    GrainLoc::Compressed(_) => s.flags = ef::DATA | ef::ALLOCATED | ef::COMPRESSED,
                }
            }
            _ => s.flags = ef::ZERO | ef::ALLOCATED,
        }
        Ok(vec![s])
    }

    /// Changes the disk's size by resizing its last extent: a flat file
    /// grows or shrinks, a sparse extent's header, directories and tables
    /// follow its new capacity; the descriptor records the new size.
    fn resize_to(&self, new_size: u64, prealloc: Prealloc) -> Result<()> {
        if !self.writable {
            return Err(VmdkError::ReadOnly);
        }
        self.flush_pending()?;
        let new_size = new_size.div_ceil(SECTOR) * SECTOR;
        let Some((index, last)) = self.extents.iter().enumerate().next_back() else {
            return Err(VmdkError::CannotShrink);
        };
        if new_size <= last.start {
            return Err(VmdkError::CannotShrink);
        }
        if last.access != Access::ReadWrite {
            return Err(VmdkError::ReadOnly);
        }
        let new_len = new_size - last.start;
        match (&last.data, &last.store) {
            (ExtentData::Flat { offset }, Some(store)) => {
                store.set_len(offset + new_len, prealloc).into_result()?
            }
            (ExtentData::Sparse(sp), _) => {
                sp.forget_from((new_len / SECTOR).min(last.len() / SECTOR))?;
                sp.grow(new_len / SECTOR)?
            }
            _ => {}
        }
        // A new content ID once the extent has changed (a refused resize
        // leaves the file as it was).
        self.touch()?;
        last.len.store(new_len, Ordering::Release);
        self.size.store(new_size, Ordering::Release);
        let mut d = self.descriptor.lock().unwrap_or_else(|e| e.into_inner());
        let text = descriptor::with_extent_sectors(&d.text, index, new_len / SECTOR);
        let text = descriptor::with_cylinders(&text, new_size / SECTOR);
        self.write_descriptor(&text)?;
        d.text = text;
        drop(d);
        self.do_flush()
    }

    fn format_specific(&self) -> Value {
        let cid = self
            .descriptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cid;
        let extents: Vec<Value> = self
            .extents
            .iter()
            .map(|e| {
                let mut m = Map::new();
                if e.sparse().is_some_and(|s| s.compressed) {
                    m.insert("compressed".into(), json!(true));
                }
                m.insert("virtual-size".into(), json!(e.len()));
                m.insert("filename".into(), json!(e.name));
                if let Some(sp) = e.sparse() {
                    m.insert("cluster-size".into(), json!(sp.grain_bytes()));
                }
                m.insert("format".into(), json!(e.type_word));
                Value::Object(m)
            })
            .collect();
        let mut data = Map::new();
        data.insert("cid".into(), json!(cid));
        data.insert("parent-cid".into(), json!(self.parent_cid));
        if let Some(ct) = &self.create_type {
            data.insert("create-type".into(), json!(ct));
        }
        data.insert("extents".into(), Value::Array(extents));
        json!({"type": "vmdk", "data": Value::Object(data)})
    }
}

impl Drop for VmdkImage {
    /// Writes the grain tables a writer forgot to flush, so data written
    /// without a `close` is still found (a stream is not finished here: a
    /// half-written stream is not a stream).
    fn drop(&mut self) {
        if self.writable {
            let _ = self.do_flush();
        }
    }
}

/// Stores a compressed grain (from [`stream::pack_grain`]): appended to the
/// stream being written, or, in a compressed extent whose tables live
/// before its grains (as qemu-img writes stream-optimized files), at the end
/// of the file with its table entry updated in place.
fn store_packed(
    sp: &SparseExtent,
    st: &mut crate::sparse::SparseState,
    grain: u64,
    packed: &[u8],
) -> Result<()> {
    if st.stream.is_some() || sp.footer_directory {
        return stream::append_grain(sp, st, grain, packed);
    }
    let host = sp.allocate(st, packed.len() as u64)?;
    write_all(&sp.store, host, packed)?;
    sp.set_entry(st, grain, (host / SECTOR) as u32)
}

impl ImageImpl for VmdkImage {
    fn virtual_size(&self) -> u64 {
        self.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), DriverError> {
        self.flush_pending()?;
        let size = self.size();
        let inside = (size.saturating_sub(offset) as usize).min(buf.len());
        buf[inside..].fill(0);
        let (head, _) = buf.split_at_mut(inside);
        self.for_each_piece(offset, inside as u64, |e, rel, n, at| {
            self.read_extent(e, rel, &mut head[at as usize..(at + n) as usize])
        })?;
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> std::result::Result<(), DriverError> {
        self.flush_pending()?;
        Ok(self.write(offset, buf)?)
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: u32,
    ) -> std::result::Result<(), DriverError> {
        self.flush_pending()?;
        self.check_write(offset, len)?;
        Ok(self.for_each_piece(offset, len, |e, rel, n, _| {
            self.zero_extent(e, rel, n, flags)?;
            self.touch()
        })?)
    }

    fn block_status(&self, offset: u64, len: u64) -> std::result::Result<Vec<Status>, DriverError> {
        self.flush_pending()?;
        Ok(self.status(offset, len)?)
    }

    fn flush(&self) -> std::result::Result<(), DriverError> {
        Ok(self.do_flush()?)
    }

    fn info(&self) -> std::result::Result<ImageInfo, DriverError> {
        // qemu-img names a cluster size, and the dirty flag, only when every
        // extent has the same grain (flat extents have none).
        let grains: Vec<Option<u64>> = self
            .extents
            .iter()
            .map(|e| e.sparse().map(SparseExtent::grain_bytes))
            .collect();
        let uniform = grains.windows(2).all(|w| w[0] == w[1]);
        let own = self.own.name().to_string();
        // Extents in files of their own are listed as children, last first.
        let extra_children = self
            .extents
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, e)| e.store.is_some() && e.name != own)
            .map(|(i, e)| ChildFile {
                name: format!("extents.{i}"),
                filename: e.name.clone(),
            })
            .collect();
        // Compressed extents take whole grains, compressed: a copy into
        // one, new or not, runs as `convert -c` does (qemu-img's
        // needs_compressed_writes).
        let write_in_order = self
            .extents
            .iter()
            .any(|e| e.sparse().is_some_and(|sp| sp.compressed));
        Ok(ImageInfo {
            cluster_size: if uniform {
                grains.first().copied().flatten()
            } else {
                None
            },
            dirty_flag: uniform.then_some(false),
            backing_filename: self.parent_hint.clone(),
            backing_format: self.parent_hint.as_ref().map(|_| "vmdk".to_string()),
            format_specific: Some(self.format_specific()),
            extra_children,
            write_in_order,
            ..ImageInfo::default()
        })
    }

    fn store_name(&self, index: u32) -> String {
        self.extents
            .get(index as usize)
            .map(|e| e.name.clone())
            .unwrap_or_default()
    }

    fn resize(
        &self,
        new_size: u64,
        prealloc: Prealloc,
        _shrink: bool,
    ) -> std::result::Result<(), DriverError> {
        Ok(self.resize_to(new_size, prealloc)?)
    }

    fn write_compressed(&self, offset: u64, buf: &[u8]) -> std::result::Result<(), DriverError> {
        if buf.is_empty() {
            // The end of a compressed copy: extents are written whole sectors.
            return Ok(());
        }
        self.write_at(offset, buf)
    }

    fn check(&self, request: CheckRequest) -> std::result::Result<CheckReport, DriverError> {
        // VMDK has no repair: qemu-img answers any -r as if it could not
        // check at all (exit 63).
        if request.repair != Repair::None {
            return Err(DriverError::unsupported(
                "This image format does not support checks",
            ));
        }
        Ok(crate::check::check(&self.extents)?)
    }

    fn compress_cluster(
        &self,
        offset: u64,
        buf: &[u8],
    ) -> std::result::Result<Vec<u8>, DriverError> {
        if let Some(e) = self.extent_at(offset) {
            if let Some(sp) = e.sparse().filter(|s| s.compressed) {
                let gb = sp.grain_bytes();
                let rel = offset - e.start;
                if rel.is_multiple_of(gb) && buf.len() as u64 <= gb {
                    let mut grain = buf.to_vec();
                    grain.resize(gb as usize, 0);
                    return Ok(stream::pack_grain(rel / gb * sp.grain_sectors, &grain)?);
                }
            }
        }
        Ok(buf.to_vec())
    }

    fn write_prepared(&self, offset: u64, data: &[u8]) -> std::result::Result<(), DriverError> {
        if let Some(e) = self.extent_at(offset) {
            if let Some(sp) = e.sparse().filter(|s| s.compressed) {
                let gb = sp.grain_bytes();
                let rel = offset - e.start;
                if rel.is_multiple_of(gb)
                    && (data.len() as u64).is_multiple_of(SECTOR)
                    && data.len() >= 12
                {
                    self.flush_pending()?;
                    self.check_write(offset, 1)?;
                    let mut st = sp.lock();
                    let grain = rel / gb;
                    if sp.locate(&mut st, grain)? != GrainLoc::Unallocated {
                        return Err(VmdkError::StreamRewrite.into());
                    }
                    store_packed(sp, &mut st, grain, data)?;
                    drop(st);
                    self.touch()?;
                    return Ok(());
                }
            }
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((start, buf)) = pending.as_mut() {
            if *start + buf.len() as u64 == offset && buf.len() + data.len() <= MAX_PENDING {
                buf.extend_from_slice(data);
                return Ok(());
            }
        }
        let previous = pending.replace((offset, data.to_vec()));
        drop(pending);
        if let Some((at, buf)) = previous {
            self.write(at, &buf)?;
        }
        Ok(())
    }

    fn reserve(&self, offset: u64, len: u64) -> std::result::Result<bool, DriverError> {
        Ok(VmdkImage::reserve(self, offset, len)?)
    }
    fn close(&self) -> std::result::Result<(), DriverError> {
        self.flush_pending()?;
        if self.writable {
            for e in &self.extents {
                if let Some(sp) = e.sparse() {
                    let mut st = sp.lock();
                    stream::finish(sp, &mut st)?;
                }
            }
        }
        self.flush()
    }
}
