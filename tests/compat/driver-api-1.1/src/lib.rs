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
//! Compatibility rule: methods and prefix fields are only ever added at the end.
//! An older host accepts a newer driver; a newer host refuses an older driver.
#![allow(non_local_definitions, non_camel_case_types)]

pub mod error;
pub mod guard;
pub mod schema;
pub mod traits;
pub mod types;

pub use error::{DriverError, ErrorKind};
pub use guard::{DriverImpl, ImageImpl};
pub use traits::{
    BackingReader, BackingReader_TO, ByteStore, ByteStore_TO, FormatDriver, FormatDriver_TO,
    HostServices, HostServices_TO, Image, Image_TO,
};
pub use types::*;

pub use abi_stable;

use abi_stable::{
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RArc, RBox, RVec},
    StableAbi,
};

/// Version of the driver ABI defined by this crate. A host refuses a library whose
/// `abi_version` differs in the major part (the high 16 bits) or is newer in the
/// minor part (the low 16 bits: methods appended after a `last_prefix_field`).
///
/// 1.1 added `HostServices::open_option`.
pub const ABI_VERSION: u32 = 1 << 16 | 1;

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

/// The root module every driver library exports (see [`export_drivers!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = DriverLibRef)))]
#[sabi(missing_field(panic))]
pub struct DriverLib {
    /// [`ABI_VERSION`] the library was built against.
    pub abi_version: u32,
    /// Returns every driver the library provides.
    #[sabi(last_prefix_field)]
    pub drivers: extern "C" fn() -> RVec<FormatDriverBox>,
}

impl RootModule for DriverLibRef {
    abi_stable::declare_root_module_statics! {DriverLibRef}
    const BASE_NAME: &'static str = "qimg_driver";
    const NAME: &'static str = "qimg_driver";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Exports a driver library's root module.
///
/// ```ignore
/// qimg_driver_api::export_drivers!(RawDriver);
/// ```
/// Each argument is an expression whose type implements [`DriverImpl`].
/// The symbol abi_stable looks for in a library (its `ROOT_MODULE_LOADER_NAME`);
/// [`export_drivers!`] spells it literally because `#[export_name]` takes only a
/// literal. A unit test keeps the two equal.
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Exports a driver library's root module.
///
/// ```ignore
/// qimg_driver_api::export_drivers!(RawDriver);
/// ```
/// Each argument is an expression whose type implements [`DriverImpl`]. This is
/// what abi_stable's `#[export_root_module]` generates, spelled through this
/// crate so that a driver needs no direct dependency on abi_stable.
#[macro_export]
macro_rules! export_drivers {
    ($($driver:expr),+ $(,)?) => {
        /// The library's root module, built once by the loader.
        pub fn qimg_driver_root_module() -> $crate::DriverLibRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            extern "C" fn drivers() -> $crate::abi_stable::std_types::RVec<$crate::FormatDriverBox> {
                let built = ::std::panic::catch_unwind(|| {
                    let mut list = $crate::abi_stable::std_types::RVec::new();
                    $( list.push($crate::guard::driver_box($driver)); )+
                    list
                });
                built.unwrap_or_default()
            }
            $crate::DriverLib { abi_version: $crate::ABI_VERSION, drivers }.leak_into_prefix()
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
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(
            super::ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
