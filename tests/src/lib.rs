//! Shared helpers for the integration tests: run the built `qimg` and the real
//! `qemu-img` side by side on the same fixture images and compare what they
//! print, their exit status and the files they leave.
//!
//! qimg is run through a symlink named `qemu-img`, so its messages carry the
//! same program name as the oracle's and can be compared byte for byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod servers;

/// The driver ABI (`major.minor`) the drivers built in this workspace
/// record, as `--list-drivers` prints it.
pub fn current_abi() -> String {
    format!(
        "{}.{}",
        qimg_driver_api::ABI_MAJOR,
        qimg_driver_api::ABI_MINOR
    )
}
pub mod vendor;

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Directory of the built `qimg` and its driver libraries (target/debug).
pub fn build_dir() -> PathBuf {
    // The test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// Path of the built `qimg` binary; fails clearly if the build step was skipped.
pub fn qimg_bin() -> PathBuf {
    let bin = build_dir().join("qimg");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Runs `cargo SUBCOMMAND --locked --quiet` on a crate outside the
/// workspace (the old-ABI drivers, the driver template), into
/// `target/compat` so its dependencies build once; returns cargo's output.
pub fn cargo_outside(subcommand: &str, manifest: &Path) -> Result<Output, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    Command::new(&cargo)
        .args([subcommand, "--locked", "--quiet", "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(workspace().join("target/compat"))
        .output()
        .map_err(|e| format!("cannot run {cargo}: {e}"))
}

/// A scratch directory with fixture images, removed on drop.
pub struct Fixture {
    /// The directory tests run in.
    pub dir: PathBuf,
    /// Directory holding the `qemu-img` symlink to qimg.
    bin: PathBuf,
    /// The manifest qimg reads (`QIMG_PLUGINS`): the workspace's
    /// plugins.toml unless [`Fixture::use_plugins`] names another.
    plugins: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit status.
    pub status: i32,
}

/// Replaces the milliseconds in curl's "after N ms" with `N`: how long a
/// failed connection took is timing, not behaviour.
fn mask_elapsed_ms(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" after ") {
        let (head, tail) = rest.split_at(at + " after ".len());
        out.push_str(head);
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && tail[digits..].starts_with(" ms") {
            out.push('N');
            rest = &tail[digits..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

impl From<Output> for Outcome {
    fn from(o: Output) -> Self {
        Outcome {
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            status: o.status.code().unwrap_or(-1),
        }
    }
}

impl Fixture {
    /// An empty scratch directory named after the test.
    pub fn new(name: &str) -> Fixture {
        let base = std::env::var_os("QIMG_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        // A per-process counter keeps two fixtures that share a name apart.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("qimg-test-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create fixture dir");
        let bin = dir.join(".bin");
        std::fs::create_dir_all(&bin).expect("create bin dir");
        std::os::unix::fs::symlink(qimg_bin(), bin.join("qemu-img")).expect("symlink qimg");
        let plugins = workspace().join("plugins.toml");
        Fixture { dir, bin, plugins }
    }

    /// The manifest qimg reads in this fixture.
    pub fn plugins(&self) -> &Path {
        &self.plugins
    }

    /// Makes qimg read the manifest `manifest` (and the drop-ins beside it)
    /// instead of the workspace's plugins.toml.
    pub fn use_plugins(&mut self, manifest: &Path) {
        self.plugins = manifest.to_path_buf();
    }

    /// A scratch directory with the standard raw images, all made by the oracle:
    /// `mid.raw` (4 MiB, 64 KiB of 0x01 at 1 MiB), `mid2.raw` (a copy),
    /// `diff.raw` (mid with one byte changed at 1049810), `big.raw` (8 MiB,
    /// mid in its first half), `full.raw` (1 MiB of 0xab), `zeros.raw` (1 MiB of
    /// written zeros), `sparse.raw` (4 MiB, nothing written), `empty.raw`
    /// (0 bytes), `odd.raw` (1000 bytes).
    pub fn with_images(name: &str) -> Fixture {
        let fx = Fixture::new(name);
        fx.oracle(&["create", "-q", "-f", "raw", "mid.raw", "4M"]);
        fx.qemu_io("mid.raw", "write -P 1 1M 64k");
        std::fs::copy(fx.path("mid.raw"), fx.path("mid2.raw")).expect("copy");
        fx.sh("cp --sparse=always mid.raw diff.raw && printf X | dd of=diff.raw bs=1 seek=1049810 conv=notrunc status=none");
        fx.oracle(&["create", "-q", "-f", "raw", "big.raw", "8M"]);
        fx.qemu_io("big.raw", "write -P 1 1M 64k");
        fx.oracle(&["create", "-q", "-f", "raw", "full.raw", "1M"]);
        fx.qemu_io("full.raw", "write -P 0xab 0 1M");
        fx.oracle(&["create", "-q", "-f", "raw", "zeros.raw", "1M"]);
        fx.qemu_io("zeros.raw", "write -P 0 0 1M");
        fx.oracle(&["create", "-q", "-f", "raw", "sparse.raw", "4M"]);
        std::fs::write(fx.path("empty.raw"), b"").expect("write empty.raw");
        let mut odd = b"odd-sized raw image\n".to_vec();
        odd.resize(1000, 0);
        std::fs::write(fx.path("odd.raw"), odd).expect("write odd.raw");
        fx
    }

    /// A path inside the fixture.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .env("HOME", &self.dir)
            .env_remove("XDG_CONFIG_HOME")
            // Proxies only where a test sets them (both tools honour them).
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("all_proxy")
            .env_remove("ALL_PROXY")
            .env("QIMG_PLUGINS", &self.plugins)
            .env("LC_ALL", "C");
        cmd
    }

    /// Runs qimg (as `qemu-img`) with `args`.
    pub fn qimg(&self, args: &[&str]) -> Outcome {
        self.command(&self.bin.join("qemu-img"), args)
            .output()
            .expect("run qimg")
            .into()
    }

    /// Runs qimg with extra environment.
    pub fn qimg_env(&self, args: &[&str], env: &[(&str, &str)]) -> Outcome {
        let mut cmd = self.command(&self.bin.join("qemu-img"), args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run qimg").into()
    }

    /// Runs qimg (as `qemu-img`) with `args` under a 1 GiB address-space
    /// limit (`ulimit -v`), as hostile-image tests require: an allocation
    /// sized by a header fails there instead of passing unnoticed.
    pub fn qimg_bounded(&self, args: &[&str]) -> Outcome {
        let bin = self.bin.join("qemu-img");
        let mut all = vec![
            "-c",
            "ulimit -v 1048576 && exec \"$0\" \"$@\"",
            bin.to_str().expect("utf-8 path"),
        ];
        all.extend_from_slice(args);
        self.command(Path::new("sh"), &all)
            .output()
            .expect("run qimg")
            .into()
    }

    /// [`Fixture::same`] with qimg run by [`Fixture::qimg_bounded`].
    pub fn same_bounded(&self, args: &[&str]) -> Outcome {
        let ours = self.qimg_bounded(args);
        let theirs = self.qemu_img(args);
        assert_eq!(ours, theirs, "qimg and qemu-img differ on {args:?}");
        ours
    }

    /// Runs qimg and returns the child without waiting (for lock and
    /// signal tests). The child takes SIGINT, SIGTERM and SIGHUP the default
    /// way whatever the suite was started with (a background job of a
    /// non-interactive shell ignores SIGINT, which qimg then ignores too).
    pub fn spawn_qimg(&self, args: &[&str]) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let mut command = self.command(&self.bin.join("qemu-img"), args);
        // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
        unsafe {
            command.pre_exec(|| {
                for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                    libc::signal(signal, libc::SIG_DFL);
                }
                Ok(())
            });
        }
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qimg")
    }

    /// Runs the real qemu-img and returns the child without waiting, its
    /// output discarded (to measure it, see [`peak_kib`]).
    pub fn spawn_qemu_img(&self, args: &[&str]) -> std::process::Child {
        self.command(Path::new("qemu-img"), args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qemu-img")
    }

    /// Runs the real qemu-img with `args`.
    pub fn qemu_img(&self, args: &[&str]) -> Outcome {
        self.command(Path::new("qemu-img"), args)
            .output()
            .expect("run qemu-img")
            .into()
    }

    /// Runs the real qemu-img and requires success (fixture building).
    pub fn oracle(&self, args: &[&str]) -> Outcome {
        let out = self.qemu_img(args);
        assert_eq!(out.status, 0, "qemu-img {args:?} failed: {}", out.stderr);
        out
    }

    /// Runs `qemu-io -f raw -c COMMAND FILE` and requires success.
    pub fn qemu_io(&self, file: &str, command: &str) {
        let out: Outcome = self
            .command(Path::new("qemu-io"), &["-f", "raw", "-c", command, file])
            .output()
            .expect("run qemu-io")
            .into();
        assert_eq!(
            out.status, 0,
            "qemu-io {command} {file} failed: {}",
            out.stderr
        );
    }

    /// Runs `qemu-io -f FORMAT` with each of `commands` on `file`; requires success.
    pub fn qemu_io_cmds(&self, format: &str, file: &str, commands: &[&str]) {
        let mut script = format!("qemu-io -f {format}");
        for c in commands {
            script.push_str(&format!(" -c '{c}'"));
        }
        script.push_str(&format!(" {file} >/dev/null"));
        self.sh(&script);
    }

    /// `qemu-img create -f qcow2 [-o OPTS] FILE SIZE` by the oracle.
    pub fn make_qcow2(&self, file: &str, opts: &str, size: &str) {
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([file, size]);
        self.oracle(&args);
    }

    /// A qcow2 overlay `top` over the qcow2 image `base`, by the oracle.
    pub fn make_overlay(&self, top: &str, base: &str) {
        self.oracle(&[
            "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top,
        ]);
    }

    /// Copies `src` to `dst` and writes each `(offset, bytes)` edit into the
    /// copy (hostile or damaged images for tests). The copy is sparse: tests
    /// make dozens of them, and CI's disk is small.
    pub fn patched_copy<B: AsRef<[u8]>>(&self, src: &str, dst: &str, edits: &[(u64, B)]) {
        use std::io::{Seek, SeekFrom, Write};
        let out = Command::new("cp")
            .arg("--sparse=always")
            .arg(self.path(src))
            .arg(self.path(dst))
            .output()
            .expect("run cp");
        assert!(
            out.status.success(),
            "cp {src} {dst}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path(dst))
            .expect("open");
        for (offset, bytes) in edits {
            f.seek(SeekFrom::Start(*offset)).expect("seek");
            f.write_all(bytes.as_ref()).expect("write");
        }
    }

    /// Writes `bytes` to `file` as a sparse file: its all-zero 4 KiB blocks
    /// become holes (whole images built in memory by tests).
    pub fn write_sparse(&self, file: &str, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(self.path(file)).expect("create");
        for (i, block) in bytes.chunks(4096).enumerate() {
            if block.iter().any(|&b| b != 0) {
                f.write_all_at(block, i as u64 * 4096).expect("write");
            }
        }
        f.set_len(bytes.len() as u64).expect("set_len");
    }

    /// qemu-io writes scattered data into the 4 MiB image `file` of
    /// `format`: a whole 64 KiB, 128 KiB across two, a 4 KiB and an 8 KiB
    /// run off cluster boundaries, a 1 KiB run (the damaged-image sweeps'
    /// fixture, whose layouts the damaged-image tests patch).
    pub fn write_scattered(&self, format: &str, file: &str) {
        self.qemu_io_cmds(
            format,
            file,
            &[
                "write -P 0x11 0 64k",
                "write -P 0x22 1M 128k",
                "write -P 0x33 3146240 4k",
                "write -P 0x44 4186112 8k",
                "write -P 0x55 2359296 1k",
            ],
        );
    }

    /// Writes `pat.raw`, the 4 MiB source the damaged-image tests copy with
    /// `convert -n` over [`Fixture::write_scattered`]'s image: runs that
    /// rewrite some of its data (a whole cluster, a sector inside one) and
    /// add new data, at both ends of the disk.
    pub fn write_over_scattered(&self) {
        let runs = [
            (0, 0xa5, 65536),
            (1049088, 0x3c, 512),
            (2 << 20, 0x5a, 65536),
            (4190208, 0xc3, 4096),
        ];
        self.write_pattern("pat.raw", 4 << 20, &runs);
    }

    /// Writes a sparse raw disk of `size` bytes holding `runs` of (offset,
    /// byte, length) and zeros elsewhere: the source of `convert -n` into
    /// damaged images, whose copy must then read back equal to it.
    pub fn write_pattern(&self, file: &str, size: usize, runs: &[(usize, u8, usize)]) {
        let mut bytes = vec![0u8; size];
        for &(at, byte, len) in runs {
            bytes[at..at + len].fill(byte);
        }
        self.write_sparse(file, &bytes);
    }

    /// Runs a shell command in the fixture and requires success.
    pub fn sh(&self, script: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&self.dir)
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "sh {script:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Asserts that the raw files `a` and `b` hold the same guest data, by
    /// the real `qemu-img compare`.
    pub fn same_raw(&self, a: &str, b: &str) {
        let same = self.qemu_img(&["compare", "-f", "raw", "-F", "raw", a, b]);
        assert_eq!(
            same.status, 0,
            "{a} and {b}: {}{}",
            same.stdout, same.stderr
        );
    }

    /// Runs both tools with the same arguments and extra environment, and
    /// asserts identical stdout, stderr (but for curl's elapsed
    /// milliseconds) and exit status. Returns qimg's outcome.
    pub fn same_env(&self, args: &[&str], env: &[(&str, &str)]) -> Outcome {
        let ours = self.qimg_env(args, env);
        let mut cmd = self.command(Path::new("qemu-img"), args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let theirs: Outcome = cmd.output().expect("run qemu-img").into();
        let timeless = |o: &Outcome| Outcome {
            stderr: mask_elapsed_ms(&o.stderr),
            ..o.clone()
        };
        assert_eq!(
            timeless(&ours),
            timeless(&theirs),
            "qimg and qemu-img differ on {args:?} with {env:?}"
        );
        ours
    }

    /// Runs both tools with the same arguments and asserts identical stdout,
    /// stderr and exit status. Returns qimg's outcome.
    pub fn same(&self, args: &[&str]) -> Outcome {
        let ours = self.qimg(args);
        let theirs = self.qemu_img(args);
        assert_eq!(ours, theirs, "qimg and qemu-img differ on {args:?}");
        ours
    }

    /// Asserts that qimg and qemu-img print the same for `info` and `map`,
    /// human and JSON, of the image `args` name.
    pub fn same_info_and_map(&self, args: &[&str]) {
        for cmd in [
            &["info"][..],
            &["info", "--output=json"],
            &["map"],
            &["map", "--output=json"],
        ] {
            let mut all: Vec<&str> = cmd.to_vec();
            all.extend_from_slice(args);
            self.same(&all);
        }
    }

    /// qimg converts `file` (of `format`) to raw, and qemu-img finds the
    /// copy equal to it.
    pub fn converts_to_raw(&self, format: &str, file: &str) {
        let out = self.qimg(&["convert", "-f", format, "-O", "raw", file, "copy.raw"]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        self.oracle(&["compare", "-f", format, "-F", "raw", file, "copy.raw"]);
        std::fs::remove_file(self.path("copy.raw")).expect("remove copy.raw");
    }

    /// Runs a command that writes the file `out` with each tool: `{}` in `args`
    /// becomes `ours.OUT` for qimg and `theirs.OUT` for qemu-img (each a copy of
    /// `out` if the fixture has one, for commands that modify an image). Then
    /// compares their output with the names normalised, and the files: size,
    /// allocated blocks, `qemu-img map` and content.
    pub fn same_effect(&self, args: &[&str], out: &str) -> Outcome {
        let ours_name = format!("ours.{out}");
        let theirs_name = format!("theirs.{out}");
        for name in [&ours_name, &theirs_name] {
            let _ = std::fs::remove_file(self.path(name));
            if self.path(out).exists() {
                self.sh(&format!("cp --sparse=always {out} {name}"));
            }
        }
        let with = |name: &str| {
            args.iter()
                .map(|a| a.replace("{}", name))
                .collect::<Vec<String>>()
        };
        let ours_args = with(&ours_name);
        let theirs_args = with(&theirs_name);
        let ours = self.qimg(&ours_args.iter().map(String::as_str).collect::<Vec<_>>());
        let theirs = self.qemu_img(&theirs_args.iter().map(String::as_str).collect::<Vec<_>>());
        let normalise = |o: &Outcome, name: &str| Outcome {
            stdout: o.stdout.replace(name, out),
            stderr: o.stderr.replace(name, out),
            status: o.status,
        };
        assert_eq!(
            normalise(&ours, &ours_name),
            normalise(&theirs, &theirs_name),
            "outputs differ on {args:?}"
        );
        let (a, b) = (self.path(&ours_name), self.path(&theirs_name));
        assert_eq!(
            a.exists(),
            b.exists(),
            "only one tool left {out} behind for {args:?}"
        );
        if b.exists() {
            assert_eq!(
                data_shape(&a),
                data_shape(&b),
                "file size/data blocks differ for {args:?}"
            );
            let map = |name: &str| {
                self.qemu_img(&["map", "-f", "raw", "--output=json", name])
                    .stdout
            };
            assert_eq!(
                map(&ours_name),
                map(&theirs_name),
                "qemu-img map differs for {args:?}"
            );
            assert_eq!(
                std::fs::read(&a).expect("read"),
                std::fs::read(&b).expect("read"),
                "content differs for {args:?}"
            );
        }
        ours
    }
}

/// The blocks `path`'s extents hold once written back, as `filefrag -v`
/// lists them: its data's blocks, allocated but unwritten ones included,
/// and not the extent tree's own blocks, whose number depends on the order
/// in which ext4 allocated (a raw target allocated ahead may hold a few
/// more of them than qemu-img's).
pub fn data_blocks(path: &Path) -> u64 {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .expect("fsync");
    let out = Command::new("filefrag")
        .arg("-v")
        .arg(path)
        .output()
        .expect("run filefrag");
    assert!(out.status.success(), "filefrag {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').map(str::trim).collect();
            (fields.len() >= 4 && fields[0].parse::<u64>().is_ok())
                .then(|| fields[3].split_whitespace().next()?.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// (length, [`data_blocks`]) of a file: what qimg's and qemu-img's outputs
/// must agree on.
pub fn data_shape(path: &Path) -> (u64, u64) {
    (file_shape(path).0, data_blocks(path))
}

/// (length, allocated 512-byte blocks) of a file.
pub fn file_shape(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).expect("stat");
    (m.len(), m.blocks())
}

/// Declares one test per case: `cases! { name => ["arg", ...], ... }` asserts
/// that qimg and qemu-img print the same and exit the same on the standard
/// fixture images.
#[macro_export]
macro_rules! same_cases {
    ($($name:ident => [$($arg:expr),* $(,)?]),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fx = $crate::Fixture::with_images(stringify!($name));
                fx.same(&[$($arg),*]);
            }
        )+
    };
}

/// Peak resident memory, in KiB, of a child process, once it exited
/// successfully.
pub fn peak_kib(child: std::process::Child) -> i64 {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status:#x}"
    );
    usage.ru_maxrss
}

#[cfg(test)]
mod tests {
    use super::mask_elapsed_ms;

    #[test]
    fn only_curls_elapsed_milliseconds_are_masked() {
        assert_eq!(
            mask_elapsed_ms("port 9 after 8 ms: refused; after 12 ms\n"),
            "port 9 after N ms: refused; after N ms\n"
        );
        assert_eq!(
            mask_elapsed_ms("after 3 s, after x ms, after 7"),
            "after 3 s, after x ms, after 7"
        );
    }
}
