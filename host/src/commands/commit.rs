//! `commit`: write an overlay's data into its backing image.

use super::common::{cache_mode, check_image_opts, number, objects, open_rw, print_help};
use crate::cli::{flag, getopt, long_arg, long_flag, with_arg, Opt};
use crate::engine::progress::Progress;
use crate::error::{fail, CmdError, CmdResult};
use crate::store::CacheMode;

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
    if let Some(rate) = p.last("rate") {
        number("rate limit", rate, 0, i64::MAX as u64, true)?;
    }
    let cache = cache_mode(p.last("cache"), CacheMode::Writeback, "cache")?;
    let progress = Progress::start(p.has("progress") && !p.has("quiet"), 1.0);
    progress.print(0.0, 100);
    let result = commit(&p, cache);
    progress.end();
    result
}

fn commit(p: &crate::cli::Parsed, cache: CacheMode) -> CmdResult {
    let name = &p.operands[0];
    let image = open_rw(name, p.last("format"), p.has("image-opts"), cache)?;
    if let Some(base) = p.last("base") {
        let mut layer = image.backing.clone();
        while let Some(l) = layer {
            if l.filename == base {
                return Err(commit_unsupported(&image));
            }
            layer = l.backing.clone();
        }
        return Err(fail(format!(
            "Did not find '{base}' in the backing chain of '{name}'"
        )));
    }
    if image.backing.is_none() {
        return Err(fail("Image does not have a backing file"));
    }
    Err(commit_unsupported(&image))
}

/// Committing needs a driver that keeps backing chains, which no driver
/// loaded in this build provides yet.
fn commit_unsupported(image: &crate::block::BlockImage) -> CmdError {
    fail(format!(
        "Committing is not supported yet for format '{}' (the driver lacks the backing capability)",
        image.format()
    ))
}
