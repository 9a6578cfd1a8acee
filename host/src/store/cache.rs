//! Cache modes of `-t` / `-T`, as qemu-img names them.

/// How a store treats the host page cache and flushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Page cache, flush on request (qemu's default for most commands).
    Writeback,
    /// Page cache, never flush (qemu-img convert's default for its target).
    Unsafe,
    /// O_DIRECT, flush on request.
    None,
    /// O_DIRECT and O_DSYNC.
    DirectSync,
    /// Page cache and O_DSYNC.
    Writethrough,
}

impl CacheMode {
    /// Parses `-t` / `-T`; `off` is an alias of `none` as in qemu.
    pub fn parse(name: &str) -> Option<CacheMode> {
        Some(match name {
            "writeback" => CacheMode::Writeback,
            "unsafe" => CacheMode::Unsafe,
            "none" | "off" => CacheMode::None,
            "directsync" => CacheMode::DirectSync,
            "writethrough" => CacheMode::Writethrough,
            _ => return None,
        })
    }
    /// True if the store bypasses the page cache.
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::DirectSync)
    }
    /// True if every write is synchronous.
    pub fn dsync(self) -> bool {
        matches!(self, CacheMode::DirectSync | CacheMode::Writethrough)
    }
    /// True if `flush` must reach the disk.
    pub fn flushes(self) -> bool {
        !matches!(self, CacheMode::Unsafe)
    }
}
