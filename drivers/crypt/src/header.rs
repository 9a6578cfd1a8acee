//! The LUKS1 partition header (LUKS1 on-disk format, section 2.1, "PHDR"):
//! 592 bytes, big-endian, followed by the 8 key-slot descriptors it holds.

use crate::cipher::CipherSpec;
use crate::error::{CryptError, Result};
use crate::hash::HashAlg;
use serde_json::{json, Map, Value};

/// Bytes of a header with its 8 key slots.
pub const HEADER_BYTES: usize = 592;
/// The magic, "LUKS\xba\xbe".
pub const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// The only version this crate reads and writes.
pub const VERSION: u16 = 1;
/// Key slots in a header.
pub const NUM_KEY_SLOTS: usize = 8;
/// Bytes of a PBKDF2 salt.
pub const SALT_LEN: usize = 32;
/// Bytes of the master key digest.
pub const DIGEST_LEN: usize = 20;
/// A key slot's `active` value when it holds a key.
pub const KEY_SLOT_ENABLED: u32 = 0x00ac_71f3;
/// A key slot's `active` value when it is free.
pub const KEY_SLOT_DISABLED: u32 = 0x0000_dead;

/// Offsets of the header's fields (on-disk format, table 1).
mod at {
    pub const VERSION: usize = 6;
    pub const CIPHER_NAME: usize = 8;
    pub const CIPHER_MODE: usize = 40;
    pub const HASH_SPEC: usize = 72;
    pub const PAYLOAD_OFFSET: usize = 104;
    pub const KEY_BYTES: usize = 108;
    pub const MK_DIGEST: usize = 112;
    pub const MK_DIGEST_SALT: usize = 132;
    pub const MK_DIGEST_ITER: usize = 164;
    pub const UUID: usize = 168;
    pub const KEY_SLOTS: usize = 208;
    /// Bytes of one key-slot descriptor.
    pub const KEY_SLOT: usize = 48;
    /// Widths of the text fields.
    pub const NAME_LEN: usize = 32;
    pub const UUID_LEN: usize = 40;
}

/// One key-slot descriptor (on-disk format, table 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySlot {
    /// [`KEY_SLOT_ENABLED`] or [`KEY_SLOT_DISABLED`].
    pub active: u32,
    /// PBKDF2 iterations turning the passphrase into the slot key.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: [u8; SALT_LEN],
    /// Start of the key material, in 512-byte sectors.
    pub key_material_offset: u32,
    /// Anti-forensic stripes of the key material.
    pub stripes: u32,
}

impl KeySlot {
    /// True if the slot holds a key.
    pub fn is_active(&self) -> bool {
        self.active == KEY_SLOT_ENABLED
    }
}

/// A LUKS1 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksHeader {
    /// `cipher-name` (`aes`).
    pub cipher_name: String,
    /// `cipher-mode` (`xts-plain64`).
    pub cipher_mode: String,
    /// `hash-spec` (`sha256`): PBKDF2's and the AF splitter's hash.
    pub hash_spec: String,
    /// Start of the payload, in 512-byte sectors.
    pub payload_offset: u32,
    /// Bytes of the master key.
    pub key_bytes: u32,
    /// PBKDF2 of the master key, to recognise it when unlocked.
    pub mk_digest: [u8; DIGEST_LEN],
    /// Salt of that PBKDF2.
    pub mk_digest_salt: [u8; SALT_LEN],
    /// Iterations of that PBKDF2.
    pub mk_digest_iter: u32,
    /// The volume's UUID in text form.
    pub uuid: String,
    /// The key slots.
    pub key_slots: [KeySlot; NUM_KEY_SLOTS],
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A NUL-padded text field.
fn text(b: &[u8], at: usize, len: usize) -> String {
    let raw = &b[at..at + len];
    let end = raw.iter().position(|&c| c == 0).unwrap_or(len);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn put_text(b: &mut [u8], at: usize, len: usize, s: &str) -> Result<()> {
    // One byte stays for the terminating NUL, as QEMU requires.
    if s.len() >= len {
        return Err(CryptError::Invalid(format!(
            "'{s}' is too long for LUKS header"
        )));
    }
    b[at..at + s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

impl LuksHeader {
    /// True if `head` starts with a LUKS1 magic and version.
    pub fn probe(head: &[u8]) -> bool {
        head.len() >= at::CIPHER_NAME && &head[..6] == MAGIC && be16(head, at::VERSION) == VERSION
    }

    /// Parses the header at the start of `b` (at least [`HEADER_BYTES`]).
    pub fn parse(b: &[u8]) -> Result<LuksHeader> {
        if b.len() < HEADER_BYTES || &b[..6] != MAGIC {
            return Err(CryptError::NotLuks);
        }
        let version = be16(b, at::VERSION);
        if version != VERSION {
            return Err(CryptError::Version(version));
        }
        for (field, what) in [
            (at::CIPHER_NAME, "cipher name"),
            (at::CIPHER_MODE, "cipher mode"),
            (at::HASH_SPEC, "hash spec"),
        ] {
            if !b[field..field + at::NAME_LEN].contains(&0) {
                return Err(CryptError::Invalid(format!(
                    "LUKS header {what} is not NUL terminated"
                )));
            }
        }
        let key_slots = std::array::from_fn(|i| {
            let s = at::KEY_SLOTS + i * at::KEY_SLOT;
            KeySlot {
                active: be32(b, s),
                iterations: be32(b, s + 4),
                salt: b[s + 8..s + 8 + SALT_LEN].try_into().expect("32 bytes"),
                key_material_offset: be32(b, s + 40),
                stripes: be32(b, s + 44),
            }
        });
        Ok(LuksHeader {
            cipher_name: text(b, at::CIPHER_NAME, at::NAME_LEN),
            cipher_mode: text(b, at::CIPHER_MODE, at::NAME_LEN),
            hash_spec: text(b, at::HASH_SPEC, at::NAME_LEN),
            payload_offset: be32(b, at::PAYLOAD_OFFSET),
            key_bytes: be32(b, at::KEY_BYTES),
            mk_digest: b[at::MK_DIGEST..at::MK_DIGEST + DIGEST_LEN]
                .try_into()
                .expect("20 bytes"),
            mk_digest_salt: b[at::MK_DIGEST_SALT..at::MK_DIGEST_SALT + SALT_LEN]
                .try_into()
                .expect("32 bytes"),
            mk_digest_iter: be32(b, at::MK_DIGEST_ITER),
            uuid: text(b, at::UUID, at::UUID_LEN),
            key_slots,
        })
    }

    /// The on-disk bytes.
    pub fn to_bytes(&self) -> Result<[u8; HEADER_BYTES]> {
        let mut b = [0u8; HEADER_BYTES];
        b[..6].copy_from_slice(MAGIC);
        b[at::VERSION..at::VERSION + 2].copy_from_slice(&VERSION.to_be_bytes());
        put_text(&mut b, at::CIPHER_NAME, at::NAME_LEN, &self.cipher_name)?;
        put_text(&mut b, at::CIPHER_MODE, at::NAME_LEN, &self.cipher_mode)?;
        put_text(&mut b, at::HASH_SPEC, at::NAME_LEN, &self.hash_spec)?;
        let put32 =
            |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        put32(&mut b, at::PAYLOAD_OFFSET, self.payload_offset);
        put32(&mut b, at::KEY_BYTES, self.key_bytes);
        b[at::MK_DIGEST..at::MK_DIGEST + DIGEST_LEN].copy_from_slice(&self.mk_digest);
        b[at::MK_DIGEST_SALT..at::MK_DIGEST_SALT + SALT_LEN].copy_from_slice(&self.mk_digest_salt);
        put32(&mut b, at::MK_DIGEST_ITER, self.mk_digest_iter);
        put_text(&mut b, at::UUID, at::UUID_LEN, &self.uuid)?;
        for (i, slot) in self.key_slots.iter().enumerate() {
            let s = at::KEY_SLOTS + i * at::KEY_SLOT;
            put32(&mut b, s, slot.active);
            put32(&mut b, s + 4, slot.iterations);
            b[s + 8..s + 8 + SALT_LEN].copy_from_slice(&slot.salt);
            put32(&mut b, s + 40, slot.key_material_offset);
            put32(&mut b, s + 44, slot.stripes);
        }
        Ok(b)
    }

    /// The header's cipher, mode and IV generator, and its hash, checked
    /// as QEMU checks them.
    pub fn algorithms(&self) -> Result<(CipherSpec, HashAlg)> {
        CipherSpec::from_header(
            &self.cipher_name,
            &self.cipher_mode,
            self.key_bytes,
            &self.hash_spec,
        )
    }

    /// Sectors one key slot's material with `stripes` stripes takes in the
    /// layout: whole 4 KiB units, as QEMU counts them when it checks
    /// overlaps (a payload one sector into the last slot's rounded area is
    /// refused, not read at an offset one sector off).
    fn material_sectors(&self, stripes: u32) -> u64 {
        let unit = 4096 / crate::SECTOR_SIZE;
        (u64::from(self.key_bytes) * u64::from(stripes))
            .div_ceil(crate::SECTOR_SIZE)
            .next_multiple_of(unit)
    }

    /// The layout checks QEMU makes before trusting a header (messages and
    /// order are QEMU's): payload after the header, digest iterations, and
    /// for each key slot its state, stripes, iterations and an area between
    /// the header and the payload that no other slot's overlaps. A
    /// `detached` header (its payload in another file) has no payload to
    /// overlap.
    pub fn check(&self, detached: bool) -> Result<()> {
        let bad = |m: String| Err(CryptError::Invalid(m));
        // The header with its key-slot table fills the first 4 KiB
        // (cryptsetup's layout): no key material or payload may start there.
        let header_sectors = 4096 / crate::SECTOR_SIZE;
        if !detached && u64::from(self.payload_offset) < header_sectors {
            return bad("LUKS payload is overlapping with the header".into());
        }
        if self.mk_digest_iter == 0 {
            return bad("LUKS key iteration count is zero".into());
        }
        for (i, s1) in self.key_slots.iter().enumerate() {
            if s1.stripes != crate::volume::STRIPES {
                return bad(format!(
                    "Keyslot {i} is corrupted (stripes {} != {})",
                    // A C int in QEMU's message.
                    s1.stripes as i32,
                    crate::volume::STRIPES
                ));
            }
            if s1.active != KEY_SLOT_ENABLED && s1.active != KEY_SLOT_DISABLED {
                return bad(format!("Keyslot {i} state (active/disable) is corrupted"));
            }
            if s1.is_active() && s1.iterations == 0 {
                return bad(format!("Keyslot {i} iteration count is zero"));
            }
            let start1 = u64::from(s1.key_material_offset);
            let len1 = self.material_sectors(s1.stripes);
            if start1 < header_sectors {
                return bad(format!("Keyslot {i} is overlapping with the LUKS header"));
            }
            if !detached && start1 + len1 > u64::from(self.payload_offset) {
                return bad(format!(
                    "Keyslot {i} is overlapping with the encrypted payload"
                ));
            }
            for (j, s2) in self.key_slots.iter().enumerate().skip(i + 1) {
                let start2 = u64::from(s2.key_material_offset);
                let len2 = self.material_sectors(s2.stripes);
                if start1 + len1 > start2 && start2 + len2 > start1 {
                    return bad(format!(
                        "Keyslots {i} and {j} are overlapping in the header"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Byte offset of the payload.
    pub fn payload_bytes(&self) -> u64 {
        u64::from(self.payload_offset) * crate::SECTOR_SIZE
    }

    /// QEMU's description of the header (`QCryptoBlockInfoLUKS`), in the
    /// key order qemu-img prints: the `data` of a luks image's
    /// `format-specific` block, and qcow2's `encrypt` object.
    pub fn info(&self, detached_header: bool) -> Value {
        let (mode, ivgen) = self
            .cipher_mode
            .split_once('-')
            .unwrap_or((self.cipher_mode.as_str(), ""));
        let (ivgen_alg, ivgen_hash) = match ivgen.split_once(':') {
            Some((alg, hash)) => (alg, Some(hash)),
            None => (ivgen, None),
        };
        // XTS keys hold two cipher keys (an odd byte is dropped, as QEMU
        // names the cipher from the halved length).
        let cipher_bits = if mode == "xts" {
            self.key_bytes / 2 * 8
        } else {
            self.key_bytes * 8
        };
        let slots: Vec<Value> = self
            .key_slots
            .iter()
            .map(|slot| {
                let mut s = Map::new();
                s.insert("active".into(), json!(slot.is_active()));
                if slot.is_active() {
                    s.insert("iters".into(), json!(slot.iterations));
                }
                s.insert(
                    "key-offset".into(),
                    json!(u64::from(slot.key_material_offset) * crate::SECTOR_SIZE),
                );
                if slot.is_active() {
                    s.insert("stripes".into(), json!(slot.stripes));
                }
                Value::Object(s)
            })
            .collect();
        let mut out = Map::new();
        out.insert("ivgen-alg".into(), json!(ivgen_alg));
        out.insert("detached-header".into(), json!(detached_header));
        out.insert("hash-alg".into(), json!(self.hash_spec));
        out.insert(
            "cipher-alg".into(),
            json!(format!("{}-{cipher_bits}", self.cipher_name)),
        );
        out.insert("uuid".into(), json!(self.uuid));
        // Only ESSIV uses its hash; QEMU shows none for other generators.
        if let Some(h) = ivgen_hash.filter(|_| ivgen_alg == "essiv") {
            out.insert("ivgen-hash-alg".into(), json!(h));
        }
        out.insert("cipher-mode".into(), json!(mode));
        out.insert("slots".into(), Value::Array(slots));
        out.insert("payload-offset".into(), json!(self.payload_bytes()));
        out.insert("master-key-iters".into(), json!(self.mk_digest_iter));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_inverts_to_bytes() {
        let h = LuksHeader {
            cipher_name: "aes".into(),
            cipher_mode: "cbc-essiv:sha256".into(),
            hash_spec: "sha1".into(),
            payload_offset: 4040,
            key_bytes: 32,
            mk_digest: [3; DIGEST_LEN],
            mk_digest_salt: [4; SALT_LEN],
            mk_digest_iter: 1000,
            uuid: "1f084df9-51a9-4cb1-b9b7-13b5b1f2e7ab".into(),
            key_slots: std::array::from_fn(|i| KeySlot {
                active: if i == 0 {
                    KEY_SLOT_ENABLED
                } else {
                    KEY_SLOT_DISABLED
                },
                iterations: i as u32,
                salt: [i as u8; SALT_LEN],
                key_material_offset: 8 + 500 * i as u32,
                stripes: 4000,
            }),
        };
        let b = h.to_bytes().unwrap();
        assert!(LuksHeader::probe(&b));
        assert_eq!(LuksHeader::parse(&b), Ok(h));
        assert_eq!(LuksHeader::parse(&b[..100]), Err(CryptError::NotLuks));
    }
}
