//! `map`: the image's allocation, extent by extent, human or JSON.

use super::common::{check_image_opts, number, objects, print_help};
use crate::block::{open_image, LockSpec, OpenRequest};
use crate::cli::{flag, getopt, long_arg, long_flag, output_format, with_arg, Opt, OutputFormat};
use crate::engine::status::{mergeable, Status, Walker};
use crate::error::{fail, CmdError, CmdResult};
use std::io::Write;

const OPTS: &[Opt] = &[
    flag('h', "help"),
    with_arg('f', "format"),
    long_flag("image-opts"),
    long_arg("output"),
    long_arg("object"),
    long_arg("start-offset"),
    long_arg("max-length"),
    flag('U', "force-share"),
];

const HELP: &str = "Usage:\nDump image metadata.  Usage:\n\n  {prog} map [-f FMT | --image-opts] [--object OBJDEF] [--output human|json]\n        [--start-offset OFFSET] [--max-length LENGTH] [-U] FILENAME\n\nArguments:\n  -h, --help\n     print this help and exit\n  -f, --format FMT\n     the format of FILENAME (probed when omitted)\n  --image-opts\n     FILENAME is an option string (driver=...,file.filename=...)\n  --start-offset OFFSET\n     first guest byte to map\n  --max-length LENGTH\n     number of guest bytes to map\n  --output human|json\n     output format (default human)\n  -U, --force-share\n     open the image in shared mode\n  --object OBJDEF\n     a secret (secret,id=ID,data=...|file=...)\n  FILENAME\n     the image\n\n";

inventory::submit! { super::Command { name: "map", summary: "Dump image metadata", run } }

/// Largest run asked of the status walk at once.
const STEP: u64 = 1 << 40;

fn run(args: &[String]) -> CmdResult {
    let p = getopt("map", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    let output = output_format("map", p.last("output"))?;
    let max_i64 = i64::MAX as u64;
    let start = match p.last("start-offset") {
        Some(t) => number("start offset", t, 0, max_i64, true)?,
        None => 0,
    };
    let max_length = match p.last("max-length") {
        Some(t) => number("max length", t, 0, max_i64, true)?,
        None => max_i64,
    };
    objects(&p)?;
    check_image_opts(&p, "format")?;
    if p.operands.len() != 1 {
        return Err(CmdError::usage("map", "Expecting one image file name"));
    }
    crate::confine::enter(
        &[crate::confine::image_file(
            &p.operands[0],
            p.has("image-opts"),
        )],
        &[],
    )?;
    let image = open_image(&OpenRequest {
        lock: Some(LockSpec::reader(p.has("force-share"))),
        ..OpenRequest::read(&p.operands[0], p.last("format"), p.has("image-opts"))
    })
    .map_err(|e| fail(e.message.to_string()))?;
    let end = start.saturating_add(max_length).min(image.size());
    let mut out = std::io::stdout().lock();
    if output == OutputFormat::Human {
        let _ = writeln!(
            out,
            "{:<16}{:<16}{:<16}File",
            "Offset", "Length", "Mapped to"
        );
    }
    if start >= end {
        if output == OutputFormat::Json {
            let empty = Status {
                start,
                length: 0,
                depth: 0,
                present: false,
                zero: false,
                data: false,
                compressed: false,
                offset: None,
                file: None,
            };
            let _ = writeln!(out, "[{}]", json_entry(&empty));
        }
        return Ok(0);
    }
    // qemu-img opens the list before it asks for the first extent, so a
    // failure leaves "[" on stdout.
    if output == OutputFormat::Json {
        let _ = write!(out, "[");
    }
    let mut pending: Option<Status> = None;
    let mut walker = Walker::default();
    let mut offset = start;
    while offset < end {
        let status = walker
            .status(&image, offset, (end - offset).min(STEP), None)
            .map_err(|e| fail(format!("Could not read file metadata: {}", e.message)))?;
        offset += status.length;
        match &mut pending {
            Some(prev) if mergeable(prev, &status) => prev.length += status.length,
            _ => {
                if let Some(prev) = pending.replace(status) {
                    emit(&mut out, &prev, output, true)?;
                }
            }
        }
    }
    if let Some(last) = pending {
        emit(&mut out, &last, output, false)?;
    }
    if output == OutputFormat::Json {
        let _ = writeln!(out, "]");
    }
    Ok(0)
}

fn hex(value: u64) -> String {
    if value == 0 {
        "0".to_string()
    } else {
        format!("{value:#x}")
    }
}

fn emit(
    out: &mut impl Write,
    s: &Status,
    output: OutputFormat,
    more: bool,
) -> Result<(), CmdError> {
    match output {
        OutputFormat::Json => {
            // The separator follows an entry once the next one is known,
            // so a failure leaves it on stdout, as with qemu-img.
            let _ = write!(out, "{}{}", json_entry(s), if more { ",\n" } else { "" });
        }
        OutputFormat::Human => {
            if s.data && !s.zero {
                let (Some(offset), Some(file)) = (s.offset, s.file.as_deref()) else {
                    let _ = out.flush();
                    return Err(fail(
                        "File contains external, encrypted or compressed clusters.",
                    ));
                };
                let _ = writeln!(
                    out,
                    "{:<16}{:<16}{:<16}{}",
                    hex(s.start),
                    hex(s.length),
                    hex(offset),
                    file
                );
            }
        }
    }
    Ok(())
}

fn json_entry(s: &Status) -> String {
    let mut text = format!(
        "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
        s.start, s.length, s.depth, s.present, s.zero, s.data, s.compressed
    );
    if let Some(o) = s.offset {
        text.push_str(&format!(", \"offset\": {o}"));
    }
    text.push('}');
    text
}
