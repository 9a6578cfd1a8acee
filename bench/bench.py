#!/usr/bin/env python3
"""Benchmark qimg against qemu-img on the same workloads.

Called by bench/run.sh; see bench/README.md.  Only the Python 3.11 standard
library is used.  Exit status: 0 all selected operations measured, 1 an
operation failed (or the workload could not be prepared), 2 usage error.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MIB = 1 << 20
GIB = 1 << 30

# Bump when the generator changes so that cached images are regenerated.
GENERATOR_VERSION = 1
SEED = 42
ALIGN = 64 * 1024                      # extents are multiples of 64 KiB
MIN_EXTENT, MAX_EXTENT = 64 * 1024, 8 * MIB
# Relative weights of the extent kinds: an OS disk has free space (holes),
# binaries and compressed packages (random), text/config/logs, and zeroed
# blocks written by installers or file systems.
KIND_WEIGHTS = {"hole": 35, "random": 25, "text": 25, "zero": 15}

# Short operations are repeated more than --runs times, until the timed runs
# of each tool add up to about --min-time seconds (estimated from the warm-up
# run), but at most MAX_AUTO_RUNS times: a single short run is mostly noise.
DEFAULT_MIN_TIME = 3.0
MAX_AUTO_RUNS = 30


# --------------------------------------------------------------------------
# The operations.  To add one, append an Op.  In `args`, {src} is the
# generated raw image, {copy} an identical copy of it and {out} the output
# file (deleted before every run).
# --------------------------------------------------------------------------

@dataclass
class Op:
    name: str
    args: list[str]
    # Output files the command creates; deleted before each run and, after
    # the warm-up run, checked with `qemu-img compare` against {src}.
    outputs: list[str] = field(default_factory=list)
    # Inputs whose data the command reads (made resident before each run).
    reads: list[str] = field(default_factory=lambda: ["src"])
    # Expected substring of stdout (both tools), if any.
    expect_stdout: str | None = None
    # Compare stdout of qimg with qemu-img's after the warm-up (warning only).
    same_stdout: bool = False
    note: str = ""

    @property
    def command(self) -> str:
        return self.args[0]


OPS: list[Op] = [
    Op("convert", ["convert", "-f", "raw", "-O", "raw", "{src}", "{out}"],
       outputs=["out"], note="raw -> raw, default options"),
    Op("convert-C", ["convert", "-C", "-f", "raw", "-O", "raw", "{src}", "{out}"],
       outputs=["out"], note="raw -> raw with copy offloading (copy_file_range)"),
    Op("info", ["info", "-f", "raw", "{src}"], reads=[], same_stdout=True),
    Op("map", ["map", "-f", "raw", "--output=json", "{src}"], reads=[], same_stdout=True),
    Op("compare", ["compare", "-f", "raw", "-F", "raw", "{src}", "{copy}"],
       reads=["src", "copy"], expect_stdout="Images are identical.",
       note="image vs an identical copy"),
    Op("measure", ["measure", "-f", "raw", "-O", "raw", "{src}"], reads=[], same_stdout=True),
    Op("dd", ["dd", "-f", "raw", "-O", "raw", "bs=1M", "if={src}", "of={out}"],
       outputs=["out"], note="bs=1M"),
]
OPS_BY_NAME = {op.name: op for op in OPS}


class BenchError(Exception):
    pass


def log(msg: str = "") -> None:
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------

def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"invalid size '{text}' (examples: 512M, 2G, 4GiB, 1073741824)")
    number, suffix = m.groups()
    scale = 1 << (10 * "_kmgt".index(suffix.lower() or "_"))
    size = int(float(number) * scale)
    size -= size % ALIGN
    if size < MIB:
        raise ValueError(f"size '{text}' is too small (minimum 1M)")
    return size


def human(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{int(n)} B"


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="bench/run.sh",
        description="Compare qimg with qemu-img on the same workloads.",
        epilog="Environment: QIMG_BENCH_SIZE, QIMG_BENCH_DIR, QIMG_BENCH_RUNS "
               "(defaults of --size, --dir, --runs); QIMG_BIN (qimg binary, "
               "skips the build); QEMU_IMG (qemu-img binary).  "
               "Operations: " + ", ".join(op.name for op in OPS) + ".")
    p.add_argument("--no-build", action="store_true",
                   help="do not run 'cargo build --release --workspace' first")
    p.add_argument("--ops", default="all",
                   help="comma-separated operations to run (default: all that qimg implements)")
    p.add_argument("--size", default=env.get("QIMG_BENCH_SIZE", "2G"),
                   help="virtual size of the generated image (default 2G)")
    p.add_argument("--runs", type=int, default=None,
                   help="timed runs per tool and operation (default 3)")
    p.add_argument("--dir", default=env.get("QIMG_BENCH_DIR", "/tmp/qimg-bench"),
                   help="work directory (default /tmp/qimg-bench)")
    p.add_argument("--min-time", type=float, default=DEFAULT_MIN_TIME, metavar="SECONDS",
                   help="repeat short operations (up to %d runs) until each tool's timed "
                        "runs take about this long (default %g; 0: exactly --runs)"
                   % (MAX_AUTO_RUNS, DEFAULT_MIN_TIME))
    p.add_argument("--output", default=str(BENCH_DIR / "last-results.md"),
                   help="Markdown results file (default bench/last-results.md)")
    p.add_argument("--no-drop-caches", action="store_true",
                   help="as root, do not drop the page cache at the start")
    p.add_argument("--list-ops", action="store_true", help="list the operations and exit")
    a = p.parse_args(argv)
    try:
        a.size_bytes = parse_size(a.size)
    except ValueError as e:
        p.error(str(e))
    if a.runs is None:
        try:
            a.runs = int(env.get("QIMG_BENCH_RUNS", "3"))
        except ValueError:
            p.error("QIMG_BENCH_RUNS must be an integer")
    if a.runs < 1:
        p.error("--runs must be at least 1")
    if a.min_time < 0:
        p.error("--min-time must not be negative")
    if a.ops in ("", "all"):
        a.explicit_ops = False
        a.op_list = list(OPS)
    else:
        a.explicit_ops = True
        names = [n.strip() for n in a.ops.split(",") if n.strip()]
        unknown = [n for n in names if n not in OPS_BY_NAME]
        if unknown:
            p.error(f"unknown operation(s): {', '.join(unknown)}; "
                    f"known: {', '.join(OPS_BY_NAME)}")
        a.op_list = [OPS_BY_NAME[n] for n in dict.fromkeys(names)]
    return a


# --------------------------------------------------------------------------
# Binaries
# --------------------------------------------------------------------------

def first_line(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"? ({e})"
    lines = (r.stdout or r.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def git_describe() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def find_binaries(a: argparse.Namespace) -> tuple[str, str]:
    qemu = os.environ.get("QEMU_IMG") or shutil.which("qemu-img")
    if not qemu or not os.access(qemu, os.X_OK):
        raise BenchError("qemu-img not found (set QEMU_IMG)")
    override = os.environ.get("QIMG_BIN")
    if override:
        if not a.no_build:
            log(f"QIMG_BIN is set ({override}): not building")
        qimg = override
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
        if not target.is_absolute():
            target = REPO / target
        qimg = str(target / "release" / "qimg")
        if not a.no_build:
            log("== cargo build --release --workspace")
            r = subprocess.run(["cargo", "build", "--release", "--workspace"], cwd=REPO)
            if r.returncode != 0:
                raise BenchError(f"cargo build failed (exit {r.returncode})")
    if not os.access(qimg, os.X_OK):
        raise BenchError(f"qimg binary not found at {qimg} (build it, or set QIMG_BIN)")
    return qimg, qemu


# --------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------

def text_pool(rng: random.Random, size: int) -> bytes:
    """Log-like text: a few hundred words in syslog-shaped lines."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10)))
             for _ in range(400)]
    hosts = ["web01", "db02", "build", "cache3"]
    procs = ["systemd", "kernel", "sshd", "cron", "nginx", "postgres", "dockerd"]
    out, n = [], 0
    t = 1_700_000_000
    while n < size:
        t += rng.randint(0, 5)
        ts = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
        line = "{} {} {}[{}]: {}\n".format(
            ts.strftime("%b %d %H:%M:%S"), rng.choice(hosts), rng.choice(procs),
            rng.randint(1, 40000), " ".join(rng.choices(words, k=rng.randint(4, 16))))
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def plan_extents(size: int, rng: random.Random) -> list[tuple[int, int, str]]:
    kinds, weights = zip(*KIND_WEIGHTS.items())
    lo, hi = math.log2(MIN_EXTENT // ALIGN), math.log2(MAX_EXTENT // ALIGN)
    plan, pos = [], 0
    while pos < size:
        length = ALIGN * max(1, round(2 ** rng.uniform(lo, hi)))
        length = min(length, size - pos)
        plan.append((pos, length, rng.choices(kinds, weights)[0]))
        pos += length
    return plan


def generate_image(path: Path, size: int) -> dict:
    rng = random.Random(SEED)
    plan = plan_extents(size, rng)
    pool = text_pool(rng, 4 * MIB)
    zeros = bytes(MAX_EXTENT)
    stats = {k: [0, 0] for k in KIND_WEIGHTS}          # kind -> [extents, bytes]
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for index, (offset, length, kind) in enumerate(plan):
            stats[kind][0] += 1
            stats[kind][1] += length
            if kind == "hole":
                continue
            if kind == "zero":
                data = zeros[:length]
            elif kind == "random":
                data = hashlib.shake_256(f"qimg-bench/{SEED}/{index}".encode()).digest(length)
            else:
                parts, n = [], 0
                while n < length:
                    piece = rng.randint(4096, 65536)
                    start = rng.randrange(0, len(pool) - piece)
                    parts.append(pool[start:start + piece])
                    n += piece
                data = b"".join(parts)[:length]
            done = 0
            while done < length:
                done += os.pwrite(fd, memoryview(data)[done:], offset + done)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return {"extents": len(plan), "kinds": stats}


def prepare_workload(a: argparse.Namespace, workdir: Path, need_copy: bool) -> dict:
    image = workdir / "disk.raw"
    copy = workdir / "disk-copy.raw"
    manifest_path = workdir / "disk.raw.json"
    want = {"generator": GENERATOR_VERSION, "seed": SEED, "size": a.size_bytes,
            "weights": KIND_WEIGHTS}
    manifest = None
    if manifest_path.exists() and image.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = None
    if (manifest and manifest.get("params") == want
            and image.stat().st_size == a.size_bytes):
        log(f"== reusing {image} ({human(a.size_bytes)}, seed {SEED})")
    else:
        for p in (image, copy, manifest_path):
            p.unlink(missing_ok=True)
        check_space(workdir, int(a.size_bytes * 0.7))
        log(f"== generating {image} ({human(a.size_bytes)}, seed {SEED})")
        t = time.perf_counter()
        info = generate_image(image, a.size_bytes)
        log(f"   generated in {time.perf_counter() - t:.1f} s")
        manifest = {"params": want, **info}
        manifest_path.write_text(json.dumps(manifest, indent=1))
    manifest["allocated"] = image.stat().st_blocks * 512
    if need_copy and not (copy.exists() and copy.stat().st_size == a.size_bytes):
        log(f"== copying to {copy}")
        tmp = copy.with_name(copy.name + ".tmp")
        subprocess.run(["cp", "--sparse=always", "--reflink=never", str(image), str(tmp)],
                       check=True)
        os.replace(tmp, copy)
    os.sync()
    return manifest


def check_space(workdir: Path, need: int) -> None:
    st = os.statvfs(workdir)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise BenchError(f"not enough space in {workdir}: {human(free)} free, "
                         f"about {human(need)} needed")


# --------------------------------------------------------------------------
# Page cache
# --------------------------------------------------------------------------

def drop_caches() -> str:
    if os.geteuid() != 0:
        return "not dropped at the start (not root)"
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError as e:
        return f"not dropped at the start ({e.strerror})"
    return "dropped once at the start (echo 1 > /proc/sys/vm/drop_caches)"


def warm(paths: list[Path]) -> None:
    """Read the data regions of `paths` so that they are in the page cache."""
    buf = bytearray(8 * MIB)
    view = memoryview(buf)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            pos = 0
            while pos < size:
                try:
                    start = os.lseek(fd, pos, os.SEEK_DATA)
                    end = os.lseek(fd, start, os.SEEK_HOLE)
                except OSError:        # ENXIO: no data after pos
                    break
                while start < end:
                    n = os.preadv(fd, [view[:min(len(buf), end - start)]], start)
                    if n <= 0:
                        break
                    start += n
                pos = end
        finally:
            os.close(fd)


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------

@dataclass
class Sample:
    wall: float
    cpu: float
    rss_kib: int


@dataclass
class RunResult:
    rc: int
    sample: Sample
    stdout: str
    stderr: str


GNU_TIME = "/usr/bin/time"


def have_gnu_time() -> bool:
    """GNU time is used for peak RSS only: a child forked by Python inherits
    Python's own high-water mark in ru_maxrss (Linux keeps it across exec), so
    wait4() cannot measure a small process.  GNU time is exec'ed first and
    forks the tool from its own small image, so its %M is the tool's peak
    (plus about 1 MiB of GNU time's own pages)."""
    if not os.access(GNU_TIME, os.X_OK):
        return False
    r = subprocess.run([GNU_TIME, "-f", "%M", "-o", "/dev/null", "true"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


def run_timed(cmd: list[str], workdir: Path, gnu_time: bool) -> RunResult:
    """Run `cmd`; wall time from a monotonic clock around the spawn, user+sys
    CPU from os.wait4() (the child and whatever it waited for), peak RSS from
    GNU time when available (-1 otherwise)."""
    out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
    rss_path = workdir / "rss.txt"
    if gnu_time:
        rss_path.unlink(missing_ok=True)
        cmd = [GNU_TIME, "-f", "%M", "-o", str(rss_path), "--"] + cmd
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss = -1
    if gnu_time:
        try:
            # With a non-zero exit, GNU time writes a "Command exited..." line first.
            rss = int(rss_path.read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            rss = -1
    return RunResult(proc.returncode, Sample(wall, ru.ru_utime + ru.ru_stime, rss),
                     out_path.read_text(errors="replace"), err_path.read_text(errors="replace"))


def tail(text: str, lines: int = 5) -> str:
    return "\n".join("    " + l for l in text.strip().splitlines()[-lines:])


@dataclass
class OpResult:
    op: Op
    status: str                      # ok | skipped | failed
    message: str = ""
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, a: argparse.Namespace, qimg: str, qemu: str, workdir: Path):
        self.a, self.workdir = a, workdir
        self.tools = {"qimg": qimg, "qemu-img": qemu}
        self.qemu = qemu
        self.gnu_time = have_gnu_time()
        self.files = {"src": workdir / "disk.raw", "copy": workdir / "disk-copy.raw",
                      "out": workdir / "out.img"}

    def command(self, tool: str, op: Op) -> list[str]:
        subst = {k: str(v) for k, v in self.files.items()}
        return [self.tools[tool]] + [arg.format(**subst) for arg in op.args]

    def prepare(self, op: Op, warm_inputs: bool = True) -> None:
        """Untimed: delete outputs, flush dirty data, make inputs resident."""
        for name in op.outputs:
            self.files[name].unlink(missing_ok=True)
        os.sync()
        if warm_inputs:
            warm([self.files[name] for name in op.reads])

    def cleanup(self, op: Op) -> None:
        for name in op.outputs:
            self.files[name].unlink(missing_ok=True)

    def supported(self, op: Op) -> bool:
        r = subprocess.run([self.tools["qimg"], op.command, "--help"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def verify(self, tool: str, op: Op, r: RunResult, res: OpResult) -> None:
        if r.rc != 0:
            raise BenchError(f"{tool} {op.name} failed with exit {r.rc}:\n{tail(r.stderr)}")
        if op.expect_stdout and op.expect_stdout not in r.stdout:
            raise BenchError(f"{tool} {op.name}: expected '{op.expect_stdout}' on stdout, got:\n"
                             f"{tail(r.stdout)}")
        for name in op.outputs:
            out = self.files[name]
            if not out.exists():
                raise BenchError(f"{tool} {op.name} did not create {out}")
            c = subprocess.run([self.qemu, "compare", "-f", "raw", "-F", "raw",
                                str(self.files["src"]), str(out)],
                               capture_output=True, text=True)
            if c.returncode != 0 or "Images are identical." not in c.stdout:
                raise BenchError(f"{tool} {op.name}: output {out} differs from the input "
                                 f"(qemu-img compare exit {c.returncode}):\n"
                                 f"{tail(c.stdout + c.stderr)}")
            res.notes.append(f"{tool} output: {human(out.stat().st_size)} virtual, "
                             f"{human(out.stat().st_blocks * 512)} allocated")

    def run_op(self, op: Op) -> OpResult:
        res = OpResult(op, "ok", samples={t: [] for t in self.tools})
        if not self.supported(op):
            res.status = "failed" if self.a.explicit_ops else "skipped"
            res.message = f"qimg does not implement '{op.command}' ('qimg {op.command} --help' fails)"
            return res
        try:
            # Untimed warm-up run of each tool, which also verifies the result
            # and brings the binaries (and plugins) into the page cache.
            stdout, warm_wall = {}, 0.0
            for tool in self.tools:
                self.prepare(op)
                r = run_timed(self.command(tool, op), self.workdir, self.gnu_time)
                self.verify(tool, op, r, res)
                stdout[tool] = r.stdout
                warm_wall = max(warm_wall, r.sample.wall)
            if op.same_stdout and stdout["qimg"] != stdout["qemu-img"]:
                res.notes.append("stdout of qimg differs from qemu-img's")
                warn(f"{op.name}: stdout of qimg differs from qemu-img's")
            runs = self.a.runs
            if self.a.min_time > 0:
                wanted = math.ceil(self.a.min_time / max(warm_wall, 1e-3))
                runs = max(runs, min(MAX_AUTO_RUNS, wanted))
            # Timed runs, alternating which tool goes first (ABBA order).
            order = list(self.tools)
            print(f"   {runs} runs per tool ", end="", flush=True)
            for i in range(runs):
                for tool in (order if i % 2 == 0 else order[::-1]):
                    self.prepare(op, warm_inputs=bool(op.reads))
                    r = run_timed(self.command(tool, op), self.workdir, self.gnu_time)
                    if r.rc != 0:
                        print(flush=True)
                        raise BenchError(f"{tool} {op.name} failed with exit {r.rc} "
                                         f"in run {i + 1}:\n{tail(r.stderr)}")
                    res.samples[tool].append(r.sample)
                print(".", end="", flush=True)
            print(flush=True)
            for tool, samples in res.samples.items():
                walls = sorted(s.wall for s in samples)
                print(f"   {tool:8} wall median {statistics.median(walls):.3f} s "
                      f"(min {walls[0]:.3f}, max {walls[-1]:.3f})", flush=True)
        except BenchError as e:
            res.status, res.message = "failed", str(e)
        finally:
            self.cleanup(op)
        return res


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------

def machine_description(workdir: Path) -> list[tuple[str, str]]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = human(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        fstype = subprocess.run(["df", "--output=fstype", str(workdir)], capture_output=True,
                                text=True, check=True).stdout.split()[-1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        fstype = "unknown"
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "unknown"
    return [("CPUs (nproc)", str(len(os.sched_getaffinity(0)))), ("CPU model", cpu),
            ("Memory", mem), ("Work dir file system", f"{fstype} ({workdir})"),
            ("Kernel", f"{platform.system()} {platform.release()}"),
            ("Load average at start", load)]


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarize(res: OpResult) -> dict | None:
    if res.status != "ok":
        return None
    row = {}
    for tool, samples in res.samples.items():
        row[tool] = {"wall": statistics.median(s.wall for s in samples),
                     "cpu": statistics.median(s.cpu for s in samples),
                     "rss": max(s.rss_kib for s in samples) / 1024,  # < 0: unknown
                     "runs": len(samples)}
    q, r = row["qimg"]["wall"], row["qemu-img"]["wall"]
    row["ratio"] = q / r if r > 0 else float("nan")
    return row


HEADERS = ["op", "runs", "qimg wall s", "qemu-img wall s", "ratio", "qimg CPU s",
           "qemu-img CPU s", "qimg RSS MiB", "qemu-img RSS MiB"]


def table_rows(results: list[OpResult]) -> list[list[str]]:
    rows = []
    for res in results:
        row = summarize(res)
        if row is None:
            rows.append([res.op.name, "-", res.status.upper()] + [""] * (len(HEADERS) - 3))
            continue
        q, e = row["qimg"], row["qemu-img"]
        rows.append([res.op.name, str(q["runs"]), secs(q["wall"]), secs(e["wall"]),
                     f"{row['ratio']:.3f}", secs(q["cpu"]), secs(e["cpu"]),
                     mib(q["rss"]), mib(e["rss"])])
    return rows


def secs(value: float) -> str:
    return f"{value:.4f}" if value < 1 else f"{value:.3f}"


def mib(value: float) -> str:
    return f"{value:.1f}" if value >= 0 else "n/a"


def ratios(results: list[OpResult]) -> list[float]:
    out = []
    for res in results:
        row = summarize(res)
        if row and row["ratio"] > 0 and not math.isnan(row["ratio"]):
            out.append(row["ratio"])
    return out


def print_table(results: list[OpResult]) -> None:
    rows = table_rows(results)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    log()
    log(fmt(HEADERS))
    log(fmt(["-" * w for w in widths]))
    for r in rows:
        log(fmt(r))
    rs = ratios(results)
    log()
    if rs:
        log(f"geometric mean of wall-time ratios (qimg/qemu-img, <1 = qimg faster): "
            f"{geomean(rs):.3f} over {len(rs)} op(s)")
    for res in results:
        if res.status != "ok":
            log(f"{res.op.name}: {res.status}: {res.message}")


def write_markdown(path: Path, a: argparse.Namespace, ctx: dict,
                   results: list[OpResult]) -> None:
    m = ctx["manifest"]
    lines = [f"## qimg vs qemu-img ({ctx['date']})", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in ctx["machine"]]
    lines += [f"| qimg | `{ctx['qimg_version']}` ({ctx['qimg']}, commit {ctx['commit']}) |",
              f"| qemu-img | `{ctx['qemu_version']}` |",
              f"| Page cache | {ctx['drop']}; inputs read into the cache before every run, "
              "outputs deleted |",
              ""]
    kinds = ", ".join(f"{k} {human(b)} in {n}" for k, (n, b) in m["kinds"].items())
    lines += [f"Workload: sparse raw image, {human(a.size_bytes)} virtual, "
              f"{human(m['allocated'])} allocated, {m['extents']} extents of 64 KiB-8 MiB "
              f"(seed {SEED}): {kinds}.", "",
              f"Timed runs per tool in column runs: at least {a.runs}, more for short "
              f"operations (up to {MAX_AUTO_RUNS}, aiming at {a.min_time:g} s per tool), "
              "alternating which tool runs first, after an untimed, verified warm-up run "
              "of each; wall and CPU "
              "(user+sys, from wait4) are medians, RSS is the peak over the runs "
              f"({ctx['rss']}). Ratio = qimg wall / qemu-img wall (< 1: qimg is faster). "
              "Output files are deleted and `sync` is run before each run, outside the "
              "timing.", ""]
    lines.append("| " + " | ".join(HEADERS) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(HEADERS) - 1)) + "|")
    for r in table_rows(results):
        lines.append("| " + " | ".join(r) + " |")
    rs = ratios(results)
    lines.append("")
    if rs:
        lines.append(f"Geometric mean of ratios: **{geomean(rs):.3f}** ({len(rs)} operations).")
        lines.append("")
    notes = []
    for res in results:
        if res.op.note:
            notes.append(f"- `{res.op.name}`: `qemu-img {' '.join(res.op.args)}` ({res.op.note})")
        else:
            notes.append(f"- `{res.op.name}`: `qemu-img {' '.join(res.op.args)}`")
        if res.status != "ok":
            notes.append(f"  - {res.status}: {res.message.splitlines()[0]}")
        for n in res.notes:
            notes.append(f"  - {n}")
    lines += ["Operations:", ""] + notes + [""]
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if a.list_ops:
        for op in OPS:
            print(f"{op.name:10} qemu-img {' '.join(op.args)}")
        return 0
    try:
        qimg, qemu = find_binaries(a)
        workdir = Path(a.dir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        need_copy = any("copy" in op.reads for op in a.op_list)
        manifest = prepare_workload(a, workdir, need_copy)
        outputs_size = a.size_bytes if any(op.outputs for op in a.op_list) else 0
        check_space(workdir, outputs_size + 64 * MIB)
    except (BenchError, OSError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    ctx = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
           "machine": machine_description(workdir), "manifest": manifest,
           "qimg": qimg, "qimg_version": first_line([qimg, "--version"]),
           "qemu_version": first_line([qemu, "--version"]), "commit": git_describe()}
    ctx["drop"] = ("not dropped at the start (--no-drop-caches)" if a.no_drop_caches
                   else drop_caches())
    for k, v in ctx["machine"]:
        log(f"   {k}: {v}")
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        warn(f"load average is {load1:.2f}: other processes are running and the "
             "results will be noisy")
    log(f"   qimg: {ctx['qimg_version']} ({qimg})")
    log(f"   qemu-img: {ctx['qemu_version']} ({qemu})")
    log(f"   page cache: {ctx['drop']}")

    bench = Bench(a, qimg, qemu, workdir)
    ctx["rss"] = ("peak RSS from GNU time %M (includes ~1 MiB of GNU time's own pages)"
                  if bench.gnu_time else "peak RSS not measured (GNU /usr/bin/time not found)")
    if not bench.gnu_time:
        warn("GNU /usr/bin/time not found: peak RSS will not be measured")
    results = []
    for op in a.op_list:
        log(f"== {op.name}: qemu-img {' '.join(op.args)}")
        res = bench.run_op(op)
        if res.status != "ok":
            print(f"   {res.status.upper()}: {res.message}",
                  file=sys.stderr if res.status == "failed" else sys.stdout, flush=True)
        results.append(res)
    for name in ("stdout.txt", "stderr.txt", "rss.txt"):
        (workdir / name).unlink(missing_ok=True)

    print_table(results)
    out = Path(a.output)
    write_markdown(out, a, ctx, results)
    log(f"\nMarkdown written to {out}")
    failed = [r.op.name for r in results if r.status == "failed"]
    if failed:
        print(f"error: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if not any(r.status == "ok" for r in results):
        print("error: no operation could be measured", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
