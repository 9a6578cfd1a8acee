//! The metadata overlap check (QEMU's default "cached" mode): before guest
//! data is written to a host cluster, the cluster must not hold the image's
//! own metadata. A corrupt or hostile image (an L2 entry pointing at the L1
//! table, a refcount of 0 on a table) would otherwise have guest data
//! written over its tables; the write is refused and the image marked
//! corrupt instead, as QEMU does.
//!
//! The map holds, per host cluster, the kind of metadata there. It is built
//! from the tables on first use, kept up to date where the hot paths
//! allocate tables (L2 tables, refcount blocks) and free clusters, and built
//! again after the rarer operations that move metadata (snapshots, amend,
//! repairs, table growth).

use std::collections::BTreeMap;

/// What a metadata cluster holds, in QEMU's order of precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetaKind {
    /// The first cluster: header and extensions.
    Header,
    /// The active L1 table.
    ActiveL1,
    /// An L2 table of the active L1 table.
    ActiveL2,
    /// The refcount table.
    RefcountTable,
    /// A refcount block.
    RefcountBlock,
    /// The snapshot table.
    SnapshotTable,
    /// A snapshot's L1 table.
    InactiveL1,
    /// The bitmap directory.
    BitmapDirectory,
}

impl MetaKind {
    /// QEMU's name for it in "Preventing invalid write on metadata
    /// (overlaps with ...)".
    pub fn name(self) -> &'static str {
        match self {
            MetaKind::Header => "qcow2_header",
            MetaKind::ActiveL1 => "active L1 table",
            MetaKind::ActiveL2 => "active L2 table",
            MetaKind::RefcountTable => "refcount table",
            MetaKind::RefcountBlock => "refcount block",
            MetaKind::SnapshotTable => "snapshot table",
            MetaKind::InactiveL1 => "inactive L1 table",
            MetaKind::BitmapDirectory => "bitmap directory",
        }
    }
}

/// Host clusters that hold metadata.
#[derive(Default)]
pub struct MetadataMap {
    /// Cluster index to the kind of metadata there.
    clusters: BTreeMap<u64, MetaKind>,
    /// The map reflects the tables (false: build it before use).
    pub built: bool,
}

impl MetadataMap {
    /// Forgets everything: the map is built again on next use.
    pub fn invalidate(&mut self) {
        self.clusters.clear();
        self.built = false;
    }

    /// Records `[offset, offset+len)` as metadata of `kind`; a cluster keeps
    /// the kind that takes precedence. Empty ranges and offset 0 of tables
    /// that do not exist are ignored.
    pub fn insert(&mut self, offset: u64, len: u64, kind: MetaKind, cluster_bits: u32) {
        if len == 0 || (offset == 0 && kind != MetaKind::Header) {
            return;
        }
        let first = offset >> cluster_bits;
        let last = (offset.saturating_add(len) - 1) >> cluster_bits;
        // A hostile table size could name billions of clusters: the range
        // past the file is never written anyway.
        for c in first..=last.min(first.saturating_add(MAX_CLUSTERS_PER_RANGE)) {
            let slot = self.clusters.entry(c).or_insert(kind);
            *slot = (*slot).min(kind);
        }
    }

    /// Forgets cluster `c` (freed).
    pub fn remove(&mut self, c: u64) {
        self.clusters.remove(&c);
    }

    /// The metadata kind of highest precedence in `[offset, offset+len)`.
    pub fn overlap(&self, offset: u64, len: u64, cluster_bits: u32) -> Option<MetaKind> {
        if len == 0 {
            return None;
        }
        let first = offset >> cluster_bits;
        let last = (offset.saturating_add(len) - 1) >> cluster_bits;
        self.clusters.range(first..=last).map(|(_, &k)| k).min()
    }
}

/// Most clusters one table is recorded over (a 64 GiB table at 64 KiB
/// clusters): no valid image has a larger one, and a hostile size must not
/// fill memory.
const MAX_CLUSTERS_PER_RANGE: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::{MetaKind, MetadataMap};

    #[test]
    fn overlaps_report_the_kind_qemu_names_first() {
        let mut map = MetadataMap::default();
        map.insert(0, 512, MetaKind::Header, 16);
        map.insert(0x30000, 8, MetaKind::ActiveL1, 16);
        map.insert(0x30000, 0x20000, MetaKind::SnapshotTable, 16);
        assert_eq!(
            map.overlap(0x40000, 4096, 16),
            Some(MetaKind::SnapshotTable)
        );
        assert_eq!(map.overlap(0x20000, 0x20000, 16), Some(MetaKind::ActiveL1));
        assert_eq!(map.overlap(0x50000, 0x10000, 16), None);
        assert_eq!(map.overlap(100, 1, 16), Some(MetaKind::Header));
        map.remove(0x4);
        assert_eq!(map.overlap(0x40000, 4096, 16), None);
        // A table at offset 0 is a table that does not exist.
        map.insert(0, 8, MetaKind::ActiveL2, 16);
        assert_eq!(map.overlap(0, 1, 16), Some(MetaKind::Header));
    }
}
