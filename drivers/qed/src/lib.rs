//! The QED format (QEMU's docs/interop/qed_spec.rst): a header cluster, an
//! L1 table of L2 tables of data clusters, zero clusters, a backing file
//! (raw ones recorded as "never probe"), and the need-check flag with its
//! consistency check.
//!
//! Modules follow the spec: [`header`], [`tables`] (L1/L2 tables and their
//! crash-safe write-back), [`image`] (open, read, write, status),
//! [`check`], [`create`].

pub mod check;
pub mod create;
pub mod error;
pub mod header;
pub mod image;
pub mod tables;

use image::QedImage;
use qimg_driver_api::schema::{CheckReport, CheckRequest, CreateOption, CreateRequest, ImageInfo};
use qimg_driver_api::schema::{MeasureRequest, MeasureResult};
use qimg_driver_api::{caps, ByteStoreBox, DriverError, DriverImpl, Extent, HostServicesBox};
use qimg_driver_api::{open_flags, ImageImpl, Prealloc};

qimg_driver_api::export_drivers!(QedDriver);

/// The qed format driver.
pub struct QedDriver;

impl DriverImpl for QedDriver {
    fn name(&self) -> &str {
        "qed"
    }
    fn description(&self) -> &str {
        "QEMU enhanced disk image"
    }
    fn capabilities(&self) -> u64 {
        // MEASURE only to answer with qemu-img's refusal.
        caps::CREATE
            | caps::WRITE
            | caps::BACKING
            | caps::RESIZE
            | caps::CHECK
            | caps::ZERO_INIT
            | caps::MEASURE
    }
    fn probe(&self, head: &[u8], _filename: &str) -> i32 {
        // The magic alone, as QEMU probes.
        if head.starts_with(b"QED\0") {
            100
        } else {
            0
        }
    }
    fn create_options(&self) -> Vec<CreateOption> {
        create::options()
    }
    fn create(
        &self,
        store: ByteStoreBox,
        _host: HostServicesBox,
        request: CreateRequest,
    ) -> Result<(), DriverError> {
        Ok(create::create(&store, &request)?)
    }
    fn open(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        // Clusters are written whole: the file grows by appends without holes.
        if flags & open_flags::WRITE != 0 {
            store.grow_densely(true);
        }
        Ok(Box::new(QedImage::open(store, &host, flags)?))
    }
    fn measure(
        &self,
        _request: MeasureRequest,
        _allocated: &[Extent],
    ) -> Result<MeasureResult, DriverError> {
        Err(DriverError::unsupported(
            "Block driver 'qed' does not support size measurement",
        ))
    }
}

impl ImageImpl for QedImage {
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
        Ok(QedImage::write_zeroes(self, offset, len, flags)?)
    }
    fn reserve(&self, offset: u64, len: u64) -> Result<bool, DriverError> {
        Ok(self.reserve(offset, len)?)
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        Ok(self.status(offset, len)?)
    }
    fn flush(&self) -> Result<(), DriverError> {
        Ok(QedImage::flush(self)?)
    }
    fn info(&self) -> Result<ImageInfo, DriverError> {
        let (backing_filename, backing_format) = self.backing_names();
        Ok(ImageInfo {
            cluster_size: Some(self.lock().header.cluster_bytes()),
            // qemu-img reports QED images clean even with need-check set.
            dirty_flag: Some(false),
            backing_filename,
            backing_format,
            ..ImageInfo::default()
        })
    }
    fn store_name(&self, _index: u32) -> String {
        self.store.name().to_string()
    }
    fn resize(&self, new_size: u64, prealloc: Prealloc, _shrink: bool) -> Result<(), DriverError> {
        if prealloc != Prealloc::OFF {
            return Err(DriverError::unsupported(format!(
                "Unsupported preallocation mode '{}'",
                prealloc.name()
            )));
        }
        Ok(QedImage::resize(self, new_size)?)
    }
    fn check(&self, request: CheckRequest) -> Result<CheckReport, DriverError> {
        Ok(QedImage::check(self, request.repair)?)
    }
    fn set_backing(&self, name: Option<&str>, format: Option<&str>) -> Result<(), DriverError> {
        Ok(QedImage::set_backing(self, name, format)?)
    }
}
