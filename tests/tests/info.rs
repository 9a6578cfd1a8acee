//! `info`, human and JSON, against `qemu-img info` on the same images.

use qimg_tests::{same_cases, Fixture};

same_cases! {
    empty_file_name => ["info", ""],
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
