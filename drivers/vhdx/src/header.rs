//! The file type identifier and the two headers ([MS-VHDX] 2.1, 2.2).
//!
//! Two copies of the header sit at 64 KiB and 128 KiB. The current one is
//! the valid copy (signature and CRC-32C) with the larger `SequenceNumber`;
//! an update writes the other copy with the next number, so a write torn
//! by a crash leaves the previous header current.

use crate::crc::{crc32c, crc32c_without};
use crate::error::{Result, VhdxError};
use crate::format::{guid_at, le16, le32, le64, put16, put32, put64, Guid, MIB};
use qimg_driver_api::{ByteStoreBox, StoreExt};

/// The file type identifier's signature at offset 0.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// Where the two headers are.
pub const HEADER_OFFSETS: [u64; 2] = [64 * 1024, 128 * 1024];
/// The bytes of a header the checksum covers.
pub const HEADER_SIZE: usize = 4096;
/// "head".
const HEADER_SIGNATURE: u32 = 0x6461_6568;

/// One header's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Which copy is newer.
    pub sequence_number: u64,
    /// Changed when the file is first opened for writing.
    pub file_write_guid: Guid,
    /// Changed when the guest data first changes.
    pub data_write_guid: Guid,
    /// Zero, or the GUID that the log's valid entries carry.
    pub log_guid: Guid,
    /// 0.
    pub log_version: u16,
    /// 1.
    pub version: u16,
    /// Bytes of the log (a multiple of 1 MiB).
    pub log_length: u32,
    /// Where the log is (a multiple of 1 MiB).
    pub log_offset: u64,
}

impl Header {
    /// Parses one copy; `None` if its signature or checksum is wrong.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Option<Header> {
        if le32(b, 0) != HEADER_SIGNATURE || le32(b, 4) != crc32c_without(b, 4) {
            return None;
        }
        Some(Header {
            sequence_number: le64(b, 8),
            file_write_guid: guid_at(b, 16),
            data_write_guid: guid_at(b, 32),
            log_guid: guid_at(b, 48),
            log_version: le16(b, 64),
            version: le16(b, 66),
            log_length: le32(b, 68),
            log_offset: le64(b, 72),
        })
    }

    /// The header's 4 KiB, checksummed.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        put32(&mut b, 0, HEADER_SIGNATURE);
        put64(&mut b, 8, self.sequence_number);
        b[16..32].copy_from_slice(&self.file_write_guid);
        b[32..48].copy_from_slice(&self.data_write_guid);
        b[48..64].copy_from_slice(&self.log_guid);
        put16(&mut b, 64, self.log_version);
        put16(&mut b, 66, self.version);
        put32(&mut b, 68, self.log_length);
        put64(&mut b, 72, self.log_offset);
        let sum = crc32c(&b);
        put32(&mut b, 4, sum);
        b
    }

    /// The log's place in the file, checked against the rules of
    /// [MS-VHDX] 2.2.2.1 (1 MiB aligned, a whole number of MiB, past the
    /// headers) and the file's end.
    pub fn log_range(&self, file_len: u64) -> Option<(u64, u64)> {
        let len = u64::from(self.log_length);
        let end = self.log_offset.checked_add(len)?;
        (self.log_offset.is_multiple_of(MIB)
            && len % MIB == 0
            && self.log_offset >= MIB
            && end <= file_len)
            .then_some((self.log_offset, len))
    }
}

/// Reads both copies and returns the current header and its index (0 for
/// the copy at 64 KiB).
pub fn read_current(store: &ByteStoreBox) -> Result<(Header, usize)> {
    let mut found: [Option<Header>; 2] = [None, None];
    let mut raw = [[0u8; HEADER_SIZE]; 2];
    for (i, &at) in HEADER_OFFSETS.iter().enumerate() {
        store.read_or_zero_at(at, &mut raw[i])?;
        // A copy of a version this reader does not know counts as invalid
        // (qemu-img then falls back to the other copy).
        found[i] = Header::parse(&raw[i]).filter(|h| h.version == 1);
    }
    match found {
        [Some(a), Some(b)] if b.sequence_number > a.sequence_number => Ok((b, 1)),
        // Equal sequence numbers leave no current header, unless the two
        // copies are the same (as Disk2VHD writes them), as qemu decides.
        [Some(a), Some(b)] if a.sequence_number == b.sequence_number && raw[0] != raw[1] => {
            Err(VhdxError::NoValidHeader)
        }
        [Some(a), _] => Ok((a, 0)),
        [None, Some(b)] => Ok((b, 1)),
        [None, None] => Err(VhdxError::NoValidHeader),
    }
}

/// Makes `next` the current header: writes it, with the next sequence
/// number, over the copy that is not current, and makes it durable.
/// Returns the index of the copy written, now the current one.
pub fn write_next(store: &ByteStoreBox, current: usize, next: &mut Header) -> Result<usize> {
    next.sequence_number = next.sequence_number.wrapping_add(1);
    let other = 1 - current;
    store.write_all_at(HEADER_OFFSETS[other], &next.to_bytes())?;
    store.sync()?;
    Ok(other)
}

/// Whether `head` starts with the file type identifier.
pub fn has_signature(head: &[u8]) -> bool {
    head.len() >= 8 && &head[..8] == FILE_SIGNATURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Header {
            sequence_number: 9,
            file_write_guid: [1; 16],
            data_write_guid: [2; 16],
            log_guid: [0; 16],
            log_version: 0,
            version: 1,
            log_length: 1 << 20,
            log_offset: 1 << 20,
        };
        assert_eq!(Header::parse(&h.to_bytes()), Some(h.clone()));
        let mut bad = h.to_bytes();
        bad[100] ^= 1;
        assert_eq!(Header::parse(&bad), None);
    }
}
