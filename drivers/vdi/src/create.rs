//! `create -f vdi` as qemu-img creates it (dynamic or static, the header,
//! the block map, the file's length), and `measure`, which qemu-img lacks.

use crate::error::{Result, VdiError};
use crate::header::{
    Header, BLOCK_SIZE, HEADER_SIZE, MAX_DISK_SIZE, SECTOR, TYPE_DYNAMIC, TYPE_STATIC, UNALLOCATED,
};
use qimg_driver_api::schema::{
    CreateOption, CreateRequest, MeasureRequest, MeasureResult, OptionType,
};
use qimg_driver_api::{ByteStoreBox, Extent, Prealloc};
use qimg_driver_util::write_all;
use qimg_driver_util::{option, option_with_default};
use std::collections::BTreeMap;

/// Entries of block map written at a time.
const MAP_CHUNK: u64 = 1 << 18;

/// The options of `create -f vdi`, in qemu-img's order.
pub fn options() -> Vec<CreateOption> {
    vec![
        option("size", OptionType::Size, "Virtual disk size"),
        option_with_default(
            "static",
            OptionType::Bool,
            "VDI static (pre-allocated) image",
            Some("off"),
        ),
    ]
}

/// A checked creation request: the new image's header.
fn spec(size: u64, options: &BTreeMap<String, String>) -> Result<Header> {
    // The file protocol takes the preallocation mode first; a vdi file's
    // data area is never preallocated (qemu-img ignores the mode).
    if let Some(mode) = options.get("preallocation") {
        match Prealloc::parse(mode) {
            Some(Prealloc::METADATA) => {
                return Err(VdiError::UnsupportedOption(
                    "Unsupported preallocation mode: metadata".into(),
                ))
            }
            Some(_) => {}
            None => {
                return Err(VdiError::InvalidOption(format!(
                    "invalid parameter value: {mode}"
                )))
            }
        }
    }
    let disk_size = size.next_multiple_of(SECTOR);
    if disk_size > MAX_DISK_SIZE {
        return Err(VdiError::SizeTooLarge(disk_size, MAX_DISK_SIZE));
    }
    let is_static = options.get("static").is_some_and(|v| v == "on");
    let blocks = disk_size.div_ceil(BLOCK_SIZE) as u32;
    let offset_bmap = HEADER_SIZE as u32;
    let map = (u64::from(blocks) * 4).next_multiple_of(SECTOR);
    Ok(Header {
        image_type: if is_static { TYPE_STATIC } else { TYPE_DYNAMIC },
        offset_bmap,
        offset_data: offset_bmap + map as u32,
        disk_size,
        blocks_in_image: blocks,
        blocks_allocated: if is_static { blocks } else { 0 },
        link_uuid: [0; 16],
    })
}

/// A random (version 4) UUID, stored as VirtualBox stores UUIDs: its first
/// three fields little-endian.
fn random_uuid() -> Result<[u8; 16]> {
    let mut u = [0u8; 16];
    getrandom::fill(&mut u).map_err(|e| {
        VdiError::Host(qimg_driver_api::DriverError::from_errno(
            5,
            format!("cannot draw a random UUID: {e}"),
        ))
    })?;
    // The version nibble is the high one of time_hi, stored little-endian.
    u[7] = (u[7] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    Ok(u)
}

/// Creates an image in the empty `store`.
pub fn create(store: &ByteStoreBox, request: &CreateRequest) -> Result<()> {
    let header = spec(request.size, &request.options)?;
    let uuids = [random_uuid()?, random_uuid()?];
    write_all(store, 0, &header.encode_new(uuids))?;
    let is_static = header.image_type == TYPE_STATIC;
    let blocks = u64::from(header.blocks_in_image);
    let map_len = header.bmap_bytes();
    let mut first = 0u64;
    while first * 4 < map_len {
        let n = MAP_CHUNK.min(map_len / 4 - first);
        let bytes: Vec<u8> = (first..first + n)
            .flat_map(|i| {
                let entry = match (i < blocks, is_static) {
                    (false, _) => 0,
                    (true, true) => i as u32,
                    (true, false) => UNALLOCATED,
                };
                entry.to_le_bytes()
            })
            .collect();
        write_all(store, u64::from(header.offset_bmap) + first * 4, &bytes)?;
        first += n;
    }
    if is_static {
        store
            .set_len(header.block_offset(header.blocks_in_image), Prealloc::OFF)
            .into_result()?;
    }
    Ok(store.flush().into_result()?)
}

/// The space an image of the request's size and options needs: its header
/// and block map, plus a block for every block `allocated` touches (every
/// block, for a static image or fully allocated).
pub fn measure(request: &MeasureRequest, allocated: &[Extent]) -> Result<MeasureResult> {
    let header = spec(request.size, &request.options)?;
    let all = u64::from(header.blocks_in_image);
    let mut used = 0u64;
    let mut next = 0u64;
    if request.from_image {
        for e in allocated {
            let first = (e.offset / BLOCK_SIZE).max(next);
            let end = e.end().div_ceil(BLOCK_SIZE).min(all);
            if end > first {
                used += end - first;
                next = end;
            }
        }
    }
    let fully = header.block_offset(header.blocks_in_image);
    Ok(MeasureResult {
        required: if header.image_type == TYPE_STATIC {
            fully
        } else {
            header.block_offset(used as u32)
        },
        fully_allocated: fully,
        bitmaps: None,
    })
}
