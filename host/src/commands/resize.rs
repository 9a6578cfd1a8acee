//! `resize`: change an image's guest size.

use super::common::{check_image_opts, objects, print_help};
use crate::block::{open_image, LockSpec, OpenRequest, MAX_LENGTH};
use crate::cli::{
    first_operand, flag, getopt, long_arg, long_flag, parse_size_u64, program, with_arg, Opt,
};
use crate::error::{fail, CmdError, CmdResult};
use crate::store::CacheMode;
use qimg_driver_api::size::invalid_message;
use qimg_driver_api::{caps, Prealloc};

const OPTS: &[Opt] = &[
    flag('h', "help"),
    flag('q', "quiet"),
    with_arg('f', "format"),
    long_flag("image-opts"),
    long_arg("preallocation"),
    long_flag("shrink"),
    long_arg("object"),
];

const HELP: &str = "Usage:\nResize the image to the new size.  Usage:\n\n  {prog} resize [-f FMT | --image-opts] [--preallocation PREALLOC] [--shrink]\n        [--object OBJECTDEF] [-q] FILENAME [+-]SIZE[bkKMGTPE]\n\nArguments:\n  -h, --help\n     print this help and exit\n  -q, --quiet\n     do not print 'Image resized.'\n  -f, --format FMT\n     the format of FILENAME (probed when omitted)\n  --image-opts\n     FILENAME is an option string (driver=...,file.filename=...)\n  --shrink\n     allow the new size to be smaller\n  --preallocation PREALLOC\n     how to allocate the new area (off, falloc, full, metadata)\n  --object OBJDEF\n     a secret (secret,id=ID,data=...|file=...)\n  FILENAME\n     the image\n  [+-]SIZE[bkKMGTPE]\n     new size, or an amount to grow (+) or shrink (-) by\n\n";

inventory::submit! { super::Command { name: "resize", summary: "Resize the image to the new size", run } }

/// qemu-img 10.0.2's reading of a negative size: the argument right after
/// the file name is the size when it is a minus sign and a digit (so
/// `resize img -1G --shrink` works), anywhere else it is an option. Returns
/// the arguments without it, and it.
fn take_negative_size(args: &[String]) -> (Vec<String>, Option<String>) {
    let mut rest = args.to_vec();
    let after_name = first_operand(args, OPTS).map(|i| i + 1);
    let negative = after_name.filter(|&i| {
        args.get(i).is_some_and(|a| {
            a.strip_prefix('-')
                .is_some_and(|d| d.starts_with(|c: char| c.is_ascii_digit()))
        })
    });
    let size = negative.map(|i| rest.remove(i));
    (rest, size)
}

fn run(args: &[String]) -> CmdResult {
    let (args, negative) = take_negative_size(args);
    let p = getopt("resize", &args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    // Checked as the option is read, before the operands.
    let prealloc = match p.last("preallocation") {
        None => Prealloc::OFF,
        Some(name) => Prealloc::parse(name)
            .ok_or_else(|| fail(format!("Invalid preallocation mode '{name}'")))?,
    };
    objects(&p)?;
    check_image_opts(&p, "format")?;
    let mut operands = p.operands.iter();
    let filename = operands.next();
    let size_text = negative.as_ref().or_else(|| operands.next());
    let (Some(filename), Some(size_text)) = (filename, size_text) else {
        return Err(CmdError::usage(
            "resize",
            "Expecting image file name and size",
        ));
    };
    if operands.next().is_some() {
        return Err(CmdError::usage(
            "resize",
            "Extra argument(s) in command line",
        ));
    }
    let (sign, digits) = match size_text.as_bytes().first() {
        Some(b'+') => (1i128, &size_text[1..]),
        Some(b'-') => (-1i128, &size_text[1..]),
        _ => (0i128, size_text.as_str()),
    };
    let amount = parse_size_u64(digits, 1).map_err(|_| fail(invalid_message("size")))? as i128;
    let request = OpenRequest {
        write: true,
        cache: CacheMode::Writeback,
        lock: Some(LockSpec::RESIZE),
        ..OpenRequest::read(filename, p.last("format"), p.has("image-opts"))
    };
    let image = open_image(&request).map_err(|e| fail(e.message.to_string()))?;
    let current = image.size() as i128;
    let wanted = if sign == 0 {
        amount
    } else {
        current + sign * amount
    };
    // qemu-img works in signed 64 bits: 8E wraps to a negative size.
    if wanted <= 0 || wanted > i64::MAX as i128 {
        return Err(fail("New image size must be positive"));
    }
    let wanted = wanted as u64;
    let shrinking = (wanted as i128) < current;
    if shrinking && prealloc != Prealloc::OFF {
        return Err(fail("Preallocation can only be used for growing images"));
    }
    if shrinking && !p.has("shrink") {
        return Err(fail(format!(
            "Use the --shrink option to perform a shrink operation.\n{}: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
            program()
        )));
    }
    // The block layer's limit, checked before the driver's.
    if wanted > MAX_LENGTH {
        return Err(fail(format!(
            "offset({wanted}) exceeds maximum({MAX_LENGTH})"
        )));
    }
    if !image.driver.can(caps::RESIZE) {
        return Err(fail("Image format driver does not support resize"));
    }
    // An export keeps its size; a format that passes the exact size down
    // to its store (raw, luks) asks NBD for another one, as qemu's does.
    if image.store.protocol() == "nbd"
        && matches!(image.format(), "raw" | "luks")
        && wanted as i128 != current
    {
        return Err(fail("Cannot resize NBD nodes"));
    }
    image
        .resize(wanted, prealloc, shrinking)
        .map_err(|e| fail(e.message.to_string()))?;
    image.close().map_err(|e| fail(e.message.to_string()))?;
    if !p.has("quiet") {
        outln!("Image resized.");
    }
    Ok(0)
}
