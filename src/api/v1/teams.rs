//! `/api/v1/teams`: groups of users an admin grants roles in projects as
//! one. A member's role in a project is the highest of its global role,
//! its own grant there and its teams' grants there.
//!
//! Grants are read with the user on every request and by the open-socket
//! watcher, so adding, removing or regranting applies at once: the next
//! request sees it, and a socket that needed a role the change took away
//! closes (4403). Adding rights (a member, a grant) needs an interactive
//! login, as a user's own grants do; taking them away does not.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::accounts::ProjectGrant;
use crate::api::paths::{TeamMemberPath, TeamPath, TeamProjectPath};
use crate::api::problems::{
    Admin403, AdminInteractive403, TeamCreate409, TeamFull409, TeamGrantMissing, TeamMemberMissing,
    TeamMissing, TeamOrUserMissing,
};
use crate::api::resource::created;
use crate::api::{Json, Page, Pagination, Path, Query, rfc3339};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission, Role};
use crate::db;
use crate::db::teams::TeamRow;
use crate::error::{ApiError, ApiResult};
use crate::names::TeamName;

/// The longest team description, in characters.
const MAX_DESCRIPTION: usize = 1024;

#[derive(Debug, Serialize, ToSchema)]
pub struct TeamOut {
    #[schema(value_type = TeamName)]
    pub name: String,
    pub description: String,
    /// Usernames of the members, in order.
    #[schema(example = json!(["alice", "bob"]))]
    pub members: Vec<String>,
    /// The team's role in each project it has one in.
    pub projects: Vec<ProjectGrant>,
    #[schema(example = "2026-11-23T22:38:16Z")]
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    #[schema(value_type = TeamName)]
    pub name: String,
    #[serde(default)]
    #[schema(
        max_length = 1024,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*$",
        example = "Runs the shared CI runners"
    )]
    pub description: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTeam {
    /// Absent: unchanged.
    #[serde(default)]
    #[schema(max_length = 1024, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamGrantRequest {
    pub role: Role,
}

fn team_not_found(name: &str) -> ApiError {
    ApiError::not_found("team_not_found", format!("team `{name}` does not exist"))
}

fn check_description(d: &str) -> ApiResult<()> {
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::invalid_field(
            "description",
            format!("at most {MAX_DESCRIPTION} characters"),
        ));
    }
    if d.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            "description",
            "control characters are not allowed",
        ));
    }
    Ok(())
}

async fn team_row(state: &AppState, name: &TeamName) -> ApiResult<TeamRow> {
    db::teams::by_name(&state.db.pool, name.as_str())
        .await?
        .ok_or_else(|| team_not_found(name.as_str()))
}

async fn user_id(state: &AppState, username: &str) -> ApiResult<String> {
    Ok(db::users::by_username(&state.db.pool, username)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "user_not_found",
                format!("user `{username}` does not exist"),
            )
        })?
        .id)
}

/// Teams as the API shows them, members and grants read in two queries.
async fn render(state: &AppState, rows: Vec<TeamRow>) -> ApiResult<Vec<TeamOut>> {
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    for m in db::teams::members(&state.db.pool, &ids).await? {
        members.entry(m.team_id).or_default().push(m.username);
    }
    let mut grants: HashMap<String, Vec<ProjectGrant>> = HashMap::new();
    for g in db::teams::roles(&state.db.pool, &ids).await? {
        if let Ok(role) = g.role.parse() {
            grants.entry(g.team_id).or_default().push(ProjectGrant {
                project: g.project,
                role,
            });
        }
    }
    Ok(rows
        .into_iter()
        .map(|r| TeamOut {
            members: members.remove(&r.id).unwrap_or_default(),
            projects: grants.remove(&r.id).unwrap_or_default(),
            name: r.name,
            description: r.description,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        })
        .collect())
}

async fn render_one(state: &AppState, row: TeamRow) -> ApiResult<TeamOut> {
    let name = row.name.clone();
    render(state, vec![row])
        .await?
        .pop()
        .ok_or_else(|| team_not_found(&name))
}

/// List teams.
#[utoipa::path(get, path = "", tag = "teams", operation_id = "list_teams",
    security(("bearer" = [])),
    params(Pagination),
    responses(
        (status = 200, description = "A page of teams", body = Page<TeamOut>),
        Admin403))]
pub async fn list_teams(
    user: AuthUser,
    State(state): State<AppState>,
    Query(page): Query<Pagination>,
) -> ApiResult<Json<Page<TeamOut>>> {
    user.require(Permission::UserManage, "")?;
    let (limit, offset) = page.resolve()?;
    let rows = db::teams::list(&state.db.pool, limit, offset).await?;
    let total = db::teams::count(&state.db.pool).await?;
    Ok(Json(Page {
        items: render(&state, rows).await?,
        total,
        limit,
        offset,
    }))
}

/// Create a team (no members, no grants yet).
#[utoipa::path(post, path = "", tag = "teams", operation_id = "create_team",
    security(("bearer" = [])),
    request_body = CreateTeam,
    responses(
        (status = 201, description = "Created", body = TeamOut,
            headers(("location" = String, description = "URL of the new team"))),
        Admin403, TeamCreate409))]
pub async fn create_team(
    user: AuthUser,
    State(state): State<AppState>,
    Json(req): Json<CreateTeam>,
) -> ApiResult<Response> {
    user.require(Permission::UserManage, "")?;
    let name = TeamName::parse(&req.name).map_err(|e| ApiError::invalid_field("name", e))?;
    check_description(&req.description)?;
    let row = match db::teams::insert(&state.db.pool, name.as_str(), &req.description).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            return Err(ApiError::conflict(
                "too_many_teams",
                format!(
                    "this server keeps at most {} teams; delete one first",
                    db::teams::MAX_TEAMS
                ),
            ));
        }
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
            return Err(ApiError::conflict(
                "name_taken",
                format!("team `{name}` already exists"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let out = render_one(&state, row).await?;
    Ok(created(&format!("/api/v1/teams/{name}"), out))
}

/// Get a team with its members and grants.
#[utoipa::path(get, path = "/{name}", tag = "teams", operation_id = "get_team",
    security(("bearer" = [])),
    params(TeamPath),
    responses(
        (status = 200, description = "The team", body = TeamOut),
        Admin403, TeamMissing))]
pub async fn get_team(
    user: AuthUser,
    State(state): State<AppState>,
    Path(TeamPath { name }): Path<TeamPath>,
) -> ApiResult<Json<TeamOut>> {
    user.require(Permission::UserManage, "")?;
    let row = team_row(&state, &name).await?;
    Ok(Json(render_one(&state, row).await?))
}

/// Change a team's description.
#[utoipa::path(patch, path = "/{name}", tag = "teams", operation_id = "update_team",
    security(("bearer" = [])),
    params(TeamPath),
    request_body = UpdateTeam,
    responses(
        (status = 200, description = "The team", body = TeamOut),
        Admin403, TeamMissing))]
pub async fn update_team(
    user: AuthUser,
    State(state): State<AppState>,
    Path(TeamPath { name }): Path<TeamPath>,
    Json(req): Json<UpdateTeam>,
) -> ApiResult<Json<TeamOut>> {
    user.require(Permission::UserManage, "")?;
    let mut row = team_row(&state, &name).await?;
    if let Some(description) = &req.description {
        check_description(description)?;
        db::teams::set_description(&state.db.pool, &row.id, description).await?;
        row = team_row(&state, &name).await?;
    }
    Ok(Json(render_one(&state, row).await?))
}

/// Delete a team: its members lose its grants at once.
#[utoipa::path(delete, path = "/{name}", tag = "teams", operation_id = "delete_team",
    security(("bearer" = [])),
    params(TeamPath),
    responses(
        (status = 204, description = "Deleted"),
        Admin403, TeamMissing))]
pub async fn delete_team(
    user: AuthUser,
    State(state): State<AppState>,
    Path(TeamPath { name }): Path<TeamPath>,
) -> ApiResult<StatusCode> {
    user.require(Permission::UserManage, "")?;
    let row = team_row(&state, &name).await?;
    if !db::teams::delete(&state.db.pool, &row.id).await? {
        return Err(team_not_found(name.as_str()));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Add a user to a team (nothing changes if it is a member already): it
/// gets the team's grants at once.
#[utoipa::path(put, path = "/{name}/members/{username}", tag = "teams", operation_id = "add_team_member",
    security(("bearer" = [])),
    params(TeamMemberPath),
    responses(
        (status = 200, description = "The team", body = TeamOut),
        AdminInteractive403, TeamOrUserMissing, TeamFull409))]
pub async fn add_team_member(
    user: AuthUser,
    State(state): State<AppState>,
    Path(TeamMemberPath { name, username }): Path<TeamMemberPath>,
) -> ApiResult<Json<TeamOut>> {
    user.require(Permission::UserManage, "")?;
    user.require_interactive()?;
    let row = team_row(&state, &name).await?;
    let member = user_id(&state, username.as_str()).await?;
    let added = match db::teams::add_member(&state.db.pool, &row.id, &member).await {
        // The team or the user was deleted meanwhile.
        Err(sqlx::Error::Database(d)) if d.is_foreign_key_violation() => {
            return Err(team_not_found(name.as_str()));
        }
        other => other?,
    };
    if !added {
        return Err(ApiError::conflict(
            "team_full",
            format!(
                "team `{name}` has {} members, the most a team keeps",
                db::teams::MAX_MEMBERS
            ),
        ));
    }
    Ok(Json(render_one(&state, row).await?))
}

/// Remove a user from a team: it loses the team's grants at once.
#[utoipa::path(delete, path = "/{name}/members/{username}", tag = "teams", operation_id = "remove_team_member",
    security(("bearer" = [])),
    params(TeamMemberPath),
    responses(
        (status = 204, description = "Removed"),
        Admin403, TeamMemberMissing))]
pub async fn remove_team_member(
    user: AuthUser,
    State(state): State<AppState>,
    Path(TeamMemberPath { name, username }): Path<TeamMemberPath>,
) -> ApiResult<StatusCode> {
    user.require(Permission::UserManage, "")?;
    let row = team_row(&state, &name).await?;
    let member = user_id(&state, username.as_str()).await?;
    if !db::teams::remove_member(&state.db.pool, &row.id, &member).await? {
        return Err(ApiError::not_found(
            "member_not_found",
            format!("user `{username}` is not a member of team `{name}`"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Grant a team a role in one project (replaces its earlier role there).
#[utoipa::path(put, path = "/{name}/projects/{project}", tag = "teams", operation_id = "grant_team_role",
    security(("bearer" = [])),
    params(TeamProjectPath),
    request_body = TeamGrantRequest,
    responses(
        (status = 200, description = "The team", body = TeamOut),
        AdminInteractive403, TeamMissing))]
pub async fn grant_team_role(
    user: AuthUser,
    State(state): State<AppState>,
    Path(TeamProjectPath { name, project }): Path<TeamProjectPath>,
    Json(req): Json<TeamGrantRequest>,
) -> ApiResult<Json<TeamOut>> {
    user.require(Permission::UserManage, "")?;
    user.require_interactive()?;
    let row = team_row(&state, &name).await?;
    db::teams::set_role(&state.db.pool, &row.id, project.as_str(), req.role).await?;
    Ok(Json(render_one(&state, row).await?))
}

/// Remove a team's role in one project.
#[utoipa::path(delete, path = "/{name}/projects/{project}", tag = "teams", operation_id = "revoke_team_role",
    security(("bearer" = [])),
    params(TeamProjectPath),
    responses(
        (status = 204, description = "Removed"),
        Admin403, TeamGrantMissing))]
pub async fn revoke_team_role(
    user: AuthUser,
    State(state): State<AppState>,
    Path(TeamProjectPath { name, project }): Path<TeamProjectPath>,
) -> ApiResult<StatusCode> {
    user.require(Permission::UserManage, "")?;
    let row = team_row(&state, &name).await?;
    if !db::teams::remove_role(&state.db.pool, &row.id, project.as_str()).await? {
        return Err(ApiError::not_found(
            "grant_not_found",
            format!("team `{name}` has no role in project `{project}`"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
