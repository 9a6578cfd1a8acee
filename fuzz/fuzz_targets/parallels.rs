//! Fuzz target `parallels`: the input is a whole parallels image file,
//! opened by the parallels driver and driven through qimg_fuzz::fuzz_image
//! (open read-only and read-write, info, bounded reads, block status, check
//! and a small write).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qimg_fuzz::fuzz_image(&qimg_parallels::ParallelsDriver, data);
});
