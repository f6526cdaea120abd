//! `/api/v1/system`: what backend is behind lxgate and what it can do.

use axum::extract::State;

use crate::api::Json;
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::backend::SystemInfo;
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
