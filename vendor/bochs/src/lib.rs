//! qimg driver for Bochs "growing" redolog images, read-only, built as a
//! vendor builds a qimg driver: against qimg-driver-api alone (see
//! templates/driver), loaded from its own drop-in manifest.
//!
//! The header and catalog are described in [`header`]. Reads go extent by
//! extent: an extent whose catalog entry is `0xffffffff` reads as zeros;
//! otherwise its bitmap says, sector by sector, whether the sector was
//! written (read from the block's data) or not (zeros). Anything past the
//! end of the file reads as zeros, as it does in qemu-img.

#![warn(missing_docs)]

pub mod header;

use header::{Header, HEADER_SIZE, MAX_CATALOG, SECTOR};
use qimg_driver_api::schema::{CreateOption, CreateRequest, ImageInfo};
use qimg_driver_api::{extent_flags, open_flags};
use qimg_driver_api::{
    ByteStoreBox, DriverError, DriverImpl, Extent, HostServicesBox, ImageImpl, StoreExt,
};

qimg_driver_api::export_drivers!(BochsDriver);

/// The format's name, as `-f` spells it.
pub const FORMAT: &str = "bochs";
/// A catalog entry for an extent never written.
const UNALLOCATED: u32 = 0xffff_ffff;
/// EPERM, what qemu-img reports for writes to a read-only format.
const EPERM: i32 = 1;
/// EIO, for a data offset no file can hold.
const EIO: i32 = 5;

/// The bochs format driver.
pub struct BochsDriver;

impl DriverImpl for BochsDriver {
    fn name(&self) -> &str {
        FORMAT
    }

    fn description(&self) -> &str {
        "Bochs growing redolog image (read-only)"
    }

    fn capabilities(&self) -> u64 {
        0
    }

    fn probe(&self, head: &[u8], _filename: &str) -> i32 {
        if header::is_bochs(head) {
            100
        } else {
            0
        }
    }

    fn create_options(&self) -> Vec<CreateOption> {
        Vec::new()
    }

    fn create(
        &self,
        _store: ByteStoreBox,
        _host: HostServicesBox,
        _request: CreateRequest,
    ) -> Result<(), DriverError> {
        Err(DriverError::unsupported(
            "Format driver 'bochs' does not support image creation",
        ))
    }

    fn open(
        &self,
        store: ByteStoreBox,
        _host: HostServicesBox,
        flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        if flags & open_flags::WRITE != 0 {
            return Err(DriverError::from_errno(EPERM, "Image is read-only"));
        }
        // A short file reads as if padded with zeros, as in qemu-img.
        let mut head = [0u8; HEADER_SIZE];
        store.read_or_zero_at(0, &mut head)?;
        let header = Header::parse(&head)?;
        let catalog = read_catalog(&store, &header)?;
        Ok(Box::new(BochsImage {
            store,
            header,
            catalog,
        }))
    }
}

/// Reads the catalog. Only the entries inside the file are read (and
/// allocated): those past its end read as zeros, entry 0, without being
/// stored, so a header's catalog size never sizes an allocation beyond the
/// file's (and never beyond [`MAX_CATALOG`] entries either).
fn read_catalog(store: &ByteStoreBox, header: &Header) -> Result<Vec<u32>, DriverError> {
    let file_len = store.size()?;
    let in_file = file_len.saturating_sub(header.catalog_offset) / 4;
    let entries = in_file.min(u64::from(header.catalog_entries.min(MAX_CATALOG))) as usize;
    let mut raw = vec![0u8; entries * 4];
    store.read_or_zero_at(header.catalog_offset, &mut raw)?;
    Ok(raw
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// An open bochs image.
pub struct BochsImage {
    /// The image file.
    store: ByteStoreBox,
    /// The checked header.
    header: Header,
    /// The catalog entries that lie inside the file.
    catalog: Vec<u32>,
}

impl BochsImage {
    /// The file offset of the block (bitmap, then data) of extent `index`,
    /// or `None` for an extent never written.
    fn block_offset(&self, index: u64) -> Result<Option<u64>, DriverError> {
        let entry = usize::try_from(index)
            .ok()
            .and_then(|i| self.catalog.get(i))
            .copied()
            .unwrap_or(0);
        if entry == UNALLOCATED {
            return Ok(None);
        }
        SECTOR
            .checked_mul(u64::from(entry))
            .and_then(|n| n.checked_mul(self.header.block_sectors))
            .and_then(|n| n.checked_add(self.header.data_offset))
            .filter(|&n| n <= i64::MAX as u64)
            .map(Some)
            .ok_or_else(|| DriverError::from_errno(EIO, "Input/output error"))
    }

    /// Fills `buf` with the guest bytes at `offset`, which lie in one extent.
    fn read_in_extent(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        let h = &self.header;
        let Some(block) = self.block_offset(offset / h.extent_size)? else {
            buf.fill(0);
            return Ok(());
        };
        let within = offset % h.extent_size;
        let first = within / SECTOR;
        let last = (within + buf.len() as u64 - 1) / SECTOR;
        let mut bitmap = vec![0u8; (last / 8 - first / 8 + 1) as usize];
        self.store.read_or_zero_at(block + first / 8, &mut bitmap)?;
        let written =
            |sector: u64| bitmap[(sector / 8 - first / 8) as usize] >> (sector % 8) & 1 != 0;
        let data = block + h.bitmap_sectors * SECTOR;
        let mut done = 0usize;
        while done < buf.len() {
            let at = within + done as u64;
            let sector = at / SECTOR;
            let set = written(sector);
            // A run of sectors that are all written or all not.
            let mut end = sector + 1;
            while end <= last && written(end) == set {
                end += 1;
            }
            let take = (end * SECTOR - at).min((buf.len() - done) as u64) as usize;
            let part = &mut buf[done..done + take];
            if set {
                self.store.read_or_zero_at(data + at, part)?;
            } else {
                part.fill(0);
            }
            done += take;
        }
        Ok(())
    }
}

impl ImageImpl for BochsImage {
    fn virtual_size(&self) -> u64 {
        self.header.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        let size = self.header.size;
        let inside = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, beyond) = buf.split_at_mut(inside);
        beyond.fill(0);
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let room = self.header.extent_size - at % self.header.extent_size;
            let take = room.min((data.len() - done) as u64) as usize;
            self.read_in_extent(at, &mut data[done..done + take])?;
            done += take;
        }
        Ok(())
    }

    fn write_at(&self, _offset: u64, _buf: &[u8]) -> Result<(), DriverError> {
        Err(DriverError::from_errno(EPERM, "Operation not permitted"))
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _flags: u32) -> Result<(), DriverError> {
        Err(DriverError::from_errno(EPERM, "Operation not permitted"))
    }

    /// qemu-img's bochs driver reports no allocation: everything is data
    /// of this layer, at no offset it names. `map` shows exactly that.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        let length = len.min(self.header.size.saturating_sub(offset));
        if length == 0 {
            return Ok(Vec::new());
        }
        Ok(vec![Extent {
            offset,
            length,
            flags: extent_flags::DATA | extent_flags::ALLOCATED,
            store: 0,
            host_offset: 0,
        }])
    }

    fn flush(&self) -> Result<(), DriverError> {
        Ok(())
    }

    fn info(&self) -> Result<ImageInfo, DriverError> {
        Ok(ImageInfo::default())
    }

    fn store_name(&self, _index: u32) -> String {
        self.store.display_name()
    }
}
