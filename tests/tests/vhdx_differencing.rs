//! Differencing VHDX disks (Hyper-V checkpoints, `.avhdx`), beyond qemu-img
//! (which refuses them): `create -b PARENT -F vhdx` makes one, reads go
//! through to the parent, writes land in the child. qemu-img can neither
//! make nor read them, so a child with a partially present block (its
//! sector bitmap block) is built from [MS-VHDX] in the test, and what qimg
//! reads is checked against the same data laid over a raw copy of the
//! parent, with the real `qemu-img compare`.

use qimg_tests::Fixture;

const MIB: u64 = 1 << 20;
/// The parent's size, and its data: pattern 1 over blocks 0 and 1 (the
/// child's partial block), and over parts of blocks 3 and 4.
const PARENT: &str = "qemu-img create -q -f vhdx base.vhdx 64M && \
    qemu-io -f vhdx -c 'write -P 1 0 12M' -c 'write -P 1 24M 2M' -c 'write -P 1 32M 4M' \
    base.vhdx >/dev/null && \
    qemu-img convert -f vhdx -O raw base.vhdx expected.raw";
/// qimg's default block for 64 MiB: 8 MiB, 512 blocks per chunk.
const BLOCK: u64 = 8 * MIB;
const CHUNK_RATIO: u64 = 512;
/// Sectors of block 1 the built child holds, by (first sector in the
/// block, count).
const PRESENT: &[(u64, u64)] = &[(0, 1), (3, 5), (4096, 8)];

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Where the BAT region of the VHDX `file` starts (its region table at
/// 192 KiB, the BAT's by its GUID).
fn bat_offset(file: &[u8]) -> u64 {
    // 2DC27766-F623-4200-9D64-115E9BFD4A08, as stored.
    let bat = [
        0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A,
        0x08,
    ];
    let table = 192 * 1024;
    (0..2)
        .map(|i| table + 16 + 32 * i)
        .find(|&e| file[e..e + 16] == bat)
        .map(|e| le64(file, e + 16))
        .expect("BAT region")
}

/// Lays `data` at guest `offset` of the raw file `expected.raw`.
fn expect(fx: &Fixture, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(fx.path("expected.raw"))
        .expect("open expected.raw");
    f.write_all_at(data, offset).expect("write expected.raw");
}

/// Turns the empty differencing disk `child.vhdx` into one holding the
/// sectors [`PRESENT`] of block 1 (pattern 0x55, through a sector bitmap
/// block), all of block 2 (pattern 0x66) and block 3 as ZERO; lays the
/// same over `expected.raw`.
fn build_child(fx: &Fixture) {
    let mut file = std::fs::read(fx.path("child.vhdx")).expect("read child");
    let bat = bat_offset(&file) as usize;
    let end = (file.len() as u64).next_multiple_of(MIB);
    let (partial, full, bitmap) = (end, end + BLOCK, end + 2 * BLOCK);
    file.resize((bitmap + MIB) as usize, 0);
    for &(first, count) in PRESENT {
        let at = (partial + first * 512) as usize;
        file[at..at + count as usize * 512].fill(0x55);
        expect(fx, BLOCK + first * 512, &vec![0x55; count as usize * 512]);
        // Block 1's sectors follow block 0's in the chunk's bitmap.
        for s in first..first + count {
            let bit = BLOCK / 512 + s;
            file[(bitmap + bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    // A sector this file holds as zeros, others the parent shows through.
    file[(partial + 3 * 512) as usize..(partial + 4 * 512) as usize].fill(0);
    expect(fx, BLOCK + 3 * 512, &[0; 512]);
    file[full as usize..(full + BLOCK) as usize].fill(0x66);
    expect(fx, 2 * BLOCK, &vec![0x66; BLOCK as usize]);
    expect(fx, 3 * BLOCK, &vec![0; BLOCK as usize]);
    let entries = [
        (1, ((partial / MIB) << 20) | 7),
        (2, ((full / MIB) << 20) | 6),
        (3, 2),
        (CHUNK_RATIO, ((bitmap / MIB) << 20) | 6),
    ];
    for (index, entry) in entries {
        let at = bat + index as usize * 8;
        file[at..at + 8].copy_from_slice(&u64::to_le_bytes(entry));
    }
    fx.write_sparse("child.vhdx", &file);
}

/// A fixture with [`PARENT`] and `child.vhdx`, an empty differencing disk
/// over it.
fn with_child(name: &str) -> Fixture {
    let fx = Fixture::new(name);
    fx.sh(PARENT);
    make_child(&fx, "base.vhdx", "child.vhdx");
    fx
}

/// `qimg create -b PARENT -F vhdx CHILD`, which names the parent as it
/// makes the child.
fn make_child(fx: &Fixture, parent: &str, child: &str) {
    let out = fx.qimg(&["create", "-f", "vhdx", "-b", parent, "-F", "vhdx", child]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let named = format!("backing_file={parent}");
    assert!(out.stdout.contains(&named), "{}", out.stdout);
}

/// The child reads as `expected.raw`, by qimg's convert and compare, and
/// the converted bytes by the real qemu-img compare.
fn reads_as_expected(fx: &Fixture, child: &str) {
    let out = fx.qimg(&["convert", "-O", "raw", child, "got.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.same_raw("got.raw", "expected.raw");
    let same = fx.qimg(&["compare", "-F", "raw", child, "expected.raw"]);
    assert_eq!(same.status, 0, "{}{}", same.stdout, same.stderr);
}

#[test]
fn a_created_child_reads_as_its_parent_and_names_it() {
    let fx = with_child("vhdx_diff_create");
    reads_as_expected(&fx, "child.vhdx");
    let info = fx.qimg(&["info", "--output=json", "child.vhdx"]);
    assert!(
        info.stdout.contains("\"backing-filename\": \"base.vhdx\""),
        "{}",
        info.stdout
    );
    // Everything is the parent's: depth 1 throughout.
    let map = fx.qimg(&["map", "--output=json", "child.vhdx"]);
    assert_eq!(map.status, 0, "{}", map.stderr);
    assert!(!map.stdout.contains("\"depth\": 0"), "{}", map.stdout);
    // The parent file may sit elsewhere: the locator's relative path.
    fx.sh("mkdir sub");
    make_child(&fx, "../base.vhdx", "sub/c.vhdx");
    reads_as_expected(&fx, "sub/c.vhdx");
}

#[test]
fn partially_present_blocks_read_through_their_sector_bitmap() {
    let fx = with_child("vhdx_diff_partial");
    build_child(&fx);
    reads_as_expected(&fx, "child.vhdx");
    // What the child holds is depth 0, what shows through is the parent's.
    let map = fx.qimg(&["map", "--output=json", "child.vhdx"]).stdout;
    let first = map.lines().next().unwrap_or_default();
    assert!(
        first.contains("\"start\": 0, \"length\": 8388608, \"depth\": 1"),
        "{map}"
    );
    assert!(
        map.contains("\"start\": 8388608, \"length\": 512, \"depth\": 0")
            && map.contains("\"start\": 8389120, \"length\": 1024, \"depth\": 1"),
        "{map}"
    );
}

#[test]
fn writes_land_in_the_child_and_leave_the_parent_alone() {
    let fx = with_child("vhdx_diff_write");
    fx.sh("cp base.vhdx base.orig");
    build_child(&fx);
    // Writes into a partial block, a NOT_PRESENT block, a ZERO block, and
    // zeros over the parent's data.
    fx.sh("cp expected.raw src.raw && qemu-io -f raw \
         -c 'write -P 7 8389120 1024' -c 'write -P 8 100k 4k' -c 'write -P 9 25M 64k' \
         -c 'write -z 33M 1M' -c 'write -z 0 8M' src.raw >/dev/null && cp src.raw expected.raw");
    let out = fx.qimg(&[
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "vhdx",
        "src.raw",
        "child.vhdx",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    reads_as_expected(&fx, "child.vhdx");
    let same = fx.qemu_img(&["compare", "base.vhdx", "base.orig"]);
    assert_eq!(same.status, 0, "{}", same.stdout);
    // The parent's header is untouched too: the child still opens.
    assert_eq!(fx.qimg(&["info", "child.vhdx"]).status, 0);
}

#[test]
fn a_changed_or_missing_parent_is_refused() {
    let fx = with_child("vhdx_diff_parent");
    // qemu-io's first write gives the parent a new DataWriteGuid.
    fx.sh("cp base.vhdx base.orig && qemu-io -f vhdx -c 'write -P 3 0 4k' base.vhdx >/dev/null");
    let out = fx.qimg(&["convert", "-O", "raw", "child.vhdx", "x.raw"]);
    assert_eq!(out.status, 1);
    assert!(
        out.stderr
            .contains("'base.vhdx' is not the parent of this differencing VHDX"),
        "{}",
        out.stderr
    );
    fx.sh("rm base.vhdx");
    let out = fx.qimg(&["convert", "-O", "raw", "child.vhdx", "x.raw"]);
    assert_eq!(out.status, 1);
    assert!(
        out.stderr.contains("No such file or directory"),
        "{}",
        out.stderr
    );
    // info opens the child alone, as qemu-img opens any overlay.
    let out = fx.qimg(&["info", "child.vhdx"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("backing file: base.vhdx"),
        "{}",
        out.stdout
    );
    fx.sh("mv base.orig base.vhdx");
    let out = fx.qimg(&["convert", "-O", "raw", "child.vhdx", "x.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
}

#[test]
fn differencing_creation_refuses_what_it_cannot_make() {
    let fx = Fixture::new("vhdx_diff_refuse");
    fx.sh(PARENT);
    fx.sh("qemu-img create -q -f qcow2 q.qcow2 64M");
    for (args, message) in [
        (
            &["-o", "subformat=fixed", "-b", "base.vhdx", "-F", "vhdx"][..],
            "A differencing VHDX cannot be fixed",
        ),
        (
            &["-b", "q.qcow2", "-F", "qcow2"][..],
            "backing_fmt must be 'vhdx'",
        ),
        (&["-b", "q.qcow2", "-F", "vhdx"][..], "q.qcow2"),
        (
            &["-b", "base.vhdx", "-F", "vhdx", "-o", "size=32M"][..],
            "A differencing VHDX must be the size of its parent",
        ),
    ] {
        let mut cmd = vec!["create", "-q", "-f", "vhdx"];
        cmd.extend_from_slice(args);
        cmd.push("c.vhdx");
        let out = fx.qimg(&cmd);
        assert_eq!(out.status, 1, "{args:?}");
        assert!(out.stderr.contains(message), "{args:?}: {}", out.stderr);
    }
}
