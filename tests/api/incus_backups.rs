//! Instance backups through lxgate in front of the real private incusd:
//! create, list, read, export (streamed; checked with `tar`), delete.

use std::io::Write;
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::incus_instances::{Cleanup, incus_app, unique};
use crate::incus_snapshots::{container, finish, incus_query};

#[tokio::test]
async fn backup_create_export_delete() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let viewer = app.user_with_role(&admin, "viewer", Some("viewer")).await;
    let name = unique("bak");
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);
    container(&app, &admin, &name, false).await;
    let base = format!("/api/v1/instances/{name}/backups");

    let r = app
        .post(
            &base,
            Some(&admin),
            json!({"name": "bk-one", "compression_algorithm": "gzip", "instance_only": true,
                   "expires_at": "2099-01-01T00:00:00Z"}),
        )
        .await;
    finish(&app, &admin, &r).await;

    let list = app.get(&base, Some(&viewer)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.body["total"], 1);
    assert_eq!(list.body["items"][0]["name"], "bk-one");
    assert_eq!(list.body["items"][0]["instance_only"], true);
    let names = app.get(&format!("{base}?expand=false"), Some(&admin)).await;
    assert_eq!(names.body["items"], json!(["bk-one"]));
    let got = app.get(&format!("{base}/bk-one"), Some(&viewer)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["name"], "bk-one");
    assert!(incus_query(&format!("/1.0/instances/{name}/backups/bk-one")).is_some());

    // Export: streamed to a file chunk by chunk, then read by `tar`. The
    // client accepts gzip, yet the tarball comes as it is, with its length.
    let mut resp = app
        .request(Method::GET, &format!("{base}/bk-one/export"), Some(&admin))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("export reaches the server");
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/octet-stream");
    assert!(h.get("content-encoding").is_none(), "{h:?}");
    assert_eq!(
        h["content-disposition"],
        format!("attachment; filename=\"{name}-bk-one.tar.gz\"").as_str()
    );
    let length: u64 = h["content-length"].to_str().unwrap().parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.tar.gz");
    let mut out = std::fs::File::create(&file).unwrap();
    let mut received = 0u64;
    while let Some(chunk) = resp.chunk().await.expect("export body") {
        received += chunk.len() as u64;
        out.write_all(&chunk).unwrap();
    }
    drop(out);
    assert_eq!(received, length, "Content-Length matches the body");
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(&file)
        .output()
        .expect("tar runs");
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let entries = String::from_utf8_lossy(&listing.stdout);
    assert!(
        entries.lines().any(|l| l == "backup/index.yaml"),
        "{entries}"
    );

    // A viewer may list and read, not export, create or delete.
    for r in [
        app.get(&format!("{base}/bk-one/export"), Some(&viewer))
            .await,
        app.post(&base, Some(&viewer), json!({})).await,
        app.send(app.request(Method::DELETE, &format!("{base}/bk-one"), Some(&viewer)))
            .await,
    ] {
        r.assert_problem(403, "permission_denied");
        assert_eq!(r.body["permission"], "project:operate");
    }

    // Errors.
    app.get(&format!("{base}/no-such-backup"), Some(&admin))
        .await
        .assert_problem(404, "backup_not_found");
    app.get(&format!("{base}/no-such-backup/export"), Some(&admin))
        .await
        .assert_problem(404, "backup_not_found");
    app.get(&format!("{base}/bad_name/export"), Some(&admin))
        .await
        .assert_problem(400, "invalid_name");
    for (body, field) in [
        (json!({"name": "bad_name"}), "name"),
        (
            json!({"compression_algorithm": "rm -rf"}),
            "compression_algorithm",
        ),
        (json!({"expires_at": "soon"}), "expires_at"),
    ] {
        let r = app.post(&base, Some(&admin), body).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["field"], field);
    }
    app.post(
        "/api/v1/instances/no-such-instance/backups",
        Some(&admin),
        json!({}),
    )
    .await
    .assert_problem(404, "instance_not_found");

    // Delete: gone here and on Incus.
    let r = app
        .send(app.request(
            Method::DELETE,
            &format!("{base}/bk-one?wait=60"),
            Some(&admin),
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    app.get(&format!("{base}/bk-one"), Some(&admin))
        .await
        .assert_problem(404, "backup_not_found");
    assert!(incus_query(&format!("/1.0/instances/{name}/backups/bk-one")).is_none());
}
