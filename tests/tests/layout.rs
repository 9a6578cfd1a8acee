//! Without `-W`, qemu-img writes a convert target in guest order, and
//! `bench -w` submits its requests in order: an allocating format's file is
//! laid out sequentially. qimg copies with several workers but reserves
//! target space in guest order, so its targets are the same files (qcow2,
//! byte for byte) or have the same `qemu-img map` (vmdk, whose descriptor
//! holds a random CID). `-W` lets the layout differ. (Which zeroed ranges
//! the file system keeps as holes varies from run to run, for qemu-img as
//! for qimg: files are compared by content, not by their holes.)

use qimg_tests::Fixture;

/// A 24 MiB raw source with data in many copy units (2 MiB each), partly
/// zero runs inside data, and holes: more items than workers, so workers
/// finish out of order.
fn source(fx: &Fixture) {
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "24M"]);
    fx.qemu_io_cmds(
        "raw",
        "src.raw",
        &[
            "write -P 1 0 3M",
            "write -P 0 1M 256k",
            "write -P 2 4M 5M",
            "write -P 3 10300k 700k",
            "write -P 0 12M 2M",
            "write -P 4 15M 1M",
            "write -P 5 17M 64k",
            "write -P 6 18M 4M",
            "write -P 7 23M 4k",
        ],
    );
    // A second, oddly sized source: concatenated sources do not end on
    // cluster boundaries.
    fx.oracle(&["create", "-q", "-f", "raw", "odd.raw", "3333k"]);
    fx.qemu_io_cmds("raw", "odd.raw", &["write -P 8 100k 3000k"]);
}

#[test]
fn qcow2_convert_targets_are_qemu_imgs_files() {
    let fx = Fixture::new("layout_qcow2");
    source(&fx);
    fx.make_qcow2("base.qcow2", "", "24M");
    let cases: [&[&str]; 10] = [
        &[],
        &["-S", "64k"],
        &["-S", "0"],
        &["-o", "cluster_size=4k"],
        &["-o", "extended_l2=on"],
        &["-o", "cluster_size=2M"],
        &["-B", "base.qcow2", "-F", "qcow2"],
        &["-c"],
        &["-c", "-o", "compression_type=zstd"],
        &["-W", "-m", "1"],
    ];
    for options in cases {
        let mut args = vec!["convert", "-O", "qcow2"];
        args.extend(options);
        args.extend(["src.raw", "{}"]);
        let (ours, theirs) = both(&fx, &args, "qcow2");
        let read = |f: &str| std::fs::read(fx.path(f)).expect("read");
        assert!(
            read(&ours) == read(&theirs),
            "the files differ for {args:?}"
        );
    }
    let (ours, theirs) = both(
        &fx,
        &[
            "convert", "-O", "qcow2", "odd.raw", "src.raw", "odd.raw", "{}",
        ],
        "qcow2",
    );
    assert_eq!(map(&fx, &ours), map(&fx, &theirs));
    fx.oracle(&["compare", &ours, &theirs]);
}

#[test]
fn qcow2_convert_into_existing_images_keeps_qemu_imgs_layout() {
    let fx = Fixture::new("layout_existing");
    source(&fx);
    fx.make_qcow2("base.qcow2", "", "24M");
    fx.make_qcow2("plain.qcow2", "", "24M");
    fx.make_qcow2(
        "over.qcow2",
        "backing_file=base.qcow2,backing_fmt=qcow2",
        "24M",
    );
    for target in ["plain.qcow2", "over.qcow2"] {
        for name in ["ours.qcow2", "theirs.qcow2"] {
            fx.sh(&format!("cp --sparse=always {target} {name}"));
        }
        let args = ["convert", "-n", "-O", "qcow2", "src.raw", "{}"];
        let (ours, theirs) = both(&fx, &args, "qcow2");
        let read = |f: &str| std::fs::read(fx.path(f)).expect("read");
        assert!(
            read(&ours) == read(&theirs),
            "the files differ for {target}"
        );
    }
}

#[test]
fn qed_convert_targets_are_qemu_imgs_files() {
    // Clusters and L2 tables are placed in guest order (a request's data,
    // then the table it needs), whatever order the workers write in.
    let fx = Fixture::new("layout_qed");
    source(&fx);
    fx.oracle(&["create", "-q", "-f", "qed", "base.qed", "24M"]);
    let cases: [&[&str]; 5] = [
        &["-m", "8"],
        &["-o", "cluster_size=4k"],
        &["-o", "cluster_size=1M,table_size=16"],
        &["-B", "base.qed", "-F", "qed"],
        &["-S", "0"],
    ];
    let read = |f: &str| std::fs::read(fx.path(f)).expect("read");
    for options in cases {
        let mut args = vec!["convert", "-O", "qed"];
        args.extend(options);
        args.extend(["src.raw", "{}"]);
        let (ours, theirs) = both(&fx, &args, "qed");
        assert!(
            read(&ours) == read(&theirs),
            "the files differ for {args:?}"
        );
    }
    // Data that starts inside a copy unit: qemu-img's requests start with
    // the data, qimg's units stay aligned, so a table can come a cluster
    // apart; but the file is the same from run to run.
    let args = ["convert", "-m", "8", "-O", "qed", "odd.raw", "src.raw"];
    let runs: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let out = format!("run{i}.qed");
            let mut all = args.to_vec();
            all.push(&out);
            assert_eq!(fx.qimg(&all).status, 0);
            fx.oracle(&["check", &out]);
            read(&out)
        })
        .collect();
    assert!(runs.iter().all(|r| *r == runs[0]), "qed output varies");
}

/// Runs `args` (target `{}`) by both tools, each into its own file
/// (`ours.EXT`, `theirs.EXT`), and requires success of both.
fn both(fx: &Fixture, args: &[&str], ext: &str) -> (String, String) {
    let (ours, theirs) = (format!("ours.{ext}"), format!("theirs.{ext}"));
    let with = |file: &str| -> Vec<String> { args.iter().map(|a| a.replace("{}", file)).collect() };
    let (a, b) = (with(&ours), with(&theirs));
    let out = fx.qimg(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status, 0, "qimg {a:?}: {}", out.stderr);
    fx.oracle(&b.iter().map(String::as_str).collect::<Vec<_>>());
    (ours, theirs)
}

/// The `qemu-img map --output=json` of `file`.
fn map(fx: &Fixture, file: &str) -> String {
    fx.oracle(&["map", "--output=json", file]).stdout
}

#[test]
fn vmdk_convert_targets_have_qemu_imgs_map() {
    let fx = Fixture::new("layout_vmdk");
    source(&fx);
    for subformat in [
        "monolithicSparse",
        "twoGbMaxExtentSparse",
        "streamOptimized",
    ] {
        let opts = format!("subformat={subformat}");
        let args = [
            "convert", "-O", "vmdk", "-o", &opts, "odd.raw", "src.raw", "{}",
        ];
        let (ours, theirs) = both(&fx, &args, "vmdk");
        assert_eq!(map(&fx, &ours), map(&fx, &theirs), "{subformat}");
        fx.oracle(&["compare", &theirs, &ours]);
        for f in [ours, theirs] {
            let _ = std::fs::remove_file(fx.path(&f));
        }
    }
}

#[test]
fn bench_writes_are_laid_out_in_request_order() {
    let fx = Fixture::new("layout_bench");
    for format in ["qcow2", "vmdk"] {
        for name in ["ours", "theirs"] {
            let file = format!("{name}.{format}");
            fx.oracle(&["create", "-q", "-f", format, &file, "16M"]);
        }
        // Requests of 16 KiB every 48 KiB: each one allocates.
        let args = [
            "bench", "-w", "-f", format, "-c", "300", "-s", "16k", "-S", "48k", "{}",
        ];
        let (ours, theirs) = both(&fx, &args, format);
        assert_eq!(map(&fx, &ours), map(&fx, &theirs), "bench -w on {format}");
    }
}

/// qimg allocates the blocks ahead of a growing file's end when its driver
/// says it grows densely (see `host/src/store/ahead.rs`): what is left past
/// the end is released when the file is closed, and files with holes inside
/// (vpc's partly written blocks, qcow2's partly written clusters with
/// subclusters, compressed clusters packed with gaps) keep them.
/// So every target holds no more blocks than qemu-img's (bar a little:
/// which zeroed ranges stay holes varies, see above).
#[test]
fn convert_targets_hold_no_more_blocks_than_qemu_imgs() {
    let fx = Fixture::new("layout_blocks");
    source(&fx);
    // A whole first MiB (its clusters are appended whole), then half of
    // every 128 KiB: with subclusters, those clusters are written in part,
    // and the rest must stay a hole in the file.
    fx.oracle(&["create", "-q", "-f", "raw", "halves.raw", "8M"]);
    let halves: Vec<String> = std::iter::once("write -P 99 0 1M".to_string())
        .chain((8..64).map(|i| format!("write -P {} {}k 64k", i + 1, i * 128)))
        .collect();
    fx.qemu_io_cmds(
        "raw",
        "halves.raw",
        &halves.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for (format, extra) in [
        ("qcow2", &[][..]),
        ("qcow2", &["-o", "extended_l2=on,cluster_size=128k"][..]),
        // halves.raw, then src.raw, into one target.
        (
            "qcow2",
            &["-o", "extended_l2=on,cluster_size=128k", "halves.raw"][..],
        ),
        ("qcow2", &["-c"][..]),
        ("qed", &[][..]),
        ("vdi", &[][..]),
        ("vmdk", &[][..]),
        ("vmdk", &["-o", "subformat=streamOptimized"][..]),
        ("vpc", &[][..]),
        ("vhdx", &[][..]),
        ("parallels", &[][..]),
    ] {
        let opts = extra.join(" ");
        let args = [&["convert", "-O", format][..], extra, &["src.raw", "{}"]].concat();
        let (ours, theirs) = both(&fx, &args, format);
        let (our_len, our_blocks) = qimg_tests::file_shape(&fx.path(&ours));
        let (their_len, their_blocks) = qimg_tests::file_shape(&fx.path(&theirs));
        // 512-byte blocks: 256 KiB of slack against 32 MiB windows. Nothing
        // is left past the end...
        assert!(
            our_blocks <= our_len / 512 + 512,
            "{format} {opts}: {our_blocks} blocks in a file of {our_len} bytes"
        );
        // ... nor inside (stream-optimized grains compress to other lengths).
        if our_len == their_len {
            assert!(
                our_blocks <= their_blocks + 512,
                "{format} {opts}: {our_blocks} blocks against qemu-img's {their_blocks}"
            );
        }
        fx.oracle(&["compare", "-f", format, "-F", format, &theirs, &ours]);
        for f in [ours, theirs] {
            let _ = std::fs::remove_file(fx.path(&f));
        }
    }
}

/// A raw target's data blocks are allocated ahead of the copy (see
/// `host/src/engine/fill.rs`: copies of 64 MiB of data and more, once 32
/// MiB without zero runs were written), and the zero runs found inside
/// that data later give them back: the file holds exactly the blocks
/// qemu-img's holds, whatever `-S` makes holes of, from a raw source (zeros
/// written inside data) or a qcow2 one, into a new target or an existing
/// one.
#[test]
fn raw_convert_targets_hold_qemu_imgs_blocks() {
    let fx = Fixture::new("layout_raw");
    fx.oracle(&["create", "-q", "-f", "raw", "big.raw", "128M"]);
    fx.qemu_io_cmds(
        "raw",
        "big.raw",
        &[
            "write -P 1 0 40M",
            "write -P 2 48M 40M",
            "write -P 0 60M 256k",
            "write -P 0 70M 4k",
            "write -P 0 80M 64k",
            "write -P 3 100M 4k",
        ],
    );
    fx.oracle(&["convert", "-O", "qcow2", "big.raw", "big.qcow2"]);
    for (extra, input, existing) in [
        (&[][..], "big.raw", false),
        (&["-S", "64k"][..], "big.raw", false),
        (&["-S", "0"][..], "big.raw", false),
        (&[][..], "big.qcow2", false),
        (&["-m", "1"][..], "big.raw", false),
        (&["-n"][..], "big.raw", true),
        (&["-n", "--target-is-zero"][..], "big.raw", true),
    ] {
        let what = format!("{extra:?} {input}");
        if existing {
            for f in ["ours.raw", "theirs.raw"] {
                fx.oracle(&["create", "-q", "-f", "raw", f, "128M"]);
            }
        }
        let args = [&["convert", "-O", "raw"][..], extra, &[input, "{}"]].concat();
        let (ours, theirs) = both(&fx, &args, "raw");
        let shape = |f: &str| qimg_tests::data_shape(&fx.path(f));
        assert_eq!(
            shape(&ours),
            shape(&theirs),
            "{what}: (length, data blocks)"
        );
        assert_eq!(map(&fx, &ours), map(&fx, &theirs), "{what}");
        fx.oracle(&["compare", "-f", "raw", "-F", "raw", &theirs, &ours]);
        for f in [ours, theirs] {
            let _ = std::fs::remove_file(fx.path(&f));
        }
    }
}
