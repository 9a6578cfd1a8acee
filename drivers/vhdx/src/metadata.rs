//! The metadata region ([MS-VHDX] 2.6): a table of items, of which a disk
//! needs five: file parameters (block size, has-parent), virtual disk size,
//! virtual disk id (the SCSI page 83 id), logical and physical sector size;
//! a differencing disk also its parent locator.

use crate::error::{Result, VhdxError};
use crate::format::{guid, guid_at, le16, le32, le64, put16, put32, put64, Guid, MIB};
use crate::locator::{self, Locator};
use crate::region::Region;
use qimg_driver_api::{ByteStoreBox, StoreExt};

/// "metadata".
const SIGNATURE: &[u8; 8] = b"metadata";
/// The table's size; items lie past it.
pub const TABLE_SIZE: u64 = 64 * 1024;
/// At most this many entries ([MS-VHDX] 2.6.1.1).
const MAX_ENTRIES: usize = 2047;

/// File Parameters.
const FILE_PARAMETERS: Guid = guid(0xCAA1_6737, 0xFA36, 0x4D43, 0xB3B6_33F0_AA44_E76B);
/// Virtual Disk Size.
const VIRTUAL_DISK_SIZE: Guid = guid(0x2FA5_4224, 0xCD1B, 0x4876, 0xB211_5DBE_D83B_F4B8);
/// Virtual Disk ID (page 83 data).
const PAGE83: Guid = guid(0xBECA_12AB, 0xB2E6, 0x4523, 0x93EF_C309_E000_C746);
/// Logical Sector Size.
const LOGICAL_SECTOR_SIZE: Guid = guid(0x8141_BF1D, 0xA96F, 0x4709, 0xBA47_F233_A8FA_AB5F);
/// Physical Sector Size.
const PHYSICAL_SECTOR_SIZE: Guid = guid(0xCDA3_48C7, 0x445D, 0x4471, 0x9CC9_E988_5251_C556);
/// Parent Locator.
const PARENT_LOCATOR: Guid = guid(0xA8D3_5F2D, 0xB30B, 0x454D, 0xABF7_D3D8_4834_AB0C);

/// `HasParent` of the file parameters' flags.
pub const HAS_PARENT: u32 = 2;
/// `LeaveBlockAllocated` of the file parameters' flags.
pub const LEAVE_BLOCKS_ALLOCATED: u32 = 1;
/// The largest virtual disk [MS-VHDX] 2.6.2.2 allows: 64 TiB.
pub const MAX_DISK_SIZE: u64 = 64 << 40;
/// Block sizes are powers of two from 1 MiB to 256 MiB ([MS-VHDX] 2.6.2.1).
pub const MAX_BLOCK_SIZE: u64 = 256 * MIB;

/// The disk's parameters, from the metadata region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Guest bytes per payload block.
    pub block_size: u64,
    /// File parameters' flags.
    pub flags: u32,
    /// Guest size in bytes.
    pub disk_size: u64,
    /// The disk's SCSI id.
    pub page83: Guid,
    /// 512 or 4096.
    pub logical_sector_size: u32,
    /// 512 or 4096.
    pub physical_sector_size: u32,
    /// A differencing disk's parent locator.
    pub parent: Option<Locator>,
}

/// Reads the metadata table and the items a disk needs.
pub fn read(store: &ByteStoreBox, region: Region) -> Result<Metadata> {
    let mut table = vec![0u8; TABLE_SIZE as usize];
    store.read_or_zero_at(region.offset, &mut table)?;
    if &table[..8] != SIGNATURE {
        return Err(VhdxError::Invalid);
    }
    let count = usize::from(le16(&table, 10));
    if count > MAX_ENTRIES {
        return Err(VhdxError::Invalid);
    }
    let mut items: [Option<(u32, u32)>; 6] = [None; 6];
    let ids = [
        FILE_PARAMETERS,
        VIRTUAL_DISK_SIZE,
        PAGE83,
        LOGICAL_SECTOR_SIZE,
        PHYSICAL_SECTOR_SIZE,
        PARENT_LOCATOR,
    ];
    for i in 0..count {
        let e = 32 + 32 * i;
        let id = guid_at(&table, e);
        let (offset, length) = (le32(&table, e + 16), le32(&table, e + 20));
        let required = le32(&table, e + 24) & 4 != 0;
        match ids.iter().position(|&k| k == id) {
            Some(k) => {
                // Like qemu-img, an item is read wherever its entry says
                // (bounded reads of fixed sizes); only a repeated one is
                // refused. Writes check their place (`disk_size_offset`).
                if items[k].is_some() {
                    return Err(VhdxError::Invalid);
                }
                items[k] = Some((offset, length));
            }
            // [MS-VHDX] 2.6.1.2: an unknown required item makes the file
            // unreadable to this reader.
            None if required => return Err(VhdxError::NotSupported),
            None => {}
        }
    }
    // qemu-img refuses a disk without the five items it needs as a file
    // it does not support.
    if items[..5].iter().any(Option::is_none) {
        return Err(VhdxError::NotSupported);
    }
    let value = |k: usize, len: u32| -> Result<Vec<u8>> {
        // Like qemu-img, the item's recorded length is not consulted.
        let (offset, _) = items[k].ok_or(VhdxError::Invalid)?;
        let mut b = vec![0u8; len as usize];
        store.read_or_zero_at(region.offset + u64::from(offset), &mut b)?;
        Ok(b)
    };
    let params = value(0, 8)?;
    let size = value(1, 8)?;
    let page83 = value(2, 16)?;
    let logical = value(3, 4)?;
    let physical = value(4, 4)?;
    let flags = le32(&params, 4);
    let parent = if flags & HAS_PARENT != 0 {
        // A differencing disk: qemu-img refuses it; qimg reads it over its
        // parent.
        let (_, length) = items[5].ok_or(VhdxError::Invalid)?;
        Some(Locator::parse(&value(5, length.min(locator::MAX_BYTES))?)?)
    } else {
        None
    };
    let md = Metadata {
        block_size: u64::from(le32(&params, 0)),
        flags,
        disk_size: le64(&size, 0),
        page83: guid_at(&page83, 0),
        logical_sector_size: le32(&logical, 0),
        physical_sector_size: le32(&physical, 0),
        parent,
    };
    // In qemu-img's order: the block size's range, the logical sector
    // size (it reads 512-byte sectors only), then the block size's form.
    if !(MIB..=MAX_BLOCK_SIZE).contains(&md.block_size) {
        return Err(VhdxError::Invalid);
    }
    if md.logical_sector_size != 512 {
        return Err(VhdxError::NotSupported);
    }
    if !md.block_size.is_power_of_two() {
        return Err(VhdxError::Invalid);
    }
    if md.disk_size > MAX_DISK_SIZE {
        return Err(VhdxError::Invalid);
    }
    Ok(md)
}

/// The metadata region's first bytes as qemu-img lays them out: the table
/// and the five items just past it (and a differencing disk's parent
/// locator after them).
pub fn encode(md: &Metadata) -> Vec<u8> {
    let locator = md.parent.as_ref().map(Locator::encode).unwrap_or_default();
    let mut b = vec![0u8; TABLE_SIZE as usize + 64 + locator.len()];
    b[..8].copy_from_slice(SIGNATURE);
    let base = TABLE_SIZE as usize;
    // (id, offset within the items, length, IsVirtualDisk|IsRequired flags)
    let mut items = vec![
        (FILE_PARAMETERS, 0, 8, 4),
        (VIRTUAL_DISK_SIZE, 8, 8, 6),
        (PAGE83, 16, 16, 6),
        (LOGICAL_SECTOR_SIZE, 32, 4, 6),
        (PHYSICAL_SECTOR_SIZE, 36, 4, 6),
    ];
    if md.parent.is_some() {
        items.push((PARENT_LOCATOR, 64, locator.len() as u32, 4));
        b[base + 64..].copy_from_slice(&locator);
    }
    put16(&mut b, 10, items.len() as u16);
    for (i, (id, at, len, flags)) in items.into_iter().enumerate() {
        let e = 32 + 32 * i;
        b[e..e + 16].copy_from_slice(&id);
        put32(&mut b, e + 16, (base + at) as u32);
        put32(&mut b, e + 20, len);
        put32(&mut b, e + 24, flags);
    }
    put32(&mut b, base, md.block_size as u32);
    put32(&mut b, base + 4, md.flags);
    put64(&mut b, base + 8, md.disk_size);
    b[base + 16..base + 32].copy_from_slice(&md.page83);
    put32(&mut b, base + 32, md.logical_sector_size);
    put32(&mut b, base + 36, md.physical_sector_size);
    b
}

/// Where the virtual disk size item of the metadata region at `region`
/// lies in the file (for resize): inside the region's items, or the disk
/// is refused, so a resize never writes over anything else.
pub fn disk_size_offset(store: &ByteStoreBox, region: Region) -> Result<u64> {
    let mut table = vec![0u8; TABLE_SIZE as usize];
    store.read_or_zero_at(region.offset, &mut table)?;
    let count = usize::from(le16(&table, 10)).min(MAX_ENTRIES);
    (0..count)
        .map(|i| 32 + 32 * i)
        .find(|&e| guid_at(&table, e) == VIRTUAL_DISK_SIZE)
        .map(|e| region.offset + u64::from(le32(&table, e + 16)))
        .filter(|&at| at >= region.offset + TABLE_SIZE && at + 8 <= region.offset + region.length)
        .ok_or(VhdxError::Invalid)
}
