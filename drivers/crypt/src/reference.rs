//! Test support: a block cipher checked against a reference implementation
//! of the same cipher, and against published known answers.

use crate::hash::tests::hex;
use aes::cipher::consts::U16;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};

/// A small deterministic generator (SplitMix64), so failures repeat.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// `Ours` encrypts and decrypts as `Theirs` does: `keys` random keys of
/// each of `key_lens` bytes, each with `blocks` random blocks, encrypted
/// and decrypted one at a time and as a run.
pub(crate) fn agrees_with<Ours, Theirs>(key_lens: &[usize], keys: usize, blocks: usize)
where
    Ours: KeyInit + BlockEncrypt<BlockSize = U16> + BlockDecrypt,
    Theirs: KeyInit + BlockEncrypt<BlockSize = U16> + BlockDecrypt,
{
    let mut rng = Rng(0x5eed);
    for &key_len in key_lens {
        for _ in 0..keys {
            let key = rng.bytes(key_len);
            let ours = Ours::new_from_slice(&key).unwrap();
            let theirs = Theirs::new_from_slice(&key).unwrap();
            let plain: Vec<_> = (0..blocks)
                .map(|_| GenericArray::clone_from_slice(&rng.bytes(16)))
                .collect();
            let mut a = plain.clone();
            let mut b = plain.clone();
            ours.encrypt_blocks(&mut a);
            theirs.encrypt_blocks(&mut b);
            assert_eq!(a, b, "key {key:02x?}");
            let mut one = plain[0];
            ours.encrypt_block(&mut one);
            assert_eq!(one, b[0]);
            ours.decrypt_blocks(&mut a);
            assert_eq!(a, plain, "key {key:02x?}");
            // Random blocks decrypt alike too.
            let mut c = plain.clone();
            let mut d = plain.clone();
            ours.decrypt_blocks(&mut c);
            theirs.decrypt_blocks(&mut d);
            assert_eq!(c, d, "key {key:02x?}");
        }
    }
    // The key lengths the cipher refuses, it refuses as the reference does.
    for key_len in 0..=40 {
        let key = vec![7; key_len];
        assert_eq!(
            Ours::new_from_slice(&key).is_ok(),
            Theirs::new_from_slice(&key).is_ok(),
            "{key_len}-byte key"
        );
    }
}

/// `C` turns each `(key, plaintext, ciphertext)`, in hex, one into the
/// other.
pub(crate) fn known_answers<C>(vectors: &[(&str, &str, &str)])
where
    C: KeyInit + BlockEncrypt<BlockSize = U16> + BlockDecrypt,
{
    for (key, plain, cipher) in vectors {
        let c = C::new_from_slice(&hex(key)).unwrap();
        let mut block = GenericArray::clone_from_slice(&hex(plain));
        c.encrypt_block(&mut block);
        assert_eq!(block.as_slice(), hex(cipher), "key {key}");
        c.decrypt_block(&mut block);
        assert_eq!(block.as_slice(), hex(plain), "key {key}");
    }
}
