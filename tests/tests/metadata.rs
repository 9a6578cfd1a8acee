//! check, snapshot, amend, bitmap, commit and rebase on raw images, which have
//! none of the metadata these act on: qemu-img's messages and exit statuses.

use qimg_tests::{same_cases, Fixture};

same_cases! {
    check_unsupported => ["check", "mid.raw"],
    check_named => ["check", "-f", "raw", "mid.raw"],
    check_json => ["check", "--output=json", "mid.raw"],
    check_repair_probed => ["check", "-r", "all", "mid.raw"],
    check_repair_leaks => ["check", "-r", "leaks", "-f", "raw", "mid.raw"],
    check_bad_repair => ["check", "-r", "bogus", "mid.raw"],
    check_quiet => ["check", "-q", "mid.raw"],
    check_missing => ["check", "missing.raw"],
    check_no_file => ["check"],
    check_bad_output => ["check", "--output=bogus", "mid.raw"],
    snapshot_list => ["snapshot", "-l", "mid.raw"],
    snapshot_default_list => ["snapshot", "mid.raw"],
    snapshot_list_shared => ["snapshot", "-l", "-U", "mid.raw"],
    snapshot_create => ["snapshot", "-c", "snap1", "-f", "raw", "mid.raw"],
    snapshot_create_probed => ["snapshot", "-c", "snap1", "mid.raw"],
    snapshot_apply => ["snapshot", "-a", "snap1", "-f", "raw", "mid.raw"],
    snapshot_delete => ["snapshot", "-d", "snap1", "-f", "raw", "mid.raw"],
    snapshot_mixed => ["snapshot", "-l", "-c", "x", "mid.raw"],
    snapshot_missing => ["snapshot", "-l", "missing.raw"],
    amend_unsupported => ["amend", "-o", "size=2M", "-f", "raw", "mid.raw"],
    amend_probed => ["amend", "-o", "size=2M", "mid.raw"],
    amend_without_options => ["amend", "-f", "raw", "mid.raw"],
    amend_help_on_raw => ["amend", "-o", "help", "-f", "raw", "mid.raw"],
    amend_no_file => ["amend", "-o", "help"],
    amend_missing => ["amend", "-o", "size=2M", "missing.raw"],
    bitmap_remove => ["bitmap", "--remove", "-f", "raw", "mid.raw", "b0"],
    bitmap_clear => ["bitmap", "--clear", "-f", "raw", "mid.raw", "b0"],
    bitmap_enable => ["bitmap", "--enable", "-f", "raw", "mid.raw", "b0"],
    bitmap_no_operation => ["bitmap", "-f", "raw", "mid.raw", "b0"],
    bitmap_no_name => ["bitmap", "--add", "-f", "raw", "mid.raw"],
    bitmap_missing => ["bitmap", "--add", "missing.raw", "b0"],
    commit_probed => ["commit", "mid.raw"],
    commit_no_backing => ["commit", "-f", "raw", "mid.raw"],
    commit_quiet => ["commit", "-q", "-f", "raw", "mid.raw"],
    commit_progress => ["commit", "-p", "-f", "raw", "mid.raw"],
    commit_drop => ["commit", "-d", "-f", "raw", "mid.raw"],
    commit_base_not_in_chain => ["commit", "-b", "base.raw", "-f", "raw", "mid.raw"],
    commit_missing => ["commit", "missing.raw"],
    commit_no_file => ["commit"],
    rebase_missing_new_backing => ["rebase", "-b", "base.raw", "mid.raw"],
    rebase_to_none => ["rebase", "-f", "raw", "-b", "", "mid.raw"],
    rebase_unsafe_needs_format => ["rebase", "-u", "-f", "raw", "-b", "base.raw", "mid.raw"],
    rebase_unsafe_to_none => ["rebase", "-u", "-f", "raw", "-b", "", "mid.raw"],
    rebase_needs_backing => ["rebase", "-f", "raw", "mid.raw"],
    rebase_unsupported => ["rebase", "-f", "raw", "-b", "mid2.raw", "-F", "raw", "mid.raw"],
    rebase_unsafe_unsupported => ["rebase", "-u", "-f", "raw", "-b", "mid2.raw", "-F", "raw", "mid.raw"],
    rebase_progress => ["rebase", "-p", "-f", "raw", "-b", "mid2.raw", "-F", "raw", "mid.raw"],
    rebase_missing => ["rebase", "missing.raw", "-b", "x"],
    rebase_no_file => ["rebase"],
}

#[test]
fn bitmap_add_is_refused() {
    // qemu-img names an internal node (#blockNNN, varying per run) here, so
    // only the shape of the message and the status are compared.
    let fx = Fixture::with_images("bitmapadd");
    let ours = fx.qimg(&["bitmap", "--add", "-f", "raw", "mid.raw", "b0"]);
    let theirs = fx.qemu_img(&["bitmap", "--add", "-f", "raw", "mid.raw", "b0"]);
    assert_eq!(ours.status, theirs.status);
    let prefix = "qemu-img: Operation add on bitmap b0 failed: Can't store persistent bitmaps to ";
    assert!(
        ours.stderr.starts_with(prefix) && theirs.stderr.starts_with(prefix),
        "{ours:?} vs {theirs:?}"
    );
    assert!(ours.stderr.ends_with(": Operation not supported\n"));
}
