//! `compare`: do two images have the same guest content?

use super::common::{cache_mode, objects, print_help};
use crate::block::{open_image, LockSpec, OpenRequest};
use crate::cli::{flag, getopt, long_arg, long_flag, with_arg, Opt};
use crate::engine::compare::compare;
use crate::engine::progress::Progress;
use crate::error::{fail, CmdError, CmdResult};
use crate::store::CacheMode;
use qimg_driver_api::DriverError;

const OPTS: &[Opt] = &[
    flag('h', "help"),
    flag('q', "quiet"),
    flag('p', "progress"),
    with_arg('f', "a-format"),
    with_arg('F', "b-format"),
    long_flag("image-opts"),
    flag('s', "strict"),
    with_arg('T', "cache"),
    flag('U', "force-share"),
    long_arg("object"),
];

const HELP: &str = "Usage:\nCheck if two images have the same contents.  Usage:\n\n  {prog} compare [--image-opts | [-f FMT] [-F FMT]] [-s]\n        [-T CACHE] [-U] [--object OBJDEF] FILENAME1 FILENAME2\n\nArguments:\n  -h, --help\n     print this help and exit\n  -q, --quiet\n     print nothing, only set the exit status\n  -p, --progress\n     show progress\n  -f, --a-format FMT\n     format of FILENAME1\n  -F, --b-format FMT\n     format of FILENAME2\n  --image-opts\n     FILENAMEs are option strings (driver=...,file.filename=...)\n  -s, --strict\n     also require equal sizes and allocation\n  -T, --cache CACHE_MODE\n     cache mode of both images (writeback)\n  -U, --force-share\n     open the images in shared mode\n  --object OBJDEF\n     a secret (secret,id=ID,data=...|file=...)\n  FILENAME1, FILENAME2\n     the images to compare\n\nExit status: 0 identical, 1 different, 2 error opening an image,\n3 error reading allocation, 4 error reading data.\n\n";

inventory::submit! { super::Command { name: "compare", summary: "Check if two images have the same contents", run } }

/// Exit status of compare for any error other than a usage error.
const ERROR_STATUS: i32 = 2;

fn run(args: &[String]) -> CmdResult {
    match compare_command(args) {
        Err(CmdError::Failed(message)) => {
            errln!("{}: {message}", crate::cli::program());
            Ok(ERROR_STATUS)
        }
        other => other,
    }
}

fn compare_command(args: &[String]) -> CmdResult {
    let p = getopt("compare", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    objects(&p)?;
    if p.has("image-opts") && p.has("a-format") {
        return Err(fail("--image-opts and --format are mutually exclusive"));
    }
    let quiet = p.has("quiet");
    if p.operands.len() != 2 {
        return Err(CmdError::usage("compare", "Expecting two image file names"));
    }
    let cache = cache_mode(p.last("cache"), CacheMode::Writeback, "source cache")?;
    let progress = Progress::start(p.has("progress") && !quiet, 2.0);
    let image_opts = p.has("image-opts");
    let force_share = p.has("force-share");
    let files: Vec<_> = p
        .operands
        .iter()
        .map(|name| crate::confine::image_file(name, image_opts))
        .collect();
    crate::confine::enter(&files, &[])?;
    let open = |name: &str, format: Option<&str>| {
        if image_opts && format.is_some() {
            return Err(DriverError::invalid_argument(
                "--image-opts and --format are mutually exclusive",
            ));
        }
        open_image(&OpenRequest {
            cache,
            lock: Some(LockSpec::reader(force_share)),
            ..OpenRequest::read(name, format, image_opts)
        })
    };
    // As in qemu-img, -F meets --image-opts only when the second image opens.
    let opened = open(&p.operands[0], p.last("a-format"))
        .and_then(|a| Ok((a, open(&p.operands[1], p.last("b-format"))?)));
    let (a, b) = match opened {
        Ok(pair) => pair,
        Err(e) => {
            progress.end();
            errln!("{}: {}", crate::cli::program(), e.message);
            return Ok(ERROR_STATUS);
        }
    };
    progress.print(0.0, 100);
    let mut say = |line: &str| {
        if !quiet {
            outln!("{line}");
        }
    };
    let result = compare(&a, &b, p.has("strict"), &progress, &mut say);
    progress.end();
    match result {
        Ok(status) => Ok(status),
        Err(e) => {
            errln!("{}: {e}", crate::cli::program());
            Ok(e.exit_code())
        }
    }
}
