//! Instance snapshots through lxgate in front of the real private incusd:
//! take, list, read, restore (proved by a file's content), delete.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::incus_instances::{Cleanup, incus_app, unique};

fn alias() -> String {
    std::env::var("LXGATE_TEST_INCUS_IMAGE_ALIAS").unwrap_or_else(|_| "busybox".into())
}

/// Runs `incus query <path>` against the private incusd and parses the JSON.
pub fn incus_query(path: &str) -> Option<Value> {
    let dir = std::env::var("LXGATE_TEST_INCUS_DIR").unwrap_or_default();
    let out = Command::new("incus")
        .args(["query", path])
        .env("INCUS_DIR", dir)
        .output()
        .expect("incus runs");
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("incus query answers JSON"))
}

/// Creates a busybox container through lxgate and waits until it exists.
pub async fn container(app: &TestApp, token: &str, name: &str, start: bool) {
    let r = app
        .post(
            "/api/v1/instances?wait=120",
            Some(token),
            json!({"name": name, "source": {"type": "image", "alias": alias()}, "start": start}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "create {name}: {}", r.text);
    assert_eq!(r.body["status_code"], 200, "create {name}: {}", r.text);
}

/// Pushes `content` to `path` in the instance (204 expected).
pub async fn push(app: &TestApp, token: &str, name: &str, path: &str, content: Vec<u8>) {
    let r = app
        .send(
            app.request(
                Method::POST,
                &format!("/api/v1/instances/{name}/files?path={path}"),
                Some(token),
            )
            .body(content),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "push {path}: {}", r.text);
}

/// Pulls `path` out of the instance as raw bytes.
pub async fn pull(app: &TestApp, token: &str, name: &str, path: &str) -> Vec<u8> {
    let resp = app
        .request(
            Method::GET,
            &format!("/api/v1/instances/{name}/files?path={path}"),
            Some(token),
        )
        .send()
        .await
        .expect("request reaches the server");
    assert_eq!(resp.status(), StatusCode::OK, "pull {path}");
    resp.bytes().await.expect("pull body").to_vec()
}

/// Waits for an operation reference (202) to finish successfully.
pub async fn finish(app: &TestApp, token: &str, r: &Reply) {
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let wait = r.body["wait_url"].as_str().expect("wait_url").to_owned();
    assert_eq!(r.header("location"), r.body["poll_url"].as_str());
    let done = app.get(&format!("{wait}?timeout=120"), Some(token)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert_eq!(done.body["status_code"], 200, "{}", done.text);
}

#[tokio::test]
async fn snapshot_create_list_get_restore_delete() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let viewer = app.user_with_role(&admin, "viewer", Some("viewer")).await;
    let name = unique("snap");
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);
    container(&app, &admin, &name, false).await;
    let base = format!("/api/v1/instances/{name}/snapshots");

    // The state to come back to.
    push(
        &app,
        &admin,
        &name,
        "/root/state.txt",
        b"version one\n".to_vec(),
    )
    .await;

    // Take a snapshot without waiting: 202 + an operation.
    let r = app
        .post(&base, Some(&admin), json!({"name": "snap-one"}))
        .await;
    finish(&app, &admin, &r).await;

    // Listed (objects and names), readable, and really there on Incus.
    let list = app.get(&base, Some(&admin)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.body["total"], 1, "{}", list.text);
    assert_eq!(list.body["items"][0]["name"], "snap-one");
    assert_eq!(list.body["items"][0]["stateful"], false);
    let names = app
        .get(&format!("{base}?expand=false"), Some(&viewer))
        .await;
    assert_eq!(names.status, StatusCode::OK, "{}", names.text);
    assert_eq!(names.body["items"], json!(["snap-one"]));
    let got = app.get(&format!("{base}/snap-one"), Some(&viewer)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["name"], "snap-one");
    assert!(
        got.body["created_at"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    let on_incus = incus_query(&format!("/1.0/instances/{name}/snapshots/snap-one"))
        .expect("the snapshot exists on Incus");
    assert_eq!(on_incus["name"], "snap-one");

    // Change the file, restore, and the old content is back.
    push(
        &app,
        &admin,
        &name,
        "/root/state.txt",
        b"version two\n".to_vec(),
    )
    .await;
    assert_eq!(
        pull(&app, &admin, &name, "/root/state.txt").await,
        b"version two\n"
    );
    let r = app
        .post(&format!("{base}/snap-one/restore"), Some(&admin), json!({}))
        .await;
    finish(&app, &admin, &r).await;
    assert_eq!(
        pull(&app, &admin, &name, "/root/state.txt").await,
        b"version one\n",
        "the restore brought the snapshot's content back"
    );

    // A snapshot with an expiry, and with ?wait= (200 with the operation);
    // no body at all is fine for a restore.
    let r = app
        .post(
            &format!("{base}?wait=60"),
            Some(&admin),
            json!({"name": "snap-two", "expires_at": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let two = app.get(&format!("{base}/snap-two"), Some(&admin)).await;
    assert!(
        two.body["expires_at"]
            .as_str()
            .is_some_and(|s| s.starts_with("2099-01-01")),
        "{}",
        two.text
    );
    let r = app
        .send(app.request(
            Method::POST,
            &format!("{base}/snap-two/restore?wait=60"),
            Some(&admin),
        ))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);

    // Same name again: a 409, or the failed operation under ?wait=.
    let dup = app
        .post(
            &format!("{base}?wait=60"),
            Some(&admin),
            json!({"name": "snap-one"}),
        )
        .await;
    crate::incus_instances::assert_name_clash(&dup);

    // Errors: unknown snapshot, bad names, bad expiry, unknown instance.
    app.get(&format!("{base}/no-such-snap"), Some(&admin))
        .await
        .assert_problem(404, "snapshot_not_found");
    app.post(
        &format!("{base}/no-such-snap/restore"),
        Some(&admin),
        json!({}),
    )
    .await
    .assert_problem(404, "snapshot_not_found");
    app.get(&format!("{base}/bad_name"), Some(&admin))
        .await
        .assert_problem(400, "invalid_name");
    let r = app
        .post(&base, Some(&admin), json!({"name": "bad_name"}))
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "name");
    let r = app
        .post(
            &base,
            Some(&admin),
            json!({"name": "x", "expires_at": "tomorrow"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "expires_at");
    app.post(&base, Some(&admin), json!({"name": "x", "bogus": 1}))
        .await
        .assert_problem(422, "validation_failed");
    app.get("/api/v1/instances/no-such-instance/snapshots", Some(&admin))
        .await
        .assert_problem(404, "instance_not_found");

    // A viewer reads but cannot take, restore or delete.
    for r in [
        app.post(&base, Some(&viewer), json!({"name": "nope"}))
            .await,
        app.post(
            &format!("{base}/snap-one/restore"),
            Some(&viewer),
            json!({}),
        )
        .await,
        app.send(app.request(Method::DELETE, &format!("{base}/snap-one"), Some(&viewer)))
            .await,
    ] {
        r.assert_problem(403, "permission_denied");
        assert_eq!(r.body["permission"], "project:operate");
    }

    // Delete: gone from lxgate and from Incus.
    for snap in ["snap-one", "snap-two"] {
        let r = app
            .send(app.request(Method::DELETE, &format!("{base}/{snap}"), Some(&admin)))
            .await;
        finish(&app, &admin, &r).await;
        app.get(&format!("{base}/{snap}"), Some(&admin))
            .await
            .assert_problem(404, "snapshot_not_found");
        assert!(incus_query(&format!("/1.0/instances/{name}/snapshots/{snap}")).is_none());
    }
    let list = app.get(&base, Some(&admin)).await;
    assert_eq!(list.body["total"], 0, "{}", list.text);
}
