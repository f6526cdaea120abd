//! `/api/v1/users`: account administration and per-project role grants (admins only).

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;

use crate::api::accounts::{CreateUser, ProjectGrant, UserOut, create_user_row, created};
use crate::api::paths::{UserPath, UserProjectPath};
use crate::api::problems::{
    Admin403, AdminInteractive403, AuthRateLimited429, LastAdmin409, NameTaken409, NewUser422,
    UserMissing,
};
use crate::api::{AuthRateLimit, Json, Page, Pagination, Path, Query};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission, Role, Username, password};
use crate::db;
use crate::error::{ApiError, ApiResult, Problem};

fn user_not_found(name: &str) -> ApiError {
    ApiError::not_found("user_not_found", format!("user `{name}` does not exist"))
}

async fn grants_of(
    state: &AppState,
    ids: &[String],
) -> ApiResult<HashMap<String, Vec<ProjectGrant>>> {
    let mut map: HashMap<String, Vec<ProjectGrant>> = HashMap::new();
    for g in db::project_roles::for_users(&state.db.pool, ids).await? {
        if let Ok(role) = g.role.parse() {
            map.entry(g.user_id).or_default().push(ProjectGrant {
                project: g.project,
                role,
            });
        }
    }
    Ok(map)
}

/// The teams of these users, by user id.
async fn teams_of(state: &AppState, ids: &[String]) -> ApiResult<HashMap<String, Vec<String>>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for m in db::teams::memberships(&state.db.pool, ids).await? {
        let teams = map.entry(m.user_id).or_default();
        // One row per grant of the team: each team once.
        if teams.last() != Some(&m.team) {
            teams.push(m.team);
        }
    }
    Ok(map)
}

async fn load(state: &AppState, name: &Username) -> ApiResult<(db::users::UserRow, UserOut)> {
    let row = db::users::by_username(&state.db.pool, name.as_str())
        .await?
        .ok_or_else(|| user_not_found(name.as_str()))?;
    let ids = std::slice::from_ref(&row.id);
    let grants = grants_of(state, ids)
        .await?
        .remove(&row.id)
        .unwrap_or_default();
    let teams = teams_of(state, ids)
        .await?
        .remove(&row.id)
        .unwrap_or_default();
    let out = UserOut::from_row(&row, grants, teams);
    Ok((row, out))
}

/// List users.
#[utoipa::path(get, path = "", tag = "users", operation_id = "list_users",
    security(("bearer" = [])),
    params(Pagination),
    responses(
        (status = 200, description = "A page of users", body = Page<UserOut>),
        Admin403))]
pub async fn list_users(
    user: AuthUser,
    State(state): State<AppState>,
    Query(page): Query<Pagination>,
) -> ApiResult<Json<Page<UserOut>>> {
    user.require(Permission::UserManage, "")?;
    let (limit, offset) = page.resolve()?;
    let rows = db::users::list(&state.db.pool, limit, offset).await?;
    let total = db::users::count(&state.db.pool).await?;
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut grants = grants_of(&state, &ids).await?;
    let mut teams = teams_of(&state, &ids).await?;
    let items = rows
        .iter()
        .map(|r| {
            UserOut::from_row(
                r,
                grants.remove(&r.id).unwrap_or_default(),
                teams.remove(&r.id).unwrap_or_default(),
            )
        })
        .collect();
    Ok(Json(Page {
        items,
        total,
        limit,
        offset,
    }))
}

/// Create a user.
#[utoipa::path(post, path = "", tag = "users", operation_id = "create_user",
    security(("bearer" = [])),
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserOut,
            headers(("location" = String, description = "URL of the new user"))),
        AdminInteractive403, NameTaken409, NewUser422, AuthRateLimited429))]
pub async fn create_user(
    _limit: AuthRateLimit,
    user: AuthUser,
    State(state): State<AppState>,
    Json(req): Json<CreateUser>,
) -> ApiResult<Response> {
    user.require(Permission::UserManage, "")?;
    user.require_interactive()?;
    Ok(created(create_user_row(&state, req).await?))
}

/// Get a user.
#[utoipa::path(get, path = "/{username}", tag = "users", operation_id = "get_user",
    security(("bearer" = [])),
    params(UserPath),
    responses(
        (status = 200, description = "The user", body = UserOut),
        Admin403, UserMissing))]
pub async fn get_user(
    user: AuthUser,
    State(state): State<AppState>,
    Path(UserPath { username: name }): Path<UserPath>,
) -> ApiResult<Json<UserOut>> {
    user.require(Permission::UserManage, "")?;
    Ok(Json(load(&state, &name).await?.1))
}

/// `Some(None)` for an explicit `null`, `None` for an absent field.
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New global role; `null` removes it (project roles stay).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Role>)]
    pub role: Option<Option<Role>>,
    pub disabled: Option<bool>,
    /// Reset the password (an admin action; the user's sessions end).
    #[schema(min_length = 12, max_length = 1024, pattern = r"^(?!([\s\S])\1*$)[^\u0000]*$", format = Password)]
    pub password: Option<String>,
}

/// Change a user's role, disable or enable it, or reset its password.
///
/// Any change ends the user's current access tokens at once.
#[utoipa::path(patch, path = "/{username}", tag = "users", operation_id = "update_user",
    security(("bearer" = [])),
    params(UserPath),
    request_body = UpdateUser,
    responses(
        (status = 200, description = "The updated user", body = UserOut),
        AdminInteractive403, UserMissing, LastAdmin409))]
pub async fn update_user(
    user: AuthUser,
    State(state): State<AppState>,
    Path(UserPath { username: name }): Path<UserPath>,
    Json(req): Json<UpdateUser>,
) -> ApiResult<Json<UserOut>> {
    user.require(Permission::UserManage, "")?;
    // Who may do what is changed from a login, never with a token: a
    // stolen admin token must not leave an admin behind once revoked.
    user.require_interactive()?;
    let (row, _) = load(&state, &name).await?;
    let password_hash = match req.password {
        Some(pw) => {
            password::check_policy(name.as_str(), &pw, state.config.password_min_length)
                .map_err(|e| ApiError::invalid_field("password", e))?;
            Some(password::hash(pw).await?)
        }
        None => None,
    };
    let loses_admin = row.role() == Some(Role::Admin)
        && !row.is_disabled()
        && (req.role.is_some_and(|r| r != Some(Role::Admin)) || req.disabled == Some(true));
    let changes = db::users::Changes {
        role: req.role,
        disabled: req.disabled,
        password_hash,
    };
    if loses_admin {
        if !db::users::update_keeping_an_admin(&state.db, &row.id, &changes).await? {
            return Err(last_admin());
        }
    } else {
        db::users::update(&state.db.pool, &row.id, &changes).await?;
    }
    Ok(Json(load(&state, &name).await?.1))
}

fn last_admin() -> ApiError {
    ApiError::conflict(
        "last_admin",
        "this is the last enabled admin; make another user admin first",
    )
}

/// Delete a user and its grants and sessions.
#[utoipa::path(delete, path = "/{username}", tag = "users", operation_id = "delete_user",
    security(("bearer" = [])),
    params(UserPath),
    responses(
        (status = 204, description = "Deleted"),
        Admin403, UserMissing, LastAdmin409))]
pub async fn delete_user(
    user: AuthUser,
    State(state): State<AppState>,
    Path(UserPath { username: name }): Path<UserPath>,
) -> ApiResult<StatusCode> {
    user.require(Permission::UserManage, "")?;
    let (row, _) = load(&state, &name).await?;
    let deleted = if row.role() == Some(Role::Admin) && !row.is_disabled() {
        match db::users::delete_keeping_an_admin(&state.db, &row.id).await? {
            Some(false) => return Err(last_admin()),
            found => found.is_some(),
        }
    } else {
        db::users::delete(&state.db.pool, &row.id).await?
    };
    if !deleted {
        return Err(user_not_found(name.as_str()));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub role: Role,
}

/// Grant a user a role in one project (replaces an earlier grant there).
#[utoipa::path(put, path = "/{username}/projects/{project}", tag = "users", operation_id = "grant_project_role",
    security(("bearer" = [])),
    params(UserProjectPath),
    request_body = GrantRequest,
    responses(
        (status = 200, description = "The user with its grants", body = UserOut),
        AdminInteractive403, UserMissing))]
pub async fn grant_project_role(
    user: AuthUser,
    State(state): State<AppState>,
    Path(UserProjectPath {
        username: name,
        project,
    }): Path<UserProjectPath>,
    Json(req): Json<GrantRequest>,
) -> ApiResult<Json<UserOut>> {
    user.require(Permission::UserManage, "")?;
    user.require_interactive()?;
    let (row, _) = load(&state, &name).await?;
    db::project_roles::set(&state.db.pool, &row.id, project.as_str(), req.role).await?;
    Ok(Json(load(&state, &name).await?.1))
}

/// Remove a user's role in one project.
#[utoipa::path(delete, path = "/{username}/projects/{project}", tag = "users", operation_id = "revoke_project_role",
    security(("bearer" = [])),
    params(UserProjectPath),
    responses(
        (status = 204, description = "Removed"),
        Admin403,
        (status = 404, description = "No such user or grant", body = Problem, content_type = "application/problem+json")))]
pub async fn revoke_project_role(
    user: AuthUser,
    State(state): State<AppState>,
    Path(UserProjectPath {
        username: name,
        project,
    }): Path<UserProjectPath>,
) -> ApiResult<StatusCode> {
    user.require(Permission::UserManage, "")?;
    let (row, _) = load(&state, &name).await?;
    if !db::project_roles::remove(&state.db.pool, &row.id, project.as_str()).await? {
        return Err(ApiError::not_found(
            "grant_not_found",
            format!("user `{name}` has no role in project `{project}`"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
