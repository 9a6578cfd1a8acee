//! The requests this driver sends: `HEAD` for the size, and `GET` with a
//! single byte range, with the headers every request carries.

use crate::proxy::Proxy;
use crate::url::Url;

/// Headers sent with every request to one URL: cookie and credentials.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// `Cookie` header value.
    pub cookie: Option<String>,
    /// User name and password for `Authorization: Basic`.
    pub credentials: Option<(String, String)>,
}

/// A `HEAD` request for `url`, to the server or to `proxy`.
pub fn head(url: &Url, extra: &Extra, proxy: Option<&Proxy>) -> Vec<u8> {
    encode("HEAD", url, None, extra, proxy)
}

/// A `GET` request for bytes `first..=last` of `url`, to the server or to
/// `proxy`.
pub fn get_range(
    url: &Url,
    first: u64,
    last: u64,
    extra: &Extra,
    proxy: Option<&Proxy>,
) -> Vec<u8> {
    encode("GET", url, Some((first, last)), extra, proxy)
}

/// A `CONNECT` request asking `proxy` for a tunnel to `url`'s server.
pub fn connect(url: &Url, proxy: &Proxy) -> Vec<u8> {
    let authority = url.authority();
    let mut text = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    proxy_headers(&mut text, proxy);
    text.push_str("\r\n");
    text.into_bytes()
}

/// The headers a request to `proxy` carries.
fn proxy_headers(text: &mut String, proxy: &Proxy) {
    if let Some((user, password)) = &proxy.credentials {
        let token = base64(format!("{user}:{password}").as_bytes());
        text.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    text.push_str("Proxy-Connection: Keep-Alive\r\n");
}

/// The request's bytes. The URL parser has refused control characters, so
/// nothing here can break a header line.
fn encode(
    method: &str,
    url: &Url,
    range: Option<(u64, u64)>,
    extra: &Extra,
    proxy: Option<&Proxy>,
) -> Vec<u8> {
    // A proxy is sent the absolute URL.
    let target = match proxy {
        Some(_) => format!(
            "{}://{}{}",
            url.scheme.name(),
            url.host_header(),
            url.target
        ),
        None => url.target.clone(),
    };
    let mut text = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: qimg\r\nAccept: */*\r\n\
         Accept-Encoding: identity\r\n",
        url.host_header()
    );
    if let Some(proxy) = proxy {
        proxy_headers(&mut text, proxy);
    }
    if let Some((first, last)) = range {
        text.push_str(&format!("Range: bytes={first}-{last}\r\n"));
    }
    if let Some(cookie) = &extra.cookie {
        text.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    if let Some((user, password)) = &extra.credentials {
        let token = base64(format!("{user}:{password}").as_bytes());
        text.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let bytes = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let bits = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(input.as_bytes()), output);
        }
    }

    #[test]
    fn requests() {
        let url = Url::parse("http://[::1]:8080/a%20b?c").unwrap();
        let text = String::from_utf8(get_range(&url, 0, 511, &Extra::default(), None)).unwrap();
        assert_eq!(
            text,
            "GET /a%20b?c HTTP/1.1\r\nHost: [::1]:8080\r\nUser-Agent: qimg\r\nAccept: */*\r\n\
             Accept-Encoding: identity\r\nRange: bytes=0-511\r\n\r\n"
        );
        let extra = Extra {
            cookie: Some("k=v".into()),
            credentials: Some(("Aladdin".into(), "open sesame".into())),
        };
        let text = String::from_utf8(head(&url, &extra, None)).unwrap();
        assert!(text.starts_with("HEAD /a%20b?c HTTP/1.1\r\n"));
        assert!(text.contains("\r\nCookie: k=v\r\n"));
        assert!(text.contains("\r\nAuthorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"));
        assert!(!text.contains("Range"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
