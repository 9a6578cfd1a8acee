//! qcow2 metadata commands against qemu-img 10.0.2: `check` (and its
//! repairs), `snapshot`, `bitmap` and `amend`. Every fixture is made by
//! qemu-img/qemu-io, damaged where a case needs it by patching a few bytes;
//! each case names the qemu-img command it compares with, and every image
//! qimg changes must then pass the real `qemu-img check`.

use qimg_tests::{Fixture, Outcome};

/// A copy of `src` named `dst` with big-endian 64-bit words written at the
/// given offsets.
fn patch64(fx: &Fixture, src: &str, dst: &str, words: &[(u64, u64)]) {
    let edits: Vec<(u64, Vec<u8>)> = words
        .iter()
        .map(|&(at, v)| (at, v.to_be_bytes().to_vec()))
        .collect();
    fx.patched_copy(src, dst, &edits);
}

/// `qemu-img check FILE` by the oracle, with the file name replaced.
fn oracle_check(fx: &Fixture, file: &str) -> Outcome {
    let out = fx.qemu_img(&["check", file]);
    Outcome {
        stdout: out.stdout.replace(file, "X"),
        stderr: out.stderr.replace(file, "X"),
        status: out.status,
    }
}

/// Asserts that the real `qemu-img check` finds `file` clean.
fn assert_clean(fx: &Fixture, file: &str) {
    let out = fx.qemu_img(&["check", file]);
    assert_eq!(
        (out.status, out.stdout.contains("No errors were found")),
        (0, true),
        "qemu-img check {file}: {}{}",
        out.stdout,
        out.stderr
    );
}

/// Runs `args` with qimg on a copy of `src` and with qemu-img on another
/// (`{}` stands for the copy) and asserts the same output and status; then
/// the real `qemu-img check` must say the same of both copies.
fn same_on_copies(fx: &Fixture, src: &str, args: &[&str]) {
    let ours = run_on_copy(fx, src, "ours.q", args, true);
    let theirs = run_on_copy(fx, src, "theirs.q", args, false);
    assert_eq!(ours, theirs, "{args:?} on {src}");
    assert_eq!(
        oracle_check(fx, "ours.q"),
        oracle_check(fx, "theirs.q"),
        "qemu-img check after {args:?} on {src}"
    );
}

/// Runs `args` with `{}` replaced by a fresh copy of `src` named `copy`,
/// with qimg or qemu-img; the copy's name is replaced by `X` in the output.
fn run_on_copy(fx: &Fixture, src: &str, copy: &str, args: &[&str], ours: bool) -> Outcome {
    fx.sh(&format!("cp --sparse=always {src} {copy}"));
    let args: Vec<String> = args.iter().map(|a| a.replace("{}", copy)).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = if ours {
        fx.qimg(&args)
    } else {
        fx.qemu_img(&args)
    };
    Outcome {
        stdout: out.stdout.replace(copy, "X"),
        stderr: out.stderr.replace(copy, "X"),
        status: out.status,
    }
}

/// Every way of running `check` on `src`: human, JSON, quiet, and the two
/// repairs in both output formats.
fn check_every_way(fx: &Fixture, src: &str) {
    for args in [
        &["check", "{}"][..],
        &["check", "--output=json", "{}"],
        &["check", "-q", "{}"],
        &["check", "-r", "leaks", "{}"],
        &["check", "-r", "all", "{}"],
        &["check", "-r", "leaks", "--output=json", "{}"],
        &["check", "-r", "all", "--output=json", "{}"],
    ] {
        same_on_copies(fx, src, args);
    }
}

// Layout of the image `base` makes (64 KiB clusters): header, refcount
// table at 0x10000, refcount block at 0x20000, L1 at 0x30000, L2 at
// 0x40000, data clusters 0x50000 and 0x60000, a compressed cluster at
// 0x70000.
const REFTABLE: u64 = 0x10000;
const REFBLOCK: u64 = 0x20000;
const L1: u64 = 0x30000;
const L2: u64 = 0x40000;
/// Bit 63 of L1/L2 entries: the refcount is exactly one.
const COPIED: u64 = 1 << 63;

/// 4 MiB, 128 KiB of data at 0 (two clusters) and a compressed cluster at
/// 1 MiB.
fn base(fx: &Fixture) {
    fx.make_qcow2("base.qcow2", "", "4M");
    fx.qemu_io_cmds(
        "qcow2",
        "base.qcow2",
        &["write -P 1 0 128k", "write -c -P 2 1M 64k"],
    );
}

// ---- check ----

#[test]
fn check_clean_images_of_every_kind() {
    let fx = Fixture::new("qm_check_clean");
    base(&fx);
    fx.make_qcow2("v2.qcow2", "compat=0.10", "4M");
    fx.qemu_io_cmds(
        "qcow2",
        "v2.qcow2",
        &["write -P 1 0 64k", "write -z 64k 64k"],
    );
    fx.make_qcow2("x.qcow2", "extended_l2=on", "4M");
    fx.qemu_io_cmds(
        "qcow2",
        "x.qcow2",
        &["write -P 1 0 4k", "write -c -P 3 1M 64k", "write -z 2M 64k"],
    );
    fx.make_qcow2("rc1.qcow2", "refcount_bits=1,cluster_size=512", "1M");
    fx.qemu_io_cmds(
        "qcow2",
        "rc1.qcow2",
        &["write -P 1 0 64k", "write -P 2 100k 3k"],
    );
    fx.make_qcow2("df.qcow2", "data_file=df.raw", "1M");
    fx.qemu_io_cmds("qcow2", "df.qcow2", &["write -P 1 0 64k"]);
    fx.make_qcow2("empty.qcow2", "", "0");
    fx.make_qcow2("s.qcow2", "", "4M");
    fx.qemu_io_cmds("qcow2", "s.qcow2", &["write -P 1 0 64k"]);
    fx.oracle(&["snapshot", "-c", "s1", "s.qcow2"]);
    fx.qemu_io_cmds("qcow2", "s.qcow2", &["write -P 2 0 64k"]);
    fx.oracle(&["bitmap", "--add", "s.qcow2", "b0"]);
    for f in [
        "base.qcow2",
        "v2.qcow2",
        "x.qcow2",
        "rc1.qcow2",
        "df.qcow2",
        "empty.qcow2",
        "s.qcow2",
    ] {
        fx.same(&["check", f]);
        fx.same(&["check", "--output=json", f]);
        fx.same(&["check", "-U", "-q", f]);
    }
    fx.same(&["check", "-r", "all", "-U", "base.qcow2"]);
}

#[test]
fn check_finds_and_repairs_leaks() {
    let fx = Fixture::new("qm_check_leaks");
    base(&fx);
    // The second data cluster loses its L2 entry: leaked.
    patch64(&fx, "base.qcow2", "leak.qcow2", &[(L2 + 8, 0)]);
    // The L2 table's refcount is 2: leaked, and its L1 entry's copied flag
    // is then wrong.
    fx.patched_copy("base.qcow2", "l2rc.qcow2", &[(REFBLOCK + 8, vec![0, 2])]);
    for f in ["leak.qcow2", "l2rc.qcow2"] {
        check_every_way(&fx, f);
    }
    let fixed = run_on_copy(
        &fx,
        "leak.qcow2",
        "ours.q",
        &["check", "-r", "leaks", "{}"],
        true,
    );
    assert_eq!(fixed.status, 0, "{fixed:?}");
    assert_clean(&fx, "ours.q");
}

#[test]
fn check_finds_and_repairs_corruptions() {
    let fx = Fixture::new("qm_check_corrupt");
    base(&fx);
    // Two L2 entries share a data cluster (refcount 1, two references).
    patch64(
        &fx,
        "base.qcow2",
        "dup.qcow2",
        &[(L2 + 16, COPIED | 0x50000)],
    );
    // An unaligned data cluster next to a leak.
    patch64(
        &fx,
        "base.qcow2",
        "unaligned.qcow2",
        &[(L2 + 8, 0), (L2 + 24, COPIED | 0x60200)],
    );
    // A data cluster past the end of the file.
    patch64(
        &fx,
        "base.qcow2",
        "eof.qcow2",
        &[(L2 + 16, COPIED | 0xa0000)],
    );
    // An L2 table that is not cluster aligned.
    patch64(
        &fx,
        "base.qcow2",
        "l2.qcow2",
        &[(L1, COPIED | (L2 + 0x200))],
    );
    // A compressed cluster with the copied flag.
    patch64(
        &fx,
        "base.qcow2",
        "comp.qcow2",
        &[(L2 + 128, 0xC000_0000_0007_0000)],
    );
    // A preallocated zero cluster at an unaligned offset (repaired into a
    // plain zero cluster).
    patch64(
        &fx,
        "base.qcow2",
        "zero.qcow2",
        &[(L2 + 24, COPIED | 0x60201)],
    );
    // A data cluster that is the refcount block.
    patch64(
        &fx,
        "base.qcow2",
        "rb.qcow2",
        &[(L2 + 24, COPIED | REFBLOCK)],
    );
    // A refcount block past the end of the file.
    patch64(
        &fx,
        "base.qcow2",
        "outside.qcow2",
        &[(REFTABLE + 8, 0x200000)],
    );
    for f in [
        "dup.qcow2",
        "unaligned.qcow2",
        "eof.qcow2",
        "l2.qcow2",
        "comp.qcow2",
        "zero.qcow2",
        "rb.qcow2",
        "outside.qcow2",
    ] {
        check_every_way(&fx, f);
    }
    for f in ["dup.qcow2", "zero.qcow2", "rb.qcow2", "outside.qcow2"] {
        run_on_copy(&fx, f, "ours.q", &["check", "-r", "all", "{}"], true);
        assert_clean(&fx, "ours.q");
    }
}

#[test]
fn check_of_snapshots_bitmaps_and_extended_l2() {
    let fx = Fixture::new("qm_check_more");
    fx.make_qcow2("s.qcow2", "", "4M");
    fx.qemu_io_cmds("qcow2", "s.qcow2", &["write -P 1 0 128k"]);
    fx.oracle(&["snapshot", "-c", "s1", "s.qcow2"]);
    fx.qemu_io_cmds("qcow2", "s.qcow2", &["write -P 7 0 64k"]);
    // The shared data cluster 0x60000 counted once instead of twice.
    fx.patched_copy("s.qcow2", "s1.qcow2", &[(REFBLOCK + 12, vec![0, 1])]);
    fx.make_qcow2("x.qcow2", "extended_l2=on", "4M");
    fx.qemu_io_cmds(
        "qcow2",
        "x.qcow2",
        &["write -P 1 0 4k", "write -P 2 100k 8k", "write -z 2M 64k"],
    );
    // Allocated and zero bits both set for subcluster 0.
    patch64(&fx, "x.qcow2", "x1.qcow2", &[(L2 + 8, 1 | 1 << 32)]);
    // An unallocated cluster with allocation bits.
    patch64(&fx, "x.qcow2", "x2.qcow2", &[(L2 + 16 * 9 + 8, 1)]);
    fx.make_qcow2("b.qcow2", "refcount_bits=1", "4M");
    fx.qemu_io_cmds("qcow2", "b.qcow2", &["write -P 1 0 64k"]);
    fx.oracle(&["bitmap", "--add", "b.qcow2", "b0"]);
    fx.qemu_io_cmds("qcow2", "b.qcow2", &["write -P 1 1M 64k"]);
    // Refcount overflow: two references to a cluster of a 1-bit refcount.
    patch64(&fx, "b.qcow2", "b1.qcow2", &[(L2 + 8, COPIED | 0x50000)]);
    for f in ["s1.qcow2", "x1.qcow2", "x2.qcow2", "b.qcow2", "b1.qcow2"] {
        check_every_way(&fx, f);
    }
}

#[test]
fn check_dirty_and_corrupt_images() {
    let fx = Fixture::new("qm_check_dirty");
    fx.make_qcow2("l.qcow2", "lazy_refcounts=on", "4M");
    fx.qemu_io_cmds("qcow2", "l.qcow2", &["write -P 1 0 64k"]);
    fx.oracle(&["snapshot", "-c", "s1", "l.qcow2"]);
    // qemu-io's abort leaves the dirty bit set with stale refcounts: the
    // check then needs the refcount structures rebuilt.
    fx.sh("qemu-io -f qcow2 -c 'write -P 2 0 64k' -c 'write -P 3 1M 64k' -c abort l.qcow2 >/dev/null 2>&1 || true");
    check_every_way(&fx, "l.qcow2");
    run_on_copy(
        &fx,
        "l.qcow2",
        "ours.q",
        &["check", "-r", "all", "{}"],
        true,
    );
    assert_clean(&fx, "ours.q");
    fx.same(&["info", "ours.q"]);
    // The corrupt and dirty bits alone are cleared by a repair.
    base(&fx);
    fx.patched_copy("base.qcow2", "c.qcow2", &[(79, vec![2])]);
    fx.patched_copy("base.qcow2", "d.qcow2", &[(79, vec![1])]);
    for f in ["c.qcow2", "d.qcow2"] {
        check_every_way(&fx, f);
    }
}

#[test]
fn a_repair_that_fails_still_closes_the_image_as_qemu_img_does() {
    // `check -r leaks` cannot rebuild stale refcounts: it fails, and the
    // image is closed cleanly all the same, which clears its dirty bit.
    let fx = Fixture::new("qm_check_failed_repair");
    fx.make_qcow2("l.qcow2", "lazy_refcounts=on", "4M");
    fx.qemu_io_cmds("qcow2", "l.qcow2", &["write -P 1 0 64k"]);
    fx.sh("qemu-io -f qcow2 -c 'write -P 2 0 64k' -c 'write -P 3 1M 64k' -c abort l.qcow2 >/dev/null 2>&1 || true");
    let args = ["check", "-r", "leaks", "{}"];
    let ours = run_on_copy(&fx, "l.qcow2", "ours.q", &args, true);
    let theirs = run_on_copy(&fx, "l.qcow2", "theirs.q", &args, false);
    assert_eq!(ours, theirs);
    assert_eq!(ours.status, 1, "{ours:?}");
    let read = |f: &str| std::fs::read(fx.path(f)).expect("read");
    assert!(read("l.qcow2")[79] & 1 == 1, "the fixture is not dirty");
    assert!(read("ours.q") == read("theirs.q"), "the files differ");
}

#[test]
fn check_rebuilds_what_qemu_img_cannot() {
    // qemu-img gives up on these (its overlap checks stop the rebuild);
    // qimg rebuilds the refcount structures and the image is clean.
    let fx = Fixture::new("qm_check_rebuild");
    base(&fx);
    patch64(
        &fx,
        "base.qcow2",
        "unaligned.qcow2",
        &[(REFTABLE, REFBLOCK + 0x200)],
    );
    patch64(
        &fx,
        "base.qcow2",
        "reserved.qcow2",
        &[(REFTABLE, REFBLOCK | 1)],
    );
    for f in ["unaligned.qcow2", "reserved.qcow2"] {
        fx.same(&["check", f]);
        let out = run_on_copy(&fx, f, "ours.q", &["check", "-r", "all", "{}"], true);
        assert_eq!(out.status, 0, "{out:?}");
        assert!(
            out.stderr.contains("Rebuilding refcount structure"),
            "{out:?}"
        );
        assert_clean(&fx, "ours.q");
        assert_eq!(fx.qemu_img(&["compare", "base.qcow2", "ours.q"]).status, 0);
    }
}

// ---- snapshot ----

/// `qemu-img check` output without what depends on where clusters are:
/// the image end offset and the fragmentation figure.
fn without_layout(check: &str) -> String {
    check
        .lines()
        .filter(|l| !l.starts_with("Image end offset"))
        .map(|l| match (l.find("allocated, "), l.find("% fragmented")) {
            (Some(a), Some(f)) => format!("{}{}", &l[..a + 11], &l[f + 1..]),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs each step with qimg on `ours.q` and with qemu-img on `theirs.q`
/// (both copies of `src`; `io:CMD` steps run qemu-io on both) and asserts
/// the same output at every step; then the two files must be the same
/// image: same `qemu-img check` report, same `qemu-img map` (so the same
/// clusters were allocated where qemu-img allocates them) and length
/// unless a snapshot was created or deleted, same guest data now and in
/// every snapshot.
fn same_steps(fx: &Fixture, src: &str, steps: &[&str]) {
    for name in ["ours.q", "theirs.q"] {
        fx.sh(&format!("cp --sparse=always {src} {name}"));
    }
    for step in steps {
        if let Some(cmd) = step.strip_prefix("io:") {
            fx.qemu_io_cmds("qcow2", "ours.q", &[cmd]);
            fx.qemu_io_cmds("qcow2", "theirs.q", &[cmd]);
            continue;
        }
        let args: Vec<&str> = step.split(' ').collect();
        let with =
            |file: &str| -> Vec<String> { args.iter().map(|a| a.replace("{}", file)).collect() };
        let (a, b) = (with("ours.q"), with("theirs.q"));
        let ours = fx.qimg(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let theirs = fx.qemu_img(&b.iter().map(String::as_str).collect::<Vec<_>>());
        let norm = |o: &Outcome, f: &str| {
            (
                mask_dates(&o.stdout.replace(f, "X")),
                mask_node(&o.stderr.replace(f, "X")),
                o.status,
            )
        };
        assert_eq!(
            norm(&ours, "ours.q"),
            norm(&theirs, "theirs.q"),
            "step {step} of {steps:?}"
        );
    }
    // snapshot -c and -d place their new tables elsewhere than qemu-img
    // does (they switch to them with one header write): the same image,
    // another layout.
    let relaid = steps
        .iter()
        .any(|s| s.starts_with("snapshot -c") || s.starts_with("snapshot -d"));
    let check = |f: &str| {
        let mut out = oracle_check(fx, f);
        if relaid {
            out.stdout = without_layout(&out.stdout);
        }
        out
    };
    assert_eq!(check("ours.q"), check("theirs.q"), "{steps:?}");
    if !relaid {
        // (Copied sparsely first: whether a run of zeros in the file is a
        // hole depends on the file system's history, not on the image.)
        fx.sh("cp --sparse=always ours.q ours.n && cp --sparse=always theirs.q theirs.n");
        let map = |f: &str| fx.qemu_img(&["map", "--output=json", f]).stdout;
        assert_eq!(map("ours.n"), map("theirs.n"), "map after {steps:?}");
        let len = |f: &str| std::fs::metadata(fx.path(f)).expect("stat").len();
        assert_eq!(len("ours.q"), len("theirs.q"), "length after {steps:?}");
    }
    assert_eq!(
        fx.qemu_img(&["compare", "ours.q", "theirs.q"]).status,
        0,
        "{steps:?}"
    );
    assert_eq!(
        bitmap_dump(fx, "ours.q"),
        bitmap_dump(fx, "theirs.q"),
        "bitmaps after {steps:?}"
    );
    let list = fx.qemu_img(&["snapshot", "-l", "theirs.q"]).stdout;
    if list.is_empty() && !relaid {
        // Without snapshot dates to differ, the files are the same bytes.
        let bytes = |f: &str| std::fs::read(fx.path(f)).expect("read");
        assert!(
            bytes("ours.q") == bytes("theirs.q"),
            "bytes after {steps:?}"
        );
    }
    for line in list.lines().skip(2) {
        let id = line.split(' ').next().unwrap_or_default();
        let sn = format!("snapshot.id={id}");
        for f in ["ours.q", "theirs.q"] {
            fx.oracle(&[
                "convert",
                "-l",
                &sn,
                "-O",
                "raw",
                f,
                &format!("{f}.{id}.raw"),
            ]);
        }
        let (a, b) = (format!("ours.q.{id}.raw"), format!("theirs.q.{id}.raw"));
        assert_eq!(
            fx.qemu_img(&["compare", "-f", "raw", "-F", "raw", &a, &b])
                .status,
            0,
            "snapshot {id}"
        );
    }
}

/// The persistent bitmaps of a qcow2 file as text: per bitmap its name,
/// granularity, flags and the set bits, read straight from the bitmap
/// directory, tables and data (qcow2.txt "Bitmaps"), so that two files can
/// be compared on what they record whatever their layout.
fn bitmap_dump(fx: &Fixture, file: &str) -> String {
    let d = std::fs::read(fx.path(file)).expect("read");
    let be32 = |at: usize| u32::from_be_bytes(d[at..at + 4].try_into().expect("4 bytes"));
    let be64 = |at: usize| u64::from_be_bytes(d[at..at + 8].try_into().expect("8 bytes"));
    let cs = 1usize << be32(20);
    let mut out = String::new();
    let mut at = be32(100) as usize;
    while at + 8 <= cs {
        let (kind, len) = (be32(at), be32(at + 4) as usize);
        if kind == 0 {
            break;
        }
        if kind == 0x2385_2875 {
            let mut p = be64(at + 24) as usize;
            for _ in 0..be32(at + 8) {
                let (table, size, flags) = (be64(p) as usize, be32(p + 8) as usize, be32(p + 12));
                let name_len = u16::from_be_bytes([d[p + 18], d[p + 19]]) as usize;
                let extra = be32(p + 20) as usize;
                let name = String::from_utf8_lossy(&d[p + 24 + extra..p + 24 + extra + name_len]);
                out.push_str(&format!("{name} g={} flags={flags}:", d[p + 17]));
                for i in 0..size {
                    let data = (be64(table + 8 * i) & 0x00ff_ffff_ffff_fe00) as usize;
                    for k in 0..cs * 8 {
                        let byte = if data == 0 {
                            0
                        } else {
                            d.get(data + k / 8).copied().unwrap_or(0)
                        };
                        if byte >> (k % 8) & 1 != 0 {
                            out.push_str(&format!(" {}", i * cs * 8 + k));
                        }
                    }
                }
                out.push('\n');
                p += (24 + extra + name_len).next_multiple_of(8);
            }
        }
        at += 8 + len.next_multiple_of(8);
    }
    out
}

/// `text` with qemu's internal node names (`#block123`, different on every
/// run) and qimg's file name in their place both written `NODE`.
fn mask_node(text: &str) -> String {
    let mut out = text.replace("persistent in 'X'", "persistent in 'NODE'");
    while let Some(at) = out.find("#block") {
        let digits = out[at + 6..]
            .chars()
            .take_while(char::is_ascii_digit)
            .count();
        out.replace_range(at..at + 6 + digits, "NODE");
    }
    out
}

/// `text` with snapshot creation times masked: the two tools take their
/// snapshots a moment apart. Masks `YYYY-MM-DD HH:MM:SS` and the numbers
/// of `"date-sec"` and `"date-nsec"`.
fn mask_dates(text: &str) -> String {
    let shape = b"dddd-dd-dd dd:dd:dd";
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let fits = bytes.len() - i >= shape.len()
            && shape.iter().zip(&bytes[i..]).all(|(s, b)| match s {
                b'd' => b.is_ascii_digit(),
                other => other == b,
            });
        if fits {
            out.extend_from_slice(b"<date>");
            i += shape.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out)
        .lines()
        .map(|l| {
            if l.contains("\"date-sec\"") || l.contains("\"date-nsec\"") {
                l.split(':').next().unwrap_or_default().to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn snapshot_create_apply_delete_like_qemu() {
    let fx = Fixture::new("qm_snap_cycle");
    base(&fx);
    same_steps(
        &fx,
        "base.qcow2",
        &[
            "snapshot -c one {}",
            "snapshot -l {}",
            "io:write -P 9 0 64k",
            "snapshot -c two {}",
            "io:write -c -P 8 2M 64k",
            "snapshot -a one {}",
            "snapshot -d two {}",
            "snapshot -a 1 {}",
            "snapshot -d one {}",
            "snapshot -l {}",
        ],
    );
    // Small clusters: several L2 tables, a compressed cluster, zeros.
    fx.make_qcow2("c512.qcow2", "cluster_size=512", "1M");
    fx.qemu_io_cmds(
        "qcow2",
        "c512.qcow2",
        &[
            "write -P 1 0 100k",
            "write -c -P 2 200k 512",
            "write -z 300k 4k",
        ],
    );
    same_steps(
        &fx,
        "c512.qcow2",
        &[
            "snapshot -c a {}",
            "io:write -P 3 10k 50k",
            "snapshot -c b {}",
            "io:write -P 4 0 1M",
            "snapshot -c c {}",
            "snapshot -d b {}",
            "snapshot -a a {}",
            "io:write -P 5 20k 1k",
            "snapshot -a c {}",
            "snapshot -d a {}",
        ],
    );
}

#[test]
fn snapshots_of_other_variants() {
    let fx = Fixture::new("qm_snap_variants");
    fx.make_qcow2("x.qcow2", "extended_l2=on", "4M");
    fx.qemu_io_cmds("qcow2", "x.qcow2", &["write -P 1 0 4k", "write -z 2M 64k"]);
    fx.make_qcow2("v2.qcow2", "compat=0.10", "4M");
    fx.qemu_io_cmds("qcow2", "v2.qcow2", &["write -P 1 0 64k"]);
    fx.make_qcow2("l.qcow2", "lazy_refcounts=on,refcount_bits=64", "4M");
    fx.qemu_io_cmds("qcow2", "l.qcow2", &["write -P 1 0 64k"]);
    for f in ["x.qcow2", "v2.qcow2", "l.qcow2"] {
        same_steps(
            &fx,
            f,
            &[
                "snapshot -c a {}",
                "io:write -P 3 2k 5k",
                "snapshot -a a {}",
                "snapshot -c b {}",
                "snapshot -d a {}",
            ],
        );
    }
    // Version 3 snapshots record their size: resizing is allowed, and
    // applying a snapshot gives its size back. Version 2 refuses.
    fx.make_qcow2("g.qcow2", "", "1M");
    fx.qemu_io_cmds("qcow2", "g.qcow2", &["write -P 1 0 1M"]);
    same_steps(
        &fx,
        "g.qcow2",
        &[
            "snapshot -c s {}",
            "resize {} 3M",
            "io:write -P 2 1500k 100k",
            "snapshot -c b {}",
            "snapshot -a s {}",
            "snapshot -l {}",
            "resize --shrink {} 512k",
            "snapshot -a b {}",
        ],
    );
    same_steps(
        &fx,
        "v2.qcow2",
        &["snapshot -c s {}", "resize {} 8M", "resize --shrink {} 1M"],
    );
}

#[test]
fn snapshot_names_ids_and_refusals() {
    let fx = Fixture::new("qm_snap_names");
    base(&fx);
    let long = "n".repeat(300);
    same_steps(
        &fx,
        "base.qcow2",
        &[
            "snapshot -c same {}",
            "snapshot -c same {}",
            &format!("snapshot -c {long} {{}}"),
            "snapshot -c  {}",
            "snapshot -a nope {}",
            "snapshot -d nope {}",
            "snapshot -d 2 {}",
            "snapshot -d same {}",
            "snapshot -a 2 {}",
            "snapshot -c x -l {}",
            "snapshot -c ünï {}",
            "snapshot -l {}",
        ],
    );
    fx.make_qcow2("df.qcow2", "data_file=df.raw", "1M");
    same_steps(
        &fx,
        "df.qcow2",
        &["snapshot -c x {}", "snapshot -a x {}", "snapshot -d x {}"],
    );
    fx.make_qcow2("rc1.qcow2", "refcount_bits=1", "1M");
    fx.qemu_io_cmds("qcow2", "rc1.qcow2", &["write -P 1 0 64k"]);
    let out = fx.qimg(&["snapshot", "-c", "x", "rc1.qcow2"]);
    assert_eq!(
        out.stderr,
        "qemu-img: Could not create snapshot 'x': Invalid argument\n"
    );
    assert_clean(&fx, "rc1.qcow2");
}

#[test]
fn convert_and_measure_read_snapshots() {
    // qemu-img convert -l / measure -l: the snapshot's data at the
    // image's current size.
    let fx = Fixture::new("qm_snap_read");
    fx.make_qcow2("s.qcow2", "", "4M");
    fx.qemu_io_cmds("qcow2", "s.qcow2", &["write -P 1 0 1M"]);
    fx.oracle(&["snapshot", "-c", "s", "s.qcow2"]);
    fx.qemu_io_cmds(
        "qcow2",
        "s.qcow2",
        &["write -P 2 512k 1M", "write -c -P 3 3M 64k"],
    );
    fx.oracle(&["snapshot", "-c", "t", "s.qcow2"]);
    fx.oracle(&["resize", "-q", "s.qcow2", "8M"]);
    for sn in [
        "s",
        "1",
        "t",
        "snapshot.id=2",
        "snapshot.name=s",
        "snapshot.id=1,snapshot.name=s",
        "snapshot.id=1,snapshot.name=t",
        "snapshot.id=",
        "zz",
        "snapshot.foo=1",
    ] {
        fx.same_effect(
            &["convert", "-l", sn, "-O", "raw", "s.qcow2", "{}"],
            "out.raw",
        );
        fx.same(&["measure", "-l", sn, "-O", "qcow2", "s.qcow2"]);
    }
    // (One coroutine: qemu-img allocates in guest order; so does qimg then.)
    fx.same_effect(
        &[
            "convert", "-m", "1", "-l", "t", "-O", "qcow2", "s.qcow2", "{}",
        ],
        "out.qcow2",
    );
    fx.same(&[
        "convert", "-l", "s", "-O", "raw", "s.qcow2", "s.qcow2", "out.raw",
    ]);
    fx.same(&["measure", "-l", "s", "--size", "1M", "-O", "qcow2"]);
    fx.oracle(&["create", "-q", "-f", "raw", "r.raw", "1M"]);
    fx.same(&["convert", "-l", "s", "-O", "raw", "r.raw", "out.raw"]);
}

// ---- bitmap ----

#[test]
fn bitmap_operations_like_qemu() {
    // qemu-img bitmap, one or several operations per call: the same
    // files, byte for byte.
    let fx = Fixture::new("qm_bitmap_ops");
    base(&fx);
    same_steps(
        &fx,
        "base.qcow2",
        &[
            "bitmap --add {} b0",
            "bitmap --add --disable -g 512 {} b1",
            "io:write -P 2 1M 64k",
            "bitmap --merge b0 {} b1",
            "bitmap --clear {} b0",
            "bitmap --enable {} b1",
            "bitmap --remove {} b0",
            "bitmap --add {} b0",
            "bitmap --disable {} b0",
            "bitmap --disable {} b0",
            "bitmap --add --remove {} c",
            "bitmap --add -g 1k --remove --add {} x2",
            "bitmap --enable --clear {} b0",
            "io:write -z 0 4k",
            "io:discard 64k 64k",
            "info {}",
        ],
    );
    // Other cluster sizes pick other default granularities.
    for (opts, file) in [
        ("cluster_size=512", "c512.qcow2"),
        ("cluster_size=2M", "c2m.qcow2"),
    ] {
        fx.make_qcow2(file, opts, "8M");
        same_steps(
            &fx,
            file,
            &["bitmap --add {} b", "io:write -P 1 1M 3k", "info {}"],
        );
    }
}

#[test]
fn bitmap_refusals_like_qemu() {
    let fx = Fixture::new("qm_bitmap_errors");
    base(&fx);
    same_steps(
        &fx,
        "base.qcow2",
        &[
            "bitmap --add {} b0",
            "bitmap --add {} b0",
            "bitmap --remove {} nope",
            "bitmap --clear {} nope",
            "bitmap --enable {} nope",
            "bitmap --merge nope {} b0",
            "bitmap --add -g 100 {} g",
            "bitmap --add -g 3k {} g",
            "bitmap --add -g 4G {} g",
            "bitmap --add -g 0 {} z",
            "bitmap --add -g 2G {} big",
            "bitmap -g 64k --enable {} b0",
            "bitmap -b {} --enable {} b0",
            "bitmap -F qcow2 --merge b0 {} b0",
            "bitmap --add {}  ",
            "bitmap --merge b0 -b {} {} b0",
            "bitmap --add {}",
            "bitmap {} b0",
        ],
    );
    let long = "n".repeat(1024);
    same_steps(&fx, "base.qcow2", &[&format!("bitmap --add {{}} {long}")]);
    fx.make_qcow2("v2.qcow2", "compat=0.10", "1M");
    same_steps(
        &fx,
        "v2.qcow2",
        &["bitmap --add {} x", "bitmap --remove {} x"],
    );
}

#[test]
fn bitmap_merge_from_another_image() {
    let fx = Fixture::new("qm_bitmap_merge");
    for f in ["src.qcow2", "dst.qcow2"] {
        fx.make_qcow2(f, "", "4M");
        fx.oracle(&["bitmap", "--add", "-g", "4k", f, "a"]);
    }
    fx.qemu_io_cmds("qcow2", "src.qcow2", &["write 100k 10k", "write 3M 1k"]);
    fx.make_qcow2("small.qcow2", "", "1M");
    fx.oracle(&["bitmap", "--add", "small.qcow2", "a"]);
    let steps = [
        "bitmap --merge a -b src.qcow2 {} a",
        "bitmap --merge a -b src.qcow2 -F qcow2 {} a",
        "bitmap --merge nope -b src.qcow2 {} a",
        "bitmap --merge a -b small.qcow2 {} a",
        "bitmap --merge a -b missing.qcow2 {} a",
    ];
    same_steps(&fx, "dst.qcow2", &steps);
}

#[test]
fn bitmaps_record_what_qimg_writes() {
    // Writes made by qimg (dd, convert -n, resize) set the bits QEMU's
    // writes set; a disabled bitmap stays as it is.
    let fx = Fixture::new("qm_bitmap_writes");
    fx.make_qcow2("t.qcow2", "", "4M");
    for (g, name) in [("512", "fine"), ("64k", "coarse"), ("1M", "off")] {
        fx.oracle(&["bitmap", "--add", "-g", g, "t.qcow2", name]);
    }
    fx.oracle(&["bitmap", "--disable", "t.qcow2", "off"]);
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.qemu_io("src.raw", "write -P 5 100k 200k");
    same_steps(
        &fx,
        "t.qcow2",
        &[
            "dd if=src.raw of={} -f raw -O qcow2 bs=3k count=5 skip=33 seek=7",
            "resize {} 6M",
            "resize --shrink {} 5M",
        ],
    );
    for f in ["ours.q", "theirs.q"] {
        fx.sh(&format!("cp --sparse=always t.qcow2 {f}"));
    }
    // (Written in parallel by qimg: the same bits, not the same layout.)
    fx.qimg(&[
        "convert", "-n", "-f", "raw", "-O", "qcow2", "src.raw", "ours.q",
    ]);
    fx.oracle(&[
        "convert", "-n", "-f", "raw", "-O", "qcow2", "src.raw", "theirs.q",
    ]);
    assert_eq!(bitmap_dump(&fx, "ours.q"), bitmap_dump(&fx, "theirs.q"));
    assert_clean(&fx, "ours.q");
}

#[test]
fn bitmaps_in_use_are_left_alone() {
    // A bitmap already in use when the image is opened was not saved
    // cleanly: qemu-img refuses to use it, keeps it through writes and
    // lets it be removed.
    let fx = Fixture::new("qm_bitmap_inuse");
    fx.make_qcow2("i.qcow2", "", "1M");
    fx.oracle(&["bitmap", "--add", "i.qcow2", "good"]);
    fx.oracle(&["bitmap", "--add", "i.qcow2", "bad"]);
    let dir = fx.qemu_img(&["info", "--output=json", "i.qcow2"]);
    assert!(dir.stdout.contains("\"bad\""));
    // The directory is the image's last cluster: good's entry, then bad's.
    let len = std::fs::metadata(fx.path("i.qcow2")).expect("stat").len();
    let bad_flags = (len - 64 + 32 + 12, 3u32.to_be_bytes().to_vec());
    fx.patched_copy("i.qcow2", "u.qcow2", &[bad_flags]);
    let info = fx.same(&["info", "u.qcow2"]);
    assert!(info.stdout.contains("in-use"), "{}", info.stdout);
    for op in ["--clear", "--enable", "--disable", "--merge good"] {
        let step = format!("bitmap {op} {{}} bad");
        same_steps(&fx, "u.qcow2", &[&step]);
    }
    same_steps(
        &fx,
        "u.qcow2",
        &[
            "bitmap --merge bad {} good",
            "bitmap --add {} bad",
            "resize {} 2M",
            "io:write 0 64k",
            "bitmap --remove {} bad",
            "info {}",
        ],
    );
}

#[test]
fn zero_writes_racing_data_writes_keep_the_data() {
    // convert -n writes zeros and data of the same cluster from several
    // threads; a zero write widened to whole clusters must not wipe data
    // written next to it meanwhile (qemu-img compare with the source).
    let fx = Fixture::new("qm_zero_race");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.qemu_io("src.raw", "write -P 5 100k 200k");
    fx.qemu_io("src.raw", "write -P 6 3M 4k");
    for round in 0..6 {
        let target = format!("t{round}.qcow2");
        fx.make_qcow2(&target, "", "4M");
        let out = fx.qimg(&[
            "convert", "-n", "-f", "raw", "-O", "qcow2", "src.raw", &target,
        ]);
        assert_eq!(out.status, 0, "{out:?}");
        let same = fx.qemu_img(&["compare", "-f", "raw", "-F", "qcow2", "src.raw", &target]);
        assert_eq!(same.status, 0, "round {round}: {}", same.stdout);
    }
}

// ---- amend ----

/// An image with data, zero clusters (plain and preallocated) and a
/// compressed cluster.
fn amendable(fx: &Fixture, file: &str, opts: &str) {
    fx.make_qcow2(file, opts, "4M");
    fx.qemu_io_cmds(
        "qcow2",
        file,
        &[
            "write -P 1 0 64k",
            "write -z 64k 64k",
            "write -z 1M 4k",
            "write -c -P 2 2M 64k",
        ],
    );
}

#[test]
fn amend_compat_both_ways_like_qemu() {
    // qemu-img amend -o compat=…: the same files, byte for byte (zero
    // clusters go on downgrade; with a backing file they become data).
    let fx = Fixture::new("qm_amend_compat");
    amendable(&fx, "v3.qcow2", "");
    amendable(&fx, "v2.qcow2", "compat=0.10");
    fx.oracle(&["create", "-q", "-f", "raw", "bk.raw", "4M"]);
    fx.qemu_io("bk.raw", "write -P 9 0 4M");
    amendable(&fx, "ov.qcow2", "backing_file=bk.raw,backing_fmt=raw");
    fx.qemu_io_cmds("qcow2", "ov.qcow2", &["write -z -u 3M 64k"]);
    for f in ["v3.qcow2", "v2.qcow2", "ov.qcow2"] {
        same_steps(
            &fx,
            f,
            &["amend -o compat=0.10 {}", "amend -p -o compat=1.1 {}"],
        );
        same_steps(
            &fx,
            f,
            &["amend -o compat=v3 {}", "amend -p -o compat=v2 {}"],
        );
    }
    // Snapshots: v3 snapshot tables stay; a snapshot of another size, a
    // data file, extended L2 entries or other refcount widths refuse.
    fx.make_qcow2("s.qcow2", "", "4M");
    fx.qemu_io_cmds("qcow2", "s.qcow2", &["write -P 1 0 64k"]);
    fx.oracle(&["snapshot", "-c", "s1", "s.qcow2"]);
    fx.qemu_io_cmds("qcow2", "s.qcow2", &["write -z 0 64k"]);
    same_steps(&fx, "s.qcow2", &["amend -o compat=0.10 {}"]);
    same_steps(
        &fx,
        "s.qcow2",
        &["resize {} 8M", "amend -p -o compat=0.10 {}"],
    );
    fx.make_qcow2("df.qcow2", "data_file=df.raw", "1M");
    fx.qemu_io_cmds("qcow2", "df.qcow2", &["write -P 1 0 64k"]);
    same_steps(&fx, "df.qcow2", &["amend -p -o compat=0.10 {}"]);
    for (file, opts) in [
        ("x.qcow2", "extended_l2=on"),
        ("rc.qcow2", "refcount_bits=8"),
        ("z.qcow2", "compression_type=zstd"),
    ] {
        amendable(&fx, file, opts);
        same_steps(&fx, file, &["amend -p -o compat=0.10 {}"]);
    }
    fx.make_qcow2("z0.qcow2", "compression_type=zstd", "1M");
    same_steps(&fx, "z0.qcow2", &["amend -o compat=0.10 {}", "info {}"]);
}

#[test]
fn amend_refcount_width_and_lazy_refcounts_like_qemu() {
    let fx = Fixture::new("qm_amend_refcounts");
    amendable(&fx, "a.qcow2", "");
    fx.make_qcow2("s.qcow2", "cluster_size=4k", "4M");
    fx.qemu_io_cmds("qcow2", "s.qcow2", &["write -P 1 0 1M"]);
    fx.oracle(&["snapshot", "-c", "s1", "s.qcow2"]);
    for f in ["a.qcow2", "s.qcow2"] {
        for bits in ["1", "8", "64"] {
            let step = format!("amend -p -o refcount_bits={bits} {{}}");
            same_steps(&fx, f, &[&step, "amend -o refcount_bits=16 {}"]);
        }
    }
    same_steps(
        &fx,
        "a.qcow2",
        &[
            "amend -p -o lazy_refcounts=on {}",
            "io:write -P 3 3M 64k",
            "amend -o lazy_refcounts=off {}",
            "amend -o size=8M,refcount_bits=4 {}",
            "amend -o size=1M {}",
            "amend -o size=0 {}",
        ],
    );
    // A width the refcounts do not fit changes nothing, not even the lazy
    // refcounts asked beside it (two compressed clusters share a host
    // cluster: refcount 2).
    fx.make_qcow2("c.qcow2", "refcount_bits=2", "8M");
    fx.qemu_io_cmds(
        "qcow2",
        "c.qcow2",
        &["write -c -P 1 0 64k", "write -c -P 2 64k 64k"],
    );
    same_steps(
        &fx,
        "c.qcow2",
        &["amend -o refcount_bits=1,lazy_refcounts=on {}", "info {}"],
    );
}

#[test]
fn amend_refusals_like_qemu() {
    let fx = Fixture::new("qm_amend_refusals");
    amendable(&fx, "a.qcow2", "");
    fx.make_qcow2("v2.qcow2", "compat=0.10", "1M");
    fx.make_qcow2("d.qcow2", "data_file=d.raw,data_file_raw=on", "1M");
    for step in [
        "amend -o compat=foo {}",
        "amend -o compat= {}",
        "amend -o cluster_size=4096 {}",
        "amend -o cluster_size=512,foo=1 {}",
        "amend -o foo=1 {}",
        "amend -o preallocation=full {}",
        "amend -o encrypt.format=luks {}",
        "amend -o encrypt.keyslot=1 {}",
        "amend -o lazy_refcounts=maybe {}",
        "amend -o refcount_bits=3 {}",
        "amend -o refcount_bits=128 {}",
        "amend -o refcount_bits=abc {}",
        "amend -o size=abc {}",
        "amend -o backing_file=x {}",
        "amend -o backing_fmt=raw {}",
        "amend -o data_file=x {}",
        "amend -o data_file_raw=on {}",
        "amend -p -o help {}",
        "amend -o help -f qcow2",
        "amend -o help -f raw",
        "amend -o help -f bogus",
        "amend -p -o size=1M",
        "amend -o , {}",
        "amend -o a=1, {}",
        "amend -p {}",
        "amend --force -o lazy_refcounts=on {}",
    ] {
        same_steps(&fx, "a.qcow2", &[step]);
    }
    for step in [
        "amend -o lazy_refcounts=on {}",
        "amend -o refcount_bits=8 {}",
        "amend -o compat=1.1,lazy_refcounts=on,refcount_bits=8 {}",
        // The refcount width is checked before the other options.
        "amend -o lazy_refcounts=on,refcount_bits=8 {}",
        "amend -o refcount_bits=8,backing_file=x {}",
    ] {
        same_steps(&fx, "v2.qcow2", &[step]);
    }
    for step in [
        "amend -o data_file_raw=off {}",
        "amend -o data_file=d.raw {}",
        "amend -o data_file_raw=off,data_file_raw=on {}",
    ] {
        same_steps(&fx, "d.qcow2", &[step, "info {}"]);
    }
}

#[test]
fn amend_keeps_bitmaps_and_drops_them_cleanly_on_downgrade() {
    // With bitmaps, amend leaves qemu-img's files; a downgrade (version 2
    // cannot hold bitmaps) removes them with their clusters, where qemu-img
    // leaves them behind as leaks.
    let fx = Fixture::new("qm_amend_bitmaps");
    fx.make_qcow2("b.qcow2", "", "1M");
    fx.qemu_io_cmds("qcow2", "b.qcow2", &["write -P 1 0 64k"]);
    fx.oracle(&["bitmap", "--add", "b.qcow2", "b"]);
    same_steps(
        &fx,
        "b.qcow2",
        &[
            "amend -o refcount_bits=8 {}",
            "amend -o size=2M,lazy_refcounts=on {}",
        ],
    );
    fx.sh("cp b.qcow2 ours.q");
    let out = fx.qimg(&["amend", "-o", "compat=0.10", "ours.q"]);
    assert_eq!((out.status, out.stderr.as_str()), (0, ""));
    assert_clean(&fx, "ours.q");
    assert_eq!(fx.qemu_img(&["compare", "b.qcow2", "ours.q"]).status, 0);
    let info = fx.qemu_img(&["info", "ours.q"]);
    assert!(
        info.stderr.is_empty() && !info.stdout.contains("bitmaps"),
        "{info:?}"
    );
}

/// Runs `convert ARGS SRC {}` with each tool into `ours.c`/`theirs.c` and
/// asserts the same output, the same bitmaps (names, granularity, flags,
/// bits), the same content and a clean `qemu-img check` of both targets.
fn same_bitmap_convert(fx: &Fixture, args: &[&str], src: &str) {
    let run = |ours: bool| {
        let target = if ours { "ours.c" } else { "theirs.c" };
        let _ = std::fs::remove_file(fx.path(target));
        let mut all = vec!["convert"];
        all.extend(args);
        all.extend([src, target]);
        let out = if ours {
            fx.qimg(&all)
        } else {
            fx.qemu_img(&all)
        };
        (out.stdout, out.stderr, out.status)
    };
    assert_eq!(run(true), run(false), "convert {args:?} {src}");
    assert_eq!(
        bitmap_dump(fx, "ours.c"),
        bitmap_dump(fx, "theirs.c"),
        "{args:?}"
    );
    assert_clean(fx, "ours.c");
    let cmp = fx.qemu_img(&["compare", "ours.c", "theirs.c"]);
    assert_eq!(cmp.status, 0, "{}", cmp.stdout);
}

#[test]
fn convert_copies_bitmaps_like_qemu() {
    let fx = Fixture::new("qm_convert_bitmaps");
    fx.make_qcow2("s.qcow2", "", "4M");
    fx.oracle(&["bitmap", "--add", "s.qcow2", "first"]);
    fx.qemu_io_cmds("qcow2", "s.qcow2", &["write 0 64k", "write 1M 4k"]);
    fx.oracle(&[
        "bitmap",
        "--add",
        "-g",
        "512",
        "--disable",
        "s.qcow2",
        "off",
    ]);
    fx.oracle(&["bitmap", "--add", "-g", "128k", "s.qcow2", "late"]);
    fx.qemu_io_cmds("qcow2", "s.qcow2", &["write 3M 100k", "write -z 2M 64k"]);
    fx.oracle(&["bitmap", "--merge", "first", "s.qcow2", "off"]);
    let dump = bitmap_dump(&fx, "s.qcow2");
    assert_eq!(dump.lines().count(), 3, "{dump}");
    same_bitmap_convert(&fx, &["--bitmaps", "-O", "qcow2"], "s.qcow2");
    same_bitmap_convert(
        &fx,
        &["--bitmaps", "-O", "qcow2", "-o", "cluster_size=4096"],
        "s.qcow2",
    );
    same_bitmap_convert(&fx, &["--bitmaps", "-c", "-O", "qcow2"], "s.qcow2");
    // The target's bits are the source's, not the copy's writes.
    let theirs = bitmap_dump(&fx, "theirs.c");
    assert_eq!(theirs, dump, "bitmaps of the copy");

    // An inconsistent bitmap (in use when opened) stops the copy before the
    // target is made, or is skipped with a warning.
    let info = fx.qemu_img(&["info", "--output=json", "s.qcow2"]);
    assert!(info.stdout.contains("\"late\""));
    let raw = std::fs::read(fx.path("s.qcow2")).expect("read");
    let at = raw
        .windows(4)
        .rposition(|w| w == b"late")
        .expect("directory entry") as u64;
    fx.patched_copy("s.qcow2", "u.qcow2", &[(at - 24 + 12, 3u32.to_be_bytes())]);
    same_bitmap_convert(
        &fx,
        &["--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2"],
        "u.qcow2",
    );
    fx.oracle(&["create", "-q", "-f", "raw", "r.raw", "4M"]);
    fx.make_qcow2("has.qcow2", "", "4M");
    fx.oracle(&["bitmap", "--add", "has.qcow2", "off"]);
    for args in [
        vec!["convert", "--bitmaps", "-O", "qcow2", "u.qcow2", "x.qcow2"],
        vec!["convert", "--bitmaps", "-O", "raw", "u.qcow2", "x.raw"],
        vec![
            "convert",
            "--skip-broken-bitmaps",
            "-O",
            "qcow2",
            "s.qcow2",
            "x.qcow2",
        ],
        vec![
            "convert",
            "--bitmaps",
            "-O",
            "qcow2",
            "s.qcow2",
            "s.qcow2",
            "x.qcow2",
        ],
        vec!["convert", "--bitmaps", "-O", "qcow2", "r.raw", "x.qcow2"],
        vec![
            "convert",
            "--bitmaps",
            "-n",
            "-O",
            "qcow2",
            "s.qcow2",
            "has.qcow2",
        ],
    ] {
        fx.same(&args);
        assert!(
            !fx.path("x.qcow2").exists() && !fx.path("x.raw").exists(),
            "{args:?}"
        );
    }
}

#[test]
fn a_repair_keeps_the_backing_file_of_an_unusual_header() {
    // With extensions that start past the usual place (header_length
    // 0xe0), check -r all rewrote the header's fields for its own layout
    // but not the name they pointed at: the backing file was lost and the
    // guest read zeros. A clean image is now left alone, and a rewrite
    // (here clearing the dirty bit) keeps the name where the fields say.
    let fx = Fixture::new("qm_repair_backing");
    fx.make_qcow2("base.qcow2", "", "4M");
    fx.qemu_io_cmds("qcow2", "base.qcow2", &["write -P 0x66 0 4M"]);
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
    ]);
    fx.qemu_io_cmds("qcow2", "top.qcow2", &["write -P 0x11 0 64k"]);
    fx.oracle(&["convert", "-O", "raw", "top.qcow2", "expect.raw"]);
    let mut bytes = std::fs::read(fx.path("top.qcow2")).expect("read");
    bytes[100..104].copy_from_slice(&0xe0u32.to_be_bytes());
    for dirty in [false, true] {
        bytes[79] = u8::from(dirty);
        std::fs::write(fx.path("m.qcow2"), &bytes).expect("write");
        let out = fx.qimg(&["check", "-r", "all", "m.qcow2"]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        if !dirty {
            assert!(std::fs::read(fx.path("m.qcow2")).expect("read") == bytes);
        }
        assert_clean(&fx, "m.qcow2");
        fx.oracle(&["compare", "-F", "raw", "m.qcow2", "expect.raw"]);
    }
}

#[test]
fn damaged_refcounts_never_let_tables_be_written_over_metadata() {
    // Cut after its header, the image's refcounts say every cluster is
    // free: the tables a bitmap needs were written over the L1 and L2
    // tables and the guest's data changed. qemu's overlap check refuses
    // such writes; so does qimg's now.
    let fx = Fixture::new("qm_overlap_tables");
    fx.make_qcow2("m.qcow2", "", "4M");
    fx.qemu_io_cmds(
        "qcow2",
        "m.qcow2",
        &["write -P 0x11 0 64k", "write -P 0x22 1M 128k"],
    );
    fx.sh("truncate -s 104 m.qcow2");
    fx.oracle(&["convert", "-U", "-O", "raw", "m.qcow2", "before.raw"]);
    fx.qimg(&["bitmap", "--add", "m.qcow2", "b0"]);
    fx.oracle(&["convert", "-U", "-O", "raw", "m.qcow2", "after.raw"]);
    fx.same_raw("before.raw", "after.raw");
}

#[test]
fn check_reports_and_repairs_snapshot_tables_like_qemu() {
    // Snapshot tables qemu-img reads only in check mode: an entry lacking
    // version 3's extra data, one with too much extra data, too many
    // entries; and an L1 offset check reports but cannot repair.
    let fx = Fixture::new("qm_snap_table");
    fx.make_qcow2("s.qcow2", "", "1M");
    fx.qemu_io_cmds("qcow2", "s.qcow2", &["write 0 64k"]);
    fx.oracle(&["snapshot", "-c", "s1", "s.qcow2"]);
    fx.oracle(&["snapshot", "-c", "s2", "s.qcow2"]);
    let head = std::fs::read(fx.path("s.qcow2")).expect("read");
    let table = u64::from_be_bytes(head[64..72].try_into().expect("8 bytes"));
    let cases: [(&str, u64, Vec<u8>); 4] = [
        ("over.q", 60, 3u32.to_be_bytes().to_vec()),
        ("extra.q", table + 36, 2000u32.to_be_bytes().to_vec()),
        ("many.q", 60, 70000u32.to_be_bytes().to_vec()),
        ("l1.q", table, 0x12345u64.to_be_bytes().to_vec()),
    ];
    for (name, at, bytes) in cases {
        fx.patched_copy("s.qcow2", name, &[(at, bytes)]);
        if name == "many.q" {
            continue;
        }
        check_every_way(&fx, name);
        // A repair writes the same table qemu-img writes.
        run_on_copy(&fx, name, "ours.r", &["check", "-r", "all", "{}"], true);
        run_on_copy(&fx, name, "theirs.r", &["check", "-r", "all", "{}"], false);
        fx.sh("cmp ours.r theirs.r");
    }
    // Too many entries: reported as qemu-img reports them. Its `-r all`
    // writes over the image's own metadata and marks it corrupt; qimg
    // refuses that repair and leaves the image as it was.
    for args in [&["check", "{}"][..], &["check", "-r", "leaks", "{}"]] {
        same_on_copies(&fx, "many.q", args);
    }
    let ours = run_on_copy(&fx, "many.q", "ours.r", &["check", "-r", "all", "{}"], true);
    assert_eq!(ours.status, 1, "{}", ours.stderr);
    assert!(ours.stderr.contains("ERROR snapshot table too large"));
    fx.sh("cmp ours.r many.q");
}

#[test]
fn unknown_features_are_named_from_the_feature_table() {
    // An incompatible feature qemu does not know (bit 10) is refused by the
    // name the image's feature-name table gives it, also when the table's
    // last entry is cut short.
    let fx = Fixture::new("qm_feature_names");
    fx.make_qcow2("f.qcow2", "", "1M");
    let header = std::fs::read(fx.path("f.qcow2")).expect("read");
    // Version 3 header of 112 bytes, then the feature table extension.
    assert_eq!(&header[112..116], &0x6803_f857u32.to_be_bytes());
    let mut entry = vec![0u8, 10];
    entry.extend(b"frobnicate\0");
    let mut incompat = header[72..80].to_vec();
    incompat[6] |= 0x04;
    fx.patched_copy(
        "f.qcow2",
        "named.qcow2",
        &[(72, incompat.clone()), (120, entry.clone())],
    );
    fx.patched_copy(
        "f.qcow2",
        "short.qcow2",
        &[
            (72, incompat),
            (116, 30u32.to_be_bytes().to_vec()),
            (120, entry),
        ],
    );
    for f in ["named.qcow2", "short.qcow2"] {
        let out = fx.same(&["info", f]);
        assert!(
            out.stderr.contains("feature(s): frobnicate"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn writes_never_land_on_metadata() {
    // An L2 entry pointing at the image's own tables: a write through it
    // is refused and the image marked corrupt, as QEMU's overlap check
    // does, instead of guest data overwriting the tables.
    let fx = Fixture::new("qm_overlap");
    base(&fx);
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.qemu_io("src.raw", "write -P 9 0 4M");
    for (what, target) in [
        ("active L1 table", L1),
        ("refcount table", REFTABLE),
        ("refcount block", REFBLOCK),
    ] {
        // Guest cluster 0's entry, kept "copied" so that it is written in place.
        patch64(&fx, "base.qcow2", "hostile.qcow2", &[(L2, target | COPIED)]);
        for args in [
            &["convert", "-n", "-O", "qcow2", "src.raw", "{}"][..],
            &[
                "convert", "-n", "-W", "-S", "0", "-O", "qcow2", "src.raw", "{}",
            ],
        ] {
            let ours = run_on_copy(&fx, "hostile.qcow2", "ours.q", args, true);
            let theirs = run_on_copy(&fx, "hostile.qcow2", "theirs.q", args, false);
            assert_eq!(ours, theirs, "{what}: {args:?}");
            assert!(
                ours.stderr.contains(&format!("overlaps with {what}")),
                "{what}: {}",
                ours.stderr
            );
            // The tables are as they were, and the image is marked corrupt.
            let bytes = std::fs::read(fx.path("ours.q")).expect("read");
            let original = std::fs::read(fx.path("hostile.qcow2")).expect("read");
            let table = target as usize..target as usize + 4096;
            assert!(
                bytes[table.clone()] == original[table],
                "{what}: overwritten"
            );
            assert_eq!(bytes[79] & 2, 2, "{what}: not marked corrupt");
        }
    }
}
