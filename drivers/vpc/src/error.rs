//! The driver's errors, worded as qemu-img words them, and their conversion
//! into the ABI's [`DriverError`].

use qimg_driver_api::{DriverError, ErrorKind};

/// EIO.
const EIO: i32 = 5;
/// EINVAL.
const EINVAL: i32 = 22;
/// EFBIG.
const EFBIG: i32 = 27;

/// Everything that can go wrong in the vpc driver.
#[derive(Debug, thiserror::Error)]
pub enum VpcError {
    /// An empty file.
    #[error("File too small for a VHD header")]
    TooSmall,
    /// No `conectix` footer at the start or at the end of the file.
    #[error("invalid VPC image")]
    NotVpc,
    /// The footer's checksum does not match its bytes.
    #[error("Incorrect header checksum")]
    FooterChecksum,
    /// The dynamic disk header cannot be read where the footer says.
    #[error("Error reading dynamic VHD header")]
    DynamicHeaderUnreadable,
    /// The dynamic disk header's cookie is not `cxsparse`.
    #[error("Invalid header magic")]
    DynamicHeaderMagic,
    /// A block size that is not a power of two of at least one sector.
    #[error("Invalid block size {0}")]
    BlockSize(u32),
    /// More table entries than QEMU accepts (its BAT must fit an int),
    /// printed as the signed number qemu-img prints.
    #[error("Max Table Entries too large ({0})")]
    TooManyEntries(i32),
    /// A disk of more than 2040 GiB at open, named as qemu-img repeats the
    /// file's name for an error it gives only an errno.
    #[error("Could not open '{0}': File too large")]
    SizeTooLarge(String),
    /// The table does not cover the disk.
    #[error("Page table too small")]
    TableTooSmall,
    /// The table cannot be read in one request.
    #[error("Error reading pagetable")]
    TableUnreadable,
    /// A block of the table lies beyond the end of the file.
    #[error(
        "block-vpc: free_data_block_offset points after the end of file. The image has been truncated."
    )]
    Truncated,
    /// `force_size_calc` names no known mode.
    #[error("Invalid size calculation mode: '{0}'")]
    SizeCalcMode(String),
    /// A write that would land on the image's own metadata (a block entry
    /// pointing into the headers, or a fixed disk's footer).
    #[error("Input/output error")]
    OverMetadata,
    /// A request outside the image.
    #[error("Request out of range: offset {0} length {1} beyond image size {2}")]
    OutOfRange(u64, u64, u64),
    /// A write to an image opened read-only.
    #[error("Operation not permitted")]
    ReadOnly,
    /// A creation option with a value the driver does not accept.
    #[error("{0}")]
    InvalidOption(String),
    /// An operation the format cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The disk is larger than a VHD can describe.
    #[error("The image size is too large for file format 'vpc'")]
    TooLarge,
    /// A differencing disk names no parent file.
    #[error("Differencing VHD names no parent file")]
    NoParentName,
    /// The parent file found is not the disk this one was made from.
    #[error("'{0}' is not the parent of this differencing VHD (its unique id differs)")]
    ParentMismatch(String),
    /// Writes to a differencing disk are not supported yet.
    #[error("Cannot write to a differencing VHD")]
    DifferencingWrite,
    /// An error from the host or the store, passed through.
    #[error("{}", .0.message)]
    Host(DriverError),
}

impl From<DriverError> for VpcError {
    fn from(e: DriverError) -> Self {
        VpcError::Host(e)
    }
}

impl From<VpcError> for DriverError {
    fn from(e: VpcError) -> Self {
        let message = e.to_string();
        match e {
            VpcError::Host(inner) => inner,
            VpcError::TooSmall
            | VpcError::NotVpc
            | VpcError::FooterChecksum
            | VpcError::DynamicHeaderMagic
            | VpcError::BlockSize(_)
            | VpcError::TooManyEntries(_)
            | VpcError::TableTooSmall => DriverError {
                errno: EINVAL,
                ..DriverError::invalid_image(message)
            },
            VpcError::DynamicHeaderUnreadable | VpcError::TableUnreadable => DriverError {
                errno: EIO,
                ..DriverError::invalid_image(message)
            },
            VpcError::Truncated => DriverError {
                errno: EINVAL,
                ..DriverError::corrupt(message)
            },
            VpcError::OverMetadata => DriverError {
                errno: EIO,
                ..DriverError::new(ErrorKind::IO, message)
            },
            VpcError::ReadOnly => DriverError::from_errno(1, message),
            VpcError::SizeCalcMode(_) | VpcError::OutOfRange(..) | VpcError::InvalidOption(_) => {
                DriverError::invalid_argument(message)
            }
            VpcError::Unsupported(_) | VpcError::DifferencingWrite => {
                DriverError::unsupported(message)
            }
            VpcError::NoParentName | VpcError::ParentMismatch(_) => {
                DriverError::invalid_image(message)
            }
            VpcError::TooLarge | VpcError::SizeTooLarge(_) => DriverError {
                errno: EFBIG,
                ..DriverError::invalid_argument(message)
            },
        }
    }
}

/// Results of this driver's internal functions.
pub type Result<T> = std::result::Result<T, VpcError>;
