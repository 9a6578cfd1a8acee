//! The block map: one 32-bit entry per guest block, naming the data block
//! that holds it (its index from the data offset) or marking it
//! unallocated (`0xffffffff`) or discarded (`0xfffffffe`).

use crate::error::Result;
use crate::header::{is_allocated, Header, BLOCKS_ALLOCATED_AT, UNALLOCATED};
use qimg_driver_api::ByteStoreBox;
use qimg_driver_util::{read_or_zero, write_all};
use std::collections::BTreeSet;

/// Bytes of block map read or written at a time.
const CHUNK: usize = 1 << 20;
/// The largest span [`BlockMap::span_with_count`] writes at once (the map
/// of a 4 TiB image of 1 MiB blocks).
const MAX_SPAN: u64 = 16 << 20;

/// The block map as loaded from the file.
pub struct BlockMap {
    /// The entries stored in the file. A map that runs past the end of the
    /// file is cut there: qemu-img reads the missing entries as zeros (all
    /// naming data block 0), and so does [`BlockMap::get`], without
    /// holding them in memory.
    entries: Vec<u32>,
    /// Entries the header says the map has.
    len: u32,
    /// Entries changed since the map was last written.
    dirty: BTreeSet<u32>,
}

impl BlockMap {
    /// Reads the block map `header` describes from a file of `file_len`
    /// bytes. What is held in memory is bounded by the file's size.
    pub fn load(store: &ByteStoreBox, header: &Header, file_len: u64) -> Result<BlockMap> {
        let start = u64::from(header.offset_bmap);
        let wanted = u64::from(header.blocks_in_image) * 4;
        let present = wanted.min(file_len.saturating_sub(start));
        let mut entries = Vec::with_capacity((present / 4) as usize + 1);
        let mut buf = vec![0u8; CHUNK];
        let mut at = 0u64;
        while at < present {
            let n = (present - at).min(CHUNK as u64) as usize;
            // A last entry cut by the end of the file is zero-filled.
            let whole = n.next_multiple_of(4);
            read_or_zero(store, start + at, &mut buf[..whole])?;
            entries.extend(
                buf[..whole]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            at += n as u64;
        }
        Ok(BlockMap {
            entries,
            len: header.blocks_in_image,
            dirty: BTreeSet::new(),
        })
    }

    /// Entries the map has.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Appends entries (already written to the file) to a complete map.
    pub fn extend(&mut self, entries: &[u32]) {
        self.entries.extend_from_slice(entries);
        self.len += entries.len() as u32;
    }

    /// Whether every entry lies inside the file.
    pub fn complete(&self) -> bool {
        self.entries.len() as u64 >= u64::from(self.len)
    }

    /// The entry of guest block `block` (zero past the end of the file, as
    /// qemu-img reads it; unallocated past the end of the map).
    pub fn get(&self, block: u32) -> u32 {
        if block >= self.len {
            return UNALLOCATED;
        }
        self.entries.get(block as usize).copied().unwrap_or(0)
    }

    /// The entries stored in the file, in order.
    pub fn stored(&self) -> &[u32] {
        &self.entries
    }

    /// Entries of the map past the end of the file (all read as zero).
    pub fn missing(&self) -> u64 {
        u64::from(self.len).saturating_sub(self.entries.len() as u64)
    }

    /// One more than the highest data block an entry names (0 if none).
    pub fn blocks_referenced(&self) -> u64 {
        let stored = self
            .entries
            .iter()
            .filter(|e| is_allocated(**e))
            .map(|&e| u64::from(e) + 1)
            .max()
            .unwrap_or(0);
        if self.missing() > 0 {
            stored.max(1)
        } else {
            stored
        }
    }

    /// Points guest block `block` at data block `index` in memory; the
    /// file follows at [`BlockMap::write_dirty`]. Only complete maps are
    /// changed (images opened for writing).
    pub fn set(&mut self, block: u32, index: u32) {
        if let Some(e) = self.entries.get_mut(block as usize) {
            *e = index;
            self.dirty.insert(block);
        }
    }

    /// Whether entries wait to be written.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The header's block count and the map up to its last changed entry
    /// as one write (where it starts, its bytes), so that a kill leaves
    /// both as they were or both new: qemu-img's check compares them. The
    /// file's bytes between the count and the map are kept. `None` when
    /// the span would be larger than [`MAX_SPAN`] or the map does not lie
    /// after the count; the caller then writes the two apart.
    pub fn span_with_count(
        &self,
        store: &ByteStoreBox,
        header: &Header,
        count: u32,
    ) -> Result<Option<(u64, Vec<u8>)>> {
        let count_end = BLOCKS_ALLOCATED_AT + 4;
        let map_at = u64::from(header.offset_bmap);
        let entries = self.dirty.last().map_or(0, |&last| last as usize + 1);
        if map_at < count_end || map_at - BLOCKS_ALLOCATED_AT + entries as u64 * 4 > MAX_SPAN {
            return Ok(None);
        }
        let mut bytes = count.to_le_bytes().to_vec();
        bytes.resize((map_at - BLOCKS_ALLOCATED_AT) as usize, 0);
        read_or_zero(store, count_end, &mut bytes[4..])?;
        bytes.extend(self.entries[..entries].iter().flat_map(|e| e.to_le_bytes()));
        Ok(Some((BLOCKS_ALLOCATED_AT, bytes)))
    }

    /// Forgets the changed entries once [`BlockMap::span_with_count`]'s
    /// bytes are written.
    pub fn written(&mut self) {
        self.dirty.clear();
    }

    /// Writes the changed entries, each run of consecutive ones at once.
    pub fn write_dirty(&mut self, store: &ByteStoreBox, header: &Header) -> Result<()> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut iter = dirty.iter().copied().peekable();
        while let Some(first) = iter.next() {
            let mut last = first;
            while iter.peek() == Some(&(last + 1)) && (last - first) < (CHUNK / 4) as u32 {
                last += 1;
                iter.next();
            }
            let bytes: Vec<u8> = self.entries[first as usize..=last as usize]
                .iter()
                .flat_map(|e| e.to_le_bytes())
                .collect();
            let at = u64::from(header.offset_bmap) + u64::from(first) * 4;
            if let Err(e) = write_all(store, at, &bytes) {
                // Keep what was not written for the next flush.
                self.dirty = dirty.range(first..).copied().collect();
                return Err(e.into());
            }
        }
        Ok(())
    }
}
