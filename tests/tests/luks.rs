//! The luks driver against qemu-img 10.0.2: qimg reads the LUKS1 images
//! qemu-img makes (every cipher, mode, IV generator and hash it offers),
//! describes them identically (`info`, `map`, `measure`), refuses wrong and
//! missing secrets with qemu-img's messages, and what qimg creates and
//! writes reads back in qemu-img.

use qimg_tests::Fixture;

/// The secret every fixture uses, as `--object` takes it.
const SECRET: &str = "secret,id=sec0,data=abc123";

/// `--image-opts` naming `file` as a luks image unlocked with `sec0`.
fn opts(file: &str) -> String {
    format!("driver=luks,key-secret=sec0,file.filename={file}")
}

/// `qemu-img create -f luks --object SECRET -o key-secret=sec0,iter-time=10[,EXTRA] FILE SIZE`
/// by `tool` ("qemu" or "qimg"). A small iter-time keeps every open fast.
fn create(fx: &Fixture, tool: &str, extra: &str, file: &str, size: &str) {
    let o = if extra.is_empty() {
        "key-secret=sec0,iter-time=10".to_string()
    } else {
        format!("key-secret=sec0,iter-time=10,{extra}")
    };
    let args = [
        "create", "-q", "-f", "luks", "--object", SECRET, "-o", &o, file, size,
    ];
    if tool == "qemu" {
        fx.oracle(&args);
    } else {
        let out = fx.qimg(&args);
        assert_eq!(out.status, 0, "qimg create {extra}: {}", out.stderr);
    }
}

/// Writes a pattern with qemu-io: a whole 64 KiB, an unaligned run and a
/// sector near the end of a 4 MiB image.
fn write_pattern(fx: &Fixture, file: &str) {
    fx.sh(&format!(
        "qemu-io --object {SECRET} --image-opts -c 'write -P 0x5a 0 64k' -c 'write -P 0x21 100000 7777' -c 'write -P 0x7e 4000k 512' {} >/dev/null",
        opts(file)
    ));
}

/// A fixture holding `img.luks` made by qemu-img with `extra` options and
/// the pattern written by qemu-io.
fn made(name: &str, extra: &str) -> Fixture {
    let fx = Fixture::new(name);
    create(&fx, "qemu", extra, "img.luks", "4M");
    write_pattern(&fx, "img.luks");
    fx
}

/// qimg's `convert -O raw` of `file` equals qemu-img's, byte for byte.
fn converts_alike(fx: &Fixture, file: &str) {
    let o = opts(file);
    let ours = fx.qimg(&[
        "convert",
        "--object",
        SECRET,
        "--image-opts",
        "-O",
        "raw",
        &o,
        "ours.raw",
    ]);
    assert_eq!(ours.status, 0, "qimg convert: {}", ours.stderr);
    fx.oracle(&[
        "convert",
        "--object",
        SECRET,
        "--image-opts",
        "-O",
        "raw",
        &o,
        "theirs.raw",
    ]);
    let a = std::fs::read(fx.path("ours.raw")).unwrap();
    let b = std::fs::read(fx.path("theirs.raw")).unwrap();
    assert!(a == b, "convert of {file} differs from qemu-img's");
}

// qemu-img info img.luks; qemu-img info --output=json img.luks
#[test]
fn info_needs_no_secret_and_matches() {
    let fx = made("info", "");
    fx.same(&["info", "img.luks"]);
    fx.same(&["info", "--output=json", "img.luks"]);
}

// qemu-img convert --object ... --image-opts -O raw driver=luks,... out.raw
#[test]
fn convert_reads_the_default_cipher() {
    let fx = made("convert", "");
    converts_alike(&fx, "img.luks");
    let pat = std::fs::read(fx.path("ours.raw")).unwrap();
    assert!(pat[..65536].iter().all(|&b| b == 0x5a));
}

// qemu-img create -f luks -o cipher-alg=...,cipher-mode=...,ivgen-alg=...,hash-alg=...
#[test]
fn every_cipher_combination_qemu_makes_reads_alike() {
    let combos = [
        "cipher-alg=aes-128",
        "cipher-alg=aes-192",
        "cipher-mode=cbc",
        "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv",
        "cipher-alg=aes-256,ivgen-alg=essiv",
        "cipher-alg=aes-128,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha224",
        "hash-alg=sha1",
        "hash-alg=sha512,cipher-mode=cbc,ivgen-alg=plain64",
        "ivgen-alg=plain,hash-alg=sha384",
        "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=plain",
        "cipher-alg=serpent-256,hash-alg=md5",
        "cipher-alg=serpent-128,cipher-mode=cbc,ivgen-alg=essiv,hash-alg=ripemd160",
        "cipher-alg=twofish-256,cipher-mode=ctr,ivgen-alg=plain64,hash-alg=sm3",
        "cipher-alg=twofish-128,cipher-mode=xts,ivgen-alg=plain",
        "cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=plain64",
        "cipher-alg=cast5-128,cipher-mode=ctr,ivgen-alg=plain",
        "cipher-alg=aes-256,cipher-mode=ecb",
        "cipher-alg=aes-128,cipher-mode=ctr,ivgen-alg=essiv,ivgen-hash-alg=md5",
        "cipher-alg=twofish-256,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sm3",
        "cipher-alg=serpent-192,cipher-mode=xts",
    ];
    for (i, combo) in combos.iter().enumerate() {
        let fx = made(&format!("combo{i}"), combo);
        converts_alike(&fx, "img.luks");
        fx.same(&["info", "img.luks"]);
        fx.same(&["info", "--output=json", "img.luks"]);
    }
}

// qemu-img map [--output=json] with and without the secret
#[test]
fn map_matches() {
    let fx = made("map", "");
    let o = opts("img.luks");
    fx.same(&["map", "--object", SECRET, "--image-opts", &o]);
    fx.same(&[
        "map",
        "--output=json",
        "--object",
        SECRET,
        "--image-opts",
        &o,
    ]);
    fx.same(&["map", "img.luks"]);
}

// qemu-img convert with a wrong, unknown or missing secret
#[test]
fn bad_secrets_are_refused_as_qemu_img_refuses_them() {
    let fx = made("secrets", "");
    let wrong = "secret,id=sec0,data=wrong";
    let unknown = "driver=luks,key-secret=nosuch,file.filename=img.luks";
    let none = "driver=luks,file.filename=img.luks";
    let o = opts("img.luks");
    let cases: [&[&str]; 4] = [
        &[
            "convert",
            "--object",
            wrong,
            "--image-opts",
            "-O",
            "raw",
            &o,
            "out.raw",
        ],
        &[
            "convert",
            "--object",
            SECRET,
            "--image-opts",
            "-O",
            "raw",
            unknown,
            "out.raw",
        ],
        &["convert", "--image-opts", "-O", "raw", none, "out.raw"],
        &["convert", "-O", "raw", "img.luks", "out.raw"],
    ];
    for args in cases {
        let out = fx.same(args);
        assert_eq!(out.status, 1, "{args:?}");
        assert!(!fx.path("out.raw").exists(), "{args:?} left a file");
    }
}

// qemu-img compare --object ... --image-opts driver=luks,... driver=raw,...
#[test]
fn compare_matches() {
    let fx = made("compare", "");
    fx.oracle(&[
        "convert",
        "--object",
        SECRET,
        "--image-opts",
        "-O",
        "raw",
        &opts("img.luks"),
        "same.raw",
    ]);
    fx.oracle(&["create", "-q", "-f", "raw", "zero.raw", "4M"]);
    let o = opts("img.luks");
    for other in [
        "driver=raw,file.filename=same.raw",
        "driver=raw,file.filename=zero.raw",
    ] {
        fx.same(&["compare", "--object", SECRET, "--image-opts", &o, other]);
    }
}

// qimg convert -n --target-image-opts into a qemu-made luks image, then
// qemu-img compare
#[test]
fn qimg_writes_read_back_in_qemu_img() {
    let fx = made("write", "cipher-mode=cbc,ivgen-alg=essiv");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.qemu_io_cmds(
        "raw",
        "src.raw",
        &["write -P 0x11 1000 70000", "write -P 0x44 3M 513"],
    );
    let o = opts("img.luks");
    let out = fx.qimg(&[
        "convert",
        "-n",
        "--object",
        SECRET,
        "--target-image-opts",
        "src.raw",
        &o,
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let cmp = fx.qemu_img(&[
        "compare",
        "--object",
        SECRET,
        "--image-opts",
        &o,
        "driver=raw,file.filename=src.raw",
    ]);
    assert_eq!(cmp.status, 0, "{}{}", cmp.stdout, cmp.stderr);
}

// qimg create -f luks ...; then qemu-io writes and both tools read alike
#[test]
fn images_qimg_creates_open_in_qemu() {
    let combos = [
        "",
        "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv",
        "hash-alg=sha1,ivgen-alg=plain",
        "cipher-alg=aes-192,hash-alg=sha512",
        "cipher-alg=serpent-256,cipher-mode=ctr,hash-alg=ripemd160",
        "cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=md5",
    ];
    for (i, combo) in combos.iter().enumerate() {
        let fx = Fixture::new(&format!("create{i}"));
        create(&fx, "qimg", combo, "img.luks", "4M");
        // Same layout as qemu-img's: header, key-slot areas, payload.
        create(&fx, "qemu", combo, "ref.luks", "4M");
        assert_eq!(
            std::fs::metadata(fx.path("img.luks")).unwrap().len(),
            std::fs::metadata(fx.path("ref.luks")).unwrap().len(),
        );
        write_pattern(&fx, "img.luks");
        converts_alike(&fx, "img.luks");
        // qemu-img has no check for luks: both say so, with status 63.
        let check = fx.same(&[
            "check",
            "--object",
            SECRET,
            "--image-opts",
            &opts("img.luks"),
        ]);
        assert_eq!(check.status, 63);
    }
}

// qemu-img create -f luks -o help, and creation errors
#[test]
fn create_options_and_errors_match() {
    let fx = Fixture::new("create-opts");
    fx.same(&["create", "-f", "luks", "-o", "help"]);
    for o in [
        "key-secret=sec0,cipher-alg=foo",
        "key-secret=sec0,cipher-mode=foo",
        "key-secret=sec0,hash-alg=foo",
        "key-secret=sec0,ivgen-alg=foo",
        "key-secret=sec0,ivgen-alg=essiv,ivgen-hash-alg=sha1",
        "key-secret=sec0,iter-time=abc",
        "key-secret=nosuch",
        "key-secret=sec0,cipher-alg=sm4",
        "key-secret=sec0,cipher-alg=cast5-128",
        "key-secret=sec0,cipher-alg=twofish-128,ivgen-alg=essiv,ivgen-hash-alg=sha1",
        "key-secret=sec0,cipher-alg=sm4,hash-alg=foo",
        "key-secret=sec0,cipher-alg=sm4,detached-header=on",
        "key-secret=nosuch,detached-header=on",
        "key-secret=sec0,preallocation=bogus,cipher-alg=foo",
    ] {
        let out = fx.same(&[
            "create", "-f", "luks", "--object", SECRET, "-o", o, "e.luks", "1M",
        ]);
        assert_ne!(out.status, 0, "{o}");
    }
    fx.same(&["create", "-f", "luks", "e.luks", "1M"]);
}

// qemu-img measure -O luks
#[test]
fn measure_matches() {
    let fx = Fixture::new("measure");
    for o in [
        "key-secret=sec0,iter-time=10",
        "key-secret=sec0,iter-time=10,cipher-alg=aes-128,cipher-mode=cbc",
    ] {
        fx.same(&[
            "measure", "--object", SECRET, "-O", "luks", "-o", o, "--size", "4M",
        ]);
    }
    fx.same(&["measure", "-O", "luks", "--size", "4M"]);
}

// qemu-img resize --object ... --image-opts driver=luks,... SIZE (grow, then
// shrink), and without the secret
#[test]
fn resize_matches() {
    let fx = made("resize", "");
    std::fs::copy(fx.path("img.luks"), fx.path("ours.luks")).unwrap();
    std::fs::copy(fx.path("img.luks"), fx.path("theirs.luks")).unwrap();
    for args in [&["8M"][..], &["--shrink", "2M"][..]] {
        let run = |tool: &str, file: &str| {
            let o = opts(file);
            let mut a = vec!["resize", "--object", SECRET, "--image-opts", &o];
            a.extend_from_slice(args);
            if tool == "qimg" {
                fx.qimg(&a)
            } else {
                fx.qemu_img(&a)
            }
        };
        assert_eq!(
            run("qimg", "ours.luks"),
            run("qemu", "theirs.luks"),
            "{args:?}"
        );
        let len = |f: &str| std::fs::metadata(fx.path(f)).unwrap().len();
        assert_eq!(len("ours.luks"), len("theirs.luks"), "{args:?}");
    }
    converts_alike(&fx, "ours.luks");
    fx.same(&["resize", "img.luks", "8M"]);
}

// cryptsetup luksDump and cryptsetup --test-passphrase open on images qimg
// creates (skipped, saying so, where cryptsetup is not installed)
#[test]
fn cryptsetup_accepts_what_qimg_creates() {
    let fx = Fixture::new("cryptsetup");
    if fx.sh("command -v cryptsetup || true").trim().is_empty() {
        eprintln!("cryptsetup not installed: skipping");
        return;
    }
    for (i, combo) in [
        "",
        "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,hash-alg=sha1",
    ]
    .iter()
    .enumerate()
    {
        let file = format!("img{i}.luks");
        create(&fx, "qimg", combo, &file, "4M");
        let dump = fx.sh(&format!("cryptsetup luksDump {file}"));
        assert!(dump.contains("Key Slot 0: ENABLED"), "{dump}");
        fx.sh(&format!(
            "printf abc123 | cryptsetup --test-passphrase open {file} --key-file=-"
        ));
        let wrong = fx.sh(&format!(
            "printf wrong | cryptsetup --test-passphrase open {file} --key-file=- 2>&1; echo rc=$?"
        ));
        assert!(wrong.contains("rc=2"), "{wrong}");
    }
}

// qemu-img info / convert on damaged headers: QEMU's layout checks and
// algorithm names, with its messages and in its order
#[test]
fn damaged_headers_are_refused_alike() {
    let fx = made("damaged", "");
    let cases: [(u64, &[u8], bool); 25] = [
        (6, b"\x00\x02", true),            // version 2: probes as raw
        (252, b"\x00\x00\x0f\x9f", true),  // slot 0 stripes 3999
        (296, b"\x00\x00\x00\x00", true),  // slot 1 in the header
        (296, b"\x00\x00\x00\x08", true),  // slots 0 and 1 overlap
        (104, b"\x00\x00\x00\x08", true),  // payload over key slots
        (104, b"\x00\x00\x00\x00", true),  // payload over the header
        (104, b"\xff\xff\xff\xf0", true),  // payload past the file
        (108, b"\x00\x00\x00\x21", true),  // odd XTS key length
        (212, b"\x00\x00\x00\x00", true),  // slot 0 iterations zero
        (256, b"\x00\x00\x00\x01", true),  // slot 1 state corrupted
        (164, b"\x00\x00\x00\x00", true),  // digest iterations zero
        (40, b"xts-foo\0", true),          // unknown IV generator
        (40, b"ecb-plain64\0", true),      // no 64-byte AES for ECB
        (40, b"xts-plain64:foo\0", true),  // unknown IV hash
        (40, b"foo-plain64\0", true),      // unknown mode
        (40, b"xts-plain64:sha1\0", true), // IV hash shown for ESSIV only
        (40, b"xts-essiv:sha1\0", true),   // no 20-byte AES key
        (40, b"xts-essiv\0", true),        // ESSIV without hash
        (40, b"xts\0", true),              // no IV generator
        (72, b"foo\0", true),              // unknown hash
        (8, b"twofish\0", true),           // another cipher, same key
        (8, b"sm4\0", true),               // known to QEMU, not to LUKS
        (104, b"\x00\x00\x0f\xc7", true),  // payload in slot 7's 4 KiB units
        (8, &[b'a'; 32], true),            // cipher name without its NUL
        (252, b"\xff\xff\xff\xff", true),  // slot 0 stripes -1
    ];
    let o = opts("bad.luks");
    for (offset, bytes, convert) in cases {
        fx.patched_copy("img.luks", "bad.luks", &[(offset, bytes)]);
        fx.same(&["info", "bad.luks"]);
        fx.same(&["info", "--output=json", "bad.luks"]);
        if convert {
            let args = [
                "convert",
                "--object",
                SECRET,
                "--image-opts",
                "-O",
                "raw",
                &o,
                "out.raw",
            ];
            fx.same(&args);
        }
    }
}

// qemu-img convert -O luks -o key-secret=... (a new encrypted target), and
// without a key secret
#[test]
fn convert_creates_luks_targets() {
    let fx = Fixture::new("convert-to");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.qemu_io_cmds(
        "raw",
        "src.raw",
        &["write -P 0x11 1000 70000", "write -P 0x44 3M 513"],
    );
    let args = |out: &'static str| {
        [
            "convert",
            "--object",
            SECRET,
            "-O",
            "luks",
            "-o",
            "key-secret=sec0,iter-time=10",
            "src.raw",
            out,
        ]
    };
    let ours = fx.qimg(&args("ours.luks"));
    let theirs = fx.qemu_img(&args("theirs.luks"));
    assert_eq!(ours, theirs);
    let shape = |f: &str| qimg_tests::file_shape(&fx.path(f));
    assert_eq!(shape("ours.luks"), shape("theirs.luks"));
    let cmp = fx.qemu_img(&[
        "compare",
        "--object",
        SECRET,
        "--image-opts",
        &opts("ours.luks"),
        "driver=raw,file.filename=src.raw",
    ]);
    assert_eq!(cmp.status, 0, "{}{}", cmp.stdout, cmp.stderr);
    let out = fx.same(&["convert", "-O", "luks", "src.raw", "none.luks"]);
    assert_eq!(out.status, 1);
    // The Formatting line of create is qemu-img's too.
    let o = "key-secret=sec0,iter-time=10,cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv";
    let create = |out: &'static str| {
        [
            "create", "-f", "luks", "--object", SECRET, "-o", o, out, "1M",
        ]
    };
    let ours = fx.qimg(&create("c.luks"));
    let theirs = fx.qemu_img(&create("c.luks"));
    assert_eq!(ours, theirs);
}

// A header in a file of its own (`header.filename=`): with the payload
// offset it records, the payload starts there in the image file; with
// payload offset 0 (cryptsetup's `--header` layout, "detached") the whole
// image file is payload. Both made by splitting a qemu-img image.
#[test]
fn detached_headers_read_write_and_amend_alike() {
    let fx = made("detached", "");
    fx.sh(
        "p=$(qemu-img info --output=json img.luks | sed -n 's/.*\"payload-offset\": \\([0-9]*\\).*/\\1/p'); \
         head -c $p img.luks > hdr.img && tail -c +$((p + 1)) img.luks > data.img && \
         cp hdr.img detached.img && printf '\\0\\0\\0\\0' | dd of=detached.img bs=1 seek=104 conv=notrunc 2>/dev/null",
    );
    let split = "driver=luks,key-secret=sec0,file.filename=img.luks,header.filename=hdr.img";
    let detached =
        "driver=luks,key-secret=sec0,file.filename=data.img,header.filename=detached.img";
    for name in [split, detached] {
        for args in [
            vec!["info", "--object", SECRET, "--image-opts", name],
            vec![
                "info",
                "--output=json",
                "--object",
                SECRET,
                "--image-opts",
                name,
            ],
            vec![
                "map",
                "--output=json",
                "--object",
                SECRET,
                "--image-opts",
                name,
            ],
            vec![
                "compare",
                "--object",
                SECRET,
                "--image-opts",
                name,
                &opts("img.luks"),
            ],
        ] {
            fx.same(&args);
        }
    }
    // Written by qimg, read by qemu-img; a key slot added by qimg opens there.
    let size = fx.sh("stat -c %s data.img");
    fx.sh(&format!(
        "qemu-img create -q -f raw new.raw {} && qemu-io -f raw -c 'write -P 0x3c 1M 100k' new.raw >/dev/null",
        size.trim()
    ));
    let out = fx.qimg(&[
        "convert",
        "-n",
        "--object",
        SECRET,
        "-f",
        "raw",
        "new.raw",
        "--target-image-opts",
        detached,
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let two = "secret,id=sec1,data=second";
    let out = fx.qimg(&[
        "amend",
        "--object",
        SECRET,
        "--object",
        two,
        "--image-opts",
        detached,
        "-o",
        "state=active,new-secret=sec1,iter-time=10",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let by_new = "driver=luks,key-secret=sec1,file.filename=data.img,header.filename=detached.img";
    let cmp = fx.qemu_img(&[
        "compare",
        "--object",
        two,
        "--image-opts",
        by_new,
        "driver=raw,file.filename=new.raw",
    ]);
    assert_eq!(cmp.status, 0, "{}{}", cmp.stdout, cmp.stderr);
}

/// A file whose length is not a whole number of sectors: qemu-img counts
/// the partial last sector as a whole one, zero-padded, and so does qimg
/// now (it cut the disk at the file's exact length, or refused a file one
/// byte short of its payload).
#[test]
fn a_partial_last_sector_counts_whole() {
    let fx = made("partial", "");
    let cut_copy = |name: &str, len: u64| {
        std::fs::copy(fx.path("img.luks"), fx.path(name)).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(fx.path(name))
            .unwrap();
        f.set_len(len).unwrap();
    };
    let len = std::fs::metadata(fx.path("img.luks")).unwrap().len();
    for (name, cut) in [("short.luks", len - 1), ("grown.luks", len + 100)] {
        cut_copy(name, cut);
        fx.same(&["info", "--output=json", name]);
        converts_alike(&fx, name);
    }
    // One byte short of the payload: an empty disk in both.
    let payload = u64::from(u32::from_be_bytes(
        std::fs::read(fx.path("img.luks")).unwrap()[104..108]
            .try_into()
            .unwrap(),
    )) * 512;
    cut_copy("none.luks", payload - 1);
    fx.same(&["info", "--output=json", "none.luks"]);
}

/// A size that is no whole number of sectors makes a file that ends where
/// the size says, as qemu-img makes it (qimg's was up to 511 bytes longer);
/// both read it as the size rounded up to a sector.
#[test]
fn odd_sizes_make_files_of_qemu_img_s_length() {
    let fx = Fixture::new("odd_sizes");
    for size in ["1000", "1048579"] {
        create(&fx, "qimg", "", "img.luks", size);
        create(&fx, "qemu", "", "ref.luks", size);
        assert_eq!(
            std::fs::metadata(fx.path("img.luks")).unwrap().len(),
            std::fs::metadata(fx.path("ref.luks")).unwrap().len(),
            "size {size}"
        );
        fx.same(&["info", "--output=json", "img.luks"]);
    }
}
