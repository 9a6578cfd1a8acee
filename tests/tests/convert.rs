//! `convert`, against `qemu-img convert`: messages, progress bytes, exit
//! status, and the target file (size, allocation, map, content).

use qimg_tests::{same_cases, Fixture};

same_cases! {
    no_target => ["convert", "-O", "raw", "mid.raw"],
    backing_with_concatenated_sources => ["convert", "-O", "qcow2", "-B", "mid.raw", "mid.raw", "full.raw", "o.qcow2"],
    empty_source_name => ["convert", "", "o.raw"],
    empty_option_list => ["convert", "-o", "", "mid.raw", "o.raw"],
    source_image_opts_with_format => ["convert", "--image-opts", "-f", "raw", "driver=raw,file.filename=mid.raw", "o.raw"],
    long_names_of_the_installed_table => ["convert", "--output-format=raw", "--output-cache=unsafe", "--options=preallocation=bogus", "mid.raw", "o.raw"],
    help_names_not_in_the_table => ["convert", "--target-format=raw", "mid.raw", "o.raw"],
    short_only_progress => ["convert", "--progress", "mid.raw", "o.raw"],
    ambiguous_target_prefix => ["convert", "--targe", "mid.raw", "o.raw"],
    ambiguous_o_prefix => ["convert", "--o=raw", "mid.raw", "o.raw"],
    nothing => ["convert"],
    bad_sparse_size => ["convert", "-S", "1000", "mid.raw", "o.raw"],
    bad_sparse_text => ["convert", "-S", "bogus", "mid.raw", "o.raw"],
    negative_sparse => ["convert", "-S", "-1", "mid.raw", "o.raw"],
    zero_coroutines => ["convert", "-m", "0", "mid.raw", "o.raw"],
    too_many_coroutines => ["convert", "-m", "17", "mid.raw", "o.raw"],
    bad_coroutines => ["convert", "-m", "bogus", "mid.raw", "o.raw"],
    bad_rate => ["convert", "-r", "bogus", "mid.raw", "o.raw"],
    negative_rate => ["convert", "-r", "-1", "mid.raw", "o.raw"],
    unknown_target_format => ["convert", "-O", "nosuch", "mid.raw", "o.raw"],
    missing_source => ["convert", "missing.raw", "o.raw"],
    target_is_zero_needs_n => ["convert", "--target-is-zero", "mid.raw", "o.raw"],
    n_with_options => ["convert", "-n", "-o", "preallocation=full", "mid.raw", "o.raw"],
    n_missing_target => ["convert", "-n", "mid.raw", "o.raw"],
    compress_unsupported => ["convert", "-c", "mid.raw", "o.raw"],
    backing_unsupported => ["convert", "-B", "base", "mid.raw", "o.raw"],
    snapshot_unsupported => ["convert", "-l", "snapshot.name=x", "mid.raw", "o.raw"],
    bitmaps_unsupported => ["convert", "--bitmaps", "mid.raw", "o.raw"],
    unknown_option => ["convert", "-o", "nosuch=1", "mid.raw", "o.raw"],
    options_help => ["convert", "-O", "raw", "-o", "help"],
    options_help_with_files => ["convert", "-O", "raw", "-o", "help", "mid.raw", "o.raw"],
    bad_source_cache => ["convert", "-T", "bogus", "mid.raw", "o.raw"],
    target_missing_directory => ["convert", "mid.raw", "nodir/o.raw"],
    onto_itself => ["convert", "mid.raw", "mid.raw"],
    progress_open_failure => ["convert", "-p", "missing.raw", "o.raw"],
    option_the_format_lacks_before_backing_format => ["convert", "-O", "raw", "-o", "backing_file=mid.raw", "mid.raw", "o.raw"],
    backing_file_for_vpc => ["convert", "-O", "vpc", "-o", "backing_file=mid.raw", "mid.raw", "o.vhd"],
    compress_into_a_flat_vmdk => ["convert", "-c", "-O", "vmdk", "-o", "subformat=monolithicFlat", "mid.raw", "o.vmdk"],
    compress_with_a_data_file => ["convert", "-c", "-O", "qcow2", "-o", "data_file=o.data", "mid.raw", "o.qcow2"],
    data_file_in_a_missing_directory => ["convert", "-O", "qcow2", "-o", "data_file=nodir/o.data", "mid.raw", "o.qcow2"],
    luks_source_needs_its_key_first => ["convert", "-f", "luks", "mid.raw", "o.raw"],
    duplicate_object_id => ["convert", "--object", "secret,id=s,data=x", "--object", "secret,id=s,file=missing", "mid.raw", "o.raw"],
    secret_file_missing => ["convert", "--object", "secret,id=s,file=missing", "mid.raw", "o.raw"],
    secret_file_a_directory => ["convert", "--object", "secret,id=s,file=.", "mid.raw", "o.raw"],
    empty_source_to_sparse_vmdk => ["convert", "-O", "vmdk", "empty.raw", "o.vmdk"],
}

fn converted(fx: &Fixture, args: &[&str]) {
    fx.same_effect(args, "o.raw");
}

macro_rules! convert_cases {
    ($($name:ident => [$($arg:expr),* $(,)?]),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fx = Fixture::with_images(stringify!($name));
                converted(&fx, &[$($arg),*]);
            }
        )+
    };
}

convert_cases! {
    sparse_to_raw => ["convert", "-O", "raw", "mid.raw", "{}"],
    default_format => ["convert", "mid.raw", "{}"],
    full_data => ["convert", "full.raw", "{}"],
    written_zeros_become_holes => ["convert", "zeros.raw", "{}"],
    no_sparse_detection => ["convert", "-S", "0", "zeros.raw", "{}"],
    no_sparse_detection_sparse_source => ["convert", "-S", "0", "mid.raw", "{}"],
    coarse_sparse_detection => ["convert", "-S", "64k", "mid.raw", "{}"],
    one_coroutine => ["convert", "-m", "1", "mid.raw", "{}"],
    out_of_order => ["convert", "-W", "full.raw", "{}"],
    rate_limited => ["convert", "-r", "64M", "mid.raw", "{}"],
    concatenated_sources => ["convert", "mid.raw", "full.raw", "{}"],
    empty_source => ["convert", "empty.raw", "{}"],
    odd_source => ["convert", "odd.raw", "{}"],
    preallocation_full => ["convert", "-o", "preallocation=full", "mid.raw", "{}"],
    preallocation_falloc => ["convert", "-o", "preallocation=falloc", "mid.raw", "{}"],
    preallocation_bogus => ["convert", "-o", "preallocation=bogus", "mid.raw", "{}"],
    size_option_ignored => ["convert", "-o", "size=1M", "mid.raw", "{}"],
    copy_offload => ["convert", "-C", "full.raw", "{}"],
    force_share => ["convert", "-U", "mid.raw", "{}"],
    direct_io_target => ["convert", "-t", "none", "full.raw", "{}"],
    direct_io_source => ["convert", "-T", "none", "mid.raw", "{}"],
    salvage => ["convert", "--salvage", "mid.raw", "{}"],
    progress_sparse => ["convert", "-p", "mid.raw", "{}"],
    progress_full => ["convert", "-p", "full.raw", "{}"],
    progress_no_sparse => ["convert", "-p", "-S", "0", "mid.raw", "{}"],
    progress_quiet => ["convert", "-p", "-q", "mid.raw", "{}"],
    progress_empty => ["convert", "-p", "empty.raw", "{}"],
}

/// A source of 131071 extents (4 KiB of data every 8 KiB of 512 MiB) needs
/// more items than one segment of the plan holds (65536): the copy runs a
/// segment after another, its progress from one walk ahead, and gives
/// qemu-img's output, file and progress lines, into raw and into qcow2
/// (whose allocated blocks vary run to run with ext4's extent tree, for
/// either tool: only its content and size are compared).
#[test]
fn a_plan_longer_than_a_segment_copies_as_qemu_img_does() {
    use std::os::unix::fs::FileExt;
    let fx = Fixture::new("convert_segments");
    let file = std::fs::File::create(fx.path("alt.raw")).expect("create alt.raw");
    file.set_len(512 << 20).expect("size alt.raw");
    for i in 0..65536u64 {
        file.write_all_at(&[0x5a; 4096], i * 8192)
            .expect("write alt.raw");
    }
    converted(&fx, &["convert", "-p", "alt.raw", "{}"]);
    let ours = fx.qimg(&["convert", "-p", "-O", "qcow2", "alt.raw", "ours.qcow2"]);
    let theirs = fx.qemu_img(&["convert", "-p", "-O", "qcow2", "alt.raw", "theirs.qcow2"]);
    assert_eq!(ours, theirs);
    fx.oracle(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        "alt.raw",
        "ours.qcow2",
    ]);
    let size = |name: &str| std::fs::metadata(fx.path(name)).expect(name).len();
    assert_eq!(size("ours.qcow2"), size("theirs.qcow2"));
}

#[test]
fn progress_counts_two_mebibyte_steps() {
    let fx = Fixture::new("progress8");
    fx.sh("head -c 8M /dev/urandom > c8.raw && fallocate -p -o 2M -l 2M c8.raw");
    converted(&fx, &["convert", "-p", "c8.raw", "{}"]);
}

#[test]
fn existing_target_is_overwritten() {
    let fx = Fixture::with_images("overwrite");
    std::fs::copy(fx.path("full.raw"), fx.path("o.raw")).unwrap();
    converted(&fx, &["convert", "mid.raw", "{}"]);
}

#[test]
fn no_create_into_larger_target() {
    let fx = Fixture::with_images("nocreate");
    fx.oracle(&["create", "-q", "-f", "raw", "o.raw", "8M"]);
    fx.qemu_io("o.raw", "write -P 7 0 8M");
    converted(&fx, &["convert", "-n", "mid.raw", "{}"]);
}

#[test]
fn no_create_target_is_zero_keeps_old_data() {
    let fx = Fixture::with_images("targetzero");
    fx.oracle(&["create", "-q", "-f", "raw", "o.raw", "8M"]);
    fx.qemu_io("o.raw", "write -P 7 0 8M");
    converted(&fx, &["convert", "-n", "--target-is-zero", "mid.raw", "{}"]);
}

#[test]
fn no_create_into_smaller_target() {
    let fx = Fixture::with_images("smaller");
    fx.oracle(&["create", "-q", "-f", "raw", "o.raw", "1M"]);
    converted(&fx, &["convert", "-n", "mid.raw", "{}"]);
}

#[test]
fn qemu_img_accepts_what_qimg_wrote() {
    let fx = Fixture::new("accepted");
    fx.sh("head -c 3M /dev/urandom > data.raw && truncate -s 16M data.raw");
    fx.qemu_io("data.raw", "write -P 0x5a 9M 1M");
    let out = fx.qimg(&["convert", "-f", "raw", "-O", "raw", "data.raw", "copy.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(
        fx.qemu_img(&["compare", "-f", "raw", "-F", "raw", "data.raw", "copy.raw"])
            .status,
        0
    );
    assert_eq!(
        fx.qemu_img(&["compare", "-s", "-f", "raw", "-F", "raw", "data.raw", "copy.raw"])
            .stdout,
        "Images are identical.\n"
    );
}

#[test]
fn failed_convert_leaves_no_new_target() {
    let fx = Fixture::with_images("failed");
    // A target that cannot be opened after creation: a read error is forced by
    // making the source unreadable midway is not portable, so use an invalid
    // target cache mode, which qimg checks before creating anything.
    let out = fx.qimg(&["convert", "-t", "bogus", "mid.raw", "o.raw"]);
    assert_eq!(out.status, 1);
    assert_eq!(out.stderr, "qemu-img: Invalid cache option: bogus\n");
    assert!(!fx.path("o.raw").exists());
}

#[test]
fn sigusr1_prints_progress_on_stderr() {
    let fx = Fixture::new("usr1");
    fx.sh("head -c 4M /dev/urandom > src.raw");
    let child = std::process::Command::new(qimg_tests::qimg_bin())
        .args(["convert", "-r", "1M", "-f", "raw", "src.raw", "o.raw"])
        .current_dir(&fx.dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().next().unwrap_or_default();
    assert!(
        line.starts_with("    (") && line.ends_with("/100%)"),
        "{stderr:?}"
    );
    let pct: f64 = line
        .trim()
        .trim_start_matches('(')
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pct > 0.0 && pct < 100.0, "{line}");
}

#[test]
fn sparse_size_on_raw_targets_matches_qemu_img_allocation() {
    let fx = Fixture::new("conv_sparse_raw");
    fx.oracle(&["create", "-q", "-f", "raw", "s.raw", "4M"]);
    fx.qemu_io_cmds(
        "raw",
        "s.raw",
        &[
            "write -P 1 0 1k",
            "write -P 0 1k 15k",
            "write -P 2 16k 512",
            "write -P 0 1M 9k",
            "write -P 3 1033k 3k",
        ],
    );
    for sparse in ["512", "4k", "8k", "16k", "1M"] {
        fx.same_effect(
            &[
                "convert", "-f", "raw", "-O", "raw", "-S", sparse, "s.raw", "{}",
            ],
            "t.raw",
        );
    }
}

#[test]
fn option_checks_refuse_as_qemu_img_does_and_in_its_order() {
    let fx = Fixture::with_images("conv_option_checks");
    fx.oracle(&["create", "-q", "-f", "qcow2", "base.qcow2", "4M"]);
    let cases: &[&[&str]] = &[
        &["convert", "--skip-broken-bitmaps"],
        &["convert", "-C", "-c", "--skip-broken-bitmaps"],
        &["convert", "-C", "-c", "-O", "qcow2", "mid.raw", "o.qcow2"],
        &["convert", "-o", "help", "-C", "-c"],
        &["convert", "-C", "-S", "8k", "mid.raw", "o.raw"],
        &[
            "convert",
            "--target-image-opts",
            "mid.raw",
            "driver=raw,file.filename=o.raw",
        ],
        &[
            "convert",
            "--target-image-opts",
            "-o",
            "cluster_size=4k",
            "mid.raw",
            "o",
        ],
        &[
            "convert",
            "-n",
            "--target-image-opts",
            "-O",
            "raw",
            "mid.raw",
            "o",
        ],
        &[
            "convert",
            "-n",
            "--target-image-opts",
            "-O",
            "raw",
            "-o",
            "a=b",
            "mid.raw",
            "o",
        ],
        &["convert", "-c", "--target-is-zero", "mid.raw", "o"],
        &[
            "convert",
            "-O",
            "qcow2",
            "-B",
            "base.qcow2",
            "mid.raw",
            "o.qcow2",
        ],
        &[
            "convert",
            "-O",
            "qcow2",
            "-o",
            "backing_file=base.qcow2",
            "mid.raw",
            "o.qcow2",
        ],
        &[
            "convert",
            "-O",
            "raw",
            "-B",
            "base.qcow2",
            "mid.raw",
            "o.raw",
        ],
    ];
    for args in cases {
        let out = fx.same(args);
        assert_eq!(out.status, 1, "{args:?}");
        assert!(
            !fx.path("o.qcow2").exists() && !fx.path("o.raw").exists(),
            "{args:?} left a target"
        );
    }
}

/// A 4 MiB qcow2 image of compressed clusters whose cluster at 1088 KiB
/// cannot be decompressed.
fn broken_compressed(fx: &Fixture) {
    fx.oracle(&["create", "-q", "-f", "raw", "r.raw", "4M"]);
    fx.qemu_io("r.raw", "write -P 3 0 4M");
    fx.oracle(&["convert", "-c", "-O", "qcow2", "r.raw", "c.qcow2"]);
    // The L2 entry of guest cluster 17 holds its compressed data's offset.
    let bytes = std::fs::read(fx.path("c.qcow2")).expect("read");
    let word = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let l1 = word(40) as usize;
    let l2 = (word(l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let data = word(l2 + 8 * 17) & ((1 << 54) - 1);
    fx.patched_copy("c.qcow2", "bad.qcow2", &[(data, vec![0xff; 32])]);
}

#[test]
fn unreadable_source_areas_as_qemu_img_reports_them() {
    // Without --salvage: qemu-img's message and status. With it: only the
    // unreadable sectors read as zeros, each with a warning that -q
    // silences.
    let fx = Fixture::new("conv_read_errors");
    broken_compressed(&fx);
    let out = fx.same(&["convert", "-O", "raw", "bad.qcow2", "failed.raw"]);
    assert_eq!(out.status, 1);
    assert!(
        out.stderr.contains("error while reading at byte 1114112"),
        "{}",
        out.stderr
    );
    // qemu-img leaves the half-written target behind; qimg removes it.
    let _ = std::fs::remove_file(fx.path("failed.raw"));
    fx.qimg(&["convert", "-O", "raw", "bad.qcow2", "failed.raw"]);
    assert!(!fx.path("failed.raw").exists());
    for quiet in [false, true] {
        let mut args = vec!["convert", "--salvage", "-O", "raw", "bad.qcow2", "{}"];
        if quiet {
            args.insert(1, "-q");
        }
        let out = fx.same_effect(&args, "out.raw");
        assert_eq!(out.status, 0, "{}", out.stderr);
        assert_eq!(out.stderr.is_empty(), quiet, "{}", out.stderr);
    }
}

/// A compressed copy into an existing image (`-n -c`) writes zeroes where
/// the source reads as zeros, as qemu-img does: the target's old data
/// there must not survive. The raw source's first block is data that reads
/// as zeros, so it lands in a compressed span as an all-zero cluster.
#[test]
fn compressed_copy_into_existing_target_zeroes_old_data() {
    let fx = Fixture::new("compressed_n");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.qemu_io_cmds("raw", "src.raw", &["write -P 0x55 2M 64k"]);
    for format in ["qcow2", "vmdk"] {
        for (tool, name) in [("qemu-img", "theirs"), ("qimg", "ours")] {
            let target = format!("{name}.{format}");
            fx.oracle(&["create", "-q", "-f", format, &target, "4M"]);
            fx.qemu_io_cmds(format, &target, &["write -P 0xaa 0 1M"]);
            let args = [
                "convert", "-n", "-c", "-f", "raw", "-O", format, "src.raw", &target,
            ];
            let out = if tool == "qimg" {
                fx.qimg(&args)
            } else {
                fx.qemu_img(&args)
            };
            assert_eq!(out.status, 0, "{tool} -O {format}: {}", out.stderr);
            fx.oracle(&["check", "-q", &target]);
            fx.oracle(&[
                "compare", "-q", "-f", "raw", "-F", format, "src.raw", &target,
            ]);
        }
    }
}

/// With -n, -B names what the target already holds, whatever its format:
/// only what the overlay holds above it is copied, as in qemu-img.
#[test]
fn no_create_with_backing_into_raw_copies_the_top_only() {
    let fx = Fixture::new("n_backing_raw");
    fx.oracle(&["create", "-q", "-f", "qcow2", "base.qcow2", "4M"]);
    fx.qemu_io_cmds("qcow2", "base.qcow2", &["write -P 1 0 4M"]);
    fx.make_overlay("top.qcow2", "base.qcow2");
    fx.qemu_io_cmds("qcow2", "top.qcow2", &["write -P 7 1M 64k"]);
    fx.oracle(&["create", "-q", "-f", "raw", "o.raw", "4M"]);
    fx.qemu_io_cmds("raw", "o.raw", &["write -P 9 0 4M"]);
    converted(
        &fx,
        &["convert", "-n", "-B", "base.qcow2", "top.qcow2", "{}"],
    );
}

/// `-B` with a source that has no backing file of its own: where the
/// source reads zeros the target must too, not show its backing file's
/// data through (qemu-img writes zeroes there).
#[test]
fn backing_target_hides_what_a_source_without_backing_lacks() {
    let fx = Fixture::new("backing_hides");
    for format in ["qcow2", "qed", "vmdk"] {
        fx.oracle(&["create", "-q", "-f", "qcow2", "back.qcow2", "1M"]);
        fx.qemu_io_cmds("qcow2", "back.qcow2", &["write -P 0xaa 0 1M"]);
        let src = format!("src.{format}");
        fx.oracle(&["create", "-q", "-f", format, &src, "1M"]);
        fx.qemu_io_cmds(format, &src, &["write -P 1 0 64k"]);
        for (tool, out) in [("qimg", "ours.qcow2"), ("qemu-img", "theirs.qcow2")] {
            let args = [
                "convert",
                "-O",
                "qcow2",
                "-B",
                "back.qcow2",
                "-F",
                "qcow2",
                &src,
                out,
            ];
            let done = if tool == "qimg" {
                fx.qimg(&args)
            } else {
                fx.qemu_img(&args)
            };
            assert_eq!(done.status, 0, "{tool} {format}: {}", done.stderr);
            fx.oracle(&["compare", &src, out]);
            fx.oracle(&["check", "-q", out]);
        }
    }
}

#[test]
fn target_is_zero_with_a_backing_file_writes_nothing() {
    // qemu-img refuses the promise for a target over a backing file, after
    // opening it, and exits 0 (its error path keeps the success status).
    let fx = Fixture::with_images("conv_tiz_backing");
    fx.oracle(&["create", "-q", "-f", "qcow2", "base.qcow2", "4M"]);
    fx.oracle(&["create", "-q", "-f", "qcow2", "o.qcow2", "2M"]);
    let out = fx.same_effect(
        &[
            "convert",
            "-n",
            "--target-is-zero",
            "-B",
            "base.qcow2",
            "-F",
            "qcow2",
            "-O",
            "qcow2",
            "mid.raw",
            "{}",
        ],
        "o.qcow2",
    );
    assert!(
        out.stderr.contains("Cannot use --target-is-zero"),
        "{out:?}"
    );
}

#[test]
fn compressed_writes_over_allocated_clusters_fail() {
    // qcow2 refuses a compressed cluster where one is allocated (EIO): the
    // copy stops at the first such cluster in both tools.
    let fx = Fixture::with_images("conv_compress_allocated");
    fx.oracle(&["create", "-q", "-f", "qcow2", "o.qcow2", "4M"]);
    fx.qemu_io_cmds("qcow2", "o.qcow2", &["write -P 0xee 1M 128k"]);
    let out = fx.same_effect(
        &["convert", "-n", "-c", "-O", "qcow2", "mid.raw", "{}"],
        "o.qcow2",
    );
    assert_eq!(out.status, 1, "{out:?}");
}

#[test]
fn copies_into_an_existing_stream_optimized_vmdk_are_compressed() {
    // qemu-img writes whole compressed grains into any streamOptimized
    // target, so `-n` into a qemu-made one works (qimg leaves the zero
    // grains out: same content, a smaller file).
    let fx = Fixture::with_images("conv_stream_n");
    for (name, tool) in [("ours", true), ("theirs", false)] {
        let file = format!("{name}.vmdk");
        fx.oracle(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            &file,
            "4M",
        ]);
        let args = ["convert", "-n", "-O", "vmdk", "mid.raw", &file];
        let out = if tool {
            fx.qimg(&args)
        } else {
            fx.qemu_img(&args)
        };
        assert_eq!(out.status, 0, "{name}: {}", out.stderr);
        fx.oracle(&["compare", "mid.raw", &file]);
        fx.oracle(&["check", &file]);
    }
}

/// `-F` without `-B` is a create option too: a target format without
/// backing files refuses it as qemu-img does, before compression is asked
/// about (qimg ignored it). `-c` into a target named by an option string
/// goes by the driver the string names (qimg took the default, raw, and
/// refused compression into a qcow2).
#[test]
fn backing_format_and_compression_go_by_the_target_s_format() {
    let fx = Fixture::new("convert_F_c");
    fx.oracle(&["create", "-q", "-f", "raw", "s.raw", "1M"]);
    fx.qemu_io("s.raw", "write -P 0xaa 0 64k");
    fx.oracle(&["create", "-q", "-f", "qcow2", "b.qcow2", "1M"]);
    for format in ["raw", "vdi", "vpc", "parallels"] {
        let out = fx.same(&[
            "convert", "-F", "qcow2", "-f", "raw", "s.raw", "-O", format, "t",
        ]);
        assert_eq!(out.status, 1, "{}", out.stderr);
    }
    fx.same(&[
        "convert", "-c", "-B", "b.qcow2", "-F", "qcow2", "-f", "raw", "s.raw", "-O", "raw", "t",
    ]);
    for name in ["ours.qcow2", "theirs.qcow2"] {
        fx.oracle(&["create", "-q", "-f", "qcow2", name, "1M"]);
    }
    let convert = [
        "convert",
        "-n",
        "-c",
        "-f",
        "raw",
        "s.raw",
        "--target-image-opts",
    ];
    let ours = fx.qimg(&[&convert[..], &["driver=qcow2,file.filename=ours.qcow2"]].concat());
    assert_eq!(ours.status, 0, "{}", ours.stderr);
    fx.oracle(&[&convert[..], &["driver=qcow2,file.filename=theirs.qcow2"]].concat());
    let map = |f: &str| fx.qemu_img(&["map", "--output=json", f]).stdout;
    assert_eq!(map("ours.qcow2"), map("theirs.qcow2"));
}

/// A raw source that ends inside a sector is copied in whole sectors, the
/// rest of its last one as zeros, as qemu-img copies it: with
/// `--target-is-zero` over a target that is not, qimg wrote the 3 bytes
/// alone and left the target's old bytes after them.
#[test]
fn a_source_ending_inside_a_sector_is_copied_to_the_sector_s_end() {
    let fx = Fixture::new("convert_odd_tail");
    let mut source = vec![0xaau8; 1 << 20];
    source.extend_from_slice(&[0xbb; 3]);
    std::fs::write(fx.path("s.raw"), &source).unwrap();
    for name in ["ours.raw", "theirs.raw"] {
        std::fs::write(fx.path(name), vec![0x77u8; (1 << 20) + 4096]).unwrap();
    }
    let args = [
        "convert",
        "-n",
        "--target-is-zero",
        "-f",
        "raw",
        "-O",
        "raw",
        "s.raw",
    ];
    let ours = fx.qimg(&[&args[..], &["ours.raw"]].concat());
    assert_eq!(ours.status, 0, "{}", ours.stderr);
    fx.oracle(&[&args[..], &["theirs.raw"]].concat());
    let same = std::fs::read(fx.path("ours.raw")).unwrap()
        == std::fs::read(fx.path("theirs.raw")).unwrap();
    assert!(same, "qimg's target differs from qemu-img's");
}
