//! The raw format: guest bytes are the file's bytes, one to one.
//!
//! Allocation comes straight from the store (SEEK_DATA / SEEK_HOLE), so `map`
//! shows the file's holes. Like qemu-img, `create` writes the first 4 KiB so the
//! file system's block size can later be probed from an allocated block.
//!
//! The open options `offset=` and `size=` (qemu's) make the image a window
//! into its file: guest byte 0 is file byte `offset`, and a given `size`
//! fixes the image's length.

use qimg_driver_api::schema::{
    CreateOption, CreateRequest, ImageInfo, MeasureRequest, MeasureResult, OptionType,
};
use qimg_driver_api::size::{option_message, parse_size};
use qimg_driver_api::{caps, extent_flags, open_flags, zero_flags};
use qimg_driver_api::{
    ByteStoreBox, DriverError, DriverImpl, Extent, HostExt, HostServicesBox, ImageImpl, Prealloc,
};
use qimg_driver_util::option;
use qimg_driver_util::{check_range, read_or_zero, write_all};
use std::sync::atomic::{AtomicU64, Ordering};

qimg_driver_api::export_drivers!(RawDriver);

/// Bytes qemu-img writes at the start of a new raw image (a smaller image gets
/// one sector).
const FIRST_BLOCK: u64 = 4096;
/// qemu's sector size: a raw image's virtual size is its file length rounded
/// up to a multiple of this, and a new image's file is made that long.
const SECTOR: u64 = 512;

fn round_to_sector(len: u64) -> u64 {
    // (Past the last whole sector, the last whole sector: no file is that long.)
    len.checked_next_multiple_of(SECTOR)
        .unwrap_or(u64::MAX / SECTOR * SECTOR)
}

/// The raw format driver.
pub struct RawDriver;

impl DriverImpl for RawDriver {
    fn name(&self) -> &str {
        "raw"
    }
    fn description(&self) -> &str {
        "Raw disk image"
    }
    fn capabilities(&self) -> u64 {
        caps::CREATE
            | caps::WRITE
            | caps::RESIZE
            | caps::MEASURE
            | caps::ZERO_INIT
            | caps::IDENTITY_MAPPED
    }
    fn probe(&self, _head: &[u8], _filename: &str) -> i32 {
        1
    }
    fn create_options(&self) -> Vec<CreateOption> {
        vec![option("size", OptionType::Size, "Virtual disk size")]
    }
    fn create(
        &self,
        store: ByteStoreBox,
        _host: HostServicesBox,
        request: CreateRequest,
    ) -> Result<(), DriverError> {
        let prealloc = match request.options.get("preallocation") {
            Some(name) => match Prealloc::parse(name) {
                Some(Prealloc::METADATA) => {
                    return Err(DriverError::unsupported(
                        "Unsupported preallocation mode: metadata",
                    ))
                }
                Some(mode) => mode,
                None => {
                    return Err(DriverError::invalid_argument(format!(
                        "invalid parameter value: {name}"
                    )))
                }
            },
            None => Prealloc::OFF,
        };
        let len = round_to_sector(request.size);
        store.set_len(len, prealloc).into_result()?;
        if len > 0 && prealloc != Prealloc::FULL {
            let first = if len >= FIRST_BLOCK {
                FIRST_BLOCK
            } else {
                SECTOR
            };
            write_all(&store, 0, &vec![0u8; first as usize])?;
        }
        Ok(())
    }
    fn open(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        let file_len = store.len().into_result()?;
        let window = Window::from_options(&host, file_len)?;
        let size = window
            .size
            .unwrap_or_else(|| round_to_sector(file_len - window.offset));
        Ok(Box::new(RawImage {
            store,
            size: AtomicU64::new(size),
            writable: flags & open_flags::WRITE != 0,
            offset: window.offset,
            fixed_size: window.size.is_some(),
        }))
    }
    fn measure(
        &self,
        request: MeasureRequest,
        _allocated: &[Extent],
    ) -> Result<MeasureResult, DriverError> {
        let size = round_to_sector(request.size);
        Ok(MeasureResult {
            required: size,
            fully_allocated: size,
            bitmaps: None,
        })
    }
}

/// The part of its file an image is: qemu's `offset=` and `size=` options.
struct Window {
    /// File offset of guest byte 0.
    offset: u64,
    /// The image's fixed length, if `size=` gave one.
    size: Option<u64>,
}

impl Window {
    /// Reads the options and checks them against the file's length, with
    /// qemu's messages.
    fn from_options(host: &HostServicesBox, file_len: u64) -> Result<Window, DriverError> {
        let number = |key: &str| -> Result<Option<u64>, DriverError> {
            host.option(key)
                .map(|text| {
                    parse_size(&text, 1)
                        .map_err(|e| DriverError::invalid_argument(option_message(key, &text, e)))
                })
                .transpose()
        };
        let offset = number("offset")?.unwrap_or(0);
        let size = number("size")?;
        if offset > file_len {
            return Err(DriverError::invalid_argument(format!(
                "Offset ({offset}) cannot be greater than size of the containing file ({file_len})"
            )));
        }
        if let Some(size) = size {
            if offset.checked_add(size).is_none_or(|end| end > file_len) {
                return Err(DriverError::invalid_argument(format!(
                    "The sum of offset ({offset}) and size ({size}) has to be smaller or equal \
                     to the  actual size of the containing file ({file_len})"
                )));
            }
            if size % SECTOR != 0 {
                return Err(DriverError::invalid_argument(
                    "Specified size is not multiple of 512",
                ));
            }
        }
        Ok(Window { offset, size })
    }
}

/// An open raw image.
struct RawImage {
    store: ByteStoreBox,
    size: AtomicU64,
    writable: bool,
    /// File offset of guest byte 0 (`offset=`).
    offset: u64,
    /// `size=` fixed the length: the image cannot be resized.
    fixed_size: bool,
}

impl RawImage {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn check_writable(&self) -> Result<(), DriverError> {
        if self.writable {
            Ok(())
        } else {
            Err(DriverError::from_errno(
                libc_eperm(),
                "Operation not permitted",
            ))
        }
    }
}

/// EPERM, the error a write to a read-only node gives.
fn libc_eperm() -> i32 {
    1
}

impl ImageImpl for RawImage {
    fn virtual_size(&self) -> u64 {
        self.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        // Past the image's end reads zeros, not the rest of a window's file.
        let inside = self.size().saturating_sub(offset).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(inside);
        tail.fill(0);
        read_or_zero(&self.store, self.offset + offset, head)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        self.check_writable()?;
        check_range(offset, buf.len() as u64, self.size())?;
        write_all(&self.store, self.offset + offset, buf)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> Result<(), DriverError> {
        self.check_writable()?;
        check_range(offset, len, self.size())?;
        self.store
            .write_zeroes(
                self.offset + offset,
                len,
                flags & zero_flags::MAY_UNMAP != 0,
            )
            .into_result()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DriverError> {
        self.check_writable()?;
        check_range(offset, len, self.size())?;
        self.store
            .write_zeroes(self.offset + offset, len, true)
            .into_result()
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        let len = len.min(self.size().saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        let run = self.store.run_at(self.offset + offset, len).into_result()?;
        let kind = if run.data {
            extent_flags::DATA
        } else {
            extent_flags::ZERO
        };
        Ok(vec![Extent {
            offset,
            length: run.length.clamp(1, len),
            flags: kind | extent_flags::ALLOCATED | extent_flags::OFFSET_VALID,
            store: 0,
            host_offset: self.offset + offset,
        }])
    }
    fn flush(&self) -> Result<(), DriverError> {
        self.store.flush().into_result()
    }
    fn info(&self) -> Result<ImageInfo, DriverError> {
        Ok(ImageInfo {
            dirty_flag: Some(false),
            ..ImageInfo::default()
        })
    }
    fn store_name(&self, _index: u32) -> String {
        self.store.name().into()
    }
    fn resize(&self, new_size: u64, prealloc: Prealloc, _shrink: bool) -> Result<(), DriverError> {
        self.check_writable()?;
        if self.fixed_size {
            return Err(DriverError::unsupported(
                "Cannot resize fixed-size raw disks",
            ));
        }
        if prealloc == Prealloc::METADATA {
            return Err(DriverError::unsupported(
                "Unsupported preallocation mode: metadata",
            ));
        }
        let file_len = self
            .offset
            .checked_add(new_size)
            .ok_or_else(|| DriverError::invalid_argument("Image size too large"))?;
        self.store.set_len(file_len, prealloc).into_result()?;
        self.size
            .store(round_to_sector(new_size), Ordering::Release);
        Ok(())
    }
}
