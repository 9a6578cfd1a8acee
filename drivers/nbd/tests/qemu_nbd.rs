//! The driver against a real `qemu-nbd` (QEMU 10.0.2), on Unix sockets
//! and loopback TCP. Error texts are the ones `qemu-img info` prints after
//! "Could not open 'NAME': " for the same servers.

mod common;

use common::*;
use qimg_driver_api::{ErrorKind, Prealloc, StoreRun};
use std::sync::mpsc;
use std::time::Duration;

const MIB: u64 = 1 << 20;

#[test]
fn reads_data_and_holes_over_a_unix_socket() {
    let dir = TempDir::new();
    let image = sample_image(&dir, "4M");
    let socket = dir.join("s.sock");
    let _server = qemu_nbd_unix(&socket, "exp", &image, &[]);
    let name = format!("nbd+unix:///exp?socket={}", socket.display());
    let store = open(&name, false).unwrap();
    // qemu-img info 'nbd+unix:///exp?socket=PATH' prints the same name.
    assert_eq!(store.name(), name);
    assert_eq!(store.len().unwrap(), 4 * MIB);
    assert!(read(&*store, MIB, 65536).iter().all(|&b| b == 0xab));
    assert!(read(&*store, 0, 4096).iter().all(|&b| b == 0));
    // Straddling the data's start, unaligned.
    let edge = read(&*store, MIB - 3, 6);
    assert_eq!(edge, [0, 0, 0, 0xab, 0xab, 0xab]);
    // Holes and data, as `qemu-img map` reports them: qemu-img create
    // allocates the first 4 KiB of a raw file.
    assert_eq!(
        store.run_at(0, 4 * MIB).unwrap(),
        StoreRun {
            data: true,
            length: 4096
        }
    );
    assert_eq!(
        store.run_at(4096, 4 * MIB).unwrap(),
        StoreRun {
            data: false,
            length: MIB - 4096
        }
    );
    assert_eq!(
        store.run_at(MIB, 4 * MIB).unwrap(),
        StoreRun {
            data: true,
            length: 65536
        }
    );
    assert_eq!(
        store.run_at(MIB + 65536, 4 * MIB).unwrap(),
        StoreRun {
            data: false,
            length: 3 * MIB - 65536
        }
    );
    assert_eq!(
        store.run_at(5000, 50).unwrap(),
        StoreRun {
            data: false,
            length: 50
        }
    );
    // Past the end: a hole, as a file store answers.
    assert_eq!(
        store.run_at(4 * MIB, 10).unwrap(),
        StoreRun {
            data: false,
            length: 10
        }
    );
    // Reads stop at the end of the export.
    let mut buf = vec![0u8; 8192];
    assert_eq!(store.read_at(4 * MIB - 4096, &mut buf).unwrap(), 4096);
    assert_eq!(store.read_at(4 * MIB, &mut buf).unwrap(), 0);
    // Allocation is not something NBD reports.
    assert!(store.allocated_size().is_err());
}

#[test]
fn writes_flush_and_read_back_over_tcp() {
    let dir = TempDir::new();
    let image = sample_image(&dir, "4M");
    let port = free_port();
    let _server = qemu_nbd_tcp(port, "qq", &image, &[]);
    let name = format!("nbd://127.0.0.1:{port}/qq");
    let store = open(&name, true).unwrap();
    assert_eq!(store.name(), name);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    store.write_at(3000, &data).unwrap();
    store.flush().unwrap();
    assert_eq!(read(&*store, 3000, data.len()), data);
    // What qemu-nbd wrote is in the file.
    let file = std::fs::read(&image).unwrap();
    assert_eq!(&file[3000..3000 + data.len()], &data[..]);
    // The hole at the start of the image is data now.
    assert!(store.run_at(3000, MIB).unwrap().data);
    // Writing past the end is refused without asking the server.
    let e = store.write_at(4 * MIB - 10, &[1; 20]).unwrap_err();
    assert_eq!(e.errno, libc::ENOSPC);
}

#[test]
fn write_zeroes_reads_back_as_zeros() {
    let dir = TempDir::new();
    let image = sample_image(&dir, "4M");
    let socket = dir.join("z.sock");
    let _server = qemu_nbd_unix(&socket, "z", &image, &[]);
    let store = open(&format!("nbd+unix:///z?socket={}", socket.display()), true).unwrap();
    // Inside the 0xab data: keep it allocated, then punch.
    store.write_zeroes(MIB + 100, 1000, false).unwrap();
    let back = read(&*store, MIB, 2000);
    assert!(back[..100].iter().all(|&b| b == 0xab));
    assert!(back[100..1100].iter().all(|&b| b == 0));
    assert!(back[1100..].iter().all(|&b| b == 0xab));
    store.write_zeroes(MIB, 65536, true).unwrap();
    assert!(read(&*store, MIB, 65536).iter().all(|&b| b == 0));
    // qemu-nbd punched the hole (ext4 and tmpfs can): all but the first
    // 4 KiB qemu-img create allocated is a hole again.
    assert_eq!(
        store.run_at(4096, 4 * MIB).unwrap(),
        StoreRun {
            data: false,
            length: 4 * MIB - 4096
        }
    );
    store.flush().unwrap();
}

#[test]
fn a_missing_export_is_named_by_the_server() {
    let dir = TempDir::new();
    let image = sample_image(&dir, "2M");
    let socket = dir.join("m.sock");
    let _server = qemu_nbd_unix(&socket, "exp", &image, &[]);
    // qemu-img info 'nbd+unix:///nope?socket=...' says the same after
    // "Could not open '...': ".
    let e = open_error(
        &format!("nbd+unix:///nope?socket={}", socket.display()),
        false,
    );
    assert_eq!(
        e.message.as_str(),
        "Requested export not available\nserver reported: export 'nope' not present"
    );
    assert_eq!(e.kind, ErrorKind::NOT_FOUND);
    // The server is still fine for the right name.
    open(
        &format!("nbd+unix:///exp?socket={}", socket.display()),
        false,
    )
    .unwrap();
}

#[test]
fn refused_and_missing_servers() {
    let port = free_port();
    let e = open_error(&format!("nbd://127.0.0.1:{port}/qq"), false);
    assert_eq!(
        e.message.as_str(),
        format!("Failed to connect to '127.0.0.1:{port}': Connection refused")
    );
    assert_eq!(e.errno, libc::ECONNREFUSED);
    let dir = TempDir::new();
    let socket = dir.join("x.sock");
    let e = open_error(&format!("nbd+unix:///x?socket={}", socket.display()), false);
    assert_eq!(
        e.message.as_str(),
        format!(
            "Failed to connect to '{}': No such file or directory",
            socket.display()
        )
    );
}

#[test]
fn a_read_only_export_refuses_writers() {
    let dir = TempDir::new();
    let image = sample_image(&dir, "2M");
    let socket = dir.join("ro.sock");
    let _server = qemu_nbd_unix(&socket, "ro", &image, &["-r"]);
    let name = format!("nbd+unix:///ro?socket={}", socket.display());
    // qemu-io -c 'write 0 512' on a `qemu-nbd -r` export: "Could not open
    // image: Permission denied".
    let e = open_error(&name, true);
    assert_eq!(
        e.message.as_str(),
        "Could not open image: Permission denied"
    );
    assert_eq!(e.kind, ErrorKind::PERMISSION);
    let store = open(&name, false).unwrap();
    assert_eq!(read(&*store, 0, 512), vec![0; 512]);
    assert!(store.write_at(0, &[1; 512]).is_err());
}

#[test]
fn length_changes() {
    let dir = TempDir::new();
    let image = sample_image(&dir, "2M");
    let socket = dir.join("l.sock");
    let _server = qemu_nbd_unix(&socket, "", &image, &[]);
    // An empty export name: nbd+unix://?socket=PATH, as qemu prints it.
    let name = format!("nbd+unix://?socket={}", socket.display());
    let store = open(&name, true).unwrap();
    assert_eq!(store.name(), name);
    store.set_len(2 * MIB, Prealloc::OFF).unwrap();
    store.set_len(MIB, Prealloc::OFF).unwrap();
    assert_eq!(store.len().unwrap(), 2 * MIB);
    // qemu-img create -f raw nbd://... 8M: "Cannot grow NBD nodes".
    let e = store.set_len(4 * MIB, Prealloc::OFF).unwrap_err();
    assert_eq!(e.message.as_str(), "Cannot grow NBD nodes");
    // qemu-img create -o preallocation=full: "Unsupported preallocation
    // mode 'full'" (checked before the size).
    let e = store.set_len(2 * MIB, Prealloc::FULL).unwrap_err();
    assert_eq!(e.message.as_str(), "Unsupported preallocation mode 'full'");
    let e = store.set_len(8 * MIB, Prealloc::FALLOC).unwrap_err();
    assert_eq!(
        e.message.as_str(),
        "Unsupported preallocation mode 'falloc'"
    );
}

#[test]
fn legacy_names_open_the_same_export() {
    let dir = TempDir::new();
    let image = sample_image(&dir, "2M");
    let socket = dir.join("g.sock");
    let _server = qemu_nbd_unix(&socket, "exp", &image, &[]);
    let legacy = format!("nbd:unix:{}:exportname=exp", socket.display());
    let store = open(&legacy, false).unwrap();
    assert_eq!(
        store.name(),
        format!("nbd+unix:///exp?socket={}", socket.display())
    );
    assert_eq!(name_of(&legacy), store.name());
    assert!(read(&*store, MIB, 16).iter().all(|&b| b == 0xab));
}

#[test]
fn parallel_readers_share_one_connection() {
    let dir = TempDir::new();
    let image = sample_image(&dir, "8M");
    let socket = dir.join("p.sock");
    let _server = qemu_nbd_unix(&socket, "p", &image, &[]);
    let store = open(&format!("nbd+unix:///p?socket={}", socket.display()), true).unwrap();
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let store = &store;
            scope.spawn(move || {
                let base = MIB * (t % 8);
                let pattern = vec![t as u8 + 1; 4096];
                for i in 0..32 {
                    store.write_at(base + i * 4096, &pattern).unwrap();
                }
                for i in 0..32 {
                    assert_eq!(read(&**store, base + i * 4096, 4096), pattern);
                }
            });
        }
    });
}

#[test]
fn a_killed_server_fails_requests_instead_of_hanging() {
    let dir = TempDir::new();
    let image = sample_image(&dir, "64M");
    let port = free_port();
    let mut server = qemu_nbd_tcp(port, "k", &image, &[]);
    let store = open(&format!("nbd://127.0.0.1:{port}/k"), false).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let store = &store;
        scope.spawn(move || {
            let mut buf = vec![0u8; 4 << 20];
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut offset = 0;
            let outcome = loop {
                match store.read_at(offset, &mut buf) {
                    Ok(n) if n == buf.len() => {}
                    Ok(n) => break Err(format!("short read of {n} looked like success")),
                    Err(e) => break Ok(e),
                }
                if std::time::Instant::now() > deadline {
                    break Err("the server's death went unnoticed".to_string());
                }
                offset = (offset + buf.len() as u64) % (64 << 20);
            };
            tx.send(outcome).unwrap();
        });
        std::thread::sleep(Duration::from_millis(300));
        server.kill();
        let e = rx
            .recv_timeout(Duration::from_secs(90))
            .expect("a read hung after the server died")
            .unwrap();
        // qemu-img convert says "error while reading at byte N:
        // Input/output error" here.
        assert_eq!(e.errno, libc::EIO);
        assert_eq!(e.message.as_str(), "Input/output error");
    });
    // Every later request fails at once.
    let mut buf = [0u8; 512];
    assert!(store.read_at(0, &mut buf).is_err());
    assert!(store.run_at(0, 512).is_err());
}

/// Bytes a test writes at `offset` in pass `pass`.
fn fill(offset: u64, len: usize, pass: u8) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8 ^ pass)
        .collect()
}

#[test]
fn many_threads_write_and_read_through_one_connection() {
    const REGION: u64 = 4 * MIB;
    let dir = TempDir::new();
    let image = sample_image(&dir, "32M");
    let socket = dir.join("many.sock");
    let _server = qemu_nbd_unix(&socket, "m", &image, &[]);
    let name = format!("nbd+unix:///m?socket={}", socket.display());
    let store = open_nbd(&name, true);
    // A writable qemu-nbd export does not allow multi-conn: every request
    // shares one connection.
    assert_eq!(store.connection_limit(), 1);
    use qimg_driver_api::StoreImpl;
    let before = std::fs::read(&image).unwrap();
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let store = &store;
            let before = &before;
            scope.spawn(move || {
                let base = t * REGION;
                let mut expected = before[(base as usize)..(base + REGION) as usize].to_vec();
                let mut seed = t * 7919 + 1;
                let mut next = |n: u64| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 33) % n
                };
                for pass in 1..=3u8 {
                    // Pieces of odd sizes at odd offsets, up to 1 MiB.
                    let mut at = next(4096);
                    while at < REGION {
                        let len = (1 + next(MIB)).min(REGION - at) as usize;
                        let data = fill(base + at, len, pass);
                        store.write_at(base + at, &data).unwrap();
                        expected[at as usize..at as usize + len].copy_from_slice(&data);
                        // Read back something written before, unaligned.
                        let from = next(at + len as u64);
                        let n = (1 + next(256 * 1024)).min(at + len as u64 - from) as usize;
                        let mut back = vec![0u8; n];
                        assert_eq!(store.read_at(base + from, &mut back).unwrap(), n);
                        assert!(
                            back == expected[from as usize..from as usize + n],
                            "thread {t} pass {pass} at {from}"
                        );
                        at += len as u64 + next(8192);
                    }
                }
                let mut back = vec![0u8; REGION as usize];
                assert_eq!(store.read_at(base, &mut back).unwrap(), back.len());
                assert!(back == expected, "thread {t}");
            });
        }
    });
    store.flush().unwrap();
    let file = std::fs::read(&image).unwrap();
    let mut back = vec![0u8; file.len()];
    assert_eq!(store.read_at(0, &mut back).unwrap(), file.len());
    assert!(back == file);
}

#[test]
fn a_server_killed_with_requests_in_flight_fails_every_waiter() {
    let dir = TempDir::new();
    let image = sample_image(&dir, "64M");
    let socket = dir.join("kill.sock");
    let mut server = qemu_nbd_unix(&socket, "k", &image, &[]);
    let store = open(&format!("nbd+unix:///k?socket={}", socket.display()), true).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let store = &store;
            let tx = tx.clone();
            scope.spawn(move || {
                let mut buf = vec![t as u8; 2 << 20];
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                let mut offset = t * (8 << 20);
                let outcome = loop {
                    // Writers and readers, in flight together.
                    let result = if t % 2 == 0 {
                        store.write_at(offset, &buf)
                    } else {
                        store.read_at(offset, &mut buf).map(drop)
                    };
                    if let Err(e) = result {
                        break Ok(e);
                    }
                    if std::time::Instant::now() > deadline {
                        break Err(format!("thread {t}: the server's death went unnoticed"));
                    }
                    offset = (offset + buf.len() as u64) % (64 << 20);
                };
                tx.send(outcome).unwrap();
            });
        }
        drop(tx);
        std::thread::sleep(Duration::from_millis(300));
        let killed = std::time::Instant::now();
        server.kill();
        for _ in 0..8 {
            let e = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("a request hung after the server died")
                .unwrap();
            assert_eq!(e.errno, libc::EIO);
            assert_eq!(e.message.as_str(), "Input/output error");
        }
        // Noticed at once, not after a timeout.
        assert!(killed.elapsed() < Duration::from_secs(10));
    });
    let mut buf = [0u8; 512];
    assert!(store.read_at(0, &mut buf).is_err());
    assert!(store.write_at(0, &buf).is_err());
}
