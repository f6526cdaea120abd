//! Byte streams a backend hands out or takes in (backup exports, logs, the
//! console log, files inside instances), without buffering them whole.

use std::pin::Pin;

use axum::body::Bytes;
use futures::Stream;
use serde::Serialize;
use utoipa::ToSchema;

/// A body read or written chunk by chunk.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Content the backend streams out.
pub struct Download {
    /// The backend's media type, when it gave one.
    pub content_type: Option<String>,
    /// The length in bytes, when known in advance.
    pub content_length: Option<u64>,
    pub stream: ByteStream,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("content_type", &self.content_type)
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

/// Owner, permissions and kind of a path inside an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileMeta {
    /// `file`, `directory` or `symlink`.
    pub kind: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits (e.g. `0o644`).
    pub mode: Option<u32>,
}

/// What a path inside an instance holds.
#[derive(Debug)]
pub enum FilePull {
    /// A file's content (for a symlink: its target).
    File { meta: FileMeta, content: Download },
    /// A directory's entry names.
    Directory {
        meta: FileMeta,
        entries: Vec<String>,
    },
}

/// Ownership and permissions for a file being written (unset: the backend's
/// defaults for a new file, unchanged for an existing one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FilePush {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits (at most `0o7777`).
    pub mode: Option<u32>,
}

/// `GET /api/v1/instances/{name}/files?path=` on a directory.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DirectoryListing {
    /// Always `directory`.
    #[serde(rename = "type")]
    #[schema(example = "directory")]
    pub kind: String,
    #[schema(example = "/etc")]
    pub path: String,
    /// Entry names (not paths), as the backend lists them.
    #[schema(example = json!(["hostname", "hosts", "passwd"]))]
    pub entries: Vec<String>,
}
