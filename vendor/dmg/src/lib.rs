//! qimg driver for Apple disk images (UDIF dmg), read-only, built as a
//! vendor builds a qimg driver: against qimg-driver-api alone (see
//! templates/driver), loaded from its own drop-in manifest.
//!
//! A dmg ends with a trailer ([`trailer`]) naming a resource fork or an
//! XML property list ([`fork`]) that holds blkx tables ([`mish`]): chunks
//! of zeros, raw sectors, or zlib or bzip2 streams. A chunk is read or
//! decompressed whole (at most 64 MiB, and never more than its table says);
//! the last one is kept, since reads come in pieces smaller than a chunk.

#![warn(missing_docs)]

pub mod fork;
pub mod mish;
pub mod trailer;

use mish::{Chunk, Chunks, Kind, Skipped};
use qimg_driver_api::schema::{CreateOption, CreateRequest, ImageInfo};
use qimg_driver_api::{extent_flags, open_flags};
use qimg_driver_api::{
    ByteStoreBox, DriverError, DriverImpl, Extent, HostExt, HostServicesBox, ImageImpl, StoreExt,
};
use std::io::Read;
use std::sync::{Arc, Mutex};
use trailer::Trailer;

qimg_driver_api::export_drivers!(DmgDriver);

/// The format's name, as `-f` spells it.
pub const FORMAT: &str = "dmg";
/// EPERM, what qemu-img reports for writes to a read-only format.
const EPERM: i32 = 1;
/// EIO: what qemu-img reports for a sector it cannot read.
const EIO: i32 = 5;
/// EINVAL: what qemu-img reports for most damaged trailers and tables.
const EINVAL: i32 = 22;
/// EFBIG, for a disk past what qemu's block layer addresses.
const EFBIG: i32 = 27;
/// The largest disk qemu's block layer addresses: `INT64_MAX` rounded
/// down to 1 GiB (its `BDRV_MAX_LENGTH`).
const MAX_LENGTH: u64 = i64::MAX as u64 & !((1 << 30) - 1);
/// Guest sector size.
const SECTOR: u64 = 512;

/// Why a dmg cannot be opened; the messages are qemu-img's where it has
/// one.
#[derive(Debug, PartialEq, Eq)]
pub enum DmgError {
    /// The file is shorter than a trailer.
    TooShort,
    /// No "koly" signature where the trailer must be.
    NoTrailer,
    /// A chunk to decompress or read has more than 64 MiB of sectors.
    SectorCount(u64, u32),
    /// A chunk's data is longer than 64 MiB.
    Length(u64, u32),
    /// The tables map no sector at all (qemu-img crashes on such an image).
    NoChunks,
}

impl From<DmgError> for DriverError {
    fn from(e: DmgError) -> DriverError {
        match e {
            DmgError::TooShort => {
                DriverError::invalid_image("dmg file must be at least 512 bytes long")
            }
            DmgError::NoTrailer => {
                DriverError::invalid_image("Could not locate UDIF trailer in dmg file")
            }
            DmgError::SectorCount(n, i) => DriverError::invalid_image(format!(
                "sector count {n} for chunk {i} is larger than max ({})",
                mish::MAX_SECTORS
            )),
            DmgError::Length(n, i) => DriverError::invalid_image(format!(
                "length {n} for chunk {i} is larger than max ({})",
                mish::MAX_LENGTH
            )),
            DmgError::NoChunks => DriverError::invalid_image(
                "dmg image has no blkx chunks: its resource fork or property list is empty or too short",
            ),
        }
    }
}

/// A fork or table that does not fit where it must: qemu-img says no more
/// than "Invalid argument" (naming the file twice, as its generic open
/// error does).
pub fn invalid(store: &ByteStoreBox) -> DriverError {
    DriverError::from_errno(
        EINVAL,
        format!(
            "Could not open '{}': Invalid argument",
            store.display_name()
        ),
    )
}

/// The dmg format driver.
pub struct DmgDriver;

impl DriverImpl for DmgDriver {
    fn name(&self) -> &str {
        FORMAT
    }

    fn description(&self) -> &str {
        "Apple disk image (UDIF dmg, read-only)"
    }

    fn capabilities(&self) -> u64 {
        0
    }

    /// dmg has no magic at its start: qemu-img goes by the `.dmg` name,
    /// with a score of 2 (above raw, below any magic).
    fn probe(&self, _head: &[u8], filename: &str) -> i32 {
        if filename.len() > 4 && filename.ends_with(".dmg") {
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
            "Format driver 'dmg' does not support image creation",
        ))
    }

    fn open(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        if flags & open_flags::WRITE != 0 {
            return Err(DriverError::from_errno(EPERM, "Image is read-only"));
        }
        let trailer = Trailer::read(&store)?;
        let mut chunks = Chunks::default();
        if trailer.rsrc_fork.1 != 0 {
            fork::read_resource_fork(&store, &mut chunks, trailer.data_fork, trailer.rsrc_fork)?;
        } else if trailer.xml.1 != 0 {
            fork::read_xml(&store, &mut chunks, trailer.data_fork, trailer.xml)?;
        } else {
            return Err(invalid(&store));
        }
        if chunks.list.is_empty() && trailer.sectors != 0 {
            return Err(DmgError::NoChunks.into());
        }
        for skipped in &chunks.skipped {
            match skipped {
                Skipped::Lzfse => host.warning(
                    "dmg-lzfse module is missing, accessing lzfse compressed blocks will result in I/O errors",
                ),
                Skipped::Unknown(t) => host.warning(&format!(
                    "Image contains chunks of unknown type {t:x}, accessing them will result in I/O errors"
                )),
                Skipped::Silent => {}
            }
        }
        // As qemu's block layer refuses a disk past what it addresses.
        let size = trailer
            .sectors
            .checked_mul(SECTOR)
            .filter(|&s| s <= MAX_LENGTH)
            .ok_or_else(|| {
                DriverError::from_errno(
                    EFBIG,
                    "Could not refresh total sector count: File too large",
                )
            })?;
        Ok(Box::new(DmgImage {
            store,
            size,
            chunks,
            cached: Mutex::new(None),
        }))
    }
}

/// A chunk and its guest bytes.
type Cached = (Chunk, Arc<Vec<u8>>);

/// An open dmg.
pub struct DmgImage {
    /// The image file.
    store: ByteStoreBox,
    /// Guest size in bytes.
    size: u64,
    /// Every chunk, in sector order.
    chunks: Chunks,
    /// The chunk read last.
    cached: Mutex<Option<Cached>>,
}

/// The error for a sector that cannot be read.
fn eio() -> DriverError {
    DriverError::from_errno(EIO, "Input/output error")
}

impl DmgImage {
    /// The guest bytes of `chunk` (not a zero chunk): exactly `sectors`
    /// sectors, or EIO.
    fn chunk_data(&self, chunk: &Chunk) -> Result<Arc<Vec<u8>>, DriverError> {
        if let Some((cached, data)) = self.cached.lock().map_err(|_| eio())?.as_ref() {
            if cached == chunk {
                return Ok(Arc::clone(data));
            }
        }
        // Bounded by mish::MAX_SECTORS and mish::MAX_LENGTH.
        let size = (chunk.sectors * SECTOR) as usize;
        let mut stored = vec![0u8; chunk.length as usize];
        self.store.read_or_zero_at(chunk.offset, &mut stored)?;
        let data = match chunk.kind {
            Kind::Raw => {
                stored.resize(size, 0);
                stored
            }
            Kind::Zlib => inflate(&stored, size)?,
            Kind::Bzip2 => bunzip2(&stored, size)?,
            Kind::Zero | Kind::Ignore => vec![0u8; size],
        };
        let data = Arc::new(data);
        *self.cached.lock().map_err(|_| eio())? = Some((*chunk, Arc::clone(&data)));
        Ok(data)
    }
}

/// Decompresses one zlib stream that must yield exactly `size` bytes.
fn inflate(compressed: &[u8], size: usize) -> Result<Vec<u8>, DriverError> {
    use flate2::{Decompress, FlushDecompress, Status};
    let mut out = vec![0u8; size];
    let mut z = Decompress::new(true);
    match z.decompress(compressed, &mut out, FlushDecompress::Finish) {
        Ok(Status::StreamEnd) if z.total_out() == size as u64 => Ok(out),
        _ => Err(eio()),
    }
}

/// Decompresses one bzip2 stream that must yield exactly `size` bytes: one
/// byte more than that is an error, not a bigger buffer.
fn bunzip2(compressed: &[u8], size: usize) -> Result<Vec<u8>, DriverError> {
    let mut out = Vec::with_capacity(size);
    let mut decoder = bzip2::read::BzDecoder::new(compressed).take(size as u64 + 1);
    match decoder.read_to_end(&mut out) {
        Ok(n) if n == size => Ok(out),
        _ => Err(eio()),
    }
}

impl ImageImpl for DmgImage {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        let inside = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, beyond) = buf.split_at_mut(inside);
        beyond.fill(0);
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let chunk = self.chunks.find(at / SECTOR).ok_or_else(eio)?;
            let start = chunk.sector * SECTOR;
            let end = chunk.end().saturating_mul(SECTOR);
            let take = (end - at).min((data.len() - done) as u64) as usize;
            let part = &mut data[done..done + take];
            if matches!(chunk.kind, Kind::Zero | Kind::Ignore) {
                part.fill(0);
            } else {
                let bytes = self.chunk_data(chunk)?;
                let from = (at - start) as usize;
                part.copy_from_slice(&bytes[from..from + take]);
            }
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

    /// qemu-img's dmg driver reports no allocation: everything is data of
    /// this layer, at no offset it names. `map` shows exactly that.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        let length = len.min(self.size.saturating_sub(offset));
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
