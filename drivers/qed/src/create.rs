//! `create -f qed`: the header (and backing file name) in the first
//! cluster, then an empty L1 table, as qemu-img lays them out.

use crate::error::{Error, Result};
use crate::header::{self, features, Header, HEADER_BYTES};
use qimg_driver_api::schema::{CreateOption, CreateRequest, OptionType};
use qimg_driver_api::{ByteStoreBox, Prealloc, StoreExt};
use qimg_driver_util::option_with_default as opt;

/// Default cluster size.
const DEFAULT_CLUSTER_SIZE: u64 = 65536;
/// Default table size, in clusters.
const DEFAULT_TABLE_SIZE: u64 = 4;

/// The options `create -o` accepts, in the order qemu-img prints them.
pub fn options() -> Vec<CreateOption> {
    vec![
        opt("size", OptionType::Size, "Virtual disk size", None),
        opt(
            "backing_file",
            OptionType::Str,
            "File name of a base image",
            None,
        ),
        opt(
            "backing_fmt",
            OptionType::Str,
            "Image format of the base image",
            None,
        ),
        opt(
            "cluster_size",
            OptionType::Size,
            "Cluster size (in bytes)",
            Some("65536"),
        ),
        opt(
            "table_size",
            OptionType::Size,
            "L1/L2 table size (in clusters)",
            None,
        ),
    ]
}

/// The header `request` describes, with qemu-img's refusals.
pub fn header_for(request: &CreateRequest) -> Result<(Header, Option<String>)> {
    // The file protocol takes the preallocation mode first; a qed file is
    // never preallocated beyond its tables (qemu-img ignores the mode).
    if let Some(mode) = request.options.get("preallocation") {
        match Prealloc::parse(mode) {
            Some(Prealloc::METADATA) => {
                return Err(Error::Unsupported(
                    "Unsupported preallocation mode: metadata".into(),
                ))
            }
            Some(_) => {}
            None => return Err(Error::Argument(format!("invalid parameter value: {mode}"))),
        }
    }
    let number = |key: &str, default: u64| {
        request
            .options
            .get(key)
            .map(|v| v.parse().unwrap_or(u64::MAX))
            .unwrap_or(default)
    };
    let cluster_size = number("cluster_size", DEFAULT_CLUSTER_SIZE);
    let table_size = number("table_size", DEFAULT_TABLE_SIZE);
    if !header::cluster_size_valid(cluster_size) {
        return Err(Error::Argument(format!(
            "QED cluster size must be within range [{}, {}] and power of 2",
            header::MIN_CLUSTER_SIZE,
            header::MAX_CLUSTER_SIZE
        )));
    }
    if !header::table_size_valid(table_size) {
        return Err(Error::Argument(format!(
            "QED table size must be within range [1, {}] and power of 2",
            header::MAX_TABLE_SIZE
        )));
    }
    let image_size = request.size.next_multiple_of(512);
    let max = header::max_image_size(cluster_size, table_size);
    if image_size > max {
        return Err(Error::Argument(format!(
            "QED image size must be a non-zero multiple of cluster size and less than {max} bytes"
        )));
    }
    let backing = request
        .options
        .get("backing_file")
        .filter(|n| !n.is_empty())
        .cloned();
    let mut h = Header {
        cluster_size: cluster_size as u32,
        table_size: table_size as u32,
        header_size: 1,
        l1_table_offset: cluster_size,
        image_size,
        ..Header::default()
    };
    if let Some(name) = &backing {
        if HEADER_BYTES as u64 + name.len() as u64 > cluster_size {
            return Err(Error::Argument("Backing file name too long".into()));
        }
        h.features |= features::BACKING_FILE;
        // Only a raw backing file is recorded, as "never probe it".
        if request.options.get("backing_fmt").map(String::as_str) == Some("raw") {
            h.features |= features::BACKING_FORMAT_NO_PROBE;
        }
        h.backing_filename_offset = HEADER_BYTES as u32;
        h.backing_filename_size = name.len() as u32;
    }
    Ok((h, backing))
}

/// Creates the image in the empty `store`.
pub fn create(store: &ByteStoreBox, request: &CreateRequest) -> Result<()> {
    let (h, backing) = header_for(request)?;
    let mut head = h.to_bytes().to_vec();
    if let Some(name) = &backing {
        head.extend_from_slice(name.as_bytes());
    }
    store.write_all_at(0, &head)?;
    // The L1 table is written out as zeros, as qemu-img writes it.
    let zeros = vec![0u8; h.table_bytes() as usize];
    store.write_all_at(h.l1_table_offset, &zeros)?;
    store.flush().into_result()?;
    Ok(())
}
