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

/// nginx serving the directory `root` on a loopback port (`http://`), its
/// configuration, logs and temporary files in `work`. The same files are
/// also served under `/private/` to user `qimg` with password `hunter2`
/// (Basic authentication), and under `/cookie/` to requests with the
/// cookie `session=s3cret`.
pub fn nginx(root: &Path, work: &Path) -> Server {
    let port = free_port();
    std::fs::create_dir_all(work).expect("nginx work dir");
    std::fs::write(work.join("htpasswd"), "qimg:{PLAIN}hunter2\n").expect("write htpasswd");
    let w = work.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {w}/nginx.pid;\nerror_log {w}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {w}/body;\n  proxy_temp_path {w}/proxy;\n\
         fastcgi_temp_path {w}/fastcgi;\n  uwsgi_temp_path {w}/uwsgi;\n  scgi_temp_path {w}/scgi;\n\
         server {{\n    listen 127.0.0.1:{port};\n    root {};\n\
         location /moved/ {{ rewrite ^/moved/(.*)$ /$1 redirect; }}\n\
         location /private/ {{ auth_basic qimg; auth_basic_user_file {w}/htpasswd; alias {r}/; }}\n\
         location /cookie/ {{ if ($cookie_session != s3cret) {{ return 403; }} alias {r}/; }}\n  }}\n}}\n",
        root.display(),
        r = root.display()
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
    Server {
        child,
        uri: format!("http://127.0.0.1:{port}"),
    }
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
