//! The VMDK format: VMware's virtual disks, as VMware's "Virtual Disk Format
//! 1.1" and "5.0" technical notes describe them and as qemu-img 10.0.2 reads
//! and writes them.
//!
//! A disk is a descriptor (text) and one or more extents: flat files, sparse
//! extents (hosted `KDMV` versions 1 to 3, ESX Server `COWD`) or zero
//! extents. Monolithic sparse and stream-optimized disks keep the
//! descriptor inside their single sparse extent; the other subformats keep
//! it in a file of its own that names the extent files, which the driver
//! opens through the host. A disk may have a parent (`parentFileNameHint`),
//! opened as its backing image.

mod check;
mod create;
mod descriptor;
mod error;
mod extent;
mod header;
mod image;
mod inflate;
mod sparse;
mod stream;

use header::{magic, COWD_MAGIC, SPARSE_MAGIC};
use qimg_driver_api::schema::{CreateOption, CreateRequest, MeasureRequest, MeasureResult};
use qimg_driver_api::{
    caps, ByteStoreBox, DriverError, DriverImpl, Extent, HostServicesBox, ImageImpl,
};

qimg_driver_api::export_drivers!(VmdkDriver);

/// The vmdk format driver.
pub struct VmdkDriver;

impl DriverImpl for VmdkDriver {
    fn name(&self) -> &str {
        "vmdk"
    }
    fn description(&self) -> &str {
        "VMware virtual disk"
    }
    fn capabilities(&self) -> u64 {
        caps::CREATE
            | caps::WRITE
            | caps::BACKING
            | caps::CHECK
            | caps::RESIZE
            | caps::MEASURE
            | caps::ZERO_INIT
            | caps::COMPRESSED_WRITES
    }
    fn probe(&self, head: &[u8], _filename: &str) -> i32 {
        match magic(head) {
            Some(SPARSE_MAGIC | COWD_MAGIC) => 100,
            _ if descriptor::probe_text(head) => 100,
            _ => 0,
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
        Ok(create::create(store, host, request)?)
    }
    fn open(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        Ok(Box::new(image::VmdkImage::open(store, &host, flags)?))
    }
    fn measure(
        &self,
        request: MeasureRequest,
        allocated: &[Extent],
    ) -> Result<MeasureResult, DriverError> {
        Ok(create::measure(&request, allocated)?)
    }
}
