//! The hash algorithms a LUKS header may name (`hash-spec`, and the ESSIV
//! hash in `cipher-mode`), and PBKDF2-HMAC over them.

use crate::error::{CryptError, Result};
use md5::Md5;
use ripemd::Ripemd160;
use sha1::Sha1;
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use sm3::Sm3;
use std::time::Instant;
use zeroize::Zeroizing;

/// A hash algorithm, named as QEMU and cryptsetup name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    /// MD5.
    Md5,
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
    /// RIPEMD-160.
    Ripemd160,
    /// SM3 (GB/T 32905-2016).
    Sm3,
}

impl HashAlg {
    /// The algorithm named `name` (`sha256`...).
    pub fn parse(name: &str) -> Result<HashAlg> {
        Ok(match name {
            "md5" => HashAlg::Md5,
            "sha1" => HashAlg::Sha1,
            "sha224" => HashAlg::Sha224,
            "sha256" => HashAlg::Sha256,
            "sha384" => HashAlg::Sha384,
            "sha512" => HashAlg::Sha512,
            "ripemd160" => HashAlg::Ripemd160,
            "sm3" => HashAlg::Sm3,
            _ => return Err(CryptError::Hash(name.into())),
        })
    }

    /// The name a header records.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Md5 => "md5",
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha224 => "sha224",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
            HashAlg::Ripemd160 => "ripemd160",
            HashAlg::Sm3 => "sm3",
        }
    }

    /// Bytes of a digest.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Md5 => 16,
            HashAlg::Sha1 | HashAlg::Ripemd160 => 20,
            HashAlg::Sha224 => 28,
            HashAlg::Sha256 | HashAlg::Sm3 => 32,
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
            HashAlg::Md5 => run::<Md5>(parts),
            HashAlg::Sha1 => run::<Sha1>(parts),
            HashAlg::Sha224 => run::<Sha224>(parts),
            HashAlg::Sha256 => run::<Sha256>(parts),
            HashAlg::Sha384 => run::<Sha384>(parts),
            HashAlg::Sha512 => run::<Sha512>(parts),
            HashAlg::Ripemd160 => run::<Ripemd160>(parts),
            HashAlg::Sm3 => run::<Sm3>(parts),
        }
    }

    /// PBKDF2-HMAC with this hash (RFC 8018 section 5.2): fills `out` from
    /// `password`, `salt` and `iterations`.
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        use pbkdf2::pbkdf2_hmac;
        match self {
            HashAlg::Md5 => pbkdf2_hmac::<Md5>(password, salt, iterations, out),
            HashAlg::Sha1 => pbkdf2_hmac::<Sha1>(password, salt, iterations, out),
            HashAlg::Sha224 => pbkdf2_hmac::<Sha224>(password, salt, iterations, out),
            HashAlg::Sha256 => pbkdf2_hmac::<Sha256>(password, salt, iterations, out),
            HashAlg::Sha384 => pbkdf2_hmac::<Sha384>(password, salt, iterations, out),
            HashAlg::Sha512 => pbkdf2_hmac::<Sha512>(password, salt, iterations, out),
            HashAlg::Ripemd160 => pbkdf2_hmac::<Ripemd160>(password, salt, iterations, out),
            HashAlg::Sm3 => pbkdf2_hmac::<Sm3>(password, salt, iterations, out),
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
pub(crate) mod tests {
    use super::HashAlg;

    /// The bytes a hex string spells.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn pbkdf2_matches_rfc6070() {
        // RFC 6070 test vector 2: "password" / "salt", 2 iterations.
        let mut out = [0u8; 20];
        HashAlg::Sha1.pbkdf2(b"password", b"salt", 2, &mut out);
        assert_eq!(
            out.to_vec(),
            hex("ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957")
        );
    }

    /// Master key digests of luks images qemu-img 10.0.2 made: `hash-alg`,
    /// the master key, the header's salt, iterations and digest.
    const QEMU_DIGESTS: [(&str, &str, &str, u32, &str); 13] = [
        ("md5", "31669ae3f38f2d40464f5b6ff2c875cc5a2f90455383720675121a25d66947e8", "6ca0c795e9914a18c7038275890220b60bf34e6d40a93f5a6d73e2e3e3fe8e96", 1465, "6c03f444ab7284d125605c7c55e9ee31d1eb7a6d"),
        ("md5", "bee71c95935d5edea319067832ba1ee47265cc90085618cdd851068959d4dfa3", "9797f9210e9acafc286905019491f1d2e7e2c0473525849ba1bb37c6170febfe", 1669, "d24ce0cb78d0145dde6d6facdc1cf27c130d5871"),
        ("md5", "ce547b8f3aeed11c85aa87b9fcac6ac40a97988a8ac0f66b7b54aaee3ead362a", "061de504cb2f268678fc95584eb90ecf86c3e4cf8bf55974bd8b8277379a83aa", 1667, "f37f11d63879660b3ec416bff781065f74ccb56a"),
        ("sha1", "7a0c7364f1787e4e829542f61a9f0b76", "70a09eaeb10f88ab473fc0332caae93b4cb7048c32388cce97b822f4df804887", 6781, "c47a1e51d21eb0ab9da4b97b3c53ee6e2d2c5f94"),
        ("sha1", "80fd211000dd7b4bb6f2ac0bebcf0ae15fc602b7ce29e156eb9537f2b5f95676", "96e708496bd7c6439c4958e2917a949ddba3e8835b226ec1a3c72371721cd3f7", 6282, "fc20386867c73ca7bd70e66f88a275ddbfbeb6a9"),
        ("sha224", "69e7569485b5a352089546b52a1680a0f96e4cec5fb228cf500e819777c8950bd1d37c5925cd14a71a32cb7e4f014d71", "afd0d005c0b8f28b64ee02ca40d482e9e5c2e8f37cbf6637e67c58eb259990a1", 5432, "4a3d9db0dbb138461e368f91690ad48f044ab20a"),
        ("sha256", "d53842336efefcade33c3767b4c11468", "d90e3482dac51cfae73971ff0a25b02aa3e2f62e1569e36098f6434dc12e919a", 5001, "feafab754172c8fc22f1cd63d114034e78856bbd"),
        ("sha384", "b97a66ba34b9064bb314854d4e1b44254d5efec852089eb873387561bf7f878030fd9a1943a6d515f34d0fa1585e9ec0", "a4d069b797c3406c5002f076d69d421caccad4ead3d6658469938581fc331240", 1033, "86b3bdd6227379cc854a27e8dfeff1ac3f212fe6"),
        ("sha512", "dd85616c3d8a1636238dd5f10b85e7d5", "42e41808ec65a8c39e4e57a4ab95dbc8f09da475f01710b02f12868fd9e66fa8", 1244, "fdc83e672b6986c540e775944858f6efe6966a55"),
        ("ripemd160", "645629830ec5efe6c00cc690bdc314550e51e7fdcd913eb59731e0f161aff066", "402aa58f0aae4254a1d7b5cb031c4c78e3b6fbbdcc45fabe6fc2fdaffbb5b22c", 1452, "be535f57e0224d470370fe333a9ad5de6c3067a3"),
        ("ripemd160", "25492240faa79226f9a468cb59cd5b31", "0889c177d7e4c0b1447c35337c4746a9836684c7bac17b74417a245721cd5fbb", 1492, "8bd0de65c5aaea6d076abc48f41fbebfabb950b9"),
        ("sm3", "c5e6d8043cf8ec2a77f89c527769ff756b04e3fceaaeffca45c8f48d80c8a463", "88ba27b83c57f0676209831a2bbda90f22760fcda2085a2de8cc3becd3219b9f", 1115, "be485a1a6e32dba5d0fe5a2e69f8ac917f9f8e0c"),
        ("sm3", "6e822bd072e4fc06dec30c28cbfc7712", "b6766e0c1e7ce2a5a8a1033003cd5acfa8431484af9b720d8a215f36ff9475a8", 1040, "975969978de9de1c099fd55bc1fc6b07a57649c4"),
    ];

    #[test]
    fn pbkdf2_matches_qemu() {
        for (name, key, salt, iterations, digest) in QEMU_DIGESTS {
            let hash = HashAlg::parse(name).unwrap();
            assert_eq!(hash.name(), name);
            let mut out = [0u8; 20];
            hash.pbkdf2(&hex(key), &hex(salt), iterations, &mut out);
            assert_eq!(out.to_vec(), hex(digest), "{name}");
        }
    }

    #[test]
    fn digests_match_their_specifications() {
        // The "abc" examples of RFC 1321, the RIPEMD-160 paper and
        // GB/T 32905-2016.
        let abc = [
            (HashAlg::Md5, "900150983cd24fb0d6963f7d28e17f72"),
            (
                HashAlg::Ripemd160,
                "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc",
            ),
            (
                HashAlg::Sm3,
                "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0",
            ),
        ];
        for (hash, digest) in abc {
            assert_eq!(*hash.digest(&[b"a", b"bc"]), hex(digest));
        }
    }

    #[test]
    fn names_round_trip() {
        for h in [
            HashAlg::Md5,
            HashAlg::Sha1,
            HashAlg::Sha224,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512,
            HashAlg::Ripemd160,
            HashAlg::Sm3,
        ] {
            assert_eq!(HashAlg::parse(h.name()), Ok(h));
            assert_eq!(h.digest(&[b"x"]).len(), h.digest_len());
        }
        assert!(HashAlg::parse("md4").is_err());
    }
}
