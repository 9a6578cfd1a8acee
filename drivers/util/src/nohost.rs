//! Host services for unit tests: none at all, for single-file disks (the
//! in-memory file is [`crate::memfile`]).

use qimg_driver_api::abi_stable::sabi_trait::TD_Opaque;
use qimg_driver_api::abi_stable::std_types::{ROption, RResult, RStr, RString};
use qimg_driver_api::{
    BackingBox, ByteStoreBox, DriverError, HostServices, HostServicesBox, HostServices_TO,
};

struct NoHost;

impl HostServices for NoHost {
    fn open_related(
        &self,
        name: RStr<'_>,
        _writable: bool,
        _create: bool,
    ) -> RResult<ByteStoreBox, DriverError> {
        RResult::RErr(DriverError::from_errno(
            2,
            format!("Could not open '{name}': No such file or directory"),
        ))
    }
    fn open_backing(
        &self,
        name: RStr<'_>,
        _format: ROption<RStr<'_>>,
    ) -> RResult<BackingBox, DriverError> {
        RResult::RErr(DriverError::invalid_image(format!("no backing '{name}'")))
    }
    fn secret(&self, _id: RStr<'_>) -> RResult<RString, DriverError> {
        RResult::RErr(DriverError::invalid_argument("no secrets"))
    }
    fn warn(&self, _message: RStr<'_>) {}
    fn open_option(&self, _key: RStr<'_>) -> ROption<RString> {
        ROption::RNone
    }
}

/// Host services that offer nothing (for single-file disks).
pub fn no_host() -> HostServicesBox {
    HostServices_TO::from_value(NoHost, TD_Opaque)
}
