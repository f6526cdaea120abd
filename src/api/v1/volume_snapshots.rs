//! `/api/v1/storage/pools/{pool}/volumes/{name}/snapshots`: point-in-time
//! copies of a custom volume's content, which the volume can be restored to
//! or a new volume copied from (`POST .../volumes` with `source.snapshot`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::operation::{OperationRef, OperationSlot, accepted};
use crate::api::paths::{VolumePath, VolumeSnapshotPath};
use crate::api::problems::{
    Operator403, TooManyOperations429, Viewer403, VolumeMissing, VolumeSnapshotMissing,
};
use crate::api::resource::{
    Entry, ProjectListQuery, ProjectQuery, ProjectScoped, ProjectWaitQuery, check_expiry, entries,
};
use crate::api::{Json, Page, Path, Query};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::{Operation, StorageVolumeSnapshot, StorageVolumeSnapshotCreate};
use crate::error::{ApiError, ApiResult, Problem};
use crate::names::SnapshotName;

/// List a custom volume's snapshots, oldest first.
#[utoipa::path(get, path = "/pools/{pool}/volumes/{name}/snapshots", tag = "storage",
    operation_id = "list_volume_snapshots",
    security(("bearer" = [])),
    params(VolumePath, ProjectListQuery),
    responses(
        (status = 200, description = "A page of snapshots (or names)", body = Page<Entry<StorageVolumeSnapshot>>),
        Viewer403, VolumeMissing))]
pub async fn list_volume_snapshots(
    user: AuthUser,
    State(state): State<AppState>,
    Path(VolumePath { pool, name }): Path<VolumePath>,
    Query(q): Query<ProjectListQuery>,
) -> ApiResult<Json<Page<Entry<StorageVolumeSnapshot>>>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (limit, offset) = q.page()?;
    let listing = state
        .backend
        .list_volume_snapshots(&project, &pool, &name, q.expand.unwrap_or(true))
        .await?;
    Ok(Json(Page::slice(entries(listing), limit, offset)))
}

/// Take a snapshot of a custom volume.
///
/// The snapshot holds the volume's content and its config as it is now.
/// Answers 202 with an operation.
#[utoipa::path(post, path = "/pools/{pool}/volumes/{name}/snapshots", tag = "storage",
    operation_id = "create_volume_snapshot",
    security(("bearer" = [])),
    params(VolumePath, ProjectWaitQuery),
    request_body = StorageVolumeSnapshotCreate,
    responses(
        (status = 202, description = "Snapshotting", body = OperationRef,
            headers(("location" = String, description = "The operation's URL"))),
        (status = 200, description = "Finished within `?wait=`", body = Operation),
        Operator403, VolumeMissing, TooManyOperations429,
        (status = 409, description = "The name is taken, or (embedded backend) a block volume is in use by a running VM", body = Problem, content_type = "application/problem+json")))]
pub async fn create_volume_snapshot(
    user: AuthUser,
    State(state): State<AppState>,
    Path(VolumePath { pool, name }): Path<VolumePath>,
    Query(q): Query<ProjectWaitQuery>,
    Json(req): Json<StorageVolumeSnapshotCreate>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    crate::api::ownership::require_volume_unshared(&state, &user, &project, &pool, &name).await?;
    if let Some(snap) = &req.name {
        SnapshotName::parse(snap).map_err(|e| ApiError::invalid_field("name", e))?;
    }
    check_expiry("expires_at", req.expires_at.as_deref())?;
    let resource = match &req.name {
        Some(snap) => format!("{pool}/{name}/{snap}"),
        None => format!("{pool}/{name}"),
    };
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state
        .backend
        .create_volume_snapshot(&project, &pool, &name, &req)
        .await?;
    accepted(
        &state,
        slot,
        project.as_str(),
        "volume.snapshot.create",
        Some(&resource),
        op,
        q.wait,
    )
    .await
}

/// Get a custom volume's snapshot.
#[utoipa::path(get, path = "/pools/{pool}/volumes/{name}/snapshots/{snap}", tag = "storage",
    operation_id = "get_volume_snapshot",
    security(("bearer" = [])),
    params(VolumeSnapshotPath, ProjectQuery),
    responses(
        (status = 200, description = "The snapshot", body = StorageVolumeSnapshot),
        Viewer403, VolumeSnapshotMissing))]
pub async fn get_volume_snapshot(
    user: AuthUser,
    State(state): State<AppState>,
    Path(VolumeSnapshotPath { pool, name, snap }): Path<VolumeSnapshotPath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Json<StorageVolumeSnapshot>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    Ok(Json(
        state
            .backend
            .get_volume_snapshot(&project, &pool, &name, &snap)
            .await?,
    ))
}

/// Delete a custom volume's snapshot. Answers 202 with an operation.
#[utoipa::path(delete, path = "/pools/{pool}/volumes/{name}/snapshots/{snap}", tag = "storage",
    operation_id = "delete_volume_snapshot",
    security(("bearer" = [])),
    params(VolumeSnapshotPath, ProjectWaitQuery),
    responses(
        (status = 202, description = "Deleting", body = OperationRef),
        (status = 200, description = "Deleted within `?wait=`", body = Operation),
        Operator403, VolumeSnapshotMissing, TooManyOperations429))]
pub async fn delete_volume_snapshot(
    user: AuthUser,
    State(state): State<AppState>,
    Path(VolumeSnapshotPath { pool, name, snap }): Path<VolumeSnapshotPath>,
    Query(q): Query<ProjectWaitQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    crate::api::ownership::require_volume_unshared(&state, &user, &project, &pool, &name).await?;
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state
        .backend
        .delete_volume_snapshot(&project, &pool, &name, &snap)
        .await?;
    accepted(
        &state,
        slot,
        project.as_str(),
        "volume.snapshot.delete",
        Some(&format!("{pool}/{name}/{snap}")),
        op,
        q.wait,
    )
    .await
}

/// Restore a custom volume's content to a snapshot.
///
/// Its config stays as it is (as in Incus), so no policy applies beyond the operator role. A
/// volume attached to a running instance is refused (409): stop the
/// instance (or detach the volume) first. Answers 202 with an operation,
/// or 204 when the backend restores at once (Incus does).
#[utoipa::path(post, path = "/pools/{pool}/volumes/{name}/snapshots/{snap}/restore", tag = "storage",
    operation_id = "restore_volume_snapshot",
    security(("bearer" = [])),
    params(VolumeSnapshotPath, ProjectWaitQuery),
    responses(
        (status = 202, description = "Restoring", body = OperationRef),
        (status = 200, description = "Restored within `?wait=`", body = Operation),
        (status = 204, description = "Restored"),
        Operator403, VolumeSnapshotMissing, TooManyOperations429,
        (status = 409, description = "The volume is attached to a running instance", body = Problem, content_type = "application/problem+json")))]
pub async fn restore_volume_snapshot(
    user: AuthUser,
    State(state): State<AppState>,
    Path(VolumeSnapshotPath { pool, name, snap }): Path<VolumeSnapshotPath>,
    Query(q): Query<ProjectWaitQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    crate::api::ownership::require_volume_unshared(&state, &user, &project, &pool, &name).await?;
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state
        .backend
        .restore_volume_snapshot(&project, &pool, &name, &snap)
        .await?;
    match op {
        Some(op) => {
            accepted(
                &state,
                slot,
                project.as_str(),
                "volume.snapshot.restore",
                Some(&format!("{pool}/{name}/{snap}")),
                op,
                q.wait,
            )
            .await
        }
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}
