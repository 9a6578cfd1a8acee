//! `qimg --list-drivers`: every driver the manifest knows, its library, the
//! driver-api and ABI version it was built for, its capabilities, whether it
//! is enabled and whether it loaded (what nbdkit's `--dump-plugin` tells).

use super::loader::{Listed, Registry, Status};
use qimg_driver_api::{caps, proto_caps, ABI_MAJOR};
use serde_json::json;

/// Capability bits and the names the listing gives them.
const CAPABILITY_NAMES: &[(u64, &str)] = &[
    (caps::CREATE, "create"),
    (caps::WRITE, "write"),
    (caps::BACKING, "backing"),
    (caps::RESIZE, "resize"),
    (caps::SNAPSHOTS, "snapshots"),
    (caps::BITMAPS, "bitmaps"),
    (caps::CHECK, "check"),
    (caps::AMEND, "amend"),
    (caps::COMPRESSED_WRITES, "compressed-writes"),
    (caps::MEASURE, "measure"),
    (caps::ZERO_INIT, "zero-init"),
    (caps::IDENTITY_MAPPED, "identity-mapped"),
];

/// Protocol capability bits and the names the listing gives them.
const PROTOCOL_CAPABILITY_NAMES: &[(u64, &str)] = &[
    (proto_caps::WRITE, "write"),
    (proto_caps::BLOCK_STATUS, "block-status"),
    (proto_caps::MULTI_CONN, "multi-conn"),
    (proto_caps::RESIZE, "resize"),
];

/// The names of the protocol capability bits set in `bits`.
fn protocol_capability_names(bits: u64) -> Vec<&'static str> {
    PROTOCOL_CAPABILITY_NAMES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// The names of the capability bits set in `bits`.
pub fn capability_names(bits: u64) -> Vec<&'static str> {
    CAPABILITY_NAMES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}

fn status_word(status: &Status) -> &'static str {
    match status {
        Status::Loaded(_) | Status::LoadedProtocol(_) => "loaded",
        Status::Disabled => "disabled",
        Status::Failed(_) => "failed",
    }
}

/// Prints the listing (human, or JSON with `json`); returns the exit status:
/// 1 if an enabled driver failed to load, else 0.
pub fn print(registry: &Registry, json: bool) -> i32 {
    let listed = registry.listing();
    if json {
        let items: Vec<serde_json::Value> = listed.iter().map(to_json).collect();
        let text = serde_json::to_string_pretty(&items).unwrap_or_default();
        outln!("{text}");
    } else {
        for item in &listed {
            out!("{}", to_text(item));
        }
    }
    i32::from(listed.iter().any(|l| matches!(l.status, Status::Failed(_))))
}

fn to_text(item: &Listed) -> String {
    let name = if item.name.is_empty() {
        "?"
    } else {
        &item.name
    };
    let mut text = format!("driver: {name}\n");
    text.push_str(&format!("    library: {}\n", item.library.display()));
    if let Some(source) = &item.source {
        text.push_str(&format!("    listed in: {}\n", source.display()));
    }
    text.push_str(&format!("    status: {}\n", status_word(&item.status)));
    match &item.status {
        Status::Loaded(d) => {
            text.push_str(&format!("    description: {}\n", d.description.description));
            text.push_str(&format!(
                "    driver-api: {} (ABI {})\n",
                d.api_version,
                d.abi()
            ));
            if let Some(package) = &d.package {
                text.push_str(&format!("    package: {package}\n"));
            }
            text.push_str(&format!(
                "    capabilities: {}\n",
                capability_names(d.caps).join(" ")
            ));
        }
        Status::LoadedProtocol(p) => {
            text.push_str(&format!("    description: {}\n", p.description));
            text.push_str(&format!(
                "    driver-api: {} (ABI {ABI_MAJOR}.{})\n",
                p.api_version, p.abi_minor
            ));
            if let Some(package) = &p.package {
                text.push_str(&format!("    package: {package}\n"));
            }
            text.push_str(&format!("    protocol schemes: {}\n", p.schemes.join(" ")));
            text.push_str(&format!(
                "    capabilities: {}\n",
                protocol_capability_names(p.caps).join(" ")
            ));
        }
        Status::Failed(reason) => text.push_str(&format!("    error: {reason}\n")),
        Status::Disabled => {}
    }
    text
}

fn to_json(item: &Listed) -> serde_json::Value {
    let mut value = json!({
        "name": item.name,
        "library": item.library.display().to_string(),
        "listed-in": item.source.as_ref().map(|s| s.display().to_string()),
        "enabled": !matches!(item.status, Status::Disabled),
        "status": status_word(&item.status),
    });
    match &item.status {
        Status::Loaded(d) => {
            value["description"] = json!(d.description.description);
            value["driver-api"] = json!(d.api_version);
            value["abi"] = json!(d.abi());
            value["package"] = json!(d.package);
            value["capabilities"] = json!(capability_names(d.caps));
        }
        Status::LoadedProtocol(p) => {
            value["description"] = json!(p.description);
            value["driver-api"] = json!(p.api_version);
            value["abi"] = json!(format!("{ABI_MAJOR}.{}", p.abi_minor));
            value["package"] = json!(p.package);
            value["protocol-schemes"] = json!(p.schemes);
            value["capabilities"] = json!(protocol_capability_names(p.caps));
        }
        Status::Failed(reason) => value["error"] = json!(reason),
        Status::Disabled => {}
    }
    value
}
