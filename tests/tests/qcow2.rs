//! The qcow2 driver against qemu-img 10.0.2: every fixture is made by
//! qemu-img/qemu-io; qimg must read it as qemu-img does (`info`, `map`,
//! `convert -O raw` checked with `qemu-img compare`), and what qimg writes
//! must pass `qemu-img check` and equal its source under `qemu-img compare`.

use qimg_tests::Fixture;

/// Asserts that the real `qemu-img check` finds `file` clean, without leaks.
fn assert_clean(fx: &Fixture, file: &str) {
    let out = fx.qemu_img(&["check", file]);
    assert_eq!(
        out.status, 0,
        "qemu-img check {file}: {}{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout.contains("No errors were found on the image."),
        "qemu-img check {file}: {}",
        out.stdout
    );
}

/// Asserts that the real `qemu-img compare` finds `a` and `b` identical.
fn assert_equal(fx: &Fixture, a: &str, b: &str) {
    let out = fx.qemu_img(&["compare", a, b]);
    assert_eq!(
        out.status, 0,
        "qemu-img compare {a} {b}: {}{}",
        out.stdout, out.stderr
    );
}

/// Runs `args` with qimg on `ours` and qemu-img on `theirs` (`{}` stands for
/// the file; each starts as a copy of `src` if given) and asserts equal
/// output, equal file length, equal `qemu-img map` and equal content.
fn same_result(fx: &Fixture, args: &[&str], src: Option<&str>) {
    for name in ["ours.q", "theirs.q"] {
        let _ = std::fs::remove_file(fx.path(name));
        if let Some(s) = src {
            fx.sh(&format!("cp --sparse=always {s} {name}"));
        }
    }
    let with = |name: &str| {
        args.iter()
            .map(|a| a.replace("{}", name))
            .collect::<Vec<_>>()
    };
    let (a, b) = (with("ours.q"), with("theirs.q"));
    let ours = fx.qimg(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let theirs = fx.qemu_img(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(ours.status, theirs.status, "{args:?}: {}", ours.stderr);
    assert_eq!(
        ours.stdout.replace("ours.q", "X"),
        theirs.stdout.replace("theirs.q", "X"),
        "{args:?}"
    );
    assert_eq!(
        ours.stderr.replace("ours.q", "X"),
        theirs.stderr.replace("theirs.q", "X"),
        "{args:?}"
    );
    let len = |f: &str| std::fs::metadata(fx.path(f)).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len("ours.q"), len("theirs.q"), "file length for {args:?}");
    let map = |f: &str| fx.qemu_img(&["map", "--output=json", f]).stdout;
    assert_eq!(map("ours.q"), map("theirs.q"), "qemu-img map for {args:?}");
    if ours.status == 0 {
        assert_clean(fx, "ours.q");
        assert_equal(fx, "ours.q", "theirs.q");
    }
}

/// An image with a bit of everything: data, zero clusters, compressed
/// clusters, partial clusters, unallocated gaps.
fn mixed(fx: &Fixture, file: &str, opts: &str, cluster: u64) {
    fx.make_qcow2(file, opts, "3M");
    let comp1 = format!("write -c -P 3 1M {cluster}");
    let comp2 = format!("write -c -P 4 {} {cluster}", (1 << 20) + cluster);
    let mut cmds = vec![
        "write -P 1 0 4k",
        "write -P 2 100k 200k",
        "write -z 500k 64k",
        "write -P 5 2M 1k",
        "write -z 2052k 2k",
    ];
    // (qemu-io cannot compress a 2 MiB cluster: the stream would not fit.)
    if cluster <= 1 << 20 {
        cmds.push(comp1.as_str());
        cmds.push(comp2.as_str());
    }
    fx.qemu_io_cmds("qcow2", file, &cmds);
    // The image looks metadata-preallocated (nearly every cluster in use,
    // few allocated), so map asks the file (SEEK_DATA) inside data clusters,
    // and ext4 reports the unwritten tails qemu-io leaves in a cluster as
    // data only while their pages are cached: cache the whole file so that
    // the answer does not depend on what the other tool's reads pulled in.
    fx.sh(&format!("cat {file} > /dev/null"));
}

/// The variants qemu-img writes, with their cluster sizes.
const VARIANTS: &[(&str, &str, u64)] = &[
    ("v3", "", 65536),
    ("v2", "compat=0.10", 65536),
    ("c512", "cluster_size=512", 512),
    ("c2m", "cluster_size=2M", 2 << 20),
    ("rc1", "refcount_bits=1", 65536),
    ("rc64", "refcount_bits=64", 65536),
    ("rc2_c1k", "refcount_bits=2,cluster_size=1k", 1024),
    ("extl2", "extended_l2=on", 65536),
    ("extl2_c16k", "extended_l2=on,cluster_size=16k", 16384),
    ("zstd", "compression_type=zstd", 65536),
    ("lazy", "lazy_refcounts=on", 65536),
];

/// Runs `check` for every variant image made by [`mixed`].
fn each_variant(name: &str, check: impl Fn(&Fixture, &str)) {
    let fx = Fixture::new(name);
    for (tag, opts, cluster) in VARIANTS {
        let file = format!("{tag}.qcow2");
        mixed(&fx, &file, opts, *cluster);
        check(&fx, &file);
    }
}

// ---- reading what qemu-img wrote ----

#[test]
fn info_human_of_every_variant() {
    each_variant("q2_info_human", |fx, f| {
        fx.same(&["info", f]);
    });
}

#[test]
fn info_json_of_every_variant() {
    each_variant("q2_info_json", |fx, f| {
        fx.same(&["info", "--output=json", f]);
    });
}

#[test]
fn map_json_of_every_variant() {
    each_variant("q2_map_json", |fx, f| {
        fx.same(&["map", "--output=json", f]);
    });
}

#[test]
fn map_human_refuses_compressed_clusters_like_qemu() {
    let fx = Fixture::new("q2_map_human");
    mixed(&fx, "m.qcow2", "", 65536);
    fx.same(&["map", "m.qcow2"]);
    fx.make_qcow2("plain.qcow2", "", "1M");
    fx.qemu_io_cmds("qcow2", "plain.qcow2", &["write -P 1 64k 128k"]);
    fx.same(&["map", "plain.qcow2"]);
}

/// qemu counts an image as metadata-preallocated (and then asks the file
/// where its data clusters hold holes) once as many clusters are in use as
/// its threshold; the image here is exactly at it: nine clusters in use,
/// seven allocated after a 16 KiB hole is punched into the first data
/// cluster (threshold: seven plus two).
#[test]
fn map_finds_file_holes_at_the_preallocation_threshold() {
    let fx = Fixture::new("q2_map_threshold");
    fx.make_qcow2("p.qcow2", "", "1M");
    fx.qemu_io_cmds("qcow2", "p.qcow2", &["write -P 7 0 256k"]);
    fx.sh("fallocate -p -o 376832 -l 16384 p.qcow2 && sync p.qcow2");
    // (On ext4 the file then holds 1000 sectors: with the rule off by one,
    // qimg's map showed the first cluster as data throughout.)
    fx.same(&["map", "p.qcow2"]);
    fx.same(&["map", "--output=json", "p.qcow2"]);
}

#[test]
fn convert_to_raw_reads_every_variant() {
    each_variant("q2_to_raw", |fx, f| {
        let out = format!("{f}.raw");
        let r = fx.qimg(&["convert", "-O", "raw", f, &out]);
        assert_eq!(r.status, 0, "{}", r.stderr);
        assert_equal(fx, f, &out);
    });
}

#[test]
fn overlays_read_through_their_backing_file() {
    let fx = Fixture::new("q2_backing");
    fx.oracle(&["create", "-q", "-f", "raw", "base.raw", "2M"]);
    fx.qemu_io("base.raw", "write -P 0x11 0 2M");
    for (tag, opts, _) in VARIANTS.iter().filter(|v| !v.1.contains("2M")) {
        let file = format!("ov_{tag}.qcow2");
        let mut args = vec!["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([file.as_str(), "2M"]);
        fx.oracle(&args);
        let cmds = [
            "write -P 1 4k 4k",
            "write -z 128k 64k",
            "write -P 7 1000k 100",
        ];
        fx.qemu_io_cmds("qcow2", &file, &cmds);
        fx.same(&["map", "--output=json", &file]);
        fx.same(&["info", &file]);
        let out = format!("{file}.raw");
        assert_eq!(fx.qimg(&["convert", "-O", "raw", &file, &out]).status, 0);
        assert_equal(&fx, &file, &out);
    }
    // Larger than its backing file: the tail reads as zeros.
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "big.qcow2",
        "3M",
    ]);
    fx.qemu_io_cmds("qcow2", "big.qcow2", &["write -P 1 2044k 8k"]);
    assert_eq!(
        fx.qimg(&["convert", "-O", "raw", "big.qcow2", "big.raw"])
            .status,
        0
    );
    assert_equal(&fx, "big.qcow2", "big.raw");
}

#[test]
fn external_data_files() {
    let fx = Fixture::new("q2_data_file");
    fx.make_qcow2("d.qcow2", "data_file=d.data", "1M");
    fx.qemu_io_cmds(
        "qcow2",
        "d.qcow2",
        &[
            "write -P 1 0 64k",
            "write -z 128k 64k",
            "write -P 3 300k 10k",
        ],
    );
    fx.make_qcow2("r.qcow2", "data_file=r.data,data_file_raw=on", "1M");
    fx.qemu_io_cmds(
        "qcow2",
        "r.qcow2",
        &["write -P 1 0 64k", "write -z 128k 64k"],
    );
    fx.make_qcow2(
        "x.qcow2",
        "data_file=x.data,data_file_raw=on,extended_l2=on",
        "1M",
    );
    fx.qemu_io_cmds(
        "qcow2",
        "x.qcow2",
        &["write -P 1 0 64k", "write -z 128k 64k"],
    );
    for f in ["d.qcow2", "r.qcow2", "x.qcow2"] {
        fx.same(&["info", f]);
        fx.same(&["info", "--output=json", f]);
        fx.same(&["map", "--output=json", f]);
        fx.same(&["map", f]);
        let out = format!("{f}.raw");
        assert_eq!(fx.qimg(&["convert", "-O", "raw", f, &out]).status, 0);
        assert_equal(&fx, f, &out);
    }
}

#[test]
fn metadata_preallocation_maps_holes_as_zero_data() {
    let fx = Fixture::new("q2_prealloc_map");
    for p in ["metadata", "falloc", "full"] {
        let f = format!("{p}.qcow2");
        fx.make_qcow2(&f, &format!("preallocation={p}"), "1M");
        fx.qemu_io_cmds("qcow2", &f, &["write -P 1 0 4k"]);
        fx.same(&["map", "--output=json", &f]);
    }
}

#[test]
fn zero_clusters_allocated_and_not() {
    let fx = Fixture::new("q2_zero");
    fx.make_qcow2("z.qcow2", "", "1M");
    fx.qemu_io_cmds(
        "qcow2",
        "z.qcow2",
        &["write -P 1 0 128k", "write -z 0 64k", "write -z -u 64k 64k"],
    );
    fx.make_qcow2("e.qcow2", "extended_l2=on", "1M");
    fx.qemu_io_cmds(
        "qcow2",
        "e.qcow2",
        &["write -P 1 0 2k", "write -z 8k 4k", "write -P 3 300k 10k"],
    );
    for f in ["z.qcow2", "e.qcow2"] {
        fx.same(&["map", "--output=json", f]);
    }
}

#[test]
fn snapshots_and_bitmaps_are_listed() {
    let fx = Fixture::new("q2_snap_bitmap");
    fx.make_qcow2("s.qcow2", "", "1M");
    fx.qemu_io_cmds("qcow2", "s.qcow2", &["write -P 1 0 64k"]);
    fx.oracle(&["bitmap", "--add", "s.qcow2", "bm0"]);
    fx.oracle(&["bitmap", "--add", "--granularity", "128k", "s.qcow2", "bm1"]);
    fx.oracle(&["bitmap", "--disable", "s.qcow2", "bm1"]);
    fx.same(&["info", "--output=json", "s.qcow2"]);
    fx.same(&["map", "--output=json", "s.qcow2"]);
}

#[test]
fn luks_and_aes_headers_are_described() {
    let fx = Fixture::new("q2_luks");
    let secret = "--object=secret,id=s0,data=pw";
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        secret,
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
        "l.qcow2",
        "1M",
    ]);
    fx.oracle(&[
        "create", "-q", "-f", "qcow2", secret, "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256,encrypt.cipher-alg=aes-128",
        "e.qcow2", "1M",
    ]);
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        secret,
        "-o",
        "encryption=on,encrypt.key-secret=s0",
        "a.qcow2",
        "1M",
    ]);
    for f in ["l.qcow2", "e.qcow2", "a.qcow2"] {
        fx.same(&["info", f]);
        // (JSON: the host places "encrypted" before "format-specific".)
        let ours = fx.qimg(&["info", "--output=json", f]).stdout;
        let theirs = fx.qemu_img(&["info", "--output=json", f]).stdout;
        let fs = |s: &str| {
            s[s.find("\"format-specific\": {\n        \"type\": \"qcow2\"")
                .unwrap_or(0)..]
                .replace("    \"encrypted\": true,\n", "")
        };
        assert_eq!(fs(&ours), fs(&theirs), "{f}");
    }
}

#[test]
fn dirty_and_corrupt_flags() {
    let fx = Fixture::new("q2_flags");
    fx.make_qcow2("l.qcow2", "lazy_refcounts=on", "1M");
    // qemu-io's abort leaves the dirty bit set with stale refcounts.
    fx.sh("qemu-io -f qcow2 -c 'write -P 1 0 128k' -c abort l.qcow2 >/dev/null 2>&1 || true");
    fx.same(&["info", "l.qcow2"]);
    fx.same(&["map", "--output=json", "l.qcow2"]);
    fx.sh("cp l.qcow2 l2.qcow2");
    // Opening it for writing repairs the refcounts and clears the bit.
    assert_eq!(fx.qimg(&["resize", "l.qcow2", "2M"]).status, 0);
    assert_clean(&fx, "l.qcow2");
    fx.same(&["info", "l.qcow2"]);
    let out = fx.qemu_img(&["compare", "l.qcow2", "l2.qcow2"]);
    assert!(
        out.stdout.contains("Images are identical."),
        "{}",
        out.stdout
    );

    fx.make_qcow2("c.qcow2", "", "1M");
    // Set the corrupt bit (incompatible feature bit 1, byte 79).
    fx.sh("printf '\\002' | dd of=c.qcow2 bs=1 seek=79 conv=notrunc status=none");
    fx.same(&["info", "c.qcow2"]);
    fx.same(&["resize", "c.qcow2", "2M"]);
}

/// Byte patches: (offset, bytes).
type Edits = Vec<(u64, Vec<u8>)>;

#[test]
fn hostile_headers_fail_like_qemu() {
    let fx = Fixture::new("q2_hostile");
    fx.make_qcow2("base.qcow2", "", "4M");
    fx.qemu_io_cmds(
        "qcow2",
        "base.qcow2",
        &["write -P 1 0 64k", "write -c -P 2 1M 64k"],
    );
    let be32 = |v: u32| v.to_be_bytes().to_vec();
    let be64 = |v: u64| v.to_be_bytes().to_vec();
    let cases: Vec<(&str, Edits)> = vec![
        ("version4", vec![(4, be32(4))]),
        ("cluster_bits_8", vec![(20, be32(8))]),
        ("cluster_bits_22", vec![(20, be32(22))]),
        ("cluster_bits_40", vec![(20, be32(40))]),
        ("l1_huge", vec![(36, be32(0x7fff_ffff))]),
        ("l1_big_past_eof", vec![(36, be32(0x40_0000))]),
        ("l1_too_small", vec![(36, be32(0))]),
        ("l1_unaligned", vec![(40, be64(0x30001))]),
        ("l1_past_eof", vec![(40, be64(1 << 32))]),
        ("reftable_past_eof", vec![(48, be64(1 << 32))]),
        ("reftable_unaligned", vec![(48, be64(0x10001))]),
        ("reftable_huge", vec![(56, be32(0x7fff_ffff))]),
        ("reftable_empty", vec![(56, be32(0))]),
        ("snapshots_too_many", vec![(60, be32(100_000))]),
        (
            "snapshots_past_eof",
            vec![(60, be32(2)), (64, be64(1 << 32))],
        ),
        (
            "snapshots_unaligned",
            vec![(60, be32(2)), (64, be64(0x1001))],
        ),
        ("unknown_incompatible", vec![(72, be64(1 << 20))]),
        ("unknown_incompatible_5", vec![(72, be64(1 << 5))]),
        ("dirty", vec![(72, be64(1))]),
        ("compression_bit_zlib", vec![(72, be64(8))]),
        ("compression_type_no_bit", vec![(104, vec![1])]),
        ("compression_type_7", vec![(72, be64(8)), (104, vec![7])]),
        ("compression_type_18_no_bit", vec![(104, vec![18])]),
        ("refcount_order_7", vec![(96, be32(7))]),
        ("header_length_short", vec![(100, be32(50))]),
        ("header_length_huge", vec![(100, be32(0x20000))]),
        ("crypt_method_3", vec![(32, be32(3))]),
        ("luks_without_header", vec![(32, be32(2))]),
        ("size_huge", vec![(24, be64(1 << 62))]),
        (
            "backing_name_long",
            vec![(8, be64(0x200)), (16, be32(2000))],
        ),
        (
            "backing_offset_bad",
            vec![(8, be64(0x20000)), (16, be32(20))],
        ),
        ("extension_too_long", vec![(116, be32(0x10_0000))]),
        ("l2_unaligned", vec![(0x30000, be64(0x8000_0000_0001_2345))]),
        ("l2_past_eof", vec![(0x30000, be64(0x8000_0001_0000_0000))]),
        // Sizes are whole sectors to qemu: these round down.
        ("size_odd", vec![(24, be64(0x3f_ffff))]),
        ("size_one", vec![(24, be64(1))]),
        // The raw-data bit needs a data file (for reading, not info).
        ("data_file_raw_alone", vec![(88, be64(2))]),
        // A backing name of no bytes is no backing file.
        ("backing_name_empty", vec![(8, be64(0x200))]),
    ];
    for (name, edits) in &cases {
        let file = format!("{name}.qcow2");
        let edits: Vec<(u64, &[u8])> = edits.iter().map(|(o, b)| (*o, b.as_slice())).collect();
        fx.patched_copy("base.qcow2", &file, &edits);
        // qimg runs under `ulimit -v 1G`: no header may size an allocation.
        if name.starts_with("snapshots_past") {
            // (The host does not list snapshots yet; the rest must agree.)
            fx.same_bounded(&["map", "--output=json", &file]);
        } else {
            fx.same_bounded(&["info", &file]);
            fx.same_bounded(&["info", "-f", "qcow2", "--output=json", &file]);
        }
        let check = fx.qimg_bounded(&["check", &file]);
        assert!(
            (0..=3).contains(&check.status) && !check.stderr.contains("panicked"),
            "check {file}: {check:?}"
        );
        let ours = fx.qimg_bounded(&["convert", "-O", "raw", &file, "ours.raw"]);
        let theirs = fx.qemu_img(&["convert", "-O", "raw", &file, "theirs.raw"]);
        assert_eq!(
            ours.status, theirs.status,
            "convert {file}: {}",
            ours.stderr
        );
        if theirs.status == 0 {
            assert_equal(&fx, "ours.raw", "theirs.raw");
            let len = |f: &str| std::fs::metadata(fx.path(f)).expect("stat").len();
            assert_eq!(len("ours.raw"), len("theirs.raw"), "convert {file}");
        }
    }
    std::fs::write(
        fx.path("short.qcow2"),
        &std::fs::read(fx.path("base.qcow2")).expect("read")[..100],
    )
    .expect("write");
    fx.same(&["info", "-f", "qcow2", "short.qcow2"]);
}

// ---- writing images qemu-img accepts ----

#[test]
fn create_help_lists_qemus_options() {
    let fx = Fixture::new("q2_create_help");
    fx.same(&["create", "-f", "qcow2", "-o", "help"]);
    fx.same(&["create", "-f", "qcow2", "-o", "help", "x.qcow2"]);
}

/// Options whose images qimg writes byte for byte as qemu-img does.
const CREATE_IDENTICAL: &[&str] = &[
    "",
    "compat=0.10",
    "compat=v3",
    "cluster_size=512",
    "cluster_size=4k",
    "cluster_size=2M",
    "refcount_bits=1",
    "refcount_bits=8",
    "refcount_bits=64",
    "extended_l2=on",
    "compression_type=zstd",
    "lazy_refcounts=on",
    "preallocation=metadata",
    "extended_l2=on,preallocation=metadata",
    "cluster_size=512,preallocation=metadata",
    "compat=0.10,preallocation=metadata",
];

#[test]
fn create_writes_qemus_layout() {
    let fx = Fixture::new("q2_create_same");
    for opts in CREATE_IDENTICAL {
        let mut args = vec!["create", "-f", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend(["{}", "5M"]);
        fx.same_effect(&args, "new.qcow2");
        assert_clean(&fx, "ours.new.qcow2");
    }
}

#[test]
fn create_with_backing_file() {
    let fx = Fixture::new("q2_create_backing");
    fx.oracle(&["create", "-q", "-f", "raw", "b.raw", "1M"]);
    fx.same_effect(
        &[
            "create", "-f", "qcow2", "-b", "b.raw", "-F", "raw", "{}", "1M",
        ],
        "o.qcow2",
    );
    fx.same_effect(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "backing_file=b.raw,backing_fmt=raw,cluster_size=4k",
            "{}",
            "2M",
        ],
        "o.qcow2",
    );
    fx.same(&["info", "ours.o.qcow2"]);
}

#[test]
fn create_full_preallocation_is_clean_and_equal_in_content() {
    let fx = Fixture::new("q2_create_prealloc");
    // Up to one cluster, the data cluster went where the refcount table had
    // been and read its stale bytes; qemu puts the data past the metadata.
    for (opts, size) in [
        ("preallocation=falloc", "3M"),
        ("preallocation=full", "3M"),
        ("cluster_size=4k,preallocation=full", "3M"),
        ("preallocation=full", "64k"),
        ("preallocation=falloc", "1000"),
        ("cluster_size=2M,preallocation=full", "1M"),
    ] {
        let out = fx.qimg(&["create", "-q", "-f", "qcow2", "-o", opts, "p.qcow2", size]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        fx.oracle(&["create", "-q", "-f", "qcow2", "-o", opts, "t.qcow2", size]);
        assert_clean(&fx, "p.qcow2");
        assert_equal(&fx, "p.qcow2", "t.qcow2");
        let bytes = |f: &str| std::fs::read(fx.path(f)).expect("read");
        assert!(bytes("p.qcow2") == bytes("t.qcow2"), "{opts} {size}");
        let info = |f: &str| {
            let o = fx.qemu_img(&["info", "--output=json", f]).stdout;
            o.replace(f, "X")
        };
        let (a, b) = (info("p.qcow2"), info("t.qcow2"));
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.contains("actual-size"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&a), strip(&b), "{opts}");
    }
}

#[test]
fn create_with_data_file() {
    let fx = Fixture::new("q2_create_data");
    for opts in [
        "data_file=d.data",
        "data_file=d.data,data_file_raw=on",
        "data_file=d.data,preallocation=metadata",
    ] {
        let out = fx.qimg(&["create", "-q", "-f", "qcow2", "-o", opts, "d.qcow2", "1M"]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        assert_clean(&fx, "d.qcow2");
        let ours = fx.qemu_img(&["map", "--output=json", "d.qcow2"]).stdout;
        let info = fx.qemu_img(&["info", "d.qcow2"]).stdout;
        fx.oracle(&["create", "-q", "-f", "qcow2", "-o", opts, "d.qcow2", "1M"]);
        assert_eq!(
            ours,
            fx.qemu_img(&["map", "--output=json", "d.qcow2"]).stdout,
            "{opts}"
        );
        assert_eq!(info, fx.qemu_img(&["info", "d.qcow2"]).stdout, "{opts}");
    }
}

#[test]
fn create_refuses_what_qemu_refuses() {
    let fx = Fixture::new("q2_create_errors");
    for opts in [
        "cluster_size=1000",
        "cluster_size=256",
        "cluster_size=4M",
        "compat=0.9",
        "refcount_bits=3",
        "refcount_bits=128",
        "compat=0.10,refcount_bits=8",
        "compat=0.10,lazy_refcounts=on",
        "compression_type=lz4",
        "compat=0.10,compression_type=zstd",
        "data_file_raw=on",
        "preallocation=foo",
        "backing_fmt=raw",
        "compat=0.10,data_file=d.raw",
        "compat=0.10,extended_l2=on",
        "extended_l2=on,cluster_size=8k",
    ] {
        fx.same(&["create", "-f", "qcow2", "-o", opts, "x.qcow2", "1M"]);
    }
}

#[test]
fn create_refuses_encryption_without_a_secret_like_qemu() {
    let fx = Fixture::new("q2_create_encrypt");
    fx.same_effect(
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=luks",
            "{}",
            "1M",
        ],
        "x.qcow2",
    );
}

/// A sparse raw source with scattered, unaligned data.
fn scattered(fx: &Fixture) {
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "6M"]);
    for (i, (at, len)) in [
        (333, 5000),
        (70_000, 20_000),
        (1 << 20, 1 << 20),
        (3_500_000, 777),
        (6 * 1024 * 1024 - 4096, 4096),
    ]
    .iter()
    .enumerate()
    {
        fx.qemu_io("src.raw", &format!("write -P {} {at} {len}", i + 1));
    }
}

#[test]
fn convert_to_qcow2_with_each_option() {
    let fx = Fixture::new("q2_convert_opts");
    scattered(&fx);
    for opts in [
        "",
        "compat=0.10",
        "cluster_size=512",
        "cluster_size=4k",
        "cluster_size=2M",
        "refcount_bits=1",
        "refcount_bits=64",
        "extended_l2=on",
        "lazy_refcounts=on",
        "preallocation=metadata",
        "preallocation=full",
        "data_file=out.data",
    ] {
        let _ = std::fs::remove_file(fx.path("out.qcow2"));
        let mut args = vec!["convert", "-O", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend(["src.raw", "out.qcow2"]);
        let out = fx.qimg(&args);
        assert_eq!(out.status, 0, "{opts}: {}", out.stderr);
        assert_clean(&fx, "out.qcow2");
        assert_equal(&fx, "src.raw", "out.qcow2");
    }
}

#[test]
fn convert_sequentially_allocates_like_qemu() {
    let fx = Fixture::new("q2_convert_layout");
    scattered(&fx);
    for opts in ["cluster_size=65536", "extended_l2=on", "cluster_size=4k"] {
        let args = [
            "convert", "-m", "1", "-O", "qcow2", "-o", opts, "src.raw", "{}",
        ];
        same_result(&fx, &args, None);
    }
}

#[test]
fn convert_between_qcow2_variants() {
    each_variant("q2_convert_variants", |fx, f| {
        for opts in ["", "extended_l2=on", "cluster_size=4k,refcount_bits=2"] {
            let _ = std::fs::remove_file(fx.path("o.qcow2"));
            let mut args = vec!["convert", "-O", "qcow2"];
            if !opts.is_empty() {
                args.extend(["-o", opts]);
            }
            args.extend([f, "o.qcow2"]);
            let out = fx.qimg(&args);
            assert_eq!(out.status, 0, "{f} {opts}: {}", out.stderr);
            assert_clean(fx, "o.qcow2");
            assert_equal(fx, f, "o.qcow2");
        }
    });
}

#[test]
fn convert_compressed_zlib_and_zstd() {
    let fx = Fixture::new("q2_convert_c");
    scattered(&fx);
    for opts in [
        "",
        "compression_type=zstd",
        "cluster_size=4k",
        "cluster_size=512,refcount_bits=1",
    ] {
        let _ = std::fs::remove_file(fx.path("c.qcow2"));
        let mut args = vec!["convert", "-c", "-O", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend(["src.raw", "c.qcow2"]);
        let out = fx.qimg(&args);
        assert_eq!(out.status, 0, "{opts}: {}", out.stderr);
        assert_clean(&fx, "c.qcow2");
        assert_equal(&fx, "src.raw", "c.qcow2");
        let map = fx.qemu_img(&["map", "--output=json", "c.qcow2"]).stdout;
        assert!(map.contains("\"compressed\": true"), "{opts}: {map}");
        // qemu reads back what qimg compressed.
        fx.sh("qemu-img convert -O raw c.qcow2 back.raw && cmp src.raw back.raw");
    }
}

#[test]
fn convert_onto_a_backing_file_copies_on_write() {
    let fx = Fixture::new("q2_convert_cow");
    fx.oracle(&["create", "-q", "-f", "raw", "base.raw", "2M"]);
    fx.qemu_io("base.raw", "write -P 0x22 0 2M");
    fx.oracle(&[
        "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "ov.qcow2",
    ]);
    fx.oracle(&["create", "-q", "-f", "raw", "patch.raw", "2M"]);
    fx.qemu_io("patch.raw", "write -P 0x33 1000 3000");
    fx.qemu_io("patch.raw", "write -P 0x22 0 1000");
    fx.qemu_io("patch.raw", "write -P 0x22 4000 2093152");
    // Only the changed bytes go into the overlay; the rest of their cluster
    // is copied from the backing file.
    let out = fx.qimg(&[
        "convert",
        "-n",
        "-B",
        "base.raw",
        "-F",
        "raw",
        "-O",
        "qcow2",
        "patch.raw",
        "ov.qcow2",
    ]);
    if out.status == 0 {
        assert_clean(&fx, "ov.qcow2");
        assert_equal(&fx, "patch.raw", "ov.qcow2");
    }
    let out = fx.qimg(&["dd", "-O", "qcow2", "if=patch.raw", "of=dd.qcow2", "bs=4k"]);
    if out.status == 0 {
        assert_clean(&fx, "dd.qcow2");
        assert_equal(&fx, "patch.raw", "dd.qcow2");
    }
}

#[test]
fn resize_grow_shrink_and_preallocate_like_qemu() {
    let fx = Fixture::new("q2_resize");
    fx.make_qcow2("r.qcow2", "", "4M");
    fx.qemu_io_cmds("qcow2", "r.qcow2", &["write -P 1 0 1M", "write -P 2 3M 1M"]);
    same_result(&fx, &["resize", "{}", "10M"], Some("r.qcow2"));
    same_result(&fx, &["resize", "--shrink", "{}", "2M"], Some("r.qcow2"));
    same_result(&fx, &["resize", "{}", "2M"], Some("r.qcow2"));
    fx.same(&["resize", "r.qcow2", "1M"]);
    fx.sh("qemu-img resize -q --shrink r.qcow2 2M");
    for p in ["metadata", "falloc"] {
        let mode = format!("--preallocation={p}");
        same_result(&fx, &["resize", &mode, "{}", "+2M"], Some("r.qcow2"));
    }
    fx.make_qcow2("small.qcow2", "cluster_size=512", "64k");
    same_result(&fx, &["resize", "{}", "64M"], Some("small.qcow2"));
}

#[test]
fn preallocated_growth_never_shows_freed_clusters_bytes() {
    // Clusters discarded without punching keep their bytes in the file.
    // Growth preallocated with falloc/full placed the new data in them and
    // read 0xaa; it must read zeros (qemu itself fails this resize).
    let fx = Fixture::new("q2_resize_stale");
    fx.make_qcow2("r.qcow2", "", "4M");
    fx.qemu_io_cmds("qcow2", "r.qcow2", &["write -P 0xaa 0 2M"]);
    fx.sh("qemu-io -c 'discard 0 2M' --image-opts \
         driver=qcow2,pass-discard-request=off,file.filename=r.qcow2");
    for mode in ["full", "falloc"] {
        let file = format!("{mode}.qcow2");
        std::fs::copy(fx.path("r.qcow2"), fx.path(&file)).expect("copy");
        let prealloc = format!("--preallocation={mode}");
        let out = fx.qimg(&["resize", &prealloc, &file, "+1M"]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        assert_clean(&fx, &file);
        let read = fx.sh(&format!("qemu-io -f qcow2 -c 'read -P 0 0 5M' {file}"));
        assert!(
            read.starts_with("read 5242880/5242880 bytes"),
            "{mode}: {read}"
        );
    }
}

#[test]
fn backing_names_over_1023_bytes_are_refused() {
    // qcow2 cannot record a longer name: qimg used to write it, and the
    // image no longer opened ("Backing file name too long").
    let fx = Fixture::new("q2_long_backing");
    fx.make_qcow2("t.qcow2", "", "4M");
    let before = std::fs::read(fx.path("t.qcow2")).expect("read");
    let long = "N".repeat(1024);
    let out = fx.same(&["rebase", "-u", "-b", &long, "-F", "qcow2", "t.qcow2"]);
    assert_eq!(out.status, 1);
    assert!(std::fs::read(fx.path("t.qcow2")).expect("read") == before);
    let create = [
        "create", "-q", "-f", "qcow2", "-u", "-b", &long, "-F", "qcow2",
    ];
    let out = fx.same(&[&create[..], &["c.qcow2", "4M"]].concat());
    assert_eq!(out.status, 1);
    assert!(!fx.path("c.qcow2").exists());
    let ok = "N".repeat(1023);
    fx.same(&["rebase", "-u", "-b", &ok, "-F", "qcow2", "t.qcow2"]);
    fx.same(&["info", "-U", "--output=json", "t.qcow2"]);
}

#[test]
fn a_failed_rebase_write_is_worded_as_qemu_img_words_it() {
    // A compressed write into an image with a data file is not supported.
    let fx = Fixture::new("q2_rebase_write_error");
    fx.make_qcow2("O.qcow2", "", "4M");
    fx.qemu_io_cmds("qcow2", "O.qcow2", &["write -P 1 0 1M"]);
    fx.make_qcow2("N.qcow2", "", "4M");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=T.data",
        "-b",
        "O.qcow2",
        "-F",
        "qcow2",
        "T.qcow2",
    ]);
    let out = fx.same(&["rebase", "-c", "-b", "N.qcow2", "-F", "qcow2", "T.qcow2"]);
    assert_eq!(out.status, 1);
}

#[test]
fn backing_names_end_at_their_first_nul_as_in_qemu() {
    // qemu reads the name and the format as C strings; qimg refused a NUL
    // inside them ("file name contained an unexpected NUL byte").
    let fx = Fixture::new("q2_backing_nul");
    fx.make_qcow2("base.qcow2", "", "4M");
    fx.qemu_io_cmds("qcow2", "base.qcow2", &["write -P 0x66 0 4M"]);
    fx.sh("cp base.qcow2 base");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "raw",
        "m.qcow2",
    ]);
    let image = std::fs::read(fx.path("m.qcow2")).expect("read");
    let name_at = u64::from_be_bytes(image[8..16].try_into().unwrap()) as usize;
    // The backing format extension (0xe2792aca), its data after 8 bytes.
    let format_at = 8 + image[..name_at]
        .windows(4)
        .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
        .expect("backing format extension");
    for (file, at) in [
        ("cut.qcow2", name_at + 4),
        ("none.qcow2", name_at),
        ("fmt.qcow2", format_at + 2),
    ] {
        let mut bytes = image.clone();
        bytes[at] = 0;
        std::fs::write(fx.path(file), bytes).expect("write");
        fx.same(&["info", file]);
        fx.same(&["info", "--output=json", "-U", file]);
        fx.same(&["map", "--output=json", file]);
    }
}

#[test]
fn rebase_unsafe_rewrites_the_backing_name() {
    let fx = Fixture::new("q2_rebase");
    fx.oracle(&["create", "-q", "-f", "raw", "a.raw", "1M"]);
    fx.oracle(&["create", "-q", "-f", "raw", "b.raw", "1M"]);
    fx.oracle(&[
        "create", "-q", "-f", "qcow2", "-b", "a.raw", "-F", "raw", "o.qcow2",
    ]);
    same_result(
        &fx,
        &["rebase", "-u", "-b", "b.raw", "-F", "raw", "{}"],
        Some("o.qcow2"),
    );
    fx.same(&["info", "ours.q"]);
    same_result(&fx, &["rebase", "-u", "-b", "", "{}"], Some("o.qcow2"));
}

// ---- measure ----

#[test]
fn measure_sizes_and_options() {
    let fx = Fixture::new("q2_measure");
    for size in ["0", "512", "1M", "1G", "1T"] {
        for opts in [
            "",
            "cluster_size=512",
            "cluster_size=2M",
            "extended_l2=on",
            "refcount_bits=64",
            "preallocation=full",
        ] {
            let mut args = vec!["measure", "-O", "qcow2", "--size", size];
            if !opts.is_empty() {
                args.extend(["-o", opts]);
            }
            fx.same(&args);
        }
    }
    // measure reads only some options, with its own checks and words.
    for opts in [
        "compat=0.10,extended_l2=on",
        "compat=v3",
        "compat=0.9,cluster_size=3000",
        "refcount_bits=8,compat=0.10",
        "preallocation=bogus,refcount_bits=3",
        "preallocation=bogus",
        "encrypt.format=bogus",
        "compression_type=bogus",
        "lazy_refcounts=on,compat=0.10",
        "data_file_raw=on",
        "backing_fmt=qcow2",
        "encrypt.format=luks",
    ] {
        fx.same(&["measure", "-O", "qcow2", "--size", "1M", "-o", opts]);
    }
    fx.same(&["measure", "-O", "qcow2", "--output=json", "--size", "100M"]);
    fx.same(&[
        "measure",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=1000",
        "--size",
        "1M",
    ]);
}

#[test]
fn measure_source_images() {
    let fx = Fixture::new("q2_measure_src");
    scattered(&fx);
    for opts in [
        "",
        "cluster_size=4k",
        "extended_l2=on",
        "refcount_bits=1",
        "preallocation=falloc",
        "cluster_size=2M",
    ] {
        let mut args = vec!["measure", "-O", "qcow2", "src.raw"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        fx.same(&args);
    }
}

#[test]
fn measure_reports_bitmaps_of_qcow2_sources() {
    // qemu-img measure prints "bitmaps size" when converting from a version 3
    // qcow2 (0 without bitmaps) into a version 3 qcow2.
    let fx = Fixture::new("q2_measure_bitmaps");
    fx.make_qcow2("v3.qcow2", "", "64M");
    fx.make_qcow2("v2.qcow2", "compat=0.10", "64M");
    for args in [
        ["measure", "-O", "qcow2", "v3.qcow2"].as_slice(),
        &["measure", "-O", "qcow2", "v2.qcow2"],
        &["measure", "-O", "qcow2", "--output=json", "v3.qcow2"],
    ] {
        fx.same(args);
    }
    fx.oracle(&["bitmap", "--add", "-g", "64k", "v3.qcow2", "b0"]);
    fx.oracle(&[
        "bitmap",
        "--add",
        "-g",
        "1M",
        "v3.qcow2",
        "a-longer-bitmap-name",
    ]);
    for opts in [
        "cluster_size=65536",
        "cluster_size=4k",
        "cluster_size=2M",
        "compat=0.10",
    ] {
        fx.same(&["measure", "-O", "qcow2", "-o", opts, "v3.qcow2"]);
    }
    fx.same(&["measure", "-O", "qcow2", "--output=json", "v3.qcow2"]);
    fx.same(&["measure", "-O", "raw", "v3.qcow2"]);
}

/// A three-layer chain made by qemu-img and qemu-io: b (4 MiB) <- m <- t (6 MiB).
fn chain(fx: &Fixture) {
    fx.make_qcow2("b.qcow2", "", "4M");
    fx.qemu_io_cmds("qcow2", "b.qcow2", &["write -P 1 0 1M"]);
    fx.oracle(&[
        "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "m.qcow2",
    ]);
    fx.qemu_io_cmds("qcow2", "m.qcow2", &["write -P 2 512k 1M"]);
    fx.oracle(&[
        "create", "-q", "-f", "qcow2", "-b", "m.qcow2", "-F", "qcow2", "t.qcow2", "6M",
    ]);
    fx.qemu_io_cmds(
        "qcow2",
        "t.qcow2",
        &["write -P 3 3M 64k", "write -z 600k 8k"],
    );
    assert_eq!(
        fx.qemu_img(&["convert", "-O", "raw", "t.qcow2", "ref.raw"])
            .status,
        0
    );
}

/// `qemu-img map --output=json` without host offsets, adjacent runs merged:
/// what a guest sees of the allocation. qemu-img's commit writes in parallel,
/// so where its clusters land in the file varies from run to run.
fn guest_map(json: &str) -> Vec<(u64, u64, String)> {
    let entries: Vec<serde_json::Value> = serde_json::from_str(json).expect("map JSON");
    let mut out: Vec<(u64, u64, String)> = Vec::new();
    for e in entries {
        let key = ["depth", "present", "zero", "data", "compressed"]
            .map(|k| e[k].to_string())
            .join(",");
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        match out.last_mut() {
            Some(last) if last.2 == key && last.0 + last.1 == start => last.1 += len,
            _ => out.push((start, len, key)),
        }
    }
    out
}

/// Runs `args` with qimg on one copy of the chain and qemu-img on another,
/// and asserts the same output and the same resulting images (map and info of
/// every layer, every layer clean) and, unless the command is an unsafe
/// rebase, that the top's guest content is unchanged.
fn same_chain_result(name: &str, args: &[&str]) {
    let fx = Fixture::new(name);
    chain(&fx);
    fx.sh("mkdir ours theirs && cp b.qcow2 m.qcow2 t.qcow2 ref.raw ours/ && cp b.qcow2 m.qcow2 t.qcow2 ref.raw theirs/");
    let run = |dir: &str, ours: bool| {
        let args: Vec<String> = args.iter().map(|a| a.replace("{}", dir)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if ours {
            fx.qimg(&args)
        } else {
            fx.qemu_img(&args)
        }
    };
    assert_eq!(run("ours", true), run("theirs", false), "{args:?}");
    for layer in ["b", "m", "t"] {
        let describe = |dir: &str| {
            let file = format!("{dir}/{layer}.qcow2");
            assert_clean(&fx, &file);
            let map = guest_map(&fx.qemu_img(&["map", "--output=json", &file]).stdout);
            // Allocated blocks ("disk size") vary with the file system.
            let info: String = fx
                .qemu_img(&["info", &file])
                .stdout
                .replace(dir, "DIR")
                .lines()
                .filter(|l| !l.trim_start().starts_with("disk size:"))
                .map(|l| format!("{l}\n"))
                .collect();
            (map, info)
        };
        assert_eq!(
            describe("ours"),
            describe("theirs"),
            "{layer} after {args:?}"
        );
    }
    if !args.contains(&"-u") {
        assert_equal(&fx, "ours/t.qcow2", "ours/ref.raw");
    }
}

#[test]
fn commit_into_the_backing_file() {
    same_chain_result("q2_chain_commit", &["commit", "{}/t.qcow2"]);
}

#[test]
fn commit_keeping_the_overlay() {
    same_chain_result(
        "q2_chain_commit_drop",
        &["commit", "-d", "-q", "{}/t.qcow2"],
    );
}

#[test]
fn commit_deeper_into_the_chain() {
    same_chain_result(
        "q2_chain_commit_base",
        &["commit", "-b", "b.qcow2", "{}/t.qcow2"],
    );
}

#[test]
fn safe_rebase_skipping_a_layer() {
    same_chain_result(
        "q2_chain_rebase",
        &["rebase", "-b", "b.qcow2", "-F", "qcow2", "{}/t.qcow2"],
    );
}

#[test]
fn safe_rebase_to_no_backing_file() {
    same_chain_result("q2_chain_rebase_flat", &["rebase", "-b", "", "{}/t.qcow2"]);
}

#[test]
fn unsafe_rebase_rewrites_the_header_only() {
    same_chain_result(
        "q2_chain_rebase_u",
        &["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "{}/t.qcow2"],
    );
}

#[test]
fn safe_rebase_onto_a_longer_backing_file() {
    // Past the old backing file's end the overlay read zeros: where the
    // new backing file has data there, qemu-img writes zero clusters, and
    // explicit data only in the 2 MiB steps that start inside the old one.
    let fx = Fixture::new("q2_rebase_longer");
    fx.make_qcow2("small.qcow2", "", "1M");
    fx.make_qcow2("big.qcow2", "", "6M");
    fx.qemu_io_cmds("qcow2", "big.qcow2", &["write -P 5 0 6M"]);
    fx.make_qcow2(
        "top.qcow2",
        "backing_file=small.qcow2,backing_fmt=qcow2",
        "6M",
    );
    fx.qemu_io_cmds("qcow2", "top.qcow2", &["write -P 6 2560k 64k"]);
    // (Output and bytes; how many blocks qemu-img's writes take varies.)
    fx.sh("cp top.qcow2 ours.qcow2 && cp top.qcow2 theirs.qcow2");
    let rebase = |f: &str| ["rebase", "-p", "-b", "big.qcow2", "-F", "qcow2", f].map(String::from);
    let ours = fx.qimg(&rebase("ours.qcow2").each_ref().map(String::as_str));
    let theirs = fx.qemu_img(&rebase("theirs.qcow2").each_ref().map(String::as_str));
    assert_eq!(ours, theirs);
    let read = |f: &str| std::fs::read(fx.path(f)).expect("read");
    assert!(
        read("ours.qcow2") == read("theirs.qcow2"),
        "the files differ"
    );
    let map = fx.oracle(&["map", "--output=json", "ours.qcow2"]).stdout;
    assert!(map.contains("\"zero\": true, \"data\": false"), "{map}");
}

#[test]
fn compressed_safe_rebase_is_clean_and_equal() {
    let fx = Fixture::new("q2_chain_rebase_c");
    chain(&fx);
    let out = fx.qimg(&["rebase", "-c", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_clean(&fx, "t.qcow2");
    assert_equal(&fx, "t.qcow2", "ref.raw");
}

/// A raw source with data, written zeros and holes: 4k of 0x01, 16k of
/// written zeros at 8k, 4k of 0x02 at 40k, 512k of 0x03 at 1M with 200k of
/// written zeros from 1100k.
fn mixed_source(fx: &Fixture) {
    fx.oracle(&["create", "-q", "-f", "raw", "s.raw", "4M"]);
    fx.qemu_io_cmds(
        "raw",
        "s.raw",
        &[
            "write -P 1 0 4k",
            "write -P 2 40k 4k",
            "write -P 0 8k 16k",
            "write -P 3 1M 512k",
            "write -P 0 1100k 200k",
        ],
    );
}

/// Converts `src` with `args` (target `{}`) by both tools, one worker for
/// qimg so the layouts are comparable, and checks the targets have the same
/// `qemu-img map` and content.
fn same_map(fx: &Fixture, args: &[&str], src: &str) {
    let run = |tool_out: &str| -> Vec<String> {
        args.iter().map(|a| a.replace("{}", tool_out)).collect()
    };
    let ours = run("ours.qcow2");
    let mut ours_args: Vec<&str> = vec!["convert", "-m", "1"];
    ours_args.extend(ours.iter().map(String::as_str));
    let theirs = run("theirs.qcow2");
    let mut theirs_args: Vec<&str> = vec!["convert"];
    theirs_args.extend(theirs.iter().map(String::as_str));
    let a = fx.qimg(&ours_args);
    let b = fx.qemu_img(&theirs_args);
    assert_eq!((a.status, &a.stderr), (b.status, &b.stderr), "{args:?}");
    let map = |f: &str| fx.oracle(&["map", "--output=json", f]).stdout;
    assert_eq!(map("ours.qcow2"), map("theirs.qcow2"), "{args:?}");
    fx.oracle(&["compare", src, "ours.qcow2"]);
}

#[test]
fn convert_with_a_backing_file_option_copies_only_the_top() {
    // -o backing_file=... is -B: clusters only the backing file holds stay
    // unallocated in the target.
    let fx = Fixture::new("conv_backing_opt");
    fx.make_qcow2("base.qcow2", "", "4M");
    fx.qemu_io_cmds("qcow2", "base.qcow2", &["write -P 1 0 1M"]);
    fx.make_overlay("top.qcow2", "base.qcow2");
    fx.qemu_io_cmds("qcow2", "top.qcow2", &["write -P 2 2M 64k"]);
    same_map(
        &fx,
        &[
            "-O",
            "qcow2",
            "-o",
            "backing_file=base.qcow2,backing_fmt=qcow2",
            "top.qcow2",
            "{}",
        ],
        "top.qcow2",
    );
    same_map(
        &fx,
        &[
            "-O",
            "qcow2",
            "-B",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
            "{}",
        ],
        "top.qcow2",
    );
}

#[test]
fn convert_compressed_without_sparse_detection_compresses_every_cluster() {
    let fx = Fixture::new("conv_c_s0");
    mixed_source(&fx);
    same_map(
        &fx,
        &["-O", "qcow2", "-c", "-S", "0", "s.raw", "{}"],
        "s.raw",
    );
    let map = fx.oracle(&["map", "--output=json", "ours.qcow2"]).stdout;
    assert!(!map.contains("\"compressed\": false"), "{map}");
    same_map(&fx, &["-O", "qcow2", "-c", "s.raw", "{}"], "s.raw");
}

#[test]
fn convert_into_an_empty_version_2_image_leaves_zeros_unallocated() {
    let fx = Fixture::new("conv_n_v2");
    mixed_source(&fx);
    for image in ["ours.qcow2", "theirs.qcow2"] {
        fx.make_qcow2(image, "compat=0.10", "4M");
    }
    same_map(&fx, &["-n", "-O", "qcow2", "s.raw", "{}"], "s.raw");
    let check = fx.oracle(&["check", "ours.qcow2"]).stdout;
    assert!(check.contains("7/64 = 10.94% allocated"), "{check}");
}

#[test]
fn sparse_size_drops_zero_runs_inside_written_clusters_as_qemu_img_does() {
    // Written zeros as long as -S make holes even where they do not fill
    // whole -S-aligned units; shorter ones between data are kept.
    let fx = Fixture::new("conv_sparse_runs");
    mixed_source(&fx);
    for sparse in ["512", "4k", "8k", "16k", "64k", "1M"] {
        same_map(
            &fx,
            &[
                "-O",
                "qcow2",
                "-o",
                "cluster_size=4k",
                "-S",
                sparse,
                "s.raw",
                "{}",
            ],
            "s.raw",
        );
        same_map(
            &fx,
            &[
                "-O",
                "qcow2",
                "-o",
                "cluster_size=512",
                "-S",
                sparse,
                "s.raw",
                "{}",
            ],
            "s.raw",
        );
        same_map(&fx, &["-O", "qcow2", "-S", sparse, "s.raw", "{}"], "s.raw");
    }
}

#[test]
fn backing_loops_are_refused_by_name() {
    let fx = Fixture::new("backing_loop");
    fx.make_qcow2("a.qcow2", "", "1M");
    fx.oracle(&[
        "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2",
    ]);
    fx.oracle(&["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"]);
    fx.make_qcow2("self.qcow2", "", "1M");
    fx.oracle(&[
        "rebase",
        "-u",
        "-b",
        "self.qcow2",
        "-F",
        "qcow2",
        "self.qcow2",
    ]);
    // qemu-img's message for info --backing-chain.
    for image in ["b.qcow2", "self.qcow2"] {
        let out = fx.same(&["info", "--backing-chain", image]);
        assert_eq!(out.status, 1);
        assert!(
            out.stderr.ends_with("creates an infinite loop.\n"),
            "{}",
            out.stderr
        );
    }
    // qemu-img 10.0.2 spins forever on these; qimg refuses at once.
    for args in [
        &["map", "b.qcow2"][..],
        &["convert", "-O", "raw", "b.qcow2", "out.raw"][..],
        &["compare", "b.qcow2", "a.qcow2"][..],
    ] {
        let out = fx.qimg(args);
        assert_ne!(out.status, 0, "{args:?}");
        assert!(
            out.stderr
                .contains("Backing file 'b.qcow2' creates an infinite loop."),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn runtime_options_at_open_are_checked_as_qemu_checks_them() {
    // QEMU's qcow2 runtime options (cache sizes, discard and overlap-check
    // settings) are accepted with qemu-img's checks and messages, and keep
    // the image's plain name; data-file.filename replaces the external data
    // file's name.
    let fx = Fixture::new("q2_runtime_opts");
    fx.make_qcow2("a.qcow2", "", "1M");
    for opt in [
        "l2-cache-entry-size=4096",
        "l2-cache-entry-size=1000",
        "l2-cache-entry-size=abc",
        "l2-cache-size=1M,cache-size=512k",
        "l2-cache-size=1M,refcount-cache-size=1M,cache-size=4M",
        "refcount-cache-size=2M,cache-size=1M",
        "l2-cache-size=-1",
        "cache-clean-interval=600",
        "cache-clean-interval=-1",
        "cache-clean-interval=abc",
        "lazy-refcounts=on,pass-discard-request=off,discard-no-unref=on",
        "lazy-refcounts=maybe",
        "overlap-check=none",
        "overlap-check=foo",
    ] {
        fx.same(&[
            "info",
            "--image-opts",
            &format!("driver=qcow2,file.filename=a.qcow2,{opt}"),
        ]);
    }
    fx.make_qcow2("df.qcow2", "data_file=dd.raw", "1M");
    fx.qemu_io_cmds("qcow2", "df.qcow2", &["write -P 4 0 64k"]);
    fx.sh("mv dd.raw moved.raw");
    let moved = "driver=qcow2,file.filename=df.qcow2,data-file.filename=moved.raw";
    fx.same(&["info", "--image-opts", moved]);
    let out = fx.qimg(&["convert", "-O", "raw", "--image-opts", moved, "out.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.qemu_io_cmds("raw", "out.raw", &["read -P 4 0 64k"]);
    fx.same(&[
        "convert",
        "-O",
        "raw",
        "--image-opts",
        "driver=qcow2,file.filename=df.qcow2,data-file.filename=nope.raw",
        "x.raw",
    ]);
}

/// `rebase -u` rewrites the header without opening the old backing file:
/// the way to repair an image whose backing file has gone.
#[test]
fn unsafe_rebase_replaces_a_missing_backing_file() {
    let fx = Fixture::new("rebase_missing");
    for name in ["ours", "theirs"] {
        fx.oracle(&["create", "-q", "-f", "qcow2", "gone.qcow2", "1M"]);
        fx.make_overlay(&format!("{name}.qcow2"), "gone.qcow2");
        std::fs::remove_file(fx.path("gone.qcow2")).unwrap();
    }
    fx.oracle(&["create", "-q", "-f", "qcow2", "new.qcow2", "1M"]);
    let args = |top: &'static str| ["rebase", "-u", "-b", "new.qcow2", "-F", "qcow2", top];
    assert_eq!(
        fx.qimg(&args("ours.qcow2")),
        fx.qemu_img(&args("theirs.qcow2"))
    );
    fx.same(&["info", "--output=json", "ours.qcow2"]);
    let info = fx.qemu_img(&["info", "ours.qcow2"]).stdout;
    assert!(info.contains("backing file: new.qcow2"), "{info}");
}

/// A snapshot written before QEMU kept instruction counts (16 bytes of
/// extra data) lists "--" in the ICOUNT column, as qemu-img prints it.
#[test]
fn snapshots_without_icount_list_dashes() {
    let fx = Fixture::new("old_snapshot");
    fx.oracle(&["create", "-q", "-f", "qcow2", "old.qcow2", "1M"]);
    fx.oracle(&["snapshot", "-c", "s1", "old.qcow2"]);
    let path = fx.path("old.qcow2");
    let mut bytes = std::fs::read(&path).unwrap();
    let table = be_at(&bytes, 64, 8) as usize;
    // The entry: 40 fixed bytes (extra data size last), extra data, id, name.
    let (id_len, name_len) = (
        be_at(&bytes, table + 12, 2) as usize,
        be_at(&bytes, table + 14, 2) as usize,
    );
    let extra = be_at(&bytes, table + 36, 4) as usize;
    assert!(extra >= 24, "qemu-img wrote {extra} bytes of extra data");
    let names = bytes[table + 40 + extra..table + 40 + extra + id_len + name_len].to_vec();
    bytes[table + 36..table + 40].copy_from_slice(&16u32.to_be_bytes());
    let at = table + 40 + 16;
    bytes[at..at + names.len()].copy_from_slice(&names);
    std::fs::write(&path, &bytes).unwrap();
    let listed = fx.same(&["snapshot", "-l", "old.qcow2"]);
    assert!(
        listed.stdout.trim_end().ends_with("--"),
        "{}",
        listed.stdout
    );
    fx.same(&["info", "old.qcow2"]);
}

/// A refcount table entry that is not cluster aligned: reading does not
/// need refcounts, so map, convert and compare go on after reporting the
/// corruption, as qemu-img's do (qimg failed the first block status).
#[test]
fn a_damaged_refcount_table_does_not_stop_reading() {
    let fx = Fixture::new("unaligned_refblock");
    fx.oracle(&["create", "-q", "-f", "qcow2", "x.qcow2", "4M"]);
    fx.qemu_io_cmds("qcow2", "x.qcow2", &["write -P 1 0 64k"]);
    let path = fx.path("x.qcow2");
    let mut bytes = std::fs::read(&path).unwrap();
    let table = be_at(&bytes, 48, 8) as usize;
    let block = be_at(&bytes, table, 8);
    bytes[table..table + 8].copy_from_slice(&(block + 512).to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    fx.same(&["map", "x.qcow2"]);
    fx.same(&["map", "--output=json", "x.qcow2"]);
    fx.same(&["compare", "x.qcow2", "x.qcow2"]);
    // A refcount table that is the L1 table: its entries name blocks past
    // 63 bits, which fail as I/O errors, as in qemu-img.
    let l1 = bytes[40..48].to_vec();
    fx.patched_copy("x.qcow2", "y.qcow2", &[(48, l1)]);
    fx.same(&["check", "y.qcow2"]);
    let out = fx.same(&["convert", "-O", "raw", "x.qcow2", "x.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
}

/// A header that names no refcount table: other commands refuse the image,
/// check opens it, counts every cluster in use as a corruption and `-r all`
/// rebuilds the refcounts, as qemu-img does (qimg refused it in check too).
#[test]
fn check_rebuilds_a_missing_refcount_table() {
    let fx = Fixture::new("no_reftable");
    fx.oracle(&["create", "-q", "-f", "qcow2", "x.qcow2", "1M"]);
    fx.qemu_io_cmds("qcow2", "x.qcow2", &["write -P 1 0 64k"]);
    fx.patched_copy("x.qcow2", "y.qcow2", &[(56, [0u8; 4])]);
    fx.same(&["info", "y.qcow2"]);
    assert_eq!(fx.same(&["check", "y.qcow2"]).status, 2);
    fx.same(&["check", "--output=json", "y.qcow2"]);
    for name in ["ours.qcow2", "theirs.qcow2"] {
        std::fs::copy(fx.path("y.qcow2"), fx.path(name)).unwrap();
    }
    let ours = fx.qimg(&["check", "-r", "all", "ours.qcow2"]);
    let theirs = fx.qemu_img(&["check", "-r", "all", "theirs.qcow2"]);
    assert_eq!(ours, theirs);
    assert_eq!(ours.status, 0, "{}", ours.stderr);
    fx.oracle(&["check", "ours.qcow2"]);
    fx.oracle(&["compare", "x.qcow2", "ours.qcow2"]);
}

/// A v2 image whose L2 table holds the zero flag, which only v3 defines:
/// qemu-img reports the corruption and fails the read where it meets the
/// entry (map before printing, convert at the entry's offset, compare after
/// comparing what comes before); qimg read the entry as unallocated.
#[test]
fn a_zero_flag_in_a_v2_image_is_corruption() {
    let fx = Fixture::new("v2_zero");
    fx.make_qcow2("x.qcow2", "compat=0.10", "1M");
    fx.qemu_io_cmds("qcow2", "x.qcow2", &["write -P 0x11 0 64k"]);
    fx.oracle(&["create", "-q", "-f", "qcow2", "empty.qcow2", "1M"]);
    let bytes = std::fs::read(fx.path("x.qcow2")).unwrap();
    let l1 = be_at(&bytes, 40, 8) as usize;
    let l2 = be_at(&bytes, l1, 8) & 0x00ff_ffff_ffff_fe00;
    // The second cluster's entry: plain zero.
    fx.patched_copy(
        "x.qcow2",
        "y.qcow2",
        &[(l2 + 8, 1u64.to_be_bytes().to_vec())],
    );
    let map = fx.same(&["map", "--output=json", "y.qcow2"]);
    assert!(
        map.stderr
            .contains("Zero cluster entry found in pre-v3 image"),
        "{}",
        map.stderr
    );
    fx.same(&["map", "y.qcow2"]);
    let convert = fx.same(&["convert", "-O", "raw", "y.qcow2", "y.raw"]);
    assert_eq!(convert.status, 1, "{}", convert.stderr);
    // Different in the first cluster: the mismatch comes first. (qimg
    // plans ahead, so its stderr may carry the corruption report too.)
    for (other, status) in [("empty.qcow2", 1), ("y.qcow2", 3)] {
        let args = ["compare", "y.qcow2", other];
        let (ours, theirs) = (fx.qimg(&args), fx.qemu_img(&args));
        assert_eq!((&ours.stdout, ours.status), (&theirs.stdout, status));
        assert!(
            theirs.stderr.lines().all(|l| ours.stderr.contains(l)),
            "{}",
            ours.stderr
        );
    }
}

/// check opens the backing chain as qemu-img does (a missing backing file
/// fails it); `"backing": null` opens an image without its backing file,
/// and a `backing` object names it.
#[test]
fn backing_files_as_check_and_json_names_open_them() {
    let fx = Fixture::new("check_backing");
    fx.oracle(&["create", "-q", "-f", "qcow2", "base.qcow2", "1M"]);
    fx.qemu_io_cmds("qcow2", "base.qcow2", &["write -P 5 0 64k"]);
    fx.make_overlay("top.qcow2", "base.qcow2");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "gone.qcow2",
        "-F",
        "qcow2",
        "-u",
        "orphan.qcow2",
        "1M",
    ]);
    fx.same(&["check", "orphan.qcow2"]);
    let top = r#""driver":"qcow2","file":{"driver":"file","filename":"top.qcow2"}"#;
    let none = format!("json:{{{top},\"backing\":null}}");
    let named = format!(
        r#"json:{{{top},"backing":{{"driver":"qcow2","file":{{"driver":"file","filename":"base.qcow2"}}}}}}"#
    );
    let node = format!(r#"json:{{{top},"backing":"base.qcow2"}}"#);
    for args in [
        &["map", none.as_str()][..],
        &["info", &none],
        &["compare", &none, "base.qcow2"],
        &["map", &named],
        &["info", &named],
        &["check", &named],
        &["map", &node],
        &["info", &node],
    ] {
        fx.same(args);
    }
}

/// An L1 entry naming the L1 table's own cluster as its L2 table: the
/// COPIED repair would write the L1 table where it is also an active L2
/// table, that is guest data. qemu-img's overlap check refuses the write
/// and fails the check; so does qimg, and the guest data stays as it was
/// (qimg's repair rewrote guest byte 0 before).
#[test]
fn a_repair_that_would_rewrite_guest_data_is_refused() {
    let fx = Fixture::new("l1_self");
    fx.oracle(&["create", "-q", "-f", "qcow2", "base.qcow2", "8M"]);
    fx.qemu_io_cmds("qcow2", "base.qcow2", &["write -P 0xaa 0 64k"]);
    let path = fx.path("base.qcow2");
    let mut bytes = std::fs::read(&path).unwrap();
    let l1 = be_at(&bytes, 40, 8);
    let at = l1 as usize;
    bytes[at..at + 8].copy_from_slice(&(l1 | 1 << 63).to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    for name in ["ours.qcow2", "theirs.qcow2", "before.qcow2"] {
        std::fs::copy(&path, fx.path(name)).unwrap();
    }
    let ours = fx.qimg(&["check", "-r", "all", "ours.qcow2"]);
    let theirs = fx.qemu_img(&["check", "-r", "all", "theirs.qcow2"]);
    assert_eq!((ours.status, &ours.stdout), (theirs.status, &theirs.stdout));
    assert!(
        ours.stderr.contains("Preventing invalid write on metadata"),
        "{}",
        ours.stderr
    );
    fx.oracle(&["compare", "-U", "before.qcow2", "ours.qcow2"]);
}

/// A commit whose top has smaller clusters than the image it commits into,
/// which reads from a backing file of its own: the rest of each cluster
/// written comes from that backing file, as in qemu-img (qimg opened the
/// base without its backing file and wrote zeros there, in the base and so
/// in the emptied top).
#[test]
fn commit_fills_partial_clusters_from_the_bases_backing_file() {
    let fx = Fixture::new("commit_partial");
    fx.oracle(&["create", "-q", "-f", "raw", "base.raw", "8M"]);
    fx.qemu_io("base.raw", "write -P 0xa0 0 8M");
    for (name, backing, format, opts) in [
        ("mid.qcow2", "base.raw", "raw", "cluster_size=64k"),
        ("top.qcow2", "mid.qcow2", "qcow2", "cluster_size=4k"),
    ] {
        fx.oracle(&[
            "create", "-q", "-f", "qcow2", "-o", opts, "-b", backing, "-F", format, name,
        ]);
    }
    fx.qemu_io_cmds("qcow2", "top.qcow2", &["write -P 0x22 3M 4k"]);
    let out = fx.qimg(&["commit", "-q", "top.qcow2"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    for image in ["mid.qcow2", "top.qcow2"] {
        fx.qemu_io_cmds(
            "qcow2",
            image,
            &[
                "read -P 0xa0 0 3M",
                "read -P 0x22 3M 4k",
                "read -P 0xa0 3076k 5116k",
            ],
        );
    }
    fx.oracle(&["check", "-q", "mid.qcow2"]);
}

/// Emptying the top after a commit leaves its enabled bitmaps as they were,
/// as qemu-img's does (qimg marked them dirty over the whole disk): the
/// dirty ranges qemu-nbd exports equal those after qemu-img's commit.
#[test]
fn commit_leaves_the_tops_bitmaps_alone() {
    let fx = Fixture::new("commit_bitmaps");
    fx.oracle(&["create", "-q", "-f", "qcow2", "base.qcow2", "4M"]);
    fx.make_overlay("top.qcow2", "base.qcow2");
    fx.oracle(&["bitmap", "--add", "top.qcow2", "b0"]);
    fx.qemu_io_cmds("qcow2", "top.qcow2", &["write -P 1 1M 64k"]);
    let dirty = |dir: &str| {
        fx.sh(&format!(
            "cd {dir} && qemu-nbd -r -B b0 --fork --pid-file=$PWD/nbd.pid -k $PWD/nbd.sock \
             -f qcow2 top.qcow2 && qemu-img map --output=json --image-opts \
             driver=nbd,server.type=unix,server.path=$PWD/nbd.sock,x-dirty-bitmap=qemu:dirty-bitmap:b0; \
             status=$?; kill $(cat nbd.pid); exit $status"
        ))
    };
    fx.sh("mkdir ours theirs && cp base.qcow2 top.qcow2 ours && cp base.qcow2 top.qcow2 theirs");
    fx.sh("cd theirs && qemu-img commit -q top.qcow2");
    let out = fx.qimg(&["commit", "-q", "ours/top.qcow2"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let theirs = dirty("theirs");
    assert!(
        theirs.contains("\"start\": 1048576, \"length\": 65536"),
        "{theirs}"
    );
    assert_eq!(dirty("ours"), theirs);
}

/// `snapshot -U`: creating, applying or deleting is refused as qemu-img
/// refuses it (qimg changed the image). Listing beside a writer is in
/// locking.rs.
#[test]
fn snapshot_force_share_lists_only() {
    let fx = Fixture::new("snapshot_force_share");
    fx.oracle(&["create", "-q", "-f", "qcow2", "x.qcow2", "1M"]);
    fx.oracle(&["snapshot", "-c", "s1", "x.qcow2"]);
    for action in ["-c", "-a", "-d"] {
        let out = fx.same(&["snapshot", "-U", action, "s1", "x.qcow2"]);
        assert_eq!(out.status, 1, "{out:?}");
    }
    fx.same(&["snapshot", "-U", "-c", "s1", "-f", "bogus", "x.qcow2"]);
    let listed = fx.same(&["snapshot", "-U", "-l", "x.qcow2"]);
    assert!(listed.stdout.contains("s1"), "{listed:?}");
}

/// amend upgrading a v2 image with snapshots and resizing it in one go:
/// the resize sees the upgraded version, as in qemu-img (qimg refused it
/// after the upgrade had been written).
#[test]
fn amend_upgrades_then_resizes_an_image_with_snapshots() {
    let fx = Fixture::new("amend_v2_snapshots");
    fx.make_qcow2("x.qcow2", "compat=0.10", "1M");
    fx.oracle(&["snapshot", "-c", "s1", "x.qcow2"]);
    let out = fx.qimg(&["amend", "-o", "compat=1.1,size=10M", "x.qcow2"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let info = fx.oracle(&["info", "--output=json", "x.qcow2"]).stdout;
    assert!(info.contains("\"virtual-size\": 10485760"), "{info}");
    assert!(info.contains("\"compat\": \"1.1\""), "{info}");
    fx.oracle(&["check", "-q", "x.qcow2"]);
}

/// rebase checks the new backing format's name right after opening the
/// image, with -u too, as qemu-img does (qimg reported it when opening the
/// new backing file, and not at all with -u).
#[test]
fn rebase_refuses_an_unknown_backing_format() {
    let fx = Fixture::new("rebase_bad_format");
    fx.oracle(&["create", "-q", "-f", "qcow2", "x.qcow2", "1M"]);
    for args in [
        &["rebase", "-F", "bogus", "-b", "y", "x.qcow2"][..],
        &["rebase", "-u", "-F", "bogus", "-b", "y", "x.qcow2"],
        &["rebase", "-F", "bogus", "-b", "", "x.qcow2"],
    ] {
        let out = fx.same(args);
        assert_eq!(out.status, 1, "{args:?}: {out:?}");
    }
}

/// The big-endian number of `len` bytes (at most 8) at `at` in `bytes`.
fn be_at(bytes: &[u8], at: usize, len: usize) -> u64 {
    bytes[at..at + len]
        .iter()
        .fold(0, |n, &b| n << 8 | u64::from(b))
}

/// qimg's `convert -n -f raw -O qcow2 pat.raw IMAGE` (the pattern written
/// by `Fixture::write_pattern`).
fn convert_pattern_into(fx: &Fixture, image: &str) -> qimg_tests::Outcome {
    fx.qimg(&[
        "convert", "-n", "-f", "raw", "-O", "qcow2", "pat.raw", image,
    ])
}

/// Asserts that `image` reads as `pat.raw` and that qemu-img's check finds
/// no error in it (leaks allowed).
fn reads_as_pattern_without_errors(fx: &Fixture, image: &str) {
    fx.oracle(&["compare", "-f", "raw", "-F", "qcow2", "pat.raw", image]);
    let check = fx.qemu_img(&["check", image]);
    assert!(!check.stdout.contains("ERROR"), "{}", check.stdout);
}

/// An L2 entry that says it owns its cluster (COPIED) where the refcount
/// block counts nothing (a damaged image): a write in place there must not
/// leave the cluster free, or the next allocation hands it to another
/// guest cluster and one of the two writes is lost (qemu-img 10.0.2 loses
/// it here). qimg gives the cluster the refcount its entry claims; the copy
/// reads back and `qemu-img check` finds at most the leak the damage left.
#[test]
fn a_copied_cluster_counted_free_is_not_allocated_twice() {
    let fx = Fixture::new("copied_free");
    let (mut bytes, l2) = two_data_clusters(&fx);
    // Guest 1 MiB (L2 index 16) -> the cluster at the end of the file.
    let end = bytes.len() as u64;
    bytes[l2 + 16 * 8..l2 + 17 * 8].copy_from_slice(&(end | 1 << 63).to_be_bytes());
    std::fs::write(fx.path("img.qcow2"), &bytes).unwrap();
    let runs = [
        (0, 0xa5, 65536),
        (1 << 20, 0x3c, 65536),
        (2 << 20, 0x5a, 65536),
    ];
    fx.write_pattern("pat.raw", 4 << 20, &runs);
    let out = convert_pattern_into(&fx, "img.qcow2");
    assert_eq!(out.status, 0, "{}", out.stderr);
    reads_as_pattern_without_errors(&fx, "img.qcow2");
}

/// `img.qcow2`, made by qemu-img: 4 MiB with data at 0 and 1 MiB. Returns
/// its bytes and the offset of its (only) L2 table.
fn two_data_clusters(fx: &Fixture) -> (Vec<u8>, usize) {
    fx.oracle(&["create", "-q", "-f", "qcow2", "img.qcow2", "4M"]);
    fx.qemu_io_cmds(
        "qcow2",
        "img.qcow2",
        &["write -P 0x11 0 64k", "write -P 0x22 1M 64k"],
    );
    let bytes = std::fs::read(fx.path("img.qcow2")).unwrap();
    let l1 = be_at(&bytes, 40, 8) as usize;
    let l2 = (be_at(&bytes, l1, 8) & 0x00ff_ffff_ffff_fe00) as usize;
    (bytes, l2)
}

/// [`two_data_clusters`] with the refcount of its first data cluster set
/// to 0, as a damaged refcount block has it, and `before.raw`, what it
/// reads.
fn uncounted_first_cluster(fx: &Fixture) {
    let (mut bytes, l2) = two_data_clusters(fx);
    let data = be_at(&bytes, l2, 8) & 0x00ff_ffff_ffff_fe00;
    let reftable = be_at(&bytes, 48, 8) as usize;
    let refblock = be_at(&bytes, reftable, 8) as usize;
    let at = refblock + 2 * (data >> 16) as usize;
    bytes[at..at + 2].copy_from_slice(&[0, 0]);
    std::fs::write(fx.path("img.qcow2"), &bytes).unwrap();
    fx.oracle(&["convert", "-O", "raw", "img.qcow2", "before.raw"]);
}

/// A guest cluster whose refcount a damaged refcount block counts as 0:
/// `snapshot -c` must not hand it out for its new tables. qemu-img 10.0.2
/// writes its L1 copy there and the guest's first cluster reads the
/// table; qimg wrote its refcount block copy there. Now the cluster gets
/// the refcount its entry claims first: the data stays, qemu-img's check
/// is clean, and the snapshot keeps the old data after the guest writes.
#[test]
fn a_snapshot_never_writes_its_tables_over_a_cluster_counted_free() {
    let fx = Fixture::new("snapshot_uncounted");
    uncounted_first_cluster(&fx);
    let out = fx.qimg(&["snapshot", "-c", "s1", "img.qcow2"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["compare", "-F", "raw", "img.qcow2", "before.raw"]);
    let check = fx.qemu_img(&["check", "img.qcow2"]);
    assert_eq!(check.status, 0, "{}{}", check.stdout, check.stderr);
    fx.qemu_io_cmds("qcow2", "img.qcow2", &["write -P 0x99 0 4k"]);
    fx.oracle(&["snapshot", "-a", "s1", "img.qcow2"]);
    fx.oracle(&["compare", "-F", "raw", "img.qcow2", "before.raw"]);
}

/// The same damaged image under the commands that allocate tables into a
/// free cluster inside the file: a larger L1 table (`resize`), a bitmap's
/// table and directory (`bitmap --add`), new refcount structures
/// (`amend -o refcount_bits`). qemu-img 10.0.2 puts each over the guest's
/// first cluster; qimg did too. Now the clusters the tables reach are
/// counted before the first such allocation.
#[test]
fn tables_never_go_over_a_data_cluster_counted_free() {
    let fx = Fixture::new("alloc_uncounted");
    uncounted_first_cluster(&fx);
    fx.sh("mv img.qcow2 damaged.qcow2");
    for args in [
        &["resize", "img.qcow2", "+10G"][..],
        &["bitmap", "--add", "img.qcow2", "b1"],
        &["amend", "-o", "refcount_bits=8", "img.qcow2"],
    ] {
        fx.sh("cp damaged.qcow2 img.qcow2 && truncate -s 4M before.raw");
        let out = fx.qimg(args);
        assert_eq!(out.status, 0, "{args:?}: {}", out.stderr);
        let size = fx.oracle(&["info", "--output=json", "img.qcow2"]).stdout;
        if size.contains("\"virtual-size\": 10741612544") {
            fx.sh("truncate -s 10741612544 before.raw");
        }
        fx.oracle(&["compare", "-F", "raw", "img.qcow2", "before.raw"]);
        let check = fx.qemu_img(&["check", "img.qcow2"]);
        assert_eq!(
            check.status, 0,
            "{args:?}: {}{}",
            check.stdout, check.stderr
        );
    }
}

/// A qcow2 cut short so that its L1 table lies past the end: the refcount
/// rebuild of `check -r all` counts no L1 table there and would put the
/// new refcount structures where the header says it is. qemu-img's overlap
/// check stops the rebuild; so does qimg's, and both leave the same file
/// (qimg's rebuild wrote the table there, and the guest's first cluster
/// then read zeros instead of the backing file's bytes).
#[test]
fn a_refcount_rebuild_never_writes_over_the_l1_table() {
    let fx = Fixture::new("rebuild_l1");
    fx.oracle(&["create", "-q", "-f", "qcow2", "base.qcow2", "4M"]);
    fx.qemu_io_cmds("qcow2", "base.qcow2", &["write -P 0x66 0 4M"]);
    fx.make_overlay("top.qcow2", "base.qcow2");
    fx.qemu_io_cmds(
        "qcow2",
        "top.qcow2",
        &["write -P 0x11 0 64k", "write -P 0x22 1M 128k"],
    );
    fx.sh("truncate -s 65540 top.qcow2 && cp top.qcow2 ours.qcow2 && cp top.qcow2 theirs.qcow2");
    let ours = fx.qimg(&["check", "-r", "all", "ours.qcow2"]);
    let theirs = fx.qemu_img(&["check", "-r", "all", "theirs.qcow2"]);
    assert_eq!((ours.status, &ours.stdout), (theirs.status, &theirs.stdout));
    assert!(
        ours.stderr
            .contains("ERROR writing reftable: Input/output error"),
        "{}",
        ours.stderr
    );
    let same = std::fs::read(fx.path("ours.qcow2")).unwrap()
        == std::fs::read(fx.path("theirs.qcow2")).unwrap();
    assert!(same, "qimg's file differs from qemu-img's");
}

/// A refcount table moved past the end of the file counts every cluster
/// free, the header's too. qemu-img's allocator hands out cluster 0 and
/// its overlap check stops `snapshot -c` before anything is written; qimg
/// stops there with the same words (it wrote the snapshot table over the
/// active L1 table before, and the guest data stopped reading back).
#[test]
fn allocation_stops_when_the_header_s_cluster_counts_free() {
    let fx = Fixture::new("reftable_away");
    fx.oracle(&["create", "-q", "-f", "qcow2", "m.qcow2", "4M"]);
    fx.qemu_io_cmds(
        "qcow2",
        "m.qcow2",
        &["write -P 0x11 0 64k", "write -P 0x22 1M 128k"],
    );
    fx.oracle(&["convert", "-O", "raw", "m.qcow2", "before.raw"]);
    // refcount_table_offset (offset 48) -> 1 TiB.
    fx.patched_copy("m.qcow2", "ours.qcow2", &[(48, (1u64 << 40).to_be_bytes())]);
    fx.sh("cp ours.qcow2 theirs.qcow2 && cp ours.qcow2 again.qcow2");
    let ours = fx.qimg(&["snapshot", "-c", "s1", "ours.qcow2"]);
    let theirs = fx.qemu_img(&["snapshot", "-c", "s1", "theirs.qcow2"]);
    assert_eq!((ours.status, &ours.stderr), (theirs.status, &theirs.stderr));
    fx.oracle(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        "before.raw",
        "ours.qcow2",
    ]);
    fx.write_pattern("pat.raw", 4 << 20, &[(0, 0x5a, 65536)]);
    let out = convert_pattern_into(&fx, "again.qcow2");
    assert_eq!(out.status, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("overlaps with qcow2_header"),
        "{}",
        out.stderr
    );
}

/// The offset of bitmap `n`'s table in a qcow2 file, and of its directory,
/// from the bitmaps header extension.
fn bitmap_table_and_directory(bytes: &[u8], n: usize) -> (u64, u64) {
    let mut at = be_at(bytes, 100, 4) as usize;
    let directory = loop {
        let (kind, len) = (be_at(bytes, at, 4), be_at(bytes, at + 4, 4) as usize);
        assert_ne!(kind, 0, "no bitmaps extension");
        if kind == 0x2385_2875 {
            break be_at(bytes, at + 24, 8) as usize;
        }
        at += 8 + len.next_multiple_of(8);
    };
    let mut entry = directory;
    for _ in 0..n {
        let (name, extra) = (be_at(bytes, entry + 18, 2), be_at(bytes, entry + 20, 4));
        entry += (24 + extra + name).next_multiple_of(8) as usize;
    }
    (be_at(bytes, entry, 8), directory as u64)
}

/// A disabled bitmap whose table names the bitmap directory's cluster (a
/// damaged image): every write command stores the bitmaps again on close
/// and frees the old directory, then the old tables. The second drop of
/// that cluster finds it free; qemu reports it (`qcow2_free_clusters
/// failed`) and goes on, and so does qimg, leaving the same clean image
/// (qimg marked the image corrupt and then stored the bitmaps a second
/// time without their refcounts).
#[test]
fn a_cluster_two_bitmap_structures_name_is_freed_once() {
    let fx = Fixture::new("bitmap_twice");
    fx.oracle(&["create", "-q", "-f", "qcow2", "m.qcow2", "4M"]);
    fx.oracle(&["bitmap", "--add", "m.qcow2", "b0"]);
    fx.oracle(&["bitmap", "--add", "-g", "512k", "m.qcow2", "b1"]);
    fx.qemu_io_cmds(
        "qcow2",
        "m.qcow2",
        &["write -P 0x11 0 64k", "write -P 0x22 1M 128k"],
    );
    fx.oracle(&["bitmap", "--add", "--disable", "m.qcow2", "b2"]);
    let bytes = std::fs::read(fx.path("m.qcow2")).unwrap();
    let (table, directory) = bitmap_table_and_directory(&bytes, 2);
    fx.patched_copy("m.qcow2", "ours.qcow2", &[(table, directory.to_be_bytes())]);
    fx.sh("cp ours.qcow2 theirs.qcow2");
    let ours = fx.qimg(&["resize", "-f", "qcow2", "ours.qcow2", "+1M"]);
    let theirs = fx.qemu_img(&["resize", "-f", "qcow2", "theirs.qcow2", "+1M"]);
    assert_eq!((ours.status, &ours.stderr), (theirs.status, &theirs.stderr));
    assert!(
        ours.stderr.contains("qcow2_free_clusters failed"),
        "{}",
        ours.stderr
    );
    assert_clean(&fx, "ours.qcow2");
    assert!(!fx
        .qemu_img(&["info", "ours.qcow2"])
        .stdout
        .contains("corrupt: true"));
}

/// A disk of 0 bytes (a header size under one sector) has no room for a
/// bitmap table: qemu-img's `bitmap --add` loses the bitmap on close and
/// fails; qimg fails before writing anything (it stored a bitmap with an
/// empty table, and neither tool opened the image again).
#[test]
fn no_bitmap_is_added_to_a_disk_of_no_bytes() {
    let fx = Fixture::new("bitmap_no_bytes");
    fx.oracle(&["create", "-q", "-f", "qcow2", "m.qcow2", "4M"]);
    fx.patched_copy("m.qcow2", "ours.qcow2", &[(24, 1u64.to_be_bytes())]);
    fx.sh("cp ours.qcow2 theirs.qcow2 && cp ours.qcow2 before.qcow2");
    let ours = fx.qimg(&["bitmap", "--add", "ours.qcow2", "b0"]);
    let theirs = fx.qemu_img(&["bitmap", "--add", "theirs.qcow2", "b0"]);
    assert_eq!(ours.status, theirs.status);
    assert!(ours.stderr.contains("No memory"), "{}", ours.stderr);
    let same = std::fs::read(fx.path("ours.qcow2")).unwrap()
        == std::fs::read(fx.path("before.qcow2")).unwrap();
    assert!(same, "qimg changed the image");
    fx.oracle(&["info", "ours.qcow2"]);
}

/// The COPIED entry at a cluster counted free, again, where `convert -n`
/// zeroes it (guest 1M+64K holds no data in the source) while a later
/// guest cluster allocates: the zeroing is done in its turn, before the
/// later allocation, and counts the cluster before giving it up. qimg's
/// later cluster got that cluster and then lost its refcount to the
/// zeroing (`refcount=0 reference=1`), so the next write elsewhere landed
/// on its data; qemu-img's copy checks clean.
#[test]
fn a_zeroed_copied_cluster_counted_free_frees_nothing_else() {
    let fx = Fixture::new("copied_free_zeroed");
    fx.oracle(&["create", "-q", "-f", "qcow2", "img.qcow2", "4M"]);
    fx.qemu_io_cmds(
        "qcow2",
        "img.qcow2",
        &[
            "write -P 0x11 0 64k",
            "write -P 0x22 1M 128k",
            "write -P 0x55 2359296 1k",
            "write -z 2M 64k",
        ],
    );
    let path = fx.path("img.qcow2");
    let mut bytes = std::fs::read(&path).unwrap();
    let l1 = be_at(&bytes, 40, 8) as usize;
    let l2 = (be_at(&bytes, l1, 8) & 0x00ff_ffff_ffff_fe00) as usize;
    // Guest 1M+64K (L2 index 17) -> the cluster at the end of the file.
    let end = bytes.len() as u64;
    bytes[l2 + 17 * 8..l2 + 18 * 8].copy_from_slice(&(end | 1 << 63).to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let runs = [
        (0, 0xa5, 65536),
        (1049088, 0x3c, 512),
        (2 << 20, 0x5a, 65536),
    ];
    fx.write_pattern("pat.raw", 4 << 20, &runs);
    let out = convert_pattern_into(&fx, "img.qcow2");
    assert_eq!(out.status, 0, "{}", out.stderr);
    reads_as_pattern_without_errors(&fx, "img.qcow2");
    fx.qemu_io_cmds("qcow2", "img.qcow2", &["write -P 0x99 1536k 128k"]);
    fx.qemu_io_cmds("qcow2", "img.qcow2", &["read -P 0x5a 2M 64k"]);
}

/// An L1 table offset of 0 names the header: the L1 table is never written
/// there. qemu-img's `convert -n` into such an image fails on its overlap
/// check and the image stays a qcow2; so does qimg's (it wrote the L1
/// table over the header, and the file then probed as raw).
#[test]
fn the_l1_table_is_never_written_over_the_header() {
    let fx = Fixture::new("l1_at_header");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.qemu_io("src.raw", "write -P 0x11 0 64k");
    fx.oracle(&[
        "convert", "-c", "-f", "raw", "-O", "qcow2", "src.raw", "m.qcow2",
    ]);
    fx.patched_copy("m.qcow2", "bad.qcow2", &[(40, 0u64.to_be_bytes())]);
    fx.write_pattern(
        "pat.raw",
        4 << 20,
        &[(0, 0xa5, 65536), (2 << 20, 0x5a, 65536)],
    );
    let out = convert_pattern_into(&fx, "bad.qcow2");
    assert_eq!(out.status, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("overlaps with qcow2_header"),
        "{}",
        out.stderr
    );
    let info = fx.qemu_img(&["info", "bad.qcow2"]);
    assert!(
        info.stdout.contains("file format: qcow2"),
        "{}",
        info.stdout
    );
}

/// A header whose cluster size was halved (cluster_bits 16 -> 15, a
/// damaged image with bitmaps): its refcounts count a loaded bitmap's data
/// cluster free. `snapshot -c` put its new L1 table there, and storing the
/// bitmaps on close freed that cluster with the old bitmap data: the disk
/// read as zeros. A cluster a loaded bitmap (or any metadata) names is
/// never handed out; the guest data stays what qemu-img reads, as its
/// `snapshot -c` keeps it.
#[test]
fn no_allocation_lands_on_a_loaded_bitmap_s_clusters() {
    let fx = Fixture::new("bitmap_held");
    fx.oracle(&["create", "-q", "-f", "qcow2", "m.qcow2", "4M"]);
    fx.oracle(&["bitmap", "--add", "m.qcow2", "b0"]);
    fx.oracle(&["bitmap", "--add", "-g", "512k", "m.qcow2", "b1"]);
    fx.write_scattered("qcow2", "m.qcow2");
    fx.oracle(&["bitmap", "--add", "--disable", "m.qcow2", "b2"]);
    fx.patched_copy("m.qcow2", "bad.qcow2", &[(23, [15u8])]);
    fx.oracle(&["convert", "-O", "raw", "bad.qcow2", "before.raw"]);
    let out = fx.qimg(&["snapshot", "-c", "s1", "bad.qcow2"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        "before.raw",
        "bad.qcow2",
    ]);
}

/// Shrinking an image with an external data file shrinks the data file,
/// as qemu-img does, raw or not (qimg kept a data file that was not raw at
/// its old length).
#[test]
fn shrinking_shrinks_the_data_file() {
    let fx = Fixture::new("shrink_data_file");
    for (raw, size) in [("off", "1M"), ("off", "1500k"), ("on", "1M")] {
        for who in ["ours", "theirs"] {
            let (image, data) = (format!("{who}.qcow2"), format!("{who}.data"));
            let _ = std::fs::remove_file(fx.path(&data));
            let opts = format!("data_file={data},data_file_raw={raw}");
            fx.oracle(&["create", "-q", "-f", "qcow2", "-o", &opts, &image, "4M"]);
            fx.qemu_io_cmds("qcow2", &image, &["write -P 1 0 1M", "write -P 2 3M 64k"]);
        }
        let ours = fx.qimg(&["resize", "--shrink", "ours.qcow2", size]);
        assert_eq!(ours.status, 0, "{}", ours.stderr);
        fx.oracle(&["resize", "--shrink", "theirs.qcow2", size]);
        let len = |f: &str| std::fs::metadata(fx.path(f)).unwrap().len();
        assert_eq!(len("ours.data"), len("theirs.data"), "{raw} {size}");
        fx.oracle(&["compare", "ours.qcow2", "theirs.qcow2"]);
    }
}

/// Metadata preallocation leaves the data clusters holes, as qemu-img
/// leaves them: a resize that grew the L1 table first (an append that
/// started allocating the file's blocks ahead of its end) made qimg's file
/// take 32 MiB of disk where qemu-img's takes a few hundred KiB.
#[test]
fn metadata_preallocation_keeps_the_file_sparse() {
    use std::os::unix::fs::MetadataExt;
    let fx = Fixture::new("prealloc_sparse");
    for name in ["ours.qcow2", "theirs.qcow2"] {
        fx.oracle(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4k",
            name,
            "64k",
        ]);
        fx.qemu_io_cmds("qcow2", name, &["write -P 1 0 64k"]);
    }
    let args = ["resize", "-q", "--preallocation=metadata"];
    let out = fx.qimg(&[&args[..], &["ours.qcow2", "100M"]].concat());
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&[&args[..], &["theirs.qcow2", "100M"]].concat());
    let used = |f: &str| std::fs::metadata(fx.path(f)).unwrap().blocks() * 512;
    assert!(
        used("ours.qcow2") <= used("theirs.qcow2") + (64 << 10),
        "qimg's file takes {} bytes, qemu-img's {}",
        used("ours.qcow2"),
        used("theirs.qcow2")
    );
    fx.oracle(&["compare", "ours.qcow2", "theirs.qcow2"]);
}

/// Metadata preallocation of a disk whose end falls inside a cluster: the
/// (sub)cluster holding the end gets zeros past the end's sector, and the
/// file ends with that (sub)cluster, as qemu-img writes them. qimg's files
/// were byte-identical but sparse there (so `map` said zero where qemu-img
/// says data), and a size ending in a subcluster made a longer file.
#[test]
fn metadata_preallocation_ends_the_file_as_qemu_img() {
    let fx = Fixture::new("prealloc_tail");
    for opts in [
        "preallocation=metadata",
        "preallocation=metadata,extended_l2=on",
    ] {
        for size in ["1000", "10752", "100000"] {
            for name in ["ours.qcow2", "theirs.qcow2"] {
                let _ = std::fs::remove_file(fx.path(name));
            }
            let create = ["create", "-q", "-f", "qcow2", "-o", opts];
            let ours = fx.qimg(&[&create[..], &["ours.qcow2", size]].concat());
            assert_eq!(ours.status, 0, "{}", ours.stderr);
            fx.oracle(&[&create[..], &["theirs.qcow2", size]].concat());
            let bytes = |f: &str| std::fs::read(fx.path(f)).unwrap();
            assert!(
                bytes("ours.qcow2") == bytes("theirs.qcow2"),
                "{opts} {size}"
            );
            let map = |f: &str| fx.qemu_img(&["map", "--output=json", f]).stdout;
            assert_eq!(map("ours.qcow2"), map("theirs.qcow2"), "{opts} {size}");
        }
    }
}

/// A refcount width damaged in the header (refcount_order 4 -> 5) makes
/// the refcounts read as nonsense, most clusters free. qemu-img's
/// allocator hands out a cluster an L2 table holds and its overlap check
/// stops; qimg must never do worse than fail: a write that exits 0 reads
/// back (qimg once skipped the metadata clusters, handed out a live data
/// cluster instead, and exited 0 with the data of another guest cluster).
#[test]
fn misread_refcounts_never_give_a_successful_wrong_copy() {
    let fx = Fixture::new("refcount_order_damaged");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        "m.qcow2",
        "4M",
    ]);
    fx.write_scattered("qcow2", "m.qcow2");
    fx.patched_copy("m.qcow2", "bad.qcow2", &[(96, 5u32.to_be_bytes())]);
    fx.write_over_scattered();
    let out = convert_pattern_into(&fx, "bad.qcow2");
    if out.status == 0 {
        fx.oracle(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            "pat.raw",
            "bad.qcow2",
        ]);
    } else {
        assert!(
            out.stderr.contains("Preventing invalid write on metadata"),
            "{}",
            out.stderr
        );
    }
}

/// A 1 PiB disk with 8 MiB of data: its holes cost a copy, a compare and a
/// check no memory of their own. Each holds about what qemu-img's check
/// does, two 16 MiB L1 tables and a process (qimg's plan of zero runs used
/// to grow with them: 135 MB for the convert, 107 MB for the compare, and
/// the check read its L1 table twice, 56 MB).
#[test]
fn holes_of_a_petabyte_disk_cost_no_memory() {
    let fx = Fixture::new("qcow2_petabyte");
    fx.oracle(&["create", "-q", "-f", "qcow2", "big.qcow2", "1P"]);
    fx.qemu_io_cmds(
        "qcow2",
        "big.qcow2",
        &["write -P 1 0 4M", "write -P 3 1000T 4M"],
    );
    let reference = qimg_tests::peak_kib(fx.spawn_qemu_img(&["check", "big.qcow2"]));
    for args in [
        &["convert", "-O", "qcow2", "big.qcow2", "copy.qcow2"][..],
        &["compare", "big.qcow2", "copy.qcow2"],
        &["check", "copy.qcow2"],
    ] {
        let peak = qimg_tests::peak_kib(fx.spawn_qimg(args));
        assert!(
            peak < reference + (12 << 10),
            "{args:?}: {peak} KiB, qemu-img check {reference} KiB"
        );
    }
}
