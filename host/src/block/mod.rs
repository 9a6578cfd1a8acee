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
pub use lock::LockSpec;
