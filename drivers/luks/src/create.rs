//! `create -f luks`: QEMU's luks creation options, and a new volume with
//! key slot 0 opening with the secret `key-secret` names.

use crate::error::driver_error;
use qimg_crypt::{volume, LuksOptions};
use qimg_driver_api::schema::{CreateOption, CreateRequest, OptionType};
use qimg_driver_api::{ByteStoreBox, DriverError, HostExt, HostServicesBox, Prealloc};
use qimg_driver_util::option as opt;
use qimg_driver_util::write_all;

/// The options, in QEMU's order (the `Formatting` line's; `-o help` sorts).
pub fn create_options() -> Vec<CreateOption> {
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

/// Creates a luks image of `request.size` bytes in `store`.
pub fn create(
    store: &ByteStoreBox,
    host: &HostServicesBox,
    request: &CreateRequest,
) -> Result<(), DriverError> {
    let options = &request.options;
    // qemu's order: the preallocation mode, unknown names, what a file
    // cannot hold, the secret, then unusable algorithms.
    let prealloc = match options.get("preallocation") {
        Some(name) => Prealloc::parse(name).ok_or_else(|| {
            DriverError::invalid_argument(format!("invalid parameter value: {name}"))
        })?,
        None => Prealloc::OFF,
    };
    let luks =
        LuksOptions::parse(|k| options.get(k).map(String::as_str), "").map_err(driver_error)?;
    if options.get("detached-header").map(String::as_str) == Some("on") {
        // qemu-img 10.0.2 refuses it too when creating a file.
        return Err(DriverError::invalid_argument(
            "Parameter 'detached-header' is unexpected",
        ));
    }
    let id = options.get("key-secret").ok_or_else(|| {
        DriverError::invalid_argument("Parameter 'key-secret' is required for cipher")
    })?;
    let password = zeroize::Zeroizing::new(host.secret_text(id)?);
    let params = luks.params().map_err(driver_error)?;
    let created = volume::create(params, password.as_bytes()).map_err(driver_error)?;
    // The payload is a plain file: metadata preallocation has nothing to do.
    let prealloc = if prealloc == Prealloc::METADATA {
        Prealloc::OFF
    } else {
        prealloc
    };
    let header = &created.header;
    // The file ends where the size says, as qemu makes it (a partial last
    // sector reads zero-padded).
    let total = header
        .payload_bytes()
        .checked_add(request.size)
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
