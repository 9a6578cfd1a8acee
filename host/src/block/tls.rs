//! `--object tls-creds-x509`: TLS credentials loaded from a directory as
//! QEMU loads them (`ca-cert.pem`; `client-cert.pem` and `client-key.pem`
//! for a client, `server-cert.pem` and `server-key.pem` for a server),
//! with qemu-img's messages, and kept for the protocol drivers whose
//! nodes name them (`tls-creds=ID`).

use crate::sync::lock;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// Properties a `tls-creds-x509` object takes.
const PROPERTIES: &[&str] = &[
    "qom-type",
    "id",
    "dir",
    "endpoint",
    "verify-peer",
    "priority",
    "sanity-check",
    "loaded",
    "passwordid",
];

/// Loaded credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509Creds {
    /// `client` or `server`.
    pub endpoint: String,
    /// Whether the peer's certificate is verified.
    pub verify_peer: bool,
    /// The CA certificates (PEM).
    pub ca_cert: String,
    /// The endpoint's own certificate and key (PEM), if it has both.
    pub own: Option<(String, String)>,
}

impl X509Creds {
    /// What a protocol driver gets for the object (see `qimg-nbd`'s
    /// `tls::Credentials`).
    pub fn to_json(&self) -> Value {
        let mut value = json!({
            "qom-type": "tls-creds-x509",
            "endpoint": self.endpoint,
            "verify-peer": self.verify_peer,
            "ca-cert": self.ca_cert,
        });
        if let Some((cert, key)) = &self.own {
            let prefix = &self.endpoint;
            value[format!("{prefix}-cert")] = Value::String(cert.clone());
            value[format!("{prefix}-key")] = Value::String(key.clone());
        }
        value
    }
}

/// Loads the object `get` describes (its properties by name, the last
/// given winning), checking them in qemu's order and words.
pub fn load(keys: &[String], get: impl Fn(&str) -> Option<String>) -> Result<X509Creds, String> {
    if let Some(key) = keys.iter().find(|k| !PROPERTIES.contains(&k.as_str())) {
        return Err(format!("Parameter '{key}' is unexpected"));
    }
    let endpoint = get("endpoint").unwrap_or_else(|| "client".into());
    if endpoint != "client" && endpoint != "server" {
        return Err(format!(
            "Parameter 'endpoint' does not accept value '{endpoint}'"
        ));
    }
    let verify_peer = match get("verify-peer").as_deref() {
        None | Some("on" | "yes" | "true") => true,
        Some("off" | "no" | "false") => false,
        Some(_) => return Err("Parameter 'verify-peer' expects 'on' or 'off'".into()),
    };
    let dir = get("dir").ok_or("Missing 'dir' property value")?;
    let dir = Path::new(&dir);
    let ca_cert = required(dir, "ca-cert.pem")?;
    let own = if endpoint == "server" {
        let cert = required(dir, "server-cert.pem")?;
        Some((cert, required(dir, "server-key.pem")?))
    } else {
        match (
            optional(dir, "client-cert.pem")?,
            optional(dir, "client-key.pem")?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        }
    };
    Ok(X509Creds {
        endpoint,
        verify_peer,
        ca_cert,
        own,
    })
}

/// The file `name` in `dir`, which must exist.
fn required(dir: &Path, name: &str) -> Result<String, String> {
    optional(dir, name)?.ok_or_else(|| {
        format!(
            "Unable to access credentials {}: No such file or directory",
            dir.join(name).display()
        )
    })
}

/// The file `name` in `dir`, if it exists.
fn optional(dir: &Path, name: &str) -> Result<Option<String>, String> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("Unable to import {}: not a PEM file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "Unable to access credentials {}: {}",
            path.display(),
            qimg_driver_api::error::io_message(&e)
        )),
    }
}

fn registry() -> &'static Mutex<HashMap<String, X509Creds>> {
    static CREDS: OnceLock<Mutex<HashMap<String, X509Creds>>> = OnceLock::new();
    CREDS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Registers credentials under `id`.
pub fn register(id: &str, creds: X509Creds) {
    lock(registry()).insert(id.to_string(), creds);
}

/// The credentials registered under `id`.
pub fn lookup(id: &str) -> Option<X509Creds> {
    lock(registry()).get(id).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads an object with the properties `list`.
    fn load_with(list: &[(&str, &str)]) -> Result<X509Creds, String> {
        let keys: Vec<String> = list.iter().map(|(k, _)| k.to_string()).collect();
        let get = |key: &str| {
            list.iter()
                .rev()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        };
        load(&keys, get)
    }

    #[test]
    fn files_are_loaded_and_checked_as_qemu_does() {
        let dir = std::env::temp_dir().join(format!("qimg-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.to_str().unwrap();
        assert_eq!(
            load_with(&[("dir", d)]).unwrap_err(),
            format!("Unable to access credentials {d}/ca-cert.pem: No such file or directory")
        );
        std::fs::write(dir.join("ca-cert.pem"), "CA").unwrap();
        std::fs::write(dir.join("client-cert.pem"), "CERT").unwrap();
        // A certificate without its key is not used.
        let creds = load_with(&[("dir", d), ("verify-peer", "off")]).unwrap();
        assert_eq!((creds.own, creds.verify_peer), (None, false));
        std::fs::write(dir.join("client-key.pem"), "KEY").unwrap();
        let creds = load_with(&[("dir", d)]).unwrap();
        assert_eq!(creds.to_json()["client-key"], "KEY");
        assert_eq!(
            load_with(&[("dir", d), ("endpoint", "server")]).unwrap_err(),
            format!("Unable to access credentials {d}/server-cert.pem: No such file or directory")
        );
        assert_eq!(
            load_with(&[("dir", d), ("bogus", "1")]).unwrap_err(),
            "Parameter 'bogus' is unexpected"
        );
        assert_eq!(
            load_with(&[("endpoint", "client")]).unwrap_err(),
            "Missing 'dir' property value"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
