#!/usr/bin/env python3
"""Benchmark qimg against qemu-img on the same workloads.

Called by bench/run.sh; see bench/README.md.  Only the Python 3.11 standard
library is used.  Exit status: 0 the run completed, 1 an operation named in
--ops failed, no operation could be measured, or the workload could not be
prepared, 2 usage error.
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
import socket
import time
from contextlib import contextmanager
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
# run), but at most Op.max_runs times: a single short run is mostly noise.
DEFAULT_MIN_TIME = 3.0
MAX_AUTO_RUNS = 30
# Operations that need a fresh copy of the chain before every run: copying
# it is not timed, but it costs seconds, so fewer automatic repetitions.
MAX_AUTO_RUNS_FRESH = 10


# --------------------------------------------------------------------------
# Inputs.  {src} is generated (see "Workload" below); the others are derived
# from it once by the real qemu-img and cached in the work directory, and
# only those that the selected operations use are made.
# --------------------------------------------------------------------------

# Bump when a recipe below changes so that cached derived inputs are rebuilt.
DERIVED_VERSION = 1
# The chain: base = a copy of {qcow2}; each overlay gets scattered writes of
# 64 KiB-1 MiB (4 KiB-aligned, so partial clusters are copied on write) that
# add up to this fraction of the virtual size, made with qemu-io.
CHAIN_LAYERS = {"chain_mid": 0.03, "chain": 0.04}
CHAIN_WRITE_MIN, CHAIN_WRITE_MAX = 64 * 1024, MIB
# The deep chain: this many overlays on the chain's base, made as the chain's
# are, each written over this fraction of the disk; {deep} is the top.
DEEP_OVERLAYS, DEEP_LAYER_SHARE = 16, 0.002
DEEP = [f"deep{n:02}" for n in range(1, DEEP_OVERLAYS)] + ["deep"]
CHAIN_LAYERS.update({key: DEEP_LAYER_SHARE for key in DEEP})


@dataclass
class Input:
    key: str
    file: str                          # name in the work directory
    fmt: str
    recipe: str                        # how it is made, for the cache and the report
    deps: list[str] = field(default_factory=list)


def qemu_convert(*opts: str) -> str:
    return "qemu-img convert -f raw " + " ".join(opts) + " {src} {dst}"


# Encrypted images: the secret every command is given, and how qemu-img names
# an image of each encrypted format with its key (`--image-opts`). A short
# PBKDF2 time keeps unlocking out of the measurements: they time the cipher.
SECRET = "secret,id=sec0,data=qimg-bench"
KEYED = {"luks": "driver=luks,key-secret=sec0,file.filename={}",
         "qcow2+luks": "driver=qcow2,encrypt.key-secret=sec0,file.filename={}"}
LUKS_OPTS = "key-secret=sec0,iter-time=10"
QCOW2_LUKS_OPTS = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"


def image_opts(fmt: str, path: str) -> list[str]:
    """How `compare` and `check` name an image: keyed for encrypted formats."""
    spec = KEYED.get(fmt, "driver=" + fmt + ",file.filename={}")
    return ["--image-opts", spec.format(path)]


INPUTS: dict[str, Input] = {i.key: i for i in [
    Input("src", "disk.raw", "raw", "generated (see Workload)"),
    Input("copy", "disk-copy.raw", "raw", "cp --sparse=always {src} {dst}", ["src"]),
    Input("qcow2", "disk.qcow2", "qcow2", qemu_convert("-O qcow2"), ["src"]),
    Input("qcow2c", "disk-zlib.qcow2", "qcow2", qemu_convert("-c -O qcow2"), ["src"]),
    Input("vmdk", "disk.vmdk", "vmdk", qemu_convert("-O vmdk"), ["src"]),
    Input("parallels", "disk.prl", "parallels", qemu_convert("-O parallels"), ["src"]),
    Input("stream", "disk-stream.vmdk", "vmdk",
          qemu_convert("-O vmdk -o subformat=streamOptimized"), ["src"]),
    Input("vdi", "disk.vdi", "vdi", qemu_convert("-O vdi"), ["src"]),
    Input("qed", "disk.qed", "qed", qemu_convert("-O qed"), ["src"]),
    Input("vpc", "disk.vhd", "vpc", qemu_convert("-O vpc"), ["src"]),
    Input("vhdx", "disk.vhdx", "vhdx", qemu_convert("-O vhdx"), ["src"]),
    Input("qcow", "disk.qcow", "qcow", qemu_convert("-O qcow"), ["src"]),
    # qemu-img cannot write dmg: made here, as hdiutil's UDZO images are
    # laid out (one zlib chunk per MiB, zero chunks for zeros).
    Input("dmg", "disk.dmg", "dmg", "generated from {src}: UDIF, zlib chunks of 1 MiB",
          ["src"]),
    Input("luks", "disk.luks", "luks",
          qemu_convert(f"--object {SECRET} -O luks -o {LUKS_OPTS}"), ["src"]),
    Input("qcow2luks", "disk-luks.qcow2", "qcow2+luks",
          qemu_convert(f"--object {SECRET} -O qcow2 -o {QCOW2_LUKS_OPTS}"), ["src"]),
    Input("chain_base", "chain-base.qcow2", "qcow2", "cp --sparse=always {qcow2} {dst}",
          ["qcow2"]),
    Input("chain_mid", "chain-mid.qcow2", "qcow2",
          "qemu-img create -f qcow2 -b chain-base.qcow2 -F qcow2 {dst}; "
          "qemu-io -f qcow2 -c 'write -P N OFF LEN' ... {dst} "
          f"({CHAIN_LAYERS['chain_mid']:.0%} of the disk)", ["chain_base"]),
    Input("chain", "chain-top.qcow2", "qcow2",
          "qemu-img create -f qcow2 -b chain-mid.qcow2 -F qcow2 {dst}; "
          "qemu-io -f qcow2 -c 'write -P N OFF LEN' ... {dst} "
          f"({CHAIN_LAYERS['chain']:.0%} of the disk)", ["chain_mid"]),
]}


def add_deep_chain() -> None:
    """Adds the overlays of the deep chain to INPUTS, each on the one
    before, the first on the chain's base."""
    for n, key in enumerate(DEEP):
        below = DEEP[n - 1] if n else "chain_base"
        name = "deep-top.qcow2" if key == "deep" else f"deep-{n + 1:02}.qcow2"
        INPUTS[key] = Input(
            key, name, "qcow2",
            f"qemu-img create -f qcow2 -b {INPUTS[below].file} -F qcow2 {{dst}}; "
            "qemu-io -f qcow2 -c 'write -P N OFF LEN' ... {dst} "
            f"({DEEP_LAYER_SHARE:.1%} of the disk)", [below])


add_deep_chain()

# Scratch copies of the chain, in SCRATCH_DIR, for the operations that modify
# it (Op.fresh_chain): placeholder -> the input it is a copy of.
SCRATCH_DIR = "scratch"
SCRATCH = {"wtop": "chain", "wmid": "chain_mid", "wbase": "chain_base"}

# Output formats that `qemu-img check` verifies after the warm-up run.
CHECKED_FORMATS = ("qcow2", "vmdk", "vdi", "qed", "parallels", "qcow2+luks")


# --------------------------------------------------------------------------
# The operations.  To add one, append an Op.  In `args`, {src}, {qcow2}, ...
# name the inputs above, {out} the output file (deleted before every run) and
# {wtop}, {wmid}, {wbase} the scratch copy of the chain (Op.fresh_chain).
# Commands run in the scratch directory.
# --------------------------------------------------------------------------

@dataclass
class Op:
    name: str
    args: list[str]
    # Output files the command creates (deleted before each run) and their
    # format; after the warm-up run each must equal `equal`.
    outputs: list[str] = field(default_factory=list)
    out_fmt: str = "raw"
    # Inputs whose data the command reads (made resident before each run).
    reads: list[str] = field(default_factory=lambda: ["src"])
    # What the outputs and `modified` files must equal (qemu-img compare).
    equal: str = "src"
    # Copy the chain to {wtop}/{wmid}/{wbase} before every run (untimed):
    # for operations that modify it.  `modified` lists the scratch files to
    # verify like outputs, `backing` the backing file name they must have.
    fresh_chain: bool = False
    modified: list[str] = field(default_factory=list)
    backing: dict[str, str] = field(default_factory=dict)
    # Expected substring of stdout (all tools), if any.
    expect_stdout: str | None = None
    # Compare stdout of qimg with qemu-img's after the warm-up (warning only).
    same_stdout: bool = False
    # qemu-img's best flags for this operation, inserted after the command
    # name for qemu-img only: measured in the same rounds and reported as an
    # extra row "NAME (qemu FLAGS)" comparing qimg with qemu-img FLAGS.
    qemu_best: list[str] = field(default_factory=list)
    # The format's driver is a vendor driver (vendor/): qimg runs with the
    # vendor drivers' drop-in (see vendor_plugins).
    vendor: bool = False
    # A server both tools talk to, started for the whole operation (see
    # SERVERS): its address is the placeholder {nbd} or {url}.
    server: str = ""
    # Flags qemu-img always gets for this operation (after the command
    # name), where its defaults cannot complete it; said in the note.
    qemu_args: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def command(self) -> str:
        return self.args[0]

    @property
    def max_runs(self) -> int:
        return MAX_AUTO_RUNS_FRESH if self.fresh_chain else MAX_AUTO_RUNS

    def placeholders(self) -> set[str]:
        return {m for a in self.args for m in re.findall(r"\{(\w+)\}", a)}

    def inputs(self) -> set[str]:
        """The inputs (keys of INPUTS) this operation needs."""
        keys = self.placeholders() | set(self.reads)
        if self.server:
            keys.add(SERVERS[self.server][0])
        if self.outputs or self.modified:
            keys.add(self.equal)
        if self.fresh_chain:
            keys |= set(SCRATCH.values())
        return {k for k in keys if k in INPUTS}

    def shell(self, extra: list[str] = ()) -> str:
        return " ".join(["qemu-img", self.command, *extra, *self.args[1:]])


def convert(name: str, src: str, src_fmt: str, out_fmt: str, opts: list[str] = (),
            compress: bool = False, best: list[str] = (), vendor: bool = False,
            note: str = "") -> Op:
    args = ["convert", *(["-c"] if compress else []), "-f", src_fmt, "-O", out_fmt, *opts,
            "{%s}" % src, "{out}"]
    return Op(name, args, outputs=["out"], out_fmt=out_fmt, reads=[src],
              qemu_best=list(best), vendor=vendor, note=note)


COMPRESSED_BEST = ["-W"]       # qemu-img's out-of-order writes: parallel compression

OPS: list[Op] = [
    # raw
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
    # qcow2
    convert("convert-raw-qcow2", "src", "raw", "qcow2"),
    convert("convert-qcow2-raw", "qcow2", "qcow2", "raw"),
    convert("convert-qcow2c-raw", "qcow2c", "qcow2", "raw",
            note="decompression of a zlib-compressed qcow2"),
    convert("convert-raw-qcow2-zlib", "src", "raw", "qcow2",
            ["-o", "compression_type=zlib"], compress=True, best=COMPRESSED_BEST),
    convert("convert-raw-qcow2-zstd", "src", "raw", "qcow2",
            ["-o", "compression_type=zstd"], compress=True, best=COMPRESSED_BEST),
    Op("compare-raw-qcow2", ["compare", "-f", "raw", "-F", "qcow2", "{src}", "{qcow2}"],
       reads=["src", "qcow2"], expect_stdout="Images are identical."),
    Op("measure-qcow2", ["measure", "-f", "raw", "-O", "qcow2", "{src}"], reads=[],
       same_stdout=True),
    Op("info-probe", ["info", "{qcow2}"], reads=[], same_stdout=True,
       note="qcow2 probed, every driver enabled (start-up and probing)"),
    Op("info-probe-raw", ["info", "{src}"], reads=[], same_stdout=True,
       note="raw probed, every driver enabled"),
    Op("check-qcow2", ["check", "-f", "qcow2", "{qcow2}"], reads=[], same_stdout=True,
       expect_stdout="No errors were found on the image.",
       note="every L2 table and refcount block of the converted image"),
    # vmdk
    convert("convert-raw-vmdk", "src", "raw", "vmdk", note="monolithicSparse"),
    convert("convert-vmdk-raw", "vmdk", "vmdk", "raw", note="from monolithicSparse"),
    convert("convert-raw-vmdk-stream", "src", "raw", "vmdk",
            ["-o", "subformat=streamOptimized"], best=COMPRESSED_BEST),
    convert("convert-qcow2-vmdk-stream", "qcow2", "qcow2", "vmdk",
            ["-o", "subformat=streamOptimized"], best=COMPRESSED_BEST),
    convert("convert-vmdk-stream-raw", "stream", "vmdk", "raw",
            note="decompression of a streamOptimized vmdk"),
    # vdi
    convert("convert-raw-vdi", "src", "raw", "vdi", note="dynamic"),
    convert("convert-vdi-raw", "vdi", "vdi", "raw", note="from dynamic"),
    # qed
    convert("convert-raw-qed", "src", "raw", "qed"),
    convert("convert-qed-raw", "qed", "qed", "raw"),
    # parallels
    convert("convert-raw-parallels", "src", "raw", "parallels", note="1 MiB clusters"),
    convert("convert-parallels-raw", "parallels", "parallels", "raw"),
    # vpc
    convert("convert-raw-vpc", "src", "raw", "vpc", note="dynamic VHD"),
    convert("convert-vpc-raw", "vpc", "vpc", "raw", note="from a dynamic VHD"),
    # vhdx
    convert("convert-raw-vhdx", "src", "raw", "vhdx", note="dynamic VHDX"),
    convert("convert-vhdx-raw", "vhdx", "vhdx", "raw", note="from a dynamic VHDX"),
    # vendor drivers (vendor/, loaded from their drop-in)
    convert("convert-qcow-raw", "qcow", "qcow", "raw", vendor=True,
            note="qcow version 1 (vendor driver)"),
    convert("convert-dmg-raw", "dmg", "dmg", "raw", vendor=True,
            note="UDIF, zlib chunks of 1 MiB (vendor driver)"),
    # network stores: qemu-nbd on a unix socket, nginx on loopback (SERVERS)
    Op("convert-nbd-raw", ["convert", "-f", "raw", "-O", "raw", "{nbd}", "{out}"],
       outputs=["out"], server="nbd-src",
       note="qemu-nbd -r exporting {src} on a unix socket, holes from block status"),
    Op("convert-raw-nbd", ["convert", "-n", "-f", "raw", "-O", "raw", "{src}", "{nbd}"],
       server="nbd-out",
       note="into a qemu-nbd export of a sparse raw file as large as {src}"),
    Op("convert-http-raw", ["convert", "-f", "qcow2", "-O", "raw", "{url}", "{out}"],
       outputs=["out"], server="http-src", reads=["qcow2"], qemu_args=["-m", "1"],
       note="{qcow2} served by nginx on loopback; qemu-img with -m 1: with its default "
            "of 8 requests in flight its curl driver hangs in ppoll (seen every run "
            "here on 1 GiB)"),
    # encryption: AES-256-XTS (qemu-img's default cipher)
    Op("convert-raw-luks", ["convert", "--object", SECRET, "-f", "raw", "-O", "luks",
                            "-o", LUKS_OPTS, "{src}", "{out}"],
       outputs=["out"], out_fmt="luks"),
    Op("convert-luks-raw", ["convert", "--object", SECRET,
                            *image_opts("luks", "{luks}"), "-O", "raw", "{out}"],
       outputs=["out"], reads=["luks"]),
    Op("convert-raw-qcow2-luks", ["convert", "--object", SECRET, "-f", "raw", "-O", "qcow2",
                                  "-o", QCOW2_LUKS_OPTS, "{src}", "{out}"],
       outputs=["out"], out_fmt="qcow2+luks"),
    Op("convert-qcow2-luks-raw", ["convert", "--object", SECRET,
                                  *image_opts("qcow2+luks", "{qcow2luks}"), "-O", "raw",
                                  "{out}"],
       outputs=["out"], reads=["qcow2luks"]),
    # backing chains: {chain} is the top of base <- mid <- top
    Op("info-chain", ["info", "-f", "qcow2", "--backing-chain", "{chain}"], reads=[],
       same_stdout=True),
    Op("map-chain", ["map", "-f", "qcow2", "--output=json", "{chain}"], reads=[],
       same_stdout=True),
    # {deep}: the top of 16 overlays on the chain's base
    Op("info-deep-chain", ["info", "-f", "qcow2", "--backing-chain", "{deep}"], reads=[],
       same_stdout=True),
    Op("map-deep-chain", ["map", "-f", "qcow2", "--output=json", "{deep}"], reads=[],
       same_stdout=True),
    Op("commit", ["commit", "-f", "qcow2", "{wtop}"], reads=[], fresh_chain=True,
       equal="chain", modified=["wtop", "wmid"],
       note="top into mid; a fresh copy of the chain for every run"),
    Op("rebase", ["rebase", "-f", "qcow2", "-b", "chain-base.qcow2", "-F", "qcow2", "{wtop}"],
       reads=[], fresh_chain=True, equal="chain", modified=["wtop"],
       backing={"wtop": "chain-base.qcow2"},
       note="safe rebase of top onto base, skipping mid; a fresh copy of the chain "
            "for every run"),
]
OPS_BY_NAME = {op.name: op for op in OPS}


# Servers of the network-store operations: name -> (the input it serves,
# what is served). "nbd-out" serves a scratch file that the operation writes
# and that must then equal {src}.
SERVERS = {
    "nbd-src": ("src", "qemu-nbd -r -f raw over a unix socket"),
    "nbd-out": ("src", "qemu-nbd -f raw over a unix socket, a sparse file of {src}'s size"),
    "http-src": ("qcow2", "nginx on loopback, the input's directory as its root"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + 20
    while not ready():
        if proc.poll() is not None:
            raise BenchError(f"{what} exited at start (status {proc.returncode})")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not start listening")
        time.sleep(0.02)


def tcp_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


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
    if any(op.vendor for op in a.op_list) and not a.no_build:
        log("== cargo build --release (vendor/)")
        r = subprocess.run(["cargo", "build", "--release", "--manifest-path",
                            str(REPO / "vendor/Cargo.toml"), "--target-dir",
                            str(REPO / "target/compat")], cwd=REPO)
        if r.returncode != 0:
            raise BenchError(f"cargo build of vendor/ failed (exit {r.returncode})")
    return qimg, qemu


def vendor_plugins(workdir: Path) -> Path:
    """A manifest for qimg with the vendor drivers: qimg's own plugins.toml
    (its libraries beside the qimg binary) and the vendor drop-in, whose
    libraries the release build of vendor/ leaves in target/compat/release."""
    etc = workdir / "plugins"
    (etc / "plugins.d").mkdir(parents=True, exist_ok=True)
    manifest = etc / "plugins.toml"
    shutil.copyfile(REPO / "plugins.toml", manifest)
    drop_in = (REPO / "vendor/plugins.d/vendor.toml").read_text()
    libs = REPO / "target/compat/release"
    drop_in = re.sub(r"(?m)^search_paths = .*$", f'search_paths = ["{libs}"]', drop_in)
    (etc / "plugins.d/vendor.toml").write_text(drop_in)
    return manifest


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


def prepare_workload(a: argparse.Namespace, workdir: Path) -> dict:
    """Make {src}, generated, unless the cached one has the same parameters."""
    image = workdir / INPUTS["src"].file
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
        # Everything derived from the old image goes too.
        for p in [manifest_path, workdir / DERIVED_MANIFEST] + [
                workdir / i.file for i in INPUTS.values()]:
            p.unlink(missing_ok=True)
        check_space(workdir, int(a.size_bytes * 0.7))
        log(f"== generating {image} ({human(a.size_bytes)}, seed {SEED})")
        t = time.perf_counter()
        info = generate_image(image, a.size_bytes)
        log(f"   generated in {time.perf_counter() - t:.1f} s")
        manifest = {"params": want, **info}
        manifest_path.write_text(json.dumps(manifest, indent=1))
    manifest["allocated"] = image.stat().st_blocks * 512
    return manifest


DERIVED_MANIFEST = "derived.json"


def needed_inputs(ops: list[Op]) -> list[str]:
    """The inputs the operations use and what those are made from, in the
    order of INPUTS (every input comes after its dependencies)."""
    keys: set[str] = set()
    todo = [k for op in ops for k in op.inputs()]
    while todo:
        k = todo.pop()
        if k not in keys:
            keys.add(k)
            todo += INPUTS[k].deps
    return [k for k in INPUTS if k in keys]


def recipe_key(key: str) -> str:
    """Everything an input depends on: its recipe and its dependencies'."""
    i = INPUTS[key]
    return " | ".join([f"{key}: {i.recipe}"] + [recipe_key(d) for d in i.deps])


def chain_writes(size: int, key: str) -> list[tuple[int, int, int]]:
    """(offset, length, pattern byte) of the writes into one chain overlay."""
    rng = random.Random(f"qimg-bench/{SEED}/{key}")
    target = size * CHAIN_LAYERS[key]
    layer = list(CHAIN_LAYERS).index(key)
    writes, total = [], 0
    while total < target:
        length = min(size, 4096 * rng.randint(CHAIN_WRITE_MIN // 4096, CHAIN_WRITE_MAX // 4096))
        offset = 4096 * rng.randrange((size - length) // 4096 + 1)
        pattern = 1 + (101 * layer + 7 * len(writes)) % 255
        writes.append((offset, length, pattern))
        total += length
    return writes


def run_checked(cmd: list[str], cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        shown = " ".join(cmd[:12]) + (" ..." if len(cmd) > 12 else "")
        raise BenchError(f"{shown} failed with exit {r.returncode}:\n{tail(r.stderr)}")


def build_input(key: str, workdir: Path, qemu: str, size: int) -> None:
    i = INPUTS[key]
    dst = workdir / i.file
    files = {k: str(workdir / v.file) for k, v in INPUTS.items()}
    if i.recipe.startswith("cp "):
        tmp = dst.with_name(dst.name + ".tmp")
        run_checked(["cp", "--sparse=always", "--reflink=never", files[i.deps[0]], str(tmp)],
                    workdir)
        os.replace(tmp, dst)
    elif i.recipe.startswith("qemu-img convert "):
        tmp = dst.with_name(dst.name + ".tmp")
        words = i.recipe.split()[1:]
        run_checked([qemu] + [w.format(**files, dst=tmp) for w in words], workdir)
        os.replace(tmp, dst)
    elif key == "dmg":
        tmp = dst.with_name(dst.name + ".tmp")
        write_dmg(Path(files["src"]), tmp)
        os.replace(tmp, dst)
    elif key in CHAIN_LAYERS:
        # Built in place: the overlay names its backing file by name.
        dst.unlink(missing_ok=True)
        backing = INPUTS[i.deps[0]].file
        run_checked([qemu, "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2",
                     i.file], workdir)
        cmds = [f"write -P {p} {o} {n}" for o, n, p in chain_writes(size, key)]
        io = shutil.which("qemu-io", path=str(Path(qemu).parent)) or "qemu-io"
        for start in range(0, len(cmds), 200):       # keep the command line short
            run_checked([io, "-f", "qcow2"]
                        + [x for c in cmds[start:start + 200] for x in ("-c", c)]
                        + [i.file], workdir)
    else:
        raise BenchError(f"no way to make input '{key}'")


DMG_CHUNK = MIB


def write_dmg(src: Path, dst: Path) -> None:
    """A UDIF image of `src`: the data fork (zlib chunks), one blkx table as
    an XML property list, the koly trailer."""
    import base64
    import zlib
    size = src.stat().st_size
    sectors = (size + 511) // 512
    entries = []
    with open(src, "rb") as f, open(dst, "wb") as out:
        sector = 0
        while sector < sectors:
            data = f.read(DMG_CHUNK)
            count = (len(data) + 511) // 512
            data += bytes(count * 512 - len(data))
            if not data.strip(b"\0"):
                entries.append((0, sector, count, out.tell(), 0))
            else:
                packed = zlib.compress(data, 6)
                entries.append((0x80000005, sector, count, out.tell(), len(packed)))
                out.write(packed)
            sector += count
        forks_at = out.tell()
        table = bytearray(204)
        table[0:4] = b"mish"
        table[4:8] = (1).to_bytes(4, "big")
        table[16:24] = sectors.to_bytes(8, "big")
        table[200:204] = (len(entries) + 1).to_bytes(4, "big")
        for kind, first, count, at, length in entries + [(0xFFFFFFFF, sectors, 0, 0, 0)]:
            table += (kind.to_bytes(4, "big") + bytes(4) + first.to_bytes(8, "big")
                      + count.to_bytes(8, "big") + at.to_bytes(8, "big")
                      + length.to_bytes(8, "big"))
        encoded = base64.encodebytes(bytes(table)).decode()
        xml = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">\n"
               "<dict>\n\t<key>resource-fork</key>\n\t<dict>\n\t\t<key>blkx</key>\n"
               "\t\t<array>\n\t\t<dict>\n\t\t\t<key>Data</key>\n\t\t\t<data>\n"
               + encoded + "\t\t\t</data>\n\t\t</dict>\n\t\t</array>\n\t</dict>\n"
               "</dict>\n</plist>\n").encode()
        out.write(xml)
        koly = bytearray(512)
        koly[0:4] = b"koly"
        koly[4:8] = (4).to_bytes(4, "big")
        koly[8:12] = (512).to_bytes(4, "big")
        koly[0x20:0x28] = forks_at.to_bytes(8, "big")
        koly[0xD8:0xE0] = forks_at.to_bytes(8, "big")
        koly[0xE0:0xE8] = len(xml).to_bytes(8, "big")
        koly[0x1EC:0x1F4] = sectors.to_bytes(8, "big")
        out.write(koly)


def prepare_derived(a: argparse.Namespace, workdir: Path, qemu: str, keys: list[str],
                    qemu_version: str) -> None:
    """Make the derived inputs in `keys` with qemu-img, or reuse the cached
    ones made from the same image by the same recipe and qemu-img."""
    path = workdir / DERIVED_MANIFEST
    params = {"version": DERIVED_VERSION, "size": a.size_bytes, "qemu": qemu_version,
              "chain": [CHAIN_LAYERS, CHAIN_WRITE_MIN, CHAIN_WRITE_MAX]}
    try:
        cache = json.loads(path.read_text())
        if cache.get("params") != params:
            cache = None
    except (OSError, ValueError):
        cache = None
    cache = cache or {"params": params, "inputs": {}}
    rebuilt: set[str] = set()
    for key in keys:
        i = INPUTS[key]
        if key == "src":
            continue
        dst = workdir / i.file
        if (dst.exists() and cache["inputs"].get(key) == recipe_key(key)
                and not rebuilt.intersection(i.deps)):
            continue
        cache["inputs"].pop(key, None)
        path.write_text(json.dumps(cache, indent=1))
        check_space(workdir, a.size_bytes)
        log(f"== making {dst.name}: {i.recipe}")
        t = time.perf_counter()
        build_input(key, workdir, qemu, a.size_bytes)
        log(f"   made in {time.perf_counter() - t:.1f} s, "
            f"{human(dst.stat().st_blocks * 512)} allocated")
        cache["inputs"][key] = recipe_key(key)
        path.write_text(json.dumps(cache, indent=1))
        rebuilt.add(key)
    os.sync()


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


def run_timed(cmd: list[str], workdir: Path, cwd: Path, gnu_time: bool,
              env: dict[str, str] | None = None) -> RunResult:
    """Run `cmd` in `cwd`; wall time from a monotonic clock around the spawn,
    user+sys CPU from os.wait4() (the child and whatever it waited for), peak
    RSS from GNU time when available (-1 otherwise)."""
    out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
    rss_path = workdir / "rss.txt"
    if gnu_time:
        rss_path.unlink(missing_ok=True)
        cmd = [GNU_TIME, "-f", "%M", "-o", str(rss_path), "--"] + cmd
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=env)
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


def first(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


@dataclass
class Contender:
    """One tool with its flags: qimg, qemu-img, or qemu-img with Op.qemu_best."""
    key: str                         # "qimg", "qemu-img", "qemu-img -W"
    binary: str
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None  # the environment, if not the bench's


class Failure(Exception):
    """A contender failed an operation: `short` goes to the report, `detail`
    (stderr's or compare's last lines) to the terminal."""
    def __init__(self, short: str, detail: str = ""):
        super().__init__(short)
        self.short, self.detail = short, detail


@dataclass
class OpResult:
    op: Op
    status: str                      # ok | failed
    message: str = ""
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    out_size: dict[str, int] = field(default_factory=dict)   # contender -> allocated bytes
    variant_errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, a: argparse.Namespace, qimg: str, qemu: str, workdir: Path):
        self.a, self.workdir = a, workdir
        self.qimg, self.qemu = qimg, qemu
        self.gnu_time = have_gnu_time()
        self.scratch = workdir / SCRATCH_DIR
        self.files = {k: workdir / i.file for k, i in INPUTS.items()}
        self.files["out"] = workdir / "out.img"
        self.files.update({k: self.scratch / INPUTS[v].file for k, v in SCRATCH.items()})
        self.formats = {k: i.fmt for k, i in INPUTS.items()}
        self.formats.update({k: INPUTS[v].fmt for k, v in SCRATCH.items()})
        self.endpoints: dict[str, str] = {}

    def contenders(self, op: Op) -> list[Contender]:
        env = None
        if op.vendor:
            env = {**os.environ, "QIMG_PLUGINS": str(vendor_plugins(self.workdir))}
        out = [Contender("qimg", self.qimg, env=env),
               Contender("qemu-img", self.qemu, list(op.qemu_args))]
        if op.qemu_best:
            out.append(Contender("qemu-img " + " ".join(op.qemu_best), self.qemu,
                                 op.qemu_best))
        return out

    @contextmanager
    def serve(self, op: Op):
        """Runs the operation's server (if any) around it; its address is
        {nbd} or {url} while it runs."""
        if not op.server:
            yield
            return
        served = self.files[SERVERS[op.server][0]]
        run = self.workdir / "server"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir()
        if op.server == "http-src":
            if not shutil.which("nginx"):
                raise BenchError("nginx is not installed")
            port = free_port()
            conf = run / "nginx.conf"
            conf.write_text(
                f"daemon off;\nworker_processes 2;\npid {run}/nginx.pid;\n"
                f"error_log {run}/error.log;\nevents {{ worker_connections 256; }}\n"
                f"http {{ access_log off; sendfile on; client_body_temp_path {run}/b; "
                f"proxy_temp_path {run}/p; fastcgi_temp_path {run}/f; "
                f"uwsgi_temp_path {run}/u; scgi_temp_path {run}/s;\n"
                f"  server {{ listen 127.0.0.1:{port}; root {served.parent}; }} }}\n")
            cmd = ["nginx", "-p", str(run), "-c", str(conf)]
            self.endpoints = {"url": f"http://127.0.0.1:{port}/{served.name}"}
            ready = lambda: tcp_open(port)  # noqa: E731
        else:
            sock = run / "nbd.sock"
            target = served
            extra = ["-r"]
            if op.server == "nbd-out":
                target = run / "nbd-target.raw"
                with open(target, "wb") as f:
                    f.truncate(served.stat().st_size)
                extra = []
            cmd = ["qemu-nbd", "-t", "-k", str(sock), "-f", "raw", "-x", "exp", *extra,
                   str(target)]
            self.endpoints = {"nbd": f"nbd+unix:///exp?socket={sock}"}
            ready = sock.exists
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_listening(proc, ready, cmd[0])
            yield
        finally:
            # SIGTERM: nginx's master then stops its workers (SIGKILL would
            # leave them running).
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.endpoints = {}
            shutil.rmtree(run, ignore_errors=True)

    def command(self, c: Contender, op: Op) -> list[str]:
        subst = {k: str(v) for k, v in self.files.items()}
        subst.update(self.endpoints)
        return [c.binary, op.command, *c.extra] + [arg.format(**subst) for arg in op.args[1:]]

    def prepare(self, op: Op, warm_inputs: bool = True) -> None:
        """Untimed: delete outputs, copy the chain if the operation modifies
        it, flush dirty data, make inputs resident."""
        for name in op.outputs:
            self.files[name].unlink(missing_ok=True)
        if op.fresh_chain:
            self.scratch.mkdir(exist_ok=True)
            for key, orig in SCRATCH.items():
                dst = self.files[key]
                dst.unlink(missing_ok=True)
                subprocess.run(["cp", "--sparse=always", "--reflink=auto",
                                str(self.files[orig]), str(dst)], check=True)
        os.sync()
        if warm_inputs:
            warm([self.files[name] for name in op.reads])

    def cleanup(self, op: Op) -> None:
        for name in op.outputs:
            self.files[name].unlink(missing_ok=True)
        if op.fresh_chain:
            for key in SCRATCH:
                self.files[key].unlink(missing_ok=True)

    def run(self, c: Contender, op: Op) -> RunResult:
        self.scratch.mkdir(exist_ok=True)
        return run_timed(self.command(c, op), self.workdir, self.scratch, self.gnu_time,
                         c.env)

    def supported(self, op: Op) -> bool:
        r = subprocess.run([self.qimg, op.command, "--help"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def qemu_img(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.qemu, *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True)

    def verify(self, c: Contender, op: Op, r: RunResult, res: OpResult) -> None:
        """Check one warm-up run; raise Failure if it is wrong."""
        if r.rc != 0:
            raise Failure(f"exit {r.rc}: {first(r.stderr) or '(no stderr)'}", tail(r.stderr))
        if op.expect_stdout and op.expect_stdout not in r.stdout:
            raise Failure(f"expected '{op.expect_stdout}' on stdout, got "
                          f"'{first(r.stdout)}'", tail(r.stdout))
        ref = self.files[op.equal]
        rel = lambda p: str(p.relative_to(self.workdir))  # noqa: E731
        for key in op.outputs + op.modified:
            path = self.files[key]
            fmt = op.out_fmt if key in op.outputs else self.formats[key]
            if not path.exists():
                raise Failure(f"did not create {rel(path)}")
            ref_fmt = self.formats[op.equal]
            if fmt in KEYED or ref_fmt in KEYED:
                cmp = self.qemu_img("compare", "--object", SECRET,
                                    *image_opts(ref_fmt, str(ref)),
                                    image_opts(fmt, str(path))[1])
            else:
                cmp = self.qemu_img("compare", "-f", ref_fmt, "-F", fmt, str(ref), str(path))
            if cmp.returncode != 0 or "Images are identical." not in cmp.stdout:
                raise Failure(f"{rel(path)} differs from {rel(ref)} (qemu-img compare exit "
                              f"{cmp.returncode}: {first(cmp.stdout + cmp.stderr)})",
                              tail(cmp.stdout + cmp.stderr))
            if fmt in CHECKED_FORMATS:
                chk = self.qemu_img("check", "--object", SECRET, *image_opts(fmt, str(path)))
                text = chk.stdout + chk.stderr
                if chk.returncode == 3:
                    res.notes.append(f"warning: {c.key}: qemu-img check: {rel(path)} has "
                                     f"leaked clusters ({first(text)})")
                elif chk.returncode != 0:
                    raise Failure(f"qemu-img check {rel(path)} exit {chk.returncode}: "
                                  f"{first(text)}", tail(text, 10))
            if key in op.backing:
                info = self.qemu_img("info", "--output=json", "-f", fmt, str(path))
                try:
                    backing = json.loads(info.stdout).get("backing-filename")
                except ValueError:
                    backing = None
                if backing != op.backing[key]:
                    raise Failure(f"{rel(path)} has backing file {backing!r}, "
                                  f"expected {op.backing[key]!r}")
        if op.server == "nbd-out":
            cmp = self.qemu_img("compare", "-f", "raw", "-F", "raw", str(ref),
                                self.endpoints["nbd"])
            if cmp.returncode != 0 or "Images are identical." not in cmp.stdout:
                raise Failure(f"the export differs from {rel(ref)} (qemu-img compare exit "
                              f"{cmp.returncode}: {first(cmp.stdout + cmp.stderr)})",
                              tail(cmp.stdout + cmp.stderr))
        if op.outputs:
            res.out_size[c.key] = self.files[op.outputs[0]].stat().st_blocks * 512

    def run_op(self, op: Op) -> OpResult:
        try:
            with self.serve(op):
                return self.measure_op(op)
        except BenchError as e:
            return OpResult(op, "failed", message=str(e))

    def measure_op(self, op: Op) -> OpResult:
        contenders = self.contenders(op)
        res = OpResult(op, "ok", samples={c.key: [] for c in contenders})
        if not self.supported(op):
            res.status = "failed"
            res.message = (f"qimg does not implement '{op.command}' "
                           f"('qimg {op.command} --help' fails)")
            return res
        try:
            # Untimed warm-up run of each contender, which also verifies the
            # result and brings the binaries (and plugins) into the page cache.
            # All run even if qimg fails, so that a bad recipe shows up too.
            stdout, warm_wall, failures = {}, 0.0, {}
            for c in contenders:
                self.prepare(op)
                r = self.run(c, op)
                try:
                    self.verify(c, op, r, res)
                except Failure as f:
                    failures[c.key] = f
                    # The short message is printed by main(); more lines here.
                    if f.detail.strip() and f.detail.strip() not in f.short:
                        print(f"   {c.key}:\n{f.detail}", file=sys.stderr, flush=True)
                    continue
                stdout[c.key] = r.stdout
                warm_wall = max(warm_wall, r.sample.wall)
            for key in ("qimg", "qemu-img"):
                if key in failures:
                    msg = f"{key}: {failures[key].short}"
                    if key == "qimg" and "qemu-img" in failures:
                        msg += f"; qemu-img too: {failures['qemu-img'].short}"
                    raise BenchError(msg)
            for key, f in failures.items():
                res.variant_errors[key] = f.short
            contenders = [c for c in contenders if c.key not in failures]
            if op.same_stdout and stdout["qimg"] != stdout["qemu-img"]:
                res.notes.append("warning: stdout of qimg differs from qemu-img's")
                warn(f"{op.name}: stdout of qimg differs from qemu-img's")
            runs = self.a.runs
            if self.a.min_time > 0:
                wanted = math.ceil(self.a.min_time / max(warm_wall, 1e-3))
                runs = max(runs, min(op.max_runs, wanted))
            # Timed runs, alternating the order of the contenders (ABBA...).
            print(f"   {runs} runs per tool ", end="", flush=True)
            for i in range(runs):
                for c in (contenders if i % 2 == 0 else contenders[::-1]):
                    self.prepare(op, warm_inputs=bool(op.reads))
                    r = self.run(c, op)
                    if r.rc != 0:
                        print(flush=True)
                        print(tail(r.stderr), file=sys.stderr, flush=True)
                        raise BenchError(f"{c.key}: exit {r.rc} in run {i + 1}: "
                                         f"{first(r.stderr) or '(no stderr)'}")
                    res.samples[c.key].append(r.sample)
                print(".", end="", flush=True)
            print(flush=True)
            for c in contenders:
                walls = sorted(s.wall for s in res.samples[c.key])
                cpus = sorted(s.cpu for s in res.samples[c.key])
                print(f"   {c.key:11} wall median {statistics.median(walls):.3f} s "
                      f"(min {walls[0]:.3f}, max {walls[-1]:.3f}), "
                      f"CPU median {statistics.median(cpus):.3f} s", flush=True)
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


@dataclass
class Row:
    """One line of the table: qimg against one qemu-img contender."""
    label: str
    res: OpResult
    ref: str                         # contender key: "qemu-img" or "qemu-img -W"
    status: str                      # ok | failed
    message: str = ""
    best: bool = False               # qemu-img's best flags for this operation

    def stats(self) -> dict | None:
        if self.status != "ok":
            return None
        out = {}
        for tool in ("qimg", self.ref):
            samples = self.res.samples[tool]
            out[tool] = {"wall": statistics.median(s.wall for s in samples),
                         "cpu": statistics.median(s.cpu for s in samples),
                         "rss": max(s.rss_kib for s in samples) / 1024,  # < 0: unknown
                         "runs": len(samples),
                         "size": self.res.out_size.get(tool, -1)}
        q, r = out["qimg"]["wall"], out[self.ref]["wall"]
        out["ratio"] = q / r if r > 0 else float("nan")
        return out

    @property
    def ratio(self) -> float | None:
        s = self.stats()
        return s["ratio"] if s and s["ratio"] > 0 and not math.isnan(s["ratio"]) else None


def rows_of(results: list[OpResult]) -> list[Row]:
    rows = []
    for res in results:
        rows.append(Row(res.op.name, res, "qemu-img", res.status, res.message))
        if res.op.qemu_best:
            flags = " ".join(res.op.qemu_best)
            ref = f"qemu-img {flags}"
            status, message = res.status, res.message
            if status == "ok" and ref in res.variant_errors:
                status, message = "failed", f"{ref}: {res.variant_errors[ref]}"
            rows.append(Row(f"{res.op.name} (qemu {flags})", res, ref, status, message,
                            best=True))
    return rows


HEADERS = ["op", "runs", "qimg wall s", "qemu-img wall s", "ratio", "qimg CPU s",
           "qemu-img CPU s", "qimg RSS MiB", "qemu-img RSS MiB", "qimg out MiB",
           "qemu-img out MiB"]


def table_rows(rows: list[Row]) -> list[list[str]]:
    cells = []
    for row in rows:
        s = row.stats()
        if s is None:
            cells.append([row.label, "-", row.status.upper()] + [""] * (len(HEADERS) - 3))
            continue
        q, e = s["qimg"], s[row.ref]
        runs = str(q["runs"]) if q["runs"] == e["runs"] else f"{q['runs']}/{e['runs']}"
        cells.append([row.label, runs, secs(q["wall"]), secs(e["wall"]),
                      f"{s['ratio']:.3f}", secs(q["cpu"]), secs(e["cpu"]),
                      mib(q["rss"]), mib(e["rss"]), size_mib(q["size"]), size_mib(e["size"])])
    return cells


def secs(value: float) -> str:
    return f"{value:.4f}" if value < 1 else f"{value:.3f}"


def mib(value: float) -> str:
    return f"{value:.1f}" if value >= 0 else "n/a"


def size_mib(value: int) -> str:
    return f"{value / MIB:.1f}" if value >= 0 else ""


def geomeans(rows: list[Row]) -> list[str]:
    """The geometric mean of the ratios against qemu-img's default flags, and
    against its best flags (the best-flags row in place of the default one)."""
    default = [r.ratio for r in rows if not r.best and r.ratio]
    out = []
    if default:
        out.append(f"{geomean(default):.3f} against qemu-img's default flags "
                   f"({len(default)} operation{'s' * (len(default) != 1)})")
    best_of = {r.res.op.name: r for r in rows if r.best and r.ratio}
    if best_of:
        best = [(best_of.get(r.res.op.name) or r).ratio for r in rows if not r.best and r.ratio]
        out.append(f"{geomean(best):.3f} against its best flags (the `(qemu "
                   f"...)` rows in place of the default ones)")
    return out


def print_table(rows: list[Row]) -> None:
    cells = table_rows(rows)
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(HEADERS)]
    fmt = lambda cs: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(cs, widths)))
    log()
    log(fmt(HEADERS))
    log(fmt(["-" * w for w in widths]))
    for r in cells:
        log(fmt(r))
    log()
    for g in geomeans(rows):
        log(f"geometric mean of wall-time ratios (qimg/qemu-img, <1 = qimg faster): {g}")
    for row in rows:
        if row.status != "ok":
            log(f"{row.label}: {row.status}: {row.message}")


def write_markdown(path: Path, a: argparse.Namespace, ctx: dict,
                   results: list[OpResult]) -> None:
    m = ctx["manifest"]
    rows = rows_of(results)
    lines = [f"## qimg vs qemu-img ({ctx['date']})", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in ctx["machine"]]
    lines += [f"| qimg | `{ctx['qimg_version']}` ({ctx['qimg']}, commit {ctx['commit']}) |",
              f"| qemu-img | `{ctx['qemu_version']}` |",
              f"| Page cache | {ctx['drop']}; inputs read into the cache before every run, "
              "outputs deleted |",
              ""]
    kinds = ", ".join(f"{k} {human(b)} in {n}" for k, (n, b) in m["kinds"].items())
    lines += [f"Workload: sparse raw image `{{src}}`, {human(a.size_bytes)} virtual, "
              f"{human(m['allocated'])} allocated, {m['extents']} extents of 64 KiB-8 MiB "
              f"(seed {SEED}): {kinds}.", ""]
    derived = [k for k in ctx["inputs"] if k != "src"]
    if derived:
        lines += ["Inputs made from it by qemu-img (cached):", ""]
        for k in derived:
            i = INPUTS[k]
            p = Path(a.dir).resolve() / i.file
            size = human(p.stat().st_blocks * 512) if p.exists() else "?"
            lines.append(f"- `{{{k}}}` = {i.file} ({i.fmt}, {size} allocated): "
                         f"`{i.recipe}`")
        lines.append("")
    lines += [f"Timed runs per tool in column runs: at least {a.runs}, more for short "
              f"operations (up to {MAX_AUTO_RUNS}, or {MAX_AUTO_RUNS_FRESH} for commit "
              f"and rebase, aiming at {a.min_time:g} s per tool), "
              "alternating which tool runs first, after an untimed, verified warm-up run "
              "of each; wall and CPU "
              "(user+sys, from wait4; CPU near 2x wall means both cores were busy) are "
              f"medians, RSS is the peak over the runs ({ctx['rss']}). "
              "Ratio = qimg wall / qemu-img wall (< 1: qimg is faster). "
              "Out = allocated size of the output file. "
              "Rows `(qemu -W)` compare the same qimg runs with qemu-img given "
              "`-W` (its best flags for compressed output), measured in the same rounds. "
              "Output files are deleted and `sync` is run before each run, outside the "
              "timing.", ""]
    lines.append("| " + " | ".join(HEADERS) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(HEADERS) - 1)) + "|")
    for r in table_rows(rows):
        lines.append("| " + " | ".join(r) + " |")
    lines.append("")
    for g in geomeans(rows):
        lines.append(f"Geometric mean of ratios: **{g.split(' ', 1)[0]}** "
                     f"{g.split(' ', 1)[1]}.")
    lines.append("")
    notes = []
    for res in results:
        cmd = res.op.shell()
        if res.op.qemu_best:
            cmd += f"`, qemu-img also with `{' '.join(res.op.qemu_best)}"
        notes.append(f"- `{res.op.name}`: `{cmd}`"
                     + (f" ({res.op.note})" if res.op.note else ""))
        if res.status != "ok":
            notes.append(f"  - {res.status}: {res.message.splitlines()[0]}")
        for key, msg in res.variant_errors.items():
            notes.append(f"  - {key} failed: {msg}")
        for n in res.notes:
            notes.append(f"  - {n}")
    lines += ["Operations:", ""] + notes + [""]
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------

def list_ops() -> None:
    width = max(len(op.name) for op in OPS)
    for op in OPS:
        line = f"{op.name:{width}}  {op.shell()}"
        if op.qemu_best:
            line += f"   [+ row '{op.name} (qemu {' '.join(op.qemu_best)})']"
        print(line)
    print("\nInputs (made by qemu-img from {src} when an operation needs them, and cached):")
    for k, i in INPUTS.items():
        print(f"  {{{k}}}  {i.file}: {i.recipe}")
    print("  {out}  out.img, the output (deleted before every run)")
    print("  {wtop}, {wmid}, {wbase}  scratch copies of the chain, fresh for every run")


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if a.list_ops:
        list_ops()
        return 0
    try:
        qimg, qemu = find_binaries(a)
        qemu_version = first_line([qemu, "--version"])
        workdir = Path(a.dir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        manifest = prepare_workload(a, workdir)
        inputs = needed_inputs(a.op_list)
        prepare_derived(a, workdir, qemu, inputs, qemu_version)
        outputs_size = a.size_bytes if any(op.outputs or op.fresh_chain
                                           for op in a.op_list) else 0
        check_space(workdir, outputs_size + 64 * MIB)
    except (BenchError, OSError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    ctx = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
           "machine": machine_description(workdir), "manifest": manifest, "inputs": inputs,
           "qimg": qimg, "qimg_version": first_line([qimg, "--version"]),
           "qemu_version": qemu_version, "commit": git_describe()}
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
        extra = f" (and qemu-img {' '.join(op.qemu_best)})" if op.qemu_best else ""
        log(f"== {op.name}: {op.shell()}{extra}")
        res = bench.run_op(op)
        if res.status != "ok":
            print(f"   {op.name} {res.status.upper()}: {res.message}", file=sys.stderr,
                  flush=True)
        for key, msg in res.variant_errors.items():
            print(f"   {op.name} ({key}) FAILED: {msg}", file=sys.stderr, flush=True)
        results.append(res)
    for name in ("stdout.txt", "stderr.txt", "rss.txt"):
        (workdir / name).unlink(missing_ok=True)
    try:
        bench.scratch.rmdir()
    except OSError:
        pass

    rows = rows_of(results)
    print_table(rows)
    out = Path(a.output)
    write_markdown(out, a, ctx, results)
    log(f"\nMarkdown written to {out}")
    # A failure is an error only for the operations named in --ops: the
    # default list includes operations that qimg does not implement yet.
    failed = [r.label for r in rows if r.status == "failed"]
    named = [r.label for r in rows if r.status == "failed" and a.explicit_ops]
    if failed:
        print(f"{'error' if named else 'note'}: failed: {', '.join(failed)}", file=sys.stderr)
    if named:
        return 1
    if not any(r.status == "ok" for r in rows):
        print("error: no operation could be measured", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
