//! `check` and its repairs, step by step as qemu-img 10.0.2 takes them:
//! the in-use flag, the data offset, clusters outside the file, space
//! leaked at the end of the file, clusters two entries name, statistics.
//!
//! Where qemu-img aborts (an entry past the end of the file, or far before
//! the data area, that is not repaired reaches its duplicate count, which
//! asserts), qimg leaves such entries out of the duplicate count: those
//! past the end have been reported already.

use crate::error::Result;
use crate::header::SECTOR;
use crate::image::{used_map, Geometry, ParallelsImage, State};
use crate::used::{MarkError, Used};
use qimg_driver_api::schema::{CheckReport, Repair};
use qimg_driver_api::{Prealloc, StoreExt};
use qimg_driver_util::{read_or_zero, write_all};
use std::collections::HashSet;

/// Most messages a report keeps: a BAT entry can give one each, so a
/// hostile image of N MiB could give N/4 million (qemu-img prints them as
/// it goes; a report holds them).
const MAX_MESSAGES: usize = 1 << 16;

/// Adds `message` to the report, or counts it in `dropped` once the report
/// holds [`MAX_MESSAGES`].
fn note(r: &mut CheckReport, dropped: &mut u64, message: String) {
    if r.messages.len() < MAX_MESSAGES {
        r.messages.push(message);
    } else {
        *dropped += 1;
    }
}

fn word(fix: bool) -> &'static str {
    if fix {
        "Repairing"
    } else {
        "ERROR"
    }
}

/// Checks the image, repairing as `repair` says, and reports as qemu-img.
pub fn check(img: &ParallelsImage, st: &mut State, repair: Repair) -> Result<CheckReport> {
    let fix_errors = repair == Repair::All;
    let fix_leaks = repair != Repair::None;
    let geo = img.geo;
    let cs = geo.cluster;
    let mut r = CheckReport::default();
    let mut dropped = 0u64;

    if st.unclean {
        note(
            &mut r,
            &mut dropped,
            format!("{} image was not closed correctly", word(fix_errors)),
        );
        r.corruptions += 1;
        if fix_errors {
            r.corruptions_fixed += 1;
            st.unclean = false;
        }
    }

    let file_len = img.file_size()?;
    let (data_ok, data_off) = st.header.data_start(file_len / SECTOR);
    if !data_ok {
        r.corruptions += 1;
        if fix_errors {
            st.header.data_off = data_off as u32;
            st.header_changed();
            st.data_start = data_off;
            st.used = used_map(st, geo, file_len).0;
            st.append_next = false;
            r.corruptions_fixed += 1;
        }
        note(
            &mut r,
            &mut dropped,
            format!("{} data_off field has incorrect value", word(fix_errors)),
        );
    }

    // Clusters outside the file.
    let mut high = 0u64;
    for i in 0..u64::from(st.header.bat_entries) {
        let off = geo.host(st.entry(i));
        if off + cs > file_len {
            note(
                &mut r,
                &mut dropped,
                format!("{} cluster {i} is outside image", word(fix_errors)),
            );
            r.corruptions += 1;
            if fix_errors {
                st.set_entry(i, 0);
                r.corruptions_fixed += 1;
            }
            continue;
        }
        high = high.max(off);
    }
    let mut end = if high == 0 {
        st.data_end * SECTOR
    } else {
        st.data_end = (high + cs) / SECTOR;
        high + cs
    };
    if fix_errors {
        // Entries dropped above no longer hold clusters.
        st.used = used_map(st, geo, file_len.max(end)).0;
    }

    if file_len > end {
        let count = (file_len - end).div_ceil(cs);
        note(
            &mut r,
            &mut dropped,
            format!(
                "{} space leaked at the end of the image {}",
                word(fix_leaks),
                file_len - end
            ),
        );
        r.leaks += count;
        if fix_leaks {
            truncate(img, st, end)?;
            r.leaks_fixed += count;
        }
    }

    end = duplicates(img, st, &mut r, &mut dropped, end, fix_errors, fix_leaks)?;
    if dropped > 0 {
        r.messages.push(format!("... and {dropped} more like them"));
    }

    // Statistics.
    r.total_clusters = Some(u64::from(st.header.bat_entries));
    r.compressed_clusters = Some(0);
    let (mut allocated, mut fragmented, mut prev) = (0u64, 0u64, 0u64);
    for &e in &st.bat {
        let off = geo.host(e);
        if off == 0 || off + cs > end {
            prev = 0;
            continue;
        }
        if prev != 0 && prev + cs != off {
            fragmented += 1;
        }
        prev = off;
        allocated += 1;
    }
    r.allocated_clusters = Some(allocated);
    r.fragmented_clusters = Some(fragmented);
    r.image_end_offset = Some(end);
    Ok(r)
}

/// Cuts the file at `end`. An extension cluster past it goes with it: the
/// header stops naming it (qemu-img leaves the header naming a cluster
/// that is no longer there, and the image can no longer be opened).
fn truncate(img: &ParallelsImage, st: &mut State, end: u64) -> Result<()> {
    img.store.set_size(end, Prealloc::OFF)?;
    if st.header.ext_off != 0 && st.header.ext_off.saturating_mul(SECTOR) >= end {
        st.header.ext_off = 0;
        st.header_changed();
    }
    Ok(())
}

/// Counts (and with `fix_errors` moves) clusters two BAT entries name;
/// returns the image end after any repair.
fn duplicates(
    img: &ParallelsImage,
    st: &mut State,
    r: &mut CheckReport,
    dropped: &mut u64,
    mut end: u64,
    fix_errors: bool,
    fix_leaks: bool,
) -> Result<u64> {
    let geo = img.geo;
    let cs = geo.cluster;
    let mut size = count_index(geo, st.data_start, end);
    if size == 0 {
        return Ok(end);
    }
    if !end.is_multiple_of(cs) {
        size += 1;
    }
    let mut seen = Seen::new(size, end >= st.data_start * SECTOR);
    let mut fixed = false;
    let mut last_taken = false;
    let mut buf = Vec::new();
    for i in 0..st.bat.len() as u64 {
        let off = geo.host(st.entry(i));
        if off == 0 {
            continue;
        }
        last_taken = seen.mark(count_index(geo, st.data_start, off)) == Err(MarkError::Taken);
        if !last_taken {
            continue;
        }
        note(
            r,
            dropped,
            format!("{} duplicate offset in BAT entry {i}", word(fix_errors)),
        );
        r.corruptions += 1;
        if !fix_errors {
            continue;
        }
        // A cluster of its own for this entry, with the data it shared.
        buf.resize(cs as usize, 0);
        read_or_zero(&img.store, off, &mut buf)?;
        let old = st.entry(i);
        st.set_entry(i, 0);
        let host = match img.allocate(st) {
            Ok(host) => host,
            Err(e) => {
                st.set_entry(i, old);
                return Err(e);
            }
        };
        write_all(&img.store, host, &buf)?;
        st.set_entry(i, geo.entry(host).unwrap_or(0));
        end = end.max(host + cs);
        let _ = seen.mark(count_index(geo, st.data_start, host));
        fixed = true;
        r.corruptions_fixed += 1;
    }
    if fixed && fix_leaks && img.file_size()? > end {
        truncate(img, st, end)?;
    }
    // qemu-img's check fails when the last allocated entry duplicates an
    // earlier one and is left as it is (its count ends on that result).
    if last_taken && !fix_errors {
        r.failure = Some("Device or resource busy".into());
    }
    Ok(end)
}

/// qemu-img's index of the host cluster at `host` in its count of
/// duplicates: whole clusters from the data area's start, truncated toward
/// zero and kept to 32 bits, so an offset more than a cluster before the
/// start (a damaged cluster size or data offset) wraps to a large index.
fn count_index(geo: Geometry, data_start: u64, host: u64) -> u64 {
    let from = i128::from(host) - i128::from(data_start * SECTOR);
    u64::from((from / i128::from(geo.cluster)) as u32)
}

/// The clusters the duplicate count has met: a bitmap where the image ends
/// after its data area starts; a set of the indices met where it ends
/// before (the count then covers billions of wrapped indices, of which
/// only the entries' own are ever marked).
enum Seen {
    Map(Used),
    Set { len: u64, met: HashSet<u64> },
}

impl Seen {
    /// A count of `len` clusters, as a bitmap if `dense`.
    fn new(len: u64, dense: bool) -> Seen {
        if dense {
            Seen::Map(Used::new(len))
        } else {
            Seen::Set {
                len,
                met: HashSet::new(),
            }
        }
    }

    /// Marks cluster `i`, as [`Used::mark`].
    fn mark(&mut self, i: u64) -> std::result::Result<(), MarkError> {
        match self {
            Seen::Map(used) => used.mark(i),
            Seen::Set { len, .. } if i >= *len => Err(MarkError::Beyond),
            Seen::Set { met, .. } => met.insert(i).then_some(()).ok_or(MarkError::Taken),
        }
    }
}
