//! `dd`, against `qemu-img dd`: messages, exit status and the output file.

use qimg_tests::Fixture;

fn copied(args: &[&str], name: &str) {
    let fx = Fixture::with_images(name);
    fx.sh("head -c 2M /dev/urandom > src.raw");
    fx.same_effect(args, "out.raw");
}

macro_rules! dd_cases {
    ($($name:ident => [$($arg:expr),* $(,)?]),+ $(,)?) => {
        $( #[test] fn $name() { copied(&[$($arg),*], stringify!($name)); } )+
    };
}

dd_cases! {
    whole_input => ["dd", "if=src.raw", "of={}"],
    block_size => ["dd", "-f", "raw", "-O", "raw", "if=src.raw", "of={}", "bs=64k"],
    count => ["dd", "if=src.raw", "of={}", "bs=64k", "count=3"],
    count_from_input_start => ["dd", "if=src.raw", "of={}", "bs=64k", "count=3", "skip=2"],
    skip_past_count => ["dd", "if=src.raw", "of={}", "bs=64k", "count=1", "skip=2"],
    skip_to_the_end => ["dd", "if=src.raw", "of={}", "bs=1M", "count=5", "skip=2"],
    skip_past_the_end => ["dd", "if=src.raw", "of={}", "bs=1M", "skip=5"],
    odd_block_size => ["dd", "if=src.raw", "of={}", "bs=1000", "count=3"],
    odd_block_size_whole => ["dd", "if=src.raw", "of={}", "bs=1000"],
    zero_count => ["dd", "if=src.raw", "of={}", "count=0"],
    zero_block_size => ["dd", "if=src.raw", "of={}", "bs=0"],
    bad_block_size => ["dd", "if=src.raw", "of={}", "bs=1X"],
    bad_count => ["dd", "if=src.raw", "of={}", "count=bogus"],
    count_with_suffix => ["dd", "if=src.raw", "of={}", "count=1k", "bs=1"],
    negative_count => ["dd", "if=src.raw", "of={}", "count=-1"],
    bad_skip => ["dd", "if=src.raw", "of={}", "skip=1k"],
    unknown_operand => ["dd", "if=src.raw", "of={}", "seek=1"],
    bare_operand => ["dd", "if=src.raw", "of={}", "extra"],
    known_operand_without_value => ["dd", "if", "src.raw", "of={}"],
    no_output => ["dd", "if=src.raw"],
    no_input => ["dd", "of={}"],
    missing_input => ["dd", "if=missing.raw", "of={}"],
    unknown_format => ["dd", "-O", "nosuch", "if=src.raw", "of={}"],
    sparse_input_is_copied_as_data => ["dd", "if=mid.raw", "of={}"],
    odd_input => ["dd", "if=odd.raw", "of={}"],
    octal_count => ["dd", "if=src.raw", "of={}", "count=010"],
    hex_count_and_skip => ["dd", "if=src.raw", "of={}", "count=0x10", "skip=0x2"],
    bad_octal_count => ["dd", "if=src.raw", "of={}", "count=08"],
    repeated_operand => ["dd", "if=missing.raw", "if=src.raw", "of={}"],
}

#[test]
fn missing_output_directory() {
    let fx = Fixture::with_images("ddnodir");
    fx.same(&["dd", "if=mid.raw", "of=nodir/out.raw"]);
}
