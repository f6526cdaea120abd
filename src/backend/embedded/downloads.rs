//! Files of the embedded backend handed out as byte streams (logs, backup
//! tarballs, image exports), read asynchronously in chunks, never whole.

use std::path::Path;

use crate::backend::types::Download;
use crate::backend::{BackendError, Missing};
use futures::StreamExt;

/// The file at `path` as a download; `missing` is what its absence means.
pub async fn download_file(
    path: &Path,
    content_type: &str,
    missing: impl FnOnce() -> Missing,
) -> Result<Download, BackendError> {
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BackendError::NotFound(missing()));
        }
        Err(e) => {
            return Err(BackendError::Internal(anyhow::anyhow!(
                "opening a log: {e}"
            )));
        }
    };
    let len = file.metadata().await.ok().map(|m| m.len());
    Ok(Download {
        content_type: Some(content_type.to_owned()),
        content_length: len,
        stream: Box::pin(file_stream(file)),
    })
}

/// A file's bytes as a stream of 64 KiB chunks, read asynchronously.
pub fn file_stream(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send {
    futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf.into()), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
    .fuse()
}
