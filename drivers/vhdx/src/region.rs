//! The region table ([MS-VHDX] 2.2.3): where the BAT and the metadata
//! region are. Like qemu-img, the driver reads the first copy (at 192 KiB)
//! and writes both.

use crate::crc::{crc32c, crc32c_without};
use crate::error::{Result, VhdxError};
use crate::format::{guid, guid_at, le32, le64, program_name, put32, put64, Guid};
use qimg_driver_api::{ByteStoreBox, StoreExt};

/// Where the two copies of the region table are.
pub const TABLE_OFFSETS: [u64; 2] = [192 * 1024, 256 * 1024];
/// The bytes of a region table the checksum covers.
pub const TABLE_SIZE: usize = 64 * 1024;
/// "regi".
const SIGNATURE: u32 = 0x6967_6572;
/// At most this many entries ([MS-VHDX] 2.2.3.1).
const MAX_ENTRIES: u32 = 2047;

/// The BAT region's GUID.
pub const BAT_GUID: Guid = guid(0x2DC2_7766, 0xF623, 0x4200, 0x9D64_115E_9BFD_4A08);
/// The metadata region's GUID.
pub const METADATA_GUID: Guid = guid(0x8B7C_A206, 0x4790, 0x4B9A, 0xB8FE_575F_050F_886E);

/// A region: its offset and length in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// File offset (1 MiB aligned).
    pub offset: u64,
    /// Length in bytes (a multiple of 1 MiB).
    pub length: u64,
}

impl Region {
    /// First byte past the region.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
    /// Whether the region shares a byte with `[offset, end)`.
    pub fn overlaps(&self, offset: u64, end: u64) -> bool {
        offset < self.end() && self.offset < end
    }
}

/// The two regions every VHDX has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regions {
    /// The Block Allocation Table.
    pub bat: Region,
    /// The metadata region.
    pub metadata: Region,
    /// The table lists the BAT before the metadata region.
    pub bat_first: bool,
}

impl Regions {
    /// The two regions as (offset, length), in the table's order.
    pub fn in_table_order(&self) -> [(u64, u64); 2] {
        let (bat, md) = (
            (self.bat.offset, self.bat.length),
            (self.metadata.offset, self.metadata.length),
        );
        if self.bat_first {
            [bat, md]
        } else {
            [md, bat]
        }
    }
}

/// The region of `known` (offset, length) that `[start, end)` overlaps,
/// looked for as qemu-img looks: the region registered last first.
pub fn overlapping(known: &[(u64, u64)], start: u64, end: u64) -> Option<(u64, u64)> {
    known
        .iter()
        .rev()
        .find(|&&(at, len)| start < at.saturating_add(len) && at < end)
        .copied()
}

/// Reports, as qemu-img does, that `[start, end)` overlaps `region`.
pub fn report_overlap(start: u64, end: u64, region: (u64, u64)) -> VhdxError {
    eprintln!(
        "{}: VHDX region {start}-{end} overlaps with region {}-{}",
        program_name(),
        region.0,
        region.0.saturating_add(region.1)
    );
    VhdxError::Invalid
}

/// Reads the region table.
pub fn read(store: &ByteStoreBox) -> Result<Regions> {
    let mut b = vec![0u8; TABLE_SIZE];
    store.read_or_zero_at(TABLE_OFFSETS[0], &mut b)?;
    if le32(&b, 0) != SIGNATURE || le32(&b, 4) != crc32c_without(&b, 4) {
        return Err(VhdxError::Invalid);
    }
    let count = le32(&b, 8);
    if count > MAX_ENTRIES {
        return Err(VhdxError::Invalid);
    }
    let (mut bat, mut metadata) = (None, None);
    let mut bat_first = false;
    for i in 0..count as usize {
        let e = 16 + 32 * i;
        let id = guid_at(&b, e);
        let region = Region {
            offset: le64(&b, e + 16),
            length: u64::from(le32(&b, e + 24)),
        };
        let required = le32(&b, e + 28) & 1 != 0;
        let slot = match id {
            BAT_GUID => {
                bat_first = metadata.is_none();
                &mut bat
            }
            METADATA_GUID => &mut metadata,
            // [MS-VHDX] 2.2.3.2: a required region the reader does not
            // know makes the file unreadable to it.
            _ if required => return Err(VhdxError::NotSupported),
            _ => continue,
        };
        // Like qemu-img, only duplicates are refused here: placement is
        // checked as overlap with the log and the other region.
        if slot.is_some() {
            return Err(VhdxError::Invalid);
        }
        *slot = Some(region);
    }
    // A region no file can reach fails as qemu's read of it does.
    let unreachable = |r: &Option<Region>| {
        r.is_some_and(|r| {
            r.offset
                .checked_add(r.length)
                .is_none_or(|end| end > i64::MAX as u64)
        })
    };
    if unreachable(&bat) || unreachable(&metadata) {
        return Err(VhdxError::Unreachable);
    }
    match (bat, metadata) {
        (Some(bat), Some(metadata)) => Ok(Regions {
            bat,
            metadata,
            bat_first,
        }),
        _ => Err(VhdxError::Invalid),
    }
}

/// The region table naming `regions`, checksummed.
pub fn encode(regions: &Regions) -> Vec<u8> {
    let mut b = vec![0u8; TABLE_SIZE];
    put32(&mut b, 0, SIGNATURE);
    put32(&mut b, 8, 2);
    for (i, (id, r)) in [(BAT_GUID, regions.bat), (METADATA_GUID, regions.metadata)]
        .into_iter()
        .enumerate()
    {
        let e = 16 + 32 * i;
        b[e..e + 16].copy_from_slice(&id);
        put64(&mut b, e + 16, r.offset);
        put32(&mut b, e + 24, r.length as u32);
    }
    let sum = crc32c(&b);
    put32(&mut b, 4, sum);
    b
}
