//! One HTTP/1.1 keep-alive connection, plain or TLS, whose every socket
//! operation is bounded by the current request's deadline.

use crate::error::HttpError;
use crate::options::ProxyLogin;
use crate::proxy::{self, Proxy};
use crate::request::{self, Extra};
use crate::response::{self, Framing, Head, ResponseError};
use crate::tls::{self, TlsError};
use crate::url::{Scheme, Url};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Buffer between the socket and the response parser: headers and small
/// bodies go through it; reads of larger bodies bypass it.
const BUFFER: usize = 16 * 1024;
/// Bytes a request may move per `timeout` period: a request for more gets
/// a proportionally longer deadline.
const BYTES_PER_TIMEOUT: usize = 1 << 20;

/// The socket, plain or wrapped in TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.sock,
        }
    }
}

/// A stream whose reads and writes fail with `TimedOut` past a deadline,
/// counting the bytes read.
struct Timed {
    stream: Stream,
    deadline: Option<Instant>,
    received: u64,
}

/// Sets `tcp`'s timeouts to the time left before `deadline`, or fails with
/// `TimedOut` if none is.
fn arm(tcp: &TcpStream, deadline: Option<Instant>) -> io::Result<()> {
    let left = match deadline {
        None => None,
        Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(left),
            _ => return Err(io::ErrorKind::TimedOut.into()),
        },
    };
    tcp.set_read_timeout(left)?;
    tcp.set_write_timeout(left)
}

/// A socket timeout shows as `WouldBlock` on Unix.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::ErrorKind::TimedOut.into()
    } else {
        e
    }
}

impl Timed {
    /// Runs `op` on the stream within the deadline, again when a signal
    /// interrupts it (a socket with a timeout is not restarted after a
    /// signal handler, and qimg handles SIGUSR1 as qemu-img does).
    fn retry<T>(&mut self, mut op: impl FnMut(&mut Stream) -> io::Result<T>) -> io::Result<T> {
        loop {
            arm(self.stream.tcp(), self.deadline)?;
            match op(&mut self.stream) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other.map_err(timed_out),
            }
        }
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.retry(|stream| match stream {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        })?;
        self.received += n as u64;
        Ok(n)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.retry(|stream| match stream {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.retry(|stream| match stream {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        })
    }
}

/// One connection to a server, or to the proxy in front of it.
pub struct Conn {
    io: BufReader<Timed>,
    /// The URL it was opened for (its origin is what matters).
    origin: Url,
    /// The proxy plain http requests go to (https ones go through its
    /// tunnel, as to the server).
    proxy: Option<Proxy>,
    /// How long a request may take, `None` for ever.
    timeout: Option<Duration>,
    /// When the current request started.
    started: Instant,
    /// True once a response ended cleanly and the server keeps the
    /// connection open.
    reusable: bool,
}

impl Conn {
    /// Connects to `url`'s host and port, or to the proxy the environment
    /// names for it (logging in as `login` says), then does the TLS
    /// handshake for https (`tls` must then be given), within `timeout`.
    pub fn connect(
        url: &Url,
        tls: Option<&Arc<ClientConfig>>,
        timeout: Option<Duration>,
        login: &ProxyLogin,
    ) -> Result<Conn, HttpError> {
        let started = Instant::now();
        let proxy = proxy::for_url(url, |name| std::env::var(name).ok())?
            .map(|proxy| proxy.with_login(login));
        let tcp = match &proxy {
            Some(proxy) => connect_tcp(&proxy.host, proxy.port, timeout, started)?,
            None => connect_tcp(&url.host, url.port, timeout, started)?,
        };
        let _ = tcp.set_nodelay(true);
        let deadline = timeout.map(|t| started + t);
        let stream = match (url.scheme, tls) {
            (Scheme::Http, _) => Stream::Plain(tcp),
            (Scheme::Https, Some(config)) => {
                if let Some(proxy) = &proxy {
                    tunnel(url, proxy, &tcp, deadline, started)?;
                }
                handshake(url, config, tcp, deadline, started)?
            }
            (Scheme::Https, None) => {
                return Err(TlsError::Setup("no TLS configuration".into()).into())
            }
        };
        let proxy = proxy.filter(|_| url.scheme == Scheme::Http);
        let timed = Timed {
            stream,
            deadline,
            received: 0,
        };
        Ok(Conn {
            io: BufReader::with_capacity(BUFFER, timed),
            origin: url.clone(),
            proxy,
            timeout,
            started,
            reusable: true,
        })
    }

    /// True if the connection may carry a request for `url`.
    pub fn serves(&self, url: &Url) -> bool {
        self.reusable && self.origin.same_origin(url)
    }

    /// True if the connection may carry another request.
    pub fn reusable(&self) -> bool {
        self.reusable
    }

    /// Sends `HEAD` for `url` and reads the response's head.
    pub fn head(&mut self, url: &Url, extra: &Extra) -> Result<Head, HttpError> {
        let head = self.exchange(&request::head(url, extra, self.proxy.as_ref()), 0)?;
        self.reusable = head.keep_alive();
        Ok(head)
    }

    /// Fetches `buf.len()` (non-zero) bytes at `offset` of `url`, whose
    /// whole length is `size`, into `buf`.
    pub fn get_range(
        &mut self,
        url: &Url,
        extra: &Extra,
        offset: u64,
        buf: &mut [u8],
        size: u64,
    ) -> Result<(), HttpError> {
        let last = offset + buf.len() as u64 - 1;
        let request = request::get_range(url, offset, last, extra, self.proxy.as_ref());
        let head = self.exchange(&request, buf.len())?;
        match head.status {
            206 => {
                let range = head.content_range()?.ok_or_else(|| {
                    HttpError::Range("206 response without a Content-Range".into())
                })?;
                if (range.first, range.last) != (offset, last) {
                    return Err(HttpError::Range(format!(
                        "server sent bytes {}-{} for the range {offset}-{last}",
                        range.first, range.last
                    )));
                }
            }
            // A server that ignores ranges sends the whole file: only
            // usable when the whole file was asked for.
            200 if offset == 0 && buf.len() as u64 == size => {}
            200 => {
                return Err(HttpError::Range(
                    "server ignored the byte range request".into(),
                ))
            }
            status @ (300..=599) => return Err(HttpError::Status(status)),
            status => {
                return Err(HttpError::Range(format!(
                    "unexpected status {status} for a range request"
                )))
            }
        }
        let framing = head.framing(false)?;
        response::read_body(&mut self.io, framing, buf).map_err(|e| self.fail(e))?;
        self.reusable = head.keep_alive() && framing != Framing::UntilClose;
        Ok(())
    }

    /// Sends `request` and reads the response's head, with a deadline for
    /// a response body of `body` bytes. The connection is not reusable
    /// until the caller has read the whole response.
    fn exchange(&mut self, request: &[u8], body: usize) -> Result<Head, HttpError> {
        self.reusable = false;
        self.started = Instant::now();
        let periods = body.div_ceil(BYTES_PER_TIMEOUT).max(1) as u32;
        let timed = self.io.get_mut();
        timed.deadline = self
            .timeout
            .map(|t| self.started + t.saturating_mul(periods));
        timed.received = 0;
        if let Err(e) = timed.write_all(request).and_then(|_| timed.flush()) {
            return Err(match e.kind() {
                io::ErrorKind::TimedOut => self.timeout_error(),
                _ => match tls_error(&e) {
                    Some(tls) => tls.into(),
                    None => HttpError::Send(e),
                },
            });
        }
        response::read_head(&mut self.io).map_err(|e| self.fail(e))
    }

    /// The error of `e`, a failure while reading a response.
    fn fail(&self, e: ResponseError) -> HttpError {
        if let ResponseError::Io(io) = &e {
            if io.kind() == io::ErrorKind::TimedOut {
                return self.timeout_error();
            }
            if let Some(tls) = tls_error(io) {
                return tls.into();
            }
        }
        e.into()
    }

    fn timeout_error(&self) -> HttpError {
        HttpError::Timeout {
            ms: self.started.elapsed().as_millis(),
            bytes: self.io.get_ref().received,
        }
    }
}

/// The TLS failure inside an I/O error from rustls, if it is one.
fn tls_error(e: &io::Error) -> Option<TlsError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(TlsError::from)
}

/// Resolves `host` and connects to the first of its addresses that
/// answers on `port`.
fn connect_tcp(
    host: &str,
    port: u16,
    timeout: Option<Duration>,
    started: Instant,
) -> Result<TcpStream, HttpError> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|_| HttpError::Resolve(host.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(HttpError::Resolve(host.to_string()));
    }
    let mut timed_out = false;
    for addr in &addrs {
        let attempt = match timeout {
            Some(limit) => match limit.checked_sub(started.elapsed()) {
                Some(left) if !left.is_zero() => TcpStream::connect_timeout(addr, left),
                _ => {
                    timed_out = true;
                    break;
                }
            },
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(tcp) => return Ok(tcp),
            Err(e) => {
                timed_out |= matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                )
            }
        }
    }
    Err(HttpError::Connect {
        host: host.to_string(),
        port,
        ms: started.elapsed().as_millis(),
        reason: if timed_out {
            "Timeout was reached"
        } else {
            "Couldn't connect to server"
        },
    })
}

/// Asks `proxy` (connected on `tcp`) for a tunnel to `url`'s server
/// before `deadline`; a refusal is its status, as curl reports it.
fn tunnel(
    url: &Url,
    proxy: &Proxy,
    tcp: &TcpStream,
    deadline: Option<Instant>,
    started: Instant,
) -> Result<(), HttpError> {
    let mut timed = Timed {
        stream: Stream::Plain(tcp.try_clone().map_err(HttpError::Send)?),
        deadline,
        received: 0,
    };
    let timeout = |e: &io::Error| e.kind() == io::ErrorKind::TimedOut;
    timed
        .write_all(&request::connect(url, proxy))
        .map_err(|e| {
            if timeout(&e) {
                timeout_since(started)
            } else {
                HttpError::Send(e)
            }
        })?;
    // Unbuffered beyond the response's head: what follows is the server's.
    let mut reader = BufReader::with_capacity(1, timed);
    let head = response::read_head(&mut reader).map_err(|e| match e {
        ResponseError::Io(io) if timeout(&io) => timeout_since(started),
        other => other.into(),
    })?;
    if !(200..300).contains(&head.status) {
        return Err(HttpError::Status(head.status));
    }
    Ok(())
}

/// Does the TLS handshake over `tcp` before `deadline`.
fn handshake(
    url: &Url,
    config: &Arc<ClientConfig>,
    mut tcp: TcpStream,
    deadline: Option<Instant>,
    started: Instant,
) -> Result<Stream, HttpError> {
    let name = tls::server_name(&url.host)?;
    let mut conn =
        ClientConnection::new(config.clone(), name).map_err(|e| TlsError::Setup(e.to_string()))?;
    while conn.is_handshaking() {
        arm(&tcp, deadline).map_err(|_| timeout_since(started))?;
        if let Err(e) = conn.complete_io(&mut tcp) {
            let e = timed_out(e);
            return Err(match (e.kind(), tls_error(&e)) {
                (_, Some(tls)) => tls.into(),
                (io::ErrorKind::TimedOut, None) => timeout_since(started),
                (_, None) => TlsError::Handshake(qimg_driver_api::error::io_message(&e)).into(),
            });
        }
    }
    Ok(Stream::Tls(Box::new(StreamOwned::new(conn, tcp))))
}

/// A timeout of a request that started at `started` and received nothing.
fn timeout_since(started: Instant) -> HttpError {
    HttpError::Timeout {
        ms: started.elapsed().as_millis(),
        bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    extern "C" fn ignore(_: libc::c_int) {}

    #[test]
    fn a_signal_does_not_fail_a_read() {
        // A handler without SA_RESTART; a socket with a timeout is not
        // restarted after a handler anyway.
        // SAFETY: installs a handler that does nothing.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
            assert_eq!(
                libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
                0
            );
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(400));
            socket.write_all(b"late").unwrap();
        });
        let mut timed = Timed {
            stream: Stream::Plain(TcpStream::connect(address).unwrap()),
            deadline: Some(Instant::now() + Duration::from_secs(10)),
            received: 0,
        };
        let (tell, told) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            // SAFETY: the calling thread's own id.
            tell.send(unsafe { libc::pthread_self() }).unwrap();
            let mut buf = [0u8; 4];
            let read = timed.read(&mut buf);
            read.map(|n| buf[..n].to_vec())
        });
        let thread = told.recv().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: the reader thread runs until the server writes, 300 ms on.
        assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR2) }, 0);
        assert_eq!(reader.join().unwrap().unwrap(), b"late");
        server.join().unwrap();
    }
}
