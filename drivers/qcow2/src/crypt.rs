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
use qimg_crypt::amend::VolumeStore;
use qimg_crypt::{volume, Created, CryptError, LuksHeader, SectorCipher};
use zeroize::Zeroizing;

use crate::error::{Error, Result, EIO};
use crate::image::Qcow2Image;
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
    Luks(Box<Luks>),
}

/// An unlocked LUKS volume inside the image.
pub struct Luks {
    /// The payload cipher.
    pub cipher: SectorCipher,
    /// The master key, kept for filling key slots when writable.
    pub key: Option<Zeroizing<Vec<u8>>>,
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
            Crypto::Luks(luks) => luks.cipher.encrypt(host / SECTOR, buf).map_err(crypt_error),
        }
    }

    /// Decrypts whole sectors in place (see [`Crypto::encrypt`]).
    pub fn decrypt(&self, guest: u64, host: u64, buf: &mut [u8]) -> Result<()> {
        match self {
            Crypto::Aes(aes) => {
                aes.decrypt(guest, buf);
                Ok(())
            }
            Crypto::Luks(luks) => luks.cipher.decrypt(host / SECTOR, buf).map_err(crypt_error),
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
        CryptError::BadPassword | CryptError::Option(_) => Error::Argument(message),
        CryptError::Random(_) | CryptError::Io(_) => Error::Errno(EIO, message),
        _ => Error::Unsupported(message),
    }
}

/// The LUKS header and key-slot areas in the qcow2 file: `len` bytes at
/// `offset`, which nothing may read or write past.
pub struct LuksArea<'a> {
    /// The qcow2 file.
    pub io: &'a Io,
    /// Where the area starts.
    pub offset: u64,
    /// Its length.
    pub len: u64,
}

impl LuksArea<'_> {
    fn inside(&self, at: u64, len: usize) -> qimg_crypt::error::Result<u64> {
        if at.saturating_add(len as u64) > self.len {
            return Err(CryptError::Invalid(
                "Request for data outside of extension header".into(),
            ));
        }
        Ok(self.offset + at)
    }
}

impl VolumeStore for LuksArea<'_> {
    fn read(&self, at: u64, buf: &mut [u8]) -> qimg_crypt::error::Result<()> {
        let at = self.inside(at, buf.len())?;
        self.io
            .read(at, buf)
            .map_err(|e| CryptError::Io(format!("Could not read encryption header: {e}")))
    }
    fn write(&self, at: u64, buf: &[u8]) -> qimg_crypt::error::Result<()> {
        let at = self.inside(at, buf.len())?;
        self.io
            .write(at, buf)
            .map_err(|e| CryptError::Io(e.to_string()))
    }
    fn flush(&self) -> qimg_crypt::error::Result<()> {
        self.io.flush().map_err(|e| CryptError::Io(e.to_string()))
    }
}

/// Reads the LUKS header in `area` and makes QEMU's checks of its layout
/// and algorithms: also without the key, as qemu opens it to describe the
/// image.
pub fn read_luks_header(area: &LuksArea<'_>) -> Result<LuksHeader> {
    let mut head = vec![0u8; qimg_crypt::header::HEADER_BYTES];
    area.read(0, &mut head).map_err(crypt_error)?;
    let header = LuksHeader::parse(&head).map_err(crypt_error)?;
    header.check(false).map_err(crypt_error)?;
    header.algorithms().map_err(crypt_error)?;
    Ok(header)
}

/// Unlocks the LUKS volume in `area` with `password`; the master key is
/// kept only if `writable` (key slots change only then).
pub fn unlock_luks(area: &LuksArea<'_>, password: &[u8], writable: bool) -> Result<Luks> {
    let header = read_luks_header(area)?;
    let read = |at: u64, buf: &mut [u8]| area.read(at, buf);
    let unlocked = volume::unlock(header, password, &read).map_err(crypt_error)?;
    Ok(Luks {
        cipher: unlocked.cipher,
        key: Some(unlocked.key).filter(|_| writable),
    })
}

/// Makes `image` (newly created, not yet encrypted) a LUKS-encrypted one
/// with the volume `created`: the header and its key-slot areas go into
/// fresh zeroed clusters, then the qcow2 header names them and sets
/// `crypt_method` 2. qemu does this last when creating, after the L1 table
/// and any preallocated clusters.
pub fn set_up_luks(image: &Qcow2Image, created: &Created) -> Result<()> {
    let luks = &created.header;
    let len = luks.payload_bytes();
    let io = &image.io;
    let mut meta = image.lock();
    let clusters = image.layout.clusters_for(len);
    let offset = meta.alloc_clusters(io, clusters)?;
    io.file
        .write_zeroes(offset, clusters << image.layout.cluster_bits, false)
        .into_result()?;
    io.write(offset, &luks.to_bytes().map_err(crypt_error)?)?;
    let material_at = u64::from(luks.key_slots[0].key_material_offset) * SECTOR;
    io.write(offset + material_at, &created.material)?;
    meta.header.crypt_method = 2;
    meta.header.ext.crypto = Some((offset, len));
    meta.header_dirty = true;
    meta.flush(io)
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
