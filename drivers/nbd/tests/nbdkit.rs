//! The driver against `nbdkit` (1.32): multi-conn, block size
//! constraints, injected errors, and servers without write-zeroes or
//! block status.

mod common;

use common::*;
use qimg_driver_api::StoreRun;
use std::collections::BTreeSet;

const MIB: u64 = 1 << 20;

#[test]
fn multi_conn_servers_get_several_connections() {
    let dir = TempDir::new();
    let socket = dir.join("mc.sock");
    let log = dir.join("log");
    let logfile = format!("logfile={}", log.display());
    let server = nbdkit_unix(&socket, &["--filter=log", "memory", "64M", &logfile]);
    let name = format!("nbd+unix://?socket={}", socket.display());
    let store = open(&name, true).unwrap();
    assert_eq!(store.len().unwrap(), 64 * MIB);
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let store = &store;
            scope.spawn(move || {
                let chunk = vec![t as u8 + 1; 256 * 1024];
                let base = t * 8 * MIB;
                for i in 0..16 {
                    store
                        .write_at(base + i * chunk.len() as u64, &chunk)
                        .unwrap();
                }
                for i in 0..16 {
                    let back = read(&**store, base + i * chunk.len() as u64, chunk.len());
                    assert!(back == chunk, "thread {t} chunk {i}");
                }
            });
        }
    });
    store.flush().unwrap();
    drop(store);
    // Every connection says goodbye with NBD_CMD_DISC; nbdkit logs the
    // disconnections as it gets to them.
    let count = |text: &str, what: &str| text.lines().filter(|l| l.contains(what)).count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if count(&text, " Connect ") == count(&text, " Disconnect ")
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    drop(server);
    assert_eq!(
        count(&text, " Connect "),
        count(&text, " Disconnect "),
        "{text}"
    );
    // nbdkit-log-filter names the connection of every request.
    let writers: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.contains(" Write id="))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("connection=")))
        .collect();
    assert!(
        (2..=4).contains(&writers.len()),
        "writes went over {writers:?}"
    );
}

#[test]
fn block_size_constraints_are_obeyed() {
    let port = free_port();
    // Requests that break the constraints fail with EINVAL.
    let _server = nbdkit_tcp(
        port,
        &[
            "--filter=blocksize-policy",
            "memory",
            "16M",
            "blocksize-minimum=4096",
            "blocksize-preferred=65536",
            "blocksize-maximum=1M",
            "blocksize-error-policy=error",
        ],
    );
    let store = open(&format!("nbd://127.0.0.1:{port}"), true).unwrap();
    // Unaligned, crossing blocks: read-modify-write at both ends.
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8 + 1).collect();
    store.write_at(1000, &data).unwrap();
    let back = read(&*store, 0, 12_000);
    assert!(back[..1000].iter().all(|&b| b == 0));
    assert_eq!(&back[1000..11_000], &data[..]);
    assert!(back[11_000..].iter().all(|&b| b == 0));
    // Larger than the maximum: split.
    let big = vec![0x77u8; 3 * MIB as usize + 512];
    store.write_at(2 * MIB + 512, &big).unwrap();
    assert_eq!(read(&*store, 2 * MIB + 512, big.len()), big);
    // Unaligned zeroing.
    store.write_zeroes(2 * MIB + 100, 5000, false).unwrap();
    let back = read(&*store, 2 * MIB, 8192);
    assert!(back[..100].iter().all(|&b| b == 0));
    assert!(back[100..512].iter().all(|&b| b == 0));
    assert!(back[512..5100].iter().all(|&b| b == 0));
    assert!(back[5100..].iter().all(|&b| b == 0x77));
    store.write_zeroes(2 * MIB, 3 * MIB, true).unwrap();
    assert!(read(&*store, 2 * MIB, 3 * MIB as usize)
        .iter()
        .all(|&b| b == 0));
    // Block status from an unaligned offset.
    assert!(store.run_at(5 * MIB + 1000, MIB).unwrap().data);
    store.flush().unwrap();
}

#[test]
fn concurrent_sector_writes_into_shared_blocks_all_land() {
    let dir = TempDir::new();
    let socket = dir.join("rmw.sock");
    let _server = nbdkit_unix(
        &socket,
        &[
            "--filter=blocksize-policy",
            "memory",
            "1M",
            "blocksize-minimum=4096",
            "blocksize-error-policy=error",
        ],
    );
    let store = open(&format!("nbd+unix://?socket={}", socket.display()), true).unwrap();
    // Eight writers, each owning one 512-byte sector of every 4 KiB block.
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let store = &store;
            scope.spawn(move || {
                let sector = [t as u8 + 1; 512];
                for block in 0..64u64 {
                    store.write_at(block * 4096 + t * 512, &sector).unwrap();
                }
            });
        }
    });
    let back = read(&*store, 0, 64 * 4096);
    for (i, sector) in back.chunks(512).enumerate() {
        let want = (i % 8) as u8 + 1;
        assert!(sector.iter().all(|&b| b == want), "sector {i}");
    }
}

#[test]
fn server_errors_fail_only_their_request() {
    let dir = TempDir::new();
    let socket = dir.join("e.sock");
    let trigger = dir.join("fail");
    let file = format!("error-pread-file={}", trigger.display());
    let _server = nbdkit_unix(
        &socket,
        &[
            "--filter=error",
            "memory",
            "1M",
            "error-pread=EPERM",
            "error-pread-rate=100%",
            &file,
        ],
    );
    let store = open(&format!("nbd+unix://?socket={}", socket.display()), true).unwrap();
    store.write_at(0, b"still here").unwrap();
    std::fs::write(&trigger, b"").unwrap();
    let mut buf = [0u8; 10];
    let e = store.read_at(0, &mut buf).unwrap_err();
    assert_eq!(e.errno, libc::EPERM);
    assert_eq!(e.message.as_str(), "Operation not permitted");
    std::fs::remove_file(&trigger).unwrap();
    // The connection survived the error.
    assert_eq!(read(&*store, 0, 10), b"still here");
}

#[test]
fn zeroes_are_written_where_the_server_cannot_zero() {
    let dir = TempDir::new();
    let socket = dir.join("nz.sock");
    let _server = nbdkit_unix(&socket, &["--filter=nozero", "memory", "8M"]);
    let store = open(&format!("nbd+unix://?socket={}", socket.display()), true).unwrap();
    store.write_at(0, &vec![0xeeu8; 4 * MIB as usize]).unwrap();
    store.write_zeroes(100, 3 * MIB, false).unwrap();
    store.write_zeroes(3 * MIB + 200, 1000, true).unwrap();
    let back = read(&*store, 0, 4 * MIB as usize);
    assert!(back[..100].iter().all(|&b| b == 0xee));
    assert!(back[100..3 * MIB as usize + 100].iter().all(|&b| b == 0));
    assert!(back[3 * MIB as usize + 100..3 * MIB as usize + 200]
        .iter()
        .all(|&b| b == 0xee));
    assert!(back[3 * MIB as usize + 200..3 * MIB as usize + 1200]
        .iter()
        .all(|&b| b == 0));
    assert!(back[3 * MIB as usize + 1200..].iter().all(|&b| b == 0xee));
}

#[test]
fn allocation_follows_writes() {
    let dir = TempDir::new();
    let socket = dir.join("al.sock");
    let _server = nbdkit_unix(&socket, &["memory", "64M"]);
    let store = open(&format!("nbd+unix://?socket={}", socket.display()), true).unwrap();
    assert_eq!(
        store.run_at(0, 64 * MIB).unwrap(),
        StoreRun {
            data: false,
            length: 64 * MIB
        }
    );
    store.write_at(8 * MIB, &vec![1u8; MIB as usize]).unwrap();
    // The cached reply was dropped with the write.
    assert_eq!(
        store.run_at(0, 64 * MIB).unwrap(),
        StoreRun {
            data: false,
            length: 8 * MIB
        }
    );
    assert_eq!(
        store.run_at(8 * MIB, 64 * MIB).unwrap(),
        StoreRun {
            data: true,
            length: MIB
        }
    );
    assert_eq!(
        store.run_at(9 * MIB, 64 * MIB).unwrap(),
        StoreRun {
            data: false,
            length: 55 * MIB
        }
    );
    store.write_zeroes(8 * MIB, MIB, true).unwrap();
    assert!(!store.run_at(8 * MIB, MIB).unwrap().data);
}

#[test]
fn without_block_status_everything_is_data() {
    let dir = TempDir::new();
    let socket = dir.join("nx.sock");
    let _server = nbdkit_unix(&socket, &["--filter=noextents", "memory", "4M"]);
    let store = open(&format!("nbd+unix://?socket={}", socket.display()), false).unwrap();
    assert_eq!(
        store.run_at(MIB, 8 * MIB).unwrap(),
        StoreRun {
            data: true,
            length: 3 * MIB
        }
    );
}
