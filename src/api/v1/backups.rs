//! `/api/v1/instances/{name}/backups`: backup tarballs kept on the server,
//! and their download (streamed, never held whole in memory).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use utoipa::ToSchema;

use crate::api::operation::{OperationRef, OperationSlot, accepted};
use crate::api::paths::{BackupPath, InstancePath};
use crate::api::policy;
use crate::api::problems::{
    BackupMissing, GuestOperator403, InstanceMissing, NameTaken409, Operator403,
    TooManyOperations429, Viewer403,
};
use crate::api::resource::ProjectScoped;
use crate::api::resource::{ProjectListQuery, ProjectQuery, ProjectWaitQuery, check_expiry};
use crate::api::{Json, Page, Path, Query};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::BackendError;
use crate::backend::types::{Backup, BackupCreate, COMPRESSION_ALGORITHMS, Download, Operation};
use crate::error::{ApiError, ApiResult};
use crate::names::BackupName;

/// A list entry: the backup, or its name with `expand=false`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(untagged)]
pub enum BackupEntry {
    Full(Box<Backup>),
    Name(String),
}

/// List an instance's backups.
#[utoipa::path(get, path = "", tag = "backups", operation_id = "list_backups",
    security(("bearer" = [])),
    params(InstancePath, ProjectListQuery),
    responses(
        (status = 200, description = "A page of backups (or names)", body = Page<BackupEntry>),
        Viewer403, InstanceMissing))]
pub async fn list_backups(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<ProjectListQuery>,
) -> ApiResult<Json<Page<BackupEntry>>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (limit, offset) = q.page()?;
    let entries = state
        .backend
        .list_backups(&project, &name, q.expand.unwrap_or(true))
        .await?
        .into_entries(|b| BackupEntry::Full(Box::new(b)), BackupEntry::Name);
    Ok(Json(Page::slice(entries, limit, offset)))
}

/// Make a backup (kept on the server; download it with `export`). Answers 202
/// with an operation.
#[utoipa::path(post, path = "", tag = "backups", operation_id = "create_backup",
    security(("bearer" = [])),
    params(InstancePath, ProjectWaitQuery),
    request_body = BackupCreate,
    responses(
        (status = 202, description = "Backing up", body = OperationRef,
            headers(("location" = String, description = "The operation's URL"))),
        (status = 200, description = "Finished within `?wait=`", body = Operation),
        Operator403, InstanceMissing, NameTaken409, TooManyOperations429))]
pub async fn create_backup(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<ProjectWaitQuery>,
    Json(req): Json<BackupCreate>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    if let Some(backup) = &req.name {
        BackupName::parse(backup).map_err(|e| ApiError::invalid_field("name", e))?;
    }
    check_expiry("expires_at", req.expires_at.as_deref())?;
    if let Some(algo) = &req.compression_algorithm
        && !COMPRESSION_ALGORITHMS.contains(&algo.as_str())
    {
        return Err(ApiError::invalid_field(
            "compression_algorithm",
            format!(
                "compression_algorithm must be one of {}",
                COMPRESSION_ALGORITHMS.join(", ")
            ),
        ));
    }
    let resource = match &req.name {
        Some(backup) => format!("{name}/{backup}"),
        None => name.to_string(),
    };
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state.backend.create_backup(&project, &name, &req).await?;
    accepted(
        &state,
        slot,
        project.as_str(),
        "backup.create",
        Some(&resource),
        op,
        q.wait,
    )
    .await
}

/// Get a backup.
#[utoipa::path(get, path = "/{backup}", tag = "backups", operation_id = "get_backup",
    security(("bearer" = [])),
    params(BackupPath, ProjectQuery),
    responses(
        (status = 200, description = "The backup", body = Backup),
        Viewer403, BackupMissing))]
pub async fn get_backup(
    user: AuthUser,
    State(state): State<AppState>,
    Path(BackupPath { name, backup }): Path<BackupPath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Json<Backup>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    Ok(Json(
        state.backend.get_backup(&project, &name, &backup).await?,
    ))
}

/// Delete a backup. Answers 202 with an operation.
#[utoipa::path(delete, path = "/{backup}", tag = "backups", operation_id = "delete_backup",
    security(("bearer" = [])),
    params(BackupPath, ProjectWaitQuery),
    responses(
        (status = 202, description = "Deleting", body = OperationRef),
        (status = 200, description = "Deleted within `?wait=`", body = Operation),
        Operator403, BackupMissing, TooManyOperations429))]
pub async fn delete_backup(
    user: AuthUser,
    State(state): State<AppState>,
    Path(BackupPath { name, backup }): Path<BackupPath>,
    Query(q): Query<ProjectWaitQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state
        .backend
        .delete_backup(&project, &name, &backup)
        .await?;
    accepted(
        &state,
        slot,
        project.as_str(),
        "backup.delete",
        Some(&format!("{name}/{backup}")),
        op,
        q.wait,
    )
    .await
}

/// The file name extension for a backup tarball, from its first bytes.
fn tarball_extension(head: &[u8]) -> &'static str {
    const MAGIC: [(&[u8], &str); 6] = [
        (&[0x1f, 0x8b], ".tar.gz"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], ".tar.xz"),
        (&[0x28, 0xb5, 0x2f, 0xfd], ".tar.zst"),
        (b"BZh", ".tar.bz2"),
        (&[0x04, 0x22, 0x4d, 0x18], ".tar.lz4"),
        (&[0x5d, 0x00, 0x00], ".tar.lzma"),
    ];
    MAGIC
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map_or(".tar", |(_, ext)| ext)
}

/// Download a backup: the tarball, streamed from the backend as it is read
/// (`Content-Length` when the backend knows it). Named
/// `<instance>-<backup>.tar[.gz|.xz|.zst|...]` after its compression.
#[utoipa::path(get, path = "/{backup}/export", tag = "backups", operation_id = "export_backup",
    security(("bearer" = [])),
    params(BackupPath, ProjectQuery),
    responses(
        (status = 200, description = "The backup tarball", content_type = "application/octet-stream",
            body = crate::api::schemas::BinaryContent,
            headers(("content-disposition" = String, description = "attachment; filename=\"<instance>-<backup>.tar.gz\""))),
        GuestOperator403, BackupMissing))]
pub async fn export_backup(
    user: AuthUser,
    State(state): State<AppState>,
    Path(BackupPath { name, backup }): Path<BackupPath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    // A backup holds the instance's files: a privileged container's are
    // the admins' (as exec and file transfer there are).
    policy::admins_only_if_privileged(&state, &user, &project, &name, "export its backups").await?;
    let Download {
        content_type,
        content_length,
        mut stream,
    } = state
        .backend
        .export_backup(&project, &name, &backup)
        .await?;
    // The first chunk tells the compression (for the file name); it is sent
    // on in front of the rest.
    let first = match stream.next().await {
        Some(Ok(chunk)) => Some(chunk),
        Some(Err(e)) => {
            return Err(BackendError::Unavailable(format!("reading the backup: {e}")).into());
        }
        None => None,
    };
    let filename = format!(
        "{name}-{backup}{}",
        tarball_extension(first.as_deref().unwrap_or_default())
    );
    let body = futures::stream::iter(first.map(Ok)).chain(stream);
    let mut resp = Body::from_stream(body).into_response();
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
    // Both names are validated resource names (letters, digits, '-'), so the
    // file name needs no escaping.
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::tarball_extension;

    #[test]
    fn backups_are_named_after_their_compression() {
        assert_eq!(tarball_extension(&[0x1f, 0x8b, 8, 0]), ".tar.gz");
        assert_eq!(tarball_extension(b"\xfd7zXZ\x00\x00"), ".tar.xz");
        assert_eq!(tarball_extension(&[0x28, 0xb5, 0x2f, 0xfd, 1]), ".tar.zst");
        assert_eq!(tarball_extension(b"BZh91AY"), ".tar.bz2");
        assert_eq!(tarball_extension(b"backup/index.yaml\0"), ".tar");
        assert_eq!(tarball_extension(b""), ".tar");
    }
}
