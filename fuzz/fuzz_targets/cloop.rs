//! Fuzz target `cloop`: the input is a whole cloop image file, opened by the
//! vendor cloop driver (vendor/cloop) and driven through qimg_fuzz::fuzz_image
//! (opens, info, bounded reads and block status; the driver is read-only).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qimg_fuzz::fuzz_image(&qimg_cloop::CloopDriver, data);
});
