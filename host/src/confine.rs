//! `--confine`: a mode for services that process images from strangers.
//!
//! An image may not name any other file: backing files, external data
//! files and extent files are refused when a driver asks for them. And
//! before any image is parsed, the process loads its drivers, then confines
//! itself: Landlock limits its file access to the files the command names
//! (inputs read, the output read and written), and a seccomp filter refuses
//! running programs, the network and the other ways out of the process. A
//! parser bug can then reach nothing but the files at hand. Where the kernel
//! lacks either mechanism qimg warns and goes on with what it has.

use crate::error::{fail, CmdError};
use crate::sync::lock;
use landlock::{
    Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, ABI,
};
use qimg_driver_api::{DriverError, ErrorKind};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The commands that know which files they touch, and so can be confined.
pub const COMMANDS: &[&str] = &["check", "compare", "convert", "info", "map", "measure"];

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Outputs created empty before confinement (they count as new targets).
static PRECREATED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Asks for confinement (`--confine` was given).
pub fn request() {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// True if `--confine` was given.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// The message for an image that names another file under `--confine`.
pub fn named_file_refused(name: &str) -> String {
    format!("--confine forbids an image naming another file ('{name}')")
}

/// Refuses, under `--confine`, a file an image names (backing, data or
/// extent file).
pub fn admit_named_file(name: &str) -> Result<(), DriverError> {
    if requested() {
        return Err(DriverError::new(
            ErrorKind::PERMISSION,
            named_file_refused(name),
        ));
    }
    Ok(())
}

/// True if `path` was created empty by [`enter`]: the command treats it as
/// a target it creates.
pub fn precreated(path: &str) -> bool {
    lock(&PRECREATED).iter().any(|p| p == Path::new(path))
}

/// Files the command created beside the image it creates (an external
/// data file, vmdk extents): discarded with it.
static BESIDE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Notes that the command created `path`, a file the image it creates
/// names, so that [`discard_target`] removes it too.
pub fn created_beside(path: &Path) {
    lock(&BESIDE).push(path.to_path_buf());
}

/// Removes a target a failed command created, and the files created beside
/// it; under confinement, where the directory cannot be changed, empties
/// it instead, so that nothing that could pass for an image is left.
pub fn discard_target(path: &str) {
    if crate::block::spec::remote_scheme(path).is_some() {
        crate::block::image::unformat_remote(path);
    } else {
        remove_or_empty(Path::new(
            crate::block::spec::local_path(path).unwrap_or(path),
        ));
    }
    for beside in std::mem::take(&mut *lock(&BESIDE)) {
        remove_or_empty(&beside);
    }
}

/// Removes the file `path` names, through any symbolic links (a link
/// stays: the command made only the file behind it).
fn remove_or_empty(path: &Path) {
    let Ok(path) = std::fs::canonicalize(path) else {
        return;
    };
    if std::fs::remove_file(&path).is_err() {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(0));
    }
}

/// Confines the process to reading `inputs` and reading and writing
/// `outputs` (created empty first if missing), if `--confine` was given.
/// Call it after parsing the command line and before opening any image.
pub fn enter(inputs: &[PathBuf], outputs: &[PathBuf]) -> Result<(), CmdError> {
    if !requested() {
        return Ok(());
    }
    // Sockets are outside the confinement's allowed system calls.
    let remote = inputs.iter().chain(outputs).find(|p| {
        p.to_str()
            .and_then(crate::block::spec::remote_scheme)
            .is_some()
    });
    if let Some(name) = remote {
        return Err(fail(format!(
            "--confine: '{}' is a network store; a confined qimg reaches only the local files it names",
            name.display()
        )));
    }
    // Every enabled driver is loaded now: their libraries are files too.
    let _ = crate::commands::registry().all();
    // The stack-growth guard learns this thread's stack from /proc, which
    // is out of reach once confined.
    crate::block::services::on_deep_stack(|| ());
    for out in outputs {
        if !out.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .map_err(|e| fail(format!("{}: {}", out.display(), io_text(&e))))?;
            lock(&PRECREATED).push(out.clone());
        }
    }
    match restrict_files(inputs, outputs) {
        Ok(RulesetStatus::FullyEnforced) => {}
        Ok(_) => warn("the kernel does not enforce Landlock fully: file access is not confined"),
        Err(e) => warn(&format!("Landlock: {e}: file access is not confined")),
    }
    if let Err(e) = restrict_syscalls() {
        warn(&format!("seccomp: {e}: system calls are not confined"));
    }
    Ok(())
}

fn warn(message: &str) {
    errln!("{}: warning: --confine: {message}", crate::cli::program());
}

fn io_text(e: &std::io::Error) -> String {
    qimg_driver_api::error::io_message(e)
}

/// The file behind an image operand (the path in a `json:` name or an
/// option string), for the confinement rules.
pub fn image_file(name: &str, image_opts: bool) -> PathBuf {
    crate::block::spec::resolve(name, image_opts)
        .map(|spec| PathBuf::from(spec.path))
        .unwrap_or_else(|_| PathBuf::from(name))
}

/// Limits file access to `inputs` (read) and `outputs` (read, write, truncate).
fn restrict_files(
    inputs: &[PathBuf],
    outputs: &[PathBuf],
) -> Result<RulesetStatus, Box<dyn std::error::Error>> {
    let abi = ABI::V5;
    let read: BitFlags<AccessFs> = AccessFs::ReadFile.into();
    let write = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?;
    for (paths, access) in [(inputs, read), (outputs, write)] {
        for path in paths {
            // A name that does not exist is opened by nobody.
            if let Ok(fd) = PathFd::new(path) {
                ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
            }
        }
    }
    Ok(ruleset.restrict_self()?.ruleset)
}

/// System calls a confined qimg never makes: running programs, networking,
/// debugging other processes, namespaces and mounts, kernel modules.
const DENIED: &[i64] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_fork,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_vfork,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_chroot,
    libc::SYS_pivot_root,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_io_uring_setup,
    libc::SYS_userfaultfd,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
];

/// Installs a seccomp filter failing every [`DENIED`] call with EPERM, on
/// every thread of the process.
fn restrict_syscalls() -> Result<(), Box<dyn std::error::Error>> {
    let rules = DENIED
        .iter()
        .map(|&nr| (nr, Vec::new()))
        .collect::<BTreeMap<_, _>>();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        std::env::consts::ARCH.try_into()?,
    )?;
    let program: BpfProgram = filter.try_into()?;
    seccompiler::apply_filter_all_threads(&program)?;
    Ok(())
}
