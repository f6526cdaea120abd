//! Image uploads (`POST /api/v1/images/import`): the multipart form read
//! part by part, its files spooled to disk (never held in memory) and
//! counted against `MAX_IMAGE_BYTES`, recognised by their first bytes, and
//! fingerprinted on the way in. The handler gets an [`ImageUpload`] for the
//! backend whose files are removed when it is dropped.

use std::path::{Path as FsPath, PathBuf};

use axum::extract::multipart::{Field, Multipart, MultipartError, MultipartRejection};
use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::image_too_large;
use crate::backend::types::ImageUpload;
use crate::error::{ApiError, ApiResult};
use crate::names::ImageAliasName;

/// The largest upload `POST /images/import` accepts (both files together;
/// the route's body limit).
pub const IMPORT_MAX_BYTES: usize = 8 << 30;

/// Text parts of an upload (`alias`, `public`) are short.
const TEXT_PART_MAX: usize = 1024;

/// How many leading bytes identify an archive (a plain tar's `ustar` ends at 262).
const HEAD_LEN: usize = 263;

/// What an uploaded file is, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// A tarball, plain or compressed.
    Tarball,
    Squashfs,
    /// A VM disk (qcow2, vmdk).
    Disk,
}

/// Recognises what Incus can unpack, as Incus's own `DetectCompressionFile`
/// does, so that an upload it would refuse is answered 422 up front.
fn file_kind(head: &[u8]) -> Option<FileKind> {
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(b"BZ")
        || starts(&[0x1f, 0x8b])
        || (head.len() >= 5 && &head[1..5] == b"7zXZ")
        || starts(&[0x5d, 0x00, 0x00])
        || starts(&[0x28, 0xb5, 0x2f, 0xfd])
        || starts(&[0x04, 0x22, 0x4d, 0x18])
        || head.get(257..262) == Some(b"ustar".as_slice())
    {
        Some(FileKind::Tarball)
    } else if starts(b"hsqs") {
        Some(FileKind::Squashfs)
    } else if starts(b"QFI") || starts(b"KDMV") {
        Some(FileKind::Disk)
    } else {
        None
    }
}

/// A spooled upload: what the backend imports. Its files are removed when
/// it is dropped (also when the request fails or the client goes away).
pub struct SpooledImage {
    pub upload: ImageUpload,
    _spool: Spool,
}

/// Reads the upload form into `dir`: a `metadata` part (tarball holding
/// `metadata.yaml`) and a `rootfs` part (rootfs tarball, or a qcow2 disk for
/// a VM; also `rootfs.img`), up to `max` bytes together, plus optional
/// `alias` (repeatable) and `public` text parts. A refused form is read to
/// its end first (bounded), and leaves nothing in `dir` once this returns.
pub async fn receive(
    multipart: Result<Multipart, MultipartRejection>,
    dir: &FsPath,
    max: u64,
) -> ApiResult<SpooledImage> {
    let mut multipart = multipart.map_err(|_| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a `multipart/form-data` body with parts `metadata` and `rootfs`",
        )
    })?;
    tokio::fs::create_dir_all(dir).await.map_err(spool_error)?;
    let mut form = Form::new(dir, max);
    if let Err(e) = form.read(&mut multipart).await {
        // Read what the client is still sending before answering: closing
        // the connection under a client mid-upload makes it see a reset
        // instead of this error.
        drain(&mut multipart).await;
        return Err(e);
    }
    form.finish().await
}

/// The form as read so far.
struct Form<'a> {
    dir: &'a FsPath,
    max: u64,
    spool: Spool,
    /// Bytes of both files so far.
    spooled: u64,
    /// The fingerprint is SHA-256 over metadata then rootfs: computed on the
    /// way in when the parts come in that order (as Incus's client sends them).
    hasher: Sha256,
    in_order: bool,
    metadata: Option<SpooledFile>,
    rootfs: Option<SpooledFile>,
    virtual_machine: bool,
    aliases: Vec<String>,
    public: bool,
}

impl<'a> Form<'a> {
    fn new(dir: &'a FsPath, max: u64) -> Self {
        Self {
            dir,
            max,
            spool: Spool(Vec::new()),
            spooled: 0,
            hasher: Sha256::new(),
            in_order: true,
            metadata: None,
            rootfs: None,
            virtual_machine: false,
            aliases: Vec::new(),
            public: false,
        }
    }

    async fn read(&mut self, multipart: &mut Multipart) -> ApiResult<()> {
        while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
            let part = field.name().unwrap_or_default().to_owned();
            match part.as_str() {
                "metadata" | "rootfs" | "rootfs.img" => self.file(&mut field, &part).await?,
                "alias" => {
                    let text = text_part(&mut field, "alias").await?;
                    let name = ImageAliasName::parse(&text)
                        .map_err(|e| ApiError::invalid_field("alias", e))?;
                    self.aliases.push(name.as_str().to_owned());
                }
                "public" => {
                    let text = text_part(&mut field, "public").await?;
                    self.public = match text.trim() {
                        "true" | "1" => true,
                        "false" | "0" | "" => false,
                        _ => {
                            return Err(ApiError::invalid_field(
                                "public",
                                "the `public` part must be `true` or `false`",
                            ));
                        }
                    };
                }
                other => {
                    return Err(ApiError::invalid_field(
                        other,
                        format!(
                            "unknown part `{other}`; expected `metadata`, `rootfs`, `alias` or `public`"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A file part, spooled and recognised.
    async fn file(&mut self, field: &mut Field<'_>, part: &str) -> ApiResult<()> {
        let is_meta = part == "metadata";
        if (is_meta && self.metadata.is_some()) || (!is_meta && self.rootfs.is_some()) {
            return Err(ApiError::invalid_field(
                part,
                format!("the `{part}` part is given twice"),
            ));
        }
        let path = self
            .dir
            .join(format!("image-{}.{part}", uuid::Uuid::new_v4().simple()));
        self.spool.0.push(path.clone());
        let hash = if is_meta {
            self.in_order &= self.rootfs.is_none();
            Some(&mut self.hasher)
        } else {
            self.in_order &= self.metadata.is_some();
            self.in_order.then_some(&mut self.hasher)
        };
        let room = self.max - self.spooled;
        let (size, head) = spool_part(field, &path, hash, room, self.max).await?;
        self.spooled += size;
        let fallback = if is_meta { "metadata.tar" } else { "rootfs" };
        let file = SpooledFile {
            path,
            size,
            name: clean_file_name(field.file_name(), fallback),
        };
        let kind = file_kind(&head);
        if is_meta {
            if size > 0 && kind != Some(FileKind::Tarball) {
                return Err(ApiError::invalid_field(
                    "metadata",
                    "the `metadata` part is not a tarball (plain, gzip, bzip2, xz, lzma, zstd or lz4)",
                ));
            }
            self.metadata = Some(file);
        } else {
            if size > 0 && kind.is_none() {
                return Err(ApiError::invalid_field(
                    part,
                    format!("the `{part}` part is neither a tarball, a squashfs nor a qcow2 disk"),
                ));
            }
            self.virtual_machine = part == "rootfs.img" || kind == Some(FileKind::Disk);
            self.rootfs = Some(file);
        }
        Ok(())
    }

    /// Both files there and not empty; the fingerprint.
    async fn finish(self) -> ApiResult<SpooledImage> {
        let Some(metadata) = self.metadata.filter(|m| m.size > 0) else {
            return Err(ApiError::invalid_field(
                "metadata",
                "the `metadata` part (a tarball holding metadata.yaml) is missing or empty",
            ));
        };
        let Some(rootfs) = self.rootfs.filter(|r| r.size > 0) else {
            return Err(ApiError::invalid_field(
                "rootfs",
                "the `rootfs` part (a rootfs tarball or qcow2 disk) is missing or empty",
            ));
        };
        let fingerprint = if self.in_order {
            hex::encode(self.hasher.finalize())
        } else {
            hash_files(&[&metadata.path, &rootfs.path]).await?
        };
        Ok(SpooledImage {
            upload: ImageUpload {
                metadata: metadata.path,
                metadata_size: metadata.size,
                metadata_name: metadata.name,
                rootfs: rootfs.path,
                rootfs_size: rootfs.size,
                rootfs_name: rootfs.name,
                virtual_machine: self.virtual_machine,
                fingerprint,
                aliases: self.aliases,
                public: self.public,
            },
            _spool: self.spool,
        })
    }
}

/// Spooled upload files, removed when dropped (also when the request fails
/// or the client goes away mid-upload).
struct Spool(Vec<PathBuf>);

impl Drop for Spool {
    fn drop(&mut self) {
        let paths = std::mem::take(&mut self.0);
        if paths.is_empty() {
            return;
        }
        let remove = move || {
            for p in &paths {
                let _ = std::fs::remove_file(p);
            }
        };
        // Gone before the answer is sent (a refused upload leaves nothing),
        // and as unlinking gigabytes can take a while, the worker says it
        // blocks so that other tasks move off it meanwhile.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(remove),
            _ => remove(),
        }
    }
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the upload is larger than {IMPORT_MAX_BYTES} bytes"),
        )
    } else {
        // A malformed body, or the client stopped sending: its side either way.
        ApiError::bad_request(
            "invalid_multipart",
            format!("the multipart body could not be read: {}", e.body_text()),
        )
    }
}

/// Reads and drops the rest of a multipart body (bounded in bytes and time).
async fn drain(multipart: &mut Multipart) {
    const MAX: usize = 256 * 1024 * 1024;
    let mut seen = 0;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Ok(Some(mut field)) = multipart.next_field().await {
            while let Ok(Some(chunk)) = field.chunk().await {
                seen += chunk.len();
                if seen > MAX {
                    return;
                }
            }
        }
    })
    .await;
}

fn spool_error(e: std::io::Error) -> ApiError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            "lxgate has no room left to receive the upload",
        )
        .with_source(e)
    } else {
        ApiError::internal(anyhow::anyhow!("spooling an image upload: {e}"))
    }
}

/// A file name safe to pass on (Incus records the rootfs one).
fn clean_file_name(name: Option<&str>, fallback: &str) -> String {
    let base = name
        .and_then(|n| n.rsplit(['/', '\\']).next())
        .unwrap_or_default();
    let clean: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(128)
        .collect();
    if clean.is_empty() || clean.chars().all(|c| c == '.') {
        fallback.to_owned()
    } else {
        clean
    }
}

/// Writes one file part to `path` chunk by chunk, feeding `hasher` when given.
/// Returns the size and the first bytes (to recognise a qcow2 disk). More
/// than `room` bytes (what the parts before left of `max`, `MAX_IMAGE_BYTES`)
/// is refused as soon as it has come in.
async fn spool_part(
    field: &mut Field<'_>,
    path: &FsPath,
    mut hasher: Option<&mut Sha256>,
    room: u64,
    max: u64,
) -> ApiResult<(u64, Vec<u8>)> {
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(spool_error)?;
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut size = 0u64;
    let mut head = Vec::with_capacity(HEAD_LEN);
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if head.len() < HEAD_LEN {
            let take = (HEAD_LEN - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&chunk);
        }
        size += chunk.len() as u64;
        if size > room {
            return Err(image_too_large("the upload", max).into());
        }
        out.write_all(&chunk).await.map_err(spool_error)?;
    }
    out.flush().await.map_err(spool_error)?;
    Ok((size, head))
}

/// A short text part, read whole.
async fn text_part(field: &mut Field<'_>, name: &str) -> ApiResult<String> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if buf.len() + chunk.len() > TEXT_PART_MAX {
            return Err(ApiError::invalid_field(
                name,
                format!("the `{name}` part is longer than {TEXT_PART_MAX} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf)
        .map_err(|_| ApiError::invalid_field(name, format!("the `{name}` part is not UTF-8")))
}

/// SHA-256 over files in order (when the parts did not arrive metadata first).
async fn hash_files(paths: &[&FsPath]) -> ApiResult<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    for p in paths {
        let mut f = tokio::fs::File::open(p).await.map_err(spool_error)?;
        loop {
            let n = f.read(&mut buf).await.map_err(spool_error)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(hex::encode(h.finalize()))
}

struct SpooledFile {
    path: PathBuf,
    size: u64,
    name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_recognised_by_their_first_bytes() {
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(file_kind(&tar), Some(FileKind::Tarball));
        assert_eq!(
            file_kind(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
            Some(FileKind::Tarball)
        );
        assert_eq!(file_kind(&[0x1f, 0x8b, 8]), Some(FileKind::Tarball));
        assert_eq!(file_kind(b"QFI\xfb\0\0\0\x03"), Some(FileKind::Disk));
        assert_eq!(file_kind(b"hsqs...."), Some(FileKind::Squashfs));
        assert_eq!(file_kind(b"garbage"), None);
        assert_eq!(file_kind(b""), None);
    }

    #[test]
    fn file_names_are_cleaned() {
        assert_eq!(
            clean_file_name(Some("../../x/rootfs.tar.xz"), "r"),
            "rootfs.tar.xz"
        );
        assert_eq!(clean_file_name(Some("a\"b;c.tar"), "r"), "abc.tar");
        assert_eq!(clean_file_name(Some(".."), "r"), "r");
        assert_eq!(clean_file_name(None, "r"), "r");
    }
}
