//! The persistent bitmap directory (qcow2.txt "Bitmap directory"), parsed for
//! `info`. Bitmaps count only while the bitmaps auto-clear bit is set.

use crate::error::{Error, Result};
use crate::header::BitmapsExt;
use crate::meta::Io;
use serde_json::{json, Value};

/// Most bitmaps qemu supports in one image.
const MAX_BITMAPS: u32 = 65535;
/// Largest directory qemu accepts.
const MAX_DIRECTORY_BYTES: u64 = 64 << 20;

/// Bit 0 of an entry's flags: the bitmap was not saved cleanly.
const FLAG_IN_USE: u32 = 1;
/// Bit 1: the bitmap tracks writes.
const FLAG_AUTO: u32 = 2;

/// One bitmap directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    /// Its name.
    pub name: String,
    /// Bytes of guest data per bit.
    pub granularity: u64,
    /// Entry flags.
    pub flags: u32,
    /// Offset of its bitmap table.
    pub table_offset: u64,
    /// Entries in its bitmap table.
    pub table_size: u32,
}

impl Bitmap {
    /// The object `info` prints under `bitmaps`.
    pub fn info(&self) -> Value {
        let mut flags = Vec::new();
        if self.flags & FLAG_IN_USE != 0 {
            flags.push("in-use");
        }
        if self.flags & FLAG_AUTO != 0 {
            flags.push("auto");
        }
        json!({"flags": flags, "name": self.name, "granularity": self.granularity})
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the directory the extension points to, bounded by the file.
pub fn read_directory(io: &Io, ext: &BitmapsExt, file_len: u64) -> Result<Vec<Bitmap>> {
    if ext.nb_bitmaps == 0 {
        return Ok(Vec::new());
    }
    if ext.nb_bitmaps > MAX_BITMAPS {
        return Err(Error::invalid(format!(
            "bitmaps_ext: File {} has too many bitmaps",
            ext.nb_bitmaps
        )));
    }
    if ext.directory_size > MAX_DIRECTORY_BYTES
        || ext.directory_offset.saturating_add(ext.directory_size) > file_len
    {
        return Err(Error::invalid("bitmaps_ext: Bitmap directory is too large"));
    }
    let mut dir = vec![0u8; ext.directory_size as usize];
    io.read(ext.directory_offset, &mut dir)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    for _ in 0..ext.nb_bitmaps {
        let Some(fixed) = dir.get(at..at + 24) else {
            return Err(Error::invalid("Failed to read bitmap directory"));
        };
        let name_len = usize::from(u16::from_be_bytes([fixed[18], fixed[19]]));
        let extra_len = be32(fixed, 20) as usize;
        let granularity_bits = u32::from(fixed[17]);
        let start = at + 24 + extra_len;
        let Some(name) = dir.get(start..start + name_len) else {
            return Err(Error::invalid("Failed to read bitmap directory"));
        };
        out.push(Bitmap {
            name: String::from_utf8_lossy(name).into_owned(),
            granularity: 1u64.checked_shl(granularity_bits).unwrap_or(0),
            flags: be32(fixed, 12),
            table_offset: u64::from(be32(fixed, 0)) << 32 | u64::from(be32(fixed, 4)),
            table_size: be32(fixed, 8),
        });
        at = (start + name_len).next_multiple_of(8);
    }
    Ok(out)
}
