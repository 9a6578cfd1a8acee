//! A driver that would be fine but for its `panic = "abort"` profile.

use qimg_driver_api::schema::{CreateOption, CreateRequest};
use qimg_driver_api::{ByteStoreBox, DriverError, DriverImpl, HostServicesBox, ImageImpl};

qimg_driver_api::export_drivers!(Aborting);

/// The driver.
pub struct Aborting;

impl DriverImpl for Aborting {
    fn name(&self) -> &str {
        "aborting"
    }
    fn description(&self) -> &str {
        "built with panic = abort"
    }
    fn capabilities(&self) -> u64 {
        0
    }
    fn probe(&self, _head: &[u8], _filename: &str) -> i32 {
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
        Err(DriverError::unsupported("no"))
    }
    fn open(
        &self,
        _store: ByteStoreBox,
        _host: HostServicesBox,
        _flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        Err(DriverError::unsupported("no"))
    }
}
