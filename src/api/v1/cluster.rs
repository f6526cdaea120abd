//! `/api/v1/cluster/members`: the servers behind lxgate (DESIGN §10). An
//! Incus cluster's members with their status; a server that is not
//! clustered (the embedded backend's host, a standalone Incus) is the one
//! member. Evacuating and restoring a member is for admins.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::api::operation::{OperationRef, OperationSlot, accepted};
use crate::api::paths::MemberPath;
use crate::api::problems::{Admin403, MemberMissing, TooManyOperations429, Viewer403};
use crate::api::resource::{Entry, ProjectListQuery, ProjectQuery, ProjectScoped, with_etag};
use crate::api::{Json, Page, Path, Query};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::MemberAction;
use crate::backend::types::{ClusterMember, EVACUATION_MODES, Operation};
use crate::error::{ApiError, ApiResult, Problem};
use crate::names::MemberName;

/// List the cluster's members with their status. Members are server-wide;
/// any user with a role in the `?project=` may list them (to choose a
/// `target` where the project allows it), as with storage pools.
#[utoipa::path(get, path = "/members", tag = "cluster", operation_id = "list_cluster_members",
    security(("bearer" = [])),
    params(ProjectListQuery),
    responses(
        (status = 200, description = "A page of members (or names)", body = Page<Entry<ClusterMember>>),
        Viewer403))]
pub async fn list_members(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ProjectListQuery>,
) -> ApiResult<Json<Page<Entry<ClusterMember>>>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (limit, offset) = q.page()?;
    let expand = q.expand.unwrap_or(true);
    let entries = state
        .backend
        .list_members()
        .await?
        .into_iter()
        .map(|m| {
            if expand {
                Entry::Full(Box::new(m))
            } else {
                Entry::Name(m.server_name)
            }
        })
        .collect();
    Ok(Json(Page::slice(entries, limit, offset)))
}

/// Get a cluster member: its status (`Online`, `Offline`, `Evacuated`...),
/// roles and message.
#[utoipa::path(get, path = "/members/{name}", tag = "cluster", operation_id = "get_cluster_member",
    security(("bearer" = [])),
    params(MemberPath, ProjectQuery),
    responses(
        (status = 200, description = "The member", body = ClusterMember,
            headers(("etag" = String, description = "Version"))),
        Viewer403, MemberMissing))]
pub async fn get_member(
    user: AuthUser,
    State(state): State<AppState>,
    Path(MemberPath { name }): Path<MemberPath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (member, etag) = state.backend.get_member(&name).await?;
    Ok(with_etag(Json(member).into_response(), etag))
}

/// `?wait=` of a member's state change (cluster-wide: no project).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MemberWaitQuery {
    /// Wait up to this many seconds (max 300) for the operation to finish.
    #[param(value_type = Option<crate::api::schemas::WaitSeconds>)]
    pub wait: Option<u64>,
}

/// The optional body of `evacuate`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvacuateOptions {
    /// What happens to the member's instances: `auto` (each instance's
    /// `cluster.evacuate` decides; the default), `stop`, `migrate` or
    /// `live-migrate`.
    #[schema(value_type = Option<crate::backend::types::schema::EvacuationMode>, example = "stop")]
    pub mode: Option<String>,
}

/// Evacuate a cluster member (admins): its instances move to other members
/// (or stop, by `mode`) and it takes no new ones until restored. Answers 202
/// with an operation.
#[utoipa::path(post, path = "/members/{name}/evacuate", tag = "cluster", operation_id = "evacuate_cluster_member",
    security(("bearer" = [])),
    params(MemberPath, MemberWaitQuery),
    request_body(content = Option<EvacuateOptions>, description = "Optional"),
    responses(
        (status = 202, description = "Evacuating", body = OperationRef,
            headers(("location" = String, description = "The operation's URL"))),
        (status = 200, description = "Finished within `?wait=`", body = Operation),
        Admin403, MemberMissing, TooManyOperations429,
        (status = 501, description = "Not supported by the backend behind lxgate (`not_supported`): a server that is not clustered has nowhere to move instances to", body = Problem, content_type = "application/problem+json")))]
pub async fn evacuate_member(
    user: AuthUser,
    State(state): State<AppState>,
    Path(MemberPath { name }): Path<MemberPath>,
    Query(q): Query<MemberWaitQuery>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require(Permission::InfraManage, "")?;
    let opts: EvacuateOptions = crate::api::optional_json_body(&body)?;
    if let Some(mode) = &opts.mode
        && !EVACUATION_MODES.contains(&mode.as_str())
    {
        return Err(ApiError::invalid_field(
            "mode",
            format!("mode must be one of {}", EVACUATION_MODES.join(", ")),
        ));
    }
    change_state(
        &state,
        &user,
        &name,
        MemberAction::Evacuate,
        opts.mode.as_deref(),
        q.wait,
    )
    .await
}

/// Restore an evacuated cluster member (admins): it takes instances again,
/// and the ones evacuated from it come back. Answers 202 with an operation.
#[utoipa::path(post, path = "/members/{name}/restore", tag = "cluster", operation_id = "restore_cluster_member",
    security(("bearer" = [])),
    params(MemberPath, MemberWaitQuery),
    responses(
        (status = 202, description = "Restoring", body = OperationRef,
            headers(("location" = String, description = "The operation's URL"))),
        (status = 200, description = "Finished within `?wait=`", body = Operation),
        Admin403, MemberMissing, TooManyOperations429,
        (status = 501, description = "Not supported by the backend behind lxgate (`not_supported`): a server that is not clustered has no evacuation to restore", body = Problem, content_type = "application/problem+json")))]
pub async fn restore_member(
    user: AuthUser,
    State(state): State<AppState>,
    Path(MemberPath { name }): Path<MemberPath>,
    Query(q): Query<MemberWaitQuery>,
) -> ApiResult<Response> {
    user.require(Permission::InfraManage, "")?;
    change_state(&state, &user, &name, MemberAction::Restore, None, q.wait).await
}

async fn change_state(
    state: &AppState,
    user: &AuthUser,
    name: &MemberName,
    action: MemberAction,
    mode: Option<&str>,
    wait: Option<u64>,
) -> ApiResult<Response> {
    let slot = OperationSlot::acquire(state, user)?;
    let op = state
        .backend
        .change_member_state(name, action, mode)
        .await?;
    // Cluster-wide work, filed under `default` (where Incus runs it): only
    // admins start it, and its record names the member.
    accepted(
        state,
        slot,
        "default",
        &format!("cluster.member.{}", action.as_str()),
        Some(name.as_str()),
        op,
        wait,
    )
    .await
}

#[cfg(test)]
mod tests {
    use utoipa::PartialSchema;

    use super::*;

    /// The documented modes are the ones the handler accepts.
    #[test]
    fn evacuation_modes_agree_with_the_schema() {
        let schema =
            serde_json::to_value(crate::backend::types::schema::EvacuationMode::schema()).unwrap();
        assert_eq!(schema["enum"], serde_json::json!(EVACUATION_MODES));
    }
}
