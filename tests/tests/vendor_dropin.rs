//! The vendor drivers (`vendor/`: dmg, bochs, cloop) come and go with
//! their drop-in manifest alone: listed from it by `--list-drivers`; with
//! the drop-in removed, or one driver disabled in the operator's manifest,
//! their images are refused by name while qimg's own formats work as
//! before.

use qimg_tests::vendor::{fixture, sample};
use qimg_tests::Fixture;

/// The samples, one per vendor format: (file, format).
const SAMPLES: [(&str, &str); 3] = [
    ("empty.bochs", "bochs"),
    ("simple-pattern.cloop", "cloop"),
    ("simple-dmg.dmg", "dmg"),
];

/// Unpacks the samples; false if they are absent.
fn samples(fx: &Fixture) -> bool {
    SAMPLES.iter().all(|(name, _)| sample(fx, name))
}

/// qimg's own formats read as qemu-img reads them.
fn own_formats_work(fx: &Fixture) {
    fx.make_qcow2("a.qcow2", "", "1M");
    fx.qemu_io_cmds("qcow2", "a.qcow2", &["write -P 7 0 64k"]);
    fx.same(&["info", "a.qcow2"]);
    fx.same(&["map", "--output=json", "a.qcow2"]);
    fx.same(&["convert", "-O", "vdi", "a.qcow2", "a.vdi"]);
    fx.same(&["compare", "a.qcow2", "a.vdi"]);
}

#[test]
fn the_drop_in_lists_and_loads_the_vendor_drivers() {
    let fx = fixture("vendor_listed");
    let listed = fx.qimg(&["--list-drivers"]);
    assert_eq!(listed.status, 0, "{listed:?}");
    let drop_in = fx.path("etc/plugins.d/vendor.toml");
    for (_, format) in SAMPLES {
        let entry = listed
            .stdout
            .split("driver: ")
            .find(|e| e.starts_with(&format!("{format}\n")))
            .unwrap_or_else(|| panic!("{format} not listed: {}", listed.stdout));
        assert!(
            entry.contains(&format!("listed in: {}\n", drop_in.display())),
            "{entry}"
        );
        assert!(entry.contains("status: loaded\n"), "{entry}");
    }
    // The kit's own check, as its README asks of a vendor before a release.
    for (_, format) in SAMPLES {
        let out = fx.qimg(&["--conformance", format]);
        assert_eq!(out.status, 0, "{out:?}");
        assert!(out.stdout.ends_with(" 0 failed\n"), "{out:?}");
    }
    let help = fx.qimg(&["--help"]).stdout;
    for (_, format) in SAMPLES {
        assert!(help.contains(&format!(" {format} ")), "{help}");
    }
    if samples(&fx) {
        for (name, format) in SAMPLES {
            let info = fx.same(&["info", name]);
            assert!(info.stdout.contains(&format!("file format: {format}\n")));
        }
    }
    own_formats_work(&fx);
}

#[test]
fn without_the_drop_in_vendor_images_are_refused_by_name() {
    let fx = fixture("vendor_removed");
    std::fs::remove_file(fx.path("etc/plugins.d/vendor.toml")).expect("remove the drop-in");
    let listed = fx.qimg(&["--list-drivers"]);
    assert_eq!(listed.status, 0, "{listed:?}");
    for (_, format) in SAMPLES {
        assert!(
            !listed.stdout.contains(&format!("driver: {format}\n")),
            "{listed:?}"
        );
    }
    if samples(&fx) {
        for (name, format) in SAMPLES {
            let out = fx.qimg(&["info", name]);
            assert_eq!(out.status, 1, "{out:?}");
            assert_eq!(
                out.stderr,
                format!(
                    "qemu-img: Could not open '{name}': image is in {format} format, for which no driver is installed (use -f raw to read its bytes as raw)\n"
                )
            );
            // Its bytes are still there as raw, when asked for.
            let raw = fx.same(&["info", "-f", "raw", name]);
            assert!(raw.stdout.contains("file format: raw\n"), "{raw:?}");
        }
    }
    // qcow (version 1), which qemu-img makes.
    fx.sh("qemu-img create -q -f qcow old.qcow 1M");
    assert!(!listed.stdout.contains("driver: qcow\n"), "{listed:?}");
    let out = fx.qimg(&["info", "old.qcow"]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("image is in qcow format, for which no driver is installed"),
        "{out:?}"
    );
    own_formats_work(&fx);
}

#[test]
fn the_operators_manifest_disables_one_vendor_driver() {
    let fx = fixture("vendor_disabled");
    let manifest = fx.path("etc/plugins.toml");
    let mut text = std::fs::read_to_string(&manifest).expect("read manifest");
    text.push_str(
        "\n[[driver]]\nname = \"bochs\"\nlibrary = \"libqimg_bochs.so\"\nenabled = false\n",
    );
    std::fs::write(&manifest, text).expect("write manifest");
    if samples(&fx) {
        let out = fx.qimg(&["info", "empty.bochs"]);
        assert_eq!(out.status, 1, "{out:?}");
        assert_eq!(
            out.stderr,
            format!(
                "qemu-img: Could not open 'empty.bochs': image is in bochs format, whose driver is disabled in '{}' (use -f raw to read its bytes as raw)\n",
                manifest.display()
            )
        );
        // The other vendor drivers stay.
        fx.same(&["info", "simple-pattern.cloop"]);
        fx.same(&["info", "simple-dmg.dmg"]);
    }
    own_formats_work(&fx);
}

#[test]
fn install_sh_installs_the_vendor_drivers_with_their_drop_in() {
    let fx = fixture("vendor_install");
    let prefix = fx.path("prefix");
    let out = std::process::Command::new("bash")
        .arg(qimg_tests::workspace().join("scripts/install.sh"))
        .args(["--prefix", &prefix.display().to_string()])
        .args(["--drivers", "raw,qcow2"])
        .args(["--from", &qimg_tests::build_dir().display().to_string()])
        .arg(format!(
            "--vendor={}",
            qimg_tests::vendor::library_dir().display()
        ))
        .output()
        .expect("run install.sh");
    assert!(
        out.status.success(),
        "install.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(prefix.join("etc/qimg/plugins.d/vendor.toml")).unwrap(),
        std::fs::read_to_string(qimg_tests::workspace().join("vendor/plugins.d/vendor.toml"))
            .unwrap()
    );
    let installed = |args: &[&str]| -> qimg_tests::Outcome {
        std::process::Command::new(prefix.join("bin/qimg"))
            .args(args)
            .current_dir(&fx.dir)
            .env_remove("QIMG_PLUGINS")
            .env_remove("XDG_CONFIG_HOME")
            .env("HOME", &fx.dir)
            .env("LC_ALL", "C")
            .output()
            .expect("run installed qimg")
            .into()
    };
    let listed = installed(&["--list-drivers"]);
    assert_eq!(listed.status, 0, "{listed:?}");
    assert_eq!(
        listed.stdout.matches("    status: loaded\n").count(),
        6,
        "{listed:?}"
    );
    if samples(&fx) {
        for (name, format) in SAMPLES {
            let info = installed(&["info", name]);
            assert!(
                info.stdout.contains(&format!("file format: {format}\n")),
                "{info:?}"
            );
        }
    }
}
