//! Connecting to the server (names resolved by getaddrinfo, so service
//! names and qemu's resolution messages come out as qemu's do) and the
//! byte stream every connection reads and writes, with timeouts so that
//! a silent server fails a request instead of hanging it.

use crate::error::{NbdError, Result};
use crate::options::Server;
use crate::tls::{handshake_error, Tls};
use rustls::ClientConnection;
use std::ffi::{CStr, CString};
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How long one TCP connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `sun_path` a Unix socket address holds (with its NUL).
const SUN_PATH_LEN: usize = 108;
/// Most buffers one `sendmsg` takes here (far below `IOV_MAX`).
const MAX_IOV: usize = 64;
/// Send buffer asked for on Unix sockets: a whole 2 MiB write request
/// queued in one system call, rather than in ~200 KiB steps that each
/// wait for the server (TCP tunes its buffers itself).
const UNIX_SEND_BUFFER: usize = 4 << 20;
/// Read buffer of a connection; reads larger than this bypass it. Small,
/// because the payload a reply header's read pulls in with it is copied
/// once more.
const READ_BUFFER: usize = 16 * 1024;
/// Bytes of TLS records read from the socket at a time.
const TLS_READ: usize = 64 * 1024;

/// A connected socket.
#[derive(Debug)]
pub enum Stream {
    /// TCP, with `TCP_NODELAY`.
    Tcp(TcpStream),
    /// A Unix domain socket.
    Unix(UnixStream),
}

impl Stream {
    /// Connects to `server`.
    pub fn connect(server: &Server) -> Result<Stream> {
        let target = server.target();
        match server {
            Server::Unix { path } => {
                if path.len() >= SUN_PATH_LEN {
                    return Err(NbdError::InvalidArgument(format!(
                        "UNIX socket path '{path}' is too long\nPath must be less than {SUN_PATH_LEN} bytes"
                    )));
                }
                // An empty path names no socket; qemu reports the refusal
                // its connect gets.
                if path.is_empty() {
                    return Err(NbdError::Connect {
                        target,
                        source: io::Error::from_raw_os_error(libc::ECONNREFUSED),
                    });
                }
                let unix = UnixStream::connect(path)
                    .map_err(|source| NbdError::Connect { target, source })?;
                widen_send_buffer(&unix);
                Ok(Stream::Unix(unix))
            }
            Server::Inet { host, port } => {
                let mut last = io::Error::from_raw_os_error(libc::ECONNREFUSED);
                for addr in resolve(host, port)? {
                    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(tcp) => {
                            tcp.set_nodelay(true).map_err(|source| NbdError::Connect {
                                target: target.clone(),
                                source,
                            })?;
                            return Ok(Stream::Tcp(tcp));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(NbdError::Connect {
                    target,
                    source: last,
                })
            }
        }
    }

    /// Sets the read and write timeouts.
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
            Stream::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
        }
    }

    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Stream {
    /// Sends as much of `parts` as the socket takes in one `sendmsg`, with
    /// `MSG_NOSIGNAL`: a server that hung up is an `EPIPE` error, never a
    /// SIGPIPE that kills the process, whatever the host did with signals.
    fn send_parts(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        let fd = match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        };
        // SAFETY: an all-zero msghdr is empty; the iovecs point into
        // `parts` (IoSlice is ABI-compatible with iovec) for the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = parts.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = parts.len().min(MAX_IOV) as _;
        // SAFETY: `fd` is open for the lifetime of `self`; `msg` is valid.
        let sent = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(sent as usize)
        }
    }
}

/// Asks for a send buffer of [`UNIX_SEND_BUFFER`] on a Unix socket (the
/// kernel caps it at `net.core.wmem_max`); failure only costs speed.
fn widen_send_buffer(socket: &UnixStream) {
    let size = UNIX_SEND_BUFFER as libc::c_int;
    // SAFETY: `socket` is open; the option value is a c_int of the size
    // given.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The addresses `host` and `port` (a number or a service name) stand for.
fn resolve(host: &str, port: &str) -> Result<Vec<SocketAddr>> {
    let failed = |code: i32| NbdError::Resolve {
        target: format!("{host}:{port}"),
        reason: gai_message(code),
    };
    let c_host = CString::new(host).map_err(|_| failed(libc::EAI_NONAME))?;
    let c_port = CString::new(port).map_err(|_| failed(libc::EAI_SERVICE))?;
    // SAFETY: an all-zero addrinfo is a valid "no hints" value.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    let service = if port.is_empty() {
        std::ptr::null()
    } else {
        c_port.as_ptr()
    };
    // SAFETY: the strings are NUL-terminated and outlive the call; `list`
    // receives a list that is freed below.
    let code = unsafe { libc::getaddrinfo(c_host.as_ptr(), service, &hints, &mut list) };
    if code != 0 {
        return Err(failed(code));
    }
    let mut out = Vec::new();
    let mut node = list;
    while !node.is_null() {
        // SAFETY: `node` is an element of the list getaddrinfo returned.
        let info = unsafe { &*node };
        if let Some(addr) = socket_addr(info) {
            out.push(addr);
        }
        node = info.ai_next;
    }
    // SAFETY: `list` came from getaddrinfo and is freed once.
    unsafe { libc::freeaddrinfo(list) };
    Ok(out)
}

/// The address of one getaddrinfo result, if it is IPv4 or IPv6.
fn socket_addr(info: &libc::addrinfo) -> Option<SocketAddr> {
    if info.ai_addr.is_null() {
        return None;
    }
    let len = info.ai_addrlen as usize;
    match info.ai_family {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family and length say this is a sockaddr_in.
            let sin = unsafe { std::ptr::read_unaligned(info.ai_addr as *const libc::sockaddr_in) };
            let ip = u32::from_be(sin.sin_addr.s_addr);
            let port = u16::from_be(sin.sin_port);
            Some(SocketAddr::V4(SocketAddrV4::new(ip.into(), port)))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family and length say this is a sockaddr_in6.
            let sin6 =
                unsafe { std::ptr::read_unaligned(info.ai_addr as *const libc::sockaddr_in6) };
            let ip = sin6.sin6_addr.s6_addr.into();
            let port = u16::from_be(sin6.sin6_port);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                port,
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `gai_strerror`'s text for `code`.
fn gai_message(code: i32) -> String {
    // SAFETY: gai_strerror returns a static NUL-terminated string.
    let text = unsafe { libc::gai_strerror(code) };
    if text.is_null() {
        return format!("error {code}");
    }
    // SAFETY: checked non-null above; the string is static.
    unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

/// What a connection reads from: the socket, or TLS over it.
#[derive(Debug)]
enum Source {
    Plain(Stream),
    Tls(TlsReader),
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Plain(stream) => stream.read(buf),
            Source::Tls(tls) => tls.read(buf),
        }
    }
}

/// The receiving direction of a connection, buffered.
#[derive(Debug)]
pub struct ReadHalf {
    reader: BufReader<Source>,
}

impl ReadHalf {
    /// Fills `buf`; end of file before that is `UnexpectedEof`.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.reader.read_exact(buf)
    }

    /// `N` bytes.
    pub fn read_array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut out = [0u8; N];
        self.read_exact(&mut out)?;
        Ok(out)
    }

    /// A big-endian u16.
    pub fn read_u16(&mut self) -> io::Result<u16> {
        self.read_array().map(u16::from_be_bytes)
    }

    /// A big-endian u32.
    pub fn read_u32(&mut self) -> io::Result<u32> {
        self.read_array().map(u32::from_be_bytes)
    }

    /// A big-endian u64.
    pub fn read_u64(&mut self) -> io::Result<u64> {
        self.read_array().map(u64::from_be_bytes)
    }

    /// Reads and drops `n` bytes, without allocating for them.
    pub fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.reader).take(n), &mut io::sink())?;
        if copied < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// The sending direction of a connection, unbuffered. Its methods take
/// `&self`: whoever sends must keep messages whole (a lock), and any
/// thread may shut the socket down meanwhile.
#[derive(Debug)]
pub struct WriteHalf {
    writer: Stream,
    /// The TLS session records are sealed in, once TLS is up.
    tls: Option<Arc<Session>>,
}

impl WriteHalf {
    /// Sends all of `parts`, in order, with as few system calls as the
    /// socket allows.
    pub fn write_all(&self, parts: &[&[u8]]) -> io::Result<()> {
        match &self.tls {
            None => self.send_all(parts),
            Some(session) => self.send_all(&[&session.seal(parts)?]),
        }
    }

    /// Sends all of `parts` on the socket.
    fn send_all(&self, parts: &[&[u8]]) -> io::Result<()> {
        let mut index = 0;
        let mut skip = 0;
        while index < parts.len() {
            let slices: Vec<IoSlice<'_>> = std::iter::once(&parts[index][skip..])
                .chain(parts[index + 1..].iter().copied())
                .map(IoSlice::new)
                .collect();
            let mut written = match self.writer.send_parts(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            while index < parts.len() && written >= parts[index].len() - skip {
                written -= parts[index].len() - skip;
                index += 1;
                skip = 0;
            }
            skip += written;
        }
        Ok(())
    }

    /// Closes both directions; reads (blocked ones too) see end of file.
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }
}

/// A TLS session both directions of a connection use. The lock is held
/// only to seal or open records, never across socket I/O, so a reader
/// waiting for the server does not hold up writers.
#[derive(Debug)]
struct Session {
    conn: Mutex<ClientConnection>,
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, ClientConnection> {
        // rustls' state is consistent between calls: a panic elsewhere
        // leaves nothing half-done.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The records carrying `parts` (and whatever TLS messages are due),
    /// to send in this order: callers seal and send under one lock.
    fn seal(&self, parts: &[&[u8]]) -> io::Result<Vec<u8>> {
        let mut conn = self.lock();
        for part in parts {
            conn.writer().write_all(part)?;
        }
        pending_records(&mut conn)
    }
}

/// The TLS records `conn` has ready to send.
fn pending_records(conn: &mut ClientConnection) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

/// Reads plaintext from a TLS session: records are read from the socket
/// without the session's lock, and opened with it.
#[derive(Debug)]
struct TlsReader {
    socket: Stream,
    session: Arc<Session>,
    /// Bytes read from the socket, from `used` on not yet given to rustls.
    raw: Vec<u8>,
    used: usize,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut conn = self.session.lock();
                match conn.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    done => return done,
                }
                if self.used < self.raw.len() {
                    let mut rest = &self.raw[self.used..];
                    let took = conn.read_tls(&mut rest)?;
                    self.used += took;
                    conn.process_new_packets().map_err(|_| tls_read_error())?;
                    continue;
                }
            }
            self.raw.resize(TLS_READ, 0);
            self.used = 0;
            let n = match self.socket.read(&mut self.raw) {
                Ok(n) => n,
                Err(e) => {
                    self.raw.clear();
                    return Err(e);
                }
            };
            self.raw.truncate(n);
            if n == 0 {
                // The server hung up without closing TLS.
                return Err(tls_read_error());
            }
        }
    }
}

/// A failed read of TLS records, worded as qemu (gnutls) words the usual
/// one: the server ended the session without closing it (it refused our
/// certificate, or hung up).
#[derive(Debug, thiserror::Error)]
#[error("Cannot read from TLS channel: The TLS connection was non-properly terminated.")]
pub struct TlsReadError;

fn tls_read_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, TlsReadError)
}

/// One connection's two directions: buffered reads, unbuffered writes.
#[derive(Debug)]
pub struct Link {
    rx: ReadHalf,
    tx: WriteHalf,
}

impl Link {
    /// Wraps a connected stream with `timeout` on reads and writes.
    pub fn new(stream: Stream, timeout: Duration) -> io::Result<Link> {
        stream.set_timeout(timeout)?;
        let writer = stream.try_clone()?;
        Ok(Link {
            rx: ReadHalf {
                reader: BufReader::with_capacity(READ_BUFFER, Source::Plain(stream)),
            },
            tx: WriteHalf { writer, tls: None },
        })
    }

    /// Runs a TLS handshake as `config`'s client of `name` over the socket
    /// (after `NBD_OPT_STARTTLS` was accepted); everything after it goes
    /// through TLS.
    pub fn start_tls(&mut self, tls: &Tls) -> Result<()> {
        let name = tls.name.clone().map_err(NbdError::Tls)?;
        let failed = |e: rustls::Error| handshake_error(&e, &tls.hostname);
        let Source::Plain(stream) = self.rx.reader.get_ref() else {
            return Err(NbdError::Protocol("TLS is already up".into()));
        };
        if !self.rx.reader.buffer().is_empty() {
            return Err(NbdError::Protocol(
                "the server sent data before the TLS handshake".into(),
            ));
        }
        let mut socket = stream.try_clone().map_err(NbdError::Transport)?;
        let mut conn = ClientConnection::new(tls.config.clone(), name).map_err(failed)?;
        while conn.is_handshaking() {
            if conn.wants_write() {
                let out = pending_records(&mut conn).map_err(NbdError::Transport)?;
                self.tx.send_all(&[&out]).map_err(NbdError::Transport)?;
            } else if conn.wants_read() {
                if conn.read_tls(&mut socket).map_err(NbdError::Transport)? == 0 {
                    return Err(NbdError::Transport(io::ErrorKind::UnexpectedEof.into()));
                }
                if let Err(e) = conn.process_new_packets() {
                    // Tell the server why (an alert), as far as it listens.
                    if let Ok(out) = pending_records(&mut conn) {
                        let _ = self.tx.send_all(&[&out]);
                    }
                    return Err(failed(e));
                }
            } else {
                return Err(NbdError::Protocol("the TLS handshake stalled".into()));
            }
        }
        // A request is sealed whole, then sent (`Session::seal`).
        conn.set_buffer_limit(None);
        let session = Arc::new(Session {
            conn: Mutex::new(conn),
        });
        self.rx.reader = BufReader::with_capacity(
            READ_BUFFER,
            Source::Tls(TlsReader {
                socket,
                session: Arc::clone(&session),
                raw: Vec::new(),
                used: 0,
            }),
        );
        self.tx.tls = Some(session);
        Ok(())
    }

    /// Changes the timeouts.
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.tx.writer.set_timeout(timeout)
    }

    /// The two directions, to be used from different threads.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        (self.rx, self.tx)
    }

    /// Fills `buf`; end of file before that is `UnexpectedEof`.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.rx.read_exact(buf)
    }

    /// `N` bytes.
    pub fn read_array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        self.rx.read_array()
    }

    /// A big-endian u16.
    pub fn read_u16(&mut self) -> io::Result<u16> {
        self.rx.read_u16()
    }

    /// A big-endian u32.
    pub fn read_u32(&mut self) -> io::Result<u32> {
        self.rx.read_u32()
    }

    /// A big-endian u64.
    pub fn read_u64(&mut self) -> io::Result<u64> {
        self.rx.read_u64()
    }

    /// Reads and drops `n` bytes, without allocating for them.
    pub fn skip(&mut self, n: u64) -> io::Result<()> {
        self.rx.skip(n)
    }

    /// Sends all of `parts`, in order.
    pub fn write_all(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        self.tx.write_all(parts)
    }

    /// Closes both directions; later reads see end of file.
    pub fn shutdown(&self) {
        self.tx.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_and_service_ports_resolve() {
        let addrs = resolve("127.0.0.1", "10809").unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:10809".parse().unwrap()]);
        let addrs = resolve("::1", "5").unwrap();
        assert_eq!(addrs, vec!["[::1]:5".parse().unwrap()]);
        // An empty port is port 0, as qemu connects to it.
        assert_eq!(resolve("127.0.0.1", "").unwrap()[0].port(), 0);
    }

    #[test]
    fn resolution_failures_use_gai_words() {
        // qemu-img info --image-opts driver=nbd,host=127.0.0.1,port=abc
        let e = resolve("127.0.0.1", "abc").unwrap_err();
        assert_eq!(
            e.to_string(),
            "address resolution failed for 127.0.0.1:abc: Servname not supported for ai_socktype"
        );
    }

    #[test]
    fn refused_and_missing_sockets() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let server = Server::Inet {
            host: "127.0.0.1".into(),
            port: port.to_string(),
        };
        let e = Stream::connect(&server).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("Failed to connect to '127.0.0.1:{port}': Connection refused")
        );
        let server = Server::Unix {
            path: "/nonexistent/qimg-nbd.sock".into(),
        };
        let e = Stream::connect(&server).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Failed to connect to '/nonexistent/qimg-nbd.sock': No such file or directory"
        );
        let server = Server::Unix {
            path: format!("/tmp/{}.sock", "0".repeat(120)),
        };
        assert!(Stream::connect(&server)
            .unwrap_err()
            .to_string()
            .ends_with("is too long\nPath must be less than 108 bytes"));
    }

    #[test]
    fn vectored_writes_send_everything_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut link = Link::new(Stream::Unix(a), Duration::from_secs(5)).unwrap();
        let big = vec![7u8; 1 << 20];
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            b.read_to_end(&mut all).unwrap();
            all
        });
        link.write_all(&[b"head", &big, b"", b"tail"]).unwrap();
        link.shutdown();
        drop(link);
        let all = reader.join().unwrap();
        assert_eq!(all.len(), 8 + (1 << 20));
        assert_eq!(&all[..4], b"head");
        assert_eq!(&all[all.len() - 4..], b"tail");
    }
}
