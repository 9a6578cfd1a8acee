//! Hostile and extreme images (issue 13): backing chains thousands of layers
//! deep, chains that loop through another name of a file, and images whose
//! headers ask for more than they hold. Each must end in a clear error or a
//! correct answer, never a crash, hang or runaway allocation.

use qimg_tests::{Fixture, Outcome};

/// Builds a qcow2 chain `l0000.qcow2` (bottom) .. `l{n-1}.qcow2` (top), with
/// 512-byte clusters to keep the files small: each layer is a copy of one
/// template whose backing name is patched to the layer below.
fn chain(fx: &Fixture, n: usize) -> String {
    fx.make_qcow2("l0000.qcow2", "cluster_size=512", "1M");
    fx.oracle(&[
        "create",
        "-q",
        "-u",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        "-b",
        "l0000.qcow2",
        "-F",
        "qcow2",
        "template.qcow2",
        "1M",
    ]);
    let template = std::fs::read(fx.path("template.qcow2")).expect("read template");
    let at = template
        .windows(11)
        .position(|w| w == b"l0000.qcow2")
        .expect("backing name in template");
    for i in 1..n {
        let mut layer = template.clone();
        layer[at..at + 11].copy_from_slice(format!("l{:04}.qcow2", i - 1).as_bytes());
        std::fs::write(fx.path(&format!("l{i:04}.qcow2")), layer).expect("write layer");
    }
    format!("l{:04}.qcow2", n - 1)
}

#[test]
fn a_chain_of_2000_layers_reads_maps_and_describes_as_qemu_img_does() {
    let fx = Fixture::new("chain_2000");
    let top = chain(&fx, 2000);
    // Data at the bottom, and in a layer half-way up, written by qemu-io
    // with the layer's backing file cut off.
    fx.qemu_io_cmds("qcow2", "l0000.qcow2", &["write -P 0x5a 64k 4k"]);
    fx.sh(
        "qemu-io -c 'write -P 0x33 128k 4k' 'json:{\"driver\": \"qcow2\", \
         \"file\": {\"driver\": \"file\", \"filename\": \"l1000.qcow2\"}, \
         \"backing\": null}' >/dev/null",
    );
    let out = fx.qimg_bounded(&["convert", "-O", "raw", &top, "out.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let data = std::fs::read(fx.path("out.raw")).expect("read out.raw");
    assert_eq!(data.len(), 1 << 20);
    for (i, b) in data.iter().enumerate() {
        let want = match i {
            0x10000..=0x10fff => 0x5a,
            0x20000..=0x20fff => 0x33,
            _ => 0,
        };
        assert_eq!(*b, want, "byte {i}");
    }
    // Block status through every layer: compare walks the chain's map.
    let out = fx.qimg_bounded(&["compare", &top, "out.raw"]);
    assert_eq!(out.stdout, "Images are identical.\n", "{}", out.stderr);
    let out = fx.qimg_bounded(&["map", "--output=json", &top]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.contains("\"depth\": 1999"), "{}", out.stdout);
    assert!(out.stdout.contains("\"depth\": 999"), "{}", out.stdout);
    // qemu-img describes the same chain in under a second; both agree.
    let out = fx.same(&["info", "--backing-chain", "--output=json", &top]);
    assert_eq!(out.stdout.matches("\"backing-filename\"").count(), 1999);
}

#[test]
fn a_chain_deeper_than_the_limit_is_refused_in_one_line() {
    let fx = Fixture::new("chain_too_deep");
    let top = chain(&fx, 4097);
    for args in [&["map", &top][..], &["info", "--backing-chain", &top][..]] {
        let out = fx.qimg_bounded(args);
        assert_eq!(out.status, 1, "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("Backing chain is deeper than 4096 images"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("Could not open backing file"),
            "{args:?}"
        );
    }
    // One layer fewer is within the limit.
    let out = fx.qimg_bounded(&["map", "--output=json", "l4095.qcow2"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
}

#[test]
fn a_loop_through_a_second_name_of_a_file_is_found() {
    // b.qcow2 backs a.qcow2, and link.qcow2 (a hard link to a.qcow2) backs
    // b.qcow2: names differ, the file is the same.
    let fx = Fixture::new("chain_link_loop");
    fx.make_qcow2("a.qcow2", "", "1M");
    fx.oracle(&[
        "create",
        "-q",
        "-u",
        "-f",
        "qcow2",
        "-b",
        "link.qcow2",
        "-F",
        "qcow2",
        "b.qcow2",
        "1M",
    ]);
    fx.oracle(&["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"]);
    std::fs::hard_link(fx.path("a.qcow2"), fx.path("link.qcow2")).expect("link");
    for args in [
        &["map", "a.qcow2"][..],
        &["convert", "-O", "raw", "a.qcow2", "out.raw"][..],
        &["info", "--backing-chain", "a.qcow2"][..],
    ] {
        let out = fx.qimg(args);
        assert_eq!(out.status, 1, "{args:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr
                .ends_with("Backing file 'link.qcow2' creates an infinite loop.\n"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn a_huge_compressed_vmdk_grain_is_inflated_once_in_bounded_memory() {
    // A stream-optimized vmdk whose one grain is 256 MiB of deflated data
    // (zeros but for 4 KiB of 0x5a at 100 MiB and of 0x33 at the end).
    // Inflating the whole grain for every piece read would need 256 MiB per
    // reading thread and inflate it again for each of 128 pieces.
    use flate2::{write::ZlibEncoder, Compression};
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    const GRAIN: u64 = 256 << 20;
    let fx = Fixture::new("vmdk_grain_bomb");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        "g.vmdk",
        "256M",
    ]);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.path("g.vmdk"))
        .expect("open g.vmdk");
    let read_u64 = |at: u64| {
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, at).expect("read");
        u64::from_le_bytes(b)
    };
    let gd_sector = read_u64(56);
    let mut gde = [0u8; 4];
    file.read_exact_at(&mut gde, gd_sector * 512)
        .expect("read gd");
    let gt_at = u64::from(u32::from_le_bytes(gde)) * 512;
    assert_ne!(gt_at, 0, "qemu-img preallocates the grain table");
    let mut z = ZlibEncoder::new(Vec::new(), Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for mib in 0..GRAIN >> 20 {
        let mut chunk = zeros.clone();
        if mib == 100 {
            chunk[..4096].fill(0x5a);
        }
        if mib == (GRAIN >> 20) - 1 {
            let n = chunk.len();
            chunk[n - 4096..].fill(0x33);
        }
        z.write_all(&chunk).expect("deflate");
    }
    let packed = z.finish().expect("deflate");
    let mut grain = 0u64.to_le_bytes().to_vec();
    grain.extend_from_slice(&(packed.len() as u32).to_le_bytes());
    grain.extend_from_slice(&packed);
    grain.resize(grain.len().div_ceil(512) * 512, 0);
    let at = file.metadata().expect("stat").len().div_ceil(512) * 512;
    file.write_all_at(&grain, at).expect("append grain");
    file.write_all_at(&((at / 512) as u32).to_le_bytes(), gt_at)
        .expect("point the grain table at it");
    file.write_all_at(&(GRAIN / 512).to_le_bytes(), 20)
        .expect("grain size");
    drop(file);

    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 400000 && exec timeout 60 ./.bin/qemu-img convert -O raw g.vmdk out.raw")
        .current_dir(fx.path(""))
        .env("QIMG_PLUGINS", qimg_tests::workspace().join("plugins.toml"))
        .output()
        .expect("run qimg");
    let out: Outcome = out.into();
    assert_eq!(out.status, 0, "{}", out.stderr);
    let data = std::fs::File::open(fx.path("out.raw")).expect("open out.raw");
    assert_eq!(data.metadata().expect("stat").len(), GRAIN);
    let mut buf = vec![0u8; 1 << 20];
    for mib in 0..GRAIN >> 20 {
        data.read_exact_at(&mut buf, mib << 20)
            .expect("read out.raw");
        for (i, b) in buf.iter().enumerate() {
            let want = match (mib, i) {
                (100, 0..=4095) => 0x5a,
                (255, 1044480..) => 0x33,
                _ => 0,
            };
            assert_eq!(*b, want, "MiB {mib} byte {i}");
        }
    }
    // A read from the middle of the grain, then reads on from there.
    let out = fx.qimg(&[
        "dd",
        "if=g.vmdk",
        "of=part.raw",
        "bs=1M",
        "skip=100",
        "count=102",
        "-O",
        "raw",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let part = std::fs::read(fx.path("part.raw")).expect("read part.raw");
    assert_eq!(part.len(), 2 << 20);
    assert!(part[..4096].iter().all(|&b| b == 0x5a));
    assert!(part[4096..].iter().all(|&b| b == 0));
}

#[test]
fn a_vmdk_descriptor_without_extents_is_an_empty_disk() {
    // What `create -f vmdk` writes for a size of 0. qemu-img maps and
    // checks it, and fails an assertion (`s->num_extents`) on info and
    // convert; qimg opens it as the empty disk it is.
    let fx = Fixture::new("vmdk_no_extents");
    std::fs::write(
        fx.path("noext.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n",
    )
    .expect("write descriptor");
    for args in [
        &["map", "noext.vmdk"][..],
        &["map", "--output=json", "noext.vmdk"][..],
        &["check", "noext.vmdk"][..],
    ] {
        assert_eq!(fx.same(args).status, 0, "{args:?}");
    }
    let out = fx.qimg(&["info", "--output=json", "noext.vmdk"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("\"virtual-size\": 0,"),
        "{}",
        out.stdout
    );
    let out = fx.qimg(&["convert", "-O", "raw", "noext.vmdk", "o.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(std::fs::metadata(fx.path("o.raw")).expect("stat").len(), 0);
}
