//! Per-user quotas (issue 13, item 4): what one user's instances may add up
//! to in a project, refused with the quota and the usage on create, copy
//! and update, against the real incusd and real LXC.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::embedded::{Host, import_busybox};
use crate::helpers::*;
use crate::incus_instances::{Cleanup, incus_app, unique};
use crate::incus_storage::IncusUndo;

async fn create(
    app: &TestApp,
    token: &str,
    project: &str,
    name: &str,
    memory: Option<&str>,
) -> Reply {
    let alias = std::env::var("LXGATE_TEST_INCUS_IMAGE_ALIAS").unwrap_or_else(|_| "busybox".into());
    let mut body = json!({"name": name, "source": {"type": "image", "alias": alias}});
    if let Some(m) = memory {
        body["config"] = json!({"limits.memory": m});
    }
    app.post(
        &format!("/api/v1/instances?project={project}&wait=120"),
        Some(token),
        body,
    )
    .await
}

#[track_caller]
fn made(r: &Reply) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
}

#[track_caller]
fn over_quota(r: &Reply, what: &str) {
    r.assert_problem(403, "quota_exceeded");
    assert_eq!(r.body["field"], format!("quota.{what}"), "{}", r.text);
}

/// The same story on either backend, in a new project `project`; `names`
/// gives the instance names (unique on the shared incusd).
async fn quotas_hold(app: &TestApp, project: &str, names: &dyn Fn(&str) -> String) {
    let admin = app.admin_token().await;
    let bad = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": project, "config": {"user.lxgate.limits.memory-per-user": "lots"}}),
        )
        .await;
    bad.assert_problem(400, "invalid_config");
    let r = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": project, "config": {
                "features.images": "false",
                "user.lxgate.limits.instances-per-user": "2",
                "user.lxgate.limits.memory-per-user": "256MiB"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let op1 = app.user_with_role(&admin, "q-op1", Some("operator")).await;
    let op2 = app.user_with_role(&admin, "q-op2", Some("operator")).await;

    // A quota on memory needs an amount to count.
    let r = create(app, &op1, project, &names("c1"), None).await;
    r.assert_problem(403, "quota_needs_amount");
    assert_eq!(r.body["field"], "config.limits.memory", "{}", r.text);
    made(&create(app, &op1, project, &names("c1"), Some("128MiB")).await);
    // 128 MiB used, 256 MiB more would pass 256 MiB: refused, with the usage.
    let r = create(app, &op1, project, &names("c2"), Some("256MiB")).await;
    over_quota(&r, "memory");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("256.0MiB") && detail.contains("128.0MiB"),
        "{detail}"
    );
    made(&create(app, &op1, project, &names("c2"), Some("64MiB")).await);
    // Two instances is the most one user may have here.
    over_quota(
        &create(app, &op1, project, &names("c3"), Some("16MiB")).await,
        "instances",
    );
    // Another user has a quota of its own; admins are not counted.
    made(&create(app, &op2, project, &names("d1"), Some("128MiB")).await);
    made(&create(app, &admin, project, &names("a1"), None).await);
    // An update cannot take it past either.
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!(
                    "/api/v1/instances/{}?project={project}&wait=60",
                    names("c1")
                ),
                Some(&op1),
            )
            .json(&json!({"config": {"limits.memory": "512MiB"}})),
        )
        .await;
    over_quota(&r, "memory");
    // Lowering stays possible, and an instance edited by someone else is
    // charged to its owner: op2 may not raise op1's instance past op1's quota.
    let patch = |token: &str, name: String, memory: &str| {
        app.send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/instances/{name}?project={project}&wait=60"),
                Some(token),
            )
            .json(&json!({"config": {"limits.memory": memory}})),
        )
    };
    let r = patch(&op1, names("c1"), "96MiB").await;
    assert!(r.status.is_success(), "{}", r.text);
    over_quota(&patch(&op2, names("c1"), "200MiB").await, "memory");
    // A profile in use that gives memory is changed by admins only here.
    let r = app
        .post(
            &format!("/api/v1/profiles?project={project}"),
            Some(&op1),
            json!({"name": "small"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!(
                    "/api/v1/instances/{}?project={project}&wait=60",
                    names("c2")
                ),
                Some(&op1),
            )
            .json(&json!({"profiles": ["default", "small"]})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/profiles/small?project={project}"),
                Some(&op1),
            )
            .json(&json!({"config": {"limits.memory": "8GiB"}})),
        )
        .await;
    over_quota(&r, "profile");
    // Nor a copy (it is a create of the copy's owner).
    let r = app
        .post(
            &format!("/api/v1/instances?project={project}&wait=120"),
            Some(&op2),
            json!({"name": names("d2"), "source": {"type": "copy", "source": names("d1")},
                   "config": {"limits.memory": "200MiB"}}),
        )
        .await;
    over_quota(&r, "memory");

    // The project's state shows each user's usage and the quotas.
    let st = app
        .get(&format!("/api/v1/projects/{project}/state"), Some(&op1))
        .await;
    assert_eq!(st.status, StatusCode::OK, "{}", st.text);
    assert_eq!(
        st.body["user_limits"],
        json!({"instances": 2, "memory": 256 << 20}),
        "{}",
        st.text
    );
    let users: Vec<&Value> = st.body["users"].as_array().unwrap().iter().collect();
    let of = |u: &str| {
        users
            .iter()
            .find(|v| v["username"] == u)
            .unwrap_or_else(|| panic!("{u} in {}", st.text))
    };
    assert_eq!(
        (&of("q-op1")["instances"], &of("q-op1")["memory"]),
        (&json!(2), &json!(160 << 20))
    );
    assert_eq!(of("q-op2")["memory"], 128 << 20);
    assert_eq!(of(ADMIN)["instances"], 1);
}

#[tokio::test]
async fn per_user_quotas_hold_on_incus() {
    let app = incus_app().await;
    let project = unique("quota");
    let suffix = unique("q");
    let names = move |n: &str| format!("{n}-{}", &suffix[2..]);
    let _undo = IncusUndo::new(&[&["project", "delete", &project]]);
    let _instances = Cleanup(
        ["c1", "c2", "c3", "d1", "d2", "a1"]
            .iter()
            .map(|n| (project.clone(), names(n)))
            .collect(),
    );
    quotas_hold(&app, &project, &names).await;
}

#[tokio::test]
async fn per_user_quotas_hold_on_embedded() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    quotas_hold(&app, "quota", &|n: &str| n.to_owned()).await;
}
