//! VirtualBox differencing images (snapshots) read over their parent and
//! written, beyond qemu-img (which refuses them). VirtualBox links a child
//! to its parent by UUID only, so the parent is named as qemu names a
//! backing image: `backing.file.filename=PARENT`. qemu-img cannot make such
//! a child, so each is built from the VDI header layout: a dynamic image
//! qemu-io wrote, given the differencing type and its parent's UUIDs. What
//! qimg reads is checked with the real `qemu-img compare` against the
//! parent's data with the child's blocks laid over it.

use qimg_tests::Fixture;

/// A 8 MiB parent full of pattern 1, a child that wrote blocks 1 and 5
/// (qemu-io allocates whole 1 MiB blocks, zeros around the data) and marks
/// block 7 as a zero block; `expected.raw` is what the child reads as.
const SETUP: &str = "qemu-img create -q -f vdi base.vdi 8M && \
    qemu-io -f vdi -c 'write -P 1 0 8M' base.vdi >/dev/null && \
    qemu-img create -q -f vdi child.vdi 8M && \
    qemu-io -f vdi -c 'write -P 2 1M 4k' -c 'write -P 3 5M 1M' child.vdi >/dev/null && \
    qemu-img convert -O raw base.vdi expected.raw && \
    qemu-img convert -O raw child.vdi child.raw && \
    for b in 1 5; do dd if=child.raw of=expected.raw bs=1M skip=$b seek=$b count=1 \
        conv=notrunc status=none; done && \
    dd if=/dev/zero of=expected.raw bs=1M seek=7 count=1 conv=notrunc status=none";

/// The child opened over its parent.
const CHILD: &str = "driver=vdi,file.filename=child.vdi,backing.file.filename=base.vdi";

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Makes `child.vdi` a differencing image of `parent`: image type 4, its
/// link UUID the parent's image UUID, its parent-modification UUID the
/// parent's; block 7 a zero block.
fn link(fx: &Fixture, parent: &str) {
    let base = std::fs::read(fx.path(parent)).expect("read parent");
    let mut child = std::fs::read(fx.path("child.vdi")).expect("read child");
    child[0x4c..0x50].copy_from_slice(&4u32.to_le_bytes());
    child[0x1a8..0x1b8].copy_from_slice(&base[0x188..0x198]);
    child[0x1b8..0x1c8].copy_from_slice(&base[0x198..0x1a8]);
    let map = le32(&child, 0x154) as usize;
    child[map + 7 * 4..map + 8 * 4].copy_from_slice(&0xffff_fffeu32.to_le_bytes());
    std::fs::write(fx.path("child.vdi"), child).expect("write child");
}

/// `spec` (an `--image-opts` string) reads as `expected.raw`.
fn reads_as_expected(fx: &Fixture, spec: &str) {
    let out = fx.qimg(&["convert", "--image-opts", spec, "-O", "raw", "got.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.same_raw("got.raw", "expected.raw");
}

#[test]
fn a_child_reads_over_the_parent_it_is_given() {
    let fx = Fixture::new("vdi_diff_read");
    fx.sh(SETUP);
    link(&fx, "base.vdi");
    reads_as_expected(&fx, CHILD);
    let json = r#"json:{"driver": "vdi", "file": {"filename": "child.vdi"}, "backing": {"file": {"filename": "base.vdi"}}}"#;
    let out = fx.qimg(&["convert", json, "-O", "raw", "got.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(
        fx.qimg(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            "got.raw",
            "expected.raw"
        ])
        .status,
        0
    );
    // The parent's blocks at depth 1, the child's own (and its zero block)
    // at depth 0.
    let map = fx.qimg(&["map", "--output=json", "--image-opts", CHILD]);
    assert_eq!(map.status, 0, "{}", map.stderr);
    for line in [
        "\"start\": 0, \"length\": 1048576, \"depth\": 1",
        "\"start\": 1048576, \"length\": 1048576, \"depth\": 0",
        "\"start\": 2097152, \"length\": 3145728, \"depth\": 1",
        "\"start\": 7340032, \"length\": 1048576, \"depth\": 0, \"present\": true, \"zero\": true",
    ] {
        assert!(map.stdout.contains(line), "{line}: {}", map.stdout);
    }
    let info = fx.qimg(&["info", "--image-opts", CHILD]);
    assert!(
        info.stdout.contains("backing file: base.vdi"),
        "{}",
        info.stdout
    );
}

#[test]
fn without_its_parent_named_a_child_is_refused_as_qemu_img_refuses_it() {
    let fx = Fixture::new("vdi_diff_unnamed");
    fx.sh(SETUP);
    link(&fx, "base.vdi");
    fx.same(&["info", "child.vdi"]);
    fx.same(&["convert", "-O", "raw", "child.vdi", "x.raw"]);
    // A parent with another image UUID is refused by name.
    fx.sh("qemu-img create -q -f vdi other.vdi 8M");
    let out = fx.qimg(&[
        "convert",
        "--image-opts",
        "driver=vdi,file.filename=child.vdi,backing.file.filename=other.vdi",
        "-O",
        "raw",
        "x.raw",
    ]);
    assert_eq!(out.status, 1);
    assert!(
        out.stderr
            .contains("'other.vdi' is not the parent of this differencing VDI"),
        "{}",
        out.stderr
    );
    // An image that is not differencing takes no parent, as in qemu-img.
    fx.same(&[
        "info",
        "--image-opts",
        "driver=vdi,file.filename=base.vdi,backing.file.filename=other.vdi",
    ]);
}

#[test]
fn writes_fill_blocks_from_the_parent_and_leave_it_alone() {
    let fx = Fixture::new("vdi_diff_write");
    fx.sh(SETUP);
    link(&fx, "base.vdi");
    fx.sh(
        "cp base.vdi base.orig && cp expected.raw src.raw && qemu-io -f raw \
         -c 'write -P 7 100k 4k' -c 'write -P 8 7M 4k' -c 'write -z 3M 64k' \
         -c 'write -P 9 5M 512' src.raw >/dev/null && cp src.raw expected.raw",
    );
    let out = fx.qimg(&[
        "convert",
        "-n",
        "-f",
        "raw",
        "src.raw",
        "--target-image-opts",
        CHILD,
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    reads_as_expected(&fx, CHILD);
    let same = fx.qemu_img(&["compare", "base.vdi", "base.orig"]);
    assert_eq!(same.status, 0, "{}", same.stdout);
}

#[test]
fn the_parent_name_is_relative_to_the_working_directory() {
    // As VirtualBox keeps them: the snapshot in Snapshots/, the base beside.
    let fx = Fixture::new("vdi_diff_dirs");
    fx.sh(SETUP);
    link(&fx, "base.vdi");
    fx.sh("mkdir Snapshots && mv child.vdi Snapshots/");
    reads_as_expected(
        &fx,
        "driver=vdi,file.filename=Snapshots/child.vdi,backing.file.filename=base.vdi",
    );
}
