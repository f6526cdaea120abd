//! `/api/v1/images`: the image store (list, read, delete, copy from a remote
//! image server, upload) and image aliases.

use std::path::{Path as FsPath, PathBuf};

use axum::extract::State;
use axum::extract::multipart::{Field, Multipart, MultipartError, MultipartRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utoipa::{IntoParams, ToSchema};

use crate::api::operation::{OperationRef, OperationSlot, accepted};
use crate::api::resource::{
    ProjectListQuery, ProjectQuery, ProjectScoped, ProjectWaitQuery, project_scoped,
};
use crate::api::{Json, Page, Pagination, Path, Query};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::{
    Image, ImageAliasCreate, ImageAliasesEntry, ImageCopy, ImageUpload, Operation,
};
use crate::backend::{BackendError, ListScope, image_too_large};
use crate::error::{ApiError, ApiResult, Problem};
use crate::fetch::Fetcher;
use crate::names::{ImageAliasName, ImageFingerprint};

/// The largest upload `POST /images/import` accepts (both files together).
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

/// Backend 404s on an image path become `image_not_found`.
fn image_not_found(fp: &ImageFingerprint) -> impl FnOnce(BackendError) -> ApiError + '_ {
    move |e| match e {
        BackendError::NotFound(_) => ApiError::not_found(
            "image_not_found",
            format!("no image matches fingerprint `{fp}`"),
        ),
        other => other.into(),
    }
}

/// Backend 404s on an alias path become `alias_not_found`.
fn alias_not_found(name: &ImageAliasName) -> impl FnOnce(BackendError) -> ApiError + '_ {
    move |e| match e {
        BackendError::NotFound(_) => ApiError::not_found(
            "alias_not_found",
            format!("image alias `{name}` does not exist"),
        ),
        other => other.into(),
    }
}

/// Percent-encodes one path segment for a `Location` header.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListImagesQuery {
    /// The project (default `default`).
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
    /// Full objects (default) or only fingerprints.
    pub expand: Option<bool>,
    /// An Incus filter expression, e.g. `properties.os eq Debian`.
    pub filter: Option<String>,
    /// Images of every project (admins only).
    #[serde(rename = "all-projects")]
    #[param(rename = "all-projects")]
    pub all_projects: Option<bool>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

project_scoped!(ListImagesQuery);

/// A list entry: the image, or its fingerprint with `expand=false`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(untagged)]
pub enum ImageEntry {
    Full(Box<Image>),
    Fingerprint(String),
}

/// List images.
#[utoipa::path(get, path = "", tag = "images", operation_id = "list_images",
    security(("bearer" = [])),
    params(ListImagesQuery),
    responses(
        (status = 200, description = "A page of images (or fingerprints)", body = Page<ImageEntry>),
        (status = 400, description = "Invalid query", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No role in the project", body = Problem, content_type = "application/problem+json")))]
pub async fn list_images(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ListImagesQuery>,
) -> ApiResult<Json<Page<ImageEntry>>> {
    let project = q.project()?;
    let all = q.all_projects == Some(true);
    if all {
        user.require(Permission::AllProjectsView, "")?;
    } else {
        user.require(Permission::ProjectView, project.as_str())?;
    }
    let (limit, offset) = Pagination {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve()?;
    let scope = ListScope {
        project: (!all).then_some(&project),
        filter: q.filter.as_deref(),
        expand: q.expand.unwrap_or(true),
    };
    let entries = state
        .backend
        .list_images(scope)
        .await?
        .into_entries(|i| ImageEntry::Full(Box::new(i)), ImageEntry::Fingerprint);
    Ok(Json(Page::slice(entries, limit, offset)))
}

/// Get an image by fingerprint (a unique prefix is enough).
#[utoipa::path(get, path = "/{fingerprint}", tag = "images", operation_id = "get_image",
    security(("bearer" = [])),
    params(("fingerprint" = crate::names::ImageFingerprint, Path, description = "Fingerprint, or a unique prefix (lowercase hex)"),
        ProjectQuery),
    responses(
        (status = 200, description = "The image", body = Image,
            headers(("etag" = String, description = "Version"))),
        (status = 400, description = "Not a fingerprint", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No role in the project", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image", body = Problem, content_type = "application/problem+json")))]
pub async fn get_image(
    user: AuthUser,
    State(state): State<AppState>,
    Path(fp): Path<ImageFingerprint>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (image, etag) = state
        .backend
        .get_image(&project, fp.as_str())
        .await
        .map_err(image_not_found(&fp))?;
    let mut resp = Json(image).into_response();
    if let Some(v) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

/// Delete an image (instances made from it are not affected).
#[utoipa::path(delete, path = "/{fingerprint}", tag = "images", operation_id = "delete_image",
    security(("bearer" = [])),
    params(("fingerprint" = crate::names::ImageFingerprint, Path, description = "Fingerprint, or a unique prefix (lowercase hex)"),
        ProjectWaitQuery),
    responses(
        (status = 202, description = "Deleting", body = OperationRef,
            headers(("location" = String, description = "The operation's URL"))),
        (status = 200, description = "Deleted within `?wait=`", body = Operation),
        (status = 400, description = "Not a fingerprint", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The account has MAX_RUNNING_OPERATIONS_PER_USER operations running", body = Problem, content_type = "application/problem+json")))]
pub async fn delete_image(
    user: AuthUser,
    State(state): State<AppState>,
    Path(fp): Path<ImageFingerprint>,
    Query(q): Query<ProjectWaitQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ImageManage, project.as_str())?;
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state
        .backend
        .delete_image(&project, fp.as_str())
        .await
        .map_err(image_not_found(&fp))?;
    accepted(
        &state,
        slot,
        project.as_str(),
        "image.delete",
        Some(fp.as_str()),
        op,
        q.wait,
    )
    .await
}

/// Where a copy may come from: any `https://` server, or plain `http://`
/// to 127.0.0.1 only (a local test server; nothing else travels unencrypted).
fn check_server_url(server: &str, fetch: &Fetcher) -> ApiResult<reqwest::Url> {
    let bad = |msg: &str| Err(ApiError::invalid_field("source.server", msg));
    if server.len() > 2048 {
        return bad("source.server is longer than 2048 characters");
    }
    let Ok(url) = reqwest::Url::parse(server) else {
        return bad("source.server must be an absolute https:// URL");
    };
    if !url.username().is_empty() || url.password().is_some() {
        return bad("source.server must not carry credentials");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return bad("source.server must not have a query or fragment");
    }
    if let Err(why) = fetch.check_scheme(&url) {
        return bad(&format!("source.server {why}"));
    }
    Ok(url)
}

/// The server an image is copied from, checked under `fetch`'s rules at
/// request time for both backends: the embedded one checks again (and pins
/// the addresses) when it connects, and Incus, which fetches by itself, is
/// never told to fetch from an address lxgate would refuse. A badly formed
/// URL is a 422 naming the field; a refused or unresolvable host a 400 that
/// says only "could not fetch".
async fn check_server(server: &str, fetch: &Fetcher) -> ApiResult<()> {
    let url = check_server_url(server, fetch)?;
    fetch
        .check(&url)
        .await
        .map_err(|e| ApiError::bad_request("could_not_fetch", e.to_string()))?;
    Ok(())
}

/// A remote alias (`debian/12`): travels in a JSON body, so only length and
/// printable characters matter.
fn check_remote_alias(alias: &str) -> ApiResult<()> {
    if alias.is_empty()
        || alias.chars().count() > 255
        || alias.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::invalid_field(
            "source.alias",
            "source.alias must be 1-255 characters without whitespace or control characters",
        ));
    }
    Ok(())
}

/// Copy an image from a remote image server (simplestreams or Incus) into
/// the project. Answers 202 with an operation; a server that cannot be
/// reached makes the operation fail. The server must be https:// and
/// resolve to public addresses unless `IMAGE_SERVER_ALLOWLIST` names it;
/// redirects are followed only within the server's origin. On the embedded
/// backend an image over `MAX_IMAGE_BYTES` (downloaded, once unpacked, or a
/// VM disk's virtual size) fails the operation, with nothing kept.
#[utoipa::path(post, path = "", tag = "images", operation_id = "copy_image",
    security(("bearer" = [])),
    params(ProjectWaitQuery),
    request_body = ImageCopy,
    responses(
        (status = 202, description = "Copying", body = OperationRef,
            headers(("location" = String, description = "The operation's URL"))),
        (status = 200, description = "Finished (or failed) within `?wait=`", body = Operation),
        (status = 400, description = "`could_not_fetch`: the server resolves to an address lxgate does not fetch from (loopback, link-local, private...) and is not on `IMAGE_SERVER_ALLOWLIST`, or cannot be resolved", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid source or alias (plain http:// to a host not on `IMAGE_SERVER_ALLOWLIST` included)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The account has MAX_RUNNING_OPERATIONS_PER_USER operations running", body = Problem, content_type = "application/problem+json")))]
pub async fn copy_image(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ProjectWaitQuery>,
    Json(req): Json<ImageCopy>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ImageManage, project.as_str())?;
    if !matches!(req.source.protocol.as_str(), "simplestreams" | "incus") {
        return Err(ApiError::invalid_field(
            "source.protocol",
            "source.protocol must be `simplestreams` or `incus`",
        ));
    }
    let fetch = Fetcher::new(state.config.image_server_allowlist.clone());
    check_server(&req.source.server, &fetch).await?;
    match (&req.source.alias, &req.source.fingerprint) {
        (Some(a), None) => check_remote_alias(a)?,
        (None, Some(f)) => {
            ImageFingerprint::parse(f)
                .map_err(|e| ApiError::invalid_field("source.fingerprint", e))?;
        }
        _ => {
            return Err(ApiError::invalid_field(
                "source",
                "give exactly one of source.alias and source.fingerprint",
            ));
        }
    }
    if let Some(t) = &req.source.image_type
        && !matches!(t.as_str(), "container" | "virtual-machine")
    {
        return Err(ApiError::invalid_field(
            "source.image_type",
            "source.image_type must be `container` or `virtual-machine`",
        ));
    }
    for (i, a) in req.aliases.iter().enumerate() {
        ImageAliasName::parse(&a.name)
            .map_err(|e| ApiError::invalid_field(&format!("aliases[{i}].name"), e))?;
    }
    let what = req
        .source
        .alias
        .clone()
        .or_else(|| req.source.fingerprint.clone());
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state.backend.copy_image(&project, &req).await?;
    accepted(
        &state,
        slot,
        project.as_str(),
        "image.copy",
        what.as_deref(),
        op,
        q.wait,
    )
    .await
}

/// The parts of `POST /api/v1/images/import` (for the API description).
#[derive(ToSchema)]
#[expect(
    dead_code,
    reason = "describes the multipart form; parsed field by field"
)]
pub struct ImageImportForm {
    /// The metadata tarball (holding `metadata.yaml`). Send it first.
    #[schema(value_type = String, format = Binary)]
    metadata: Vec<u8>,
    /// The rootfs tarball, or a qcow2 disk for a virtual machine (also
    /// accepted under the name `rootfs.img`, as Incus calls it).
    #[schema(value_type = String, format = Binary)]
    rootfs: Vec<u8>,
    /// An alias for the new image (the part may be repeated).
    #[schema(example = "my-image")]
    alias: Option<String>,
    /// `true` to make the image available to unauthenticated users of the server.
    public: Option<bool>,
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

/// Upload an image as `multipart/form-data`, as Incus's own split-image
/// upload: a `metadata` part (tarball holding `metadata.yaml`) and a `rootfs`
/// part (rootfs tarball, or a qcow2 disk for a VM), plus optional `alias`
/// and `public` text parts. Streamed to disk, never held in memory; up to
/// `MAX_IMAGE_BYTES` (8 GiB by default), and on the embedded backend the
/// image must also unpack to no more than that (a VM disk's virtual size
/// too). Answers 202 with an operation once the backend has the files.
#[utoipa::path(post, path = "/import", tag = "images", operation_id = "import_image",
    security(("bearer" = [])),
    params(ProjectWaitQuery),
    request_body(content = ImageImportForm, content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "Importing", body = OperationRef,
            headers(("location" = String, description = "The operation's URL"))),
        (status = 200, description = "Finished (or failed) within `?wait=`", body = Operation),
        (status = 400, description = "Malformed multipart body; on the embedded backend also a rootfs that tar cannot read, or a VM disk that is not a self-contained qcow2", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The image or an alias already exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`image_too_large`: the files are larger than `MAX_IMAGE_BYTES`, or (embedded backend) the image unpacks to more or its VM disk's virtual size is more; `payload_too_large`: the body is over 8 GiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not multipart/form-data", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A part is missing, unknown or invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The account has MAX_RUNNING_OPERATIONS_PER_USER operations running", body = Problem, content_type = "application/problem+json")))]
pub async fn import_image(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ProjectWaitQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ImageManage, project.as_str())?;
    // Taken before spooling: an upload in progress counts as running work,
    // so one account cannot spool many at once.
    let slot = OperationSlot::acquire(&state, &user)?;
    let mut multipart = multipart.map_err(|_| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a `multipart/form-data` body with parts `metadata` and `rootfs`",
        )
    })?;

    let dir = state.config.data_dir.join("tmp");
    tokio::fs::create_dir_all(&dir).await.map_err(spool_error)?;
    let mut spool = Spool(Vec::new());
    // The fingerprint is SHA-256 over metadata then rootfs: computed on the
    // way in when the parts come in that order (as Incus's client sends them).
    let mut hasher = Sha256::new();
    let mut in_order = true;
    let mut metadata: Option<SpooledFile> = None;
    let mut rootfs: Option<SpooledFile> = None;
    let mut virtual_machine = false;
    let mut aliases: Vec<String> = Vec::new();
    let mut public = false;
    let max = state.config.max_image_bytes;
    let mut spooled = 0u64;

    let parsed: ApiResult<()> = async {
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let part = field.name().unwrap_or_default().to_owned();
        match part.as_str() {
            "metadata" | "rootfs" | "rootfs.img" => {
                let is_meta = part == "metadata";
                if (is_meta && metadata.is_some()) || (!is_meta && rootfs.is_some()) {
                    return Err(ApiError::invalid_field(
                        &part,
                        format!("the `{part}` part is given twice"),
                    ));
                }
                let path = dir.join(format!("image-{}.{part}", uuid::Uuid::new_v4().simple()));
                spool.0.push(path.clone());
                let hash = if is_meta {
                    in_order &= rootfs.is_none();
                    Some(&mut hasher)
                } else {
                    in_order &= metadata.is_some();
                    in_order.then_some(&mut hasher)
                };
                let (size, head) =
                    spool_part(&mut field, &path, hash, max - spooled, max).await?;
                spooled += size;
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
                    metadata = Some(file);
                } else {
                    if size > 0 && kind.is_none() {
                        return Err(ApiError::invalid_field(
                            &part,
                            format!(
                                "the `{part}` part is neither a tarball, a squashfs nor a qcow2 disk"
                            ),
                        ));
                    }
                    virtual_machine = part == "rootfs.img" || kind == Some(FileKind::Disk);
                    rootfs = Some(file);
                }
            }
            "alias" => {
                let text = text_part(&mut field, "alias").await?;
                let name = ImageAliasName::parse(text.trim())
                    .map_err(|e| ApiError::invalid_field("alias", e))?;
                aliases.push(name.as_str().to_owned());
            }
            "public" => {
                let text = text_part(&mut field, "public").await?;
                public = match text.trim() {
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
    .await;
    if let Err(e) = parsed {
        // Read what the client is still sending before answering: closing
        // the connection under a client mid-upload makes it see a reset
        // instead of this error.
        drain(&mut multipart).await;
        return Err(e);
    }

    let Some(metadata) = metadata.filter(|m| m.size > 0) else {
        return Err(ApiError::invalid_field(
            "metadata",
            "the `metadata` part (a tarball holding metadata.yaml) is missing or empty",
        ));
    };
    let Some(rootfs) = rootfs.filter(|r| r.size > 0) else {
        return Err(ApiError::invalid_field(
            "rootfs",
            "the `rootfs` part (a rootfs tarball or qcow2 disk) is missing or empty",
        ));
    };
    let fp = if in_order {
        hex::encode(hasher.finalize())
    } else {
        hash_files(&[&metadata.path, &rootfs.path]).await?
    };

    // Refuse what Incus would only refuse after the upload, in a failed operation.
    match state.backend.get_image(&project, &fp).await {
        Ok(_) => {
            return Err(ApiError::conflict(
                "image_exists",
                format!("image {fp} is already in project `{project}`"),
            ));
        }
        Err(BackendError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    for a in &aliases {
        match state.backend.get_image_alias(&project, a).await {
            Ok(_) => {
                return Err(ApiError::conflict(
                    "alias_exists",
                    format!("image alias `{a}` already exists in project `{project}`"),
                ));
            }
            Err(BackendError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }

    let upload = ImageUpload {
        metadata: metadata.path,
        metadata_size: metadata.size,
        metadata_name: metadata.name,
        rootfs: rootfs.path,
        rootfs_size: rootfs.size,
        rootfs_name: rootfs.name,
        virtual_machine,
        fingerprint: fp.clone(),
        aliases,
        public,
    };
    let op = state.backend.import_image(&project, &upload).await?;
    // The backend has its own copy now.
    drop(spool);
    accepted(
        &state,
        slot,
        project.as_str(),
        "image.import",
        Some(&fp),
        op,
        q.wait,
    )
    .await
}

/// A list entry: the alias, or its name with `expand=false`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(untagged)]
pub enum AliasEntry {
    Full(ImageAliasesEntry),
    Name(String),
}

/// List image aliases.
#[utoipa::path(get, path = "/aliases", tag = "images", operation_id = "list_image_aliases",
    security(("bearer" = [])),
    params(ProjectListQuery),
    responses(
        (status = 200, description = "A page of aliases (or names)", body = Page<AliasEntry>),
        (status = 400, description = "Invalid query", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No role in the project", body = Problem, content_type = "application/problem+json")))]
pub async fn list_image_aliases(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ProjectListQuery>,
) -> ApiResult<Json<Page<AliasEntry>>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (limit, offset) = q.page()?;
    let entries = state
        .backend
        .list_image_aliases(&project, q.expand.unwrap_or(true))
        .await?
        .into_entries(AliasEntry::Full, AliasEntry::Name);
    Ok(Json(Page::slice(entries, limit, offset)))
}

/// Create an image alias pointing at an image of the project.
#[utoipa::path(post, path = "/aliases", tag = "images", operation_id = "create_image_alias",
    security(("bearer" = [])),
    params(ProjectQuery),
    request_body = ImageAliasCreate,
    responses(
        (status = 201, description = "Created", body = ImageAliasesEntry,
            headers(("location" = String, description = "The alias's URL"))),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No image matches the target", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The alias exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name or target", body = Problem, content_type = "application/problem+json")))]
pub async fn create_image_alias(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ProjectQuery>,
    Json(req): Json<ImageAliasCreate>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ImageManage, project.as_str())?;
    let name = ImageAliasName::parse(&req.name).map_err(|e| ApiError::invalid_field("name", e))?;
    let target =
        ImageFingerprint::parse(&req.target).map_err(|e| ApiError::invalid_field("target", e))?;
    if req.description.as_ref().is_some_and(|d| d.len() > 4096) {
        return Err(ApiError::invalid_field(
            "description",
            "description is longer than 4096 bytes",
        ));
    }
    state
        .backend
        .create_image_alias(&project, &req)
        .await
        .map_err(|e| match e {
            BackendError::NotFound(_) => ApiError::not_found(
                "image_not_found",
                format!("no image in project `{project}` matches target `{target}`"),
            ),
            BackendError::Conflict(_) => ApiError::conflict(
                "alias_exists",
                format!("image alias `{name}` already exists in project `{project}`"),
            ),
            other => other.into(),
        })?;
    let alias = state
        .backend
        .get_image_alias(&project, name.as_str())
        .await?;
    let location = format!("/api/v1/images/aliases/{}", path_segment(name.as_str()));
    let mut resp = (StatusCode::CREATED, Json(alias)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Get an image alias.
#[utoipa::path(get, path = "/aliases/{name}", tag = "images", operation_id = "get_image_alias",
    security(("bearer" = [])),
    params(("name" = crate::names::ImageAliasName, Path, description = "Alias name"), ProjectQuery),
    responses(
        (status = 200, description = "The alias", body = ImageAliasesEntry),
        (status = 400, description = "Invalid alias name", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No role in the project", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such alias", body = Problem, content_type = "application/problem+json")))]
pub async fn get_image_alias(
    user: AuthUser,
    State(state): State<AppState>,
    Path(name): Path<ImageAliasName>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Json<ImageAliasesEntry>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    Ok(Json(
        state
            .backend
            .get_image_alias(&project, name.as_str())
            .await
            .map_err(alias_not_found(&name))?,
    ))
}

/// Delete an image alias (the image stays).
#[utoipa::path(delete, path = "/aliases/{name}", tag = "images", operation_id = "delete_image_alias",
    security(("bearer" = [])),
    params(("name" = crate::names::ImageAliasName, Path, description = "Alias name"), ProjectQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid alias name", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such alias", body = Problem, content_type = "application/problem+json")))]
pub async fn delete_image_alias(
    user: AuthUser,
    State(state): State<AppState>,
    Path(name): Path<ImageAliasName>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<StatusCode> {
    let project = q.project()?;
    user.require(Permission::ImageManage, project.as_str())?;
    state
        .backend
        .delete_image_alias(&project, name.as_str())
        .await
        .map_err(alias_not_found(&name))?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_server_urls() {
        let fetch = Fetcher::new("127.0.0.1:8000".parse().unwrap());
        for ok in [
            "https://images.linuxcontainers.org",
            "https://127.0.0.1:8443",
            "http://127.0.0.1:8000/",
        ] {
            assert!(check_server_url(ok, &fetch).is_ok(), "{ok}");
        }
        for bad in [
            "http://example.com",
            "http://10.0.0.1",
            "http://localhost:80",
            "http://127.0.0.1:8001",
            "http://127.0.0.2",
            "ftp://example.com",
            "https://user:pw@example.com",
            "images.linuxcontainers.org",
            "",
            "file:///etc/passwd",
        ] {
            assert!(check_server_url(bad, &fetch).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn copy_servers_on_refused_addresses() {
        let fetch = Fetcher::new("127.0.0.1:8000".parse().unwrap());
        assert!(check_server("http://127.0.0.1:8000/", &fetch).await.is_ok());
        for bad in [
            "https://169.254.169.254/",
            "https://127.0.0.1:8443",
            "https://[::1]/",
            "https://10.1.2.3/",
            "https://[::ffff:192.168.0.1]/",
        ] {
            let e = check_server(bad, &fetch).await.unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

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
        assert_eq!(path_segment("a b/é"), "a%20b%2F%C3%A9");
    }
}
