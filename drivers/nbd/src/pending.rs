//! What a request in flight expects of its reply, and how each message of
//! that reply (a simple reply, or one structured chunk) is read into it: a
//! read's data straight into the requester's buffer, a block status
//! reply's extents, or just success or the server's error.
//!
//! Errors returned by [`Pending::apply`] break the connection (the stream
//! may be mid-message, or the server broke the protocol); a server's
//! answer that the request failed is a finished reply, [`Step::Finished`]
//! with an error.

use crate::error::{NbdError, Result};
use crate::reply::{ChunkHeader, Coverage, ErrorChunk, Extent, ReplyHeader};
use crate::socket::ReadHalf;
use crate::wire::{self, chunk};
use std::ops::Range;

/// Longest payload of a block status chunk accepted (524,292 bytes: 64 Ki
/// descriptors); servers send far fewer per request.
const MAX_STATUS_CHUNK: u32 = 4 + 8 * 65536;
/// Descriptors kept from one block status reply; the rest are read and
/// dropped (the caller asks again from where the kept ones end).
pub const MAX_EXTENTS: usize = 8192;

/// The buffer a read's data goes to: the requester's, borrowed while the
/// request is in flight (whoever reads the reply fills it, zero copy).
pub struct Target {
    ptr: *mut u8,
    len: usize,
    coverage: Coverage,
}

// SAFETY: a target is only a place to write to; `Target::new`'s contract
// makes sure one thread at a time does, while the buffer is alive.
unsafe impl Send for Target {}

impl Target {
    /// The buffer of a read of `buf.len()` bytes at `offset`.
    ///
    /// # Safety
    ///
    /// `buf` must stay alive, and be neither read nor written other than
    /// through this target, until the target is dropped (with the
    /// [`Pending`] that holds it).
    pub unsafe fn new(buf: &mut [u8], offset: u64) -> Target {
        Target {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            coverage: Coverage::new(offset, buf.len() as u64),
        }
    }

    /// The part `range` of the buffer.
    fn part(&mut self, range: Range<usize>) -> Result<&mut [u8]> {
        if range.start > range.end || range.end > self.len {
            return Err(NbdError::Protocol("chunk outside the read request".into()));
        }
        // SAFETY: in bounds (checked above) of a buffer `new`'s caller
        // keeps alive and untouched; `&mut self` makes this the only view.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) })
    }
}

/// What a request expects of its reply.
pub enum Expect {
    /// No data: write, write zeroes, flush.
    Plain,
    /// A read's data.
    Read(Target),
    /// Block status for the metadata context with this id.
    Status(u32),
}

/// What a finished reply brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Success (a read's data is in its buffer).
    Done,
    /// The extents of a block status reply.
    Extents(Vec<Extent>),
}

/// Where a reply stands after one message.
#[derive(Debug)]
pub enum Step {
    /// More chunks follow.
    More,
    /// The reply is complete: the request's result (a failure is the
    /// server's answer, not a broken connection).
    Finished(Result<Answer>),
}

/// The reply state of one request in flight.
pub struct Pending {
    expect: Expect,
    /// The first error chunk's errno.
    failure: Option<i32>,
    /// A structured chunk was received.
    started: bool,
    /// A block status reply's extents, once its chunk came.
    extents: Option<Vec<Extent>>,
}

impl Pending {
    /// A request waiting for its first reply message.
    pub fn new(expect: Expect) -> Pending {
        Pending {
            expect,
            failure: None,
            started: false,
            extents: None,
        }
    }

    /// Reads the rest of one reply message (its `header` already read)
    /// from `rx`; `structured` if structured replies were negotiated.
    pub fn apply(
        &mut self,
        header: ReplyHeader,
        rx: &mut ReadHalf,
        structured: bool,
    ) -> Result<Step> {
        match header {
            ReplyHeader::Simple { error, .. } => self.simple(error, rx, structured),
            ReplyHeader::Chunk(chunk) => {
                self.started = true;
                match self.expect {
                    Expect::Plain => self.plain_chunk(&chunk, rx)?,
                    Expect::Read(_) => self.read_chunk(&chunk, rx)?,
                    Expect::Status(context) => self.status_chunk(&chunk, rx, context)?,
                }
                if chunk.done() {
                    self.finish()
                } else {
                    Ok(Step::More)
                }
            }
        }
    }

    /// A simple reply: the whole reply.
    fn simple(&mut self, error: u32, rx: &mut ReadHalf, structured: bool) -> Result<Step> {
        let failed = || {
            Ok(Step::Finished(Err(NbdError::Server {
                errno: wire::errno_of(error),
            })))
        };
        match &mut self.expect {
            Expect::Read(_) if self.started => Err(NbdError::Protocol(
                "simple reply inside a structured reply".into(),
            )),
            Expect::Read(_) if error != 0 => failed(),
            // "MUST NOT use a simple reply for NBD_CMD_READ"
            Expect::Read(_) if structured => {
                Err(NbdError::Protocol("simple reply to a read".into()))
            }
            Expect::Read(target) => {
                let len = target.len;
                rx.read_exact(target.part(0..len)?)
                    .map_err(NbdError::Transport)?;
                Ok(Step::Finished(Ok(Answer::Done)))
            }
            Expect::Plain if error == 0 => Ok(Step::Finished(Ok(Answer::Done))),
            Expect::Status(_) if error == 0 => Err(NbdError::Protocol(
                "simple reply to a block status request".into(),
            )),
            Expect::Plain | Expect::Status(_) => failed(),
        }
    }

    /// The end of a structured reply.
    fn finish(&mut self) -> Result<Step> {
        if let Some(errno) = self.failure {
            return Ok(Step::Finished(Err(NbdError::Server { errno })));
        }
        let answer =
            match &self.expect {
                Expect::Plain => Answer::Done,
                Expect::Read(target) if !target.coverage.complete() => {
                    return Err(NbdError::Protocol(
                        "server claimed success without sending all the data".into(),
                    ))
                }
                Expect::Read(_) => Answer::Done,
                Expect::Status(_) => Answer::Extents(self.extents.take().ok_or_else(|| {
                    NbdError::Protocol("block status reply without extents".into())
                })?),
            };
        Ok(Step::Finished(Ok(answer)))
    }

    /// An error chunk: remembered, the first one wins.
    fn error_chunk(&mut self, chunk: &ChunkHeader, rx: &mut ReadHalf) -> Result<()> {
        let error = ErrorChunk::read(rx, chunk)?;
        self.failure.get_or_insert(error.errno);
        Ok(())
    }

    /// One chunk of the reply to a request without reply data.
    fn plain_chunk(&mut self, chunk: &ChunkHeader, rx: &mut ReadHalf) -> Result<()> {
        match chunk.kind {
            chunk::NONE => chunk.expect_none(),
            kind if kind & chunk::ERROR_BIT != 0 => self.error_chunk(chunk, rx),
            kind => Err(NbdError::Protocol(format!(
                "unexpected chunk type {kind} in a reply without data"
            ))),
        }
    }

    /// One chunk of a read reply: data or a hole, claimed in the read's
    /// coverage before a byte of it lands in the buffer.
    fn read_chunk(&mut self, chunk: &ChunkHeader, rx: &mut ReadHalf) -> Result<()> {
        let Expect::Read(target) = &mut self.expect else {
            return Err(NbdError::Protocol("not a read".into()));
        };
        match chunk.kind {
            chunk::OFFSET_DATA => {
                if chunk.length < 9 {
                    return Err(NbdError::Protocol("data chunk too short".into()));
                }
                let at = rx.read_u64().map_err(NbdError::Transport)?;
                let range = target.coverage.claim(at, u64::from(chunk.length - 8))?;
                rx.read_exact(target.part(range)?)
                    .map_err(NbdError::Transport)
            }
            chunk::OFFSET_HOLE => {
                if chunk.length != 12 {
                    return Err(NbdError::Protocol("hole chunk of the wrong size".into()));
                }
                let at = rx.read_u64().map_err(NbdError::Transport)?;
                let size = rx.read_u32().map_err(NbdError::Transport)?;
                if size == 0 {
                    return Err(NbdError::Protocol("empty hole chunk".into()));
                }
                let range = target.coverage.claim(at, u64::from(size))?;
                target.part(range)?.fill(0);
                Ok(())
            }
            chunk::NONE => chunk.expect_none(),
            kind if kind & chunk::ERROR_BIT != 0 => self.error_chunk(chunk, rx),
            kind => Err(NbdError::Protocol(format!(
                "unexpected chunk type {kind} in a read reply"
            ))),
        }
    }

    /// One chunk of a block status reply: the extents of `context` are
    /// kept, chunks of other contexts skipped.
    fn status_chunk(&mut self, chunk: &ChunkHeader, rx: &mut ReadHalf, context: u32) -> Result<()> {
        match chunk.kind {
            chunk::BLOCK_STATUS => {
                if chunk.length < 12 || !(chunk.length - 4).is_multiple_of(8) {
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
                let id = rx.read_u32().map_err(NbdError::Transport)?;
                let count = ((chunk.length - 4) / 8) as usize;
                if id != context {
                    rx.skip(u64::from(chunk.length - 4))
                        .map_err(NbdError::Transport)
                } else if self.extents.is_some() {
                    Err(NbdError::Protocol(
                        "two block status chunks for one context".into(),
                    ))
                } else {
                    self.extents = Some(descriptors(rx, count)?);
                    Ok(())
                }
            }
            chunk::NONE => chunk.expect_none(),
            kind if kind & chunk::ERROR_BIT != 0 => self.error_chunk(chunk, rx),
            kind => Err(NbdError::Protocol(format!(
                "unexpected chunk type {kind} in a block status reply"
            ))),
        }
    }
}

/// `count` descriptors (already bounded by the chunk's length); keeps the
/// first [`MAX_EXTENTS`].
fn descriptors(rx: &mut ReadHalf, count: usize) -> Result<Vec<Extent>> {
    let mut out = Vec::with_capacity(count.min(MAX_EXTENTS));
    for _ in 0..count {
        let length = rx.read_u32().map_err(NbdError::Transport)?;
        let flags = rx.read_u32().map_err(NbdError::Transport)?;
        if length == 0 {
            return Err(NbdError::Protocol("block status extent of length 0".into()));
        }
        if out.len() < MAX_EXTENTS {
            out.push(Extent { length, flags });
        }
    }
    Ok(out)
}
