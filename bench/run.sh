#!/usr/bin/env bash
# Compare qimg with qemu-img on the same workloads; see bench/README.md.
#
#   bench/run.sh [--no-build] [--ops convert,info,...] [--size 2G] [--runs 3]
#                [--dir /tmp/qimg-bench] [--list-ops] [--help]
#
# Environment: QIMG_BENCH_SIZE, QIMG_BENCH_DIR, QIMG_BENCH_RUNS (defaults of
# --size, --dir, --runs), QIMG_BIN (qimg binary; skips the build), QEMU_IMG.
# The work is done by bench.py (Python 3 standard library only), which builds
# qimg with `cargo build --release --workspace` unless --no-build is given.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}

if ! command -v "$python" >/dev/null 2>&1; then
    echo "run.sh: $python not found (set PYTHON)" >&2
    exit 2
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))'; then
    echo "run.sh: $python is too old (3.9 or newer needed)" >&2
    exit 2
fi

exec "$python" "$here/bench.py" "$@"
