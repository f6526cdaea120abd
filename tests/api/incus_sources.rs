//! Where a new instance comes from, through lxgate in front of the real
//! private incusd: an image pulled from a remote server in the same call,
//! a copy of an instance or snapshot (within and across projects, held to
//! the instance policy), and nothing (`none`).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::embedded::{serve_simplestreams, sha256_hex};
use crate::helpers::*;
use crate::incus_images::{TestProject, finished, image_files, incus_json};
use crate::incus_instances::{Cleanup, incus_app, incus_app_with, unique};
use crate::incus_storage::IncusUndo;

fn alias() -> String {
    std::env::var("LXGATE_TEST_INCUS_IMAGE_ALIAS").unwrap_or_else(|_| "busybox".into())
}

/// A create that must succeed: its finished operation.
async fn create_ok(app: &TestApp, token: &str, project: &str, body: Value) -> Value {
    let r = app
        .post(
            &format!("/api/v1/instances?project={project}"),
            Some(token),
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let op = finished(app, token, r.body["poll_url"].as_str().unwrap()).await;
    assert_eq!(op["status_code"], 200, "{op}");
    op
}

async fn instance(app: &TestApp, token: &str, project: &str, name: &str) -> Value {
    let r = app
        .get(
            &format!("/api/v1/instances/{name}?project={project}"),
            Some(token),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

#[tokio::test]
async fn an_image_is_pulled_from_a_remote_server_in_the_create() {
    // The test bed's Incus image, served as a simplestreams tree on
    // 127.0.0.1 (on the allow list: plain http, a loopback address).
    let (meta_path, rootfs_path) = image_files();
    let (meta, rootfs) = (
        std::fs::read(meta_path).unwrap(),
        std::fs::read(rootfs_path).unwrap(),
    );
    let fp = sha256_hex(&[&meta, &rootfs]);
    let catalogue = json!({"format": "products:1.0", "datatype": "image-downloads", "products": {
    "busybox:remote:amd64:default": {
        "aliases": "busybox/remote", "arch": "amd64", "os": "busybox", "release": "remote",
        "versions": {"20261130_00:00": {"items": {
            "incus.tar.xz": {"ftype": "incus.tar.xz", "path": "images/meta.tar.xz",
                "sha256": sha256_hex(&[&meta]), "size": meta.len(),
                "combined_rootxz_sha256": fp},
            "root.tar.xz": {"ftype": "root.tar.xz", "path": "images/rootfs.tar.xz",
                "sha256": sha256_hex(&[&rootfs]), "size": rootfs.len()},
        }}}}}});
    let server = serve_simplestreams(
        "busybox:remote:amd64:default",
        catalogue,
        vec![
            ("/images/meta.tar.xz", meta),
            ("/images/rootfs.tar.xz", rootfs),
        ],
    )
    .await;
    let allow = server
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let app = incus_app_with(&[("IMAGE_SERVER_ALLOWLIST", &allow)]).await;
    let admin = app.admin_token().await;
    // A project with an image store of its own, empty: the image must come
    // from the server, not from a cache.
    let project = TestProject::create();
    let p = project.name.as_str();
    let operator = app.user_with_role(&admin, "pull-op", None).await;
    app.grant(&admin, "pull-op", p, "operator").await;
    let name = unique("pulled");
    let _cleanup = Cleanup(vec![(p.to_owned(), name.clone())]);

    // An operator may launch from a remote server (the fetch rules hold).
    create_ok(
        &app,
        &operator,
        p,
        json!({"name": name, "source": {"type": "image", "server": server,
               "protocol": "simplestreams", "alias": "busybox/remote"}}),
    )
    .await;
    let inst = instance(&app, &operator, p, &name).await;
    assert_eq!(inst["config"]["volatile.base_image"], fp.as_str(), "{inst}");
    let images = incus_json(&["image", "list", "--project", p, "--format", "json"]);
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["fingerprint"] == fp.as_str()),
        "the pulled image is in the project's store: {images}"
    );

    // Servers lxgate does not fetch from never reach Incus, and the words
    // do not tell an open port from a closed one.
    for refused in ["https://169.254.169.254/", "https://[::1]:8443/"] {
        let r = app
            .post(
                &format!("/api/v1/instances?project={p}"),
                Some(&operator),
                json!({"name": unique("no"), "source": {"type": "image", "server": refused,
                       "protocol": "simplestreams", "alias": "busybox/remote"}}),
            )
            .await;
        r.assert_problem(400, "could_not_fetch");
    }
    // A public server an admin did not list: Incus would fetch it by
    // itself, outside lxgate's checks, so only admins may send it there.
    let unlisted = json!({"type": "image", "server": "https://1.1.1.1/",
                          "protocol": "simplestreams", "alias": "busybox/remote"});
    let r = app
        .post(
            &format!("/api/v1/instances?project={p}"),
            Some(&operator),
            json!({"name": unique("no"), "source": unlisted}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "source.server", "{}", r.text);
    // Bodies that do not make sense are named.
    let cases = [
        (
            json!({"type": "image", "server": server, "alias": "x"}),
            "source.protocol",
        ),
        (
            json!({"type": "image", "protocol": "simplestreams", "alias": "x"}),
            "source.server",
        ),
        (
            json!({"type": "image", "server": server, "protocol": "lxd", "alias": "x"}),
            "source.protocol",
        ),
        (
            json!({"type": "image", "server": "http://images.example.com", "protocol": "simplestreams", "alias": "x"}),
            "source.server",
        ),
        (
            json!({"type": "image", "server": server, "protocol": "simplestreams", "alias": "has space"}),
            "source.alias",
        ),
        (
            json!({"type": "image", "alias": alias(), "source": "x"}),
            "source.source",
        ),
        (json!({"type": "vm"}), "source.type"),
    ];
    for (source, field) in cases {
        let r = app
            .post(
                &format!("/api/v1/instances?project={p}"),
                Some(&operator),
                json!({"name": unique("bad"), "source": source}),
            )
            .await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["field"], field, "{}", r.text);
    }
}

#[tokio::test]
async fn copies_of_instances_and_snapshots() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let operator = app.user_with_role(&admin, "copy-op", None).await;
    let viewer_there = app.user_with_role(&admin, "copy-half", None).await;
    let (here, there) = (unique("cpa"), unique("cpb"));
    let _undo = IncusUndo(vec![
        vec!["project".into(), "delete".into(), here.clone()],
        vec!["project".into(), "delete".into(), there.clone()],
    ]);
    for p in [&here, &there] {
        let r = app
            .post(
                "/api/v1/projects",
                Some(&admin),
                json!({"name": p, "config": {"features.images": "false"}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        app.grant(&admin, "copy-op", p, "operator").await;
    }
    app.grant(&admin, "copy-half", &here, "viewer").await;
    app.grant(&admin, "copy-half", &there, "operator").await;
    let (src, c1, c2, c3) = (unique("src"), unique("c1"), unique("c2"), unique("c3"));
    let _cleanup = Cleanup(vec![
        (here.clone(), src.clone()),
        (here.clone(), c1.clone()),
        (here.clone(), c2.clone()),
        (there.clone(), c3.clone()),
    ]);
    let fp = alias();
    create_ok(
        &app,
        &operator,
        &here,
        json!({"name": src, "source": {"type": "image", "alias": fp},
               "config": {"user.tag": "a", "limits.memory": "128MiB"}}),
    )
    .await;
    let r = app
        .post(
            &format!("/api/v1/instances/{src}/snapshots?project={here}&wait=60"),
            Some(&operator),
            json!({"name": "s1"}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let r = app
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/instances/{src}?project={here}"),
            Some(&operator),
        )
        .json(&json!({"config": {"user.tag": "b"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A copy of the instance: its config as it is now, the request's over it.
    create_ok(
        &app,
        &operator,
        &here,
        json!({"name": c1, "source": {"type": "copy", "source": src},
               "config": {"limits.memory": "256MiB"}}),
    )
    .await;
    let copy = instance(&app, &operator, &here, &c1).await;
    assert_eq!(copy["config"]["user.tag"], "b", "{copy}");
    assert_eq!(copy["config"]["limits.memory"], "256MiB", "{copy}");
    assert_eq!(copy["type"], "container", "{copy}");
    assert_eq!(copy["profiles"], json!(["default"]), "{copy}");
    // No snapshots come along.
    let snaps = app
        .get(
            &format!("/api/v1/instances/{c1}/snapshots?project={here}"),
            Some(&operator),
        )
        .await;
    assert_eq!(snaps.body["total"], 0, "{}", snaps.text);
    // A copy of the snapshot: the snapshot's config.
    create_ok(
        &app,
        &operator,
        &here,
        json!({"name": c2, "source": {"type": "copy", "source": format!("{src}/s1")}}),
    )
    .await;
    let copy = instance(&app, &operator, &here, &c2).await;
    assert_eq!(copy["config"]["user.tag"], "a", "{copy}");
    // Into another project the caller operates.
    create_ok(
        &app,
        &operator,
        &there,
        json!({"name": c3, "source": {"type": "copy", "source": src, "project": here}}),
    )
    .await;
    let copy = instance(&app, &operator, &there, &c3).await;
    assert_eq!(copy["config"]["user.tag"], "b", "{copy}");

    // Only from a project the caller operates.
    let r = app
        .post(
            &format!("/api/v1/instances?project={there}"),
            Some(&viewer_there),
            json!({"name": unique("no"), "source": {"type": "copy", "source": src, "project": here}}),
        )
        .await;
    r.assert_problem(403, "permission_denied");
    // What is not there, and what does not go together.
    let r = app
        .post(
            &format!("/api/v1/instances?project={here}"),
            Some(&operator),
            json!({"name": unique("no"), "source": {"type": "copy", "source": "nothing-here"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = app
        .post(
            &format!("/api/v1/instances?project={here}"),
            Some(&operator),
            json!({"name": unique("no"), "source": {"type": "copy", "source": format!("{src}/nope")}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = app
        .post(
            &format!("/api/v1/instances?project={here}"),
            Some(&operator),
            json!({"name": c1, "source": {"type": "copy", "source": src}}),
        )
        .await;
    crate::incus_instances::assert_name_clash(&if r.status == StatusCode::ACCEPTED {
        let op = finished(&app, &operator, r.body["poll_url"].as_str().unwrap()).await;
        Reply {
            status: StatusCode::OK,
            text: op.to_string(),
            body: op,
            headers: Default::default(),
        }
    } else {
        r
    });
    let cases = [
        (json!({"type": "copy"}), "source.source"),
        (json!({"type": "copy", "source": "a/b/c"}), "source.source"),
        (json!({"type": "copy", "source": "-x"}), "source.source"),
        (
            json!({"type": "copy", "source": src, "alias": "x"}),
            "source.alias",
        ),
        (
            json!({"type": "copy", "source": src, "project": "no such"}),
            "source.project",
        ),
    ];
    for (source, field) in cases {
        let r = app
            .post(
                &format!("/api/v1/instances?project={here}"),
                Some(&operator),
                json!({"name": unique("bad"), "source": source}),
            )
            .await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["field"], field, "{}", r.text);
    }
    let r = app
        .post(
            &format!("/api/v1/instances?project={here}"),
            Some(&operator),
            json!({"name": unique("bad"), "type": "virtual-machine",
                   "source": {"type": "copy", "source": src}}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "type", "{}", r.text);
}

#[tokio::test]
async fn an_operator_cannot_copy_what_it_could_not_write() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let operator = app.user_with_role(&admin, "copy-esc", None).await;
    let (plain, widened) = (unique("cpe"), unique("cpw"));
    let _undo = IncusUndo(vec![
        vec!["project".into(), "delete".into(), plain.clone()],
        vec!["project".into(), "delete".into(), widened.clone()],
    ]);
    let r = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": plain, "config": {"features.images": "false"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": widened, "config": {"features.images": "false",
                   "user.lxgate.allow.config": "security.nesting"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    for p in [&plain, &widened] {
        app.grant(&admin, "copy-esc", p, "operator").await;
    }
    let fp = alias();
    let (privileged, nested, ok) = (unique("priv"), unique("nest"), unique("ok"));
    let _cleanup = Cleanup(vec![
        ("default".to_owned(), privileged.clone()),
        (widened.clone(), nested.clone()),
        (plain.clone(), ok.clone()),
    ]);
    // An admin's privileged container, with a snapshot, in the default
    // project (Incus itself refuses one in the restricted projects lxgate
    // makes, admins' included).
    app.grant(&admin, "copy-esc", "default", "operator").await;
    create_ok(
        &app,
        &admin,
        "default",
        json!({"name": privileged, "source": {"type": "image", "alias": fp},
               "config": {"security.privileged": "true"}}),
    )
    .await;
    let r = app
        .post(
            &format!("/api/v1/instances/{privileged}/snapshots?wait=60"),
            Some(&admin),
            json!({"name": "s1"}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    // A privileged container's files are the admins': no copy of it for
    // an operator, even one that would be unprivileged itself.
    for (source, config) in [
        (privileged.clone(), json!({})),
        (format!("{privileged}/s1"), json!({})),
        (privileged.clone(), json!({"security.privileged": ""})),
    ] {
        let r = app
            .post(
                "/api/v1/instances",
                Some(&operator),
                json!({"name": unique("esc"), "source": {"type": "copy", "source": source},
                       "config": config}),
            )
            .await;
        r.assert_problem(403, "policy_denied");
        assert_eq!(r.body["field"], "security.privileged", "{}", r.text);
    }

    // Nor may an operator rename it (a name is what a copy names), also
    // when its config says it the way Incus also reads as true.
    let r = app
        .post(
            &format!("/api/v1/instances/{privileged}/rename"),
            Some(&operator),
            json!({"name": unique("swap")}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    let r = app
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/instances/{privileged}"),
            Some(&admin),
        )
        .json(&json!({"config": {"security.privileged": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .post(
            "/api/v1/instances",
            Some(&operator),
            json!({"name": unique("esc"), "source": {"type": "copy", "source": privileged},
                   "config": {"security.privileged": ""}}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "security.privileged", "{}", r.text);
    // Made unprivileged later, its snapshot of before is still the admins'.
    let r = app
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/instances/{privileged}"),
            Some(&admin),
        )
        .json(&json!({"config": {"security.privileged": "false"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .post(
            "/api/v1/instances",
            Some(&operator),
            json!({"name": unique("esc"), "source": {"type": "copy", "source": format!("{privileged}/s1")},
                   "config": {"security.privileged": ""}}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "security.privileged", "{}", r.text);

    // A key widened in one project stays there: the operator may set it in
    // `widened`, and may not carry it into `plain` by a copy.
    create_ok(
        &app,
        &operator,
        &widened,
        json!({"name": nested, "source": {"type": "image", "alias": fp},
               "config": {"security.nesting": "true"}}),
    )
    .await;
    let r = app
        .post(
            &format!("/api/v1/instances?project={plain}"),
            Some(&operator),
            json!({"name": unique("esc"), "source": {"type": "copy", "source": nested, "project": widened}}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "config.security.nesting", "{}", r.text);
    // With the key taken out (an empty value unsets it), the copy is fine.
    create_ok(
        &app,
        &operator,
        &plain,
        json!({"name": ok, "source": {"type": "copy", "source": nested, "project": widened},
               "config": {"security.nesting": ""}}),
    )
    .await;
    let copy = instance(&app, &operator, &plain, &ok).await;
    assert!(
        copy["expanded_config"].get("security.nesting").is_none(),
        "{copy}"
    );
}

#[tokio::test]
async fn none_is_for_virtual_machines() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let r = app
        .post(
            "/api/v1/instances",
            Some(&admin),
            json!({"name": unique("empty"), "source": {"type": "none"}}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "type", "{}", r.text);
    let r = app
        .post(
            "/api/v1/instances",
            Some(&admin),
            json!({"name": unique("empty"), "type": "virtual-machine",
                   "source": {"type": "none", "alias": "x"}}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "source.alias", "{}", r.text);
}
