//! The Parallels format: the expanding disks of Parallels and Virtuozzo
//! (OpenVZ's ploop), as qemu-img 10.0.2 reads and writes them.
//!
//! An image is a 64-byte header, a block allocation table (BAT) of 32-bit
//! entries naming where each guest cluster lies in the file (0: nowhere,
//! reads as zeros), and the clusters themselves. Version 1 images
//! (`WithoutFreeSpace`) count BAT entries in sectors, version 2 images
//! (`WithouFreSpacExt`) in clusters; version 2 images may carry a format
//! extension cluster (dirty bitmaps), which is checked when an image is
//! opened read-only and otherwise ignored, as qemu-img does.

mod check;
mod create;
mod error;
mod ext;
mod header;
mod image;
mod resize;
mod used;

use qimg_driver_api::schema::{CreateOption, CreateRequest, MeasureRequest, MeasureResult};
use qimg_driver_api::{
    caps, ByteStoreBox, DriverError, DriverImpl, Extent, HostServicesBox, ImageImpl,
};

qimg_driver_api::export_drivers!(ParallelsDriver);

/// The parallels format driver.
pub struct ParallelsDriver;

impl DriverImpl for ParallelsDriver {
    fn name(&self) -> &str {
        "parallels"
    }
    fn description(&self) -> &str {
        "Parallels / Virtuozzo expanding disk"
    }
    fn capabilities(&self) -> u64 {
        caps::CREATE | caps::WRITE | caps::CHECK | caps::RESIZE | caps::MEASURE | caps::ZERO_INIT
    }
    fn probe(&self, head: &[u8], _filename: &str) -> i32 {
        if header::probe(head) {
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
        Ok(Box::new(image::ParallelsImage::open(store, &host, flags)?))
    }
    fn measure(
        &self,
        request: MeasureRequest,
        allocated: &[Extent],
    ) -> Result<MeasureResult, DriverError> {
        Ok(create::measure(&request, allocated)?)
    }
}
