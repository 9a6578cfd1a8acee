//! Descriptive data that crosses the boundary as JSON.
//!
//! Defined once here so host and drivers agree; field names follow qemu-img's
//! JSON output where it has one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The value kind of a create option, as `-o help` prints it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptionType {
    /// Free text.
    Str,
    /// `on`/`off`.
    Bool,
    /// An integer.
    Number,
    /// A byte count with optional suffix (k, M, G, T, P, E).
    Size,
}

/// One `-o` option a driver accepts when creating (or amending) an image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CreateOption {
    /// Option name (`cluster_size`).
    pub name: String,
    /// Value kind.
    #[serde(rename = "type")]
    pub kind: OptionType,
    /// Help text as `-o help` prints it.
    pub help: String,
    /// Default shown by `-o help`, if any.
    #[serde(default)]
    pub default: Option<String>,
}

/// A driver as it describes itself (`FormatDriver::describe`, ABI 1.3): what
/// the host lists in `--help` and `--list-drivers` and checks before calling.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverDescription {
    /// Format name as qemu-img spells it.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// [`crate::caps`] bits.
    pub capabilities: u64,
    /// Options `create -o` accepts, in `-o help` order.
    #[serde(default)]
    pub create_options: Vec<CreateOption>,
    /// Options `amend -o` accepts, in `amend -o help` order.
    #[serde(default)]
    pub amend_options: Vec<CreateOption>,
}

/// What `create` is asked to make.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateRequest {
    /// Guest size in bytes.
    pub size: u64,
    /// `-o` options, already checked against the driver's schema; sizes are
    /// normalised to bytes, booleans to `on`/`off`.
    pub options: BTreeMap<String, String>,
}

/// A persistent dirty bitmap, as far as other images need to know it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct BitmapSummary {
    /// Bitmap name.
    pub name: String,
    /// Bytes of guest data per bit.
    pub granularity: u64,
    /// It records writes (qcow2's `auto` flag).
    #[serde(default)]
    pub enabled: bool,
    /// It was not stored cleanly (qcow2's `in-use` flag at open): its bits
    /// cannot be trusted, so it is not copied.
    #[serde(default)]
    pub inconsistent: bool,
}

/// What `measure` is asked.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct MeasureRequest {
    /// Guest size of the image to be created.
    pub size: u64,
    /// `-o` options of the output.
    pub options: BTreeMap<String, String>,
    /// True when measuring from an existing image (its allocated extents are passed).
    pub from_image: bool,
    /// The source image's persistent bitmaps, when its format can hold them
    /// (`None`: it cannot, or there is no source image).
    #[serde(default)]
    pub source_bitmaps: Option<Vec<BitmapSummary>>,
}

/// `measure`'s answer, in bytes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct MeasureResult {
    /// Space needed for the image as converted (allocated data plus metadata).
    pub required: u64,
    /// Space needed with every cluster allocated.
    pub fully_allocated: u64,
    /// Space the persistent bitmaps need, where the format has them.
    #[serde(default)]
    pub bitmaps: Option<u64>,
}

/// An internal snapshot, as `info` and `snapshot -l` list it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Snapshot id.
    pub id: String,
    /// Tag (name).
    pub name: String,
    /// VM state size in bytes.
    pub vm_state_size: u64,
    /// Creation time, seconds since the epoch.
    pub date_sec: u64,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// VM clock, nanoseconds.
    pub vm_clock_nsec: u64,
    /// Instruction count, if recorded.
    #[serde(default)]
    pub icount: Option<u64>,
}

/// What a driver says about an open image; the host adds the generic fields
/// (filename, format, sizes, children) and prints it as qemu-img does.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ImageInfo {
    /// Cluster size, for formats that have one.
    #[serde(default)]
    pub cluster_size: Option<u64>,
    /// Whether the image is marked dirty (open or unclean shutdown).
    #[serde(default)]
    pub dirty_flag: Option<bool>,
    /// Whether the image is encrypted.
    #[serde(default)]
    pub encrypted: Option<bool>,
    /// Backing file name as recorded in the header.
    #[serde(default)]
    pub backing_filename: Option<String>,
    /// Backing format as recorded in the header.
    #[serde(default)]
    pub backing_format: Option<String>,
    /// qemu-img's `format-specific` object (`{"type": ..., "data": {...}}`).
    #[serde(default)]
    pub format_specific: Option<serde_json::Value>,
    /// Internal snapshots.
    #[serde(default)]
    pub snapshots: Vec<SnapshotInfo>,
    /// Persistent dirty bitmaps, if this image can hold them (`None`: it cannot).
    #[serde(default)]
    pub bitmaps: Option<Vec<BitmapSummary>>,
    /// Files besides the image's own that hold its data (vmdk extents), as
    /// `info` lists them: child name (`extents.0`) and file name.
    #[serde(default)]
    pub extra_children: Vec<ChildFile>,
    /// This open image must be written strictly in ascending offset order
    /// (a streamOptimized vmdk): the host feeds it through `compress_cluster`
    /// and `write_prepared` in order.
    #[serde(default)]
    pub write_in_order: bool,
}

/// A file that holds part of an image, listed by `info`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildFile {
    /// Child name as qemu-img prints it (`extents.0`).
    pub name: String,
    /// The file's name.
    pub filename: String,
}

/// How `check` should repair.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Repair {
    /// Report only.
    #[default]
    None,
    /// Repair leaked clusters.
    Leaks,
    /// Repair everything.
    All,
}

/// What `check` is asked.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckRequest {
    /// Repair mode.
    pub repair: Repair,
}

/// `check`'s findings, in qemu-img's JSON field names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct CheckReport {
    /// Errors found (corruptions).
    pub corruptions: u64,
    /// Leaked clusters.
    pub leaks: u64,
    /// Errors that stopped the check.
    pub check_errors: u64,
    /// Corruptions fixed.
    pub corruptions_fixed: u64,
    /// Leaks fixed.
    pub leaks_fixed: u64,
    /// End of the image's used area in its file.
    #[serde(default)]
    pub image_end_offset: Option<u64>,
    /// Clusters in the guest.
    #[serde(default)]
    pub total_clusters: Option<u64>,
    /// Allocated clusters.
    #[serde(default)]
    pub allocated_clusters: Option<u64>,
    /// Fragmented clusters.
    #[serde(default)]
    pub fragmented_clusters: Option<u64>,
    /// Compressed clusters.
    #[serde(default)]
    pub compressed_clusters: Option<u64>,
    /// Lines the driver printed while checking (`Leaked cluster 5 refcount=1 reference=0`),
    /// printed on stderr in order. A line starting with `{prog}: ` is an error
    /// report of the program: the host puts its own name there.
    #[serde(default)]
    pub messages: Vec<String>,
    /// Set when the check could not finish: the reason, worded as
    /// `strerror` words it (`Input/output error`). The host prints the
    /// messages, then `Check failed: REASON`, and no report.
    #[serde(default)]
    pub failure: Option<String>,
}

/// Metadata operations beyond read and write, dispatched by `Image::metadata`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum MetadataRequest {
    /// Create an internal snapshot.
    SnapshotCreate {
        /// Tag.
        name: String,
    },
    /// Revert to a snapshot.
    SnapshotApply {
        /// Id or tag.
        name: String,
    },
    /// Delete a snapshot.
    SnapshotDelete {
        /// Id or tag.
        name: String,
    },
    /// Makes an image opened read-only read as one of its internal
    /// snapshots from now on (`convert -l`, `measure -l`); its guest size
    /// stays. With both given, the snapshot must match both. A snapshot
    /// that does not exist fails with errno ENOENT.
    SnapshotLoad {
        /// Snapshot id.
        #[serde(default)]
        id: Option<String>,
        /// Snapshot name (tag).
        #[serde(default)]
        name: Option<String>,
    },
    /// Change creation options (`amend -o`).
    Amend {
        /// Options to change.
        options: BTreeMap<String, String>,
        /// `--force`.
        force: bool,
    },
    /// A persistent-bitmap operation (`bitmap`).
    Bitmap {
        /// `add`, `remove`, `clear`, `enable`, `disable`, `merge`, `dirty`.
        action: String,
        /// Bitmap name.
        name: String,
        /// Granularity for `add`.
        #[serde(default)]
        granularity: Option<u64>,
        /// Source bitmap for `merge`.
        #[serde(default)]
        source: Option<String>,
        /// For `merge` from another image: the guest byte ranges
        /// `[start, length]` its `dirty` action answered (the source
        /// bitmap is then not looked up in this image). The `dirty` action
        /// answers `{"size": guest size, "ranges": [[start, length], ...]}`.
        #[serde(default)]
        ranges: Option<Vec<[u64; 2]>>,
    },
}
