//! The parent image of a differencing disk (VHD, VHDX, VDI): found by the
//! driver, opened by the host as the disk's backing image.

use qimg_driver_api::{BackingBox, DriverError};

/// A differencing disk's parent.
pub struct Parent {
    /// Its file name, relative to the child's directory.
    pub name: String,
    /// The parent image, unless the chain was not opened
    /// (`open_flags::NO_BACKING`).
    image: Option<BackingBox>,
}

impl Parent {
    /// The parent `name`, opened as `image` (or not opened).
    pub fn new(name: String, image: Option<BackingBox>) -> Parent {
        Parent { name, image }
    }

    /// Reads guest bytes of the parent (zeros where it was not opened).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        match &self.image {
            Some(image) => image.read_at(offset, buf.into()).into_result(),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }
}
