//! An opened export as a qimg store: requests split at the server's
//! limits and aligned to its minimum block size, spread over the
//! connection pool, and block status answered from the last reply where
//! it can be.

use crate::behind::{WriteBehind, FLUSH_EVERY};
use crate::conn::Conn;
use crate::error::{NbdError, Result};
use crate::extents::ExtentCache;
use crate::handshake::{self, Export};
use crate::options::{Options, Server};
use crate::pool::{retry_until, Pool};
use crate::socket::{Link, Stream};
use crate::split::{pieces, Limits};
use crate::tls::Tls;
use crate::wire::{cmd_flags, tx_flags};
use qimg_driver_api::{proto_open, DriverError, Prealloc, StoreImpl, StoreRun};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Silence from the server longer than this fails the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Silence from the server longer than this fails a request (and the
/// connection), so a vanished server cannot hang a copy.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Zeros written per request where the server cannot write zeroes itself.
const ZERO_BUFFER: u64 = 1 << 20;
/// Bytes asked about per block status request (a multiple of every
/// allowed minimum block size).
const STATUS_SPAN: u64 = 1 << 31;

/// An open NBD export.
pub struct NbdStore {
    name: String,
    export: Export,
    limits: Limits,
    /// Declared before the pool: its thread stops before the connections
    /// close.
    behind: WriteBehind,
    pool: Pool,
    /// Runs of the last block status reply.
    extents: Mutex<Option<ExtentCache>>,
    /// Bumped after every change, so a status reply that raced a write is
    /// not cached.
    changes: AtomicU64,
    /// How long requests wait for a broken connection to be replaced.
    reconnect_delay: Duration,
    /// Held across each read-modify-write of a partial block, so that two
    /// unaligned writes into one block cannot lose each other's bytes.
    /// Taken after a connection, never before one.
    partial: Mutex<()>,
}

/// Opens one connection and negotiates `export` on it, in TLS if `tls`.
fn connect(server: &Server, export: &str, tls: Option<&Tls>) -> Result<Conn> {
    let stream = Stream::connect(server)?;
    let mut link = Link::new(stream, HANDSHAKE_TIMEOUT).map_err(|source| NbdError::Connect {
        target: server.target(),
        source,
    })?;
    let negotiated = handshake::negotiate(&mut link, export, tls)?;
    link.set_timeout(IO_TIMEOUT).map_err(NbdError::Transport)?;
    Ok(Conn::new(link, negotiated))
}

/// Connects as [`connect`] does, trying again every second while the
/// server is not listening, for up to `open-timeout` seconds (qemu's
/// retries).
fn connect_within(options: &Options, export: &str, tls: Option<&Tls>) -> Result<Conn> {
    let deadline = Instant::now() + Duration::from_secs(u64::from(options.open_timeout));
    retry_until(
        deadline,
        |e| matches!(e, NbdError::Connect { .. }),
        || connect(&options.server, export, tls),
    )
}

impl NbdStore {
    /// Connects to the export `options` name, in TLS if `tls`; `flags`
    /// are [`proto_open`] bits.
    pub fn open(options: &Options, flags: u32, tls: Option<Tls>) -> Result<NbdStore> {
        let export_name = options.export.clone().unwrap_or_default();
        let first = connect_within(options, &export_name, tls.as_ref())?;
        let export = *first.export();
        if flags & proto_open::WRITE != 0 && export.has(tx_flags::READ_ONLY) {
            first.disconnect();
            return Err(NbdError::ReadOnly);
        }
        let server = options.server.clone();
        let connector = Box::new(move || connect(&server, &export_name, tls.as_ref()));
        let pool = Pool::new(first, connector);
        let flushes = flags & proto_open::WRITE != 0 && export.has(tx_flags::SEND_FLUSH);
        Ok(NbdStore {
            name: options.canonical_name(),
            limits: Limits::of(&export),
            export,
            behind: WriteBehind::new(pool.flusher(), if flushes { FLUSH_EVERY } else { 0 }),
            pool,
            extents: Mutex::new(None),
            changes: AtomicU64::new(0),
            reconnect_delay: Duration::from_secs(u64::from(options.reconnect_delay)),
            partial: Mutex::new(()),
        })
    }

    /// How many connections the store may use at once.
    pub fn connection_limit(&self) -> usize {
        self.pool.limit()
    }

    /// Reads the whole block at `block` into a scratch buffer.
    fn read_block(&self, conn: &Conn, block: u64) -> Result<Vec<u8>> {
        if block + self.limits.align > self.export.size {
            // The export's tail is not a whole block: unreachable.
            return Err(NbdError::Server {
                errno: libc::EINVAL,
            });
        }
        let mut scratch = vec![0u8; self.limits.align as usize];
        conn.read(block, &mut scratch)?;
        Ok(scratch)
    }

    /// Rewrites the block at `block` with `change` applied to it.
    fn patch_block(&self, conn: &Conn, block: u64, change: impl FnOnce(&mut [u8])) -> Result<()> {
        let _one_at_a_time = self.partial.lock().unwrap_or_else(PoisonError::into_inner);
        let mut scratch = self.read_block(conn, block)?;
        change(&mut scratch);
        conn.write(block, &scratch)
    }

    fn read_exact(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let conn = self.pool.get()?;
        let mut done = 0usize;
        for piece in pieces(offset, buf.len() as u64, self.limits.align, self.limits.io) {
            let len = piece.length as usize;
            let dest = &mut buf[done..done + len];
            match piece.block {
                None => conn.read(piece.offset, dest)?,
                Some(block) => {
                    let scratch = self.read_block(&conn, block)?;
                    let at = (piece.offset - block) as usize;
                    dest.copy_from_slice(&scratch[at..at + len]);
                }
            }
            done += len;
        }
        Ok(())
    }

    /// Checks that `offset..offset + length` may be written.
    fn check_write(&self, offset: u64, length: u64) -> Result<()> {
        if self.export.has(tx_flags::READ_ONLY) {
            return Err(NbdError::Server { errno: libc::EPERM });
        }
        match offset.checked_add(length) {
            Some(end) if end <= self.export.size => Ok(()),
            _ => Err(NbdError::OutOfRange),
        }
    }

    /// Writes `data` at `offset`, partial blocks by read-modify-write.
    fn write_all(&self, offset: u64, data: &[u8]) -> Result<()> {
        let conn = self.pool.get()?;
        let mut done = 0usize;
        for piece in pieces(offset, data.len() as u64, self.limits.align, self.limits.io) {
            let len = piece.length as usize;
            let src = &data[done..done + len];
            match piece.block {
                None => conn.write(piece.offset, src)?,
                Some(block) => self.patch_block(&conn, block, |scratch| {
                    let at = (piece.offset - block) as usize;
                    scratch[at..at + len].copy_from_slice(src);
                })?,
            }
            done += len;
        }
        Ok(())
    }

    fn zero_range(&self, offset: u64, length: u64, punch: bool) -> Result<()> {
        let native = self.export.has(tx_flags::SEND_WRITE_ZEROES);
        let max = if native {
            self.limits.zero
        } else {
            // A multiple of the alignment, at most the zero buffer.
            (ZERO_BUFFER.min(self.limits.io) / self.limits.align * self.limits.align)
                .max(self.limits.align)
        };
        let zeros = if native {
            Vec::new()
        } else {
            vec![0u8; max.min(length) as usize]
        };
        let flags = if punch { 0 } else { cmd_flags::NO_HOLE };
        let conn = self.pool.get()?;
        for piece in pieces(offset, length, self.limits.align, max) {
            match piece.block {
                None if native => {
                    // At most `limits.zero`, which fits in u32.
                    conn.write_zeroes(piece.offset, piece.length as u32, flags)?
                }
                None => {
                    conn.write(piece.offset, &zeros[..piece.length as usize])?;
                    self.behind.wrote(piece.length);
                }
                Some(block) => self.patch_block(&conn, block, |scratch| {
                    let at = (piece.offset - block) as usize;
                    scratch[at..at + piece.length as usize].fill(0);
                })?,
            }
        }
        Ok(())
    }

    /// Runs `op`; if it failed because the connection broke and the node
    /// has a `reconnect-delay`, runs it again on a new connection, for as
    /// long as the delay lasts from the first failure (qemu's reconnect:
    /// requests wait for the server to come back).
    fn again<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        let mut deadline = None;
        loop {
            match op() {
                Err(e) if e.breaks_connection() && !self.reconnect_delay.is_zero() => {
                    let deadline =
                        *deadline.get_or_insert_with(|| Instant::now() + self.reconnect_delay);
                    if Instant::now() >= deadline || self.pool.reconnect(deadline).is_err() {
                        return Err(e);
                    }
                }
                done => return done,
            }
        }
    }

    /// Forgets cached allocation after a change.
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        *self.extents.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn cached_run(&self, offset: u64, max: u64) -> Option<StoreRun> {
        let cache = self.extents.lock().unwrap_or_else(PoisonError::into_inner);
        cache.as_ref()?.run_at(offset, max)
    }

    fn run(&self, offset: u64, max: u64) -> Result<StoreRun> {
        let size = self.export.size;
        if offset >= size {
            return Ok(StoreRun {
                data: false,
                length: max,
            });
        }
        let max = max.min(size - offset);
        if max == 0 || self.export.allocation.is_none() {
            return Ok(StoreRun {
                data: true,
                length: max,
            });
        }
        if let Some(run) = self.cached_run(offset, max) {
            return Ok(run);
        }
        let start = offset - offset % self.limits.align;
        let span = STATUS_SPAN.min(size - start);
        let before = self.changes.load(Ordering::SeqCst);
        // `span` is at most STATUS_SPAN, which fits in u32.
        let extents = self.again(|| self.pool.get()?.block_status(start, span as u32))?;
        let cache = ExtentCache::from_reply(start, &extents, size);
        let run = cache.run_at(offset, max);
        if self.changes.load(Ordering::SeqCst) == before {
            *self.extents.lock().unwrap_or_else(PoisonError::into_inner) = Some(cache);
        }
        // A reply that stops short of `offset` (inside its first block)
        // says nothing about it: data is the safe answer.
        Ok(run.unwrap_or(StoreRun {
            data: true,
            length: max.min(self.limits.align - offset % self.limits.align),
        }))
    }
}

impl StoreImpl for NbdStore {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, DriverError> {
        let size = self.export.size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(size - offset) as usize;
        self.again(|| self.read_exact(offset, &mut buf[..n]))?;
        Ok(n)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        self.check_write(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let result = self.again(|| self.write_all(offset, buf));
        self.changed();
        result?;
        self.behind.wrote(buf.len() as u64);
        Ok(())
    }

    fn len(&self) -> Result<u64, DriverError> {
        Ok(self.export.size)
    }

    fn set_len(&self, len: u64, prealloc: Prealloc) -> Result<(), DriverError> {
        if prealloc != Prealloc::OFF {
            return Err(NbdError::Prealloc(prealloc.name()).into());
        }
        if len > self.export.size {
            return Err(NbdError::CannotGrow.into());
        }
        // NBD cannot shrink an export; like qemu, leave it as it is.
        Ok(())
    }

    fn flush(&self) -> Result<(), DriverError> {
        if !self.export.has(tx_flags::SEND_FLUSH) {
            return Ok(());
        }
        // A write-back that failed in the background fails this flush.
        self.behind.settle()?;
        // Each connection that has written flushes once the writes issued
        // on it before have had their replies.
        self.again(|| self.pool.flush())?;
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> Result<(), DriverError> {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let result = self.again(|| self.zero_range(offset, len, punch));
        self.changed();
        Ok(result?)
    }

    fn run_at(&self, offset: u64, max: u64) -> Result<StoreRun, DriverError> {
        Ok(self.run(offset, max)?)
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}
