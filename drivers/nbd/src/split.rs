//! Cutting a byte range into requests the server takes: no longer than
//! its maximum, offsets and lengths multiples of its minimum block size
//! ("Block size constraints"), the unaligned edges as partial blocks that
//! are read (and written) whole.

use crate::handshake::Export;

/// Largest read or write request: the specification's default maximum,
/// also used when a server advertises more.
const MAX_IO: u64 = 32 << 20;
/// Largest write-zeroes request when the server names no maximum.
const MAX_ZERO: u64 = 1 << 30;

/// Request size limits, from the server's block size constraints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Alignment of every offset and length (the minimum block size).
    pub align: u64,
    /// Largest read or write.
    pub io: u64,
    /// Largest write-zeroes.
    pub zero: u64,
}

impl Limits {
    /// The limits of `export`.
    pub fn of(export: &Export) -> Limits {
        let align = u64::from(export.block.minimum.max(1));
        let server_max = export.block.maximum.map(u64::from);
        let down = |n: u64| (n / align * align).max(align);
        Limits {
            align,
            io: down(server_max.unwrap_or(MAX_IO).min(MAX_IO)),
            zero: down(server_max.unwrap_or(MAX_ZERO).min(MAX_ZERO)),
        }
    }
}

/// One request's worth of a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Where it starts.
    pub offset: u64,
    /// Its length.
    pub length: u64,
    /// For a piece that does not fill whole blocks: the start of the one
    /// block it lies in, which must be read (and written) whole.
    pub block: Option<u64>,
}

/// Splits `offset..offset + length` into aligned requests of at most
/// `max` bytes (a multiple of `align`) and partial blocks at the edges.
/// Whole requests end on multiples of `max`, so that after the first
/// they start on the server's preferred boundaries too ("SHOULD use
/// integer multiples of any advertised preferred block size").
pub fn pieces(offset: u64, length: u64, align: u64, max: u64) -> impl Iterator<Item = Piece> {
    let end = offset + length;
    let mut cur = offset;
    std::iter::from_fn(move || {
        if cur >= end {
            return None;
        }
        let into = cur % align;
        let piece = if into != 0 || end - cur < align {
            let block = cur - into;
            let stop = end.min(block + align);
            Piece {
                offset: cur,
                length: stop - cur,
                block: Some(block),
            }
        } else {
            let whole = (end - cur) / align * align;
            Piece {
                offset: cur,
                length: whole.min(max - cur % max),
                block: None,
            }
        };
        cur += piece.length;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::BlockSizes;

    fn collect(offset: u64, length: u64, align: u64, max: u64) -> Vec<(u64, u64, Option<u64>)> {
        pieces(offset, length, align, max)
            .map(|p| (p.offset, p.length, p.block))
            .collect()
    }

    #[test]
    fn byte_aligned_ranges_split_at_the_maximum() {
        // The first request stops at a multiple of the maximum, so that
        // the others start on one.
        assert_eq!(
            collect(10, 250, 1, 100),
            vec![(10, 90, None), (100, 100, None), (200, 60, None)]
        );
        assert_eq!(
            collect(0, 250, 1, 100),
            vec![(0, 100, None), (100, 100, None), (200, 50, None)]
        );
        assert_eq!(collect(10, 0, 1, 100), vec![]);
    }

    #[test]
    fn unaligned_edges_become_partial_blocks() {
        assert_eq!(
            collect(500, 2000, 512, 1024),
            vec![
                (500, 12, Some(0)),
                (512, 512, None),
                (1024, 1024, None),
                (2048, 452, Some(2048)),
            ]
        );
        // Inside one block.
        assert_eq!(collect(10, 20, 512, 1024), vec![(10, 20, Some(0))]);
        // Ending exactly on a boundary.
        assert_eq!(collect(256, 256, 512, 1024), vec![(256, 256, Some(0))]);
    }

    #[test]
    fn limits_follow_the_server() {
        let mut export = Export {
            size: 1 << 30,
            flags: 1,
            structured: true,
            allocation: None,
            block: BlockSizes::default(),
        };
        assert_eq!(
            Limits::of(&export),
            Limits {
                align: 1,
                io: MAX_IO,
                zero: MAX_ZERO
            }
        );
        export.block = BlockSizes {
            minimum: 4096,
            preferred: 4096,
            maximum: Some(1 << 20),
        };
        assert_eq!(
            Limits::of(&export),
            Limits {
                align: 4096,
                io: 1 << 20,
                zero: 1 << 20
            }
        );
        export.block.maximum = Some(u32::MAX - 4095);
        assert_eq!(Limits::of(&export).io, MAX_IO);
        assert_eq!(Limits::of(&export).zero, MAX_ZERO);
    }
}
