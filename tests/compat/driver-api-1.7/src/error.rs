//! The one error type that crosses the boundary.

use abi_stable::{std_types::RString, StableAbi};
use std::fmt;

/// What went wrong, coarsely; the host maps kinds to qemu-img's messages and exit
/// codes. A transparent integer rather than an enum so later kinds can be added
/// without breaking the ABI; unknown kinds are treated as [`ErrorKind::OTHER`].
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct ErrorKind(pub u32);

impl ErrorKind {
    /// Not an image of this format, or a malformed header.
    pub const INVALID_IMAGE: Self = Self(1);
    /// The format or this image variant does not support the operation.
    pub const UNSUPPORTED: Self = Self(2);
    /// An I/O error; `errno` holds the OS error number.
    pub const IO: Self = Self(3);
    /// Permission denied.
    pub const PERMISSION: Self = Self(4);
    /// No space left on the device.
    pub const NO_SPACE: Self = Self(5);
    /// A bad option value or argument.
    pub const INVALID_ARGUMENT: Self = Self(6);
    /// The image's metadata is inconsistent.
    pub const CORRUPT: Self = Self(7);
    /// Another process holds a conflicting image lock.
    pub const LOCKED: Self = Self(8);
    /// A file does not exist.
    pub const NOT_FOUND: Self = Self(9);
    /// A driver panicked; the message carries the panic text.
    pub const PANIC: Self = Self(10);
    /// Anything else.
    pub const OTHER: Self = Self(11);
}

/// An error returned by a driver or by a host callback.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct DriverError {
    /// Coarse classification.
    pub kind: ErrorKind,
    /// OS error number where one applies (0 otherwise).
    pub errno: i32,
    /// Human-readable text, in qemu-img's wording where qemu-img has one
    /// (without the `qemu-img: Could not open 'FILE': ` prefix, which the host adds).
    pub message: RString,
}

impl DriverError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        DriverError {
            kind,
            errno: 0,
            message: RString::from(message.into()),
        }
    }
    /// [`ErrorKind::INVALID_IMAGE`].
    pub fn invalid_image(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INVALID_IMAGE, message)
    }
    /// [`ErrorKind::UNSUPPORTED`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UNSUPPORTED, message)
    }
    /// [`ErrorKind::INVALID_ARGUMENT`].
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INVALID_ARGUMENT, message)
    }
    /// [`ErrorKind::CORRUPT`].
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::CORRUPT, message)
    }
    /// An error from an OS error number, worded as `strerror` words it.
    pub fn from_errno(errno: i32, message: impl Into<String>) -> Self {
        let kind = match errno {
            2 => ErrorKind::NOT_FOUND,
            1 | 13 | 30 => ErrorKind::PERMISSION,
            28 => ErrorKind::NO_SPACE,
            11 => ErrorKind::LOCKED,
            _ => ErrorKind::IO,
        };
        DriverError {
            kind,
            errno,
            message: RString::from(message.into()),
        }
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DriverError {}

impl From<std::io::Error> for DriverError {
    fn from(e: std::io::Error) -> Self {
        let errno = e.raw_os_error().unwrap_or(5);
        DriverError::from_errno(errno, io_message(&e))
    }
}

/// The text of an I/O error without Rust's ` (os error N)` suffix, as C's
/// `strerror` prints it.
pub fn io_message(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}
