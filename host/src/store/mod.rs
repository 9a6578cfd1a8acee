//! Byte stores: the host's side of the protocol layer. A local file today.

pub mod cache;
pub mod faults;
pub mod file;

pub use cache::CacheMode;
pub use file::LocalFile;
