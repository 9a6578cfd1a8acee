//! Panic-safe adapters between a driver's plain Rust code and the ABI traits.
//!
//! A panic that reaches an `extern "C"` shim aborts the whole process, so every
//! call that crosses the boundary runs under [`catch`]: a panic becomes a
//! [`DriverError`] of kind [`ErrorKind::PANIC`] that names the driver. An
//! image whose driver panicked is poisoned: its state may be half-updated, so
//! every later call fails with the first panic's error (methods without a
//! `Result` answer a neutral value; their `try_` twins fail). Drivers
//! implement [`DriverImpl`] and [`ImageImpl`]; [`driver_box`] wraps them.

use crate::schema::{
    CheckReport, CheckRequest, CreateOption, CreateRequest, ImageInfo, MeasureRequest,
    MeasureResult, MetadataRequest,
};
use crate::traits::{FormatDriver, FormatDriver_TO, Image, Image_TO};
use crate::{
    ByteStoreBox, DriverError, ErrorKind, Extent, FormatDriverBox, HostServicesBox, ImageArc,
    Prealloc,
};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec};
use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the default panic hook (which prints to stderr) with one that
/// records the message and location for [`catch`] to report as an error.
/// Each shared library has its own standard library, so this affects only the
/// library that calls it.
pub fn install_quiet_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let text = match info.location() {
                Some(at) => format!(
                    "{} at {}:{}",
                    payload_text(info.payload()),
                    at.file(),
                    at.line()
                ),
                None => payload_text(info.payload()),
            };
            LAST_PANIC.with(|slot| *slot.borrow_mut() = Some(text));
        }));
    });
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs `f`, turning a panic into a [`DriverError`] of kind `PANIC`.
pub fn catch<T>(f: impl FnOnce() -> Result<T, DriverError>) -> RResult<T, DriverError> {
    catch_named("", f)
}

/// Runs `f`, turning a panic into a [`DriverError`] of kind `PANIC` whose
/// message names `driver` (when not empty).
pub fn catch_named<T>(
    driver: &str,
    f: impl FnOnce() -> Result<T, DriverError>,
) -> RResult<T, DriverError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => RResult::ROk(value),
        Ok(Err(e)) => RResult::RErr(e),
        Err(payload) => {
            let text = LAST_PANIC
                .with(|slot| slot.borrow_mut().take())
                .unwrap_or_else(|| payload_text(payload.as_ref()));
            let message = if driver.is_empty() {
                format!("internal error in driver: {text}")
            } else {
                format!("internal error in driver '{driver}': {text}")
            };
            RResult::RErr(DriverError::new(ErrorKind::PANIC, message))
        }
    }
}

/// Runs `f`, returning `fallback` if it panics (for methods without a `Result`).
pub fn catch_or<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<RString, DriverError> {
    serde_json::to_string(value)
        .map(RString::from)
        .map_err(|e| DriverError::new(ErrorKind::OTHER, format!("cannot encode reply: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, DriverError> {
    serde_json::from_str(text)
        .map_err(|e| DriverError::invalid_argument(format!("malformed request: {e}")))
}

/// A format driver, in plain Rust. Wrapped by [`driver_box`].
pub trait DriverImpl: Send + Sync + 'static {
    /// Format name as qemu-img spells it.
    fn name(&self) -> &str;
    /// One-line description.
    fn description(&self) -> &str;
    /// [`crate::caps`] bits.
    fn capabilities(&self) -> u64;
    /// Probe score for the first bytes of a file (0 = not this format).
    fn probe(&self, head: &[u8], filename: &str) -> i32;
    /// Options `create -o` accepts.
    fn create_options(&self) -> Vec<CreateOption>;
    /// Creates an image in an empty store.
    fn create(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        request: CreateRequest,
    ) -> Result<(), DriverError>;
    /// Opens an image.
    fn open(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError>;
    /// Measures the space an image of this format needs.
    fn measure(
        &self,
        request: MeasureRequest,
        allocated: &[Extent],
    ) -> Result<MeasureResult, DriverError> {
        let _ = (request, allocated);
        Err(DriverError::unsupported(format!(
            "Format driver '{}' does not support measure",
            self.name()
        )))
    }
    /// Options `amend -o` accepts (none unless the driver amends).
    fn amend_options(&self) -> Vec<CreateOption> {
        Vec::new()
    }
}

/// An open image, in plain Rust. Only the first seven methods are mandatory;
/// the rest default to "unsupported" and are called only if the driver's
/// capabilities advertise them.
pub trait ImageImpl: Send + Sync + 'static {
    /// Guest size in bytes.
    fn virtual_size(&self) -> u64;
    /// Reads guest data, filling all of `buf` (see [`crate::Image::read_at`]).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError>;
    /// Writes guest data.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError>;
    /// Makes a range read as zeros.
    fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> Result<(), DriverError>;
    /// Allocation status (see [`crate::Image::block_status`]).
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError>;
    /// Makes writes durable.
    fn flush(&self) -> Result<(), DriverError>;
    /// Format-level facts for `info`.
    fn info(&self) -> Result<ImageInfo, DriverError>;
    /// Deallocates the whole clusters of a range (see [`crate::Image::discard`]);
    /// by default does nothing.
    fn discard(&self, offset: u64, len: u64) -> Result<(), DriverError> {
        let _ = (offset, len);
        Ok(())
    }
    /// Name of the store with the given index.
    fn store_name(&self, index: u32) -> String {
        let _ = index;
        String::new()
    }
    /// Changes the guest size.
    fn resize(&self, new_size: u64, prealloc: Prealloc, shrink: bool) -> Result<(), DriverError> {
        let _ = (new_size, prealloc, shrink);
        Err(DriverError::unsupported(
            "Image format driver does not support resize",
        ))
    }
    /// Writes a compressed cluster.
    fn write_compressed(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        let _ = (offset, buf);
        Err(DriverError::unsupported(
            "Compression is not supported for this drive",
        ))
    }
    /// Checks (and repairs) the image.
    fn check(&self, request: CheckRequest) -> Result<CheckReport, DriverError> {
        let _ = request;
        Err(DriverError::unsupported(
            "This image format does not support checks",
        ))
    }
    /// Snapshot, bitmap and amend operations; returns JSON.
    fn metadata(&self, request: MetadataRequest) -> Result<serde_json::Value, DriverError> {
        let _ = request;
        Err(DriverError::unsupported(
            "Operation not supported by this image format",
        ))
    }
    /// Records a new backing file in the header.
    fn set_backing(&self, name: Option<&str>, format: Option<&str>) -> Result<(), DriverError> {
        let _ = (name, format);
        Err(DriverError::unsupported("Operation not supported"))
    }
    /// Compresses one cluster without writing it (images written in order).
    fn compress_cluster(&self, offset: u64, buf: &[u8]) -> Result<Vec<u8>, DriverError> {
        let _ = (offset, buf);
        Err(DriverError::unsupported(
            "Compression is not supported for this drive",
        ))
    }
    /// Writes a cluster prepared by `compress_cluster`, in ascending order.
    fn write_prepared(&self, offset: u64, data: &[u8]) -> Result<(), DriverError> {
        let _ = (offset, data);
        Err(DriverError::unsupported(
            "Compression is not supported for this drive",
        ))
    }
    /// Closes cleanly.
    fn close(&self) -> Result<(), DriverError> {
        self.flush()
    }
    /// Allocates the host space a write of the range would (see
    /// [`crate::Image::reserve`]); by default reserves nothing and returns
    /// false.
    fn reserve(&self, offset: u64, len: u64) -> Result<bool, DriverError> {
        let _ = (offset, len);
        Ok(false)
    }
}

/// Wraps a [`DriverImpl`] for export; used by [`crate::export_drivers!`].
pub fn driver_box<D: DriverImpl>(driver: D) -> FormatDriverBox {
    install_quiet_panic_hook();
    let name = catch_or(String::new(), || driver.name().to_string());
    FormatDriver_TO::from_value(GuardedDriver { driver, name }, TD_Opaque)
}

/// Wraps an [`ImageImpl`] as the ABI's shared image handle.
pub fn image_arc(image: Box<dyn ImageImpl>) -> ImageArc {
    named_image_arc("", image)
}

/// Wraps an [`ImageImpl`] of the driver named `driver` as the ABI's shared
/// image handle; panic messages name the driver.
pub fn named_image_arc(driver: &str, image: Box<dyn ImageImpl>) -> ImageArc {
    let guarded = GuardedImage {
        image,
        driver: driver.to_string(),
        poison: Poison::default(),
    };
    Image_TO::from_ptr(RArc::new(guarded), TD_Opaque)
}

struct GuardedDriver<D> {
    driver: D,
    /// The driver's name, for panic messages (asked once, when wrapped).
    name: String,
}

impl<D: DriverImpl> GuardedDriver<D> {
    fn catch<T>(&self, f: impl FnOnce() -> Result<T, DriverError>) -> RResult<T, DriverError> {
        catch_named(&self.name, f)
    }
    fn describe_all(&self) -> Result<crate::schema::DriverDescription, DriverError> {
        Ok(crate::schema::DriverDescription {
            name: self.driver.name().to_string(),
            description: self.driver.description().to_string(),
            capabilities: self.driver.capabilities(),
            create_options: self.driver.create_options(),
            amend_options: self.driver.amend_options(),
        })
    }
}

impl<D: DriverImpl> FormatDriver for GuardedDriver<D> {
    fn name(&self) -> RString {
        catch_or(RString::new(), || self.driver.name().into())
    }
    fn description(&self) -> RString {
        catch_or(RString::new(), || self.driver.description().into())
    }
    fn capabilities(&self) -> u64 {
        catch_or(0, || self.driver.capabilities())
    }
    fn probe(&self, head: RSlice<'_, u8>, filename: RStr<'_>) -> i32 {
        catch_or(0, || self.driver.probe(head.as_slice(), filename.as_str()))
    }
    fn create_options(&self) -> RString {
        catch_or(RString::from("[]"), || {
            to_json(&self.driver.create_options()).unwrap_or_else(|_| "[]".into())
        })
    }
    fn create(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        request: RStr<'_>,
    ) -> RResult<(), DriverError> {
        self.catch(|| {
            self.driver
                .create(store, host, from_json(request.as_str())?)
        })
    }
    fn open(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        flags: u32,
    ) -> RResult<ImageArc, DriverError> {
        self.catch(|| {
            self.driver
                .open(store, host, flags)
                .map(|image| named_image_arc(&self.name, image))
        })
    }
    fn measure(
        &self,
        request: RStr<'_>,
        allocated: RSlice<'_, Extent>,
    ) -> RResult<RString, DriverError> {
        self.catch(|| {
            to_json(
                &self
                    .driver
                    .measure(from_json(request.as_str())?, allocated.as_slice())?,
            )
        })
    }
    fn amend_options(&self) -> RString {
        catch_or(RString::from("[]"), || {
            to_json(&self.driver.amend_options()).unwrap_or_else(|_| "[]".into())
        })
    }
    fn describe(&self) -> RResult<RString, DriverError> {
        self.catch(|| to_json(&self.describe_all()?))
    }
    fn try_probe(&self, head: RSlice<'_, u8>, filename: RStr<'_>) -> RResult<i32, DriverError> {
        self.catch(|| Ok(self.driver.probe(head.as_slice(), filename.as_str())))
    }
}

/// Remembers the first panic of an image's driver, so that every later
/// call can be refused: the image's state may be half-updated. Checking it
/// costs one atomic load until a panic happens (it sits on every I/O call).
/// The host keeps one too, for drivers whose own guard predates poisoning.
#[derive(Default)]
pub struct Poison {
    /// Set once `first` holds the panic.
    set: AtomicBool,
    /// The first panic's error.
    first: Mutex<Option<DriverError>>,
}

impl Poison {
    /// The first panic's error, if the driver has panicked.
    pub fn first(&self) -> Option<DriverError> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    /// Records `result`'s error if it is a panic (the first one stays).
    pub fn record<T>(&self, result: &Result<T, DriverError>) {
        if let Err(e) = result {
            if e.kind == ErrorKind::PANIC {
                let mut slot = self.first.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| e.clone());
                self.set.store(true, Ordering::Release);
            }
        }
    }
}

struct GuardedImage {
    image: Box<dyn ImageImpl>,
    /// The driver's name, for panic messages.
    driver: String,
    /// The first panic, once the driver panicked.
    poison: Poison,
}

impl GuardedImage {
    /// Runs `f` unless the image is poisoned; a panic poisons it.
    fn guard<T>(&self, f: impl FnOnce() -> Result<T, DriverError>) -> RResult<T, DriverError> {
        if let Some(first) = self.poison.first() {
            return RResult::RErr(DriverError::new(
                ErrorKind::PANIC,
                format!("image unusable after an earlier fault: {}", first.message),
            ));
        }
        let result = catch_named(&self.driver, f).into_result();
        self.poison.record(&result);
        result.into()
    }
}

impl Image for GuardedImage {
    fn virtual_size(&self) -> u64 {
        self.try_virtual_size().into_result().unwrap_or(0)
    }
    fn read_at(&self, offset: u64, mut buf: RSliceMut<'_, u8>) -> RResult<(), DriverError> {
        self.guard(|| self.image.read_at(offset, buf.as_mut_slice()))
    }
    fn write_at(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<(), DriverError> {
        self.guard(|| self.image.write_at(offset, buf.as_slice()))
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> RResult<(), DriverError> {
        self.guard(|| self.image.write_zeroes(offset, len, flags))
    }
    fn discard(&self, offset: u64, len: u64) -> RResult<(), DriverError> {
        self.guard(|| self.image.discard(offset, len))
    }
    fn block_status(&self, offset: u64, len: u64) -> RResult<RVec<Extent>, DriverError> {
        self.guard(|| self.image.block_status(offset, len).map(RVec::from))
    }
    fn flush(&self) -> RResult<(), DriverError> {
        self.guard(|| self.image.flush())
    }
    fn info(&self) -> RResult<RString, DriverError> {
        self.guard(|| to_json(&self.image.info()?))
    }
    fn store_name(&self, index: u32) -> RString {
        self.try_store_name(index).into_result().unwrap_or_default()
    }
    fn resize(&self, new_size: u64, prealloc: Prealloc, shrink: bool) -> RResult<(), DriverError> {
        self.guard(|| self.image.resize(new_size, prealloc, shrink))
    }
    fn write_compressed(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<(), DriverError> {
        self.guard(|| self.image.write_compressed(offset, buf.as_slice()))
    }
    fn check(&self, request: RStr<'_>) -> RResult<RString, DriverError> {
        self.guard(|| to_json(&self.image.check(from_json(request.as_str())?)?))
    }
    fn metadata(&self, request: RStr<'_>) -> RResult<RString, DriverError> {
        self.guard(|| to_json(&self.image.metadata(from_json(request.as_str())?)?))
    }
    fn set_backing(
        &self,
        name: ROption<RStr<'_>>,
        format: ROption<RStr<'_>>,
    ) -> RResult<(), DriverError> {
        self.guard(|| {
            self.image.set_backing(
                name.into_option().map(|s| s.as_str()),
                format.into_option().map(|s| s.as_str()),
            )
        })
    }
    fn compress_cluster(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<RVec<u8>, DriverError> {
        self.guard(|| {
            self.image
                .compress_cluster(offset, buf.as_slice())
                .map(RVec::from)
        })
    }
    fn write_prepared(&self, offset: u64, data: RSlice<'_, u8>) -> RResult<(), DriverError> {
        self.guard(|| self.image.write_prepared(offset, data.as_slice()))
    }
    fn close(&self) -> RResult<(), DriverError> {
        self.guard(|| self.image.close())
    }
    fn try_virtual_size(&self) -> RResult<u64, DriverError> {
        self.guard(|| Ok(self.image.virtual_size()))
    }
    fn try_store_name(&self, index: u32) -> RResult<RString, DriverError> {
        self.guard(|| Ok(self.image.store_name(index).into()))
    }
    fn reserve(&self, offset: u64, len: u64) -> RResult<bool, DriverError> {
        self.guard(|| self.image.reserve(offset, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_turns_a_panic_into_an_error() {
        install_quiet_panic_hook();
        let result: RResult<(), DriverError> = catch(|| panic!("boom"));
        let err = result.into_result().unwrap_err();
        assert_eq!(err.kind, ErrorKind::PANIC);
        assert!(err.message.contains("boom"), "{}", err.message);
    }

    #[test]
    fn catch_passes_values_and_errors_through() {
        assert_eq!(catch(|| Ok(7)).into_result(), Ok(7));
        let e = DriverError::corrupt("bad");
        assert_eq!(catch::<()>(|| Err(e.clone())).into_result(), Err(e));
    }
}
