//! The OpenAPI document: metadata, tags and the bearer security scheme.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "lxgate",
        description = "A versioned REST API for Linux containers and virtual machines, with accounts, roles and rate limits.\n\nLog in with `POST /api/v1/auth/login`, then click **Authorize** and paste the `access_token`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Log in, refresh and rotate tokens, the caller's own account"),
        (name = "users", description = "Accounts and per-project role grants (admins)"),
        (name = "system", description = "What backend runs behind lxgate"),
        (name = "audit", description = "Who changed what (admins)"),
        (name = "health", description = "Liveness, readiness and metrics (no auth)")
    ),
    components(schemas(crate::error::Problem))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("The `access_token` from `POST /api/v1/auth/login`"))
                    .build(),
            ),
        );
    }
}
