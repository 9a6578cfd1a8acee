//! Stores of protocol driver plugins (`nbd://`, `http://`): finds the
//! driver, turns the image's name or options into the driver's options and
//! opens the store.

use super::RemoteStore;
use crate::block::spec::ImageSpec;
use crate::commands::registry;
use qimg_driver_api::abi_stable::std_types::RStr;
use qimg_driver_api::{proto_open, DriverError};

/// A protocol node opened: its store and the name qemu gives the node.
pub struct Opened {
    /// The store.
    pub store: RemoteStore,
    /// The node's canonical name (`nbd://host:port/export`).
    pub name: String,
}

/// Opens the store of protocol `driver` that `spec` names, for writing with
/// `write` (a read-only protocol's driver refuses that in its own words).
pub fn open(driver: &str, spec: &ImageSpec, write: bool) -> Result<Opened, DriverError> {
    let protocol = registry()
        .find_protocol(driver)
        .map_err(|e| DriverError::unsupported(e.to_string()))?;
    let options = match spec.remote_options() {
        Some(options) => options.to_string(),
        None => protocol
            .api
            .parse_filename(RStr::from(spec.path.as_str()))
            .into_result()?
            .into(),
    };
    let name = protocol
        .api
        .canonical_name(RStr::from(options.as_str()))
        .into_result()?
        .into();
    let flags = if write { proto_open::WRITE } else { 0 };
    let store = protocol
        .api
        .open(RStr::from(options.as_str()), flags)
        .into_result()?;
    Ok(Opened {
        store: RemoteStore {
            protocol: protocol.name.clone(),
            store,
        },
        name,
    })
}
