//! Test fixture: a format driver ("panicky") that panics wherever the
//! environment variable `TESTDRV_PANIC` says (a comma-separated list of entry
//! points: `drivers`, `name`, `capabilities`, `probe`, `virtual_size`,
//! `store_name`, `create`, `open`, `read`, `write`, `write_zeroes`,
//! `block_status`, `info`, `flush`). With `TESTDRV_ESCAPE` set it plays a
//! parser bug that reaches out of the process at open: `read:PATH` reads a
//! host file, `exec:PATH` runs a program, `connect:ADDR` opens a TCP
//! connection; the open then fails with what happened (`escaped: ...` or
//! `blocked: ...`). Elsewhere it works: its images are the
//! store's bytes one to one, like raw, and it probes files whose name ends in
//! `.panicky`. Built as `libtestdrv_panicky.so`, a name qimg never loads
//! unless a manifest lists it.

use qimg_driver_api::schema::{CreateOption, CreateRequest, ImageInfo, OptionType};
use qimg_driver_api::{
    caps, extent_flags, ByteStoreBox, DriverError, DriverImpl, Extent, HostServicesBox, ImageImpl,
    Prealloc, StoreExt,
};

qimg_driver_api::export_drivers!(panicky());

/// Panics with "`point` panicked" if `TESTDRV_PANIC` lists `point`.
fn maybe_panic(point: &str) {
    let listed =
        std::env::var("TESTDRV_PANIC").is_ok_and(|list| list.split(',').any(|p| p == point));
    if listed {
        panic!("{point} panicked");
    }
}

/// Builds the driver (panicking here if asked to: a library whose driver list
/// cannot be built).
fn panicky() -> Panicky {
    maybe_panic("drivers");
    Panicky
}

/// Tries one way out of the process (see the crate documentation) and says
/// whether it worked.
fn try_escape(what: &str) -> String {
    let (how, target) = what.split_once(':').unwrap_or((what, ""));
    let result = match how {
        "read" => std::fs::read(target).map(|b| format!("read {} bytes", b.len())),
        "exec" => std::process::Command::new(target)
            .status()
            .map(|s| format!("ran it: {s}")),
        "connect" => std::net::TcpStream::connect(target).map(|_| "connected".to_string()),
        _ => Ok("nothing tried".to_string()),
    };
    match result {
        Ok(done) => format!("escaped: {what}: {done}"),
        Err(e) => format!("blocked: {what}: {e}"),
    }
}

/// The panicking driver.
pub struct Panicky;

impl DriverImpl for Panicky {
    fn name(&self) -> &str {
        maybe_panic("name");
        "panicky"
    }
    fn description(&self) -> &str {
        "panics on purpose"
    }
    fn capabilities(&self) -> u64 {
        maybe_panic("capabilities");
        caps::CREATE | caps::WRITE | caps::RESIZE | caps::ZERO_INIT
    }
    fn probe(&self, _head: &[u8], filename: &str) -> i32 {
        maybe_panic("probe");
        if filename.ends_with(".panicky") {
            100
        } else {
            0
        }
    }
    fn create_options(&self) -> Vec<CreateOption> {
        vec![CreateOption {
            name: "size".into(),
            kind: OptionType::Size,
            help: "Virtual disk size".into(),
            default: None,
        }]
    }
    fn create(
        &self,
        store: ByteStoreBox,
        _host: HostServicesBox,
        request: CreateRequest,
    ) -> Result<(), DriverError> {
        maybe_panic("create");
        store.set_size(request.size, Prealloc::OFF)
    }
    fn open(
        &self,
        store: ByteStoreBox,
        _host: HostServicesBox,
        _flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        maybe_panic("open");
        if let Ok(escape) = std::env::var("TESTDRV_ESCAPE") {
            return Err(DriverError::invalid_image(try_escape(&escape)));
        }
        Ok(Box::new(PanickyImage { store }))
    }
}

struct PanickyImage {
    store: ByteStoreBox,
}

impl ImageImpl for PanickyImage {
    fn virtual_size(&self) -> u64 {
        maybe_panic("virtual_size");
        self.store.size().unwrap_or(0)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        maybe_panic("read");
        self.store.read_or_zero_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        maybe_panic("write");
        self.store.write_all_at(offset, buf)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _flags: u32) -> Result<(), DriverError> {
        maybe_panic("write_zeroes");
        self.store.zero_range(offset, len, false)
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        maybe_panic("block_status");
        Ok(vec![Extent {
            offset,
            length: len,
            flags: extent_flags::DATA | extent_flags::ALLOCATED | extent_flags::OFFSET_VALID,
            store: 0,
            host_offset: offset,
        }])
    }
    fn store_name(&self, _index: u32) -> String {
        maybe_panic("store_name");
        self.store.display_name()
    }
    fn flush(&self) -> Result<(), DriverError> {
        maybe_panic("flush");
        self.store.sync()
    }
    fn info(&self) -> Result<ImageInfo, DriverError> {
        maybe_panic("info");
        Ok(ImageInfo::default())
    }
    fn resize(&self, new_size: u64, prealloc: Prealloc, _shrink: bool) -> Result<(), DriverError> {
        self.store.set_size(new_size, prealloc)
    }
}
