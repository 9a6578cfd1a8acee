//! `bench`, against `qemu-img bench`: the report (timing aside), errors, exit
//! status, and what a write benchmark leaves in the image.

use qimg_tests::{Fixture, Outcome};

/// The report with the elapsed time blanked out.
fn untimed(o: &Outcome) -> Outcome {
    let stdout = o
        .stdout
        .lines()
        .map(|l| {
            if l.starts_with("Run completed in ") {
                "Run completed in X seconds."
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    Outcome {
        stdout,
        ..o.clone()
    }
}

fn benched(args: &[&str], name: &str) {
    let fx = Fixture::with_images(name);
    fx.oracle(&["create", "-q", "-f", "raw", "b.raw", "4M"]);
    let ours = fx.qimg(args);
    let theirs = fx.qemu_img(args);
    assert_eq!(untimed(&ours), untimed(&theirs), "bench {args:?}");
}

macro_rules! bench_cases {
    ($($name:ident => [$($arg:expr),* $(,)?]),+ $(,)?) => {
        $( #[test] fn $name() { benched(&[$($arg),*], stringify!($name)); } )+
    };
}

bench_cases! {
    read => ["bench", "-c", "10", "-s", "4k", "b.raw"],
    read_named => ["bench", "-f", "raw", "-c", "10", "-s", "4k", "b.raw"],
    write_probed => ["bench", "-c", "10", "-s", "4k", "-w", "b.raw"],
    depth_offset_step => ["bench", "-f", "raw", "-c", "10", "-s", "4k", "-d", "4", "-o", "1k", "-S", "8k", "b.raw"],
    flush_interval => ["bench", "-f", "raw", "-c", "10", "-s", "4k", "-d", "2", "-w", "--flush-interval=4", "b.raw"],
    flush_no_drain => ["bench", "-f", "raw", "-c", "10", "-s", "4k", "-d", "2", "-w", "--flush-interval=4", "--no-drain", "b.raw"],
    flush_below_depth => ["bench", "-f", "raw", "-c", "10", "-w", "--flush-interval=3", "b.raw"],
    flush_in_read_test => ["bench", "-f", "raw", "-c", "10", "--flush-interval=3", "b.raw"],
    flush_interval_zero_is_none => ["bench", "-f", "raw", "-c", "10", "-w", "--flush-interval=0", "b.raw"],
    shared_write_refused => ["bench", "-f", "raw", "-c", "10", "-w", "-U", "b.raw"],
    shared_write_unknown_format => ["bench", "-f", "nosuch", "-c", "10", "-w", "-U", "b.raw"],
    shared_write_before_aio => ["bench", "-c", "10", "-w", "-U", "-n", "b.raw"],
    bad_cache => ["bench", "-f", "raw", "-c", "3", "-t", "bogus", "b.raw"],
    direct_io => ["bench", "-f", "raw", "-c", "3", "-t", "none", "b.raw"],
    bad_aio => ["bench", "-f", "raw", "-c", "3", "-i", "bogus", "b.raw"],
    native_without_direct => ["bench", "-f", "raw", "-c", "3", "-n", "b.raw"],
    quiet_still_reports => ["bench", "-f", "raw", "-c", "3", "-q", "b.raw"],
    zero_count => ["bench", "-f", "raw", "-c", "0", "b.raw"],
    bad_count => ["bench", "-f", "raw", "-c", "bogus", "b.raw"],
    negative_count => ["bench", "-f", "raw", "-c", "-1", "b.raw"],
    bad_buffer => ["bench", "-f", "raw", "-s", "bogus", "b.raw"],
    zero_buffer => ["bench", "-f", "raw", "-s", "0", "b.raw"],
    zero_depth => ["bench", "-f", "raw", "-d", "0", "b.raw"],
    bad_offset => ["bench", "-f", "raw", "-o", "bogus", "b.raw"],
    octal_count_and_depth => ["bench", "-f", "raw", "-c", "010", "-d", "0x4", "b.raw"],
    bad_octal_count => ["bench", "-f", "raw", "-c", "09", "b.raw"],
    bad_step => ["bench", "-f", "raw", "-S", "bogus", "b.raw"],
    bad_pattern => ["bench", "-f", "raw", "--pattern=bogus", "b.raw"],
    request_past_end => ["bench", "-f", "raw", "-c", "2", "-s", "8M", "b.raw"],
    offset_past_end => ["bench", "-f", "raw", "-c", "2", "-o", "4M", "b.raw"],
    unaligned_buffer => ["bench", "-f", "raw", "-c", "2", "-s", "1000", "b.raw"],
    empty_image => ["bench", "-f", "raw", "-c", "3", "empty.raw"],
    no_file => ["bench"],
    missing_file => ["bench", "missing.raw"],
}

/// Runs a write benchmark (`args`, then the image) with each tool on its
/// own fresh 4 MiB image and asserts the same report and the same bytes.
fn same_writes(name: &str, args: &[&str]) {
    let fx = Fixture::new(name);
    let run = |file: &str, qimg: bool| {
        fx.oracle(&["create", "-q", "-f", "raw", file, "4M"]);
        let mut all = args.to_vec();
        all.push(file);
        untimed(&if qimg {
            fx.qimg(&all)
        } else {
            fx.qemu_img(&all)
        })
    };
    assert_eq!(run("ours.raw", true), run("theirs.raw", false));
    assert_eq!(
        std::fs::read(fx.path("ours.raw")).unwrap(),
        std::fs::read(fx.path("theirs.raw")).unwrap()
    );
}

#[test]
fn write_pattern_lands_where_qemu_img_puts_it() {
    same_writes(
        "benchwrite",
        &[
            "bench",
            "-f",
            "raw",
            "-c",
            "3",
            "-s",
            "4k",
            "-S",
            "3M",
            "-w",
            "--pattern=0xaa",
        ],
    );
}

/// `-S 0` means a step of one buffer, as in qemu-img: ten writes cover ten
/// buffers, not one.
#[test]
fn step_zero_is_one_buffer() {
    same_writes(
        "step_zero",
        &[
            "bench",
            "-f",
            "raw",
            "-c",
            "10",
            "-w",
            "-S",
            "0",
            "--pattern=0x99",
        ],
    );
}
