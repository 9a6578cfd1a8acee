//! The payload's encryption as a LUKS header names it: a cipher (`aes`,
//! `serpent`, `twofish`, `cast5`, and a key size), a chaining mode (`xts`,
//! `cbc`, `ecb`, `ctr`) and an IV generator (`plain`, `plain64`,
//! `essiv:HASH`), applied sector by sector (LUKS1 on-disk format, section
//! 2.3, and dm-crypt's IV generators, which LUKS adopts).
//!
//! A [`SectorCipher`] holds only key schedules and takes `&self`, so many
//! threads encrypt different sectors at once without a lock.

use crate::error::{CryptError, Result};
use crate::fast_xts::{Direction, FastXts};
use crate::hash::HashAlg;
use crate::serpent::Serpent;
use crate::twofish::Twofish;
use crate::SECTOR_SIZE;
use aes::cipher::consts::{U16, U8};
use aes::cipher::generic_array::{ArrayLength, GenericArray};
use aes::cipher::typenum::Unsigned;
use aes::cipher::{
    BlockCipher, BlockDecrypt, BlockDecryptMut, BlockEncrypt, BlockEncryptMut, InnerIvInit,
    KeyInit, StreamCipherCore,
};
use aes::{Aes128, Aes192, Aes256};
use cast5::Cast5;
use ctr::flavors::{Ctr128BE, Ctr64BE};
use ctr::{CtrCore, CtrFlavor};
use std::fmt;
use xts_mode::Xts128;

/// Bytes of the longest block (XTS's only one), and of the longest IV.
const MAX_BLOCK: usize = 16;

/// A block cipher with its key size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherAlg {
    /// AES with a 128-bit key.
    Aes128,
    /// AES with a 192-bit key.
    Aes192,
    /// AES with a 256-bit key (QEMU's default).
    Aes256,
    /// Serpent with a 128-bit key.
    Serpent128,
    /// Serpent with a 192-bit key.
    Serpent192,
    /// Serpent with a 256-bit key.
    Serpent256,
    /// Twofish with a 128-bit key.
    Twofish128,
    /// Twofish with a 192-bit key.
    Twofish192,
    /// Twofish with a 256-bit key.
    Twofish256,
    /// CAST5 (CAST-128, RFC 2144) with a 128-bit key: a 64-bit block.
    Cast5_128,
}

impl CipherAlg {
    /// Every cipher, in QEMU's order.
    const ALL: [CipherAlg; 10] = [
        CipherAlg::Aes128,
        CipherAlg::Aes192,
        CipherAlg::Aes256,
        CipherAlg::Cast5_128,
        CipherAlg::Serpent128,
        CipherAlg::Serpent192,
        CipherAlg::Serpent256,
        CipherAlg::Twofish128,
        CipherAlg::Twofish192,
        CipherAlg::Twofish256,
    ];

    /// The cipher QEMU's `cipher-alg` option names (`aes-256`...). QEMU's
    /// other values (`des`, `3des`, `sm4`) are refused as qemu-img refuses
    /// them: LUKS has no name for them.
    pub fn parse(name: &str) -> Result<CipherAlg> {
        CipherAlg::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| CryptError::CipherName(name.into()))
    }

    /// The cipher a header names: `cipher-name` and the key size in bytes
    /// (one half of `key-bytes` for XTS).
    pub fn from_header(name: &str, key_bytes: u32) -> Result<CipherAlg> {
        CipherAlg::ALL
            .into_iter()
            .find(|a| a.header_name() == name && a.key_len() as u32 == key_bytes)
            .ok_or_else(|| CryptError::CipherAlg {
                name: name.into(),
                key_bytes,
            })
    }

    /// QEMU's name (`aes-256`), as `info` prints it.
    pub fn name(self) -> &'static str {
        match self {
            CipherAlg::Aes128 => "aes-128",
            CipherAlg::Aes192 => "aes-192",
            CipherAlg::Aes256 => "aes-256",
            CipherAlg::Serpent128 => "serpent-128",
            CipherAlg::Serpent192 => "serpent-192",
            CipherAlg::Serpent256 => "serpent-256",
            CipherAlg::Twofish128 => "twofish-128",
            CipherAlg::Twofish192 => "twofish-192",
            CipherAlg::Twofish256 => "twofish-256",
            CipherAlg::Cast5_128 => "cast5-128",
        }
    }

    /// The header's `cipher-name` (`aes`): the cipher's family.
    pub fn header_name(self) -> &'static str {
        match self {
            CipherAlg::Aes128 | CipherAlg::Aes192 | CipherAlg::Aes256 => "aes",
            CipherAlg::Serpent128 | CipherAlg::Serpent192 | CipherAlg::Serpent256 => "serpent",
            CipherAlg::Twofish128 | CipherAlg::Twofish192 | CipherAlg::Twofish256 => "twofish",
            CipherAlg::Cast5_128 => "cast5",
        }
    }

    /// Key bytes of one cipher instance.
    pub fn key_len(self) -> usize {
        match self {
            CipherAlg::Aes128
            | CipherAlg::Serpent128
            | CipherAlg::Twofish128
            | CipherAlg::Cast5_128 => 16,
            CipherAlg::Aes192 | CipherAlg::Serpent192 | CipherAlg::Twofish192 => 24,
            CipherAlg::Aes256 | CipherAlg::Serpent256 | CipherAlg::Twofish256 => 32,
        }
    }

    /// Bytes of a block, and of an IV.
    pub fn block_len(self) -> usize {
        match self {
            CipherAlg::Cast5_128 => 8,
            _ => 16,
        }
    }

    /// The cipher of this one's family whose key is as long as `hash`'s
    /// digest: ESSIV keys its cipher with a digest (dm-crypt's rule, which
    /// QEMU follows).
    fn essiv(self, hash: HashAlg) -> Result<CipherAlg> {
        let digest_len = hash.digest_len();
        CipherAlg::ALL
            .into_iter()
            .find(|a| a.header_name() == self.header_name() && a.key_len() == digest_len)
            .ok_or(CryptError::EssivKey(EssivMismatch {
                alg: self,
                digest_len,
            }))
    }
}

/// An ESSIV hash whose digest keys no cipher of the payload cipher's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EssivMismatch {
    /// The payload cipher.
    pub alg: CipherAlg,
    /// Bytes of the hash's digest.
    pub digest_len: usize,
}

/// QEMU's messages: a family of several key sizes names the size it lacks;
/// CAST5, of one size, is refused whole.
impl fmt::Display for EssivMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = match self.alg {
            CipherAlg::Aes128 | CipherAlg::Aes192 | CipherAlg::Aes256 => "AES",
            CipherAlg::Serpent128 | CipherAlg::Serpent192 | CipherAlg::Serpent256 => "Serpent",
            CipherAlg::Twofish128 | CipherAlg::Twofish192 | CipherAlg::Twofish256 => "Twofish",
            CipherAlg::Cast5_128 => {
                return write!(f, "Cipher {} not supported with essiv", self.alg.name())
            }
        };
        write!(
            f,
            "No {family} cipher with key size {} available",
            self.digest_len
        )
    }
}

/// How blocks within a sector are chained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherMode {
    /// XTS (IEEE 1619): two keys, the IV is the tweak. 16-byte blocks only.
    Xts,
    /// CBC: the IV starts the chain.
    Cbc,
    /// ECB: every block alone; the IV is not used.
    Ecb,
    /// CTR: the IV is the first counter block, the whole block counting
    /// up big-endian (nettle's `ctr_crypt`, which QEMU uses).
    Ctr,
}

impl CipherMode {
    /// The mode named `name` (`xts`, `cbc`, `ecb`, `ctr`).
    pub fn parse(name: &str) -> Result<CipherMode> {
        match name {
            "xts" => Ok(CipherMode::Xts),
            "cbc" => Ok(CipherMode::Cbc),
            "ecb" => Ok(CipherMode::Ecb),
            "ctr" => Ok(CipherMode::Ctr),
            _ => Err(CryptError::CipherMode(name.into())),
        }
    }

    /// The mode's name.
    pub fn name(self) -> &'static str {
        match self {
            CipherMode::Xts => "xts",
            CipherMode::Cbc => "cbc",
            CipherMode::Ecb => "ecb",
            CipherMode::Ctr => "ctr",
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
    /// The plain64 IV encrypted by a cipher of the payload cipher's family
    /// keyed with the hash of the key (encrypted salt-sector IV).
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
            _ => self.alg.key_len(),
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
    /// that order, and returned), the IV generator, then ESSIV's cipher.
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
        let mode = CipherMode::parse(mode)?;
        let half = match mode {
            CipherMode::Xts => key_bytes / 2,
            _ => key_bytes,
        };
        let alg = CipherAlg::from_header(name, half)?;
        let hash = HashAlg::parse(hash_spec)?;
        let ivgen = IvGenAlg::parse(ivgen)?;
        let spec = CipherSpec {
            alg,
            mode,
            ivgen,
            ivgen_hash,
        };
        // XTS over a 64-bit block is described, refused only when keyed.
        spec.essiv_alg()?;
        Ok((spec, hash))
    }

    /// ESSIV's cipher (None for the other generators), refusing ESSIV
    /// without a hash or with one whose digest keys no cipher of the
    /// payload cipher's family.
    fn essiv_alg(&self) -> Result<Option<CipherAlg>> {
        if self.ivgen != IvGenAlg::Essiv {
            return Ok(None);
        }
        let hash = self
            .ivgen_hash
            .ok_or_else(|| CryptError::Invalid("Missing IV generator hash specification".into()))?;
        self.alg.essiv(hash).map(Some)
    }

    /// Refuses combinations that cannot work, in QEMU's order: ESSIV
    /// without a usable hash, then XTS over a cipher whose block is not 16
    /// bytes (CAST5).
    pub fn check(&self) -> Result<()> {
        self.essiv_alg()?;
        if self.mode == CipherMode::Xts && self.alg.block_len() != MAX_BLOCK {
            return Err(CryptError::Invalid(format!(
                "Unsupported cipher mode {}",
                self.mode.name()
            )));
        }
        Ok(())
    }
}

/// One chaining mode over one block cipher, keyed. `iv` is one block.
trait Mode: Send + Sync {
    fn encrypt(&self, iv: &[u8], sector: &mut [u8]);
    fn decrypt(&self, iv: &[u8], sector: &mut [u8]);
}

/// CTR's counter for a block size: the whole block, big-endian.
trait WholeBlockCtr: ArrayLength<u8> {
    /// The `ctr` crate's flavor that counts so.
    type Flavor: CtrFlavor<Self>;
}

impl WholeBlockCtr for U16 {
    type Flavor = Ctr128BE;
}

impl WholeBlockCtr for U8 {
    type Flavor = Ctr64BE;
}

/// What the chaining modes need of a cipher.
trait Cipher:
    KeyInit
    + BlockCipher<BlockSize: WholeBlockCtr>
    + BlockEncrypt
    + BlockDecrypt
    + Send
    + Sync
    + 'static
{
}
impl<C> Cipher for C where
    C: KeyInit
        + BlockCipher<BlockSize: WholeBlockCtr>
        + BlockEncrypt
        + BlockDecrypt
        + Send
        + Sync
        + 'static
{
}

/// The blocks of `sector`, a whole number of them.
fn blocks<C: Cipher>(
    sector: &mut [u8],
) -> impl Iterator<Item = &mut GenericArray<u8, C::BlockSize>> {
    sector
        .chunks_exact_mut(C::BlockSize::USIZE)
        .map(GenericArray::from_mut_slice)
}

struct Xts<C: Cipher>(Xts128<C>);

impl<C: Cipher> Mode for Xts<C> {
    fn encrypt(&self, iv: &[u8], sector: &mut [u8]) {
        self.0.encrypt_sector(sector, tweak(iv));
    }
    fn decrypt(&self, iv: &[u8], sector: &mut [u8]) {
        self.0.decrypt_sector(sector, tweak(iv));
    }
}

/// XTS's tweak: the IV of a 16-byte block ([`CipherSpec::check`] refuses
/// XTS over other blocks, so nothing is cut or padded).
fn tweak(iv: &[u8]) -> [u8; 16] {
    let mut tweak = [0u8; 16];
    let n = iv.len().min(16);
    tweak[..n].copy_from_slice(&iv[..n]);
    tweak
}

struct Cbc<C: Cipher>(C);

impl<C: Cipher> Mode for Cbc<C> {
    fn encrypt(&self, iv: &[u8], sector: &mut [u8]) {
        let mut chain = cbc::Encryptor::<&C>::inner_iv_init(&self.0, GenericArray::from_slice(iv));
        blocks::<C>(sector).for_each(|b| chain.encrypt_block_mut(b));
    }
    fn decrypt(&self, iv: &[u8], sector: &mut [u8]) {
        let mut chain = cbc::Decryptor::<&C>::inner_iv_init(&self.0, GenericArray::from_slice(iv));
        blocks::<C>(sector).for_each(|b| chain.decrypt_block_mut(b));
    }
}

struct Ecb<C: Cipher>(C);

impl<C: Cipher> Mode for Ecb<C> {
    fn encrypt(&self, _iv: &[u8], sector: &mut [u8]) {
        blocks::<C>(sector).for_each(|b| self.0.encrypt_block(b));
    }
    fn decrypt(&self, _iv: &[u8], sector: &mut [u8]) {
        blocks::<C>(sector).for_each(|b| self.0.decrypt_block(b));
    }
}

struct Ctr<C: Cipher>(C);

impl<C: Cipher> Mode for Ctr<C> {
    fn encrypt(&self, iv: &[u8], sector: &mut [u8]) {
        CtrCore::<&C, <C::BlockSize as WholeBlockCtr>::Flavor>::inner_iv_init(
            &self.0,
            GenericArray::from_slice(iv),
        )
        .apply_keystream_partial(sector.into());
    }
    fn decrypt(&self, iv: &[u8], sector: &mut [u8]) {
        self.encrypt(iv, sector);
    }
}

fn keyed<C: Cipher>(key: &[u8]) -> Result<C> {
    C::new_from_slice(key).map_err(|_| CryptError::Invalid("Invalid key length".into()))
}

fn mode_for<C: Cipher>(mode: CipherMode, key: &[u8]) -> Result<Box<dyn Mode>> {
    Ok(match mode {
        CipherMode::Xts => {
            let (data, tweak) = key.split_at(key.len() / 2);
            Box::new(Xts(Xts128::new(keyed::<C>(data)?, keyed::<C>(tweak)?)))
        }
        CipherMode::Cbc => Box::new(Cbc(keyed::<C>(key)?)),
        CipherMode::Ecb => Box::new(Ecb(keyed::<C>(key)?)),
        CipherMode::Ctr => Box::new(Ctr(keyed::<C>(key)?)),
    })
}

/// `mode` over `alg`, keyed with `key` (both keys, for XTS).
fn keyed_mode(alg: CipherAlg, mode: CipherMode, key: &[u8]) -> Result<Box<dyn Mode>> {
    match alg {
        CipherAlg::Aes128 => mode_for::<Aes128>(mode, key),
        CipherAlg::Aes192 => mode_for::<Aes192>(mode, key),
        CipherAlg::Aes256 => mode_for::<Aes256>(mode, key),
        CipherAlg::Serpent128 | CipherAlg::Serpent192 | CipherAlg::Serpent256 => {
            mode_for::<Serpent>(mode, key)
        }
        CipherAlg::Twofish128 | CipherAlg::Twofish192 | CipherAlg::Twofish256 => {
            mode_for::<Twofish>(mode, key)
        }
        CipherAlg::Cast5_128 => mode_for::<Cast5>(mode, key),
    }
}

/// A keyed sector encryptor: cipher, chaining mode and IV generator.
pub struct SectorCipher {
    spec: CipherSpec,
    mode: Box<dyn Mode>,
    /// ESSIV's salt cipher (ECB over one block), when the generator is
    /// ESSIV.
    essiv: Option<Box<dyn Mode>>,
    /// The same XTS with pipelined blocks, used instead of `mode` for
    /// AES-128 and AES-256: see [`crate::fast_xts`].
    fast_xts: Option<FastXts>,
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
        let mode = keyed_mode(spec.alg, spec.mode, key)?;
        let essiv = match (spec.essiv_alg()?, spec.ivgen_hash) {
            (Some(alg), Some(hash)) => {
                Some(keyed_mode(alg, CipherMode::Ecb, &hash.digest(&[key]))?)
            }
            _ => None,
        };
        let fast_xts = match (spec.mode, spec.alg) {
            (CipherMode::Xts, CipherAlg::Aes128 | CipherAlg::Aes256) => FastXts::new(key),
            _ => None,
        };
        Ok(SectorCipher {
            spec,
            mode,
            essiv,
            fast_xts,
        })
    }

    /// What this cipher does.
    pub fn spec(&self) -> CipherSpec {
        self.spec
    }

    /// The IV of `sector`: one block, the longest IV's first bytes.
    fn iv(&self, sector: u64) -> [u8; MAX_BLOCK] {
        let mut iv = [0u8; MAX_BLOCK];
        match self.spec.ivgen {
            IvGenAlg::Plain => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
            IvGenAlg::Plain64 | IvGenAlg::Essiv => iv[..8].copy_from_slice(&sector.to_le_bytes()),
        }
        if let Some(essiv) = &self.essiv {
            essiv.encrypt(&[], &mut iv[..self.spec.alg.block_len()]);
        }
        iv
    }

    /// Encrypts `buf` in place; its first sector is number `first_sector`.
    /// `buf` is whole sectors, except that the last may be cut short at a
    /// multiple of the block size (key material of 24-byte keys ends so).
    pub fn encrypt(&self, first_sector: u64, buf: &mut [u8]) -> Result<()> {
        self.each_sector(first_sector, buf, Direction::Encrypt)
    }

    /// Decrypts `buf` in place, as [`SectorCipher::encrypt`] encrypts it.
    pub fn decrypt(&self, first_sector: u64, buf: &mut [u8]) -> Result<()> {
        self.each_sector(first_sector, buf, Direction::Decrypt)
    }

    fn each_sector(&self, first_sector: u64, buf: &mut [u8], dir: Direction) -> Result<()> {
        let block = self.spec.alg.block_len();
        if !buf.len().is_multiple_of(block) {
            return Err(CryptError::Invalid(format!(
                "Length {} must be a multiple of block size {block}",
                buf.len()
            )));
        }
        let sectors = buf.chunks_mut(SECTOR_SIZE as usize);
        let iv = |i: usize| self.iv(first_sector.wrapping_add(i as u64));
        if let Some(xts) = &self.fast_xts {
            xts.apply(dir, sectors, iv);
            return Ok(());
        }
        for (i, sector) in sectors.enumerate() {
            let iv = iv(i);
            match dir {
                Direction::Encrypt => self.mode.encrypt(&iv[..block], sector),
                Direction::Decrypt => self.mode.decrypt(&iv[..block], sector),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::tests::hex;

    fn all_specs() -> Vec<CipherSpec> {
        let mut v = Vec::new();
        for alg in CipherAlg::ALL {
            for mode in [
                CipherMode::Xts,
                CipherMode::Cbc,
                CipherMode::Ecb,
                CipherMode::Ctr,
            ] {
                for (ivgen, ivgen_hash) in [
                    (IvGenAlg::Plain, None),
                    (IvGenAlg::Plain64, None),
                    (IvGenAlg::Essiv, Some(HashAlg::Md5)),
                ] {
                    let spec = CipherSpec {
                        alg,
                        mode,
                        ivgen,
                        ivgen_hash,
                    };
                    if spec.check().is_ok() {
                        v.push(spec);
                    }
                }
            }
        }
        v
    }

    fn pattern() -> Vec<u8> {
        (0..1024).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn round_trips_and_differs_per_sector() {
        let specs = all_specs();
        // Every cipher, mode and generator but XTS over CAST5.
        assert_eq!(specs.len(), 10 * 4 * 3 - 3);
        for spec in specs {
            let key: Vec<u8> = (0..spec.key_bytes() as u8).collect();
            let c = SectorCipher::new(spec, &key).unwrap();
            let plain = pattern();
            let mut buf = plain.clone();
            c.encrypt(7, &mut buf).unwrap();
            assert_ne!(buf, plain);
            // ECB alone ignores the IV: the same data, the same ciphertext
            // in any sector.
            let mut again = plain[512..].to_vec();
            c.encrypt(7, &mut again).unwrap();
            assert_eq!(
                again == buf[512..],
                spec.mode == CipherMode::Ecb,
                "{spec:?}"
            );
            c.decrypt(7, &mut buf).unwrap();
            assert_eq!(buf, plain);
            let spec2 = CipherSpec::from_header(
                spec.alg.header_name(),
                &spec.mode_spec(),
                spec.key_bytes() as u32,
                "sha256",
            );
            assert_eq!(spec2, Ok((spec, HashAlg::Sha256)));
        }
    }

    /// Two sectors (the bytes `i % 251`) that qemu-io 10.0.2 wrote at
    /// `sector` of luks images qemu-img made, with the master key slot 0
    /// holds (it matches the header's digest): `cipher-alg`, the header's
    /// `cipher-name` and `cipher-mode`, the key, the sector, and the
    /// SHA-256 of the ciphertext. Sector 2^32 + 3 tells `plain` from
    /// `plain64`; the CTR-ESSIV sectors have IVs whose count carries over
    /// two bytes. nettle (QEMU's backend) encrypts them alike.
    const QEMU_SECTORS: [(&str, &str, &str, &str, u64, &str); 13] = [
        ("twofish-256", "twofish", "ctr-plain64", "645629830ec5efe6c00cc690bdc314550e51e7fdcd913eb59731e0f161aff066", 4294967299, "b0a85e01f11f55921a2590f745c217c348265fd953c64690a10ee7eab209d2b4"),
        ("serpent-128", "serpent", "xts-plain", "bee71c95935d5edea319067832ba1ee47265cc90085618cdd851068959d4dfa3", 4294967299, "232f52ee7384d08fc1f1f4a37cb275d60d7ffd9d3fdadef5aea6947aca58a09e"),
        ("serpent-256", "serpent", "cbc-essiv:sha256", "c5e6d8043cf8ec2a77f89c527769ff756b04e3fceaaeffca45c8f48d80c8a463", 4294967299, "a055496d42c2d9cd31ddbb250fcf00277d4ca9342b7ef1e8b2886005c4a72121"),
        ("twofish-128", "twofish", "ecb-essiv:md5", "7a0c7364f1787e4e829542f61a9f0b76", 4294967299, "4cffd1afc285273e82383233eb632fdfc13bf5c08d52fd815e7642be194cb130"),
        ("cast5-128", "cast5", "cbc-essiv:md5", "dd85616c3d8a1636238dd5f10b85e7d5", 4294967299, "61e12ad5c9e30fac22d3d3c69793f02f316d9d88bcb9246ca9fd8fa94805df9c"),
        ("cast5-128", "cast5", "ctr-essiv:md5", "6e822bd072e4fc06dec30c28cbfc7712", 576, "6f8eabac3b54565f9b1e3e6b61d8ac4b5b65d87f7faa971372cb820b340c2a72"),
        ("cast5-128", "cast5", "ecb-plain", "d53842336efefcade33c3767b4c11468", 4294967299, "b29b5c712d43cf84cd9cdd0d6f51430009d5d591c681190c4199629293373d43"),
        ("aes-256", "aes", "ctr-essiv:sha256", "31669ae3f38f2d40464f5b6ff2c875cc5a2f90455383720675121a25d66947e8", 1791, "9775f0fad43b3eae5120f9cd86586f8fb7670da5b49ace33c0f55e205f47bd99"),
        ("aes-128", "aes", "ecb-plain64", "25492240faa79226f9a468cb59cd5b31", 4294967299, "2012364ff4d70cd343bd5091e245943c70b285fe508085b62502d6ded4af41a4"),
        ("twofish-192", "twofish", "xts-essiv:sm3", "69e7569485b5a352089546b52a1680a0f96e4cec5fb228cf500e819777c8950bd1d37c5925cd14a71a32cb7e4f014d71", 4294967299, "a2e66782a862b61339f2205fe323851499f7e056c8a2b3c2fde0b3831b532b76"),
        ("serpent-192", "serpent", "xts-plain64", "b97a66ba34b9064bb314854d4e1b44254d5efec852089eb873387561bf7f878030fd9a1943a6d515f34d0fa1585e9ec0", 4294967299, "4dfc41b8628d8a5deedabcd707bd687533233c277b480ac0bc1d39e7455aeb03"),
        ("serpent-256", "serpent", "ctr-plain", "80fd211000dd7b4bb6f2ac0bebcf0ae15fc602b7ce29e156eb9537f2b5f95676", 4294967299, "314c4d0edebd9538e1039a76b1d8ae078c4b4bddeaca7f3ae656334ffb1abf3c"),
        ("twofish-256", "twofish", "cbc-plain64", "ce547b8f3aeed11c85aa87b9fcac6ac40a97988a8ac0f66b7b54aaee3ead362a", 4294967299, "a379029d2a94bf8d963d5b3c3a5924fc81881bf7fb3404513b9f788d4e94efc4"),
    ];

    #[test]
    fn encrypts_as_qemu() {
        for (alg, name, mode_spec, key, sector, digest) in QEMU_SECTORS {
            let key = hex(key);
            let (spec, _) =
                CipherSpec::from_header(name, mode_spec, key.len() as u32, "sha256").unwrap();
            assert_eq!(spec.alg.name(), alg);
            assert_eq!(spec.mode_spec(), mode_spec);
            let c = SectorCipher::new(spec, &key).unwrap();
            let mut buf = pattern();
            c.encrypt(sector, &mut buf).unwrap();
            assert_eq!(*HashAlg::Sha256.digest(&[&buf]), hex(digest), "{spec:?}");
            c.decrypt(sector, &mut buf).unwrap();
            assert_eq!(buf, pattern());
        }
    }

    /// CTR counts over the whole block, big-endian, and wraps, as nettle's
    /// `ctr_crypt` (QEMU's CTR) does: 512 bytes `i % 251` from the counter
    /// ff..fff0 with the key 00 01 .. 0f, and the SHA-256 of what nettle
    /// 3.8.1 makes of them.
    #[test]
    fn ctr_counts_over_the_whole_block() {
        let vectors = [
            (
                CipherAlg::Aes128,
                "216e765f6f603139df1ba1c76a14628ec50db1909b18ed1f292dc9c3d57746c4",
            ),
            (
                CipherAlg::Cast5_128,
                "676720cfa785a9a839f24758a81dffcfc87e4cf5fd3ed54876db871b253e688b",
            ),
        ];
        for (alg, digest) in vectors {
            let key: Vec<u8> = (0..16).collect();
            let ctr = keyed_mode(alg, CipherMode::Ctr, &key).unwrap();
            let mut iv = vec![0xff; alg.block_len()];
            iv[alg.block_len() - 1] = 0xf0;
            let mut buf = pattern()[..512].to_vec();
            ctr.encrypt(&iv, &mut buf);
            assert_eq!(*HashAlg::Sha256.digest(&[&buf]), hex(digest), "{alg:?}");
        }
    }

    #[test]
    fn names_are_qemus() {
        for alg in CipherAlg::ALL {
            assert_eq!(CipherAlg::parse(alg.name()), Ok(alg));
            let from_header = CipherAlg::from_header(alg.header_name(), alg.key_len() as u32);
            assert_eq!(from_header, Ok(alg));
        }
        let e = CipherAlg::parse("sm4").unwrap_err();
        assert_eq!(e.to_string(), "Algorithm 'sm4' not supported");
        let e = CipherAlg::from_header("sm4", 16).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Algorithm 'sm4' with key size 16 bytes not supported"
        );
        assert!(CipherAlg::from_header("cast5", 32).is_err());
    }

    /// The pipelined AES-XTS must turn every sector as the xts-mode path
    /// does, equal key halves (which LUKS allows) included.
    #[test]
    fn fast_xts_matches_the_rustcrypto_mode() {
        for (alg, halves_equal) in [
            (CipherAlg::Aes128, false),
            (CipherAlg::Aes256, false),
            (CipherAlg::Aes256, true),
        ] {
            for ivgen in [IvGenAlg::Plain, IvGenAlg::Plain64] {
                let spec = CipherSpec {
                    alg,
                    mode: CipherMode::Xts,
                    ivgen,
                    ivgen_hash: None,
                };
                let key: Vec<u8> = (0..spec.key_bytes())
                    .map(|i| {
                        (i % (spec.key_bytes() / 2)) as u8 * 7
                            + u8::from(!halves_equal && i >= spec.key_bytes() / 2)
                    })
                    .collect();
                let cipher = SectorCipher::new(spec, &key).unwrap();
                assert!(cipher.fast_xts.is_some());
                let reference = SectorCipher {
                    spec,
                    mode: keyed_mode(alg, CipherMode::Xts, &key).unwrap(),
                    essiv: None,
                    fast_xts: None,
                };
                // Three whole sectors and one cut short; the first sector
                // number makes `plain` wrap at 2^32.
                let plain: Vec<u8> = (0..3 * 512 + 48).map(|i| (i * 31 % 251) as u8).collect();
                let first = u64::from(u32::MAX) - 1;
                let mut ours = plain.clone();
                let mut theirs = plain.clone();
                cipher.encrypt(first, &mut ours).unwrap();
                reference.encrypt(first, &mut theirs).unwrap();
                assert_eq!(ours, theirs, "{alg:?} {ivgen:?} encrypt");
                assert_ne!(ours, plain);
                cipher.decrypt(first, &mut ours).unwrap();
                assert_eq!(ours, plain, "{alg:?} {ivgen:?} decrypt");
            }
        }
    }

    #[test]
    fn essiv_and_xts_are_refused_as_qemu_refuses_them() {
        let essiv = |alg, mode, hash| CipherSpec {
            alg,
            mode,
            ivgen: IvGenAlg::Essiv,
            ivgen_hash: Some(hash),
        };
        let refusals = [
            (
                CipherAlg::Aes256,
                HashAlg::Sha1,
                "No AES cipher with key size 20 available",
            ),
            (
                CipherAlg::Serpent128,
                HashAlg::Ripemd160,
                "No Serpent cipher with key size 20 available",
            ),
            (
                CipherAlg::Twofish192,
                HashAlg::Sha384,
                "No Twofish cipher with key size 48 available",
            ),
            (
                CipherAlg::Cast5_128,
                HashAlg::Sha256,
                "Cipher cast5-128 not supported with essiv",
            ),
        ];
        for (alg, hash, message) in refusals {
            let e = essiv(alg, CipherMode::Cbc, hash).check().unwrap_err();
            assert_eq!(e.to_string(), message);
        }
        // The digest picks the key size within the payload cipher's family.
        assert_eq!(CipherAlg::Aes256.essiv(HashAlg::Md5), Ok(CipherAlg::Aes128));
        assert_eq!(
            CipherAlg::Twofish128.essiv(HashAlg::Sm3),
            Ok(CipherAlg::Twofish256)
        );
        assert_eq!(
            CipherAlg::Cast5_128.essiv(HashAlg::Md5),
            Ok(CipherAlg::Cast5_128)
        );
        // ESSIV's refusal comes first. XTS over CAST5's 8-byte block is
        // described from a header, refused when keyed.
        let e = essiv(CipherAlg::Cast5_128, CipherMode::Xts, HashAlg::Sha1).check();
        assert_eq!(
            e.unwrap_err().to_string(),
            "Cipher cast5-128 not supported with essiv"
        );
        let (xts, _) = CipherSpec::from_header("cast5", "xts-plain64", 32, "sha256").unwrap();
        let e = SectorCipher::new(xts, &[0; 32]).unwrap_err();
        assert_eq!(e.to_string(), "Unsupported cipher mode xts");
    }

    #[test]
    fn partial_blocks_are_refused() {
        let spec = all_specs()[0];
        let c = SectorCipher::new(spec, &vec![1u8; spec.key_bytes()]).unwrap();
        assert!(c.encrypt(0, &mut [0u8; 104]).is_err());
        let cast5 = CipherSpec {
            alg: CipherAlg::Cast5_128,
            mode: CipherMode::Cbc,
            ivgen: IvGenAlg::Plain64,
            ivgen_hash: None,
        };
        let c = SectorCipher::new(cast5, &[1u8; 16]).unwrap();
        assert!(c.encrypt(0, &mut [0u8; 104]).is_ok());
        assert!(c.encrypt(0, &mut [0u8; 100]).is_err());
    }
}
