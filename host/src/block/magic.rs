//! The formats qemu-img knows, recognised by their magic numbers whether or
//! not a driver for them is loaded, so that a file in a format this
//! deployment cannot open is refused by name instead of being read as raw
//! (its container bytes handed out as guest data).

/// The first line of a cloop image (cloop's v2 header, a shell script).
const CLOOP_SCRIPT: &[u8] =
    b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

/// The qemu-img format name of the image whose first bytes are `head`
/// (named `filename`), if its magic says so. Fixed VHDs (a footer only at
/// the end) and raw files are not recognised, as qemu-img does not probe
/// them either; dmg is recognised by its `.dmg` name, as qemu-img does.
pub fn recognise(head: &[u8], filename: &str) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"QFI\xfb") {
        // qcow and qcow2 share the magic; the big-endian version tells.
        let version = head
            .get(4..8)
            .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        return Some(if version == Some(1) { "qcow" } else { "qcow2" });
    }
    let by_magic: &[(usize, &[u8], &'static str)] = &[
        (0, b"QED\0", "qed"),
        (0, b"KDMV", "vmdk"),
        (0, b"COWD", "vmdk"),
        (0, b"# Disk DescriptorFile", "vmdk"),
        // VDI: the signature 0xbeda107f, little-endian, at 0x40.
        (0x40, b"\x7f\x10\xda\xbe", "vdi"),
        (0, b"conectix", "vpc"),
        (0, b"vhdxfile", "vhdx"),
        (0, b"LUKS\xba\xbe", "luks"),
        (0, b"WithoutFreeSpace", "parallels"),
        (0, b"WithouFreSpacExt", "parallels"),
        (0, b"Bochs Virtual HD Image", "bochs"),
        (0, CLOOP_SCRIPT, "cloop"),
    ];
    if let Some((_, _, name)) = by_magic
        .iter()
        .find(|(offset, magic, _)| at(*offset, magic))
    {
        return Some(name);
    }
    if vmdk_descriptor(head) {
        return Some("vmdk");
    }
    filename.ends_with(".dmg").then_some("dmg")
}

/// Every format [`recognise`] can name. A driver for one of them claims no
/// file the table does not recognise as its format, so probing need not
/// load it for such a file.
pub const KNOWN: [&str; 12] = [
    "qcow",
    "qcow2",
    "qed",
    "vmdk",
    "vdi",
    "vpc",
    "vhdx",
    "luks",
    "parallels",
    "bochs",
    "cloop",
    "dmg",
];

/// A vmdk text descriptor: comment lines, then `version=1`, `2` or `3` on
/// a line of its own (the first line need not be `# Disk DescriptorFile`).
fn vmdk_descriptor(head: &[u8]) -> bool {
    let mut rest = head;
    while rest.first() == Some(&b'#') {
        match rest.iter().position(|&b| b == b'\n') {
            Some(end) => rest = &rest[end + 1..],
            None => return false,
        }
    }
    rest.len() >= 10
        && rest.starts_with(b"version=")
        && matches!(rest[8], b'1' | b'2' | b'3')
        && matches!(rest[9], b'\n' | b'\r')
}

#[cfg(test)]
mod tests {
    use super::recognise;

    #[test]
    fn magics_name_their_formats() {
        let mut vdi = vec![0u8; 0x48];
        vdi[0x40..0x44].copy_from_slice(&0xbeda_107f_u32.to_le_bytes());
        let cases: [(&[u8], &str, Option<&str>); 8] = [
            (b"QFI\xfb\0\0\0\x03", "a", Some("qcow2")),
            (b"QFI\xfb\0\0\0\x01", "a", Some("qcow")),
            (b"vhdxfile\0\0", "a", Some("vhdx")),
            (&vdi, "a", Some("vdi")),
            (b"conectix", "a", Some("vpc")),
            (b"# Disk DescriptorFile\n", "a", Some("vmdk")),
            (b"anything", "x.dmg", Some("dmg")),
            (b"\0\0\0\0 plain data", "x.img", None),
        ];
        for (head, name, want) in cases {
            assert_eq!(recognise(head, name), want, "{head:?}");
        }
        assert_eq!(recognise(b"# made by hand\nversion=1\n", "a"), Some("vmdk"));
        assert_eq!(recognise(b"# made by hand\nversion=4\n", "a"), None);
        // Too short to hold a magic: nothing, and no panic.
        assert_eq!(recognise(b"QF", "a"), None);
        assert_eq!(recognise(&vdi[..0x41], "a"), None);
    }
}
