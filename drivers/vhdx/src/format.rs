//! Little-endian field access and the GUIDs [MS-VHDX] names structures by.

/// A GUID as stored on disk ([MS-VHDX] 2.2.1: Data1..Data3 little-endian,
/// Data4 as bytes).
pub type Guid = [u8; 16];

/// The all-zero GUID: "no log" in a header's `LogGuid`.
pub const ZERO_GUID: Guid = [0; 16];

/// The on-disk bytes of the GUID written `d1-d2-d3-d4`.
pub const fn guid(d1: u32, d2: u16, d3: u16, d4: u64) -> Guid {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    let d = d4.to_be_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// A fresh random GUID (version 4).
pub fn random_guid() -> Guid {
    let mut g = [0u8; 16];
    // A GUID only has to differ from the last one; should the system's
    // source fail, the clock still makes it differ.
    if getrandom::fill(&mut g).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(1);
        g.copy_from_slice(&t.to_le_bytes());
    }
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

/// The little-endian u16 at `at`.
pub fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The little-endian u32 at `at`.
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The little-endian u64 at `at`.
pub fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// The GUID at `at`.
pub fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    g
}

/// Stores `v` little-endian at `at`.
pub fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Stores `v` little-endian at `at`.
pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Stores `v` little-endian at `at`.
pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// One mebibyte: the unit of region offsets, block sizes and BAT offsets.
pub const MIB: u64 = 1 << 20;

/// The name this program was run as, which qemu-img's messages start with.
pub fn program_name() -> String {
    std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "qemu-img".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_bytes() {
        // The BAT region's GUID as qemu-img writes it.
        let g = guid(0x2DC27766, 0xF623, 0x4200, 0x9D64_115E_9BFD_4A08);
        assert_eq!(
            g,
            [
                0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd,
                0x4a, 0x08
            ]
        );
    }
}
