//! The node's options, shaped as QEMU's nbd block driver takes them:
//! nested (`{"server": {"type": "inet", "host": ..., "port": ...},
//! "export": ...}`) or with the legacy flat keys `host`, `port`, `path`.
//! Refusals are worded as qemu-img 10.0.2 words them.

use crate::error::{NbdError, Result};
use crate::uri::{self, ADDRESS_MISSING};
use serde_json::{Map, Value};

/// The IANA port of NBD, used when none is given.
pub const DEFAULT_PORT: u32 = 10809;

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Server {
    /// A TCP server; the port may be a service name, as getaddrinfo takes it.
    Inet {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// Port number or service name.
        port: String,
    },
    /// A Unix domain socket.
    Unix {
        /// The socket's path.
        path: String,
    },
}

impl Server {
    /// How qemu names the server in "Failed to connect to '...'".
    pub fn target(&self) -> String {
        match self {
            Server::Inet { host, port } => format!("{host}:{port}"),
            Server::Unix { path } => path.clone(),
        }
    }
}

/// A node's options, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The server.
    pub server: Server,
    /// The export's name; `None` (the default export, `""` on the wire)
    /// and `Some("")` name the same export but print differently.
    pub export: Option<String>,
    /// The id of the `tls-creds` object, if TLS is asked for.
    pub tls_creds: Option<String>,
    /// The name the server's certificate must carry, if not the host's.
    pub tls_hostname: Option<String>,
    /// Seconds to keep trying to connect at open (0: once).
    pub open_timeout: u32,
    /// Seconds for which requests wait for a broken connection to be
    /// replaced, then run again (0: they fail at once).
    pub reconnect_delay: u32,
}

/// Top-level keys QEMU's nbd driver takes that this driver accepts.
const KNOWN_KEYS: &[&str] = &[
    "server",
    "export",
    "host",
    "port",
    "path",
    "tls-creds",
    "tls-hostname",
    "reconnect-delay",
    "open-timeout",
    // The host passes `filename` with --image-opts; qemu ignores it there.
    "filename",
    "driver",
];

/// Keys of an inet or unix `server` that QEMU knows and this driver does
/// not implement.
const UNSUPPORTED_SERVER_KEYS: &[&str] = &[
    "numeric",
    "to",
    "ipv4",
    "ipv6",
    "keep-alive",
    "keep-alive-count",
    "keep-alive-idle",
    "keep-alive-interval",
    "mptcp",
    "abstract",
    "tight",
];

impl Options {
    /// Checks `map`, as the host passes a node's options.
    pub fn from_map(map: &Map<String, Value>) -> Result<Self> {
        if let Some(key) = map.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(NbdError::InvalidArgument(format!(
                "Block protocol 'nbd' doesn't support the option '{key}'"
            )));
        }
        // Unsigned 32-bit options in qemu: -1 is their largest value.
        let seconds = |key: &str| -> Result<u32> {
            Ok(match map.get(key) {
                Some(value) => number(key, value)? as u32,
                None => 0,
            })
        };
        let reconnect_delay = seconds("reconnect-delay")?;
        let open_timeout = seconds("open-timeout")?;
        let flat = ["path", "host", "port"]
            .iter()
            .any(|k| map.contains_key(*k));
        let server = match map.get("server") {
            Some(_) if flat => {
                return Err(NbdError::InvalidArgument(
                    "Cannot use 'server' and path/host/port at the same time".into(),
                ))
            }
            Some(Value::Object(server)) => nested_server(server)?,
            Some(_) => return Err(NbdError::InvalidArgument(ADDRESS_MISSING.into())),
            None => flat_server(map)?,
        };
        let get = |key: &str| map.get(key).map(|v| text(key, v)).transpose();
        Ok(Options {
            server,
            export: get("export")?,
            tls_creds: get("tls-creds")?,
            tls_hostname: get("tls-hostname")?,
            open_timeout,
            reconnect_delay,
        })
    }

    /// The name qemu gives the node.
    pub fn canonical_name(&self) -> String {
        uri::canonical_name(&self.server, self.export.as_deref())
    }
}

/// A string option's text; numbers are written as qemu's keyval parser
/// would have received them.
fn text(key: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
            _ => n.to_string(),
        }),
        Value::Bool(b) => Ok(if *b { "on" } else { "off" }.to_string()),
        _ => Err(NbdError::InvalidArgument(format!(
            "Invalid parameter type for '{key}', expected: string"
        ))),
    }
}

/// `reconnect-delay` and `open-timeout`: integers.
fn number(key: &str, value: &Value) -> Result<i64> {
    let parsed = match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_u64().map(|u| u as i64)),
        Value::String(s) => s
            .parse::<i64>()
            .ok()
            .or_else(|| s.parse::<u64>().ok().map(|u| u as i64)),
        _ => None,
    };
    parsed.ok_or_else(|| NbdError::InvalidArgument(format!("Parameter '{key}' expects a number")))
}

/// The legacy keys: `path`, or `host` with an optional `port`.
fn flat_server(map: &Map<String, Value>) -> Result<Server> {
    let get = |key: &str| map.get(key).map(|v| text(key, v)).transpose();
    let (path, host, port) = (get("path")?, get("host")?, get("port")?);
    match (path, host, port) {
        (Some(_), Some(_), _) => Err(NbdError::InvalidArgument(
            "path and host may not be used at the same time".into(),
        )),
        (Some(_), None, Some(_)) => Err(NbdError::InvalidArgument(
            "port may not be used without host".into(),
        )),
        (Some(path), None, None) => Ok(Server::Unix { path }),
        (None, Some(host), port) => Ok(Server::Inet {
            host,
            port: port.unwrap_or_else(|| DEFAULT_PORT.to_string()),
        }),
        (None, None, _) => Err(NbdError::InvalidArgument(ADDRESS_MISSING.into())),
    }
}

/// A `server` object: `type` inet or unix and that type's keys.
fn nested_server(server: &Map<String, Value>) -> Result<Server> {
    let missing = |key: &str| NbdError::InvalidArgument(format!("Parameter '{key}' is missing"));
    let kind = match server.get("type") {
        Some(v) => text("type", v)?,
        None => return Err(missing("type")),
    };
    let allowed: &[&str] = match kind.as_str() {
        "inet" => &["type", "host", "port"],
        "unix" => &["type", "path"],
        "vsock" | "fd" => {
            return Err(NbdError::Unsupported(format!(
                "NBD server type '{kind}' is not supported by this qimg build"
            )))
        }
        _ => {
            return Err(NbdError::InvalidArgument(format!(
                "Parameter 'type' does not accept value '{kind}'"
            )))
        }
    };
    for key in server.keys() {
        if allowed.contains(&key.as_str()) {
            continue;
        }
        return Err(if UNSUPPORTED_SERVER_KEYS.contains(&key.as_str()) {
            NbdError::Unsupported(format!(
                "NBD server option '{key}' is not supported by this qimg build"
            ))
        } else {
            NbdError::InvalidArgument(format!("Parameter '{key}' is unexpected"))
        });
    }
    let get = |key: &str| match server.get(key) {
        Some(v) => text(key, v),
        None => Err(missing(key)),
    };
    if kind == "unix" {
        return Ok(Server::Unix { path: get("path")? });
    }
    let host = get("host")?;
    let port = get("port")?;
    Ok(Server::Inet { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Options> {
        let Value::Object(map) = value else {
            panic!("not an object")
        };
        Options::from_map(&map)
    }

    fn name(value: Value) -> String {
        parse(value).unwrap().canonical_name()
    }

    fn error(value: Value) -> String {
        parse(value).unwrap_err().to_string()
    }

    #[test]
    fn nested_and_flat_forms_name_the_same_node() {
        // qemu-img info --image-opts driver=raw,file.driver=nbd,
        //   file.host=127.0.0.1,file.port=10811,file.export=qq
        assert_eq!(
            name(json!({"host": "127.0.0.1", "port": "10811", "export": "qq"})),
            "nbd://127.0.0.1:10811/qq"
        );
        assert_eq!(
            name(
                json!({"server": {"type": "inet", "host": "127.0.0.1", "port": 10811},
                        "export": "qq"})
            ),
            "nbd://127.0.0.1:10811/qq"
        );
        assert_eq!(
            name(json!({"server": {"type": "unix", "path": "/tmp/e.sock"}})),
            "nbd+unix://?socket=/tmp/e.sock"
        );
        assert_eq!(
            name(json!({"path": "/tmp/e.sock"})),
            "nbd+unix://?socket=/tmp/e.sock"
        );
    }

    #[test]
    fn an_explicit_empty_export_keeps_its_slash() {
        // --image-opts driver=nbd,host=127.0.0.1,port=10853,export=
        assert_eq!(
            name(json!({"host": "127.0.0.1", "port": "10853", "export": ""})),
            "nbd://127.0.0.1:10853/"
        );
        assert_eq!(
            name(json!({"host": "127.0.0.1", "port": "10853"})),
            "nbd://127.0.0.1:10853"
        );
        // driver=nbd,path=/tmp/nbdx/e.sock,export=
        assert_eq!(
            name(json!({"path": "/tmp/e.sock", "export": ""})),
            "nbd+unix:///?socket=/tmp/e.sock"
        );
    }

    #[test]
    fn ports_print_as_given() {
        // driver=nbd,host=127.0.0.1,port=010851,export=qq prints the zero.
        assert_eq!(
            name(json!({"host": "127.0.0.1", "port": "010851", "export": "qq"})),
            "nbd://127.0.0.1:010851/qq"
        );
        // A host alone gets the default port.
        assert_eq!(
            name(json!({"host": "127.0.0.1", "export": "qq"})),
            "nbd://127.0.0.1:10809/qq"
        );
        assert_eq!(
            name(json!({"host": "::1", "port": 10852, "export": "v6"})),
            "nbd://::1:10852/v6"
        );
        // json:{... "port": 10853.0} prints 10853.
        assert_eq!(
            name(json!({"server": {"type": "inet", "host": "h", "port": 10853.0}})),
            "nbd://h:10853"
        );
        // A number as export name: json:{..., "export": 5}.
        assert_eq!(name(json!({"host": "h", "export": 5})), "nbd://h:10809/5");
    }

    #[test]
    fn tuning_options_do_not_change_the_name() {
        assert_eq!(
            name(json!({"host": "h", "port": "1", "export": "qq",
                        "reconnect-delay": "3", "open-timeout": 3})),
            "nbd://h:1/qq"
        );
        assert_eq!(
            error(json!({"host": "h", "reconnect-delay": "1.5"})),
            "Parameter 'reconnect-delay' expects a number"
        );
        assert_eq!(
            error(json!({"host": "h", "open-timeout": "abc"})),
            "Parameter 'open-timeout' expects a number"
        );
        // qemu takes -1 here.
        assert!(parse(json!({"host": "h", "reconnect-delay": "-1"})).is_ok());
        let timeout = |v: Value| {
            parse(json!({"host": "h", "open-timeout": v}))
                .unwrap()
                .open_timeout
        };
        assert_eq!(timeout(json!("7")), 7);
        assert_eq!(timeout(json!(-1)), u32::MAX);
    }

    #[test]
    fn refusals_in_qemu_words() {
        assert_eq!(
            error(json!({"host": "h", "bogus": 1})),
            "Block protocol 'nbd' doesn't support the option 'bogus'"
        );
        assert_eq!(error(json!({"export": "qq"})), "NBD server address missing");
        assert_eq!(
            error(json!({"port": "10851"})),
            "NBD server address missing"
        );
        assert_eq!(
            error(json!({"server": {"type": "inet", "host": "h", "port": "1"}, "host": "h"})),
            "Cannot use 'server' and path/host/port at the same time"
        );
        assert_eq!(
            error(json!({"path": "/x", "host": "h"})),
            "path and host may not be used at the same time"
        );
        assert_eq!(
            error(json!({"path": "/x", "port": "5"})),
            "port may not be used without host"
        );
        assert_eq!(
            error(json!({"server": {"host": "h", "port": "1"}})),
            "Parameter 'type' is missing"
        );
        assert_eq!(
            error(json!({"server": {"type": "foo"}})),
            "Parameter 'type' does not accept value 'foo'"
        );
        assert_eq!(
            error(json!({"server": {"type": "inet"}})),
            "Parameter 'host' is missing"
        );
        assert_eq!(
            error(json!({"server": {"type": "inet", "host": "h"}})),
            "Parameter 'port' is missing"
        );
        assert_eq!(
            error(json!({"server": {"type": "unix"}})),
            "Parameter 'path' is missing"
        );
        assert_eq!(
            error(json!({"server": {"type": "unix", "path": "/x", "host": "h"}})),
            "Parameter 'host' is unexpected"
        );
        assert_eq!(
            error(json!({"server": {"type": "inet", "host": "h", "port": "1", "bogus": 1}})),
            "Parameter 'bogus' is unexpected"
        );
        assert_eq!(
            error(json!({"host": "h", "export": {"a": 1}})),
            "Invalid parameter type for 'export', expected: string"
        );
    }

    #[test]
    fn tls_options_are_kept() {
        let o = parse(json!({"host": "h", "tls-creds": "tls0", "tls-hostname": "x"})).unwrap();
        assert_eq!(o.tls_creds.as_deref(), Some("tls0"));
        assert_eq!(o.tls_hostname.as_deref(), Some("x"));
    }

    #[test]
    fn unsupported_features_say_so() {
        assert!(matches!(
            parse(json!({"server": {"type": "inet", "host": "h", "port": "1", "ipv4": "on"}}))
                .unwrap_err(),
            NbdError::Unsupported(_)
        ));
        assert!(matches!(
            parse(json!({"server": {"type": "vsock", "cid": "1", "port": "5"}})).unwrap_err(),
            NbdError::Unsupported(_)
        ));
    }

    #[test]
    fn filename_and_driver_are_ignored() {
        // --image-opts driver=nbd,filename=...,host=127.0.0.1 connects to
        // 127.0.0.1:10809: the filename plays no part.
        assert_eq!(
            name(json!({"filename": "nbd://x:1/qq", "host": "127.0.0.1", "driver": "nbd"})),
            "nbd://127.0.0.1:10809"
        );
    }
}
