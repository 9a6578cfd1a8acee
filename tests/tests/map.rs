//! `map`, human and JSON, against `qemu-img map`.

use qimg_tests::{same_cases, Fixture};

same_cases! {
    sparse_human => ["map", "mid.raw"],
    sparse_json => ["map", "--output=json", "mid.raw"],
    full_human => ["map", "full.raw"],
    full_json => ["map", "--output=json", "full.raw"],
    written_zeros_json => ["map", "--output=json", "zeros.raw"],
    empty_human => ["map", "empty.raw"],
    empty_json => ["map", "--output=json", "empty.raw"],
    odd_size_human => ["map", "odd.raw"],
    odd_size_json => ["map", "--output=json", "odd.raw"],
    start_offset => ["map", "--start-offset=1M", "mid.raw"],
    start_offset_unaligned_json => ["map", "--start-offset=1000", "--output=json", "mid.raw"],
    window_json => ["map", "--start-offset=1100K", "--max-length=100K", "--output=json", "mid.raw"],
    window_human => ["map", "--start-offset=1100K", "--max-length=100K", "mid.raw"],
    one_byte => ["map", "--start-offset=1000", "--max-length=1", "--output=json", "mid.raw"],
    past_the_end => ["map", "--start-offset=8M", "--output=json", "mid.raw"],
    zero_length => ["map", "--max-length=0", "--output=json", "mid.raw"],
    negative_start => ["map", "--start-offset=-1", "mid.raw"],
    bad_start => ["map", "--start-offset=bogus", "mid.raw"],
    bad_length => ["map", "--max-length=1X", "mid.raw"],
    no_file => ["map"],
    two_files => ["map", "mid.raw", "x"],
    missing_file => ["map", "missing.raw"],
}

#[test]
fn punched_and_zeroed_ranges() {
    let fx = Fixture::with_images("punched");
    fx.sh("cp full.raw holes.raw && fallocate -p -o 64k -l 128k holes.raw && fallocate -z -o 512k -l 64k holes.raw");
    fx.same(&["map", "holes.raw"]);
    fx.same(&["map", "--output=json", "holes.raw"]);
}
