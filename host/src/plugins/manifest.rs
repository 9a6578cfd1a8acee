//! `plugins.toml`: which driver libraries exist, where, and which are enabled.
//!
//! ```toml
//! search_paths = ["${exe_dir}", "/usr/lib/qimg"]
//! [[driver]]
//! name = "raw"                  # the format name the library provides
//! library = "libqimg_raw.so"    # absolute, or looked up in search_paths
//! enabled = true
//! sha256 = "…"                  # optional pin of the library file
//! ```
//! Relative search paths are relative to the manifest's directory; `${exe_dir}`
//! stands for the directory of the running `qimg`.
//!
//! Drop-in files (`plugins.d/*.toml` beside the manifest, then
//! `/etc/qimg/plugins.d/*.toml`, each directory in file-name order) have the
//! same form and add drivers, so a vendor's package installs its driver
//! without editing the operator's file. An entry of the manifest itself
//! overrides a drop-in's entry of the same name (to disable a vendor driver);
//! the same name twice in one file, or in two drop-ins, is refused.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("could not read plugin manifest '{path}': {reason}")]
    Read {
        /// Manifest path.
        path: PathBuf,
        /// OS error text.
        reason: String,
    },
    /// The file is not a valid manifest, or one of its entries is invalid.
    #[error("invalid plugin manifest '{path}': {reason}")]
    Parse {
        /// Manifest path.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
}

/// One `[[driver]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverEntry {
    /// Format name (`raw`, `qcow2`…).
    pub name: String,
    /// Library file: a path, or a file name looked up in the search paths.
    pub library: String,
    /// Whether the driver may be used.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Optional hex sha256 the library file must match.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The file the entry was read from.
    #[serde(skip)]
    pub source: PathBuf,
    /// Where that file looks up relative library names.
    #[serde(skip)]
    pub search_paths: Vec<PathBuf>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    #[serde(default)]
    search_paths: Vec<String>,
    #[serde(default)]
    driver: Vec<DriverEntry>,
}

/// A parsed manifest (with its drop-ins) with search paths resolved.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where the manifest was read from.
    pub path: PathBuf,
    /// Directories searched for relative library names, in order.
    pub search_paths: Vec<PathBuf>,
    /// The driver entries: the manifest's in file order, then the drop-ins'.
    pub drivers: Vec<DriverEntry>,
}

/// The system-wide drop-in directory, read after the one beside the manifest.
const SYSTEM_DROP_INS: &str = "/etc/qimg/plugins.d";

impl Manifest {
    /// Reads and parses a manifest and the drop-in files that extend it.
    pub fn load(path: &Path, exe_dir: &Path) -> Result<Manifest, ManifestError> {
        let mut manifest = Self::parse(&read(path)?, path, exe_dir)?;
        let beside = path
            .parent()
            .map(|dir| dir.join("plugins.d"))
            .unwrap_or_else(|| PathBuf::from("plugins.d"));
        let mut dirs = vec![beside];
        if !dirs.iter().any(|d| same_dir(d, Path::new(SYSTEM_DROP_INS))) {
            dirs.push(PathBuf::from(SYSTEM_DROP_INS));
        }
        let mut from_drop_ins: Vec<DriverEntry> = Vec::new();
        for dir in dirs {
            for file in drop_in_files(&dir)? {
                let part = Self::parse(&read(&file)?, &file, exe_dir)?;
                for entry in part.drivers {
                    if let Some(earlier) = from_drop_ins.iter().find(|e| e.name == entry.name) {
                        return Err(ManifestError::Parse {
                            path: file.clone(),
                            reason: format!(
                                "driver '{}' is already listed in '{}'",
                                entry.name,
                                earlier.source.display()
                            ),
                        });
                    }
                    from_drop_ins.push(entry);
                }
            }
        }
        // The operator's own file overrides what packages dropped in.
        from_drop_ins.retain(|e| !manifest.drivers.iter().any(|m| m.name == e.name));
        manifest.drivers.extend(from_drop_ins);
        Ok(manifest)
    }

    /// Parses manifest text read from `path`.
    pub fn parse(text: &str, path: &Path, exe_dir: &Path) -> Result<Manifest, ManifestError> {
        let invalid = |reason: String| ManifestError::Parse {
            path: path.to_path_buf(),
            reason,
        };
        let file: ManifestFile =
            toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
        // Search paths are absolute even for a manifest named by a relative
        // path: a bare library name would otherwise reach the dynamic
        // loader, which searches LD_LIBRARY_PATH and the system, not here.
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
        let exe = exe_dir.to_string_lossy();
        let mut search_paths: Vec<PathBuf> = file
            .search_paths
            .iter()
            .map(|p| {
                let expanded = PathBuf::from(p.replace("${exe_dir}", &exe));
                normalize(&if expanded.is_absolute() {
                    expanded
                } else {
                    base.join(expanded)
                })
            })
            .collect();
        if search_paths.is_empty() {
            search_paths.push(base.clone());
        }
        let mut drivers = file.driver;
        for (i, entry) in drivers.iter().enumerate() {
            let which = format!("[[driver]] entry {} ('{}')", i + 1, entry.name);
            if entry.name.is_empty() || entry.library.is_empty() {
                return Err(invalid(format!(
                    "{which}: name and library must not be empty"
                )));
            }
            if let Some(first) = drivers[..i].iter().position(|e| e.name == entry.name) {
                return Err(invalid(format!(
                    "{which}: driver '{}' is already listed in entry {}",
                    entry.name,
                    first + 1
                )));
            }
            if let Some(pin) = &entry.sha256 {
                if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(format!(
                        "{which}: sha256 must be 64 hexadecimal digits, not '{pin}'"
                    )));
                }
            }
        }
        for entry in &mut drivers {
            entry.source = path.to_path_buf();
            entry.search_paths = search_paths.clone();
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            search_paths,
            drivers,
        })
    }

    /// Where the library of `entry` lives: the first of its file's search
    /// paths holding it, or the first candidate if none does (so the error
    /// names a real path).
    pub fn library_path(&self, entry: &DriverEntry) -> PathBuf {
        let lib = Path::new(&entry.library);
        if lib.is_absolute() {
            return lib.to_path_buf();
        }
        let dirs = if entry.search_paths.is_empty() {
            &self.search_paths
        } else {
            &entry.search_paths
        };
        let candidates: Vec<PathBuf> = dirs.iter().map(|dir| dir.join(lib)).collect();
        candidates
            .iter()
            .find(|p| p.exists())
            .cloned()
            .unwrap_or_else(|| candidates[0].clone())
    }
}

/// Drops `.` and resolves `..` lexically (`/usr/bin/../lib` -> `/usr/lib`),
/// so listings and messages show plain paths.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn read(path: &Path) -> Result<String, ManifestError> {
    std::fs::read_to_string(path).map_err(|e| ManifestError::Read {
        path: path.to_path_buf(),
        reason: qimg_driver_api::error::io_message(&e),
    })
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The `*.toml` files of a drop-in directory, by name; none if it is absent.
fn drop_in_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ManifestError::Read {
                path: dir.to_path_buf(),
                reason: qimg_driver_api::error::io_message(&e),
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Finds the manifest: `--plugins FILE`, then `$QIMG_PLUGINS`, then
/// `plugins.toml` beside the executable, then `../etc/qimg/plugins.toml`
/// from it (an installation prefix), then the user's and the system's
/// configuration directories. `None` means: load the libraries beside the
/// executable.
pub fn locate(explicit: Option<&Path>, exe_dir: &Path) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("QIMG_PLUGINS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let mut candidates = vec![exe_dir.join("plugins.toml")];
    if let Some(prefix) = exe_dir.parent() {
        candidates.push(prefix.join("etc/qimg/plugins.toml"));
    }
    if let Some(config) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(config).join("qimg/plugins.toml"));
    } else if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".config/qimg/plugins.toml"));
    }
    candidates.push(PathBuf::from("/etc/qimg/plugins.toml"));
    candidates.into_iter().find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_expands_exe_dir() {
        let text = r#"
            search_paths = ["${exe_dir}", "libs"]
            [[driver]]
            name = "raw"
            library = "libqimg_raw.so"
            [[driver]]
            name = "qcow2"
            library = "/opt/libqimg_qcow2.so"
            enabled = false
            sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
        "#;
        let m = Manifest::parse(
            text,
            Path::new("/etc/qimg/plugins.toml"),
            Path::new("/usr/bin"),
        )
        .unwrap();
        assert_eq!(
            m.search_paths,
            vec![PathBuf::from("/usr/bin"), PathBuf::from("/etc/qimg/libs")]
        );
        assert!(m.drivers[0].enabled && !m.drivers[1].enabled);
        assert_eq!(
            m.library_path(&m.drivers[1]),
            PathBuf::from("/opt/libqimg_qcow2.so")
        );
        assert_eq!(
            m.library_path(&m.drivers[0]),
            PathBuf::from("/usr/bin/libqimg_raw.so")
        );
    }

    fn parse_error(text: &str) -> String {
        match Manifest::parse(text, Path::new("m.toml"), Path::new(".")) {
            Err(ManifestError::Parse { reason, .. }) => reason,
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn rejects_duplicate_names_naming_the_entry() {
        let reason = parse_error(
            "[[driver]]\nname='raw'\nlibrary='a.so'\n[[driver]]\nname='q'\nlibrary='q.so'\n\
             [[driver]]\nname='raw'\nlibrary='b.so'\n",
        );
        assert_eq!(
            reason,
            "[[driver]] entry 3 ('raw'): driver 'raw' is already listed in entry 1"
        );
    }

    #[test]
    fn rejects_malformed_pins() {
        for pin in ["00", "zz", &"a".repeat(63), &"g".repeat(64)] {
            let reason = parse_error(&format!(
                "[[driver]]\nname='raw'\nlibrary='a.so'\nsha256='{pin}'\n"
            ));
            assert!(
                reason.starts_with("[[driver]] entry 1 ('raw'): sha256 must be 64"),
                "{reason}"
            );
        }
        let good = "[[driver]]\nname='raw'\nlibrary='a.so'\nsha256='".to_string()
            + &"aB".repeat(32)
            + "'\n";
        assert!(Manifest::parse(&good, Path::new("m.toml"), Path::new(".")).is_ok());
    }

    #[test]
    fn rejects_unknown_keys() {
        let err = Manifest::parse(
            "[[driver]]\nname='x'\nlibrary='y'\nbogus=1\n",
            Path::new("m.toml"),
            Path::new("."),
        );
        assert!(matches!(err, Err(ManifestError::Parse { .. })));
    }
}
