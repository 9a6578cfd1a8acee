//! The vhdx driver against qemu-img 10.0.2: qimg reads what qemu-img and
//! qemu-io wrote and what Hyper-V and Disk2VHD wrote (the shared sample
//! images), replays a dirty log where qemu-img does and refuses where it
//! refuses, creates the files qemu-img creates, and what it writes passes
//! `qemu-img check` and `qemu-img compare` against its source.

use qimg_tests::{workspace, Fixture};

/// The pattern written into every fixture: a partial first block, a run
/// across a block boundary and a few sectors near the end.
const PATTERN: &[&str] = &[
    "write -P 1 0 4k",
    "write -P 2 1536k 1M",
    "write -P 3 7000k 3000k",
    "write -z 10M 1M",
];

/// The option sets qemu-img creates vhdx images with.
const VARIANTS: &[&str] = &[
    "",
    "subformat=fixed",
    "block_size=1M,log_size=2M",
    "block_state_zero=off",
    "subformat=fixed,block_state_zero=off",
    "block_size=2M",
];

/// `create -f vhdx [-o OPTS] FILE SIZE` by qemu-img, then [`PATTERN`] by
/// qemu-io.
fn made(fx: &Fixture, file: &str, opts: &str, size: &str) {
    let mut args = vec!["create", "-q", "-f", "vhdx"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([file, size]);
    fx.oracle(&args);
    fx.qemu_io_cmds("vhdx", file, PATTERN);
}

/// The file's bytes with what differs between two creations zeroed: the
/// creator string, both headers (GUIDs, sequence numbers, checksums) and
/// the page 83 id.
fn masked(fx: &Fixture, file: &str) -> Vec<u8> {
    let mut b = std::fs::read(fx.path(file)).unwrap();
    b[8..520].fill(0);
    b[0x10000..0x11000].fill(0);
    b[0x20000..0x21000].fill(0);
    // The metadata region's offset, from the region table's second entry
    // (qemu-img writes the BAT first).
    let md = u64::from_le_bytes(b[0x30000 + 48 + 16..0x30000 + 48 + 24].try_into().unwrap());
    let page83 = md as usize + 0x10000 + 16;
    b[page83..page83 + 16].fill(0);
    b
}

/// Unpacks a sample image from `../shared/sample-images` sparsely, if the
/// samples are there (beside the checkout on developer machines and in CI).
fn sample(fx: &Fixture, name: &str) -> bool {
    let bz = workspace().join(format!("../shared/sample-images/{name}.bz2"));
    if !bz.exists() {
        eprintln!("no {}: sample not checked", bz.display());
        return false;
    }
    fx.sh(&format!(
        "bunzip2 -c {} | cp --sparse=always /dev/stdin {name}",
        bz.display()
    ));
    true
}

#[test]
fn qemu_made_images_read_alike() {
    let fx = Fixture::new("vhdx_reads");
    for (i, opts) in VARIANTS.iter().enumerate() {
        for size in ["12M", "12345678"] {
            let file = format!("img{i}-{size}.vhdx");
            made(&fx, &file, opts, size);
            fx.same_info_and_map(&[&file]);
            fx.same_info_and_map(&["-f", "vhdx", &file]);
            fx.converts_to_raw("vhdx", &file);
            fx.same(&["compare", "-f", "vhdx", "-F", "vhdx", &file, &file]);
            fx.same(&["check", &file]);
            fx.same(&["check", "--output=json", &file]);
            std::fs::remove_file(fx.path(&file)).unwrap();
        }
    }
    for size in ["0", "1", "511"] {
        let file = format!("tiny-{size}.vhdx");
        fx.oracle(&["create", "-q", "-f", "vhdx", &file, size]);
        fx.same_info_and_map(&[&file]);
    }
}

#[test]
fn sample_images_read_as_qemu_img_reads_them() {
    let fx = Fixture::new("vhdx_samples");
    for name in ["test-disk2vhd.vhdx", "iotest-dynamic-1G.vhdx"] {
        if !sample(&fx, name) {
            return;
        }
        fx.same_info_and_map(&[name]);
        fx.same(&["check", name]);
    }
    // Disk2VHD's (256 MiB) is small enough to copy whole.
    fx.converts_to_raw("vhdx", "test-disk2vhd.vhdx");
}

#[test]
fn a_dirty_log_is_refused_read_only_and_replayed_read_write() {
    let fx = Fixture::new("vhdx_dirty");
    let name = "iotest-dirtylog-10G-4M.vhdx";
    if !sample(&fx, name) {
        return;
    }
    // Read-only: refused with qemu-img's words, and the file is untouched.
    let before = std::fs::read(fx.path(name)).unwrap();
    for cmd in [
        &["info"][..],
        &["info", "--output=json"],
        &["map"],
        &["check"],
    ] {
        let mut all = cmd.to_vec();
        all.push(name);
        let out = fx.same(&all);
        assert_eq!(out.status, 1);
    }
    assert!(std::fs::read(fx.path(name)).unwrap() == before);
    // check -r all replays it, as qemu-img's does, and reports that.
    for out in ["human", "json"] {
        fx.sh(&format!("cp {name} ours.vhdx && cp {name} theirs.vhdx"));
        let ours = fx.qimg(&[
            "check",
            "-r",
            "all",
            &format!("--output={out}"),
            "ours.vhdx",
        ]);
        let theirs = fx.qemu_img(&[
            "check",
            "-r",
            "all",
            &format!("--output={out}"),
            "theirs.vhdx",
        ]);
        assert_eq!(ours.status, theirs.status);
        assert_eq!(
            ours.stdout.replace("ours", "X"),
            theirs.stdout.replace("theirs", "X")
        );
        // Past the headers, both replays leave the same bytes (the guest
        // data of a 10 GiB disk is not compared block by block: the BAT
        // and everything it points at are these bytes).
        let (a, b) = (
            std::fs::read(fx.path("ours.vhdx")).unwrap(),
            std::fs::read(fx.path("theirs.vhdx")).unwrap(),
        );
        assert_eq!(a.len(), b.len());
        assert!(a[0x30000..] == b[0x30000..], "replays differ");
        fx.same(&["check", "ours.vhdx"]);
        fx.oracle(&["check", "ours.vhdx"]);
        fx.same_info_and_map(&["ours.vhdx"]);
    }
}

#[test]
fn create_writes_the_bytes_qemu_img_writes() {
    let fx = Fixture::new("vhdx_create");
    for (i, opts) in VARIANTS.iter().enumerate() {
        for size in ["0", "1", "1M", "10M", "1G", "2T", "64T"] {
            // Fixed disks that large are sparse files: cheap to create,
            // but not to compare whole. A 64 TiB disk in 1-2 MiB blocks
            // has a 256-512 MiB BAT, all of it written, in both files:
            // more than CI's disk should hold for one case.
            if (opts.contains("fixed") && size.ends_with('T'))
                || (opts.contains("block_size=") && size == "64T")
            {
                continue;
            }
            let mut args = vec!["create", "-f", "vhdx"];
            if !opts.is_empty() {
                args.extend(["-o", opts]);
            }
            let (ours, theirs) = (format!("o{i}-{size}.vhdx"), format!("t{i}-{size}.vhdx"));
            let mut a = args.clone();
            a.extend([ours.as_str(), size]);
            let mut b = args.clone();
            b.extend([theirs.as_str(), size]);
            let out = fx.qimg(&a);
            let expected = fx.qemu_img(&b);
            assert_eq!(out.status, expected.status);
            assert_eq!(
                out.stdout.replace(&ours, "X"),
                expected.stdout.replace(&theirs, "X")
            );
            assert!(
                masked(&fx, &ours) == masked(&fx, &theirs),
                "create -o {opts} {size}"
            );
            fx.oracle(&["check", &ours]);
            std::fs::remove_file(fx.path(&ours)).unwrap();
            std::fs::remove_file(fx.path(&theirs)).unwrap();
        }
    }
}

#[test]
fn create_refuses_what_qemu_img_refuses() {
    let fx = Fixture::new("vhdx_create_refused");
    for (opts, size) in [
        ("subformat=foo", "1M"),
        ("subformat=foo", "100T"),
        ("preallocation=metadata", "1M"),
        ("preallocation=foo", "1M"),
        ("", "65T"),
        ("block_size=3M", "1M"),
        ("block_size=2049K", "1M"),
        ("block_size=foo", "1M"),
        ("log_size=0", "1M"),
        ("log_size=4G", "1M"),
        ("block_size=3M,log_size=0", "1M"),
        // An empty disk's BAT wraps to 2^32 / chunk ratio entries: past
        // one request of qemu's (qimg wrote a file nothing could open).
        ("block_size=256M", "0"),
    ] {
        let mut args = vec!["create", "-f", "vhdx"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend(["x.vhdx", size]);
        fx.same(&args);
        let _ = std::fs::remove_file(fx.path("x.vhdx"));
    }
    // Block sizes are whole MiB first: 1536K makes 2 MiB blocks.
    for tool in ["ours", "theirs"] {
        let args = [
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "block_size=1536K",
            "bs.vhdx",
            "1M",
        ];
        let out = if tool == "ours" {
            fx.qimg(&args)
        } else {
            fx.qemu_img(&args)
        };
        assert_eq!(out.status, 0, "{}", out.stderr);
        let info = fx.qemu_img(&["info", "--output=json", "bs.vhdx"]).stdout;
        assert!(info.contains("\"cluster-size\": 2097152"), "{tool}: {info}");
    }
    // qimg's list adds the options of differencing disks, which qemu-img
    // cannot make; the rest is qemu-img's.
    for args in [
        &["create", "-f", "vhdx", "-o", "help"][..],
        &["create", "-f", "vhdx", "-o", "help", "x.vhdx"][..],
    ] {
        let ours = fx.qimg(args);
        let theirs = fx.qemu_img(args);
        let added = ["  backing_file=<str>", "  backing_fmt=<str>"];
        assert_eq!(
            ours.stdout
                .lines()
                .filter(|l| added.iter().any(|a| l.starts_with(a)))
                .count(),
            2,
            "{}",
            ours.stdout
        );
        let rest: Vec<&str> = ours
            .stdout
            .lines()
            .filter(|l| !added.iter().any(|a| l.starts_with(a)))
            .collect();
        assert_eq!(rest.join("\n") + "\n", theirs.stdout, "{args:?}");
        assert_eq!((ours.stderr, ours.status), (theirs.stderr, theirs.status));
    }
}

/// A raw source with data in a few blocks, zeros elsewhere.
fn source(fx: &Fixture) {
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "20M"]);
    fx.qemu_io_cmds(
        "raw",
        "src.raw",
        &[
            "write -P 1 0 4k",
            "write -P 2 3M 1M",
            "write -P 3 9000k 3000k",
            "write -P 4 19M 1M",
        ],
    );
}

#[test]
fn convert_to_vhdx_passes_qemu_img_check_and_compare() {
    let fx = Fixture::new("vhdx_convert");
    source(&fx);
    for (i, opts) in VARIANTS.iter().enumerate() {
        let ours = format!("o{i}.vhdx");
        let mut args = vec!["convert", "-O", "vhdx"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend(["src.raw", ours.as_str()]);
        let out = fx.qimg(&args);
        assert_eq!(out.status, 0, "{}", out.stderr);
        let cmp = fx.qemu_img(&["compare", "-f", "raw", "-F", "vhdx", "src.raw", &ours]);
        assert_eq!(cmp.status, 0, "{}{}", cmp.stdout, cmp.stderr);
        fx.oracle(&["check", &ours]);
        // Closed cleanly: no log to replay, so a read-only open works.
        fx.same_info_and_map(&[&ours]);
        fx.same(&["compare", "src.raw", &ours]);
        // And back.
        fx.converts_to_raw("vhdx", &ours);
    }
}

#[test]
fn writes_into_qemu_made_images_read_back() {
    // convert -n into qemu-made disks (their blocks, then new ones at the
    // end), then qemu-img finds them equal to the source.
    let fx = Fixture::new("vhdx_write_n");
    source(&fx);
    for (i, opts) in VARIANTS.iter().enumerate() {
        let file = format!("n{i}.vhdx");
        made(&fx, &file, opts, "20M");
        let out = fx.qimg(&["convert", "-n", "-f", "raw", "-O", "vhdx", "src.raw", &file]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        let cmp = fx.qemu_img(&["compare", "-f", "raw", "-F", "vhdx", "src.raw", &file]);
        assert_eq!(cmp.status, 0, "{}{}", cmp.stdout, cmp.stderr);
        fx.oracle(&["check", &file]);
        fx.same_info_and_map(&["-f", "vhdx", &file]);
        std::fs::remove_file(fx.path(&file)).unwrap();
    }
}

#[test]
fn a_kill_at_any_step_leaves_an_image_that_opens() {
    // convert -n into a qemu-made disk (rewriting its blocks, allocating
    // new ones, changing the BAT through the log), killed before each of
    // its changes in turn. Each time the image opens for writing in
    // qemu-img, whose check replays the log if one is left, and reports no
    // corruption; qimg can then finish the copy.
    let fx = Fixture::new("vhdx_crash");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "12M"]);
    fx.qemu_io("src.raw", "write -P 0x11 0 100k");
    fx.qemu_io("src.raw", "write -P 0x22 2M 2M");
    fx.qemu_io("src.raw", "write -P 0x33 11000000 5000");
    made(&fx, "base.vhdx", "block_size=1M", "12M");
    for step in 0..400 {
        fx.sh("cp base.vhdx t.vhdx");
        let kill = format!("kill-after:{step}");
        let out = fx.qimg_env(
            &["convert", "-n", "-O", "vhdx", "src.raw", "t.vhdx"],
            &[("QIMG_FAULT", &kill)],
        );
        let check = fx.qemu_img(&["check", "-r", "all", "t.vhdx"]);
        assert_eq!(
            check.status, 0,
            "step {step}: {}{}",
            check.stdout, check.stderr
        );
        fx.oracle(&["check", "t.vhdx"]);
        if out.status == 0 {
            fx.same(&["compare", "src.raw", "t.vhdx"]);
            assert!(step > 5, "only {step} changes");
            return;
        }
        let again = fx.qimg(&["convert", "-n", "-O", "vhdx", "src.raw", "t.vhdx"]);
        assert_eq!(again.status, 0, "step {step}: {}", again.stderr);
        fx.same(&["compare", "src.raw", "t.vhdx"]);
        fx.oracle(&["check", "t.vhdx"]);
    }
    panic!("convert never finished");
}

#[test]
fn qimg_replays_a_log_it_left_behind() {
    // Killed after the log entry is durable and before the BAT is
    // written, qimg's own writable open replays it; a read-only open
    // refuses as qemu-img refuses.
    let fx = Fixture::new("vhdx_own_log");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "6M"]);
    fx.qemu_io("src.raw", "write -P 0x44 1M 3M");
    let mut replayed = 0;
    for step in 0..400 {
        fx.oracle(&[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "block_size=1M",
            "t.vhdx",
            "6M",
        ]);
        let kill = format!("kill-after:{step}");
        let out = fx.qimg_env(
            &["convert", "-n", "-O", "vhdx", "src.raw", "t.vhdx"],
            &[("QIMG_FAULT", &kill)],
        );
        if out.status == 0 {
            break;
        }
        let ro = fx.same(&["info", "t.vhdx"]);
        if ro.status != 0 {
            let ours = fx.qimg(&["check", "-r", "all", "t.vhdx"]);
            assert_eq!(ours.status, 0, "step {step}: {}", ours.stderr);
            assert!(ours.stdout.contains("1 corruptions"), "{}", ours.stdout);
            replayed += 1;
            fx.oracle(&["check", "t.vhdx"]);
        }
    }
    assert!(replayed > 0, "no kill point left a log to replay");
}

/// CRC-32C, to re-checksum the structures the hostile tests edit.
fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Copies `src` to `dst` with `edits` (file offset, bytes) applied, then
/// re-checksums the structure of `len` bytes at `at` (a header or a region
/// table: checksum at byte 4), as a buggy or hostile writer would.
fn patched_checksummed(
    fx: &Fixture,
    src: &str,
    dst: &str,
    at: usize,
    len: usize,
    edits: &[(usize, Vec<u8>)],
) {
    let mut b = std::fs::read(fx.path(src)).unwrap();
    for (off, bytes) in edits {
        b[*off..*off + bytes.len()].copy_from_slice(bytes);
    }
    b[at + 4..at + 8].fill(0);
    let sum = crc32c(&b[at..at + len]);
    b[at + 4..at + 8].copy_from_slice(&sum.to_le_bytes());
    fx.write_sparse(dst, &b);
}

#[test]
fn hostile_headers_fail_as_qemu_img_fails() {
    // A qemu-made 12 MiB dynamic disk (8 MiB blocks: log at 1 MiB, BAT at
    // 2 MiB, metadata at 3 MiB, block 0 at 8 MiB), damaged one field at a
    // time. qimg runs under a 1 GiB address-space limit: no field may
    // make it allocate what the file does not hold.
    let fx = Fixture::new("vhdx_hostile");
    made(&fx, "base.vhdx", "", "12M");
    let le32 = |v: u32| v.to_le_bytes().to_vec();
    let le64 = |v: u64| v.to_le_bytes().to_vec();
    const MD: u64 = 3 << 20;
    const ITEMS: u64 = MD + 0x10000;
    let plain: &[(&str, u64, Vec<u8>)] = &[
        ("file-id", 0, b"vhdxfilX".to_vec()),
        ("header1", 0x10000, vec![0]),
        ("header2", 0x20000, vec![0]),
        ("region1", 0x30000, vec![0]),
        ("region2", 0x40000, vec![0]),
        ("md-signature", MD, vec![0]),
        ("md-count", MD + 10, vec![0xff, 0xff]),
        ("md-item-offset", MD + 32 + 16, le32(0xffff_0000)),
        ("md-item-length", MD + 32 + 20, le32(0)),
        // The page 83 item (entry 2): qemu reads items wherever their
        // entries say; qimg refused these.
        ("md-page83-length", MD + 32 + 64 + 20, le32(0xffff_ffff)),
        ("md-page83-in-table", MD + 32 + 64 + 16, le32(0x100)),
        ("md-unknown-required", MD + 32, vec![0x55; 16]),
        // No items at all: qemu-img does not support such a file (qimg
        // said invalid).
        ("md-count-zero", MD + 10, vec![0, 0]),
        ("bs0", ITEMS, le32(0)),
        ("bs64k", ITEMS, le32(64 << 10)),
        ("bs3m", ITEMS, le32(3 << 20)),
        ("bs16m", ITEMS, le32(16 << 20)),
        ("bs256m", ITEMS, le32(256 << 20)),
        ("bs512m", ITEMS, le32(512 << 20)),
        ("has-parent", ITEMS + 4, le32(2)),
        ("leave-allocated", ITEMS + 4, le32(1)),
        ("size0", ITEMS + 8, le64(0)),
        ("size-huge", ITEMS + 8, le64(1 << 56)),
        ("size-64t", ITEMS + 8, le64(64 << 40)),
        ("size-2t", ITEMS + 8, le64(2 << 40)),
        ("size-odd", ITEMS + 8, le64(12345)),
        ("logical-4k", ITEMS + 32, le32(4096)),
        ("logical-1k", ITEMS + 32, le32(1024)),
        ("physical-4k", ITEMS + 36, le32(4096)),
        ("physical-1k", ITEMS + 36, le32(1024)),
        ("bat-past-eof", 2 << 20, le64(0xffff_ff00_0000_0006)),
        ("bat-at-start", 2 << 20, le64(6)),
        ("bat-partial", 2 << 20, le64((8 << 20) | 7)),
        // Without a parent qemu does not check partially present blocks at
        // open (reading them fails); qimg refused the image.
        ("bat-partial-past-eof", 2 << 20, le64((12 << 20) | 7)),
        ("bat-partial-over-bat", 2 << 20, le64((2 << 20) | 7)),
        ("bat-undefined", 2 << 20, le64((8 << 20) | 1)),
        ("bat-unmapped", 2 << 20, le64((8 << 20) | 3)),
        ("bat-state5", 2 << 20, le64((8 << 20) | 5)),
        ("bat-state4", 2 << 20, le64((8 << 20) | 4)),
        ("bat-end-past-eof", 2 << 20, le64((11 << 20) | 6)),
        ("bat-start-at-eof", 2 << 20, le64((16 << 20) | 6)),
        ("bat-over-bat", 2 << 20, le64((2 << 20) | 6)),
        // An offset whose block ends past 2^63: qemu-img reports the
        // overflow, then the end of the file (qimg missed the overflow).
        ("bat-offset-overflow", 2 << 20, le64(0xffff_ffff_fff0_0006)),
    ];
    let mut files = Vec::new();
    for (name, at, bytes) in plain {
        let file = format!("{name}.vhdx");
        fx.patched_copy("base.vhdx", &file, &[(*at, bytes)]);
        files.push(file);
    }
    // Two fields at once, where qemu-img's order of checks decides which
    // is reported: the logical sector size before a block size that is
    // not a power of two; a block's end past the file before its overlap
    // with the headers.
    type TwoEdits = [(u64, Vec<u8>); 2];
    let paired: &[(&str, TwoEdits)] = &[
        (
            "bs3m-logical-4k",
            [(ITEMS, le32(3 << 20)), (ITEMS + 32, le32(4096))],
        ),
        (
            "bat-at-start-bs256m",
            [(ITEMS, le32(256 << 20)), (2 << 20, le64(6))],
        ),
    ];
    for (name, edits) in paired {
        let file = format!("{name}.vhdx");
        fx.patched_copy("base.vhdx", &file, edits);
        files.push(file);
    }
    // Header fields (both copies edited, checksums made right).
    let header: &[(&str, usize, Vec<u8>)] = &[
        ("version", 66, vec![2, 0]),
        ("log-version", 64, vec![1, 0]),
        ("log-guid-empty-log", 48, vec![0x42; 16]),
        ("log-offset-huge", 72, le64(1 << 60)),
        ("log-length-huge", 68, le32(0xfff0_0000)),
        ("log-offset-odd", 72, le64(12345)),
        // (Equal copies, as Disk2VHD writes them, are fine.)
        ("sequence-equal", 8, le64(7)),
        // Without a log GUID, only the log's place is checked (qimg
        // refused a length that is not whole MiB, and took offset 0).
        ("log-offset-zero", 72, le64(0)),
        ("log-length-4k", 68, le32(0x1000)),
    ];
    for (name, off, bytes) in header {
        let file = format!("{name}.vhdx");
        patched_checksummed(
            &fx,
            "base.vhdx",
            "tmp.vhdx",
            0x10000,
            4096,
            &[(0x10000 + off, bytes.clone())],
        );
        patched_checksummed(
            &fx,
            "tmp.vhdx",
            &file,
            0x20000,
            4096,
            &[(0x20000 + off, bytes.clone())],
        );
        files.push(file);
    }
    // Both copies equal in sequence but not in content: no current header
    // (qimg picked one).
    patched_checksummed(
        &fx,
        "base.vhdx",
        "tmp.vhdx",
        0x10000,
        4096,
        &[(0x10008, le64(7))],
    );
    patched_checksummed(
        &fx,
        "tmp.vhdx",
        "sequence-equal-differ.vhdx",
        0x20000,
        4096,
        &[(0x20008, le64(7)), (0x20010, vec![0x42; 16])],
    );
    files.push("sequence-equal-differ.vhdx".to_string());
    // Region table fields (first copy, checksum made right).
    let region: &[(&str, usize, Vec<u8>)] = &[
        ("regions-many", 8, le32(0xffff)),
        ("regions-none", 8, le32(0)),
        ("bat-offset-huge", 16 + 16, le64(1 << 60)),
        ("bat-offset-odd", 16 + 16, le64(12345)),
        ("bat-length-short", 16 + 24, le32(0)),
        ("bat-over-metadata", 16 + 16, le64(3 << 20)),
        ("md-offset-huge", 48 + 16, le64(1 << 60)),
        ("bat-offset-wraps", 16 + 16, le64(0xffff_ffff_fff0_0000)),
        ("md-offset-wraps", 48 + 16, le64(0xffff_ffff_fff0_0000)),
        ("unknown-required", 16, vec![0x55; 16]),
    ];
    for (name, off, bytes) in region {
        let file = format!("{name}.vhdx");
        let mut edits = vec![(0x30000 + off, bytes.clone())];
        if *name == "unknown-required" {
            edits.push((0x30000 + 16 + 28, le32(1)));
        }
        patched_checksummed(&fx, "base.vhdx", &file, 0x30000, 0x10000, &edits);
        files.push(file);
    }
    // A last sector cut short still holds the block reaching into it.
    made(&fx, "byte.vhdx", "block_size=1M,log_size=1M", "12M");
    fx.sh(
        "head -c 100000 base.vhdx > cut.vhdx && head -c 8 base.vhdx > short.vhdx \
         && truncate -s -1 byte.vhdx",
    );
    files.extend(["cut.vhdx", "short.vhdx", "byte.vhdx"].map(String::from));
    for file in &files {
        fx.same_bounded(&["info", "-f", "vhdx", file]);
        fx.same_bounded(&["map", "-f", "vhdx", "--output=json", file]);
        if !file.starts_with("bat-") {
            std::fs::remove_file(fx.path(file)).unwrap();
        }
    }
    // Reading the blocks fails where qemu-img's does (a partially present
    // block needs a parent), and check opens what a plain open refuses
    // and counts the bad blocks.
    let names = plain
        .iter()
        .map(|(n, _, _)| *n)
        .chain(paired.iter().map(|(n, _)| *n));
    for name in names.filter(|n| n.starts_with("bat-")) {
        let file = format!("{name}.vhdx");
        for check in [
            &["check"][..],
            &["check", "--output=json"],
            &["check", "-r", "all"],
        ] {
            let mut args = check.to_vec();
            args.extend(["-f", "vhdx", &file]);
            fx.same_bounded(&args);
        }
        let _ = std::fs::remove_file(fx.path("out.raw"));
        fx.same_bounded(&["convert", "-f", "vhdx", "-O", "raw", &file, "out.raw"]);
        std::fs::remove_file(fx.path(&file)).unwrap();
    }
}

/// A block that cannot be read (a BAT entry of all ones) inside a 2 MiB
/// request: qemu-img names the request's start (qemu reports no block
/// status for vhdx, so it reads 2 MiB at a time), qimg named the 256 KiB
/// step that failed.
#[test]
fn a_failed_read_names_the_request_as_qemu_img_does() {
    let fx = Fixture::new("vhdx_failed_read");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        "block_size=1M",
        "img.vhdx",
        "16M",
    ]);
    fx.qemu_io_cmds("vhdx", "img.vhdx", &["write -P 1 0 1M", "write -P 2 3M 1M"]);
    // The BAT (at 2 MiB): entry 3, block 3, fully present (state 6).
    let bytes = std::fs::read(fx.path("img.vhdx")).unwrap();
    assert_eq!(bytes[0x20_0018] & 7, 6, "block 3 is not where expected");
    fx.patched_copy("img.vhdx", "bad.vhdx", &[(0x20_0018, vec![0xff; 8])]);
    let out = fx.same(&["convert", "-O", "raw", "bad.vhdx", "out.raw"]);
    assert_eq!(out.status, 1, "{}", out.stderr);
}

#[test]
fn resize_grows_and_shrinks_within_the_bat() {
    // Beyond qemu-img, which cannot resize a VHDX: the result passes
    // qemu-img check, keeps the data, and a shrunk tail reads as zeros
    // when the disk grows again.
    let fx = Fixture::new("vhdx_resize");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        "block_size=1M",
        "r.vhdx",
        "12M",
    ]);
    fx.qemu_io_cmds("vhdx", "r.vhdx", &["write -P 5 0 12M"]);
    fx.oracle(&["convert", "-O", "raw", "r.vhdx", "before.raw"]);
    let grow = fx.qimg(&["resize", "r.vhdx", "100M"]);
    assert_eq!(grow.status, 0, "{}", grow.stderr);
    fx.oracle(&["check", "r.vhdx"]);
    let info = fx.oracle(&["info", "--output=json", "r.vhdx"]);
    assert!(
        info.stdout.contains("\"virtual-size\": 104857600"),
        "{}",
        info.stdout
    );
    let cmp = fx.qemu_img(&["compare", "before.raw", "r.vhdx"]);
    assert_eq!(cmp.status, 0, "{}", cmp.stdout);
    // Shrinking needs --shrink, as for every format.
    assert_eq!(fx.qimg(&["resize", "r.vhdx", "5000000"]).status, 1);
    let shrink = fx.qimg(&["resize", "--shrink", "r.vhdx", "5000000"]);
    assert_eq!(shrink.status, 0, "{}", shrink.stderr);
    fx.oracle(&["check", "r.vhdx"]);
    assert_eq!(fx.qimg(&["resize", "r.vhdx", "12M"]).status, 0);
    fx.oracle(&["check", "r.vhdx"]);
    fx.qemu_io_cmds(
        "vhdx",
        "r.vhdx",
        &["read -P 5 0 5000192", "read -P 0 5000192 7582720"],
    );
    // Past what the BAT region holds (1 MiB of entries), it refuses.
    let big = fx.qimg(&["resize", "r.vhdx", "2T"]);
    assert_eq!(big.status, 1);
    fx.oracle(&["check", "r.vhdx"]);
}

#[test]
fn measure_gives_the_size_convert_makes() {
    // Beyond qemu-img, which cannot measure for vhdx: the required size is
    // the file convert makes, for each subformat.
    let fx = Fixture::new("vhdx_measure");
    source(&fx);
    for (i, opts) in VARIANTS.iter().enumerate() {
        let out = format!("m{i}.vhdx");
        let mut measure = vec!["measure", "--output=json", "-O", "vhdx"];
        let mut convert = vec!["convert", "-O", "vhdx"];
        if !opts.is_empty() {
            measure.extend(["-o", opts]);
            convert.extend(["-o", opts]);
        }
        measure.push("src.raw");
        convert.extend(["src.raw", out.as_str()]);
        let m = fx.qimg(&measure);
        assert_eq!(m.status, 0, "{}", m.stderr);
        assert_eq!(fx.qimg(&convert).status, 0);
        let len = std::fs::metadata(fx.path(&out)).unwrap().len();
        assert!(
            m.stdout.contains(&format!("\"required\": {len}")),
            "-o {opts}: {} vs {len}",
            m.stdout
        );
    }
}

#[test]
fn a_hostile_log_neither_hangs_nor_allocates_without_bound() {
    // Every sector of the log holds an entry header with the header's log
    // GUID that claims the whole log and fails its checksum: qemu-img
    // finds nothing to replay, and so does qimg, in bounded time and
    // memory.
    let fx = Fixture::new("vhdx_hostile_log");
    made(&fx, "base.vhdx", "", "12M");
    let guid = [0x42u8; 16];
    patched_checksummed(
        &fx,
        "base.vhdx",
        "tmp.vhdx",
        0x10000,
        4096,
        &[(0x10000 + 48, guid.to_vec())],
    );
    patched_checksummed(
        &fx,
        "tmp.vhdx",
        "log.vhdx",
        0x20000,
        4096,
        &[(0x20000 + 48, guid.to_vec())],
    );
    let mut b = std::fs::read(fx.path("log.vhdx")).unwrap();
    for at in (1 << 20..2 << 20).step_by(4096) {
        b[at..at + 4].copy_from_slice(b"loge");
        b[at + 8..at + 12].copy_from_slice(&((1u32 << 20) - 4096).to_le_bytes());
        b[at + 32..at + 48].copy_from_slice(&guid);
    }
    fx.write_sparse("log.vhdx", &b);
    fx.same_bounded(&["info", "log.vhdx"]);
    fx.same_bounded(&["check", "log.vhdx"]);
}

/// Growing a VHDX whose table holds an entry past the old end (a damaged
/// image: block 4 of a 4 MiB disk "fully present" at offset 0): the new
/// space reads as zeros, not as the file header the entry names, and the
/// image checks clean in qemu-img (resize is beyond qemu-img).
#[test]
fn growing_clears_entries_past_the_old_end() {
    let fx = Fixture::new("vhdx_grow_stale");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        "subformat=fixed,block_size=1M,log_size=1M",
        "m.vhdx",
        "4M",
    ]);
    fx.qemu_io_cmds(
        "vhdx",
        "m.vhdx",
        &["write -P 0x11 0 64k", "write -P 0x22 3M 64k"],
    );
    // The BAT region of a qemu-made image starts at 2 MiB; entry 4 is
    // block 4's (no sector bitmap entry comes before it).
    fx.patched_copy(
        "m.vhdx",
        "bad.vhdx",
        &[(2 * 1048576 + 32, 6u64.to_le_bytes())],
    );
    fx.oracle(&[
        "convert",
        "-f",
        "vhdx",
        "-O",
        "raw",
        "bad.vhdx",
        "before.raw",
    ]);
    let out = fx.qimg(&["resize", "-f", "vhdx", "bad.vhdx", "+1M"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.sh("truncate -s 5M before.raw");
    fx.oracle(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "vhdx",
        "before.raw",
        "bad.vhdx",
    ]);
    fx.oracle(&["check", "-f", "vhdx", "bad.vhdx"]);
}

/// A dynamic VHDX reports data everywhere (as qemu's driver does), so a
/// copy of a 10 TiB one reads 10 TiB: its plan is made a segment at a
/// time, and the copy holds as little memory in its first seconds as
/// later (the whole plan up front held 210 MB by then, and 1.3 GB for
/// 60 TiB).
#[test]
fn a_copy_of_a_disk_reported_as_all_data_holds_bounded_memory() {
    let fx = Fixture::new("vhdx_all_data");
    fx.oracle(&["create", "-q", "-f", "vhdx", "big.vhdx", "10T"]);
    let mut child = fx.spawn_qimg(&["convert", "-O", "raw", "big.vhdx", "big.raw"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(child.try_wait().expect("wait").is_none(), "the copy ended");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    child.kill().expect("kill");
    child.wait().expect("wait");
    let peak: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(peak < 64 << 10, "{peak} KiB after 3 s");
}
