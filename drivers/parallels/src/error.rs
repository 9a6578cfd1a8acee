//! The driver's errors, worded as qemu-img words them, and their conversion
//! into the ABI's [`DriverError`].

use qimg_driver_api::{DriverError, ErrorKind};

/// EINVAL.
const EINVAL: i32 = 22;
/// EFBIG.
const EFBIG: i32 = 27;
/// EIO.
const EIO: i32 = 5;

/// Everything that can go wrong in the parallels driver.
#[derive(Debug, thiserror::Error)]
pub enum ParallelsError {
    /// Neither magic, or a version other than 2.
    #[error("Image not in Parallels format")]
    NotParallels,
    /// `tracks` (sectors per cluster) is 0.
    #[error("Invalid image: Zero sectors per track")]
    ZeroTracks,
    /// `tracks` is larger than qemu-img accepts.
    #[error("Invalid image: Too big cluster")]
    TooBigCluster,
    /// More BAT entries than qemu-img accepts.
    #[error("Catalog too large")]
    CatalogTooLarge,
    /// A guest size larger than a block device may be (qemu's
    /// `BDRV_MAX_LENGTH`).
    #[error("Could not refresh total sector count: File too large")]
    TooLargeSize,
    /// The format extension cluster does not parse; the text is qemu-img's.
    #[error("{0}")]
    Extension(String),
    /// A header and BAT larger than one read may be (qemu-img's request
    /// limit), named by the image's file.
    #[error("Could not open '{0}': Input/output error")]
    HeaderTooLarge(String),
    /// An image that needed repair at open and could not be repaired.
    #[error("Could not repair corrupted image: {0}")]
    RepairFailed(String),
    /// A guest cluster the BAT has no entry for (a header whose size
    /// exceeds what its BAT maps).
    #[error("Input/output error")]
    Unmapped,
    /// A request outside the image.
    #[error("Request out of range: offset {0} length {1} beyond image size {2}")]
    OutOfRange(u64, u64, u64),
    /// A creation option qemu-img refuses, in its words.
    #[error("{0}")]
    InvalidOption(String),
    /// A size the format cannot hold with this cluster size.
    #[error("{0}")]
    TooLarge(String),
    /// A shrink below what the image holds.
    #[error("{0}")]
    Unsupported(String),
    /// An error from the host or the store, passed through.
    #[error("{}", .0.message)]
    Host(DriverError),
}

impl From<DriverError> for ParallelsError {
    fn from(e: DriverError) -> Self {
        ParallelsError::Host(e)
    }
}

impl From<ParallelsError> for DriverError {
    fn from(e: ParallelsError) -> Self {
        let message = e.to_string();
        match e {
            ParallelsError::Host(inner) => inner,
            ParallelsError::TooBigCluster
            | ParallelsError::CatalogTooLarge
            | ParallelsError::TooLargeSize => DriverError {
                errno: EFBIG,
                ..DriverError::invalid_image(message)
            },
            ParallelsError::Unmapped | ParallelsError::HeaderTooLarge(_) => DriverError {
                errno: EIO,
                ..DriverError::new(ErrorKind::IO, message)
            },
            ParallelsError::OutOfRange(..)
            | ParallelsError::InvalidOption(_)
            | ParallelsError::TooLarge(_) => DriverError::invalid_argument(message),
            ParallelsError::Unsupported(_) => DriverError::unsupported(message),
            ParallelsError::RepairFailed(_) => DriverError::corrupt(message),
            _ => DriverError {
                errno: EINVAL,
                ..DriverError::invalid_image(message)
            },
        }
    }
}

/// Results of this driver's internal functions.
pub type Result<T> = std::result::Result<T, ParallelsError>;
