//! Fuzz target `descriptors`: the input is the text of a vmdk descriptor
//! (a descriptor file, or the one embedded in a sparse extent).
//!
//! It runs the vmdk driver's descriptor parser directly — `probe_text`,
//! `parse_file`, `parse_fields`, `hex_value`, `quoted_value` and the
//! rewriters `with_cid`, `with_extent_sectors`, `with_cylinders`, `render` —
//! and holds them to their round trips; then opens the text as a
//! descriptor file through the driver (extents other than `ZERO` cannot be
//! opened: the harness's host has no other file) and resizes it.
//!
//! The driver keeps its descriptor module private, so this target compiles
//! the driver's own `descriptor.rs` and `error.rs` (the only module it
//! uses) from drivers/vmdk/src by path.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[rustfmt::skip]
#[path = "../../drivers/vmdk/src/error.rs"]
mod error;

#[allow(dead_code)]
#[rustfmt::skip]
#[path = "../../drivers/vmdk/src/descriptor.rs"]
mod descriptor;

use descriptor::{Descriptor, DiskDatabase, NO_PARENT};

/// The descriptor name errors mention.
const NAME: &str = "fuzz.vmdk";

/// The text of a descriptor as the driver takes it: up to its first NUL.
fn text_of(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The CID a rewrite sets.
const NEW_CID: u32 = 0x1234_abcd;

/// `with_cid` sets the value `hex_value` reads.
fn cid_round_trip(text: &str) {
    let rewritten = descriptor::with_cid(text, NEW_CID);
    if descriptor::hex_value(text, "CID").is_some() {
        assert_eq!(
            descriptor::hex_value(&rewritten, "CID"),
            Some(NEW_CID),
            "with_cid did not set the CID that is read back: {rewritten:?}"
        );
    }
}

/// `with_extent_sectors` changes the size of one extent and nothing else.
fn resize_round_trip(text: &str, d: &Descriptor) {
    for index in 0..d.extents.len().min(3) {
        let sectors = 8192 + index as u64;
        let rewritten = descriptor::with_extent_sectors(text, index, sectors);
        let back = descriptor::parse_file(&rewritten, NAME).unwrap_or_else(|e| {
            panic!(
                "with_extent_sectors({index}) made the descriptor unreadable ({e}): {rewritten:?}"
            )
        });
        let mut want = d.extents.clone();
        want[index].sectors = sectors;
        assert_eq!(
            back.extents, want,
            "with_extent_sectors({index}, {sectors}) changed other things: {rewritten:?}"
        );
    }
}

/// What `render` writes, `parse_file` reads back.
fn render_round_trip(d: &Descriptor, capacity: u64) {
    let hint = d
        .parent_hint
        .as_deref()
        .filter(|h| !h.contains(['\n', '\r']));
    let parent = hint.map(|h| (d.parent_cid, h));
    let ddb = DiskDatabase {
        hw_version: "4".into(),
        adapter_type: "ide".into(),
        tools_version: "2147483647".into(),
    };
    let text = descriptor::render(d.cid, parent, &d.create_type, &d.extents, capacity, &ddb);
    let back = descriptor::parse_file(&text, NAME)
        .unwrap_or_else(|e| panic!("a rendered descriptor does not parse ({e}): {text:?}"));
    assert_eq!(back.cid, d.cid, "{text:?}");
    assert_eq!(
        back.parent_cid,
        parent.map_or(NO_PARENT, |p| p.0),
        "{text:?}"
    );
    assert_eq!(back.create_type, d.create_type, "{text:?}");
    // Without a hint line, `parentFileNameHint` is looked up anywhere (as
    // qemu does), even inside an extent's file name: compare only a hint
    // that was written.
    if hint.is_some() {
        assert_eq!(back.parent_hint.as_deref(), hint, "{text:?}");
    }
    assert_eq!(back.extents, d.extents, "{text:?}");
}

fuzz_target!(|data: &[u8]| {
    let _ = descriptor::probe_text(data);
    let text = text_of(data);
    let _ = descriptor::quoted_value(&text, "createType");
    let _ = descriptor::parse_fields(&text, NAME);
    cid_round_trip(&text);
    if let Ok(d) = descriptor::parse_file(&text, NAME) {
        assert!(!d.extents.is_empty(), "parse_file accepted no extent");
        let capacity = d
            .extents
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.sectors));
        let _ = descriptor::with_cylinders(&text, capacity);
        resize_round_trip(&text, &d);
        render_round_trip(&d, capacity);
    }
    // The same bytes as a descriptor file the driver opens and resizes.
    qimg_fuzz::fuzz_image(&qimg_vmdk::VmdkDriver, data);
    qimg_fuzz::resize_pass(&qimg_vmdk::VmdkDriver, data, 1 << 20);
});
