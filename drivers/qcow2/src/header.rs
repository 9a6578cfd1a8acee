//! The image header and its extensions (qcow2.txt "Header", "Header
//! extensions"): parsing with qemu's validation messages, and serialising the
//! header cluster back in the order qemu writes it.

use crate::error::{Error, Result};

/// "QFI\xfb".
pub const MAGIC: u32 = 0x5146_49fb;
/// Length of a version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Smallest version 3 header (through `header_length`).
pub const V3_MIN_HEADER_LEN: u32 = 104;
/// The header length qemu writes for version 3 (with `compression_type` and padding).
pub const V3_HEADER_LEN: u32 = 112;
/// Smallest and largest `cluster_bits` (qemu's implementation limit is 2 MiB).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// See [`MIN_CLUSTER_BITS`].
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Longest backing file name the spec allows.
pub const MAX_BACKING_NAME: usize = 1023;

/// Incompatible feature bits.
pub mod incompat {
    /// Refcounts may be inconsistent.
    pub const DIRTY: u64 = 1 << 0;
    /// Metadata may be corrupt: no writes.
    pub const CORRUPT: u64 = 1 << 1;
    /// Guest data lives in an external data file.
    pub const DATA_FILE: u64 = 1 << 2;
    /// `compression_type` is not zlib.
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    /// Extended L2 entries (subclusters).
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// Every bit this driver understands.
    pub const KNOWN: u64 = DIRTY | CORRUPT | DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2;
}

/// Compatible feature bits.
pub mod compat {
    /// Lazy refcount updates.
    pub const LAZY_REFCOUNTS: u64 = 1 << 0;
}

/// Auto-clear feature bits.
pub mod autoclear {
    /// The bitmaps extension is consistent.
    pub const BITMAPS: u64 = 1 << 0;
    /// The external data file is a valid raw image.
    pub const DATA_FILE_RAW: u64 = 1 << 1;
}

/// Header extension types.
mod ext_type {
    pub const END: u32 = 0;
    pub const BACKING_FORMAT: u32 = 0xe279_2aca;
    pub const FEATURE_TABLE: u32 = 0x6803_f857;
    pub const BITMAPS: u32 = 0x2385_2875;
    pub const CRYPTO: u32 = 0x0537_be77;
    pub const DATA_FILE: u32 = 0x4441_5441;
}

/// The bitmaps extension's fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BitmapsExt {
    /// Number of bitmaps in the directory.
    pub nb_bitmaps: u32,
    /// Size of the directory in bytes.
    pub directory_size: u64,
    /// Offset of the directory.
    pub directory_offset: u64,
}

/// Header extensions, as found (unknown ones are kept to be written back).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// Backing file format name.
    pub backing_format: Option<String>,
    /// External data file name.
    pub data_file: Option<String>,
    /// The feature name table's raw entries.
    pub feature_table: Option<Vec<u8>>,
    /// The bitmaps extension.
    pub bitmaps: Option<BitmapsExt>,
    /// Full disk encryption header (offset, length).
    pub crypto: Option<(u64, u64)>,
    /// Extensions this driver does not know, in order.
    pub unknown: Vec<(u32, Vec<u8>)>,
}

/// A parsed qcow2 header (field names as the spec names them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Where the backing file name is stored (0: none).
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size.
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table occupies.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits ([`incompat`]).
    pub incompatible_features: u64,
    /// Compatible feature bits ([`compat`]).
    pub compatible_features: u64,
    /// Auto-clear feature bits ([`autoclear`]).
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Length of the header structure.
    pub header_length: u32,
    /// 0 zlib, 1 zstd.
    pub compression_type: u8,
    /// Header bytes after `compression_type` up to `header_length`, kept as found.
    pub tail: Vec<u8>,
    /// The header extensions.
    pub ext: Extensions,
    /// The backing file name.
    pub backing_file: Option<String>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_be_bytes(x)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_be_bytes(x)
}

/// A string stored without terminator; invalid UTF-8 is replaced.
fn text(bytes: &[u8]) -> String {
    // Names are C strings to qemu: they end at the first NUL.
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Round up to the extension padding of 8 bytes.
fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

impl Header {
    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// True if the image has an external data file.
    pub fn has_data_file(&self) -> bool {
        self.incompatible_features & incompat::DATA_FILE != 0
    }

    /// True if the external data file is kept valid as a raw image.
    pub fn data_file_raw(&self) -> bool {
        self.autoclear_features & autoclear::DATA_FILE_RAW != 0
    }

    /// True if extended L2 entries are in use.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & incompat::EXTENDED_L2 != 0
    }

    /// True if the image is marked dirty.
    pub fn dirty(&self) -> bool {
        self.incompatible_features & incompat::DIRTY != 0
    }

    /// True if the image is marked corrupt.
    pub fn corrupt(&self) -> bool {
        self.incompatible_features & incompat::CORRUPT != 0
    }

    /// True if lazy refcounts are enabled.
    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & compat::LAZY_REFCOUNTS != 0
    }

    /// Parses the header from the image's first cluster (`head` holds as much
    /// of it as the file has; `head` shorter than a header is an error).
    /// Only the checks that need nothing but the header cluster are made here;
    /// [`crate::image`] checks the tables against the file.
    pub fn parse(head: &[u8]) -> Result<Header> {
        // A file shorter than the header reads as zeros past its end, as
        // qemu-img reads it: the fields then fail their own checks
        // ("Unsupported cluster size: 2^0", "qcow2 header too short").
        let padded;
        let head = if head.len() < V3_MIN_HEADER_LEN as usize {
            let mut bytes = head.to_vec();
            bytes.resize(V3_MIN_HEADER_LEN as usize, 0);
            padded = bytes;
            &padded[..]
        } else {
            head
        };
        if be32(head, 0) != MAGIC {
            return Err(Error::invalid("Image is not in qcow2 format"));
        }
        let mut h = Header {
            version: be32(head, 4),
            backing_file_offset: be64(head, 8),
            backing_file_size: be32(head, 16),
            cluster_bits: be32(head, 20),
            size: be64(head, 24),
            crypt_method: be32(head, 32),
            l1_size: be32(head, 36),
            l1_table_offset: be64(head, 40),
            refcount_table_offset: be64(head, 48),
            refcount_table_clusters: be32(head, 56),
            nb_snapshots: be32(head, 60),
            snapshots_offset: be64(head, 64),
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            ..Header::default()
        };
        if !(2..=3).contains(&h.version) {
            return Err(Error::unsupported(format!(
                "Unsupported qcow2 version {}",
                h.version
            )));
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
            return Err(Error::invalid(format!(
                "Unsupported cluster size: 2^{}",
                h.cluster_bits
            )));
        }
        let cluster_size = h.cluster_size();
        if h.version == 3 {
            h.incompatible_features = be64(head, 72);
            h.compatible_features = be64(head, 80);
            h.autoclear_features = be64(head, 88);
            h.refcount_order = be32(head, 96);
            h.header_length = be32(head, 100);
            if h.header_length < V3_MIN_HEADER_LEN {
                return Err(Error::invalid("qcow2 header too short"));
            }
            if u64::from(h.header_length) > cluster_size {
                return Err(Error::invalid("qcow2 header exceeds cluster size"));
            }
            let len = h.header_length as usize;
            if len > V3_MIN_HEADER_LEN as usize {
                h.compression_type = head.get(104).copied().unwrap_or(0);
                let mut tail = head.get(105..len.min(head.len())).unwrap_or(&[]).to_vec();
                tail.resize(len - 105, 0);
                h.tail = tail;
            }
        }
        if h.backing_file_offset > cluster_size {
            return Err(Error::invalid("Invalid backing file offset"));
        }
        let ext_end = if h.backing_file_offset != 0 {
            h.backing_file_offset
        } else {
            cluster_size
        };
        h.ext = parse_extensions(head, h.header_length as usize, ext_end as usize)?;
        let unknown = h.incompatible_features & !incompat::KNOWN;
        if unknown != 0 {
            return Err(Error::unsupported(format!(
                "Unsupported qcow2 feature(s): {}",
                feature_names(h.ext.feature_table.as_deref(), unknown)
            )));
        }
        if h.refcount_order > 6 {
            return Err(Error::invalid(
                "Reference count entry width too large; may not exceed 64 bits",
            ));
        }
        let flagged = h.incompatible_features & incompat::COMPRESSION_TYPE != 0;
        // An unknown type is named before the feature bit is looked at.
        match (h.compression_type, flagged) {
            (0, true) => {
                return Err(Error::invalid(
                    "qcow2: Compression type incompatible feature bit must not be set",
                ))
            }
            (0, false) | (1, true) => {}
            (1, false) => {
                return Err(Error::invalid(
                    "qcow2: Compression type incompatible feature bit must be set",
                ))
            }
            (other, _) => {
                return Err(Error::invalid(format!(
                    "qcow2: unknown compression type: {other}"
                )))
            }
        }
        // A name of no bytes is no backing file, as qemu reads it.
        if h.backing_file_offset != 0 && h.backing_file_size != 0 {
            if h.backing_file_size as usize > MAX_BACKING_NAME {
                return Err(Error::invalid("Backing file name too long"));
            }
            let start = h.backing_file_offset as usize;
            let end = start + h.backing_file_size as usize;
            let mut name = head.get(start..end.min(head.len())).unwrap_or(&[]).to_vec();
            name.resize(end - start, 0);
            h.backing_file = Some(text(&name)).filter(|n| !n.is_empty());
        }
        Ok(h)
    }

    /// The header cluster as qemu writes it: fields, extensions (backing
    /// format, data file, encryption, feature table, bitmaps, unknown ones),
    /// end marker, then the backing file name. Updates `backing_file_offset`
    /// and `backing_file_size` to where the name lands.
    pub fn serialize(&mut self) -> Result<Vec<u8>> {
        let cluster_size = self.cluster_size() as usize;
        let mut buf = vec![0u8; self.header_length.max(V2_HEADER_LEN) as usize];
        let mut exts: Vec<(u32, Vec<u8>)> = Vec::new();
        if let Some(f) = &self.ext.backing_format {
            exts.push((ext_type::BACKING_FORMAT, f.as_bytes().to_vec()));
        }
        if let Some(d) = &self.ext.data_file {
            exts.push((ext_type::DATA_FILE, d.as_bytes().to_vec()));
        }
        if let Some((offset, length)) = self.ext.crypto {
            let mut d = offset.to_be_bytes().to_vec();
            d.extend_from_slice(&length.to_be_bytes());
            exts.push((ext_type::CRYPTO, d));
        }
        if self.version >= 3 {
            if let Some(t) = &self.ext.feature_table {
                exts.push((ext_type::FEATURE_TABLE, t.clone()));
            }
        }
        if let Some(b) = &self.ext.bitmaps {
            let mut d = b.nb_bitmaps.to_be_bytes().to_vec();
            d.extend_from_slice(&[0; 4]);
            d.extend_from_slice(&b.directory_size.to_be_bytes());
            d.extend_from_slice(&b.directory_offset.to_be_bytes());
            exts.push((ext_type::BITMAPS, d));
        }
        exts.extend(self.ext.unknown.iter().cloned());
        for (kind, data) in &exts {
            buf.extend_from_slice(&kind.to_be_bytes());
            buf.extend_from_slice(&(data.len() as u32).to_be_bytes());
            buf.extend_from_slice(data);
            buf.resize(pad8(buf.len()), 0);
        }
        buf.extend_from_slice(&[0u8; 8]);
        match &self.backing_file {
            Some(name) => {
                self.backing_file_offset = buf.len() as u64;
                self.backing_file_size = name.len() as u32;
                buf.extend_from_slice(name.as_bytes());
            }
            None => {
                self.backing_file_offset = 0;
                self.backing_file_size = 0;
            }
        }
        if buf.len() > cluster_size {
            return Err(Error::Errno(28, "No space left on device".into()));
        }
        self.write_fields(&mut buf);
        Ok(buf)
    }

    /// Writes the fixed fields into the start of `buf`.
    fn write_fields(&self, buf: &mut [u8]) {
        let mut put = |at: usize, bytes: &[u8]| buf[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &MAGIC.to_be_bytes());
        put(4, &self.version.to_be_bytes());
        put(8, &self.backing_file_offset.to_be_bytes());
        put(16, &self.backing_file_size.to_be_bytes());
        put(20, &self.cluster_bits.to_be_bytes());
        put(24, &self.size.to_be_bytes());
        put(32, &self.crypt_method.to_be_bytes());
        put(36, &self.l1_size.to_be_bytes());
        put(40, &self.l1_table_offset.to_be_bytes());
        put(48, &self.refcount_table_offset.to_be_bytes());
        put(56, &self.refcount_table_clusters.to_be_bytes());
        put(60, &self.nb_snapshots.to_be_bytes());
        put(64, &self.snapshots_offset.to_be_bytes());
        if self.version >= 3 {
            put(72, &self.incompatible_features.to_be_bytes());
            put(80, &self.compatible_features.to_be_bytes());
            put(88, &self.autoclear_features.to_be_bytes());
            put(96, &self.refcount_order.to_be_bytes());
            put(100, &self.header_length.to_be_bytes());
            if self.header_length > V3_MIN_HEADER_LEN {
                put(104, &[self.compression_type]);
                put(105, &self.tail);
            }
        }
    }
}

/// Reads the extensions between the header and `end` (the backing file name
/// or the end of the first cluster).
fn parse_extensions(head: &[u8], start: usize, end: usize) -> Result<Extensions> {
    let mut ext = Extensions::default();
    let mut at = start;
    while at < end {
        if end - at < 8 {
            return Err(Error::invalid("Header extension too large"));
        }
        let kind = be32(head, at);
        let len = be32(head, at + 4) as usize;
        at += 8;
        if len > end - at {
            return Err(Error::invalid("Header extension too large"));
        }
        let mut data = head
            .get(at..(at + len).min(head.len()))
            .unwrap_or(&[])
            .to_vec();
        data.resize(len, 0);
        match kind {
            ext_type::END => break,
            ext_type::BACKING_FORMAT => {
                if len >= 1024 {
                    return Err(Error::invalid(format!(
                        "ERROR: ext_backing_format: len={len} too large (>=1024)"
                    )));
                }
                ext.backing_format = Some(text(&data));
            }
            ext_type::DATA_FILE => ext.data_file = Some(text(&data)),
            ext_type::FEATURE_TABLE => ext.feature_table = Some(data),
            ext_type::BITMAPS => {
                if len != 24 {
                    return Err(Error::invalid("bitmaps_ext: Invalid extension length"));
                }
                ext.bitmaps = Some(BitmapsExt {
                    nb_bitmaps: be32(&data, 0),
                    directory_size: be64(&data, 8),
                    directory_offset: be64(&data, 16),
                });
            }
            ext_type::CRYPTO => {
                if len != 16 {
                    return Err(Error::invalid(format!(
                        "CRYPTO header extension size {len}, but expected size 16"
                    )));
                }
                ext.crypto = Some((be64(&data, 0), be64(&data, 8)));
            }
            other => ext.unknown.push((other, data)),
        }
        at += pad8(len);
    }
    Ok(ext)
}

/// Names unknown incompatible features the way qemu does: names from the
/// image's feature table (read up to the first entry without a name; a
/// last entry cut short counts, zero-padded), then the remaining bits in hex.
fn feature_names(table: Option<&[u8]>, mut mask: u64) -> String {
    let mut parts = Vec::new();
    for chunk in table.unwrap_or(&[]).chunks(48) {
        let mut entry = [0u8; 48];
        entry[..chunk.len()].copy_from_slice(chunk);
        if entry[2] == 0 {
            break;
        }
        let (kind, bit) = (entry[0], entry[1]);
        if kind == 0 && bit < 64 && mask & (1 << bit) != 0 {
            let name = &entry[2..];
            let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            parts.push(text(&name[..len]));
            mask &= !(1 << bit);
        }
    }
    if mask != 0 {
        parts.push(format!("Unknown incompatible feature: {mask:x}"));
    }
    parts.join(", ")
}

/// The feature name table qemu writes into version 3 images.
pub fn feature_table() -> Vec<u8> {
    let entries: [(u8, u8, &str); 8] = [
        (0, 0, "dirty bit"),
        (0, 1, "corrupt bit"),
        (0, 2, "external data file"),
        (0, 3, "compression type"),
        (0, 4, "extended L2 entries"),
        (1, 0, "lazy refcounts"),
        (2, 0, "bitmaps"),
        (2, 1, "raw external data"),
    ];
    let mut out = Vec::with_capacity(entries.len() * 48);
    for (kind, bit, name) in entries {
        let mut e = [0u8; 48];
        e[0] = kind;
        e[1] = bit;
        e[2..2 + name.len()].copy_from_slice(name.as_bytes());
        out.extend_from_slice(&e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 3,
            cluster_bits: 16,
            size: 1 << 20,
            l1_size: 1,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            refcount_order: 4,
            header_length: V3_HEADER_LEN,
            tail: vec![0; 7],
            ext: Extensions {
                backing_format: Some("raw".into()),
                feature_table: Some(feature_table()),
                ..Extensions::default()
            },
            backing_file: Some("b.raw".into()),
            ..Header::default()
        }
    }

    #[test]
    fn serialise_then_parse_round_trips() {
        let mut h = sample();
        let bytes = h.serialize().unwrap();
        assert_eq!(h.backing_file_offset, 0x220 - 0x10);
        assert_eq!(Header::parse(&bytes).unwrap(), h);
    }

    #[test]
    fn unknown_incompatible_bits_are_named() {
        let mut h = sample();
        h.incompatible_features = 1 << 20;
        let bytes = h.serialize().unwrap();
        let e = Header::parse(&bytes).unwrap_err().to_string();
        assert_eq!(
            e,
            "Unsupported qcow2 feature(s): Unknown incompatible feature: 100000"
        );
    }

    #[test]
    fn short_or_foreign_headers_are_refused() {
        assert!(Header::parse(&[0; 10]).is_err());
        assert!(Header::parse(&[0; 200]).is_err());
        // Short files read as zeros past their end, as in qemu-img.
        let short = |bytes: &[u8]| Header::parse(bytes).unwrap_err().to_string();
        assert_eq!(short(b"QFI\xfb\0\0\0\x03"), "Unsupported cluster size: 2^0");
        let mut v3 = b"QFI\xfb\0\0\0\x03".to_vec();
        v3.resize(24, 0);
        v3[23] = 16;
        assert_eq!(short(&v3), "qcow2 header too short");
    }
}
