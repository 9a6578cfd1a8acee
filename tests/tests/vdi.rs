//! The vdi driver against qemu-img 10.0.2: qimg reads every variant
//! qemu-img creates and qemu-io writes (`info`, `map`, `check`, `compare`,
//! `convert`), creates and converts to the same files (UUIDs aside), which
//! the real `qemu-img check` and `compare` accept, checks damaged images
//! with qemu-img's verdicts, refuses hostile headers with its messages, and
//! survives a kill at every write of a copy.

use qimg_tests::{file_shape, Fixture};
use std::os::unix::process::ExitStatusExt;

/// The pattern qemu-io writes into fixtures: a whole block, a partial one,
/// zeros written over a block, and the image's last bytes.
const PATTERN: &[&str] = &[
    "write -P 1 0 1M",
    "write -P 2 3100k 8k",
    "write -z 1M 1M",
    "write -P 3 4M 64k",
];

/// Bytes of the header holding the image and modification UUIDs, drawn at
/// random by both tools.
const UUIDS: std::ops::Range<usize> = 0x188..0x1a8;

/// `qemu-img create -q -f vdi [-o OPTS] FILE SIZE` by the oracle.
fn make(fx: &Fixture, opts: &str, file: &str, size: &str) {
    let mut args = vec!["create", "-q", "-f", "vdi"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([file, size]);
    fx.oracle(&args);
}

/// A fixture with `img.vdi` made by qemu-img with `opts` and `size` and the
/// [`PATTERN`] written by qemu-io where it fits.
fn made(name: &str, opts: &str, size: &str, pattern: bool) -> Fixture {
    let fx = Fixture::new(name);
    make(&fx, opts, "img.vdi", size);
    if pattern {
        fx.qemu_io_cmds("vdi", "img.vdi", PATTERN);
    }
    fx
}

/// qimg and qemu-img print the same for `info`, `map`, `check` and
/// `compare`, and `convert -O raw` gives the same bytes.
fn reads_alike(fx: &Fixture, file: &str) {
    for args in [
        vec!["info", file],
        vec!["info", "--output=json", file],
        vec!["map", file],
        vec!["map", "--output=json", file],
        vec!["check", file],
        vec!["check", "--output=json", file],
    ] {
        fx.same(&args);
    }
    fx.oracle(&["convert", "-O", "raw", file, "theirs.raw"]);
    let ours = fx.qimg(&["convert", "-O", "raw", file, "ours.raw"]);
    assert_eq!(ours.status, 0, "qimg convert {file}: {}", ours.stderr);
    assert!(
        std::fs::read(fx.path("ours.raw")).unwrap()
            == std::fs::read(fx.path("theirs.raw")).unwrap(),
        "convert -O raw of {file} differs from qemu-img's"
    );
    fx.same(&["compare", file, "theirs.raw"]);
    fx.same(&["compare", "-f", "vdi", "-F", "raw", file, "theirs.raw"]);
}

/// The two files are equal but for the random UUIDs in their headers.
fn same_but_uuids(fx: &Fixture, ours: &str, theirs: &str) {
    let (mut a, mut b) = (
        std::fs::read(fx.path(ours)).unwrap(),
        std::fs::read(fx.path(theirs)).unwrap(),
    );
    assert_eq!(a.len(), b.len(), "{ours} and {theirs} differ in length");
    if a.len() >= UUIDS.end {
        a[UUIDS].fill(0);
        b[UUIDS].fill(0);
    }
    assert!(a == b, "{ours} and {theirs} differ beyond their UUIDs");
    assert_eq!(
        file_shape(&fx.path(ours)),
        file_shape(&fx.path(theirs)),
        "{ours} and {theirs} differ in allocation"
    );
}

#[test]
fn dynamic_and_static_images_qemu_img_writes_read_alike() {
    for (i, opts) in ["", "static=on", "static=off,preallocation=full"]
        .iter()
        .enumerate()
    {
        let fx = made(&format!("vdi_read_{i}"), opts, "5M", true);
        reads_alike(&fx, "img.vdi");
    }
}

#[test]
fn holes_in_the_file_show_in_static_images_only() {
    // qemu-img asks the file what a block holds only in a static image;
    // a dynamic image's allocated blocks are data even over a hole. And
    // it answers block by block, which `compare -p` shows. A file cut
    // short reads as zeros past its end, which a static image's map shows
    // too (qimg reported data there).
    for (i, opts) in ["", "static=on"].iter().enumerate() {
        let fx = made(&format!("vdi_holes_{i}"), opts, "5M", true);
        fx.sh("fallocate -d img.vdi");
        fx.sh("cp img.vdi cut.vdi && truncate -s 3700000 cut.vdi");
        for file in ["img.vdi", "cut.vdi"] {
            for args in [
                &["map", file][..],
                &["map", "--output=json", file],
                &["compare", "-p", file, file],
            ] {
                fx.same(args);
            }
        }
    }
}

#[test]
fn unaligned_and_empty_images_read_alike() {
    // 1000 bytes count as two sectors; 1500k leaves the last block half
    // used; 0 makes an image without blocks.
    for (i, (opts, size)) in [
        ("", "1000"),
        ("static=on", "1000"),
        ("", "1500k"),
        ("static=on", "1500k"),
        ("", "0"),
    ]
    .iter()
    .enumerate()
    {
        let fx = made(&format!("vdi_odd_{i}"), opts, size, false);
        if *size == "1500k" {
            fx.qemu_io_cmds("vdi", "img.vdi", &["write -P 7 1400k 100k"]);
        }
        reads_alike(&fx, "img.vdi");
    }
}

#[test]
fn create_makes_qemu_img_files() {
    let fx = Fixture::new("vdi_create");
    let cases = [
        ("", "5M"),
        ("static=on", "5M"),
        ("static=on,preallocation=full", "3M"),
        ("preallocation=falloc", "3M"),
        ("", "1000"),
        ("static=on", "1500k"),
        ("", "0"),
        ("", "2G"),
        ("preallocation=metadata", "1M"),
        ("preallocation=bogus", "1M"),
        ("", "600T"),
    ];
    for (opts, size) in cases {
        let run = |tool: &str| {
            let file = format!("{tool}.vdi");
            let _ = std::fs::remove_file(fx.path(&file));
            let mut args = vec!["create", "-f", "vdi"];
            if !opts.is_empty() {
                args.extend(["-o", opts]);
            }
            args.extend([file.as_str(), size]);
            let out = if tool == "ours" {
                fx.qimg(&args)
            } else {
                fx.qemu_img(&args)
            };
            (
                out.stdout.replace(&file, "F"),
                out.stderr.replace(&file, "F"),
                out.status,
            )
        };
        assert_eq!(run("ours"), run("theirs"), "create -o {opts} {size}");
        if fx.path("theirs.vdi").exists() && file_shape(&fx.path("theirs.vdi")).0 > 0 {
            same_but_uuids(&fx, "ours.vdi", "theirs.vdi");
            fx.same(&["check", "ours.vdi"]);
        }
    }
    fx.same(&["create", "-f", "vdi", "-o", "help"]);
    fx.same(&["create", "-f", "vdi", "-o", "help", "x.vdi"]);
}

#[test]
fn convert_to_vdi_lays_out_blocks_as_qemu_img_does() {
    let fx = Fixture::new("vdi_convert");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "7M"]);
    fx.qemu_io_cmds(
        "raw",
        "src.raw",
        &[
            "write -P 1 0 64k",
            "write -P 2 3M 1M",
            "write -P 3 5000k 100k",
            "write -P 4 7000k 168k",
        ],
    );
    for opts in ["static=off", "static=on"] {
        for tool in ["ours", "theirs"] {
            let _ = std::fs::remove_file(fx.path(&format!("{tool}.vdi")));
        }
        let args = |out: &'static str| ["convert", "-O", "vdi", "-o", opts, "src.raw", out];
        let ours = fx.qimg(&args("ours.vdi"));
        assert_eq!(ours.status, 0, "{}", ours.stderr);
        fx.oracle(&args("theirs.vdi"));
        same_but_uuids(&fx, "ours.vdi", "theirs.vdi");
        fx.oracle(&["check", "ours.vdi"]);
        fx.oracle(&["compare", "src.raw", "ours.vdi"]);
    }
    // Into an existing image: qemu-img accepts the result.
    make(&fx, "", "into.vdi", "7M");
    let out = fx.qimg(&["convert", "-n", "-O", "vdi", "src.raw", "into.vdi"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["check", "into.vdi"]);
    fx.oracle(&["compare", "src.raw", "into.vdi"]);
    // And back: the same bytes as qemu-img's copy.
    reads_alike(&fx, "ours.vdi");
}

#[test]
fn a_copy_over_qemu_img_data_reads_back_in_qemu_img() {
    // The copy zeroes qemu-img's blocks and allocates block 2 after them.
    let fx = made("vdi_overwrite", "", "5M", true);
    fx.oracle(&["create", "-q", "-f", "raw", "more.raw", "5M"]);
    fx.qemu_io_cmds("raw", "more.raw", &["write -P 9 2M 4k"]);
    let out = fx.qimg(&["convert", "-n", "-O", "vdi", "more.raw", "img.vdi"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["check", "img.vdi"]);
    fx.oracle(&["compare", "-f", "vdi", "-F", "raw", "img.vdi", "more.raw"]);
}

/// `img.vdi` with `edits` written over it, as `damaged.vdi`.
fn damage(fx: &Fixture, edits: &[(u64, Vec<u8>)]) {
    fx.patched_copy("img.vdi", "damaged.vdi", edits);
}

#[test]
fn damaged_block_maps_check_as_qemu_img_does() {
    // The pattern allocates blocks 0, 3, 1 and 4 in that order: map entries
    // [0, 2, ff, 1, 3], count 4.
    let fx = made("vdi_damaged", "", "5M", true);
    let le = |v: u32| v.to_le_bytes().to_vec();
    let cases: Vec<Vec<(u64, Vec<u8>)>> = vec![
        vec![(0x204, le(9))],                 // an entry past the image
        vec![(0x204, le(1))],                 // a block named twice
        vec![(0x184, le(7))],                 // a count above the entries
        vec![(0x184, le(1))],                 // a count below them
        vec![(0x20c, le(0)), (0x208, le(0))], // three names for block 0
        vec![(0x204, le(0xffff_fffe))],       // a discarded entry
        vec![(0x154, le(0x4000_0000))],       // the map past the file's end
        vec![(0x154, le(0))],                 // the map over the header
    ];
    for edits in &cases {
        damage(&fx, edits);
        fx.same(&["check", "damaged.vdi"]);
        fx.same(&["check", "--output=json", "damaged.vdi"]);
        fx.same(&["check", "-r", "leaks", "damaged.vdi"]);
        fx.same(&["check", "-r", "all", "damaged.vdi"]);
        fx.same(&["map", "--output=json", "damaged.vdi"]);
        fx.same(&["compare", "damaged.vdi", "img.vdi"]);
    }
}

#[test]
fn hostile_headers_are_refused_as_qemu_img_refuses_them() {
    let fx = made("vdi_hostile", "", "5M", true);
    let le = |v: u32| v.to_le_bytes().to_vec();
    let le64 = |v: u64| v.to_le_bytes().to_vec();
    let cases: Vec<Vec<(u64, Vec<u8>)>> = vec![
        vec![(0x40, le(0x1234_5678))],  // signature
        vec![(0x44, le(0))],            // version 0.0
        vec![(0x44, le(0x0001_0000))],  // version 1.0
        vec![(0x44, le(0x0001_0002))],  // version 1.2
        vec![(0x48, le(0))],            // header size (ignored)
        vec![(0x4c, le(99))],           // image type (ignored)
        vec![(0x154, le(0x201))],       // unaligned map
        vec![(0x158, le(0x401))],       // unaligned data
        vec![(0x168, le(0))],           // sector size 0
        vec![(0x178, le(0))],           // block size 0
        vec![(0x178, le(0x20_0000))],   // block size 2 MiB
        vec![(0x17c, le(512))],         // block extra (ignored)
        vec![(0x170, le64(0x60_0000))], // disk past the map
        vec![(0x170, le64(0x4f_f064))], // odd disk size
        vec![(0x170, le64(u64::MAX))],  // huge disk
        vec![(0x180, le(0))],           // no blocks
        vec![(0x180, le(0x4000_0000))], // too many blocks
        vec![(0x1a8, le(1))],           // link UUID
        vec![(0x1b8, le(1))],           // parent UUID
        vec![(0x158, le(0))],           // data over the header
        vec![(0x158, le(0x200))],       // data over the map
        vec![(0x184, le(u32::MAX))],    // count past the map
    ];
    for edits in &cases {
        damage(&fx, edits);
        fx.same_bounded(&["info", "damaged.vdi"]);
        fx.same_bounded(&["info", "-f", "vdi", "damaged.vdi"]);
        fx.same_bounded(&["check", "-f", "vdi", "damaged.vdi"]);
        fx.same_bounded(&[
            "map",
            "-f",
            "vdi",
            "--output=json",
            "--max-length",
            "16M",
            "damaged.vdi",
        ]);
    }
    // A 2 GiB map past the end of the file: qemu-img reads 536870784
    // entries naming block 0 (its check prints a line for each).
    damage(&fx, &[(0x180, le(0x1fff_ff80)), (0x170, le64(1 << 40))]);
    fx.same_bounded(&["info", "-f", "vdi", "damaged.vdi"]);
    fx.same_bounded(&[
        "map",
        "-f",
        "vdi",
        "--output=json",
        "--max-length",
        "16M",
        "damaged.vdi",
    ]);
    for (i, len) in [0usize, 300, 600].into_iter().enumerate() {
        let name = format!("short{i}.vdi");
        fx.sh(&format!("head -c {len} img.vdi > {name}"));
        fx.same_bounded(&["info", "-f", "vdi", &name]);
    }
}

#[test]
fn images_whose_tables_a_write_could_damage_are_not_written() {
    // qemu-img would write such images (every block past the file's end
    // naming block 0, or data over the map); qimg refuses to open them for
    // writing.
    let fx = made("vdi_unwritable", "", "5M", true);
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "5M"]);
    let le = |v: u32| v.to_le_bytes().to_vec();
    for edits in [
        vec![(0x154u64, le(0x4000_0000))],
        vec![(0x158, le(0x200))],
        vec![(0x154, le(0))],
    ] {
        damage(&fx, &edits);
        let before = std::fs::read(fx.path("damaged.vdi")).unwrap();
        let out = fx.qimg(&["convert", "-n", "-O", "vdi", "src.raw", "damaged.vdi"]);
        assert_eq!(out.status, 1);
        assert!(
            out.stderr.contains("cannot write to this VDI image"),
            "{}",
            out.stderr
        );
        assert!(before == std::fs::read(fx.path("damaged.vdi")).unwrap());
    }
}

#[test]
fn measure_predicts_what_convert_writes() {
    // qemu-img cannot measure for vdi; qimg's figures are what its own
    // convert writes.
    let fx = Fixture::new("vdi_measure");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "7M"]);
    fx.qemu_io_cmds("raw", "src.raw", &["write -P 1 0 64k", "write -P 2 3M 1M"]);
    for opts in ["static=off", "static=on"] {
        let out = fx.qimg(&[
            "measure",
            "--output=json",
            "-O",
            "vdi",
            "-o",
            opts,
            "src.raw",
        ]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let _ = std::fs::remove_file(fx.path("m.vdi"));
        fx.qimg(&["convert", "-O", "vdi", "-o", opts, "src.raw", "m.vdi"]);
        let len = file_shape(&fx.path("m.vdi")).0;
        assert_eq!(v["required"], len, "{opts}");
        assert_eq!(v["fully-allocated"], 512 + 512 + (7 << 20), "{opts}");
    }
}

#[test]
fn a_copy_killed_at_any_write_leaves_an_image_qemu_img_checks_clean() {
    let fx = Fixture::new("vdi_crash");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "6M"]);
    fx.qemu_io_cmds(
        "raw",
        "src.raw",
        &["write -P 1 0 64k", "write -P 2 2M 1M", "write -P 3 5M 4k"],
    );
    make(&fx, "", "pristine.vdi", "6M");
    fx.qemu_io_cmds("vdi", "pristine.vdi", &["write -P 5 1M 4k"]);
    for n in 0.. {
        assert!(n < 200, "no end to the fault points");
        fx.sh("cp pristine.vdi t.vdi");
        let status = std::process::Command::new(fx.path(".bin/qemu-img"))
            .args(["convert", "-n", "-O", "vdi", "src.raw", "t.vdi"])
            .current_dir(fx.path(""))
            .env("QIMG_PLUGINS", qimg_tests::workspace().join("plugins.toml"))
            .env("QIMG_FAULT", format!("kill-after:{n}"))
            .output()
            .expect("run qimg")
            .status;
        let check = fx.qemu_img(&["check", "t.vdi"]);
        if status.success() {
            assert_eq!(check.status, 0, "{}", check.stderr);
            fx.oracle(&["compare", "src.raw", "t.vdi"]);
            break;
        }
        assert_eq!(status.signal(), Some(9), "kill-after:{n}");
        // The count and the map are written together: qemu-img finds
        // nothing wrong at any point, and the data reads as before or after.
        assert_eq!(check.status, 0, "kill-after:{n}: {}", check.stderr);
    }
}

#[test]
fn resize_grows_where_the_block_map_has_room() {
    // qemu-img resizes no vdi; qimg grows one as far as the space its
    // block map was given allows, and refuses to shrink with qemu-img's
    // message.
    for opts in ["static=off", "static=on"] {
        let fx = made(&format!("vdi_resize_{opts}"), opts, "1500k", false);
        fx.qemu_io_cmds("vdi", "img.vdi", &["write -P 1 1M 400k"]);
        let out = fx.qimg(&["resize", "img.vdi", "5M"]);
        assert_eq!(
            (out.status, out.stdout.as_str()),
            (0, "Image resized.\n"),
            "{}",
            out.stderr
        );
        fx.oracle(&["check", "img.vdi"]);
        let info = fx.oracle(&["info", "--output=json", "img.vdi"]).stdout;
        assert!(info.contains("\"virtual-size\": 5242880"), "{info}");
        fx.qemu_io_cmds(
            "vdi",
            "img.vdi",
            &[
                "read -P 1 1M 400k",
                "read -P 0 1500k 3596k",
                "write -P 2 4M 1M",
            ],
        );
        fx.oracle(&["check", "img.vdi"]);
        // 512 bytes of map hold 128 entries: 128 MiB.
        let out = fx.qimg(&["resize", "img.vdi", "129M"]);
        assert_eq!(out.status, 1);
        assert!(
            out.stderr.contains("beyond 134217728 bytes"),
            "{}",
            out.stderr
        );
        let ours = fx.qimg(&["resize", "--shrink", "img.vdi", "4M"]);
        let theirs = fx.qemu_img(&["resize", "--shrink", "img.vdi", "4M"]);
        assert_eq!(ours, theirs);
        let out = fx.qimg(&["resize", "img.vdi", "128M"]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        fx.oracle(&["check", "img.vdi"]);
        fx.qemu_io_cmds("vdi", "img.vdi", &["read -P 2 4M 1M", "read -P 0 5M 123M"]);
    }
}

#[test]
fn headers_as_virtualbox_writes_them_read_and_write_alike() {
    // VirtualBox's own text, its 0x190-byte "1.1+" header with a logical
    // geometry, and a legacy geometry: fields qemu-img ignores.
    let fx = made("vdi_vbox", "", "5M", true);
    let mut text = b"<<< Oracle VM VirtualBox Disk Image >>>\n".to_vec();
    text.resize(0x40, 0);
    let le = |v: u32| v.to_le_bytes().to_vec();
    fx.patched_copy(
        "img.vdi",
        "vbox.vdi",
        &[
            (0u64, text),
            (0x48, le(0x190)),
            (0x15c, le(10)),
            (0x160, le(16)),
            (0x164, le(63)),
            (0x1c8, le(10)),
            (0x1cc, le(16)),
            (0x1d0, le(63)),
            (0x1d4, le(512)),
        ],
    );
    reads_alike(&fx, "vbox.vdi");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "5M"]);
    fx.qemu_io_cmds("raw", "src.raw", &["write -P 8 2M 1M"]);
    let out = fx.qimg(&["convert", "-n", "-O", "vdi", "src.raw", "vbox.vdi"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["check", "vbox.vdi"]);
    fx.oracle(&["compare", "src.raw", "vbox.vdi"]);
    let head = std::fs::read(fx.path("vbox.vdi")).unwrap();
    assert!(head.starts_with(b"<<< Oracle VM VirtualBox"));
}

/// Growing a VDI whose block map names a block far past the data area (a
/// damaged image: entry 2 = 0x80000000) leaves the header's allocated
/// count as it was: qemu-img check finds the same errors before and after
/// (qimg wrote the count allocation goes by, 2147483649), and the data
/// reads as before, the new MiB as zeros (resize is beyond qemu-img).
#[test]
fn growing_keeps_the_allocated_count_of_a_damaged_map() {
    let fx = Fixture::new("vdi_grow_damaged");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "8M"]);
    fx.qemu_io("src.raw", "write -P 0x11 0 64k");
    fx.qemu_io("src.raw", "write -P 0x22 1M 128k");
    fx.qemu_io("src.raw", "write -P 0x33 3M 4k");
    fx.oracle(&["convert", "-f", "raw", "-O", "vdi", "src.raw", "m.vdi"]);
    // Block map entry 2 (the map starts at 512) -> 0x80000000.
    fx.patched_copy("m.vdi", "bad.vdi", &[(520, 0x8000_0000u32.to_le_bytes())]);
    let before = fx.qemu_img(&["check", "-f", "vdi", "bad.vdi"]);
    fx.oracle(&["convert", "-f", "vdi", "-O", "raw", "bad.vdi", "before.raw"]);
    let out = fx.qimg(&["resize", "-f", "vdi", "bad.vdi", "+1M"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let after = fx.qemu_img(&["check", "-f", "vdi", "bad.vdi"]);
    assert_eq!(
        (after.status, &after.stderr),
        (before.status, &before.stderr)
    );
    fx.sh("truncate -s 9M before.raw");
    fx.oracle(&["compare", "-f", "raw", "-F", "vdi", "before.raw", "bad.vdi"]);
}
