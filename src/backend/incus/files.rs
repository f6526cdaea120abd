//! Logs, the console log and files of Incus instances, streamed both ways
//! (never buffered whole), plus the stream helpers backups.rs shares.

use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::Method;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::IncusBackend;
use super::instances::last_segment;
use crate::backend::types::{ByteStream, Download, FileMeta, FilePull, FilePush};
use crate::backend::{BackendError, Files, Missing, ReportMissing};
use crate::names::{InstanceName, LogFileName, ProjectName};

/// How long one transfer (backup export, file push or pull) may take in all:
/// `INCUS_TIMEOUT` is for API calls, a transfer lasts as long as its data does.
pub(super) const TRANSFER_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// How long Incus may take to start answering a file pull.
const PULL_OPEN_TIMEOUT: Duration = Duration::from_secs(8);

/// A transfer that moves no byte for this long is given up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

pub(super) fn project_query(project: &str) -> [(&'static str, &str); 1] {
    [("project", project)]
}

/// `stream`, ended with a `TimedOut` error when no chunk arrives for `idle`,
/// and ended for good after its first error.
pub(super) fn idle_limited<S, E>(stream: S, idle: Duration) -> ByteStream
where
    S: Stream<Item = Result<axum::body::Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = Box::pin(stream);
    Box::pin(
        futures::stream::unfold(Some(stream), move |state| async move {
            let mut s = state?;
            match tokio::time::timeout(idle, s.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(s))),
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no data for {} s", idle.as_secs()),
                    )),
                    None,
                )),
            }
        })
        // Ends for good: a body polled once more after its end must not
        // panic (unfold does; seen on console and log reads).
        .fuse(),
    )
}

/// A successful streamed answer as a `Download`.
pub(super) fn download(resp: reqwest::Response) -> Download {
    let headers = resp.headers();
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Download {
        content_type,
        content_length,
        stream: idle_limited(resp.bytes_stream(), IDLE_TIMEOUT),
    }
}

/// Owner, mode and kind from Incus's `X-Incus-*` answer headers.
fn file_meta(headers: &HeaderMap) -> FileMeta {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    FileMeta {
        kind: get("x-incus-type").unwrap_or("file").to_owned(),
        uid: get("x-incus-uid").and_then(|v| v.parse().ok()),
        gid: get("x-incus-gid").and_then(|v| v.parse().ok()),
        // Incus writes the mode in octal (`0644`).
        mode: get("x-incus-mode").and_then(|v| u32::from_str_radix(v, 8).ok()),
    }
}

fn header(name: &'static str, value: String) -> Result<(HeaderName, HeaderValue), BackendError> {
    let value = HeaderValue::from_str(&value).map_err(anyhow::Error::from)?;
    Ok((HeaderName::from_static(name), value))
}

#[async_trait::async_trait]
impl Files for IncusBackend {
    async fn list_instance_logs(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
    ) -> Result<Vec<String>, BackendError> {
        let (urls, _): (Vec<String>, _) = self
            .client
            .query_struct(&["instances", instance, "logs"], &project_query(project))
            .await
            .missing(|| Missing::instance(instance))?;
        Ok(urls.iter().map(|u| last_segment(u)).collect())
    }

    async fn get_instance_log(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        file: &LogFileName,
    ) -> Result<Download, BackendError> {
        let resp = self
            .client
            .raw_stream(
                Method::GET,
                &["instances", instance, "logs", file.as_str()],
                &project_query(project),
                HeaderMap::new(),
                None,
                TRANSFER_TIMEOUT,
            )
            .await
            .missing(|| Missing::Log {
                instance: instance.to_string(),
                file: file.to_string(),
            })?;
        Ok(download(resp))
    }

    async fn console_log(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
    ) -> Result<Download, BackendError> {
        let resp = self
            .client
            .raw_stream(
                Method::GET,
                &["instances", instance, "console"],
                &[("project", project), ("type", "log")],
                HeaderMap::new(),
                None,
                TRANSFER_TIMEOUT,
            )
            .await
            .missing(|| Missing::instance(instance))?;
        Ok(download(resp))
    }

    async fn pull_file(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        path: &str,
    ) -> Result<FilePull, BackendError> {
        let segments = ["instances", instance, "files"];
        let query = [("project", project.as_str()), ("path", path)];
        let open = self.client.raw_stream(
            Method::GET,
            &segments,
            &query,
            HeaderMap::new(),
            None,
            TRANSFER_TIMEOUT,
        );
        // Incus opens a FIFO like a file and waits for a writer before it
        // answers (its HEAD calls a FIFO or a device `file` too, so there is
        // nothing to check first): bound the wait for the answer instead.
        let resp = tokio::time::timeout(PULL_OPEN_TIMEOUT, open)
            .await
            .map_err(|_| {
                // The file (a FIFO), or the instance (busy with another
                // operation), is in a state that keeps it from opening.
                BackendError::Conflict(format!(
                    "{path} did not open within {} s: a FIFO (or another file that waits \
                     on open) is not transferred, or the instance is busy",
                    PULL_OPEN_TIMEOUT.as_secs()
                ))
            })?
            .missing(|| Missing::File {
                instance: instance.to_string(),
                path: path.to_owned(),
            })?;
        let meta = file_meta(resp.headers());
        if meta.kind != "directory" {
            return Ok(FilePull::File {
                meta,
                content: download(resp),
            });
        }
        // A directory comes as a sync envelope listing the entry names.
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| BackendError::Upstream(format!("reading a directory listing: {e}")))?;
        let envelope: super::client::Envelope = serde_json::from_slice(&bytes)
            .map_err(|e| BackendError::Upstream(format!("unexpected directory listing: {e}")))?;
        let entries: Vec<String> = envelope
            .metadata()
            .map_err(|e| BackendError::Upstream(format!("unexpected directory listing: {e}")))?;
        Ok(FilePull::Directory { meta, entries })
    }

    async fn push_file(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        path: &str,
        opts: FilePush,
        body: ByteStream,
    ) -> Result<(), BackendError> {
        let mut headers = HeaderMap::new();
        // Not a form: Incus would read a form-encoded body as parameters.
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        for (name, value) in [
            opts.uid.map(|v| ("x-incus-uid", v.to_string())),
            opts.gid.map(|v| ("x-incus-gid", v.to_string())),
            opts.mode.map(|v| ("x-incus-mode", format!("{v:04o}"))),
        ]
        .into_iter()
        .flatten()
        {
            let (name, value) = header(name, value)?;
            headers.insert(name, value);
        }
        headers.insert(
            HeaderName::from_static("x-incus-type"),
            HeaderValue::from_static("file"),
        );
        headers.insert(
            HeaderName::from_static("x-incus-write"),
            HeaderValue::from_static("overwrite"),
        );
        self.client
            .raw_stream(
                Method::POST,
                &["instances", instance, "files"],
                &[("project", project), ("path", path)],
                headers,
                Some(reqwest::Body::wrap_stream(idle_limited(body, IDLE_TIMEOUT))),
                TRANSFER_TIMEOUT,
            )
            .await
            .missing(|| Missing::FileDirectory {
                instance: instance.to_string(),
                path: path.to_owned(),
            })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incus_file_headers_are_read() {
        let mut h = HeaderMap::new();
        h.insert("x-incus-type", HeaderValue::from_static("file"));
        h.insert("x-incus-uid", HeaderValue::from_static("1000"));
        h.insert("x-incus-gid", HeaderValue::from_static("100"));
        h.insert("x-incus-mode", HeaderValue::from_static("0640"));
        assert_eq!(
            file_meta(&h),
            FileMeta {
                kind: "file".into(),
                uid: Some(1000),
                gid: Some(100),
                mode: Some(0o640),
            }
        );
    }

    #[tokio::test]
    async fn a_stalled_stream_ends_with_an_error() {
        let stalled = futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        let mut s = idle_limited(stalled, Duration::from_millis(20));
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(s.next().await.is_none(), "nothing after the error");
    }
}
