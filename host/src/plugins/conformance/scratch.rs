//! The scratch directory a run makes its image files in, and their names.

use super::outcome::Failure;
use std::path::PathBuf;

/// A fresh directory under the system's temporary directory, removed on drop.
pub(super) struct Scratch {
    /// The directory.
    pub(super) dir: PathBuf,
    /// The extension of the files made in it: the format's name, as users
    /// name their images (some formats probe by it).
    extension: String,
}

impl Scratch {
    /// Creates `qimg-conformance-PID-N-FORMAT` under the temporary directory.
    pub(super) fn new(format: &str) -> std::io::Result<Scratch> {
        let tag: String = format
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let base = std::env::temp_dir();
        for n in 0..100 {
            let dir = base.join(format!("qimg-conformance-{}-{n}-{tag}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    return Ok(Scratch {
                        dir,
                        extension: tag,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "every candidate name is taken",
        ))
    }

    /// The path of file `stem` (with the format as its extension) inside
    /// the directory, as the block layer takes it.
    pub(super) fn path(&self, stem: &str) -> Result<String, Failure> {
        let path = self.dir.join(format!("{stem}.{}", self.extension));
        path.to_str()
            .map(str::to_string)
            .ok_or_else(|| Failure::Setup {
                what: format!("scratch file {}", path.display()),
                error: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not UTF-8"),
            })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
