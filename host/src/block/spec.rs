//! What an image name means: a plain path, an `--image-opts` option string
//! (`driver=raw,file.filename=x`) or a `json:{...}` pseudo-filename.

use crate::cli::parse_opts;
use crate::store::CacheMode;
use serde_json::Value;

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
    /// `cache.direct=on|off` (O_DIRECT), if given.
    pub cache_direct: Option<bool>,
    /// `cache.no-flush=on|off`, if given.
    pub cache_no_flush: Option<bool>,
}

impl ImageSpec {
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

    /// The name qemu gives an image opened with format options: a `json:`
    /// pseudo-filename of the options, the driver and the file, in the
    /// order qemu's option dictionary iterates them ([`qdict_bucket`]); a
    /// child node's file name (`header.filename`) becomes a nested file
    /// object. The plain path without them. Options that only tune how the
    /// image is accessed ([`WEAK_OPTIONS`]) do not count.
    pub fn display_name(&self) -> String {
        let strong: Vec<&(String, String)> =
            self.options.iter().filter(|(k, _)| !is_weak(k)).collect();
        if strong.is_empty() {
            return self.path.clone();
        }
        let file_node = |name: &str| {
            format!(
                "{{\"driver\": \"file\", \"filename\": {}}}",
                Value::from(name)
            )
        };
        let mut entries: Vec<(String, String)> = strong
            .iter()
            .map(|(k, v)| match k.strip_suffix(".filename") {
                Some(child) if CHILD_NODES.contains(&child) => (child.to_string(), file_node(v)),
                _ => (k.clone(), Value::from(v.as_str()).to_string()),
            })
            .collect();
        if let Some(format) = &self.format {
            entries.push(("driver".into(), Value::from(format.as_str()).to_string()));
        }
        entries.push(("file".into(), file_node(&self.path)));
        entries.sort_by_key(|(k, _)| qdict_bucket(k));
        let parts: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{}: {v}", Value::from(k.as_str())))
            .collect();
        format!("json:{{{}}}", parts.join(", "))
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
/// relative to the directory of `image`, unless it is absolute or a `json:`
/// object (whose paths are the process's own).
pub fn relative_to(image: &str, name: &str) -> String {
    if name.starts_with('/') || name.starts_with("json:") {
        return name.to_string();
    }
    match image.rfind('/') {
        Some(cut) => format!("{}{}", &image[..=cut], name),
        None => name.to_string(),
    }
}

/// qemu-img's words for a backing file that is already in the chain above.
pub fn backing_loop(name: &str) -> String {
    format!("Backing file '{name}' creates an infinite loop.")
}

/// Resolves a name given as an operand. With `image_opts` the operand is an
/// option string; otherwise it is a path, or a `json:` object.
pub fn resolve(name: &str, image_opts: bool) -> Result<ImageSpec, String> {
    if image_opts {
        let mut spec = ImageSpec {
            locking: true,
            ..ImageSpec::default()
        };
        let mut has_file = false;
        for (key, value) in parse_opts(name, None)? {
            has_file |= key.starts_with("file.");
            match key.as_str() {
                "driver" => spec.format = Some(value),
                "file.filename" | "filename" => spec.path = value,
                "file.driver" if value == "file" => {}
                "file.locking" => spec.locking = value != "off" && value != "false",
                "cache.direct" | "file.cache.direct" => {
                    spec.cache_direct = Some(on_off(&key, &value)?)
                }
                "cache.no-flush" | "file.cache.no-flush" => {
                    spec.cache_no_flush = Some(on_off(&key, &value)?)
                }
                "file.driver" => return Err(format!("Unknown protocol '{value}'")),
                _ if key.starts_with("file.") => {
                    return Err(format!(
                        "Block protocol 'file' doesn't support the option '{}'",
                        &key["file.".len()..]
                    ))
                }
                _ => spec.options.push((key, value)),
            }
        }
        if spec.path.is_empty() {
            return Err(missing_file(has_file));
        }
        return Ok(spec);
    }
    if let Some(json) = name.strip_prefix("json:") {
        let value: Value = serde_json::from_str(&single_quotes_to_json(json))
            .map_err(|e| format!("Could not parse the JSON options: {e}"))?;
        let mut spec = ImageSpec {
            locking: true,
            ..ImageSpec::default()
        };
        spec.format = value
            .get("driver")
            .and_then(Value::as_str)
            .map(str::to_string);
        let file = value.get("file");
        spec.path = file
            .and_then(|f| f.get("filename").or(Some(f)))
            .and_then(Value::as_str)
            .or_else(|| value.get("file.filename").and_then(Value::as_str))
            .or_else(|| value.get("filename").and_then(Value::as_str))
            .unwrap_or("")
            .to_string();
        if let Some(locking) = file.and_then(|f| f.get("locking")).and_then(Value::as_str) {
            spec.locking = locking != "off";
        }
        if let Some(map) = value.as_object() {
            for (key, v) in map {
                if matches!(
                    key.as_str(),
                    "driver" | "file" | "file.filename" | "filename"
                ) {
                    continue;
                }
                flatten(key, v, &mut spec.options);
            }
        }
        if spec.path.is_empty() {
            return Err(missing_file(file.is_some()));
        }
        return Ok(spec);
    }
    // qemu strips the file protocol's prefix from plain names.
    Ok(ImageSpec {
        path: name.strip_prefix("file:").unwrap_or(name).to_string(),
        locking: true,
        ..ImageSpec::default()
    })
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
fn flatten(key: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{key}.{k}"), v, out);
            }
        }
        Value::String(s) => out.push((key.to_string(), s.clone())),
        other => out.push((key.to_string(), other.to_string())),
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
            s.display_name(),
            r#"json:{"encrypt.key-secret": "s0", "driver": "qcow2", "file": {"driver": "file", "filename": "a"}}"#
        );
        // As qemu-img 10.0.2 names them: the dictionary's order, not ours.
        let s = resolve(
            "driver=luks,file.filename=d.img,header.filename=h.img,key-secret=s",
            true,
        )
        .unwrap();
        assert_eq!(
            s.display_name(),
            r#"json:{"header": {"driver": "file", "filename": "h.img"}, "driver": "luks", "file": {"driver": "file", "filename": "d.img"}, "key-secret": "s"}"#
        );
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
