//! LUKS1 (the on-disk format of cryptsetup's `docs/on-disk-format.pdf`,
//! version 1.2.1, as QEMU implements it) and the sector encryption it
//! describes, for qimg's standalone luks driver and qcow2's LUKS encryption.
//!
//! The primitives come from RustCrypto crates (`aes`, `cast5`, `xts-mode`,
//! `cbc`, `ctr`, `pbkdf2`, `hmac`, `md-5`, `sha1`, `sha2`, `ripemd`, `sm3`),
//! except Serpent and Twofish, which this crate implements itself (behind
//! the same `cipher` traits) because the RustCrypto crates are some twenty
//! times slower than QEMU's nettle; otherwise this crate only arranges the
//! primitives as LUKS says. Key material lives in [`zeroize::Zeroizing`] buffers and key
//! schedules zero themselves on drop.
//!
//! - [`header`]: the 592-byte big-endian header and its 8 key slots.
//! - [`hash`]: the hash algorithms a header may name, PBKDF2 over them.
//! - [`af`]: the anti-forensic splitter that spreads a key over stripes.
//! - [`cipher`]: cipher, chaining mode and IV generator of the payload.
//! - [`keyslot`]: unlocking a key slot with a passphrase, and filling one.
//! - [`volume`]: a whole LUKS volume: create, unlock.
//! - [`options`]: QEMU's options for a new volume.
//! - [`amend`]: adding and erasing key slots, as `amend` asks.
//! - [`random`]: salts, keys and UUIDs from the operating system's CSPRNG.
//! - [`serpent`], [`twofish`]: those block ciphers, table- and
//!   bitslice-optimised.
//!
//! [`header::LuksHeader::info`] describes a header as qemu-img's `info`
//! does (the luks `format-specific` data, and qcow2's `encrypt` object).

pub mod af;
pub mod amend;
pub mod cipher;
pub mod error;
mod fast_xts;
pub mod hash;
pub mod header;
pub mod keyslot;
mod le_words;
pub mod options;
pub mod random;
#[cfg(test)]
mod reference;
pub mod serpent;
pub mod twofish;
pub mod volume;

pub use cipher::{CipherAlg, CipherMode, CipherSpec, IvGenAlg, SectorCipher};
pub use error::CryptError;
pub use hash::HashAlg;
pub use header::{KeySlot, LuksHeader};
pub use options::LuksOptions;
pub use volume::{CreateParams, Created, Unlocked};

/// LUKS1's sector: key material and payload are encrypted in units of 512
/// bytes, each with its own IV.
pub const SECTOR_SIZE: u64 = 512;
