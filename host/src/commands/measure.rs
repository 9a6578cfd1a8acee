//! `measure`: how much space an image of a format needs, for a given size or
//! to hold an existing image's data.

use super::common::{check_image_opts, objects, option_lists, print_help};
use super::create::image_size_error;
use crate::block::image::driver_for;
use crate::block::services::secret_bytes;
use crate::block::{open_image, options, LockSpec, OpenRequest};
use crate::cli::{
    flag, getopt, long_arg, long_flag, merge_opts, output_format, parse_size, with_arg, Opt,
    OutputFormat,
};
use crate::engine::status::Walker;
use crate::error::{fail, CmdResult};
use crate::output::qemu_json_pretty;
use crate::plugins::Driver;
use qimg_driver_api::abi_stable::std_types::{RSlice, RStr};
use qimg_driver_api::schema::{MeasureRequest, MeasureResult};
use qimg_driver_api::{caps, extent_flags, Extent};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

const OPTS: &[Opt] = &[
    flag('h', "help"),
    with_arg('f', "format"),
    long_flag("image-opts"),
    with_arg('l', "snapshot"),
    with_arg('o', "options"),
    long_arg("object"),
    with_arg('O', "target-format"),
    long_arg("output"),
    long_arg("size"),
    flag('U', "force-share"),
];

const HELP: &str = "Usage:\nCalculate file size required for a new image.  Usage:\n\n  {prog} measure [-f FMT|--image-opts] [-o OPTIONS] [-O OUTPUT_FMT]\n       [--output OFMT] [--object OBJDEF] [-l SNAPSHOT_PARAM]\n       (--size SIZE | FILENAME)\n\nArguments:\n  -h, --help\n     print this help and exit\n  -O, --target-format FMT\n     format of the image to measure for (default raw)\n  --size SIZE\n     measure a new, empty image of this size\n  FILENAME\n     measure the space needed to convert FILENAME\n  -f, --format\n     the format of FILENAME (probed when omitted)\n  --image-opts\n     FILENAME is an option string (driver=...,file.filename=...)\n  -l, --snapshot SNAPSHOT\n     measure this snapshot of FILENAME\n  --output human|json\n     output format\n  -U, --force-share\n     open the image in shared mode\n\n";

inventory::submit! { super::Command { name: "measure", summary: "Calculate file size required for a new image", run } }

/// The secret a LUKS volume in the output would be keyed with: `key-secret`
/// (a luks image) or `encrypt.key-secret` with `encrypt.format=luks` (qcow2;
/// legacy AES is measured without looking its secret up, as qemu-img does).
fn luks_secret(options: &BTreeMap<String, String>) -> Option<&str> {
    let luks_in_qcow2 = options.get("encrypt.format").is_some_and(|f| f == "luks");
    options
        .get("key-secret")
        .or(options.get("encrypt.key-secret").filter(|_| luks_in_qcow2))
        .map(String::as_str)
}

/// Largest run asked of the status walk at once.
const STEP: u64 = 1 << 40;

fn run(args: &[String]) -> CmdResult {
    let p = getopt("measure", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    let lists = option_lists(&p, "options")?;
    let snapshot = p
        .last("snapshot")
        .map(super::snapshot::parse_snapshot_param)
        .transpose()?;
    let output = output_format("measure", p.last("output"))?;
    objects(&p)?;
    check_image_opts(&p, "format")?;
    let size = match p.last("size") {
        Some(text) => Some(parse_size(text, 1).map_err(|e| image_size_error(text, e))?),
        None => None,
    };
    if p.operands.len() > 1 {
        return Err(fail("At most one filename argument is allowed."));
    }
    let names_image = p.has("image-opts") || p.has("format") || snapshot.is_some();
    if p.operands.is_empty() && names_image {
        return Err(fail(
            "--image-opts, -f, and -l require a filename argument.",
        ));
    }
    match (size.is_some(), p.operands.len()) {
        (true, 1) => return Err(fail("--size N cannot be used together with a filename.")),
        (false, 0) => return Err(fail("Either --size N or one filename must be specified.")),
        _ => {}
    }
    let format = p.last("target-format").unwrap_or("raw");
    let driver = driver_for(format).map_err(|_| fail(format!("Unknown file format '{format}'")))?;
    let given = merge_opts(&lists).map_err(fail)?;
    let values = options::validate(&options::schema(&driver, true), &given).map_err(|m| {
        fail(format!(
            "{m}\n{}: Invalid options for file format '{}'",
            crate::cli::program(),
            driver.name
        ))
    })?;
    let (request, extents) = match size {
        Some(size) => (
            MeasureRequest {
                size,
                options: values,
                from_image: false,
                source_bitmaps: None,
            },
            Vec::new(),
        ),
        None => {
            crate::confine::enter(
                &[crate::confine::image_file(
                    &p.operands[0],
                    p.has("image-opts"),
                )],
                &[],
            )?;
            let request = OpenRequest {
                lock: Some(LockSpec::reader(p.has("force-share"))),
                ..OpenRequest::read(&p.operands[0], p.last("format"), p.has("image-opts"))
            };
            let image = open_image(&request).map_err(|e| fail(e.message.to_string()))?;
            if let Some(param) = &snapshot {
                super::snapshot::load_snapshot(&image, param)?;
            }
            let source_bitmaps = image
                .info()
                .map_err(|e| fail(e.message.to_string()))?
                .bitmaps;
            // Refused before the walk (which can take long), once the
            // source opened, as qemu-img orders its errors.
            if !driver.can(caps::MEASURE) {
                return Err(unsupported(&driver));
            }
            // raw and luks measure the size alone (as qemu's do): no walk.
            let extents = match driver.name.as_str() {
                "raw" | "luks" => Vec::new(),
                _ => allocated(&image, count_unit(&driver, &values))?,
            };
            (
                MeasureRequest {
                    size: image.size(),
                    options: values,
                    from_image: true,
                    source_bitmaps,
                },
                extents,
            )
        }
    };
    if !driver.can(caps::MEASURE) {
        return Err(unsupported(&driver));
    }
    if let Some(id) = luks_secret(&request.options) {
        // Measuring needs no key, but qemu-img insists the secret exists.
        if secret_bytes(id).is_none() {
            return Err(fail(format!("No secret with id '{id}'")));
        }
    }
    let json_request = serde_json::to_string(&request).map_err(|e| fail(e.to_string()))?;
    let answer = driver
        .api
        .measure(
            RStr::from(json_request.as_str()),
            RSlice::from_slice(&extents),
        )
        .into_result()
        .map_err(|e| fail(e.message.to_string()))?;
    let result: MeasureResult =
        serde_json::from_str(&answer).map_err(|e| fail(format!("bad measure reply: {e}")))?;
    match output {
        OutputFormat::Human => {
            outln!("required size: {}", result.required);
            outln!("fully allocated size: {}", result.fully_allocated);
            if let Some(b) = result.bitmaps {
                outln!("bitmaps size: {b}");
            }
        }
        OutputFormat::Json => {
            let mut map = Map::new();
            if let Some(b) = result.bitmaps {
                map.insert("bitmaps".into(), json!(b));
            }
            // QAPI's sizes are int64 in JSON: 2^63 prints negative, as
            // qemu-img prints it (the human lines print it unsigned).
            map.insert("required".into(), json!(result.required as i64));
            map.insert(
                "fully-allocated".into(),
                json!(result.fully_allocated as i64),
            );
            outln!("{}", qemu_json_pretty(&Value::Object(map)));
        }
    }
    Ok(0)
}

/// qemu-img's refusal of a format that cannot measure.
fn unsupported(driver: &Driver) -> crate::error::CmdError {
    fail(format!(
        "Block driver '{}' does not support size measurement",
        driver.name
    ))
}

/// The unit a target format counts allocation in, for the walk: its
/// `cluster_size` (as `-o` gives it, else its default), or 1 for a format
/// without one. A run of data counts whole units, so after data the walk
/// goes on at the next unit, as qemu's qcow2 measure does (a source with
/// data in every other 4 KiB asks a status per cluster, not per run).
fn count_unit(driver: &Driver, values: &BTreeMap<String, String>) -> u64 {
    let default = || {
        driver
            .create_options()
            .iter()
            .find(|o| o.name == "cluster_size")
            .and_then(|o| o.default.clone())
    };
    values
        .get("cluster_size")
        .cloned()
        .or_else(default)
        .and_then(|text| parse_size(&text, 1).ok())
        .filter(|unit| unit.is_power_of_two())
        .unwrap_or(1)
}

/// The extents of `image` (through its chain) that hold data, each run of
/// data widened to whole units of `unit` bytes, as the driver counts them.
fn allocated(
    image: &crate::block::BlockImage,
    unit: u64,
) -> Result<Vec<Extent>, crate::error::CmdError> {
    let mut out: Vec<Extent> = Vec::new();
    let mut walker = Walker::default();
    let mut offset = 0;
    while offset < image.size() {
        let s = walker
            .status(image, offset, (image.size() - offset).min(STEP), None)
            .map_err(|e| fail(format!("Unable to get block status: {}", e.message)))?;
        let mut end = offset + s.length;
        if s.data && !s.zero {
            end = end.next_multiple_of(unit).min(image.size());
            match out.last_mut() {
                Some(last) if last.end() == offset => last.length = end - last.offset,
                _ => out.push(Extent {
                    offset,
                    length: end - offset,
                    flags: extent_flags::DATA,
                    store: 0,
                    host_offset: 0,
                }),
            }
        }
        offset = end;
    }
    Ok(out)
}
