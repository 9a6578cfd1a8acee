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
    }
    unreachable!()
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
    let cases: [(&str, &str, &[&str], &str); 6] = [
        (
            "kill_resize",
            BASE,
            &["resize", "a.qcow2", "64M"],
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
    let cases: [(&str, &str, &[&str], &str, bool); 6] = [
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
