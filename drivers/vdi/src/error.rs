//! The driver's errors, worded as qemu-img words them, and their conversion
//! into the ABI's [`DriverError`].

use qimg_driver_api::{DriverError, ErrorKind};

/// EIO.
const EIO: i32 = 5;
/// EPERM.
const EPERM: i32 = 1;

/// Everything that can go wrong in the vdi driver.
#[derive(Debug, thiserror::Error)]
pub enum VdiError {
    /// The signature at 0x40 is not VDI's.
    #[error("Image not in VDI format (bad signature {0:08x})")]
    BadSignature(u32),
    /// A header version other than 1.1.
    #[error("unsupported VDI image (version {0}.{1})")]
    Version(u16, u16),
    /// The block map does not start on a sector boundary.
    #[error("unsupported VDI image (unaligned block map offset 0x{0:x})")]
    UnalignedMap(u32),
    /// The data area does not start on a sector boundary.
    #[error("unsupported VDI image (unaligned data offset 0x{0:x})")]
    UnalignedData(u32),
    /// A sector size other than 512.
    #[error("unsupported VDI image (sector size {0} is not 512)")]
    SectorSize(u32),
    /// A block size other than 1 MiB.
    #[error("unsupported VDI image (block size {0} is not 1048576)")]
    BlockSize(u32),
    /// More blocks than a block map can address.
    #[error("unsupported VDI image (too many blocks {0}, max is {1})")]
    TooManyBlocks(u32, u32),
    /// A disk larger than its block map covers.
    #[error("unsupported VDI image (disk size {0}, image bitmap has room for {1})")]
    DiskTooLarge(u64, u64),
    /// A differencing image's link to another image.
    #[error("unsupported VDI image (non-NULL link UUID)")]
    LinkUuid,
    /// A differencing image's parent.
    #[error("unsupported VDI image (non-NULL parent UUID)")]
    ParentUuid,
    /// The image named as a differencing image's parent is not its parent.
    #[error("'{0}' is not the parent of this differencing VDI (its image UUID differs)")]
    ParentMismatch(String),
    /// An image whose tables could not be written without harm, opened for
    /// writing.
    #[error("cannot write to this VDI image: {0}")]
    Unwritable(&'static str),
    /// A write needing a new block when the block map has none left.
    #[error("VDI image has no free block left (block map full)")]
    Full,
    /// A resize that would shrink the image (qemu-img resizes no vdi).
    #[error("Image format driver does not support resize")]
    CannotShrink,
    /// A growth past what the block map's space can describe.
    #[error(
        "Cannot grow this VDI image beyond {0} bytes: its block map has no room for more blocks"
    )]
    MapFull(u64),
    /// A write to an image opened read-only.
    #[error("Operation not permitted")]
    ReadOnly,
    /// A request outside the image.
    #[error("Request out of range: offset {0} length {1} beyond image size {2}")]
    OutOfRange(u64, u64, u64),
    /// A size too large for the format, at creation.
    #[error("Unsupported VDI image size (size is 0x{0:x}, max supported is 0x{1:x})")]
    SizeTooLarge(u64, u64),
    /// A creation option value refused.
    #[error("{0}")]
    InvalidOption(String),
    /// A creation option the file protocol refuses.
    #[error("{0}")]
    UnsupportedOption(String),
    /// An error from the host or the store, passed through.
    #[error("{}", .0.message)]
    Host(DriverError),
}

impl From<DriverError> for VdiError {
    fn from(e: DriverError) -> Self {
        VdiError::Host(e)
    }
}

impl From<VdiError> for DriverError {
    fn from(e: VdiError) -> Self {
        let message = e.to_string();
        match e {
            VdiError::Host(inner) => inner,
            VdiError::BadSignature(_) => DriverError::invalid_image(message),
            VdiError::Version(..)
            | VdiError::UnalignedMap(_)
            | VdiError::UnalignedData(_)
            | VdiError::SectorSize(_)
            | VdiError::BlockSize(_)
            | VdiError::TooManyBlocks(..)
            | VdiError::DiskTooLarge(..)
            | VdiError::LinkUuid
            | VdiError::ParentUuid
            | VdiError::ParentMismatch(_)
            | VdiError::CannotShrink
            | VdiError::MapFull(_)
            | VdiError::UnsupportedOption(_) => DriverError::unsupported(message),
            VdiError::Unwritable(_) => DriverError::corrupt(message),
            VdiError::Full => DriverError {
                errno: EIO,
                ..DriverError::new(ErrorKind::IO, message)
            },
            VdiError::ReadOnly => DriverError::from_errno(EPERM, message),
            VdiError::OutOfRange(..) | VdiError::SizeTooLarge(..) | VdiError::InvalidOption(_) => {
                DriverError::invalid_argument(message)
            }
        }
    }
}

/// Results of this driver's internal functions.
pub type Result<T> = std::result::Result<T, VdiError>;
