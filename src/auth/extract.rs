//! `AuthUser`: the authenticated caller, extracted from a bearer token (or, on
//! WebSocket routes, from `?ticket=` / `?token=`).

use std::sync::Arc;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, OriginalUri, Query};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::Role;
use crate::auth::limit::client_ip;
use crate::auth::rbac::{Grants, PatRef, Permission, Scope};
use crate::db;
use crate::error::ApiError;
use crate::telemetry::RequestCtx;

#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: String,
    pub username: String,
    pub grants: Grants,
    /// The user's token version when this request was authenticated.
    pub token_version: i64,
    /// The `jti` of the access token this request came with (for a ticket:
    /// of the token that asked for it), so that logging it out reaches
    /// sockets opened with it.
    pub jti: Option<String>,
    /// Set when the request came with a personal access token (directly,
    /// or through a ticket it asked for); `grants` are already capped.
    pub pat: Option<PatRef>,
    /// How the request authenticated: `bearer`, `pat` or `ticket` (as the
    /// audit log records it).
    pub auth_method: &'static str,
}

impl AuthUser {
    /// The one-line authorization check every handler starts with.
    pub fn require(&self, permission: Permission, project: &str) -> Result<(), ApiError> {
        if self.grants.allows(permission, project) {
            return Ok(());
        }
        let (scope, there, held) = match permission.scope() {
            Scope::Project => (
                format!("in project `{project}`"),
                "there",
                self.grants.role_in(project),
            ),
            Scope::Global => ("server-wide".to_owned(), "server-wide", self.grants.global),
        };
        let mut detail = format!(
            "permission `{}` ({} role) is required {scope}; ",
            permission.as_str(),
            permission.min_role()
        );
        match held {
            _ if self.grants.read_only && permission.writes() => {
                detail.push_str("this personal access token is read-only");
            }
            Some(role) => detail.push_str(&format!("the caller is {role} {there}")),
            None => detail.push_str(&format!("the caller has no role {there}")),
        }
        if self.pat.is_some() {
            detail.push_str(" (as this personal access token's caps allow)");
        }
        let mut err = ApiError::forbidden("permission_denied", detail);
        err.permission = Some(permission.as_str().to_owned());
        // A read-only token is refused whatever role: no role would help.
        if !(self.grants.read_only && permission.writes()) {
            err.required_role = Some(permission.min_role().as_str());
        }
        if permission.scope() == Scope::Project {
            err.project = Some(project.to_owned());
        }
        Err(err)
    }

    /// A global admin (for a personal access token: after its caps, so a
    /// token capped below admin, or to projects, is no admin).
    pub fn is_admin(&self) -> bool {
        self.grants.global == Some(Role::Admin)
    }

    /// Managing credentials (personal access tokens, passwords) needs an
    /// interactive login: otherwise a capped token could mint an uncapped one.
    pub fn require_interactive(&self) -> Result<(), ApiError> {
        if self.pat.is_some() {
            return Err(ApiError::forbidden(
                "token_not_allowed",
                "a personal access token cannot manage credentials (tokens, passwords); log in with a password",
            ));
        }
        Ok(())
    }

    /// Resolves a verified user id into the current user, enforcing
    /// disabled accounts, (for JWTs) the token version and (for personal
    /// access tokens) their caps.
    async fn load(
        state: &AppState,
        parts: &Parts,
        user_id: &str,
        token_version: Option<i64>,
        jti: Option<String>,
        method: &'static str,
        pat: Option<PatRef>,
    ) -> Result<Self, ApiError> {
        let Some(user) = state.auth_view.user(&state.db.pool, user_id).await? else {
            tracing::debug!("token refused: its user no longer exists");
            return Err(invalid_token());
        };
        if user.disabled {
            return Err(ApiError::unauthorized(
                "account_disabled",
                "this account is disabled",
            ));
        }
        if let Some(tv) = token_version
            && tv != user.token_version
        {
            return Err(ApiError::unauthorized(
                "token_revoked",
                "this token was revoked (password, role or account status changed); log in again",
            ));
        }
        if let Some(ctx) = parts.extensions.get::<Arc<RequestCtx>>() {
            ctx.set_user(&user.username);
            ctx.set_auth(method);
            if let Some(p) = &pat {
                ctx.set_token_id(&p.id);
            }
        }
        let grants = match &pat {
            Some(p) => user.grants.capped(&p.caps),
            None => user.grants.clone(),
        };
        let path = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.path(), |u| u.0.path());
        if grants.read_only
            && !READ_ONLY_POSTS.contains(&path)
            && !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
        {
            return Err(ApiError::forbidden(
                "read_only_token",
                "this personal access token is read-only: it may only GET",
            ));
        }
        Ok(Self {
            id: user.id.clone(),
            username: user.username.clone(),
            grants,
            token_version: user.token_version,
            jti,
            pat,
            auth_method: method,
        })
    }

    /// A bearer token (header or `?token=`): a personal access token by its
    /// prefix, else a JWT.
    async fn from_token(
        state: &AppState,
        parts: &Parts,
        token: &str,
        method: &'static str,
    ) -> Result<Self, ApiError> {
        if token.starts_with(db::personal_tokens::SECRET_PREFIX) {
            Self::from_pat(state, parts, token).await
        } else if let Some(oidc) = &state.oidc
            && crate::auth::oidc::Oidc::looks_like_ours(token)
        {
            Self::from_oidc(state, parts, oidc, token).await
        } else {
            Self::from_jwt(state, parts, token, method).await
        }
    }

    /// An access token of the single sign-on provider: its user (made on
    /// first sight), with the roles and teams its groups give.
    async fn from_oidc(
        state: &AppState,
        parts: &Parts,
        oidc: &crate::auth::oidc::Oidc,
        token: &str,
    ) -> Result<Self, ApiError> {
        let id = oidc.verify(token).await.map_err(|e| {
            tracing::debug!(reason = %e, "identity provider token refused");
            invalid_token()
        })?;
        let pool = &state.db.pool;
        let user = match db::users::by_oidc_subject(pool, &id.subject).await? {
            Some(u) => u,
            None => {
                crate::auth::accounts::provision_oidc(pool, &id, &state.config.seed_admin_username)
                    .await?
            }
        };
        if oidc.first_sight(token) {
            let mapped = crate::auth::oidc::map_groups(&oidc.config.role_map, &id.groups);
            if let Err(e) = db::users::sync_oidc(pool, &user, &mapped, id.issued_at).await {
                oidc.forget(token);
                return Err(e.into());
            }
        }
        // No token version: the provider's tokens are its own credentials
        // (they end when they expire; disabling the user ends them at once).
        Self::load(state, parts, &user.id, None, None, "oidc", None).await
    }

    async fn from_pat(state: &AppState, parts: &Parts, secret: &str) -> Result<Self, ApiError> {
        let pool = &state.db.pool;
        let Some(row) = db::personal_tokens::by_secret(pool, secret)
            .await?
            .filter(|r| !r.is_expired(crate::auth::tokens::now_secs()))
        else {
            tracing::debug!("token refused: unknown, revoked or expired personal access token");
            return Err(invalid_token());
        };
        let pat = PatRef {
            id: row.id.clone(),
            caps: row.caps(),
        };
        // A password or role change does not end personal access tokens
        // (they are credentials of their own): no token version.
        let user = Self::load(state, parts, &row.user_id, None, None, "pat", Some(pat)).await?;
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| client_ip(ci.0.ip(), &parts.headers, &state.config.trusted_proxies));
        // Last use is a courtesy: a busy database does not fail the request.
        if let Err(e) = db::personal_tokens::touch(pool, &row, ip.map(|ip| ip.to_string())).await {
            tracing::warn!(error = %e, "recording a personal access token's last use failed");
        }
        Ok(user)
    }

    async fn from_jwt(
        state: &AppState,
        parts: &Parts,
        token: &str,
        method: &'static str,
    ) -> Result<Self, ApiError> {
        let claims = state.tokens.verify(token).map_err(|e| {
            tracing::debug!(reason = %e, "token refused");
            invalid_token()
        })?;
        if state
            .auth_view
            .logged_out(&state.db.pool, &claims.jti)
            .await?
        {
            return Err(logged_out());
        }
        Self::load(
            state,
            parts,
            &claims.sub,
            Some(claims.tv),
            Some(claims.jti.clone()),
            method,
            None,
        )
        .await
    }

    /// Redeems a WebSocket ticket for the route it is presented on.
    async fn from_ticket(state: &AppState, parts: &Parts, ticket: &str) -> Result<Self, ApiError> {
        let invalid = |why: &str| {
            ApiError::unauthorized(
                "invalid_ticket",
                format!(
                    "the WebSocket ticket {why} (tickets last 30 s, work once, and open the route and project they were issued for)"
                ),
            )
        };
        let Some(t) = db::ws_tickets::redeem(&state.db.pool, ticket).await? else {
            return Err(invalid("is unknown, used or expired"));
        };
        // Nested routers see a shortened `parts.uri`; the ticket names the
        // full path the client opened.
        let path = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.path(), |u| u.0.path());
        if t.path != path || t.project != query_project(parts)? {
            return Err(invalid("was issued for another route or project"));
        }
        if let Some(jti) = &t.jti
            && state.auth_view.logged_out(&state.db.pool, jti).await?
        {
            return Err(logged_out());
        }
        // A ticket of a personal access token lives while the token does,
        // under its caps.
        if let Some(pat_id) = &t.pat_id {
            let Some(row) = db::personal_tokens::by_id(&state.db.pool, pat_id)
                .await?
                .filter(|r| !r.is_expired(crate::auth::tokens::now_secs()))
            else {
                return Err(invalid(
                    "was issued to a personal access token that is revoked or expired",
                ));
            };
            let pat = PatRef {
                id: row.id.clone(),
                caps: row.caps(),
            };
            return Self::load(state, parts, &t.user_id, None, None, "ticket", Some(pat)).await;
        }
        // A ticket issued before a password, role or status change is
        // revoked with the tokens of that time.
        Self::load(
            state,
            parts,
            &t.user_id,
            Some(t.token_version),
            t.jti,
            "ticket",
            None,
        )
        .await
    }
}

/// The `?project=` of a request (`None` without one). Given twice it is
/// ambiguous, and refused.
fn query_project(parts: &Parts) -> Result<Option<String>, ApiError> {
    let mut found = None;
    let query = parts.uri.query().unwrap_or_default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "project" && found.replace(v.into_owned()).is_some() {
            return Err(ApiError::bad_request(
                "invalid_query",
                "`project` is given more than once",
            ));
        }
    }
    Ok(found)
}

/// POSTs that change nothing, open to read-only tokens: a WebSocket ticket
/// lets a browser open, with the token's own caps, a socket it could open
/// with the token; `can` only asks.
const READ_ONLY_POSTS: [&str; 2] = ["/api/v1/auth/ws-ticket", "/api/v1/auth/can"];

fn logged_out() -> ApiError {
    ApiError::unauthorized(
        "token_revoked",
        "this access token was logged out; log in again",
    )
}

fn invalid_token() -> ApiError {
    ApiError::unauthorized("invalid_token", "the access token is invalid or expired")
}

fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    bearer_token(&parts.headers)
}

/// The token of an `Authorization: Bearer` header, if there is one; any
/// other Authorization header is refused.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| invalid_token())?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::unauthorized(
            "invalid_token",
            "expected `Authorization: Bearer <access token>`",
        )),
    }
}

/// The caller as a layer in front of the handler authenticated it (an
/// `Idempotency-Key`, an owner-only project's check), so that the handler
/// reuses it: one user read per request, and a single-use ticket is spent
/// once. `ws`: authenticated as a WebSocket route is (also `?ticket=` and
/// `?token=`), which a plain route does not take.
#[derive(Debug, Clone)]
struct Authenticated {
    user: AuthUser,
    ws: bool,
}

impl AuthUser {
    /// The caller of the request `parts` belong to, authenticated once and
    /// kept in the request for the handler (`ws`: as a WebSocket route).
    pub async fn resolve(parts: &mut Parts, state: &AppState, ws: bool) -> Result<Self, ApiError> {
        let user = if ws {
            WsUser::from_request_parts(parts, state).await?.0
        } else {
            AuthUser::from_request_parts(parts, state).await?
        };
        parts.extensions.insert(Authenticated {
            user: user.clone(),
            ws,
        });
        Ok(user)
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(a) = parts.extensions.get::<Authenticated>()
            && !a.ws
        {
            return Ok(a.user.clone());
        }
        match bearer(parts)? {
            Some(token) => Self::from_token(state, parts, token, "bearer").await,
            None => Err(ApiError::unauthorized(
                "missing_token",
                "this endpoint needs `Authorization: Bearer <access token>` (get one from POST /api/v1/auth/login)",
            )),
        }
    }
}

#[derive(Default, Deserialize)]
struct WsCredentials {
    ticket: Option<String>,
    token: Option<String>,
}

/// The caller of a WebSocket route. Browsers cannot set headers on a
/// WebSocket, so a single-use `?ticket=` (preferred) or `?token=` also works.
#[derive(Debug, Clone)]
pub struct WsUser(pub AuthUser);

impl FromRequestParts<AppState> for WsUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(a) = parts.extensions.get::<Authenticated>() {
            return Ok(WsUser(a.user.clone()));
        }
        if let Some(token) = bearer(parts)? {
            return AuthUser::from_token(state, parts, token, "bearer")
                .await
                .map(WsUser);
        }
        // Unparseable query strings simply carry no credentials.
        let creds = Query::<WsCredentials>::try_from_uri(&parts.uri)
            .map(|Query(c)| c)
            .unwrap_or_default();
        if let Some(ticket) = creds.ticket {
            return AuthUser::from_ticket(state, parts, &ticket)
                .await
                .map(WsUser);
        }
        if let Some(token) = creds.token {
            return AuthUser::from_token(state, parts, &token, "query_token")
                .await
                .map(WsUser);
        }
        Err(ApiError::unauthorized(
            "missing_token",
            "authenticate with `?ticket=` (POST /api/v1/auth/ws-ticket), `?token=` or an Authorization header",
        ))
    }
}
