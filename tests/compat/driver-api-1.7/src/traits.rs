//! The `#[sabi_trait]` interfaces that cross the boundary.
//!
//! Drivers do not implement these directly: they implement [`crate::DriverImpl`]
//! and [`crate::ImageImpl`], which [`crate::guard`] wraps with panic catching.
//! The host implements [`ByteStore`], [`HostServices`] and [`BackingReader`].

use crate::{
    BackingBox, ByteStoreBox, DriverError, Extent, HostServicesBox, ImageArc, Prealloc, StoreRun,
};
use abi_stable::{
    sabi_trait,
    std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec},
};

/// A format driver.
#[sabi_trait]
pub trait FormatDriver: Send + Sync {
    /// The format's name as qemu-img spells it (`raw`, `qcow2`…).
    fn name(&self) -> RString;
    /// One-line description.
    fn description(&self) -> RString;
    /// [`crate::caps`] bits.
    fn capabilities(&self) -> u64;
    /// Scores how likely `head` (the first bytes of the file, up to 2 KiB) is an
    /// image of this format: 0 for no, 100 for a certain magic. Raw returns 1.
    fn probe(&self, head: RSlice<'_, u8>, filename: RStr<'_>) -> i32;
    /// JSON array of [`crate::schema::CreateOption`]: what `-o help` lists.
    fn create_options(&self) -> RString;
    /// Creates an image in `store` (already created empty by the host) from a JSON
    /// [`crate::schema::CreateRequest`].
    fn create(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        request: RStr<'_>,
    ) -> RResult<(), DriverError>;
    /// Opens the image in `store` with [`crate::open_flags`].
    fn open(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        flags: u32,
    ) -> RResult<ImageArc, DriverError>;
    /// Answers a JSON [`crate::schema::MeasureRequest`] with a JSON
    /// [`crate::schema::MeasureResult`]. `allocated` lists the source's allocated
    /// extents when measuring an existing image.
    #[sabi(last_prefix_field)]
    fn measure(
        &self,
        request: RStr<'_>,
        allocated: RSlice<'_, Extent>,
    ) -> RResult<RString, DriverError>;
    /// JSON list of [`crate::schema::CreateOption`]: the options `amend -o`
    /// accepts, in the order `amend -o help` lists them (ABI 1.2).
    fn amend_options(&self) -> RString;
    /// JSON [`crate::schema::DriverDescription`]: everything the plain
    /// descriptive methods above answer, in one call that reports a driver
    /// fault as an error instead of an empty answer (ABI 1.3). A host calling
    /// an older driver gets an error of kind `UNSUPPORTED` from this default.
    fn describe(&self) -> RResult<RString, DriverError> {
        RResult::RErr(DriverError::unsupported("describe needs driver ABI 1.3"))
    }
    /// [`FormatDriver::probe`], with a driver fault reported as an error
    /// (ABI 1.3). On an older driver this falls back to `probe`.
    fn try_probe(&self, head: RSlice<'_, u8>, filename: RStr<'_>) -> RResult<i32, DriverError> {
        RResult::ROk(self.probe(head, filename))
    }
}

/// An open image. Every method takes `&self` and is safe to call from many threads.
#[sabi_trait]
pub trait Image: Send + Sync {
    /// Guest size in bytes.
    fn virtual_size(&self) -> u64;
    /// Reads `buf.len()` bytes at guest `offset` (areas past the end read as
    /// zeros). Every byte of `buf` must be written: the host reuses buffers.
    fn read_at(&self, offset: u64, buf: RSliceMut<'_, u8>) -> RResult<(), DriverError>;
    /// Writes `buf` at guest `offset`.
    fn write_at(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<(), DriverError>;
    /// Makes `len` bytes at `offset` read as zeros ([`crate::zero_flags`]).
    fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> RResult<(), DriverError>;
    /// Deallocates the whole clusters of a range in this layer: afterwards they
    /// read from the backing image, or as zeros without one (what `commit`
    /// needs to empty an overlay). Partial clusters at the edges are kept,
    /// and dirty bitmaps are not marked (as qemu empties an overlay).
    fn discard(&self, offset: u64, len: u64) -> RResult<(), DriverError>;
    /// Allocation status of `[offset, offset+len)`: extents in order, starting at
    /// `offset`, covering at least one byte and at most `len` bytes. Returning
    /// many consecutive extents per call saves the host calls across the ABI.
    fn block_status(&self, offset: u64, len: u64) -> RResult<RVec<Extent>, DriverError>;
    /// Makes everything written so far durable (data before metadata).
    fn flush(&self) -> RResult<(), DriverError>;
    /// JSON [`crate::schema::ImageInfo`].
    fn info(&self) -> RResult<RString, DriverError>;
    /// Name of the store with index `index` (see [`Extent::store`]).
    fn store_name(&self, index: u32) -> RString;
    /// Changes the guest size (`RESIZE` capability).
    fn resize(&self, new_size: u64, prealloc: Prealloc, shrink: bool) -> RResult<(), DriverError>;
    /// Writes one compressed cluster-aligned block (`COMPRESSED_WRITES`).
    /// From ABI 1.4 on, an empty `buf` at offset 0 ends a compressed copy:
    /// the driver may align its file's end, as qemu-img's convert -c does.
    fn write_compressed(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<(), DriverError>;
    /// Runs a JSON [`crate::schema::CheckRequest`] and returns a JSON
    /// [`crate::schema::CheckReport`] (`CHECK`).
    fn check(&self, request: RStr<'_>) -> RResult<RString, DriverError>;
    /// Snapshot, bitmap and amend operations: a JSON
    /// [`crate::schema::MetadataRequest`] in, a JSON answer out.
    fn metadata(&self, request: RStr<'_>) -> RResult<RString, DriverError>;
    /// Records a new backing file name and format in the header (rebase, commit),
    /// without touching data.
    fn set_backing(
        &self,
        name: ROption<RStr<'_>>,
        format: ROption<RStr<'_>>,
    ) -> RResult<(), DriverError>;
    /// Compresses one cluster for [`Image::write_prepared`], without writing:
    /// images that must be written in order (`ImageInfo::write_in_order`) let the
    /// host compress many clusters in parallel ahead of the writer.
    fn compress_cluster(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<RVec<u8>, DriverError>;
    /// Writes a cluster prepared by [`Image::compress_cluster`]; the host calls
    /// it in ascending offset order.
    fn write_prepared(&self, offset: u64, data: RSlice<'_, u8>) -> RResult<(), DriverError>;
    /// Closes the image cleanly (flushes, clears dirty flags). Called once, last.
    #[sabi(last_prefix_field)]
    fn close(&self) -> RResult<(), DriverError>;
    /// [`Image::virtual_size`], with a driver fault reported as an error
    /// (ABI 1.3). On an older driver this falls back to `virtual_size`.
    fn try_virtual_size(&self) -> RResult<u64, DriverError> {
        RResult::ROk(self.virtual_size())
    }
    /// [`Image::store_name`], with a driver fault reported as an error
    /// (ABI 1.3). On an older driver this falls back to `store_name`.
    fn try_store_name(&self, index: u32) -> RResult<RString, DriverError> {
        RResult::ROk(self.store_name(index))
    }
    /// Allocates, now, the host space a write of `[offset, offset+len)`
    /// would allocate, so that a later [`Image::write_at`] of the range lands
    /// where writing it now would have (ABI 1.4). The host calls it in guest
    /// order, one call at a time, then writes the ranges from many threads:
    /// a parallel copy gets the file layout of a sequential one. A
    /// reservation changes nothing the image reads; one never written is
    /// released at [`Image::close`] (or, after a crash, leaks space). Returns
    /// false, as the default does, when the image does not reserve: the host
    /// then stops asking.
    fn reserve(&self, offset: u64, len: u64) -> RResult<bool, DriverError> {
        let _ = (offset, len);
        RResult::ROk(false)
    }
}

/// A byte store (a local file today): what a driver reads and writes.
#[sabi_trait]
pub trait ByteStore: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns the count (short only at EOF).
    fn read_at(&self, offset: u64, buf: RSliceMut<'_, u8>) -> RResult<u64, DriverError>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: RSlice<'_, u8>) -> RResult<(), DriverError>;
    /// Current length in bytes.
    fn len(&self) -> RResult<u64, DriverError>;
    /// Truncates or extends to `len`, allocating the new part as `prealloc` says.
    fn set_len(&self, len: u64, prealloc: Prealloc) -> RResult<(), DriverError>;
    /// Makes written data durable (a no-op in cache mode `unsafe`).
    fn flush(&self) -> RResult<(), DriverError>;
    /// Makes a range read as zeros; with `punch` the range is deallocated.
    fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> RResult<(), DriverError>;
    /// The data-or-hole run that starts at `offset` (SEEK_DATA / SEEK_HOLE),
    /// at most `max` bytes long.
    fn run_at(&self, offset: u64, max: u64) -> RResult<StoreRun, DriverError>;
    /// Bytes allocated on the host (st_blocks * 512).
    fn allocated_size(&self) -> RResult<u64, DriverError>;
    /// The store's name as the user gave it.
    #[sabi(last_prefix_field)]
    fn name(&self) -> RString;
    /// Says whether the file grows only by appends that are written whole
    /// from now on: the driver leaves no hole between the file's end and a
    /// write past it (qcow2's clusters without subclusters, vmdk's grains;
    /// not vpc, whose blocks keep the holes of unwritten sectors). A local
    /// file then allocates its blocks ahead of its end, which makes appends
    /// cheaper and keeps them together on disk; the host still turns this
    /// off for a compressed copy, whose clusters are packed with gaps. A
    /// store that cannot, as the default, ignores it (ABI 1.7).
    fn grow_densely(&self, dense: bool) {
        let _ = dense;
    }
}

/// The host's services for one image being opened or created.
#[sabi_trait]
pub trait HostServices: Send + Sync {
    /// Opens (or with `create`, creates) a store named relative to the image,
    /// such as a vmdk extent or a qcow2 external data file.
    fn open_related(
        &self,
        name: RStr<'_>,
        writable: bool,
        create: bool,
    ) -> RResult<ByteStoreBox, DriverError>;
    /// Opens the backing image named in the header; `format` is the recorded
    /// backing format, if any. The host resolves the name, probes where qemu-img
    /// would, and keeps the chain.
    fn open_backing(
        &self,
        name: RStr<'_>,
        format: ROption<RStr<'_>>,
    ) -> RResult<BackingBox, DriverError>;
    /// The secret with this id (`--object secret,id=...`).
    fn secret(&self, id: RStr<'_>) -> RResult<RString, DriverError>;
    /// Prints a warning the way qemu-img does (`qemu-img: warning: ...`).
    #[sabi(last_prefix_field)]
    fn warn(&self, message: RStr<'_>);
    /// The value of a format option given when opening (`--image-opts`,
    /// `json:`), such as `encrypt.key-secret`. Options no driver asked for
    /// are refused by the host after `open`. (ABI 1.1)
    fn open_option(&self, key: RStr<'_>) -> ROption<RString>;
}

/// Read-only view of a backing image (the host's whole chain below an overlay).
#[sabi_trait]
pub trait BackingReader: Send + Sync {
    /// Guest size of the backing image.
    fn virtual_size(&self) -> u64;
    /// Reads guest data (areas past the end read as zeros).
    fn read_at(&self, offset: u64, buf: RSliceMut<'_, u8>) -> RResult<(), DriverError>;
    /// Allocation status of the backing image, as [`Image::block_status`].
    #[sabi(last_prefix_field)]
    fn block_status(&self, offset: u64, len: u64) -> RResult<RVec<Extent>, DriverError>;
}

/// A protocol driver (ABI 1.6): opens the [`ByteStore`] a format driver works
/// on from a protocol node's options (an NBD export, an HTTP resource).
/// Exported beside format drivers by [`crate::export_plugins!`]; the local file
/// store stays built into the host.
#[sabi_trait]
pub trait ProtocolDriver: Send + Sync {
    /// The protocol's name as qemu names its driver (`nbd`, `http`): the
    /// `file.driver=` that selects it.
    fn name(&self) -> RString;
    /// One line for the host's driver listing.
    fn description(&self) -> RString;
    /// What the protocol can do: [`crate::proto_caps`] bits.
    fn capabilities(&self) -> u64;
    /// The URI schemes this driver opens (`nbd`, `nbd+unix`), one per line.
    fn schemes(&self) -> RString;
    /// Parses a filename of one of [`ProtocolDriver::schemes`] into the
    /// protocol node's options: a JSON object with qemu's option names
    /// (`{"server": {"type": "inet", ...}, "export": "x"}`).
    fn parse_filename(&self, filename: RStr<'_>) -> RResult<RString, DriverError>;
    /// The name qemu gives the node these options (a JSON object) describe,
    /// as `info` and `map` print it (`nbd://host:port/export`).
    fn canonical_name(&self, options: RStr<'_>) -> RResult<RString, DriverError>;
    /// Opens the store the options (a JSON object) describe; `flags` are
    /// [`crate::proto_open`] bits.
    #[sabi(last_prefix_field)]
    fn open(&self, options: RStr<'_>, flags: u32) -> RResult<ByteStoreBox, DriverError>;
    /// Opens the store as [`ProtocolDriver::open`] does, given the secrets
    /// its options name (`password-secret=ID`): `secrets` is a JSON object
    /// from each such id the host knows (`--object secret`) to the secret's
    /// text; an id it lacks is absent, and the driver says so where qemu's
    /// does ("No secret with id 'ID'"). The host calls it for drivers of
    /// ABI 1.7 on; the default ignores the secrets (ABI 1.7).
    fn open_with_secrets(
        &self,
        options: RStr<'_>,
        flags: u32,
        secrets: RStr<'_>,
    ) -> RResult<ByteStoreBox, DriverError> {
        let _ = secrets;
        self.open(options, flags)
    }
}
