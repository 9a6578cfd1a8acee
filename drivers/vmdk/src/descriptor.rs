//! The text descriptor (VDF 1.1 §"The Descriptor File"): header fields,
//! extent descriptions and the disk database, read the way qemu-img reads
//! them and written in the layout qemu-img writes.

use crate::error::{Result, VmdkError};

/// `parentCID` of a disk without a parent (VDF 1.1, "Parent Content ID").
pub const NO_PARENT: u32 = 0xffff_ffff;

/// Access of an extent, the first word of its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read and write.
    ReadWrite,
    /// Read only.
    ReadOnly,
    /// Neither (`NOACCESS`).
    Denied,
}

/// The extent type, the third word of an extent line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentType {
    /// Plain data in a file (`FLAT`).
    Flat,
    /// Plain data on a VMFS volume (`VMFS`): read like `FLAT` from offset 0.
    Vmfs,
    /// A hosted sparse extent (`SPARSE`).
    Sparse,
    /// An ESX Server sparse extent (`VMFSSPARSE`).
    VmfsSparse,
    /// Reads as zeros, stores nothing (`ZERO`).
    Zero,
}

impl ExtentType {
    /// The word as the descriptor spells it.
    pub fn word(self) -> &'static str {
        match self {
            ExtentType::Flat => "FLAT",
            ExtentType::Vmfs => "VMFS",
            ExtentType::Sparse => "SPARSE",
            ExtentType::VmfsSparse => "VMFSSPARSE",
            ExtentType::Zero => "ZERO",
        }
    }
    fn from_word(word: &str) -> Option<ExtentType> {
        Some(match word {
            "FLAT" => ExtentType::Flat,
            "VMFS" => ExtentType::Vmfs,
            "SPARSE" => ExtentType::Sparse,
            "VMFSSPARSE" => ExtentType::VmfsSparse,
            "ZERO" => ExtentType::Zero,
            _ => return None,
        })
    }
    /// Types whose line ends with an offset into the file (only `FLAT`:
    /// a `VMFS` extent always starts at the start of its file).
    pub fn has_offset(self) -> bool {
        self == ExtentType::Flat
    }
}

/// One extent description line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentLine {
    /// RW, RDONLY or NOACCESS.
    pub access: Access,
    /// Size in sectors.
    pub sectors: u64,
    /// Extent type.
    pub kind: ExtentType,
    /// File name as written (empty for `ZERO`).
    pub file: String,
    /// Offset of the data in the file, in sectors (flat extents).
    pub offset: u64,
}

/// What a descriptor says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Content ID.
    pub cid: u32,
    /// The parent's content ID, [`NO_PARENT`] without one.
    pub parent_cid: u32,
    /// `createType`.
    pub create_type: String,
    /// `parentFileNameHint`, the parent's file name.
    pub parent_hint: Option<String>,
    /// The extents, in order.
    pub extents: Vec<ExtentLine>,
}

/// `createType`s a separate descriptor file may have (the monolithic sparse
/// and stream-optimized types keep their descriptor inside the extent).
const DESCRIPTOR_FILE_TYPES: &[&str] = &[
    "monolithicFlat",
    "vmfs",
    "vmfsSparse",
    "seSparse",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
];

/// The value of `name="value"`: the text from two characters after the
/// first occurrence of `name` (its `="`) to the next quote, as qemu-img
/// takes it (it does not check that the two characters are `="`).
pub fn quoted_value(text: &str, name: &str) -> Option<String> {
    let at = text.find(name)? + name.len() + 2;
    let rest = text.get(at..)?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// A hexadecimal value after the first occurrence of `key` followed by `=`
/// (so `CID` also matches inside `parentCID` when no `CID` line comes
/// first, as in qemu-img). Leading white space (line ends too, as
/// `sscanf` skips them: an empty value takes the next line's leading hex
/// digits) and a `0x` prefix are accepted; the value wraps to 32 bits.
pub fn hex_value(text: &str, key: &str) -> Option<u32> {
    let at = text.find(key)? + key.len();
    let rest = text[at..].strip_prefix('=')?;
    let rest = rest.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let rest = rest
        .strip_prefix("0x")
        .or_else(|| rest.strip_prefix("0X"))
        .unwrap_or(rest);
    let digits: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    if digits.is_empty() {
        return None;
    }
    let mut value = 0u32;
    for d in digits.chars() {
        value = value
            .wrapping_mul(16)
            .wrapping_add(d.to_digit(16).unwrap_or(0));
    }
    Some(value)
}

/// A tiny scanner with `sscanf`'s habits: skips blanks before each field.
struct Scanner<'a> {
    rest: &'a str,
}

impl<'a> Scanner<'a> {
    fn skip_blanks(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t', '\r']);
    }
    fn word(&mut self) -> Option<&'a str> {
        self.skip_blanks();
        let end = self
            .rest
            .find(|c: char| c.is_whitespace())
            .unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (w, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(w)
    }
    /// A signed decimal number; saturates instead of overflowing.
    fn number(&mut self) -> Option<i64> {
        self.skip_blanks();
        let (negative, body) = match self.rest.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, self.rest.strip_prefix('+').unwrap_or(self.rest)),
        };
        let len = body.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        let mut value: i64 = 0;
        for d in body[..len].bytes() {
            value = value.saturating_mul(10).saturating_add(i64::from(d - b'0'));
        }
        self.rest = &body[len..];
        Some(if negative { -value } else { value })
    }
    fn quoted(&mut self) -> Option<&'a str> {
        self.skip_blanks();
        let body = self.rest.strip_prefix('"')?;
        let end = body.find(['"', '\n', '\r']).unwrap_or(body.len());
        if end == 0 {
            return None;
        }
        // Without its closing quote the name runs to the end of the line,
        // and nothing after it is read (qemu's sscanf stops there).
        self.rest = body[end..].strip_prefix('"').unwrap_or("");
        Some(&body[..end])
    }
}

/// Parses one line as an extent description. `Ok(None)` for lines that are
/// not one (qemu-img passes over them silently: other keys, comments,
/// extents of no size or of types it does not read).
fn parse_extent_line(line: &str) -> Result<Option<ExtentLine>> {
    let mut s = Scanner { rest: line };
    let Some(access_word) = s.word() else {
        return Ok(None);
    };
    let Some(sectors) = s.number() else {
        return Ok(None);
    };
    let Some(type_word) = s.word() else {
        return Ok(None);
    };
    let file = s.quoted();
    let offset = if file.is_some() { s.number() } else { None };
    let kind = ExtentType::from_word(type_word);
    let access = match access_word {
        "RW" => Access::ReadWrite,
        "RDONLY" => Access::ReadOnly,
        "NOACCESS" => Access::Denied,
        _ => return Ok(None),
    };
    // VDF 1.1: a ZERO extent names no file; the other types name one, and
    // FLAT/VMFS add the offset of the data in it.
    let invalid = || VmdkError::InvalidExtentLine(line.trim_end_matches('\r').to_string());
    match kind {
        Some(ExtentType::Zero) => {
            if file.is_some() {
                return Err(invalid());
            }
        }
        Some(k) if k.has_offset() => {
            if file.is_none() {
                return Ok(None);
            }
            match offset {
                Some(o) if o >= 0 => {}
                _ => return Err(invalid()),
            }
        }
        _ => {
            if file.is_none() {
                return Ok(None);
            }
            if offset.is_some() {
                return Err(invalid());
            }
        }
    }
    let Some(kind) = kind else {
        return Ok(None);
    };
    if sectors <= 0 {
        return Ok(None);
    }
    Ok(Some(ExtentLine {
        access,
        sectors: sectors as u64,
        kind,
        file: file.unwrap_or_default().to_string(),
        offset: offset.unwrap_or(0) as u64,
    }))
}

/// The header fields every descriptor has. `name` is the descriptor's file
/// name, for the message qemu-img gives when a content ID is unreadable.
pub fn parse_fields(text: &str, name: &str) -> Result<(u32, u32, Option<String>)> {
    let bad = || VmdkError::BadCid(name.to_string());
    let cid = hex_value(text, "CID").ok_or_else(bad)?;
    let parent_cid = hex_value(text, "parentCID").ok_or_else(bad)?;
    let hint = quoted_value(text, "parentFileNameHint");
    Ok((cid, parent_cid, hint))
}

/// Parses a descriptor file (one that is not inside a sparse extent).
pub fn parse_file(text: &str, name: &str) -> Result<Descriptor> {
    let create_type = quoted_value(text, "createType").ok_or(VmdkError::InvalidDescriptor)?;
    if !DESCRIPTOR_FILE_TYPES.contains(&create_type.as_str()) {
        return Err(VmdkError::UnsupportedType(create_type));
    }
    let mut extents = Vec::new();
    for line in text.split('\n') {
        if let Some(extent) = parse_extent_line(line)? {
            extents.push(extent);
        }
    }
    // No extent is an empty disk (what `create` writes for size 0), which
    // qemu opens too.
    let (cid, parent_cid, parent_hint) = parse_fields(text, name)?;
    Ok(Descriptor {
        cid,
        parent_cid,
        create_type,
        parent_hint,
        extents,
    })
}

/// Replaces the value of the first `CID=` (the one [`hex_value`] reads) with
/// `cid` in hexadecimal, without leading zeros (as qemu-img writes it).
pub fn with_cid(text: &str, cid: u32) -> String {
    let Some(at) = text.find("CID=") else {
        return text.to_string();
    };
    let start = at + 4;
    let len = text[start..]
        .bytes()
        .take_while(u8::is_ascii_hexdigit)
        .count();
    format!("{}{cid:x}{}", &text[..start], &text[start + len..])
}

/// Sets the size of extent number `index` (counting the lines
/// [`parse_file`] takes as extents) to `sectors`.
pub fn with_extent_sectors(text: &str, index: usize, sectors: u64) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut seen = 0usize;
    for line in text.split_inclusive('\n') {
        let is_extent = matches!(parse_extent_line(line.trim_end_matches('\n')), Ok(Some(_)));
        if is_extent && seen == index {
            // Fields split as `parse_extent_line` splits them.
            let body = line.trim_start_matches([' ', '\t', '\r']);
            let lead = &line[..line.len() - body.len()];
            let access_end = body.find(char::is_whitespace).unwrap_or(body.len());
            let rest = body[access_end..].trim_start_matches([' ', '\t', '\r']);
            let number_end = rest
                .find(|c: char| !c.is_ascii_digit() && c != '-' && c != '+')
                .unwrap_or(rest.len());
            out.push_str(&format!(
                "{lead}{} {sectors}{}",
                &body[..access_end],
                &rest[number_end..]
            ));
        } else {
            out.push_str(line);
        }
        if is_extent {
            seen += 1;
        }
    }
    out
}

/// Sets `ddb.geometry.cylinders` for a disk of `capacity` sectors, keeping
/// the recorded heads and sectors per track.
pub fn with_cylinders(text: &str, capacity: u64) -> String {
    let value = |key: &str| {
        quoted_value(text, key)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&v| v > 0)
    };
    let Some(at) = text.find("ddb.geometry.cylinders") else {
        return text.to_string();
    };
    let heads = value("ddb.geometry.heads =").unwrap_or(16);
    let sectors = value("ddb.geometry.sectors =").unwrap_or(63);
    let line_end = text[at..].find('\n').map_or(text.len(), |e| at + e);
    format!(
        "{}ddb.geometry.cylinders = \"{}\"{}",
        &text[..at],
        // Hostile values must not overflow: both are at least 1.
        capacity / heads.saturating_mul(sectors),
        &text[line_end..]
    )
}

/// The disk database values of a new disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskDatabase {
    /// `ddb.virtualHWVersion`.
    pub hw_version: String,
    /// `ddb.adapterType`.
    pub adapter_type: String,
    /// `ddb.toolsVersion`.
    pub tools_version: String,
}

/// Renders a new descriptor in qemu-img's layout: header fields, an empty
/// line or the parent hint, the extent lines, then the disk database with
/// the BIOS geometry of the adapter (VDF 1.1, "The Disk Database").
pub fn render(
    cid: u32,
    parent: Option<(u32, &str)>,
    create_type: &str,
    extents: &[ExtentLine],
    capacity_sectors: u64,
    ddb: &DiskDatabase,
) -> String {
    let parent_cid = parent.map_or(NO_PARENT, |p| p.0);
    let hint = match parent {
        Some((_, name)) => format!("parentFileNameHint=\"{name}\"\n"),
        None => "\n".to_string(),
    };
    let mut lines = String::new();
    for e in extents {
        let access = match e.access {
            Access::ReadWrite => "RW",
            Access::ReadOnly => "RDONLY",
            Access::Denied => "NOACCESS",
        };
        match e.kind {
            ExtentType::Zero => lines.push_str(&format!("{access} {} ZERO\n", e.sectors)),
            k if k.has_offset() => lines.push_str(&format!(
                "{access} {} {} \"{}\" {}\n",
                e.sectors,
                k.word(),
                e.file,
                e.offset
            )),
            k => lines.push_str(&format!(
                "{access} {} {} \"{}\"\n",
                e.sectors,
                k.word(),
                e.file
            )),
        }
    }
    // IDE disks are addressed with 16 heads, SCSI adapters with 255.
    let heads: u64 = if ddb.adapter_type == "ide" { 16 } else { 255 };
    let cylinders = capacity_sectors / (heads * 63);
    format!(
        "# Disk DescriptorFile\nversion=1\nCID={cid:x}\nparentCID={parent_cid:x}\ncreateType=\"{create_type}\"\n{hint}# Extent description\n{lines}\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"{}\"\nddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"{heads}\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"{}\"\nddb.toolsVersion = \"{}\"\n",
        ddb.hw_version, ddb.adapter_type, ddb.tools_version
    )
}

/// Whether `head` (the start of a file) looks like a descriptor: after any
/// comment lines, a `version=1`, `2` or `3` line.
pub fn probe_text(head: &[u8]) -> bool {
    let mut rest = head;
    loop {
        if rest.first() == Some(&b'#') {
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => rest = &rest[end + 1..],
                None => return false,
            }
            continue;
        }
        return rest.len() >= 10
            && rest.starts_with(b"version=")
            && matches!(rest[8], b'1' | b'2' | b'3')
            && matches!(rest[9], b'\n' | b'\r');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAT: &str = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"f.raw\" 0\n";

    #[test]
    fn reads_a_flat_descriptor() {
        let d = parse_file(FLAT, "x.vmdk").unwrap();
        assert_eq!(d.cid, 0x1234_5678);
        assert_eq!(d.parent_cid, NO_PARENT);
        assert_eq!(d.create_type, "monolithicFlat");
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.extents[0].file, "f.raw");
        assert_eq!(d.extents[0].sectors, 2048);
    }

    #[test]
    fn extent_lines_follow_their_type() {
        let bad = |l: &str| matches!(parse_extent_line(l), Err(VmdkError::InvalidExtentLine(_)));
        assert!(bad("RW 2048 FLAT \"f\""));
        assert!(bad("RW 2048 FLAT \"f\" -5"));
        assert!(bad("RW 2048 SPARSE \"f\" 0"));
        assert!(bad("RW 2048 ZERO \"f\""));
        assert!(bad("RW 2048 FOO \"f\" 0"));
        assert_eq!(parse_extent_line("RW 0 FLAT \"f\" 0").unwrap(), None);
        assert_eq!(parse_extent_line("RW 2048 FLAT f 0").unwrap(), None);
        assert_eq!(parse_extent_line("version=1").unwrap(), None);
        let zero = parse_extent_line("RW 8 ZERO").unwrap().unwrap();
        assert_eq!(zero.kind, ExtentType::Zero);
        let big = parse_extent_line("RW 99999999999999999999 FLAT \"f\" 0")
            .unwrap()
            .unwrap();
        assert_eq!(big.sectors, i64::MAX as u64);
    }

    #[test]
    fn content_ids_are_found_as_qemu_finds_them() {
        assert_eq!(hex_value("parentCID=ffffffff\n", "CID"), Some(0xffff_ffff));
        assert_eq!(hex_value("CID=xyz", "CID"), None);
        assert_eq!(hex_value("CID=0x1f\n", "CID"), Some(0x1f));
        assert_eq!(
            quoted_value("createType=monolithicFlat\nRW 1 FLAT \"f\" 0", "createType"),
            Some("onolithicFlat\nRW 1 FLAT ".to_string())
        );
    }

    #[test]
    fn cid_is_replaced_in_place() {
        let t = with_cid(FLAT, 0xabcdef01);
        assert!(t.contains("CID=abcdef01\nparentCID=ffffffff"));
        assert!(with_cid(FLAT, 0xabc).contains("CID=abc\nparentCID"));
    }

    #[test]
    fn resizing_rewrites_the_extent_line_and_geometry() {
        let text = "RW 2048 FLAT \"a\" 0\nRW 4 SPARSE \"b\"\nddb.geometry.cylinders = \"2\"\nddb.geometry.heads = \"16\"\n";
        let t = with_extent_sectors(text, 1, 99);
        assert!(
            t.contains("RW 2048 FLAT \"a\" 0\nRW 99 SPARSE \"b\"\n"),
            "{t}"
        );
        let t = with_cylinders(text, 16 * 63 * 7);
        assert!(t.contains("cylinders = \"7\"\n"), "{t}");
    }

    #[test]
    fn probing_text() {
        assert!(probe_text(b"# Disk DescriptorFile\nversion=1\nCID=1\n"));
        assert!(probe_text(b"version=3\n"));
        assert!(!probe_text(b"version=4\n"));
        assert!(!probe_text(b"#x\n\nversion=1\n"));
        assert!(!probe_text(b"version = 1\n"));
    }
}
