//! Servers the network-store tests start on loopback and on unix sockets:
//! qemu-nbd, nbdkit and nginx. Each is killed when its handle drops.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process, killed on drop.
pub struct Server {
    child: Child,
    /// The URI (or URL) the server is reached at.
    pub uri: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Kills the server now (to test what a client does when it goes).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True if `program` is on PATH; otherwise prints why the calling test is
/// skipped (scripts/test.sh installs the servers where it can).
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipped: {program} is not installed");
    }
    found
}

/// A loopback TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// Waits until `ready` holds (the server listens), at most 10 s.
fn wait_for(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before it listened: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn spawn(program: &str, args: &[&str]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"))
}

/// `qemu-nbd` serving `file` (of `format`) as export `export` on the unix
/// socket `socket`, persistent (`-t`), with extra `args`.
pub fn qemu_nbd_unix(
    file: &Path,
    format: &str,
    export: &str,
    socket: &Path,
    args: &[&str],
) -> Server {
    let sock = socket.to_str().expect("utf-8 path");
    let mut all = vec!["-t", "-k", sock, "-f", format, "-x", export];
    all.extend_from_slice(args);
    all.push(file.to_str().expect("utf-8 path"));
    let mut child = spawn("qemu-nbd", &all);
    wait_for(&mut child, "qemu-nbd", || socket.exists());
    Server {
        child,
        uri: format!("nbd+unix:///{export}?socket={sock}"),
    }
}

/// `qemu-nbd` serving `file` (of `format`) as export `export` on a loopback
/// TCP port, persistent, with extra `args`.
pub fn qemu_nbd_tcp(file: &Path, format: &str, export: &str, args: &[&str]) -> Server {
    let port = free_port();
    let port_text = port.to_string();
    let mut all = vec![
        "-t",
        "-b",
        "127.0.0.1",
        "-p",
        &port_text,
        "-f",
        format,
        "-x",
        export,
    ];
    all.extend_from_slice(args);
    all.push(file.to_str().expect("utf-8 path"));
    let mut child = spawn("qemu-nbd", &all);
    wait_for(&mut child, "qemu-nbd", || listening(port));
    Server {
        child,
        uri: format!("nbd://127.0.0.1:{port}/{export}"),
    }
}

/// `nbdkit` on the unix socket `socket` with the plugin and its arguments
/// (`["memory", "64M"]`), filters first (`["--filter=delay", ...]`).
pub fn nbdkit_unix(socket: &Path, plugin: &[&str]) -> Server {
    let sock = socket.to_str().expect("utf-8 path");
    let mut all = vec!["-f", "-U", sock];
    all.extend_from_slice(plugin);
    let mut child = spawn("nbdkit", &all);
    wait_for(&mut child, "nbdkit", || socket.exists());
    Server {
        child,
        uri: format!("nbd+unix:///?socket={sock}"),
    }
}

/// `nbdkit` on a loopback TCP port with the plugin and its arguments, as
/// [`nbdkit_unix`].
pub fn nbdkit_tcp(plugin: &[&str]) -> Server {
    let port = free_port();
    let port_text = port.to_string();
    let mut all = vec!["-f", "-i", "127.0.0.1", "-p", &port_text];
    all.extend_from_slice(plugin);
    let mut child = spawn("nbdkit", &all);
    wait_for(&mut child, "nbdkit", || listening(port));
    Server {
        child,
        uri: format!("nbd://127.0.0.1:{port}"),
    }
}

/// nginx serving the directory `root` on a loopback port (`http://`), its
/// configuration, logs and temporary files in `work`. The same files are
/// also served under `/private/` to user `qimg` with password `hunter2`
/// (Basic authentication), and under `/cookie/` to requests with the
/// cookie `session=s3cret`.
pub fn nginx(root: &Path, work: &Path) -> Server {
    nginx_with(root, work, None)
}

/// [`nginx`], speaking https with the certificate and key in `tls` (a
/// `server/` directory of [`tls_certificates`]) if given.
pub fn nginx_with(root: &Path, work: &Path, tls: Option<&Path>) -> Server {
    let port = free_port();
    std::fs::create_dir_all(work).expect("nginx work dir");
    std::fs::write(work.join("htpasswd"), "qimg:{PLAIN}hunter2\n").expect("write htpasswd");
    let w = work.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {w}/nginx.pid;\nerror_log {w}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {w}/body;\n  proxy_temp_path {w}/proxy;\n\
         fastcgi_temp_path {w}/fastcgi;\n  uwsgi_temp_path {w}/uwsgi;\n  scgi_temp_path {w}/scgi;\n\
         server {{\n    listen 127.0.0.1:{port}{ssl};\n    root {};\n\
         location /moved/ {{ rewrite ^/moved/(.*)$ /$1 redirect; }}\n\
         location /private/ {{ auth_basic qimg; auth_basic_user_file {w}/htpasswd; alias {r}/; }}\n\
         location /cookie/ {{ if ($cookie_session != s3cret) {{ return 403; }} alias {r}/; }}\n  }}\n}}\n",
        root.display(),
        r = root.display(),
        ssl = match tls {
            Some(dir) => format!(
                " ssl;\n    ssl_certificate {d}/server-cert.pem;\n    ssl_certificate_key {d}/server-key.pem",
                d = dir.display()
            ),
            None => String::new(),
        },
    );
    let conf_path: PathBuf = work.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let mut child = spawn(
        "nginx",
        &[
            "-p",
            work.to_str().expect("utf-8 path"),
            "-c",
            conf_path.to_str().expect("utf-8 path"),
        ],
    );
    wait_for(&mut child, "nginx", || listening(port));
    let scheme = if tls.is_some() { "https" } else { "http" };
    Server {
        child,
        uri: format!("{scheme}://127.0.0.1:{port}"),
    }
}

/// A forwarding http proxy on a loopback port, run by threads of the
/// test: `CONNECT` tunnels, and absolute-form requests relayed as they
/// are. With `credentials` (`user:password`) it answers 407 to requests
/// without them. The first line of every request it is sent is kept.
pub struct ForwardProxy {
    /// Its port.
    pub port: u16,
    /// The request lines it was sent, in order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Starts a [`ForwardProxy`].
pub fn forward_proxy(credentials: Option<&str>) -> ForwardProxy {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let port = listener.local_addr().expect("proxy address").port();
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let expected = credentials.map(|c| format!("proxy-authorization: basic {}", base64(c)));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (seen, expected) = (seen.clone(), expected.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().expect("clone"));
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(line.clone());
                    if line == "\r\n" {
                        break;
                    }
                }
                let first = head[0].trim_end().to_string();
                seen.lock().expect("requests").push(first.clone());
                let mut client = client;
                let allowed = expected.as_ref().is_none_or(|want| {
                    head.iter().any(|h| h.trim_end().eq_ignore_ascii_case(want))
                });
                if !allowed {
                    let _ = client.write_all(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
                    );
                    return;
                }
                let mut words = first.split(' ');
                let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let authority = if method == "CONNECT" {
                    target.to_string()
                } else {
                    let rest = target.split_once("://").map_or(target, |(_, r)| r);
                    let authority = rest.split('/').next().unwrap_or(rest);
                    if authority.contains(':') {
                        authority.to_string()
                    } else {
                        format!("{authority}:80")
                    }
                };
                let Ok(mut upstream) = TcpStream::connect(&authority) else {
                    let _ =
                        client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
                    return;
                };
                if method == "CONNECT" {
                    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                } else {
                    let _ = upstream.write_all(head.concat().as_bytes());
                }
                // Whatever the reader holds beyond the head goes first.
                let _ = upstream.write_all(reader.buffer());
                let (mut up_read, mut client_write) = (
                    upstream.try_clone().expect("clone"),
                    client.try_clone().expect("clone"),
                );
                let back = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_read, &mut client_write);
                    let _ = client_write.shutdown(std::net::Shutdown::Both);
                });
                let _ = std::io::copy(&mut client, &mut upstream);
                let _ = upstream.shutdown(std::net::Shutdown::Both);
                let _ = back.join();
            });
        }
    });
    ForwardProxy { port, requests }
}

/// Standard base64 with padding (for the proxy's credentials).
fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in text.as_bytes().chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let bits = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Makes QEMU `tls-creds-x509` directories under `dir` with `openssl`: a CA,
/// `server/` (the CA's certificate and a server certificate for
/// `localhost` and 127.0.0.1), `client/` (the CA's certificate and a
/// client certificate) and `other-ca/` (an unrelated CA's certificate).
pub fn tls_certificates(dir: &Path) {
    for sub in ["ca", "server", "client", "other-ca"] {
        std::fs::create_dir_all(dir.join(sub)).expect("certificate dirs");
    }
    let path = |p: &str| dir.join(p).to_str().expect("utf-8 path").to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = |name: &str| {
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &path(name),
        ])
    };
    for (ca, name) in [("ca", "qimg test CA"), ("other-ca", "unrelated CA")] {
        key(&format!("{ca}/ca-key.pem"));
        openssl(&[
            "req",
            "-new",
            "-x509",
            "-days",
            "3650",
            "-sha256",
            "-key",
            &path(&format!("{ca}/ca-key.pem")),
            "-out",
            &path(&format!("{ca}/ca-cert.pem")),
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }
    for (leaf, usage, san) in [
        (
            "server",
            "serverAuth",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        ),
        ("client", "clientAuth", ""),
    ] {
        let ext = dir.join(format!("{leaf}.ext"));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment,keyAgreement\n\
                 extendedKeyUsage={usage}\n{san}"
            ),
        )
        .expect("extensions file");
        key(&format!("{leaf}/{leaf}-key.pem"));
        openssl(&[
            "req",
            "-new",
            "-key",
            &path(&format!("{leaf}/{leaf}-key.pem")),
            "-subj",
            &format!("/CN=qimg {leaf}"),
            "-out",
            &path(&format!("{leaf}.csr")),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-days",
            "3650",
            "-sha256",
            "-in",
            &path(&format!("{leaf}.csr")),
            "-CA",
            &path("ca/ca-cert.pem"),
            "-CAkey",
            &path("ca/ca-key.pem"),
            "-set_serial",
            if leaf == "server" { "2" } else { "3" },
            "-extfile",
            ext.to_str().expect("utf-8 path"),
            "-out",
            &path(&format!("{leaf}/{leaf}-cert.pem")),
        ]);
        std::fs::copy(
            dir.join("ca/ca-cert.pem"),
            dir.join(format!("{leaf}/ca-cert.pem")),
        )
        .expect("copy the CA certificate");
    }
}
