//! `amend`: changing an existing image's options in place, in qemu-img's
//! order of steps and with its refusals: key slots of a LUKS-encrypted
//! image first (`encrypt.state`, `encrypt.new-secret`...), then an
//! upgrade to version 3,
//! then the refcount width, lazy refcounts, the external data file, the
//! size, and a downgrade to version 2 last (zero clusters, which version 2
//! cannot express, become data or holes; qcow2.txt "Header", "Cluster
//! mapping").
//!
//! Progress is reported as qemu reports it: every step calls back with
//! its own offset and work size, and those are folded into one running
//! total (later steps' sizes projected from the ones seen so far). The
//! callbacks are returned as runs `[first offset, count, total]` for the
//! host to print.

use crate::crypt::{crypt_error, Crypto, LuksArea};
use crate::error::{Error, Result};
use crate::header::{autoclear, compat, feature_table, incompat, V2_HEADER_LEN, V3_HEADER_LEN};
use crate::image::Qcow2Image;
use crate::layout::{ClusterKind, COPIED, OFFSET_MASK};
use crate::meta::{self, get_refcount, hex, put_refcount, Meta};
use qimg_crypt::amend::{SlotChange, VolumeStore};
use qimg_crypt::header::HEADER_BYTES;
use qimg_crypt::{CryptError, LuksHeader};
use qimg_driver_api::schema::{CreateOption, OptionType};
use qimg_driver_api::{HostExt, Prealloc};
use qimg_driver_util::option as opt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// The options `amend -o` accepts, in qemu-img's (alphabetical) listing
/// order, with its help texts.
pub fn options() -> Vec<CreateOption> {
    use OptionType::{Bool, Number, Size, Str};
    vec![
        opt("backing_file", Str, "File name of a base image"),
        opt("backing_fmt", Str, "Image format of the base image"),
        opt("compat", Str, "Compatibility level (v2 [0.10] or v3 [1.1])"),
        opt("data_file", Str, "File name of an external data file"),
        opt(
            "data_file_raw",
            Bool,
            "The external data file must stay valid as a raw image",
        ),
        opt(
            "encrypt.iter-time",
            Number,
            "Time to spend in PBKDF in milliseconds",
        ),
        opt(
            "encrypt.keyslot",
            Number,
            "Select a single keyslot to modify explicitly",
        ),
        opt(
            "encrypt.new-secret",
            Str,
            "New secret to set in the matching keyslots. Empty string to erase",
        ),
        opt(
            "encrypt.old-secret",
            Str,
            "Select all keyslots that match this password",
        ),
        opt(
            "encrypt.state",
            Str,
            "Select new state of affected keyslots (active/inactive)",
        ),
        opt("lazy_refcounts", Bool, "Postpone refcount updates"),
        opt(
            "refcount_bits",
            Number,
            "Width of a reference count entry in bits",
        ),
        opt("size", Size, "Virtual disk size"),
    ]
}

/// The steps of an amend, for folding their progress together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Upgrade,
    RefcountOrder,
    Downgrade,
}

/// qemu's running total over the steps of one amend.
struct Progress {
    total_steps: i64,
    steps_done: i64,
    offset_done: i64,
    last: Option<Step>,
    last_work: i64,
    current: Step,
    /// Callbacks so far, as runs `[first offset, count, total]`.
    runs: Vec<[u64; 3]>,
}

impl Progress {
    fn new(total_steps: i64) -> Progress {
        Progress {
            total_steps: total_steps.max(1),
            steps_done: 0,
            offset_done: 0,
            last: None,
            last_work: 0,
            current: Step::Upgrade,
            runs: Vec::new(),
        }
    }

    /// One callback of the current step: `offset` of `work` done.
    fn report(&mut self, offset: i64, work: i64) {
        if self.last != Some(self.current) {
            if self.last.is_some() {
                self.offset_done += self.last_work;
                self.steps_done += 1;
            }
            self.last = Some(self.current);
        }
        self.last_work = work;
        let known = self.offset_done + work;
        let projected = known * (self.total_steps - self.steps_done - 1) / (self.steps_done + 1);
        let (at, total) = (
            (self.offset_done + offset) as u64,
            (known + projected) as u64,
        );
        match self.runs.last_mut() {
            Some(run) if run[2] == total && run[0] + run[1] == at => run[1] += 1,
            _ => self.runs.push([at, 1, total]),
        }
    }
}

/// What `-o` asks, parsed in qemu's order of options.
struct Wanted {
    version: u32,
    size: u64,
    lazy_refcounts: bool,
    refcount_bits: u64,
    data_file: Option<String>,
    data_file_raw: bool,
    backing: (Option<String>, Option<String>),
    /// Key-slot changes of a LUKS-encrypted image.
    slots: Option<SlotChange>,
}

fn flag(v: &str) -> bool {
    v == "on"
}

impl Qcow2Image {
    /// Amends the image as `-o options` say; answers `{"progress": runs}`,
    /// plus `"error"` when a step failed after reporting progress.
    pub fn amend(&self, options: &BTreeMap<String, String>, force: bool) -> Result<Value> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let wanted = self.parse_amend(options)?;
        let (old_version, old_bits) = {
            let meta = self.lock();
            (meta.header.version, 1u64 << meta.header.refcount_order)
        };
        let mut progress = Progress::new(
            i64::from(wanted.version != old_version) + i64::from(wanted.refcount_bits != old_bits),
        );
        // A step that fails after reporting progress still hands the
        // progress over, with the failure, so that it is printed first.
        match self.amend_steps(&wanted, old_version, force, &mut progress) {
            Ok(()) => Ok(json!({ "progress": progress.runs })),
            Err(e) if !progress.runs.is_empty() => Ok(json!({
                "progress": progress.runs,
                "error": e.to_string(),
            })),
            Err(e) => Err(e),
        }
    }

    /// Adds or erases key slots of the LUKS volume in the image.
    fn amend_key_slots(&self, meta: &Meta, change: &SlotChange, force: bool) -> Result<()> {
        let key = match &self.crypto {
            Some(Crypto::Luks(luks)) => luks.key.as_ref().ok_or(Error::ReadOnly)?,
            _ => return Err(Error::invalid("The image was opened without its LUKS key")),
        };
        let (offset, len) = meta.header.ext.crypto.ok_or(Error::Corrupt)?;
        let area = LuksArea {
            io: &self.io,
            offset,
            len,
        };
        let mut head = [0u8; HEADER_BYTES];
        area.read(0, &mut head).map_err(crypt_error)?;
        let mut header = LuksHeader::parse(&head).map_err(crypt_error)?;
        let secret = |id: &str| {
            self.host
                .secret_text(id)
                .map(|s| Zeroizing::new(s.into_bytes()))
                .map_err(|e| CryptError::Option(e.message.to_string()))
        };
        change
            .apply(&mut header, key, force, &secret, &area)
            .map_err(crypt_error)
    }

    fn parse_amend(&self, options: &BTreeMap<String, String>) -> Result<Wanted> {
        let meta = self.lock();
        let h = &meta.header;
        let mut w = Wanted {
            version: h.version,
            size: 0,
            lazy_refcounts: h.lazy_refcounts(),
            refcount_bits: 1 << h.refcount_order,
            data_file: None,
            data_file_raw: h.data_file_raw(),
            backing: (None, None),
            slots: None,
        };
        if let Some(v) = options.get("compat") {
            w.version = match v.as_str() {
                "0.10" | "v2" => 2,
                "1.1" | "v3" => 3,
                other => {
                    return Err(Error::argument(format!(
                        "Unknown compatibility level {other}"
                    )))
                }
            };
        }
        if let Some(v) = options.get("size") {
            w.size = v.parse().unwrap_or(0);
        }
        w.backing = (
            options.get("backing_file").cloned(),
            options.get("backing_fmt").cloned(),
        );
        if options.keys().any(|k| k.starts_with("encrypt.")) {
            match h.crypt_method {
                0 => {
                    return Err(Error::argument(
                        "Can't amend encryption options - encryption not present",
                    ))
                }
                1 => {
                    return Err(Error::argument(
                        "Only LUKS encryption options can be amended",
                    ))
                }
                _ => {}
            }
        }
        w.slots = SlotChange::parse(
            |k| options.get(&format!("encrypt.{k}")).map(String::as_str),
            "encrypt.",
        )
        .map_err(crypt_error)?;
        if let Some(v) = options.get("lazy_refcounts") {
            w.lazy_refcounts = flag(v);
        }
        if let Some(v) = options.get("refcount_bits") {
            let bits: u64 = v.parse().unwrap_or(0);
            if bits == 0 || bits > 64 || !bits.is_power_of_two() {
                return Err(Error::argument(
                    "Refcount width must be a power of two and may not exceed 64 bits",
                ));
            }
            w.refcount_bits = bits;
        }
        if let Some(v) = options.get("data_file") {
            if !h.has_data_file() {
                return Err(Error::argument(
                    "data-file can only be set for images that use an external data file",
                ));
            }
            w.data_file = Some(v.clone());
        }
        if let Some(v) = options.get("data_file_raw") {
            w.data_file_raw = flag(v);
            if w.data_file_raw && !h.data_file_raw() {
                return Err(Error::argument(
                    "data-file-raw cannot be set on existing images",
                ));
            }
        }
        Ok(w)
    }

    fn amend_steps(
        &self,
        w: &Wanted,
        old_version: u32,
        force: bool,
        progress: &mut Progress,
    ) -> Result<()> {
        {
            let mut meta = self.lock();
            meta.flush(&self.io)?;
            // A new refcount width is checked before anything changes.
            if w.refcount_bits != 1 << meta.header.refcount_order
                && w.version < 3
                && w.refcount_bits != 16
            {
                return Err(Error::argument("Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"));
            }
            // Key slots first, as qemu does.
            if let Some(change) = &w.slots {
                self.amend_key_slots(&meta, change, force)?;
            }
            if w.version > old_version {
                progress.current = Step::Upgrade;
                self.upgrade(&mut meta, progress)?;
            }
            // The refcount width before the backing file and lazy
            // refcounts, as qemu orders them: a width the refcounts do not
            // fit changes nothing.
            if w.refcount_bits != 1 << meta.header.refcount_order {
                progress.current = Step::RefcountOrder;
                self.change_refcount_order(&mut meta, w.refcount_bits.trailing_zeros(), progress)?;
            }
            let (file, format) = &w.backing;
            if (file.is_some() || format.is_some())
                && (file != &meta.header.backing_file || format != &meta.header.ext.backing_format)
            {
                return Err(Error::argument(
                    "Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.",
                ));
            }
            if w.lazy_refcounts != meta.header.lazy_refcounts() {
                if w.lazy_refcounts {
                    if w.version < 3 {
                        return Err(Error::argument("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"));
                    }
                    meta.header.compatible_features |= compat::LAZY_REFCOUNTS;
                } else {
                    self.mark_clean(&mut meta)?;
                    meta.header.compatible_features &= !compat::LAZY_REFCOUNTS;
                }
                meta.write_header(&self.io)?;
                self.io.flush()?;
            }
            if w.data_file_raw {
                meta.header.autoclear_features |= autoclear::DATA_FILE_RAW;
            } else {
                meta.header.autoclear_features &= !autoclear::DATA_FILE_RAW;
            }
            if let Some(name) = &w.data_file {
                meta.header.ext.data_file = (!name.is_empty()).then(|| name.clone());
            }
            // qemu rewrites the whole header cluster here.
            meta.header_full = true;
            meta.write_header(&self.io)?;
            self.io.flush()?;
        }
        if w.size != 0 {
            self.resize(w.size, Prealloc::OFF, true)?;
        }
        if w.version < old_version {
            let mut meta = self.lock();
            progress.current = Step::Downgrade;
            self.downgrade(&mut meta, progress)?;
            meta.flush(&self.io)?;
        }
        Ok(())
    }

    /// Clears the dirty bit after writing everything out (lazy refcounts
    /// are then exact).
    fn mark_clean(&self, meta: &mut Meta) -> Result<()> {
        if meta.header.dirty() {
            meta.flush(&self.io)?;
            self.io.flush()?;
            meta.header.incompatible_features &= !incompat::DIRTY;
            meta.write_header(&self.io)?;
            self.io.flush()?;
        }
        Ok(())
    }

    /// Version 2 to 3: snapshot entries get the extra data version 3
    /// requires (their size), then the header grows its version 3 fields.
    fn upgrade(&self, meta: &mut Meta, progress: &mut Progress) -> Result<()> {
        progress.report(0, 2);
        if meta.snapshots.iter().any(|s| s.extra_size < 16) {
            meta.rewrite_snapshot_table(&self.io)?;
        }
        progress.report(1, 2);
        let h = &mut meta.header;
        h.version = 3;
        h.header_length = V3_HEADER_LEN;
        h.tail = vec![0; (V3_HEADER_LEN - 105) as usize];
        h.refcount_order = 4;
        if self.layout.cluster_size() > 4096 {
            h.ext.feature_table = Some(feature_table());
        }
        meta.layout.v3 = true;
        meta.write_header(&self.io)?;
        self.io.flush()?;
        progress.report(2, 2);
        Ok(())
    }

    /// Version 3 to 2, refusing what version 2 cannot hold.
    fn downgrade(&self, meta: &mut Meta, progress: &mut Progress) -> Result<()> {
        if meta.header.refcount_order != 4 {
            return Err(Error::unsupported("compat=0.10 requires refcount_bits=16"));
        }
        if meta.header.has_data_file() {
            return Err(Error::unsupported(
                "Cannot downgrade an image with a data file",
            ));
        }
        let size = self.size();
        if meta
            .snapshots
            .iter()
            .any(|s| s.vm_state_size > u64::from(u32::MAX) || s.disk_size != size)
        {
            return Err(Error::unsupported(
                "Internal snapshots prevent downgrade of image",
            ));
        }
        self.mark_clean(meta)?;
        let features = meta.header.incompatible_features & !incompat::COMPRESSION_TYPE;
        if features != 0 {
            return Err(Error::unsupported(format!(
                "Cannot downgrade an image with incompatible features {features:#x} set"
            )));
        }
        self.expand_zero_clusters(meta, progress)?;
        if meta.header.incompatible_features & incompat::COMPRESSION_TYPE != 0 {
            if self.has_compressed_clusters(meta)? {
                return Err(Error::unsupported("Cannot downgrade an image with zstd compression type and existing compressed clusters"));
            }
            meta.header.incompatible_features &= !incompat::COMPRESSION_TYPE;
            meta.header.compression_type = 0;
        }
        // Version 2 has no auto-clear bits to vouch for bitmaps: they go,
        // with their clusters, rather than stay behind unusable.
        self.drop_bitmaps(meta)?;
        let h = &mut meta.header;
        h.compatible_features = 0;
        h.autoclear_features = 0;
        h.version = 2;
        h.header_length = V2_HEADER_LEN;
        h.tail.clear();
        h.ext.feature_table = None;
        meta.layout.v3 = false;
        meta.header_full = true;
        meta.flush(&self.io)?;
        meta.write_header(&self.io)?;
        self.io.flush()
    }

    /// True if the active L1 table maps a compressed cluster.
    fn has_compressed_clusters(&self, meta: &mut Meta) -> Result<bool> {
        let data_file = meta.data_file;
        for l2 in meta.l1.clone().into_iter().map(|e| e & OFFSET_MASK) {
            if l2 == 0 {
                continue;
            }
            let table = meta.l2_table(&self.io, l2)?.clone();
            if table.iter().any(|e| {
                ClusterKind::of(e.word, &meta.layout, data_file) == ClusterKind::Compressed
            }) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Rewrites zero clusters, which version 2 cannot express: without a
    /// backing file they become unallocated (they read as zeros anyway);
    /// with one they become clusters of written zeros. The active L1 table
    /// first, then every snapshot's.
    fn expand_zero_clusters(&self, meta: &mut Meta, progress: &mut Progress) -> Result<()> {
        let file_len = self.io.file.len().into_result()?;
        let mut tables = vec![meta.l1.clone()];
        let mut sizes = vec![u64::from(meta.header.l1_size)];
        for s in meta.snapshots.clone() {
            tables.push(meta::read_table(
                &self.io,
                s.l1_table_offset,
                u64::from(s.l1_size),
                file_len,
            )?);
            sizes.push(u64::from(s.l1_size));
        }
        let total: u64 = sizes.iter().sum();
        let mut visited = 0u64;
        let layout = meta.layout;
        let cs = layout.cluster_size();
        let backed = self.backing.is_some();
        for (table, &size) in tables.iter().zip(&sizes) {
            for i in 0..size {
                let l2 = meta.l2_of(table.get(i as usize).copied().unwrap_or(0), i)?;
                if l2 != 0 {
                    let shared = meta.refcount(&self.io, l2 >> layout.cluster_bits)?;
                    let entries = meta.l2_table(&self.io, l2)?.clone();
                    for (j, e) in entries.iter().enumerate() {
                        let kind = ClusterKind::of(e.word, &layout, false);
                        let host = match kind {
                            ClusterKind::ZeroPlain if !backed => {
                                meta.l2_table(&self.io, l2)?[j].word = 0;
                                meta.l2.mark_dirty(l2);
                                continue;
                            }
                            ClusterKind::ZeroPlain => {
                                let at = meta.alloc_clusters(&self.io, 1)?;
                                if shared > 1 {
                                    meta.add_refcount(&self.io, at, cs, shared as i64 - 1)?;
                                }
                                at
                            }
                            ClusterKind::ZeroAlloc => e.word & OFFSET_MASK,
                            _ => continue,
                        };
                        self.io.file.write_zeroes(host, cs, false).into_result()?;
                        let word = if shared == 1 { host | COPIED } else { host };
                        meta.l2_table(&self.io, l2)?[j].word = word;
                        meta.l2.mark_dirty(l2);
                    }
                }
                visited += 1;
                progress.report(visited as i64, total as i64);
            }
        }
        meta.flush(&self.io)
    }

    /// Removes every persistent bitmap and frees its clusters.
    fn drop_bitmaps(&self, meta: &mut Meta) -> Result<()> {
        if meta.bitmaps.is_empty() {
            return Ok(());
        }
        meta.remove_all_bitmaps(&self.io)
    }

    /// Converts the refcount structures to entries of `1 << order` bits:
    /// new refcount blocks are allocated (through the old structures, as
    /// many walks as it takes for every allocation to be counted), filled
    /// and pointed at by a new table; then the old blocks and table are
    /// freed through the new ones.
    fn change_refcount_order(
        &self,
        meta: &mut Meta,
        order: u32,
        progress: &mut Progress,
    ) -> Result<()> {
        meta.flush(&self.io)?;
        let layout = meta.layout;
        let cs = layout.cluster_size();
        let cluster_bits = layout.cluster_bits;
        let old_bits = layout.refblock_bits();
        let new_bits = cluster_bits + 3 - order;
        let new_max = if order == 6 {
            u64::MAX
        } else {
            (1u64 << (1 << order)) - 1
        };
        let per_table_cluster = cs / 8;
        let mut table: Vec<u64> = Vec::new();
        let mut table_offset = 0u64;
        let mut table_allocated = 0u64;
        let mut walk = 0i64;
        loop {
            let total_walks = (walk + 2).max(3);
            let old_entries = u64::from(meta.header.refcount_table_clusters) * cs / 8;
            let e = old_entries as i64;
            // Progress comes per old table entry, as each is reached.
            let mut reported = 0u64;
            let mut report_upto = |progress: &mut Progress, index: u64| {
                while reported <= index.min(old_entries.saturating_sub(1)) && reported < old_entries
                {
                    progress.report(walk * e + reported as i64, total_walks * e);
                    reported += 1;
                }
            };
            let mut allocated = false;
            let covered = old_entries << old_bits;
            let mut k = 0u64;
            while k << new_bits < covered {
                let first = k << new_bits;
                let last = ((k + 1) << new_bits).min(covered);
                report_upto(progress, first >> old_bits);
                match self.any_refcount(meta, first, last, new_max)? {
                    Err((cluster, rc)) => {
                        report_upto(progress, cluster >> old_bits);
                        return Err(Error::argument(format!(
                            "Cannot decrease refcount entry width to {} bits: Cluster at offset {} has a refcount of {rc}",
                            1u32 << order,
                            hex(cluster << cluster_bits)
                        )));
                    }
                    Ok(true) => {
                        if table.len() as u64 <= k {
                            table.resize(((k + 1).next_multiple_of(per_table_cluster)) as usize, 0);
                        }
                        if table[k as usize] == 0 {
                            table[k as usize] = meta.alloc_clusters(&self.io, 1)?;
                            allocated = true;
                        }
                    }
                    Ok(false) => {}
                }
                k += 1;
            }
            report_upto(progress, old_entries);
            progress.report((walk + 1) * e, total_walks * e);
            walk += 1;
            if !allocated {
                break;
            }
            if table_offset != 0 {
                meta.add_refcount(&self.io, table_offset, table_allocated * 8, -1)?;
            }
            table_offset =
                meta.alloc_clusters(&self.io, layout.clusters_for(table.len() as u64 * 8))?;
            table_allocated = table.len() as u64;
        }
        // The write walk.
        let old_entries = u64::from(meta.header.refcount_table_clusters) * cs / 8;
        let e = old_entries as i64;
        for r in 0..e {
            progress.report(walk * e + r, (walk + 1) * e);
        }
        progress.report((walk + 1) * e, (walk + 1) * e);
        for (k, &block) in table.iter().enumerate() {
            if block == 0 {
                continue;
            }
            let mut data = vec![0u8; cs as usize];
            let first = (k as u64) << new_bits;
            for i in 0..(1u64 << new_bits) {
                let rc = meta.refcount(&self.io, first + i)?;
                if rc != 0 {
                    put_refcount(&mut data, order, i as usize, rc);
                }
            }
            self.io.write(block, &data)?;
        }
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.io.write(table_offset, &bytes)?;
        meta.flush(&self.io)?;
        self.io.flush()?;
        let old_table = meta.reftable.clone();
        let (old_offset, old_clusters) = (
            meta.header.refcount_table_offset,
            meta.header.refcount_table_clusters,
        );
        meta.header.refcount_order = order;
        meta.header.refcount_table_offset = table_offset;
        meta.header.refcount_table_clusters = layout.clusters_for(table.len() as u64 * 8) as u32;
        meta.header_full = true;
        meta.write_header(&self.io)?;
        self.io.flush()?;
        meta.layout.refcount_order = order;
        while table.last() == Some(&0) {
            table.pop();
        }
        meta.reftable = table;
        meta.clear_caches();
        for e in old_table {
            let block = e & !511;
            if block != 0 {
                meta.add_refcount(&self.io, block, cs, -1)?;
            }
        }
        meta.add_refcount(&self.io, old_offset, u64::from(old_clusters) * cs, -1)?;
        meta.flush(&self.io)
    }

    /// Whether a cluster in `[first, last)` has a refcount, or the first
    /// cluster whose refcount exceeds `max` (with that refcount).
    fn any_refcount(
        &self,
        meta: &mut Meta,
        first: u64,
        last: u64,
        max: u64,
    ) -> Result<std::result::Result<bool, (u64, u64)>> {
        let bits = meta.layout.refblock_bits();
        let old_order = meta.layout.refcount_order;
        let mut found = false;
        let mut c = first;
        while c < last {
            let index = c >> bits;
            let block_end = ((index + 1) << bits).min(last);
            let entry = meta.reftable.get(index as usize).copied().unwrap_or(0) & !511;
            if entry != 0 && meta.layout.in_cluster(entry) == 0 {
                let data = meta.refblock_data(&self.io, entry)?;
                for i in c..block_end {
                    let rc = get_refcount(&data, old_order, (i & ((1 << bits) - 1)) as usize);
                    if rc > max {
                        return Ok(Err((i, rc)));
                    }
                    found |= rc != 0;
                }
            }
            c = block_end;
        }
        Ok(Ok(found))
    }
}
