//! The vmdk driver against qemu-img 10.0.2: qimg reads what qemu-img and
//! qemu-io wrote (`info`, `map`, `convert -O raw`), and what qimg writes
//! passes `qemu-img check` and `qemu-img compare`.

use qimg_tests::Fixture;

/// Writes qemu-io commands into a vmdk image.
fn io(fx: &Fixture, file: &str, commands: &[&str]) {
    let mut script = String::from("qemu-io -f vmdk");
    for c in commands {
        script.push_str(&format!(" -c '{c}'"));
    }
    script.push_str(&format!(" {file} >/dev/null"));
    fx.sh(&script);
}

/// The pattern every fixture holds: a whole grain, a partial grain and a
/// grain near the end.
const PATTERN: &[&str] = &[
    "write -P 1 0 64k",
    "write -P 2 1028k 8k",
    "write -P 3 3M 64k",
];

/// A fixture with one qemu-made image of `subformat` (`img.vmdk`, 4 MiB,
/// [`PATTERN`] written).
fn made(name: &str, subformat: &str, size: &str) -> Fixture {
    let fx = Fixture::new(name);
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        &format!("subformat={subformat}"),
        "img.vmdk",
        size,
    ]);
    if subformat == "streamOptimized" {
        fx.oracle(&["create", "-q", "-f", "raw", "src.raw", size]);
        fx.sh(&format!(
            "qemu-io -f raw -c 'write -P 1 0 64k' -c 'write -P 2 1028k 8k' -c 'write -P 3 3M 64k' src.raw >/dev/null && rm img.vmdk && qemu-img convert -O vmdk -o subformat={subformat} src.raw img.vmdk"
        ));
    } else {
        io(&fx, "img.vmdk", PATTERN);
    }
    fx
}

/// qimg and qemu-img print the same for `info` and `map`, human and JSON.
fn reads_alike(fx: &Fixture, file: &str) {
    fx.same(&["info", file]);
    fx.same(&["info", "--output=json", file]);
    fx.same(&["map", "--output=json", file]);
    fx.same(&["map", file]);
}

/// `info --output=json` of both tools, without what qimg's host does not
/// show yet for disks of several files (their child nodes and the disk
/// size summed over all of them); errors must be identical.
fn same_info_data(fx: &Fixture, file: &str) {
    let ours = fx.qimg(&["info", "--output=json", file]);
    let theirs = fx.qemu_img(&["info", "--output=json", file]);
    if ours.status != 0 || theirs.status != 0 {
        assert_eq!(ours, theirs, "info {file}");
        return;
    }
    let strip = |text: &str| {
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        if let Some(m) = v.as_object_mut() {
            m.remove("children");
            m.remove("actual-size");
            // The host always shows a dirty flag; qemu-img shows none for
            // extents of mixed grain sizes.
            m.remove("dirty-flag");
        }
        v
    };
    assert_eq!(strip(&ours.stdout), strip(&theirs.stdout), "info {file}");
}

/// `convert -O raw` by qimg gives the bytes qemu-img's gives.
fn converts_alike(fx: &Fixture, file: &str) {
    let ours = fx.qimg(&["convert", "-O", "raw", file, "ours.raw"]);
    assert_eq!(ours.status, 0, "{}", ours.stderr);
    fx.oracle(&["convert", "-O", "raw", file, "theirs.raw"]);
    fx.same_raw("ours.raw", "theirs.raw");
}

macro_rules! read_cases {
    ($($name:ident => ($sub:expr, $size:expr, $check_map:expr)),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fx = made(stringify!($name), $sub, $size);
                if $check_map {
                    reads_alike(&fx, "img.vmdk");
                } else {
                    same_info_data(&fx, "img.vmdk");
                    fx.same(&["map", "--output=json", "img.vmdk"]);
                    fx.same(&["map", "img.vmdk"]);
                }
                converts_alike(&fx, "img.vmdk");
            }
        )+
    };
}

read_cases! {
    reads_monolithic_sparse => ("monolithicSparse", "4M", true),
    reads_monolithic_flat => ("monolithicFlat", "4M", false),
    reads_split_sparse => ("twoGbMaxExtentSparse", "4M", false),
    reads_split_flat => ("twoGbMaxExtentFlat", "4M", false),
    reads_stream_optimized => ("streamOptimized", "4M", true),
    reads_odd_size => ("monolithicSparse", "3300k", true),
}

#[test]
fn reads_several_extents() {
    let fx = Fixture::new("several_extents");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=twoGbMaxExtentSparse",
        "img.vmdk",
        "5G",
    ]);
    io(
        &fx,
        "img.vmdk",
        &["write -P 4 2047M 2M", "write -P 5 4097M 64k"],
    );
    fx.same(&["map", "--output=json", "img.vmdk"]);
    fx.same(&["map", "img.vmdk"]);
    let ours = fx.qimg(&["info", "--output=json", "img.vmdk"]).stdout;
    assert!(ours.contains("\"filename\": \"img-s003.vmdk\""), "{ours}");
    fx.same(&["compare", "img.vmdk", "img.vmdk"]);
}

#[test]
fn reads_zeroed_grains() {
    let fx = Fixture::new("zeroed_grains");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        "img.vmdk",
        "4M",
    ]);
    io(&fx, "img.vmdk", &["write -P 1 0 256k", "write -z 64k 128k"]);
    reads_alike(&fx, "img.vmdk");
    converts_alike(&fx, "img.vmdk");
}

#[test]
fn reads_a_backing_chain() {
    let fx = Fixture::new("backing_chain");
    fx.oracle(&["create", "-q", "-f", "vmdk", "base.vmdk", "4M"]);
    io(&fx, "base.vmdk", &["write -P 1 0 1M"]);
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        "top.vmdk",
    ]);
    io(&fx, "top.vmdk", &["write -P 2 64k 4k"]);
    reads_alike(&fx, "top.vmdk");
    fx.same(&["info", "--backing-chain", "top.vmdk"]);
    converts_alike(&fx, "top.vmdk");
}

#[test]
fn reads_descriptor_with_mixed_extents() {
    let fx = Fixture::new("mixed_extents");
    fx.oracle(&["create", "-q", "-f", "raw", "a.raw", "1M"]);
    fx.sh("qemu-io -f raw -c 'write -P 7 0 4k' a.raw >/dev/null");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=twoGbMaxExtentSparse",
        "s.vmdk",
        "1M",
    ]);
    io(&fx, "s.vmdk", &["write -P 8 512k 64k"]);
    std::fs::write(
        fx.path("m.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"a.raw\" 0\nRW 2048 SPARSE \"s-s001.vmdk\"\nRW 1024 VMFS \"a.raw\"\n",
    )
    .unwrap();
    same_info_data(&fx, "m.vmdk");
    fx.same(&["map", "--output=json", "m.vmdk"]);
    fx.same(&["map", "m.vmdk"]);
    converts_alike(&fx, "m.vmdk");
    // A sparse extent's size comes from its header: a line whose size
    // overflows is no error (qimg refused "Could not refresh total sector
    // count").
    descriptor(
        &fx,
        "big.vmdk",
        &format!(
            "{HEAD}createType=\"twoGbMaxExtentSparse\"\nRW 99999999999999999999 SPARSE \"s-s001.vmdk\"\n"
        ),
    );
    same_info_data(&fx, "big.vmdk");
    fx.same(&["map", "--output=json", "big.vmdk"]);
    // An empty extent file, and an empty image named as vmdk: "File is
    // too small" (qimg said "Image not in VMDK format" and "invalid VMDK
    // image descriptor").
    fx.sh(
        "cp s.vmdk e.vmdk && : > e-s001.vmdk && sed -i 's/s-s001/e-s001/' e.vmdk && : > empty.vmdk",
    );
    fx.same(&["info", "e.vmdk"]);
    fx.same(&["info", "-f", "vmdk", "empty.vmdk"]);
}

#[test]
fn extent_names_resolve_like_qemu() {
    let fx = Fixture::new("extent_names");
    fx.sh("mkdir -p d e && qemu-img create -q -f raw e/a.raw 1M && qemu-io -f raw -c 'write -P 9 0 4k' e/a.raw >/dev/null");
    let abs = fx.path("e/a.raw");
    let text = |name: &str| {
        format!("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"{name}\" 0\n")
    };
    std::fs::write(fx.path("d/up.vmdk"), text("../e/a.raw")).unwrap();
    std::fs::write(fx.path("d/abs.vmdk"), text(&abs.display().to_string())).unwrap();
    std::fs::write(fx.path("d/missing.vmdk"), text("nope.raw")).unwrap();
    for f in ["d/up.vmdk", "d/abs.vmdk", "d/missing.vmdk"] {
        same_info_data(&fx, f);
        fx.same(&["map", "--output=json", f]);
    }
}

/// Unpacks a bzip2'd sample image from `shared/sample-images`, if present.
fn sample(fx: &Fixture, name: &str) -> bool {
    let bz = qimg_tests::workspace().join(format!("../shared/sample-images/{name}.bz2"));
    if !bz.exists() {
        return false;
    }
    fx.sh(&format!("bunzip2 -c {} > {name}", bz.display()));
    true
}

#[test]
fn sample_vmware_stream_reads() {
    let fx = Fixture::new("sample_version3");
    if !sample(&fx, "iotest-version3.vmdk") {
        return;
    }
    fx.same(&["info", "iotest-version3.vmdk"]);
    fx.same(&["map", "--output=json", "iotest-version3.vmdk"]);
    let out = fx.qimg(&["convert", "-O", "raw", "iotest-version3.vmdk", "v3.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&[
        "compare",
        "-f",
        "vmdk",
        "-F",
        "raw",
        "iotest-version3.vmdk",
        "v3.raw",
    ]);
}

/// The manifest's hash of the whole 16 GiB disk (a minute of hashing, so
/// run with `--ignored`; `sample_vmware_stream_reads` checks the same
/// content against qemu-img's reading of it).
#[test]
#[ignore]
fn sample_vmware_stream_has_the_manifest_hash() {
    let fx = Fixture::new("sample_version3_hash");
    if !sample(&fx, "iotest-version3.vmdk") {
        return;
    }
    let out = fx.qimg(&["convert", "-O", "raw", "iotest-version3.vmdk", "v3.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let sum = fx.sh("sha256sum v3.raw | cut -d' ' -f1");
    assert_eq!(
        sum.trim(),
        "0859bb3397bc1d30fa979c80a289ce98bfd6c1141a64594d6f3cc8cd68218faf"
    );
}

#[test]
fn sample_fuzzed_image_is_refused() {
    let fx = Fixture::new("sample_afl9");
    if !sample(&fx, "afl9.vmdk") {
        return;
    }
    let out = fx.same(&["info", "afl9.vmdk"]);
    assert!(out
        .stderr
        .contains("Could not open 'afl9.vmdk': L1 size too big"));
    fx.same(&["convert", "-O", "raw", "afl9.vmdk", "x.raw"]);
}

// ---- creation -------------------------------------------------------------

#[test]
fn create_help_lists_qemu_options() {
    let fx = Fixture::new("create_help");
    fx.same(&["create", "-f", "vmdk", "-o", "help"]);
    fx.same(&["create", "-f", "vmdk", "-o", "help", "x.vmdk"]);
    fx.same(&["convert", "-O", "vmdk", "-o", "help"]);
}

#[test]
fn create_formatting_line_lists_options_in_qemu_order() {
    let fx = Fixture::new("create_line");
    fx.same(&["create", "-f", "vmdk", "x.vmdk", "1M"]);
    fx.same(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on,subformat=monolithicSparse,toolsversion=12,hwversion=7,adapter_type=lsilogic",
        "x.vmdk",
        "1M",
    ]);
}

macro_rules! create_error_cases {
    ($($name:ident => [$($arg:expr),* $(,)?]),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fx = Fixture::new(stringify!($name));
                fx.oracle(&["create", "-q", "-f", "raw", "r.raw", "1M"]);
                fx.same(&[$($arg),*]);
            }
        )+
    };
}

create_error_cases! {
    create_bad_subformat => ["create", "-f", "vmdk", "-o", "subformat=bogus", "x.vmdk", "1M"],
    create_bad_adapter => ["create", "-f", "vmdk", "-o", "adapter_type=IDE", "x.vmdk", "1M"],
    create_compat6_with_hwversion => ["create", "-f", "vmdk", "-o", "compat6=on,hwversion=7", "x.vmdk", "1M"],
    create_flat_zeroed_grain => ["create", "-f", "vmdk", "-o", "subformat=monolithicFlat,zeroed_grain=on", "x.vmdk", "1M"],
    create_raw_backing => ["create", "-f", "vmdk", "-b", "r.raw", "-F", "raw", "x.vmdk"],
    create_missing_backing_unsafe => ["create", "-f", "vmdk", "-u", "-b", "no.vmdk", "-F", "vmdk", "x.vmdk", "1M"],
}

/// The descriptor text of a qimg-made and a qemu-img-made image, with the
/// random CID lines taken out.
fn descriptor_without_cid(fx: &Fixture, file: &str, embedded: bool) -> String {
    let bytes = std::fs::read(fx.path(file)).unwrap();
    let text = if embedded {
        &bytes[512..512 * 21]
    } else {
        &bytes[..]
    };
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    String::from_utf8_lossy(&text[..end])
        .lines()
        .filter(|l| !l.starts_with("CID="))
        .collect::<Vec<_>>()
        .join("\n")
}

macro_rules! create_cases {
    ($($name:ident => ($opts:expr, $size:expr, $embedded:expr, $files:expr)),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fx = Fixture::new(stringify!($name));
                let out = fx.qimg(&["create", "-q", "-f", "vmdk", "-o", $opts, "ours.vmdk", $size]);
                assert_eq!(out.status, 0, "{}", out.stderr);
                fx.oracle(&["create", "-q", "-f", "vmdk", "-o", $opts, "theirs.vmdk", $size]);
                assert_eq!(
                    descriptor_without_cid(&fx, "ours.vmdk", $embedded).replace("ours", "X"),
                    descriptor_without_cid(&fx, "theirs.vmdk", $embedded).replace("theirs", "X"),
                );
                let files: &[&str] = &$files;
                // A descriptor file's length includes the extent names.
                for suffix in files.iter().filter(|s| $embedded || **s != ".vmdk") {
                    let ours = fx.path(&format!("ours{suffix}"));
                    let theirs = fx.path(&format!("theirs{suffix}"));
                    assert_eq!(
                        std::fs::metadata(&ours).map(|m| m.len()).ok(),
                        std::fs::metadata(&theirs).map(|m| m.len()).ok(),
                        "{suffix}"
                    );
                }
                let check = fx.oracle(&["check", "ours.vmdk"]);
                assert!(check.stdout.contains("No errors"), "{}", check.stdout);
                io(&fx, "ours.vmdk", &["write -P 5 0 512"]);
                fx.sh("qemu-io -f vmdk -c 'read -P 5 0 512' ours.vmdk >/dev/null");
            }
        )+
    };
}

create_cases! {
    creates_monolithic_sparse => ("subformat=monolithicSparse", "10M", true, [".vmdk"]),
    creates_compat6 => ("compat6=on,adapter_type=lsilogic", "3M", true, [".vmdk"]),
    creates_zeroed_grain => ("zeroed_grain=on,hwversion=10,toolsversion=99", "1M", true, [".vmdk"]),
    creates_monolithic_flat => ("subformat=monolithicFlat", "1000", false, [".vmdk", "-flat.vmdk"]),
    creates_split_sparse => ("subformat=twoGbMaxExtentSparse", "5G", false, [".vmdk", "-s001.vmdk", "-s002.vmdk", "-s003.vmdk"]),
    creates_split_flat => ("subformat=twoGbMaxExtentFlat,adapter_type=buslogic", "3G", false, [".vmdk", "-f001.vmdk", "-f002.vmdk"]),
}

#[test]
fn creates_an_overlay_naming_its_parent() {
    let fx = Fixture::new("create_overlay");
    fx.oracle(&["create", "-q", "-f", "vmdk", "base.vmdk", "2M"]);
    io(&fx, "base.vmdk", &["write -P 6 0 2M"]);
    let out = fx.qimg(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        "top.vmdk",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let info = fx.oracle(&["info", "--output=json", "top.vmdk"]).stdout;
    let base = fx.oracle(&["info", "--output=json", "base.vmdk"]).stdout;
    let cid = |text: &str| {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["format-specific"]["data"]["cid"].as_u64().unwrap()
    };
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        v["format-specific"]["data"]["parent-cid"].as_u64(),
        Some(cid(&base))
    );
    assert_eq!(v["backing-filename"], "base.vmdk");
    fx.oracle(&["compare", "top.vmdk", "base.vmdk"]);
}

#[test]
fn creates_an_empty_stream_that_reads() {
    let fx = Fixture::new("create_stream");
    let out = fx.qimg(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        "s.vmdk",
        "3M",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["check", "s.vmdk"]);
    fx.same(&["map", "--output=json", "s.vmdk"]);
    fx.oracle(&["create", "-q", "-f", "raw", "z.raw", "3M"]);
    fx.oracle(&["compare", "s.vmdk", "z.raw"]);
}

// ---- conversion into vmdk ---------------------------------------------------

fn source(fx: &Fixture) {
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "5M"]);
    fx.sh("qemu-io -f raw -c 'write -P 1 0 64k' -c 'write -P 2 1M 100k' -c 'write -P 3 4000k 7k' -c 'write -P 0 2M 64k' src.raw >/dev/null");
}

macro_rules! convert_cases {
    ($($name:ident => [$($arg:expr),* $(,)?]),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fx = Fixture::new(stringify!($name));
                source(&fx);
                let mut args = vec!["convert"];
                args.extend([$($arg),*]);
                args.extend(["src.raw", "out.vmdk"]);
                let out = fx.qimg(&args);
                assert_eq!(out.status, 0, "{}", out.stderr);
                fx.oracle(&["check", "out.vmdk"]);
                fx.oracle(&["compare", "-F", "raw", "out.vmdk", "src.raw"]);
                let back = fx.qimg(&["convert", "-O", "raw", "out.vmdk", "back.raw"]);
                assert_eq!(back.status, 0, "{}", back.stderr);
                fx.oracle(&["compare", "-f", "raw", "-F", "raw", "back.raw", "src.raw"]);
            }
        )+
    };
}

convert_cases! {
    converts_to_monolithic_sparse => ["-O", "vmdk"],
    converts_to_monolithic_flat => ["-O", "vmdk", "-o", "subformat=monolithicFlat"],
    converts_to_split_sparse => ["-O", "vmdk", "-o", "subformat=twoGbMaxExtentSparse"],
    converts_to_split_flat => ["-O", "vmdk", "-o", "subformat=twoGbMaxExtentFlat"],
    converts_to_stream => ["-O", "vmdk", "-o", "subformat=streamOptimized"],
    converts_compressed_to_sparse => ["-c", "-O", "vmdk"],
    converts_to_zeroed_grain => ["-O", "vmdk", "-o", "zeroed_grain=on"],
    converts_one_thread => ["-m", "1", "-O", "vmdk", "-o", "subformat=streamOptimized"],
}

/// Little-endian u64 at `at`.
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn stream_output_follows_the_specification() {
    let fx = Fixture::new("stream_layout");
    source(&fx);
    let out = fx.qimg(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        "src.raw",
        "s.vmdk",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let b = std::fs::read(fx.path("s.vmdk")).unwrap();
    let n = b.len();
    assert_eq!(n % 512, 0);
    assert_eq!(&b[0..4], b"KDMV");
    assert_eq!(u32_at(&b, 4), 3, "version 3");
    assert_eq!(u64_at(&b, 56), u64::MAX, "gdOffset = GD_AT_END");
    let text = String::from_utf8_lossy(&b[512..512 * 21]);
    assert!(text.contains("ddb.toolsVersion = \"2147483647\""));
    assert!(text.contains("createType=\"streamOptimized\""));
    // End-of-stream marker, footer, footer marker.
    assert!(b[n - 512..].iter().all(|&x| x == 0), "EOS marker");
    assert_eq!(&b[n - 1024..n - 1020], b"KDMV", "footer");
    assert_eq!(u32_at(&b, n - 1536 + 12), 3, "footer marker");
    let gd = u64_at(&b, n - 1024 + 56);
    assert_eq!(u32_at(&b, (gd as usize - 1) * 512 + 12), 2, "GD marker");
    // The first grain is behind a grain marker for LBA 0.
    let overhead = u64_at(&b, 64) as usize * 512;
    assert_eq!(u64_at(&b, overhead), 0);
    assert!(u32_at(&b, overhead + 8) > 0);
}

#[test]
fn converts_vmdk_to_vmdk() {
    let fx = made("vmdk_to_vmdk", "streamOptimized", "4M");
    let out = fx.qimg(&["convert", "-O", "vmdk", "img.vmdk", "out.vmdk"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["compare", "img.vmdk", "out.vmdk"]);
}

#[test]
fn converts_into_an_existing_image() {
    let fx = Fixture::new("convert_n");
    source(&fx);
    fx.oracle(&["create", "-q", "-f", "vmdk", "t.vmdk", "5M"]);
    let out = fx.qimg(&["convert", "-n", "-O", "vmdk", "src.raw", "t.vmdk"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["check", "t.vmdk"]);
    fx.oracle(&["compare", "-F", "raw", "t.vmdk", "src.raw"]);
}

#[test]
fn converts_into_an_overlay() {
    let fx = Fixture::new("convert_overlay");
    source(&fx);
    fx.oracle(&["convert", "-O", "vmdk", "src.raw", "base.vmdk"]);
    fx.sh("cp src.raw changed.raw && qemu-io -f raw -c 'write -P 9 3M 4k' changed.raw >/dev/null");
    let out = fx.qimg(&[
        "convert",
        "-O",
        "vmdk",
        "-B",
        "base.vmdk",
        "-F",
        "vmdk",
        "changed.raw",
        "top.vmdk",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["compare", "-F", "raw", "top.vmdk", "changed.raw"]);
}

// ---- hostile input ----------------------------------------------------------

fn descriptor(fx: &Fixture, name: &str, body: &str) {
    std::fs::write(fx.path(name), body).unwrap();
}

const HEAD: &str = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n";

macro_rules! hostile_descriptor_cases {
    ($($name:ident => $body:expr),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fx = Fixture::new(stringify!($name));
                fx.oracle(&["create", "-q", "-f", "raw", "f.raw", "1M"]);
                descriptor(&fx, "d.vmdk", &format!("{HEAD}{}", $body));
                same_info_data(&fx, "d.vmdk");
                fx.same(&["map", "--output=json", "d.vmdk"]);
                fx.same(&["map", "-f", "vmdk", "d.vmdk"]);
            }
        )+
    };
}

hostile_descriptor_cases! {
    flat_without_offset => "createType=\"monolithicFlat\"\nRW 2048 FLAT \"f.raw\"\n",
    flat_negative_offset => "createType=\"monolithicFlat\"\nRW 2048 FLAT \"f.raw\" -5\n",
    unknown_extent_type => "createType=\"monolithicFlat\"\nRW 2048 FOO \"f.raw\" 0\n",
    sparse_with_offset => "createType=\"monolithicFlat\"\nRW 2048 SPARSE \"f.raw\" 0\n",
    missing_extent_file => "createType=\"monolithicFlat\"\nRW 2048 FLAT \"nope.raw\" 0\n",
    unsupported_create_type => "createType=\"custom\"\nRW 2048 FLAT \"f.raw\" 0\n",
    monolithic_sparse_descriptor => "createType=\"monolithicSparse\"\nRW 2048 SPARSE \"f.raw\"\n",
    unquoted_create_type => "createType=monolithicFlat\nRW 2048 FLAT \"f.raw\" 0\n",
    overflowing_size => "createType=\"monolithicFlat\"\nRW 99999999999999999999 FLAT \"f.raw\" 0\n",
    sparse_extent_not_sparse => "createType=\"monolithicFlat\"\nRW 2048 SPARSE \"f.raw\"\n",
    sparse_extent_is_itself => "createType=\"monolithicFlat\"\nRW 2048 SPARSE \"d.vmdk\"\n",
    two_flat_extents => "createType=\"twoGbMaxExtentFlat\"\nRW 2048 FLAT \"f.raw\" 0\nRW 1 FLAT \"f.raw\" 1\n",
    vmfs_extent => "createType=\"vmfs\"\nRW 2048 VMFS \"f.raw\"\n",
}

#[test]
fn missing_create_type() {
    let fx = Fixture::new("no_create_type");
    fx.oracle(&["create", "-q", "-f", "raw", "f.raw", "1M"]);
    descriptor(&fx, "d.vmdk", &format!("{HEAD}RW 2048 FLAT \"f.raw\" 0\n"));
    fx.same(&["info", "d.vmdk"]);
}

#[test]
fn unreadable_content_ids() {
    let fx = Fixture::new("bad_cid");
    fx.oracle(&["create", "-q", "-f", "raw", "f.raw", "1M"]);
    for (name, body) in [
        ("nocid.vmdk", "version=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"f.raw\" 0\n"),
        ("badcid.vmdk", "version=1\nCID=xyz\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"f.raw\" 0\n"),
        ("onlyparent.vmdk", "version=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"f.raw\" 0\n"),
        // An empty value: qemu's sscanf skips the line end and reads the
        // next line's leading hex digits ("c" of createType); qimg refused.
        ("emptyparent.vmdk", "version=1\nCID=12345678\nparentCID=\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"f.raw\" 0\n"),
    ] {
        descriptor(&fx, name, body);
        same_info_data(&fx, name);
    }
}

/// A flat extent file cut short: qemu-img's check reports the extent
/// whose start lies past its file's end (qimg checked sparse extents
/// only), and accepts one that is merely short.
#[test]
fn check_finds_a_flat_extent_past_its_files_end() {
    let fx = made("flat_cut", "monolithicFlat", "4M");
    for len in ["1M", "0"] {
        fx.sh(&format!("truncate -s {len} img-flat.vmdk"));
        let out = fx.same(&["check", "img.vmdk"]);
        assert_eq!(out.status, if len == "0" { 1 } else { 0 }, "{}", out.stderr);
        fx.same(&["check", "--output=json", "img.vmdk"]);
    }
}

#[test]
fn many_extent_lines_are_bounded() {
    let fx = Fixture::new("many_extents");
    fx.oracle(&["create", "-q", "-f", "raw", "f.raw", "1M"]);
    let mut body = format!("{HEAD}createType=\"monolithicFlat\"\n");
    for _ in 0..20000 {
        body.push_str("RW 1 FLAT \"f.raw\" 0\n");
    }
    descriptor(&fx, "d.vmdk", &body);
    let out = fx.qimg(&["info", "d.vmdk"]);
    assert_ne!(out.status, 0);
    assert!(
        out.stderr.starts_with("qemu-img: Could not open 'd.vmdk'"),
        "{}",
        out.stderr
    );
}

/// Patches a little-endian value into a qemu-made sparse image's header.
fn patch(fx: &Fixture, file: &str, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(fx.path(file))
        .unwrap();
    f.write_all_at(bytes, at).unwrap();
}

macro_rules! hostile_header_cases {
    ($($name:ident => ($at:expr, $bytes:expr)),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fx = Fixture::new(stringify!($name));
                fx.oracle(&["create", "-q", "-f", "vmdk", "h.vmdk", "4M"]);
                io(&fx, "h.vmdk", &["write -P 1 0 64k"]);
                patch(&fx, "h.vmdk", $at, &$bytes);
                fx.same_bounded(&["info", "h.vmdk"]);
                fx.same_bounded(&["convert", "-O", "raw", "h.vmdk", "o.raw"]);
            }
        )+
    };
}

hostile_header_cases! {
    header_version_4 => (4, 4u32.to_le_bytes()),
    header_gtes_too_many => (44, 513u32.to_le_bytes()),
    header_gtes_zero => (44, 0u32.to_le_bytes()),
    header_huge_grain => (20, (1u64 << 40).to_le_bytes()),
    header_overhead_past_eof => (64, 1_000_000u64.to_le_bytes()),
    // qemu's byte count wraps and prints signed: "at least -512 bytes".
    header_overhead_max => (64, u64::MAX.to_le_bytes()),
}

#[test]
fn header_huge_capacity() {
    let fx = Fixture::new("huge_capacity");
    fx.oracle(&["create", "-q", "-f", "vmdk", "h.vmdk", "4M"]);
    patch(&fx, "h.vmdk", 12, &(1u64 << 60).to_le_bytes());
    let out = fx.qimg(&["info", "h.vmdk"]);
    assert_eq!(out.status, 1);
    assert!(out.stderr.ends_with("File too large\n"), "{}", out.stderr);
}

#[test]
fn grain_table_past_eof_reads_as_unallocated() {
    let fx = Fixture::new("gt_past_eof");
    fx.oracle(&["create", "-q", "-f", "vmdk", "h.vmdk", "4M"]);
    // Grain directory entry 0 points far past the end of the file.
    patch(&fx, "h.vmdk", 26 * 512, &0x00ff_ffffu32.to_le_bytes());
    fx.same(&["map", "--output=json", "h.vmdk"]);
    converts_alike(&fx, "h.vmdk");
}

#[test]
fn grain_directory_past_eof_is_refused() {
    let fx = Fixture::new("gd_past_eof");
    fx.oracle(&["create", "-q", "-f", "vmdk", "h.vmdk", "4M"]);
    patch(&fx, "h.vmdk", 56, &(1u64 << 40).to_le_bytes());
    let out = fx.qimg(&["info", "h.vmdk"]);
    assert_ne!(out.status, 0);
    assert!(
        out.stderr.starts_with("qemu-img: Could not open 'h.vmdk'"),
        "{}",
        out.stderr
    );
}

#[test]
fn corrupt_compressed_grain_is_an_error() {
    let fx = made("bad_grain", "streamOptimized", "4M");
    // Overwrite the first compressed grain's data.
    patch(&fx, "img.vmdk", 65536 + 12, &[0xff; 64]);
    let out = fx.qimg(&["convert", "-O", "raw", "img.vmdk", "o.raw"]);
    assert_ne!(out.status, 0);
}

// ---- ESX Server sparse extents (VMDK3, `COWD`) -----------------------------

/// Writes an ESX Server sparse extent of 1 MiB with 4 KiB grains: grain 0
/// holds 0x5a, grain 100 holds 0x33.
fn cowd(fx: &Fixture, name: &str) {
    let mut b = vec![0u8; 2048];
    for (i, v) in [0x4457_4f43u32, 1, 3, 2048, 8, 4, 1, 45].iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    let mut gd = vec![0u8; 512];
    gd[0..4].copy_from_slice(&5u32.to_le_bytes());
    let mut gt = vec![0u8; 4096 * 4];
    gt[0..4].copy_from_slice(&37u32.to_le_bytes());
    gt[400..404].copy_from_slice(&45u32.to_le_bytes());
    b.extend(gd);
    b.extend(gt);
    b.extend([0x5a; 4096]);
    b.extend([0x33; 4096]);
    std::fs::write(fx.path(name), b).unwrap();
}

#[test]
fn esx_sparse_extent_alone_is_refused_like_qemu() {
    let fx = Fixture::new("cowd_alone");
    cowd(&fx, "c.vmdk");
    fx.same(&["info", "c.vmdk"]);
}

#[test]
fn reads_vmfs_sparse_extents() {
    let fx = Fixture::new("cowd_extent");
    cowd(&fx, "c.vmdk");
    descriptor(
        &fx,
        "d.vmdk",
        &format!("{HEAD}createType=\"vmfsSparse\"\nRW 2048 VMFSSPARSE \"c.vmdk\"\n"),
    );
    same_info_data(&fx, "d.vmdk");
    fx.same(&["map", "--output=json", "d.vmdk"]);
    fx.same(&["map", "d.vmdk"]);
    converts_alike(&fx, "d.vmdk");
}

#[test]
fn a_sparse_extent_is_as_long_as_its_header_says() {
    // qemu takes a sparse extent's length from its header's capacity, not
    // from the descriptor's line; qimg took the line's and read other data.
    let fx = Fixture::new("extent_capacity");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=twoGbMaxExtentSparse",
        "d.vmdk",
        "4M",
    ]);
    io(&fx, "d.vmdk", PATTERN);
    let extent = std::fs::read(fx.path("d-s001.vmdk")).expect("read extent");
    let text = std::fs::read_to_string(fx.path("d.vmdk")).expect("read descriptor");
    for sectors in ["4096", "8191"] {
        let edited = text.replace("RW 8192 SPARSE", &format!("RW {sectors} SPARSE"));
        assert_ne!(edited, text);
        std::fs::write(fx.path("d.vmdk"), edited).expect("write descriptor");
        same_info_data(&fx, "d.vmdk");
        converts_alike(&fx, "d.vmdk");
    }
    std::fs::write(fx.path("d.vmdk"), &text).expect("write descriptor");
    for capacity in [1u64, 4096, 0] {
        let mut edited = extent.clone();
        edited[12..20].copy_from_slice(&capacity.to_le_bytes());
        std::fs::write(fx.path("d-s001.vmdk"), edited).expect("write extent");
        same_info_data(&fx, "d.vmdk");
        if capacity != 0 {
            converts_alike(&fx, "d.vmdk");
        }
    }
}

#[test]
fn a_read_past_what_a_compressed_grain_holds_fails() {
    // A header whose grain size is larger than its grains inflate to: qemu
    // fails the read; qimg read the missing part as zeros.
    let fx = Fixture::new("stream_short_grains");
    fx.oracle(&["create", "-q", "-f", "raw", "s.raw", "4M"]);
    fx.sh("qemu-io -f raw -c 'write -P 7 0 4M' s.raw >/dev/null");
    fx.oracle(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        "s.raw",
        "st.vmdk",
    ]);
    let mut bytes = std::fs::read(fx.path("st.vmdk")).expect("read");
    bytes[20..28].copy_from_slice(&256u64.to_le_bytes());
    std::fs::write(fx.path("st.vmdk"), bytes).expect("write");
    // qemu-img's parallel requests may each report the failure.
    let args = ["convert", "-O", "raw", "st.vmdk", "out.raw"];
    let (ours, theirs) = (fx.qimg(&args), fx.qemu_img(&args));
    assert_eq!((ours.status, theirs.status), (1, 1));
    assert_eq!(ours.stderr.lines().next(), theirs.stderr.lines().next());
}

#[test]
fn an_extent_name_without_its_closing_quote_runs_to_the_line_end() {
    // As qemu's sscanf reads it: a sparse extent still opens, a flat one
    // (whose offset can then not be read) is an invalid line. qimg passed
    // over such a line and opened a disk of 0 bytes.
    let fx = Fixture::new("extent_open_quote");
    for (sub, extent) in [
        ("twoGbMaxExtentSparse", "q-s001.vmdk"),
        ("monolithicFlat", "q-flat.vmdk"),
    ] {
        let opts = format!("subformat={sub}");
        fx.oracle(&["create", "-q", "-f", "vmdk", "-o", &opts, "q.vmdk", "4M"]);
        io(&fx, "q.vmdk", PATTERN);
        let text = std::fs::read_to_string(fx.path("q.vmdk")).expect("read descriptor");
        let quoted = format!("\"{extent}\"");
        assert!(text.contains(&quoted), "{text}");
        let edited = text.replace(&quoted, &format!("\"{extent}"));
        std::fs::write(fx.path("q.vmdk"), edited).expect("write descriptor");
        same_info_data(&fx, "q.vmdk");
        let args = ["convert", "-O", "raw", "q.vmdk", "out.raw"];
        let (ours, theirs) = (fx.qimg(&args), fx.qemu_img(&args));
        assert_eq!(ours.status, theirs.status, "{sub}: {}", ours.stderr);
        if ours.status == 0 {
            fx.oracle(&["compare", "-F", "raw", "q.vmdk", "out.raw"]);
        }
        let _ = std::fs::remove_file(fx.path("out.raw"));
    }
}

#[test]
fn a_damaged_descriptor_size_never_lets_a_new_cid_zero_the_grains() {
    // The embedded descriptor was rewritten (with the new content ID of a
    // first write) over as many bytes as the header's size field said:
    // with 2^63 sectors, a MiB of zeros over the grain tables.
    let fx = Fixture::new("descriptor_size_damaged");
    fx.oracle(&["create", "-q", "-f", "raw", "s.raw", "4M"]);
    fx.sh("qemu-io -f raw -c 'write -P 7 0 64k' -c 'write -P 8 3M 64k' s.raw >/dev/null");
    fx.oracle(&["convert", "-O", "vmdk", "s.raw", "d.vmdk"]);
    let mut bytes = std::fs::read(fx.path("d.vmdk")).expect("read");
    bytes[36..44].copy_from_slice(&(1u64 << 63).to_le_bytes());
    std::fs::write(fx.path("d.vmdk"), bytes).expect("write");
    fx.sh("qemu-io -f raw -c 'write -P 9 1M 64k' s.raw >/dev/null");
    let out = fx.qimg(&["convert", "-n", "-O", "vmdk", "s.raw", "d.vmdk"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["check", "d.vmdk"]);
    fx.oracle(&["compare", "-F", "raw", "d.vmdk", "s.raw"]);
}

// ---- writes by qimg ----------------------------------------------------------

#[test]
fn commit_writes_into_a_vmdk_base() {
    let fx = Fixture::new("commit_base");
    fx.oracle(&["create", "-q", "-f", "vmdk", "base.vmdk", "4M"]);
    io(&fx, "base.vmdk", &["write -P 1 0 4M"]);
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        "top.vmdk",
    ]);
    io(&fx, "top.vmdk", &["write -P 2 64k 4k", "write -P 3 1M 1M"]);
    fx.oracle(&["convert", "-O", "raw", "top.vmdk", "expect.raw"]);
    let out = fx.qimg(&["commit", "top.vmdk"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["check", "base.vmdk"]);
    fx.oracle(&["compare", "-F", "raw", "base.vmdk", "expect.raw"]);
}

#[test]
fn a_failed_commit_leaves_a_vmdk_base_and_its_child_as_they_were() {
    // A write refused by a streamOptimized base changed nothing, but qimg
    // had already given the base a new content ID, so its child no longer
    // opened. qemu gives the ID once a write has succeeded.
    let fx = Fixture::new("commit_stream_base");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        "b.vmdk",
        "4M",
    ]);
    io(&fx, "b.vmdk", &["write -P 0x10 0 2M"]);
    fx.oracle(&[
        "create", "-q", "-f", "vmdk", "-b", "b.vmdk", "-F", "vmdk", "t.vmdk",
    ]);
    io(&fx, "t.vmdk", &["write -P 0x21 1M 512k"]);
    fx.oracle(&["convert", "-O", "raw", "t.vmdk", "expect.raw"]);
    let base = std::fs::read(fx.path("b.vmdk")).expect("read b.vmdk");
    let out = fx.qimg(&["commit", "t.vmdk"]);
    assert_eq!(out.status, 1, "{}", out.stderr);
    assert!(std::fs::read(fx.path("b.vmdk")).expect("read b.vmdk") == base);
    fx.oracle(&["compare", "-F", "raw", "t.vmdk", "expect.raw"]);
}

#[test]
fn commit_grows_no_vmdk_base_as_qemu_img_grows_none() {
    // qemu cannot resize a vmdk, so committing a larger top fails; qimg
    // used to grow the base (its resize extension) and write into it.
    let fx = Fixture::new("commit_small_base");
    fx.oracle(&["create", "-q", "-f", "vmdk", "b.vmdk", "2M"]);
    io(&fx, "b.vmdk", &["write -P 0x10 0 2M"]);
    fx.oracle(&[
        "create", "-q", "-f", "qcow2", "-b", "b.vmdk", "-F", "vmdk", "t.qcow2", "4M",
    ]);
    fx.sh("qemu-io -f qcow2 -c 'write -P 0x22 3968k 64k' t.qcow2 >/dev/null");
    let base = std::fs::read(fx.path("b.vmdk")).expect("read b.vmdk");
    let out = fx.same(&["commit", "t.qcow2"]);
    assert_eq!(out.status, 1);
    assert!(std::fs::read(fx.path("b.vmdk")).expect("read b.vmdk") == base);
}

#[test]
fn first_write_gives_a_new_content_id() {
    let fx = Fixture::new("cid_update");
    fx.oracle(&["create", "-q", "-f", "vmdk", "t.vmdk", "4M"]);
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.sh("qemu-io -f raw -c 'write -P 1 0 64k' src.raw >/dev/null");
    let cid = |fx: &Fixture| {
        let text = fx.oracle(&["info", "--output=json", "t.vmdk"]).stdout;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["format-specific"]["data"]["cid"].as_u64().unwrap()
    };
    let before = cid(&fx);
    let out = fx.qimg(&["convert", "-n", "-O", "vmdk", "src.raw", "t.vmdk"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_ne!(cid(&fx), before);
    fx.oracle(&["compare", "-F", "raw", "t.vmdk", "src.raw"]);
}

#[test]
fn rebase_unsafe_is_refused_like_qemu() {
    let fx = Fixture::new("rebase_unsafe");
    fx.oracle(&["create", "-q", "-f", "vmdk", "base.vmdk", "4M"]);
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        "top.vmdk",
    ]);
    fx.same(&["rebase", "-u", "-b", "base.vmdk", "-F", "vmdk", "top.vmdk"]);
}

// ---- resize (qemu-img refuses it for vmdk) -----------------------------------

macro_rules! resize_cases {
    ($($name:ident => ($sub:expr, $size:expr)),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fx = made(stringify!($name), $sub, "4M");
                fx.oracle(&["convert", "-O", "raw", "img.vmdk", "before.raw"]);
                let out = fx.qimg(&["resize", "img.vmdk", $size]);
                assert_eq!(out.status, 0, "{}", out.stderr);
                fx.oracle(&["check", "img.vmdk"]);
                let info = fx.oracle(&["info", "--output=json", "img.vmdk"]).stdout;
                let v: serde_json::Value = serde_json::from_str(&info).unwrap();
                let size = v["virtual-size"].as_u64().unwrap();
                assert!(size > 4 << 20, "{info}");
                // The old content is there, the new part reads as zeros and
                // qemu-io can write at its end.
                fx.sh("qemu-img create -q -f raw after.raw 4M && cp before.raw after.raw");
                fx.oracle(&["resize", "-q", "-f", "raw", "after.raw", &size.to_string()]);
                fx.oracle(&["compare", "-F", "raw", "img.vmdk", "after.raw"]);
                io(&fx, "img.vmdk", &[&format!("write -P 7 {} 512", size - 512)]);
                fx.sh(&format!("qemu-io -f vmdk -c 'read -P 7 {} 512' img.vmdk >/dev/null", size - 512));
                let out = fx.qimg(&["resize", "--shrink", "img.vmdk", "4M"]);
                assert_eq!(out.status, 0, "{}", out.stderr);
                fx.oracle(&["check", "img.vmdk"]);
                fx.oracle(&["compare", "-F", "raw", "img.vmdk", "before.raw"]);
            }
        )+
    };
}

resize_cases! {
    resizes_monolithic_sparse => ("monolithicSparse", "300M"),
    resizes_sparse_past_its_directory => ("monolithicSparse", "9G"),
    resizes_monolithic_flat => ("monolithicFlat", "6M"),
    resizes_split_sparse => ("twoGbMaxExtentSparse", "100M"),
    resizes_split_flat => ("twoGbMaxExtentFlat", "5M"),
}

#[test]
fn stream_images_are_not_resized() {
    let fx = made("resize_stream", "streamOptimized", "4M");
    let out = fx.qimg(&["resize", "img.vmdk", "8M"]);
    assert_eq!(out.status, 1);
    fx.oracle(&["compare", "img.vmdk", "src.raw"]);
}

// ---- measure (qemu-img cannot measure vmdk output) ----------------------------

#[test]
fn measures_vmdk_output() {
    let fx = Fixture::new("measure");
    source(&fx);
    let measure = |opts: &str| {
        let out = fx.qimg(&[
            "measure",
            "--output=json",
            "-O",
            "vmdk",
            "-o",
            opts,
            "src.raw",
        ]);
        assert_eq!(out.status, 0, "{}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        (
            v["required"].as_u64().unwrap(),
            v["fully-allocated"].as_u64().unwrap(),
        )
    };
    for sub in ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse"] {
        let (required, full) = measure(&format!("subformat={sub}"));
        fx.oracle(&[
            "convert",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            "src.raw",
            "m.vmdk",
        ]);
        let used = std::fs::metadata(fx.path("m.vmdk")).unwrap().len();
        assert!(required <= full, "{sub}");
        if sub == "monolithicSparse" {
            assert!(required >= used, "{sub}: {required} < {used}");
        }
        fx.sh("rm -f m*.vmdk");
    }
}

/// The files whose names start with `prefix` (an image and its extents), in
/// name order: each file's descriptor text without its (random) CID line,
/// and its bytes with the descriptor blanked (only the length of a
/// descriptor file). Prefixes of equal length keep the embedded
/// descriptors comparable.
fn files_without_cid(fx: &Fixture, prefix: &str) -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(&fx.dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    for name in names {
        let mut bytes = std::fs::read(fx.path(&name)).unwrap();
        let region = if bytes.starts_with(b"KDMV") {
            512..(512 * 21).min(bytes.len())
        } else {
            0..bytes.len()
        };
        let area = &bytes[region.clone()];
        let end = area.iter().position(|&b| b == 0).unwrap_or(area.len());
        let text = String::from_utf8_lossy(&area[..end])
            .lines()
            .filter(|l| !l.starts_with("CID="))
            .collect::<Vec<_>>()
            .join("\n")
            .replace(prefix, "X");
        bytes[region].fill(0);
        out.push((name.replacen(prefix, "X", 1), text, bytes));
    }
    out
}

macro_rules! same_files_cases {
    ($($name:ident => $sub:expr),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fx = Fixture::new(stringify!($name));
                source(&fx);
                let opts = format!("subformat={}", $sub);
                // One worker: grains land in the order qemu-img writes them
                // (with more, qimg writes out of order, as qemu-img -W does).
                let out = fx.qimg(&["convert", "-m", "1", "-O", "vmdk", "-o", &opts, "src.raw", "ours.vmdk"]);
                assert_eq!(out.status, 0, "{}", out.stderr);
                fx.oracle(&["convert", "-O", "vmdk", "-o", &opts, "src.raw", "qemu.vmdk"]);
                let ours = files_without_cid(&fx, "ours");
                let theirs = files_without_cid(&fx, "qemu");
                let names = |f: &[(String, String, Vec<u8>)]| {
                    f.iter().map(|x| x.0.clone()).collect::<Vec<_>>()
                };
                assert_eq!(names(&ours), names(&theirs));
                for ((name, a_text, a), (_, b_text, b)) in ours.iter().zip(&theirs) {
                    assert_eq!(a_text, b_text, "{name}");
                    assert!(a == b, "{name} differs");
                }
            }
        )+
    };
}

same_files_cases! {
    same_files_as_qemu_monolithic_sparse => "monolithicSparse",
    same_files_as_qemu_monolithic_flat => "monolithicFlat",
    same_files_as_qemu_split_sparse => "twoGbMaxExtentSparse",
    same_files_as_qemu_split_flat => "twoGbMaxExtentFlat",
}

// ---- where qimg follows the specification rather than qemu-img ---------------

/// VDF 1.1 §"Extent Descriptions": a `ZERO` extent (no file) reads as zeros
/// and an `RDONLY` extent is read like a writable one. qemu-img 10.0.2 skips
/// both kinds of line, giving the disk a shorter size; qimg keeps them.
#[test]
fn zero_and_read_only_extents_follow_the_specification() {
    let fx = Fixture::new("zero_extent");
    fx.oracle(&["create", "-q", "-f", "raw", "a.raw", "1M"]);
    fx.sh("qemu-io -f raw -c 'write -P 7 0 1M' a.raw >/dev/null");
    descriptor(
        &fx,
        "z.vmdk",
        &format!("{HEAD}createType=\"monolithicFlat\"\nRW 2048 FLAT \"a.raw\" 0\nRW 2048 ZERO\nRDONLY 2048 FLAT \"a.raw\" 0\n"),
    );
    let out = fx.qimg(&["convert", "-O", "raw", "z.vmdk", "z.raw"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.sh("qemu-img create -q -f raw e.raw 3M && qemu-io -f raw -c 'write -P 7 0 1M' -c 'write -P 7 2M 1M' e.raw >/dev/null");
    fx.oracle(&["compare", "-f", "raw", "-F", "raw", "z.raw", "e.raw"]);
    let map = fx.qimg(&["map", "--output=json", "z.vmdk"]).stdout;
    assert!(map.contains("{ \"start\": 1048576, \"length\": 1048576, \"depth\": 0, \"present\": true, \"zero\": true, \"data\": false"), "{map}");
}

#[test]
fn no_access_extents_cannot_be_read() {
    let fx = Fixture::new("noaccess_extent");
    fx.oracle(&["create", "-q", "-f", "raw", "a.raw", "1M"]);
    descriptor(
        &fx,
        "n.vmdk",
        &format!("{HEAD}createType=\"monolithicFlat\"\nNOACCESS 2048 FLAT \"a.raw\" 0\n"),
    );
    let out = fx.qimg(&["convert", "-O", "raw", "n.vmdk", "n.raw"]);
    assert_eq!(out.status, 1);
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
}

#[test]
fn converting_into_a_qemu_stream_image_fails_as_in_qemu() {
    // The source's zero area covers grains the stream already holds, which a
    // stream cannot rewrite: qemu-img fails too.
    let fx = made("stream_append", "streamOptimized", "4M");
    fx.oracle(&["create", "-q", "-f", "raw", "more.raw", "4M"]);
    fx.sh("qemu-io -f raw -c 'write -P 5 2M 64k' more.raw >/dev/null");
    fx.sh("cp img.vmdk theirs.vmdk");
    let ours = fx.qimg(&["convert", "-n", "-O", "vmdk", "more.raw", "img.vmdk"]);
    let theirs = fx.qemu_img(&["convert", "-n", "-O", "vmdk", "more.raw", "theirs.vmdk"]);
    assert_eq!((ours.status, theirs.status), (1, 1), "{ours:?} {theirs:?}");
    let message = "Could not write to allocated cluster for streamOptimized";
    assert!(
        ours.stderr.contains(message) && theirs.stderr.contains(message),
        "{}",
        ours.stderr
    );
    fx.oracle(&["check", "img.vmdk"]);
}

#[test]
fn commit_writes_zeroed_grains() {
    let fx = Fixture::new("commit_zeroed");
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        "base.vmdk",
        "4M",
    ]);
    io(&fx, "base.vmdk", &["write -P 1 0 4M"]);
    fx.oracle(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        "top.vmdk",
    ]);
    io(&fx, "top.vmdk", &["write -z 64k 128k", "write -P 2 1M 4k"]);
    fx.oracle(&["convert", "-O", "raw", "top.vmdk", "expect.raw"]);
    let out = fx.qimg(&["commit", "top.vmdk"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    fx.oracle(&["check", "base.vmdk"]);
    fx.oracle(&["compare", "-F", "raw", "base.vmdk", "expect.raw"]);
    let map = fx.oracle(&["map", "--output=json", "base.vmdk"]).stdout;
    assert!(
        map.contains("{ \"start\": 65536, \"length\": 131072, \"depth\": 0, \"present\": true, \"zero\": true, \"data\": false"),
        "{map}"
    );
}

#[test]
fn check_of_a_grain_past_the_end_fails_like_qemu() {
    // `qemu-img check` stops at the first grain past the end of its file,
    // prints it and fails with "Check failed: Invalid argument".
    let fx = Fixture::new("check_eof");
    fx.oracle(&["create", "-q", "-f", "vmdk", "eof.vmdk", "4M"]);
    fx.sh(
        "qemu-io -f vmdk -c 'write -P 1 0 128k' eof.vmdk >/dev/null && truncate -s 100000 eof.vmdk",
    );
    fx.same(&["check", "eof.vmdk"]);
    fx.same(&["check", "--output=json", "eof.vmdk"]);
}

#[test]
fn capacity_beyond_the_grain_directory_is_an_io_error_not_a_hang() {
    // A capacity of 2^57 bytes overflows the 32-bit grain directory entry
    // count, so the directory covers 1 MiB of it. qemu-img answers EIO for
    // grains past the directory; qimg once walked them one by one forever.
    let fx = Fixture::new("vmdk_hostile_capacity");
    fx.oracle(&["create", "-q", "-f", "vmdk", "base.vmdk", "1M"]);
    fx.patched_copy("base.vmdk", "a.vmdk", &[(16u64, 0x10000u32.to_le_bytes())]);
    let map = fx.same(&["map", "-f", "vmdk", "a.vmdk"]);
    assert_eq!(map.status, 1);
    let compare = fx.same(&["compare", "a.vmdk", "a.vmdk"]);
    assert_eq!(compare.status, 3);
}

#[test]
fn create_refuses_sizes_no_grain_directory_can_describe() {
    // Past 1 PiB the grain directory passes the 32 Mi entries qemu-img
    // opens: refused at once (qemu-img writes an image it cannot open; 7E
    // once made qimg allocate a terabyte). Large sizes below work.
    let fx = Fixture::new("vmdk_huge_create");
    for size in ["1025T", "4P", "7E"] {
        let out = fx.qimg(&["create", "-q", "-f", "vmdk", "x.vmdk", size]);
        assert_eq!(out.status, 1, "{size}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("The image size is too large for file format 'vmdk'"),
            "{size}: {}",
            out.stderr
        );
        assert!(!fx.path("x.vmdk").exists(), "{size}: left a file");
    }
    let out = fx.qimg(&["create", "-q", "-f", "vmdk", "x.vmdk", "64T"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let info = fx.oracle(&["info", "x.vmdk"]).stdout;
    assert!(info.contains("virtual size: 64 TiB"), "{info}");
}

#[test]
fn new_grains_go_past_a_grain_that_runs_off_a_short_file() {
    // A monolithicSparse image cut 32 KiB short: its one grain runs past
    // the end. Rewriting it grows the file; the next new grain must go
    // after it, not over it (found by the vmdk fuzz target).
    let fx = Fixture::new("short_grain");
    fx.oracle(&["create", "-q", "-f", "vmdk", "t.vmdk", "1M"]);
    io(&fx, "t.vmdk", &["write -P 1 0 64k"]);
    fx.sh("truncate -s -32768 t.vmdk");
    fx.oracle(&["create", "-q", "-f", "raw", "s.raw", "1M"]);
    fx.qemu_io("s.raw", "write -P 0x5a 0 4k");
    fx.qemu_io("s.raw", "write -P 0xc3 512k 4k");
    let out = fx.qimg(&[
        "convert", "-n", "-f", "raw", "-O", "vmdk", "s.raw", "t.vmdk",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let same = fx.qemu_img(&["compare", "-f", "raw", "-F", "vmdk", "s.raw", "t.vmdk"]);
    assert_eq!(same.stdout, "Images are identical.\n", "{}", same.stderr);
    fx.oracle(&["check", "t.vmdk"]);
}

/// Whether grains are compressed is the header's algorithm field, as qemu
/// reads it, not its flag bit: a stream-optimized disk whose field says
/// none reads its grains (markers and all) as plain data, and a sparse disk
/// with only the flag set reads as it is. Both tools read the same bytes.
#[test]
fn the_algorithm_field_says_whether_grains_are_compressed() {
    for (subformat, at, bytes) in [
        ("streamOptimized", 77, vec![0u8, 0]),
        ("streamOptimized", 77, vec![2u8, 0]),
        ("monolithicSparse", 8, 0x10003u32.to_le_bytes().to_vec()),
    ] {
        let fx = made(
            &format!("vmdk_algorithm_{at}_{}", bytes[0]),
            subformat,
            "4M",
        );
        fx.patched_copy("img.vmdk", "x.vmdk", &[(at, bytes)]);
        reads_alike(&fx, "x.vmdk");
        fx.same_effect(
            &["convert", "-f", "vmdk", "-O", "raw", "x.vmdk", "{}"],
            "o.raw",
        );
    }
}

/// The embedded descriptor is read at sector 1 whatever the header's
/// offset field says, as qemu reads it.
#[test]
fn the_embedded_descriptor_is_at_sector_one() {
    for offset in [0u64, 2, 26] {
        let fx = made(&format!("vmdk_desc_at_{offset}"), "monolithicSparse", "4M");
        fx.patched_copy("img.vmdk", "x.vmdk", &[(28, offset.to_le_bytes())]);
        reads_alike(&fx, "x.vmdk");
    }
}

/// A file larger than a MiB opened as a vmdk descriptor: qemu-img reads its
/// first MiB as the descriptor and refuses it as one (qimg refused it as
/// "File too large").
#[test]
fn a_large_non_descriptor_is_an_invalid_descriptor() {
    let fx = Fixture::new("large_descriptor");
    fx.sh("printf 'version=1\\n' > d.txt && head -c 2M /dev/zero >> d.txt");
    fx.sh("head -c 2M /dev/urandom > r.bin");
    for file in ["d.txt", "r.bin"] {
        let out = fx.same(&["info", "-f", "vmdk", file]);
        assert_eq!(out.status, 1, "{out:?}");
    }
}

/// A damaged grain table entry naming the extent's own metadata (sector 1:
/// the descriptor) must not take a write in place. qemu-img writes there,
/// destroys the descriptor and then fails (`error while writing at byte 0:
/// Invalid argument`), leaving an image that no longer opens; qimg refuses
/// the write with the same words and the image still opens and checks
/// clean (it read as zeros after qimg's "successful" convert before).
#[test]
fn a_grain_over_the_extent_s_metadata_is_never_written() {
    let fx = Fixture::new("vmdk_grain_meta");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.qemu_io("src.raw", "write -P 0x11 0 64k");
    fx.oracle(&["convert", "-f", "raw", "-O", "vmdk", "src.raw", "m.vmdk"]);
    let bytes = std::fs::read(fx.path("m.vmdk")).unwrap();
    let le = |at: usize, n: usize| le_at(&bytes, at, n);
    let gd = le(56, 8) as usize * 512;
    let gt = le(gd, 4) as usize * 512;
    fx.patched_copy("m.vmdk", "bad.vmdk", &[(gt as u64, vec![1u8, 0, 0, 0])]);
    fx.sh("cp bad.vmdk before.vmdk");
    fx.write_pattern("pat.raw", 4 << 20, &[(0, 0xa5, 65536)]);
    let args = [
        "convert", "-n", "-f", "raw", "-O", "vmdk", "pat.raw", "bad.vmdk",
    ];
    let out = fx.qimg(&args);
    assert_eq!(out.status, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("error while writing at byte 0: Invalid argument"),
        "{}",
        out.stderr
    );
    fx.oracle(&["check", "bad.vmdk"]);
    // Only the descriptor's content ID may change (the zero writes to other
    // grains update it, as in qemu-img; its digits are not padded).
    let before = std::fs::read(fx.path("before.vmdk")).unwrap();
    let after = std::fs::read(fx.path("bad.vmdk")).unwrap();
    assert_eq!(before.len(), after.len());
    let (start, len) = (le(28, 8) as usize * 512, le(36, 8) as usize * 512);
    let outside = |b: &[u8]| [b[..start].to_vec(), b[start + len..].to_vec()].concat();
    assert!(
        outside(&before) == outside(&after),
        "bytes changed outside the descriptor"
    );
    let lines = |b: &[u8]| {
        let text = String::from_utf8_lossy(&b[start..start + len]).to_string();
        let mut lines: Vec<String> = text
            .split('\n')
            .map(|l| l.trim_matches('\0').to_string())
            .filter(|l| !l.starts_with("CID="))
            .collect();
        while lines.last().is_some_and(String::is_empty) {
            lines.pop();
        }
        lines
    };
    assert_eq!(lines(&before), lines(&after));
}

/// A damaged grain directory naming gt 0's table one sector before gt 1's,
/// so that the two overlap: writing back only the changed sectors of each
/// table keeps both tables' new entries, as qemu's one-entry writes do
/// (qimg wrote each cached table whole, and gt 1's stale copy undid gt
/// 0's entry: the grain written through it was lost).
#[test]
fn overlapping_grain_tables_keep_each_other_s_entries() {
    let fx = Fixture::new("vmdk_gt_overlap");
    fx.oracle(&["create", "-q", "-f", "vmdk", "m.vmdk", "64M"]);
    let bytes = std::fs::read(fx.path("m.vmdk")).unwrap();
    let le = |at: usize, n: usize| le_at(&bytes, at, n);
    let gd = le(56, 8) as usize * 512;
    let second = le(gd + 4, 4) as u32;
    fx.patched_copy(
        "m.vmdk",
        "bad.vmdk",
        &[(gd as u64, (second - 1).to_le_bytes())],
    );
    let grain = 65536;
    // Grain 128 goes through gt 0's entry 128, in the sector both tables
    // share; grain 712 through gt 1's entry 200, in their next one.
    let runs = [(128 * grain, 0xa5, grain), (712 * grain, 0x5a, grain)];
    fx.write_pattern("pat.raw", 64 << 20, &runs);
    let out = fx.qimg(&[
        "convert",
        "-n",
        "--target-is-zero",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "pat.raw",
        "bad.vmdk",
    ]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    for (at, byte, _) in runs {
        let read = format!("read -P {byte} {at} {grain}");
        fx.qemu_io_cmds("vmdk", "bad.vmdk", &[&read]);
    }
}

/// A version 3 sparse extent (changed block tracking) opens for writing
/// only if its grains are compressed (the compression algorithm says
/// deflate), as in qemu-img: otherwise `VMDK version 3 must be read only`.
/// qimg wrote into such an extent, and a streamOptimized one whose
/// algorithm field was damaged took `convert -n` data that never read
/// back.
#[test]
fn version_3_extents_open_for_writing_only_compressed() {
    let fx = Fixture::new("vmdk_v3_rw");
    fx.oracle(&["create", "-q", "-f", "vmdk", "m.vmdk", "4M"]);
    fx.patched_copy("m.vmdk", "v3.vmdk", &[(4, 3u32.to_le_bytes())]);
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "4M"]);
    fx.qemu_io("src.raw", "write -P 0x11 0 64k");
    let stream = ["convert", "-o", "subformat=streamOptimized", "-O", "vmdk"];
    fx.oracle(&[&stream[..], &["src.raw", "s.vmdk"]].concat());
    // compressAlgorithm (offset 77): deflate -> 0x8000.
    fx.patched_copy("s.vmdk", "s3.vmdk", &[(77, 0x8000u16.to_le_bytes())]);
    for image in ["v3.vmdk", "s3.vmdk"] {
        let out = fx.same(&["convert", "-n", "-f", "raw", "-O", "vmdk", "src.raw", image]);
        assert!(
            out.stderr.contains("VMDK version 3 must be read only"),
            "{}",
            out.stderr
        );
        fx.same(&["info", image]);
    }
    fx.same(&["resize", "v3.vmdk", "8M"]);
}

/// The little-endian number of `len` bytes at `at` of `bytes`.
fn le_at(bytes: &[u8], at: usize, len: usize) -> u64 {
    bytes[at..at + len]
        .iter()
        .rev()
        .fold(0, |n, &b| n << 8 | u64::from(b))
}
