//! Opening images: format probing, option strings, backing chains, image locks
//! and secrets.

pub mod image;
pub mod json;
pub mod lineage;
pub mod lock;
pub mod magic;
pub mod options;
pub mod secret;
pub mod services;
pub mod spec;
pub mod tls;

pub use image::{create_image, open_image, BlockImage, OpenRequest};

/// The longest image the block layer takes (qemu's `BDRV_MAX_LENGTH`:
/// `INT64_MAX` rounded down to a GiB).
pub const MAX_LENGTH: u64 = (i64::MAX as u64) & !((1 << 30) - 1);
pub use lock::LockSpec;
