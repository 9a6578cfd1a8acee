//! Format drivers: the manifest that lists them and the loader that brings their
//! libraries in, lazily: a command that names its format loads only that driver.

pub mod conformance;
pub mod listing;
pub mod loader;
pub mod manifest;

pub use loader::{Driver, Registry};
