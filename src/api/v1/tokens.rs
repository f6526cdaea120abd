//! `/api/v1/auth/tokens`: personal access tokens for scripts and CI.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::paths::TokenPath;
use crate::api::problems::{AuthRateLimited429, Interactive403, TokenMissing, UserMissing};
use crate::api::{AuthRateLimit, Json, Path, Query, rfc3339};
use crate::app::AppState;
use crate::auth::tokens::now_secs;
use crate::auth::{AuthUser, Permission, Role, Username};
use crate::db;
use crate::db::personal_tokens::{MAX_PER_USER, NewToken, TokenRow};
use crate::error::{ApiError, ApiResult, Problem};
use crate::names::ProjectName;

const MIN_TTL: i64 = 60;
const MAX_TTL: i64 = 365 * 86_400;
const DEFAULT_TTL: i64 = 30 * 86_400;
const MAX_PROJECTS: usize = 64;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token is for (1-100 printable characters).
    #[schema(
        example = "ci-deploy",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub name: String,
    /// Seconds until it expires (60 to 31536000, one year; default 2592000, 30 days).
    #[schema(minimum = 60, maximum = 31536000, default = 2592000)]
    pub expires_in: Option<i64>,
    /// Only these projects: the token then holds no global role, and in
    /// each listed project the owner's role there; each listed once. Omit
    /// for all of the owner's.
    #[schema(value_type = Option<crate::api::schemas::TokenProjectsSchema>)]
    pub projects: Option<Vec<String>>,
    /// No role above this one, globally or in any project.
    pub role_cap: Option<Role>,
    /// Only GET: every other method, and every permission that changes
    /// something (exec and console sockets too), is refused.
    #[serde(default)]
    pub read_only: bool,
}

/// A personal access token as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenInfo {
    #[schema(value_type = uuid::Uuid)]
    pub id: String,
    #[schema(example = "ci-deploy")]
    pub name: String,
    /// The secret's first characters, to recognise it.
    #[schema(example = "lxgpat_AbCdE")]
    pub prefix: String,
    /// The projects it is limited to; `null`: all of the owner's.
    #[schema(value_type = Option<Vec<ProjectName>>)]
    pub projects: Option<Vec<String>>,
    pub role_cap: Option<Role>,
    pub read_only: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// Expired tokens stay listed a week, then go.
    pub expired: bool,
    /// When it was last used (recorded at most once a minute).
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    /// The client address it was last used from.
    pub last_used_ip: Option<String>,
}

impl TokenInfo {
    fn from_row(r: &TokenRow) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            prefix: r.prefix.clone(),
            projects: r.project_list(),
            role_cap: r.role_cap(),
            read_only: r.read_only != 0,
            created_at: rfc3339(r.created_at),
            expires_at: rfc3339(r.expires_at),
            expired: r.is_expired(now_secs()),
            last_used_at: r.last_used_at.map(rfc3339),
            last_used_ip: r.last_used_ip.clone(),
        }
    }
}

/// A new token: the only time its secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    #[schema(value_type = uuid::Uuid)]
    pub id: String,
    pub name: String,
    /// The secret, for `Authorization: Bearer ...`. Shown once: lxgate
    /// keeps only its hash.
    #[schema(example = "lxgpat_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg")]
    pub token: String,
    #[schema(example = "lxgpat_AbCdE")]
    pub prefix: String,
    #[schema(value_type = Option<Vec<ProjectName>>)]
    pub projects: Option<Vec<String>>,
    pub role_cap: Option<Role>,
    pub read_only: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

fn check_name(name: &str) -> ApiResult<()> {
    let len = name.chars().count();
    if !(1..=100).contains(&len) {
        return Err(ApiError::invalid_field(
            "name",
            format!("a token name is 1 to 100 characters (got {len})"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            "name",
            "a token name cannot contain control characters",
        ));
    }
    Ok(())
}

fn check_projects(projects: &[String]) -> ApiResult<()> {
    if projects.is_empty() || projects.len() > MAX_PROJECTS {
        return Err(ApiError::invalid_field(
            "projects",
            format!("list 1 to {MAX_PROJECTS} projects, or leave `projects` out for all"),
        ));
    }
    let mut seen = HashSet::new();
    for p in projects {
        ProjectName::parse(p).map_err(|e| ApiError::invalid_field("projects", e))?;
        if !seen.insert(p.as_str()) {
            return Err(ApiError::invalid_field(
                "projects",
                format!("project `{p}` is listed twice"),
            ));
        }
    }
    Ok(())
}

/// Create a personal access token.
///
/// For scripts and CI: use it as `Authorization: Bearer lxgpat_...` (or
/// `?token=` on WebSockets). It never does more than its owner may do at
/// the time of each request, capped by `projects`, `role_cap` and
/// `read_only`. A password or role change does not end it; revoke it with
/// `DELETE`. Only an interactive login can create one.
#[utoipa::path(post, path = "/tokens", tag = "auth", operation_id = "create_token",
    security(("bearer" = [])),
    request_body = CreateToken,
    responses(
        (status = 201, description = "Created; `token` is shown only now", body = CreatedToken,
            headers(("location" = String, description = "URL of the new token"))),
        Interactive403, AuthRateLimited429,
        (status = 409, description = "The caller already holds 50 unexpired tokens (`token_limit_reached`)", body = Problem, content_type = "application/problem+json")))]
pub async fn create_token(
    // Minting credentials shares the login's per-IP budget: a stolen
    // session cannot mint tokens in a burst.
    _limit: AuthRateLimit,
    user: AuthUser,
    State(state): State<AppState>,
    Json(req): Json<CreateToken>,
) -> ApiResult<Response> {
    user.require_interactive()?;
    // A single sign-on user's rights follow its provider, token by token:
    // a long-lived token would outlive the provider taking them away.
    if db::users::is_oidc(&state.db.pool, &user.id).await? {
        return Err(ApiError::forbidden(
            "token_not_allowed",
            "single sign-on users use their identity provider's tokens; personal access tokens would outlive what the provider says",
        ));
    }
    check_name(&req.name)?;
    let ttl = req.expires_in.unwrap_or(DEFAULT_TTL);
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(ApiError::invalid_field(
            "expires_in",
            format!("between {MIN_TTL} and {MAX_TTL} seconds (one year)"),
        ));
    }
    if let Some(p) = &req.projects {
        check_projects(p)?;
    }
    let new = NewToken {
        user_id: &user.id,
        name: &req.name,
        projects: req.projects.as_deref(),
        role_cap: req.role_cap,
        read_only: req.read_only,
        ttl_secs: ttl,
    };
    let Some((secret, row)) = db::personal_tokens::create(&state.db.pool, &new).await? else {
        return Err(ApiError::conflict(
            "token_limit_reached",
            format!(
                "a user holds at most {MAX_PER_USER} unexpired personal access tokens; revoke one first"
            ),
        ));
    };
    let location = format!("/api/v1/auth/tokens/{}", row.id);
    let info = TokenInfo::from_row(&row);
    let body = CreatedToken {
        id: info.id,
        name: info.name,
        token: secret,
        prefix: info.prefix,
        projects: info.projects,
        role_cap: info.role_cap,
        read_only: info.read_only,
        created_at: info.created_at,
        expires_at: info.expires_at,
    };
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TokensQuery {
    /// Another user's tokens (admins only).
    pub user: Option<Username>,
}

/// List one's personal access tokens (never their secrets), newest first.
///
/// Expired tokens are listed (`expired: true`) for a week after they expire.
/// Admins may list another user's with `?user=`.
#[utoipa::path(get, path = "/tokens", tag = "auth", operation_id = "list_tokens",
    security(("bearer" = [])),
    params(TokensQuery),
    responses(
        (status = 200, description = "The tokens", body = Vec<TokenInfo>),
        (status = 403, description = "`?user=` names another user and the caller is not an admin", body = Problem, content_type = "application/problem+json"),
        UserMissing))]
pub async fn list_tokens(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<TokensQuery>,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    let owner = match q.user {
        Some(name) if name.as_str() != user.username => {
            user.require(Permission::UserManage, "")?;
            db::users::by_username(&state.db.pool, name.as_str())
                .await?
                .ok_or_else(|| {
                    ApiError::not_found("user_not_found", format!("user `{name}` does not exist"))
                })?
                .id
        }
        _ => user.id.clone(),
    };
    let rows = db::personal_tokens::for_user(&state.db.pool, &owner).await?;
    Ok(Json(
        rows.iter()
            .filter(|r| sees(&user, r))
            .map(TokenInfo::from_row)
            .collect(),
    ))
}

/// Whether `user` may see (and revoke) token `r`: a login, its own tokens
/// or, for an admin, anyone's; a personal access token, itself only (a
/// capped token must not revoke its owner's others, nor read where they
/// were used).
fn sees(user: &AuthUser, r: &TokenRow) -> bool {
    match &user.pat {
        Some(p) => p.id == r.id,
        None => r.user_id == user.id || user.grants.allows(Permission::UserManage, ""),
    }
}

/// The token `id` if the caller may see it (`sees`).
async fn visible(state: &AppState, user: &AuthUser, id: &uuid::Uuid) -> ApiResult<TokenRow> {
    db::personal_tokens::by_id(&state.db.pool, &id.to_string())
        .await?
        .filter(|r| sees(user, r))
        .ok_or_else(|| {
            ApiError::not_found(
                "token_not_found",
                "no such personal access token (or not yours)",
            )
        })
}

/// Get one personal access token (never its secret).
#[utoipa::path(get, path = "/tokens/{id}", tag = "auth", operation_id = "get_token",
    security(("bearer" = [])),
    params(TokenPath),
    responses(
        (status = 200, description = "The token", body = TokenInfo),
        TokenMissing))]
pub async fn get_token(
    user: AuthUser,
    State(state): State<AppState>,
    Path(TokenPath { id }): Path<TokenPath>,
) -> ApiResult<Json<TokenInfo>> {
    Ok(Json(TokenInfo::from_row(
        &visible(&state, &user, &id).await?,
    )))
}

/// Revoke a personal access token, at once.
///
/// Its next request is refused (401) and the WebSockets opened with it
/// close within seconds. One's own, or anyone's for an admin.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "auth", operation_id = "delete_token",
    security(("bearer" = [])),
    params(TokenPath),
    responses(
        (status = 204, description = "Revoked"),
        TokenMissing))]
pub async fn delete_token(
    user: AuthUser,
    State(state): State<AppState>,
    Path(TokenPath { id }): Path<TokenPath>,
) -> ApiResult<StatusCode> {
    let row = visible(&state, &user, &id).await?;
    if !db::personal_tokens::delete(&state.db.pool, &row.id).await? {
        return Err(ApiError::not_found(
            "token_not_found",
            "no such personal access token (or not yours)",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
