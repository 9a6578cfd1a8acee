//! Writing: allocation of clusters with copy-on-write of partial clusters,
//! zero clusters, discard, compressed clusters, preallocation, resize and
//! the backing file name.
//!
//! Concurrency: metadata changes happen under the image lock; guest data is
//! written outside it. A guest cluster being allocated (or read-modified-
//! written) sits in `Meta::in_flight` until its L2 entry is updated; other
//! writers to that cluster wait on `Qcow2Image::settled`.

use crate::crypt::SECTOR;
use crate::error::{Error, Result, EIO};
use crate::header::{incompat, MAX_BACKING_NAME};
use crate::image::Qcow2Image;
use crate::layout::{Entry, Sub, COPIED, OFFSET_MASK, ZERO};
use crate::meta::Meta;
use qimg_driver_api::abi_stable::std_types::RSlice;
use qimg_driver_api::{zero_flags, Prealloc, StoreExt};
use qimg_driver_util::is_zero;
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

/// Zero bits of all 32 subclusters in an extended L2 bitmap.
const ALL_ZERO: u64 = 0xffff_ffff << 32;
/// Largest explicit zero buffer written at once.
const ZERO_CHUNK: u64 = 1 << 20;
/// Tag of a prepared cluster (`compress_cluster`) holding compressed bytes.
const PACKED: u8 = 1;
/// Tag of a prepared cluster holding the plain data (it did not compress).
const PLAIN: u8 = 0;

/// One guest cluster whose L2 entry changes after its data is written.
struct Plan {
    /// Guest offset of the cluster.
    guest: u64,
    /// Its entry before the write.
    old: Entry,
    /// Host cluster the data goes to.
    host: u64,
    /// The host cluster is new (the old one, if any, is released).
    fresh: bool,
    /// Bytes of the cluster written (padded to subclusters).
    start: u64,
    /// End of the written bytes within the cluster.
    end: u64,
}

/// Mask of the subclusters in `[start, end)` of a cluster.
fn sub_mask(start: u64, end: u64, sub_size: u64) -> u64 {
    let first = start / sub_size;
    let last = end.div_ceil(sub_size);
    let bits = last - first;
    let ones = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    (ones << first) & 0xffff_ffff
}

impl Qcow2Image {
    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::argument(format!(
                "Request out of range: offset {offset} length {len} beyond image size {size}"
            ))),
        }
    }

    /// Waits until guest cluster `cluster` has no allocation under way.
    fn settle<'a>(&'a self, mut meta: MutexGuard<'a, Meta>, cluster: u64) -> MutexGuard<'a, Meta> {
        while meta.in_flight.contains(&cluster) {
            meta = self.settled.wait(meta).unwrap_or_else(|e| e.into_inner());
        }
        meta
    }

    /// Sets the dirty bit before the first change to an image with lazy
    /// refcounts (qcow2.txt, compatible feature bit 0), and writes out
    /// metadata when the caches are full of it.
    fn before_change(&self, meta: &mut Meta) -> Result<()> {
        if meta.header.lazy_refcounts() && !meta.header.dirty() {
            meta.header.incompatible_features |= incompat::DIRTY;
            meta.write_header(&self.io)?;
            self.io.flush()?;
        }
        if meta.needs_writeback() {
            meta.flush(&self.io)?;
        }
        Ok(())
    }

    /// Writes guest data.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if self.crypto.is_some()
            && (!offset.is_multiple_of(SECTOR) || !(buf.len() as u64).is_multiple_of(SECTOR))
        {
            // Encryption works on whole sectors: merge with what is there.
            let start = offset / SECTOR * SECTOR;
            let end = (offset + buf.len() as u64).div_ceil(SECTOR) * SECTOR;
            let mut sectors = vec![0u8; (end - start) as usize];
            self.read(start, &mut sectors)?;
            let at = (offset - start) as usize;
            sectors[at..at + buf.len()].copy_from_slice(buf);
            return self.write(start, &sectors);
        }
        self.check_write(offset, buf.len() as u64)?;
        self.mark_dirty(offset, buf.len() as u64);
        let mut done = 0usize;
        while done < buf.len() {
            done += self.write_step(offset + done as u64, &buf[done..])?;
        }
        Ok(())
    }

    /// Writes a prefix of `data` at `pos`; returns how much was written.
    fn write_step(&self, pos: u64, data: &[u8]) -> Result<usize> {
        let layout = self.layout;
        let cs = layout.cluster_size();
        let span = layout.l2_span();
        let end = (pos + data.len() as u64).min((pos / span + 1) * span);
        let meta = self.lock();
        let mut meta = self.settle(meta, pos / cs);
        // In place: allocated subclusters of clusters this image owns alone.
        let mut p = pos;
        let mut host0 = None;
        while p < end {
            if p != pos && layout.in_cluster(p) == 0 && meta.in_flight.contains(&(p / cs)) {
                break;
            }
            let (sub, entry, _) = meta.sub_at(&self.io, p)?;
            let Sub::Normal(h) = sub else { break };
            if !entry.copied() {
                break;
            }
            let host = h + layout.in_cluster(p);
            match host0 {
                None => host0 = Some(host),
                Some(h0) if h0 + (p - pos) == host => {}
                Some(_) => break,
            }
            p = ((p / layout.subcluster_size()) + 1) * layout.subcluster_size();
        }
        if let (Some(host), true) = (host0, p > pos) {
            let n = (p.min(end) - pos) as usize;
            meta.check_data_write(&self.io, host, n as u64)?;
            meta.hold_owned(&self.io, host, n as u64)?;
            drop(meta);
            let bytes = match &self.crypto {
                None => Cow::Borrowed(&data[..n]),
                Some(c) => {
                    let mut sealed = data[..n].to_vec();
                    c.encrypt(pos, host, &mut sealed)?;
                    Cow::Owned(sealed)
                }
            };
            self.io
                .data_store()
                .write_at(host, RSlice::from_slice(&bytes))
                .into_result()?;
            return Ok(n);
        }
        self.before_change(&mut meta)?;
        let plans = self.plan(&mut meta, pos, end)?;
        let zeros = self.read_zero_by_entries(&meta, &plans);
        drop(meta);
        let result = self.write_planned(pos, data, &plans, zeros);
        let mut meta = self.lock();
        let committed = match result {
            Ok(n) => self.commit(&mut meta, &plans).map(|_| n),
            Err(e) => Err(e),
        };
        for plan in &plans {
            meta.in_flight.remove(&(plan.guest / cs));
        }
        self.settled.notify_all();
        committed
    }

    /// Decides where the clusters from `pos` go: one cluster reused in place
    /// (zero or unallocated subclusters of an owned cluster), or a run of
    /// clusters that need new host clusters, allocated contiguously.
    fn plan(&self, meta: &mut Meta, pos: u64, end: u64) -> Result<Vec<Plan>> {
        let layout = self.layout;
        let cs = layout.cluster_size();
        let g = layout.subcluster_size();
        meta.writable_l2(&self.io, pos)?;
        let mut plans: Vec<Plan> = Vec::new();
        let mut c = layout.cluster_start(pos);
        while c < end {
            if c != layout.cluster_start(pos) && meta.in_flight.contains(&(c / cs)) {
                break;
            }
            let (entry, _) = meta.entry(&self.io, c)?;
            let owned = entry.has_host(meta.data_file) && entry.copied();
            let start = pos.max(c) - c;
            let stop = end.min(c + cs) - c;
            if owned {
                if !plans.is_empty() {
                    break;
                }
                let (start, stop) = if layout.extended {
                    (start / g * g, stop.div_ceil(g) * g)
                } else {
                    (0, cs)
                };
                plans.push(Plan {
                    guest: c,
                    old: entry,
                    host: entry.host(),
                    fresh: false,
                    start,
                    end: stop,
                });
                break;
            }
            // Extended entries keep the state of untouched subclusters unless
            // there is data to copy (compressed, or shared with a snapshot).
            let keeps_data = entry.compressed() || entry.has_host(meta.data_file);
            let (start, stop) = if layout.extended && !keeps_data {
                (start / g * g, stop.div_ceil(g) * g)
            } else {
                (0, cs)
            };
            if let Some(last) = plans.last() {
                if last.end != cs || start != 0 {
                    break;
                }
            }
            plans.push(Plan {
                guest: c,
                old: entry,
                host: 0,
                fresh: true,
                start,
                end: stop,
            });
            c += cs;
        }
        if plans.first().is_some_and(|p| p.fresh) {
            self.place(meta, &mut plans)?;
        }
        if let (Some(first), Some(last)) = (plans.first(), plans.last()) {
            meta.check_data_write(&self.io, first.host, last.host + cs - first.host)?;
            if !first.fresh {
                meta.hold_owned(&self.io, first.host, cs)?;
            }
        }
        for plan in &plans {
            meta.in_flight.insert(plan.guest / cs);
        }
        Ok(plans)
    }

    /// Gives a run of fresh clusters their host clusters: reserved ones
    /// (the run then stops where the reservations stop being contiguous),
    /// or newly allocated ones (the run stops at the first reserved one).
    fn place(&self, meta: &mut Meta, plans: &mut Vec<Plan>) -> Result<()> {
        let cs = self.layout.cluster_size();
        if meta.data_file {
            for plan in plans.iter_mut() {
                plan.host = plan.guest;
            }
            return Ok(());
        }
        let reserved = |meta: &Meta, plan: &Plan| meta.reserved.get(&(plan.guest / cs)).copied();
        if let Some(base) = reserved(meta, &plans[0]) {
            let keep = (0..plans.len())
                .take_while(|&i| reserved(meta, &plans[i]) == Some(base + i as u64 * cs))
                .count();
            plans.truncate(keep);
            for plan in plans.iter_mut() {
                meta.reserved.remove(&(plan.guest / cs));
            }
            for (i, plan) in plans.iter_mut().enumerate() {
                plan.host = base + i as u64 * cs;
            }
            return Ok(());
        }
        let keep = plans
            .iter()
            .take_while(|p| reserved(meta, p).is_none())
            .count();
        plans.truncate(keep);
        let base = meta.alloc_clusters(&self.io, keep as u64)?;
        for (i, plan) in plans.iter_mut().enumerate() {
            plan.host = base + i as u64 * cs;
        }
        Ok(())
    }

    /// Allocates, in this call's order, the host clusters a write of
    /// `[offset, offset+len)` would allocate (and the L2 tables it would
    /// need), so that writes from many threads get the layout of writes in
    /// guest order. The next write of each cluster uses its reservation;
    /// `close` releases those never written.
    pub fn reserve(&self, offset: u64, len: u64) -> Result<bool> {
        self.check_write(offset, len)?;
        let layout = self.layout;
        let cs = layout.cluster_size();
        let span = layout.l2_span();
        let end = offset + len;
        let mut meta = self.lock();
        if len > 0 {
            self.before_change(&mut meta)?;
        }
        let mut pos = offset;
        while pos < end {
            let stop = end.min((pos / span + 1) * span);
            meta.writable_l2(&self.io, pos)?;
            // Runs of clusters a write would allocate, each allocated whole.
            let mut run: Vec<u64> = Vec::new();
            let mut c = layout.cluster_start(pos);
            while c < stop {
                let (entry, _) = meta.entry(&self.io, c)?;
                let owned = entry.has_host(meta.data_file) && entry.copied();
                if owned {
                    meta.hold_owned(&self.io, entry.host(), cs)?;
                }
                let taken = owned
                    || meta.reserved.contains_key(&(c / cs))
                    || meta.in_flight.contains(&(c / cs));
                if taken {
                    self.reserve_run(&mut meta, &mut run)?;
                } else {
                    run.push(c / cs);
                }
                c += cs;
            }
            self.reserve_run(&mut meta, &mut run)?;
            pos = stop;
        }
        Ok(true)
    }

    /// Allocates one contiguous run of host clusters for the guest clusters
    /// in `run` (none with an external data file) and empties it.
    fn reserve_run(&self, meta: &mut Meta, run: &mut Vec<u64>) -> Result<()> {
        if run.is_empty() || meta.data_file {
            run.clear();
            return Ok(());
        }
        let cs = self.layout.cluster_size();
        let base = meta.alloc_clusters(&self.io, run.len() as u64)?;
        for (i, guest) in run.drain(..).enumerate() {
            meta.reserved.insert(guest, base + i as u64 * cs);
        }
        Ok(())
    }

    /// True if the clusters of `plans` read as zeros before the write, by
    /// their entries alone: each is unallocated or zero in every
    /// subcluster, with no backing file (nor raw data file) to read through.
    fn read_zero_by_entries(&self, meta: &Meta, plans: &[Plan]) -> bool {
        if self.backing.is_some() || self.data_file_raw {
            return false;
        }
        let subs = if self.layout.extended { 32 } else { 1 };
        plans.iter().all(|p| {
            (0..subs).all(|i| {
                let sub = p.old.sub(&self.layout, meta.data_file, i);
                sub.zero() || sub.unallocated()
            })
        })
    }

    /// Writes the planned clusters: the caller's data, padded with the
    /// clusters' current content (backing data, zeros, old data). `zeros`:
    /// the clusters are known to read as zeros before the write.
    fn write_planned(&self, pos: u64, data: &[u8], plans: &[Plan], zeros: bool) -> Result<usize> {
        let (Some(first), Some(last)) = (plans.first(), plans.last()) else {
            return Err(Error::Corrupt);
        };
        let g_start = first.guest + first.start;
        let g_end = last.guest + last.end;
        let user_end = (pos + data.len() as u64).min(g_end);
        if pos == g_start && user_end == g_end && self.crypto.is_none() {
            // The caller's data covers the clusters whole: no padding to add.
            let n = (g_end - g_start) as usize;
            self.io
                .data_store()
                .write_at(first.host + first.start, RSlice::from_slice(&data[..n]))
                .into_result()?;
            return Ok(n);
        }
        let n = (user_end - pos) as usize;
        let (head, tail) = ((pos - g_start) as usize, (user_end - g_start) as usize);
        // New clusters whose padding is zeros are zeroed whole instead of
        // written (what QEMU does; the file gets no zero bytes there).
        let fresh = self.crypto.is_none() && plans.iter().all(|p| p.fresh);
        let zero_then_write = || -> Result<usize> {
            let cs = self.layout.cluster_size();
            let store = self.io.data_store();
            store
                .write_zeroes(first.host, last.host + cs - first.host, false)
                .into_result()?;
            store
                .write_at(
                    first.host + first.start + head as u64,
                    RSlice::from_slice(&data[..n]),
                )
                .into_result()?;
            Ok(n)
        };
        if fresh && zeros {
            return zero_then_write();
        }
        let mut buf = vec![0u8; (g_end - g_start) as usize];
        if pos > g_start {
            self.read(g_start, &mut buf[..head])?;
        }
        if user_end < g_end {
            self.read(user_end, &mut buf[tail..])?;
        }
        if fresh && is_zero(&buf[..head]) && is_zero(&buf[tail..]) {
            return zero_then_write();
        }
        buf[head..tail].copy_from_slice(&data[..n]);
        if let Some(c) = &self.crypto {
            c.encrypt(g_start, first.host + first.start, &mut buf)?;
        }
        self.io
            .data_store()
            .write_at(first.host + first.start, RSlice::from_slice(&buf))
            .into_result()?;
        Ok(n)
    }

    /// Points the L2 entries at the written clusters and releases what they
    /// replaced.
    fn commit(&self, meta: &mut Meta, plans: &[Plan]) -> Result<()> {
        let layout = self.layout;
        for plan in plans {
            meta.writable_l2(&self.io, plan.guest)?;
            let (current, slot) = meta.entry(&self.io, plan.guest)?;
            let Some(slot) = slot else {
                return Err(Error::Corrupt);
            };
            let mut entry = Entry {
                word: plan.host | COPIED,
                bitmap: 0,
            };
            if layout.extended {
                let written = sub_mask(plan.start, plan.end, layout.subcluster_size());
                let old_alloc = if current.compressed() {
                    0xffff_ffff
                } else {
                    current.bitmap & 0xffff_ffff
                };
                let alloc = written | old_alloc;
                let zero = (current.bitmap >> 32) & !alloc;
                entry.bitmap = alloc | zero << 32;
            }
            meta.set_entry(&self.io, slot, entry)?;
            if plan.fresh {
                meta.release_entry(plan.old);
            }
        }
        Ok(())
    }

    /// Makes `[offset, offset+len)` read as zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> Result<()> {
        self.check_write(offset, len)?;
        if !self.layout.v3 || self.data_file_raw {
            // Version 2 has no zero clusters, and a raw data file must hold
            // the zeros themselves.
            if flags & zero_flags::NO_FALLBACK != 0 {
                return Err(Error::unsupported("Operation not supported"));
            }
            if !self.layout.v3 && self.backing.is_none() && !self.data_file_raw {
                return self.zero_by_discarding(offset, len);
            }
            self.mark_dirty(offset, len);
            return self.write_zero_bytes(offset, len);
        }
        self.mark_dirty(offset, len);
        let g = self.layout.subcluster_size();
        let end = offset + len;
        let size = self.size();
        // Partial granules at either end: zero them whole if the rest already
        // reads as zeros, else write zero bytes.
        let mut start = offset;
        let mut stop = end;
        if !start.is_multiple_of(g) {
            let head_end = (start / g + 1) * g;
            if self.reads_zero(start / g * g, start)?
                && self.reads_zero(end.min(head_end), head_end.min(size))?
            {
                start = start / g * g;
            } else {
                self.write_zero_bytes(start, head_end.min(end) - start)?;
                start = head_end.min(end);
            }
        }
        if !stop.is_multiple_of(g) && stop > start {
            let tail_start = stop / g * g;
            let tail_end = ((stop / g + 1) * g).min(size);
            if tail_start >= start && self.reads_zero(stop, tail_end)? {
                stop = tail_end;
            } else {
                let from = tail_start.max(start);
                self.write_zero_bytes(from, stop - from)?;
                stop = from;
            }
        }
        let unmap = flags & zero_flags::MAY_UNMAP != 0;
        let mut pos = start;
        while pos < stop {
            pos = self.zero_cluster(pos, stop, unmap, (offset, end))?;
        }
        Ok(())
    }

    /// True if `[start, end)` reads as zeros.
    fn reads_zero(&self, start: u64, end: u64) -> Result<bool> {
        if end <= start {
            return Ok(true);
        }
        let mut buf = vec![0u8; (end - start) as usize];
        self.read(start, &mut buf)?;
        Ok(is_zero(&buf))
    }

    /// Writes explicit zero bytes.
    /// Zeroes a range of a version 2 image without a backing file, where an
    /// unallocated cluster reads as zeros (qcow2.txt, "Cluster mapping"):
    /// whole clusters are deallocated, as qemu does, and only the partial
    /// clusters at the edges get zero bytes.
    fn zero_by_discarding(&self, offset: u64, len: u64) -> Result<()> {
        let cs = self.layout.cluster_size();
        let end = offset + len;
        let first = offset.next_multiple_of(cs);
        // The last cluster counts as whole when the range runs to the end.
        let last = if end >= self.size() {
            end
        } else {
            end / cs * cs
        };
        if first >= last {
            return self.write_zero_bytes(offset, len);
        }
        self.write_zero_bytes(offset, first - offset)?;
        self.discard(first, last - first)?;
        self.write_zero_bytes(last, end - last)
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<()> {
        let zeros = vec![0u8; len.min(ZERO_CHUNK) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK);
            self.write(offset + done, &zeros[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    /// Zeroes the whole granules of one cluster from `pos` (granule-aligned)
    /// up to `stop`; returns where the next cluster starts. `asked` is the
    /// range the caller asked for: granules widened past it were seen
    /// reading zeros before the lock was taken, and are checked again
    /// under it (a concurrent write may have filled them since); if one no
    /// longer is, only the asked part gets explicit zeros.
    fn zero_cluster(&self, pos: u64, stop: u64, unmap: bool, asked: (u64, u64)) -> Result<u64> {
        let layout = self.layout;
        let cs = layout.cluster_size();
        let c = layout.cluster_start(pos);
        let next = (c + cs).min(stop);
        let whole = pos == c && (next == c + cs || next >= self.size());
        let meta = self.lock();
        let mut meta = self.settle(meta, c / cs);
        let (entry, _) = meta.entry(&self.io, c)?;
        let has_host = entry.has_host(meta.data_file);
        let owned = has_host && entry.copied();
        let g = layout.subcluster_size();
        let mut widened = Vec::new();
        if pos < asked.0 {
            widened.push((pos - c) / g);
        }
        if next > asked.1 {
            widened.push((asked.1 - c) / g);
        }
        let still_zero = widened.iter().all(|&i| {
            let sub = entry.sub(&layout, meta.data_file, i as u32);
            sub.unallocated() || sub.zero()
        });
        if !still_zero
            || (!whole && (!layout.extended || entry.compressed() || (has_host && !owned)))
        {
            drop(meta);
            let (from, to) = (pos.max(asked.0), next.min(asked.1));
            self.write_zero_bytes(from, to - from)?;
            return Ok(next);
        }
        self.before_change(&mut meta)?;
        meta.writable_l2(&self.io, c)?;
        let (entry, slot) = meta.entry(&self.io, c)?;
        let Some(slot) = slot else {
            return Err(Error::Corrupt);
        };
        if owned {
            // Counted before it is kept or given up (see `hold_owned`).
            meta.hold_owned(&self.io, entry.host(), cs)?;
        }
        // A whole cluster may give up its host cluster; part of one keeps it.
        let keep = owned && (!whole || !unmap || meta.data_file);
        let word = if keep { entry.host() | COPIED } else { 0 };
        let new = if !layout.extended {
            Entry {
                word: word | ZERO,
                bitmap: 0,
            }
        } else if whole {
            Entry {
                word,
                bitmap: ALL_ZERO,
            }
        } else {
            let mask = sub_mask(pos - c, next - c, layout.subcluster_size());
            let alloc = entry.bitmap & 0xffff_ffff & !mask;
            let zero = ((entry.bitmap >> 32) | mask) & !alloc;
            Entry {
                word,
                bitmap: alloc | zero << 32,
            }
        };
        meta.set_entry(&self.io, slot, new)?;
        if !keep {
            meta.release_entry(entry);
        }
        Ok(next)
    }

    /// The end of the last data file cluster the entries of a `size`-byte
    /// disk name.
    fn data_named_end(&self, size: u64) -> Result<u64> {
        let layout = self.layout;
        let cs = layout.cluster_size();
        let mut meta = self.lock();
        let mut end = 0;
        for i in 0..layout.l1_entries_for(size) {
            let l2 = meta.l2_offset(i)?;
            if l2 == 0 {
                continue;
            }
            for e in meta.l2_table(&self.io, l2)?.iter() {
                if e.has_host(true) {
                    end = end.max(e.host() + cs);
                }
            }
        }
        Ok(end)
    }

    /// Deallocates whole clusters: they read from the backing file again (or
    /// as zeros without one) and their host clusters are freed. Partial
    /// clusters are left alone, as qemu does. Bitmaps are not marked: this
    /// is how commit empties an overlay, which qemu does below its dirty
    /// tracking.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        let layout = self.layout;
        let cs = layout.cluster_size();
        let size = self.size();
        let mut c = offset.div_ceil(cs) * cs;
        let end = if offset + len >= size {
            offset + len
        } else {
            (offset + len) / cs * cs
        };
        while c < end {
            let meta = self.lock();
            let mut meta = self.settle(meta, c / cs);
            let (entry, _) = meta.entry(&self.io, c)?;
            let allocated = entry.compressed()
                || entry.has_host(meta.data_file)
                || entry.word & ZERO != 0
                || entry.bitmap != 0;
            if allocated {
                self.before_change(&mut meta)?;
                meta.writable_l2(&self.io, c)?;
                let (entry, slot) = meta.entry(&self.io, c)?;
                let Some(slot) = slot else {
                    return Err(Error::Corrupt);
                };
                if entry.has_host(meta.data_file) && entry.copied() {
                    meta.hold_owned(&self.io, entry.host(), cs)?;
                }
                // Deallocated: the cluster reads from the backing file again
                // (or as zeros without one), as qemu's "make empty" leaves it.
                meta.set_entry(&self.io, slot, Entry::default())?;
                meta.release_entry(entry);
            }
            c += cs;
        }
        // L2 tables whose whole range was discarded are freed too, so an
        // emptied overlay holds only its header structures, as qemu leaves it.
        let mut meta = self.lock();
        let span = cs * layout.l2_entries();
        let first = offset.div_ceil(span);
        let last = if end >= size {
            layout.l1_entries_for(size)
        } else {
            end / span
        };
        for i in first..last.min(meta.l1.len() as u64) {
            let table = meta.l2_offset(i)?;
            if table != 0 {
                self.before_change(&mut meta)?;
                meta.set_l1_entry(i as usize, 0);
                meta.drop_reference(table, cs);
            }
        }
        meta.flush(&self.io)?;
        self.cut_free_tail(&mut meta)
    }

    /// Writes one cluster compressed (`offset` cluster-aligned, `buf` at
    /// most a cluster); incompressible data is written normally. An empty
    /// `buf` at offset 0 ends a compressed copy (see [`Self::end_compressed`]).
    pub fn write_compressed(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if buf.is_empty() && offset == 0 {
            return self.end_compressed();
        }
        let prepared = self.compress_cluster(offset, buf)?;
        self.write_prepared(offset, &prepared)
    }

    /// Compresses one cluster for [`Self::write_prepared`], checking what
    /// `write_compressed` checks: the result is a tag byte (`PACKED` or
    /// `PLAIN`, for data that does not compress) and the bytes to store.
    pub fn compress_cluster(&self, offset: u64, buf: &[u8]) -> Result<Vec<u8>> {
        let cs = self.layout.cluster_size();
        self.check_write(offset, buf.len() as u64)?;
        if self.layout.in_cluster(offset) != 0 || buf.is_empty() || buf.len() as u64 > cs {
            return Err(Error::argument(
                "Compressed writes must be cluster-aligned and at most one cluster",
            ));
        }
        if self.io.data.is_some() {
            // (Compression is not supported with external data files: qemu
            // says no more than ENOTSUP's text.)
            return Err(Error::unsupported("Operation not supported"));
        }
        if self.crypto.is_some() {
            return Err(Error::unsupported(
                "Compression and encryption not supported at the same time",
            ));
        }
        let mut cluster = buf.to_vec();
        cluster.resize(cs as usize, 0);
        let mut out = Vec::with_capacity(buf.len() + 1);
        match self.method.compress(&cluster, cs as usize)? {
            Some(packed) => {
                out.push(PACKED);
                out.extend_from_slice(&packed);
            }
            None => {
                out.push(PLAIN);
                out.extend_from_slice(buf);
            }
        }
        Ok(out)
    }

    /// Stores a cluster prepared by [`Self::compress_cluster`].
    pub fn write_prepared(&self, offset: u64, prepared: &[u8]) -> Result<()> {
        match prepared.split_first() {
            Some((&PACKED, packed)) if !packed.is_empty() => self.store_packed(offset, packed),
            Some((&PLAIN, plain)) if !plain.is_empty() => self.write(offset, plain),
            _ => Err(Error::argument(
                "Not a cluster prepared by compress_cluster",
            )),
        }
    }

    /// Pads the file to a whole number of sectors after compressed writes,
    /// as qemu-img's `convert -c` does when it ends.
    fn end_compressed(&self) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let _meta = self.lock();
        let len = self.io.file.size()?;
        if !len.is_multiple_of(SECTOR) {
            self.io
                .file
                .set_size(len.div_ceil(SECTOR) * SECTOR, Prealloc::OFF)?;
        }
        Ok(())
    }

    /// Writes compressed bytes for the guest cluster at `offset` and points
    /// its L2 entry at them.
    fn store_packed(&self, offset: u64, packed: &[u8]) -> Result<()> {
        let layout = self.layout;
        let cs = layout.cluster_size();
        self.check_write(offset, 1)?;
        self.mark_dirty(offset, cs.min(self.size() - offset));
        let meta = self.lock();
        let mut meta = self.settle(meta, offset / cs);
        self.before_change(&mut meta)?;
        meta.writable_l2(&self.io, offset)?;
        // Compressed data never replaces a cluster that has a host offset:
        // qemu fails such a write with EIO, so `convert -n -c` into an
        // image holding data fails in both tools.
        if meta.entry(&self.io, offset)?.0.word & OFFSET_MASK != 0 {
            return Err(Error::Errno(EIO, "Input/output error".into()));
        }
        let at = self.alloc_compressed(&mut meta, packed.len() as u64)?;
        meta.check_data_write(&self.io, at, packed.len() as u64)?;
        meta.in_flight.insert(offset / cs);
        drop(meta);
        let written = self.io.write(at, packed);
        let mut meta = self.lock();
        let result = written.and_then(|_| {
            meta.writable_l2(&self.io, offset)?;
            let (old, slot) = meta.entry(&self.io, offset)?;
            let Some(slot) = slot else {
                return Err(Error::Corrupt);
            };
            let entry = Entry {
                word: layout.compressed_entry(at, packed.len() as u64),
                bitmap: 0,
            };
            meta.set_entry(&self.io, slot, entry)?;
            meta.release_entry(old);
            Ok(())
        });
        meta.in_flight.remove(&(offset / cs));
        self.settled.notify_all();
        result
    }

    /// Reserves `len` bytes for compressed data, packing clusters the way
    /// qemu does: after the previous one, in the same host cluster while it
    /// fits (each host cluster counted once per compressed cluster in it).
    fn alloc_compressed(&self, meta: &mut Meta, len: u64) -> Result<u64> {
        let layout = self.layout;
        let cs = layout.cluster_size();
        let next = meta.compressed_next;
        let mut at = 0;
        if next != 0 && layout.in_cluster(next) != 0 {
            let cluster = next >> layout.cluster_bits;
            let room = cs - layout.in_cluster(next);
            let rc = meta.refcount(&self.io, cluster)?;
            if rc > 0 && rc < layout.refcount_max() {
                if room >= len {
                    meta.add_refcount(&self.io, next, 1, 1)?;
                    at = next;
                } else {
                    let fresh = meta.alloc_clusters(&self.io, 1)?;
                    if fresh == layout.cluster_start(next) + cs {
                        meta.add_refcount(&self.io, next, 1, 1)?;
                        at = next;
                    } else {
                        at = fresh;
                    }
                }
            }
        }
        if at == 0 {
            at = meta.alloc_clusters(&self.io, 1)?;
        }
        meta.compressed_next = if layout.in_cluster(at + len) == 0 {
            0
        } else {
            at + len
        };
        Ok(at)
    }

    /// Allocates host clusters for every guest cluster in `[start, end)`
    /// that has none (metadata preallocation), then extends the file as
    /// `mode` says (sparse for metadata, fallocate or zeros otherwise).
    /// `head` holds the guest bytes the cluster of `start` must keep, from
    /// its start up to `start` (see `backing_head`).
    pub fn preallocate(
        &self,
        start: u64,
        end: u64,
        mode: Prealloc,
        head: Option<&[u8]>,
    ) -> Result<()> {
        let layout = self.layout;
        let cs = layout.cluster_size();
        let span = layout.l2_span();
        if mode == Prealloc::METADATA {
            self.stop_growing_densely();
        }
        let mut meta = self.lock();
        if matches!(mode, Prealloc::FALLOC | Prealloc::FULL) && !meta.data_file {
            // A table large enough for the whole file, placed before the data.
            let full = crate::measure::full_size(end, cs, layout.refcount_order, layout.extended);
            let blocks = layout.clusters_for(full) >> layout.refblock_bits();
            meta.move_reftable(&self.io, (blocks + 1).div_ceil(cs / 8))?;
        }
        // With falloc/full qemu reserves all new data clusters in one run
        // before placing L2 tables; with metadata, each L2 table precedes
        // the data it maps.
        let contiguous = matches!(mode, Prealloc::FALLOC | Prealloc::FULL) && !meta.data_file;
        let mut run = 0u64;
        if contiguous {
            let count = self.unallocated_clusters(&mut meta, start, end)?;
            if count > 0 {
                run = meta.alloc_clusters_at_end(&self.io, count)?;
                // What the file already holds there (clusters leaked or
                // freed at its end) must read as zeros.
                let store = self.io.data_store();
                let stale_end = store.len().into_result()?.min(run + count * cs);
                if stale_end > run {
                    store
                        .write_zeroes(run, stale_end - run, false)
                        .into_result()?;
                }
            }
        }
        let mut c = layout.cluster_start(start);
        let mut host_end = 0u64;
        while c < end {
            let table_end = ((c / span + 1) * span).min(end.div_ceil(cs) * cs);
            meta.writable_l2(&self.io, c)?;
            let mut todo = Vec::new();
            let mut g = c;
            while g < table_end {
                let (entry, slot) = meta.entry(&self.io, g)?;
                if !entry.has_host(meta.data_file) && !entry.compressed() {
                    if let Some(slot) = slot {
                        todo.push((g, slot, entry));
                    }
                }
                g += cs;
            }
            if !todo.is_empty() {
                let base = if meta.data_file {
                    0
                } else if contiguous {
                    let base = run;
                    run += todo.len() as u64 * cs;
                    base
                } else {
                    meta.alloc_clusters(&self.io, todo.len() as u64)?
                };
                for (i, (g, slot, old)) in todo.into_iter().enumerate() {
                    let host = if meta.data_file {
                        g
                    } else {
                        base + i as u64 * cs
                    };
                    let mut used = cs;
                    if mode == Prealloc::METADATA && !meta.data_file && end - g < cs {
                        // The last cluster, as qemu allocates it: its (sub)
                        // cluster holding the disk's end gets zeros past
                        // the end's sector (its copy-on-write), and the
                        // file ends with that (sub)cluster.
                        let sub = layout.subcluster_size();
                        let (zero_from, stop) = (
                            end.next_multiple_of(512) - g,
                            end.next_multiple_of(sub).min(g + cs) - g,
                        );
                        if zero_from < stop {
                            meta.check_data_write(&self.io, host + zero_from, stop - zero_from)?;
                            let zeros = vec![0u8; (stop - zero_from) as usize];
                            self.io
                                .data_store()
                                .write_all_at(host + zero_from, &zeros)?;
                        }
                        used = stop;
                    }
                    host_end = host_end.max(host + used);
                    if let Some(bytes) = head.filter(|_| g == layout.cluster_start(start)) {
                        // Data before the L2 entry that points at it.
                        meta.check_data_write(&self.io, host, bytes.len() as u64)?;
                        self.io.data_store().write_all_at(host, bytes)?;
                    }
                    let bitmap = if layout.extended {
                        old.bitmap & ALL_ZERO
                    } else {
                        0
                    };
                    let word = host | COPIED | if layout.extended { 0 } else { old.word & ZERO };
                    meta.set_entry(&self.io, slot, Entry { word, bitmap })?;
                }
            }
            // Tables already placed are written out when the caches fill,
            // so memory stays bounded whatever the image's size.
            if meta.needs_writeback() {
                meta.flush(&self.io)?;
            }
            c = table_end;
        }
        let store = self.io.data_store();
        let file_mode = if mode == Prealloc::METADATA {
            Prealloc::OFF
        } else {
            mode
        };
        let target = if meta.data_file { end } else { host_end };
        if target > store.len().into_result()? {
            store.set_len(target, file_mode).into_result()?;
        }
        meta.flush(&self.io)
    }

    /// Stops allocating the file's blocks ahead of its end: metadata
    /// preallocation leaves its data clusters holes, which blocks allocated
    /// ahead would fill (qemu's file stays sparse). Called before anything
    /// is appended, as a window once allocated stays.
    fn stop_growing_densely(&self) {
        self.io.file.grow_densely(false);
    }

    /// Guest clusters in `[start, end)` without a host cluster.
    fn unallocated_clusters(&self, meta: &mut Meta, start: u64, end: u64) -> Result<u64> {
        let layout = self.layout;
        let cs = layout.cluster_size();
        let mut count = 0;
        let mut g = layout.cluster_start(start);
        while g < end {
            let (entry, _) = meta.entry(&self.io, g)?;
            if !entry.has_host(meta.data_file) && !entry.compressed() {
                count += 1;
            }
            g += cs;
        }
        Ok(count)
    }

    /// Changes the guest size.
    pub fn resize(&self, new_size: u64, mode: Prealloc, shrink: bool) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        if mode == Prealloc::METADATA {
            self.stop_growing_densely();
        }
        let layout = self.layout;
        let old_size = self.size();
        if !new_size.is_multiple_of(512) {
            return Err(Error::argument("The new size must be a multiple of 512"));
        }
        self.check_bitmaps_resizable()?;
        {
            // Version 3 snapshots record their own guest size, so only
            // version 2 images keep theirs (qcow2.txt "Snapshots"). The
            // header's version: amend may have just upgraded it.
            let meta = self.lock();
            if !meta.snapshots.is_empty() && meta.header.version < 3 {
                return Err(Error::unsupported(
                    "Can't resize a v2 image which has snapshots",
                ));
            }
        }
        if new_size < old_size {
            if !shrink {
                return Err(Error::argument(
                    "Use the --shrink option to perform a shrink operation.",
                ));
            }
            if mode != Prealloc::OFF {
                return Err(Error::unsupported(
                    "Preallocation can't be used for shrinking an image",
                ));
            }
            self.discard_tail(new_size, old_size)?;
        }
        let head = if new_size > old_size && mode != Prealloc::OFF {
            self.backing_head(old_size)?
        } else {
            None
        };
        let needed = layout.l1_entries_for(new_size);
        {
            let mut meta = self.lock();
            if needed > u64::from(meta.header.l1_size) {
                if needed * 8 > 32 << 20 {
                    return Err(Error::argument("The image size is too large"));
                }
                self.grow_l1(&mut meta, needed)?;
            }
            meta.header.size = new_size;
            meta.header_dirty = true;
            meta.flush(&self.io)?;
        }
        self.size.store(new_size, Ordering::Release);
        self.resize_bitmaps(new_size);
        if let Some(data) = &self.io.data {
            // The data file shrinks with the disk, as qemu truncates it: a
            // raw one is the guest disk, whose cut-off data would read
            // again after growing. Another one keeps what an entry still
            // names past the new end (qemu and qimg place each cluster at
            // its guest offset, which no entry then is).
            if new_size < old_size {
                let end = if self.data_file_raw {
                    new_size
                } else {
                    self.data_named_end(new_size)?.max(new_size)
                };
                if end < data.len().into_result()? {
                    data.set_len(end, Prealloc::OFF).into_result()?;
                }
            }
            if new_size > data.len().into_result()? {
                let file_mode = if mode == Prealloc::METADATA {
                    Prealloc::OFF
                } else {
                    mode
                };
                data.set_len(new_size, file_mode).into_result()?;
            }
        }
        if new_size > old_size && (mode != Prealloc::OFF || self.data_file_raw) {
            let mode = if mode == Prealloc::OFF {
                Prealloc::METADATA
            } else {
                mode
            };
            self.preallocate(old_size, new_size, mode, head.as_deref())?;
        }
        Ok(())
    }

    /// Before preallocating from `old_size`: the guest bytes of the cluster
    /// that holds the old end, from its start to `old_size`, when that
    /// cluster has no host cluster and they read from the backing file.
    /// Preallocation links a fresh cluster there and must copy them into it
    /// (qemu copies on write the same way), or they would read as zeros.
    /// An encrypted image gets them written here instead, through the
    /// encrypting write path.
    fn backing_head(&self, old_size: u64) -> Result<Option<Vec<u8>>> {
        let start = self.layout.cluster_start(old_size);
        if self.backing.is_none() || start == old_size {
            return Ok(None);
        }
        let allocated = {
            let mut meta = self.lock();
            let data_file = meta.data_file;
            let (entry, _) = meta.entry(&self.io, start)?;
            entry.has_host(data_file) || entry.compressed()
        };
        if allocated {
            return Ok(None);
        }
        let mut head = vec![0u8; (old_size - start) as usize];
        self.read(start, &mut head)?;
        if is_zero(&head) {
            return Ok(None);
        }
        if self.crypto.is_some() {
            self.write(start, &head)?;
            return Ok(None);
        }
        Ok(Some(head))
    }

    /// Frees every cluster wholly past `new_size` before a shrink.
    fn discard_tail(&self, new_size: u64, old_size: u64) -> Result<()> {
        let layout = self.layout;
        let cs = layout.cluster_size();
        let mut meta = self.lock();
        // Freed data clusters go back to the file system (qemu discards
        // them on shrink).
        meta.discarded = Some(Vec::new());
        // Table by table, as qemu discards: each L2 table the range touches
        // is made writable first (allocated, or copied if a snapshot shares
        // it), even when it maps nothing there.
        let span = layout.l2_span();
        let mut c = new_size.div_ceil(cs) * cs;
        while c < old_size {
            let table_end = ((c / span + 1) * span).min(old_size);
            meta.writable_l2(&self.io, c)?;
            while c < table_end {
                let (entry, slot) = meta.entry(&self.io, c)?;
                if let (Some(slot), false) = (slot, entry == Entry::default()) {
                    meta.set_entry(&self.io, slot, Entry::default())?;
                    meta.release_entry(entry);
                }
                c += cs;
            }
        }
        // L2 tables wholly past the end go too.
        let keep = layout.l1_entries_for(new_size);
        for i in keep..meta.l1.len() as u64 {
            let table = meta.l2_offset(i)?;
            if table != 0 {
                meta.set_l1_entry(i as usize, 0);
                meta.drop_reference(table, cs);
            }
        }
        meta.flush(&self.io)?;
        let freed = meta.discarded.take().unwrap_or_default();
        let l1_size = u64::from(meta.header.l1_size);
        if keep < l1_size {
            // The dropped part of the L1 table is zeroed on disk in whole
            // 512-byte sectors, as qemu's zero write does.
            let start = meta.header.l1_table_offset + keep * 8;
            let end = (meta.header.l1_table_offset + l1_size * 8).next_multiple_of(512);
            self.io.write(start, &vec![0u8; (end - start) as usize])?;
        }
        let mut offsets = Vec::new();
        for c in freed {
            if meta.refcount(&self.io, c)? == 0 {
                offsets.push(c << layout.cluster_bits);
            }
        }
        crate::meta::punch_clusters(&self.io, &offsets, cs)?;
        self.shrink_reftable(&mut meta)?;
        self.cut_free_tail(&mut meta)
    }

    /// Drops the refcount blocks that count nothing but themselves and
    /// rewrites the whole refcount table, as qemu does after a shrink.
    fn shrink_reftable(&self, meta: &mut Meta) -> Result<()> {
        let layout = self.layout;
        let cs = layout.cluster_size();
        let bits = layout.refblock_bits();
        let order = layout.refcount_order;
        let old = meta.reftable.clone();
        let mut table = old.clone();
        for (i, entry) in table.iter_mut().enumerate() {
            let block = *entry & !511;
            if block == 0 || layout.in_cluster(block) != 0 {
                continue;
            }
            let own = block >> layout.cluster_bits;
            let mut data = vec![0u8; cs as usize];
            self.io.read(block, &mut data)?;
            if let Some(cached) = meta.refblocks.get(block) {
                data.clone_from(cached);
            }
            if own >> bits == i as u64 {
                crate::meta::put_refcount(&mut data, order, (own & ((1 << bits) - 1)) as usize, 0);
            }
            if is_zero(&data) {
                *entry = 0;
            }
        }
        let mut bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        bytes.resize(
            (u64::from(meta.header.refcount_table_clusters) * cs) as usize,
            0,
        );
        self.io.write(meta.header.refcount_table_offset, &bytes)?;
        self.io.flush()?;
        let mut dropped = Vec::new();
        for (i, (&was, &now)) in old.iter().zip(&table).enumerate() {
            if was != 0 && now == 0 {
                let block = was & !511;
                meta.add_refcount(&self.io, block, cs, -1)?;
                meta.refblocks.remove(block);
                meta.reftable[i] = 0;
                dropped.push(block);
            }
        }
        while meta.reftable.last() == Some(&0) {
            meta.reftable.pop();
        }
        meta.flush(&self.io)?;
        crate::meta::punch_clusters(&self.io, &dropped, cs)
    }

    /// Cuts off the free clusters at the end of the file, as qemu does after
    /// freeing clusters in bulk (shrink, emptying an overlay).
    fn cut_free_tail(&self, meta: &mut Meta) -> Result<()> {
        let layout = self.layout;
        let file_len = self.io.file.len().into_result()?;
        let mut last = layout.clusters_for(file_len);
        while last > 1 && meta.refcount(&self.io, last - 1)? == 0 {
            last -= 1;
        }
        let end = last * layout.cluster_size();
        if end < file_len {
            self.io.file.set_len(end, Prealloc::OFF).into_result()?;
        }
        Ok(())
    }

    /// Moves the active L1 table to a new place with `entries` entries.
    pub(crate) fn grow_l1(&self, meta: &mut Meta, entries: u64) -> Result<()> {
        let layout = self.layout;
        meta.flush(&self.io)?;
        let bytes = entries * 8;
        let new = meta.alloc_clusters(&self.io, layout.clusters_for(bytes))?;
        let mut table: Vec<u8> = meta.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        table.resize(bytes as usize, 0);
        meta.flush(&self.io)?;
        self.io.write(new, &table)?;
        self.io.flush()?;
        let old = meta.header.l1_table_offset;
        let old_bytes = u64::from(meta.header.l1_size) * 8;
        meta.header.l1_table_offset = new;
        meta.header.l1_size = entries as u32;
        meta.write_header(&self.io)?;
        self.io.flush()?;
        if old_bytes > 0 {
            meta.add_refcount(&self.io, old, old_bytes, -1)?;
        }
        Ok(())
    }

    /// Records a new backing file name and format in the header.
    pub fn set_backing(&self, name: Option<&str>, format: Option<&str>) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        if name.is_some_and(|n| n.len() > MAX_BACKING_NAME) {
            return Err(Error::Errno(22, "Invalid argument".into()));
        }
        let mut meta = self.lock();
        meta.flush(&self.io)?;
        let saved = meta.header.clone();
        meta.header.backing_file = name.filter(|n| !n.is_empty()).map(String::from);
        meta.header.ext.backing_format = match &meta.header.backing_file {
            Some(_) => format.map(String::from),
            None => None,
        };
        if let Err(e) = meta.write_header(&self.io) {
            meta.header = saved;
            return Err(e);
        }
        self.io.flush()
    }

    /// Makes everything written durable, metadata in crash-safe order.
    pub fn flush(&self) -> Result<()> {
        let mut meta = self.lock();
        meta.flush(&self.io)?;
        self.io.flush()
    }

    /// Frees the host clusters reserved for writes that never came.
    fn release_reservations(&self, meta: &mut Meta) -> Result<()> {
        let cs = self.layout.cluster_size();
        let hosts: Vec<u64> = meta.reserved.drain().map(|(_, host)| host).collect();
        for host in hosts {
            meta.add_refcount(&self.io, host, cs, -1)?;
        }
        Ok(())
    }

    /// Stores the bitmaps, flushes and clears the dirty bit, as QEMU does
    /// on a clean close.
    pub fn close(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        let mut meta = self.lock();
        if meta.marked_corrupt() {
            // Nothing more is written to an image marked corrupt.
            return meta.flush(&self.io);
        }
        self.release_reservations(&mut meta)?;
        self.release_bitmaps(&mut meta)?;
        meta.flush(&self.io)?;
        // Like QEMU, a clean close clears the dirty bit whoever set it: the
        // refcounts were just written (an image opened for a repair that
        // failed keeps its refcount errors, which check still reports).
        if meta.header.dirty() {
            meta.header.incompatible_features &= !incompat::DIRTY;
            meta.write_header(&self.io)?;
        }
        self.io.flush()
    }
}

impl Drop for Qcow2Image {
    /// An image dropped without `close` (a command that failed half way)
    /// still stores its bitmaps, as QEMU stores them whenever it closes an
    /// image; errors cannot be reported any more and leave the bitmaps
    /// marked in use, which is what a crash leaves.
    fn drop(&mut self) {
        if self.writable {
            let mut meta = self.lock();
            let loaded = meta.bitmaps.iter().any(|b| b.bits.is_some());
            if loaded && !meta.marked_corrupt() && self.release_bitmaps(&mut meta).is_ok() {
                let _ = meta.flush(&self.io);
                let _ = self.io.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sub_mask;

    #[test]
    fn subcluster_masks() {
        assert_eq!(sub_mask(0, 65536, 2048), 0xffff_ffff);
        assert_eq!(sub_mask(0, 2048, 2048), 1);
        assert_eq!(sub_mask(2048, 6144, 2048), 0b110);
        assert_eq!(sub_mask(4000, 4100, 2048), 0b110);
    }
}
