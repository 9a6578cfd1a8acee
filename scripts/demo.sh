#!/usr/bin/env bash
# Builds qimg (release) and runs a real conversion of an image it makes:
# a sparse 256 MiB raw disk with some data, converted with progress, then
# compared with its source and described.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --workspace
qimg="$PWD/target/release/qimg"
work="${QIMG_DEMO_DIR:-$(mktemp -d /tmp/qimg-demo.XXXXXX)}"
mkdir -p "$work"
cd "$work"

"$qimg" create -f raw disk.raw 256M
# Some data at a few places; the rest stays a hole.
head -c 8M /dev/urandom | dd of=disk.raw bs=1M seek=0 conv=notrunc status=none
head -c 4M /dev/urandom | dd of=disk.raw bs=1M seek=100 conv=notrunc status=none
{ yes "qimg demo line" || true; } | head -c 4M | dd of=disk.raw bs=1M seek=200 conv=notrunc status=none

"$qimg" convert -p -O raw disk.raw copy.raw
"$qimg" compare disk.raw copy.raw
"$qimg" info copy.raw
"$qimg" map copy.raw
echo "demo files are in $work"
