//! Rebuilding refcounts from the references the image's tables make
//! (qcow2.txt "Host cluster management"): what a dirty image (lazy refcounts,
//! unclean shutdown) needs before it may be written.
//!
//! Every count comes from a table found in the file, so the work and the
//! memory are bounded by the file's size, not by header fields.

use crate::bitmaps::Bitmap;
use crate::error::{Error, Result};
use crate::layout::{Sub, OFFSET_MASK};
use crate::meta::{read_table, Io, Meta};
use crate::snapshot::Snapshot;
use std::collections::BTreeMap;

/// Structures outside the header that reference clusters.
pub struct Referrers<'a> {
    /// Internal snapshots (their L1 tables and what those reference).
    pub snapshots: &'a [Snapshot],
    /// Size of the snapshot table in bytes.
    pub snapshots_size: u64,
    /// Persistent bitmaps (their tables and data clusters).
    pub bitmaps: &'a [Bitmap],
}

/// References per host cluster.
struct Counts {
    bits: u32,
    map: BTreeMap<u64, u64>,
}

impl Counts {
    fn range(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = offset.saturating_add(len - 1) >> self.bits;
        for c in (offset >> self.bits)..=last {
            *self.map.entry(c).or_insert(0) += 1;
        }
    }
    fn get(&self, c: u64) -> u64 {
        self.map.get(&c).copied().unwrap_or(0)
    }
}

/// Counts the references of one L1 table and the L2 tables below it.
fn count_l1(meta: &mut Meta, io: &Io, l1: &[u64], counts: &mut Counts) -> Result<()> {
    let cs = meta.layout.cluster_size();
    for &e in l1 {
        let table = e & OFFSET_MASK;
        if table == 0 || meta.layout.in_cluster(table) != 0 {
            continue;
        }
        counts.range(table, cs);
        let entries = meta.l2_table(io, table)?.clone();
        for entry in entries {
            match entry.sub(&meta.layout, meta.data_file, 0) {
                Sub::Compressed(word) => {
                    let (offset, len) = meta.layout.compressed_range(word);
                    counts.range(offset & !511, len + (offset & 511));
                }
                _ if entry.has_host(meta.data_file) && !meta.data_file => {
                    counts.range(entry.host(), cs);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Counts every reference in the image.
fn count_all(meta: &mut Meta, io: &Io, refs: &Referrers) -> Result<Counts> {
    let file_len = io.file.len().into_result()?;
    let cs = meta.layout.cluster_size();
    let mut counts = Counts {
        bits: meta.layout.cluster_bits,
        map: BTreeMap::new(),
    };
    let h = meta.header.clone();
    counts.range(0, cs);
    counts.range(h.l1_table_offset, u64::from(h.l1_size) * 8);
    let l1 = meta.l1.clone();
    count_l1(meta, io, &l1, &mut counts)?;
    counts.range(h.snapshots_offset, refs.snapshots_size);
    for s in refs.snapshots {
        counts.range(s.l1_table_offset, u64::from(s.l1_size) * 8);
        let l1 = read_table(io, s.l1_table_offset, u64::from(s.l1_size), file_len)?;
        count_l1(meta, io, &l1, &mut counts)?;
    }
    if let Some(b) = h.ext.bitmaps {
        counts.range(b.directory_offset, b.directory_size);
    }
    for b in refs.bitmaps {
        counts.range(b.table_offset, u64::from(b.table_size) * 8);
        for e in read_table(io, b.table_offset, u64::from(b.table_size), file_len)? {
            counts.range(e & OFFSET_MASK, if e & OFFSET_MASK != 0 { cs } else { 0 });
        }
    }
    if let Some((offset, len)) = h.ext.crypto {
        counts.range(offset, len);
    }
    counts.range(
        h.refcount_table_offset,
        u64::from(h.refcount_table_clusters) * cs,
    );
    for &e in &meta.reftable {
        let block = e & !511;
        if block != 0 && meta.layout.in_cluster(block) == 0 {
            counts.range(block, cs);
        }
    }
    Ok(counts)
}

/// The first cluster (from 1) with no references.
fn first_free(counts: &Counts, from: u64) -> u64 {
    let mut c = from.max(1);
    while counts.get(c) != 0 {
        c += 1;
    }
    c
}

/// Recomputes every refcount from the references and writes the refcount
/// blocks (and, if it must grow, a new refcount table).
pub fn rebuild_refcounts(meta: &mut Meta, io: &Io, refs: &Referrers) -> Result<()> {
    let mut counts = count_all(meta, io, refs)?;
    let layout = meta.layout;
    let cs = layout.cluster_size();
    let bits = layout.refblock_bits();
    let mut table = meta.reftable.clone();
    for e in table.iter_mut() {
        if layout.in_cluster(*e & !511) != 0 {
            *e = 0;
        }
    }
    let mut table_offset = meta.header.refcount_table_offset;
    let mut table_clusters = u64::from(meta.header.refcount_table_clusters);
    loop {
        let last = counts.map.keys().next_back().copied().unwrap_or(0);
        if (last >> bits) >= table_clusters * cs / 8 {
            // Move the table past everything in use, one cluster larger than
            // what covers the last used cluster.
            let old = table_offset >> layout.cluster_bits;
            for c in old..old + table_clusters {
                if let Some(n) = counts.map.get_mut(&c) {
                    *n -= 1;
                }
            }
            counts.map.retain(|_, n| *n > 0);
            table_clusters = ((last >> bits) + 1).div_ceil(cs / 8) + 1;
            if table_clusters * cs > 8 << 20 {
                return Err(Error::Errno(27, "File too large".into()));
            }
            let start = last + 1;
            table_offset = start << layout.cluster_bits;
            counts.range(table_offset, table_clusters * cs);
            continue;
        }
        table.resize((table_clusters * cs / 8) as usize, 0);
        let needed: Vec<u64> = {
            let mut v: Vec<u64> = counts.map.keys().map(|c| c >> bits).collect();
            v.dedup();
            v
        };
        let mut changed = false;
        for ri in needed {
            if table[ri as usize] == 0 {
                let c = first_free(&counts, 1);
                counts.range(c << layout.cluster_bits, cs);
                table[ri as usize] = c << layout.cluster_bits;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let moved = table_offset != meta.header.refcount_table_offset;
    for (ri, &e) in table.iter().enumerate() {
        let block = e & !511;
        if block == 0 {
            continue;
        }
        let mut bytes = vec![0u8; cs as usize];
        let first = (ri as u64) << bits;
        for (c, &n) in counts.map.range(first..first + (1 << bits)) {
            let value = n.min(layout.refcount_max());
            crate::meta::put_refcount(
                &mut bytes,
                layout.refcount_order,
                (c - first) as usize,
                value,
            );
        }
        meta.refblocks.remove(block);
        meta.refblocks.insert(block, bytes, true);
    }
    while table.last() == Some(&0) && !moved {
        table.pop();
    }
    meta.reftable = table;
    meta.reftable_dirty = true;
    if moved {
        meta.header.refcount_table_offset = table_offset;
        meta.header.refcount_table_clusters = table_clusters as u32;
        meta.header_dirty = true;
    }
    meta.free_hint = 1;
    meta.compressed_next = 0;
    Ok(())
}
