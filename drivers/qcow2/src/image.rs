//! An open qcow2 image: opening (with qemu's checks of every table against
//! the file), reading and allocation status. Writing is in [`crate::write`].

use crate::bitmaps;
use crate::compress::Method;
use crate::crypt::{self, Crypto, LegacyAes, SECTOR};
use crate::error::{Error, Result};
use crate::header::{autoclear, Header, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS};
use crate::layout::{Layout, Sub};
use crate::meta::{hex, read_table, Io, Meta};
use crate::options::RuntimeOptions;
use crate::snapshot::{self, MAX_SNAPSHOTS};
use qimg_driver_api::abi_stable::std_types::{ROption, RSliceMut, RStr};
use qimg_driver_api::HostServicesBox;
use qimg_driver_api::{
    extent_flags as ef, open_flags, related_kind, BackingBox, ByteStoreBox, Extent,
};
use qimg_driver_util::AlignedBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

/// qemu's limit on the active L1 table (32 MiB).
const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu's limit on the refcount table (8 MiB).
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most extents one `block_status` call returns.
const STATUS_EXTENTS: usize = 256;
/// Most bytes read from the start of the file for the header cluster.
const MAX_HEADER_CLUSTER: u64 = 1 << 21;
/// Bytes read first, enough for the header fields; the rest of the
/// header cluster is read when the cluster size is known.
const HEADER_PROBE: u64 = 4096;

/// Reads what [`Header::parse`] may look at: the header cluster and a
/// page beyond it (a backing file name may start at the cluster's end),
/// at most [`MAX_HEADER_CLUSTER`] bytes and never past the file's end.
/// A first page gives the cluster size, so that a small-cluster image does
/// not read (and copy) megabytes on every open.
fn read_head(io: &Io, file_len: u64) -> Result<AlignedBuf> {
    let mut head = AlignedBuf::zeroed(file_len.min(HEADER_PROBE) as usize);
    io.read(0, &mut head)?;
    let bits = head
        .get(20..24)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .filter(|bits| (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(bits));
    let wanted = bits
        .map_or(0, |bits| (1u64 << bits) + HEADER_PROBE)
        .min(MAX_HEADER_CLUSTER)
        .min(file_len);
    if wanted > head.len() as u64 {
        head = AlignedBuf::zeroed(wanted as usize);
        io.read(0, &mut head)?;
    }
    Ok(head)
}

/// An open qcow2 image.
pub struct Qcow2Image {
    /// The qcow2 file and the external data file.
    pub(crate) io: Io,
    /// The backing image, if opened.
    pub(crate) backing: Option<BackingBox>,
    /// Metadata, under the image lock.
    pub(crate) meta: Mutex<Meta>,
    /// Signalled when a guest cluster leaves `Meta::in_flight`.
    pub(crate) settled: Condvar,
    /// Geometry.
    pub(crate) layout: Layout,
    /// Opened for writing.
    pub(crate) writable: bool,
    /// Guest size.
    pub(crate) size: AtomicU64,
    /// Compression method of compressed clusters.
    pub(crate) method: Method,
    /// The external data file is kept a valid raw image.
    pub(crate) data_file_raw: bool,
    /// Whether the file looks metadata-preallocated (decided on first use).
    pub(crate) prealloc_detected: OnceLock<bool>,
    /// Some loaded bitmap records writes (a fast check before locking).
    pub(crate) tracking: AtomicBool,
    /// The cipher of an encrypted image (not loaded by `info`).
    pub(crate) crypto: Option<Crypto>,
    /// The host's services (secrets, for amending key slots).
    pub(crate) host: HostServicesBox,
}

/// Options given when opening: encryption (`encrypt.key-secret`,
/// `encrypt.format`) and QEMU's runtime options.
#[derive(Default)]
pub struct CryptOptions {
    /// Id of the secret holding the key.
    pub key_secret: Option<String>,
    /// The encryption format the image must have.
    pub format: Option<String>,
    /// QEMU's other runtime options, when opened for a command (none when
    /// create reopens its new image).
    pub runtime: Option<RuntimeOptions>,
}

/// A run of guest bytes with one mapping.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// What the run is.
    pub sub: Sub,
    /// Its length.
    pub len: u64,
    /// Host offset of its first byte, for kinds with a host cluster.
    pub host: Option<u64>,
}

/// The run starting at `offset`, at most `max` bytes, within one L2 table;
/// data runs are host-contiguous, compressed runs one cluster at most.
pub fn run_at(meta: &mut Meta, io: &Io, offset: u64, max: u64) -> Result<Run> {
    let layout = meta.layout;
    let span = layout.l2_span();
    let end = offset + max.min(span - offset % span);
    let table = meta.l2_offset(layout.l1_index(offset))?;
    if table == 0 {
        return Ok(Run {
            sub: Sub::UnallocPlain,
            len: end - offset,
            host: None,
        });
    }
    let (first, _, slot) = meta.sub_at(io, offset)?;
    if first.zero() && !layout.v3 {
        if let Some(s) = slot {
            return Err(meta.corruption(format!(
                "Zero cluster entry found in pre-v3 image (L2 offset: {}, L2 index: {})",
                hex(s.table),
                hex(s.index as u64)
            )));
        }
    }
    let host = first.host().map(|h| h + layout.in_cluster(offset));
    let step = layout.subcluster_size();
    let mut p = (offset / step + 1) * step;
    while p < end {
        if matches!(first, Sub::Compressed(_)) && layout.in_cluster(p) == 0 {
            break;
        }
        let (sub, entry, _) = meta.sub_at(io, p)?;
        if !sub.same_kind(first) {
            break;
        }
        if let (Some(h0), Some(h)) = (host, sub.host()) {
            if h + layout.in_cluster(p) != h0 + (p - offset) {
                break;
            }
        }
        p += step;
        // The rest of this cluster's subclusters from the same entry, with
        // no table lookup each: same host cluster, already checked (one
        // that differs is looked up, and judged, by the loop above).
        while layout.extended && p < end && layout.in_cluster(p) != 0 {
            let index = (layout.in_cluster(p) / step) as u32;
            if !entry.sub(&layout, meta.data_file, index).same_kind(first) {
                break;
            }
            p += step;
        }
    }
    Ok(Run {
        sub: first,
        len: p.min(end) - offset,
        host,
    })
}

fn checked_table(offset: u64, bytes: u64, cluster_size: u64) -> bool {
    offset.is_multiple_of(cluster_size)
        && offset
            .checked_add(bytes)
            .is_some_and(|e| e <= i64::MAX as u64)
}

impl Qcow2Image {
    /// Opens the image in `store` (see [`open_flags`]).
    pub fn open(store: ByteStoreBox, host: HostServicesBox, flags: u32) -> Result<Qcow2Image> {
        let option = |key: &str| {
            host.open_option(RStr::from(key))
                .into_option()
                .map(String::from)
        };
        let crypt = CryptOptions {
            key_secret: option("encrypt.key-secret"),
            format: option("encrypt.format"),
            runtime: Some(RuntimeOptions::ask(option)),
        };
        Self::open_keyed(store, host, flags, &crypt)
    }

    /// Opens the image with the encryption options given at open.
    pub fn open_keyed(
        store: ByteStoreBox,
        host: HostServicesBox,
        flags: u32,
        crypt: &CryptOptions,
    ) -> Result<Qcow2Image> {
        let writable = flags & open_flags::WRITE != 0;
        let file_len = store.len().into_result()?;
        let io = Io {
            file: store,
            data: None,
        };
        let head = read_head(&io, file_len)?;
        let mut header = Header::parse(&head)?;
        let cs = header.cluster_size();
        if header.corrupt() && writable && flags & open_flags::CHECK == 0 {
            return Err(Error::invalid(
                "qcow2: Image is corrupt; cannot be opened read/write",
            ));
        }
        match header.crypt_method {
            // Read as unencrypted, a LUKS payload would pass for guest data.
            0 | 1 if header.ext.crypto.is_some() => {
                return Err(Error::invalid(
                    "CRYPTO header extension only expected with LUKS encryption method",
                ))
            }
            0 | 1 => {}
            2 if header.ext.crypto.is_none() => {
                return Err(Error::invalid("Missing CRYPTO header for crypt method 2"))
            }
            2 => {}
            m => return Err(Error::invalid(format!("Unsupported encryption method {m}"))),
        }
        // Refused before anything is read further (or written).
        let named = match header.crypt_method {
            1 => Some("aes"),
            2 => Some("luks"),
            _ => None,
        };
        match (named, crypt.format.as_deref()) {
            (Some(named), Some(given)) if named != given => {
                return Err(Error::invalid(format!(
                    "Header reported '{named}' encryption format but options specify '{given}'"
                )));
            }
            (None, Some(given)) => {
                return Err(Error::invalid(format!(
                    "No encryption in image header, but options specified format '{given}'"
                )));
            }
            _ => {}
        }
        if let Some(runtime) = &crypt.runtime {
            runtime.check(cs)?;
        }
        let layout = Layout {
            cluster_bits: header.cluster_bits,
            extended: header.extended_l2(),
            refcount_order: header.refcount_order,
            v3: header.version >= 3,
        };
        // Refcount table (qcow2.txt "Host cluster management").
        let reftable_bytes = u64::from(header.refcount_table_clusters) * cs;
        if reftable_bytes > MAX_REFTABLE_BYTES {
            return Err(Error::invalid("Reference count table too large"));
        }
        // check opens an image without one, as qemu's does: every
        // refcount then reads as 0, and `-r all` rebuilds them.
        let checking = flags & open_flags::CHECK != 0;
        if header.refcount_table_clusters == 0 && !checking {
            return Err(Error::invalid(
                "Image does not contain a reference count table",
            ));
        }
        if !checked_table(header.refcount_table_offset, reftable_bytes, cs) {
            return Err(Error::invalid("Reference count table offset invalid"));
        }
        // Snapshot table.
        if header.nb_snapshots > MAX_SNAPSHOTS && !checking {
            return Err(Error::invalid("Snapshot table too large"));
        }
        if !checked_table(
            header.snapshots_offset,
            u64::from(header.nb_snapshots) * 40,
            cs,
        ) {
            return Err(Error::invalid("Snapshot table offset invalid"));
        }
        // Active L1 table.
        let l1_bytes = u64::from(header.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Error::invalid("Active L1 table too large"));
        }
        let needed = layout.l1_entries_for(header.size);
        if needed > i32::MAX as u64 {
            return Err(Error::invalid("Image is too big"));
        }
        if u64::from(header.l1_size) < needed {
            return Err(Error::invalid("L1 table is too small"));
        }
        if !checked_table(header.l1_table_offset, l1_bytes, cs) {
            return Err(Error::invalid("Active L1 table offset invalid"));
        }
        if !header.has_data_file() && header.ext.data_file.is_some() {
            return Err(Error::invalid(
                "data-file can only be set for images that use an external data file",
            ));
        }
        let l1 = read_table(
            &io,
            header.l1_table_offset,
            u64::from(header.l1_size),
            file_len,
        )?;
        let reftable = read_table(
            &io,
            header.refcount_table_offset,
            reftable_bytes / 8,
            file_len,
        )?;
        let table = snapshot::read_table(
            &io,
            &snapshot::TableSpec {
                offset: header.snapshots_offset,
                count: header.nb_snapshots,
                disk_size: header.size,
                v3: header.version >= 3,
                lenient: checking,
            },
            file_len,
        )?;
        let bitmaps = match header.ext.bitmaps {
            Some(ext) if header.autoclear_features & autoclear::BITMAPS != 0 => {
                bitmaps::read_directory(&io, &ext, file_len, header.size, cs)?
            }
            _ => Vec::new(),
        };
        // A data file named at open replaces the header's name. A relative
        // one is the command line's, relative to the working directory
        // (the host resolves names against the image's directory).
        let image_in_cwd = !io.file.name().as_str().contains('/');
        let given = crypt.runtime.as_ref().and_then(|r| r.data_file.as_deref());
        let given = given.map(|name| match std::env::current_dir() {
            Ok(dir) if !name.starts_with('/') && !image_in_cwd => {
                dir.join(name).display().to_string()
            }
            _ => name.to_string(),
        });
        let data = if header.has_data_file() {
            match given.as_ref().or(header.ext.data_file.as_ref()) {
                Some(name) => match host
                    .open_related_as(
                        RStr::from(name.as_str()),
                        writable,
                        false,
                        related_kind::DATA,
                    )
                    .into_result()
                {
                    Ok(store) => Some(store),
                    // Describing the image does not need its data.
                    Err(_) if flags & open_flags::NO_IO != 0 => None,
                    Err(e) => return Err(e.into()),
                },
                None if flags & open_flags::NO_IO != 0 => None,
                None => return Err(Error::invalid("'data-file' is required for this image")),
            }
        } else {
            // qemu refuses the raw-data bit without a data file when the
            // image is opened for its data.
            if header.data_file_raw() && flags & open_flags::NO_IO == 0 {
                return Err(Error::invalid("data-file-raw requires a data file"));
            }
            None
        };
        let backing = match &header.backing_file {
            Some(name) if flags & open_flags::NO_BACKING == 0 => {
                let format = header.ext.backing_format.as_deref().map(RStr::from);
                Some(
                    host.open_backing(RStr::from(name.as_str()), ROption::from(format))
                        .into_result()?,
                )
            }
            _ => None,
        };
        let autoclear_before = header.autoclear_features;
        if writable {
            // Auto-clear bits this driver does not know must go before writing
            // (qcow2.txt, autoclear_features).
            header.autoclear_features &= autoclear::BITMAPS | autoclear::DATA_FILE_RAW;
        }
        let header_changed = header.autoclear_features != autoclear_before;
        let dirty_rw = header.dirty() && writable && !checking;
        // The LUKS header and key slots, as the CRYPTO extension places them.
        let luks_area = header.ext.crypto.map(|(offset, len)| crypt::LuksArea {
            io: &io,
            offset,
            len,
        });
        if let Some(area) = &luks_area {
            if area.offset % cs != 0 {
                return Err(Error::invalid(format!(
                    "Encryption header offset '{}' is not a multiple of cluster size '{cs}'",
                    area.offset
                )));
            }
        }
        // Encrypted data needs the key; describing the image (`info`) does not.
        let crypto = match (header.crypt_method, &crypt.key_secret) {
            (0, _) => None,
            _ if flags & open_flags::NO_IO != 0 => {
                if let Some(area) = &luks_area {
                    crypt::read_luks_header(area)?;
                }
                None
            }
            (_, None) => {
                return Err(Error::invalid(
                    "Parameter 'encrypt.key-secret' is required for cipher",
                ))
            }
            (1, Some(id)) => {
                let password = host.secret(RStr::from(id.as_str())).into_result()?;
                Some(Crypto::Aes(Box::new(LegacyAes::new(password.as_bytes()))))
            }
            (_, Some(id)) => {
                let area = luks_area.as_ref().ok_or(Error::Corrupt)?;
                let password = zeroize::Zeroizing::new(
                    host.secret(RStr::from(id.as_str()))
                        .into_result()?
                        .into_string(),
                );
                let luks = crypt::unlock_luks(area, password.as_bytes(), writable)?;
                Some(Crypto::Luks(Box::new(luks)))
            }
        };
        let image = Qcow2Image {
            io: Io { data, ..io },
            backing,
            settled: Condvar::new(),
            layout,
            writable,
            // Whole sectors, as qemu counts them (a hand-made size of
            // 8388607 bytes is 8388096).
            size: AtomicU64::new(header.size / 512 * 512),
            method: Method::from_type(header.compression_type),
            data_file_raw: header.data_file_raw(),
            prealloc_detected: OnceLock::new(),
            tracking: AtomicBool::new(false),
            crypto,
            host,
            meta: Mutex::new(Meta::new(header, layout, l1, reftable)),
        };
        {
            let mut meta = image.lock();
            meta.writable = writable;
            meta.snapshots = table.snapshots;
            meta.snapshots_size = table.size;
            meta.snapshot_issues = table.issues;
            meta.bitmaps = bitmaps;
            meta.header_dirty |= header_changed;
            if meta.header_dirty {
                meta.flush(&image.io)?;
            }
        }
        if dirty_rw {
            // Refcounts may be stale (lazy refcounts, unclean shutdown):
            // repair them before anything is allocated, as `check -r all`
            // does, printing what it finds as qemu does.
            image.repair_dirty()?;
        }
        if writable {
            image.load_bitmaps()?;
            // Clusters are written whole, so the file grows by appends
            // without holes; a partly written cluster with subclusters
            // keeps its unwritten ones as holes.
            if !image.layout.extended {
                image.io.file.grow_densely(true);
            }
        }
        Ok(image)
    }

    /// The metadata, locked.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Guest size.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Reads guest data; past the end reads zeros.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let size = self.size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            if pos >= size {
                buf[done..].fill(0);
                break;
            }
            let want = ((buf.len() - done) as u64).min(size - pos);
            let run = run_at(&mut self.lock(), &self.io, pos, want)?;
            let chunk = &mut buf[done..done + run.len as usize];
            self.read_run(pos, &run, chunk)?;
            done += run.len as usize;
        }
        Ok(())
    }

    /// Reads one mapped run into `out`.
    pub(crate) fn read_run(&self, pos: u64, run: &Run, out: &mut [u8]) -> Result<()> {
        match run.sub {
            Sub::Normal(_) => {
                let host = run.host.unwrap_or(0);
                match &self.crypto {
                    None => qimg_driver_util::read_or_zero(self.io.data_store(), host, out)?,
                    Some(c) => self.read_encrypted(c, pos, host, out)?,
                }
            }
            Sub::Compressed(entry) => {
                let cluster = self.decompress(entry)?;
                let at = self.layout.in_cluster(pos) as usize;
                out.copy_from_slice(&cluster[at..at + out.len()]);
            }
            Sub::ZeroPlain | Sub::ZeroAlloc(_) => out.fill(0),
            Sub::UnallocPlain | Sub::UnallocAlloc(_) => self.read_backing(pos, out)?,
            Sub::Invalid => return Err(Error::Corrupt),
        }
        Ok(())
    }

    /// Reads and decrypts the data at guest `pos`, host `host`: whole
    /// sectors, as they were encrypted.
    fn read_encrypted(&self, c: &Crypto, pos: u64, host: u64, out: &mut [u8]) -> Result<()> {
        let store = self.io.data_store();
        let start = pos / SECTOR * SECTOR;
        let end = (pos + out.len() as u64).div_ceil(SECTOR) * SECTOR;
        if start == pos && end == pos + out.len() as u64 {
            qimg_driver_util::read_or_zero(store, host, out)?;
            return c.decrypt(pos, host, out);
        }
        let mut sectors = zeroize::Zeroizing::new(vec![0u8; (end - start) as usize]);
        let host_start = host - (pos - start);
        qimg_driver_util::read_or_zero(store, host_start, &mut sectors)?;
        c.decrypt(start, host_start, &mut sectors)?;
        let at = (pos - start) as usize;
        out.copy_from_slice(&sectors[at..at + out.len()]);
        Ok(())
    }

    /// Reads what the backing image holds at `pos` (zeros past its end or
    /// without one).
    pub(crate) fn read_backing(&self, pos: u64, out: &mut [u8]) -> Result<()> {
        let Some(backing) = &self.backing else {
            out.fill(0);
            return Ok(());
        };
        let bsize = backing.virtual_size();
        let inside = bsize.saturating_sub(pos).min(out.len() as u64) as usize;
        if inside > 0 {
            backing
                .read_at(pos, RSliceMut::from_mut_slice(&mut out[..inside]))
                .into_result()?;
        }
        out[inside..].fill(0);
        Ok(())
    }

    /// The full cluster a compressed descriptor holds.
    pub(crate) fn decompress(&self, entry: u64) -> Result<Vec<u8>> {
        let (offset, len) = self.layout.compressed_range(entry);
        let mut input = vec![0u8; len as usize];
        self.io.read(offset, &mut input)?;
        let mut out = vec![0u8; self.layout.cluster_size() as usize];
        self.method.decompress(&input, &mut out)?;
        Ok(out)
    }

    /// True if the qcow2 file holds far fewer bytes than its refcounts
    /// claim: metadata preallocation, whose data clusters may be holes.
    fn metadata_preallocated(&self) -> Result<bool> {
        if let Some(v) = self.prealloc_detected.get() {
            return Ok(*v);
        }
        let file_len = self.io.file.len().into_result()?;
        // A store that cannot tell its allocation (NBD, HTTP) holds no
        // preallocated metadata as far as qemu is concerned either.
        let Ok(real) = self.io.file.allocated_size().into_result() else {
            return Ok(*self.prealloc_detected.get_or_init(|| false));
        };
        let real = real >> self.layout.cluster_bits;
        let threshold = (real * 10 / 9).max(real + 2);
        let clusters = self.layout.clusters_for(file_len);
        let count = || -> Result<u64> {
            let mut used = 0u64;
            let mut meta = self.lock();
            for c in 0..clusters {
                if meta.refcount(&self.io, c)? > 0 {
                    used += 1;
                    if used >= threshold {
                        break;
                    }
                }
            }
            Ok(used)
        };
        // As qemu decides: as many clusters in use as the threshold is
        // enough; refcounts that cannot be read (a damaged table, reported
        // as it is met) decide nothing, and reading goes on.
        let v = count().is_ok_and(|used| used >= threshold);
        Ok(*self.prealloc_detected.get_or_init(|| v))
    }

    /// Allocation status from `offset`: consecutive extents covering up to
    /// `len` bytes (at most [`STATUS_EXTENTS`] of them, so one call across
    /// the ABI answers many runs). Extents end where qemu's answers end, at
    /// each L2 table's span at most: `compare -p` moves by them (map joins
    /// them again). An extent that cannot be read ends the answer before
    /// it, so that the error comes with the next call, at the offset where
    /// qemu reports it.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset + len.min(self.size().saturating_sub(offset));
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end && out.len() < STATUS_EXTENTS {
            let ext = match self.extent_at(pos, end - pos) {
                Ok(ext) => ext,
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            };
            pos += ext.length;
            out.push(ext);
        }
        Ok(out)
    }

    /// The extent at `offset` (one mapped run, at most `len` bytes).
    fn extent_at(&self, offset: u64, len: u64) -> Result<Extent> {
        let run = run_at(&mut self.lock(), &self.io, offset, len)?;
        let store = u32::from(self.io.data.is_some());
        let mut ext = Extent {
            offset,
            length: run.len,
            flags: 0,
            store,
            host_offset: run.host.unwrap_or(0),
        };
        ext.flags = match run.sub {
            // Encrypted data is not the guest's: its host offset is not
            // reported (qemu does the same).
            Sub::Normal(_) if self.crypto.is_some() => ef::DATA | ef::ALLOCATED,
            Sub::Normal(_) => ef::DATA | ef::ALLOCATED | ef::OFFSET_VALID,
            Sub::Compressed(_) => ef::DATA | ef::ALLOCATED | ef::COMPRESSED,
            Sub::ZeroAlloc(_) => ef::ZERO | ef::ALLOCATED | ef::OFFSET_VALID,
            Sub::ZeroPlain => ef::ZERO | ef::ALLOCATED,
            Sub::UnallocAlloc(_) => ef::OFFSET_VALID,
            Sub::UnallocPlain => 0,
            Sub::Invalid => return Err(Error::Corrupt),
        };
        if self.data_file_raw && matches!(run.sub, Sub::UnallocPlain | Sub::ZeroPlain) {
            // A raw data file maps every guest byte to the same offset.
            ext.flags |= ef::OFFSET_VALID;
            ext.host_offset = offset;
        }
        if ext.flags & ef::OFFSET_VALID != 0
            && matches!(run.sub, Sub::Normal(_))
            && self.metadata_preallocated()?
        {
            // What the store holds there refines the answer (qemu asks the
            // file below a metadata-preallocated image the same way).
            let store = self.io.data_store();
            let file_run = store.run_at(ext.host_offset, ext.length).into_result()?;
            if !file_run.data {
                ext.flags |= ef::ZERO;
            }
            ext.length = file_run.length.clamp(1, ext.length);
        }
        Ok(ext)
    }

    /// Name of store `index`: 0 the qcow2 file, 1 the external data file.
    pub fn store_name(&self, index: u32) -> String {
        match (&self.io.data, index) {
            (Some(d), 1) => d.name().into(),
            _ => self.io.file.name().into(),
        }
    }
}
