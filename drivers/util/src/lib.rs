//! Helpers shared by qimg's format drivers. Linked statically into each driver
//! library, so nothing here crosses the ABI.

use qimg_driver_api::abi_stable::std_types::{RSlice, RSliceMut};
use qimg_driver_api::{ByteStoreBox, DriverError};

/// Reads `buf.len()` bytes at `offset` of `store`, filling whatever lies past the
/// end of the store with zeros.
pub fn read_or_zero(store: &ByteStoreBox, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
    let mut done = 0usize;
    while done < buf.len() {
        let n = store
            .read_at(
                offset + done as u64,
                RSliceMut::from_mut_slice(&mut buf[done..]),
            )
            .into_result()?;
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n as usize;
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes at `offset`; running into the end of the
/// store is an error worded by `what`.
pub fn read_exact(
    store: &ByteStoreBox,
    offset: u64,
    buf: &mut [u8],
    what: &str,
) -> Result<(), DriverError> {
    let mut done = 0usize;
    while done < buf.len() {
        let n = store
            .read_at(
                offset + done as u64,
                RSliceMut::from_mut_slice(&mut buf[done..]),
            )
            .into_result()?;
        if n == 0 {
            return Err(DriverError::invalid_image(format!(
                "{what}: unexpected end of file at offset {}",
                offset + done as u64
            )));
        }
        done += n as usize;
    }
    Ok(())
}

/// Writes all of `buf` at `offset`.
pub fn write_all(store: &ByteStoreBox, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
    store
        .write_at(offset, RSlice::from_slice(buf))
        .into_result()
}

/// Checks that `[offset, offset+len)` lies inside an image of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), DriverError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DriverError::invalid_argument(format!(
            "Request out of range: offset {offset} length {len} beyond image size {size}"
        ))),
    }
}
