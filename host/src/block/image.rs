//! Opening and creating images through their drivers.

use super::lineage::Lineage;
use super::lock::{ImageLock, LockSpec};
use super::magic;
use super::services::{on_deep_stack, Services, SharedStore};
use super::spec::{resolve, Protocol};
use crate::commands::registry;
use crate::plugins::{loader::FindError, Driver};
use crate::store::{file::OpenMode, remote, veil, CacheMode, LocalFile, NullStore, Store};
use qimg_driver_api::abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr};
use qimg_driver_api::guard::Poison;
use qimg_driver_api::schema::{CreateRequest, ImageInfo};
use qimg_driver_api::ByteStore;
use qimg_driver_api::{
    caps, extent_flags, open_flags, zero_flags, DriverError, ErrorKind, Extent, ImageArc, Prealloc,
};
use std::mem::ManuallyDrop;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes read from the start of a file to probe its format.
const PROBE_BYTES: usize = 2048;
/// The part of a probed raw image that writes may not turn into another
/// format's header (QEMU checks the same 512 bytes).
const PROBE_SECTOR: u64 = 512;

/// How to open an image.
#[derive(Clone, Debug)]
pub struct OpenRequest<'a> {
    /// The name as given (a path, an option string with `image_opts`, or `json:`).
    pub name: &'a str,
    /// `-f`, if given.
    pub format: Option<&'a str>,
    /// `--image-opts`.
    pub image_opts: bool,
    /// Open read-write.
    pub write: bool,
    /// Cache mode.
    pub cache: CacheMode,
    /// Locks to take (`None`: none, as `info` takes none).
    pub lock: Option<LockSpec>,
    /// Do not open the backing chain.
    pub no_backing: bool,
    /// Only describe the image (`info`): the driver may skip data stores and keys.
    pub no_io: bool,
    /// Open the backing chain sharing everything, as `-U` would (commit
    /// writes into a backing image through a handle of its own, which takes
    /// the locks that guard it).
    pub shared_backing: bool,
    /// The images above this one in its chain, so that a backing file that
    /// loops back or a chain too deep is refused.
    pub lineage: Lineage,
    /// Open for `check`: images marked corrupt or dirty open as they are
    /// (`open_flags::CHECK`), so that they can be checked and repaired.
    pub check: bool,
    /// Format options besides those in the name (`convert` passes the
    /// target's `-o ...key-secret` options, as qemu-img does).
    pub options: Vec<(String, String)>,
    /// The image is written once, front to back, and flushed at the end
    /// (dd's output): see [`LocalFile::stream_writes`].
    pub stream: bool,
}

impl<'a> OpenRequest<'a> {
    /// A read-only open of `name` with the default cache mode and shared locks.
    pub fn read(name: &'a str, format: Option<&'a str>, image_opts: bool) -> Self {
        OpenRequest {
            name,
            format,
            image_opts,
            write: false,
            cache: CacheMode::Writeback,
            lock: Some(LockSpec::READ_SHARED),
            no_backing: false,
            no_io: false,
            shared_backing: false,
            lineage: Lineage::default(),
            check: false,
            options: Vec::new(),
            stream: false,
        }
    }
}

/// An open image with its driver, its file and its backing chain.
///
/// Every call into the driver goes through here: once the driver panics (or
/// its guard reports an earlier panic), the image is poisoned and every later
/// call fails with that error, whatever the driver's ABI version.
pub struct BlockImage {
    /// The driver's image handle (dropped by hand: see the `Drop` impl).
    image: ManuallyDrop<ImageArc>,
    /// The driver.
    pub driver: Arc<Driver>,
    /// The name to print (`image:` line, messages).
    pub filename: String,
    /// The store holding the image.
    pub store: Arc<Store>,
    /// The backing image, if the chain was opened and there is one.
    pub backing: Option<Arc<BlockImage>>,
    /// The format options it was opened with (`encrypt.key-secret=...`),
    /// for opening it again.
    pub options: Vec<(String, String)>,
    /// The guest size the driver last reported.
    last_size: AtomicU64,
    /// The first driver panic, once there was one.
    poison: Poison,
    /// Opened as raw because probing found no other format: writes may not
    /// turn its first sector into another format's header.
    probed_raw: bool,
    /// The protocol's name when its node is the image itself (`driver=file`,
    /// `driver=null-co`), read through the raw driver.
    node_format: Option<String>,
    /// `close` was called (it is called once, by the command or on drop).
    closed: AtomicBool,
}

impl Drop for BlockImage {
    /// Closes the driver's image, then the backing chain below it, on fresh
    /// stack if a chain of thousands of layers needs it: each layer closes
    /// the next one down from inside its own close. An image a command did
    /// not close (it failed half-way) is closed cleanly first, as QEMU
    /// closes every image it opened: a format's in-use or dirty flag set
    /// at a writable open must not stay set because an option was refused.
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) {
            let _ = self.close();
        }
        let backing = self.backing.take();
        on_deep_stack(|| {
            // SAFETY: `image` is dropped only here, and never used after.
            unsafe { ManuallyDrop::drop(&mut self.image) };
            drop(backing);
        });
    }
}

impl BlockImage {
    /// Runs one call into the driver unless the image is poisoned; a panic
    /// poisons it.
    fn call<T>(
        &self,
        f: impl FnOnce(&ImageArc) -> RResult<T, DriverError>,
    ) -> Result<T, DriverError> {
        if let Some(first) = self.poison.first() {
            return Err(first);
        }
        let result = f(&self.image).into_result();
        self.poison.record(&result);
        result
    }
    /// Guest size, with a driver fault reported as an error.
    pub fn try_size(&self) -> Result<u64, DriverError> {
        let size = self.call(|i| i.try_virtual_size())?;
        self.last_size.store(size, Ordering::Relaxed);
        Ok(size)
    }
    /// Guest size. If the driver faults, the image is poisoned (so the
    /// command fails at its next call) and the last size it reported stands.
    pub fn size(&self) -> u64 {
        self.try_size()
            .unwrap_or_else(|_| self.last_size.load(Ordering::Relaxed))
    }
    /// Format name (a protocol's, for a protocol opened as the image).
    pub fn format(&self) -> &str {
        self.node_format.as_deref().unwrap_or(&self.driver.name)
    }
    /// True if guest offsets are the store's offsets: the driver says so,
    /// and no `offset=` option (raw's window into its file) moves them.
    pub fn identity_mapped(&self) -> bool {
        self.driver.can(caps::IDENTITY_MAPPED) && !self.options.iter().any(|(k, _)| k == "offset")
    }
    /// True if the image is a protocol node opened by itself (`driver=file`).
    pub fn is_protocol_node(&self) -> bool {
        self.node_format.is_some()
    }
    /// Reads guest data.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        self.call(|i| i.read_at(offset, RSliceMut::from_mut_slice(buf)))
    }
    /// Writes guest data. On a probed raw image, a write that would make
    /// the first sector probe as another format is refused, as QEMU refuses
    /// it: the next open would read the file as that format (a guest could
    /// write a qcow2 header naming any host file as its backing file).
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        if self.probed_raw && offset < PROBE_SECTOR && !buf.is_empty() {
            self.check_first_sector(offset, buf)?;
        }
        self.call(|i| i.write_at(offset, RSlice::from_slice(buf)))
    }

    /// True if the image was opened as raw because probing found nothing else.
    pub fn probed_raw(&self) -> bool {
        self.probed_raw
    }

    /// The same image, restricted as a probed raw image is when `probed`:
    /// for a layer reopened by its format name (commit's base) whose format
    /// was probed when the chain was opened.
    pub fn probed_as(mut self, probed: bool) -> Self {
        self.probed_raw |= probed;
        self
    }

    /// Refuses a write to the first sector of a probed raw image that would
    /// make it probe as another format.
    fn check_first_sector(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        let mut sector = vec![0u8; PROBE_SECTOR as usize];
        let size = self.try_size()?.min(PROBE_SECTOR) as usize;
        self.read(0, &mut sector[..size])?;
        let at = offset as usize;
        let n = buf.len().min(sector.len() - at);
        sector[at..at + n].copy_from_slice(&buf[..n]);
        if probes_as_other_format(&sector, &self.filename) {
            return Err(DriverError::from_errno(
                libc::EPERM,
                "Operation not permitted",
            ));
        }
        Ok(())
    }
    /// Writes one whole cluster compressed (the last cluster may be short).
    pub fn write_compressed(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        self.call(|i| i.write_compressed(offset, RSlice::from_slice(buf)))
    }
    /// Ends a compressed copy (an empty compressed write, ABI 1.4 on): the
    /// driver may align its file's end, as qemu-img's `convert -c` does.
    /// Older drivers are not asked.
    pub fn end_compressed(&self) -> Result<(), DriverError> {
        if self.driver.abi_minor < 4 {
            return Ok(());
        }
        self.write_compressed(0, &[])
    }
    /// Allocates now the host space a write of the range will use (see
    /// `Image::reserve`); false when the image does not reserve (drivers
    /// before ABI 1.4 never do).
    pub fn reserve(&self, offset: u64, len: u64) -> Result<bool, DriverError> {
        self.call(|i| i.reserve(offset, len))
    }
    /// Compresses one cluster without writing it (ordered targets).
    pub fn compress_cluster(&self, offset: u64, buf: &[u8]) -> Result<Vec<u8>, DriverError> {
        Ok(self
            .call(|i| i.compress_cluster(offset, RSlice::from_slice(buf)))?
            .into_vec())
    }
    /// Writes a cluster prepared by `compress_cluster`.
    pub fn write_prepared(&self, offset: u64, data: &[u8]) -> Result<(), DriverError> {
        self.call(|i| i.write_prepared(offset, RSlice::from_slice(data)))
    }
    /// Makes a range read as zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> Result<(), DriverError> {
        self.call(|i| i.write_zeroes(offset, len, flags))
    }
    /// Deallocates the whole clusters of a range in this layer.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), DriverError> {
        self.call(|i| i.discard(offset, len))
    }
    /// Allocation status from `offset`.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        let mut extents = self.call(|i| i.block_status(offset, len))?.into_vec();
        if self.store.reports_nothing() {
            // qemu's null device without read-zeroes: neither data nor zeros.
            for extent in &mut extents {
                extent.flags = 0;
            }
        }
        if extents.is_empty() && len > 0 && offset < self.size() {
            return Err(DriverError::new(
                ErrorKind::OTHER,
                "driver returned no block status",
            ));
        }
        if self.store.protocol() == "nbd" && self.identity_mapped() {
            let end = self.store.len().into_result()?;
            extents = past_export_end(extents, end);
        }
        Ok(extents)
    }
    /// Name of the image's store number `index` (see `Extent::store`).
    pub fn extent_store_name(&self, index: u32) -> Result<String, DriverError> {
        Ok(self.call(|i| i.try_store_name(index))?.into())
    }
    /// Changes the guest size. When the image grows while its backing image
    /// is longer than it was, the new area is marked as zeros, as QEMU does
    /// on truncate: left unallocated, it would show the backing file's
    /// data. A format that cannot mark zeros without writing them (qcow2
    /// version 2) gets its old size back and qemu-img's error.
    pub fn resize(&self, size: u64, prealloc: Prealloc, shrink: bool) -> Result<(), DriverError> {
        let old = self.try_size()?;
        self.call(|i| i.resize(size, prealloc, shrink))?;
        // falloc and full preallocation give the new area data clusters of
        // this layer, zero-filled: nothing shows through (qemu-img's map
        // shows them as data, not zero).
        let preallocated = matches!(prealloc, Prealloc::FALLOC | Prealloc::FULL);
        let Some(backing) = self
            .backing
            .as_deref()
            .filter(|_| size > old && !preallocated)
        else {
            return Ok(());
        };
        if backing.try_size()? <= old {
            return Ok(());
        }
        match self.write_zeroes(old, size - old, zero_flags::NO_FALLBACK) {
            Err(e) if e.kind == ErrorKind::UNSUPPORTED => {
                self.call(|i| i.resize(old, Prealloc::OFF, true))?;
                Err(DriverError::unsupported(format!(
                    "Failed to zero out new clusters: {}",
                    e.message
                )))
            }
            other => other,
        }
    }
    /// Runs a JSON check request; answers the JSON report.
    pub fn check(&self, request: &str) -> Result<String, DriverError> {
        Ok(self.call(|i| i.check(RStr::from(request)))?.into())
    }
    /// Runs a JSON metadata request; answers the driver's JSON reply.
    pub fn metadata(&self, request: &str) -> Result<String, DriverError> {
        Ok(self.call(|i| i.metadata(RStr::from(request)))?.into())
    }
    /// Records a new backing file name and format in the header.
    pub fn set_backing(&self, name: Option<&str>, format: Option<&str>) -> Result<(), DriverError> {
        self.call(|i| {
            i.set_backing(
                ROption::from(name.map(RStr::from)),
                ROption::from(format.map(RStr::from)),
            )
        })
    }
    /// Flushes.
    pub fn flush(&self) -> Result<(), DriverError> {
        self.call(|i| i.flush())
    }
    /// The driver's facts for `info`.
    pub fn info(&self) -> Result<ImageInfo, DriverError> {
        let text = self.call(|i| i.info())?;
        serde_json::from_str(&text)
            .map_err(|e| DriverError::new(ErrorKind::OTHER, format!("bad info from driver: {e}")))
    }
    /// Closes the image cleanly (flush, clear dirty flags); errors are
    /// reported. A poisoned image is not closed: its driver's state cannot
    /// be trusted to write anything more.
    pub fn close(&self) -> Result<(), DriverError> {
        self.closed.store(true, Ordering::Release);
        self.call(|i| i.close())
    }
}

/// An open error's text without the block layer's `Could not open 'NAME': `
/// prefix, as qemu-img quotes it when opening backing files.
pub fn inner_open_message<'a>(name: &str, message: &'a str) -> &'a str {
    message
        .strip_prefix(&format!("Could not open '{name}': "))
        .unwrap_or(message)
}

/// `extents` of an image whose bytes are an export's, with what lies past
/// the export's `end` (up to the sector the image's size is rounded to)
/// in an extent of its own: zeros at no place, as qemu's NBD client
/// answers for it.
fn past_export_end(extents: Vec<Extent>, end: u64) -> Vec<Extent> {
    let mut out = Vec::with_capacity(extents.len() + 1);
    for ext in extents {
        if ext.end() <= end {
            out.push(ext);
            continue;
        }
        if ext.offset < end {
            out.push(Extent {
                length: end - ext.offset,
                ..ext
            });
        }
        let start = ext.offset.max(end);
        out.push(Extent {
            offset: start,
            length: ext.end() - start,
            flags: extent_flags::ZERO | extent_flags::ALLOCATED,
            host_offset: 0,
            ..ext
        });
    }
    out
}

fn open_error(name: &str, e: DriverError) -> DriverError {
    DriverError {
        message: format!("Could not open '{name}': {}", e.message).into(),
        ..e
    }
}

fn find_driver(format: &str) -> Result<Arc<Driver>, DriverError> {
    registry().find(format).map_err(|e| match e {
        FindError::Load(message) => DriverError::new(ErrorKind::UNSUPPORTED, message),
        other => DriverError::new(ErrorKind::UNSUPPORTED, other.to_string()),
    })
}

/// Looks up a driver for `-f` / `-O` with qemu-img's message for an unknown one.
pub fn driver_for(format: &str) -> Result<Arc<Driver>, DriverError> {
    find_driver(format)
}

/// Picks the driver whose probe scores highest on the file's first bytes.
fn probe(file: &Store, name: &str) -> Result<Arc<Driver>, DriverError> {
    use qimg_driver_api::ByteStore;
    let mut head = vec![0u8; PROBE_BYTES];
    let n = file
        .read_at(0, RSliceMut::from_mut_slice(&mut head))
        .into_result()? as usize;
    head.truncate(n);
    // A magic the host knows, claimed by its own driver, settles it without
    // loading any other library: start-up stays small however many
    // drivers are enabled.
    let known = magic::recognise(&head, name);
    if let Some(known) = known {
        if let Ok(driver) = registry().find(known) {
            let score = driver
                .api
                .try_probe(RSlice::from_slice(&head), RStr::from(name))
                .into_result()?;
            if score > 0 {
                return Ok(driver);
            }
        }
    }
    // A file the table does not know is not offered to the drivers of the
    // formats it does (each would decline it): a raw image loads raw and
    // the vendor drivers only.
    let candidates = match known {
        None => registry().all_but(|format| magic::KNOWN.contains(&format)),
        Some(_) => registry().all(),
    };
    let mut best: Option<(i32, Arc<Driver>)> = None;
    for driver in candidates {
        // A driver that faults while probing fails the open: reading the
        // file as some other format (raw) could hand the guest its metadata.
        let score = driver
            .api
            .try_probe(RSlice::from_slice(&head), RStr::from(name))
            .into_result()?;
        if score > 0 && best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, driver));
        }
    }
    if best.as_ref().is_none_or(|(_, d)| d.name == "raw") {
        if let Some(known) = magic::recognise(&head, name) {
            refuse_unavailable(known)?;
        }
    }
    if best.as_ref().is_some_and(|(_, d)| d.name == "raw") {
        warn_untried(name);
    }
    best.map(|(_, d)| d)
        .ok_or_else(|| DriverError::invalid_image("Could not determine image format"))
}

/// True if `head` (a raw image's first sector) would probe as a format other
/// than raw: a loaded driver claims it, or it carries a known magic.
fn probes_as_other_format(head: &[u8], name: &str) -> bool {
    magic::recognise(head, name).is_some()
        || registry().all().iter().any(|driver| {
            driver.name != "raw"
                && driver
                    .api
                    .try_probe(RSlice::from_slice(head), RStr::from(name))
                    .into_result()
                    // A driver that faults on it is not trusted to decline.
                    .map_or(true, |score| score > 0)
        })
}

/// Refuses a file whose magic names `format` when no driver for it can be
/// had here, saying why; a loaded driver that declined the file leaves the
/// probe's answer standing.
fn refuse_unavailable(format: &str) -> Result<(), DriverError> {
    let why = match registry().find(format) {
        Ok(_) => return Ok(()),
        Err(FindError::Disabled { manifest, .. }) => {
            format!("whose driver is disabled in '{manifest}'")
        }
        Err(FindError::Unknown(_)) => "for which no driver is installed".to_string(),
        Err(FindError::Load(reason)) => format!("whose driver failed to load: {reason}"),
    };
    Err(DriverError::unsupported(format!(
        "image is in {format} format, {why} (use -f raw to read its bytes as raw)"
    )))
}

/// When probing settles on raw while the manifest disables drivers, says
/// which were not tried: the file may be an image of one of them.
fn warn_untried(name: &str) {
    let disabled = registry().disabled();
    if disabled.is_empty() {
        return;
    }
    let list: Vec<String> = disabled
        .iter()
        .map(|(driver, source)| format!("{driver} (disabled in '{}')", source.display()))
        .collect();
    errln!(
        "{}: warning: probing read '{name}' as raw; these drivers were not tried: {}",
        crate::cli::program(),
        list.join(", ")
    );
}

/// The locks a backing image is opened with, from its overlay's: `-U` (or
/// `shared_backing`) shares everything down the chain, a reader that shares
/// writers of the data lets the backing image's writers be too (its format
/// may still refuse them), and everyone else wants a stable backing image.
fn backing_lock(request: &OpenRequest) -> Option<LockSpec> {
    let lock = request.lock?;
    Some(if lock.forced || request.shared_backing {
        LockSpec::FORCE_SHARED
    } else if lock == LockSpec::READ_SHARED {
        LockSpec::READ_SHARED
    } else {
        LockSpec::READ_STABLE
    })
}

/// Opens an image, its driver and (unless asked not to) its backing chain.
pub fn open_image(request: &OpenRequest) -> Result<BlockImage, DriverError> {
    let format = request.format.map(str::to_string);
    let spec = resolve(request.name, request.image_opts)
        .and_then(|spec| {
            let format = format.clone().or(spec.format.clone());
            spec.with_format(format.as_deref())
        })
        .map_err(|e| open_error(request.name, DriverError::invalid_argument(e)))?;
    if request.image_opts && spec.force_share_off && request.lock.is_some_and(|l| l.forced) {
        return Err(DriverError::invalid_argument(
            "--force-share/-U conflicts with image options",
        ));
    }
    // Errors quote the operand as given.
    let display = request.name.to_string();
    if request.write && spec.read_only == Some(true) {
        let e = DriverError::from_errno(libc::EACCES, "Block node is read-only");
        return Err(open_error(&display, e));
    }
    if spec.force_share && (request.write || spec.read_only == Some(false)) {
        let e =
            DriverError::invalid_argument("force-share=on can only be used with read-only images");
        return Err(open_error(&display, e));
    }
    let format = format.or(spec.format.clone());
    // A protocol opened as the image is read through raw, which passes its
    // bytes through unchanged, and named by the protocol.
    let node_format = format
        .as_deref()
        .filter(|_| spec.bare)
        .map(|f| match &spec.protocol {
            Protocol::Remote { driver } => driver.clone(),
            _ if f == "null-co" => f.to_string(),
            _ => "file".to_string(),
        });
    // An unknown -f is reported before the file is touched, as qemu-img does.
    let named = match (&node_format, &format) {
        (Some(_), _) => Some(find_driver("raw").map_err(|e| open_error(&display, e))?),
        (None, Some(f)) => Some(find_driver(f).map_err(|e| open_error(&display, e))?),
        (None, None) => None,
    };
    let cache = spec.cache(request.cache);
    let mode = OpenMode {
        write: request.write,
        create: false,
        cache,
    };
    let store = match &spec.protocol {
        Protocol::File if spec.path.is_empty() => {
            return Err(open_error(
                &display,
                DriverError::invalid_argument("The 'file' block driver requires a file name"),
            ))
        }
        Protocol::File => Store::File(
            LocalFile::open(Path::new(&spec.path), &spec.path, mode)
                .map_err(|e| open_error(&display, e))?,
        ),
        Protocol::Null { size, read_zeroes } => {
            Store::Null(NullStore::new(*size, *read_zeroes, &spec.protocol_name()))
        }
        Protocol::Remote { driver } => Store::Remote(
            remote::open(driver, &spec, request.write).map_err(|e| open_error(&display, e))?,
        ),
    };
    // A store longer than the block layer takes (an export of 2^63 - 1
    // bytes) is refused, as qemu refuses it.
    if store
        .len()
        .into_result()
        .is_ok_and(|len| len > super::MAX_LENGTH)
    {
        return Err(open_error(
            &display,
            DriverError::from_errno(
                libc::EFBIG,
                "Could not refresh total sector count: File too large",
            ),
        ));
    }
    let (driver, probed_raw) = match named {
        Some(d) => (d, false),
        None => {
            let d = probe(&store, &spec.path).map_err(|e| open_error(&display, e))?;
            let raw = d.name == "raw";
            (d, raw)
        }
    };
    // `info` names the image as qemu does: its path, or a json: name when
    // options describe it.
    let remote_name = match &store {
        Store::Remote(r) if spec.options.is_empty() => Some(&r.node_name),
        _ => None,
    };
    let filename = if let Some(name) = remote_name {
        match &node_format {
            Some(_) => name.clone(),
            None => super::spec::name_over_node(&driver.name, name),
        }
    } else if request.image_opts || request.name.starts_with("json:") {
        spec.display_name(node_format.as_deref().unwrap_or(&driver.name))
    } else if let Some(path) = request.name.strip_prefix("file:") {
        path.to_string()
    } else {
        request.name.to_string()
    };
    // The locks depend on the format (see `LockSpec::for_format`), so they
    // are taken once the driver is known; probing only read the first bytes.
    // `force-share=on` shares every permission, as -U does.
    let lock = request.lock.map(|l| {
        if spec.force_share {
            LockSpec::FORCE_SHARED
        } else {
            l
        }
    });
    let store = match (store, lock.filter(|_| spec.locking)) {
        (Store::File(file), Some(lock)) => {
            let user_locks = driver.can(caps::IDENTITY_MAPPED) || driver.can(caps::USER_LOCKS);
            let lock = lock.for_format(!user_locks);
            let held = ImageLock::acquire(file.file(), lock, &spec.path)
                .map_err(|e| open_error(&display, e))?;
            Store::File(file.with_lock(held))
        }
        (store, _) => store,
    };
    let file = Arc::new(match store {
        Store::File(file) if request.stream => Store::File(file.stream_writes()),
        store => store,
    });
    if probed_raw && request.write {
        errln!(
            "WARNING: Image format was not specified for '{}' and probing guessed raw.\n         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         Specify the 'raw' format explicitly to remove the restrictions.",
            spec.path
        );
    }
    let services = Arc::new(Services {
        image_name: spec.path.clone(),
        cache,
        writable: request.write,
        related_lock: lock.filter(|_| spec.locking),
        backing_lock: backing_lock(request).filter(|_| spec.locking),
        backing: Mutex::new(None),
        no_io: request.no_io,
        lineage: request.lineage.below(&spec.path),
        options: spec
            .options
            .iter()
            .chain(&request.options)
            .cloned()
            .collect(),
        asked: Mutex::new(Vec::new()),
    });
    let mut flags = 0;
    if request.write {
        flags |= open_flags::WRITE | open_flags::RESIZE;
    }
    if request.no_backing || spec.no_backing {
        flags |= open_flags::NO_BACKING;
    }
    if request.no_io {
        flags |= open_flags::NO_IO;
    }
    if request.check {
        flags |= open_flags::CHECK;
    }
    if let Some(node) = &spec.backing_node {
        let message = if request.no_backing {
            format!(
                "Block format '{}' does not support the option 'backing'",
                driver.name
            )
        } else {
            format!(
                "Could not open backing file: Cannot find device='{node}' nor node-name='{node}'"
            )
        };
        return Err(open_error(&display, DriverError::invalid_argument(message)));
    }
    let image = driver
        .api
        .open(
            SharedStore::boxed(file.clone()),
            Services::boxed(services.clone()),
            flags,
        )
        .into_result()
        .map_err(|e| open_error(&display, e))?;
    if let Some(key) = services.unasked_option() {
        let e = DriverError::invalid_argument(format!(
            "Block format '{}' does not support the option '{key}'",
            driver.name
        ));
        return Err(open_error(&display, e));
    }
    let backing = crate::sync::lock(&services.backing).take();
    let image = BlockImage {
        image: ManuallyDrop::new(image),
        driver,
        filename,
        store: file,
        backing,
        options: services.options.clone(),
        last_size: AtomicU64::new(0),
        poison: Poison::default(),
        probed_raw,
        node_format,
        closed: AtomicBool::new(false),
    };
    // The size is asked once here so that a driver that cannot answer it
    // fails the open instead of passing for an empty image.
    image.try_size().map_err(|e| open_error(&display, e))?;
    Ok(image)
}

/// Creates an image file of `driver`'s format: creates the file under QEMU's
/// create lock, lets the driver format it, and releases the lock. With
/// `veiled`, an image with metadata stays veiled (`store::veil`) until the
/// caller, done writing it, lifts the veil through the store it opened.
pub fn create_image(
    driver: &Arc<Driver>,
    path: &str,
    request: &CreateRequest,
    cache: CacheMode,
    veiled: bool,
) -> Result<(), DriverError> {
    // A raw image has no magic to veil: its first bytes are guest data.
    let veiled = veiled && !driver.can(caps::IDENTITY_MAPPED);
    if let Some(protocol) = super::spec::remote_scheme(path) {
        // A remote store exists already: it is formatted, never removed.
        return format_remote(driver, protocol, path, request, cache, veiled);
    }
    let path = super::spec::local_path(path).map_err(DriverError::invalid_argument)?;
    let existed = target_existed(path);
    let result = format_new(driver, path, request, cache, veiled);
    if result.is_err() && !existed {
        // A failed creation leaves nothing that could pass for an image.
        crate::confine::discard_target(path);
    }
    result
}

/// Whether the local target `name` was there before this command (and so
/// is never removed when the command fails). A symbolic link to nowhere
/// does not count: the file the command creates through it is removed,
/// the link stays (see [`crate::confine::discard_target`]); nor does a
/// file `--confine` made empty for the command.
pub fn target_existed(name: &str) -> bool {
    let path = super::spec::local_path(name).unwrap_or(name);
    std::fs::metadata(path).is_ok() && !crate::confine::precreated(path)
}

/// Formats the store a protocol driver opens for `name` (qemu's "simple"
/// creation: the store keeps its size unless the format changes it, and
/// its first sector is zeroed so that nothing old probes as an image).
fn format_remote(
    driver: &Arc<Driver>,
    protocol: &str,
    name: &str,
    request: &CreateRequest,
    cache: CacheMode,
    veiled: bool,
) -> Result<(), DriverError> {
    let spec = super::spec::resolve(name, false).map_err(DriverError::invalid_argument)?;
    // qemu's "simple" creation, in its words: the store must open as it
    // is, and its first sector is cleared.
    let prefixed = |e: DriverError, words: &str| DriverError {
        message: format!("{words}{}", e.message).into(),
        ..e
    };
    let mut opened = remote::open(protocol, &spec, true).map_err(|e| {
        prefixed(e, &format!("Protocol driver '{protocol}' does not support creating new images, so an existing image must be selected as the target; however, opening the given target as an existing image failed: "))
    })?;
    if driver.can(caps::IDENTITY_MAPPED) {
        // A raw image asks its store for its size first (an export that
        // is too small: "Cannot grow NBD nodes").
        opened
            .store
            .set_len(request.size, Prealloc::OFF)
            .into_result()?;
    }
    zero_first_sector(&opened.store)
        .map_err(|e| prefixed(e, "Failed to clear the new image's first sector: "))?;
    let veil = veiled.then(|| veil::cover(veil::Key::Node(opened.node_name.clone())));
    opened.veil = veil.clone();
    create_on(
        driver,
        Arc::new(Store::Remote(opened)),
        name,
        false,
        cache,
        request,
    )?;
    if let Some(veil) = veil {
        veil.created();
    }
    Ok(())
}

/// Zeroes the first sector of the remote store `name` names, so that a
/// target a failed command formatted there no longer probes as an image
/// (a remote store cannot be removed). Best effort: a store that cannot be
/// reached keeps what it has.
pub fn unformat_remote(name: &str) {
    let Some(protocol) = super::spec::remote_scheme(name) else {
        return;
    };
    let Ok(spec) = super::spec::resolve(name, false) else {
        return;
    };
    if let Ok(opened) = remote::open(protocol, &spec, true) {
        let store = opened.store;
        if zero_first_sector(&store).is_ok() {
            let _ = store.flush();
        }
    }
}

/// Zeroes the first sector of `store` (all of it if shorter), so that
/// nothing it held before probes as an image.
fn zero_first_sector(store: &dyn ByteStore) -> Result<(), DriverError> {
    let len = store.len().into_result()?;
    store.write_zeroes(0, len.min(512), false).into_result()
}

/// Lets `driver` format `store` (the image `name`, with image locks when
/// `locking`) as `request` asks.
fn create_on(
    driver: &Arc<Driver>,
    store: Arc<Store>,
    name: &str,
    locking: bool,
    cache: CacheMode,
    request: &CreateRequest,
) -> Result<(), DriverError> {
    let services = Arc::new(Services {
        image_name: name.to_string(),
        cache,
        writable: true,
        related_lock: locking.then_some(LockSpec::READ_WRITE),
        backing_lock: Some(LockSpec::READ_STABLE),
        backing: Mutex::new(None),
        no_io: false,
        lineage: Lineage::default(),
        options: Vec::new(),
        asked: Mutex::new(Vec::new()),
    });
    let json = serde_json::to_string(request)
        .map_err(|e| DriverError::new(ErrorKind::OTHER, e.to_string()))?;
    driver
        .api
        .create(
            SharedStore::boxed(store),
            Services::boxed(services),
            RStr::from(json.as_str()),
        )
        .into_result()?;
    Ok(())
}

fn format_new(
    driver: &Arc<Driver>,
    path: &str,
    request: &CreateRequest,
    cache: CacheMode,
    veiled: bool,
) -> Result<(), DriverError> {
    let file = LocalFile::create_unemptied(Path::new(path), path, cache)?;
    // Creation's own locks are checked first, as in qemu; then a format with
    // metadata refuses another writer before the file is emptied (qemu
    // finds out when it opens the new image, after emptying it).
    drop(ImageLock::acquire(file.file(), LockSpec::CREATE, path)?);
    let user_locks = driver.can(caps::IDENTITY_MAPPED) || driver.can(caps::USER_LOCKS);
    let lock = if user_locks {
        LockSpec::CREATE
    } else {
        // What opening the new image for writing takes in qemu.
        LockSpec::RESIZE.for_format(true)
    };
    let lock = ImageLock::acquire(file.file(), lock, path)?;
    file.empty()?;
    let (file, veil) = match veiled {
        true => file.veiled().map(|(file, veil)| (file, Some(veil)))?,
        false => (file, None),
    };
    let file = Arc::new(Store::File(file.with_lock(lock)));
    create_on(driver, file, path, true, cache, request)?;
    if let Some(veil) = veil {
        veil.created();
    }
    Ok(())
}
