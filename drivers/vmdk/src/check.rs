//! `check` as qemu-img checks a vmdk: every allocated grain must start
//! inside its extent file.

use crate::error::Result;
use crate::extent::Extent;
use crate::header::SECTOR;
use crate::sparse::GrainLoc;
use qimg_driver_api::schema::CheckReport;

/// Checks the grain tables of every sparse extent. The first grain that
/// points past the end of its file stops the check; it is reported as
/// qemu-img reports it (`ERROR: cluster offset for sector N points after
/// EOF`, the check then failing with "Invalid argument"), here as one
/// check error with that message.
pub fn check(extents: &[Extent]) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    for e in extents {
        let Some(sp) = e.sparse() else {
            continue;
        };
        let len = sp.store.len().into_result()?;
        for (grain, loc) in sp.allocated_grains()? {
            let host = match loc {
                GrainLoc::Data(h) | GrainLoc::Compressed(h) => h,
                _ => continue,
            };
            if host >= len {
                let sector = (e.start + grain * sp.grain_bytes()) / SECTOR;
                report.check_errors = 1;
                report.messages.push(format!(
                    "ERROR: cluster offset for sector {sector} points after EOF"
                ));
                return Ok(report);
            }
        }
    }
    Ok(report)
}
