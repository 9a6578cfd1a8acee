//! qimg driver for cloop (compressed loop) V2.0 images, read-only, built
//! as a vendor builds a qimg driver: against qimg-driver-api alone (see
//! templates/driver), loaded from its own drop-in manifest.
//!
//! The image is a sequence of zlib streams, one per block of `block_size`
//! guest bytes, found through the offsets table ([`header`]). A block is
//! decompressed whole; the last one read is kept, since reads come in
//! pieces smaller than a block.

#![warn(missing_docs)]

pub mod header;

use flate2::{Decompress, FlushDecompress, Status};
use header::{Header, Offsets, MAX_COMPRESSED, OFFSETS_AT};
use qimg_driver_api::schema::{CreateOption, CreateRequest, ImageInfo};
use qimg_driver_api::{extent_flags, open_flags};
use qimg_driver_api::{
    ByteStoreBox, DriverError, DriverImpl, Extent, HostServicesBox, ImageImpl, StoreExt,
};
use std::sync::{Arc, Mutex};

qimg_driver_api::export_drivers!(CloopDriver);

/// The format's name, as `-f` spells it.
pub const FORMAT: &str = "cloop";
/// EPERM, what qemu-img reports for writes to a read-only format.
const EPERM: i32 = 1;
/// EIO: what qemu-img reports for a block that does not decompress.
const EIO: i32 = 5;

/// The cloop format driver.
pub struct CloopDriver;

impl DriverImpl for CloopDriver {
    fn name(&self) -> &str {
        FORMAT
    }

    fn description(&self) -> &str {
        "cloop V2.0 compressed loop image (read-only)"
    }

    fn capabilities(&self) -> u64 {
        0
    }

    /// qemu-img gives the preamble a score of 2: above raw, below any magic.
    fn probe(&self, head: &[u8], _filename: &str) -> i32 {
        if header::is_cloop(head) {
            2
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
            "Format driver 'cloop' does not support image creation",
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
        // Past the file's end everything reads as zeros, as in qemu-img.
        let mut fields = [0u8; 8];
        store.read_or_zero_at(Header::AT, &mut fields)?;
        let header = Header::parse(&fields)?;
        let entries = u64::from(header.blocks) + 1;
        // Only the part of the table inside the file is read and kept: the
        // header's block count never sizes an allocation beyond the file.
        let in_file = store.size()?.saturating_sub(OFFSETS_AT).div_ceil(8);
        let mut table = vec![0u8; (in_file.min(entries) * 8) as usize];
        store.read_or_zero_at(OFFSETS_AT, &mut table)?;
        let offsets = Offsets::parse(&table, entries)?;
        Ok(Box::new(CloopImage {
            store,
            header,
            offsets,
            cached: Mutex::new(None),
        }))
    }
}

/// A decompressed block: its index and its bytes.
type Block = (u32, Arc<Vec<u8>>);

/// An open cloop image.
pub struct CloopImage {
    /// The image file.
    store: ByteStoreBox,
    /// Block size and count.
    header: Header,
    /// Where each block's zlib stream starts and ends.
    offsets: Offsets,
    /// The block read last.
    cached: Mutex<Option<Block>>,
}

impl CloopImage {
    /// Block `index`, decompressed: exactly `block_size` bytes, or EIO.
    fn block(&self, index: u32) -> Result<Arc<Vec<u8>>, DriverError> {
        if let Some((at, data)) = self.cached.lock().map_err(poisoned)?.as_ref() {
            if *at == index {
                return Ok(Arc::clone(data));
            }
        }
        let start = self.offsets.get(u64::from(index));
        let end = self.offsets.get(u64::from(index) + 1);
        // Checked when the table was read; a stored length never exceeds it.
        let length = end.saturating_sub(start).min(MAX_COMPRESSED);
        let mut compressed = vec![0u8; length as usize];
        self.store.read_or_zero_at(start, &mut compressed)?;
        let data = Arc::new(inflate(&compressed, self.header.block_size as usize)?);
        *self.cached.lock().map_err(poisoned)? = Some((index, Arc::clone(&data)));
        Ok(data)
    }
}

/// Decompresses one zlib stream that must yield exactly `size` bytes:
/// never more (the output buffer is the block), never fewer.
fn inflate(compressed: &[u8], size: usize) -> Result<Vec<u8>, DriverError> {
    let mut out = vec![0u8; size];
    let mut z = Decompress::new(true);
    let status = z.decompress(compressed, &mut out, FlushDecompress::Finish);
    match status {
        Ok(Status::StreamEnd) if z.total_out() == size as u64 => Ok(out),
        _ => Err(DriverError::from_errno(EIO, "Input/output error")),
    }
}

/// The error for a lock a panicking thread left behind.
fn poisoned<T>(_: T) -> DriverError {
    DriverError::from_errno(EIO, "cloop block cache is unusable after a fault")
}

impl ImageImpl for CloopImage {
    fn virtual_size(&self) -> u64 {
        self.header.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        let size = self.header.size();
        let inside = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, beyond) = buf.split_at_mut(inside);
        beyond.fill(0);
        let block_size = u64::from(self.header.block_size);
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            // Below the guest size, which is at most 2^32 sectors of blocks.
            let index = (at / block_size) as u32;
            let within = (at % block_size) as usize;
            let block = self.block(index)?;
            let take = (block.len() - within).min(data.len() - done);
            data[done..done + take].copy_from_slice(&block[within..within + take]);
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

    /// qemu-img's cloop driver reports no allocation: everything is data of
    /// this layer, at no offset it names. `map` shows exactly that.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        let length = len.min(self.header.size().saturating_sub(offset));
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

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 64);
        let mut z = Compress::new(Compression::default(), true);
        z.compress_vec(data, &mut out, FlushCompress::Finish)
            .unwrap();
        out
    }

    #[test]
    fn a_block_must_decompress_to_its_size() {
        let block = vec![7u8; 4096];
        assert_eq!(inflate(&deflate(&block), 4096).unwrap(), block);
        assert!(inflate(&deflate(&block), 2048).is_err());
        assert!(inflate(&deflate(&block[..1024]), 4096).is_err());
        assert!(inflate(b"not zlib", 4096).is_err());
    }
}
