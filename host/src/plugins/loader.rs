//! Loads driver libraries through driver-api's root module and keeps the
//! drivers they export.
//!
//! Each library is loaded with `lib_header_from_path(..).init_root_module()`
//! rather than `RootModule::load_from_file`, which caches one module per type
//! process-wide and would hand every library the first one's drivers.

use super::manifest::{locate, Manifest};
use crate::sync::lock;
use qimg_driver_api::abi_stable::abi_stability::abi_checking::{
    check_layout_compatibility_with_globals, AbiInstability, CheckingGlobals,
};
use qimg_driver_api::abi_stable::library::{lib_header_from_path, LibHeader, LibraryError};
use qimg_driver_api::abi_stable::StableAbi;
use qimg_driver_api::schema::{CreateOption, DriverDescription};
use qimg_driver_api::{DriverLibRef, FormatDriverBox, ProtocolDriverBox, ABI_MAJOR, ABI_MINOR};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A loaded format driver.
pub struct Driver {
    /// Format name.
    pub name: String,
    /// Capability bits (`qimg_driver_api::caps`).
    pub caps: u64,
    /// What the driver said of itself when loaded.
    pub description: DriverDescription,
    /// The driver object.
    pub api: FormatDriverBox,
    /// Minor driver-ABI version its library was built for (methods added
    /// in later minor versions are not called).
    pub abi_minor: u32,
    /// The driver-api package version the library was built against.
    pub api_version: String,
    /// The driver crate's `name version`, from libraries of ABI 1.3 on.
    pub package: Option<String>,
}

impl Driver {
    /// The driver ABI its library was built for, `major.minor`.
    pub fn abi(&self) -> String {
        format!("{ABI_MAJOR}.{}", self.abi_minor)
    }

    /// The options `create -o` accepts, in `-o help`'s order.
    pub fn create_options(&self) -> &[CreateOption] {
        &self.description.create_options
    }

    /// The options `amend -o` accepts, in `amend -o help`'s order (none from
    /// a library older than ABI 1.2).
    pub fn amend_options(&self) -> Vec<CreateOption> {
        self.description.amend_options.clone()
    }

    /// True if the driver advertises every bit of `cap`.
    pub fn can(&self, cap: u64) -> bool {
        self.caps & cap == cap
    }
}

/// A loaded protocol driver (ABI 1.6): opens the stores of `nbd://` and
/// the like.
pub struct Protocol {
    /// Protocol name (`nbd`), the `file.driver=` that selects it.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// Capability bits (`qimg_driver_api::proto_caps`).
    pub caps: u64,
    /// The URI schemes it opens.
    pub schemes: Vec<String>,
    /// The driver object.
    pub api: ProtocolDriverBox,
    /// Minor driver-ABI version its library was built for.
    pub abi_minor: u32,
    /// The driver-api package version the library was built against.
    pub api_version: String,
    /// The driver crate's `name version`.
    pub package: Option<String>,
}

/// What one library provides.
#[derive(Clone, Default)]
struct Library {
    /// Its format drivers.
    formats: Vec<Arc<Driver>>,
    /// Its protocol drivers (ABI 1.6 on).
    protocols: Vec<Arc<Protocol>>,
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

type LoadResult = Result<Library, String>;

/// A driver as `--list-drivers` shows it.
pub struct Listed {
    /// Format name (empty for a library that failed without a manifest entry).
    pub name: String,
    /// The library file.
    pub library: PathBuf,
    /// The manifest or drop-in file that lists it (none without a manifest).
    pub source: Option<PathBuf>,
    /// What loading it gave.
    pub status: Status,
}

/// Whether a listed driver is usable.
pub enum Status {
    /// Loaded and usable.
    Loaded(Arc<Driver>),
    /// A protocol driver, loaded and usable.
    LoadedProtocol(Arc<Protocol>),
    /// Disabled by its manifest entry; not loaded.
    Disabled,
    /// Its library failed to load: why.
    Failed(String),
}

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
        self.find_in(name, |lib| {
            lib.formats.iter().find(|d| d.name == name).cloned()
        })
    }

    /// The protocol driver named `name` (`nbd`), loading only the library
    /// that provides it.
    pub fn find_protocol(&self, name: &str) -> Result<Arc<Protocol>, FindError> {
        self.find_in(name, |lib| {
            lib.protocols.iter().find(|p| p.name == name).cloned()
        })
    }

    /// Loads the library the manifest lists under `name` (without a
    /// manifest, `libqimg_<name>.so` or else every library beside the
    /// executable) and picks the driver from it.
    fn find_in<T>(&self, name: &str, pick: impl Fn(&Library) -> Option<T>) -> Result<T, FindError> {
        // A format name from the command line or an image header may become
        // part of a library's file name: only plain names are looked up.
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(FindError::Unknown(name.to_string()));
        }
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
                let library = self
                    .load(&path, entry.sha256.as_deref())
                    .map_err(FindError::Load)?;
                pick(&library).ok_or_else(|| {
                    FindError::Load(format!("'{}' provides no driver '{name}'", path.display()))
                })
            }
            None => {
                // By convention libqimg_<name>.so; otherwise look through all.
                let guess = self
                    .exe_dir
                    .join(format!("{LIBRARY_PREFIX}{name}{LIBRARY_SUFFIX}"));
                if guess.is_file() {
                    let library = self.load(&guess, None).map_err(FindError::Load)?;
                    if let Some(found) = pick(&library) {
                        return Ok(found);
                    }
                }
                self.enabled_loaded(&|_| false)
                    .iter()
                    .find_map(pick)
                    .ok_or_else(|| FindError::Unknown(name.to_string()))
            }
        }
    }

    /// Every enabled driver that loads, sorted by name. A library that fails to
    /// load is reported once on stderr; the others still work.
    pub fn all(&self) -> Vec<Arc<Driver>> {
        self.all_but(|_| false)
    }

    /// [`Registry::all`] without the drivers whose names `skip` picks (they
    /// are not loaded): manifest entries by name, or without a manifest the
    /// libraries beside the executable by their conventional file name.
    pub fn all_but(&self, skip: impl Fn(&str) -> bool) -> Vec<Arc<Driver>> {
        let found = self
            .enabled_loaded(&skip)
            .into_iter()
            .flat_map(|library| library.formats)
            .collect();
        self.enabled_by_name(found, |d| &d.name)
    }

    /// Every enabled protocol driver that loads, sorted by name.
    pub fn all_protocols(&self) -> Vec<Arc<Protocol>> {
        let found = self
            .enabled_loaded(&|_| false)
            .into_iter()
            .flat_map(|library| library.protocols)
            .collect();
        self.enabled_by_name(found, |p| &p.name)
    }

    /// The enabled libraries that load (see [`Registry::all_but`] for
    /// `skip`); a library that fails is reported once on stderr.
    fn enabled_loaded(&self, skip: &dyn Fn(&str) -> bool) -> Vec<Library> {
        let mut loaded = Vec::new();
        for (path, sha) in self.enabled_libraries(skip) {
            let first = !self.attempted(&path);
            match self.load(&path, sha.as_deref()) {
                Ok(library) => loaded.push(library),
                Err(message) if first => errln!("{}: {message}", crate::cli::program()),
                Err(_) => {}
            }
        }
        loaded
    }

    /// `found` without the drivers the manifest does not enable by name,
    /// sorted by name, one per name.
    fn enabled_by_name<T>(&self, mut found: Vec<Arc<T>>, name: impl Fn(&T) -> &str) -> Vec<Arc<T>> {
        if let Some(manifest) = &self.manifest {
            found.retain(|d| {
                manifest
                    .drivers
                    .iter()
                    .any(|entry| entry.enabled && entry.name == name(d))
            });
        }
        found.sort_by(|a, b| name(a).cmp(name(b)));
        found.dedup_by(|a, b| name(a) == name(b));
        found
    }

    /// Every driver the manifest (with its drop-ins) lists, or without one
    /// every library beside the executable, with what loading it gave;
    /// disabled entries are not loaded.
    pub fn listing(&self) -> Vec<Listed> {
        let mut list = Vec::new();
        match &self.manifest {
            Some(manifest) => {
                for entry in &manifest.drivers {
                    let library = manifest.library_path(entry);
                    let status = if !entry.enabled {
                        Status::Disabled
                    } else {
                        match self.load_reason(&library, entry.sha256.as_deref()) {
                            Ok(loaded) => entry_status(&loaded, &entry.name),
                            Err(reason) => Status::Failed(reason),
                        }
                    };
                    list.push(Listed {
                        name: entry.name.clone(),
                        library,
                        source: Some(entry.source.clone()),
                        status,
                    });
                }
            }
            None => {
                for (library, _) in self.enabled_libraries(&|_| false) {
                    match self.load_reason(&library, None) {
                        Ok(loaded) => {
                            list.extend(loaded.formats.into_iter().map(|d| Listed {
                                name: d.name.clone(),
                                library: library.clone(),
                                source: None,
                                status: Status::Loaded(d),
                            }));
                            list.extend(loaded.protocols.into_iter().map(|p| Listed {
                                name: p.name.clone(),
                                library: library.clone(),
                                source: None,
                                status: Status::LoadedProtocol(p),
                            }));
                        }
                        Err(reason) => list.push(Listed {
                            name: String::new(),
                            library,
                            source: None,
                            status: Status::Failed(reason),
                        }),
                    }
                }
            }
        }
        list
    }

    /// Names of the drivers the manifest lists but disables, with the file
    /// that disables each.
    pub fn disabled(&self) -> Vec<(String, PathBuf)> {
        self.manifest
            .iter()
            .flat_map(|m| m.drivers.iter())
            .filter(|d| !d.enabled)
            .map(|d| (d.name.clone(), d.source.clone()))
            .collect()
    }

    fn enabled_libraries(&self, skip: &dyn Fn(&str) -> bool) -> Vec<(PathBuf, Option<String>)> {
        match &self.manifest {
            Some(manifest) => manifest
                .drivers
                .iter()
                .filter(|d| d.enabled && !skip(&d.name))
                .map(|d| (manifest.library_path(d), d.sha256.clone()))
                .collect(),
            None => {
                let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.exe_dir)
                    .map(|dir| {
                        dir.filter_map(|e| e.ok())
                            .map(|e| e.path())
                            .filter(|p| {
                                // libqimg_<format>.so, by convention named for
                                // the format it holds.
                                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                                    n.strip_prefix(LIBRARY_PREFIX)
                                        .and_then(|n| n.strip_suffix(LIBRARY_SUFFIX))
                                        .is_some_and(|format| !skip(format))
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

    /// True once loading the library at `path` was tried (and reported).
    fn attempted(&self, path: &Path) -> bool {
        let libraries = lock(&self.libraries);
        libraries.contains_key(path)
    }

    /// Loads a library once; an error is one line naming the file.
    fn load(&self, path: &Path, sha256: Option<&str>) -> LoadResult {
        self.load_reason(path, sha256).map_err(|reason| {
            format!(
                "could not load driver library '{}': {reason}",
                path.display()
            )
        })
    }

    /// Loads a library once; an error is the bare reason.
    fn load_reason(&self, path: &Path, sha256: Option<&str>) -> LoadResult {
        let mut libraries = lock(&self.libraries);
        if let Some(result) = libraries.get(path) {
            return result.clone();
        }
        let result = load_library(path, sha256);
        libraries.insert(path.to_path_buf(), result.clone());
        result
    }
}

/// What the manifest entry `name` gives from a loaded library.
fn entry_status(library: &Library, name: &str) -> Status {
    if let Some(driver) = library.formats.iter().find(|d| d.name == name) {
        return Status::Loaded(driver.clone());
    }
    if let Some(protocol) = library.protocols.iter().find(|p| p.name == name) {
        return Status::LoadedProtocol(protocol.clone());
    }
    Status::Failed(format!("the library provides no driver '{name}'"))
}

fn load_library(path: &Path, sha256: Option<&str>) -> LoadResult {
    let io = |e: std::io::Error| qimg_driver_api::error::io_message(&e);
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.len() == 0 {
        return Err("empty file, not a shared library".to_string());
    }
    let header = match sha256 {
        // The pinned bytes themselves are loaded, from a sealed copy in
        // memory: the file cannot change between the check and the load.
        // (Such a library cannot find companions through $ORIGIN.)
        Some(pin) => {
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            (&file).read_to_end(&mut bytes).map_err(io)?;
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
            let sealed = sealed_copy(&bytes).map_err(io)?;
            let through = PathBuf::from(format!("/proc/self/fd/{}", sealed.as_raw_fd()));
            let header = lib_header_from_path(&through).map_err(|e| library_error(&through, &e))?;
            // The copy stays open for the life of the process: the dynamic
            // loader knows the library by that /proc name, and a reused
            // descriptor number would make the next library's name match
            // this one (dlopen would then hand back this library for it).
            std::mem::forget(sealed);
            header
        }
        // An absolute path, so that the dynamic loader never searches its
        // own directories for a bare name.
        None => {
            let absolute = std::path::absolute(path).map_err(io)?;
            lib_header_from_path(&absolute).map_err(|e| library_error(&absolute, &e))?
        }
    };
    let api = api_version(header.version_strings().version.as_str())?;
    check_layout(header, &api)?;
    // SAFETY: the layout was checked just above, in the direction that lets
    // an older library's prefix types (vtables, root module) be shorter than
    // ours; the fields it lacks are never read (see `Driver::abi_minor`).
    let module = unsafe { header.unchecked_layout::<DriverLibRef>() }.map_err(|e| {
        format!(
            "its root module failed to load: {}",
            short_reason(&e.to_string())
        )
    })?;
    let version = module.abi_version();
    let (major, minor) = (version >> 16, version & 0xffff);
    if major != ABI_MAJOR || minor > ABI_MINOR {
        return Err(newer_abi(major, minor));
    }
    let drivers = match module.try_drivers().filter(|_| minor >= 3) {
        Some(try_drivers) => try_drivers()
            .into_result()
            .map_err(|e| e.message.to_string())?,
        None => (module.drivers())(),
    };
    let package = module
        .package()
        .filter(|_| minor >= 3)
        .map(|p| p.as_str().to_string());
    let mut loaded = Library::default();
    for api_box in drivers {
        let description = describe(&api_box, minor)?;
        loaded.formats.push(Arc::new(Driver {
            name: description.name.clone(),
            caps: description.capabilities,
            description,
            api: api_box,
            abi_minor: minor,
            api_version: api.label.clone(),
            package: package.clone(),
        }));
    }
    let protocols = match module.try_protocols().filter(|_| minor >= 6) {
        Some(try_protocols) => try_protocols()
            .into_result()
            .map_err(|e| e.message.to_string())?,
        None => Default::default(),
    };
    for api_box in protocols {
        loaded.protocols.push(Arc::new(Protocol {
            name: api_box.name().into(),
            description: api_box.description().into(),
            caps: api_box.capabilities(),
            schemes: api_box.schemes().lines().map(str::to_string).collect(),
            api: api_box,
            abi_minor: minor,
            api_version: api.label.clone(),
            package: package.clone(),
        }));
    }
    Ok(loaded)
}

/// The version of driver-api a library was built against, from the package
/// version abi_stable records in it.
struct ApiVersion {
    /// As the library records it (`1.3.0`; `0.1.0` for every library built
    /// before driver-api had its own version, which covers ABI 1.0 to 1.2).
    label: String,
    /// True for those early libraries.
    legacy: bool,
}

/// Reads the library's driver-api version and refuses a newer minor or
/// another major before anything of the library runs.
fn api_version(text: &str) -> Result<ApiVersion, String> {
    let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return Err(format!("unreadable driver-api version '{text}'"));
    };
    // driver-api took the workspace's version, 0.1.x, up to ABI 1.2.
    let legacy = major == 0 && minor == 1;
    if !legacy && (major != ABI_MAJOR || minor > ABI_MINOR) {
        return Err(newer_abi(major, minor));
    }
    Ok(ApiVersion {
        label: text.to_string(),
        legacy,
    })
}

fn newer_abi(major: u32, minor: u32) -> String {
    let hint = if major == ABI_MAJOR {
        "; it needs a newer qimg"
    } else {
        ""
    };
    format!(
        "built for driver ABI {major}.{minor}, this qimg loads {ABI_MAJOR}.0 to {ABI_MAJOR}.{ABI_MINOR}{hint}"
    )
}

/// Checks the library's root module layout against ours with the library's
/// as the interface: every type must match, but prefix types (vtables and
/// the root module) may be shorter in the library, which is what an older
/// minor version is. abi_stable's own check runs the other way round and so
/// refuses every older driver ("too many fields").
fn check_layout(header: &LibHeader, api: &ApiVersion) -> Result<(), String> {
    let Some(theirs) = header.layout() else {
        return Err("it carries no type layout to check".to_string());
    };
    let ours = <DriverLibRef as StableAbi>::LAYOUT;
    // Each library is checked on its own: abi_stable's process-wide
    // globals would merge the prefix types of every library checked so far,
    // and a 1.4 library loaded after a shorter 1.3 one would then have
    // "too many fields".
    let globals = CheckingGlobals::new();
    let Err(errors) = check_layout_compatibility_with_globals(theirs, ours, &globals) else {
        return Ok(());
    };
    // Early libraries differ only in the package version recorded with each
    // driver-api type (0.1.0, the workspace's version then).
    let only_versions = errors
        .errors
        .iter()
        .flat_map(|e| e.errs.iter())
        .all(|e| matches!(e, AbiInstability::PackageVersion(_)));
    if api.legacy && only_versions {
        return Ok(());
    }
    Err(format!(
        "its types do not match this qimg's driver ABI {ABI_MAJOR}.{ABI_MINOR}: {}",
        short_reason(&errors.to_string())
    ))
}

/// An anonymous, sealed in-memory file holding `bytes`, for loading exactly
/// the bytes that were checked.
fn sealed_copy(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the
    // returned descriptor is owned by the File below.
    let fd = unsafe {
        libc::memfd_create(
            c"qimg-driver".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// The driver's self-description: one checked call from ABI 1.3 on, the
/// plain methods before.
fn describe(api: &FormatDriverBox, minor: u32) -> Result<DriverDescription, String> {
    if minor >= 3 {
        let text = api
            .describe()
            .into_result()
            .map_err(|e| e.message.to_string())?;
        return serde_json::from_str(&text).map_err(|e| format!("bad driver description: {e}"));
    }
    let name: String = api.name().into();
    if name.is_empty() {
        return Err("a driver has no name".to_string());
    }
    Ok(DriverDescription {
        name,
        description: api.description().into(),
        capabilities: api.capabilities(),
        create_options: serde_json::from_str(api.create_options().as_str()).unwrap_or_default(),
        amend_options: if minor >= 2 {
            serde_json::from_str(api.amend_options().as_str()).unwrap_or_default()
        } else {
            Vec::new()
        },
    })
}

/// One line for an error abi_stable gave while opening a library.
fn library_error(path: &Path, e: &LibraryError) -> String {
    match e {
        LibraryError::OpenError { err, .. } => {
            // dlopen's text starts with the path, which the caller prints.
            let text = err.to_string();
            let prefix = format!("{}: ", path.display());
            let reason = text.rsplit_once(&prefix).map_or(text.as_str(), |(_, r)| r);
            format!("not a loadable shared library ({})", reason.trim())
        }
        LibraryError::GetSymbolError { .. } => {
            "not a qimg driver library (it exports no qimg driver module)".to_string()
        }
        LibraryError::InvalidAbiHeader(_) => {
            "built with an abi_stable version this qimg cannot load (it needs 0.11)".to_string()
        }
        other => {
            let reason = short_reason(&other.to_string());
            if reason.is_empty() {
                format!("{other:?}")
            } else {
                reason
            }
        }
    }
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
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .to_string()
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
    use super::{api_version, short_reason};

    #[test]
    fn api_versions_older_or_equal_load_newer_are_refused() {
        assert!(api_version("0.1.0").is_ok_and(|v| v.legacy));
        assert!(api_version("1.0.0").is_ok_and(|v| !v.legacy));
        assert!(api_version("1.3.7").is_ok());
        assert!(api_version("1.4.0").is_ok());
        assert!(api_version("1.5.0").is_ok());
        assert!(api_version("1.6.0").is_ok());
        assert!(api_version("1.7.0").is_ok());
        assert!(api_version("1.8.0").is_ok());
        assert_eq!(
            api_version("1.9.0").err().as_deref(),
            Some("built for driver ABI 1.9, this qimg loads 1.0 to 1.8; it needs a newer qimg")
        );
        assert_eq!(
            api_version("2.0.0").err().as_deref(),
            Some("built for driver ABI 2.0, this qimg loads 1.0 to 1.8")
        );
        assert!(api_version("0.2.0").is_err());
        assert_eq!(
            api_version("x.y").err().as_deref(),
            Some("unreadable driver-api version 'x.y'")
        );
    }

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
