//! The hash algorithms a LUKS header may name (`hash-spec`, and the ESSIV
//! hash in `cipher-mode`), and PBKDF2-HMAC over them.

use crate::error::{CryptError, Result};
use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use std::time::Instant;
use zeroize::Zeroizing;

/// A hash algorithm, named as QEMU and cryptsetup name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    /// SHA-1 (cryptsetup's old default).
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256 (QEMU's default).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// The algorithm named `name` (`sha256`...).
    pub fn parse(name: &str) -> Result<HashAlg> {
        Ok(match name {
            "sha1" => HashAlg::Sha1,
            "sha224" => HashAlg::Sha224,
            "sha256" => HashAlg::Sha256,
            "sha384" => HashAlg::Sha384,
            "sha512" => HashAlg::Sha512,
            // Known to QEMU, not implemented here.
            "md5" | "ripemd160" | "sm3" => {
                return Err(CryptError::NotImplemented(format!(
                    "Hash algorithm '{name}'"
                )))
            }
            _ => return Err(CryptError::Hash(name.into())),
        })
    }

    /// The name a header records.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha224 => "sha224",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// Bytes of a digest.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha224 => 28,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The digest of the concatenation of `parts`. Zeroed on drop, since it
    /// is often key material (AF diffusion, the ESSIV salt).
    pub fn digest(self, parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            Zeroizing::new(d.finalize().to_vec())
        }
        match self {
            HashAlg::Sha1 => run::<Sha1>(parts),
            HashAlg::Sha224 => run::<Sha224>(parts),
            HashAlg::Sha256 => run::<Sha256>(parts),
            HashAlg::Sha384 => run::<Sha384>(parts),
            HashAlg::Sha512 => run::<Sha512>(parts),
        }
    }

    /// PBKDF2-HMAC with this hash (RFC 8018 section 5.2): fills `out` from
    /// `password`, `salt` and `iterations`.
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        use pbkdf2::pbkdf2_hmac;
        match self {
            HashAlg::Sha1 => pbkdf2_hmac::<Sha1>(password, salt, iterations, out),
            HashAlg::Sha224 => pbkdf2_hmac::<Sha224>(password, salt, iterations, out),
            HashAlg::Sha256 => pbkdf2_hmac::<Sha256>(password, salt, iterations, out),
            HashAlg::Sha384 => pbkdf2_hmac::<Sha384>(password, salt, iterations, out),
            HashAlg::Sha512 => pbkdf2_hmac::<Sha512>(password, salt, iterations, out),
        }
    }

    /// PBKDF2 iterations this machine runs per second for an `out_len`-byte
    /// key, measured as QEMU measures it (`qcrypto_pbkdf2_count_iters`):
    /// raise the count until one run takes a measurable while, then scale.
    pub fn pbkdf2_rate(self, password: &[u8], salt: &[u8], out_len: usize) -> u64 {
        /// A run at least this long is long enough to scale from.
        const MIN_MS: u128 = 100;
        let mut out = Zeroizing::new(vec![0u8; out_len]);
        let mut iterations: u32 = 1 << 12;
        loop {
            let start = Instant::now();
            self.pbkdf2(password, salt, iterations, &mut out);
            let ms = start.elapsed().as_millis();
            if ms >= MIN_MS || iterations >= 1 << 30 {
                return (u128::from(iterations) * 1000 / ms.max(1)) as u64;
            }
            iterations = iterations.saturating_mul(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HashAlg;

    #[test]
    fn pbkdf2_matches_rfc6070() {
        // RFC 6070 test vector 2: "password" / "salt", 2 iterations.
        let mut out = [0u8; 20];
        HashAlg::Sha1.pbkdf2(b"password", b"salt", 2, &mut out);
        assert_eq!(
            out,
            [
                0xea, 0x6c, 0x01, 0x4d, 0xc7, 0x2d, 0x6f, 0x8c, 0xcd, 0x1e, 0xd9, 0x2a, 0xce, 0x1d,
                0x41, 0xf0, 0xd8, 0xde, 0x89, 0x57
            ]
        );
    }

    #[test]
    fn names_round_trip() {
        for h in [
            HashAlg::Sha1,
            HashAlg::Sha224,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512,
        ] {
            assert_eq!(HashAlg::parse(h.name()), Ok(h));
            assert_eq!(h.digest(&[b"x"]).len(), h.digest_len());
        }
        assert!(HashAlg::parse("md4").is_err());
    }
}
