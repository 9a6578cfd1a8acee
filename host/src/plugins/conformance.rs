//! `qimg --conformance FORMAT`: the checks a driver must pass (filled in next).

use crate::error::{CmdError, CmdResult};

/// Runs the conformance check on the driver of `format`.
pub fn run(format: &str) -> CmdResult {
    Err(CmdError::Failed(format!(
        "conformance check of '{format}' is not written yet"
    )))
}
