//! The I/O checks on the test disk: a fresh image reads as zeros, block
//! status holds its invariants, random I/O agrees with the reference, the
//! data survives a reopen, reads past the end return zeros, `info` answers
//! and a read-only image refuses writes.

use super::invariants::{
    check_extents, check_zero_extents, compare, compare_whole, odd_windows, read_whole, walk_status,
};
use super::outcome::{During, Failure, Outcome, Verdict};
use super::random::{Op, Rng, MAX_IO};
use super::session::{Access, Session};
use super::size_rule::SECTOR;
use super::{KIB, MIB, OPERATIONS, POISON, SEED};
use qimg_driver_api::{caps, zero_flags, DriverError, ErrorKind, Prealloc};

impl Session {
    /// A fresh disk reads as zeros (`ZERO_INIT`); without the capability
    /// the reference takes whatever it reads as.
    pub(super) fn fresh_zeros(&mut self) -> Outcome {
        self.with_disk(true, |session, disk| {
            let image = session.open_named(&disk.path, Access::Read)?;
            let verdict = match session.lacks(caps::ZERO_INIT) {
                Some(skip) => {
                    read_whole(&image, &mut disk.reference)?;
                    skip
                }
                None => {
                    compare_whole(&image, &disk.reference, "fresh image")?;
                    Verdict::Pass
                }
            };
            image.close().during("close")?;
            Ok(verdict)
        })
    }

    /// Block status invariants over the whole disk (and, on the fresh
    /// disk, over odd windows), checked against the reference.
    pub(super) fn status_check(&self, fresh: bool) -> Outcome {
        let disk = match self.disk(true) {
            Ok(disk) => disk,
            Err(skip) => return Ok(skip),
        };
        if let Some(skip) = self.lacks(caps::WRITE).filter(|_| !fresh) {
            return Ok(skip);
        }
        let image = self.open_named(&disk.path, Access::Read)?;
        walk_status(&image, &disk.reference)?;
        if fresh {
            for (offset, len) in odd_windows(disk.reference.len() as u64, disk.granularity) {
                let extents = image
                    .block_status(offset, len)
                    .during(format!("block status {offset:#x}+{len}"))?;
                check_extents(offset, len, disk.reference.len() as u64, &extents)?;
                check_zero_extents(&extents, &disk.reference)?;
            }
        }
        image.close().during("close")?;
        Ok(Verdict::Pass)
    }

    /// The random I/O check.
    pub(super) fn random_io(&mut self) -> Outcome {
        if let Some(skip) = self.lacks(caps::WRITE) {
            return Ok(skip);
        }
        self.with_disk(true, |session, disk| {
            if disk.write_in_order {
                return Ok(Verdict::Skip(
                    "the image must be written in order (info says write_in_order)".into(),
                ));
            }
            let image = session.open_named(&disk.path, Access::Write)?;
            let mut rng = Rng::new(SEED);
            let size = disk.reference.len() as u64;
            let mut buf = vec![0u8; MAX_IO as usize];
            for n in 0..OPERATIONS {
                let op = Op::random(&mut rng, size, disk.granularity);
                session.tap.doing(format!("op {n}: {op}"));
                op.apply(&image, &mut disk.reference, &mut buf, &mut rng, n)?;
            }
            image.flush().during("flush")?;
            compare_whole(&image, &disk.reference, "whole disk after the operations")?;
            image.close().during("close")?;
            Ok(Verdict::Pass)
        })
    }

    /// After close, a read-only open reads the whole disk as the reference.
    pub(super) fn reopen_matches(&mut self) -> Outcome {
        if let Some(skip) = self.lacks(caps::WRITE) {
            return Ok(skip);
        }
        self.with_disk(true, |session, disk| {
            let image = session.open_named(&disk.path, Access::Read)?;
            let size = image.try_size().during("virtual size")?;
            if size != disk.reference.len() as u64 {
                return Err(Failure::Rule(format!(
                    "virtual size changed from {} to {size} on reopen",
                    disk.reference.len()
                )));
            }
            compare_whole(&image, &disk.reference, "whole disk after reopen")?;
            walk_status(&image, &disk.reference)?;
            image.close().during("close")?;
            Ok(Verdict::Pass)
        })
    }

    /// Reads across and past the end of the disk: the part inside matches
    /// the reference, every byte past the virtual size reads as zero.
    pub(super) fn reads_past_end(&self) -> Outcome {
        let disk = match self.disk(true) {
            Ok(disk) => disk,
            Err(skip) => return Ok(skip),
        };
        let image = self.open_named(&disk.path, Access::Read)?;
        let size = disk.reference.len() as u64;
        let mut buf = vec![POISON; 8192];
        for start in [size.saturating_sub(1000), size, size + 4096] {
            buf.fill(POISON);
            image
                .read(start, &mut buf)
                .during(format!("read {start:#x}+{}", buf.len()))?;
            let inside = size.saturating_sub(start).min(buf.len() as u64) as usize;
            let (head, tail) = buf.split_at(inside);
            let from = start.min(size) as usize;
            compare(
                head,
                &disk.reference[from..from + inside],
                start,
                "read across the end",
            )?;
            if let Some(i) = tail.iter().position(|&b| b != 0) {
                return Err(Failure::Rule(format!(
                    "offset {} past the virtual size {size} reads as {:#04x}, not zero",
                    start + (inside + i) as u64,
                    tail[i]
                )));
            }
        }
        image.close().during("close")?;
        Ok(Verdict::Pass)
    }

    /// `info` answers JSON the host parses, on a read-only open and on an
    /// open as `qimg info` makes it.
    pub(super) fn info_parses(&self) -> Outcome {
        let disk = match self.disk(false) {
            Ok(disk) => disk,
            Err(skip) => return Ok(skip),
        };
        for access in [Access::Read, Access::Describe] {
            let image = self.open_named(&disk.path, access)?;
            let info = image.info().during("info")?;
            if let Some(cluster) = info.cluster_size {
                if cluster == 0 {
                    return Err(Failure::Rule("info reports a cluster size of 0".into()));
                }
            }
            image.close().during("close")?;
        }
        Ok(Verdict::Pass)
    }

    /// Writes, zero writes and resizes of a read-only image fail and change
    /// nothing.
    pub(super) fn read_only_refuses(&self) -> Outcome {
        let disk = match self.disk(true) {
            Ok(disk) => disk,
            Err(skip) => return Ok(skip),
        };
        let image = self.open_named(&disk.path, Access::Read)?;
        let size = disk.reference.len() as u64;
        let offset = (size / 3) & !(SECTOR - 1);
        let len = (64 * KIB).min(size - offset.min(size));
        let attempt = |what: &str, result: Result<(), DriverError>| match result {
            Ok(()) => Err(Failure::Rule(format!(
                "{what} of a read-only image succeeded"
            ))),
            Err(e) if e.kind == ErrorKind::PANIC => Err(Failure::Call {
                op: what.to_string(),
                error: e,
            }),
            Err(_) => Ok(()),
        };
        if len > 0 {
            attempt("write", image.write(offset, &vec![0x5A; len as usize]))?;
            attempt(
                "write_zeroes",
                image.write_zeroes(offset, len, zero_flags::MAY_UNMAP),
            )?;
        }
        if self.driver.can(caps::RESIZE) {
            attempt("resize", image.resize(size + MIB, Prealloc::OFF, false))?;
        }
        let now = image.try_size().during("virtual size")?;
        if now != size {
            return Err(Failure::Rule(format!(
                "a refused resize changed the virtual size from {size} to {now}"
            )));
        }
        compare_whole(&image, &disk.reference, "disk after refused writes")?;
        image.close().during("close")?;
        Ok(Verdict::Pass)
    }
}
