//! The blkx tables ("mish" blocks, Apple's `BLKXTable`): each maps a run
//! of guest sectors to chunks of the data fork.
//!
//! ```text
//! offset  size  field (big-endian)
//!      0     4  signature "mish"
//!      8     8  SectorNumber: first guest sector of the table
//!   0x18     8  DataOffset: where its chunks' data starts, from the data fork
//!    204   40n  chunks:
//!                 +0     4  EntryType
//!                 +8     8  SectorNumber, from the table's
//!                 +0x10  8  SectorCount
//!                 +0x18  8  CompressedOffset, from the table's data
//!                 +0x20  8  CompressedLength
//! ```

use crate::DmgError;

/// A table's signature.
const MISH: &[u8; 4] = b"mish";
/// Size of the table header before its chunks.
const HEADER: usize = 204;
/// Size of one chunk entry.
const ENTRY: usize = 40;
/// Smallest table qemu-img reads (anything shorter is skipped).
const MIN_TABLE: usize = 244;
/// Largest compressed length and largest uncompressed chunk (64 MiB): the
/// most one chunk can make the driver allocate.
pub const MAX_LENGTH: u64 = 64 << 20;
/// Largest sector count of a chunk that must be read or decompressed.
pub const MAX_SECTORS: u64 = MAX_LENGTH / 512;

/// What a chunk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// UDZE (0): zeros.
    Zero,
    /// UDRW (1): the sectors stored as they are.
    Raw,
    /// UDIG (2): ignored, reads as zeros.
    Ignore,
    /// UDZO (0x80000005): a zlib stream.
    Zlib,
    /// UDBZ (0x80000006): a bzip2 stream.
    Bzip2,
}

/// The entry types this driver skips, and how it says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// ULFO (0x80000007): lzfse, which this driver does not decode.
    Lzfse,
    /// UDCM (0x7ffffffe) comments and UDLE (0xffffffff) the last entry:
    /// nothing to read.
    Silent,
    /// Any other type: reading its sectors fails.
    Unknown(u32),
}

impl Kind {
    /// The kind of entry type `t`, or how it is skipped.
    fn of(t: u32) -> Result<Kind, Skipped> {
        match t {
            0 => Ok(Kind::Zero),
            1 => Ok(Kind::Raw),
            2 => Ok(Kind::Ignore),
            0x8000_0005 => Ok(Kind::Zlib),
            0x8000_0006 => Ok(Kind::Bzip2),
            0x8000_0007 => Err(Skipped::Lzfse),
            0x7fff_fffe | 0xffff_ffff => Err(Skipped::Silent),
            other => Err(Skipped::Unknown(other)),
        }
    }

    /// Whether reading the chunk needs its data in memory (sector count
    /// bounded by [`MAX_SECTORS`]).
    fn buffered(self) -> bool {
        !matches!(self, Kind::Zero | Kind::Ignore)
    }
}

/// One chunk, with its sectors and file offset made absolute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// What it holds.
    pub kind: Kind,
    /// First guest sector.
    pub sector: u64,
    /// Number of guest sectors.
    pub sectors: u64,
    /// Where its data starts in the file.
    pub offset: u64,
    /// Bytes of data in the file.
    pub length: u64,
}

impl Chunk {
    /// The sector after the last.
    pub fn end(&self) -> u64 {
        self.sector.saturating_add(self.sectors)
    }
}

/// The chunks read so far, from every table in file order.
#[derive(Debug, Default)]
pub struct Chunks {
    /// Chunks in table order.
    pub list: Vec<Chunk>,
    /// The skipped types met, once each, in the order met.
    pub skipped: Vec<Skipped>,
}

/// The big-endian u32 at `at` (the caller checked the length).
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The big-endian u64 at `at` (the caller checked the length).
fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Chunks {
    /// Adds the chunks of one table. A block that is not a table (another
    /// signature, or too short) is skipped, as qemu-img skips it.
    pub fn add_table(&mut self, table: &[u8], data_fork: u64) -> Result<(), DmgError> {
        if table.len() < MIN_TABLE || table.get(..4) != Some(&MISH[..]) {
            return Ok(());
        }
        let first_sector = be_u64(table, 8);
        let data = data_fork.wrapping_add(be_u64(table, 0x18));
        for entry in table[HEADER..].chunks_exact(ENTRY) {
            let kind = match Kind::of(be_u32(entry, 0)) {
                Ok(kind) => kind,
                Err(skipped) => {
                    if !self.skipped.contains(&skipped) {
                        self.skipped.push(skipped);
                    }
                    continue;
                }
            };
            let index = self.list.len() as u32;
            let sectors = be_u64(entry, 0x10);
            if kind.buffered() && sectors > MAX_SECTORS {
                return Err(DmgError::SectorCount(sectors, index));
            }
            let length = be_u64(entry, 0x20);
            if length > MAX_LENGTH {
                return Err(DmgError::Length(length, index));
            }
            self.list.push(Chunk {
                kind,
                sector: be_u64(entry, 8).wrapping_add(first_sector),
                sectors,
                offset: be_u64(entry, 0x18).wrapping_add(data),
                length,
            });
        }
        Ok(())
    }

    /// The chunk holding guest sector `sector`: the tables list chunks in
    /// ascending sector order, so a binary search finds it; none if no
    /// chunk covers it.
    pub fn find(&self, sector: u64) -> Option<&Chunk> {
        let after = self.list.partition_point(|c| c.sector <= sector);
        let chunk = self.list.get(after.checked_sub(1)?)?;
        (sector < chunk.end()).then_some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(first: u64, entries: &[(u32, u64, u64, u64, u64)]) -> Vec<u8> {
        let mut t = vec![0u8; HEADER];
        t[..4].copy_from_slice(MISH);
        t[8..16].copy_from_slice(&first.to_be_bytes());
        for &(kind, sector, count, offset, length) in entries {
            let mut e = [0u8; ENTRY];
            e[..4].copy_from_slice(&kind.to_be_bytes());
            e[8..16].copy_from_slice(&sector.to_be_bytes());
            e[16..24].copy_from_slice(&count.to_be_bytes());
            e[24..32].copy_from_slice(&offset.to_be_bytes());
            e[32..40].copy_from_slice(&length.to_be_bytes());
            t.extend_from_slice(&e);
        }
        t
    }

    #[test]
    fn chunks_are_found_by_sector() {
        let mut c = Chunks::default();
        let t = table(
            100,
            &[
                (1, 0, 8, 0, 4096),
                (0x7fff_fffe, 0, 0, 0, 0),
                (0, 8, 1 << 40, 0, 0),
                (0xffff_ffff, 0, 0, 0, 0),
            ],
        );
        c.add_table(&t, 1000).unwrap();
        assert_eq!(c.list.len(), 2);
        assert_eq!(c.skipped, vec![Skipped::Silent]);
        assert_eq!(c.list[0].offset, 1000);
        assert_eq!(c.find(99), None);
        assert_eq!(c.find(100).unwrap().kind, Kind::Raw);
        assert_eq!(c.find(108).unwrap().kind, Kind::Zero);
        assert_eq!(c.find(108 + (1 << 40)), None);
    }

    #[test]
    fn limits_are_refused() {
        let mut c = Chunks::default();
        let t = table(0, &[(0x8000_0005, 0, MAX_SECTORS + 1, 0, 10)]);
        assert_eq!(
            c.add_table(&t, 0),
            Err(DmgError::SectorCount(MAX_SECTORS + 1, 0))
        );
        let t = table(0, &[(1, 0, 1, 0, MAX_LENGTH + 1)]);
        assert_eq!(c.add_table(&t, 0), Err(DmgError::Length(MAX_LENGTH + 1, 0)));
        // Not a table: skipped.
        assert!(c.add_table(b"mish", 0).is_ok());
        assert!(c.list.is_empty());
    }
}
