//! The internal snapshot table (qcow2.txt "Snapshots"), parsed for `info`.
//! Reading is bounded by the file: whatever lies past its end reads as
//! zeros, which makes empty entries, so memory never follows a header field
//! alone.

use crate::error::{Error, Result};
use crate::meta::Io;
use qimg_driver_api::schema::SnapshotInfo;

/// Most snapshots qemu accepts in one image.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Most extra data qemu accepts in one entry.
const MAX_EXTRA_DATA: u32 = 1024;
/// Largest snapshot table qemu accepts.
const MAX_TABLE_BYTES: u64 = 64 << 20;

/// One snapshot table entry, as much as this driver needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// What `info` lists.
    pub info: SnapshotInfo,
    /// The snapshot's L1 table offset.
    pub l1_table_offset: u64,
    /// Entries in the snapshot's L1 table.
    pub l1_size: u32,
}

/// Sequential reads from the file, zeros past its end.
struct Cursor<'a> {
    io: &'a Io,
    at: u64,
    file_len: u64,
}

impl Cursor<'_> {
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        // Past the end everything is zero: allocate only what the file holds.
        let in_file = self.file_len.saturating_sub(self.at).min(n);
        let mut buf = vec![0u8; in_file as usize];
        self.io.read(self.at, &mut buf)?;
        self.at += n;
        Ok(buf)
    }
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        let got = self.bytes(N as u64)?;
        out[..got.len()].copy_from_slice(&got);
        Ok(out)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// Reads `count` entries at `offset`; returns them and the table's size in bytes.
pub fn read_table(io: &Io, offset: u64, count: u32, file_len: u64) -> Result<(Vec<Snapshot>, u64)> {
    let mut cur = Cursor {
        io,
        at: offset,
        file_len,
    };
    let mut out = Vec::new();
    for i in 0..count {
        let fixed: [u8; 40] = cur.fixed()?;
        let id_len = u16::from_be_bytes([fixed[12], fixed[13]]);
        let name_len = u16::from_be_bytes([fixed[14], fixed[15]]);
        let extra_len = be32(&fixed, 36);
        if extra_len > MAX_EXTRA_DATA {
            return Err(Error::invalid(format!(
                "Too much extra metadata in snapshot table entry {i}"
            )));
        }
        let mut extra = cur.bytes(u64::from(extra_len))?;
        let has = |n: u32| extra_len >= n;
        extra.resize(extra_len as usize, 0);
        let id = cur.bytes(u64::from(id_len))?;
        let name = cur.bytes(u64::from(name_len))?;
        let used = 40 + u64::from(extra_len) + u64::from(id_len) + u64::from(name_len);
        cur.at += used.next_multiple_of(8) - used;
        if cur.at - offset > MAX_TABLE_BYTES {
            return Err(Error::invalid("Snapshot table is too big"));
        }
        let vm_state_size = if has(8) {
            be64(&extra, 0)
        } else {
            u64::from(be32(&fixed, 32))
        };
        let icount = if has(24) {
            Some(be64(&extra, 16))
        } else {
            None
        };
        out.push(Snapshot {
            info: SnapshotInfo {
                id: String::from_utf8_lossy(&id).into_owned(),
                name: String::from_utf8_lossy(&name).into_owned(),
                vm_state_size,
                date_sec: u64::from(be32(&fixed, 16)),
                date_nsec: be32(&fixed, 20),
                vm_clock_nsec: be64(&fixed, 24),
                icount: icount.filter(|&c| c != u64::MAX),
            },
            l1_table_offset: be64(&fixed, 0),
            l1_size: be32(&fixed, 8),
        });
    }
    Ok((out, cur.at - offset))
}
