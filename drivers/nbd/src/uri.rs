//! NBD filenames: the URIs (`nbd://host[:port][/export]`,
//! `nbd+unix:///export?socket=PATH`) and qemu's legacy `nbd:HOST:PORT` and
//! `nbd:unix:PATH` forms, parsed into options; and the URI qemu prints for
//! a node.
//!
//! The rules follow what qemu-img 10.0.2 accepts and prints (checked with
//! `qemu-img info` against a running `qemu-nbd`): any URI it cannot use is
//! "No valid URL specified"; a port of 0 or an empty port means 10809;
//! userinfo and fragments are ignored; the export is the percent-decoded
//! path without its first `/`, and is printed without encoding.

use crate::error::{NbdError, Result};
use crate::options::{Server, DEFAULT_PORT};
use serde_json::{Map, Value};

/// qemu's message for any URI it cannot use.
const INVALID_URL: &str = "No valid URL specified";
/// qemu's message when no server is named.
pub const ADDRESS_MISSING: &str = "NBD server address missing";

/// The options `filename` stands for, nested as `--image-opts` gives them
/// (`{"server": {"type": "inet", ...}, "export": ...}`).
pub fn parse_filename(filename: &str) -> Result<Map<String, Value>> {
    let (scheme, rest) = filename.split_once(':').unwrap_or((filename, ""));
    let uri = rest.strip_prefix("//");
    let (server, export) = match (scheme, uri) {
        ("nbd" | "nbd+tcp", Some(uri)) => parse_uri(uri, false)?,
        ("nbd+unix", Some(uri)) => parse_uri(uri, true)?,
        ("nbd", None) => parse_legacy(rest)?,
        ("nbd+tcp" | "nbd+unix", None) => return Err(invalid()),
        _ => {
            return Err(NbdError::InvalidArgument(format!(
                "Unknown protocol '{scheme}'"
            )))
        }
    };
    Ok(options_map(&server, export.as_deref()))
}

/// The name qemu prints for the node: `nbd://host:port[/export]` or
/// `nbd+unix://[/export]?socket=PATH`. An IPv6 host is printed without
/// brackets and nothing is percent-encoded, as qemu prints them.
pub fn canonical_name(server: &Server, export: Option<&str>) -> String {
    match (server, export) {
        (Server::Unix { path }, Some(export)) => format!("nbd+unix:///{export}?socket={path}"),
        (Server::Unix { path }, None) => format!("nbd+unix://?socket={path}"),
        (Server::Inet { host, port }, Some(export)) => format!("nbd://{host}:{port}/{export}"),
        (Server::Inet { host, port }, None) => format!("nbd://{host}:{port}"),
    }
}

/// The nested options of a server and export.
fn options_map(server: &Server, export: Option<&str>) -> Map<String, Value> {
    let mut address = Map::new();
    match server {
        Server::Inet { host, port } => {
            address.insert("type".into(), "inet".into());
            address.insert("host".into(), host.as_str().into());
            address.insert("port".into(), port.as_str().into());
        }
        Server::Unix { path } => {
            address.insert("type".into(), "unix".into());
            address.insert("path".into(), path.as_str().into());
        }
    }
    let mut map = Map::new();
    map.insert("server".into(), Value::Object(address));
    if let Some(export) = export {
        map.insert("export".into(), export.into());
    }
    map
}

fn invalid() -> NbdError {
    NbdError::InvalidArgument(INVALID_URL.to_string())
}

/// The part of an `nbd://` or `nbd+unix://` URI after `://`.
fn parse_uri(rest: &str, unix: bool) -> Result<(Server, Option<String>)> {
    let rest = rest.split('#').next().unwrap_or_default();
    let (before_query, query) = match rest.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(cut) => before_query.split_at(cut),
        None => (before_query, ""),
    };
    let path = path.strip_prefix('/').unwrap_or(path);
    let export = percent_decode(path).ok_or_else(invalid)?;
    let export = (!export.is_empty()).then_some(export);
    let params = query_params(query.unwrap_or_default())?;
    if unix {
        // The socket is the one parameter; no host, no port.
        let [(name, path)] = params.as_slice() else {
            return Err(invalid());
        };
        if !authority.is_empty() || name != "socket" {
            return Err(invalid());
        }
        return Ok((Server::Unix { path: path.clone() }, export));
    }
    if !params.is_empty() {
        return Err(invalid());
    }
    let (host, port) = parse_authority(authority)?;
    Ok((Server::Inet { host, port }, export))
}

/// `[userinfo@]host[:port]` into the host and the port qemu connects to.
fn parse_authority(authority: &str) -> Result<(String, String)> {
    let host_port = match authority.rfind('@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    let (host, port) = if let Some(inner) = host_port.strip_prefix('[') {
        let (literal, after) = inner.split_once(']').ok_or_else(invalid)?;
        let port = match after {
            "" => "",
            _ => after.strip_prefix(':').ok_or_else(invalid)?,
        };
        // A zone (`fe80::1%25lo`) is percent-encoded inside the brackets.
        (percent_decode(literal).ok_or_else(invalid)?, port)
    } else {
        let (host, port) = host_port.split_once(':').unwrap_or((host_port, ""));
        if host.contains(['%', '[', ']']) {
            return Err(invalid());
        }
        (host.to_string(), port)
    };
    if host.is_empty() {
        return Err(invalid());
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let number = match port.trim_start_matches('0') {
        "" => 0,
        digits if digits.len() > 5 => return Err(invalid()),
        digits => digits.parse::<u32>().map_err(|_| invalid())?,
    };
    let port = match number {
        0 => DEFAULT_PORT,
        1..=65535 => number,
        _ => return Err(invalid()),
    };
    Ok((host, port.to_string()))
}

/// A query's `name=value` pairs, decoded. A trailing `&` is allowed; an
/// empty parameter elsewhere, or one without `=`, is not.
fn query_params(query: &str) -> Result<Vec<(String, String)>> {
    let mut pieces: Vec<&str> = query.split('&').collect();
    while pieces.last() == Some(&"") {
        pieces.pop();
    }
    pieces
        .into_iter()
        .map(|piece| {
            let (name, value) = piece.split_once('=').ok_or_else(invalid)?;
            let name = percent_decode(name).ok_or_else(invalid)?;
            let value = percent_decode(value).ok_or_else(invalid)?;
            Ok((name, value))
        })
        .collect()
}

/// `%XX` escapes decoded; `None` for a bad escape or bytes that are not
/// UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// qemu's legacy forms after `nbd:`: `HOST:PORT[:exportname=NAME]`,
/// `[IPV6]:PORT[...]` and `unix:PATH[:exportname=NAME]`. Nothing is
/// decoded, and the port is kept as written (`0` is not the default here).
fn parse_legacy(rest: &str) -> Result<(Server, Option<String>)> {
    const EXPORT_KEY: &str = ":exportname=";
    let (address, export) = match rest.find(EXPORT_KEY) {
        Some(cut) => {
            let export = &rest[cut + EXPORT_KEY.len()..];
            if export.is_empty() {
                // qemu drops the whole address when the name is empty.
                return Err(NbdError::InvalidArgument(ADDRESS_MISSING.into()));
            }
            (&rest[..cut], Some(export.to_string()))
        }
        None => (rest, None),
    };
    if address.is_empty() {
        return Err(NbdError::InvalidArgument(ADDRESS_MISSING.into()));
    }
    if let Some(path) = address.strip_prefix("unix:") {
        let path = path.to_string();
        return Ok((Server::Unix { path }, export));
    }
    let (host, port) = if let Some(inner) = address.strip_prefix('[') {
        let bad = || NbdError::InvalidArgument(format!("error parsing IPv6 address '{address}'"));
        let (host, port) = inner.split_once("]:").ok_or_else(bad)?;
        if port.is_empty() {
            return Err(bad());
        }
        (host, port)
    } else {
        let bad = || NbdError::InvalidArgument(format!("error parsing address '{address}'"));
        let (host, port) = address.split_once(':').ok_or_else(bad)?;
        if port.is_empty() {
            return Err(bad());
        }
        (host, port)
    };
    let server = Server::Inet {
        host: host.to_string(),
        port: port.to_string(),
    };
    Ok((server, export))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;

    /// The name qemu-img 10.0.2 prints for `filename` (`qemu-img info
    /// FILENAME`, first line), through options as the host passes them.
    fn name_of(filename: &str) -> String {
        let map = parse_filename(filename).unwrap_or_else(|e| panic!("{filename}: {e}"));
        Options::from_map(&map).unwrap().canonical_name()
    }

    fn error_of(filename: &str) -> String {
        parse_filename(filename).unwrap_err().to_string()
    }

    #[test]
    fn tcp_names_carry_the_port() {
        // qemu-img info nbd://127.0.0.1:10811/qq
        assert_eq!(
            name_of("nbd://127.0.0.1:10811/qq"),
            "nbd://127.0.0.1:10811/qq"
        );
        // qemu-img info nbd://localhost (default port printed, no slash)
        assert_eq!(name_of("nbd://localhost"), "nbd://localhost:10809");
        assert_eq!(name_of("nbd://127.0.0.1"), "nbd://127.0.0.1:10809");
        assert_eq!(name_of("nbd://127.0.0.1:10853/"), "nbd://127.0.0.1:10853");
        assert_eq!(
            name_of("nbd+tcp://127.0.0.1:10811/qq"),
            "nbd://127.0.0.1:10811/qq"
        );
        // Port 0 or empty is the default; leading zeros are dropped.
        assert_eq!(name_of("nbd://h:0/qq"), "nbd://h:10809/qq");
        assert_eq!(name_of("nbd://h:/qq"), "nbd://h:10809/qq");
        assert_eq!(name_of("nbd://h:010851/qq"), "nbd://h:10851/qq");
    }

    #[test]
    fn unix_names() {
        // qemu-img info 'nbd+unix:///exp?socket=/tmp/ht/r.sock'
        assert_eq!(
            name_of("nbd+unix:///exp?socket=/tmp/ht/r.sock"),
            "nbd+unix:///exp?socket=/tmp/ht/r.sock"
        );
        // An empty export: no third slash.
        assert_eq!(
            name_of("nbd+unix:///?socket=/tmp/e.sock"),
            "nbd+unix://?socket=/tmp/e.sock"
        );
        assert_eq!(
            name_of("nbd+unix://?socket=/tmp/e.sock"),
            "nbd+unix://?socket=/tmp/e.sock"
        );
        // Socket paths are decoded; a trailing '&' and a fragment are ignored.
        assert_eq!(
            name_of("nbd+unix:///?socket=/tmp/a%20b.sock&#x"),
            "nbd+unix://?socket=/tmp/a b.sock"
        );
    }

    #[test]
    fn exports_are_decoded_and_printed_plain() {
        assert_eq!(
            name_of("nbd+unix:///a%20b%2Fc%25d?socket=/s"),
            "nbd+unix:///a b/c%d?socket=/s"
        );
        assert_eq!(name_of("nbd://h:1/%71q"), "nbd://h:1/qq");
        // Only the first slash goes: nbd://h:1//qq asks for '/qq'.
        let map = parse_filename("nbd://h:1//qq").unwrap();
        assert_eq!(map["export"], "/qq");
        let map = parse_filename("nbd://h:1/qq/").unwrap();
        assert_eq!(map["export"], "qq/");
    }

    #[test]
    fn ipv6_hosts_lose_their_brackets() {
        // qemu-img info 'nbd://[::1]:10852/v6' prints nbd://::1:10852/v6
        assert_eq!(name_of("nbd://[::1]:10852/v6"), "nbd://::1:10852/v6");
        assert_eq!(name_of("nbd://[::1]/x"), "nbd://::1:10809/x");
        let map = parse_filename("nbd://[fe80::1%25lo]:10852/v6").unwrap();
        assert_eq!(map["server"]["host"], "fe80::1%lo");
    }

    #[test]
    fn userinfo_is_ignored() {
        assert_eq!(
            name_of("nbd://user@127.0.0.1:10851/qq"),
            "nbd://127.0.0.1:10851/qq"
        );
    }

    #[test]
    fn bad_uris_are_no_valid_url() {
        for bad in [
            "nbd://",
            "nbd:///",
            "nbd:///qq",
            "nbd://127.0.0.1:abc/qq",
            "nbd://127.0.0.1:99999/qq",
            "nbd://127.0.0.1:+10851/qq",
            "nbd://127.0.0.1:10851/qq?socket=/x",
            "nbd://127.0.0.1:10851/qq?foo",
            "nbd+tcp://127.0.0.1:10851/qq?socket=/x",
            "nbd+unix:///exp",
            "nbd+unix://host/exp?socket=/tmp/x",
            "nbd+unix://:5/?socket=/tmp/x",
            "nbd+unix:///exp?socket=/tmp/x&foo=1",
            "nbd+unix:///exp?sock=/x",
            "nbd+unix:///?&socket=/x",
            "nbd+unix:///?socket",
            "nbd://[::1/x",
            "nbd://127.0.0.1:10851/q%2",
            "nbd://127.0.0.1:10851/q%zz",
            "nbd://127%2e0.0.1:10851/qq",
        ] {
            assert_eq!(error_of(bad), "No valid URL specified", "{bad}");
        }
    }

    #[test]
    fn odd_but_valid_uris() {
        // An empty query is no parameter at all.
        assert_eq!(
            name_of("nbd://127.0.0.1:10851/qq?"),
            "nbd://127.0.0.1:10851/qq"
        );
        // qemu tries to connect to these, as written.
        let map = parse_filename("nbd+unix:///exp?socket=").unwrap();
        assert_eq!(map["server"]["path"], "");
        let map = parse_filename("nbd+unix:///?socket=/s;").unwrap();
        assert_eq!(map["server"]["path"], "/s;");
        let map = parse_filename("nbd+unix:///?socket=/s=x").unwrap();
        assert_eq!(map["server"]["path"], "/s=x");
    }

    #[test]
    fn legacy_forms() {
        // qemu-img info nbd:127.0.0.1:10851:exportname=qq
        assert_eq!(
            name_of("nbd:127.0.0.1:10851:exportname=qq"),
            "nbd://127.0.0.1:10851/qq"
        );
        assert_eq!(
            name_of("nbd:localhost:10851:exportname=qq"),
            "nbd://localhost:10851/qq"
        );
        assert_eq!(
            name_of("nbd:[::1]:10852:exportname=v6"),
            "nbd://::1:10852/v6"
        );
        assert_eq!(
            name_of("nbd:unix:/tmp/e.sock"),
            "nbd+unix://?socket=/tmp/e.sock"
        );
        assert_eq!(
            name_of("nbd:unix:/tmp/r.sock:exportname=a b/c%d"),
            "nbd+unix:///a b/c%d?socket=/tmp/r.sock"
        );
        assert_eq!(name_of("nbd:127.0.0.1:10851"), "nbd://127.0.0.1:10851");
        // The first ':exportname=' splits; the rest is the name.
        let map = parse_filename("nbd:h:1:exportname=qq:exportname=zz").unwrap();
        assert_eq!(map["export"], "qq:exportname=zz");
        // The port is kept as written: qemu connects to port 0, and to
        // ':1:10852' for nbd:::1:10852.
        let map = parse_filename("nbd:127.0.0.1:0:exportname=qq").unwrap();
        assert_eq!(map["server"]["port"], "0");
        let map = parse_filename("nbd:::1:10852").unwrap();
        assert_eq!(map["server"]["host"], "");
        assert_eq!(map["server"]["port"], ":1:10852");
    }

    #[test]
    fn legacy_errors() {
        assert_eq!(error_of("nbd:"), "NBD server address missing");
        assert_eq!(
            error_of("nbd:h:1:exportname="),
            "NBD server address missing"
        );
        assert_eq!(error_of("nbd:foo"), "error parsing address 'foo'");
        assert_eq!(
            error_of("nbd:127.0.0.1"),
            "error parsing address '127.0.0.1'"
        );
        assert_eq!(error_of("nbd:foo:"), "error parsing address 'foo:'");
        assert_eq!(error_of("nbd:[::1]"), "error parsing IPv6 address '[::1]'");
        assert_eq!(
            error_of("nbd:[::1]:"),
            "error parsing IPv6 address '[::1]:'"
        );
        assert_eq!(
            error_of("nbd:[::1]10852"),
            "error parsing IPv6 address '[::1]10852'"
        );
        assert_eq!(
            error_of("nbd:[::1:10852"),
            "error parsing IPv6 address '[::1:10852'"
        );
    }

    #[test]
    fn other_schemes_are_unknown() {
        assert_eq!(error_of("nbd+foo://x/y"), "Unknown protocol 'nbd+foo'");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2f").as_deref(), Some("a b/"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
    }
}
