//! `/api/v1/images`: the image store (list, read, delete, copy from a remote
//! image server, upload) and image aliases.

use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::api::image_source::{check_protocol, check_remote_alias, check_server};
use crate::api::operation::{OperationRef, OperationSlot, accepted};
use crate::api::paths::{AliasPath, ImagePath};
use crate::api::problems::{
    Admin403, AliasMissing, ImageMissing, NameTaken409, TooManyOperations429, Viewer403,
};
use crate::api::resource::{
    ProjectListQuery, ProjectQuery, ProjectScoped, ProjectWaitQuery, check_image_source,
    project_scoped,
};
use crate::api::upload;
use crate::api::{Json, Page, Pagination, Path, Query};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::{
    Download, Image, ImageAliasCreate, ImageAliasesEntry, ImageCopy, ImagePublish, ImageUpload,
    Operation, PublishFrom,
};
use crate::backend::{BackendError, ListScope};
use crate::error::{ApiError, ApiResult, Problem};
use crate::fetch::Fetcher;
use crate::names::{ImageAliasName, ImageFingerprint, InstanceName, ProjectName, SnapshotName};

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
        Viewer403))]
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
        fresh: false,
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
    params(ImagePath, ProjectQuery),
    responses(
        (status = 200, description = "The image", body = Image,
            headers(("etag" = String, description = "Version"))),
        Viewer403, ImageMissing))]
pub async fn get_image(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ImagePath { fingerprint: fp }): Path<ImagePath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (image, etag) = state.backend.get_image(&project, &fp).await?;
    let mut resp = Json(image).into_response();
    if let Some(v) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

/// Delete an image (instances made from it are not affected).
#[utoipa::path(delete, path = "/{fingerprint}", tag = "images", operation_id = "delete_image",
    security(("bearer" = [])),
    params(ImagePath, ProjectWaitQuery),
    responses(
        (status = 202, description = "Deleting", body = OperationRef,
            headers(("location" = String, description = "The operation's URL"))),
        (status = 200, description = "Deleted within `?wait=`", body = Operation),
        Admin403, ImageMissing, TooManyOperations429))]
pub async fn delete_image(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ImagePath { fingerprint: fp }): Path<ImagePath>,
    Query(q): Query<ProjectWaitQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ImageManage, project.as_str())?;
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state.backend.delete_image(&project, &fp).await?;
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

/// Copy an image from a remote image server (simplestreams or Incus) into
/// the project, or publish an instance or a snapshot of one as an image
/// (`source.type` `instance` or `snapshot`). Answers 202 with an operation.
///
/// A copy: a server that cannot be reached makes the operation fail. The
/// server must be https:// and resolve to public addresses unless
/// `IMAGE_SERVER_ALLOWLIST` names it; redirects are followed only within the
/// server's origin. On the embedded backend an image over `MAX_IMAGE_BYTES`
/// (downloaded, once unpacked, or a VM disk's virtual size) fails the
/// operation, with nothing kept.
///
/// A publish: `source.name` is the instance (it must be stopped: 409
/// otherwise) or `instance/snapshot`, in `source.project` (default: the
/// image's project). The image gets the properties of the image the
/// instance was made from, with `properties` over them. On the embedded
/// backend containers are packed as the split format (ids shifted back to
/// 0) and virtual machines as their whole disk, a standalone qcow2 (or
/// their kernel and initrd); a VM must be stopped, for its snapshots too.
#[utoipa::path(post, path = "", tag = "images", operation_id = "create_image",
    security(("bearer" = [])),
    params(ProjectWaitQuery),
    request_body = crate::api::schemas::ImageCreateSchema,
    responses(
        (status = 202, description = "Copying or publishing", body = OperationRef,
            headers(("location" = String, description = "The operation's URL"))),
        (status = 200, description = "Finished (or failed) within `?wait=`", body = Operation),
        Admin403, TooManyOperations429,
        (status = 404, description = "No such project, or (publish) no such instance or snapshot", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "`could_not_fetch`: the server resolves to an address lxgate does not fetch from (loopback, link-local, private...) and is not on `IMAGE_SERVER_ALLOWLIST`, or cannot be resolved", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid source or alias (plain http:// to a host not on `IMAGE_SERVER_ALLOWLIST` included)", body = Problem, content_type = "application/problem+json")))]
pub async fn create_image(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ProjectWaitQuery>,
    Json(body): Json<serde_json::Value>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ImageManage, project.as_str())?;
    let publish = matches!(
        body.pointer("/source/type").and_then(|t| t.as_str()),
        Some("instance" | "snapshot")
    );
    if publish {
        let Json(req) = Json::from_value(body)?;
        publish_image(state, user, project, q.wait, req).await
    } else {
        let Json(req) = Json::from_value(body)?;
        copy_image(state, user, project, q.wait, req).await
    }
}

async fn copy_image(
    state: AppState,
    user: AuthUser,
    project: ProjectName,
    wait: Option<u64>,
    req: ImageCopy,
) -> ApiResult<Response> {
    check_protocol(&req.source.protocol, "source.protocol")?;
    let fetch = Fetcher::new(state.config.image_server_allowlist.clone());
    check_server(&req.source.server, &fetch).await?;
    check_image_source(
        req.source.alias.as_deref(),
        req.source.fingerprint.as_deref(),
        check_remote_alias,
    )?;
    if let Some(t) = &req.source.image_type
        && !matches!(t.as_str(), "container" | "virtual-machine")
    {
        return Err(ApiError::invalid_field(
            "source.image_type",
            "source.image_type must be `container` or `virtual-machine`",
        ));
    }
    check_new_aliases(&req.aliases)?;
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
        wait,
    )
    .await
}

async fn publish_image(
    state: AppState,
    user: AuthUser,
    project: ProjectName,
    wait: Option<u64>,
    req: ImagePublish,
) -> ApiResult<Response> {
    let field = |e: String| ApiError::invalid_field("source.name", e);
    let (instance, snapshot) = match (
        req.source.source_type.as_str(),
        req.source.name.split_once('/'),
    ) {
        ("instance", None) => (InstanceName::parse(&req.source.name).map_err(field)?, None),
        ("snapshot", Some((i, s))) => (
            InstanceName::parse(i).map_err(field)?,
            Some(SnapshotName::parse(s).map_err(field)?),
        ),
        ("instance", Some(_)) => {
            return Err(field(
                "an instance's name has no `/` (publish a snapshot with `source.type` `snapshot`)"
                    .into(),
            ));
        }
        _ => return Err(field("a snapshot is named `instance/snapshot`".into())),
    };
    let from_project = match &req.source.project {
        Some(p) => {
            ProjectName::parse(p).map_err(|e| ApiError::invalid_field("source.project", e))?
        }
        None => project.clone(),
    };
    // The instance's project must be one the caller may act on (admins
    // only today; said here so a wider grant later cannot skip it).
    user.require(Permission::ProjectOperate, from_project.as_str())?;
    crate::api::ownership::require_owner(
        &state,
        &user,
        from_project.as_str(),
        instance.as_str(),
        crate::api::ownership::Reach::Act,
    )
    .await?;
    check_new_aliases(&req.aliases)?;
    let what = req.source.name.clone();
    let from = PublishFrom {
        project: from_project,
        instance,
        snapshot,
    };
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state.backend.publish_image(&project, &from, &req).await?;
    accepted(
        &state,
        slot,
        project.as_str(),
        "image.publish",
        Some(&what),
        op,
        wait,
    )
    .await
}

/// Each new alias of a copy or a publish is a valid alias name (422 naming it).
fn check_new_aliases(aliases: &[crate::backend::types::NewImageAlias]) -> ApiResult<()> {
    for (i, a) in aliases.iter().enumerate() {
        ImageAliasName::parse(&a.name)
            .map_err(|e| ApiError::invalid_field(&format!("aliases[{i}].name"), e))?;
    }
    Ok(())
}

/// Download an image's files: `multipart/form-data` with a `metadata` and a
/// `rootfs` part (`rootfs.img` for a VM disk) for a split image, which
/// `POST images/import` takes back as it is; the tarball alone
/// (`application/octet-stream`) for a unified one (Incus). Streamed.
#[utoipa::path(get, path = "/{fingerprint}/export", tag = "images", operation_id = "export_image",
    security(("bearer" = [])),
    params(ImagePath, ProjectQuery),
    responses(
        (status = 200, description = "The image's files",
            content(
                (crate::api::schemas::BinaryContent = "multipart/form-data"),
                (crate::api::schemas::BinaryContent = "application/octet-stream"))),
        Viewer403, ImageMissing))]
pub async fn export_image(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ImagePath { fingerprint: fp }): Path<ImagePath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let Download {
        content_type,
        content_length,
        stream,
    } = state.backend.export_image(&project, &fp).await?;
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        content_type
            .and_then(|t| HeaderValue::from_str(&t).ok())
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Some(len) = content_length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(resp)
}

/// The parts of `POST /api/v1/images/import` (for the API description; no
/// other part is taken).
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
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
    #[schema(value_type = Option<crate::names::ImageAliasName>, example = "my-image")]
    alias: Option<String>,
    /// `true` to make the image available to unauthenticated users of the server.
    public: Option<bool>,
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
        Admin403, TooManyOperations429,
        (status = 400, description = "Malformed multipart body; on the embedded backend also a rootfs that tar cannot read, or a VM disk that is not a self-contained qcow2", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The image or an alias already exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`image_too_large`: the files are larger than `MAX_IMAGE_BYTES`, or (embedded backend) the image unpacks to more or its VM disk's virtual size is more; `payload_too_large`: the body is over 8 GiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not multipart/form-data", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A part is missing, unknown or invalid", body = Problem, content_type = "application/problem+json")))]
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
    let spool_dir = state.config.data_dir.join("tmp");
    let image = upload::receive(multipart, &spool_dir, state.config.max_image_bytes).await?;
    refuse_existing(&state, &project, &image.upload).await?;
    let op = state.backend.import_image(&project, &image.upload).await?;
    let fp = image.upload.fingerprint.clone();
    // The backend has its own copy now.
    drop(image);
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

/// Refuses what Incus would only refuse after the upload, in a failed
/// operation: the image is in the project already, or an alias is taken.
async fn refuse_existing(
    state: &AppState,
    project: &ProjectName,
    upload: &ImageUpload,
) -> ApiResult<()> {
    // Computed here (SHA-256 in hex), and the aliases were checked as the
    // parts came in: neither can fail to parse.
    let fp = ImageFingerprint::parse(&upload.fingerprint).map_err(|e| {
        ApiError::internal(anyhow::anyhow!("computed image fingerprint refused: {e}"))
    })?;
    match state.backend.get_image(project, &fp).await {
        Ok(_) => {
            return Err(ApiError::conflict(
                "image_exists",
                format!("image {fp} is already in project `{project}`"),
            ));
        }
        Err(BackendError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    for a in &upload.aliases {
        let a = ImageAliasName::parse(a).map_err(|e| ApiError::invalid_field("alias", e))?;
        match state.backend.get_image_alias(project, &a).await {
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
    Ok(())
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
        Viewer403))]
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
        Admin403, NameTaken409,
        (status = 404, description = "No image matches the target", body = Problem, content_type = "application/problem+json")))]
pub async fn create_image_alias(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ProjectQuery>,
    Json(req): Json<ImageAliasCreate>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ImageManage, project.as_str())?;
    let name = ImageAliasName::parse(&req.name).map_err(|e| ApiError::invalid_field("name", e))?;
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
            BackendError::Conflict(_) => ApiError::conflict(
                "alias_exists",
                format!("image alias `{name}` already exists in project `{project}`"),
            ),
            other => other.into(),
        })?;
    let alias = state.backend.get_image_alias(&project, &name).await?;
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
    params(AliasPath, ProjectQuery),
    responses(
        (status = 200, description = "The alias", body = ImageAliasesEntry),
        Viewer403, AliasMissing))]
pub async fn get_image_alias(
    user: AuthUser,
    State(state): State<AppState>,
    Path(AliasPath { name }): Path<AliasPath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Json<ImageAliasesEntry>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    Ok(Json(state.backend.get_image_alias(&project, &name).await?))
}

/// Delete an image alias (the image stays).
#[utoipa::path(delete, path = "/aliases/{name}", tag = "images", operation_id = "delete_image_alias",
    security(("bearer" = [])),
    params(AliasPath, ProjectQuery),
    responses(
        (status = 204, description = "Deleted"),
        Admin403, AliasMissing))]
pub async fn delete_image_alias(
    user: AuthUser,
    State(state): State<AppState>,
    Path(AliasPath { name }): Path<AliasPath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<StatusCode> {
    let project = q.project()?;
    user.require(Permission::ImageManage, project.as_str())?;
    state.backend.delete_image_alias(&project, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_locations_are_percent_encoded() {
        assert_eq!(path_segment("a b/é"), "a%20b%2F%C3%A9");
    }
}
