//! Allocation status across a backing chain: the facts `qemu-img map` prints,
//! and what the copy and compare engines use to skip zeros without reading them.

use crate::block::BlockImage;
use qimg_driver_api::{extent_flags as ef, DriverError, ErrorKind, Extent};
use std::sync::Arc;

/// The status of one run of guest bytes, resolved through the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Layer that decides the content (0: the top image).
    pub depth: usize,
    /// Some layer allocates the run.
    pub present: bool,
    /// Reads return zeros.
    pub zero: bool,
    /// Reads return data from a layer.
    pub data: bool,
    /// Stored compressed.
    pub compressed: bool,
    /// Where the bytes are, in the store named by `file`.
    pub offset: Option<u64>,
    /// Name of the store `offset` refers to.
    pub file: Option<Arc<str>>,
}

impl Status {
    /// Reads return zeros: the run is zero, or no layer allocates it (a
    /// device that says nothing of its blocks still reads zeros there).
    pub fn reads_zero(&self) -> bool {
        self.zero || !self.present
    }

    /// A run past the end of a shorter image of the chain: it reads as zeros
    /// and no layer allocates it.
    fn zeros_past_end(start: u64, length: u64, depth: usize) -> Status {
        Status {
            start,
            length,
            depth,
            present: false,
            zero: true,
            data: false,
            compressed: false,
            offset: None,
            file: None,
        }
    }
}

/// Status of the run at `offset`, at most `max` bytes long, looking down the
/// chain no deeper than `bottom` layers (None: the whole chain).
pub fn status_at(
    image: &BlockImage,
    offset: u64,
    max: u64,
    bottom: Option<usize>,
) -> Result<Status, DriverError> {
    Walker::default().status(image, offset, max, bottom)
}

/// A walk through a chain in ascending offsets that remembers, per layer,
/// the extents the driver last reported (a driver may answer with many): a
/// long run in an upper layer is asked once, not again for every short run
/// found below it. Only for chains that do not change during the walk.
#[derive(Default)]
pub struct Walker {
    known: Vec<Vec<Extent>>,
    /// Per layer, the names of the stores its extents were found in, as
    /// the driver gave them (asked once, not for every run).
    names: Vec<Vec<(u32, Arc<str>)>>,
}

impl Walker {
    /// The name of store `index` of `layer` (at `depth`).
    fn store_name(
        &mut self,
        layer: &BlockImage,
        depth: usize,
        index: u32,
    ) -> Result<Arc<str>, DriverError> {
        if self.names.len() <= depth {
            self.names.resize(depth + 1, Vec::new());
        }
        let names = &mut self.names[depth];
        if let Some((_, name)) = names.iter().find(|(i, _)| *i == index) {
            return Ok(Arc::clone(name));
        }
        let name: Arc<str> = layer.extent_store_name(index)?.into();
        names.push((index, Arc::clone(&name)));
        Ok(name)
    }

    /// The extent of `layer` (at `depth`) that starts at `offset`.
    fn extent(
        &mut self,
        layer: &BlockImage,
        depth: usize,
        offset: u64,
        len: u64,
    ) -> Result<Extent, DriverError> {
        if self.known.len() <= depth {
            self.known.resize(depth + 1, Vec::new());
        }
        let known = &mut self.known[depth];
        let find = |known: &[Extent]| {
            let at = known.partition_point(|e| e.end() <= offset);
            known.get(at).filter(|e| e.offset <= offset).copied()
        };
        let cached = match find(known) {
            Some(cached) => cached,
            None => {
                let extents = layer.block_status(offset, len)?;
                match extents.first() {
                    None => {
                        return Err(DriverError::new(
                            ErrorKind::OTHER,
                            "driver returned no block status",
                        ))
                    }
                    Some(first) if first.offset != offset || first.length == 0 => {
                        return Err(DriverError::new(
                            ErrorKind::OTHER,
                            "driver returned a misplaced extent",
                        ))
                    }
                    Some(_) => {}
                }
                // Keep the consecutive, non-empty extents (a driver's later
                // extents are a hint: a gap or overlap ends them).
                known.clear();
                for ext in extents {
                    if ext.length == 0 || known.last().is_some_and(|l| l.end() != ext.offset) {
                        break;
                    }
                    known.push(ext);
                }
                known[0]
            }
        };
        let skip = offset - cached.offset;
        let host_offset = if cached.has(ef::OFFSET_VALID) {
            cached.host_offset + skip
        } else {
            cached.host_offset
        };
        Ok(Extent {
            offset,
            length: (cached.length - skip).min(len),
            host_offset,
            ..cached
        })
    }

    /// [`status_at`], with the walker's memory of earlier answers.
    pub fn status(
        &mut self,
        image: &BlockImage,
        offset: u64,
        max: u64,
        bottom: Option<usize>,
    ) -> Result<Status, DriverError> {
        let mut layer = image;
        let mut depth = 0usize;
        let mut len = max;
        loop {
            if offset >= layer.size() {
                // Past the end of a shorter backing image: reads as zeros.
                return Ok(Status::zeros_past_end(offset, len, depth));
            }
            len = len.min(layer.size() - offset);
            let ext = self.extent(layer, depth, offset, len)?;
            len = len.min(ext.length);
            let allocated = ext.has(ef::ALLOCATED);
            let last = layer.backing.is_none() || bottom.is_some_and(|b| depth >= b);
            if allocated || ext.has(ef::DATA) || last {
                // The bottom layer's unallocated blocks read as zeros, except
                // on a device that says nothing of its blocks (null-co).
                let zero = ext.has(ef::ZERO)
                    || (!ext.has(ef::DATA)
                        && layer.backing.is_none()
                        && !layer.store.reports_nothing());
                let offset_valid = ext.has(ef::OFFSET_VALID);
                let file = match offset_valid {
                    true => Some(self.store_name(layer, depth, ext.store)?),
                    false => None,
                };
                return Ok(Status {
                    start: offset,
                    length: len,
                    depth,
                    present: allocated || ext.has(ef::DATA),
                    zero,
                    data: ext.has(ef::DATA),
                    compressed: ext.has(ef::COMPRESSED),
                    offset: offset_valid.then_some(ext.host_offset),
                    file,
                });
            }
            let Some(backing) = layer.backing.as_deref() else {
                return Err(DriverError::new(
                    ErrorKind::OTHER,
                    "backing chain ended during the walk",
                ));
            };
            if offset >= backing.size() {
                // Past the end of a shorter backing image the overlay itself reads
                // as zeros, and qemu-img reports it at the overlay's depth.
                return Ok(Status::zeros_past_end(offset, len, depth));
            }
            len = len.min(backing.size() - offset);
            layer = backing;
            depth += 1;
        }
    }
}

/// Whether two statuses can be merged into one map line.
pub fn mergeable(a: &Status, b: &Status) -> bool {
    a.start + a.length == b.start
        && a.depth == b.depth
        && a.present == b.present
        && a.zero == b.zero
        && a.data == b.data
        && a.compressed == b.compressed
        && a.file == b.file
        && match (a.offset, b.offset) {
            (Some(x), Some(y)) => x + a.length == y,
            (None, None) => true,
            _ => false,
        }
}
