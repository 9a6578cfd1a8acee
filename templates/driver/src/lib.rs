//! A complete qimg format driver to start from: the "example" format.
//!
//! # The format
//!
//! ```text
//! offset  size  field
//!      0     8  magic, b"QIMGEXMP"
//!      8     4  version, little-endian u32, always 1
//!     12     4  reserved, zero
//!     16     8  virtual size in bytes, little-endian u64, a multiple of 512
//!     24     8  data offset, little-endian u64, always 4096
//!     32   480  zero (the header is 512 bytes)
//!    512  3584  zero, up to the data offset
//!   4096     …  the guest data, one to one: guest byte X is file byte 4096 + X
//! ```
//!
//! The data starts at 4096 so that guest blocks line up with the host file
//! system's blocks: holes in the file are holes in the guest. The file may be
//! shorter than `4096 + virtual size` (a truncated copy); whatever lies past
//! its end reads as zeros.
//!
//! # How a driver talks to the host
//!
//! A driver never opens files. The host opens the image file and hands the
//! driver a byte store ([`ByteStoreBox`]); the safe helpers of [`StoreExt`]
//! read and write it with std types (`read_exact_at`, `write_all_at`,
//! `run`…). [`HostExt`] reaches the host's services: warnings, related
//! files, backing images, secrets. The driver's errors are
//! [`DriverError`]s; their message is what the user reads after
//! `qimg: Could not open 'FILE': `, so word them as qemu-img would.
//!
//! Every call arrives through driver-api's guard, which turns a panic into
//! an error (and refuses further calls on that image) instead of letting it
//! unwind into the host. A panic is still a bug: `qimg --conformance example`
//! fails on one. Hostile files must give errors, never panics, so nothing
//! below indexes or slices with a number read from a file.

#![warn(missing_docs)]

use qimg_driver_api::schema::{CreateOption, CreateRequest, ImageInfo, OptionType};
use qimg_driver_api::{caps, extent_flags, open_flags, zero_flags};
use qimg_driver_api::{
    ByteStoreBox, DriverError, DriverImpl, Extent, HostExt, HostServicesBox, ImageImpl, Prealloc,
    StoreExt,
};
use std::sync::atomic::{AtomicU64, Ordering};

// The library's entry point: the host finds this module in the shared
// library and asks it for its drivers. One library may export several.
qimg_driver_api::export_drivers!(ExampleDriver);

/// The format's name, as `-f` and `-O` spell it.
pub const FORMAT: &str = "example";
/// The first bytes of every example image.
pub const MAGIC: &[u8; 8] = b"QIMGEXMP";
/// The only header version this driver knows.
pub const VERSION: u32 = 1;
/// Size of the header proper.
pub const HEADER_SIZE: usize = 512;
/// Where the guest data starts in the file.
pub const DATA_OFFSET: u64 = 4096;
/// qemu's sector: virtual sizes are whole sectors, as qemu-img makes them.
pub const SECTOR: u64 = 512;
/// Largest virtual size accepted (keeps `DATA_OFFSET + size` far from
/// overflowing a u64, and from the host's i64 sizes).
pub const MAX_SIZE: u64 = 1 << 62;
/// At most this many extents answer one `block_status` call (the host asks
/// again from where the answer stops).
const MAX_EXTENTS: usize = 1024;
/// EPERM: what a write to an image opened read-only gives.
const EPERM: i32 = 1;

/// The fields of an example header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Guest size in bytes.
    pub size: u64,
}

impl Header {
    /// The header's 512 bytes.
    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut head = [0u8; HEADER_SIZE];
        head[..8].copy_from_slice(MAGIC);
        head[8..12].copy_from_slice(&VERSION.to_le_bytes());
        head[16..24].copy_from_slice(&self.size.to_le_bytes());
        head[24..32].copy_from_slice(&DATA_OFFSET.to_le_bytes());
        head
    }

    /// Parses and checks a header. Every field is checked before it is
    /// used: a hostile file gets an error, never a panic or a huge size.
    pub fn parse(head: &[u8]) -> Result<Header, DriverError> {
        if head.get(..8) != Some(&MAGIC[..]) {
            return Err(DriverError::invalid_image("Image is not in example format"));
        }
        let version = le_u32(head, 8)?;
        if version != VERSION {
            return Err(DriverError::unsupported(format!(
                "Unsupported example image version {version}"
            )));
        }
        let size = le_u64(head, 16)?;
        if size > MAX_SIZE || size % SECTOR != 0 {
            return Err(DriverError::invalid_image(format!(
                "Invalid virtual size {size} in the example header"
            )));
        }
        let data = le_u64(head, 24)?;
        if data != DATA_OFFSET {
            return Err(DriverError::invalid_image(format!(
                "Invalid data offset {data} in the example header (expected {DATA_OFFSET})"
            )));
        }
        Ok(Header { size })
    }
}

/// The little-endian u32 at `at` of `bytes`; an error if `bytes` is short.
fn le_u32(bytes: &[u8], at: usize) -> Result<u32, DriverError> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| DriverError::invalid_image("example header is truncated"))
}

/// The little-endian u64 at `at` of `bytes`; an error if `bytes` is short.
fn le_u64(bytes: &[u8], at: usize) -> Result<u64, DriverError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| DriverError::invalid_image("example header is truncated"))
}

/// `size` rounded up to a whole sector, or an error past [`MAX_SIZE`].
fn sector_size(size: u64) -> Result<u64, DriverError> {
    match size.checked_next_multiple_of(SECTOR) {
        Some(rounded) if rounded <= MAX_SIZE => Ok(rounded),
        _ => Err(DriverError::invalid_argument(format!(
            "Image size {size} is too large for the example format (at most {MAX_SIZE})"
        ))),
    }
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

/// The preallocation mode asked by `-o preallocation=` (the host validates
/// the option's syntax; the driver decides which modes it supports).
fn preallocation(request: &CreateRequest) -> Result<Prealloc, DriverError> {
    match request.options.get("preallocation") {
        None => Ok(Prealloc::OFF),
        Some(name) => match Prealloc::parse(name) {
            // No metadata to preallocate: qemu-img refuses it for raw too.
            Some(p) if p != Prealloc::METADATA => Ok(p),
            _ => Err(DriverError::invalid_argument(format!(
                "Unsupported preallocation mode: {name}"
            ))),
        },
    }
}

/// The example format driver. It holds no state: each open image is an
/// [`ExampleImage`].
pub struct ExampleDriver;

impl DriverImpl for ExampleDriver {
    /// The format name: what `-f`/`-O` and the manifest's `name` say. It must
    /// equal the manifest entry's name, or the host will not find it.
    fn name(&self) -> &str {
        FORMAT
    }

    /// One line for `qimg --list-drivers`.
    fn description(&self) -> &str {
        "Example image: a 512-byte header, then the guest data (driver template)"
    }

    /// What the driver can do, as [`caps`] bits. The host calls only what is
    /// advertised and tells the user which capability is missing: no
    /// `RESIZE`, and `qimg resize` says the format cannot be resized.
    /// `ZERO_INIT` promises that a new image reads as zeros, so `convert`
    /// skips writing zeros into it.
    fn capabilities(&self) -> u64 {
        caps::CREATE | caps::WRITE | caps::RESIZE | caps::ZERO_INIT
    }

    /// Called when the user gives no `-f`: how sure is the driver that a
    /// file whose first bytes are `head` (up to 2 KiB, fewer for a short
    /// file) is one of its images? 0 for no, 100 for a certain magic; the
    /// highest score wins and raw answers 1. It must not panic on any input.
    fn probe(&self, head: &[u8], _filename: &str) -> i32 {
        if head.starts_with(MAGIC) {
            100
        } else {
            0
        }
    }

    /// The `-o` options `create` accepts, in the order `-o help` lists them.
    /// The host adds the file protocol's own (`size`, `preallocation`, …),
    /// checks the syntax of every value and passes them in
    /// [`CreateRequest::options`], sizes in bytes and booleans as `on`/`off`.
    fn create_options(&self) -> Vec<CreateOption> {
        vec![CreateOption {
            name: "size".into(),
            kind: OptionType::Size,
            help: "Virtual disk size".into(),
            default: None,
        }]
    }

    /// Formats a new image in `store`, which the host created empty (and
    /// removes again if this fails). `request.size` is the guest size asked;
    /// the image may be made a little larger (here: whole sectors), never
    /// smaller. Returns once the image is complete; the host then opens it
    /// with [`DriverImpl::open`] if it has more to do (`convert`).
    fn create(
        &self,
        store: ByteStoreBox,
        _host: HostServicesBox,
        request: CreateRequest,
    ) -> Result<(), DriverError> {
        let size = sector_size(request.size)?;
        let prealloc = preallocation(&request)?;
        store.write_all_at(0, &Header { size }.to_bytes())?;
        // Sizing the file makes the data area: sparse (a hole that reads as
        // zeros) with preallocation off, allocated with falloc or full.
        store.set_size(DATA_OFFSET + size, prealloc)?;
        store.sync()
    }

    /// Opens the image in `store`. `flags` are [`open_flags`]: `WRITE` if
    /// the image will be written (the store is read-only otherwise),
    /// `NO_IO` when only `info` is wanted. Reads and checks the header and
    /// returns the open image; an error here is what the user sees as
    /// `Could not open 'FILE': MESSAGE`.
    fn open(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        let mut head = [0u8; HEADER_SIZE];
        store.read_exact_at(0, &mut head, "example header")?;
        let header = Header::parse(&head)?;
        let file_len = store.size()?;
        if file_len < DATA_OFFSET + header.size {
            host.warning(&format!(
                "'{}' is shorter than its virtual size; the missing part reads as zeros",
                store.display_name()
            ));
        }
        Ok(Box::new(ExampleImage {
            store,
            size: AtomicU64::new(header.size),
            writable: flags & open_flags::WRITE != 0,
        }))
    }
}

/// An open example image. The host shares it between threads (every method
/// takes `&self`), hence the atomic size.
pub struct ExampleImage {
    /// The image file.
    store: ByteStoreBox,
    /// The guest size, changed by `resize`.
    size: AtomicU64,
    /// Opened with `open_flags::WRITE`.
    writable: bool,
}

impl ExampleImage {
    /// The guest size now.
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Refuses to change an image opened read-only (the host would refuse
    /// the store write anyway; this gives qemu's message).
    fn check_writable(&self) -> Result<(), DriverError> {
        if self.writable {
            Ok(())
        } else {
            Err(DriverError::from_errno(EPERM, "Operation not permitted"))
        }
    }
}

impl ImageImpl for ExampleImage {
    /// The guest size in bytes. Called often: keep it cheap.
    fn virtual_size(&self) -> u64 {
        self.size()
    }

    /// Fills all of `buf` with guest data from `offset`. Every byte must be
    /// written, zeros included (the host reuses its buffers); what lies past
    /// the virtual size or past the end of the file reads as zeros.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        let inside = self.size().saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, beyond) = buf.split_at_mut(inside);
        beyond.fill(0);
        if data.is_empty() {
            return Ok(());
        }
        self.store.read_or_zero_at(DATA_OFFSET + offset, data)
    }

    /// Writes `buf` at guest `offset`. The host never writes past the
    /// virtual size, but a driver checks anyway: a bad offset must not grow
    /// or damage the file.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        self.check_writable()?;
        check_range(offset, buf.len() as u64, self.size())?;
        self.store.write_all_at(DATA_OFFSET + offset, buf)
    }

    /// Makes `len` bytes at `offset` read as zeros. With
    /// `zero_flags::MAY_UNMAP` the space may be freed (a hole punched);
    /// without it, it should stay allocated. Any offset and length, not
    /// only aligned ones.
    fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> Result<(), DriverError> {
        self.check_writable()?;
        check_range(offset, len, self.size())?;
        // Past the end of a short file everything reads as zeros already:
        // do not grow the file for it.
        let start = DATA_OFFSET + offset;
        let len = len.min(self.store.size()?.saturating_sub(start));
        if len == 0 {
            return Ok(());
        }
        let punch = flags & zero_flags::MAY_UNMAP != 0;
        self.store.zero_range(start, len, punch)
    }

    /// The allocation of `[offset, offset+len)`: extents in order, the first
    /// starting at `offset`, each non-empty, none past `offset + len` or the
    /// virtual size. They may cover less than asked (the host asks again
    /// from where they stop) but at least one byte. An extent marked `ZERO`,
    /// or without `DATA`, is never read by `convert`, `compare` or `map`:
    /// it must read as zeros.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        let len = len.min(self.size().saturating_sub(offset));
        let mut extents: Vec<Extent> = Vec::new();
        let mut done = 0u64;
        while done < len && extents.len() < MAX_EXTENTS {
            let at = offset + done;
            let rest = len - done;
            // The store answers with the data or hole run at that point of
            // the file (past its end: a hole as long as asked).
            let run = self.store.run(DATA_OFFSET + at, rest)?;
            let length = run.length.clamp(1, rest);
            let flags = if run.data {
                extent_flags::DATA | extent_flags::ALLOCATED | extent_flags::OFFSET_VALID
            } else {
                extent_flags::ZERO | extent_flags::ALLOCATED
            };
            match extents.last_mut() {
                Some(last) if last.end() == at && last.flags == flags => last.length += length,
                _ => extents.push(Extent {
                    offset: at,
                    length,
                    flags,
                    store: 0,
                    host_offset: if run.data { DATA_OFFSET + at } else { 0 },
                }),
            }
            done += length;
        }
        Ok(extents)
    }

    /// Makes everything written so far durable: data first, then metadata
    /// (this format has none to write).
    fn flush(&self) -> Result<(), DriverError> {
        self.store.sync()
    }

    /// What `qimg info` shows beyond the generic fields (file name, sizes):
    /// the cluster size, a dirty flag, backing file, format-specific data.
    /// The example format has none of them.
    fn info(&self) -> Result<ImageInfo, DriverError> {
        Ok(ImageInfo::default())
    }

    /// The name of store `index` (0: the image's own file), which
    /// `Extent::store` refers to in `map`'s output.
    fn store_name(&self, _index: u32) -> String {
        self.store.display_name()
    }

    /// Changes the guest size (`RESIZE` capability, `qimg resize`). The host
    /// passes `shrink` only after the user confirmed with `--shrink`; the
    /// new part must read as zeros. The header is written so that a crash
    /// in between leaves a valid image: grow the data first, shrink it last.
    fn resize(&self, new_size: u64, prealloc: Prealloc, shrink: bool) -> Result<(), DriverError> {
        self.check_writable()?;
        let new_size = sector_size(new_size)?;
        if prealloc == Prealloc::METADATA {
            return Err(DriverError::unsupported(
                "Unsupported preallocation mode: metadata",
            ));
        }
        let old_size = self.size();
        if new_size < old_size && !shrink {
            return Err(DriverError::invalid_argument(
                "Use the --shrink option to perform a shrink operation.",
            ));
        }
        let header = Header { size: new_size }.to_bytes();
        let new_len = DATA_OFFSET + new_size;
        if new_size >= old_size {
            // Whatever a short file lacked reads as zeros; the new part too.
            let old_len = self.store.size()?.max(DATA_OFFSET);
            if old_len > DATA_OFFSET + old_size {
                // Bytes beyond the old size (a longer file) must not
                // reappear in the guest.
                self.store.set_size(DATA_OFFSET + old_size, Prealloc::OFF)?;
            }
            self.store.set_size(new_len, prealloc)?;
            self.store.write_all_at(0, &header)?;
        } else {
            self.store.write_all_at(0, &header)?;
            self.store.set_size(new_len, Prealloc::OFF)?;
        }
        self.store.sync()?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }

    // `close` is left to its default: a flush. A format with a dirty flag
    // would clear it there. The host calls it once, last.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let header = Header { size: 1 << 30 };
        assert_eq!(Header::parse(&header.to_bytes()), Ok(header));
    }

    #[test]
    fn hostile_headers_are_errors() {
        let good = Header { size: 1 << 20 }.to_bytes();
        assert!(Header::parse(&[]).is_err());
        assert!(Header::parse(&good[..20]).is_err());
        assert!(Header::parse(&[0xA5; HEADER_SIZE]).is_err());
        let mut bad = good;
        bad[8] = 2;
        assert!(Header::parse(&bad).is_err());
        let mut bad = good;
        bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Header::parse(&bad).is_err());
        let mut bad = good;
        bad[16] = 1;
        assert!(Header::parse(&bad).is_err());
        let mut bad = good;
        bad[25] = 0;
        assert!(Header::parse(&bad).is_err());
    }

    #[test]
    fn sizes_round_to_sectors() {
        assert_eq!(sector_size(0), Ok(0));
        assert_eq!(sector_size(1000), Ok(1024));
        assert!(sector_size(u64::MAX).is_err());
    }

    #[test]
    fn probe_wants_the_magic() {
        let head = Header { size: 512 }.to_bytes();
        assert_eq!(ExampleDriver.probe(&head, "x"), 100);
        assert_eq!(ExampleDriver.probe(&head[..4], "x"), 0);
        assert_eq!(ExampleDriver.probe(&[], "x"), 0);
    }
}
