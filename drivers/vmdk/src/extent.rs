//! One extent of a disk: a run of guest sectors kept in a flat file, a
//! sparse extent, or nowhere at all (`ZERO`), as the descriptor's extent
//! lines list them (VDF 1.1 §"Extent Descriptions").

use crate::descriptor::Access;
use crate::error::{Result, VmdkError};
use crate::header::{CowdHeader, SparseHeader, SECTOR};
use crate::sparse::SparseExtent;
use qimg_driver_api::ByteStoreBox;
use qimg_driver_util::read_or_zero;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where an extent's data is.
pub enum ExtentData {
    /// Guest bytes are the file's bytes from `offset` on.
    Flat {
        /// Byte offset of the extent's first sector in the file.
        offset: u64,
    },
    /// A sparse extent.
    Sparse(Box<SparseExtent>),
    /// Reads as zeros.
    Zero,
}

/// An extent and its place in the disk.
pub struct Extent {
    /// Guest byte offset of the extent's first byte.
    pub start: u64,
    /// Bytes of guest data (changed by resize).
    pub len: AtomicU64,
    /// What the descriptor allows.
    pub access: Access,
    /// The extent type as the descriptor names it (empty for the extent of a
    /// monolithic sparse file, which has no extent line of its own).
    pub type_word: String,
    /// The file, if the extent has one.
    pub store: Option<Arc<ByteStoreBox>>,
    /// The file's name as the host resolved it.
    pub name: String,
    /// The data.
    pub data: ExtentData,
}

impl Extent {
    /// Bytes of guest data.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }
    /// End of the extent in guest bytes.
    pub fn end(&self) -> u64 {
        self.start + self.len()
    }
    /// The sparse extent, if this is one.
    pub fn sparse(&self) -> Option<&SparseExtent> {
        match &self.data {
            ExtentData::Sparse(s) => Some(s),
            _ => None,
        }
    }
}

/// Opens the sparse extent in `store` (hosted `KDMV` or ESX Server `COWD`):
/// anything else is not a VMDK extent.
pub fn open_sparse(store: Arc<ByteStoreBox>, writable: bool) -> Result<SparseExtent> {
    if store.len().into_result()? == 0 {
        return Err(VmdkError::TooSmall);
    }
    let mut head = vec![0u8; SECTOR as usize];
    read_or_zero(&store, 0, &mut head)?;
    if let Some(header) = SparseHeader::parse(&head) {
        // Grains (and grain tables) are written whole: the extent grows by
        // appends without holes.
        if writable {
            store.grow_densely(true);
        }
        return SparseExtent::open_hosted(store, header, writable);
    }
    if let Some(header) = CowdHeader::parse(&head) {
        return SparseExtent::open_cowd(store, header);
    }
    Err(VmdkError::NotVmdk)
}
