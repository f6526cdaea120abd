//! Every route in one place, and the layers around them.

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, StatusCode, header};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Router, middleware};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use utoipa::OpenApi;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::api::health;
use crate::api::v1::{audit, auth, instances, operations, system, users};
use crate::app::AppState;
use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::telemetry;

/// The API surface with its OpenAPI description.
pub fn api() -> OpenApiRouter<AppState> {
    let auth = OpenApiRouter::new()
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .routes(routes!(auth::change_password))
        .routes(routes!(auth::ws_ticket))
        .routes(routes!(auth::register));
    let users = OpenApiRouter::new()
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(
            users::get_user,
            users::update_user,
            users::delete_user
        ))
        .routes(routes!(
            users::grant_project_role,
            users::revoke_project_role
        ));
    let instances = OpenApiRouter::new()
        .routes(routes!(
            instances::list_instances,
            instances::create_instance
        ))
        .routes(routes!(
            instances::get_instance,
            instances::replace_instance,
            instances::update_instance,
            instances::delete_instance
        ))
        .routes(routes!(instances::rename_instance))
        .routes(routes!(
            instances::get_instance_state,
            instances::change_instance_state
        ))
        .routes(routes!(instances::instance_action));
    let operations = OpenApiRouter::new()
        .routes(routes!(operations::list_operations))
        .routes(routes!(
            operations::get_operation,
            operations::cancel_operation
        ))
        .routes(routes!(operations::wait_operation));
    let v1 = OpenApiRouter::new()
        .nest("/auth", auth)
        .nest("/users", users)
        .nest("/instances", instances)
        .nest("/operations", operations)
        .nest(
            "/audit",
            OpenApiRouter::new().routes(routes!(audit::list_audit)),
        )
        .nest(
            "/system",
            OpenApiRouter::new().routes(routes!(system::info)),
        );
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .nest("/api/v1", v1)
}

/// The OpenAPI document alone (for `lxgate openapi` and the drift test).
pub fn openapi() -> OpenApiDoc {
    api().into_openapi()
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such endpoint; see /docs for the API")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method; see /docs",
    )
}

/// Requests that wait on purpose (long-polls, `?wait=`, WebSockets) get
/// their own bounds instead of `REQUEST_TIMEOUT_SECONDS`.
fn waits_on_purpose(req: &Request) -> bool {
    req.uri().path().ends_with("/wait")
        || req.uri().path().ends_with("/ws")
        || req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("wait=")))
}

async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    // ?wait= is capped at MAX_WAIT_SECS; leave room for the answer itself.
    let limit = if waits_on_purpose(&req) {
        Duration::from_secs(operations::MAX_WAIT_SECS + 30)
    } else {
        limit
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "request_timeout",
            "the request took longer than REQUEST_TIMEOUT_SECONDS",
        )
        .into_response(),
    }
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            telemetry::REQUEST_ID.clone(),
        ])
        .expose_headers([
            telemetry::REQUEST_ID.clone(),
            header::LOCATION,
            header::ETAG,
            header::RETRY_AFTER,
            HeaderName::from_static("www-authenticate"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// The full application: API, docs, fallbacks and layers.
pub fn build(state: AppState) -> Router {
    let (api, openapi) = api().split_for_parts();
    let config = &state.config;
    let mut router = api
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .merge(
            SwaggerUi::new("/docs")
                .url("/openapi.json", openapi)
                .config(
                    utoipa_swagger_ui::Config::default()
                        .persist_authorization(true)
                        .try_it_out_enabled(true),
                ),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            config.request_timeout,
            request_timeout,
        ))
        .layer(CompressionLayer::new())
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]));
    if !config.cors_origins.is_empty() {
        router = router.layer(cors(&config.cors_origins));
    }
    router.layer(middleware::from_fn(telemetry::request_context))
}
