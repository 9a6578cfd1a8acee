//! The UDIF trailer ("koly" block): the last 512 bytes of a dmg, which say
//! where the data fork, the resource fork and the XML property list are
//! and how many sectors the disk has (Apple's UDIF format, `UDIFResourceFile`).
//!
//! ```text
//! offset  size  field (big-endian)
//!      0     4  signature "koly"
//!   0x18     8  DataForkOffset
//!   0x28     8  RsrcForkOffset
//!   0x30     8  RsrcForkLength
//!   0xd8     8  XMLOffset
//!   0xe0     8  XMLLength
//!  0x1ec     8  SectorCount
//! ```

use crate::{invalid, DmgError};
use qimg_driver_api::{ByteStoreBox, DriverError, StoreExt};

/// The trailer's signature.
const KOLY: &[u8; 4] = b"koly";
/// The trailer's size.
const TRAILER_SIZE: u64 = 512;

/// Where the forks are, checked against the trailer's own offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Where the trailer starts.
    pub offset: u64,
    /// Where the data fork starts: mish data offsets count from here.
    pub data_fork: u64,
    /// The resource fork: offset and length (length 0: none).
    pub rsrc_fork: (u64, u64),
    /// The XML property list: offset and length (length 0: none).
    pub xml: (u64, u64),
    /// Guest size in sectors.
    pub sectors: u64,
}

/// The big-endian u64 at `at` of the file (zeros past its end).
fn be_u64(store: &ByteStoreBox, at: u64) -> Result<u64, DriverError> {
    let mut b = [0u8; 8];
    store.read_or_zero_at(at, &mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Finds the trailer. A dmg's length need not be a multiple of 512; the
/// trailer is looked for in the last 1023 bytes of the file rounded up to
/// whole sectors (the zeros past its end included), as qemu-img does.
pub fn find(store: &ByteStoreBox) -> Result<u64, DriverError> {
    let length = store.size()?.div_ceil(TRAILER_SIZE) * TRAILER_SIZE;
    if length < TRAILER_SIZE {
        return Err(DmgError::TooShort.into());
    }
    let start = length.saturating_sub(511 + 512);
    let mut window = vec![0u8; (length - start).min(515) as usize];
    store.read_or_zero_at(start, &mut window)?;
    window
        .windows(4)
        .position(|w| w == KOLY)
        .map(|i| start + i as u64)
        .ok_or_else(|| DmgError::NoTrailer.into())
}

impl Trailer {
    /// Finds and reads the trailer, checking that the forks it names lie
    /// before it.
    pub fn read(store: &ByteStoreBox) -> Result<Trailer, DriverError> {
        let offset = find(store)?;
        let data_fork = be_u64(store, offset + 0x18)?;
        if data_fork > offset {
            return Err(invalid(store));
        }
        let rsrc_fork = (be_u64(store, offset + 0x28)?, be_u64(store, offset + 0x30)?);
        let xml = (be_u64(store, offset + 0xd8)?, be_u64(store, offset + 0xe0)?);
        for (at, len) in [rsrc_fork, xml] {
            if at >= offset || len > offset - at {
                return Err(invalid(store));
            }
        }
        let sectors = be_u64(store, offset + 0x1ec)?;
        if sectors > i64::MAX as u64 {
            return Err(invalid(store));
        }
        Ok(Trailer {
            offset,
            data_fork,
            rsrc_fork,
            xml,
            sectors,
        })
    }
}
