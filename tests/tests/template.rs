//! The driver template and the conformance check.
//!
//! `templates/driver` is what a vendor copies: it is copied here to a
//! directory outside the workspace, built there against driver-api alone
//! (`--locked`, with its own Cargo.lock) into `target/compat`, installed
//! through a drop-in manifest (`plugins.d/example.toml`) and then driven
//! through the real qimg: listed, conformance-checked, created, converted
//! and compared. The in-tree drivers must pass `--conformance` too, and a
//! driver that panics must fail it.

use qimg_tests::{build_dir, cargo_outside, workspace, Fixture, Outcome};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What the template's Cargo.toml says of driver-api (relative to the
/// template inside the repository).
const API_DEPENDENCY: &str = "path = \"../../driver-api\"";

/// Guest size of the round-trip images.
const SIZE: usize = 4 << 20;

/// Copies the files of `from` into `to` (recursively, without `target`).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for entry in std::fs::read_dir(from).expect("read template dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        let path = entry.path();
        if path.is_dir() {
            if name != "target" {
                copy_tree(&path, &to.join(&name));
            }
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy template file");
        }
    }
}

/// Copies the template outside the workspace, points it at this
/// repository's driver-api and builds it (once per test process); returns
/// the library's absolute path.
fn template_library() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = workspace();
        let copy = std::env::temp_dir().join(format!(
            "qimg-template-{}/qimg-driver-example",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&copy);
        copy_tree(&root.join("templates/driver"), &copy);
        let manifest = copy.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).expect("read template Cargo.toml");
        if !text.contains(API_DEPENDENCY) {
            return Err(format!(
                "the template's Cargo.toml no longer says {API_DEPENDENCY}"
            ));
        }
        let api = root.join("driver-api");
        let text = text.replace(API_DEPENDENCY, &format!("path = \"{}\"", api.display()));
        std::fs::write(&manifest, text).expect("write copied Cargo.toml");
        let target = root.join("target/compat");
        let out = cargo_outside("build", &manifest);
        let _ = std::fs::remove_dir_all(copy.parent().unwrap_or(&copy));
        let out = out?;
        if !out.status.success() {
            return Err(format!(
                "building the template copied to {} failed:\n{}",
                copy.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let lib = target.join("debug/libqimg_example.so");
        if lib.is_file() {
            Ok(lib)
        } else {
            Err(format!("{} was not built", lib.display()))
        }
    });
    match built {
        Ok(lib) => lib.clone(),
        Err(why) => panic!("{why}"),
    }
}

/// Writes the operator's manifest (raw only) and a drop-in beside it that
/// adds the example driver; returns the manifest's path.
fn manifest_with_drop_in(fx: &Fixture, library: &Path) -> String {
    let manifest = fx.path("etc/plugins.toml");
    std::fs::create_dir_all(fx.path("etc/plugins.d")).expect("create plugins.d");
    std::fs::write(
        &manifest,
        format!(
            "search_paths = [\"{}\"]\n[[driver]]\nname = \"raw\"\nlibrary = \"libqimg_raw.so\"\n",
            build_dir().display()
        ),
    )
    .expect("write manifest");
    std::fs::write(
        fx.path("etc/plugins.d/example.toml"),
        format!(
            "# the vendor's drop-in\n[[driver]]\nname = \"example\"\nlibrary = \"{}\"\nenabled = true\n",
            library.display()
        ),
    )
    .expect("write drop-in");
    manifest.display().to_string()
}

/// Runs qimg with `--plugins manifest` and `line` (split at spaces) and
/// requires exit status 0.
fn ok(fx: &Fixture, manifest: &str, line: &str) -> Outcome {
    let mut all = vec!["--plugins", manifest];
    all.extend(line.split_whitespace());
    let out = fx.qimg(&all);
    assert_eq!(out.status, 0, "qimg {all:?}: {out:?}");
    out
}

/// Checks a conformance report that must be clean: every check line `ok`,
/// the summary `N passed, 0 failed` with N the plan, and the scratch
/// directory gone. Returns N.
fn assert_clean_report(out: &Outcome, what: &str) -> usize {
    assert_eq!(
        out.status, 0,
        "conformance of {what} failed:\n{}",
        out.stdout
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        !lines.iter().any(|l| l.starts_with("not ok")),
        "{what}:\n{}",
        out.stdout
    );
    let checks = lines.iter().filter(|l| l.starts_with("ok ")).count();
    assert!(
        checks >= 20,
        "{what}: only {checks} checks:\n{}",
        out.stdout
    );
    assert_eq!(lines.iter().rev().nth(1), Some(&&*format!("1..{checks}")));
    assert_eq!(
        lines.last(),
        Some(&&*format!("{checks} passed, 0 failed")),
        "{what}:\n{}",
        out.stdout
    );
    let scratch = lines
        .iter()
        .find_map(|l| l.strip_prefix("# scratch directory: "))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("{what}: no scratch directory line:\n{}", out.stdout));
    assert!(
        !Path::new(scratch).exists(),
        "{what}: {scratch} was left behind"
    );
    checks
}

/// A raw image of [`SIZE`] bytes with data at its start, in its middle and
/// at its end, and holes between.
fn source_image() -> Vec<u8> {
    let mut image = vec![0u8; SIZE];
    image[..512].fill(0x11);
    for (i, b) in image[1 << 20..(1 << 20) + (64 << 10)]
        .iter_mut()
        .enumerate()
    {
        *b = (i % 251) as u8 + 1;
    }
    image[SIZE - 4096..].fill(0x22);
    image
}

#[test]
fn template_builds_outside_the_workspace_and_passes() {
    let lib = template_library();
    let fx = Fixture::new("template");
    let m = manifest_with_drop_in(&fx, &lib);

    // Listed, loaded, and attributed to the drop-in.
    let listed = ok(&fx, &m, "--list-drivers=json");
    let drivers: serde_json::Value =
        serde_json::from_str(&listed.stdout).expect("--list-drivers=json");
    let example = drivers
        .as_array()
        .and_then(|list| list.iter().find(|d| d["name"] == "example"))
        .unwrap_or_else(|| panic!("example is not listed:\n{}", listed.stdout));
    assert_eq!(example["status"], "loaded", "{example}");
    assert_eq!(example["library"], lib.display().to_string(), "{example}");
    assert!(
        example["listed-in"]
            .as_str()
            .is_some_and(|s| s.ends_with("plugins.d/example.toml")),
        "{example}"
    );
    assert_eq!(
        example["package"], "qimg-driver-template 0.1.0",
        "{example}"
    );
    assert_eq!(
        example["abi"],
        qimg_tests::current_abi().as_str(),
        "{example}"
    );
    let text = ok(&fx, &m, "--list-drivers");
    assert!(text.stdout.contains("driver: example\n"), "{}", text.stdout);

    // The conformance check passes.
    let report = fx.qimg(&["--plugins", &m, "--conformance", "example"]);
    assert_clean_report(&report, "example");

    // create, then fill it with convert -n, read it back with convert and compare.
    let created = ok(&fx, &m, "create -f example a.example 4M");
    assert_eq!(
        created.stdout,
        "Formatting 'a.example', fmt=example size=4194304\n"
    );
    let fresh = std::fs::read(fx.path("a.example")).expect("read a.example");
    assert_eq!(&fresh[..8], b"QIMGEXMP");
    assert_eq!(fresh.len(), 4096 + SIZE);
    let source = source_image();
    std::fs::write(fx.path("src.raw"), &source).expect("write src.raw");
    ok(&fx, &m, "convert -n -f raw -O example src.raw a.example");
    let written = std::fs::read(fx.path("a.example")).expect("read a.example");
    assert!(written[4096..] == source[..], "a.example holds other data");
    let info = ok(&fx, &m, "info a.example");
    assert!(
        info.stdout.contains("\nfile format: example\n"),
        "{}",
        info.stdout
    );
    ok(&fx, &m, "convert -f example -O raw a.example back.raw");
    let back = std::fs::read(fx.path("back.raw")).expect("read back.raw");
    assert!(back == source, "back.raw differs from src.raw");
    let same = ok(&fx, &m, "compare -f raw -F example src.raw a.example");
    assert_eq!(same.stdout, "Images are identical.\n");
    let same = ok(&fx, &m, "compare src.raw back.raw");
    assert_eq!(same.stdout, "Images are identical.\n");
}

#[test]
fn in_tree_drivers_pass_conformance() {
    let fx = Fixture::new("conformance_in_tree");
    for format in [
        "raw",
        "qcow2",
        "vmdk",
        "vdi",
        "vpc",
        "qed",
        "parallels",
        "vhdx",
    ] {
        let out = fx.qimg(&["--conformance", format]);
        assert!(
            out.stdout
                .contains(&format!("ok 1 - driver '{format}' is found\n")),
            "{}",
            out.stdout
        );
        assert_clean_report(&out, format);
    }
}

#[test]
fn conformance_fails_a_panicking_driver() {
    let fx = Fixture::new("conformance_panicky");
    let m = fx.path("plugins.toml");
    std::fs::write(
        &m,
        format!(
            "search_paths = [\"{}\"]\n[[driver]]\nname = \"raw\"\nlibrary = \"libqimg_raw.so\"\n\
             [[driver]]\nname = \"panicky\"\nlibrary = \"libtestdrv_panicky.so\"\n",
            build_dir().display()
        ),
    )
    .expect("write manifest");
    let m = m.display().to_string();
    // The fixture driver panics where TESTDRV_PANIC says: on every read.
    let out = fx.qimg_env(
        &["--plugins", &m, "--conformance", "panicky"],
        &[("TESTDRV_PANIC", "read")],
    );
    assert_eq!(out.status, 1, "{out:?}");
    let failed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("not ok "))
        .collect();
    assert!(!failed.is_empty(), "{}", out.stdout);
    assert!(
        failed
            .iter()
            .all(|l| l.contains("internal error in driver 'panicky': read panicked")),
        "{}",
        out.stdout
    );
    let summary = out.stdout.lines().last().unwrap_or_default();
    assert_eq!(
        summary,
        format!(
            "{} passed, {} failed",
            out.stdout.lines().filter(|l| l.starts_with("ok ")).count(),
            failed.len()
        )
    );
    assert!(!out.stderr.contains("thread '"), "{}", out.stderr);

    // A format no manifest lists fails at once.
    let unknown = fx.qimg(&["--plugins", &m, "--conformance", "nosuch"]);
    assert_eq!(unknown.status, 1, "{unknown:?}");
    assert_eq!(
        unknown.stdout,
        "not ok 1 - driver 'nosuch' is found: Unknown driver 'nosuch'\n1..1\n0 passed, 1 failed\n"
    );
}
