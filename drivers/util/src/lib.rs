//! Helpers shared by qimg's format drivers. Linked statically into each driver
//! library, so nothing here crosses the ABI.

mod buffer;
#[cfg(feature = "testutil")]
pub mod memfile;
#[cfg(feature = "testutil")]
pub mod nohost;
pub mod parent;
#[cfg(feature = "tls")]
pub mod tls;
pub mod winpath;
mod zero;

pub use buffer::{AlignedBuf, BUFFER_ALIGN};
use qimg_driver_api::schema::{CreateOption, OptionType};
use qimg_driver_api::{ByteStoreBox, DriverError, StoreExt};
pub use zero::is_zero;

/// A `-o` option of `create` or `amend` without a default: its name, type
/// and help text as qemu-img lists them.
pub fn option(name: &str, kind: OptionType, help: &str) -> CreateOption {
    option_with_default(name, kind, help, None)
}

/// A `-o` option whose default (shown by `-o help`) is `default`, if any.
pub fn option_with_default(
    name: &str,
    kind: OptionType,
    help: &str,
    default: Option<&str>,
) -> CreateOption {
    CreateOption {
        name: name.into(),
        kind,
        help: help.into(),
        default: default.map(String::from),
    }
}

/// Reads `buf.len()` bytes at `offset` of `store`, filling whatever lies past the
/// end of the store with zeros ([`StoreExt::read_or_zero_at`]).
pub fn read_or_zero(store: &ByteStoreBox, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
    store.read_or_zero_at(offset, buf)
}

/// Reads exactly `buf.len()` bytes at `offset`; running into the end of the
/// store is an error worded by `what` ([`StoreExt::read_exact_at`]).
pub fn read_exact(
    store: &ByteStoreBox,
    offset: u64,
    buf: &mut [u8],
    what: &str,
) -> Result<(), DriverError> {
    store.read_exact_at(offset, buf, what)
}

/// Writes all of `buf` at `offset` ([`StoreExt::write_all_at`]).
pub fn write_all(store: &ByteStoreBox, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
    store.write_all_at(offset, buf)
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
