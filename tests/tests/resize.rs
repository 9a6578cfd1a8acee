//! `resize`, against `qemu-img resize`: output, exit status and the file.

use qimg_tests::Fixture;

fn resized(args: &[&str], name: &str) {
    let fx = Fixture::new(name);
    fx.oracle(&["create", "-q", "-f", "raw", "rs.raw", "1M"]);
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "IMG" { "{}" } else { a })
        .collect();
    fx.same_effect(&args, "rs.raw");
}

macro_rules! resize_cases {
    ($($name:ident => [$($arg:expr),* $(,)?]),+ $(,)?) => {
        $( #[test] fn $name() { resized(&[$($arg),*], stringify!($name)); } )+
    };
}

resize_cases! {
    grow_probed => ["resize", "IMG", "2M"],
    grow => ["resize", "-f", "raw", "IMG", "2M"],
    grow_relative => ["resize", "-f", "raw", "IMG", "+1M"],
    shrink_relative_needs_flag => ["resize", "-f", "raw", "IMG", "--", "-512K"],
    shrink_needs_flag => ["resize", "-f", "raw", "IMG", "512K"],
    shrink => ["resize", "-f", "raw", "--shrink", "IMG", "512K"],
    shrink_probed => ["resize", "--shrink", "IMG", "512K"],
    shrink_relative_without_dashes => ["resize", "-f", "raw", "--shrink", "IMG", "-512K"],
    same_size => ["resize", "-f", "raw", "IMG", "1M"],
    plus_zero => ["resize", "-f", "raw", "IMG", "+0"],
    unaligned_grow => ["resize", "-f", "raw", "IMG", "1048577"],
    fraction => ["resize", "-f", "raw", "IMG", "1.5M"],
    preallocation_full => ["resize", "-f", "raw", "--preallocation=full", "IMG", "2M"],
    preallocation_falloc => ["resize", "-f", "raw", "--preallocation=falloc", "IMG", "2M"],
    preallocation_off => ["resize", "-f", "raw", "--preallocation=off", "IMG", "2M"],
    preallocation_metadata => ["resize", "-f", "raw", "--preallocation=metadata", "IMG", "2M"],
    preallocation_bogus => ["resize", "-f", "raw", "--preallocation=bogus", "IMG", "2M"],
    preallocation_shrink => ["resize", "-f", "raw", "--preallocation=full", "--shrink", "IMG", "512K"],
    bad_suffix => ["resize", "-f", "raw", "IMG", "1X"],
    bad_relative_suffix => ["resize", "-f", "raw", "IMG", "+1X"],
    wraps_negative => ["resize", "-f", "raw", "IMG", "8E"],
    shrink_below_zero => ["resize", "-f", "raw", "--shrink", "IMG", "--", "-2M"],
    to_zero => ["resize", "-f", "raw", "--shrink", "IMG", "0"],
    quiet => ["resize", "-q", "-f", "raw", "IMG", "2M"],
    no_size => ["resize", "-f", "raw", "IMG"],
    extra_argument => ["resize", "-f", "raw", "IMG", "2M", "extra"],
    nothing => ["resize"],
    missing_file => ["resize", "-f", "raw", "missing.raw", "2M"],
    too_large_for_fs => ["resize", "-f", "raw", "IMG", "1P"],
}

#[test]
fn odd_sized_image_uses_rounded_size() {
    let cases: [&[&str]; 3] = [
        &["resize", "-f", "raw", "{}", "+0"],
        &["resize", "-f", "raw", "{}", "1000"],
        &["resize", "-f", "raw", "--shrink", "{}", "1000"],
    ];
    for (i, args) in cases.iter().enumerate() {
        let fx = Fixture::new(&format!("oddresize{i}"));
        std::fs::write(fx.path("rs.raw"), vec![1u8; 1000]).unwrap();
        fx.same_effect(args, "rs.raw");
    }
}
