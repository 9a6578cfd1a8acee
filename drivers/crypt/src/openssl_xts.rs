//! AES-XTS through OpenSSL, for the payloads nearly every LUKS image has
//! (aes-xts-plain64 with 128- or 256-bit AES).
//!
//! The `xts-mode` crate encrypts one 16-byte block at a time, so AES-NI
//! waits on each block's result; OpenSSL's XTS pipelines several blocks and
//! runs about five times faster per core, which decides the speed of an
//! encrypted convert. Everything else (AES-192, other ciphers, keys OpenSSL
//! refuses) stays on the RustCrypto modes in [`crate::cipher`].

use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::CipherCtx;
use openssl::error::ErrorStack;
use std::sync::Mutex;
use zeroize::Zeroizing;

/// Which way a context turns.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    Encrypt,
    Decrypt,
}

/// A keyed AES-XTS. OpenSSL contexts are not shareable, so each call takes
/// an idle one (keying a new one when none is idle) and gives it back; the
/// pool grows to the number of threads that use the cipher at once.
pub(crate) struct OpensslXts {
    cipher: &'static CipherRef,
    key: Zeroizing<Vec<u8>>,
    /// Idle contexts, keyed for encryption ([0]) and decryption ([1]).
    idle: [Mutex<Vec<CipherCtx>>; 2],
}

impl OpensslXts {
    /// AES-XTS with `key` (both halves), or `None` where OpenSSL cannot do
    /// it: no XTS for this key length (AES-192), or a key it refuses (OpenSSL
    /// rejects equal halves when encrypting, which LUKS allows).
    pub(crate) fn new(key: &[u8]) -> Option<OpensslXts> {
        let cipher = match key.len() {
            32 => Cipher::aes_128_xts(),
            64 => Cipher::aes_256_xts(),
            _ => return None,
        };
        let xts = OpensslXts {
            cipher,
            key: Zeroizing::new(key.to_vec()),
            idle: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
        };
        for dir in [Direction::Encrypt, Direction::Decrypt] {
            let ctx = xts.keyed(dir).ok()?;
            xts.put_back(dir, ctx);
        }
        Some(xts)
    }

    /// A context keyed for `dir`, without an IV yet.
    fn keyed(&self, dir: Direction) -> Result<CipherCtx, ErrorStack> {
        let mut ctx = CipherCtx::new()?;
        match dir {
            Direction::Encrypt => ctx.encrypt_init(Some(self.cipher), Some(&self.key), None)?,
            Direction::Decrypt => ctx.decrypt_init(Some(self.cipher), Some(&self.key), None)?,
        }
        Ok(ctx)
    }

    fn take(&self, dir: Direction) -> Result<CipherCtx, ErrorStack> {
        let idle = self.idle[dir as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        match idle {
            Some(ctx) => Ok(ctx),
            None => self.keyed(dir),
        }
    }

    fn put_back(&self, dir: Direction, ctx: CipherCtx) {
        self.idle[dir as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ctx);
    }

    /// Turns each of `sectors` (a data unit each, a whole number of 16-byte
    /// blocks) in place, with the tweak `iv` gives for its index.
    pub(crate) fn apply<'a>(
        &self,
        dir: Direction,
        sectors: impl Iterator<Item = &'a mut [u8]>,
        iv: impl Fn(usize) -> [u8; 16],
    ) -> Result<(), ErrorStack> {
        let mut ctx = self.take(dir)?;
        for (i, sector) in sectors.enumerate() {
            let tweak = iv(i);
            match dir {
                Direction::Encrypt => ctx.encrypt_init(None, None, Some(&tweak))?,
                Direction::Decrypt => ctx.decrypt_init(None, None, Some(&tweak))?,
            }
            let len = sector.len();
            ctx.cipher_update_inplace(sector, len)?;
        }
        self.put_back(dir, ctx);
        Ok(())
    }
}
