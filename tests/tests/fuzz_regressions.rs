//! Inputs the fuzzers (fuzz/, scripts/fuzz.sh) found, kept as regression
//! tests: every file in tests/fuzz-regressions/TARGET/ goes through the real
//! qimg binary — `info`, `check`, `map`, `convert -O raw`, then `resize +1M`
//! and a small `convert -n` write, each into a copy — and each command must
//! finish within [`LIMIT`], exit rather than die of a signal, and print no
//! panic (a driver panic is reported as "internal error in driver").
//! Whether a command succeeds is not checked: most of these images are
//! damaged and refusing them is right; but an image that opened before a
//! resize that succeeded must open after it, and what was written to an
//! image `check` finds clean must read back.
//!
//! Damaged images made here (a qcow2 cut short and one whose header claims
//! a huge L1 table) are held to the same rules, and must in addition be
//! refused with a clear error and a non-zero exit, so this test checks
//! something even while the regression set is empty.

use qimg_tests::{qimg_bin, workspace, Fixture};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one command may run.
const LIMIT: Duration = Duration::from_secs(20);

/// What stderr must not contain: the texts of a panic, caught or not.
const PANIC_SIGNS: &[&str] = &["panicked", "driver fault", "internal error in driver"];

/// The format the inputs of a fuzz target are images of.
fn format_of(target: &str) -> Option<&'static str> {
    match target {
        "qcow2" => Some("qcow2"),
        "vmdk" | "descriptors" => Some("vmdk"),
        "raw" => Some("raw"),
        "vdi" => Some("vdi"),
        "qed" => Some("qed"),
        "parallels" => Some("parallels"),
        "luks" => Some("luks"),
        "vpc" => Some("vpc"),
        "vhdx" => Some("vhdx"),
        // Vendor drivers: the inputs run with the vendor drop-in.
        "qcow" => Some("qcow"),
        "dmg" => Some("dmg"),
        _ => None,
    }
}

/// How one command ended.
struct Ended {
    /// Exit code, or `None` if killed by a signal or timed out.
    code: Option<i32>,
    /// The signal that ended it, if one did.
    signal: Option<i32>,
    /// Whether it was killed for running past [`LIMIT`].
    timed_out: bool,
    stderr: String,
    stdout: String,
}

/// Runs qimg (as `qemu-img`, like the other tests) with `args` in the
/// fixture, killing it after [`LIMIT`].
fn run(fx: &Fixture, args: &[&str]) -> Ended {
    let bin = fx.path("qimg-bin");
    let exe = bin.join("qemu-img");
    if !exe.exists() {
        std::fs::create_dir_all(&bin).expect("create bin dir");
        std::os::unix::fs::symlink(qimg_bin(), &exe).expect("symlink qimg");
    }
    // Output goes to files: a pipe nobody reads could fill and stall it.
    let err_path = fx.path("stderr.txt");
    let err_file = std::fs::File::create(&err_path).expect("create stderr file");
    let out_path = fx.path("stdout.txt");
    let out_file = std::fs::File::create(&out_path).expect("create stdout file");
    let mut child = Command::new(&exe)
        .args(args)
        .current_dir(&fx.dir)
        .stdin(Stdio::null())
        .stdout(out_file)
        .stderr(err_file)
        .env("HOME", &fx.dir)
        .env_remove("XDG_CONFIG_HOME")
        .env("QIMG_PLUGINS", fx.plugins())
        .env("LC_ALL", "C")
        .spawn()
        .expect("spawn qimg");
    let start = Instant::now();
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("wait for qimg") {
            break (status, false);
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            break (child.wait().expect("reap qimg"), true);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ended {
        code: if timed_out { None } else { status.code() },
        signal: if timed_out { None } else { status.signal() },
        timed_out,
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
    }
}

/// What is wrong with how a command (`what`) ended: a hang, a signal, a
/// panic.
fn misbehaviour(what: &str, e: &Ended) -> Vec<String> {
    let mut problems = Vec::new();
    if e.timed_out {
        problems.push(format!("{what}: still running after {LIMIT:?}"));
    } else if let Some(signal) = e.signal {
        problems.push(format!("{what}: killed by signal {signal}: {}", e.stderr));
    }
    if let Some(sign) = PANIC_SIGNS.iter().find(|s| e.stderr.contains(*s)) {
        problems.push(format!(
            "{what}: stderr shows a panic ({sign:?}): {}",
            e.stderr
        ));
    }
    problems
}

/// The commands every input goes through, on `file` of `format`.
fn commands<'a>(format: &'a str, file: &'a str) -> [Vec<&'a str>; 4] {
    [
        vec!["info", "-f", format, file],
        vec!["check", "-f", format, file],
        vec!["map", "-f", format, file],
        vec!["convert", "-f", format, "-O", "raw", file, "out.raw"],
    ]
}

/// Runs every command on `file` (in the fixture); returns what went wrong,
/// one line each, and how each command ended.
fn survive(fx: &Fixture, format: &str, file: &str, label: &str) -> (Vec<String>, Vec<Ended>) {
    let mut problems = Vec::new();
    let mut ended = Vec::new();
    for args in commands(format, file) {
        let e = run(fx, &args);
        let _ = std::fs::remove_file(fx.path("out.raw"));
        let what = format!("{label}: qimg {}", args.join(" "));
        problems.extend(misbehaviour(&what, &e));
        ended.push(e);
    }
    (problems, ended)
}

/// Grows a copy of `file` by 1 MiB (the vmdk descriptor rewrites): no
/// panic or hang, and if `info` read the image before (`info_before`) and
/// the resize succeeded, `info` must read it after.
fn resize_keeps_it_readable(
    fx: &Fixture,
    format: &str,
    file: &str,
    label: &str,
    info_before: &Ended,
) -> Vec<String> {
    let copy = format!("resized.{format}");
    std::fs::copy(fx.path(file), fx.path(&copy)).expect("copy input");
    let mut problems = Vec::new();
    let resize = ["resize", "-f", format, copy.as_str(), "+1M"];
    let e = run(fx, &resize);
    let what = format!("{label}: qimg {}", resize.join(" "));
    problems.extend(misbehaviour(&what, &e));
    if info_before.code == Some(0) && e.code == Some(0) {
        let after = run(fx, &["info", "-f", format, copy.as_str()]);
        if after.code != Some(0) {
            problems.push(format!(
                "{what} succeeded, but the image no longer opens: {}",
                after.stderr
            ));
        }
    }
    let _ = std::fs::remove_file(fx.path(&copy));
    problems
}

/// Images larger than this are not written to.
const MAX_WRITTEN_SIZE: u64 = 64 << 20;

/// Writes a pattern (4 KiB of 0x5a at the start, 4 KiB of 0xc3 in the
/// middle, zeros elsewhere) into a copy of `file` with `convert -n`, as the
/// fuzz harness's write pass writes: if `check` found the image clean
/// (`check_before`) and the copy succeeded, the copy must compare equal to
/// the pattern.
fn writes_read_back(
    fx: &Fixture,
    format: &str,
    file: &str,
    label: &str,
    check_before: &Ended,
) -> Vec<String> {
    if check_before.code != Some(0) {
        return Vec::new();
    }
    let info = run(fx, &["info", "--output=json", "-f", format, file]);
    let size = serde_json::from_str::<serde_json::Value>(&info.stdout)
        .ok()
        .and_then(|v| v["virtual-size"].as_u64());
    let Some(size) = size.filter(|&s| s > 0 && s <= MAX_WRITTEN_SIZE) else {
        return Vec::new();
    };
    let mut pattern = vec![0u8; size as usize];
    let head = pattern.len().min(4096);
    pattern[..head].fill(0x5a);
    let mid = (size / 2 / 512 * 512) as usize;
    let tail = (mid + 4096).min(pattern.len());
    pattern[mid..tail].fill(0xc3);
    std::fs::write(fx.path("pattern.raw"), &pattern).expect("write pattern");
    let copy = format!("written.{format}");
    std::fs::copy(fx.path(file), fx.path(&copy)).expect("copy input");
    let mut problems = Vec::new();
    let convert = [
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        format,
        "pattern.raw",
        &copy,
    ];
    let e = run(fx, &convert);
    let what = format!("{label}: qimg {}", convert.join(" "));
    problems.extend(misbehaviour(&what, &e));
    if e.code == Some(0) {
        let compare = ["compare", "-f", "raw", "-F", format, "pattern.raw", &copy];
        let c = run(fx, &compare);
        problems.extend(misbehaviour(&format!("{label}: qimg compare"), &c));
        if c.code != Some(0) {
            problems.push(format!(
                "{what} succeeded on an image `check` finds clean, but the copy \
                 does not read back what was written: {}{}",
                c.stdout, c.stderr
            ));
        }
    }
    let _ = std::fs::remove_file(fx.path(&copy));
    let _ = std::fs::remove_file(fx.path("pattern.raw"));
    problems
}

/// The regression inputs: (target, file), sorted.
fn regression_inputs() -> Vec<(String, PathBuf)> {
    let root = workspace().join("tests/fuzz-regressions");
    let mut inputs = Vec::new();
    let Ok(targets) = std::fs::read_dir(&root) else {
        return inputs;
    };
    for target in targets.flatten().filter(|t| t.path().is_dir()) {
        let name = target.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(target.path())
            .expect("read dir")
            .flatten()
        {
            if file.path().is_file() {
                inputs.push((name.clone(), file.path()));
            }
        }
    }
    inputs.sort();
    inputs
}

#[test]
fn fuzz_regression_inputs_neither_panic_nor_hang() {
    let fx = qimg_tests::vendor::fixture("fuzz_regressions");
    let mut problems = Vec::new();
    let inputs = regression_inputs();
    for (target, path) in &inputs {
        let Some(format) = format_of(target) else {
            problems.push(format!(
                "{}: no fuzz target '{target}' (see scripts/fuzz.sh)",
                path.display()
            ));
            continue;
        };
        // A copy, named for its format, in the fixture: check and convert
        // must not be able to touch the kept input.
        let file = format!("input.{format}");
        std::fs::copy(path, fx.path(&file)).expect("copy input");
        let label = path
            .strip_prefix(workspace())
            .unwrap_or(path)
            .display()
            .to_string();
        let (found, ended) = survive(&fx, format, &file, &label);
        problems.extend(found);
        problems.extend(resize_keeps_it_readable(
            &fx, format, &file, &label, &ended[0],
        ));
        problems.extend(writes_read_back(&fx, format, &file, &label, &ended[1]));
    }
    assert!(
        problems.is_empty(),
        "{} problems with the {} regression inputs:\n{}",
        problems.len(),
        inputs.len(),
        problems.join("\n")
    );
}

/// A damaged image must be refused by every command with an error that
/// names it, and a non-zero exit.
fn refused_clearly(fx: &Fixture, file: &str) {
    let (mut problems, ended) = survive(fx, "qcow2", file, file);
    for (args, e) in commands("qcow2", file).iter().zip(&ended) {
        if e.code == Some(0) || e.code.is_none() {
            problems.push(format!(
                "qimg {}: want a non-zero exit, got {:?}",
                args.join(" "),
                e.code
            ));
        }
        let want = format!("Could not open '{file}': ");
        if !e.stderr.contains(&want) {
            problems.push(format!(
                "qimg {}: want {want:?} in stderr, got {:?}",
                args.join(" "),
                e.stderr
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A 1 MiB qcow2 with data in its first cluster, made by qemu-img.
fn qcow2_with_data(fx: &Fixture, name: &str) {
    fx.make_qcow2(name, "", "1M");
    fx.qemu_io_cmds("qcow2", name, &["write -P 1 0 64k"]);
}

#[test]
fn a_qcow2_cut_inside_its_header_is_refused() {
    let fx = Fixture::new("fuzz_truncated_qcow2");
    qcow2_with_data(&fx, "whole.qcow2");
    let bytes = std::fs::read(fx.path("whole.qcow2")).expect("read");
    std::fs::write(fx.path("cut.qcow2"), &bytes[..100]).expect("write");
    refused_clearly(&fx, "cut.qcow2");
}

#[test]
fn a_qcow2_cut_before_its_tables_fails_its_check() {
    let fx = Fixture::new("fuzz_short_qcow2");
    qcow2_with_data(&fx, "whole.qcow2");
    let bytes = std::fs::read(fx.path("whole.qcow2")).expect("read");
    std::fs::write(fx.path("short.qcow2"), &bytes[..1000]).expect("write");
    let (problems, ended) = survive(&fx, "qcow2", "short.qcow2", "short.qcow2");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Its tables lie past the end of the file: `check` finds errors (qemu-img
    // exits 2 here), whatever the other commands make of it.
    let check = &ended[1];
    assert!(
        matches!(check.code, Some(code) if code != 0) && check.stderr.contains("ERROR"),
        "check of a qcow2 cut before its tables: exit {:?}, stderr {:?}",
        check.code,
        check.stderr
    );
}

#[test]
fn a_qcow2_claiming_a_huge_l1_table_is_refused() {
    let fx = Fixture::new("fuzz_huge_l1");
    qcow2_with_data(&fx, "whole.qcow2");
    // l1_size, a big-endian u32 at byte 36 of the header: 4 Gi entries.
    fx.patched_copy("whole.qcow2", "huge-l1.qcow2", &[(36, [0xffu8; 4])]);
    refused_clearly(&fx, "huge-l1.qcow2");
}

/// The regression directory holds only fuzz-target directories and a README.
#[test]
fn regression_directory_is_laid_out_by_target() {
    let root = workspace().join("tests/fuzz-regressions");
    assert!(
        root.join("README.md").is_file(),
        "{} has no README.md",
        root.display()
    );
    for entry in std::fs::read_dir(&root).expect("read dir").flatten() {
        let path: &Path = &entry.path();
        if path.is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                format_of(&name).is_some(),
                "{}: not a fuzz target's name",
                path.display()
            );
        }
    }
}
