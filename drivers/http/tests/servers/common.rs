//! Fixtures: scratch directories, test data, nginx and python servers run
//! for one test and killed on drop, and a scriptable mock HTTP server.

use qimg_driver_api::{DriverError, ProtocolImpl, StoreImpl};
use qimg_http::HttpProtocol;
use serde_json::{Map, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Size of `data.bin`: 3 MiB and an odd tail.
pub const DATA_SIZE: usize = 3 * 1024 * 1024 + 1234;

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// True if `program` runs (`program -v`/`--version` style check).
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipped: {program} is not installed");
    }
    found
}

/// A directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A new empty directory under the system's temp directory.
    pub fn new(tag: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("qimg-http-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// A path inside.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`.
fn wait_for(port: u16, child: &mut Child, log: &Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "server exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("server on port {port} did not start");
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a self-signed certificate (`self.pem`, `self.key`), and a test
/// CA (`ca.der`) with a leaf it signed (`leaf.pem`, `leaf.key`), all for
/// 127.0.0.1 and localhost.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let san = "subjectAltName=IP:127.0.0.1,DNS:localhost";
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-keyout", "self.key", "-out", "self.pem", "-days", "2"]);
    args.extend(["-subj", "/CN=localhost", "-addext", san]);
    openssl(dir, &args);
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=qimg test CA",
    ]);
    openssl(dir, &args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("leaf.ext"),
        format!("{san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
    openssl(
        dir,
        &["x509", "-in", "ca.pem", "-outform", "DER", "-out", "ca.der"],
    );
}

/// The files every web root holds: `data.bin` ([`DATA_SIZE`] bytes of
/// pattern 1), `small.bin` (1000 bytes of pattern 2) and an empty file.
fn fill_web_root(www: &Path) {
    std::fs::create_dir_all(www).unwrap();
    std::fs::write(www.join("data.bin"), pattern(DATA_SIZE, 1)).unwrap();
    std::fs::write(www.join("small.bin"), pattern(1000, 2)).unwrap();
    std::fs::write(www.join("empty.bin"), b"").unwrap();
}

/// An nginx serving a web root over http, https with a self-signed
/// certificate, and https with a certificate of a test CA.
pub struct Nginx {
    child: Child,
    /// The plain HTTP port.
    pub port: u16,
    /// The HTTPS port with the self-signed certificate.
    pub tls_port: u16,
    /// The HTTPS port with the CA-signed certificate.
    pub ca_port: u16,
    /// The scratch directory (web root in `www`, CA in `ca.der`).
    pub dir: Scratch,
}

impl Nginx {
    /// Starts one, or `None` if nginx or openssl is missing.
    pub fn start() -> Option<Nginx> {
        if !have("nginx") || !have("openssl") {
            return None;
        }
        let dir = Scratch::new("nginx");
        let d = dir.0.display().to_string();
        fill_web_root(&dir.join("www"));
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        make_certificates(&dir.0);
        let (port, tls_port, ca_port) = (free_port(), free_port(), free_port());
        let config = format!(
            "daemon off;\nmaster_process off;\nuser root;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n\
             proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n\
             uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
             server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n\
             location = /old {{ return 301 /data.bin; }}\n\
             location = /dir/rel {{ absolute_redirect off; return 302 ../small.bin; }}\n\
             location = /loop {{ return 301 /loop; }}\n\
             location = /err {{ return 500; }}\n\
             location /close/ {{ keepalive_timeout 0; alias {d}/www/; }}\n  }}\n\
             server {{\n    listen 127.0.0.1:{tls_port} ssl;\n    root {d}/www;\n\
             ssl_certificate {d}/self.pem;\n    ssl_certificate_key {d}/self.key;\n  }}\n\
             server {{\n    listen 127.0.0.1:{ca_port} ssl;\n    root {d}/www;\n\
             ssl_certificate {d}/leaf.pem;\n    ssl_certificate_key {d}/leaf.key;\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), config).unwrap();
        let log = dir.join("nginx.out");
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("early.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        for p in [port, tls_port, ca_port] {
            wait_for(p, &mut child, &log);
        }
        Some(Nginx {
            child,
            port,
            tls_port,
            ca_port,
            dir,
        })
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Kills the server now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `python3 -m http.server`, which serves no byte ranges.
pub struct Python {
    child: Child,
    /// Its port.
    pub port: u16,
    _dir: Scratch,
}

impl Python {
    /// Starts one, or `None` without python3.
    pub fn start() -> Option<Python> {
        if !have("python3") {
            return None;
        }
        let dir = Scratch::new("python");
        fill_web_root(&dir.join("www"));
        let port = free_port();
        let log = dir.join("python.out");
        let mut child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir.join("www"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for(port, &mut child, &log);
        Some(Python {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request as the mock server saw it.
#[derive(Clone, Debug)]
pub struct Req {
    /// `GET`, `HEAD`…
    pub method: String,
    /// The request target.
    pub path: String,
    /// The `Range: bytes=a-b` asked for.
    pub range: Option<(u64, u64)>,
    /// The whole request head.
    pub head: String,
}

/// What the mock server does with a request.
pub enum Reply {
    /// Sends the bytes and keeps the connection.
    Send(Vec<u8>),
    /// Sends the bytes and closes the connection.
    SendClose(Vec<u8>),
    /// Sends the pieces with a pause between them, then closes.
    Trickle(Vec<Vec<u8>>, Duration),
    /// Never answers (until the mock is dropped).
    Silence,
}

type Handler = dyn Fn(&Req) -> Reply + Send + Sync;

/// A scriptable HTTP server on a thread.
pub struct Mock {
    /// Its port.
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Every request head seen.
    pub requests: Arc<Mutex<Vec<Req>>>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
}

impl Mock {
    /// Starts a server answering with `handler`.
    pub fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let (stop, requests, connections) =
                (stop.clone(), requests.clone(), connections.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            connections.fetch_add(1, Ordering::SeqCst);
                            let (stop, requests, handler) =
                                (stop.clone(), requests.clone(), handler.clone());
                            thread::spawn(move || serve(stream, &stop, &requests, &*handler));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Mock {
            port,
            stop,
            thread: Some(thread),
            requests,
            connections,
        }
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves one connection until it closes or the mock stops.
fn serve(mut stream: TcpStream, stop: &AtomicBool, requests: &Mutex<Vec<Req>>, handler: &Handler) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut pending = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        };
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end);
        let req = parse_request(&head);
        requests.lock().unwrap().push(req.clone());
        match handler(&req) {
            Reply::Send(bytes) => {
                if stream.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::SendClose(bytes) => {
                let _ = stream.write_all(&bytes);
                return;
            }
            Reply::Trickle(pieces, pause) => {
                for piece in pieces {
                    if stop.load(Ordering::SeqCst) || stream.write_all(&piece).is_err() {
                        return;
                    }
                    thread::sleep(pause);
                }
                return;
            }
            Reply::Silence => {
                while !stop.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(20));
                }
                return;
            }
        }
    }
}

fn parse_request(head: &str) -> Req {
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let path = words.next().unwrap_or_default().to_string();
    let range = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.eq_ignore_ascii_case("range") {
            return None;
        }
        let (a, b) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    });
    Req {
        method,
        path,
        range,
        head: head.to_string(),
    }
}

/// A correct answer about `data`: the size for HEAD, the range for GET.
pub fn answer(data: &[u8], req: &Req) -> Vec<u8> {
    if req.method == "HEAD" {
        return format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n\r\n",
            data.len()
        )
        .into_bytes();
    }
    let (a, b) = req.range.expect("range request");
    let body = &data[a as usize..=b as usize];
    let mut out = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{b}/{}\r\n\r\n",
        body.len(),
        data.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Options of a URL, and more.
pub fn options(url: &str, extra: &[(&str, Value)]) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("url".into(), Value::from(url));
    for (k, v) in extra {
        map.insert((*k).into(), v.clone());
    }
    map
}

/// Opens `url` with the driver of its scheme.
pub fn open(url: &str, extra: &[(&str, Value)]) -> Result<Box<dyn StoreImpl>, DriverError> {
    let protocol = if url.starts_with("https:") {
        HttpProtocol::https()
    } else {
        HttpProtocol::http()
    };
    protocol.open(&options(url, extra), 0)
}

/// The message of an open that must fail.
pub fn open_error(url: &str, extra: &[(&str, Value)]) -> String {
    match open(url, extra) {
        Ok(_) => panic!("{url} opened"),
        Err(e) => e.message.to_string(),
    }
}

/// Reads `len` bytes at `offset`, all of which must be there.
pub fn read(store: &dyn StoreImpl, offset: u64, len: usize) -> Result<Vec<u8>, DriverError> {
    let mut buf = vec![0u8; len];
    let n = store.read_at(offset, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}
