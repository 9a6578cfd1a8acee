//! NBD stores (issue 18): images on exports of a real qemu-nbd and a real
//! nbdkit, on unix sockets and loopback TCP, named as qemu-img names them
//! (`nbd://`, `nbd+unix://`, `--image-opts file.driver=nbd`, `json:`).
//! Reads are compared with qemu-img's answers on the same exports, and what
//! qimg writes is checked by the real `qemu-img compare` and `check`.

use qimg_tests::servers::{self, Server};
use qimg_tests::Fixture;
use std::time::{Duration, Instant};

/// A raw image with data, a hole and written zeros, made by the oracle.
fn patterned_raw(fx: &Fixture, name: &str) {
    fx.oracle(&["create", "-q", "-f", "raw", name, "64M"]);
    fx.qemu_io_cmds(
        "raw",
        name,
        &[
            "write -P 0x11 0 64k",
            "write -P 0x22 1M 1M",
            "write -z 8M 1M",
            "write -P 0x33 63M 512",
        ],
    );
}

/// A qcow2 image with data and zero clusters, made by the oracle.
fn patterned_qcow2(fx: &Fixture, name: &str) {
    fx.make_qcow2(name, "", "64M");
    fx.qemu_io_cmds(
        "qcow2",
        name,
        &[
            "write -P 0x44 2M 1M",
            "write -z 4M 1M",
            "write -P 0x55 60M 4k",
        ],
    );
}

/// Waits for `child` to exit; a minute without is a hang.
fn exit_within_a_minute(child: &mut std::process::Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "qimg hangs");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unix_server(fx: &Fixture, file: &str, format: &str, args: &[&str]) -> Server {
    servers::qemu_nbd_unix(&fx.path(file), format, "exp", &fx.path("nbd.sock"), args)
}

#[test]
fn info_and_map_over_qemu_nbd_match_qemu_img() {
    if !servers::have("qemu-nbd") {
        return;
    }
    let fx = Fixture::new("nbd_info_map");
    patterned_raw(&fx, "a.raw");
    patterned_qcow2(&fx, "b.qcow2");
    // A raw export on a unix socket, and a qcow2 file served as bytes on
    // TCP (the format is probed over the network).
    let raw = unix_server(&fx, "a.raw", "raw", &["-r"]);
    let qcow2 = servers::qemu_nbd_tcp(&fx.path("b.qcow2"), "raw", "q", &["-r"]);
    fx.same_info_and_map(&[&raw.uri]);
    fx.same_info_and_map(&["-f", "raw", &raw.uri]);
    fx.same_info_and_map(&[&qcow2.uri]);
    // Other spellings of the same nodes name them as qemu-img does.
    let port = qcow2
        .uri
        .split(':')
        .nth(2)
        .and_then(|p| p.split('/').next());
    let port = port.expect("port in uri");
    let opts =
        format!("driver=qcow2,file.driver=nbd,file.host=127.0.0.1,file.port={port},file.export=q");
    fx.same(&["info", "--image-opts", &opts]);
    fx.same(&["map", "--output=json", "--image-opts", &opts]);
    let socket = fx.path("nbd.sock");
    let json = format!(
        r#"json:{{"driver":"raw","file":{{"driver":"nbd","server":{{"type":"unix","path":"{}"}},"export":"exp"}}}}"#,
        socket.display()
    );
    fx.same(&["info", "--output=json", &json]);
    fx.same(&["check", &qcow2.uri]);
    fx.same(&["compare", &raw.uri, "a.raw"]);
    fx.same(&["compare", "-F", "qcow2", &qcow2.uri, "b.qcow2"]);
    fx.same(&["compare", "a.raw", &qcow2.uri]);
}

#[test]
fn connection_errors_are_qemu_imgs() {
    if !servers::have("qemu-nbd") {
        return;
    }
    let fx = Fixture::new("nbd_errors");
    patterned_raw(&fx, "a.raw");
    let server = servers::qemu_nbd_tcp(&fx.path("a.raw"), "raw", "exp", &[]);
    let base = server.uri.trim_end_matches("/exp").to_string();
    let refused = format!("nbd://127.0.0.1:{}/x", servers::free_port());
    let no_socket = format!("nbd+unix:///x?socket={}", fx.path("none.sock").display());
    for name in [format!("{base}/nope"), base.clone(), refused, no_socket] {
        let out = fx.same(&["info", &name]);
        assert_eq!(out.status, 1, "{name}: {}", out.stderr);
    }
}

#[test]
fn convert_from_and_to_qemu_nbd_exports() {
    if !servers::have("qemu-nbd") {
        return;
    }
    let fx = Fixture::new("nbd_convert");
    patterned_raw(&fx, "a.raw");
    patterned_qcow2(&fx, "b.qcow2");
    let source = servers::qemu_nbd_tcp(&fx.path("b.qcow2"), "raw", "q", &["-r"]);
    // From the network: a qcow2 read over NBD, to local raw and qcow2.
    for (fmt, out) in [("raw", "out.raw"), ("qcow2", "out.qcow2")] {
        let done = fx.qimg(&["convert", "-O", fmt, &source.uri, out]);
        assert_eq!(done.status, 0, "{}", done.stderr);
        fx.oracle(&["compare", "-F", fmt, "b.qcow2", out]);
    }
    // To the network: into an existing export, with -n and without.
    fx.oracle(&["create", "-q", "-f", "raw", "target.raw", "64M"]);
    let target = unix_server(&fx, "target.raw", "raw", &[]);
    let done = fx.qimg(&["convert", "-n", "-O", "raw", "a.raw", &target.uri]);
    assert_eq!(done.status, 0, "{}", done.stderr);
    fx.oracle(&["compare", "-f", "raw", "-F", "raw", "a.raw", &target.uri]);
    let done = fx.qimg(&["convert", "-O", "raw", "b.qcow2", &target.uri]);
    assert_eq!(done.status, 0, "{}", done.stderr);
    fx.oracle(&["compare", "-F", "raw", "b.qcow2", &target.uri]);
    // A qcow2 image written onto the export passes the real check.
    let done = fx.qimg(&["convert", "-O", "qcow2", "a.raw", &target.uri]);
    assert_eq!(done.status, 0, "{}", done.stderr);
    fx.oracle(&["check", &target.uri]);
    fx.oracle(&["compare", "-F", "qcow2", "a.raw", &target.uri]);
}

#[test]
fn create_and_writes_that_nbd_cannot_do_fail_as_in_qemu_img() {
    if !servers::have("qemu-nbd") {
        return;
    }
    let fx = Fixture::new("nbd_refusals");
    fx.oracle(&["create", "-q", "-f", "raw", "t.raw", "4M"]);
    let target = unix_server(&fx, "t.raw", "raw", &[]);
    // Larger than the export, or preallocated: qemu-img's messages.
    fx.same(&["create", "-f", "raw", &target.uri, "8M"]);
    fx.same(&[
        "create",
        "-f",
        "raw",
        "-o",
        "preallocation=full",
        &target.uri,
        "1M",
    ]);
    fx.same(&["create", "-f", "raw", &target.uri, "1M"]);
    drop(target);
    // A read-only export refuses writers.
    let _ = std::fs::remove_file(fx.path("nbd.sock"));
    let ro = unix_server(&fx, "t.raw", "raw", &["-r"]);
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.same(&["convert", "-n", "-O", "raw", "src.raw", &ro.uri]);
    fx.same(&["create", "-f", "qcow2", &ro.uri, "1M"]);
    // An http store is read-only: creation is refused before anything.
    let url = "http://127.0.0.1:9/new.qcow2";
    fx.same(&["create", "-f", "qcow2", url, "1M"]);
    fx.same(&["convert", "-O", "qcow2", "src.raw", url]);
    fx.same(&["dd", "if=src.raw", &format!("of={url}")]);
}

#[test]
fn nbdkit_exports_read_write_and_map_as_in_qemu_img() {
    if !servers::have("nbdkit") {
        return;
    }
    let fx = Fixture::new("nbdkit");
    patterned_raw(&fx, "a.raw");
    // The memory plugin allows several connections at once (multi-conn).
    let server = servers::nbdkit_unix(&fx.path("kit.sock"), &["memory", "64M"]);
    let done = fx.qimg(&["convert", "-n", "-O", "raw", "a.raw", &server.uri]);
    assert_eq!(done.status, 0, "{}", done.stderr);
    fx.oracle(&["compare", "-f", "raw", "-F", "raw", "a.raw", &server.uri]);
    fx.same_info_and_map(&["-f", "raw", &server.uri]);
    let done = fx.qimg(&["convert", "-O", "raw", &server.uri, "back.raw"]);
    assert_eq!(done.status, 0, "{}", done.stderr);
    fx.same_raw("a.raw", "back.raw");
    fx.same(&["compare", "a.raw", &server.uri]);
}

#[test]
fn a_server_killed_mid_copy_fails_the_convert() {
    if !servers::have("nbdkit") {
        return;
    }
    let fx = Fixture::new("nbd_killed");
    // Every read waits 100 ms, so a 1 GiB copy takes seconds (8 requests
    // of 2 MiB in flight: 6 s and more).
    let mut server = servers::nbdkit_unix(
        &fx.path("kit.sock"),
        &["--filter=delay", "pattern", "1G", "rdelay=100ms"],
    );
    let mut child = fx.spawn_qimg(&["convert", "-O", "qcow2", &server.uri, "out.qcow2"]);
    std::thread::sleep(Duration::from_millis(500));
    server.kill();
    let status = exit_within_a_minute(&mut child);
    assert!(!status.success(), "convert succeeded without its server");
    assert!(
        !fx.path("out.qcow2").exists(),
        "a half-written target was left behind"
    );
}

/// qimg killed while it writes a new image onto an export leaves nothing
/// there that opens as an image (qemu-img leaves a qcow2 with part of the
/// data): the header is veiled until the copy is done.
#[test]
fn a_copy_onto_an_export_killed_midway_leaves_no_image_there() {
    if !servers::have("qemu-nbd") {
        return;
    }
    let fx = Fixture::new("nbd_killed_writer");
    forty_mib_of_data(&fx, "a.raw");
    fx.oracle(&["create", "-q", "-f", "raw", "target.raw", "64M"]);
    let target = unix_server(&fx, "target.raw", "raw", &["-e", "2"]);
    // -r 8M: five seconds of copying, killed after the first.
    let mut child = fx.spawn_qimg(&["convert", "-r", "8M", "-O", "qcow2", "a.raw", &target.uri]);
    std::thread::sleep(Duration::from_millis(1000));
    child.kill().expect("kill qimg");
    exit_within_a_minute(&mut child);
    // Killed with part of the data written.
    let (_, blocks) = qimg_tests::file_shape(&fx.path("target.raw"));
    let allocated = blocks * 512;
    assert!((2 << 20..40 << 20).contains(&allocated), "{allocated}");
    let info = fx.qemu_img(&["info", "-f", "qcow2", &target.uri]);
    assert_ne!(
        info.status, 0,
        "the export opens as qcow2:\n{}",
        info.stdout
    );
    // The same copy left to finish is the source's.
    let done = fx.qimg(&["convert", "-O", "qcow2", "a.raw", &target.uri]);
    assert_eq!(done.status, 0, "{}", done.stderr);
    fx.oracle(&["compare", "-F", "qcow2", "a.raw", &target.uri]);
}

/// A raw image of 64 MiB whose first 40 MiB are data: more than two of the
/// store's write-behind steps (16 MiB).
fn forty_mib_of_data(fx: &Fixture, name: &str) {
    fx.oracle(&["create", "-q", "-f", "raw", name, "64M"]);
    fx.qemu_io_cmds("raw", name, &["write -P 0x5a 0 40M"]);
}

#[test]
fn writes_are_flushed_while_the_copy_goes_on() {
    if !servers::have("nbdkit") {
        return;
    }
    let fx = Fixture::new("nbd_write_behind");
    forty_mib_of_data(&fx, "a.raw");
    let log = fx.path("kit.log");
    let logfile = format!("logfile={}", log.display());
    let server = servers::nbdkit_unix(
        &fx.path("kit.sock"),
        &["--filter=log", "memory", "64M", &logfile],
    );
    let done = fx.qimg(&["convert", "-n", "-O", "raw", "a.raw", &server.uri]);
    assert_eq!(done.status, 0, "{}", done.stderr);
    fx.oracle(&["compare", "-f", "raw", "-F", "raw", "a.raw", &server.uri]);
    // The server is asked to write back before the copy ends, not only
    // by the final flush.
    let text = String::from_utf8_lossy(&std::fs::read(&log).expect("nbdkit log")).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let first_flush = lines.iter().position(|l| l.contains(" Flush id="));
    let last_write = lines.iter().rposition(|l| l.contains(" Write id="));
    match (first_flush, last_write) {
        (Some(flush), Some(write)) => assert!(flush < write, "no flush before the last write"),
        _ => panic!("no flush or no write in the log:\n{text}"),
    }
}

/// A copy into an export writes whole requests: 1 MiB into a server on
/// this machine (a unix socket), the size qemu-nbd serves with the least
/// work (256 KiB steps cost it 10% more CPU, 2 MiB buffers make its
/// allocator fault memory back in), and qemu-img's whole 2 MiB items over
/// TCP, where each request costs a round trip (in 256 KiB steps a copy
/// into a server answering writes in 10 ms took four times as long).
/// The `count=0x...` of a request that nbdkit's log filter logged.
fn logged_count(request: &str) -> u64 {
    let hex = request.split("count=0x").nth(1).expect("a count");
    let hex = hex.split_whitespace().next().expect("a count");
    u64::from_str_radix(hex, 16).expect("hex count")
}

#[test]
fn a_copy_into_an_export_writes_whole_requests() {
    if !servers::have("nbdkit") {
        return;
    }
    let fx = Fixture::new("nbd_write_sizes");
    forty_mib_of_data(&fx, "a.raw");
    let log = fx.path("kit.log");
    let logfile = format!("logfile={}", log.display());
    let plugin = ["--filter=log", "memory", "64M", logfile.as_str()];
    for (tcp, size) in [(false, 1u64 << 20), (true, 2 << 20)] {
        let _ = std::fs::remove_file(&log);
        let server = if tcp {
            servers::nbdkit_tcp(&plugin)
        } else {
            servers::nbdkit_unix(&fx.path("kit.sock"), &plugin)
        };
        let done = fx.qimg(&["convert", "-n", "-O", "raw", "a.raw", &server.uri]);
        assert_eq!(done.status, 0, "{}", done.stderr);
        fx.oracle(&["compare", "-f", "raw", "-F", "raw", "a.raw", &server.uri]);
        drop(server);
        let text = std::fs::read_to_string(&log).expect("nbdkit log");
        let sizes: Vec<u64> = text
            .lines()
            .filter_map(|line| line.split(" Write id=").nth(1))
            .map(logged_count)
            .collect();
        assert_eq!(sizes.iter().sum::<u64>(), 40 << 20, "{sizes:?}");
        assert!(
            sizes.iter().all(|&n| n == size),
            "tcp {tcp}: writes of {sizes:?}"
        );
    }
}

#[test]
fn a_write_back_failure_the_server_reports_once_fails_the_convert() {
    if !servers::have("nbdkit") {
        return;
    }
    let fx = Fixture::new("nbd_flush_failure");
    forty_mib_of_data(&fx, "a.raw");
    fx.oracle(&["create", "-q", "-f", "raw", "disk.img", "64M"]);
    // A server whose first flush fails and every later one succeeds, as
    // Linux reports a failed write-back to one fsync only. The first flush
    // is the one sent in the background: the final flush succeeds, and the
    // copy must fail all the same. (qemu-img, whose only flush is the
    // final one, ignores its failure and exits 0.)
    let disk = fx.path("disk.img");
    let marker = fx.path("failed");
    let (disk, marker) = (disk.display(), marker.display());
    let scripts = [
        format!("get_size=stat -Lc %s {disk}"),
        format!("pread=dd if={disk} skip=$4 count=$3 iflag=count_bytes,skip_bytes status=none"),
        format!("pwrite=dd of={disk} seek=$4 conv=notrunc oflag=seek_bytes status=none"),
        format!(
            "flush=if [ -e {marker} ]; then exit 0; fi; touch {marker}; \
             echo 'EIO write-back failed' >&2; exit 1"
        ),
    ];
    let mut args = vec!["eval"];
    args.extend(scripts.iter().map(String::as_str));
    let server = servers::nbdkit_unix(&fx.path("kit.sock"), &args);
    let done = fx.qimg(&["convert", "-n", "-O", "raw", "a.raw", &server.uri]);
    assert_eq!(done.status, 1, "{}", done.stderr);
    assert!(
        done.stderr.contains("Input/output error"),
        "{}",
        done.stderr
    );
    assert!(fx.path("failed").exists(), "the server saw no flush");
}

#[test]
fn tls_exports_read_and_write_as_in_qemu_img() {
    if !servers::have("qemu-nbd") || !servers::have("openssl") {
        return;
    }
    let fx = Fixture::new("nbd_tls");
    let pki = fx.path("pki");
    servers::tls_certificates(&pki);
    patterned_raw(&fx, "a.raw");
    fx.oracle(&["create", "-q", "-f", "raw", "t.raw", "64M"]);
    let server_creds = format!(
        "tls-creds-x509,id=s0,dir={},endpoint=server",
        pki.join("server").display()
    );
    let tls = ["--object", &server_creds, "--tls-creds", "s0"];
    let unix = unix_server(&fx, "t.raw", "raw", &tls);
    let read_only = [&tls[..], &["-r"]].concat();
    let tcp = servers::qemu_nbd_tcp(&fx.path("a.raw"), "raw", "exp", &read_only);
    let port = tcp.uri.rsplit(':').next().unwrap().trim_end_matches("/exp");
    let creds = |dir: &str| {
        format!(
            "tls-creds-x509,id=c0,dir={},endpoint=client",
            pki.join(dir).display()
        )
    };
    let client = creds("client");
    let over_tcp = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=exp,tls-creds=c0"
    );
    let socket = fx.path("nbd.sock");
    let over_unix = format!(
        "driver=nbd,server.type=unix,server.path={},export=exp,tls-creds=c0,tls-hostname=localhost",
        socket.display()
    );
    // Reads over TCP (the certificate checked against the host) and a
    // Unix socket (against tls-hostname) answer as qemu-img's do.
    fx.same_info_and_map(&["--object", &client, "--image-opts", &over_tcp]);
    fx.same(&["info", "--object", &client, "--image-opts", &over_unix]);
    let done = fx.qimg(&[
        "convert",
        "--object",
        &client,
        "--image-opts",
        &over_tcp,
        "-O",
        "raw",
        "copy.raw",
    ]);
    assert_eq!(done.status, 0, "{}", done.stderr);
    fx.same_raw("a.raw", "copy.raw");
    // Writes through TLS land as qemu-img reads them back.
    let done = fx.qimg(&[
        "convert",
        "-n",
        "--object",
        &client,
        "a.raw",
        "--target-image-opts",
        &over_unix,
    ]);
    assert_eq!(done.status, 0, "{}", done.stderr);
    fx.oracle(&[
        "convert",
        "--object",
        &client,
        "--image-opts",
        &over_unix,
        "-O",
        "raw",
        "back.raw",
    ]);
    fx.same_raw("a.raw", "back.raw");
    // Refusals, in qemu-img's words: no credentials for a TLS server, an
    // unknown id, no name to check over a socket, a name the certificate
    // does not carry, a CA that did not sign it, STARTTLS to a plain
    // server, and credentials that cannot be loaded.
    let no_name = over_unix.replace(",tls-hostname=localhost", "");
    let wrong_name = over_unix.replace("=localhost", "=elsewhere.example");
    let other_ca = creds("other-ca");
    let plain = servers::qemu_nbd_tcp(&fx.path("a.raw"), "raw", "exp", &["-r"]);
    let plain_port = plain
        .uri
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/exp");
    let to_plain = over_tcp.replace(port, plain_port);
    let missing = creds("nowhere");
    for (object, image) in [
        (None, over_tcp.as_str()),
        (Some(client.as_str()), &over_tcp.replace("=c0", "=c1")),
        (Some(&client), &no_name),
        (Some(&client), &wrong_name),
        (Some(&other_ca), &over_tcp),
        (Some(&client), &to_plain),
        (Some(&missing), &over_tcp),
    ] {
        let mut args = vec!["info"];
        if let Some(object) = object {
            args.extend(["--object", object]);
        }
        args.extend(["--image-opts", image]);
        let out = fx.same(&args);
        assert_eq!(out.status, 1, "{args:?}");
    }
    drop(unix);
}

#[test]
fn open_timeout_waits_for_a_server_that_starts_late() {
    if !servers::have("qemu-nbd") {
        return;
    }
    let fx = Fixture::new("nbd_open_timeout");
    patterned_raw(&fx, "a.raw");
    let socket = fx.path("late.sock");
    let node = |timeout: u32| {
        format!(
            "driver=nbd,server.type=unix,server.path={},export=exp,open-timeout={timeout}",
            socket.display()
        )
    };
    // Nobody listens: both tools try for a second, then fail alike.
    let start = Instant::now();
    let out = fx.same(&["info", "--image-opts", &node(1)]);
    assert_eq!(out.status, 1);
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // The server comes up a second after qimg starts trying.
    let (file, sock) = (fx.path("a.raw"), socket.clone());
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        servers::qemu_nbd_unix(&file, "raw", "exp", &sock, &["-r"])
    });
    let done = fx.qimg(&["info", "--image-opts", &node(10)]);
    let _server = late.join().unwrap();
    assert_eq!(done.status, 0, "{}", done.stderr);
    assert!(
        done.stdout.contains("virtual size: 64 MiB"),
        "{}",
        done.stdout
    );
}

/// Starts `convert` of the export on `socket` to out.raw, over a node
/// with `reconnect-delay` of `seconds`.
fn copy_with_reconnect_delay(
    fx: &Fixture,
    socket: &std::path::Path,
    seconds: u32,
) -> std::process::Child {
    let node = format!(
        "driver=nbd,server.type=unix,server.path={},reconnect-delay={seconds}",
        socket.display()
    );
    fx.spawn_qimg(&["convert", "--image-opts", &node, "-O", "raw", "out.raw"])
}

/// A server gone for good: the copy gives up once `reconnect-delay` has
/// passed, not once per request in flight (each one looked for its failed
/// extent with new requests, each waiting the delay again: 41 s for a
/// delay of 5 s).
#[test]
fn reconnect_delay_gives_up_on_a_server_gone_for_good() {
    if !servers::have("nbdkit") {
        return;
    }
    let fx = Fixture::new("nbd_gone");
    let socket = fx.path("kit.sock");
    let args = ["--filter=delay", "pattern", "1G", "rdelay=100ms"];
    let mut server = servers::nbdkit_unix(&socket, &args);
    let mut child = copy_with_reconnect_delay(&fx, &socket, 2);
    std::thread::sleep(Duration::from_millis(500));
    server.kill();
    let killed = Instant::now();
    let status = exit_within_a_minute(&mut child);
    assert_eq!(status.code(), Some(1));
    let waited = killed.elapsed();
    assert!(
        waited < Duration::from_secs(6),
        "gave up {waited:?} after the server went, with a delay of 2 s"
    );
    assert!(!fx.path("out.raw").exists());
}

#[test]
fn reconnect_delay_carries_a_copy_over_a_server_restart() {
    if !servers::have("nbdkit") {
        return;
    }
    let fx = Fixture::new("nbd_reconnect");
    let socket = fx.path("kit.sock");
    // Every read waits 50 ms, and this server answers one at a time: a
    // 64 MiB copy takes over a second.
    let args = ["--filter=delay", "pattern", "64M", "rdelay=50ms"];
    let mut server = servers::nbdkit_unix(&socket, &args);
    let mut child = copy_with_reconnect_delay(&fx, &socket, 20);
    std::thread::sleep(Duration::from_millis(400));
    server.kill();
    let _ = std::fs::remove_file(&socket);
    std::thread::sleep(Duration::from_millis(500));
    let _restarted = servers::nbdkit_unix(&socket, &args);
    let status = exit_within_a_minute(&mut child);
    assert!(status.success(), "the copy did not survive the restart");
    // nbdkit's pattern: every 8 bytes hold their own offset, big-endian.
    let out = std::fs::read(fx.path("out.raw")).expect("read the copy");
    assert_eq!(out.len(), 64 << 20);
    let wrong = out
        .chunks(8)
        .enumerate()
        .position(|(i, word)| word != ((i as u64) * 8).to_be_bytes());
    assert_eq!(wrong, None, "the copy differs from the pattern");
}

/// A relative backing name in an image on an NBD export has no directory
/// to be relative to, and qemu-img refuses it: joined to the export's URL
/// it names another socket, here a decoy server whose data would fill the
/// overlay's holes. An absolute URL is the backing file as given.
#[test]
fn backing_names_of_images_on_exports_resolve_as_in_qemu_img() {
    if !servers::have("qemu-nbd") {
        return;
    }
    let fx = Fixture::new("nbd_backing_names");
    fx.sh("mkdir sock");
    fx.make_qcow2("base.qcow2", "", "4M");
    fx.qemu_io_cmds("qcow2", "base.qcow2", &["write -P 0x11 0 4M"]);
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "ov.qcow2",
    ]);
    fx.make_qcow2("decoy.qcow2", "", "4M");
    fx.qemu_io_cmds("qcow2", "decoy.qcow2", &["write -P 0x99 0 4M"]);
    let serve = |file: &str, format: &str, socket: &str| {
        servers::qemu_nbd_unix(&fx.path(file), format, "exp", &fx.path(socket), &["-r"])
    };
    let ov = serve("ov.qcow2", "raw", "sock/ov");
    let _decoy = serve("decoy.qcow2", "raw", "sock/base.qcow2");
    for args in [
        vec!["info", "-f", "qcow2", &ov.uri],
        vec!["info", "--output=json", "-f", "qcow2", &ov.uri],
        vec!["info", "--backing-chain", "-f", "qcow2", &ov.uri],
        vec!["map", "-f", "qcow2", &ov.uri],
        vec!["convert", "-f", "qcow2", "-O", "raw", &ov.uri, "out.raw"],
    ] {
        fx.same(&args);
    }
    assert!(!fx.path("out.raw").exists());
    let base = serve("base.qcow2", "qcow2", "sock/b");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &base.uri,
        "-F",
        "raw",
        "ov2.qcow2",
    ]);
    let ov2 = serve("ov2.qcow2", "raw", "sock/ov2");
    fx.same(&["info", "--backing-chain", "-f", "qcow2", &ov2.uri]);
    fx.same(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        &ov2.uri,
        "base.qcow2",
    ]);
}

/// An export keeps its size: `resize` of a raw image on one fails as in
/// qemu-img, whichever way (it printed "Image resized." and exited 0 on a
/// shrink); an export longer than the block layer takes (2^63 - 1 bytes)
/// is refused when opened, where qimg's `map` of it never ended; and one
/// of an odd size maps as in qemu-img.
#[test]
fn export_sizes_the_block_layer_cannot_take_or_change_fail_as_in_qemu_img() {
    if !servers::have("nbdkit") {
        return;
    }
    let fx = Fixture::new("nbd_sizes");
    let memory = servers::nbdkit_unix(&fx.path("m.sock"), &["memory", "64M"]);
    for size in ["32M", "128M"] {
        fx.same(&["resize", "--shrink", "-f", "raw", &memory.uri, size]);
    }
    fx.same(&["info", "-f", "raw", &memory.uri]);
    let huge = servers::nbdkit_unix(&fx.path("h.sock"), &["null", "size=9223372036854775807"]);
    fx.same(&["info", &huge.uri]);
    fx.same(&["map", "--output=json", "-f", "raw", &huge.uri]);
    // An export of an odd size: what lies past its end, up to the next
    // sector, is an extent of its own, zeros at no place.
    let data = "@0x1234 1 2 3 @0x200001 (1)*70000";
    let odd = servers::nbdkit_unix(&fx.path("o.sock"), &["data", data, "size=5000001"]);
    fx.same_info_and_map(&["-f", "raw", &odd.uri]);
}

/// The reads of one copy as nbdkit's log filter saw them: the most in
/// flight at once, and the size of each.
struct Reads {
    most_in_flight: usize,
    /// The most in flight before eight reads had completed: before the
    /// copy could know the server far, whatever the machine's load.
    most_in_flight_early: usize,
    sizes: Vec<u64>,
}

/// How many workers a local copy has, and a copy from a network server
/// before it proves far: two per core, at most -m's eight.
fn local_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores).min(8)
}

/// Copies nbdkit's `pattern` plugin of 64 MiB (with `filter` and its
/// `params` between the log filter and the plugin) to `target` (a raw file,
/// or `null-co://` to spend no time writing), and returns its reads.
fn reads_of_a_copy(fx: &Fixture, filter: Option<&str>, params: &[&str], target: &str) -> Reads {
    let log = fx.path("kit.log");
    let _ = std::fs::remove_file(&log);
    let logfile = format!("logfile={}", log.display());
    let mut args = vec!["--filter=log"];
    args.extend(filter);
    args.extend(["pattern", "64M", &logfile]);
    args.extend_from_slice(params);
    let socket = fx.path("kit.sock");
    let _ = std::fs::remove_file(&socket);
    let server = servers::nbdkit_unix(&socket, &args);
    let done = fx.qimg(&[
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        &server.uri,
        target,
    ]);
    assert_eq!(done.status, 0, "{}", done.stderr);
    let text = std::fs::read_to_string(&log).expect("nbdkit log");
    if target != "null-co://" {
        fx.oracle(&["compare", "-f", "raw", "-F", "raw", target, &server.uri]);
    }
    drop(server);
    let (mut now, mut most_in_flight, mut sizes) = (0usize, 0, Vec::new());
    let (mut completed, mut most_in_flight_early) = (0, 0);
    for line in text.lines() {
        if line.contains(" ...Read id=") {
            now -= 1;
            completed += 1;
        } else if let Some(count) = line.split(" Read id=").nth(1) {
            now += 1;
            most_in_flight = most_in_flight.max(now);
            if completed < 8 {
                most_in_flight_early = most_in_flight_early.max(now);
            }
            sizes.push(logged_count(count));
        }
    }
    Reads {
        most_in_flight,
        most_in_flight_early,
        sizes,
    }
}

/// A copy from a network server starts with as many reads in flight as a
/// local copy has workers (two per core), not -m's eight: eight copy no
/// faster from qemu-nbd or nginx on this machine and hold 8 MiB more. Its
/// reads take 2 ms and the copy writes nowhere, so that more workers would
/// have more reads in flight. Eight reads in a row over 20 ms make the
/// server far: until eight have completed, the copy cannot know that
/// (later, a loaded machine may make this server look far, as it did in
/// CI with 3 ms, so the rest of the copy is left alone).
#[test]
fn a_network_copy_starts_with_the_local_number_of_reads_in_flight() {
    if !servers::have("nbdkit") {
        return;
    }
    let fx = Fixture::new("nbd_near_reads");
    let near = local_workers();
    let reads = reads_of_a_copy(&fx, Some("--filter=delay"), &["rdelay=2ms"], "null-co://");
    assert!(
        reads.most_in_flight_early <= near,
        "{} reads in flight early, more than {near}",
        reads.most_in_flight_early
    );
}

/// A server answering reads in 5 ms, behind a unix socket, stays near for
/// the whole copy: the local number of reads in flight, 1 MiB each. (Four
/// reads in flight on a busy machine take that long from qemu-nbd; eight
/// workers would then spin on the target file's lock.)
#[test]
fn a_server_answering_in_a_few_ms_stays_near() {
    if !servers::have("nbdkit") {
        return;
    }
    let fx = Fixture::new("nbd_near_5ms");
    let near = local_workers();
    let reads = reads_of_a_copy(&fx, Some("--filter=delay"), &["rdelay=5ms"], "null-co://");
    assert!(
        reads.most_in_flight <= near,
        "{} reads in flight, more than {near}: {:?}",
        reads.most_in_flight,
        reads.sizes
    );
    assert!(
        reads.sizes.iter().all(|&n| n == 1 << 20),
        "{:?}",
        reads.sizes
    );
}

/// A server that takes 50 ms a request, behind a unix socket, proves far:
/// the copy then has more reads in flight than a local copy has workers
/// (up to -m's eight, as qemu-img), whole 2 MiB items (with 1 MiB requests
/// it took 1.4-1.8 times qemu-img's time).
#[test]
fn a_far_server_gets_more_reads_in_flight_of_whole_items() {
    if !servers::have("nbdkit") {
        return;
    }
    let fx = Fixture::new("nbd_far_reads");
    let near = local_workers();
    fx.oracle(&["create", "-q", "-f", "raw", "out.raw", "64M"]);
    let reads = reads_of_a_copy(&fx, Some("--filter=delay"), &["rdelay=50ms"], "out.raw");
    assert!(
        reads.most_in_flight > near.min(7),
        "{} in flight: {:?}",
        reads.most_in_flight,
        reads.sizes
    );
    let whole = reads.sizes.iter().filter(|&&n| n == 2 << 20).count();
    assert!(whole * 2 > reads.sizes.len(), "{:?}", reads.sizes);
}
