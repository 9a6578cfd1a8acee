//! The LUKS1 header inside a qcow2 image (qcow2.txt "Full disk encryption
//! header pointer"), read only to describe it in `info` as qemu does.
//! Fields follow the LUKS1 on-disk format: big-endian, 592 bytes.

use serde_json::{json, Map, Value};

/// Bytes of a LUKS1 header with its 8 key slots.
pub const HEADER_BYTES: u64 = 592;
/// "LUKS\xba\xbe".
const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// A key slot's `active` value when in use.
const SLOT_ACTIVE: u32 = 0x00ac_71f3;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A NUL-padded string field.
fn field(b: &[u8], at: usize, len: usize) -> String {
    let raw = &b[at..at + len];
    let end = raw.iter().position(|&c| c == 0).unwrap_or(len);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// qemu's `encrypt` object for a LUKS header, or None if it is not one.
pub fn info(head: &[u8]) -> Option<Value> {
    if head.len() < HEADER_BYTES as usize || &head[..6] != MAGIC {
        return None;
    }
    let cipher = field(head, 8, 32);
    let mode_spec = field(head, 40, 32);
    let hash = field(head, 72, 32);
    let payload = u64::from(be32(head, 104)) * 512;
    let key_bytes = be32(head, 108);
    let mk_iters = be32(head, 164);
    let uuid = field(head, 168, 40);
    let (mode, ivgen) = mode_spec
        .split_once('-')
        .map_or((mode_spec.as_str(), ""), |(m, iv)| (m, iv));
    let (ivgen_alg, ivgen_hash) = match ivgen.split_once(':') {
        Some((alg, hash)) => (alg.to_string(), Some(hash.to_string())),
        None => (ivgen.to_string(), None),
    };
    // XTS keys hold two cipher keys.
    let cipher_bits = if mode == "xts" {
        key_bytes * 4
    } else {
        key_bytes * 8
    };
    let mut slots = Vec::new();
    for i in 0..8 {
        let at = 208 + i * 48;
        let active = be32(head, at) == SLOT_ACTIVE;
        let mut slot = Map::new();
        slot.insert("active".into(), json!(active));
        if active {
            slot.insert("iters".into(), json!(be32(head, at + 4)));
        }
        slot.insert(
            "key-offset".into(),
            json!(u64::from(be32(head, at + 40)) * 512),
        );
        if active {
            slot.insert("stripes".into(), json!(be32(head, at + 44)));
        }
        slots.push(Value::Object(slot));
    }
    let mut out = Map::new();
    out.insert("ivgen-alg".into(), json!(ivgen_alg));
    out.insert("detached-header".into(), json!(false));
    out.insert("hash-alg".into(), json!(hash));
    out.insert(
        "cipher-alg".into(),
        json!(format!("{cipher}-{cipher_bits}")),
    );
    out.insert("uuid".into(), json!(uuid));
    if let Some(h) = ivgen_hash {
        out.insert("ivgen-hash-alg".into(), json!(h));
    }
    out.insert("format".into(), json!("luks"));
    out.insert("cipher-mode".into(), json!(mode));
    out.insert("slots".into(), Value::Array(slots));
    out.insert("payload-offset".into(), json!(payload));
    out.insert("master-key-iters".into(), json!(mk_iters));
    Some(Value::Object(out))
}
