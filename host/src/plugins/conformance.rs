//! `qimg --conformance FORMAT`: the checks a format driver must pass.
//!
//! A vendor lists its library in a manifest and runs
//! `qimg --plugins M --conformance FORMAT`. Every check goes through the
//! host's own block layer (`create_image`, `open_image`, [`BlockImage`]), so
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

use crate::block::image::driver_for;
use crate::block::{create_image, open_image, options, BlockImage, LockSpec, OpenRequest};
use crate::error::{CmdError, CmdResult};
use crate::plugins::listing::capability_names;
use crate::plugins::Driver;
use crate::store::CacheMode;
use qimg_driver_api::abi_stable::std_types::{RSlice, RStr};
use qimg_driver_api::schema::{CreateOption, CreateRequest, DriverDescription};
use qimg_driver_api::{caps, extent_flags, zero_flags, DriverError, ErrorKind, Extent, Prealloc};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A kibibyte.
const KIB: u64 = 1 << 10;
/// A mebibyte.
const MIB: u64 = 1 << 20;
/// qemu's sector: the smallest granularity of the size rule.
const SECTOR: u64 = 512;
/// The largest granularity of the size rule.
const MAX_GRANULARITY: u64 = 2 * MIB;
/// Sizes the create checks ask for, with their names.
const CREATE_SIZES: &[(u64, &str)] = &[
    (0, "0-byte"),
    (MIB, "1 MiB"),
    (MIB + 1000, "1 MiB + 1000 bytes"),
    (64 * MIB + 512, "64 MiB + 512 bytes"),
];
/// The asked size of the disk the I/O checks use (an odd number of sectors,
/// so the last cluster of most formats is partial).
const DISK_SIZE: u64 = 32 * MIB + 1536;
/// How much the resize check grows the disk by.
const GROW_BY: u64 = 5 * MIB + 1536;
/// Operations of the random I/O check.
pub const OPERATIONS: usize = 300;
/// The longest random request.
const MAX_IO: u64 = 256 * KIB;
/// Reads of the whole disk go in pieces of this size.
const PIECE: usize = MIB as usize;
/// The seed of the random I/O and mutation checks (fixed: a failure
/// reproduces run after run).
pub const SEED: u64 = 0x51_6d_67_c0_4f_f0_2d_a1;
/// Mutated copies of a real image the hostile-file check opens.
const MUTANTS: usize = 32;
/// How many bytes of an image the mutations touch.
const MUTATED_SPAN: u64 = 4096;
/// How many bytes of an image the field sweep touches.
const SWEPT_SPAN: usize = 512;
/// Bytes of a file the host hands a driver's probe.
const PROBE_BYTES: usize = 2048;
/// The values the field sweep writes: (width in bytes, value).
const EXTREMES: &[(usize, u64)] = &[
    (4, 0xFFFF_FFFF),
    (4, 0x8000_0000),
    (8, u64::MAX),
    (8, 1 << 63),
    (8, 1 << 40),
];
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

/// How a check ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every rule held.
    Pass,
    /// The check does not apply (missing capability, missing prerequisite,
    /// or an option the driver may legitimately refuse); the reason.
    Skip(String),
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
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
type Outcome = Result<Verdict, Failure>;

/// Names the operation a driver result belongs to, turning its error into a
/// [`Failure::Call`].
trait During<T> {
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
fn no_panic<T>(
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

/// The TAP-like report and what a watchdog needs to end a hung run.
#[derive(Default)]
struct Board {
    /// Checks finished.
    count: usize,
    /// Checks passed (or skipped).
    passed: usize,
    /// Checks failed.
    failed: usize,
    /// The running check: its name, and when it started or last reported
    /// progress (see [`Tap::doing`]).
    running: Option<(String, Instant)>,
    /// What the running check is doing (an operation, a mutant), for the
    /// message of a hang.
    doing: String,
}

/// The report of one run, shared with its watchdog: every line is printed
/// under the board's lock, so the watchdog never prints into a line.
#[derive(Clone, Default)]
struct Tap {
    board: Arc<Mutex<Board>>,
}

impl Tap {
    /// The board, whatever a panicking holder left (it holds plain counts).
    fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prints a TAP comment line.
    fn comment(&self, text: &str) {
        let _board = self.board();
        println!("# {text}");
    }

    /// Records what the running check is doing now; the watchdog's clock
    /// starts again.
    fn doing(&self, text: impl Into<String>) {
        let mut board = self.board();
        board.doing = text.into();
        if let Some((_, since)) = board.running.as_mut() {
            *since = Instant::now();
        }
    }

    /// Prints the line of one finished check.
    fn record(&self, name: &str, outcome: Outcome) {
        let mut board = self.board();
        board.running = None;
        board.count += 1;
        let n = board.count;
        match outcome {
            Ok(Verdict::Pass) => {
                board.passed += 1;
                println!("ok {n} - {name}");
            }
            Ok(Verdict::Skip(reason)) => {
                board.passed += 1;
                println!("ok {n} - {name} # skip {reason}");
            }
            Err(failure) => {
                board.failed += 1;
                println!("not ok {n} - {name}: {failure}");
            }
        }
    }

    /// Runs one check and prints its line.
    fn check(&self, name: &str, body: impl FnOnce() -> Outcome) {
        {
            let mut board = self.board();
            board.running = Some((name.to_string(), Instant::now()));
            board.doing.clear();
        }
        let outcome = body();
        self.record(name, outcome)
    }

    /// Prints the plan and the summary; returns the exit status.
    fn finish(&self) -> i32 {
        let board = self.board();
        println!("1..{}", board.count);
        println!("{} passed, {} failed", board.passed, board.failed);
        i32::from(board.failed > 0)
    }

    /// Starts the watchdog: a driver call that never returns cannot be
    /// interrupted, so when a check makes no progress (see [`Tap::doing`])
    /// for `limit`, the watchdog prints its failure and the summary,
    /// removes `scratch` and ends the process with status 1.
    fn watch(&self, scratch: PathBuf, limit: Duration) {
        let tap = self.clone();
        let spawned = std::thread::Builder::new()
            .name("conformance-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(250));
                let mut board = tap.board();
                let Some((name, started)) = board.running.clone() else {
                    continue;
                };
                if started.elapsed() < limit {
                    continue;
                }
                let doing = match board.doing.as_str() {
                    "" => String::new(),
                    text => format!(" during {text}"),
                };
                board.count += 1;
                board.failed += 1;
                println!(
                    "not ok {} - {name}: no progress for {} s{doing} (a driver call hangs)",
                    board.count,
                    limit.as_secs()
                );
                println!("1..{}", board.count);
                println!("{} passed, {} failed", board.passed, board.failed);
                let _ = std::fs::remove_dir_all(&scratch);
                std::process::exit(1);
            });
        if let Err(e) = spawned {
            self.comment(&format!(
                "no watchdog ({e}): a hung driver call hangs the run"
            ));
        }
    }
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct Scratch {
    /// The directory.
    dir: PathBuf,
    /// The extension of the files made in it: the format's name, as users
    /// name their images (some formats probe by it).
    extension: String,
}

impl Scratch {
    /// Creates `qimg-conformance-PID-N-FORMAT` under the temporary directory.
    fn new(format: &str) -> std::io::Result<Scratch> {
        let tag: String = format
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let base = std::env::temp_dir();
        for n in 0..100 {
            let dir = base.join(format!("qimg-conformance-{}-{n}-{tag}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    return Ok(Scratch {
                        dir,
                        extension: tag,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "every candidate name is taken",
        ))
    }

    /// The path of file `stem` (with the format as its extension) inside
    /// the directory, as the block layer takes it.
    fn path(&self, stem: &str) -> Result<String, Failure> {
        let path = self.dir.join(format!("{stem}.{}", self.extension));
        path.to_str()
            .map(str::to_string)
            .ok_or_else(|| Failure::Setup {
                what: format!("scratch file {}", path.display()),
                error: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not UTF-8"),
            })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How the checks open an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Read-only, as `convert` opens a source.
    Read,
    /// Read-write, as `convert` opens its target.
    Write,
    /// Read-write and resizable, as `resize` opens an image.
    Resize,
    /// Described only, as `info` opens an image (no data I/O, no locks).
    Describe,
}

/// The disk the I/O checks share, with what it must hold.
struct Disk {
    /// Its file.
    path: String,
    /// Every guest byte it must read as (its length is the virtual size).
    reference: Vec<u8>,
    /// The granularity of the size rule (and the cluster boundaries that
    /// random requests straddle).
    granularity: u64,
    /// The image must be written in ascending order (no random writes).
    write_in_order: bool,
    /// The reference is known to match the image (false once an I/O check
    /// failed part-way: later comparisons would only repeat that failure).
    trusted: bool,
}

/// The state of one conformance run.
struct Session {
    /// The format checked.
    format: String,
    /// Its driver.
    driver: Arc<Driver>,
    /// Where the images are made.
    scratch: Scratch,
    /// The report.
    tap: Tap,
    /// The test disk, once created.
    disk: Option<Disk>,
    /// A small valid image (the 1 MiB create check's), the base of the
    /// truncation and mutation checks.
    small: Option<String>,
}

impl Session {
    /// Prints what is being checked as TAP comments.
    fn introduce(&self) {
        let d = &self.driver;
        let package = d.package.as_deref().unwrap_or("unknown package");
        self.tap.comment(&format!(
            "driver {} ({package}; driver-api {}, ABI 1.{})",
            d.name, d.api_version, d.abi_minor
        ));
        self.tap.comment(&format!(
            "capabilities: {}",
            capability_names(d.caps).join(" ")
        ));
        self.tap.comment(&format!(
            "scratch directory: {}; seed {SEED:#x}",
            self.scratch.dir.display()
        ));
    }

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

    /// Opens `path` through the block layer; `format` None probes.
    fn open(
        &self,
        path: &str,
        format: Option<&str>,
        access: Access,
    ) -> Result<BlockImage, DriverError> {
        let base = OpenRequest::read(path, format, false);
        let request = match access {
            Access::Read => base,
            Access::Write => OpenRequest {
                write: true,
                lock: Some(LockSpec::READ_WRITE),
                ..base
            },
            Access::Resize => OpenRequest {
                write: true,
                lock: Some(LockSpec::RESIZE),
                no_backing: true,
                ..base
            },
            Access::Describe => OpenRequest {
                lock: None,
                no_backing: true,
                no_io: true,
                ..base
            },
        };
        open_image(&request)
    }

    /// Opens `path` with FORMAT named.
    fn open_named(&self, path: &str, access: Access) -> Result<BlockImage, Failure> {
        let what = match access {
            Access::Read => "open read-only",
            Access::Write => "open read-write",
            Access::Resize => "open for resize",
            Access::Describe => "open for info",
        };
        self.open(path, Some(&self.format), access).during(what)
    }

    /// Creates an image of `size` bytes at `path` with default options.
    fn create(&self, path: &str, size: u64) -> Result<(), DriverError> {
        let request = CreateRequest {
            size,
            options: BTreeMap::new(),
        };
        create_image(&self.driver, path, &request, CacheMode::Writeback)
    }

    /// The skip reason when the driver lacks `cap`, named as the listing
    /// names it.
    fn lacks(&self, cap: u64) -> Option<Verdict> {
        if self.driver.can(cap) {
            return None;
        }
        let name = capability_names(cap).join(" ").to_uppercase();
        Some(Verdict::Skip(format!("no {name} capability")))
    }

    /// The test disk, or the skip reason when an earlier check could not
    /// make it (or left its reference in doubt, with `trusted`).
    fn disk(&self, trusted: bool) -> Result<&Disk, Verdict> {
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

    /// Name, description, `describe` and create options.
    fn describes_itself(&self) -> Outcome {
        let d = &self.driver;
        if d.name != self.format {
            return Err(Failure::Rule(format!(
                "the manifest's '{}' driver calls itself '{}'",
                self.format, d.name
            )));
        }
        if d.description.description.trim().is_empty() {
            return Err(Failure::Rule("its description is empty".into()));
        }
        if d.abi_minor >= 3 {
            let text: String = d.api.describe().into_result().during("describe")?.into();
            let again: DriverDescription = serde_json::from_str(&text)
                .map_err(|e| Failure::Rule(format!("describe answers bad JSON: {e}")))?;
            if again != d.description {
                return Err(Failure::Rule(
                    "describe answers differently on a second call".into(),
                ));
            }
        }
        let text = d.api.create_options();
        let listed: Vec<CreateOption> = serde_json::from_str(text.as_str())
            .map_err(|e| Failure::Rule(format!("create_options answers bad JSON: {e}")))?;
        if listed != d.description.create_options {
            return Err(Failure::Rule(
                "create_options and describe list different options".into(),
            ));
        }
        check_create_options(d)?;
        Ok(Verdict::Pass)
    }

    /// Creates an image of `size`, probes it and checks its size.
    fn create_and_probe(&mut self, size: u64, label: &str) -> Outcome {
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
        let image = self
            .open(&path, None, Access::Read)
            .during("open without -f")?;
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
    fn create_disk(&mut self) -> Outcome {
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

    /// Runs `body` on the test disk (skipping without it, or when
    /// `trusted` is asked and the reference is in doubt). A failure leaves
    /// the reference in doubt: the image may hold what a failed call left.
    fn with_disk(
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

    /// A fresh disk reads as zeros (`ZERO_INIT`); without the capability
    /// the reference takes whatever it reads as.
    fn fresh_zeros(&mut self) -> Outcome {
        self.with_disk(true, |session, disk| {
            let image = session.open_named(&disk.path, Access::Read)?;
            let verdict = match session.lacks(caps::ZERO_INIT) {
                Some(skip) => {
                    read_whole(&image, &mut disk.reference)?;
                    skip
                }
                None => {
                    compare_whole(&image, &disk.reference, "fresh image")?;
                    Verdict::Pass
                }
            };
            image.close().during("close")?;
            Ok(verdict)
        })
    }

    /// Block status invariants over the whole disk (and, on the fresh
    /// disk, over odd windows), checked against the reference.
    fn status_check(&self, fresh: bool) -> Outcome {
        let disk = match self.disk(true) {
            Ok(disk) => disk,
            Err(skip) => return Ok(skip),
        };
        if let Some(skip) = self.lacks(caps::WRITE).filter(|_| !fresh) {
            return Ok(skip);
        }
        let image = self.open_named(&disk.path, Access::Read)?;
        walk_status(&image, &disk.reference)?;
        if fresh {
            for (offset, len) in odd_windows(disk.reference.len() as u64, disk.granularity) {
                let extents = image
                    .block_status(offset, len)
                    .during(format!("block status {offset:#x}+{len}"))?;
                check_extents(offset, len, disk.reference.len() as u64, &extents)?;
                check_zero_extents(&extents, &disk.reference)?;
            }
        }
        image.close().during("close")?;
        Ok(Verdict::Pass)
    }

    /// The random I/O check.
    fn random_io(&mut self) -> Outcome {
        if let Some(skip) = self.lacks(caps::WRITE) {
            return Ok(skip);
        }
        self.with_disk(true, |session, disk| {
            if disk.write_in_order {
                return Ok(Verdict::Skip(
                    "the image must be written in order (info says write_in_order)".into(),
                ));
            }
            let image = session.open_named(&disk.path, Access::Write)?;
            let mut rng = Rng::new(SEED);
            let size = disk.reference.len() as u64;
            let mut buf = vec![0u8; MAX_IO as usize];
            for n in 0..OPERATIONS {
                let op = Op::random(&mut rng, size, disk.granularity);
                session.tap.doing(format!("op {n}: {op}"));
                op.apply(&image, &mut disk.reference, &mut buf, &mut rng, n)?;
            }
            image.flush().during("flush")?;
            compare_whole(&image, &disk.reference, "whole disk after the operations")?;
            image.close().during("close")?;
            Ok(Verdict::Pass)
        })
    }

    /// After close, a read-only open reads the whole disk as the reference.
    fn reopen_matches(&mut self) -> Outcome {
        if let Some(skip) = self.lacks(caps::WRITE) {
            return Ok(skip);
        }
        self.with_disk(true, |session, disk| {
            let image = session.open_named(&disk.path, Access::Read)?;
            let size = image.try_size().during("virtual size")?;
            if size != disk.reference.len() as u64 {
                return Err(Failure::Rule(format!(
                    "virtual size changed from {} to {size} on reopen",
                    disk.reference.len()
                )));
            }
            compare_whole(&image, &disk.reference, "whole disk after reopen")?;
            walk_status(&image, &disk.reference)?;
            image.close().during("close")?;
            Ok(Verdict::Pass)
        })
    }

    /// Reads across and past the end of the disk: the part inside matches
    /// the reference, every byte past the virtual size reads as zero.
    fn reads_past_end(&self) -> Outcome {
        let disk = match self.disk(true) {
            Ok(disk) => disk,
            Err(skip) => return Ok(skip),
        };
        let image = self.open_named(&disk.path, Access::Read)?;
        let size = disk.reference.len() as u64;
        let mut buf = vec![POISON; 8192];
        for start in [size.saturating_sub(1000), size, size + 4096] {
            buf.fill(POISON);
            image
                .read(start, &mut buf)
                .during(format!("read {start:#x}+{}", buf.len()))?;
            let inside = size.saturating_sub(start).min(buf.len() as u64) as usize;
            let (head, tail) = buf.split_at(inside);
            let from = start.min(size) as usize;
            compare(
                head,
                &disk.reference[from..from + inside],
                start,
                "read across the end",
            )?;
            if let Some(i) = tail.iter().position(|&b| b != 0) {
                return Err(Failure::Rule(format!(
                    "offset {} past the virtual size {size} reads as {:#04x}, not zero",
                    start + (inside + i) as u64,
                    tail[i]
                )));
            }
        }
        image.close().during("close")?;
        Ok(Verdict::Pass)
    }

    /// `info` answers JSON the host parses, on a read-only open and on an
    /// open as `qimg info` makes it.
    fn info_parses(&self) -> Outcome {
        let disk = match self.disk(false) {
            Ok(disk) => disk,
            Err(skip) => return Ok(skip),
        };
        for access in [Access::Read, Access::Describe] {
            let image = self.open_named(&disk.path, access)?;
            let info = image.info().during("info")?;
            if let Some(cluster) = info.cluster_size {
                if cluster == 0 {
                    return Err(Failure::Rule("info reports a cluster size of 0".into()));
                }
            }
            image.close().during("close")?;
        }
        Ok(Verdict::Pass)
    }

    /// Writes, zero writes and resizes of a read-only image fail and change
    /// nothing.
    fn read_only_refuses(&self) -> Outcome {
        let disk = match self.disk(true) {
            Ok(disk) => disk,
            Err(skip) => return Ok(skip),
        };
        let image = self.open_named(&disk.path, Access::Read)?;
        let size = disk.reference.len() as u64;
        let offset = (size / 3) & !(SECTOR - 1);
        let len = (64 * KIB).min(size - offset.min(size));
        let attempt = |what: &str, result: Result<(), DriverError>| match result {
            Ok(()) => Err(Failure::Rule(format!(
                "{what} of a read-only image succeeded"
            ))),
            Err(e) if e.kind == ErrorKind::PANIC => Err(Failure::Call {
                op: what.to_string(),
                error: e,
            }),
            Err(_) => Ok(()),
        };
        if len > 0 {
            attempt("write", image.write(offset, &vec![0x5A; len as usize]))?;
            attempt(
                "write_zeroes",
                image.write_zeroes(offset, len, zero_flags::MAY_UNMAP),
            )?;
        }
        if self.driver.can(caps::RESIZE) {
            attempt("resize", image.resize(size + MIB, Prealloc::OFF, false))?;
        }
        let now = image.try_size().during("virtual size")?;
        if now != size {
            return Err(Failure::Rule(format!(
                "a refused resize changed the virtual size from {size} to {now}"
            )));
        }
        compare_whole(&image, &disk.reference, "disk after refused writes")?;
        image.close().during("close")?;
        Ok(Verdict::Pass)
    }

    /// Grows the disk by an odd amount and checks data, tail and reopen.
    fn resize_grows(&mut self) -> Outcome {
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

    /// A file of `bytes` named `name`: probing and opening it must not panic.
    fn hostile_bytes(&self, name: &str, bytes: &[u8]) -> Outcome {
        let path = self.scratch.path(&format!("hostile-{name}"))?;
        std::fs::write(&path, bytes).map_err(|error| Failure::Setup {
            what: format!("write {path}"),
            error,
        })?;
        let result = self.survive(&path, bytes, name);
        let _ = std::fs::remove_file(&path);
        result.map(|()| Verdict::Pass)
    }

    /// A copy of the test disk cut short.
    fn truncated(&self, cut: Cut) -> Outcome {
        let source = match &self.disk {
            Some(disk) => disk.path.clone(),
            None => {
                return Ok(self
                    .lacks(caps::CREATE)
                    .unwrap_or_else(|| Verdict::Skip("needs the test disk".into())))
            }
        };
        let bytes = std::fs::read(&source).map_err(|error| Failure::Setup {
            what: format!("read {source}"),
            error,
        })?;
        let keep = match cut {
            Cut::To(len) => len.min(bytes.len()),
            Cut::Half => bytes.len() / 2,
        };
        self.hostile_bytes(&format!("cut-{keep}"), &bytes[..keep])
    }

    /// Seeded mutations of the small image's first 4 KiB.
    fn mutants(&self) -> Outcome {
        let mut rng = Rng::new(SEED.rotate_left(17));
        let variants = (0..MUTANTS).map(move |n| {
            let edits = mutate(&mut rng);
            let list: Vec<String> = edits
                .iter()
                .map(|(at, value)| format!("{at:#x}={value:#04x}"))
                .collect();
            (format!("mutant {n} ({})", list.join(" ")), edits)
        });
        self.hostile_variants("hostile-mutant", variants)
    }

    /// The small image with each 4-byte-aligned field of its first 512
    /// bytes set to extreme values, as 32- and 64-bit little-endian numbers.
    fn field_sweep(&self) -> Outcome {
        let variants = (0..SWEPT_SPAN).step_by(4).flat_map(|at| {
            EXTREMES.iter().map(move |&(width, value)| {
                let edits = value.to_le_bytes()[..width]
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| (at + i, b))
                    .collect();
                (format!("u{} at {at:#x} = {value:#x}", width * 8), edits)
            })
        });
        self.hostile_variants("hostile-field", variants)
    }

    /// Copies the small image to `name` and opens it once with each of
    /// `variants` (a label and byte edits `(offset, value)`) applied in
    /// place; edits past the end of the image are left out, and variants
    /// that change nothing are not tried.
    fn hostile_variants(
        &self,
        name: &str,
        variants: impl Iterator<Item = (String, Vec<(usize, u8)>)>,
    ) -> Outcome {
        let Some(small) = &self.small else {
            return Ok(self
                .lacks(caps::CREATE)
                .unwrap_or_else(|| Verdict::Skip("needs the 1 MiB image".into())));
        };
        let original = std::fs::read(small).map_err(|error| Failure::Setup {
            what: format!("read {small}"),
            error,
        })?;
        let path = self.scratch.path(name)?;
        let file = std::fs::write(&path, &original)
            .and_then(|()| std::fs::OpenOptions::new().write(true).open(&path))
            .map_err(|error| Failure::Setup {
                what: format!("write {path}"),
                error,
            })?;
        let mut head = original[..original.len().min(PROBE_BYTES)].to_vec();
        let mut result = Ok(Verdict::Pass);
        for (label, edits) in variants {
            let edits: Vec<(usize, u8)> = edits
                .into_iter()
                .filter(|&(at, value)| original.get(at).is_some_and(|&b| b != value))
                .collect();
            if edits.is_empty() {
                continue;
            }
            patch(&file, &path, &mut head, edits.iter().copied())?;
            let survived = self.survive(&path, &head, &label);
            patch(
                &file,
                &path,
                &mut head,
                edits.iter().map(|&(at, _)| (at, original[at])),
            )?;
            if let Err(failure) = survived {
                result = Err(Failure::Rule(format!("{label}: {failure}")));
                break;
            }
        }
        drop(file);
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Probes and opens the file at `path` (holding `bytes`, named `label`
    /// in messages) as FORMAT; if it opens, reads, queries and describes
    /// it. Errors are fine, panics are not.
    fn survive(&self, path: &str, bytes: &[u8], label: &str) -> Result<(), Failure> {
        let step = |what: &str| self.tap.doing(format!("{label}: {what}"));
        let head = &bytes[..bytes.len().min(PROBE_BYTES)];
        step("probe");
        no_panic(
            self.driver
                .api
                .try_probe(RSlice::from_slice(head), RStr::from(path))
                .into_result(),
            "probe",
        )?;
        step("open");
        let Some(image) = no_panic(self.open(path, Some(&self.format), Access::Read), "open")?
        else {
            return Ok(());
        };
        let Some(size) = no_panic(image.try_size(), "virtual size")? else {
            return Ok(());
        };
        let mut buf = vec![POISON; 64 * KIB as usize];
        let tail = size.saturating_sub(buf.len() as u64);
        step("read at 0");
        no_panic(image.read(0, &mut buf), "read at 0")?;
        step(&format!("read at {tail}"));
        no_panic(image.read(tail, &mut buf), format!("read at {tail}"))?;
        if size > 0 {
            step(&format!("block status 0+{size}"));
            no_panic(image.block_status(0, size), "block status")?;
            let half = size / 2;
            step(&format!("block status {half:#x}+{}", size - half));
            no_panic(image.block_status(half, size - half), "block status")?;
        }
        step("info");
        no_panic(image.info(), "info")?;
        step("close");
        no_panic(image.close(), "close")?;
        Ok(())
    }
}

/// How much of the test disk a truncation keeps.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// The first so many bytes.
    To(usize),
    /// The first half.
    Half,
}

/// Writes byte edits `(offset, value)` into `file` (at `path`) and into
/// `head`, its first bytes as the probe sees them.
fn patch(
    file: &std::fs::File,
    path: &str,
    head: &mut [u8],
    edits: impl Iterator<Item = (usize, u8)>,
) -> Result<(), Failure> {
    use std::os::unix::fs::FileExt;
    for (at, value) in edits {
        file.write_all_at(&[value], at as u64)
            .map_err(|error| Failure::Setup {
                what: format!("write {path}"),
                error,
            })?;
        if let Some(b) = head.get_mut(at) {
            *b = value;
        }
    }
    Ok(())
}

/// 1 to 8 byte edits `(offset, value)` in the first [`MUTATED_SPAN`]
/// bytes of an image (half of them in the first 128, where headers keep
/// their fields).
fn mutate(rng: &mut Rng) -> Vec<(usize, u8)> {
    let count = 1 + rng.below(8);
    (0..count)
        .map(|_| {
            let window = if rng.below(2) == 0 { 128 } else { MUTATED_SPAN };
            let at = rng.below(window) as usize;
            let value = match rng.below(3) {
                0 => 0x00,
                1 => 0xFF,
                _ => rng.next() as u8,
            };
            (at, value)
        })
        .collect()
}

/// The granularity of the size rule for an open image: its cluster size
/// (as `info` reports it) within [512, 2 MiB], or 512.
fn granularity(image: &BlockImage) -> Result<u64, Failure> {
    let info = image.info().during("info")?;
    Ok(info
        .cluster_size
        .unwrap_or(SECTOR)
        .clamp(SECTOR, MAX_GRANULARITY))
}

/// The size rule: `asked <= got < asked + granularity`.
fn check_size(asked: u64, got: u64, granularity: u64) -> Result<(), Failure> {
    if got < asked || got - asked >= granularity {
        return Err(Failure::Rule(format!(
            "virtual size {got} for {asked} asked (allowed: {asked} up to {} bytes more)",
            granularity - 1
        )));
    }
    Ok(())
}

/// Checks each create option: a name, not listed twice, and a default that
/// `-o` accepts.
fn check_create_options(driver: &Driver) -> Result<(), Failure> {
    let schema = options::schema(driver, true);
    let mut seen = HashSet::new();
    for option in driver.create_options() {
        if option.name.is_empty() || option.name.contains([',', '=']) {
            return Err(Failure::Rule(format!(
                "create option '{}' has an unusable name",
                option.name
            )));
        }
        if !seen.insert(option.name.as_str()) {
            return Err(Failure::Rule(format!(
                "create option '{}' is listed twice",
                option.name
            )));
        }
        if let Some(default) = &option.default {
            let given = BTreeMap::from([(option.name.clone(), default.clone())]);
            options::validate(&schema, &given).map_err(|e| {
                Failure::Rule(format!(
                    "create option '{}' has a default -o refuses: {e}",
                    option.name
                ))
            })?;
        }
    }
    Ok(())
}

/// Reads the whole disk into `into` (sized to the virtual size).
fn read_whole(image: &BlockImage, into: &mut [u8]) -> Result<(), Failure> {
    for (n, piece) in into.chunks_mut(PIECE).enumerate() {
        let offset = (n * PIECE) as u64;
        piece.fill(POISON);
        image
            .read(offset, piece)
            .during(format!("read {offset:#x}+{}", piece.len()))?;
    }
    Ok(())
}

/// Reads the whole disk and compares it with `reference`.
fn compare_whole(image: &BlockImage, reference: &[u8], what: &str) -> Result<(), Failure> {
    let mut buf = vec![0u8; PIECE];
    for (n, want) in reference.chunks(PIECE).enumerate() {
        let offset = (n * PIECE) as u64;
        let got = &mut buf[..want.len()];
        got.fill(POISON);
        image
            .read(offset, got)
            .during(format!("read {offset:#x}+{}", want.len()))?;
        compare(got, want, offset, what)?;
    }
    Ok(())
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

/// Compares `got` (read at `offset`) with `want`.
fn compare(got: &[u8], want: &[u8], offset: u64, what: &str) -> Result<(), Failure> {
    if got == want {
        // memcmp: the common case, fast even in a debug build.
        return Ok(());
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(Failure::Mismatch {
            what: what.to_string(),
            offset: offset + i as u64,
            got: got[i],
            want: want[i],
        }),
    }
}

/// True if the host reads an extent of an image without backing as zeros
/// (the copy and compare engines skip it without reading).
fn reads_as_zero(extent: &Extent) -> bool {
    extent.has(extent_flags::ZERO) || !extent.has(extent_flags::DATA)
}

/// The invariants of one `block_status(offset, len)` answer on an image of
/// `size` bytes.
fn check_extents(offset: u64, len: u64, size: u64, extents: &[Extent]) -> Result<(), Failure> {
    let asked = format!("block status {offset:#x}+{len}");
    let Some(first) = extents.first() else {
        return Err(Failure::Rule(format!("{asked} answered no extent")));
    };
    if first.offset != offset {
        return Err(Failure::Rule(format!(
            "{asked}: the first extent starts at {:#x}",
            first.offset
        )));
    }
    let end = offset + len;
    let mut at = offset;
    for (i, e) in extents.iter().enumerate() {
        if e.offset != at {
            return Err(Failure::Rule(format!(
                "{asked}: extent {i} starts at {:#x}, not {at:#x} (gap or overlap)",
                e.offset
            )));
        }
        if e.length == 0 {
            return Err(Failure::Rule(format!("{asked}: extent {i} is empty")));
        }
        let e_end = e.offset.checked_add(e.length).ok_or_else(|| {
            Failure::Rule(format!("{asked}: extent {i} overflows ({})", e.length))
        })?;
        if e_end > end {
            return Err(Failure::Rule(format!(
                "{asked}: extent {i} ({:#x}+{}) reaches past the asked range",
                e.offset, e.length
            )));
        }
        if e_end > size {
            return Err(Failure::Rule(format!(
                "{asked}: extent {i} reaches past the virtual size {size}"
            )));
        }
        at = e_end;
    }
    Ok(())
}

/// Every extent that reads as zeros holds only zeros in `reference`.
fn check_zero_extents(extents: &[Extent], reference: &[u8]) -> Result<(), Failure> {
    for e in extents.iter().filter(|e| reads_as_zero(e)) {
        let range = &reference[e.offset as usize..e.end() as usize];
        if is_zero(range) {
            continue;
        }
        if let Some(i) = range.iter().position(|&b| b != 0) {
            let kind = if e.has(extent_flags::ZERO) {
                "ZERO"
            } else {
                "unallocated (no DATA)"
            };
            return Err(Failure::Rule(format!(
                "block status reports {:#x}+{} as {kind}, but offset {} holds {:#04x}",
                e.offset,
                e.length,
                e.offset + i as u64,
                range[i]
            )));
        }
    }
    Ok(())
}

/// True if `bytes` are all zero (compared a page at a time, with memcmp).
fn is_zero(bytes: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// Walks the block status of the whole disk, checking every answer.
fn walk_status(image: &BlockImage, reference: &[u8]) -> Result<(), Failure> {
    let size = reference.len() as u64;
    let mut offset = 0;
    while offset < size {
        let len = size - offset;
        let extents = image
            .block_status(offset, len)
            .during(format!("block status {offset:#x}+{len}"))?;
        check_extents(offset, len, size, &extents)?;
        check_zero_extents(&extents, reference)?;
        offset = extents.last().map_or(size, Extent::end);
    }
    Ok(())
}

/// Block-status windows at awkward places: unaligned starts, one byte,
/// across cluster boundaries, at the end.
fn odd_windows(size: u64, granularity: u64) -> Vec<(u64, u64)> {
    let g = granularity;
    let candidates = [
        (0, 1),
        (1, 511),
        (511, 2),
        (4097, 100_000),
        (g - 1, 2),
        (g, g),
        (g + 1, 3 * g),
        (3 * g - 100, 200),
        (size / 2 + 3, size / 4),
        (size.saturating_sub(513), 513),
        (size.saturating_sub(1), 1),
    ];
    candidates
        .into_iter()
        .filter(|&(offset, len)| len > 0 && offset < size)
        .map(|(offset, len)| (offset, len.min(size - offset)))
        .collect()
}

/// xorshift64*: small, seeded, good enough to spread requests.
struct Rng(u64);

impl Rng {
    /// A generator started from `seed` (0 is replaced: xorshift sticks at 0).
    fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }
    /// The next 64 random bits.
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `0..n` (0 when `n` is 0), from the high bits (the
    /// strong ones of xorshift64*), by multiplication rather than modulo.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// One operation of the random I/O check.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// Write random bytes.
    Write { offset: u64, len: u64 },
    /// Write zeros, with `MAY_UNMAP` if `unmap`.
    Zero { offset: u64, len: u64, unmap: bool },
    /// Read and compare.
    Read { offset: u64, len: u64 },
    /// Block status, checked against the reference.
    Status { offset: u64, len: u64 },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Write { offset, len } => write!(f, "write {offset:#x}+{len}"),
            Op::Zero { offset, len, unmap } => {
                let how = if unmap { " (may unmap)" } else { "" };
                write!(f, "write_zeroes {offset:#x}+{len}{how}")
            }
            Op::Read { offset, len } => write!(f, "read {offset:#x}+{len}"),
            Op::Status { offset, len } => write!(f, "block status {offset:#x}+{len}"),
        }
    }
}

impl Op {
    /// A random operation on a disk of `size` bytes whose clusters are
    /// `granularity` bytes: 40% writes, 15% zero writes, 35% reads, 10%
    /// block status.
    fn random(rng: &mut Rng, size: u64, granularity: u64) -> Op {
        let (offset, len) = random_range(rng, size, granularity);
        match rng.below(20) {
            0..=7 => Op::Write { offset, len },
            8..=10 => Op::Zero {
                offset,
                len,
                unmap: rng.below(2) == 0,
            },
            11..=17 => Op::Read { offset, len },
            _ => Op::Status { offset, len },
        }
    }

    /// Runs the operation on `image` and keeps `reference` in step; `n` is
    /// its number, for messages.
    fn apply(
        self,
        image: &BlockImage,
        reference: &mut [u8],
        buf: &mut [u8],
        rng: &mut Rng,
        n: usize,
    ) -> Result<(), Failure> {
        let what = format!("{self} (op {n})");
        match self {
            Op::Write { offset, len } => {
                let (start, end) = (offset as usize, (offset + len) as usize);
                let data = &mut buf[..len as usize];
                rng.fill(data);
                image.write(offset, data).during(&what)?;
                reference[start..end].copy_from_slice(data);
            }
            Op::Zero { offset, len, unmap } => {
                let flags = if unmap { zero_flags::MAY_UNMAP } else { 0 };
                image.write_zeroes(offset, len, flags).during(&what)?;
                reference[offset as usize..(offset + len) as usize].fill(0);
            }
            Op::Read { offset, len } => {
                let got = &mut buf[..len as usize];
                got.fill(POISON);
                image.read(offset, got).during(&what)?;
                let want = &reference[offset as usize..(offset + len) as usize];
                compare(got, want, offset, &what)?;
            }
            Op::Status { offset, len } => {
                let extents = image.block_status(offset, len).during(&what)?;
                check_extents(offset, len, reference.len() as u64, &extents)?;
                check_zero_extents(&extents, reference)?;
            }
        }
        Ok(())
    }
}

/// A random range of a disk of `size` bytes: anywhere (40%), across a
/// cluster boundary (30%), in the first 2 MiB where requests overlap often
/// (20%) or near the end (10%); a quarter of them cluster-aligned. Lengths
/// are small (up to 4 KiB), medium (64 KiB) or large (256 KiB) alike.
fn random_range(rng: &mut Rng, size: u64, granularity: u64) -> (u64, u64) {
    let mut len = 1 + match rng.below(3) {
        0 => rng.below(4 * KIB),
        1 => rng.below(64 * KIB),
        _ => rng.below(MAX_IO),
    };
    let mut offset = match rng.below(10) {
        0..=3 => rng.below(size),
        4..=6 => {
            let boundary = (1 + rng.below((size / granularity).max(1))) * granularity;
            boundary.saturating_sub(1 + rng.below(len.max(2) - 1))
        }
        7 | 8 => rng.below(size.min(2 * MIB)),
        // Half of these reach the last byte.
        _ => size.saturating_sub(1 + rng.below(2 * len)),
    };
    if rng.below(4) == 0 {
        offset -= offset % granularity;
        len = len.div_ceil(granularity) * granularity;
    }
    let offset = offset.min(size.saturating_sub(1));
    let len = len.min(size - offset).clamp(1, MAX_IO);
    (offset, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(offset: u64, length: u64, flags: u32) -> Extent {
        Extent {
            offset,
            length,
            flags,
            store: 0,
            host_offset: 0,
        }
    }

    #[test]
    fn size_rule_allows_rounding_up_to_the_granularity() {
        assert!(check_size(1000, 1024, 512).is_ok());
        assert!(check_size(1024, 1024, 512).is_ok());
        assert!(check_size(1000, 1536, 512).is_err());
        assert!(check_size(1000, 999, 512).is_err());
        assert!(check_size(MIB + 1, 2 * MIB, MAX_GRANULARITY).is_ok());
    }

    #[test]
    fn extents_must_be_contiguous_and_inside() {
        let d = extent_flags::DATA;
        assert!(check_extents(10, 100, 1000, &[extent(10, 50, d), extent(60, 50, d)]).is_ok());
        assert!(check_extents(10, 100, 1000, &[]).is_err());
        assert!(check_extents(10, 100, 1000, &[extent(0, 50, d)]).is_err());
        assert!(check_extents(10, 100, 1000, &[extent(10, 50, d), extent(61, 10, d)]).is_err());
        assert!(check_extents(10, 100, 1000, &[extent(10, 0, d)]).is_err());
        assert!(check_extents(10, 100, 1000, &[extent(10, 101, d)]).is_err());
        assert!(check_extents(990, 100, 1000, &[extent(990, 20, d)]).is_err());
    }

    #[test]
    fn zero_extents_must_hold_zeros() {
        let mut reference = vec![0u8; 100];
        reference[50] = 1;
        let zero = extent_flags::ZERO;
        let data = extent_flags::DATA;
        assert!(check_zero_extents(&[extent(0, 50, zero)], &reference).is_ok());
        assert!(check_zero_extents(&[extent(40, 20, data)], &reference).is_ok());
        assert!(check_zero_extents(&[extent(40, 20, zero | data)], &reference).is_err());
        assert!(check_zero_extents(&[extent(40, 20, 0)], &reference).is_err());
    }

    #[test]
    fn random_ranges_stay_inside_the_disk() {
        let mut rng = Rng::new(SEED);
        for _ in 0..10_000 {
            let (offset, len) = random_range(&mut rng, DISK_SIZE, 65536);
            assert!((1..=MAX_IO).contains(&len), "{len}");
            assert!(offset + len <= DISK_SIZE, "{offset}+{len}");
        }
        let (offset, len) = random_range(&mut rng, 1, 65536);
        assert_eq!((offset, len), (0, 1));
    }

    #[test]
    fn random_operations_mix_every_kind() {
        let g = 65536;
        let mut rng = Rng::new(SEED);
        let (mut writes, mut zeros, mut unmaps, mut reads, mut status) = (0, 0, 0, 0, 0);
        let (mut straddling, mut unaligned, mut at_end) = (0, 0, 0);
        for _ in 0..OPERATIONS {
            let op = Op::random(&mut rng, DISK_SIZE, g);
            let (offset, len) = match op {
                Op::Write { offset, len } => {
                    writes += 1;
                    (offset, len)
                }
                Op::Zero { offset, len, unmap } => {
                    zeros += 1;
                    unmaps += usize::from(unmap);
                    (offset, len)
                }
                Op::Read { offset, len } => {
                    reads += 1;
                    (offset, len)
                }
                Op::Status { offset, len } => {
                    status += 1;
                    (offset, len)
                }
            };
            straddling += usize::from(offset / g != (offset + len - 1) / g);
            unaligned += usize::from(offset % 512 != 0 || len % 512 != 0);
            at_end += usize::from(offset + len == DISK_SIZE);
        }
        let mix = format!(
            "writes {writes} zeros {zeros} (unmap {unmaps}) reads {reads} status {status} \
             straddling {straddling} unaligned {unaligned} at end {at_end}"
        );
        assert!(writes >= 90 && reads >= 80 && status >= 15, "{mix}");
        assert!(zeros >= 30 && unmaps >= 10 && zeros - unmaps >= 10, "{mix}");
        assert!(
            straddling >= 100 && unaligned >= 150 && at_end >= 5,
            "{mix}"
        );
    }

    #[test]
    fn odd_windows_fit_small_disks() {
        for size in [1, 512, 4096, DISK_SIZE] {
            for (offset, len) in odd_windows(size, 65536) {
                assert!(len > 0 && offset + len <= size);
            }
        }
    }
}
