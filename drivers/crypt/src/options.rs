//! QEMU's options for a new LUKS volume (`cipher-alg`, `cipher-mode`,
//! `ivgen-alg`, `ivgen-hash-alg`, `hash-alg`, `iter-time`), shared by
//! `create -f luks` and qcow2's `encrypt.*` options.
//!
//! QEMU checks them in two stages, and so does this module: names that are
//! not values of its enumerations are refused before anything else
//! ([`LuksOptions::parse`]); whether an algorithm can actually be used is
//! decided only after the secret was found ([`LuksOptions::params`]).

use crate::cipher::{CipherAlg, CipherMode, CipherSpec, IvGenAlg};
use crate::error::{CryptError, Result};
use crate::hash::HashAlg;
use crate::volume::{CreateParams, DEFAULT_ITER_TIME_MS};

/// QEMU's `QCryptoCipherAlgo` values.
const CIPHER_ALGS: [&str; 13] = [
    "aes-128",
    "aes-192",
    "aes-256",
    "des",
    "3des",
    "cast5-128",
    "serpent-128",
    "serpent-192",
    "serpent-256",
    "twofish-128",
    "twofish-192",
    "twofish-256",
    "sm4",
];
/// QEMU's `QCryptoCipherMode` values.
const CIPHER_MODES: [&str; 4] = ["ecb", "cbc", "xts", "ctr"];
/// QEMU's `QCryptoIVGenAlgo` values.
const IVGEN_ALGS: [&str; 3] = ["plain", "plain64", "essiv"];
/// QEMU's `QCryptoHashAlgo` values.
const HASH_ALGS: [&str; 8] = [
    "md5",
    "sha1",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "ripemd160",
    "sm3",
];

/// The options of a new volume, every name one QEMU knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksOptions {
    cipher_alg: String,
    cipher_mode: String,
    ivgen_alg: String,
    ivgen_hash_alg: Option<String>,
    hash_alg: String,
    iter_time_ms: u64,
}

/// `value` if `allowed` holds it, else QEMU's refusal naming `name`.
fn known(name: &str, value: &str, allowed: &[&str]) -> Result<String> {
    if allowed.contains(&value) {
        Ok(value.into())
    } else {
        Err(CryptError::Option(format!(
            "Parameter '{name}' does not accept value '{value}'"
        )))
    }
}

impl LuksOptions {
    /// Reads the options through `get`, QEMU's defaults filling the gaps
    /// (aes-256, xts, plain64, sha256, 2000 ms). `prefix` is how the caller
    /// names them (`encrypt.` in qcow2); QEMU uses it only in the
    /// `iter-time` message.
    pub fn parse<'a>(get: impl Fn(&str) -> Option<&'a str>, prefix: &str) -> Result<LuksOptions> {
        let name = |key: &str, allowed: &[&str], default: &str| {
            known(key, get(key).unwrap_or(default), allowed)
        };
        let cipher_alg = name("cipher-alg", &CIPHER_ALGS, "aes-256")?;
        let cipher_mode = name("cipher-mode", &CIPHER_MODES, "xts")?;
        let ivgen_alg = name("ivgen-alg", &IVGEN_ALGS, "plain64")?;
        let ivgen_hash_alg = get("ivgen-hash-alg")
            .map(|v| known("ivgen-hash-alg", v, &HASH_ALGS))
            .transpose()?;
        let hash_alg = name("hash-alg", &HASH_ALGS, "sha256")?;
        let iter_time_ms = match get("iter-time") {
            None => DEFAULT_ITER_TIME_MS,
            Some(v) => v.parse().map_err(|_| {
                CryptError::Option(format!("Parameter '{prefix}iter-time' expects a number"))
            })?,
        };
        Ok(LuksOptions {
            cipher_alg,
            cipher_mode,
            ivgen_alg,
            ivgen_hash_alg,
            hash_alg,
            iter_time_ms,
        })
    }

    /// What the new volume is made of, refusing algorithms that cannot be
    /// used together or at all (ESSIV hashes with the cipher's key size,
    /// QEMU's default, sha256, when none is given).
    pub fn params(&self) -> Result<CreateParams> {
        let ivgen = IvGenAlg::parse(&self.ivgen_alg)?;
        let ivgen_hash = match &self.ivgen_hash_alg {
            Some(h) => Some(HashAlg::parse(h)?),
            None if ivgen == IvGenAlg::Essiv => Some(HashAlg::Sha256),
            None => None,
        };
        let spec = CipherSpec {
            alg: CipherAlg::parse(&self.cipher_alg)?,
            mode: CipherMode::parse(&self.cipher_mode)?,
            ivgen,
            ivgen_hash,
        };
        spec.check()?;
        Ok(CreateParams {
            spec,
            hash: HashAlg::parse(&self.hash_alg)?,
            iter_time_ms: self.iter_time_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<LuksOptions> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LuksOptions::parse(|k| map.get(k).map(String::as_str), "encrypt.")
    }

    #[test]
    fn defaults_are_qemus() {
        let p = parse(&[]).unwrap().params().unwrap();
        assert_eq!(p.spec.alg, CipherAlg::Aes256);
        assert_eq!(p.spec.mode, CipherMode::Xts);
        assert_eq!(p.spec.ivgen, IvGenAlg::Plain64);
        assert_eq!(p.spec.ivgen_hash, None);
        assert_eq!(p.hash, HashAlg::Sha256);
        assert_eq!(p.iter_time_ms, DEFAULT_ITER_TIME_MS);
        let essiv = parse(&[("ivgen-alg", "essiv"), ("cipher-mode", "cbc")]).unwrap();
        assert_eq!(
            essiv.params().unwrap().spec.ivgen_hash,
            Some(HashAlg::Sha256)
        );
    }

    #[test]
    fn unknown_names_are_refused_at_parse_unusable_ones_later() {
        let e = parse(&[("cipher-alg", "foo")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Parameter 'cipher-alg' does not accept value 'foo'"
        );
        let e = parse(&[("iter-time", "x")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Parameter 'encrypt.iter-time' expects a number"
        );
        let sm4 = parse(&[("cipher-alg", "sm4")]).unwrap();
        assert!(sm4.params().is_err());
    }
}
