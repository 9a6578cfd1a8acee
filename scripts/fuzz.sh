#!/usr/bin/env bash
# Fuzzes qimg's format drivers and text parsers with cargo-fuzz
# (libFuzzer), a bounded time per target, and reports what was found.
#
#   scripts/fuzz.sh [--time SECONDS] [TARGET...]
#
# TARGETs are the fuzz/ crate's targets: qcow2, vmdk, vdi, vpc, vhdx, qed,
# parallels, raw, luks, descriptors (vmdk), texts (manifests, json: and
# --image-opts names, command lines), and the vendor drivers' dmg, bochs,
# cloop, qcow, nbd (the NBD client against a hostile server) and http (the
# HTTP client's response parser), all by default. --time is the run time of each target in seconds (default 60).
#
# Installs cargo-fuzz if it is missing, builds with the installed nightly
# toolchain, and fills each empty corpus fuzz/corpus/TARGET/ with small seed
# images made by qemu-img and qemu-io (the corpora are not committed: they
# are made here). Each target runs with -rss_limit_mb=2048 and -timeout=10:
# an unbounded allocation or a hang counts as a finding too. libFuzzer stops
# at a finding; the target is then started again for the time left. Findings
# are libFuzzer's crash-/oom-/timeout-/leak- files in fuzz/artifacts/TARGET/;
# those of this run are listed, grouped by what they do when replayed.
# Exits 1 if anything was found (2 if a target could not be built or run).
#
# Environment: FUZZ_SANITIZER (address by default, or none: faster),
# FUZZ_MAX_STARTS (starts of one target per run, default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

all_targets=(qcow2 vmdk vdi vpc vhdx qed parallels raw luks descriptors texts dmg bochs cloop qcow nbd http)
time_per_target=60
targets=()

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --time) time_per_target=${2:?--time needs a number of seconds}; shift 2 ;;
        --time=*) time_per_target=${1#--time=}; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if ! [[ $time_per_target =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: --time wants a positive number of seconds, not '$time_per_target'" >&2
    exit 2
fi
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
    if [[ ! -f fuzz/fuzz_targets/$t.rs ]]; then
        echo "fuzz.sh: no fuzz target '$t' (have: ${all_targets[*]})" >&2
        exit 2
    fi
done

# --- Tools -----------------------------------------------------------------

# The nightly toolchain that is installed (cargo-fuzz needs nightly's
# sanitizer flags); it is not downloaded here.
nightly=$(rustup toolchain list 2>/dev/null | awk '/^nightly/ { print $1; exit }')
if [[ -z $nightly ]]; then
    echo "fuzz.sh: no nightly Rust toolchain installed (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo "+$nightly" fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
if ! command -v qemu-img >/dev/null || ! command -v qemu-io >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "fuzz.sh: qemu-img/qemu-io not found: installing qemu-utils" >&2
        apt-get update -qq && apt-get install -y -qq qemu-utils >/dev/null
    else
        echo "fuzz.sh: qemu-img and qemu-io are needed to make seed images" >&2
        exit 2
    fi
fi

# --- Seeds -----------------------------------------------------------------

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Runs qemu-img quietly in the scratch directory.
q() { (cd "$work" && qemu-img "$@" >/dev/null); }
# qio FORMAT FILE COMMAND...: runs qemu-io commands on a scratch file.
qio() {
    local format=$1 file=$2 c
    shift 2
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    (cd "$work" && qemu-io -f "$format" "${args[@]}" "$file" >/dev/null)
}
# The text of the descriptor embedded in a sparse vmdk (qemu-img puts it
# at sector 1, 20 sectors long), without its NUL padding.
embedded_descriptor() { dd if="$work/$1" bs=512 skip=1 count=20 status=none | tr -d '\000'; }
# True if a corpus directory has no file yet.
empty_dir() { [[ -z $(find "$1" -maxdepth 1 -type f -print -quit 2>/dev/null) ]]; }

# A 1 MiB raw source with compressible and incompressible data, for
# `convert -c` and stream-optimized vmdk.
make_source() {
    [[ -f $work/src.raw ]] && return
    q create -f raw src.raw 1M
    qio raw src.raw 'write -P 0xaa 0 64k' 'write -P 0x11 512k 8k'
    head -c 8192 /dev/urandom | dd of="$work/src.raw" bs=4096 seek=100 conv=notrunc status=none
}

seed_qcow2() {
    local dir=$1
    q create -f qcow2 -o compat=0.10,cluster_size=512 v2-512.qcow2 1M
    qio qcow2 v2-512.qcow2 'write -P 0xaa 0 4k' 'write -P 0x55 600k 1k'
    q create -f qcow2 -o compat=1.1,cluster_size=512 v3-512.qcow2 1M
    qio qcow2 v3-512.qcow2 'write -P 0xaa 0 4k' 'write -z 64k 4k' 'write -P 0x55 600k 1k'
    q create -f qcow2 -o compat=0.10 v2-64k.qcow2 1M
    q create -f qcow2 -o compat=1.1 v3-64k.qcow2 1M
    qio qcow2 v3-64k.qcow2 'write -P 0xaa 0 4k' 'write -z 128k 64k'
    # A large guest in a small file: the reads are sampled.
    q create -f qcow2 -o compat=1.1,cluster_size=4k v3-4g.qcow2 4G
    qio qcow2 v3-4g.qcow2 'write -P 0xaa 0 4k' 'write -P 0x55 3G 4k'
    q create -f qcow2 -o extended_l2=on,cluster_size=16k extended-l2.qcow2 1M
    qio qcow2 extended-l2.qcow2 'write -P 0xaa 0 1k' 'write -z 4k 1k' 'write -P 0x55 40k 3k'
    q create -f qcow2 -o cluster_size=512,refcount_bits=1 refcount1.qcow2 1M
    qio qcow2 refcount1.qcow2 'write -P 0xaa 0 4k'
    q create -f qcow2 -o cluster_size=512,refcount_bits=64 refcount64.qcow2 1M
    qio qcow2 refcount64.qcow2 'write -P 0xaa 0 4k'
    make_source
    q convert -c -O qcow2 -o cluster_size=4k src.raw compressed-zlib.qcow2
    q convert -c -O qcow2 -o cluster_size=4k,compression_type=zstd src.raw compressed-zstd.qcow2
    q create -f qcow2 -o cluster_size=512 base.qcow2 1M
    q create -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 backing.qcow2
    qio qcow2 backing.qcow2 'write -P 0xaa 4k 4k'
    q create -f qcow2 -o cluster_size=512 snapshot.qcow2 1M
    qio qcow2 snapshot.qcow2 'write -P 0xaa 0 4k'
    q snapshot -c snap1 snapshot.qcow2
    qio qcow2 snapshot.qcow2 'write -P 0x55 0 2k' 'write -P 0x66 8k 1k'
    q create -f qcow2 -o cluster_size=512 bitmap.qcow2 1M
    q bitmap --add bitmap.qcow2 dirty0
    qio qcow2 bitmap.qcow2 'write -P 0xaa 0 4k' 'write -P 0x55 512k 4k'
    q create -f qcow2 -o cluster_size=512,lazy_refcounts=on lazy.qcow2 1M
    qio qcow2 lazy.qcow2 'write -P 0xaa 0 4k'
    for f in v2-512 v3-512 v2-64k v3-64k v3-4g extended-l2 refcount1 refcount64 \
        compressed-zlib compressed-zstd backing snapshot bitmap lazy; do
        cp "$work/$f.qcow2" "$dir/$f.qcow2"
    done
}

# Makes the vmdk images both vmdk and descriptors seed from.
make_vmdks() {
    [[ -f $work/sparse.vmdk ]] && return
    q create -f vmdk -o subformat=monolithicSparse sparse.vmdk 1M
    qio vmdk sparse.vmdk 'write -P 0xaa 0 64k'
    q create -f vmdk -o subformat=monolithicSparse sparse-empty.vmdk 1M
    q create -f vmdk -o subformat=monolithicSparse,zeroed_grain=on zeroed-grain.vmdk 1M
    qio vmdk zeroed-grain.vmdk 'write -P 0xaa 0 64k' 'write -z 128k 64k' 'write -P 0x55 300k 4k'
    make_source
    q convert -O vmdk -o subformat=streamOptimized src.raw stream.vmdk
    q create -f vmdk -b sparse.vmdk -F vmdk child.vmdk
    qio vmdk child.vmdk 'write -P 0x55 0 4k'
    q create -f vmdk -o subformat=monolithicFlat flat.vmdk 1M
    q create -f vmdk -o subformat=twoGbMaxExtentFlat split-flat.vmdk 1M
    q create -f vmdk -o subformat=twoGbMaxExtentSparse split-sparse.vmdk 1M
    qio vmdk split-sparse.vmdk 'write -P 0xaa 0 64k'
    # qemu-img makes no vmfs disks: the descriptors of two, by hand.
    sed -e 's/createType="monolithicFlat"/createType="vmfs"/' \
        -e 's/FLAT \("[^"]*"\) 0$/VMFS \1/' "$work/flat.vmdk" >"$work/vmfs.vmdk"
    sed -e 's/createType="twoGbMaxExtentSparse"/createType="vmfsSparse"/' \
        -e 's/ SPARSE / VMFSSPARSE /' "$work/split-sparse.vmdk" >"$work/vmfs-sparse.vmdk"
    # Descriptor files whose extents read as zeros: they open without
    # other files.
    sed -E 's/(FLAT|VMFS|SPARSE|VMFSSPARSE) "[^"]*"( [0-9]+)?$/ZERO/' \
        "$work/flat.vmdk" >"$work/zero-flat.vmdk"
    sed -E 's/(FLAT|VMFS|SPARSE|VMFSSPARSE) "[^"]*"( [0-9]+)?$/ZERO/' \
        "$work/split-sparse.vmdk" >"$work/zero-split.vmdk"
    printf '%s\n' '# Disk DescriptorFile' 'version=1' 'CID=fffffffe' 'parentCID=ffffffff' \
        'createType="monolithicFlat"' '' '# Extent description' 'RW 1024 ZERO' \
        'RDONLY 1024 ZERO' 'NOACCESS 64 ZERO' 'RW 2048 FLAT "f.raw" 0' '' \
        'ddb.geometry.cylinders = "2"' 'ddb.geometry.heads = "16"' \
        'ddb.geometry.sectors = "63"' >"$work/mixed.vmdk"
}

# Little-endian u32 bytes, and bytes from stdin put at an offset of a file.
le32() { printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)))"; }
put() { dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }

# An ESX Server sparse extent (COWD), which qemu-img cannot make: 1 MiB of
# 4 KiB grains, its grain directory at sector 4, one grain table at sector 5
# and one grain of 0xaa at sector 37. A descriptor where qemu-img looks for
# one (sector 1, unused header bytes) lets it open on its own.
make_cowd() {
    local f=$work/cowd.vmdk
    head -c $((45 * 512)) /dev/zero >"$f"
    printf 'COWD' | put "$f" 0
    le32 1 | put "$f" 4       # version
    le32 3 | put "$f" 8       # flags
    le32 2048 | put "$f" 12   # sectors
    le32 8 | put "$f" 16      # sectors per grain
    le32 4 | put "$f" 20      # grain directory sector
    le32 1 | put "$f" 24      # grain directory entries
    le32 45 | put "$f" 28     # next free sector
    printf 'CID=1\nparentCID=ffffffff\ncreateType="vmfsSparse"\n' | put "$f" 512
    le32 5 | put "$f" 2048    # the grain table's sector
    le32 37 | put "$f" 2560   # grain 0's sector
    head -c 4096 /dev/zero | tr '\000' '\252' | put "$f" $((37 * 512))
}

seed_vmdk() {
    local dir=$1
    make_vmdks
    make_cowd
    for f in cowd sparse sparse-empty zeroed-grain stream child flat split-flat split-sparse \
        split-sparse-s001 vmfs vmfs-sparse zero-flat zero-split mixed; do
        cp "$work/$f.vmdk" "$dir/$f.vmdk"
    done
}

seed_descriptors() {
    local dir=$1
    make_vmdks
    for f in flat split-flat split-sparse vmfs vmfs-sparse zero-flat zero-split mixed; do
        cp "$work/$f.vmdk" "$dir/$f.txt"
    done
    for f in sparse stream child zeroed-grain; do
        embedded_descriptor "$f.vmdk" >"$dir/embedded-$f.txt"
    done
}

# One text per parser of the texts target (its first byte picks it).
seed_texts() {
    local dir=$1
    printf '\0search_paths = ["${exe_dir}", "lib"]\n[[driver]]\nname = "raw"\nlibrary = "libqimg_raw.so"\nenabled = true\n' >"$dir/manifest"
    printf '\1{"driver": "qcow2", "file": {"driver": "file", "filename": "a.qcow2"}, "backing": {"driver": "null-co", "size": 1048576}}' >"$dir/json"
    printf '\2driver=qcow2,file.filename=a,,b.qcow2,encrypt.key-secret=s,cache.direct=on' >"$dir/image-opts"
    printf '\3null-co://' >"$dir/null"
    printf '\4-O\0qcow2\0-fraw\0--out=json\0-o\0a=1,,2,b\0x\0--\0-y' >"$dir/command-line"
}

# LUKS volumes of a few ciphers, modes and hashes, one with two key slots
# (a short PBKDF2 time: the fuzzer never unlocks them).
seed_luks() {
    local dir=$1 i=0 secret=(--object secret,id=k,data=qimg)
    for o in cipher-alg=aes-256 cipher-alg=aes-128,hash-alg=sha1 \
        cipher-alg=twofish-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256 \
        cipher-alg=serpent-256,ivgen-alg=plain; do
        i=$((i + 1))
        q create -f luks "${secret[@]}" -o "key-secret=k,iter-time=10,$o" "luks$i.luks" 1M
        cp "$work/luks$i.luks" "$dir/"
    done
    q amend "${secret[@]}" --object secret,id=n,data=more \
        --image-opts "driver=luks,key-secret=k,file.filename=$work/luks1.luks" \
        -o state=active,new-secret=n,iter-time=10
    cp "$work/luks1.luks" "$dir/two-slots.luks"
}

seed_vdi() {
    local dir=$1
    q create -f vdi dynamic.vdi 4M
    qio vdi dynamic.vdi 'write -P 0xaa 0 12k' 'write -z 1M 8k' 'write -P 0x55 3M 4k'
    q create -f vdi -o static=on static.vdi 2M
    qio vdi static.vdi 'write -P 0x11 1M 4k'
    q create -f vdi odd.vdi 1500k
    for f in dynamic static odd; do cp "$work/$f.vdi" "$dir/$f.vdi"; done
}

seed_qed() {
    local dir=$1
    q create -f qed -o cluster_size=4096,table_size=2 small.qed 4M
    qio qed small.qed 'write -P 0xaa 0 12k' 'write -z 1M 8k' 'write -P 0x55 3M 4k'
    q create -f raw qed-base.raw 1M
    q create -f qed -b qed-base.raw -F raw overlay.qed 1M
    q create -f qed default.qed 1M
    for f in small overlay default; do cp "$work/$f.qed" "$dir/$f.qed"; done
}

seed_vpc() {
    local dir=$1
    q create -f vpc dynamic.vhd 4M
    qio vpc dynamic.vhd 'write -P 0xaa 0 4k' 'write -P 0x55 2044k 8k'
    q create -f vpc -o force_size=on forced.vhd 3M
    qio vpc forced.vhd 'write -P 0xaa 1M 4k'
    q create -f vpc -o subformat=fixed fixed.vhd 64k
    qio vpc fixed.vhd 'write -P 0xaa 0 4k'
    q create -f vpc empty.vhd 0
    for f in dynamic forced fixed empty; do
        cp "$work/$f.vhd" "$dir/$f.vhd"
    done
}

seed_vhdx() {
    local dir=$1
    q create -f vhdx -o log_size=1M,block_size=1M dynamic.vhdx 4M
    qio vhdx dynamic.vhdx 'write -P 0xaa 0 4k' 'write -P 0x55 2M 8k'
    cp "$work/dynamic.vhdx" "$dir/dynamic.vhdx"
}

# qcow (version 1): written, compressed (qemu-img writes a correct image
# and exits 1), encrypted (opened without its key), odd-sized.
seed_qcow() {
    local dir=$1
    q create -f qcow plain.qcow 4M
    qio qcow plain.qcow 'write -P 0xaa 0 12k' 'write -P 0x55 3M 4k'
    q create -f raw qcow-src.raw 1M
    qio raw qcow-src.raw 'write -P 0x11 0 64k'
    (cd "$work" && qemu-img convert -c -f raw -O qcow qcow-src.raw comp.qcow >/dev/null 2>&1 || true)
    q create -f qcow --object secret,id=k,data=qimg -o encrypt.format=aes,encrypt.key-secret=k aes.qcow 1M
    q create -f qcow odd.qcow 1000
    for f in plain comp aes odd; do cp "$work/$f.qcow" "$dir/$f.qcow"; done
}

seed_raw() {
    local dir=$1
    q create -f raw data.raw 16k
    qio raw data.raw 'write -P 0xaa 0 4k' 'write -P 0x55 8k 4k'
    cp "$work/data.raw" "$dir/data.raw"
    head -c 65536 /dev/zero >"$dir/zeros.raw"
    printf 'odd-sized raw image\n' | dd of="$dir/odd.raw" bs=1000 conv=sync status=none
    : >"$dir/empty.raw"
}

seed_parallels() {
    local dir=$1
    local c
    for c in 4k 64k; do
        q create -f parallels -o cluster_size=$c "p$c.prl" 256k
        qio parallels "p$c.prl" 'write -P 0xaa 0 4k' 'write -P 0x55 130k 8k'
        cp "$work/p$c.prl" "$dir/p$c.prl"
    done
}

# qemu-img cannot make dmg, bochs or cloop images: their seeds are the
# sample images beside the repository (../shared/sample-images), if present.
seed_sample() {
    local dir=$1 sample=$2
    local bz="$root/../shared/sample-images/$sample.bz2"
    if [[ -f $bz ]]; then
        bzcat "$bz" >"$dir/$sample"
    else
        echo "fuzz.sh: no $bz: the corpus starts empty" >&2
    fi
}
seed_dmg() { seed_sample "$1" simple-dmg.dmg; }

# What an NBD server sends to qimg's client in a good session: greeting,
# replies to STRUCTURED_REPLY, SET_META_CONTEXT and GO, then structured
# replies to its read (cookie 1), block status (2), write (3), write
# zeroes (4) and flush (5).
seed_nbd() {
    python3 - "$1/session" <<'PY'
import struct, sys
REP = 0x3e889045565a9
def opt(option, kind, data=b""):
    return struct.pack(">QIII", REP, option, kind, len(data)) + data
def chunk(cookie, kind, data=b"", done=True):
    return struct.pack(">IHHQI", 0x668e33ef, 1 if done else 0, kind, cookie, len(data)) + data
size = 1 << 20
out = b"NBDMAGIC" + b"IHAVEOPT" + struct.pack(">H", 3)
out += opt(8, 1)
out += opt(10, 4, struct.pack(">I", 1) + b"base:allocation") + opt(10, 1)
out += opt(7, 3, struct.pack(">HQH", 0, size, 1 | 4 | 64 | 256)) + opt(7, 1)
out += chunk(1, 1, struct.pack(">Q", 0) + b"\xab" * 65536)
out += chunk(2, 5, struct.pack(">III", 1, 65536, 0) + struct.pack(">II", size - 65536, 3))
for cookie in (3, 4, 5):
    out += chunk(cookie, 0)
open(sys.argv[1], "wb").write(out)
PY
}
# What an HTTP server sends on one connection: the answer to HEAD, then
# to range requests, with a length, chunked, and until the server closes.
seed_http() {
    python3 - "$1" <<'PY'
import sys
head = (b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\nAccept-Ranges: bytes\r\n"
        b"Connection: keep-alive\r\n\r\n")
def part(first, body, framing):
    last = first + 4095
    h = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/1048576\r\n" % (first, last)
    if framing == "length":
        return h + b"Content-Length: 4096\r\n\r\n" + body
    if framing == "chunked":
        return (h + b"Transfer-Encoding: chunked\r\n\r\n" + b"800\r\n" + body[:2048]
                + b"\r\n800;x=y\r\n" + body[2048:] + b"\r\n0\r\nTrailer: z\r\n\r\n")
    return h + b"Connection: close\r\n\r\n" + body
body = bytes(range(256)) * 16
for name, framings in [("lengths", ["length"] * 4), ("chunked", ["chunked", "length"] * 2),
                       ("close", ["length", "length", "length", "close"])]:
    out = head + b"".join(part(i * 4096, body, f) for i, f in enumerate(framings))
    open(sys.argv[1] + "/" + name, "wb").write(out)
PY
}
seed_bochs() { seed_sample "$1" empty.bochs; }
seed_cloop() { seed_sample "$1" simple-pattern.cloop; }

for t in "${targets[@]}"; do
    dir=fuzz/corpus/$t
    mkdir -p "$dir"
    if empty_dir "$dir"; then
        echo "fuzz.sh: making seeds in $dir" >&2
        "seed_$t" "$dir"
    fi
done

# --- Build and run ---------------------------------------------------------

sanitizer=${FUZZ_SANITIZER:-address}
echo "fuzz.sh: building ${targets[*]} with $nightly (sanitizer: $sanitizer)" >&2
if ! (cd fuzz && cargo "+$nightly" fuzz build --sanitizer "$sanitizer"); then
    echo "fuzz.sh: the fuzz targets do not build" >&2
    exit 2
fi
bin_dir=$root/fuzz/target/x86_64-unknown-linux-gnu/release
mkdir -p fuzz/logs

# The panic message (or libFuzzer's verdict) of one artifact, replayed.
verdict() {
    local target=$1 file=$2 out
    out=$(timeout 60 "$bin_dir/$target" -rss_limit_mb=2048 -timeout=10 "$file" 2>&1 || true)
    local msg
    msg=$(grep -m1 -A1 "panicked at" <<<"$out" | tr '\n' ' ' | sed -E 's/ *$//; s/^thread .* panicked at/panicked at/')
    if [[ -z $msg ]]; then
        msg=$(grep -m1 -E "ERROR: (libFuzzer|AddressSanitizer)" <<<"$out" || true)
    fi
    printf '%s\n' "${msg:-no failure when replayed}"
}

# How often a target is started again after a finding within its time.
max_starts=${FUZZ_MAX_STARTS:-20}
# Artifact files of a target's directory, one name a line.
artifact_names() {
    find "$1" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \
        -o -name 'leak-*' \) -printf '%f\n' | sort
}

status=0
summary=()
for t in "${targets[@]}"; do
    corpus=fuzz/corpus/$t
    artifacts=fuzz/artifacts/$t
    log=fuzz/logs/$t.log
    mkdir -p "$artifacts"
    : >"$log"
    marker=$(mktemp)
    echo "fuzz.sh: fuzzing $t for ${time_per_target}s (log: $log)" >&2
    # libFuzzer stops at its first finding: start it again, from the grown
    # corpus, for the time left. A finding that comes back at once (an
    # input of the corpus itself fails) ends the target early.
    dict=()
    case $t in
        qcow2) dict=(-dict="$root/fuzz/dicts/qcow2.dict") ;;
        vmdk | descriptors) dict=(-dict="$root/fuzz/dicts/vmdk.dict") ;;
        vpc) dict=(-dict="$root/fuzz/dicts/vpc.dict") ;;
    esac
    deadline=$((SECONDS + time_per_target))
    execs=0
    starts=0
    trouble=""
    while ((SECONDS < deadline && starts < max_starts)); do
        starts=$((starts + 1))
        before=$(artifact_names "$artifacts")
        run_log=$(mktemp)
        rc=0
        (cd fuzz && cargo "+$nightly" fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" -- \
            -max_total_time=$((deadline - SECONDS)) -rss_limit_mb=2048 -timeout=10 \
            -print_final_stats=1 "${dict[@]}") >"$run_log" 2>&1 || rc=$?
        cat "$run_log" >>"$log"
        n=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$run_log" | tail -1 | tr -dc '0-9')
        rm -f "$run_log"
        execs=$((execs + ${n:-0}))
        after=$(artifact_names "$artifacts")
        if [[ $rc -eq 0 ]]; then
            break
        elif [[ $before == "$after" ]]; then
            if [[ -n $(find "$artifacts" -maxdepth 1 -type f -newer "$marker" -print -quit) ]]; then
                trouble=" (stopped early: the same finding came back at once)"
            else
                trouble=" (libFuzzer exited $rc without a finding: see $log)"
                status=2
            fi
            break
        fi
    done
    corpus_files=$(find "$corpus" -maxdepth 1 -type f | wc -l)
    mapfile -t found < <(find "$artifacts" -maxdepth 1 -type f -newer "$marker" \
        \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | sort)
    rm -f "$marker"
    line="$t: $execs executions, corpus $corpus_files files, ${#found[@]} findings$trouble"
    summary+=("$line")
    echo "== $line"
    if [[ ${#found[@]} -gt 0 ]]; then
        [[ $status -eq 0 ]] && status=1
        # Group this run's findings by what they do when replayed.
        declare -A groups=()
        declare -A example=()
        for f in "${found[@]:0:40}"; do
            v="$(basename "$f" | cut -d- -f1): $(verdict "$t" "$f")"
            groups[$v]=$((${groups[$v]:-0} + 1))
            example[$v]=${example[$v]:-$f}
        done
        for v in "${!groups[@]}"; do
            echo "   ${groups[$v]}x $v"
            echo "      e.g. $root/${example[$v]} ($(stat -c %s "${example[$v]}") bytes)"
        done
        [[ ${#found[@]} -gt 40 ]] && echo "   (grouped the first 40 of ${#found[@]})"
        unset groups example
    fi
done

echo
echo "Summary (${time_per_target}s per target):"
printf '  %s\n' "${summary[@]}"
if [[ $status -eq 1 ]]; then
    echo "Findings are in fuzz/artifacts/TARGET/; replay one with"
    echo "  (cd fuzz && cargo +$nightly fuzz run TARGET artifacts/TARGET/FILE)"
    echo "and keep small ones as regression inputs in tests/fuzz-regressions/TARGET/."
fi
exit $status
