//! The VDI format: VirtualBox's virtual disk images, version 1.1 headers,
//! as qemu-img 10.0.2 reads and writes them.
//!
//! An image is a header (one sector), a block map (one 32-bit entry per
//! 1 MiB guest block) and data blocks. A dynamic image allocates blocks as
//! they are first written, in the order written; a static one maps every
//! block when it is created. Differencing images (VirtualBox snapshots)
//! open over the parent named by `backing.file.filename`, beyond qemu-img,
//! which refuses them.

mod blockmap;
mod check;
mod create;
mod error;
mod header;
mod image;

use qimg_driver_api::schema::{CreateOption, CreateRequest, MeasureRequest, MeasureResult};
use qimg_driver_api::{
    caps, open_flags, ByteStoreBox, DriverError, DriverImpl, Extent, HostServicesBox, ImageImpl,
};

qimg_driver_api::export_drivers!(VdiDriver);

/// The vdi format driver.
pub struct VdiDriver;

impl DriverImpl for VdiDriver {
    fn name(&self) -> &str {
        "vdi"
    }
    fn description(&self) -> &str {
        "VirtualBox disk image"
    }
    fn capabilities(&self) -> u64 {
        caps::CREATE | caps::WRITE | caps::CHECK | caps::RESIZE | caps::MEASURE | caps::ZERO_INIT
    }
    fn probe(&self, head: &[u8], _filename: &str) -> i32 {
        match head.get(0x40..0x44) {
            Some(sig) if sig == header::SIGNATURE.to_le_bytes() => 100,
            _ => 0,
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
        // Blocks are written whole: the file grows by appends without holes.
        if flags & open_flags::WRITE != 0 {
            store.grow_densely(true);
        }
        Ok(Box::new(image::VdiImage::open(store, &host, flags)?))
    }
    fn measure(
        &self,
        request: MeasureRequest,
        allocated: &[Extent],
    ) -> Result<MeasureResult, DriverError> {
        Ok(create::measure(&request, allocated)?)
    }
}
