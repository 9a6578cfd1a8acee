//! A scripted NBD server on one end of a socket pair, for tests of how the
//! client copes with what real servers rarely send: refusals, fallbacks,
//! broken and hostile replies.

use crate::socket::{Link, Stream};
use crate::wire::{self, rep, Request};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

/// The server's end of the pair.
pub struct Script {
    stream: UnixStream,
}

/// Runs `script` as the server; returns the client's link (with a short
/// timeout) and the server thread.
pub fn serve(script: impl FnOnce(Script) + Send + 'static) -> (Link, JoinHandle<()>) {
    let (client, server) = UnixStream::pair().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let thread = std::thread::spawn(move || script(Script { stream: server }));
    let link = Link::new(Stream::Unix(client), Duration::from_secs(2)).unwrap();
    (link, thread)
}

impl Script {
    /// `n` bytes from the client.
    pub fn read(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        self.stream.read_exact(&mut out).unwrap();
        out
    }

    /// Sends raw bytes (errors ignored: the client may have gone).
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// The fixed newstyle greeting with `NO_ZEROES`; returns the client
    /// flags.
    pub fn greet(&mut self) -> u32 {
        let mut hello = Vec::new();
        hello.extend_from_slice(&wire::INIT_MAGIC.to_be_bytes());
        hello.extend_from_slice(&wire::OPTS_MAGIC.to_be_bytes());
        hello.extend_from_slice(&3u16.to_be_bytes());
        self.send(&hello);
        u32::from_be_bytes(self.read(4).try_into().unwrap())
    }

    /// The next option: its type and data.
    pub fn option(&mut self) -> (u32, Vec<u8>) {
        let head = self.read(16);
        assert_eq!(&head[..8], b"IHAVEOPT");
        let option = u32::from_be_bytes(head[8..12].try_into().unwrap());
        let length = u32::from_be_bytes(head[12..16].try_into().unwrap());
        (option, self.read(length as usize))
    }

    /// An option reply.
    pub fn reply(&mut self, option: u32, kind: u32, data: &[u8]) {
        let mut out = Vec::new();
        out.extend_from_slice(&wire::REP_MAGIC.to_be_bytes());
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        self.send(&out);
    }

    /// Accepts structured replies, selects `base:allocation` as context
    /// 7, and answers GO with `size` and `flags` (and block sizes if
    /// given).
    pub fn accept(&mut self, size: u64, flags: u16, block: Option<[u32; 3]>) {
        self.greet();
        let (option, _) = self.option();
        assert_eq!(option, wire::opt::STRUCTURED_REPLY);
        self.reply(option, rep::ACK, &[]);
        let (option, _) = self.option();
        assert_eq!(option, wire::opt::SET_META_CONTEXT);
        let mut context = 7u32.to_be_bytes().to_vec();
        context.extend_from_slice(wire::BASE_ALLOCATION.as_bytes());
        self.reply(option, rep::META_CONTEXT, &context);
        self.reply(option, rep::ACK, &[]);
        let (option, _) = self.option();
        assert_eq!(option, wire::opt::GO);
        let mut info = wire::info::EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&size.to_be_bytes());
        info.extend_from_slice(&flags.to_be_bytes());
        self.reply(option, rep::INFO, &info);
        if let Some([min, pref, max]) = block {
            let mut info = wire::info::BLOCK_SIZE.to_be_bytes().to_vec();
            for v in [min, pref, max] {
                info.extend_from_slice(&v.to_be_bytes());
            }
            self.reply(option, rep::INFO, &info);
        }
        self.reply(option, rep::ACK, &[]);
    }

    /// The next request, and its payload for a write.
    pub fn request(&mut self) -> (Request, Vec<u8>) {
        let head = self.read(wire::REQUEST_LEN);
        assert_eq!(&head[..4], &wire::REQUEST_MAGIC.to_be_bytes());
        let request = Request {
            flags: u16::from_be_bytes(head[4..6].try_into().unwrap()),
            kind: u16::from_be_bytes(head[6..8].try_into().unwrap()),
            cookie: u64::from_be_bytes(head[8..16].try_into().unwrap()),
            offset: u64::from_be_bytes(head[16..24].try_into().unwrap()),
            length: u32::from_be_bytes(head[24..28].try_into().unwrap()),
        };
        let payload = if request.kind == wire::cmd::WRITE {
            self.read(request.length as usize)
        } else {
            Vec::new()
        };
        (request, payload)
    }

    /// A simple reply, with `data` after it.
    pub fn simple(&mut self, cookie: u64, error: u32, data: &[u8]) {
        let mut out = Vec::new();
        out.extend_from_slice(&wire::SIMPLE_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&error.to_be_bytes());
        out.extend_from_slice(&cookie.to_be_bytes());
        out.extend_from_slice(data);
        self.send(&out);
    }

    /// A structured reply chunk.
    pub fn chunk(&mut self, flags: u16, kind: u16, cookie: u64, payload: &[u8]) {
        self.chunk_claiming(flags, kind, cookie, payload.len() as u32, payload);
    }

    /// A chunk whose header claims `length` whatever the payload sent.
    pub fn chunk_claiming(
        &mut self,
        flags: u16,
        kind: u16,
        cookie: u64,
        length: u32,
        payload: &[u8],
    ) {
        let mut out = Vec::new();
        out.extend_from_slice(&wire::STRUCTURED_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&cookie.to_be_bytes());
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(payload);
        self.send(&out);
    }

    /// True if the client sends nothing more within `wait`.
    pub fn quiet(&mut self, wait: Duration) -> bool {
        std::thread::sleep(wait);
        let mut byte = 0u8;
        // SAFETY: a one-byte buffer for a non-blocking peek on an open
        // socket.
        let got = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        got < 0
    }

    /// Waits until the client closes its end.
    pub fn drain(mut self) {
        let mut sink = Vec::new();
        let _ = self.stream.read_to_end(&mut sink);
    }
}
