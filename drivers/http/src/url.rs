//! `http://` and `https://` URLs: parsing, the parts a request needs, and
//! the resolution of a redirect's `Location` against the URL it came from.

use thiserror::Error;

/// The two schemes this driver speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The scheme's name, as a URL spells it.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The port a URL without one means.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// The scheme named `name` (case-insensitive, as in a `Location`).
    fn from_name(name: &str) -> Option<Scheme> {
        if name.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if name.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }
}

/// Why a URL was refused (curl's wording).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    /// A scheme other than http and https.
    #[error("Protocol \"{0}\" not supported")]
    Scheme(String),
    /// No scheme at all.
    #[error("URL rejected: No scheme part in the URL")]
    NoScheme,
    /// An empty host.
    #[error("URL rejected: No host part in the URL")]
    NoHost,
    /// A port that is not a number in 0..=65535 (or is 0).
    #[error("URL rejected: Port number was not a decimal number between 0 and 65535")]
    BadPort,
    /// Spaces, control characters or a malformed host.
    #[error("URL rejected: Malformed input to a URL function")]
    Malformed,
}

/// A parsed absolute `http(s)` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// The host: a name, an IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    /// The port (the scheme's default when the URL has none).
    pub port: u16,
    /// The request target: the path (starting with `/`) and the query,
    /// without the fragment, percent-encoded where the URL had raw bytes
    /// above ASCII.
    pub target: String,
    /// User name and password from the URL, percent-decoded.
    pub credentials: Option<(String, String)>,
}

impl Url {
    /// Parses an absolute URL.
    pub fn parse(text: &str) -> Result<Url, UrlError> {
        if text.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(UrlError::Malformed);
        }
        let colon = text.find(':').ok_or(UrlError::NoScheme)?;
        let (name, rest) = (&text[..colon], &text[colon + 1..]);
        if !is_scheme_name(name) {
            return Err(UrlError::NoScheme);
        }
        let scheme = Scheme::from_name(name).ok_or_else(|| UrlError::Scheme(name.to_string()))?;
        let rest = rest.strip_prefix("//").ok_or(UrlError::Malformed)?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (credentials, hostport) = match authority.rfind('@') {
            Some(at) => (Some(split_userinfo(&authority[..at])), &authority[at + 1..]),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport, scheme)?;
        Ok(Url {
            scheme,
            host,
            port,
            target: target_of(tail, "/"),
            credentials,
        })
    }

    /// The URL a redirect's `location` names, relative to this one.
    pub fn resolve(&self, location: &str) -> Result<Url, UrlError> {
        let location = location.trim();
        if location.bytes().any(|b| b < b' ' || b == 0x7f) {
            return Err(UrlError::Malformed);
        }
        // Servers sometimes send raw spaces; encode them as browsers do.
        let location = location.replace(' ', "%20");
        if let Some(colon) = location.find(':') {
            if is_scheme_name(&location[..colon]) {
                return Url::parse(&location);
            }
        }
        if location.starts_with("//") {
            return Url::parse(&format!("{}:{location}", self.scheme.name()));
        }
        let mut url = self.clone();
        let path = split_query(&self.target).0;
        url.target = if location.is_empty() || location.starts_with('#') {
            self.target.clone()
        } else if location.starts_with('?') {
            target_of(&format!("{path}{location}"), "/")
        } else if location.starts_with('/') {
            target_of(&location, "/")
        } else {
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            target_of(&format!("{dir}{location}"), "/")
        };
        Ok(url)
    }

    /// The `Host` header's value: the host (bracketed if IPv6) and the port
    /// unless it is the scheme's default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// `host:port` (the host bracketed if IPv6), as `CONNECT` names a
    /// server.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// True if `other` is on the same scheme, host and port.
    pub fn same_origin(&self, other: &Url) -> bool {
        self.scheme == other.scheme
            && self.port == other.port
            && self.host.eq_ignore_ascii_case(&other.host)
    }
}

/// True for an RFC 3986 scheme name.
fn is_scheme_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `user:password` (either part percent-encoded) as its decoded parts.
fn split_userinfo(userinfo: &str) -> (String, String) {
    match userinfo.split_once(':') {
        Some((user, password)) => (percent_decode(user), percent_decode(password)),
        None => (percent_decode(userinfo), String::new()),
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
fn split_host_port(hostport: &str, scheme: Scheme) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let close = rest.find(']').ok_or(UrlError::Malformed)?;
        let host = &rest[..close];
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UrlError::Malformed);
        }
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(UrlError::Malformed),
        };
        (host, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    let valid_host = |b: u8| b.is_ascii_alphanumeric() || b".-_~%!$&'()*+,;=:".contains(&b);
    if !host.bytes().all(valid_host) {
        return Err(UrlError::Malformed);
    }
    let port = match port {
        None | Some("") => scheme.default_port(),
        Some(text) if text.bytes().all(|b| b.is_ascii_digit()) && text.len() <= 5 => {
            match text.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(UrlError::BadPort),
            }
        }
        Some(_) => return Err(UrlError::BadPort),
    };
    Ok((host.to_string(), port))
}

/// Splits a target into its path and its query (with the `?`).
fn split_query(target: &str) -> (&str, &str) {
    target.split_at(target.find('?').unwrap_or(target.len()))
}

/// The request target of a URL's path-and-query `tail`: the fragment
/// dropped, dot segments removed, bytes above ASCII percent-encoded, and
/// `empty` for an empty path.
fn target_of(tail: &str, empty: &str) -> String {
    let tail = &tail[..tail.find('#').unwrap_or(tail.len())];
    let (path, query) = split_query(tail);
    let path = if path.is_empty() {
        empty.to_string()
    } else {
        remove_dot_segments(path)
    };
    let mut out = String::with_capacity(path.len() + query.len());
    for &b in path.as_bytes().iter().chain(query.as_bytes()) {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// RFC 3986's dot-segment removal for a path starting with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                // A trailing dot segment leaves a directory: keep the slash.
                if i == last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

/// Decodes `%XX` escapes; malformed escapes stay as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_urls() {
        let url = Url::parse("http://127.0.0.1:8080/a/b.qcow2?x=1#frag").unwrap();
        assert_eq!(url.scheme, Scheme::Http);
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, 8080);
        assert_eq!(url.target, "/a/b.qcow2?x=1");
        assert_eq!(url.credentials, None);
        assert_eq!(url.host_header(), "127.0.0.1:8080");

        let url = Url::parse("HTTPS://Example.com").unwrap();
        assert_eq!(url.scheme, Scheme::Https);
        assert_eq!(url.port, 443);
        assert_eq!(url.target, "/");
        assert_eq!(url.host_header(), "Example.com");

        let url = Url::parse("http://h:/x").unwrap();
        assert_eq!(url.port, 80);
        let url = Url::parse("http://h?q").unwrap();
        assert_eq!(url.target, "/?q");
    }

    #[test]
    fn parses_ipv6_and_credentials() {
        let url = Url::parse("https://us%40er:p%3Aw@[::1]:8443/x").unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, 8443);
        assert_eq!(url.host_header(), "[::1]:8443");
        assert_eq!(
            url.credentials,
            Some(("us@er".to_string(), "p:w".to_string()))
        );
        let url = Url::parse("http://user@[::1]/").unwrap();
        assert_eq!(url.credentials, Some(("user".to_string(), String::new())));
        assert_eq!(url.host_header(), "[::1]");
    }

    #[test]
    fn refuses_bad_urls() {
        assert_eq!(Url::parse("ftp://x/y"), Err(UrlError::Scheme("ftp".into())));
        assert_eq!(Url::parse("foo"), Err(UrlError::NoScheme));
        assert_eq!(Url::parse("http:///x"), Err(UrlError::NoHost));
        assert_eq!(Url::parse("http://h:99999/x"), Err(UrlError::BadPort));
        assert_eq!(Url::parse("http://h:0/x"), Err(UrlError::BadPort));
        assert_eq!(Url::parse("http://h:8a/x"), Err(UrlError::BadPort));
        assert_eq!(Url::parse("http://h/x y"), Err(UrlError::Malformed));
        assert_eq!(Url::parse("http://h/x\r\nX: y"), Err(UrlError::Malformed));
        assert_eq!(Url::parse("http://[zz]/x"), Err(UrlError::Malformed));
        assert_eq!(Url::parse("http://[::1]x/"), Err(UrlError::Malformed));
        assert_eq!(Url::parse("http:x"), Err(UrlError::Malformed));
        assert_eq!(Url::parse("http://a\"b/"), Err(UrlError::Malformed));
    }

    #[test]
    fn encodes_non_ascii_and_removes_dot_segments() {
        let url = Url::parse("http://h/d\u{e9}j\u{e0}/./a/../b.img").unwrap();
        assert_eq!(url.target, "/d%C3%A9j%C3%A0/b.img");
        let url = Url::parse("http://h/a/b/..").unwrap();
        assert_eq!(url.target, "/a/");
        let url = Url::parse("http://h/../../x").unwrap();
        assert_eq!(url.target, "/x");
    }

    #[test]
    fn resolves_redirects() {
        let base = Url::parse("http://u:p@h:81/dir/old.img?q=1").unwrap();
        let abs = base.resolve("https://other/new.img").unwrap();
        assert_eq!(abs.scheme, Scheme::Https);
        assert_eq!(abs.host, "other");
        assert_eq!(abs.credentials, None);
        let scheme_relative = base.resolve("//h2:82/z").unwrap();
        assert_eq!(
            (scheme_relative.scheme, scheme_relative.port),
            (Scheme::Http, 82)
        );
        let absolute_path = base.resolve("/new.img").unwrap();
        assert_eq!(absolute_path.target, "/new.img");
        assert_eq!(absolute_path.port, 81);
        assert_eq!(
            absolute_path.credentials,
            Some(("u".to_string(), "p".to_string()))
        );
        assert_eq!(base.resolve("x.img").unwrap().target, "/dir/x.img");
        assert_eq!(base.resolve("../x.img").unwrap().target, "/x.img");
        assert_eq!(base.resolve("?r=2").unwrap().target, "/dir/old.img?r=2");
        assert_eq!(base.resolve("a b").unwrap().target, "/dir/a%20b");
        assert_eq!(base.resolve("#f").unwrap().target, "/dir/old.img?q=1");
        assert!(base.resolve("ftp://x/").is_err());
        assert!(base.resolve("/x\ry").is_err());
    }

    #[test]
    fn origins() {
        let a = Url::parse("http://H:80/a").unwrap();
        assert!(a.same_origin(&Url::parse("http://h/b").unwrap()));
        assert!(!a.same_origin(&Url::parse("https://h:80/b").unwrap()));
        assert!(!a.same_origin(&Url::parse("http://h:81/b").unwrap()));
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode("%"), "%");
    }
}
