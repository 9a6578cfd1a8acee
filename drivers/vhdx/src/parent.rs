//! The parent of a differencing disk, beyond qemu-img (which refuses such
//! disks): found through the locator's paths beside the child, and accepted
//! only if its header's DataWriteGuid is one the locator names, so a parent
//! changed since the child was made is never read under it.

use crate::error::{Result, VhdxError};
use crate::header;
use crate::locator::Locator;
use qimg_driver_api::{open_flags, HostExt, HostServicesBox};
use qimg_driver_util::parent::Parent;

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
        return Ok(Parent::new(first.clone(), None));
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
        let (found, _) =
            header::read_current(&store).map_err(|_| VhdxError::ParentMismatch(name.clone()))?;
        if !linkages.contains(&found.data_write_guid) {
            return Err(VhdxError::ParentMismatch(name.clone()));
        }
        let image = host.backing(name, Some("vhdx"))?;
        return Ok(Parent::new(name.clone(), Some(image)));
    }
    Err(first_error.map_or(VhdxError::NoParentName, VhdxError::Host))
}
