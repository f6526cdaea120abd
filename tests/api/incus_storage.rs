//! Storage pools and custom volumes through lxgate in front of the real
//! private incusd, and attaching volumes to instances.

use std::process::{Command, Output, Stdio};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::incus_instances::{Cleanup, incus_app, unique};

/// `incus <args>` against the test bed's incusd.
pub fn incus(args: &[&str]) -> Output {
    Command::new("incus")
        .args(args)
        .env(
            "INCUS_DIR",
            std::env::var("LXGATE_TEST_INCUS_DIR")
                .expect("LXGATE_TEST_INCUS_DIR (source target/testbed.env)"),
        )
        .stdin(Stdio::null())
        .output()
        .expect("the incus CLI runs")
}

/// `incus <args>` that must succeed; returns its stdout.
#[track_caller]
pub fn incus_ok(args: &[&str]) -> String {
    let out = incus(args);
    assert!(
        out.status.success(),
        "incus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs each `incus` command, in order, when dropped (failures ignored), so a
/// failing test leaves nothing behind. Declare it before the guards of what
/// must go first (locals drop in reverse order).
pub struct IncusUndo(pub Vec<Vec<String>>);

impl IncusUndo {
    pub fn new(cmds: &[&[&str]]) -> Self {
        Self(
            cmds.iter()
                .map(|c| c.iter().map(|s| (*s).to_owned()).collect())
                .collect(),
        )
    }
}

impl Drop for IncusUndo {
    fn drop(&mut self) {
        for cmd in &self.0 {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let _ = incus(&args);
        }
    }
}

fn names(items: &Value) -> Vec<String> {
    items
        .as_array()
        .expect("items is a list")
        .iter()
        .map(|i| {
            i.as_str()
                .or_else(|| i["name"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn storage_pools_and_volumes() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let operator = app.user_with_role(&admin, "op", Some("operator")).await;
    let viewer = app.user_with_role(&admin, "viewer", Some("viewer")).await;
    let pool = unique("pool");
    let vol = unique("vol");
    let source = tempfile::tempdir().expect("temp dir");
    let source_path = source.path().display().to_string();
    // The volume, then the pool, go last (after anything declared below).
    let _undo = IncusUndo::new(&[
        &["storage", "volume", "delete", &pool, &vol],
        &["storage", "delete", &pool],
    ]);

    // The test bed's pool is listed, as objects and as names.
    let list = app.get("/api/v1/storage/pools", Some(&viewer)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert!(names(&list.body["items"]).contains(&"default".to_owned()));
    assert!(list.body["items"][0]["driver"].is_string());
    let list = app
        .get("/api/v1/storage/pools?expand=false", Some(&viewer))
        .await;
    assert!(
        list.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "default")
    );

    // Creating pools is for admins; the driver is checked first.
    let body = json!({"name": pool, "driver": "dir", "config": {"source": source_path}});
    app.post("/api/v1/storage/pools", Some(&operator), body.clone())
        .await
        .assert_problem(403, "permission_denied");
    let r = app
        .post(
            "/api/v1/storage/pools",
            Some(&admin),
            json!({"name": pool, "driver": "nosuch"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "driver");
    let made = app
        .post("/api/v1/storage/pools", Some(&admin), body.clone())
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    assert_eq!(made.body["name"], pool.as_str());
    assert_eq!(made.body["driver"], "dir");
    assert_eq!(made.body["status"], "Created");
    assert_eq!(made.body["config"]["source"], source_path.as_str());
    assert_eq!(
        made.header("location"),
        Some(format!("/api/v1/storage/pools/{pool}").as_str())
    );
    assert!(incus_ok(&["storage", "list", "--format", "csv"]).contains(&pool));
    app.post("/api/v1/storage/pools", Some(&admin), body)
        .await
        .assert_problem(409, "conflict");

    // Read with an ETag; PATCH with it works, a stale one is 412.
    let path = format!("/api/v1/storage/pools/{pool}");
    let got = app.get(&path, Some(&viewer)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    let etag = got.header("etag").expect("ETag").to_owned();
    let patch = |etag: &str, desc: &str| {
        app.request(Method::PATCH, &path, Some(&admin))
            .header("if-match", etag)
            .json(&json!({"description": desc}))
    };
    let ok = app.send(patch(&etag, "first")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.body["description"], "first");
    app.send(patch(&etag, "second"))
        .await
        .assert_problem(412, "precondition_failed");
    app.send(
        app.request(Method::PATCH, &path, Some(&operator))
            .json(&json!({"description": "nope"})),
    )
    .await
    .assert_problem(403, "permission_denied");
    // PUT replaces: the description left out is emptied, config kept as sent.
    let put = app
        .send(
            app.request(Method::PUT, &path, Some(&admin))
                .json(&json!({"config": {"source": source_path}})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    assert_eq!(put.body["description"], "");
    assert_eq!(put.body["config"]["source"], source_path.as_str());

    // Custom volumes: operators create them, viewers read them.
    let vols = format!("{path}/volumes");
    app.post(&vols, Some(&viewer), json!({"name": vol}))
        .await
        .assert_problem(403, "permission_denied");
    let r = app
        .post(
            &vols,
            Some(&operator),
            json!({"name": vol, "config": {"size": "lots"}}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "config.size");
    app.post(&vols, Some(&operator), json!({"name": "bad_name"}))
        .await
        .assert_problem(422, "validation_failed");
    let made = app
        .post(
            &vols,
            Some(&operator),
            json!({"name": vol, "description": "scratch"}),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    assert_eq!(made.body["name"], vol.as_str());
    assert_eq!(made.body["type"], "custom");
    assert_eq!(made.body["content_type"], "filesystem");
    assert_eq!(made.body["project"], "default");
    app.post(&vols, Some(&operator), json!({"name": vol}))
        .await
        .assert_problem(409, "conflict");
    let list = app.get(&vols, Some(&viewer)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(names(&list.body["items"]), vec![vol.clone()]);
    let list = app
        .get(&format!("{vols}?expand=false"), Some(&viewer))
        .await;
    assert_eq!(list.body["items"], json!([vol]));
    let vpath = format!("{vols}/{vol}");
    let got = app.get(&vpath, Some(&viewer)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["description"], "scratch");
    assert!(got.header("etag").is_some());
    let r = app
        .send(
            app.request(Method::PATCH, &vpath, Some(&operator))
                .json(&json!({"description": "data", "config": {"user.note": "x"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["description"], "data");
    assert_eq!(r.body["config"]["user.note"], "x");

    // Resize sets `size`. On `dir` Incus accepts it (a project quota where
    // the filesystem has them) and reports it back.
    let resize = format!("{vpath}/resize");
    for bad in ["1.5GiB", "0", "1 GiB", "1gib", ""] {
        let r = app
            .post(&resize, Some(&operator), json!({"size": bad}))
            .await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["field"], "size");
    }
    app.post(&resize, Some(&viewer), json!({"size": "1GiB"}))
        .await
        .assert_problem(403, "permission_denied");
    let r = app
        .post(&resize, Some(&operator), json!({"size": "1GiB"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["config"]["size"], "1GiB");
    assert_eq!(
        incus_ok(&["storage", "volume", "get", &pool, &vol, "size"]).trim(),
        "1GiB"
    );

    // Attach to a stopped container at /mnt/data.
    let inst = unique("vols");
    let _instance = Cleanup(vec![("default".into(), inst.clone())]);
    incus_ok(&["init", "busybox", &inst]);
    let attach = format!("/api/v1/instances/{inst}/volumes");
    let req = json!({"pool": pool, "volume": vol, "path": "/mnt/data", "device": "data"});
    app.post(&attach, Some(&viewer), req.clone())
        .await
        .assert_problem(403, "permission_denied");
    let r = app
        .post(
            &attach,
            Some(&operator),
            json!({"pool": pool, "volume": "no-such-vol", "path": "/mnt/x", "device": "x"}),
        )
        .await;
    r.assert_problem(404, "volume_not_found");
    let r = app
        .post(
            &attach,
            Some(&operator),
            json!({"pool": pool, "volume": vol, "path": "relative", "device": "data"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "path");
    app.post(
        "/api/v1/instances/no-such-instance/volumes",
        Some(&operator),
        req.clone(),
    )
    .await
    .assert_problem(404, "instance_not_found");
    let r = app.post(&attach, Some(&operator), req.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["devices"]["data"],
        json!({"type": "disk", "pool": pool, "source": vol, "path": "/mnt/data"})
    );
    let shown = incus_ok(&["config", "device", "get", &inst, "data", "source"]);
    assert_eq!(shown.trim(), vol);
    app.post(&attach, Some(&operator), req.clone())
        .await
        .assert_problem(409, "device_exists");
    // `root` comes from the default profile.
    let r = app
        .post(
            &attach,
            Some(&operator),
            json!({"pool": pool, "volume": vol, "path": "/mnt/y", "device": "root"}),
        )
        .await;
    r.assert_problem(409, "device_exists");
    let got = app.get(&vpath, Some(&viewer)).await;
    assert_eq!(
        got.body["used_by"],
        json!([format!("/1.0/instances/{inst}")]),
        "{}",
        got.text
    );
    // Incus refuses to delete a volume in use: a conflict with its state.
    let r = app
        .send(app.request(Method::DELETE, &vpath, Some(&operator)))
        .await;
    r.assert_problem(409, "conflict");

    // Detach: the volume stays; the root disk from the profile cannot go.
    let detach = format!("{attach}/data?wait=30");
    app.send(app.request(Method::DELETE, &detach, Some(&viewer)))
        .await
        .assert_problem(403, "permission_denied");
    app.send(app.request(Method::DELETE, &format!("{attach}/root"), Some(&operator)))
        .await
        .assert_problem(409, "device_from_profile");
    let r = app
        .send(app.request(Method::DELETE, &detach, Some(&operator)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let i = app
        .get(&format!("/api/v1/instances/{inst}"), Some(&viewer))
        .await;
    assert!(i.body["devices"].get("data").is_none(), "{}", i.text);
    assert!(
        i.body["expanded_devices"].get("root").is_some(),
        "{}",
        i.text
    );
    app.send(app.request(Method::DELETE, &detach, Some(&operator)))
        .await
        .assert_problem(404, "device_not_found");

    // Delete the volume, then the pool.
    let r = app
        .send(app.request(Method::DELETE, &vpath, Some(&operator)))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    app.get(&vpath, Some(&viewer))
        .await
        .assert_problem(404, "volume_not_found");
    app.send(app.request(Method::DELETE, &path, Some(&operator)))
        .await
        .assert_problem(403, "permission_denied");
    let r = app
        .send(app.request(Method::DELETE, &path, Some(&admin)))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    app.get(&path, Some(&viewer))
        .await
        .assert_problem(404, "storage_pool_not_found");
    assert!(!incus_ok(&["storage", "list", "--format", "csv"]).contains(&pool));
}

#[tokio::test]
async fn storage_bad_input_and_project_scope() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    app.get("/api/v1/storage/pools/bad_name", Some(&admin))
        .await
        .assert_problem(400, "invalid_name");
    app.get("/api/v1/storage/pools/default/volumes/a.b", Some(&admin))
        .await
        .assert_problem(400, "invalid_name");
    app.get("/api/v1/storage/pools/no-such-pool", Some(&admin))
        .await
        .assert_problem(404, "storage_pool_not_found");
    app.get(
        "/api/v1/storage/pools/default/volumes/no-such-vol",
        Some(&admin),
    )
    .await
    .assert_problem(404, "volume_not_found");
    app.get("/api/v1/storage/pools/no-such-pool/volumes", Some(&admin))
        .await
        .assert_problem(404, "not_found");
    app.send(app.request(
        Method::DELETE,
        "/api/v1/instances/x/volumes/bad_device",
        Some(&admin),
    ))
    .await
    .assert_problem(400, "invalid_name");
    let r = app
        .post(
            "/api/v1/storage/pools/default/volumes",
            Some(&admin),
            json!({"name": "v", "content_type": "weird"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "content_type");
    let r = app
        .post(
            "/api/v1/storage/pools/default/volumes/v/resize",
            Some(&admin),
            json!({"size": "1GiB", "shrink": true}),
        )
        .await;
    r.assert_problem(422, "validation_failed");

    // A user with a role only in another project can list pools by naming
    // its project, and nothing in `default`.
    let teamer = app.user_with_role(&admin, "teamer", None).await;
    app.grant(&admin, "teamer", "team-x", "viewer").await;
    app.get("/api/v1/storage/pools", Some(&teamer))
        .await
        .assert_problem(403, "permission_denied");
    app.get("/api/v1/storage/pools/default/volumes", Some(&teamer))
        .await
        .assert_problem(403, "permission_denied");
    let r = app
        .get("/api/v1/storage/pools?project=team-x", Some(&teamer))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// `incus exec <inst> -- sh -c <script>`'s stdout.
fn exec_in(inst: &str, script: &str) -> String {
    incus_ok(&["exec", inst, "--", "sh", "-c", script])
}

/// A finished operation's answer (`?wait=` long enough): 200 and success.
#[track_caller]
fn assert_done(r: &crate::helpers::Reply, what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text);
    assert_eq!(r.body["status_code"], 200, "{what}: {}", r.text);
}

#[tokio::test]
async fn volume_snapshots_restores_and_copies() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let operator = app.user_with_role(&admin, "op", Some("operator")).await;
    let viewer = app.user_with_role(&admin, "viewer", Some("viewer")).await;
    let pool2 = unique("pool2");
    let (vol, across, fromsnap, adm, adm_copy, op_copy) = (
        unique("vol"),
        unique("across"),
        unique("fromsnap"),
        unique("adm"),
        unique("admcopy"),
        unique("opcopy"),
    );
    let inst = unique("volsnap");
    let source = tempfile::tempdir().expect("temp dir");
    let incus_dir = std::env::var("LXGATE_TEST_INCUS_DIR").unwrap();
    let default_custom = std::path::Path::new(&incus_dir).join("storage-pools/default/custom");
    // Instance first, then the volumes, then the second pool.
    let _undo = IncusUndo::new(&[
        &["storage", "volume", "delete", "default", &vol],
        &["storage", "volume", "delete", "default", &fromsnap],
        &["storage", "volume", "delete", "default", &adm],
        &["storage", "volume", "delete", "default", &adm_copy],
        &["storage", "volume", "delete", "default", &op_copy],
        &["storage", "volume", "delete", &pool2, &across],
        &["storage", "delete", &pool2],
    ]);
    let _instance = Cleanup(vec![("default".into(), inst.clone())]);

    // A second pool for copies across pools.
    let r = app
        .post(
            "/api/v1/storage/pools",
            Some(&admin),
            json!({"name": pool2, "driver": "dir", "config": {"source": source.path().display().to_string()}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let vols = "/api/v1/storage/pools/default/volumes";
    let r = app.post(vols, Some(&operator), json!({"name": vol})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // Data written through a running container.
    incus_ok(&["init", "busybox", &inst]);
    incus_ok(&[
        "storage",
        "volume",
        "attach",
        "default",
        &vol,
        &inst,
        "/mnt/data",
    ]);
    incus_ok(&["start", &inst]);
    exec_in(&inst, "echo v1 > /mnt/data/file");

    // Snapshots: named, then one Incus names.
    let snaps = format!("{vols}/{vol}/snapshots");
    app.post(&snaps, Some(&viewer), json!({"name": "s1"}))
        .await
        .assert_problem(403, "permission_denied");
    let r = app
        .post(&snaps, Some(&operator), json!({"name": "s1"}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("/api/v1/operations/")
    );
    let wait = app
        .get(
            &format!("{}?timeout=60", r.body["wait_url"].as_str().unwrap()),
            Some(&operator),
        )
        .await;
    assert_eq!(wait.body["status_code"], 200, "{}", wait.text);
    app.post(
        &format!("{snaps}?wait=60"),
        Some(&operator),
        json!({"name": "s1"}),
    )
    .await
    .assert_problem(409, "conflict");
    exec_in(&inst, "echo v2 > /mnt/data/file");
    let r = app
        .post(&format!("{snaps}?wait=60"), Some(&operator), json!({}))
        .await;
    assert_done(&r, "unnamed snapshot");
    let got = app.get(&format!("{snaps}/s1"), Some(&viewer)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["name"], "s1");
    assert_eq!(got.body["content_type"], "filesystem");
    assert_eq!(got.body["expires_at"], "0001-01-01T00:00:00Z");
    // The list reads like the item (Incus's own list says `vol/s1`, no
    // content type, a null expiry).
    let list = app.get(&snaps, Some(&viewer)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.body["total"], 2, "{}", list.text);
    let items = list.body["items"].as_array().unwrap();
    let s1 = items.iter().find(|s| s["name"] == "s1").expect("s1 listed");
    assert_eq!(s1["content_type"], "filesystem");
    assert_eq!(s1["expires_at"], "0001-01-01T00:00:00Z");
    let auto = items
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .find(|n| n != "s1")
        .unwrap();
    let list = app
        .get(&format!("{snaps}?expand=false"), Some(&viewer))
        .await;
    let mut names: Vec<String> = serde_json::from_value(list.body["items"].clone()).unwrap();
    names.sort();
    let mut want = vec!["s1".to_owned(), auto.clone()];
    want.sort();
    assert_eq!(names, want);

    // Restore: refused under a running instance; stopped, the data goes back.
    let restore = format!("{snaps}/s1/restore");
    app.post(&restore, Some(&operator), json!({}))
        .await
        .assert_problem(409, "conflict");
    app.post(
        &format!("{snaps}/nosuch/restore"),
        Some(&operator),
        json!({}),
    )
    .await
    .assert_problem(404, "volume_snapshot_not_found");
    incus_ok(&["stop", "--force", &inst]);
    let r = app
        .send(app.request(Method::POST, &restore, Some(&operator)))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    incus_ok(&["start", &inst]);
    assert_eq!(exec_in(&inst, "cat /mnt/data/file"), "v1\n");

    // Copies: the volume into the other pool, a snapshot within this one.
    let r = app
        .post(
            &format!("/api/v1/storage/pools/{pool2}/volumes?wait=60"),
            Some(&operator),
            json!({"name": across, "source": {"volume": vol, "pool": "default"}}),
        )
        .await;
    assert_done(&r, "copy across pools");
    let copied = source.path().join(format!("custom/default_{across}/file"));
    assert_eq!(std::fs::read_to_string(&copied).unwrap(), "v1\n");
    let r = app
        .post(
            &format!("{vols}?wait=60"),
            Some(&operator),
            json!({"name": fromsnap, "source": {"volume": vol, "snapshot": auto}}),
        )
        .await;
    assert_done(&r, "copy of a snapshot");
    let copied = default_custom.join(format!("default_{fromsnap}/file"));
    assert_eq!(std::fs::read_to_string(&copied).unwrap(), "v2\n");
    assert!(
        incus_ok(&[
            "storage", "volume", "snapshot", "list", "default", &fromsnap, "-f", "csv"
        ])
        .trim()
        .is_empty(),
        "a copy starts without snapshots"
    );
    app.post(
        vols,
        Some(&operator),
        json!({"name": "c2", "source": {"volume": "no-such-vol"}}),
    )
    .await
    .assert_problem(404, "volume_not_found");
    app.post(
        vols,
        Some(&operator),
        json!({"name": "c2", "source": {"volume": vol, "snapshot": "nosuch"}}),
    )
    .await
    .assert_problem(404, "volume_snapshot_not_found");
    app.post(
        &format!("{vols}?wait=60"),
        Some(&operator),
        json!({"name": fromsnap, "source": {"volume": vol}}),
    )
    .await
    .assert_problem(409, "conflict");

    // A copy cannot carry config an operator could not set: a volume an
    // admin made with `security.shifted` copies for admins only, or with
    // a config of the operator's own.
    let r = app
        .post(
            vols,
            Some(&admin),
            json!({"name": adm, "config": {"security.shifted": "true"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .post(
            vols,
            Some(&operator),
            json!({"name": op_copy, "source": {"volume": adm}}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "config.security.shifted");
    let r = app
        .post(
            vols,
            Some(&operator),
            json!({"name": op_copy, "source": {"volume": adm}, "config": {"security.shifted": "true"}}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    let r = app
        .post(
            &format!("{vols}?wait=60"),
            Some(&operator),
            json!({"name": op_copy, "source": {"volume": adm}, "config": {"user.mine": "1"}}),
        )
        .await;
    assert_done(&r, "operator copy with its own config");
    let got = app.get(&format!("{vols}/{op_copy}"), Some(&viewer)).await;
    assert_eq!(
        got.body["config"],
        json!({"user.mine": "1"}),
        "{}",
        got.text
    );
    let r = app
        .post(
            &format!("{vols}?wait=60"),
            Some(&admin),
            json!({"name": adm_copy, "source": {"volume": adm}}),
        )
        .await;
    assert_done(&r, "admin copy");
    assert_eq!(
        incus_ok(&[
            "storage",
            "volume",
            "get",
            "default",
            &adm_copy,
            "security.shifted"
        ])
        .trim(),
        "true"
    );

    // 404s, and deleting a snapshot.
    app.get(&format!("{snaps}/nosuch"), Some(&viewer))
        .await
        .assert_problem(404, "volume_snapshot_not_found");
    app.get(&format!("{vols}/no-such-vol/snapshots"), Some(&viewer))
        .await
        .assert_problem(404, "volume_not_found");
    let r = app
        .delete(&format!("{snaps}/s1?wait=60"), Some(&operator))
        .await;
    assert_done(&r, "snapshot delete");
    let list = app
        .get(&format!("{snaps}?expand=false"), Some(&viewer))
        .await;
    assert_eq!(list.body["items"], json!([auto]));
}

#[tokio::test]
async fn system_health_and_resources_on_incus() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let nobody = app.user_with_role(&admin, "nobody", None).await;
    let operator = app.user_with_role(&admin, "op", Some("operator")).await;
    let r = app.get("/api/v1/system/health", Some(&nobody)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "ok");
    assert_eq!(r.body["backend_kind"], "incus");
    for check in ["database", "backend"] {
        assert_eq!(r.body[check]["status"], "ok", "{}", r.text);
        assert!(r.body[check]["latency_ms"].as_f64().unwrap() >= 0.0);
    }
    app.get("/api/v1/system/resources", Some(&operator))
        .await
        .assert_problem(403, "permission_denied");
    let r = app.get("/api/v1/system/resources", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.body["cpu"]["total"].as_u64().unwrap() >= 1, "{}", r.text);
    assert!(
        !r.body["cpu"]["sockets"][0]["name"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let mem = &r.body["memory"];
    assert!(mem["total"].as_u64().unwrap() > 0);
    assert!(mem["used"].as_u64().unwrap() <= mem["total"].as_u64().unwrap());
    assert!(r.body["storage"]["total"].as_u64().is_some(), "{}", r.text);
    let pools = r.body["storage_pools"].as_array().unwrap();
    let default = pools
        .iter()
        .find(|p| p["name"] == "default")
        .expect("the default pool");
    assert_eq!(default["driver"], "dir");
    assert!(default["space"]["total"].as_u64().unwrap() > 0);
    // Only the fields lxgate publishes: Incus's flags and caches stay out.
    assert!(r.body["cpu"]["sockets"][0].get("cores").is_none());
    assert!(r.body.get("gpu").is_none());
}
