//! The parallels driver against qemu-img 10.0.2: qimg reads what qemu-img
//! and qemu-io wrote and the sample images other tools wrote (`info`, `map`,
//! `check`, `compare`, `convert`), creates byte-identical images, writes
//! images the real `qemu-img check` finds clean, and checks and repairs
//! damaged images with qemu-img's words and exit codes.

use qimg_tests::{Fixture, Outcome};

/// Guest data every fixture holds: a whole cluster, part of one and one
/// near the end (4 MiB images).
const PATTERN: &[&str] = &[
    "write -P 1 0 64k",
    "write -P 2 1028k 8k",
    "write -P 3 3M 64k",
];

/// `img.prl`: made by qemu-img with `opts`, [`PATTERN`] written by qemu-io.
fn made(name: &str, opts: &str, size: &str) -> Fixture {
    let fx = Fixture::new(name);
    let mut args = vec!["create", "-q", "-f", "parallels"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend(["img.prl", size]);
    fx.oracle(&args);
    fx.qemu_io_cmds("parallels", "img.prl", PATTERN);
    fx
}

/// qimg and qemu-img print the same for `info`, `map` and `check`.
fn reads_alike(fx: &Fixture, file: &str) {
    fx.same(&["info", file]);
    fx.same(&["info", "--output=json", file]);
    fx.same(&["map", file]);
    fx.same(&["map", "--output=json", file]);
    fx.same(&["check", file]);
    fx.same(&["check", "--output=json", file]);
    // qemu-img counts a parallels source's bitmaps (none persistent).
    fx.same(&["measure", "-O", "qcow2", file]);
    fx.same(&["measure", "--output=json", "-O", "qcow2", file]);
}

/// qimg's `convert -O raw` of `file` holds what qemu-img reads in it.
fn converts_alike(fx: &Fixture, file: &str) {
    let out = fx.qimg(&["convert", "-O", "raw", file, "ours.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["convert", "-O", "raw", file, "theirs.raw"]);
    fx.same_raw("ours.raw", "theirs.raw");
    fx.same(&["compare", file, "theirs.raw"]);
    fx.sh("rm ours.raw theirs.raw");
}

/// Unpacks a bzip2'd sample from `../shared/sample-images`, if present.
fn sample(fx: &Fixture, name: &str) -> bool {
    let bz = qimg_tests::workspace().join(format!("../shared/sample-images/{name}.bz2"));
    if !bz.exists() {
        eprintln!("no {}: sample not checked", bz.display());
        return false;
    }
    fx.sh(&format!(
        "bunzip2 -c {} | cp --sparse=always /dev/stdin {name}",
        bz.display()
    ));
    true
}

/// Runs `args` (with `{}` for the image) on copies of `file` with each
/// tool; the outputs (names normalised) and the resulting files must match.
fn same_repair(fx: &Fixture, file: &str, args: &[&str]) -> Outcome {
    same_repair_output(fx, file, args, true)
}

/// [`same_repair`], comparing the resulting files only with `bytes`.
fn same_repair_output(fx: &Fixture, file: &str, args: &[&str], bytes: bool) -> Outcome {
    let run = |tool: &str| {
        let copy = format!("{tool}.{file}");
        fx.sh(&format!("cp --sparse=always {file} {copy}"));
        let args: Vec<String> = args.iter().map(|a| a.replace("{}", &copy)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = if tool == "ours" {
            fx.qimg(&args)
        } else {
            fx.qemu_img(&args)
        };
        let norm = |s: &str| s.replace(&copy, file);
        let bytes = std::fs::read(fx.path(&copy)).expect("read");
        (
            Outcome {
                stdout: norm(&out.stdout),
                stderr: norm(&out.stderr),
                status: out.status,
            },
            bytes,
        )
    };
    let (ours, ours_bytes) = run("ours");
    let (theirs, theirs_bytes) = run("theirs");
    assert_eq!(ours, theirs, "outputs differ on {args:?} of {file}");
    assert!(
        !bytes || ours_bytes == theirs_bytes,
        "files differ after {args:?} of {file}"
    );
    ours
}

// ---- reading ---------------------------------------------------------------

#[test]
fn images_qemu_img_makes_read_alike() {
    for (opts, size) in [
        ("", "4M"),
        ("cluster_size=64k", "4M"),
        ("cluster_size=4k", "4000k"),
        ("cluster_size=1000", "4100001"),
        ("cluster_size=512", "4M"),
        ("cluster_size=2M", "5M"),
    ] {
        let fx = made("prl_made", opts, size);
        reads_alike(&fx, "img.prl");
        converts_alike(&fx, "img.prl");
    }
}

#[test]
fn sample_images_read_as_qemu_img_reads_them() {
    let fx = Fixture::new("prl_samples");
    for name in ["parallels-v1", "parallels-v2", "parallels-with-bitmap"] {
        if !sample(&fx, name) {
            return;
        }
        reads_alike(&fx, name);
        converts_alike(&fx, name);
    }
    // The bitmaps' clusters lie past the data qemu-img counts: both call
    // them leaked and cut them off.
    same_repair_output(
        &fx,
        "parallels-with-bitmap",
        &["check", "-r", "leaks", "{}"],
        false,
    );
}

#[test]
fn the_bitmap_sample_stays_readable_after_a_repair_or_a_write() {
    let fx = Fixture::new("prl_bitmap_write");
    if !sample(&fx, "parallels-with-bitmap") {
        return;
    }
    // qemu-img leaves the header naming an extension it cut off, and can
    // no longer open the image; qimg drops the name with the cluster.
    fx.sh("cp parallels-with-bitmap a.prl && cp parallels-with-bitmap b.prl");
    let out = fx.qimg(&["check", "-r", "leaks", "a.prl"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["check", "a.prl"]);
    fx.oracle(&["compare", "a.prl", "parallels-with-bitmap"]);
    // A write into it (to the cluster the bitmap data held).
    let out = fx.qimg(&[
        "bench",
        "-w",
        "-c",
        "1",
        "-o",
        "1M",
        "-s",
        "64k",
        "--pattern=5",
        "-f",
        "parallels",
        "b.prl",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "qemu-img: warning: Format Extension ignored in RW mode\n"
    );
    fx.oracle(&["check", "b.prl"]);
    fx.sh(
        "qemu-io -r -f parallels -c 'read -P 5 1M 64k' -c 'read -P 0 0 1M' \
         -c 'read -P 0 1088k 960k' b.prl | grep -q -v Pattern",
    );
    fx.sh("! qemu-io -r -f parallels -c 'read -P 5 1M 64k' -c 'read -P 0 0 1M' -c 'read -P 0 1088k 960k' b.prl | grep -q Pattern");
}

#[test]
fn maps_of_two_to_the_32_sectors_and_more() {
    // qemu-img 10.0.2 aborts on these (its sector count overflows an int).
    let fx = Fixture::new("prl_huge_map");
    fx.oracle(&["create", "-q", "-f", "parallels", "big.prl", "2T"]);
    fx.qemu_io_cmds("parallels", "big.prl", &["write -P 7 1536G 4k"]);
    let out = fx.qimg(&["map", "--output=json", "big.prl"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "[{ \"start\": 0, \"length\": 1649267441664, \"depth\": 0, \"present\": false, \"zero\": true, \"data\": false, \"compressed\": false},\n\
         { \"start\": 1649267441664, \"length\": 1048576, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"compressed\": false, \"offset\": 9437184},\n\
         { \"start\": 1649268490240, \"length\": 549754765312, \"depth\": 0, \"present\": false, \"zero\": true, \"data\": false, \"compressed\": false}]\n"
    );
    fx.same(&["info", "big.prl"]);
    fx.same(&["check", "big.prl"]);
}

// ---- creating and writing --------------------------------------------------

#[test]
fn create_matches_qemu_img_byte_for_byte() {
    let fx = Fixture::new("prl_create");
    for (opts, size) in [
        ("", "10M"),
        ("cluster_size=4k", "10000k"),
        ("cluster_size=1000", "10000"),
        ("cluster_size=512", "1M"),
        ("preallocation=full", "3M"),
        ("cluster_size=64k,preallocation=falloc", "0"),
        ("cluster_size=0", "1M"),
        ("cluster_size=2G", "1M"),
        ("preallocation=metadata", "1M"),
        ("preallocation=bogus", "1M"),
        ("cluster_size=512", "2T"),
    ] {
        let mut args = vec!["create", "-f", "parallels"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend(["{}", size]);
        let named =
            |name: &str| -> Vec<String> { args.iter().map(|a| a.replace("{}", name)).collect() };
        let (a, b) = (named("a.prl"), named("b.prl"));
        let ours = fx.qimg(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let theirs = fx.qemu_img(&b.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(ours.status, theirs.status, "{opts}: {}", ours.stderr);
        assert_eq!(
            ours.stdout.replace("a.prl", "b.prl"),
            theirs.stdout,
            "{opts}"
        );
        assert_eq!(
            ours.stderr.replace("a.prl", "b.prl"),
            theirs.stderr,
            "{opts}"
        );
        if theirs.status == 0 {
            fx.sh("cmp a.prl b.prl");
        }
        fx.sh("rm -f a.prl b.prl");
    }
    fx.same(&["create", "-f", "parallels", "-o", "help"]);
    let refused = fx.same(&["create", "-f", "parallels", "-b", "x.prl", "c.prl", "1M"]);
    assert_eq!(refused.status, 1);
}

#[test]
fn convert_to_parallels_gives_qemu_img_files() {
    let fx = Fixture::new("prl_convert_to");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "20M"]);
    for c in [
        "write -P 0x11 0 100k",
        "write -P 0x22 5M 1M",
        "write -P 0 8M 64k",
        "write -P 0x33 19M 1000k",
    ] {
        fx.qemu_io("src.raw", c);
    }
    for opts in ["cluster_size=1M", "cluster_size=64k", "cluster_size=4k"] {
        fx.sh("rm -f ours.prl theirs.prl");
        let out = fx.qimg(&[
            "convert",
            "-O",
            "parallels",
            "-o",
            opts,
            "src.raw",
            "ours.prl",
        ]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        fx.oracle(&[
            "convert",
            "-O",
            "parallels",
            "-o",
            opts,
            "src.raw",
            "theirs.prl",
        ]);
        fx.sh("cmp ours.prl theirs.prl");
        fx.oracle(&["check", "ours.prl"]);
        fx.oracle(&["compare", "src.raw", "ours.prl"]);
    }
}

#[test]
fn a_cluster_cut_short_stays_the_images_after_a_repair() {
    // A file whose last sector is cut short still holds its last cluster
    // (lengths count in whole sectors); closing it after a write cut the
    // file before that cluster and lost its data.
    let fx = made("prl_cut_short", "cluster_size=64k", "4M");
    let len = std::fs::metadata(fx.path("img.prl")).expect("stat").len();
    fx.sh(&format!("truncate -s {} img.prl", len - 1));
    fx.oracle(&["convert", "-O", "raw", "img.prl", "expect.raw"]);
    same_repair(&fx, "img.prl", &["check", "-r", "all", "{}"]);
    let out = fx.qimg(&["check", "-r", "all", "img.prl"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["compare", "-F", "raw", "img.prl", "expect.raw"]);
}

#[test]
fn a_leak_repair_never_cuts_a_cluster_the_file_holds_part_of() {
    // Cut inside its first data cluster: check -r leaks closed the image by
    // cutting the file before that cluster and lost the half it held.
    let fx = made("prl_cut_inside", "cluster_size=64k", "4M");
    fx.sh("truncate -s 98304 img.prl && cp img.prl theirs.prl");
    fx.qemu_img(&["check", "-r", "leaks", "theirs.prl"]);
    let ours = fx.qimg(&["check", "-r", "leaks", "img.prl"]);
    assert_eq!(ours.status, 2, "{}", ours.stderr);
    fx.oracle(&["compare", "img.prl", "theirs.prl"]);
}

#[test]
fn writes_into_qemu_made_images_pass_qemu_img_check() {
    let fx = made("prl_write_into", "cluster_size=64k", "4M");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.qemu_io("src.raw", "write -P 9 512k 1M");
    // convert -n overwrites every cluster; the target keeps its layout.
    let out = fx.qimg(&["convert", "-n", "-O", "parallels", "src.raw", "img.prl"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["check", "img.prl"]);
    fx.oracle(&["compare", "src.raw", "img.prl"]);
    // A v1 image (BAT entries in sectors) takes writes as well.
    if sample(&fx, "parallels-v1") {
        fx.sh("cp parallels-v1 v1.prl && qemu-img convert -O raw v1.prl v1.raw");
        fx.qemu_io("v1.raw", "write -P 4 1M 100k");
        let out = fx.qimg(&["convert", "-n", "-O", "parallels", "v1.raw", "v1.prl"]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        fx.oracle(&["check", "v1.prl"]);
        fx.oracle(&["compare", "v1.raw", "v1.prl"]);
        assert_eq!(
            &std::fs::read(fx.path("v1.prl")).unwrap()[..16],
            b"WithoutFreeSpace"
        );
    }
}

#[test]
fn a_killed_write_leaves_at_worst_leaks_and_the_unclean_flag() {
    let fx = Fixture::new("prl_kill");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.qemu_io("src.raw", "write -P 3 0 3M");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "parallels",
        "-o",
        "cluster_size=64k",
        "base.prl",
        "4M",
    ]);
    for n in 0.. {
        assert!(n < 2000, "no end to the fault points");
        fx.sh("cp base.prl t.prl");
        let out = fx.qimg_env(
            &["convert", "-n", "-O", "parallels", "src.raw", "t.prl"],
            &[("QIMG_FAULT", &format!("kill-after:{n}"))],
        );
        if out.status == 0 {
            fx.oracle(&["check", "t.prl"]);
            fx.oracle(&["compare", "src.raw", "t.prl"]);
            assert!(n > 3);
            return;
        }
        // The format marks an image open for writing; a kill leaves the mark,
        // which qemu-img check reports (exit 2) besides any leaks.
        let check = fx.qemu_img(&["check", "t.prl"]);
        let bad: Vec<&str> = check
            .stderr
            .lines()
            .filter(|l| l.starts_with("ERROR") && !l.contains("not closed correctly"))
            .filter(|l| !l.contains("space leaked"))
            .collect();
        assert!(bad.is_empty(), "kill at {n}: {}", check.stderr);
        // Both tools repair it alike.
        same_repair(&fx, "t.prl", &["check", "-r", "all", "{}"]);
    }
}

// ---- check and repair ------------------------------------------------------

/// Little-endian bytes of `v`.
fn le32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// Damaged copies of a qemu-made image (64 KiB clusters, BAT entries 0,
/// 16 and 48 allocated: clusters 1, 2 and 3 of the file).
fn damaged() -> Fixture {
    let fx = made("prl_damaged", "cluster_size=64k", "4M");
    let entry = |i: u64| 64 + 4 * i;
    fx.patched_copy("img.prl", "unclean.prl", &[(44, le32(0x746F_6E59))]);
    fx.patched_copy("img.prl", "dup.prl", &[(entry(16), le32(1))]);
    fx.patched_copy("img.prl", "eof.prl", &[(entry(48), le32(100))]);
    fx.patched_copy("img.prl", "dataoff.prl", &[(48, le32(0))]);
    fx.patched_copy("img.prl", "dataoff2.prl", &[(48, le32(0x7fff_ffff))]);
    fx.patched_copy(
        "img.prl",
        "dups.prl",
        &[(entry(16), le32(1)), (entry(47), le32(3))],
    );
    fx.patched_copy(
        "img.prl",
        "mixed.prl",
        &[
            (44, le32(0x746F_6E59)),
            (entry(16), le32(1)),
            (entry(47), le32(3)),
        ],
    );
    fx.sh("cp img.prl leak.prl && head -c 100000 /dev/urandom >> leak.prl");
    fx.sh("cp img.prl leak2.prl && truncate -s 1M leak2.prl");
    fx
}

#[test]
fn damaged_images_check_and_repair_as_with_qemu_img() {
    let fx = damaged();
    for file in [
        "unclean.prl",
        "dup.prl",
        "dups.prl",
        "dataoff.prl",
        "dataoff2.prl",
        "mixed.prl",
        "leak.prl",
        "leak2.prl",
    ] {
        fx.same(&["check", file]);
        fx.same(&["check", "--output=json", file]);
        same_repair(&fx, file, &["check", "-r", "leaks", "{}"]);
        fx.oracle(&["convert", "-O", "raw", file, "before.raw"]);
        if file == "mixed.prl" {
            // Not closed cleanly and with duplicates: qemu-img 10.0.2
            // then allocates from an empty map of used clusters and copies
            // entry 48's cluster over the one entry 0 names (its check
            // fails, "Device or resource busy", after the damage is done).
            // qimg repairs it.
            let out = fx.qimg(&["check", "-r", "all", "mixed.prl"]);
            assert_eq!(out.status, 0, "{}", out.stderr);
        } else {
            same_repair(&fx, file, &["check", "-r", "all", "{}"]);
            // Opened for writing, both repair what needs it first.
            same_repair(
                &fx,
                file,
                &[
                    "convert",
                    "-n",
                    "-f",
                    "parallels",
                    "-O",
                    "parallels",
                    "img.prl",
                    "{}",
                ],
            );
            fx.sh(&format!("cp {file} ours.{file}"));
            let out = fx.qimg(&["check", "-r", "all", &format!("ours.{file}")]);
            assert_eq!(out.status, 0, "{}", out.stderr);
            fx.sh(&format!("mv ours.{file} {file}"));
        }
        // The repair keeps what the guest read before it.
        fx.oracle(&["check", file]);
        fx.oracle(&["compare", "-F", "raw", file, "before.raw"]);
    }
}

#[test]
fn a_cluster_past_the_end_is_reported_where_qemu_img_aborts() {
    let fx = damaged();
    // qemu-img 10.0.2 fails an assertion here; qimg reports the entry.
    let out = fx.qimg(&["check", "eof.prl"]);
    assert_eq!(out.status, 2, "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "ERROR cluster 48 is outside image\nERROR space leaked at the end of the image 65536\n"
    );
    assert!(
        out.stdout.contains("1 errors were found on the image."),
        "{}",
        out.stdout
    );
    same_repair(&fx, "eof.prl", &["check", "-r", "all", "{}"]);
    fx.oracle(&["check", "ours.eof.prl"]);
    // Repairing leaks only leaves the entry, and the file does not grow
    // out to where it points.
    fx.sh("cp eof.prl leaks.prl");
    let before = std::fs::metadata(fx.path("leaks.prl")).unwrap().len();
    let out = fx.qimg(&["check", "-r", "leaks", "leaks.prl"]);
    assert_eq!(out.status, 2, "{}", out.stderr);
    let after = std::fs::metadata(fx.path("leaks.prl")).unwrap().len();
    assert!(after <= before, "{before} -> {after}");
    assert_eq!(fx.qimg(&["check", "leaks.prl"]).status, 2);
}

/// Checks and repairs of damaged layouts, as qemu-img's: an image not
/// closed cleanly gets its first new cluster at the end of the data
/// (qemu-img keeps no map of used clusters for it, so a free cluster
/// inside stays free); a header whose cluster size was damaged so that
/// every entry lies before the data area is cut after the last cluster
/// (the next check finds the data offset past the end), and two such
/// entries naming one cluster are counted as qemu-img counts them.
#[test]
fn damaged_layouts_check_and_repair_as_with_qemu_img() {
    let fx = damaged();
    let entry = |i: u64| 64 + 4 * i;
    // Entry 16 shares entry 0's cluster: the file's cluster 2 is free.
    fx.patched_copy(
        "img.prl",
        "unclean-dup.prl",
        &[(44, le32(0x746F_6E59)), (entry(16), le32(1))],
    );
    // 4 KiB clusters instead of 64 KiB (offset 28: sectors per cluster).
    fx.patched_copy("img.prl", "tracks.prl", &[(28, le32(8))]);
    for file in ["unclean-dup.prl", "tracks.prl"] {
        fx.oracle(&["convert", "-O", "raw", file, "before.raw"]);
        same_repair(&fx, file, &["check", "-r", "leaks", "{}"]);
        same_repair(&fx, file, &["check", "-r", "all", "{}"]);
        let repaired = format!("ours.{file}");
        fx.same(&["check", &repaired]);
        fx.oracle(&["compare", "-F", "raw", &repaired, "before.raw"]);
    }
    // 1536-byte clusters, and entry 16 names entry 0's cluster: qemu-img's
    // duplicate count wraps the indices of clusters before the data area
    // and finds it. (Its `-r all` then fails; qimg's succeeds.)
    fx.patched_copy(
        "img.prl",
        "wrapped.prl",
        &[(28, le32(3)), (entry(16), le32(1))],
    );
    let out = fx.same(&["check", "wrapped.prl"]);
    assert!(
        out.stderr
            .contains("ERROR duplicate offset in BAT entry 16"),
        "{}",
        out.stderr
    );
    same_repair(&fx, "wrapped.prl", &["check", "-r", "leaks", "{}"]);
}

/// `convert --bitmaps` from parallels copies no bitmap, as qemu-img (which
/// takes the format as able to hold persistent ones) does, instead of
/// refusing the source.
#[test]
fn bitmaps_copy_from_parallels_as_from_qemu_img() {
    let fx = made("prl_bitmaps", "", "4M");
    fx.same_effect(
        &["convert", "--bitmaps", "-O", "qcow2", "img.prl", "{}"],
        "o.qcow2",
    );
}

// ---- hostile headers -------------------------------------------------------

#[test]
fn hostile_headers_are_refused_as_qemu_img_refuses_them() {
    let fx = made("prl_hostile", "cluster_size=64k", "4M");
    let cases: &[(&str, u64, Vec<u8>)] = &[
        ("zero tracks", 28, le32(0)),
        ("huge tracks", 28, le32(u32::MAX)),
        ("huge BAT", 32, le32(u32::MAX)),
        ("BAT past EOF", 32, le32(0x1fff_ffff)),
        ("huge size", 36, u64::MAX.to_le_bytes().to_vec()),
        (
            "largest size",
            36,
            (0x3f_ffff_ffc0_0000u64).to_le_bytes().to_vec(),
        ),
        ("data_off past EOF", 48, le32(u32::MAX)),
        ("extension in the header", 56, 1u64.to_le_bytes().to_vec()),
        (
            "extension past EOF",
            56,
            (1u64 << 40).to_le_bytes().to_vec(),
        ),
        ("tiny clusters", 28, le32(1)),
        ("version 3", 16, le32(3)),
        ("entry far past EOF", 64, le32(u32::MAX)),
        ("v1 magic", 0, b"WithoutFreeSpace".to_vec()),
    ];
    for (what, at, bytes) in cases {
        fx.patched_copy("img.prl", "bad.prl", &[(*at, bytes.clone())]);
        for args in [
            &["info", "-f", "parallels", "bad.prl"][..],
            &["info", "bad.prl"][..],
            &["map", "-f", "parallels", "--output=json", "bad.prl"][..],
        ] {
            let ours = fx.qimg_bounded(args);
            let theirs = fx.qemu_img(args);
            if theirs.stderr.contains("Assertion") {
                // qemu-img 10.0.2 aborts; qimg answers.
                assert_eq!(ours.status, 0, "{what}: {args:?}: {}", ours.stderr);
                continue;
            }
            assert_eq!(ours, theirs, "{what}: {args:?}");
        }
        if *what != "entry far past EOF" && *what != "tiny clusters" {
            let ours = fx.qimg_bounded(&["check", "-f", "parallels", "bad.prl"]);
            assert_eq!(
                ours,
                fx.qemu_img(&["check", "-f", "parallels", "bad.prl"]),
                "{what}"
            );
        }
    }
}

// ---- beyond qemu-img: resize and measure ----------------------------------

#[test]
fn resize_grows_and_shrinks_keeping_the_data() {
    for (opts, sizes) in [
        ("cluster_size=64k", &["8M", "1G", "3M"][..]),
        ("cluster_size=4k", &["64M", "2M"][..]),
    ] {
        let fx = made("prl_resize", opts, "4M");
        fx.oracle(&["convert", "-O", "raw", "img.prl", "ref.raw"]);
        for size in sizes {
            let out = fx.qimg(&["resize", "--shrink", "img.prl", size]);
            assert_eq!(out.status, 0, "{size}: {}", out.stderr);
            assert_eq!(out.stdout, "Image resized.\n");
            fx.oracle(&["resize", "-f", "raw", "--shrink", "ref.raw", size]);
            fx.oracle(&["check", "img.prl"]);
            fx.oracle(&["compare", "img.prl", "ref.raw"]);
            fx.same(&["info", "img.prl"]);
        }
    }
}

#[test]
fn resize_preallocates_the_new_area() {
    for mode in ["falloc", "full"] {
        let fx = made("prl_resize_prealloc", "cluster_size=64k", "4M");
        fx.oracle(&["convert", "-O", "raw", "img.prl", "ref.raw"]);
        let flag = format!("--preallocation={mode}");
        let out = fx.qimg(&["resize", &flag, "img.prl", "6M"]);
        assert_eq!(out.status, 0, "{mode}: {}", out.stderr);
        fx.oracle(&["resize", "-f", "raw", "ref.raw", "6M"]);
        fx.oracle(&["check", "img.prl"]);
        fx.oracle(&["compare", "img.prl", "ref.raw"]);
        // Every cluster of the new area is allocated, as data.
        let map = fx.qemu_img(&["map", "--output=json", "img.prl"]).stdout;
        let map: serde_json::Value = serde_json::from_str(&map).expect("map JSON");
        let mut covered = 0;
        for run in map.as_array().expect("map list") {
            let (start, len) = (
                run["start"].as_u64().unwrap(),
                run["length"].as_u64().unwrap(),
            );
            if start + len > 4 << 20 {
                assert_eq!(run["data"], true, "{mode}: {run}");
                covered += start + len - start.max(4 << 20);
            }
        }
        assert_eq!(covered, 2 << 20, "{mode}");
    }
    // metadata is refused, and the image is left closed cleanly.
    let fx = made("prl_resize_prealloc_metadata", "", "4M");
    let out = fx.qimg(&["resize", "--preallocation=metadata", "img.prl", "6M"]);
    assert_eq!(out.status, 1, "{}", out.stderr);
    fx.oracle(&["check", "img.prl"]);
    fx.same(&["info", "img.prl"]);
}

#[test]
fn measure_is_what_convert_writes() {
    let fx = Fixture::new("prl_measure");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "20M"]);
    fx.qemu_io("src.raw", "write -P 1 0 3M");
    fx.qemu_io("src.raw", "write -P 2 10M 100k");
    for cluster in ["1M", "64k"] {
        let opt = format!("cluster_size={cluster}");
        let out = fx.qimg(&[
            "measure",
            "--output=json",
            "-O",
            "parallels",
            "-o",
            &opt,
            "src.raw",
        ]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        fx.sh("rm -f out.prl");
        fx.oracle(&[
            "convert",
            "-O",
            "parallels",
            "-o",
            &opt,
            "src.raw",
            "out.prl",
        ]);
        let len = std::fs::metadata(fx.path("out.prl")).unwrap().len();
        assert_eq!(v["required"], len, "{cluster}");
        assert_eq!(
            v["fully-allocated"],
            20 * 1024 * 1024 + if cluster == "1M" { 1 << 20 } else { 64 << 10 }
        );
    }
}

/// A 900 KiB file whose header names 204800 clusters of 1 MiB: qemu-img
/// reports each as outside the image, one line each. qimg's report keeps
/// the first 65536 lines (the rest are counted in one line), so a larger
/// hostile file cannot make it hold a line per 4 bytes of file; the
/// counts, the summary and the exit status are qemu-img's.
#[test]
fn check_of_a_huge_table_keeps_its_report_bounded() {
    let fx = Fixture::new("parallels_many_errors");
    fx.sh(
        "qemu-img create -q -f parallels -o cluster_size=1M big.prl 200G && \
         truncate -s 900K big.prl",
    );
    let ours = fx.qimg(&["check", "big.prl"]);
    let theirs = fx.qemu_img(&["check", "big.prl"]);
    assert_eq!((ours.status, &ours.stdout), (theirs.status, &theirs.stdout));
    let lines: Vec<&str> = ours.stderr.lines().collect();
    assert_eq!(lines.len(), 65537, "{}", lines.last().unwrap_or(&""));
    assert_eq!(
        lines[..65536],
        theirs.stderr.lines().take(65536).collect::<Vec<_>>()[..]
    );
    let rest = theirs.stderr.lines().count() - 65536;
    assert_eq!(lines[65536], format!("... and {rest} more like them"));
}

/// A header whose data offset is not a whole cluster (sector 2049): BAT
/// entries name whole clusters, so the place a repair (or a write) finds
/// in the data area must be rounded up to one. qemu-img rounds the entry
/// down instead, onto the cluster of the next entry, and its `check -r
/// all` loses guest cluster 2 here; qimg's repair keeps every guest byte
/// (its entry named a place before the copy, and guest cluster 1 read
/// another cluster's bytes).
#[test]
fn a_repair_with_an_unaligned_data_offset_keeps_the_guest_data() {
    let fx = Fixture::new("parallels_unaligned_data_off");
    fx.oracle(&["create", "-q", "-f", "parallels", "m.img", "4M"]);
    fx.write_scattered("parallels", "m.img");
    // data_off (offset 48): 2048 -> 2049 sectors.
    fx.patched_copy("m.img", "bad.img", &[(48, vec![1u8, 8, 0, 0])]);
    fx.oracle(&[
        "convert",
        "-U",
        "-f",
        "parallels",
        "-O",
        "raw",
        "bad.img",
        "before.raw",
    ]);
    let out = fx.qimg(&["check", "-r", "all", "-f", "parallels", "bad.img"]);
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("Repairing duplicate offset in BAT entry 1"),
        "{}",
        out.stderr
    );
    fx.oracle(&["check", "-f", "parallels", "bad.img"]);
    fx.oracle(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "parallels",
        "before.raw",
        "bad.img",
    ]);
}

/// A 60 TiB image of 1 MiB clusters has a 250 MB BAT: qimg holds it once,
/// as qemu-img does (it held it twice while opening, as bytes and as
/// entries: twice qemu-img's peak for map, check and convert). qemu-img's
/// check is the reference: its map aborts on 2^32 sectors and more.
#[test]
fn a_large_bat_is_held_once() {
    let fx = Fixture::new("prl_large_bat");
    fx.oracle(&["create", "-q", "-f", "parallels", "big.prl", "60T"]);
    fx.qemu_io_cmds("parallels", "big.prl", &["write -P 3 50T 4M"]);
    let theirs = qimg_tests::peak_kib(fx.spawn_qemu_img(&["check", "big.prl"]));
    for args in [
        &["check", "big.prl"][..],
        &["map", "--output=json", "big.prl"],
    ] {
        let ours = qimg_tests::peak_kib(fx.spawn_qimg(args));
        assert!(
            ours < theirs + (12 << 10),
            "{args:?}: {ours} KiB, qemu-img check {theirs} KiB"
        );
    }
}
