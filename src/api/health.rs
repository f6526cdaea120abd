//! Unversioned probes: liveness, readiness and Prometheus metrics.

use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::Json;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, Problem};

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
    #[schema(example = "0.1.0")]
    pub version: &'static str,
}

/// Liveness: answers while the process serves HTTP. Needs no auth and calls nothing.
#[utoipa::path(get, path = "/health", tag = "health", operation_id = "get_health",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// How a check (or all of them) came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    Error,
}

#[derive(Serialize, ToSchema)]
pub struct Check {
    pub status: CheckStatus,
    /// How long the check took, in milliseconds.
    #[schema(minimum = 0, example = 1.25)]
    pub latency_ms: f64,
    /// Why the check failed (no internals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Check {
    /// A check that ran from `started` until now; `Err` holds what the
    /// caller may be told.
    pub fn finished(started: Instant, r: Result<(), String>) -> Self {
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        match r {
            Ok(()) => Check {
                status: CheckStatus::Ok,
                latency_ms,
                error: None,
            },
            Err(why) => Check {
                status: CheckStatus::Error,
                latency_ms,
                error: Some(why),
            },
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub database: Check,
    pub backend: Check,
}

fn check<E: std::fmt::Display>(started: Instant, r: Result<(), E>, what: &str) -> Check {
    Check::finished(
        started,
        r.map_err(|e| {
            tracing::warn!(error = %e, "readiness: {what} check failed");
            format!("{what} unreachable")
        }),
    )
}

/// Readiness: the database and the backend answer. 503 when either does not.
#[utoipa::path(get, path = "/health/ready", tag = "health", operation_id = "get_readiness",
    responses(
        (status = 200, description = "Ready to serve", body = Readiness),
        (status = 503, description = "A dependency is down", body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let t = Instant::now();
    let database = check(t, state.db.ping().await, "database");
    let t = Instant::now();
    let backend = check(t, state.backend.ping().await, "backend");
    let ok = database.status == CheckStatus::Ok && backend.status == CheckStatus::Ok;
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Readiness {
            status: if ok { "ready" } else { "not_ready" },
            database,
            backend,
        }),
    )
}

/// Prometheus metrics in the text exposition format. With `METRICS_TOKEN`
/// set, only for `Authorization: Bearer <METRICS_TOKEN>`.
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "get_metrics",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "METRICS_TOKEN is set and the request does not carry it", body = Problem, content_type = "application/problem+json")))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(expected) = &state.config.metrics_token
        && !bearer_matches(&headers, expected.expose())
    {
        return Err(ApiError::unauthorized(
            "invalid_token",
            "/metrics needs `Authorization: Bearer <METRICS_TOKEN>`",
        ));
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response())
}

/// Compared in constant time so response timing does not reveal how much
/// of a guess was right.
fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}
