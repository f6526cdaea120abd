//! The 202 + operation-reference convention every long-running endpoint
//! uses (DESIGN §2): the per-user slot an operation holds while it runs, the
//! record of who started it, the answer, and how an operation is shown to
//! each caller.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::Json;
use crate::api::requesters::{Starting, requested_by};
use crate::api::slots::UserSlot;
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::{Operation, RequestedBy};
use crate::db;
use crate::error::ApiResult;

/// The action recorded for a non-interactive exec: its operation carries
/// the command's output.
pub const EXEC_ACTION: &str = "instance.exec";

/// The body of a 202 answer (DESIGN §2).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    requested_by: RequestedBy,
    /// Lets the event relay wait for this start to be remembered (an
    /// operation's first events can come before it is).
    starting: Starting,
}

impl OperationSlot {
    pub fn acquire(state: &AppState, user: &AuthUser) -> ApiResult<Self> {
        Ok(Self {
            slot: state.running_operations.acquire(&user.id)?,
            starting: state.requesters.starting(),
            user_id: user.id.clone(),
            requested_by: RequestedBy {
                username: user.username.clone(),
                auth_method: user.auth_method.to_owned(),
                token_id: user.pat.as_ref().map(|p| p.id.clone()),
            },
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

/// What to do once an operation has finished, told whether it succeeded
/// (lxgate's own records of what it made: they must not say more than the
/// backend did). Not run when the outcome is never learnt (the operation
/// vanished, or the backend stayed away).
pub type OnDone = Box<dyn FnOnce(bool) -> futures::future::BoxFuture<'static, ()> + Send>;

/// The hook, run by whichever sees the end first.
type SharedHook = Arc<tokio::sync::Mutex<Option<OnDone>>>;

/// Runs the hook if nobody has, and returns once it has run (whoever ran
/// it): a request that waited answers only after lxgate's records say what
/// the backend did. On a task of its own, so that a caller going away does
/// not cut it short.
async fn run_hook(hook: &SharedHook, op: &Operation) {
    let hook = hook.clone();
    let succeeded = op.status_code == Operation::SUCCESS;
    let run = tokio::spawn(async move {
        let mut hook = hook.lock().await;
        if let Some(f) = hook.take() {
            f(succeeded).await;
        }
    });
    if let Err(e) = run.await {
        tracing::warn!(error = %e, "an operation's hook failed");
    }
}

/// What lxgate knows of an operation it started that the backend no longer
/// does (it forgets finished ones within seconds, and every one when it
/// restarts): how it ended if lxgate saw that, else a failure that says
/// the outcome was lost. Never a 404 for work lxgate started, never
/// Running for ever.
pub fn as_recorded(record: &db::operations::OperationRow) -> Option<Operation> {
    let (status_code, err, metadata) = match (record.status_code, record.finished_at) {
        (Some(code), _) => (
            code,
            record.err.clone().unwrap_or_default(),
            // An exec's exit code: its Success says it ran, not how.
            record
                .exit_code
                .map_or(serde_json::Value::Null, |c| serde_json::json!({"return": c})),
        ),
        // Recorded before lxgate kept outcomes: not known, as before.
        (None, Some(_)) => return None,
        (None, None) => (
            Operation::FAILURE,
            "the backend no longer knows this operation and lxgate did not see it end (the backend or lxgate restarted, or failed over, while it ran): check what it was working on".to_owned(),
            serde_json::json!({"outcome": "unknown"}),
        ),
    };
    let mut resources = std::collections::BTreeMap::new();
    if let (Some(name), true) = (&record.resource, record.action.starts_with("instance.")) {
        let url = if record.project == "default" {
            format!("/1.0/instances/{name}")
        } else {
            format!("/1.0/instances/{name}?project={}", record.project)
        };
        resources.insert("instances".to_owned(), vec![url]);
    }
    let at = |secs: i64| crate::api::rfc3339(secs);
    Some(Operation {
        id: record.id.clone(),
        class: "task".to_owned(),
        description: record.action.clone(),
        created_at: at(record.created_at),
        updated_at: at(record.finished_at.unwrap_or(record.created_at)),
        status: Operation::status_of(status_code).to_owned(),
        status_code,
        resources,
        metadata,
        err,
        project: record.project.clone(),
        ..Operation::default()
    })
}

/// Records how `op` ended: what `GET operations/{id}` answers once the
/// backend has forgotten it.
pub async fn record_end(pool: &sqlx::AnyPool, op: &Operation) {
    let exit_code = op
        .metadata
        .get("return")
        .and_then(serde_json::Value::as_i64);
    if let Err(e) = db::operations::finish(pool, &op.id, op.status_code, &op.err, exit_code).await {
        tracing::warn!(op = %op.id, error = %e, "recording how an operation ended failed");
    }
}

/// Keeps `slot` until operation `id` has finished (or is gone), even when
/// the request that started it has gone away, and runs `hook` if it
/// succeeded.
/// `recorded` says the operation's row is written (or will not be): its
/// end is written into it after that.
fn hold_until_done(
    state: &AppState,
    id: &str,
    slot: SharedSlot,
    hook: SharedHook,
    recorded: tokio::sync::oneshot::Receiver<()>,
) {
    let backend = state.backend.clone();
    let pool = state.db.pool.clone();
    let id = id.to_owned();
    let mut recorded = Some(recorded);
    tokio::spawn(async move {
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            match backend.wait_operation(&id, MAX_WAIT_SECS).await {
                Ok(op) if !op.is_done() => failing_since = None,
                Ok(op) => {
                    if let Some(rx) = recorded.take() {
                        let _ = rx.await;
                    }
                    record_end(&pool, &op).await;
                    run_hook(&hook, &op).await;
                    break;
                }
                Err(crate::backend::BackendError::NotFound(_)) => break,
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
    accepted_then(state, slot, project, action, resource, op, wait, None).await
}

/// [`accepted`], and `on_done` once the operation has finished: before the
/// answer when the request waited for it, else when it does.
#[expect(clippy::too_many_arguments, reason = "accepted's, and the hook")]
pub async fn accepted_then(
    state: &AppState,
    slot: OperationSlot,
    project: &str,
    action: &str,
    resource: Option<&str>,
    op: Operation,
    wait: Option<u64>,
    on_done: Option<OnDone>,
) -> ApiResult<Response> {
    let OperationSlot {
        slot,
        user_id,
        requested_by,
        starting,
    } = slot;
    let hook: SharedHook = Arc::new(tokio::sync::Mutex::new(on_done));
    let slot: SharedSlot = Arc::new(Mutex::new((!op.is_done()).then_some(slot)));
    // Watched from now on (a fast operation is forgotten by the backend
    // seconds after it ends); its end goes into the row written below.
    let (recorded, recorded_rx) = tokio::sync::oneshot::channel();
    if !op.is_done() {
        hold_until_done(state, &op.id, slot.clone(), hook.clone(), recorded_rx);
    }
    // The work has started: a record that cannot be written costs who
    // started it, not the answer (a client told 500 would start it again).
    if let Err(e) = db::operations::record(
        &state.db.pool,
        db::operations::NewOperation {
            id: &op.id,
            project,
            user_id: &user_id,
            username: &requested_by.username,
            action,
            resource,
            auth_method: &requested_by.auth_method,
            token_id: requested_by.token_id.as_deref(),
        },
    )
    .await
    {
        tracing::warn!(op = %op.id, error = %e, "recording who started an operation failed");
    }
    state.requesters.remember(&op.id, requested_by.clone());
    drop(starting);
    let _ = recorded.send(());
    let op = match wait.filter(|w| *w > 0) {
        Some(secs) if !op.is_done() => {
            match state
                .backend
                .wait_operation(&op.id, secs.min(MAX_WAIT_SECS))
                .await
            {
                Ok(done) => done,
                // The work has started: an error while waiting must not
                // hide it (a client told 503 would start it again). The
                // reference lets the client follow it.
                Err(e) => {
                    tracing::info!(op = %op.id, error = %e, "waiting for an operation failed; answering with its reference");
                    op
                }
            }
        }
        _ => op,
    };
    if op.is_done() {
        record_end(&state.db.pool, &op).await;
        run_hook(&hook, &op).await;
        // Free before answering: the caller may start the next one at once.
        free(&slot);
        // The caller is the requester: it sees its own output.
        let mut op = with_exec_output(state, project, Some(action), op).await?;
        op.requested_by = Some(requested_by);
        let mut resp = (StatusCode::OK, Json(&op)).into_response();
        resp.extensions_mut().insert(Started(operation_ref(op)));
        return Ok(resp);
    }
    Ok(reference(op))
}

/// Marks an answer that started an operation, with its reference: what a
/// retry with the same `Idempotency-Key` answers (never the output a
/// finished operation carried).
#[derive(Debug, Clone)]
pub struct Started(pub OperationRef);

/// Whether `user` may read what an operation's command printed: its
/// requester and the project's operators may, viewers may not (operators run
/// commands whose output can hold anything, keys included).
pub fn may_read_output(user: &AuthUser, project: &str, requester: Option<&str>) -> bool {
    // A personal access token reads it only where it could run it: capped
    // below operator, its owner's own commands are not its to read.
    (user.pat.is_none() && requester == Some(user.id.as_str()))
        || user.grants.allows(Permission::ProjectOperate, project)
}

/// The operation as `user` may see it: every list, get and wait answer goes
/// through here (secrets are dropped for everyone when serialized).
pub fn for_caller(
    user: &AuthUser,
    project: &str,
    record: Option<&db::operations::OperationRow>,
    op: Operation,
) -> Operation {
    let requester = record.and_then(|r| r.user_id.as_deref());
    let mut op = if may_read_output(user, project, requester) {
        op
    } else {
        op.without_exec_output()
    };
    op.requested_by = record.map(|r| requested_by(r).as_seen_by(user));
    op
}

/// A finished exec operation carries the command's exit code, stdout and
/// stderr in its metadata (not just where the backend logged them).
pub async fn with_exec_output(
    state: &AppState,
    project: &str,
    action: Option<&str>,
    mut op: Operation,
) -> ApiResult<Operation> {
    if action != Some(EXEC_ACTION) || op.status_code != 200 {
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

fn operation_ref(op: Operation) -> OperationRef {
    let poll_url = format!("/api/v1/operations/{}", op.id);
    OperationRef {
        operation_url: format!("/1.0/operations/{}", op.id),
        wait_url: format!("{poll_url}/wait"),
        poll_url,
        operation_id: op.id,
        status: op.status,
        status_code: op.status_code,
    }
}

/// 202 with the reference, `Location` its poll URL.
pub fn reference_response(body: &OperationRef) -> Response {
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&body.poll_url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub fn reference(op: Operation) -> Response {
    let body = operation_ref(op);
    let mut resp = reference_response(&body);
    resp.extensions_mut().insert(Started(body));
    resp
}
