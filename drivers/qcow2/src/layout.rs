//! Cluster geometry and the decoding of L1/L2 entries (qcow2.txt "Cluster
//! mapping", "Extended L2 Entries", "Compressed Clusters Descriptor").

/// Bits 9-55 of an L1 or standard L2 entry: the host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63: the refcount of what the entry points to is exactly one.
pub const COPIED: u64 = 1 << 63;
/// Bit 62 of an L2 entry: compressed cluster.
pub const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard cluster descriptor (v3, not extended): reads as zeros.
pub const ZERO: u64 = 1;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// The geometry of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Extended L2 entries (128-bit, 32 subclusters).
    pub extended: bool,
    /// log2 of the refcount width.
    pub refcount_order: u32,
    /// Version 3 (zero flag available).
    pub v3: bool,
}

impl Layout {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// Bytes of one L2 entry.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended {
            16
        } else {
            8
        }
    }
    /// log2 of the entries in an L2 table.
    pub fn l2_bits(&self) -> u32 {
        self.cluster_bits - if self.extended { 4 } else { 3 }
    }
    /// Entries in an L2 table.
    pub fn l2_entries(&self) -> u64 {
        1 << self.l2_bits()
    }
    /// Guest bytes one L2 table maps.
    pub fn l2_span(&self) -> u64 {
        1 << (self.l2_bits() + self.cluster_bits)
    }
    /// Subclusters per cluster (1 without extended L2 entries).
    pub fn subclusters(&self) -> u32 {
        if self.extended {
            SUBCLUSTERS
        } else {
            1
        }
    }
    /// Allocation granularity of guest data.
    pub fn subcluster_size(&self) -> u64 {
        self.cluster_size() / u64::from(self.subclusters())
    }
    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }
    /// log2 of the entries in a refcount block.
    pub fn refblock_bits(&self) -> u32 {
        self.cluster_bits + 3 - self.refcount_order
    }
    /// Largest refcount value.
    pub fn refcount_max(&self) -> u64 {
        if self.refcount_order == 6 {
            u64::MAX
        } else {
            (1u64 << self.refcount_bits()) - 1
        }
    }
    /// Offset of `x` within its cluster.
    pub fn in_cluster(&self, x: u64) -> u64 {
        x & (self.cluster_size() - 1)
    }
    /// Start of the cluster holding `x`.
    pub fn cluster_start(&self, x: u64) -> u64 {
        x & !(self.cluster_size() - 1)
    }
    /// Clusters needed for `bytes`.
    pub fn clusters_for(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.cluster_size())
    }
    /// L1 index of guest offset `x`.
    pub fn l1_index(&self, x: u64) -> u64 {
        x >> (self.l2_bits() + self.cluster_bits)
    }
    /// L2 index of guest offset `x`.
    pub fn l2_index(&self, x: u64) -> usize {
        ((x >> self.cluster_bits) & (self.l2_entries() - 1)) as usize
    }
    /// L1 entries needed for a guest size.
    pub fn l1_entries_for(&self, size: u64) -> u64 {
        size.div_ceil(self.l2_span())
    }
    /// Bit position of the sector count in a compressed descriptor.
    pub fn csize_shift(&self) -> u32 {
        62 - (self.cluster_bits - 8)
    }
    /// Mask of the sector count in a compressed descriptor.
    pub fn csize_mask(&self) -> u64 {
        (1 << (self.cluster_bits - 8)) - 1
    }
    /// Decodes a compressed descriptor into (host offset, bytes spanned by
    /// its sectors from the sector holding the offset).
    pub fn compressed_range(&self, entry: u64) -> (u64, u64) {
        let offset = entry & ((1 << self.csize_shift()) - 1);
        let sectors = ((entry >> self.csize_shift()) & self.csize_mask()) + 1;
        (offset, sectors * 512 - (offset & 511))
    }
    /// Encodes a compressed descriptor for `len` bytes at host `offset`.
    pub fn compressed_entry(&self, offset: u64, len: u64) -> u64 {
        let extra = (offset + len - 1) / 512 - offset / 512;
        COMPRESSED | (extra << self.csize_shift()) | offset
    }
}

/// What one guest subcluster is, from its L2 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    /// Not allocated, no host cluster: backing data or zeros.
    UnallocPlain,
    /// Not allocated, but the host cluster exists (extended L2).
    UnallocAlloc(u64),
    /// Reads as zeros, no host cluster.
    ZeroPlain,
    /// Reads as zeros, host cluster preallocated.
    ZeroAlloc(u64),
    /// Data at this host offset (of the cluster start).
    Normal(u64),
    /// Compressed cluster: the whole L2 entry.
    Compressed(u64),
    /// The entry is malformed.
    Invalid,
}

impl Sub {
    /// The host cluster, for the kinds that have one.
    pub fn host(self) -> Option<u64> {
        match self {
            Sub::UnallocAlloc(h) | Sub::ZeroAlloc(h) | Sub::Normal(h) => Some(h),
            _ => None,
        }
    }
    /// True if reads go to the backing file (or return zeros without one).
    pub fn unallocated(self) -> bool {
        matches!(self, Sub::UnallocPlain | Sub::UnallocAlloc(_))
    }
    /// True if reads return zeros whatever the backing file holds.
    pub fn zero(self) -> bool {
        matches!(self, Sub::ZeroPlain | Sub::ZeroAlloc(_))
    }
    /// Same kind (host offsets aside).
    pub fn same_kind(self, other: Sub) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }
}

/// One L2 entry: the descriptor and (extended L2) the subcluster bitmap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The first 64 bits.
    pub word: u64,
    /// Subcluster bitmap: allocation in bits 0-31, zero in 32-63.
    pub bitmap: u64,
}

impl Entry {
    /// The host cluster offset of a standard entry (0 if none).
    pub fn host(&self) -> u64 {
        self.word & OFFSET_MASK
    }
    /// True for a compressed cluster.
    pub fn compressed(&self) -> bool {
        self.word & COMPRESSED != 0
    }
    /// True if the host cluster's refcount is one (writable in place).
    pub fn copied(&self) -> bool {
        self.word & COPIED != 0
    }
    /// True if the entry holds a host cluster (standard, offset set; with an
    /// external data file offset 0 counts when COPIED is set).
    pub fn has_host(&self, data_file: bool) -> bool {
        !self.compressed() && (self.host() != 0 || (data_file && self.copied()))
    }

    /// The kind of subcluster `index` (0 without extended L2 entries).
    pub fn sub(&self, layout: &Layout, data_file: bool, index: u32) -> Sub {
        if self.compressed() {
            if layout.extended && self.bitmap != 0 {
                return Sub::Invalid;
            }
            return Sub::Compressed(self.word);
        }
        let host = self.has_host(data_file).then_some(self.host());
        if layout.extended {
            if self.word & ZERO != 0 {
                return Sub::Invalid;
            }
            let alloc = self.bitmap >> index & 1 != 0;
            let zero = self.bitmap >> (32 + index) & 1 != 0;
            return match (alloc, zero, host) {
                (true, true, _) => Sub::Invalid,
                (true, false, Some(h)) => Sub::Normal(h),
                (true, false, None) => Sub::Invalid,
                (false, true, Some(h)) => Sub::ZeroAlloc(h),
                (false, true, None) => Sub::ZeroPlain,
                (false, false, Some(h)) => Sub::UnallocAlloc(h),
                (false, false, None) => Sub::UnallocPlain,
            };
        }
        // The flag is read in v2 images too, as qemu reads it: there it
        // is corruption, which the read path reports.
        let zero = self.word & ZERO != 0;
        match (zero, host) {
            (true, Some(h)) => Sub::ZeroAlloc(h),
            (true, None) => Sub::ZeroPlain,
            (false, Some(h)) => Sub::Normal(h),
            (false, None) => Sub::UnallocPlain,
        }
    }
}

/// The type of a whole cluster from its L2 descriptor alone, as the
/// refcount bookkeeping sees it (the subcluster bitmap aside): what
/// `check` counts and what snapshots add references to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterKind {
    /// No host cluster.
    Unallocated,
    /// Reads as zeros, no host cluster.
    ZeroPlain,
    /// Reads as zeros, host cluster kept.
    ZeroAlloc,
    /// Data in a host cluster.
    Normal,
    /// A compressed cluster.
    Compressed,
}

impl ClusterKind {
    /// Classifies descriptor `word` (`data_file`: the image has an
    /// external data file, where offset 0 is valid).
    pub fn of(word: u64, layout: &Layout, data_file: bool) -> ClusterKind {
        if word & COMPRESSED != 0 {
            ClusterKind::Compressed
        } else if word & ZERO != 0 && !layout.extended {
            if word & OFFSET_MASK != 0 {
                ClusterKind::ZeroAlloc
            } else {
                ClusterKind::ZeroPlain
            }
        } else if word & OFFSET_MASK == 0 {
            // Offset 0 is a valid data-file offset when the copied flag
            // says the cluster is allocated.
            if data_file && word & COPIED != 0 {
                ClusterKind::Normal
            } else {
                ClusterKind::Unallocated
            }
        } else {
            ClusterKind::Normal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Layout = Layout {
        cluster_bits: 16,
        extended: false,
        refcount_order: 4,
        v3: true,
    };

    #[test]
    fn geometry_of_64k_clusters() {
        assert_eq!(PLAIN.l2_entries(), 8192);
        assert_eq!(PLAIN.l2_span(), 512 << 20);
        assert_eq!(PLAIN.refblock_bits(), 15);
        let ext = Layout {
            extended: true,
            ..PLAIN
        };
        assert_eq!(ext.l2_entries(), 4096);
        assert_eq!(ext.subcluster_size(), 2048);
    }

    #[test]
    fn compressed_descriptors_round_trip() {
        let e = PLAIN.compressed_entry(0x50123, 1000);
        assert_eq!(PLAIN.compressed_range(e), (0x50123, 1024 + 512 - 0x123));
    }

    #[test]
    fn entry_kinds() {
        let e = Entry {
            word: COPIED | 0x50000,
            bitmap: 0,
        };
        assert_eq!(e.sub(&PLAIN, false, 0), Sub::Normal(0x50000));
        let z = Entry {
            word: ZERO,
            bitmap: 0,
        };
        assert_eq!(z.sub(&PLAIN, false, 0), Sub::ZeroPlain);
        let ext = Layout {
            extended: true,
            ..PLAIN
        };
        let x = Entry {
            word: COPIED | 0x50000,
            bitmap: 1 | 1 << 33,
        };
        assert_eq!(x.sub(&ext, false, 0), Sub::Normal(0x50000));
        assert_eq!(x.sub(&ext, false, 1), Sub::ZeroAlloc(0x50000));
        assert_eq!(x.sub(&ext, false, 2), Sub::UnallocAlloc(0x50000));
    }
}
