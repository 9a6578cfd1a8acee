//! The driver's errors, worded as qemu-img words them, and their conversion
//! into the ABI's [`DriverError`].

use qimg_driver_api::{DriverError, ErrorKind};

/// EIO.
const EIO: i32 = 5;
/// EINVAL.
const EINVAL: i32 = 22;
/// ENOTSUP.
const ENOTSUP: i32 = 95;

/// Everything that can go wrong in the vhdx driver.
#[derive(Debug, thiserror::Error)]
pub enum VhdxError {
    /// Neither header copy has a valid signature and checksum.
    #[error("No valid VHDX header found")]
    NoValidHeader,
    /// A structure that breaks the specification's rules (qemu-img reports
    /// these as EINVAL, worded by [`VhdxError::in_file`]).
    #[error("Invalid argument")]
    Invalid,
    /// A feature the driver does not read (differencing disks, 4 KiB
    /// logical sectors), as qemu-img words it.
    #[error("Operation not supported")]
    NotSupported,
    /// [`VhdxError::Invalid`] or [`VhdxError::NotSupported`] at open, with
    /// the file's name as qemu-img repeats it.
    #[error("Could not open '{0}': {1}")]
    Open(String, &'static str),
    /// A read-only open of an image whose log needs replaying.
    #[error("VHDX image file '{0}' opened read-only, but contains a log that needs to be replayed\nTo replay the log, run:\nqemu-img check -r all '{0}'")]
    NeedsReplay(String),
    /// A write to an image opened read-only.
    #[error("Operation not permitted")]
    ReadOnly,
    /// A request outside the image.
    #[error("Request out of range: offset {0} length {1} beyond image size {2}")]
    OutOfRange(u64, u64, u64),
    /// A write that would land on the image's own metadata.
    #[error("Input/output error")]
    OverMetadata,
    /// A block in a state this image cannot have: PARTIALLY_PRESENT in a
    /// disk without a parent (qemu-img fails the read the same way).
    #[error("Input/output error")]
    BadBlockState,
    /// A BAT larger than one request of qemu's block layer (an empty disk
    /// with blocks of 256 MiB or more): qemu can neither write nor read it.
    #[error("Failed to write the BAT: Input/output error")]
    BatTooLarge,
    /// A region that ends past 2^63 bytes, where no file can hold it.
    #[error("Input/output error")]
    Unreachable,
    /// A creation option with a value the driver does not accept.
    #[error("{0}")]
    InvalidOption(String),
    /// An operation the driver cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// An error from the host or the store, passed through.
    #[error("{}", .0.message)]
    Host(DriverError),
    /// A differencing disk's locator names no parent file or identity.
    #[error("Differencing VHDX names no parent file")]
    NoParentName,
    /// The parent file found is not the disk this one was made from.
    #[error("'{0}' is not the parent of this differencing VHDX (its DataWriteGuid differs)")]
    ParentMismatch(String),
}

impl VhdxError {
    /// An open-time error named after the file, as qemu-img prints it
    /// ("Could not open 'x.vhdx': Invalid argument").
    pub fn in_file(self, name: &str) -> VhdxError {
        match self {
            VhdxError::Invalid => VhdxError::Open(name.into(), "Invalid argument"),
            VhdxError::NotSupported => VhdxError::Open(name.into(), "Operation not supported"),
            VhdxError::Unreachable => VhdxError::Open(name.into(), "Input/output error"),
            other => other,
        }
    }
}

impl From<DriverError> for VhdxError {
    fn from(e: DriverError) -> Self {
        VhdxError::Host(e)
    }
}

impl From<VhdxError> for DriverError {
    fn from(e: VhdxError) -> Self {
        let message = e.to_string();
        match e {
            VhdxError::Host(inner) => inner,
            VhdxError::NoValidHeader | VhdxError::Invalid | VhdxError::NeedsReplay(_) => {
                DriverError {
                    errno: EINVAL,
                    ..DriverError::invalid_image(message)
                }
            }
            VhdxError::Open(_, why) if why.starts_with("Operation") => DriverError {
                errno: ENOTSUP,
                ..DriverError::unsupported(message)
            },
            VhdxError::Open(_, why) if why.starts_with("Input") => DriverError {
                errno: EIO,
                ..DriverError::new(ErrorKind::IO, message)
            },
            VhdxError::Open(..) => DriverError {
                errno: EINVAL,
                ..DriverError::invalid_image(message)
            },
            VhdxError::NotSupported => DriverError {
                errno: ENOTSUP,
                ..DriverError::unsupported(message)
            },
            VhdxError::ReadOnly => DriverError::from_errno(1, message),
            VhdxError::OverMetadata
            | VhdxError::BadBlockState
            | VhdxError::Unreachable
            | VhdxError::BatTooLarge => DriverError {
                errno: EIO,
                ..DriverError::new(ErrorKind::IO, message)
            },
            VhdxError::OutOfRange(..) | VhdxError::InvalidOption(_) => {
                DriverError::invalid_argument(message)
            }
            VhdxError::Unsupported(_) => DriverError::unsupported(message),
            VhdxError::NoParentName | VhdxError::ParentMismatch(_) => DriverError {
                errno: EINVAL,
                ..DriverError::invalid_image(message)
            },
        }
    }
}

/// Results of this driver's internal functions.
pub type Result<T> = std::result::Result<T, VhdxError>;
