//! The create checks: images of several sizes probe as the format and obey
//! the size rule, and the test disk the I/O checks share is made.

use super::disk::Disk;
use super::outcome::{During, Failure, Outcome, Verdict};
use super::session::{Access, Session};
use super::size_rule::{check_size, granularity};
use super::MIB;
use qimg_driver_api::{caps, ErrorKind};

/// Sizes the create checks ask for, with their names.
pub(super) const CREATE_SIZES: &[(u64, &str)] = &[
    (0, "0-byte"),
    (MIB, "1 MiB"),
    (MIB + 1000, "1 MiB + 1000 bytes"),
    (64 * MIB + 512, "64 MiB + 512 bytes"),
];
/// The asked size of the disk the I/O checks use (an odd number of sectors,
/// so the last cluster of most formats is partial).
pub(super) const DISK_SIZE: u64 = 32 * MIB + 1536;

impl Session {
    /// Creates an image of `size`, probes it and checks its size.
    pub(super) fn create_and_probe(&mut self, size: u64, label: &str) -> Outcome {
        if let Some(skip) = self.lacks(caps::CREATE) {
            return Ok(skip);
        }
        let path = self.scratch.path(&format!("create-{size}"))?;
        match self.create(&path, size) {
            Ok(()) => {}
            Err(e) if size == 0 && e.kind != ErrorKind::PANIC => {
                return Ok(Verdict::Skip(format!(
                    "driver refuses size 0: {}",
                    e.message
                )))
            }
            Err(e) => return Err(e).during(format!("create {label}")),
        }
        let image = match self.open(&path, None, Access::Read) {
            // qemu-img's vmdk makes an empty disk it cannot open.
            Err(e) if size == 0 && e.kind != ErrorKind::PANIC => {
                return Ok(Verdict::Skip(format!(
                    "driver does not open the 0-byte image it made: {}",
                    e.message
                )))
            }
            opened => opened.during("open without -f")?,
        };
        if image.format() != self.format {
            return Err(Failure::Rule(format!(
                "the new image probes as '{}'",
                image.format()
            )));
        }
        let got = image.try_size().during("virtual size")?;
        let granularity = granularity(&image)?;
        image.close().during("close")?;
        drop(image);
        check_size(size, got, granularity)?;
        if size == MIB {
            self.small = Some(path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
        Ok(Verdict::Pass)
    }

    /// Creates the test disk and learns its size, granularity and whether it
    /// takes random writes.
    pub(super) fn create_disk(&mut self) -> Outcome {
        if let Some(skip) = self.lacks(caps::CREATE) {
            return Ok(skip);
        }
        let path = self.scratch.path("disk")?;
        self.create(&path, DISK_SIZE).during("create")?;
        let image = self.open_named(&path, Access::Read)?;
        let size = image.try_size().during("virtual size")?;
        let granularity = granularity(&image)?;
        let info = image.info().during("info")?;
        image.close().during("close")?;
        drop(image);
        check_size(DISK_SIZE, size, granularity)?;
        let len = usize::try_from(size)
            .map_err(|_| Failure::Rule(format!("virtual size {size} does not fit in memory")))?;
        self.disk = Some(Disk {
            path,
            reference: vec![0; len],
            granularity,
            write_in_order: info.write_in_order,
            trusted: true,
        });
        Ok(Verdict::Pass)
    }
}
