//! AES-XTS for the payloads nearly every LUKS image has (aes-xts-plain64
//! with 128- or 256-bit AES), fast.
//!
//! The `xts-mode` crate encrypts one 16-byte block at a time, so AES-NI
//! waits on each block's result. Here the tweaks of a whole run of sectors
//! are encrypted together, and then all the blocks of a sector, so the
//! `aes` crate's backend pipelines them (eight blocks at a time with
//! AES-NI). Everything else (AES-192, other ciphers) stays on the RustCrypto
//! modes in [`crate::cipher`]. XTS as IEEE 1619 defines it for data units
//! of whole blocks, which is all LUKS uses: no ciphertext stealing.

use aes::cipher::consts::U16;
use aes::cipher::{BlockCipher, BlockDecrypt, BlockEncrypt, BlockSizeUser, KeyInit};
use aes::{Aes128, Aes256, Block};

/// Which way a sector is turned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Encrypt,
    Decrypt,
}

/// Sectors whose tweaks are encrypted in one call.
const TWEAK_BATCH: usize = 32;
/// Blocks of a sector handed to the cipher in one call (a 512-byte sector).
const DATA_BATCH: usize = 32;

/// The data and tweak keys (boxed: the key schedules are large).
enum Keys {
    Aes128(Box<(Aes128, Aes128)>),
    Aes256(Box<(Aes256, Aes256)>),
}

/// A keyed AES-XTS (the key schedules zero themselves when dropped).
pub(crate) struct FastXts {
    keys: Keys,
}

impl FastXts {
    /// AES-XTS with `key` (data key, then tweak key), or `None` for a key
    /// length that is not AES-128's or AES-256's.
    pub(crate) fn new(key: &[u8]) -> Option<FastXts> {
        let (data, tweak) = key.split_at(key.len() / 2);
        let keys = match key.len() {
            32 => Keys::Aes128(Box::new((
                Aes128::new_from_slice(data).ok()?,
                Aes128::new_from_slice(tweak).ok()?,
            ))),
            64 => Keys::Aes256(Box::new((
                Aes256::new_from_slice(data).ok()?,
                Aes256::new_from_slice(tweak).ok()?,
            ))),
            _ => return None,
        };
        Some(FastXts { keys })
    }

    /// Turns each of `sectors` (a data unit each, a whole number of 16-byte
    /// blocks) in place, with the tweak `iv` gives for its index.
    pub(crate) fn apply<'a>(
        &self,
        dir: Direction,
        sectors: impl Iterator<Item = &'a mut [u8]>,
        iv: impl Fn(usize) -> [u8; 16],
    ) {
        match &self.keys {
            Keys::Aes128(keys) => run(&keys.0, &keys.1, dir, sectors, iv),
            Keys::Aes256(keys) => run(&keys.0, &keys.1, dir, sectors, iv),
        }
    }
}

/// A 16-byte block cipher that turns blocks both ways (AES of any key size).
trait Aes16: BlockCipher + BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16> {}
impl<C: BlockCipher + BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16>> Aes16 for C {}

/// [`FastXts::apply`] for one AES key size.
fn run<'a, C: Aes16>(
    data: &C,
    tweak_key: &C,
    dir: Direction,
    mut sectors: impl Iterator<Item = &'a mut [u8]>,
    iv: impl Fn(usize) -> [u8; 16],
) {
    let mut index = 0usize;
    let mut tweaks = [Block::default(); TWEAK_BATCH];
    let mut batch: Vec<&mut [u8]> = Vec::with_capacity(TWEAK_BATCH);
    loop {
        batch.clear();
        batch.extend(sectors.by_ref().take(TWEAK_BATCH));
        if batch.is_empty() {
            return;
        }
        for (i, t) in tweaks[..batch.len()].iter_mut().enumerate() {
            *t = Block::from(iv(index + i));
        }
        tweak_key.encrypt_blocks(&mut tweaks[..batch.len()]);
        for (sector, first) in batch.iter_mut().zip(&tweaks) {
            sector_xts(data, dir, sector, u128::from_le_bytes((*first).into()));
        }
        index += batch.len();
    }
}

/// XTS over one data unit whose first block's tweak is `tweak`.
fn sector_xts<C: Aes16>(data: &C, dir: Direction, sector: &mut [u8], mut tweak: u128) {
    let mut blocks = [Block::default(); DATA_BATCH];
    let mut tweaks = [0u128; DATA_BATCH];
    for run in sector.chunks_mut(DATA_BATCH * 16) {
        let n = run.len() / 16;
        for ((bytes, block), t) in run.chunks_exact(16).zip(&mut blocks).zip(&mut tweaks) {
            *t = tweak;
            let word = u128::from_le_bytes(bytes.try_into().expect("16 bytes")) ^ tweak;
            *block = Block::from(word.to_le_bytes());
            tweak = times_alpha(tweak);
        }
        match dir {
            Direction::Encrypt => data.encrypt_blocks(&mut blocks[..n]),
            Direction::Decrypt => data.decrypt_blocks(&mut blocks[..n]),
        }
        for ((bytes, block), t) in run.chunks_exact_mut(16).zip(&blocks).zip(&tweaks) {
            let word = u128::from_le_bytes((*block).into()) ^ t;
            bytes.copy_from_slice(&word.to_le_bytes());
        }
    }
}

/// The next block's tweak: multiplication by the primitive element of
/// GF(2^128), with the tweak's bytes read little-endian (IEEE 1619).
fn times_alpha(tweak: u128) -> u128 {
    let carry = (tweak >> 127) as u8;
    (tweak << 1) ^ u128::from(0x87 * carry)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IEEE 1619-2007 test vector 1: AES-128, zero keys, data unit 0, 32
    /// zero bytes.
    #[test]
    fn ieee_1619_vector_1() {
        let xts = FastXts::new(&[0; 32]).unwrap();
        let mut unit = [0u8; 32];
        xts.apply(Direction::Encrypt, std::iter::once(&mut unit[..]), |_| {
            [0; 16]
        });
        let hex: String = unit.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e"
        );
        xts.apply(Direction::Decrypt, std::iter::once(&mut unit[..]), |_| {
            [0; 16]
        });
        assert_eq!(unit, [0; 32]);
    }

    #[test]
    fn alpha_carries_into_the_low_byte() {
        assert_eq!(times_alpha(1), 2);
        assert_eq!(times_alpha(1 << 127), 0x87);
        assert_eq!(times_alpha((1 << 127) | 1), 0x87 ^ 2);
    }
}
