//! Parent file names as Windows tools record them in differencing disks
//! (VHD, VHDX), made into names a Linux host can look up beside the child.

/// A UTF-16 string up to its first NUL.
pub fn utf16(units: impl Iterator<Item = u16>) -> String {
    let units: Vec<u16> = units.take_while(|&u| u != 0).collect();
    String::from_utf16_lossy(&units)
}

/// A UTF-16LE byte string up to its first NUL.
pub fn utf16le(bytes: &[u8]) -> String {
    utf16(
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]])),
    )
}

/// A path relative to the child (`..\disks\base.vhd`) with `/` separators
/// and without leading `.\`.
pub fn relative(path: &str) -> String {
    let path = path.replace('\\', "/");
    let mut rest = path.as_str();
    while let Some(r) = rest.strip_prefix("./") {
        rest = r;
    }
    rest.to_string()
}

/// The last component of an absolute path (`C:\VMs\base.vhd`), to be
/// looked for beside the child.
pub fn beside_child(path: &str) -> String {
    path.rsplit(['\\', '/'])
        .next()
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_paths_become_unix_ones() {
        assert_eq!(relative(".\\base.vhd"), "base.vhd");
        assert_eq!(relative("..\\disks\\b.vhd"), "../disks/b.vhd");
        assert_eq!(beside_child("C:\\VMs\\x\\base.vhd"), "base.vhd");
        assert_eq!(beside_child("base.vhd"), "base.vhd");
        assert_eq!(utf16le(&[b'a', 0, b'b', 0, 0, 0, b'c', 0]), "ab");
    }
}
