//! `create -f vmdk`: the five subformats qemu-img makes, with its option
//! names, defaults, file names and descriptor text; and `measure`.

use crate::descriptor::{self, Access, DiskDatabase, ExtentLine, ExtentType};
use crate::error::{Result, VmdkError};
use crate::header::{
    magic, CowdHeader, SparseHeader, COMPRESSION_DEFLATE, COWD_MAGIC, FLAG_COMPRESSED,
    FLAG_MARKERS, FLAG_NL_TEST, FLAG_RGD, FLAG_ZEROED_GRAIN, GD_AT_END, SECTOR, SPARSE_MAGIC,
};
use crate::image::random_cid;
use crate::stream::empty_tail;
use qimg_driver_api::schema::{
    CreateOption, CreateRequest, MeasureRequest, MeasureResult, OptionType,
};
use qimg_driver_api::{ByteStoreBox, Extent, HostServicesBox, Prealloc};
use qimg_driver_util::option_with_default as opt;
use qimg_driver_util::{read_or_zero, write_all};

/// Sectors per grain of a new sparse extent (64 KiB).
const GRAIN_SECTORS: u64 = 128;
/// Grain table entries per table of a new hosted sparse extent.
const GTES_PER_GT: u64 = 512;
/// Sectors reserved for an embedded descriptor.
const DESCRIPTOR_SECTORS: u64 = 20;
/// Sectors of one extent of the `twoGbMaxExtent*` subformats (2 GiB).
const SPLIT_SECTORS: u64 = 4 << 20;
/// `ddb.toolsVersion` when none is given: "unknown" to VMware's tools.
const DEFAULT_TOOLS_VERSION: &str = "2147483647";

/// The subformats (`createType`s) `create` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subformat {
    /// One sparse extent holding its descriptor.
    MonolithicSparse,
    /// A descriptor file and one flat extent.
    MonolithicFlat,
    /// A descriptor file and sparse extents of at most 2 GiB.
    TwoGbMaxExtentSparse,
    /// A descriptor file and flat extents of at most 2 GiB.
    TwoGbMaxExtentFlat,
    /// One compressed sparse extent written as a stream.
    StreamOptimized,
}

impl Subformat {
    fn parse(name: &str) -> Option<Subformat> {
        Some(match name {
            "monolithicSparse" => Subformat::MonolithicSparse,
            "monolithicFlat" => Subformat::MonolithicFlat,
            "twoGbMaxExtentSparse" => Subformat::TwoGbMaxExtentSparse,
            "twoGbMaxExtentFlat" => Subformat::TwoGbMaxExtentFlat,
            "streamOptimized" => Subformat::StreamOptimized,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Subformat::StreamOptimized => "streamOptimized",
        }
    }
    fn flat(self) -> bool {
        matches!(
            self,
            Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat
        )
    }
    fn split(self) -> bool {
        matches!(
            self,
            Subformat::TwoGbMaxExtentSparse | Subformat::TwoGbMaxExtentFlat
        )
    }
}

/// The options of `create -f vmdk`, in qemu-img's order (the order of its
/// `Formatting` line), with its help texts and the defaults it prints.
pub fn options() -> Vec<CreateOption> {
    vec![
        opt("size", OptionType::Size, "Virtual disk size", None),
        opt(
            "adapter_type",
            OptionType::Str,
            "Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX",
            None,
        ),
        opt("backing_file", OptionType::Str, "File name of a base image", None),
        opt("backing_fmt", OptionType::Str, "Must be 'vmdk' if present", None),
        opt("compat6", OptionType::Bool, "VMDK version 6 image", Some("off")),
        opt("hwversion", OptionType::Str, "VMDK hardware version", Some("undefined")),
        opt("toolsversion", OptionType::Str, "VMware guest tools version", None),
        opt(
            "subformat",
            OptionType::Str,
            "VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized} ",
            None,
        ),
        opt(
            "zeroed_grain",
            OptionType::Bool,
            "Enable efficient zero writes using the zeroed-grain GTE feature",
            None,
        ),
    ]
}

/// A checked creation request.
struct Spec {
    subformat: Subformat,
    capacity: u64,
    ddb: DiskDatabase,
    zeroed_grain: bool,
    backing: Option<String>,
    prealloc: Prealloc,
}

fn invalid(value: &str) -> VmdkError {
    VmdkError::InvalidOption(format!("invalid parameter value: {value}"))
}

fn spec(request: &CreateRequest) -> Result<Spec> {
    let o = &request.options;
    let on = |k: &str| o.get(k).is_some_and(|v| v == "on");
    let adapter = o.get("adapter_type").map_or("ide", String::as_str);
    if !["ide", "lsilogic", "buslogic", "legacyESX"].contains(&adapter) {
        return Err(invalid(adapter));
    }
    let subformat = match o.get("subformat") {
        Some(name) => Subformat::parse(name).ok_or_else(|| invalid(name))?,
        None => Subformat::MonolithicSparse,
    };
    let backing = o.get("backing_file").cloned();
    if o.get("backing_fmt").is_some_and(|f| f != "vmdk") {
        return Err(VmdkError::InvalidOption(
            "backing_file must be a vmdk image".into(),
        ));
    }
    if subformat.flat() && backing.is_some() {
        return Err(VmdkError::InvalidOption(
            "Flat image can't have backing file".into(),
        ));
    }
    let zeroed_grain = on("zeroed_grain");
    if subformat.flat() && zeroed_grain {
        return Err(VmdkError::InvalidOption(
            "Flat image can't enable zeroed grain".into(),
        ));
    }
    let hw = o.get("hwversion").filter(|v| *v != "undefined");
    let hw_version = match (on("compat6"), hw) {
        (true, Some(_)) => {
            return Err(VmdkError::InvalidOption(
                "compat6 cannot be enabled with hwversion set".into(),
            ))
        }
        (true, None) => "6".to_string(),
        (false, Some(v)) => v.clone(),
        (false, None) => "4".to_string(),
    };
    let prealloc = match o.get("preallocation") {
        Some(p) => match Prealloc::parse(p).ok_or_else(|| invalid(p))? {
            Prealloc::METADATA => {
                return Err(VmdkError::InvalidOption(format!(
                    "Unsupported preallocation mode: {p}"
                )))
            }
            mode => mode,
        },
        None => Prealloc::OFF,
    };
    Ok(Spec {
        subformat,
        capacity: request.size.div_ceil(SECTOR),
        ddb: DiskDatabase {
            hw_version,
            adapter_type: adapter.to_string(),
            tools_version: o
                .get("toolsversion")
                .cloned()
                .unwrap_or_else(|| DEFAULT_TOOLS_VERSION.to_string()),
        },
        zeroed_grain,
        backing,
        prealloc,
    })
}

/// The layout of a new hosted sparse extent of `capacity` sectors: the
/// redundant grain directory and its tables, then the grain directory and
/// its tables, all before the first grain (VDF 1.1, "Hosted Sparse Extent").
struct Layout {
    gd_entries: u64,
    gd_sectors: u64,
    rgd_offset: u64,
    gd_offset: u64,
    overhead: u64,
}

fn layout(capacity: u64, stream: bool) -> Layout {
    let gd_entries = capacity.div_ceil(GRAIN_SECTORS * GTES_PER_GT);
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    let gt_sectors = gd_entries * (GTES_PER_GT * 4 / SECTOR);
    let rgd_offset = 1 + DESCRIPTOR_SECTORS;
    if stream {
        // Stream-optimized: tables follow the grains they map.
        return Layout {
            gd_entries,
            gd_sectors,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: rgd_offset.div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS,
        };
    }
    let gd_offset = rgd_offset + gd_sectors + gt_sectors;
    let overhead = (gd_offset + gd_sectors + gt_sectors).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
    Layout {
        gd_entries,
        gd_sectors,
        rgd_offset,
        gd_offset,
        overhead,
    }
}

/// Writes a new, empty hosted sparse extent of `capacity` sectors into
/// `store`, with `descriptor` embedded (an empty one for extents named by a
/// descriptor file).
fn write_sparse_extent(
    store: &ByteStoreBox,
    capacity: u64,
    stream: bool,
    zeroed_grain: bool,
    descriptor: &str,
) -> Result<()> {
    let l = layout(capacity, stream);
    // A grain directory QEMU (and qimg) would refuse to open ("L1 size too
    // big"): refused before any table is sized.
    if l.gd_entries > crate::sparse::MAX_GD_ENTRIES {
        return Err(VmdkError::TooLarge);
    }
    let mut flags = FLAG_NL_TEST;
    let mut version = 1;
    if zeroed_grain {
        flags |= FLAG_ZEROED_GRAIN;
        version = 2;
    }
    if stream {
        flags |= FLAG_COMPRESSED | FLAG_MARKERS;
        version = 3;
    } else {
        flags |= FLAG_RGD;
    }
    let header = SparseHeader {
        version,
        flags,
        capacity,
        grain_size: GRAIN_SECTORS,
        descriptor_offset: 1,
        descriptor_size: DESCRIPTOR_SECTORS,
        num_gtes_per_gt: GTES_PER_GT as u32,
        rgd_offset: l.rgd_offset,
        gd_offset: l.gd_offset,
        overhead: l.overhead,
        unclean_shutdown: false,
        compress_algorithm: if stream { COMPRESSION_DEFLATE } else { 0 },
    };
    if descriptor.len() as u64 > DESCRIPTOR_SECTORS * SECTOR {
        return Err(VmdkError::InvalidOption("descriptor too long".into()));
    }
    write_all(store, 0, &header.to_sector())?;
    write_all(store, SECTOR, descriptor.as_bytes())?;
    if stream {
        let tail = empty_tail(&header, l.gd_entries);
        write_all(store, l.overhead * SECTOR, &tail)?;
        return Ok(());
    }
    let gt_sectors = GTES_PER_GT * 4 / SECTOR;
    for base in [l.rgd_offset, l.gd_offset] {
        let first_gt = base + l.gd_sectors;
        let mut gd = Vec::with_capacity((l.gd_entries * 4) as usize);
        for i in 0..l.gd_entries {
            let sector =
                u32::try_from(first_gt + i * gt_sectors).map_err(|_| VmdkError::TooLarge)?;
            gd.extend_from_slice(&sector.to_le_bytes());
        }
        write_all(store, base * SECTOR, &gd)?;
    }
    store
        .set_len(l.overhead * SECTOR, Prealloc::OFF)
        .into_result()?;
    Ok(())
}

/// The name of extent `index` (from 1) of the image `image`: the image's
/// base name with `-flat`, `-sNNN` or `-fNNN` inserted before its last dot.
fn extent_name(image: &str, subformat: Subformat, index: usize) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    let (stem, ext) = match base.rfind('.') {
        Some(dot) => base.split_at(dot),
        None => (base, ""),
    };
    match subformat {
        Subformat::MonolithicFlat => format!("{stem}-flat{ext}"),
        Subformat::TwoGbMaxExtentFlat => format!("{stem}-f{index:03}{ext}"),
        _ => format!("{stem}-s{index:03}{ext}"),
    }
}

/// The CID of the disk `name` names, read as a parent (it must be a VMDK).
fn parent_cid(host: &HostServicesBox, name: &str) -> Result<u32> {
    let store = host.open_related(name.into(), false, false).into_result()?;
    let not_vmdk = || VmdkError::InvalidOption("backing_file must be a vmdk image".into());
    let len = store.len().into_result()?;
    let mut head = vec![0u8; SECTOR as usize];
    read_or_zero(&store, 0, &mut head)?;
    let text = match magic(&head) {
        Some(SPARSE_MAGIC) => {
            let h = SparseHeader::parse(&head).ok_or_else(not_vmdk)?;
            let room = h.descriptor_size.saturating_mul(SECTOR).min(1 << 20);
            let mut bytes = vec![0u8; room as usize];
            read_or_zero(
                &store,
                h.descriptor_offset.saturating_mul(SECTOR),
                &mut bytes,
            )?;
            bytes
        }
        Some(COWD_MAGIC) if CowdHeader::parse(&head).is_some() => return Ok(descriptor::NO_PARENT),
        _ if len <= 1 << 20 => {
            let mut bytes = vec![0u8; len.min(1 << 20) as usize];
            read_or_zero(&store, 0, &mut bytes)?;
            bytes
        }
        _ => return Err(not_vmdk()),
    };
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    let text = String::from_utf8_lossy(&text[..end]);
    if descriptor::quoted_value(&text, "createType").is_none() {
        return Err(not_vmdk());
    }
    descriptor::hex_value(&text, "CID").ok_or_else(not_vmdk)
}

/// Creates a disk in `store` (the file the user named) as `request` says.
pub fn create(store: ByteStoreBox, host: HostServicesBox, request: CreateRequest) -> Result<()> {
    let spec = spec(&request)?;
    let parent = match &spec.backing {
        Some(name) => Some((parent_cid(&host, name)?, name.as_str())),
        None => None,
    };
    let image = store.name().to_string();
    let base = image.rsplit('/').next().unwrap_or(&image).to_string();
    let cid = random_cid();
    let sub = spec.subformat;
    if !sub.split() && !sub.flat() {
        let stream = sub == Subformat::StreamOptimized;
        let line = ExtentLine {
            access: Access::ReadWrite,
            sectors: spec.capacity,
            kind: ExtentType::Sparse,
            file: base,
            offset: 0,
        };
        let text = descriptor::render(cid, parent, sub.name(), &[line], spec.capacity, &spec.ddb);
        return write_sparse_extent(&store, spec.capacity, stream, spec.zeroed_grain, &text);
    }
    let chunk = if sub.split() {
        SPLIT_SECTORS
    } else {
        spec.capacity.max(1)
    };
    let mut lines = Vec::new();
    let mut left = spec.capacity;
    let mut index = 1;
    while left > 0 || lines.is_empty() {
        let sectors = left.min(chunk);
        let name = extent_name(&image, sub, index);
        let extent = host
            .open_related(name.as_str().into(), true, true)
            .into_result()?;
        if sub.flat() {
            extent
                .set_len(sectors * SECTOR, spec.prealloc)
                .into_result()?;
        } else {
            write_sparse_extent(&extent, sectors, false, spec.zeroed_grain, "")?;
        }
        lines.push(ExtentLine {
            access: Access::ReadWrite,
            sectors,
            kind: if sub.flat() {
                ExtentType::Flat
            } else {
                ExtentType::Sparse
            },
            file: name,
            offset: 0,
        });
        left -= sectors;
        index += 1;
    }
    let text = descriptor::render(cid, parent, sub.name(), &lines, spec.capacity, &spec.ddb);
    write_all(&store, 0, text.as_bytes())?;
    Ok(())
}

/// `measure -O vmdk`: the space a new disk of this subformat takes, holding
/// what `allocated` lists (or everything, for `fully_allocated`).
pub fn measure(request: &MeasureRequest, allocated: &[Extent]) -> Result<MeasureResult> {
    let spec = spec(&CreateRequest {
        size: request.size,
        options: request.options.clone(),
    })?;
    let capacity = spec.capacity;
    let grain = GRAIN_SECTORS * SECTOR;
    let data: u64 = if request.from_image {
        let mut grains = std::collections::BTreeSet::new();
        for e in allocated {
            let first = e.offset / grain;
            let last = e.end().div_ceil(grain);
            grains.extend(first..last);
        }
        grains.len() as u64 * grain
    } else {
        0
    };
    let full = capacity * SECTOR;
    let (required, fully) = match spec.subformat {
        Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat => (full, full),
        sub => {
            let extents = if sub.split() {
                capacity.div_ceil(SPLIT_SECTORS).max(1)
            } else {
                1
            };
            let per = if sub.split() {
                SPLIT_SECTORS.min(capacity)
            } else {
                capacity
            };
            let meta = layout(per, sub == Subformat::StreamOptimized).overhead * SECTOR * extents;
            let full_data = capacity.div_ceil(GRAIN_SECTORS) * grain;
            (meta + data.min(full_data), meta + full_data)
        }
    };
    Ok(MeasureResult {
        required,
        fully_allocated: fully,
        bitmaps: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_qemu_img() {
        let l = layout(20480, false);
        assert_eq!((l.rgd_offset, l.gd_offset, l.overhead), (21, 26, 128));
        let l = layout(209_715_200, false);
        assert_eq!((l.gd_offset, l.overhead), (12846, 25728));
        let l = layout(4_194_304, false);
        assert_eq!((l.gd_offset, l.overhead), (278, 640));
    }

    #[test]
    fn extent_names_match_qemu_img() {
        assert_eq!(
            extent_name("d/x.vmdk", Subformat::MonolithicFlat, 1),
            "x-flat.vmdk"
        );
        assert_eq!(extent_name("foo", Subformat::MonolithicFlat, 1), "foo-flat");
        assert_eq!(
            extent_name(".hid", Subformat::MonolithicFlat, 1),
            "-flat.hid"
        );
        assert_eq!(
            extent_name("a.b.vmdk", Subformat::TwoGbMaxExtentSparse, 2),
            "a.b-s002.vmdk"
        );
        assert_eq!(
            extent_name("x.vmdk", Subformat::TwoGbMaxExtentFlat, 3),
            "x-f003.vmdk"
        );
    }
}
