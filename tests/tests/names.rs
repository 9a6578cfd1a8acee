//! Image names as qemu-img reads them: a protocol prefix qimg does not
//! provide is refused (never taken for a local file), `file:` is stripped,
//! `json:` objects may not repeat a key, and an option string's repeated
//! key takes its last value. Every answer is compared with qemu-img's.

use qimg_tests::{same_cases, Fixture};

same_cases! {
    create_under_an_unknown_protocol => ["create", "-f", "qcow2", "x:y.qcow2", "1M"],
    convert_into_an_unknown_protocol => ["convert", "mid.raw", "x:y.raw"],
    dd_into_an_unknown_protocol => ["dd", "if=mid.raw", "of=x:y.raw"],
    create_at_a_json_name => ["create", "-f", "raw", "json:{\"driver\":\"file\",\"filename\":\"n.raw\"}", "1M"],
    convert_into_a_json_name => ["convert", "mid.raw", "json:{\"driver\":\"file\",\"filename\":\"n.raw\"}"],
    create_on_the_null_device => ["create", "-f", "raw", "null-co://", "1M"],
    data_file_under_an_unknown_protocol => ["create", "-f", "qcow2", "-o", "data_file=x:y.raw", "d.qcow2", "1M"],
    backing_under_an_unknown_protocol => ["create", "-f", "qcow2", "-b", "a:b.qcow2", "-F", "qcow2", "n.qcow2", "1M"],
    json_repeating_a_key => ["info", "json:{\"driver\":\"raw\",\"driver\":\"qcow2\",\"file\":{\"filename\":\"mid.raw\"}}"],
    json_repeating_a_nested_key => ["info", "json:{\"driver\":\"raw\",\"file\":{\"filename\":\"mid.raw\",\"filename\":\"x\"}}"],
    shared_against_force_share_off => ["info", "-U", "--image-opts", "driver=raw,file.filename=mid.raw,force-share=off"],
    convert_shared_against_force_share_off => ["convert", "-U", "--image-opts", "driver=raw,file.filename=mid.raw,force-share=off", "o.raw"],
    option_string_repeating_a_key => ["info", "--image-opts", "driver=raw,file.filename=mid.raw,size=1M,size=2M"],
    json_numbers_stay_numbers => ["info", "--output=json", "json:{\"driver\":\"raw\",\"offset\":512,\"size\":1048576,\"file\":{\"filename\":\"mid.raw\"}}"],
}

#[test]
fn a_file_named_like_a_protocol_is_neither_read_nor_written() {
    let fx = Fixture::with_images("names_colon");
    fx.sh("cp mid.raw a:b.raw");
    let before = std::fs::read(fx.path("a:b.raw")).unwrap();
    for args in [
        &["info", "a:b.raw"][..],
        &["map", "a:b.raw"],
        &["resize", "-f", "raw", "a:b.raw", "8M"],
        &["convert", "a:b.raw", "o.raw"],
    ] {
        let out = fx.same(args);
        assert!(out.stderr.contains("Unknown protocol 'a'"), "{out:?}");
    }
    assert_eq!(std::fs::read(fx.path("a:b.raw")).unwrap(), before);
}

#[test]
fn a_file_prefix_names_the_file_after_it() {
    let fx = Fixture::with_images("names_file_prefix");
    fx.same(&["create", "-f", "raw", "file:n.raw", "1M"]);
    fx.same(&["convert", "mid.raw", "file:o.raw"]);
    assert!(fx.path("n.raw").exists() && fx.path("o.raw").exists());
    assert!(!fx.path("file:n.raw").exists() && !fx.path("file:o.raw").exists());
}

#[test]
fn creation_on_a_fifo_fails_without_waiting_for_a_reader() {
    let fx = Fixture::with_images("names_fifo");
    fx.sh("mkfifo f");
    let out = fx.same(&["create", "-f", "raw", "f", "1M"]);
    assert!(out.stderr.contains("Could not resize file"), "{out:?}");
}

#[test]
fn a_failed_creation_keeps_a_symbolic_link_it_did_not_make() {
    // The link points into a directory that does not exist: creating the
    // image fails, and the link stays (qimg removed it as its own).
    let fx = Fixture::with_images("names_symlink");
    fx.sh("ln -s nowhere/x.raw link.raw");
    fx.same(&["create", "-f", "raw", "link.raw", "1M"]);
    fx.same(&["convert", "mid.raw", "link.raw"]);
    assert!(std::fs::symlink_metadata(fx.path("link.raw")).is_ok());
}

#[test]
fn encryption_options_for_a_plain_image_are_refused() {
    let fx = Fixture::with_images("names_encrypt_plain");
    fx.make_qcow2("q.qcow2", "", "1M");
    for format in ["luks", "aes", "bogus"] {
        let opts = format!("driver=qcow2,file.filename=q.qcow2,encrypt.format={format}");
        let out = fx.same(&["info", "--image-opts", &opts]);
        assert_eq!(out.status, 1, "{out:?}");
    }
}

#[test]
fn check_reports_the_name_as_given() {
    let fx = Fixture::with_images("names_check_json");
    fx.make_qcow2("q.qcow2", "", "1M");
    fx.same(&[
        "check",
        "--output=json",
        "--image-opts",
        "driver=qcow2,file.filename=q.qcow2",
    ]);
    fx.same(&[
        "check",
        "--output=json",
        "json:{\"driver\":\"qcow2\",\"file\":{\"filename\":\"q.qcow2\"}}",
    ]);
    fx.same(&["check", "--output=json", "file:q.qcow2"]);
}

#[test]
fn a_data_file_named_with_file_prefix_is_recorded_without_it() {
    let fx = Fixture::with_images("names_data_file_prefix");
    fx.same(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "data_file=file:d.raw",
        "q.qcow2",
        "1M",
    ]);
    let info = fx.oracle(&["info", "q.qcow2"]);
    assert!(
        info.stdout.contains("data file: d.raw\n"),
        "{}",
        info.stdout
    );
}
