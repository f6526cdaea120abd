//! `/api/v1/operations`: background work started through lxgate, and the
//! 202 + operation-reference convention every long-running endpoint uses.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::slots::UserSlot;
use crate::api::{Json, Page, Path, Query};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::Operation;
use crate::db;
use crate::error::{ApiError, ApiResult, Problem};

/// The body of a 202 answer (DESIGN §2).
#[derive(Debug, Serialize, ToSchema)]
pub struct OperationRef {
    #[schema(example = "6916c8a6-9b7d-4abd-90b3-aadfb1b5fb46")]
    pub operation_id: String,
    #[schema(example = "Running")]
    pub status: String,
    #[schema(example = 103)]
    pub status_code: i64,
    /// The operation's URL on the backend (for reference; use `poll_url`).
    pub operation_url: String,
    pub poll_url: String,
    pub wait_url: String,
}

pub const MAX_WAIT_SECS: u64 = 300;

/// One of the caller's `MAX_RUNNING_OPERATIONS_PER_USER` slots. Every
/// handler that starts an operation takes one before the backend starts the
/// work (429 when the caller has that many running) and hands it to
/// `accepted`, which keeps it until the operation finishes. Counted per
/// replica.
pub struct OperationSlot {
    slot: UserSlot,
    user_id: String,
    username: String,
}

impl OperationSlot {
    pub fn acquire(state: &AppState, user: &AuthUser) -> ApiResult<Self> {
        Ok(Self {
            slot: state.running_operations.acquire(&user.id)?,
            user_id: user.id.clone(),
            username: user.username.clone(),
        })
    }
}

/// The slot of a running operation, freed by whichever sees it finish
/// first: `accepted` (when it waited) or the task `hold_until_done` starts.
type SharedSlot = Arc<Mutex<Option<UserSlot>>>;

fn free(slot: &SharedSlot) {
    slot.lock().expect("slot lock poisoned").take();
}

/// How long `hold_until_done` keeps a slot while the backend answers only
/// errors about its operation.
const GIVE_UP_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Keeps `slot` until operation `id` has finished (or is gone), even when
/// the request that started it has gone away.
fn hold_until_done(state: &AppState, id: &str, slot: SharedSlot) {
    let backend = state.backend.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            match backend.wait_operation(&id, MAX_WAIT_SECS).await {
                Ok(op) if !op.is_done() => failing_since = None,
                Ok(_) | Err(crate::backend::BackendError::NotFound(_)) => break,
                Err(e) => {
                    // The backend is unreachable for now: the operation may
                    // still run, so its slot stays taken, but not for ever
                    // (an error that persists frees it).
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > GIVE_UP_AFTER {
                        tracing::warn!(op = %id, error = %e, "no answer about an operation for 10 minutes: freeing its slot");
                        break;
                    }
                    tracing::warn!(op = %id, error = %e, "waiting for an operation to free its slot");
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
            }
        }
        free(&slot);
    });
}

/// Records who started `op`, then answers 202 with a reference, or, with
/// `?wait=`, waits and answers 200 with the finished operation. The slot is
/// kept until the operation finishes.
pub async fn accepted(
    state: &AppState,
    slot: OperationSlot,
    project: &str,
    action: &str,
    resource: Option<&str>,
    op: Operation,
    wait: Option<u64>,
) -> ApiResult<Response> {
    let OperationSlot {
        slot,
        user_id,
        username,
    } = slot;
    let slot: SharedSlot = Arc::new(Mutex::new((!op.is_done()).then_some(slot)));
    if !op.is_done() {
        hold_until_done(state, &op.id, slot.clone());
    }
    db::operations::record(
        &state.db.pool,
        db::operations::NewOperation {
            id: &op.id,
            project,
            user_id: &user_id,
            username: &username,
            action,
            resource,
        },
    )
    .await?;
    let op = match wait.filter(|w| *w > 0) {
        Some(secs) if !op.is_done() => {
            state
                .backend
                .wait_operation(&op.id, secs.min(MAX_WAIT_SECS))
                .await?
        }
        _ => op,
    };
    if op.is_done() {
        // Free before answering: the caller may start the next one at once.
        free(&slot);
        // The caller is the requester: it sees its own output.
        let op = with_exec_output(state, project, Some(action), op).await?;
        return Ok((StatusCode::OK, Json(op)).into_response());
    }
    Ok(reference(op))
}

/// Whether `user` may read what an operation's command printed: its
/// requester and the project's operators may, viewers may not (operators run
/// commands whose output can hold anything, keys included).
fn may_read_output(user: &AuthUser, project: &str, requester: Option<&str>) -> bool {
    requester == Some(user.id.as_str()) || user.grants.allows(Permission::ProjectOperate, project)
}

/// The operation as `user` may see it: every list, get and wait answer goes
/// through here (secrets are dropped for everyone when serialized).
fn for_caller(
    user: &AuthUser,
    project: &str,
    record: Option<&db::operations::OperationRow>,
    op: Operation,
) -> Operation {
    let requester = record.and_then(|r| r.user_id.as_deref());
    if may_read_output(user, project, requester) {
        op
    } else {
        op.without_exec_output()
    }
}

/// A finished exec operation carries the command's exit code, stdout and
/// stderr in its metadata (not just where the backend logged them).
async fn with_exec_output(
    state: &AppState,
    project: &str,
    action: Option<&str>,
    mut op: Operation,
) -> ApiResult<Operation> {
    if action != Some(crate::api::v1::exec::EXEC_ACTION) || op.status_code != 200 {
        return Ok(op);
    }
    if let Some(out) = state.backend.exec_output(project, &op).await?
        && let Some(meta) = op.metadata.as_object_mut()
    {
        meta.insert("exit_code".into(), out.exit_code.into());
        meta.insert("stdout".into(), out.stdout.into());
        meta.insert("stderr".into(), out.stderr.into());
        meta.insert("truncated".into(), out.truncated.into());
    }
    Ok(op)
}

fn reference(op: Operation) -> Response {
    let poll_url = format!("/api/v1/operations/{}", op.id);
    let body = OperationRef {
        operation_url: format!("/1.0/operations/{}", op.id),
        wait_url: format!("{poll_url}/wait"),
        poll_url: poll_url.clone(),
        operation_id: op.id,
        status: op.status,
        status_code: op.status_code,
    };
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&poll_url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn operation_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "operation_not_found",
        format!("operation `{id}` does not exist"),
    )
}

/// Operation ids are UUIDs; anything else cannot name one.
fn parse_id(id: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::bad_request("invalid_name", "an operation id is a UUID"))
}

/// The operation, after checking the caller may see its project. Unknown
/// operations and ones the caller may not see look the same (404).
async fn visible(
    state: &AppState,
    user: &AuthUser,
    id: &str,
) -> ApiResult<(Operation, String, Option<db::operations::OperationRow>)> {
    let record = db::operations::get(&state.db.pool, id).await?;
    let op = match state.backend.get_operation(id).await {
        Ok(op) => op,
        Err(crate::backend::BackendError::NotFound(_)) => return Err(operation_not_found(id)),
        Err(e) => return Err(e.into()),
    };
    let project = record
        .as_ref()
        .map(|r| r.project.clone())
        .unwrap_or_else(|| op.project.clone());
    if !user.grants.can_see(&project) {
        return Err(operation_not_found(id));
    }
    Ok((op, project, record))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListOperationsQuery {
    /// The project (default `default`).
    #[param(value_type = Option<crate::api::schemas::ProjectParam>)]
    pub project: Option<String>,
    /// Every project (admins only).
    #[serde(rename = "all-projects")]
    #[param(rename = "all-projects")]
    pub all_projects: Option<bool>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// List operations in a project (newest first).
#[utoipa::path(get, path = "", tag = "operations", operation_id = "list_operations",
    security(("bearer" = [])),
    params(ListOperationsQuery),
    responses(
        (status = 200, description = "A page of operations", body = Page<Operation>),
        (status = 403, description = "No role in the project", body = Problem, content_type = "application/problem+json")))]
pub async fn list_operations(
    user: AuthUser,
    State(state): State<AppState>,
    Query(q): Query<ListOperationsQuery>,
) -> ApiResult<Json<Page<Operation>>> {
    let (limit, offset) = crate::api::Pagination {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve()?;
    let project = crate::api::v1::project_param(q.project.as_deref())?;
    let ops = if q.all_projects == Some(true) {
        user.require(Permission::OperationCancelAny, "")?;
        state.backend.list_operations(None).await?
    } else {
        user.require(Permission::ProjectView, project.as_str())?;
        state
            .backend
            .list_operations(Some(project.as_str()))
            .await?
    };
    let ops = ops
        .into_iter()
        .map(|op| {
            let project = match q.all_projects {
                Some(true) => op.project.clone(),
                _ => project.as_str().to_owned(),
            };
            for_caller(&user, &project, None, op)
        })
        .collect();
    Ok(Json(Page::slice(ops, limit, offset)))
}

/// Get an operation.
#[utoipa::path(get, path = "/{id}", tag = "operations", operation_id = "get_operation",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Operation id (UUID)")),
    responses(
        (status = 200, description = "The operation", body = Operation),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such operation (or not visible to the caller)", body = Problem, content_type = "application/problem+json")))]
pub async fn get_operation(
    user: AuthUser,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Operation>> {
    let id = parse_id(&id)?;
    let (op, project, record) = visible(&state, &user, &id).await?;
    let action = record.as_ref().map(|r| r.action.as_str());
    let op = with_exec_output(&state, &project, action, op).await?;
    Ok(Json(for_caller(&user, &project, record.as_ref(), op)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to wait (default 30, max 300).
    #[param(value_type = Option<crate::api::schemas::WaitSeconds>)]
    pub timeout: Option<u64>,
}

/// Long-poll: wait until the operation finishes or the timeout passes, then
/// return it (check `status_code`: 103 means still running).
#[utoipa::path(get, path = "/{id}/wait", tag = "operations", operation_id = "wait_operation",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Operation id (UUID)"), WaitQuery),
    responses(
        (status = 200, description = "The operation, finished or still running", body = Operation),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such operation", body = Problem, content_type = "application/problem+json")))]
pub async fn wait_operation(
    user: AuthUser,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Json<Operation>> {
    let id = parse_id(&id)?;
    let (op, project, record) = visible(&state, &user, &id).await?;
    let action = record.as_ref().map(|r| r.action.as_str());
    let op = if op.is_done() {
        op
    } else {
        let timeout = q.timeout.unwrap_or(30).min(MAX_WAIT_SECS);
        state.backend.wait_operation(&id, timeout).await?
    };
    let op = with_exec_output(&state, &project, action, op).await?;
    Ok(Json(for_caller(&user, &project, record.as_ref(), op)))
}

/// Cancel an operation: operators their own, admins anyone's.
#[utoipa::path(delete, path = "/{id}", tag = "operations", operation_id = "cancel_operation",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Operation id (UUID)")),
    responses(
        (status = 204, description = "Cancelled"),
        (status = 403, description = "Not the caller's operation, or no operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such operation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The operation cannot be cancelled", body = Problem, content_type = "application/problem+json")))]
pub async fn cancel_operation(
    user: AuthUser,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id(&id)?;
    let (op, project, record) = visible(&state, &user, &id).await?;
    let own = record
        .as_ref()
        .and_then(|r| r.user_id.as_deref())
        .is_some_and(|uid| uid == user.id);
    if own {
        user.require(Permission::ProjectOperate, &project)?;
    } else {
        user.require(Permission::OperationCancelAny, "")?;
    }
    if op.is_done() || !op.may_cancel {
        return Err(ApiError::conflict(
            "operation_not_cancellable",
            format!("operation `{id}` cannot be cancelled ({})", op.status),
        ));
    }
    state.backend.cancel_operation(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
