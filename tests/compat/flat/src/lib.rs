//! The "flat" format: an out-of-tree vendor driver built against frozen copies
//! of `qimg-driver-api`, so that tests can prove today's host still loads
//! libraries built for older driver ABIs.
//!
//! The same source is compiled against ABI 1.0, 1.1 and 1.2 (one tiny crate
//! each, `tests/compat/flat-1.x`), so it uses only what ABI 1.0 offers.
//!
//! Layout: a 512-byte header (magic `QIMGFLAT`, little-endian `u32` version 1,
//! little-endian `u64` virtual size, the rest zero) followed by the guest data
//! one to one: guest offset `X` is at file offset `512 + X`. The file may be
//! shorter than that (sparse copies): whatever lies past its end reads as zeros.
#![warn(missing_docs)]

use qimg_driver_api::abi_stable::std_types::{RSlice, RSliceMut};
use qimg_driver_api::schema::{CreateOption, CreateRequest, ImageInfo, OptionType};
use qimg_driver_api::{caps, extent_flags, open_flags, zero_flags};
use qimg_driver_api::{
    ByteStoreBox, DriverError, DriverImpl, Extent, HostServicesBox, ImageImpl, Prealloc,
};
use std::sync::atomic::{AtomicU64, Ordering};

qimg_driver_api::export_drivers!(FlatDriver);

/// The first bytes of every flat image.
pub const MAGIC: &[u8; 8] = b"QIMGFLAT";
/// The only header version this driver knows.
pub const VERSION: u32 = 1;
/// Size of the header; guest data starts right after it.
pub const HEADER_SIZE: u64 = 512;
/// Largest virtual size accepted (keeps `HEADER_SIZE + size` far from overflow).
pub const MAX_SIZE: u64 = 1 << 62;
/// At most this many extents are returned by one `block_status` call.
const MAX_EXTENTS: usize = 1024;
/// EPERM: what a write to an image opened read-only gives.
const EPERM: i32 = 1;

/// Builds the header of an image of `size` guest bytes.
fn header(size: u64) -> [u8; HEADER_SIZE as usize] {
    let mut head = [0u8; HEADER_SIZE as usize];
    head[..8].copy_from_slice(MAGIC);
    head[8..12].copy_from_slice(&VERSION.to_le_bytes());
    head[12..20].copy_from_slice(&size.to_le_bytes());
    head
}

/// Parses a header, returning the virtual size it records.
fn parse_header(head: &[u8]) -> Result<u64, DriverError> {
    if head.len() < 20 || &head[..8] != MAGIC {
        return Err(DriverError::invalid_image("Image is not in flat format"));
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&head[8..12]);
    let version = u32::from_le_bytes(version);
    if version != VERSION {
        return Err(DriverError::invalid_image(format!(
            "Unsupported flat version {version}"
        )));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&head[12..20]);
    let size = u64::from_le_bytes(size);
    if size > MAX_SIZE {
        return Err(DriverError::invalid_image(format!(
            "Image size {size} is too large (at most {MAX_SIZE})"
        )));
    }
    Ok(size)
}

/// Refuses a guest size the format cannot record.
fn check_size(size: u64) -> Result<(), DriverError> {
    if size > MAX_SIZE {
        return Err(DriverError::invalid_argument(format!(
            "Image size {size} is too large for the flat format (at most {MAX_SIZE})"
        )));
    }
    Ok(())
}

/// Checks that `[offset, offset+len)` lies inside an image of `size` bytes.
fn check_range(offset: u64, len: u64, size: u64) -> Result<(), DriverError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DriverError::invalid_argument(format!(
            "Request out of range: offset {offset} length {len} beyond image size {size}"
        ))),
    }
}

/// Writes all of `buf` at store offset `offset`.
fn write_all(store: &ByteStoreBox, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
    store
        .write_at(offset, RSlice::from_slice(buf))
        .into_result()
}

/// Fills `buf` from store offset `offset`; what lies past the end of the store
/// reads as zeros.
fn read_or_zero(store: &ByteStoreBox, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
    let mut done = 0usize;
    while done < buf.len() {
        let n = store
            .read_at(
                offset + done as u64,
                RSliceMut::from_mut_slice(&mut buf[done..]),
            )
            .into_result()?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        // A store never returns more than asked; stay in bounds regardless.
        done = done.saturating_add(usize::try_from(n).unwrap_or(usize::MAX));
        done = done.min(buf.len());
    }
    Ok(())
}

/// The flat format driver.
pub struct FlatDriver;

impl DriverImpl for FlatDriver {
    fn name(&self) -> &str {
        "flat"
    }
    fn description(&self) -> &str {
        "Flat image with a 512-byte header (ABI compatibility fixture)"
    }
    fn capabilities(&self) -> u64 {
        caps::CREATE | caps::WRITE | caps::RESIZE | caps::ZERO_INIT
    }
    fn probe(&self, head: &[u8], _filename: &str) -> i32 {
        if head.starts_with(MAGIC) {
            100
        } else {
            0
        }
    }
    fn create_options(&self) -> Vec<CreateOption> {
        vec![CreateOption {
            name: "size".into(),
            kind: OptionType::Size,
            help: "Virtual disk size".into(),
            default: None,
        }]
    }
    fn create(
        &self,
        store: ByteStoreBox,
        _host: HostServicesBox,
        request: CreateRequest,
    ) -> Result<(), DriverError> {
        check_size(request.size)?;
        write_all(&store, 0, &header(request.size))?;
        store
            .set_len(HEADER_SIZE + request.size, Prealloc::OFF)
            .into_result()
    }
    fn open(
        &self,
        store: ByteStoreBox,
        _host: HostServicesBox,
        flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        let mut head = [0u8; HEADER_SIZE as usize];
        read_or_zero(&store, 0, &mut head)?;
        let size = parse_header(&head)?;
        Ok(Box::new(FlatImage {
            store,
            size: AtomicU64::new(size),
            writable: flags & open_flags::WRITE != 0,
        }))
    }
}

/// An open flat image.
struct FlatImage {
    store: ByteStoreBox,
    size: AtomicU64,
    writable: bool,
}

impl FlatImage {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn check_writable(&self) -> Result<(), DriverError> {
        if self.writable {
            Ok(())
        } else {
            Err(DriverError::from_errno(EPERM, "Operation not permitted"))
        }
    }
}

impl ImageImpl for FlatImage {
    fn virtual_size(&self) -> u64 {
        self.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        // Only the part inside the guest comes from the store; the rest is zeros.
        let inside = self.size().saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, beyond) = buf.split_at_mut(inside);
        beyond.fill(0);
        if data.is_empty() {
            return Ok(());
        }
        read_or_zero(&self.store, HEADER_SIZE + offset, data)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        self.check_writable()?;
        check_range(offset, buf.len() as u64, self.size())?;
        write_all(&self.store, HEADER_SIZE + offset, buf)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> Result<(), DriverError> {
        self.check_writable()?;
        check_range(offset, len, self.size())?;
        // Past the end of a short file everything reads as zeros already; do
        // not grow the file for it.
        let start = HEADER_SIZE + offset;
        let store_len = self.store.len().into_result()?;
        let len = len.min(store_len.saturating_sub(start));
        if len == 0 {
            return Ok(());
        }
        let punch = flags & zero_flags::MAY_UNMAP != 0;
        self.store.write_zeroes(start, len, punch).into_result()
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        let len = len.min(self.size().saturating_sub(offset));
        let mut extents: Vec<Extent> = Vec::new();
        let mut done = 0u64;
        while done < len && extents.len() < MAX_EXTENTS {
            let at = offset + done;
            let rest = len - done;
            let run = self.store.run_at(HEADER_SIZE + at, rest).into_result()?;
            let length = run.length.clamp(1, rest);
            let flags = if run.data {
                extent_flags::DATA | extent_flags::ALLOCATED | extent_flags::OFFSET_VALID
            } else {
                extent_flags::ZERO | extent_flags::ALLOCATED
            };
            match extents.last_mut() {
                Some(last) if last.end() == at && last.flags == flags => {
                    last.length += length;
                }
                _ => extents.push(Extent {
                    offset: at,
                    length,
                    flags,
                    store: 0,
                    host_offset: if run.data { HEADER_SIZE + at } else { 0 },
                }),
            }
            done += length;
        }
        Ok(extents)
    }
    fn flush(&self) -> Result<(), DriverError> {
        self.store.flush().into_result()
    }
    fn info(&self) -> Result<ImageInfo, DriverError> {
        Ok(ImageInfo::default())
    }
    fn store_name(&self, _index: u32) -> String {
        self.store.name().into()
    }
    fn resize(&self, new_size: u64, prealloc: Prealloc, _shrink: bool) -> Result<(), DriverError> {
        self.check_writable()?;
        check_size(new_size)?;
        if prealloc == Prealloc::METADATA {
            return Err(DriverError::unsupported(
                "Unsupported preallocation mode: metadata",
            ));
        }
        let new_len = HEADER_SIZE + new_size;
        if new_size >= self.size() {
            // Grow the data area first: a crash in between leaves the old,
            // still valid, size in the header.
            self.store.set_len(new_len, prealloc).into_result()?;
            write_all(&self.store, 0, &header(new_size))?;
        } else {
            write_all(&self.store, 0, &header(new_size))?;
            self.store.set_len(new_len, prealloc).into_result()?;
        }
        self.store.flush().into_result()?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }
}
