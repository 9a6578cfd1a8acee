//! `qimg --conformance FORMAT`: the checks a format driver must pass.
//!
//! A vendor lists its library in a manifest and runs
//! `qimg --plugins M --conformance FORMAT`. Every check goes through the
//! host's own block layer (`create_image`, `open_image`,
//! [`BlockImage`](crate::block::BlockImage)), so
//! the driver is exercised exactly as `create`, `convert` or `map` exercise
//! it: through the ABI, under image locks, with panics caught at the
//! boundary. The work happens in a fresh directory under the system's
//! temporary directory, removed afterwards.
//!
//! Output is TAP-like: one line per check (`ok 3 - create 1 MiB image`,
//! `not ok 9 - random I/O: read 0x1200+77 (op 12): mismatch at offset 4660
//! ...`), checks the driver's capabilities rule out as `ok N - ... # skip
//! REASON`, the plan `1..N`, and last the summary `N passed, M failed`
//! (skipped checks count as passed). The exit status is 0 only if nothing
//! failed.
//!
//! The rules checked, beyond "every call that must work works":
//!
//! - **Self-description**: the driver's name is FORMAT, its description is
//!   not empty, `describe` answers the same twice and its create options
//!   parse (unique names, defaults that `-o` would accept).
//! - **Create** (`CREATE`) at 0 bytes (a refusal of size 0 is a skip, not a
//!   failure), 1 MiB, 1 MiB + 1000 bytes and 64 MiB + 512 bytes: the new
//!   image probes as FORMAT (opened without `-f`) and its virtual size `S`
//!   for an asked size `A` obeys the **size rule**: `A <= S < A + G`, where
//!   the granularity `G` is the cluster size `info` reports, at least 512
//!   and at most 2 MiB (512 when it reports none). So a driver may round up
//!   to a sector, as qemu does, or to its cluster, but no further.
//! - **Zeros** (`ZERO_INIT`): a fresh image reads as zeros everywhere.
//! - **Block status** over the whole disk and over odd windows: extents are
//!   contiguous, the first starts at the asked offset, each is non-empty and
//!   none reaches past the asked range or the virtual size; and an extent
//!   that reads as zeros (`ZERO`, or no `DATA` in an image without backing,
//!   which is how the host's copy engine reads it and skips it) holds only
//!   zeros in the reference.
//! - **Random I/O** (`WRITE`): a seeded xorshift generator drives
//!   [`OPERATIONS`] writes, zero writes (with and without `MAY_UNMAP`),
//!   reads and block-status queries of random, mostly unaligned ranges up
//!   to 256 KiB (many across cluster boundaries, some at the disk's end)
//!   against an in-memory reference of the whole disk. Reads start from a
//!   poisoned buffer: a driver must write every byte. Then flush, close,
//!   reopen read-only: the whole disk and its block status must agree with
//!   the reference, and reads across and past the virtual size return
//!   zeros past it.
//! - **Read-only opens**: `info` answers (also as `qimg info` opens an
//!   image), and writes, zero writes and resizes fail without changing the
//!   image.
//! - **Resize** (`RESIZE`): growing by an odd amount keeps the data, the new
//!   tail reads as zeros, writes across the old end work, and all of it
//!   survives a reopen; the new size obeys the size rule.
//! - **Hostile files**: an empty file, 4 KiB of 0xA5, truncated images, a
//!   real image with each 32- and 64-bit field of its first 512 bytes set to
//!   extreme values, and seeded random mutations of its first 4 KiB may be
//!   refused with an error or opened (then read, queried and described),
//!   but no call may panic. A driver panic reaches the host as an error of
//!   kind `PANIC`, which fails the check.
//! - **No hangs**: a watchdog fails the run (and ends it: a driver call
//!   cannot be interrupted) when a check makes no progress for two minutes,
//!   naming what it was doing.
//!
//! Image files are named `NAME.FORMAT`, as users name them (some formats
//! probe by the extension).
//!
//! This module holds the run and the order of the checks. The rest:
//!
//! - [`session`]: the state of a run, and how it opens and creates images;
//!   [`disk`]: the test disk the I/O checks share; [`scratch`]: the
//!   directory the images are made in.
//! - The checks: [`describe`], [`create`], [`io_checks`], [`resize`] and
//!   [`hostile`].
//! - The rules they hold images to: [`size_rule`] and [`invariants`]; the
//!   seeded generator and random operations: [`random`].
//! - How a check ends, [`outcome`], and how the run reports it, [`report`].

mod create;
mod describe;
mod disk;
mod hostile;
mod invariants;
mod io_checks;
mod outcome;
mod random;
mod report;
mod resize;
mod scratch;
mod session;
mod size_rule;

use crate::block::image::driver_for;
use crate::error::{CmdError, CmdResult};
use create::CREATE_SIZES;
use hostile::{Cut, MUTANTS};
use outcome::{Failure, Verdict};
use report::Tap;
use scratch::Scratch;
use session::Session;
use std::time::Duration;

/// A kibibyte.
const KIB: u64 = 1 << 10;
/// A mebibyte.
const MIB: u64 = 1 << 20;
/// Operations of the random I/O check.
pub const OPERATIONS: usize = 300;
/// The seed of the random I/O and mutation checks (fixed: a failure
/// reproduces run after run).
pub const SEED: u64 = 0x51_6d_67_c0_4f_f0_2d_a1;
/// What read buffers hold before a read: a driver must overwrite it all.
const POISON: u8 = 0xEE;
/// The longest a check may go without progress (one driver call, or a
/// check without steps): past it the watchdog fails the run, as a driver
/// call hangs. Every check of an in-tree driver takes well under a second
/// in a debug build.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the conformance check on the driver of `format`, printing one line
/// per check and the summary; returns 0 if every check passed, else 1.
pub fn run(format: &str) -> CmdResult {
    let tap = Tap::default();
    let found = format!("driver '{format}' is found");
    let driver = match driver_for(format) {
        Ok(driver) => driver,
        Err(e) => {
            tap.record(&found, Err(Failure::Rule(e.message.to_string())));
            return Ok(tap.finish());
        }
    };
    tap.record(&found, Ok(Verdict::Pass));
    let scratch = Scratch::new(format).map_err(|e| {
        CmdError::Failed(format!(
            "conformance: cannot create a scratch directory: {e}"
        ))
    })?;
    tap.watch(scratch.dir.clone(), CHECK_TIMEOUT);
    let mut session = Session {
        format: format.to_string(),
        driver,
        scratch,
        tap: tap.clone(),
        disk: None,
        small: None,
    };
    session.introduce();
    session.run_all();
    drop(session);
    Ok(tap.finish())
}

impl Session {
    /// Runs every check in order.
    fn run_all(&mut self) {
        let tap = self.tap.clone();
        tap.check("driver describes itself", || self.describes_itself());
        for &(size, label) in CREATE_SIZES {
            tap.check(&format!("create {label} image"), || {
                self.create_and_probe(size, label)
            });
        }
        tap.check("create and open the 32 MiB + 1536 bytes test disk", || {
            self.create_disk()
        });
        tap.check("fresh image reads as zeros", || self.fresh_zeros());
        tap.check("block status of the fresh image", || {
            self.status_check(true)
        });
        tap.check(
            &format!("random I/O: {OPERATIONS} operations against a reference"),
            || self.random_io(),
        );
        tap.check("block status agrees with the reference", || {
            self.status_check(false)
        });
        tap.check("flush, close, reopen read-only: disk matches", || {
            self.reopen_matches()
        });
        tap.check("reads past the virtual size return zeros", || {
            self.reads_past_end()
        });
        tap.check("info answers on an open and an info-only open", || {
            self.info_parses()
        });
        tap.check("writes to a read-only image fail", || {
            self.read_only_refuses()
        });
        tap.check(
            "resize: grow by 5 MiB + 1536 bytes, data kept, tail zero",
            || self.resize_grows(),
        );
        tap.check("hostile file: empty", || self.hostile_bytes("empty", &[]));
        tap.check("hostile file: 4 KiB of 0xA5", || {
            self.hostile_bytes("garbage", &[0xA5; 4096])
        });
        tap.check("hostile file: image truncated to 4 KiB", || {
            self.truncated(Cut::To(4096))
        });
        tap.check("hostile file: image truncated to half its length", || {
            self.truncated(Cut::Half)
        });
        tap.check("hostile file: header fields set to extreme values", || {
            self.field_sweep()
        });
        tap.check(
            &format!("hostile file: {MUTANTS} seeded mutations of an image's first 4 KiB"),
            || self.mutants(),
        );
    }
}
