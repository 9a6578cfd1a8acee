//! Serpent (Anderson, Biham, Knudsen: "Serpent: A Proposal for the Advanced
//! Encryption Standard", 1998) in the specification's bitslice mode: a
//! block is four 32-bit words, and one S-box application turns all 32
//! 4-bit columns of them at once through boolean operations on whole words.
//!
//! Each S-box's output bits are written as their algebraic normal form (the
//! XOR of products of input bits), computed at compile time from the
//! specification's S-box tables; after inlining the compiler sees
//! constant coefficients and keeps only the terms present.
//!
//! [`Serpent`] implements the RustCrypto `cipher` traits, as the `serpent`
//! crate's type does, so the chaining modes take either; it computes the
//! same function as that crate (the tests check), only faster.

use crate::le_words::{from_block, to_block};
use aes::cipher::consts::U16;
use aes::cipher::{AlgorithmName, BlockCipher, InvalidLength, Key, KeyInit, KeySizeUser};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The eight S-boxes S0..S7 (the specification's table of S-boxes).
const SBOX: [[u8; 16]; 8] = [
    [3, 8, 15, 1, 10, 6, 5, 11, 14, 13, 4, 2, 7, 0, 9, 12],
    [15, 12, 2, 7, 9, 0, 5, 10, 1, 11, 14, 8, 6, 13, 3, 4],
    [8, 6, 7, 9, 3, 12, 10, 15, 13, 1, 14, 4, 0, 11, 5, 2],
    [0, 15, 11, 8, 12, 9, 6, 3, 13, 1, 2, 4, 10, 7, 5, 14],
    [1, 15, 8, 3, 12, 0, 11, 6, 2, 5, 4, 10, 9, 14, 7, 13],
    [15, 5, 2, 11, 4, 10, 9, 12, 0, 3, 14, 8, 13, 6, 7, 1],
    [7, 2, 12, 5, 8, 4, 6, 11, 14, 9, 1, 15, 13, 3, 10, 0],
    [1, 13, 15, 0, 14, 8, 2, 11, 7, 4, 12, 10, 9, 3, 5, 6],
];

/// The golden ratio's fraction, which the key schedule mixes in.
const PHI: u32 = 0x9e37_79b9;

/// Rounds, and round keys (one more).
const ROUNDS: usize = 32;

/// An S-box as algebraic normal form: `anf[b]` has bit `m` set when the
/// product of the input bits in `m` (bit 0 of `m` for word 0...) is a term
/// of output bit `b`; `m` = 0 is the constant 1.
type Anf = [u16; 4];

/// The ANF of the 4-bit permutation `s`, by the Möbius transform of each
/// output bit's truth table.
const fn anf(s: &[u8; 16]) -> Anf {
    let mut anf = [0u16; 4];
    let mut b = 0;
    while b < 4 {
        let mut t = [0u8; 16];
        let mut x = 0;
        while x < 16 {
            t[x] = (s[x] >> b) & 1;
            x += 1;
        }
        let mut i = 0;
        while i < 4 {
            let mut x = 0;
            while x < 16 {
                if x & (1 << i) != 0 {
                    t[x] ^= t[x ^ (1 << i)];
                }
                x += 1;
            }
            i += 1;
        }
        let mut m = 0;
        while m < 16 {
            anf[b] |= (t[m] as u16) << m;
            m += 1;
        }
        b += 1;
    }
    anf
}

/// The inverse of the permutation `s`.
const fn inverse(s: &[u8; 16]) -> [u8; 16] {
    let mut inv = [0u8; 16];
    let mut x = 0;
    while x < 16 {
        inv[s[x] as usize] = x as u8;
        x += 1;
    }
    inv
}

/// The ANF of S0..S7, then of their inverses.
const ANF: [[Anf; 8]; 2] = {
    let mut anfs = [[[0; 4]; 8]; 2];
    let mut i = 0;
    while i < 8 {
        anfs[0][i] = anf(&SBOX[i]);
        anfs[1][i] = anf(&inverse(&SBOX[i]));
        i += 1;
    }
    anfs
};

/// S-box `I` (or its inverse, when `INV`) applied in bitslice mode: bit
/// `j` of `x[0..4]` is the 4-bit input of column `j`, `x[0]` its lowest.
#[inline(always)]
fn sbox<const INV: bool, const I: usize>(x: [u32; 4]) -> [u32; 4] {
    let anf: Anf = const { ANF[INV as usize][I] };
    let [x0, x1, x2, x3] = x;
    // Every product of input words, monomial `m` being the AND of the
    // words whose bits are set in `m` (the constant 1 is all ones).
    let (x01, x02, x12) = (x0 & x1, x0 & x2, x1 & x2);
    let (x012, x03, x13) = (x01 & x2, x0 & x3, x1 & x3);
    let (x013, x23, x023) = (x01 & x3, x2 & x3, x02 & x3);
    let (x123, x0123) = (x12 & x3, x012 & x3);
    let mono = [
        !0, x0, x1, x01, x2, x02, x12, x012, x3, x03, x13, x013, x23, x023, x123, x0123,
    ];
    [
        anf_bit(anf[0], &mono),
        anf_bit(anf[1], &mono),
        anf_bit(anf[2], &mono),
        anf_bit(anf[3], &mono),
    ]
}

/// One output bit of an S-box: the XOR of the monomials whose bits are set
/// in `anf`, a constant once inlined, so that only those terms are
/// computed.
#[inline(always)]
fn anf_bit(anf: u16, mono: &[u32; 16]) -> u32 {
    let term = |m: usize| if anf >> m & 1 != 0 { mono[m] } else { 0 };
    term(0)
        ^ term(1)
        ^ term(2)
        ^ term(3)
        ^ term(4)
        ^ term(5)
        ^ term(6)
        ^ term(7)
        ^ term(8)
        ^ term(9)
        ^ term(10)
        ^ term(11)
        ^ term(12)
        ^ term(13)
        ^ term(14)
        ^ term(15)
}

/// S-box `i mod 8` (or its inverse), for a round number known only at run
/// time: one branch, then the constant-folded S-box.
#[inline(always)]
fn sbox_dyn<const INV: bool>(i: usize, x: [u32; 4]) -> [u32; 4] {
    match i % 8 {
        0 => sbox::<INV, 0>(x),
        1 => sbox::<INV, 1>(x),
        2 => sbox::<INV, 2>(x),
        3 => sbox::<INV, 3>(x),
        4 => sbox::<INV, 4>(x),
        5 => sbox::<INV, 5>(x),
        6 => sbox::<INV, 6>(x),
        _ => sbox::<INV, 7>(x),
    }
}

/// The linear transformation that follows the S-boxes of every round but
/// the last.
#[inline(always)]
fn lt([x0, x1, x2, x3]: [u32; 4]) -> [u32; 4] {
    let x0 = x0.rotate_left(13);
    let x2 = x2.rotate_left(3);
    let x1 = x1 ^ x0 ^ x2;
    let x3 = x3 ^ x2 ^ (x0 << 3);
    let x1 = x1.rotate_left(1);
    let x3 = x3.rotate_left(7);
    let x0 = x0 ^ x1 ^ x3;
    let x2 = x2 ^ x3 ^ (x1 << 7);
    [x0.rotate_left(5), x1, x2.rotate_left(22), x3]
}

/// The inverse of [`lt`]: its steps undone in reverse order.
#[inline(always)]
fn inverse_lt([x0, x1, x2, x3]: [u32; 4]) -> [u32; 4] {
    let x0 = x0.rotate_right(5);
    let x2 = x2.rotate_right(22);
    let x2 = x2 ^ x3 ^ (x1 << 7);
    let x0 = x0 ^ x1 ^ x3;
    let x3 = x3.rotate_right(7);
    let x1 = x1.rotate_right(1);
    let x3 = x3 ^ x2 ^ (x0 << 3);
    let x1 = x1 ^ x0 ^ x2;
    [x0.rotate_right(13), x1, x2.rotate_right(3), x3]
}

/// `a ^ b`, word by word.
#[inline(always)]
fn xor(a: [u32; 4], b: [u32; 4]) -> [u32; 4] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Serpent keyed with a key of 16 to 32 bytes (LUKS uses 16, 24 and 32).
#[derive(Clone)]
pub struct Serpent {
    /// The 33 round keys `K0..K32`, in bitslice form.
    k: [[u32; 4]; ROUNDS + 1],
}

impl Serpent {
    /// Encrypts the four words of a block: 31 rounds of key mixing, S-box
    /// and linear transformation, and a last round whose linear
    /// transformation is replaced by a final key mixing.
    fn encrypt(&self, mut x: [u32; 4]) -> [u32; 4] {
        // Eight rounds a step, so that each S-box is known when compiled.
        for r in (0..ROUNDS).step_by(8) {
            x = lt(sbox::<false, 0>(xor(x, self.k[r])));
            x = lt(sbox::<false, 1>(xor(x, self.k[r + 1])));
            x = lt(sbox::<false, 2>(xor(x, self.k[r + 2])));
            x = lt(sbox::<false, 3>(xor(x, self.k[r + 3])));
            x = lt(sbox::<false, 4>(xor(x, self.k[r + 4])));
            x = lt(sbox::<false, 5>(xor(x, self.k[r + 5])));
            x = lt(sbox::<false, 6>(xor(x, self.k[r + 6])));
            x = sbox::<false, 7>(xor(x, self.k[r + 7]));
            if r + 8 < ROUNDS {
                x = lt(x);
            }
        }
        xor(x, self.k[ROUNDS])
    }

    /// Decrypts the four words of a block: [`Serpent::encrypt`]'s steps
    /// undone in reverse order.
    fn decrypt(&self, mut x: [u32; 4]) -> [u32; 4] {
        x = xor(x, self.k[ROUNDS]);
        for r in (0..ROUNDS).step_by(8).rev() {
            if r + 8 < ROUNDS {
                x = inverse_lt(x);
            }
            x = xor(sbox::<true, 7>(x), self.k[r + 7]);
            x = xor(sbox::<true, 6>(inverse_lt(x)), self.k[r + 6]);
            x = xor(sbox::<true, 5>(inverse_lt(x)), self.k[r + 5]);
            x = xor(sbox::<true, 4>(inverse_lt(x)), self.k[r + 4]);
            x = xor(sbox::<true, 3>(inverse_lt(x)), self.k[r + 3]);
            x = xor(sbox::<true, 2>(inverse_lt(x)), self.k[r + 2]);
            x = xor(sbox::<true, 1>(inverse_lt(x)), self.k[r + 1]);
            x = xor(sbox::<true, 0>(inverse_lt(x)), self.k[r]);
        }
        x
    }
}

impl BlockCipher for Serpent {}

/// The shortest key LUKS uses; [`KeyInit::new_from_slice`] takes up to 32
/// bytes.
impl KeySizeUser for Serpent {
    type KeySize = U16;
}

impl KeyInit for Serpent {
    fn new(key: &Key<Self>) -> Self {
        Self::new_from_slice(key).expect("a 128-bit key")
    }

    /// The key schedule: the key padded to 256 bits (a 1 bit after it,
    /// then zeros), expanded by the affine recurrence into 132 prekey
    /// words, each four of which pass through an S-box (S3 for K0, S2 for
    /// K1, ... downwards).
    fn new_from_slice(key: &[u8]) -> Result<Self, InvalidLength> {
        if !(16..=32).contains(&key.len()) {
            return Err(InvalidLength);
        }
        let mut padded = [0u8; 32];
        padded[..key.len()].copy_from_slice(key);
        if key.len() < 32 {
            padded[key.len()] = 1;
        }
        // w[0..8] are the key's words w(-8)..w(-1), the rest w(0)..w(131).
        let mut w = [0u32; 8 + 4 * (ROUNDS + 1)];
        for (i, chunk) in padded.chunks_exact(4).enumerate() {
            w[i] = u32::from_le_bytes(chunk.try_into().unwrap());
        }
        for i in 8..w.len() {
            w[i] =
                (w[i - 8] ^ w[i - 5] ^ w[i - 3] ^ w[i - 1] ^ PHI ^ (i as u32 - 8)).rotate_left(11);
        }
        let mut serpent = Serpent {
            k: [[0; 4]; ROUNDS + 1],
        };
        for (i, k) in serpent.k.iter_mut().enumerate() {
            let prekey = words_at(&w[8 + 4 * i..]);
            *k = sbox_dyn::<false>((3 + 8 - i % 8) % 8, prekey);
        }
        padded.zeroize();
        w.zeroize();
        Ok(serpent)
    }
}

/// The first four of `w`.
fn words_at(w: &[u32]) -> [u32; 4] {
    [w[0], w[1], w[2], w[3]]
}

impl fmt::Debug for Serpent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Serpent { .. }")
    }
}

impl AlgorithmName for Serpent {
    fn write_alg_name(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Serpent")
    }
}

/// The round keys are zeroed on drop.
impl Drop for Serpent {
    fn drop(&mut self) {
        self.k.zeroize();
    }
}

impl ZeroizeOnDrop for Serpent {}

aes::cipher::impl_simple_block_encdec!(
    Serpent, U16, cipher, block,
    encrypt: {
        let out = cipher.encrypt(from_block(&(*block.get_in()).into()));
        *block.get_out() = to_block(out).into();
    }
    decrypt: {
        let out = cipher.decrypt(from_block(&(*block.get_in()).into()));
        *block.get_out() = to_block(out).into();
    }
);

#[cfg(test)]
mod tests {
    use super::{sbox_dyn, Serpent, SBOX};
    use crate::reference::{agrees_with, known_answers};

    /// The NESSIE vectors (set 1, vector 0 of each key size) and the
    /// Serpent package's checks, in NESSIE's byte order (byte 0 the least
    /// significant of word 0).
    #[test]
    fn published_vectors() {
        known_answers::<Serpent>(&[
            (
                "80000000000000000000000000000000",
                "00000000000000000000000000000000",
                "264e5481eff42a4606abda06c0bfda3d",
            ),
            (
                "800000000000000000000000000000000000000000000000",
                "00000000000000000000000000000000",
                "9e274ead9b737bb21efcfca548602689",
            ),
            (
                "8000000000000000000000000000000000000000000000000000000000000000",
                "00000000000000000000000000000000",
                "a223aa1288463c0e2be38ebd825616c0",
            ),
            (
                "000102030405060708090a0b0c0d0e0f1011121314151617",
                "4528caccb954d450655e8cfd71cbfac7",
                "00112233445566778899aabbccddeeff",
            ),
            (
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                "3da46ffa6f4d6f30cd258333e5a61369",
                "00112233445566778899aabbccddeeff",
            ),
        ]);
    }

    /// The bitsliced S-boxes and their inverses turn every 4-bit column as
    /// the tables say: column `j` of the input holds `j % 16`.
    #[test]
    fn bitsliced_sboxes_are_the_tables() {
        let columns = |x: [u32; 4]| -> Vec<u8> {
            (0..32)
                .map(|j| (0..4).map(|b| ((x[b] >> j & 1) as u8) << b).sum())
                .collect()
        };
        let input: [u32; 4] =
            std::array::from_fn(|b| (0..32).map(|j| ((j % 16) >> b & 1) << j).sum());
        for (i, table) in SBOX.iter().enumerate() {
            let out = sbox_dyn::<false>(i, input);
            let expected: Vec<u8> = (0..32).map(|j| table[j % 16]).collect();
            assert_eq!(columns(out), expected, "S{i}");
            assert_eq!(sbox_dyn::<true>(i, out), input, "S{i} inverse");
        }
    }

    #[test]
    fn matches_the_serpent_crate() {
        let all: Vec<usize> = (16..=32).collect();
        agrees_with::<Serpent, serpent::Serpent>(&all, 30, 20);
        agrees_with::<Serpent, serpent::Serpent>(&[16, 24, 32], 100, 40);
    }
}
