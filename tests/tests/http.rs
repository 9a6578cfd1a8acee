//! HTTP stores (issue 18): images served by a real nginx on loopback, read
//! through `http://` names as qemu-img reads them with its curl driver.
//! Answers are compared with qemu-img's on the same server; copies are
//! checked by the real `qemu-img compare`.

use qimg_tests::servers::{self, Server};
use qimg_tests::Fixture;

/// The images the server holds: a qcow2 and a raw image with data, made by
/// the oracle in `www/`.
fn served(fx: &Fixture) -> Server {
    std::fs::create_dir_all(fx.path("www")).expect("www");
    fx.make_qcow2("www/a.qcow2", "", "64M");
    fx.qemu_io_cmds(
        "qcow2",
        "www/a.qcow2",
        &[
            "write -P 0x61 1M 1M",
            "write -z 4M 64k",
            "write -P 0x62 60M 4k",
        ],
    );
    fx.oracle(&["create", "-q", "-f", "raw", "www/r.raw", "8M"]);
    fx.qemu_io_cmds(
        "raw",
        "www/r.raw",
        &["write -P 0x63 0 64k", "write -P 0x64 7M 3k"],
    );
    servers::nginx(&fx.path("www"), &fx.path("nginx"))
}

/// True if qemu-img has its curl driver here (Debian's qemu-block-extra).
fn qemu_has_curl(fx: &Fixture, url: &str) -> bool {
    let out = fx.qemu_img(&["info", url]);
    let ok = !out.stderr.contains("Unable to load module curl");
    if !ok {
        eprintln!("skipped comparisons: qemu-img lacks its curl driver");
    }
    ok
}

#[test]
fn info_map_and_compare_over_http_match_qemu_img() {
    if !servers::have("nginx") {
        return;
    }
    let fx = Fixture::new("http_info");
    let server = served(&fx);
    let qcow2 = format!("{}/a.qcow2", server.uri);
    let raw = format!("{}/r.raw", server.uri);
    if !qemu_has_curl(&fx, &qcow2) {
        return;
    }
    fx.same_info_and_map(&[&qcow2]);
    fx.same_info_and_map(&["-f", "raw", &raw]);
    let opts = format!("driver=qcow2,file.driver=http,file.url={qcow2}");
    fx.same(&["info", "--image-opts", &opts]);
    fx.same(&["check", &qcow2]);
    fx.same(&["compare", &qcow2, "www/a.qcow2"]);
    fx.same(&["compare", "-f", "raw", "-F", "raw", &raw, "www/r.raw"]);
    // A redirect is followed; the name stays the one given.
    let moved = format!("{}/moved/a.qcow2", server.uri);
    fx.same(&["info", &moved]);
}

#[test]
fn convert_from_http_gives_the_served_image() {
    if !servers::have("nginx") {
        return;
    }
    let fx = Fixture::new("http_convert");
    let server = served(&fx);
    let qcow2 = format!("{}/a.qcow2", server.uri);
    for (fmt, out) in [
        ("raw", "out.raw"),
        ("qcow2", "out.qcow2"),
        ("vmdk", "out.vmdk"),
    ] {
        let done = fx.qimg(&["convert", "-O", fmt, &qcow2, out]);
        assert_eq!(done.status, 0, "{}", done.stderr);
        fx.oracle(&["compare", "-F", fmt, "www/a.qcow2", out]);
    }
    let raw = format!("{}/r.raw", server.uri);
    let done = fx.qimg(&["convert", "-f", "raw", "-O", "raw", &raw, "r.raw"]);
    assert_eq!(done.status, 0, "{}", done.stderr);
    fx.same_raw("www/r.raw", "r.raw");
}

#[test]
fn http_errors_are_qemu_imgs() {
    if !servers::have("nginx") {
        return;
    }
    let fx = Fixture::new("http_errors");
    let server = served(&fx);
    let qcow2 = format!("{}/a.qcow2", server.uri);
    if !qemu_has_curl(&fx, &qcow2) {
        return;
    }
    // Missing file, and a write to a read-only store.
    fx.same(&["info", &format!("{}/nope.qcow2", server.uri)]);
    let raw = format!("{}/r.raw", server.uri);
    fx.same(&["convert", "-n", "-f", "raw", "-O", "raw", "www/r.raw", &raw]);
    // Nothing listening.
    let gone = format!("http://127.0.0.1:{}/x", servers::free_port());
    let ours = fx.qimg(&["info", &gone]);
    let theirs = fx.qemu_img(&["info", &gone]);
    assert_eq!(ours.status, theirs.status);
    assert!(
        ours.stderr.contains(&format!(
            "Could not open '{gone}': CURL: Error opening file: "
        )),
        "{}",
        ours.stderr
    );
}
