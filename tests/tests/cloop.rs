//! The vendor cloop driver (`vendor/cloop`), loaded from its drop-in
//! manifest, against qemu-img: the sample image and V2.0 images built here
//! from the format's description (preamble, offsets table, zlib blocks)
//! read as qemu-img reads them (`info`, `map`, `compare`, `convert`,
//! `measure`), and damaged headers, tables and blocks fail as qemu-img
//! fails, under a 1 GiB address-space limit.

use flate2::{Compress, Compression, FlushCompress};
use qimg_tests::vendor::{converts_as_qemu_img, fixture, reads_as_qemu_img, sample};

/// The preamble qemu-img probes for.
const MAGIC: &[u8] =
    b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";
/// Block size of the images built here.
const BLOCK: usize = 4096;
/// Blocks of the images built here.
const BLOCKS: usize = 12;

/// One zlib stream of `data`.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut z = Compress::new(Compression::default(), true);
    z.compress_vec(data, &mut out, FlushCompress::Finish)
        .expect("deflate");
    out
}

/// A cloop image of [`BLOCKS`] blocks: block N holds the byte N + 1 in its
/// first half and zeros after, block 5 is all zeros.
fn built() -> Vec<u8> {
    let mut image = MAGIC.to_vec();
    image.resize(128, 0);
    image.extend_from_slice(&(BLOCK as u32).to_be_bytes());
    image.extend_from_slice(&(BLOCKS as u32).to_be_bytes());
    let streams: Vec<Vec<u8>> = (0..BLOCKS)
        .map(|n| {
            let mut block = vec![0u8; BLOCK];
            if n != 5 {
                block[..BLOCK / 2].fill(n as u8 + 1);
            }
            deflate(&block)
        })
        .collect();
    let mut at = (image.len() + (BLOCKS + 1) * 8) as u64;
    for stream in &streams {
        image.extend_from_slice(&at.to_be_bytes());
        at += stream.len() as u64;
    }
    image.extend_from_slice(&at.to_be_bytes());
    for stream in &streams {
        image.extend_from_slice(stream);
    }
    image
}

#[test]
fn the_sample_reads_as_qemu_img_reads_it() {
    let fx = fixture("cloop_sample");
    if sample(&fx, "simple-pattern.cloop") {
        reads_as_qemu_img(&fx, "cloop", "simple-pattern.cloop");
    }
}

#[test]
fn zlib_blocks_read_as_qemu_img_reads_them() {
    let fx = fixture("cloop_built");
    std::fs::write(fx.path("a.cloop"), built()).expect("write");
    reads_as_qemu_img(&fx, "cloop", "a.cloop");
    let raw = std::fs::read(fx.path("oracle.raw")).expect("read");
    assert_eq!(raw[3 * BLOCK], 4, "the blocks were decompressed");
    // Reads that cross blocks, and a piece of one block.
    for (skip, count) in [("skip=7", "count=3"), ("skip=3000", "count=20")] {
        fx.same_effect(
            &["dd", "if=a.cloop", "of={}", "bs=512", skip, count],
            "part.raw",
        );
    }
}

#[test]
fn writes_and_creation_are_refused_as_qemu_img_refuses_them() {
    let fx = fixture("cloop_write");
    std::fs::write(fx.path("a.cloop"), built()).expect("write");
    fx.same(&["resize", "a.cloop", "2M"]);
    fx.same(&["create", "-f", "cloop", "new.cloop", "1M"]);
    fx.same(&["convert", "-O", "cloop", "a.cloop", "out.cloop"]);
    fx.same(&["check", "a.cloop"]);
}

#[test]
fn hostile_headers_and_tables_fail_as_qemu_img_fails() {
    let fx = fixture("cloop_hostile");
    let image = built();
    std::fs::write(fx.path("base.cloop"), &image).expect("write");
    let be32 = |v: u32| v.to_be_bytes().to_vec();
    let be64 = |v: u64| v.to_be_bytes().to_vec();
    let table = |i: u64| 136 + i * 8;
    let first = u64::from_be_bytes(image[136..144].try_into().unwrap());
    let edits: &[(&str, u64, Vec<u8>)] = &[
        ("magic", 12, b"V3".to_vec()),
        ("bs-odd", 128, be32(1000)),
        ("bs-zero", 128, be32(0)),
        ("bs-huge", 128, be32(128 << 20)),
        ("bs-max", 128, be32(64 << 20)),
        ("n-max", 132, be32(u32::MAX)),
        ("n-limit", 132, be32(0x1fff_ffff)),
        ("n-table", 132, be32(0x0400_0000)),
        ("n-past-file", 132, be32(0x03ff_ffff)),
        ("n-zero", 132, be32(0)),
        ("n-less", 132, be32(3)),
        ("down", table(4), be64(first)),
        ("step-huge", table(12), be64(first + (200 << 20))),
        ("past-end", table(12), be64(1 << 40)),
        ("corrupt-block", first + 2, b"\xff\xff\xff\xff".to_vec()),
        ("short-block", table(1), be64(first + 4)),
    ];
    for (name, offset, bytes) in edits {
        let image = format!("{name}.cloop");
        fx.patched_copy("base.cloop", &image, &[(*offset, bytes)]);
        fx.same_bounded(&["info", &image]);
        fx.same_bounded(&["info", "-f", "cloop", "--output=json", &image]);
        fx.same_bounded(&[
            "compare",
            "-f",
            "cloop",
            "-F",
            "cloop",
            &image,
            "base.cloop",
        ]);
        converts_as_qemu_img(&fx, &image, name);
    }
}
