//! The format extension: one cluster named by the header's `ext_off`,
//! holding a magic, an MD5 checksum of the rest of the cluster and a list
//! of features, of which the only known one is a dirty bitmap (Virtuozzo's
//! ploop writes them).
//!
//! qemu-img 10.0.2 loads such bitmaps when an image is opened read-only and
//! shows them nowhere (they are neither listed by `info` nor copied by
//! `convert --bitmaps`); what it does show is a refusal to open an image
//! whose extension does not parse. This module checks the extension as
//! strictly, with qemu-img's words, and reads nothing else.
//!
//! ```text
//! extension: magic u64 = 0xAB234CEF23DCEA87, md5[16] of the bytes after it
//! feature:   magic u64, flags u64, data_size u32, unused u32, data
//!            (data padded to 8 bytes); magic 0 ends the list
//! bitmap:    size u64 (sectors), id[16] (a UUID, its name), granularity u32
//!            (sectors), l1_size u32, then l1_size u64 entries: 0 (all
//!            clear), 1 (all set) or the sector of a data cluster
//! ```

use crate::error::{ParallelsError, Result};
use crate::header::SECTOR;
use md5::{Digest, Md5};
use qimg_driver_api::ByteStoreBox;
use qimg_driver_util::read_or_zero;

/// Magic of the extension cluster.
pub const EXT_MAGIC: u64 = 0xAB23_4CEF_23DC_EA87;
/// Magic of the dirty bitmap feature.
pub const BITMAP_MAGIC: u64 = 0x2038_5FAE_252C_B34A;
/// Bytes of the extension header (magic and checksum).
const EXT_HEADER: usize = 24;
/// Bytes of a feature header.
const FEATURE_HEADER: usize = 24;
/// Bytes of the bitmap feature before its L1 table.
const BITMAP_HEADER: usize = 32;
/// Bytes hashed per step where the cluster runs past the end of the file.
const ZERO_CHUNK: usize = 1 << 20;

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn fail<T>(text: impl Into<String>) -> Result<T> {
    Err(ParallelsError::Extension(text.into()))
}

/// Reads and checks the extension at sector `ext_off` of an image whose
/// clusters are `cluster` bytes and whose guest has `sectors` sectors.
/// Only the part of the cluster inside the file is held in memory: the
/// rest reads as zeros and is hashed as such. Returns how many bitmaps
/// the extension holds.
pub fn read(store: &ByteStoreBox, ext_off: u64, cluster: u64, sectors: u64) -> Result<usize> {
    let file_len = store.len().into_result()?;
    let start = ext_off.saturating_mul(SECTOR);
    let held = cluster
        .min(file_len.saturating_sub(start))
        .max(EXT_HEADER as u64);
    let mut data = vec![0u8; held as usize];
    if start < file_len {
        read_or_zero(store, start, &mut data)?;
    }
    let magic = le64(&data, 0);
    if magic != EXT_MAGIC {
        return fail(format!(
            "Wrong parallels Format Extension magic: 0x{magic:x}, expected: 0x{EXT_MAGIC:x}"
        ));
    }
    let mut md5 = Md5::new();
    md5.update(&data[EXT_HEADER..]);
    let mut zeros = cluster - held;
    let chunk = vec![0u8; ZERO_CHUNK.min(zeros as usize)];
    while zeros > 0 {
        let n = zeros.min(chunk.len() as u64) as usize;
        md5.update(&chunk[..n]);
        zeros -= n as u64;
    }
    if md5.finalize()[..] != data[8..EXT_HEADER] {
        return fail("Wrong checksum in Format Extension header. Format extension is corrupted.");
    }
    let byte = |at: usize| -> &[u8] { data.get(at..).unwrap_or(&[]) };
    let mut pos = EXT_HEADER;
    let mut remaining = cluster - EXT_HEADER as u64;
    let mut bitmaps: Vec<String> = Vec::new();
    loop {
        if remaining < FEATURE_HEADER as u64 {
            return fail(format!(
                "Can not read feature header, as remaining bytes ({remaining}) in Format \
                 Extension is less than Feature header size ({FEATURE_HEADER})"
            ));
        }
        let mut fh = [0u8; FEATURE_HEADER];
        let src = byte(pos);
        let n = src.len().min(FEATURE_HEADER);
        fh[..n].copy_from_slice(&src[..n]);
        pos += FEATURE_HEADER;
        remaining -= FEATURE_HEADER as u64;
        let (magic, flags, size) = (le64(&fh, 0), le64(&fh, 8), le32(&fh, 16));
        if flags != 0 {
            return fail("Flags for extension feature are unsupported");
        }
        let padded = u64::from(size).next_multiple_of(8);
        if padded > remaining {
            return fail("Feature data_size exceedes Format Extension cluster");
        }
        match magic {
            0 => return Ok(bitmaps.len()),
            BITMAP_MAGIC => {
                let mut feature = vec![0u8; size as usize];
                let src = byte(pos);
                let n = src.len().min(feature.len());
                feature[..n].copy_from_slice(&src[..n]);
                let name = check_bitmap(&feature, cluster, sectors)?;
                if bitmaps.contains(&name) {
                    return fail(format!("Bitmap already exists: {name}"));
                }
                bitmaps.push(name);
            }
            other => return fail(format!("Unknown feature: 0x{other:x}")),
        }
        pos += padded as usize;
        remaining -= padded;
    }
}

/// The UUID in `id` as text, bytes in order.
fn uuid_text(id: &[u8]) -> String {
    let hex: Vec<String> = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        hex[..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..].concat()
    )
}

/// Checks one bitmap feature (`data`, its declared bytes); returns the
/// bitmap's name.
fn check_bitmap(data: &[u8], cluster: u64, sectors: u64) -> Result<String> {
    if data.len() < BITMAP_HEADER {
        return fail(format!(
            "Too small Bitmap Feature area in Parallels Format Extension: {} bytes, \
             expected at least {BITMAP_HEADER} bytes",
            data.len()
        ));
    }
    let size = le64(data, 0);
    let granularity = u64::from(le32(data, 24)) * SECTOR;
    let l1_size = le32(data, 28);
    if size != sectors {
        return fail(format!(
            "Bitmap size (in sectors) {} differs from disk size in sectors {}",
            size as i64, sectors as i64
        ));
    }
    if granularity < SECTOR || granularity > u64::from(u32::MAX) || !granularity.is_power_of_two() {
        return fail(format!(
            "Invalid bitmap granularity {granularity}, expected a power of two of at least \
             {SECTOR} bytes"
        ));
    }
    if u64::from(l1_size) * 8 > (data.len() - BITMAP_HEADER) as u64 {
        return fail("Bitmaps feature corrupted: l1 table exceeds extension data_size");
    }
    // The table has one entry per cluster of serialised bitmap, which is
    // stored in 64-bit words.
    let bytes = sectors * SECTOR;
    let words = bytes.div_ceil(granularity).div_ceil(64);
    let expected = (words * 8).div_ceil(cluster);
    if expected != u64::from(l1_size) {
        return fail(format!(
            "Bitmap table size {l1_size} does not correspond to bitmap size and cluster \
             size. Expected {expected}"
        ));
    }
    let coverage = granularity.saturating_mul(cluster * 8);
    for i in 0..u64::from(l1_size) {
        if i.saturating_mul(coverage) >= bytes {
            return fail(format!(
                "Bitmap L1 table covers more than the bitmap size {bytes}"
            ));
        }
    }
    Ok(uuid_text(&data[8..24]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qimg_driver_util::memfile::MemFile;

    /// An extension cluster at 4096 holding `features`, checksummed.
    fn image(features: &[u8], cluster: usize) -> MemFile {
        let mut ext = vec![0u8; cluster];
        ext[..8].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        ext[EXT_HEADER..EXT_HEADER + features.len()].copy_from_slice(features);
        let sum = Md5::digest(&ext[EXT_HEADER..]);
        ext[8..EXT_HEADER].copy_from_slice(&sum);
        let mut bytes = vec![0u8; 4096];
        bytes.extend_from_slice(&ext);
        MemFile(std::sync::Arc::new(std::sync::Mutex::new(bytes)))
    }

    fn bitmap_feature(size: u64, granularity: u32, l1: &[u64]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&BITMAP_MAGIC.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes());
        f.extend_from_slice(&((32 + 8 * l1.len()) as u32).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&[0x11; 16]);
        f.extend_from_slice(&granularity.to_le_bytes());
        f.extend_from_slice(&(l1.len() as u32).to_le_bytes());
        for e in l1 {
            f.extend_from_slice(&e.to_le_bytes());
        }
        f
    }

    #[test]
    fn a_bitmap_feature_is_accepted() {
        let file = image(&bitmap_feature(2048, 128, &[1]), 4096);
        assert_eq!(read(&file.store("x"), 8, 4096, 2048).unwrap(), 1);
    }

    #[test]
    fn damage_is_refused_with_qemu_img_words() {
        let err = |file: &MemFile, sectors| read(&file.store("x"), 8, 4096, sectors).unwrap_err();
        let file = image(&bitmap_feature(2048, 128, &[1]), 4096);
        assert!(err(&file, 4096).to_string().starts_with("Bitmap size"));
        let twice = [
            bitmap_feature(2048, 128, &[1]),
            bitmap_feature(2048, 128, &[1]),
        ]
        .concat();
        assert_eq!(
            err(&image(&twice, 4096), 2048).to_string(),
            "Bitmap already exists: 11111111-1111-1111-1111-111111111111"
        );
        let file = image(&bitmap_feature(2048, 3, &[1]), 4096);
        assert!(err(&file, 2048).to_string().starts_with("Invalid bitmap"));
        let file = image(&7u64.to_le_bytes(), 4096);
        assert_eq!(err(&file, 2048).to_string(), "Unknown feature: 0x7");
        file.0.lock().unwrap()[5000] ^= 1;
        assert!(err(&file, 2048).to_string().starts_with("Wrong checksum"));
        let beyond = read(&file.store("x"), 1 << 40, 4096, 2048).unwrap_err();
        assert!(beyond
            .to_string()
            .starts_with("Wrong parallels Format Extension magic: 0x0,"));
    }
}
