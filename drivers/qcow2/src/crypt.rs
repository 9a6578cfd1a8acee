//! Legacy qcow2 encryption (`crypt_method` 1, `encrypt.format=aes`), as
//! qcow2.txt describes it: every 512-byte sector of guest data is
//! encrypted with AES-128 in CBC mode; the key is the password's first 16
//! bytes, zero-padded, and the IV of a sector is its guest sector number as a
//! 64-bit little-endian integer, zero-padded ("plain64").
//!
//! The scheme is weak (no key derivation, predictable IVs); it is supported
//! so that old images can be read and converted, as qemu-img can.
//!
//! LUKS encryption (`crypt_method` 2, `encrypt.format=luks`) keeps a LUKS1
//! header (with its key material) in clusters the "Full disk encryption
//! header pointer" extension names; its payload offset is unused. Data
//! stays in ordinary clusters, each 512-byte sector encrypted with the
//! header's cipher, and the IV generator's sector number is the sector's
//! *host* offset in the data file divided by 512, not its guest offset.

use aes::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Block};
use qimg_crypt::{volume, CryptError, SectorCipher};

use crate::error::{Error, Result, EIO};
use crate::meta::Io;

/// Bytes per encrypted sector.
pub const SECTOR: u64 = 512;
/// AES block size.
const BLOCK: usize = 16;

/// The cipher of an encrypted image, either kind.
pub enum Crypto {
    /// Legacy AES (IVs from guest offsets); boxed, its key schedule is large.
    Aes(Box<LegacyAes>),
    /// LUKS (IVs from host offsets).
    Luks(SectorCipher),
}

impl Crypto {
    /// Encrypts whole sectors in place: `buf[0]` is at guest offset `guest`
    /// and host offset `host`, both sector-aligned, as is `buf.len()`.
    pub fn encrypt(&self, guest: u64, host: u64, buf: &mut [u8]) -> Result<()> {
        match self {
            Crypto::Aes(aes) => {
                aes.encrypt(guest, buf);
                Ok(())
            }
            Crypto::Luks(cipher) => cipher.encrypt(host / SECTOR, buf).map_err(crypt_error),
        }
    }

    /// Decrypts whole sectors in place (see [`Crypto::encrypt`]).
    pub fn decrypt(&self, guest: u64, host: u64, buf: &mut [u8]) -> Result<()> {
        match self {
            Crypto::Aes(aes) => {
                aes.decrypt(guest, buf);
                Ok(())
            }
            Crypto::Luks(cipher) => cipher.decrypt(host / SECTOR, buf).map_err(crypt_error),
        }
    }
}

/// The driver error for a LUKS error, with qemu's wording.
pub fn crypt_error(e: CryptError) -> Error {
    let message = e.to_string();
    match e {
        CryptError::NotLuks | CryptError::Version(_) | CryptError::Invalid(_) => {
            Error::Invalid(message)
        }
        CryptError::BadPassword => Error::Argument(message),
        CryptError::Random(_) | CryptError::Io(_) => Error::Errno(EIO, message),
        _ => Error::Unsupported(message),
    }
}

/// Unlocks the LUKS header that sits at `offset` (`len` bytes) of the
/// qcow2 file with `password`; key material offsets are relative to it.
pub fn unlock_luks(io: &Io, offset: u64, len: u64, password: &[u8]) -> Result<SectorCipher> {
    let mut head = vec![0u8; qimg_crypt::header::HEADER_BYTES];
    io.read(offset, &mut head)?;
    let read = |at: u64, buf: &mut [u8]| {
        if at.saturating_add(buf.len() as u64) > len {
            return Err(CryptError::Invalid(
                "Request for data outside of extension header".into(),
            ));
        }
        io.read(offset + at, buf)
            .map_err(|e| CryptError::Io(e.to_string()))
    };
    let unlocked = volume::unlock(&head, password, &read).map_err(crypt_error)?;
    Ok(unlocked.cipher)
}

/// The cipher of a legacy AES-encrypted image.
pub struct LegacyAes {
    cipher: Aes128,
}

impl LegacyAes {
    /// The cipher keyed by `password` (its first 16 bytes, zero-padded).
    pub fn new(password: &[u8]) -> LegacyAes {
        let mut key = [0u8; 16];
        let n = password.len().min(16);
        key[..n].copy_from_slice(&password[..n]);
        LegacyAes {
            cipher: Aes128::new(&GenericArray::from(key)),
        }
    }

    /// Encrypts whole sectors in place; `guest` is the guest offset of
    /// `buf[0]`, sector-aligned like `buf.len()`.
    pub fn encrypt(&self, guest: u64, buf: &mut [u8]) {
        debug_assert!(guest.is_multiple_of(SECTOR) && (buf.len() as u64).is_multiple_of(SECTOR));
        for (i, sector) in buf.chunks_exact_mut(SECTOR as usize).enumerate() {
            let mut prev = iv(guest / SECTOR + i as u64);
            for block in sector.chunks_exact_mut(BLOCK) {
                let mut b = Block::clone_from_slice(block);
                xor(&mut b, &prev);
                self.cipher.encrypt_block(&mut b);
                block.copy_from_slice(&b);
                prev.copy_from_slice(&b);
            }
        }
    }

    /// Decrypts whole sectors in place (see [`LegacyAes::encrypt`]).
    pub fn decrypt(&self, guest: u64, buf: &mut [u8]) {
        debug_assert!(guest.is_multiple_of(SECTOR) && (buf.len() as u64).is_multiple_of(SECTOR));
        let mut blocks = [Block::default(); SECTOR as usize / BLOCK];
        for (i, sector) in buf.chunks_exact_mut(SECTOR as usize).enumerate() {
            for (b, c) in blocks.iter_mut().zip(sector.chunks_exact(BLOCK)) {
                b.copy_from_slice(c);
            }
            // CBC decryption of the blocks is independent: do them all at once.
            self.cipher.decrypt_blocks(&mut blocks);
            let mut prev = iv(guest / SECTOR + i as u64);
            for (b, c) in blocks.iter().zip(sector.chunks_exact_mut(BLOCK)) {
                let cipher_text: [u8; BLOCK] = c.try_into().unwrap_or_default();
                c.copy_from_slice(b);
                xor(c, &prev);
                prev = cipher_text;
            }
        }
    }
}

/// The plain64 IV of a sector.
fn iv(sector: u64) -> [u8; BLOCK] {
    let mut iv = [0u8; BLOCK];
    iv[..8].copy_from_slice(&sector.to_le_bytes());
    iv
}

fn xor(block: &mut [u8], with: &[u8]) {
    for (a, b) in block.iter_mut().zip(with) {
        *a ^= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sector_ivs() {
        let aes = LegacyAes::new(b"123456");
        let plain: Vec<u8> = (0..2048u32).map(|i| (i * 7) as u8).collect();
        let mut buf = plain.clone();
        aes.encrypt(4096, &mut buf);
        assert_ne!(buf, plain);
        // Equal plaintext sectors encrypt differently (the IV is the sector).
        let mut same = vec![0u8; 1024];
        aes.encrypt(0, &mut same);
        assert_ne!(same[..512], same[512..]);
        aes.decrypt(4096, &mut buf);
        assert_eq!(buf, plain);
    }

    #[test]
    fn long_passwords_use_16_bytes() {
        let mut a = vec![1u8; 512];
        let mut b = a.clone();
        LegacyAes::new(b"0123456789abcdefXYZ").encrypt(0, &mut a);
        LegacyAes::new(b"0123456789abcdef").encrypt(0, &mut b);
        assert_eq!(a, b);
    }
}
