//! LUKS key slots and LUKS-encrypted qcow2 creation against qemu-img
//! 10.0.2: `amend` adds and erases key slots (standalone luks and qcow2's
//! `encrypt.*`) with qemu-img's rules, messages and exit codes, each tool
//! opens what the other changed; `create -f qcow2 -o encrypt.format=luks`
//! writes qemu-img's file apart from its random material, and `measure`
//! counts the LUKS header as qemu-img does.

use qimg_tests::Fixture;

/// Three secrets: `s` opens the images as made, `n` and `m` are new ones.
const SECRETS: [&str; 6] = [
    "--object",
    "secret,id=s,data=pw-s",
    "--object",
    "secret,id=n,data=pw-n",
    "--object",
    "secret,id=m,data=pw-m",
];

/// An image format with LUKS key slots: its driver name and the prefix of
/// its encryption options.
#[derive(Clone, Copy)]
struct Kind {
    driver: &'static str,
    prefix: &'static str,
}

const LUKS: Kind = Kind {
    driver: "luks",
    prefix: "",
};
const QCOW2: Kind = Kind {
    driver: "qcow2",
    prefix: "encrypt.",
};

impl Kind {
    /// `--image-opts` for `file` unlocked with the secret `key`.
    fn opts(self, file: &str, key: &str) -> String {
        format!(
            "driver={},file.filename={file},{}key-secret={key}",
            self.driver, self.prefix
        )
    }

    /// Makes `file` with qemu-img, slot 0 opening with secret `s`.
    fn create(self, fx: &Fixture, file: &str) {
        let o = match self.driver {
            "luks" => "key-secret=s,iter-time=10".to_string(),
            _ => "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10".to_string(),
        };
        let mut args = vec!["create", "-q", "-f", self.driver];
        args.extend(SECRETS);
        args.extend(["-o", &o, file, "1M"]);
        fx.oracle(&args);
    }

    /// The image's key-slot states as qemu-img's info shows them ("10000000").
    fn slots(self, fx: &Fixture, file: &str) -> String {
        let out = fx.qemu_img(&["info", "--output=json", file]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("info json");
        let data = &v["format-specific"]["data"];
        let luks = if self.driver == "luks" {
            data
        } else {
            &data["encrypt"]
        };
        luks["slots"]
            .as_array()
            .expect("slots")
            .iter()
            .map(|s| if s["active"] == true { '1' } else { '0' })
            .collect()
    }

    /// The secrets among s, n, m that open `file` in qemu-io.
    fn opening(self, fx: &Fixture, file: &str) -> String {
        ["s", "n", "m"]
            .into_iter()
            .filter(|k| {
                let script = format!(
                    "qemu-io {} --image-opts {} -c 'read 0 512' >/dev/null 2>&1 && echo yes || true",
                    SECRETS.join(" "),
                    self.opts(file, k)
                );
                fx.sh(&script).contains("yes")
            })
            .collect()
    }
}

/// Runs `steps` of `amend -o` (options without the prefix; " --force" at
/// the end forces) on two copies of one image, one with each tool, opening
/// them with the secret `key`; every step must answer alike, and the key
/// slots end alike.
fn amend_alike(kind: Kind, name: &str, key: &str, steps: &[&str]) {
    let fx = Fixture::new(name);
    kind.create(&fx, "ours.img");
    fx.sh("cp ours.img theirs.img");
    for step in steps {
        let (opts, force) = match step.strip_suffix(" --force") {
            Some(o) => (o, true),
            None => (*step, false),
        };
        let o: Vec<String> = opts
            .split(',')
            .map(|kv| format!("{}{kv}", kind.prefix))
            .collect();
        let o = o.join(",");
        let run = |file: &str, qimg: bool| {
            let image = kind.opts(file, key);
            let mut args = vec!["amend"];
            args.extend(SECRETS);
            if force {
                args.push("--force");
            }
            args.extend(["--image-opts", &image, "-o", &o]);
            let out = if qimg {
                fx.qimg(&args)
            } else {
                fx.qemu_img(&args)
            };
            (
                out.status,
                out.stderr.replace(file, "X").replace("qimg:", "qemu-img:"),
            )
        };
        assert_eq!(run("ours.img", true), run("theirs.img", false), "{step}");
    }
    assert_eq!(
        kind.slots(&fx, "ours.img"),
        kind.slots(&fx, "theirs.img"),
        "{steps:?}"
    );
    assert_eq!(
        kind.opening(&fx, "ours.img"),
        kind.opening(&fx, "theirs.img"),
        "{steps:?}"
    );
}

/// Adding, overwriting (forced) and erasing slots, and every refusal.
const STEPS: [&str; 18] = [
    "state=active",
    "state=active,new-secret=n,iter-time=10",
    "state=active,new-secret=m,keyslot=1,iter-time=10",
    "state=active,new-secret=m,keyslot=1,iter-time=10 --force",
    "state=active,new-secret=m,keyslot=-1",
    "state=active,new-secret=nope",
    "state=active,old-secret=m,new-secret=n",
    "state=inactive",
    "state=inactive,keyslot=5",
    // Forced, an inactive slot's area is erased again (qimg refused).
    "state=inactive,keyslot=5 --force",
    "state=inactive,new-secret=n,keyslot=1",
    "state=inactive,old-secret=n,keyslot=1",
    "state=inactive,old-secret=nope,keyslot=9",
    "state=bogus",
    "keyslot=abc",
    "iter-time=5",
    "state=inactive,old-secret=m",
    "state=inactive,keyslot=0",
];

#[test]
fn luks_key_slots_amend_like_qemu() {
    amend_alike(LUKS, "keys_luks", "s", &STEPS);
}

#[test]
fn qcow2_key_slots_amend_like_qemu() {
    amend_alike(QCOW2, "keys_qcow2", "s", &STEPS);
}

/// Filling all eight slots, erasing by password (all matching refused
/// unless forced), then the image opens only with the new secret.
#[test]
fn full_slots_and_forced_erase_like_qemu() {
    let mut steps = vec!["state=active,new-secret=s,iter-time=10"; 6];
    steps.extend([
        "state=active,new-secret=m,iter-time=10",
        "state=active,new-secret=n,iter-time=10",
        "state=inactive,old-secret=s,keyslot=7",
        "state=inactive,old-secret=s",
    ]);
    amend_alike(LUKS, "keys_full", "s", &steps);
    amend_alike(
        QCOW2,
        "keys_erase_all",
        "s",
        &[
            "state=inactive,old-secret=s",
            "state=inactive,old-secret=s --force",
        ],
    );
}

/// Each tool opens the other's new slots, and the data stays readable.
#[test]
fn slots_added_by_one_tool_open_in_the_other() {
    for kind in [LUKS, QCOW2] {
        let fx = Fixture::new(&format!("keys_cross_{}", kind.driver));
        kind.create(&fx, "img");
        fx.sh(&format!(
            "qemu-io {} --image-opts {} -c 'write -P 0x6b 0 64k' >/dev/null",
            SECRETS.join(" "),
            kind.opts("img", "s")
        ));
        let amend = |qimg: bool, key: &str, o: &str| {
            let o: Vec<String> = o
                .split(',')
                .map(|kv| format!("{}{kv}", kind.prefix))
                .collect();
            let o = o.join(",");
            let image = kind.opts("img", key);
            let mut args = vec!["amend"];
            args.extend(SECRETS);
            args.extend(["--image-opts", &image, "-o", &o]);
            let out = if qimg {
                fx.qimg(&args)
            } else {
                fx.qemu_img(&args)
            };
            assert_eq!(out.status, 0, "{o}: {}", out.stderr);
        };
        // What the image holds (unwritten luks sectors decrypt to noise).
        let before = format!(
            "qemu-img convert {} --image-opts {} -O raw before.raw",
            SECRETS.join(" "),
            kind.opts("img", "s")
        );
        fx.sh(&before);
        amend(true, "s", "state=active,new-secret=n,iter-time=10");
        amend(false, "n", "state=active,new-secret=m,iter-time=10");
        amend(true, "m", "state=inactive,keyslot=0");
        assert_eq!(kind.opening(&fx, "img"), "nm");
        let raw = "driver=raw,file.filename=before.raw";
        let mut args = vec!["compare"];
        args.extend(SECRETS);
        let image = kind.opts("img", "m");
        args.extend(["--image-opts", &image, raw]);
        let out = fx.qimg(&args);
        assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
        if kind.driver == "luks" && !fx.sh("command -v cryptsetup || true").trim().is_empty() {
            fx.sh("printf pw-n | cryptsetup --test-passphrase open img --key-file=-");
        }
    }
}

/// Offset and length of the "full disk encryption header pointer"
/// extension of a version 3 qcow2 image.
fn crypto_extension(image: &[u8]) -> Option<(usize, usize)> {
    let be32 = |at: usize| u32::from_be_bytes(image[at..at + 4].try_into().unwrap()) as usize;
    let be64 = |at: usize| u64::from_be_bytes(image[at..at + 8].try_into().unwrap()) as usize;
    let mut at = if be32(4) >= 3 { be32(100) } else { 72 };
    while at + 8 <= image.len().min(1 << 21) {
        let (kind, len) = (be32(at), be32(at + 4));
        match kind {
            0 => return None,
            0x0537_be77 => return Some((be64(at + 8), be64(at + 16))),
            _ => at += 8 + len.next_multiple_of(8),
        }
    }
    None
}

/// Whether byte `i` of a LUKS header is random or timed: the master key
/// digest, its salt and iterations, the UUID, and each slot's iterations
/// and salt.
fn random_header_byte(i: usize) -> bool {
    (112..208).contains(&i) || (0..8).any(|k| (212 + 48 * k..248 + 48 * k).contains(&i))
}

/// Both tools create the same encrypted qcow2 file but for the LUKS
/// header's random fields and key material.
#[test]
fn qcow2_luks_create_writes_qemus_layout() {
    let fx = Fixture::new("keys_create_layout");
    fx.oracle(&["create", "-q", "-f", "qcow2", "base.qcow2", "3M"]);
    for extra in [
        "",
        ",preallocation=metadata",
        ",preallocation=falloc,cluster_size=4096",
        ",compat=0.10,cluster_size=512",
        ",extended_l2=on,lazy_refcounts=on",
        ",data_file=ext.raw",
        ",backing_file=base.qcow2,backing_fmt=qcow2",
        ",encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,\
         encrypt.hash-alg=sha1",
        ",encrypt.cipher-alg=twofish-128,encrypt.cipher-mode=ctr,encrypt.hash-alg=md5",
    ] {
        let o = format!("encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10{extra}");
        let create = |file: &'static str| {
            let mut args = vec!["create", "-q", "-f", "qcow2"];
            args.extend(SECRETS);
            args.extend(["-o", &o, file, "3M"]);
            args
        };
        fx.oracle(&create("theirs.qcow2"));
        let out = fx.qimg(&create("ours.qcow2"));
        assert_eq!(out.status, 0, "{extra}: {}", out.stderr);
        let ours = std::fs::read(fx.path("ours.qcow2")).unwrap();
        let theirs = std::fs::read(fx.path("theirs.qcow2")).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{extra}");
        let (at, len) = crypto_extension(&theirs).expect("LUKS header extension");
        assert_eq!(crypto_extension(&ours), Some((at, len)), "{extra}");
        let differs: Vec<usize> = (0..ours.len())
            .filter(|&i| ours[i] != theirs[i])
            .filter(|&i| !(i >= at && i - at < 592 && random_header_byte(i - at)))
            .filter(|&i| {
                // Slot 0's key material is random too.
                !(i >= at + 4096 && i < at + len)
            })
            .take(5)
            .collect();
        assert!(differs.is_empty(), "{extra}: bytes differ at {differs:?}");
        let image = QCOW2.opts("ours.qcow2", "s");
        let mut check = vec!["check"];
        check.extend(SECRETS);
        check.extend(["--image-opts", &image]);
        let out = fx.qemu_img(&check);
        assert_eq!(out.status, 0, "{extra}: {}", out.stdout);
    }
}

/// An encrypted qcow2 target made by convert holds the source's data for
/// qemu-img; the create and measure refusals are qemu-img's.
#[test]
fn qcow2_luks_convert_measure_and_refusals_like_qemu() {
    let fx = Fixture::new("keys_convert");
    fx.oracle(&["create", "-q", "-f", "raw", "src.raw", "3M"]);
    fx.qemu_io_cmds(
        "raw",
        "src.raw",
        &["write -P 0x11 0 100k", "write -P 0x22 2M 4097"],
    );
    let o = "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10";
    let mut args = vec!["convert", "-O", "qcow2", "-o", o];
    args.extend(SECRETS);
    args.extend(["src.raw", "out.qcow2"]);
    let out = fx.qimg(&args);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let image = QCOW2.opts("out.qcow2", "s");
    for verb in ["compare", "check"] {
        let mut args = vec![verb];
        args.extend(SECRETS);
        args.extend(["--image-opts", &image]);
        if verb == "compare" {
            args.push("driver=raw,file.filename=src.raw");
        }
        let out = fx.qemu_img(&args);
        assert_eq!(out.status, 0, "{verb}: {}{}", out.stdout, out.stderr);
    }
    for o in [
        "encrypt.format=luks,encrypt.key-secret=s",
        "encrypt.format=luks,encrypt.key-secret=s,cluster_size=4096,\
         encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc",
        "encrypt.format=luks,encrypt.key-secret=nope",
        "encrypt.format=luks",
        "encrypt.format=aes,encrypt.key-secret=nope",
    ] {
        let mut args = vec!["measure", "-O", "qcow2", "-o", o];
        args.extend(SECRETS);
        args.extend(["--size", "1G"]);
        fx.same(&args);
        let mut args = vec!["measure", "-O", "qcow2", "-o", o];
        args.extend(SECRETS);
        args.push("src.raw");
        fx.same(&args);
    }
    for o in [
        "encrypt.format=luks,encrypt.key-secret=s,encrypt.cipher-alg=foo",
        "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=x",
        "encrypt.format=luks,encrypt.key-secret=nope,compat=0.10",
        "encrypt.format=luks,encrypt.key-secret=s,cluster_size=3,encrypt.cipher-alg=foo",
        "encrypt.format=luks,encrypt.key-secret=s,encrypt.ivgen-alg=essiv,\
         encrypt.ivgen-hash-alg=sha1",
        "encrypt.cipher-alg=aes-128",
        "encrypt.format=aes,encrypt.key-secret=s,encrypt.cipher-alg=aes-128",
    ] {
        let mut args = vec!["create", "-q", "-f", "qcow2", "-o", o];
        args.extend(SECRETS);
        args.extend(["e.qcow2", "1M"]);
        fx.same(&args);
    }
}

/// Numbers in `-o` are read as qemu reads them (octal, hexadecimal, a
/// minus sign wrapping) and shown signed on the Formatting line.
#[test]
fn option_numbers_parse_like_qemu() {
    let fx = Fixture::new("keys_numbers");
    for bits in ["016", "0x10", "-1", "8"] {
        let o = format!("refcount_bits={bits}");
        fx.same_effect(&["create", "-f", "qcow2", "-o", &o, "{}", "1M"], "n.qcow2");
    }
}
