//! Image locks interoperate with QEMU's: qimg refuses images a running QEMU
//! process holds in a conflicting way, and QEMU refuses images qimg holds.

use qimg_tests::Fixture;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the holder when the test ends, pass or fail.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// True once some process holds a lock on byte `byte` of `file` (per /proc/locks).
fn locked(fx: &Fixture, file: &str, byte: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(fx.path(file)).expect("stat").ino();
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Adjacent byte locks of one holder are shown merged: "100 101".
        let range = f
            .get(6)
            .and_then(|s| s.parse::<u64>().ok())
            .zip(f.get(7).and_then(|s| s.parse::<u64>().ok()));
        f.len() >= 8
            && f[5].rsplit(':').next() == Some(&inode.to_string())
            && range.is_some_and(|(start, end)| start <= byte && byte <= end)
    })
}

fn wait_for_lock(fx: &Fixture, file: &str, byte: u64) {
    let start = Instant::now();
    while !locked(fx, file, byte) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "lock on byte {byte} of {file} never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// qemu-io holding `file` open read-write (locks 100 and 101).
fn qemu_io_holder(fx: &Fixture, file: &str) -> Holder {
    let child = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "sleep 60000", file])
        .current_dir(&fx.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu-io");
    let holder = Holder(child);
    wait_for_lock(fx, file, 101);
    holder
}

#[test]
fn convert_source_refuses_image_qemu_writes() {
    let fx = Fixture::with_images("lockqemu");
    let _holder = qemu_io_holder(&fx, "mid.raw");
    let out = fx.qimg(&["convert", "-f", "raw", "mid.raw", "o.raw"]);
    assert_eq!(out.status, 1);
    assert_eq!(
        out.stderr,
        "qemu-img: Could not open 'mid.raw': Failed to get shared \"write\" lock\nIs another process using the image [mid.raw]?\n"
    );
    assert_eq!(
        out,
        fx.qemu_img(&["convert", "-f", "raw", "mid.raw", "o2.raw"])
    );
    // With -U the source is shared and the copy goes ahead, as with qemu-img.
    assert_eq!(
        fx.qimg(&["convert", "-U", "-f", "raw", "mid.raw", "o.raw"])
            .status,
        0
    );
    // Read-only commands that share everything are not blocked.
    fx.same(&["map", "-f", "raw", "mid.raw"]);
    fx.same(&["info", "-f", "raw", "mid.raw"]);
}

#[test]
fn qemu_refuses_image_qimg_reads_as_source() {
    let fx = Fixture::new("lockqimg");
    fx.sh("head -c 4M /dev/urandom > src.raw");
    // A rate-limited convert keeps src.raw open as a stable source for seconds.
    let child = fx.spawn_qimg(&["convert", "-r", "256k", "-f", "raw", "src.raw", "o.raw"]);
    let _holder = Holder(child);
    wait_for_lock(&fx, "src.raw", 201);
    let resize = fx.qemu_img(&["resize", "-f", "raw", "src.raw", "8M"]);
    assert_eq!(resize.status, 1);
    assert_eq!(
        resize.stderr,
        "qemu-img: Could not open 'src.raw': Failed to get \"write\" lock\nIs another process using the image [src.raw]?\n"
    );
    let write = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 512", "src.raw"])
        .current_dir(&fx.dir)
        .output()
        .unwrap();
    assert!(
        !write.status.success(),
        "qemu-io wrote to an image qimg holds"
    );
    // qimg's own writers are refused the same way.
    let ours = fx.qimg(&["resize", "-f", "raw", "src.raw", "8M"]);
    assert_eq!(ours, resize);
    // Sharing readers still work.
    assert_eq!(
        fx.qemu_img(&["compare", "-f", "raw", "-F", "raw", "src.raw", "src.raw"])
            .status,
        0
    );
}

#[test]
fn convert_onto_its_own_source_is_refused_without_damage() {
    let fx = Fixture::with_images("lockself");
    let before = std::fs::read(fx.path("mid.raw")).unwrap();
    fx.same(&["convert", "mid.raw", "mid.raw"]);
    assert_eq!(std::fs::read(fx.path("mid.raw")).unwrap(), before);
}

#[test]
fn locking_off_through_image_opts() {
    let fx = Fixture::with_images("lockoff");
    let _holder = qemu_io_holder(&fx, "mid.raw");
    let out = fx.qimg(&[
        "convert",
        "--image-opts",
        "driver=raw,file.filename=mid.raw,file.locking=off",
        "o.raw",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(
        fx.qemu_img(&["compare", "-U", "mid.raw", "o.raw"]).status,
        0
    );
}
