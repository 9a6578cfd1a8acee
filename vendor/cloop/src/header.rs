//! The cloop V2.0 header and offsets table, as the Linux cloop driver's
//! `create_compressed_fs` writes them (cloop's `compressed_loop.h`).
//!
//! ```text
//! offset  size  field
//!      0   128  a shell script preamble, starting with "#!/bin/sh\n#V2.0 Format\n"
//!    128     4  block_size: uncompressed bytes per block, big-endian
//!    132     4  num_blocks, big-endian
//!    136     …  num_blocks + 1 big-endian u64 file offsets: block N is the
//!               zlib stream from offsets[N] to offsets[N + 1]
//! ```

use qimg_driver_api::DriverError;

/// The preamble qemu-img recognises (the script that mounts the image).
pub const MAGIC: &[u8] =
    b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";
/// Where block_size is.
const BLOCK_SIZE_AT: u64 = 128;
/// Where the offsets table starts.
pub const OFFSETS_AT: u64 = 136;
/// Largest uncompressed block accepted (64 MiB), as qemu-img.
pub const MAX_BLOCK_SIZE: u32 = 64 << 20;
/// Largest compressed block accepted: twice [`MAX_BLOCK_SIZE`], for data
/// that did not compress.
pub const MAX_COMPRESSED: u64 = 2 * MAX_BLOCK_SIZE as u64;
/// Largest block count whose offsets table size fits in 32 bits.
const MAX_BLOCKS: u32 = (u32::MAX - 1) / 8;
/// Largest offsets table accepted (512 MiB: 16 TiB at 256 KiB blocks).
const MAX_TABLE: u64 = 512 << 20;

/// Why a header or offsets table is refused; the messages are qemu-img's.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// block_size is not a multiple of 512.
    BlockSizeNotSectors(u32),
    /// block_size is zero.
    BlockSizeZero,
    /// block_size is above [`MAX_BLOCK_SIZE`].
    BlockSizeTooLarge(u32),
    /// num_blocks too large for a 32-bit table size.
    TooManyBlocks(u32),
    /// The offsets table would be larger than [`MAX_TABLE`].
    TableTooLarge,
    /// The table's size is 2^32 bytes, which qemu-img computes in 32 bits
    /// as 0 and then fails to allocate.
    TableSizeWraps,
    /// offsets[index] is smaller than the one before.
    NotMonotonic(u32),
    /// Block index - 1 is larger than [`MAX_COMPRESSED`].
    CompressedTooLarge(u32),
}

impl From<HeaderError> for DriverError {
    fn from(e: HeaderError) -> DriverError {
        let message = match e {
            HeaderError::BlockSizeNotSectors(n) => {
                format!("block_size {n} must be a multiple of 512")
            }
            HeaderError::BlockSizeZero => "block_size cannot be zero".to_string(),
            HeaderError::BlockSizeTooLarge(n) => {
                format!("block_size {n} must be {} MB or less", MAX_BLOCK_SIZE >> 20)
            }
            HeaderError::TooManyBlocks(n) => {
                format!("n_blocks {n} must be {MAX_BLOCKS} or less")
            }
            HeaderError::TableTooLarge => {
                "image requires too many offsets, try increasing block size".to_string()
            }
            HeaderError::TableSizeWraps => "Could not allocate offsets table".to_string(),
            HeaderError::NotMonotonic(i) => {
                format!("offsets not monotonically increasing at index {i}, image file is corrupt")
            }
            HeaderError::CompressedTooLarge(i) => {
                format!("invalid compressed block size at index {i}, image file is corrupt")
            }
        };
        DriverError::invalid_image(message)
    }
}

/// Whether `head` starts with the cloop preamble (bytes past a short
/// file's end count as zeros, so such a file never matches).
pub fn is_cloop(head: &[u8]) -> bool {
    head.len() >= MAGIC.len() && head.starts_with(MAGIC)
}

/// The fixed fields at offset 128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Uncompressed bytes per block.
    pub block_size: u32,
    /// Number of blocks.
    pub blocks: u32,
}

impl Header {
    /// Where the fields lie in the file.
    pub const AT: u64 = BLOCK_SIZE_AT;

    /// Checks the 8 bytes at [`Header::AT`], in qemu-img's order.
    pub fn parse(fields: &[u8; 8]) -> Result<Header, HeaderError> {
        let block_size = u32::from_be_bytes([fields[0], fields[1], fields[2], fields[3]]);
        if !block_size.is_multiple_of(512) {
            return Err(HeaderError::BlockSizeNotSectors(block_size));
        }
        if block_size == 0 {
            return Err(HeaderError::BlockSizeZero);
        }
        if block_size > MAX_BLOCK_SIZE {
            return Err(HeaderError::BlockSizeTooLarge(block_size));
        }
        let blocks = u32::from_be_bytes([fields[4], fields[5], fields[6], fields[7]]);
        if blocks > MAX_BLOCKS {
            return Err(HeaderError::TooManyBlocks(blocks));
        }
        let table = (u64::from(blocks) + 1) * 8;
        if table == 1 << 32 {
            return Err(HeaderError::TableSizeWraps);
        }
        if table > MAX_TABLE {
            return Err(HeaderError::TableTooLarge);
        }
        Ok(Header { block_size, blocks })
    }

    /// Guest size: whole blocks, computed in 32-bit sectors as the format's
    /// readers do (a hostile count wraps to a smaller disk, never past the
    /// table).
    pub fn size(&self) -> u64 {
        u64::from(self.blocks.wrapping_mul(self.block_size / 512)) * 512
    }
}

/// The offsets table: `blocks + 1` entries, of which only those stored in
/// the file are kept (the rest read as zeros, as past a file's end).
#[derive(Debug, PartialEq, Eq)]
pub struct Offsets {
    /// The entries inside the file.
    stored: Vec<u64>,
}

impl Offsets {
    /// Checks `table` (the big-endian entries inside the file) for
    /// `entries` entries in all, the missing ones zero.
    pub fn parse(table: &[u8], entries: u64) -> Result<Offsets, HeaderError> {
        let stored: Vec<u64> = table
            .chunks_exact(8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
            .collect();
        let offsets = Offsets { stored };
        let checked = entries.min(offsets.stored.len() as u64 + 1);
        for i in 1..checked {
            let (prev, next) = (offsets.get(i - 1), offsets.get(i));
            let index = i as u32;
            if next < prev {
                return Err(HeaderError::NotMonotonic(index));
            }
            if next - prev > MAX_COMPRESSED {
                return Err(HeaderError::CompressedTooLarge(index));
            }
        }
        // Past the stored entries everything is zero: fine after a zero,
        // a step down after anything else.
        if entries > checked && offsets.get(checked - 1) != 0 {
            return Err(HeaderError::NotMonotonic(checked as u32));
        }
        Ok(offsets)
    }

    /// Entry `i` (zero past the stored ones).
    pub fn get(&self, i: u64) -> u64 {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.stored.get(i))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(block_size: u32, blocks: u32) -> [u8; 8] {
        let mut f = [0u8; 8];
        f[..4].copy_from_slice(&block_size.to_be_bytes());
        f[4..].copy_from_slice(&blocks.to_be_bytes());
        f
    }

    fn table(entries: &[u64]) -> Vec<u8> {
        entries.iter().flat_map(|e| e.to_be_bytes()).collect()
    }

    #[test]
    fn header_checks_follow_qemu_img() {
        assert_eq!(
            Header::parse(&fields(65536, 4)),
            Ok(Header {
                block_size: 65536,
                blocks: 4
            })
        );
        assert_eq!(
            Header::parse(&fields(1000, 4)),
            Err(HeaderError::BlockSizeNotSectors(1000))
        );
        assert_eq!(
            Header::parse(&fields(0, 4)),
            Err(HeaderError::BlockSizeZero)
        );
        assert_eq!(
            Header::parse(&fields(128 << 20, 4)),
            Err(HeaderError::BlockSizeTooLarge(128 << 20))
        );
        assert_eq!(
            Header::parse(&fields(512, u32::MAX)),
            Err(HeaderError::TooManyBlocks(u32::MAX))
        );
        assert_eq!(
            Header::parse(&fields(512, 1 << 26)),
            Err(HeaderError::TableTooLarge)
        );
        assert_eq!(
            Header::parse(&fields(512, MAX_BLOCKS)),
            Err(HeaderError::TableSizeWraps)
        );
    }

    #[test]
    fn offsets_must_grow_by_sane_steps() {
        assert!(Offsets::parse(&table(&[200, 300, 400]), 3).is_ok());
        assert_eq!(
            Offsets::parse(&table(&[200, 100]), 2),
            Err(HeaderError::NotMonotonic(1))
        );
        assert_eq!(
            Offsets::parse(&table(&[0, MAX_COMPRESSED + 1]), 2),
            Err(HeaderError::CompressedTooLarge(1))
        );
        // A table running past the file's end: zeros after a non-zero entry.
        assert_eq!(
            Offsets::parse(&table(&[200, 300]), 1000),
            Err(HeaderError::NotMonotonic(2))
        );
        assert!(Offsets::parse(&table(&[0, 0]), 1000).is_ok());
    }
}
