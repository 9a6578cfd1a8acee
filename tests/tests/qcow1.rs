//! The vendor qcow driver (`vendor/qcow`: QEMU's original qcow, version 1),
//! loaded from its drop-in manifest, against qemu-img 10.0.2 both ways:
//! images qemu-img makes (plain, odd-sized, with a backing file,
//! compressed, AES-encrypted) read as qemu-img reads them (`info`, `map`,
//! `compare`, `convert -O raw`), images qimg writes (`create`, `convert`,
//! `convert -c`, encrypted) pass qemu-img's `compare` against their
//! source, refusals (`check`, `resize`, `measure`, encryption options) are
//! qemu-img's, and damaged headers fail as qemu-img fails, under a 1 GiB
//! address-space limit.

use qimg_tests::vendor::{converts_as_qemu_img, fixture};
use qimg_tests::Fixture;

/// The secret every encrypted image here is made with.
const SECRET: &str = "secret,id=s,data=hunter2";

/// The command `args` with `--object SECRET` after its name.
fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&args[..1], &["--object", SECRET][..], &args[1..]].concat()
}

/// `--image-opts` naming the encrypted qcow `file` with its key.
fn keyed(file: &str) -> String {
    format!("driver=qcow,file.filename={file},encrypt.key-secret=s")
}

/// qemu-img makes `name`, a qcow image of `size`, with `opts`, and writes
/// `writes` (qemu-io commands) into it.
fn made(fx: &Fixture, name: &str, size: &str, opts: &[&str], writes: &[&str]) {
    let mut args = vec!["create", "-q", "-f", "qcow"];
    args.extend_from_slice(opts);
    args.extend([name, size]);
    fx.oracle(&args);
    if !writes.is_empty() {
        fx.qemu_io_cmds("qcow", name, writes);
    }
}

/// A source raw image of 3 MiB: text-like data, a zero run, random data.
fn source(fx: &Fixture) {
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "3M"]);
    fx.qemu_io("src.raw", "write -P 1 0 100k");
    fx.qemu_io("src.raw", "write -P 9 1M 64k");
    fx.qemu_io("src.raw", "write -P 3 2000000 5");
    fx.sh("head -c 300000 /dev/urandom | dd of=src.raw bs=1k seek=2400 conv=notrunc status=none");
}

/// qimg reads `image` as qemu-img does: `info` and `map`, human and JSON,
/// `compare` with qemu-img's raw copy, and `convert -O raw` to the same bytes.
fn reads_as_qemu_img(fx: &Fixture, image: &str) {
    fx.same_info_and_map(&[image]);
    fx.same(&["info", "--backing-chain", image]);
    fx.same_effect(&["convert", "-O", "raw", image, "{}"], "copy.raw");
    fx.oracle(&["convert", "-O", "raw", image, "oracle.raw"]);
    fx.same(&["compare", image, "oracle.raw"]);
    fx.same(&["compare", "-s", image, "oracle.raw"]);
}

#[test]
fn images_qemu_img_makes_read_as_qemu_img_reads_them() {
    let fx = fixture("qcow1_read");
    made(&fx, "empty.qcow", "1M", &[], &[]);
    reads_as_qemu_img(&fx, "empty.qcow");
    let writes = ["write -P 1 0 4k", "write -P 2 8k 1k", "write -P 3 9000 100"];
    made(&fx, "plain.qcow", "3M", &[], &writes);
    reads_as_qemu_img(&fx, "plain.qcow");
    // Sizes are rounded up to whole sectors.
    made(&fx, "odd.qcow", "1000", &[], &["write -P 4 0 1000"]);
    reads_as_qemu_img(&fx, "odd.qcow");
    // Unaligned reads across clusters.
    fx.same_effect(
        &[
            "dd",
            "if=plain.qcow",
            "of={}",
            "bs=1",
            "skip=8100",
            "count=1000",
        ],
        "part.raw",
    );
}

#[test]
fn backing_chains_read_through_to_the_backing_file() {
    let fx = fixture("qcow1_backing");
    fx.oracle(&["create", "-q", "-f", "raw", "base.raw", "1M"]);
    fx.qemu_io("base.raw", "write -P 7 0 1M");
    // 512-byte clusters; a write of part of a sector keeps the backing
    // file's bytes around it.
    made(
        &fx,
        "top.qcow",
        "2M",
        &["-b", "base.raw", "-F", "raw"],
        &["write -P 1 1024 1000"],
    );
    reads_as_qemu_img(&fx, "top.qcow");
    fx.same(&[
        "info",
        "-f",
        "qcow",
        "--output=json",
        "--backing-chain",
        "top.qcow",
    ]);
    fx.same(&[
        "create", "-f", "qcow", "-b", "base.raw", "-F", "qcow2", "bad.qcow",
    ]);
    fx.same(&[
        "create",
        "-f",
        "qcow",
        "-o",
        "backing_fmt=raw",
        "nob.qcow",
        "1M",
    ]);
    fx.same(&[
        "create",
        "-f",
        "qcow",
        "-b",
        "missing.raw",
        "-F",
        "raw",
        "-u",
        "dangling.qcow",
        "1M",
    ]);
    fx.same(&["info", "dangling.qcow"]);
    fx.same(&["info", "--backing-chain", "dangling.qcow"]);
}

#[test]
fn compressed_images_read_and_write() {
    let fx = fixture("qcow1_compressed");
    source(&fx);
    // qemu-img 10.0.2 exits 1 here after writing a correct image; qimg 0.
    let theirs = fx.qemu_img(&["convert", "-c", "-O", "qcow", "src.raw", "theirs.qcow"]);
    assert_eq!(theirs.status, 1, "{theirs:?}");
    let ours = fx.qimg(&["convert", "-c", "-O", "qcow", "src.raw", "ours.qcow"]);
    assert_eq!(ours.status, 0, "{ours:?}");
    fx.oracle(&["compare", "src.raw", "ours.qcow"]);
    fx.oracle(&["compare", "theirs.qcow", "ours.qcow"]);
    reads_as_qemu_img(&fx, "theirs.qcow");
    fx.same_info_and_map(&["ours.qcow"]);
    // Rewriting part of a compressed cluster keeps the rest of it.
    for image in ["ours.qcow", "theirs.qcow"] {
        fx.sh(&format!("cp {image} w-{image}"));
    }
    fx.qemu_io_cmds("qcow", "w-theirs.qcow", &["write -P 8 512 512"]);
    fx.qemu_io("src.raw", "write -P 8 512 512");
    let out = fx.qimg(&["convert", "-n", "-O", "qcow", "src.raw", "w-ours.qcow"]);
    assert_eq!(out.status, 0, "{out:?}");
    fx.oracle(&["compare", "src.raw", "w-ours.qcow"]);
    fx.oracle(&["compare", "src.raw", "w-theirs.qcow"]);
}

#[test]
fn images_qimg_writes_pass_qemu_img_compare() {
    let fx = fixture("qcow1_write");
    source(&fx);
    // The same options, messages and file as qemu-img's create.
    for size in ["1M", "1000", "3G"] {
        fx.same_effect(&["create", "-f", "qcow", "{}", size], "new.qcow");
    }
    fx.same(&["create", "-f", "qcow", "zero.qcow", "0"]);
    fx.same(&["create", "-f", "qcow", "-o", "help"]);
    fx.same(&["convert", "-O", "qcow", "-o", "help"]);
    fx.same_effect(
        &["create", "-f", "qcow", "-b", "src.raw", "-F", "raw", "{}"],
        "ov.qcow",
    );
    let out = fx.qimg(&["convert", "-O", "qcow", "src.raw", "copy.qcow"]);
    assert_eq!(out.status, 0, "{out:?}");
    fx.oracle(&["compare", "src.raw", "copy.qcow"]);
    fx.same_info_and_map(&["copy.qcow"]);
    // Sub-sector writes into a fresh image.
    fx.sh("cp --sparse=always src.raw edited.raw");
    fx.qemu_io("edited.raw", "write -P 6 12345 777");
    fx.same(&["create", "-q", "-f", "qcow", "w.qcow", "3M"]);
    let out = fx.qimg(&["convert", "-n", "-O", "qcow", "edited.raw", "w.qcow"]);
    assert_eq!(out.status, 0, "{out:?}");
    fx.oracle(&["compare", "edited.raw", "w.qcow"]);
}

#[test]
fn refusals_are_qemu_img_s() {
    let fx = fixture("qcow1_refusals");
    made(&fx, "a.qcow", "1M", &[], &["write -P 1 0 4k"]);
    fx.same(&["check", "a.qcow"]);
    fx.same(&["check", "--output=json", "a.qcow"]);
    fx.same(&["resize", "a.qcow", "2M"]);
    fx.same(&["measure", "-O", "qcow", "--size", "1G"]);
    fx.same(&["measure", "-O", "qcow", "a.qcow"]);
    fx.same(&["amend", "-o", "size=2M", "a.qcow"]);
    fx.same(&["info", "-f", "qcow", "--output=json", "a.qcow"]);
    fx.make_qcow2("v2.qcow2", "", "1M");
    fx.same(&["info", "-f", "qcow", "v2.qcow2"]);
    fx.same(&["info", "-f", "qcow", "a.qcow"]);
    fx.oracle(&["create", "-q", "-f", "raw", "r.raw", "1M"]);
    fx.same(&["info", "-f", "qcow", "r.raw"]);
}

#[test]
fn aes_encryption_reads_writes_and_refuses_as_qemu_img() {
    let fx = fixture("qcow1_aes");
    source(&fx);
    // Creation: the options and refusals of qemu-img's qcow driver.
    for opts in [
        "encryption=on",
        "encryption=on,encrypt.key-secret=s",
        "encrypt.format=aes,encrypt.key-secret=s",
        "encrypt.format=luks,encrypt.key-secret=s",
        "encrypt.format=foo,encrypt.key-secret=s",
        "encrypt.key-secret=s",
        "encrypt.format=aes",
        "encryption=on,encrypt.key-secret=t",
        "encryption=off,encrypt.format=aes,encrypt.key-secret=s",
        "encrypt.cipher-alg=aes-128,encrypt.key-secret=s",
    ] {
        // qemu-img leaves an empty file behind when it refuses: only the
        // outputs are compared, and the images made.
        let out = fx.same(&with(&[
            "create", "-f", "qcow", "-o", opts, "new.qcow", "1M",
        ]));
        if out.status == 0 {
            fx.same_effect(
                &with(&["create", "-f", "qcow", "-o", opts, "{}", "1M"]),
                "e.qcow",
            );
        }
        let _ = std::fs::remove_file(fx.path("new.qcow"));
    }
    // An image qemu-img encrypts reads as qemu-img reads it.
    fx.oracle(&with(&[
        "create",
        "-q",
        "-f",
        "qcow",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=s",
        "e.qcow",
        "3M",
    ]));
    fx.sh(&format!(
        "qemu-io --object {SECRET} --image-opts -c 'write -P 5 512 3000' -c 'write -P 6 1M 10k' {} >/dev/null",
        keyed("e.qcow")
    ));
    let key = keyed("e.qcow");
    fx.same_info_and_map(&["e.qcow"]);
    fx.same(&with(&["map", "--image-opts", &key]));
    fx.same(&with(&["map", "--output=json", "--image-opts", &key]));
    fx.same(&["convert", "-O", "raw", "e.qcow", "x.raw"]);
    fx.same(&["compare", "e.qcow", "src.raw"]);
    fx.same(&with(&[
        "convert",
        "--image-opts",
        "-O",
        "raw",
        &format!("{key},encrypt.format=luks"),
        "x.raw",
    ]));
    fx.same_effect(
        &with(&["convert", "--image-opts", "-O", "raw", &key, "{}"]),
        "plain.raw",
    );
    let json = r#"json:{"driver":"qcow","file":{"driver":"file","filename":"e.qcow"},"encrypt.key-secret":"s"}"#;
    fx.same_effect(&with(&["convert", "-O", "raw", json, "{}"]), "plain.raw");
    fx.same(&with(&[
        "compare",
        "--image-opts",
        &key,
        "driver=raw,file.filename=ours.plain.raw",
    ]));
    // A key for an image without encryption is ignored; a format is not.
    made(&fx, "p.qcow", "1M", &[], &[]);
    fx.same(&with(&[
        "convert",
        "--image-opts",
        "-O",
        "raw",
        &keyed("p.qcow"),
        "y.raw",
    ]));
    fx.same(&with(&[
        "convert",
        "--image-opts",
        "-O",
        "raw",
        "driver=qcow,file.filename=p.qcow,encrypt.format=aes",
        "y.raw",
    ]));
    // qimg encrypts: qemu-img reads qimg's image as the source.
    let out = fx.qimg(&with(&[
        "convert",
        "-O",
        "qcow",
        "-o",
        "encryption=on,encrypt.key-secret=s",
        "src.raw",
        "ours.qcow",
    ]));
    assert_eq!(out.status, 0, "{out:?}");
    let ours = keyed("ours.qcow");
    fx.oracle(&with(&[
        "compare",
        "--image-opts",
        &ours,
        "driver=raw,file.filename=src.raw",
    ]));
    fx.same_info_and_map(&["ours.qcow"]);
    // Compression and encryption together are refused, as qemu-img does.
    fx.same(&with(&[
        "convert",
        "-c",
        "-O",
        "qcow",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=s",
        "src.raw",
        "c.qcow",
    ]));
}

#[test]
fn hostile_headers_fail_as_qemu_img_fails() {
    let fx = fixture("qcow1_hostile");
    made(&fx, "base.qcow", "1M", &[], &["write -P 1 0 8k"]);
    // base.qcow: L1 at 48, its one L2 table at 4096, data from 8192.
    let be32 = |v: u32| v.to_be_bytes().to_vec();
    let be64 = |v: u64| v.to_be_bytes().to_vec();
    let edits: &[(&str, u64, Vec<u8>)] = &[
        ("magic", 0, b"QFI\xfa".to_vec()),
        ("size-zero", 24, be64(0)),
        ("size-one", 24, be64(1)),
        ("size-odd", 24, be64(1000)),
        ("size-huge", 24, be64(u64::MAX)),
        ("size-too-large", 24, be64(1 << 60)),
        // 2^28 - 2 L1 entries: qemu reads 2 GiB in one request and fails.
        ("l1-max", 24, be64((1 << 49) - (4 << 20))),
        ("cluster-bits-8", 32, vec![8]),
        ("cluster-bits-17", 32, vec![17]),
        ("cluster-bits-16", 32, vec![16]),
        ("l2-bits-5", 33, vec![5]),
        ("l2-bits-14", 33, vec![14]),
        ("l2-bits-13", 33, vec![13]),
        ("crypt-2", 36, be32(2)),
        ("crypt-1", 36, be32(1)),
        ("l1-far", 40, be64(0x7fff_ffff_ffff_ff00)),
        ("l1-past-eof", 40, be64(1 << 20)),
        ("backing-name-long", 8, [be64(48), be32(1024)].concat()),
        ("backing-name-huge", 8, [be64(48), be32(u32::MAX)].concat()),
        ("backing-name-far", 8, [be64(1 << 62), be32(16)].concat()),
        ("l2-far", 48, be64(0x7fff_ffff_ffff_f000)),
        ("l2-past-eof", 48, be64(1 << 32)),
        ("data-far", 4096, be64(0x7fff_ffff_ffff_f000)),
        ("data-past-eof", 4096, be64(1 << 36)),
        ("compressed-all-ones", 4096, be64(u64::MAX)),
        ("compressed-garbage", 4096, be64(0x8020_0000_0000_0030)),
        ("compressed-past-eof", 4096, be64(0x8020_0000_1000_0000)),
    ];
    for (name, offset, bytes) in edits {
        let image = format!("{name}.qcow");
        fx.patched_copy("base.qcow", &image, &[(*offset, bytes)]);
        fx.same_bounded(&["info", &image]);
        fx.same_bounded(&["info", "-f", "qcow", "--output=json", &image]);
        converts_as_qemu_img(&fx, &image, name);
    }
    // A file cut inside its header or tables.
    for len in [40usize, 300, 5000] {
        let whole = std::fs::read(fx.path("base.qcow")).expect("read base.qcow");
        let image = format!("cut-{len}.qcow");
        std::fs::write(fx.path(&image), &whole[..len.min(whole.len())]).expect("write");
        fx.same_bounded(&["info", "-f", "qcow", &image]);
        converts_as_qemu_img(&fx, &image, &image);
    }
}

/// The qcow fuzz target's finding (`tests/fuzz-regressions/qcow/`): a 4 MiB
/// image whose L1 table names L2 tables past the end of its 1 KiB file.
/// New clusters went to the file's end, where those tables are, and a
/// write read back another's data. Writes now go past everything the
/// tables name.
#[test]
fn writes_never_land_on_tables_named_past_the_end_of_the_file() {
    let fx = fixture("qcow1_past_eof");
    let input = qimg_tests::workspace().join("tests/fuzz-regressions/qcow/tables-past-eof");
    std::fs::copy(input, fx.path("a.qcow")).expect("copy the input");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.qemu_io("src.raw", "write -P 0x5a 0 8k");
    fx.qemu_io("src.raw", "write -P 0xc3 2M 64k");
    let out = fx.qimg(&[
        "convert", "-n", "-f", "raw", "-O", "qcow", "src.raw", "a.qcow",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let same = fx.qimg(&["compare", "-f", "raw", "-F", "qcow", "src.raw", "a.qcow"]);
    assert_eq!(same.status, 0, "{}{}", same.stdout, same.stderr);
    let same = fx.qemu_img(&["compare", "-f", "raw", "-F", "qcow", "src.raw", "a.qcow"]);
    assert_eq!(same.status, 0, "{}{}", same.stdout, same.stderr);
}
