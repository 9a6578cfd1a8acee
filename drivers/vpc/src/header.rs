//! The dynamic disk header (specification, "Dynamic Disk Header Format"):
//! 1024 bytes at the footer's `Data Offset`, locating the Block Allocation
//! Table and giving the block size. Big-endian like the footer.

use crate::error::{Result, VpcError};

/// Bytes of the header.
pub const HEADER_SIZE: usize = 1024;
/// The header's cookie.
const COOKIE: &[u8; 8] = b"cxsparse";
/// `Header Version` 1.0.
const HEADER_VERSION: u32 = 0x0001_0000;
/// The block size every writer uses: 2 MiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;

/// The fields of a dynamic disk header this driver uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamicHeader {
    /// `Table Offset`: where the Block Allocation Table starts.
    pub table_offset: u64,
    /// `Max Table Entries`: entries in the table.
    pub max_table_entries: u32,
    /// `Block Size`: guest bytes per block.
    pub block_size: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

impl DynamicHeader {
    /// Parses a header. Like QEMU, only the cookie is checked here (not the
    /// version or the checksum); the caller checks the sizes.
    pub fn parse(bytes: &[u8; HEADER_SIZE]) -> Result<DynamicHeader> {
        if &bytes[..8] != COOKIE {
            return Err(VpcError::DynamicHeaderMagic);
        }
        Ok(DynamicHeader {
            table_offset: u64::from_be_bytes(bytes[16..24].try_into().unwrap_or_default()),
            max_table_entries: be32(bytes, 28),
            block_size: be32(bytes, 32),
        })
    }

    /// The header's 1024 bytes, checksum included; a dynamic disk has no
    /// parent, so the parent fields stay zero.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..8].copy_from_slice(COOKIE);
        // `Data Offset`: unused, all ones.
        b[8..16].fill(0xff);
        b[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        b[24..28].copy_from_slice(&HEADER_VERSION.to_be_bytes());
        b[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        // The same ones' complement sum as the footer's, over these bytes
        // with the checksum field (36..40) as zero.
        let sum = !b.iter().fold(0u32, |s, &x| s.wrapping_add(u32::from(x)));
        b[36..40].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Bytes of a block's sector bitmap: one bit per sector, padded to a
    /// whole sector.
    pub fn bitmap_size(&self) -> u64 {
        (u64::from(self.block_size) / 512)
            .div_ceil(8)
            .next_multiple_of(512)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = DynamicHeader {
            table_offset: 1536,
            max_table_entries: 6,
            block_size: DEFAULT_BLOCK_SIZE,
        };
        let bytes = h.to_bytes();
        assert_eq!(DynamicHeader::parse(&bytes).unwrap(), h);
        assert_eq!(h.bitmap_size(), 512);
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(DynamicHeader::parse(&bad).is_err());
    }
}
