//! Fuzz target `texts`: the host's text parsers, which read what a user, a
//! script or an image header hands qimg before any driver is involved.
//!
//! The first byte picks the parser, the rest is its text:
//! - 0: a plugin manifest (`plugins.toml` or a drop-in) — every library it
//!   names must resolve to an absolute path, and every driver name must be
//!   plain before it becomes part of one;
//! - 1: a `json:` pseudo-filename (as a backing name in a header may be);
//! - 2: an `--image-opts` option string;
//! - 3: a plain image name;
//! - 4: a command line (NUL-separated arguments) through the getopt parser.
//!
//! For 1–3 a resolved name must also render (`display_name`,
//! `protocol_name`, `cache`) without a panic.
//!
//! The host is a binary crate, so its parser modules are compiled here by
//! path, with the few host items they name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

#[allow(dead_code, unused_imports)]
#[path = "../../host/src/cli.rs"]
mod cli;

#[allow(dead_code)]
#[path = "../../host/src/error.rs"]
mod error;

#[allow(dead_code)]
#[path = "../../host/src/store/cache.rs"]
mod store_cache;

#[allow(dead_code)]
#[path = "../../host/src/block/spec.rs"]
mod spec;

#[allow(dead_code)]
#[path = "../../host/src/plugins/manifest.rs"]
mod manifest;

/// The host's `store` module as far as the spec parser uses it.
mod store {
    pub use super::store_cache::CacheMode;
    /// The null device's default size, as `store::null` has it.
    pub mod null {
        pub const DEFAULT_SIZE: u64 = 1 << 30;
    }
}

/// Options of the getopt case: one of each kind getopt knows.
const OPTS: &[cli::Opt] = &[
    cli::flag('q', "quiet"),
    cli::with_arg('f', "format"),
    cli::with_arg('o', ""),
    cli::flag('U', "force-share"),
    cli::long_arg("output"),
    cli::long_flag("image-opts"),
    cli::long_arg("object"),
];

fn manifest(text: &str) {
    let dir = Path::new("/nonexistent/qimg-fuzz");
    let Ok(m) = manifest::Manifest::parse(text, &dir.join("plugins.toml"), &dir.join("bin")) else {
        return;
    };
    for entry in &m.drivers {
        let path = m.library_path(entry);
        assert!(path.is_absolute(), "library of {:?}: {path:?}", entry.name);
    }
}

fn image_name(text: &str, image_opts: bool) {
    let Ok(spec) = spec::resolve(text, image_opts) else {
        return;
    };
    let format = spec.format.clone().unwrap_or_else(|| "raw".into());
    let _ = spec.display_name(&format);
    let _ = spec.protocol_name();
    let _ = spec.cache(store::CacheMode::Writeback);
    let _ = spec.with_format(Some("qcow2"));
}

fn command_line(text: &str) {
    let args: Vec<String> = text.split('\0').map(str::to_string).collect();
    if let Ok(parsed) = cli::getopt("convert", &args, OPTS) {
        let _ = parsed.all("o").join(",");
        let _ = cli::merge_opts(&parsed.all("o"));
        let _ = cli::output_format("convert", parsed.last("output"));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 5 {
        0 => manifest(&text),
        1 => image_name(&format!("json:{text}"), false),
        2 => image_name(&text, true),
        3 => image_name(&text, false),
        _ => command_line(&text),
    }
});
