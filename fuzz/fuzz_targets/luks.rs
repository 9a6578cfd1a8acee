//! Fuzz target `luks`: the input is a whole LUKS1 volume, driven through
//! qimg_fuzz::fuzz_image. No secret is given, so this reaches what runs
//! before a key: the header and key-slot parser and its checks, `info` and
//! the refusals (unlocking runs PBKDF2 for as many iterations as the header
//! asks, which a fuzzer would only time out on).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qimg_fuzz::fuzz_image(&qimg_luks::LuksDriver, data);
});
