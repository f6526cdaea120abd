//! `/api/v1/operations`: background work started through lxgate (the 202
//! convention itself is `crate::api::operation`).

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::operation::{MAX_WAIT_SECS, for_caller, with_exec_output};
use crate::api::paths::OperationPath;
use crate::api::problems::{OperationMissing, Viewer403};
use crate::api::resource::{ProjectScoped, project_scoped};
use crate::api::{Json, Page, Path, Query, ownership};
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::Operation;
use crate::backend::{BackendError, Missing};
use crate::db;
use crate::error::{ApiError, ApiResult, Problem};

/// The backend's answer for an unknown operation, also given for one the
/// caller may not see (so the two cannot be told apart).
fn operation_not_found(id: &str) -> ApiError {
    BackendError::NotFound(Missing::operation(id)).into()
}

/// The operation, after checking the caller may see its project. Unknown
/// operations and ones the caller may not see look the same (404).
async fn visible(
    state: &AppState,
    user: &AuthUser,
    id: &str,
) -> ApiResult<(Operation, String, Option<db::operations::OperationRow>)> {
    let record = db::operations::get(&state.db.pool, id).await?;
    let (op, recorded) = match (state.backend.get_operation(id).await, &record) {
        (Ok(op), Some(r)) if op.is_done() && r.finished_at.is_none() => {
            // Its end not seen yet (started before lxgate restarted, or
            // through another replica whose watcher went away): seen now.
            crate::api::operation::record_end(&state.db.pool, &op).await;
            (op, false)
        }
        (Ok(op), _) => (op, false),
        // Started through lxgate, forgotten by the backend: as recorded.
        (Err(BackendError::NotFound(_)), Some(r)) => match crate::api::operation::as_recorded(r) {
            Some(op) => (op, true),
            None => return Err(operation_not_found(id)),
        },
        (Err(e), _) => return Err(e.into()),
    };
    let project = record
        .as_ref()
        .map(|r| r.project.clone())
        .unwrap_or_else(|| op.project.clone());
    let requester = record.as_ref().and_then(|r| r.user_id.as_deref());
    // In an owner-only project, a record's instance name may be somebody
    // else's by now: what only the record knows is its requester's.
    let hidden = |own: ownership::Own| match recorded {
        true => requester != Some(user.id.as_str()),
        false => !own.sees_operation(&op, requester),
    };
    if !user.grants.can_see(&project)
        || ownership::own(state, user, &project)
            .await?
            .is_some_and(hidden)
    {
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

project_scoped!(ListOperationsQuery);

/// List operations in a project (newest first).
#[utoipa::path(get, path = "", tag = "operations", operation_id = "list_operations",
    security(("bearer" = [])),
    params(ListOperationsQuery),
    responses(
        (status = 200, description = "A page of operations", body = Page<Operation>),
        Viewer403))]
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
    let project = q.project()?;
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
    // In an owner-only project, only what the caller may see of it (all
    // projects at once is for admins, who see everything).
    let own = match q.all_projects {
        Some(true) => None,
        _ => ownership::own(&state, &user, project.as_str()).await?,
    };
    let ops = match own {
        Some(own) => {
            let ids: Vec<String> = ops.iter().map(|op| op.id.clone()).collect();
            let requesters: HashMap<String, Option<String>> =
                db::operations::get_many(&state.db.pool, &ids)
                    .await?
                    .into_iter()
                    .map(|r| (r.id, r.user_id))
                    .collect();
            ops.into_iter()
                .filter(|op| {
                    let by = requesters.get(&op.id).and_then(|b| b.as_deref());
                    own.sees_operation(op, by)
                })
                .collect()
        }
        None => ops,
    };
    let page = Page::slice(ops, limit, offset);
    // Who started each, for this page only (one query).
    let ids: Vec<String> = page.items.iter().map(|op| op.id.clone()).collect();
    let records: HashMap<String, db::operations::OperationRow> =
        db::operations::get_many(&state.db.pool, &ids)
            .await?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
    Ok(Json(page.map(|op| {
        let project = match q.all_projects {
            Some(true) => op.project.clone(),
            _ => project.as_str().to_owned(),
        };
        let record = records.get(&op.id);
        for_caller(&user, &project, record, op)
    })))
}

/// Get an operation.
#[utoipa::path(get, path = "/{id}", tag = "operations", operation_id = "get_operation",
    security(("bearer" = [])),
    params(OperationPath),
    responses(
        (status = 200, description = "The operation", body = Operation),
        OperationMissing))]
pub async fn get_operation(
    user: AuthUser,
    State(state): State<AppState>,
    Path(OperationPath { id }): Path<OperationPath>,
) -> ApiResult<Json<Operation>> {
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
    params(OperationPath, WaitQuery),
    responses(
        (status = 200, description = "The operation, finished or still running", body = Operation),
        OperationMissing))]
pub async fn wait_operation(
    user: AuthUser,
    State(state): State<AppState>,
    Path(OperationPath { id }): Path<OperationPath>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Json<Operation>> {
    let (op, project, record) = visible(&state, &user, &id).await?;
    let action = record.as_ref().map(|r| r.action.as_str());
    let op = if op.is_done() {
        op
    } else {
        let timeout = q.timeout.unwrap_or(30).min(MAX_WAIT_SECS);
        match state.backend.wait_operation(&id, timeout).await {
            Ok(op) => {
                if op.is_done() && record.is_some() {
                    crate::api::operation::record_end(&state.db.pool, &op).await;
                }
                op
            }
            // Forgotten by the backend while waiting (it restarted).
            Err(BackendError::NotFound(_)) => {
                let again = match &record {
                    Some(_) => db::operations::get(&state.db.pool, &id).await?,
                    None => None,
                };
                match again.as_ref().and_then(crate::api::operation::as_recorded) {
                    Some(op) => op,
                    None => return Err(operation_not_found(&id)),
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    let op = with_exec_output(&state, &project, action, op).await?;
    Ok(Json(for_caller(&user, &project, record.as_ref(), op)))
}

/// Cancel an operation: operators their own, admins anyone's.
#[utoipa::path(delete, path = "/{id}", tag = "operations", operation_id = "cancel_operation",
    security(("bearer" = [])),
    params(OperationPath),
    responses(
        (status = 204, description = "Cancelled"),
        OperationMissing,
        (status = 403, description = "Not the caller's operation, or no operator role", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The operation cannot be cancelled", body = Problem, content_type = "application/problem+json")))]
pub async fn cancel_operation(
    user: AuthUser,
    State(state): State<AppState>,
    Path(OperationPath { id }): Path<OperationPath>,
) -> ApiResult<StatusCode> {
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
