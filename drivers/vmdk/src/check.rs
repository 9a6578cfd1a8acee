//! `check` as qemu-img checks a vmdk: every flat extent and every
//! allocated grain must start inside its extent file.

use crate::error::Result;
use crate::extent::{Extent, ExtentData};
use crate::header::SECTOR;
use crate::sparse::GrainLoc;
use qimg_driver_api::schema::CheckReport;

/// Checks every extent as qemu-img does: a flat extent must start inside
/// its file, and every allocated grain of a sparse one must too. The first
/// that does not stops the check; it is reported as qemu-img reports it
/// (`ERROR: cluster offset for sector N points after EOF`, the check then
/// failing with "Invalid argument"), here as one check error with that
/// message.
pub fn check(extents: &[Extent]) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    for e in extents {
        let bad = match &e.data {
            ExtentData::Flat { offset } => {
                let Some(store) = &e.store else {
                    continue;
                };
                (*offset >= store.len().into_result()?).then_some(e.start / SECTOR)
            }
            ExtentData::Sparse(sp) => {
                let len = sp.store.len().into_result()?;
                let mut bad = None;
                sp.for_each_allocated(|grain, loc| match loc {
                    GrainLoc::Data(host) | GrainLoc::Compressed(host) if host >= len => {
                        bad = Some(grain);
                        false
                    }
                    _ => true,
                })?;
                bad.map(|grain| (e.start + grain * sp.grain_bytes()) / SECTOR)
            }
            ExtentData::Zero => None,
        };
        if let Some(sector) = bad {
            report.check_errors = 1;
            report.messages.push(format!(
                "ERROR: cluster offset for sector {sector} points after EOF"
            ));
            report.failure = Some("Invalid argument".into());
            return Ok(report);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use crate::image::VmdkImage;
    use qimg_driver_api::schema::{CheckRequest, CreateRequest};
    use qimg_driver_api::{open_flags, ImageImpl};
    use qimg_driver_util::memfile::MemFile;
    use qimg_driver_util::nohost::no_host;

    fn disk() -> MemFile {
        let file = MemFile::default();
        let request = CreateRequest {
            size: 4 << 20,
            ..CreateRequest::default()
        };
        crate::create::create(file.store("t.vmdk"), no_host(), request).unwrap();
        let image = VmdkImage::open(file.store("t.vmdk"), &no_host(), open_flags::WRITE).unwrap();
        image.write_at(0, &[1u8; 65536]).unwrap();
        image.write_at(1 << 20, &[2u8; 65536]).unwrap();
        image.close().unwrap();
        file
    }

    #[test]
    fn a_good_disk_checks_clean() {
        let file = disk();
        let image = VmdkImage::open(file.store("t.vmdk"), &no_host(), 0).unwrap();
        let report = image.check(CheckRequest::default()).unwrap();
        assert_eq!(report.check_errors, 0);
        assert!(report.messages.is_empty());
    }

    #[test]
    fn a_grain_past_the_end_is_reported_as_qemu_img_does() {
        let file = disk();
        let len = file.bytes().len();
        file.truncate(len - 65536);
        let image = VmdkImage::open(file.store("t.vmdk"), &no_host(), 0).unwrap();
        let report = image.check(CheckRequest::default()).unwrap();
        assert_eq!(report.check_errors, 1);
        assert_eq!(
            report.messages,
            vec!["ERROR: cluster offset for sector 2048 points after EOF".to_string()]
        );
    }
}
