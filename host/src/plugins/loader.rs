//! Loads driver libraries through driver-api's root module and keeps the
//! drivers they export.
//!
//! Each library is loaded with `lib_header_from_path(..).init_root_module()`
//! rather than `RootModule::load_from_file`, which caches one module per type
//! process-wide and would hand every library the first one's drivers.

use super::manifest::{locate, Manifest};
use qimg_driver_api::abi_stable::library::lib_header_from_path;
use qimg_driver_api::{DriverLibRef, FormatDriverBox, ABI_VERSION};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A loaded format driver.
pub struct Driver {
    /// Format name.
    pub name: String,
    /// Capability bits (`qimg_driver_api::caps`).
    pub caps: u64,
    /// The driver object.
    pub api: FormatDriverBox,
    /// Minor driver-ABI version its library was built for (methods added
    /// in later minor versions are not called).
    pub abi_minor: u32,
}

impl Driver {
    /// The options `amend -o` accepts, in `amend -o help`'s order (none from
    /// a library older than ABI 1.2).
    pub fn amend_options(&self) -> Vec<qimg_driver_api::schema::CreateOption> {
        if self.abi_minor < 2 {
            return Vec::new();
        }
        serde_json::from_str(self.api.amend_options().as_str()).unwrap_or_default()
    }

    /// True if the driver advertises every bit of `cap`.
    pub fn can(&self, cap: u64) -> bool {
        self.caps & cap == cap
    }
}

/// Why a driver is not available.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FindError {
    /// No driver of that name is known.
    #[error("Unknown driver '{0}'")]
    Unknown(String),
    /// The manifest disables it.
    #[error("Unknown driver '{name}' (disabled in '{manifest}')")]
    Disabled {
        /// Format name.
        name: String,
        /// Manifest path.
        manifest: String,
    },
    /// Its library failed to load.
    #[error("{0}")]
    Load(String),
}

type LoadResult = Result<Vec<Arc<Driver>>, String>;

/// The drivers this process can use, loaded on demand.
pub struct Registry {
    manifest: Option<Manifest>,
    exe_dir: PathBuf,
    libraries: Mutex<HashMap<PathBuf, LoadResult>>,
}

/// Prefix and suffix of driver library file names beside the executable.
const LIBRARY_PREFIX: &str = "libqimg_";
const LIBRARY_SUFFIX: &str = ".so";

impl Registry {
    /// Finds and reads the manifest (see [`locate`]).
    pub fn new(explicit: Option<&Path>) -> Result<Registry, String> {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.canonicalize().ok())
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        let manifest = match locate(explicit, &exe_dir) {
            Some(path) => Some(Manifest::load(&path, &exe_dir).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Registry {
            manifest,
            exe_dir,
            libraries: Mutex::new(HashMap::new()),
        })
    }

    /// The driver for format `name`, loading only the library that provides it.
    pub fn find(&self, name: &str) -> Result<Arc<Driver>, FindError> {
        match &self.manifest {
            Some(manifest) => {
                let entry = manifest.drivers.iter().find(|d| d.name == name);
                let Some(entry) = entry else {
                    return Err(FindError::Unknown(name.to_string()));
                };
                if !entry.enabled {
                    return Err(FindError::Disabled {
                        name: name.to_string(),
                        manifest: manifest.path.display().to_string(),
                    });
                }
                let path = manifest.library_path(entry);
                let drivers = self
                    .load(&path, entry.sha256.as_deref())
                    .map_err(FindError::Load)?;
                drivers.into_iter().find(|d| d.name == name).ok_or_else(|| {
                    FindError::Load(format!("'{}' provides no driver '{name}'", path.display()))
                })
            }
            None => {
                // By convention libqimg_<format>.so; otherwise look through all.
                let guess = self
                    .exe_dir
                    .join(format!("{LIBRARY_PREFIX}{name}{LIBRARY_SUFFIX}"));
                if guess.is_file() {
                    if let Ok(drivers) = self.load(&guess, None) {
                        if let Some(d) = drivers.into_iter().find(|d| d.name == name) {
                            return Ok(d);
                        }
                    }
                }
                self.all()
                    .into_iter()
                    .find(|d| d.name == name)
                    .ok_or_else(|| FindError::Unknown(name.to_string()))
            }
        }
    }

    /// Every enabled driver that loads, sorted by name. A library that fails to
    /// load is reported once on stderr; the others still work.
    pub fn all(&self) -> Vec<Arc<Driver>> {
        let mut found = Vec::new();
        for (path, sha) in self.enabled_libraries() {
            // A library that fails is reported by `load`; the others still count.
            if let Ok(drivers) = self.load(&path, sha.as_deref()) {
                found.extend(drivers);
            }
        }
        if let Some(manifest) = &self.manifest {
            let enabled: Vec<&str> = manifest
                .drivers
                .iter()
                .filter(|d| d.enabled)
                .map(|d| d.name.as_str())
                .collect();
            found.retain(|d| enabled.contains(&d.name.as_str()));
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found.dedup_by(|a, b| a.name == b.name);
        found
    }

    fn enabled_libraries(&self) -> Vec<(PathBuf, Option<String>)> {
        match &self.manifest {
            Some(manifest) => manifest
                .drivers
                .iter()
                .filter(|d| d.enabled)
                .map(|d| (manifest.library_path(d), d.sha256.clone()))
                .collect(),
            None => {
                let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.exe_dir)
                    .map(|dir| {
                        dir.filter_map(|e| e.ok())
                            .map(|e| e.path())
                            .filter(|p| {
                                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                                    n.starts_with(LIBRARY_PREFIX) && n.ends_with(LIBRARY_SUFFIX)
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                paths.sort();
                paths.into_iter().map(|p| (p, None)).collect()
            }
        }
    }

    fn load(&self, path: &Path, sha256: Option<&str>) -> LoadResult {
        let mut libraries = self.libraries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(result) = libraries.get(path) {
            return result.clone();
        }
        let result = load_library(path, sha256).map_err(|reason| {
            format!(
                "could not load driver library '{}': {reason}",
                path.display()
            )
        });
        if let Err(message) = &result {
            eprintln!("{}: {message}", crate::cli::program());
        }
        libraries.insert(path.to_path_buf(), result.clone());
        result
    }
}

fn load_library(path: &Path, sha256: Option<&str>) -> LoadResult {
    if !path.is_file() {
        return Err("No such file or directory".to_string());
    }
    if let Some(pin) = sha256 {
        let bytes = std::fs::read(path).map_err(|e| qimg_driver_api::error::io_message(&e))?;
        let actual = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        if !actual.eq_ignore_ascii_case(pin.trim()) {
            return Err(format!(
                "sha256 mismatch (manifest pins {}, file has {actual})",
                pin.trim()
            ));
        }
    }
    let header = lib_header_from_path(path).map_err(|e| short_reason(&e.to_string()))?;
    let module = header
        .init_root_module::<DriverLibRef>()
        .map_err(|e| short_reason(&e.to_string()))?;
    let version = module.abi_version();
    if version >> 16 != ABI_VERSION >> 16 || version & 0xffff > ABI_VERSION & 0xffff {
        return Err(format!(
            "built for driver ABI {}.{}, this qimg speaks {}.{}",
            version >> 16,
            version & 0xffff,
            ABI_VERSION >> 16,
            ABI_VERSION & 0xffff
        ));
    }
    let drivers = (module.drivers())();
    Ok(drivers
        .into_iter()
        .map(|api| {
            Arc::new(Driver {
                name: api.name().into(),
                caps: api.capabilities(),
                api,
                abi_minor: version & 0xffff,
            })
        })
        .collect())
}

/// abi_stable's errors can carry a long layout dump; keep its `Error:` lines
/// (or the first line) so the user gets one line.
fn short_reason(text: &str) -> String {
    let errors: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Error:"))
        .map(|l| l.trim_start_matches("Error:").trim())
        .collect();
    let line = if errors.is_empty() {
        text.lines().next().unwrap_or("").trim().to_string()
    } else {
        errors.join("; ")
    };
    let mut line = line;
    if line.len() > 300 {
        let mut cut = 300;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::short_reason;

    #[test]
    fn short_reason_keeps_error_lines() {
        let dump =
            "Layout mismatch\n  lots of text\n  Error: too many fields\n more\nError: bad type\n";
        assert_eq!(short_reason(dump), "too many fields; bad type");
        assert_eq!(
            short_reason("dlopen failed: invalid ELF header\nextra"),
            "dlopen failed: invalid ELF header"
        );
    }
}
