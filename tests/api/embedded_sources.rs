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
