//! An open QED image: opening (with QEMU's checks of every header field
//! against the file), reading, allocating writes with copy-on-write from
//! the backing file, zero clusters, allocation status and the need-check
//! flag (spec, "Consistency checking"): set before the first allocating
//! write, cleared once the tables are written back.

use crate::check;
use crate::error::{Error, Result};
use crate::header::{features, Header, HEADER_BYTES, MAX_BACKING_NAME};
use crate::tables::{Cluster, Tables};
use qimg_driver_api::abi_stable::std_types::{ROption, RStr};
use qimg_driver_api::schema::{CheckReport, Repair};
use qimg_driver_api::{
    extent_flags as ef, open_flags, zero_flags, BackingBox, ByteStoreBox, Extent, HostServicesBox,
    StoreExt,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Most extents one `block_status` call returns.
const STATUS_EXTENTS: usize = 256;

/// An open QED image.
pub struct QedImage {
    /// The image file.
    pub(crate) store: ByteStoreBox,
    /// The backing chain, if the image has one and it was opened.
    backing: Option<BackingBox>,
    /// Opened for writing.
    writable: bool,
    /// Guest size.
    size: AtomicU64,
    /// Bytes per cluster.
    cluster: u64,
    /// Metadata, under the image lock.
    pub(crate) tables: Mutex<Tables>,
    /// Signalled when guest clusters leave `Tables::busy`.
    settled: Condvar,
    /// Backing file name and format as the header records them.
    backing_names: Mutex<(Option<String>, Option<String>)>,
}

/// A run of guest clusters mapped alike (host-contiguous for data).
struct Run {
    what: Cluster,
    len: u64,
}

impl QedImage {
    /// Opens the image in `store` (see [`open_flags`]).
    pub fn open(store: ByteStoreBox, host: &HostServicesBox, flags: u32) -> Result<QedImage> {
        let writable = flags & open_flags::WRITE != 0;
        let file_len = store.len().into_result()?;
        let mut head = [0u8; HEADER_BYTES];
        // A file shorter than the header reads as if padded with zeros.
        store.read_or_zero_at(0, &mut head)?;
        let mut header = Header::parse(&head, file_len)?;
        let mut name = None;
        if header.has_backing() {
            if header.backing_filename_size > MAX_BACKING_NAME {
                return Err(Error::Invalid("Failed to read backing filename".into()));
            }
            let mut raw = vec![0u8; header.backing_filename_size as usize];
            let at = header.backing_filename_offset.into();
            if store.read_full_at(at, &mut raw)? < raw.len() {
                return Err(Error::Invalid("Failed to read backing filename".into()));
            }
            let text = String::from_utf8_lossy(&raw);
            let text = text.split('\0').next().unwrap_or_default();
            name = (!text.is_empty()).then(|| text.to_string());
        }
        let format = (name.is_some() && header.features & features::BACKING_FORMAT_NO_PROBE != 0)
            .then(|| "raw".to_string());
        let backing = match &name {
            Some(n) if flags & open_flags::NO_BACKING == 0 => Some(
                host.open_backing(
                    RStr::from(n.as_str()),
                    ROption::from(format.as_deref().map(RStr::from)),
                )
                .into_result()?,
            ),
            _ => None,
        };
        // Unknown auto-clear bits go before anything is written (spec,
        // "autoclear_features").
        if writable && header.autoclear_features != 0 {
            header.autoclear_features = 0;
            store.write_all_at(0, &header.to_bytes())?;
            store.flush().into_result()?;
        }
        let size = header.image_size;
        let cluster = header.cluster_bytes();
        let tables = Tables::load(&store, header, file_len)?;
        let image = QedImage {
            store,
            backing,
            writable,
            size: AtomicU64::new(size),
            cluster,
            tables: Mutex::new(tables),
            settled: Condvar::new(),
            backing_names: Mutex::new((name, format)),
        };
        // An image not closed cleanly is checked and repaired before use
        // when opened for writing (spec, "Consistency checking"); `check`
        // itself does its own.
        if writable && flags & open_flags::CHECK == 0 && image.lock().header.need_check() {
            image.check(Repair::All)?;
            image.clear_need_check()?;
        }
        Ok(image)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Guest size.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// The recorded backing file name and format.
    pub fn backing_names(&self) -> (Option<String>, Option<String>) {
        self.backing_names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The run of clusters mapped like guest `offset`'s, at most `max` bytes.
    fn run_at(&self, t: &mut Tables, offset: u64, max: u64) -> Result<Run> {
        let cs = self.cluster;
        let first = t.lookup(&self.store, offset / cs)?;
        let len = (cs - offset % cs).min(max);
        if len == max {
            return Ok(Run { what: first, len });
        }
        // The clusters after the first, mapped alike (data: contiguous).
        let more = t.count_while(
            &self.store,
            offset / cs + 1,
            (max - len).div_ceil(cs),
            |i, next| match (first, next) {
                (Cluster::Data(a), Cluster::Data(b)) => b == a + (i + 1) * cs,
                (a, b) => a == b,
            },
        )?;
        Ok(Run {
            what: first,
            len: (len + more * cs).min(max),
        })
    }

    fn read_backing(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match &self.backing {
            Some(b) => Ok(b.read_at(offset, buf.into()).into_result()?),
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Reads guest bytes; past the end reads as zeros.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let inside = (self.size().saturating_sub(offset) as usize).min(buf.len());
        buf[inside..].fill(0);
        let mut done = 0usize;
        while done < inside {
            let at = offset + done as u64;
            let run = {
                let mut t = self.lock();
                self.run_at(&mut t, at, (inside - done) as u64)?
            };
            let piece = &mut buf[done..done + run.len as usize];
            match run.what {
                Cluster::Unallocated => self.read_backing(at, piece)?,
                Cluster::Zero => piece.fill(0),
                Cluster::Data(host) => self
                    .store
                    .read_or_zero_at(host + at % self.cluster, piece)?,
            }
            done += run.len as usize;
        }
        Ok(())
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        qimg_driver_util::check_range(offset, len, self.size())?;
        Ok(())
    }

    /// Sets the need-check flag on disk before the first allocating write.
    fn mark_need_check(&self, t: &mut Tables) -> Result<()> {
        if !t.header.need_check() {
            t.header.features |= features::NEED_CHECK;
            t.write_header(&self.store)?;
        }
        Ok(())
    }

    /// The bytes of the cluster at guest `cluster_start` before a write
    /// allocates it: from the backing file if unallocated, else zeros.
    fn cluster_base(&self, what: Cluster, cluster_start: u64, buf: &mut [u8]) -> Result<()> {
        match what {
            Cluster::Unallocated => self.read_backing(cluster_start, buf),
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Writes `buf` at guest `offset`; with `zero` the buffer is all zeros
    /// and whole clusters not holding data become zero clusters instead.
    fn write_range(&self, offset: u64, buf: &[u8], zero: bool) -> Result<()> {
        let cs = self.cluster;
        let mut done = 0u64;
        let len = buf.len() as u64;
        while done < len {
            let at = offset + done;
            let mut t = self.lock();
            let run = self.run_at(&mut t, at, len - done)?;
            let clusters = at / cs..(at + run.len).div_ceil(cs);
            if !matches!(run.what, Cluster::Data(_)) && t.busy.range(clusters).next().is_some() {
                // Another writer is placing some of these clusters: look
                // again once their entries are set.
                drop(self.settled.wait(t).unwrap_or_else(|e| e.into_inner()));
                continue;
            }
            let piece = &buf[done as usize..(done + run.len) as usize];
            match run.what {
                Cluster::Data(host) => {
                    drop(t);
                    self.store.write_all_at(host + at % cs, piece)?;
                }
                what if zero && at.is_multiple_of(cs) && run.len >= cs => {
                    let whole = run.len / cs * cs;
                    if what != Cluster::Zero {
                        self.mark_need_check(&mut t)?;
                        for c in 0..whole / cs {
                            t.set(&self.store, at / cs + c, Cluster::Zero)?;
                        }
                    }
                    done += whole;
                    continue;
                }
                what => {
                    self.mark_need_check(&mut t)?;
                    let first = at / cs;
                    let wanted = (at + run.len).div_ceil(cs) - first;
                    let (host, clusters) = take_place(&mut t, first, wanted, cs);
                    let end = ((first + clusters) * cs).min(at + run.len);
                    // The data is written outside the lock (the other
                    // writers go on); the entries are set after it.
                    t.busy.extend(first..first + clusters);
                    drop(t);
                    let piece = &buf[done as usize..(end - offset) as usize];
                    let written = self.write_placed(what, at, host, piece);
                    let mut t = self.lock();
                    for c in first..first + clusters {
                        t.busy.remove(&c);
                    }
                    let set = written.and_then(|()| {
                        (0..clusters).try_for_each(|c| {
                            t.set(&self.store, first + c, Cluster::Data(host + c * cs))
                        })
                    });
                    drop(t);
                    self.settled.notify_all();
                    set?;
                    done = end - offset;
                    continue;
                }
            }
            done += run.len;
        }
        Ok(())
    }

    /// Writes `piece`, the guest bytes from `at`, into the clusters just
    /// placed for them at `host`; a cluster written in part gets the rest
    /// from what it read as before (`what`: the backing file, or zeros).
    fn write_placed(&self, what: Cluster, at: u64, host: u64, piece: &[u8]) -> Result<()> {
        let cs = self.cluster;
        let first = at / cs;
        let head = at % cs;
        let end = at + piece.len() as u64;
        let clusters = end.div_ceil(cs) - first;
        let mut pos = 0usize;
        let mut dst = host;
        if head != 0 || (clusters == 1 && !end.is_multiple_of(cs)) {
            // The first cluster, partly written.
            let mut c = vec![0u8; cs as usize];
            self.cluster_base(what, first * cs, &mut c)?;
            let n = piece.len().min((cs - head) as usize);
            c[head as usize..head as usize + n].copy_from_slice(&piece[..n]);
            self.store.write_all_at(dst, &c)?;
            pos = n;
            dst += cs;
        }
        let middle = (piece.len() - pos) / cs as usize * cs as usize;
        if middle > 0 {
            self.store.write_all_at(dst, &piece[pos..pos + middle])?;
            pos += middle;
            dst += middle as u64;
        }
        if pos < piece.len() {
            // The last cluster, partly written.
            let mut c = vec![0u8; cs as usize];
            self.cluster_base(what, (first + clusters - 1) * cs, &mut c)?;
            c[..piece.len() - pos].copy_from_slice(&piece[pos..]);
            self.store.write_all_at(dst, &c)?;
        }
        Ok(())
    }

    /// Gives the guest clusters of `[offset, offset + len)` that hold no
    /// data their places at the end of the file now, in guest order, and
    /// then the L2 tables they lack, as qemu-img allocates a request that
    /// reaches them (the copy engine calls this in guest order). Writes use
    /// those places; nothing on disk changes until they do.
    pub fn reserve(&self, offset: u64, len: u64) -> Result<bool> {
        if !self.writable {
            return Ok(false);
        }
        if len == 0 {
            return Ok(true);
        }
        self.check_write(offset, len)?;
        let cs = self.cluster;
        let mut t = self.lock();
        let (first, last) = (offset / cs, (offset + len - 1) / cs);
        for c in first..=last {
            let placed = t.reserved.contains_key(&c)
                || t.busy.contains(&c)
                || matches!(t.lookup(&self.store, c)?, Cluster::Data(_));
            if !placed {
                let host = t.allocate(1);
                t.reserved.insert(c, host);
            }
        }
        let entries = t.header.table_entries();
        for table in first / entries..=last / entries {
            t.l2_for(table * entries)?;
        }
        Ok(true)
    }

    /// Writes guest bytes.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check_write(offset, buf.len() as u64)?;
        self.write_range(offset, buf, false)
    }

    /// Makes a range read as zeros: whole clusters not holding data become
    /// zero clusters; the rest is written with zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> Result<()> {
        self.check_write(offset, len)?;
        let cs = self.cluster;
        if flags & zero_flags::NO_FALLBACK != 0
            && (!offset.is_multiple_of(cs) || !len.is_multiple_of(cs))
        {
            return Err(Error::Unsupported("Operation not supported".into()));
        }
        // In pieces, so a large range needs no large buffer.
        let step = (cs * 64).max(1 << 20);
        let zeros = vec![0u8; step.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(step);
            self.write_range(offset + done, &zeros[..n as usize], true)?;
            done += n;
        }
        Ok(())
    }

    /// Allocation status from `offset` (see `Image::block_status`).
    pub fn status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let len = len.min(self.size().saturating_sub(offset));
        let mut out = Vec::new();
        let mut t = self.lock();
        let mut at = offset;
        while at < offset + len && out.len() < STATUS_EXTENTS {
            // An invalid entry fails the call that starts at it, as in
            // qemu: what comes before it is answered first.
            let run = match self.run_at(&mut t, at, offset + len - at) {
                Ok(run) => run,
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            };
            let (flags, host_offset) = match run.what {
                Cluster::Unallocated => (0, 0),
                Cluster::Zero => (ef::ZERO | ef::ALLOCATED, 0),
                Cluster::Data(h) => (
                    ef::DATA | ef::ALLOCATED | ef::OFFSET_VALID,
                    h + at % self.cluster,
                ),
            };
            out.push(Extent {
                offset: at,
                length: run.len,
                flags,
                store: 0,
                host_offset,
            });
            at += run.len;
        }
        Ok(out)
    }

    /// Writes the tables back (crash-safe order) and clears the need-check
    /// flag once they are durable.
    pub fn flush(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        let mut t = self.lock();
        t.write_back(&self.store)?;
        self.store.flush().into_result()?;
        if t.header.need_check() {
            t.header.features &= !features::NEED_CHECK;
            t.write_header(&self.store)?;
            self.store.flush().into_result()?;
        }
        Ok(())
    }

    fn clear_need_check(&self) -> Result<()> {
        self.flush()
    }

    /// Runs the consistency check (see [`check::check`]).
    pub fn check(&self, repair: Repair) -> Result<CheckReport> {
        if repair != Repair::None && !self.writable {
            return Err(Error::ReadOnly);
        }
        let mut t = self.lock();
        t.write_back(&self.store)?;
        check::check(&self.store, &mut t, repair != Repair::None)
    }

    /// Records a new backing file name and format in the header.
    pub fn set_backing(&self, name: Option<&str>, format: Option<&str>) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let mut t = self.lock();
        t.write_back(&self.store)?;
        let mut h = t.header.clone();
        h.features &= !(features::BACKING_FILE | features::BACKING_FORMAT_NO_PROBE);
        let name = name.filter(|n| !n.is_empty());
        let bytes = match name {
            Some(n) => {
                if HEADER_BYTES as u64 + n.len() as u64 > h.header_bytes()
                    || n.len() as u64 > MAX_BACKING_NAME.into()
                {
                    return Err(Error::Host(qimg_driver_api::DriverError::from_errno(
                        28,
                        "No space left on device",
                    )));
                }
                h.features |= features::BACKING_FILE;
                if format == Some("raw") {
                    h.features |= features::BACKING_FORMAT_NO_PROBE;
                }
                h.backing_filename_offset = HEADER_BYTES as u32;
                h.backing_filename_size = n.len() as u32;
                let mut bytes = h.to_bytes().to_vec();
                bytes.extend_from_slice(n.as_bytes());
                bytes
            }
            None => {
                h.backing_filename_offset = 0;
                h.backing_filename_size = 0;
                h.to_bytes().to_vec()
            }
        };
        self.store.write_all_at(0, &bytes)?;
        self.store.flush().into_result()?;
        t.header = h;
        let recorded_format = (name.is_some() && format == Some("raw")).then(|| "raw".to_string());
        *self.backing_names.lock().unwrap_or_else(|e| e.into_inner()) =
            (name.map(String::from), recorded_format);
        Ok(())
    }

    /// Grows the guest size (QED cannot shrink).
    pub fn resize(&self, new_size: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let mut t = self.lock();
        if new_size == 0 || !new_size.is_multiple_of(512) || new_size > t.header.max_image_size() {
            return Err(Error::Argument("Invalid image size specified".into()));
        }
        if new_size < t.header.image_size {
            return Err(Error::Unsupported(
                "Shrinking images is currently not supported".into(),
            ));
        }
        t.write_back(&self.store)?;
        t.header.image_size = new_size;
        t.write_header(&self.store)?;
        self.store.flush().into_result()?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }
}

/// The place for `wanted` guest clusters from `first` that hold no data:
/// the run of them reserved at consecutive places, or else the run of them
/// not reserved, allocated at the end of the file. Returns the first place
/// and how many clusters it covers (at least one).
fn take_place(t: &mut Tables, first: u64, wanted: u64, cs: u64) -> (u64, u64) {
    if let Some(host) = t.reserved.remove(&first) {
        let mut n = 1;
        while n < wanted && t.reserved.get(&(first + n)) == Some(&(host + n * cs)) {
            t.reserved.remove(&(first + n));
            n += 1;
        }
        return (host, n);
    }
    let n = (1..wanted)
        .find(|&i| t.reserved.contains_key(&(first + i)))
        .unwrap_or(wanted);
    (t.allocate(n), n)
}
