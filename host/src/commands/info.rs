//! `info`: what an image is, human or JSON, as qemu-img prints it.

use super::common::{check_image_opts, objects, print_help};
use crate::block::lineage::Lineage;
use crate::block::spec::{has_no_directory, relative_to, resolve};
use crate::block::{open_image, BlockImage, LockSpec, OpenRequest};
use crate::cli::{flag, getopt, long_arg, long_flag, output_format, with_arg, Opt, OutputFormat};
use crate::error::{fail, CmdError, CmdResult};
use crate::output::{qemu_json_pretty, size_to_str};
use qimg_driver_api::caps;
use qimg_driver_api::schema::SnapshotInfo;
use serde_json::{json, Map, Value};

const OPTS: &[Opt] = &[
    flag('h', "help"),
    with_arg('f', "format"),
    long_flag("image-opts"),
    flag('b', "backing-chain"),
    flag('U', "force-share"),
    long_arg("output"),
    long_arg("object"),
];

const HELP: &str = "Usage:\nDisplay information about image.  Usage:\n\n  {prog} info [-f FMT | --image-opts] [-b] [-U] [--object OBJDEF]\n        [--output human|json] FILENAME\n\nArguments:\n  -h, --help\n     print this help and exit\n  -f, --format FMT\n     the format of FILENAME (probed when omitted)\n  --image-opts\n     FILENAME is an option string (driver=...,file.filename=...)\n  -b, --backing-chain\n     show every image of the backing chain\n  -U, --force-share\n     open the image in shared mode\n  --object OBJDEF\n     a secret (secret,id=ID,data=...|file=...)\n  --output human|json\n     output format (default human)\n  FILENAME\n     the image\n\n";

inventory::submit! { super::Command { name: "info", summary: "Display information about image", run } }

fn run(args: &[String]) -> CmdResult {
    let p = getopt("info", args, OPTS)?;
    if p.has("help") {
        return Ok(print_help(HELP));
    }
    let output = output_format("info", p.last("output"))?;
    objects(&p)?;
    check_image_opts(&p, "format")?;
    if p.operands.len() != 1 {
        return Err(CmdError::usage("info", "Expecting one image file name"));
    }
    let chain = p.has("backing-chain");
    // Each image of the chain is opened by itself, as qemu-img does, so a
    // missing backing file is reported under its own name.
    let mut infos = Vec::new();
    let mut next = Some((
        p.operands[0].clone(),
        p.last("format").map(str::to_string),
        p.has("image-opts"),
    ));
    let force_share = p.has("force-share");
    crate::confine::enter(
        &[crate::confine::image_file(
            &p.operands[0],
            p.has("image-opts"),
        )],
        &[],
    )?;
    let mut lineage = Lineage::default();
    while let Some((name, format, image_opts)) = next.take() {
        // Only backing names come after the first: a file met again, or a
        // chain too deep, ends the walk.
        if !infos.is_empty() {
            lineage
                .admit(&name)
                .map_err(|e| fail(e.message.to_string()))?;
        }
        let request = OpenRequest {
            lock: Some(LockSpec {
                forced: force_share,
                ..LockSpec::DESCRIBE
            }),
            no_backing: true,
            no_io: true,
            ..OpenRequest::read(&name, format.as_deref(), image_opts)
        };
        let image = open_image(&request).map_err(|e| fail(e.message.to_string()))?;
        if let Ok(spec) = resolve(&name, image_opts) {
            lineage = lineage.below(&spec.path);
        }
        let json = image_json(&image)?;
        if chain {
            if let (Some(b), None) = (
                json.get("backing-filename").and_then(Value::as_str),
                json.get("full-backing-filename"),
            ) {
                return Err(fail(format!(
                    "Could not determine absolute backing filename, but backing filename '{b}' present"
                )));
            }
            if let Some(backing) = json.get("full-backing-filename").and_then(Value::as_str) {
                let format = json
                    .get("backing-filename-format")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if crate::confine::requested() {
                    return Err(fail(crate::confine::named_file_refused(backing)));
                }
                next = Some((backing.to_string(), format, false));
            }
        }
        infos.push(json);
    }
    match output {
        OutputFormat::Json if chain => outln!("{}", qemu_json_pretty(&Value::Array(infos))),
        OutputFormat::Json => outln!("{}", qemu_json_pretty(&infos[0])),
        OutputFormat::Human => {
            let texts: Vec<String> = infos.iter().map(human).collect();
            out!("{}", texts.join("\n"));
        }
    }
    Ok(0)
}

/// Rounds a byte length up to qemu's 512-byte sector granularity.
fn sectors(len: u64) -> u64 {
    len.div_ceil(512) * 512
}

/// The `info` object of a protocol node: its length (in sectors) and what
/// it occupies on disk. A file says it is clean; a null device says
/// nothing more.
fn protocol_child(filename: &str, protocol: &str, len: u64, actual: Option<u64>) -> Value {
    let mut node = Map::new();
    node.insert("children".into(), json!([]));
    node.insert("virtual-size".into(), json!(sectors(len)));
    node.insert("filename".into(), json!(filename));
    node.insert("format".into(), json!(protocol));
    if let Some(a) = actual {
        node.insert("actual-size".into(), json!(a));
    }
    if protocol == "file" || protocol == "host_device" {
        node.insert(
            "format-specific".into(),
            json!({"type": "file", "data": {}}),
        );
        node.insert("dirty-flag".into(), json!(false));
    }
    Value::Object(node)
}

/// The JSON object qemu-img prints for one image, in its key order.
pub fn image_json(image: &BlockImage) -> Result<Value, CmdError> {
    use qimg_driver_api::ByteStore;
    use std::os::unix::fs::MetadataExt;
    let protocol = image.store.protocol();
    let store_len = image.store.len().into_result().unwrap_or(0);
    let store_actual = image.store.allocated().ok();
    if image.is_protocol_node() {
        // The protocol node itself: no children, no format on top.
        let mut node = protocol_child(&image.filename, protocol, store_len, store_actual);
        node["virtual-size"] = json!(image.size());
        return Ok(node);
    }
    let mut info = image.info().map_err(|e| fail(e.message.to_string()))?;
    let local = protocol == "file" || protocol == "host_device";
    if !local && image.driver.can(caps::IDENTITY_MAPPED) {
        // A format that passes its protocol's facts through (raw) has none
        // from a null device or a network store.
        info.dirty_flag = None;
    }
    let mut actual = store_actual;
    // Files of their own (vmdk extents) come first, as qemu-img lists them;
    // the image's disk usage is the sum over all its files.
    let mut children = Vec::new();
    for child in &info.extra_children {
        let meta = std::fs::metadata(&child.filename).ok();
        let child_actual = meta.as_ref().map(|m| m.blocks() * 512);
        actual = actual.zip(child_actual).map(|(a, b)| a + b);
        let len = meta.map_or(0, |m| m.len());
        children.push(json!({
            "name": child.name,
            "info": protocol_child(&child.filename, "file", len, child_actual),
        }));
    }
    children.push(json!({
        "name": "file",
        "info": protocol_child(&image.store.node_name(), protocol, store_len, store_actual),
    }));

    let mut top = Map::new();
    top.insert("children".into(), Value::Array(children));
    // (qemu's keys come in the order of its dictionary's hash buckets.)
    if let Some(f) = &info.backing_format {
        top.insert("backing-filename-format".into(), json!(f));
    }
    if !info.snapshots.is_empty() {
        let list: Vec<Value> = info.snapshots.iter().map(snapshot_json).collect();
        top.insert("snapshots".into(), Value::Array(list));
    }
    top.insert("virtual-size".into(), json!(image.size()));
    top.insert("filename".into(), json!(image.filename));
    if let Some(c) = info.cluster_size {
        top.insert("cluster-size".into(), json!(c));
    }
    top.insert("format".into(), json!(image.format()));
    if let Some(a) = actual {
        top.insert("actual-size".into(), json!(a));
    }
    if let Some(fs) = &info.format_specific {
        top.insert("format-specific".into(), fs.clone());
    }
    if info.encrypted == Some(true) {
        top.insert("encrypted".into(), json!(true));
    }
    if let Some(b) = &info.backing_filename {
        // An image on NBD cannot say where a relative name points.
        if !has_no_directory(&image.filename, b) {
            top.insert(
                "full-backing-filename".into(),
                json!(relative_to(&image.filename, b)),
            );
        }
        top.insert("backing-filename".into(), json!(b));
    }
    if let Some(dirty) = info.dirty_flag {
        top.insert("dirty-flag".into(), json!(dirty));
    }
    Ok(Value::Object(top))
}

/// One snapshot as qemu-img's JSON lists it, in its key order.
fn snapshot_json(s: &SnapshotInfo) -> Value {
    let mut map = Map::new();
    if let Some(icount) = s.icount {
        map.insert("icount".into(), json!(icount));
    }
    map.insert(
        "vm-clock-nsec".into(),
        json!(s.vm_clock_nsec % 1_000_000_000),
    );
    map.insert("name".into(), json!(s.name));
    map.insert("date-sec".into(), json!(s.date_sec));
    map.insert("date-nsec".into(), json!(s.date_nsec));
    map.insert(
        "vm-clock-sec".into(),
        json!(s.vm_clock_nsec / 1_000_000_000),
    );
    map.insert("id".into(), json!(s.id));
    map.insert("vm-state-size".into(), json!(s.vm_state_size));
    Value::Object(map)
}

/// Reads back a snapshot from [`snapshot_json`]'s object.
fn snapshot_from_json(v: &Value) -> SnapshotInfo {
    let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    SnapshotInfo {
        id: text("id"),
        name: text("name"),
        vm_state_size: num("vm-state-size"),
        date_sec: num("date-sec"),
        date_nsec: num("date-nsec") as u32,
        vm_clock_nsec: num("vm-clock-sec") * 1_000_000_000 + num("vm-clock-nsec"),
        icount: v.get("icount").and_then(Value::as_u64),
    }
}

fn human(info: &Value) -> String {
    let get = |k: &str| info.get(k);
    let mut out = String::new();
    out.push_str(&format!(
        "image: {}\n",
        get("filename").and_then(Value::as_str).unwrap_or("")
    ));
    out.push_str(&format!(
        "file format: {}\n",
        get("format").and_then(Value::as_str).unwrap_or("")
    ));
    let size = get("virtual-size").and_then(Value::as_u64).unwrap_or(0);
    out.push_str(&format!(
        "virtual size: {} ({size} bytes)\n",
        size_to_str(size)
    ));
    match get("actual-size").and_then(Value::as_u64) {
        Some(a) => out.push_str(&format!("disk size: {}\n", size_to_str(a))),
        None => out.push_str("disk size: unavailable\n"),
    }
    if get("encrypted").and_then(Value::as_bool) == Some(true) {
        out.push_str("encrypted: yes\n");
    }
    if let Some(c) = get("cluster-size").and_then(Value::as_u64) {
        out.push_str(&format!("cluster_size: {c}\n"));
    }
    if get("dirty-flag").and_then(Value::as_bool) == Some(true) {
        out.push_str("cleanly shut down: no\n");
    }
    if let Some(b) = get("backing-filename").and_then(Value::as_str) {
        match get("full-backing-filename").and_then(Value::as_str) {
            None => out.push_str(&format!(
                "backing file: {b} (cannot determine actual path)\n"
            )),
            Some(full) if full != b => {
                out.push_str(&format!("backing file: {b} (actual path: {full})\n"))
            }
            Some(_) => out.push_str(&format!("backing file: {b}\n")),
        }
    }
    if let Some(f) = get("backing-filename-format").and_then(Value::as_str) {
        out.push_str(&format!("backing file format: {f}\n"));
    }
    if let Some(list) = get("snapshots").and_then(Value::as_array) {
        let snapshots: Vec<SnapshotInfo> = list.iter().map(snapshot_from_json).collect();
        out.push_str(&super::snapshot::snapshot_table(&snapshots));
    }
    if let Some(data) = get("format-specific").and_then(|fs| fs.get("data")) {
        if data.as_object().is_some_and(|m| !m.is_empty()) {
            out.push_str("Format specific information:\n");
            dump_human(data, 1, &mut out);
        }
    }
    if let Some(children) = get("children").and_then(Value::as_array) {
        for child in children {
            let name = child.get("name").and_then(Value::as_str).unwrap_or("");
            let Some(ci) = child.get("info") else {
                continue;
            };
            out.push_str(&format!("Child node '/{name}':\n"));
            out.push_str(&format!(
                "    filename: {}\n",
                ci.get("filename").and_then(Value::as_str).unwrap_or("")
            ));
            out.push_str(&format!(
                "    protocol type: {}\n",
                ci.get("format").and_then(Value::as_str).unwrap_or("")
            ));
            let len = ci.get("virtual-size").and_then(Value::as_u64).unwrap_or(0);
            out.push_str(&format!(
                "    file length: {} ({len} bytes)\n",
                size_to_str(len)
            ));
            match ci.get("actual-size").and_then(Value::as_u64) {
                Some(a) => out.push_str(&format!("    disk size: {}\n", size_to_str(a))),
                None => out.push_str("    disk size: unavailable\n"),
            }
        }
    }
    out
}

/// Prints format-specific data as qemu does: `key: value`, dashes in keys
/// become spaces, nested objects and lists indented by four spaces.
fn dump_human(value: &Value, depth: usize, out: &mut String) {
    let pad = "    ".repeat(depth);
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                let key = key.replace('-', " ");
                match item {
                    Value::Object(_) | Value::Array(_) => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        dump_human(item, depth + 1, out);
                    }
                    _ => out.push_str(&format!("{pad}{key}: {}\n", scalar(item))),
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                match item {
                    Value::Object(_) | Value::Array(_) => {
                        out.push_str(&format!("{pad}[{index}]:\n"));
                        dump_human(item, depth + 1, out);
                    }
                    _ => out.push_str(&format!("{pad}[{index}]: {}\n", scalar(item))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
