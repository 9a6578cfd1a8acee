//! qemu's `null-co` protocol as a [`ByteStore`]: a device of a given size
//! that reads as zeros and discards what is written to it, for tests and
//! benchmarks that must not touch a disk.

use qimg_driver_api::abi_stable::std_types::{RResult, RSlice, RSliceMut, RString};
use qimg_driver_api::{DriverError, Prealloc, StoreRun};

/// Size of a null device whose options name none (qemu's default).
pub const DEFAULT_SIZE: u64 = 1 << 30;

/// An open null device.
pub struct NullStore {
    size: u64,
    read_zeroes: bool,
    name: String,
}

impl NullStore {
    /// A device of `size` bytes (rounded up to whole sectors, as qemu's
    /// block layer sees it), named `name` in messages and `info`.
    /// `read_zeroes` is qemu's option of that name: without it the device
    /// says nothing about its blocks, with it they are zero blocks.
    pub fn new(size: u64, read_zeroes: bool, name: &str) -> NullStore {
        NullStore {
            size: size.div_ceil(512).saturating_mul(512),
            read_zeroes,
            name: name.to_string(),
        }
    }

    /// True unless `read-zeroes` was given: qemu reports such a device's
    /// blocks as neither data nor zeros.
    pub fn reports_nothing(&self) -> bool {
        !self.read_zeroes
    }
}

impl qimg_driver_api::ByteStore for NullStore {
    fn read_at(&self, offset: u64, mut buf: RSliceMut<'_, u8>) -> RResult<u64, DriverError> {
        let n = (buf.len() as u64).min(self.size.saturating_sub(offset)) as usize;
        buf.as_mut_slice()[..n].fill(0);
        RResult::ROk(n as u64)
    }
    fn write_at(&self, _offset: u64, _buf: RSlice<'_, u8>) -> RResult<(), DriverError> {
        RResult::ROk(())
    }
    fn len(&self) -> RResult<u64, DriverError> {
        RResult::ROk(self.size)
    }
    fn set_len(&self, _len: u64, _prealloc: Prealloc) -> RResult<(), DriverError> {
        RResult::RErr(DriverError::unsupported(
            "Image format driver does not support resize",
        ))
    }
    fn flush(&self) -> RResult<(), DriverError> {
        RResult::ROk(())
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _punch: bool) -> RResult<(), DriverError> {
        RResult::ROk(())
    }
    fn run_at(&self, offset: u64, max: u64) -> RResult<StoreRun, DriverError> {
        RResult::ROk(StoreRun {
            data: false,
            length: max.min(self.size.saturating_sub(offset)),
        })
    }
    fn allocated_size(&self) -> RResult<u64, DriverError> {
        RResult::ROk(0)
    }
    fn name(&self) -> RString {
        RString::from(self.name.as_str())
    }
}
