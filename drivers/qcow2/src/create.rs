//! `create`: the option schema in qemu's order and the layout qemu-img writes
//! (header, refcount table, one refcount block, L1 table, then whatever
//! preallocation adds).

use crate::crypt::crypt_error;
use crate::error::{Error, Result};
use crate::header::{autoclear, compat, feature_table, incompat, Extensions, Header};
use crate::header::{MAX_BACKING_NAME, V2_HEADER_LEN, V3_HEADER_LEN};
use crate::image::{CryptOptions, Qcow2Image};
use crate::layout::Layout;
use qimg_crypt::{volume, LuksOptions};
use qimg_driver_api::abi_stable::std_types::RStr;
use qimg_driver_api::schema::{CreateOption, CreateRequest, OptionType};
use qimg_driver_api::{open_flags, ByteStoreBox, HostExt, HostServicesBox, Prealloc};
use qimg_driver_util::option_with_default as opt;
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// The options `create -o` accepts, in the order qemu declares them (the
/// order of the `Formatting` line), with qemu's help texts.
pub fn options() -> Vec<CreateOption> {
    use OptionType::{Bool, Number, Size, Str};
    vec![
        opt(
            "encryption",
            Bool,
            "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
            None,
        ),
        opt(
            "encrypt.format",
            Str,
            "Encrypt the image, format choices: 'aes', 'luks'",
            None,
        ),
        opt(
            "encrypt.key-secret",
            Str,
            "ID of secret providing qcow AES key or LUKS passphrase",
            None,
        ),
        opt(
            "encrypt.cipher-alg",
            Str,
            "Name of encryption cipher algorithm",
            None,
        ),
        opt(
            "encrypt.cipher-mode",
            Str,
            "Name of encryption cipher mode",
            None,
        ),
        opt(
            "encrypt.ivgen-alg",
            Str,
            "Name of IV generator algorithm",
            None,
        ),
        opt(
            "encrypt.ivgen-hash-alg",
            Str,
            "Name of IV generator hash algorithm",
            None,
        ),
        opt(
            "encrypt.hash-alg",
            Str,
            "Name of encryption hash algorithm",
            None,
        ),
        opt(
            "encrypt.iter-time",
            Number,
            "Time to spend in PBKDF in milliseconds",
            None,
        ),
        opt("cluster_size", Size, "qcow2 cluster size", Some("65536")),
        opt("extended_l2", Bool, "Extended L2 tables", Some("off")),
        opt(
            "preallocation",
            Str,
            "Preallocation mode (allowed values: off, metadata, falloc, full)",
            None,
        ),
        opt(
            "compression_type",
            Str,
            "Compression method used for image cluster compression",
            Some("zlib"),
        ),
        opt("size", Size, "Virtual disk size", None),
        opt(
            "compat",
            Str,
            "Compatibility level (v2 [0.10] or v3 [1.1])",
            None,
        ),
        opt("backing_file", Str, "File name of a base image", None),
        opt("backing_fmt", Str, "Image format of the base image", None),
        opt("data_file", Str, "File name of an external data file", None),
        opt(
            "data_file_raw",
            Bool,
            "The external data file must stay valid as a raw image",
            None,
        ),
        opt(
            "lazy_refcounts",
            Bool,
            "Postpone refcount updates",
            Some("off"),
        ),
        opt(
            "refcount_bits",
            Number,
            "Width of a reference count entry in bits",
            Some("16"),
        ),
    ]
}

/// Creation parameters, checked.
#[derive(Clone, Debug)]
pub struct Params {
    /// Guest size, rounded up to 512 bytes.
    pub size: u64,
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// log2 of the refcount width.
    pub refcount_order: u32,
    /// Extended L2 entries.
    pub extended_l2: bool,
    /// Lazy refcounts.
    pub lazy_refcounts: bool,
    /// zstd instead of zlib.
    pub zstd: bool,
    /// Preallocation mode.
    pub prealloc: Prealloc,
    /// Backing file name and format.
    pub backing: Option<(String, Option<String>)>,
    /// External data file name.
    pub data_file: Option<String>,
    /// The data file stays a valid raw image.
    pub data_file_raw: bool,
    /// The id of the secret the image is encrypted with (legacy AES unless
    /// `luks` is set).
    pub key_secret: Option<String>,
    /// LUKS encryption's options.
    pub luks: Option<LuksOptions>,
}

/// The `encrypt.*` options other than `encrypt.format` and
/// `encrypt.key-secret`: only LUKS has them.
const LUKS_ONLY: [&str; 6] = [
    "cipher-alg",
    "cipher-mode",
    "ivgen-alg",
    "ivgen-hash-alg",
    "hash-alg",
    "iter-time",
];

fn on(options: &BTreeMap<String, String>, name: &str) -> bool {
    options.get(name).is_some_and(|v| v == "on")
}

/// The `cluster_size` option (0 where it is no number: refused by the
/// caller as no power of two).
pub fn cluster_size_option(options: &BTreeMap<String, String>) -> u64 {
    options
        .get("cluster_size")
        .map(|v| v.parse().unwrap_or(0))
        .unwrap_or(65536)
}

/// The `refcount_bits` option, a power of two up to 64.
pub fn refcount_bits_option(options: &BTreeMap<String, String>) -> Result<u64> {
    let bits: u64 = options
        .get("refcount_bits")
        .map(|v| v.parse().unwrap_or(0))
        .unwrap_or(16);
    if !bits.is_power_of_two() || bits > 64 {
        return Err(Error::argument(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    Ok(bits)
}

/// Checks the options as qemu does, in its order and with its messages:
/// values that do not parse first, then the combinations, the cipher's
/// secret last.
pub fn params(size: u64, options: &BTreeMap<String, String>) -> Result<Params> {
    let encrypted = on(options, "encryption") || options.contains_key("encrypt.format");
    let version = match options.get("compat").map(String::as_str) {
        None | Some("1.1") | Some("v3") => 3,
        Some("0.10") | Some("v2") => 2,
        Some(other) => {
            return Err(Error::argument(format!(
                "Parameter 'version' does not accept value '{other}'"
            )))
        }
    };
    let luks = match options.get("encrypt.format").map(String::as_str) {
        Some("luks") => Some(
            LuksOptions::parse(
                |k| options.get(&format!("encrypt.{k}")).map(String::as_str),
                "encrypt.",
            )
            .map_err(crypt_error)?,
        ),
        format => {
            // Any other encrypt.* option needs a format (`encryption=on`
            // names aes): without one, qimg made a plain image.
            let implied = format.is_some() || on(options, "encryption");
            if !implied && options.keys().any(|k| k.starts_with("encrypt.")) {
                return Err(Error::argument("Parameter 'encrypt.format' is missing"));
            }
            if let Some(k) = LUKS_ONLY
                .iter()
                .find(|k| options.contains_key(&format!("encrypt.{k}")))
            {
                return Err(Error::argument(format!(
                    "Parameter 'encrypt.{k}' is unexpected"
                )));
            }
            match format {
                Some("aes") | None => None,
                Some(other) => {
                    return Err(Error::argument(format!(
                        "Parameter 'format' does not accept value '{other}'"
                    )))
                }
            }
        }
    };
    let prealloc = match options.get("preallocation") {
        Some(p) => Prealloc::parse(p).ok_or_else(|| {
            Error::argument(format!(
                "Parameter 'preallocation' does not accept value '{p}'"
            ))
        })?,
        None => Prealloc::OFF,
    };
    let zstd = match options.get("compression_type").map(String::as_str) {
        None | Some("zlib") => false,
        Some("zstd") => true,
        Some(other) => {
            return Err(Error::argument(format!(
                "Parameter 'compression-type' does not accept value '{other}'"
            )))
        }
    };
    let cluster_size = cluster_size_option(options);
    let extended_l2 = on(options, "extended_l2");
    if extended_l2 {
        if version < 3 {
            return Err(Error::argument("Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
        }
        if cluster_size < 16384 {
            return Err(Error::argument(
                "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
            ));
        }
    }
    if !cluster_size.is_power_of_two() || !(512..=2 << 20).contains(&cluster_size) {
        return Err(Error::argument(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    let cluster_bits = cluster_size.trailing_zeros();
    let backing_file = options.get("backing_file").cloned();
    let backing_fmt = options.get("backing_fmt").cloned();
    if backing_file.is_some() && prealloc != Prealloc::OFF && !extended_l2 {
        return Err(Error::argument(
            "Backing file and preallocation can only be used at the same time if extended_l2 is on",
        ));
    }
    if let Some(name) = backing_file.as_ref().filter(|n| n.len() > MAX_BACKING_NAME) {
        return Err(Error::Errno(
            22,
            format!(
                "Could not assign backing file '{name}' with format '{}': Invalid argument",
                backing_fmt.as_deref().unwrap_or("")
            ),
        ));
    }
    if backing_fmt.is_some() && backing_file.is_none() {
        return Err(Error::argument(
            "Backing format cannot be used without backing file",
        ));
    }
    let lazy_refcounts = on(options, "lazy_refcounts");
    if lazy_refcounts && version < 3 {
        return Err(Error::argument("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
    }
    let refcount_bits = refcount_bits_option(options)?;
    if version < 3 && refcount_bits != 16 {
        return Err(Error::argument("Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)"));
    }
    let data_file = options.get("data_file").cloned();
    if version < 3 && data_file.is_some() {
        return Err(Error::argument("External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
    }
    let data_file_raw = on(options, "data_file_raw");
    if data_file_raw && data_file.is_none() {
        return Err(Error::argument("data-file-raw requires data-file"));
    }
    if data_file_raw && backing_file.is_some() {
        return Err(Error::argument(
            "Backing file and data-file-raw cannot be used at the same time",
        ));
    }
    if zstd && version < 3 {
        return Err(Error::argument("Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
    }
    let key_secret = options.get("encrypt.key-secret").cloned();
    if encrypted && key_secret.is_none() {
        return Err(Error::argument(
            "Parameter 'encrypt.key-secret' is required for cipher",
        ));
    }
    let size = size.checked_next_multiple_of(512).ok_or_else(|| {
        Error::argument("The image size is too large (try using a larger cluster size)")
    })?;
    Ok(Params {
        size,
        version,
        cluster_bits,
        refcount_order: refcount_bits.trailing_zeros(),
        extended_l2,
        lazy_refcounts,
        zstd,
        prealloc,
        backing: backing_file.map(|f| (f, backing_fmt)),
        data_file,
        data_file_raw,
        key_secret: key_secret.filter(|_| encrypted),
        luks,
    })
}

impl Params {
    /// The geometry of the new image.
    pub fn layout(&self) -> Layout {
        Layout {
            cluster_bits: self.cluster_bits,
            extended: self.extended_l2,
            refcount_order: self.refcount_order,
            v3: self.version >= 3,
        }
    }

    /// The header of the new image, before its L1 table is placed.
    fn header(&self) -> Header {
        let cs = 1u64 << self.cluster_bits;
        let mut h = Header {
            version: self.version,
            cluster_bits: self.cluster_bits,
            refcount_table_offset: cs,
            refcount_table_clusters: 1,
            refcount_order: self.refcount_order,
            header_length: if self.version >= 3 {
                V3_HEADER_LEN
            } else {
                V2_HEADER_LEN
            },
            ..Header::default()
        };
        if self.version >= 3 {
            h.tail = vec![0; (V3_HEADER_LEN - 105) as usize];
            if cs > 4096 {
                h.ext.feature_table = Some(feature_table());
            }
        }
        if self.lazy_refcounts {
            h.compatible_features |= compat::LAZY_REFCOUNTS;
        }
        if self.extended_l2 {
            h.incompatible_features |= incompat::EXTENDED_L2;
        }
        if self.zstd {
            h.incompatible_features |= incompat::COMPRESSION_TYPE;
            h.compression_type = 1;
        }
        if let Some(d) = &self.data_file {
            h.incompatible_features |= incompat::DATA_FILE;
            h.ext.data_file = Some(d.clone());
        }
        if self.data_file_raw {
            h.autoclear_features |= autoclear::DATA_FILE_RAW;
        }
        // A LUKS header comes last, once the rest of the image is in place.
        if self.key_secret.is_some() && self.luks.is_none() {
            h.crypt_method = 1;
        }
        if let Some((file, fmt)) = &self.backing {
            h.backing_file = Some(file.clone());
            h.ext = Extensions {
                backing_format: fmt.clone(),
                ..h.ext
            };
        }
        h
    }
}

/// Writes a new image into the empty `store`.
pub fn create(store: ByteStoreBox, host: HostServicesBox, request: &CreateRequest) -> Result<()> {
    let p = params(request.size, &request.options)?;
    // The secret must exist, as qemu checks before writing anything; then
    // the LUKS volume is made (its PBKDF2 timing takes a while).
    let luks = match (&p.key_secret, &p.luks) {
        (Some(id), Some(options)) => {
            let password = Zeroizing::new(host.secret_text(id)?);
            let params = options.params().map_err(crypt_error)?;
            Some(volume::create(params, password.as_bytes()).map_err(crypt_error)?)
        }
        (Some(id), None) => {
            host.secret(RStr::from(id.as_str())).into_result()?;
            None
        }
        _ => None,
    };
    let layout = p.layout();
    let cs = layout.cluster_size();
    if let Some(name) = &p.data_file {
        let data = host
            .open_related(RStr::from(name.as_str()), true, true)
            .into_result()?;
        data.set_len(0, Prealloc::OFF).into_result()?;
        let mode = if p.prealloc == Prealloc::METADATA {
            Prealloc::OFF
        } else {
            p.prealloc
        };
        data.set_len(p.size, mode).into_result()?;
    }
    // Header, refcount table and one refcount block counting the first
    // three clusters; the L1 table follows in the first free cluster.
    let mut header = p.header();
    let l1_size = layout.l1_entries_for(p.size);
    if l1_size * 8 > 32 << 20 {
        return Err(Error::argument(
            "The image size is too large for file format 'qcow2' (try using a larger cluster size)",
        ));
    }
    let bytes = header.serialize()?;
    let io = crate::meta::Io {
        file: store,
        data: None,
    };
    io.write(0, &bytes)?;
    let mut reftable = vec![0u8; cs as usize];
    reftable[..8].copy_from_slice(&(2 * cs).to_be_bytes());
    io.write(cs, &reftable)?;
    let mut block = vec![0u8; cs as usize];
    for i in 0..3 {
        crate::meta::put_refcount(&mut block, layout.refcount_order, i, 1);
    }
    io.write(2 * cs, &block)?;
    let mut meta = crate::meta::Meta::new(header, layout, Vec::new(), vec![2 * cs]);
    // The cluster is rewritten whole once the L1 table is in place.
    meta.header_full = true;
    if l1_size > 0 {
        let l1_offset = meta.alloc_clusters(&io, layout.clusters_for(l1_size * 8))?;
        meta.header.l1_table_offset = l1_offset;
        meta.header.l1_size = l1_size as u32;
        io.write(l1_offset, &vec![0u8; (l1_size * 8) as usize])?;
    }
    meta.header.size = p.size;
    meta.header_dirty = true;
    meta.flush(&io)?;
    if p.prealloc == Prealloc::OFF && !p.data_file_raw && luks.is_none() {
        return Ok(());
    }
    // Preallocation goes through the image's own allocator, and the LUKS
    // header follows whatever it allocated.
    let flags = open_flags::WRITE | open_flags::NO_BACKING;
    let crypt = CryptOptions {
        key_secret: p.key_secret.clone().filter(|_| luks.is_none()),
        format: None,
        runtime: None,
    };
    let image = Qcow2Image::open_keyed(io.file, host, flags, &crypt)?;
    if p.prealloc != Prealloc::OFF || p.data_file_raw {
        let mode = if p.prealloc == Prealloc::OFF {
            Prealloc::METADATA
        } else {
            p.prealloc
        };
        image.preallocate(0, p.size, mode, None)?;
    }
    if let Some(created) = &luks {
        crate::crypt::set_up_luks(&image, created)?;
    }
    image.close()
}
