//! Reading large compressed grains (VDF 5.0 §"Stream-Optimized Compressed
//! Sparse Extents") with bounded memory. The format allows grains of up to
//! 1 GiB; inflating one whole for every read would take a gigabyte per
//! reader and inflate the grain again for each piece of it read. Instead a
//! read inflates the grain as a stream, only up to the end of the range it
//! wants, and leaves its inflater parked at that point: the next read of the
//! same grain further on resumes there, so a grain read front to back is
//! inflated once, in memory that does not depend on the grain's size.

use crate::error::{Result, VmdkError};
use flate2::{Decompress, FlushDecompress, Status};
use qimg_driver_api::ByteStoreBox;
use qimg_driver_util::read_or_zero;
use std::sync::Mutex;

/// Grains up to this size are inflated whole; larger ones are streamed.
pub const WHOLE_GRAIN: u64 = 2 << 20;
/// Compressed bytes read from the file at a time.
const INPUT_CHUNK: usize = 64 << 10;
/// Inflated bytes thrown away at a time while skipping to a read's start.
const SKIP_CHUNK: usize = 256 << 10;
/// Parked inflaters kept per extent (a few per reading thread).
const MAX_PARKED: usize = 8;

/// Where a compressed grain's deflate stream lies in the extent file.
#[derive(Clone, Copy, Debug)]
pub struct PackedGrain {
    /// Byte offset of the grain (its marker, if it has one): names it.
    pub at: u64,
    /// Byte offset of the deflate stream.
    pub data_at: u64,
    /// Most bytes the stream may take.
    pub max_len: u64,
}

/// An inflater part-way through one grain.
struct Parked {
    grain_at: u64,
    inflater: Decompress,
    /// Compressed bytes read ahead and not consumed yet.
    input: Vec<u8>,
    /// Offset in `input` of the first unconsumed byte.
    used: usize,
}

impl Parked {
    fn new(grain_at: u64) -> Parked {
        Parked {
            grain_at,
            inflater: Decompress::new(true),
            input: Vec::new(),
            used: 0,
        }
    }
    /// Inflated bytes produced so far.
    fn position(&self) -> u64 {
        self.inflater.total_out()
    }
}

/// The parked inflaters of one extent.
#[derive(Default)]
pub struct Inflaters(Mutex<Vec<Parked>>);

impl Inflaters {
    /// Fills `out` with the grain's inflated bytes from `within` on (a read
    /// past the end of a short stream fails).
    pub fn read(
        &self,
        store: &ByteStoreBox,
        grain: PackedGrain,
        within: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let bad = || VmdkError::BadCompressedGrain;
        let mut z = self.take(grain.at, within);
        let end = within + out.len() as u64;
        let mut skip = Vec::new();
        let mut ended = false;
        while z.position() < end {
            if z.used == z.input.len() {
                let consumed = z.inflater.total_in();
                let left = grain.max_len.saturating_sub(consumed);
                if left == 0 {
                    return Err(bad());
                }
                z.input.resize(left.min(INPUT_CHUNK as u64) as usize, 0);
                read_or_zero(store, grain.data_at + consumed, &mut z.input)?;
                z.used = 0;
            }
            let pos = z.position();
            let dst: &mut [u8] = if pos < within {
                skip.resize(SKIP_CHUNK, 0);
                let n = (within - pos).min(SKIP_CHUNK as u64) as usize;
                &mut skip[..n]
            } else {
                &mut out[(pos - within) as usize..]
            };
            let before_in = z.inflater.total_in();
            let status = z
                .inflater
                .decompress(&z.input[z.used..], dst, FlushDecompress::None)
                .map_err(|_| bad())?;
            z.used += (z.inflater.total_in() - before_in) as usize;
            if status == Status::StreamEnd {
                ended = true;
                break;
            }
            if z.inflater.total_in() == before_in && z.position() == pos {
                return Err(bad());
            }
        }
        if z.position() < end {
            // The stream ended before the read did: as in qemu, a read past
            // what the grain holds fails.
            return Err(bad());
        }
        if !ended {
            self.park(z);
        }
        Ok(())
    }

    /// The parked inflater of the grain at `grain_at` furthest along but not
    /// past `within`, or a fresh one.
    fn take(&self, grain_at: u64, within: u64) -> Parked {
        let mut parked = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let best = parked
            .iter()
            .enumerate()
            .filter(|(_, p)| p.grain_at == grain_at && p.position() <= within)
            .max_by_key(|(_, p)| p.position())
            .map(|(i, _)| i);
        match best {
            Some(i) => parked.remove(i),
            None => Parked::new(grain_at),
        }
    }

    fn park(&self, z: Parked) {
        let mut parked = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if parked.len() >= MAX_PARKED {
            parked.remove(0);
        }
        parked.push(z);
    }
}
