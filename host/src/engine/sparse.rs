//! Where `convert -S` leaves holes in data it read: qemu-img's rule, so that
//! targets get the same allocation. A buffer is cut into runs of 512-byte
//! sectors. A run of zeros becomes a hole unless it is shorter than the
//! `-S` size and sits between data; the end of a data run is rounded up,
//! and the end of a zero run down, to the `-S` size rounded down to a power
//! of two, except where the buffer ends. As in qemu-img, the target's
//! cluster size plays no part: a driver that allocates whole clusters fills
//! a cluster's unwritten part itself, and one that keeps sectors unwritten
//! inside a block (vpc, parallels) leaves them as holes in its file.

use qimg_driver_util::is_zero;

const SECTOR: usize = 512;

/// How `-S` cuts buffers written at a target.
#[derive(Clone, Copy, Debug)]
pub struct Sparse {
    /// Zero runs shorter than this many sectors inside data are written.
    min: usize,
    /// Run ends are aligned to this many sectors (a power of two).
    alignment: u64,
}

impl Sparse {
    /// The rule for `-S min_sparse` bytes (not 0).
    pub fn new(min_sparse: u64) -> Sparse {
        let min = (min_sparse / SECTOR as u64).max(1);
        Sparse {
            min: min as usize,
            alignment: 1u64 << (63 - min.leading_zeros()),
        }
    }

    /// The runs of `buf`, written at target byte `offset` (sector-aligned):
    /// (start, end, is data), in bytes from the start of `buf`, covering it.
    pub fn runs(&self, buf: &[u8], offset: u64) -> Vec<(usize, usize, bool)> {
        let sectors: Vec<bool> = buf.chunks(SECTOR).map(|s| !is_zero(s)).collect();
        let first = offset / SECTOR as u64;
        let mut out: Vec<(usize, usize, bool)> = Vec::new();
        let mut pos = 0usize;
        while pos < sectors.len() {
            let (n, data) = self.run_min(&sectors[pos..], first + pos as u64);
            let (start, end) = (pos * SECTOR, ((pos + n) * SECTOR).min(buf.len()));
            match out.last_mut() {
                Some(last) if last.2 == data => last.1 = end,
                _ => out.push((start, end, data)),
            }
            pos += n;
        }
        out
    }

    /// The run at the start of `sectors` (true: data), at target sector
    /// `at`, with zero runs shorter than `min` inside data counted as data.
    fn run_min(&self, sectors: &[bool], at: u64) -> (usize, bool) {
        let min = self.min.min(sectors.len());
        let (first, data) = self.run(sectors, at);
        if !data {
            return (first, false);
        }
        let mut used = first;
        let mut checked = first;
        while checked < sectors.len() {
            let (n, data) = self.run(&sectors[checked..], at + checked as u64);
            checked += n;
            if data {
                used = checked;
            } else if n >= min {
                break;
            }
        }
        (used, true)
    }

    /// The run of equal sectors at the start of `sectors`, at target sector
    /// `at`, its end aligned: up for data, down for zeros (a zero run that
    /// does not reach an alignment boundary counts as data).
    fn run(&self, sectors: &[bool], at: u64) -> (usize, bool) {
        let mut data = sectors[0];
        let mut i = sectors.iter().take_while(|&&s| s == data).count();
        if i == sectors.len() {
            return (i, data);
        }
        let tail = ((at + i as u64) & (self.alignment - 1)) as usize;
        if tail != 0 {
            if !data && i <= tail {
                data = true;
            }
            if data {
                i = (i + self.alignment as usize - tail).min(sectors.len());
            } else {
                i -= tail;
            }
        }
        (i, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(layout: &[(usize, bool)]) -> Vec<u8> {
        let mut buf = Vec::new();
        for &(sectors, data) in layout {
            buf.extend(std::iter::repeat_n(u8::from(data), sectors * SECTOR));
        }
        buf
    }

    #[test]
    fn a_buffer_of_zeros_is_one_hole_whatever_its_alignment() {
        let sparse = Sparse::new(16 << 10);
        let buf = buffer(&[(32, false)]);
        assert_eq!(sparse.runs(&buf, 8 << 10), vec![(0, 16 << 10, false)]);
    }

    #[test]
    fn short_zero_runs_inside_data_are_written() {
        let sparse = Sparse::new(4096);
        // 8 data, 4 zero (< 8 sectors), 8 data, 16 zero.
        let buf = buffer(&[(8, true), (4, false), (8, true), (16, false)]);
        let runs = sparse.runs(&buf, 0);
        assert_eq!(
            runs,
            vec![(0, 24 * SECTOR, true), (24 * SECTOR, 36 * SECTOR, false)]
        );
    }

    #[test]
    fn data_ends_round_up_and_zero_ends_down_to_the_alignment() {
        let sparse = Sparse::new(4096);
        // 2 data sectors, then 20 zeros, then data.
        let buf = buffer(&[(2, true), (20, false), (2, true)]);
        let runs = sparse.runs(&buf, 0);
        assert_eq!(
            runs,
            vec![
                (0, 8 * SECTOR, true),
                (8 * SECTOR, 16 * SECTOR, false),
                (16 * SECTOR, 24 * SECTOR, true)
            ]
        );
    }
}
