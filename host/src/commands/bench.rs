//! `bench`: time a stream of fixed-size reads or writes on an image.

use super::common::{
    cache_mode, check_image_opts, number, objects, print_help, refuse_shared_write,
};
use crate::block::{open_image, LockSpec, OpenRequest};
use crate::cli::{flag, getopt, long_arg, long_flag, with_arg, Opt};
use crate::engine::turns::Turns;
use crate::error::{fail, CmdError, CmdResult};
use crate::store::CacheMode;
use crate::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

const OPTS: &[Opt] = &[
    flag('h', "help"),
    flag('q', "").keyed("quiet"),
    with_arg('f', "format"),
    long_flag("image-opts"),
    with_arg('t', "cache"),
    with_arg('c', "count"),
    with_arg('s', "buffer-size"),
    with_arg('d', "depth"),
    with_arg('o', "offset"),
    with_arg('S', "step-size"),
    with_arg('i', "aio"),
    flag('n', "native"),
    flag('w', "write"),
    long_arg("pattern"),
    long_arg("flush-interval"),
    long_flag("no-drain"),
    flag('U', "force-share"),
];

const HELP: &str = "Usage:\nRun simple image benchmark.  Usage:\n\n  {prog} bench [-f FMT | --image-opts] [-t CACHE] [-c COUNT] [-d DEPTH]\n        [-o OFFSET] [-s BUFFER_SIZE] [-S STEP_SIZE] [-i AIO] [-n]\n        [-w [--pattern PATTERN] [--flush-interval INTERVAL [--no-drain]]]\n\nArguments:\n  -h, --help\n     print this help and exit\n  -q, --quiet\n     accepted (the report is printed regardless, as qemu-img does)\n  -f, --format FMT\n     the format of FILENAME (probed when omitted)\n  --image-opts\n     FILENAME is an option string (driver=...,file.filename=...)\n  -t, --cache CACHE\n     cache mode (writeback)\n  -c, --count COUNT\n     number of requests (default 75000)\n  -s, --buffer-size BUFFER_SIZE\n     bytes per request (default 4096)\n  -d, --depth DEPTH\n     requests in flight at once (default 64)\n  -o, --offset OFFSET\n     offset of the first request\n  -S, --step-size STEP_SIZE\n     distance between requests (default: the buffer size)\n  -i, --aio AIO\n     I/O backend (threads, native, io_uring); qimg uses threads\n  -n, --native\n     native AIO (needs -t none)\n  -w, --write\n     write instead of read\n  --pattern PATTERN\n     byte value to write (default 0)\n  --flush-interval FLUSH_INTERVAL\n     flush after this many requests\n  --no-drain\n     do not wait for requests in flight before flushing\n  -U, --force-share\n     open the image in shared mode\n\n";

inventory::submit! { super::Command { name: "bench", summary: "Run simple image benchmark", run } }

const I32_MAX: u64 = i32::MAX as u64;
/// Threads issuing requests at most (the depth is honoured up to this).
const MAX_WORKERS: u64 = 16;

/// `--pattern`'s value as C's strtol reads it (decimal, 0x hex, 0 octal,
/// optionally negative); `None` if it is not a number.
fn pattern_number(text: &str) -> Option<i64> {
    let t = text.trim();
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let value = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        i64::from_str_radix(hex, 16).ok()?
    } else if t.len() > 1 && t.starts_with('0') {
        i64::from_str_radix(&t[1..], 8).ok()?
    } else {
        t.parse().ok()?
    };
    Some(if negative { -value } else { value })
}

fn run(args: &[String]) -> CmdResult {
    let p = getopt("bench", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    let count = p
        .last("count")
        .map(|t| number("request count", t, 1, I32_MAX, false))
        .transpose()?
        .unwrap_or(75000);
    let size = p
        .last("buffer-size")
        .map(|t| number("buffer size", t, 1, I32_MAX, true))
        .transpose()?
        .unwrap_or(4096);
    let depth = p
        .last("depth")
        .map(|t| number("queue depth", t, 1, I32_MAX, false))
        .transpose()?
        .unwrap_or(64);
    let offset = p
        .last("offset")
        .map(|t| number("offset", t, 0, i64::MAX as u64, true))
        .transpose()?
        .unwrap_or(0);
    let step = p
        .last("step-size")
        .map(|t| number("step size", t, 0, I32_MAX, true))
        .transpose()?
        .filter(|&step| step != 0)
        .unwrap_or(size);
    let pattern = match p.last("pattern") {
        Some(t) => {
            let value = pattern_number(t)
                .ok_or_else(|| fail(format!("Invalid pattern byte specified: '{t}'.")))?;
            u8::try_from(value)
                .map_err(|_| fail("Invalid pattern byte specified. Must be between 0 and 255."))?
        }
        None => 0,
    };
    let cache = cache_mode(p.last("cache"), CacheMode::Writeback, "cache")
        .map_err(|_| fail("Invalid cache mode"))?;
    if let Some(aio) = p.last("aio") {
        if !matches!(aio, "threads" | "native" | "io_uring") {
            return Err(fail(format!("Invalid aio option: {aio}")));
        }
    }
    let write = p.has("write");
    // An interval of 0, as qemu-img takes it, means no flushes.
    let flush_interval = match p.last("flush-interval") {
        Some(t) => Some(number("flush interval", t, 0, I32_MAX, false)?).filter(|&f| f != 0),
        None => None,
    };
    if flush_interval.is_some() && !write {
        return Err(fail("--flush-interval is only available in write tests"));
    }
    if flush_interval.is_some_and(|f| f < depth) {
        return Err(fail("Flush interval can't be smaller than depth"));
    }
    objects(&p)?;
    check_image_opts(&p, "format")?;
    if p.operands.len() != 1 {
        return Err(CmdError::usage("bench", "Expecting one image file name"));
    }
    let name = &p.operands[0];
    if write && p.has("force-share") {
        return Err(refuse_shared_write(name, p.last("format")));
    }
    if (p.has("native") || p.last("aio") == Some("native")) && !cache.direct() {
        return Err(fail(format!(
            "Could not open '{name}': aio=native was specified, but it requires cache.direct=on, which was not specified."
        )));
    }
    let request = OpenRequest {
        write,
        cache,
        lock: Some(if write {
            LockSpec::READ_WRITE
        } else {
            LockSpec::reader(p.has("force-share"))
        }),
        no_backing: false,
        ..OpenRequest::read(name, p.last("format"), p.has("image-opts"))
    };
    let image = open_image(&request).map_err(|e| fail(e.message.to_string()))?;
    outln!(
        "Sending {count} {} requests, {size} bytes each, {depth} in parallel (starting at offset {offset}, step size {step})",
        if write { "write" } else { "read" }
    );
    if let Some(f) = flush_interval {
        outln!("Sending flush every {f} requests");
    }
    let image_size = image.size();
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let error: Mutex<Option<String>> = Mutex::new(None);
    let flush_lock = std::sync::RwLock::new(());
    let workers = depth.min(MAX_WORKERS).min(count).max(1);
    // Writers reserve their clusters in request order, so the image is laid
    // out as qemu-img's in-order submission lays it out.
    let turns = (write
        && workers > 1
        && image
            .reserve(0, 0)
            .map_err(|e| fail(e.message.to_string()))?)
    .then(Turns::new);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut buf = vec![pattern; size as usize];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let at = if image_size == 0 {
                        offset
                    } else {
                        (offset + i * step) % image_size.max(1)
                    };
                    let at = if i == 0 { offset } else { at };
                    let in_range = at + size <= image_size;
                    // Every request handed out takes its turn, even after
                    // a failure: later ones wait for it.
                    let reserved = match &turns {
                        Some(turns) => turns.take(i as usize, || {
                            if in_range && !failed.load(Ordering::Relaxed) {
                                image.reserve(at, size).map(drop)
                            } else {
                                Ok(())
                            }
                        }),
                        None => Ok(()),
                    };
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let result = {
                        let _in_flight = flush_lock.read().unwrap_or_else(|e| e.into_inner());
                        if !in_range {
                            Err("Input/output error".to_string())
                        } else if let Err(e) = reserved {
                            Err(e.message.to_string())
                        } else if write {
                            image.write(at, &buf).map_err(|e| e.message.to_string())
                        } else {
                            image.read(at, &mut buf).map_err(|e| e.message.to_string())
                        }
                    };
                    if let Err(e) = result {
                        failed.store(true, Ordering::Relaxed);
                        lock(&error).get_or_insert(e);
                        break;
                    }
                    if let Some(f) = flush_interval.filter(|f| *f > 0) {
                        if (i + 1).is_multiple_of(f) {
                            let _drained = (!p.has("no-drain"))
                                .then(|| flush_lock.write().unwrap_or_else(|e| e.into_inner()));
                            if let Err(e) = image.flush() {
                                failed.store(true, Ordering::Relaxed);
                                lock(&error).get_or_insert(e.message.to_string());
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some(message) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(fail(format!("Failed request: {message}")));
    }
    if write {
        image.close().map_err(|e| fail(e.message.to_string()))?;
    }
    outln!(
        "Run completed in {:.3} seconds.",
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}
