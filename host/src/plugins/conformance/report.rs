//! The TAP-like report: the line of each check, the counts of passed and
//! failed checks, the plan and summary, and the watchdog that ends a run
//! whose check makes no progress.

use super::outcome::{Outcome, Verdict};
use crate::sync::lock;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
pub(super) struct Tap {
    board: Arc<Mutex<Board>>,
}

impl Tap {
    /// The board, whatever a panicking holder left (it holds plain counts).
    fn board(&self) -> MutexGuard<'_, Board> {
        lock(&self.board)
    }

    /// Prints a TAP comment line.
    pub(super) fn comment(&self, text: &str) {
        let _board = self.board();
        outln!("# {text}");
    }

    /// Records what the running check is doing now; the watchdog's clock
    /// starts again.
    pub(super) fn doing(&self, text: impl Into<String>) {
        let mut board = self.board();
        board.doing = text.into();
        if let Some((_, since)) = board.running.as_mut() {
            *since = Instant::now();
        }
    }

    /// Prints the line of one finished check.
    pub(super) fn record(&self, name: &str, outcome: Outcome) {
        let mut board = self.board();
        board.running = None;
        board.count += 1;
        let n = board.count;
        match outcome {
            Ok(Verdict::Pass) => {
                board.passed += 1;
                outln!("ok {n} - {name}");
            }
            Ok(Verdict::Skip(reason)) => {
                board.passed += 1;
                outln!("ok {n} - {name} # skip {reason}");
            }
            Err(failure) => {
                board.failed += 1;
                outln!("not ok {n} - {name}: {failure}");
            }
        }
    }

    /// Runs one check and prints its line.
    pub(super) fn check(&self, name: &str, body: impl FnOnce() -> Outcome) {
        {
            let mut board = self.board();
            board.running = Some((name.to_string(), Instant::now()));
            board.doing.clear();
        }
        let outcome = body();
        self.record(name, outcome)
    }

    /// Prints the plan and the summary; returns the exit status.
    pub(super) fn finish(&self) -> i32 {
        let board = self.board();
        outln!("1..{}", board.count);
        outln!("{} passed, {} failed", board.passed, board.failed);
        i32::from(board.failed > 0)
    }

    /// Starts the watchdog: a driver call that never returns cannot be
    /// interrupted, so when a check makes no progress (see [`Tap::doing`])
    /// for `limit`, the watchdog prints its failure and the summary,
    /// removes `scratch` and ends the process with status 1.
    pub(super) fn watch(&self, scratch: PathBuf, limit: Duration) {
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
                outln!(
                    "not ok {} - {name}: no progress for {} s{doing} (a driver call hangs)",
                    board.count,
                    limit.as_secs()
                );
                outln!("1..{}", board.count);
                outln!("{} passed, {} failed", board.passed, board.failed);
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
