//! Legacy AES-encrypted qcow2 (`encrypt.format=aes`) against qemu-img
//! 10.0.2: images qemu-img and qemu-io wrote are read by qimg, images qimg
//! wrote are read and checked by qemu-img, with the key given as qemu-img
//! takes it (`--object secret` plus `encrypt.key-secret` in the image's
//! options).

use qimg_tests::Fixture;

const SECRET: &str = "secret,id=sec0,data=123456";

/// The image's option string with the key.
fn keyed(file: &str) -> String {
    format!("driver=qcow2,file.filename={file},encrypt.key-secret=sec0")
}

/// `qemu-img create` of an AES-encrypted qcow2: `extra` is appended to the
/// encryption options, `rest` is the rest of the command line.
fn create_encrypted(fx: &Fixture, extra: &str, rest: &[&str]) {
    let opts = format!("encrypt.format=aes,encrypt.key-secret=sec0{extra}");
    let mut args = vec![
        "create", "-q", "-f", "qcow2", "--object", SECRET, "-o", &opts,
    ];
    args.extend(rest);
    fx.oracle(&args);
}

/// An AES-encrypted image made by qemu-img with data written by qemu-io,
/// some of it not sector-aligned, and some explicit zeros.
fn qemu_encrypted(fx: &Fixture, file: &str, extra: &str) {
    create_encrypted(fx, extra, &[file, "4M"]);
    fx.sh(&format!(
        "qemu-io --object {SECRET} --image-opts {} -c 'write -P 0x41 0 64k' \
         -c 'write -P 0x42 1000 3000' -c 'write -P 0x43 2M 100k' \
         -c 'write -z 2100k 8k' -c 'write -P 0x44 4190000 4304' >/dev/null",
        keyed(file)
    ));
}

/// Runs info (human and JSON), map and check on the keyed image `name`
/// with both tools, then converts it to raw with each and requires the
/// same bytes.
fn reads_alike(fx: &Fixture, secret: &str, name: &str) {
    for args in [
        vec!["info", "--object", secret, "--image-opts", name],
        vec![
            "info",
            "--output=json",
            "--object",
            secret,
            "--image-opts",
            name,
        ],
        vec![
            "map",
            "--output=json",
            "--object",
            secret,
            "--image-opts",
            name,
        ],
        vec!["check", "--object", secret, "--image-opts", name],
    ] {
        fx.same(&args);
    }
    let convert = |out: &'static str| {
        [
            "convert",
            "--object",
            secret,
            "--image-opts",
            name,
            "-O",
            "raw",
            out,
        ]
    };
    fx.oracle(&convert("theirs.raw"));
    let ours = fx.qimg(&convert("ours.raw"));
    assert_eq!(ours.status, 0, "{name}: {}", ours.stderr);
    fx.sh("cmp ours.raw theirs.raw");
}

#[test]
fn reads_what_qemu_wrote() {
    let fx = Fixture::new("crypt_read");
    for (file, extra) in [
        ("v3.qcow2", ""),
        ("v2.qcow2", ",compat=0.10,cluster_size=4096"),
    ] {
        qemu_encrypted(&fx, file, extra);
        let name = keyed(file);
        reads_alike(&fx, SECRET, &name);
        // A json: name carries the key the same way.
        let json = format!(
            r#"json:{{"driver":"qcow2","file":{{"filename":"{file}"}},"encrypt":{{"key-secret":"sec0"}}}}"#
        );
        fx.same(&["compare", "--object", SECRET, &json, "theirs.raw"]);
    }
}

#[test]
fn qemu_reads_what_qimg_wrote() {
    let fx = Fixture::new("crypt_write");
    qemu_encrypted(&fx, "src.qcow2", "");
    let src = keyed("src.qcow2");
    fx.oracle(&[
        "convert",
        "--object",
        SECRET,
        "--image-opts",
        &src,
        "-O",
        "raw",
        "plain.raw",
    ]);
    // create: the same bytes as qemu-img's.
    for opts in [
        "encrypt.format=aes,encrypt.key-secret=sec0",
        "encryption=on,encrypt.key-secret=sec0,compat=0.10",
    ] {
        fx.same_effect(
            &[
                "create", "-f", "qcow2", "--object", SECRET, "-o", opts, "{}", "1M",
            ],
            "new.qcow2",
        );
        fx.sh("cmp ours.new.qcow2 theirs.new.qcow2");
    }
    // convert into a new encrypted image, and into an existing one (-n).
    let out = fx.qimg(&[
        "convert",
        "--object",
        SECRET,
        "-O",
        "qcow2",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=sec0,cluster_size=4096",
        "plain.raw",
        "new.qcow2",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    create_encrypted(&fx, ",compat=0.10", &["old.qcow2", "4M"]);
    let out = fx.qimg(&[
        "convert",
        "-n",
        "--object",
        SECRET,
        "--image-opts",
        &src,
        "--target-image-opts",
        &keyed("old.qcow2"),
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    for file in ["new.qcow2", "old.qcow2"] {
        let name = keyed(file);
        let cmp = fx.qemu_img(&[
            "compare",
            "--object",
            SECRET,
            "--image-opts",
            &name,
            "driver=raw,file.filename=plain.raw",
        ]);
        assert_eq!(cmp.status, 0, "{file}: {}{}", cmp.stdout, cmp.stderr);
        let check = fx.qemu_img(&["check", "--object", SECRET, "--image-opts", &name]);
        assert_eq!(check.status, 0, "{file}: {}{}", check.stdout, check.stderr);
    }
    // Without the right key the image reads as noise, not as the data.
    fx.oracle(&[
        "convert",
        "--object",
        "secret,id=sec0,data=wrong",
        "--image-opts",
        &keyed("new.qcow2"),
        "-O",
        "raw",
        "noise.raw",
    ]);
    assert_ne!(fx.sh("cmp -s noise.raw plain.raw; echo $?").trim(), "0");
}

#[test]
fn refusals_like_qemu() {
    let fx = Fixture::new("crypt_refuse");
    qemu_encrypted(&fx, "e.qcow2", "");
    fx.oracle(&["create", "-q", "-f", "raw", "p.raw", "1M"]);
    let wrong_id = "driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=sec1";
    let luks = "driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=sec0,encrypt.format=luks";
    let unknown = "driver=qcow2,file.filename=e.qcow2,lazy-what=1";
    let raw_key = "driver=raw,file.filename=p.raw,encrypt.key-secret=sec0";
    for args in [
        vec!["convert", "-O", "raw", "e.qcow2", "o.raw"],
        vec!["check", "e.qcow2"],
        vec![
            "convert",
            "--object",
            SECRET,
            "--image-opts",
            wrong_id,
            "-O",
            "raw",
            "o.raw",
        ],
        vec![
            "convert",
            "--object",
            SECRET,
            "--image-opts",
            luks,
            "-O",
            "raw",
            "o.raw",
        ],
        vec!["info", "--image-opts", unknown],
        vec!["info", "--object", SECRET, "--image-opts", raw_key],
        vec!["info", "--image-opts", wrong_id],
        vec![
            "convert",
            "-c",
            "--object",
            SECRET,
            "-O",
            "qcow2",
            "-o",
            "encrypt.format=aes,encrypt.key-secret=sec0",
            "p.raw",
            "c.qcow2",
        ],
        vec![
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            "preallocation=metadata",
            "p.raw",
            "c.qcow2",
        ],
        vec![
            "create",
            "-f",
            "qcow2",
            "-o",
            "encryption=on",
            "n.qcow2",
            "1M",
        ],
        vec![
            "create",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=aes,encrypt.key-secret=sec9",
            "n.qcow2",
            "1M",
        ],
    ] {
        fx.same(&args);
    }
}

#[test]
fn rebase_copies_backing_data_into_an_encrypted_overlay() {
    // Safe rebase onto nothing writes the backing file's data into the
    // encrypted overlay: partial clusters are completed from the backing
    // file and encrypted whole; qemu-img must read back what it would have
    // written itself.
    let fx = Fixture::new("crypt_rebase");
    fx.oracle(&["create", "-q", "-f", "qcow2", "b.qcow2", "4M"]);
    fx.qemu_io_cmds(
        "qcow2",
        "b.qcow2",
        &["write -P 0x11 0 1M", "write -P 0x12 3000 5000"],
    );
    create_encrypted(&fx, "", &["-b", "b.qcow2", "-F", "qcow2", "o.qcow2"]);
    fx.sh(&format!(
        "qemu-io --object {SECRET} --image-opts {} -c 'write -P 0x33 1000 700' \
         -c 'write -P 0x34 2M 100k' >/dev/null",
        keyed("o.qcow2")
    ));
    fx.oracle(&[
        "convert",
        "--object",
        SECRET,
        "--image-opts",
        &keyed("o.qcow2"),
        "-O",
        "raw",
        "want.raw",
    ]);
    fx.sh("cp o.qcow2 ours.qcow2 && cp o.qcow2 theirs.qcow2");
    let args = |file: &str| {
        vec![
            "rebase".to_string(),
            "-b".into(),
            String::new(),
            "--object".into(),
            SECRET.into(),
            "--image-opts".into(),
            keyed(file),
        ]
    };
    let ours: Vec<String> = args("ours.qcow2");
    let theirs: Vec<String> = args("theirs.qcow2");
    let o = fx.qimg(&ours.iter().map(String::as_str).collect::<Vec<_>>());
    let t = fx.qemu_img(&theirs.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        (o.status, o.stdout, o.stderr),
        (t.status, t.stdout, t.stderr)
    );
    let info = fx.qemu_img(&["info", "ours.qcow2"]);
    assert!(!info.stdout.contains("backing file"), "{}", info.stdout);
    let cmp = fx.qemu_img(&[
        "compare",
        "--object",
        SECRET,
        "--image-opts",
        &keyed("ours.qcow2"),
        "driver=raw,file.filename=want.raw",
    ]);
    assert_eq!(cmp.status, 0, "{}{}", cmp.stdout, cmp.stderr);
    let check = fx.qemu_img(&[
        "check",
        "--object",
        SECRET,
        "--image-opts",
        &keyed("ours.qcow2"),
    ]);
    assert_eq!(check.status, 0, "{}{}", check.stdout, check.stderr);
}

/// A 32-byte master key (bytes 1 to 32), base64.
const MASTER: &str =
    "secret,id=master,format=base64,data=AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
/// `pw123` sealed with MASTER (AES-256-CBC, PKCS#7, IV bytes 0xa0 to 0xaf).
const SEALED: &str =
    "secret,id=sealed,keyid=master,iv=oKGio6SlpqeoqaqrrK2urw==,format=base64,data=7QTDcsY5tkPu9dz+mFi5UQ==";

#[test]
fn secrets_sealed_with_another_secret() {
    // A secret given encrypted with a master key (keyid=, iv=) opens the
    // image its plain text opens; bad parameters fail as in qemu-img.
    let fx = Fixture::new("crypt_sealed_secret");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=plain,data=pw123",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=plain",
        "e.qcow2",
        "1M",
    ]);
    fx.sh("qemu-io --object secret,id=plain,data=pw123 --image-opts \
           driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=plain \
           -c 'write -P 0x5a 0 64k' >/dev/null");
    let out = fx.qimg(&[
        "convert",
        "--object",
        MASTER,
        "--object",
        SEALED,
        "--image-opts",
        "driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=sealed",
        "out.raw",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.qemu_io_cmds("raw", "out.raw", &["read -P 0x5a 0 64k"]);
    for bad in [
        "secret,id=s,keyid=master,format=base64,data=7QTDcsY5tkPu9dz+mFi5UQ==",
        "secret,id=s,keyid=master,iv=AAAA,format=base64,data=7QTDcsY5tkPu9dz+mFi5UQ==",
        "secret,id=s,keyid=nokey,iv=oKGio6SlpqeoqaqrrK2urw==,data=x",
        "secret,id=s,keyid=master,iv=oKGio6SlpqeoqaqrrK2urw==,data=abcd",
        "secret,id=s,keyid=short,iv=oKGio6SlpqeoqaqrrK2urw==,data=abcd",
    ] {
        fx.same(&[
            "info",
            "--object",
            MASTER,
            "--object",
            "secret,id=short,data=abc",
            "--object",
            bad,
            "e.qcow2",
        ]);
    }
}

const LUKS_SECRET: &str = "secret,id=sec0,data=abc123";

/// A LUKS-encrypted qcow2 made by qemu-img (`extra` appended to its
/// options) with data written by qemu-io, some of it not sector-aligned.
fn qemu_luks(fx: &Fixture, file: &str, extra: &str) {
    let opts = format!("encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10{extra}");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        LUKS_SECRET,
        "-o",
        &opts,
        file,
        "4M",
    ]);
    fx.sh(&format!(
        "qemu-io --object {LUKS_SECRET} --image-opts {} -c 'write -P 0x5a 0 64k' \
         -c 'write -P 0x33 1M 4k' -c 'write -P 0x44 1000 3000' \
         -c 'write -z 2100k 8k' -c 'write -P 0x45 4190000 4304' >/dev/null",
        keyed(file)
    ));
}

/// LUKS: the IVs come from host offsets, so a qimg convert matches only if
/// the clusters are found and decrypted as qemu does.
#[test]
fn luks_reads_what_qemu_wrote() {
    let fx = Fixture::new("crypt_luks_read");
    for (file, extra) in [
        ("xts.qcow2", ""),
        (
            "essiv.qcow2",
            ",cluster_size=4096,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,\
             encrypt.ivgen-hash-alg=sha256,encrypt.cipher-alg=aes-128",
        ),
        ("ext.qcow2", ",data_file=ext.data"),
    ] {
        qemu_luks(&fx, file, extra);
        let name = keyed(file);
        reads_alike(&fx, LUKS_SECRET, &name);
    }
}

#[test]
fn luks_qemu_reads_what_qimg_wrote() {
    let fx = Fixture::new("crypt_luks_write");
    qemu_luks(&fx, "src.qcow2", "");
    fx.oracle(&[
        "convert",
        "--object",
        LUKS_SECRET,
        "--image-opts",
        &keyed("src.qcow2"),
        "-O",
        "raw",
        "plain.raw",
    ]);
    // Unaligned bytes too: qimg merges them into whole sectors.
    fx.sh("printf hello | dd of=plain.raw bs=1 seek=7777 conv=notrunc 2>/dev/null");
    for (file, extra) in [
        ("a.qcow2", ""),
        ("b.qcow2", ",cluster_size=512,data_file=b.data"),
    ] {
        qemu_luks(&fx, file, extra);
        let name = keyed(file);
        let out = fx.qimg(&[
            "convert",
            "-n",
            "--object",
            LUKS_SECRET,
            "-f",
            "raw",
            "plain.raw",
            "--target-image-opts",
            &name,
        ]);
        assert_eq!(out.status, 0, "{file}: {}", out.stderr);
        let cmp = fx.qemu_img(&[
            "compare",
            "--object",
            LUKS_SECRET,
            "--image-opts",
            &name,
            "driver=raw,file.filename=plain.raw",
        ]);
        assert_eq!(cmp.status, 0, "{file}: {}{}", cmp.stdout, cmp.stderr);
        let check = fx.qemu_img(&["check", "--object", LUKS_SECRET, "--image-opts", &name]);
        assert_eq!(check.status, 0, "{file}: {}{}", check.stdout, check.stderr);
    }
}

#[test]
fn luks_refusals_like_qemu() {
    let fx = Fixture::new("crypt_luks_refuse");
    qemu_luks(&fx, "e.qcow2", "");
    fx.oracle(&["create", "-q", "-f", "raw", "p.raw", "1M"]);
    let name = keyed("e.qcow2");
    let aes = "driver=qcow2,file.filename=e.qcow2,encrypt.key-secret=sec0,encrypt.format=aes";
    for args in [
        vec!["convert", "-O", "raw", "e.qcow2", "o.raw"],
        vec!["check", "e.qcow2"],
        vec![
            "convert",
            "--object",
            "secret,id=sec0,data=wrong",
            "--image-opts",
            &name,
            "-O",
            "raw",
            "o.raw",
        ],
        vec!["convert", "--image-opts", &name, "-O", "raw", "o.raw"],
        vec![
            "convert",
            "--object",
            LUKS_SECRET,
            "--image-opts",
            aes,
            "-O",
            "raw",
            "o.raw",
        ],
        vec![
            "info",
            "--output=json",
            "--object",
            LUKS_SECRET,
            "--image-opts",
            &name,
        ],
    ] {
        fx.same(&args);
    }
    // The LUKS header is checked when describing the image without its
    // key, as qemu-img opens it; a CRYPTO extension with another method
    // is refused (qimg read the ciphertext as plain data).
    let bytes = std::fs::read(fx.path("e.qcow2")).unwrap();
    let luks = bytes.windows(6).position(|w| w == b"LUKS\xba\xbe").unwrap() as u64;
    fx.patched_copy("e.qcow2", "hash.qcow2", &[(luks + 72, b"foo\0")]);
    fx.patched_copy("e.qcow2", "plain.qcow2", &[(32, [0u8; 4])]);
    for file in ["hash.qcow2", "plain.qcow2"] {
        let out = fx.same(&["info", file]);
        assert_eq!(out.status, 1, "{out:?}");
    }
    fx.same(&["convert", "-O", "raw", "plain.qcow2", "o.raw"]);
    // Compressed writes into an encrypted image are refused (qemu-img
    // fails them with EIO, qimg before writing), and leave it intact.
    fx.sh("printf hello | dd of=p.raw bs=1 seek=5000 conv=notrunc 2>/dev/null");
    fx.oracle(&[
        "convert",
        "--object",
        LUKS_SECRET,
        "--image-opts",
        &name,
        "-O",
        "raw",
        "before.raw",
    ]);
    let out = fx.qimg(&[
        "convert",
        "-n",
        "-c",
        "--object",
        LUKS_SECRET,
        "-f",
        "raw",
        "p.raw",
        "--target-image-opts",
        &name,
    ]);
    assert_ne!(out.status, 0, "{}", out.stderr);
    let cmp = fx.qemu_img(&[
        "compare",
        "--object",
        LUKS_SECRET,
        "--image-opts",
        &name,
        "driver=raw,file.filename=before.raw",
    ]);
    assert_eq!(cmp.status, 0, "{}{}", cmp.stdout, cmp.stderr);
}

/// An encrypted overlay on an encrypted base: created without the base's
/// key (only its size is read), read with `backing.encrypt.key-secret`,
/// committed into the base reopened with its key; each as qemu-img does.
#[test]
fn luks_chains_like_qemu() {
    let fx = Fixture::new("crypt_luks_chain");
    qemu_luks(&fx, "base.qcow2", "");
    let o = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,backing_fmt=qcow2";
    let create = |file: &'static str| {
        [
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            LUKS_SECRET,
            "-o",
            o,
            "-b",
            "base.qcow2",
            file,
        ]
    };
    let out = fx.qimg(&create("ours.qcow2"));
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&create("theirs.qcow2"));
    let chained = |file: &str| format!("{},backing.encrypt.key-secret=sec0", keyed(file));
    for file in ["ours.qcow2", "theirs.qcow2"] {
        fx.sh(&format!(
            "qemu-io --object {LUKS_SECRET} --image-opts {} -c 'write -P 0x66 1M 64k' >/dev/null",
            chained(file)
        ));
    }
    let ours = chained("ours.qcow2");
    let theirs = chained("theirs.qcow2");
    for args in [
        vec![
            "compare",
            "--object",
            LUKS_SECRET,
            "--image-opts",
            &ours,
            &theirs,
        ],
        vec![
            "map",
            "--output=json",
            "--object",
            LUKS_SECRET,
            "--image-opts",
            &theirs,
        ],
        // Unknown and unneeded backing options are refused as qemu-img does.
        vec![
            "info",
            "--image-opts",
            "driver=qcow2,file.filename=theirs.qcow2,backing.foo=1",
        ],
    ] {
        fx.same(&args);
    }
    // Commit: each tool into its own copy of the base.
    for (file, base) in [("ours.qcow2", "b1.qcow2"), ("theirs.qcow2", "b2.qcow2")] {
        fx.sh(&format!(
            "cp base.qcow2 {base} && qemu-img rebase -u -b {base} -F qcow2 --object {LUKS_SECRET} --image-opts {}",
            keyed(file)
        ));
    }
    let out = fx.qimg(&[
        "commit",
        "--object",
        LUKS_SECRET,
        "--image-opts",
        &chained("ours.qcow2"),
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&[
        "commit",
        "--object",
        LUKS_SECRET,
        "--image-opts",
        &chained("theirs.qcow2"),
    ]);
    let cmp = fx.qemu_img(&[
        "compare",
        "--object",
        LUKS_SECRET,
        "--image-opts",
        &keyed("b1.qcow2"),
        &keyed("b2.qcow2"),
    ]);
    assert_eq!(cmp.status, 0, "{}{}", cmp.stdout, cmp.stderr);
}
