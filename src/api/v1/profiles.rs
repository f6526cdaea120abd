//! `/api/v1/profiles`: the config and devices instances of a project take,
//! in the order they list them, under their own.
//!
//! Operators of a project manage its profiles, held to the instance policy
//! (DESIGN §4a) like an instance's own config: what a profile holds, and
//! what it gives every instance using it. On the embedded backend a change
//! reaches a running instance at its next start.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::api::ownership;
use crate::api::paths::ProfilePath;
use crate::api::policy;
use crate::api::problems::{
    DefaultOrUsedProfile409, NameTaken409, Operator403, ProfileConfig400, ProfileMissing,
    ProfilePolicy403, Stale412, Viewer403,
};
use crate::api::resource::{Entry, IfMatch, ProjectListQuery, ProjectQuery, ProjectScoped};
use crate::api::resource::{created, entries, with_etag};
use crate::api::{Json, Page, Path, Query};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::Listing;
use crate::backend::types::{Profile, ProfileCreate, ProfileUpdate};
use crate::backend::{BackendError, Missing};
use crate::error::{ApiError, ApiResult};
use crate::names::{ProfileName, ProjectName, check_resource_name};

/// `default` is every project's and stays: not deleted, not renamed.
fn refuse_default(name: &ProfileName, what: &str) -> ApiResult<()> {
    if name.as_str() == "default" {
        return Err(ApiError::conflict(
            "default_profile",
            format!("the `default` profile cannot be {what}"),
        ));
    }
    Ok(())
}

/// A name for a profile lxgate makes: a resource name (DESIGN §6), though
/// Incus takes more (profiles made elsewhere keep theirs).
fn new_name(name: &str) -> ApiResult<ProfileName> {
    check_resource_name("profile", name).map_err(|e| ApiError::invalid_field("name", e))?;
    ProfileName::parse(name).map_err(|e| ApiError::invalid_field("name", e))
}

/// The project `profile` (read through `project`) belongs to, which the
/// caller must operate in as well: on Incus a project without profiles of
/// its own (`features.profiles=false`) uses the `default` project's, and
/// changing those is changing `default`.
fn home(user: &AuthUser, project: &ProjectName, profile: &Profile) -> ApiResult<ProjectName> {
    if profile.project.is_empty() || profile.project == project.as_str() {
        return Ok(project.clone());
    }
    let home = ProjectName::parse(&profile.project).map_err(|e| {
        ApiError::internal(anyhow::anyhow!(
            "the backend named profile project {:?}: {e}",
            profile.project
        ))
    })?;
    user.require(Permission::ProjectOperate, home.as_str())?;
    Ok(home)
}

/// List the profiles of a project (`default` is always among them).
#[utoipa::path(get, path = "", tag = "profiles", operation_id = "list_profiles",
    security(("bearer" = [])),
    params(ProjectListQuery),
    responses(
        (status = 200, description = "A page of profiles (or names)", body = Page<Entry<Profile>>),
        Viewer403))]
pub async fn list_profiles(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ProjectListQuery>,
) -> ApiResult<Json<Page<Entry<Profile>>>> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (limit, offset) = q.page()?;
    let mut listing = state
        .backend
        .list_profiles(&project, q.expand.unwrap_or(true))
        .await?;
    if let Listing::Full(items) = &mut listing {
        ownership::filter_used_by(&state, &user, items).await?;
    }
    Ok(Json(Page::slice(entries(listing), limit, offset)))
}

/// Create a profile (operators of the project, held to the instance
/// policy). Instances name it in `profiles`, applied in order under their
/// own config.
#[utoipa::path(post, path = "", tag = "profiles", operation_id = "create_profile",
    security(("bearer" = [])),
    params(ProjectQuery),
    request_body = ProfileCreate,
    responses(
        (status = 201, description = "Created", body = Profile,
            headers(("location" = String, description = "The profile's URL"),
                    ("etag" = String, description = "Version, for If-Match"))),
        ProfileConfig400, ProfilePolicy403, NameTaken409))]
pub async fn create_profile(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ProjectQuery>,
    Json(req): Json<ProfileCreate>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    let name = new_name(&req.name)?;
    // Where it will belong: where the project's `default` does (every
    // project has one, so its 404 is the project's).
    let (default, _) = state
        .backend
        .get_profile(
            &project,
            &ProfileName::parse("default").expect("a profile name"),
        )
        .await
        .map_err(|e| match e {
            BackendError::NotFound(_) => BackendError::NotFound(Missing::project(&project)),
            e => e,
        })?;
    let home = home(&user, &project, &default)?;
    let new = Profile {
        name: name.to_string(),
        description: req.description.clone(),
        config: req.config.clone(),
        devices: req.devices.clone(),
        ..Default::default()
    };
    policy::check_profile_write(&state, &user, &home, None, &new).await?;
    crate::api::ownership::check_volume_devices(
        &state,
        &user,
        &project,
        &Default::default(),
        &new.devices,
    )
    .await?;
    state.backend.create_profile(&project, &req).await?;
    let (profile, etag) = state.backend.get_profile(&project, &name).await?;
    Ok(with_etag(
        created(
            &format!("/api/v1/profiles/{name}?project={}", project.as_str()),
            profile,
        ),
        etag,
    ))
}

/// Get a profile, with what uses it. The `ETag` header can be sent back as
/// `If-Match`.
#[utoipa::path(get, path = "/{name}", tag = "profiles", operation_id = "get_profile",
    security(("bearer" = [])),
    params(ProfilePath, ProjectQuery),
    responses(
        (status = 200, description = "The profile", body = Profile,
            headers(("etag" = String, description = "Version, for If-Match"))),
        Viewer403, ProfileMissing))]
pub async fn get_profile(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ProfilePath { name }): Path<ProfilePath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectView, project.as_str())?;
    let (mut p, etag) = state.backend.get_profile(&project, &name).await?;
    ownership::filter_used_by(&state, &user, std::slice::from_mut(&mut p)).await?;
    Ok(with_etag(Json(p).into_response(), etag))
}

async fn update(
    state: AppState,
    user: AuthUser,
    name: ProfileName,
    q: ProjectQuery,
    if_match: Option<String>,
    body: ProfileUpdate,
    replace: bool,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    // Judged against the profile as it is now (and the instances using
    // it); the write applies to that version only (its ETag).
    let (current, etag) = state.backend.get_profile(&project, &name).await?;
    let home = home(&user, &project, &current)?;
    let after = current.updated(&body, replace);
    policy::check_profile_write(&state, &user, &home, Some(&current), &after).await?;
    crate::api::ownership::check_volume_devices(
        &state,
        &user,
        &project,
        &current.devices,
        &after.devices,
    )
    .await?;
    crate::api::quotas::check_profile(&state, &user, &home, &current, &after).await?;
    let version = policy::pin(if_match.as_deref(), etag)?;
    state
        .backend
        .update_profile(&project, &name, &body, version.as_deref(), replace)
        .await?;
    let (mut p, etag) = state.backend.get_profile(&project, &name).await?;
    ownership::filter_used_by(&state, &user, std::slice::from_mut(&mut p)).await?;
    Ok(with_etag(Json(p).into_response(), etag))
}

/// Replace a profile's description, config and devices (left-out fields are
/// emptied, as in Incus). Every instance using it takes the change; on the
/// embedded backend a running one at its next start.
#[utoipa::path(put, path = "/{name}", tag = "profiles", operation_id = "replace_profile",
    security(("bearer" = [])),
    params(ProfilePath, ProjectQuery,
        ("if-match" = Option<String>, Header, description = "ETag from GET; 412 if the profile changed since")),
    request_body = ProfileUpdate,
    responses(
        (status = 200, description = "Updated", body = Profile,
            headers(("etag" = String, description = "Version, for If-Match"))),
        ProfileConfig400, ProfilePolicy403, ProfileMissing, Stale412))]
pub async fn replace_profile(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ProfilePath { name }): Path<ProfilePath>,
    Query(q): Query<ProjectQuery>,
    IfMatch(if_match): IfMatch,
    Json(body): Json<ProfileUpdate>,
) -> ApiResult<Response> {
    update(state, user, name, q, if_match, body, true).await
}

/// Change a profile's description, some config keys (`""` unsets one) or
/// devices (by name). Every instance using it takes the change; on the
/// embedded backend a running one at its next start.
#[utoipa::path(patch, path = "/{name}", tag = "profiles", operation_id = "update_profile",
    security(("bearer" = [])),
    params(ProfilePath, ProjectQuery,
        ("if-match" = Option<String>, Header, description = "ETag from GET; 412 if the profile changed since")),
    request_body = ProfileUpdate,
    responses(
        (status = 200, description = "Updated", body = Profile,
            headers(("etag" = String, description = "Version, for If-Match"))),
        ProfileConfig400, ProfilePolicy403, ProfileMissing, Stale412))]
pub async fn update_profile(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ProfilePath { name }): Path<ProfilePath>,
    Query(q): Query<ProjectQuery>,
    IfMatch(if_match): IfMatch,
    Json(body): Json<ProfileUpdate>,
) -> ApiResult<Response> {
    update(state, user, name, q, if_match, body, false).await
}

/// Delete a profile no instance uses; `default` stays.
#[utoipa::path(delete, path = "/{name}", tag = "profiles", operation_id = "delete_profile",
    security(("bearer" = [])),
    params(ProfilePath, ProjectQuery),
    responses(
        (status = 204, description = "Deleted"),
        Operator403, ProfileMissing, DefaultOrUsedProfile409))]
pub async fn delete_profile(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ProfilePath { name }): Path<ProfilePath>,
    Query(q): Query<ProjectQuery>,
) -> ApiResult<StatusCode> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    refuse_default(&name, "deleted")?;
    let (current, _) = state.backend.get_profile(&project, &name).await?;
    let home = home(&user, &project, &current)?;
    // Only a profile the caller could have made: an admin's (holding what
    // operators may not set) is not theirs to remove or rename.
    policy::check_profile_write(&state, &user, &home, None, &current).await?;
    state.backend.delete_profile(&project, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileRename {
    /// The new name.
    #[schema(value_type = crate::api::schemas::NewProfileName, example = "medium")]
    pub name: String,
}

/// Rename a profile; the instances using it keep it under the new name.
/// `default` keeps its name.
#[utoipa::path(post, path = "/{name}/rename", tag = "profiles", operation_id = "rename_profile",
    security(("bearer" = [])),
    params(ProfilePath, ProjectQuery),
    request_body = ProfileRename,
    responses(
        (status = 200, description = "Renamed", body = Profile,
            headers(("location" = String, description = "The profile's new URL"))),
        Operator403, ProfileMissing,
        (status = 409, description = "The profile is `default`, or the new name is taken", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn rename_profile(
    user: AuthUser,
    State(state): State<AppState>,
    Path(ProfilePath { name }): Path<ProfilePath>,
    Query(q): Query<ProjectQuery>,
    Json(req): Json<ProfileRename>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    refuse_default(&name, "renamed")?;
    let new = new_name(&req.name)?;
    let (current, _) = state.backend.get_profile(&project, &name).await?;
    let home = home(&user, &project, &current)?;
    // Only a profile the caller could have made: renaming an admin's onto
    // a name an instance check just judged would swap its content in.
    policy::check_profile_write(&state, &user, &home, None, &current).await?;
    state.backend.rename_profile(&project, &name, &new).await?;
    let (mut p, etag) = state.backend.get_profile(&project, &new).await?;
    ownership::filter_used_by(&state, &user, std::slice::from_mut(&mut p)).await?;
    let mut resp = with_etag(Json(p).into_response(), etag);
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!(
        "/api/v1/profiles/{new}?project={}",
        project.as_str()
    )) {
        resp.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    Ok(resp)
}
