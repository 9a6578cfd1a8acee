//! The vpc (VHD) driver against qemu-img 10.0.2: qimg reads what qemu-img
//! and qemu-io wrote and what Virtual PC, Hyper-V and Disk2VHD wrote (the
//! shared sample images), creates the files qemu-img creates, and what it
//! writes passes `qemu-img compare` against its source.

use qimg_tests::{workspace, Fixture};

/// The pattern written into every fixture: a partial first block, a run
/// across a block boundary and a few sectors near the end.
const PATTERN: &[&str] = &[
    "write -P 1 0 4k",
    "write -P 2 1536k 1M",
    "write -P 3 9000k 3000k",
];

/// `create -f vpc [-o OPTS] FILE SIZE` by qemu-img, then [`PATTERN`] by
/// qemu-io where the size allows.
fn made(fx: &Fixture, file: &str, opts: &str, size: &str) {
    let mut args = vec!["create", "-q", "-f", "vpc"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([file, size]);
    fx.oracle(&args);
    fx.qemu_io_cmds("vpc", file, PATTERN);
}

/// The option sets qemu-img creates vpc images with.
const VARIANTS: &[&str] = &[
    "",
    "force_size=on",
    "subformat=fixed",
    "subformat=fixed,force_size=on",
    "subformat=dynamic,force_size=off",
];

/// The file's bytes with each footer's time stamp, checksum and unique id
/// zeroed: what differs between two runs of the same creation.
fn masked(fx: &Fixture, file: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(fx.path(file)).unwrap();
    let len = bytes.len();
    for at in [0, len.saturating_sub(512)] {
        if bytes[at..].starts_with(b"conectix") {
            bytes[at + 24..at + 28].fill(0);
            bytes[at + 64..at + 84].fill(0);
        }
    }
    bytes
}

#[test]
fn qemu_made_images_read_alike() {
    let fx = Fixture::new("vpc_reads");
    for (i, opts) in VARIANTS.iter().enumerate() {
        for size in ["12M", "12345678"] {
            let file = format!("img{i}-{size}.vhd");
            made(&fx, &file, opts, size);
            // A fixed disk probes as raw (its footer is at the end only).
            fx.same_info_and_map(&["-f", "vpc", &file]);
            fx.same_info_and_map(&[&file]);
            fx.converts_to_raw("vpc", &file);
            fx.same(&["compare", "-f", "vpc", "-F", "vpc", &file, &file]);
        }
    }
}

#[test]
fn empty_and_tiny_disks_read_alike() {
    let fx = Fixture::new("vpc_tiny");
    for (i, opts) in VARIANTS.iter().enumerate() {
        for size in ["0", "1", "511", "70000"] {
            let file = format!("t{i}-{size}.vhd");
            let mut args = vec!["create", "-q", "-f", "vpc"];
            if !opts.is_empty() {
                args.extend(["-o", opts]);
            }
            args.extend([file.as_str(), size]);
            fx.oracle(&args);
            // An empty fixed disk is a footer at offset 0, which qemu-img
            // then takes for a dynamic disk's copy and cannot open.
            fx.same_info_and_map(&["-f", "vpc", &file]);
        }
    }
}

/// Writes `footer` edits (offset within the footer, bytes) into both
/// footers of `src` (the start copy of a dynamic disk too) and fixes the
/// checksums, as a tool other than qemu-img would have written them.
fn refooted(fx: &Fixture, src: &str, dst: &str, edits: &[(usize, &[u8])]) {
    let mut bytes = std::fs::read(fx.path(src)).unwrap();
    let len = bytes.len();
    for at in [0, len - 512] {
        if !bytes[at..].starts_with(b"conectix") {
            continue;
        }
        for (off, data) in edits {
            bytes[at + off..at + off + data.len()].copy_from_slice(data);
        }
        bytes[at + 64..at + 68].fill(0);
        let sum = !bytes[at..at + 512]
            .iter()
            .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
        bytes[at + 64..at + 68].copy_from_slice(&sum.to_be_bytes());
    }
    fx.write_sparse(dst, &bytes);
}

#[test]
fn the_creator_application_picks_the_size() {
    // A disk whose geometry gives 10514432 bytes and whose Current Size
    // says 10485760: Virtual PC's and qemu's own go by the geometry,
    // every other creator by Current Size, and the largest geometry always
    // by Current Size.
    let fx = Fixture::new("vpc_creators");
    for sub in ["dynamic", "fixed"] {
        let base = format!("{sub}.vhd");
        fx.oracle(&[
            "create",
            "-q",
            "-f",
            "vpc",
            "-o",
            &format!("subformat={sub}"),
            &base,
            "10M",
        ]);
        let current = 10_485_761u64.to_be_bytes();
        for app in [
            &b"vpc "[..],
            b"qemu",
            b"qem2",
            b"win ",
            b"d2v\0",
            b"CTXS",
            b"tap\0",
            b"vs  ",
            b"\0\0\0\0",
            b"QEMU",
        ] {
            let file = format!(
                "{sub}-{}.vhd",
                String::from_utf8_lossy(app).trim_matches('\0').trim()
            );
            refooted(&fx, &base, &file, &[(28, app), (48, &current)]);
            fx.same(&["info", "-f", "vpc", &file]);
            fx.same(&["map", "-f", "vpc", "--output=json", &file]);
        }
        let max = [0xff, 0xff, 16, 255];
        refooted(
            &fx,
            &base,
            "max.vhd",
            &[(28, b"qemu"), (48, &current), (56, &max)],
        );
        fx.same(&["info", "-f", "vpc", "max.vhd"]);
        // QEMU's force_size_calc option overrides the creator.
        for mode in ["chs", "current_size", "foo"] {
            for file in [format!("{sub}-qemu.vhd"), format!("{sub}-win.vhd")] {
                let opts = format!("driver=vpc,force_size_calc={mode},file.filename={file}");
                fx.same(&["info", "--image-opts", &opts]);
                let json = format!(
                    "json:{{\"driver\":\"vpc\",\"force_size_calc\":\"{mode}\",\"file\":{{\"driver\":\"file\",\"filename\":\"{file}\"}}}}"
                );
                fx.same(&["info", "--output=json", &json]);
            }
        }
    }
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
fn sample_images_read_as_qemu_img_reads_them() {
    let fx = Fixture::new("vpc_samples");
    for name in [
        "virtualpc-dynamic.vhd",
        "hyperv2012r2-dynamic.vhd",
        "d2v-zerofilled.vhd",
    ] {
        if !sample(&fx, name) {
            return;
        }
        // 136 GB disks: info and map, not the whole content.
        fx.same_info_and_map(&[name]);
        fx.same(&["info", "-f", "vpc", "--output=json", name]);
    }
    // Disk2VHD's is small enough to copy whole.
    fx.converts_to_raw("vpc", "d2v-zerofilled.vhd");
    fx.same(&[
        "compare",
        "-f",
        "vpc",
        "-F",
        "vpc",
        "d2v-zerofilled.vhd",
        "d2v-zerofilled.vhd",
    ]);
    // The fuzzed image (absurd Max Table Entries) is refused.
    if sample(&fx, "afl5.img") {
        let out = fx.same_bounded(&["info", "afl5.img"]);
        assert_eq!(out.status, 1);
        fx.same_bounded(&["convert", "-O", "raw", "afl5.img", "afl5.raw"]);
    }
}

#[test]
fn create_writes_the_bytes_qemu_img_writes() {
    let fx = Fixture::new("vpc_create");
    for (i, opts) in VARIANTS.iter().enumerate() {
        for size in [
            "0",
            "1",
            "1M",
            "10M",
            "127G",
            "128G",
            "136899993601",
            "2040G",
        ] {
            // Fixed disks of that size are sparse files: cheap to create,
            // but not to read whole.
            if opts.contains("fixed") && (size.ends_with('G') || size.len() > 10) {
                continue;
            }
            let mut args = vec!["create", "-f", "vpc"];
            if !opts.is_empty() {
                args.extend(["-o", opts]);
            }
            let (ours, theirs) = (format!("o{i}-{size}.vhd"), format!("t{i}-{size}.vhd"));
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
            assert_eq!(masked(&fx, &ours), masked(&fx, &theirs), "{opts} {size}");
            // The same blocks allocated, so `map` of the files agrees.
            assert_eq!(
                qimg_tests::file_shape(&fx.path(&ours)),
                qimg_tests::file_shape(&fx.path(&theirs)),
                "{opts} {size}"
            );
        }
    }
}

#[test]
fn create_refuses_what_qemu_img_refuses() {
    let fx = Fixture::new("vpc_create_refused");
    for (opts, size) in [
        ("subformat=foo", "1M"),
        ("subformat=Fixed", "1M"),
        ("preallocation=metadata", "1M"),
        ("preallocation=foo", "1M"),
        ("", "2041G"),
        ("", "2190433321472"),
        ("force_size=on", "2190433320961"),
        ("subformat=fixed", "3T"),
    ] {
        let mut args = vec!["create", "-f", "vpc"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend(["x.vhd", size]);
        fx.same(&args);
        // qemu-img leaves an empty file behind; qimg removes what it made.
        let _ = std::fs::remove_file(fx.path("x.vhd"));
    }
    fx.same(&["create", "-f", "vpc", "-o", "help"]);
    fx.same(&["create", "-f", "vpc", "-o", "help", "x.vhd"]);
}

#[test]
fn convert_to_vpc_gives_qemu_img_s_files() {
    let fx = Fixture::new("vpc_convert");
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
    for (i, opts) in VARIANTS.iter().enumerate() {
        let (ours, theirs) = (format!("o{i}.vhd"), format!("t{i}.vhd"));
        let mut args = vec!["convert", "-O", "vpc"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        let mut a = args.clone();
        a.extend(["src.raw", ours.as_str()]);
        let out = fx.qimg(&a);
        assert_eq!(out.status, 0, "{}", out.stderr);
        let mut b = args.clone();
        b.extend(["src.raw", theirs.as_str()]);
        fx.oracle(&b);
        // Equal to the source (the disk may be a little larger: its
        // geometry rounds up), laid out as qemu-img lays it out.
        let cmp = fx.qemu_img(&["compare", "-f", "raw", "-F", "vpc", "src.raw", &ours]);
        assert_eq!(cmp.status, 0, "{}{}", cmp.stdout, cmp.stderr);
        assert_eq!(
            masked(&fx, &ours),
            masked(&fx, &theirs),
            "convert -o {opts}"
        );
        fx.same(&["check", "-f", "vpc", &ours]);
    }
}

#[test]
fn writes_into_qemu_made_images_read_back() {
    // convert -n into qemu-made disks (its blocks, then new ones at the
    // end), then each tool reads the result the same.
    let fx = Fixture::new("vpc_write_n");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "12M"]);
    fx.qemu_io_cmds(
        "raw",
        "src.raw",
        &["write -P 7 1M 3M", "write -P 8 11M 512"],
    );
    for (i, opts) in VARIANTS.iter().enumerate() {
        let file = format!("n{i}.vhd");
        made(&fx, &file, opts, "12M");
        let out = fx.qimg(&["convert", "-n", "-f", "raw", "-O", "vpc", "src.raw", &file]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        let cmp = fx.qemu_img(&["compare", "-f", "raw", "-F", "vpc", "src.raw", &file]);
        assert_eq!(cmp.status, 0, "{}{}", cmp.stdout, cmp.stderr);
        fx.same_info_and_map(&["-f", "vpc", &file]);
    }
}

#[test]
fn hostile_headers_fail_as_qemu_img_fails() {
    // A qemu-made 12 MiB dynamic disk with blocks 0, 1, 4 and 5 allocated,
    // damaged one field at a time. qimg runs under a 1 GiB address-space
    // limit: no header may make it allocate what the file does not hold.
    let fx = Fixture::new("vpc_hostile");
    made(&fx, "base.vhd", "", "12M");
    let len = std::fs::metadata(fx.path("base.vhd")).unwrap().len();
    let be32 = |v: u32| v.to_be_bytes().to_vec();
    let be64 = |v: u64| v.to_be_bytes().to_vec();
    // Edits of the dynamic disk header (at 512; its checksum is not checked).
    let header: &[(&str, u64, Vec<u8>)] = &[
        ("cookie", 512, b"cxspars2".to_vec()),
        ("version", 512 + 24, be32(0x0002_0000)),
        ("checksum", 512 + 36, be32(0)),
        ("bs0", 512 + 32, be32(0)),
        ("bs256", 512 + 32, be32(256)),
        ("bs1000", 512 + 32, be32(1000)),
        ("bs512", 512 + 32, be32(512)),
        ("bs4m", 512 + 32, be32(4 << 20)),
        ("bs2g", 512 + 32, be32(0x8000_0000)),
        ("max0", 512 + 28, be32(0)),
        ("max5", 512 + 28, be32(5)),
        ("max-big", 512 + 28, be32(0x1000_0000)),
        ("max-unreadable", 512 + 28, be32(0x1fff_fff0)),
        ("max-too-large", 512 + 28, be32(0x2000_0000)),
        ("max-afl", 512 + 28, be32(0x4000_0001)),
        ("max-negative", 512 + 28, be32(0x8000_0000)),
        ("table-inside", 512 + 16, be64(0x10_0000)),
        ("table-past-eof", 512 + 16, be64(0x7000_0000)),
        ("table-huge", 512 + 16, be64(0xffff_ffff_ffff_ff00)),
        ("entry-past-eof", 1536, be32(0x007f_ffff)),
        ("entry-at-start", 1536, be32(0)),
        (
            "entry-at-end",
            1536 + 8,
            be32(((len - 512) / 512 - 4097) as u32),
        ),
        (
            "entry-over-end",
            1536 + 8,
            be32(((len - 512) / 512 - 4096) as u32),
        ),
        ("head-checksum", 64, be32(0x1234_5678)),
        ("tail-checksum", len - 512 + 64, be32(0x1234_5678)),
    ];
    let mut files = Vec::new();
    for (name, at, bytes) in header {
        let file = format!("{name}.vhd");
        fx.patched_copy("base.vhd", &file, &[(*at, bytes)]);
        files.push(file);
    }
    // Footer edits, with the checksum made right.
    let footer: &[(&str, usize, Vec<u8>)] = &[
        ("doff-past-eof", 16, be64(0x1000_0000)),
        ("doff-zero", 16, be64(0)),
        ("doff-none", 16, be64(u64::MAX)),
        ("type-fixed", 60, be32(2)),
        ("size-huge", 48, be64(u64::MAX)),
        ("chs-big", 56, vec![0xff, 0xfe, 16, 255]),
        ("chs-zero", 56, vec![0, 0, 0, 0]),
    ];
    for (name, at, bytes) in footer {
        let file = format!("{name}.vhd");
        refooted(&fx, "base.vhd", &file, &[(*at, bytes.as_slice())]);
        files.push(file);
    }
    // A disk of more than 2040 GiB by a creator whose size field counts:
    // refused before the table is looked at.
    refooted(
        &fx,
        "base.vhd",
        "size-over-2040g.vhd",
        &[(28, b"qem2"), (48, &be64(0x3871_1c18_8b7c_4c18))],
    );
    files.push("size-over-2040g.vhd".into());
    // A footer found only at the end must say "fixed".
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=fixed",
        "fixed.vhd",
        "1M",
    ]);
    for (name, kind) in [
        ("fixed-as-dynamic", 3u32),
        ("fixed-as-diff", 4),
        ("fixed-as-none", 0),
    ] {
        let file = format!("{name}.vhd");
        refooted(&fx, "fixed.vhd", &file, &[(60, &be32(kind))]);
        files.push(file);
    }
    // Files too short or with no footer.
    std::fs::write(fx.path("empty.vhd"), b"").unwrap();
    std::fs::write(
        fx.path("short.vhd"),
        &std::fs::read(fx.path("base.vhd")).unwrap()[..511],
    )
    .unwrap();
    std::fs::write(fx.path("noise.vhd"), vec![0x5a; 1000]).unwrap();
    files.extend(["empty.vhd", "short.vhd", "noise.vhd"].map(String::from));
    for file in &files {
        fx.same_bounded(&["info", "-f", "vpc", file]);
        fx.same_bounded(&["map", "-f", "vpc", "--output=json", file]);
        // Reading the whole disk: the same verdict, and the same bytes.
        let ours = fx.qimg_bounded(&["convert", "-f", "vpc", "-O", "raw", file, "ours.raw"]);
        let theirs = fx.qemu_img(&["convert", "-f", "vpc", "-O", "raw", file, "theirs.raw"]);
        assert_eq!(
            ours.status, theirs.status,
            "convert {file}: {}",
            ours.stderr
        );
        if ours.status == 0 {
            fx.same_raw("ours.raw", "theirs.raw");
        }
        let _ = std::fs::remove_file(fx.path("ours.raw"));
        let _ = std::fs::remove_file(fx.path("theirs.raw"));
        // (One file is written below; the rest go, to spare CI's disk.)
        if file != "entry-at-start.vhd" {
            std::fs::remove_file(fx.path(file)).unwrap();
        }
    }
    // A differencing disk that names no parent: qemu-img reads it as a
    // dynamic disk (the parent's data as zeros); qimg, which reads
    // differencing disks over their parent, refuses it.
    refooted(&fx, "base.vhd", "type-diff.vhd", &[(60, &be32(4))]);
    let out = fx.qimg_bounded(&["info", "-f", "vpc", "type-diff.vhd"]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stderr.contains("Differencing VHD names no parent file"),
        "{out:?}"
    );
    // A block entry pointing at the headers: qemu-img would write over
    // them; qimg refuses the write and leaves the file as it was.
    let before = std::fs::read(fx.path("entry-at-start.vhd")).unwrap();
    fx.oracle(&["create", "-q", "-f", "raw", "w.raw", "12M"]);
    fx.qemu_io("w.raw", "write -P 9 0 64k");
    let out = fx.qimg_bounded(&[
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "vpc",
        "w.raw",
        "entry-at-start.vhd",
    ]);
    assert_eq!(out.status, 1, "{}", out.stderr);
    assert!(out.stderr.contains("Input/output error"), "{}", out.stderr);
    assert_eq!(
        std::fs::read(fx.path("entry-at-start.vhd")).unwrap(),
        before
    );
}

#[test]
fn check_is_refused_as_qemu_img_refuses_it() {
    let fx = Fixture::new("vpc_check");
    made(&fx, "d.vhd", "", "12M");
    fx.same(&["check", "-f", "vpc", "d.vhd"]);
    fx.same(&["check", "d.vhd"]);
    fx.same(&["check", "-f", "vpc", "--output=json", "d.vhd"]);
}

#[test]
fn the_azure_recipe_keeps_the_size_exactly() {
    // README's recipe: a fixed VHD with force_size of a source whose size
    // is a whole number of MiB has exactly the source's virtual size.
    let fx = Fixture::new("vpc_azure");
    for size in ["1M", "30M", "1000M"] {
        let src = format!("src-{size}.raw");
        fx.oracle(&["create", "-q", "-f", "raw", &src, size]);
        fx.qemu_io(&src, "write -P 5 512k 64k");
        let vhd = format!("azure-{size}.vhd");
        let out = fx.qimg(&[
            "convert",
            "-O",
            "vpc",
            "-o",
            "subformat=fixed,force_size=on",
            &src,
            &vhd,
        ]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        let src_len = std::fs::metadata(fx.path(&src)).unwrap().len();
        assert_eq!(
            std::fs::metadata(fx.path(&vhd)).unwrap().len(),
            src_len + 512
        );
        let info = fx
            .oracle(&["info", "-f", "vpc", "--output=json", &vhd])
            .stdout;
        assert!(
            info.contains(&format!("\"virtual-size\": {src_len},")),
            "{info}"
        );
        fx.oracle(&["compare", "-f", "raw", "-F", "vpc", &src, &vhd]);
        fx.same(&["info", "-f", "vpc", &vhd]);
    }
}

#[test]
fn measure_answers_what_convert_makes() {
    // qemu-img cannot measure for vpc: qimg's answer is the file convert
    // writes (dynamic: headers, table, footer and the blocks with data).
    let fx = Fixture::new("vpc_measure");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "20M"]);
    fx.qemu_io_cmds("raw", "src.raw", &["write -P 1 0 4k", "write -P 2 9M 3M"]);
    for opts in ["subformat=dynamic", "subformat=fixed", "force_size=on"] {
        let out = fx.qimg(&[
            "measure",
            "--output=json",
            "-O",
            "vpc",
            "-o",
            opts,
            "src.raw",
        ]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        fx.oracle(&["convert", "-O", "vpc", "-o", opts, "src.raw", "out.vhd"]);
        let len = std::fs::metadata(fx.path("out.vhd")).unwrap().len();
        assert_eq!(v["required"].as_u64(), Some(len), "{opts}: {}", out.stdout);
        std::fs::remove_file(fx.path("out.vhd")).unwrap();
        let out = fx.qimg(&["measure", "-O", "vpc", "-o", opts, "--size", "20M"]);
        assert_eq!(out.status, 0, "{}", out.stderr);
    }
}

#[test]
fn resize_keeps_data_and_qemu_img_reads_the_result() {
    // qemu-img cannot resize a VHD; qimg can. A raw copy resized by
    // qemu-img is the reference for the content.
    let fx = Fixture::new("vpc_resize");
    for (opts, grow, shrink) in [
        ("subformat=fixed,force_size=on", "15M", "8M"),
        ("subformat=fixed", "15M", "8M"),
        ("force_size=on", "12M", "3M"),
        ("force_size=on", "30M", "5M"),
        ("", "40M", "7M"),
    ] {
        made(&fx, "r.vhd", opts, "12M");
        fx.oracle(&["convert", "-f", "vpc", "-O", "raw", "r.vhd", "r.raw"]);
        for (size, extra) in [(grow, None), (shrink, Some("--shrink"))] {
            let mut args = vec!["resize", "-f", "vpc"];
            args.extend(extra);
            args.extend(["r.vhd", size]);
            let out = fx.qimg(&args);
            assert_eq!(out.status, 0, "{opts} {size}: {}", out.stderr);
            let info = fx
                .oracle(&["info", "-f", "vpc", "--output=json", "r.vhd"])
                .stdout;
            let v: serde_json::Value = serde_json::from_str(&info).unwrap();
            let new = v["virtual-size"].as_u64().unwrap();
            fx.oracle(&[
                "resize",
                "-q",
                "-f",
                "raw",
                "--shrink",
                "r.raw",
                &new.to_string(),
            ]);
            fx.oracle(&["compare", "-f", "vpc", "-F", "raw", "r.vhd", "r.raw"]);
            fx.same(&["info", "-f", "vpc", "r.vhd"]);
        }
        std::fs::remove_file(fx.path("r.vhd")).unwrap();
        std::fs::remove_file(fx.path("r.raw")).unwrap();
    }
    // A dynamic disk grown past its table (moved to the end of the file)
    // takes new blocks after it.
    made(&fx, "g.vhd", "force_size=on", "12M");
    let out = fx.qimg(&["resize", "-f", "vpc", "g.vhd", "20M"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["create", "-q", "-f", "raw", "g.raw", "20M"]);
    fx.qemu_io_cmds("raw", "g.raw", &["write -P 5 0 1M", "write -P 6 15M 3M"]);
    let out = fx.qimg(&["convert", "-n", "-f", "raw", "-O", "vpc", "g.raw", "g.vhd"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["compare", "-f", "raw", "-F", "vpc", "g.raw", "g.vhd"]);
    fx.same_info_and_map(&["-f", "vpc", "g.vhd"]);
}

/// A dynamic VHD whose file holds bytes past its footer (here 7 bytes of
/// 0x7f): a block placed there at the end of the file gets an all-ones
/// sector bitmap, so whatever the file held in its data area is guest data.
/// qimg zeroes it first; `convert -n` of a disk that is zero there and
/// holds data further on in the same block then reads back (the 7 bytes
/// showed at the block's start before, while qemu-img's copy was right).
#[test]
fn a_new_block_never_shows_bytes_left_past_the_footer() {
    let fx = Fixture::new("vpc_stale_tail");
    fx.oracle(&["create", "-q", "-f", "vpc", "m.vhd", "4M"]);
    fx.qemu_io_cmds("vpc", "m.vhd", &["write -P 0x11 0 64k"]);
    fx.sh("printf '\\177\\177\\177\\177\\177\\177\\177' >> m.vhd");
    let info = fx.qemu_img(&["info", "--output=json", "m.vhd"]).stdout;
    let json: serde_json::Value = serde_json::from_str(&info).unwrap();
    let size = json["virtual-size"].as_u64().unwrap() as usize;
    let runs = [(0, 0xa5, 65536), (size - 4096, 0xc3, 4096)];
    fx.write_pattern("pat.raw", size, &runs);
    let out = fx.qimg(&[
        "convert", "-n", "-f", "raw", "-O", "vpc", "pat.raw", "m.vhd",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["compare", "-f", "raw", "-F", "vpc", "pat.raw", "m.vhd"]);
}
