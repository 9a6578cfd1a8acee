//! Operations across a backing chain: commit (an overlay's data into an image
//! below it) and safe rebase (keep the guest content while the backing file
//! changes). Both are format-blind: they read through the chain and write
//! through the drivers.

use super::buffer::Buffer;
use super::progress::Progress;
use super::ratelimit::RateLimit;
use super::status::status_at;
use crate::block::BlockImage;
use qimg_driver_api::{zero_flags, DriverError};

/// Largest piece read and written at once.
const CHUNK: u64 = 2 << 20;

/// Writes everything allocated in `top` above `base_depth` (the depth of the
/// base in top's chain) into `base`, an independent read-write handle on the
/// same image as that layer.
pub fn commit(
    top: &BlockImage,
    base: &BlockImage,
    base_depth: usize,
    rate: &RateLimit,
    progress: &Progress,
) -> Result<(), DriverError> {
    let size = top.size();
    let mut offset = 0u64;
    while offset < size {
        let status = status_at(
            top,
            offset,
            (size - offset).min(CHUNK),
            Some(base_depth - 1),
        )?;
        let len = status.length;
        // A run that reads as zeros because it lies past the end of an
        // intermediate layer (one above the base) counts as allocated there:
        // the base's content must not show through, so zeros are written.
        let past_intermediate_end = !status.present && status.zero && status.depth + 1 < base_depth;
        if (status.present || past_intermediate_end) && status.depth < base_depth {
            if status.zero {
                base.write_zeroes(offset, len, zero_flags::MAY_UNMAP)?;
            } else {
                let mut buf = Buffer::take(len as usize);
                top.read(offset, &mut buf)?;
                rate.take(len);
                base.write(offset, &buf)?;
            }
        }
        offset += len;
        progress.fraction(offset, size);
    }
    base.flush()
}

/// How a safe rebase writes the clusters that differ.
pub struct RebaseJob<'a> {
    /// The image being rebased, open read-write with its old chain.
    pub image: &'a BlockImage,
    /// The new backing image (None: no backing file).
    pub new_backing: Option<&'a BlockImage>,
    /// Write the copied clusters compressed (`-c`).
    pub compress: bool,
    /// The image's allocation unit.
    pub cluster: u64,
}

impl RebaseJob<'_> {
    /// Copies into the image every cluster it does not allocate whose content
    /// through the old chain differs from the new backing's. Walks the image
    /// as qemu-img does, so progress advances by the same steps: runs of at
    /// most 2 MiB, cut where allocation changes; each run compared counts as
    /// an equal share.
    pub fn run(&self, progress: &Progress) -> Result<(), DriverError> {
        let image = self.image;
        let size = image.size();
        let cluster = self.cluster.max(512);
        if size == 0 {
            return image.flush();
        }
        let share = 100.0f32 / (size / size.min(CHUNK)) as f32;
        let old_end = image.backing.as_ref().map_or(0, |b| b.size());
        // When the new backing file is itself in the old chain, only what the
        // layers above it allocate can differ: the rest is never read.
        let new_depth = self.new_backing.and_then(|b| depth_in_chain(image, b));
        let mut offset = 0u64;
        while offset < size {
            let status = status_at(image, offset, (size - offset).min(CHUNK), Some(0))?;
            let mut len = status.length;
            if !status.present {
                let differs = match new_depth {
                    Some(depth) => {
                        let above = status_at(image, offset, len, Some(depth - 1))?;
                        len = above.length;
                        // Allocated between the image and its new backing, or
                        // zeros past the end of such a layer.
                        above.depth < depth
                            && (above.present || (above.zero && above.depth + 1 < depth))
                    }
                    None => true,
                };
                // Runs that need no comparison advance no progress.
                if differs {
                    self.copy_differences(offset, len, cluster, old_end)?;
                    progress.print(share, 100);
                }
            }
            offset += len;
        }
        image.flush()
    }

    /// Compares old and new content of `[offset, offset+len)` cluster by
    /// cluster and writes the old content of each run of clusters that
    /// differ, as qemu-img does: past the old backing file's end (from the
    /// first run that reaches it) the old content is zeros, written as
    /// zeroes rather than as data.
    fn copy_differences(
        &self,
        offset: u64,
        len: u64,
        cluster: u64,
        old_end: u64,
    ) -> Result<(), DriverError> {
        let image = self.image;
        let start = offset / cluster * cluster;
        let end = (offset + len)
            .div_ceil(cluster)
            .saturating_mul(cluster)
            .min(image.size());
        let mut old = Buffer::take((end - start) as usize);
        let mut new = Buffer::take((end - start) as usize);
        let mut old_eof = start >= old_end;
        // The two sides are read at once, one per core.
        let (read_old, read_new) = rayon::join(
            || {
                if old_eof {
                    old.fill(0);
                    Ok(())
                } else {
                    image.read(start, &mut old)
                }
            },
            || match self.new_backing {
                Some(backing) => read_padded(backing, start, &mut new),
                None => {
                    new.fill(0);
                    Ok(())
                }
            },
        );
        read_old?;
        read_new?;
        let differs: Vec<bool> = old
            .chunks(cluster as usize)
            .zip(new.chunks(cluster as usize))
            .map(|(o, n)| o != n)
            .collect();
        let mut first = 0;
        while first < differs.len() {
            let run = differs[first..]
                .iter()
                .take_while(|&&d| d == differs[first])
                .count();
            let (from, to) = (
                first * cluster as usize,
                ((first + run) * cluster as usize).min(old.len()),
            );
            let at = start + from as u64;
            if differs[first] {
                let written = if old_eof {
                    image.write_zeroes(at, (to - from) as u64, 0)
                } else if self.compress {
                    old[from..to]
                        .chunks(cluster as usize)
                        .enumerate()
                        .try_for_each(|(i, piece)| {
                            image.write_compressed(at + (i as u64) * cluster, piece)
                        })
                } else {
                    image.write(at, &old[from..to])
                };
                // qemu-img's words for a failed write into the image.
                written.map_err(|e| {
                    DriverError::new(
                        e.kind,
                        format!("Error while writing to COW image: {}", e.message),
                    )
                })?;
            }
            if start + to as u64 >= old_end {
                old_eof = true;
            }
            first += run;
        }
        Ok(())
    }
}

/// The depth at which `layer`'s file appears in `image`'s backing chain.
fn depth_in_chain(image: &BlockImage, layer: &BlockImage) -> Option<usize> {
    let wanted = std::fs::canonicalize(&layer.filename).ok()?;
    let mut current = image.backing.clone();
    let mut depth = 1;
    while let Some(l) = current {
        if std::fs::canonicalize(&l.filename).ok().as_ref() == Some(&wanted) {
            return Some(depth);
        }
        current = l.backing.clone();
        depth += 1;
    }
    None
}

/// Reads guest data, with zeros past the image's end.
fn read_padded(image: &BlockImage, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
    let n = image.size().saturating_sub(offset).min(buf.len() as u64) as usize;
    if n > 0 {
        image.read(offset, &mut buf[..n])?;
    }
    buf[n..].fill(0);
    Ok(())
}
