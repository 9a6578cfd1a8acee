//! The `nbd` fuzz target's entry point (feature `fuzzing`): the client's
//! handshake and its requests against a server whose every byte is the
//! fuzzer's, so that whatever a hostile server sends ends in an error,
//! never a panic, a hang or an allocation sized by the wire.

use crate::conn::Conn;
use crate::handshake;
use crate::socket::{Link, Stream};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Runs one session: `server` is all the server ever sends (then it stops
/// sending); the client negotiates the default export, then reads, asks for
/// block status, writes, writes zeroes and flushes, ignoring every error.
pub fn session(server: &[u8]) {
    let Ok((client, peer)) = UnixStream::pair() else {
        return;
    };
    let Ok(mut sender) = peer.try_clone() else {
        return;
    };
    let bytes = server.to_vec();
    let send = std::thread::spawn(move || {
        let _ = sender.write_all(&bytes);
        let _ = sender.shutdown(Shutdown::Write);
    });
    // The client's requests are read and dropped, so it never blocks on a
    // full socket.
    let mut drain_end = peer;
    let drain = std::thread::spawn(move || {
        let mut sink = [0u8; 64 << 10];
        while matches!(drain_end.read(&mut sink), Ok(n) if n > 0) {}
    });
    if let Ok(shutdown) = client.try_clone() {
        run_client(client);
        let _ = shutdown.shutdown(Shutdown::Both);
    }
    let _ = send.join();
    let _ = drain.join();
}

fn run_client(client: UnixStream) {
    let Ok(mut link) = Link::new(Stream::Unix(client), Duration::from_secs(1)) else {
        return;
    };
    let Ok(export) = handshake::negotiate(&mut link, "", None) else {
        return;
    };
    let conn = Conn::new(link, export);
    let mut buf = vec![0u8; 64 << 10];
    let _ = conn.read(0, &mut buf);
    let _ = conn.block_status(0, 1 << 20);
    let _ = conn.write(0, &buf[..4096]);
    let _ = conn.write_zeroes(4096, 4096, 0);
    let _ = conn.flush();
    conn.disconnect();
}
