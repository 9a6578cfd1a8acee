//! Creating a VHDX (`create -f vhdx`, convert targets) with qemu-img's
//! options, checks and layout, and measuring one (beyond qemu-img, which
//! cannot measure vhdx).
//!
//! The layout is qemu-img's: the header section (file identifier, two
//! headers, two region tables) in the first MiB, the log at 1 MiB, the BAT
//! after it, the metadata region after that, and payload blocks 4 MiB past
//! the metadata region's end: a fixed disk's in guest order, a dynamic
//! disk's at the end of the file as they are written.
//!
//! Beyond qemu-img, `-b PARENT` (a VHDX) makes a differencing disk: every
//! block NOT_PRESENT, the parent named by its DataWriteGuid and its path
//! relative to the new disk in a parent locator.

use crate::bat::{self, Geometry};
use crate::error::{Result, VhdxError};
use crate::format::{random_guid, MIB, ZERO_GUID};
use crate::header::{self, Header, FILE_SIGNATURE, HEADER_OFFSETS};
use crate::locator::{self, Locator};
use crate::metadata::{
    self, Metadata, HAS_PARENT, LEAVE_BLOCKS_ALLOCATED, MAX_BLOCK_SIZE, MAX_DISK_SIZE,
};
use crate::region::{self, Region, Regions, TABLE_OFFSETS};
use qimg_driver_api::schema::{
    CreateOption, CreateRequest, MeasureRequest, MeasureResult, OptionType,
};
use qimg_driver_api::{ByteStoreBox, Extent, HostExt, HostServicesBox, Prealloc, StoreExt};
use qimg_driver_util::{option as opt, option_with_default};
use std::collections::BTreeMap;

/// The log's default size.
const DEFAULT_LOG_SIZE: u64 = MIB;
/// Where qemu-img puts the first payload block: this far past the
/// metadata region's end.
const PAYLOAD_GAP: u64 = 4 * MIB;

/// The `-o` options of `create -f vhdx`, in qemu-img's order.
pub fn options() -> Vec<CreateOption> {
    vec![
        opt("size", OptionType::Size, "Virtual disk size; max of 64TB."),
        option_with_default("log_size", OptionType::Size, "Log size; min 1MB.", Some("1048576")),
        option_with_default(
            "block_size",
            OptionType::Size,
            "Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.",
            Some("0"),
        ),
        opt(
            "subformat",
            OptionType::Str,
            "VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'.",
        ),
        opt(
            "block_state_zero",
            OptionType::Bool,
            "Force use of payload blocks of type 'ZERO'. Non-standard, but default.  Do not set to 'off' when using 'qemu-img convert' with subformat=dynamic.",
        ),
        // Beyond qemu-img: differencing disks.
        opt("backing_file", OptionType::Str, "File name of a base image"),
        opt("backing_fmt", OptionType::Str, "Must be 'vhdx' if present"),
    ]
}

/// A disk to be made.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Fixed (all blocks allocated in order) or dynamic.
    pub fixed: bool,
    /// A differencing disk (over the `backing_file` option's parent).
    pub differencing: bool,
    /// Blocks start in state ZERO (qemu-img's default) rather than
    /// NOT_PRESENT.
    pub zero_blocks: bool,
    /// Guest size in bytes.
    pub size: u64,
    /// Bytes of the log.
    pub log_size: u64,
    /// The BAT's layout.
    pub geometry: Geometry,
    /// Where the BAT and metadata regions go.
    pub regions: Regions,
}

fn option_bytes(options: &BTreeMap<String, String>, name: &str, default: u64) -> Result<u64> {
    match options.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| VhdxError::InvalidOption(format!("invalid parameter value: {v}"))),
    }
}

impl Plan {
    /// The disk `size` and `options` ask for, with qemu-img's checks and
    /// messages, in its order.
    pub fn new(size: u64, options: &BTreeMap<String, String>) -> Result<Plan> {
        let fixed = match options.get("subformat").map(String::as_str) {
            None | Some("dynamic") => false,
            Some("fixed") => true,
            Some(other) => {
                return Err(VhdxError::InvalidOption(format!(
                    "Parameter 'subformat' does not accept value '{other}'"
                )))
            }
        };
        match options.get("preallocation").map(String::as_str) {
            None | Some("off" | "falloc" | "full") => {}
            Some("metadata") => {
                return Err(VhdxError::InvalidOption(
                    "Unsupported preallocation mode: metadata".into(),
                ))
            }
            Some(other) => {
                return Err(VhdxError::InvalidOption(format!(
                    "invalid parameter value: {other}"
                )))
            }
        }
        if size > MAX_DISK_SIZE {
            return Err(VhdxError::InvalidOption(
                "Image size too large; max of 64TB".into(),
            ));
        }
        let log_size = option_bytes(options, "log_size", DEFAULT_LOG_SIZE)?;
        if log_size >= 1 << 32 {
            return Err(VhdxError::InvalidOption(
                "Log size must be smaller than 4 GB".into(),
            ));
        }
        let log_size = log_size.next_multiple_of(MIB);
        if log_size == 0 {
            return Err(VhdxError::InvalidOption(
                "Log size must be a multiple of 1 MB".into(),
            ));
        }
        let mut block_size = option_bytes(options, "block_size", 0)?;
        if block_size == 0 {
            // qemu-img's choice by disk size.
            block_size = match size {
                s if s > 32 << 40 => 64 * MIB,
                s if s > 100 << 30 => 32 * MIB,
                s if s > 1 << 30 => 16 * MIB,
                _ => 8 * MIB,
            };
        }
        // Rounded up to whole MiB and into range before the power-of-two
        // check, as qemu-img does (1536K becomes 2M; 3M is refused).
        let block_size = block_size.saturating_add(MIB - 1) / MIB * MIB;
        let block_size = block_size.clamp(MIB, MAX_BLOCK_SIZE);
        if !block_size.is_power_of_two() {
            return Err(VhdxError::InvalidOption(
                "Block size must be a power of two".into(),
            ));
        }
        let differencing = options.contains_key("backing_file");
        if differencing && fixed {
            return Err(VhdxError::InvalidOption(
                "A differencing VHDX cannot be fixed".into(),
            ));
        }
        if options.get("backing_fmt").is_some_and(|f| f != "vhdx") {
            return Err(VhdxError::InvalidOption(
                "backing_fmt must be 'vhdx': a differencing VHDX has a VHDX parent".into(),
            ));
        }
        // A differencing disk's blocks start NOT_PRESENT: ZERO would hide
        // the parent.
        let zero_blocks =
            !differencing && options.get("block_state_zero").map(String::as_str) != Some("off");
        // The disk is whole logical sectors.
        let size = size.next_multiple_of(512);
        let mut geometry = Geometry::new(size, block_size, 512);
        if differencing {
            geometry = geometry.with_bitmaps();
        }
        let bat = Region {
            offset: MIB + log_size,
            length: (geometry.entries * bat::ENTRY_SIZE)
                .next_multiple_of(MIB)
                .max(MIB),
        };
        // qemu writes the BAT in one request, which fails past its
        // largest (and so would every later open).
        if geometry.entries * bat::ENTRY_SIZE > bat::MAX_REQUEST {
            return Err(VhdxError::BatTooLarge);
        }
        let metadata = Region {
            offset: bat.end(),
            length: MIB,
        };
        Ok(Plan {
            fixed,
            differencing,
            zero_blocks,
            size,
            log_size,
            geometry,
            regions: Regions {
                bat,
                metadata,
                bat_first: true,
            },
        })
    }

    /// Where payload blocks start.
    pub fn data_start(&self) -> u64 {
        self.regions.metadata.end() + PAYLOAD_GAP
    }

    /// The file's length before a dynamic disk's first write.
    fn empty_len(&self) -> u64 {
        if self.fixed {
            self.data_start() + self.size
        } else {
            self.data_start()
        }
    }

    /// The BAT entry of payload block `block` in the new disk.
    fn entry(&self, block: u64) -> u64 {
        if self.zero_blocks {
            bat::entry(bat::PAYLOAD_ZERO, 0)
        } else if self.fixed {
            let at = self.data_start() + block * self.geometry.block_size;
            bat::entry(bat::PAYLOAD_FULLY_PRESENT, at)
        } else {
            bat::entry(bat::PAYLOAD_NOT_PRESENT, 0)
        }
    }
}

/// The file type identifier: signature and creator ([MS-VHDX] 2.1.1).
fn identifier() -> Vec<u8> {
    let mut b = FILE_SIGNATURE.to_vec();
    let creator = concat!("qimg v", env!("CARGO_PKG_VERSION"));
    for unit in creator.encode_utf16() {
        b.extend_from_slice(&unit.to_le_bytes());
    }
    b
}

/// The locator of a new differencing disk over the VHDX `name` (relative
/// to the new disk), whose size must be `size`.
fn parent_locator(host: &HostServicesBox, name: &str, size: u64) -> Result<Locator> {
    let not_vhdx = || VhdxError::InvalidOption(format!("'{name}' is not a VHDX image"));
    let store = host.related(name, false, false)?;
    let (found, _) = header::read_current(&store).map_err(|_| not_vhdx())?;
    let regions = region::read(&store).map_err(|_| not_vhdx())?;
    let md = metadata::read(&store, regions.metadata).map_err(|_| not_vhdx())?;
    if md.disk_size.next_multiple_of(512) != size {
        return Err(VhdxError::InvalidOption(
            "A differencing VHDX must be the size of its parent".into(),
        ));
    }
    let mut entries = vec![(
        "parent_linkage".to_string(),
        locator::format_guid(&found.data_write_guid),
    )];
    if name.starts_with('/') {
        entries.push(("absolute_win32_path".into(), name.to_string()));
    } else {
        entries.push(("relative_path".into(), name.replace('/', "\\")));
    }
    Ok(Locator { entries })
}

/// Creates the disk `request` asks for in `store` (empty).
pub fn create(store: &ByteStoreBox, host: &HostServicesBox, request: &CreateRequest) -> Result<()> {
    let plan = Plan::new(request.size, &request.options)?;
    let parent = match request.options.get("backing_file") {
        Some(name) => Some(parent_locator(host, name, plan.size)?),
        None => None,
    };
    // Everything but the header goes first: a header makes the file a VHDX.
    store.set_size(plan.empty_len(), Prealloc::OFF)?;
    let md = Metadata {
        block_size: plan.geometry.block_size,
        flags: if plan.fixed {
            LEAVE_BLOCKS_ALLOCATED
        } else if plan.differencing {
            HAS_PARENT
        } else {
            0
        },
        disk_size: plan.size,
        page83: random_guid(),
        logical_sector_size: 512,
        physical_sector_size: 512,
        parent,
    };
    store.write_all_at(plan.regions.metadata.offset, &metadata::encode(&md))?;
    if plan.zero_blocks || plan.fixed {
        let g = &plan.geometry;
        // Up to the last payload block's entry: an empty disk's (huge)
        // table stays a hole.
        let used = g.data_blocks.checked_sub(1).map_or(0, |b| g.index(b) + 1);
        let mut table = vec![0u8; (used * bat::ENTRY_SIZE) as usize];
        for block in 0..g.data_blocks {
            let i = g.index(block) as usize;
            table[i * 8..i * 8 + 8].copy_from_slice(&plan.entry(block).to_le_bytes());
        }
        store.write_all_at(plan.regions.bat.offset, &table)?;
    }
    let table = region::encode(&plan.regions);
    for at in TABLE_OFFSETS {
        store.write_all_at(at, &table)?;
    }
    store.write_all_at(0, &identifier())?;
    let mut sequence = [0u8; 4];
    let _ = getrandom::fill(&mut sequence);
    let mut header = Header {
        sequence_number: u64::from(u32::from_le_bytes(sequence)),
        file_write_guid: random_guid(),
        data_write_guid: random_guid(),
        log_guid: ZERO_GUID,
        log_version: 0,
        version: 1,
        log_length: plan.log_size as u32,
        log_offset: MIB,
    };
    for at in HEADER_OFFSETS {
        store.write_all_at(at, &header.to_bytes())?;
        header.sequence_number += 1;
    }
    Ok(store.sync()?)
}

/// `measure -O vhdx`: the file an image of the request's size (and, from
/// an image, its allocated extents) converts into.
pub fn measure(request: &MeasureRequest, allocated: &[Extent]) -> Result<MeasureResult> {
    let plan = Plan::new(request.size, &request.options)?;
    let bs = plan.geometry.block_size;
    if plan.fixed && !plan.zero_blocks {
        let len = plan.empty_len();
        return Ok(MeasureResult {
            required: len,
            fully_allocated: len,
            bitmaps: None,
        });
    }
    // Blocks written go at the end of the file: past the data start of a
    // dynamic disk, past a fixed disk's preallocated area when its blocks
    // start in state ZERO (as qemu-img writes them too).
    let full = plan.empty_len() + plan.geometry.data_blocks * bs;
    let used = if request.from_image {
        let mut blocks = std::collections::BTreeSet::new();
        for e in allocated {
            let end = e.end().min(plan.size);
            let mut b = e.offset / bs;
            while b * bs < end {
                blocks.insert(b);
                b += 1;
            }
        }
        blocks.len() as u64
    } else {
        plan.geometry.data_blocks
    };
    Ok(MeasureResult {
        required: plan.empty_len() + used * bs,
        fully_allocated: full,
        bitmaps: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(size: u64, opts: &[(&str, &str)]) -> Result<Plan> {
        let options: BTreeMap<String, String> = opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Plan::new(size, &options)
    }

    #[test]
    fn qemu_layout() {
        let p = plan(64 << 20, &[]).unwrap();
        assert_eq!(p.geometry.block_size, 8 * MIB);
        assert_eq!(p.regions.bat.offset, 2 * MIB);
        assert_eq!(p.regions.metadata.offset, 3 * MIB);
        assert_eq!(p.data_start(), 8 * MIB);
        let p = plan(2 << 40, &[("block_size", "1048576")]).unwrap();
        assert_eq!(p.regions.bat.length, 17 * MIB);
        assert_eq!(
            plan(10 << 20, &[("block_size", "524288")])
                .unwrap()
                .geometry
                .block_size,
            MIB
        );
        assert!(plan(10 << 20, &[("block_size", "3145728")]).is_err());
        // Whole MiB first: 1536K is 2M, 2049K is 3M (refused).
        let p = plan(10 << 20, &[("block_size", "1572864")]).unwrap();
        assert_eq!(p.geometry.block_size, 2 * MIB);
        assert!(plan(10 << 20, &[("block_size", "2098176")]).is_err());
        assert!(plan(10 << 20, &[("log_size", "0")]).is_err());
        assert!(plan((64 << 40) + 1, &[]).is_err());
    }
}
