//! `compare`, against `qemu-img compare`: verdicts, progress and exit status.

use qimg_tests::same_cases;

same_cases! {
    identical => ["compare", "mid.raw", "mid2.raw"],
    content_mismatch => ["compare", "mid.raw", "diff.raw"],
    named_formats => ["compare", "-f", "raw", "-F", "raw", "mid.raw", "diff.raw"],
    size_mismatch => ["compare", "mid.raw", "big.raw"],
    size_mismatch_reversed => ["compare", "big.raw", "mid.raw"],
    strict_size_mismatch => ["compare", "-s", "mid.raw", "big.raw"],
    strict_identical => ["compare", "-s", "mid.raw", "mid2.raw"],
    strict_content => ["compare", "-s", "mid.raw", "diff.raw"],
    hole_vs_written_zeros => ["compare", "sparse.raw", "zeros.raw"],
    strict_hole_vs_written_zeros => ["compare", "-s", "sparse.raw", "zeros.raw"],
    tail_has_data => ["compare", "full.raw", "mid.raw"],
    empty_vs_sparse => ["compare", "empty.raw", "sparse.raw"],
    empty_vs_full => ["compare", "empty.raw", "full.raw"],
    missing_second => ["compare", "mid.raw", "missing.raw"],
    missing_first => ["compare", "missing.raw", "mid.raw"],
    one_file => ["compare", "mid.raw"],
    three_files => ["compare", "mid.raw", "mid2.raw", "x"],
    quiet_identical => ["compare", "-q", "mid.raw", "mid2.raw"],
    quiet_mismatch => ["compare", "-q", "mid.raw", "diff.raw"],
    progress_identical => ["compare", "-p", "mid.raw", "mid2.raw"],
    progress_mismatch => ["compare", "-p", "mid.raw", "diff.raw"],
    progress_size_mismatch => ["compare", "-p", "mid.raw", "big.raw"],
    progress_strict => ["compare", "-p", "-s", "mid.raw", "big.raw"],
    progress_open_failure => ["compare", "-p", "mid.raw", "missing.raw"],
    progress_quiet => ["compare", "-p", "-q", "mid.raw", "mid2.raw"],
    bad_cache => ["compare", "-T", "bogus", "mid.raw", "mid2.raw"],
    odd_vs_padded => ["compare", "odd.raw", "mid.raw"],
}

/// Strict mode meets a content mismatch before a later allocation mismatch,
/// as qemu-img walks the images in order (with and without progress).
#[test]
fn strict_reports_the_first_difference_in_order() {
    let fx = qimg_tests::Fixture::new("compare_strict_order");
    for (name, pattern, extra) in [("a", "0x11", None), ("b", "0x22", Some("2M"))] {
        let file = format!("{name}.qcow2");
        fx.make_qcow2(&file, "", "4M");
        let mut commands = vec![format!("write -P {pattern} 1M 64k")];
        commands.extend(extra.map(|at| format!("write -z {at} 64k")));
        let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
        fx.qemu_io_cmds("qcow2", &file, &commands);
    }
    let first = fx.same(&["compare", "-s", "a.qcow2", "b.qcow2"]);
    assert!(first.stdout.contains("Content mismatch at offset 1048576"));
    fx.same(&["compare", "-p", "-s", "a.qcow2", "b.qcow2"]);
    // Once the content is equal, the allocation difference is what remains.
    fx.qemu_io_cmds("qcow2", "b.qcow2", &["write -P 0x11 1M 64k"]);
    let second = fx.same(&["compare", "-s", "a.qcow2", "b.qcow2"]);
    assert!(second.stdout.contains("block status mismatch"));
}

/// qemu-img's progress moves by each block-status answer, and qcow2 answers
/// an L2 table's span at most: with small clusters `-p` prints many steps.
#[test]
fn progress_moves_by_each_l2_table() {
    let fx = qimg_tests::Fixture::new("compare_progress_l2");
    for (i, opts) in ["cluster_size=512", "cluster_size=4096", ""]
        .iter()
        .enumerate()
    {
        let file = format!("c{i}.qcow2");
        fx.make_qcow2(&file, opts, "64M");
        fx.qemu_io_cmds(
            "qcow2",
            &file,
            &["write -P 1 0 4k", "write -P 3 5M 3M", "write -z 9M 1M"],
        );
        let out = fx.same(&["compare", "-p", &file, &file]);
        if !opts.is_empty() {
            assert!(out.stdout.matches('\r').count() > 20, "{}", out.stdout);
        }
    }
}
