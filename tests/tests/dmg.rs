//! The vendor dmg driver (`vendor/dmg`), loaded from its drop-in manifest,
//! against qemu-img: the sample image and UDIF images built here from the
//! format's description (koly trailer, XML property list or resource fork,
//! blkx tables with zero, raw, ignored, zlib and bzip2 chunks, a disk past
//! 4 GiB) read as qemu-img reads them (`info`, `map`, `compare`, `convert`,
//! `measure`, `dd`), and damaged trailers and tables fail as qemu-img fails,
//! under a 1 GiB address-space limit.
//!
//! The installed qemu-img has no dmg-bzip2 module, so bzip2 chunks are
//! checked against the bytes they were made from instead.

use flate2::{Compress, Compression, FlushCompress};
use qimg_tests::vendor::{converts_as_qemu_img, fixture, reads_as_qemu_img, sample};
use qimg_tests::Fixture;

/// Chunk entry types (Apple's UDIF blkx types).
const ZERO: u32 = 0;
const RAW: u32 = 1;
const IGNORE: u32 = 2;
const ZLIB: u32 = 0x8000_0005;
const BZIP2: u32 = 0x8000_0006;
const LZFSE: u32 = 0x8000_0007;
const COMMENT: u32 = 0x7fff_fffe;
const LAST: u32 = 0xffff_ffff;

/// One chunk to build: its type, sector count and the guest bytes it
/// holds (compressed here as its type says; empty for zeros).
struct Chunk {
    kind: u32,
    sectors: u64,
    data: Vec<u8>,
}

fn chunk(kind: u32, sectors: u64, fill: u8) -> Chunk {
    if kind == ZERO || kind == IGNORE {
        let data = Vec::new();
        return Chunk {
            kind,
            sectors,
            data,
        };
    }
    let mut data = vec![0u8; (sectors * 512) as usize];
    // Half the chunk holds the pattern, so that compression has work.
    let half = data.len() / 2;
    data[..half].fill(fill);
    Chunk {
        kind,
        sectors,
        data,
    }
}

/// One zlib stream of `data`.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut z = Compress::new(Compression::default(), true);
    z.compress_vec(data, &mut out, FlushCompress::Finish)
        .expect("deflate");
    out
}

/// RFC 4648 base64, in lines of 52 characters as Apple's tools write them.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for (n, group) in bytes.chunks(3).enumerate() {
        if n % 13 == 0 {
            out.push_str("\n\t\t\t");
        }
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ABC[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out.push('\n');
    out
}

/// How the tables are stored.
#[derive(Clone, Copy, PartialEq)]
enum Store {
    Xml,
    ResourceFork,
}

/// A dmg of `tables` (each: first sector and chunks), its data fork first,
/// then the tables, then the koly trailer. Returns the image and the guest
/// bytes it should read as. `fix` may change a table's bytes before they
/// are stored.
fn build(
    fx: &Fixture,
    tables: &[(u64, Vec<Chunk>)],
    store: Store,
    fix: &dyn Fn(&mut Vec<u8>),
) -> (Vec<u8>, Vec<u8>) {
    let mut image = Vec::new();
    let mut guest = Vec::new();
    let mut encoded = Vec::new();
    for (first, chunks) in tables {
        let mut table = vec![0u8; 204];
        table[..4].copy_from_slice(b"mish");
        table[4..8].copy_from_slice(&1u32.to_be_bytes());
        table[8..16].copy_from_slice(&first.to_be_bytes());
        let mut sector = 0u64;
        for c in chunks {
            let stored = match c.kind {
                RAW => c.data.clone(),
                ZLIB => deflate(&c.data),
                BZIP2 => {
                    let path = fx.path("chunk.bin");
                    std::fs::write(&path, &c.data).expect("write chunk");
                    fx.sh("bzip2 -c chunk.bin > chunk.bz2");
                    std::fs::read(fx.path("chunk.bz2")).expect("read chunk.bz2")
                }
                _ => Vec::new(),
            };
            let mut e = [0u8; 40];
            e[..4].copy_from_slice(&c.kind.to_be_bytes());
            e[8..16].copy_from_slice(&sector.to_be_bytes());
            e[16..24].copy_from_slice(&c.sectors.to_be_bytes());
            e[24..32].copy_from_slice(&(image.len() as u64).to_be_bytes());
            e[32..40].copy_from_slice(&(stored.len() as u64).to_be_bytes());
            table.extend_from_slice(&e);
            image.extend_from_slice(&stored);
            if c.kind != COMMENT && c.kind != LAST {
                sector += c.sectors;
                if c.kind == ZERO || c.kind == IGNORE {
                    // Past 64 MiB (the disk past 4 GiB) the guest bytes
                    // are not kept.
                    if c.sectors < 1 << 17 {
                        guest.resize(guest.len() + (c.sectors * 512) as usize, 0);
                    }
                } else {
                    guest.extend_from_slice(&c.data);
                }
            }
        }
        let mut end = [0u8; 40];
        end[..4].copy_from_slice(&LAST.to_be_bytes());
        end[8..16].copy_from_slice(&sector.to_be_bytes());
        table.extend_from_slice(&end);
        fix(&mut table);
        encoded.push(table);
    }
    let sectors = tables
        .iter()
        .map(|(first, chunks)| {
            first
                + chunks
                    .iter()
                    .filter(|c| c.kind != COMMENT && c.kind != LAST)
                    .map(|c| c.sectors)
                    .sum::<u64>()
        })
        .max()
        .unwrap_or(0);
    let forks_at = image.len() as u64;
    let mut koly = vec![0u8; 512];
    koly[..4].copy_from_slice(b"koly");
    koly[4..8].copy_from_slice(&4u32.to_be_bytes());
    koly[8..12].copy_from_slice(&512u32.to_be_bytes());
    koly[0x20..0x28].copy_from_slice(&forks_at.to_be_bytes());
    match store {
        Store::Xml => {
            let mut xml = String::from(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">\n<dict>\n\t<key>resource-fork</key>\n\t<dict>\n\t\t<key>blkx</key>\n\t\t<array>\n",
            );
            for table in &encoded {
                xml.push_str("\t\t<dict>\n\t\t\t<key>Data</key>\n\t\t\t<data>");
                xml.push_str(&base64(table));
                xml.push_str("\t\t\t</data>\n\t\t</dict>\n");
            }
            xml.push_str("\t\t</array>\n\t</dict>\n</dict>\n</plist>\n");
            image.extend_from_slice(xml.as_bytes());
            koly[0xd8..0xe0].copy_from_slice(&forks_at.to_be_bytes());
            koly[0xe0..0xe8].copy_from_slice(&(xml.len() as u64).to_be_bytes());
        }
        Store::ResourceFork => {
            let mut data = Vec::new();
            for table in &encoded {
                data.extend_from_slice(&(table.len() as u32).to_be_bytes());
                data.extend_from_slice(table);
            }
            let mut fork = vec![0u8; 256];
            fork[..4].copy_from_slice(&256u32.to_be_bytes());
            fork[8..12].copy_from_slice(&(data.len() as u32).to_be_bytes());
            fork.extend_from_slice(&data);
            image.extend_from_slice(&fork);
            koly[0x28..0x30].copy_from_slice(&forks_at.to_be_bytes());
            koly[0x30..0x38].copy_from_slice(&(fork.len() as u64).to_be_bytes());
        }
    }
    koly[0x1ec..0x1f4].copy_from_slice(&sectors.to_be_bytes());
    image.extend_from_slice(&koly);
    (image, guest)
}

/// Two tables with every chunk type qemu-img reads here.
fn mixed() -> Vec<(u64, Vec<Chunk>)> {
    vec![
        (
            0,
            vec![
                chunk(RAW, 8, 0x11),
                chunk(COMMENT, 0, 0),
                chunk(ZLIB, 16, 0x22),
                chunk(ZERO, 8, 0),
                chunk(IGNORE, 4, 0),
            ],
        ),
        (36, vec![chunk(ZLIB, 8, 0x33), chunk(RAW, 3, 0x44)]),
    ]
}

/// Writes a built image and its guest bytes (`NAME.raw`).
fn write(fx: &Fixture, name: &str, built: (Vec<u8>, Vec<u8>)) {
    std::fs::write(fx.path(name), built.0).expect("write dmg");
    std::fs::write(fx.path(&format!("{name}.raw")), built.1).expect("write raw");
}

#[test]
fn the_sample_reads_as_qemu_img_reads_it() {
    let fx = fixture("dmg_sample");
    if sample(&fx, "simple-dmg.dmg") {
        reads_as_qemu_img(&fx, "dmg", "simple-dmg.dmg");
        fx.same(&["compare", "-f", "dmg", "simple-dmg.dmg", "simple-dmg.dmg"]);
    }
}

#[test]
fn xml_and_resource_fork_tables_read_as_qemu_img_reads_them() {
    let fx = fixture("dmg_built");
    write(&fx, "xml.dmg", build(&fx, &mixed(), Store::Xml, &|_| ()));
    write(
        &fx,
        "rsrc.dmg",
        build(&fx, &mixed(), Store::ResourceFork, &|_| ()),
    );
    for image in ["xml.dmg", "rsrc.dmg"] {
        reads_as_qemu_img(&fx, "dmg", image);
        fx.same(&["compare", image, &format!("{image}.raw")]);
        fx.same_effect(
            &[
                "dd",
                &format!("if={image}"),
                "of={}",
                "bs=512",
                "skip=5",
                "count=30",
            ],
            "part.raw",
        );
    }
    // An odd file length: the trailer is found in the last sectors anyway.
    fx.sh("cp xml.dmg odd.dmg && printf abc >> odd.dmg");
    reads_as_qemu_img(&fx, "dmg", "odd.dmg");
}

#[test]
fn a_disk_past_4_gib_reads_as_qemu_img_reads_it() {
    let fx = fixture("dmg_big");
    let zeros = (5u64 << 30) / 512;
    let tables = vec![(0, vec![chunk(ZERO, zeros, 0), chunk(ZLIB, 16, 0x55)])];
    let (image, _) = build(&fx, &tables, Store::Xml, &|_| ());
    std::fs::write(fx.path("big.dmg"), image).expect("write");
    for output in ["human", "json"] {
        let out = format!("--output={output}");
        fx.same(&["info", &out, "big.dmg"]);
        fx.same(&["map", &out, "big.dmg"]);
    }
    // qemu-img dd counts `count` from the image's start, skipped blocks
    // included: these are the three blocks around the chunk at 5 GiB.
    let block = (5u64 << 30) / 4096;
    let skip = format!("skip={}", block - 1);
    let count = format!("count={}", block + 2);
    fx.same_effect(
        &["dd", "if=big.dmg", "of={}", "bs=4096", &skip, &count],
        "tail.raw",
    );
    let tail = std::fs::read(fx.path("ours.tail.raw")).expect("read");
    assert_eq!(tail[4096], 0x55, "the chunk past 4 GiB was read");
}

#[test]
fn a_data_fork_past_4_gib_reads_as_qemu_img_reads_it() {
    // The image after a 5 GiB hole: the data fork and the property list
    // start past 4 GiB in the file.
    let fx = fixture("dmg_far");
    let (image, guest) = build(&fx, &mixed(), Store::Xml, &|_| ());
    let gap = 5u64 << 30;
    let koly = image.len() - 512;
    let mut moved = image.clone();
    let xml_at = u64::from_be_bytes(image[koly + 0xd8..][..8].try_into().unwrap());
    moved[koly + 0x18..][..8].copy_from_slice(&gap.to_be_bytes());
    moved[koly + 0xd8..][..8].copy_from_slice(&(gap + xml_at).to_be_bytes());
    let file = std::fs::File::create(fx.path("far.dmg")).expect("create");
    file.set_len(gap).expect("make the hole");
    std::os::unix::fs::FileExt::write_all_at(&file, &moved, gap).expect("write");
    std::fs::write(fx.path("far.dmg.raw"), guest).expect("write raw");
    reads_as_qemu_img(&fx, "dmg", "far.dmg");
    fx.same(&["compare", "far.dmg", "far.dmg.raw"]);
}

#[test]
fn bzip2_chunks_decompress_to_what_they_were_made_from() {
    let fx = fixture("dmg_bzip2");
    let tables = vec![(
        0,
        vec![
            chunk(BZIP2, 64, 0x66),
            chunk(ZERO, 8, 0),
            chunk(BZIP2, 3, 0x77),
        ],
    )];
    write(&fx, "bz.dmg", build(&fx, &tables, Store::Xml, &|_| ()));
    let ours = fx.qimg(&["convert", "-O", "raw", "bz.dmg", "bz.out"]);
    assert_eq!(ours.status, 0, "{ours:?}");
    fx.oracle(&["compare", "-f", "raw", "-F", "raw", "bz.out", "bz.dmg.raw"]);
    let ours = fx.qimg(&["compare", "-F", "raw", "bz.dmg", "bz.dmg.raw"]);
    assert_eq!(ours.stdout, "Images are identical.\n", "{ours:?}");
    // A bzip2 stream that yields more than its chunk's sectors is an error.
    let fix = |t: &mut Vec<u8>| t[204 + 16..204 + 24].copy_from_slice(&32u64.to_be_bytes());
    write(&fx, "long.dmg", build(&fx, &tables, Store::Xml, &fix));
    let ours = fx.qimg(&["convert", "-O", "raw", "long.dmg", "long.out"]);
    assert_eq!(ours.status, 1, "{ours:?}");
    assert!(ours.stderr.contains("Input/output error"), "{ours:?}");
}

#[test]
fn unknown_and_lzfse_chunks_are_skipped_as_qemu_img_skips_them() {
    // This qemu-img has no lzfse module: it warns on open, and the
    // chunk's sectors fail to read.
    let fx = fixture("dmg_lzfse");
    let tables = vec![(
        0,
        vec![
            chunk(RAW, 4, 0x11),
            chunk(LZFSE, 4, 0x22),
            chunk(0x8000_0004, 4, 0x33),
            chunk(RAW, 4, 0x44),
        ],
    )];
    write(&fx, "l.dmg", build(&fx, &tables, Store::Xml, &|_| ()));
    fx.same(&["info", "l.dmg"]);
    fx.same(&["dd", "if=l.dmg", "of=a.raw", "bs=512", "count=4"]);
    fx.same(&["convert", "-O", "raw", "l.dmg", "l.raw"]);
}

#[test]
fn writes_and_creation_are_refused_as_qemu_img_refuses_them() {
    let fx = fixture("dmg_write");
    write(&fx, "a.dmg", build(&fx, &mixed(), Store::Xml, &|_| ()));
    fx.same(&["resize", "a.dmg", "2M"]);
    fx.same(&["create", "-f", "dmg", "new.dmg", "1M"]);
    fx.same(&["convert", "-O", "dmg", "a.dmg", "out.dmg"]);
    fx.same(&["check", "a.dmg"]);
}

#[test]
fn hostile_trailers_and_tables_fail_as_qemu_img_fails() {
    let fx = fixture("dmg_hostile");
    let (image, _) = build(&fx, &mixed(), Store::Xml, &|_| ());
    let koly = image.len() as u64 - 512;
    std::fs::write(fx.path("base.dmg"), &image).expect("write");
    let (rsrc, _) = build(&fx, &mixed(), Store::ResourceFork, &|_| ());
    let rkoly = rsrc.len() as u64 - 512;
    std::fs::write(fx.path("rbase.dmg"), &rsrc).expect("write");
    let be32 = |v: u32| v.to_be_bytes().to_vec();
    let be64 = |v: u64| v.to_be_bytes().to_vec();
    let xml_at = u64::from_be_bytes(image[koly as usize + 0xd8..][..8].try_into().unwrap());
    let rsrc_at = u64::from_be_bytes(rsrc[rkoly as usize + 0x28..][..8].try_into().unwrap());
    let edits: &[(&str, &str, u64, Vec<u8>)] = &[
        ("no-koly", "base", koly, b"kolx".to_vec()),
        ("data-fork", "base", koly + 0x18, be64(koly + 1)),
        ("xml-at-koly", "base", koly + 0xd8, be64(koly)),
        ("xml-long", "base", koly + 0xe0, be64(koly)),
        ("xml-huge", "base", koly + 0xe0, be64(u64::MAX)),
        ("xml-none", "base", koly + 0xe0, be64(0)),
        ("sectors-neg", "base", koly + 0x1ec, be64(1 << 63)),
        // Found by the dmg fuzz target: the size overflowed.
        (
            "sectors-max",
            "base",
            koly + 0x1ec,
            be64((i64::MAX as u64) / 512 + 1),
        ),
        ("sectors-more", "base", koly + 0x1ec, be64(100)),
        ("sectors-fewer", "base", koly + 0x1ec, be64(20)),
        ("no-close", "base", koly - 30, b"<daty>".to_vec()),
        ("rsrc-at-koly", "rbase", rkoly + 0x28, be64(rkoly)),
        ("rsrc-long", "rbase", rkoly + 0x30, be64(rkoly)),
        ("rsrc-offset", "rbase", rsrc_at, be32(u32::MAX)),
        ("rsrc-count0", "rbase", rsrc_at + 8, be32(0)),
        ("rsrc-count", "rbase", rsrc_at + 8, be32(u32::MAX - 100)),
        ("rsrc-res0", "rbase", rsrc_at + 256, be32(0)),
        ("rsrc-res-huge", "rbase", rsrc_at + 256, be32(u32::MAX)),
        ("zlib-bad", "base", 8 * 512 + 3, b"\xff\xff\xff".to_vec()),
        (
            "xml-garbage",
            "base",
            xml_at + 200,
            b"<data>####</data>".to_vec(),
        ),
    ];
    for (name, base, offset, bytes) in edits {
        let image = format!("{name}.dmg");
        fx.patched_copy(&format!("{base}.dmg"), &image, &[(*offset, bytes)]);
        check_hostile(&fx, name, &image);
    }
    // Tables whose chunks are larger than qemu-img allows.
    let big_sectors =
        |t: &mut Vec<u8>| t[204 + 40 * 2 + 16..][..8].copy_from_slice(&(131_073u64).to_be_bytes());
    write(
        &fx,
        "count.dmg",
        build(&fx, &mixed(), Store::Xml, &big_sectors),
    );
    let big_length =
        |t: &mut Vec<u8>| t[204 + 32..][..8].copy_from_slice(&((64u64 << 20) + 1).to_be_bytes());
    write(
        &fx,
        "length.dmg",
        build(&fx, &mixed(), Store::Xml, &big_length),
    );
    for name in ["count", "length"] {
        let ours = fx.qimg_bounded(&["info", &format!("{name}.dmg")]);
        let theirs = fx.qemu_img(&["info", &format!("{name}.dmg")]);
        assert_eq!(ours.status, 1, "{ours:?}");
        assert_eq!(theirs.status, 1, "{theirs:?}");
        // qemu-img prints the limit on a line of its own, then "Invalid
        // argument"; qimg says it in the open error.
        let limit = theirs
            .stderr
            .lines()
            .next()
            .unwrap()
            .replace("qemu-img: ", "");
        assert!(ours.stderr.contains(&limit), "{ours:?} {theirs:?}");
    }
    // Truncated: the data fork's chunks lie past the file's end.
    fx.sh("dd if=base.dmg of=cut.dmg bs=512 count=12 status=none");
    check_hostile(&fx, "cut", "cut.dmg");
    fx.sh("head -c 300 base.dmg > tiny.dmg");
    check_hostile(&fx, "tiny", "tiny.dmg");
}

/// `info` (both outputs), `compare` and `convert` of a damaged image do
/// what qemu-img does, qimg under a 1 GiB address-space limit.
fn check_hostile(fx: &Fixture, name: &str, image: &str) {
    fx.same_bounded(&["info", image]);
    fx.same_bounded(&["info", "-f", "dmg", "--output=json", image]);
    fx.same_bounded(&["compare", image, "base.dmg"]);
    converts_as_qemu_img(fx, image, name);
}

#[test]
fn a_property_list_too_short_for_its_tables_is_refused() {
    // qemu-img 10.0.2 opens such an image with no chunk at all and then
    // crashes reading it; qimg refuses to open it.
    let fx = fixture("dmg_short_xml");
    let (image, _) = build(&fx, &mixed(), Store::Xml, &|_| ());
    let koly = image.len() as u64 - 512;
    std::fs::write(fx.path("base.dmg"), &image).expect("write");
    fx.patched_copy(
        "base.dmg",
        "short.dmg",
        &[(koly + 0xe0, 20u64.to_be_bytes())],
    );
    let ours = fx.qimg_bounded(&["info", "short.dmg"]);
    assert_eq!(ours.status, 1, "{ours:?}");
    assert!(ours.stderr.contains("no blkx chunks"), "{ours:?}");
}
