//! An open luks image: guest offset `o` lives, encrypted, at file offset
//! `payload + o`, in 512-byte sectors numbered from the payload's start
//! (the IV generators' sector numbers).
//!
//! Every read and write goes through a private buffer, decrypted or
//! encrypted there without a lock: the cipher holds only key schedules.
//! Writes that do not cover whole sectors read, merge and rewrite the edge
//! sectors, as QEMU's block layer does for the crypto driver's 512-byte
//! request alignment. Two such writes into the same sector at once could
//! lose one of them; the host's parallel copies write disjoint,
//! sector-aligned chunks, so they never do.

use crate::error::driver_error;
use crate::HEAD;
use qimg_crypt::amend::{SlotChange, VolumeStore};
use qimg_crypt::{volume, CryptError, LuksHeader, SectorCipher, SECTOR_SIZE};
use qimg_driver_api::schema::{ChildFile, ImageInfo, MetadataRequest};
use qimg_driver_api::{
    extent_flags, open_flags, related_kind, zero_flags, ByteStoreBox, DriverError, Extent, HostExt,
    HostServicesBox, ImageImpl, Prealloc,
};
use qimg_driver_util::{check_range, read_or_zero, write_all};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use zeroize::Zeroizing;

/// The luks file as the key-slot code sees it: the volume from byte 0.
struct WholeFile<'a>(&'a ByteStoreBox);

impl VolumeStore for WholeFile<'_> {
    fn read(&self, offset: u64, buf: &mut [u8]) -> qimg_crypt::error::Result<()> {
        read_or_zero(self.0, offset, buf).map_err(|e| CryptError::Io(e.message.to_string()))
    }
    fn write(&self, offset: u64, buf: &[u8]) -> qimg_crypt::error::Result<()> {
        write_all(self.0, offset, buf).map_err(|e| CryptError::Io(e.message.to_string()))
    }
    fn flush(&self) -> qimg_crypt::error::Result<()> {
        self.0
            .flush()
            .into_result()
            .map_err(|e| CryptError::Io(e.message.to_string()))
    }
}

/// Bytes of zeros encrypted per write by `write_zeroes`.
const ZERO_CHUNK: u64 = 1 << 20;

/// An open luks image.
pub struct LuksImage {
    store: ByteStoreBox,
    /// The file holding the header, if not `store` (`header.filename`).
    header_file: Option<ByteStoreBox>,
    /// The header is detached: all of `store` is payload.
    detached: bool,
    host: HostServicesBox,
    /// The header, as key-slot changes leave it.
    header: Mutex<LuksHeader>,
    /// The payload cipher; None when opened only to be described
    /// ([`open_flags::NO_IO`]), which needs no passphrase.
    cipher: Option<SectorCipher>,
    /// The master key, kept for filling key slots when writable.
    key: Option<Zeroizing<Vec<u8>>>,
    /// Byte offset of the payload in the file.
    payload: u64,
    /// Guest size: the file's length past the payload.
    size: AtomicU64,
    writable: bool,
}

fn no_io() -> DriverError {
    DriverError::invalid_argument("The image was opened without a key")
}

impl LuksImage {
    /// Opens the luks image in `store`, unlocking it with the secret that
    /// the `key-secret` option names unless `flags` has NO_IO.
    pub fn open(
        store: ByteStoreBox,
        host: HostServicesBox,
        flags: u32,
    ) -> Result<LuksImage, DriverError> {
        // Asked for whatever happens, so the host does not refuse them.
        let key_secret = host.option("key-secret");
        let writable = flags & open_flags::WRITE != 0;
        // The header may live in a file of its own (`header.filename`); the
        // payload still starts where the header says, in this file. A
        // header with no room for a payload after it (payload offset 0,
        // cryptsetup's `--header` layout) is what QEMU calls detached.
        let header_file = match host.option("header.filename") {
            Some(name) => Some(host.related_as(&name, writable, false, related_kind::HEADER)?),
            None => None,
        };
        let header_store = header_file.as_ref().unwrap_or(&store);
        // As QEMU: the key is looked up before the header is read.
        let password = if flags & open_flags::NO_IO != 0 {
            None
        } else {
            let id = key_secret.ok_or_else(|| {
                DriverError::invalid_argument("Parameter 'key-secret' is required for cipher")
            })?;
            Some(Zeroizing::new(host.secret_text(&id)?))
        };
        let mut head = vec![0u8; HEAD];
        read_or_zero(header_store, 0, &mut head)?;
        let header = LuksHeader::parse(&head).map_err(driver_error)?;
        let detached = header_file.is_some() && header.payload_offset == 0;
        // A damaged layout or an unknown algorithm fails the open even when
        // describing, as in QEMU.
        header.check(detached).map_err(driver_error)?;
        header.algorithms().map_err(driver_error)?;
        let (cipher, key) = if let Some(password) = password {
            let read = |offset: u64, buf: &mut [u8]| {
                read_or_zero(header_store, offset, buf)
                    .map_err(|e| CryptError::Io(e.message.to_string()))
            };
            let unlocked =
                volume::unlock(header.clone(), password.as_bytes(), &read).map_err(driver_error)?;
            (
                Some(unlocked.cipher),
                Some(unlocked.key).filter(|_| writable),
            )
        } else {
            (None, None)
        };
        // QEMU counts the file in whole sectors: a partial last one reads
        // zero-padded, and decrypts like any other.
        let payload = header.payload_bytes();
        let size = store
            .len()
            .into_result()?
            .next_multiple_of(SECTOR_SIZE)
            .checked_sub(payload)
            .ok_or_else(|| {
                // QEMU's message for a payload past the end of the file.
                DriverError::from_errno(
                    5,
                    "Could not refresh total sector count: Input/output error",
                )
            })?;
        Ok(LuksImage {
            store,
            header_file,
            detached,
            host,
            header: Mutex::new(header),
            cipher,
            key,
            payload,
            size: AtomicU64::new(size),
            writable,
        })
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn cipher(&self) -> Result<&SectorCipher, DriverError> {
        self.cipher.as_ref().ok_or_else(no_io)
    }

    fn check_writable(&self) -> Result<(), DriverError> {
        if self.writable {
            Ok(())
        } else {
            Err(DriverError::from_errno(1, "Operation not permitted"))
        }
    }

    /// The file the header is in.
    fn header_store(&self) -> &ByteStoreBox {
        self.header_file.as_ref().unwrap_or(&self.store)
    }

    /// Adds or erases key slots as `amend -o` asks.
    fn amend(&self, options: &BTreeMap<String, String>, force: bool) -> Result<(), DriverError> {
        self.check_writable()?;
        let change =
            SlotChange::parse(|k| options.get(k).map(String::as_str), "").map_err(driver_error)?;
        let (Some(change), Some(key)) = (change, &self.key) else {
            return Ok(());
        };
        let secret = |id: &str| {
            self.host
                .secret_text(id)
                .map(|s| Zeroizing::new(s.into_bytes()))
                .map_err(|e| CryptError::Option(e.message.to_string()))
        };
        let mut header = self.header.lock().unwrap_or_else(|e| e.into_inner());
        change
            .apply(
                &mut header,
                key,
                force,
                &secret,
                &WholeFile(self.header_store()),
            )
            .map_err(driver_error)
    }

    /// Reads and decrypts the whole sectors `[start, start + buf.len())`.
    fn read_sectors(&self, start: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        read_or_zero(&self.store, self.payload + start, buf)?;
        self.cipher()?
            .decrypt(start / SECTOR_SIZE, buf)
            .map_err(driver_error)
    }

    /// Encrypts `buf` (whole sectors, guest offset `start`) in place and
    /// writes it.
    fn write_sectors(&self, start: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        self.cipher()?
            .encrypt(start / SECTOR_SIZE, buf)
            .map_err(driver_error)?;
        write_all(&self.store, self.payload + start, buf)
    }

    /// The sector-aligned range around `[offset, offset + len)`.
    fn aligned(offset: u64, len: u64) -> (u64, u64) {
        let start = offset / SECTOR_SIZE * SECTOR_SIZE;
        let end = (offset + len).next_multiple_of(SECTOR_SIZE);
        (start, end)
    }
}

impl ImageImpl for LuksImage {
    fn virtual_size(&self) -> u64 {
        self.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        let size = self.size();
        let inside = (buf.len() as u64).min(size.saturating_sub(offset)) as usize;
        buf[inside..].fill(0);
        if inside == 0 {
            return Ok(());
        }
        let (start, end) = Self::aligned(offset, inside as u64);
        if start == offset && end == offset + inside as u64 {
            return self.read_sectors(start, &mut buf[..inside]);
        }
        let mut tmp = Zeroizing::new(vec![0u8; (end - start) as usize]);
        self.read_sectors(start, &mut tmp)?;
        let skip = (offset - start) as usize;
        buf[..inside].copy_from_slice(&tmp[skip..skip + inside]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DriverError> {
        self.check_writable()?;
        check_range(offset, buf.len() as u64, self.size())?;
        if buf.is_empty() {
            return Ok(());
        }
        let (start, end) = Self::aligned(offset, buf.len() as u64);
        let mut tmp = Zeroizing::new(vec![0u8; (end - start) as usize]);
        let skip = (offset - start) as usize;
        let last = tmp.len() - SECTOR_SIZE as usize;
        let head_partial = skip != 0;
        let tail_partial = !(offset + buf.len() as u64).is_multiple_of(SECTOR_SIZE);
        if head_partial {
            self.read_sectors(start, &mut tmp[..SECTOR_SIZE as usize])?;
        }
        // One sector holding both edges has been read already.
        if tail_partial && !(head_partial && last == 0) {
            self.read_sectors(end - SECTOR_SIZE, &mut tmp[last..])?;
        }
        tmp[skip..skip + buf.len()].copy_from_slice(buf);
        self.write_sectors(start, &mut tmp)
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: u32) -> Result<(), DriverError> {
        // Zeros are encrypted like any data: the payload has no way to say
        // "reads as zeros" (an unwritten sector decrypts to noise), so a
        // caller that wants only a cheap way is told there is none.
        self.check_writable()?;
        check_range(offset, len, self.size())?;
        if flags & zero_flags::NO_FALLBACK != 0 {
            return Err(DriverError::unsupported("Operation not supported"));
        }
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(ZERO_CHUNK - at % ZERO_CHUNK);
            self.write_at(at, &vec![0u8; n as usize])?;
            at += n;
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DriverError> {
        // As QEMU's crypto driver: everything is data of this layer, with no
        // host offset to show (the bytes there are ciphertext).
        let len = len.min(self.size().saturating_sub(offset));
        if len == 0 {
            return Ok(Vec::new());
        }
        Ok(vec![Extent {
            offset,
            length: len,
            flags: extent_flags::DATA | extent_flags::ALLOCATED,
            store: 0,
            host_offset: 0,
        }])
    }

    fn flush(&self) -> Result<(), DriverError> {
        self.store.flush().into_result()
    }

    fn info(&self) -> Result<ImageInfo, DriverError> {
        let header = self.header.lock().unwrap_or_else(|e| e.into_inner());
        Ok(ImageInfo {
            dirty_flag: Some(false),
            encrypted: Some(true),
            format_specific: Some(json!({
                "type": "luks",
                "data": header.info(self.detached),
            })),
            extra_children: self
                .header_file
                .iter()
                .map(|h| ChildFile {
                    name: "header".into(),
                    filename: h.name().into(),
                })
                .collect(),
            ..ImageInfo::default()
        })
    }

    fn metadata(&self, request: MetadataRequest) -> Result<Value, DriverError> {
        match request {
            MetadataRequest::Amend { options, force } => {
                self.amend(&options, force)?;
                Ok(json!({}))
            }
            _ => Err(DriverError::unsupported(
                "Operation not supported by this image format",
            )),
        }
    }

    fn store_name(&self, _index: u32) -> String {
        self.store.name().into()
    }

    fn resize(&self, new_size: u64, prealloc: Prealloc, _shrink: bool) -> Result<(), DriverError> {
        self.check_writable()?;
        let len = self
            .payload
            .checked_add(new_size)
            .ok_or_else(|| DriverError::invalid_argument("The image size is too large"))?;
        self.store.set_len(len, prealloc).into_result()?;
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }
}
