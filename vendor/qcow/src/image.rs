//! An open qcow image: guest reads and writes through the L1 and L2
//! tables, as the format lays them out.
//!
//! Reads of an unallocated cluster fall through to the backing image (or
//! read as zeros); compressed clusters are inflated whole; the data of an
//! encrypted image is decrypted sector by sector. Writes allocate as qemu
//! does, so that qimg and qemu-img lay a file out alike: a new L2 table or
//! cluster goes at the file's end rounded up to a cluster, a compressed
//! cluster right at the file's end. A new cluster only partly written
//! reads as zeros elsewhere (encrypted images write encrypted zeros
//! there); writes that do not cover whole sectors are completed from what
//! the image reads there first.

use crate::compress::{deflate, inflate};
use crate::crypt::{SectorCipher, SECTOR};
use crate::header::COMPRESSED;
use crate::tables::{check_request, eio, Tables};
use qimg_driver_api::schema::ImageInfo;
use qimg_driver_api::{extent_flags, zero_flags};
use qimg_driver_api::{
    BackingBox, BackingExt, ByteStoreBox, DriverError, Extent, Prealloc, StoreExt,
};
use std::sync::{Mutex, MutexGuard};

/// EINVAL, for a compressed write qemu refuses.
const EINVAL: i32 = 22;
/// Bytes of zeros `write_zeroes` writes at a time.
const ZERO_CHUNK: u64 = 1 << 20;

/// Where a run of guest bytes is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mapping {
    /// In no cluster of this image.
    Unallocated,
    /// At this file offset, uncompressed.
    Data(u64),
    /// In the compressed cluster with this L2 entry.
    Compressed(u64),
}

/// The geometry an image was opened with.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// Guest size: the header's, rounded down to whole sectors.
    pub size: u64,
    /// log2 of the cluster size.
    pub cluster_bits: u8,
    /// log2 of the entries of an L2 table.
    pub l2_bits: u8,
}

impl Geometry {
    /// The cluster size.
    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}

/// The last compressed cluster read, inflated.
struct Inflated {
    /// Its L2 entry.
    entry: u64,
    /// Its guest data.
    data: Vec<u8>,
}

/// An open qcow image.
pub struct QcowImage {
    /// The image file.
    pub store: ByteStoreBox,
    /// Size and cluster geometry.
    pub geometry: Geometry,
    /// The backing image, when it has one and it was opened.
    pub backing: Option<BackingBox>,
    /// The backing file name from the header.
    pub backing_name: Option<String>,
    /// Whether the header says the data is encrypted.
    pub encrypted: bool,
    /// The cipher, when encrypted and opened for I/O.
    pub cipher: Option<SectorCipher>,
    /// The tables, locked by every lookup and allocation.
    pub tables: Mutex<Tables>,
    /// The compressed cluster read last.
    inflated: Mutex<Option<Inflated>>,
    /// Where the header and the backing file name end.
    header_end: u64,
}

impl QcowImage {
    /// An image over `store` with its checked parts.
    pub fn new(
        store: ByteStoreBox,
        geometry: Geometry,
        tables: Tables,
        backing_name: Option<String>,
        encrypted: bool,
        header_end: u64,
    ) -> QcowImage {
        QcowImage {
            store,
            geometry,
            backing: None,
            backing_name,
            encrypted,
            cipher: None,
            tables: Mutex::new(tables),
            inflated: Mutex::new(None),
            header_end,
        }
    }

    /// The tables, locked.
    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The L1 index, L2 index and offset in its cluster of guest `at`.
    fn split(&self, at: u64) -> (u64, usize, u64) {
        let g = &self.geometry;
        let cluster = at >> g.cluster_bits;
        (
            cluster >> g.l2_bits,
            (cluster & ((1 << g.l2_bits) - 1)) as usize,
            at & (g.cluster_size() - 1),
        )
    }

    /// How guest `at` is mapped, and for how many bytes (at most `max`)
    /// the same holds: unallocated clusters in a row, clusters that follow
    /// each other in the file, or the rest of one compressed cluster. A run
    /// never leaves one L2 table.
    fn map_run(&self, at: u64, max: u64) -> Result<(Mapping, u64), DriverError> {
        let cs = self.geometry.cluster_size();
        let (l1_index, l2_index, within) = self.split(at);
        let first = (cs - within).min(max);
        let mut tables = self.lock();
        let l2_offset = tables.l1_entry(l1_index);
        let l2_entries = 1usize << self.geometry.l2_bits;
        if l2_offset == 0 {
            let rest = (l2_entries - l2_index) as u64 * cs - within;
            return Ok((Mapping::Unallocated, rest.min(max)));
        }
        let table = tables.l2(&self.store, l2_offset)?;
        drop(tables);
        let entry = table[l2_index];
        if entry & COMPRESSED != 0 {
            return Ok((Mapping::Compressed(entry), first));
        }
        let mut len = first;
        let mut next = l2_index + 1;
        while len < max && next < l2_entries {
            let e = table[next];
            let follows = if entry == 0 {
                e == 0
            } else {
                e & COMPRESSED == 0 && Some(e) == entry.checked_add((next - l2_index) as u64 * cs)
            };
            if !follows {
                break;
            }
            len = (len + cs).min(max);
            next += 1;
        }
        Ok(match entry {
            0 => (Mapping::Unallocated, len),
            e => (Mapping::Data(e.checked_add(within).ok_or_else(eio)?), len),
        })
    }

    /// Reads `buf.len()` bytes of file data for guest `at`, found at file
    /// offset `host`, decrypting them if the image is encrypted.
    fn read_data(&self, at: u64, host: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        check_request(host, buf.len() as u64)?;
        let Some(cipher) = &self.cipher else {
            return self.store.read_or_zero_at(host, buf);
        };
        // Whole sectors: the file offsets of a cluster's sectors keep the
        // guest's alignment in every image qemu writes.
        let head = at % SECTOR;
        let len = (head + buf.len() as u64).next_multiple_of(SECTOR);
        let mut sectors = vec![0u8; len as usize];
        let start = host.checked_sub(head).ok_or_else(eio)?;
        self.store.read_or_zero_at(start, &mut sectors)?;
        cipher.decrypt((at - head) / SECTOR, &mut sectors);
        buf.copy_from_slice(&sectors[head as usize..head as usize + buf.len()]);
        Ok(())
    }

    /// The guest data of the compressed cluster with L2 entry `entry`.
    fn inflate_cluster(&self, entry: u64) -> Result<Vec<u8>, DriverError> {
        let mut last = self.inflated.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = last.as_ref().filter(|c| c.entry == entry) {
            return Ok(hit.data.clone());
        }
        let bits = self.geometry.cluster_bits;
        let cs = self.geometry.cluster_size();
        let offset = entry & ((1u64 << (63 - bits)) - 1);
        // The length field is `cluster_bits` wide: always below a cluster.
        let csize = (entry >> (63 - bits)) & (cs - 1);
        check_request(offset, csize)?;
        let mut packed = vec![0u8; csize as usize];
        self.store.read_or_zero_at(offset, &mut packed)?;
        let mut data = vec![0u8; cs as usize];
        inflate(&packed, &mut data).map_err(|_| eio())?;
        *last = Some(Inflated {
            entry,
            data: data.clone(),
        });
        Ok(data)
    }

    /// Fills `buf` with the guest data at `at`, inside the image.
    fn read_inside(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (mapping, len) = self.map_run(at, (buf.len() - done) as u64)?;
            let part = &mut buf[done..done + len as usize];
            match mapping {
                Mapping::Unallocated => match &self.backing {
                    Some(b) => b.read_into(at, part)?,
                    None => part.fill(0),
                },
                Mapping::Data(host) => self.read_data(at, host, part)?,
                Mapping::Compressed(entry) => {
                    let data = self.inflate_cluster(entry)?;
                    let within = (at & (self.geometry.cluster_size() - 1)) as usize;
                    part.copy_from_slice(&data[within..within + part.len()]);
                }
            }
            done += len as usize;
        }
        Ok(())
    }

    /// The file offset of a new cluster-aligned allocation.
    fn aligned_end(&self, tables: &Tables) -> Result<u64, DriverError> {
        let at = tables
            .end
            .checked_next_multiple_of(self.geometry.cluster_size())
            .ok_or_else(eio)?;
        check_request(at, self.geometry.cluster_size())?;
        Ok(at)
    }

    /// The L2 table's offset for L1 entry `l1_index`, allocating it.
    fn l2_for_write(&self, tables: &mut Tables, l1_index: u64) -> Result<u64, DriverError> {
        let l2_offset = tables.l1_entry(l1_index);
        if l2_offset != 0 {
            return Ok(l2_offset);
        }
        let at = self.aligned_end(tables)?;
        // The table exists before the L1 entry names it.
        tables.new_l2(&self.store, at)?;
        tables.set_l1_entry(&self.store, l1_index, at)?;
        Ok(at)
    }

    /// Writes whole sectors of `data` at guest `at`, inside one cluster.
    fn write_in_cluster(&self, at: u64, data: &[u8]) -> Result<(), DriverError> {
        let cs = self.geometry.cluster_size();
        let (l1_index, l2_index, within) = self.split(at);
        let mut tables = self.lock();
        self.guard(&mut tables)?;
        let l2_offset = self.l2_for_write(&mut tables, l1_index)?;
        let entry = tables.l2(&self.store, l2_offset)?[l2_index];
        let fresh = entry == 0 || entry & COMPRESSED != 0;
        let cluster = if fresh {
            let new = self.aligned_end(&tables)?;
            let partial = (data.len() as u64) < cs;
            if entry != 0 && partial {
                // The rest of the cluster keeps its old (compressed) data.
                let mut old = self.inflate_cluster(entry)?;
                if let Some(c) = &self.cipher {
                    c.encrypt((at - within) / SECTOR, &mut old);
                }
                self.store.write_all_at(new, &old)?;
            } else {
                self.store.set_size(new + cs, Prealloc::OFF)?;
                if let (Some(c), true) = (&self.cipher, partial) {
                    self.encrypted_zeros(c, at - within, new, within, data.len() as u64)?;
                }
            }
            tables.end = tables.end.max(new + cs);
            new
        } else {
            entry
        };
        let host = cluster.checked_add(within).ok_or_else(eio)?;
        check_request(host, data.len() as u64)?;
        if tables.over_metadata(host, data.len() as u64) {
            return Err(eio());
        }
        match &self.cipher {
            Some(c) => {
                let mut sealed = data.to_vec();
                c.encrypt(at / SECTOR, &mut sealed);
                self.store.write_all_at(host, &sealed)?;
            }
            None => self.store.write_all_at(host, data)?,
        }
        // The data is in place before the L2 entry names its cluster: a
        // crash between leaves an unnamed cluster, not one reading zeros.
        if fresh {
            tables.set_l2_entry(&self.store, l2_offset, l2_index, cluster)?;
        }
        Ok(())
    }

    /// Readies the tables for a first write ([`Tables::guard`]).
    fn guard(&self, tables: &mut Tables) -> Result<(), DriverError> {
        tables.guard(&self.store, self.header_end, self.geometry.cluster_bits)
    }

    /// Writes encrypted zeros to the sectors of the new cluster at file
    /// offset `host` (guest `guest`) outside the `len` bytes at `within`,
    /// as qemu does: unencrypted zeros would read back as noise.
    fn encrypted_zeros(
        &self,
        cipher: &SectorCipher,
        guest: u64,
        host: u64,
        within: u64,
        len: u64,
    ) -> Result<(), DriverError> {
        let mut sector = [0u8; SECTOR as usize];
        let mut at = 0;
        while at < self.geometry.cluster_size() {
            if at < within || at >= within + len {
                sector.fill(0);
                cipher.encrypt((guest + at) / SECTOR, &mut sector);
                self.store.write_all_at(host + at, &sector)?;
            }
            at += SECTOR;
        }
        Ok(())
    }

    /// Writes whole sectors at a sector-aligned guest offset.
    fn write_sectors(&self, offset: u64, data: &[u8]) -> Result<(), DriverError> {
        let cs = self.geometry.cluster_size();
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let take = ((cs - at % cs) as usize).min(data.len() - done);
            self.write_in_cluster(at, &data[done..done + take])?;
            done += take;
        }
        Ok(())
    }

    /// Writes `packed`, the deflated `cluster`, as the compressed cluster
    /// at cluster-aligned guest `offset`; a cluster already allocated is
    /// overwritten uncompressed instead.
    fn write_packed(&self, offset: u64, cluster: &[u8], packed: &[u8]) -> Result<(), DriverError> {
        let (l1_index, l2_index, _) = self.split(offset);
        let mut tables = self.lock();
        self.guard(&mut tables)?;
        let l2_offset = self.l2_for_write(&mut tables, l1_index)?;
        if tables.l2(&self.store, l2_offset)?[l2_index] != 0 {
            drop(tables);
            return self.write_sectors(offset, cluster);
        }
        let at = tables.end;
        let len = packed.len() as u64;
        let bits = self.geometry.cluster_bits;
        if at + len >= 1u64 << (63 - bits) {
            return Err(eio());
        }
        self.store.write_all_at(at, packed)?;
        tables.end = at + len;
        let entry = COMPRESSED | len << (63 - bits) | at;
        tables.set_l2_entry(&self.store, l2_offset, l2_index, entry)
    }
}

impl qimg_driver_api::ImageImpl for QcowImage {
    fn virtual_size(&self) -> u64 {
        self.geometry.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        let inside = self
            .geometry
            .size
            .saturating_sub(offset)
            .min(buf.len() as u64) as usize;
        let (data, beyond) = buf.split_at_mut(inside);
        beyond.fill(0);
        self.read_inside(offset, data)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        let end = offset.checked_add(buf.len() as u64).ok_or_else(eio)?;
        if end > self.geometry.size {
            return Err(eio());
        }
        if buf.is_empty() {
            return Ok(());
        }
        let start = offset - offset % SECTOR;
        let stop = end.next_multiple_of(SECTOR);
        if start == offset && stop == end {
            return self.write_sectors(offset, buf);
        }
        // Complete the first and last sectors from what they read now.
        let mut whole = vec![0u8; (stop - start) as usize];
        self.read_inside(start, &mut whole[..SECTOR as usize])?;
        let last = whole.len() - SECTOR as usize;
        self.read_inside(stop - SECTOR, &mut whole[last..])?;
        let head = (offset - start) as usize;
        whole[head..head + buf.len()].copy_from_slice(buf);
        self.write_sectors(start, &whole)
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> Result<(), DriverError> {
        // The format cannot mark clusters as zero: qemu writes zeros.
        if flags & zero_flags::NO_FALLBACK != 0 {
            return Err(DriverError::unsupported("Operation not supported"));
        }
        let zeros = vec![0u8; ZERO_CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK);
            self.write_at(offset + done, &zeros[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    /// As qemu reports them: unallocated clusters are not this layer's;
    /// compressed clusters are compressed data, the clusters of an
    /// encrypted image data, both at no offset it names; the others are
    /// data at their offset.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        let len = len.min(self.geometry.size.saturating_sub(offset));
        let mut out: Vec<Extent> = Vec::new();
        let mut done = 0;
        while done < len && out.len() < 1024 {
            let at = offset + done;
            let (mapping, n) = self.map_run(at, len - done)?;
            let (flags, host_offset) = match mapping {
                Mapping::Unallocated => (0, 0),
                Mapping::Compressed(_) => (
                    extent_flags::DATA | extent_flags::ALLOCATED | extent_flags::COMPRESSED,
                    0,
                ),
                Mapping::Data(_) if self.encrypted => {
                    (extent_flags::DATA | extent_flags::ALLOCATED, 0)
                }
                Mapping::Data(host) => (
                    extent_flags::DATA | extent_flags::ALLOCATED | extent_flags::OFFSET_VALID,
                    host,
                ),
            };
            out.push(Extent {
                offset: at,
                length: n,
                flags,
                store: 0,
                host_offset,
            });
            done += n;
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), DriverError> {
        self.store.sync()
    }

    fn info(&self) -> Result<ImageInfo, DriverError> {
        Ok(ImageInfo {
            cluster_size: Some(self.geometry.cluster_size()),
            dirty_flag: Some(false),
            encrypted: self.encrypted.then_some(true),
            backing_filename: self.backing_name.clone(),
            ..ImageInfo::default()
        })
    }

    fn store_name(&self, _index: u32) -> String {
        self.store.display_name()
    }

    /// Compresses one cluster, as qemu: a cluster deflate cannot shrink is
    /// written as it is; the image's last cluster may be short, and is
    /// padded with zeros. An empty write at 0 ends a compressed copy.
    fn write_compressed(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        if buf.is_empty() {
            return Ok(());
        }
        let cs = self.geometry.cluster_size();
        let end = offset.checked_add(buf.len() as u64).ok_or_else(eio)?;
        let whole = buf.len() as u64 == cs && end <= self.geometry.size;
        let last = (buf.len() as u64) < cs && end == self.geometry.size;
        if !offset.is_multiple_of(cs) || !(whole || last) {
            return Err(DriverError::from_errno(EINVAL, "Invalid argument"));
        }
        let mut cluster = buf.to_vec();
        cluster.resize(cs as usize, 0);
        // Compressed clusters are never encrypted: an encrypted image
        // stores its clusters whole.
        match deflate(&cluster).filter(|_| !self.encrypted) {
            Some(packed) => self.write_packed(offset, &cluster, &packed),
            None => self.write_at(offset, buf),
        }
    }
}
