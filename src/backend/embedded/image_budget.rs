//! `MAX_IMAGE_BYTES` as an image is counted: what is left of it for the
//! rest of the image (downloads, unpacked sizes, a VM disk's virtual size,
//! one after the other), and the refusal that names the setting.

use crate::backend::{BackendError, image_too_large};

/// What is left of `MAX_IMAGE_BYTES` for the rest of an image, as its
/// parts are counted (downloads, then unpacked sizes) one after the other.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub left: u64,
    /// The setting, named in refusals.
    pub max: u64,
}

impl Budget {
    pub fn new(max: u64) -> Self {
        Self { left: max, max }
    }

    /// What is left once `n` bytes are counted.
    pub fn after(self, n: u64) -> Self {
        Self {
            left: self.left.saturating_sub(n),
            ..self
        }
    }

    /// The refusal of `what` (`image_too_large`, naming the setting).
    pub fn refuse(self, what: &str) -> BackendError {
        image_too_large(what, self.max)
    }
}
