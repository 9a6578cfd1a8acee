//! `amend`: change format options of an existing image.

use super::common::{cache_mode, check_image_opts, metadata, objects, open_rw, print_help};
use crate::cli::{flag, getopt, long_arg, long_flag, merge_opts, with_arg, Opt};
use crate::error::{fail, CmdError, CmdResult};
use crate::store::CacheMode;
use qimg_driver_api::caps;
use qimg_driver_api::schema::MetadataRequest;

const OPTS: &[Opt] = &[
    flag('h', "help"),
    flag('q', "quiet"),
    flag('p', "progress"),
    with_arg('f', "format"),
    long_flag("image-opts"),
    with_arg('t', "cache"),
    with_arg('o', "options"),
    long_flag("force"),
    long_arg("object"),
];

const HELP: &str = "Usage:\nUpdate format-specific options of the image.  Usage:\n\n  {prog} amend [-f FMT | --image-opts] [-t CACHE] [--force] [-p] [-q]\n        [--object OBJDEF] -o OPTIONS FILENAME\n\nArguments:\n  -h, --help\n     print this help and exit\n  -q, --quiet\n     print nothing but errors\n  -p, --progress\n     show progress\n  -f, --format FMT\n     the format of FILENAME (probed when omitted)\n  --image-opts\n     FILENAME is an option string (driver=...,file.filename=...)\n  -t, --cache CACHE\n     cache mode (writeback)\n  -o OPTIONS\n     the options to change\n  --force\n     allow changes that may lose information\n\n";

inventory::submit! { super::Command { name: "amend", summary: "Update format-specific options of the image", run } }

fn run(args: &[String]) -> CmdResult {
    let p = getopt("amend", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    objects(&p)?;
    check_image_opts(&p, "format")?;
    let lists = p.all("options");
    if lists.is_empty() {
        return Err(CmdError::usage("amend", "Must specify options (-o)"));
    }
    if p.operands.len() != 1 {
        return Err(fail("Expecting one image file name"));
    }
    let cache = cache_mode(p.last("cache"), CacheMode::Writeback, "cache")?;
    let image = open_rw(&p.operands[0], p.last("format"), p.has("image-opts"), cache)?;
    if !image.driver.can(caps::AMEND) {
        return Err(fail(format!(
            "Format driver '{}' does not support option amendment",
            image.format()
        )));
    }
    let options = merge_opts(&lists).map_err(fail)?;
    metadata(
        &image,
        &MetadataRequest::Amend {
            options,
            force: p.has("force"),
        },
    )
    .map_err(|e| fail(e.message.to_string()))?;
    image.close().map_err(|e| fail(e.message.to_string()))?;
    Ok(0)
}
