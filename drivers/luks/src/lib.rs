//! The luks format: a LUKS1 volume (cryptsetup's on-disk format, as QEMU
//! writes it) whose payload, after the header and key-slot areas, holds the
//! guest's bytes encrypted sector by sector.
//!
//! The format logic lives in `qimg-crypt`, shared with qcow2's LUKS
//! encryption; this crate maps it onto the driver interface: the
//! passphrase comes from the secret the `key-secret` option names, `info`
//! describes the header without it, and reads and writes encrypt outside
//! any lock, so many threads work at once.

mod create;
mod error;
mod image;

use create::create_options;
use error::driver_error;
use image::LuksImage;
use qimg_crypt::header::HEADER_BYTES;
use qimg_crypt::{LuksHeader, LuksOptions};
use qimg_driver_api::schema::{CreateOption, CreateRequest, MeasureRequest, MeasureResult};
use qimg_driver_api::{
    caps, ByteStoreBox, DriverError, DriverImpl, Extent, HostServicesBox, ImageImpl,
};

qimg_driver_api::export_drivers!(LuksDriver);

/// Bytes read from the start of the file to parse the header.
const HEAD: usize = HEADER_BYTES;

/// The luks format driver.
pub struct LuksDriver;

impl DriverImpl for LuksDriver {
    fn name(&self) -> &str {
        "luks"
    }
    fn description(&self) -> &str {
        "LUKS1 encrypted disk image"
    }
    fn capabilities(&self) -> u64 {
        // QEMU's crypto driver locks its file as raw does.
        caps::CREATE | caps::WRITE | caps::RESIZE | caps::MEASURE | caps::AMEND | caps::USER_LOCKS
    }
    fn probe(&self, head: &[u8], _filename: &str) -> i32 {
        // QEMU's crypto probe: the magic and version 1.
        if LuksHeader::probe(head) {
            100
        } else {
            0
        }
    }
    fn create_options(&self) -> Vec<CreateOption> {
        create_options()
    }
    fn amend_options(&self) -> Vec<CreateOption> {
        create::amend_options()
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
        Ok(Box::new(LuksImage::open(store, host, flags)?))
    }
    fn measure(
        &self,
        request: MeasureRequest,
        _allocated: &[Extent],
    ) -> Result<MeasureResult, DriverError> {
        // QEMU builds the header to measure it: it wants the secret (the
        // host checks that it exists) and usable algorithms.
        let options = LuksOptions::parse(|k| request.options.get(k).map(String::as_str), "")
            .map_err(driver_error)?;
        // A layout choice of `create` that QEMU's measure does not take.
        if request.options.contains_key("detached-header") {
            return Err(DriverError::invalid_argument(
                "Parameter 'detached-header' is unexpected",
            ));
        }
        if !request.options.contains_key("key-secret") {
            return Err(DriverError::invalid_argument(
                "Parameter 'key-secret' is required for cipher",
            ));
        }
        let spec = options.params().map_err(driver_error)?.spec;
        let size = request.size.next_multiple_of(qimg_crypt::SECTOR_SIZE);
        let total = qimg_crypt::volume::payload_offset(spec) + size;
        Ok(MeasureResult {
            required: total,
            fully_allocated: total,
            bitmaps: None,
        })
    }
}

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod tests {
    use super::*;
    use qimg_driver_api::open_flags;
    use qimg_driver_api::ErrorKind;
    use qimg_driver_util::memfile::MemFile;
    use std::collections::BTreeMap;
    use testutil::host;

    /// A 64 KiB image in memory, made with `options` (plus a key secret and
    /// a tiny iter-time).
    fn made(options: &[(&str, &str)]) -> MemFile {
        let file = MemFile::default();
        let mut opts: BTreeMap<String, String> = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        opts.insert("key-secret".into(), "sec0".into());
        opts.insert("iter-time".into(), "1".into());
        let request = CreateRequest {
            size: 65536,
            options: opts,
        };
        LuksDriver
            .create(file.store("mem"), host("pw", true), request)
            .unwrap();
        file
    }

    fn open(
        file: &MemFile,
        password: &str,
        keyed: bool,
        flags: u32,
    ) -> Result<Box<dyn ImageImpl>, DriverError> {
        LuksDriver.open(file.store("mem"), host(password, keyed), flags)
    }

    #[test]
    fn unaligned_writes_read_back() {
        for options in [
            &[][..],
            &[("cipher-mode", "cbc"), ("ivgen-alg", "essiv")][..],
        ] {
            let file = made(options);
            let image = open(&file, "pw", true, open_flags::WRITE).unwrap();
            assert_eq!(image.virtual_size(), 65536);
            let mut shadow = vec![0u8; 65536];
            image.write_at(0, &shadow).unwrap();
            let writes: [(u64, usize); 6] = [
                (0, 1),
                (511, 2),
                (700, 100),
                (1000, 3000),
                (4096, 512),
                (65000, 536),
            ];
            for (i, (offset, len)) in writes.into_iter().enumerate() {
                let data = vec![i as u8 + 1; len];
                image.write_at(offset, &data).unwrap();
                shadow[offset as usize..offset as usize + len].copy_from_slice(&data);
            }
            let mut all = vec![0u8; 65536];
            image.read_at(0, &mut all).unwrap();
            assert!(all == shadow);
            let mut part = vec![0u8; 777];
            image.read_at(333, &mut part).unwrap();
            assert_eq!(part, shadow[333..1110]);
            // Past the end reads as zeros.
            let mut tail = vec![9u8; 1024];
            image.read_at(65536 - 512, &mut tail).unwrap();
            assert_eq!(tail[..512], shadow[65024..]);
            assert!(tail[512..].iter().all(|&b| b == 0));
            // The stored bytes are not the plaintext.
            let bytes = file.0.lock().unwrap().clone();
            let payload = &bytes[bytes.len() - 65536..];
            assert!(!payload.windows(3000).any(|w| w.iter().all(|&b| b == 4)));
        }
    }

    #[test]
    fn secrets_are_checked_before_any_read() {
        let file = made(&[]);
        let wrong = open(&file, "nope", true, 0).err().unwrap();
        assert_eq!(
            wrong.message.as_str(),
            "Invalid password, cannot unlock any keyslot"
        );
        let missing = open(&file, "pw", false, 0).err().unwrap();
        assert_eq!(
            missing.message.as_str(),
            "Parameter 'key-secret' is required for cipher"
        );
        assert_eq!(missing.kind, ErrorKind::INVALID_ARGUMENT);
        // Describing needs no key; reading through such a handle fails.
        let described = open(&file, "nope", false, open_flags::NO_IO).unwrap();
        assert!(described.info().unwrap().encrypted == Some(true));
        assert!(described.read_at(0, &mut [0u8; 512]).is_err());
    }

    #[test]
    fn resize_keeps_data() {
        let file = made(&[("cipher-alg", "aes-128")]);
        let image = open(&file, "pw", true, open_flags::WRITE).unwrap();
        image.write_at(0, &[7u8; 4096]).unwrap();
        image
            .resize(1 << 20, qimg_driver_api::Prealloc::OFF, false)
            .unwrap();
        assert_eq!(image.virtual_size(), 1 << 20);
        let reopened = open(&file, "pw", true, 0).unwrap();
        assert_eq!(reopened.virtual_size(), 1 << 20);
        let mut back = [0u8; 4096];
        reopened.read_at(0, &mut back).unwrap();
        assert_eq!(back, [7u8; 4096]);
    }

    #[test]
    fn probe_wants_the_magic_and_version_one() {
        let file = made(&[]);
        let head = file.0.lock().unwrap()[..512].to_vec();
        assert_eq!(LuksDriver.probe(&head, "x"), 100);
        let mut v2 = head.clone();
        v2[7] = 2;
        assert_eq!(LuksDriver.probe(&v2, "x"), 0);
        assert_eq!(LuksDriver.probe(b"LUK", "x"), 0);
    }
}
