//! Key slots (LUKS1 on-disk format, section 2.4): the master key, split by
//! the AF splitter into `stripes` blocks and encrypted with a key that
//! PBKDF2 derives from a passphrase, sits in each active slot's key
//! material area.

use crate::af;
use crate::cipher::{CipherSpec, SectorCipher};
use crate::error::{CryptError, Result};
use crate::hash::HashAlg;
use crate::header::{KeySlot, LuksHeader, DIGEST_LEN, KEY_SLOT_ENABLED, SALT_LEN};
use crate::random;
use crate::SECTOR_SIZE;
use zeroize::Zeroizing;

/// Bytes of a slot's key material: the split key.
pub fn material_len(key_bytes: usize, stripes: u32) -> usize {
    key_bytes * stripes as usize
}

/// Reads bytes of the volume (header and key material): offset, buffer.
pub type ReadFn<'a> = dyn Fn(u64, &mut [u8]) -> Result<()> + 'a;

/// True if `key` is the master key `header` describes: its PBKDF2 matches
/// the header's digest.
pub fn key_matches(header: &LuksHeader, hash: HashAlg, key: &[u8]) -> bool {
    let mut digest = [0u8; DIGEST_LEN];
    hash.pbkdf2(
        key,
        &header.mk_digest_salt,
        header.mk_digest_iter,
        &mut digest,
    );
    digest == header.mk_digest
}

/// The master key that `slot` holds for `password`, or None if the slot is
/// inactive or the password does not open it.
pub fn unlock(
    header: &LuksHeader,
    slot: &KeySlot,
    spec: CipherSpec,
    hash: HashAlg,
    password: &[u8],
    read: &ReadFn<'_>,
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    if !slot.is_active() {
        return Ok(None);
    }
    if slot.stripes == 0 {
        return Err(CryptError::Invalid("Keyslot has no stripes".into()));
    }
    let key_bytes = header.key_bytes as usize;
    let mut slot_key = Zeroizing::new(vec![0u8; key_bytes]);
    hash.pbkdf2(password, &slot.salt, slot.iterations, &mut slot_key);
    let mut material = Zeroizing::new(vec![0u8; material_len(key_bytes, slot.stripes)]);
    read(
        u64::from(slot.key_material_offset) * SECTOR_SIZE,
        &mut material,
    )?;
    SectorCipher::new(spec, &slot_key)?.decrypt(0, &mut material)?;
    let mut key = Zeroizing::new(vec![0u8; key_bytes]);
    af::merge(hash, &material, &mut key);
    Ok(key_matches(header, hash, &key).then_some(key))
}

/// Fills `slot` with `key` for `password`: a fresh salt, `iterations`, and
/// the encrypted split key to write at the slot's key material offset.
pub fn fill(
    slot: &mut KeySlot,
    spec: CipherSpec,
    hash: HashAlg,
    key: &[u8],
    password: &[u8],
    iterations: u32,
) -> Result<Zeroizing<Vec<u8>>> {
    let mut salt = [0u8; SALT_LEN];
    random::fill(&mut salt)?;
    let mut slot_key = Zeroizing::new(vec![0u8; key.len()]);
    hash.pbkdf2(password, &salt, iterations, &mut slot_key);
    let mut material = af::split(hash, key, slot.stripes as usize)?;
    SectorCipher::new(spec, &slot_key)?.encrypt(0, &mut material)?;
    slot.active = KEY_SLOT_ENABLED;
    slot.iterations = iterations;
    slot.salt = salt;
    Ok(material)
}
