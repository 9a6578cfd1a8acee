//! The stable ABI between the `qimg` host and its format drivers.
//!
//! A driver library is a `cdylib` that depends on this crate alone. It implements
//! [`DriverImpl`] and [`ImageImpl`] for its format (plain Rust traits with
//! `Result`s) and exports them with [`export_drivers!`]. This crate wraps them in
//! the `#[sabi_trait]` objects that cross the boundary ([`FormatDriver`],
//! [`Image`]), catching every panic on the way so a driver never unwinds into
//! the host.
//!
//! The host hands a driver byte stores ([`ByteStore`]) and services
//! ([`HostServices`]); a driver never opens a path by itself. Bulk data (buffers,
//! extents) crosses as native ABI types; descriptive data (info, check reports,
//! create options…) crosses as JSON of the serde types in [`schema`].
//!
//! Compatibility (see README.md): within a major version, a host loads every
//! driver built against the same or an earlier minor version; methods a driver
//! lacks are never called (the host checks [`ABI_VERSION`] or falls back to the
//! method's default). A driver built against a newer minor than the host is
//! refused by name. Methods and prefix fields are only ever added at the end.
#![allow(non_local_definitions, non_camel_case_types)]
#![warn(missing_docs)]

pub mod error;
pub mod guard;
pub mod io;
pub mod protocol;
pub mod schema;
pub mod size;
pub mod traits;
pub mod types;

pub use error::{DriverError, ErrorKind};
pub use guard::{DriverImpl, ImageImpl};
pub use io::{BackingExt, HostExt, StoreExt};
pub use protocol::{ProtocolImpl, StoreImpl};
pub use traits::{
    BackingReader, BackingReader_TO, ByteStore, ByteStore_TO, FormatDriver, FormatDriver_TO,
    HostServices, HostServices_TO, Image, Image_TO, ProtocolDriver, ProtocolDriver_TO,
};
pub use types::*;

pub use abi_stable;

use abi_stable::{
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RArc, RBox, RResult, RStr, RVec},
    StableAbi,
};

/// Version of the driver ABI defined by this crate: major << 16 | minor, the
/// same major and minor as this crate's package version (a unit test keeps
/// them equal). A host refuses a library whose `abi_version` differs in the
/// major part or is newer in the minor part.
///
/// 1.1 added `HostServices::open_option`; 1.2 `FormatDriver::amend_options`;
/// 1.3 the fault-reporting `describe`, `try_probe`, `try_virtual_size`,
/// `try_store_name`, and the root module's `try_drivers` and `package`; 1.4
/// `Image::reserve` and the end-of-copy empty `write_compressed`; 1.5 the
/// capability [`caps::USER_LOCKS`]; 1.6 protocol drivers ([`ProtocolDriver`],
/// the root module's `try_protocols`); 1.7 `ByteStore::grow_densely` and
/// `ProtocolDriver::open_with_secrets`.
pub const ABI_VERSION: u32 = 1 << 16 | 7;

/// The major part of [`ABI_VERSION`].
pub const ABI_MAJOR: u32 = ABI_VERSION >> 16;
/// The minor part of [`ABI_VERSION`].
pub const ABI_MINOR: u32 = ABI_VERSION & 0xffff;

/// A driver object as it crosses the boundary.
pub type FormatDriverBox = FormatDriver_TO<'static, RBox<()>>;
/// An open image as it crosses the boundary; shared by many threads.
pub type ImageArc = Image_TO<'static, RArc<()>>;
/// A byte store handed from the host to a driver.
pub type ByteStoreBox = ByteStore_TO<'static, RBox<()>>;
/// The host's services for one image.
pub type HostServicesBox = HostServices_TO<'static, RBox<()>>;
/// Read-only view of a backing image, supplied by the host.
pub type BackingBox = BackingReader_TO<'static, RBox<()>>;
/// A protocol driver object as it crosses the boundary (ABI 1.6).
pub type ProtocolDriverBox = ProtocolDriver_TO<'static, RBox<()>>;

/// The root module every driver library exports (see [`export_drivers!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = DriverLibRef)))]
#[sabi(missing_field(panic))]
pub struct DriverLib {
    /// [`ABI_VERSION`] the library was built against.
    pub abi_version: u32,
    /// Returns every driver the library provides (an empty list if building
    /// them panicked; see `try_drivers`).
    #[sabi(last_prefix_field)]
    pub drivers: extern "C" fn() -> RVec<FormatDriverBox>,
    /// Returns every driver the library provides, or why it could not
    /// (ABI 1.3).
    #[sabi(missing_field(option))]
    pub try_drivers: extern "C" fn() -> RResult<RVec<FormatDriverBox>, DriverError>,
    /// The driver crate's package name and version, `name version` (ABI 1.3).
    #[sabi(missing_field(option))]
    pub package: RStr<'static>,
    /// Returns every protocol driver the library provides, or why it could
    /// not (ABI 1.6).
    #[sabi(missing_field(option))]
    pub try_protocols: extern "C" fn() -> RResult<RVec<ProtocolDriverBox>, DriverError>,
}

impl RootModule for DriverLibRef {
    abi_stable::declare_root_module_statics! {DriverLibRef}
    const BASE_NAME: &'static str = "qimg_driver";
    const NAME: &'static str = "qimg_driver";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The symbol abi_stable looks for in a library (its `ROOT_MODULE_LOADER_NAME`);
/// [`export_drivers!`] spells it literally because `#[export_name]` takes only a
/// literal. A unit test keeps the two equal.
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Exports a library of format drivers only: `export_drivers!(A, B)` is
/// [`export_plugins!`]`(formats: [A, B], protocols: [])`.
///
/// ```ignore
/// qimg_driver_api::export_drivers!(RawDriver);
/// ```
#[macro_export]
macro_rules! export_drivers {
    ($($driver:expr),+ $(,)?) => {
        $crate::export_plugins!(formats: [$($driver),+], protocols: []);
    };
}

/// Exports a driver library's root module.
///
/// ```ignore
/// qimg_driver_api::export_plugins!(formats: [], protocols: [NbdProtocol]);
/// ```
/// `formats` are expressions whose types implement [`DriverImpl`],
/// `protocols` ones whose types implement [`ProtocolImpl`]. This is what
/// abi_stable's `#[export_root_module]` generates, spelled through this crate
/// so that a driver needs no direct dependency on abi_stable. It records the
/// driver crate's name and version for the host's driver listing, and refuses
/// to compile a driver built with `panic = "abort"`, whose panics could not
/// be turned into errors.
#[macro_export]
macro_rules! export_plugins {
    (formats: [$($driver:expr),* $(,)?], protocols: [$($protocol:expr),* $(,)?] $(,)?) => {
        // A panic in a driver built with `panic = "abort"` would kill the
        // host with no message and leave half-written files behind.
        #[cfg(panic = "abort")]
        ::core::compile_error!(
            "qimg drivers must be built with panic = \"unwind\": set it in the \
             [profile.*] sections of the driver's Cargo.toml (driver-api turns \
             driver panics into errors, which abort makes impossible)"
        );

        /// The library's root module, built once by the loader.
        pub fn qimg_driver_root_module() -> $crate::DriverLibRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            extern "C" fn try_drivers() -> $crate::abi_stable::std_types::RResult<
                $crate::abi_stable::std_types::RVec<$crate::FormatDriverBox>,
                $crate::DriverError,
            > {
                $crate::guard::install_quiet_panic_hook();
                $crate::guard::catch(|| {
                    #[allow(unused_mut)]
                    let mut list = $crate::abi_stable::std_types::RVec::new();
                    $( list.push($crate::guard::driver_box($driver)); )*
                    Ok(list)
                })
            }
            extern "C" fn drivers() -> $crate::abi_stable::std_types::RVec<$crate::FormatDriverBox> {
                try_drivers().into_result().unwrap_or_default()
            }
            extern "C" fn try_protocols() -> $crate::abi_stable::std_types::RResult<
                $crate::abi_stable::std_types::RVec<$crate::ProtocolDriverBox>,
                $crate::DriverError,
            > {
                $crate::guard::install_quiet_panic_hook();
                $crate::guard::catch(|| {
                    #[allow(unused_mut)]
                    let mut list = $crate::abi_stable::std_types::RVec::new();
                    $( list.push($crate::protocol::protocol_box($protocol)); )*
                    Ok(list)
                })
            }
            $crate::DriverLib {
                abi_version: $crate::ABI_VERSION,
                drivers,
                try_drivers,
                package: $crate::abi_stable::std_types::RStr::from_str(::core::concat!(
                    ::core::env!("CARGO_PKG_NAME"),
                    " ",
                    ::core::env!("CARGO_PKG_VERSION")
                )),
                try_protocols,
            }
            .leak_into_prefix()
        }

        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static QIMG_DRIVER_LIB_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(qimg_driver_root_module)
            }
            // SAFETY: this is the constructor abi_stable's #[export_root_module]
            // emits: `erased_module` returns the module type given here.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::DriverLibRef>(
                    erased_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn abi_version_is_the_package_version() {
        let mut parts = env!("CARGO_PKG_VERSION").split('.');
        let major: u32 = parts.next().unwrap().parse().unwrap();
        let minor: u32 = parts.next().unwrap().parse().unwrap();
        assert_eq!((super::ABI_MAJOR, super::ABI_MINOR), (major, minor));
    }

    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(
            super::ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
