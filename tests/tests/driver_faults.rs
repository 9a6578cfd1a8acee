//! A driver's fault never costs data: every panic, wherever it happens in a
//! driver built against today's driver-api, becomes a one-line error that
//! names the driver, the command exits non-zero and no target is left that
//! passes for an image. The fixture driver (tests/drivers/panicky) panics
//! where `TESTDRV_PANIC` says.

use qimg_tests::{build_dir, Fixture, Outcome};

/// A fixture with `src.raw` (4 MiB with data at 0 and 3 MiB) and a manifest
/// listing raw and panicky.
fn fixture(name: &str) -> (Fixture, String) {
    let fx = Fixture::new(name);
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.qemu_io("src.raw", "write -P 7 0 1M");
    fx.qemu_io("src.raw", "write -P 9 3M 512k");
    let manifest = fx.path("plugins.toml");
    std::fs::write(
        &manifest,
        format!(
            "search_paths = [\"{}\"]\n[[driver]]\nname = \"raw\"\nlibrary = \"libqimg_raw.so\"\n\
             [[driver]]\nname = \"panicky\"\nlibrary = \"libtestdrv_panicky.so\"\n",
            build_dir().display()
        ),
    )
    .unwrap();
    (fx, manifest.display().to_string())
}

/// Runs qimg with the fixture's manifest, the driver panicking at `point`.
fn run(fx: &Fixture, manifest: &str, point: &str, args: &[&str]) -> Outcome {
    fx.qimg_env(
        args,
        &[("QIMG_PLUGINS", manifest), ("TESTDRV_PANIC", point)],
    )
}

/// The command failed with exactly one line that reports `point`'s panic,
/// and the default panic hook printed nothing.
fn assert_fault(out: &Outcome, point: &str, names_driver: bool) {
    assert_eq!(out.status, 1, "{out:?}");
    let who = if names_driver {
        "internal error in driver 'panicky': "
    } else {
        "internal error in driver: "
    };
    let want = format!("{who}{point} panicked at tests/drivers/panicky/src/lib.rs:");
    assert!(
        out.stderr.contains(&want),
        "want {want:?} in {}",
        out.stderr
    );
    assert!(!out.stderr.contains("thread '"), "{}", out.stderr);
    assert!(!out.stderr.contains("backtrace"), "{}", out.stderr);
}

#[test]
fn the_fixture_works_where_it_does_not_panic() {
    // Without TESTDRV_PANIC the driver converts correctly, so each failure
    // below comes from its panic.
    let (fx, m) = fixture("faults_none");
    let out = run(
        &fx,
        &m,
        "",
        &["convert", "-O", "panicky", "src.raw", "out.panicky"],
    );
    assert_eq!(out.status, 0, "{out:?}");
    let back = run(
        &fx,
        &m,
        "",
        &["compare", "-f", "raw", "src.raw", "out.panicky"],
    );
    assert_eq!(back.stdout, "Images are identical.\n", "{back:?}");
}

#[test]
fn panic_while_building_the_driver_list_names_the_library() {
    let (fx, m) = fixture("faults_drivers");
    let out = run(&fx, &m, "drivers", &["info", "-f", "panicky", "src.raw"]);
    assert_fault(&out, "drivers", false);
    let lib = build_dir().join("libtestdrv_panicky.so");
    assert!(
        out.stderr.contains(&format!(
            "could not load driver library '{}': ",
            lib.display()
        )),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

#[test]
fn panic_in_name_or_capabilities_refuses_the_library() {
    for point in ["name", "capabilities"] {
        let (fx, m) = fixture(&format!("faults_{point}"));
        let out = run(&fx, &m, point, &["info", "-f", "panicky", "src.raw"]);
        // A driver whose name cannot be asked cannot be named.
        assert_fault(&out, point, point != "name");
        assert!(
            out.stderr.contains("could not load driver library"),
            "{}",
            out.stderr
        );
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    }
}

#[test]
fn panic_while_probing_fails_the_open_instead_of_reading_raw() {
    let (fx, m) = fixture("faults_probe");
    let out = run(&fx, &m, "probe", &["info", "src.raw"]);
    assert_fault(&out, "probe", true);
    assert_eq!(out.stdout, "");
    // With the format named, the faulty probe is never called.
    let named = run(&fx, &m, "probe", &["info", "-f", "raw", "src.raw"]);
    assert_eq!(named.status, 0, "{named:?}");
}

#[test]
fn panic_in_virtual_size_leaves_no_target() {
    let (fx, m) = fixture("faults_size");
    let out = run(
        &fx,
        &m,
        "virtual_size",
        &["convert", "-f", "panicky", "src.raw", "out.raw"],
    );
    assert_fault(&out, "virtual_size", true);
    assert!(!fx.path("out.raw").exists(), "a target was left behind");
    let info = run(
        &fx,
        &m,
        "virtual_size",
        &["info", "-f", "panicky", "src.raw"],
    );
    assert_fault(&info, "virtual_size", true);
    assert_eq!(info.stdout, "");
}

#[test]
fn panic_in_store_name_fails_map() {
    let (fx, m) = fixture("faults_store_name");
    for args in [
        &["map", "-f", "panicky", "src.raw"][..],
        &["map", "--output=json", "-f", "panicky", "src.raw"][..],
    ] {
        let out = run(&fx, &m, "store_name", args);
        assert_fault(&out, "store_name", true);
    }
}

#[test]
fn panic_while_reading_the_source_leaves_no_target() {
    let (fx, m) = fixture("faults_read");
    let out = run(
        &fx,
        &m,
        "read",
        &["convert", "-f", "panicky", "src.raw", "out.raw"],
    );
    assert_fault(&out, "read", true);
    assert!(!fx.path("out.raw").exists());
}

#[test]
fn panic_while_writing_the_target_leaves_no_target() {
    for point in ["write", "flush", "create", "open"] {
        let (fx, m) = fixture(&format!("faults_{point}"));
        let out = run(
            &fx,
            &m,
            point,
            &["convert", "-O", "panicky", "src.raw", "out.panicky"],
        );
        assert_fault(&out, point, true);
        assert!(
            !fx.path("out.panicky").exists(),
            "{point}: target left behind"
        );
    }
}

#[test]
fn a_panic_poisons_the_image() {
    // After its first write panicked, the image refuses everything, closing
    // included: `convert -n` into an existing file fails and says why once.
    let (fx, m) = fixture("faults_poison");
    fx.oracle(&["create", "-q", "-f", "raw", "out.panicky", "4M"]);
    let out = run(
        &fx,
        &m,
        "write",
        &[
            "convert",
            "-n",
            "-m",
            "1",
            "-O",
            "panicky",
            "src.raw",
            "out.panicky",
        ],
    );
    assert_fault(&out, "write", true);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    // Nothing was written: the panicking write never reached the file.
    let cmp = fx.qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        "src.raw",
        "out.panicky",
    ]);
    assert_eq!(cmp.status, 1, "{cmp:?}");
}
