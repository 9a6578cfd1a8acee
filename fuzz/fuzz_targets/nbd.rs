//! Fuzz target `nbd`: the input is everything an NBD server sends to the
//! client (qimg_nbd::fuzzing::session): greeting, option replies, then
//! replies to a read, a block status, a write, a write zeroes and a flush.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qimg_nbd::fuzzing::session(data);
});
