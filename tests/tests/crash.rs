//! Crash consistency (issue 13): each operation is killed with SIGKILL at
//! every one of its changes to the image in turn (`QIMG_FAULT=kill-after:N`,
//! N = 0, 1, … until it runs to the end), and after every kill the real
//! `qemu-img check` must find the image clean or with leaked clusters only;
//! where the operation keeps the guest's data, the data must read as before.
//! The same walk with the disk full from the N-th change on
//! (`QIMG_FAULT=enospc-after:N`) must fail cleanly, leave the image as
//! consistent, and let the same command succeed once there is space.

use qimg_tests::Fixture;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

/// qcow2 image `a.qcow2` (4 MiB) with data in two L2 ranges.
const BASE: &str = "qemu-img create -q -f qcow2 -o cluster_size=4k a.qcow2 4M && \
    qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 2M 64k' -c 'write -P 9 3M 8k' a.qcow2 >/dev/null";

/// What stops the operation at change N.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL before the change.
    Kill,
    /// The change and every later one fail with ENOSPC.
    NoSpace,
}

/// Runs `args` in `fx` stopped by `fault` at change N = 0, 1, … until it
/// runs to the end, restoring the files of `.pristine/` before each run and
/// calling `after_stop(n)` after each stop. Returns the number of stopping
/// points.
fn stop_at_each_change(
    fx: &Fixture,
    name: &str,
    args: &[&str],
    fault: Fault,
    after_stop: &dyn Fn(usize),
) -> usize {
    let spec = match fault {
        Fault::Kill => "kill-after",
        Fault::NoSpace => "enospc-after",
    };
    for n in 0.. {
        assert!(n < 5000, "{name}: no end to the fault points");
        fx.sh("cp -a .pristine/* .");
        let status = Command::new(fx.path(".bin/qemu-img"))
            .args(args)
            .current_dir(fx.path(""))
            .env("QIMG_PLUGINS", qimg_tests::workspace().join("plugins.toml"))
            .env("QIMG_FAULT", format!("{spec}:{n}"))
            .output()
            .expect("run qimg")
            .status;
        if status.success() {
            return n;
        }
        match fault {
            Fault::Kill => assert_eq!(status.signal(), Some(libc::SIGKILL), "{name}: {n}"),
            Fault::NoSpace => assert_eq!(status.code(), Some(1), "{name}: {n}"),
        }
        after_stop(n);
    }
    unreachable!()
}

/// Stops `args` at every change it makes with `fault`, checking `image`
/// after each stop. With `keeps`, the guest data of `image` must equal the
/// data it had before (`qemu-img compare` against a copy taken first).
/// Returns the number of stopping points.
fn fault_walk(
    name: &str,
    setup: &str,
    args: &[&str],
    image: &str,
    keeps: bool,
    fault: Fault,
) -> usize {
    let fx = Fixture::new(name);
    fx.sh(setup);
    fx.sh("mkdir .pristine && cp -a * .pristine/");
    fx.sh(&format!("qemu-img convert -O raw {image} before.raw"));
    stop_at_each_change(&fx, name, args, fault, &|n| {
        let check = fx.qemu_img(&["check", image]);
        assert!(
            check.status == 0 || check.status == 3,
            "{name}: stopped at change {n}, qemu-img check says:\n{}{}",
            check.stdout,
            check.stderr
        );
        if keeps {
            let same = fx.qemu_img(&["compare", "-F", "raw", image, "before.raw"]);
            assert_eq!(
                same.status, 0,
                "{name}: stopped at change {n}, the data changed: {}",
                same.stdout
            );
        }
        if fault == Fault::NoSpace {
            let again = fx.qimg(args);
            assert_eq!(
                again.status, 0,
                "{name}: after ENOSPC at {n}: {}",
                again.stderr
            );
        }
    })
}

/// [`fault_walk`] with SIGKILL.
fn kill_walk(name: &str, setup: &str, args: &[&str], image: &str, keeps: bool) -> usize {
    fault_walk(name, setup, args, image, keeps, Fault::Kill)
}

#[test]
fn snapshot_apply_is_consistent_at_every_kill_point() {
    // The snapshot's L1 table carries the copied marks it was taken with;
    // they must not reach the active table while its L2 tables are shared.
    let setup = format!(
        "{BASE} && qemu-img snapshot -c s1 a.qcow2 && \
         qemu-io -c 'write -P 3 512k 1M' -c 'write -P 4 3M 4k' a.qcow2 >/dev/null && \
         qemu-img snapshot -c s2 a.qcow2 && qemu-io -c 'write -P 5 1M 8k' a.qcow2 >/dev/null"
    );
    let points = kill_walk(
        "kill_snap_apply",
        &setup,
        &["snapshot", "-a", "s1", "a.qcow2"],
        "a.qcow2",
        false,
    );
    assert!(points > 10, "{points}");
}

/// `a.qcow2` with data, a compressed cluster, and snapshots `s1` and `s2`
/// that share some L2 tables and data clusters with the active state and
/// not others.
const SNAPSHOTS: &str = "qemu-img create -q -f qcow2 -o cluster_size=4k a.qcow2 4M && \
    qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 2M 64k' -c 'write -c -P 9 3M 4k' a.qcow2 >/dev/null && \
    qemu-img snapshot -c s1 a.qcow2 && \
    qemu-io -c 'write -P 3 512k 64k' -c 'write -P 4 3M 8k' a.qcow2 >/dev/null && \
    qemu-img snapshot -c s2 a.qcow2 && \
    qemu-io -c 'write -P 5 1M 8k' a.qcow2 >/dev/null";

/// Stops `snapshot ARGS a.qcow2` (on [`SNAPSHOTS`]) at every change with
/// `fault`. After each stop `qemu-img check` must find nothing worse than
/// leaks, the active data must be unchanged, and every snapshot the image
/// lists must hold its data (`s3`, the one `-c` makes, the active data).
/// After the last run the image must be clean. Returns the stopping points.
fn snapshot_walk(name: &str, args: &[&str], fault: Fault) -> usize {
    let fx = Fixture::new(name);
    fx.sh(SNAPSHOTS);
    fx.sh("mkdir .pristine && cp -a * .pristine/");
    fx.sh("qemu-img convert -O raw a.qcow2 s3.raw && \
         qemu-img convert -l s1 -O raw a.qcow2 s1.raw && \
         qemu-img convert -l s2 -O raw a.qcow2 s2.raw");
    let mut cmd = vec!["snapshot"];
    cmd.extend_from_slice(args);
    cmd.push("a.qcow2");
    let points = stop_at_each_change(&fx, name, &cmd, fault, &|n| {
        let check = fx.qemu_img(&["check", "a.qcow2"]);
        assert!(
            check.status == 0 || check.status == 3,
            "{name}: stopped at change {n}, qemu-img check says:\n{}{}",
            check.stdout,
            check.stderr
        );
        let same = fx.qemu_img(&["compare", "-F", "raw", "a.qcow2", "s3.raw"]);
        assert_eq!(same.status, 0, "{name}: {n}: active data: {}", same.stdout);
        let list = fx.qemu_img(&["snapshot", "-l", "a.qcow2"]);
        let tags: Vec<&str> = list
            .stdout
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert!(
            tags.contains(&"s2") || args[1] == "s2",
            "{name}: {n}: {tags:?}"
        );
        // A full disk at the last flush fails a change that landed.
        let landed = args[0] == "-d" && !tags.contains(&args[1]);
        for tag in tags {
            fx.sh(&format!("qemu-img convert -l {tag} -O raw a.qcow2 got.raw"));
            fx.same_raw("got.raw", &format!("{tag}.raw"));
        }
        if fault == Fault::NoSpace {
            // qemu-img's failed snapshot -c leaves a stale refcount that
            // makes this abort.
            let grow = fx.qimg(&["resize", "--preallocation=full", "a.qcow2", "+1M"]);
            assert_eq!(grow.status, 0, "{name}: {n}: resize: {}", grow.stderr);
            let check = fx.qemu_img(&["check", "a.qcow2"]);
            assert!(
                check.status == 0 || check.status == 3,
                "{name}: {n}: {}",
                check.stdout
            );
        }
        if fault == Fault::NoSpace && !landed {
            let again = fx.qimg(&cmd);
            assert_eq!(
                again.status, 0,
                "{name}: after ENOSPC at {n}: {}",
                again.stderr
            );
        }
    });
    let check = fx.qemu_img(&["check", "a.qcow2"]);
    assert_eq!(check.status, 0, "{name}: {}", check.stdout);
    points
}

#[test]
fn snapshot_create_and_delete_are_consistent_at_every_kill_point() {
    // qemu-img leaves OFLAG_COPIED errors at some of these points: a
    // refcount and the flag saying it is one live in different clusters.
    for (name, args) in [
        ("kill_snap_create", ["-c", "s3"]),
        ("kill_snap_delete_shared", ["-d", "s2"]),
        ("kill_snap_delete_oldest", ["-d", "s1"]),
    ] {
        let points = snapshot_walk(name, &args, Fault::Kill);
        assert!(points > 3, "{name}: {points}");
    }
}

#[test]
fn snapshot_create_and_delete_on_a_full_disk_leave_the_image_as_it_was() {
    for (name, args) in [
        ("nospace_snap_create", ["-c", "s3"]),
        ("nospace_snap_delete", ["-d", "s2"]),
    ] {
        let points = snapshot_walk(name, &args, Fault::NoSpace);
        assert!(points > 3, "{name}: {points}");
    }
}

#[test]
fn shrinking_frees_clusters_only_after_no_table_names_them() {
    let points = kill_walk(
        "kill_shrink",
        BASE,
        &["resize", "--shrink", "a.qcow2", "1M"],
        "a.qcow2",
        false,
    );
    assert!(points > 3, "{points}");
}

#[test]
fn discarding_and_rewriting_is_consistent_at_every_kill_point() {
    // convert -n over an image with data: clusters the source leaves empty
    // are freed, others rewritten.
    let setup = format!(
        "{BASE} && qemu-img create -q -f raw src.raw 4M && \
         qemu-io -f raw -c 'write -P 7 512k 1M' src.raw >/dev/null"
    );
    kill_walk(
        "kill_convert_n",
        &setup,
        &[
            "convert", "-n", "-f", "raw", "-O", "qcow2", "src.raw", "a.qcow2",
        ],
        "a.qcow2",
        false,
    );
}

#[test]
fn data_keeping_operations_keep_data_at_every_kill_point() {
    let overlay = format!(
        "{BASE} && qemu-img create -q -f qcow2 -o cluster_size=4k -b a.qcow2 -F qcow2 t.qcow2 && \
         qemu-io -c 'write -P 5 256k 1M' -c 'write -z 2M 64k' t.qcow2 >/dev/null && \
         qemu-img create -q -f qcow2 b.qcow2 4M"
    );
    let cases: [(&str, &str, &[&str], &str); 7] = [
        (
            "kill_resize",
            BASE,
            &["resize", "a.qcow2", "64M"],
            "a.qcow2",
        ),
        // Preallocation moves the refcount table before the new data: the
        // old one stays counted until the header names the new one.
        (
            "kill_resize_falloc",
            BASE,
            &["resize", "--preallocation=falloc", "a.qcow2", "+8M"],
            "a.qcow2",
        ),
        (
            "kill_amend",
            BASE,
            &["amend", "-o", "compat=0.10", "a.qcow2"],
            "a.qcow2",
        ),
        (
            "kill_lazy",
            BASE,
            &["amend", "-o", "lazy_refcounts=on", "a.qcow2"],
            "a.qcow2",
        ),
        (
            "kill_bitmap",
            BASE,
            &["bitmap", "--add", "a.qcow2", "b0"],
            "a.qcow2",
        ),
        ("kill_commit", &overlay, &["commit", "t.qcow2"], "t.qcow2"),
        (
            "kill_rebase",
            &overlay,
            &["rebase", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2"],
            "t.qcow2",
        ),
    ];
    for (name, setup, args, image) in cases {
        let points = kill_walk(name, setup, args, image, true);
        assert!(points > 0, "{name}");
    }
}

#[test]
fn bitmap_operations_are_consistent_at_every_kill_point() {
    // Two persistent bitmaps with bits set by guest writes.
    let setup = format!(
        "{BASE} && qemu-img bitmap --add a.qcow2 b0 && \
         qemu-img bitmap --add -g 64k a.qcow2 b1 && \
         qemu-io -c 'write -P 6 256k 128k' -c 'write -P 7 3M 4k' a.qcow2 >/dev/null"
    );
    let cases: [(&str, &[&str]); 5] = [
        ("kill_bitmap_remove", &["--remove", "a.qcow2", "b0"]),
        ("kill_bitmap_clear", &["--clear", "a.qcow2", "b1"]),
        ("kill_bitmap_merge", &["--merge", "b1", "a.qcow2", "b0"]),
        ("kill_bitmap_disable", &["--disable", "a.qcow2", "b0"]),
        (
            "kill_bitmap_several",
            &["--clear", "--disable", "a.qcow2", "b1"],
        ),
    ];
    for (name, args) in cases {
        let mut cmd = vec!["bitmap"];
        cmd.extend_from_slice(args);
        let points = kill_walk(name, &setup, &cmd, "a.qcow2", true);
        assert!(points > 0, "{name}");
    }
}

#[test]
fn a_full_disk_at_any_point_leaves_images_consistent_and_usable() {
    let overlay = format!(
        "{BASE} && qemu-img create -q -f qcow2 -o cluster_size=4k -b a.qcow2 -F qcow2 t.qcow2 && \
         qemu-io -c 'write -P 5 256k 1M' t.qcow2 >/dev/null && \
         qemu-img create -q -f qcow2 b.qcow2 4M"
    );
    // 64 KiB clusters: a few dozen changes, not hundreds, each tried twice.
    let snapshots = "qemu-img create -q -f qcow2 a.qcow2 4M && \
         qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 2M 64k' a.qcow2 >/dev/null && \
         qemu-img snapshot -c s1 a.qcow2 && \
         qemu-io -c 'write -P 3 512k 1M' a.qcow2 >/dev/null";
    let cases: [(&str, &str, &[&str], &str, bool); 7] = [
        (
            "nospace_resize_falloc",
            BASE,
            &["resize", "--preallocation=falloc", "a.qcow2", "+8M"],
            "a.qcow2",
            true,
        ),
        (
            "nospace_snap_apply",
            snapshots,
            &["snapshot", "-a", "s1", "a.qcow2"],
            "a.qcow2",
            false,
        ),
        (
            "nospace_resize",
            BASE,
            &["resize", "a.qcow2", "64M"],
            "a.qcow2",
            true,
        ),
        (
            "nospace_shrink",
            BASE,
            &["resize", "--shrink", "a.qcow2", "1M"],
            "a.qcow2",
            false,
        ),
        (
            "nospace_amend",
            BASE,
            &["amend", "-o", "compat=0.10", "a.qcow2"],
            "a.qcow2",
            true,
        ),
        (
            "nospace_commit",
            &overlay,
            &["commit", "t.qcow2"],
            "t.qcow2",
            true,
        ),
        (
            "nospace_rebase",
            &overlay,
            &["rebase", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2"],
            "t.qcow2",
            true,
        ),
    ];
    for (name, setup, args, image, keeps) in cases {
        let points = fault_walk(name, setup, args, image, keeps, Fault::NoSpace);
        assert!(points > 0, "{name}");
    }
}

#[test]
fn vmdk_writes_are_consistent_at_every_kill_point() {
    let setup = "qemu-img create -q -f vmdk a.vmdk 4M && \
        qemu-io -f vmdk -c 'write -P 1 0 1M' -c 'write -P 2 2M 64k' a.vmdk >/dev/null && \
        qemu-img create -q -f raw r.raw 4M && \
        qemu-io -f raw -c 'write -P 7 512k 2M' r.raw >/dev/null";
    let points = kill_walk(
        "kill_vmdk_convert_n",
        setup,
        &[
            "convert", "-n", "-f", "raw", "-O", "vmdk", "r.raw", "a.vmdk",
        ],
        "a.vmdk",
        false,
    );
    assert!(points > 10, "{points}");
    kill_walk(
        "kill_vmdk_resize",
        setup,
        &["resize", "-f", "vmdk", "a.vmdk", "64M"],
        "a.vmdk",
        true,
    );
}

/// The secrets the LUKS walks name: `s` opens slot 0, `n` slot 1, `m` is
/// the one being added.
const SECRETS: [&str; 6] = [
    "--object",
    "secret,id=s,data=old",
    "--object",
    "secret,id=n,data=other",
    "--object",
    "secret,id=m,data=new",
];

/// Key-slot changes (amend) of standalone luks and of qcow2 + LUKS, killed at
/// every change: the secret that opened the image before must still open it
/// and read the same data, and a qcow2 must pass qemu-img check.
#[test]
fn key_slot_changes_keep_the_image_openable_at_every_kill_point() {
    for (driver, prefix, create) in [
        ("luks", "", "key-secret=s,iter-time=10"),
        (
            "qcow2",
            "encrypt.",
            "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10",
        ),
    ] {
        let opts =
            |key: &str| format!("driver={driver},file.filename=img,{prefix}key-secret={key}");
        let secrets = SECRETS.join(" ");
        for (what, key, change) in [
            ("add", "s", "state=active,new-secret=m,iter-time=10"),
            ("erase", "s", "state=inactive,keyslot=1"),
        ] {
            let name = format!("kill_keys_{driver}_{what}");
            let fx = Fixture::new(&name);
            fx.sh(&format!(
                "qemu-img create -q -f {driver} {secrets} -o {create} img 1M && \
                 qemu-io {secrets} --image-opts {} -c 'write -P 0x5a 0 64k' >/dev/null && \
                 qemu-img amend {secrets} --image-opts {} -o {prefix}state=active,{prefix}new-secret=n,{prefix}iter-time=10 && \
                 qemu-img convert {secrets} --image-opts {} -O raw before.raw && \
                 mkdir .pristine && cp -a * .pristine/",
                opts("s"),
                opts("s"),
                opts("s"),
            ));
            let change: Vec<String> = change
                .split(',')
                .map(|kv| format!("{prefix}{kv}"))
                .collect();
            let change = change.join(",");
            let image = opts(key);
            let mut args = vec!["amend"];
            args.extend(SECRETS);
            args.extend(["--image-opts", &image, "-o", &change]);
            // The guest data unlocked with secret `key` equals what it was.
            let same_with = |key: &str, n: usize| {
                let mut compare = vec!["compare"];
                compare.extend(SECRETS);
                let image = opts(key);
                compare.extend([
                    "--image-opts",
                    &image,
                    "driver=raw,file.filename=before.raw",
                ]);
                let same = fx.qemu_img(&compare);
                assert_eq!(
                    same.status, 0,
                    "{name}: killed at change {n}, secret {key}: {}{}",
                    same.stdout, same.stderr
                );
            };
            let points = stop_at_each_change(&fx, &name, &args, Fault::Kill, &|n| {
                same_with(key, n);
                // A slot the header names active opens with its secret.
                let info = fx.qemu_img(&["info", "--output=json", "img"]);
                if what == "add" && info.stdout.matches("\"active\": true").count() == 3 {
                    same_with("m", n);
                }
                if driver == "qcow2" {
                    let mut check = vec!["check"];
                    check.extend(SECRETS);
                    check.extend(["--image-opts", &image]);
                    let check = fx.qemu_img(&check);
                    assert!(
                        check.status == 0 || check.status == 3,
                        "{name}: killed at change {n}: {}",
                        check.stdout
                    );
                }
            });
            assert!(points > 2, "{name}: {points}");
        }
    }
}

/// vpc writes, killed at every change: `convert -n` over existing data
/// allocates blocks and rewrites others; `resize` grows the table (moving
/// it when it has no room). qemu-img cannot check vpc, so after each kill
/// the image must open and read in qemu-img, and a resize must keep the
/// guest's data. (The other table formats have their own walks in
/// vdi.rs, qed.rs and parallels.rs.)
#[test]
fn vpc_writes_keep_the_image_readable_at_every_kill_point() {
    for subformat in ["dynamic", "fixed"] {
        let setup = format!(
            "qemu-img create -q -f vpc -o subformat={subformat} a.vhd 4M && \
             qemu-io -f vpc -c 'write -P 1 0 1M' -c 'write -P 2 2M 64k' a.vhd >/dev/null && \
             qemu-img create -q -f raw r.raw 4M && \
             qemu-io -f raw -c 'write -P 7 512k 2M' -c 'write -P 8 3M 4k' r.raw >/dev/null && \
             qemu-img convert -f vpc -O raw a.vhd before.raw && \
             mkdir .pristine && cp -a * .pristine/"
        );
        let convert = ["convert", "-n", "-f", "raw", "-O", "vpc", "r.raw", "a.vhd"];
        let resize = ["resize", "-f", "vpc", "a.vhd", "64M"];
        for (op, args, keeps) in [
            ("convert_n", &convert[..], false),
            ("resize", &resize[..], true),
        ] {
            let name = format!("kill_vpc_{subformat}_{op}");
            let fx = Fixture::new(&name);
            fx.sh(&setup);
            let points = stop_at_each_change(&fx, &name, args, Fault::Kill, &|n| {
                let read =
                    fx.qemu_img(&["convert", "-f", "vpc", "-O", "raw", "a.vhd", "after.raw"]);
                assert_eq!(
                    read.status, 0,
                    "{name}: killed at change {n}: {}",
                    read.stderr
                );
                if keeps {
                    let same = fx.qemu_img(&[
                        "compare",
                        "-f",
                        "raw",
                        "-F",
                        "raw",
                        "after.raw",
                        "before.raw",
                    ]);
                    assert_eq!(
                        same.status, 0,
                        "{name}: killed at change {n}: {}",
                        same.stdout
                    );
                }
            });
            assert!(points > 2, "{name}: {points}");
        }
    }
}

/// A new target that `convert` or `dd` was writing when it was killed must
/// not pass for an image: at every kill point the real qemu-img either
/// refuses to open it as its format or finds it equal to the source (the
/// copy had ended). qemu-img leaves such targets opening with missing data.
#[test]
fn a_killed_copy_never_leaves_a_target_that_opens_as_an_image() {
    let setup = "qemu-img create -q -f raw src.raw 6M && \
        qemu-io -f raw -c 'write -P 7 0 1M' -c 'write -P 9 3M 1M' src.raw >/dev/null && \
        mkdir .pristine && cp -a * .pristine/";
    let copies: [(&str, &[&str]); 11] = [
        ("qcow2", &[]),
        ("qed", &[]),
        ("vdi", &[]),
        ("vpc", &[]),
        // A fixed VHD is one by its footer alone.
        ("vpc", &["-o", "subformat=fixed"]),
        ("vhdx", &["-o", "subformat=fixed"]),
        ("vhdx", &[]),
        ("parallels", &[]),
        ("vmdk", &[]),
        ("vmdk", &["-o", "subformat=monolithicFlat"]),
        ("vmdk", &["-o", "subformat=streamOptimized"]),
    ];
    for (i, (format, options)) in copies.into_iter().enumerate() {
        let name = format!("kill_copy_{i}_{format}");
        let fx = Fixture::new(&name);
        fx.sh(setup);
        let target = format!("out.{format}");
        let mut args = vec!["convert", "-O", format];
        args.extend_from_slice(options);
        args.extend_from_slice(&["src.raw", &target]);
        let dd_target = format!("of={target}");
        let dd = ["dd", "-O", format, "bs=64k", "if=src.raw", &dd_target];
        let commands: &[&[&str]] = if i < 3 { &[&args, &dd] } else { &[&args] };
        for command in commands {
            let points = stop_at_each_change(&fx, &name, command, Fault::Kill, &|n| {
                let opened = fx.qemu_img(&["info", "-f", format, &target]);
                if opened.status == 0 {
                    let same =
                        fx.qemu_img(&["compare", "-f", format, "-F", "raw", &target, "src.raw"]);
                    assert_eq!(
                        same.status, 0,
                        "{name} {command:?}: killed at change {n}, the target opens as {format} \
                         with other data: {}",
                        same.stdout
                    );
                }
                fx.sh("rm -f out*");
            });
            assert!(points > 5, "{name} {command:?}: {points}");
            let same = fx.qemu_img(&["compare", "-f", format, "-F", "raw", &target, "src.raw"]);
            assert_eq!(same.status, 0, "{name} {command:?}: {}", same.stdout);
            fx.sh("rm -f out*");
        }
    }
}

/// Waits until `file` in `fx` holds more than `bytes` bytes (the copy is
/// under way), for at most ten seconds.
fn wait_for_growth(fx: &Fixture, file: &str, bytes: u64) {
    for _ in 0..1000 {
        if std::fs::metadata(fx.path(file)).is_ok_and(|m| m.len() > bytes) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{file} did not grow past {bytes} bytes");
}

/// A copy that SIGINT, SIGTERM or SIGHUP interrupts removes the target it
/// created, as a failed one does, and still ends by that signal (the exit
/// status qemu-img gives, which does not catch them and leaves the
/// half-written target). A target that existed before is left in place,
/// and a signal the caller ignores (nohup) changes nothing.
#[test]
fn an_interrupted_copy_removes_the_target_it_created() {
    let fx = Fixture::new("interrupted_copy");
    fx.sh("qemu-img create -q -f raw src.raw 16M && \
         qemu-io -f raw -c 'write -P 7 0 16M' src.raw >/dev/null");
    // -r 4M: four seconds of copying, interrupted within the first.
    let slow = ["-r", "4M", "src.raw"];
    // Files the creation made beside the target (extents, a data file)
    // go with it.
    for (signal, format, options, growing) in [
        (libc::SIGINT, "qcow2", "data_file=out.data", "out.data"),
        (libc::SIGTERM, "raw", "", "out.raw"),
        (
            libc::SIGHUP,
            "vmdk",
            "subformat=twoGbMaxExtentSparse",
            "out-s001.vmdk",
        ),
    ] {
        let target = format!("out.{format}");
        let mut args = vec!["convert", "-O", format, "-o", options];
        if options.is_empty() {
            args.truncate(3);
        }
        args.extend_from_slice(&slow);
        args.push(&target);
        let mut child = fx.spawn_qimg(&args);
        wait_for_growth(&fx, growing, 1 << 20);
        // SAFETY: kill(2) on the child we started.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().expect("wait for qimg");
        assert_eq!(status.signal(), Some(signal), "{format}: {status:?}");
        let left = fx.sh("ls out* 2>/dev/null || true");
        assert!(left.is_empty(), "{format}: left behind: {left}");
    }
    // An existing target (convert -n) is the user's: it stays.
    fx.sh("qemu-img create -q -f qcow2 old.qcow2 16M");
    let mut child = fx.spawn_qimg(&[
        "convert",
        "-n",
        "-r",
        "4M",
        "-O",
        "qcow2",
        "src.raw",
        "old.qcow2",
    ]);
    wait_for_growth(&fx, "old.qcow2", 1 << 20);
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait for qimg");
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert!(fx.path("old.qcow2").exists());
    // Ignored before qimg started, SIGHUP does not stop the copy.
    let qimg = fx.path(".bin/qemu-img");
    let script = format!(
        "trap '' HUP; {} convert -r 16M -O qcow2 src.raw kept.qcow2 & \
         while [ ! -s kept.qcow2 ]; do sleep 0.01; done; kill -HUP $!; wait $!",
        qimg.display()
    );
    let ended = Command::new("sh")
        .args(["-c", &script])
        .current_dir(fx.path(""))
        .env("QIMG_PLUGINS", qimg_tests::workspace().join("plugins.toml"))
        .status()
        .expect("run sh");
    assert!(ended.success(), "{ended:?}");
    let same = fx.qemu_img(&["compare", "-F", "raw", "kept.qcow2", "src.raw"]);
    assert_eq!(same.status, 0, "{}", same.stdout);
}

/// A target named by a symbolic link to a file not there yet: the command
/// creates the file behind the link, and a failure or a signal removes
/// that file and keeps the link (qemu-img creates through the link too).
#[test]
fn a_target_created_through_a_dangling_link_is_removed_and_the_link_kept() {
    let fx = Fixture::new("dangling_link_target");
    fx.sh("qemu-img create -q -f raw src.raw 16M && \
         qemu-io -f raw -c 'write -P 7 0 16M' src.raw >/dev/null && \
         mkdir store && ln -s store/made.qcow2 link.qcow2");
    let gone = |what: &str| {
        let link = std::fs::symlink_metadata(fx.path("link.qcow2")).expect("the link stays");
        assert!(link.file_type().is_symlink(), "{what}");
        assert!(
            !fx.path("store/made.qcow2").exists(),
            "{what}: the file stays"
        );
    };
    // Out of space after the image was made: the copy fails.
    let out = fx.qimg_env(
        &["convert", "-O", "qcow2", "src.raw", "link.qcow2"],
        &[("QIMG_FAULT", "enospc-after:6")],
    );
    assert_eq!(out.status, 1, "{}", out.stderr);
    gone("failed copy");
    let mut child = fx.spawn_qimg(&[
        "convert",
        "-r",
        "4M",
        "-O",
        "qcow2",
        "src.raw",
        "link.qcow2",
    ]);
    wait_for_growth(&fx, "store/made.qcow2", 1 << 20);
    // SAFETY: kill(2) on the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait for qimg");
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    gone("interrupted copy");
    // Through a link to a file that exists, the file is the user's: it
    // stays when the command fails.
    fx.sh("qemu-img create -q -f qcow2 store/made.qcow2 16M");
    let out = fx.qimg_env(
        &["convert", "-O", "qcow2", "src.raw", "link.qcow2"],
        &[("QIMG_FAULT", "enospc-after:6")],
    );
    assert_eq!(out.status, 1, "{}", out.stderr);
    assert!(fx.path("store/made.qcow2").exists());
}
