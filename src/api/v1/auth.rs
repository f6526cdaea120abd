//! `/api/v1/auth`: login, token refresh and rotation, logout, the caller's own account.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::accounts::{CreateUser, ProjectGrant, UserOut, create_user_row, created};
use crate::api::problems::{AdminInteractive403, AuthRateLimited429, NameTaken409, NewUser422};
use crate::api::{AuthRateLimit, ClientIp, Json};
use crate::app::AppState;
use crate::auth::extract::bearer_token;
use crate::auth::rbac::{Permission, Scope};
use crate::auth::{AuthUser, Role, Username, password};
use crate::db;
use crate::db::ws_tickets::TICKET_TTL_SECS;
use crate::error::{ApiError, ApiResult, Problem};
use crate::names::{InstanceName, ProjectName};
use crate::telemetry::RequestCtx;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "admin")]
    pub username: String,
    #[schema(example = "change-me-please-now", format = Password)]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// JWT for `Authorization: Bearer ...`.
    pub access_token: String,
    /// Opaque; exchange at `POST /api/v1/auth/refresh`. Single use.
    pub refresh_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    #[schema(example = 1800)]
    pub expires_in: i64,
    /// Seconds until the refresh token expires.
    #[schema(example = 604800)]
    pub refresh_expires_in: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

fn invalid_credentials() -> ApiError {
    ApiError::unauthorized("invalid_credentials", "username or password is incorrect")
}

async fn token_pair(
    state: &AppState,
    user: &db::users::UserRow,
    family: Option<&str>,
) -> ApiResult<(TokenResponse, String)> {
    let access_token = state
        .tokens
        .issue(&user.id, &user.username, user.role(), user.token_version)
        .map_err(ApiError::internal)?;
    let refresh_ttl = state.config.refresh_token_ttl.as_secs() as i64;
    let (refresh_token, refresh_id) =
        db::refresh_tokens::issue(&state.db.pool, &user.id, family, refresh_ttl).await?;
    Ok((
        TokenResponse {
            access_token,
            refresh_token,
            token_type: "Bearer",
            expires_in: state.config.access_token_ttl.as_secs() as i64,
            refresh_expires_in: refresh_ttl,
        },
        refresh_id,
    ))
}

/// Log in with a username and password.
///
/// Rate-limited per client IP; repeated failures for one username lock it for a while.
#[utoipa::path(post, path = "/login", tag = "auth", operation_id = "login",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        AuthRateLimited429,
        (status = 401, description = "Wrong username or password", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The account is disabled", body = Problem, content_type = "application/problem+json")))]
pub async fn login(
    _limit: AuthRateLimit,
    ClientIp(ip): ClientIp,
    State(state): State<AppState>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
    // An invalid username cannot exist; it costs the same as an unknown one.
    let username = Username::parse(&req.username).ok();
    ctx.set_auth("password");
    if let Some(u) = &username {
        ctx.set_user(u.as_str());
        state
            .login_throttle
            .check(&state.db.pool, u.as_str(), ip)
            .await?;
    }
    let user = match &username {
        Some(u) => db::users::by_username(&state.db.pool, u.as_str()).await?,
        None => None,
    };
    let ok = password::verify(req.password, user.as_ref().map(|u| u.password_hash.clone())).await?;
    let user = match (ok, user) {
        (true, Some(user)) => user,
        _ => {
            metrics::counter!("lxgate_login_failures_total").increment(1);
            if let Some(u) = &username {
                state
                    .login_throttle
                    .record_failure(&state.db.pool, u.as_str(), ip)
                    .await?;
            }
            return Err(invalid_credentials());
        }
    };
    state
        .login_throttle
        .record_success(&state.db.pool, &user.username, ip)
        .await?;
    if user.is_disabled() {
        return Err(ApiError::forbidden(
            "account_disabled",
            "this account is disabled; ask an administrator",
        ));
    }
    db::users::touch_login(&state.db.pool, &user.id).await?;
    let (tokens, _) = token_pair(&state, &user, None).await?;
    Ok(Json(tokens))
}

fn invalid_refresh() -> ApiError {
    ApiError::unauthorized(
        "invalid_refresh_token",
        "the refresh token is invalid, expired or revoked; log in again",
    )
}

/// Exchange a refresh token for a new token pair.
///
/// The refresh token is rotated: the one sent is spent. Presenting a spent
/// token again revokes its whole family (every token descended from the same login).
#[utoipa::path(post, path = "/refresh", tag = "auth", operation_id = "refresh_token",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens", body = TokenResponse),
        AuthRateLimited429,
        (status = 401, description = "Invalid, expired, revoked or reused refresh token", body = Problem, content_type = "application/problem+json")))]
pub async fn refresh(
    _limit: AuthRateLimit,
    State(state): State<AppState>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    Json(req): Json<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let pool = &state.db.pool;
    let Some(row) = db::refresh_tokens::find(pool, &req.refresh_token).await? else {
        return Err(invalid_refresh());
    };
    ctx.set_auth("refresh_token");
    let reuse = || async {
        let revoked = db::refresh_tokens::revoke_family(pool, &row.family_id).await?;
        tracing::warn!(
            user_id = %row.user_id,
            revoked,
            "refresh token reuse detected; revoked its family"
        );
        Err::<Json<TokenResponse>, ApiError>(ApiError::unauthorized(
            "refresh_token_reused",
            "this refresh token was already used; every session from that login is now revoked",
        ))
    };
    if row.revoked_at.is_some() {
        return reuse().await;
    }
    if row.expires_at < crate::auth::tokens::now_secs() {
        return Err(invalid_refresh());
    }
    if !db::refresh_tokens::spend(pool, &row.id).await? {
        // Another request spent it between our read and our write.
        return reuse().await;
    }
    let Some(user) = db::users::with_grants(pool, &row.user_id)
        .await?
        .map(|(u, _)| u)
        .filter(|u| !u.is_disabled())
    else {
        return Err(invalid_refresh());
    };
    let (tokens, new_id) = token_pair(&state, &user, Some(&row.family_id)).await?;
    db::refresh_tokens::link_replacement(pool, &row.id, &new_id).await?;
    Ok(Json(tokens))
}

/// Log out: revoke the refresh token and every token rotated from the same login.
///
/// Always answers 204, so it reveals nothing about the token.
/// Log out: ends the refresh token's whole login and, when the request
/// carries `Authorization: Bearer <access token>`, that access token too
/// (at once, on every replica, with the WebSockets opened with it). Other
/// access tokens of the login live until they expire (at most
/// `JWT_ACCESS_TOKEN_EXPIRE_MINUTES`); changing the password ends them all.
#[utoipa::path(post, path = "/logout", tag = "auth", operation_id = "logout",
    security((), ("bearer" = [])),
    request_body = RefreshRequest,
    responses(
        (status = 204, description = "Logged out")))]
pub async fn logout(
    State(state): State<AppState>,
    Extension(ctx): Extension<Arc<RequestCtx>>,
    headers: HeaderMap,
    Json(req): Json<RefreshRequest>,
) -> ApiResult<StatusCode> {
    // A header that is no bearer token is ignored: logout must not fail
    // (and leave the refresh tokens alive) over it.
    if let Ok(Some(token)) = bearer_token(&headers) {
        // Only a token that verifies is recorded: nobody can fill the
        // table with made-up ids, and an expired one needs no entry.
        if let Ok(claims) = state.tokens.verify(token) {
            ctx.set_auth("bearer");
            db::revoked_tokens::revoke(&state.db.pool, &claims.jti, &claims.sub, claims.exp)
                .await?;
        }
    }
    if let Some(row) = db::refresh_tokens::find(&state.db.pool, &req.refresh_token).await? {
        ctx.set_auth("refresh_token");
        db::refresh_tokens::revoke_family(&state.db.pool, &row.family_id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    #[schema(example = "alice")]
    pub username: String,
    /// The global role; `null` when the user only holds project roles.
    pub role: Option<Role>,
    pub projects: Vec<ProjectGrant>,
    /// Server-wide permissions.
    pub global_permissions: Vec<String>,
    /// Permissions per project. The key `*` stands for every project (from the global role).
    pub project_permissions: BTreeMap<String, Vec<String>>,
}

fn permissions_in(user: &AuthUser, project: &str) -> Vec<String> {
    Permission::ALL
        .into_iter()
        .filter(|p| p.scope() == Scope::Project && user.grants.allows(*p, project))
        .map(|p| p.as_str().to_owned())
        .collect()
}

/// The caller: roles and effective permissions.
#[utoipa::path(get, path = "/me", tag = "auth", operation_id = "get_me",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The authenticated user", body = Me)))]
pub async fn me(user: AuthUser) -> Json<Me> {
    let global_permissions = Permission::ALL
        .into_iter()
        .filter(|p| p.scope() == Scope::Global && user.grants.allows(*p, ""))
        .map(|p| p.as_str().to_owned())
        .collect();
    let mut project_permissions = BTreeMap::new();
    if user.grants.global.is_some() {
        // The global role applies in every project; "" is never a project name.
        project_permissions.insert("*".to_owned(), permissions_in(&user, ""));
    }
    for (project, _) in &user.grants.projects {
        project_permissions.insert(project.clone(), permissions_in(&user, project));
    }
    Json(Me {
        username: user.username.clone(),
        role: user.grants.global,
        projects: user
            .grants
            .projects
            .iter()
            .map(|(project, role)| ProjectGrant {
                project: project.clone(),
                role: *role,
            })
            .collect(),
        global_permissions,
        project_permissions,
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    #[schema(format = Password)]
    pub current_password: String,
    #[schema(min_length = 12, max_length = 1024, pattern = r"^(?!([\s\S])\1*$)[^\u0000]*$", format = Password)]
    pub new_password: String,
}

/// Change one's own password. Every token issued before stops working.
#[utoipa::path(put, path = "/me/password", tag = "auth", operation_id = "change_own_password",
    security(("bearer" = [])),
    request_body = ChangePassword,
    responses(
        (status = 204, description = "Changed; log in again"),
        (status = 403, description = "The current password is wrong (`wrong_password`), or the request came with a personal access token (`token_not_allowed`: changing the password needs an interactive login)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The new password is too weak", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong current passwords from this address; see `Retry-After`", body = Problem, content_type = "application/problem+json")))]
pub async fn change_password(
    user: AuthUser,
    ClientIp(ip): ClientIp,
    State(state): State<AppState>,
    Json(req): Json<ChangePassword>,
) -> ApiResult<StatusCode> {
    user.require_interactive()?;
    let row = db::users::by_username(&state.db.pool, &user.username)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "the user no longer exists"))?;
    // A stolen access token must not become a password oracle: wrong
    // current passwords are throttled like failed logins.
    let pool = &state.db.pool;
    state.login_throttle.check(pool, &user.username, ip).await?;
    if !password::verify(req.current_password, Some(row.password_hash)).await? {
        state
            .login_throttle
            .record_failure(pool, &user.username, ip)
            .await?;
        // 403, not 422: the body is well formed; the proof of identity in
        // it failed (and not 401, which would tell clients to log in again).
        let mut e = ApiError::forbidden("wrong_password", "the current password is wrong");
        e.field = Some("current_password".into());
        return Err(e);
    }
    state
        .login_throttle
        .record_success(pool, &user.username, ip)
        .await?;
    password::check_policy(
        &user.username,
        &req.new_password,
        state.config.password_min_length,
    )
    .map_err(|e| ApiError::invalid_field("new_password", e))?;
    let hash = password::hash(req.new_password).await?;
    db::users::update(
        &state.db.pool,
        &user.id,
        &db::users::Changes {
            password_hash: Some(hash),
            ..Default::default()
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The WebSocket a ticket will open.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WsTicketRequest {
    /// The socket's path: `/api/v1/events/ws`, `/api/v1/operations/ws`,
    /// `/api/v1/instances/{name}/exec/ws` or `/api/v1/instances/{name}/console/ws`.
    #[schema(
        example = "/api/v1/instances/web1/exec/ws",
        max_length = 128,
        pattern = "^/api/v1/(?:events/ws|operations/ws|instances/[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?/(?:exec|console)/ws)$"
    )]
    pub path: String,
    /// The `?project=` the socket URL will carry; omit it when the URL has none.
    #[schema(value_type = Option<crate::names::ProjectName>)]
    pub project: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WsTicket {
    /// Pass as `?ticket=` when opening the WebSocket. Works once, on the
    /// path and project it was issued for.
    pub ticket: String,
    /// Seconds the ticket stays valid.
    #[schema(example = 30)]
    pub expires_in: i64,
}

/// Whether `path` is a WebSocket route a ticket may open.
fn check_ws_path(path: &str) -> ApiResult<()> {
    let bad = || {
        ApiError::invalid_field(
            "path",
            "must be /api/v1/events/ws, /api/v1/operations/ws, or /api/v1/instances/{name}/exec/ws or /console/ws",
        )
    };
    match path {
        "/api/v1/events/ws" | "/api/v1/operations/ws" => Ok(()),
        _ => {
            let rest = path.strip_prefix("/api/v1/instances/").ok_or_else(bad)?;
            let name = rest
                .strip_suffix("/exec/ws")
                .or_else(|| rest.strip_suffix("/console/ws"))
                .ok_or_else(bad)?;
            InstanceName::parse(name)
                .map(|_| ())
                .map_err(|e| ApiError::invalid_field("path", e))
        }
    }
}

/// Get a single-use ticket for opening one WebSocket from a browser.
///
/// Browsers cannot send an `Authorization` header on a WebSocket; a ticket
/// keeps the long-lived access token out of URLs and logs. It opens only
/// the `path` (and `?project=`) it was issued for, and dies with the access
/// token that asked for it (logout, password, role or status change).
#[utoipa::path(post, path = "/ws-ticket", tag = "auth", operation_id = "create_ws_ticket",
    security(("bearer" = [])),
    request_body = WsTicketRequest,
    responses(
        (status = 200, description = "A ticket valid for 30 seconds", body = WsTicket),
        AuthRateLimited429,
        (status = 422, description = "`path` is not a WebSocket route, or `project` is not a valid project name", body = Problem, content_type = "application/problem+json")))]
pub async fn ws_ticket(
    _limit: AuthRateLimit,
    user: AuthUser,
    State(state): State<AppState>,
    Json(req): Json<WsTicketRequest>,
) -> ApiResult<Json<WsTicket>> {
    check_ws_path(&req.path)?;
    if let Some(p) = &req.project {
        ProjectName::parse(p).map_err(|e| ApiError::invalid_field("project", e))?;
    }
    let ticket = db::ws_tickets::issue(
        &state.db.pool,
        &db::ws_tickets::Ticket {
            user_id: user.id,
            token_version: user.token_version,
            path: req.path,
            project: req.project,
            jti: user.jti,
            pat_id: user.pat.map(|p| p.id),
        },
    )
    .await?;
    Ok(Json(WsTicket {
        ticket,
        expires_in: TICKET_TTL_SECS,
    }))
}

/// Register a new user (admins only; the same as `POST /api/v1/users`).
#[utoipa::path(post, path = "/register", tag = "auth", operation_id = "register_user",
    security(("bearer" = [])),
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserOut),
        AdminInteractive403, NameTaken409, NewUser422, AuthRateLimited429))]
pub async fn register(
    _limit: AuthRateLimit,
    user: AuthUser,
    State(state): State<AppState>,
    Json(req): Json<CreateUser>,
) -> ApiResult<Response> {
    user.require(Permission::UserManage, "")?;
    user.require_interactive()?;
    Ok(created(create_user_row(&state, req).await?))
}
