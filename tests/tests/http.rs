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

/// `password-secret` and `cookie-secret` name `--object secret`s, as with
/// qemu-img's curl driver: the served image opens only with them, and
/// every answer and refusal is qemu-img's.
#[test]
fn secrets_open_protected_images_as_qemu_img_does() {
    if !servers::have("nginx") {
        return;
    }
    let fx = Fixture::new("http_secrets");
    let server = served(&fx);
    let private = format!("{}/private/r.raw", server.uri);
    let cookie = format!("{}/cookie/r.raw", server.uri);
    if !qemu_has_curl(&fx, &private) {
        return;
    }
    let secrets = [
        "--object",
        "secret,id=pw,data=hunter2",
        "--object",
        "secret,id=jar,data=session=s3cret",
    ];
    let node =
        |extra: &str, url: &str| format!("driver=raw,file.driver=http,file.url={url},{extra}");
    let with = |opts: &str, cmd: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec![cmd[0].to_string()];
        args.extend(secrets.iter().map(|s| s.to_string()));
        args.extend(cmd[1..].iter().map(|s| s.to_string()));
        args.extend(["--image-opts".to_string(), opts.to_string()]);
        args
    };
    let same = |opts: String, cmd: &[&str]| {
        let args = with(&opts, cmd);
        fx.same(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Opened with the secrets, the same image as the one served openly.
    let basic = node("file.username=qimg,file.password-secret=pw", &private);
    let out = same(basic.clone(), &["info", "--output=json"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    same(
        node("file.cookie-secret=jar", &cookie),
        &["map", "--output=json"],
    );
    let args = with(&basic, &["convert", "-O", "qcow2"]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push("out.qcow2");
    let out = fx.qimg(&args);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["compare", "out.qcow2", "www/r.raw"]);
    // Refusals: a wrong password, a missing secret, both cookie kinds.
    let wrong = node("file.username=qimg,file.password-secret=jar", &private);
    assert_ne!(same(wrong, &["info"]).status, 0);
    let missing = node("file.username=qimg,file.password-secret=nosuch", &private);
    let out = same(missing, &["info"]);
    assert!(
        out.stderr.contains("No secret with id 'nosuch'"),
        "{}",
        out.stderr
    );
    let both = node("file.cookie=a=b,file.cookie-secret=jar", &cookie);
    assert_ne!(same(both, &["info"]).status, 0);
}

#[test]
fn proxies_from_the_environment_are_used_as_curl_uses_them() {
    let fx = Fixture::new("http_proxy");
    let server = served(&fx);
    let url = format!("{}/r.raw", server.uri);
    let proxy = servers::forward_proxy(Some("qimg:s3cret"));
    let with = format!("http://qimg:s3cret@127.0.0.1:{}", proxy.port);
    let without = format!("127.0.0.1:{}", proxy.port);
    let seen = || proxy.requests.lock().unwrap().clone();
    // Through the proxy, in absolute form, with its credentials.
    let done = fx.qimg_env(
        &["convert", "-O", "raw", &url, "copy.raw"],
        &[("http_proxy", &with)],
    );
    assert_eq!(done.status, 0, "{}", done.stderr);
    fx.same_raw("www/r.raw", "copy.raw");
    assert!(
        seen().contains(&format!("HEAD {url} HTTP/1.1")),
        "{:?}",
        seen()
    );
    let compare = qemu_has_curl(&fx, &url);
    if compare {
        fx.same_env(&["info", &url], &[("http_proxy", &with)]);
        // A proxy that wants credentials, and one that is not there.
        fx.same_env(&["info", &url], &[("http_proxy", &without)]);
        fx.same_env(&["info", &url], &[("http_proxy", "127.0.0.1:9")]);
        // no_proxy's networks and entries that do not match, as curl
        // reads them (with no proxy listening, the proxy shows).
        for list in ["127.0.0.0/8", "10.0.0.0/8", "127.0.0.1:1", "*.0.0.1", "*"] {
            fx.same_env(
                &["info", &url],
                &[("http_proxy", "127.0.0.1:9"), ("no_proxy", list)],
            );
        }
    }
    // no_proxy and upper-case HTTP_PROXY leave the proxy out, as in curl.
    let before = seen().len();
    for env in [
        [
            ("http_proxy", with.as_str()),
            ("no_proxy", "localhost,127.0.0.1"),
        ],
        [("HTTP_PROXY", with.as_str()), ("no_proxy", "")],
    ] {
        let done = fx.qimg_env(&["info", &url], &env);
        assert_eq!(done.status, 0, "{}", done.stderr);
    }
    assert_eq!(seen().len(), before, "{:?}", seen());
}

#[test]
fn https_goes_through_a_proxy_tunnel() {
    if !servers::have("openssl") {
        return;
    }
    let fx = Fixture::new("https_proxy");
    std::fs::create_dir_all(fx.path("www")).expect("www");
    fx.oracle(&["create", "-q", "-f", "raw", "www/r.raw", "4M"]);
    fx.qemu_io_cmds("raw", "www/r.raw", &["write -P 0x66 1M 64k"]);
    let pki = fx.path("pki");
    servers::tls_certificates(&pki);
    let server = servers::nginx_with(
        &fx.path("www"),
        &fx.path("nginx"),
        Some(&pki.join("server")),
    );
    let proxy = servers::forward_proxy(None);
    let via = format!("http://127.0.0.1:{}", proxy.port);
    let url = format!("{}/r.raw", server.uri);
    let ca = pki.join("ca/ca-cert.pem");
    let ca = ca.to_str().unwrap();
    let done = fx.qimg_env(
        &["convert", "-O", "raw", &url, "copy.raw"],
        &[("https_proxy", &via), ("SSL_CERT_FILE", ca)],
    );
    assert_eq!(done.status, 0, "{}", done.stderr);
    fx.same_raw("www/r.raw", "copy.raw");
    let authority = server.uri.trim_start_matches("https://");
    let requests = proxy.requests.lock().unwrap().clone();
    assert!(
        requests.contains(&format!("CONNECT {authority} HTTP/1.1")),
        "{requests:?}"
    );
}

#[test]
fn proxy_login_options_log_in_where_the_proxy_url_does_not() {
    let fx = Fixture::new("http_proxy_login");
    let server = served(&fx);
    let url = format!("{}/r.raw", server.uri);
    if !qemu_has_curl(&fx, &url) {
        return;
    }
    let proxy = servers::forward_proxy(Some("qimg:s3cret"));
    let via = format!("http://127.0.0.1:{}", proxy.port);
    // Credentials in the proxy's URL win over the options.
    let wrong = format!("http://nobody:wrong@127.0.0.1:{}", proxy.port);
    let node = |user: &str, secret: &str| {
        format!(
            r#"json:{{"driver": "http", "url": "{url}", "proxy-username": "{user}", "proxy-password-secret": "{secret}"}}"#
        )
    };
    for (image, status, via) in [
        (node("qimg", "pw"), 0, &via),
        (node("qimg", "bad"), 1, &via),
        (node("qimg", "missing"), 1, &via),
        (node("qimg", "pw"), 1, &wrong),
    ] {
        let out = fx.same_env(
            &[
                "info",
                "--object",
                "secret,id=pw,data=s3cret",
                "--object",
                "secret,id=bad,data=nope",
                &image,
            ],
            &[("http_proxy", via.as_str())],
        );
        assert_eq!(out.status, status, "{image}: {}", out.stderr);
    }
}
