//! The runtime options QEMU's qcow2 driver takes at open (`--image-opts`,
//! `json:` names): cache sizes, discard and overlap-check settings. qimg
//! keeps its own caches, so these are checked as QEMU checks them, with its
//! messages, and otherwise have no effect; asking for them is also what
//! keeps the host from refusing them as unknown. `data-file.filename`
//! replaces the external data file's name from the header.

use crate::error::{Error, Result};
use qimg_driver_api::size::{option_message, parse_size_u64};

/// Boolean options (`on`/`off`).
const FLAGS: [&str; 5] = [
    "lazy-refcounts",
    "pass-discard-request",
    "pass-discard-snapshot",
    "pass-discard-other",
    "discard-no-unref",
];

/// Values `overlap-check` takes.
const OVERLAP_CHECKS: [&str; 4] = ["none", "constant", "cached", "all"];

/// The runtime options given at open, as strings.
#[derive(Default)]
pub struct RuntimeOptions {
    /// `cache-size`, `l2-cache-size`, `refcount-cache-size`,
    /// `l2-cache-entry-size`.
    sizes: [(&'static str, Option<String>); 4],
    /// `cache-clean-interval`.
    clean_interval: Option<String>,
    /// The boolean options, in [`FLAGS`] order.
    flags: Vec<(&'static str, Option<String>)>,
    /// `overlap-check`.
    overlap_check: Option<String>,
    /// `data-file.filename`.
    pub data_file: Option<String>,
    /// `data-file.driver`.
    data_file_driver: Option<String>,
}

impl RuntimeOptions {
    /// Asks the host for every option (`option` answers one key).
    pub fn ask(option: impl Fn(&str) -> Option<String>) -> RuntimeOptions {
        let size = |key: &'static str| (key, option(key));
        RuntimeOptions {
            sizes: [
                size("cache-size"),
                size("l2-cache-size"),
                size("refcount-cache-size"),
                size("l2-cache-entry-size"),
            ],
            clean_interval: option("cache-clean-interval"),
            flags: FLAGS.iter().map(|&k| (k, option(k))).collect(),
            overlap_check: option("overlap-check"),
            data_file: option("data-file.filename"),
            data_file_driver: option("data-file.driver"),
        }
    }

    /// Checks the options for an image of `cluster_size`-byte clusters.
    pub fn check(&self, cluster_size: u64) -> Result<()> {
        let mut sizes = [None; 4];
        for (slot, (key, value)) in sizes.iter_mut().zip(&self.sizes) {
            if let Some(text) = value {
                *slot = Some(
                    parse_size_u64(text, 1)
                        .map_err(|e| Error::argument(option_message(key, text, e)))?,
                );
            }
        }
        for (key, value) in &self.flags {
            if let Some(v) = value {
                if !matches!(v.as_str(), "on" | "off" | "true" | "false" | "yes" | "no") {
                    return Err(Error::argument(format!(
                        "Parameter '{key}' expects 'on' or 'off'"
                    )));
                }
            }
        }
        if let Some(interval) = &self.clean_interval {
            let negative = interval.trim_start().starts_with('-');
            match interval.trim().parse::<u64>() {
                Ok(v) if v <= u64::from(u32::MAX) => {}
                Ok(_) => return Err(Error::argument("Cache clean interval too big")),
                Err(_) if negative => return Err(Error::argument("Cache clean interval too big")),
                Err(_) => {
                    return Err(Error::argument(
                        "Parameter 'cache-clean-interval' expects a number",
                    ))
                }
            }
        }
        let [combined, l2, refcount, entry] = sizes;
        if let Some(combined) = combined {
            if l2.is_some() && refcount.is_some() {
                return Err(Error::argument(
                    "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time",
                ));
            }
            if l2.is_some_and(|l2| l2 > combined) {
                return Err(Error::argument("l2-cache-size may not exceed cache-size"));
            }
            if refcount.is_some_and(|r| r > combined) {
                return Err(Error::argument(
                    "refcount-cache-size may not exceed cache-size",
                ));
            }
        }
        let entry = entry.unwrap_or(cluster_size);
        if entry < 512 || entry > cluster_size || !entry.is_power_of_two() {
            return Err(Error::argument(format!(
                "L2 cache entry size must be a power of two between 512 and the cluster size ({cluster_size})"
            )));
        }
        if let Some(mode) = &self.overlap_check {
            if !OVERLAP_CHECKS.contains(&mode.as_str()) {
                return Err(Error::argument(format!(
                    "Unsupported value '{mode}' for qcow2 option 'overlap-check'. Allowed are any of the following: {}",
                    OVERLAP_CHECKS.join(", ")
                )));
            }
        }
        match self.data_file_driver.as_deref() {
            None | Some("file") => Ok(()),
            Some(other) => Err(Error::unsupported(format!(
                "qimg opens external data files as plain files, not with driver '{other}'"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RuntimeOptions;
    use std::collections::HashMap;

    fn check(pairs: &[(&str, &str)]) -> Result<(), String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RuntimeOptions::ask(|k| map.get(k).cloned())
            .check(65536)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn qemus_checks() {
        assert!(check(&[]).is_ok());
        assert!(check(&[("l2-cache-entry-size", "4k"), ("cache-size", "1M")]).is_ok());
        assert!(check(&[("l2-cache-entry-size", "1000")])
            .unwrap_err()
            .contains("must be a power of two between 512 and the cluster size (65536)"));
        assert_eq!(
            check(&[("l2-cache-size", "1M"), ("cache-size", "512k")]).unwrap_err(),
            "l2-cache-size may not exceed cache-size"
        );
        assert_eq!(
            check(&[("cache-clean-interval", "-1")]).unwrap_err(),
            "Cache clean interval too big"
        );
        assert_eq!(
            check(&[("lazy-refcounts", "maybe")]).unwrap_err(),
            "Parameter 'lazy-refcounts' expects 'on' or 'off'"
        );
    }
}
