//! The hard disk footer (Microsoft's "Virtual Hard Disk Image Format
//! Specification", "Hard Disk Footer Format"): 512 bytes at the end of
//! every VHD, copied to the start of dynamic and differencing disks.
//! Every field is big-endian.

use crate::error::{Result, VpcError};

/// Bytes of the footer.
pub const FOOTER_SIZE: usize = 512;
/// The footer's cookie.
pub const COOKIE: &[u8; 8] = b"conectix";
/// `Features`: bit 1 is reserved and always set.
const FEATURES: u32 = 2;
/// `File Format Version` 1.0.
const FORMAT_VERSION: u32 = 0x0001_0000;
/// `Data Offset` of a fixed disk: no further structures.
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// `Disk Type` of a fixed disk.
pub const TYPE_FIXED: u32 = 2;
/// `Disk Type` of a dynamic disk.
pub const TYPE_DYNAMIC: u32 = 3;
/// Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00 UTC).
const VHD_EPOCH: u64 = 946_684_800;
/// The largest geometry a footer can hold: 65535 cylinders, 16 heads, 255
/// sectors per track. A disk with it takes its size from `Current Size`.
pub const MAX_GEOMETRY: Geometry = Geometry {
    cylinders: 65535,
    heads: 16,
    sectors: 255,
};

/// A disk geometry (`Disk Geometry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors: u8,
}

impl Geometry {
    /// Sectors the geometry addresses.
    pub fn total_sectors(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors)
    }

    /// The geometry for `total` sectors, as the specification's appendix
    /// ("CHS Calculation") computes it: the largest one not above `total`.
    pub fn for_sectors(total: u64) -> Geometry {
        let total = total.min(MAX_GEOMETRY.total_sectors());
        let (sectors, heads, cyl_times_heads) = if total >= 65535 * 16 * 63 {
            (255, 16, total / 255)
        } else {
            let mut sectors = 17;
            let mut cth = total / sectors;
            let mut heads = cth.div_ceil(1024).max(4);
            if cth >= heads * 1024 || heads > 16 {
                sectors = 31;
                heads = 16;
                cth = total / sectors;
            }
            if cth >= heads * 1024 {
                sectors = 63;
                heads = 16;
                cth = total / sectors;
            }
            (sectors, heads, cth)
        };
        Geometry {
            cylinders: (cyl_times_heads / heads) as u16,
            heads: heads as u8,
            sectors: sectors as u8,
        }
    }
}

/// The fields of a footer this driver uses or writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    /// `Data Offset`: where the dynamic disk header is.
    pub data_offset: u64,
    /// `Time Stamp`: seconds since 2000-01-01.
    pub timestamp: u32,
    /// `Creator Application`: which program made the disk.
    pub creator_app: [u8; 4],
    /// `Creator Version`.
    pub creator_version: u32,
    /// `Creator Host OS`.
    pub creator_os: [u8; 4],
    /// `Original Size` in bytes.
    pub original_size: u64,
    /// `Current Size` in bytes.
    pub current_size: u64,
    /// `Disk Geometry`.
    pub geometry: Geometry,
    /// `Disk Type`.
    pub disk_type: u32,
    /// `Unique Id`.
    pub uuid: [u8; 16],
}

/// The footer's checksum: the ones' complement of the sum of its bytes,
/// with the checksum field (bytes 64..68) taken as zero.
pub fn checksum(bytes: &[u8]) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(u32::from(b)));
    !sum
}

/// The big-endian u32 at `at` of `b`.
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// True if `head` starts with a footer's cookie (what QEMU probes).
pub fn has_cookie(head: &[u8]) -> bool {
    head.starts_with(COOKIE)
}

impl Footer {
    /// Parses a footer whose cookie has been checked; the checksum must match.
    pub fn parse(bytes: &[u8; FOOTER_SIZE]) -> Result<Footer> {
        if be32(bytes, 64) != checksum(bytes) {
            return Err(VpcError::FooterChecksum);
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&bytes[68..84]);
        Ok(Footer {
            data_offset: be64(bytes, 16),
            timestamp: be32(bytes, 24),
            creator_app: bytes[28..32].try_into().unwrap_or_default(),
            creator_version: be32(bytes, 32),
            creator_os: bytes[36..40].try_into().unwrap_or_default(),
            original_size: be64(bytes, 40),
            current_size: be64(bytes, 48),
            geometry: Geometry {
                cylinders: u16::from_be_bytes([bytes[56], bytes[57]]),
                heads: bytes[58],
                sectors: bytes[59],
            },
            disk_type: be32(bytes, 60),
            uuid,
        })
    }

    /// The footer's 512 bytes, checksum included.
    pub fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[..8].copy_from_slice(COOKIE);
        b[8..12].copy_from_slice(&FEATURES.to_be_bytes());
        b[12..16].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_os);
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..58].copy_from_slice(&self.geometry.cylinders.to_be_bytes());
        b[58] = self.geometry.heads;
        b[59] = self.geometry.sectors;
        b[60..64].copy_from_slice(&self.disk_type.to_be_bytes());
        b[68..84].copy_from_slice(&self.uuid);
        let sum = checksum(&b);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// The guest size in bytes. Virtual PC (`vpc `) and qemu-img without
    /// `force_size` (`qemu`) size a disk by its geometry; other creators
    /// (Hyper-V's `win `, Disk2VHD, qemu-img's `qem2`...) by `Current
    /// Size`, as does every disk with the largest geometry, which cannot
    /// describe it. `mode` overrides the choice (QEMU's `force_size_calc`).
    pub fn guest_size(&self, mode: Option<SizeCalc>) -> u64 {
        let by_geometry =
            matches!(&self.creator_app, b"vpc " | b"qemu") && self.geometry != MAX_GEOMETRY;
        let mode = mode.unwrap_or(if by_geometry {
            SizeCalc::Chs
        } else {
            SizeCalc::CurrentSize
        });
        match mode {
            SizeCalc::Chs => self.geometry.total_sectors() * 512,
            SizeCalc::CurrentSize => self.current_size / 512 * 512,
        }
    }
}

/// Where the guest size comes from (QEMU's `force_size_calc` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeCalc {
    /// The CHS geometry.
    Chs,
    /// The `Current Size` field.
    CurrentSize,
}

impl SizeCalc {
    /// Parses the option's value.
    pub fn parse(text: &str) -> Result<SizeCalc> {
        match text {
            "chs" => Ok(SizeCalc::Chs),
            "current_size" => Ok(SizeCalc::CurrentSize),
            other => Err(VpcError::SizeCalcMode(other.to_string())),
        }
    }
}

/// The current time as a footer's `Time Stamp`.
pub fn now() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(VHD_EPOCH);
    unix.saturating_sub(VHD_EPOCH) as u32
}

/// A random version-4 UUID for `Unique Id`.
pub fn random_uuid() -> [u8; 16] {
    let mut id = [0u8; 16];
    // A fixed id if the system has no randomness: the id only tells disks apart.
    let _ = getrandom::fill(&mut id);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_follows_the_specification() {
        // 10 MiB: 302 cylinders, 4 heads, 17 sectors (what qemu-img writes).
        let g = Geometry::for_sectors(20536);
        assert_eq!((g.cylinders, g.heads, g.sectors), (302, 4, 17));
        assert_eq!(Geometry::for_sectors(u64::MAX), MAX_GEOMETRY);
        assert_eq!(Geometry::for_sectors(0).total_sectors(), 0);
    }

    #[test]
    fn footer_round_trips_and_checks_its_sum() {
        let f = Footer {
            data_offset: 512,
            timestamp: 7,
            creator_app: *b"qemu",
            creator_version: 0x0005_0003,
            creator_os: *b"Wi2k",
            original_size: 1 << 20,
            current_size: 1 << 20,
            geometry: Geometry::for_sectors(2048),
            disk_type: TYPE_DYNAMIC,
            uuid: [3; 16],
        };
        let mut bytes = f.to_bytes();
        assert_eq!(Footer::parse(&bytes).unwrap(), f);
        bytes[100] = 1;
        assert!(matches!(
            Footer::parse(&bytes),
            Err(VpcError::FooterChecksum)
        ));
    }
}
