//! `check`: consistency check (and repair) of an image's metadata.

use super::common::{cache_mode, check_image_opts, objects, print_help, refuse_shared_write};
use crate::block::{open_image, BlockImage, LockSpec, OpenRequest};
use crate::cli::{flag, getopt, long_arg, long_flag, output_format, with_arg, Opt, OutputFormat};
use crate::error::{fail, CmdError, CmdResult};
use crate::output::qemu_json_pretty;
use crate::store::CacheMode;
use qimg_driver_api::schema::{CheckReport, CheckRequest, Repair};
use qimg_driver_api::{caps, ErrorKind};
use serde_json::{json, Map, Value};

const OPTS: &[Opt] = &[
    flag('h', "help"),
    flag('q', "quiet"),
    with_arg('f', "format"),
    long_flag("image-opts"),
    with_arg('T', "cache"),
    flag('U', "force-share"),
    long_arg("output"),
    with_arg('r', "repair"),
    long_arg("object"),
];

const HELP: &str = "Usage:\nCheck basic image integrity.  Usage:\n\n  {prog} check [-f FMT | --image-opts] [-T CACHE_MODE] [-r leaks|all]\n        [--output human|json] [--object OBJDEF] FILENAME\n\nArguments:\n  -h, --help\n     print this help and exit\n  -q, --quiet\n     print nothing but errors\n  -f, --format FMT\n     the format of FILENAME (probed when omitted)\n  --image-opts\n     FILENAME is an option string (driver=...,file.filename=...)\n  -T, --cache CACHE_MODE\n     cache mode (writeback)\n  -U, --force-share\n     open the image in shared mode\n  --output human|json\n     output format\n  -r, --repair leaks|all\n     repair leaks, or everything (opens the image read-write)\n  --object OBJDEF\n     a secret (secret,id=ID,data=...|file=...)\n  FILENAME\n     the image\n\nExit status: 0 consistent, 1 check not completed, 2 corruptions,\n3 leaks only, 63 the format cannot be checked.\n\n";

inventory::submit! { super::Command { name: "check", summary: "Check basic image integrity", run } }

/// Exit status of `check` for a format without checks.
const NOT_SUPPORTED: i32 = 63;

fn run(args: &[String]) -> CmdResult {
    let p = getopt("check", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    let format = output_format("check", p.last("output"))?;
    let repair = match p.last("repair") {
        None => Repair::None,
        Some("leaks") => Repair::Leaks,
        Some("all") => Repair::All,
        Some(other) => {
            return Err(CmdError::usage(
                "check",
                format!("--repair (-r) expects 'leaks' or 'all' not '{other}'"),
            ))
        }
    };
    objects(&p)?;
    check_image_opts(&p, "format")?;
    if p.operands.len() != 1 {
        return Err(CmdError::usage("check", "Expecting one image file name"));
    }
    let write = repair != Repair::None;
    let name = &p.operands[0];
    if write && p.has("force-share") {
        return Err(refuse_shared_write(name, p.last("format")));
    }
    let cache = cache_mode(p.last("cache"), CacheMode::Writeback, "source cache")?;
    let file = crate::confine::image_file(name, p.has("image-opts"));
    if write {
        crate::confine::enter(&[], &[file])?;
    } else {
        crate::confine::enter(&[file], &[])?;
    }
    let request = OpenRequest {
        write,
        cache,
        lock: Some(if write {
            LockSpec::READ_WRITE
        } else {
            LockSpec::reader(p.has("force-share"))
        }),
        // qemu-img opens the backing chain too (a missing backing file
        // fails the check); confined, only the named file may be opened.
        no_backing: crate::confine::requested(),
        check: true,
        ..OpenRequest::read(name, p.last("format"), p.has("image-opts"))
    };
    let image = open_image(&request).map_err(|e| fail(e.message.to_string()))?;
    if !image.driver.can(caps::CHECK) {
        return Ok(not_supported());
    }
    let quiet = p.has("quiet");
    // A check that fails still closes the image, as qemu-img does: a qcow2
    // opened for repair then has its dirty bit cleared.
    let failed = |status: i32| {
        let _ = image.close();
        Ok(status)
    };
    let first = match run_check(&image, repair)? {
        Ok(report) => report,
        Err(status) => return failed(status),
    };
    let mut report = first.clone();
    if first.corruptions_fixed > 0 || first.leaks_fixed > 0 {
        if format == OutputFormat::Human && !quiet {
            out!(
                "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
                first.leaks_fixed, first.corruptions_fixed
            );
        }
        report = match run_check(&image, Repair::None)? {
            Ok(report) => report,
            Err(status) => return failed(status),
        };
        report.leaks_fixed = first.leaks_fixed;
        report.corruptions_fixed = first.corruptions_fixed;
    }
    if !quiet {
        match format {
            OutputFormat::Human => out!("{}", human_report(&report)),
            OutputFormat::Json => outln!(
                "{}",
                // The name as given (an option string, a json: object):
                // qemu-img reports the operand.
                qemu_json_pretty(&json_report(&report, name, image.format()))
            ),
        }
    }
    image.close().map_err(|e| fail(e.message.to_string()))?;
    if report.check_errors > 0 {
        errln!("{}: Check failed", crate::cli::program());
        return Ok(1);
    }
    Ok(if report.corruptions > 0 {
        2
    } else if report.leaks > 0 {
        3
    } else {
        0
    })
}

/// qemu-img's answer for a format without checks.
fn not_supported() -> i32 {
    errln!(
        "{}: This image format does not support checks",
        crate::cli::program()
    );
    NOT_SUPPORTED
}

/// Runs one check: prints the driver's lines on stderr and returns its
/// report, or the exit status of a check that could not finish.
fn run_check(image: &BlockImage, repair: Repair) -> Result<Result<CheckReport, i32>, CmdError> {
    let request = serde_json::to_string(&CheckRequest { repair })
        .map_err(|e| fail(format!("cannot encode the check request: {e}")))?;
    let reply = match image.check(&request) {
        Ok(reply) => reply,
        Err(e) if e.kind == ErrorKind::UNSUPPORTED => return Ok(Err(not_supported())),
        Err(e) => {
            errln!("{}: Check failed: {}", crate::cli::program(), e.message);
            return Ok(Err(1));
        }
    };
    let report: CheckReport = serde_json::from_str(&reply)
        .map_err(|e| fail(format!("bad check report from driver: {e}")))?;
    for line in &report.messages {
        match line.strip_prefix("{prog}: ") {
            Some(rest) => errln!("{}: {rest}", crate::cli::program()),
            None => errln!("{line}"),
        }
    }
    if let Some(reason) = &report.failure {
        errln!("{}: Check failed: {reason}", crate::cli::program());
        return Ok(Err(1));
    }
    Ok(Ok(report))
}

/// A count qemu-img prints only when it is not zero.
fn nonzero(v: Option<u64>) -> u64 {
    v.unwrap_or(0)
}

/// The human report, worded and laid out as qemu-img prints it.
fn human_report(r: &CheckReport) -> String {
    let mut out = String::new();
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        out.push_str("No errors were found on the image.\n");
    } else {
        if r.corruptions > 0 {
            out.push_str(&format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                r.corruptions
            ));
        }
        if r.leaks > 0 {
            out.push_str(&format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                r.leaks
            ));
        }
        if r.check_errors > 0 {
            out.push_str(&format!(
                "\n{} internal errors have occurred during the check.\n",
                r.check_errors
            ));
        }
    }
    let total = nonzero(r.total_clusters);
    let allocated = nonzero(r.allocated_clusters);
    if total > 0 && allocated > 0 {
        let pct = |part: u64, whole: u64| part as f64 * 100.0 / whole as f64;
        out.push_str(&format!(
            "{allocated}/{total} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            pct(allocated, total),
            pct(nonzero(r.fragmented_clusters), allocated),
            pct(nonzero(r.compressed_clusters), allocated),
        ));
    }
    let end = nonzero(r.image_end_offset);
    if end > 0 {
        out.push_str(&format!("Image end offset: {end}\n"));
    }
    out
}

/// The JSON report with qemu-img's members in its order; counts that are
/// zero are left out, as qemu-img leaves them out.
fn json_report(r: &CheckReport, filename: &str, format: &str) -> Value {
    let mut map = Map::new();
    let mut put = |key: &str, v: u64| {
        if v > 0 {
            map.insert(key.into(), json!(v));
        }
    };
    put("image-end-offset", nonzero(r.image_end_offset));
    put("compressed-clusters", nonzero(r.compressed_clusters));
    put("total-clusters", nonzero(r.total_clusters));
    put("corruptions", r.corruptions);
    put("corruptions-fixed", r.corruptions_fixed);
    map.insert("check-errors".into(), json!(r.check_errors));
    let mut put = |key: &str, v: u64| {
        if v > 0 {
            map.insert(key.into(), json!(v));
        }
    };
    put("leaks", r.leaks);
    put("leaks-fixed", r.leaks_fixed);
    put("allocated-clusters", nonzero(r.allocated_clusters));
    map.insert("filename".into(), json!(filename));
    map.insert("format".into(), json!(format));
    if nonzero(r.fragmented_clusters) > 0 {
        map.insert(
            "fragmented-clusters".into(),
            json!(nonzero(r.fragmented_clusters)),
        );
    }
    Value::Object(map)
}
