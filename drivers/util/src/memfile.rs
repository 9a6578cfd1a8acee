//! A file held in memory behind a [`ByteStore`], for drivers' unit tests
//! (the `testutil` feature; drivers take it as a dev-dependency only).

use qimg_driver_api::abi_stable::sabi_trait::TD_Opaque;
use qimg_driver_api::abi_stable::std_types::{RResult, RSlice, RSliceMut, RString};
use qimg_driver_api::{ByteStore, ByteStoreBox, ByteStore_TO, DriverError, Prealloc, StoreRun};
use std::sync::{Arc, Mutex};

/// A file held in memory, shared between the test and the driver.
#[derive(Clone, Default)]
pub struct MemFile(pub Arc<Mutex<Vec<u8>>>);

impl MemFile {
    /// A store on this file, named `name`.
    pub fn store(&self, name: &str) -> ByteStoreBox {
        ByteStore_TO::from_value(MemStore(self.clone(), name.to_string()), TD_Opaque)
    }
    /// The file's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
    /// Cuts the file to `len` bytes.
    pub fn truncate(&self, len: usize) {
        self.0.lock().unwrap().truncate(len);
    }
}

struct MemStore(MemFile, String);

impl ByteStore for MemStore {
    fn read_at(&self, offset: u64, mut buf: RSliceMut<'_, u8>) -> RResult<u64, DriverError> {
        let data = self.0 .0.lock().unwrap();
        let start = (offset as usize).min(data.len());
        let n = (data.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&data[start..start + n]);
        RResult::ROk(n as u64)
    }
    fn write_at(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<(), DriverError> {
        let mut data = self.0 .0.lock().unwrap();
        let end = offset as usize + buf.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(&buf);
        RResult::ROk(())
    }
    fn len(&self) -> RResult<u64, DriverError> {
        RResult::ROk(self.0 .0.lock().unwrap().len() as u64)
    }
    fn set_len(&self, len: u64, _prealloc: Prealloc) -> RResult<(), DriverError> {
        self.0 .0.lock().unwrap().resize(len as usize, 0);
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
        self.1.as_str().into()
    }
}
