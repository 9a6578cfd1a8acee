//! The bochs redolog header, as Bochs' `bximage` writes it for "growing"
//! images (Bochs documentation, "Redolog disk image format").
//!
//! ```text
//! offset  size  field
//!      0    32  magic, "Bochs Virtual HD Image", NUL-terminated
//!     32    16  type, "Redolog", NUL-terminated
//!     48    16  subtype, "Growing" (also "Undoable", "Volatile"), NUL-terminated
//!     64     4  version: 0x00020000, or 0x00010000 for the first layout
//!     68     4  header size: where the catalog starts
//!     72     4  catalog: number of catalog entries (extents)
//!     76     4  bitmap: size of an extent's bitmap in bytes
//!     80     4  extent: size of an extent's data in bytes
//!     84     4  reserved (version 2 only)
//!  84/88     8  disk size in bytes (version 1 at 84, version 2 at 88)
//! ```
//!
//! All integers are little-endian. The catalog follows the header: one u32
//! per extent, the index of the extent's block in the data area, or
//! `0xffffffff` for an extent never written. The data area starts right
//! after the catalog; block N there is the extent's bitmap (one bit per
//! 512-byte sector, least significant bit first), padded to whole sectors,
//! then the extent's data.

use qimg_driver_api::DriverError;

/// Size of the header block; qemu-img probes nothing shorter.
pub const HEADER_SIZE: usize = 512;
/// The magic string at offset 0.
const MAGIC: &[u8] = b"Bochs Virtual HD Image";
/// The image type at offset 32.
const REDOLOG: &[u8] = b"Redolog";
/// The subtype qemu-img opens: an image that grows as it is written.
const GROWING: &[u8] = b"Growing";
/// The current header version.
const VERSION_2: u32 = 0x0002_0000;
/// The first header version (no reserved field before the disk size).
const VERSION_1: u32 = 0x0001_0000;
/// Largest catalog accepted: 1 Mi entries, enough for the largest image
/// bximage creates (qemu-img's limit too); the catalog is read whole.
pub const MAX_CATALOG: u32 = 0x10_0000;
/// Largest extent accepted (8 MiB), as qemu-img.
const MAX_EXTENT: u32 = 0x80_0000;
/// The sector: bitmaps have one bit per sector.
pub const SECTOR: u64 = 512;

/// Why a header is refused; the messages are qemu-img's.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Wrong magic, type, subtype or version.
    NotBochs,
    /// More catalog entries than [`MAX_CATALOG`].
    CatalogTooLarge,
    /// Extent smaller than a sector.
    ExtentTooSmall,
    /// Extent size not a power of two.
    ExtentNotPowerOfTwo(u32),
    /// Extent larger than [`MAX_EXTENT`].
    ExtentTooLarge(u32),
    /// The catalog cannot cover the disk size.
    CatalogTooSmall,
}

impl From<HeaderError> for DriverError {
    fn from(e: HeaderError) -> DriverError {
        let message = match e {
            HeaderError::NotBochs => "Image not in Bochs format".to_string(),
            HeaderError::CatalogTooLarge => "Catalog size is too large".to_string(),
            HeaderError::ExtentTooSmall => "Extent size must be at least 512".to_string(),
            HeaderError::ExtentNotPowerOfTwo(n) => format!("Extent size {n} is not a power of two"),
            HeaderError::ExtentTooLarge(n) => format!("Extent size {n} is too large"),
            HeaderError::CatalogTooSmall => {
                "Catalog size is too small for this disk size".to_string()
            }
        };
        DriverError::invalid_image(message)
    }
}

/// A checked bochs header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Guest size in bytes: the disk size rounded down to whole sectors.
    pub size: u64,
    /// Where the catalog starts.
    pub catalog_offset: u64,
    /// Number of catalog entries.
    pub catalog_entries: u32,
    /// Where the data area starts (after the catalog).
    pub data_offset: u64,
    /// Sectors taken by each block's bitmap.
    pub bitmap_sectors: u64,
    /// Bytes of guest data in each extent (a power of two, 512 to 8 MiB).
    pub extent_size: u64,
    /// Sectors of one block in the data area: bitmap and data.
    pub block_sectors: u64,
}

/// Whether the NUL-terminated string in `field` is exactly `want`.
fn c_string_is(field: &[u8], want: &[u8]) -> bool {
    field.len() > want.len() && field.starts_with(want) && field[want.len()] == 0
}

/// The little-endian u32 at `at` (the header is always [`HEADER_SIZE`] long).
fn le_u32(head: &[u8; HEADER_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]])
}

/// The little-endian u64 at `at`.
fn le_u64(head: &[u8; HEADER_SIZE], at: usize) -> u64 {
    u64::from(le_u32(head, at)) | (u64::from(le_u32(head, at + 4)) << 32)
}

/// Whether `head` starts a bochs growing image of a version qemu-img reads.
/// Bytes past the end of a short file count as zeros, as qemu-img reads them.
pub fn is_bochs(head: &[u8]) -> bool {
    let mut padded = [0u8; HEADER_SIZE];
    let n = head.len().min(HEADER_SIZE);
    padded[..n].copy_from_slice(&head[..n]);
    let head = &padded;
    let version = u32::from_le_bytes([head[64], head[65], head[66], head[67]]);
    c_string_is(&head[..32], MAGIC)
        && c_string_is(&head[32..48], REDOLOG)
        && c_string_is(&head[48..64], GROWING)
        && (version == VERSION_2 || version == VERSION_1)
}

impl Header {
    /// Parses and checks a header, in the order qemu-img checks it.
    pub fn parse(head: &[u8; HEADER_SIZE]) -> Result<Header, HeaderError> {
        if !is_bochs(head) {
            return Err(HeaderError::NotBochs);
        }
        let disk = if le_u32(head, 64) == VERSION_1 {
            le_u64(head, 84)
        } else {
            le_u64(head, 88)
        };
        let size = disk / SECTOR * SECTOR;
        let catalog_entries = le_u32(head, 72);
        if catalog_entries > MAX_CATALOG {
            return Err(HeaderError::CatalogTooLarge);
        }
        let header_size = le_u32(head, 68);
        let bitmap = le_u32(head, 76);
        let extent = le_u32(head, 80);
        if u64::from(extent) < SECTOR {
            return Err(HeaderError::ExtentTooSmall);
        }
        if !extent.is_power_of_two() {
            return Err(HeaderError::ExtentNotPowerOfTwo(extent));
        }
        if extent > MAX_EXTENT {
            return Err(HeaderError::ExtentTooLarge(extent));
        }
        let extent_size = u64::from(extent);
        if u64::from(catalog_entries) < (size / SECTOR).div_ceil(extent_size / SECTOR) {
            return Err(HeaderError::CatalogTooSmall);
        }
        // bximage's sizes are 32-bit: the data area's offset wraps as the
        // format's own readers compute it.
        let data_offset = header_size.wrapping_add(catalog_entries.wrapping_mul(4));
        // A bitmap size of 0 is taken as 2^32 bytes, as u32 arithmetic
        // makes it; an extent's bitmap then lies beyond any real file.
        let bitmap_sectors = 1 + u64::from(bitmap.wrapping_sub(1)) / SECTOR;
        let extent_sectors = extent_size / SECTOR;
        Ok(Header {
            size,
            catalog_offset: u64::from(header_size),
            catalog_entries,
            data_offset: u64::from(data_offset),
            bitmap_sectors,
            extent_size,
            block_sectors: bitmap_sectors + extent_sectors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-2 header: 4 KiB extents, 1 MiB disk.
    fn good() -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        h[..MAGIC.len()].copy_from_slice(MAGIC);
        h[32..32 + REDOLOG.len()].copy_from_slice(REDOLOG);
        h[48..48 + GROWING.len()].copy_from_slice(GROWING);
        h[64..68].copy_from_slice(&VERSION_2.to_le_bytes());
        h[68..72].copy_from_slice(&512u32.to_le_bytes());
        h[72..76].copy_from_slice(&256u32.to_le_bytes());
        h[76..80].copy_from_slice(&512u32.to_le_bytes());
        h[80..84].copy_from_slice(&4096u32.to_le_bytes());
        h[88..96].copy_from_slice(&(1u64 << 20).to_le_bytes());
        h
    }

    #[test]
    fn parses_a_good_header() {
        let h = Header::parse(&good()).unwrap();
        assert_eq!(h.size, 1 << 20);
        assert_eq!(h.data_offset, 512 + 1024);
        assert_eq!(h.block_sectors, 9);
    }

    #[test]
    fn version_1_keeps_the_size_earlier() {
        let mut h = good();
        h[64..68].copy_from_slice(&VERSION_1.to_le_bytes());
        h[84..92].copy_from_slice(&(1u64 << 19).to_le_bytes());
        assert_eq!(Header::parse(&h).unwrap().size, 1 << 19);
    }

    #[test]
    fn hostile_headers_are_refused() {
        let mut h = good();
        h[22] = b'!';
        assert_eq!(Header::parse(&h), Err(HeaderError::NotBochs));
        let mut h = good();
        h[72..76].copy_from_slice(&(MAX_CATALOG + 1).to_le_bytes());
        assert_eq!(Header::parse(&h), Err(HeaderError::CatalogTooLarge));
        let mut h = good();
        h[80..84].copy_from_slice(&3000u32.to_le_bytes());
        assert_eq!(
            Header::parse(&h),
            Err(HeaderError::ExtentNotPowerOfTwo(3000))
        );
        let mut h = good();
        h[80..84].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(Header::parse(&h), Err(HeaderError::ExtentTooSmall));
        let mut h = good();
        h[80..84].copy_from_slice(&(1u32 << 24).to_le_bytes());
        assert_eq!(Header::parse(&h), Err(HeaderError::ExtentTooLarge(1 << 24)));
        let mut h = good();
        h[88..96].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Header::parse(&h), Err(HeaderError::CatalogTooSmall));
    }
}
