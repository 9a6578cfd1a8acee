//! The vendor bochs driver (`vendor/bochs`), loaded from its drop-in
//! manifest, against qemu-img: the sample image and images built here from
//! the format's description (catalog, bitmaps, both header versions) read
//! as qemu-img reads them (`info`, `map`, `compare`, `convert`, `measure`),
//! and damaged headers fail as qemu-img fails, under a 1 GiB address-space
//! limit.

use qimg_tests::vendor::{converts_as_qemu_img, fixture, reads_as_qemu_img, sample};
use qimg_tests::Fixture;

/// Extent size of the images built here.
const EXTENT: u32 = 4096;
/// Disk size of the images built here (256 extents).
const DISK: u64 = 1 << 20;

/// A bochs growing image of [`DISK`] bytes: the catalog maps extent 3 to
/// block 0 (sectors 0, 1 and 5 written), extent 100 to block 1 (all
/// written), extent 7 to block 2 (nothing written) and extent 200 to block
/// 9, past the file's end. `version` is 1 or 2.
fn built(version: u32) -> Vec<u8> {
    let mut head = vec![0u8; 512];
    head[..22].copy_from_slice(b"Bochs Virtual HD Image");
    head[32..39].copy_from_slice(b"Redolog");
    head[48..55].copy_from_slice(b"Growing");
    head[64..68].copy_from_slice(&(version << 16).to_le_bytes());
    head[68..72].copy_from_slice(&512u32.to_le_bytes());
    head[72..76].copy_from_slice(&256u32.to_le_bytes());
    head[76..80].copy_from_slice(&512u32.to_le_bytes());
    head[80..84].copy_from_slice(&EXTENT.to_le_bytes());
    let disk_at = if version == 1 { 84 } else { 88 };
    head[disk_at..disk_at + 8].copy_from_slice(&DISK.to_le_bytes());
    let mut catalog = vec![0xffu8; 256 * 4];
    for (extent, block) in [(3usize, 0u32), (100, 1), (7, 2), (200, 9)] {
        catalog[extent * 4..extent * 4 + 4].copy_from_slice(&block.to_le_bytes());
    }
    let mut image = head;
    image.extend_from_slice(&catalog);
    for (block, bitmap) in [0b0010_0011u8, 0xff, 0].into_iter().enumerate() {
        let mut bits = vec![0u8; 512];
        bits[0] = bitmap;
        image.extend_from_slice(&bits);
        for sector in 0..8u8 {
            image.extend(std::iter::repeat_n(block as u8 * 16 + sector + 1, 512));
        }
    }
    image
}

/// Writes [`built`] as `name` in the fixture.
fn write_built(fx: &Fixture, name: &str, version: u32) {
    std::fs::write(fx.path(name), built(version)).expect("write bochs image");
}

#[test]
fn the_sample_reads_as_qemu_img_reads_it() {
    let fx = fixture("bochs_sample");
    if sample(&fx, "empty.bochs") {
        reads_as_qemu_img(&fx, "bochs", "empty.bochs");
    }
}

#[test]
fn catalog_and_bitmaps_read_as_qemu_img_reads_them() {
    let fx = fixture("bochs_built");
    write_built(&fx, "v2.bochs", 2);
    write_built(&fx, "v1.bochs", 1);
    reads_as_qemu_img(&fx, "bochs", "v2.bochs");
    reads_as_qemu_img(&fx, "bochs", "v1.bochs");
    // Some bytes were really read from the blocks.
    let raw = std::fs::read(fx.path("oracle.raw")).expect("read oracle.raw");
    assert_eq!(raw[3 * 4096 + 5 * 512], 6);
    assert_eq!(raw[100 * 4096 + 7 * 512], 24);
    // Unaligned reads cross sectors with and without data.
    for (skip, count) in [("skip=12700", "count=1300"), ("skip=409599", "count=3")] {
        fx.same_effect(
            &["dd", "if=v2.bochs", "of={}", "bs=1", skip, count],
            "part.raw",
        );
    }
}

#[test]
fn short_files_read_as_zeros_past_their_end() {
    // A header cut after 300 bytes still probes and opens: qemu-img pads
    // the file with zeros.
    let fx = fixture("bochs_short");
    std::fs::write(fx.path("short.bochs"), &built(2)[..300]).expect("write");
    reads_as_qemu_img(&fx, "bochs", "short.bochs");
    std::fs::write(fx.path("cut.bochs"), &built(2)[..2000]).expect("write");
    reads_as_qemu_img(&fx, "bochs", "cut.bochs");
}

#[test]
fn writes_and_creation_are_refused_as_qemu_img_refuses_them() {
    let fx = fixture("bochs_write");
    write_built(&fx, "a.bochs", 2);
    fx.same(&["resize", "a.bochs", "2M"]);
    fx.same(&["create", "-f", "bochs", "new.bochs", "1M"]);
    fx.same(&["create", "-f", "bochs", "new.bochs"]);
    fx.same(&["create", "-f", "bochs", "-o", "help"]);
    fx.same(&["create", "-f", "bochs", "-o", "foo=1", "new.bochs", "1M"]);
    fx.same(&["convert", "-O", "bochs", "a.bochs", "out.bochs"]);
    fx.same(&["convert", "-O", "bochs", "-o", "help"]);
    fx.same(&["check", "a.bochs"]);
    fx.same(&["amend", "-o", "size=2M", "a.bochs"]);
}

#[test]
fn hostile_headers_fail_as_qemu_img_fails() {
    let fx = fixture("bochs_hostile");
    write_built(&fx, "base.bochs", 2);
    let le32 = |v: u32| v.to_le_bytes().to_vec();
    let le64 = |v: u64| v.to_le_bytes().to_vec();
    let edits: &[(&str, u64, Vec<u8>)] = &[
        ("magic", 0, b"bochs".to_vec()),
        ("type", 32, b"Redolog!".to_vec()),
        ("subtype", 48, b"Undoable".to_vec()),
        ("version", 64, le32(0x0003_0000)),
        ("catalog-huge", 72, le32(u32::MAX)),
        ("catalog-limit", 72, le32(0x10_0000)),
        ("catalog-over", 72, le32(0x10_0001)),
        ("catalog-small", 72, le32(255)),
        ("bitmap-zero", 76, le32(0)),
        ("bitmap-huge", 76, le32(u32::MAX)),
        ("extent-zero", 80, le32(0)),
        ("extent-odd", 80, le32(4097)),
        ("extent-huge", 80, le32(1 << 24)),
        ("extent-max", 80, le32(1 << 23)),
        ("header-huge", 68, le32(u32::MAX)),
        ("header-wrap", 68, le32(u32::MAX - 100)),
        ("disk-huge", 88, le64(u64::MAX)),
        ("disk-odd", 88, le64(DISK - 1)),
        ("block-huge", 512 + 3 * 4, le32(0xffff_fffe)),
    ];
    for (name, offset, bytes) in edits {
        let image = format!("{name}.bochs");
        fx.patched_copy("base.bochs", &image, &[(*offset, bytes)]);
        fx.same_bounded(&["info", &image]);
        fx.same_bounded(&["info", "-f", "bochs", "--output=json", &image]);
        converts_as_qemu_img(&fx, &image, name);
    }
}
