//! Byte stores: the host's side of the protocol layer. A local file,
//! qemu's `null-co` device, or a store a protocol driver plugin opened.

pub mod ahead;
pub mod cache;
pub mod faults;
pub mod file;
pub mod null;
pub mod remote;
pub mod veil;

pub use cache::CacheMode;
pub use file::LocalFile;
pub use null::NullStore;

use qimg_driver_api::abi_stable::std_types::{RResult, RSlice, RSliceMut, RString};
use qimg_driver_api::{ByteStore, ByteStoreBox, DriverError, Prealloc, StoreRun};
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use veil::Veil;

/// The store an image lives on.
pub enum Store {
    /// A local file (qemu's `file` protocol).
    File(LocalFile),
    /// A null device (qemu's `null-co` protocol).
    Null(NullStore),
    /// A store a protocol driver opened (`nbd`, `http`).
    Remote(RemoteStore),
}

/// A store a protocol driver plugin opened, with its protocol's name.
pub struct RemoteStore {
    /// The protocol driver's name (`nbd`).
    pub protocol: String,
    /// The name qemu gives the protocol node (its URL, or a `json:` object
    /// when options such as `username` are part of its identity).
    pub node_name: String,
    /// The store itself.
    pub store: ByteStoreBox,
    /// The veil over a new image being written there (see [`veil`]).
    pub veil: Option<std::sync::Arc<Veil>>,
    /// How many reads in a row took longer than [`FAR`].
    slow_reads: AtomicU32,
    /// The store proved far (see [`RemoteStore::is_far`]).
    far: AtomicBool,
}

/// A store whose reads all take longer than this is far: round trips or a
/// slow server, not the cores, set its pace. A server on this machine can
/// be slow for a while: qemu-nbd on a unix socket, four 1 MiB reads in
/// flight on a busy 2-core machine, in three copies of eight had eight
/// reads in a row over 3 ms (the eighth took 6.7-13 ms). With 3 ms here
/// those copies turned far, and their eight workers, spinning on the
/// target file's lock, took 0.6 s of CPU instead of 0.28 (0.67 s instead
/// of 0.4). A server farther than this gets its time's worth from more
/// requests in flight: four whole items per 20 ms round trip are 400 MB/s.
const FAR: Duration = Duration::from_millis(20);

/// So many reads in a row over [`FAR`] make a store far.
const FAR_READS: u32 = 8;

impl RemoteStore {
    /// Whether [`FAR_READS`] reads in a row of the store took longer than
    /// [`FAR`] (for good): a copy from a far store needs more requests in
    /// flight than the cores can keep busy, each of them large.
    pub fn is_far(&self) -> bool {
        self.far.load(Ordering::Relaxed)
    }

    /// Counts a read that took `took`.
    fn timed(&self, took: Duration) {
        if took <= FAR {
            self.slow_reads.store(0, Ordering::Relaxed);
        } else if self.slow_reads.fetch_add(1, Ordering::Relaxed) + 1 >= FAR_READS {
            self.far.store(true, Ordering::Relaxed);
        }
    }
}

impl Store {
    /// The protocol's name as qemu's `info` shows it (`protocol type:`).
    pub fn protocol(&self) -> &str {
        match self {
            Store::File(f) if f.is_device() => "host_device",
            Store::File(_) => "file",
            Store::Null(_) => "null-co",
            Store::Remote(r) => &r.protocol,
        }
    }
    /// The protocol node's name, as `info` prints it for the image's
    /// `file` child.
    pub fn node_name(&self) -> String {
        match self {
            Store::Remote(r) => r.node_name.clone(),
            store => store.name().into(),
        }
    }
    /// The local file, if the store is one (for locks and copy_file_range).
    pub fn file(&self) -> Option<&File> {
        match self {
            Store::File(f) => Some(f.file()),
            Store::Null(_) | Store::Remote(_) => None,
        }
    }
    /// Whether [`Store::allocate`] allocates anything (a writable local
    /// regular file).
    pub fn allocates(&self) -> bool {
        matches!(self, Store::File(f) if f.allocates())
    }
    /// Allocates the holes data is about to be written to and returns them
    /// (see [`LocalFile::allocate`]); nothing for other stores.
    pub fn allocate(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        match self {
            Store::File(f) => f.allocate(offset, len),
            _ => Vec::new(),
        }
    }
    /// Stops allocating the file's blocks ahead of its end (see
    /// [`ahead`]) whatever its driver said: compressed clusters are packed
    /// with gaps that must stay holes, so a compressed copy's target does
    /// not grow ahead.
    pub fn stop_growing_ahead(&self) {
        self.grow_densely(false);
    }
    /// Writes the bytes a veil kept while a new image was written (see
    /// [`veil`]; the image is complete and closed), and makes them durable
    /// as a flush would. Nothing for a store without a veil.
    pub fn lift_veil(&self) -> Result<(), DriverError> {
        let Some(veil) = self.veil() else {
            return Ok(());
        };
        let len = self.inner().len().into_result()?;
        for (offset, bytes) in veil.lift(len) {
            self.inner()
                .write_at(offset, RSlice::from_slice(&bytes))
                .into_result()?;
        }
        self.flush().into_result()
    }
    /// The veil over the store, while it is veiled.
    fn veil(&self) -> Option<&Veil> {
        let veil = match self {
            Store::File(f) => f.veil(),
            Store::Remote(r) => r.veil.as_deref(),
            Store::Null(_) => None,
        };
        veil.filter(|v| v.active())
    }
    /// Whether an image lock is held on the store.
    pub fn is_locked(&self) -> bool {
        matches!(self, Store::File(f) if f.is_locked())
    }
    /// Bytes the store occupies on disk.
    pub fn allocated(&self) -> Result<u64, DriverError> {
        self.allocated_size().into_result()
    }
    /// True for a null device without `read-zeroes`, whose blocks qemu
    /// reports as neither data nor zeros.
    pub fn reports_nothing(&self) -> bool {
        matches!(self, Store::Null(n) if n.reports_nothing())
    }
    /// Whether the store is a far network store ([`RemoteStore::is_far`]).
    pub fn is_far(&self) -> bool {
        matches!(self, Store::Remote(r) if r.is_far())
    }
    /// Reads through the veil, if there is one.
    fn read_veiled(&self, offset: u64, mut buf: RSliceMut<'_, u8>) -> RResult<u64, DriverError> {
        let Some(veil) = self.veil() else {
            return self.inner().read_at(offset, buf);
        };
        let got = self
            .inner()
            .read_at(offset, RSliceMut::from_mut_slice(buf.as_mut_slice()));
        if let RResult::ROk(got) = got {
            veil.read_over(offset, buf.as_mut_slice(), got);
        }
        got
    }
    fn inner(&self) -> &dyn ByteStore {
        match self {
            Store::File(f) => f,
            Store::Null(n) => n,
            Store::Remote(r) => &r.store,
        }
    }
}

/// A veiled store's reads and writes go through its veil (see [`veil`]).
impl ByteStore for Store {
    fn read_at(&self, offset: u64, buf: RSliceMut<'_, u8>) -> RResult<u64, DriverError> {
        let Store::Remote(remote) = self else {
            return self.read_veiled(offset, buf);
        };
        let started = Instant::now();
        let got = self.read_veiled(offset, buf);
        remote.timed(started.elapsed());
        got
    }
    fn write_at(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<(), DriverError> {
        match self.veil().and_then(|v| v.write_over(offset, &buf)) {
            Some(bytes) => self.inner().write_at(offset, RSlice::from_slice(&bytes)),
            None => self.inner().write_at(offset, buf),
        }
    }
    fn len(&self) -> RResult<u64, DriverError> {
        self.inner().len()
    }
    fn set_len(&self, len: u64, prealloc: Prealloc) -> RResult<(), DriverError> {
        if let Some(veil) = self.veil() {
            veil.zeroed(len, u64::MAX - len);
        }
        self.inner().set_len(len, prealloc)
    }
    fn flush(&self) -> RResult<(), DriverError> {
        self.inner().flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> RResult<(), DriverError> {
        if let Some(veil) = self.veil() {
            veil.zeroed(offset, len);
        }
        self.inner().write_zeroes(offset, len, punch)
    }
    fn run_at(&self, offset: u64, max: u64) -> RResult<StoreRun, DriverError> {
        self.inner().run_at(offset, max)
    }
    fn allocated_size(&self) -> RResult<u64, DriverError> {
        self.inner().allocated_size()
    }
    fn name(&self) -> RString {
        self.inner().name()
    }
    fn grow_densely(&self, dense: bool) {
        self.inner().grow_densely(dense)
    }
}
