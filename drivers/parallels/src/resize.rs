//! `resize` (qemu-img 10.0.2 cannot resize parallels images).
//!
//! Growing within the room the BAT already has (up to the data area) only
//! rewrites the header. Growing past it moves the data clusters in the way
//! to the end of the file first: copies written and made durable, then the
//! BAT naming the copies, then the new BAT area cleared, then the header.
//! Shrinking frees the clusters past the new end, writes the BAT, then the
//! header. Either way the cluster holding the smaller end is zeroed past
//! it first, so that nothing cut off reads again. A kill at any point
//! leaves the old image or the new one, with at worst leaked clusters.
//!
//! `--preallocation=falloc|full` then gives every unallocated cluster of the
//! new area a cluster of the file, zeroed (`falloc`: allocated by the file
//! system as zeros; `full`: zeros written), before the BAT names them.
//! `metadata` is refused, as `create` refuses it.

use crate::error::{ParallelsError, Result};
use crate::header::{bat_end, Header, HEADER_SIZE, HEADS, SECTOR, SECTORS_PER_CYLINDER};
use crate::image::{used_map, ParallelsImage, MAX_LENGTH};
use qimg_driver_api::{Prealloc, StoreExt};
use qimg_driver_util::{read_or_zero, write_all};

/// Changes the guest size to `new_size` bytes (rounded up to a sector).
pub fn resize(img: &ParallelsImage, new_size: u64, prealloc: Prealloc, shrink: bool) -> Result<()> {
    if !matches!(prealloc, Prealloc::OFF | Prealloc::FALLOC | Prealloc::FULL) {
        return Err(ParallelsError::Unsupported(format!(
            "Unsupported preallocation mode '{}'",
            prealloc.name()
        )));
    }
    let old_size = img.size();
    let geo = img.geo;
    let cs = geo.cluster;
    let sectors = new_size.div_ceil(SECTOR);
    if sectors > MAX_LENGTH / SECTOR || sectors * SECTOR >= (1u64 << 32) * cs {
        return Err(ParallelsError::TooLarge(
            "Image size is too large for this cluster size".into(),
        ));
    }
    let entries = (sectors * SECTOR).div_ceil(cs);
    if entries > u64::from(crate::header::MAX_BAT_ENTRIES) {
        return Err(ParallelsError::TooLarge(
            "Image size is too large for this cluster size".into(),
        ));
    }
    let entries = entries as u32;
    let mut st = img.write_state();
    let old_entries = st.header.bat_entries;
    if sectors * SECTOR < img.size() && !shrink {
        return Err(ParallelsError::Unsupported(
            "Use the --shrink option to perform a shrink operation.".into(),
        ));
    }
    // The cluster that holds the smaller end is zeroed from there on:
    // whatever lay past an end never reads again.
    let end = (sectors * SECTOR).min(old_size);
    let e = st.entry(end / cs);
    if !end.is_multiple_of(cs) && e != 0 {
        img.store
            .zero_range(geo.host(e) + end % cs, cs - end % cs, true)?;
    }
    if entries < old_entries {
        // Free what lies past the new end, make the BAT say so.
        for g in u64::from(entries)..u64::from(old_entries) {
            let e = st.entry(g);
            if e != 0 {
                img.store.zero_range(geo.host(e), cs, true)?;
                st.set_entry(g, 0);
            }
        }
        img.flush_state(&mut st)?;
        st.bat.truncate(entries as usize);
    }
    let new_start = if entries > old_entries {
        let probe = Header {
            bat_entries: entries,
            ..st.header.clone()
        };
        probe.min_data_off().max(st.data_start)
    } else {
        st.data_start
    };
    if new_start > st.data_start {
        // Clusters in the way of the larger BAT move to the end.
        let (from, to) = (st.data_start * SECTOR, new_start * SECTOR);
        let mut buf = vec![0u8; cs as usize];
        for g in 0..st.bat.len() as u64 {
            let host = geo.host(st.entry(g));
            if host == 0 || host >= to || host + cs <= from {
                continue;
            }
            read_or_zero(&img.store, host, &mut buf)?;
            let target = st.data_end.max(new_start) * SECTOR;
            let entry = geo.entry(target).ok_or_else(|| {
                ParallelsError::TooLarge("The image file is too large for its cluster size".into())
            })?;
            write_all(&img.store, target, &buf)?;
            st.set_entry(g, entry);
            st.data_end = (target + cs) / SECTOR;
        }
        img.flush_state(&mut st)?;
    }
    // The new BAT entries start out unallocated.
    let (old_end, new_end) = (bat_end(old_entries), bat_end(entries));
    if new_end > old_end {
        img.store.zero_range(old_end, new_end - old_end, false)?;
    } else if old_end > new_end {
        img.store.zero_range(new_end, old_end - new_end, false)?;
    }
    img.store.sync()?;
    st.header.bat_entries = entries;
    st.header.nb_sectors = sectors;
    st.header.cylinders = (sectors / u64::from(HEADS) / SECTORS_PER_CYLINDER) as u32;
    if new_start != st.data_start || st.header.data_off != 0 {
        st.header.data_off = new_start as u32;
    }
    st.data_start = new_start;
    st.data_end = st.data_end.max(new_start);
    write_all(&img.store, 0, &st.header.to_bytes()[..HEADER_SIZE])?;
    img.store.sync()?;
    let len = img.store.size()?.max(st.data_end * SECTOR);
    st.used = used_map(&st, geo, len).0;
    drop(st);
    img.set_size(sectors * SECTOR);
    if prealloc != Prealloc::OFF && sectors * SECTOR > old_size {
        preallocate(
            img,
            old_size / cs,
            u64::from(entries),
            prealloc == Prealloc::FULL,
        )?;
    }
    Ok(())
}

/// Allocates the unallocated guest clusters `from..to`, zeroed (with
/// `write_zeros`, by writing them), then writes the BAT entries that name
/// them.
fn preallocate(img: &ParallelsImage, from: u64, to: u64, write_zeros: bool) -> Result<()> {
    let cs = img.geo.cluster;
    let mut st = img.write_state();
    let zeros = if write_zeros {
        vec![0u8; cs as usize]
    } else {
        Vec::new()
    };
    for g in from..to {
        if st.entry(g) != 0 {
            continue;
        }
        let host = img.allocate(&mut st)?;
        if write_zeros {
            write_all(&img.store, host, &zeros)?;
        } else {
            img.store.zero_range(host, cs, false)?;
        }
        let entry = img.geo.entry(host).ok_or_else(|| {
            ParallelsError::TooLarge("The image file is too large for its cluster size".into())
        })?;
        st.set_entry(g, entry);
    }
    img.flush_state(&mut st)
}
