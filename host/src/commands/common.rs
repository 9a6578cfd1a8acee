//! Pieces every command shares: help, `--object`, option checks, opening images.

use crate::block::services::{register_secret, secret_bytes};
use crate::block::{secret, tls};
use crate::cli::{parse_opts, parse_size, program, Parsed, SizeError};
use crate::error::{fail, CmdError};
use crate::store::CacheMode;

/// Prints a command's help (`{prog}` in `text` becomes the program name).
pub fn print_help(text: &str) -> i32 {
    out!("{}", text.replace("{prog}", &program()));
    0
}

/// Handles every `--object` option (secrets and x509 TLS credentials; other
/// types are refused as qemu-img refuses types it does not know).
pub fn objects(parsed: &Parsed) -> Result<(), CmdError> {
    let mut ids = std::collections::HashSet::new();
    for spec in parsed.all("object") {
        if spec == "help" || spec == "?" {
            outln!("List of user creatable objects:\n  secret\n  tls-creds-x509");
            return Err(CmdError::Exit(0));
        }
        let items = parse_opts(spec, Some("qom-type")).map_err(fail)?;
        let get = |k: &str| {
            items
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let kind = get("qom-type").unwrap_or_default();
        // `TYPE,help` lists the type's properties (an unknown type: the
        // types), and ends the command, as in qemu-img.
        if items.iter().any(|(k, _)| k == "help" || k == "?") {
            match object_properties(&kind) {
                Some(text) => out!("{text}"),
                None => outln!("List of user creatable objects:\n  secret\n  tls-creds-x509"),
            }
            return Err(CmdError::Exit(0));
        }
        if kind != "secret" && kind != "tls-creds-x509" {
            return Err(fail(format!(
                "Parameter 'qom-type' does not accept value '{kind}'"
            )));
        }
        let id = get("id").ok_or_else(|| fail("Parameter 'id' is missing"))?;
        // qemu-img checks the properties' values, then adds the object
        // under its id, then completes it (reads files).
        let base64 = match get("format").as_deref() {
            None | Some("raw") => false,
            Some("base64") if kind == "secret" => true,
            Some(other) if kind == "secret" => {
                return Err(fail(format!(
                    "Parameter 'format' does not accept value '{other}'"
                )))
            }
            Some(_) => false,
        };
        if !ids.insert(id.clone()) {
            return Err(fail(format!(
                "attempt to add duplicate property '{id}' to object (type 'container')"
            )));
        }
        if kind == "tls-creds-x509" {
            let keys: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
            tls::register(&id, tls::load(&keys, get).map_err(fail)?);
            continue;
        }
        let input = match (get("data"), get("file")) {
            (Some(data), None) => data.into_bytes(),
            (None, Some(path)) => read_secret_file(&path)?,
            (Some(_), Some(_)) => return Err(fail("'file' and 'data' are mutually exclusive")),
            (None, None) => return Err(fail("Either 'file' or 'data' must be provided")),
        };
        let value = match get("keyid") {
            Some(keyid) => {
                let key = secret_bytes(&keyid)
                    .ok_or_else(|| fail(format!("No secret with id '{keyid}'")))?;
                secret::decrypt(&key, get("iv").as_deref(), &input, base64).map_err(fail)?
            }
            None if base64 => {
                secret::decode_base64(&input).ok_or_else(|| fail("Invalid base64 data"))?
            }
            None => input,
        };
        register_secret(&id, value);
    }
    Ok(())
}

/// The contents of a secret's `file`, refused in glib's words as qemu-img
/// words them.
fn read_secret_file(path: &str) -> Result<Vec<u8>, CmdError> {
    use std::io::Read;
    let text = |e: &std::io::Error| qimg_driver_api::error::io_message(e);
    let mut file = std::fs::File::open(path).map_err(|e| {
        fail(format!(
            "Unable to read {path}: Failed to open file \u{201c}{path}\u{201d}: {}",
            text(&e)
        ))
    })?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| {
        fail(format!(
            "Unable to read {path}: Error reading file \u{201c}{path}\u{201d}: {}",
            text(&e)
        ))
    })?;
    Ok(bytes)
}

/// `-f` and `--image-opts` are mutually exclusive in qemu-img.
pub fn check_image_opts(parsed: &Parsed, format_key: &str) -> Result<(), CmdError> {
    if parsed.has("image-opts") && parsed.has(format_key) {
        return Err(fail("--image-opts and --format are mutually exclusive"));
    }
    Ok(())
}

/// Parses a `-t`/`-T` cache mode (`what` is `cache` or `source cache`).
pub fn cache_mode(
    value: Option<&str>,
    default: CacheMode,
    what: &str,
) -> Result<CacheMode, CmdError> {
    match value {
        None => Ok(default),
        Some(name) => {
            CacheMode::parse(name).ok_or_else(|| fail(format!("Invalid {what} option: {name}")))
        }
    }
}

/// The `--object TYPE,help` text of the object types qimg creates, in
/// qemu-img's words.
fn object_properties(kind: &str) -> Option<&'static str> {
    match kind {
        "secret" => Some(
            "secret options:\n  data=<string>\n  file=<string>\n  format=<QCryptoSecretFormat>\n  iv=<string>\n  keyid=<string>\n",
        ),
        "tls-creds-x509" => Some(
            "tls-creds-x509 options:\n  dir=<string>\n  endpoint=<QCryptoTLSCredsEndpoint>\n  passwordid=<string>\n  priority=<string>\n  sanity-check=<bool>\n  verify-peer=<bool>\n",
        ),
        _ => None,
    }
}

/// Parses a numeric option as qemu-img's `cvtnum` does, with its two messages:
/// `Invalid NAME specified: 'X'.` and `Invalid NAME specified. Must be between MIN and MAX.`
pub fn number(name: &str, text: &str, min: u64, max: u64, sizes: bool) -> Result<u64, CmdError> {
    let parsed = if sizes {
        parse_size(text, 1)
    } else if text.trim_start().starts_with('-') {
        Err(SizeError::TooLarge)
    } else {
        c_integer(text)
    };
    let out_of_range = || {
        fail(format!(
            "Invalid {name} specified. Must be between {min} and {max}."
        ))
    };
    match parsed {
        Ok(v) if v >= min && v <= max => Ok(v),
        Ok(_) | Err(SizeError::TooLarge) => Err(out_of_range()),
        Err(SizeError::Invalid)
            if text.trim_start().starts_with('-')
                && text.trim_start()[1..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit()) =>
        {
            Err(out_of_range())
        }
        Err(SizeError::Invalid) => Err(fail(format!("Invalid {name} specified: '{text}'."))),
    }
}

/// Parses a whole non-negative integer as C's `strtoull` with base 0 does:
/// an optional `+`, then `0x` hexadecimal, `0` octal or decimal digits.
fn c_integer(text: &str) -> Result<u64, SizeError> {
    let text = text.trim_start();
    let text = text.strip_prefix('+').unwrap_or(text);
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None if text.len() > 1 && text.starts_with('0') => (&text[1..], 8),
        None => (text, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(SizeError::Invalid);
    }
    u64::from_str_radix(digits, radix).map_err(|_| SizeError::TooLarge)
}

/// The `-o` lists given as option `key`, refused as qemu-img refuses them
/// when one is empty or starts or ends with a lone comma.
pub fn option_lists<'a>(p: &'a Parsed, key: &str) -> Result<Vec<&'a str>, CmdError> {
    let lists = p.all(key);
    let valid = |list: &&str| {
        let trailing = list.ends_with(',') && !list.ends_with(",,");
        !list.is_empty() && !list.starts_with(',') && !trailing
    };
    match lists.iter().find(|l| !valid(l)) {
        Some(bad) => Err(fail(format!("Invalid option list: {bad}"))),
        None => Ok(lists),
    }
}

/// Opens an image read-write with the usual locks (qemu-img's write opens),
/// printing the probed-raw warning where qemu-img does.
pub fn open_rw(
    name: &str,
    format: Option<&str>,
    image_opts: bool,
    cache: CacheMode,
) -> Result<crate::block::BlockImage, CmdError> {
    let request = crate::block::OpenRequest {
        write: true,
        cache,
        lock: Some(crate::block::LockSpec::READ_WRITE),
        ..crate::block::OpenRequest::read(name, format, image_opts)
    };
    crate::block::open_image(&request).map_err(|e| fail(e.message.to_string()))
}

/// qemu-img's refusal of `-U` for a command that writes `name`: made when
/// it opens the image, after it looked up `format`.
pub fn refuse_shared_write(name: &str, format: Option<&str>) -> CmdError {
    if let Some(f) = format {
        if let Err(e) = crate::block::image::driver_for(f) {
            return fail(format!("Could not open '{name}': {}", e.message));
        }
    }
    fail(format!(
        "Could not open '{name}': force-share=on can only be used with read-only images"
    ))
}

/// Sends a metadata request (snapshots, bitmaps, amend) to the image's driver.
pub fn metadata(
    image: &crate::block::BlockImage,
    request: &qimg_driver_api::schema::MetadataRequest,
) -> Result<serde_json::Value, qimg_driver_api::DriverError> {
    let text = serde_json::to_string(request)
        .map_err(|e| qimg_driver_api::DriverError::invalid_argument(e.to_string()))?;
    let reply = image.metadata(&text)?;
    serde_json::from_str(&reply).map_err(|e| {
        qimg_driver_api::DriverError::new(
            qimg_driver_api::ErrorKind::OTHER,
            format!("bad reply from driver: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_use_cvtnum_messages() {
        let msg = |r: Result<u64, CmdError>| match r {
            Err(CmdError::Failed(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(number("count", "5", 1, 10, false).unwrap(), 5);
        assert_eq!(
            msg(number("count", "0", 1, 10, false)),
            "Invalid count specified. Must be between 1 and 10."
        );
        assert_eq!(
            msg(number("count", "-1", 1, 10, false)),
            "Invalid count specified. Must be between 1 and 10."
        );
        assert_eq!(
            msg(number("count", "x", 1, 10, false)),
            "Invalid count specified: 'x'."
        );
        assert_eq!(number("bs", "64k", 1, 1 << 31, true).unwrap(), 65536);
        // Plain numbers are C integers: octal, hexadecimal, a plus sign.
        assert_eq!(number("count", "010", 1, 100, false).unwrap(), 8);
        assert_eq!(number("count", "0x10", 1, 100, false).unwrap(), 16);
        assert_eq!(number("count", "+5", 1, 100, false).unwrap(), 5);
        assert_eq!(
            msg(number("count", "09", 1, 100, false)),
            "Invalid count specified: '09'."
        );
    }
}
