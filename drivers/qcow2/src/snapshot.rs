//! Internal snapshots (qcow2.txt "Snapshots"): the snapshot table, read
//! and written back with every byte it holds (unknown extra data
//! included), and the operations `snapshot -c`, `-a` and `-d` make.
//!
//! Refcounts count references per path from an L1 table: a data cluster
//! reached through an L2 table that the active L1 table and a snapshot
//! share counts twice, so copying a shared L2 table on write changes no
//! data refcount. A snapshot adds one to every cluster the active L1 table
//! reaches; bit 63 (QCOW_OFLAG_COPIED) of the active entries then says
//! again whether a cluster may be written in place.
//!
//! `-c` and `-d` build their new state aside and switch to it with one
//! header write ([`crate::shadow`]): `-c` hands the active L1 table to the
//! snapshot and gives the active side a new one, with copies of the L2
//! tables whose flags change. `-a` follows qemu's steps, in an order that
//! no kill can leave inconsistent.
//!
//! Reading is bounded by the file: whatever lies past its end reads as
//! zeros, which makes empty entries, so memory never follows a header
//! field alone.

use crate::error::{Error, Result};
use crate::image::Qcow2Image;
use crate::layout::{ClusterKind, COPIED, OFFSET_MASK};
use crate::meta::{self, Io, Meta};
use crate::overlap::MetaKind;
use crate::shadow::{Shadow, Switch};
use qimg_driver_api::schema::SnapshotInfo;
use qimg_driver_api::Prealloc;

/// Most snapshots qemu accepts in one image.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Most extra data qemu accepts in one entry.
pub(crate) const MAX_EXTRA_DATA: u32 = 1024;
/// Largest snapshot table qemu accepts.
const MAX_TABLE_BYTES: u64 = 64 << 20;
/// Bytes of the fixed part of an entry.
const FIXED: usize = 40;
/// Bytes of the extra data this driver knows (`vm_state_size_large`,
/// `disk_size`, `icount`), written into every entry.
const KNOWN_EXTRA: usize = 24;
/// Longest snapshot L1 table qemu accepts (32 MiB).
const MAX_L1_ENTRIES: u32 = (32 << 20) / 8;

/// One snapshot table entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Unique id (bytes as stored).
    pub id: Vec<u8>,
    /// Name (tag), bytes as stored.
    pub name: Vec<u8>,
    /// Offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Entries in the snapshot's L1 table.
    pub l1_size: u32,
    /// Creation time, seconds.
    pub date_sec: u32,
    /// Creation time, nanoseconds.
    pub date_nsec: u32,
    /// Guest clock, nanoseconds.
    pub vm_clock_nsec: u64,
    /// Size of the saved VM state.
    pub vm_state_size: u64,
    /// Guest size when the snapshot was taken.
    pub disk_size: u64,
    /// Instruction count (`u64::MAX`: not recorded).
    pub icount: u64,
    /// Extra data past the fields this driver knows, kept as found.
    pub unknown_extra: Vec<u8>,
    /// Bytes of extra data the entry had when read (version 2 entries may
    /// lack the size fields version 3 requires).
    pub extra_size: u32,
}

impl Snapshot {
    /// What `info` and `snapshot -l` list.
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            id: String::from_utf8_lossy(&self.id).into_owned(),
            name: String::from_utf8_lossy(&self.name).into_owned(),
            vm_state_size: self.vm_state_size,
            date_sec: u64::from(self.date_sec),
            date_nsec: self.date_nsec,
            vm_clock_nsec: self.vm_clock_nsec,
            icount: (self.icount != u64::MAX).then_some(self.icount),
        }
    }

    /// The entry as written: fixed part, extra data (the known fields,
    /// then the unknown bytes), id and name, starting on a multiple of 8.
    fn serialize(&self, out: &mut Vec<u8>) {
        out.resize(out.len().next_multiple_of(8), 0);
        let extra = (KNOWN_EXTRA + self.unknown_extra.len()) as u32;
        out.extend_from_slice(&self.l1_table_offset.to_be_bytes());
        out.extend_from_slice(&self.l1_size.to_be_bytes());
        out.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.date_sec.to_be_bytes());
        out.extend_from_slice(&self.date_nsec.to_be_bytes());
        out.extend_from_slice(&self.vm_clock_nsec.to_be_bytes());
        // A state too large for the old 32-bit field leaves it zero, so
        // that old readers see a disk-only snapshot.
        let small = u32::try_from(self.vm_state_size).unwrap_or(0);
        out.extend_from_slice(&small.to_be_bytes());
        out.extend_from_slice(&extra.to_be_bytes());
        out.extend_from_slice(&self.vm_state_size.to_be_bytes());
        out.extend_from_slice(&self.disk_size.to_be_bytes());
        out.extend_from_slice(&self.icount.to_be_bytes());
        out.extend_from_slice(&self.unknown_extra);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.name);
    }
}

/// The table as written for `snapshots`: entries 8-byte aligned, the
/// last one unpadded (the table's size ends with it).
pub fn serialize_table(snapshots: &[Snapshot]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in snapshots {
        s.serialize(&mut out);
    }
    out
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

/// A fault of the snapshot table that `check` reports (and `check -r all`
/// repairs) instead of refusing the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableIssue {
    /// The header counts more entries than qemu accepts; `overhang` of them
    /// are too many.
    TooMany {
        /// Entries past the limit.
        overhang: u32,
    },
    /// An entry claims more extra data than qemu accepts (a repair keeps
    /// the first 1024 bytes).
    TooMuchExtra {
        /// Index of the entry.
        entry: u32,
        /// Extra data it claims.
        size: u32,
    },
    /// A version 3 entry lacks the extra data version 3 requires (a repair
    /// writes it).
    Incomplete {
        /// Index of the entry.
        entry: u32,
    },
}

/// A snapshot table as read.
pub struct Table {
    /// The entries.
    pub snapshots: Vec<Snapshot>,
    /// Bytes the table occupies.
    pub size: u64,
    /// Faults found (only reported with `lenient`; otherwise the first
    /// refusal is an error).
    pub issues: Vec<TableIssue>,
}

/// Where and how to read a snapshot table.
pub struct TableSpec {
    /// Offset of the table.
    pub offset: u64,
    /// Entries the header counts.
    pub count: u32,
    /// Guest size: entries without their own size take it.
    pub disk_size: u64,
    /// The image is version 3 (whose entries need 16 bytes of extra data).
    pub v3: bool,
    /// Collect faults as [`TableIssue`]s (`check`) instead of refusing.
    pub lenient: bool,
}

/// Reads the snapshot table `spec` describes.
pub fn read_table(io: &Io, spec: &TableSpec, file_len: u64) -> Result<Table> {
    let (offset, disk_size) = (spec.offset, spec.disk_size);
    let mut issues = Vec::new();
    let mut count = spec.count;
    if count > MAX_SNAPSHOTS {
        if !spec.lenient {
            return Err(Error::invalid("Snapshot table too large"));
        }
        issues.push(TableIssue::TooMany {
            overhang: count - MAX_SNAPSHOTS,
        });
        count = 0;
    }
    let mut cur = Cursor {
        io,
        at: offset,
        file_len,
    };
    let mut out = Vec::new();
    for i in 0..count {
        // Entries start on a multiple of 8 from the table's start.
        let used = cur.at - offset;
        cur.at += used.next_multiple_of(8) - used;
        let fixed: [u8; FIXED] = cur.fixed()?;
        let id_len = u16::from_be_bytes([fixed[12], fixed[13]]);
        let name_len = u16::from_be_bytes([fixed[14], fixed[15]]);
        let extra_len = be32(&fixed, 36);
        let extra = if extra_len > MAX_EXTRA_DATA {
            if !spec.lenient {
                return Err(Error::invalid(format!(
                    "Too much extra metadata in snapshot table entry {i}"
                )));
            }
            issues.push(TableIssue::TooMuchExtra {
                entry: i,
                size: extra_len,
            });
            // The first bytes qemu accepts are kept; the rest is skipped.
            let mut kept = cur.bytes(u64::from(MAX_EXTRA_DATA))?;
            kept.resize(MAX_EXTRA_DATA as usize, 0);
            cur.at += u64::from(extra_len - MAX_EXTRA_DATA);
            kept
        } else {
            let mut extra = cur.bytes(u64::from(extra_len))?;
            extra.resize(extra_len as usize, 0);
            extra
        };
        if spec.v3 && extra.len() < 16 {
            issues.push(TableIssue::Incomplete { entry: i });
        }
        let mut id = cur.bytes(u64::from(id_len))?;
        id.resize(usize::from(id_len), 0);
        // qemu holds both as C strings: a NUL ends them.
        cut_at_nul(&mut id);
        let mut name = cur.bytes(u64::from(name_len))?;
        name.resize(usize::from(name_len), 0);
        cut_at_nul(&mut name);
        if cur.at - offset > MAX_TABLE_BYTES {
            return Err(Error::invalid("Snapshot table is too big"));
        }
        let has = |n: usize| extra.len() >= n;
        out.push(Snapshot {
            id,
            name,
            l1_table_offset: be64(&fixed, 0),
            l1_size: be32(&fixed, 8),
            date_sec: be32(&fixed, 16),
            date_nsec: be32(&fixed, 20),
            vm_clock_nsec: be64(&fixed, 24),
            vm_state_size: if has(8) {
                be64(&extra, 0)
            } else {
                u64::from(be32(&fixed, 32))
            },
            disk_size: if has(16) { be64(&extra, 8) } else { disk_size },
            icount: if has(24) { be64(&extra, 16) } else { u64::MAX },
            unknown_extra: extra.get(KNOWN_EXTRA..).unwrap_or(&[]).to_vec(),
            extra_size: extra.len() as u32,
        });
    }
    Ok(Table {
        snapshots: out,
        size: cur.at - offset,
        issues,
    })
}

/// An L1 table as stored in `size` entries.
fn l1_bytes(l1: &[u64], size: u32) -> Vec<u8> {
    let mut bytes = meta::words_be(l1);
    bytes.resize(size as usize * 8, 0);
    bytes
}

fn cut_at_nul(text: &mut Vec<u8>) {
    if let Some(end) = text.iter().position(|&b| b == 0) {
        text.truncate(end);
    }
}

/// The next snapshot id: one more than the largest number the ids start
/// with (as C's `strtoul` reads them).
fn next_id(snapshots: &[Snapshot]) -> Vec<u8> {
    let leading = |id: &[u8]| -> u64 {
        let text = String::from_utf8_lossy(id);
        let digits: String = text
            .trim_start()
            .trim_start_matches('+')
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if digits.is_empty() {
            0
        } else {
            digits.parse().unwrap_or(u64::MAX)
        }
    };
    let max = snapshots.iter().map(|s| leading(&s.id)).max().unwrap_or(0);
    max.wrapping_add(1).to_string().into_bytes()
}

/// Index of the snapshot whose id is `key`, else the first named `key`.
fn find(snapshots: &[Snapshot], key: &str) -> Option<usize> {
    let key = key.as_bytes();
    snapshots
        .iter()
        .position(|s| s.id == key)
        .or_else(|| snapshots.iter().position(|s| s.name == key))
}

impl Meta {
    /// Adds `addend` (-1, 0 or 1) to the refcount of every L2 table, data
    /// cluster and compressed cluster the L1 table at `l1_offset` reaches
    /// and sets bit 63 of its entries where the refcount is now one
    /// (`addend` 0 only does that). The active table is the in-memory one.
    pub fn update_snapshot_refcount(
        &mut self,
        io: &Io,
        l1_offset: u64,
        l1_size: u32,
        addend: i64,
    ) -> Result<()> {
        let active = l1_offset == self.header.l1_table_offset;
        let file_len = io.file.len().into_result()?;
        let mut l1 = if active {
            self.l1.clone()
        } else {
            meta::read_table(io, l1_offset, u64::from(l1_size), file_len)?
        };
        let layout = self.layout;
        let cs = layout.cluster_size();
        let bits = layout.cluster_bits;
        let mut l1_changed = false;
        for (i, slot) in l1.iter_mut().enumerate() {
            let old = *slot;
            if old & OFFSET_MASK == 0 {
                continue;
            }
            if self.needs_writeback() {
                self.flush(io)?;
            }
            let l2 = self.l2_of(old, i as u64)?;
            let mut table = self.l2_table(io, l2)?.clone();
            let mut changed = false;
            for (j, e) in table.iter_mut().enumerate() {
                let mut word = e.word & !COPIED;
                let refcount = match ClusterKind::of(word, &layout, self.data_file) {
                    ClusterKind::Compressed => {
                        if addend != 0 {
                            let (at, len) = layout.compressed_range(word);
                            self.add_refcount(io, at, len, addend)?;
                        }
                        // Compressed clusters are never written in place.
                        2
                    }
                    ClusterKind::Normal | ClusterKind::ZeroAlloc => {
                        let host = word & OFFSET_MASK;
                        self.check_cluster_offset(host, l2, j as u64)?;
                        if self.data_file {
                            1
                        } else {
                            if addend != 0 {
                                self.add_refcount(io, host, cs, addend)?;
                            }
                            self.refcount(io, host >> bits)?
                        }
                    }
                    ClusterKind::ZeroPlain | ClusterKind::Unallocated => 0,
                };
                if refcount == 1 {
                    word |= COPIED;
                }
                if word != e.word {
                    e.word = word;
                    changed = true;
                }
            }
            if changed {
                *self.l2_table(io, l2)? = table;
                self.l2.mark_dirty(l2);
            }
            if addend != 0 {
                self.add_refcount(io, l2, cs, addend)?;
            }
            let refcount = self.refcount(io, l2 >> bits)?;
            let entry = if refcount == 1 { l2 | COPIED } else { l2 };
            if entry != old {
                *slot = entry;
                l1_changed = true;
            }
        }
        if l1_changed {
            if active {
                self.l1 = l1;
                self.l1_dirty = true;
            } else {
                // Refcounts and L2 tables first, then the table pointing
                // at them.
                self.flush(io)?;
                let bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
                let own = Some(MetaKind::InactiveL1);
                self.check_overlap(io, l1_offset, bytes.len() as u64, own)?;
                io.write(l1_offset, &bytes)?;
                io.flush()?;
            }
        }
        Ok(())
    }

    /// Writes the snapshot table anew (every entry with the extra data
    /// version 3 requires).
    pub fn rewrite_snapshot_table(&mut self, io: &Io) -> Result<()> {
        self.write_snapshot_table(io)?;
        for s in self.snapshots.iter_mut() {
            s.extra_size = s.extra_size.max(KNOWN_EXTRA as u32);
        }
        Ok(())
    }

    /// Writes the snapshot list into newly allocated clusters, points the
    /// header at it and frees the old table.
    fn write_snapshot_table(&mut self, io: &Io) -> Result<()> {
        let bytes = serialize_table(&self.snapshots);
        let offset = if bytes.is_empty() {
            0
        } else {
            self.alloc_clusters(io, self.layout.clusters_for(bytes.len() as u64))?
        };
        self.flush(io)?;
        if !bytes.is_empty() {
            io.write(offset, &bytes)?;
            io.flush()?;
        }
        let (old_offset, old_size) = (self.header.snapshots_offset, self.snapshots_size);
        self.header.nb_snapshots = self.snapshots.len() as u32;
        self.header.snapshots_offset = offset;
        self.write_header(io)?;
        io.flush()?;
        self.snapshots_size = bytes.len() as u64;
        if old_size > 0 {
            self.add_refcount(io, old_offset, old_size, -1)?;
        }
        Ok(())
    }
}

impl Qcow2Image {
    /// Creates a snapshot named `name` of the current state. The active L1
    /// table becomes the snapshot's and the active side gets a new one, in
    /// one header write (see [`crate::shadow`]).
    pub fn snapshot_create(&self, name: &str) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        if self.io.data.is_some() {
            return Err(Error::unsupported("Operation not supported"));
        }
        let mut meta = self.lock();
        meta.flush(&self.io)?;
        if meta.snapshots.len() >= MAX_SNAPSHOTS as usize {
            return Err(Error::Errno(27, "File too large".into()));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let l1_size = meta.header.l1_size;
        let snapshot = Snapshot {
            id: next_id(&meta.snapshots),
            name: name.as_bytes().to_vec(),
            l1_table_offset: if l1_size == 0 {
                0
            } else {
                meta.header.l1_table_offset
            },
            l1_size,
            date_sec: now.as_secs() as u32,
            // qemu-img takes the time in microseconds.
            date_nsec: now.subsec_micros() * 1000,
            disk_size: self.size(),
            icount: 0,
            extra_size: KNOWN_EXTRA as u32,
            ..Snapshot::default()
        };
        let mut snapshots = meta.snapshots.clone();
        snapshots.push(snapshot);
        let mut shadow = Shadow::new(&mut meta, &self.io)?;
        let built = self.build_create(&mut meta, &mut shadow, snapshots);
        self.switch(&mut meta, shadow, built)
    }

    /// The new state after `snapshot -c`: one more reference to everything
    /// the active table reaches (the snapshot's), and a new active table.
    fn build_create(
        &self,
        meta: &mut Meta,
        shadow: &mut Shadow,
        snapshots: Vec<Snapshot>,
    ) -> Result<Switch> {
        let active = meta.l1.clone();
        shadow.add_tree(meta, &self.io, &active, 1)?;
        let l1 = shadow.repoint_active(meta, &self.io, &active)?;
        let l1_offset = if meta.header.l1_size == 0 {
            meta.header.l1_table_offset
        } else {
            let bytes = l1_bytes(&l1, meta.header.l1_size);
            shadow.write_new(meta, &self.io, &bytes)?
        };
        self.with_snapshot_table(meta, shadow, l1, l1_offset, snapshots)
    }

    /// Completes `switch` with the snapshot table for `snapshots`, written
    /// anew (the old one is freed).
    fn with_snapshot_table(
        &self,
        meta: &mut Meta,
        shadow: &mut Shadow,
        l1: Vec<u64>,
        l1_offset: u64,
        mut snapshots: Vec<Snapshot>,
    ) -> Result<Switch> {
        let bytes = serialize_table(&snapshots);
        let snapshots_offset = if bytes.is_empty() {
            0
        } else {
            shadow.write_new(meta, &self.io, &bytes)?
        };
        let (old, old_size) = (meta.header.snapshots_offset, meta.snapshots_size);
        if meta.header.nb_snapshots > 0 {
            shadow.add_range(meta, &self.io, old, old_size, -1)?;
        }
        for s in snapshots.iter_mut() {
            s.extra_size = s.extra_size.max(KNOWN_EXTRA as u32);
        }
        Ok(Switch {
            l1,
            l1_offset,
            snapshots,
            snapshots_offset,
            snapshots_size: bytes.len() as u64,
        })
    }

    /// Makes the new state `built` the image's, or leaves the image as it
    /// was; then gives the freed clusters back to the file system.
    fn switch(&self, meta: &mut Meta, shadow: Shadow, built: Result<Switch>) -> Result<()> {
        let switch = match built {
            Ok(switch) => switch,
            Err(e) => {
                shadow.abandon(&self.io);
                return Err(e);
            }
        };
        let freed = shadow.commit(meta, &self.io, switch)?;
        self.discard_freed(meta, &freed)
    }

    /// Reverts the image to the snapshot whose id or name is `key`.
    pub fn snapshot_apply(&self, key: &str) -> Result<()> {
        self.snapshot_goto(key).map_err(|e| match e {
            Error::Errno(n, m) => Error::Errno(n, format!("Failed to load snapshot: {m}")),
            Error::Corrupt => Error::Errno(
                crate::error::EIO,
                "Failed to load snapshot: Input/output error".into(),
            ),
            other => other,
        })
    }

    fn snapshot_goto(&self, key: &str) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        if self.io.data.is_some() {
            return Err(Error::Errno(95, "Operation not supported".into()));
        }
        let snapshot = {
            let meta = self.lock();
            if !meta.bitmaps.is_empty() {
                // Their bits would not describe the reverted data.
                return Err(Error::argument("Device has active dirty bitmaps"));
            }
            let Some(i) = find(&meta.snapshots, key) else {
                return Err(Error::Errno(2, "No such file or directory".into()));
            };
            meta.snapshots[i].clone()
        };
        if snapshot.l1_size > MAX_L1_ENTRIES
            || self.layout.in_cluster(snapshot.l1_table_offset) != 0
        {
            return Err(Error::Errno(27, "File too large".into()));
        }
        if snapshot.disk_size != self.size() {
            // The guest takes the snapshot's size back first.
            self.resize(snapshot.disk_size, Prealloc::OFF, true)?;
        }
        let mut meta = self.lock();
        meta.discarded = Some(Vec::new());
        let result = self.goto_locked(&mut meta, &snapshot);
        let freed = meta.discarded.take().unwrap_or_default();
        result?;
        self.discard_freed(&mut meta, &freed)
    }

    fn goto_locked(&self, meta: &mut Meta, snapshot: &Snapshot) -> Result<()> {
        if snapshot.l1_size > meta.header.l1_size {
            self.grow_l1(meta, u64::from(snapshot.l1_size))?;
        }
        let file_len = self.io.file.len().into_result()?;
        let mut l1 = meta::read_table(
            &self.io,
            snapshot.l1_table_offset,
            u64::from(snapshot.l1_size),
            file_len,
        )?;
        meta.update_snapshot_refcount(&self.io, snapshot.l1_table_offset, snapshot.l1_size, 1)?;
        meta.flush(&self.io)?;
        // Every table the snapshot reaches is now shared with it, so none
        // is marked copied: a snapshot's L1 may still carry the marks it
        // was taken with, and a kill before they are recomputed below
        // would leave the active table marking shared L2 tables copied.
        for entry in l1.iter_mut() {
            *entry &= !COPIED;
        }
        let l1_size = meta.header.l1_size as usize;
        l1.truncate(l1_size);
        let mut bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        bytes.resize(l1_size * 8, 0);
        let at = meta.header.l1_table_offset;
        meta.check_overlap(&self.io, at, bytes.len() as u64, Some(MetaKind::ActiveL1))?;
        self.io.write(at, &bytes)?;
        self.io.flush()?;
        let active = meta.header.l1_table_offset;
        let size = meta.header.l1_size;
        // The old active table's references go; the in-memory table still
        // holds it until then.
        meta.update_snapshot_refcount(&self.io, active, size, -1)?;
        meta.l1 = l1;
        meta.l1_dirty = false;
        meta.update_snapshot_refcount(&self.io, active, size, 0)?;
        meta.flush(&self.io)
    }

    /// Makes this read-only image read as a snapshot (by `id`, `name` or
    /// both): its L1 table replaces the active one in memory only.
    pub fn snapshot_load(&self, id: Option<&str>, name: Option<&str>) -> Result<()> {
        if self.writable {
            return Err(Error::unsupported(
                "Temporarily loading a snapshot needs a read-only image",
            ));
        }
        let mut meta = self.lock();
        let found = meta.snapshots.iter().find(|s| {
            id.is_none_or(|i| s.id == i.as_bytes()) && name.is_none_or(|n| s.name == n.as_bytes())
        });
        let Some(snapshot) = found.filter(|_| id.is_some() || name.is_some()).cloned() else {
            return Err(Error::Errno(2, "Can't find snapshot".into()));
        };
        if snapshot.l1_size > MAX_L1_ENTRIES
            || self.layout.in_cluster(snapshot.l1_table_offset) != 0
        {
            return Err(Error::invalid("Snapshot L1 table offset invalid"));
        }
        let file_len = self.io.file.len().into_result()?;
        meta.l1 = meta::read_table(
            &self.io,
            snapshot.l1_table_offset,
            u64::from(snapshot.l1_size),
            file_len,
        )?;
        meta.header.l1_size = snapshot.l1_size;
        meta.header.l1_table_offset = snapshot.l1_table_offset;
        meta.l1_dirty = false;
        Ok(())
    }

    /// Deletes the snapshot whose id or name is `key`, in one header write
    /// (see [`crate::shadow`]).
    pub fn snapshot_delete(&self, key: &str) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let mut meta = self.lock();
        let Some(i) = find(&meta.snapshots, key) else {
            return Err(Error::argument("Can't find the snapshot"));
        };
        meta.flush(&self.io)?;
        let mut shadow = Shadow::new(&mut meta, &self.io)?;
        let built = self.build_delete(&mut meta, &mut shadow, i);
        self.switch(&mut meta, shadow, built)
    }

    /// The new state after deleting snapshot `i`: its references go, and
    /// the active tables whose clusters it shared get their COPIED flags.
    fn build_delete(&self, meta: &mut Meta, shadow: &mut Shadow, i: usize) -> Result<Switch> {
        let mut snapshots = meta.snapshots.clone();
        let snapshot = snapshots.remove(i);
        let file_len = self.io.file.len().into_result()?;
        let l1 = meta::read_table(
            &self.io,
            snapshot.l1_table_offset,
            u64::from(snapshot.l1_size),
            file_len,
        )?;
        shadow.add_tree(meta, &self.io, &l1, -1)?;
        shadow.add_range(
            meta,
            &self.io,
            snapshot.l1_table_offset,
            u64::from(snapshot.l1_size) * 8,
            -1,
        )?;
        let active = meta.l1.clone();
        let l1 = shadow.repoint_active(meta, &self.io, &active)?;
        let mut l1_offset = meta.header.l1_table_offset;
        if l1 != active {
            let size = meta.header.l1_size;
            l1_offset = shadow.write_new(meta, &self.io, &l1_bytes(&l1, size))?;
            shadow.add_range(
                meta,
                &self.io,
                meta.header.l1_table_offset,
                u64::from(size) * 8,
                -1,
            )?;
        }
        self.with_snapshot_table(meta, shadow, l1, l1_offset, snapshots)
    }

    /// Gives the host's file back the clusters a snapshot operation freed
    /// (qemu discards them too), once the metadata saying so is on disk.
    pub(crate) fn discard_freed(&self, meta: &mut Meta, freed: &[u64]) -> Result<()> {
        meta.flush(&self.io)?;
        let mut offsets = Vec::new();
        for &c in freed {
            if meta.refcount(&self.io, c)? == 0 {
                offsets.push(c << self.layout.cluster_bits);
            }
        }
        meta::punch_clusters(&self.io, &offsets, self.layout.cluster_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_with_unknown_extra_data() {
        let s = Snapshot {
            id: b"12".to_vec(),
            name: b"before upgrade!".to_vec(),
            l1_table_offset: 0x50000,
            l1_size: 3,
            date_sec: 1_700_000_000,
            date_nsec: 5000,
            vm_clock_nsec: 77,
            vm_state_size: 1 << 33,
            disk_size: 1 << 30,
            icount: u64::MAX,
            unknown_extra: vec![9; 16],
            extra_size: 40,
        };
        let bytes = serialize_table(&[s.clone(), s.clone()]);
        // 97 bytes each; the second starts at 104 and is not padded.
        assert_eq!(bytes.len(), 104 + 97);
        // The 32-bit state size is zero when the state does not fit it.
        assert_eq!(be32(&bytes, 32), 0);
        assert_eq!(be32(&bytes, 36), 40);
    }

    #[test]
    fn ids_follow_the_largest_number() {
        let with = |ids: &[&str]| -> Vec<Snapshot> {
            ids.iter()
                .map(|i| Snapshot {
                    id: i.as_bytes().to_vec(),
                    ..Snapshot::default()
                })
                .collect()
        };
        assert_eq!(next_id(&[]), b"1");
        assert_eq!(next_id(&with(&["1", "7abc", "x"])), b"8");
    }

    #[test]
    fn ids_are_found_before_names() {
        let list = vec![
            Snapshot {
                id: b"1".to_vec(),
                name: b"2".to_vec(),
                ..Snapshot::default()
            },
            Snapshot {
                id: b"2".to_vec(),
                name: b"x".to_vec(),
                ..Snapshot::default()
            },
        ];
        assert_eq!(find(&list, "2"), Some(1));
        assert_eq!(find(&list, "x"), Some(1));
        assert_eq!(find(&list, "y"), None);
    }
}
