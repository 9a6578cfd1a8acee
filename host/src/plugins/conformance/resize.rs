//! The resize check: growing the test disk keeps its data, the new tail
//! reads as zeros, and both survive a reopen.

use super::invariants::{compare_whole, walk_status};
use super::outcome::{During, Failure, Outcome, Verdict};
use super::random::Rng;
use super::session::{Access, Session};
use super::size_rule::check_size;
use super::{MIB, SEED};
use crate::block::BlockImage;
use qimg_driver_api::{caps, Prealloc};

/// How much the resize check grows the disk by.
const GROW_BY: u64 = 5 * MIB + 1536;

impl Session {
    /// Grows the disk by an odd amount and checks data, tail and reopen.
    pub(super) fn resize_grows(&mut self) -> Outcome {
        if let Some(skip) = self.lacks(caps::RESIZE).or_else(|| self.lacks(caps::WRITE)) {
            return Ok(skip);
        }
        self.with_disk(true, |session, disk| {
            let old = disk.reference.len() as u64;
            let asked = old + GROW_BY;
            let image = session.open_named(&disk.path, Access::Resize)?;
            image
                .resize(asked, Prealloc::OFF, false)
                .during(format!("resize to {asked}"))?;
            let size = image.try_size().during("virtual size")?;
            check_size(asked, size, disk.granularity)?;
            let len = usize::try_from(size).map_err(|_| {
                Failure::Rule(format!("virtual size {size} does not fit in memory"))
            })?;
            disk.reference.resize(len, 0);
            compare_grown(&image, &disk.reference, old)?;
            // A write across the old end, then the status of the grown disk.
            let at = old.saturating_sub(777);
            let mut data = vec![0u8; 4321];
            Rng::new(SEED ^ old).fill(&mut data);
            image
                .write(at, &data)
                .during(format!("write {at:#x}+{}", data.len()))?;
            disk.reference[at as usize..at as usize + data.len()].copy_from_slice(&data);
            compare_whole(
                &image,
                &disk.reference,
                "grown disk after a write across the old end",
            )?;
            walk_status(&image, &disk.reference)?;
            image.close().during("close")?;
            drop(image);
            let image = session.open_named(&disk.path, Access::Read)?;
            let again = image.try_size().during("virtual size after reopen")?;
            if again != size {
                return Err(Failure::Rule(format!(
                    "virtual size {size} after resize, {again} after reopen"
                )));
            }
            compare_grown(&image, &disk.reference, old)?;
            image.close().during("close")?;
            Ok(Verdict::Pass)
        })
    }
}

/// [`compare_whole`] for a grown disk: a mismatch below `old` is lost data,
/// above it a tail that does not read as zeros.
fn compare_grown(image: &BlockImage, reference: &[u8], old: u64) -> Result<(), Failure> {
    compare_whole(image, reference, "grown disk").map_err(|failure| match failure {
        Failure::Mismatch {
            offset, got, want, ..
        } => Failure::Mismatch {
            what: if offset < old {
                "data before the old end changed".into()
            } else {
                "the new tail does not read as zeros".into()
            },
            offset,
            got,
            want,
        },
        other => other,
    })
}
