//! OpenAPI `links`: which later calls an answer makes possible, and with which
//! values (what a client generator and schemathesis's stateful phase follow).
//!
//! Derived from the routes' shape rather than listed by hand, so a new
//! resource gets its links with its routes:
//!
//! * **create -> item**: a `POST` to a collection links, from the answers
//!   that mean the item is made (201, or a 200 that is not an operation: an
//!   operation answered within `?wait=` may have failed), to every
//!   operation of the item it made (`POST /instances` -> `GET`, `PUT`, `PATCH`, `DELETE
//!   /instances/{name}`, `GET /instances/{name}/state`, ...). The item's name
//!   is the body field of the same name as the path parameter, or `name`; the
//!   parents' path parameters and `?project=` are the ones of the request.
//! * **rename -> item**: `POST .../{name}/rename` links to the item under its
//!   new name.
//! * **grant -> revoke**: a `PUT` to a path without a `GET` (a role grant)
//!   links to the other methods of that path.
//! * **operation**: an answer that is an operation (202 with a reference, or
//!   200 with the finished operation) links to `GET`, `DELETE` and `wait` of
//!   `operations/{id}`.
//!
//! Every link fills every path parameter of its target: a link that leaves
//! one to chance is not made (a generated value is a different resource).
//! WebSocket upgrades are no targets.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::{OpenApi, RefOr};

/// One operation as the rules see it.
struct Op {
    path: String,
    method: &'static str,
    id: String,
    path_params: BTreeSet<String>,
    project_query: bool,
    /// Top-level properties of the JSON request body.
    body_fields: BTreeSet<String>,
    /// Success statuses (and 101, a WebSocket's), and the schema each
    /// answers with (`$ref` name).
    successes: BTreeMap<String, Option<String>>,
}

/// A link to add: on `source`'s `status` answer, named after its target.
#[derive(Debug, PartialEq)]
struct Planned {
    source: String,
    status: String,
    target: String,
    parameters: BTreeMap<String, String>,
}

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// Adds the links the rules derive to `doc`'s responses.
pub fn add(doc: &mut OpenApi) {
    let Ok(json) = serde_json::to_value(&*doc) else {
        return;
    };
    let planned = plan(&read_ops(&json));
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let Some(id) = op.operation_id.clone() else {
                continue;
            };
            for link in planned.iter().filter(|l| l.source == id) {
                let Some(RefOr::T(response)) = op.responses.responses.get_mut(&link.status) else {
                    continue;
                };
                let mut builder = LinkBuilder::new().operation_id(link.target.as_str());
                for (name, expression) in &link.parameters {
                    builder = builder.parameter(name.as_str(), expression.as_str());
                }
                response
                    .links
                    .insert(link.target.clone(), RefOr::T(builder.build()));
            }
        }
    }
}

fn read_ops(doc: &Value) -> Vec<Op> {
    let schemas = &doc["components"]["schemas"];
    let mut ops = Vec::new();
    let Some(paths) = doc["paths"].as_object() else {
        return ops;
    };
    for (path, item) in paths {
        for method in METHODS {
            let op = &item[method];
            let Some(id) = op["operationId"].as_str() else {
                continue;
            };
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let in_ = |place: &'static str| {
                params
                    .iter()
                    .filter(move |p| p["in"] == place)
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
            };
            let body = resolve(
                schemas,
                &op["requestBody"]["content"]["application/json"]["schema"],
            );
            // Top-level properties, or those of any variant of a oneOf.
            let variants: Vec<&Value> = match body["oneOf"].as_array() {
                Some(v) => v.iter().map(|v| resolve(schemas, v)).collect(),
                None => vec![body],
            };
            let body_fields = variants
                .iter()
                .filter_map(|v| v["properties"].as_object())
                .flat_map(|p| p.keys().cloned())
                .collect();
            let successes = op["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(status, _)| status.starts_with('2') || *status == "101")
                .map(|(status, response)| {
                    let schema = response["content"]["application/json"]["schema"]["$ref"]
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                        .map(str::to_owned);
                    (status.clone(), schema)
                })
                .collect();
            ops.push(Op {
                path: path.clone(),
                method,
                id: id.to_owned(),
                path_params: in_("path").collect(),
                project_query: in_("query").any(|n| n == "project"),
                body_fields,
                successes,
            });
        }
    }
    ops
}

/// A schema, with a `$ref` to a component followed once.
fn resolve<'a>(schemas: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        Some(name) => &schemas[name],
        None => schema,
    }
}

/// `/a/{b}/c` -> `["a", "{b}", "c"]`.
fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

fn template(segment: &str) -> Option<&str> {
    segment.strip_prefix('{')?.strip_suffix('}')
}

fn plan(ops: &[Op]) -> Vec<Planned> {
    let mut planned = Vec::new();
    for source in ops {
        // Only an answer that means "made" leads to the item: a 202 is work
        // accepted, and an operation answered within `?wait=` (200) may be
        // one that failed. Those lead to their operation instead.
        let statuses: Vec<&String> = source
            .successes
            .iter()
            .filter(|(s, schema)| {
                s.as_str() != "202"
                    && !matches!(schema.as_deref(), Some("Operation" | "OperationRef"))
            })
            .map(|(s, _)| s)
            .collect();
        let src_segments = segments(&source.path);
        let carried = |target: &Op, mut parameters: BTreeMap<String, String>| {
            for parent in source.path_params.intersection(&target.path_params) {
                parameters
                    .entry(format!("path.{parent}"))
                    .or_insert_with(|| format!("$request.path.{parent}"));
            }
            if source.project_query && target.project_query {
                parameters.insert("query.project".into(), "$request.query.project".into());
            }
            parameters
        };
        let mut link = |target: &Op, parameters: BTreeMap<String, String>| {
            let filled: BTreeSet<String> = parameters
                .keys()
                .filter_map(|k| k.strip_prefix("path."))
                .map(str::to_owned)
                .collect();
            // A WebSocket (101) is no call a link can make.
            if filled != target.path_params || target.successes.contains_key("101") {
                return;
            }
            for status in &statuses {
                planned.push(Planned {
                    source: source.id.clone(),
                    status: (*status).clone(),
                    target: target.id.clone(),
                    parameters: parameters.clone(),
                });
            }
        };

        if source.method == "post" {
            // create -> item: targets under `<collection>/{item}`.
            for target in ops {
                let tgt = segments(&target.path);
                let Some(item) = tgt
                    .get(src_segments.len())
                    .and_then(|s| template(s))
                    .filter(|_| tgt.starts_with(&src_segments))
                else {
                    continue;
                };
                // A name the client chose comes from the request; an `id`
                // the server gave (a token's) from the answer.
                let value = if item == "id" {
                    Some("$response.body#/id".to_owned())
                } else {
                    [item, "name"]
                        .into_iter()
                        .find(|f| source.body_fields.contains(*f))
                        .map(|field| format!("$request.body#/{field}"))
                };
                if let Some(value) = value {
                    let params = BTreeMap::from([(format!("path.{item}"), value)]);
                    link(target, carried(target, params));
                }
            }
            // rename -> item: `<item path>/rename` with the new `name`.
            if let Some(item_path) = source.path.strip_suffix("/rename")
                && let Some(item) = segments(item_path).last().and_then(|s| template(s))
                && source.body_fields.contains("name")
            {
                for target in ops.iter().filter(|t| {
                    t.path == item_path
                        || t.path
                            .strip_prefix(item_path)
                            .is_some_and(|rest| rest.starts_with('/'))
                }) {
                    if target.path == source.path {
                        continue;
                    }
                    let params = BTreeMap::from([(
                        format!("path.{item}"),
                        "$request.body#/name".to_owned(),
                    )]);
                    link(target, carried(target, params));
                }
            }
        }

        // grant -> revoke: a PUT that is the only way to create what its
        // path names.
        if source.method == "put"
            && !ops
                .iter()
                .any(|o| o.path == source.path && o.method == "get")
        {
            for target in ops
                .iter()
                .filter(|t| t.path == source.path && t.method != "put")
            {
                link(target, carried(target, BTreeMap::new()));
            }
        }

        // operation: its reference (202) or the finished one (200 within
        // `?wait=`).
        for (status, schema) in &source.successes {
            let id_field = match schema.as_deref() {
                Some("OperationRef") => "operation_id",
                Some("Operation") if source.id != "get_operation" => "id",
                _ => continue,
            };
            for target in ops
                .iter()
                .filter(|t| t.path.starts_with("/api/v1/operations/{id}"))
            {
                let parameters =
                    BTreeMap::from([("path.id".to_owned(), format!("$response.body#/{id_field}"))]);
                if target.path_params.len() == 1 && target.path_params.contains("id") {
                    planned.push(Planned {
                        source: source.id.clone(),
                        status: status.clone(),
                        target: target.id.clone(),
                        parameters,
                    });
                }
            }
        }
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links_of(source: &str) -> Vec<(String, String, BTreeMap<String, String>)> {
        let doc = serde_json::to_value(crate::router::openapi()).unwrap();
        plan(&read_ops(&doc))
            .into_iter()
            .filter(|l| l.source == source)
            .map(|l| (l.status, l.target, l.parameters))
            .collect()
    }

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn creates_link_to_what_they_made_or_to_their_operation() {
        // A network is made when the answer says so (201).
        let links = links_of("create_network");
        for target in ["get_network", "update_network", "delete_network"] {
            assert!(
                links.contains(&(
                    "201".into(),
                    target.into(),
                    params(&[
                        ("path.name", "$request.body#/name"),
                        ("query.project", "$request.query.project"),
                    ])
                )),
                "create_network -> {target}: {links:?}"
            );
        }
        // An instance is made by an operation, which may fail: its answers
        // (202, or 200 within `?wait=`) lead to the operation only.
        let links = links_of("create_instance");
        assert!(
            !links.iter().any(|(_, t, _)| t == "get_instance"),
            "{links:?}"
        );
        assert!(links.contains(&(
            "202".into(),
            "get_operation".into(),
            params(&[("path.id", "$response.body#/operation_id")])
        )));
        assert!(links.contains(&(
            "200".into(),
            "get_operation".into(),
            params(&[("path.id", "$response.body#/id")])
        )));
        // Never to a WebSocket, nor with a path parameter left to chance.
        assert!(
            !links_of("create_network")
                .iter()
                .any(|(_, t, _)| t.ends_with("_ws"))
        );
    }

    #[test]
    fn nested_creates_carry_their_parents() {
        let links = links_of("create_volume");
        assert!(links.iter().any(|(s, t, p)| s == "201"
            && t == "get_volume"
            && p.get("path.pool").map(String::as_str) == Some("$request.path.pool")
            && p.get("path.name").map(String::as_str) == Some("$request.body#/name")));
        let links = links_of("create_storage_pool");
        assert!(links.iter().any(|(s, t, p)| s == "201"
            && t == "create_volume"
            && p.get("path.pool").map(String::as_str) == Some("$request.body#/name")));
    }

    #[test]
    fn grant_and_users() {
        assert!(
            links_of("grant_project_role")
                .iter()
                .any(|(_, t, _)| t == "revoke_project_role")
        );
        assert!(links_of("create_user").iter().any(|(s, t, p)| s == "201"
            && t == "get_user"
            && p.get("path.username").map(String::as_str) == Some("$request.body#/username")));
    }

    /// Every link names an operation of the document and fills each of its
    /// path parameters.
    #[test]
    fn every_link_fills_its_targets_path() {
        let doc = serde_json::to_value(crate::router::openapi()).unwrap();
        let ops = read_ops(&doc);
        let planned = plan(&ops);
        assert!(planned.len() > 40, "only {} links", planned.len());
        for l in &planned {
            let target = ops.iter().find(|o| o.id == l.target).unwrap();
            let filled: BTreeSet<String> = l
                .parameters
                .keys()
                .filter_map(|k| k.strip_prefix("path."))
                .map(str::to_owned)
                .collect();
            assert_eq!(filled, target.path_params, "{l:?}");
        }
    }
}
