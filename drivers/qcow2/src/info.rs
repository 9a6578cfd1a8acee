//! What `info` shows of a qcow2 image: the generic facts and qemu's
//! `format-specific` object, in qemu's key order.

use crate::error::Result;
use crate::image::Qcow2Image;
use qimg_driver_api::schema::{BitmapSummary, ImageInfo};
use serde_json::{json, Map, Value};

impl Qcow2Image {
    /// The facts `info` prints.
    pub fn info(&self) -> Result<ImageInfo> {
        let meta = self.lock();
        let h = meta.header.clone();
        let snapshots: Vec<_> = meta.snapshots.iter().map(|s| s.info()).collect();
        let bitmaps: Vec<_> = meta.bitmaps.iter().filter(|b| b.on_disk).cloned().collect();
        drop(meta);
        let mut data = Map::new();
        if h.version >= 3 {
            data.insert("compat".into(), json!("1.1"));
        } else {
            data.insert("compat".into(), json!("0.10"));
        }
        data.insert("compression-type".into(), json!(self.method.name()));
        if h.version >= 3 {
            data.insert("lazy-refcounts".into(), json!(h.lazy_refcounts()));
            if !bitmaps.is_empty() {
                let list: Vec<Value> = bitmaps.iter().map(|b| b.info()).collect();
                data.insert("bitmaps".into(), Value::Array(list));
            }
        }
        data.insert("refcount-bits".into(), json!(1u32 << h.refcount_order));
        if h.version >= 3 {
            if let Some(name) = &h.ext.data_file {
                data.insert("data-file".into(), json!(name));
            }
        }
        match h.crypt_method {
            1 => {
                data.insert("encrypt".into(), json!({"format": "aes"}));
            }
            2 => {
                if let Some((offset, len)) = h.ext.crypto {
                    let bytes = len.min(qimg_crypt::header::HEADER_BYTES as u64);
                    let mut head = vec![0u8; bytes as usize];
                    self.io.read(offset, &mut head)?;
                    if let Ok(luks) = qimg_crypt::LuksHeader::parse(&head) {
                        data.insert("encrypt".into(), encrypt_info(&luks));
                    }
                }
            }
            _ => {}
        }
        if h.version >= 3 {
            // After `encrypt`, as qemu orders them.
            if h.has_data_file() {
                data.insert("data-file-raw".into(), json!(h.data_file_raw()));
            }
            data.insert("corrupt".into(), json!(h.corrupt()));
            data.insert("extended-l2".into(), json!(h.extended_l2()));
        }
        Ok(ImageInfo {
            cluster_size: Some(h.cluster_size()),
            dirty_flag: Some(h.dirty()),
            encrypted: Some(h.crypt_method != 0),
            backing_filename: h.backing_file.clone(),
            // A format without a backing file is not shown (qemu-img).
            backing_format: h
                .ext
                .backing_format
                .clone()
                .filter(|_| h.backing_file.is_some()),
            format_specific: Some(json!({"type": "qcow2", "data": Value::Object(data)})),
            snapshots,
            // Only version 3 images can hold persistent bitmaps (qcow2.txt,
            // "Bitmaps extension").
            bitmaps: (h.version >= 3).then(|| {
                bitmaps
                    .iter()
                    .map(|b| BitmapSummary {
                        name: b.name_text(),
                        granularity: b.granularity(),
                        enabled: b.enabled,
                        inconsistent: b.inconsistent,
                    })
                    .collect()
            }),
            ..ImageInfo::default()
        })
    }
}

/// qemu's `encrypt` object for a LUKS header: the luks driver's
/// description with `"format": "luks"` before `cipher-mode`, where
/// qemu-img prints it.
fn encrypt_info(luks: &qimg_crypt::LuksHeader) -> Value {
    let fields = match luks.info(false) {
        Value::Object(fields) => fields,
        other => return other,
    };
    let mut out = Map::new();
    for (key, value) in fields {
        if key == "cipher-mode" {
            out.insert("format".into(), json!("luks"));
        }
        out.insert(key, value);
    }
    Value::Object(out)
}
