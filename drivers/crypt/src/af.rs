//! The anti-forensic information splitter (LUKS1 on-disk format, section
//! 2.4, "AF-Splitter"): a key of n bytes is stored as `stripes` blocks of n
//! bytes, all but the last random, so that destroying any one block of the
//! stored material destroys the key.

use crate::error::Result;
use crate::hash::HashAlg;
use crate::random;
use zeroize::Zeroizing;

/// The diffusion function H of the spec: the block is cut into digest-sized
/// pieces, piece i replaced by hash(be32(i) || piece), the last piece's hash
/// truncated to the piece.
fn diffuse(hash: HashAlg, block: &mut [u8]) {
    let digest_len = hash.digest_len();
    for (i, piece) in block.chunks_mut(digest_len).enumerate() {
        let d = hash.digest(&[&(i as u32).to_be_bytes(), piece]);
        let n = piece.len();
        piece.copy_from_slice(&d[..n]);
    }
}

/// Recovers the key from `split` (`stripes` blocks of `key.len()` bytes):
/// d = 0; d = H(d xor s_i) for every block but the last; key = d xor s_last.
pub fn merge(hash: HashAlg, split: &[u8], key: &mut [u8]) {
    let n = key.len();
    let mut d = Zeroizing::new(vec![0u8; n]);
    let stripes = split.len() / n;
    for (i, stripe) in split.chunks_exact(n).take(stripes).enumerate() {
        for (a, b) in d.iter_mut().zip(stripe) {
            *a ^= b;
        }
        if i + 1 < stripes {
            diffuse(hash, &mut d);
        }
    }
    key.copy_from_slice(&d);
}

/// Spreads `key` over `stripes` blocks: all but the last random, the last
/// chosen so that [`merge`] gives `key` back.
pub fn split(hash: HashAlg, key: &[u8], stripes: usize) -> Result<Zeroizing<Vec<u8>>> {
    let n = key.len();
    let mut out = Zeroizing::new(vec![0u8; n * stripes]);
    let mut d = Zeroizing::new(vec![0u8; n]);
    random::fill(&mut out[..n * (stripes - 1)])?;
    for stripe in out[..n * (stripes - 1)].chunks_exact(n) {
        for (a, b) in d.iter_mut().zip(stripe) {
            *a ^= b;
        }
        diffuse(hash, &mut d);
    }
    let last = &mut out[n * (stripes - 1)..];
    for ((o, a), k) in last.iter_mut().zip(d.iter()).zip(key) {
        *o = a ^ k;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_merge_gives_the_key() {
        for hash in [
            HashAlg::Md5,
            HashAlg::Sha1,
            HashAlg::Sha512,
            HashAlg::Ripemd160,
            HashAlg::Sm3,
        ] {
            let key: Vec<u8> = (0..64u8).collect();
            let s = split(hash, &key, 4000).unwrap();
            let mut back = vec![0u8; 64];
            merge(hash, &s, &mut back);
            assert_eq!(back, key);
        }
    }
}
