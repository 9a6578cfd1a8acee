//! Deployment: `scripts/install.sh` into a clean prefix gives a qimg that
//! finds its drivers with no environment variable; drop-in manifest files
//! add drivers; `--list-drivers` reports what loaded.

use qimg_tests::{build_dir, workspace, Fixture, Outcome};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Installs the debug build into `fx/prefix` with the given drivers.
fn install(fx: &Fixture, drivers: &str) -> PathBuf {
    let prefix = fx.path("prefix");
    let out = Command::new("bash")
        .arg(workspace().join("scripts/install.sh"))
        .args(["--prefix", &prefix.display().to_string()])
        .args(["--drivers", drivers])
        .args(["--from", &build_dir().display().to_string()])
        .output()
        .expect("run install.sh");
    assert!(
        out.status.success(),
        "install.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    prefix
}

/// Runs the installed qimg with no manifest variable and a HOME of its own,
/// so only what the prefix holds can be found.
fn installed(fx: &Fixture, prefix: &Path, args: &[&str]) -> Outcome {
    Command::new(prefix.join("bin/qimg"))
        .args(args)
        .current_dir(&fx.dir)
        .env_remove("QIMG_PLUGINS")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", &fx.dir)
        .env("LC_ALL", "C")
        .output()
        .expect("run installed qimg")
        .into()
}

fn formats(help: &Outcome) -> String {
    help.stdout
        .split("Supported image formats:")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn full_install_finds_every_driver() {
    let fx = Fixture::new("deploy_full");
    let prefix = install(&fx, "raw,qcow2,vmdk");
    let help = installed(&fx, &prefix, &["--help"]);
    assert_eq!(formats(&help), "qcow2 raw vmdk", "{help:?}");
    let listed = installed(&fx, &prefix, &["--list-drivers"]);
    assert_eq!(listed.status, 0, "{listed:?}");
    assert_eq!(
        listed.stdout.matches("    status: loaded\n").count(),
        3,
        "{}",
        listed.stdout
    );
    let lib = prefix.join("lib/qimg/libqimg_raw.so");
    assert!(
        listed
            .stdout
            .contains(&format!("    library: {}\n", lib.display())),
        "{}",
        listed.stdout
    );
    let manifest = prefix.join("etc/qimg/plugins.toml");
    assert!(
        listed
            .stdout
            .contains(&format!("    listed in: {}\n", manifest.display())),
        "{}",
        listed.stdout
    );
    // It works: a qcow2 made by the installed qimg passes the real check.
    let made = installed(
        &fx,
        &prefix,
        &["create", "-q", "-f", "qcow2", "a.qcow2", "8M"],
    );
    assert_eq!(made.status, 0, "{made:?}");
    assert_eq!(fx.oracle(&["check", "a.qcow2"]).status, 0);
}

#[test]
fn raw_and_qcow2_only_deployment() {
    let fx = Fixture::new("deploy_small");
    let prefix = install(&fx, "raw,qcow2");
    let libs: Vec<String> = std::fs::read_dir(prefix.join("lib/qimg"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(libs.len(), 2, "{libs:?}");
    assert_eq!(formats(&installed(&fx, &prefix, &["--help"])), "qcow2 raw");
    fx.oracle(&["create", "-q", "-f", "vmdk", "a.vmdk", "1M"]);
    let out = installed(&fx, &prefix, &["info", "-f", "vmdk", "a.vmdk"]);
    assert_eq!(out.status, 1);
    assert_eq!(
        out.stderr,
        "qimg: Could not open 'a.vmdk': Unknown driver 'vmdk'\n"
    );
    fx.oracle(&["create", "-q", "-f", "qcow2", "b.qcow2", "1M"]);
    let info = installed(&fx, &prefix, &["info", "--output=json", "b.qcow2"]);
    assert_eq!(
        info.stdout,
        fx.oracle(&["info", "--output=json", "b.qcow2"]).stdout
    );
}

/// Writes a drop-in file into the prefix's plugins.d.
fn drop_in(prefix: &Path, file: &str, body: &str) {
    std::fs::write(prefix.join("etc/qimg/plugins.d").join(file), body).unwrap();
}

fn panicky_entry() -> String {
    format!(
        "[[driver]]\nname = \"panicky\"\nlibrary = \"{}\"\n",
        build_dir().join("libtestdrv_panicky.so").display()
    )
}

#[test]
fn a_drop_in_adds_a_driver_without_editing_the_manifest() {
    let fx = Fixture::new("deploy_dropin");
    let prefix = install(&fx, "raw");
    drop_in(&prefix, "vendor.toml", &panicky_entry());
    assert_eq!(
        formats(&installed(&fx, &prefix, &["--help"])),
        "panicky raw"
    );
    let listed = installed(&fx, &prefix, &["--list-drivers=json"]);
    assert_eq!(listed.status, 0, "{listed:?}");
    let list: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let vendor = &list[1];
    assert_eq!(vendor["name"], "panicky");
    assert_eq!(vendor["status"], "loaded");
    assert_eq!(vendor["abi"], qimg_tests::current_abi().as_str());
    assert_eq!(vendor["package"], "testdrv-panicky 0.1.0");
    assert_eq!(
        vendor["listed-in"],
        prefix
            .join("etc/qimg/plugins.d/vendor.toml")
            .display()
            .to_string()
    );
    assert_eq!(
        vendor["capabilities"],
        serde_json::json!(["create", "write", "resize", "zero-init"])
    );
}

#[test]
fn the_operators_manifest_overrides_a_drop_in() {
    let fx = Fixture::new("deploy_override");
    let prefix = install(&fx, "raw");
    drop_in(&prefix, "vendor.toml", &panicky_entry());
    let manifest = prefix.join("etc/qimg/plugins.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(&panicky_entry());
    text.push_str("enabled = false\n");
    std::fs::write(&manifest, text).unwrap();
    assert_eq!(formats(&installed(&fx, &prefix, &["--help"])), "raw");
    let listed = installed(&fx, &prefix, &["--list-drivers"]);
    assert!(
        listed.stdout.contains("driver: panicky\n"),
        "{}",
        listed.stdout
    );
    assert!(
        listed.stdout.contains("    status: disabled\n"),
        "{}",
        listed.stdout
    );
}

#[test]
fn two_drop_ins_naming_one_driver_are_refused() {
    let fx = Fixture::new("deploy_dup");
    let prefix = install(&fx, "raw");
    drop_in(&prefix, "a.toml", &panicky_entry());
    drop_in(&prefix, "b.toml", &panicky_entry());
    let out = installed(&fx, &prefix, &["--help"]);
    assert_eq!(out.status, 1);
    let d = prefix.join("etc/qimg/plugins.d");
    assert_eq!(
        out.stderr,
        format!(
            "qimg: invalid plugin manifest '{}': driver 'panicky' is already listed in '{}'\n",
            d.join("b.toml").display(),
            d.join("a.toml").display()
        )
    );
}

#[test]
fn a_failed_library_makes_the_listing_fail() {
    let fx = Fixture::new("deploy_failed");
    let prefix = install(&fx, "raw");
    drop_in(
        &prefix,
        "broken.toml",
        "[[driver]]\nname = \"broken\"\nlibrary = \"/nonexistent/libbroken.so\"\n",
    );
    let out = installed(&fx, &prefix, &["--list-drivers"]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("driver: broken\n    library: /nonexistent/libbroken.so\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("    status: failed\n    error: No such file or directory\n"),
        "{}",
        out.stdout
    );
}
