//! Sizes as qemu writes them (`qemu_strtosz`): a decimal or `0x` number with
//! an optional unit suffix. The host parses command lines with it; drivers
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
/// allowed only with a unit suffix), optionally followed by one of
/// `b`/`B` (bytes), `k`/`K`, `M`, `G`, `T`, `P`, `E` (powers of 1024).
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
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        // Hexadecimal integers take a unit suffix but no fraction.
        let end = hex
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(hex.len());
        let (digits, suffix) = hex.split_at(end);
        if digits.is_empty() {
            return Err(SizeError::Invalid);
        }
        let value = u64::from_str_radix(digits, 16).map_err(|_| SizeError::TooLarge)?;
        return value
            .checked_mul(unit_of(suffix, default_unit)?)
            .ok_or(SizeError::TooLarge);
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
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    if number.is_empty() || number.starts_with('.') || number.matches('.').count() > 1 {
        return Err(SizeError::Invalid);
    }
    let unit = unit_of(suffix, default_unit)?;
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if !frac.is_empty() && suffix.is_empty() {
        return Err(SizeError::Invalid);
    }
    // Digits beyond 64 bits are out of range alone, and do not parse
    // before a suffix.
    let whole: u64 = whole.parse().map_err(|_| {
        if suffix.is_empty() {
            SizeError::TooLarge
        } else {
            SizeError::Invalid
        }
    })?;
    let mut value = whole.checked_mul(unit).ok_or(SizeError::TooLarge)?;
    if !frac.is_empty() {
        let fraction: f64 = format!("0.{frac}")
            .parse()
            .map_err(|_| SizeError::Invalid)?;
        let extra = (fraction * unit as f64) as u64;
        value = value.checked_add(extra).ok_or(SizeError::TooLarge)?;
    }
    Ok(value)
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
        assert_eq!(parse_size("0x10k", 1), Ok(16384));
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
