//! One connection in the transmission phase, one request in flight at a
//! time: send a request, read its reply (simple, or structured chunks),
//! check the cookie. Any transport failure or protocol violation leaves
//! the connection marked broken; every later request on it fails.

use crate::error::{NbdError, Result};
use crate::handshake::Export;
use crate::reply::{self, ChunkHeader, Coverage, ErrorChunk, Extent, ReplyHeader};
use crate::socket::Link;
use crate::wire::{self, chunk, cmd, Request};

/// Longest payload of a block status chunk accepted (524,292 bytes: 64 Ki
/// descriptors); servers send far fewer per request.
const MAX_STATUS_CHUNK: u32 = 4 + 8 * 65536;
/// Descriptors kept from one block status reply; the rest are read and
/// dropped (the caller asks again from where the kept ones end).
pub const MAX_EXTENTS: usize = 8192;

/// A connection after a successful handshake.
#[derive(Debug)]
pub struct Conn {
    link: Link,
    export: Export,
    next_cookie: u64,
    broken: bool,
}

impl Conn {
    /// Wraps a negotiated link.
    pub fn new(link: Link, export: Export) -> Conn {
        Conn {
            link,
            export,
            next_cookie: 1,
            broken: false,
        }
    }

    /// What the handshake settled.
    pub fn export(&self) -> &Export {
        &self.export
    }

    /// True once a failure made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Reads `buf.len()` bytes at `offset` (one request: the caller keeps
    /// it within the server's limits).
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.transact(|conn| {
            let cookie = conn.send(cmd::READ, 0, offset, buf.len(), &[])?;
            conn.read_reply(cookie, offset, buf)
        })
    }

    /// Writes `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.transact(|conn| {
            let cookie = conn.send(cmd::WRITE, 0, offset, data.len(), data)?;
            conn.plain_reply(cookie)
        })
    }

    /// `NBD_CMD_WRITE_ZEROES` over `length` bytes at `offset`.
    pub fn write_zeroes(&mut self, offset: u64, length: u32, flags: u16) -> Result<()> {
        self.transact(|conn| {
            let cookie = conn.send(cmd::WRITE_ZEROES, flags, offset, length as usize, &[])?;
            conn.plain_reply(cookie)
        })
    }

    /// `NBD_CMD_FLUSH`.
    pub fn flush(&mut self) -> Result<()> {
        self.transact(|conn| {
            let cookie = conn.send(cmd::FLUSH, 0, 0, 0, &[])?;
            conn.plain_reply(cookie)
        })
    }

    /// The `base:allocation` extents from `offset`, for a query of
    /// `length` bytes (the server may describe less, or a little more).
    pub fn block_status(&mut self, offset: u64, length: u32) -> Result<Vec<Extent>> {
        let Some(context) = self.export.allocation else {
            return Err(NbdError::Protocol(
                "block status without base:allocation".into(),
            ));
        };
        self.transact(|conn| {
            let cookie = conn.send(cmd::BLOCK_STATUS, 0, offset, length as usize, &[])?;
            conn.status_reply(cookie, context)
        })
    }

    /// Sends `NBD_CMD_DISC` and closes the socket; errors are ignored, the
    /// connection is going away.
    pub fn disconnect(mut self) {
        if !self.broken {
            let request = Request {
                flags: 0,
                kind: cmd::DISC,
                cookie: self.next_cookie,
                offset: 0,
                length: 0,
            };
            let _ = self.link.write_all(&[&request.encode()]);
        }
        self.link.shutdown();
    }

    /// Runs one request; a failure that leaves the stream in an unknown
    /// state breaks the connection.
    fn transact<T>(&mut self, f: impl FnOnce(&mut Conn) -> Result<T>) -> Result<T> {
        if self.broken {
            return Err(NbdError::Closed);
        }
        // Broken until the request completes, so that a panic half way
        // leaves the connection unusable rather than mid-message.
        self.broken = true;
        let result = f(self);
        match &result {
            Err(e) if e.breaks_connection() => self.link.shutdown(),
            _ => self.broken = false,
        }
        result
    }

    /// Sends a request header and its payload; returns its cookie.
    fn send(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        length: usize,
        data: &[u8],
    ) -> Result<u64> {
        let length = u32::try_from(length)
            .map_err(|_| NbdError::Protocol(format!("request of {length} bytes is too long")))?;
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1);
        let header = Request {
            flags,
            kind,
            cookie,
            offset,
            length,
        }
        .encode();
        self.link
            .write_all(&[&header, data])
            .map_err(NbdError::Transport)?;
        Ok(cookie)
    }

    /// The next reply header, which must carry `cookie`.
    fn header(&mut self, cookie: u64) -> Result<ReplyHeader> {
        let header = reply::read_header(&mut self.link, self.export.structured)?;
        if header.cookie() != cookie {
            return Err(NbdError::Protocol(format!(
                "reply cookie {} does not match request cookie {cookie}",
                header.cookie()
            )));
        }
        Ok(header)
    }

    /// The reply to a request without reply data (write, flush, zeroes).
    fn plain_reply(&mut self, cookie: u64) -> Result<()> {
        let mut failure = None;
        loop {
            let chunk = match self.header(cookie)? {
                ReplyHeader::Simple { error: 0, .. } => return Ok(()),
                ReplyHeader::Simple { error, .. } => {
                    return Err(NbdError::Server {
                        errno: wire::errno_of(error),
                    })
                }
                ReplyHeader::Chunk(chunk) => chunk,
            };
            match chunk.kind {
                chunk::NONE => chunk.expect_none()?,
                kind if kind & chunk::ERROR_BIT != 0 => {
                    let error = ErrorChunk::read(&mut self.link, &chunk)?;
                    failure.get_or_insert(error.errno);
                }
                kind => {
                    return Err(NbdError::Protocol(format!(
                        "unexpected chunk type {kind} in a reply without data"
                    )))
                }
            }
            if chunk.done() {
                return match failure {
                    Some(errno) => Err(NbdError::Server { errno }),
                    None => Ok(()),
                };
            }
        }
    }

    /// The reply to a read of `buf.len()` bytes at `offset`: the data
    /// itself, or chunks of data and holes that must cover `buf` exactly.
    fn read_reply(&mut self, cookie: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        let chunk = match self.header(cookie)? {
            ReplyHeader::Simple { error: 0, .. } if self.export.structured => {
                // "MUST NOT use a simple reply for NBD_CMD_READ"
                return Err(NbdError::Protocol("simple reply to a read".into()));
            }
            ReplyHeader::Simple { error: 0, .. } => {
                return self.link.read_exact(buf).map_err(NbdError::Transport);
            }
            ReplyHeader::Simple { error, .. } => {
                return Err(NbdError::Server {
                    errno: wire::errno_of(error),
                })
            }
            ReplyHeader::Chunk(chunk) => chunk,
        };
        let mut coverage = Coverage::new(offset, buf.len() as u64);
        let mut failure = None;
        let mut chunk = chunk;
        loop {
            self.read_chunk(&chunk, &mut coverage, buf, &mut failure)?;
            if chunk.done() {
                break;
            }
            chunk = match self.header(cookie)? {
                ReplyHeader::Chunk(next) => next,
                ReplyHeader::Simple { .. } => {
                    return Err(NbdError::Protocol(
                        "simple reply inside a structured reply".into(),
                    ))
                }
            };
        }
        if let Some(errno) = failure {
            return Err(NbdError::Server { errno });
        }
        if !coverage.complete() {
            return Err(NbdError::Protocol(
                "server claimed success without sending all the data".into(),
            ));
        }
        Ok(())
    }

    /// One chunk of a read reply.
    fn read_chunk(
        &mut self,
        chunk: &ChunkHeader,
        coverage: &mut Coverage,
        buf: &mut [u8],
        failure: &mut Option<i32>,
    ) -> Result<()> {
        match chunk.kind {
            chunk::OFFSET_DATA => {
                if chunk.length < 9 {
                    return Err(NbdError::Protocol("data chunk too short".into()));
                }
                let at = self.link.read_u64().map_err(NbdError::Transport)?;
                let range = coverage.claim(at, u64::from(chunk.length - 8))?;
                self.link
                    .read_exact(&mut buf[range])
                    .map_err(NbdError::Transport)
            }
            chunk::OFFSET_HOLE => {
                if chunk.length != 12 {
                    return Err(NbdError::Protocol("hole chunk of the wrong size".into()));
                }
                let at = self.link.read_u64().map_err(NbdError::Transport)?;
                let size = self.link.read_u32().map_err(NbdError::Transport)?;
                if size == 0 {
                    return Err(NbdError::Protocol("empty hole chunk".into()));
                }
                let range = coverage.claim(at, u64::from(size))?;
                buf[range].fill(0);
                Ok(())
            }
            chunk::NONE => chunk.expect_none(),
            kind if kind & chunk::ERROR_BIT != 0 => {
                let error = ErrorChunk::read(&mut self.link, chunk)?;
                failure.get_or_insert(error.errno);
                Ok(())
            }
            kind => Err(NbdError::Protocol(format!(
                "unexpected chunk type {kind} in a read reply"
            ))),
        }
    }

    /// The reply to a block status request: the extents of context
    /// `context` (chunks of other contexts are skipped).
    fn status_reply(&mut self, cookie: u64, context: u32) -> Result<Vec<Extent>> {
        let mut extents: Option<Vec<Extent>> = None;
        let mut failure = None;
        loop {
            let chunk = match self.header(cookie)? {
                ReplyHeader::Simple { error: 0, .. } => {
                    return Err(NbdError::Protocol(
                        "simple reply to a block status request".into(),
                    ))
                }
                ReplyHeader::Simple { error, .. } => {
                    return Err(NbdError::Server {
                        errno: wire::errno_of(error),
                    })
                }
                ReplyHeader::Chunk(chunk) => chunk,
            };
            match chunk.kind {
                chunk::BLOCK_STATUS => {
                    if chunk.length < 12 || (chunk.length - 4) % 8 != 0 {
                        return Err(NbdError::Protocol(
                            "block status chunk of a bad length".into(),
                        ));
                    }
                    if chunk.length > MAX_STATUS_CHUNK {
                        return Err(NbdError::Protocol(format!(
                            "block status chunk of {} bytes is too long",
                            chunk.length
                        )));
                    }
                    let id = self.link.read_u32().map_err(NbdError::Transport)?;
                    let count = ((chunk.length - 4) / 8) as usize;
                    if id != context {
                        self.link
                            .skip(u64::from(chunk.length - 4))
                            .map_err(NbdError::Transport)?;
                    } else if extents.is_some() {
                        return Err(NbdError::Protocol(
                            "two block status chunks for one context".into(),
                        ));
                    } else {
                        extents = Some(self.descriptors(count)?);
                    }
                }
                chunk::NONE => chunk.expect_none()?,
                kind if kind & chunk::ERROR_BIT != 0 => {
                    let error = ErrorChunk::read(&mut self.link, &chunk)?;
                    failure.get_or_insert(error.errno);
                }
                kind => {
                    return Err(NbdError::Protocol(format!(
                        "unexpected chunk type {kind} in a block status reply"
                    )))
                }
            }
            if chunk.done() {
                break;
            }
        }
        if let Some(errno) = failure {
            return Err(NbdError::Server { errno });
        }
        extents.ok_or_else(|| NbdError::Protocol("block status reply without extents".into()))
    }

    /// `count` descriptors (already bounded by the chunk's length); keeps
    /// the first [`MAX_EXTENTS`].
    fn descriptors(&mut self, count: usize) -> Result<Vec<Extent>> {
        let mut out = Vec::with_capacity(count.min(MAX_EXTENTS));
        for _ in 0..count {
            let length = self.link.read_u32().map_err(NbdError::Transport)?;
            let flags = self.link.read_u32().map_err(NbdError::Transport)?;
            if length == 0 {
                return Err(NbdError::Protocol("block status extent of length 0".into()));
            }
            if out.len() < MAX_EXTENTS {
                out.push(Extent { length, flags });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::BlockSizes;
    use crate::testing::{serve, Script};
    use crate::wire::{state, tx_flags};
    use std::thread::JoinHandle;

    /// A connection to a scripted server that has already negotiated.
    fn conn(
        structured: bool,
        script: impl FnOnce(Script) + Send + 'static,
    ) -> (Conn, JoinHandle<()>) {
        let (link, server) = serve(script);
        let export = Export {
            size: 1 << 20,
            flags: tx_flags::HAS_FLAGS,
            structured,
            allocation: structured.then_some(7),
            block: BlockSizes::default(),
        };
        (Conn::new(link, export), server)
    }

    fn data_chunk(at: u64, data: &[u8]) -> Vec<u8> {
        let mut out = at.to_be_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }

    fn hole_chunk(at: u64, size: u32) -> Vec<u8> {
        let mut out = at.to_be_bytes().to_vec();
        out.extend_from_slice(&size.to_be_bytes());
        out
    }

    fn error_chunk(error: u32, message: &str) -> Vec<u8> {
        let mut out = error.to_be_bytes().to_vec();
        out.extend_from_slice(&(message.len() as u16).to_be_bytes());
        out.extend_from_slice(message.as_bytes());
        out
    }

    #[test]
    fn simple_replies_carry_read_data() {
        let (mut c, server) = conn(false, |mut s| {
            let (req, _) = s.request();
            assert_eq!((req.kind, req.offset, req.length), (cmd::READ, 4096, 5));
            s.simple(req.cookie, 0, b"hello");
            let (req, data) = s.request();
            assert_eq!((req.kind, data.as_slice()), (cmd::WRITE, &b"abc"[..]));
            s.simple(req.cookie, 28, &[]);
            let (req, _) = s.request();
            assert_eq!(req.kind, cmd::FLUSH);
            s.simple(req.cookie, 0, &[]);
            s.drain();
        });
        let mut buf = [0u8; 5];
        c.read(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(matches!(
            c.write(0, b"abc"),
            Err(NbdError::Server {
                errno: libc::ENOSPC
            })
        ));
        // A server error leaves the connection usable.
        c.flush().unwrap();
        c.disconnect();
        server.join().unwrap();
    }

    #[test]
    fn structured_reads_reassemble_data_and_holes() {
        let (mut c, server) = conn(true, |mut s| {
            let (req, _) = s.request();
            s.chunk(0, chunk::OFFSET_DATA, req.cookie, &data_chunk(110, b"tail"));
            s.chunk(0, chunk::OFFSET_HOLE, req.cookie, &hole_chunk(104, 6));
            s.chunk(0, chunk::OFFSET_DATA, req.cookie, &data_chunk(100, b"head"));
            s.chunk(chunk::FLAG_DONE, chunk::NONE, req.cookie, &[]);
            let (req, _) = s.request();
            assert_eq!(req.kind, cmd::DISC);
        });
        let mut buf = [0xffu8; 14];
        c.read(100, &mut buf).unwrap();
        assert_eq!(&buf, b"head\0\0\0\0\0\0tail");
        c.disconnect();
        server.join().unwrap();
    }

    #[test]
    fn error_chunks_fail_the_request_only() {
        let (mut c, server) = conn(true, |mut s| {
            let (req, _) = s.request();
            s.chunk(0, chunk::ERROR, req.cookie, &error_chunk(1, "no"));
            s.chunk(chunk::FLAG_DONE, chunk::NONE, req.cookie, &[]);
            let (req, _) = s.request();
            let mut offset_error = error_chunk(5, "bad sector");
            offset_error.extend_from_slice(&0u64.to_be_bytes());
            s.chunk(
                chunk::FLAG_DONE,
                chunk::ERROR_OFFSET,
                req.cookie,
                &offset_error,
            );
            let (req, _) = s.request();
            s.chunk(
                chunk::FLAG_DONE,
                chunk::OFFSET_DATA,
                req.cookie,
                &data_chunk(0, b"ok"),
            );
            s.drain();
        });
        let mut buf = [0u8; 2];
        assert!(matches!(
            c.read(0, &mut buf),
            Err(NbdError::Server { errno: libc::EPERM })
        ));
        assert!(matches!(
            c.read(0, &mut buf),
            Err(NbdError::Server { errno: libc::EIO })
        ));
        c.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"ok");
        drop(c);
        server.join().unwrap();
    }

    /// Runs one read against a server that answers with `answer`; the
    /// error it gives, after which the connection must be broken.
    fn hostile_read(answer: impl FnOnce(&mut Script, u64) + Send + 'static) -> NbdError {
        let (mut c, server) = conn(true, move |mut s| {
            let (req, _) = s.request();
            answer(&mut s, req.cookie);
            // Hanging up: the client must not wait for more.
        });
        let mut buf = [0u8; 16];
        let e = c.read(0, &mut buf).unwrap_err();
        assert!(c.is_broken(), "{e}");
        assert!(matches!(c.read(0, &mut buf), Err(NbdError::Closed)));
        drop(c);
        server.join().unwrap();
        e
    }

    #[test]
    fn hostile_reads_break_the_connection() {
        let e = hostile_read(|s, cookie| s.simple(cookie + 1, 0, &[0; 16]));
        assert!(e.to_string().contains("cookie"), "{e}");
        // Structured replies negotiated: a simple reply with data is wrong.
        let e = hostile_read(|s, cookie| s.simple(cookie, 0, &[0; 16]));
        assert!(e.to_string().contains("simple reply"), "{e}");
        // More data than asked for, before any of it is read.
        let e = hostile_read(|s, cookie| {
            s.chunk_claiming(
                chunk::FLAG_DONE,
                chunk::OFFSET_DATA,
                cookie,
                u32::MAX,
                &0u64.to_be_bytes(),
            )
        });
        assert!(e.to_string().contains("outside"), "{e}");
        // Overlapping chunks.
        let e = hostile_read(|s, cookie| {
            s.chunk(0, chunk::OFFSET_DATA, cookie, &data_chunk(0, &[1; 10]));
            s.chunk(
                chunk::FLAG_DONE,
                chunk::OFFSET_HOLE,
                cookie,
                &hole_chunk(8, 8),
            );
        });
        assert!(e.to_string().contains("overlap"), "{e}");
        // Success claimed with a gap left.
        let e = hostile_read(|s, cookie| {
            s.chunk(
                chunk::FLAG_DONE,
                chunk::OFFSET_DATA,
                cookie,
                &data_chunk(0, &[1; 10]),
            );
        });
        assert!(e.to_string().contains("all the data"), "{e}");
        // The server dies half way through the data.
        let e = hostile_read(|s, cookie| {
            s.chunk_claiming(
                chunk::FLAG_DONE,
                chunk::OFFSET_DATA,
                cookie,
                24,
                &data_chunk(0, &[1; 4]),
            );
        });
        assert!(matches!(e, NbdError::Transport(_)), "{e}");
        // An unknown chunk type without the error bit.
        let e = hostile_read(|s, cookie| s.chunk(chunk::FLAG_DONE, 77, cookie, &[]));
        assert!(e.to_string().contains("unexpected chunk type 77"), "{e}");
        // An error message longer than its chunk.
        let e = hostile_read(|s, cookie| {
            let mut payload = 5u32.to_be_bytes().to_vec();
            payload.extend_from_slice(&100u16.to_be_bytes());
            s.chunk(chunk::FLAG_DONE, chunk::ERROR, cookie, &payload);
        });
        assert!(e.to_string().contains("longer than its chunk"), "{e}");
        // Garbage instead of a reply.
        let e = hostile_read(|s, _| s.send(&[0x55; 32]));
        assert!(e.to_string().contains("reply magic"), "{e}");
    }

    #[test]
    fn a_silent_server_times_out_the_request() {
        let (mut c, server) = conn(true, |mut s| {
            s.request();
            s.drain();
        });
        let mut buf = [0u8; 16];
        let started = std::time::Instant::now();
        assert!(matches!(c.read(0, &mut buf), Err(NbdError::Transport(_))));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn block_status_keeps_its_context_and_skips_others() {
        let (mut c, server) = conn(true, |mut s| {
            let (req, _) = s.request();
            assert_eq!(
                (req.kind, req.offset, req.length),
                (cmd::BLOCK_STATUS, 0, 1 << 20)
            );
            let mut other = 9u32.to_be_bytes().to_vec();
            other.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 0]);
            s.chunk(0, chunk::BLOCK_STATUS, req.cookie, &other);
            let mut ours = 7u32.to_be_bytes().to_vec();
            for (length, flags) in [(4096u32, 0u32), (65536, state::HOLE | 2)] {
                ours.extend_from_slice(&length.to_be_bytes());
                ours.extend_from_slice(&flags.to_be_bytes());
            }
            s.chunk(chunk::FLAG_DONE, chunk::BLOCK_STATUS, req.cookie, &ours);
            let (req, _) = s.request();
            let mut zero = 7u32.to_be_bytes().to_vec();
            zero.extend_from_slice(&[0; 8]);
            s.chunk(chunk::FLAG_DONE, chunk::BLOCK_STATUS, req.cookie, &zero);
            s.drain();
        });
        let extents = c.block_status(0, 1 << 20).unwrap();
        assert_eq!(
            extents,
            vec![
                Extent {
                    length: 4096,
                    flags: 0
                },
                Extent {
                    length: 65536,
                    flags: state::HOLE | 2
                },
            ]
        );
        let e = c.block_status(0, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("length 0"), "{e}");
        assert!(c.is_broken());
        drop(c);
        server.join().unwrap();
    }
}
