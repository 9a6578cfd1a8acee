//! The payload's encryption as a LUKS header names it: a cipher (`aes` and
//! a key size), a chaining mode (`xts`, `cbc`) and an IV generator (`plain`,
//! `plain64`, `essiv:HASH`), applied sector by sector (LUKS1 on-disk format,
//! section 2.3, and dm-crypt's IV generators, which LUKS adopts).
//!
//! A [`SectorCipher`] holds only key schedules and takes `&self`, so many
//! threads encrypt different sectors at once without a lock.

use crate::error::{CryptError, Result};
use crate::hash::HashAlg;
use crate::SECTOR_SIZE;
use aes::cipher::consts::U16;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{
    BlockCipher, BlockDecrypt, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, InnerIvInit, KeyInit,
};
use aes::{Aes128, Aes192, Aes256};
use xts_mode::Xts128;

/// Bytes of an AES block, and of every IV.
const BLOCK: usize = 16;

/// A block cipher with its key size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherAlg {
    /// AES with a 128-bit key.
    Aes128,
    /// AES with a 192-bit key.
    Aes192,
    /// AES with a 256-bit key (QEMU's default).
    Aes256,
}

impl CipherAlg {
    /// The cipher QEMU's `cipher-alg` option names (`aes-256`...).
    pub fn parse(name: &str) -> Result<CipherAlg> {
        Ok(match name {
            "aes-128" => CipherAlg::Aes128,
            "aes-192" => CipherAlg::Aes192,
            "aes-256" => CipherAlg::Aes256,
            _ => return Err(CipherAlg::unsupported_name(name)),
        })
    }

    fn unsupported_name(name: &str) -> CryptError {
        CryptError::CipherName(name.into())
    }

    /// The cipher a header names: `cipher-name` and the key size in bytes
    /// (one half of `key-bytes` for XTS).
    pub fn from_header(name: &str, key_bytes: u32) -> Result<CipherAlg> {
        match (name, key_bytes) {
            ("aes", 16) => Ok(CipherAlg::Aes128),
            ("aes", 24) => Ok(CipherAlg::Aes192),
            ("aes", 32) => Ok(CipherAlg::Aes256),
            // The other ciphers QEMU's LUKS knows.
            ("cast5", 16) | ("sm4", 16) | ("serpent" | "twofish", 16 | 24 | 32) => Err(
                CryptError::NotImplemented(format!("Cipher '{name}-{}'", key_bytes * 8)),
            ),
            _ => Err(CryptError::CipherAlg {
                name: name.into(),
                key_bytes,
            }),
        }
    }

    /// QEMU's name (`aes-256`), as `info` prints it.
    pub fn name(self) -> &'static str {
        match self {
            CipherAlg::Aes128 => "aes-128",
            CipherAlg::Aes192 => "aes-192",
            CipherAlg::Aes256 => "aes-256",
        }
    }

    /// The header's `cipher-name` (`aes`).
    pub fn header_name(self) -> &'static str {
        "aes"
    }

    /// Key bytes of one cipher instance.
    pub fn key_len(self) -> usize {
        match self {
            CipherAlg::Aes128 => 16,
            CipherAlg::Aes192 => 24,
            CipherAlg::Aes256 => 32,
        }
    }

    /// The AES whose key is as long as `hash`'s digest: ESSIV keys its
    /// cipher with a digest (dm-crypt's rule, which QEMU follows).
    fn essiv(self, hash: HashAlg) -> Result<CipherAlg> {
        match hash.digest_len() {
            16 => Ok(CipherAlg::Aes128),
            24 => Ok(CipherAlg::Aes192),
            32 => Ok(CipherAlg::Aes256),
            n => Err(CryptError::EssivKey(n)),
        }
    }
}

/// How blocks within a sector are chained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherMode {
    /// XTS (IEEE 1619): two keys, the IV is the tweak.
    Xts,
    /// CBC: the IV starts the chain.
    Cbc,
}

impl CipherMode {
    /// The mode named `name` (`xts`, `cbc`).
    pub fn parse(name: &str) -> Result<CipherMode> {
        match name {
            "xts" => Ok(CipherMode::Xts),
            "cbc" => Ok(CipherMode::Cbc),
            "ecb" | "ctr" => Err(CryptError::NotImplemented(format!("Cipher mode '{name}'"))),
            _ => Err(CryptError::CipherMode(name.into())),
        }
    }

    /// The mode's name.
    pub fn name(self) -> &'static str {
        match self {
            CipherMode::Xts => "xts",
            CipherMode::Cbc => "cbc",
        }
    }
}

/// How each sector's IV is made from its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvGenAlg {
    /// The sector number's low 32 bits, little-endian, zero-padded.
    Plain,
    /// The sector number, 64-bit little-endian, zero-padded.
    Plain64,
    /// The plain64 IV encrypted with the hash of the key (encrypted
    /// salt-sector IV).
    Essiv,
}

impl IvGenAlg {
    /// The generator named `name` (`plain`, `plain64`, `essiv`).
    pub fn parse(name: &str) -> Result<IvGenAlg> {
        match name {
            "plain" => Ok(IvGenAlg::Plain),
            "plain64" => Ok(IvGenAlg::Plain64),
            "essiv" => Ok(IvGenAlg::Essiv),
            _ => Err(CryptError::IvGen(name.into())),
        }
    }

    /// The generator's name.
    pub fn name(self) -> &'static str {
        match self {
            IvGenAlg::Plain => "plain",
            IvGenAlg::Plain64 => "plain64",
            IvGenAlg::Essiv => "essiv",
        }
    }
}

/// Everything that says how a sector is encrypted, except the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSpec {
    /// The block cipher.
    pub alg: CipherAlg,
    /// The chaining mode.
    pub mode: CipherMode,
    /// The IV generator.
    pub ivgen: IvGenAlg,
    /// ESSIV's hash (recorded, and ignored, for other generators too).
    pub ivgen_hash: Option<HashAlg>,
}

impl CipherSpec {
    /// Bytes of the key (twice the cipher's for XTS): the header's
    /// `key-bytes`.
    pub fn key_bytes(&self) -> usize {
        match self.mode {
            CipherMode::Xts => self.alg.key_len() * 2,
            CipherMode::Cbc => self.alg.key_len(),
        }
    }

    /// The header's `cipher-mode` text: `xts-plain64`, `cbc-essiv:sha256`.
    pub fn mode_spec(&self) -> String {
        match self.ivgen_hash {
            Some(h) => format!("{}-{}:{}", self.mode.name(), self.ivgen.name(), h.name()),
            None => format!("{}-{}", self.mode.name(), self.ivgen.name()),
        }
    }

    /// Parses a header's `cipher-name`, `cipher-mode` and `key-bytes`, in
    /// QEMU's order and with its messages: the mode string's shape, the IV
    /// hash, the mode, the cipher, the header's `hash_spec` (parsed here for
    /// that order, and returned), then the IV generator.
    pub fn from_header(
        name: &str,
        mode_spec: &str,
        key_bytes: u32,
        hash_spec: &str,
    ) -> Result<(CipherSpec, HashAlg)> {
        let (mode, ivgen) = mode_spec.split_once('-').ok_or_else(|| {
            CryptError::Invalid(format!(
                "Unexpected cipher mode string format '{mode_spec}'"
            ))
        })?;
        let (ivgen, ivgen_hash) = match ivgen.split_once(':') {
            Some((alg, hash)) => (alg, Some(HashAlg::parse(hash)?)),
            None => (ivgen, None),
        };
        // An unknown mode is named before the cipher; one QEMU knows but
        // this crate lacks is reported after the cipher is checked.
        let parsed_mode = CipherMode::parse(mode);
        if let Err(e @ CryptError::CipherMode(_)) = parsed_mode {
            return Err(e);
        }
        let half = match parsed_mode {
            Ok(CipherMode::Xts) => key_bytes / 2,
            _ => key_bytes,
        };
        let alg = CipherAlg::from_header(name, half)?;
        let mode = parsed_mode?;
        let hash = HashAlg::parse(hash_spec)?;
        let ivgen = IvGenAlg::parse(ivgen)?;

        if ivgen == IvGenAlg::Essiv && ivgen_hash.is_none() {
            return Err(CryptError::Invalid(
                "Missing IV generator hash specification".into(),
            ));
        }
        let spec = CipherSpec {
            alg,
            mode,
            ivgen,
            ivgen_hash,
        };
        spec.check()?;
        Ok((spec, hash))
    }

    /// Refuses combinations that cannot work (ESSIV without a hash, or
    /// with one whose digest is no AES key length).
    pub fn check(&self) -> Result<()> {
        if self.ivgen == IvGenAlg::Essiv {
            let hash = self.ivgen_hash.ok_or_else(|| {
                CryptError::Invalid("Missing IV generator hash specification".into())
            })?;
            self.alg.essiv(hash)?;
        }
        Ok(())
    }
}

/// One chaining mode over one AES key size, keyed.
trait Mode: Send + Sync {
    fn encrypt(&self, iv: &[u8; 16], sector: &mut [u8]);
    fn decrypt(&self, iv: &[u8; 16], sector: &mut [u8]);
}

/// What the chaining modes need of a cipher.
trait Aes:
    KeyInit + BlockCipher<BlockSize = U16> + BlockEncrypt + BlockDecrypt + Clone + Send + Sync + 'static
{
}
impl<C> Aes for C where
    C: KeyInit
        + BlockCipher<BlockSize = U16>
        + BlockEncrypt
        + BlockDecrypt
        + Clone
        + Send
        + Sync
        + 'static
{
}

struct Xts<C: Aes>(Xts128<C>);

impl<C: Aes> Mode for Xts<C> {
    fn encrypt(&self, iv: &[u8; 16], sector: &mut [u8]) {
        self.0.encrypt_sector(sector, *iv);
    }
    fn decrypt(&self, iv: &[u8; 16], sector: &mut [u8]) {
        self.0.decrypt_sector(sector, *iv);
    }
}

struct Cbc<C: Aes>(C);

impl<C: Aes> Mode for Cbc<C> {
    fn encrypt(&self, iv: &[u8; 16], sector: &mut [u8]) {
        let mut chain = cbc::Encryptor::<C>::inner_iv_init(self.0.clone(), iv.into());
        for block in sector.chunks_exact_mut(16) {
            chain.encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
    }
    fn decrypt(&self, iv: &[u8; 16], sector: &mut [u8]) {
        let mut chain = cbc::Decryptor::<C>::inner_iv_init(self.0.clone(), iv.into());
        for block in sector.chunks_exact_mut(16) {
            chain.decrypt_block_mut(GenericArray::from_mut_slice(block));
        }
    }
}

fn keyed<C: Aes>(key: &[u8]) -> Result<C> {
    C::new_from_slice(key).map_err(|_| CryptError::Invalid("Invalid key length".into()))
}

fn mode_for<C: Aes>(mode: CipherMode, key: &[u8]) -> Result<Box<dyn Mode>> {
    Ok(match mode {
        CipherMode::Xts => {
            let (data, tweak) = key.split_at(key.len() / 2);
            Box::new(Xts(Xts128::new(keyed::<C>(data)?, keyed::<C>(tweak)?)))
        }
        CipherMode::Cbc => Box::new(Cbc(keyed::<C>(key)?)),
    })
}

/// ESSIV's cipher: one block encryption keyed with the hash of the key.
trait BlockEnc: Send + Sync {
    fn encrypt_block(&self, block: &mut [u8; 16]);
}

impl<C: Aes> BlockEnc for C {
    fn encrypt_block(&self, block: &mut [u8; 16]) {
        BlockEncrypt::encrypt_block(self, block.into());
    }
}

fn block_enc(alg: CipherAlg, key: &[u8]) -> Result<Box<dyn BlockEnc>> {
    Ok(match alg {
        CipherAlg::Aes128 => Box::new(keyed::<Aes128>(key)?),
        CipherAlg::Aes192 => Box::new(keyed::<Aes192>(key)?),
        CipherAlg::Aes256 => Box::new(keyed::<Aes256>(key)?),
    })
}

/// A keyed sector encryptor: cipher, chaining mode and IV generator.
pub struct SectorCipher {
    spec: CipherSpec,
    mode: Box<dyn Mode>,
    /// ESSIV's salt cipher, when the generator is ESSIV.
    essiv: Option<Box<dyn BlockEnc>>,
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SectorCipher")
            .field("spec", &self.spec)
            .finish()
    }
}

impl SectorCipher {
    /// Keys `spec` with `key` ([`CipherSpec::key_bytes`] long). The key
    /// schedules zero themselves when the cipher is dropped; the caller
    /// zeroes `key`.
    pub fn new(spec: CipherSpec, key: &[u8]) -> Result<SectorCipher> {
        spec.check()?;
        if key.len() != spec.key_bytes() {
            return Err(CryptError::Invalid(format!(
                "Key length {} does not match cipher key length {}",
                key.len(),
                spec.key_bytes()
            )));
        }
        let mode = match spec.alg {
            CipherAlg::Aes128 => mode_for::<Aes128>(spec.mode, key)?,
            CipherAlg::Aes192 => mode_for::<Aes192>(spec.mode, key)?,
            CipherAlg::Aes256 => mode_for::<Aes256>(spec.mode, key)?,
        };
        let essiv = match (spec.ivgen, spec.ivgen_hash) {
            (IvGenAlg::Essiv, Some(hash)) => {
                let salt = hash.digest(&[key]);
                Some(block_enc(spec.alg.essiv(hash)?, &salt)?)
            }
            _ => None,
        };
        Ok(SectorCipher { spec, mode, essiv })
    }

    /// What this cipher does.
    pub fn spec(&self) -> CipherSpec {
        self.spec
    }

    fn iv(&self, sector: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        match self.spec.ivgen {
            IvGenAlg::Plain => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
            IvGenAlg::Plain64 | IvGenAlg::Essiv => iv[..8].copy_from_slice(&sector.to_le_bytes()),
        }
        if let Some(essiv) = &self.essiv {
            essiv.encrypt_block(&mut iv);
        }
        iv
    }

    /// Encrypts `buf` in place; its first sector is number `first_sector`.
    /// `buf` is whole sectors, except that the last may be cut short at a
    /// multiple of 16 bytes (key material of 24-byte keys ends so).
    pub fn encrypt(&self, first_sector: u64, buf: &mut [u8]) -> Result<()> {
        self.each_sector(first_sector, buf, |iv, s| self.mode.encrypt(iv, s))
    }

    /// Decrypts `buf` in place, as [`SectorCipher::encrypt`] encrypts it.
    pub fn decrypt(&self, first_sector: u64, buf: &mut [u8]) -> Result<()> {
        self.each_sector(first_sector, buf, |iv, s| self.mode.decrypt(iv, s))
    }

    fn each_sector(
        &self,
        first_sector: u64,
        buf: &mut [u8],
        f: impl Fn(&[u8; 16], &mut [u8]),
    ) -> Result<()> {
        if !buf.len().is_multiple_of(BLOCK) {
            return Err(CryptError::Invalid(format!(
                "Length {} must be a multiple of block size {BLOCK}",
                buf.len()
            )));
        }
        for (i, sector) in buf.chunks_mut(SECTOR_SIZE as usize).enumerate() {
            f(&self.iv(first_sector.wrapping_add(i as u64)), sector);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_specs() -> Vec<CipherSpec> {
        let mut v = Vec::new();
        for alg in [CipherAlg::Aes128, CipherAlg::Aes192, CipherAlg::Aes256] {
            for mode in [CipherMode::Xts, CipherMode::Cbc] {
                for (ivgen, ivgen_hash) in [
                    (IvGenAlg::Plain, None),
                    (IvGenAlg::Plain64, None),
                    (IvGenAlg::Essiv, Some(HashAlg::Sha256)),
                ] {
                    v.push(CipherSpec {
                        alg,
                        mode,
                        ivgen,
                        ivgen_hash,
                    });
                }
            }
        }
        v
    }

    #[test]
    fn round_trips_and_differs_per_sector() {
        for spec in all_specs() {
            let key: Vec<u8> = (0..spec.key_bytes() as u8).collect();
            let c = SectorCipher::new(spec, &key).unwrap();
            let plain = vec![0x5au8; 1024];
            let mut buf = plain.clone();
            c.encrypt(7, &mut buf).unwrap();
            assert_ne!(buf, plain);
            assert_ne!(buf[..512], buf[512..], "{spec:?}");
            c.decrypt(7, &mut buf).unwrap();
            assert_eq!(buf, plain);
            let spec2 = CipherSpec::from_header(
                "aes",
                &spec.mode_spec(),
                spec.key_bytes() as u32,
                "sha256",
            );
            assert_eq!(spec2, Ok((spec, HashAlg::Sha256)));
        }
    }

    #[test]
    fn partial_sectors_are_refused() {
        let spec = all_specs()[0];
        let c = SectorCipher::new(spec, &vec![1u8; spec.key_bytes()]).unwrap();
        assert!(c.encrypt(0, &mut [0u8; 100]).is_err());
    }
}
