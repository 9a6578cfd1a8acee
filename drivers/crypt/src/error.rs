//! The errors of this crate.

use thiserror::Error;

/// What can go wrong reading, unlocking or creating a LUKS volume. The
/// messages are QEMU's, since qimg prints them as qemu-img does.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptError {
    /// The bytes are not a LUKS header.
    #[error("Volume is not in LUKS format")]
    NotLuks,
    /// A LUKS header of a version other than 1.
    #[error("LUKS version {0} is not supported")]
    Version(u16),
    /// The header names a cipher, or a key size for it, this crate lacks.
    #[error("Algorithm '{name}' with key size {key_bytes} bytes not supported")]
    CipherAlg {
        /// Cipher name as the header spells it.
        name: String,
        /// Key size in bytes (one XTS half).
        key_bytes: u32,
    },
    /// A cipher given for a new volume that LUKS has no name for (`des`,
    /// `3des`, `sm4`).
    #[error("Algorithm '{0}' not supported")]
    CipherName(String),
    /// The header names a chaining mode QEMU does not know.
    #[error("Cipher mode '{0}' not supported")]
    CipherMode(String),
    /// The header names a hash QEMU does not know.
    #[error("Hash algorithm '{0}' not supported")]
    Hash(String),
    /// The header names an IV generator QEMU does not know.
    #[error("IV generator '{0}' not supported")]
    IvGen(String),
    /// ESSIV needs a key of the payload cipher's family as long as its
    /// hash's digest.
    #[error("{0}")]
    EssivKey(crate::cipher::EssivMismatch),
    /// A header field that cannot hold (too long a name, a key-slot area
    /// outside the file...).
    #[error("{0}")]
    Invalid(String),
    /// An option value QEMU refuses before looking further (an unknown
    /// algorithm name, a number that does not parse).
    #[error("{0}")]
    Option(String),
    /// No active key slot opens with the passphrase.
    #[error("Invalid password, cannot unlock any keyslot")]
    BadPassword,
    /// The operating system's random source failed.
    #[error("Unable to read random bytes: {0}")]
    Random(String),
    /// The caller's I/O callback failed.
    #[error("{0}")]
    Io(String),
}

/// This crate's results.
pub type Result<T> = std::result::Result<T, CryptError>;
