//! The 64-byte image header and the rules that derive the image's layout
//! from it (the Parallels "expanding disk" header as OpenVZ's ploop and
//! qemu-img 10.0.2 read it).
//!
//! ```text
//! 0   magic[16]     "WithoutFreeSpace" (v1) or "WithouFreSpacExt" (v2)
//! 16  version       2
//! 20  heads, 24 cylinders (geometry, unused)
//! 28  tracks        sectors per cluster
//! 32  bat_entries   entries of the block allocation table after the header
//! 36  nb_sectors    guest size in sectors (v1: only the low 32 bits count)
//! 44  inuse         0x746F6E59 while an image is open for writing
//! 48  data_off      first data sector (v1 may leave it 0)
//! 52  flags
//! 56  ext_off       sector of the format extension cluster (0: none)
//! ```
//!
//! A BAT entry is a cluster's place in the file: in sectors for v1, in
//! clusters for v2 (0: not allocated).

use crate::error::{ParallelsError, Result};

/// Bytes in a sector, the unit of every header field.
pub const SECTOR: u64 = 512;
/// Size of the header; the BAT follows it.
pub const HEADER_SIZE: usize = 64;
/// Magic of version 1 images (BAT entries in sectors).
pub const MAGIC_V1: &[u8; 16] = b"WithoutFreeSpace";
/// Magic of version 2 images (BAT entries in clusters).
pub const MAGIC_V2: &[u8; 16] = b"WithouFreSpacExt";
/// The only header version there is.
pub const VERSION: u32 = 2;
/// `inuse` while the image is open for writing (or was not closed cleanly).
pub const INUSE_MAGIC: u32 = 0x746F_6E59;
/// Largest `tracks` an image may have: qemu-img refuses clusters of more
/// than `INT32_MAX / 513` sectors ("Too big cluster").
pub const MAX_TRACKS: u32 = i32::MAX as u32 / 513;
/// Largest BAT: qemu-img refuses more than `INT_MAX / 4` entries.
pub const MAX_BAT_ENTRIES: u32 = i32::MAX as u32 / 4;
/// Heads recorded in a new image's geometry.
pub const HEADS: u32 = 16;
/// Sectors per cylinder of that geometry (16 heads of 32 sectors).
pub const SECTORS_PER_CYLINDER: u64 = 32;

/// The header fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Version 2 (`WithouFreSpacExt`) rather than 1.
    pub v2: bool,
    /// The version field (2 in every valid image).
    pub version: u32,
    /// Geometry: heads.
    pub heads: u32,
    /// Geometry: cylinders.
    pub cylinders: u32,
    /// Sectors per cluster.
    pub tracks: u32,
    /// BAT entries.
    pub bat_entries: u32,
    /// Guest size in sectors, as stored.
    pub nb_sectors: u64,
    /// The in-use marker.
    pub inuse: u32,
    /// First data sector.
    pub data_off: u32,
    /// Flags (none defined).
    pub flags: u32,
    /// Sector of the format extension, 0 for none.
    pub ext_off: u64,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

/// True if `head` starts with a Parallels header (qemu-img's probe: either
/// magic and version 2).
pub fn probe(head: &[u8]) -> bool {
    head.len() >= HEADER_SIZE
        && (head[..16] == MAGIC_V1[..] || head[..16] == MAGIC_V2[..])
        && le32(head, 16) == VERSION
}

impl Header {
    /// Parses the first 64 bytes of an image; the wrong magic or version is
    /// "Image not in Parallels format", as qemu-img says.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Result<Header> {
        let v2 = if b[..16] == MAGIC_V2[..] {
            true
        } else if b[..16] == MAGIC_V1[..] {
            false
        } else {
            return Err(ParallelsError::NotParallels);
        };
        let header = Header {
            v2,
            version: le32(b, 16),
            heads: le32(b, 20),
            cylinders: le32(b, 24),
            tracks: le32(b, 28),
            bat_entries: le32(b, 32),
            nb_sectors: le64(b, 36),
            inuse: le32(b, 44),
            data_off: le32(b, 48),
            flags: le32(b, 52),
            ext_off: le64(b, 56),
        };
        if header.version != VERSION {
            return Err(ParallelsError::NotParallels);
        }
        if header.tracks == 0 {
            return Err(ParallelsError::ZeroTracks);
        }
        if header.tracks > MAX_TRACKS {
            return Err(ParallelsError::TooBigCluster);
        }
        if header.bat_entries > MAX_BAT_ENTRIES {
            return Err(ParallelsError::CatalogTooLarge);
        }
        Ok(header)
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..16].copy_from_slice(if self.v2 { MAGIC_V2 } else { MAGIC_V1 });
        let mut put32 = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(16, self.version);
        put32(20, self.heads);
        put32(24, self.cylinders);
        put32(28, self.tracks);
        put32(32, self.bat_entries);
        put32(44, self.inuse);
        put32(48, self.data_off);
        put32(52, self.flags);
        b[36..44].copy_from_slice(&self.nb_sectors.to_le_bytes());
        b[56..64].copy_from_slice(&self.ext_off.to_le_bytes());
        b
    }

    /// Guest size in sectors: v1 images keep only 32 bits of it.
    pub fn sectors(&self) -> u64 {
        if self.v2 {
            self.nb_sectors
        } else {
            self.nb_sectors & 0xffff_ffff
        }
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        u64::from(self.tracks) * SECTOR
    }

    /// What a BAT entry counts in, in sectors.
    pub fn off_multiplier(&self) -> u64 {
        if self.v2 {
            u64::from(self.tracks)
        } else {
            1
        }
    }

    /// The smallest valid `data_off`: the sector after the BAT, rounded up
    /// to a cluster in v2 images.
    pub fn min_data_off(&self) -> u64 {
        let min = bat_end(self.bat_entries).div_ceil(SECTOR);
        if self.v2 {
            min.next_multiple_of(u64::from(self.tracks))
        } else {
            min
        }
    }

    /// Checks `data_off` against a file of `file_sectors` sectors; returns
    /// whether it is valid and the data start to use either way. A v1 image
    /// may leave it 0 (data right after the BAT).
    pub fn data_start(&self, file_sectors: u64) -> (bool, u64) {
        let min = self.min_data_off();
        let off = u64::from(self.data_off);
        if off == 0 && !self.v2 {
            return (true, min);
        }
        if off < min || off > file_sectors {
            return (false, min);
        }
        (true, off)
    }
}

/// Byte offset just past BAT entry `entries - 1`: where the BAT ends.
pub fn bat_end(entries: u32) -> u64 {
    HEADER_SIZE as u64 + 4 * u64::from(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            v2: true,
            version: VERSION,
            heads: HEADS,
            cylinders: 40,
            tracks: 2048,
            bat_entries: 10,
            nb_sectors: 20480,
            inuse: 0,
            data_off: 2048,
            flags: 0,
            ext_off: 0,
        }
    }

    #[test]
    fn a_header_reads_back() {
        let h = sample();
        assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
        assert!(probe(&h.to_bytes()));
    }

    #[test]
    fn hostile_fields_are_refused_by_name() {
        let mut h = sample();
        h.tracks = 0;
        assert!(matches!(
            Header::parse(&h.to_bytes()),
            Err(ParallelsError::ZeroTracks)
        ));
        h.tracks = MAX_TRACKS + 1;
        assert!(matches!(
            Header::parse(&h.to_bytes()),
            Err(ParallelsError::TooBigCluster)
        ));
        h.tracks = 8;
        h.bat_entries = u32::MAX;
        assert!(matches!(
            Header::parse(&h.to_bytes()),
            Err(ParallelsError::CatalogTooLarge)
        ));
        h.bat_entries = 1;
        h.version = 3;
        assert!(matches!(
            Header::parse(&h.to_bytes()),
            Err(ParallelsError::NotParallels)
        ));
    }

    #[test]
    fn data_off_is_checked_as_qemu_img_checks_it() {
        let mut h = sample();
        assert_eq!(h.data_start(2048), (true, 2048));
        assert_eq!(h.data_start(2047), (false, 2048));
        h.data_off = 0;
        assert_eq!(h.data_start(4096), (false, 2048));
        h.v2 = false;
        assert_eq!(h.data_start(4096), (true, 1));
    }
}
