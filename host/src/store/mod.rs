//! Byte stores: the host's side of the protocol layer. A local file,
//! qemu's `null-co` device, or a store a protocol driver plugin opened.

pub mod ahead;
pub mod cache;
pub mod faults;
pub mod file;
pub mod null;
pub mod remote;
pub mod veil;

pub use cache::CacheMode;
pub use file::LocalFile;
pub use null::NullStore;

use qimg_driver_api::abi_stable::std_types::{RResult, RSlice, RSliceMut, RString};
use qimg_driver_api::{ByteStore, ByteStoreBox, DriverError, Prealloc, StoreRun};
use std::fs::File;

/// The store an image lives on.
pub enum Store {
    /// A local file (qemu's `file` protocol).
    File(LocalFile),
    /// A null device (qemu's `null-co` protocol).
    Null(NullStore),
    /// A store a protocol driver opened (`nbd`, `http`).
    Remote(RemoteStore),
}

/// A store a protocol driver plugin opened, with its protocol's name.
pub struct RemoteStore {
    /// The protocol driver's name (`nbd`).
    pub protocol: String,
    /// The name qemu gives the protocol node (its URL, or a `json:` object
    /// when options such as `username` are part of its identity).
    pub node_name: String,
    /// The store itself.
    pub store: ByteStoreBox,
}

impl Store {
    /// The protocol's name as qemu's `info` shows it (`protocol type:`).
    pub fn protocol(&self) -> &str {
        match self {
            Store::File(f) if f.is_device() => "host_device",
            Store::File(_) => "file",
            Store::Null(_) => "null-co",
            Store::Remote(r) => &r.protocol,
        }
    }
    /// The protocol node's name, as `info` prints it for the image's
    /// `file` child.
    pub fn node_name(&self) -> String {
        match self {
            Store::Remote(r) => r.node_name.clone(),
            store => store.name().into(),
        }
    }
    /// The local file, if the store is one (for locks and copy_file_range).
    pub fn file(&self) -> Option<&File> {
        match self {
            Store::File(f) => Some(f.file()),
            Store::Null(_) | Store::Remote(_) => None,
        }
    }
    /// Stops allocating the file's blocks ahead of its end (see
    /// [`ahead`]) whatever its driver said: compressed clusters are packed
    /// with gaps that must stay holes, so a compressed copy's target does
    /// not grow ahead.
    pub fn stop_growing_ahead(&self) {
        self.grow_densely(false);
    }
    /// Writes the first bytes of a new image that were veiled while it was
    /// written (see [`veil`]); nothing for a store without a veil.
    pub fn lift_veil(&self) -> Result<(), DriverError> {
        match self {
            Store::File(f) => f.lift_veil(),
            Store::Null(_) | Store::Remote(_) => Ok(()),
        }
    }
    /// Whether an image lock is held on the store.
    pub fn is_locked(&self) -> bool {
        matches!(self, Store::File(f) if f.is_locked())
    }
    /// Bytes the store occupies on disk.
    pub fn allocated(&self) -> Result<u64, DriverError> {
        self.allocated_size().into_result()
    }
    /// True for a null device without `read-zeroes`, whose blocks qemu
    /// reports as neither data nor zeros.
    pub fn reports_nothing(&self) -> bool {
        matches!(self, Store::Null(n) if n.reports_nothing())
    }
    fn inner(&self) -> &dyn ByteStore {
        match self {
            Store::File(f) => f,
            Store::Null(n) => n,
            Store::Remote(r) => &r.store,
        }
    }
}

impl ByteStore for Store {
    fn read_at(&self, offset: u64, buf: RSliceMut<'_, u8>) -> RResult<u64, DriverError> {
        self.inner().read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<(), DriverError> {
        self.inner().write_at(offset, buf)
    }
    fn len(&self) -> RResult<u64, DriverError> {
        self.inner().len()
    }
    fn set_len(&self, len: u64, prealloc: Prealloc) -> RResult<(), DriverError> {
        self.inner().set_len(len, prealloc)
    }
    fn flush(&self) -> RResult<(), DriverError> {
        self.inner().flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> RResult<(), DriverError> {
        self.inner().write_zeroes(offset, len, punch)
    }
    fn run_at(&self, offset: u64, max: u64) -> RResult<StoreRun, DriverError> {
        self.inner().run_at(offset, max)
    }
    fn allocated_size(&self) -> RResult<u64, DriverError> {
        self.inner().allocated_size()
    }
    fn name(&self) -> RString {
        self.inner().name()
    }
    fn grow_densely(&self, dense: bool) {
        self.inner().grow_densely(dense)
    }
}
