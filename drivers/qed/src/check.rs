//! The consistency check (spec, "Consistency checking"): every cluster
//! referenced once, every offset aligned and inside the file, every table
//! wholly inside the file. Bad entries are cleared by a repair (their
//! clusters then read from the backing file); doubly referenced clusters
//! cannot be repaired, and leaks are only reported, as QED keeps no free
//! list to return them to.

use crate::error::Result;
use crate::header::features;
use crate::tables::{read_table, Tables};
use qimg_driver_api::schema::CheckReport;
use qimg_driver_api::{ByteStoreBox, StoreExt};

/// Which of the file's clusters something references.
struct Used {
    bits: Vec<u64>,
    clusters: u64,
}

impl Used {
    fn new(clusters: u64) -> Used {
        Used {
            bits: vec![0; clusters.div_ceil(64) as usize],
            clusters,
        }
    }

    /// Marks `n` clusters from `first` used; returns how many already
    /// were (each is a corruption, as qemu-img counts them).
    fn mark(&mut self, first: u64, n: u64) -> u64 {
        let mut again = 0;
        for c in first..(first + n).min(self.clusters) {
            let (word, bit) = ((c / 64) as usize, 1u64 << (c % 64));
            if self.bits[word] & bit != 0 {
                again += 1;
            }
            self.bits[word] |= bit;
        }
        again
    }

    fn unused_from(&self, first: u64) -> u64 {
        (first..self.clusters)
            .filter(|&c| self.bits[(c / 64) as usize] & (1 << (c % 64)) == 0)
            .count() as u64
    }
}

/// Checks the image's tables and, with `fix`, clears bad entries on disk.
/// The tables must have been written back.
pub fn check(store: &ByteStoreBox, t: &mut Tables, fix: bool) -> Result<CheckReport> {
    let h = t.header.clone();
    let cs = h.cluster_bytes();
    let end = t.end;
    let mut used = Used::new(end / cs);
    let mut r = CheckReport {
        total_clusters: Some(h.image_size.div_ceil(cs)),
        ..CheckReport::default()
    };
    used.mark(0, h.header_size.into());
    used.mark(h.l1_table_offset / cs, h.table_size.into());
    let mut allocated = 0u64;
    let mut fragmented = 0u64;
    let mut l1_fixed = false;
    for index in 0..t.l1.len() {
        let table = t.l1[index];
        if table == 0 {
            continue;
        }
        if !h.table_offset_valid(table, end) {
            if fix {
                t.l1[index] = 0;
                l1_fixed = true;
                r.corruptions_fixed += 1;
            } else {
                r.corruptions += 1;
            }
            continue;
        }
        let again = used.mark(table / cs, h.table_size.into());
        if again > 0 {
            r.corruptions += again;
            continue;
        }
        let Ok(mut entries) = read_table(store, table, h.table_entries()) else {
            r.check_errors += 1;
            continue;
        };
        let mut changed = false;
        // Fragmentation is counted within each table, as qemu counts it.
        let mut last = 0u64;
        for entry in entries.iter_mut() {
            let offset = *entry;
            if offset <= 1 {
                continue;
            }
            allocated += 1;
            if last != 0 && offset != last.wrapping_add(cs) {
                fragmented += 1;
            }
            last = offset;
            if !h.cluster_offset_valid(offset, end) {
                if fix {
                    *entry = 0;
                    changed = true;
                    r.corruptions_fixed += 1;
                } else {
                    r.corruptions += 1;
                }
            } else {
                r.corruptions += used.mark(offset / cs, 1);
            }
        }
        if changed {
            let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            store.write_all_at(table, &bytes)?;
        }
    }
    if l1_fixed {
        // The whole table, as QEMU writes it back.
        let bytes: Vec<u8> = t.l1.iter().flat_map(|e| e.to_le_bytes()).collect();
        store.write_all_at(h.l1_table_offset, &bytes)?;
    }
    if fix && r.corruptions_fixed > 0 {
        store.flush().into_result()?;
        t.drop_cache();
    }
    r.leaks = used.unused_from(h.header_size.into());
    r.allocated_clusters = Some(allocated);
    r.fragmented_clusters = Some(fragmented);
    // A repaired image with nothing left to repair is clean again.
    if fix && r.corruptions == 0 && r.check_errors == 0 && t.header.need_check() {
        t.header.features &= !features::NEED_CHECK;
        t.write_header(store)?;
        store.flush().into_result()?;
    }
    Ok(r)
}
