//! `--confine` (issue 13): images from strangers may not name other files,
//! and a confined qimg cannot reach files, programs or the network beyond
//! the files its command names, even from inside a driver.

use qimg_tests::{build_dir, Fixture, Outcome};

/// True if the running kernel offers Landlock (its ABI version query).
fn kernel_has_landlock() -> bool {
    const SYS_LANDLOCK_CREATE_RULESET: libc::c_long = 444;
    const VERSION: libc::c_uint = 1;
    // SAFETY: the version query reads no memory.
    let abi = unsafe {
        libc::syscall(
            SYS_LANDLOCK_CREATE_RULESET,
            std::ptr::null::<u8>(),
            0usize,
            VERSION,
        )
    };
    abi >= 1
}

#[test]
fn images_naming_other_files_are_refused() {
    let fx = Fixture::new("confine_names");
    std::fs::write(fx.path("secret.txt"), b"not for guests\n".repeat(100)).unwrap();
    let secret = fx.path("secret.txt").display().to_string();
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        &secret,
        "-F",
        "raw",
        "evil.qcow2",
        "1M",
    ]);
    // The data file is named afterwards: creating it would clobber it.
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=d.bin",
        "data.qcow2",
        "1M",
    ]);
    fx.oracle(&["amend", "-o", &format!("data_file={secret}"), "data.qcow2"]);
    std::fs::write(
        fx.path("flat.vmdk"),
        format!("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 2 FLAT \"{secret}\" 0\n"),
    )
    .unwrap();
    let refusal = format!("--confine forbids an image naming another file ('{secret}')");
    // Unconfined, the backing file is read: the guest sees the host file.
    let out = fx.qimg(&["convert", "-O", "raw", "evil.qcow2", "plain.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(std::fs::read(fx.path("plain.raw"))
        .unwrap()
        .starts_with(b"not for guests"));
    for args in [
        &["--confine", "convert", "-O", "raw", "evil.qcow2", "out.raw"][..],
        &["--confine", "map", "evil.qcow2"][..],
        &["--confine", "info", "--backing-chain", "evil.qcow2"][..],
        &["--confine", "convert", "-O", "raw", "data.qcow2", "out.raw"][..],
        &["--confine", "map", "flat.vmdk"][..],
    ] {
        let out = fx.qimg(args);
        assert_eq!(out.status, 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(&refusal), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        // The output is never left holding anything.
        let left = std::fs::metadata(fx.path("out.raw")).map_or(0, |m| m.len());
        assert_eq!(left, 0, "{args:?}");
    }
    // Describing an image without following its names still works.
    let out = fx.qimg(&["--confine", "info", "evil.qcow2"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&format!("backing file: {secret}")));
}

#[test]
fn confined_commands_work_on_the_files_they_name() {
    let fx = Fixture::new("confine_work");
    fx.make_qcow2("in.qcow2", "", "4M");
    fx.qemu_io_cmds(
        "qcow2",
        "in.qcow2",
        &["write -P 3 0 64k", "write -P 4 3M 64k"],
    );
    for args in [
        &[
            "--confine",
            "convert",
            "-O",
            "qcow2",
            "in.qcow2",
            "out.qcow2",
        ][..],
        &["--confine", "check", "in.qcow2"][..],
        &["--confine", "map", "--output=json", "in.qcow2"][..],
        &["--confine", "measure", "-O", "qcow2", "in.qcow2"][..],
        &["--confine", "compare", "in.qcow2", "out.qcow2"][..],
        &["--confine", "info", "--output=json", "in.qcow2"][..],
    ] {
        let out = fx.qimg(args);
        assert_eq!(out.status, 0, "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr, "", "{args:?}");
        // Confined or not, the answer is the same.
        let plain = fx.qimg(&args[1..]);
        assert_eq!(out.stdout, plain.stdout, "{args:?}");
    }
    fx.oracle(&["compare", "in.qcow2", "out.qcow2"]);
    // Commands that cannot name their files are refused, not run unconfined.
    let out = fx.qimg(&["--confine", "create", "-f", "qcow2", "new.qcow2", "1M"]);
    assert_eq!(out.status, 1);
    assert!(
        out.stderr
            .contains("--confine is not supported by 'create'"),
        "{}",
        out.stderr
    );
    assert!(!fx.path("new.qcow2").exists());
    assert!(fx.qimg(&["--help"]).stdout.contains("--confine"));
}

/// Opens `img.panicky` with the fixture driver playing a parser bug that
/// tries `escape`, confined or not.
fn escape(fx: &Fixture, confined: bool, escape: &str) -> Outcome {
    let manifest = fx.path("plugins.toml");
    let mut args = vec!["info", "-f", "panicky", "img.panicky"];
    if confined {
        args.insert(0, "--confine");
    }
    fx.qimg_env(
        &args,
        &[
            ("QIMG_PLUGINS", manifest.to_str().unwrap()),
            ("TESTDRV_ESCAPE", escape),
        ],
    )
}

#[test]
fn a_parser_bug_cannot_reach_beyond_the_named_files() {
    let fx = Fixture::new("confine_escape");
    std::fs::write(
        fx.path("plugins.toml"),
        format!(
            "search_paths = [\"{}\"]\n[[driver]]\nname = \"raw\"\nlibrary = \"libqimg_raw.so\"\n\
             [[driver]]\nname = \"panicky\"\nlibrary = \"libtestdrv_panicky.so\"\n",
            build_dir().display()
        ),
    )
    .unwrap();
    std::fs::write(fx.path("img.panicky"), vec![0u8; 4096]).unwrap();
    std::fs::write(fx.path("secret.txt"), b"host secret").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let landlock = kernel_has_landlock();
    let tries = [
        (
            format!("read:{}", fx.path("secret.txt").display()),
            landlock,
        ),
        ("read:/etc/hostname".to_string(), landlock),
        ("exec:/bin/true".to_string(), true),
        (format!("connect:127.0.0.1:{port}"), true),
    ];
    for (what, enforced) in tries {
        let out = escape(&fx, false, &what);
        assert!(
            out.stderr.contains(&format!("escaped: {what}")),
            "{}",
            out.stderr
        );
        let out = escape(&fx, true, &what);
        assert_eq!(out.status, 1);
        if enforced {
            assert!(
                out.stderr.contains(&format!("blocked: {what}")),
                "{}",
                out.stderr
            );
        } else {
            assert!(out.stderr.contains("Landlock"), "{}", out.stderr);
        }
    }
}

/// A network store is refused by name before anything is opened: a
/// confined qimg may not open sockets.
#[test]
fn network_stores_are_refused_by_name() {
    let fx = Fixture::with_images("confine_network");
    for args in [
        &["--confine", "info", "nbd://127.0.0.1:1/x"][..],
        &[
            "--confine",
            "convert",
            "-O",
            "raw",
            "mid.raw",
            "nbd+unix:///x?socket=s",
        ],
        &[
            "--confine",
            "convert",
            "-O",
            "raw",
            "http://127.0.0.1:1/a",
            "out.raw",
        ],
    ] {
        let out = fx.qimg(args);
        assert_eq!(out.status, 1, "{args:?}: {out:?}");
        assert!(
            out.stderr
                .contains("is a network store; a confined qimg reaches only"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!fx.path("out.raw").exists());
    }
}
