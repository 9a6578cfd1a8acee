//! qcow's AES encryption (`crypt_method` 1): each 512-byte sector of guest
//! data is encrypted with AES-128 in CBC mode. The key is the secret's
//! first 16 bytes, zero-padded; a sector's IV is its guest sector number
//! as a 64-bit little-endian integer, zero-padded to 16 bytes ("plain64").
//!
//! The scheme is weak (no key derivation, predictable IVs); it is here so
//! that old images can be read, written and converted, as qemu-img can.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Block};

/// Bytes per encrypted sector.
pub const SECTOR: u64 = 512;
/// AES block size.
const BLOCK: usize = 16;

/// The cipher of an encrypted image.
pub struct SectorCipher {
    /// AES-128 keyed from the secret.
    cipher: Aes128,
}

/// The IV of guest sector `sector`.
fn iv(sector: u64) -> Block {
    let mut b = Block::default();
    b[..8].copy_from_slice(&sector.to_le_bytes());
    b
}

impl SectorCipher {
    /// The cipher keyed by `secret` (its first 16 bytes, zero-padded).
    pub fn new(secret: &[u8]) -> SectorCipher {
        let mut key = [0u8; 16];
        let n = secret.len().min(16);
        key[..n].copy_from_slice(&secret[..n]);
        let cipher = Aes128::new(&key.into());
        key.fill(0);
        SectorCipher { cipher }
    }

    /// Encrypts whole sectors in place; `sector` is the guest sector of
    /// `buf[0]`. A trailing partial sector is left as it is (callers pass
    /// whole sectors).
    pub fn encrypt(&self, sector: u64, buf: &mut [u8]) {
        for (i, data) in buf.chunks_exact_mut(SECTOR as usize).enumerate() {
            let mut prev = iv(sector + i as u64);
            for chunk in data.chunks_exact_mut(BLOCK) {
                let mut b = Block::clone_from_slice(chunk);
                b.iter_mut().zip(prev.iter()).for_each(|(x, p)| *x ^= p);
                self.cipher.encrypt_block(&mut b);
                chunk.copy_from_slice(&b);
                prev = b;
            }
        }
    }

    /// Decrypts whole sectors in place (see [`SectorCipher::encrypt`]).
    pub fn decrypt(&self, sector: u64, buf: &mut [u8]) {
        for (i, data) in buf.chunks_exact_mut(SECTOR as usize).enumerate() {
            let mut prev = iv(sector + i as u64);
            for chunk in data.chunks_exact_mut(BLOCK) {
                let cipher_text = Block::clone_from_slice(chunk);
                let mut b = cipher_text;
                self.cipher.decrypt_block(&mut b);
                b.iter_mut().zip(prev.iter()).for_each(|(x, p)| *x ^= p);
                chunk.copy_from_slice(&b);
                prev = cipher_text;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_round_trip_and_depend_on_their_number() {
        let c = SectorCipher::new(b"a secret longer than sixteen bytes");
        let plain: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
        let mut a = plain.clone();
        c.encrypt(7, &mut a);
        assert_ne!(a, plain);
        let mut b = plain.clone();
        b[512..].copy_from_slice(&plain[..512]);
        c.encrypt(7, &mut b);
        // Sector 8 holding sector 7's bytes encrypts differently.
        assert_ne!(a[..512], b[512..]);
        c.decrypt(7, &mut a);
        assert_eq!(a, plain);
    }
}
