//! Fuzz target `qcow`: the input is a whole qcow (version 1) image file,
//! opened by the vendor qcow driver (vendor/qcow) and driven through
//! qimg_fuzz::fuzz_image (open, info, bounded reads and block status,
//! check, and a small write and flush on a copy).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qimg_fuzz::fuzz_image(&qimg_qcow::QcowDriver, data);
});
