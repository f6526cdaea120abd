//! `/api/v1/storage/pools`: storage pools (server-wide; admins change them)
//! and their custom volumes (per project), plus attaching volumes to
//! instances as disk devices.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::api::devices;
use crate::api::operation::{OperationRef, OperationSlot, accepted};
use crate::api::ownership;
use crate::api::paths::{DevicePath, InstancePath, PoolPath, VolumePath};
use crate::api::problems::{
    Admin403, BackendRefused400, DefaultPoolSettings501, DeviceNameTaken409, InstanceChanged412,
    NameTaken409, Operator403, PoolMissing, PoolOrProjectMissing, ProfileDevice409, Stale412,
    TooManyOperations429, Viewer403, VolumeMissing, VolumePlacement403, VolumePolicy403,
    VolumeSourceOrMemberMissing,
};
use crate::api::resource::{
    Entry, IfMatch, PlacementQuery, ProjectListQuery, ProjectQuery, ProjectScoped,
    ProjectWaitQuery, created, entries, with_etag,
};
use crate::api::{Json, Page, Path, Query};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::Listing;
use crate::backend::types::{
    ConfigMap, Instance, Operation, StoragePool, StoragePoolCreate, StoragePoolUpdate,
    StorageVolume, StorageVolumeCreate, StorageVolumeUpdate, VolumeCopy, VolumeSource,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::names::{PoolName, ProjectName, SnapshotName, VolumeName};

/// Storage drivers Incus (and LXD) know; anything else is refused before
/// the backend sees it.
const POOL_DRIVERS: [&str; 12] = [
    "dir",
    "btrfs",
    "lvm",
    "lvmcluster",
    "zfs",
    "ceph",
    "cephfs",
    "cephobject",
    "linstor",
    "powerflex",
    "pure",
    "truenas",
];

/// The units a byte size may carry, with the most digits its number may
/// have so that the size stays within Incus's int64 (9,223,372,036,854,775,807
/// bytes): `9EiB` overflows there ("Overflow multiplying"), `7EiB` does not.
const SIZE_UNITS: [(&str, usize); 14] = [
    ("", 18),
    ("B", 18),
    ("kB", 15),
    ("KiB", 15),
    ("MB", 12),
    ("MiB", 12),
    ("GB", 9),
    ("GiB", 9),
    ("TB", 6),
    ("TiB", 6),
    ("PB", 3),
    ("PiB", 3),
    ("EB", 1),
    ("EiB", 1),
];

/// A byte size as Incus reads it: a positive integer without leading zeros
/// and an optional unit (`500MiB`, `10GiB`, `1GB`, `1073741824`), small
/// enough for Incus's int64 (the schema's `ByteSize` pattern says the same).
pub(crate) fn check_size(size: &str) -> Result<(), String> {
    let digits = size.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = size.split_at(digits);
    let fits = SIZE_UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .is_some_and(|(u, max)| {
            (1..=*max).contains(&number.len())
                && !number.starts_with('0')
                && (!u.starts_with('E') || number <= "7")
        });
    if fits {
        Ok(())
    } else {
        Err(format!(
            "size {size:?} is not a byte size: a positive integer with an optional unit (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB...), e.g. `10GiB`, at most 7 EiB"
        ))
    }
}

// --- pools ---

/// List storage pools. Pools are server-wide; any user with a role in the
/// `?project=` may list them (to choose one for a volume).
#[utoipa::path(get, path = "/pools", tag = "storage", operation_id = "list_storage_pools",
    security(("bearer" = [])),
    params(ProjectListQuery),
    responses(
        (status = 200, description = "A page of pools (or names)", body = Page<Entry<StoragePool>>),
        Viewer403))]
pub async fn list_storage_pools(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ProjectListQuery>,
) -> ApiResult<Json<Page<Entry<StoragePool>>>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (limit, offset) = q.page()?;
    let mut listing = state
        .backend
        .list_storage_pools(q.expand.unwrap_or(true))
        .await?;
    if let Listing::Full(items) = &mut listing {
        ownership::filter_used_by(&state, &user, items).await?;
    }
    Ok(Json(Page::slice(entries(listing), limit, offset)))
}

/// Create a storage pool (admins).
#[utoipa::path(post, path = "/pools", tag = "storage", operation_id = "create_storage_pool",
    security(("bearer" = [])),
    request_body = StoragePoolCreate,
    responses(
        (status = 201, description = "Created", body = StoragePool,
            headers(("location" = String, description = "The pool's URL"))),
        BackendRefused400, Admin403, NameTaken409))]
pub async fn create_storage_pool(
    user: AuthUser,
    State(state): State<AppState>,
    Json(req): Json<StoragePoolCreate>,
) -> ApiResult<Response> {
    user.require(Permission::InfraManage, "")?;
    let name = PoolName::parse(&req.name).map_err(|e| ApiError::invalid_field("name", e))?;
    if !POOL_DRIVERS.contains(&req.driver.as_str()) {
        return Err(ApiError::invalid_field(
            "driver",
            format!("driver must be one of {}", POOL_DRIVERS.join(", ")),
        ));
    }
    state.backend.create_storage_pool(&req).await?;
    let (pool, _) = state.backend.get_storage_pool(&name).await?;
    Ok(created(&format!("/api/v1/storage/pools/{name}"), pool))
}

/// Get a storage pool. The `ETag` header can be sent back as `If-Match`.
#[utoipa::path(get, path = "/pools/{pool}", tag = "storage", operation_id = "get_storage_pool",
    security(("bearer" = [])),
    params(PoolPath, ProjectQuery),
    responses(
        (status = 200, description = "The pool", body = StoragePool,
            headers(("etag" = String, description = "Version, for If-Match"))),
        Viewer403, PoolMissing))]
pub async fn get_storage_pool(
    user: AuthUser,
    State(state): State<AppState>,
    Path(PoolPath { pool }): Path<PoolPath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (mut p, etag) = state.backend.get_storage_pool(&pool).await?;
    ownership::filter_used_by(&state, &user, std::slice::from_mut(&mut p)).await?;
    Ok(with_etag(Json(p).into_response(), etag))
}

async fn update_pool(
    state: AppState,
    user: AuthUser,
    pool: PoolName,
    if_match: Option<String>,
    body: StoragePoolUpdate,
    replace: bool,
) -> ApiResult<Response> {
    user.require(Permission::InfraManage, "")?;
    state
        .backend
        .update_storage_pool(&pool, &body, if_match.as_deref(), replace)
        .await?;
    let (p, etag) = state.backend.get_storage_pool(&pool).await?;
    Ok(with_etag(Json(p).into_response(), etag))
}

/// Replace a pool's description and config (left-out fields are emptied, as in Incus; admins).
#[utoipa::path(put, path = "/pools/{pool}", tag = "storage", operation_id = "replace_storage_pool",
    security(("bearer" = [])),
    params(PoolPath,
        ("if-match" = Option<String>, Header, description = "ETag from GET; 412 if the pool changed since")),
    request_body = StoragePoolUpdate,
    responses(
        (status = 200, description = "Updated", body = StoragePool),
        BackendRefused400, Admin403, PoolMissing, Stale412, DefaultPoolSettings501))]
pub async fn replace_storage_pool(
    user: AuthUser,
    State(state): State<AppState>,
    Path(PoolPath { pool }): Path<PoolPath>,
    IfMatch(if_match): IfMatch,
    Json(body): Json<StoragePoolUpdate>,
) -> ApiResult<Response> {
    update_pool(state, user, pool, if_match, body, true).await
}

/// Change a pool's description or some config keys (admins).
#[utoipa::path(patch, path = "/pools/{pool}", tag = "storage", operation_id = "update_storage_pool",
    security(("bearer" = [])),
    params(PoolPath,
        ("if-match" = Option<String>, Header, description = "ETag from GET; 412 if the pool changed since")),
    request_body = StoragePoolUpdate,
    responses(
        (status = 200, description = "Updated", body = StoragePool),
        BackendRefused400, Admin403, PoolMissing, Stale412, DefaultPoolSettings501))]
pub async fn update_storage_pool(
    user: AuthUser,
    State(state): State<AppState>,
    Path(PoolPath { pool }): Path<PoolPath>,
    IfMatch(if_match): IfMatch,
    Json(body): Json<StoragePoolUpdate>,
) -> ApiResult<Response> {
    update_pool(state, user, pool, if_match, body, false).await
}

/// Delete a storage pool; it must be unused (admins).
#[utoipa::path(delete, path = "/pools/{pool}", tag = "storage", operation_id = "delete_storage_pool",
    security(("bearer" = [])),
    params(PoolPath),
    responses(
        (status = 204, description = "Deleted"),
        Admin403, PoolMissing,
        (status = 409, description = "The pool is in use (it holds volumes), or is the embedded backend's `default` pool, which holds the root disks", body = Problem, content_type = "application/problem+json")))]
pub async fn delete_storage_pool(
    user: AuthUser,
    State(state): State<AppState>,
    Path(PoolPath { pool }): Path<PoolPath>,
) -> ApiResult<StatusCode> {
    user.require(Permission::InfraManage, "")?;
    state.backend.delete_storage_pool(&pool).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- custom volumes ---

/// List the custom volumes of a project in a pool.
#[utoipa::path(get, path = "/pools/{pool}/volumes", tag = "storage", operation_id = "list_volumes",
    security(("bearer" = [])),
    params(PoolPath, ProjectListQuery),
    responses(
        (status = 200, description = "A page of volumes (or names)", body = Page<Entry<StorageVolume>>),
        Viewer403, PoolOrProjectMissing))]
pub async fn list_volumes(
    user: AuthUser,
    State(state): State<AppState>,
    Path(PoolPath { pool }): Path<PoolPath>,
    Query(q): Query<ProjectListQuery>,
) -> ApiResult<Json<Page<Entry<StorageVolume>>>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (limit, offset) = q.page()?;
    let mut listing = state
        .backend
        .list_volumes(&project, &pool, q.expand.unwrap_or(true))
        .await?;
    if let Listing::Full(items) = &mut listing {
        ownership::filter_used_by(&state, &user, items).await?;
    }
    Ok(Json(Page::slice(entries(listing), limit, offset)))
}

/// Create a custom volume, empty or as a copy.
///
/// With `source`, a copy of a volume of the project or of one of its
/// snapshots, from this pool or another (`source.pool`). Answers 201 with
/// the volume, or 202 with an operation when the backend works in the
/// background (a copy always does).
///
/// A copy takes its source's content type, and its source's config unless
/// the request gives one; either way the new volume's config is held to the
/// policy as a new volume's is (operators: `size`, `snapshots.*`, `user.*`),
/// so copying a volume an admin configured needs an admin, or a config of
/// the caller's own. The copy starts without snapshots.
///
/// `?target=` creates it on that cluster member (for a pool whose members
/// each have their own storage, such as `dir`).
#[utoipa::path(post, path = "/pools/{pool}/volumes", tag = "storage", operation_id = "create_volume",
    security(("bearer" = [])),
    params(PoolPath, PlacementQuery),
    request_body = crate::api::schemas::StorageVolumeCreateSchema,
    responses(
        (status = 201, description = "Created", body = StorageVolume,
            headers(("location" = String, description = "The volume's URL"))),
        (status = 202, description = "Creating (or copying)", body = OperationRef,
            headers(("location" = String, description = "The operation's URL"))),
        (status = 200, description = "Finished within `?wait=`", body = Operation),
        BackendRefused400, VolumePlacement403, VolumePolicy403, VolumeSourceOrMemberMissing, TooManyOperations429,
        (status = 409, description = "The name is taken, or (a copy on the embedded backend) the source is a block volume in use by a running VM", body = Problem, content_type = "application/problem+json")))]
pub async fn create_volume(
    user: AuthUser,
    State(state): State<AppState>,
    Path(PoolPath { pool }): Path<PoolPath>,
    Query(q): Query<PlacementQuery>,
    Json(req): Json<StorageVolumeCreate>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    let name = VolumeName::parse(&req.name).map_err(|e| ApiError::invalid_field("name", e))?;
    if let Some(source) = &req.source {
        return copy_volume(&state, &user, &project, &pool, name, &req, source, &q).await;
    }
    if let Some(ct) = &req.content_type
        && !["filesystem", "block"].contains(&ct.as_str())
    {
        return Err(ApiError::invalid_field(
            "content_type",
            "content_type must be `filesystem` or `block`",
        ));
    }
    if let Some(size) = req.config.get("size") {
        check_size(size).map_err(|e| ApiError::invalid_field("config.size", e))?;
    }
    crate::api::policy::for_caller(&state, &user, &project)
        .await?
        .check_volume(&Default::default(), &req.config)?;
    let target =
        crate::api::policy::check_placement(&state, &user, &project, q.target.as_deref()).await?;
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state
        .backend
        .create_volume(&project, &pool, &req, target.as_ref())
        .await?;
    if let Some(op) = op {
        return accepted(
            &state,
            slot,
            project.as_str(),
            "volume.create",
            Some(name.as_str()),
            op,
            q.wait,
        )
        .await;
    }
    let (volume, _) = state.backend.get_volume(&project, &pool, &name).await?;
    Ok(created(
        &format!(
            "/api/v1/storage/pools/{pool}/volumes/{name}?project={}",
            project.as_str()
        ),
        volume,
    ))
}

/// The copy branch of `create_volume`.
#[expect(clippy::too_many_arguments, reason = "the handler's parts, passed on")]
async fn copy_volume(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    pool: &PoolName,
    name: VolumeName,
    req: &StorageVolumeCreate,
    source: &VolumeSource,
    q: &PlacementQuery,
) -> ApiResult<Response> {
    let source_volume = VolumeName::parse(&source.volume)
        .map_err(|e| ApiError::invalid_field("source.volume", e))?;
    let source_snapshot = source
        .snapshot
        .as_deref()
        .map(SnapshotName::parse)
        .transpose()
        .map_err(|e| ApiError::invalid_field("source.snapshot", e))?;
    let source_pool = match &source.pool {
        Some(p) => PoolName::parse(p).map_err(|e| ApiError::invalid_field("source.pool", e))?,
        None => pool.clone(),
    };
    if let Some(size) = req.config.get("size") {
        check_size(size).map_err(|e| ApiError::invalid_field("config.size", e))?;
    }
    // A copy holds the source's data: not of a volume others' instances use.
    ownership::require_volume_unshared(state, user, project, &source_pool, &source_volume).await?;
    // What is copied: its content type, config and description (a 404
    // here names the missing source).
    let (content_type, config, description) = match &source_snapshot {
        Some(snap) => {
            let s = state
                .backend
                .get_volume_snapshot(project, &source_pool, &source_volume, snap)
                .await?;
            (s.content_type, s.config, s.description)
        }
        None => {
            let (v, _) = state
                .backend
                .get_volume(project, &source_pool, &source_volume)
                .await?;
            (v.content_type, v.config, v.description)
        }
    };
    // A copy has its source's type: the schema's copy variant takes none
    // (not even the same one), so neither does the server.
    if req.content_type.is_some() {
        return Err(ApiError::invalid_field(
            "content_type",
            format!(
                "a copy has its source's content type (`{content_type}`); leave content_type out"
            ),
        ));
    }
    // The new volume's whole config, decided here and sent as it is (the
    // backend copies nothing else): a config the request gives, else the
    // source's without the backend's own `volatile.*` keys. Judged as a new
    // volume's, whoever configured the source.
    let config: ConfigMap = if req.config.is_empty() {
        config
            .into_iter()
            .filter(|(k, _)| !k.starts_with("volatile."))
            .collect()
    } else {
        req.config.clone()
    };
    crate::api::policy::for_caller(state, user, project)
        .await?
        .check_volume(&Default::default(), &config)?;
    let copy = VolumeCopy {
        name: name.clone(),
        description: if req.description.is_empty() {
            description
        } else {
            req.description.clone()
        },
        content_type,
        config,
        source_pool,
        source_volume,
        source_snapshot,
    };
    let target =
        crate::api::policy::check_placement(state, user, project, q.target.as_deref()).await?;
    let slot = OperationSlot::acquire(state, user)?;
    let op = state
        .backend
        .copy_volume(project, pool, &copy, target.as_ref())
        .await?;
    accepted(
        state,
        slot,
        project.as_str(),
        "volume.copy",
        Some(&format!("{pool}/{name}")),
        op,
        q.wait,
    )
    .await
}

/// Get a custom volume. The `ETag` header can be sent back as `If-Match`.
#[utoipa::path(get, path = "/pools/{pool}/volumes/{name}", tag = "storage", operation_id = "get_volume",
    security(("bearer" = [])),
    params(VolumePath, ProjectQuery),
    responses(
        (status = 200, description = "The volume", body = StorageVolume,
            headers(("etag" = String, description = "Version, for If-Match"))),
        Viewer403, VolumeMissing))]
pub async fn get_volume(
    user: AuthUser,
    State(state): State<AppState>,
    Path(VolumePath { pool, name }): Path<VolumePath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (mut v, etag) = state.backend.get_volume(&project, &pool, &name).await?;
    ownership::filter_used_by(&state, &user, std::slice::from_mut(&mut v)).await?;
    Ok(with_etag(Json(v).into_response(), etag))
}

async fn patch_volume(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    pool: &PoolName,
    name: &VolumeName,
    update: &StorageVolumeUpdate,
    if_match: Option<&str>,
) -> ApiResult<Response> {
    state
        .backend
        .update_volume(project, pool, name, update, if_match)
        .await?;
    let (mut v, etag) = state.backend.get_volume(project, pool, name).await?;
    ownership::filter_used_by(state, user, std::slice::from_mut(&mut v)).await?;
    Ok(with_etag(Json(v).into_response(), etag))
}

/// Change a custom volume's description or some config keys.
#[utoipa::path(patch, path = "/pools/{pool}/volumes/{name}", tag = "storage", operation_id = "update_volume",
    security(("bearer" = [])),
    params(VolumePath, ProjectQuery,
        ("if-match" = Option<String>, Header, description = "ETag from GET; 412 if the volume changed since")),
    request_body = StorageVolumeUpdate,
    responses(
        (status = 200, description = "Updated", body = StorageVolume),
        BackendRefused400, VolumePolicy403, VolumeMissing, Stale412))]
pub async fn update_volume(
    user: AuthUser,
    State(state): State<AppState>,
    Path(VolumePath { pool, name }): Path<VolumePath>,
    Query(q): Query<ProjectQuery>,
    IfMatch(mut if_match): IfMatch,
    Json(body): Json<StorageVolumeUpdate>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    ownership::require_volume_unshared(&state, &user, &project, &pool, &name).await?;
    if let Some(size) = body.config.as_ref().and_then(|c| c.get("size")) {
        check_size(size).map_err(|e| ApiError::invalid_field("config.size", e))?;
    }
    if let Some(config) = &body.config {
        // Judged against the volume as it is now, and pinned to that version.
        let policy = crate::api::policy::for_caller(&state, &user, &project).await?;
        let (current, etag) = state.backend.get_volume(&project, &pool, &name).await?;
        policy.check_volume_patch(&current.config, config)?;
        if_match = crate::api::policy::pin(if_match.as_deref(), etag)?;
    }
    patch_volume(
        &state,
        &user,
        &project,
        &pool,
        &name,
        &body,
        if_match.as_deref(),
    )
    .await
}

/// Delete a custom volume; it must not be attached to an instance.
#[utoipa::path(delete, path = "/pools/{pool}/volumes/{name}", tag = "storage", operation_id = "delete_volume",
    security(("bearer" = [])),
    params(VolumePath, ProjectWaitQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 202, description = "Deleting", body = OperationRef),
        Operator403, VolumeMissing, TooManyOperations429,
        (status = 409, description = "The volume is in use (attached to an instance)", body = Problem, content_type = "application/problem+json")))]
pub async fn delete_volume(
    user: AuthUser,
    State(state): State<AppState>,
    Path(VolumePath { pool, name }): Path<VolumePath>,
    Query(q): Query<ProjectWaitQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    ownership::require_volume_unshared(&state, &user, &project, &pool, &name).await?;
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state.backend.delete_volume(&project, &pool, &name).await?;
    match op {
        Some(op) => {
            accepted(
                &state,
                slot,
                project.as_str(),
                "volume.delete",
                Some(name.as_str()),
                op,
                q.wait,
            )
            .await
        }
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    /// The new size: an integer with an optional unit (`B`, `kB`, `MB`,
    /// `GB`, `KiB`, `MiB`, `GiB`, `TiB`...). Shrinking may be refused by the
    /// storage driver.
    #[schema(value_type = crate::api::schemas::ByteSize, example = "10GiB")]
    pub size: String,
}

/// Resize a custom volume (sets its `size`).
#[utoipa::path(post, path = "/pools/{pool}/volumes/{name}/resize", tag = "storage", operation_id = "resize_volume",
    security(("bearer" = [])),
    params(VolumePath, ProjectQuery),
    request_body = ResizeRequest,
    responses(
        (status = 200, description = "Resized", body = StorageVolume),
        Operator403, VolumeMissing,
        (status = 400, description = "Refused by the storage driver (e.g. a block volume shrunk, or more than the pool holds)", body = Problem, content_type = "application/problem+json")))]
pub async fn resize_volume(
    user: AuthUser,
    State(state): State<AppState>,
    Path(VolumePath { pool, name }): Path<VolumePath>,
    Query(q): Query<ProjectQuery>,
    Json(req): Json<ResizeRequest>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    ownership::require_volume_unshared(&state, &user, &project, &pool, &name).await?;
    check_size(&req.size).map_err(|e| ApiError::invalid_field("size", e))?;
    let update = StorageVolumeUpdate {
        description: None,
        config: Some(BTreeMap::from([("size".to_owned(), req.size)])),
    };
    patch_volume(&state, &user, &project, &pool, &name, &update, None).await
}

// --- attaching volumes to instances ---

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachVolume {
    /// The pool holding the volume.
    #[schema(value_type = crate::names::PoolName, example = "default")]
    pub pool: String,
    /// A custom volume of the instance's project.
    #[schema(value_type = crate::names::VolumeName, example = "data")]
    pub volume: String,
    /// Mount point inside the instance (filesystem volumes; leave out for a
    /// block volume on a VM).
    #[serde(default)]
    #[schema(value_type = Option<crate::api::schemas::MountPath>, example = "/mnt/data")]
    pub path: Option<String>,
    /// The device name on the instance.
    #[schema(value_type = crate::names::DeviceName, example = "data")]
    pub device: String,
}

/// Attach a custom volume to an instance as a `disk` device. Answers 200
/// with the instance (or 202 with an operation when the backend applies it
/// in the background); 412 if the instance changed meanwhile.
#[utoipa::path(post, path = "", tag = "storage", operation_id = "attach_volume",
    security(("bearer" = [])),
    params(InstancePath, ProjectWaitQuery),
    request_body = AttachVolume,
    responses(
        (status = 200, description = "Attached", body = Instance),
        (status = 202, description = "Attaching", body = OperationRef),
        BackendRefused400, Operator403, DeviceNameTaken409, InstanceChanged412, TooManyOperations429,
        (status = 404, description = "No such instance or volume", body = Problem, content_type = "application/problem+json")))]
pub async fn attach_volume(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name: instance }): Path<InstancePath>,
    Query(q): Query<ProjectWaitQuery>,
    Json(req): Json<AttachVolume>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    let pool = PoolName::parse(&req.pool).map_err(|e| ApiError::invalid_field("pool", e))?;
    let volume =
        VolumeName::parse(&req.volume).map_err(|e| ApiError::invalid_field("volume", e))?;
    let device = crate::names::DeviceName::parse(&req.device)
        .map_err(|e| ApiError::invalid_field("device", e))?;
    // The schema's pattern, so that what it takes and what is taken agree.
    static MOUNT_PATH: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(crate::api::schemas::MOUNT_PATH_PATTERN).expect("a valid pattern")
    });
    if let Some(path) = &req.path
        && (path.len() > 4096 || !MOUNT_PATH.is_match(path))
    {
        return Err(ApiError::invalid_field(
            "path",
            "path must be an absolute, plain path inside the instance: components of letters, digits, '.', '_' and '-', not '.' or '..', no '//'",
        ));
    }
    // A clear 404 for a missing volume, before touching the instance.
    state.backend.get_volume(&project, &pool, &volume).await?;
    let mut config = BTreeMap::from([
        ("type".to_owned(), "disk".to_owned()),
        ("pool".to_owned(), pool.to_string()),
        ("source".to_owned(), volume.to_string()),
    ]);
    if let Some(path) = req.path {
        config.insert("path".to_owned(), path);
    }
    devices::attach(
        &state,
        &user,
        &project,
        &instance,
        &device,
        config,
        "instance.volume.attach",
        q.wait,
    )
    .await
}

/// A disk device backed by a pool volume (not a host path, not the root disk).
fn is_volume_device(d: &BTreeMap<String, String>) -> bool {
    d.get("type").is_some_and(|t| t == "disk")
        && d.contains_key("pool")
        && d.get("path").is_none_or(|p| p != "/")
}

/// Detach a volume (a `disk` device) from an instance. The volume itself is
/// kept. Answers 202 with an operation (or 200 with `?wait=`).
#[utoipa::path(delete, path = "/{device}", tag = "storage", operation_id = "detach_volume",
    security(("bearer" = [])),
    params(DevicePath, ProjectWaitQuery),
    responses(
        (status = 200, description = "Detached", body = Operation),
        (status = 202, description = "Detaching", body = OperationRef),
        Operator403, ProfileDevice409, InstanceChanged412, TooManyOperations429,
        (status = 404, description = "No such instance or volume device", body = Problem, content_type = "application/problem+json")))]
pub async fn detach_volume(
    user: AuthUser,
    State(state): State<AppState>,
    Path(DevicePath {
        name: instance,
        device,
    }): Path<DevicePath>,
    Query(q): Query<ProjectWaitQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    devices::detach(
        &state,
        &user,
        &project,
        &instance,
        &device,
        "volume",
        is_volume_device,
        "instance.volume.detach",
        q.wait,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::check_size;

    #[test]
    fn sizes_are_checked_like_incus_reads_them() {
        for ok in [
            "1GiB",
            "500MiB",
            "10GB",
            "1073741824",
            "1B",
            "2TiB",
            "3kB",
            "7EiB",
            "999999999999999999",
            "999999999GiB",
        ] {
            assert!(check_size(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "GiB",
            "0",
            "0GiB",
            "-1GiB",
            "1.5GiB",
            "1 GiB",
            "1gib",
            "1XB",
            "10GiB;",
            "1GiBs",
            "99999999999999999999GiB",
            "9EiB",
            "8EB",
            "1000000000GiB",
            "9999999999999999999",
            "010GiB",
        ] {
            assert!(check_size(bad).is_err(), "{bad:?}");
        }
    }
}
