//! Drivers built against old driver ABIs still load and work in today's host.
//!
//! `tests/compat/flat` is a small out-of-tree "vendor" driver (the flat
//! format: a 512-byte header, then the guest data one to one). It is built
//! against frozen copies of `qimg-driver-api` as released with ABI 1.0, 1.1,
//! 1.2, 1.3, 1.4, 1.5, 1.6 and 1.7 (`tests/compat/driver-api-1.x`), each by its own one-crate
//! workspace (`tests/compat/flat-1.x`) into `target/compat`. Every test then
//! drives the real qimg through create, convert, info, compare and resize
//! with that library listed in the manifest.

use qimg_tests::{build_dir, cargo_outside, workspace, Fixture, Outcome};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// The ABI versions frozen under `tests/compat`.
const VERSIONS: [&str; 8] = ["1.0", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7"];

/// Guest size of the test images.
const SIZE: usize = 4 << 20;

/// Builds the flat driver for ABI `version` (once per test process) and
/// returns the library's absolute path.
fn compat_library(version: &str) -> PathBuf {
    static BUILT: [OnceLock<Result<PathBuf, String>>; VERSIONS.len()] =
        [const { OnceLock::new() }; VERSIONS.len()];
    // One cargo at a time: they share target/compat and its lock anyway.
    static CARGO: Mutex<()> = Mutex::new(());
    let slot = VERSIONS
        .iter()
        .position(|v| *v == version)
        .unwrap_or_else(|| panic!("no frozen driver API {version}"));
    let built = BUILT[slot].get_or_init(|| {
        let _one = CARGO.lock().unwrap_or_else(|e| e.into_inner());
        let root = workspace();
        let manifest = root
            .join("tests/compat")
            .join(format!("flat-{version}"))
            .join("Cargo.toml");
        let target = root.join("target/compat");
        let out = cargo_outside("build", &manifest)?;
        if !out.status.success() {
            return Err(format!(
                "building {} failed:\n{}",
                manifest.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let lib = target.join("debug").join(format!(
            "libqimg_compat_flat_{}.so",
            version.replace('.', "_")
        ));
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

/// Writes a manifest listing today's raw driver and the old flat library.
fn manifest(fx: &Fixture, flat: &std::path::Path) -> String {
    let path = fx.path("plugins.toml");
    std::fs::write(
        &path,
        format!(
            "search_paths = [\"{}\"]\n\
             [[driver]]\nname = \"raw\"\nlibrary = \"libqimg_raw.so\"\n\
             [[driver]]\nname = \"flat\"\nlibrary = \"{}\"\n",
            build_dir().display(),
            flat.display()
        ),
    )
    .expect("write manifest");
    path.display().to_string()
}

/// A raw image of `SIZE` bytes with data at its start, in its middle (a
/// pattern that shows any shift) and at its end, and holes between.
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

/// Runs qimg with the compat manifest and requires exit status 0 and a
/// silent stderr (a library that fails to load is reported there).
fn ok(fx: &Fixture, m: &str, args: &[&str]) -> Outcome {
    let out = fx.qimg_env(args, &[("QIMG_PLUGINS", m)]);
    if out.status != 0 || !out.stderr.is_empty() {
        // stderr names the library that failed to load; stdout only if it is silent.
        let said = if out.stderr.is_empty() {
            &out.stdout
        } else {
            &out.stderr
        };
        panic!("qimg {args:?} exited with {}: {said}", out.status);
    }
    out
}

/// The virtual size and format `info --output=json` reports.
fn json_info(fx: &Fixture, m: &str, file: &str) -> (u64, String) {
    let out = ok(fx, m, &["info", "--output=json", "-f", "flat", file]);
    let info: serde_json::Value = serde_json::from_str(&out.stdout).expect("info JSON");
    assert_eq!(info["filename"], file, "{}", out.stdout);
    (
        info["virtual-size"].as_u64().expect("virtual-size"),
        info["format"].as_str().unwrap_or_default().to_string(),
    )
}

/// The whole round trip for the flat library built against ABI `version`.
fn driver_works(version: &str) {
    let lib = compat_library(version);
    let fx = Fixture::new(&format!("compat_{}", version.replace('.', "_")));
    let m = manifest(&fx, &lib);

    // The old library loads and is listed next to today's raw driver.
    let help = ok(&fx, &m, &["--help"]);
    let formats = help
        .stdout
        .split("Supported image formats:")
        .nth(1)
        .unwrap_or_default();
    assert!(formats.split_whitespace().any(|f| f == "flat"), "{formats}");
    // The listing tells which ABI the library was built for.
    let listed = ok(&fx, &m, &["--list-drivers"]);
    let flat = listed
        .stdout
        .split("driver: ")
        .find(|d| d.starts_with("flat\n"));
    let flat = flat.unwrap_or_else(|| panic!("flat not listed: {}", listed.stdout));
    assert!(flat.contains("    status: loaded\n"), "{flat}");
    // Up to ABI 1.2 the driver-api package version was the workspace's.
    let package = match version {
        "1.0" | "1.1" | "1.2" => "0.1.0".to_string(),
        _ => format!("{version}.0"),
    };
    assert!(
        flat.contains(&format!("    driver-api: {package} (ABI {version})\n")),
        "{flat}"
    );

    // create writes the header and sizes the file.
    let created = ok(&fx, &m, &["create", "-f", "flat", "a.flat", "4M"]);
    assert_eq!(
        created.stdout,
        "Formatting 'a.flat', fmt=flat size=4194304\n"
    );
    let empty = std::fs::read(fx.path("a.flat")).expect("read a.flat");
    assert_eq!(empty.len(), 512 + SIZE);
    assert_eq!(&empty[..8], b"QIMGFLAT");
    assert_eq!(&empty[8..12], &1u32.to_le_bytes());
    assert_eq!(&empty[12..20], &(SIZE as u64).to_le_bytes());
    assert!(empty[20..].iter().all(|&b| b == 0));

    // convert into the format: the guest data lands 512 bytes in.
    let source = source_image();
    std::fs::write(fx.path("src.raw"), &source).expect("write src.raw");
    ok(&fx, &m, &["convert", "-O", "flat", "src.raw", "out.flat"]);
    let written = std::fs::read(fx.path("out.flat")).expect("read out.flat");
    assert_eq!(&written[..8], b"QIMGFLAT");
    assert!(written[512..] == source[..], "out.flat holds other data");

    // info probes it as flat (the magic beats raw's score).
    let info = ok(&fx, &m, &["info", "out.flat"]);
    assert!(
        info.stdout.contains("\nfile format: flat\n"),
        "{}",
        info.stdout
    );
    assert!(
        info.stdout
            .contains("\nvirtual size: 4 MiB (4194304 bytes)\n"),
        "{}",
        info.stdout
    );
    assert_eq!(
        json_info(&fx, &m, "out.flat"),
        (SIZE as u64, "flat".to_string())
    );

    // compare reads it back through the driver.
    let same = ok(
        &fx,
        &m,
        &["compare", "-f", "raw", "-F", "flat", "src.raw", "out.flat"],
    );
    assert_eq!(same.stdout, "Images are identical.\n");

    // convert out of the format gives the source back byte for byte.
    ok(
        &fx,
        &m,
        &["convert", "-f", "flat", "-O", "raw", "out.flat", "back.raw"],
    );
    let back = std::fs::read(fx.path("back.raw")).expect("read back.raw");
    assert!(back == source, "back.raw differs from src.raw");

    // resize rewrites the header; the data stays and the new part reads as zeros.
    let resized = ok(&fx, &m, &["resize", "-f", "flat", "out.flat", "8M"]);
    assert_eq!(resized.stdout, "Image resized.\n");
    let grown = std::fs::read(fx.path("out.flat")).expect("read out.flat");
    assert_eq!(grown.len(), 512 + 2 * SIZE);
    assert_eq!(&grown[12..20], &(2 * SIZE as u64).to_le_bytes());
    assert_eq!(
        json_info(&fx, &m, "out.flat"),
        (2 * SIZE as u64, "flat".to_string())
    );
    ok(
        &fx,
        &m,
        &["convert", "-f", "flat", "-O", "raw", "out.flat", "big.raw"],
    );
    let big = std::fs::read(fx.path("big.raw")).expect("read big.raw");
    assert_eq!(big.len(), 2 * SIZE);
    assert!(big[..SIZE] == source[..], "resize lost data");
    assert!(
        big[SIZE..].iter().all(|&b| b == 0),
        "grown part is not zero"
    );
}

#[test]
fn abi_1_0_driver_works_in_todays_host() {
    driver_works("1.0");
}

#[test]
fn abi_1_1_driver_works_in_todays_host() {
    driver_works("1.1");
}

#[test]
fn abi_1_2_driver_works_in_todays_host() {
    driver_works("1.2");
}

#[test]
fn abi_1_3_driver_works_in_todays_host() {
    driver_works("1.3");
}

#[test]
fn abi_1_4_driver_works_in_todays_host() {
    driver_works("1.4");
}

#[test]
fn abi_1_5_driver_works_in_todays_host() {
    driver_works("1.5");
}

#[test]
fn abi_1_6_driver_works_in_todays_host() {
    driver_works("1.6");
}

#[test]
fn abi_1_7_driver_works_in_todays_host() {
    driver_works("1.7");
}

/// A driver built with `panic = "abort"` could not turn its panics into
/// errors: `export_drivers!` refuses to compile it, with a message that
/// says what to change.
#[test]
fn panic_abort_driver_is_refused_at_build_time() {
    let manifest = workspace().join("tests/compat/abort-driver/Cargo.toml");
    let out = cargo_outside("check", &manifest).expect("run cargo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it compiled:\n{stderr}");
    assert!(
        stderr.contains("error: qimg drivers must be built with panic = \"unwind\""),
        "{stderr}"
    );
}
