//! `/api/v1/projects`: projects on the backend. Admins create, change and
//! delete them; everybody sees the projects they hold a role in.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::paths::ProjectPath;
use crate::api::problems::{
    Admin403, DefaultProjectSettings501, NameTaken409, ProjectMissing, ProjectRefused400, Stale412,
    Viewer403,
};
use crate::api::resource::{Entry, IfMatch, created, with_etag};
use crate::api::{Json, Page, Pagination, Path, Query};
use crate::api::{ownership, policy, quotas};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::{ConfigMap, Project, ProjectCreate, ProjectState, ProjectUpdate};
use crate::db::audit::Detail;
use crate::error::{ApiError, ApiResult, Problem};
use crate::names::ProjectName;
use crate::policy::Widening;

/// The `default` project exists on every server and cannot go away.
fn refuse_default(name: &ProjectName) -> ApiResult<()> {
    if name.as_str() == "default" {
        return Err(ApiError::conflict(
            "default_project",
            "the `default` project cannot be deleted",
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListProjectsQuery {
    /// Full objects (default) or only names.
    pub expand: Option<bool>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// The path names the project; a `?project=` given as well must agree.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SameProjectQuery {
    /// Optional; if given, it must equal the project in the path.
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
}

impl SameProjectQuery {
    fn check(&self, name: &str) -> ApiResult<()> {
        match self.project.as_deref() {
            None | Some("") => Ok(()),
            Some(p) if p == name => Ok(()),
            Some(p) => Err(ApiError::bad_request(
                "invalid_query",
                format!("?project={p} does not match the project `{name}` in the path"),
            )),
        }
    }
}

/// List projects: admins (and users with a global role) see every project,
/// other users only those they hold a role in.
#[utoipa::path(get, path = "", tag = "projects", operation_id = "list_projects",
    security(("bearer" = [])),
    params(ListProjectsQuery),
    responses(
        (status = 200, description = "A page of the caller's projects (or names)", body = Page<Entry<Project>>)))]
pub async fn list_projects(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ListProjectsQuery>,
) -> ApiResult<Json<Page<Entry<Project>>>> {
    let (limit, offset) = Pagination {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve()?;
    let expand = q.expand.unwrap_or(true);
    let mut projects: Vec<Project> = state
        .backend
        .list_projects()
        .await?
        .into_iter()
        .filter(|p| user.grants.can_see(&p.name))
        .collect();
    if expand {
        ownership::filter_used_by(&state, &user, &mut projects).await?;
    }
    let visible: Vec<Entry<Project>> = projects
        .into_iter()
        .map(|p| {
            if expand {
                Entry::Full(Box::new(policy::describe(&state, p)))
            } else {
                Entry::Name(p.name)
            }
        })
        .collect();
    Ok(Json(Page::slice(visible, limit, offset)))
}

/// Create a project (admins). Give users a role in it with
/// `PUT /api/v1/users/{username}/projects/{project}`.
#[utoipa::path(post, path = "", tag = "projects", operation_id = "create_project",
    security(("bearer" = [])),
    request_body = ProjectCreate,
    responses(
        (status = 201, description = "Created", body = Project,
            headers(("location" = String, description = "The project's URL"))),
        ProjectRefused400, Admin403, NameTaken409))]
pub async fn create_project(
    user: AuthUser,
    State(state): State<AppState>,
    Json(req): Json<ProjectCreate>,
) -> ApiResult<Response> {
    user.require(Permission::InfraManage, "")?;
    let name = ProjectName::parse(&req.name).map_err(|e| ApiError::invalid_field("name", e))?;
    let mut req = req;
    // New projects are restricted in the backend (where it has such a
    // setting) to match the instance policy, unless the admin says otherwise.
    let widening = policy::widening_of(&req.config)?;
    quotas::limits_of(&req.config)?;
    ownership::setting_of(&req.config)?;
    if req.config.get("restricted").map(String::as_str) != Some("false") {
        // The admin's own restricted.* keys, if any, win.
        let mut config = ConfigMap::new();
        policy::set_restrictions(&state, &widening, &mut config);
        config.extend(std::mem::take(&mut req.config));
        req.config = config;
    }
    state.backend.create_project(&req).await?;
    // A "no such project" read before must not outlive its creation.
    state.ownership.forget_project(name.as_str()).await;
    let (project, _) = state.backend.get_project(&name).await?;
    let project = policy::describe(&state, project);
    let detail = audit_detail(&project);
    let mut resp = created(&format!("/api/v1/projects/{name}"), project);
    resp.extensions_mut().insert(detail);
    Ok(resp)
}

/// Get a project (any role in it). The `ETag` header can be sent back as `If-Match`.
#[utoipa::path(get, path = "/{name}", tag = "projects", operation_id = "get_project",
    security(("bearer" = [])),
    params(ProjectPath, SameProjectQuery),
    responses(
        (status = 200, description = "The project", body = Project,
            headers(("etag" = String, description = "Version, for If-Match"))),
        Viewer403, ProjectMissing))]
pub async fn get_project(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ProjectPath { name }): Path<ProjectPath>,
    Query(q): Query<SameProjectQuery>,
) -> ApiResult<Response> {
    user.require(Permission::ProjectView, name.as_str())?;
    q.check(name.as_str())?;
    let (mut p, etag) = state.backend.get_project(&name).await?;
    ownership::filter_used_by(&state, &user, std::slice::from_mut(&mut p)).await?;
    Ok(with_etag(
        Json(policy::describe(&state, p)).into_response(),
        etag,
    ))
}

/// The project as it is now, with its policy and ETag; the policy also goes
/// into the audit entry of the change.
async fn project_response(state: &AppState, name: &ProjectName) -> ApiResult<Response> {
    let (p, etag) = state.backend.get_project(name).await?;
    let p = policy::describe(state, p);
    let detail = audit_detail(&p);
    let mut resp = with_etag(Json(p).into_response(), etag);
    resp.extensions_mut().insert(detail);
    Ok(resp)
}

fn audit_detail(p: &Project) -> Detail {
    Detail(format!(
        "policy: restricted={} allow_config=[{}] allow_devices=[{}]",
        p.policy.restricted,
        p.policy.allow_config.join(","),
        p.policy.allow_devices.join(",")
    ))
}

async fn update(
    state: AppState,
    user: AuthUser,
    name: ProjectName,
    mut if_match: Option<String>,
    body: ProjectUpdate,
    replace: bool,
) -> ApiResult<Response> {
    user.require(Permission::InfraManage, "")?;
    let mut body = body;
    if let Some(config) = &mut body.config {
        // The config as it will be: checked, and when the project is (or
        // becomes) restricted, the backend's restrictions follow a changed
        // allow list. Pinned to the version read.
        let (current, etag) = state.backend.get_project(&name).await?;
        let mut after = if replace {
            ConfigMap::new()
        } else {
            current.config.clone()
        };
        after.extend(config.iter().map(|(k, v)| (k.clone(), v.clone())));
        let widening = policy::widening_of(&after)?;
        quotas::limits_of(&after)?;
        ownership::setting_of(&after)?;
        let was = Widening::from_project_config(&current.config).unwrap_or_default();
        let restricted = |c: &ConfigMap| c.get("restricted").map(String::as_str) == Some("true");
        // The restriction keys follow a changed allow list (a stale
        // restricted.*=allow sent back in a PUT must not outlive it).
        if restricted(&after) && (widening != was || !restricted(&current.config)) {
            policy::set_restrictions(&state, &widening, config);
        } else if restricted(&after) && replace {
            // A PUT that keeps the project restricted but leaves out restriction
            // keys would fall back to the backend's defaults (Incus then blocks
            // snapshots and backups): the missing ones are filled in.
            let mut keys = ConfigMap::new();
            policy::set_restrictions(&state, &widening, &mut keys);
            for (k, v) in keys {
                config.entry(k).or_insert(v);
            }
        }
        if_match = policy::pin(if_match.as_deref(), etag)?;
    }
    state
        .backend
        .update_project(&name, &body, if_match.as_deref(), replace)
        .await?;
    // Owner-only on or off applies at once on this replica.
    state.ownership.forget_project(name.as_str()).await;
    project_response(&state, &name).await
}

/// Restrict a project in the backend to match the instance policy (admins):
/// on Incus, `restricted=true` and the `restricted.*` keys for the
/// project's allow lists, so Incus itself refuses privileged containers,
/// host-path disks and the other admin-only settings. Works on existing
/// projects, `default` included; projects lxgate creates start restricted.
#[utoipa::path(post, path = "/{name}/restrict", tag = "projects", operation_id = "restrict_project",
    security(("bearer" = [])),
    params(ProjectPath),
    responses(
        (status = 200, description = "Restricted", body = Project),
        Admin403, ProjectMissing,
        (status = 412, description = "The project changed meanwhile; try again", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "The backend has no project restrictions (embedded: containers are unprivileged instead)", body = Problem, content_type = "application/problem+json")))]
pub async fn restrict_project(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ProjectPath { name }): Path<ProjectPath>,
) -> ApiResult<Response> {
    user.require(Permission::InfraManage, "")?;
    let (current, etag) = state.backend.get_project(&name).await?;
    let widening = Widening::from_project_config(&current.config).unwrap_or_default();
    let Some(keys) = state.backend.project_restrictions(&widening) else {
        return Err(ApiError::not_implemented(
            "this backend has no project restrictions: lxgate enforces the instance policy itself and runs containers unprivileged",
        ));
    };
    let update = ProjectUpdate {
        description: None,
        config: Some(keys),
    };
    state
        .backend
        .update_project(&name, &update, etag.as_deref(), false)
        .await?;
    project_response(&state, &name).await
}

/// Replace a project's description and config (left-out fields are emptied,
/// as in Incus; admins).
#[utoipa::path(put, path = "/{name}", tag = "projects", operation_id = "replace_project",
    security(("bearer" = [])),
    params(ProjectPath,
        ("if-match" = Option<String>, Header, description = "ETag from GET; 412 if the project changed since")),
    request_body = ProjectUpdate,
    responses(
        (status = 200, description = "Updated", body = Project),
        ProjectRefused400, Admin403, ProjectMissing, Stale412, DefaultProjectSettings501))]
pub async fn replace_project(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ProjectPath { name }): Path<ProjectPath>,
    IfMatch(if_match): IfMatch,
    Json(body): Json<ProjectUpdate>,
) -> ApiResult<Response> {
    update(state, user, name, if_match, body, true).await
}

/// Change a project's description or some config keys, e.g. limits (admins).
#[utoipa::path(patch, path = "/{name}", tag = "projects", operation_id = "update_project",
    security(("bearer" = [])),
    params(ProjectPath,
        ("if-match" = Option<String>, Header, description = "ETag from GET; 412 if the project changed since")),
    request_body = ProjectUpdate,
    responses(
        (status = 200, description = "Updated", body = Project),
        ProjectRefused400, Admin403, ProjectMissing, Stale412, DefaultProjectSettings501))]
pub async fn update_project(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ProjectPath { name }): Path<ProjectPath>,
    IfMatch(if_match): IfMatch,
    Json(body): Json<ProjectUpdate>,
) -> ApiResult<Response> {
    update(state, user, name, if_match, body, false).await
}

/// Delete a project; it must be empty (admins). Role grants in it are kept
/// (grants may name projects that do not exist yet).
#[utoipa::path(delete, path = "/{name}", tag = "projects", operation_id = "delete_project",
    security(("bearer" = [])),
    params(ProjectPath),
    responses(
        (status = 204, description = "Deleted"),
        Admin403, ProjectMissing,
        (status = 409, description = "The project is not empty, or is `default`", body = Problem, content_type = "application/problem+json")))]
pub async fn delete_project(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ProjectPath { name }): Path<ProjectPath>,
) -> ApiResult<StatusCode> {
    user.require(Permission::InfraManage, "")?;
    refuse_default(&name)?;
    state.backend.delete_project(&name).await?;
    // A project re-created later under the same name must not hand the old
    // members their roles back.
    crate::db::project_roles::remove_project(&state.db.pool, name.as_str()).await?;
    crate::db::teams::remove_project(&state.db.pool, name.as_str()).await?;
    crate::db::instance_owners::remove_project(&state.db.pool, name.as_str()).await?;
    state.ownership.forget_project(name.as_str()).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Usage against limits, per resource (`instances`, `containers`,
/// `virtual-machines`, `cpu`, `memory`, `disk`, `networks`, `processes`);
/// a limit of -1 means none.
#[utoipa::path(get, path = "/{name}/state", tag = "projects", operation_id = "get_project_state",
    security(("bearer" = [])),
    params(ProjectPath, SameProjectQuery),
    responses(
        (status = 200, description = "Usage and limits", body = ProjectStateOut),
        Viewer403, ProjectMissing))]
pub async fn get_project_state(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ProjectPath { name }): Path<ProjectPath>,
    Query(q): Query<SameProjectQuery>,
) -> ApiResult<Json<ProjectStateOut>> {
    user.require(Permission::ProjectView, name.as_str())?;
    q.check(name.as_str())?;
    let resources = state.backend.project_state(&name).await?;
    let (project, _) = state.backend.get_project(&name).await?;
    let mut users = quotas::usage_by_user(&state, &name).await?;
    // Where owner-only applies, who else runs what is not the caller's to see.
    if ownership::applies(&state, &user, name.as_str()).await? {
        users.retain(|u| u.username == user.username);
    }
    Ok(Json(ProjectStateOut {
        resources,
        user_limits: quotas::limits_of(&project.config)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        users,
    }))
}

/// A project's usage: against its limits, and per user (what each user's
/// instances use, against the per-user quotas).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ProjectStateOut {
    #[serde(flatten)]
    pub resources: ProjectState,
    /// The per-user quotas (`instances`, `cpu`, `memory` and `disk` in
    /// bytes) set in the project's config (`user.lxgate.limits.*-per-user`).
    pub user_limits: std::collections::BTreeMap<String, u64>,
    /// What each user's instances (those it made through lxgate) use. In an
    /// owner-only project (`user.lxgate.owner-only`), non-admins see only
    /// their own.
    pub users: Vec<quotas::UserUsage>,
}
