//! `check` as qemu-img checks a vdi: every allocated entry must name a
//! data block inside the image, no data block may be named twice, and the
//! header's allocated-block count must equal the entries naming blocks.

use crate::blockmap::BlockMap;
use crate::header::{is_allocated, Header};
use qimg_driver_api::schema::CheckReport;
use std::collections::HashSet;

/// Most error lines printed: a block map running far past the end of the
/// file reads as millions of entries naming block 0, each a duplicate.
const MAX_MESSAGES: u64 = 100_000;

/// Checks the block map against the header, with qemu-img's messages.
pub fn check(header: &Header, bmap: &BlockMap) -> CheckReport {
    let mut report = CheckReport::default();
    let mut used: HashSet<u32> = HashSet::new();
    let mut counted: u64 = 0;
    let say = |report: &mut CheckReport, line: String| {
        report.corruptions += 1;
        if (report.messages.len() as u64) < MAX_MESSAGES {
            report.messages.push(line);
        }
    };
    for (i, &entry) in bmap.stored().iter().enumerate() {
        if !is_allocated(entry) {
            continue;
        }
        if entry < bmap.len() {
            counted += 1;
            if !used.insert(entry) {
                say(
                    &mut report,
                    format!("ERROR: block index {entry} also used by {entry}"),
                );
            }
        } else {
            say(
                &mut report,
                format!("ERROR: block index {i} too large, is {entry}"),
            );
        }
    }
    // Entries past the end of the file read as 0: each names block 0.
    let missing = bmap.missing();
    if missing > 0 {
        counted += missing;
        let fresh = u64::from(used.insert(0));
        for _ in 0..(missing - fresh).min(MAX_MESSAGES) {
            say(
                &mut report,
                "ERROR: block index 0 also used by 0".to_string(),
            );
        }
        report.corruptions += (missing - fresh).saturating_sub(MAX_MESSAGES);
    }
    if counted != u64::from(header.blocks_allocated) {
        say(
            &mut report,
            format!(
                "ERROR: allocated blocks mismatch, is {counted}, should be {}",
                header.blocks_allocated
            ),
        );
    }
    report
}
