//! `/api/v1/instances`: containers and virtual machines.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::api::operation::{OnDone, OperationRef, OperationSlot, accepted, accepted_then};
use crate::api::paths::{InstanceActionPath, InstancePath};
use crate::api::policy::{self, Shape};
use crate::api::problems::{
    GuestOperator403, ImageProfileOrMemberMissing, InstanceConfig400, InstanceCreate400,
    InstanceCreate422, InstanceMissing, InstanceOrProfileMissing, InstancePolicy403, NameTaken409,
    Operator403, Placement403, Stale412, TooManyOperations429, Viewer403,
};
use crate::api::resource::{IfMatch, ProjectScoped, project_scoped};
use crate::api::resource::{PlacementQuery, ProjectQuery, ProjectWaitQuery};
use crate::api::{Json, Page, Pagination, Path, Query};
use crate::api::{ownership, quotas, sources};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::{
    Instance, InstanceCreate, InstanceState, InstanceUpdate, Operation, STATE_ACTIONS, StateChange,
};
use crate::backend::{ListScope, Listing};
use crate::db;
use crate::error::{ApiError, ApiResult, Problem};
use crate::names::{InstanceName, ProjectName};

const INSTANCE_TYPES: [&str; 2] = ["container", "virtual-machine"];

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListInstancesQuery {
    /// The project (default `default`).
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
    /// Full objects (default) or only names.
    pub expand: Option<bool>,
    /// An Incus filter expression, e.g. `status eq Running`.
    pub filter: Option<String>,
    /// `container` or `virtual-machine`.
    #[serde(rename = "instance-type")]
    #[param(rename = "instance-type", value_type = Option<crate::backend::types::schema::InstanceType>)]
    pub instance_type: Option<String>,
    /// Instances of every project (admins only).
    #[serde(rename = "all-projects")]
    #[param(rename = "all-projects")]
    pub all_projects: Option<bool>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

project_scoped!(ListInstancesQuery);

/// A list entry: the instance, or its name with `expand=false`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(untagged)]
pub enum InstanceEntry {
    Full(Box<Instance>),
    Name(String),
}

/// List instances.
#[utoipa::path(get, path = "", tag = "instances", operation_id = "list_instances",
    security(("bearer" = [])),
    params(ListInstancesQuery),
    responses(
        (status = 200, description = "A page of instances (or names)", body = Page<InstanceEntry>),
        Viewer403))]
pub async fn list_instances(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ListInstancesQuery>,
) -> ApiResult<Json<Page<InstanceEntry>>> {
    let (limit, offset) = Pagination {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve()?;
    let project = q.project()?;
    let all = q.all_projects == Some(true);
    if all {
        user.require(Permission::AllProjectsView, "")?;
    } else {
        user.require(Permission::ProjectView, project.as_str())?;
    }
    if let Some(t) = &q.instance_type
        && !INSTANCE_TYPES.contains(&t.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            "instance-type must be `container` or `virtual-machine`",
        ));
    }
    let expand = q.expand.unwrap_or(true);
    let scope = ListScope {
        project: (!all).then_some(&project),
        filter: q.filter.as_deref(),
        // Filtering by type needs the objects even when only names are returned.
        expand: expand || q.instance_type.is_some(),
        fresh: false,
    };
    // In an owner-only project, only the caller's own (all projects at
    // once is for admins, who see everything).
    let own = if all {
        None
    } else {
        ownership::own(&state, &user, project.as_str()).await?
    };
    let sees = |name: &str| own.as_ref().is_none_or(|o| o.has(name));
    let entries: Vec<InstanceEntry> = match state.backend.list_instances(scope).await? {
        Listing::Names(names) => names
            .into_iter()
            .filter(|n| sees(n))
            .map(InstanceEntry::Name)
            .collect(),
        Listing::Full(items) => items
            .into_iter()
            .filter(|i| sees(&i.name))
            .filter(|i| {
                q.instance_type
                    .as_deref()
                    .is_none_or(|t| i.instance_type == t)
            })
            .map(|i| {
                if expand {
                    InstanceEntry::Full(Box::new(i))
                } else {
                    InstanceEntry::Name(i.name)
                }
            })
            .collect(),
    };
    Ok(Json(Page::slice(entries, limit, offset)))
}

/// Create an instance. Answers 202 with an operation.
///
/// `source` says what from: a local image (`alias` or `fingerprint`); an
/// image on a remote server (`server` + `protocol` too), pulled into the
/// project's images under the same fetch rules as `POST images` (https,
/// public addresses unless on `IMAGE_SERVER_ALLOWLIST`; a server that
/// cannot be reached fails the operation); a `copy` of an instance or
/// snapshot (`source` = `instance` or `instance/snapshot`, from `project`
/// where the caller must be an operator too), which takes the source's
/// config, devices and profiles with the request's over them, is judged
/// by the instance policy as a whole, and carries no snapshots; or `none`
/// for an empty virtual machine.
///
/// `?target=` places it on that cluster member (where `location` will say
/// it runs); without it the backend chooses.
#[utoipa::path(post, path = "", tag = "instances", operation_id = "create_instance",
    security(("bearer" = [])),
    params(PlacementQuery),
    request_body = InstanceCreate,
    responses(
        (status = 202, description = "Creating", body = OperationRef,
            headers(("location" = String, description = "The operation's URL"))),
        (status = 200, description = "Finished within `?wait=`", body = Operation),
        InstanceCreate400, Placement403, ImageProfileOrMemberMissing, NameTaken409,
        InstanceCreate422, TooManyOperations429))]
pub async fn create_instance(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<PlacementQuery>,
    Json(mut req): Json<InstanceCreate>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    let name = InstanceName::parse(&req.name).map_err(|e| ApiError::invalid_field("name", e))?;
    if let Some(t) = &req.instance_type
        && !INSTANCE_TYPES.contains(&t.as_str())
    {
        return Err(ApiError::invalid_field(
            "type",
            "type must be `container` or `virtual-machine`",
        ));
    }
    sources::resolve(&state, &user, &project, &mut req).await?;
    if let Some(p) = &req.profiles {
        policy::check_profile_list(p)?;
    }
    let policy = policy::for_caller(&state, &user, &project).await?;
    // Without a list, both backends give it `default`: judged as such.
    let profiles = req
        .profiles
        .clone()
        .unwrap_or_else(|| vec!["default".to_owned()]);
    let after = Shape {
        config: &req.config,
        devices: &req.devices,
        profiles: &profiles,
    };
    policy::check_instance_write(&state, &user, &policy, &project, None, after).await?;
    let target = policy::check_placement(&state, &user, &project, q.target.as_deref()).await?;
    let slot = OperationSlot::acquire(&state, &user)?;
    // Recorded (and judged by the quotas) before the backend is asked, so
    // that the maker sees it and creates in flight count. The instance
    // carries the reservation's token, so that how the create ended can be
    // told from what the backend has.
    let reservation = quotas::reserve_create(&state, &user, &project, &name, after).await?;
    match reservation.token() {
        Some(token) => {
            req.config
                .insert(ownership::RESERVATION_KEY.to_owned(), token.to_owned());
        }
        // Only lxgate writes it (a copy would carry its source's).
        None => {
            req.config.remove(ownership::RESERVATION_KEY);
        }
    }
    // On a task of its own: a client that goes away (or the request
    // timeout) must not cut the create off between the backend starting
    // it and lxgate recording how it ended.
    let tail = async move {
        let op = match state
            .backend
            .create_instance(&project, &req, target.as_ref())
            .await
        {
            Ok(op) => op,
            Err(e) => {
                // Refused: nothing was made. Anything else (the backend
                // unreachable, a timeout): as the backend has it.
                if e.is_refusal() {
                    reservation.release().await;
                } else {
                    reservation.settle().await;
                }
                return Err(e.into());
            }
        };
        accepted_then(
            &state,
            slot,
            project.as_str(),
            "instance.create",
            Some(name.as_str()),
            op,
            q.wait,
            Some(owner_hook(
                &state,
                &project,
                &name,
                Record::Owner(reservation),
            )),
        )
        .await
    };
    tokio::spawn(crate::telemetry::in_this_request(tail))
        .await
        .map_err(ApiError::internal)?
}

/// What an instance's operation changes in who made it (for owner-only
/// projects and per-user quotas), once it has succeeded.
enum Record {
    /// Made: the create's reservation becomes the record (or, the create
    /// having failed, follows what the backend has).
    Owner(ownership::Reservation),
    RenamedTo(String),
    Deleted,
}

/// Writes `record` of `project/name` once its operation has succeeded (a
/// failed rename or delete changes nothing).
fn owner_hook(
    state: &AppState,
    project: &ProjectName,
    name: &InstanceName,
    record: Record,
) -> OnDone {
    let (state, project, name) = (state.clone(), project.to_string(), name.to_string());
    Box::new(move |succeeded| {
        Box::pin(async move {
            let pool = &state.db.pool;
            let done = match record {
                Record::Owner(reservation) => {
                    if succeeded {
                        reservation.keep().await;
                    } else {
                        reservation.settle().await;
                    }
                    Ok(())
                }
                _ if !succeeded => Ok(()),
                Record::RenamedTo(to) => {
                    let owner = db::instance_owners::get(pool, &project, &name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|o| o.user_id);
                    state
                        .ownership
                        .remember(&project, &to, owner.as_deref())
                        .await;
                    db::instance_owners::rename(pool, &project, &name, &to).await
                }
                // The record goes; this replica still knows who made it for a
                // few seconds, so that the delete's events reach them.
                Record::Deleted => {
                    if let Ok(Some(o)) = db::instance_owners::get(pool, &project, &name).await {
                        state
                            .ownership
                            .remember(&project, &name, o.user_id.as_deref())
                            .await;
                    }
                    db::instance_owners::remove(pool, &project, &name).await
                }
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, instance = %name, "recording who made an instance failed");
            }
        })
    })
}

/// Get an instance. The `ETag` header can be sent back as `If-Match` on PUT/PATCH.
#[utoipa::path(get, path = "/{name}", tag = "instances", operation_id = "get_instance",
    security(("bearer" = [])),
    params(InstancePath, ProjectQuery),
    responses(
        (status = 200, description = "The instance", body = Instance,
            headers(("etag" = String, description = "Version, for If-Match"))),
        Viewer403, InstanceMissing))]
pub async fn get_instance(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (instance, etag) = state.backend.get_instance(&project, &name).await?;
    let mut resp = Json(instance).into_response();
    if let Some(v) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

async fn update(
    state: AppState,
    user: AuthUser,
    name: InstanceName,
    q: ProjectWaitQuery,
    if_match: Option<String>,
    body: InstanceUpdate,
    replace: bool,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    if let Some(p) = &body.profiles {
        policy::check_profile_list(p)?;
    }
    // The policy judges the change against the instance as it is now; the
    // update applies to that version only (its ETag), so nothing can change
    // in between.
    let policy = policy::for_caller(&state, &user, &project).await?;
    let (current, etag) = state.backend.get_instance(&project, &name).await?;
    let mut body = body;
    if let Some(c) = &mut body.config {
        policy::keep_volatile(&current.config, c, replace);
    }
    // A PUT that leaves out `profiles` keeps them (both backends alike;
    // Incus would otherwise drop them all, and with them what they hold).
    if replace && body.profiles.is_none() {
        body.profiles = Some(current.profiles.clone());
    }
    // What the instance will be: a PUT replaces, a PATCH merges config keys
    // and devices by name (as Incus does).
    let (config, devices, profiles) = if replace {
        (
            body.config.clone().unwrap_or_default(),
            body.devices.clone().unwrap_or_default(),
            body.profiles.clone().unwrap_or_default(),
        )
    } else {
        let mut config = current.config.clone();
        config.extend(body.config.clone().unwrap_or_default());
        let mut devices = current.devices.clone();
        devices.extend(body.devices.clone().unwrap_or_default());
        let profiles = body.profiles.clone().unwrap_or(current.profiles.clone());
        (config, devices, profiles)
    };
    let after = Shape {
        config: &config,
        devices: &devices,
        profiles: &profiles,
    };
    policy::check_instance_write(
        &state,
        &user,
        &policy,
        &project,
        Some(Shape::of(&current)),
        after,
    )
    .await?;
    quotas::check(&state, &user, &project, &current, after).await?;
    let version = policy::pin(if_match.as_deref(), etag)?;
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state
        .backend
        .update_instance(&project, &name, &body, version.as_deref(), replace)
        .await?;
    match op {
        Some(op) => {
            accepted(
                &state,
                slot,
                project.as_str(),
                "instance.update",
                Some(name.as_str()),
                op,
                q.wait,
            )
            .await
        }
        None => {
            let (instance, _) = state.backend.get_instance(&project, &name).await?;
            Ok(Json(instance).into_response())
        }
    }
}

/// Replace an instance's configuration (fields left out are emptied, as in Incus).
#[utoipa::path(put, path = "/{name}", tag = "instances", operation_id = "replace_instance",
    security(("bearer" = [])),
    params(InstancePath, ProjectWaitQuery,
        ("if-match" = Option<String>, Header, description = "ETag from GET; 412 if the instance changed since")),
    request_body = InstanceUpdate,
    responses(
        (status = 202, description = "Updating", body = OperationRef),
        (status = 200, description = "Updated", body = Instance),
        InstanceConfig400, InstancePolicy403, InstanceOrProfileMissing, Stale412, TooManyOperations429))]
pub async fn replace_instance(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<ProjectWaitQuery>,
    IfMatch(if_match): IfMatch,
    Json(body): Json<InstanceUpdate>,
) -> ApiResult<Response> {
    update(state, user, name, q, if_match, body, true).await
}

/// Change some of an instance's configuration.
#[utoipa::path(patch, path = "/{name}", tag = "instances", operation_id = "update_instance",
    security(("bearer" = [])),
    params(InstancePath, ProjectWaitQuery,
        ("if-match" = Option<String>, Header, description = "ETag from GET; 412 if the instance changed since")),
    request_body = InstanceUpdate,
    responses(
        (status = 200, description = "Updated", body = Instance),
        (status = 202, description = "Updating", body = OperationRef),
        InstanceConfig400, InstancePolicy403, InstanceOrProfileMissing, Stale412, TooManyOperations429))]
pub async fn update_instance(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<ProjectWaitQuery>,
    IfMatch(if_match): IfMatch,
    Json(body): Json<InstanceUpdate>,
) -> ApiResult<Response> {
    update(state, user, name, q, if_match, body, false).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteInstanceQuery {
    /// The project (default `default`).
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
    /// Wait up to this many seconds (max 300) for the operation to finish.
    #[param(value_type = Option<crate::api::schemas::WaitSeconds>)]
    pub wait: Option<u64>,
    /// Stop a running or frozen instance first (at once, without a clean
    /// shutdown), as `incus delete --force` does. Without it, deleting one
    /// that is not stopped is 409.
    pub force: Option<bool>,
}

project_scoped!(DeleteInstanceQuery);

/// Delete an instance (stopped, or any with `?force=true`).
#[utoipa::path(delete, path = "/{name}", tag = "instances", operation_id = "delete_instance",
    security(("bearer" = [])),
    params(InstancePath, DeleteInstanceQuery),
    responses(
        (status = 202, description = "Deleting", body = OperationRef),
        (status = 200, description = "Deleted within `?wait=`", body = Operation),
        Operator403, InstanceMissing, TooManyOperations429))]
pub async fn delete_instance(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<DeleteInstanceQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state
        .backend
        .delete_instance(&project, &name, q.force.unwrap_or(false))
        .await?;
    accepted_then(
        &state,
        slot,
        project.as_str(),
        "instance.delete",
        Some(name.as_str()),
        op,
        q.wait,
        Some(owner_hook(&state, &project, &name, Record::Deleted)),
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    /// The new name.
    #[schema(value_type = crate::names::InstanceName, example = "web-2")]
    pub name: String,
}

/// Rename an instance (it must be stopped). A privileged container is
/// renamed by admins only: its name is what copies and backups name.
#[utoipa::path(post, path = "/{name}/rename", tag = "instances", operation_id = "rename_instance",
    security(("bearer" = [])),
    params(InstancePath, ProjectWaitQuery),
    request_body = RenameRequest,
    responses(
        (status = 202, description = "Renaming", body = OperationRef),
        (status = 200, description = "Renamed within `?wait=`", body = Operation),
        GuestOperator403, InstanceMissing, NameTaken409, TooManyOperations429))]
pub async fn rename_instance(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<ProjectWaitQuery>,
    Json(req): Json<RenameRequest>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    let new_name =
        InstanceName::parse(&req.name).map_err(|e| ApiError::invalid_field("name", e))?;
    // Otherwise an operator could give an admin's privileged container the
    // name of one of theirs while a copy or backup export of it is checked.
    policy::admins_only_if_privileged(&state, &user, &project, &name, "rename it").await?;
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state
        .backend
        .rename_instance(&project, &name, &new_name)
        .await?;
    accepted_then(
        &state,
        slot,
        project.as_str(),
        "instance.rename",
        Some(name.as_str()),
        op,
        q.wait,
        Some(owner_hook(
            &state,
            &project,
            &name,
            Record::RenamedTo(new_name.to_string()),
        )),
    )
    .await
}

/// Runtime state: status, processes, CPU, memory, disks, network addresses.
#[utoipa::path(get, path = "/{name}/state", tag = "instances", operation_id = "get_instance_state",
    security(("bearer" = [])),
    params(InstancePath, ProjectQuery),
    responses(
        (status = 200, description = "The state", body = InstanceState),
        Viewer403, InstanceMissing))]
pub async fn get_instance_state(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Json<InstanceState>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    Ok(Json(state.backend.instance_state(&project, &name).await?))
}

async fn change_state(
    state: &AppState,
    user: &AuthUser,
    name: InstanceName,
    q: &ProjectWaitQuery,
    change: StateChange,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    if !STATE_ACTIONS.contains(&change.action.as_str()) {
        return Err(ApiError::invalid_field(
            "action",
            "action must be one of start, stop, restart, freeze, unfreeze",
        ));
    }
    if !(-1..=3600).contains(&change.timeout) {
        return Err(ApiError::invalid_field(
            "timeout",
            "timeout must be -1..3600 seconds",
        ));
    }
    let action = format!("instance.{}", change.action);
    let slot = OperationSlot::acquire(state, user)?;
    let op = state.backend.change_state(&project, &name, &change).await?;
    accepted(
        state,
        slot,
        project.as_str(),
        &action,
        Some(name.as_str()),
        op,
        q.wait,
    )
    .await
}

/// Start, stop, restart, freeze or unfreeze an instance.
#[utoipa::path(put, path = "/{name}/state", tag = "instances", operation_id = "change_instance_state",
    security(("bearer" = [])),
    params(InstancePath, ProjectWaitQuery),
    request_body = StateChange,
    responses(
        (status = 202, description = "Changing state", body = OperationRef),
        (status = 200, description = "Done within `?wait=`", body = Operation),
        Operator403, InstanceMissing, TooManyOperations429))]
pub async fn change_instance_state(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<ProjectWaitQuery>,
    Json(change): Json<StateChange>,
) -> ApiResult<Response> {
    change_state(&state, &user, name, &q, change).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionOptions {
    /// Seconds to wait for a clean stop (default 30).
    #[schema(minimum = -1, maximum = 3600)]
    pub timeout: Option<i64>,
    /// Kill rather than shut down cleanly.
    #[serde(default)]
    pub force: bool,
}

/// Shortcut for the state actions: `POST /instances/{name}/start` (or `stop`,
/// `restart`, `freeze`, `unfreeze`). The body is optional.
#[utoipa::path(post, path = "/{name}/{action}", tag = "instances", operation_id = "instance_action",
    security(("bearer" = [])),
    params(InstanceActionPath, ProjectWaitQuery),
    request_body(content = Option<ActionOptions>, description = "Optional"),
    responses(
        (status = 202, description = "Changing state", body = OperationRef),
        (status = 200, description = "Done within `?wait=`", body = Operation),
        Operator403, TooManyOperations429,
        (status = 404, description = "No such instance or action", body = Problem, content_type = "application/problem+json")))]
pub async fn instance_action(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstanceActionPath { name, action }): Path<InstanceActionPath>,
    Query(q): Query<ProjectWaitQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    if !STATE_ACTIONS.contains(&action.as_str()) {
        return Err(ApiError::not_found(
            "route_not_found",
            format!("no action `{action}`; use start, stop, restart, freeze or unfreeze"),
        ));
    }
    let opts: ActionOptions = crate::api::optional_json_body(&body)?;
    let change = StateChange {
        action,
        timeout: opts.timeout.unwrap_or(30),
        force: opts.force,
    };
    change_state(&state, &user, name, &q, change).await
}
