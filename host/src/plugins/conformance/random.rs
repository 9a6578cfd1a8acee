//! The seeded randomness of the checks: the xorshift generator and the
//! random operations of the random I/O check.

use super::invariants::{check_extents, check_zero_extents, compare};
use super::outcome::{During, Failure};
use super::{KIB, MIB, POISON};
use crate::block::BlockImage;
use qimg_driver_api::zero_flags;
use std::fmt;

/// The longest random request.
pub(super) const MAX_IO: u64 = 256 * KIB;

/// xorshift64*: small, seeded, good enough to spread requests.
pub(super) struct Rng(u64);

impl Rng {
    /// A generator started from `seed` (0 is replaced: xorshift sticks at 0).
    pub(super) fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }
    /// The next 64 random bits.
    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `0..n` (0 when `n` is 0), from the high bits (the
    /// strong ones of xorshift64*), by multiplication rather than modulo.
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
    /// Fills `buf` with random bytes.
    pub(super) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// One operation of the random I/O check.
#[derive(Clone, Copy, Debug)]
pub(super) enum Op {
    /// Write random bytes.
    Write { offset: u64, len: u64 },
    /// Write zeros, with `MAY_UNMAP` if `unmap`.
    Zero { offset: u64, len: u64, unmap: bool },
    /// Read and compare.
    Read { offset: u64, len: u64 },
    /// Block status, checked against the reference.
    Status { offset: u64, len: u64 },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Write { offset, len } => write!(f, "write {offset:#x}+{len}"),
            Op::Zero { offset, len, unmap } => {
                let how = if unmap { " (may unmap)" } else { "" };
                write!(f, "write_zeroes {offset:#x}+{len}{how}")
            }
            Op::Read { offset, len } => write!(f, "read {offset:#x}+{len}"),
            Op::Status { offset, len } => write!(f, "block status {offset:#x}+{len}"),
        }
    }
}

impl Op {
    /// A random operation on a disk of `size` bytes whose clusters are
    /// `granularity` bytes: 40% writes, 15% zero writes, 35% reads, 10%
    /// block status.
    pub(super) fn random(rng: &mut Rng, size: u64, granularity: u64) -> Op {
        let (offset, len) = random_range(rng, size, granularity);
        match rng.below(20) {
            0..=7 => Op::Write { offset, len },
            8..=10 => Op::Zero {
                offset,
                len,
                unmap: rng.below(2) == 0,
            },
            11..=17 => Op::Read { offset, len },
            _ => Op::Status { offset, len },
        }
    }

    /// Runs the operation on `image` and keeps `reference` in step; `n` is
    /// its number, for messages.
    pub(super) fn apply(
        self,
        image: &BlockImage,
        reference: &mut [u8],
        buf: &mut [u8],
        rng: &mut Rng,
        n: usize,
    ) -> Result<(), Failure> {
        let what = format!("{self} (op {n})");
        match self {
            Op::Write { offset, len } => {
                let (start, end) = (offset as usize, (offset + len) as usize);
                let data = &mut buf[..len as usize];
                rng.fill(data);
                image.write(offset, data).during(&what)?;
                reference[start..end].copy_from_slice(data);
            }
            Op::Zero { offset, len, unmap } => {
                let flags = if unmap { zero_flags::MAY_UNMAP } else { 0 };
                image.write_zeroes(offset, len, flags).during(&what)?;
                reference[offset as usize..(offset + len) as usize].fill(0);
            }
            Op::Read { offset, len } => {
                let got = &mut buf[..len as usize];
                got.fill(POISON);
                image.read(offset, got).during(&what)?;
                let want = &reference[offset as usize..(offset + len) as usize];
                compare(got, want, offset, &what)?;
            }
            Op::Status { offset, len } => {
                let extents = image.block_status(offset, len).during(&what)?;
                check_extents(offset, len, reference.len() as u64, &extents)?;
                check_zero_extents(&extents, reference)?;
            }
        }
        Ok(())
    }
}

/// A random range of a disk of `size` bytes: anywhere (40%), across a
/// cluster boundary (30%), in the first 2 MiB where requests overlap often
/// (20%) or near the end (10%); a quarter of them cluster-aligned. Lengths
/// are small (up to 4 KiB), medium (64 KiB) or large (256 KiB) alike.
fn random_range(rng: &mut Rng, size: u64, granularity: u64) -> (u64, u64) {
    let mut len = 1 + match rng.below(3) {
        0 => rng.below(4 * KIB),
        1 => rng.below(64 * KIB),
        _ => rng.below(MAX_IO),
    };
    let mut offset = match rng.below(10) {
        0..=3 => rng.below(size),
        4..=6 => {
            let boundary = (1 + rng.below((size / granularity).max(1))) * granularity;
            boundary.saturating_sub(1 + rng.below(len.max(2) - 1))
        }
        7 | 8 => rng.below(size.min(2 * MIB)),
        // Half of these reach the last byte.
        _ => size.saturating_sub(1 + rng.below(2 * len)),
    };
    if rng.below(4) == 0 {
        offset -= offset % granularity;
        len = len.div_ceil(granularity) * granularity;
    }
    let offset = offset.min(size.saturating_sub(1));
    let len = len.min(size - offset).clamp(1, MAX_IO);
    (offset, len)
}

#[cfg(test)]
mod tests {
    use super::super::create::DISK_SIZE;
    use super::super::{OPERATIONS, SEED};
    use super::*;

    #[test]
    fn random_ranges_stay_inside_the_disk() {
        let mut rng = Rng::new(SEED);
        for _ in 0..10_000 {
            let (offset, len) = random_range(&mut rng, DISK_SIZE, 65536);
            assert!((1..=MAX_IO).contains(&len), "{len}");
            assert!(offset + len <= DISK_SIZE, "{offset}+{len}");
        }
        let (offset, len) = random_range(&mut rng, 1, 65536);
        assert_eq!((offset, len), (0, 1));
    }

    #[test]
    fn random_operations_mix_every_kind() {
        let g = 65536;
        let mut rng = Rng::new(SEED);
        let (mut writes, mut zeros, mut unmaps, mut reads, mut status) = (0, 0, 0, 0, 0);
        let (mut straddling, mut unaligned, mut at_end) = (0, 0, 0);
        for _ in 0..OPERATIONS {
            let op = Op::random(&mut rng, DISK_SIZE, g);
            let (offset, len) = match op {
                Op::Write { offset, len } => {
                    writes += 1;
                    (offset, len)
                }
                Op::Zero { offset, len, unmap } => {
                    zeros += 1;
                    unmaps += usize::from(unmap);
                    (offset, len)
                }
                Op::Read { offset, len } => {
                    reads += 1;
                    (offset, len)
                }
                Op::Status { offset, len } => {
                    status += 1;
                    (offset, len)
                }
            };
            straddling += usize::from(offset / g != (offset + len - 1) / g);
            unaligned += usize::from(offset % 512 != 0 || len % 512 != 0);
            at_end += usize::from(offset + len == DISK_SIZE);
        }
        let mix = format!(
            "writes {writes} zeros {zeros} (unmap {unmaps}) reads {reads} status {status} \
             straddling {straddling} unaligned {unaligned} at end {at_end}"
        );
        assert!(writes >= 90 && reads >= 80 && status >= 15, "{mix}");
        assert!(zeros >= 30 && unmaps >= 10 && zeros - unmaps >= 10, "{mix}");
        assert!(
            straddling >= 100 && unaligned >= 150 && at_end >= 5,
            "{mix}"
        );
    }
}
