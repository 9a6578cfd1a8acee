//! The driver's open options, with the names, defaults and messages of
//! QEMU's curl driver, and the name QEMU gives a node they describe.

use crate::url::{Url, UrlError};
use qimg_driver_api::size::{option_message, parse_size_u64, SizeError};
use serde_json::{Map, Value};
use std::time::Duration;
use thiserror::Error;

/// Readahead when `readahead` is not given: 256 KiB.
pub const DEFAULT_READAHEAD: u64 = 256 * 1024;
/// Seconds a request may take when `timeout` is not given.
pub const DEFAULT_TIMEOUT: u64 = 5;
/// The largest `timeout` QEMU accepts, in seconds.
const MAX_TIMEOUT: u64 = 10_000;

/// Options this driver understands.
const KNOWN: [&str; 10] = [
    "url",
    "readahead",
    "timeout",
    "sslverify",
    "cookie",
    "username",
    "password-secret",
    "cookie-secret",
    "proxy-username",
    "proxy-password-secret",
];
/// Options that are part of a node's identity (QEMU's "strong" runtime
/// options), besides `url` and a false `sslverify`.
const STRONG: [&str; 6] = [
    "cookie",
    "username",
    "password-secret",
    "cookie-secret",
    "proxy-username",
    "proxy-password-secret",
];

/// Why the options were refused, in QEMU's words.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionError {
    /// No `url`.
    #[error("curl block driver requires an 'url' option")]
    NoUrl,
    /// A URL of another scheme than the driver's.
    #[error(
        "{driver} curl driver cannot handle the URL '{url}' (does not start with '{driver}://')"
    )]
    WrongScheme {
        /// The driver's name (`http`).
        driver: String,
        /// The URL given.
        url: String,
    },
    /// A URL that does not parse (the message curl would give).
    #[error("CURL: Error opening file: {0}")]
    BadUrl(#[from] UrlError),
    /// A malformed value (the full message).
    #[error("{0}")]
    Invalid(String),
    /// An option no driver of this name has.
    #[error("Block protocol '{driver}' doesn't support the option '{key}'")]
    Unknown {
        /// The driver's name.
        driver: String,
        /// The option.
        key: String,
    },
}

/// The parsed options of one store.
#[derive(Clone, Debug)]
pub struct Options {
    /// The URL as given, the store's name.
    pub url_text: String,
    /// The URL, parsed.
    pub url: Url,
    /// Bytes fetched at least by a small read (0: none).
    pub readahead: u64,
    /// How long a request may take; `None` for no limit (`timeout=0`).
    pub timeout: Option<Duration>,
    /// Verify the server's certificate (https).
    pub sslverify: bool,
    /// `Cookie` header value.
    pub cookie: Option<String>,
    /// User name and password for Basic authentication.
    pub credentials: Option<(String, String)>,
    /// The proxy's user name and password where the proxy's URL has none
    /// (`proxy-username`, `proxy-password-secret`).
    pub proxy_login: ProxyLogin,
}

/// A proxy user name and password given as options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyLogin {
    /// `proxy-username`.
    pub user: Option<String>,
    /// The text of `proxy-password-secret`.
    pub password: Option<String>,
}

impl Options {
    /// Parses `map` for the driver `driver` (`http` or `https`), with the
    /// texts of the secrets it names by id, checking in QEMU's order: value
    /// types, readahead, timeout, url, the cookie and password secrets, then
    /// options it does not know.
    pub fn parse(
        driver: &str,
        map: &Map<String, Value>,
        secrets: &Map<String, Value>,
    ) -> Result<Options, OptionError> {
        let readahead = match map.get("readahead") {
            Some(value) => size_option("readahead", value)?,
            None => DEFAULT_READAHEAD,
        };
        let timeout = match map.get("timeout") {
            Some(value) => number_option("timeout", value)?,
            None => DEFAULT_TIMEOUT,
        };
        let sslverify = match map.get("sslverify") {
            Some(value) => bool_option("sslverify", value)?,
            None => true,
        };
        let cookie = map.get("cookie").map(text_of);
        let username = map.get("username").map(text_of);
        if readahead % 512 != 0 {
            return Err(OptionError::Invalid(format!(
                "HTTP_READAHEAD_SIZE {readahead} is not a multiple of 512"
            )));
        }
        if timeout > MAX_TIMEOUT {
            return Err(OptionError::Invalid(
                "timeout parameter is too large or negative".into(),
            ));
        }
        let url_text = url_of(driver, map)?;
        let url = Url::parse(&url_text)?;
        let secret = |key: &str| -> Result<Option<String>, OptionError> {
            let Some(id) = map.get(key).map(text_of) else {
                return Ok(None);
            };
            match secrets.get(&id) {
                Some(Value::String(text)) => Ok(Some(text.clone())),
                _ => Err(OptionError::Invalid(format!("No secret with id '{id}'"))),
            }
        };
        let cookie = match (cookie, map.contains_key("cookie-secret")) {
            (Some(_), true) => {
                return Err(OptionError::Invalid(
                    "curl driver cannot handle both cookie and cookie secret".into(),
                ))
            }
            (cookie, _) => match secret("cookie-secret")? {
                Some(text) => Some(text),
                None => cookie,
            },
        };
        let password = secret("password-secret")?;
        let proxy_login = ProxyLogin {
            user: map.get("proxy-username").map(text_of),
            password: secret("proxy-password-secret")?,
        };
        for key in map.keys() {
            if !KNOWN.contains(&key.as_str()) && key != "driver" {
                return Err(OptionError::Unknown {
                    driver: driver.into(),
                    key: key.clone(),
                });
            }
        }
        for (name, value) in [
            ("cookie", &cookie),
            ("username", &username),
            ("proxy-username", &proxy_login.user),
        ] {
            if value.as_deref().is_some_and(|v| v.contains(['\r', '\n'])) {
                return Err(OptionError::Invalid(format!(
                    "Parameter '{name}' must not contain line breaks"
                )));
            }
        }
        // As curl takes them: the password replaces the URL's, the user
        // name too.
        let credentials = match (username, url.credentials.clone()) {
            (Some(user), _) => Some((user, password.unwrap_or_default())),
            (None, Some((user, from_url))) => Some((user, password.unwrap_or(from_url))),
            (None, None) => password.map(|p| (String::new(), p)),
        };
        Ok(Options {
            url_text,
            url,
            readahead,
            timeout: (timeout > 0).then(|| Duration::from_secs(timeout)),
            sslverify,
            cookie,
            credentials,
            proxy_login,
        })
    }
}

/// The name QEMU gives the node `map` describes: its URL, or a `json:`
/// object of the options that identify it when there are more than the
/// URL (`readahead` and `timeout` do not count, nor `sslverify=on`).
pub fn canonical_name(driver: &str, map: &Map<String, Value>) -> Result<String, OptionError> {
    let url = url_of(driver, map)?;
    let mut entries: Vec<(&str, String)> = STRONG
        .iter()
        .filter_map(|key| map.get(*key).map(|v| (*key, v.to_string())))
        .collect();
    if let Some(value) = map.get("sslverify") {
        if bool_option("sslverify", value) == Ok(false) {
            entries.push(("sslverify", value.to_string()));
        }
    }
    if entries.is_empty() {
        return Ok(url);
    }
    entries.push((
        "url",
        map.get("url").map(Value::to_string).unwrap_or_default(),
    ));
    entries.push(("driver", Value::from(driver).to_string()));
    // QEMU lists a dictionary's keys bucket by bucket; within a bucket the
    // latest insertion comes first.
    entries.reverse();
    entries.sort_by_key(|(key, _)| qdict_bucket(key));
    let parts: Vec<String> = entries
        .iter()
        .map(|(key, value)| format!("{}: {value}", Value::from(*key)))
        .collect();
    Ok(format!("json:{{{}}}", parts.join(", ")))
}

/// The bucket of QEMU's option dictionary (512 buckets, keys hashed with
/// the tdb hash) that `key` falls in, which orders its `json:` names.
fn qdict_bucket(key: &str) -> u32 {
    let mut hash = 0x238f_13afu32.wrapping_mul(key.len() as u32);
    for (i, byte) in key.bytes().enumerate() {
        hash = hash.wrapping_add(u32::from(byte) << (i * 5 % 24));
    }
    1_103_515_243u32.wrapping_mul(hash).wrapping_add(12345) % 512
}

/// The `url` option, checked to be of the driver's scheme.
fn url_of(driver: &str, map: &Map<String, Value>) -> Result<String, OptionError> {
    let url = map.get("url").map(text_of).ok_or(OptionError::NoUrl)?;
    if !url.starts_with(&format!("{driver}://")) {
        return Err(OptionError::WrongScheme {
            driver: driver.into(),
            url,
        });
    }
    Ok(url)
}

/// A scalar option's text (JSON strings as they are, others as JSON).
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A size option (`readahead`): a number or a size with a suffix.
fn size_option(name: &str, value: &Value) -> Result<u64, OptionError> {
    let invalid = |text: &str, error| OptionError::Invalid(option_message(name, text, error));
    match value {
        Value::Number(n) => match n.as_u64() {
            Some(v) => Ok(v),
            None if n.as_i64().is_some() => Err(invalid(&n.to_string(), SizeError::TooLarge)),
            None => Err(invalid(&n.to_string(), SizeError::Invalid)),
        },
        Value::String(s) => parse_size_u64(s, 1).map_err(|e| invalid(s, e)),
        other => Err(invalid(&other.to_string(), SizeError::Invalid)),
    }
}

/// A number option (`timeout`), parsed as `strtoull` with base 0 does:
/// leading blanks, a sign, and `0x`/`0` prefixes for hex and octal. A
/// negative number wraps around, as it does in QEMU.
fn number_option(name: &str, value: &Value) -> Result<u64, OptionError> {
    let not_a_number = || OptionError::Invalid(format!("Parameter '{name}' expects a number"));
    let text = match value {
        Value::Number(n) => {
            return match (n.as_u64(), n.as_i64()) {
                (Some(v), _) => Ok(v),
                (None, Some(v)) => Ok(v as u64),
                _ => Err(not_a_number()),
            }
        }
        Value::String(s) => s.as_str(),
        _ => return Err(not_a_number()),
    };
    let trimmed = text.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, unsigned) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let (digits, radix) = if let Some(hex) = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        (hex, 16)
    } else if unsigned.len() > 1 && unsigned.starts_with('0') {
        (&unsigned[1..], 8)
    } else {
        (unsigned, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(not_a_number());
    }
    let magnitude = u64::from_str_radix(digits, radix).map_err(|_| {
        OptionError::Invalid(format!(
            "Value '{text}' is too large for parameter '{name}'"
        ))
    })?;
    Ok(if negative {
        magnitude.wrapping_neg()
    } else {
        magnitude
    })
}

/// A boolean option (`sslverify`): on/off and QEMU's synonyms.
fn bool_option(name: &str, value: &Value) -> Result<bool, OptionError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if matches!(s.as_str(), "on" | "yes" | "true" | "y") => Ok(true),
        Value::String(s) if matches!(s.as_str(), "off" | "no" | "false" | "n") => Ok(false),
        _ => Err(OptionError::Invalid(format!(
            "Parameter '{name}' expects 'on' or 'off'"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const URL: &str = "http://127.0.0.1:8080/x.qcow2";

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    fn parse(value: Value) -> Result<Options, String> {
        Options::parse("http", &map(value), &Map::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let options = parse(json!({ "url": URL })).unwrap();
        assert_eq!(options.url_text, URL);
        assert_eq!(options.url.port, 8080);
        assert_eq!(options.readahead, 256 * 1024);
        assert_eq!(options.timeout, Some(Duration::from_secs(5)));
        assert!(options.sslverify);
        assert_eq!(options.cookie, None);
        assert_eq!(options.credentials, None);
    }

    #[test]
    fn values_as_strings_or_json() {
        let options = parse(json!({
            "url": URL, "readahead": "64k", "timeout": "0x10", "sslverify": "off",
            "cookie": "a=b", "username": "me", "driver": "http"
        }))
        .unwrap();
        assert_eq!(options.readahead, 65536);
        assert_eq!(options.timeout, Some(Duration::from_secs(16)));
        assert!(!options.sslverify);
        assert_eq!(options.cookie.as_deref(), Some("a=b"));
        assert_eq!(options.credentials, Some(("me".into(), String::new())));
        let options =
            parse(json!({ "url": URL, "readahead": 1024, "timeout": 0, "sslverify": false }))
                .unwrap();
        assert_eq!(options.readahead, 1024);
        assert_eq!(options.timeout, None);
        assert!(!options.sslverify);
        let options =
            parse(json!({ "url": URL, "readahead": "1.5k", "timeout": " +010" })).unwrap();
        assert_eq!(options.readahead, 1536);
        assert_eq!(options.timeout, Some(Duration::from_secs(8)));
        for yes in ["on", "yes", "true", "y"] {
            assert!(
                parse(json!({ "url": URL, "sslverify": yes }))
                    .unwrap()
                    .sslverify
            );
        }
        for no in ["off", "no", "false", "n"] {
            assert!(
                !parse(json!({ "url": URL, "sslverify": no }))
                    .unwrap()
                    .sslverify
            );
        }
    }

    #[test]
    fn credentials_from_the_url() {
        let options = parse(json!({ "url": "http://u:p%21@h/x" })).unwrap();
        assert_eq!(options.credentials, Some(("u".into(), "p!".into())));
        let options = parse(json!({ "url": "http://u:p@h/x", "username": "v" })).unwrap();
        assert_eq!(options.credentials, Some(("v".into(), String::new())));
    }

    #[test]
    fn qemu_messages() {
        let cases = [
            (json!({}), "curl block driver requires an 'url' option"),
            (
                json!({ "url": "ftp://x/y" }),
                "http curl driver cannot handle the URL 'ftp://x/y' (does not start with 'http://')",
            ),
            (
                json!({ "url": "HTTP://x/y" }),
                "http curl driver cannot handle the URL 'HTTP://x/y' (does not start with 'http://')",
            ),
            (
                json!({ "url": URL, "readahead": "abc" }),
                "Parameter 'readahead' expects a non-negative number below 2^64\n\
                 Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
                 and exabytes, respectively.",
            ),
            (
                json!({ "url": URL, "readahead": "-1" }),
                "Value '-1' is out of range for parameter 'readahead'",
            ),
            (
                json!({ "url": URL, "readahead": "1000" }),
                "HTTP_READAHEAD_SIZE 1000 is not a multiple of 512",
            ),
            (
                json!({ "url": URL, "timeout": "abc" }),
                "Parameter 'timeout' expects a number",
            ),
            (
                json!({ "url": URL, "timeout": "" }),
                "Parameter 'timeout' expects a number",
            ),
            (
                json!({ "url": URL, "timeout": 7.5 }),
                "Parameter 'timeout' expects a number",
            ),
            (
                json!({ "url": URL, "timeout": "10001" }),
                "timeout parameter is too large or negative",
            ),
            (
                json!({ "url": URL, "timeout": "-1" }),
                "timeout parameter is too large or negative",
            ),
            (
                json!({ "url": URL, "timeout": -1 }),
                "timeout parameter is too large or negative",
            ),
            (
                json!({ "url": URL, "timeout": "18446744073709551616" }),
                "Value '18446744073709551616' is too large for parameter 'timeout'",
            ),
            (
                json!({ "url": URL, "sslverify": "maybe" }),
                "Parameter 'sslverify' expects 'on' or 'off'",
            ),
            (
                json!({ "url": URL, "sslverify": 1 }),
                "Parameter 'sslverify' expects 'on' or 'off'",
            ),
            (
                json!({ "url": URL, "foo": "bar" }),
                "Block protocol 'http' doesn't support the option 'foo'",
            ),
            (
                json!({ "url": "http://h:99999/x" }),
                "CURL: Error opening file: URL rejected: Port number was not a decimal number between 0 and 65535",
            ),
            // Option types are checked before the URL, as QEMU does.
            (
                json!({ "url": "ftp://x", "timeout": "abc" }),
                "Parameter 'timeout' expects a number",
            ),
            (
                json!({ "foo": "bar" }),
                "curl block driver requires an 'url' option",
            ),
        ];
        for (options, message) in cases {
            assert_eq!(parse(options.clone()).unwrap_err(), message, "{options}");
        }
    }

    #[test]
    fn refuses_header_injection() {
        let error = parse(json!({ "url": URL, "cookie": "a=b\r\nX-Evil: 1" })).unwrap_err();
        assert_eq!(error, "Parameter 'cookie' must not contain line breaks");
    }

    #[test]
    fn canonical_names_as_qemu_prints_them() {
        let name = |value: Value| canonical_name("http", &map(value)).unwrap();
        assert_eq!(name(json!({ "url": URL })), URL);
        assert_eq!(
            name(json!({ "url": URL, "readahead": "64k", "timeout": 10, "sslverify": "on" })),
            URL
        );
        assert_eq!(
            name(json!({ "url": URL, "cookie": "a=b" })),
            format!(r#"json:{{"url": "{URL}", "driver": "http", "cookie": "a=b"}}"#)
        );
        assert_eq!(
            name(json!({ "url": URL, "sslverify": "off" })),
            format!(r#"json:{{"url": "{URL}", "driver": "http", "sslverify": "off"}}"#)
        );
        assert_eq!(
            name(json!({ "url": URL, "sslverify": false })),
            format!(r#"json:{{"url": "{URL}", "driver": "http", "sslverify": false}}"#)
        );
        assert_eq!(
            name(json!({ "url": URL, "cookie": "a=b", "username": "u" })),
            format!(
                r#"json:{{"url": "{URL}", "driver": "http", "username": "u", "cookie": "a=b"}}"#
            )
        );
        assert_eq!(
            name(json!({ "url": URL, "proxy-username": "p" })),
            format!(r#"json:{{"url": "{URL}", "proxy-username": "p", "driver": "http"}}"#)
        );
        let https = "https://h/x";
        assert_eq!(
            canonical_name("https", &map(json!({ "url": https, "sslverify": "off" }))).unwrap(),
            r#"json:{"url": "https://h/x", "driver": "https", "sslverify": "off"}"#
        );
        assert_eq!(
            canonical_name("https", &map(json!({ "url": URL }))).unwrap_err(),
            OptionError::WrongScheme {
                driver: "https".into(),
                url: URL.into()
            }
        );
    }

    #[test]
    fn secrets_as_qemu_takes_them() {
        let secrets = map(json!({ "pw": "hunter2", "jar": "session=1" }));
        let with = |value: Value| Options::parse("http", &map(value), &secrets);
        let options =
            with(json!({ "url": URL, "username": "u", "password-secret": "pw" })).unwrap();
        assert_eq!(options.credentials, Some(("u".into(), "hunter2".into())));
        let options = with(json!({ "url": URL, "cookie-secret": "jar" })).unwrap();
        assert_eq!(options.cookie.as_deref(), Some("session=1"));
        let error = with(json!({ "url": URL, "password-secret": "nosuch" })).unwrap_err();
        assert_eq!(error.to_string(), "No secret with id 'nosuch'");
        // The cookie secret is looked up first, and a readahead error
        // comes before either.
        let both = json!({ "url": URL, "password-secret": "a", "cookie-secret": "b" });
        assert_eq!(with(both).unwrap_err().to_string(), "No secret with id 'b'");
        let early = json!({ "url": URL, "password-secret": "a", "readahead": 513 });
        assert_eq!(
            with(early).unwrap_err().to_string(),
            "HTTP_READAHEAD_SIZE 513 is not a multiple of 512"
        );
        let error =
            with(json!({ "url": URL, "cookie": "a=b", "cookie-secret": "jar" })).unwrap_err();
        assert_eq!(
            error.to_string(),
            "curl driver cannot handle both cookie and cookie secret"
        );
    }
}
