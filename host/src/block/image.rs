//! Opening and creating images through their drivers.

use super::lock::{ImageLock, LockSpec};
use super::services::{Services, SharedStore};
use super::spec::resolve;
use crate::commands::registry;
use crate::plugins::{loader::FindError, Driver};
use crate::store::{file::OpenMode, CacheMode, LocalFile};
use qimg_driver_api::abi_stable::std_types::{RSlice, RSliceMut, RStr};
use qimg_driver_api::schema::{CreateRequest, ImageInfo};
use qimg_driver_api::{open_flags, DriverError, ErrorKind, Extent, ImageArc};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Bytes read from the start of a file to probe its format.
const PROBE_BYTES: usize = 2048;

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
    /// Open the backing chain without refusing writers (commit writes into a
    /// backing image through a handle of its own).
    pub shared_backing: bool,
    /// Depth in a backing chain (0 for the top).
    pub depth: usize,
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
            depth: 0,
            check: false,
            options: Vec::new(),
            stream: false,
        }
    }
}

/// An open image with its driver, its file and its backing chain.
pub struct BlockImage {
    /// The driver's image handle.
    pub image: ImageArc,
    /// The driver.
    pub driver: Arc<Driver>,
    /// The name to print (`image:` line, messages).
    pub filename: String,
    /// The file holding the image.
    pub store: Arc<LocalFile>,
    /// The backing image, if the chain was opened and there is one.
    pub backing: Option<Arc<BlockImage>>,
}

impl BlockImage {
    /// Guest size.
    pub fn size(&self) -> u64 {
        self.image.virtual_size()
    }
    /// Format name.
    pub fn format(&self) -> &str {
        &self.driver.name
    }
    /// Reads guest data.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        self.image
            .read_at(offset, RSliceMut::from_mut_slice(buf))
            .into_result()
    }
    /// Writes guest data.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        self.image
            .write_at(offset, RSlice::from_slice(buf))
            .into_result()
    }
    /// Writes one whole cluster compressed (the last cluster may be short).
    pub fn write_compressed(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        self.image
            .write_compressed(offset, RSlice::from_slice(buf))
            .into_result()
    }
    /// Compresses one cluster without writing it (ordered targets).
    pub fn compress_cluster(&self, offset: u64, buf: &[u8]) -> Result<Vec<u8>, DriverError> {
        Ok(self
            .image
            .compress_cluster(offset, RSlice::from_slice(buf))
            .into_result()?
            .into_vec())
    }
    /// Writes a cluster prepared by `compress_cluster`.
    pub fn write_prepared(&self, offset: u64, data: &[u8]) -> Result<(), DriverError> {
        self.image
            .write_prepared(offset, RSlice::from_slice(data))
            .into_result()
    }
    /// Makes a range read as zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> Result<(), DriverError> {
        self.image.write_zeroes(offset, len, flags).into_result()
    }
    /// Allocation status from `offset`.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        let extents = self
            .image
            .block_status(offset, len)
            .into_result()?
            .into_vec();
        if extents.is_empty() && len > 0 && offset < self.size() {
            return Err(DriverError::new(
                ErrorKind::OTHER,
                "driver returned no block status",
            ));
        }
        Ok(extents)
    }
    /// Flushes.
    pub fn flush(&self) -> Result<(), DriverError> {
        self.image.flush().into_result()
    }
    /// The driver's facts for `info`.
    pub fn info(&self) -> Result<ImageInfo, DriverError> {
        let text = self.image.info().into_result()?;
        serde_json::from_str(&text)
            .map_err(|e| DriverError::new(ErrorKind::OTHER, format!("bad info from driver: {e}")))
    }
    /// Closes the image cleanly (flush, clear dirty flags); errors are reported.
    pub fn close(&self) -> Result<(), DriverError> {
        self.image.close().into_result()
    }
}

/// An open error's text without the block layer's `Could not open 'NAME': `
/// prefix, as qemu-img quotes it when opening backing files.
pub fn inner_open_message<'a>(name: &str, message: &'a str) -> &'a str {
    message
        .strip_prefix(&format!("Could not open '{name}': "))
        .unwrap_or(message)
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
fn probe(file: &LocalFile, name: &str) -> Result<Arc<Driver>, DriverError> {
    use qimg_driver_api::ByteStore;
    let mut head = vec![0u8; PROBE_BYTES];
    let n = file
        .read_at(0, RSliceMut::from_mut_slice(&mut head))
        .into_result()? as usize;
    head.truncate(n);
    let mut best: Option<(i32, Arc<Driver>)> = None;
    for driver in registry().all() {
        let score = driver
            .api
            .probe(RSlice::from_slice(&head), RStr::from(name));
        if score > 0 && best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, driver));
        }
    }
    best.map(|(_, d)| d)
        .ok_or_else(|| DriverError::invalid_image("Could not determine image format"))
}

/// Opens an image, its driver and (unless asked not to) its backing chain.
pub fn open_image(request: &OpenRequest) -> Result<BlockImage, DriverError> {
    let spec = resolve(request.name, request.image_opts).map_err(DriverError::invalid_argument)?;
    // Errors quote the operand as given; `info` names the image as qemu
    // does (its path, or a json: name when format options were given).
    let display = request.name.to_string();
    let filename = if request.image_opts {
        spec.display_name()
    } else {
        request.name.to_string()
    };
    let format = request.format.map(str::to_string).or(spec.format.clone());
    // An unknown -f is reported before the file is touched, as qemu-img does.
    let named = match &format {
        Some(f) => Some(find_driver(f).map_err(|e| open_error(&display, e))?),
        None => None,
    };
    let mode = OpenMode {
        write: request.write,
        create: false,
        cache: request.cache,
    };
    let file = LocalFile::open(Path::new(&spec.path), &spec.path, mode)
        .map_err(|e| open_error(&display, e))?;
    let file = match request.lock.filter(|_| spec.locking) {
        Some(lock) => {
            let held = ImageLock::acquire(file.file(), lock, &spec.path)
                .map_err(|e| open_error(&display, e))?;
            file.with_lock(held)
        }
        None => file,
    };
    let file = Arc::new(if request.stream {
        file.stream_writes()
    } else {
        file
    });
    let (driver, probed_raw) = match named {
        Some(d) => (d, false),
        None => {
            let d = probe(&file, &spec.path).map_err(|e| open_error(&display, e))?;
            let raw = d.name == "raw";
            (d, raw)
        }
    };
    if probed_raw && request.write {
        eprintln!(
            "WARNING: Image format was not specified for '{}' and probing guessed raw.\n         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         Specify the 'raw' format explicitly to remove the restrictions.",
            spec.path
        );
    }
    let services = Arc::new(Services {
        image_name: spec.path.clone(),
        cache: request.cache,
        writable: request.write,
        locking: spec.locking && request.lock.is_some(),
        force_share: request.shared_backing || request.lock == Some(LockSpec::READ_SHARED),
        backing: Mutex::new(None),
        no_io: request.no_io,
        depth: request.depth,
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
    if request.no_backing {
        flags |= open_flags::NO_BACKING;
    }
    if request.no_io {
        flags |= open_flags::NO_IO;
    }
    if request.check {
        flags |= open_flags::CHECK;
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
    let backing = services
        .backing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    Ok(BlockImage {
        image,
        driver,
        filename,
        store: file,
        backing,
    })
}

/// Creates an image file of `driver`'s format: creates the file under QEMU's
/// create lock, lets the driver format it, and releases the lock.
pub fn create_image(
    driver: &Arc<Driver>,
    path: &str,
    request: &CreateRequest,
    cache: CacheMode,
) -> Result<(), DriverError> {
    let existed = Path::new(path).exists();
    let result = format_new(driver, path, request, cache);
    if result.is_err() && !existed {
        // A failed creation leaves nothing that could pass for an image.
        let _ = std::fs::remove_file(path);
    }
    result
}

fn format_new(
    driver: &Arc<Driver>,
    path: &str,
    request: &CreateRequest,
    cache: CacheMode,
) -> Result<(), DriverError> {
    let mode = OpenMode {
        write: true,
        create: false,
        cache,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| {
            DriverError::from_errno(
                e.raw_os_error().unwrap_or(5),
                format!(
                    "Could not create '{path}': {}",
                    qimg_driver_api::error::io_message(&e)
                ),
            )
        })?;
    drop(file);
    let file = LocalFile::open(Path::new(path), path, mode)?;
    let lock = ImageLock::acquire(file.file(), LockSpec::CREATE, path)?;
    file.file().set_len(0).map_err(DriverError::from)?;
    let file = Arc::new(file.with_lock(lock));
    let services = Arc::new(Services {
        image_name: path.to_string(),
        cache,
        writable: true,
        locking: true,
        force_share: false,
        backing: Mutex::new(None),
        no_io: false,
        depth: 0,
        options: Vec::new(),
        asked: Mutex::new(Vec::new()),
    });
    let json = serde_json::to_string(request)
        .map_err(|e| DriverError::new(ErrorKind::OTHER, e.to_string()))?;
    driver
        .api
        .create(
            SharedStore::boxed(file.clone()),
            Services::boxed(services),
            RStr::from(json.as_str()),
        )
        .into_result()
}
