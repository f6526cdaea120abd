//! Where a new instance comes from, on the embedded backend with real LXC
//! and QEMU: an image pulled from a simplestreams server in the create, and
//! an empty virtual machine (`none`).

use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;

use crate::embedded::{Host, action, create, simplestreams_server, status};

#[tokio::test]
async fn a_container_is_launched_from_a_simplestreams_server() {
    let host = Host::new();
    let (server, fp) = simplestreams_server(None).await;
    let app = host.app_allowing(&[&server]).await;
    let admin = app.admin_token().await;
    let operator = app.user_with_role(&admin, "puller", Some("operator")).await;

    // An operator may launch from a server on the allow list; the image
    // lands in the project's store on the way.
    let r = create(
        &app,
        &operator,
        json!({"name": "pulled", "source": {"type": "image", "server": server,
               "protocol": "simplestreams", "alias": "busybox/test"}, "start": true}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(status(&app, &operator, "pulled").await, "Running");
    let inst = app.get("/api/v1/instances/pulled", Some(&operator)).await;
    assert_eq!(
        inst.body["config"]["volatile.base_image"],
        fp.as_str(),
        "{}",
        inst.text
    );
    assert_eq!(inst.body["config"]["image.os"], "busybox", "{}", inst.text);
    let img = app.get(&format!("/api/v1/images/{fp}"), Some(&admin)).await;
    assert_eq!(img.status, StatusCode::OK, "{}", img.text);
    assert_eq!(host.lxc_state("default", "pulled"), "RUNNING");
    action(&app, &operator, "pulled", "stop").await;

    // Once the image is here, a second launch takes it from the store.
    let r = create(
        &app,
        &operator,
        json!({"name": "again", "source": {"type": "image", "server": server,
               "protocol": "simplestreams", "fingerprint": &fp[..16]}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);

    // An alias the server does not have: the operation fails naming it, and
    // nothing of the instance is left.
    let r = create(
        &app,
        &operator,
        json!({"name": "missing", "source": {"type": "image", "server": server,
               "protocol": "simplestreams", "alias": "nope/1"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 400, "{}", r.text);
    assert!(
        r.body["err"].as_str().unwrap().contains("nope/1"),
        "{}",
        r.text
    );
    let gone = app.get("/api/v1/instances/missing", Some(&operator)).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text);
    assert!(!host.lxcpath().join("default_missing").exists());

    // The Incus protocol is the Incus backend's; servers off the allow
    // list are refused before anything is fetched.
    let r = app
        .post(
            "/api/v1/instances",
            Some(&operator),
            json!({"name": "proto", "source": {"type": "image", "server": server,
                   "protocol": "incus", "alias": "busybox/test"}}),
        )
        .await;
    r.assert_problem(501, "not_supported");
    let r = app
        .post(
            "/api/v1/instances",
            Some(&operator),
            json!({"name": "meta", "source": {"type": "image", "server": "https://169.254.169.254/",
                   "protocol": "simplestreams", "alias": "busybox/test"}}),
        )
        .await;
    r.assert_problem(400, "could_not_fetch");
}

#[tokio::test]
async fn an_empty_virtual_machine_boots_its_blank_disk() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    let r = create(
        &app,
        &admin,
        json!({"name": "blank", "type": "virtual-machine", "source": {"type": "none"},
               "config": {"limits.memory": "128MiB"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let inst = app.get("/api/v1/instances/blank", Some(&admin)).await;
    assert_eq!(inst.body["type"], "virtual-machine", "{}", inst.text);
    assert!(
        inst.body["config"].get("volatile.base_image").is_none(),
        "{}",
        inst.text
    );
    // A qcow2 of the default 10 GiB, with no backing file.
    let disk = host.data().join("vms/default_blank/root.qcow2");
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&disk)
        .output()
        .expect("qemu-img runs");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("qemu-img JSON");
    assert_eq!(info["virtual-size"], 10u64 << 30, "{info}");
    assert!(info.get("backing-filename").is_none(), "{info}");
    // QEMU runs it (the firmware finds nothing to boot, and waits).
    action(&app, &admin, "blank", "start").await;
    assert_eq!(status(&app, &admin, "blank").await, "Running");
    let r = app
        .delete("/api/v1/instances/blank?force=true&wait=60", Some(&admin))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    assert!(!host.data().join("vms/default_blank").exists());

    // Containers need something to run.
    let r = app
        .post(
            "/api/v1/instances",
            Some(&admin),
            json!({"name": "nothing", "source": {"type": "none"}}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "type", "{}", r.text);
}

/// Snapshots, backups and volume snapshots past their `expires_at` go, as
/// in Incus; those without one stay.
#[tokio::test]
async fn what_expires_is_deleted_when_it_is_due() {
    use crate::embedded::import_busybox;

    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "e1", "source": {"type": "image", "alias": "busybox"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let r = app
        .post(
            "/api/v1/storage/pools/default/volumes",
            Some(&admin),
            json!({"name": "ev"}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::seconds(4))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    for (path, body) in [
        (
            "/api/v1/instances/e1/snapshots",
            json!({"name": "gone", "expires_at": soon}),
        ),
        ("/api/v1/instances/e1/snapshots", json!({"name": "kept"})),
        (
            "/api/v1/instances/e1/backups",
            json!({"name": "gone", "expires_at": soon}),
        ),
        ("/api/v1/instances/e1/backups", json!({"name": "kept"})),
        (
            "/api/v1/storage/pools/default/volumes/ev/snapshots",
            json!({"name": "gone", "expires_at": soon}),
        ),
        (
            "/api/v1/storage/pools/default/volumes/ev/snapshots",
            json!({"name": "kept"}),
        ),
    ] {
        let r = app
            .post(&format!("{path}?wait=60"), Some(&admin), body)
            .await;
        assert_eq!(r.body["status_code"], 200, "{path}: {}", r.text);
    }
    let lists = [
        "/api/v1/instances/e1/snapshots?expand=false",
        "/api/v1/instances/e1/backups?expand=false",
        "/api/v1/storage/pools/default/volumes/ev/snapshots?expand=false",
    ];
    let names = |r: &crate::helpers::Reply| -> Vec<String> {
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    for list in lists {
        let r = app.get(list, Some(&admin)).await;
        assert_eq!(names(&r), ["gone", "kept"], "before: {list}: {}", r.text);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for list in lists {
        loop {
            let r = app.get(list, Some(&admin)).await;
            if names(&r) == ["kept"] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not expired: {list}: {}",
                r.text
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}
