//! The binary headers of sparse extents: the hosted sparse extent header
//! (`KDMV`, VMware "Virtual Disk Format 1.1" §"Hosted Sparse Extent Header",
//! versions 1 to 3 as "Virtual Disk Format 5.0" extends it), the ESX Server
//! sparse header (`COWD`, VDF 1.1 §"ESX Server Sparse Extent Header") and the
//! stream-optimized markers (VDF 5.0 §"Stream-Optimized Compressed Sparse
//! Extents").

/// `SPARSE_MAGICNUMBER`, "KDMV" as little-endian bytes.
pub const SPARSE_MAGIC: u32 = 0x564d_444b;
/// The ESX Server sparse extent magic, "COWD" as little-endian bytes.
pub const COWD_MAGIC: u32 = 0x4457_4f43;
/// Bytes per sector: every offset in a sparse extent counts these.
pub const SECTOR: u64 = 512;
/// `gdOffset` of a stream-optimized header whose grain directory is found
/// through the footer (VDF 5.0, "The Footer").
pub const GD_AT_END: u64 = u64::MAX;

/// flags bit 0: the newline characters below are valid.
pub const FLAG_NL_TEST: u32 = 1 << 0;
/// flags bit 1: a redundant grain directory and tables are kept.
pub const FLAG_RGD: u32 = 1 << 1;
/// flags bit 2: grain table entry 1 means "this grain reads as zeros"
/// (VDF 5.0, "Zeroed-Grain Grain Table Entry").
pub const FLAG_ZEROED_GRAIN: u32 = 1 << 2;
/// flags bit 16: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// flags bit 17: grains and metadata are preceded by markers.
pub const FLAG_MARKERS: u32 = 1 << 17;
/// `compressAlgorithm` value for deflate.
pub const COMPRESSION_DEFLATE: u16 = 1;

/// Marker type: end of stream.
pub const MARKER_EOS: u32 = 0;
/// Marker type: a grain table follows.
pub const MARKER_GT: u32 = 1;
/// Marker type: the grain directory follows.
pub const MARKER_GD: u32 = 2;
/// Marker type: the footer follows.
pub const MARKER_FOOTER: u32 = 3;
/// Bytes of a grain marker before the compressed data: `lba` (8) and `size` (4).
pub const GRAIN_MARKER_LEN: usize = 12;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// The magic number at the start of `head`, if it has four bytes.
pub fn magic(head: &[u8]) -> Option<u32> {
    (head.len() >= 4).then(|| u32_at(head, 0))
}

/// `SparseExtentHeader` of a hosted sparse extent: one sector at offset 0
/// (and, for stream-optimized extents, again as the footer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseHeader {
    /// 1, 2 (zeroed-grain GTEs) or 3 (stream-optimized, change tracking).
    pub version: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Sectors of guest data the extent holds.
    pub capacity: u64,
    /// Sectors per grain.
    pub grain_size: u64,
    /// Sector of the embedded descriptor (0: none).
    pub descriptor_offset: u64,
    /// Sectors reserved for the embedded descriptor.
    pub descriptor_size: u64,
    /// Grain table entries per grain table.
    pub num_gtes_per_gt: u32,
    /// Sector of the redundant grain directory.
    pub rgd_offset: u64,
    /// Sector of the grain directory, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub overhead: u64,
    /// Set while the extent is open for writing.
    pub unclean_shutdown: bool,
    /// 0: none, 1: deflate.
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// Parses the first 512 bytes of `b`; `None` unless the magic is `KDMV`.
    pub fn parse(b: &[u8]) -> Option<SparseHeader> {
        if b.len() < SECTOR as usize || u32_at(b, 0) != SPARSE_MAGIC {
            return None;
        }
        Some(SparseHeader {
            version: u32_at(b, 4),
            flags: u32_at(b, 8),
            capacity: u64_at(b, 12),
            grain_size: u64_at(b, 20),
            descriptor_offset: u64_at(b, 28),
            descriptor_size: u64_at(b, 36),
            num_gtes_per_gt: u32_at(b, 44),
            rgd_offset: u64_at(b, 48),
            gd_offset: u64_at(b, 56),
            overhead: u64_at(b, 64),
            unclean_shutdown: b[72] != 0,
            compress_algorithm: u16_at(b, 77),
        })
    }

    /// The header as one sector, with the newline-detection characters
    /// `\n`, ` `, `\r`, `\n` that let a reader spot a text-mode transfer.
    pub fn to_sector(&self) -> Vec<u8> {
        let mut b = vec![0u8; SECTOR as usize];
        b[0..4].copy_from_slice(&SPARSE_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = u8::from(self.unclean_shutdown);
        b[73] = b'\n';
        b[74] = b' ';
        b[75] = b'\r';
        b[76] = b'\n';
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// True if the flags say grains are compressed.
    pub fn compressed(&self) -> bool {
        // qemu goes by the algorithm field, not the flag bit: a header
        // naming deflate without the flag is compressed, and one with the
        // flag but no algorithm is not.
        self.compress_algorithm == COMPRESSION_DEFLATE
    }
    /// True if grains and metadata carry markers.
    pub fn markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }
}

/// The header of an ESX Server sparse extent (`COWD`, VMDK3): 2048 bytes,
/// of which only these fields matter for reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CowdHeader {
    /// Sectors of guest data.
    pub num_sectors: u32,
    /// Sectors per grain.
    pub grain_size: u32,
    /// Sector of the grain directory.
    pub gd_offset: u32,
    /// Entries in the grain directory.
    pub num_gd_entries: u32,
    /// Next free sector.
    pub free_sector: u32,
}

/// Grain table entries per grain table of an ESX Server sparse extent
/// (fixed by VDF 1.1: each table maps 4096 grains).
pub const COWD_GTES_PER_GT: u32 = 4096;

impl CowdHeader {
    /// Parses `b` (at least 32 bytes); `None` unless the magic is `COWD`.
    pub fn parse(b: &[u8]) -> Option<CowdHeader> {
        if b.len() < 32 || u32_at(b, 0) != COWD_MAGIC {
            return None;
        }
        Some(CowdHeader {
            num_sectors: u32_at(b, 12),
            grain_size: u32_at(b, 16),
            gd_offset: u32_at(b, 20),
            num_gd_entries: u32_at(b, 24),
            free_sector: u32_at(b, 28),
        })
    }
}

/// A metadata marker of a stream-optimized extent (one sector).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// Sectors of metadata that follow (for a grain marker: its LBA).
    pub value: u64,
    /// Bytes of compressed data (0 for metadata markers).
    pub size: u32,
    /// `MARKER_*` type (meaningful only when `size` is 0).
    pub kind: u32,
}

impl Marker {
    /// Parses the first 16 bytes of `b`.
    pub fn parse(b: &[u8]) -> Option<Marker> {
        (b.len() >= 16).then(|| Marker {
            value: u64_at(b, 0),
            size: u32_at(b, 8),
            kind: u32_at(b, 12),
        })
    }

    /// A metadata marker sector of `kind` announcing `sectors` of metadata.
    pub fn metadata(kind: u32, sectors: u64) -> Vec<u8> {
        let mut b = vec![0u8; SECTOR as usize];
        b[0..8].copy_from_slice(&sectors.to_le_bytes());
        b[12..16].copy_from_slice(&kind.to_le_bytes());
        b
    }
}

/// Reads little-endian 32-bit table entries (grain directory, grain table).
pub fn entries_from_bytes(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32_at(c, 0)).collect()
}

/// Writes little-endian 32-bit table entries.
pub fn entries_to_bytes(entries: &[u32]) -> Vec<u8> {
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = SparseHeader {
            version: 3,
            flags: FLAG_NL_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: 2048,
            grain_size: 128,
            descriptor_offset: 1,
            descriptor_size: 20,
            num_gtes_per_gt: 512,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: 128,
            unclean_shutdown: false,
            compress_algorithm: COMPRESSION_DEFLATE,
        };
        let bytes = h.to_sector();
        assert_eq!(&bytes[0..4], b"KDMV");
        assert_eq!(SparseHeader::parse(&bytes), Some(h));
    }

    #[test]
    fn short_or_foreign_input_is_not_a_header() {
        assert_eq!(SparseHeader::parse(b"KDMV"), None);
        assert_eq!(SparseHeader::parse(&[0u8; 512]), None);
        assert_eq!(CowdHeader::parse(b"COWD"), None);
        assert_eq!(Marker::parse(&[0u8; 8]), None);
    }
}
