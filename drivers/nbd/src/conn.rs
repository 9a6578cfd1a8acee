//! One connection in the transmission phase: requests from many threads
//! in flight at once ([`crate::inflight`]), each reply matched to its
//! request by cookie. Any transport failure or protocol violation breaks
//! the connection: every request in flight on it and every later one
//! fails.

use crate::error::{NbdError, Result};
use crate::handshake::Export;
use crate::inflight::Inflight;
use crate::pending::{Answer, Expect, Pending, Target};
use crate::reply::Extent;
use crate::socket::Link;
use crate::wire::{cmd, Request};
use std::fmt;

pub use crate::pending::MAX_EXTENTS;

/// A connection after a successful handshake; shared by the threads that
/// use it. Dropping it sends `NBD_CMD_DISC`.
pub struct Conn {
    export: Export,
    inflight: Inflight,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("export", &self.export)
            .field("broken", &self.is_broken())
            .finish()
    }
}

impl Conn {
    /// Wraps a negotiated link.
    pub fn new(link: Link, export: Export) -> Conn {
        Conn {
            inflight: Inflight::new(link, export.structured),
            export,
        }
    }

    /// What the handshake settled.
    pub fn export(&self) -> &Export {
        &self.export
    }

    /// True once a failure made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.inflight.is_broken()
    }

    /// True if a write or write zeroes was issued since the last flush
    /// began.
    pub fn is_dirty(&self) -> bool {
        self.inflight.is_dirty()
    }

    /// How many requests are in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.in_flight()
    }

    /// Reads `buf.len()` bytes at `offset` (one request: the caller keeps
    /// it within the server's limits).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let length = request_length(buf.len())?;
        // SAFETY: `buf` stays borrowed by this call, and untouched by it,
        // until `call` returns, by which time the target is dropped.
        let target = unsafe { Target::new(buf, offset) };
        self.call(cmd::READ, 0, offset, length, &[], Expect::Read(target))
            .map(drop)
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let length = request_length(data.len())?;
        self.call(cmd::WRITE, 0, offset, length, data, Expect::Plain)
            .map(drop)
    }

    /// `NBD_CMD_WRITE_ZEROES` over `length` bytes at `offset`.
    pub fn write_zeroes(&self, offset: u64, length: u32, flags: u16) -> Result<()> {
        self.call(cmd::WRITE_ZEROES, flags, offset, length, &[], Expect::Plain)
            .map(drop)
    }

    /// `NBD_CMD_FLUSH`, sent once every write issued before it on this
    /// connection has had its reply.
    pub fn flush(&self) -> Result<()> {
        self.inflight.settle_writes()?;
        self.call(cmd::FLUSH, 0, 0, 0, &[], Expect::Plain).map(drop)
    }

    /// The `base:allocation` extents from `offset`, for a query of
    /// `length` bytes (the server may describe less, or a little more).
    pub fn block_status(&self, offset: u64, length: u32) -> Result<Vec<Extent>> {
        let Some(context) = self.export.allocation else {
            return Err(NbdError::Protocol(
                "block status without base:allocation".into(),
            ));
        };
        match self.call(
            cmd::BLOCK_STATUS,
            0,
            offset,
            length,
            &[],
            Expect::Status(context),
        )? {
            Answer::Extents(extents) => Ok(extents),
            Answer::Done => Err(NbdError::Protocol(
                "block status reply without extents".into(),
            )),
        }
    }

    /// Closes the connection (as dropping it does): `NBD_CMD_DISC`, then
    /// the socket is shut down.
    pub fn disconnect(self) {
        drop(self);
    }

    fn call(
        &self,
        kind: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
        expect: Expect,
    ) -> Result<Answer> {
        let request = Request {
            flags,
            kind,
            cookie: 0,
            offset,
            length,
        };
        self.inflight.call(request, payload, Pending::new(expect))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.inflight.close();
    }
}

/// A request's length on the wire.
fn request_length(length: usize) -> Result<u32> {
    u32::try_from(length)
        .map_err(|_| NbdError::Protocol(format!("request of {length} bytes is too long")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::BlockSizes;
    use crate::testing::{serve, Script};
    use crate::wire::{chunk, state, tx_flags};
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
        let (c, server) = conn(false, |mut s| {
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
        let (c, server) = conn(true, |mut s| {
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
        let (c, server) = conn(true, |mut s| {
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
        let (c, server) = conn(true, move |mut s| {
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
        let (c, server) = conn(true, |mut s| {
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
        let (c, server) = conn(true, |mut s| {
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

    /// What the scripted servers below hold at `offset`.
    fn pattern(offset: u64) -> [u8; 8] {
        [(offset / 100) as u8 + 1; 8]
    }

    /// Reads 8 bytes at each of `offsets` from as many threads at once;
    /// their results, in the same order.
    fn reads(c: &Conn, offsets: &[u64]) -> Vec<Result<[u8; 8]>> {
        std::thread::scope(|scope| {
            let readers: Vec<_> = offsets
                .iter()
                .map(|&offset| {
                    scope.spawn(move || {
                        let mut buf = [0u8; 8];
                        c.read(offset, &mut buf).map(|()| buf)
                    })
                })
                .collect();
            readers.into_iter().map(|r| r.join().unwrap()).collect()
        })
    }

    #[test]
    fn replies_in_any_order_reach_their_requests() {
        let (c, server) = conn(false, |mut s| {
            // Four requests in flight before any reply, answered last
            // first.
            let requests: Vec<_> = (0..4).map(|_| s.request().0).collect();
            for req in requests.iter().rev() {
                assert_eq!(req.kind, cmd::READ);
                s.simple(req.cookie, 0, &pattern(req.offset));
            }
            s.drain();
        });
        let offsets = [0, 100, 200, 300];
        for (result, &offset) in reads(&c, &offsets).into_iter().zip(&offsets) {
            assert_eq!(result.unwrap(), pattern(offset));
        }
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn interleaved_chunks_of_two_reads_land_in_their_buffers() {
        let (c, server) = conn(true, |mut s| {
            let (a, _) = s.request();
            let (b, _) = s.request();
            let (a, b) = if a.offset == 0 { (a, b) } else { (b, a) };
            let half = |at: u64| pattern(at)[..4].to_vec();
            s.chunk(
                0,
                chunk::OFFSET_DATA,
                a.cookie,
                &data_chunk(a.offset, &half(a.offset)),
            );
            s.chunk(
                0,
                chunk::OFFSET_DATA,
                b.cookie,
                &data_chunk(b.offset + 4, &half(b.offset)),
            );
            s.chunk(
                chunk::FLAG_DONE,
                chunk::OFFSET_HOLE,
                a.cookie,
                &hole_chunk(a.offset + 4, 4),
            );
            s.chunk(
                0,
                chunk::OFFSET_DATA,
                b.cookie,
                &data_chunk(b.offset, &half(b.offset)),
            );
            s.chunk(chunk::FLAG_DONE, chunk::NONE, b.cookie, &[]);
            s.drain();
        });
        let results = reads(&c, &[0, 500]);
        assert_eq!(results[0].as_ref().unwrap(), &[1, 1, 1, 1, 0, 0, 0, 0]);
        assert_eq!(results[1].as_ref().unwrap(), &pattern(500));
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn an_unknown_cookie_fails_every_request_in_flight() {
        let (c, server) = conn(true, |mut s| {
            let requests: Vec<_> = (0..3).map(|_| s.request().0).collect();
            let first = requests.iter().find(|r| r.offset == 0).unwrap();
            s.chunk(
                chunk::FLAG_DONE,
                chunk::OFFSET_DATA,
                first.cookie,
                &data_chunk(0, &pattern(0)),
            );
            let unknown = requests.iter().map(|r| r.cookie).max().unwrap() + 100;
            s.chunk(chunk::FLAG_DONE, chunk::NONE, unknown, &[]);
            s.drain();
        });
        let results = reads(&c, &[0, 100, 200]);
        assert_eq!(results[0].as_ref().unwrap(), &pattern(0));
        for result in &results[1..] {
            let e = result.as_ref().unwrap_err();
            assert!(matches!(e, NbdError::Protocol(_)), "{e}");
            assert!(e.to_string().contains("cookie"), "{e}");
        }
        assert!(c.is_broken());
        assert!(matches!(c.read(0, &mut [0; 8]), Err(NbdError::Closed)));
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn a_second_reply_to_a_finished_request_breaks_the_connection() {
        let (c, server) = conn(false, |mut s| {
            let (a, _) = s.request();
            let (b, _) = s.request();
            let (a, _b) = if a.offset == 0 { (a, b) } else { (b, a) };
            s.simple(a.cookie, 0, &pattern(0));
            s.simple(a.cookie, 0, &pattern(0));
            s.drain();
        });
        let results = reads(&c, &[0, 100]);
        assert_eq!(results[0].as_ref().unwrap(), &pattern(0));
        let e = results[1].as_ref().unwrap_err();
        assert!(e.to_string().contains("cookie"), "{e}");
        assert!(c.is_broken());
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn a_server_hanging_up_fails_every_waiter_at_once() {
        let (c, server) = conn(true, |mut s| {
            let requests: Vec<_> = (0..4).map(|_| s.request().0).collect();
            // Half a data chunk, then gone.
            s.chunk_claiming(
                chunk::FLAG_DONE,
                chunk::OFFSET_DATA,
                requests[0].cookie,
                16,
                &requests[0].offset.to_be_bytes(),
            );
        });
        let started = std::time::Instant::now();
        for result in reads(&c, &[0, 100, 200, 300]) {
            match result {
                // End of file, not the 2 s timeout.
                Err(NbdError::Transport(e)) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof)
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(matches!(c.write(0, b"x"), Err(NbdError::Closed)));
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn a_silent_server_times_out_every_request_in_flight() {
        let (c, server) = conn(true, |mut s| {
            for _ in 0..3 {
                s.request();
            }
            s.drain();
        });
        let started = std::time::Instant::now();
        for result in reads(&c, &[0, 100, 200]) {
            assert!(matches!(result, Err(NbdError::Transport(_))), "{result:?}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn a_flush_waits_for_the_writes_issued_before_it() {
        let (c, server) = conn(false, |mut s| {
            let (write, data) = s.request();
            assert_eq!((write.kind, data.as_slice()), (cmd::WRITE, &b"data"[..]));
            // No flush before the write's reply.
            assert!(s.quiet(std::time::Duration::from_millis(300)));
            s.simple(write.cookie, 0, &[]);
            let (flush, _) = s.request();
            assert_eq!(flush.kind, cmd::FLUSH);
            s.simple(flush.cookie, 0, &[]);
            let (disc, _) = s.request();
            assert_eq!(disc.kind, cmd::DISC);
        });
        assert!(!c.is_dirty());
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| c.write(0, b"data"));
            while c.in_flight() == 0 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(c.is_dirty());
            c.flush().unwrap();
            writer.join().unwrap().unwrap();
        });
        assert!(!c.is_dirty());
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn requests_in_flight_are_capped() {
        use crate::inflight::MAX_IN_FLIGHT;
        let total = MAX_IN_FLIGHT + 4;
        let (c, server) = conn(false, move |mut s| {
            let first: Vec<_> = (0..MAX_IN_FLIGHT).map(|_| s.request().0).collect();
            assert!(s.quiet(std::time::Duration::from_millis(300)));
            for req in &first {
                s.simple(req.cookie, 0, &pattern(req.offset));
            }
            for _ in MAX_IN_FLIGHT..total {
                let (req, _) = s.request();
                s.simple(req.cookie, 0, &pattern(req.offset));
            }
            s.drain();
        });
        let offsets: Vec<u64> = (0..total as u64).map(|i| i * 100).collect();
        for (result, &offset) in reads(&c, &offsets).into_iter().zip(&offsets) {
            assert_eq!(result.unwrap(), pattern(offset));
        }
        drop(c);
        server.join().unwrap();
    }
}
