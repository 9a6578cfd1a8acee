//! What the host offers a driver while it opens or creates an image: related
//! stores, the backing chain, secrets and warnings.

use super::image::{open_image, BlockImage, OpenRequest};
use super::lineage::Lineage;
use super::lock::{ImageLock, LockSpec, Related};
use crate::store::{file::OpenMode, CacheMode, LocalFile, Store};
use crate::sync::lock;
use qimg_driver_api::abi_stable::sabi_trait::TD_Opaque;
use qimg_driver_api::abi_stable::std_types::{
    ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec,
};
use qimg_driver_api::{
    guard::catch, related_kind, BackingBox, BackingReader, BackingReader_TO, ByteStore,
    ByteStoreBox, ByteStore_TO, DriverError, ErrorKind, Extent, HostServices, HostServicesBox,
    HostServices_TO, Prealloc, StoreRun,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

fn secrets() -> &'static Mutex<HashMap<String, Vec<u8>>> {
    static SECRETS: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    SECRETS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Registers a secret from `--object secret,id=ID,data=...` (or `file=`).
pub fn register_secret(id: &str, value: Vec<u8>) {
    lock(secrets()).insert(id.to_string(), value);
}

/// The bytes of a registered secret.
pub fn secret_bytes(id: &str) -> Option<Vec<u8>> {
    lock(secrets()).get(id).cloned()
}

/// A host store shared between the host (for sizes, locks) and a driver.
pub struct SharedStore(pub Arc<Store>);

impl SharedStore {
    /// Boxes a shared store for the ABI.
    pub fn boxed(file: Arc<Store>) -> ByteStoreBox {
        ByteStore_TO::from_value(SharedStore(file), TD_Opaque)
    }
}

impl ByteStore for SharedStore {
    fn read_at(&self, offset: u64, buf: RSliceMut<'_, u8>) -> RResult<u64, DriverError> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<(), DriverError> {
        self.0.write_at(offset, buf)
    }
    fn len(&self) -> RResult<u64, DriverError> {
        self.0.len()
    }
    fn set_len(&self, len: u64, prealloc: Prealloc) -> RResult<(), DriverError> {
        self.0.set_len(len, prealloc)
    }
    fn flush(&self) -> RResult<(), DriverError> {
        ByteStore::flush(&*self.0)
    }
    fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> RResult<(), DriverError> {
        self.0.write_zeroes(offset, len, punch)
    }
    fn run_at(&self, offset: u64, max: u64) -> RResult<StoreRun, DriverError> {
        self.0.run_at(offset, max)
    }
    fn allocated_size(&self) -> RResult<u64, DriverError> {
        self.0.allocated_size()
    }
    fn name(&self) -> RString {
        ByteStore::name(&*self.0)
    }
    fn grow_densely(&self, dense: bool) {
        self.0.grow_densely(dense)
    }
}

/// Services for one image. Shared with the opener, which collects the backing
/// image the driver asked for.
pub struct Services {
    /// The image's own name, for resolving relative names.
    pub image_name: String,
    /// Cache mode for related stores.
    pub cache: CacheMode,
    /// Whether related stores may be written.
    pub writable: bool,
    /// The command's locks, which related files are opened with (see
    /// [`LockSpec::for_related`]); `None`: no locks.
    pub related_lock: Option<LockSpec>,
    /// The locks the backing image is opened with (`None`: no locks).
    pub backing_lock: Option<LockSpec>,
    /// The chain is only being described (`info`).
    pub no_io: bool,
    /// The backing image opened at the driver's request.
    pub backing: Mutex<Option<Arc<BlockImage>>>,
    /// This image and those above it in its chain.
    pub lineage: Lineage,
    /// Format options given with the name (`encrypt.key-secret=...`).
    pub options: Vec<(String, String)>,
    /// The option keys the driver asked for.
    pub asked: Mutex<Vec<String>>,
}

impl Services {
    /// The first format option the driver did not ask for: qemu refuses
    /// options a format does not support.
    pub fn unasked_option(&self) -> Option<String> {
        let asked = lock(&self.asked);
        self.options
            .iter()
            .map(|(k, _)| k)
            .find(|k| !asked.contains(k))
            .cloned()
    }

    /// Boxes a handle on these services for the ABI.
    pub fn boxed(services: Arc<Services>) -> HostServicesBox {
        HostServices_TO::from_value(ServicesHandle(services), TD_Opaque)
    }

    /// Resolves `name` against the directory of the image, as qemu does for
    /// backing files and extents (absolute names stay as they are); an
    /// image on NBD has no directory for a relative name.
    pub fn resolve(&self, name: &str) -> Result<String, DriverError> {
        if super::spec::has_no_directory(&self.image_name, name) {
            return Err(DriverError::invalid_argument(super::spec::NO_NBD_DIRECTORY));
        }
        Ok(super::spec::relative_to(&self.image_name, name))
    }
}

struct ServicesHandle(Arc<Services>);

/// What a related file holds, by its first bytes: a hosted or ESX Server
/// sparse vmdk extent, a LUKS header, or data. For drivers before ABI 1.8,
/// which do not say what they open a file for; a data file that happens to
/// start so is locked as that kind.
fn sniffed_kind(file: &std::fs::File) -> Related {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 6];
    let n = file.read_at(&mut head, 0).unwrap_or(0);
    let head = &head[..n];
    if head.starts_with(b"KDMV") || head.starts_with(b"COWD") {
        Related::Metadata
    } else if head.starts_with(b"LUKS\xba\xbe") {
        Related::Header
    } else {
        Related::Data
    }
}

/// The kind a driver of ABI 1.8 or later names ([`related_kind`]); `None`
/// where it does not say.
fn named_kind(kind: u32) -> Option<Related> {
    match kind {
        related_kind::METADATA => Some(Related::Metadata),
        related_kind::HEADER => Some(Related::Header),
        related_kind::DATA => Some(Related::Data),
        _ => None,
    }
}

impl ServicesHandle {
    /// Opens the related store `name`, locked as a file of `kind` holds
    /// (sniffed from its first bytes where the driver does not say).
    fn related(
        &self,
        name: &str,
        writable: bool,
        create: bool,
        kind: Option<Related>,
    ) -> Result<ByteStoreBox, DriverError> {
        let services = &self.0;
        let name = super::spec::local_path(name).map_err(DriverError::invalid_argument)?;
        let resolved = services.resolve(name)?;
        crate::confine::admit_named_file(&resolved)?;
        let path = PathBuf::from(&resolved);
        let write = writable && services.writable;
        let file = if create {
            let existed = super::image::target_existed(&resolved);
            let file = LocalFile::create_unemptied(&path, &resolved, services.cache)?;
            if !existed {
                crate::confine::created_beside(&path);
            }
            if services.related_lock.is_some() {
                // As for the image itself: whoever holds the file keeps its
                // bytes (qemu checks creation's locks before truncating).
                drop(ImageLock::acquire(
                    file.file(),
                    LockSpec::CREATE,
                    &resolved,
                )?);
            }
            file
        } else {
            let mode = OpenMode {
                write,
                create: false,
                cache: services.cache,
            };
            LocalFile::open(&path, &resolved, mode)?
        };
        let file = match services.related_lock {
            Some(lock) => {
                // A file being created holds nothing yet: data, until the
                // driver has written it.
                let kind = match (create, kind) {
                    (true, _) => Related::Data,
                    (false, Some(kind)) => kind,
                    (false, None) => sniffed_kind(file.file()),
                };
                let spec = lock.for_related(write || create, kind);
                let lock = ImageLock::acquire(file.file(), spec, &resolved)?;
                file.with_lock(lock)
            }
            None => file,
        };
        if create {
            file.empty()?;
        }
        Ok(SharedStore::boxed(Arc::new(Store::File(file))))
    }
}

impl HostServices for ServicesHandle {
    fn open_related(
        &self,
        name: RStr<'_>,
        writable: bool,
        create: bool,
    ) -> RResult<ByteStoreBox, DriverError> {
        catch(|| self.related(name.as_str(), writable, create, None))
    }

    fn open_related_as(
        &self,
        name: RStr<'_>,
        writable: bool,
        create: bool,
        kind: u32,
    ) -> RResult<ByteStoreBox, DriverError> {
        catch(|| self.related(name.as_str(), writable, create, named_kind(kind)))
    }

    fn open_backing(
        &self,
        name: RStr<'_>,
        format: ROption<RStr<'_>>,
    ) -> RResult<BackingBox, DriverError> {
        catch(|| {
            let services = &self.0;
            let mut name = name.as_str().to_string();
            let mut named = false;
            let mut format = format.into_option().map(|f| f.as_str().to_string());
            // `backing.KEY=...` options are the backing image's `KEY=...`
            // (its own backing's are `backing.backing.KEY`): handed down,
            // they count as taken here. As in qemu, `backing.file.filename`
            // and `backing.driver` name the backing image and its format
            // in place of what the overlay records; a name given so is the
            // user's, relative to the working directory.
            let mut handed = Vec::new();
            for (key, value) in &services.options {
                if let Some(child_key) = key.strip_prefix("backing.") {
                    match child_key {
                        "file.filename" => {
                            name = value.clone();
                            named = true;
                        }
                        "driver" => format = Some(value.clone()),
                        // The local file protocol is what a name opens.
                        "file.driver" if value == "file" => {}
                        _ => handed.push((child_key.to_string(), value.clone())),
                    }
                    lock(&services.asked).push(key.clone());
                }
            }
            let resolved = if named {
                name
            } else {
                services.resolve(&name)?
            };
            crate::confine::admit_named_file(&resolved)?;
            services.lineage.admit(&resolved)?;
            let request = OpenRequest {
                name: &resolved,
                format: format.as_deref(),
                image_opts: false,
                write: false,
                cache: services.cache,
                lock: services.backing_lock,
                no_backing: false,
                options: handed,
                stream: false,
                no_io: services.no_io,
                shared_backing: false,
                lineage: services.lineage.clone(),
                check: false,
            };
            // Each layer is one more round through a driver on this thread's
            // stack: chains of thousands of layers get fresh stack as needed.
            let image = on_deep_stack(|| open_image(&request)).map_err(|e| {
                // A loop or an over-deep chain is reported once, not once per layer.
                services.lineage.fault().unwrap_or_else(|| {
                    DriverError::new(
                        ErrorKind::INVALID_IMAGE,
                        format!(
                            "Could not open backing file: {}",
                            super::image::inner_open_message(&resolved, &e.message)
                        ),
                    )
                })
            })?;
            let image = Arc::new(image);
            *lock(&services.backing) = Some(image.clone());
            Ok(BackingReader_TO::from_value(BackingView(image), TD_Opaque))
        })
    }

    fn secret(&self, id: RStr<'_>) -> RResult<RString, DriverError> {
        catch(|| {
            secret_bytes(id.as_str())
                .map(|s| RString::from(String::from_utf8_lossy(&s).as_ref()))
                .ok_or_else(|| {
                    DriverError::invalid_argument(format!("No secret with id '{}'", id.as_str()))
                })
        })
    }

    fn warn(&self, message: RStr<'_>) {
        errln!("{}: warning: {}", crate::cli::program(), message.as_str());
    }

    fn open_option(&self, key: RStr<'_>) -> ROption<RString> {
        let services = &self.0;
        lock(&services.asked).push(key.as_str().to_string());
        services
            .options
            .iter()
            .find(|(k, _)| k == key.as_str())
            .map(|(_, v)| RString::from(v.as_str()))
            .into()
    }
}

/// A backing image as the overlay's driver sees it.
struct BackingView(Arc<BlockImage>);

impl BackingReader for BackingView {
    fn virtual_size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, offset: u64, buf: RSliceMut<'_, u8>) -> RResult<(), DriverError> {
        let mut buf = buf;
        RResult::from(on_deep_stack(|| self.0.read(offset, buf.as_mut_slice())))
    }
    fn block_status(&self, offset: u64, len: u64) -> RResult<RVec<Extent>, DriverError> {
        RResult::from(on_deep_stack(|| self.0.block_status(offset, len)).map(RVec::from))
    }
}

/// Stack a layer of a backing chain may use before the next layer is entered.
const LAYER_STACK: usize = 256 * 1024;
/// Stack allocated at a time once a deep chain has used up the thread's own.
const STACK_SEGMENT: usize = 8 * 1024 * 1024;

/// Runs `f`, which enters the next layer of a backing chain, on a fresh
/// stack segment if this thread's stack is nearly used up: reads, block
/// status and opens recurse once per layer through the drivers.
pub fn on_deep_stack<T>(f: impl FnOnce() -> T) -> T {
    stacker::maybe_grow(LAYER_STACK, STACK_SEGMENT, f)
}

#[cfg(test)]
mod tests {
    use super::{named_kind, sniffed_kind, Related};
    use qimg_driver_api::related_kind;
    use std::io::Write;

    #[test]
    fn a_named_kind_wins_and_unknown_ones_are_sniffed() {
        assert_eq!(named_kind(related_kind::METADATA), Some(Related::Metadata));
        assert_eq!(named_kind(related_kind::HEADER), Some(Related::Header));
        assert_eq!(named_kind(related_kind::DATA), Some(Related::Data));
        assert_eq!(named_kind(related_kind::UNKNOWN), None);
        assert_eq!(named_kind(77), None);
    }

    #[test]
    fn older_drivers_files_are_told_apart_by_their_magic() {
        let dir = std::env::temp_dir().join(format!("qimg-sniff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (head, kind) in [
            (&b"KDMV\x01\0"[..], Related::Metadata),
            (b"COWD", Related::Metadata),
            (b"LUKS\xba\xbe\0\x02", Related::Header),
            (b"QFI\xfb", Related::Data),
            (b"", Related::Data),
        ] {
            let path = dir.join("f");
            std::fs::File::create(&path)
                .and_then(|mut f| f.write_all(head))
                .expect("write");
            let file = std::fs::File::open(&path).expect("open");
            assert_eq!(sniffed_kind(&file), kind, "{head:?}");
        }
        std::fs::remove_dir_all(&dir).expect("rmdir");
    }
}
