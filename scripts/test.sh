#!/usr/bin/env bash
# Runs the whole test suite: builds every crate (the binary and the driver
# libraries the integration tests load), then runs unit and integration tests
# against the real qemu-img. Installs qemu-img first where it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-img >/dev/null || ! command -v qemu-io >/dev/null; then
    echo "qemu-img/qemu-io not found: installing qemu-utils" >&2
    apt-get update -qq && apt-get install -y -qq qemu-utils >/dev/null
fi
# Tests compare the data blocks of qimg's and qemu-img's files with filefrag.
if ! command -v filefrag >/dev/null; then
    echo "filefrag not found: installing e2fsprogs" >&2
    apt-get update -qq && apt-get install -y -qq e2fsprogs >/dev/null
fi
# The luks tests check qimg's images with cryptsetup (skipped, with a
# message, where it cannot be installed).
if ! command -v cryptsetup >/dev/null; then
    echo "cryptsetup not found: installing cryptsetup-bin" >&2
    { apt-get update -qq && apt-get install -y -qq cryptsetup-bin >/dev/null; } ||
        echo "warning: cryptsetup could not be installed; its luks checks will be skipped" >&2
fi

# The network-store tests serve images with qemu-nbd, nbdkit and nginx (TLS
# certificates made with openssl), and
# check qimg against qemu-img's own http driver (Debian's qemu-block-extra of
# the same version as qemu-utils, from bookworm-backports like it). Tests whose
# server is missing say so and are skipped.
if ! command -v nbdkit >/dev/null || ! command -v nginx >/dev/null || ! command -v openssl >/dev/null; then
    echo "nbdkit/nginx/openssl not found: installing them" >&2
    { apt-get update -qq && apt-get install -y -qq nbdkit nginx openssl >/dev/null; } ||
        echo "warning: nbdkit/nginx/openssl could not be installed; their tests will be skipped" >&2
fi
if ! ls /usr/lib/*/qemu/block-curl.so >/dev/null 2>&1; then
    echo "qemu-img's http driver not found: installing qemu-block-extra" >&2
    qemu_version=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [[ $qemu_version == *bpo* ]] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d; then
        echo 'deb http://deb.debian.org/debian bookworm-backports main' >/etc/apt/sources.list.d/qimg-backports.list
    fi
    { apt-get update -qq && apt-get install -y -qq "qemu-block-extra=$qemu_version" >/dev/null; } ||
        echo "warning: qemu-block-extra could not be installed; http comparisons will be skipped" >&2
fi

# A clean build gains nothing from incremental caches, and the crates built
# outside the workspace (vendor drivers, the old-ABI copies) keep line tables
# only, as the workspace does: CI's disk must hold every build at once.
export CARGO_INCREMENTAL=0
export CARGO_PROFILE_DEV_DEBUG=line-tables-only

cargo fmt --all -- --check
cargo build --workspace --all-targets
cargo clippy --workspace --all-targets -- -D warnings
# Crates built outside the workspace (the vendor template, the old-ABI driver,
# the vendor drivers in vendor/) follow the same rules.
for crate in templates/driver tests/compat/flat-1.7 vendor/bochs vendor/cloop vendor/dmg vendor/qcow; do
    cargo fmt --manifest-path "$crate/Cargo.toml" -- --check
    cargo clippy --locked --quiet --manifest-path "$crate/Cargo.toml" \
        --target-dir target/compat -- -D warnings
done
# The vendor kit: driver-api must package on its own without a warning.
package_log=$(cargo package -p qimg-driver-api --allow-dirty --no-verify 2>&1)
if grep -q "^warning" <<< "$package_log"; then
    echo "$package_log" >&2
    echo "cargo package of qimg-driver-api printed warnings" >&2
    exit 1
fi
# The vendor drivers (dmg, bochs, cloop, qcow) are built as a vendor builds them,
# in their own workspace, into target/compat beside the template (sharing its
# abi_stable build); the integration tests load them through their drop-in.
vendor=(--locked --manifest-path vendor/Cargo.toml --target-dir target/compat)
cargo build "${vendor[@]}"
cargo test --quiet "${vendor[@]}"
cargo test --workspace -- --test-threads="${QIMG_TEST_THREADS:-4}"
