//! Which host clusters of the data area hold a cluster the BAT names: what
//! allocation looks in for a free cluster before it grows the file, and
//! what `check` counts duplicates with.

/// A bit per host cluster, counted from the data area's start.
#[derive(Clone, Debug, Default)]
pub struct Used {
    words: Vec<u64>,
    len: u64,
}

/// Why a cluster could not be marked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkError {
    /// The cluster lies past the bitmap's end.
    Beyond,
    /// The cluster is marked already.
    Taken,
}

impl Used {
    /// A bitmap of `len` clusters, all free.
    pub fn new(len: u64) -> Used {
        Used {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// True if cluster `i` is marked.
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Marks cluster `i`.
    pub fn mark(&mut self, i: u64) -> Result<(), MarkError> {
        if i >= self.len {
            return Err(MarkError::Beyond);
        }
        if self.get(i) {
            return Err(MarkError::Taken);
        }
        self.words[(i / 64) as usize] |= 1 << (i % 64);
        Ok(())
    }

    /// Frees cluster `i` (nothing if it lies past the end).
    pub fn clear(&mut self, i: u64) {
        if i < self.len {
            self.words[(i / 64) as usize] &= !(1 << (i % 64));
        }
    }

    /// Covers at least `len` clusters; the new ones are free.
    pub fn grow(&mut self, len: u64) {
        if len > self.len {
            self.words.resize(len.div_ceil(64) as usize, 0);
            self.len = len;
        }
    }

    /// The first free cluster, if any.
    pub fn first_free(&self) -> Option<u64> {
        let (w, word) = self
            .words
            .iter()
            .enumerate()
            .find(|(_, w)| **w != u64::MAX)?;
        let i = w as u64 * 64 + u64::from(word.trailing_ones());
        (i < self.len).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_frees_and_finds() {
        let mut u = Used::new(130);
        assert_eq!(u.first_free(), Some(0));
        for i in 0..130 {
            u.mark(i).unwrap();
        }
        assert_eq!(u.first_free(), None);
        assert_eq!(u.mark(5), Err(MarkError::Taken));
        assert_eq!(u.mark(130), Err(MarkError::Beyond));
        u.clear(77);
        assert_eq!(u.first_free(), Some(77));
        u.mark(77).unwrap();
        u.grow(200);
        assert_eq!(u.first_free(), Some(130));
        assert_eq!(u.mark(200), Err(MarkError::Beyond));
    }
}
