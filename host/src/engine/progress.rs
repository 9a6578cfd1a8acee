//! Progress reporting in qemu-img's exact format: `    (12.34/100%)\r` on
//! stdout with `-p`, or one line on stderr when the process receives SIGUSR1.
//!
//! The arithmetic is qemu's, in single precision, so the same work prints the
//! same figures: a value is printed when it passes the last printed one by more
//! than `min_skip`, or is 0 or 100.

use crate::sync::lock;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static USR1: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    USR1.store(true, Ordering::Relaxed);
}

/// Progress of one operation.
pub struct Progress {
    shown: bool,
    min_skip: f32,
    state: Mutex<State>,
}

struct State {
    current: f32,
    last_print: f32,
}

impl Progress {
    /// Starts reporting (`shown`: `-p` without `-q`); prints nothing yet.
    pub fn start(shown: bool, min_skip: f32) -> Progress {
        // SAFETY: installs an async-signal-safe handler that only stores an atomic.
        unsafe {
            libc::signal(
                libc::SIGUSR1,
                on_usr1 as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
        Progress {
            shown,
            min_skip,
            state: Mutex::new(State {
                current: 0.0,
                last_print: 0.0,
            }),
        }
    }

    /// qemu's `qemu_progress_print(delta, max)`: with `max == 0` sets the
    /// percentage to `delta`, otherwise adds `delta / 100 * max`.
    pub fn print(&self, delta: f32, max: i32) {
        let mut state = lock(&self.state);
        let mut current = if max == 0 {
            delta
        } else {
            state.current + delta / 100.0 * max as f32
        };
        if current > 100.0 {
            current = 100.0;
        }
        state.current = current;
        if self.shown
            && (current > state.last_print + self.min_skip || current == 100.0 || current == 0.0)
        {
            state.last_print = current;
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "    ({:3.2}/100%)\r", current as f64);
            let _ = out.flush();
        }
        if USR1.swap(false, Ordering::Relaxed) {
            errln!("    ({:3.2}/100%)", current as f64);
        }
    }

    /// Sets the percentage from work done out of a total, as convert does.
    pub fn fraction(&self, done: u64, total: u64) {
        let pct = if total == 0 {
            100.0
        } else {
            (100.0 * done as f64 / total as f64) as f32
        };
        self.print(pct, 0);
    }

    /// True if figures are printed on stdout.
    pub fn shown(&self) -> bool {
        self.shown
    }

    /// Ends the report: one newline when shown.
    pub fn end(&self) {
        if self.shown {
            outln!();
        }
    }
}
