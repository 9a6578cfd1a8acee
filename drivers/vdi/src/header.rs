//! The VDI header (VirtualBox's "VDI header version 1.1", preceded by the
//! pre-header: a text line, the signature and the version), read as
//! qemu-img 10.0.2 reads it and written as it writes it.
//!
//! All fields are little-endian. Offsets within the first sector:
//!
//! | offset | field |
//! |---|---|
//! | 0x000 | text (64 bytes) |
//! | 0x040 | signature `0xbeda107f` |
//! | 0x044 | version (major << 16 \| minor) |
//! | 0x048 | header size (after the pre-header) |
//! | 0x04c | image type (1 dynamic, 2 static, 3 undo, 4 differencing) |
//! | 0x050 | image flags |
//! | 0x054 | description (256 bytes) |
//! | 0x154 | block map offset |
//! | 0x158 | data offset |
//! | 0x15c | legacy geometry: cylinders, heads, sectors, sector size |
//! | 0x16c | unused |
//! | 0x170 | disk size (u64) |
//! | 0x178 | block size |
//! | 0x17c | extra data per block |
//! | 0x180 | blocks in image |
//! | 0x184 | blocks allocated |
//! | 0x188 | image, last-modification, link and parent UUIDs (16 bytes each) |
//! | 0x1c8 | logical geometry (VirtualBox's 1.1+ headers) |

use crate::error::{Result, VdiError};

/// The bytes the header occupies (one sector).
pub const HEADER_SIZE: usize = 512;
/// The only sector size VDI images use.
pub const SECTOR: u64 = 512;
/// The block size qemu-img reads and writes (VirtualBox's default).
pub const BLOCK_SIZE: u64 = 1 << 20;
/// The signature at 0x40.
pub const SIGNATURE: u32 = 0xbeda_107f;
/// Version 1.1, the version VirtualBox and qemu write.
pub const VERSION_1_1: u32 = 0x0001_0001;
/// Header size of a version 1.1 header as qemu writes it (after the
/// 72-byte pre-header).
pub const HEADER_SIZE_1_1: u32 = 0x180;
/// Image type of a dynamic (growing) image.
pub const TYPE_DYNAMIC: u32 = 1;
/// Image type of a static (preallocated) image.
pub const TYPE_STATIC: u32 = 2;
/// The text qemu writes in front of its images.
pub const QEMU_TEXT: &[u8] = b"<<< QEMU VM Virtual Disk Image >>>\n";
/// Most blocks an image may have: the block map must fit in `i32::MAX`
/// bytes rounded down to whole sectors (qemu's limit).
pub const MAX_BLOCKS: u32 = 0x1fff_ff80;
/// Largest disk: [`MAX_BLOCKS`] blocks of [`BLOCK_SIZE`].
pub const MAX_DISK_SIZE: u64 = MAX_BLOCKS as u64 * BLOCK_SIZE;
/// Offset of the disk size (followed by the block size, the extra bytes
/// per block, the block count and the allocated-block count).
pub const DISK_SIZE_AT: u64 = 0x170;
/// Offset of the allocated-block count.
pub const BLOCKS_ALLOCATED_AT: u64 = 0x184;

/// A block map entry for a block that is not allocated (reads as zeros).
pub const UNALLOCATED: u32 = 0xffff_ffff;
/// A block map entry for a block that was discarded (reads as zeros).
pub const DISCARDED: u32 = 0xffff_fffe;

/// Whether a block map entry names a data block.
pub fn is_allocated(entry: u32) -> bool {
    entry < DISCARDED
}

/// The fields of a header this driver uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Image type (1 dynamic, 2 static).
    pub image_type: u32,
    /// Byte offset of the block map.
    pub offset_bmap: u32,
    /// Byte offset of the first data block.
    pub offset_data: u32,
    /// Guest size in bytes, rounded up to a whole sector.
    pub disk_size: u64,
    /// Entries in the block map.
    pub blocks_in_image: u32,
    /// Data blocks handed out (the next free block's index).
    pub blocks_allocated: u32,
    /// A differencing image's link: its parent's image UUID (zero
    /// otherwise).
    pub link_uuid: [u8; 16],
}

/// Offset of the image's own UUID.
pub const IMAGE_UUID_AT: usize = 0x188;
/// Offset of a differencing image's link UUID (its parent's image UUID).
pub const LINK_UUID_AT: usize = 0x1a8;

/// Whether the header `b` links the image to a parent (a differencing
/// image, as VirtualBox makes them for snapshots).
pub fn has_parent(b: &[u8; HEADER_SIZE]) -> bool {
    b[LINK_UUID_AT..0x1c8].iter().any(|&x| x != 0)
}

/// The 16-byte UUID at `at`.
pub fn uuid_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut u = [0u8; 16];
    u.copy_from_slice(&b[at..at + 16]);
    u
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

impl Header {
    /// Parses and checks the first sector of an image (zero-filled where
    /// the file is shorter), in qemu-img's order of checks and with its
    /// messages. A differencing image (link and parent UUIDs set) is
    /// refused, as qemu-img refuses it, unless `with_parent` (its parent
    /// was named).
    pub fn parse(b: &[u8; HEADER_SIZE], with_parent: bool) -> Result<Header> {
        let disk_size = u64_at(b, 0x170);
        if disk_size > MAX_DISK_SIZE {
            return Err(VdiError::SizeTooLarge(disk_size, MAX_DISK_SIZE));
        }
        let signature = u32_at(b, 0x40);
        if signature != SIGNATURE {
            return Err(VdiError::BadSignature(signature));
        }
        let version = u32_at(b, 0x44);
        if version != VERSION_1_1 {
            return Err(VdiError::Version((version >> 16) as u16, version as u16));
        }
        let offset_bmap = u32_at(b, 0x154);
        if u64::from(offset_bmap) % SECTOR != 0 {
            return Err(VdiError::UnalignedMap(offset_bmap));
        }
        let offset_data = u32_at(b, 0x158);
        if u64::from(offset_data) % SECTOR != 0 {
            return Err(VdiError::UnalignedData(offset_data));
        }
        let sector_size = u32_at(b, 0x168);
        if u64::from(sector_size) != SECTOR {
            return Err(VdiError::SectorSize(sector_size));
        }
        let block_size = u32_at(b, 0x178);
        if u64::from(block_size) != BLOCK_SIZE {
            return Err(VdiError::BlockSize(block_size));
        }
        // VBoxManage convertfromraw makes images of any byte size; the
        // last partial sector counts as a whole one.
        let disk_size = disk_size.next_multiple_of(SECTOR);
        let blocks_in_image = u32_at(b, 0x180);
        let room = u64::from(blocks_in_image) * BLOCK_SIZE;
        if disk_size > room {
            return Err(VdiError::DiskTooLarge(disk_size, room));
        }
        if !with_parent {
            if b[0x1a8..0x1b8].iter().any(|&x| x != 0) {
                return Err(VdiError::LinkUuid);
            }
            if b[0x1b8..0x1c8].iter().any(|&x| x != 0) {
                return Err(VdiError::ParentUuid);
            }
        }
        if blocks_in_image > MAX_BLOCKS {
            return Err(VdiError::TooManyBlocks(blocks_in_image, MAX_BLOCKS));
        }
        Ok(Header {
            image_type: u32_at(b, 0x4c),
            offset_bmap,
            offset_data,
            disk_size,
            blocks_in_image,
            blocks_allocated: u32_at(b, 0x184),
            link_uuid: uuid_at(b, LINK_UUID_AT),
        })
    }

    /// Bytes of the block map as stored: its entries rounded up to whole
    /// sectors.
    pub fn bmap_bytes(&self) -> u64 {
        (u64::from(self.blocks_in_image) * 4).next_multiple_of(SECTOR)
    }

    /// Byte offset in the file of data block `index`.
    pub fn block_offset(&self, index: u32) -> u64 {
        u64::from(self.offset_data) + u64::from(index) * BLOCK_SIZE
    }

    /// A new image's header as qemu writes it: the QEMU text, version 1.1,
    /// the block map right after the header and the data after the map,
    /// two random UUIDs (image and last modification).
    pub fn encode_new(&self, uuids: [[u8; 16]; 2]) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..QEMU_TEXT.len()].copy_from_slice(QEMU_TEXT);
        let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(0x40, SIGNATURE);
        put(0x44, VERSION_1_1);
        put(0x48, HEADER_SIZE_1_1);
        put(0x4c, self.image_type);
        put(0x154, self.offset_bmap);
        put(0x158, self.offset_data);
        put(0x168, SECTOR as u32);
        put(0x178, BLOCK_SIZE as u32);
        put(0x180, self.blocks_in_image);
        put(0x184, self.blocks_allocated);
        b[0x170..0x178].copy_from_slice(&self.disk_size.to_le_bytes());
        b[0x188..0x198].copy_from_slice(&uuids[0]);
        b[0x198..0x1a8].copy_from_slice(&uuids[1]);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            image_type: TYPE_DYNAMIC,
            offset_bmap: 512,
            offset_data: 1024,
            disk_size: 5 << 20,
            blocks_in_image: 5,
            blocks_allocated: 0,
            link_uuid: [0; 16],
        }
    }

    #[test]
    fn a_new_header_reads_back() {
        let h = sample();
        assert_eq!(
            Header::parse(&h.encode_new([[1; 16], [2; 16]]), false).unwrap(),
            h
        );
    }

    #[test]
    fn hostile_fields_are_refused_in_qemus_order() {
        let base = sample().encode_new([[1; 16], [2; 16]]);
        let with = |at: usize, bytes: &[u8]| {
            let mut b = base;
            b[at..at + bytes.len()].copy_from_slice(bytes);
            Header::parse(&b, false).unwrap_err().to_string()
        };
        assert_eq!(
            with(0x178, &0u32.to_le_bytes()),
            "unsupported VDI image (block size 0 is not 1048576)"
        );
        assert_eq!(
            with(0x180, &0u32.to_le_bytes()),
            "unsupported VDI image (disk size 5242880, image bitmap has room for 0)"
        );
        assert_eq!(
            with(0x170, &u64::MAX.to_le_bytes()),
            "Unsupported VDI image size (size is 0xffffffffffffffff, max supported is 0x1fffff8000000)"
        );
        assert_eq!(
            Header::parse(&[0; HEADER_SIZE], false)
                .unwrap_err()
                .to_string(),
            "Image not in VDI format (bad signature 00000000)"
        );
    }
}
