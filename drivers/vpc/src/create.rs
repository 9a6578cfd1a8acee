//! Creating a VHD (`create -f vpc`, convert targets) and measuring one, with
//! qemu-img's options, sizes and layout: a dynamic disk is the footer copy,
//! the dynamic disk header at 512, the table at 1536 (padded to whole
//! sectors) and the footer; a fixed disk is the guest's bytes, then the
//! footer.

use crate::error::{Result, VpcError};
use crate::footer::{
    now, random_uuid, Footer, Geometry, FOOTER_SIZE, MAX_GEOMETRY, NO_DATA_OFFSET, TYPE_DYNAMIC,
    TYPE_FIXED,
};
use crate::header::{DynamicHeader, DEFAULT_BLOCK_SIZE, HEADER_SIZE};
use qimg_driver_api::schema::{
    CreateOption, CreateRequest, MeasureRequest, MeasureResult, OptionType,
};
use qimg_driver_api::{ByteStoreBox, Extent, StoreExt};
use qimg_driver_util::option as opt;

/// The most sectors a VHD may have: 2040 GiB, the limit Microsoft's tools
/// set for the format.
pub const MAX_SECTORS: u64 = 0xff00_0000;
/// Where a new dynamic disk's table starts: after the footer copy and the
/// dynamic disk header.
const TABLE_OFFSET: u64 = (FOOTER_SIZE + HEADER_SIZE) as u64;
/// `Creator Version` qemu-img writes (5.3).
const CREATOR_VERSION: u32 = 0x0005_0003;

/// The `-o` options of `create -f vpc`, in qemu-img's order.
pub fn options() -> Vec<CreateOption> {
    vec![
        opt("size", OptionType::Size, "Virtual disk size"),
        opt(
            "subformat",
            OptionType::Str,
            "Type of virtual hard disk format. Supported formats are {dynamic (default) | fixed} ",
        ),
        opt(
            "force_size",
            OptionType::Bool,
            "Force disk size calculation to use the actual size specified, rather than using the nearest CHS-based calculation",
        ),
    ]
}

/// A disk to be made: its layout and its size.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Dynamic (true) or fixed.
    pub dynamic: bool,
    /// The footer.
    pub footer: Footer,
    /// Guest size in bytes.
    pub size: u64,
}

impl Plan {
    /// The disk `request` asks for, with qemu-img's checks and messages.
    pub fn new(size: u64, options: &std::collections::BTreeMap<String, String>) -> Result<Plan> {
        let dynamic = match options.get("subformat").map(String::as_str) {
            None | Some("dynamic") => true,
            Some("fixed") => false,
            Some(other) => {
                return Err(VpcError::InvalidOption(format!(
                    "Parameter 'subformat' does not accept value '{other}'"
                )))
            }
        };
        match options.get("preallocation").map(String::as_str) {
            None | Some("off" | "falloc" | "full") => {}
            Some("metadata") => {
                return Err(VpcError::InvalidOption(
                    "Unsupported preallocation mode: metadata".into(),
                ))
            }
            Some(other) => {
                return Err(VpcError::InvalidOption(format!(
                    "invalid parameter value: {other}"
                )))
            }
        }
        let force = options.get("force_size").map(String::as_str) == Some("on");
        let (geometry, sectors) = sizing(size.div_ceil(512), force);
        if sectors > MAX_SECTORS {
            return Err(VpcError::TooLarge);
        }
        let size = sectors * 512;
        let footer = Footer {
            data_offset: if dynamic {
                FOOTER_SIZE as u64
            } else {
                NO_DATA_OFFSET
            },
            timestamp: now(),
            // `qem2` tells readers to trust `Current Size`.
            creator_app: if force { *b"qem2" } else { *b"qemu" },
            creator_version: CREATOR_VERSION,
            creator_os: *b"Wi2k",
            original_size: size,
            current_size: size,
            geometry,
            disk_type: if dynamic { TYPE_DYNAMIC } else { TYPE_FIXED },
            uuid: random_uuid(),
        };
        Ok(Plan {
            dynamic,
            footer,
            size,
        })
    }

    /// Entries of a dynamic disk's table.
    fn table_entries(&self) -> u64 {
        self.size.div_ceil(u64::from(DEFAULT_BLOCK_SIZE))
    }

    /// Bytes of the table, padded to whole sectors.
    fn table_bytes(&self) -> u64 {
        (self.table_entries() * 4).next_multiple_of(512)
    }

    /// Bytes of the file before any block is allocated.
    fn empty_len(&self) -> u64 {
        if self.dynamic {
            TABLE_OFFSET + self.table_bytes() + FOOTER_SIZE as u64
        } else {
            self.size + FOOTER_SIZE as u64
        }
    }
}

/// The geometry and sector count of a disk of `sectors` sectors: with
/// `force`, the size as asked and the largest geometry; otherwise the
/// smallest geometry that holds it (what Virtual PC's BIOS sees), unless
/// the disk is larger than any geometry can describe.
pub fn sizing(sectors: u64, force: bool) -> (Geometry, u64) {
    if sectors == 0 && !force {
        // qemu-img searches upwards from no geometry at all, which already
        // holds an empty disk.
        let none = Geometry {
            cylinders: 0,
            heads: 0,
            sectors: 0,
        };
        return (none, 0);
    }
    if force || sectors >= MAX_GEOMETRY.total_sectors() {
        return (MAX_GEOMETRY, sectors);
    }
    let mut candidate = sectors;
    loop {
        let g = Geometry::for_sectors(candidate);
        if g.total_sectors() >= sectors {
            return (g, g.total_sectors());
        }
        candidate += 1;
    }
}

/// Creates the disk `request` asks for in `store` (empty).
pub fn create(store: &ByteStoreBox, request: &CreateRequest) -> Result<()> {
    let plan = Plan::new(request.size, &request.options)?;
    let footer = plan.footer.to_bytes();
    if plan.dynamic {
        let entries = plan.table_entries();
        let header = DynamicHeader {
            table_offset: TABLE_OFFSET,
            max_table_entries: entries as u32,
            block_size: DEFAULT_BLOCK_SIZE,
        };
        let mut head = Vec::with_capacity(TABLE_OFFSET as usize);
        head.extend_from_slice(&footer);
        head.extend_from_slice(&header.to_bytes());
        store.write_all_at(0, &head)?;
        store.write_all_at(TABLE_OFFSET, &vec![0xff; plan.table_bytes() as usize])?;
    } else {
        // qemu-img's file layer writes the first block of a new file, so
        // that its block size can be probed from allocated data: the same
        // allocation, so `map` of the new file shows the same.
        let data = plan.empty_len() - FOOTER_SIZE as u64;
        store.write_all_at(0, &vec![0u8; data.min(4096) as usize])?;
    }
    store.write_all_at(plan.empty_len() - FOOTER_SIZE as u64, &footer)?;
    Ok(store.sync()?)
}

/// `measure -O vpc`: the file an image of the request's size (and, from
/// an image, its allocated extents) converts into.
pub fn measure(request: &MeasureRequest, allocated: &[Extent]) -> Result<MeasureResult> {
    let plan = Plan::new(request.size, &request.options)?;
    if !plan.dynamic {
        let len = plan.empty_len();
        return Ok(MeasureResult {
            required: len,
            fully_allocated: len,
            bitmaps: None,
        });
    }
    let block = u64::from(DEFAULT_BLOCK_SIZE);
    let span = block + 512;
    let all = plan.table_entries();
    let used = if request.from_image {
        let mut blocks = std::collections::BTreeSet::new();
        for e in allocated {
            let end = e.end().min(plan.size);
            let mut b = e.offset / block;
            while b * block < end {
                blocks.insert(b);
                b += 1;
            }
        }
        blocks.len() as u64
    } else {
        all
    };
    Ok(MeasureResult {
        required: plan.empty_len() + used * span,
        fully_allocated: plan.empty_len() + all * span,
        bitmaps: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn plan(size: u64, opts: &[(&str, &str)]) -> Result<Plan> {
        let options: BTreeMap<String, String> = opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Plan::new(size, &options)
    }

    #[test]
    fn sizes_follow_the_geometry_unless_forced() {
        assert_eq!(plan(10 << 20, &[]).unwrap().size, 10514432);
        assert_eq!(plan(1, &[]).unwrap().size, 34816);
        assert_eq!(plan(1, &[("force_size", "on")]).unwrap().size, 512);
        assert_eq!(plan(128 << 30, &[]).unwrap().size, 128 << 30);
        assert!(matches!(
            plan((2040 << 30) + 1, &[]),
            Err(VpcError::TooLarge)
        ));
        assert!(plan(2040 << 30, &[]).is_ok());
    }
}
