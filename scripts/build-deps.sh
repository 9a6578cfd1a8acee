# Sourced by the scripts that build qimg: installs, with apt, the C library
# headers a build needs when they are missing. qimg-crypt links the system's
# OpenSSL (libcrypto) for AES-XTS, found through pkg-config.
if ! pkg-config --exists openssl 2>/dev/null; then
    echo "OpenSSL headers not found: installing libssl-dev and pkg-config" >&2
    apt-get update -qq && apt-get install -y -qq libssl-dev pkg-config >/dev/null
fi
