//! Plain data types that cross the boundary by value.

use abi_stable::StableAbi;

/// What a driver can do; a bit set returned by `FormatDriver::capabilities`.
/// The host checks these before calling the matching methods and tells the user
/// which capability is missing.
pub mod caps {
    /// `create` works.
    pub const CREATE: u64 = 1 << 0;
    /// Images can be opened read-write.
    pub const WRITE: u64 = 1 << 1;
    /// Images can have a backing file.
    pub const BACKING: u64 = 1 << 2;
    /// `resize` works.
    pub const RESIZE: u64 = 1 << 3;
    /// Internal snapshots.
    pub const SNAPSHOTS: u64 = 1 << 4;
    /// Persistent dirty bitmaps.
    pub const BITMAPS: u64 = 1 << 5;
    /// `check` (and repair).
    pub const CHECK: u64 = 1 << 6;
    /// `amend`.
    pub const AMEND: u64 = 1 << 7;
    /// Compressed writes (`convert -c`).
    pub const COMPRESSED_WRITES: u64 = 1 << 8;
    /// `measure` for this output format.
    pub const MEASURE: u64 = 1 << 9;
    // Bit 10 is unused: whether an image must be written in order is a fact
    // of the open image (`ImageInfo::write_in_order`), not of its format.
    /// A freshly created image reads as zeros everywhere, so a copy may skip zeros.
    pub const ZERO_INIT: u64 = 1 << 11;
    /// Guest offsets map 1:1 onto the image's own store (raw): the host may use
    /// copy_file_range and hole punching directly on the store.
    pub const IDENTITY_MAPPED: u64 = 1 << 12;
    /// The image file takes only the locks its user asks for, as raw does,
    /// although the format keeps metadata in it: QEMU's crypto driver
    /// (luks) lets other users write and resize the file under it. Without
    /// this bit a format with metadata refuses to share write and resize.
    /// Hosts before ABI 1.5 ignore it (and lock such a driver's files as a
    /// metadata format's, which is only stricter).
    pub const USER_LOCKS: u64 = 1 << 13;
}

/// Flags of [`Extent::flags`], the facts `qemu-img map` prints.
pub mod extent_flags {
    /// Reads return data from this layer (or below, see `ALLOCATED`).
    pub const DATA: u32 = 1 << 0;
    /// Reads return zeros.
    pub const ZERO: u32 = 1 << 1;
    /// This layer decides the content (not deferred to the backing image).
    pub const ALLOCATED: u32 = 1 << 2;
    /// `host_offset` is valid.
    pub const OFFSET_VALID: u32 = 1 << 3;
    /// The data is stored compressed.
    pub const COMPRESSED: u32 = 1 << 4;
}

/// Flags of `Image::write_zeroes`.
pub mod zero_flags {
    /// The range may be deallocated (holes) as long as it reads back as zeros.
    pub const MAY_UNMAP: u32 = 1 << 0;
    /// Only zero the range if the format can mark it as zeros without
    /// writing zero bytes over it; otherwise fail with `UNSUPPORTED` and
    /// leave it untouched (ABI 1.3; older drivers write the zeros).
    pub const NO_FALLBACK: u32 = 1 << 1;
}

/// Flags for opening an image.
pub mod open_flags {
    /// Open for writing.
    pub const WRITE: u32 = 1 << 0;
    /// Do not open the backing chain (`qemu-img info` without `--backing-chain`).
    pub const NO_BACKING: u32 = 1 << 1;
    /// Open even if the image is marked corrupt or needs repair (`check`).
    pub const CHECK: u32 = 1 << 2;
    /// The image may be resized.
    pub const RESIZE: u32 = 1 << 3;
    /// The image is only described (`info`): no guest data will be read or
    /// written, so data stores and encryption keys may be left unopened.
    pub const NO_IO: u32 = 1 << 4;
}

/// What a protocol driver's stores can do ([`crate::ProtocolDriver::capabilities`],
/// ABI 1.6).
pub mod proto_caps {
    /// Stores can be written (an HTTP store cannot).
    pub const WRITE: u64 = 1 << 0;
    /// `ByteStore::run_at` answers with the server's allocation (NBD's
    /// `base:allocation`); without it every byte is data.
    pub const BLOCK_STATUS: u64 = 1 << 1;
    /// A store may spread requests over several connections at once.
    pub const MULTI_CONN: u64 = 1 << 2;
    /// Stores can change length.
    pub const RESIZE: u64 = 1 << 3;
}

/// Flags for [`crate::ProtocolDriver::open`] (ABI 1.6).
pub mod proto_open {
    /// The store will be written.
    pub const WRITE: u32 = 1 << 0;
}

/// A run of guest bytes with uniform allocation status.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset of the run.
    pub offset: u64,
    /// Length in bytes (non-zero).
    pub length: u64,
    /// [`extent_flags`] bits.
    pub flags: u32,
    /// Which of the image's stores `host_offset` refers to (0: the image's own
    /// store; see `Image::store_name`).
    pub store: u32,
    /// Offset of the data in that store, if `OFFSET_VALID`.
    pub host_offset: u64,
}

impl Extent {
    /// True if every bit of `flag` is set.
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag == flag
    }
    /// End offset (exclusive).
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// A run in a byte store: data or hole, as SEEK_DATA / SEEK_HOLE report it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreRun {
    /// True if the run holds data; false for a hole (reads as zeros).
    pub data: bool,
    /// Length of the run in bytes.
    pub length: u64,
}

/// Preallocation mode, as `-o preallocation=` and `resize --preallocation=` name them.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prealloc(pub u32);

impl Prealloc {
    /// No preallocation: sparse.
    pub const OFF: Self = Self(0);
    /// Metadata only (formats with metadata).
    pub const METADATA: Self = Self(1);
    /// Reserve space with fallocate.
    pub const FALLOC: Self = Self(2);
    /// Write zeros to every byte.
    pub const FULL: Self = Self(3);

    /// Parses qemu-img's names.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "off" => Self::OFF,
            "metadata" => Self::METADATA,
            "falloc" => Self::FALLOC,
            "full" => Self::FULL,
            _ => return None,
        })
    }
    /// qemu-img's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            Self::METADATA => "metadata",
            Self::FALLOC => "falloc",
            Self::FULL => "full",
            _ => "off",
        }
    }
}
