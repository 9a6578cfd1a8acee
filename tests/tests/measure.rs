//! `measure`, against `qemu-img measure`.

use qimg_tests::{same_cases, Fixture};

same_cases! {
    size_human => ["measure", "--size", "1G", "-O", "raw"],
    size_json => ["measure", "-O", "raw", "--size", "1G", "--output=json"],
    size_2_63_json_is_int64 => ["measure", "-O", "raw", "--size", "9223372036854775807", "--output=json"],
    size_2_63_human => ["measure", "-O", "raw", "--size", "9223372036854775807"],
    luks_detached_header_unexpected => ["measure", "-O", "luks", "--object", "secret,id=sec0,data=abc", "-o", "key-secret=sec0,detached-header=on", "--size", "1M"],
    default_format => ["measure", "--size", "1G"],
    zero_size => ["measure", "--size", "0", "-O", "raw"],
    odd_size => ["measure", "--size", "1000", "-O", "raw"],
    bad_size => ["measure", "--size", "1X", "-O", "raw"],
    negative_size => ["measure", "--size", "-1", "-O", "raw"],
    huge_size => ["measure", "--size", "8E", "-O", "raw"],
    from_image => ["measure", "-O", "raw", "mid.raw"],
    from_image_json => ["measure", "-O", "raw", "--output=json", "mid.raw"],
    from_odd_image => ["measure", "-O", "raw", "odd.raw"],
    with_preallocation => ["measure", "-O", "raw", "-o", "preallocation=full", "mid.raw"],
    unknown_option => ["measure", "-O", "raw", "-o", "nosuch=1", "--size", "1M"],
    unknown_format => ["measure", "-O", "nosuch", "--size", "1M"],
    nothing_to_measure => ["measure", "-O", "raw"],
    size_and_file => ["measure", "-O", "raw", "--size", "1M", "mid.raw"],
    two_files => ["measure", "-O", "raw", "mid.raw", "full.raw"],
    missing_file => ["measure", "-O", "raw", "missing.raw"],
    bad_output => ["measure", "-O", "raw", "--output=bogus", "--size", "1M"],
    short_size_rejected => ["measure", "-s", "1M"],
}

#[test]
fn measure_with_a_backing_file_counts_every_cluster() {
    // qemu-img cannot know what the new image will share with its backing
    // file, so it counts the whole source as written.
    let fx = Fixture::with_images("measure_backing");
    fx.oracle(&["create", "-q", "-f", "qcow2", "base.qcow2", "4M"]);
    for args in [
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "backing_file=base.qcow2,backing_fmt=qcow2",
            "mid.raw",
        ][..],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "backing_file=base.qcow2",
            "--output=json",
            "mid.raw",
        ][..],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "backing_file=base.qcow2",
            "--size",
            "4M",
        ][..],
    ] {
        fx.same(args);
    }
}
