//! `convert`: copy one or more images into a new (or, with `-n`, existing) one,
//! converting the format on the way.

use super::common::{cache_mode, number, objects, option_lists, print_help};
use super::create::create_message;
use crate::block::image::driver_for;
use crate::block::{create_image, open_image, options, BlockImage, LockSpec, OpenRequest};
use crate::cli::{flag, getopt, long_arg, long_flag, merge_opts, wants_help, with_arg, Opt};
use crate::engine::copy::CopyJob;
use crate::engine::progress::Progress;
use crate::engine::ratelimit::RateLimit;
use crate::error::{fail, CmdError, CmdResult};
use crate::store::{CacheMode, Store};
use qimg_driver_api::caps;
use qimg_driver_api::schema::{BitmapSummary, CreateRequest};
use std::sync::Arc;

/// In the order of qemu-img 10.0.2's table (Debian's build), which orders
/// the candidates of an ambiguous abbreviation; some options have no long
/// name there, and some long names differ from the help's.
const OPTS: &[Opt] = &[
    flag('h', "help"),
    flag('q', "quiet"),
    long_arg("object"),
    long_flag("source-image-opts"),
    long_flag("image-opts"),
    with_arg('f', "source-format"),
    with_arg('T', "source-cache"),
    with_arg('l', "snapshot").keyed("source-snapshot"),
    with_arg('O', "output-format").keyed("target-format"),
    with_arg('o', "options").keyed("target-options"),
    with_arg('t', "output-cache").keyed("target-cache"),
    long_flag("target-image-opts"),
    long_flag("target-is-zero"),
    with_arg('B', "backing"),
    with_arg('F', "backing-format"),
    long_flag("bitmaps"),
    flag('c', "").keyed("compress"),
    flag('n', "").keyed("no-create"),
    with_arg('S', "sparse-size"),
    long_flag("salvage"),
    long_flag("skip-broken-bitmaps"),
    flag('U', "force-share"),
    with_arg('r', "rate"),
    with_arg('m', "parallel"),
    flag('C', "copy-range-offloading"),
    flag('W', "oob-writes"),
    flag('p', "").keyed("progress"),
];

const HELP: &str = "Usage:\nCopy one image to another with optional format conversion.  Usage:\n\n  {prog} convert [-f SRC_FMT|--image-opts] [-T SRC_CACHE] [--bitmaps [--skip-broken-bitmaps]]\n        [-o TGT_OPTS|--target-image-opts] [-t TGT_CACHE] [-n]\n        [-B BACKING_FILENAME [-F BACKING_FMT]]\n        SRC_FILENAME [SRC_FILENAME2 [...]] TGT_FILENAME\n\nArguments:\n  -h, --help\n     print this help and exit\n  -q, --quiet\n     print nothing but errors\n  -p, --progress\n     show progress\n  -f, --source-format SRC_FMT\n     format of the sources (probed when omitted)\n  --source-image-opts, --image-opts\n     sources are option strings (driver=...,file.filename=...)\n  -l, --source-snapshot SNAPSHOT_PARAMS\n     read a source's internal snapshot\n  -T, --source-cache SRC_CACHE\n     cache mode of the sources (writeback)\n  -O, --target-format TGT_FMT\n     format of the target (default raw)\n  --target-image-opts\n     the target is an option string (implies -n)\n  -o, --target-options TGT_OPTS\n     target format options ('-o help' lists them)\n  -c, --compress\n     write compressed clusters\n  -t, --target-cache TGT_CACHE\n     cache mode of the target (unsafe)\n  -B, --backing BACKING_FILENAME\n     make the target an overlay of BACKING_FILENAME\n  -F, --backing-format BACKING_FMT\n     format of BACKING_FILENAME\n  -n, --no-create\n     write into an existing target\n  --target-is-zero\n     the existing target reads as zeros (with -n)\n  -S, --sparse-size SPARSE_SIZE\n     leave holes for zero runs of this size (default 4k, 0: none)\n  --bitmaps\n     also copy persistent bitmaps\n  --skip-broken-bitmaps\n     skip broken bitmaps instead of failing\n  -U, --force-share\n     open the sources in shared mode\n  -r, --rate RATE\n     I/O rate limit in bytes per second\n  -m, --parallel NUM\n     parallel requests (default 8)\n  -C, --copy-range-offloading\n     use copy_file_range between local files\n  --salvage\n     read unreadable areas as zeros, with a warning\n  -W, --oob-writes\n     allow out-of-order writes (the target file may then be laid out differently)\n  --object OBJDEF\n     a secret (secret,id=ID,data=...|file=...)\n  SRC_FILENAME\n     a source image\n  TGT_FILENAME\n     the target image\n\n";

inventory::submit! { super::Command { name: "convert", summary: "Copy one image to another with optional format conversion", run } }

/// qemu-img's default `-S`: 4 KiB.
const DEFAULT_SPARSE: u64 = 4096;
/// Largest `-S` qemu-img accepts.
const MAX_SPARSE: u64 = 16 << 20;
/// Unit of work of the copy engine (qemu-img's request size).
const CHUNK: u64 = 2 << 20;

/// Options checked before anything is opened.
struct Settings {
    min_sparse: u64,
    parallel: usize,
    rate: u64,
    source_cache: CacheMode,
    target_cache: CacheMode,
}

fn settings(p: &crate::cli::Parsed) -> Result<Settings, CmdError> {
    let min_sparse = match p.last("sparse-size") {
        None => DEFAULT_SPARSE,
        Some(text) => {
            let v = number(
                "buffer size for sparse output",
                text,
                0,
                i64::MAX as u64,
                true,
            )?;
            if v % 512 != 0 || v > MAX_SPARSE {
                return Err(fail("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates output)."));
            }
            v
        }
    };
    let parallel = match p.last("parallel") {
        None => 8,
        Some(text) => number("number of coroutines", text, 1, 16, false)? as usize,
    };
    let rate = match p.last("rate") {
        None => 0,
        Some(text) => number("rate limit", text, 0, i64::MAX as u64, true)?,
    };
    let source_cache = cache_mode(p.last("source-cache"), CacheMode::Writeback, "source cache")?;
    // qemu-img checks -t only after creating the target; checking it first
    // leaves no stray file behind for a typo.
    let target_cache = cache_mode(p.last("target-cache"), CacheMode::Unsafe, "cache")?;
    Ok(Settings {
        min_sparse,
        parallel,
        rate,
        source_cache,
        target_cache,
    })
}

fn run(args: &[String]) -> CmdResult {
    let p = getopt("convert", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    let lists = option_lists(&p, "target-options")?;
    let snapshot = p
        .last("source-snapshot")
        .map(super::snapshot::parse_snapshot_param)
        .transpose()?;
    objects(&p)?;
    let settings = settings(&p)?;
    let out_format = p.last("target-format").unwrap_or("raw");
    // qemu-img's checks, in its order.
    if p.has("skip-broken-bitmaps") && !p.has("bitmaps") {
        return Err(fail("Use of --skip-broken-bitmaps requires --bitmaps"));
    }
    if p.has("copy-range-offloading") && p.has("compress") {
        return Err(fail("Cannot enable copy offloading when -c is used"));
    }
    if p.has("copy-range-offloading") && p.has("sparse-size") {
        return Err(fail("Cannot enable copy offloading when -S is used"));
    }
    if p.has("target-image-opts") && !p.has("no-create") {
        return Err(fail("--target-image-opts requires use of -n flag"));
    }
    let no_create = p.has("no-create");
    if no_create && !lists.is_empty() {
        return Err(fail("-o has no effect when skipping image creation"));
    }
    if p.has("target-is-zero") && !no_create {
        return Err(fail("--target-is-zero requires use of -n flag"));
    }
    if wants_help(&lists) {
        let driver = driver_for(out_format)
            .map_err(|_| fail(format!("Unknown file format '{out_format}'")))?;
        if !driver.can(caps::CREATE) {
            return Err(fail(format!(
                "Format driver '{}' does not support image creation",
                driver.name
            )));
        }
        out!("{}", options::help_text(&driver, p.operands.len() >= 2));
        return Ok(0);
    }
    if p.operands.len() < 2 {
        return Err(fail("Must specify image file name"));
    }
    let source_opts = p.has("source-image-opts") || p.has("image-opts");
    if (p.has("target-image-opts") && p.has("target-format"))
        || (source_opts && p.has("source-format"))
    {
        return Err(fail("--image-opts and --format are mutually exclusive"));
    }
    let (sources, target) = p.operands.split_at(p.operands.len() - 1);
    if snapshot.is_some() && sources.len() > 1 {
        return Err(fail("No support for concatenating multiple snapshot"));
    }
    let target = target[0].as_str();
    let quiet = p.has("quiet");
    let progress = Progress::start(p.has("progress") && !quiet, 1.0);
    progress.print(0.0, 100);
    let result = convert(
        &p,
        &settings,
        sources,
        target,
        no_create,
        snapshot.as_ref(),
        &progress,
    );
    progress.end();
    result
}

fn convert(
    p: &crate::cli::Parsed,
    settings: &Settings,
    sources: &[String],
    target: &str,
    no_create: bool,
    snapshot: Option<&super::snapshot::SnapshotParam>,
    progress: &Progress,
) -> CmdResult {
    let image_opts = p.has("source-image-opts") || p.has("image-opts");
    let inputs: Vec<_> = sources
        .iter()
        .map(|s| crate::confine::image_file(s, image_opts))
        .collect();
    let output = crate::confine::image_file(target, p.has("target-image-opts"));
    crate::confine::enter(&inputs, &[output])?;
    let lock = LockSpec::stable_reader(p.has("force-share"));
    let mut opened = Vec::new();
    for name in sources {
        let request = OpenRequest {
            cache: settings.source_cache,
            lock: Some(lock),
            ..OpenRequest::read(name, p.last("source-format"), image_opts)
        };
        opened.push(Arc::new(
            open_image(&request).map_err(|e| fail(e.message.to_string()))?,
        ));
    }
    if let Some(param) = snapshot {
        super::snapshot::load_snapshot(&opened[0], param)?;
    }
    if p.has("bitmaps") && opened.len() > 1 {
        return Err(fail("Copying bitmaps only possible with single source"));
    }
    // A source "supports bitmaps" when its format can hold persistent ones
    // (qcow2 v3; parallels, in qemu-img's eyes), whether or not it has any.
    let holds_bitmaps = |s: &Arc<BlockImage>| s.info().is_ok_and(|i| i.bitmaps.is_some());
    if p.has("bitmaps") && !opened.iter().all(holds_bitmaps) {
        return Err(fail("Source lacks bitmap support"));
    }
    // An option string names its own driver (-O cannot be given with it);
    // a protocol driver there (driver=nbd) holds a raw image.
    let named = p
        .has("target-image-opts")
        .then(|| crate::block::spec::resolve(target, true).ok())
        .flatten()
        .and_then(|spec| spec.format)
        .filter(|f| !crate::block::spec::is_protocol(f));
    let out_format = named
        .as_deref()
        .or(p.last("target-format"))
        .unwrap_or("raw");
    let driver =
        driver_for(out_format).map_err(|_| fail(format!("Unknown file format '{out_format}'")))?;
    if !no_create {
        crate::block::spec::creatable(target).map_err(fail)?;
    }
    if !no_create && !driver.can(caps::CREATE) {
        return Err(fail(format!(
            "Format driver '{}' does not support image creation",
            driver.name
        )));
    }
    // With -n, -B and -F only say what the target already holds: any
    // format. Else they are create options the format must have (checked
    // before compression, as qemu-img does).
    if !no_create && !driver.can(caps::BACKING) {
        for (flag, what) in [
            ("backing", "Backing file"),
            ("backing-format", "Backing file format"),
        ] {
            if p.has(flag) {
                return Err(fail(format!(
                    "{what} not supported for file format '{}'",
                    driver.name
                )));
            }
        }
    }
    let compress = p.has("compress");
    if compress && !driver.can(caps::COMPRESSED_WRITES) {
        return Err(fail("Compression not supported for this file format"));
    }
    let given = merge_opts(&p.all("target-options")).map_err(fail)?;
    // -B and -o backing_file= alike: only what the sources hold above the
    // backing file is copied (qemu-img treats them the same).
    let backed = p.has("backing") || given.get("backing_file").is_some_and(|b| !b.is_empty());
    if backed && opened.len() > 1 {
        return Err(fail(
            "Having a backing file for the target makes no sense when concatenating multiple input images",
        ));
    }
    // The options are parsed against the format's before anything is
    // asked of them (an option the format lacks is refused first).
    let checked = match no_create {
        false => Some(options::validate(&options::schema(&driver, true), &given).map_err(fail)?),
        true => None,
    };
    if !no_create
        && backed
        && !p.has("backing-format")
        && given.get("backing_fmt").is_none_or(|f| f.is_empty())
    {
        return Err(fail("Use of backing file requires explicit backing format"));
    }
    if compress {
        let on = |k: &str| given.get(k).is_some_and(|v| v == "on" || v == "true");
        if on("encryption") || given.contains_key("encrypt.format") {
            return Err(fail(
                "Compression and encryption not supported at the same time",
            ));
        }
        if given.get("preallocation").is_some_and(|v| v != "off") {
            return Err(fail(
                "Compression and preallocation not supported at the same time",
            ));
        }
    }
    let bitmaps = p
        .has("bitmaps")
        .then(|| source_bitmaps(&opened[0], p.has("skip-broken-bitmaps")))
        .transpose()?;
    let total: u64 = opened.iter().map(|s| s.size()).sum();
    let mut created = false;
    let mut _registered = None;
    if let Some(mut values) = checked {
        if let Some(refused) = crate::block::spec::creation_refused(target) {
            return Err(fail(refused));
        }
        values.remove("size");
        options::strip_file_prefix(&mut values);
        if let Some(b) = p.last("backing") {
            values.insert("backing_file".into(), b.to_string());
        }
        if let Some(f) = p.last("backing-format") {
            values.insert("backing_fmt".into(), f.to_string());
        }
        let existed = crate::block::image::target_existed(target);
        if !existed {
            _registered = Some(crate::interrupt::discard_on_signal(target));
        }
        let request = CreateRequest {
            size: total,
            options: values,
        };
        if let Err(e) = create_image(&driver, target, &request, CacheMode::Writeback, true) {
            return Err(fail(format!(
                "{target}: error while converting {}: {}",
                driver.name,
                create_message(&driver.name, e)
            )));
        }
        created = !existed;
    }
    // The new target is opened with the secrets it was created with.
    let secrets: Vec<(String, String)> = given
        .iter()
        .filter(|(k, _)| k.ends_with("key-secret") && !no_create)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let into = Target {
        name: target,
        no_create,
        backed,
        options: secrets,
        bitmaps,
    };
    let result = copy_into(p, settings, &opened, &into, &driver, progress);
    if result.is_err() && created {
        // Never leave a half-written target that looks like a good image.
        crate::confine::discard_target(target);
    }
    result
}

/// The image `convert` writes.
struct Target<'a> {
    /// Its name.
    name: &'a str,
    /// `-n`: it existed before.
    no_create: bool,
    /// It has a backing file: only what lies above it is copied.
    backed: bool,
    /// Open options (the secrets it was created with).
    options: Vec<(String, String)>,
    /// `--bitmaps`: the source's bitmaps to copy.
    bitmaps: Option<Vec<BitmapSummary>>,
}

fn copy_into(
    p: &crate::cli::Parsed,
    settings: &Settings,
    sources: &[Arc<BlockImage>],
    into: &Target,
    driver: &Arc<crate::plugins::Driver>,
    progress: &Progress,
) -> CmdResult {
    let request = OpenRequest {
        write: true,
        cache: settings.target_cache,
        lock: Some(LockSpec::READ_WRITE),
        no_backing: false,
        options: into.options.clone(),
        // An option string names its own driver (qemu-img ignores -O then).
        ..if p.has("target-image-opts") {
            OpenRequest::read(into.name, None, true)
        } else {
            OpenRequest::read(into.name, Some(&driver.name), false)
        }
    };
    let no_create = into.no_create;
    let out = open_image(&request).map_err(|e| fail(e.message.to_string()))?;
    if into.backed && p.has("target-is-zero") {
        // qemu-img refuses the promise here, before any other check of the
        // target, and exits 0 (its error path keeps the success status).
        errln!(
            "{}: Cannot use --target-is-zero when the destination image has a backing file",
            crate::cli::program()
        );
        return Ok(0);
    }
    if p.has("compress") {
        out.store.stop_growing_ahead();
    }
    let total: u64 = sources.iter().map(|s| s.size()).sum();
    if no_create && out.size() < total {
        return Err(fail("output file is smaller than input file"));
    }
    let backed = into.backed;
    // A remote store keeps what it held before it was formatted: a format
    // that passes its bytes through (raw) does not read as zeros there.
    let remote_bytes = matches!(*out.store, Store::Remote(_)) && driver.can(caps::IDENTITY_MAPPED);
    let fresh = !no_create && driver.can(caps::ZERO_INIT) && !backed && !remote_bytes;
    let out_info = out.info().map_err(|e| fail(e.message.to_string()))?;
    // Compressed writes go a cluster at a time, of at most one buffer
    // (2 MiB); a target with no clusters (a flat vmdk) cannot take them. An
    // image written in order (streamOptimized) stores every grain
    // compressed, so a copy into one is compressed too.
    let compressing = p.has("compress") || out_info.write_in_order;
    if compressing
        && !out_info
            .cluster_size
            .is_some_and(|c| (512..=CHUNK).contains(&c))
    {
        return Err(fail("invalid cluster size"));
    }
    if into.bitmaps.is_some() && (!out.driver.can(caps::BITMAPS) || out_info.bitmaps.is_none()) {
        return Err(fail(format!(
            "Format driver '{}' does not support bitmaps",
            out.driver.name
        )));
    }
    // Compression is CPU-bound: more workers than cores only hold more
    // buffers. Plain copies overlap I/O with copying, two workers per
    // core; more only queue on the target file's inode lock. Workers
    // that take turns to allocate in guest order (no -W, a target with
    // metadata) wait less with one per core (measured: BENCHMARKS.md).
    // A network store waits on round trips, not on cores: it gets as
    // many requests in flight as -m asks (8 by default, as qemu-img),
    // a source once it proves far (before that, as many as a local
    // copy: from nginx or qemu-nbd on this machine, four requests in
    // flight copy faster than eight and hold 8 MiB less).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let in_turns = !p.has("oob-writes") && !out.driver.can(caps::IDENTITY_MAPPED);
    let per_core = if compressing || in_turns { 1 } else { 2 };
    let local = settings.parallel.min(cores * per_core);
    let remote = |image: &BlockImage| matches!(*image.store, Store::Remote(_));
    let (threads, near_threads) = if compressing {
        (local, local)
    } else if remote(&out) {
        (settings.parallel, settings.parallel)
    } else if sources.iter().any(|s| remote(s)) {
        (settings.parallel, local)
    } else {
        (local, local)
    };
    let job = CopyJob {
        sources,
        target: &out,
        target_zeroed: fresh || p.has("target-is-zero"),
        min_sparse: settings.min_sparse,
        // A compressed copy holds two windows of compressed items (being
        // written, being compressed): smaller items keep that small (1 MiB
        // items: peak RSS of a zlib convert 11.8 MiB instead of 16.2, zstd
        // 13.2 instead of 19.3, no slower).
        chunk: if compressing { CHUNK / 2 } else { CHUNK },
        align: out_info.cluster_size.unwrap_or(512).max(512),
        threads,
        near_threads,
        top_only: backed,
        offload: p.has("copy-range-offloading"),
        salvage: p.has("salvage"),
        quiet: p.has("quiet"),
        // Without -W, compressed clusters are packed in guest order: the
        // workers compress ahead, one writer at a time stores them in order.
        sequential: out_info.write_in_order || (p.has("compress") && !p.has("oob-writes")),
        in_order: !p.has("oob-writes"),
        compress: compressing,
        progress,
        rate: &RateLimit::new(settings.rate),
    };
    job.run().map_err(|e| fail(e.message.to_string()))?;
    // Bitmaps are added after the copy, so that its writes do not dirty
    // them; the target is closed (storing them) whatever happened.
    let copied = match &into.bitmaps {
        Some(bitmaps) => copy_bitmaps(&sources[0], &out, bitmaps),
        None => Ok(0),
    };
    let closed = out.close().map_err(|e| fail(e.message.to_string()));
    copied?;
    closed?;
    // Complete and closed: a new target gets its real first bytes only now.
    out.store
        .lift_veil()
        .map_err(|e| fail(e.message.to_string()))?;
    Ok(0)
}

/// The bitmaps `--bitmaps` copies from `source`. An inconsistent one is an
/// error, or with `--skip-broken-bitmaps` skipped with a warning. qemu-img
/// visits bitmaps newest first, so the first one reported is the last found.
fn source_bitmaps(source: &BlockImage, skip_broken: bool) -> Result<Vec<BitmapSummary>, CmdError> {
    let info = source.info().map_err(|e| fail(e.message.to_string()))?;
    let mut bitmaps = info.bitmaps.unwrap_or_default();
    for b in bitmaps.iter().rev().filter(|b| b.inconsistent) {
        if !skip_broken {
            return Err(fail(format!(
                "Cannot copy inconsistent bitmap '{}'\nTry --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it",
                b.name
            )));
        }
        errln!(
            "{}: warning: Skipping inconsistent bitmap '{}'",
            crate::cli::program(),
            b.name
        );
    }
    bitmaps.retain(|b| !b.inconsistent);
    Ok(bitmaps)
}

/// Adds each of `bitmaps` to `target` (same name, granularity and state)
/// with the bits the source's holds.
fn copy_bitmaps(source: &BlockImage, target: &BlockImage, bitmaps: &[BitmapSummary]) -> CmdResult {
    let existing = target
        .info()
        .map_err(|e| fail(e.message.to_string()))?
        .bitmaps
        .unwrap_or_default();
    if let Some(b) = bitmaps
        .iter()
        .rev()
        .find(|b| existing.iter().any(|e| e.name == b.name))
    {
        return Err(fail(format!(
            "Failed to create bitmap {0}: Bitmap already exists: {0}",
            b.name
        )));
    }
    for b in bitmaps {
        let name = &b.name;
        let add = super::bitmap::apply(target, None, "add", name, Some(b.granularity), None);
        add.map_err(|m| fail(format!("Failed to create bitmap {name}: {m}")))?;
        super::bitmap::apply(target, Some(source), "merge", name, None, Some(name))
            .map_err(|m| fail(format!("Failed to populate bitmap {name}: {m}")))?;
        if !b.enabled {
            super::bitmap::apply(target, None, "disable", name, None, None)
                .map_err(|m| fail(format!("Failed to populate bitmap {name}: {m}")))?;
        }
    }
    Ok(0)
}
