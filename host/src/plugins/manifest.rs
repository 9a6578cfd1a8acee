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
    /// The file is not a valid manifest.
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

/// A parsed manifest with its search paths resolved.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where the manifest was read from.
    pub path: PathBuf,
    /// Directories searched for relative library names, in order.
    pub search_paths: Vec<PathBuf>,
    /// The driver entries, in file order.
    pub drivers: Vec<DriverEntry>,
}

impl Manifest {
    /// Reads and parses a manifest.
    pub fn load(path: &Path, exe_dir: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError::Read {
            path: path.to_path_buf(),
            reason: qimg_driver_api::error::io_message(&e),
        })?;
        Self::parse(&text, path, exe_dir)
    }

    /// Parses manifest text read from `path`.
    pub fn parse(text: &str, path: &Path, exe_dir: &Path) -> Result<Manifest, ManifestError> {
        let file: ManifestFile = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_path_buf(),
            reason: e.message().to_string(),
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let exe = exe_dir.to_string_lossy();
        let mut search_paths: Vec<PathBuf> = file
            .search_paths
            .iter()
            .map(|p| {
                let expanded = PathBuf::from(p.replace("${exe_dir}", &exe));
                if expanded.is_absolute() {
                    expanded
                } else {
                    base.join(expanded)
                }
            })
            .collect();
        if search_paths.is_empty() {
            search_paths.push(base.clone());
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            search_paths,
            drivers: file.driver,
        })
    }

    /// Where the library of `entry` lives: the first search path holding it, or
    /// the first candidate if none does (so the error names a real path).
    pub fn library_path(&self, entry: &DriverEntry) -> PathBuf {
        let lib = Path::new(&entry.library);
        if lib.is_absolute() {
            return lib.to_path_buf();
        }
        let candidates: Vec<PathBuf> = self.search_paths.iter().map(|dir| dir.join(lib)).collect();
        candidates
            .iter()
            .find(|p| p.exists())
            .cloned()
            .unwrap_or_else(|| candidates[0].clone())
    }
}

/// Finds the manifest: `--plugins FILE`, then `$QIMG_PLUGINS`, then
/// `plugins.toml` beside the executable, then the user's and the system's
/// configuration directories. `None` means: load the libraries beside the executable.
pub fn locate(explicit: Option<&Path>, exe_dir: &Path) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("QIMG_PLUGINS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let mut candidates = vec![exe_dir.join("plugins.toml")];
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
            sha256 = "00"
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
