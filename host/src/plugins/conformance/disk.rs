//! The test disk the I/O checks share, [`Disk`], and how a check borrows
//! it from the session.

use super::outcome::{Outcome, Verdict};
use super::session::Session;
use qimg_driver_api::caps;

/// The disk the I/O checks share, with what it must hold.
pub(super) struct Disk {
    /// Its file.
    pub(super) path: String,
    /// Every guest byte it must read as (its length is the virtual size).
    pub(super) reference: Vec<u8>,
    /// The granularity of the size rule (and the cluster boundaries that
    /// random requests straddle).
    pub(super) granularity: u64,
    /// The image must be written in ascending order (no random writes).
    pub(super) write_in_order: bool,
    /// The reference is known to match the image (false once an I/O check
    /// failed part-way: later comparisons would only repeat that failure).
    pub(super) trusted: bool,
}

impl Session {
    /// The test disk, or the skip reason when an earlier check could not
    /// make it (or left its reference in doubt, with `trusted`).
    pub(super) fn disk(&self, trusted: bool) -> Result<&Disk, Verdict> {
        match &self.disk {
            None => Err(self
                .lacks(caps::CREATE)
                .unwrap_or_else(|| Verdict::Skip("needs the test disk".into()))),
            Some(disk) if trusted && !disk.trusted => Err(Verdict::Skip(
                "an earlier I/O check failed, the reference is in doubt".into(),
            )),
            Some(disk) => Ok(disk),
        }
    }

    /// Runs `body` on the test disk (skipping without it, or when
    /// `trusted` is asked and the reference is in doubt). A failure leaves
    /// the reference in doubt: the image may hold what a failed call left.
    pub(super) fn with_disk(
        &mut self,
        trusted: bool,
        body: impl FnOnce(&Self, &mut Disk) -> Outcome,
    ) -> Outcome {
        if let Err(skip) = self.disk(trusted) {
            return Ok(skip);
        }
        let Some(mut disk) = self.disk.take() else {
            return Ok(Verdict::Skip("needs the test disk".into()));
        };
        let outcome = body(self, &mut disk);
        if outcome.is_err() {
            disk.trusted = false;
        }
        self.disk = Some(disk);
        outcome
    }
}
