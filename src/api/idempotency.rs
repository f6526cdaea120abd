//! `Idempotency-Key` on the POSTs that start an operation: the same key with
//! the same request within 24 h answers the first answer's operation
//! reference (202) instead of starting the work again, on any replica; the
//! same key with another request is 422; while the first still runs, 409.
//!
//! Which routes honour it is read from the published contract (the routes
//! that document the header), so the two cannot drift. Keys belong to the
//! user that sent them. A request that fails (any answer but 2xx) forgets
//! its key, so a retry does the work. The request runs on a task of its
//! own (with the audit layer inside it): a client that goes away does not
//! leave work done but unrecorded.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use utoipa::openapi::RefOr;

use crate::api::operation::{Started, reference_response};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::auth::tokens::now_secs;
use crate::db::idempotency::{self, Claim};
use crate::error::ApiError;

pub const HEADER: &str = "idempotency-key";
/// Set on an answer that repeats an earlier one.
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
use crate::openapi::IDEMPOTENCY_KEY_MAX_LEN as MAX_KEY_LEN;

/// The "/api/v1/..." templates of the POSTs that document the header in
/// `doc` (the finished contract): where the header is honoured.
pub fn honoured_routes(doc: &utoipa::openapi::OpenApi) -> Arc<HashSet<String>> {
    Arc::new(
        doc.paths
            .paths
            .iter()
            .filter(|(_, item)| {
                item.post.as_ref().is_some_and(|op| {
                    op.parameters
                        .iter()
                        .flatten()
                        .any(|p| matches!(p, RefOr::T(p) if p.name.eq_ignore_ascii_case(HEADER)))
                })
            })
            .map(|(path, _)| path.clone())
            .collect(),
    )
}

fn check_key(v: &HeaderValue) -> Result<String, ApiError> {
    let key = v.to_str().unwrap_or_default();
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "invalid_header",
            format!(
                "Idempotency-Key must be 1-{MAX_KEY_LEN} visible ASCII characters (a UUID will do)"
            ),
        ));
    }
    Ok(key.to_owned())
}

/// The request as a key binds it: the credential it came with (a login's
/// tokens, or one personal access token), method, path, query (sorted,
/// without `wait`, which only says how long to wait for the same work),
/// body type and body.
fn request_hash(req: &axum::http::request::Parts, user: &AuthUser, body: &[u8]) -> String {
    let mut query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri.query().unwrap_or_default().as_bytes())
            .filter(|(k, _)| k != "wait")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    query.sort();
    let mut h = Sha256::new();
    h.update(user.pat.as_ref().map_or("login", |p| p.id.as_str()));
    h.update(b"\n");
    h.update(req.method.as_str());
    h.update(b"\n");
    h.update(req.uri.path());
    h.update(b"\n");
    for (k, v) in &query {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"&");
    }
    h.update(b"\n");
    h.update(
        req.headers
            .get(header::CONTENT_TYPE)
            .map_or(&b""[..], HeaderValue::as_bytes),
    );
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

pub async fn layer(
    State((state, honoured)): State<(AppState, Arc<HashSet<String>>)>,
    req: Request,
    next: Next,
) -> Response {
    let Some(value) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    if req.method() != axum::http::Method::POST {
        return next.run(req).await;
    }
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    if !honoured.contains(&template) {
        return ApiError::bad_request(
            "invalid_header",
            "Idempotency-Key is honoured on the POSTs that start an operation (see /docs); leave it out here",
        )
        .into_response();
    }
    match run(&state, value, req, next).await {
        Ok(resp) | Err(resp) => resp,
    }
}

/// What a keyed route needs, for a replay to answer only whom may still do
/// it: admins move cluster members and images, operators the rest.
fn replay_permission(path: &str) -> crate::auth::Permission {
    use crate::auth::Permission;
    if path.starts_with("/api/v1/cluster/") {
        Permission::InfraManage
    } else if path.starts_with("/api/v1/images") {
        Permission::ImageManage
    } else {
        Permission::ProjectOperate
    }
}

async fn run(
    state: &AppState,
    value: HeaderValue,
    req: Request,
    next: Next,
) -> Result<Response, Response> {
    let key = check_key(&value).map_err(IntoResponse::into_response)?;
    let (mut parts, body) = req.into_parts();
    // Who: keys are per user (the handler reuses this authentication).
    let user = AuthUser::resolve(&mut parts, state, false)
        .await
        .map_err(IntoResponse::into_response)?;
    let bytes = axum::body::to_bytes(body, state.config.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the body is larger than lxgate takes",
            )
            .into_response()
        })?;
    let hash = request_hash(&parts, &user, &bytes);
    let pool = &state.db.pool;
    let claim = idempotency::claim(pool, &user.id, &key, &hash, now_secs())
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    match claim {
        Claim::Fresh => {}
        Claim::Replay {
            status,
            location,
            body,
        } => {
            // What the first answer showed is shown again only to whom may
            // still do what it did, to what they may still reach.
            let project = crate::api::ownership::query_project(&parts)
                .map_err(IntoResponse::into_response)?;
            user.require(replay_permission(parts.uri.path()), project.as_str())
                .map_err(IntoResponse::into_response)?;
            // (A rename moved the instance: the name in the path is no
            // longer what it made, and may be somebody else's now.)
            if !parts.uri.path().ends_with("/rename") {
                crate::api::ownership::check_request(state, &mut parts, &user)
                    .await
                    .map_err(IntoResponse::into_response)?;
            }
            return Ok(replay(status, location, body));
        }
        Claim::InFlight => {
            return Err(ApiError::conflict(
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still running; retry when it has answered",
            )
            .into_response());
        }
        Claim::Mismatch => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with another request in the last 24 hours; use a new key for a new request",
            )
            .into_response());
        }
    }
    // On a task of its own: a client that goes away, or the request
    // timeout, must not leave the key held with the work done (a retry
    // after the lock passed would do it twice).
    let pool = pool.clone();
    let task = tokio::spawn(crate::telemetry::in_this_request(async move {
        use futures::FutureExt;
        let run =
            std::panic::AssertUnwindSafe(next.run(Request::from_parts(parts, Body::from(bytes))))
                .catch_unwind()
                .await;
        let resp = match run {
            Ok(resp) => resp,
            // The work may have started: say so, and keep the key from
            // being reused for a while (it stays locked until it passes).
            Err(_) => {
                tracing::error!(
                    "a request with an Idempotency-Key panicked; its key stays locked for 10 minutes"
                );
                return ApiError::internal(anyhow::anyhow!("the request failed")).into_response();
            }
        };
        let (resp, stored) = answer_to_store(resp).await;
        let done = match &stored {
            Some((status, location, body)) => {
                idempotency::complete(&pool, &user.id, &key, *status, location.as_deref(), body)
                    .await
            }
            None => idempotency::release(&pool, &user.id, &key).await,
        };
        if let Err(e) = done {
            // The work is done; only its retry would not be recognised.
            tracing::warn!(error = %e, "recording an Idempotency-Key's answer failed");
        }
        resp
    }));
    task.await.map_err(|e| {
        ApiError::internal(anyhow::anyhow!(
            "a request with an Idempotency-Key failed: {e}"
        ))
        .into_response()
    })
}

/// The largest answer kept as it is (one that started no operation: a
/// resource the backend made at once).
const MAX_STORED_BODY: u64 = 64 * 1024;

/// What a retry will answer: a started operation's reference (202, also
/// when the first request waited for it with `?wait=`), or a small
/// successful answer as it was; nothing for a failure.
async fn answer_to_store(resp: Response) -> (Response, Option<(u16, Option<String>, String)>) {
    if !resp.status().is_success() {
        return (resp, None);
    }
    if let Some(Started(r)) = resp.extensions().get::<Started>() {
        let stored = serde_json::to_string(r)
            .ok()
            .map(|body| (202, Some(r.poll_url.clone()), body));
        return (resp, stored);
    }
    use axum::body::HttpBody as _;
    let small = resp
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MAX_STORED_BODY);
    if !small {
        return (resp, None);
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_STORED_BODY as usize).await else {
        return (
            ApiError::internal(anyhow::anyhow!("reading an answer to keep it")).into_response(),
            None,
        );
    };
    let location = parts
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let stored = String::from_utf8(bytes.to_vec())
        .ok()
        .map(|text| (parts.status.as_u16(), location, text));
    (Response::from_parts(parts, Body::from(bytes)), stored)
}

/// The stored answer: the operation reference, marked as a repeat.
fn replay(status: u16, location: Option<String>, body: String) -> Response {
    let mut resp = match serde_json::from_str(&body) {
        Ok(r) if status == 202 => reference_response(&r),
        _ => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
    };
    if let Some(v) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    resp
}
