//! Differencing VHDs (Hyper-V checkpoints) read over their parent, beyond
//! qemu-img (which reads them as dynamic disks without one). qemu-img
//! cannot make them, so each child is built from the specification: a
//! dynamic disk written by qemu-io, turned into a differencing disk (its
//! disk type, parent unique id and a parent locator) with only the sectors
//! it wrote marked present in its block bitmaps. What qimg reads is checked
//! against the same writes applied to a raw copy of the parent, with the
//! real `qemu-img compare`.

use qimg_tests::Fixture;

const MIB: u64 = 1 << 20;
/// The child's writes: (pattern, guest offset, length), each inside one
/// 2 MiB block and sector-aligned.
const WRITES: &[(u8, u64, u64)] = &[(0x22, MIB, 4096), (0x33, 4 * MIB + 512, 1024)];

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// The ones' complement sum VHD checksums use, over `b` with its checksum
/// field (`field..field + 4`) taken as zero.
fn checksum(b: &[u8], field: usize) -> [u8; 4] {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |s, (_, &x)| s.wrapping_add(u32::from(x)));
    (!sum).to_be_bytes()
}

/// A locator entry's platform code and its path bytes.
struct Locator {
    code: &'static [u8; 4],
    data: Vec<u8>,
}

fn utf16le(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// Makes `child` a differencing disk of `parent`: the parent's unique id
/// (or `uuid` instead), the locators given, and block bitmaps with only
/// [`WRITES`] present. `child` is a dynamic disk qemu-io wrote [`WRITES`]
/// into.
fn make_differencing(fx: &Fixture, child: &str, parent: &str, locators: &[Locator]) {
    let base = std::fs::read(fx.path(parent)).expect("read parent");
    let base_footer = if base.starts_with(b"conectix") {
        &base[..512]
    } else {
        &base[base.len() - 512..]
    };
    let uuid = base_footer[68..84].to_vec();
    let mut file = std::fs::read(fx.path(child)).expect("read child");
    let footer_at = file.len() - 512;
    let mut footer = file[..512].to_vec();
    footer[60..64].copy_from_slice(&4u32.to_be_bytes());
    let sum = checksum(&footer, 64);
    footer[64..68].copy_from_slice(&sum);
    // The locators' data goes where the footer was; the footer follows it.
    let mut tail = Vec::new();
    let header_at = be64(&footer, 16) as usize;
    let mut header = file[header_at..header_at + 1024].to_vec();
    header[40..56].copy_from_slice(&uuid);
    for (i, locator) in locators.iter().enumerate() {
        let space = locator.data.len().div_ceil(512).max(1);
        let at = footer_at + tail.len();
        let entry = &mut header[576 + 24 * i..600 + 24 * i];
        entry[..4].copy_from_slice(locator.code);
        entry[4..8].copy_from_slice(&(space as u32).to_be_bytes());
        entry[8..12].copy_from_slice(&(locator.data.len() as u32).to_be_bytes());
        entry[16..24].copy_from_slice(&(at as u64).to_be_bytes());
        let mut data = locator.data.clone();
        data.resize(space * 512, 0);
        tail.extend(data);
    }
    let sum = checksum(&header, 36);
    header[36..40].copy_from_slice(&sum);
    file[header_at..header_at + 1024].copy_from_slice(&header);
    file[..512].copy_from_slice(&footer);
    // Only the sectors written are present in their blocks.
    let table = be64(&header, 16) as usize;
    let block_size = u64::from(be32(&header, 32));
    let mut bitmaps = std::collections::HashMap::new();
    for &(_, offset, len) in WRITES {
        let index = (offset / block_size) as usize;
        let bitmap = be32(&file, table + 4 * index) as usize * 512;
        bitmaps
            .entry(bitmap)
            .or_insert_with(Vec::new)
            .push((offset, len));
    }
    for (bitmap, runs) in bitmaps {
        file[bitmap..bitmap + 512].fill(0);
        for (offset, len) in runs {
            for sector in (offset % block_size) / 512..(offset % block_size + len) / 512 {
                file[bitmap + (sector / 8) as usize] |= 0x80 >> (sector % 8);
            }
        }
    }
    file.truncate(footer_at);
    file.extend(tail);
    file.extend(footer);
    fx.write_sparse(child, &file);
}

/// A parent filled with one pattern, a dynamic child qemu-io wrote
/// [`WRITES`] into, and `expected.raw`: the parent's bytes with the writes.
fn parent_and_child(fx: &Fixture, parent_opts: &str) {
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        parent_opts,
        "base.vhd",
        "8M",
    ]);
    fx.qemu_io_cmds("vpc", "base.vhd", &["write -P 0x11 0 8M"]);
    fx.oracle(&["create", "-q", "-f", "vpc", "child.vhd", "8M"]);
    fx.oracle(&[
        "convert",
        "-f",
        "vpc",
        "-O",
        "raw",
        "base.vhd",
        "expected.raw",
    ]);
    let writes: Vec<String> = WRITES
        .iter()
        .map(|(p, o, l)| format!("write -P {p:#x} {o} {l}"))
        .collect();
    let writes: Vec<&str> = writes.iter().map(String::as_str).collect();
    fx.qemu_io_cmds("vpc", "child.vhd", &writes);
    fx.qemu_io_cmds("raw", "expected.raw", &writes);
}

/// qimg reads `child.vhd` as `expected.raw`: directly (`compare`), flattened
/// to raw and to qcow2 (checked by the real `qemu-img compare`).
fn reads_as_expected(fx: &Fixture) {
    let same = fx.qimg(&["compare", "-F", "raw", "child.vhd", "expected.raw"]);
    assert_eq!(same.status, 0, "{same:?}");
    for (format, out) in [("raw", "flat.raw"), ("qcow2", "flat.qcow2")] {
        let converted = fx.qimg(&["convert", "-O", format, "child.vhd", out]);
        assert_eq!(converted.status, 0, "{converted:?}");
        let checked = fx.qemu_img(&["compare", "-F", "raw", out, "expected.raw"]);
        assert_eq!(checked.status, 0, "{out}: {checked:?}");
    }
}

#[test]
fn a_differencing_disk_reads_over_its_parent() {
    for parent_opts in ["subformat=dynamic", "subformat=fixed"] {
        let fx = Fixture::new("vpc_differencing");
        parent_and_child(&fx, parent_opts);
        // qemu-img reads the child alone: only the present sectors.
        make_differencing(
            &fx,
            "child.vhd",
            "base.vhd",
            &[
                Locator {
                    code: b"W2ku",
                    data: utf16le("C:\\Hyper-V\\Disks\\elsewhere.vhd"),
                },
                Locator {
                    code: b"W2ru",
                    data: utf16le(".\\base.vhd"),
                },
            ],
        );
        reads_as_expected(&fx);
        let info = fx.qimg(&["info", "child.vhd"]);
        assert!(info.stdout.contains("backing file: base.vhd"), "{info:?}");
        // Present sectors are the child's; the rest comes from the parent.
        let map = fx.qimg(&["map", "--output=json", "child.vhd"]).stdout;
        assert!(
            map.contains(&format!(
                "{{ \"start\": {MIB}, \"length\": 4096, \"depth\": 0, \"present\": true"
            )),
            "{map}"
        );
        assert!(
            map.contains("{ \"start\": 0, \"length\": 1048576, \"depth\": 1"),
            "{map}"
        );
        // Writing is refused, and leaves the child as it was.
        let before = std::fs::read(fx.path("child.vhd")).unwrap();
        let resized = fx.qimg(&["resize", "child.vhd", "16M"]);
        assert_eq!(resized.status, 1, "{resized:?}");
        let written = fx.qimg(&["convert", "-n", "-O", "vpc", "expected.raw", "child.vhd"]);
        assert_eq!(written.status, 1, "{written:?}");
        assert_eq!(before, std::fs::read(fx.path("child.vhd")).unwrap());
    }
}

#[test]
fn an_absolute_windows_locator_is_looked_for_beside_the_child() {
    let fx = Fixture::new("vpc_differencing_absolute");
    parent_and_child(&fx, "subformat=dynamic");
    make_differencing(
        &fx,
        "child.vhd",
        "base.vhd",
        &[Locator {
            code: b"W2ku",
            data: utf16le("C:\\Hyper-V\\Disks\\base.vhd"),
        }],
    );
    reads_as_expected(&fx);
}

#[test]
fn a_parent_with_another_unique_id_is_refused() {
    let fx = Fixture::new("vpc_differencing_mismatch");
    parent_and_child(&fx, "subformat=dynamic");
    fx.oracle(&["create", "-q", "-f", "vpc", "other.vhd", "8M"]);
    make_differencing(
        &fx,
        "child.vhd",
        "other.vhd",
        &[Locator {
            code: b"W2ru",
            data: utf16le(".\\base.vhd"),
        }],
    );
    let out = fx.qimg(&["convert", "-O", "raw", "child.vhd", "out.raw"]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("is not the parent of this differencing VHD"),
        "{out:?}"
    );
    assert!(!fx.path("out.raw").exists());
}
