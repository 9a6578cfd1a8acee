//! A host with one secret, for unit tests (the in-memory file is
//! `qimg_driver_util::memfile`).

use qimg_driver_api::abi_stable::sabi_trait::TD_Opaque;
use qimg_driver_api::abi_stable::std_types::{ROption, RResult, RStr, RString};
use qimg_driver_api::{
    BackingBox, ByteStoreBox, DriverError, HostServices, HostServicesBox, HostServices_TO,
};

/// A host whose only secret is `sec0` = `password`, and whose open options
/// say `key-secret=sec0` when `keyed`.
struct OneSecret {
    password: String,
    keyed: bool,
}

impl HostServices for OneSecret {
    fn open_related(
        &self,
        name: RStr<'_>,
        _w: bool,
        _c: bool,
    ) -> RResult<ByteStoreBox, DriverError> {
        RResult::RErr(DriverError::from_errno(2, format!("no file '{name}'")))
    }
    fn open_backing(
        &self,
        name: RStr<'_>,
        _format: ROption<RStr<'_>>,
    ) -> RResult<BackingBox, DriverError> {
        RResult::RErr(DriverError::invalid_image(format!("no backing '{name}'")))
    }
    fn secret(&self, id: RStr<'_>) -> RResult<RString, DriverError> {
        if id.as_str() == "sec0" {
            RResult::ROk(self.password.as_str().into())
        } else {
            RResult::RErr(DriverError::invalid_argument(format!(
                "No secret with id '{id}'"
            )))
        }
    }
    fn warn(&self, _message: RStr<'_>) {}
    fn open_option(&self, key: RStr<'_>) -> ROption<RString> {
        match key.as_str() {
            "key-secret" if self.keyed => ROption::RSome("sec0".into()),
            _ => ROption::RNone,
        }
    }
}

/// A host with secret `sec0` = `password`, passing `key-secret=sec0` at
/// open when `keyed`.
pub fn host(password: &str, keyed: bool) -> HostServicesBox {
    HostServices_TO::from_value(
        OneSecret {
            password: password.into(),
            keyed,
        },
        TD_Opaque,
    )
}
