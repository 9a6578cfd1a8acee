//! Safe, std-typed helpers over the objects the host hands a driver, so a
//! driver's own code needs no abi_stable types: `store.read_exact_at(..)`
//! instead of `store.read_at(off, RSliceMut::from_mut_slice(..)).into_result()`.

use crate::{BackingBox, ByteStoreBox, DriverError, HostServicesBox, Prealloc, StoreRun};
use abi_stable::std_types::{ROption, RSlice, RSliceMut, RStr};

/// Reads and writes on a [`ByteStoreBox`] with std types and whole ranges.
pub trait StoreExt {
    /// Reads at most `buf.len()` bytes at `offset`; returns how many (fewer
    /// only at the end of the store).
    fn read_some_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, DriverError>;
    /// Reads from `offset` until `buf` is full or the store ends; returns
    /// how many bytes were read.
    fn read_full_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, DriverError> {
        let mut done = 0usize;
        while done < buf.len() {
            let n = self.read_some_at(offset + done as u64, &mut buf[done..])?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
    /// Fills all of `buf` from `offset`; bytes past the end of the store read
    /// as zeros (a sparse image file may be shorter than its data).
    fn read_or_zero_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        let done = self.read_full_at(offset, buf)?;
        buf[done..].fill(0);
        Ok(())
    }
    /// Fills all of `buf` from `offset`; reaching the end of the store is an
    /// `INVALID_IMAGE` error that names `what` (say, "header").
    fn read_exact_at(&self, offset: u64, buf: &mut [u8], what: &str) -> Result<(), DriverError> {
        let done = self.read_full_at(offset, buf)?;
        if done < buf.len() {
            return Err(DriverError::invalid_image(format!(
                "{what}: unexpected end of file at offset {}",
                offset + done as u64
            )));
        }
        Ok(())
    }
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError>;
    /// The store's length in bytes.
    fn size(&self) -> Result<u64, DriverError>;
    /// Truncates or extends the store, allocating the new part as `prealloc` says.
    fn set_size(&self, len: u64, prealloc: Prealloc) -> Result<(), DriverError>;
    /// Makes what was written durable.
    fn sync(&self) -> Result<(), DriverError>;
    /// Makes `len` bytes at `offset` read as zeros; `punch` deallocates them.
    fn zero_range(&self, offset: u64, len: u64, punch: bool) -> Result<(), DriverError>;
    /// The data or hole run starting at `offset`, at most `max` bytes long.
    fn run(&self, offset: u64, max: u64) -> Result<StoreRun, DriverError>;
    /// The store's name as the user gave it.
    fn display_name(&self) -> String;
}

impl StoreExt for ByteStoreBox {
    fn read_some_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, DriverError> {
        let n = self
            .read_at(offset, RSliceMut::from_mut_slice(buf))
            .into_result()?;
        // A store never reports more than it was asked for; clamp in case.
        Ok((n as usize).min(buf.len()))
    }
    fn write_all_at(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        self.write_at(offset, RSlice::from_slice(buf)).into_result()
    }
    fn size(&self) -> Result<u64, DriverError> {
        self.len().into_result()
    }
    fn set_size(&self, len: u64, prealloc: Prealloc) -> Result<(), DriverError> {
        self.set_len(len, prealloc).into_result()
    }
    fn sync(&self) -> Result<(), DriverError> {
        self.flush().into_result()
    }
    fn zero_range(&self, offset: u64, len: u64, punch: bool) -> Result<(), DriverError> {
        self.write_zeroes(offset, len, punch).into_result()
    }
    fn run(&self, offset: u64, max: u64) -> Result<StoreRun, DriverError> {
        self.run_at(offset, max).into_result()
    }
    fn display_name(&self) -> String {
        self.name().into()
    }
}

/// The host's services with std types.
pub trait HostExt {
    /// Opens (or with `create`, creates) a store named relative to the image.
    fn related(
        &self,
        name: &str,
        writable: bool,
        create: bool,
    ) -> Result<ByteStoreBox, DriverError>;
    /// Opens (or creates) a related store as [`HostExt::related`] does, saying
    /// what it holds: a [`crate::related_kind`] value (ABI 1.8).
    fn related_as(
        &self,
        name: &str,
        writable: bool,
        create: bool,
        kind: u32,
    ) -> Result<ByteStoreBox, DriverError>;
    /// Opens the backing image named in the header, with its recorded format.
    fn backing(&self, name: &str, format: Option<&str>) -> Result<BackingBox, DriverError>;
    /// The secret with this id (`--object secret,id=...`).
    fn secret_text(&self, id: &str) -> Result<String, DriverError>;
    /// Prints a warning as qemu-img does.
    fn warning(&self, message: &str);
    /// A format option given when opening (`--image-opts`), if any. Needs a
    /// host of ABI 1.1 or later, which every host that loads this crate's
    /// drivers is.
    fn option(&self, key: &str) -> Option<String>;
}

impl HostExt for HostServicesBox {
    fn related(
        &self,
        name: &str,
        writable: bool,
        create: bool,
    ) -> Result<ByteStoreBox, DriverError> {
        self.open_related(RStr::from(name), writable, create)
            .into_result()
    }
    fn related_as(
        &self,
        name: &str,
        writable: bool,
        create: bool,
        kind: u32,
    ) -> Result<ByteStoreBox, DriverError> {
        self.open_related_as(RStr::from(name), writable, create, kind)
            .into_result()
    }
    fn backing(&self, name: &str, format: Option<&str>) -> Result<BackingBox, DriverError> {
        let format = match format {
            Some(f) => ROption::RSome(RStr::from(f)),
            None => ROption::RNone,
        };
        self.open_backing(RStr::from(name), format).into_result()
    }
    fn secret_text(&self, id: &str) -> Result<String, DriverError> {
        Ok(self.secret(RStr::from(id)).into_result()?.into())
    }
    fn warning(&self, message: &str) {
        self.warn(RStr::from(message))
    }
    fn option(&self, key: &str) -> Option<String> {
        self.open_option(RStr::from(key))
            .into_option()
            .map(Into::into)
    }
}

/// Reads from a backing image with std types.
pub trait BackingExt {
    /// Fills `buf` with the backing image's guest data at `offset`.
    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError>;
    /// The backing image's guest size.
    fn size(&self) -> u64;
}

impl BackingExt for BackingBox {
    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        self.read_at(offset, RSliceMut::from_mut_slice(buf))
            .into_result()
    }
    fn size(&self) -> u64 {
        self.virtual_size()
    }
}
