//! Protocol drivers in plain Rust (ABI 1.6): [`ProtocolImpl`] opens stores
//! that implement [`StoreImpl`]; [`protocol_box`] and [`store_box`] wrap them
//! in the ABI objects with a panic guard around every call, as
//! [`crate::guard`] does for format drivers.

use crate::guard::{catch_named, catch_or, install_quiet_panic_hook};
use crate::traits::{ByteStore, ByteStore_TO, ProtocolDriver, ProtocolDriver_TO};
use crate::{ByteStoreBox, DriverError, Prealloc, ProtocolDriverBox, StoreRun};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RBox, RResult, RSlice, RSliceMut, RStr, RString};
use serde_json::{Map, Value};

/// A protocol driver, in plain Rust. Wrapped by [`protocol_box`].
pub trait ProtocolImpl: Send + Sync + 'static {
    /// The protocol's name as qemu names its driver (`nbd`).
    fn name(&self) -> &str;
    /// One-line description.
    fn description(&self) -> &str;
    /// [`crate::proto_caps`] bits.
    fn capabilities(&self) -> u64;
    /// The URI schemes the driver opens.
    fn schemes(&self) -> Vec<String>;
    /// The options a filename of one of [`ProtocolImpl::schemes`] stands for.
    fn parse_filename(&self, filename: &str) -> Result<Map<String, Value>, DriverError>;
    /// The name qemu gives the node `options` describe.
    fn canonical_name(&self, options: &Map<String, Value>) -> Result<String, DriverError>;
    /// Opens the store `options` describe ([`crate::proto_open`] flags).
    fn open(
        &self,
        options: &Map<String, Value>,
        flags: u32,
    ) -> Result<Box<dyn StoreImpl>, DriverError>;
    /// Opens the store `options` describe, given the texts of the secrets
    /// they name, by id (see [`ProtocolDriver::open_with_secrets`]). The
    /// default ignores them (ABI 1.7).
    fn open_with_secrets(
        &self,
        options: &Map<String, Value>,
        flags: u32,
        secrets: &Map<String, Value>,
    ) -> Result<Box<dyn StoreImpl>, DriverError> {
        let _ = secrets;
        self.open(options, flags)
    }
}

/// A byte store a protocol driver opened, in plain Rust. Wrapped by
/// [`store_box`]; the methods mean what [`ByteStore`]'s do.
#[allow(clippy::len_without_is_empty)]
pub trait StoreImpl: Send + Sync + 'static {
    /// Reads up to `buf.len()` bytes at `offset`; returns the count (short
    /// only at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, DriverError>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError>;
    /// The length in bytes.
    fn len(&self) -> Result<u64, DriverError>;
    /// Changes the length.
    fn set_len(&self, len: u64, prealloc: Prealloc) -> Result<(), DriverError>;
    /// Makes written data durable.
    fn flush(&self) -> Result<(), DriverError>;
    /// Makes a range read as zeros; with `punch` it may be deallocated.
    fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> Result<(), DriverError>;
    /// The data-or-hole run at `offset`, at most `max` bytes long.
    fn run_at(&self, offset: u64, max: u64) -> Result<StoreRun, DriverError>;
    /// Bytes the store occupies, where the protocol can tell.
    fn allocated_size(&self) -> Result<u64, DriverError> {
        Err(DriverError::unsupported("allocated size unavailable"))
    }
    /// The store's name, as `map` prints it.
    fn name(&self) -> String;
}

/// Wraps a [`ProtocolImpl`] for export; used by [`crate::export_plugins!`].
pub fn protocol_box<P: ProtocolImpl>(protocol: P) -> ProtocolDriverBox {
    install_quiet_panic_hook();
    let name = catch_or(String::new(), || protocol.name().to_string());
    ProtocolDriver_TO::from_value(GuardedProtocol { protocol, name }, TD_Opaque)
}

/// Wraps a [`StoreImpl`] of the protocol named `protocol` as the ABI's store.
pub fn store_box(protocol: &str, store: Box<dyn StoreImpl>) -> ByteStoreBox {
    let guarded = GuardedStore {
        store,
        protocol: protocol.to_string(),
    };
    ByteStore_TO::from_ptr(RBox::new(guarded), TD_Opaque)
}

/// Parses a JSON object the host passed.
fn options_of(text: &str) -> Result<Map<String, Value>, DriverError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(DriverError::invalid_argument(
            "protocol options must be a JSON object",
        )),
    }
}

struct GuardedProtocol<P> {
    protocol: P,
    /// The driver's name, for panic messages.
    name: String,
}

impl<P: ProtocolImpl> ProtocolDriver for GuardedProtocol<P> {
    fn name(&self) -> RString {
        catch_or(RString::new(), || self.protocol.name().into())
    }
    fn description(&self) -> RString {
        catch_or(RString::new(), || self.protocol.description().into())
    }
    fn capabilities(&self) -> u64 {
        catch_or(0, || self.protocol.capabilities())
    }
    fn schemes(&self) -> RString {
        catch_or(RString::new(), || self.protocol.schemes().join("\n").into())
    }
    fn parse_filename(&self, filename: RStr<'_>) -> RResult<RString, DriverError> {
        catch_named(&self.name, || {
            let map = self.protocol.parse_filename(filename.as_str())?;
            Ok(Value::Object(map).to_string().into())
        })
    }
    fn canonical_name(&self, options: RStr<'_>) -> RResult<RString, DriverError> {
        catch_named(&self.name, || {
            let map = options_of(options.as_str())?;
            self.protocol.canonical_name(&map).map(RString::from)
        })
    }
    fn open(&self, options: RStr<'_>, flags: u32) -> RResult<ByteStoreBox, DriverError> {
        catch_named(&self.name, || {
            let map = options_of(options.as_str())?;
            let store = self.protocol.open(&map, flags)?;
            Ok(store_box(&self.name, store))
        })
    }
    fn open_with_secrets(
        &self,
        options: RStr<'_>,
        flags: u32,
        secrets: RStr<'_>,
    ) -> RResult<ByteStoreBox, DriverError> {
        catch_named(&self.name, || {
            let map = options_of(options.as_str())?;
            let secrets = options_of(secrets.as_str())?;
            let store = self.protocol.open_with_secrets(&map, flags, &secrets)?;
            Ok(store_box(&self.name, store))
        })
    }
}

struct GuardedStore {
    store: Box<dyn StoreImpl>,
    /// The protocol's name, for panic messages.
    protocol: String,
}

impl GuardedStore {
    fn guard<T>(&self, f: impl FnOnce() -> Result<T, DriverError>) -> RResult<T, DriverError> {
        catch_named(&self.protocol, f)
    }
}

impl ByteStore for GuardedStore {
    fn read_at(&self, offset: u64, mut buf: RSliceMut<'_, u8>) -> RResult<u64, DriverError> {
        self.guard(|| {
            self.store
                .read_at(offset, buf.as_mut_slice())
                .map(|n| n as u64)
        })
    }
    fn write_at(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<(), DriverError> {
        self.guard(|| self.store.write_at(offset, buf.as_slice()))
    }
    fn len(&self) -> RResult<u64, DriverError> {
        self.guard(|| self.store.len())
    }
    fn set_len(&self, len: u64, prealloc: Prealloc) -> RResult<(), DriverError> {
        self.guard(|| self.store.set_len(len, prealloc))
    }
    fn flush(&self) -> RResult<(), DriverError> {
        self.guard(|| self.store.flush())
    }
    fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> RResult<(), DriverError> {
        self.guard(|| self.store.write_zeroes(offset, len, punch))
    }
    fn run_at(&self, offset: u64, max: u64) -> RResult<StoreRun, DriverError> {
        self.guard(|| self.store.run_at(offset, max))
    }
    fn allocated_size(&self) -> RResult<u64, DriverError> {
        self.guard(|| self.store.allocated_size())
    }
    fn name(&self) -> RString {
        catch_or(RString::new(), || self.store.name().into())
    }
}
