//! The driver's error type: every variant carries qemu-img's wording and
//! converts into the ABI's [`DriverError`].

use qimg_driver_api::DriverError;

/// EIO: what a read or write of corrupt metadata fails with.
pub const EIO: i32 = 5;
/// EPERM: writing through a read-only image.
pub const EPERM: i32 = 1;

/// What can go wrong inside the qcow2 driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The header or a structure it points to is malformed (open fails).
    #[error("{0}")]
    Invalid(String),
    /// The image uses something this driver does not support.
    #[error("{0}")]
    Unsupported(String),
    /// Metadata found inconsistent while in use; the I/O fails with EIO.
    #[error("Input/output error")]
    Corrupt,
    /// A bad argument (option value, request range).
    #[error("{0}")]
    Argument(String),
    /// The image is read-only.
    #[error("Operation not permitted")]
    ReadOnly,
    /// An error from a store or from the host, passed through.
    #[error("{}", .0.message)]
    Host(DriverError),
    /// An OS-level failure with its errno and message.
    #[error("{1}")]
    Errno(i32, String),
}

impl Error {
    /// An [`Error::Invalid`] with `text`.
    pub fn invalid(text: impl Into<String>) -> Self {
        Error::Invalid(text.into())
    }
    /// An [`Error::Argument`] with `text`.
    pub fn argument(text: impl Into<String>) -> Self {
        Error::Argument(text.into())
    }
    /// An [`Error::Unsupported`] with `text`.
    pub fn unsupported(text: impl Into<String>) -> Self {
        Error::Unsupported(text.into())
    }
}

impl From<DriverError> for Error {
    fn from(e: DriverError) -> Self {
        Error::Host(e)
    }
}

impl From<Error> for DriverError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(m) => DriverError::invalid_image(m),
            Error::Unsupported(m) => DriverError::unsupported(m),
            Error::Corrupt => DriverError::from_errno(EIO, "Input/output error"),
            Error::Argument(m) => DriverError::invalid_argument(m),
            Error::ReadOnly => DriverError::from_errno(EPERM, "Operation not permitted"),
            Error::Host(e) => e,
            Error::Errno(errno, m) => DriverError::from_errno(errno, m),
        }
    }
}

/// The driver's result type.
pub type Result<T> = std::result::Result<T, Error>;
