//! Test fixture: a library whose root module claims a driver ABI this qimg
//! must refuse with a clear message: the next major version, or with
//! `TESTDRV_ABI=minor` in the environment the next minor version (a library
//! that may call host services this qimg lacks). Spelled out by hand because
//! `export_drivers!` always records the ABI it was built against.

use qimg_driver_api::abi_stable::library::{CheckTypeLayout, LibHeader, RootModuleResult};
use qimg_driver_api::abi_stable::prefix_type::PrefixTypeTrait;
use qimg_driver_api::abi_stable::std_types::{RResult, RStr, RVec};
use qimg_driver_api::{DriverError, DriverLib, DriverLibRef, FormatDriverBox, ProtocolDriverBox};

/// The ABI version this fixture claims: one major version ahead.
const FUTURE_ABI: u32 = (qimg_driver_api::ABI_VERSION >> 16).wrapping_add(1) << 16;

extern "C" fn drivers() -> RVec<FormatDriverBox> {
    RVec::new()
}

extern "C" fn try_drivers() -> RResult<RVec<FormatDriverBox>, DriverError> {
    RResult::ROk(RVec::new())
}

extern "C" fn try_protocols() -> RResult<RVec<ProtocolDriverBox>, DriverError> {
    RResult::ROk(RVec::new())
}

fn root_module() -> DriverLibRef {
    let minor = std::env::var_os("TESTDRV_ABI").is_some_and(|v| v == "minor");
    DriverLib {
        abi_version: if minor {
            qimg_driver_api::ABI_VERSION + 1
        } else {
            FUTURE_ABI
        },
        drivers,
        try_drivers,
        package: RStr::from_str("testdrv-badabi"),
        try_protocols,
    }
    .leak_into_prefix()
}

extern "C" fn erased_module() -> RootModuleResult {
    qimg_driver_api::abi_stable::library::__call_root_module_loader(root_module)
}

/// The header abi_stable looks up by name.
#[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
pub static LIB_HEADER: LibHeader =
    // SAFETY: `erased_module` returns the module type named here.
    unsafe { LibHeader::from_constructor::<DriverLibRef>(erased_module, CheckTypeLayout::Yes) };
