//! The VHD format ("vpc" to qemu-img): Microsoft's Virtual PC and Hyper-V
//! disks, as the "Virtual Hard Disk Image Format Specification" (version
//! 1.0, 2006) describes them and as qemu-img 10.0.2 reads and writes them.
//!
//! A fixed disk is the guest's bytes followed by a 512-byte footer; a
//! dynamic disk keeps a copy of the footer at its start, then a dynamic
//! disk header, a Block Allocation Table and the blocks allocated so far,
//! each a sector bitmap followed by the block's data. Differencing disks
//! (Hyper-V checkpoints, `.avhd`) are read over their parent, found through
//! the header's parent locators: beyond qemu-img, which reads them as
//! dynamic disks without a parent.

mod bat;
mod create;
mod error;
mod footer;
mod header;
mod image;
mod parent;

use footer::has_cookie;
use qimg_driver_api::schema::{CreateOption, CreateRequest, MeasureRequest, MeasureResult};
use qimg_driver_api::{
    caps, ByteStoreBox, DriverError, DriverImpl, Extent, HostServicesBox, ImageImpl,
};

qimg_driver_api::export_drivers!(VpcDriver);

/// The vpc format driver.
pub struct VpcDriver;

impl DriverImpl for VpcDriver {
    fn name(&self) -> &str {
        "vpc"
    }
    fn description(&self) -> &str {
        "Virtual PC / Hyper-V virtual hard disk (VHD)"
    }
    fn capabilities(&self) -> u64 {
        caps::CREATE | caps::WRITE | caps::RESIZE | caps::MEASURE | caps::ZERO_INIT
    }
    fn probe(&self, head: &[u8], _filename: &str) -> i32 {
        // Only a footer copy at the start counts, as in QEMU: a fixed disk
        // (footer at the end only) probes as raw.
        if has_cookie(head) {
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
        Ok(Box::new(image::VpcImage::open(store, &host, flags)?))
    }
    fn measure(
        &self,
        request: MeasureRequest,
        allocated: &[Extent],
    ) -> Result<MeasureResult, DriverError> {
        Ok(create::measure(&request, allocated)?)
    }
}
