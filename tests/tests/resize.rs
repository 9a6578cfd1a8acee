//! `resize`, against `qemu-img resize`: output, exit status and the file.

use qimg_tests::Fixture;

fn resized(args: &[&str], name: &str) {
    let fx = Fixture::new(name);
    fx.oracle(&["create", "-q", "-f", "raw", "rs.raw", "1M"]);
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "IMG" { "{}" } else { a })
        .collect();
    fx.same_effect(&args, "rs.raw");
}

macro_rules! resize_cases {
    ($($name:ident => [$($arg:expr),* $(,)?]),+ $(,)?) => {
        $( #[test] fn $name() { resized(&[$($arg),*], stringify!($name)); } )+
    };
}

resize_cases! {
    grow_probed => ["resize", "IMG", "2M"],
    grow => ["resize", "-f", "raw", "IMG", "2M"],
    grow_relative => ["resize", "-f", "raw", "IMG", "+1M"],
    shrink_relative_needs_flag => ["resize", "-f", "raw", "IMG", "--", "-512K"],
    shrink_needs_flag => ["resize", "-f", "raw", "IMG", "512K"],
    shrink => ["resize", "-f", "raw", "--shrink", "IMG", "512K"],
    shrink_probed => ["resize", "--shrink", "IMG", "512K"],
    shrink_relative_without_dashes => ["resize", "-f", "raw", "--shrink", "IMG", "-512K"],
    same_size => ["resize", "-f", "raw", "IMG", "1M"],
    plus_zero => ["resize", "-f", "raw", "IMG", "+0"],
    unaligned_grow => ["resize", "-f", "raw", "IMG", "1048577"],
    fraction => ["resize", "-f", "raw", "IMG", "1.5M"],
    preallocation_full => ["resize", "-f", "raw", "--preallocation=full", "IMG", "2M"],
    preallocation_falloc => ["resize", "-f", "raw", "--preallocation=falloc", "IMG", "2M"],
    preallocation_off => ["resize", "-f", "raw", "--preallocation=off", "IMG", "2M"],
    preallocation_metadata => ["resize", "-f", "raw", "--preallocation=metadata", "IMG", "2M"],
    preallocation_bogus => ["resize", "-f", "raw", "--preallocation=bogus", "IMG", "2M"],
    preallocation_shrink => ["resize", "-f", "raw", "--preallocation=full", "--shrink", "IMG", "512K"],
    bad_suffix => ["resize", "-f", "raw", "IMG", "1X"],
    bad_relative_suffix => ["resize", "-f", "raw", "IMG", "+1X"],
    wraps_negative => ["resize", "-f", "raw", "IMG", "8E"],
    shrink_below_zero => ["resize", "-f", "raw", "--shrink", "IMG", "--", "-2M"],
    to_zero => ["resize", "-f", "raw", "--shrink", "IMG", "0"],
    quiet => ["resize", "-q", "-f", "raw", "IMG", "2M"],
    no_size => ["resize", "-f", "raw", "IMG"],
    extra_argument => ["resize", "-f", "raw", "IMG", "2M", "extra"],
    nothing => ["resize"],
    missing_file => ["resize", "-f", "raw", "missing.raw", "2M"],
    too_large_for_fs => ["resize", "-f", "raw", "IMG", "1P"],
}

#[test]
fn odd_sized_image_uses_rounded_size() {
    let cases: [&[&str]; 3] = [
        &["resize", "-f", "raw", "{}", "+0"],
        &["resize", "-f", "raw", "{}", "1000"],
        &["resize", "-f", "raw", "--shrink", "{}", "1000"],
    ];
    for (i, args) in cases.iter().enumerate() {
        let fx = Fixture::new(&format!("oddresize{i}"));
        std::fs::write(fx.path("rs.raw"), vec![1u8; 1000]).unwrap();
        fx.same_effect(args, "rs.raw");
    }
}

/// Resizes a qcow2 overlay (made with `create_opts`, 1 MiB, on a 4 MiB raw
/// base of 0x77) through `steps` (`resize` arguments after the image name)
/// with both tools, and checks the results agree: output, `qemu-img map`,
/// `qemu-img compare`, `qemu-img check`; returns the fixture.
fn overlay_resized(name: &str, create_opts: &str, steps: &[&[&str]]) -> Fixture {
    let fx = Fixture::new(name);
    fx.oracle(&["create", "-q", "-f", "raw", "base.raw", "4M"]);
    fx.qemu_io("base.raw", "write -P 0x77 0 4M");
    for image in ["ours.qcow2", "theirs.qcow2"] {
        fx.oracle(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            create_opts,
            "-b",
            "base.raw",
            "-F",
            "raw",
            image,
            "1M",
        ]);
        fx.qemu_io_cmds("qcow2", image, &["write -P 0x11 0 10k"]);
    }
    for step in steps {
        let run = |image: &str| -> Vec<String> {
            let mut args = vec!["resize".to_string(), "--shrink".to_string()];
            args.extend(step.iter().map(|a| a.replace("IMG", image)));
            args
        };
        let ours = run("ours.qcow2");
        let theirs = run("theirs.qcow2");
        let a = fx.qimg(&ours.iter().map(String::as_str).collect::<Vec<_>>());
        let b = fx.qemu_img(&theirs.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            (a.status, a.stderr.replace("ours", "theirs")),
            (b.status, b.stderr),
            "{step:?}"
        );
    }
    let map = |image: &str| fx.oracle(&["map", "--output=json", image]).stdout;
    assert_eq!(
        map("ours.qcow2"),
        map("theirs.qcow2"),
        "{create_opts} {steps:?}"
    );
    let same = fx.oracle(&["compare", "ours.qcow2", "theirs.qcow2"]);
    assert_eq!(same.status, 0, "{create_opts} {steps:?}: {same:?}");
    assert_eq!(fx.oracle(&["check", "ours.qcow2"]).status, 0);
    fx
}

#[test]
fn growing_an_overlay_over_a_longer_backing_file_reads_zeros() {
    // qemu-img writes zeros over the new area; left unallocated it would
    // show the backing file's 0x77.
    for opts in [
        "cluster_size=65536",
        "cluster_size=4096",
        "extended_l2=on",
        "lazy_refcounts=on",
    ] {
        let fx = overlay_resized("rs_backing", opts, &[&["IMG", "2M"]]);
        fx.qemu_io_cmds("qcow2", "ours.qcow2", &["read -P 0 1M 1M"]);
        fx.qemu_io_cmds("qcow2", "ours.qcow2", &["read -P 0x11 0 10k"]);
        fx.qemu_io_cmds("qcow2", "ours.qcow2", &["read -P 0x77 10k 1014k"]);
    }
    // Past the backing file's end too, and after a shrink into a cluster.
    overlay_resized("rs_backing_far", "cluster_size=65536", &[&["IMG", "6M"]]);
    let fx = overlay_resized(
        "rs_backing_regrow",
        "extended_l2=on",
        &[&["IMG", "70k"], &["IMG", "2M"]],
    );
    fx.qemu_io_cmds("qcow2", "ours.qcow2", &["read -P 0x77 10k 60k"]);
    fx.qemu_io_cmds("qcow2", "ours.qcow2", &["read -P 0 70k 1978k"]);
}

#[test]
fn a_version_2_overlay_cannot_zero_and_keeps_its_size() {
    // qemu-img: "Failed to zero out new clusters: Operation not supported".
    let fx = overlay_resized("rs_v2", "compat=0.10", &[&["IMG", "2M"]]);
    let info = fx.qimg(&["info", "--output=json", "ours.qcow2"]);
    assert!(
        info.stdout.contains("\"virtual-size\": 1048576"),
        "{}",
        info.stdout
    );
}

#[test]
fn preallocated_growth_keeps_the_backing_data_of_the_old_end() {
    for mode in ["metadata", "falloc", "full"] {
        let prealloc = format!("--preallocation={mode}");
        let fx = overlay_resized(
            &format!("rs_prealloc_{mode}"),
            "cluster_size=65536",
            &[&["IMG", "70k"], &[prealloc.as_str(), "IMG", "2M"]],
        );
        fx.qemu_io_cmds("qcow2", "ours.qcow2", &["read -P 0x77 10k 60k"]);
        fx.qemu_io_cmds("qcow2", "ours.qcow2", &["read -P 0 70k 1978k"]);
    }
}

/// Full and falloc preallocation move the refcount table past the last
/// cluster in use, as qemu-img does: on an image with freed clusters
/// inside, qimg put it into the first free run (its file differed from
/// qemu-img's), and where a damaged refcount counts a guest cluster free,
/// over that cluster's data (qemu-img keeps it).
#[test]
fn preallocation_moves_the_refcount_table_past_the_clusters_in_use() {
    let fx = Fixture::new("rs_prealloc_reftable");
    fx.oracle(&["create", "-q", "-f", "qcow2", "holes.qcow2", "16M"]);
    fx.qemu_io_cmds(
        "qcow2",
        "holes.qcow2",
        &["write -P 1 0 256k", "write -P 2 1M 256k", "discard 0 192k"],
    );
    // The same data, with the first data cluster (file cluster 5) counted
    // free in the refcount block (file cluster 2).
    fx.oracle(&["create", "-q", "-f", "qcow2", "free.qcow2", "16M"]);
    fx.qemu_io_cmds("qcow2", "free.qcow2", &["write -P 1 0 256k"]);
    fx.patched_copy("free.qcow2", "damaged.qcow2", &[(0x20000 + 10, vec![0, 0])]);
    for (image, mode) in [
        ("holes.qcow2", "full"),
        ("holes.qcow2", "falloc"),
        ("damaged.qcow2", "full"),
    ] {
        fx.oracle(&["convert", "-O", "raw", image, "before.raw"]);
        for tool in ["ours", "theirs"] {
            let copy = format!("{tool}.qcow2");
            fx.sh(&format!("cp {image} {copy}"));
            let args = ["resize", &format!("--preallocation={mode}"), &copy, "+3M"];
            let out = if tool == "ours" {
                fx.qimg(&args)
            } else {
                fx.qemu_img(&args)
            };
            assert_eq!(out.status, 0, "{tool} {mode} {image}: {}", out.stderr);
        }
        let ours = std::fs::read(fx.path("ours.qcow2")).unwrap();
        let theirs = std::fs::read(fx.path("theirs.qcow2")).unwrap();
        assert!(ours == theirs, "{mode} of {image}: files differ");
        fx.sh("truncate -s 19M before.raw");
        fx.oracle(&["compare", "-F", "raw", "ours.qcow2", "before.raw"]);
    }
}

/// A resize refused after the image was opened for writing (a shrink
/// without `--shrink`) closes it cleanly, as qemu-img does: formats that
/// mark an image in use while it is open for writing must not be left
/// marked, or the next `qemu-img check` finds it not closed correctly.
#[test]
fn a_refused_resize_leaves_every_format_clean() {
    let fx = Fixture::new("resize_refused_clean");
    for format in ["qcow2", "qed", "vdi", "vpc", "vmdk", "parallels"] {
        let file = format!("img.{format}");
        fx.oracle(&["create", "-q", "-f", format, &file, "4M"]);
        fx.qemu_io_cmds(format, &file, &["write -P 5 0 64k"]);
        let before = std::fs::read(fx.path(&file)).expect("read image");
        let out = fx.qimg(&["resize", "-f", format, &file, "2M"]);
        assert_eq!(out.status, 1, "{format}: {out:?}");
        // (qemu-img cannot check vpc images: the bytes tell.)
        if format != "vpc" {
            let check = fx.qemu_img(&["check", "-f", format, &file]);
            assert_eq!(check.status, 0, "{format}: {check:?}");
        }
        assert_eq!(
            before,
            std::fs::read(fx.path(&file)).expect("read image"),
            "{format}: the refused resize changed the file"
        );
    }
}

/// The arguments as qemu-img 10.0.2 reads them: the size follows the file
/// name, a negative one right after it is not an option, and options may
/// come after the size.
#[test]
fn arguments_are_read_as_qemu_img_reads_them() {
    for (i, args) in [
        &["mid.raw", "-1M", "-f", "raw", "--shrink"][..],
        &["-f", "raw", "mid.raw", "+1M", "-q"],
        &["-f", "raw", "mid.raw", "-q", "-1M"],
        &["-f", "raw", "mid.raw", "-x"],
        &["-f", "raw", "--", "mid.raw", "-1M"],
        &["-f", "raw", "mid.raw", "1M", "-"],
        &["-f", "raw", "mid.raw", "-q"],
        &["--format", "raw"],
        &["-f"],
        &["--preallocation", "mid.raw", "5M"],
    ]
    .iter()
    .enumerate()
    {
        let fx = Fixture::with_images(&format!("resize_args{i}"));
        let mut all = vec!["resize"];
        all.extend_from_slice(args);
        fx.same_effect(
            &all.iter()
                .map(|a| if *a == "mid.raw" { "{}" } else { a })
                .collect::<Vec<_>>(),
            "mid.raw",
        );
    }
}

/// Shrinking to a size inside a grain or block and growing again reads
/// zeros past the smaller end in the formats only qimg resizes (vmdk, vpc
/// and parallels kept the cut-off data and showed it again), and qemu-img
/// check accepts the result. (qcow2 keeps the rest of a partial cluster,
/// as qemu-img's does.)
#[test]
fn data_cut_off_by_a_shrink_never_reads_again() {
    let fx = Fixture::new("resize_cut_off");
    for format in ["vmdk", "vpc", "vhdx", "parallels"] {
        let file = format!("img.{format}");
        fx.oracle(&["create", "-q", "-f", format, &file, "8M"]);
        fx.qemu_io_cmds(format, &file, &["write -P 0x22 0 8M"]);
        for size in ["3000k", "8M"] {
            let out = fx.qimg(&["resize", "-q", "-f", format, "--shrink", &file, size]);
            assert_eq!(out.status, 0, "{format}: {out:?}");
        }
        fx.qemu_io_cmds(
            format,
            &file,
            &["read -P 0x22 0 3000k", "read -P 0 3000k 5192k"],
        );
        if format != "vpc" {
            fx.oracle(&["check", "-q", "-f", format, &file]);
        }
    }
}

/// A qcow2 image whose raw external data file is the guest disk: a shrink
/// cuts the data file too, so growing again reads zeros (qemu-img truncates
/// it the same way).
#[test]
fn a_shrink_cuts_a_raw_data_file() {
    let fx = Fixture::new("resize_raw_data_file");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=d.raw,data_file_raw=on",
        "i.qcow2",
        "4M",
    ]);
    fx.qemu_io_cmds("qcow2", "i.qcow2", &["write -P 0x22 3M 512k"]);
    fx.qimg(&["resize", "-q", "--shrink", "i.qcow2", "2M"]);
    let len = |name: &str| std::fs::metadata(fx.path(name)).unwrap().len();
    assert_eq!(len("d.raw"), 2 << 20);
    fx.qimg(&["resize", "-q", "i.qcow2", "4M"]);
    assert_eq!(len("d.raw"), 4 << 20);
    fx.qemu_io_cmds("qcow2", "i.qcow2", &["read -P 0 2M 2M"]);
    fx.oracle(&["check", "-q", "i.qcow2"]);
}

/// Refusals in qemu-img's order and words: preallocation while shrinking
/// before the missing --shrink (also with --shrink, but not for `off`),
/// and a size past the block layer's limit before the driver's checks.
#[test]
fn refusals_come_in_qemu_imgs_order() {
    let fx = Fixture::new("resize_refusals");
    fx.oracle(&["create", "-q", "-f", "qcow2", "x.qcow2", "4M"]);
    for args in [
        &["resize", "--preallocation=falloc", "x.qcow2", "2M"][..],
        &[
            "resize",
            "--preallocation=falloc",
            "--shrink",
            "x.qcow2",
            "2M",
        ],
        &["resize", "--preallocation=off", "x.qcow2", "2M"],
        &["resize", "x.qcow2", "9223372036854775807"],
        &["resize", "-f", "raw", "x.qcow2", "9223372036854775807"],
    ] {
        let out = fx.same(args);
        assert_eq!(out.status, 1, "{args:?}: {out:?}");
    }
}
