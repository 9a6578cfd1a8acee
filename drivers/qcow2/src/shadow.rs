//! Metadata changes that take effect all at once, for `snapshot -c` and
//! `-d`: refcounts change in copies of the refcount blocks, every new
//! table goes into clusters no table names, and one write of the
//! header's fixed fields (L1 table, refcount table and snapshot table, all
//! in its first sector) switches the image from the old structures to the
//! new ones.
//!
//! Changing the tables in place, as qemu does, cannot be made safe: a
//! cluster's refcount going from 1 to 2 and its COPIED flag going off live
//! in different clusters, and `qemu-img check` counts either state in
//! between as corruption. Here the new structures go into clusters that
//! are free before and after the change, so a kill before the header write
//! leaves the image as it was, and a kill after it leaves the new image,
//! whose old structures are free.
//!
//! Memory: the copied refcount blocks are held until the switch, at most
//! the image's refcount metadata (what `qemu-img check` holds as well).

use crate::error::{Error, Result};
use crate::layout::{ClusterKind, Entry, Layout, COPIED, OFFSET_MASK};
use crate::meta::{self, get_refcount, hex, put_refcount, Io, Meta};
use crate::snapshot::Snapshot;
use std::collections::{BTreeMap, BTreeSet};

/// Largest refcount table qemu accepts.
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most clusters past the end of the file with refcounts that the search
/// for free clusters passes (only a damaged image has any).
const MAX_PAST_END: u64 = 1 << 16;

/// A refcount block copy.
struct Block {
    /// Its contents.
    data: Vec<u8>,
    /// The cluster it goes to.
    at: u64,
}

/// The refcounts the image will have after the switch, and the clusters
/// handed out for new structures.
pub struct Shadow {
    layout: Layout,
    /// Copies of the refcount blocks that change, by refcount table index.
    blocks: BTreeMap<u64, Block>,
    /// The next cluster that may be handed out.
    next: u64,
    /// Clusters whose refcount reached zero.
    freed: Vec<u64>,
    /// The file's length before anything was written.
    old_len: u64,
    /// Clusters past the old end with refcounts seen so far.
    past_end: u64,
    /// Clusters the active tables reach whose refcount said free (see
    /// [`Shadow::hold_uncounted`]): never handed out.
    held: BTreeSet<u64>,
}

/// What the header names after the switch, besides the refcount table.
pub struct Switch {
    /// The active L1 table.
    pub l1: Vec<u64>,
    /// Where it is.
    pub l1_offset: u64,
    /// The snapshot list.
    pub snapshots: Vec<Snapshot>,
    /// Where the snapshot table is (0 without snapshots).
    pub snapshots_offset: u64,
    /// Its length in bytes.
    pub snapshots_size: u64,
}

impl Shadow {
    /// An empty change to the image `meta` describes (whose caches must be
    /// flushed), with the clusters its active tables reach held.
    pub fn new(meta: &mut Meta, io: &Io) -> Result<Shadow> {
        let old_len = io.file.len().into_result()?;
        let mut shadow = Shadow {
            layout: meta.layout,
            blocks: BTreeMap::new(),
            next: meta.free_hint.max(1),
            freed: Vec::new(),
            old_len,
            past_end: 0,
            held: BTreeSet::new(),
        };
        shadow.hold_uncounted(meta, io)?;
        Ok(shadow)
    }

    fn split(&self, cluster: u64) -> (u64, usize) {
        let bits = self.layout.refblock_bits();
        (cluster >> bits, (cluster & ((1 << bits) - 1)) as usize)
    }

    /// The refcount `cluster` will have.
    pub fn refcount(&self, meta: &mut Meta, io: &Io, cluster: u64) -> Result<u64> {
        let (index, i) = self.split(cluster);
        match self.blocks.get(&index) {
            Some(b) => Ok(get_refcount(&b.data, self.layout.refcount_order, i)),
            None => meta.refcount(io, cluster),
        }
    }

    /// Adds `delta` to the refcount of `cluster`.
    pub fn add(&mut self, meta: &mut Meta, io: &Io, cluster: u64, delta: i64) -> Result<()> {
        let (index, i) = self.split(cluster);
        self.copy_block(meta, io, index)?;
        let order = self.layout.refcount_order;
        let max = self.layout.refcount_max();
        let Some(block) = self.blocks.get_mut(&index) else {
            return Err(Error::invalid("refcount block copy vanished"));
        };
        let rc = get_refcount(&block.data, order, i);
        let value = if delta < 0 {
            rc.checked_sub(delta.unsigned_abs())
        } else {
            rc.checked_add(delta as u64).filter(|v| *v <= max)
        };
        let Some(value) = value else {
            return Err(if delta < 0 {
                meta.corruption(format!(
                    "Refcount of cluster {} would become negative",
                    hex(cluster)
                ))
            } else {
                Error::Errno(22, "Invalid argument".into())
            });
        };
        put_refcount(&mut block.data, order, i, value);
        if value == 0 {
            self.freed.push(cluster);
        }
        Ok(())
    }

    /// Adds `delta` to the refcount of every cluster `[offset, offset +
    /// len)` touches.
    pub fn add_range(
        &mut self,
        meta: &mut Meta,
        io: &Io,
        offset: u64,
        len: u64,
        delta: i64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let bits = self.layout.cluster_bits;
        for c in (offset >> bits)..=((offset + len - 1) >> bits) {
            self.add(meta, io, c, delta)?;
        }
        Ok(())
    }

    /// Makes the copy of refcount block `index` (the old block, if any,
    /// becomes free).
    fn copy_block(&mut self, meta: &mut Meta, io: &Io, index: u64) -> Result<()> {
        if self.blocks.contains_key(&index) {
            return Ok(());
        }
        let old = meta.refblock_offset(index)?;
        let data = if old == 0 {
            vec![0u8; self.layout.cluster_size() as usize]
        } else {
            meta.refblock_data(io, old)?
        };
        self.blocks.insert(index, Block { data, at: 0 });
        let at = self.alloc(meta, io, 1)?;
        if let Some(block) = self.blocks.get_mut(&index) {
            block.at = at >> self.layout.cluster_bits;
        }
        if old != 0 {
            self.add(meta, io, old >> self.layout.cluster_bits, -1)?;
        }
        Ok(())
    }

    /// Hands out `n` contiguous clusters with refcount 1, free in the old
    /// structures as in the new ones (clusters this change frees are still
    /// named by the old tables); returns the offset of the first.
    pub fn alloc(&mut self, meta: &mut Meta, io: &Io, n: u64) -> Result<u64> {
        meta.refuse_uncounted_header(io)?;
        let end = self.layout.clusters_for(self.old_len);
        let mut start = self.next;
        let mut first_free = None;
        let mut c = start;
        while c < start + n {
            let old = meta.refcount(io, c)?;
            if old != 0 && c >= end {
                self.past_end += 1;
                if self.past_end > MAX_PAST_END {
                    return Err(meta.corruption(format!(
                        "Clusters past the end of the file are in use (from {})",
                        hex(end << self.layout.cluster_bits)
                    )));
                }
            }
            if old != 0
                || self.refcount(meta, io, c)? != 0
                || meta.held_by_bitmap(c)
                || self.held.contains(&c)
            {
                start = c + 1;
            } else if first_free.is_none() {
                first_free = Some(c);
            }
            c += 1;
        }
        self.next = match first_free {
            Some(f) if f < start => f,
            _ => start + n,
        };
        for c in start..start + n {
            self.add(meta, io, c, 1)?;
        }
        Ok(start << self.layout.cluster_bits)
    }

    /// Writes `bytes` into newly handed-out clusters; returns their offset.
    pub fn write_new(&mut self, meta: &mut Meta, io: &Io, bytes: &[u8]) -> Result<u64> {
        let at = self.alloc(meta, io, self.layout.clusters_for(bytes.len() as u64))?;
        write_over_nothing(meta, io, at, bytes)?;
        Ok(at)
    }

    /// Adds `delta` to every cluster the L1 table `l1` reaches, once per
    /// path, as `qemu-img check` counts them (see [`walk_tree`]).
    pub fn add_tree(&mut self, meta: &mut Meta, io: &Io, l1: &[u64], delta: i64) -> Result<()> {
        walk_tree(meta, io, l1, |meta, at, len| {
            self.add_range(meta, io, at, len, delta)
        })
    }

    /// Gives every cluster the active tables reach that a damaged refcount
    /// counts free the refcount 1 its entry claims, before anything is
    /// handed out: handed out, its guest data would be overwritten by a new
    /// table (qemu-img's `snapshot -c` writes its L1 copy there).
    fn hold_uncounted(&mut self, meta: &mut Meta, io: &Io) -> Result<()> {
        let bits = self.layout.cluster_bits;
        let active = meta.l1.clone();
        walk_tree(meta, io, &active, |meta, at, len| {
            for c in (at >> bits)..=((at + len - 1) >> bits) {
                if meta.refcount(io, c)? == 0 {
                    self.held.insert(c);
                }
            }
            Ok(())
        })?;
        let held: Vec<u64> = self.held.iter().copied().collect();
        for c in held {
            self.add(meta, io, c, 1)?;
        }
        Ok(())
    }

    /// The active L1 table `l1` with every entry's COPIED flag as the new
    /// refcounts have it. An L2 table whose entries' flags change is copied
    /// (the copy with the new flags): the old one stays as the tables that
    /// are already on disk name it.
    pub fn repoint_active(&mut self, meta: &mut Meta, io: &Io, l1: &[u64]) -> Result<Vec<u64>> {
        let layout = self.layout;
        let mut out = l1.to_vec();
        for (i, entry) in l1.iter().enumerate() {
            let l2 = meta.l2_of(*entry, i as u64)?;
            if l2 == 0 {
                continue;
            }
            let mut table = meta.l2_table(io, l2)?.clone();
            let mut changed = false;
            for (j, e) in table.iter_mut().enumerate() {
                let word = e.word & !COPIED;
                let copied = match ClusterKind::of(word, &layout, meta.data_file) {
                    ClusterKind::Normal | ClusterKind::ZeroAlloc => {
                        meta.data_file || {
                            let host = word & OFFSET_MASK;
                            meta.check_cluster_offset(host, l2, j as u64)?;
                            self.refcount(meta, io, host >> layout.cluster_bits)? == 1
                        }
                    }
                    _ => false,
                };
                let word = if copied { word | COPIED } else { word };
                if word != e.word {
                    *e = Entry { word, ..*e };
                    changed = true;
                }
            }
            let target = if changed {
                let copy = self.write_new(meta, io, &meta::encode_l2(&layout, &table))?;
                self.add(meta, io, l2 >> layout.cluster_bits, -1)?;
                copy
            } else {
                l2
            };
            let rc = self.refcount(meta, io, target >> layout.cluster_bits)?;
            out[i] = if rc == 1 { target | COPIED } else { target };
        }
        Ok(out)
    }

    /// Writes the refcount block copies and a refcount table naming them,
    /// then the header naming the new tables of `switch` as one write, and
    /// takes the new state into `meta`. Returns the clusters now free. On
    /// an error before the header write, the image is as it was.
    pub fn commit(mut self, meta: &mut Meta, io: &Io, switch: Switch) -> Result<Vec<u64>> {
        let result = self.write_structures(meta, io);
        let (table, table_offset, table_clusters) = match result {
            Ok(done) => done,
            Err(e) => {
                self.cut_back(io);
                return Err(e);
            }
        };
        let saved = meta.header.clone();
        let h = &mut meta.header;
        h.l1_table_offset = switch.l1_offset;
        h.refcount_table_offset = table_offset;
        h.refcount_table_clusters = table_clusters as u32;
        h.nb_snapshots = switch.snapshots.len() as u32;
        h.snapshots_offset = switch.snapshots_offset;
        if let Err(e) = meta.write_header(io) {
            meta.header = saved;
            self.cut_back(io);
            return Err(e);
        }
        meta.reftable = table;
        meta.reftable_dirty = false;
        meta.l1 = switch.l1;
        meta.l1_dirty = false;
        meta.snapshots = switch.snapshots;
        meta.snapshots_size = switch.snapshots_size;
        meta.clear_caches();
        io.flush()?;
        let mut freed = Vec::new();
        for &c in &self.freed {
            if self.refcount(meta, io, c)? == 0 {
                freed.push(c);
            }
        }
        freed.sort_unstable();
        freed.dedup();
        Ok(freed)
    }

    /// Places and writes the new refcount table and the block copies, and
    /// flushes; returns the table, its offset and its clusters.
    fn write_structures(&mut self, meta: &mut Meta, io: &Io) -> Result<(Vec<u64>, u64, u64)> {
        let cs = self.layout.cluster_size();
        let bits = self.layout.cluster_bits;
        let old = meta.header.refcount_table_offset;
        let old_clusters = u64::from(meta.header.refcount_table_clusters);
        self.add_range(meta, io, old, old_clusters * cs, -1)?;
        // The table's own clusters may need new blocks, which may need a
        // longer table: place it again until it covers every block.
        let mut placed: Option<(u64, u64)> = None;
        let (offset, clusters) = loop {
            let last = self.blocks.keys().next_back().map_or(0, |i| i + 1);
            let entries = last.max(meta.reftable.len() as u64);
            let clusters = self.layout.clusters_for(entries * 8).max(1);
            if let Some((at, have)) = placed {
                if have >= clusters {
                    break (at, have);
                }
                self.add_range(meta, io, at, have * cs, -1)?;
            }
            if clusters * cs > MAX_REFTABLE_BYTES {
                return Err(Error::Errno(27, "File too large".into()));
            }
            placed = Some((self.alloc(meta, io, clusters)?, clusters));
        };
        let mut table = meta.reftable.clone();
        table.resize((clusters * cs / 8) as usize, 0);
        for (&index, block) in &self.blocks {
            table[index as usize] = block.at << bits;
            write_over_nothing(meta, io, block.at << bits, &block.data)?;
        }
        write_over_nothing(meta, io, offset, &meta::words_be(&table))?;
        io.flush()?;
        Ok((table, offset, clusters))
    }

    /// Drops the change, giving the file its old length back (best effort:
    /// what stays past the old end is unreferenced).
    pub fn abandon(self, io: &Io) {
        self.cut_back(io);
    }

    fn cut_back(&self, io: &Io) {
        let _ = io
            .file
            .set_len(self.old_len, qimg_driver_api::Prealloc::OFF)
            .into_result();
    }
}

/// Calls `f` with every cluster range the L1 table `l1` reaches, once per
/// path, as `qemu-img check` counts them: its L2 tables, their data
/// clusters and compressed clusters.
fn walk_tree(
    meta: &mut Meta,
    io: &Io,
    l1: &[u64],
    mut f: impl FnMut(&mut Meta, u64, u64) -> Result<()>,
) -> Result<()> {
    let layout = meta.layout;
    for (i, entry) in l1.iter().enumerate() {
        let l2 = meta.l2_of(*entry, i as u64)?;
        if l2 == 0 {
            continue;
        }
        f(meta, l2, layout.cluster_size())?;
        let table = meta.l2_table(io, l2)?.clone();
        for (j, e) in table.iter().enumerate() {
            match ClusterKind::of(e.word, &layout, meta.data_file) {
                ClusterKind::Compressed => {
                    let (at, len) = layout.compressed_range(e.word);
                    f(meta, at, len)?;
                }
                ClusterKind::Normal | ClusterKind::ZeroAlloc if !meta.data_file => {
                    let host = e.word & OFFSET_MASK;
                    meta.check_cluster_offset(host, l2, j as u64)?;
                    f(meta, host, layout.cluster_size())?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Writes a new structure where the counts found room, unless metadata the
/// header names is there (damaged refcounts can count it free): the image
/// is then marked corrupt and nothing is written.
fn write_over_nothing(meta: &mut Meta, io: &Io, at: u64, bytes: &[u8]) -> Result<()> {
    meta.check_overlap(io, at, bytes.len() as u64, None)?;
    io.write(at, bytes)
}
