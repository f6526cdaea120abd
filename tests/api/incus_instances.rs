//! Instances and operations through lxgate in front of the real private incusd.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

/// Deletes the named instances (forcefully) from incusd when dropped, so a
/// failing test leaves nothing behind.
pub struct Cleanup(pub Vec<(String, String)>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let dir = std::env::var("LXGATE_TEST_INCUS_DIR").unwrap_or_default();
        for (project, name) in &self.0 {
            let _ = Command::new("incus")
                .args(["delete", "--force", "--project", project, name])
                .env("INCUS_DIR", &dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// A name clash, reported either synchronously (409) or as a failed operation.
pub fn assert_name_clash(r: &Reply) {
    if r.status == StatusCode::CONFLICT {
        r.assert_problem(409, "conflict");
        return;
    }
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 400, "{}", r.text);
    let err = r.body["err"].as_str().unwrap_or_default();
    assert!(
        err.contains("already exists") || err.contains("UNIQUE constraint"),
        "{}",
        r.text
    );
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// lxgate in front of the private incusd, in the connection mode the run asks
/// for: `LXGATE_TEST_INCUS_MODE=remote` (mTLS with a token-trusted identity;
/// `make test` runs the resource suites a second time this way) or the unix
/// socket (default).
pub async fn incus_app() -> TestApp {
    incus_app_with(&[]).await
}

/// An Incus-backed app with these settings besides the suite's.
pub async fn incus_app_with(env: &[(&str, &str)]) -> TestApp {
    let vars = crate::incus_transport::suite_env();
    let mut pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.extend_from_slice(env);
    spawn_app_with(Db::Sqlite, &pairs).await
}

fn alias() -> String {
    std::env::var("LXGATE_TEST_INCUS_IMAGE_ALIAS").unwrap_or_else(|_| "busybox".into())
}

#[tokio::test]
async fn instance_lifecycle_through_operations() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let name = unique("life");
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);

    // Create without waiting: 202 + an operation reference.
    let r = app
        .post(
            "/api/v1/instances",
            Some(&admin),
            json!({"name": name, "source": {"type": "image", "alias": alias()}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let poll = r.body["poll_url"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location"), Some(poll.as_str()));
    assert_eq!(r.body["status_code"], 103);
    let wait = r.body["wait_url"].as_str().unwrap().to_owned();
    let op = app.get(&poll, Some(&admin)).await;
    assert_eq!(op.status, StatusCode::OK, "{}", op.text);
    let done = app.get(&format!("{wait}?timeout=60"), Some(&admin)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert_eq!(done.body["status_code"], 200, "{}", done.text);

    // Read it back, with an ETag.
    let path = format!("/api/v1/instances/{name}");
    let got = app.get(&path, Some(&admin)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["status"], "Stopped");
    assert_eq!(got.body["type"], "container");
    let etag = got.header("etag").expect("ETag header").to_owned();

    // Same name again: Incus accepts the request and fails the operation;
    // with ?wait= that failed operation is the answer (status_code 400, err).
    let dup = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": name, "source": {"type": "image", "alias": alias()}}),
        )
        .await;
    assert_name_clash(&dup);

    // PATCH with the current ETag works, with a stale one is 412.
    let patch = |etag: String, desc: &str| {
        app.request(Method::PATCH, &path, Some(&admin))
            .header("if-match", etag)
            .json(&json!({"config": {"user.note": desc}}))
    };
    let ok = app.send(patch(etag.clone(), "first")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    // Incus's ETag covers config, devices and profiles (not the description).
    assert_eq!(ok.body["config"]["user.note"], "first");
    app.send(patch(etag, "second"))
        .await
        .assert_problem(412, "precondition_failed");

    // Start and look at its state.
    let start = app
        .post(&format!("{path}/start?wait=60"), Some(&admin), json!({}))
        .await;
    assert_eq!(start.status, StatusCode::OK, "{}", start.text);
    assert_eq!(start.body["status_code"], 200, "{}", start.text);
    // Starting it again fails in the background: with ?wait= the failed
    // operation comes back (200, status_code 400, err), not a gateway error.
    let again = app
        .post(&format!("{path}/start?wait=30"), Some(&admin), json!({}))
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["status_code"], 400, "{}", again.text);
    assert!(!again.body["err"].as_str().unwrap_or_default().is_empty());
    let st = app.get(&format!("{path}/state"), Some(&admin)).await;
    assert_eq!(st.status, StatusCode::OK);
    assert_eq!(st.body["status"], "Running");
    assert!(st.body["pid"].as_i64().unwrap() > 0);
    assert!(st.body["processes"].as_i64().unwrap() >= 1);

    // Lists: objects, names, type filter, pagination.
    let list = app.get("/api/v1/instances", Some(&admin)).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(
        list.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == name.as_str())
    );
    let names = app
        .get("/api/v1/instances?expand=false", Some(&admin))
        .await;
    assert!(
        names.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == name.as_str())
    );
    let vms = app
        .get(
            "/api/v1/instances?instance-type=virtual-machine",
            Some(&admin),
        )
        .await;
    assert!(
        !vms.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == name.as_str())
    );
    let page = app.get("/api/v1/instances?limit=1", Some(&admin)).await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    assert!(page.body["total"].as_i64().unwrap() >= 1);

    // Freeze, unfreeze, stop through the state endpoint.
    for action in ["freeze", "unfreeze"] {
        let r = app
            .send(
                app.request(Method::PUT, &format!("{path}/state?wait=30"), Some(&admin))
                    .json(&json!({"action": action})),
            )
            .await;
        assert_eq!(r.body["status_code"], 200, "{action}: {}", r.text);
    }
    let frozen_check = app.get(&format!("{path}/state"), Some(&admin)).await;
    assert_eq!(frozen_check.body["status"], "Running");
    // A running instance cannot be deleted without `?force=true`.
    app.delete(&path, Some(&admin))
        .await
        .assert_problem(409, "conflict");
    let stop = app
        .post(
            &format!("{path}/stop?wait=60"),
            Some(&admin),
            json!({"force": true}),
        )
        .await;
    assert_eq!(stop.body["status_code"], 200, "{}", stop.text);

    // Rename, then delete under the new name.
    let new_name = unique("renamed");
    let _cleanup2 = Cleanup(vec![("default".into(), new_name.clone())]);
    let r = app
        .post(
            &format!("{path}/rename?wait=30"),
            Some(&admin),
            json!({"name": new_name}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    app.get(&path, Some(&admin))
        .await
        .assert_problem(404, "instance_not_found");
    let del = app
        .send(app.request(
            Method::DELETE,
            &format!("/api/v1/instances/{new_name}?wait=60"),
            Some(&admin),
        ))
        .await;
    assert_eq!(del.body["status_code"], 200, "{}", del.text);

    // `?force=true` stops a running one first (as `incus delete --force`).
    let forced = unique("forced");
    let _cleanup3 = Cleanup(vec![("default".into(), forced.clone())]);
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": forced, "source": {"type": "image", "alias": alias()}, "start": true}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let forced_path = format!("/api/v1/instances/{forced}");
    assert_eq!(
        app.get(&format!("{forced_path}/state"), Some(&admin))
            .await
            .body["status"],
        "Running"
    );
    let del = app
        .delete(&format!("{forced_path}?force=true&wait=60"), Some(&admin))
        .await;
    assert_eq!(del.body["status_code"], 200, "{}", del.text);
    app.get(&forced_path, Some(&admin))
        .await
        .assert_problem(404, "instance_not_found");

    // The operations it made are listed (newest first) and recorded.
    let ops = app.get("/api/v1/operations", Some(&admin)).await;
    assert_eq!(ops.status, StatusCode::OK, "{}", ops.text);
}

#[tokio::test]
async fn bad_requests_never_reach_incus() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    for bad in ["1abc", "-x", "a_b", "x".repeat(64).as_str()] {
        let r = app
            .post(
                "/api/v1/instances",
                Some(&admin),
                json!({"name": bad, "source": {"type": "image", "alias": "busybox"}}),
            )
            .await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["field"], "name");
    }
    app.get("/api/v1/instances/bad_name", Some(&admin))
        .await
        .assert_problem(400, "invalid_name");
    app.get("/api/v1/instances?project=../x", Some(&admin))
        .await
        .assert_problem(400, "invalid_name");
    app.get("/api/v1/instances/does-not-exist", Some(&admin))
        .await
        .assert_problem(404, "instance_not_found");
    app.post(
        "/api/v1/instances/does-not-exist/explode",
        Some(&admin),
        json!({}),
    )
    .await
    .assert_problem(404, "route_not_found");
    let r = app
        .post(
            "/api/v1/instances",
            Some(&admin),
            json!({"name": "ok-name", "source": {"type": "image"}}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    app.get("/api/v1/operations/not-a-uuid", Some(&admin))
        .await
        .assert_problem(400, "invalid_name");
    app.get(
        &format!("/api/v1/operations/{}", uuid::Uuid::new_v4()),
        Some(&admin),
    )
    .await
    .assert_problem(404, "operation_not_found");
    let r = app
        .send(
            app.request(Method::PUT, "/api/v1/instances/ok-name/state", Some(&admin))
                .json(&json!({"action": "explode"})),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "action");
}

#[tokio::test]
async fn project_isolation() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let project = unique("proj");
    // Projects are created straight on incusd until lxgate's project API exists.
    let dir = std::env::var("LXGATE_TEST_INCUS_DIR").unwrap();
    let incus = |args: &[&str]| {
        Command::new("incus")
            .args(args)
            .env("INCUS_DIR", &dir)
            .output()
            .expect("incus runs")
    };
    let out = incus(&[
        "project",
        "create",
        &project,
        "-c",
        "features.images=false",
        "-c",
        "features.profiles=false",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    struct DropProject(String, String);
    impl Drop for DropProject {
        fn drop(&mut self) {
            let _ = Command::new("incus")
                .args(["project", "delete", &self.1])
                .env("INCUS_DIR", &self.0)
                .output();
        }
    }
    let name_b = unique("in-default");
    let name_a = unique("in-proj");
    // Declared before the project guard so instances are removed first.
    let _project_guard = DropProject(dir.clone(), project.clone());
    let _cleanup = Cleanup(vec![
        ("default".into(), name_b.clone()),
        (project.clone(), name_a.clone()),
    ]);

    let teamop = app.user_with_role(&admin, "teamop", None).await;
    app.grant(&admin, "teamop", &project, "operator").await;
    // The grant changed nothing in the token: grants are read per request.

    let made = app
        .post(
            &format!("/api/v1/instances?project={project}&wait=60"),
            Some(&teamop),
            json!({"name": name_a, "source": {"type": "image", "alias": alias()}}),
        )
        .await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.text);
    assert_eq!(made.body["status_code"], 200, "{}", made.text);
    let op_a = made.body["id"].as_str().unwrap().to_owned();

    let made_b = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": name_b, "source": {"type": "image", "alias": alias()}}),
        )
        .await;
    assert_eq!(made_b.body["status_code"], 200, "{}", made_b.text);
    let op_b = made_b.body["id"].as_str().unwrap().to_owned();

    // teamop sees its project, and nothing of default.
    let mine = app
        .get(
            &format!("/api/v1/instances?project={project}"),
            Some(&teamop),
        )
        .await;
    assert_eq!(mine.status, StatusCode::OK);
    let items = mine.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["name"], name_a.as_str());
    let r = app.get("/api/v1/instances", Some(&teamop)).await;
    r.assert_problem(403, "permission_denied");
    assert_eq!(r.body["project"], "default");
    app.get(&format!("/api/v1/instances/{name_b}"), Some(&teamop))
        .await
        .assert_problem(403, "permission_denied");
    app.get("/api/v1/instances?all-projects=true", Some(&teamop))
        .await
        .assert_problem(403, "permission_denied");

    // Operations: its own are visible, default's look like they do not exist.
    assert_eq!(
        app.get(&format!("/api/v1/operations/{op_a}"), Some(&teamop))
            .await
            .status,
        StatusCode::OK
    );
    app.get(&format!("/api/v1/operations/{op_b}"), Some(&teamop))
        .await
        .assert_problem(404, "operation_not_found");
    app.get("/api/v1/operations", Some(&teamop))
        .await
        .assert_problem(403, "permission_denied");

    // An admin sees both projects at once.
    let all = app
        .get("/api/v1/instances?all-projects=true", Some(&admin))
        .await;
    let names: Vec<&str> = all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(
        names.contains(&name_a.as_str()) && names.contains(&name_b.as_str()),
        "{names:?}"
    );
}
