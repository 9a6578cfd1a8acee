//! `rebase`: change an image's backing file, copying what differs (safe mode)
//! or only rewriting the header (`-u`).

use super::common::{cache_mode, check_image_opts, objects, print_help};
use crate::block::image::{driver_for, inner_open_message};
use crate::block::spec::{is_protocol, relative_to};
use crate::block::{open_image, LockSpec, OpenRequest};
use crate::cli::{flag, getopt, long_arg, long_flag, with_arg, Opt};
use crate::engine::chain::RebaseJob;
use crate::engine::progress::Progress;
use crate::error::{fail, CmdError, CmdResult};
use crate::store::CacheMode;
use qimg_driver_api::caps;

const OPTS: &[Opt] = &[
    flag('h', "help"),
    flag('q', "quiet"),
    flag('p', "progress"),
    flag('U', "force-share"),
    with_arg('f', "format"),
    long_flag("image-opts"),
    with_arg('t', "cache"),
    with_arg('b', "backing"),
    with_arg('F', "backing-format"),
    with_arg('T', "backing-cache"),
    flag('u', "backing-unsafe"),
    flag('c', "compress"),
    long_arg("object"),
];

const HELP: &str = "Usage:\nChange backing file of the image.  Usage:\n\n  {prog} rebase [-f FMT | --image-opts] [-t CACHE] [-q] [-U] [-p]\n        [-b BACKING_FILENAME [-F BACKING_FMT] [-T BACKING_CACHE]] [-u]\n        [--object OBJDEF] [-c] FILENAME\nRebases FILENAME on top of BACKING_FILENAME or no backing file\n\nArguments:\n  -h, --help\n     print this help and exit\n  -q, --quiet\n     print nothing but errors\n  -p, --progress\n     show progress\n  -f, --format FMT\n     the format of FILENAME (probed when omitted)\n  --image-opts\n     FILENAME is an option string (driver=...,file.filename=...)\n  -t, --cache CACHE\n     cache mode of FILENAME (writeback)\n  -b, --backing BACKING_FILENAME|\"\"\n     the new backing file (\"\" for none)\n  -F, --backing-format BACKING_FMT\n     format of BACKING_FILENAME\n  -T, --backing-cache CACHE\n     cache mode of the backing files (writeback)\n  -u, --backing-unsafe\n     only rewrite the header, copy nothing\n  -c, --compress\n     write copied clusters compressed\n  -U, --force-share\n     open the images in shared mode\n  --object OBJDEF\n     a secret (secret,id=ID,data=...|file=...)\n  FILENAME\n     the image to rebase\n\n";

inventory::submit! { super::Command { name: "rebase", summary: "Change backing file of the image", run } }

fn run(args: &[String]) -> CmdResult {
    let p = getopt("rebase", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    objects(&p)?;
    check_image_opts(&p, "format")?;
    if p.operands.len() != 1 {
        return Err(CmdError::usage("rebase", "Expecting one image file name"));
    }
    let unsafe_mode = p.has("backing-unsafe");
    let Some(backing) = p
        .last("backing")
        .map(str::to_string)
        .or_else(|| unsafe_mode.then(String::new))
    else {
        return Err(CmdError::usage(
            "rebase",
            "Must specify backing file (-b) or use unsafe mode (-u)",
        ));
    };
    let cache = cache_mode(p.last("cache"), CacheMode::Writeback, "cache")?;
    let backing_cache = cache_mode(
        p.last("backing-cache"),
        CacheMode::Writeback,
        "source cache",
    )?;
    let progress = Progress::start(p.has("progress") && !p.has("quiet"), 1.0);
    progress.print(0.0, 100);
    let result = rebase(&p, &backing, unsafe_mode, cache, backing_cache, &progress);
    progress.end();
    result
}

fn rebase(
    p: &crate::cli::Parsed,
    backing: &str,
    unsafe_mode: bool,
    cache: CacheMode,
    backing_cache: CacheMode,
    progress: &Progress,
) -> CmdResult {
    // Unsafe mode only rewrites the header: the old backing file is not
    // opened, so a missing one can be replaced (what -u is mostly for).
    let image = open_image(&OpenRequest {
        write: true,
        cache,
        lock: Some(LockSpec::READ_WRITE),
        no_backing: unsafe_mode,
        ..OpenRequest::read(&p.operands[0], p.last("format"), p.has("image-opts"))
    })
    .map_err(|e| fail(e.message.to_string()))?;
    if p.has("compress") && !image.driver.can(caps::COMPRESSED_WRITES) {
        return Err(fail("Compression not supported for this file format"));
    }
    let change_error = |reason: &str| {
        fail(format!(
            "Could not change the backing file to '{backing}': {reason}"
        ))
    };
    let format = p.last("backing-format").map(str::to_string);
    if let Some(f) = &format {
        if driver_for(f).is_err() && !is_protocol(f) {
            return Err(fail(format!("Invalid format name: '{f}'")));
        }
    }
    let mut new_backing = None;
    if !unsafe_mode && !backing.is_empty() {
        // The new backing file is named relative to the image, as in its header.
        let resolved = relative_to(&image.filename, backing);
        let opened = open_image(&OpenRequest {
            cache: backing_cache,
            // -U shares only the new backing file, as in qemu-img.
            lock: Some(LockSpec::reader(p.has("force-share"))),
            ..OpenRequest::read(&resolved, format.as_deref(), false)
        })
        .map_err(|e| {
            fail(format!(
                "Could not open new backing file '{backing}': {}",
                inner_open_message(&resolved, &e.message)
            ))
        })?;
        new_backing = Some(opened);
    }
    if !backing.is_empty() && format.is_none() {
        return Err(change_error("backing format must be specified"));
    }
    if !image.driver.can(caps::BACKING) {
        progress.print(100.0, 0);
        return Err(change_error("Operation not supported"));
    }
    if !unsafe_mode {
        let cluster = image
            .info()
            .ok()
            .and_then(|i| i.cluster_size)
            .unwrap_or(65536);
        let job = RebaseJob {
            image: &image,
            new_backing: new_backing.as_ref(),
            compress: p.has("compress"),
            cluster,
        };
        job.run(progress).map_err(|e| fail(e.message.to_string()))?;
    }
    let name = (!backing.is_empty()).then_some(backing);
    let format = format.filter(|_| !backing.is_empty());
    image
        .set_backing(name, format.as_deref())
        .map_err(|e| change_error(&e.message))?;
    image.close().map_err(|e| fail(e.message.to_string()))?;
    progress.print(100.0, 0);
    Ok(0)
}
