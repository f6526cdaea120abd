//! The OpenAPI document: metadata, tags and the bearer security scheme.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

mod links;
mod text;

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
        (name = "teams", description = "Groups of users granted roles in projects as one (admins): a member's role in a project is the highest of its own and its teams'"),
        (name = "instances", description = "Containers and virtual machines"),
        (name = "snapshots", description = "Point-in-time copies of an instance: take, list, restore, delete"),
        (name = "backups", description = "Instance backups kept on the server, and their download"),
        (name = "operations", description = "Background work: poll, long-poll, cancel"),
        (name = "storage", description = "Storage pools (admins) and custom volumes; attaching volumes to instances"),
        (name = "networks", description = "Networks (admins), their state and leases; attaching instances to networks"),
        (name = "projects", description = "Projects, their limits and usage"),
        (name = "profiles", description = "Profiles: config and devices instances of a project take, in the order they list them, under their own. Operators manage them, held to the instance policy. On the embedded backend lxgate keeps them and applies them when an instance is created and each time it starts: a change reaches a running instance at its next start"),
        (name = "images", description = "The image store: list, copy from image servers, upload, aliases"),
        (name = "events", description = "The event stream over WebSocket"),
        (name = "system", description = "What backend runs behind lxgate"),
        (name = "cluster", description = "The servers behind lxgate: an Incus cluster's members and their status, evacuate and restore (admins)"),
        (name = "audit", description = "Who changed what (admins)"),
        (name = "health", description = "Liveness, readiness and metrics (no auth)")
    ),
    components(schemas(
        crate::error::Problem,
        crate::names::InstanceName,
        crate::names::ProjectName,
        crate::names::SnapshotName,
        crate::names::BackupName,
        crate::names::PoolName,
        crate::names::VolumeName,
        crate::names::NetworkName,
        crate::names::ProfileName,
        crate::api::schemas::NewProfileName,
        crate::names::DeviceName,
        crate::names::ImageFingerprint,
        crate::names::ImageAliasName,
        crate::names::LogFileName,
        crate::names::MemberName,
        crate::auth::Username,
        crate::names::TeamName,
        crate::api::schemas::ProjectParam,
        crate::api::schemas::ByteSize,
        crate::api::schemas::AbsolutePath,
        crate::api::schemas::MountPath,
        crate::api::schemas::StorageVolumeCreateSchema,
        crate::backend::types::VolumeSource,
        crate::backend::types::schema::VolumeContentType,
        crate::api::schemas::FileMode,
        crate::api::schemas::ExecArgument,
        crate::api::schemas::ExecEnvironment,
        crate::api::schemas::ExecCommand,
        crate::api::schemas::WaitSeconds,
        crate::backend::types::schema::DeviceOptions,
        crate::api::schemas::InstanceSourceSchema,
        crate::api::schemas::InstanceSourceByAlias,
        crate::api::schemas::InstanceSourceByFingerprint,
        crate::api::schemas::InstanceSourceRemoteByAlias,
        crate::api::schemas::InstanceSourceRemoteByFingerprint,
        crate::api::schemas::InstanceSourceCopy,
        crate::api::schemas::InstanceSourceNone,
        crate::api::schemas::TokenProjectsSchema,
        crate::api::schemas::ImageCopySourceSchema,
        crate::api::schemas::ImageCopySourceByAlias,
        crate::api::schemas::ImageCopySourceByFingerprint,
        crate::api::schemas::ImageCreateSchema,
        crate::backend::types::ImagePublish,
        crate::api::schemas::ImagePublishSourceSchema,
        crate::backend::types::ImageCopy,
        crate::backend::types::schema::ImageServerProtocol,
        crate::backend::types::schema::InstanceType,
        crate::backend::types::schema::InstanceSourceType,
        crate::backend::types::schema::InstanceAction,
        crate::backend::types::schema::EvacuationMode
    ))
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

/// The document with every route in it (`router::api()`'s) completed: see
/// [`CommonResponses`], [`text`] and [`links`]. Both `/openapi.json` and `lxgate openapi` are this.
pub fn complete(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    CommonResponses.modify(&mut doc);
    text::forbid_nul(&mut doc);
    links::add(&mut doc);
    doc
}

/// The answers every operation of a kind can give, documented where its
/// handler's annotation does not: the extractors' and the auth layer's
/// refusals, and the 501s of what one of the backends does not do. Added
/// after the handlers' own responses, never replacing one. (Applied to the
/// finished document: `ApiDoc`'s own modifiers run before the routes are in.)
struct CommonResponses;

/// Operations that answer 501 `not_supported` when the backend behind
/// lxgate does not do what was asked, and when.
const NOT_SUPPORTED: &[(&str, &str)] = &[
    ("list_instances", "`filter` on the embedded backend"),
    ("list_images", "`filter` on the embedded backend"),
    (
        "create_instance",
        "`devices` on the embedded backend (attach volumes and NICs with their own endpoints, or copy an instance that has them), a remote image with protocol `incus` on the embedded backend, or an instance type whose driver this host lacks",
    ),
    (
        "replace_instance",
        "`devices` on the embedded backend (attach volumes and NICs with their own endpoints)",
    ),
    (
        "update_instance",
        "`devices` on the embedded backend (attach volumes and NICs with their own endpoints)",
    ),
    (
        "instance_action",
        "an instance type whose driver this host lacks",
    ),
    (
        "change_instance_state",
        "an instance type whose driver this host lacks",
    ),
    (
        "exec_instance",
        "a virtual machine on the embedded backend (no guest agent); `timeout` on the Incus backend (Incus cannot stop a recorded command)",
    ),
    (
        "pull_file",
        "a virtual machine on the embedded backend (no guest agent)",
    ),
    (
        "push_file",
        "a virtual machine on the embedded backend (no guest agent)",
    ),
    ("create_snapshot", "`stateful` on the embedded backend"),
    ("restore_snapshot", "`stateful` on the embedded backend"),
    (
        "create_backup",
        "`optimized_storage`, or a compression algorithm whose tool the host lacks (either backend)",
    ),
    (
        "create_image",
        "a copy with protocol `incus` on the embedded backend",
    ),
    (
        "create_network",
        "a network type other than `bridge`, masquerading, IPv6 DHCP, or DHCP without dnsmasq, on the embedded backend",
    ),
    (
        "replace_network",
        "masquerading, IPv6 DHCP, or DHCP without dnsmasq, on the embedded backend",
    ),
    (
        "update_network",
        "masquerading, IPv6 DHCP, or DHCP without dnsmasq, on the embedded backend",
    ),
    (
        "attach_nic",
        "a NIC on an unmanaged network on the embedded backend",
    ),
    (
        "create_storage_pool",
        "a driver other than `dir` on the embedded backend; on Incus, a driver the server lacks or whose tools are not installed",
    ),
    (
        "create_volume",
        "a size on a filesystem volume of the embedded backend's `dir` pools",
    ),
    (
        "update_volume",
        "a size on a filesystem volume of the embedded backend's `dir` pools",
    ),
    (
        "resize_volume",
        "a filesystem volume of the embedded backend's `dir` pools",
    ),
    (
        "create_profile",
        "devices other than the root disk on the embedded backend (attach volumes and NICs to instances with their own endpoints)",
    ),
    (
        "replace_profile",
        "devices other than the root disk on the embedded backend (attach volumes and NICs to instances with their own endpoints)",
    ),
    (
        "update_profile",
        "devices other than the root disk on the embedded backend (attach volumes and NICs to instances with their own endpoints)",
    ),
    (
        "attach_volume",
        "a filesystem volume for a virtual machine on the embedded backend",
    ),
];

fn problem(description: String) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
        .into()
}

impl CommonResponses {
    fn complete(op: &mut Operation, write: bool) {
        let secured = op.security.as_ref().is_some_and(|alts| {
            !alts.iter().any(|a| {
                serde_json::to_value(a).is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
            })
        });
        let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
        let project_query = op.parameters.iter().flatten().any(|p| {
            serde_json::to_value(p).is_ok_and(|v| v["in"] == "query" && v["name"] == "project")
        });
        // An optional body is left out, never sent as JSON `null` (which the
        // extractors refuse): `Option<T>` bodies are documented as `T`.
        if let Some(RefOr::T(body)) = &mut op.request_body {
            for content in body.content.values_mut() {
                if let RefOr::T(content) = content
                    && let Some(schema) = content.schema.take()
                {
                    content.schema = Some(without_null_alternative(schema));
                }
            }
        }
        let body_types: Vec<String> = match &op.request_body {
            Some(RefOr::T(body)) => body.content.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let json_body = body_types.iter().any(|t| t == "application/json");
        let id = op.operation_id.clone().unwrap_or_default();
        // A change to what the backend holds can meet its current state.
        let backend_write = write
            && op.tags.iter().flatten().any(|t| {
                matches!(
                    t.as_str(),
                    "instances"
                        | "images"
                        | "backups"
                        | "snapshots"
                        | "networks"
                        | "storage"
                        | "projects"
                        | "profiles"
                        | "cluster"
                )
            });
        let responses = &mut op.responses.responses;
        let mut add = |status: &str, description: String| {
            responses
                .entry(status.to_owned())
                .or_insert_with(|| problem(description));
        };
        if secured {
            add(
                "401",
                "No access token, or one that is invalid, expired or revoked".into(),
            );
        }
        if secured && write {
            add(
                "403",
                "The request came with a read-only personal access token (`read_only_token`)"
                    .into(),
            );
        }
        if has_params {
            add(
                "400",
                "A path or query parameter is invalid (`invalid_name`, `invalid_query`)".into(),
            );
        }
        if json_body {
            add("400", "The body is not JSON (`invalid_json`)".into());
            add("415", "The body is not sent as `application/json`".into());
            add(
                "422",
                "The body does not fit the request schema, or a value in it is refused (`validation_failed`; `field` names it)".into(),
            );
        }
        if !body_types.is_empty() {
            add("413", "The body is larger than lxgate takes".into());
        }
        if project_query {
            add(
                "404",
                "No such project (`?project=`), or no such resource in it".into(),
            );
        }
        if backend_write {
            add(
                "409",
                "The change conflicts with the current state of what it is about: in use, running, busy with another operation, or already there (`conflict`)".into(),
            );
        }
        if let Some((_, when)) = NOT_SUPPORTED.iter().find(|(op_id, _)| *op_id == id) {
            add(
                "501",
                format!("Not supported by the backend behind lxgate (`not_supported`): {when}"),
            );
        }
    }
}

/// `oneOf: [X, {type: null}]` -> `X`.
fn without_null_alternative(
    schema: RefOr<utoipa::openapi::Schema>,
) -> RefOr<utoipa::openapi::Schema> {
    if let RefOr::T(utoipa::openapi::Schema::OneOf(one_of)) = &schema {
        let mut rest = one_of.items.iter().filter(|item| {
            !serde_json::to_value(item).is_ok_and(|v| v == serde_json::json!({"type": "null"}))
        });
        if let (Some(only), None) = (rest.next(), rest.next())
            && one_of.items.len() == 2
        {
            return only.clone();
        }
    }
    schema
}

/// The longest `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_MAX_LEN: usize = 255;

/// A POST that starts an operation (it can answer 202) with a JSON body or
/// none takes `Idempotency-Key` (`api::idempotency`; an upload's body is
/// not buffered to compare it).
fn idempotent(op: &mut Operation) {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::{ObjectBuilder, Required, Type};
    let starts = op.responses.responses.contains_key("202");
    let multipart = matches!(&op.request_body, Some(RefOr::T(b)) if b.content.keys().any(|t| t.starts_with("multipart/")));
    if !starts || multipart {
        return;
    }
    let param = ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Makes a retry safe: the same key with the same request within 24 h answers the first request's operation reference (202, `Idempotent-Replayed: true`) instead of starting the work again. Per user; any replica.",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(IDEMPOTENCY_KEY_MAX_LEN))
                .pattern(Some("^[!-~]+$"))
                .examples([serde_json::json!("6f1c0a52-7c0e-4d7b-9f8e-0c6b1b2d9a10")]),
        ))
        .build();
    op.parameters
        .get_or_insert_with(Vec::new)
        .push(RefOr::T(param));
    for (status, text) in [
        (
            "409",
            "a request with the same `Idempotency-Key` is still running (`idempotency_key_in_use`)",
        ),
        (
            "422",
            "the `Idempotency-Key` was used with another request in the last 24 h (`idempotency_key_reused`)",
        ),
        (
            "400",
            "the `Idempotency-Key` is not 1-255 visible ASCII characters (`invalid_header`)",
        ),
        (
            "413",
            "with an `Idempotency-Key`, the body is larger than lxgate takes",
        ),
    ] {
        match op.responses.responses.get_mut(status) {
            Some(RefOr::T(r)) => r.description = format!("{}; or {text}", r.description),
            Some(RefOr::Ref(_)) => {}
            None => {
                let mut first = text.to_owned();
                first[..1].make_ascii_uppercase();
                op.responses
                    .responses
                    .insert(status.to_owned(), problem(first));
            }
        }
    }
}

/// A request that can make the host write what it holds (instances,
/// images, backups, snapshots, volumes, uploads) can find the disk full.
fn out_of_room(op: &mut Operation, grows: bool) {
    let holds_data = op.tags.iter().flatten().any(|t| {
        matches!(
            t.as_str(),
            "instances" | "images" | "backups" | "snapshots" | "storage"
        )
    });
    if grows && holds_data {
        op.responses
            .responses
            .entry("507".to_owned())
            .or_insert_with(|| {
                problem(
                    "The host has no room left for what was being written (`insufficient_storage`); nothing half-written is kept".into(),
                )
            });
    }
}

/// A GET that answers JSON answers `ETag` and takes `If-None-Match`
/// (`api::conditional`).
fn conditional(op: &mut Operation) {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::{ObjectBuilder, Required, Type};
    let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200") else {
        return;
    };
    if !ok.content.contains_key("application/json") {
        return;
    }
    let tag = || {
        HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .description(Some(
                "The answer's version: changes whenever its body does. Send it back in `If-None-Match`; where the resource has a backend version, `If-Match` on a change compares that part (before the `.`).",
            ))
            .build()
    };
    ok.headers
        .entry("etag".to_owned())
        .or_insert_with(|| tag().into());
    let not_modified = ResponseBuilder::new()
        .description("Not modified: `If-None-Match` named the current `ETag` (no body)")
        .header("etag", tag())
        .build();
    op.responses
        .responses
        .insert("304".to_owned(), not_modified.into());
    let param = ParameterBuilder::new()
        .name("If-None-Match")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "An `ETag` this call answered before: 304 with no body while it is still current.",
        ))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build();
    op.parameters
        .get_or_insert_with(Vec::new)
        .push(RefOr::T(param));
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if let Some(op) = &mut item.post {
                idempotent(op);
            }
            let api = path.starts_with("/api/");
            if api && let Some(op) = &mut item.get {
                conditional(op);
            }
            for (op, write, grows) in [
                (&mut item.get, false, false),
                (&mut item.put, true, true),
                (&mut item.post, true, true),
                (&mut item.delete, true, false),
                (&mut item.patch, true, true),
            ] {
                if let Some(op) = op {
                    Self::complete(op, write);
                    if api {
                        out_of_room(op, grows);
                    }
                    if api {
                        // Every API call needs the user database, and most
                        // the backend too.
                        op.responses
                            .responses
                            .entry("503".to_owned())
                            .or_insert_with(|| {
                                problem(
                                    "The user database (`database_unavailable`) or the backend (`backend_unavailable`) is not answering; try again shortly".into(),
                                )
                            });
                    }
                }
            }
        }
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

    /// Every `$ref` names a component that is in the document (utoipa does not
    /// collect every schema a `value_type` names).
    #[test]
    fn every_schema_reference_resolves() {
        let doc = serde_json::to_value(crate::router::openapi()).unwrap();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for (i, _) in text.match_indices("#/components/schemas/") {
            let rest = &text[i + "#/components/schemas/".len()..];
            let name = &rest[..rest.find('"').unwrap()];
            assert!(schemas.contains_key(name), "no component {name}");
        }
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
