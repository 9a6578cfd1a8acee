//! qimg driver for Apple disk images (dmg), read-only: in progress.

use qimg_driver_api::schema::{CreateOption, CreateRequest};
use qimg_driver_api::{ByteStoreBox, DriverError, DriverImpl, HostServicesBox, ImageImpl};

qimg_driver_api::export_drivers!(DmgDriver);

/// The dmg format driver.
pub struct DmgDriver;

impl DriverImpl for DmgDriver {
    fn name(&self) -> &str {
        "dmg"
    }
    fn description(&self) -> &str {
        "Apple disk image (read-only)"
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
        _: ByteStoreBox,
        _: HostServicesBox,
        _: CreateRequest,
    ) -> Result<(), DriverError> {
        Err(DriverError::unsupported(
            "Format driver 'dmg' does not support image creation",
        ))
    }
    fn open(
        &self,
        _: ByteStoreBox,
        _: HostServicesBox,
        _: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        Err(DriverError::unsupported("dmg: not yet"))
    }
}
