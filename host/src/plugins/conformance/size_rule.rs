//! The size rule: the virtual size of an image asked for `A` bytes is at
//! least `A` and less than `A` plus the granularity, the cluster size
//! `info` reports within [512 bytes, 2 MiB].

use super::outcome::{During, Failure};
use super::MIB;
use crate::block::BlockImage;

/// qemu's sector: the smallest granularity of the size rule.
pub(super) const SECTOR: u64 = 512;
/// The largest granularity of the size rule.
const MAX_GRANULARITY: u64 = 2 * MIB;

/// The granularity of the size rule for an open image: its cluster size
/// (as `info` reports it) within [512, 2 MiB], or 512.
pub(super) fn granularity(image: &BlockImage) -> Result<u64, Failure> {
    let info = image.info().during("info")?;
    Ok(info
        .cluster_size
        .unwrap_or(SECTOR)
        .clamp(SECTOR, MAX_GRANULARITY))
}

/// The size rule: `asked <= got < asked + granularity`.
pub(super) fn check_size(asked: u64, got: u64, granularity: u64) -> Result<(), Failure> {
    if got < asked || got - asked >= granularity {
        return Err(Failure::Rule(format!(
            "virtual size {got} for {asked} asked (allowed: {asked} up to {} bytes more)",
            granularity - 1
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_rule_allows_rounding_up_to_the_granularity() {
        assert!(check_size(1000, 1024, 512).is_ok());
        assert!(check_size(1024, 1024, 512).is_ok());
        assert!(check_size(1000, 1536, 512).is_err());
        assert!(check_size(1000, 999, 512).is_err());
        assert!(check_size(MIB + 1, 2 * MIB, MAX_GRANULARITY).is_ok());
    }
}
