//! `snapshot`: list, create, apply or delete internal snapshots.

use super::common::{
    check_image_opts, metadata, objects, open_rw, print_help, refuse_shared_write,
};
use crate::block::{open_image, BlockImage, LockSpec, OpenRequest};
use crate::cli::{flag, getopt, long_arg, long_flag, with_arg, Opt};
use crate::error::{fail, CmdError, CmdResult};
use crate::output::size_to_str;
use crate::store::CacheMode;
use qimg_driver_api::caps;
use qimg_driver_api::schema::{MetadataRequest, SnapshotInfo};

const OPTS: &[Opt] = &[
    flag('h', "help"),
    flag('q', "quiet"),
    with_arg('f', "format"),
    long_flag("image-opts"),
    flag('U', "force-share"),
    long_arg("object"),
    flag('l', "list"),
    // The long forms take no name in qemu-img 10.0.2's table.
    with_arg('c', "").keyed("create"),
    with_arg('a', "").keyed("apply"),
    with_arg('d', "").keyed("delete"),
    long_flag("create"),
    long_flag("apply"),
    long_flag("delete"),
];

const HELP: &str = "Usage:\nList or manipulate snapshots within image.  Usage:\n\n  {prog} snapshot [-f FMT | --image-opts] [-l | -a|-c|-d SNAPSHOT]\n        [-U] [--object OBJDEF] FILENAME\n\nArguments:\n  -h, --help\n     print this help and exit\n  -q, --quiet\n     print nothing but errors\n  -f, --format FMT\n     the format of FILENAME (probed when omitted)\n  --image-opts\n     FILENAME is an option string (driver=...,file.filename=...)\n  -U, --force-share\n     open the image in shared mode\n  --object OBJDEF\n     a secret (secret,id=ID,data=...|file=...)\n  Operation, one of:\n    -l, --list\n       list the snapshots (the default)\n    -c, --create SNAPSHOT\n       create a snapshot\n    -a, --apply SNAPSHOT\n       revert the image to a snapshot\n    -d, --delete SNAPSHOT\n       delete a snapshot\n  FILENAME\n     the image\n\n";

inventory::submit! { super::Command { name: "snapshot", summary: "List or manipulate snapshots within image", run } }

fn run(args: &[String]) -> CmdResult {
    let p = getopt("snapshot", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    // As qemu-img: a second action option, even the same one again, is an
    // error.
    let actions: Vec<&str> = p
        .opts
        .iter()
        .map(|(key, _)| key.as_str())
        .filter(|key| ["list", "create", "apply", "delete"].contains(key))
        .collect();
    if actions.len() > 1 {
        return Err(CmdError::usage(
            "snapshot",
            "Cannot mix '-l', '-a', '-c', '-d'",
        ));
    }
    objects(&p)?;
    check_image_opts(&p, "format")?;
    if p.operands.len() != 1 {
        return Err(CmdError::usage("snapshot", "Expecting one image file name"));
    }
    let name = &p.operands[0];
    let (format, image_opts) = (p.last("format"), p.has("image-opts"));
    let action = actions.first().copied().unwrap_or("list");
    let force_share = p.has("force-share");
    if action == "list" {
        // The chain is opened, as by qemu-img (a held or missing backing
        // file fails the listing).
        let image = open_image(&OpenRequest {
            lock: Some(LockSpec::reader(force_share)),
            ..OpenRequest::read(name, format, image_opts)
        })
        .map_err(|e| fail(e.message.to_string()))?;
        let info = image.info().map_err(|e| fail(e.message.to_string()))?;
        if !info.snapshots.is_empty() {
            out!("{}", snapshot_table(&info.snapshots));
        }
        return Ok(0);
    }
    // qemu-img's long forms take no name (and it then crashes): refuse.
    let Some(tag) = p.last(action).map(str::to_string) else {
        return Err(CmdError::usage(
            "snapshot",
            format!(
                "option '--{action}' gives no snapshot name; use -{}",
                &action[..1]
            ),
        ));
    };
    if force_share {
        return Err(refuse_shared_write(name, format));
    }
    let image = open_rw(name, format, image_opts, CacheMode::Writeback)?;
    let (verb, request, unsupported) = match action {
        "create" => (
            "create",
            // qemu-img keeps at most 255 bytes of a name.
            MetadataRequest::SnapshotCreate {
                name: truncated(&tag, 255),
            },
            "Operation not supported",
        ),
        "apply" => (
            "apply",
            MetadataRequest::SnapshotApply { name: tag.clone() },
            "Block driver does not support snapshots",
        ),
        _ => (
            "delete",
            MetadataRequest::SnapshotDelete { name: tag.clone() },
            "snapshot not found",
        ),
    };
    if !image.driver.can(caps::SNAPSHOTS) {
        return Err(fail(format!(
            "Could not {verb} snapshot '{tag}': {unsupported}"
        )));
    }
    let request = match request {
        MetadataRequest::SnapshotDelete { .. } => {
            // qemu-img deletes the first snapshot with this name (not id).
            let info = image.info().map_err(|e| fail(e.message.to_string()))?;
            let Some(found) = info.snapshots.iter().find(|s| s.name == tag) else {
                return Err(fail(format!(
                    "Could not delete snapshot '{tag}': snapshot not found"
                )));
            };
            MetadataRequest::SnapshotDelete {
                name: found.id.clone(),
            }
        }
        other => other,
    };
    metadata(&image, &request)
        .map_err(|e| fail(format!("Could not {verb} snapshot '{tag}': {}", e.message)))?;
    image.close().map_err(|e| fail(e.message.to_string()))?;
    Ok(0)
}

/// The internal snapshot `convert -l` and `measure -l` read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotParam {
    /// `-l NAME`: an id, else a name.
    IdOrName(String),
    /// `-l snapshot.id=ID,snapshot.name=NAME` (either or both).
    Exact {
        /// `snapshot.id`.
        id: Option<String>,
        /// `snapshot.name`.
        name: Option<String>,
    },
}

/// Parses `-l`'s argument as qemu-img does, with its two-line message for
/// an unknown parameter.
pub fn parse_snapshot_param(text: &str) -> Result<SnapshotParam, CmdError> {
    if !text.starts_with("snapshot.") {
        return Ok(SnapshotParam::IdOrName(text.to_string()));
    }
    let items = crate::cli::parse_opts(text, None).map_err(fail)?;
    let (mut id, mut name) = (None, None);
    for (key, value) in items {
        match key.as_str() {
            "snapshot.id" => id = Some(value),
            "snapshot.name" => name = Some(value),
            _ => {
                return Err(fail(format!(
                    "Invalid parameter '{key}'\n{}: Failed in parsing snapshot param '{text}'",
                    crate::cli::program()
                )))
            }
        }
    }
    Ok(SnapshotParam::Exact { id, name })
}

/// Makes `image` (opened read-only) read as the snapshot `param` names,
/// with qemu-img's messages.
pub fn load_snapshot(image: &BlockImage, param: &SnapshotParam) -> Result<(), CmdError> {
    if !image.driver.can(caps::SNAPSHOTS) {
        return Err(fail(format!(
            "Failed to load snapshot: Block format '{}' used by device '' does not support temporarily loading internal snapshots",
            image.format()
        )));
    }
    let load = |id: Option<&str>, name: Option<&str>| {
        metadata(
            image,
            &MetadataRequest::SnapshotLoad {
                id: id.map(String::from),
                name: name.map(String::from),
            },
        )
    };
    let result = match param {
        SnapshotParam::Exact { id, name } => load(id.as_deref(), name.as_deref()),
        SnapshotParam::IdOrName(key) => match load(Some(key), None) {
            Err(e) if e.errno == 2 => load(None, Some(key)),
            other => other,
        },
    };
    result
        .map(|_| ())
        .map_err(|e| fail(format!("Failed to load snapshot: {}", e.message)))
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// The table `snapshot -l` and `info` print (column layout measured on
/// qemu-img 10.0.2: ID 7 wide, TAG 16, then right-aligned VM_SIZE 8, DATE 19,
/// VM_CLOCK 15, ICOUNT 10).
pub fn snapshot_table(snapshots: &[SnapshotInfo]) -> String {
    // Names are padded by bytes, as C's printf pads them (a name that is
    // not ASCII stays narrower on screen).
    let pad = |text: &str, width: usize| {
        format!("{text}{}", " ".repeat(width.saturating_sub(text.len())))
    };
    let row = |id: &str, tag: &str, size: &str, date: &str, clock: &str, icount: &str| {
        let (id, tag) = (pad(id, 7), pad(tag, 16));
        format!("{id} {tag} {size:>8} {date:>19} {clock:>15} {icount:>10}\n")
    };
    let mut out = String::from("Snapshot list:\n");
    out.push_str(&row("ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"));
    for s in snapshots {
        let clock = s.vm_clock_nsec;
        let secs = clock / 1_000_000_000;
        let vm_clock = format!(
            "{:04}:{:02}:{:02}.{:03}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            (clock / 1_000_000) % 1000
        );
        // A snapshot from before QEMU kept instruction counts has none.
        let icount = s.icount.map_or_else(|| "--".to_string(), |i| i.to_string());
        out.push_str(&row(
            &s.id,
            &s.name,
            &size_to_str(s.vm_state_size),
            &format_date(s.date_sec),
            &vm_clock,
            &icount,
        ));
    }
    out
}

/// Local time as `YYYY-MM-DD HH:MM:SS`, as qemu prints snapshot dates.
fn format_date(secs: u64) -> String {
    // SAFETY: localtime_r writes into the tm we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t = secs as libc::time_t;
    unsafe { libc::localtime_r(&t, &mut tm) };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}
