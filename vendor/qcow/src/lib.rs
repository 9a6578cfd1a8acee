//! qimg driver for QEMU's original qcow format (version 1), read and
//! write, built as a vendor builds a qimg driver: against qimg-driver-api
//! alone (see templates/driver), loaded from its own drop-in manifest.
//!
//! The header is described in [`header`], the tables in [`tables`], guest
//! I/O in [`image`]; [`create`] writes new images as qemu-img does,
//! [`crypt`] is the legacy AES encryption and [`compress`] the deflate of
//! compressed clusters.

#![warn(missing_docs)]

pub mod compress;
pub mod create;
pub mod crypt;
pub mod header;
pub mod image;
pub mod tables;

use header::{Header, HEADER_SIZE};
use image::{Geometry, QcowImage};
use qimg_driver_api::schema::{CreateOption, CreateRequest};
use qimg_driver_api::{caps, open_flags};
use qimg_driver_api::{
    ByteStoreBox, DriverError, DriverImpl, HostExt, HostServicesBox, ImageImpl, StoreExt,
};
use tables::Tables;

qimg_driver_api::export_drivers!(QcowDriver);

/// The format's name, as `-f` spells it.
pub const FORMAT: &str = "qcow";

/// The qcow format driver.
pub struct QcowDriver;

impl DriverImpl for QcowDriver {
    fn name(&self) -> &str {
        FORMAT
    }

    fn description(&self) -> &str {
        "QEMU's original copy-on-write format (qcow version 1)"
    }

    fn capabilities(&self) -> u64 {
        // No RESIZE or MEASURE: qemu's qcow driver has neither, and the
        // host refuses both in qemu-img's words.
        caps::CREATE | caps::WRITE | caps::BACKING | caps::COMPRESSED_WRITES | caps::ZERO_INIT
    }

    fn probe(&self, head: &[u8], _filename: &str) -> i32 {
        if header::is_qcow(head) {
            100
        } else {
            0
        }
    }

    fn create_options(&self) -> Vec<CreateOption> {
        create::options()
    }

    fn create(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        request: CreateRequest,
    ) -> Result<(), DriverError> {
        create::create(&store, &host, &request)
    }

    fn open(
        &self,
        store: ByteStoreBox,
        host: HostServicesBox,
        flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        // Both options are claimed whatever the image: qemu ignores a
        // secret given for an image without encryption.
        let key_secret = host.option("encrypt.key-secret");
        let format = host.option("encrypt.format");
        // A short file reads as if padded with zeros, as in qemu-img.
        let mut head = [0u8; HEADER_SIZE];
        store.read_or_zero_at(0, &mut head)?;
        let h = Header::parse(&head)?;
        h.check_geometry()?;
        let encrypted = h.crypt_method == header::CRYPT_AES;
        let cipher = match (encrypted, format.as_deref()) {
            (true, Some(f)) if f != "aes" => {
                return Err(DriverError::invalid_argument(format!(
                    "Header reported 'aes' encryption format but options specify '{f}'"
                )))
            }
            (false, Some(f)) => {
                return Err(DriverError::invalid_argument(format!(
                    "No encryption in image header, but options specified format '{f}'"
                )))
            }
            // Describing the image (`info`) needs no key.
            (true, _) if flags & open_flags::NO_IO != 0 => None,
            (true, _) => {
                let id = key_secret.ok_or_else(|| {
                    DriverError::invalid_argument(
                        "Parameter 'encrypt.key-secret' is required for cipher",
                    )
                })?;
                let secret = host.secret_text(&id)?;
                Some(crypt::SectorCipher::new(secret.as_bytes()))
            }
            (false, None) => None,
        };
        let l1_entries = h.l1_entries()?;
        // An errno from reading the table is reported as qemu reports an
        // open that failed without a message of its own.
        let tables =
            Tables::load(&store, h.l1_table_offset, l1_entries, h.l2_bits).map_err(|e| {
                DriverError::from_errno(
                    e.errno,
                    format!("Could not open '{}': {}", store.display_name(), e.message),
                )
            })?;
        let name_len = h.backing_name_len()?;
        let header_end = name_len.map_or(HEADER_SIZE as u64, |len| {
            (h.backing_file_offset.saturating_add(len as u64)).max(HEADER_SIZE as u64)
        });
        let backing_name = match name_len {
            Some(len) => {
                let mut name = vec![0u8; len];
                store.read_or_zero_at(h.backing_file_offset, &mut name)?;
                // A C string: it ends at its first NUL.
                let end = name.iter().position(|&b| b == 0).unwrap_or(len);
                Some(String::from_utf8_lossy(&name[..end]).into_owned()).filter(|n| !n.is_empty())
            }
            None => None,
        };
        let geometry = Geometry {
            size: h.size - h.size % crypt::SECTOR,
            cluster_bits: h.cluster_bits,
            l2_bits: h.l2_bits,
        };
        let mut image =
            QcowImage::new(store, geometry, tables, backing_name, encrypted, header_end);
        image.cipher = cipher;
        if flags & open_flags::NO_BACKING == 0 {
            if let Some(name) = &image.backing_name {
                image.backing = Some(host.backing(name, None)?);
            }
        }
        Ok(Box::new(image))
    }
}
