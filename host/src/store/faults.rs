//! Fault injection for crash-consistency tests, in the spirit of QEMU's
//! blkdebug. `QIMG_FAULT=kill-after:N` kills the process with SIGKILL just
//! before its N+1-th change to an image file; `QIMG_FAULT=enospc-after:N`
//! makes every change from the N+1-th on fail with "No space left on
//! device". Changes are writes, zeroings, length changes and flushes. A test
//! walks N up from 0 to stop an operation at each of its steps in turn.

use qimg_driver_api::DriverError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// What `QIMG_FAULT` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill(u64),
    NoSpace(u64),
}

fn configured() -> Option<Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    *FAULT.get_or_init(|| parse(&std::env::var("QIMG_FAULT").ok()?))
}

fn parse(text: &str) -> Option<Fault> {
    let (what, n) = text.split_once(':')?;
    let n = n.parse().ok()?;
    match what {
        "kill-after" => Some(Fault::Kill(n)),
        "enospc-after" => Some(Fault::NoSpace(n)),
        _ => None,
    }
}

/// Called before every change to an image file: counts it and applies the
/// configured fault.
pub fn before_change() -> Result<(), DriverError> {
    static CHANGES: AtomicU64 = AtomicU64::new(0);
    let Some(fault) = configured() else {
        return Ok(());
    };
    let n = CHANGES.fetch_add(1, Ordering::SeqCst);
    match fault {
        Fault::Kill(after) if n >= after => {
            // SAFETY: kill(2) on our own pid has no memory effects.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("SIGKILL returned");
        }
        Fault::NoSpace(after) if n >= after => Err(DriverError::from_errno(
            libc::ENOSPC,
            "No space left on device",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse() {
        assert_eq!(parse("kill-after:3"), Some(Fault::Kill(3)));
        assert_eq!(parse("enospc-after:0"), Some(Fault::NoSpace(0)));
        assert_eq!(parse("kill-after:x"), None);
        assert_eq!(parse("other:1"), None);
    }
}
