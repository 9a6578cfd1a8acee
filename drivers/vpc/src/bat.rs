//! The Block Allocation Table of a dynamic disk (specification, "Block
//! Allocation Table and Data Blocks"): one big-endian sector number per
//! block, pointing at the block's sector bitmap, which the block's data
//! follows; all ones for a block never written.
//!
//! Only the entries inside the file are held: QEMU reads a table that runs
//! past the end of the file with the missing bytes as zeros, so those
//! entries are 0 (a block at the start of the file), and holding them would
//! let a 1 KiB file ask for a gigabyte.

use crate::error::{Result, VpcError};
use crate::header::DynamicHeader;
use qimg_driver_api::{ByteStoreBox, StoreExt};

/// An entry of a block that is not allocated.
pub const UNALLOCATED: u32 = u32::MAX;
/// The most entries QEMU accepts: its table must fit an `int` of bytes.
const MAX_ENTRIES: u32 = 0x1fff_ffff;
/// The largest single read QEMU's block layer makes; a longer table cannot
/// be read in one.
const MAX_READ: u64 = 0x7fff_fe00;

/// The table as read from the file.
#[derive(Debug)]
pub struct Bat {
    /// The entries that lie inside the file.
    entries: Vec<u32>,
    /// `Max Table Entries`.
    max: u32,
}

impl Bat {
    /// Reads and checks the table `header` describes, for a disk of
    /// `guest_size` bytes in a file of `file_len` bytes. Returns the table
    /// and the offset where the next block goes (QEMU's "free data block
    /// offset": past the table and past every block).
    pub fn load(
        store: &ByteStoreBox,
        header: &DynamicHeader,
        guest_size: u64,
        file_len: u64,
    ) -> Result<(Bat, u64)> {
        let bs = header.block_size;
        if !bs.is_power_of_two() || bs < 512 {
            return Err(VpcError::BlockSize(bs));
        }
        let max = header.max_table_entries;
        if max > MAX_ENTRIES {
            return Err(VpcError::TooManyEntries(max as i32));
        }
        if u64::from(max) * u64::from(bs) < guest_size {
            return Err(VpcError::TableTooSmall);
        }
        let bytes = u64::from(max) * 4;
        let offset = header.table_offset;
        let end = offset.saturating_add(bytes);
        if bytes > MAX_READ || end > i64::MAX as u64 {
            return Err(VpcError::TableUnreadable);
        }
        let inside = file_len
            .saturating_sub(offset)
            .div_ceil(4)
            .min(u64::from(max));
        let mut raw = vec![0u8; inside as usize * 4];
        store.read_or_zero_at(offset, &mut raw)?;
        let entries: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let span = header.bitmap_size() + u64::from(bs);
        let mut free = (offset + bytes).next_multiple_of(512);
        for &e in entries.iter().filter(|&&e| e != UNALLOCATED) {
            free = free.max(u64::from(e) * 512 + span);
        }
        if (entries.len() as u64) < u64::from(max) {
            free = free.max(span);
        }
        if free > file_len {
            return Err(VpcError::Truncated);
        }
        Ok((Bat { entries, max }, free))
    }

    /// The entry of block `index` (0 past the file's end, as QEMU reads it).
    pub fn get(&self, index: u64) -> u32 {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Records block `index` at `sector`; false if the entry lies past the
    /// end of the file as it was opened (only a damaged table does).
    pub fn set(&mut self, index: u64, sector: u32) -> bool {
        match usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
        {
            Some(e) => {
                *e = sector;
                true
            }
            None => false,
        }
    }

    /// A copy with `max` entries, the new ones unallocated; `None` if part
    /// of this table lies past the end of the file.
    pub fn grown(&self, max: u32) -> Option<Bat> {
        if self.entries.len() as u64 != u64::from(self.max) {
            return None;
        }
        let mut entries = self.entries.clone();
        entries.resize(max as usize, UNALLOCATED);
        Some(Bat { entries, max })
    }

    /// `Max Table Entries`.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The big-endian bytes of entries `[first, first + count)`.
    pub fn encode(&self, first: u64, count: u64) -> Vec<u8> {
        (first..first + count)
            .flat_map(|i| self.get(i).to_be_bytes())
            .collect()
    }
}
