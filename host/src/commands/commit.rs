//! `commit`: write an overlay's data into its backing image.

use super::common::{cache_mode, check_image_opts, number, objects, print_help};
use crate::block::image::inner_open_message;
use crate::block::spec::relative_to;
use crate::block::{open_image, BlockImage, LockSpec, OpenRequest};
use crate::cli::{flag, getopt, long_arg, long_flag, with_arg, Opt};
use crate::engine::chain::commit;
use crate::engine::progress::Progress;
use crate::engine::ratelimit::RateLimit;
use crate::error::{fail, CmdError, CmdResult};
use crate::store::CacheMode;
use qimg_driver_api::{caps, ErrorKind, Prealloc};
use std::sync::Arc;

/// The formats whose images qemu can grow (its drivers with a truncate):
/// the only bases commit grows to the top's size.
const GROWN_BY_QEMU: [&str; 4] = ["raw", "qcow2", "qed", "luks"];

const OPTS: &[Opt] = &[
    flag('h', "help"),
    flag('q', "quiet"),
    flag('p', "progress"),
    with_arg('f', "format"),
    long_flag("image-opts"),
    with_arg('t', "cache"),
    flag('d', "drop"),
    with_arg('b', "base"),
    with_arg('r', "rate"),
    long_arg("object"),
];

const HELP: &str = "Usage:\nCommit image to its backing file.  Usage:\n\n  {prog} commit [-f FMT | --image-opts] [-t CACHE_MODE] [-b BASE_IMG] [-d]\n        [-r RATE] [--object OBJDEF] FILENAME\n\nArguments:\n  -h, --help\n     print this help and exit\n  -q, --quiet\n     print nothing but errors\n  -p, --progress\n     show progress\n  -f, --format FMT\n     the format of FILENAME (probed when omitted)\n  --image-opts\n     FILENAME is an option string (driver=...,file.filename=...)\n  -t, --cache CACHE_MODE\n     cache mode (writeback)\n  -d, --drop\n     do not empty FILENAME afterwards\n  -b, --base BASE_IMG\n     commit into this image of the chain instead of the backing file\n     (implies --drop)\n  -r, --rate RATE\n     I/O rate limit in bytes per second\n  --object OBJDEF\n     a secret (secret,id=ID,data=...|file=...)\n  FILENAME\n     the overlay to commit\n\n";

inventory::submit! { super::Command { name: "commit", summary: "Commit image to its backing file", run } }

fn run(args: &[String]) -> CmdResult {
    let p = getopt("commit", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    objects(&p)?;
    check_image_opts(&p, "format")?;
    if p.operands.len() != 1 {
        return Err(CmdError::usage("commit", "Expecting one image file name"));
    }
    let rate = match p.last("rate") {
        Some(text) => number("rate limit", text, 0, i64::MAX as u64, true)?,
        None => 0,
    };
    let cache = cache_mode(p.last("cache"), CacheMode::Writeback, "cache")?;
    let quiet = p.has("quiet");
    let progress = Progress::start(p.has("progress") && !quiet, 1.0);
    progress.print(0.0, 100);
    let result = commit_command(&p, cache, rate, &progress);
    progress.end();
    if result.is_ok() && !quiet {
        outln!("Image committed.");
    }
    result
}

fn commit_command(
    p: &crate::cli::Parsed,
    cache: CacheMode,
    rate: u64,
    progress: &Progress,
) -> CmdResult {
    let name = &p.operands[0];
    let request = |shared_backing| OpenRequest {
        write: true,
        cache,
        lock: Some(LockSpec::READ_WRITE),
        shared_backing,
        ..OpenRequest::read(name, p.last("format"), p.has("image-opts"))
    };
    // The chain is opened sharing its backing files, for the base's
    // read-write reopening below not to meet this process's own locks. But
    // qemu-img opens it as an overlay's reader does, so a backing file
    // another process writes fails the commit there, in its words: that
    // open is tried too (a raw image, the one whose probing warns, has no
    // backing file to try it for).
    let mut top = open_image(&request(true)).map_err(|e| fail(e.message.to_string()))?;
    if top.backing.is_some() {
        drop(top);
        drop(open_image(&request(false)).map_err(|e| fail(e.message.to_string()))?);
        top = open_image(&request(true)).map_err(|e| fail(e.message.to_string()))?;
    }
    let (base_layer, depth) = match p.last("base") {
        Some(base) => find_in_chain(&top, base).ok_or_else(|| {
            fail(format!(
                "Did not find '{base}' in the backing chain of '{name}'"
            ))
        })?,
        None => match &top.backing {
            Some(b) => (b.clone(), 1),
            None => return Err(fail("Image does not have a backing file")),
        },
    };
    // Reopened with its own options (an encrypted base's key) and its own
    // backing chain: a write into part of one of its clusters copies the
    // rest of that cluster from there.
    let base = open_image(&OpenRequest {
        write: true,
        cache,
        lock: Some(LockSpec::RESIZE),
        options: base_layer.options.clone(),
        ..OpenRequest::read(&base_layer.filename, Some(base_layer.format()), false)
    })
    .map_err(|e| {
        // qemu-img reopens the base read-write, and a lock refused then is
        // not an open failure: no "Could not open" before it.
        if e.kind == ErrorKind::LOCKED {
            fail(inner_open_message(&base_layer.filename, &e.message).to_string())
        } else {
            fail(e.message.to_string())
        }
    })?
    .probed_as(base_layer.probed_raw());
    if top.size() > base.size() {
        // qimg's resize of the other formats is its own extension; commit
        // grows a base only where qemu-img's block job would.
        if !base.driver.can(caps::RESIZE) || !GROWN_BY_QEMU.contains(&base.driver.name.as_str()) {
            return Err(fail("Block job failed: Operation not supported"));
        }
        base.resize(top.size(), Prealloc::OFF, false)
            .map_err(|e| fail(e.message.to_string()))?;
    }
    // qemu-img runs the copy as a block job and words its failures so.
    commit(&top, &base, depth, &RateLimit::new(rate), progress)
        .map_err(|e| fail(format!("Block job failed: {}", e.message)))?;
    base.close().map_err(|e| fail(e.message.to_string()))?;
    // Emptying the overlay makes it read through to the base again; with -b the
    // layers between would then show through, so qemu-img keeps the data.
    if !p.has("drop") && p.last("base").is_none() {
        top.discard(0, top.size())
            .map_err(|e| fail(e.message.to_string()))?;
    }
    top.close().map_err(|e| fail(e.message.to_string()))?;
    progress.print(100.0, 0);
    Ok(0)
}

/// The layer of `top`'s chain that is the file `base` names (a relative name
/// is relative to the top image's directory, as qemu-img takes it), with its
/// depth.
fn find_in_chain(top: &BlockImage, base: &str) -> Option<(Arc<BlockImage>, usize)> {
    let resolved = relative_to(&top.filename, base);
    let wanted = std::fs::canonicalize(resolved).ok();
    let mut layer = top.backing.clone();
    let mut depth = 1;
    while let Some(l) = layer {
        let same_file = wanted.is_some() && std::fs::canonicalize(&l.filename).ok() == wanted;
        if same_file {
            return Some((l, depth));
        }
        layer = l.backing.clone();
        depth += 1;
    }
    None
}
