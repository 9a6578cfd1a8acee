#!/usr/bin/env bash
# Installs qimg, its driver libraries and a manifest into a prefix:
#
#   bash scripts/install.sh --prefix /usr/local [--drivers raw,qcow2] [--from DIR]
#                           [--vendor[=DIR]]
#
#   PREFIX/bin/qimg
#   PREFIX/lib/qimg/libqimg_<format>.so     the chosen drivers (default: all)
#   PREFIX/etc/qimg/plugins.toml            lists and enables exactly those
#   PREFIX/etc/qimg/plugins.d/              where vendor packages drop theirs
#
# The installed qimg finds PREFIX/etc/qimg/plugins.toml from its own location
# (../etc/qimg beside its bin directory), so it needs no environment variable.
# Without --from, the release build is made first; --from takes the binary
# and libraries from an existing build directory (such as target/debug).
#
# --vendor also installs the vendor drivers (vendor/: dmg, bochs, cloop, qcow) as
# a vendor's package would: their libraries into PREFIX/lib/qimg and their
# own drop-in manifest, vendor/plugins.d/vendor.toml, into
# PREFIX/etc/qimg/plugins.d/. Their libraries come from DIR, or are built
# (release, in their own workspace, into target/compat).
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=""
drivers="raw,qcow2,vmdk,luks,vdi,vpc,qed,parallels,vhdx"
from=""
vendor=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="$2"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        --drivers) drivers="$2"; shift 2 ;;
        --drivers=*) drivers="${1#--drivers=}"; shift ;;
        --from) from="$2"; shift 2 ;;
        --from=*) from="${1#--from=}"; shift ;;
        --vendor) vendor="build"; shift ;;
        --vendor=*) vendor="${1#--vendor=}"; shift ;;
        *) echo "install.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
if [ -z "$prefix" ]; then
    echo "install.sh: --prefix DIR is required" >&2
    exit 2
fi
if [ -z "$from" ]; then
    packages=(-p qimg)
    for d in ${drivers//,/ }; do packages+=(-p "qimg-$d"); done
    cargo build --release "${packages[@]}"
    from="target/release"
fi

mkdir -p "$prefix/bin" "$prefix/lib/qimg" "$prefix/etc/qimg/plugins.d"
install -m 755 "$from/qimg" "$prefix/bin/qimg"
manifest="$prefix/etc/qimg/plugins.toml"
{
    echo "# Installed by qimg's scripts/install.sh. Vendor drivers go in plugins.d/*.toml."
    echo 'search_paths = ["${exe_dir}/../lib/qimg"]'
} > "$manifest.new"
IFS=',' read -r -a names <<< "$drivers"
for name in "${names[@]}"; do
    lib="libqimg_${name}.so"
    if [ ! -f "$from/$lib" ]; then
        echo "install.sh: no driver '$name' in $from ($lib missing)" >&2
        rm -f "$manifest.new"
        exit 1
    fi
    install -m 644 "$from/$lib" "$prefix/lib/qimg/$lib"
    sha=$(sha256sum "$from/$lib" | cut -d' ' -f1)
    printf '\n[[driver]]\nname = "%s"\nlibrary = "%s"\nenabled = true\nsha256 = "%s"\n' \
        "$name" "$lib" "$sha" >> "$manifest.new"
done
mv "$manifest.new" "$manifest"
if [ -n "$vendor" ]; then
    if [ "$vendor" = build ]; then
            cargo build --release --locked --manifest-path vendor/Cargo.toml --target-dir target/compat
        vendor="target/compat/release"
    fi
    for name in dmg bochs cloop qcow; do
        lib="libqimg_${name}.so"
        if [ ! -f "$vendor/$lib" ]; then
            echo "install.sh: no vendor driver '$name' in $vendor ($lib missing)" >&2
            exit 1
        fi
        install -m 644 "$vendor/$lib" "$prefix/lib/qimg/$lib"
    done
    install -m 644 vendor/plugins.d/vendor.toml "$prefix/etc/qimg/plugins.d/vendor.toml"
    drivers="$drivers and vendor drivers dmg,bochs,cloop,qcow"
fi
echo "installed qimg with drivers ${drivers} into $prefix"
