//! The images above one being opened in a backing chain: how deep it is,
//! which files they are (by device and inode, so that a hard link or a
//! second name of a file is still the same file), and a chain fault met
//! below, which every layer passes up as it is instead of wrapping it once
//! per layer.

use super::spec::backing_loop;
use crate::sync::lock;
use qimg_driver_api::DriverError;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

/// Backing chains deeper than this are refused. qemu-img opens chains of
/// 2000 images; every layer costs an open file and its driver's caches.
pub const MAX_CHAIN_DEPTH: usize = 4096;

/// A file's identity: its device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of the file at `path`, if it can be read.
    fn of(path: &str) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// One image of the chain and the images above it.
#[derive(Debug)]
struct Layer {
    id: Option<FileId>,
    above: Option<Arc<Layer>>,
    depth: usize,
}

/// The part of a chain already opened above the image being opened.
#[derive(Clone, Debug, Default)]
pub struct Lineage {
    top: Option<Arc<Layer>>,
    fault: Arc<Mutex<Option<String>>>,
}

impl Lineage {
    /// The lineage of the image at `path` below the images of `self`.
    pub fn below(&self, path: &str) -> Lineage {
        Lineage {
            top: Some(Arc::new(Layer {
                id: FileId::of(path),
                depth: self.top.as_ref().map_or(0, |t| t.depth + 1),
                above: self.top.clone(),
            })),
            fault: self.fault.clone(),
        }
    }

    /// The depth of the image this lineage ends with (0 for a chain's top).
    pub fn depth(&self) -> usize {
        self.top.as_ref().map_or(0, |t| t.depth)
    }

    /// Checks that the backing file `name` (resolved as the driver named it)
    /// may be opened below this lineage: it is not one of the images already
    /// in it, and the chain does not grow past [`MAX_CHAIN_DEPTH`]. A refusal
    /// is recorded so that the layers above report it unwrapped.
    pub fn admit(&self, name: &str) -> Result<(), DriverError> {
        let refusal = if self.depth() + 1 >= MAX_CHAIN_DEPTH {
            Some(format!(
                "Backing chain is deeper than {MAX_CHAIN_DEPTH} images"
            ))
        } else {
            FileId::of(name)
                .filter(|id| self.holds(*id))
                .map(|_| backing_loop(name))
        };
        match refusal {
            Some(message) => {
                *lock(&self.fault) = Some(message.clone());
                Err(DriverError::invalid_image(message))
            }
            None => Ok(()),
        }
    }

    /// The refusal [`Lineage::admit`] recorded somewhere below, if any.
    pub fn fault(&self) -> Option<DriverError> {
        lock(&self.fault).clone().map(DriverError::invalid_image)
    }

    fn holds(&self, id: FileId) -> bool {
        let mut layer = self.top.as_deref();
        while let Some(l) = layer {
            if l.id == Some(id) {
                return true;
            }
            layer = l.above.as_deref();
        }
        false
    }
}

impl Drop for Layer {
    /// Unlinks the layers above one at a time: dropping a chain of thousands
    /// of layers recursively could exhaust the stack.
    fn drop(&mut self) {
        let mut above = self.above.take();
        while let Some(layer) = above {
            match Arc::try_unwrap(layer) {
                Ok(mut l) => above = l.above.take(),
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_name_of_a_file_is_the_same_image() {
        let dir = std::env::temp_dir().join(format!("qimg-lineage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a");
        let link = dir.join("b");
        std::fs::write(&a, b"x").unwrap();
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&a, &link).unwrap();
        let top = Lineage::default().below(a.to_str().unwrap());
        let err = top.admit(link.to_str().unwrap()).unwrap_err();
        assert!(err.message.ends_with("creates an infinite loop."));
        assert!(top.fault().is_some());
        let other = dir.join("c");
        std::fs::write(&other, b"y").unwrap();
        assert!(Lineage::default()
            .below(a.to_str().unwrap())
            .admit(other.to_str().unwrap())
            .is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn depth_is_bounded() {
        let mut lineage = Lineage::default();
        for _ in 0..MAX_CHAIN_DEPTH - 1 {
            lineage = lineage.below("/nonexistent/qimg");
        }
        assert_eq!(lineage.depth(), MAX_CHAIN_DEPTH - 2);
        assert!(lineage.admit("/nonexistent/qimg").is_ok());
        let deeper = lineage.below("/nonexistent/qimg");
        assert!(deeper.admit("/nonexistent/qimg").is_err());
        drop(lineage);
        drop(deeper);
    }
}
