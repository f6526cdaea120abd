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
        (name = "instances", description = "Containers and virtual machines"),
        (name = "snapshots", description = "Point-in-time copies of an instance: take, list, restore, delete"),
        (name = "backups", description = "Instance backups kept on the server, and their download"),
        (name = "operations", description = "Background work: poll, long-poll, cancel"),
        (name = "storage", description = "Storage pools (admins) and custom volumes; attaching volumes to instances"),
        (name = "networks", description = "Networks (admins), their state and leases; attaching instances to networks"),
        (name = "projects", description = "Projects, their limits and usage"),
        (name = "images", description = "The image store: list, copy from image servers, upload, aliases"),
        (name = "events", description = "The event stream over WebSocket"),
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

#[cfg(test)]
mod tests {
    /// The published contract changes only on purpose: regenerate `openapi.json`
    /// with `UPDATE_OPENAPI=1 cargo test openapi` (or `make openapi`) and commit it.
    #[test]
    fn openapi_json_matches_the_committed_contract() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let current = crate::router::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
            + "\n";
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &current).expect("write openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == current,
            "the API changed but openapi.json did not: review the change, then run `make openapi` and commit openapi.json"
        );
    }

    #[test]
    fn every_operation_has_an_id_a_tag_and_error_responses() {
        let doc = serde_json::to_value(crate::router::openapi()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let at = format!("{method} {path}");
                assert!(op["operationId"].is_string(), "{at}: no operationId");
                assert!(
                    op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                    "{at}: no tag"
                );
                // An empty requirement among the alternatives makes the
                // credentials optional (logout): then no 401 is owed.
                let secured = op["security"].as_array().is_some_and(|alts| {
                    !alts
                        .iter()
                        .any(|a| a.as_object().is_some_and(|o| o.is_empty()))
                });
                if secured {
                    assert!(
                        op["responses"].get("401").is_some()
                            || op["responses"].get("403").is_some(),
                        "{at}: secured but documents neither 401 nor 403"
                    );
                }
            }
        }
    }
}
