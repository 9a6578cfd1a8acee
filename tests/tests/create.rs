//! `create`, compared with `qemu-img create`: printed line, exit status and
//! the file it leaves (size, allocation, map, content).

use qimg_tests::{same_cases, Fixture};

same_cases! {
    vmdk_metadata_preallocation => ["create", "-f", "vmdk", "-o", "preallocation=metadata", "o.vmdk", "1M"],
    data_file_missing_directory => ["create", "-f", "qcow2", "-o", "data_file=nodir/o.data", "o.qcow2", "1M"],
    no_file_name => ["create"],
    unsafe_backing_without_format => ["create", "-f", "qcow2", "-u", "-b", "nonexist", "x", "1M"],
    unsafe_backing_without_format_or_size => ["create", "-f", "qcow2", "-u", "-b", "mid.raw", "x"],
    size_past_off_t => ["create", "-f", "raw", "x", "9223372036854775807"],
    empty_backing_name => ["create", "-f", "qcow2", "-b", "", "x", "1M"],
    empty_option_list => ["create", "-f", "qcow2", "-o", "", "x", "1M"],
    option_list_leading_comma => ["create", "-f", "qcow2", "-o", ",cluster_size=4k", "x", "1M"],
    option_list_trailing_comma => ["create", "-f", "qcow2", "-o", "cluster_size=4k,", "x", "1M"],
    object_before_options_in_ambiguity => ["create", "--o=x", "x", "1M"],
    no_size => ["create", "-f", "raw", "x"],
    bad_suffix => ["create", "x", "1X"],
    fraction_without_unit => ["create", "x", "1.5"],
    negative_size => ["create", "--", "x", "-1"],
    size_too_large => ["create", "x", "8E"],
    unknown_format => ["create", "-f", "nosuchfmt", "x", "1M"],
    help_raw => ["create", "-f", "raw", "-o", "help"],
    help_question_mark => ["create", "-f", "raw", "-o", "?"],
    help_with_file => ["create", "-f", "raw", "-o", "help", "x", "1M"],
    help_default_format => ["create", "-o", "help"],
    unknown_option => ["create", "-f", "raw", "-o", "nosuchopt=1", "x", "1M"],
    bad_size_option => ["create", "-f", "raw", "-o", "size=bogus", "x"],
    size_twice => ["create", "-f", "raw", "-o", "size=1M", "x", "1M"],
    backing_unsupported => ["create", "-f", "raw", "-b", "mid.raw", "x", "1M"],
    bool_options_echo_as_typed => ["create", "-f", "qcow2", "-o", "lazy_refcounts=yes,extended_l2=false", "x", "1M"],
    backing_format_unsupported => ["create", "-f", "vdi", "-F", "raw", "x", "1M"],
    vmdk_backing_format_not_vmdk => ["create", "-f", "vmdk", "-F", "raw", "x", "1M"],
    own_backing_file_even_unchecked => ["create", "-f", "qcow2", "-u", "-b", "x", "-F", "qcow2", "x", "1M"],
    // Without a format, qimg made the image plain.
    qcow2_encrypt_option_without_format => ["create", "-f", "qcow2", "-o", "encrypt.key-secret=sec0", "x", "1M"],
    qcow2_luks_option_with_aes => ["create", "-f", "qcow2", "-o", "encryption=on,encrypt.iter-time=10", "x", "1M"],
    size_option_negative => ["create", "-f", "raw", "-o", "size=-1", "x"],
    size_option_past_64_bits => ["create", "-f", "qcow2", "-o", "size=16E", "x"],
    size_option_negative_with_suffix => ["create", "-f", "raw", "-o", "size=-1k", "x"],
    size_digits_overflow_before_suffix => ["create", "x", "99999999999999999999k"],
    // qcow2's checks, in qemu's order: unparsable values first, then the
    // combinations, the cipher's secret last.
    qcow2_bad_encrypt_format => ["create", "-f", "qcow2", "-o", "encrypt.format=xx,preallocation=foo", "x", "1M"],
    qcow2_compression_type_before_lazy => ["create", "-f", "qcow2", "-o", "compression_type=foo,compat=0.10,lazy_refcounts=on", "x", "1M"],
    qcow2_cluster_size_before_secret => ["create", "-f", "qcow2", "-o", "encryption=on,compat=0.10,cluster_size=3", "x", "1M"],
    qcow2_extended_l2_before_backing_format => ["create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=8k,backing_fmt=qcow2", "x", "1M"],
    qcow2_lazy_before_data_file_raw => ["create", "-f", "qcow2", "-o", "data_file_raw=on,compat=0.10,lazy_refcounts=on", "x", "1M"],
    qcow2_backing_with_preallocation => ["create", "-f", "qcow2", "-b", "mid.raw", "-F", "raw", "-o", "preallocation=metadata", "x", "4M"],
    qcow2_too_large_for_small_clusters => ["create", "-f", "qcow2", "-o", "cluster_size=512", "x", "4E"],
}

fn created(args: &[&str], name: &str) {
    let fx = Fixture::new(name);
    fx.same_effect(args, "x.raw");
}

#[test]
fn one_mebibyte() {
    created(&["create", "-f", "raw", "{}", "1M"], "c1m");
}

#[test]
fn default_format_is_raw() {
    created(&["create", "{}", "64k"], "cdefault");
}

#[test]
fn sizes_and_suffixes() {
    for (i, size) in [
        "0",
        "1",
        "511",
        "512",
        "1000",
        "4095",
        "4096",
        "1k",
        "1.5M",
        "0x1000",
        "1G",
        "512b",
        "1.1k",
        "1.0009k",
        "0.9999k",
        "0.00048828125k",
        "+1M",
        ".5M",
        "1.",
        "0x10b",
        "0x1M",
        "1.5b",
        "0x10k",
        ".",
    ]
    .iter()
    .enumerate()
    {
        created(&["create", "{}", size], &format!("csize{i}"));
    }
}

#[test]
fn quiet() {
    created(&["create", "-q", "{}", "1M"], "cquiet");
}

#[test]
fn preallocation_modes() {
    for mode in ["off", "falloc", "full"] {
        created(
            &[
                "create",
                "-f",
                "raw",
                "-o",
                &format!("preallocation={mode}"),
                "{}",
                "1M",
            ],
            &format!("cpre{mode}"),
        );
    }
}

#[test]
fn bad_preallocation() {
    created(
        &[
            "create",
            "-f",
            "raw",
            "-o",
            "preallocation=bogus",
            "{}",
            "1M",
        ],
        "cprebad",
    );
}

#[test]
fn options_print_in_qemu_order() {
    created(
        &[
            "create",
            "-f",
            "raw",
            "-o",
            "extent_size_hint=1M,nocow=on,preallocation=falloc",
            "{}",
            "1M",
        ],
        "corder",
    );
}

#[test]
fn overwrites_an_existing_file() {
    let fx = Fixture::with_images("coverwrite");
    std::fs::copy(fx.path("full.raw"), fx.path("x.raw")).unwrap();
    fx.same_effect(&["create", "{}", "2M"], "x.raw");
}

#[test]
fn missing_directory() {
    let fx = Fixture::new("cnodir");
    fx.same(&["create", "nodir/x.raw", "1M"]);
}

#[test]
fn json_backing_names_are_not_joined_onto_the_image_directory() {
    // A json: backing name holds its own paths (the process's, as qemu
    // takes them); option values with commas print as an option string
    // writes them, commas doubled.
    let fx = Fixture::new("create_json_backing");
    fx.make_qcow2("a.qcow2", "", "1M");
    fx.sh("mkdir sub && cp a.qcow2 'c,d.qcow2'");
    let json = r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"a.qcow2"}}"#;
    for target in ["sub/x.qcow2", "x.qcow2"] {
        let out = fx.same(&["create", "-f", "qcow2", "-b", json, "-F", "qcow2", target]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        assert!(
            out.stdout.contains(r#"{"driver":"qcow2",,"file""#),
            "{}",
            out.stdout
        );
    }
    let out = fx.same(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "c,d.qcow2",
        "-F",
        "qcow2",
        "e.qcow2",
    ]);
    assert!(
        out.stdout.contains("backing_file=c,,d.qcow2 "),
        "{}",
        out.stdout
    );
    // The overlay qimg wrote opens through its json: backing name.
    fx.qimg(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        json,
        "-F",
        "qcow2",
        "sub/o.qcow2",
    ]);
    let info = fx.oracle(&["info", "--output=json", "sub/o.qcow2"]).stdout;
    assert!(info.contains("\"backing-filename\": \"json:"), "{info}");
    fx.oracle(&["compare", "a.qcow2", "sub/o.qcow2"]);
}
