//! The driver's errors, worded as qemu-img words them, and their conversion
//! into the ABI's [`DriverError`].

use qimg_driver_api::{DriverError, ErrorKind};

/// EINVAL, for errors qemu reports only as "Invalid argument".
const EINVAL: i32 = 22;
/// EIO.
const EIO: i32 = 5;
/// EFBIG.
const EFBIG: i32 = 27;

/// Everything that can go wrong in the vmdk driver.
#[derive(Debug, thiserror::Error)]
pub enum VmdkError {
    /// Neither a sparse header nor a descriptor.
    #[error("Image not in VMDK format")]
    NotVmdk,
    /// An empty file (qemu counts files in whole sectors, so only an
    /// empty one is shorter than the 4 bytes of a magic).
    #[error("File is too small, not a valid image")]
    TooSmall,
    /// The descriptor has no (usable) `createType`, or nothing to open.
    #[error("invalid VMDK image descriptor")]
    InvalidDescriptor,
    /// A `CID` or `parentCID` line is missing or does not parse; qemu gives
    /// only the errno text, naming the descriptor file.
    #[error("Could not open '{0}': Invalid argument")]
    BadCid(String),
    /// An extent line whose fields do not fit its type.
    #[error("Invalid extent line: {0}")]
    InvalidExtentLine(String),
    /// A `createType` this driver cannot open from a descriptor file.
    #[error("Unsupported image type '{0}'")]
    UnsupportedType(String),
    /// The extents add up to more than a disk can hold.
    #[error("Could not refresh total sector count: File too large")]
    TotalTooLarge,
    /// A sparse header version this driver does not know.
    #[error("Unsupported VMDK version {0}")]
    UnsupportedVersion(u32),
    /// A version 3 extent (changed block tracking) opened for writing,
    /// unless its grains are compressed: qemu writes only what it can keep
    /// tracked, which is none of it.
    #[error("VMDK version 3 must be read only")]
    Version3Writable,
    /// More grain-table entries per table than the format allows.
    #[error("L2 table size too big")]
    L2TooBig,
    /// A grain directory entry covering no sectors.
    #[error("L1 entry size is invalid")]
    L1EntryInvalid,
    /// A grain directory too large to hold in memory.
    #[error("L1 size too big")]
    L1TooBig,
    /// A grain larger than any real image uses.
    #[error("Invalid granularity, image may be corrupt")]
    BadGranularity,
    /// The file ends before the data area begins.
    #[error("File truncated, expecting at least {0} bytes")]
    Truncated(i64),
    /// A table lies beyond the end of its file.
    #[error("{0} lies beyond the end of the file")]
    PastEof(&'static str),
    /// A resize of an extent that cannot change size.
    #[error("Cannot resize an image with stream-optimized or ESX Server sparse extents")]
    CannotResize,
    /// A shrink that would drop whole extents.
    #[error("Cannot shrink an image below the start of its last extent")]
    CannotShrink,
    /// A write beyond what the grain directory can map.
    #[error("Grain directory too small for the extent's capacity")]
    DirectoryTooSmall,
    /// The footer of a stream-optimized extent is missing or malformed.
    #[error("Invalid footer")]
    InvalidFooter,

    /// A grain past what the grain directory covers: only a header whose
    /// capacity overflows the directory's 32-bit entry count leads here.
    #[error("Input/output error")]
    BeyondDirectory,
    /// A compressed grain does not inflate to a grain (qemu-img's words).
    #[error("Invalid argument")]
    BadCompressedGrain,
    /// A grain table entry of a damaged extent names the extent's own
    /// metadata (header, descriptor, directories, tables): written in
    /// place, the data would destroy it.
    #[error("Invalid argument")]
    GrainOverMetadata,
    /// A write to a grain a stream-optimized extent already holds.
    #[error("Could not write to allocated cluster for streamOptimized")]
    StreamRewrite,
    /// A write to a read-only or no-access extent.
    #[error("Operation not permitted")]
    ReadOnly,
    /// A read of a no-access extent.
    #[error("Permission denied")]
    NoAccess,
    /// A request outside the image.
    #[error("Request out of range: offset {0} length {1} beyond image size {2}")]
    OutOfRange(u64, u64, u64),
    /// A creation option with a value the driver does not accept.
    #[error("{0}")]
    InvalidOption(String),
    /// The image is too large for the format.
    #[error("The image size is too large for file format 'vmdk'")]
    TooLarge,
    /// An error from the host or the store, passed through.
    #[error("{}", .0.message)]
    Host(DriverError),
}

impl From<DriverError> for VmdkError {
    fn from(e: DriverError) -> Self {
        VmdkError::Host(e)
    }
}

impl From<VmdkError> for DriverError {
    fn from(e: VmdkError) -> Self {
        let message = e.to_string();
        match e {
            VmdkError::Host(inner) => inner,
            VmdkError::BadCid(_)
            | VmdkError::L1EntryInvalid
            | VmdkError::L2TooBig
            | VmdkError::Version3Writable => DriverError {
                errno: EINVAL,
                ..DriverError::invalid_image(message)
            },
            VmdkError::L1TooBig | VmdkError::BadGranularity | VmdkError::TotalTooLarge => {
                DriverError {
                    errno: EFBIG,
                    ..DriverError::invalid_image(message)
                }
            }
            VmdkError::TooLarge => DriverError {
                errno: EFBIG,
                ..DriverError::invalid_argument(message)
            },
            VmdkError::UnsupportedType(_)
            | VmdkError::UnsupportedVersion(_)
            | VmdkError::CannotResize
            | VmdkError::CannotShrink => DriverError::unsupported(message),
            VmdkError::BadCompressedGrain | VmdkError::GrainOverMetadata => {
                DriverError::invalid_argument(message)
            }
            VmdkError::StreamRewrite | VmdkError::BeyondDirectory => DriverError {
                errno: EIO,
                ..DriverError::new(ErrorKind::IO, message)
            },
            VmdkError::ReadOnly => DriverError::from_errno(1, message),
            VmdkError::NoAccess => DriverError::from_errno(13, message),
            VmdkError::OutOfRange(..) | VmdkError::InvalidOption(_) => {
                DriverError::invalid_argument(message)
            }
            VmdkError::PastEof(_) | VmdkError::InvalidFooter | VmdkError::DirectoryTooSmall => {
                DriverError::corrupt(message)
            }
            _ => DriverError::invalid_image(message),
        }
    }
}

/// Results of this driver's internal functions.
pub type Result<T> = std::result::Result<T, VmdkError>;
