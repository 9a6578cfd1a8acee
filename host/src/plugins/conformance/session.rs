//! The state of one run, [`Session`], and the calls every check makes
//! through it: opening and creating images the way the commands do, and
//! skipping on a missing capability.

use super::disk::Disk;
use super::outcome::{During, Failure, Verdict};
use super::report::Tap;
use super::scratch::Scratch;
use super::SEED;
use crate::block::{create_image, open_image, BlockImage, LockSpec, OpenRequest};
use crate::plugins::listing::capability_names;
use crate::plugins::Driver;
use crate::store::CacheMode;
use qimg_driver_api::schema::CreateRequest;
use qimg_driver_api::DriverError;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How the checks open an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    /// Read-only, as `convert` opens a source.
    Read,
    /// Read-write, as `convert` opens its target.
    Write,
    /// Read-write and resizable, as `resize` opens an image.
    Resize,
    /// Described only, as `info` opens an image (no data I/O, no locks).
    Describe,
}

/// The state of one conformance run.
pub(super) struct Session {
    /// The format checked.
    pub(super) format: String,
    /// Its driver.
    pub(super) driver: Arc<Driver>,
    /// Where the images are made.
    pub(super) scratch: Scratch,
    /// The report.
    pub(super) tap: Tap,
    /// The test disk, once created.
    pub(super) disk: Option<Disk>,
    /// A small valid image (the 1 MiB create check's), the base of the
    /// truncation and mutation checks.
    pub(super) small: Option<String>,
}

impl Session {
    /// Prints what is being checked as TAP comments.
    pub(super) fn introduce(&self) {
        let d = &self.driver;
        let package = d.package.as_deref().unwrap_or("unknown package");
        self.tap.comment(&format!(
            "driver {} ({package}; driver-api {}, ABI {})",
            d.name,
            d.api_version,
            d.abi()
        ));
        self.tap.comment(&format!(
            "capabilities: {}",
            capability_names(d.caps).join(" ")
        ));
        self.tap.comment(&format!(
            "scratch directory: {}; seed {SEED:#x}",
            self.scratch.dir.display()
        ));
    }

    /// Opens `path` through the block layer; `format` None probes.
    pub(super) fn open(
        &self,
        path: &str,
        format: Option<&str>,
        access: Access,
    ) -> Result<BlockImage, DriverError> {
        let base = OpenRequest::read(path, format, false);
        let request = match access {
            Access::Read => base,
            Access::Write => OpenRequest {
                write: true,
                lock: Some(LockSpec::READ_WRITE),
                ..base
            },
            Access::Resize => OpenRequest {
                write: true,
                lock: Some(LockSpec::RESIZE),
                no_backing: true,
                ..base
            },
            Access::Describe => OpenRequest {
                lock: None,
                no_backing: true,
                no_io: true,
                ..base
            },
        };
        open_image(&request)
    }

    /// Opens `path` with FORMAT named.
    pub(super) fn open_named(&self, path: &str, access: Access) -> Result<BlockImage, Failure> {
        let what = match access {
            Access::Read => "open read-only",
            Access::Write => "open read-write",
            Access::Resize => "open for resize",
            Access::Describe => "open for info",
        };
        self.open(path, Some(&self.format), access).during(what)
    }

    /// Creates an image of `size` bytes at `path` with default options.
    pub(super) fn create(&self, path: &str, size: u64) -> Result<(), DriverError> {
        let request = CreateRequest {
            size,
            options: BTreeMap::new(),
        };
        create_image(&self.driver, path, &request, CacheMode::Writeback, false)
    }

    /// The skip reason when the driver lacks `cap`, named as the listing
    /// names it.
    pub(super) fn lacks(&self, cap: u64) -> Option<Verdict> {
        if self.driver.can(cap) {
            return None;
        }
        let name = capability_names(cap).join(" ").to_uppercase();
        Some(Verdict::Skip(format!("no {name} capability")))
    }
}
