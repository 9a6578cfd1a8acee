//! Stores of protocol driver plugins (`nbd://`, `http://`): finds the
//! driver, turns the image's name or options into the driver's options and
//! opens the store.

use super::RemoteStore;
use crate::block::services::secret_bytes;
use crate::block::spec::ImageSpec;
use crate::block::tls;
use crate::commands::registry;
use qimg_driver_api::abi_stable::std_types::RStr;
use qimg_driver_api::{proto_open, DriverError};
use serde_json::{Map, Value};

/// Opens the store of protocol `driver` that `spec` names, for writing with
/// `write` (a read-only protocol's driver refuses that in its own words),
/// with the name qemu gives the node.
pub fn open(driver: &str, spec: &ImageSpec, write: bool) -> Result<RemoteStore, DriverError> {
    let protocol = registry().find_protocol(driver).map_err(|e| {
        // qemu can stack one format on another (`driver=raw,file.driver=
        // qcow2`); qimg opens formats over stores only, and says so.
        let message = match registry().find(driver) {
            Ok(_) => {
                format!("'{driver}' is a format driver: qimg cannot open one format over another")
            }
            Err(_) => e.to_string(),
        };
        DriverError::unsupported(message)
    })?;
    let options = match spec.remote_options() {
        Some(options) => options.to_string(),
        None => protocol
            .api
            .parse_filename(RStr::from(spec.path.as_str()))
            .into_result()?
            .into(),
    };
    let node_name: String = protocol
        .api
        .canonical_name(RStr::from(options.as_str()))
        .into_result()?
        .into();
    let flags = if write { proto_open::WRITE } else { 0 };
    let store = if protocol.abi_minor >= 7 {
        let secrets = named_secrets(&options).to_string();
        protocol.api.open_with_secrets(
            RStr::from(options.as_str()),
            flags,
            RStr::from(secrets.as_str()),
        )
    } else {
        protocol.api.open(RStr::from(options.as_str()), flags)
    }
    .into_result()?;
    Ok(RemoteStore {
        protocol: protocol.name.clone(),
        veil: super::veil::find(&super::veil::Key::Node(node_name.clone())),
        node_name,
        store,
        slow_reads: Default::default(),
        far: Default::default(),
    })
}

/// The secrets a protocol node's options name (`password-secret=ID`, any
/// option whose name ends in `-secret`), by id, as text, and the TLS
/// credentials `tls-creds=ID` names, as an object: only those, so a
/// plugin never sees the others. Ids without a secret, or whose data is not
/// UTF-8, are left out for the driver to refuse in qemu's words and order.
fn named_secrets(options: &str) -> Value {
    let mut found = Map::new();
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(options) {
        for (key, value) in &map {
            let Value::String(id) = value else {
                continue;
            };
            if key == "tls-creds" {
                if let Some(creds) = tls::lookup(id) {
                    found.insert(id.clone(), creds.to_json());
                }
                continue;
            }
            if !key.ends_with("-secret") {
                continue;
            }
            let text = secret_bytes(id).and_then(|bytes| String::from_utf8(bytes).ok());
            if let Some(text) = text {
                found.insert(id.clone(), Value::String(text));
            }
        }
    }
    Value::Object(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::services::register_secret;

    #[test]
    fn only_the_named_secrets_go_to_the_driver() {
        register_secret("remote-test-pw", b"hunter2".to_vec());
        register_secret("remote-test-other", b"not asked for".to_vec());
        let options = r#"{"url": "http://h/x", "password-secret": "remote-test-pw",
            "cookie-secret": "remote-test-missing", "username": "remote-test-other"}"#;
        let secrets = named_secrets(options);
        assert_eq!(secrets, serde_json::json!({"remote-test-pw": "hunter2"}));
    }

    #[test]
    fn tls_credentials_go_to_the_driver_that_names_them() {
        let creds = tls::X509Creds {
            endpoint: "client".into(),
            verify_peer: true,
            ca_cert: "CA".into(),
            own: None,
        };
        tls::register("remote-test-tls", creds.clone());
        let options = r#"{"host": "h", "tls-creds": "remote-test-tls"}"#;
        assert_eq!(
            named_secrets(options),
            serde_json::json!({"remote-test-tls": creds.to_json()})
        );
        assert_eq!(
            named_secrets(r#"{"host": "h", "tls-creds": "remote-test-none"}"#),
            serde_json::json!({})
        );
    }
}
