//! A whole LUKS1 volume: making a new header with one key slot, and
//! unlocking an existing one into a [`SectorCipher`] for its payload.

use crate::cipher::{CipherMode, CipherSpec, SectorCipher};
use crate::error::{CryptError, Result};
use crate::hash::HashAlg;
use crate::header::{KeySlot, LuksHeader, DIGEST_LEN, KEY_SLOT_DISABLED, NUM_KEY_SLOTS, SALT_LEN};
use crate::keyslot::{self, ReadFn};
use crate::random;
use crate::SECTOR_SIZE;
use zeroize::Zeroizing;

/// Anti-forensic stripes of every key slot (the spec's and QEMU's choice).
pub const STRIPES: u32 = 4000;
/// Where the first key slot's material starts, and the alignment of each
/// slot's area and of the payload (cryptsetup's layout, which QEMU copies).
pub const KEY_SLOT_ALIGN: u64 = 4096;
/// Fewest PBKDF2 iterations for a slot key, whatever `iter-time` says.
pub const MIN_SLOT_KEY_ITERS: u64 = 1000;
/// Fewest PBKDF2 iterations for the master key digest.
pub const MIN_MASTER_KEY_ITERS: u64 = 1000;
/// QEMU's default `iter-time`, in milliseconds.
pub const DEFAULT_ITER_TIME_MS: u64 = 2000;

/// How to make a new volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateParams {
    /// Cipher, mode and IV generator of the payload (and the key material).
    pub spec: CipherSpec,
    /// PBKDF2's and the AF splitter's hash.
    pub hash: HashAlg,
    /// Milliseconds PBKDF2 should take to unlock the key slot.
    pub iter_time_ms: u64,
}

/// A new volume: its header, slot 0's key material, and the payload cipher.
pub struct Created {
    /// The header (slot 0 active, the others free).
    pub header: LuksHeader,
    /// Encrypted key material of slot 0, to write at its offset.
    pub material: Zeroizing<Vec<u8>>,
    /// The payload cipher, keyed with the new master key.
    pub cipher: SectorCipher,
}

/// An unlocked volume.
pub struct Unlocked {
    /// The header.
    pub header: LuksHeader,
    /// The payload cipher, keyed with the master key.
    pub cipher: SectorCipher,
    /// The master key, for filling key slots.
    pub key: Zeroizing<Vec<u8>>,
    /// The key slot that opened.
    pub slot: usize,
}

/// Scales a PBKDF2 rate (iterations per second) to `ms` milliseconds,
/// divided by `divisor`, at least `min`, as QEMU does.
fn scaled_iterations(rate: u64, ms: u64, divisor: u64, min: u64) -> Result<u32> {
    let iters = rate.checked_mul(ms).ok_or_else(|| {
        CryptError::Invalid(format!("PBKDF iterations {rate} too large to scale"))
    })? / 1000
        / divisor;
    let iters = u32::try_from(iters).map_err(|_| {
        CryptError::Invalid(format!("PBKDF iterations {iters} larger than {}", u32::MAX))
    })?;
    Ok(iters.max(min as u32))
}

/// PBKDF2 iterations for a slot key of `key_bytes` from `password` that
/// take `iter_time_ms` milliseconds on this machine (at least
/// [`MIN_SLOT_KEY_ITERS`]).
pub fn slot_iterations(
    hash: HashAlg,
    password: &[u8],
    key_bytes: usize,
    iter_time_ms: u64,
) -> Result<u32> {
    let rate = hash.pbkdf2_rate(password, &[0u8; SALT_LEN], key_bytes);
    scaled_iterations(rate, iter_time_ms, 1, MIN_SLOT_KEY_ITERS)
}

/// Bytes each key slot's area takes, aligned to [`KEY_SLOT_ALIGN`].
fn slot_area(key_bytes: usize) -> u64 {
    let material = keyslot::material_len(key_bytes, STRIPES) as u64;
    material.div_ceil(KEY_SLOT_ALIGN) * KEY_SLOT_ALIGN
}

/// Makes a new volume whose slot 0 opens with `password`: random master
/// key, salts and UUID; iterations measured on this machine for
/// `iter_time_ms` (the master key digest gets an eighth, as in cryptsetup).
pub fn create(params: CreateParams, password: &[u8]) -> Result<Created> {
    let spec = params.spec;
    spec.check()?;
    let hash = params.hash;
    let key_bytes = spec.key_bytes();
    let mut key = Zeroizing::new(vec![0u8; key_bytes]);
    random::fill(&mut key)?;
    let mut mk_digest_salt = [0u8; SALT_LEN];
    random::fill(&mut mk_digest_salt)?;
    let rate = hash.pbkdf2_rate(&key, &mk_digest_salt, DIGEST_LEN);
    let mk_digest_iter = scaled_iterations(rate, params.iter_time_ms, 8, MIN_MASTER_KEY_ITERS)?;
    let mut mk_digest = [0u8; DIGEST_LEN];
    hash.pbkdf2(&key, &mk_digest_salt, mk_digest_iter, &mut mk_digest);

    let area = slot_area(key_bytes);
    let first = KEY_SLOT_ALIGN / SECTOR_SIZE;
    let mut key_slots: [KeySlot; NUM_KEY_SLOTS] = std::array::from_fn(|i| KeySlot {
        active: KEY_SLOT_DISABLED,
        iterations: 0,
        salt: [0; SALT_LEN],
        key_material_offset: (first + area / SECTOR_SIZE * i as u64) as u32,
        stripes: STRIPES,
    });
    let payload_offset = (first + area / SECTOR_SIZE * NUM_KEY_SLOTS as u64) as u32;

    let iterations = slot_iterations(hash, password, key_bytes, params.iter_time_ms)?;
    let material = keyslot::fill(&mut key_slots[0], spec, hash, &key, password, iterations)?;

    let header = LuksHeader {
        cipher_name: spec.alg.header_name().into(),
        cipher_mode: spec.mode_spec(),
        hash_spec: hash.name().into(),
        payload_offset,
        key_bytes: key_bytes as u32,
        mk_digest,
        mk_digest_salt,
        mk_digest_iter,
        uuid: random::uuid()?,
        key_slots,
    };
    let cipher = SectorCipher::new(spec, &key)?;
    Ok(Created {
        header,
        material,
        cipher,
    })
}

/// Opens the first active key slot of `header` (parsed and checked) that
/// `password` unlocks, reading key material through `read`.
pub fn unlock(header: LuksHeader, password: &[u8], read: &ReadFn<'_>) -> Result<Unlocked> {
    let (spec, hash) = header.algorithms()?;
    // A header may be described with an odd XTS key length, not unlocked.
    if header.key_bytes as usize != spec.key_bytes() {
        return Err(CryptError::Invalid(match spec.mode {
            CipherMode::Xts => "XTS cipher key length should be a multiple of 2".into(),
            _ => format!("Invalid key length {}", header.key_bytes),
        }));
    }
    for (i, slot) in header.key_slots.iter().enumerate() {
        if let Some(key) = keyslot::unlock(&header, slot, spec, hash, password, read)? {
            let cipher = SectorCipher::new(spec, &key)?;
            return Ok(Unlocked {
                header,
                cipher,
                key,
                slot: i,
            });
        }
    }
    Err(CryptError::BadPassword)
}

/// Bytes of a header with its key slots' areas: where the payload of a
/// volume made by [`create`] with this spec starts.
pub fn payload_offset(spec: CipherSpec) -> u64 {
    KEY_SLOT_ALIGN + slot_area(spec.key_bytes()) * NUM_KEY_SLOTS as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::{CipherAlg, CipherMode, IvGenAlg};
    use crate::header::HEADER_BYTES;

    /// AES-192 CBC key material (96000 bytes) ends mid-sector: the last
    /// piece is encrypted short, as cryptsetup does (qemu-img 10.0.2 aborts
    /// on it).
    #[test]
    fn key_material_may_end_mid_sector() {
        let spec = CipherSpec {
            alg: CipherAlg::Aes192,
            mode: CipherMode::Cbc,
            ivgen: IvGenAlg::Essiv,
            ivgen_hash: Some(HashAlg::Sha256),
        };
        let params = CreateParams {
            spec,
            hash: HashAlg::Sha1,
            iter_time_ms: 1,
        };
        let c = create(params, b"pw").unwrap();
        assert_eq!(c.material.len(), 96000);
        let mut disk = vec![0u8; c.header.payload_bytes() as usize];
        disk[..HEADER_BYTES].copy_from_slice(&c.header.to_bytes().unwrap());
        disk[4096..4096 + 96000].copy_from_slice(&c.material);
        let read = |off: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&disk[off as usize..off as usize + buf.len()]);
            Ok(())
        };
        assert_eq!(unlock(c.header.clone(), b"pw", &read).unwrap().slot, 0);
    }

    #[test]
    fn created_volume_unlocks_with_its_password_only() {
        let spec = CipherSpec {
            alg: CipherAlg::Aes256,
            mode: CipherMode::Xts,
            ivgen: IvGenAlg::Plain64,
            ivgen_hash: None,
        };
        let params = CreateParams {
            spec,
            hash: HashAlg::Sha256,
            iter_time_ms: 1,
        };
        let c = create(params, b"abc123").unwrap();
        assert_eq!(c.header.payload_bytes(), 2068480);
        assert_eq!(payload_offset(spec), 2068480);
        assert_eq!(c.header.key_slots[7].key_material_offset * 512, 1810432);
        let mut disk = vec![0u8; c.header.payload_bytes() as usize];
        disk[..HEADER_BYTES].copy_from_slice(&c.header.to_bytes().unwrap());
        let at = c.header.key_slots[0].key_material_offset as usize * 512;
        disk[at..at + c.material.len()].copy_from_slice(&c.material);
        let read = |off: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&disk[off as usize..off as usize + buf.len()]);
            Ok(())
        };
        let u = unlock(c.header.clone(), b"abc123", &read).unwrap();
        assert_eq!(u.slot, 0);
        let mut a = vec![7u8; 512];
        c.cipher.encrypt(3, &mut a).unwrap();
        u.cipher.decrypt(3, &mut a).unwrap();
        assert_eq!(a, vec![7u8; 512]);
        assert!(matches!(
            unlock(c.header.clone(), b"wrong", &read),
            Err(CryptError::BadPassword)
        ));
    }
}
