//! Driver plugins: the manifest decides what loads; broken libraries give a
//! one-line error naming the file while other drivers keep working.

use qimg_tests::{build_dir, Fixture};

fn manifest(fx: &Fixture, body: &str) -> String {
    let path = fx.path("plugins.toml");
    std::fs::write(
        &path,
        format!("search_paths = [\"{}\"]\n{body}", build_dir().display()),
    )
    .unwrap();
    path.display().to_string()
}

const RAW: &str = "[[driver]]\nname = \"raw\"\nlibrary = \"libqimg_raw.so\"\n";

#[test]
fn disabled_raw_is_refused_and_hidden() {
    let fx = Fixture::with_images("disabled");
    let m = manifest(&fx, &format!("{RAW}enabled = false\n"));
    let out = fx.qimg_env(&["info", "-f", "raw", "mid.raw"], &[("QIMG_PLUGINS", &m)]);
    assert_eq!(out.status, 1);
    assert_eq!(
        out.stderr,
        format!("qemu-img: Could not open 'mid.raw': Unknown driver 'raw' (disabled in '{m}')\n")
    );
    let help = fx.qimg_env(&["--help"], &[("QIMG_PLUGINS", &m)]);
    assert!(
        !help
            .stdout
            .split("Supported image formats:")
            .nth(1)
            .unwrap()
            .contains("raw"),
        "{}",
        help.stdout
    );
    // Probing finds no driver either.
    let probed = fx.qimg_env(&["info", "mid.raw"], &[("QIMG_PLUGINS", &m)]);
    assert_eq!(probed.status, 1);
}

#[test]
fn plugins_option_overrides_environment() {
    let fx = Fixture::with_images("option");
    let m = manifest(&fx, &format!("{RAW}enabled = false\n"));
    let out = fx.qimg(&["--plugins", &m, "info", "-f", "raw", "mid.raw"]);
    assert_eq!(out.status, 1, "{}", out.stderr);
    assert!(out.stderr.contains("disabled in"));
}

#[test]
fn no_manifest_loads_drivers_beside_the_executable() {
    let fx = Fixture::with_images("nomanifest");
    let out = fx.qimg_env(
        &["info", "--output=json", "mid.raw"],
        &[("QIMG_PLUGINS", "")],
    );
    assert_eq!(out, fx.qemu_img(&["info", "--output=json", "mid.raw"]));
}

#[test]
fn missing_library_names_the_file() {
    let fx = Fixture::with_images("missinglib");
    let m = manifest(
        &fx,
        "[[driver]]\nname = \"raw\"\nlibrary = \"libqimg_nosuch.so\"\n",
    );
    let out = fx.qimg_env(&["info", "-f", "raw", "mid.raw"], &[("QIMG_PLUGINS", &m)]);
    assert_eq!(out.status, 1);
    let lib = build_dir().join("libqimg_nosuch.so");
    assert!(
        out.stderr.contains(&format!(
            "could not load driver library '{}': No such file or directory",
            lib.display()
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn corrupt_library_fails_alone() {
    let fx = Fixture::with_images("corrupt");
    std::fs::write(fx.path("libbroken.so"), b"this is not an ELF file").unwrap();
    let m = manifest(
        &fx,
        &format!(
            "{RAW}[[driver]]\nname = \"broken\"\nlibrary = \"{}\"\n",
            fx.path("libbroken.so").display()
        ),
    );
    // The raw driver still works when asked for by name...
    let ok = fx.qimg_env(&["info", "-f", "raw", "mid.raw"], &[("QIMG_PLUGINS", &m)]);
    assert_eq!(ok, fx.qemu_img(&["info", "-f", "raw", "mid.raw"]));
    // ...and the broken one is reported on one line naming the file.
    let bad = fx.qimg_env(
        &["info", "-f", "broken", "mid.raw"],
        &[("QIMG_PLUGINS", &m)],
    );
    assert_eq!(bad.status, 1);
    let lines: Vec<&str> = bad.stderr.lines().collect();
    assert!(lines.iter().all(|l| l.len() < 400), "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains(&format!("'{}'", fx.path("libbroken.so").display())),
        "{}",
        bad.stderr
    );
    // Probing loads everything: the broken library is reported, raw still answers.
    let probed = fx.qimg_env(&["info", "mid.raw"], &[("QIMG_PLUGINS", &m)]);
    assert_eq!(probed.status, 0, "{}", probed.stderr);
    assert!(probed.stderr.contains("libbroken.so"), "{}", probed.stderr);
}

#[test]
fn library_without_a_qimg_module_is_refused() {
    let fx = Fixture::with_images("foreign");
    // A real shared library that is not a qimg driver.
    let libc = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libm.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("a system shared library");
    let m = manifest(
        &fx,
        &format!("[[driver]]\nname = \"foreign\"\nlibrary = \"{libc}\"\n"),
    );
    let out = fx.qimg_env(
        &["info", "-f", "foreign", "mid.raw"],
        &[("QIMG_PLUGINS", &m)],
    );
    assert_eq!(out.status, 1);
    // One line, with the reason.
    assert_eq!(
        out.stderr,
        format!(
            "qemu-img: Could not open 'mid.raw': could not load driver library '{libc}': \
             not a qimg driver library (it exports no qimg driver module)\n"
        )
    );
}

#[test]
fn empty_and_non_elf_files_give_their_reason_once() {
    let fx = Fixture::with_images("notelf");
    std::fs::write(fx.path("empty.so"), b"").unwrap();
    std::fs::write(fx.path("text.so"), b"not an ELF file").unwrap();
    std::fs::write(fx.path("long.so"), vec![b'x'; 4096]).unwrap();
    let cases = [
        ("empty.so", "empty file, not a shared library"),
        ("text.so", "not a loadable shared library (file too short)"),
        (
            "long.so",
            "not a loadable shared library (invalid ELF header)",
        ),
    ];
    for (file, reason) in cases {
        let lib = fx.path(file).display().to_string();
        let m = manifest(
            &fx,
            &format!("[[driver]]\nname = \"bad\"\nlibrary = \"{lib}\"\n"),
        );
        let out = fx.qimg_env(&["info", "-f", "bad", "mid.raw"], &[("QIMG_PLUGINS", &m)]);
        assert_eq!(out.status, 1);
        assert_eq!(
            out.stderr,
            format!(
                "qemu-img: Could not open 'mid.raw': could not load driver library '{lib}': {reason}\n"
            )
        );
    }
}

#[test]
fn checksum_pins_the_library() {
    let fx = Fixture::with_images("sha");
    let bad = manifest(&fx, &format!("{RAW}sha256 = \"{}\"\n", "0".repeat(64)));
    let out = fx.qimg_env(&["info", "-f", "raw", "mid.raw"], &[("QIMG_PLUGINS", &bad)]);
    assert_eq!(out.status, 1);
    assert!(out.stderr.contains("sha256 mismatch"), "{}", out.stderr);
    let real = fx.sh(&format!(
        "sha256sum {}",
        build_dir().join("libqimg_raw.so").display()
    ));
    let good = manifest(
        &fx,
        &format!(
            "{RAW}sha256 = \"{}\"\n",
            real.split_whitespace().next().unwrap()
        ),
    );
    let ok = fx.qimg_env(
        &["info", "-f", "raw", "mid.raw"],
        &[("QIMG_PLUGINS", &good)],
    );
    assert_eq!(ok.status, 0, "{}", ok.stderr);
}

#[test]
fn bad_manifest_is_reported() {
    let fx = Fixture::with_images("badmanifest");
    std::fs::write(fx.path("plugins.toml"), "[[driver]]\nname = 3\n").unwrap();
    let out = fx.qimg_env(
        &["info", "mid.raw"],
        &[(
            "QIMG_PLUGINS",
            &fx.path("plugins.toml").display().to_string(),
        )],
    );
    assert_eq!(out.status, 1);
    assert!(
        out.stderr.starts_with("qemu-img: invalid plugin manifest"),
        "{}",
        out.stderr
    );
}

#[test]
fn two_libraries_with_the_same_root_module_load_side_by_side() {
    // A second copy of the raw library (listed under another name, as names
    // are unique): probing loads every enabled library, and both must load (abi_stable's per-type module cache would make the
    // second load return the first) without a word on stderr.
    let fx = Fixture::with_images("sidebyside");
    let copy = fx.path("libqimg_rawcopy.so");
    std::fs::copy(build_dir().join("libqimg_raw.so"), &copy).unwrap();
    let m = manifest(
        &fx,
        &format!(
            "{RAW}[[driver]]\nname = \"rawcopy\"\nlibrary = \"{}\"\n",
            copy.display()
        ),
    );
    let out = fx.qimg_env(&["info", "mid.raw"], &[("QIMG_PLUGINS", &m)]);
    assert_eq!(out, fx.qemu_img(&["info", "mid.raw"]));
    let help = fx.qimg_env(&["--help"], &[("QIMG_PLUGINS", &m)]);
    assert_eq!(
        help.stdout
            .split("Supported image formats:")
            .nth(1)
            .unwrap()
            .trim(),
        "raw"
    );
}

#[test]
fn future_abi_is_refused_by_name() {
    // The next major version, then the next minor one (a library that may
    // call host services this qimg lacks).
    let current = qimg_tests::current_abi();
    let (major, minor) = current.split_once('.').expect("major.minor");
    let minor: u32 = minor.parse().expect("minor");
    let next_major = format!("{}.0", major.parse::<u32>().expect("major") + 1);
    let next_minor = format!("{major}.{}; it needs a newer qimg", minor + 1);
    for (claim, version) in [("major", next_major.as_str()), ("minor", &next_minor)] {
        let fx = Fixture::with_images(&format!("badabi_{claim}"));
        let m = manifest(
            &fx,
            &format!("{RAW}[[driver]]\nname = \"future\"\nlibrary = \"libtestdrv_badabi.so\"\n"),
        );
        let env = [("QIMG_PLUGINS", m.as_str()), ("TESTDRV_ABI", claim)];
        let out = fx.qimg_env(&["info", "-f", "future", "mid.raw"], &env);
        assert_eq!(out.status, 1);
        let lib = build_dir().join("libtestdrv_badabi.so");
        assert!(
            out.stderr.contains(&format!(
                "could not load driver library '{}': built for driver ABI {}, this qimg loads 1.0 to {current}{}",
                lib.display(),
                &version[..3],
                &version[3..],
            )),
            "{}",
            out.stderr
        );
        // The other drivers still work.
        assert_eq!(fx.qimg_env(&["info", "mid.raw"], &env).status, 0);
    }
}

#[test]
fn help_lists_the_drivers_of_the_plugins_option() {
    // `--plugins` after `--help` is honoured too.
    let fx = Fixture::with_images("helpplugins");
    let m = manifest(&fx, RAW);
    for args in [
        ["--plugins", m.as_str(), "--help"],
        ["--help", "--plugins", m.as_str()],
    ] {
        let help = fx.qimg(&args);
        assert_eq!(help.status, 0);
        let formats = help
            .stdout
            .split("Supported image formats:")
            .nth(1)
            .unwrap();
        assert_eq!(formats.trim(), "raw", "{args:?}");
    }
}

#[test]
fn probing_to_raw_names_the_disabled_drivers() {
    let fx = Fixture::with_images("untried");
    fx.oracle(&["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]);
    let m = manifest(
        &fx,
        &format!(
            "{RAW}[[driver]]\nname = \"qcow2\"\nlibrary = \"libqimg_qcow2.so\"\nenabled = false\n"
        ),
    );
    let env = [("QIMG_PLUGINS", m.as_str())];
    // A file whose magic names a disabled format is refused by name...
    let out = fx.qimg_env(&["info", "a.qcow2"], &env);
    assert_eq!(out.status, 1, "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "qemu-img: Could not open 'a.qcow2': image is in qcow2 format, whose driver is disabled in '{m}' (use -f raw to read its bytes as raw)\n"
        )
    );
    // ...unless raw is asked for by name.
    assert_eq!(
        fx.qimg_env(&["info", "-f", "raw", "a.qcow2"], &env).status,
        0
    );
    // A file no magic claims is read as raw, with the drivers not tried.
    let raw = fx.qimg_env(&["info", "mid.raw"], &env);
    assert_eq!(raw.status, 0, "{raw:?}");
    assert_eq!(
        raw.stderr,
        format!(
            "qemu-img: warning: probing read 'mid.raw' as raw; these drivers were not tried: qcow2 (disabled in '{m}')\n"
        )
    );
    // With every driver enabled there is no such warning.
    let all = fx.qimg(&["info", "mid.raw"]);
    assert_eq!(all.stderr, "");
}

#[test]
fn a_relative_manifest_loads_the_libraries_beside_it() {
    // `--plugins plugins.toml` with a bare library name: the library beside
    // the manifest is the one pinned and loaded, never one the dynamic
    // loader finds on LD_LIBRARY_PATH under the same name.
    let fx = Fixture::with_images("relative_manifest");
    let ours = build_dir().join("libqimg_raw.so");
    std::fs::copy(&ours, fx.path("libqimg_raw.so")).expect("copy raw driver");
    let decoy = fx.path("decoy");
    std::fs::create_dir(&decoy).expect("mkdir");
    std::fs::copy(
        build_dir().join("libqimg_vmdk.so"),
        decoy.join("libqimg_raw.so"),
    )
    .expect("copy decoy");
    let digest = fx.sh("sha256sum libqimg_raw.so | cut -d' ' -f1");
    std::fs::write(
        fx.path("plugins.toml"),
        format!(
            "[[driver]]\nname = \"raw\"\nlibrary = \"libqimg_raw.so\"\nsha256 = \"{}\"\n",
            digest.trim()
        ),
    )
    .expect("write manifest");
    let decoy_path = decoy.display().to_string();
    let env = [("LD_LIBRARY_PATH", decoy_path.as_str())];
    let listed = fx.qimg_env(&["--plugins", "plugins.toml", "--list-drivers"], &env);
    assert_eq!(listed.status, 0, "{}", listed.stderr);
    assert!(
        listed.stdout.contains("package: qimg-raw "),
        "{}",
        listed.stdout
    );
    let out = fx.qimg_env(
        &["--plugins", "plugins.toml", "info", "-f", "raw", "mid.raw"],
        &env,
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    // Without a pin too.
    std::fs::write(fx.path("unpinned.toml"), RAW).expect("write manifest");
    let listed = fx.qimg_env(&["--plugins", "unpinned.toml", "--list-drivers"], &env);
    assert!(
        listed.stdout.contains("package: qimg-raw "),
        "{}",
        listed.stdout
    );
}

/// Probing a file whose magic the host knows loads only its driver: a
/// broken library beside it is never touched (and so never reported).
/// A file without a known magic is offered to every library except those
/// of the formats the host knows by magic (here a broken "vdi").
#[test]
fn a_known_magic_loads_only_its_driver() {
    let fx = Fixture::with_images("probe_by_magic");
    std::fs::write(fx.path("libbroken.so"), b"this is not an ELF file").unwrap();
    std::fs::write(fx.path("libnotvdi.so"), b"this is not an ELF file").unwrap();
    let m = manifest(
        &fx,
        &format!(
            "{RAW}[[driver]]\nname = \"qcow2\"\nlibrary = \"libqimg_qcow2.so\"\n\
             [[driver]]\nname = \"broken\"\nlibrary = \"{}\"\n\
             [[driver]]\nname = \"vdi\"\nlibrary = \"{}\"\n",
            fx.path("libbroken.so").display(),
            fx.path("libnotvdi.so").display()
        ),
    );
    fx.oracle(&["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]);
    let qcow2 = fx.qimg_env(&["info", "a.qcow2"], &[("QIMG_PLUGINS", &m)]);
    assert_eq!(qcow2, fx.qemu_img(&["info", "a.qcow2"]));
    let raw = fx.qimg_env(&["info", "mid.raw"], &[("QIMG_PLUGINS", &m)]);
    assert_eq!(raw.status, 0, "{}", raw.stderr);
    assert!(raw.stderr.contains("libbroken.so"), "{}", raw.stderr);
    assert!(!raw.stderr.contains("libnotvdi.so"), "{}", raw.stderr);
}
