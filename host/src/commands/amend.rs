//! `amend`: change format options of an existing image.

use super::common::{
    cache_mode, check_image_opts, metadata, objects, open_rw, option_lists, print_help,
};
use crate::block::image::driver_for;
use crate::block::lock::{perm, ImageLock, LockSpec};
use crate::block::options;
use crate::cli::{
    flag, getopt, long_arg, long_flag, parse_opts, program, wants_help, with_arg, Opt, Parsed,
};
use crate::engine::progress::Progress;
use crate::error::{fail, CmdError, CmdResult};
use crate::plugins::Driver;
use crate::store::CacheMode;
use qimg_driver_api::schema::MetadataRequest;
use qimg_driver_api::schema::OptionType;
use qimg_driver_api::{caps, ByteStore};
use std::collections::BTreeMap;

const OPTS: &[Opt] = &[
    flag('h', "help"),
    flag('q', "quiet"),
    flag('p', "progress"),
    with_arg('f', "format"),
    long_flag("image-opts"),
    with_arg('t', "cache"),
    long_arg("object"),
    with_arg('o', "options"),
    long_flag("force"),
];

const HELP: &str = "Usage:\nUpdate format-specific options of the image.  Usage:\n\n  {prog} amend [-f FMT | --image-opts] [-t CACHE] [--force] [-p] [-q]\n        [--object OBJDEF] -o OPTIONS FILENAME\n\nArguments:\n  -h, --help\n     print this help and exit\n  -q, --quiet\n     print nothing but errors\n  -p, --progress\n     show progress\n  -f, --format FMT\n     the format of FILENAME (probed when omitted)\n  --image-opts\n     FILENAME is an option string (driver=...,file.filename=...)\n  -t, --cache CACHE\n     cache mode (writeback)\n  -o OPTIONS\n     the options to change\n  --force\n     allow changes that may lose information\n\n";

inventory::submit! { super::Command { name: "amend", summary: "Update format-specific options of the image", run } }

/// `-o help` for `format`, as qemu-img prints it (1 if it cannot).
fn print_amend_help(format: &str) -> i32 {
    let Ok(driver) = driver_for(format) else {
        errln!("{}: Unknown file format '{format}'", program());
        return 1;
    };
    let list = driver.amend_options();
    if !driver.can(caps::AMEND) || list.is_empty() {
        errln!(
            "{}: Format driver '{format}' does not support option amendment",
            program()
        );
        return 1;
    }
    outln!("Amend options for '{format}':");
    for option in list {
        let kind = match option.kind {
            OptionType::Str => "str",
            OptionType::Bool => "bool (on/off)",
            OptionType::Number => "num",
            OptionType::Size => "size",
        };
        outln!(
            "  {:<22} - {}",
            format!("{}=<{kind}>", option.name),
            option.help
        );
    }
    0
}

/// Checks the options against the format's amend schema (and, for the
/// hint, its creation schema), normalising their values.
fn check_options(driver: &Driver, text: &str) -> Result<BTreeMap<String, String>, CmdError> {
    let items = parse_opts(text, None).map_err(fail)?;
    let amend = driver.amend_options();
    let create = options::schema(driver, true);
    let known = |name: &str| amend.iter().any(|o| o.name == name);
    if let Some((name, _)) = items.iter().find(|(k, _)| !known(k)) {
        let creation = items
            .iter()
            .all(|(k, _)| known(k) || create.iter().any(|o| &o.name == k));
        let hint = if creation {
            "\nThis option is only supported for image creation"
        } else {
            ""
        };
        return Err(fail(format!("Invalid parameter '{name}'{hint}")));
    }
    let mut given = BTreeMap::new();
    for (k, v) in items {
        given.insert(k, v);
    }
    options::validate(&amend, &given).map_err(fail)
}

fn run(args: &[String]) -> CmdResult {
    let p = getopt("amend", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    objects(&p)?;
    check_image_opts(&p, "format")?;
    let lists = option_lists(&p, "options")?;
    if lists.is_empty() {
        return Err(CmdError::usage("amend", "Must specify options (-o)"));
    }
    let text = lists.join(",");
    // From here on qemu-img has started its progress report: every way
    // out ends it (a newline with -p).
    let progress = Progress::start(p.has("progress") && !p.has("quiet"), 1.0);
    let result = match amend(&p, &text, &lists, &progress) {
        // qemu-img reports a failure before it ends the progress line.
        Err(CmdError::Failed(message)) => {
            errln!("{}: {message}", program());
            Err(CmdError::Exit(1))
        }
        other => other,
    };
    progress.end();
    result
}

/// The part of `amend` that runs while the progress report is open.
fn amend(p: &Parsed, text: &str, lists: &[&str], progress: &Progress) -> CmdResult {
    let help = wants_help(lists);
    if let (true, Some(format)) = (help, p.last("format")) {
        return Ok(print_amend_help(format));
    }
    if p.operands.len() != 1 {
        return Err(fail("Expecting one image file name"));
    }
    let cache = cache_mode(p.last("cache"), CacheMode::Writeback, "cache")?;
    let image = open_rw(&p.operands[0], p.last("format"), p.has("image-opts"), cache)?;
    if help {
        return Ok(print_amend_help(image.format()));
    }
    if !image.driver.can(caps::AMEND) {
        return Err(fail(format!(
            "Format driver '{}' does not support option amendment",
            image.format()
        )));
    }
    let options = check_options(&image.driver, text)?;
    progress.print(0.0, 0);
    // QEMU's crypto driver takes its file for itself while it rewrites key
    // slots (its locks are otherwise its user's): no other reader, no
    // other writer.
    let held = image.store.file().filter(|_| image.store.is_locked());
    let _exclusive = if let Some(file) = held.filter(|_| image.driver.can(caps::USER_LOCKS)) {
        let alone = LockSpec {
            perm: 0,
            unshared: perm::READ | perm::WRITE,
            forced: false,
        };
        let name = image.store.name().to_string();
        Some(ImageLock::acquire(file, alone, &name).map_err(|e| fail(e.message.to_string()))?)
    } else {
        None
    };
    let result = metadata(
        &image,
        &MetadataRequest::Amend {
            options,
            force: p.has("force"),
        },
    );
    let mut failure = result.as_ref().err().map(|e| e.message.to_string());
    if let Ok(answer) = &result {
        // The driver's progress callbacks, as runs [first offset, count, total].
        for run in answer["progress"].as_array().into_iter().flatten() {
            let field = |i: usize| run.get(i).and_then(|v| v.as_u64()).unwrap_or(0);
            let (first, count, total) = (field(0), field(1), field(2));
            for offset in first..first + count {
                let pct = if total == 0 {
                    0.0
                } else {
                    100.0f32 * offset as f32 / total as f32
                };
                progress.print(pct, 0);
            }
        }
        failure = answer["error"].as_str().map(String::from);
    }
    progress.print(100.0, 0);
    let closed = image.close();
    if let Some(message) = failure {
        return Err(fail(message));
    }
    closed.map_err(|e| fail(e.message.to_string()))?;
    Ok(0)
}
