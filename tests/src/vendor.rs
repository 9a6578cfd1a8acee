//! The vendor drivers (`vendor/`: dmg, bochs, cloop) for the integration
//! tests. They are built as a vendor builds them, outside qimg's workspace
//! (`vendor/Cargo.toml`, `--locked`, into `target/compat` beside the
//! driver template), and enabled as a vendor enables them: by their own
//! drop-in manifest, `vendor/plugins.d/vendor.toml`, copied beside a
//! manifest that lists qimg's own drivers.

use crate::{cargo_outside, workspace, Fixture};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The vendor drivers' build directory: target/compat/debug.
pub fn library_dir() -> PathBuf {
    workspace().join("target/compat/debug")
}

/// Builds the vendor workspace once per test process (a no-op when
/// scripts/test.sh built it already); panics with cargo's output if the
/// build fails.
pub fn build() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = cargo_outside("build", &workspace().join("vendor/Cargo.toml"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = built {
        panic!("building vendor/ failed:\n{e}");
    }
}

/// The vendor drop-in as shipped, with its search path pointed at the
/// build directory instead of an installation's lib/qimg.
pub fn drop_in() -> String {
    let shipped = std::fs::read_to_string(workspace().join("vendor/plugins.d/vendor.toml"))
        .expect("read vendor/plugins.d/vendor.toml");
    let installed = "search_paths = [\"${exe_dir}/../lib/qimg\"]";
    assert!(
        shipped.contains(installed),
        "vendor/plugins.d/vendor.toml no longer says {installed}"
    );
    shipped.replace(
        installed,
        &format!("search_paths = [\"{}\"]", library_dir().display()),
    )
}

/// A fixture whose qimg reads `etc/plugins.toml` (qimg's own manifest,
/// copied) with the vendor drop-in in `etc/plugins.d/vendor.toml`.
pub fn fixture(name: &str) -> Fixture {
    build();
    let mut fx = Fixture::new(name);
    let etc = fx.path("etc");
    std::fs::create_dir_all(etc.join("plugins.d")).expect("create etc/plugins.d");
    std::fs::copy(workspace().join("plugins.toml"), etc.join("plugins.toml"))
        .expect("copy plugins.toml");
    std::fs::write(etc.join("plugins.d/vendor.toml"), drop_in()).expect("write the drop-in");
    fx.use_plugins(&etc.join("plugins.toml"));
    fx
}

/// Unpacks the bzip2'd sample `name` from `../shared/sample-images` into
/// the fixture; false (with a note) where the samples are absent.
pub fn sample(fx: &Fixture, name: &str) -> bool {
    let bz = workspace().join(format!("../shared/sample-images/{name}.bz2"));
    if !bz.is_file() {
        eprintln!("no {}: sample not checked", bz.display());
        return false;
    }
    fx.sh(&format!("bzcat '{}' > '{name}'", bz.display()));
    true
}

/// qimg reads `image` (of the read-only vendor format `format`) as
/// qemu-img reads it: `info`, `map` and `measure` (human and JSON), `convert
/// -O raw` and `compare`; and a qcow2 qimg converts from it passes
/// qemu-img's check and compare.
pub fn reads_as_qemu_img(fx: &Fixture, format: &str, image: &str) {
    for output in ["human", "json"] {
        let out = format!("--output={output}");
        fx.same(&["info", &out, image]);
        fx.same(&["map", &out, image]);
        fx.same(&["measure", &out, "-O", "qcow2", image]);
    }
    fx.same(&["info", "-f", format, image]);
    fx.same_effect(&["convert", "-O", "raw", image, "{}"], "copy.raw");
    fx.oracle(&["convert", "-O", "raw", image, "oracle.raw"]);
    fx.same(&["compare", image, "oracle.raw"]);
    fx.same(&["compare", "-s", image, "oracle.raw"]);
    let out = fx.qimg(&["convert", "-O", "qcow2", image, "copy.qcow2"]);
    assert_eq!(out.status, 0, "{out:?}");
    fx.oracle(&["check", "copy.qcow2"]);
    fx.oracle(&["compare", image, "copy.qcow2"]);
}

/// qimg's `convert -O raw` of a damaged `image` (run under the address-space
/// limit) ends with qemu-img's exit status, and where both succeed the two
/// copies are equal; `label` names the case in a failure.
pub fn converts_as_qemu_img(fx: &Fixture, image: &str, label: &str) {
    let ours = fx.qimg_bounded(&["convert", "-O", "raw", image, "ours.raw"]);
    let theirs = fx.qemu_img(&["convert", "-O", "raw", image, "theirs.raw"]);
    assert_eq!(ours.status, theirs.status, "{label}: {ours:?} {theirs:?}");
    if theirs.status == 0 {
        fx.same(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            "ours.raw",
            "theirs.raw",
        ]);
    }
}
