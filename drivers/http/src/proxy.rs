//! The proxy a request goes through, chosen from the environment as curl
//! (and so qemu-img's curl driver) chooses it: `http_proxy` (lower case
//! only) for http URLs, `https_proxy` or `HTTPS_PROXY` for https, else
//! `all_proxy` or `ALL_PROXY`; none for hosts `no_proxy` (or `NO_PROXY`)
//! names. Only http proxies are spoken: plain requests in absolute form,
//! https through a `CONNECT` tunnel. The `proxy-username` and
//! `proxy-password-secret` options log in where the proxy URL does not.

use crate::options::ProxyLogin;
use crate::url::{percent_decode, Scheme, Url};
use std::net::IpAddr;
use thiserror::Error;

/// curl's port for a proxy URL without one.
const DEFAULT_PORT: u16 = 1080;

/// A proxy this driver cannot use.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProxyError {
    /// A SOCKS or https proxy, or an unparsable proxy URL.
    #[error("Unsupported proxy scheme for '{0}'")]
    Unsupported(String),
}

/// An http proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    /// Its host (an IPv6 address without brackets).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// User name and password for `Proxy-Authorization: Basic`.
    pub credentials: Option<(String, String)>,
}

impl Proxy {
    /// The proxy with the user name and password of `login` if its URL
    /// has none (curl lets the URL's win).
    pub fn with_login(mut self, login: &ProxyLogin) -> Proxy {
        if self.credentials.is_none() && (login.user.is_some() || login.password.is_some()) {
            self.credentials = Some((
                login.user.clone().unwrap_or_default(),
                login.password.clone().unwrap_or_default(),
            ));
        }
        self
    }
}

/// The proxy for `url` given the environment variable lookup `env`.
pub fn for_url(
    url: &Url,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, ProxyError> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    let chosen = match url.scheme {
        Scheme::Http => set("http_proxy"),
        Scheme::Https => set("https_proxy").or_else(|| set("HTTPS_PROXY")),
    }
    .or_else(|| set("all_proxy"))
    .or_else(|| set("ALL_PROXY"));
    let Some(text) = chosen else {
        return Ok(None);
    };
    let exempt = set("no_proxy").or_else(|| set("NO_PROXY"));
    if exempt.is_some_and(|list| exempts(&list, &url.host)) {
        return Ok(None);
    }
    parse(&text).map(Some)
}

/// A proxy URL: `[http://][user:password@]host[:port][/]`.
fn parse(text: &str) -> Result<Proxy, ProxyError> {
    let unsupported = || ProxyError::Unsupported(text.to_string());
    let rest = match text.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some(_) => return Err(unsupported()),
        None => text,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (credentials, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (
                Some((percent_decode(user), percent_decode(password))),
                hostport,
            )
        }
        None => (None, authority),
    };
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, tail) = bracketed.split_once(']').ok_or_else(unsupported)?;
        (host, tail.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(port) => port.parse().map_err(|_| unsupported())?,
    };
    if host.is_empty() {
        return Err(unsupported());
    }
    Ok(Proxy {
        host: host.to_string(),
        port,
        credentials,
    })
}

/// True if the `no_proxy` list exempts `host`: `*`, the host itself, a
/// domain it is in (`example.com` and `.example.com` both exempt
/// `www.example.com`), compared without case, or for an address, a
/// network it is in (`10.0.0.0/8`).
fn exempts(list: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    list.split(',').map(str::trim).any(|entry| {
        if let Some((network, bits)) = entry.split_once('/') {
            return in_network(&host, network, bits);
        }
        let entry = entry.trim_start_matches('.').trim_end_matches('.');
        let entry = entry
            .strip_prefix('[')
            .and_then(|e| e.strip_suffix(']'))
            .unwrap_or(entry)
            .to_ascii_lowercase();
        !entry.is_empty()
            && (entry == "*"
                || host == entry
                || host
                    .strip_suffix(entry.as_str())
                    .is_some_and(|head| head.ends_with('.')))
    })
}

/// True if the address `host` is in `network`/`bits` (both of one family).
fn in_network(host: &str, network: &str, bits: &str) -> bool {
    let network = network.trim_start_matches('[').trim_end_matches(']');
    let (Ok(host), Ok(network), Ok(bits)) = (
        host.parse::<IpAddr>(),
        network.parse::<IpAddr>(),
        bits.parse::<u32>(),
    ) else {
        return false;
    };
    let (host, network, width) = match (host, network) {
        (IpAddr::V4(h), IpAddr::V4(n)) => (u128::from(u32::from(h)), u128::from(u32::from(n)), 32),
        (IpAddr::V6(h), IpAddr::V6(n)) => (u128::from(h), u128::from(n), 128),
        _ => return false,
    };
    if bits > width {
        return false;
    }
    let shift = width - bits;
    bits == 0 || host >> shift == network >> shift
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn variables_are_chosen_as_curl_chooses_them() {
        let proxy = |host: &str, port| Proxy {
            host: host.into(),
            port,
            credentials: None,
        };
        let http = url("http://h/x");
        let https = url("https://h/x");
        // Upper-case HTTP_PROXY is ignored (a CGI header could set it).
        assert_eq!(for_url(&http, env(&[("HTTP_PROXY", "p:1")])), Ok(None));
        assert_eq!(
            for_url(&http, env(&[("http_proxy", "p:1")])),
            Ok(Some(proxy("p", 1)))
        );
        assert_eq!(
            for_url(&https, env(&[("HTTPS_PROXY", "http://p")])),
            Ok(Some(proxy("p", 1080)))
        );
        assert_eq!(
            for_url(&https, env(&[("http_proxy", "p:1"), ("ALL_PROXY", "q:2")])),
            Ok(Some(proxy("q", 2)))
        );
        assert_eq!(
            for_url(&http, env(&[("http_proxy", "http://u:p%40ss@[::1]:3/")])),
            Ok(Some(Proxy {
                host: "::1".into(),
                port: 3,
                credentials: Some(("u".into(), "p@ss".into())),
            }))
        );
        assert_eq!(
            for_url(&http, env(&[("http_proxy", "socks5://p:1")])),
            Err(ProxyError::Unsupported("socks5://p:1".into()))
        );
    }

    #[test]
    fn no_proxy_exempts_hosts_and_domains() {
        let vars = |list: &'static str| env_list(list);
        for (list, host, exempt) in [
            ("*", "anything", true),
            ("example.com", "example.com", true),
            ("example.com", "www.EXAMPLE.com", true),
            (".example.com", "www.example.com", true),
            ("example.com", "badexample.com", false),
            ("a, 127.0.0.1 ,b", "127.0.0.1", true),
            ("[::1]", "::1", true),
            ("127.0.0.0/8", "127.0.0.1", true),
            ("10.0.0.0/8", "127.0.0.1", false),
            ("::/0", "::1", true),
            ("127.0.0.1:7", "127.0.0.1", false),
            ("*.example.com", "a.example.com", false),
            ("", "h", false),
        ] {
            let found = for_url(&url(&format!("http://{}/", bracket(host))), vars(list));
            assert_eq!(found.unwrap().is_none(), exempt, "{list:?} {host}");
        }
    }

    fn bracket(host: &str) -> String {
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        }
    }

    fn env_list(list: &'static str) -> impl Fn(&str) -> Option<String> {
        move |name| match name {
            "http_proxy" => Some("p:1".into()),
            "no_proxy" => Some(list.into()),
            _ => None,
        }
    }
}
