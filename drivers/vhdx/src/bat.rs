//! The Block Allocation Table ([MS-VHDX] 2.5): one 64-bit entry per payload
//! block, and after every `chunk ratio` of them one for a sector bitmap
//! block (used by differencing disks only).

use crate::error::{Result, VhdxError};
use crate::format::{le64, program_name, MIB};
use crate::region::{self, Region};
use qimg_driver_api::{ByteStoreBox, StoreExt};

/// Payload block state: no data; reads as zeros (or from the parent).
/// UNDEFINED (1) and UNMAPPED (3) read as zeros too.
pub const PAYLOAD_NOT_PRESENT: u64 = 0;
/// Payload block state: reads as zeros.
pub const PAYLOAD_ZERO: u64 = 2;
/// Payload block state 4, which [MS-VHDX] leaves undefined: reading such a
/// block fails, as in qemu (it is no "reads as zeros" state).
pub const PAYLOAD_INVALID: u64 = 4;
/// Payload block state: all data in the file at the entry's offset.
pub const PAYLOAD_FULLY_PRESENT: u64 = 6;
/// Payload block state: some sectors in the file, others in the parent.
pub const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;

/// Sector bitmap block state: the chunk's bitmap is in the file.
pub const SB_BLOCK_PRESENT: u64 = 6;

/// qemu's largest request (`BDRV_REQUEST_MAX_BYTES`): it reads the whole
/// BAT region in one, so a longer region fails to open with EIO.
pub const MAX_REQUEST: u64 = (i32::MAX as u64) & !511;

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
        // last payload block's entry. qemu-img counts in 32 bits, so an
        // empty disk's table wraps around to 2^32 / chunk ratio entries
        // (its BAT region is made that large, and must be).
        let entries = match data_blocks {
            0 => u64::from(u32::MAX) / chunk_ratio,
            n => n + (n - 1) / chunk_ratio,
        };
        Geometry {
            block_size,
            chunk_ratio,
            data_blocks,
            entries,
        }
    }

    /// The geometry of a differencing disk, whose table also ends with
    /// the last chunk's sector bitmap entry ([MS-VHDX] 2.5).
    pub fn with_bitmaps(self) -> Geometry {
        let chunks = self.data_blocks.div_ceil(self.chunk_ratio);
        Geometry {
            entries: chunks * (self.chunk_ratio + 1),
            ..self
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

/// Reads the table: `geometry.entries` entries at the start of the BAT
/// region, which must hold them. Like qemu-img, a table past the end of
/// the file reads as zeros; only the entries the file holds are kept, so
/// a hostile size allocates no more than the file's size.
pub fn read(store: &ByteStoreBox, region: Region, geometry: &Geometry) -> Result<Vec<u64>> {
    if region.length > MAX_REQUEST {
        return Err(VhdxError::Unreachable);
    }
    let bytes = geometry
        .entries
        .checked_mul(ENTRY_SIZE)
        .filter(|&b| b <= region.length)
        .ok_or(VhdxError::Invalid)?;
    let file_len = store.size()?;
    let held = bytes.min(file_len.saturating_sub(region.offset)) / ENTRY_SIZE;
    let mut table = Vec::with_capacity(held as usize);
    let mut chunk = vec![0u8; (1 << 20).min(held * ENTRY_SIZE) as usize];
    let mut at = 0u64;
    while at < held {
        let n = (chunk.len() as u64 / ENTRY_SIZE).min(held - at);
        let part = &mut chunk[..(n * ENTRY_SIZE) as usize];
        store.read_or_zero_at(region.offset + at * ENTRY_SIZE, part)?;
        table.extend(part.chunks_exact(8).map(|e| le64(e, 0)));
        at += n;
    }
    Ok(table)
}

/// Checks every present payload block as qemu-img does at open: its
/// offset fits in 63 bits, its guest bytes lie inside the file, and it
/// overlaps none of `regions` (offset, length, in the order registered).
/// Partially present blocks count only in a `differencing` disk, the only
/// one that reads or writes them (qemu checks fully present ones alone).
/// Each failure is reported; the first fails the open, unless the image
/// is opened for `check` (`keep_going`), which counts them all. Returns
/// the count.
pub fn check_blocks(
    table: &[u64],
    geometry: &Geometry,
    disk_size: u64,
    file_len: u64,
    regions: &[(u64, u64)],
    keep_going: bool,
    differencing: bool,
) -> Result<u64> {
    let mut bad = 0;
    for (i, &e) in table.iter().enumerate() {
        let i = i as u64;
        let present = match state(e) {
            PAYLOAD_FULLY_PRESENT => true,
            PAYLOAD_PARTIALLY_PRESENT => differencing,
            _ => false,
        };
        if !geometry.is_payload(i) || !present {
            continue;
        }
        let failures = block_failures(i, e, geometry, disk_size, file_len, regions, keep_going);
        for error in failures {
            if !keep_going {
                return Err(error);
            }
            bad += 1;
        }
    }
    Ok(bad)
}

/// The failures of the present payload block of entry `i` (see
/// [`check_blocks`]), each reported on stderr in qemu-img's words as it
/// is found; only the first unless `all`.
fn block_failures(
    i: u64,
    e: u64,
    geometry: &Geometry,
    disk_size: u64,
    file_len: u64,
    regions: &[(u64, u64)],
    all: bool,
) -> Vec<VhdxError> {
    let mut failures = Vec::new();
    let block = i - i / (geometry.chunk_ratio + 1);
    let guest = disk_size.saturating_sub(block * geometry.block_size);
    let start = offset(e);
    let last = geometry.block_size.min(guest).max(1) - 1;
    // File offsets are signed 64-bit numbers to qemu-img, which checks
    // them in this order: overflow, end of file, then the regions.
    if start > i64::MAX as u64 - last {
        eprintln!("{}: VHDX BAT entry {i} offset overflow.", program_name());
        failures.push(VhdxError::Invalid);
        if !all {
            return failures;
        }
    }
    let end = start.saturating_add(last);
    let past = if start >= file_len {
        Some(("start", start))
    } else {
        (end >= file_len).then_some(("end", end))
    };
    if let Some((which, at)) = past {
        eprintln!(
            "{}: VHDX BAT entry {i} {which} offset {at} points after end of file ({file_len}). Image has probably been truncated.",
            program_name()
        );
        failures.push(VhdxError::Invalid);
        if !all {
            return failures;
        }
    }
    let stop = start.saturating_add(geometry.block_size);
    if let Some(region) = region::overlapping(regions, start, stop) {
        failures.push(region::report_overlap(start, stop, region));
    }
    failures
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
