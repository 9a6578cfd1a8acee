//! The Block Allocation Table ([MS-VHDX] 2.5): one 64-bit entry per payload
//! block, and after every `chunk ratio` of them one for a sector bitmap
//! block (used by differencing disks only).

use crate::error::{Result, VhdxError};
use crate::format::{le64, MIB};
use crate::region::Region;
use qimg_driver_api::{ByteStoreBox, StoreExt};

/// Payload block state: no data; reads as zeros (or from the parent).
/// UNDEFINED (1) and UNMAPPED (3) read as zeros too.
pub const PAYLOAD_NOT_PRESENT: u64 = 0;
/// Payload block state: reads as zeros.
pub const PAYLOAD_ZERO: u64 = 2;
/// Payload block state: all data in the file at the entry's offset.
pub const PAYLOAD_FULLY_PRESENT: u64 = 6;
/// Payload block state: some sectors in the file, others in the parent.
pub const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;

/// Bytes per BAT entry.
pub const ENTRY_SIZE: u64 = 8;

/// The state bits of an entry.
pub fn state(entry: u64) -> u64 {
    entry & 7
}

/// The file offset an entry points at (its `FileOffsetMB` in bytes).
pub fn offset(entry: u64) -> u64 {
    (entry >> 20) * MIB
}

/// An entry of `state` at file offset `offset` (a multiple of 1 MiB).
pub fn entry(state: u64, offset: u64) -> u64 {
    (offset / MIB) << 20 | state
}

/// How payload blocks map onto BAT entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Guest bytes per payload block.
    pub block_size: u64,
    /// Payload blocks per sector bitmap block ([MS-VHDX] 2.5: 2^23 sectors
    /// a bitmap block describes, over the sectors of a block).
    pub chunk_ratio: u64,
    /// Payload blocks of the disk.
    pub data_blocks: u64,
    /// Entries of the table, sector bitmap ones included.
    pub entries: u64,
}

impl Geometry {
    /// The geometry of a disk of `disk_size` bytes in blocks of
    /// `block_size`, with logical sectors of `sector_size`.
    pub fn new(disk_size: u64, block_size: u64, sector_size: u32) -> Geometry {
        let chunk_ratio = ((1u64 << 23) * u64::from(sector_size) / block_size).max(1);
        let data_blocks = disk_size.div_ceil(block_size);
        // [MS-VHDX] 2.5.1: a dynamic or fixed disk's table ends with the
        // last payload block's entry.
        let entries = data_blocks + data_blocks.saturating_sub(1) / chunk_ratio;
        Geometry {
            block_size,
            chunk_ratio,
            data_blocks,
            entries,
        }
    }

    /// The table index of payload block `block`.
    pub fn index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// Whether table index `index` is a payload block's (not a sector
    /// bitmap block's).
    pub fn is_payload(&self, index: u64) -> bool {
        !(index + 1).is_multiple_of(self.chunk_ratio + 1)
    }
}

/// Reads the whole table: `geometry.entries` entries at the start of the
/// BAT region, which must hold them.
pub fn read(store: &ByteStoreBox, region: Region, geometry: &Geometry) -> Result<Vec<u64>> {
    let bytes = geometry
        .entries
        .checked_mul(ENTRY_SIZE)
        .filter(|&b| b <= region.length)
        .ok_or(VhdxError::Invalid)?;
    let mut raw = vec![0u8; bytes as usize];
    store.read_or_zero_at(region.offset, &mut raw)?;
    Ok((0..geometry.entries as usize)
        .map(|i| le64(&raw, i * 8))
        .collect())
}

/// Checks that the guest bytes of every present payload block lie inside
/// the file, as qemu-img does at open: a block that does not is reported
/// (the image was probably truncated) and the open fails.
pub fn check_in_file(
    table: &[u64],
    geometry: &Geometry,
    disk_size: u64,
    file_len: u64,
) -> Result<()> {
    for (i, &e) in table.iter().enumerate() {
        let i = i as u64;
        if !geometry.is_payload(i) {
            continue;
        }
        if matches!(state(e), PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT) {
            let block = i - i / (geometry.chunk_ratio + 1);
            let guest = disk_size.saturating_sub(block * geometry.block_size);
            let end = offset(e) + geometry.block_size.min(guest).max(1) - 1;
            if end >= file_len {
                eprintln!(
                    "{}: VHDX BAT entry {i} end offset {end} points after end of file ({file_len}). Image has probably been truncated.",
                    program_name()
                );
                return Err(VhdxError::Invalid);
            }
        }
    }
    Ok(())
}

/// The name this program was run as, which qemu-img's messages start with.
fn program_name() -> String {
    std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "qemu-img".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        // 8 MiB blocks of 512-byte sectors: 512 payload blocks per chunk.
        let g = Geometry::new(64 << 20, 8 << 20, 512);
        assert_eq!((g.chunk_ratio, g.data_blocks, g.entries), (512, 8, 8));
        let g = Geometry::new(10 << 30, 1 << 20, 512);
        assert_eq!(g.chunk_ratio, 4096);
        assert_eq!(g.entries, 10240 + 2);
        assert_eq!(g.index(4096), 4097);
        assert!(!g.is_payload(4096));
        assert!(g.is_payload(4097));
    }
}
