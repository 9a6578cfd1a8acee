//! Reading transmission replies: the simple reply and structured chunk
//! headers, error chunks, and the bookkeeping that makes sure a read's
//! chunks stay inside the request, never overlap and cover all of it.

use crate::error::{NbdError, Result};
use crate::socket::ReadHalf;
use crate::wire::{self, chunk};
use std::collections::BTreeMap;
use std::ops::Range;

/// Longest error chunk payload accepted: the 4096-byte message limit of
/// the specification's strings, with room to spare.
const MAX_ERROR_CHUNK: u32 = 64 * 1024;
/// Most separate pieces a read reply may leave before they join up; a
/// server splitting one read into more is treated as hostile.
const MAX_PIECES: usize = 65536;

/// One `base:allocation` descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (non-zero).
    pub length: u32,
    /// Status flags ([`wire::state`]).
    pub flags: u32,
}

/// A structured reply chunk's header ("Structured reply chunk message").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Reply flags.
    pub flags: u16,
    /// Chunk type ([`chunk`]).
    pub kind: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// Payload length.
    pub length: u32,
}

impl ChunkHeader {
    /// True for the reply's last chunk.
    pub fn done(&self) -> bool {
        self.flags & chunk::FLAG_DONE != 0
    }

    /// Checks an `NBD_REPLY_TYPE_NONE` chunk: empty and final.
    pub fn expect_none(&self) -> Result<()> {
        if self.length != 0 || !self.done() {
            return Err(NbdError::Protocol(
                "NONE chunk with a payload or without the DONE flag".into(),
            ));
        }
        Ok(())
    }
}

/// A reply's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyHeader {
    /// "Simple reply message"; a read's data follows when `error` is 0.
    Simple {
        /// NBD error value.
        error: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// A structured reply chunk; its payload follows.
    Chunk(ChunkHeader),
}

impl ReplyHeader {
    /// The cookie the reply carries.
    pub fn cookie(&self) -> u64 {
        match self {
            ReplyHeader::Simple { cookie, .. } => *cookie,
            ReplyHeader::Chunk(c) => c.cookie,
        }
    }
}

/// Reads the next reply header; structured chunks only if `structured`
/// replies were negotiated.
pub fn read_header(link: &mut ReadHalf, structured: bool) -> Result<ReplyHeader> {
    let magic = link.read_u32().map_err(NbdError::Transport)?;
    match magic {
        wire::SIMPLE_REPLY_MAGIC => {
            let error = link.read_u32().map_err(NbdError::Transport)?;
            let cookie = link.read_u64().map_err(NbdError::Transport)?;
            Ok(ReplyHeader::Simple { error, cookie })
        }
        wire::STRUCTURED_REPLY_MAGIC if structured => {
            let raw: [u8; 16] = link.read_array().map_err(NbdError::Transport)?;
            let mut c = wire::Cursor::new(&raw);
            Ok(ReplyHeader::Chunk(ChunkHeader {
                flags: c.u16().unwrap_or_default(),
                kind: c.u16().unwrap_or_default(),
                cookie: c.u64().unwrap_or_default(),
                length: c.u32().unwrap_or_default(),
            }))
        }
        _ => Err(NbdError::Protocol(format!(
            "unexpected reply magic 0x{magic:08x}"
        ))),
    }
}

/// An error chunk's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorChunk {
    /// The error as this system's errno.
    pub errno: i32,
    /// The server's message.
    pub message: String,
}

impl ErrorChunk {
    /// Reads the payload of `header`, a chunk type with the error bit:
    /// error value, message, and whatever the type adds after it (the
    /// offset of `NBD_REPLY_TYPE_ERROR_OFFSET`), which is skipped.
    pub fn read(link: &mut ReadHalf, header: &ChunkHeader) -> Result<ErrorChunk> {
        let fixed = if header.kind == chunk::ERROR_OFFSET {
            14
        } else {
            6
        };
        if header.length < fixed || header.length > MAX_ERROR_CHUNK {
            return Err(NbdError::Protocol(format!(
                "error chunk of {} bytes",
                header.length
            )));
        }
        let error = link.read_u32().map_err(NbdError::Transport)?;
        let length = link.read_u16().map_err(NbdError::Transport)?;
        if u32::from(length) > header.length - fixed {
            return Err(NbdError::Protocol(
                "error message longer than its chunk".into(),
            ));
        }
        let mut message = vec![0u8; usize::from(length)];
        link.read_exact(&mut message).map_err(NbdError::Transport)?;
        link.skip(u64::from(header.length - 6 - u32::from(length)))
            .map_err(NbdError::Transport)?;
        Ok(ErrorChunk {
            // "error (MUST be nonzero)": a zero still failed the request.
            errno: if error == 0 {
                libc::EIO
            } else {
                wire::errno_of(error)
            },
            message: String::from_utf8_lossy(&message).into_owned(),
        })
    }
}

/// The parts of a read request its content chunks have filled.
#[derive(Debug)]
pub struct Coverage {
    start: u64,
    length: u64,
    covered: u64,
    /// Filled ranges (relative start to end), adjacent ones merged.
    pieces: BTreeMap<u64, u64>,
}

impl Coverage {
    /// A read of `length` bytes at `start`.
    pub fn new(start: u64, length: u64) -> Coverage {
        Coverage {
            start,
            length,
            covered: 0,
            pieces: BTreeMap::new(),
        }
    }

    /// Records a chunk of `length` bytes at export offset `at`; returns
    /// where it goes in the read buffer. A chunk outside the request or
    /// overlapping an earlier one breaks the protocol.
    pub fn claim(&mut self, at: u64, length: u64) -> Result<Range<usize>> {
        let outside = || NbdError::Protocol("chunk outside the read request".into());
        let begin = at.checked_sub(self.start).ok_or_else(outside)?;
        let end = begin.checked_add(length).ok_or_else(outside)?;
        if end > self.length {
            return Err(outside());
        }
        let overlap = || NbdError::Protocol("chunks of a read overlap".into());
        let before = self
            .pieces
            .range(..=begin)
            .next_back()
            .map(|(&s, &e)| (s, e));
        if matches!(before, Some((_, e)) if e > begin) {
            return Err(overlap());
        }
        let after = self.pieces.range(begin..).next().map(|(&s, &e)| (s, e));
        if matches!(after, Some((s, _)) if s < end) {
            return Err(overlap());
        }
        // Merge with the neighbours it touches.
        let mut new_start = begin;
        let mut new_end = end;
        if let Some((s, e)) = before {
            if e == begin {
                self.pieces.remove(&s);
                new_start = s;
            }
        }
        if let Some((s, e)) = after {
            if s == end {
                self.pieces.remove(&s);
                new_end = e;
            }
        }
        self.pieces.insert(new_start, new_end);
        if self.pieces.len() > MAX_PIECES {
            return Err(NbdError::Protocol(
                "read reply split into too many chunks".into(),
            ));
        }
        self.covered += length;
        // In range by the checks above: both are at most `self.length`,
        // which is a buffer length.
        Ok(begin as usize..end as usize)
    }

    /// True once every byte of the request was filled.
    pub fn complete(&self) -> bool {
        self.covered == self.length
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_accepts_chunks_in_any_order() {
        let mut c = Coverage::new(1000, 300);
        assert_eq!(c.claim(1200, 100).unwrap(), 200..300);
        assert!(!c.complete());
        assert_eq!(c.claim(1000, 100).unwrap(), 0..100);
        assert_eq!(c.claim(1100, 100).unwrap(), 100..200);
        assert!(c.complete());
        assert_eq!(c.pieces.len(), 1);
    }

    #[test]
    fn coverage_refuses_overlaps_and_strays() {
        let mut c = Coverage::new(1000, 300);
        c.claim(1100, 100).unwrap();
        assert!(c.claim(1150, 10).is_err());
        assert!(c.claim(1050, 60).is_err());
        assert!(c.claim(1000, 300).is_err());
        assert!(c.claim(999, 1).is_err());
        assert!(c.claim(1250, 51).is_err());
        assert!(c.claim(u64::MAX, 2).is_err());
        c.claim(1000, 100).unwrap();
        c.claim(1200, 100).unwrap();
        assert!(c.complete());
    }

    #[test]
    fn chunk_flags() {
        let none = ChunkHeader {
            flags: chunk::FLAG_DONE,
            kind: chunk::NONE,
            cookie: 1,
            length: 0,
        };
        assert!(none.expect_none().is_ok());
        assert!(ChunkHeader { flags: 0, ..none }.expect_none().is_err());
        assert!(ChunkHeader { length: 1, ..none }.expect_none().is_err());
    }
}
