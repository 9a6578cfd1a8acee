//! What an image name means: a plain path, an `--image-opts` option string
//! (`driver=raw,file.filename=x`) or a `json:{...}` pseudo-filename.

use super::json;
use crate::cli::parse_opts;
use crate::store::null::DEFAULT_SIZE;
use crate::store::CacheMode;
use qimg_driver_api::size::{option_message, parse_size};
use serde_json::Value;

/// The protocol node under an image: where its bytes live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// A local file, at [`ImageSpec::path`].
    #[default]
    File,
    /// qemu's `null-co` device: `size` bytes that read as zeros.
    Null {
        /// Its size in bytes.
        size: u64,
        /// qemu's `read-zeroes` option (block status says "zero").
        read_zeroes: bool,
    },
    /// A store a protocol driver plugin opens (`nbd`, `http`): named by a
    /// URI ([`ImageSpec::path`]) or by its options
    /// ([`ImageSpec::protocol_options`]).
    Remote {
        /// The protocol driver's name.
        driver: String,
    },
}

impl Protocol {
    /// This protocol as a null device, with `size` and `read_zeroes`
    /// replaced where given (and qemu's defaults where never given).
    fn with_null(&self, size: Option<u64>, read_zeroes: Option<bool>) -> Protocol {
        let (old_size, old_zeroes) = match self {
            Protocol::Null { size, read_zeroes } => (*size, *read_zeroes),
            Protocol::File | Protocol::Remote { .. } => (DEFAULT_SIZE, false),
        };
        Protocol::Null {
            size: size.unwrap_or(old_size),
            read_zeroes: read_zeroes.unwrap_or(old_zeroes),
        }
    }
}

/// An image named on the command line, resolved into its parts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageSpec {
    /// Path of the file holding the image.
    pub path: String,
    /// Format driver, if named.
    pub format: Option<String>,
    /// `file.locking=off` turns image locking off.
    pub locking: bool,
    /// Options for the format driver (`encrypt.key-secret=...`), in the
    /// order given.
    pub options: Vec<(String, String)>,
    /// The format options a `json:` name gave as numbers or booleans, as
    /// given: the names qemu prints keep their types.
    pub typed_options: Vec<(String, Value)>,
    /// `cache.direct=on|off` (O_DIRECT), if given.
    pub cache_direct: Option<bool>,
    /// `cache.no-flush=on|off`, if given.
    pub cache_no_flush: Option<bool>,
    /// The protocol node the image's bytes live on.
    pub protocol: Protocol,
    /// The protocol node's options that name it (`size` of a null device),
    /// with their values as given, for the names qemu prints.
    pub protocol_options: Vec<(String, Value)>,
    /// The protocol node is the image itself, without a format on top
    /// (`driver=file`, `driver=null-co`).
    pub bare: bool,
    /// `read-only=on` on a node: the image may not be opened for writing.
    pub read_only: Option<bool>,
    /// `force-share=on` on a node: opened with every permission shared.
    pub force_share: bool,
    /// `force-share=off` among the image's own options (which `-U`
    /// contradicts).
    pub force_share_off: bool,
    /// `"backing": null`: the image is opened without its backing file
    /// (unallocated areas read as zeros).
    pub no_backing: bool,
    /// `"backing": "NAME"`: a node of a running QEMU, which qimg has not.
    pub backing_node: Option<String>,
}

impl ImageSpec {
    /// Sets `cache.direct` or `cache.no-flush`.
    fn set_cache(&mut self, key: &str, value: &Value) -> Result<(), String> {
        let on = Some(bool_of(key, value)?);
        if key.ends_with("direct") {
            self.cache_direct = on;
        } else {
            self.cache_no_flush = on;
        }
        Ok(())
    }

    /// Makes the protocol node the image itself when the format named
    /// (`-f file`, `-f null-co`) is a protocol; qemu's refusal of a null
    /// device under any other name.
    pub fn with_format(mut self, format: Option<&str>) -> Result<ImageSpec, String> {
        match format {
            Some("null-co") if self.protocol == Protocol::File => Err(format!(
                "The only allowed filename for this driver is '{NULL_PREFIX}//'"
            )),
            Some(f) if is_protocol(f) => {
                self.bare = true;
                Ok(self)
            }
            _ => Ok(self),
        }
    }

    /// The name qemu gives the protocol node: the file's path, or
    /// `null-co://` for a null device unless options describe it, in which
    /// case a `json:` object of them.
    pub fn protocol_name(&self) -> String {
        match self.protocol {
            Protocol::File => self.path.clone(),
            Protocol::Remote { .. } if self.protocol_options.is_empty() => self.path.clone(),
            Protocol::Remote { .. } => format!("json:{}", self.protocol_object()),
            Protocol::Null { .. } if self.protocol_options.is_empty() => {
                format!("{NULL_PREFIX}//")
            }
            Protocol::Null { .. } => format!("json:{}", self.protocol_object()),
        }
    }

    /// The protocol node as a JSON object in qemu's key order.
    fn protocol_object(&self) -> String {
        let driver = match &self.protocol {
            Protocol::File => return file_node(&self.path),
            Protocol::Null { .. } => "null-co",
            Protocol::Remote { driver } => driver,
        };
        let mut entries: Vec<(String, String)> = self
            .protocol_options
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        entries.push(("driver".into(), Value::from(driver).to_string()));
        json_object(entries)
    }

    /// A remote protocol node's options as the nested JSON object its
    /// driver takes (`server.host=h` is `{"server": {"host": "h"}}`); none
    /// for a node named by a URI.
    pub fn remote_options(&self) -> Option<Value> {
        if self.protocol_options.is_empty() {
            return None;
        }
        let mut root = serde_json::Map::new();
        for (key, value) in &self.protocol_options {
            let mut node = &mut root;
            let mut parts = key.split('.').peekable();
            while let Some(part) = parts.next() {
                if parts.peek().is_none() {
                    node.insert(part.to_string(), value.clone());
                    break;
                }
                let child = node
                    .entry(part.to_string())
                    .or_insert_with(|| Value::Object(serde_json::Map::new()));
                if !child.is_object() {
                    *child = Value::Object(serde_json::Map::new());
                }
                let Value::Object(map) = child else {
                    unreachable!("just made an object")
                };
                node = map;
            }
        }
        Some(Value::Object(root))
    }

    /// The cache mode once `cache.direct` and `cache.no-flush` are applied
    /// to `base` (the command's `-t`/`-T` mode): direct I/O is `none`, no
    /// flushing is `unsafe`. Both at once have no mode of their own here:
    /// they give `none`, which flushes (more durable than asked).
    pub fn cache(&self, base: CacheMode) -> CacheMode {
        if self.cache_direct.is_none() && self.cache_no_flush.is_none() {
            return base;
        }
        let direct = self
            .cache_direct
            .unwrap_or(matches!(base, CacheMode::None | CacheMode::DirectSync));
        let no_flush = self.cache_no_flush.unwrap_or(base == CacheMode::Unsafe);
        match (direct, no_flush) {
            (true, _) => CacheMode::None,
            (false, true) => CacheMode::Unsafe,
            (false, false) => CacheMode::Writeback,
        }
    }

    /// The name qemu gives an image of format `format` opened with
    /// options: a `json:` pseudo-filename of the format's options, its
    /// driver and its protocol node, in the order qemu's option dictionary
    /// iterates them ([`qdict_bucket`]); a child node's file name
    /// (`header.filename`) becomes a nested file object. The protocol
    /// node's own name when nothing else describes the image. Options that
    /// only tune how the image is accessed ([`WEAK_OPTIONS`]) do not count.
    pub fn display_name(&self, format: &str) -> String {
        let strong: Vec<&(String, String)> =
            self.options.iter().filter(|(k, _)| !is_weak(k)).collect();
        if self.bare || (strong.is_empty() && self.protocol_options.is_empty()) {
            return self.protocol_name();
        }
        let mut entries: Vec<(String, String)> = strong
            .iter()
            .map(|(k, v)| match k.strip_suffix(".filename") {
                Some(child) if CHILD_NODES.contains(&child) => (child.to_string(), file_node(v)),
                _ => {
                    let typed = self.typed_options.iter().find(|(t, _)| t == k);
                    let value = typed.map_or_else(|| Value::from(v.as_str()), |(_, t)| t.clone());
                    (k.clone(), value.to_string())
                }
            })
            .collect();
        entries.push(("driver".into(), Value::from(format).to_string()));
        entries.push(("file".into(), self.protocol_object()));
        format!("json:{}", json_object(entries))
    }
}

/// A file node as qemu names it inside a `json:` object.
fn file_node(name: &str) -> String {
    format!(
        "{{\"driver\": \"file\", \"filename\": {}}}",
        Value::from(name)
    )
}

/// A JSON object of keys and their values (already JSON), in the order
/// qemu's option dictionary lists them.
fn json_object(mut entries: Vec<(String, String)>) -> String {
    entries.sort_by_key(|(k, _)| qdict_bucket(k));
    let parts: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{}: {v}", Value::from(k.as_str())))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// The name qemu gives an image of `format` over a protocol node named
/// `node`: the node's own name, or when that is a `json:` object (a node
/// with options that change what it reads), that object as the image's
/// `file` in a `json:` name of its own.
pub fn name_over_node(format: &str, node: &str) -> String {
    match node.strip_prefix("json:") {
        Some(object) => format!(
            "json:{}",
            json_object(vec![
                ("driver".into(), Value::from(format).to_string()),
                ("file".into(), object.to_string()),
            ])
        ),
        None => node.to_string(),
    }
}

/// Child nodes other than `file` that an image's options may name by file
/// name (`header.filename=...`: a luks image's detached header).
const CHILD_NODES: [&str; 1] = ["header"];

/// The bucket of qemu's option dictionary (QDict: 512 buckets, keys hashed
/// with the tdb hash) that `key` falls in: qemu lists a dictionary's keys
/// bucket by bucket, which is the order of its `json:` names.
fn qdict_bucket(key: &str) -> u32 {
    let mut hash = 0x238f_13afu32.wrapping_mul(key.len() as u32);
    for (i, byte) in key.bytes().enumerate() {
        hash = hash.wrapping_add(u32::from(byte) << (i * 5 % 24));
    }
    1_103_515_243u32.wrapping_mul(hash).wrapping_add(12345) % 512
}

/// Format options that QEMU does not count as part of an image's identity
/// (its drivers' runtime options, not "strong" ones): given alone, the
/// image keeps its plain name. QEMU's qcow2 driver's, and its external
/// data file's child options.
const WEAK_OPTIONS: [&str; 11] = [
    "cache-size",
    "l2-cache-size",
    "l2-cache-entry-size",
    "refcount-cache-size",
    "cache-clean-interval",
    "lazy-refcounts",
    "pass-discard-request",
    "pass-discard-snapshot",
    "pass-discard-other",
    "discard-no-unref",
    "overlap-check",
];

/// True for an option [`ImageSpec::display_name`] leaves out.
fn is_weak(key: &str) -> bool {
    WEAK_OPTIONS.contains(&key) || key.starts_with("data-file.")
}

/// A name an image records (backing file, extent), resolved as qemu does:
/// relative to the directory of `image`, unless it stands alone (see
/// [`stands_alone`]).
pub fn relative_to(image: &str, name: &str) -> String {
    if stands_alone(name) {
        return name.to_string();
    }
    match image.rfind('/') {
        Some(cut) => format!("{}{}", &image[..=cut], name),
        None => name.to_string(),
    }
}

/// True if `name` needs no directory to be found: an absolute path, a
/// `json:` object (whose paths are the process's own) or a network
/// store's URL.
pub fn stands_alone(name: &str) -> bool {
    name.starts_with('/') || name.starts_with("json:") || remote_scheme(name).is_some()
}

/// Why an image cannot be created at `target`: a read-only network store
/// (http, https), in qemu's words; `None` where creation may go on.
pub fn creation_refused(target: &str) -> Option<String> {
    remote_scheme(target)
        .filter(|p| matches!(*p, "http" | "https"))
        .map(|p| format!("Protocol driver '{p}' does not support image creation"))
}

/// qemu's words for a relative name recorded in an image on NBD: an
/// export has no directory for it to be relative to.
pub const NO_NBD_DIRECTORY: &str = "Cannot generate a base directory for NBD nodes";

/// True if `name`, recorded in `image`, cannot be resolved: `image` is on
/// an NBD export and `name` is relative ([`NO_NBD_DIRECTORY`]). Joined to
/// the export's URL it would name another socket or export (qemu refuses).
pub fn has_no_directory(image: &str, name: &str) -> bool {
    !name.is_empty() && !stands_alone(name) && remote_scheme(image) == Some("nbd")
}

/// qemu-img's words for a backing file that is already in the chain above.
pub fn backing_loop(name: &str) -> String {
    format!("Backing file '{name}' creates an infinite loop.")
}

/// Resolves a name given as an operand. With `image_opts` the operand is an
/// option string; otherwise it is a path, `null-co://`, or a `json:` object.
pub fn resolve(name: &str, image_opts: bool) -> Result<ImageSpec, String> {
    if image_opts {
        // A key given twice takes its last value, as in qemu.
        let mut pairs: Vec<(String, Value)> = Vec::new();
        for (k, v) in parse_opts(name, Some("file"))? {
            pairs.retain(|(key, _)| *key != k);
            pairs.push((k, Value::String(v)));
        }
        return from_pairs(pairs);
    }
    if let Some(json) = name.strip_prefix("json:") {
        let value = serde_json::from_str::<json::Unique>(&single_quotes_to_json(json))
            .map_err(|e| format!("Could not parse the JSON options: {}", json::message(&e)))?
            .0;
        let mut pairs = Vec::new();
        if let Some(map) = value.as_object() {
            for (key, v) in map {
                flatten(key, v, &mut pairs);
            }
        }
        return from_pairs(pairs);
    }
    if let Some(driver) = remote_scheme(name) {
        return Ok(ImageSpec {
            path: name.to_string(),
            locking: true,
            protocol: Protocol::Remote {
                driver: driver.to_string(),
            },
            ..ImageSpec::default()
        });
    }
    if let Some(rest) = name.strip_prefix(NULL_PREFIX) {
        if rest != "//" {
            return Err(format!(
                "The only allowed filename for this driver is '{NULL_PREFIX}//'"
            ));
        }
        return Ok(ImageSpec {
            path: name.to_string(),
            locking: true,
            protocol: Protocol::Null {
                size: DEFAULT_SIZE,
                read_zeroes: false,
            },
            ..ImageSpec::default()
        });
    }
    Ok(ImageSpec {
        path: local_path(name)?.to_string(),
        locking: true,
        ..ImageSpec::default()
    })
}

/// The local file a plain name names. qemu strips the file protocol's
/// prefix; any other text before a ':' that comes before every '/' names
/// a protocol, and one qimg does not provide is refused as qemu refuses it.
pub fn local_path(name: &str) -> Result<&str, String> {
    if let Some(path) = name.strip_prefix("file:") {
        return Ok(path);
    }
    match name.find(':') {
        Some(colon) if !name[..colon].contains('/') => {
            Err(format!("Unknown protocol '{}'", &name[..colon]))
        }
        _ => Ok(name),
    }
}

/// qemu's protocol lookup for a name an image is to be created at: a
/// local file or a remote store, or why not.
pub fn creatable(name: &str) -> Result<(), String> {
    if remote_scheme(name).is_some() {
        return Ok(());
    }
    if name.starts_with(NULL_PREFIX) {
        return Err("Protocol driver 'null-co' does not support image creation".into());
    }
    local_path(name).map(drop)
}

/// The prefix of the null device's one file name, `null-co://`.
const NULL_PREFIX: &str = "null-co:";

/// Filename prefixes of the protocols plugins provide, with the protocol
/// driver each selects (qemu's `nbd:`, `nbd+unix://`, `http://`...).
const REMOTE_SCHEMES: &[(&str, &str)] = &[
    ("nbd:", "nbd"),
    ("nbd+tcp:", "nbd"),
    ("nbd+unix:", "nbd"),
    ("http:", "http"),
    ("https:", "https"),
];

/// The protocol driver a filename's prefix selects, if it names one.
pub fn remote_scheme(name: &str) -> Option<&'static str> {
    REMOTE_SCHEMES
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, driver)| *driver)
}

/// Builds a spec from an image's options, as dotted keys (`file.filename`)
/// with their values: the format's options, and the protocol node's under
/// `file.` (or at the top when `driver` names the protocol itself).
fn from_pairs(pairs: Vec<(String, Value)>) -> Result<ImageSpec, String> {
    let mut spec = ImageSpec {
        locking: true,
        ..ImageSpec::default()
    };
    spec.format = pairs
        .iter()
        .find(|(k, _)| k == "driver")
        .map(|(_, v)| text_of(v));
    spec.bare = spec.format.as_deref().is_some_and(is_protocol);
    let mut node = Vec::new();
    let mut file_given = false;
    let mut reference = None;
    let mut top_discard = NodeDiscard::default();
    for (key, value) in pairs {
        if key == "driver" {
            continue;
        }
        if spec.bare {
            node.push((key, value));
            continue;
        }
        if key == "force-share" && !bool_of(&key, &value)? {
            spec.force_share_off = true;
        }
        if key == "file" {
            // `file=NODE` names a node of a running QEMU: there is none here.
            reference = Some(text_of(&value));
        } else if let Some(rest) = key.strip_prefix("file.") {
            file_given = true;
            node.push((rest.to_string(), value));
        } else if key == "backing" {
            // `backing.KEY` options reach the backing file when it opens;
            // a bare `backing` is null (none) or names a node.
            match &value {
                Value::Null => spec.no_backing = true,
                other => spec.backing_node = Some(text_of(other)),
            }
        } else if key == "cache.direct" || key == "cache.no-flush" {
            spec.set_cache(&key, &value)?;
        } else if !node_option(&mut spec, &mut top_discard, &key, &value)? {
            if value.is_number() || value.is_boolean() {
                spec.typed_options.push((key.clone(), value.clone()));
            }
            spec.options.push((key, text_of(&value)));
        }
    }
    // Without a driver the format is probed from the file node, which
    // must then name its file or its protocol.
    let named = node.iter().any(|(k, _)| k == "filename" || k == "driver");
    if spec.format.is_none() && reference.is_none() && !named {
        return Err("Must specify either driver or file".into());
    }
    if let Some(node) = reference {
        return Err(if file_given {
            "Cannot reference an existing block device with additional options or a new filename"
                .to_string()
        } else {
            format!("Cannot find device='{node}' nor node-name='{node}'")
        });
    }
    let protocol = match spec.format.as_deref() {
        Some(bare) if spec.bare => bare.to_string(),
        _ => node
            .iter()
            .find(|(k, _)| k == "driver")
            .map_or_else(|| "file".to_string(), |(_, v)| text_of(v)),
    };
    // qemu opens protocol nodes with discard=unmap unless told otherwise.
    let mut file_discard = NodeDiscard {
        unmap: true,
        ..NodeDiscard::default()
    };
    let mut aio = None;
    for (key, value) in node {
        if key == "driver" {
            continue;
        }
        if node_option(&mut spec, &mut file_discard, &key, &value)? {
            continue;
        }
        match (protocol.as_str(), key.as_str()) {
            ("file", "filename") => spec.path = text_of(&value),
            ("file", "locking") => {
                spec.locking = match text_of(&value).as_str() {
                    "on" | "auto" | "true" => true,
                    "off" | "false" => false,
                    other => return Err(format!("invalid parameter value: {other}")),
                }
            }
            // Accepted as qemu accepts them; qimg's I/O has no such knobs.
            ("file", "aio") => aio = Some(text_of(&value)),
            ("file", "aio-max-batch") => {
                parse_size(&text_of(&value), 1)
                    .map_err(|e| option_message(&key, &text_of(&value), e))?;
            }
            ("file", "drop-cache" | "x-check-cache-dropped") => {
                bool_of(&key, &value)?;
            }
            ("file", "pr-manager") => {
                return Err(format!(
                    "No persistent reservation manager with id '{}'",
                    text_of(&value)
                ))
            }
            ("file", "cache.direct" | "cache.no-flush") => spec.set_cache(&key, &value)?,
            ("null-co", "size") => {
                let text = text_of(&value);
                let size = parse_size(&text, 1).map_err(|e| option_message(&key, &text, e))?;
                spec.protocol = spec.protocol.with_null(Some(size), None);
                spec.protocol_options.push((key, value));
            }
            ("null-co", "read-zeroes") => {
                let on = bool_of(&key, &value)?;
                spec.protocol = spec.protocol.with_null(None, Some(on));
                spec.protocol_options.push((key, value));
            }
            // Accepted for scripts that pass it; reads are never delayed.
            ("null-co", "latency-ns") => {
                parse_size(&text_of(&value), 1)
                    .map_err(|e| option_message(&key, &text_of(&value), e))?;
            }
            ("file" | "null-co", _) => {
                return Err(format!(
                    "Block protocol '{protocol}' doesn't support the option '{key}'"
                ))
            }
            // A plugin's protocol: its driver checks the options.
            _ => spec.protocol_options.push((key, value)),
        }
    }
    top_discard.check()?;
    file_discard.check()?;
    match aio.as_deref() {
        None | Some("threads" | "io_uring") => {}
        Some("native") if spec.cache_direct == Some(true) => {}
        Some("native") => return Err(
            "aio=native was specified, but it requires cache.direct=on, which was not specified."
                .into(),
        ),
        Some(other) => return Err(format!("invalid parameter value: {other}")),
    }
    match protocol.as_str() {
        "null-co" => {
            spec.protocol = spec.protocol.with_null(None, None);
            spec.path = spec.protocol_name();
        }
        "file" if spec.path.is_empty() => return Err(missing_file(file_given)),
        "file" => {}
        other => {
            spec.protocol = Protocol::Remote {
                driver: other.to_string(),
            };
            spec.path = spec.protocol_name();
        }
    }
    Ok(spec)
}

/// True for the protocols qimg can open as an image by themselves
/// (`driver=file`, `driver=null-co`, and the plugins' `driver=nbd`...).
pub fn is_protocol(driver: &str) -> bool {
    matches!(driver, "file" | "null-co") || REMOTE_SCHEMES.iter().any(|(_, d)| *d == driver)
}

/// A node's `discard` and `detect-zeroes` options, which qemu checks
/// against each other.
#[derive(Default)]
struct NodeDiscard {
    unmap: bool,
    detect_unmap: bool,
}

impl NodeDiscard {
    /// qemu's refusal of `detect-zeroes=unmap` without `discard=unmap`.
    fn check(&self) -> Result<(), String> {
        if self.detect_unmap && !self.unmap {
            return Err("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap".into());
        }
        Ok(())
    }
}

/// Takes the options every node of qemu's has (`read-only`, `node-name`,
/// `discard`...): checked as qemu checks them, and only `read-only` and
/// `force-share` change how qimg opens the image. False for any other key.
fn node_option(
    spec: &mut ImageSpec,
    discard: &mut NodeDiscard,
    key: &str,
    value: &Value,
) -> Result<bool, String> {
    match key {
        "read-only" => {
            let on = bool_of(key, value)?;
            spec.read_only = Some(spec.read_only.unwrap_or(false) || on);
        }
        "auto-read-only" => {
            bool_of(key, value)?;
        }
        "force-share" => spec.force_share |= bool_of(key, value)?,
        "node-name" => {
            let name = text_of(value);
            let mut chars = name.chars();
            let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
            if !well_formed {
                return Err(format!("Invalid node-name: '{name}'"));
            }
        }
        "discard" => match text_of(value).as_str() {
            "ignore" | "off" => discard.unmap = false,
            "unmap" | "on" => discard.unmap = true,
            _ => return Err("Invalid discard option".into()),
        },
        "detect-zeroes" => match text_of(value).as_str() {
            "off" | "on" => {}
            "unmap" => discard.detect_unmap = true,
            other => return Err(format!("invalid parameter value: {other}")),
        },
        _ => return Ok(false),
    }
    Ok(true)
}

/// An option's value as text: strings as they are, other JSON as JSON.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A boolean option given as a JSON boolean or as qemu's words.
fn bool_of(key: &str, value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        other => on_off(key, &text_of(other)),
    }
}

/// qemu's complaint about an image name without a file: none of its
/// options name the file node, or the file node has no file name.
fn missing_file(file_node_given: bool) -> String {
    if file_node_given {
        "The 'file' block driver requires a file name".to_string()
    } else {
        "A block device must be specified for \"file\"".to_string()
    }
}

/// A boolean option's value as QEMU reads it.
fn on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

/// QEMU's JSON parser also takes strings in single quotes (`{'driver':
/// 'raw'}`), which scripts use inside double-quoted shell words; this
/// rewrites them as standard JSON strings.
fn single_quotes_to_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                while let Some(d) = chars.next() {
                    out.push(d);
                    match d {
                        '\\' => out.extend(chars.next()),
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '\'' => {
                out.push('"');
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => match chars.next() {
                            Some('\'') => out.push('\''),
                            Some(e) => {
                                out.push('\\');
                                out.push(e);
                            }
                            None => out.push('\\'),
                        },
                        '"' => out.push_str("\\\""),
                        '\'' => break,
                        other => out.push(other),
                    }
                }
                out.push('"');
            }
            other => out.push(other),
        }
    }
    out
}

/// Adds a `json:` option to `out`, nested objects as dotted keys
/// (`{"encrypt": {"key-secret": "s"}}` is `encrypt.key-secret=s`).
fn flatten(key: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{key}.{k}"), v, out);
            }
        }
        other => out.push((key.to_string(), other.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_paths() {
        assert_eq!(resolve("a,b.raw", false).unwrap().path, "a,b.raw");
        assert_eq!(resolve("file:x.raw", false).unwrap().path, "x.raw");
    }

    #[test]
    fn json_takes_single_quoted_strings() {
        let spec = resolve(
            r#"json:{'driver': 'raw', 'file': {'filename': 'its \'q\' "d".img'}}"#,
            false,
        );
        let spec = spec.unwrap();
        assert_eq!(spec.format.as_deref(), Some("raw"));
        assert_eq!(spec.path, r#"its 'q' "d".img"#);
        assert_eq!(
            single_quotes_to_json(r#"{"a": "x'y", 'b': 'z"w'}"#),
            r#"{"a": "x'y", "b": "z\"w"}"#
        );
    }

    #[test]
    fn image_opts() {
        let s = resolve("driver=raw,file.filename=x.img,file.locking=off", true).unwrap();
        assert_eq!(
            (s.path.as_str(), s.format.as_deref(), s.locking),
            ("x.img", Some("raw"), false)
        );
        assert!(resolve("driver=raw", true).is_err());
        assert!(resolve("file.bogus=1,file.filename=x", true).is_err());
        let s = resolve("driver=qcow2,file.filename=a,encrypt.key-secret=s0", true).unwrap();
        assert_eq!(s.options, [("encrypt.key-secret".into(), "s0".into())]);
        assert_eq!(
            s.display_name("qcow2"),
            r#"json:{"encrypt.key-secret": "s0", "driver": "qcow2", "file": {"driver": "file", "filename": "a"}}"#
        );
        // As qemu-img 10.0.2 names them: the dictionary's order, not ours.
        let s = resolve(
            "driver=luks,file.filename=d.img,header.filename=h.img,key-secret=s",
            true,
        )
        .unwrap();
        assert_eq!(
            s.display_name("luks"),
            r#"json:{"header": {"driver": "file", "filename": "h.img"}, "driver": "luks", "file": {"driver": "file", "filename": "d.img"}, "key-secret": "s"}"#
        );
    }

    #[test]
    fn null_devices() {
        let s = resolve("null-co://", false).unwrap();
        assert_eq!(
            s.protocol,
            Protocol::Null {
                size: DEFAULT_SIZE,
                read_zeroes: false
            }
        );
        assert_eq!(s.display_name("raw"), "null-co://");
        assert!(resolve("null-co://x", false).is_err());
        let s = resolve("driver=raw,file.driver=null-co,file.size=4k", true).unwrap();
        assert_eq!(
            (s.bare, s.protocol.clone()),
            (
                false,
                Protocol::Null {
                    size: 4096,
                    read_zeroes: false
                }
            )
        );
        assert_eq!(
            s.display_name("raw"),
            r#"json:{"driver": "raw", "file": {"driver": "null-co", "size": "4k"}}"#
        );
        let s = resolve(r#"json:{"driver":"null-co","read-zeroes":true}"#, false).unwrap();
        assert!(s.bare);
        assert_eq!(
            s.display_name("null-co"),
            r#"json:{"read-zeroes": true, "driver": "null-co"}"#
        );
        assert!(resolve("driver=null-co,size=-1", true).is_err());
        assert!(resolve("driver=null-co,read-zeroes=maybe", true).is_err());
    }

    #[test]
    fn remote_nodes() {
        let s = resolve("nbd://h:1/x", false).unwrap();
        assert_eq!(
            s.protocol,
            Protocol::Remote {
                driver: "nbd".into()
            }
        );
        assert_eq!(s.path, "nbd://h:1/x");
        assert_eq!(s.remote_options(), None);
        let s = resolve("nbd+unix:///x?socket=/s", false).unwrap();
        assert_eq!(
            s.protocol,
            Protocol::Remote {
                driver: "nbd".into()
            }
        );
        let s = resolve("https://h/a.qcow2", false).unwrap();
        assert_eq!(
            s.protocol,
            Protocol::Remote {
                driver: "https".into()
            }
        );
        let opts =
            "driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=/s,file.export=x";
        let s = resolve(opts, true).unwrap();
        assert_eq!(
            s.protocol,
            Protocol::Remote {
                driver: "nbd".into()
            }
        );
        assert_eq!(
            s.remote_options().unwrap().to_string(),
            r#"{"server":{"type":"unix","path":"/s"},"export":"x"}"#
        );
        let s = resolve(r#"json:{"driver":"nbd","host":"h","port":1}"#, false).unwrap();
        assert!(s.bare);
        assert_eq!(
            s.remote_options().unwrap().to_string(),
            r#"{"host":"h","port":1}"#
        );
        // A colon after a slash is part of a path; before every slash it
        // names a protocol, one qimg does not know here.
        assert_eq!(
            resolve("d/a:nbd:b", false).unwrap().protocol,
            Protocol::File
        );
        assert_eq!(
            resolve("a:nbd:b", false).err().as_deref(),
            Some("Unknown protocol 'a'")
        );
        assert_eq!(resolve("file:a:b", false).unwrap().path, "a:b");
    }

    #[test]
    fn file_nodes_by_themselves() {
        let s = resolve("driver=file,filename=a.img,locking=off", true).unwrap();
        assert_eq!((s.bare, s.locking, s.path.as_str()), (true, false, "a.img"));
        assert_eq!(s.display_name("file"), "a.img");
        let s = resolve("a.img", false).unwrap().with_format(Some("file"));
        assert!(s.unwrap().bare);
        assert!(resolve("a.img", false)
            .unwrap()
            .with_format(Some("null-co"))
            .is_err());
        assert!(resolve("file=node0", true).is_err());
    }

    #[test]
    fn json_names() {
        let s = resolve(
            r#"json:{"driver":"raw","file":{"driver":"file","filename":"y.img"}}"#,
            false,
        )
        .unwrap();
        assert_eq!(
            (s.path.as_str(), s.format.as_deref()),
            ("y.img", Some("raw"))
        );
    }
}
