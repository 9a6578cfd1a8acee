//! Output formats that scripts parse, byte for byte as qemu-img prints them:
//! qemu's pretty JSON layout and its human-readable sizes.

use serde_json::Value;

/// `print!` that ignores a failed write, as C's `printf` does (see
/// [`to_stdout`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::to_stdout(format_args!($($arg)*))
    };
}

/// `println!` that ignores a failed write (see [`to_stdout`]).
macro_rules! outln {
    () => {
        $crate::output::to_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::to_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that ignores a failed write (see [`to_stderr`]).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::to_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Formats `value` as C's `printf("%.{precision}g")` does.
pub fn c_format_g(value: f64, precision: usize) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let precision = precision.max(1);
    let sci = format!("{:.*e}", precision - 1, value);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if exp < -4 || exp >= precision as i32 {
        let mantissa = strip_fraction_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        let decimals = (precision as i32 - 1 - exp).max(0) as usize;
        strip_fraction_zeros(&format!("{value:.decimals$}"))
    }
}

fn strip_fraction_zeros(text: &str) -> String {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text.to_string()
    }
}

/// A byte count as qemu prints it for people: three significant digits and a
/// binary unit (`68 KiB`, `1.5 GiB`, `0.977 KiB`). The unit switches up once the
/// number in the lower unit would reach 1000, so 1000 bytes print as `0.977 KiB`.
pub fn size_to_str(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let exponent = frexp_exponent(bytes as f64 / (1000.0 / 1024.0));
    // C's integer division truncates toward zero, so an exponent of 0 gives 0.
    let index = (((exponent - 1) / 10).max(0) as usize).min(UNITS.len() - 1);
    let value = bytes as f64 / (1u64 << (10 * index)) as f64;
    format!("{} {}B", c_format_g(value, 3), UNITS[index])
}

/// The exponent C's `frexp` returns: `x = m * 2^e` with `0.5 <= m < 1`.
fn frexp_exponent(x: f64) -> i32 {
    if x == 0.0 || !x.is_finite() {
        return 0;
    }
    let biased = ((x.to_bits() >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // Subnormal: not reachable for byte counts, but keep frexp's meaning.
        return frexp_exponent(x * 2f64.powi(64)) - 64;
    }
    biased - 1022
}

/// Serialises `value` in qemu's pretty JSON layout: four-space indents, one
/// member per line, empty containers still opened and closed on two lines.
pub fn qemu_json_pretty(value: &Value) -> String {
    let mut out = String::new();
    write_pretty(value, 0, &mut out);
    out
}

fn write_pretty(value: &Value, depth: usize, out: &mut String) {
    let pad = |d: usize| "    ".repeat(d);
    match value {
        Value::Object(map) => {
            out.push_str("{\n");
            let mut first = true;
            for (key, item) in map {
                if !first {
                    out.push_str(",\n");
                }
                first = false;
                out.push_str(&pad(depth + 1));
                quoted(key, out);
                out.push_str(": ");
                write_pretty(item, depth + 1, out);
            }
            if !map.is_empty() {
                out.push('\n');
            }
            out.push_str(&pad(depth));
            out.push('}');
        }
        Value::Array(items) => {
            out.push_str("[\n");
            let mut first = true;
            for item in items {
                if !first {
                    out.push_str(",\n");
                }
                first = false;
                out.push_str(&pad(depth + 1));
                write_pretty(item, depth + 1, out);
            }
            if !items.is_empty() {
                out.push('\n');
            }
            out.push_str(&pad(depth));
            out.push(']');
        }
        Value::String(text) => quoted(text, out),
        other => out.push_str(&other.to_string()),
    }
}

/// Appends `text` as qemu's JSON writer quotes a string: the usual
/// backslash escapes, and every other character below 0x20 or from 0x7f
/// on as `\uXXXX` (upper-case hex; a surrogate pair beyond the BMP), so
/// that the output is ASCII.
fn quoted(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
        }
    }
    out.push('"');
}

/// Writes to stdout as C's `printf` does: a failed write (stdout closed, a
/// pipe whose reader has gone) is ignored, so `qimg map x | head` ends as
/// qemu-img's does instead of panicking.
pub fn to_stdout(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_fmt(text);
}

/// Writes to stderr, ignoring a failed write (see [`to_stdout`]).
pub fn to_stderr(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_fmt(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g_format_matches_c() {
        assert_eq!(c_format_g(68.0, 3), "68");
        assert_eq!(c_format_g(1.5, 3), "1.5");
        assert_eq!(c_format_g(1000.0, 3), "1e+03");
        assert_eq!(c_format_g(999.5, 3), "1e+03");
        assert_eq!(c_format_g(100.0, 3), "100");
        assert_eq!(c_format_g(0.976, 3), "0.976");
        assert_eq!(c_format_g(1.0 / 3.0, 3), "0.333");
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(512), "512 B");
        assert_eq!(size_to_str(999), "999 B");
        assert_eq!(size_to_str(1000), "0.977 KiB");
        assert_eq!(size_to_str(1536), "1.5 KiB");
        assert_eq!(size_to_str(1047552), "0.999 MiB");
        assert_eq!(size_to_str(1048064), "1 MiB");
        assert_eq!(size_to_str(100 << 30), "100 GiB");
        assert_eq!(size_to_str(69632), "68 KiB");
        assert_eq!(size_to_str(4 << 20), "4 MiB");
        assert_eq!(size_to_str(3 << 29), "1.5 GiB");
    }

    #[test]
    fn pretty_json_layout() {
        let v: Value = serde_json::from_str(r#"{"a":[],"b":{"c":1,"d":{}}}"#).unwrap();
        assert_eq!(qemu_json_pretty(&v), "{\n    \"a\": [\n    ],\n    \"b\": {\n        \"c\": 1,\n        \"d\": {\n        }\n    }\n}");
    }
}
