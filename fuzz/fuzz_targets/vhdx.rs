//! Fuzz target `vhdx`: the input is a whole VHDX file, opened by the vhdx
//! driver and driven through qimg_fuzz::fuzz_image (open read-only and
//! read-write, which replays a log, info, bounded reads, block status and
//! a small write).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qimg_fuzz::fuzz_image(&qimg_vhdx::VhdxDriver, data);
});
