//! Every route in one place, and the layers around them.

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Router, middleware};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::api::v1::{audit, auth, events, images, instances, operations, system, tokens};
use crate::api::v1::{backups, cluster, exec, instance_files, snapshots};
use crate::api::v1::{networks, profiles, projects, storage, volume_snapshots};
use crate::api::v1::{permissions, teams, users};
use crate::api::{availability, conditional, health, idempotency, ownership, upload};
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
        .routes(routes!(permissions::my_permissions))
        .routes(routes!(permissions::can))
        .routes(routes!(auth::change_password))
        .routes(routes!(auth::ws_ticket))
        .routes(routes!(auth::register))
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::get_token, tokens::delete_token))
        // Tokens and tickets must not stay in a browser's or proxy's cache.
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
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
    let teams = OpenApiRouter::new()
        .routes(routes!(teams::list_teams, teams::create_team))
        .routes(routes!(
            teams::get_team,
            teams::update_team,
            teams::delete_team
        ))
        .routes(routes!(teams::add_team_member, teams::remove_team_member))
        .routes(routes!(teams::grant_team_role, teams::revoke_team_role));
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
        .routes(routes!(instances::instance_action))
        .routes(routes!(exec::exec_instance))
        .routes(routes!(exec::exec_ws))
        .routes(routes!(exec::console_ws));
    let operations = OpenApiRouter::new()
        .routes(routes!(operations::list_operations))
        .routes(routes!(events::operations_ws))
        .routes(routes!(
            operations::get_operation,
            operations::cancel_operation
        ))
        .routes(routes!(operations::wait_operation));
    let images = OpenApiRouter::new()
        .routes(routes!(images::list_images, images::create_image))
        .routes(routes!(images::get_image, images::delete_image))
        .routes(routes!(images::export_image))
        .routes(routes!(
            images::list_image_aliases,
            images::create_image_alias
        ))
        .routes(routes!(images::get_image_alias, images::delete_image_alias))
        // Uploads get a body limit of their own (streamed to disk, never buffered).
        .merge(
            OpenApiRouter::new()
                .routes(routes!(images::import_image))
                .layer(DefaultBodyLimit::max(upload::IMPORT_MAX_BYTES)),
        );
    // Instance snapshots, backups, logs, console log and files. The file push
    // counts its streamed body itself (instance_files::MAX_PUSH_BYTES).
    let snapshots = OpenApiRouter::new()
        .routes(routes!(
            snapshots::list_snapshots,
            snapshots::create_snapshot
        ))
        .routes(routes!(snapshots::get_snapshot, snapshots::delete_snapshot))
        .routes(routes!(snapshots::restore_snapshot));
    let backups = OpenApiRouter::new()
        .routes(routes!(backups::list_backups, backups::create_backup))
        .routes(routes!(backups::get_backup, backups::delete_backup))
        .routes(routes!(backups::export_backup));
    let instance_files = OpenApiRouter::new()
        .routes(routes!(instance_files::list_instance_logs))
        .routes(routes!(instance_files::get_instance_log))
        .routes(routes!(instance_files::get_console_log))
        .routes(routes!(
            instance_files::pull_file,
            instance_files::push_file
        ));
    // Storage pools and volumes, networks, projects; attaching volumes and
    // NICs to instances.
    let storage = OpenApiRouter::new()
        .routes(routes!(
            storage::list_storage_pools,
            storage::create_storage_pool
        ))
        .routes(routes!(
            storage::get_storage_pool,
            storage::replace_storage_pool,
            storage::update_storage_pool,
            storage::delete_storage_pool
        ))
        .routes(routes!(storage::list_volumes, storage::create_volume))
        .routes(routes!(
            storage::get_volume,
            storage::update_volume,
            storage::delete_volume
        ))
        .routes(routes!(storage::resize_volume))
        .routes(routes!(
            volume_snapshots::list_volume_snapshots,
            volume_snapshots::create_volume_snapshot
        ))
        .routes(routes!(
            volume_snapshots::get_volume_snapshot,
            volume_snapshots::delete_volume_snapshot
        ))
        .routes(routes!(volume_snapshots::restore_volume_snapshot));
    let instance_volumes = OpenApiRouter::new()
        .routes(routes!(storage::attach_volume))
        .routes(routes!(storage::detach_volume));
    let networks = OpenApiRouter::new()
        .routes(routes!(networks::list_networks, networks::create_network))
        .routes(routes!(
            networks::get_network,
            networks::replace_network,
            networks::update_network,
            networks::delete_network
        ))
        .routes(routes!(networks::get_network_state))
        .routes(routes!(networks::list_network_leases));
    let instance_nics = OpenApiRouter::new()
        .routes(routes!(networks::attach_nic))
        .routes(routes!(networks::detach_nic));
    let projects = OpenApiRouter::new()
        .routes(routes!(projects::list_projects, projects::create_project))
        .routes(routes!(
            projects::get_project,
            projects::replace_project,
            projects::update_project,
            projects::delete_project
        ))
        .routes(routes!(projects::get_project_state))
        .routes(routes!(projects::restrict_project));
    let profiles = OpenApiRouter::new()
        .routes(routes!(profiles::list_profiles, profiles::create_profile))
        .routes(routes!(
            profiles::get_profile,
            profiles::replace_profile,
            profiles::update_profile,
            profiles::delete_profile
        ))
        .routes(routes!(profiles::rename_profile));
    // The servers behind lxgate; evacuating one is for admins.
    let cluster = OpenApiRouter::new()
        .routes(routes!(cluster::list_members))
        .routes(routes!(cluster::get_member))
        .routes(routes!(cluster::evacuate_member))
        .routes(routes!(cluster::restore_member));
    let v1 = OpenApiRouter::new()
        .nest("/auth", auth)
        .nest("/users", users)
        .nest("/teams", teams)
        .nest("/instances", instances)
        .nest("/instances/{name}/volumes", instance_volumes)
        .nest("/instances/{name}/nics", instance_nics)
        .nest("/storage", storage)
        .nest("/networks", networks)
        .nest("/projects", projects)
        .nest("/profiles", profiles)
        .nest("/instances/{name}/snapshots", snapshots)
        .nest("/instances/{name}/backups", backups)
        .nest("/instances/{name}", instance_files)
        .nest("/operations", operations)
        .nest("/images", images)
        .nest("/cluster", cluster)
        .nest(
            "/events",
            OpenApiRouter::new().routes(routes!(events::events_ws)),
        )
        .nest(
            "/audit",
            OpenApiRouter::new().routes(routes!(audit::list_audit)),
        )
        .nest(
            "/system",
            OpenApiRouter::new()
                .routes(routes!(system::info))
                .routes(routes!(system::health))
                .routes(routes!(system::resources)),
        );
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .nest("/api/v1", v1)
}

/// The OpenAPI document alone (for `lxgate openapi` and the drift test).
pub fn openapi() -> OpenApiDoc {
    crate::openapi::complete(api().into_openapi())
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
        // Backup downloads: the first byte can take a while on a busy backend.
        || req.uri().path().ends_with("/export")
        || req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("wait=")))
}

/// Uploads stream for as long as the client sends (up to their body limit);
/// a fixed deadline would cut large images short.
fn uploads(req: &Request) -> bool {
    req.method() == Method::POST && req.uri().path().ends_with("/images/import")
        // File push into an instance (bounded by its own size and idle limits).
        || req.method() == Method::POST && req.uri().path().ends_with("/files")
}

async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    if uploads(&req) {
        return next.run(req).await;
    }
    // ?wait= is capped at MAX_WAIT_SECS; leave room for the answer itself.
    let limit = if waits_on_purpose(&req) {
        Duration::from_secs(crate::api::operation::MAX_WAIT_SECS + 30)
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
            header::IF_NONE_MATCH,
            HeaderName::from_static(idempotency::HEADER),
            telemetry::REQUEST_ID.clone(),
        ])
        .expose_headers([
            telemetry::REQUEST_ID.clone(),
            header::LOCATION,
            header::ETAG,
            header::RETRY_AFTER,
            HeaderName::from_static("www-authenticate"),
            HeaderName::from_static("idempotent-replayed"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// The full application: API, docs, fallbacks and layers.
pub fn build(state: AppState) -> Router {
    let (api, openapi) = api().split_for_parts();
    let openapi = crate::openapi::complete(openapi);
    let config = &state.config;
    let mut router = api
        // Innermost: it tags the answer the caller would get, as it is.
        .route_layer(middleware::from_fn(conditional::layer))
        // Inside the audit layer (a refusal is audited too) and the
        // idempotency layer (which checks replays itself).
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ownership::guard,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::record))
        // Outside the audit layer: a keyed request runs (and is audited) on
        // a task of its own that finishes even if the client goes away; a
        // replay does nothing and is not audited again.
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), idempotency::honoured_routes(&openapi)),
            idempotency::layer,
        ))
        // Outermost: while the user database is away nothing else can work.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            availability::gate,
        ))
        .merge(
            SwaggerUi::new("/docs")
                .url("/openapi.json", openapi)
                .config(
                    utoipa_swagger_ui::Config::default()
                        .persist_authorization(true)
                        .try_it_out_enabled(true),
                ),
        )
        .route("/terminal", axum::routing::get(terminal_page))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            config.request_timeout,
            request_timeout,
        ))
        // Binary downloads (backup tarballs, files) pass as they are: mostly
        // compressed already, and they keep their Content-Length.
        .layer(CompressionLayer::new().compress_when(
            tower_http::compression::predicate::Predicate::and(
                tower_http::compression::predicate::DefaultPredicate::new(),
                tower_http::compression::predicate::NotForContentType::const_new(
                    "application/octet-stream",
                ),
            ),
        ))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]));
    if !config.cors_origins.is_empty() {
        router = router.layer(cors(&config.cors_origins));
    }
    // Outermost, so every answer carries them: errors, fallbacks and timeouts too.
    if config.tls_cert_path.is_some() {
        // Only when lxgate itself speaks TLS: behind a plain-HTTP listener the
        // header would be ignored, and the proxy in front decides.
        router = router.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ));
    }
    router
        .layer(middleware::from_fn(telemetry::request_context))
        // A browser must not guess a type: a file pulled from an instance or
        // a log served as text could otherwise run as HTML or script.
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
}

/// A browser terminal for `exec/ws` and `console/ws` (static; it reads the
/// token Swagger UI keeps and trades it for a WebSocket ticket). Not framable,
/// so no other site can overlay it and catch keystrokes.
async fn terminal_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("../static/terminal.html"),
    )
}
