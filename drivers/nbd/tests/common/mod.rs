//! Real NBD servers for the integration tests: `qemu-nbd` and `nbdkit`,
//! each killed when its guard drops, on Unix sockets in a private
//! directory or on a free loopback port.

#![allow(dead_code)]

use qimg_driver_api::{proto_open, DriverError, ProtocolImpl, StoreImpl};
use qimg_nbd::NbdProtocol;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under the system's temporary directory.
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("qimg-nbd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server, killed on drop.
pub struct Server {
    child: Child,
}

impl Server {
    /// Kills the server now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on (just now).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sparse raw image of `size` bytes with 64 KiB of 0xab at 1 MiB
/// (`qemu-img create -f raw`, `qemu-io -c 'write -P 0xab 1M 64k'`).
pub fn sample_image(dir: &TempDir, size: &str) -> PathBuf {
    let path = dir.join("disk.raw");
    let p = path.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "raw", p, size]);
    run("qemu-io", &["-f", "raw", "-c", "write -P 0xab 1M 64k", p]);
    path
}

/// Spawns `program` and waits until `ready` says it listens.
fn spawn(program: &str, args: &[&str], ready: impl Fn() -> bool) -> Server {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("{program} {args:?} exited: {status}");
        }
        assert!(Instant::now() < deadline, "{program} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

fn unix_ready(path: &Path) -> impl Fn() -> bool + '_ {
    move || UnixStream::connect(path).is_ok()
}

/// Something listens on `port`: a connection that is not the socket
/// connected to itself (which Linux allows when the port is free and in
/// the ephemeral range).
fn tcp_ready(port: u16) -> impl Fn() -> bool {
    move || {
        TcpStream::connect(("127.0.0.1", port))
            .is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
    }
}

/// `qemu-nbd -t -f raw -x EXPORT [extra] IMAGE` on the Unix socket `socket`.
pub fn qemu_nbd_unix(socket: &Path, export: &str, image: &Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "-t",
        "-f",
        "raw",
        "-x",
        export,
        "-k",
        socket.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(image.to_str().unwrap());
    spawn("qemu-nbd", &args, unix_ready(socket))
}

/// `qemu-nbd -t -f raw -x EXPORT [extra] IMAGE` on 127.0.0.1:`port`.
pub fn qemu_nbd_tcp(port: u16, export: &str, image: &Path, extra: &[&str]) -> Server {
    let port_text = port.to_string();
    let mut args = vec![
        "-t",
        "-f",
        "raw",
        "-x",
        export,
        "-b",
        "127.0.0.1",
        "-p",
        &port_text,
    ];
    args.extend_from_slice(extra);
    args.push(image.to_str().unwrap());
    spawn("qemu-nbd", &args, tcp_ready(port))
}

/// `nbdkit -f --exit-with-parent -P PIDFILE LISTEN... ARGS...`, ready
/// once nbdkit wrote its pid file (it does when it accepts connections).
fn nbdkit(listen: &[&str], args: &[&str]) -> Server {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let pidfile = std::env::temp_dir().join(format!(
        "qimg-nbd-{}-nbdkit-{}.pid",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_file(&pidfile);
    let mut all = vec!["-f", "--exit-with-parent", "-P", pidfile.to_str().unwrap()];
    all.extend_from_slice(listen);
    all.extend_from_slice(args);
    let ready = || std::fs::metadata(&pidfile).is_ok_and(|m| m.len() > 0);
    let server = spawn("nbdkit", &all, ready);
    let _ = std::fs::remove_file(&pidfile);
    server
}

/// `nbdkit -U SOCKET ARGS...`.
pub fn nbdkit_unix(socket: &Path, args: &[&str]) -> Server {
    nbdkit(&["-U", socket.to_str().unwrap()], args)
}

/// `nbdkit -i 127.0.0.1 -p PORT ARGS...`.
pub fn nbdkit_tcp(port: u16, args: &[&str]) -> Server {
    nbdkit(&["-i", "127.0.0.1", "-p", &port.to_string()], args)
}

/// Opens `filename` through the driver, as the host does: options from
/// the name, then open.
pub fn open(filename: &str, write: bool) -> Result<Box<dyn StoreImpl>, DriverError> {
    let options = NbdProtocol.parse_filename(filename)?;
    let flags = if write { proto_open::WRITE } else { 0 };
    NbdProtocol.open(&options, flags)
}

/// Opens `filename` as the driver's own store type (for what the store
/// trait does not show, such as its connection limit).
pub fn open_nbd(filename: &str, write: bool) -> qimg_nbd::NbdStore {
    let options = NbdProtocol.parse_filename(filename).unwrap();
    let options = qimg_nbd::Options::from_map(&options).unwrap();
    let flags = if write { proto_open::WRITE } else { 0 };
    qimg_nbd::NbdStore::open(&options, flags, None).unwrap()
}

/// The name qemu-img prints for `filename`.
pub fn name_of(filename: &str) -> String {
    let options = NbdProtocol.parse_filename(filename).unwrap();
    NbdProtocol.canonical_name(&options).unwrap()
}

/// Reads `len` bytes at `offset`, all of which must be there.
pub fn read(store: &dyn StoreImpl, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0x5au8; len];
    let n = store.read_at(offset, &mut buf).unwrap();
    assert_eq!(n, len, "short read at {offset}");
    buf
}

/// The error opening `filename` gives.
pub fn open_error(filename: &str, write: bool) -> DriverError {
    match open(filename, write) {
        Ok(_) => panic!("{filename} opened"),
        Err(e) => e,
    }
}
