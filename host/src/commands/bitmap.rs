//! `bitmap`: add, remove, clear, enable, disable or merge persistent dirty bitmaps.

use super::common::{check_image_opts, metadata, objects, open_rw, print_help};
use crate::cli::{flag, getopt, long_arg, long_flag, with_arg, Opt, Parsed};
use crate::error::{fail, CmdResult};
use crate::store::CacheMode;
use qimg_driver_api::caps;
use qimg_driver_api::schema::MetadataRequest;

const OPTS: &[Opt] = &[
    flag('h', "help"),
    with_arg('f', "format"),
    long_flag("image-opts"),
    long_flag("add"),
    long_flag("remove"),
    long_flag("clear"),
    long_flag("enable"),
    long_flag("disable"),
    long_arg("merge"),
    with_arg('g', "granularity"),
    with_arg('b', "source-file"),
    with_arg('F', "source-format"),
    long_arg("object"),
];

const HELP: &str = "Usage:\nPerform modifications of the persistent bitmap in the image.  Usage:\n\n  {prog} bitmap ( --merge SOURCE | --add | --remove | --clear |\n                --enable | --disable ).. [-f FMT | --image-opts]\n        [ -b SRC_FILENAME [-F SOURCE_FMT]] [-g SIZE[KMGTPE]] [--object OBJDEF]\n        FILENAME BITMAP\n\nArguments:\n  -h, --help\n     print this help and exit\n  -f, --format FMT\n     the format of FILENAME (probed when omitted)\n  --image-opts\n     FILENAME is an option string (driver=...,file.filename=...)\n  --add\n     create BITMAP, recording future writes\n   -g, --granularity SIZE[KMGTPE]\n     granularity of a bitmap made by --add\n  --remove\n     remove BITMAP\n  --clear\n     clear BITMAP\n  --enable, --disable\n     start or stop recording writes in BITMAP\n  --merge SOURCE\n     merge bitmap SOURCE into BITMAP\n   -b, --source-file SRC_FILENAME\n     take SOURCE from this image\n   -F, --source-format SRC_FMT\n     format of SRC_FILENAME\n\n";

inventory::submit! { super::Command { name: "bitmap", summary: "Perform modifications of the persistent bitmap in the image", run } }

/// The operations in command-line order.
fn actions(p: &Parsed) -> Vec<(String, Option<String>)> {
    p.opts
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "add" | "remove" | "clear" | "enable" | "disable" | "merge"
            )
        })
        .cloned()
        .collect()
}

fn run(args: &[String]) -> CmdResult {
    let p = getopt("bitmap", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    objects(&p)?;
    check_image_opts(&p, "format")?;
    let ops = actions(&p);
    if ops.is_empty() {
        return Err(fail(
            "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge",
        ));
    }
    if p.operands.len() != 2 {
        return Err(fail("Expecting filename and bitmap name"));
    }
    let granularity = match p.last("granularity") {
        Some(t) => Some(super::common::number(
            "granularity",
            t,
            1,
            u32::MAX as u64,
            true,
        )?),
        None => None,
    };
    let (name, bitmap) = (&p.operands[0], &p.operands[1]);
    let image = open_rw(
        name,
        p.last("format"),
        p.has("image-opts"),
        CacheMode::Writeback,
    )?;
    for (action, source) in ops {
        if !image.driver.can(caps::BITMAPS) {
            let reason = if action == "add" {
                format!(
                    "Can't store persistent bitmaps to {}: Operation not supported",
                    image.filename
                )
            } else {
                format!("Dirty bitmap '{bitmap}' not found")
            };
            return Err(fail(format!(
                "Operation {action} on bitmap {bitmap} failed: {reason}"
            )));
        }
        let request = MetadataRequest::Bitmap {
            action: action.clone(),
            name: bitmap.clone(),
            granularity,
            source,
        };
        metadata(&image, &request).map_err(|e| {
            fail(format!(
                "Operation {action} on bitmap {bitmap} failed: {}",
                e.message
            ))
        })?;
    }
    image.close().map_err(|e| fail(e.message.to_string()))?;
    Ok(0)
}
