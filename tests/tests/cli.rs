//! The top-level command line: help, version, errors (`qemu-img` with no or a
//! bad command). Compared with the real qemu-img where output is defined by it.

use qimg_tests::{same_cases, Fixture};

same_cases! {
    no_arguments => [],
    unknown_command => ["foo"],
    unknown_long_option => ["--foo"],
    unknown_short_option => ["-z"],
    info_unknown_long_option => ["info", "--foo", "x"],
    info_invalid_short_option => ["info", "-z", "x"],
    info_missing_option_argument => ["info", "-f"],
    convert_missing_option_argument => ["convert", "-O"],
    create_unknown_option => ["create", "--preallocation=full", "x", "1M"],
    dd_invalid_option => ["dd", "-q", "if=a", "of=b"],
    resize_rejects_force_share => ["resize", "-f", "raw", "-U", "mid.raw", "2M"],
    snapshot_rejects_output => ["snapshot", "-l", "--output=json", "mid.raw"],
    map_bad_output => ["map", "--output=bogus", "mid.raw"],
    ambiguous_long_option => ["map", "--ma=1", "mid.raw"],
    ambiguity_names_the_whole_argument => ["info", "--o=json", "mid.raw"],
    ambiguity_lists_table_order => ["rebase", "--fo", "mid.raw"],
    abbreviated_trace => ["--tr", "foo", "info", "mid.raw"],
    bench_has_no_long_quiet => ["bench", "--quiet", "mid.raw"],
    bitmap_has_no_long_format => ["bitmap", "--format=raw", "--add", "mid.raw", "b"],
    rebase_compress_needs_a_compressing_format => ["rebase", "-f", "raw", "-c", "-u", "-b", "x", "-F", "raw", "mid.raw"],
    snapshot_list_twice => ["snapshot", "-l", "-l", "mid.raw"],
    snapshot_long_create_takes_no_name => ["snapshot", "--create", "s1", "mid.raw"],
}

#[test]
fn help_lists_commands_and_loaded_formats() {
    let fx = Fixture::new("help");
    let out = fx.qimg(&["--help"]);
    assert_eq!(out.status, 0);
    for command in [
        "amend", "bench", "bitmap", "check", "commit", "compare", "convert", "create", "dd",
        "info", "map", "measure", "rebase", "resize", "snapshot",
    ] {
        assert!(
            out.stdout.contains(&format!("  {command} - ")),
            "--help lacks {command}:\n{}",
            out.stdout
        );
    }
    let formats = out
        .stdout
        .split("Supported image formats:\n\n")
        .nth(1)
        .expect("formats section");
    // Every driver the workspace manifest enables (all of them), sorted.
    let manifest = std::fs::read_to_string(qimg_tests::workspace().join("plugins.toml")).unwrap();
    let mut names: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \""))
        .map(|rest| rest.trim_end_matches('"'))
        .collect();
    names.sort();
    assert_eq!(formats.split_whitespace().collect::<Vec<_>>(), names);
    assert_eq!(fx.qimg(&["-h"]), out);
}

#[test]
fn version_names_the_program() {
    let fx = Fixture::new("version");
    let out = fx.qimg(&["-V"]);
    assert_eq!(out.status, 0);
    assert!(
        out.stdout.starts_with("qemu-img version "),
        "{}",
        out.stdout
    );
    assert_eq!(fx.qimg(&["--version"]), out);
}

#[test]
fn trace_option_is_accepted() {
    let fx = Fixture::with_images("trace");
    let plain = fx.qimg(&["info", "mid.raw"]);
    // A pattern that matches nothing is silent; a plain name qemu-img (and
    // qimg) has no event for gets qemu-img's warning.
    assert_eq!(fx.qimg(&["-T", "foo*", "info", "mid.raw"]), plain);
    let named = fx.same(&["--trace", "enable=foo", "info", "mid.raw"]);
    assert_eq!(named.stdout, plain.stdout);
    assert_eq!(
        named.stderr,
        "qemu-img: warning: trace event 'foo' does not exist\n"
    );
}

#[test]
fn every_command_has_help() {
    let fx = Fixture::new("cmdhelp");
    for command in [
        "amend", "bench", "bitmap", "check", "commit", "compare", "convert", "create", "dd",
        "info", "map", "measure", "rebase", "resize", "snapshot",
    ] {
        let out = fx.qimg(&[command, "--help"]);
        assert_eq!(out.status, 0, "{command} --help");
        assert!(
            out.stdout.contains(&format!("qemu-img {command} ")),
            "{command} --help:\n{}",
            out.stdout
        );
        assert_eq!(fx.qimg(&[command, "-h"]).stdout, out.stdout);
    }
}

#[test]
fn messages_worded_as_qemu_img_words_them() {
    // Each is compared with qemu-img: stdout, stderr and exit status.
    let fx = Fixture::with_images("cli_messages");
    fx.oracle(&["create", "-q", "-f", "vmdk", "a.vmdk", "4M"]);
    std::fs::write(
        fx.path("events.txt"),
        "no_such_event\n# a comment\nqcow2*\n",
    )
    .unwrap();
    let cases: &[&[&str]] = &[
        &["check", "-r", "all", "a.vmdk"],
        &["check", "-r", "leaks", "--output=json", "a.vmdk"],
        &[
            "bench",
            "--pattern=300",
            "-w",
            "-c",
            "1",
            "-f",
            "raw",
            "mid2.raw",
        ],
        &[
            "bench",
            "--pattern=-1",
            "-w",
            "-c",
            "1",
            "-f",
            "raw",
            "mid2.raw",
        ],
        &[
            "bench",
            "--pattern=abc",
            "-w",
            "-c",
            "1",
            "-f",
            "raw",
            "mid2.raw",
        ],
        &[
            "create",
            "-f",
            "raw",
            "-o",
            "preallocation=metadata",
            "new.raw",
            "1M",
        ],
        &["info", "--object", "secret,id=s0", "mid.raw"],
        &["info", "--object", "bogus,id=x", "mid.raw"],
        &[
            "info",
            "--object",
            "secret,id=s0,data=x,format=bogus",
            "mid.raw",
        ],
        &[
            "info",
            "--object",
            "secret,id=s0,data=x,file=events.txt",
            "mid.raw",
        ],
        &["-T", "no_such_event", "info", "mid.raw"],
        &["-T", "qcow2*", "info", "mid.raw"],
        &["-T", "events=/nonexistent/events", "info", "mid.raw"],
        &["-T", "events=events.txt", "info", "mid.raw"],
        &["-T", "bogus=1", "info", "mid.raw"],
        &["--trace=enable=nothing", "info", "mid.raw"],
        &["info", "file:mid.raw"],
        &["info", "--output=json", "file:mid.raw"],
        &[
            "info",
            "json:{'driver': 'raw', 'file': {'driver': 'file', 'filename': 'mid.raw'}}",
        ],
        &[
            "map",
            "--output=json",
            "json:{'file': {'filename': 'mid.raw'}}",
        ],
    ];
    for args in cases {
        let _ = std::fs::remove_file(fx.path("new.raw"));
        fx.same(args);
    }
}

#[test]
fn image_opts_cache_keys_and_file_errors_as_qemu_img() {
    let fx = Fixture::with_images("cli_image_opts");
    let cases: &[&[&str]] = &[
        &[
            "info",
            "--image-opts",
            "driver=raw,file.filename=mid.raw,cache.direct=on",
        ],
        &[
            "info",
            "--image-opts",
            "driver=raw,file.filename=mid.raw,cache.no-flush=on",
        ],
        &[
            "info",
            "--image-opts",
            "driver=raw,file.filename=mid.raw,file.cache.direct=off",
        ],
        &[
            "info",
            "--image-opts",
            "driver=raw,file.filename=mid.raw,cache.direct=maybe",
        ],
        &[
            "compare",
            "--image-opts",
            "driver=raw,file.filename=mid.raw,cache.direct=on",
            "driver=raw,file.filename=mid2.raw",
        ],
        &[
            "info",
            "--image-opts",
            "driver=raw,file.bogus=1,file.filename=mid.raw",
        ],
        &["info", "--image-opts", "driver=raw"],
        &["info", "--image-opts", "driver=raw,file.driver=file"],
        &["info", "json:{\"driver\": \"raw\"}"],
        &[
            "info",
            "json:{\"driver\": \"raw\", \"file\": {\"driver\": \"file\"}}",
        ],
    ];
    for args in cases {
        fx.same(args);
    }
}

/// Output into a pipe whose reader has gone is dropped as C's `printf`
/// drops it: qemu-img ends normally, and so must qimg (a panic before).
#[test]
fn output_into_a_closed_pipe_ends_as_in_qemu_img() {
    let fx = Fixture::with_images("closed_pipe");
    let status = |tool: &str| {
        // `true` has exited before the tool, started later, writes.
        fx.sh(&format!(
            "(sleep 0.3; {tool} info mid.raw 2>&1; echo \"exit $?\" >&2) 2>status | true; cat status"
        ))
    };
    let theirs = status("qemu-img");
    assert_eq!(theirs, "exit 0\n");
    assert_eq!(
        status(&format!(
            "QIMG_PLUGINS={} .bin/qemu-img",
            fx.plugins().display()
        )),
        theirs
    );
}

/// The standard options follow getopt_long as qemu-img's do: long names
/// abbreviate, short letters bundle, and the first one read acts.
#[test]
fn standard_options_abbreviate_and_bundle() {
    let fx = Fixture::new("standard_options");
    let help = fx.qimg(&["--help"]);
    let version = fx.qimg(&["--version"]);
    assert_eq!(help.status, 0);
    assert_ne!(help.stdout, version.stdout);
    for (args, expected) in [
        (&["--he"][..], &help),
        (&["--h"], &help),
        (&["-hV"], &help),
        (&["--ver"], &version),
        (&["-Vh"], &version),
    ] {
        assert_eq!(&fx.qimg(args), expected, "{args:?}");
        // qemu-img answers each with its own help or version alike.
        let theirs = fx.qemu_img(args);
        let own = fx.qemu_img(&[if expected == &help {
            "--help"
        } else {
            "--version"
        }]);
        assert_eq!(theirs, own, "qemu-img {args:?}");
    }
}
