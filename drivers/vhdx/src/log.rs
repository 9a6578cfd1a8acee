//! The metadata log ([MS-VHDX] 2.3): a circular buffer of entries, each a
//! header, descriptors and 4 KiB data sectors, that makes metadata updates
//! atomic. An update is written to the log and made durable before it is
//! applied in place; after a crash the newest complete sequence of entries
//! (the active sequence) is replayed.

use crate::crc::{crc32c, crc32c_without};
use crate::error::{Result, VhdxError};
use crate::format::{guid_at, le32, le64, put32, put64, Guid};
use qimg_driver_api::{ByteStoreBox, Prealloc, StoreExt};
use std::collections::HashMap;

/// Log sectors are 4 KiB.
pub const SECTOR: u64 = 4096;
/// "loge".
const ENTRY_SIGNATURE: u32 = 0x6567_6F6C;
/// "zero".
const ZERO_SIGNATURE: u32 = 0x6F72_657A;
/// "desc".
const DATA_SIGNATURE: u32 = 0x6373_6564;
/// "data".
const SECTOR_SIGNATURE: u32 = 0x6174_6164;
/// Bytes of an entry header.
const HEADER_BYTES: u64 = 64;
/// Bytes of a descriptor.
const DESCRIPTOR_BYTES: u64 = 32;
/// Log updates never touch the file's first 192 KiB (identifier and
/// headers), which are updated in place with their own scheme.
const FIRST_LOGGED_OFFSET: u64 = 192 * 1024;

/// Where the log is and which entries belong to it.
#[derive(Clone, Copy, Debug)]
pub struct Log {
    /// File offset of the log.
    pub offset: u64,
    /// Bytes of the log.
    pub length: u64,
    /// The GUID valid entries carry (the header's `LogGuid`).
    pub guid: Guid,
}

/// One update in an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Descriptor {
    /// Zero `length` bytes at `offset`.
    Zero { offset: u64, length: u64 },
    /// Write the 4 KiB `sector` at `offset`.
    Data { offset: u64, sector: Vec<u8> },
}

/// A valid entry, parsed.
#[derive(Debug)]
struct Entry {
    length: u64,
    tail: u64,
    sequence: u64,
    last_file_offset: u64,
    flushed_file_offset: u64,
    descriptors: Vec<Descriptor>,
}

impl Log {
    /// Reads `buf.len()` bytes at log offset `at`, wrapping at the log's end.
    fn read(&self, store: &ByteStoreBox, at: u64, buf: &mut [u8]) -> Result<()> {
        let first = ((self.length - at) as usize).min(buf.len());
        store.read_or_zero_at(self.offset + at, &mut buf[..first])?;
        if first < buf.len() {
            store.read_or_zero_at(self.offset, &mut buf[first..])?;
        }
        Ok(())
    }

    /// Writes `buf` at log offset `at`, wrapping at the log's end.
    fn write(&self, store: &ByteStoreBox, at: u64, buf: &[u8]) -> Result<()> {
        let first = ((self.length - at) as usize).min(buf.len());
        store.write_all_at(self.offset + at, &buf[..first])?;
        if first < buf.len() {
            store.write_all_at(self.offset, &buf[first..])?;
        }
        Ok(())
    }

    /// The entry at log offset `at`, if it is valid ([MS-VHDX] 2.3.1).
    /// Reading it whole spends `budget`; none left is an error.
    fn entry_at(&self, store: &ByteStoreBox, at: u64, budget: &mut u64) -> Result<Option<Entry>> {
        let mut head = [0u8; SECTOR as usize];
        self.read(store, at, &mut head)?;
        let length = u64::from(le32(&head, 8));
        let tail = u64::from(le32(&head, 12));
        let count = u64::from(le32(&head, 24));
        if le32(&head, 0) != ENTRY_SIGNATURE
            || guid_at(&head, 32) != self.guid
            || length == 0
            || length % SECTOR != 0
            || length >= self.length
            || tail % SECTOR != 0
            || tail >= self.length
        {
            return Ok(None);
        }
        let header_sectors = (HEADER_BYTES + count * DESCRIPTOR_BYTES).div_ceil(SECTOR);
        if header_sectors * SECTOR > length {
            return Ok(None);
        }
        *budget = budget.checked_sub(length).ok_or(VhdxError::Invalid)?;
        let mut bytes = vec![0u8; length as usize];
        self.read(store, at, &mut bytes)?;
        if le32(&bytes, 4) != crc32c_without(&bytes, 4) {
            return Ok(None);
        }
        let sequence = le64(&bytes, 16);
        let mut next_sector = header_sectors;
        let mut descriptors = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let d = &bytes[64 + 32 * i..96 + 32 * i];
            let offset = le64(d, 16);
            if le64(d, 24) != sequence
                || !offset.is_multiple_of(SECTOR)
                || offset < FIRST_LOGGED_OFFSET
            {
                return Ok(None);
            }
            match le32(d, 0) {
                ZERO_SIGNATURE => {
                    let length = le64(d, 8);
                    if !length.is_multiple_of(SECTOR) || offset.checked_add(length).is_none() {
                        return Ok(None);
                    }
                    descriptors.push(Descriptor::Zero { offset, length });
                }
                DATA_SIGNATURE => {
                    if (next_sector + 1) * SECTOR > length {
                        return Ok(None);
                    }
                    let s = &bytes[(next_sector * SECTOR) as usize..][..SECTOR as usize];
                    next_sector += 1;
                    // [MS-VHDX] 2.3.1.4: the sequence number is split
                    // over the sector's first and last words.
                    if le32(s, 0) != SECTOR_SIGNATURE
                        || u64::from(le32(s, 4)) != sequence >> 32
                        || u64::from(le32(s, 4092)) != sequence & 0xffff_ffff
                    {
                        return Ok(None);
                    }
                    let mut sector = s.to_vec();
                    sector[..8].copy_from_slice(&d[8..16]);
                    sector[4092..].copy_from_slice(&d[4..8]);
                    descriptors.push(Descriptor::Data { offset, sector });
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(Entry {
            length,
            tail,
            sequence,
            flushed_file_offset: le64(&bytes, 48),
            last_file_offset: le64(&bytes, 56),
            descriptors,
        }))
    }

    /// The active sequence ([MS-VHDX] 2.3.3): of the valid entries whose
    /// `Tail` leads, entry by entry with consecutive sequence numbers, to
    /// themselves, the one with the largest sequence number, with the
    /// entries from its tail to it. Empty if there is none.
    fn active_sequence(&self, store: &ByteStoreBox) -> Result<Vec<Entry>> {
        // Work is bounded: a sound log checksums each of its bytes about
        // once (its entries do not overlap; stale ones from the previous
        // lap at most twice), and a chain visits each entry once. A
        // hostile log that needs more than that, or than a GiB, is
        // refused.
        let mut budget = self.length.saturating_mul(4).max(1 << 30);
        let mut entries: HashMap<u64, Entry> = HashMap::new();
        let mut at = 0;
        while at < self.length {
            if let Some(e) = self.entry_at(store, at, &mut budget)? {
                entries.insert(at, e);
            }
            at += SECTOR;
        }
        let mut heads: Vec<(u64, u64)> = entries.iter().map(|(&at, e)| (e.sequence, at)).collect();
        heads.sort_unstable_by(|a, b| b.cmp(a));
        let mut steps = 4 * (self.length / SECTOR) + 16;
        for &(sequence, head_at) in &heads {
            let Some(head) = entries.get(&head_at) else {
                continue;
            };
            let mut chain = Vec::new();
            let mut pos = head.tail;
            let mut expected = None;
            let complete = loop {
                if pos == head_at {
                    break expected.is_none_or(|s| s == sequence);
                }
                steps = steps.checked_sub(1).ok_or(VhdxError::Invalid)?;
                let Some(e) = entries.get(&pos) else {
                    break false;
                };
                if expected.is_some_and(|s| s != e.sequence) || e.sequence >= sequence {
                    break false;
                }
                expected = Some(e.sequence + 1);
                chain.push(pos);
                pos = (pos + e.length) % self.length;
            };
            if complete {
                chain.push(head_at);
                return Ok(chain
                    .into_iter()
                    .filter_map(|p| entries.remove(&p))
                    .collect());
            }
        }
        Ok(Vec::new())
    }

    /// Whether the log holds an active sequence to replay.
    pub fn needs_replay(&self, store: &ByteStoreBox) -> Result<bool> {
        Ok(!self.active_sequence(store)?.is_empty())
    }

    /// Replays the active sequence, if any, and makes the result durable.
    /// Returns whether anything was replayed.
    pub fn replay(&self, store: &ByteStoreBox) -> Result<bool> {
        let file_len = store.size()?;
        let entries = self.active_sequence(store)?;
        let Some(head) = entries.last() else {
            return Ok(false);
        };
        // [MS-VHDX] 2.3.3: a file shorter than the head's FlushedFileOffset
        // lost data the log relies on.
        if head.flushed_file_offset > file_len {
            return Err(VhdxError::Invalid);
        }
        let limit = file_len.max(head.last_file_offset);
        for e in &entries {
            for d in &e.descriptors {
                match d {
                    Descriptor::Zero { offset, length } => {
                        if offset + length > limit || self.overlaps(*offset, offset + length) {
                            return Err(VhdxError::Invalid);
                        }
                        store.zero_range(*offset, *length, false)?;
                    }
                    Descriptor::Data { offset, sector } => {
                        if offset + SECTOR > limit || self.overlaps(*offset, offset + SECTOR) {
                            return Err(VhdxError::Invalid);
                        }
                        store.write_all_at(*offset, sector)?;
                    }
                }
            }
        }
        if store.size()? < head.last_file_offset {
            store.set_size(head.last_file_offset, Prealloc::OFF)?;
        }
        store.sync()?;
        Ok(true)
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        start < self.offset + self.length && self.offset < end
    }

    /// The most 4 KiB sectors one entry carries: an entry never takes more
    /// than half the log, so that writing one never overwrites the entry
    /// before it.
    pub fn max_sectors_per_entry(&self) -> usize {
        let half = self.length / 2 / SECTOR;
        // Data sectors plus the header sectors their descriptors need.
        let mut n = half.saturating_sub(1);
        while n > 0 && n + (HEADER_BYTES + n * DESCRIPTOR_BYTES).div_ceil(SECTOR) > half {
            n -= 1;
        }
        n.max(1) as usize
    }

    /// Writes one entry at log offset `at` with sequence number
    /// `sequence`, carrying `sectors` (file offset, 4 KiB of content), and
    /// makes it durable. `file_len` is the file's size, which the entry
    /// records. Returns the log offset after the entry.
    pub fn write_entry(
        &self,
        store: &ByteStoreBox,
        at: u64,
        sequence: u64,
        sectors: &[(u64, Vec<u8>)],
        file_len: u64,
    ) -> Result<u64> {
        let n = sectors.len() as u64;
        let header_sectors = (HEADER_BYTES + n * DESCRIPTOR_BYTES).div_ceil(SECTOR);
        let length = (header_sectors + n) * SECTOR;
        let mut b = vec![0u8; length as usize];
        put32(&mut b, 0, ENTRY_SIGNATURE);
        put32(&mut b, 8, length as u32);
        // Every earlier entry is applied before this one is written: the
        // entry is a sequence of its own.
        put32(&mut b, 12, at as u32);
        put64(&mut b, 16, sequence);
        put32(&mut b, 24, n as u32);
        b[32..48].copy_from_slice(&self.guid);
        put64(&mut b, 48, file_len);
        put64(&mut b, 56, file_len);
        for (i, (offset, content)) in sectors.iter().enumerate() {
            let d = 64 + 32 * i;
            put32(&mut b, d, DATA_SIGNATURE);
            b[d + 4..d + 8].copy_from_slice(&content[4092..4096]);
            b[d + 8..d + 16].copy_from_slice(&content[..8]);
            put64(&mut b, d + 16, *offset);
            put64(&mut b, d + 24, sequence);
            let s = ((header_sectors + i as u64) * SECTOR) as usize;
            let sector = &mut b[s..s + SECTOR as usize];
            put32(sector, 0, SECTOR_SIGNATURE);
            put32(sector, 4, (sequence >> 32) as u32);
            sector[8..4092].copy_from_slice(&content[8..4092]);
            put32(sector, 4092, sequence as u32);
        }
        let sum = crc32c(&b);
        put32(&mut b, 4, sum);
        self.write(store, at, &b)?;
        store.sync()?;
        Ok((at + length) % self.length)
    }
}
