//! The driver's errors and how they reach the host.

use qimg_driver_api::DriverError;

/// What can go wrong in the qed driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed header (qemu-img's message).
    #[error("{0}")]
    Invalid(String),
    /// A feature or request the format or driver does not support.
    #[error("{0}")]
    Unsupported(String),
    /// A bad option value (qemu-img's message).
    #[error("{0}")]
    Argument(String),
    /// A table entry points outside the file or is misaligned: QEMU fails
    /// such requests with EINVAL.
    #[error("Invalid argument")]
    BadOffset,
    /// The image was opened read-only.
    #[error("Permission denied")]
    ReadOnly,
    /// An error of the store or of the host.
    #[error("{0}")]
    Host(#[from] DriverError),
}

/// The driver's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for DriverError {
    fn from(e: Error) -> DriverError {
        let message = e.to_string();
        match e {
            Error::Invalid(_) => DriverError::invalid_image(message),
            Error::Unsupported(_) => DriverError::unsupported(message),
            Error::Argument(_) => DriverError::invalid_argument(message),
            Error::BadOffset => DriverError::from_errno(22, message),
            Error::ReadOnly => DriverError::from_errno(1, "Operation not permitted"),
            Error::Host(e) => e,
        }
    }
}
