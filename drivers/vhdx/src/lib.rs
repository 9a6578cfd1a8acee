//! The VHDX format: Hyper-V's virtual hard disk v2, as [MS-VHDX] (version
//! 1.0) describes it and as qemu-img 10.0.2 reads and writes it.
//!
//! A VHDX starts with a header section (file identifier, two headers, two
//! region tables); the region table places the Block Allocation Table and
//! the metadata region, the headers place the log. Payload blocks hold the
//! guest's data; a BAT entry gives each block's state and file offset.
//! Dynamic and fixed disks are read and written. Beyond qemu-img, which
//! refuses them, differencing disks (Hyper-V checkpoints, `.avhdx`) are
//! read over their parent and written, and `create -b` makes one.

mod bat;
mod crc;
mod create;
mod error;
mod format;
mod header;
mod image;
mod locator;
mod log;
mod metadata;
mod parent;
mod region;

use qimg_driver_api::schema::{CreateOption, CreateRequest, MeasureRequest, MeasureResult};
use qimg_driver_api::{
    caps, ByteStoreBox, DriverError, DriverImpl, Extent, HostServicesBox, ImageImpl,
};

qimg_driver_api::export_drivers!(VhdxDriver);

/// The vhdx format driver.
pub struct VhdxDriver;

impl DriverImpl for VhdxDriver {
    fn name(&self) -> &str {
        "vhdx"
    }
    fn description(&self) -> &str {
        "Hyper-V virtual hard disk v2 (VHDX)"
    }
    fn capabilities(&self) -> u64 {
        caps::CREATE
            | caps::WRITE
            | caps::CHECK
            | caps::RESIZE
            | caps::MEASURE
            | caps::ZERO_INIT
            | caps::BACKING
    }
    fn probe(&self, head: &[u8], _filename: &str) -> i32 {
        if header::has_signature(head) {
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
        host: HostServicesBox,
        request: CreateRequest,
    ) -> Result<(), DriverError> {
        Ok(create::create(&store, &host, &request)?)
    }
    fn open(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        Ok(Box::new(image::VhdxImage::open(store, &host, flags)?))
    }
    fn measure(
        &self,
        request: MeasureRequest,
        allocated: &[Extent],
    ) -> Result<MeasureResult, DriverError> {
        Ok(create::measure(&request, allocated)?)
    }
}
