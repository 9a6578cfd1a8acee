//! Where the blkx tables are stored: the classic resource fork, or the XML
//! property list of newer images, whose `<data>` elements hold them in
//! base64.
//!
//! Every size here is bounded by the file: a fork lies before the trailer,
//! a resource inside its fork, and the property list is read whole only up
//! to [`MAX_XML`].

use crate::invalid;
use crate::mish::Chunks;
use qimg_driver_api::{ByteStoreBox, DriverError, StoreExt};

/// Largest property list read (16 MiB; real ones are about 1 MiB).
pub const MAX_XML: u64 = 16 << 20;

/// The big-endian u32 at `at` of the file (zeros past its end).
fn be_u32(store: &ByteStoreBox, at: u64) -> Result<u32, DriverError> {
    let mut b = [0u8; 4];
    store.read_or_zero_at(at, &mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Reads the tables of the resource fork at `begin` (`length` bytes): the
/// resource data area, where each resource is a big-endian u32 length and
/// that many bytes (the resource map after it is not needed). A resource
/// must lie inside the file: none is allocated larger than the file.
pub fn read_resource_fork(
    store: &ByteStoreBox,
    chunks: &mut Chunks,
    data_fork: u64,
    (begin, length): (u64, u64),
) -> Result<(), DriverError> {
    let data_offset = be_u32(store, begin)?;
    if u64::from(data_offset) > length {
        return Err(invalid(store));
    }
    let data_length = be_u32(store, begin + 8)?;
    // The sum is a 32-bit one in the format's readers.
    if data_length == 0 || u64::from(data_offset.wrapping_add(data_length)) > length {
        return Err(invalid(store));
    }
    let file_len = store.size()?;
    let mut at = begin + u64::from(data_offset);
    let end = at + u64::from(data_length);
    while at < end {
        let size = be_u32(store, at)?;
        if size == 0 || u64::from(size) > end - at {
            return Err(invalid(store));
        }
        at += 4;
        // The data area's size is a 32-bit sum that may wrap past the fork;
        // a resource is read only if the file holds it.
        if at + u64::from(size) > file_len {
            return Err(invalid(store));
        }
        let mut resource = vec![0u8; size as usize];
        store.read_or_zero_at(at, &mut resource)?;
        chunks.add_table(&resource, data_fork)?;
        at += u64::from(size);
    }
    Ok(())
}

/// Reads the tables of the XML property list at `begin` (`length` bytes):
/// the base64 text of every `<data>` element, in order (the text stops at
/// a NUL byte, as a C string does).
pub fn read_xml(
    store: &ByteStoreBox,
    chunks: &mut Chunks,
    data_fork: u64,
    (begin, length): (u64, u64),
) -> Result<(), DriverError> {
    if length == 0 || length > MAX_XML {
        return Err(invalid(store));
    }
    let mut xml = vec![0u8; length as usize];
    store.read_or_zero_at(begin, &mut xml)?;
    if let Some(nul) = xml.iter().position(|&b| b == 0) {
        xml.truncate(nul);
    }
    let mut rest = &xml[..];
    while let Some(open) = find(rest, b"<data>") {
        rest = &rest[open + 6..];
        let close = find(rest, b"</data>").ok_or_else(|| invalid(store))?;
        chunks.add_table(&base64_decode(&rest[..close]), data_fork)?;
        rest = &rest[close + 7..];
    }
    Ok(())
}

/// The first position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes base64 text (RFC 4648), skipping what is not in its alphabet
/// (the tabs and newlines of a property list) and dropping the bytes that
/// `=` padding stands for.
pub fn base64_decode(text: &[u8]) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => 0,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut group, mut filled, mut pad) = (0u32, 0, 0usize);
    for &c in text {
        let Some(v) = value(c) else { continue };
        if c == b'=' {
            pad += 1;
        }
        group = group << 6 | v;
        filled += 1;
        if filled == 4 {
            out.extend_from_slice(&group.to_be_bytes()[1..]);
            group = 0;
            filled = 0;
        }
    }
    out.truncate(out.len().saturating_sub(pad.min(2)));
    out
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64_skips_whitespace_and_padding() {
        assert_eq!(base64_decode(b"bWlz\n\taA=="), b"mish");
        assert_eq!(base64_decode(b"bWlzaA"), b"mis");
        assert_eq!(base64_decode(b""), b"");
        assert_eq!(base64_decode(b"!!!!"), b"");
    }
}
