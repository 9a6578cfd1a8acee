//! The parent locator of a differencing disk ([MS-VHDX] 2.6.2.6): a
//! metadata item naming the parent's identity (`parent_linkage`, the
//! parent header's DataWriteGuid) and where to find its file
//! (`relative_path`, `volume_path`, `absolute_win32_path`), as UTF-16LE
//! key-value pairs.

use crate::error::{Result, VhdxError};
use crate::format::{guid, guid_at, le16, le32, put16, put32, Guid};
use qimg_driver_util::winpath;

/// The VHDX parent locator type, the only one [MS-VHDX] defines.
const VHDX_LOCATOR: Guid = guid(0xB04A_EFB7, 0xD19E, 0x4A81, 0xB789_25B8_E944_5913);
/// Bytes of the locator header.
const HEADER: usize = 20;
/// Bytes of one key-value entry.
const ENTRY: usize = 12;
/// The largest locator read.
pub const MAX_BYTES: u32 = 1 << 20;

/// A parsed locator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locator {
    /// Its key-value pairs, in stored order.
    pub entries: Vec<(String, String)>,
}

impl Locator {
    /// Parses a locator item.
    pub fn parse(b: &[u8]) -> Result<Locator> {
        if b.len() < HEADER {
            return Err(VhdxError::Invalid);
        }
        if guid_at(b, 0) != VHDX_LOCATOR {
            return Err(VhdxError::NotSupported);
        }
        let count = usize::from(le16(b, 18));
        if HEADER + count * ENTRY > b.len() {
            return Err(VhdxError::Invalid);
        }
        let text = |offset: u32, len: u16| -> Result<String> {
            let start = offset as usize;
            let end = start + usize::from(len);
            if end > b.len() || !len.is_multiple_of(2) {
                return Err(VhdxError::Invalid);
            }
            Ok(winpath::utf16le(&b[start..end]))
        };
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let e = HEADER + i * ENTRY;
            let key = text(le32(b, e), le16(b, e + 8))?;
            let value = text(le32(b, e + 4), le16(b, e + 10))?;
            entries.push((key, value));
        }
        Ok(Locator { entries })
    }

    /// The item's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER + self.entries.len() * ENTRY];
        b[..16].copy_from_slice(&VHDX_LOCATOR);
        put16(&mut b, 18, self.entries.len() as u16);
        for (i, (key, value)) in self.entries.iter().enumerate() {
            let e = HEADER + i * ENTRY;
            for (field, s) in [(0, key), (4, value)] {
                let at = b.len();
                b.extend(s.encode_utf16().flat_map(u16::to_le_bytes));
                let len = b.len() - at;
                put32(&mut b, e + field, at as u32);
                put16(&mut b, e + 8 + field / 2, len as u16);
            }
        }
        b
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The parent identities it accepts (`parent_linkage`, then
    /// `parent_linkage2`).
    pub fn linkages(&self) -> Vec<Guid> {
        ["parent_linkage", "parent_linkage2"]
            .iter()
            .filter_map(|k| self.get(k).and_then(parse_guid))
            .collect()
    }

    /// The file names to try for the parent, relative to the child's
    /// directory, in the order [MS-VHDX] gives: the relative path, then the
    /// last components of the volume and absolute paths (looked for beside
    /// the child).
    pub fn candidates(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let found = [
            self.get("relative_path").map(winpath::relative),
            self.get("volume_path").map(winpath::beside_child),
            self.get("absolute_win32_path").map(winpath::beside_child),
        ];
        for name in found.into_iter().flatten() {
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}

/// A GUID as the locator writes it: `{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}`.
pub fn format_guid(g: &Guid) -> String {
    let d1 = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
    let d2 = u16::from_le_bytes([g[4], g[5]]);
    let d3 = u16::from_le_bytes([g[6], g[7]]);
    let hex: String = g[8..].iter().map(|b| format!("{b:02x}")).collect();
    format!("{{{d1:08x}-{d2:04x}-{d3:04x}-{}-{}}}", &hex[..4], &hex[4..])
}

/// Parses a GUID written as [`format_guid`] writes it (either case, braces
/// optional).
pub fn parse_guid(text: &str) -> Option<Guid> {
    let t = text.trim();
    let t = t.strip_prefix('{').unwrap_or(t);
    let t = t.strip_suffix('}').unwrap_or(t);
    let parts: Vec<&str> = t.split('-').collect();
    let lengths = [8, 4, 4, 4, 12];
    if parts.len() != 5 || parts.iter().zip(lengths).any(|(p, n)| p.len() != n) {
        return None;
    }
    let d1 = u32::from_str_radix(parts[0], 16).ok()?;
    let d2 = u16::from_str_radix(parts[1], 16).ok()?;
    let d3 = u16::from_str_radix(parts[2], 16).ok()?;
    let d4 = u64::from_str_radix(&format!("{}{}", parts[3], parts[4]), 16).ok()?;
    Some(guid(d1, d2, d3, d4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_round_trip_through_text() {
        let g = guid(0x83ED_0EC3, 0x24C8, 0x49A6, 0xA959_5E4B_F128_8BFB);
        assert_eq!(format_guid(&g), "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}");
        assert_eq!(
            parse_guid("{83ED0EC3-24C8-49A6-A959-5E4BF1288BFB}"),
            Some(g)
        );
        assert_eq!(parse_guid("{83ed0ec3-24c8-49a6-a959}"), None);
    }

    #[test]
    fn locators_round_trip() {
        let l = Locator {
            entries: vec![
                (
                    "parent_linkage".into(),
                    "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}".into(),
                ),
                ("relative_path".into(), ".\\base.vhdx".into()),
                (
                    "absolute_win32_path".into(),
                    "\\\\?\\C:\\VMs\\base.vhdx".into(),
                ),
            ],
        };
        let parsed = Locator::parse(&l.encode()).expect("parse");
        assert_eq!(parsed, l);
        assert_eq!(parsed.candidates(), vec!["base.vhdx".to_string()]);
        assert_eq!(parsed.linkages().len(), 1);
    }

    #[test]
    fn entries_past_the_item_are_refused() {
        let mut b = Locator {
            entries: vec![("relative_path".into(), "a".into())],
        }
        .encode();
        put16(&mut b, HEADER + 10, 200);
        assert!(Locator::parse(&b).is_err());
        put16(&mut b, 18, 5000);
        assert!(Locator::parse(&b).is_err());
    }
}
