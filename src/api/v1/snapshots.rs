//! `/api/v1/instances/{name}/snapshots`: point-in-time copies of an instance.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use utoipa::ToSchema;

use crate::api::operation::{OperationRef, OperationSlot, accepted};
use crate::api::paths::{InstancePath, InstanceSnapshotPath};
use crate::api::policy::{self, Shape};
use crate::api::problems::{
    InstanceMissing, NameTaken409, Operator403, SnapshotMissing, SnapshotOrProfileMissing,
    TooManyOperations429, Viewer403,
};
use crate::api::resource::ProjectScoped;
use crate::api::resource::{ProjectListQuery, ProjectQuery, ProjectWaitQuery, check_expiry};
use crate::api::{Json, Page, Path, Query};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::{ConfigMap, Operation, Snapshot, SnapshotCreate, SnapshotRestore};
use crate::error::{ApiError, ApiResult, Problem};
use crate::names::SnapshotName;

/// A list entry: the snapshot, or its name with `expand=false`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(untagged)]
pub enum SnapshotEntry {
    Full(Box<Snapshot>),
    Name(String),
}

/// List an instance's snapshots.
#[utoipa::path(get, path = "", tag = "snapshots", operation_id = "list_snapshots",
    security(("bearer" = [])),
    params(InstancePath, ProjectListQuery),
    responses(
        (status = 200, description = "A page of snapshots (or names)", body = Page<SnapshotEntry>),
        Viewer403, InstanceMissing))]
pub async fn list_snapshots(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<ProjectListQuery>,
) -> ApiResult<Json<Page<SnapshotEntry>>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (limit, offset) = q.page()?;
    let entries = state
        .backend
        .list_snapshots(&project, &name, q.expand.unwrap_or(true))
        .await?
        .into_entries(|s| SnapshotEntry::Full(Box::new(s)), SnapshotEntry::Name);
    Ok(Json(Page::slice(entries, limit, offset)))
}

/// Take a snapshot. Answers 202 with an operation.
#[utoipa::path(post, path = "", tag = "snapshots", operation_id = "create_snapshot",
    security(("bearer" = [])),
    params(InstancePath, ProjectWaitQuery),
    request_body = SnapshotCreate,
    responses(
        (status = 202, description = "Snapshotting", body = OperationRef,
            headers(("location" = String, description = "The operation's URL"))),
        (status = 200, description = "Finished within `?wait=`", body = Operation),
        Operator403, InstanceMissing, NameTaken409, TooManyOperations429))]
pub async fn create_snapshot(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<ProjectWaitQuery>,
    Json(req): Json<SnapshotCreate>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    if let Some(snap) = &req.name {
        SnapshotName::parse(snap).map_err(|e| ApiError::invalid_field("name", e))?;
    }
    check_expiry("expires_at", req.expires_at.as_deref())?;
    let resource = match &req.name {
        Some(snap) => format!("{name}/{snap}"),
        None => name.to_string(),
    };
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state.backend.create_snapshot(&project, &name, &req).await?;
    accepted(
        &state,
        slot,
        project.as_str(),
        "snapshot.create",
        Some(&resource),
        op,
        q.wait,
    )
    .await
}

/// Get a snapshot.
#[utoipa::path(get, path = "/{snap}", tag = "snapshots", operation_id = "get_snapshot",
    security(("bearer" = [])),
    params(InstanceSnapshotPath, ProjectQuery),
    responses(
        (status = 200, description = "The snapshot", body = Snapshot),
        Viewer403, SnapshotMissing))]
pub async fn get_snapshot(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstanceSnapshotPath { name, snap }): Path<InstanceSnapshotPath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Json<Snapshot>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    Ok(Json(
        state.backend.get_snapshot(&project, &name, &snap).await?,
    ))
}

/// Delete a snapshot. Answers 202 with an operation.
#[utoipa::path(delete, path = "/{snap}", tag = "snapshots", operation_id = "delete_snapshot",
    security(("bearer" = [])),
    params(InstanceSnapshotPath, ProjectWaitQuery),
    responses(
        (status = 202, description = "Deleting", body = OperationRef),
        (status = 200, description = "Deleted within `?wait=`", body = Operation),
        Operator403, SnapshotMissing, TooManyOperations429))]
pub async fn delete_snapshot(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstanceSnapshotPath { name, snap }): Path<InstanceSnapshotPath>,
    Query(q): Query<ProjectWaitQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state
        .backend
        .delete_snapshot(&project, &name, &snap)
        .await?;
    accepted(
        &state,
        slot,
        project.as_str(),
        "snapshot.delete",
        Some(&format!("{name}/{snap}")),
        op,
        q.wait,
    )
    .await
}

/// Restore an instance to a snapshot (a running container keeps running on
/// the restored disk). The body is optional. Answers 202 with an operation.
#[utoipa::path(post, path = "/{snap}/restore", tag = "snapshots", operation_id = "restore_snapshot",
    security(("bearer" = [])),
    params(InstanceSnapshotPath, ProjectWaitQuery),
    request_body(content = Option<SnapshotRestore>, description = "Optional"),
    responses(
        (status = 202, description = "Restoring", body = OperationRef),
        (status = 200, description = "Restored within `?wait=`", body = Operation),
        SnapshotOrProfileMissing, TooManyOperations429,
        (status = 403, description = "No operator role in the project, the snapshot holds config or devices the instance policy does not allow the caller, or it would take the instance's owner past a per-user quota (`quota_exceeded`, `quota_needs_amount`)", body = Problem, content_type = "application/problem+json")))]
pub async fn restore_snapshot(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstanceSnapshotPath { name, snap }): Path<InstanceSnapshotPath>,
    Query(q): Query<ProjectWaitQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    let opts: SnapshotRestore = crate::api::optional_json_body(&body)?;
    // The snapshot's config and devices are written back: held to the
    // policy like any other write (an allowance since withdrawn, say).
    let policy = policy::for_caller(&state, &user, &project).await?;
    let (current, _) = state.backend.get_instance(&project, &name).await?;
    let saved = state.backend.get_snapshot(&project, &name, &snap).await?;
    // volatile.* of a snapshot is the backend's record, restored by it.
    let own = |c: &ConfigMap| -> ConfigMap {
        c.iter()
            .filter(|(k, _)| !k.starts_with("volatile."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let (now, then) = (own(&current.config), own(&saved.config));
    let before = Shape {
        config: &now,
        ..Shape::of(&current)
    };
    let after = Shape {
        config: &then,
        devices: &saved.devices,
        profiles: &saved.profiles,
    };
    policy::check_instance_write(&state, &user, &policy, &project, Some(before), after).await?;
    crate::api::quotas::check(&state, &user, &project, &current, after).await?;
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state
        .backend
        .restore_snapshot(&project, &name, &snap, opts.stateful)
        .await?;
    accepted(
        &state,
        slot,
        project.as_str(),
        "snapshot.restore",
        Some(&format!("{name}/{snap}")),
        op,
        q.wait,
    )
    .await
}
