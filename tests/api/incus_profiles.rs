//! Profiles through lxgate in front of the real private incusd: CRUD and
//! rename per project, ETags, what instances using them expand to, and who
//! may do what.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::incus_instances::{Cleanup, incus_app, unique};
use crate::incus_storage::{IncusUndo, incus_ok};

fn alias() -> String {
    std::env::var("LXGATE_TEST_INCUS_IMAGE_ALIAS").unwrap_or_else(|_| "busybox".into())
}

fn names(items: &Value) -> Vec<String> {
    items
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| {
            i.as_str()
                .or_else(|| i["name"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

async fn patch(app: &TestApp, token: &str, path: &str, body: Value) -> Reply {
    app.send(app.request(Method::PATCH, path, Some(token)).json(&body))
        .await
}

#[tokio::test]
async fn profiles_per_project_and_the_instances_that_use_them() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let viewer = app.user_with_role(&admin, "pview", Some("viewer")).await;
    let operator = app.user_with_role(&admin, "pop", None).await;
    let project = unique("prof");
    let (small, medium) = (unique("small"), unique("medium"));
    let inst = unique("pi");
    // Profiles, then the project, after the instance (declared below) is gone.
    let _undo = IncusUndo::new(&[
        &["profile", "delete", &small, "--project", &project],
        &["profile", "delete", &medium, "--project", &project],
        &["project", "delete", &project],
    ]);
    let _cleanup = Cleanup(vec![(project.clone(), inst.clone())]);
    let made = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": project, "config": {"features.images": "false"}}),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    app.grant(&admin, "pop", &project, "operator").await;
    let q = format!("?project={project}");

    // Every project has `default`: here the one lxgate seeded with the root disk.
    let list = app
        .get(&format!("/api/v1/profiles{q}"), Some(&operator))
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(names(&list.body["items"]), ["default"], "{}", list.text);
    assert_eq!(list.body["items"][0]["devices"]["root"]["path"], "/");
    assert_eq!(list.body["items"][0]["project"], project.as_str());

    // Operators of the project create profiles; viewers only read them.
    let body = json!({"name": small, "description": "Small",
        "config": {"limits.memory": "128MiB", "user.tier": "small"}});
    app.post(&format!("/api/v1/profiles{q}"), Some(&viewer), body.clone())
        .await
        .assert_problem(403, "permission_denied");
    let r = app
        .post(
            &format!("/api/v1/profiles{q}"),
            Some(&operator),
            body.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.header("location"),
        Some(format!("/api/v1/profiles/{small}?project={project}").as_str())
    );
    assert_eq!(r.body["config"]["limits.memory"], "128MiB");
    assert_eq!(r.body["used_by"], json!([]));
    assert_eq!(r.body["project"], project.as_str());
    app.post(&format!("/api/v1/profiles{q}"), Some(&operator), body)
        .await
        .assert_problem(409, "conflict");
    app.post(
        &format!("/api/v1/profiles{q}"),
        Some(&operator),
        json!({"name": "1st"}),
    )
    .await
    .assert_problem(422, "validation_failed");
    let path = format!("/api/v1/profiles/{small}{q}");
    let got = app.get(&path, Some(&viewer)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    let etag = got.header("etag").expect("an ETag").to_owned();

    // PATCH merges config keys; PUT replaces, pinned to the ETag.
    let r = patch(
        &app,
        &operator,
        &path,
        json!({"config": {"limits.cpu": "1"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["config"]["limits.cpu"], "1");
    assert_eq!(r.body["config"]["user.tier"], "small");
    assert_eq!(r.body["description"], "Small");
    let stale = app
        .send(
            app.request(Method::PUT, &path, Some(&operator))
                .header("if-match", &etag)
                .json(&json!({"config": {}})),
        )
        .await;
    stale.assert_problem(412, "precondition_failed");
    let fresh = r.header("etag").expect("an ETag").to_owned();
    let r = app
        .send(
            app.request(Method::PUT, &path, Some(&operator))
                .header("if-match", &fresh)
                .json(&json!({"description": "Small ones",
                    "config": {"limits.memory": "128MiB", "limits.cpu": "1"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["config"],
        json!({"limits.memory": "128MiB", "limits.cpu": "1"})
    );

    // An instance takes its profiles in order, under its own config.
    let r = app
        .post(
            &format!("/api/v1/instances{q}&wait=60"),
            Some(&operator),
            json!({"name": inst, "source": {"type": "image", "alias": alias()},
                "profiles": ["default", small], "config": {"limits.cpu": "2"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let ipath = format!("/api/v1/instances/{inst}{q}");
    let i = app.get(&ipath, Some(&viewer)).await;
    assert_eq!(i.body["profiles"], json!(["default", small]));
    assert_eq!(i.body["expanded_config"]["limits.memory"], "128MiB");
    assert_eq!(i.body["expanded_config"]["limits.cpu"], "2");
    assert_eq!(i.body["config"].get("limits.memory"), None);
    assert_eq!(i.body["expanded_devices"]["root"]["type"], "disk");
    let shown = incus_ok(&["config", "show", "--expanded", &inst, "--project", &project]);
    assert!(shown.contains("limits.memory: 128MiB"), "{shown}");
    // A profile change reaches the instances using it (Incus applies it).
    let r = patch(
        &app,
        &operator,
        &path,
        json!({"config": {"limits.memory": "192MiB"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["used_by"],
        json!([format!("/1.0/instances/{inst}?project={project}")])
    );
    let i = app.get(&ipath, Some(&viewer)).await;
    assert_eq!(i.body["expanded_config"]["limits.memory"], "192MiB");

    // In use: not deleted. Renamed: the instance keeps it under the new name.
    app.delete(&path, Some(&operator))
        .await
        .assert_problem(409, "conflict");
    let r = app
        .post(
            &format!("/api/v1/profiles/{small}/rename{q}"),
            Some(&operator),
            json!({"name": medium}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["name"], medium.as_str());
    let i = app.get(&ipath, Some(&viewer)).await;
    assert_eq!(i.body["profiles"], json!(["default", medium]));
    app.get(&path, Some(&viewer))
        .await
        .assert_problem(404, "profile_not_found");

    // `default` stays.
    app.delete(&format!("/api/v1/profiles/default{q}"), Some(&operator))
        .await
        .assert_problem(409, "default_profile");
    app.post(
        &format!("/api/v1/profiles/default/rename{q}"),
        Some(&operator),
        json!({"name": "other"}),
    )
    .await
    .assert_problem(409, "default_profile");

    // Names only, then the profile goes once nothing uses it.
    let list = app
        .get(&format!("/api/v1/profiles{q}&expand=false"), Some(&viewer))
        .await;
    let mut listed = names(&list.body["items"]);
    listed.sort();
    let mut want = vec!["default".to_owned(), medium.clone()];
    want.sort();
    assert_eq!(listed, want, "{}", list.text);
    let r = app
        .delete(
            &format!("/api/v1/instances/{inst}{q}&wait=60"),
            Some(&operator),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let mpath = format!("/api/v1/profiles/{medium}{q}");
    let r = app.delete(&mpath, Some(&operator)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    app.get(&mpath, Some(&viewer))
        .await
        .assert_problem(404, "profile_not_found");
}

/// A profile name is one path segment of Incus's URL, whatever it holds:
/// a tab, a newline or a carriage return around `..` (which a URL parser
/// strips, leaving `..` to climb out of `/1.0/profiles`) is refused as a
/// name before anything is sent, and the server's own config (`/1.0`,
/// where such a PUT would land) is untouched.
#[tokio::test]
async fn incus_a_profile_name_cannot_climb_out_of_its_url() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let operator = app.user_with_role(&admin, "pclimb", Some("operator")).await;
    let marker = "user.lxgate-climb";
    let before = incus_ok(&["config", "show"]);
    for name in ["%09..%09", "%0A..", "..%0D", "%09.", "a%0Ab"] {
        for token in [&operator, &admin] {
            let path = format!("/api/v1/profiles/{name}");
            app.get(&path, Some(token))
                .await
                .assert_problem(400, "invalid_name");
            let r = app
                .send(
                    app.request(Method::PUT, &path, Some(token))
                        .json(&json!({"config": {marker: "x"}, "devices": {}})),
                )
                .await;
            r.assert_problem(400, "invalid_name");
            patch(&app, token, &path, json!({"config": {marker: "x"}}))
                .await
                .assert_problem(400, "invalid_name");
            app.delete(&path, Some(token))
                .await
                .assert_problem(400, "invalid_name");
        }
    }
    assert_eq!(incus_ok(&["config", "show"]), before);
    assert_eq!(incus_ok(&["config", "get", marker]).trim(), "");
}
