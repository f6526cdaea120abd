//! Exec and console: interactive terminals over WebSocket, and recorded
//! non-interactive commands as operations.

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::Uri;
use axum::response::Response;
use utoipa::IntoParams;

use crate::api::operation::{EXEC_ACTION, OperationRef, OperationSlot, accepted};
use crate::api::paths::InstancePath;
use crate::api::policy;
use crate::api::problems::{
    GuestOperator403, InstanceMissing, NotWebSocket426, TooManyOperations429, TooManySockets429,
};
use crate::api::resource::{ProjectScoped, ProjectWaitQuery, project_scoped};
use crate::api::ws::{relay_terminal, require_upgrade};
use crate::api::{Json, Path, Query};
use crate::app::AppState;
use crate::auth::extract::WsUser;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::{ExecRequest, Operation};
use crate::error::{ApiError, ApiResult};
use crate::names::ProjectName;

/// The query of a terminal WebSocket. `command` repeats once per argv element.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TerminalQuery {
    /// One argv element per occurrence, e.g. `command=sh&command=-c&command=ls` (default `sh`).
    pub command: Vec<String>,
    /// Terminal width in columns (default 80).
    pub width: Option<u32>,
    /// Terminal height in rows (default 24).
    pub height: Option<u32>,
    /// `KEY=VALUE`, repeatable.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: Option<String>,
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
    /// A single-use ticket from `POST /api/v1/auth/ws-ticket` (browsers).
    pub ticket: Option<String>,
    /// An access token, when a ticket cannot be used (never logged).
    pub token: Option<String>,
}

project_scoped!(TerminalQuery);

/// Parses the query by hand: serde's query format cannot repeat keys.
fn terminal_query(uri: &Uri) -> ApiResult<TerminalQuery> {
    let mut q = TerminalQuery::default();
    let number = |k: &str, v: &str| -> ApiResult<u32> {
        v.parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::bad_request("invalid_query", format!("{k} must be 1-1000")))
    };
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "command" => q.command.push(v.into_owned()),
            "env" => q.env.push(v.into_owned()),
            "width" => q.width = Some(number("width", &v)?),
            "height" => q.height = Some(number("height", &v)?),
            // Once each: which project (or credential) a request means must
            // not depend on who reads the query first.
            "cwd" | "project" | "ticket" | "token" => {
                let slot = match k.as_ref() {
                    "cwd" => &mut q.cwd,
                    "project" => &mut q.project,
                    "ticket" => &mut q.ticket,
                    _ => &mut q.token,
                };
                if slot.replace(v.into_owned()).is_some() {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        format!("`{k}` is given more than once"),
                    ));
                }
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown query parameter `{other}`"),
                ));
            }
        }
    }
    Ok(q)
}

fn exec_request(q: &TerminalQuery) -> ApiResult<ExecRequest> {
    let mut req = ExecRequest {
        command: if q.command.is_empty() {
            vec!["sh".into()]
        } else {
            q.command.clone()
        },
        cwd: q.cwd.clone(),
        ..Default::default()
    };
    for kv in &q.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ApiError::bad_request("invalid_query", "env must be KEY=VALUE"))?;
        req.environment.insert(k.to_owned(), v.to_owned());
    }
    req.validate()
        .map_err(|(_, why)| ApiError::bad_request("invalid_query", why))?;
    Ok(req)
}

fn authorize_terminal(user: &AuthUser, q: &TerminalQuery) -> ApiResult<ProjectName> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    Ok(project)
}

/// What keeps a terminal open: the operator role it was opened with.
fn terminal_needs(project: &ProjectName) -> Vec<(Permission, String)> {
    vec![(Permission::ProjectOperate, project.as_str().to_owned())]
}

/// Interactive terminal (WebSocket): binary frames are stdin/stdout, the
/// client may send `{"type":"resize","width":W,"height":H}` as text, and the
/// last server frame is `{"type":"exit","exit_code":N}`.
#[utoipa::path(get, path = "/{name}/exec/ws", tag = "instances", operation_id = "exec_instance_terminal",
    security(("bearer" = [])),
    params(InstancePath, TerminalQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        GuestOperator403, InstanceMissing, NotWebSocket426, TooManySockets429))]
pub async fn exec_ws(
    WsUser(user): WsUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let q = terminal_query(&uri)?;
    let project = authorize_terminal(&user, &q)?;
    policy::require_inside_access(&state, &user, &project, &name).await?;
    let slot = state.sockets.acquire(&user, terminal_needs(&project))?;
    let req = exec_request(&q)?;
    let ws = require_upgrade(ws)?;
    let size = (q.width.unwrap_or(80), q.height.unwrap_or(24));
    // Start the session before upgrading, so failures are plain HTTP errors.
    let session = state
        .backend
        .exec_interactive(&project, &name, &req, size)
        .await?;
    Ok(ws.on_upgrade(move |socket| relay_terminal(socket, session, slot)))
}

/// The instance console (WebSocket), relayed like the exec terminal.
#[utoipa::path(get, path = "/{name}/console/ws", tag = "instances", operation_id = "instance_console",
    security(("bearer" = [])),
    params(InstancePath, TerminalQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        GuestOperator403, InstanceMissing, NotWebSocket426, TooManySockets429))]
pub async fn console_ws(
    WsUser(user): WsUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let q = terminal_query(&uri)?;
    let project = authorize_terminal(&user, &q)?;
    policy::require_inside_access(&state, &user, &project, &name).await?;
    let slot = state.sockets.acquire(&user, terminal_needs(&project))?;
    let ws = require_upgrade(ws)?;
    let size = (q.width.unwrap_or(80), q.height.unwrap_or(24));
    let session = state.backend.console(&project, &name, size).await?;
    Ok(ws.on_upgrade(move |socket| relay_terminal(socket, session, slot)))
}

/// Run a command without a terminal. Answers 202 with an operation; once it
/// finishes, its `metadata` carries `exit_code`, `stdout`, `stderr` and
/// `truncated` (each stream keeps its first `EXEC_OUTPUT_MAX_BYTES`). With
/// `timeout` (embedded backend) a command still running then is killed and
/// the operation fails with `timed_out: true` and the output so far. On the
/// embedded backend finished outputs are held in memory up to
/// `EXEC_OUTPUT_TOTAL_BYTES` in all; past that the oldest are dropped and
/// their operation says `output_expired: true`.
#[utoipa::path(post, path = "/{name}/exec", tag = "instances", operation_id = "exec_instance",
    security(("bearer" = [])),
    params(InstancePath, ProjectWaitQuery),
    request_body = ExecRequest,
    responses(
        (status = 202, description = "Running", body = OperationRef),
        (status = 200, description = "Finished within `?wait=`", body = Operation),
        GuestOperator403, InstanceMissing, TooManyOperations429))]
pub async fn exec_instance(
    user: AuthUser,
    State(state): State<AppState>,
    Path(InstancePath { name }): Path<InstancePath>,
    Query(q): Query<ProjectWaitQuery>,
    Json(req): Json<ExecRequest>,
) -> ApiResult<Response> {
    let project = q.project()?;
    user.require(Permission::ProjectOperate, project.as_str())?;
    req.validate()
        .map_err(|(field, why)| ApiError::invalid_field(field, why))?;
    policy::require_inside_access(&state, &user, &project, &name).await?;
    let slot = OperationSlot::acquire(&state, &user)?;
    let op = state.backend.exec(&project, &name, &req).await?;
    accepted(
        &state,
        slot,
        project.as_str(),
        EXEC_ACTION,
        Some(name.as_str()),
        op,
        q.wait,
    )
    .await
}
