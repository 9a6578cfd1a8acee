//! An open Parallels image: its header and BAT in memory, reads, writes,
//! allocation status, flush and close.
//!
//! Writes allocate clusters the way qemu-img does (the first cluster of
//! the data area no BAT entry names, else the end of the data), so a file
//! written in guest order is laid out as qemu-img lays it out. A new
//! cluster is named in the BAT in memory at once, but the BAT on disk is
//! written only at flush, after the data it names is durable: a kill
//! leaves at worst clusters no entry names (leaks). Clusters given up by
//! discards are not handed out again before the BAT that stopped naming
//! them is on disk.

use crate::check;
use crate::error::{ParallelsError, Result};
use crate::ext;
use crate::header::{bat_end, Header, HEADER_SIZE, INUSE_MAGIC, SECTOR};
use crate::used::Used;
use qimg_driver_api::schema::{CheckReport, CheckRequest, ImageInfo, Repair};
use qimg_driver_api::{
    extent_flags as ef, open_flags, zero_flags, ByteStoreBox, DriverError, Extent, HostExt,
    HostServicesBox, ImageImpl, Prealloc, StoreExt,
};
use qimg_driver_util::{read_or_zero, write_all};
use std::collections::{BTreeSet, HashSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// qemu's largest block device (`BDRV_MAX_LENGTH`): `INT64_MAX` rounded
/// down to a GiB. A header naming more sectors is refused.
pub const MAX_LENGTH: u64 = (i64::MAX as u64) & !((1 << 30) - 1);
/// Largest read qemu-img makes (`BDRV_REQUEST_MAX_BYTES`): it reads the
/// header and BAT in one, rounded up to [`HEADER_ALIGN`], and fails on
/// larger ones.
const MAX_REQUEST: u64 = (i32::MAX as u64) & !(SECTOR - 1);
/// Bytes of the BAT read at once when an image is opened.
const BAT_PIECE: usize = 1 << 20;
/// The memory alignment qemu-img rounds the header area up to.
const HEADER_ALIGN: u64 = 4096;
/// Bytes of the header area (header and BAT) written back per dirty block.
const DIRTY_BLOCK: u64 = 4096;
/// Bytes the file grows by at once when clusters are appended (qemu-img's
/// `prealloc-size` is 128 MiB): allocating ahead is cheaper for the file
/// system than extending the file write by write. A clean close cuts the
/// file back to its data.
const PREALLOC: u64 = 64 << 20;
/// Extents answered per `block_status` call at most.
const MAX_EXTENTS: usize = 256;

/// The image's mutable state.
pub struct State {
    /// The header as it is (or will be) on disk.
    pub header: Header,
    /// The BAT entries the file holds; entries past its end (a BAT running
    /// past the end of the file) read as 0 and are added when written.
    pub bat: Vec<u32>,
    /// First sector of the data area.
    pub data_start: u64,
    /// Sector just past the last cluster of the data area.
    pub data_end: u64,
    /// Host clusters the BAT names, counted from `data_start`.
    pub used: Used,
    /// Blocks of the header area (`DIRTY_BLOCK` bytes each) changed in
    /// memory and not yet written.
    pub dirty: BTreeSet<u64>,
    /// Host clusters freed since the last flush: free once the BAT on disk
    /// no longer names them.
    pub freed: Vec<u64>,
    /// Guest clusters allocated by `reserve` and not written yet.
    pub reserved: HashSet<u64>,
    /// The image was not closed cleanly (`inuse` set when it was opened).
    pub unclean: bool,
    /// End of the space allocated ahead at the end of the file.
    pub prealloc_end: u64,
    /// The next allocation appends to the data area instead of reusing a
    /// free cluster: qemu-img keeps no used map of an image it opened
    /// needing repair (until `check` repairs the data offset), so its first
    /// allocation goes to the end. Later ones use the map qimg keeps
    /// (qemu-img's, built from nothing, would hand out live clusters).
    pub append_next: bool,
}

impl State {
    /// BAT entry `i` (0 past the loaded part).
    pub fn entry(&self, i: u64) -> u32 {
        self.bat.get(i as usize).copied().unwrap_or(0)
    }

    /// Sets BAT entry `i` in memory and marks its block dirty.
    pub fn set_entry(&mut self, i: u64, value: u32) {
        let i = i as usize;
        if i >= self.bat.len() {
            if value == 0 {
                return;
            }
            self.bat.resize(i + 1, 0);
        }
        self.bat[i] = value;
        self.dirty
            .insert((HEADER_SIZE as u64 + 4 * i as u64) / DIRTY_BLOCK);
    }

    /// Marks the header itself dirty.
    pub fn header_changed(&mut self) {
        self.dirty.insert(0);
    }
}

/// Geometry that never changes while the image is open.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// Cluster size in bytes.
    pub cluster: u64,
    /// Sectors a BAT entry counts in.
    pub mult: u64,
}

impl Geometry {
    /// Host byte offset of the cluster BAT entry `entry` names (0: none).
    pub fn host(&self, entry: u32) -> u64 {
        u64::from(entry) * self.mult * SECTOR
    }

    /// The BAT entry naming a cluster at host byte offset `host`, if it can
    /// be named (entries are 32 bits).
    pub fn entry(&self, host: u64) -> Option<u32> {
        u32::try_from(host / SECTOR / self.mult).ok()
    }

    /// Index of the host cluster at `host` in the used map of a data area
    /// starting at sector `data_start`, as qemu-img counts it: offsets less
    /// than a cluster below the start count as cluster 0, further ones as
    /// no cluster.
    pub fn host_index(&self, data_start: u64, host: u64) -> Option<u64> {
        let start = data_start * SECTOR;
        if host >= start {
            Some((host - start) / self.cluster)
        } else {
            (start - host < self.cluster).then_some(0)
        }
    }
}

/// An open image.
pub struct ParallelsImage {
    pub(crate) store: ByteStoreBox,
    writable: bool,
    pub(crate) geo: Geometry,
    size: RwLock<u64>,
    state: RwLock<State>,
}

/// Builds the used map of a data area starting at `data_start` in a file
/// of `file_len` bytes; false if an entry lies outside it or is named
/// twice (qemu-img then repairs the image when it opens it for writing).
pub fn used_map(st: &State, geo: Geometry, file_len: u64) -> (Used, bool) {
    let start = st.data_start * SECTOR;
    let Some(payload) = file_len.checked_sub(start) else {
        return (Used::default(), false);
    };
    let mut used = Used::new(payload.div_ceil(geo.cluster));
    let mut ok = true;
    for &e in &st.bat {
        if e == 0 {
            continue;
        }
        match geo.host_index(st.data_start, geo.host(e)) {
            Some(i) => ok &= used.mark(i).is_ok(),
            None => ok = false,
        }
    }
    (used, ok)
}

impl ParallelsImage {
    /// Opens the image in `store` (`open_flags`); an image opened for
    /// writing that needs repair (not closed cleanly, a wrong data offset,
    /// clusters past the end of the file or named twice) is repaired first,
    /// as qemu-img does, printing what it repairs.
    pub fn open(store: ByteStoreBox, host: &HostServicesBox, flags: u32) -> Result<Self> {
        let writable = flags & open_flags::WRITE != 0;
        // qemu-img sees a file as whole sectors, the last one rounded up.
        let file_len = store.size()?.next_multiple_of(SECTOR);
        let file_sectors = file_len / SECTOR;
        let mut head = [0u8; HEADER_SIZE];
        read_or_zero(&store, 0, &mut head)?;
        let mut header = Header::parse(&head)?;
        let sectors = header.sectors();
        if sectors > MAX_LENGTH / SECTOR {
            return Err(ParallelsError::TooLargeSize);
        }
        if bat_end(header.bat_entries).next_multiple_of(HEADER_ALIGN) > MAX_REQUEST {
            return Err(ParallelsError::HeaderTooLarge(store.display_name()));
        }
        let geo = Geometry {
            cluster: header.cluster_size(),
            mult: header.off_multiplier(),
        };
        // Only the entries inside the file are held: the rest read as 0.
        let in_file = file_len.saturating_sub(HEADER_SIZE as u64) / 4;
        let loaded = u64::from(header.bat_entries).min(in_file) as usize;
        // Read a MiB at a time: a large BAT (250 MB for 60 TiB of 1 MiB
        // clusters) is not held twice, as bytes and as entries.
        let mut bat: Vec<u32> = Vec::with_capacity(loaded);
        let mut raw = vec![0u8; (loaded * 4).min(BAT_PIECE)];
        while bat.len() < loaded {
            let n = ((loaded - bat.len()) * 4).min(BAT_PIECE);
            let at = HEADER_SIZE as u64 + bat.len() as u64 * 4;
            read_or_zero(&store, at, &mut raw[..n])?;
            bat.extend(
                raw[..n]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        let unclean = header.inuse == INUSE_MAGIC;
        let (data_ok, data_start) = header.data_start(file_sectors);
        if header.ext_off != 0 {
            if writable {
                // qemu-img ignores the extension when writing and then cuts
                // it off the file; qimg drops it from the header instead,
                // so the image stays readable (its bitmaps would be stale).
                host.warning("Format Extension ignored in RW mode");
                header.ext_off = 0;
            } else {
                ext::read(&store, header.ext_off, geo.cluster, sectors)?;
            }
        }
        let mut data_end = data_start;
        for &e in &bat {
            data_end = data_end.max(geo.host(e) / SECTOR + u64::from(header.tracks));
        }
        let mut st = State {
            header,
            bat,
            data_start,
            data_end,
            used: Used::default(),
            dirty: BTreeSet::new(),
            freed: Vec::new(),
            reserved: HashSet::new(),
            unclean,
            prealloc_end: 0,
            append_next: unclean || !data_ok || data_end > file_sectors,
        };
        let (used, used_ok) = used_map(&st, geo, file_len);
        st.used = used;
        let need_check = st.append_next || !used_ok;
        if writable {
            st.header.inuse = INUSE_MAGIC;
            write_all(&store, 0, &st.header.to_bytes())?;
            store.sync()?;
        }
        let image = ParallelsImage {
            store,
            writable,
            geo,
            size: RwLock::new(sectors * SECTOR),
            state: RwLock::new(st),
        };
        if writable && need_check && flags & open_flags::CHECK == 0 {
            let report = image
                .run_check(Repair::All)
                .map_err(|e| ParallelsError::RepairFailed(e.to_string()))?;
            for line in &report.messages {
                eprintln!("{line}");
            }
        }
        Ok(image)
    }

    pub(crate) fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The file's length as qemu-img sees it: whole sectors.
    pub(crate) fn file_size(&self) -> Result<u64> {
        Ok(self.store.size()?.next_multiple_of(SECTOR))
    }

    /// Guest size in bytes.
    pub fn size(&self) -> u64 {
        *self.size.read().unwrap_or_else(|e| e.into_inner())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(ParallelsError::OutOfRange(offset, len, size)),
        }
    }

    /// Allocates a host cluster: the first free one of the data area, else
    /// (or when [`State::append_next`] says so) one at its end. A reused
    /// cluster is zeroed (it may hold stale data); one at the end reads as
    /// zeros until written.
    pub(crate) fn allocate(&self, st: &mut State) -> Result<u64> {
        let start = st.data_start * SECTOR;
        // A BAT entry names whole units of `unit` bytes (the cluster, in a
        // version 2 image): where a damaged header's data offset is not
        // such a unit, the place found is rounded up to one, or the entry
        // would name a place before it that another entry may hold (the
        // rounded place keeps the used map's index of the place found).
        let unit = self.geo.host(1);
        let free = if st.append_next {
            None
        } else {
            st.used.first_free()
        };
        st.append_next = false;
        let host = match free {
            Some(i) => {
                let host = (start + i * self.geo.cluster).next_multiple_of(unit);
                self.store.zero_range(host, self.geo.cluster, false)?;
                host
            }
            None => {
                let host = (st.data_end * SECTOR).next_multiple_of(unit);
                if host + self.geo.cluster > st.prealloc_end {
                    let len = PREALLOC.max(self.geo.cluster);
                    self.store.zero_range(host, len, false)?;
                    st.prealloc_end = host + len;
                }
                host
            }
        };
        if self.geo.entry(host).is_none() {
            return Err(ParallelsError::TooLarge(
                "The image file is too large for its cluster size".into(),
            ));
        }
        if let Some(i) = self.geo.host_index(st.data_start, host) {
            st.used.grow(i + 1);
            // A cluster marked already cannot be free: only ever true
            // for an image whose BAT is damaged.
            let _ = st.used.mark(i);
        }
        st.data_end = st.data_end.max((host + self.geo.cluster) / SECTOR);
        Ok(host)
    }

    /// The host offset of guest cluster `g`, allocating it if needed.
    fn cluster_for_write(&self, g: u64) -> Result<u64> {
        {
            let st = self.read_state();
            let e = st.entry(g);
            if e != 0 && !st.reserved.contains(&g) {
                return Ok(self.geo.host(e));
            }
        }
        let mut st = self.write_state();
        if g >= u64::from(st.header.bat_entries) {
            return Err(ParallelsError::Unmapped);
        }
        st.reserved.remove(&g);
        let e = st.entry(g);
        if e != 0 {
            return Ok(self.geo.host(e));
        }
        let host = self.allocate(&mut st)?;
        let entry = self.geo.entry(host).unwrap_or(0);
        st.set_entry(g, entry);
        Ok(host)
    }

    fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let cs = self.geo.cluster;
        // Clusters that follow each other in the file are written at once
        // (a 2 MiB write of two 1 MiB clusters: one request, as qemu-img's).
        let (mut run_host, mut run_from, mut done) = (0u64, 0usize, 0usize);
        while done < buf.len() {
            let at = offset + done as u64;
            let within = at % cs;
            let n = ((cs - within) as usize).min(buf.len() - done);
            let host = self.cluster_for_write(at / cs)? + within;
            if done > run_from && host != run_host + (done - run_from) as u64 {
                write_all(&self.store, run_host, &buf[run_from..done])?;
                run_from = done;
            }
            if done == run_from {
                run_host = host;
            }
            done += n;
        }
        if done > run_from {
            write_all(&self.store, run_host, &buf[run_from..done])?;
        }
        Ok(())
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let size = self.size();
        let cs = self.geo.cluster;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let within = at % cs;
            let n = ((cs - within) as usize).min(buf.len() - done);
            let (e, n) = if at >= size {
                (0, n)
            } else {
                // Clusters that follow each other in the file are read at once.
                let st = self.read_state();
                let e = st.entry(at / cs);
                let mut len = n;
                while e != 0 && done + len < buf.len() {
                    let next = at + len as u64;
                    let host = self.geo.host(st.entry(next / cs));
                    if next >= size || host != self.geo.host(e) + within + len as u64 {
                        break;
                    }
                    len += (cs as usize).min(buf.len() - done - len);
                }
                (e, len)
            };
            let piece = &mut buf[done..done + n];
            if e == 0 {
                piece.fill(0);
            } else {
                read_or_zero(&self.store, self.geo.host(e) + within, piece)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Frees the whole clusters of `[offset, offset+len)`: they read as
    /// zeros, their space is given back to the file system and becomes
    /// free for allocation after the next flush.
    fn free_clusters(&self, offset: u64, len: u64) -> Result<()> {
        let cs = self.geo.cluster;
        let first = offset.div_ceil(cs);
        let end = (offset + len) / cs;
        let mut st = self.write_state();
        for g in first..end.min(u64::from(st.header.bat_entries)) {
            let e = st.entry(g);
            if e == 0 {
                continue;
            }
            let host = self.geo.host(e);
            self.store.zero_range(host, cs, true)?;
            st.set_entry(g, 0);
            st.reserved.remove(&g);
            if let Some(i) = self.geo.host_index(st.data_start, host) {
                st.freed.push(i);
            }
        }
        Ok(())
    }

    fn zeroes(&self, offset: u64, len: u64, flags: u32) -> Result<()> {
        self.check_range(offset, len)?;
        let cs = self.geo.cluster;
        // The format has no zero clusters: whole clusters are freed (what
        // qemu-img does), anything else is written as zeros.
        if offset.is_multiple_of(cs) && (len.is_multiple_of(cs) || offset + len == self.size()) {
            return self.free_clusters(offset, len.next_multiple_of(cs));
        }
        if flags & zero_flags::NO_FALLBACK != 0 {
            return Err(ParallelsError::Unsupported(
                "Operation not supported".into(),
            ));
        }
        let chunk = vec![0u8; (cs.min(1 << 20)) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len() as u64);
            self.write(offset + done, &chunk[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    /// Allocation status from `offset`: allocated clusters that follow each
    /// other in the file form one extent, unallocated ones another.
    fn status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let size = self.size();
        let len = len.min(size.saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        let cs = self.geo.cluster;
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        let st = self.read_state();
        let mut at = offset;
        while at < end && out.len() < MAX_EXTENTS {
            let g = at / cs;
            let e = st.entry(g);
            let mut next = ((g + 1) * cs).min(end);
            if e == 0 {
                let bat_end = u64::from(st.header.bat_entries).min(st.bat.len() as u64);
                let mut h = g + 1;
                while h < bat_end && h * cs < end && st.entry(h) == 0 {
                    h += 1;
                }
                if h >= bat_end {
                    next = end;
                } else {
                    next = (h * cs).min(end);
                }
                out.push(Extent {
                    offset: at,
                    length: next - at,
                    flags: 0,
                    store: 0,
                    host_offset: 0,
                });
                at = next;
                continue;
            }
            let host = self.geo.host(e) + at % cs;
            let mut h = g + 1;
            while h * cs < end && self.geo.host(st.entry(h)) == self.geo.host(e) + (h - g) * cs {
                h += 1;
            }
            next = next.max((h * cs).min(end));
            // qemu-img does not ask the file about holes under a cluster.
            out.push(Extent {
                offset: at,
                length: next - at,
                flags: ef::DATA | ef::ALLOCATED | ef::OFFSET_VALID,
                store: 0,
                host_offset: host,
            });
            at = next;
        }
        Ok(out)
    }

    /// Writes the dirty blocks of the header area.
    fn write_dirty(&self, st: &mut State) -> Result<()> {
        let area_end = bat_end(st.header.bat_entries);
        let header = st.header.to_bytes();
        for &block in &st.dirty {
            let from = block * DIRTY_BLOCK;
            let to = (from + DIRTY_BLOCK).min(area_end);
            if from >= to {
                continue;
            }
            let mut bytes = vec![0u8; (to - from) as usize];
            for (k, b) in bytes.iter_mut().enumerate() {
                let pos = from + k as u64;
                *b = if pos < HEADER_SIZE as u64 {
                    header[pos as usize]
                } else {
                    let i = (pos - HEADER_SIZE as u64) / 4;
                    st.entry(i).to_le_bytes()[((pos - HEADER_SIZE as u64) % 4) as usize]
                };
            }
            write_all(&self.store, from, &bytes)?;
        }
        st.dirty.clear();
        Ok(())
    }

    /// Makes the data durable, then the BAT naming it; frees what the BAT
    /// on disk no longer names.
    pub(crate) fn flush_state(&self, st: &mut State) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        if st.dirty.is_empty() {
            return Ok(self.store.sync()?);
        }
        let end = st.data_end * SECTOR;
        if self.store.size()? < end {
            self.store.set_size(end, Prealloc::OFF)?;
        }
        self.store.sync()?;
        self.write_dirty(st)?;
        self.store.sync()?;
        for i in std::mem::take(&mut st.freed) {
            st.used.clear(i);
        }
        Ok(())
    }

    /// Runs `check` on the image (see [`check::check`]).
    pub(crate) fn run_check(&self, repair: Repair) -> Result<CheckReport> {
        let mut st = self.write_state();
        let report = check::check(self, &mut st, repair)?;
        self.flush_state(&mut st)?;
        Ok(report)
    }

    /// Sets the guest size (the header and the BAT already fit it).
    pub(crate) fn set_size(&self, bytes: u64) {
        *self.size.write().unwrap_or_else(|e| e.into_inner()) = bytes;
    }

    fn do_close(&self) -> Result<()> {
        let mut st = self.write_state();
        // Reserved clusters never written are given back.
        let reserved: Vec<u64> = st.reserved.drain().collect();
        for g in reserved {
            let e = st.entry(g);
            st.set_entry(g, 0);
            if let Some(i) = self.geo.host_index(st.data_start, self.geo.host(e)) {
                st.used.clear(i);
            }
        }
        if !self.writable {
            return Ok(());
        }
        let tracks = u64::from(st.header.tracks);
        // Entries wholly past the end of the file (a damaged BAT that
        // `check -r leaks` leaves as it is) do not make the file grow. A
        // cluster the file holds any part of is the image's: the file grows
        // to hold all of it (as in qemu), and is never cut inside it.
        let file_len = self.file_size()?;
        let last = st
            .bat
            .iter()
            .filter(|&&e| e != 0 && self.geo.host(e) < file_len)
            .map(|&e| self.geo.host(e) / SECTOR + tracks)
            .max();
        // The file ends after the last cluster even where a damaged header
        // names a data area past it (qemu-img's check leaves such a file),
        // but never inside the header and BAT.
        st.data_end = match last {
            Some(end) => end.max(bat_end(st.header.bat_entries).div_ceil(SECTOR)),
            None => st.data_start,
        };
        self.flush_state(&mut st)?;
        st.header.inuse = 0;
        write_all(&self.store, 0, &st.header.to_bytes())?;
        self.store.set_size(st.data_end * SECTOR, Prealloc::OFF)?;
        self.store.sync()?;
        Ok(())
    }
}

impl ImageImpl for ParallelsImage {
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
        Ok(self.zeroes(offset, len, flags)?)
    }

    fn discard(&self, offset: u64, len: u64) -> std::result::Result<(), DriverError> {
        self.check_range(offset, len)?;
        Ok(self.free_clusters(offset, len)?)
    }

    fn block_status(&self, offset: u64, len: u64) -> std::result::Result<Vec<Extent>, DriverError> {
        Ok(self.status(offset, len)?)
    }

    fn flush(&self) -> std::result::Result<(), DriverError> {
        let mut st = self.write_state();
        Ok(self.flush_state(&mut st)?)
    }

    fn info(&self) -> std::result::Result<ImageInfo, DriverError> {
        // qemu-img shows nothing format-specific for parallels: no cluster
        // size, no dirty flag. Its bitmaps are not persistent ones, but
        // qemu-img treats the format as able to hold them: `measure -O
        // qcow2` counts "bitmaps size: 0" and `convert --bitmaps` copies
        // none instead of refusing.
        Ok(ImageInfo {
            bitmaps: Some(Vec::new()),
            ..ImageInfo::default()
        })
    }

    fn store_name(&self, _index: u32) -> String {
        self.store.display_name()
    }

    fn resize(
        &self,
        new_size: u64,
        prealloc: Prealloc,
        shrink: bool,
    ) -> std::result::Result<(), DriverError> {
        Ok(crate::resize::resize(self, new_size, prealloc, shrink)?)
    }

    fn check(&self, request: CheckRequest) -> std::result::Result<CheckReport, DriverError> {
        Ok(self.run_check(request.repair)?)
    }

    fn reserve(&self, offset: u64, len: u64) -> std::result::Result<bool, DriverError> {
        if !self.writable || len == 0 {
            return Ok(self.writable);
        }
        self.check_range(offset, len)?;
        let cs = self.geo.cluster;
        let mut st = self.write_state();
        for g in offset / cs..=(offset + len - 1) / cs {
            if g >= u64::from(st.header.bat_entries) || st.entry(g) != 0 {
                continue;
            }
            let host = self.allocate(&mut st)?;
            let entry = self.geo.entry(host).unwrap_or(0);
            st.set_entry(g, entry);
            st.reserved.insert(g);
        }
        Ok(true)
    }

    fn close(&self) -> std::result::Result<(), DriverError> {
        Ok(self.do_close()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qimg_driver_util::memfile::MemFile;
    use qimg_driver_util::nohost::no_host;

    fn image(size: u64, cluster: u64) -> MemFile {
        let file = MemFile::default();
        let mut options = std::collections::BTreeMap::new();
        options.insert("cluster_size".to_string(), cluster.to_string());
        crate::create::create(
            &file.store("t"),
            &qimg_driver_api::schema::CreateRequest { size, options },
        )
        .unwrap();
        file
    }

    #[test]
    fn writes_read_back_and_allocate_in_order() {
        let file = image(4 << 20, 65536);
        let img = ParallelsImage::open(file.store("t"), &no_host(), open_flags::WRITE).unwrap();
        img.write_at(3 << 20, &[7u8; 4096]).unwrap();
        img.write_at(100, &[9u8; 70000]).unwrap();
        img.close().unwrap();
        let img = ParallelsImage::open(file.store("t"), &no_host(), 0).unwrap();
        let mut buf = vec![0u8; 8192];
        img.read_at(3 << 20, &mut buf).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 7) && buf[4096..].iter().all(|&b| b == 0));
        img.read_at(0, &mut buf).unwrap();
        assert!(buf[..100].iter().all(|&b| b == 0) && buf[100..].iter().all(|&b| b == 9));
        let st = img.read_state();
        assert_eq!((st.entry(48), st.entry(0), st.entry(1)), (1, 2, 3));
        assert_eq!(file.bytes().len(), 4 * 65536);
        assert_eq!(
            u32::from_le_bytes(file.bytes()[44..48].try_into().unwrap()),
            0
        );
    }

    #[test]
    fn an_image_open_for_writing_is_marked_in_use() {
        let file = image(1 << 20, 65536);
        let img = ParallelsImage::open(file.store("t"), &no_host(), open_flags::WRITE).unwrap();
        assert_eq!(
            u32::from_le_bytes(file.bytes()[44..48].try_into().unwrap()),
            INUSE_MAGIC
        );
        img.close().unwrap();
    }
}
