//! Images and image aliases through lxgate in front of the real private
//! incusd: upload (multipart, streamed), copy from a remote server, aliases,
//! instances from an uploaded image, delete. Everything is made in a project
//! of the test's own (`features.images=true`), so the shared `busybox` image
//! of `default` is never touched.

use std::path::PathBuf;
use std::process::{Command, Output};

use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;
use crate::incus_instances::{incus_app, unique};

fn incus_dir() -> String {
    std::env::var("LXGATE_TEST_INCUS_DIR")
        .expect("LXGATE_TEST_INCUS_DIR (source target/testbed.env)")
}

fn incus(args: &[&str]) -> Output {
    Command::new("incus")
        .args(args)
        .env("INCUS_DIR", incus_dir())
        .output()
        .expect("incus runs")
}

/// `incus ... --format json`, parsed.
pub fn incus_json(args: &[&str]) -> Value {
    let out = incus(args);
    assert!(
        out.status.success(),
        "incus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("incus prints JSON")
}

pub fn image_files() -> (PathBuf, PathBuf) {
    let meta = std::env::var("LXGATE_TEST_INCUS_IMAGE_META")
        .expect("LXGATE_TEST_INCUS_IMAGE_META (source target/testbed.env)");
    let rootfs = std::env::var("LXGATE_TEST_INCUS_IMAGE_ROOTFS")
        .expect("LXGATE_TEST_INCUS_IMAGE_ROOTFS (source target/testbed.env)");
    (meta.into(), rootfs.into())
}

/// Incus's fingerprint of a split image: SHA-256 of metadata then rootfs.
fn expected_fingerprint() -> String {
    let (meta, rootfs) = image_files();
    let mut h = Sha256::new();
    h.update(std::fs::read(meta).unwrap());
    h.update(std::fs::read(rootfs).unwrap());
    hex::encode(h.finalize())
}

/// A project of the test's own, with its own image store (and the default
/// project's profiles, so instances get a root disk). Dropping it removes,
/// in order, its instances, its images (and so their aliases) and itself,
/// also when the test failed half-way.
pub struct TestProject {
    pub name: String,
}

impl TestProject {
    pub fn create() -> Self {
        let name = unique("img");
        let out = incus(&[
            "project",
            "create",
            &name,
            "-c",
            "features.images=true",
            "-c",
            "features.profiles=false",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }

    fn images(&self) -> Vec<Value> {
        incus_json(&["image", "list", "--project", &self.name, "--format", "json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for TestProject {
    fn drop(&mut self) {
        let p = self.name.as_str();
        let list = |args: &[&str]| -> Vec<Value> {
            let out = incus(args);
            serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
        };
        for i in list(&["list", "--project", p, "--format", "json"]) {
            if let Some(n) = i["name"].as_str() {
                let _ = incus(&["delete", "--force", "--project", p, n]);
            }
        }
        for i in list(&["image", "list", "--project", p, "--format", "json"]) {
            if let Some(fp) = i["fingerprint"].as_str() {
                let _ = incus(&["image", "delete", "--project", p, fp]);
            }
        }
        let _ = incus(&["project", "delete", p]);
    }
}

pub async fn upload_form(alias: Option<&str>, metadata_first: bool) -> Form {
    let (meta, rootfs) = image_files();
    let meta = Part::file(meta).await.expect("metadata tarball");
    let rootfs = Part::file(rootfs).await.expect("rootfs tarball");
    let form = if metadata_first {
        Form::new().part("metadata", meta).part("rootfs", rootfs)
    } else {
        Form::new().part("rootfs", rootfs).part("metadata", meta)
    };
    let form = form.text("public", "false");
    match alias {
        Some(a) => form.text("alias", a.to_owned()),
        None => form,
    }
}

pub async fn import(app: &TestApp, token: &str, query: &str, form: Form) -> Reply {
    app.send(
        app.request(
            Method::POST,
            &format!("/api/v1/images/import{query}"),
            Some(token),
        )
        .multipart(form),
    )
    .await
}

/// No spooled upload is left behind in DATA_DIR/tmp.
fn assert_spool_empty(app: &TestApp) {
    let dir = app.config.data_dir.join("tmp");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "spooled files left behind: {left:?}");
}

/// Polls an operation until it is done. (Not `/wait`: Incus 6.0 answers a
/// wait on a failed operation with an error instead of the operation.)
pub async fn finished(app: &TestApp, token: &str, poll_url: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = app.get(poll_url, Some(token)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if r.body["status_code"].as_i64() != Some(103) {
            return r.body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {}",
            r.text
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn names(r: &Reply) -> Vec<String> {
    r.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {}", r.text))
        .iter()
        .map(|i| {
            i.as_str()
                .map(str::to_owned)
                .or_else(|| i["name"].as_str().map(str::to_owned))
                .or_else(|| i["fingerprint"].as_str().map(str::to_owned))
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn upload_alias_instance_and_delete() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let viewer = app.user_with_role(&admin, "viewer", Some("viewer")).await;
    let project = TestProject::create();
    let p = project.name.clone();
    let q = format!("?project={p}");
    let alias = unique("up");
    let fp = expected_fingerprint();

    // A viewer may not upload. (A small body: lxgate answers before reading
    // it, and a client still sending a large one may see the connection
    // close instead of the answer.)
    let tiny = Form::new()
        .part("metadata", Part::bytes(b"m".to_vec()).file_name("m"))
        .part("rootfs", Part::bytes(b"r".to_vec()).file_name("r"));
    let r = import(&app, &viewer, &q, tiny).await;
    r.assert_problem(403, "permission_denied");
    assert_eq!(r.body["permission"], "images:manage");

    // Upload: 202 + operation, then the operation finishes.
    let r = import(&app, &admin, &q, upload_form(Some(&alias), true).await).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let poll = r.body["poll_url"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location"), Some(poll.as_str()));
    let done = app
        .get(
            &format!("{}?timeout=120", r.body["wait_url"].as_str().unwrap()),
            Some(&admin),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert_eq!(done.body["status_code"], 200, "{}", done.text);
    assert_eq!(
        done.body["metadata"]["fingerprint"],
        fp.as_str(),
        "{}",
        done.text
    );
    assert_spool_empty(&app);

    // Incus has it, in the test's project, with the alias.
    let images = project.images();
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0]["fingerprint"], fp.as_str());
    assert_eq!(images[0]["aliases"][0]["name"], alias.as_str());
    assert_eq!(images[0]["type"], "container");

    // Read back through lxgate (also by prefix, also as a viewer).
    let list = app.get(&format!("/api/v1/images{q}"), Some(&viewer)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.body["total"], 1, "{}", list.text);
    assert_eq!(list.body["items"][0]["fingerprint"], fp.as_str());
    let list = app
        .get(&format!("/api/v1/images{q}&expand=false"), Some(&admin))
        .await;
    assert_eq!(list.body["items"], json!([fp]), "{}", list.text);
    let got = app
        .get(&format!("/api/v1/images/{}{q}", &fp[..12]), Some(&viewer))
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["fingerprint"], fp.as_str());
    assert_eq!(got.body["aliases"][0]["name"], alias.as_str());
    assert_eq!(got.body["type"], "container");
    assert_eq!(got.body["architecture"], "x86_64");
    assert!(got.body["size"].as_i64().unwrap() > 0);

    // The same image again (parts in the other order, so lxgate hashes the
    // spooled files afterwards): refused before anything reaches Incus.
    let r = import(&app, &admin, &q, upload_form(None, false).await).await;
    r.assert_problem(409, "image_exists");
    assert_spool_empty(&app);

    // Aliases: create (by fingerprint prefix), list, read, conflict, delete.
    let second = unique("second");
    let r = app
        .post(
            &format!("/api/v1/images/aliases{q}"),
            Some(&admin),
            json!({"name": second, "target": &fp[..16], "description": "another name"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["target"], fp.as_str());
    assert_eq!(r.body["description"], "another name");
    assert_eq!(
        r.header("location"),
        Some(format!("/api/v1/images/aliases/{second}").as_str())
    );
    let aliases = app
        .get(&format!("/api/v1/images/aliases{q}"), Some(&viewer))
        .await;
    assert_eq!(aliases.status, StatusCode::OK, "{}", aliases.text);
    let mut got_names = names(&aliases);
    got_names.sort();
    let mut want = vec![alias.clone(), second.clone()];
    want.sort();
    assert_eq!(got_names, want);
    let short = app
        .get(
            &format!("/api/v1/images/aliases{q}&expand=false"),
            Some(&admin),
        )
        .await;
    assert!(
        short.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(Value::is_string),
        "{}",
        short.text
    );
    let one = app
        .get(
            &format!("/api/v1/images/aliases/{second}{q}"),
            Some(&viewer),
        )
        .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    assert_eq!(one.body["target"], fp.as_str());
    app.post(
        &format!("/api/v1/images/aliases{q}"),
        Some(&admin),
        json!({"name": second, "target": fp}),
    )
    .await
    .assert_problem(409, "alias_exists");
    app.post(
        &format!("/api/v1/images/aliases{q}"),
        Some(&admin),
        json!({"name": unique("nothing"), "target": "0".repeat(64)}),
    )
    .await
    .assert_problem(404, "image_not_found");
    let r = app
        .post(
            &format!("/api/v1/images/aliases{q}"),
            Some(&viewer),
            json!({"name": unique("nope"), "target": fp}),
        )
        .await;
    r.assert_problem(403, "permission_denied");
    let del_alias = |token: &str, name: &str| {
        app.request(
            Method::DELETE,
            &format!("/api/v1/images/aliases/{name}{q}"),
            Some(token),
        )
    };
    app.send(del_alias(&viewer, &second))
        .await
        .assert_problem(403, "permission_denied");
    let r = app.send(del_alias(&admin, &second)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    app.send(del_alias(&admin, &second))
        .await
        .assert_problem(404, "alias_not_found");
    let in_incus = incus_json(&[
        "image",
        "alias",
        "list",
        "--project",
        &p,
        "--format",
        "json",
    ]);
    let in_incus: Vec<&str> = in_incus
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(in_incus, vec![alias.as_str()]);

    // An instance from the uploaded image, by fingerprint.
    let name = unique("from-upload");
    let made = app
        .post(
            &format!("/api/v1/instances{q}&wait=120"),
            Some(&admin),
            json!({"name": name, "source": {"type": "image", "fingerprint": fp}}),
        )
        .await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.text);
    assert_eq!(made.body["status_code"], 200, "{}", made.text);
    let inst = app
        .get(&format!("/api/v1/instances/{name}{q}"), Some(&admin))
        .await;
    assert_eq!(inst.status, StatusCode::OK, "{}", inst.text);
    assert_eq!(inst.body["config"]["volatile.base_image"], fp.as_str());
    let gone = app
        .send(app.request(
            Method::DELETE,
            &format!("/api/v1/instances/{name}{q}&wait=60"),
            Some(&admin),
        ))
        .await;
    assert_eq!(gone.body["status_code"], 200, "{}", gone.text);

    // Delete the image: viewers may not; admins get an operation.
    let del = |token: &str, query: &str| {
        app.request(
            Method::DELETE,
            &format!("/api/v1/images/{fp}{query}"),
            Some(token),
        )
    };
    let r = app.send(del(&viewer, &q)).await;
    r.assert_problem(403, "permission_denied");
    assert_eq!(r.body["permission"], "images:manage");
    let r = app.send(del(&admin, &format!("{q}&wait=60"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert!(project.images().is_empty(), "{:?}", project.images());
    app.get(&format!("/api/v1/images/{fp}{q}"), Some(&admin))
        .await
        .assert_problem(404, "image_not_found");
    app.send(del(&admin, &q))
        .await
        .assert_problem(404, "image_not_found");
    // Its alias went with it; the default project's images are untouched.
    assert!(
        incus_json(&[
            "image",
            "alias",
            "list",
            "--project",
            &p,
            "--format",
            "json"
        ])
        .as_array()
        .unwrap()
        .is_empty()
    );
    let shared =
        std::env::var("LXGATE_TEST_INCUS_IMAGE_ALIAS").unwrap_or_else(|_| "busybox".into());
    let r = app
        .get(&format!("/api/v1/images/aliases/{shared}"), Some(&admin))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn broken_uploads_are_refused_and_leave_nothing_behind() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let (meta, rootfs) = image_files();
    let meta_bytes = std::fs::read(&meta).unwrap();
    let rootfs_bytes = std::fs::read(&rootfs).unwrap();
    let part = |b: &[u8], name: &str| Part::bytes(b.to_vec()).file_name(name.to_owned());

    // Not multipart at all.
    let r = app
        .post(
            "/api/v1/images/import",
            Some(&admin),
            json!({"metadata": "x"}),
        )
        .await;
    r.assert_problem(415, "unsupported_media_type");

    let cases: Vec<(Form, &str)> = vec![
        (
            Form::new().part("metadata", part(&meta_bytes, "m.tar.xz")),
            "rootfs",
        ),
        (
            Form::new().part("rootfs", part(&rootfs_bytes, "r.tar.xz")),
            "metadata",
        ),
        (
            Form::new()
                .part("metadata", part(&meta_bytes, "m"))
                .part("rootfs", part(&[], "r")),
            "rootfs",
        ),
        (
            Form::new()
                .part("metadata", part(&meta_bytes, "m"))
                .part("kernel", part(b"x", "k")),
            "kernel",
        ),
        (
            Form::new()
                .part("metadata", part(b"not a tarball", "m"))
                .part("rootfs", part(&rootfs_bytes, "r")),
            "metadata",
        ),
        (
            Form::new()
                .part("metadata", part(&meta_bytes, "m"))
                .part("rootfs", part(b"not an archive or a disk", "r")),
            "rootfs",
        ),
        (
            Form::new()
                .part("metadata", part(&meta_bytes, "m"))
                .part("metadata", part(&meta_bytes, "m")),
            "metadata",
        ),
        (
            Form::new()
                .part("metadata", part(&meta_bytes, "m"))
                .part("rootfs", part(&rootfs_bytes, "r"))
                .text("alias", "has space"),
            "alias",
        ),
        (
            Form::new()
                .part("metadata", part(&meta_bytes, "m"))
                .part("rootfs", part(&rootfs_bytes, "r"))
                .text("alias", "a/b"),
            "alias",
        ),
        (
            Form::new()
                .part("metadata", part(&meta_bytes, "m"))
                .part("rootfs", part(&rootfs_bytes, "r"))
                .text("public", "maybe"),
            "public",
        ),
    ];
    for (form, field) in cases {
        let r = import(&app, &admin, "", form).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["field"], field, "{}", r.text);
        assert_spool_empty(&app);
    }

    // An existing alias is refused before the upload goes to Incus.
    let shared =
        std::env::var("LXGATE_TEST_INCUS_IMAGE_ALIAS").unwrap_or_else(|_| "busybox".into());
    let form = Form::new()
        // Not the shared image (another fingerprint), but valid tarballs.
        .part("metadata", part(&rootfs_bytes, "m"))
        .part("rootfs", part(&meta_bytes, "r"))
        .text("alias", shared);
    import(&app, &admin, "", form)
        .await
        .assert_problem(409, "alias_exists");
    assert_spool_empty(&app);

    // A tarball without metadata.yaml: Incus takes the upload, then the
    // operation fails, and nothing is left anywhere.
    let before = incus_json(&["image", "list", "--format", "json"])
        .as_array()
        .map_or(0, Vec::len);
    let form = Form::new()
        .part("metadata", part(&rootfs_bytes, "m.tar.xz"))
        .part("rootfs", part(&rootfs_bytes, "r.tar.xz"));
    let r = import(&app, &admin, "", form).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_spool_empty(&app);
    let op = finished(&app, &admin, r.body["poll_url"].as_str().unwrap()).await;
    assert_eq!(op["status_code"], 400, "{op}");
    assert!(
        op["err"]
            .as_str()
            .unwrap_or_default()
            .contains("metadata.yaml"),
        "{op}"
    );
    let after = incus_json(&["image", "list", "--format", "json"])
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(before, after);

    // Paths: fingerprints are lowercase hex, aliases have no '/' or spaces.
    for bad in ["XYZ", "ABCDEF", "a72g", &"0".repeat(65)] {
        app.get(&format!("/api/v1/images/{bad}"), Some(&admin))
            .await
            .assert_problem(400, "invalid_name");
    }
    app.get(&format!("/api/v1/images/{}", "0".repeat(64)), Some(&admin))
        .await
        .assert_problem(404, "image_not_found");
    for bad in ["a%2Fb", "a%20b", "a%09b"] {
        app.send(app.request(
            Method::DELETE,
            &format!("/api/v1/images/aliases/{bad}"),
            Some(&admin),
        ))
        .await
        .assert_problem(400, "invalid_name");
    }
    app.get("/api/v1/images/aliases/no-such-alias-here", Some(&admin))
        .await
        .assert_problem(404, "alias_not_found");
    let r = app
        .post(
            "/api/v1/images/aliases",
            Some(&admin),
            json!({"name": "ok", "target": "NOT-HEX"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "target");
    let r = app
        .post(
            "/api/v1/images/aliases",
            Some(&admin),
            json!({"name": "a b", "target": "abc"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "name");
}

#[tokio::test]
async fn copy_from_a_remote_server() {
    // A port nothing listens on, on the allow list so that Incus is asked
    // to fetch from it (and fails).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let allow = format!("127.0.0.1:{closed}");
    let mut vars = crate::incus_transport::suite_env();
    vars.push(("IMAGE_SERVER_ALLOWLIST".into(), allow));
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = spawn_app_with(Db::Sqlite, &pairs).await;
    let admin = app.admin_token().await;
    let viewer = app.user_with_role(&admin, "viewer", Some("viewer")).await;
    let server = format!("https://127.0.0.1:{closed}");
    let before = incus_json(&["image", "list", "--format", "json"])
        .as_array()
        .map_or(0, Vec::len);

    let body = |protocol: &str| {
        json!({"source": {"server": server, "protocol": protocol, "alias": "debian/12"},
               "aliases": [{"name": unique("copied")}]})
    };
    app.post("/api/v1/images", Some(&viewer), body("simplestreams"))
        .await
        .assert_problem(403, "permission_denied");

    // An unreachable server: 202, then the operation fails and says why.
    for protocol in ["simplestreams", "incus"] {
        let r = app
            .post("/api/v1/images", Some(&admin), body(protocol))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{protocol}: {}", r.text);
        let op = finished(&app, &admin, r.body["poll_url"].as_str().unwrap()).await;
        assert_eq!(op["status_code"], 400, "{protocol}: {op}");
        assert!(
            !op["err"].as_str().unwrap_or_default().is_empty(),
            "{protocol}: {op}"
        );
    }
    // Addresses lxgate refuses are refused before Incus hears of them, in
    // words that do not tell an open port from a closed one.
    for server in [
        format!("https://127.0.0.1:{}", closed + 1),
        "https://169.254.169.254/".to_owned(),
        "https://[::1]:8443/".to_owned(),
    ] {
        let r = app
            .post(
                "/api/v1/images",
                Some(&admin),
                json!({"source": {
                "server": server, "protocol": "incus", "alias": "debian/12"}}),
            )
            .await;
        r.assert_problem(400, "could_not_fetch");
        assert!(
            r.body["detail"]
                .as_str()
                .unwrap()
                .starts_with("could not fetch https://"),
            "{}",
            r.text
        );
    }
    let after = incus_json(&["image", "list", "--format", "json"])
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(before, after, "a failed copy leaves no image");

    // Bodies that never reach Incus.
    let cases = [
        (
            json!({"source": {"server": server, "protocol": "lxd", "alias": "x"}}),
            "source.protocol",
        ),
        (
            json!({"source": {"server": "http://images.example.com", "protocol": "simplestreams", "alias": "x"}}),
            "source.server",
        ),
        (
            json!({"source": {"server": "http://10.0.0.1:8443", "protocol": "incus", "alias": "x"}}),
            "source.server",
        ),
        (
            json!({"source": {"server": "ftp://127.0.0.1", "protocol": "incus", "alias": "x"}}),
            "source.server",
        ),
        (
            json!({"source": {"server": "https://u:p@127.0.0.1", "protocol": "incus", "alias": "x"}}),
            "source.server",
        ),
        (
            json!({"source": {"server": server, "protocol": "incus"}}),
            "source",
        ),
        (
            json!({"source": {"server": server, "protocol": "incus", "alias": "x", "fingerprint": "abc"}}),
            "source",
        ),
        (
            json!({"source": {"server": server, "protocol": "incus", "fingerprint": "XYZ"}}),
            "source.fingerprint",
        ),
        (
            json!({"source": {"server": server, "protocol": "incus", "alias": "has space"}}),
            "source.alias",
        ),
        (
            json!({"source": {"server": server, "protocol": "incus", "alias": "x"}, "aliases": [{"name": "a/b"}]}),
            "aliases[0].name",
        ),
        (
            json!({"source": {"server": server, "protocol": "incus", "alias": "x", "image_type": "vm"}}),
            "source.image_type",
        ),
    ];
    for (body, field) in cases {
        let r = app.post("/api/v1/images", Some(&admin), body).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["field"], field, "{}", r.text);
    }
    // Unknown fields are named.
    let r = app
        .post(
            "/api/v1/images",
            Some(&admin),
            json!({"source": {"server": server, "protocol": "incus", "alias": "x", "mode": "push"}}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert!(r.text.contains("mode"), "{}", r.text);
    // Plain http to 127.0.0.1 passes validation (then fails to connect).
    let r = app
        .post(
            "/api/v1/images",
            Some(&admin),
            json!({"source": {"server": format!("http://127.0.0.1:{closed}"), "protocol": "simplestreams", "alias": "x"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let op = finished(&app, &admin, r.body["poll_url"].as_str().unwrap()).await;
    assert_eq!(op["status_code"], 400, "{op}");
}
