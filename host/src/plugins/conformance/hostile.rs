//! The hostile-file checks: empty, garbage, truncated and mutated files may
//! be refused but must not make the driver panic.

use super::outcome::{no_panic, Failure, Outcome, Verdict};
use super::random::Rng;
use super::session::{Access, Session};
use super::{KIB, POISON, SEED};
use qimg_driver_api::abi_stable::std_types::{RSlice, RStr};
use qimg_driver_api::caps;

/// Mutated copies of a real image the hostile-file check opens.
pub(super) const MUTANTS: usize = 32;
/// How many bytes of an image the mutations touch.
const MUTATED_SPAN: u64 = 4096;
/// How many bytes of an image the field sweep touches.
const SWEPT_SPAN: usize = 512;
/// Bytes of a file the host hands a driver's probe.
const PROBE_BYTES: usize = 2048;
/// The values the field sweep writes: (width in bytes, value). 0x10000 is
/// there because it overflows 32-bit products of two fields (a vmdk capacity
/// like it once made a walk over unallocated grains run forever).
const EXTREMES: &[(usize, u64)] = &[
    (4, 0xFFFF_FFFF),
    (4, 0x8000_0000),
    (4, 0x0001_0000),
    (8, u64::MAX),
    (8, 1 << 63),
    (8, 1 << 40),
];

impl Session {
    /// A file of `bytes` named `name`: probing and opening it must not panic.
    pub(super) fn hostile_bytes(&self, name: &str, bytes: &[u8]) -> Outcome {
        let path = self.scratch.path(&format!("hostile-{name}"))?;
        std::fs::write(&path, bytes).map_err(|error| Failure::Setup {
            what: format!("write {path}"),
            error,
        })?;
        let result = self.survive(&path, bytes, name);
        let _ = std::fs::remove_file(&path);
        result.map(|()| Verdict::Pass)
    }

    /// A copy of the test disk cut short.
    pub(super) fn truncated(&self, cut: Cut) -> Outcome {
        let source = match &self.disk {
            Some(disk) => disk.path.clone(),
            None => {
                return Ok(self
                    .lacks(caps::CREATE)
                    .unwrap_or_else(|| Verdict::Skip("needs the test disk".into())))
            }
        };
        let bytes = std::fs::read(&source).map_err(|error| Failure::Setup {
            what: format!("read {source}"),
            error,
        })?;
        let keep = match cut {
            Cut::To(len) => len.min(bytes.len()),
            Cut::Half => bytes.len() / 2,
        };
        self.hostile_bytes(&format!("cut-{keep}"), &bytes[..keep])
    }

    /// Seeded mutations of the small image's first 4 KiB.
    pub(super) fn mutants(&self) -> Outcome {
        let mut rng = Rng::new(SEED.rotate_left(17));
        let variants = (0..MUTANTS).map(move |n| {
            let edits = mutate(&mut rng);
            let list: Vec<String> = edits
                .iter()
                .map(|(at, value)| format!("{at:#x}={value:#04x}"))
                .collect();
            (format!("mutant {n} ({})", list.join(" ")), edits)
        });
        self.hostile_variants("hostile-mutant", variants)
    }

    /// The small image with each 4-byte-aligned field of its first 512
    /// bytes set to extreme values, as 32- and 64-bit little-endian numbers.
    pub(super) fn field_sweep(&self) -> Outcome {
        let variants = (0..SWEPT_SPAN).step_by(4).flat_map(|at| {
            EXTREMES.iter().map(move |&(width, value)| {
                let edits = value.to_le_bytes()[..width]
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| (at + i, b))
                    .collect();
                (format!("u{} at {at:#x} = {value:#x}", width * 8), edits)
            })
        });
        self.hostile_variants("hostile-field", variants)
    }

    /// Copies the small image to `name` and opens it once with each of
    /// `variants` (a label and byte edits `(offset, value)`) applied in
    /// place; edits past the end of the image are left out, and variants
    /// that change nothing are not tried.
    fn hostile_variants(
        &self,
        name: &str,
        variants: impl Iterator<Item = (String, Vec<(usize, u8)>)>,
    ) -> Outcome {
        let Some(small) = &self.small else {
            return Ok(self
                .lacks(caps::CREATE)
                .unwrap_or_else(|| Verdict::Skip("needs the 1 MiB image".into())));
        };
        let original = std::fs::read(small).map_err(|error| Failure::Setup {
            what: format!("read {small}"),
            error,
        })?;
        let path = self.scratch.path(name)?;
        let file = std::fs::write(&path, &original)
            .and_then(|()| std::fs::OpenOptions::new().write(true).open(&path))
            .map_err(|error| Failure::Setup {
                what: format!("write {path}"),
                error,
            })?;
        let mut head = original[..original.len().min(PROBE_BYTES)].to_vec();
        let mut result = Ok(Verdict::Pass);
        for (label, edits) in variants {
            let edits: Vec<(usize, u8)> = edits
                .into_iter()
                .filter(|&(at, value)| original.get(at).is_some_and(|&b| b != value))
                .collect();
            if edits.is_empty() {
                continue;
            }
            patch(&file, &path, &mut head, edits.iter().copied())?;
            let survived = self.survive(&path, &head, &label);
            patch(
                &file,
                &path,
                &mut head,
                edits.iter().map(|&(at, _)| (at, original[at])),
            )?;
            if let Err(failure) = survived {
                result = Err(Failure::Rule(format!("{label}: {failure}")));
                break;
            }
        }
        drop(file);
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Probes and opens the file at `path` (holding `bytes`, named `label`
    /// in messages) as FORMAT; if it opens, reads, queries and describes
    /// it. Errors are fine, panics are not.
    fn survive(&self, path: &str, bytes: &[u8], label: &str) -> Result<(), Failure> {
        let step = |what: &str| self.tap.doing(format!("{label}: {what}"));
        let head = &bytes[..bytes.len().min(PROBE_BYTES)];
        step("probe");
        no_panic(
            self.driver
                .api
                .try_probe(RSlice::from_slice(head), RStr::from(path))
                .into_result(),
            "probe",
        )?;
        step("open");
        let Some(image) = no_panic(self.open(path, Some(&self.format), Access::Read), "open")?
        else {
            return Ok(());
        };
        let Some(size) = no_panic(image.try_size(), "virtual size")? else {
            return Ok(());
        };
        let mut buf = vec![POISON; 64 * KIB as usize];
        let tail = size.saturating_sub(buf.len() as u64);
        step("read at 0");
        no_panic(image.read(0, &mut buf), "read at 0")?;
        step(&format!("read at {tail}"));
        no_panic(image.read(tail, &mut buf), format!("read at {tail}"))?;
        if size > 0 {
            step(&format!("block status 0+{size}"));
            no_panic(image.block_status(0, size), "block status")?;
            let half = size / 2;
            step(&format!("block status {half:#x}+{}", size - half));
            no_panic(image.block_status(half, size - half), "block status")?;
        }
        step("info");
        no_panic(image.info(), "info")?;
        step("close");
        no_panic(image.close(), "close")?;
        Ok(())
    }
}

/// How much of the test disk a truncation keeps.
#[derive(Clone, Copy, Debug)]
pub(super) enum Cut {
    /// The first so many bytes.
    To(usize),
    /// The first half.
    Half,
}

/// Writes byte edits `(offset, value)` into `file` (at `path`) and into
/// `head`, its first bytes as the probe sees them.
fn patch(
    file: &std::fs::File,
    path: &str,
    head: &mut [u8],
    edits: impl Iterator<Item = (usize, u8)>,
) -> Result<(), Failure> {
    use std::os::unix::fs::FileExt;
    for (at, value) in edits {
        file.write_all_at(&[value], at as u64)
            .map_err(|error| Failure::Setup {
                what: format!("write {path}"),
                error,
            })?;
        if let Some(b) = head.get_mut(at) {
            *b = value;
        }
    }
    Ok(())
}

/// 1 to 8 byte edits `(offset, value)` in the first [`MUTATED_SPAN`]
/// bytes of an image (half of them in the first 128, where headers keep
/// their fields).
fn mutate(rng: &mut Rng) -> Vec<(usize, u8)> {
    let count = 1 + rng.below(8);
    (0..count)
        .map(|_| {
            let window = if rng.below(2) == 0 { 128 } else { MUTATED_SPAN };
            let at = rng.below(window) as usize;
            let value = match rng.below(3) {
                0 => 0x00,
                1 => 0xFF,
                _ => rng.next() as u8,
            };
            (at, value)
        })
        .collect()
}
