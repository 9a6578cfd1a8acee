//! Twofish (Schneier, Kelsey, Whiting, Wagner, Hall, Ferguson: "Twofish: A
//! 128-Bit Block Cipher", 1998) with "full keying": keying folds the
//! key-dependent S-boxes and the MDS matrix into four 256-entry tables, so
//! the round function `g` is four lookups and three XORs (section 4.3.5 of
//! the paper; section numbers below are the paper's).
//!
//! [`Twofish`] implements the RustCrypto `cipher` traits, as the `twofish`
//! crate's type does, so the chaining modes take either; it computes the
//! same function as that crate (the tests check), only faster: that crate
//! evaluates the key-dependent S-boxes for every byte of every round.

use crate::le_words::{from_block, to_block};
use aes::cipher::consts::{U16, U32};
use aes::cipher::{AlgorithmName, BlockCipher, InvalidLength, Key, KeyInit, KeySizeUser};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The 4-bit permutations `t0..t3` that make `q0` (section 4.3.5).
const Q0_T: [[u8; 16]; 4] = [
    [8, 1, 7, 13, 6, 15, 3, 2, 0, 11, 5, 9, 14, 12, 10, 4],
    [14, 12, 11, 8, 1, 2, 3, 5, 15, 4, 10, 6, 7, 0, 9, 13],
    [11, 10, 5, 14, 6, 13, 9, 0, 12, 8, 15, 3, 2, 4, 7, 1],
    [13, 7, 15, 4, 1, 2, 6, 14, 9, 11, 3, 0, 8, 5, 12, 10],
];

/// The 4-bit permutations `t0..t3` that make `q1`.
const Q1_T: [[u8; 16]; 4] = [
    [2, 8, 11, 13, 15, 7, 6, 14, 3, 1, 9, 4, 0, 10, 12, 5],
    [1, 14, 2, 11, 4, 12, 3, 7, 6, 13, 10, 5, 15, 9, 0, 8],
    [4, 12, 7, 5, 1, 6, 9, 10, 0, 14, 13, 8, 2, 11, 3, 15],
    [11, 9, 5, 1, 12, 3, 13, 14, 6, 4, 7, 15, 2, 0, 8, 10],
];

/// One of the fixed byte permutations `q0`, `q1`, as a table, built from
/// its four 4-bit permutations (section 4.3.5).
const fn q_table(t: &[[u8; 16]; 4]) -> [u8; 256] {
    // A 4-bit rotation right by one.
    const fn ror4(x: u8) -> u8 {
        ((x >> 1) | (x << 3)) & 15
    }
    let mut q = [0u8; 256];
    let mut x = 0;
    while x < 256 {
        let (a0, b0) = ((x >> 4) as u8, (x & 15) as u8);
        let (a1, b1) = (a0 ^ b0, a0 ^ ror4(b0) ^ ((a0 << 3) & 15));
        let (a2, b2) = (t[0][a1 as usize], t[1][b1 as usize]);
        let (a3, b3) = (a2 ^ b2, a2 ^ ror4(b2) ^ ((a2 << 3) & 15));
        let (a4, b4) = (t[2][a3 as usize], t[3][b3 as usize]);
        q[x] = (b4 << 4) | a4;
        x += 1;
    }
    q
}

/// The permutation `q0`.
const Q0: [u8; 256] = q_table(&Q0_T);
/// The permutation `q1`.
const Q1: [u8; 256] = q_table(&Q1_T);

/// The product of `a` and `b` in GF(2^8) modulo the polynomial whose low
/// byte is `poly` (`x^8` implied).
const fn gf_mul(mut a: u8, mut b: u8, poly: u8) -> u8 {
    let mut p = 0;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= poly;
        }
        b >>= 1;
    }
    p
}

/// The MDS matrix's polynomial `x^8 + x^6 + x^5 + x^3 + 1`, less `x^8`.
const MDS_POLY: u8 = 0x69;

/// The MDS matrix (section 4.2).
const MDS: [[u8; 4]; 4] = [
    [0x01, 0xef, 0x5b, 0x5b],
    [0x5b, 0xef, 0xef, 0x01],
    [0xef, 0x5b, 0x01, 0xef],
    [0xef, 0x01, 0xef, 0x5b],
];

/// The RS code's polynomial `x^8 + x^6 + x^3 + x^2 + 1`, less `x^8`.
const RS_POLY: u8 = 0x4d;

/// The Reed-Solomon matrix that makes the S-box key words (section 4.3).
const RS: [[u8; 8]; 4] = [
    [0x01, 0xa4, 0x55, 0x87, 0x5a, 0x58, 0xdb, 0x9e],
    [0xa4, 0x56, 0x82, 0xf3, 0x1e, 0xc6, 0x68, 0xe5],
    [0x02, 0xa1, 0xfc, 0xc1, 0x47, 0xae, 0x3d, 0x19],
    [0xa4, 0x55, 0x87, 0x5a, 0x58, 0xdb, 0x9e, 0x03],
];

/// Column `j` of the MDS matrix times the byte `y`, as a little-endian word.
fn mds_column(j: usize, y: u8) -> u32 {
    u32::from_le_bytes(std::array::from_fn(|i| gf_mul(MDS[i][j], y, MDS_POLY)))
}

/// Byte `j` of `h`'s input through its chain of `q` permutations and the
/// key bytes `l[i][j]` (section 4.3.2, figure 2), `l` being `k` = 2, 3 or 4
/// words as bytes.
fn h_byte(j: usize, x: u8, l: &[[u8; 4]]) -> u8 {
    // The permutation each of the at most five stages applies, per byte;
    // stage 0 applies only for k = 4, stage 1 for k >= 3.
    const ORDER: [[&[u8; 256]; 5]; 4] = [
        [&Q1, &Q1, &Q0, &Q0, &Q1],
        [&Q0, &Q1, &Q1, &Q0, &Q0],
        [&Q0, &Q0, &Q0, &Q1, &Q1],
        [&Q1, &Q0, &Q1, &Q1, &Q0],
    ];
    let k = l.len();
    let mut y = x;
    for stage in 4 - k..4 {
        y = ORDER[j][stage][y as usize] ^ l[3 - stage][j];
    }
    ORDER[j][4][y as usize]
}

/// The function `h` (section 4.3.2): `x`'s bytes through the key-dependent
/// S-boxes that `l` makes, then the MDS matrix.
fn h(x: u32, l: &[[u8; 4]]) -> u32 {
    let x = x.to_le_bytes();
    (0..4).fold(0, |z, j| z ^ mds_column(j, h_byte(j, x[j], l)))
}

/// Twofish keyed with a 128-, 192- or 256-bit key.
#[derive(Clone)]
pub struct Twofish {
    /// The 40 subkey words `K0..K39` (section 4.3.1).
    k: [u32; 40],
    /// `g` by byte: `t[j][b]` is byte `j` = `b` through its key-dependent
    /// S-box, times the MDS matrix's column `j`.
    t: [[u32; 256]; 4],
}

impl Twofish {
    /// The round function `g` (section 4.2) through the keying tables.
    #[inline(always)]
    fn g(&self, x: u32) -> u32 {
        let [b0, b1, b2, b3] = x.to_le_bytes();
        self.t[0][b0 as usize]
            ^ self.t[1][b1 as usize]
            ^ self.t[2][b2 as usize]
            ^ self.t[3][b3 as usize]
    }

    /// The F function (section 4.2) of round `r`.
    #[inline(always)]
    fn f(&self, r0: u32, r1: u32, r: usize) -> (u32, u32) {
        let t0 = self.g(r0);
        let t1 = self.g(r1.rotate_left(8));
        (
            t0.wrapping_add(t1).wrapping_add(self.k[2 * r + 8]),
            t0.wrapping_add(t1.wrapping_mul(2))
                .wrapping_add(self.k[2 * r + 9]),
        )
    }

    /// Encrypts the 16 bytes `block` (section 4.1, figure 1).
    fn encrypt(&self, block: [u8; 16]) -> [u8; 16] {
        let mut r = from_block(&block);
        for (i, w) in r.iter_mut().enumerate() {
            *w ^= self.k[i];
        }
        // Two rounds a step, so the halves trade places without a swap.
        for round in (0..16).step_by(2) {
            let (f0, f1) = self.f(r[0], r[1], round);
            r[2] = (r[2] ^ f0).rotate_right(1);
            r[3] = r[3].rotate_left(1) ^ f1;
            let (f0, f1) = self.f(r[2], r[3], round + 1);
            r[0] = (r[0] ^ f0).rotate_right(1);
            r[1] = r[1].rotate_left(1) ^ f1;
        }
        // The last round's swap undone, and the output whitening.
        to_block([
            r[2] ^ self.k[4],
            r[3] ^ self.k[5],
            r[0] ^ self.k[6],
            r[1] ^ self.k[7],
        ])
    }

    /// Decrypts the 16 bytes `block`: [`Twofish::encrypt`]'s steps undone
    /// in reverse order.
    fn decrypt(&self, block: [u8; 16]) -> [u8; 16] {
        let c = from_block(&block);
        let mut r = [
            c[2] ^ self.k[6],
            c[3] ^ self.k[7],
            c[0] ^ self.k[4],
            c[1] ^ self.k[5],
        ];
        for round in (0..16).step_by(2).rev() {
            let (f0, f1) = self.f(r[2], r[3], round + 1);
            r[0] = r[0].rotate_left(1) ^ f0;
            r[1] = (r[1] ^ f1).rotate_right(1);
            let (f0, f1) = self.f(r[0], r[1], round);
            r[2] = r[2].rotate_left(1) ^ f0;
            r[3] = (r[3] ^ f1).rotate_right(1);
        }
        for (i, w) in r.iter_mut().enumerate() {
            *w ^= self.k[i];
        }
        to_block(r)
    }
}

impl BlockCipher for Twofish {}

/// The longest key; [`KeyInit::new_from_slice`] takes the shorter ones too.
impl KeySizeUser for Twofish {
    type KeySize = U32;
}

impl KeyInit for Twofish {
    fn new(key: &Key<Self>) -> Self {
        Self::new_from_slice(key).expect("a 256-bit key")
    }

    /// The key schedule (section 4.3), taking a 16-, 24- or 32-byte key.
    fn new_from_slice(key: &[u8]) -> Result<Self, InvalidLength> {
        if !matches!(key.len(), 16 | 24 | 32) {
            return Err(InvalidLength);
        }
        // The key as 2k little-endian words M0..M(2k-1): the even ones are
        // Me, the odd ones Mo. Copies of key material are zeroed on drop.
        let m: Zeroizing<Vec<[u8; 4]>> =
            Zeroizing::new(key.chunks_exact(4).map(|c| c.try_into().unwrap()).collect());
        let me = Zeroizing::new(m.iter().step_by(2).copied().collect::<Vec<_>>());
        let mo = Zeroizing::new(m.iter().skip(1).step_by(2).copied().collect::<Vec<_>>());
        let mut tf = Twofish {
            k: [0; 40],
            t: [[0; 256]; 4],
        };
        const RHO: u32 = 0x0101_0101;
        for i in 0..20 {
            let a = h(2 * i * RHO, &me);
            let b = h((2 * i + 1) * RHO, &mo).rotate_left(8);
            tf.k[2 * i as usize] = a.wrapping_add(b);
            tf.k[2 * i as usize + 1] = a.wrapping_add(b.wrapping_mul(2)).rotate_left(9);
        }
        // The S-box key words S_i = RS . (m(8i) .. m(8i+7)), listed to `h`
        // as S(k-1) .. S0.
        let s: Zeroizing<Vec<[u8; 4]>> = Zeroizing::new(
            key.chunks_exact(8)
                .rev()
                .map(|m| {
                    std::array::from_fn(|r| {
                        (0..8).fold(0, |acc, c| acc ^ gf_mul(RS[r][c], m[c], RS_POLY))
                    })
                })
                .collect(),
        );
        for (j, table) in tf.t.iter_mut().enumerate() {
            for (b, entry) in table.iter_mut().enumerate() {
                *entry = mds_column(j, h_byte(j, b as u8, &s));
            }
        }
        Ok(tf)
    }
}

impl fmt::Debug for Twofish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Twofish { .. }")
    }
}

impl AlgorithmName for Twofish {
    fn write_alg_name(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Twofish")
    }
}

/// The subkeys and the key-dependent tables are zeroed on drop.
impl Drop for Twofish {
    fn drop(&mut self) {
        self.k.zeroize();
        self.t.zeroize();
    }
}

impl ZeroizeOnDrop for Twofish {}

aes::cipher::impl_simple_block_encdec!(
    Twofish, U16, cipher, block,
    encrypt: {
        let out = cipher.encrypt((*block.get_in()).into());
        *block.get_out() = out.into();
    }
    decrypt: {
        let out = cipher.decrypt((*block.get_in()).into());
        *block.get_out() = out.into();
    }
);

#[cfg(test)]
mod tests {
    use super::Twofish;
    use crate::reference::{agrees_with, known_answers};

    /// The Twofish paper's Appendix A (all-zero plaintext; the 128-bit key
    /// all zeros), and Schneier's `ecb_ival.txt` (I=49).
    #[test]
    fn published_vectors() {
        known_answers::<Twofish>(&[
            (
                "00000000000000000000000000000000",
                "00000000000000000000000000000000",
                "9f589f5cf6122c32b6bfec2f2ae8c35a",
            ),
            (
                "0123456789abcdeffedcba98765432100011223344556677",
                "00000000000000000000000000000000",
                "cfd1d2e5a9be9cdf501f13b892bd2248",
            ),
            (
                "0123456789abcdeffedcba987654321000112233445566778899aabbccddeeff",
                "00000000000000000000000000000000",
                "37527be0052334b89f0cfccae87cfa20",
            ),
            (
                "bca724a54533c6987e14aa827952f921",
                "6b459286f3ffd28d49f15b1581b08e42",
                "5d9d4eeffa9151575524f115815a12e0",
            ),
            (
                "fb66522c332fcc4c042abe32fa9e902fdea4f3da75ec7a8e",
                "f0ab73301125fa21ef70be5385fb76b6",
                "e75449212beef9f4a390bd860a640941",
            ),
        ]);
    }

    #[test]
    fn matches_the_twofish_crate() {
        agrees_with::<Twofish, twofish::Twofish>(&[16, 24, 32], 100, 40);
    }
}
