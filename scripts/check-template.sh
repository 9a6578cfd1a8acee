#!/usr/bin/env bash
# Checks the driver template the way a vendor uses it: copies
# templates/driver out of the repository, builds and unit-tests it there
# against this checkout's driver-api (--locked, with the template's own
# Cargo.lock) into target/compat, installs it with a drop-in manifest
# (plugins.d/example.toml beside a manifest that lists raw) and runs
# `qimg --list-drivers` and `qimg --conformance example`.
#
#   bash scripts/check-template.sh [--release]
#
# Exits non-zero if any step fails or any conformance check does not pass.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

profile=debug
flags=()
case "${1:-}" in
    "") ;;
    --release) profile=release; flags=(--release) ;;
    *) echo "check-template.sh: unknown argument '$1'" >&2; exit 2 ;;
esac

cargo build "${flags[@]}" -p qimg -p qimg-raw

work="$(mktemp -d /tmp/qimg-template.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cp -r templates/driver "$work/driver"
rm -rf "$work/driver/target"
sed -i "s|path = \"../../driver-api\"|path = \"$root/driver-api\"|" "$work/driver/Cargo.toml"
grep -q "path = \"$root/driver-api\"" "$work/driver/Cargo.toml" || {
    echo "check-template.sh: the template no longer depends on ../../driver-api" >&2
    exit 1
}
cargo_args=(--locked --manifest-path "$work/driver/Cargo.toml" --target-dir "$root/target/compat")
cargo build "${flags[@]}" "${cargo_args[@]}"
cargo test "${flags[@]}" --quiet "${cargo_args[@]}"
lib="$root/target/compat/$profile/libqimg_example.so"

mkdir -p "$work/etc/plugins.d"
cat > "$work/etc/plugins.toml" <<TOML
search_paths = ["$root/target/$profile"]
[[driver]]
name = "raw"
library = "libqimg_raw.so"
TOML
cat > "$work/etc/plugins.d/example.toml" <<TOML
[[driver]]
name = "example"
library = "$lib"
TOML

qimg="$root/target/$profile/qimg"
"$qimg" --plugins "$work/etc/plugins.toml" --list-drivers
"$qimg" --plugins "$work/etc/plugins.toml" --conformance example
