//! `create -f parallels` and `measure -O parallels`: a version 2 header and
//! a zeroed BAT, the data area starting at the first cluster after it, as
//! qemu-img 10.0.2 lays them out.

use crate::error::{ParallelsError, Result};
use crate::header::{
    bat_end, Header, HEADS, MAX_BAT_ENTRIES, MAX_TRACKS, SECTOR, SECTORS_PER_CYLINDER, VERSION,
};
use qimg_driver_api::schema::{
    CreateOption, CreateRequest, MeasureRequest, MeasureResult, OptionType,
};
use qimg_driver_api::{ByteStoreBox, Extent, Prealloc, StoreExt};
use qimg_driver_util::write_all;
use qimg_driver_util::{option, option_with_default};

/// qemu-img's default cluster size.
pub const DEFAULT_CLUSTER: u64 = 1 << 20;
/// Clusters an image may have at most, per qemu-img (2^32).
const MAX_CLUSTERS: u64 = 1 << 32;

/// The options, in qemu-img's order.
pub fn options() -> Vec<CreateOption> {
    vec![
        option("size", OptionType::Size, "Virtual disk size"),
        option_with_default(
            "cluster_size",
            OptionType::Size,
            "Parallels image cluster size",
            Some(&DEFAULT_CLUSTER.to_string()),
        ),
    ]
}

/// The header of a new image of `size` bytes (rounded up to a sector)
/// with clusters of `cluster_size` bytes (likewise), checked as qemu-img
/// checks them. qemu-img also creates images it cannot open (clusters of
/// more than `MAX_TRACKS` sectors, BATs of more than `MAX_BAT_ENTRIES`
/// entries); qimg refuses them.
pub fn new_header(size: u64, cluster_size: u64) -> Result<Header> {
    let size = size.next_multiple_of(SECTOR);
    let cluster = cluster_size.next_multiple_of(SECTOR);
    if cluster >= i64::MAX as u64 / MAX_CLUSTERS || cluster / SECTOR > u64::from(MAX_TRACKS) {
        return Err(ParallelsError::InvalidOption(
            "Cluster size is too large".into(),
        ));
    }
    let too_large =
        || ParallelsError::TooLarge("Image size is too large for this cluster size".into());
    if size >= MAX_CLUSTERS * cluster {
        return Err(too_large());
    }
    let entries = size.div_ceil(cluster);
    if entries > u64::from(MAX_BAT_ENTRIES) {
        return Err(too_large());
    }
    let entries = entries as u32;
    let data_off = bat_end(entries).div_ceil(cluster) * cluster / SECTOR;
    Ok(Header {
        v2: true,
        version: VERSION,
        heads: HEADS,
        cylinders: (size / SECTOR / u64::from(HEADS) / SECTORS_PER_CYLINDER) as u32,
        tracks: (cluster / SECTOR) as u32,
        bat_entries: entries,
        nb_sectors: size / SECTOR,
        inuse: 0,
        data_off: data_off as u32,
        flags: 0,
        ext_off: 0,
    })
}

/// The cluster size the options ask for.
fn cluster_option(request_options: &std::collections::BTreeMap<String, String>) -> Result<u64> {
    match request_options.get("cluster_size") {
        Some(v) => v
            .parse()
            .map_err(|_| ParallelsError::InvalidOption(format!("invalid cluster size '{v}'"))),
        None => Ok(DEFAULT_CLUSTER),
    }
}

/// Checks the file protocol's `preallocation` as qemu-img does (the file
/// is created empty whatever it says: qemu-img's parallels driver keeps
/// the size to itself).
fn check_prealloc(request_options: &std::collections::BTreeMap<String, String>) -> Result<()> {
    match request_options.get("preallocation").map(String::as_str) {
        None => Ok(()),
        Some("metadata") => Err(ParallelsError::InvalidOption(
            "Unsupported preallocation mode: metadata".into(),
        )),
        Some(p) if Prealloc::parse(p).is_some() => Ok(()),
        Some(p) => Err(ParallelsError::InvalidOption(format!(
            "invalid parameter value: {p}"
        ))),
    }
}

/// Creates an empty image in `store`.
pub fn create(store: &ByteStoreBox, request: &CreateRequest) -> Result<()> {
    check_prealloc(&request.options)?;
    let header = new_header(request.size, cluster_option(&request.options)?)?;
    let area = u64::from(header.data_off) * SECTOR;
    let mut first = vec![0u8; SECTOR as usize];
    first[..header.to_bytes().len()].copy_from_slice(&header.to_bytes());
    write_all(store, 0, &first)?;
    if area > SECTOR {
        store.zero_range(SECTOR, area - SECTOR, false)?;
    }
    store.sync()?;
    Ok(())
}

/// What an image of `request.size` bytes needs: the header area, and the
/// clusters the source allocates (all of them, fully allocated).
pub fn measure(request: &MeasureRequest, allocated: &[Extent]) -> Result<MeasureResult> {
    check_prealloc(&request.options)?;
    let header = new_header(request.size, cluster_option(&request.options)?)?;
    let cluster = header.cluster_size();
    let area = u64::from(header.data_off) * SECTOR;
    let mut clusters = 0u64;
    let mut last = None;
    for e in allocated {
        let first = (e.offset / cluster).max(last.map_or(0, |l: u64| l + 1));
        let end = e.end().div_ceil(cluster);
        if end > first {
            clusters += end - first;
            last = Some(end - 1);
        }
    }
    let all = u64::from(header.bat_entries);
    Ok(MeasureResult {
        required: area + clusters.min(all) * cluster,
        fully_allocated: area + all * cluster,
        bitmaps: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_match_qemu_img() {
        let h = new_header(10 << 20, DEFAULT_CLUSTER).unwrap();
        assert_eq!(
            (h.bat_entries, h.data_off, h.cylinders, h.tracks),
            (10, 2048, 40, 2048)
        );
        let h = new_header(10000, 1000).unwrap();
        assert_eq!(
            (h.bat_entries, h.data_off, h.nb_sectors, h.tracks),
            (10, 2, 20, 2)
        );
        let h = new_header(0, DEFAULT_CLUSTER).unwrap();
        assert_eq!((h.bat_entries, h.data_off), (0, 2048));
    }

    #[test]
    fn refused_sizes_have_qemu_img_words() {
        let e = |size, cluster| new_header(size, cluster).unwrap_err().to_string();
        assert_eq!(
            e(1 << 20, 0),
            "Image size is too large for this cluster size"
        );
        assert_eq!(e(1 << 20, 2 << 30), "Cluster size is too large");
        assert_eq!(
            e(2 << 40, 512),
            "Image size is too large for this cluster size"
        );
    }
}
