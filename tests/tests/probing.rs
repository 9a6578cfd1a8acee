//! Never silently raw: a file in a format qemu-img knows but this qimg has
//! no driver for (not installed, disabled or broken) is refused by name,
//! where reading it as raw would hand out the container's bytes as guest
//! data. Each file is made by qemu-img or is one of the shared sample images.

use qimg_tests::{workspace, Fixture};

/// The refusal qimg gives for `file` in `format` with no driver installed.
fn refusal(file: &str, format: &str) -> String {
    format!(
        "qemu-img: Could not open '{file}': image is in {format} format, for which no driver is installed (use -f raw to read its bytes as raw)\n"
    )
}

/// Asserts that `info` and `convert` refuse `file` by format name and that
/// convert leaves no target.
fn assert_refused(fx: &Fixture, file: &str, format: &str) {
    let info = fx.qimg(&["info", file]);
    assert_eq!(
        (info.status, info.stderr.as_str()),
        (1, refusal(file, format).as_str())
    );
    assert_eq!(info.stdout, "");
    let convert = fx.qimg(&["convert", "-O", "raw", file, "out.raw"]);
    assert_eq!(convert.status, 1, "{convert:?}");
    assert!(
        convert
            .stderr
            .contains(&format!("image is in {format} format")),
        "{}",
        convert.stderr
    );
    assert!(
        !fx.path("out.raw").exists(),
        "{file}: convert left a target"
    );
    // Asked for as raw, it opens.
    assert_eq!(fx.qimg(&["info", "-f", "raw", file]).status, 0);
}

#[test]
fn images_qemu_img_makes_without_a_driver_here_are_refused_by_name() {
    let fx = Fixture::new("probe_made");
    // qcow is the one format qemu-img makes that qimg has no driver for.
    let file = "a.qcow";
    fx.oracle(&["create", "-q", "-f", "qcow", file, "4M"]);
    // The oracle probes it as that format, so the magic is real.
    let theirs = fx.oracle(&["info", "--output=json", file]);
    assert!(
        theirs.stdout.contains("\"format\": \"qcow\""),
        "{}",
        theirs.stdout
    );
    assert_refused(&fx, file, "qcow");
    // luks, vdi, vpc, qed, parallels and vhdx have drivers now: their own test
    // files check that qimg probes and describes qemu-img's images of them
    // as qemu-img does.
}

#[test]
fn sample_images_without_a_driver_here_are_refused_by_name() {
    let dir = workspace().join("../shared/sample-images");
    // shared/ lies beside the checkout on developer machines and in CI; a
    // bare clone elsewhere has no samples to check (as in tests/vmdk.rs).
    let Ok(manifest) = std::fs::read_to_string(dir.join("MANIFEST.tsv")) else {
        eprintln!("no {}: sample images not checked", dir.display());
        return;
    };
    let fx = Fixture::new("probe_samples");
    let mut refused = 0;
    for line in manifest.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (packed, name, probed) = (cols[0], cols[2], cols[6]);
        // Formats qimg has drivers for, and files qemu-img cannot probe.
        if [
            "-",
            "raw",
            "qcow2",
            "vmdk",
            "luks",
            "vdi",
            "vpc",
            "qed",
            "parallels",
            "vhdx",
        ]
        .contains(&probed)
        {
            continue;
        }
        fx.sh(&format!(
            "bunzip2 -c {} > {name}",
            dir.join(packed).display()
        ));
        assert_refused(&fx, name, probed);
        std::fs::remove_file(fx.path(name)).unwrap();
        refused += 1;
    }
    // dmg, cloop and bochs samples.
    assert!(refused >= 3, "only {refused} samples checked");
}

#[test]
fn a_probed_raw_image_never_becomes_another_format() {
    // An overlay whose raw base has no recorded format: the guest writes a
    // qcow2 header naming a host file into sector 0, and commit would copy
    // it into the base, which would then open as that qcow2. Refused as
    // qemu-img refuses it; the base stays raw.
    let fx = Fixture::new("probed_first_sector");
    fx.oracle(&["create", "-q", "-f", "raw", "base.raw", "1M"]);
    fx.make_qcow2("top.qcow2", "backing_file=base.raw,backing_fmt=raw", "1M");
    // Drop the backing format (rename its header extension to an unknown one).
    let bytes = std::fs::read(fx.path("top.qcow2")).expect("read");
    let magic = 0xE279_2ACAu32.to_be_bytes();
    let at = bytes
        .windows(4)
        .position(|w| w == magic)
        .expect("backing format extension");
    fx.patched_copy(
        "top.qcow2",
        "top.qcow2.x",
        &[(at as u64, vec![0x12, 0x34, 0x56, 0x78])],
    );
    fx.sh("mv top.qcow2.x top.qcow2");
    fx.make_qcow2(
        "evil.qcow2",
        "backing_file=/etc/hostname,backing_fmt=raw",
        "1M",
    );
    fx.sh("dd if=evil.qcow2 of=header.bin bs=512 count=1 status=none");
    fx.sh("qemu-io -f qcow2 -c 'write -s header.bin 0 512' top.qcow2 >/dev/null");
    fx.sh("cp base.raw theirs.raw && cp top.qcow2 keep.qcow2");
    let out = fx.qimg(&["commit", "top.qcow2"]);
    assert_eq!(out.status, 1, "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "qemu-img: Block job failed: Operation not permitted\n"
    );
    let info = fx.oracle(&["info", "base.raw"]).stdout;
    assert!(info.contains("file format: raw"), "{info}");
    // qemu-img says the same.
    fx.sh("mv base.raw ours.raw && mv theirs.raw base.raw && cp keep.qcow2 top.qcow2");
    let theirs = fx.qemu_img(&["commit", "top.qcow2"]);
    assert_eq!((theirs.status, theirs.stderr), (out.status, out.stderr));
    // Writing other data there is fine.
    fx.qemu_io_cmds("qcow2", "keep.qcow2", &["write -P 7 0 512"]);
    let out = fx.qimg(&["commit", "keep.qcow2"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
}
