//! How a check ends: a [`Verdict`] when it passes or is skipped, a
//! [`Failure`] when it fails, and the helpers that turn driver errors into
//! failures.

use qimg_driver_api::{DriverError, ErrorKind};
use std::fmt;

/// How a check ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Every rule held.
    Pass,
    /// The check does not apply (missing capability, missing prerequisite,
    /// or an option the driver may legitimately refuse); the reason.
    Skip(String),
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    /// A driver call failed where it must work (or panicked).
    #[error("{op}: {error}")]
    Call {
        /// The operation, as the output names it.
        op: String,
        /// What the driver (or the host on its behalf) answered.
        error: DriverError,
    },
    /// Data read back differs from what was written.
    #[error("{what}: mismatch at offset {offset} (read {got:#04x}, expected {want:#04x})")]
    Mismatch {
        /// What was being compared.
        what: String,
        /// Guest offset of the first differing byte.
        offset: u64,
        /// The byte read.
        got: u8,
        /// The byte expected.
        want: u8,
    },
    /// A rule of the driver ABI was broken.
    #[error("{0}")]
    Rule(String),
    /// The check could not prepare its files.
    #[error("{what}: {error}")]
    Setup {
        /// What was being prepared.
        what: String,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// The outcome of one check.
pub(super) type Outcome = Result<Verdict, Failure>;

/// Names the operation a driver result belongs to, turning its error into a
/// [`Failure::Call`].
pub(super) trait During<T> {
    /// The value, or a failure naming `op`.
    fn during(self, op: impl fmt::Display) -> Result<T, Failure>;
}

impl<T> During<T> for Result<T, DriverError> {
    fn during(self, op: impl fmt::Display) -> Result<T, Failure> {
        self.map_err(|error| Failure::Call {
            op: op.to_string(),
            error,
        })
    }
}

/// Fails only if `result` is a driver panic; a plain error is an acceptable
/// answer to hostile input.
pub(super) fn no_panic<T>(
    result: Result<T, DriverError>,
    op: impl fmt::Display,
) -> Result<Option<T>, Failure> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) if error.kind == ErrorKind::PANIC => Err(Failure::Call {
            op: op.to_string(),
            error,
        }),
        Err(_) => Ok(None),
    }
}
