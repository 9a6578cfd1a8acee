//! Fuzz target `http`: the input is everything an HTTP server sends on one
//! keep-alive connection, parsed as the http driver parses it: the answer
//! to its `HEAD` (size, ranges, keep-alive, redirect), then the answers to
//! four 4 KiB range requests (status, `Content-Range`, framing and body:
//! length, chunked or until close). Whatever a hostile server sends must
//! end in an error, never a panic, a hang or an allocation it sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qimg_http::response;
use std::io::BufReader;

fuzz_target!(|data: &[u8]| {
    // A small buffer, so that heads and chunks straddle its refills.
    let mut wire = BufReader::with_capacity(61, data);
    let Ok(head) = response::read_head(&mut wire) else {
        return;
    };
    let _ = (head.content_length(), head.accepts_ranges(), head.keep_alive());
    let _ = head.get("location");
    if !matches!(head.framing(true), Ok(response::Framing::Empty)) {
        return;
    }
    let mut buf = vec![0u8; 4096];
    for _ in 0..4 {
        let Ok(head) = response::read_head(&mut wire) else {
            return;
        };
        let _ = head.content_range();
        let Ok(framing) = head.framing(false) else {
            return;
        };
        if response::read_body(&mut wire, framing, &mut buf).is_err() {
            return;
        }
    }
});
