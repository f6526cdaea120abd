//! Publishing instances and snapshots as images, and exporting images, on
//! both backends: real LXC containers (the packed rootfs made into a new
//! container that sees the files, ids shifted back) and the test bed's
//! incusd.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::embedded::{Host, import_busybox};
use crate::helpers::*;
use crate::incus_images::{TestProject, import, upload_form};
use crate::incus_instances::{incus_app, unique};

async fn exec(app: &TestApp, token: &str, path: &str, script: &str) -> String {
    let r = app
        .post(
            &format!("{path}/exec?wait=30"),
            Some(token),
            json!({"command": ["sh", "-c", script]}),
        )
        .await;
    assert_eq!(r.body["metadata"]["exit_code"], 0, "{}", r.text);
    r.body["metadata"]["stdout"].as_str().unwrap().to_owned()
}

/// A finished operation (`?wait=`) that succeeded; its metadata.
fn succeeded(r: &Reply) -> Value {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    r.body["metadata"].clone()
}

/// `GET images/{fp}/export`: the content type and the raw bytes.
async fn export(app: &TestApp, token: &str, path: &str) -> (String, Vec<u8>) {
    let resp = app
        .request(Method::GET, path, Some(token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let len = resp.content_length();
    let body = resp.bytes().await.unwrap().to_vec();
    if let Some(len) = len {
        assert_eq!(len, body.len() as u64);
    }
    (ct, body)
}

/// The parts of a `multipart/form-data` body, by name, in order.
fn parts(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("a boundary")
        .trim_matches('"');
    let delim = format!("--{boundary}").into_bytes();
    let mut out = Vec::new();
    let mut rest = body;
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let start = find(rest, &delim).expect("a first boundary");
    rest = &rest[start + delim.len()..];
    while !rest.starts_with(b"--") {
        let head_end = find(rest, b"\r\n\r\n").expect("part headers");
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_owned();
        let data = &rest[head_end + 4..];
        let mut end_delim = b"\r\n".to_vec();
        end_delim.extend_from_slice(&delim);
        let end = find(data, &end_delim).expect("a closing boundary");
        out.push((name, data[..end].to_vec()));
        rest = &data[end + end_delim.len()..];
    }
    out
}

fn sha256(chunks: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for c in chunks {
        h.update(c);
    }
    hex::encode(h.finalize())
}

#[tokio::test]
async fn embedded_containers_and_snapshots_publish_as_images() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    let operator = app
        .user_with_role(&admin, "operator", Some("operator"))
        .await;
    import_busybox(&app, &admin).await;
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "c1", "source": {"type": "image", "alias": "busybox"}, "start": true}),
        )
        .await;
    succeeded(&r);
    // A file of the container's root and one of another user, as the
    // unprivileged container's ids (shifted on the host).
    exec(
        &app,
        &admin,
        "/api/v1/instances/c1",
        "echo published > /root/marker && mkdir -p /home/u && echo u > /home/u/f && chown -R 1000:1000 /home/u",
    )
    .await;

    // A running instance is not packed; operators may not publish.
    let publish = |token: String, source: Value, alias: &str| {
        let body = json!({"source": source, "aliases": [{"name": alias}],
                          "properties": {"description": "from c1"}});
        let app = &app;
        async move {
            app.post("/api/v1/images?wait=120", Some(&token), body)
                .await
        }
    };
    publish(
        admin.clone(),
        json!({"type": "instance", "name": "c1"}),
        "mine",
    )
    .await
    .assert_problem(409, "conflict");
    publish(
        operator.clone(),
        json!({"type": "instance", "name": "c1"}),
        "mine",
    )
    .await
    .assert_problem(403, "permission_denied");
    publish(
        admin.clone(),
        json!({"type": "snapshot", "name": "c1"}),
        "mine",
    )
    .await
    .assert_problem(422, "validation_failed");
    publish(
        admin.clone(),
        json!({"type": "instance", "name": "nope"}),
        "mine",
    )
    .await
    .assert_problem(404, "instance_not_found");

    // Stopped: published, with the properties given over the image's.
    let r = app
        .post("/api/v1/instances/c1/stop?wait=60", Some(&admin), json!({}))
        .await;
    succeeded(&r);
    let made = succeeded(
        &publish(
            admin.clone(),
            json!({"type": "instance", "name": "c1"}),
            "mine",
        )
        .await,
    );
    let fp = made["fingerprint"].as_str().unwrap().to_owned();
    let img = app.get(&format!("/api/v1/images/{fp}"), Some(&admin)).await;
    assert_eq!(img.status, StatusCode::OK, "{}", img.text);
    assert_eq!(img.body["type"], "container");
    assert_eq!(img.body["properties"]["description"], "from c1");
    assert_eq!(img.body["aliases"][0]["name"], "mine");

    // A new container from it has the files, owned as they were inside.
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "c2", "source": {"type": "image", "alias": "mine"}, "start": true}),
        )
        .await;
    succeeded(&r);
    let seen = exec(
        &app,
        &admin,
        "/api/v1/instances/c2",
        "cat /root/marker; stat -c '%u:%g' /root/marker /home/u/f",
    )
    .await;
    assert_eq!(seen, "published\n0:0\n1000:1000\n", "{seen}");

    // A snapshot publishes too (the instance may run meanwhile).
    let r = app
        .post(
            "/api/v1/instances/c1/snapshots?wait=60",
            Some(&admin),
            json!({"name": "s0"}),
        )
        .await;
    succeeded(&r);
    let from_snap = succeeded(
        &publish(
            admin.clone(),
            json!({"type": "snapshot", "name": "c1/s0"}),
            "snapped",
        )
        .await,
    );
    let snap_fp = from_snap["fingerprint"].as_str().unwrap();
    assert_ne!(snap_fp, fp, "a new image (another creation date)");
    publish(
        admin.clone(),
        json!({"type": "snapshot", "name": "c1/none"}),
        "x",
    )
    .await
    .assert_problem(404, "snapshot_not_found");

    // Export: the split image as multipart, which hashes to its
    // fingerprint and imports again as it is. Viewers may download.
    let viewer = app.user_with_role(&admin, "viewer", Some("viewer")).await;
    let (ct, body) = export(&app, &viewer, &format!("/api/v1/images/{fp}/export")).await;
    assert!(ct.starts_with("multipart/form-data; boundary="), "{ct}");
    let got = parts(&ct, &body);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["metadata", "rootfs"]);
    assert_eq!(sha256(&[&got[0].1, &got[1].1]), fp);
    let r = app
        .send(app.request(
            Method::DELETE,
            &format!("/api/v1/images/{fp}?wait=60"),
            Some(&admin),
        ))
        .await;
    succeeded(&r);
    let form = reqwest::multipart::Form::new()
        .part(
            "metadata",
            reqwest::multipart::Part::bytes(got[0].1.clone()).file_name("metadata"),
        )
        .part(
            "rootfs",
            reqwest::multipart::Part::bytes(got[1].1.clone()).file_name("rootfs"),
        );
    let fp_again = crate::embedded::upload_image(&app, &admin, form).await;
    assert_eq!(fp_again, fp);
    app.get("/api/v1/images/0000000000000000/export", Some(&admin))
        .await
        .assert_problem(404, "image_not_found");
}

#[tokio::test]
async fn incus_instances_and_snapshots_publish_as_images() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let project = TestProject::create();
    let q = format!("?project={}", project.name);
    let alias = unique("base");
    let r = import(
        &app,
        &admin,
        &format!("{q}&wait=120"),
        upload_form(Some(&alias), true).await,
    )
    .await;
    succeeded(&r);
    let name = unique("pub");
    let r = app
        .post(
            &format!("/api/v1/instances{q}&wait=120"),
            Some(&admin),
            json!({"name": name, "source": {"type": "image", "alias": alias}}),
        )
        .await;
    succeeded(&r);

    let mine = unique("mine");
    let made = succeeded(
        &app.post(
            &format!("/api/v1/images{q}&wait=120"),
            Some(&admin),
            json!({"source": {"type": "instance", "name": name},
                   "aliases": [{"name": mine}], "properties": {"description": "published"}}),
        )
        .await,
    );
    let fp = made["fingerprint"].as_str().unwrap().to_owned();
    let img = app
        .get(&format!("/api/v1/images/{fp}{q}"), Some(&admin))
        .await;
    assert_eq!(img.status, StatusCode::OK, "{}", img.text);
    assert_eq!(img.body["properties"]["description"], "published");
    assert_eq!(img.body["aliases"][0]["name"], mine.as_str());

    // From a snapshot, by `instance/snapshot`.
    let r = app
        .post(
            &format!("/api/v1/instances/{name}/snapshots{q}&wait=60"),
            Some(&admin),
            json!({"name": "s0"}),
        )
        .await;
    succeeded(&r);
    succeeded(
        &app.post(
            &format!("/api/v1/images{q}&wait=120"),
            Some(&admin),
            json!({"source": {"type": "snapshot", "name": format!("{name}/s0")}}),
        )
        .await,
    );
    app.post(
        &format!("/api/v1/images{q}&wait=120"),
        Some(&admin),
        json!({"source": {"type": "instance", "name": unique("nope")}}),
    )
    .await
    .assert_problem(404, "instance_not_found");

    // Export: what Incus sends (a unified tarball for a published image),
    // hashing to the fingerprint.
    let (ct, body) = export(&app, &admin, &format!("/api/v1/images/{fp}/export{q}")).await;
    if ct.starts_with("multipart/form-data") {
        let got = parts(&ct, &body);
        assert_eq!(sha256(&[&got[0].1, &got[1].1]), fp);
    } else {
        assert_eq!(sha256(&[&body]), fp, "{ct}");
    }
    let r = app
        .send(app.request(
            Method::DELETE,
            &format!("/api/v1/instances/{name}{q}&wait=60"),
            Some(&admin),
        ))
        .await;
    succeeded(&r);
}

/// A VM published on the embedded backend: its whole disk as a standalone
/// qcow2 (as it is, or as a snapshot had it), which makes new VMs that run
/// and exports as the split format; a VM booting a kernel, its kernel and
/// initrd. The VM's disk is QEMU's while it runs: 409.
#[tokio::test]
async fn embedded_virtual_machines_publish_as_images() {
    use crate::embedded::{action, create, env, import_vm_image, qemu_io, status, upload_image};
    use reqwest::multipart::{Form, Part};

    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    let form = Form::new()
        .part(
            "metadata",
            Part::file(env("LXGATE_TEST_VM_META")).await.unwrap(),
        )
        .part(
            "rootfs.img",
            Part::file(env("LXGATE_TEST_VM_DISK")).await.unwrap(),
        )
        .text("alias", "diskvm");
    let base = upload_image(&app, &admin, form).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "d1", "type": "virtual-machine", "source": {"type": "image", "alias": "diskvm"},
               "config": {"limits.memory": "128MiB"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let disk = host.data().join("vms/default_d1/root.qcow2");
    qemu_io(&disk, "write -P 0x11 0 64k");
    let r = app
        .post(
            "/api/v1/instances/d1/snapshots?wait=60",
            Some(&admin),
            json!({"name": "s0"}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    qemu_io(&disk, "write -P 0x22 0 64k");

    let publish = |source: Value, alias: &'static str| {
        let app = &app;
        let admin = admin.clone();
        async move {
            app.post(
                "/api/v1/images?wait=120",
                Some(&admin),
                json!({"source": source, "aliases": [{"name": alias}],
                       "properties": {"description": "from d1"}}),
            )
            .await
        }
    };
    let mut published = Vec::new();
    for (source, alias, pattern) in [
        (json!({"type": "instance", "name": "d1"}), "d1-now", "0x22"),
        (
            json!({"type": "snapshot", "name": "d1/s0"}),
            "d1-s0",
            "0x11",
        ),
    ] {
        let fp = succeeded(&publish(source, alias).await)["fingerprint"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_ne!(fp, base);
        let img = app.get(&format!("/api/v1/images/{fp}"), Some(&admin)).await;
        assert_eq!(img.body["type"], "virtual-machine", "{}", img.text);
        assert_eq!(
            img.body["properties"]["description"], "from d1",
            "{}",
            img.text
        );
        // A disk of its own: the image's data in it, no backing file.
        let stored = host.data().join("images").join(&fp).join("rootfs");
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&stored)
            .output()
            .unwrap();
        let info: Value = serde_json::from_slice(&info.stdout).unwrap();
        assert!(info.get("backing-filename").is_none(), "{alias}: {info}");
        let read = qemu_io(&stored, &format!("read -P {pattern} 0 64k"));
        assert!(!read.contains("verification failed"), "{alias}: {read}");
        // Exported as the split format, with the published fingerprint.
        let (ct, body) = export(&app, &admin, &format!("/api/v1/images/{fp}/export")).await;
        let got = parts(&ct, &body);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["metadata", "rootfs.img"]);
        assert_eq!(sha256(&[&got[0].1, &got[1].1]), fp);
        published.push(fp);
    }
    // The published disk makes a VM that runs.
    let r = create(
        &app,
        &admin,
        json!({"name": "p1", "type": "virtual-machine", "source": {"type": "image", "alias": "d1-s0"},
               "config": {"limits.memory": "128MiB"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let read = qemu_io(
        &host.data().join("vms/default_p1/root.qcow2"),
        "read -P 0x11 0 64k",
    );
    assert!(!read.contains("verification failed"), "{read}");
    action(&app, &admin, "p1", "start").await;
    assert_eq!(status(&app, &admin, "p1").await, "Running");

    // Running: neither it nor its snapshots are read.
    action(&app, &admin, "d1", "start").await;
    for source in [
        json!({"type": "instance", "name": "d1"}),
        json!({"type": "snapshot", "name": "d1/s0"}),
    ] {
        publish(source, "busy")
            .await
            .assert_problem(409, "conflict");
    }

    // A VM that boots a kernel: its kernel and initrd become the image.
    import_vm_image(&app, &admin, host.data().parent().unwrap()).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "k1", "type": "virtual-machine", "source": {"type": "image", "alias": "tinyvm"},
               "config": {"limits.memory": "192MiB"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let fp = succeeded(&publish(json!({"type": "instance", "name": "k1"}), "k1-img").await)
        ["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let kernel = std::fs::read(env("LXGATE_TEST_VM_KERNEL")).unwrap();
    let stored = host.data().join("images").join(&fp).join("boot/kernel");
    assert_eq!(std::fs::read(&stored).unwrap(), kernel);
    let r = create(
        &app,
        &admin,
        json!({"name": "k2", "type": "virtual-machine", "source": {"type": "image", "alias": "k1-img"},
               "config": {"limits.memory": "192MiB"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    action(&app, &admin, "k2", "start").await;
    assert_eq!(status(&app, &admin, "k2").await, "Running");
}
