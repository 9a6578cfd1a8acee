//! Test fixture: a format driver ("panicky") whose create and open panic, and
//! whose images panic on read. The host must turn each panic into an error.
//! Built as `libtestdrv_panicky.so`, a name qimg never loads unless a manifest
//! lists it.

use qimg_driver_api::schema::{CreateOption, CreateRequest, ImageInfo};
use qimg_driver_api::{
    caps, ByteStoreBox, DriverError, DriverImpl, Extent, HostServicesBox, ImageImpl,
};

qimg_driver_api::export_drivers!(Panicky);

/// The panicking driver.
pub struct Panicky;

impl DriverImpl for Panicky {
    fn name(&self) -> &str {
        "panicky"
    }
    fn description(&self) -> &str {
        "panics on purpose"
    }
    fn capabilities(&self) -> u64 {
        caps::CREATE
    }
    fn probe(&self, _head: &[u8], filename: &str) -> i32 {
        if filename.ends_with(".panic") {
            panic!("probe panicked on {filename}");
        }
        0
    }
    fn create_options(&self) -> Vec<CreateOption> {
        Vec::new()
    }
    fn create(
        &self,
        _store: ByteStoreBox,
        _host: HostServicesBox,
        _request: CreateRequest,
    ) -> Result<(), DriverError> {
        panic!("create panicked");
    }
    fn open(
        &self,
        _store: ByteStoreBox,
        _host: HostServicesBox,
        flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        if flags & qimg_driver_api::open_flags::WRITE != 0 {
            panic!("open panicked");
        }
        Ok(Box::new(PanickyImage))
    }
}

struct PanickyImage;

impl ImageImpl for PanickyImage {
    fn virtual_size(&self) -> u64 {
        1 << 20
    }
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> Result<(), DriverError> {
        panic!("read panicked");
    }
    fn write_at(&self, _offset: u64, _buf: &[u8]) -> Result<(), DriverError> {
        panic!("write panicked");
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _flags: u32) -> Result<(), DriverError> {
        panic!("write_zeroes panicked");
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        Ok(vec![Extent {
            offset,
            length: len,
            flags: qimg_driver_api::extent_flags::DATA | qimg_driver_api::extent_flags::ALLOCATED,
            store: 0,
            host_offset: 0,
        }])
    }
    fn flush(&self) -> Result<(), DriverError> {
        Ok(())
    }
    fn info(&self) -> Result<ImageInfo, DriverError> {
        panic!("info panicked");
    }
}
