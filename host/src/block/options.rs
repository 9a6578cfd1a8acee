//! Creation options (`-o`): the driver's schema merged with the file protocol's,
//! their validation, `-o help`, and the `Formatting '...'` line.

use crate::cli::parse_size_u64;
use crate::plugins::Driver;
use qimg_driver_api::schema::{CreateOption, OptionType};
use qimg_driver_api::size::{invalid_message, option_message};
use std::collections::BTreeMap;

/// Options the file protocol adds to every format's, in qemu's order.
fn protocol_options() -> Vec<CreateOption> {
    let opt = |name: &str, kind, help: &str| CreateOption {
        name: name.into(),
        kind,
        help: help.into(),
        default: None,
    };
    vec![
        opt("size", OptionType::Size, "Virtual disk size"),
        opt(
            "nocow",
            OptionType::Bool,
            "Turn off copy-on-write (valid only on btrfs)",
        ),
        opt(
            "preallocation",
            OptionType::Str,
            "Preallocation mode (allowed values: off, falloc, full)",
        ),
        opt(
            "extent_size_hint",
            OptionType::Size,
            "Extent size hint for the image file, 0 to disable",
        ),
    ]
}

/// The driver's options, followed (with `protocol`) by the file protocol's
/// options the driver does not define itself.
pub fn schema(driver: &Driver, protocol: bool) -> Vec<CreateOption> {
    let mut list: Vec<CreateOption> = driver.create_options().to_vec();
    if protocol {
        for extra in protocol_options() {
            if !list.iter().any(|o| o.name == extra.name) {
                list.push(extra);
            }
        }
    }
    list
}

/// What `-o help` prints: the format's options, or with a target file name
/// the merged list, sorted by name.
pub fn help_text(driver: &Driver, with_file: bool) -> String {
    let mut list = schema(driver, with_file);
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = if with_file {
        "Supported options:\n".to_string()
    } else {
        format!("Supported {} options:\n", driver.name)
    };
    for o in &list {
        let kind = match o.kind {
            OptionType::Str => "str",
            OptionType::Bool => "bool (on/off)",
            OptionType::Number => "num",
            OptionType::Size => "size",
        };
        let left = format!("{}=<{}>", o.name, kind);
        out.push_str(&format!("  {left:<22} - {}\n", o.help));
    }
    if !with_file {
        out.push_str("\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n");
    }
    out
}

/// A number as qemu's option parser reads it (strtoull in base 0): `0x`
/// hexadecimal, a leading `0` octal, a minus sign wrapping around.
fn parse_number(text: &str) -> Option<u64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let value = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        u64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse().ok()?
    };
    Some(if negative {
        value.wrapping_neg()
    } else {
        value
    })
}

/// Checks `-o` options against the schema, normalising sizes to bytes and
/// booleans to `on`/`off`. Errors carry qemu's wording.
pub fn validate(
    schema: &[CreateOption],
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (name, value) in given {
        let Some(opt) = schema.iter().find(|o| &o.name == name) else {
            return Err(format!("Invalid parameter '{name}'"));
        };
        let value = match opt.kind {
            // Negative integers and values past 64 bits are out of range;
            // qimg also refuses sizes past 2^63 - 1 (which qemu-img takes
            // as negative ones).
            OptionType::Size => match parse_size_u64(value, 1) {
                Ok(v) if v <= i64::MAX as u64 => v.to_string(),
                Ok(_) => return Err(invalid_message(name)),
                Err(e) => return Err(option_message(name, value, e)),
            },
            OptionType::Bool => match value.as_str() {
                "on" | "yes" | "true" => "on".to_string(),
                "off" | "no" | "false" => "off".to_string(),
                _ => return Err(format!("Parameter '{name}' expects 'on' or 'off'")),
            },
            // Shown as qemu prints numbers: signed.
            OptionType::Number => match parse_number(value) {
                Some(v) => (v as i64).to_string(),
                None => return Err(format!("Parameter '{name}' expects a number")),
            },
            OptionType::Str => value.clone(),
        };
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// Drops qemu's `file:` prefix from the name of a data file to create (the
/// image records the file's own name, as qemu's does).
pub fn strip_file_prefix(values: &mut BTreeMap<String, String>) {
    if let Some(name) = values.get_mut("data_file") {
        if let Some(path) = name.strip_prefix("file:") {
            *name = path.to_string();
        }
    }
}

/// The line qemu-img prints before creating: options in schema order, each
/// that is set or has a default. Sizes and numbers are printed normalised,
/// booleans as the user typed them in `given` (`yes`, `true`...), as qemu
/// prints them.
pub fn formatting_line(
    path: &str,
    driver: &Driver,
    values: &BTreeMap<String, String>,
    given: &BTreeMap<String, String>,
) -> String {
    let mut line = format!("Formatting '{path}', fmt={}", driver.name);
    for o in schema(driver, true) {
        let typed = given.get(&o.name).filter(|_| o.kind == OptionType::Bool);
        let value = typed.or(values.get(&o.name)).cloned().or(o.default.clone());
        if let Some(v) = value {
            // Values are printed as an option string takes them: commas doubled.
            line.push_str(&format!(" {}={}", o.name, v.replace(',', ",,")));
        }
    }
    line
}
