//! `/api/v1/audit`: the record of every mutating request (admins only), and
//! the middleware that writes it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::IntoParams;

use crate::api::problems::Admin403;
use crate::api::{Json, Page, Pagination, Query};
use crate::app::AppState;
use crate::auth::limit::client_ip;
use crate::auth::tokens::now_secs;
use crate::auth::{AuthUser, Permission};
use crate::db;
use crate::db::audit::AuditRow;
use crate::error::{ApiError, ApiResult};
use crate::telemetry::{RequestCtx, current_request_id};

/// Records mutating requests after they complete, whatever their outcome.
pub async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let project = req.uri().query().and_then(|q| url_param(q, "project"));
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| client_ip(ci.0.ip(), req.headers(), &state.config.trusted_proxies).to_string());
    let ctx = req.extensions().get::<Arc<RequestCtx>>().cloned();
    let resp = next.run(req).await;
    let username = ctx.as_ref().and_then(|c| c.user.get().cloned());
    let auth_method = ctx.as_ref().and_then(|c| c.auth.get().copied());
    let token_id = ctx.as_ref().and_then(|c| c.token_id.get().cloned());
    // Anybody can send requests without credentials: their rows are
    // rate-limited per client IP, so a flood cannot fill the log.
    if auth_method.is_none()
        && let Some(ip) = ip.as_deref().and_then(|ip| ip.parse().ok())
        && state.audit_limiter.check(ip).is_err()
    {
        metrics::counter!("lxgate_audit_rows_dropped_total").increment(1);
        return resp;
    }
    let request_id = current_request_id().unwrap_or_default();
    let detail = resp
        .extensions()
        .get::<db::audit::Detail>()
        .map(|d| d.0.clone());
    let entry = db::audit::NewEntry {
        at: now_secs(),
        username: username.as_deref(),
        client_ip: ip,
        method: &method,
        path: &path,
        route: route.as_deref(),
        project: project.as_deref(),
        status: resp.status().as_u16(),
        request_id: &request_id,
        detail: detail.as_deref(),
        auth_method,
        token_id: token_id.as_deref(),
    };
    if let Err(e) = db::audit::insert(&state.db.pool, entry).await {
        tracing::error!(error = %e, "writing the audit log failed");
    }
    resp
}

/// The `?project=` of a request, when it names a valid project.
fn url_param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .filter(|p| crate::names::ProjectName::parse(p).is_ok())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only requests by this username.
    pub user: Option<String>,
    /// Only requests about this project.
    pub project: Option<String>,
    /// Only requests at or after this time (RFC 3339, e.g. `2026-11-23T00:00:00Z`).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Page size (1-1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// Read the audit log, newest first.
#[utoipa::path(get, path = "", tag = "audit", operation_id = "list_audit",
    security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of audit entries", body = Page<AuditRow>),
        Admin403))]
pub async fn list_audit(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Page<AuditRow>>> {
    user.require(Permission::AuditRead, "")?;
    let (limit, offset) = Pagination {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve()?;
    let since = q
        .since
        .as_deref()
        .map(|s| {
            OffsetDateTime::parse(s, &Rfc3339)
                .map(|t| t.unix_timestamp())
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_query",
                        "since must be an RFC 3339 time such as 2026-11-23T00:00:00Z",
                    )
                })
        })
        .transpose()?;
    let (items, total) = db::audit::list(
        &state.db.pool,
        &db::audit::Filter {
            user: q.user.as_deref(),
            project: q.project.as_deref(),
            since,
            limit,
            offset,
        },
    )
    .await?;
    Ok(Json(Page {
        items,
        total,
        limit,
        offset,
    }))
}
