//! Interrupted commands clean up as failed ones do. SIGINT, SIGTERM and
//! SIGHUP (unless the process started with them ignored) are taken by a
//! watcher thread instead of killing the process at once: it removes the
//! new target a copy registered (see [`discard_on_signal`]), then lets the
//! same signal end the process, so the exit status is the one qemu-img
//! gives (it does not catch them, and leaves the half-written target).

use crate::sync::lock;
use std::sync::Mutex;

/// The signals a user or a service manager stops a command with.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The target to remove if a signal ends the process.
static TARGET: Mutex<Option<String>> = Mutex::new(None);

/// Starts the watcher. Call it first in `main`, before any other thread
/// exists: the signals are blocked in the calling thread, and every thread
/// started later inherits that.
pub fn watch() {
    // SAFETY: sigset and sigaction calls on local, initialised structures.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in SIGNALS {
            let mut old: libc::sigaction = std::mem::zeroed();
            let ignored = libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN;
            if !ignored {
                libc::sigaddset(&mut set, sig);
            }
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        let started = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || wait_and_end(set));
        if started.is_err() {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

/// Waits for one of the signals in `set`, removes the registered target,
/// and ends the process by that signal.
fn wait_and_end(set: libc::sigset_t) {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised; sigwait writes the signal number. It
    // fails only for a set it cannot wait on, which this one is not.
    if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
        return;
    }
    if let Some(target) = lock(&TARGET).take() {
        crate::confine::discard_target(&target);
    }
    // SAFETY: the default action for a terminating signal, unblocked in
    // this thread only, then raised in it: the process ends by `sig`.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut one: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut one);
        libc::sigaddset(&mut one, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
        libc::raise(sig);
    }
    std::process::exit(128 + sig);
}

/// Registers `target`, a file this command creates, for removal if a
/// signal ends the process before the returned guard is dropped.
pub fn discard_on_signal(target: &str) -> Registered {
    *lock(&TARGET) = Some(target.to_string());
    Registered
}

/// A target registered with [`discard_on_signal`]; dropping it keeps the
/// target whatever comes.
pub struct Registered;

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&TARGET).take();
    }
}
