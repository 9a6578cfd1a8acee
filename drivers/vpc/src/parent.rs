//! A differencing disk's link to its parent (specification, "Dynamic Disk
//! Header Format": `Parent Unique Id`, `Parent Unicode Name` and the eight
//! `Parent Locator Entries`), read beyond qemu-img, which reads a
//! differencing disk as a dynamic one without its parent.
//!
//! The parent's file is found through the locators, in the order a Linux
//! host can use them: the relative Windows path (`W2ru`), the Mac OS X file
//! URL (`MacX`), then the absolute Windows path (`W2ku`) and the unicode
//! name, whose last component is taken beside the child (Hyper-V keeps a
//! checkpoint's parent in the same directory). Windows separators become
//! `/`.

use crate::error::{Result, VpcError};
use qimg_driver_api::{ByteStoreBox, StoreExt};
use qimg_driver_util::winpath::{beside_child, relative as windows_relative, utf16, utf16le};

/// `Disk Type` of a differencing disk.
pub const TYPE_DIFFERENCING: u32 = 4;
/// Where the locator entries start in the dynamic disk header.
const LOCATORS_AT: usize = 576;
/// Bytes of one locator entry.
const LOCATOR_SIZE: usize = 24;
/// Locator entries in the header.
const LOCATORS: usize = 8;
/// The longest locator data read: a Windows path of 32767 UTF-16 units.
const MAX_LOCATOR_BYTES: u32 = 65_536;

/// What a differencing disk says of its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentLink {
    /// `Parent Unique Id`: the parent footer's `Unique Id`.
    pub uuid: [u8; 16],
    /// The parent's file name, relative to the child's directory unless
    /// absolute.
    pub name: String,
}

/// The platform codes, in the order their paths are tried.
const PREFERENCE: [&[u8; 4]; 3] = [b"W2ru", b"MacX", b"W2ku"];

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

/// Reads the parent link of the differencing disk whose dynamic header is
/// `header`, in a file of `file_len` bytes.
pub fn read(store: &ByteStoreBox, header: &[u8], file_len: u64) -> Result<ParentLink> {
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&header[40..56]);
    let mut found: Vec<(usize, String)> = Vec::new();
    for entry in header[LOCATORS_AT..LOCATORS_AT + LOCATORS * LOCATOR_SIZE].chunks(LOCATOR_SIZE) {
        let Some(rank) = PREFERENCE.iter().position(|code| entry[..4] == code[..]) else {
            continue;
        };
        let len = be32(entry, 8);
        let offset = u64::from_be_bytes(entry[16..24].try_into().unwrap_or_default());
        if len == 0
            || len > MAX_LOCATOR_BYTES
            || offset
                .checked_add(u64::from(len))
                .is_none_or(|end| end > file_len)
        {
            continue;
        }
        let mut data = vec![0u8; len as usize];
        store.read_or_zero_at(offset, &mut data)?;
        let text = match rank {
            1 => {
                let url = String::from_utf8_lossy(&data);
                let path = url.trim_end_matches('\0').trim_start_matches("file://");
                path.strip_prefix("localhost").unwrap_or(path).to_string()
            }
            _ => utf16le(&data),
        };
        if !text.is_empty() {
            found.push((rank, text));
        }
    }
    found.sort_by_key(|(rank, _)| *rank);
    let name = match found.into_iter().next() {
        Some((0, relative)) => windows_relative(&relative),
        Some((1, mac)) => mac,
        Some((_, absolute)) => beside_child(&absolute),
        None => {
            let unicode = utf16(
                header[64..576]
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]])),
            );
            beside_child(&unicode)
        }
    };
    if name.is_empty() {
        return Err(VpcError::NoParentName);
    }
    Ok(ParentLink { uuid, name })
}
