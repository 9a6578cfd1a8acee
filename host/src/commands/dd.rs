//! `dd`: copy part of an image block by block, with optional format conversion.

use super::common::{check_image_opts, number, objects, print_help};
use super::create::create_message;
use crate::block::image::driver_for;
use crate::block::{create_image, open_image, LockSpec, OpenRequest};
use crate::cli::{flag, getopt, long_arg, long_flag, program, with_arg, Opt};
use crate::engine::buffer::Buffer;
use crate::error::{fail, CmdResult};
use crate::store::CacheMode;
use qimg_driver_api::schema::CreateRequest;

const OPTS: &[Opt] = &[
    flag('h', "help"),
    with_arg('f', "format"),
    long_flag("image-opts"),
    long_arg("object"),
    with_arg('O', "output-format"),
    flag('U', "force-share"),
];

const HELP: &str = "Usage:\nCopy input to output with optional format conversion.  Usage:\n\n  {prog} dd [-f FMT|--image-opts] [-O OUTPUT_FMT] [-U]\n        [bs=BLOCK_SIZE] [count=BLOCKS] [skip=BLOCKS] if=INPUT of=OUTPUT\n\nArguments:\n  -h, --help\n     print this help and exit\n  -f, --format FMT\n     the format of INPUT (probed when omitted)\n  --image-opts\n     INPUT is an option string (driver=...,file.filename=...)\n  -O, --output-format OUTPUT_FMT\n     format of OUTPUT (default raw)\n  -U, --force-share\n     open INPUT in shared mode\n  bs=BLOCK_SIZE[kKMGTP]\n     block size (default 512)\n  count=COUNT\n     number of blocks to copy (default: all of INPUT)\n  skip=COUNT\n     number of blocks of INPUT to skip\n  if=INPUT\n     the input image\n  of=OUTPUT\n     the output image, created anew\n\n";

inventory::submit! { super::Command { name: "dd", summary: "Copy input to output with optional format conversion", run } }

/// Largest bs qemu-img accepts.
const MAX_BS: u64 = i32::MAX as u64;
/// Bytes moved per read/write: whole blocks, at least one.
const BATCH: u64 = 4 << 20;

fn run(args: &[String]) -> CmdResult {
    let p = getopt("dd", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    objects(&p)?;
    check_image_opts(&p, "format")?;
    let (mut bs, mut count, mut skip) = (512u64, None, 0u64);
    let (mut input, mut output) = (None, None);
    for operand in &p.operands {
        let Some((key, value)) = operand.split_once('=') else {
            return Err(fail(format!("unrecognized operand {operand}")));
        };
        match key {
            "bs" => bs = number("bs", value, 1, MAX_BS, true)?,
            "count" => count = Some(number("count", value, 0, i64::MAX as u64, false)?),
            "skip" => skip = number("skip", value, 0, i64::MAX as u64, false)?,
            "if" => input = Some(value.to_string()),
            "of" => output = Some(value.to_string()),
            _ => return Err(fail(format!("unrecognized operand {key}"))),
        }
    }
    let (Some(input), Some(output)) = (input, output) else {
        return Err(fail("Must specify both input and output files"));
    };
    // Unlike convert, qemu-img dd lets others write its input (measured:
    // it reads a raw image a VM writes); a format with metadata still
    // refuses writers (`LockSpec::for_format`).
    let lock = LockSpec::reader(p.has("force-share"));
    let source = open_image(&OpenRequest {
        lock: Some(lock),
        ..OpenRequest::read(&input, p.last("format"), p.has("image-opts"))
    })
    .map_err(|e| fail(e.message.to_string()))?;
    let format = p.last("output-format").unwrap_or("raw");
    let driver = driver_for(format).map_err(|_| fail("Unknown file format"))?;
    crate::block::spec::creatable(&output).map_err(fail)?;
    let in_size = source.size();
    // qemu-img counts `count` blocks from the start of the input, not from
    // the skipped position: the output is [skip*bs, min(count*bs, size)).
    let start = skip.saturating_mul(bs);
    let end = match count {
        Some(c) => c.saturating_mul(bs).min(in_size),
        None => in_size,
    };
    if start > end {
        errln!("{}: {input}: cannot skip to specified offset", program());
    }
    let size = end.saturating_sub(start);
    let request = CreateRequest {
        size,
        options: Default::default(),
    };
    if let Some(refused) = crate::block::spec::creation_refused(&output) {
        return Err(fail(refused));
    }
    let existed = crate::block::image::target_existed(&output);
    let _registered = (!existed).then(|| crate::interrupt::discard_on_signal(&output));
    create_image(&driver, &output, &request, CacheMode::Writeback, true).map_err(|e| {
        fail(format!(
            "{output}: error while creating output image: {}",
            create_message(&driver.name, e)
        ))
    })?;
    let result = copy(&source, &output, &driver.name, start, size, bs);
    if result.is_err() && !existed {
        // As convert: a half-written output never passes for an image
        // (qemu-img leaves it).
        crate::confine::discard_target(&output);
    }
    result
}

/// Copies `size` bytes of `source` from `start` into the new image
/// `output` of format `format`, in whole `bs` blocks.
fn copy(
    source: &crate::block::BlockImage,
    output: &str,
    format: &str,
    start: u64,
    size: u64,
    bs: u64,
) -> CmdResult {
    // Unlike convert, qemu-img dd writes through the default cache mode and
    // flushes its output before exiting.
    let target = open_image(&OpenRequest {
        write: true,
        cache: CacheMode::Writeback,
        lock: Some(LockSpec::READ_WRITE),
        stream: true,
        ..OpenRequest::read(output, Some(format), false)
    })
    .map_err(|e| fail(e.message.to_string()))?;
    let batch = (BATCH / bs).max(1) * bs;
    let mut buf = Buffer::take(batch.min(size) as usize);
    let mut done = 0u64;
    while done < size {
        let n = (size - done).min(batch) as usize;
        source.read(start + done, &mut buf[..n]).map_err(|e| {
            fail(format!(
                "error while reading from input image file: {}",
                e.message
            ))
        })?;
        target.write(done, &buf[..n]).map_err(|e| {
            fail(format!(
                "error while writing to output image file: {}",
                e.message
            ))
        })?;
        done += n as u64;
    }
    target.close().map_err(|e| fail(e.message.to_string()))?;
    // Complete and closed: the new image gets its real first bytes.
    target
        .store
        .lift_veil()
        .map_err(|e| fail(e.message.to_string()))?;
    Ok(0)
}
