//! Sizes as qemu writes them (`qemu_strtosz`): a decimal number with an
//! optional unit suffix, or a `0x` number. The host parses command lines with it; drivers
//! parse their size-valued open options (`HostServices::open_option`) the
//! same way.

/// Error of a size that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number with a valid suffix.
    Invalid,
    /// Out of range: negative, or too large for 64 bits (with
    /// [`parse_size`], for 63).
    TooLarge,
}

/// qemu's message for the size-valued option `name` whose `value` did not
/// parse as a size (QemuOpts' `parse_option_size`).
pub fn option_message(name: &str, value: &str, error: SizeError) -> String {
    match error {
        SizeError::TooLarge => format!("Value '{value}' is out of range for parameter '{name}'"),
        SizeError::Invalid => invalid_message(name),
    }
}

/// qemu's message for an option `name` that is not a size at all.
pub fn invalid_message(name: &str) -> String {
    format!(
        "Parameter '{name}' expects a non-negative number below 2^64\n\
         Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
         and exabytes, respectively."
    )
}

/// Parses a size as qemu's `qemu_strtosz` does: a decimal number (a fraction is
/// allowed only with a unit larger than a byte), optionally followed by one
/// of `b`/`B` (bytes), `k`/`K`, `M`, `G`, `T`, `P`, `E` (powers of 1024), or
/// a `0x` number without a suffix; either may start with `+`.
/// `default_unit` applies when no suffix is given (1 for bytes).
pub fn parse_size(text: &str, default_unit: u64) -> Result<u64, SizeError> {
    let value = parse_size_u64(text, default_unit)?;
    if value > i64::MAX as u64 {
        return Err(SizeError::TooLarge);
    }
    Ok(value)
}

/// [`parse_size`] without the signed 64-bit limit (values up to 2^64 - 1).
pub fn parse_size_u64(text: &str, default_unit: u64) -> Result<u64, SizeError> {
    let text = text.trim_start();
    // strtoull's optional sign; a minus is refused below.
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    if let Some(hex) = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        // A hexadecimal integer takes neither a fraction nor a unit suffix
        // ("0x10b" is 267: b is a digit).
        let end = hex
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(hex.len());
        let (digits, rest) = hex.split_at(end);
        if digits.is_empty() || !rest.is_empty() {
            return Err(SizeError::Invalid);
        }
        let value = u64::from_str_radix(digits, 16).map_err(|_| SizeError::TooLarge)?;
        return value.checked_mul(default_unit).ok_or(SizeError::TooLarge);
    }
    if let Some(negative) = text.strip_prefix('-') {
        // A negative integer is out of range; with a fraction or a suffix
        // it does not parse (qemu_strtosz's answers).
        let integer = !negative.is_empty() && negative.bytes().all(|b| b.is_ascii_digit());
        return Err(if integer {
            SizeError::TooLarge
        } else {
            SizeError::Invalid
        });
    }
    let digits_end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(digits_end);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    // "1." is one and ".5M" half a mebibyte, but "." is nothing.
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(SizeError::Invalid);
    }
    let unit = unit_of(suffix, default_unit)?;
    // Digits beyond 64 bits are out of range alone, and do not parse
    // before a suffix.
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| {
            if suffix.is_empty() {
                SizeError::TooLarge
            } else {
                SizeError::Invalid
            }
        })?
    };
    let fraction: f64 = format!("0.{frac}")
        .parse()
        .map_err(|_| SizeError::Invalid)?;
    // A fraction needs a unit larger than a byte.
    if fraction != 0.0 && unit == 1 {
        return Err(SizeError::Invalid);
    }
    let value = whole.checked_mul(unit).ok_or(SizeError::TooLarge)?;
    // The fraction's bytes are rounded to the nearest, halves up.
    let extra = (fraction * unit as f64).round() as u64;
    value.checked_add(extra).ok_or(SizeError::TooLarge)
}

/// The multiplier of a size suffix.
fn unit_of(suffix: &str, default_unit: u64) -> Result<u64, SizeError> {
    Ok(match suffix {
        "" => default_unit,
        "b" | "B" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        "p" | "P" => 1 << 50,
        "e" | "E" => 1 << 60,
        _ => return Err(SizeError::Invalid),
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_size, SizeError};

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1k", 1), Ok(1024));
        assert_eq!(parse_size("1.5M", 1), Ok(3 << 19));
        assert_eq!(parse_size("512", 1), Ok(512));
        assert_eq!(parse_size("512b", 1), Ok(512));
        assert_eq!(parse_size("0x1000", 1), Ok(4096));
        assert_eq!(parse_size("0x10b", 1), Ok(0x10b));
        assert_eq!(parse_size("0x10k", 1), Err(SizeError::Invalid));
        assert_eq!(parse_size("+0x10", 1), Ok(16));
        assert_eq!(parse_size("+1M", 1), Ok(1 << 20));
        assert_eq!(parse_size(".5M", 1), Ok(1 << 19));
        assert_eq!(parse_size("1.", 1), Ok(1));
        assert_eq!(parse_size("1.k", 1), Ok(1024));
        assert_eq!(parse_size(".", 1), Err(SizeError::Invalid));
        assert_eq!(parse_size("1.5b", 1), Err(SizeError::Invalid));
        // The fraction's bytes round to the nearest, halves up.
        assert_eq!(parse_size("1.0009k", 1), Ok(1025));
        assert_eq!(parse_size("1.0001k", 1), Ok(1024));
        assert_eq!(parse_size("0.00048828125k", 1), Ok(1));
        assert_eq!(parse_size("0.0004882k", 1), Ok(0));
        assert_eq!(parse_size("0x", 1), Err(SizeError::Invalid));
        assert_eq!(parse_size("1X", 1), Err(SizeError::Invalid));
        assert_eq!(parse_size("1.5", 1), Err(SizeError::Invalid));
        // qemu_strtosz: a negative integer is out of range, one with a
        // suffix does not parse; so do too many digits before a suffix.
        assert_eq!(parse_size("-1", 1), Err(SizeError::TooLarge));
        assert_eq!(parse_size("-1k", 1), Err(SizeError::Invalid));
        assert_eq!(
            parse_size("99999999999999999999k", 1),
            Err(SizeError::Invalid)
        );
        assert_eq!(parse_size("8E", 1), Err(SizeError::TooLarge));
        assert_eq!(
            parse_size("99999999999999999999", 1),
            Err(SizeError::TooLarge)
        );
    }
}
