//! The qcow (version 1) header, as QEMU's `docs/interop` history and the
//! original qcow description lay it out. All integers are big-endian.
//!
//! ```text
//! offset  size  field
//!      0     4  magic, "QFI\xfb"
//!      4     4  version, 1
//!      8     8  backing_file_offset (0: no backing file)
//!     16     4  backing_file_size: length of the name, no NUL
//!     20     4  mtime (unused, 0)
//!     24     8  size: guest size in bytes
//!     32     1  cluster_bits: log2 of the cluster size (9 to 16)
//!     33     1  l2_bits: log2 of the entries in an L2 table (6 to 13)
//!     34     2  padding
//!     36     4  crypt_method: 0 none, 1 AES
//!     40     8  l1_table_offset
//! ```
//!
//! The L1 table has `ceil(size / 2^(cluster_bits + l2_bits))` entries, each
//! the file offset of an L2 table (0: none). An L2 table has `2^l2_bits`
//! entries, each the file offset of a cluster (0: unallocated), or, with
//! bit 63 set, a compressed cluster: its length in the `cluster_bits`
//! bits below bit 63 and its offset in the rest.

use qimg_driver_api::DriverError;

/// Bytes of the fixed header.
pub const HEADER_SIZE: usize = 48;
/// The magic, "QFI\xfb", shared with qcow2.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// The only version this format has.
pub const VERSION: u32 = 1;
/// `crypt_method` of an image without encryption.
pub const CRYPT_NONE: u32 = 0;
/// `crypt_method` of an AES-encrypted image.
pub const CRYPT_AES: u32 = 1;
/// The flag of a compressed cluster's L2 entry.
pub const COMPRESSED: u64 = 1 << 63;
/// Longest backing file name qemu reads (it keeps it in 1 KiB with its NUL).
pub const MAX_BACKING_NAME: u32 = 1023;
/// The most L1 entries qemu accepts: `INT_MAX / 8`, its table's byte size in
/// an `int`.
pub const MAX_L1_ENTRIES: u64 = (i32::MAX as u64) / 8;

/// Why a header is refused; the messages are qemu-img's.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The magic is not qcow's.
    NotQcow,
    /// A version other than 1 (a qcow2 image opened as qcow).
    Version(u32),
    /// A guest size below 2 bytes.
    TooSmall,
    /// `cluster_bits` outside 9..=16.
    ClusterSize,
    /// `l2_bits` outside 6..=13.
    L2Size,
    /// A `crypt_method` other than 0 or 1.
    CryptMethod,
    /// An L1 table qemu cannot hold.
    TooLarge,
    /// A backing file name longer than [`MAX_BACKING_NAME`].
    BackingName,
}

impl From<HeaderError> for DriverError {
    fn from(e: HeaderError) -> DriverError {
        let message = match e {
            HeaderError::NotQcow => "Image not in qcow format".to_string(),
            HeaderError::Version(v) => {
                let hint = if v == 2 || v == 3 {
                    "\nTry the 'qcow2' driver instead."
                } else {
                    ""
                };
                format!("qcow (v{VERSION}) does not support qcow version {v}{hint}")
            }
            HeaderError::TooSmall => "Image size is too small (must be at least 2 bytes)".into(),
            HeaderError::ClusterSize => "Cluster size must be between 512 and 64k".into(),
            HeaderError::L2Size => "L2 table size must be between 512 and 64k".into(),
            HeaderError::CryptMethod => "invalid encryption method in qcow header".into(),
            HeaderError::TooLarge => "Image too large".into(),
            HeaderError::BackingName => "Backing file name too long".into(),
        };
        match e {
            HeaderError::Version(_) => DriverError::unsupported(message),
            _ => DriverError::invalid_image(message),
        }
    }
}

/// A qcow header, as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Where the backing file name is (0: none).
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// Guest size in bytes.
    pub size: u64,
    /// log2 of the cluster size.
    pub cluster_bits: u8,
    /// log2 of the number of entries of an L2 table.
    pub l2_bits: u8,
    /// 0 (none) or 1 (AES).
    pub crypt_method: u32,
    /// Where the L1 table is.
    pub l1_table_offset: u64,
}

/// The big-endian u32 at `at`.
fn be_u32(head: &[u8; HEADER_SIZE], at: usize) -> u32 {
    u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]])
}

/// The big-endian u64 at `at`.
fn be_u64(head: &[u8; HEADER_SIZE], at: usize) -> u64 {
    u64::from(be_u32(head, at)) << 32 | u64::from(be_u32(head, at + 4))
}

/// Whether `head` (the file's first bytes) starts a qcow version 1 image.
pub fn is_qcow(head: &[u8]) -> bool {
    head.len() >= HEADER_SIZE && head[..4] == MAGIC && head[4..8] == VERSION.to_be_bytes()
}

impl Header {
    /// Reads the fields of `head`, checking only the magic and version.
    pub fn parse(head: &[u8; HEADER_SIZE]) -> Result<Header, HeaderError> {
        if head[..4] != MAGIC {
            return Err(HeaderError::NotQcow);
        }
        let version = be_u32(head, 4);
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        Ok(Header {
            backing_file_offset: be_u64(head, 8),
            backing_file_size: be_u32(head, 16),
            size: be_u64(head, 24),
            cluster_bits: head[32],
            l2_bits: head[33],
            crypt_method: be_u32(head, 36),
            l1_table_offset: be_u64(head, 40),
        })
    }

    /// Checks the size and geometry, in qemu's order.
    pub fn check_geometry(&self) -> Result<(), HeaderError> {
        if self.size <= 1 {
            return Err(HeaderError::TooSmall);
        }
        if !(9..=16).contains(&self.cluster_bits) {
            return Err(HeaderError::ClusterSize);
        }
        // l2_bits counts 8-byte entries: 512 bytes to 64 KiB of table.
        if !(6..=13).contains(&self.l2_bits) {
            return Err(HeaderError::L2Size);
        }
        if self.crypt_method > CRYPT_AES {
            return Err(HeaderError::CryptMethod);
        }
        Ok(())
    }

    /// The number of L1 entries, refused as qemu refuses it when its table
    /// would not fit an `int` of bytes.
    pub fn l1_entries(&self) -> Result<u64, HeaderError> {
        l1_entries_for(self.size, self.cluster_bits, self.l2_bits)
    }

    /// The backing file name's length, refused past [`MAX_BACKING_NAME`].
    pub fn backing_name_len(&self) -> Result<Option<usize>, HeaderError> {
        if self.backing_file_offset == 0 {
            return Ok(None);
        }
        if self.backing_file_size > MAX_BACKING_NAME {
            return Err(HeaderError::BackingName);
        }
        Ok(Some(self.backing_file_size as usize))
    }

    /// The header as stored.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&VERSION.to_be_bytes());
        out[8..16].copy_from_slice(&self.backing_file_offset.to_be_bytes());
        out[16..20].copy_from_slice(&self.backing_file_size.to_be_bytes());
        out[24..32].copy_from_slice(&self.size.to_be_bytes());
        out[32] = self.cluster_bits;
        out[33] = self.l2_bits;
        out[36..40].copy_from_slice(&self.crypt_method.to_be_bytes());
        out[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        out
    }
}

/// L1 entries for a guest of `size` bytes, or [`HeaderError::TooLarge`].
pub fn l1_entries_for(size: u64, cluster_bits: u8, l2_bits: u8) -> Result<u64, HeaderError> {
    let shift = u32::from(cluster_bits) + u32::from(l2_bits);
    let span = 1u64 << shift;
    if size > u64::MAX - span {
        return Err(HeaderError::TooLarge);
    }
    let entries = size.div_ceil(span);
    if entries > MAX_L1_ENTRIES {
        return Err(HeaderError::TooLarge);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            backing_file_offset: 48,
            backing_file_size: 8,
            size: 1 << 20,
            cluster_bits: 9,
            l2_bits: 12,
            crypt_method: CRYPT_AES,
            l1_table_offset: 56,
        };
        let bytes = h.to_bytes();
        assert!(is_qcow(&bytes));
        assert_eq!(Header::parse(&bytes), Ok(h));
        assert_eq!(h.check_geometry(), Ok(()));
        assert_eq!(h.l1_entries(), Ok(1));
    }

    #[test]
    fn bad_geometry_is_refused() {
        let ok = Header {
            size: 1 << 20,
            cluster_bits: 12,
            l2_bits: 9,
            ..Header::default()
        };
        for (h, e) in [
            (Header { size: 1, ..ok }, HeaderError::TooSmall),
            (
                Header {
                    cluster_bits: 17,
                    ..ok
                },
                HeaderError::ClusterSize,
            ),
            (Header { l2_bits: 5, ..ok }, HeaderError::L2Size),
            (
                Header {
                    crypt_method: 2,
                    ..ok
                },
                HeaderError::CryptMethod,
            ),
        ] {
            assert_eq!(h.check_geometry(), Err(e));
        }
        assert_eq!(
            Header {
                size: u64::MAX,
                ..ok
            }
            .l1_entries(),
            Err(HeaderError::TooLarge)
        );
        assert_eq!(
            Header {
                size: 1 << 60,
                ..ok
            }
            .l1_entries(),
            Err(HeaderError::TooLarge)
        );
    }
}
