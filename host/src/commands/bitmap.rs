//! `bitmap`: add, remove, clear, enable, disable or merge persistent dirty bitmaps.

use super::common::{check_image_opts, metadata, objects, print_help};
use crate::block::{open_image, BlockImage, LockSpec, OpenRequest};
use crate::cli::{flag, getopt, long_arg, long_flag, with_arg, Opt, Parsed};
use crate::error::{fail, CmdResult};
use qimg_driver_api::caps;
use qimg_driver_api::schema::MetadataRequest;

const OPTS: &[Opt] = &[
    flag('h', "help"),
    with_arg('f', "").keyed("format"),
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
    // qemu-img reads -g with cvtnum: zero means not given; any other value
    // reaches the driver cut to 32 bits (4G becomes 0, then refused).
    let granularity = match p.last("granularity") {
        Some(t) => super::common::number("granularity", t, 0, i64::MAX as u64, true)?,
        None => 0,
    };
    objects(&p)?;
    check_image_opts(&p, "format")?;
    let ops = actions(&p);
    if ops.is_empty() {
        return Err(fail(
            "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge",
        ));
    }
    let has = |a: &str| ops.iter().any(|(k, _)| k == a);
    if granularity != 0 && !has("add") {
        return Err(fail("granularity only supported with --add"));
    }
    let source_file = p.last("source-file");
    if p.has("source-format") && source_file.is_none() {
        return Err(fail("-F only supported with -b"));
    }
    if source_file.is_some() && !has("merge") {
        return Err(fail("Merge bitmap source file only supported with --merge"));
    }
    if p.operands.len() != 2 {
        return Err(fail("Expecting filename and bitmap name"));
    }
    let (name, bitmap) = (&p.operands[0], &p.operands[1]);
    // Without its backing file, as qemu-img opens it.
    let image = open_image(&OpenRequest {
        write: true,
        no_backing: true,
        lock: Some(LockSpec::READ_WRITE),
        ..OpenRequest::read(name, p.last("format"), p.has("image-opts"))
    })
    .map_err(|e| fail(e.message.to_string()))?;
    let source = match source_file {
        Some(file) => Some(
            open_image(&OpenRequest {
                no_backing: true,
                lock: Some(LockSpec::READ_STABLE),
                ..OpenRequest::read(file, p.last("source-format"), false)
            })
            .map_err(|e| fail(e.message.to_string()))?,
        ),
        None => None,
    };
    let result = ops.iter().try_for_each(|(action, from)| {
        let granularity =
            (action == "add" && granularity != 0).then_some(u64::from(granularity as u32));
        apply(
            &image,
            source.as_ref(),
            action,
            bitmap,
            granularity,
            from.as_deref(),
        )
        .map_err(|message| {
            fail(format!(
                "Operation {action} on bitmap {bitmap} failed: {message}"
            ))
        })
    });
    // qemu-img closes the image (storing its bitmaps) whatever happened.
    let closed = image.close().map_err(|e| fail(e.message.to_string()));
    result?;
    closed?;
    Ok(0)
}

/// One operation on `bitmap` of `image`; a merge from `source` reads the
/// source bitmap's dirty ranges there and hands them to `image`.
pub(super) fn apply(
    image: &BlockImage,
    source: Option<&BlockImage>,
    action: &str,
    bitmap: &str,
    granularity: Option<u64>,
    from: Option<&str>,
) -> Result<(), String> {
    if !image.driver.can(caps::BITMAPS) {
        return Err(if action == "add" {
            format!(
                "Can't store persistent bitmaps to {}: Operation not supported",
                image.filename
            )
        } else {
            format!("Dirty bitmap '{bitmap}' not found")
        });
    }
    let request = |ranges: Option<Vec<[u64; 2]>>| MetadataRequest::Bitmap {
        action: action.to_string(),
        name: bitmap.to_string(),
        granularity,
        source: from.map(String::from),
        ranges,
    };
    let send = |req: &MetadataRequest| {
        metadata(image, req)
            .map(|_| ())
            .map_err(|e| e.message.to_string())
    };
    let Some(src) = source.filter(|_| action == "merge") else {
        return send(&request(None));
    };
    // The destination is checked first (an empty merge), then the source.
    send(&request(Some(Vec::new())))?;
    let from = from.unwrap_or_default();
    if !src.driver.can(caps::BITMAPS) {
        return Err(format!("Dirty bitmap '{from}' not found"));
    }
    let dirty = metadata(
        src,
        &MetadataRequest::Bitmap {
            action: "dirty".into(),
            name: from.to_string(),
            granularity: None,
            source: None,
            ranges: None,
        },
    )
    .map_err(|e| e.message.to_string())?;
    let size = dirty["size"].as_u64().unwrap_or(0);
    if size != image.size() {
        return Err(format!(
            "Bitmaps are of different sizes (destination size is {}, source size is {size}) and can't be merged",
            image.size()
        ));
    }
    let ranges: Vec<[u64; 2]> = serde_json::from_value(dirty["ranges"].clone())
        .map_err(|e| format!("bad reply from driver: {e}"))?;
    send(&request(Some(ranges)))
}
