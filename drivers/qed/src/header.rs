//! The QED header (docs/interop/qed_spec.rst, "Header"): 64 little-endian
//! bytes at the start of the file, checked field by field against the
//! file's real size before anything else is read.

use crate::error::{Error, Result};

/// `QED\0`, little-endian.
pub const MAGIC: u32 = 0x0044_4551;
/// Bytes of the header proper; the backing file name may follow it.
pub const HEADER_BYTES: usize = 64;
/// Smallest cluster size (spec: 2^12).
pub const MIN_CLUSTER_SIZE: u64 = 1 << 12;
/// Largest cluster size (spec: 2^26).
pub const MAX_CLUSTER_SIZE: u64 = 1 << 26;
/// Largest table size in clusters (spec: 16).
pub const MAX_TABLE_SIZE: u64 = 16;
/// Backing file names must fit a `PATH_MAX` buffer with its NUL, as in QEMU.
pub const MAX_BACKING_NAME: u32 = 4095;

/// Feature bits (spec, "Feature bits").
pub mod features {
    /// The image uses a backing file.
    pub const BACKING_FILE: u64 = 0x01;
    /// The image needs a consistency check before use.
    pub const NEED_CHECK: u64 = 0x02;
    /// The backing file is raw; never probe it.
    pub const BACKING_FORMAT_NO_PROBE: u64 = 0x04;
    /// Every feature this driver knows.
    pub const KNOWN: u64 = BACKING_FILE | NEED_CHECK | BACKING_FORMAT_NO_PROBE;
}

/// The header fields, as the spec names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Clusters per L1 or L2 table.
    pub table_size: u32,
    /// Clusters before the first regular cluster.
    pub header_size: u32,
    /// Incompatible feature bits.
    pub features: u64,
    /// Compatible feature bits.
    pub compat_features: u64,
    /// Bits cleared by any writer that does not know them.
    pub autoclear_features: u64,
    /// File offset of the L1 table.
    pub l1_table_offset: u64,
    /// Guest size in bytes.
    pub image_size: u64,
    /// Offset of the backing file name from the start of the file.
    pub backing_filename_offset: u32,
    /// Length of the backing file name.
    pub backing_filename_size: u32,
}

/// True if `cluster_size` is one the spec allows.
pub fn cluster_size_valid(cluster_size: u64) -> bool {
    cluster_size.is_power_of_two() && (MIN_CLUSTER_SIZE..=MAX_CLUSTER_SIZE).contains(&cluster_size)
}

/// True if `table_size` is one the spec allows.
pub fn table_size_valid(table_size: u64) -> bool {
    table_size.is_power_of_two() && table_size <= MAX_TABLE_SIZE
}

/// The largest guest size tables of this geometry can map, computed in
/// wrapping 64-bit arithmetic as QEMU computes it (so 64 MiB clusters with
/// large tables wrap to 0 and no size fits, as in qemu-img).
pub fn max_image_size(cluster_size: u64, table_size: u64) -> u64 {
    let entries = cluster_size.wrapping_mul(table_size) / 8;
    entries.wrapping_mul(entries).wrapping_mul(cluster_size)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Header {
    /// Parses the first 64 bytes of `head` and checks every field against
    /// `file_len`, the file's size, with qemu-img's messages.
    pub fn parse(head: &[u8], file_len: u64) -> Result<Header> {
        if head.len() < HEADER_BYTES || u32_at(head, 0) != MAGIC {
            return Err(Error::Invalid("Image not in QED format".into()));
        }
        let h = Header {
            cluster_size: u32_at(head, 4),
            table_size: u32_at(head, 8),
            header_size: u32_at(head, 12),
            features: u64_at(head, 16),
            compat_features: u64_at(head, 24),
            autoclear_features: u64_at(head, 32),
            l1_table_offset: u64_at(head, 40),
            image_size: u64_at(head, 48),
            backing_filename_offset: u32_at(head, 56),
            backing_filename_size: u32_at(head, 60),
        };
        let unknown = h.features & !features::KNOWN;
        if unknown != 0 {
            return Err(Error::Unsupported(format!(
                "Unsupported QED features: {unknown:x}"
            )));
        }
        if !cluster_size_valid(h.cluster_size.into()) {
            return Err(Error::Invalid("QED cluster size is invalid".into()));
        }
        if !table_size_valid(h.table_size.into()) {
            return Err(Error::Invalid("QED table size is invalid".into()));
        }
        if !h.image_size.is_multiple_of(512) || h.image_size > h.max_image_size() {
            return Err(Error::Invalid("QED image size is invalid".into()));
        }
        if !h.table_offset_valid(h.l1_table_offset, h.file_clusters_end(file_len)) {
            return Err(Error::Invalid("QED table offset is invalid".into()));
        }
        if h.features & features::BACKING_FILE != 0 {
            let end = u64::from(h.backing_filename_offset) + u64::from(h.backing_filename_size);
            if end > h.header_bytes() {
                return Err(Error::Invalid(
                    "QED backing filename offset is invalid".into(),
                ));
            }
        }
        Ok(h)
    }

    /// The 64 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.cluster_size.to_le_bytes());
        b[8..12].copy_from_slice(&self.table_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.header_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.features.to_le_bytes());
        b[24..32].copy_from_slice(&self.compat_features.to_le_bytes());
        b[32..40].copy_from_slice(&self.autoclear_features.to_le_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_le_bytes());
        b[48..56].copy_from_slice(&self.image_size.to_le_bytes());
        b[56..60].copy_from_slice(&self.backing_filename_offset.to_le_bytes());
        b[60..64].copy_from_slice(&self.backing_filename_size.to_le_bytes());
        b
    }

    /// Bytes per cluster.
    pub fn cluster_bytes(&self) -> u64 {
        self.cluster_size.into()
    }

    /// Bytes per L1 or L2 table.
    pub fn table_bytes(&self) -> u64 {
        self.cluster_bytes() * u64::from(self.table_size)
    }

    /// Entries per table.
    pub fn table_entries(&self) -> u64 {
        self.table_bytes() / 8
    }

    /// Guest bytes one L2 table maps.
    pub fn l2_span(&self) -> u64 {
        self.table_entries() * self.cluster_bytes()
    }

    /// Bytes reserved for the header.
    pub fn header_bytes(&self) -> u64 {
        u64::from(self.header_size) * self.cluster_bytes()
    }

    /// The largest guest size this geometry maps (see [`max_image_size`]).
    pub fn max_image_size(&self) -> u64 {
        max_image_size(self.cluster_bytes(), self.table_size.into())
    }

    /// The file's size rounded down to whole clusters: what lies past the
    /// last whole cluster does not count (spec, "file format"). The size is
    /// first taken in whole 512-byte sectors, as qemu's block layer gives
    /// it, so a file one byte short of its last cluster still holds it.
    pub fn file_clusters_end(&self, file_len: u64) -> u64 {
        let len = file_len.div_ceil(512).saturating_mul(512);
        len - len % self.cluster_bytes()
    }

    /// True if `offset` may hold a data cluster in a file whose whole
    /// clusters end at `end`: aligned, past the header, inside the file.
    pub fn cluster_offset_valid(&self, offset: u64, end: u64) -> bool {
        offset.is_multiple_of(self.cluster_bytes()) && offset >= self.header_bytes() && offset < end
    }

    /// True if a table may start at `offset`: its first and last clusters
    /// are valid cluster offsets. As in QEMU, the last cluster must lie
    /// strictly after the first, so one-cluster tables (`table_size=1`)
    /// never pass and qemu-img cannot open such images; qimg refuses them
    /// alike.
    pub fn table_offset_valid(&self, offset: u64, end: u64) -> bool {
        let span = (u64::from(self.table_size) - 1) * self.cluster_bytes();
        match offset.checked_add(span) {
            Some(last) if last > offset => {
                self.cluster_offset_valid(offset, end) && self.cluster_offset_valid(last, end)
            }
            _ => false,
        }
    }

    /// True if the image records a backing file.
    pub fn has_backing(&self) -> bool {
        self.features & features::BACKING_FILE != 0
    }

    /// True if the need-check flag is set.
    pub fn need_check(&self) -> bool {
        self.features & features::NEED_CHECK != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            cluster_size: 65536,
            table_size: 4,
            header_size: 1,
            l1_table_offset: 65536,
            image_size: 1 << 20,
            ..Header::default()
        }
    }

    #[test]
    fn round_trips_and_checks_fields() {
        let h = sample();
        let bytes = h.to_bytes();
        assert_eq!(Header::parse(&bytes, 327680).unwrap(), h);
        // The L1 table must fit in the file's whole clusters, the file
        // counted in whole sectors: a byte short is enough, a sector not.
        assert!(Header::parse(&bytes, 327679).is_ok());
        assert!(Header::parse(&bytes, 327168).is_err());
        let mut bad = h.clone();
        bad.cluster_size = 0;
        assert!(Header::parse(&bad.to_bytes(), 1 << 30).is_err());
        let mut bad = h.clone();
        bad.table_size = 1;
        assert!(Header::parse(&bad.to_bytes(), 1 << 30).is_err());
        let mut bad = h;
        bad.image_size = u64::MAX - 511;
        assert!(Header::parse(&bad.to_bytes(), 1 << 30).is_err());
    }

    #[test]
    fn huge_geometry_wraps_as_qemu_computes_it() {
        assert_eq!(max_image_size(1 << 26, 4), 0);
        assert_eq!(max_image_size(4096, 1), 1 << 30);
    }
}
