//! The parent of a differencing disk, beyond qemu-img (which refuses such
//! disks): found through the locator's paths beside the child, and accepted
//! only if its header's DataWriteGuid is one the locator names, so a parent
//! changed since the child was made is never read under it.

use crate::error::{Result, VhdxError};
use crate::header;
use crate::locator::Locator;
use qimg_driver_api::{open_flags, BackingBox, HostExt, HostServicesBox};

/// A differencing disk's parent.
pub struct Parent {
    /// Its file name, relative to the child's directory.
    pub name: String,
    /// The parent image, unless the chain was not opened.
    image: Option<BackingBox>,
}

impl Parent {
    /// Finds and opens the parent `locator` names (only finds it with
    /// `open_flags::NO_BACKING` in `flags`).
    pub fn open(host: &HostServicesBox, locator: &Locator, flags: u32) -> Result<Parent> {
        let names = locator.candidates();
        let Some(first) = names.first() else {
            return Err(VhdxError::NoParentName);
        };
        let linkages = locator.linkages();
        if linkages.is_empty() {
            return Err(VhdxError::NoParentName);
        }
        if flags & open_flags::NO_BACKING != 0 {
            return Ok(Parent {
                name: first.clone(),
                image: None,
            });
        }
        let mut first_error = None;
        for name in &names {
            let store = match host.related(name, false, false) {
                Ok(store) => store,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            let (found, _) = header::read_current(&store)
                .map_err(|_| VhdxError::ParentMismatch(name.clone()))?;
            if !linkages.contains(&found.data_write_guid) {
                return Err(VhdxError::ParentMismatch(name.clone()));
            }
            return Ok(Parent {
                image: Some(host.backing(name, Some("vhdx"))?),
                name: name.clone(),
            });
        }
        Err(first_error.map_or(VhdxError::NoParentName, VhdxError::Host))
    }

    /// Reads guest bytes of the parent (zeros where there is none).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match &self.image {
            Some(image) => Ok(image.read_at(offset, buf.into()).into_result()?),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }
}
