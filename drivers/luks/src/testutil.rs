//! An in-memory store and a host with one secret, for unit tests.

use qimg_driver_api::abi_stable::sabi_trait::TD_Opaque;
use qimg_driver_api::abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};
use qimg_driver_api::{
    BackingBox, ByteStore, ByteStoreBox, ByteStore_TO, DriverError, HostServices, HostServicesBox,
    HostServices_TO, Prealloc, StoreRun,
};
use std::sync::{Arc, Mutex};

/// A file held in memory, shared between the test and the driver.
#[derive(Clone, Default)]
pub struct MemFile(pub Arc<Mutex<Vec<u8>>>);

impl MemFile {
    /// A store on this file.
    pub fn store(&self) -> ByteStoreBox {
        ByteStore_TO::from_value(self.clone(), TD_Opaque)
    }
}

impl ByteStore for MemFile {
    fn read_at(&self, offset: u64, mut buf: RSliceMut<'_, u8>) -> RResult<u64, DriverError> {
        let data = self.0.lock().unwrap();
        let start = (offset as usize).min(data.len());
        let n = (data.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&data[start..start + n]);
        RResult::ROk(n as u64)
    }
    fn write_at(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<(), DriverError> {
        let mut data = self.0.lock().unwrap();
        let end = offset as usize + buf.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(&buf);
        RResult::ROk(())
    }
    fn len(&self) -> RResult<u64, DriverError> {
        RResult::ROk(self.0.lock().unwrap().len() as u64)
    }
    fn set_len(&self, len: u64, _prealloc: Prealloc) -> RResult<(), DriverError> {
        self.0.lock().unwrap().resize(len as usize, 0);
        RResult::ROk(())
    }
    fn flush(&self) -> RResult<(), DriverError> {
        RResult::ROk(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _punch: bool) -> RResult<(), DriverError> {
        self.write_at(offset, RSlice::from_slice(&vec![0u8; len as usize]))
    }
    fn run_at(&self, _offset: u64, max: u64) -> RResult<StoreRun, DriverError> {
        RResult::ROk(StoreRun {
            data: true,
            length: max,
        })
    }
    fn allocated_size(&self) -> RResult<u64, DriverError> {
        self.len()
    }
    fn name(&self) -> RString {
        "mem".into()
    }
}

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
