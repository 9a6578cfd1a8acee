//! Fuzz target `vpc`: the input is a whole VHD file, opened by the vpc
//! driver and driven through qimg_fuzz::fuzz_image (open read-only and
//! read-write, info, bounded reads, block status and a small write).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qimg_fuzz::fuzz_image(&qimg_vpc::VpcDriver, data);
});
