//! `create`: the options qemu-img's qcow driver takes, checked in its
//! order with its messages, and the layout it writes: the header, the
//! backing file name right after it, then the L1 table at the next 8-byte
//! boundary, written as zeroed 512-byte sectors.

use crate::header::{self, Header, CRYPT_AES, CRYPT_NONE, HEADER_SIZE};
use qimg_driver_api::schema::{CreateOption, CreateRequest, OptionType};
use qimg_driver_api::{ByteStoreBox, DriverError, HostExt, HostServicesBox, StoreExt};
use std::collections::BTreeMap;

/// EFBIG: the host words it as qemu-img's "image size is too large".
const EFBIG: i32 = 27;
/// The zeros the L1 table is written with, a chunk at a time.
const ZERO_CHUNK: usize = 1 << 20;

/// The options `create -o` accepts, in the order qemu declares them (the
/// order of the `Formatting` line), with qemu's help texts.
pub fn options() -> Vec<CreateOption> {
    let opt = |name: &str, kind, help: &str| CreateOption {
        name: name.into(),
        kind,
        help: help.into(),
        default: None,
    };
    vec![
        opt("size", OptionType::Size, "Virtual disk size"),
        opt("backing_file", OptionType::Str, "File name of a base image"),
        opt(
            "backing_fmt",
            OptionType::Str,
            "Format of the backing image",
        ),
        opt(
            "encryption",
            OptionType::Bool,
            "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
        ),
        opt(
            "encrypt.format",
            OptionType::Str,
            "Encrypt the image, format choices: 'aes'",
        ),
        opt(
            "encrypt.key-secret",
            OptionType::Str,
            "ID of the secret that provides the AES encryption key",
        ),
    ]
}

/// What the options ask for.
struct Params {
    /// Guest size, rounded up to whole sectors.
    size: u64,
    /// The backing file name to record.
    backing: Option<String>,
    /// The secret of an encrypted image.
    key_secret: Option<String>,
}

/// Checks the options as qemu does: the encryption format first, then its
/// secret, then the size.
fn params(size: u64, options: &BTreeMap<String, String>) -> Result<Params, DriverError> {
    let key_secret = options.get("encrypt.key-secret").cloned();
    let encrypted = match options.get("encrypt.format").map(String::as_str) {
        Some("aes") => true,
        Some("luks") => {
            return Err(DriverError::invalid_argument(
                "Unsupported encryption format",
            ))
        }
        Some(other) => {
            return Err(DriverError::invalid_argument(format!(
                "Parameter 'format' does not accept value '{other}'"
            )))
        }
        None if options.get("encryption").is_some_and(|v| v == "on") => true,
        None if key_secret.is_some() => {
            return Err(DriverError::invalid_argument(
                "Parameter 'encrypt.format' is missing",
            ))
        }
        None => false,
    };
    if encrypted && key_secret.is_none() {
        return Err(DriverError::invalid_argument(
            "Parameter 'encrypt.key-secret' is required for cipher",
        ));
    }
    if size == 0 {
        return Err(DriverError::invalid_argument(
            "Image size is too small, cannot be zero length",
        ));
    }
    let size = size.checked_next_multiple_of(512).ok_or_else(too_large)?;
    // qemu writes no backing name for vvfat's "fat:" pseudo-file.
    let backing = options
        .get("backing_file")
        .filter(|name| name.as_str() != "fat:")
        .cloned();
    Ok(Params {
        size,
        backing,
        key_secret: key_secret.filter(|_| encrypted),
    })
}

/// The error for an image whose L1 table qemu could not hold.
fn too_large() -> DriverError {
    DriverError::from_errno(EFBIG, "Image too large")
}

/// Writes a new image into the empty `store`.
pub fn create(
    store: &ByteStoreBox,
    host: &HostServicesBox,
    request: &CreateRequest,
) -> Result<(), DriverError> {
    let p = params(request.size, &request.options)?;
    // The secret must exist; qemu checks it before writing anything.
    if let Some(id) = &p.key_secret {
        host.secret_text(id)?;
    }
    // Images with a backing file have 512-byte clusters, so that a write
    // never needs the backing file's data around it; their L2 tables hold
    // 4096 entries (32 KiB). The others have 4 KiB clusters and tables.
    let (cluster_bits, l2_bits) = if p.backing.is_some() {
        (9, 12)
    } else {
        (12, 9)
    };
    let name = p.backing.as_deref().unwrap_or("");
    let name_len = u32::try_from(name.len())
        .ok()
        .filter(|&n| n <= header::MAX_BACKING_NAME)
        .ok_or_else(|| DriverError::invalid_argument("Backing file name too long"))?;
    // qimg refuses what qemu-img would create and then refuse to open.
    let l1_entries =
        header::l1_entries_for(p.size, cluster_bits, l2_bits).map_err(|_| too_large())?;
    let l1_table_offset = (HEADER_SIZE as u64 + u64::from(name_len)).next_multiple_of(8);
    let h = Header {
        backing_file_offset: if name.is_empty() {
            0
        } else {
            HEADER_SIZE as u64
        },
        backing_file_size: name_len,
        size: p.size,
        cluster_bits,
        l2_bits,
        crypt_method: if p.key_secret.is_some() {
            CRYPT_AES
        } else {
            CRYPT_NONE
        },
        l1_table_offset,
    };
    store.write_all_at(0, &h.to_bytes())?;
    if !name.is_empty() {
        store.write_all_at(HEADER_SIZE as u64, name.as_bytes())?;
    }
    // The table is written as zeros, in whole sectors, as qemu does.
    let mut left = (l1_entries * 8).next_multiple_of(512);
    let zeros = vec![0u8; ZERO_CHUNK.min(left as usize)];
    let mut at = l1_table_offset;
    while left > 0 {
        let n = left.min(zeros.len() as u64);
        store.write_all_at(at, &zeros[..n as usize])?;
        at += n;
        left -= n;
    }
    store.sync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn encryption_needs_a_format_and_a_secret() {
        let missing = |o: &[(&str, &str)]| params(1 << 20, &opts(o)).err().map(|e| e.message);
        assert_eq!(
            missing(&[("encryption", "on")]).as_deref(),
            Some("Parameter 'encrypt.key-secret' is required for cipher")
        );
        assert_eq!(
            missing(&[("encrypt.key-secret", "s")]).as_deref(),
            Some("Parameter 'encrypt.format' is missing")
        );
        assert!(missing(&[("encrypt.format", "aes"), ("encrypt.key-secret", "s")]).is_none());
        let p = params(1000, &opts(&[])).expect("plain");
        assert_eq!((p.size, p.key_secret), (1024, None));
    }
}
