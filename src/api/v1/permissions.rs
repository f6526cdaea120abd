//! `/api/v1/auth/me/permissions` and `/api/v1/auth/can`: what the caller
//! may do, and why, with where each role comes from (the global role, an
//! own grant, a team, a personal access token's caps).

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::Json;
use crate::app::AppState;
use crate::auth::explain::{self, Origin, Roles};
use crate::auth::rbac::{Grants, Scope};
use crate::auth::{AuthUser, Permission, Role};
use crate::db;
use crate::error::ApiResult;
use crate::names::ProjectName;

/// Every role that reaches `user` (before its token's caps).
async fn roles_of(state: &AppState, user: &AuthUser) -> ApiResult<Roles> {
    let pool = &state.db.pool;
    let ids = std::slice::from_ref(&user.id);
    let global = db::users::with_grants(pool, &user.id)
        .await?
        .and_then(|(row, _)| row.role());
    let own = db::project_roles::for_users(pool, ids)
        .await?
        .into_iter()
        .filter_map(|g| Some((g.project, g.role.parse().ok()?)))
        .collect();
    let teams = db::teams::memberships(pool, ids)
        .await?
        .into_iter()
        .filter_map(|m| Some((m.team, m.project?, m.role?.parse().ok()?)))
        .collect();
    Ok(Roles { global, own, teams })
}

/// The permissions `grants` allow in `scope` (`project` for project ones).
fn allowed(grants: &Grants, scope: Scope, project: &str) -> Vec<Permission> {
    Permission::ALL
        .into_iter()
        .filter(|p| p.scope() == scope && grants.allows(*p, project))
        .collect()
}

/// The caps of the personal access token a request came with.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenCapsOut {
    #[schema(value_type = uuid::Uuid)]
    pub id: String,
    /// The only projects it is valid in; `null`: all of its owner's.
    pub projects: Option<Vec<String>>,
    /// No role above this one; `null`: its owner's roles.
    pub role_cap: Option<Role>,
    pub read_only: bool,
}

/// A role somewhere, what it allows, and where it comes from.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScopePermissions {
    /// The effective role (after a token's caps).
    pub role: Role,
    pub permissions: Vec<Permission>,
    /// Every role that reaches here, before a token's caps.
    pub sources: Vec<Origin>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectPermissions {
    #[schema(value_type = ProjectName)]
    pub project: String,
    #[serde(flatten)]
    pub granted: ScopePermissions,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MyPermissions {
    #[schema(example = "alice")]
    pub username: String,
    /// Set when the request came with a personal access token: its caps
    /// apply to everything below.
    pub token: Option<TokenCapsOut>,
    /// Server-wide: the global role; `null` without one.
    pub global: Option<ScopePermissions>,
    /// What the global role allows in every project (project-scoped
    /// permissions); `null` without a global role.
    pub every_project: Option<ScopePermissions>,
    /// Each project a grant (own or a team's) reaches, with the effective
    /// role there (at least the global role's).
    pub projects: Vec<ProjectPermissions>,
}

/// What the caller may do: its effective role server-wide, in every project
/// (the global role) and in each project it holds a grant in, each with the
/// permissions it allows and the roles it comes from.
#[utoipa::path(get, path = "/me/permissions", tag = "auth", operation_id = "get_my_permissions",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's effective permissions and their sources", body = MyPermissions)))]
pub async fn my_permissions(
    user: AuthUser,
    State(state): State<AppState>,
) -> ApiResult<Json<MyPermissions>> {
    let roles = roles_of(&state, &user).await?;
    let caps = user.pat.as_ref().map(|p| &p.caps);
    // `user.grants` are these roles as the request holds them (capped).
    let grants = &user.grants;
    let global = grants.global.map(|role| ScopePermissions {
        role,
        permissions: allowed(grants, Scope::Global, ""),
        sources: roles.origins(None),
    });
    // "" is never a project name: only the global role reaches it.
    let every_project = grants.global.map(|role| ScopePermissions {
        role,
        permissions: allowed(grants, Scope::Project, ""),
        sources: roles.origins(None),
    });
    let mut names = roles.projects();
    if let Some(listed) = caps.and_then(|c| c.projects.as_ref()) {
        names.extend(listed.iter().cloned());
        names.sort();
        names.dedup();
    }
    let projects = names
        .into_iter()
        .filter_map(|project| {
            let role = grants.role_in(&project)?;
            Some(ProjectPermissions {
                granted: ScopePermissions {
                    role,
                    permissions: allowed(grants, Scope::Project, &project),
                    sources: roles.origins(Some(&project)),
                },
                project,
            })
        })
        .collect();
    Ok(Json(MyPermissions {
        username: user.username.clone(),
        token: user.pat.as_ref().map(|p| TokenCapsOut {
            id: p.id.clone(),
            projects: p.caps.projects.clone(),
            role_cap: p.caps.role_cap,
            read_only: p.caps.read_only,
        }),
        global,
        every_project,
        projects,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CanRequest {
    /// The permission to ask about.
    pub action: Permission,
    /// For project-scoped permissions: the project (default `default`);
    /// ignored for server-wide ones.
    #[serde(default)]
    #[schema(value_type = Option<ProjectName>)]
    pub project: Option<ProjectName>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CanAnswer {
    pub allowed: bool,
    pub action: Permission,
    /// Where it was judged; `null` for a server-wide permission.
    #[schema(value_type = Option<ProjectName>)]
    pub project: Option<String>,
    /// The caller's effective role there (after a token's caps).
    pub role: Option<Role>,
    /// The least role that allows it.
    pub required_role: Role,
    /// Every role that reaches there, before a token's caps.
    pub sources: Vec<Origin>,
    /// Why, in words: the role needed, the role held and where it comes
    /// from, or the token cap that refused.
    #[schema(
        example = "denied: `project:operate` needs the operator role in project `team-a`; the caller is viewer there (own grant viewer); an admin can grant it (to the user, or to one of its teams)"
    )]
    pub reason: String,
}

/// May the caller do this? Allowed or denied, with the reason: the role
/// needed, the role held and where it comes from, or the token cap that
/// refused. Answers what the API would; changes nothing (read-only
/// personal access tokens may ask too).
#[utoipa::path(post, path = "/can", tag = "auth", operation_id = "can",
    security(("bearer" = [])),
    request_body = CanRequest,
    responses(
        (status = 200, description = "Allowed or denied, with the reason", body = CanAnswer)))]
pub async fn can(
    user: AuthUser,
    State(state): State<AppState>,
    Json(req): Json<CanRequest>,
) -> ApiResult<Json<CanAnswer>> {
    let roles = roles_of(&state, &user).await?;
    let project = match req.action.scope() {
        Scope::Project => Some(
            req.project
                .as_ref()
                .map_or("default", ProjectName::as_str)
                .to_owned(),
        ),
        Scope::Global => None,
    };
    let v = explain::judge(
        req.action,
        project.as_deref().unwrap_or(""),
        &roles,
        user.pat.as_ref().map(|p| &p.caps),
    );
    Ok(Json(CanAnswer {
        allowed: v.allowed,
        action: req.action,
        project,
        role: v.role,
        required_role: v.required_role,
        sources: v.origins,
        reason: v.reason,
    }))
}
