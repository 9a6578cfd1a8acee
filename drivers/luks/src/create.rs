//! `create -f luks`: QEMU's luks creation options, and a new volume with
//! key slot 0 opening with the secret `key-secret` names.

use crate::error::driver_error;
use qimg_crypt::cipher::{CipherAlg, CipherMode, CipherSpec, IvGenAlg};
use qimg_crypt::volume::{self, CreateParams, DEFAULT_ITER_TIME_MS};
use qimg_crypt::HashAlg;
use qimg_driver_api::schema::{CreateOption, CreateRequest, OptionType};
use qimg_driver_api::{ByteStoreBox, DriverError, HostExt, HostServicesBox, Prealloc};
use qimg_driver_util::write_all;
use std::collections::BTreeMap;

/// The options, in QEMU's order (the `Formatting` line's; `-o help` sorts).
pub fn create_options() -> Vec<CreateOption> {
    let opt = |name: &str, kind, help: &str| CreateOption {
        name: name.into(),
        kind,
        help: help.into(),
        default: None,
    };
    vec![
        opt("size", OptionType::Size, "Virtual disk size"),
        opt(
            "key-secret",
            OptionType::Str,
            "ID of the secret that provides the keyslot passphrase",
        ),
        opt(
            "cipher-alg",
            OptionType::Str,
            "Name of encryption cipher algorithm",
        ),
        opt(
            "cipher-mode",
            OptionType::Str,
            "Name of encryption cipher mode",
        ),
        opt(
            "ivgen-alg",
            OptionType::Str,
            "Name of IV generator algorithm",
        ),
        opt(
            "ivgen-hash-alg",
            OptionType::Str,
            "Name of IV generator hash algorithm",
        ),
        opt(
            "hash-alg",
            OptionType::Str,
            "Name of encryption hash algorithm",
        ),
        opt(
            "iter-time",
            OptionType::Number,
            "Time to spend in PBKDF in milliseconds",
        ),
        opt(
            "detached-header",
            OptionType::Bool,
            "Create a detached LUKS header",
        ),
    ]
}

/// QEMU's values of `cipher-alg` (QCryptoCipherAlgo) that are not AES.
const OTHER_CIPHERS: [&str; 12] = [
    "des",
    "3des",
    "cast5-128",
    "serpent-128",
    "serpent-192",
    "serpent-256",
    "twofish-128",
    "twofish-192",
    "twofish-256",
    "sm4",
    "des-rfb",
    "cast5",
];
/// QEMU's values of `cipher-mode` other than xts and cbc.
const OTHER_MODES: [&str; 2] = ["ecb", "ctr"];
/// QEMU's hash names this crate lacks.
const OTHER_HASHES: [&str; 3] = ["md5", "ripemd160", "sm3"];

fn refused(name: &str, value: &str) -> DriverError {
    DriverError::invalid_argument(format!(
        "Parameter '{name}' does not accept value '{value}'"
    ))
}

fn not_yet(name: &str, value: &str) -> DriverError {
    DriverError::unsupported(format!(
        "{name} '{value}' is not supported by qimg's luks driver yet"
    ))
}

/// What a new volume is made of, from the `-o` options.
pub struct Params {
    /// Cipher, mode and IV generator.
    pub spec: CipherSpec,
    /// PBKDF2's and the AF splitter's hash.
    pub hash: HashAlg,
    /// `iter-time` in milliseconds.
    pub iter_time_ms: u64,
}

impl Params {
    /// Reads the options, QEMU's defaults filling the gaps (aes-256, xts,
    /// plain64, sha256, and sha256 for ESSIV).
    pub fn from_options(options: &BTreeMap<String, String>) -> Result<Params, DriverError> {
        let get = |k: &str| options.get(k).map(String::as_str);
        let alg = match get("cipher-alg") {
            None => CipherAlg::Aes256,
            Some(v) => CipherAlg::parse(v).map_err(|_| {
                if OTHER_CIPHERS.contains(&v) {
                    not_yet("Cipher", v)
                } else {
                    refused("cipher-alg", v)
                }
            })?,
        };
        let mode = match get("cipher-mode") {
            None => CipherMode::Xts,
            Some(v) => CipherMode::parse(v).map_err(|_| {
                if OTHER_MODES.contains(&v) {
                    not_yet("Cipher mode", v)
                } else {
                    refused("cipher-mode", v)
                }
            })?,
        };
        let ivgen = match get("ivgen-alg") {
            None => IvGenAlg::Plain64,
            Some(v) => IvGenAlg::parse(v).map_err(|_| refused("ivgen-alg", v))?,
        };
        let hash_of = |name: &str, v: &str| {
            HashAlg::parse(v).map_err(|_| {
                if OTHER_HASHES.contains(&v) {
                    not_yet("Hash algorithm", v)
                } else {
                    refused(name, v)
                }
            })
        };
        let hash = match get("hash-alg") {
            None => HashAlg::Sha256,
            Some(v) => hash_of("hash-alg", v)?,
        };
        let ivgen_hash = match get("ivgen-hash-alg") {
            Some(v) => Some(hash_of("ivgen-hash-alg", v)?),
            None if ivgen == IvGenAlg::Essiv => Some(HashAlg::Sha256),
            None => None,
        };
        let iter_time_ms = match get("iter-time") {
            None => DEFAULT_ITER_TIME_MS,
            Some(v) => v.parse().map_err(|_| {
                DriverError::invalid_argument("Parameter 'iter-time' expects a number")
            })?,
        };
        let spec = CipherSpec {
            alg,
            mode,
            ivgen,
            ivgen_hash,
        };
        spec.check().map_err(driver_error)?;
        Ok(Params {
            spec,
            hash,
            iter_time_ms,
        })
    }
}

/// Creates a luks image of `request.size` bytes in `store`.
pub fn create(
    store: &ByteStoreBox,
    host: &HostServicesBox,
    request: &CreateRequest,
) -> Result<(), DriverError> {
    let options = &request.options;
    if options.get("detached-header").map(String::as_str) == Some("on") {
        // qemu-img 10.0.2 refuses it too when creating a file.
        return Err(DriverError::invalid_argument(
            "Parameter 'detached-header' is unexpected",
        ));
    }
    let prealloc = match options.get("preallocation") {
        Some(name) => match Prealloc::parse(name) {
            Some(Prealloc::METADATA) | None => {
                return Err(DriverError::invalid_argument(format!(
                    "Invalid parameter '{name}'"
                )))
            }
            Some(mode) => mode,
        },
        None => Prealloc::OFF,
    };
    let id = options.get("key-secret").ok_or_else(|| {
        DriverError::invalid_argument("Parameter 'key-secret' is required for cipher")
    })?;
    let password = zeroize::Zeroizing::new(host.secret_text(id)?);
    let params = Params::from_options(options)?;
    let created = volume::create(
        CreateParams {
            spec: params.spec,
            hash: params.hash,
            iter_time_ms: params.iter_time_ms,
        },
        password.as_bytes(),
    )
    .map_err(driver_error)?;
    let header = &created.header;
    let size = request.size.next_multiple_of(qimg_crypt::SECTOR_SIZE);
    let total = header
        .payload_bytes()
        .checked_add(size)
        .ok_or_else(|| DriverError::invalid_argument("The image size is too large"))?;
    store.set_len(total, prealloc).into_result()?;
    write_all(store, 0, &header.to_bytes().map_err(driver_error)?)?;
    let slot = &header.key_slots[0];
    write_all(
        store,
        u64::from(slot.key_material_offset) * qimg_crypt::SECTOR_SIZE,
        &created.material,
    )?;
    store.flush().into_result()
}

/// The options `amend -o` takes: key-slot changes, as `amend -o help`
/// lists them.
pub fn amend_options() -> Vec<CreateOption> {
    let opt = |name: &str, kind, help: &str| CreateOption {
        name: name.into(),
        kind,
        help: help.into(),
        default: None,
    };
    vec![
        opt(
            "iter-time",
            OptionType::Number,
            "Time to spend in PBKDF in milliseconds",
        ),
        opt(
            "keyslot",
            OptionType::Number,
            "Select a single keyslot to modify explicitly",
        ),
        opt(
            "new-secret",
            OptionType::Str,
            "New secret to set in the matching keyslots. Empty string to erase",
        ),
        opt(
            "old-secret",
            OptionType::Str,
            "Select all keyslots that match this password",
        ),
        opt(
            "state",
            OptionType::Str,
            "Select new state of affected keyslots (active/inactive)",
        ),
    ]
}
