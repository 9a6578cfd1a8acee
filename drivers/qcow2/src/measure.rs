//! `measure`: the file size a qcow2 image needs, counted as qemu counts it —
//! header, L2 tables and L1 table for the whole guest, refcount structures
//! for all of that, a LUKS header's clusters, plus the data clusters the
//! source fills.

use crate::create::{cluster_size_option, refcount_bits_option};
use crate::crypt::crypt_error;
use crate::error::{Error, Result};
use qimg_crypt::{volume, LuksOptions};
use qimg_driver_api::schema::{BitmapSummary, MeasureRequest, MeasureResult};
use qimg_driver_api::{Extent, Prealloc};
use std::collections::BTreeMap;

/// Bytes of refcount table and blocks needed to count `clusters` clusters
/// plus themselves (a fixed point: the structures count themselves too).
pub fn refcount_metadata_size(clusters: u64, cluster_size: u64, refcount_order: u32) -> u64 {
    let per_block = (cluster_size * 8) >> refcount_order;
    let per_table_cluster = cluster_size / 8;
    let (mut blocks, mut table) = (0u64, 0u64);
    loop {
        let new_blocks = (clusters + table + blocks).div_ceil(per_block);
        let new_table = new_blocks.div_ceil(per_table_cluster);
        if new_blocks == blocks && new_table == table {
            return (blocks + table) * cluster_size;
        }
        blocks = new_blocks;
        table = new_table;
    }
}

/// Size of a fully allocated image of `size` guest bytes: data, header,
/// L2 tables, L1 table and refcounts.
pub fn full_size(size: u64, cluster_size: u64, refcount_order: u32, extended: bool) -> u64 {
    let aligned = size.div_ceil(cluster_size) * cluster_size;
    let entry = if extended { 16 } else { 8 };
    let mut meta = cluster_size;
    let l2_entries = (aligned / cluster_size).next_multiple_of(cluster_size / entry);
    meta += l2_entries * entry;
    let l1_entries = (l2_entries * entry / cluster_size).next_multiple_of(cluster_size / 8);
    meta += l1_entries * 8;
    meta += refcount_metadata_size(
        (meta + aligned) / cluster_size,
        cluster_size,
        refcount_order,
    );
    meta + aligned
}

/// Space persistent bitmaps need in a new image with clusters of `cs`
/// bytes (qcow2.txt "Bitmaps"): per bitmap its data clusters and its bitmap
/// table, plus the bitmap directory (an entry of 24 bytes and the name,
/// padded to 8) rounded up to a cluster.
pub fn bitmaps_size(bitmaps: &[BitmapSummary], disk_size: u64, cs: u64) -> u64 {
    let mut total = 0u64;
    let mut directory = 0u64;
    for b in bitmaps {
        let bits = disk_size.div_ceil(b.granularity.max(1));
        let data_clusters = bits.div_ceil(8).div_ceil(cs);
        total += data_clusters * cs + (data_clusters * 8).div_ceil(cs) * cs;
        directory += (24 + b.name.len() as u64).next_multiple_of(8);
    }
    total + directory.div_ceil(cs) * cs
}

/// The creation options measure reads, as qemu reads them for measure: in
/// its order and with its messages, every other option left unread.
struct MeasureParams {
    cluster_bits: u32,
    extended_l2: bool,
    version: u32,
    refcount_order: u32,
    prealloc: Prealloc,
    luks: Option<LuksOptions>,
}

fn measure_params(options: &BTreeMap<String, String>) -> Result<MeasureParams> {
    let extended_l2 = options.get("extended_l2").is_some_and(|v| v == "on");
    let cluster_size = cluster_size_option(options);
    if !cluster_size.is_power_of_two() || !(512..=2 << 20).contains(&cluster_size) {
        return Err(Error::argument(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    if extended_l2 && cluster_size < 16384 {
        return Err(Error::argument(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }
    let version = match options.get("compat").map(String::as_str) {
        None | Some("1.1") => 3,
        Some("0.10") => 2,
        Some(other) => {
            return Err(Error::argument(format!(
                "Invalid compatibility level: '{other}'"
            )))
        }
    };
    let refcount_bits = refcount_bits_option(options)?;
    if version < 3 && refcount_bits != 16 {
        return Err(Error::argument("Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"));
    }
    let prealloc = match options.get("preallocation") {
        Some(p) => Prealloc::parse(p)
            .ok_or_else(|| Error::argument(format!("invalid parameter value: {p}")))?,
        None => Prealloc::OFF,
    };
    // Only LUKS takes room of its own: another format is not looked at.
    let luks = if options.get("encrypt.format").map(String::as_str) == Some("luks") {
        let luks = LuksOptions::parse(
            |k| options.get(&format!("encrypt.{k}")).map(String::as_str),
            "encrypt.",
        )
        .map_err(crypt_error)?;
        if !options.contains_key("encrypt.key-secret") {
            return Err(Error::argument(
                "Parameter 'encrypt.key-secret' is required for cipher",
            ));
        }
        Some(luks)
    } else {
        None
    };
    Ok(MeasureParams {
        cluster_bits: cluster_size.trailing_zeros(),
        extended_l2,
        version,
        refcount_order: refcount_bits.trailing_zeros(),
        prealloc,
        luks,
    })
}

/// Answers `measure` for a new image (`allocated` empty) or one converted
/// from a source whose data extents are `allocated`.
pub fn measure(request: &MeasureRequest, allocated: &[Extent]) -> Result<MeasureResult> {
    let p = measure_params(&request.options)?;
    let cs = 1u64 << p.cluster_bits;
    let entry = if p.extended_l2 { 16 } else { 8 };
    let virtual_size = request.size.div_ceil(cs) * cs;
    let l2_tables = (virtual_size / cs).div_ceil(cs / entry);
    if l2_tables * entry > 32 << 20 {
        return Err(Error::argument(
            "The image size is too large (try using a larger cluster size)",
        ));
    }
    let mut required = 0u64;
    // With a backing file, how much of the source the new image shares with
    // it is unknown: every cluster may need writing (qemu-img assumes so).
    let backed = request.from_image
        && request
            .options
            .get("backing_file")
            .is_some_and(|b| !b.is_empty());
    if backed || matches!(p.prealloc, Prealloc::FULL | Prealloc::FALLOC) {
        required = virtual_size;
    } else {
        // Each data run counts the clusters it touches; a run starting in a
        // cluster already counted starts at the next one.
        let mut next = 0u64;
        for e in allocated {
            let start = e.offset.max(next);
            if start >= e.end() {
                continue;
            }
            let end = e.end().div_ceil(cs) * cs;
            required += end - start / cs * cs;
            next = end;
        }
    }
    // A LUKS header with its key slots takes whole clusters of its own.
    let luks = match &p.luks {
        Some(options) => {
            let params = options.params().map_err(crypt_error)?;
            volume::payload_offset(params.spec).next_multiple_of(cs)
        }
        None => 0,
    };
    let full = luks + full_size(virtual_size, cs, p.refcount_order, p.extended_l2);
    // Bitmaps are copied only into version 3 images.
    let bitmaps = match &request.source_bitmaps {
        Some(list) if p.version >= 3 => Some(bitmaps_size(list, request.size, cs)),
        _ => None,
    };
    Ok(MeasureResult {
        required: full - virtual_size + required,
        fully_allocated: full,
        bitmaps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_mib_with_default_options() {
        assert_eq!(full_size(4 << 20, 65536, 4, false), 4521984);
    }

    #[test]
    fn data_runs_count_whole_clusters_once() {
        let ext = |offset, length| Extent {
            offset,
            length,
            flags: 1,
            store: 0,
            host_offset: 0,
        };
        let req = MeasureRequest {
            size: 4 << 20,
            options: Default::default(),
            from_image: true,
            source_bitmaps: None,
        };
        let r = measure(&req, &[ext(0, 4096), ext(8192, 4096), ext(65536, 1)]).unwrap();
        assert_eq!(r.required, 327680 + 2 * 65536);
    }

    #[test]
    fn bitmaps_count_data_tables_and_directory() {
        let b = |name: &str, granularity| BitmapSummary {
            name: name.into(),
            granularity,
            ..BitmapSummary::default()
        };
        // 64 MiB disk, 64 KiB clusters: one data cluster and one table
        // cluster each, and one directory cluster.
        assert_eq!(
            bitmaps_size(&[b("b0", 65536), b("b1", 1 << 20)], 64 << 20, 65536),
            327680
        );
        assert_eq!(
            bitmaps_size(&[b("b0", 65536), b("b1", 1 << 20)], 64 << 20, 4096),
            20480
        );
        assert_eq!(bitmaps_size(&[], 64 << 20, 65536), 0);
    }
}
