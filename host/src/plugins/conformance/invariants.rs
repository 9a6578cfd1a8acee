//! The invariants the checks hold an image to: whole-disk reads that match
//! the reference buffer, and block-status answers whose extents are
//! contiguous, inside the asked range and zero where they read as zeros.

use super::outcome::{During, Failure};
use super::{MIB, POISON};
use crate::block::BlockImage;
use qimg_driver_api::{extent_flags, Extent};
use qimg_driver_util::is_zero;

/// Reads of the whole disk go in pieces of this size.
const PIECE: usize = MIB as usize;

/// Reads the whole disk into `into` (sized to the virtual size).
pub(super) fn read_whole(image: &BlockImage, into: &mut [u8]) -> Result<(), Failure> {
    for (n, piece) in into.chunks_mut(PIECE).enumerate() {
        let offset = (n * PIECE) as u64;
        piece.fill(POISON);
        image
            .read(offset, piece)
            .during(format!("read {offset:#x}+{}", piece.len()))?;
    }
    Ok(())
}

/// Reads the whole disk and compares it with `reference`.
pub(super) fn compare_whole(
    image: &BlockImage,
    reference: &[u8],
    what: &str,
) -> Result<(), Failure> {
    let mut buf = vec![0u8; PIECE];
    for (n, want) in reference.chunks(PIECE).enumerate() {
        let offset = (n * PIECE) as u64;
        let got = &mut buf[..want.len()];
        got.fill(POISON);
        image
            .read(offset, got)
            .during(format!("read {offset:#x}+{}", want.len()))?;
        compare(got, want, offset, what)?;
    }
    Ok(())
}

/// Compares `got` (read at `offset`) with `want`.
pub(super) fn compare(got: &[u8], want: &[u8], offset: u64, what: &str) -> Result<(), Failure> {
    if got == want {
        // memcmp: the common case, fast even in a debug build.
        return Ok(());
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(Failure::Mismatch {
            what: what.to_string(),
            offset: offset + i as u64,
            got: got[i],
            want: want[i],
        }),
    }
}

/// True if the host reads an extent of an image without backing as zeros
/// (the copy and compare engines skip it without reading).
fn reads_as_zero(extent: &Extent) -> bool {
    extent.has(extent_flags::ZERO) || !extent.has(extent_flags::DATA)
}

/// The invariants of one `block_status(offset, len)` answer on an image of
/// `size` bytes.
pub(super) fn check_extents(
    offset: u64,
    len: u64,
    size: u64,
    extents: &[Extent],
) -> Result<(), Failure> {
    let asked = format!("block status {offset:#x}+{len}");
    let Some(first) = extents.first() else {
        return Err(Failure::Rule(format!("{asked} answered no extent")));
    };
    if first.offset != offset {
        return Err(Failure::Rule(format!(
            "{asked}: the first extent starts at {:#x}",
            first.offset
        )));
    }
    let end = offset + len;
    let mut at = offset;
    for (i, e) in extents.iter().enumerate() {
        if e.offset != at {
            return Err(Failure::Rule(format!(
                "{asked}: extent {i} starts at {:#x}, not {at:#x} (gap or overlap)",
                e.offset
            )));
        }
        if e.length == 0 {
            return Err(Failure::Rule(format!("{asked}: extent {i} is empty")));
        }
        let e_end = e.offset.checked_add(e.length).ok_or_else(|| {
            Failure::Rule(format!("{asked}: extent {i} overflows ({})", e.length))
        })?;
        if e_end > end {
            return Err(Failure::Rule(format!(
                "{asked}: extent {i} ({:#x}+{}) reaches past the asked range",
                e.offset, e.length
            )));
        }
        if e_end > size {
            return Err(Failure::Rule(format!(
                "{asked}: extent {i} reaches past the virtual size {size}"
            )));
        }
        at = e_end;
    }
    Ok(())
}

/// Every extent that reads as zeros holds only zeros in `reference`.
pub(super) fn check_zero_extents(extents: &[Extent], reference: &[u8]) -> Result<(), Failure> {
    for e in extents.iter().filter(|e| reads_as_zero(e)) {
        let range = &reference[e.offset as usize..e.end() as usize];
        if is_zero(range) {
            continue;
        }
        if let Some(i) = range.iter().position(|&b| b != 0) {
            let kind = if e.has(extent_flags::ZERO) {
                "ZERO"
            } else {
                "unallocated (no DATA)"
            };
            return Err(Failure::Rule(format!(
                "block status reports {:#x}+{} as {kind}, but offset {} holds {:#04x}",
                e.offset,
                e.length,
                e.offset + i as u64,
                range[i]
            )));
        }
    }
    Ok(())
}

/// Walks the block status of the whole disk, checking every answer.
pub(super) fn walk_status(image: &BlockImage, reference: &[u8]) -> Result<(), Failure> {
    let size = reference.len() as u64;
    let mut offset = 0;
    while offset < size {
        let len = size - offset;
        let extents = image
            .block_status(offset, len)
            .during(format!("block status {offset:#x}+{len}"))?;
        check_extents(offset, len, size, &extents)?;
        check_zero_extents(&extents, reference)?;
        offset = extents.last().map_or(size, Extent::end);
    }
    Ok(())
}

/// Block-status windows at awkward places: unaligned starts, one byte,
/// across cluster boundaries, at the end.
pub(super) fn odd_windows(size: u64, granularity: u64) -> Vec<(u64, u64)> {
    let g = granularity;
    let candidates = [
        (0, 1),
        (1, 511),
        (511, 2),
        (4097, 100_000),
        (g - 1, 2),
        (g, g),
        (g + 1, 3 * g),
        (3 * g - 100, 200),
        (size / 2 + 3, size / 4),
        (size.saturating_sub(513), 513),
        (size.saturating_sub(1), 1),
    ];
    candidates
        .into_iter()
        .filter(|&(offset, len)| len > 0 && offset < size)
        .map(|(offset, len)| (offset, len.min(size - offset)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::create::DISK_SIZE;
    use super::*;

    fn extent(offset: u64, length: u64, flags: u32) -> Extent {
        Extent {
            offset,
            length,
            flags,
            store: 0,
            host_offset: 0,
        }
    }

    #[test]
    fn extents_must_be_contiguous_and_inside() {
        let d = extent_flags::DATA;
        assert!(check_extents(10, 100, 1000, &[extent(10, 50, d), extent(60, 50, d)]).is_ok());
        assert!(check_extents(10, 100, 1000, &[]).is_err());
        assert!(check_extents(10, 100, 1000, &[extent(0, 50, d)]).is_err());
        assert!(check_extents(10, 100, 1000, &[extent(10, 50, d), extent(61, 10, d)]).is_err());
        assert!(check_extents(10, 100, 1000, &[extent(10, 0, d)]).is_err());
        assert!(check_extents(10, 100, 1000, &[extent(10, 101, d)]).is_err());
        assert!(check_extents(990, 100, 1000, &[extent(990, 20, d)]).is_err());
    }

    #[test]
    fn zero_extents_must_hold_zeros() {
        let mut reference = vec![0u8; 100];
        reference[50] = 1;
        let zero = extent_flags::ZERO;
        let data = extent_flags::DATA;
        assert!(check_zero_extents(&[extent(0, 50, zero)], &reference).is_ok());
        assert!(check_zero_extents(&[extent(40, 20, data)], &reference).is_ok());
        assert!(check_zero_extents(&[extent(40, 20, zero | data)], &reference).is_err());
        assert!(check_zero_extents(&[extent(40, 20, 0)], &reference).is_err());
    }

    #[test]
    fn odd_windows_fit_small_disks() {
        for size in [1, 512, 4096, DISK_SIZE] {
            for (offset, len) in odd_windows(size, 65536) {
                assert!(len > 0 && offset + len <= size);
            }
        }
    }
}
