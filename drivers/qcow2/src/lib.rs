//! The qcow2 format (QEMU's docs/interop/qcow2.txt): versions 2 and 3, cluster
//! sizes 512 B to 2 MiB, refcount widths 1 to 64 bits, extended L2 entries,
//! zero clusters, zlib and zstd compressed clusters, external data files,
//! backing files, lazy refcounts; `check` and its repairs, internal
//! snapshots, persistent bitmaps and `amend`.
//!
//! Modules follow the format's parts: [`header`] (header and extensions),
//! [`layout`] (geometry, L2 entries), [`meta`] (tables, refcounts,
//! allocation, crash-safe write-back), [`image`] (open, read, status),
//! [`write`] (allocation and copy-on-write), [`create`], [`measure`],
//! [`info`], [`compress`], [`snapshot`], [`bitmaps`], [`check`] (`check`
//! and `check -r`, also what repairs a dirty image on open), [`amend`].

pub mod amend;
pub mod bitmaps;
pub mod cache;
pub mod check;
pub mod compress;
pub mod create;
pub mod crypt;
pub mod error;
pub mod header;
pub mod image;
pub mod info;
pub mod layout;
pub mod measure;
pub mod meta;
pub mod options;
pub mod overlap;
pub mod shadow;
pub mod snapshot;
pub mod write;

use image::Qcow2Image;
use qimg_driver_api::schema::{
    CheckReport, CheckRequest, CreateOption, CreateRequest, ImageInfo, MeasureRequest,
    MeasureResult, MetadataRequest,
};
use qimg_driver_api::{caps, ByteStoreBox, DriverError, DriverImpl, Extent, HostServicesBox};
use qimg_driver_api::{ImageImpl, Prealloc};

qimg_driver_api::export_drivers!(Qcow2Driver);

/// The qcow2 format driver.
pub struct Qcow2Driver;

impl DriverImpl for Qcow2Driver {
    fn name(&self) -> &str {
        "qcow2"
    }
    fn description(&self) -> &str {
        "QEMU copy-on-write image, version 2"
    }
    fn capabilities(&self) -> u64 {
        caps::CREATE
            | caps::WRITE
            | caps::BACKING
            | caps::RESIZE
            | caps::COMPRESSED_WRITES
            | caps::MEASURE
            | caps::ZERO_INIT
            | caps::CHECK
            | caps::SNAPSHOTS
            | caps::BITMAPS
            | caps::AMEND
    }
    fn probe(&self, head: &[u8], _filename: &str) -> i32 {
        // qemu takes the magic with version 2 or later as qcow2.
        match head {
            [0x51, 0x46, 0x49, 0xfb, a, b, c, d, ..]
                if u32::from_be_bytes([*a, *b, *c, *d]) >= 2 =>
            {
                100
            }
            _ => 0,
        }
    }
    fn create_options(&self) -> Vec<CreateOption> {
        create::options()
    }
    fn amend_options(&self) -> Vec<CreateOption> {
        amend::options()
    }
    fn create(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        request: CreateRequest,
    ) -> Result<(), DriverError> {
        Ok(create::create(store, host, &request)?)
    }
    fn open(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        Ok(Box::new(Qcow2Image::open(store, host, flags)?))
    }
    fn measure(
        &self,
        request: MeasureRequest,
        allocated: &[Extent],
    ) -> Result<MeasureResult, DriverError> {
        Ok(measure::measure(&request, allocated)?)
    }
}

impl ImageImpl for Qcow2Image {
    fn virtual_size(&self) -> u64 {
        self.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        Ok(self.read(offset, buf)?)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        Ok(self.write(offset, buf)?)
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> Result<(), DriverError> {
        Ok(Qcow2Image::write_zeroes(self, offset, len, flags)?)
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        Ok(Qcow2Image::block_status(self, offset, len)?)
    }
    fn flush(&self) -> Result<(), DriverError> {
        Ok(Qcow2Image::flush(self)?)
    }
    fn info(&self) -> Result<ImageInfo, DriverError> {
        Ok(Qcow2Image::info(self)?)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DriverError> {
        Ok(Qcow2Image::discard(self, offset, len)?)
    }
    fn store_name(&self, index: u32) -> String {
        Qcow2Image::store_name(self, index)
    }
    fn resize(&self, new_size: u64, prealloc: Prealloc, shrink: bool) -> Result<(), DriverError> {
        Ok(Qcow2Image::resize(self, new_size, prealloc, shrink)?)
    }
    fn write_compressed(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        Ok(Qcow2Image::write_compressed(self, offset, buf)?)
    }
    fn check(&self, request: CheckRequest) -> Result<CheckReport, DriverError> {
        Ok(Qcow2Image::check(self, request.repair)?)
    }
    fn metadata(&self, request: MetadataRequest) -> Result<serde_json::Value, DriverError> {
        match request {
            MetadataRequest::SnapshotCreate { name } => self.snapshot_create(&name)?,
            MetadataRequest::SnapshotApply { name } => self.snapshot_apply(&name)?,
            MetadataRequest::SnapshotDelete { name } => self.snapshot_delete(&name)?,
            MetadataRequest::SnapshotLoad { id, name } => {
                self.snapshot_load(id.as_deref(), name.as_deref())?
            }
            MetadataRequest::Bitmap {
                action,
                name,
                granularity,
                source,
                ranges,
            } => {
                return Ok(self.bitmap_op(
                    &action,
                    &name,
                    granularity,
                    source.as_deref(),
                    ranges.as_deref(),
                )?)
            }
            MetadataRequest::Amend { options, force } => return Ok(self.amend(&options, force)?),
        }
        Ok(serde_json::Value::Null)
    }
    fn set_backing(&self, name: Option<&str>, format: Option<&str>) -> Result<(), DriverError> {
        Ok(Qcow2Image::set_backing(self, name, format)?)
    }
    fn compress_cluster(&self, offset: u64, buf: &[u8]) -> Result<Vec<u8>, DriverError> {
        Ok(Qcow2Image::compress_cluster(self, offset, buf)?)
    }
    fn write_prepared(&self, offset: u64, data: &[u8]) -> Result<(), DriverError> {
        Ok(Qcow2Image::write_prepared(self, offset, data)?)
    }
    fn close(&self) -> Result<(), DriverError> {
        Ok(Qcow2Image::close(self)?)
    }
    fn reserve(&self, offset: u64, len: u64) -> Result<bool, DriverError> {
        Ok(Qcow2Image::reserve(self, offset, len)?)
    }
}
