//! Fuzz target `bochs`: the input is a whole bochs image file, opened by the
//! vendor bochs driver (vendor/bochs) and driven through qimg_fuzz::fuzz_image
//! (opens, info, bounded reads and block status; the driver is read-only).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qimg_fuzz::fuzz_image(&qimg_bochs::BochsDriver, data);
});
