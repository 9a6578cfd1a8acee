//! `info`, human and JSON, against `qemu-img info` on the same images.

use qimg_tests::{same_cases, Fixture};

same_cases! {
    empty_file_name => ["info", ""],
    node_options_taken => ["info", "--image-opts", "driver=raw,file.filename=mid.raw,read-only=on,auto-read-only=on,discard=unmap,detect-zeroes=unmap,node-name=n1,force-share=on"],
    file_node_options_taken => ["info", "--image-opts", "driver=raw,file.filename=mid.raw,file.aio=io_uring,file.node-name=f1,file.discard=unmap,file.drop-cache=off,file.x-check-cache-dropped=on,file.locking=auto,file.detect-zeroes=unmap"],
    bad_discard => ["info", "--image-opts", "driver=raw,file.filename=mid.raw,discard=bogus"],
    detect_zeroes_unmap_needs_discard => ["info", "--image-opts", "driver=raw,file.filename=mid.raw,detect-zeroes=unmap"],
    bad_node_name => ["info", "--image-opts", "driver=raw,file.filename=mid.raw,node-name=1n"],
    native_aio_needs_direct => ["info", "--image-opts", "driver=raw,file.filename=mid.raw,file.aio=native"],
    bad_locking => ["map", "--image-opts", "driver=raw,file.filename=mid.raw,file.locking=bogus"],
    no_pr_manager => ["info", "--image-opts", "driver=raw,file.filename=mid.raw,file.pr-manager=x"],
    read_only_node_refuses_writes => ["resize", "--image-opts", "driver=raw,file.filename=mid.raw,read-only=on", "2M"],
    force_share_needs_read_only => ["info", "--image-opts", "driver=raw,file.filename=mid.raw,force-share=on,read-only=off"],
    no_driver_no_file => ["info", "--image-opts", "filename=mid.raw"],
    filename_is_not_a_format_option => ["info", "--image-opts", "driver=raw,filename=mid.raw"],
    character_device => ["info", "/dev/null"],
    character_device_json => ["info", "--output=json", "/dev/null"],
    secret_properties => ["info", "--object", "secret,help", "mid.raw"],
    tls_properties => ["convert", "--object", "tls-creds-x509,id=t,help", "mid.raw", "o.raw"],
    check_bad_source_cache => ["check", "-T", "bogus", "mid.raw"],
    sparse_human => ["info", "mid.raw"],
    sparse_json => ["info", "--output=json", "mid.raw"],
    named_format => ["info", "-f", "raw", "mid.raw"],
    full_human => ["info", "full.raw"],
    full_json => ["info", "--output", "json", "full.raw"],
    empty_human => ["info", "empty.raw"],
    empty_json => ["info", "--output=json", "empty.raw"],
    odd_size_human => ["info", "odd.raw"],
    odd_size_json => ["info", "--output=json", "odd.raw"],
    backing_chain_human => ["info", "--backing-chain", "mid.raw"],
    backing_chain_json => ["info", "--backing-chain", "--output=json", "mid.raw"],
    force_share => ["info", "-U", "mid.raw"],
    image_opts => ["info", "--image-opts", "driver=raw,file.filename=mid.raw"],
    missing_file => ["info", "missing.raw"],
    directory => ["info", "."],
    no_file => ["info"],
    two_files => ["info", "mid.raw", "full.raw"],
    bad_output => ["info", "--output=bogus", "mid.raw"],
    abbreviated_output => ["info", "--out=json", "mid.raw"],
}

#[test]
fn large_sparse_image_sizes() {
    let fx = Fixture::new("large");
    fx.oracle(&["create", "-q", "-f", "raw", "huge.raw", "1.5T"]);
    fx.same(&["info", "huge.raw"]);
    fx.same(&["info", "--output=json", "huge.raw"]);
}

/// An overlay with a snapshot: qemu-img's JSON gives the backing format
/// before the snapshots (qimg gave them the other way round).
#[test]
fn overlay_with_snapshots_json() {
    let fx = Fixture::new("overlay_snapshots");
    fx.oracle(&["create", "-q", "-f", "qcow2", "base.qcow2", "1M"]);
    fx.make_overlay("top.qcow2", "base.qcow2");
    fx.oracle(&["snapshot", "-c", "s1", "top.qcow2"]);
    fx.same(&["info", "--output=json", "top.qcow2"]);
    fx.same(&["info", "--output=json", "--backing-chain", "top.qcow2"]);
}

/// Names outside printable ASCII are escaped as qemu's JSON writer escapes
/// them (`\u00E9`, a surrogate pair beyond the BMP, `\t`), in info and
/// check alike (qimg wrote them as raw UTF-8).
#[test]
fn json_escapes_like_qemu() {
    let fx = Fixture::new("json_escapes");
    for name in [
        "\u{e9}t\u{e9}.qcow2",
        "tab\there.qcow2",
        "\u{1F600}\u{7f}.qcow2",
    ] {
        fx.oracle(&["create", "-q", "-f", "qcow2", name, "1M"]);
        fx.same(&["info", "--output=json", name]);
        fx.same(&["check", "--output=json", name]);
    }
}
