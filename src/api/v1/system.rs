//! `/api/v1/system`: what backend is behind lxgate, whether it and the
//! database answer, and the host's resources.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::Json;
use crate::api::health::{Check, CheckStatus};
use crate::api::problems::Admin403;
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::SystemResources;
use crate::backend::{BackendError, SystemInfo};
use crate::error::{ApiResult, Problem};

/// Backend kind, versions, drivers and feature flags.
///
/// Any authenticated user may read it: dashboards use it to decide what to offer.
#[utoipa::path(get, path = "/info", tag = "system", operation_id = "get_system_info",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Backend facts", body = SystemInfo),
        (status = 503, description = "Backend unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn info(_user: AuthUser, State(state): State<AppState>) -> ApiResult<Json<SystemInfo>> {
    Ok(Json(state.backend.info().await?))
}

/// How long each health check may take; past it the check counts as
/// failed, so the answer comes within about this long whatever hangs.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /api/v1/system/health`: each dependency with its latency.
#[derive(Serialize, ToSchema)]
pub struct SystemHealth {
    /// `ok` when every check passed (answered 200), else `error` (503).
    pub status: CheckStatus,
    /// lxgate's version.
    #[schema(example = "0.1.0")]
    pub version: &'static str,
    /// The backend behind lxgate: `embedded` or `incus`.
    #[schema(example = "embedded")]
    pub backend_kind: &'static str,
    /// A round trip to the database (`SELECT 1`).
    pub database: Check,
    /// The backend answering: Incus's `GET /1.0` (and trusting lxgate), or
    /// the embedded backend's `DATA_DIR`.
    pub backend: Check,
}

/// What a failed backend check says: the kind of failure, not the
/// backend's words (paths, addresses), which go to the log.
fn backend_failure(e: &BackendError) -> &'static str {
    match e {
        BackendError::Unavailable(_) => "backend unreachable",
        BackendError::Timeout(_) => "backend did not answer in time",
        BackendError::Forbidden(_) => "backend refused lxgate's credentials",
        BackendError::TlsFailure(_) => "TLS with the backend failed",
        _ => "backend check failed",
    }
}

/// Deep health: the database and the backend, each with its latency.
///
/// A database round trip and the backend's reachability, run at the same
/// time and bounded (5 s each). Answers
/// 200 when both are ok and 503 with the same body when either is not, so
/// a load balancer or monitor can use the status alone and a dashboard the
/// details. Unlike the public `/health/ready`, it needs a token: any
/// authenticated user may read it (it shows no more than readiness does,
/// plus the latencies and the kind of failure).
#[utoipa::path(get, path = "/health", tag = "system", operation_id = "get_system_health",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The database and the backend answer", body = SystemHealth),
        (status = 503, description = "The database or the backend does not answer (the same body, with `error` on what failed)", body = SystemHealth)))]
pub async fn health(_user: AuthUser, State(state): State<AppState>) -> Response {
    let database = async {
        let t = Instant::now();
        let r = match tokio::time::timeout(CHECK_TIMEOUT, state.db.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "system health: database check failed");
                Err("database unreachable".to_owned())
            }
            Err(_) => Err("database did not answer in time".to_owned()),
        };
        Check::finished(t, r)
    };
    let backend = async {
        let t = Instant::now();
        let r = match tokio::time::timeout(CHECK_TIMEOUT, state.backend.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "system health: backend check failed");
                Err(backend_failure(&e).to_owned())
            }
            Err(_) => Err("backend did not answer in time".to_owned()),
        };
        Check::finished(t, r)
    };
    let (database, backend) = tokio::join!(database, backend);
    let ok = database.status == CheckStatus::Ok && backend.status == CheckStatus::Ok;
    let body = SystemHealth {
        status: if ok {
            CheckStatus::Ok
        } else {
            CheckStatus::Error
        },
        version: env!("CARGO_PKG_VERSION"),
        backend_kind: state.backend.kind(),
        database,
        backend,
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// The host's CPU, memory, disks and storage pools.
///
/// CPU count and model, memory total and used, the disks, and the space
/// of each storage pool, in Incus's `/1.0/resources` field names on
/// both backends (Incus's own objects, trimmed, on the Incus backend; read
/// from /proc, /sys and `statvfs` on the embedded one).
///
/// Admins only: it describes the whole host, across every project.
#[utoipa::path(get, path = "/resources", tag = "system", operation_id = "get_system_resources",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The host's resources", body = SystemResources),
        Admin403,
        (status = 503, description = "Backend unavailable", body = Problem, content_type = "application/problem+json")))]
pub async fn resources(
    user: AuthUser,
    State(state): State<AppState>,
) -> ApiResult<Json<SystemResources>> {
    user.require(Permission::InfraManage, "")?;
    Ok(Json(state.backend.resources().await?))
}
