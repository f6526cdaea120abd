//! The escape suite (DESIGN §4a): an operator tries every admin-only config
//! key and device on create, PUT and PATCH, against both backends, and
//! nothing reaches Incus or the host. Admins may do it all; a project an
//! admin widened allows exactly what was listed; a snapshot's config is held
//! to the same rules on restore.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::embedded::{Host, import_busybox};
use crate::helpers::*;
use crate::incus_instances::{Cleanup, incus_app, unique};
use crate::incus_storage::IncusUndo;

/// One admin-only thing: config keys and/or devices, and the `field` the
/// 403 must name.
struct Case {
    what: &'static str,
    config: Value,
    devices: Value,
    field: &'static str,
}

fn cases() -> Vec<Case> {
    let key = |what, k: &str, v: &str, field| Case {
        what,
        config: json!({ k: v }),
        devices: json!({}),
        field,
    };
    let dev = |what, d: Value, field| Case {
        what,
        config: json!({}),
        devices: json!({ "h": d }),
        field,
    };
    vec![
        key(
            "privileged",
            "security.privileged",
            "true",
            "config.security.privileged",
        ),
        key(
            "nesting",
            "security.nesting",
            "true",
            "config.security.nesting",
        ),
        key(
            "raw.lxc",
            "raw.lxc",
            "lxc.apparmor.profile=unconfined",
            "config.raw.lxc",
        ),
        key("raw.qemu", "raw.qemu", "-S", "config.raw.qemu"),
        key(
            "kernel modules",
            "linux.kernel_modules",
            "ip_tables",
            "config.linux.kernel_modules",
        ),
        key(
            "syscall interception",
            "security.syscalls.intercept.mknod",
            "true",
            "config.security.syscalls.intercept.mknod",
        ),
        key(
            "syscall deny list",
            "security.syscalls.deny_default",
            "false",
            "config.security.syscalls.deny_default",
        ),
        key(
            "idmap base",
            "security.idmap.base",
            "0",
            "config.security.idmap.base",
        ),
        key(
            "sysctl",
            "linux.sysctl.kernel.panic",
            "1",
            "config.linux.sysctl.kernel.panic",
        ),
        dev(
            "host path disk",
            json!({"type": "disk", "source": "/", "path": "/host"}),
            "devices.h.pool",
        ),
        dev(
            "host path disk with a pool",
            json!({"type": "disk", "pool": "default", "source": "/etc", "path": "/host"}),
            "devices.h.source",
        ),
        dev(
            "shifted volume",
            json!({"type": "disk", "pool": "default", "source": "vol", "path": "/v", "shift": "true"}),
            "devices.h.shift",
        ),
        dev(
            "shared propagation",
            json!({"type": "disk", "pool": "default", "source": "vol", "path": "/v", "propagation": "shared"}),
            "devices.h.propagation",
        ),
        dev(
            "recursive mount",
            json!({"type": "disk", "pool": "default", "source": "vol", "path": "/v", "recursive": "true"}),
            "devices.h.recursive",
        ),
        dev(
            "raw mount options",
            json!({"type": "disk", "pool": "default", "source": "vol", "path": "/v", "raw.mount.options": "uid=0"}),
            "devices.h.raw.mount.options",
        ),
        dev(
            "unix-hotplug",
            json!({"type": "unix-hotplug", "vendorid": "1d6b"}),
            "devices.h.type",
        ),
        dev(
            "infiniband",
            json!({"type": "infiniband", "nictype": "physical", "parent": "ib0"}),
            "devices.h.type",
        ),
        dev(
            "tpm",
            json!({"type": "tpm", "path": "/dev/tpm0"}),
            "devices.h.type",
        ),
        dev(
            "unix-block",
            json!({"type": "unix-block", "source": "/dev/vda", "path": "/dev/vda"}),
            "devices.h.type",
        ),
        dev(
            "unix-char",
            json!({"type": "unix-char", "source": "/dev/kmsg", "path": "/dev/kmsg"}),
            "devices.h.type",
        ),
        dev(
            "proxy",
            json!({"type": "proxy", "listen": "tcp:127.0.0.1:65011", "connect": "tcp:127.0.0.1:22"}),
            "devices.h.type",
        ),
        dev("gpu", json!({"type": "gpu"}), "devices.h.type"),
        dev(
            "usb",
            json!({"type": "usb", "vendorid": "1d6b"}),
            "devices.h.type",
        ),
        dev(
            "pci",
            json!({"type": "pci", "address": "0000:00:01.0"}),
            "devices.h.type",
        ),
        dev(
            "physical nic",
            json!({"type": "nic", "nictype": "physical", "parent": "lo"}),
            "devices.h.nictype",
        ),
        dev(
            "macvlan nic",
            json!({"type": "nic", "nictype": "macvlan", "parent": "lo"}),
            "devices.h.nictype",
        ),
        dev(
            "nic with a parent",
            json!({"type": "nic", "network": "lxgbr0", "parent": "lo"}),
            "devices.h.parent",
        ),
    ]
}

fn merged(base: &Value, extra: &Value) -> Value {
    let mut m: Map<String, Value> = base.as_object().cloned().unwrap_or_default();
    for (k, v) in extra.as_object().into_iter().flatten() {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

fn assert_denied(r: &Reply, case: &Case, how: &str) {
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "{} on {how}: {}",
        case.what,
        r.text
    );
    assert_eq!(r.body["code"], "policy_denied", "{}: {}", case.what, r.text);
    assert_eq!(
        r.body["field"], case.field,
        "{} on {how}: {}",
        case.what, r.text
    );
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("admin"),
        "the detail says an admin can allow it: {}",
        r.text
    );
}

/// Every case refused on create (nothing made), PUT and PATCH of
/// `existing` (nothing changed as lxgate reports it).
async fn refused_everywhere(
    app: &TestApp,
    operator: &str,
    project: &str,
    existing: &str,
    image: Value,
) {
    let path = format!("/api/v1/instances/{existing}?project={project}");
    let before = app.get(&path, Some(operator)).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.text);
    for case in cases() {
        let name = unique("esc");
        let r = app
            .post(
                &format!("/api/v1/instances?project={project}&wait=60"),
                Some(operator),
                json!({"name": name, "source": image, "config": case.config, "devices": case.devices}),
            )
            .await;
        assert_denied(&r, &case, "create");
        let got = app
            .get(
                &format!("/api/v1/instances/{name}?project={project}"),
                Some(operator),
            )
            .await;
        assert_eq!(
            got.status,
            StatusCode::NOT_FOUND,
            "{}: {}",
            case.what,
            got.text
        );

        let put = json!({
            "description": before.body["description"],
            "config": merged(&before.body["config"], &case.config),
            "devices": merged(&before.body["devices"], &case.devices),
            "profiles": before.body["profiles"],
            "ephemeral": before.body["ephemeral"],
        });
        let r = app.put(&path, Some(operator), put).await;
        assert_denied(&r, &case, "PUT");
        let r = app
            .send(
                app.request(Method::PATCH, &path, Some(operator))
                    .json(&json!({"config": case.config, "devices": case.devices})),
            )
            .await;
        assert_denied(&r, &case, "PATCH");
    }
    let after = app.get(&path, Some(operator)).await;
    assert_eq!(after.body["config"], before.body["config"]);
    assert_eq!(after.body["devices"], before.body["devices"]);
    assert_eq!(after.header("etag"), before.header("etag"));

    // volatile.* is the backend's: a PUT or PATCH carries the current
    // values whatever the client sends; a create may not set one.
    let r = app
        .send(
            app.request(Method::PATCH, &path, Some(operator))
                .json(&json!({"config": {"volatile.base_image": "0000", "user.note": "ok"}})),
        )
        .await;
    wait_ok(app, operator, r).await;
    let now = app.get(&path, Some(operator)).await;
    assert_eq!(
        now.body["config"]["volatile.base_image"],
        before.body["config"]["volatile.base_image"]
    );
    assert_eq!(now.body["config"]["user.note"], "ok");
    app.post(
        &format!("/api/v1/instances?project={project}"),
        Some(operator),
        json!({"name": unique("esc"), "source": image, "config": {"volatile.idmap.base": "0"}}),
    )
    .await
    .assert_problem(400, "invalid_config");

    // A profile list names profiles of the project, each once.
    let r = app
        .post(
            &format!("/api/v1/instances?project={project}"),
            Some(operator),
            json!({"name": unique("esc"), "source": image, "profiles": ["default", "other"]}),
        )
        .await;
    r.assert_problem(404, "profile_not_found");
    assert_eq!(r.body["field"], "profiles");
    let r = app
        .send(
            app.request(Method::PATCH, &path, Some(operator))
                .json(&json!({"profiles": ["default", "default"]})),
        )
        .await;
    r.assert_problem(400, "invalid_config");

    // The check and the write see the same version: a client's If-Match
    // naming another one is 412 before anything is written.
    let r = app
        .send(
            app.request(Method::PATCH, &path, Some(operator))
                .header("if-match", "\"0000\"")
                .json(&json!({"config": {"user.note": "late"}})),
        )
        .await;
    r.assert_problem(412, "precondition_failed");
}

/// Every case smuggled through a profile, refused: in a profile an
/// operator creates, PUTs or PATCHes (its own, and `default`), and, where
/// an admin put it into one (and the backend took it), in an instance an
/// operator creates with that profile or gives it to. Nothing is written.
async fn refused_through_profiles(
    app: &TestApp,
    operator: &str,
    admin: &str,
    project: &str,
    existing: &str,
    image: Value,
) {
    let q = format!("?project={project}");
    let mine = unique("mine");
    let r = app
        .post(
            &format!("/api/v1/profiles{q}"),
            Some(operator),
            json!({"name": mine, "config": {"limits.cpu": "1", "user.team": "a"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let path = format!("/api/v1/profiles/{mine}{q}");
    let default = format!("/api/v1/profiles/default{q}");
    let before = app.get(&path, Some(operator)).await;
    let default_before = app.get(&default, Some(operator)).await;
    let ipath = format!("/api/v1/instances/{existing}{q}");
    let instance = app.get(&ipath, Some(operator)).await;
    let mut used = 0;
    for case in cases() {
        let name = unique("escp");
        let r = app
            .post(
                &format!("/api/v1/profiles{q}"),
                Some(operator),
                json!({"name": name, "config": case.config, "devices": case.devices}),
            )
            .await;
        assert_denied(&r, &case, "profile create");
        app.get(&format!("/api/v1/profiles/{name}{q}"), Some(operator))
            .await
            .assert_problem(404, "profile_not_found");
        let put = json!({
            "description": before.body["description"],
            "config": merged(&before.body["config"], &case.config),
            "devices": merged(&before.body["devices"], &case.devices),
        });
        assert_denied(
            &app.put(&path, Some(operator), put).await,
            &case,
            "profile PUT",
        );
        for p in [&path, &default] {
            let r = app
                .send(
                    app.request(Method::PATCH, p, Some(operator))
                        .json(&json!({"config": case.config, "devices": case.devices})),
                )
                .await;
            assert_denied(&r, &case, "profile PATCH");
        }

        // An admin's profile holding it is not the operator's to apply.
        let adm = unique("adm");
        let r = app
            .post(
                &format!("/api/v1/profiles{q}"),
                Some(admin),
                json!({"name": adm, "config": case.config, "devices": case.devices}),
            )
            .await;
        if r.status != StatusCode::CREATED {
            // The backend's own refusal (a restricted Incus project, a key or
            // device the embedded drivers lack): never the policy's.
            assert_ne!(r.body["code"], "permission_denied", "{}", r.text);
            continue;
        }
        used += 1;
        let inst = unique("esc");
        let r = app
            .post(
                &format!("/api/v1/instances{q}&wait=60"),
                Some(operator),
                json!({"name": inst, "source": image, "profiles": ["default", adm]}),
            )
            .await;
        assert_denied(&r, &case, "create with an admin's profile");
        assert!(
            r.body["detail"].as_str().unwrap_or_default().contains(&adm),
            "the detail names the profile: {}",
            r.text
        );
        app.get(&format!("/api/v1/instances/{inst}{q}"), Some(operator))
            .await
            .assert_problem(404, "instance_not_found");
        let mut profiles = instance.body["profiles"].as_array().unwrap().clone();
        profiles.push(json!(adm));
        let r = app
            .send(
                app.request(Method::PATCH, &ipath, Some(operator))
                    .json(&json!({"profiles": profiles})),
            )
            .await;
        assert_denied(&r, &case, "an admin's profile added to an instance");
        let r = app
            .delete(&format!("/api/v1/profiles/{adm}{q}"), Some(admin))
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    }
    eprintln!("{used} admin profiles were refused to the operator's instances");
    let after = app.get(&path, Some(operator)).await;
    assert_eq!(
        after.header("etag"),
        before.header("etag"),
        "{}",
        after.text
    );
    let default_after = app.get(&default, Some(operator)).await;
    assert_eq!(default_after.body["config"], default_before.body["config"]);
    assert_eq!(
        default_after.body["devices"],
        default_before.body["devices"]
    );
    let now = app.get(&ipath, Some(operator)).await;
    assert_eq!(now.body["profiles"], instance.body["profiles"]);

    // What §4a allows goes through a profile too, onto the instance.
    let r = app
        .send(
            app.request(Method::PATCH, &ipath, Some(operator))
                .json(&json!({"profiles": ["default", mine]})),
        )
        .await;
    wait_ok(app, operator, r).await;
    let now = app.get(&ipath, Some(operator)).await;
    assert_eq!(
        now.body["expanded_config"]["user.team"], "a",
        "{}",
        now.text
    );
    // Taking an admin's key out of a profile is a change like any other.
    let r = app
        .post(
            &format!("/api/v1/profiles{q}"),
            Some(admin),
            json!({"name": unique("admkey"), "config": {"security.privileged": "false"}}),
        )
        .await;
    if r.status == StatusCode::CREATED {
        let p = format!("/api/v1/profiles/{}{q}", r.body["name"].as_str().unwrap());
        let r = app
            .send(
                app.request(Method::PATCH, &p, Some(operator))
                    .json(&json!({"config": {"security.privileged": ""}})),
            )
            .await;
        r.assert_problem(403, "policy_denied");
        assert_eq!(r.body["field"], "config.security.privileged");
        // ...while the rest of it is the operator's to change.
        let r = app
            .send(
                app.request(Method::PATCH, &p, Some(operator))
                    .json(&json!({"description": "mine now", "config": {"limits.cpu": "1"}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        app.delete(&p, Some(admin)).await;
    }
    let r = app
        .send(
            app.request(Method::PATCH, &ipath, Some(operator))
                .json(&json!({"profiles": instance.body["profiles"]})),
        )
        .await;
    wait_ok(app, operator, r).await;
    let r = app.delete(&path, Some(operator)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
}

fn incus(args: &[&str]) -> std::process::Output {
    Command::new("incus")
        .args(args)
        .env("INCUS_DIR", std::env::var("LXGATE_TEST_INCUS_DIR").unwrap())
        .output()
        .expect("incus runs")
}

fn incus_text(args: &[&str]) -> String {
    let out = incus(args);
    assert!(
        out.status.success(),
        "incus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn incus_alias() -> String {
    std::env::var("LXGATE_TEST_INCUS_IMAGE_ALIAS").unwrap_or_else(|_| "busybox".into())
}

async fn wait_ok(app: &TestApp, token: &str, r: Reply) -> Value {
    let r = if r.status == StatusCode::ACCEPTED {
        let wait = r.body["wait_url"].as_str().unwrap().to_owned();
        app.get(&format!("{wait}?timeout=60"), Some(token)).await
    } else {
        r
    };
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // A finished operation (instances come back as themselves).
    if r.body.get("class").is_some() {
        assert_eq!(r.body["status_code"], 200, "{}", r.text);
    }
    r.body
}

#[tokio::test]
async fn incus_operators_cannot_reach_the_host() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let operator = app.user_with_role(&admin, "escop", None).await;
    let project = unique("esc");
    let volume = unique("vol");
    let _undo = IncusUndo::new(&[
        &[
            "storage",
            "volume",
            "delete",
            "default",
            &volume,
            "--project",
            &project,
        ],
        &["project", "delete", &project],
    ]);
    let existing = unique("ok");
    let widened = unique("nest");
    let direct = unique("direct");
    let _cleanup = Cleanup(vec![
        (project.clone(), existing.clone()),
        (project.clone(), widened.clone()),
        (project.clone(), direct.clone()),
    ]);
    let made = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": project, "config": {"features.images": "false"}}),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    assert_eq!(made.body["policy"]["restricted"], true, "{}", made.text);
    app.grant(&admin, "escop", &project, "operator").await;

    // Incus's own view: restricted, and it refuses a privileged container
    // and a host path disk sent straight to it, without lxgate.
    assert_eq!(
        incus_text(&["project", "get", &project, "restricted"]),
        "true"
    );
    assert_eq!(
        incus_text(&[
            "project",
            "get",
            &project,
            "restricted.containers.privilege"
        ]),
        "unprivileged"
    );
    let out = incus(&[
        "init",
        &incus_alias(),
        &direct,
        "--project",
        &project,
        "-c",
        "security.privileged=true",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Privileged containers are forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    incus_text(&["init", &incus_alias(), &direct, "--project", &project]);
    let out = incus(&[
        "config",
        "device",
        "add",
        &direct,
        "h",
        "disk",
        "source=/",
        "path=/host",
        "--project",
        &project,
    ]);
    assert!(!out.status.success(), "Incus accepted a host path disk");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not backed by a pool"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    incus_text(&["delete", &direct, "--project", &project]);

    // What §4a allows works for the operator.
    let image = json!({"type": "image", "alias": incus_alias()});
    let r = app
        .post(
            &format!("/api/v1/instances?project={project}&wait=60"),
            Some(&operator),
            json!({"name": existing, "source": image,
                "config": {"limits.cpu": "1", "limits.memory": "256MiB", "user.team": "a",
                    "environment.GREETING": "hi", "boot.autostart": "false",
                    "security.protection.delete": "false", "snapshots.expiry": "1d"},
                "devices": {"root": {"type": "disk", "path": "/", "pool": "default"}}}),
        )
        .await;
    wait_ok(&app, &operator, r).await;
    let incus_before = incus_text(&["config", "show", &existing, "--project", &project]);
    refused_everywhere(&app, &operator, &project, &existing, image.clone()).await;
    let incus_after = incus_text(&["config", "show", &existing, "--project", &project]);
    assert!(
        !incus_after.contains("security.privileged"),
        "{incus_after}"
    );
    assert!(!incus_after.contains("/host"), "{incus_after}");
    assert_eq!(
        incus_before.replace("user.note: ok\n", ""),
        incus_after.replace("  user.note: ok\n", ""),
        "only the allowed PATCH changed the instance"
    );
    let listed = incus_text(&["list", "--project", &project, "-c", "n", "-f", "csv"]);
    assert_eq!(listed, existing, "no refused create reached Incus");
    refused_through_profiles(&app, &operator, &admin, &project, &existing, image.clone()).await;
    let listed = incus_text(&["list", "--project", &project, "-c", "n", "-f", "csv"]);
    assert_eq!(listed, existing, "no refused create reached Incus");

    // A key §4a allows but Incus counts as low-level: Incus refuses it in a
    // restricted project, and says so as the policy's 403.
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/instances/{existing}?project={project}"),
                Some(&operator),
            )
            .json(&json!({"config": {"boot.host_shutdown_timeout": "10"}})),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert!(
        r.body["detail"].as_str().unwrap().contains("low-level"),
        "{}",
        r.text
    );

    // Storage volume config: size, snapshots.*, user.* only; a custom
    // volume of the project goes into an instance as a disk.
    let r = app
        .post(
            &format!("/api/v1/storage/pools/default/volumes?project={project}"),
            Some(&operator),
            json!({"name": volume, "config": {"size": "64MiB", "user.purpose": "data"}}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/instances/{existing}?project={project}"),
                Some(&operator),
            )
            .json(
                &json!({"devices": {"data": {"type": "disk", "pool": "default",
                    "source": volume, "path": "/data", "readonly": "false"}}}),
            ),
        )
        .await;
    wait_ok(&app, &operator, r).await;
    let shown = incus_text(&["config", "device", "show", &existing, "--project", &project]);
    assert!(shown.contains(&format!("source: {volume}")), "{shown}");
    let r = app
        .post(
            &format!("/api/v1/storage/pools/default/volumes?project={project}"),
            Some(&operator),
            json!({"name": unique("vol"), "config": {"security.shifted": "true"}}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "config.security.shifted");

    // An admin widens the project: the allow list shows on the project,
    // Incus's restriction follows, and the operator may use exactly that.
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/projects/{project}"),
                Some(&admin),
            )
            .json(&json!({"config": {"user.lxgate.allow.config": "security.nesting"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["policy"]["allow_config"],
        json!(["security.nesting"])
    );
    assert_eq!(
        incus_text(&["project", "get", &project, "restricted.containers.nesting"]),
        "allow"
    );
    // The audit log records the widening with what it allowed.
    let log = app
        .get("/api/v1/audit?user=admin&limit=50", Some(&admin))
        .await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.text);
    let recorded = log.body["items"].as_array().unwrap().iter().any(|e| {
        e["method"] == "PATCH"
            && e["path"] == format!("/api/v1/projects/{project}")
            && e["detail"].as_str().is_some_and(|d| {
                d.contains("restricted=true") && d.contains("allow_config=[security.nesting]")
            })
    });
    assert!(recorded, "{}", log.text);
    let r = app
        .post(
            &format!("/api/v1/instances?project={project}&wait=60"),
            Some(&operator),
            json!({"name": widened, "source": image, "config": {"security.nesting": "true"}}),
        )
        .await;
    wait_ok(&app, &operator, r).await;
    let r = app
        .post(
            &format!("/api/v1/instances?project={project}&wait=60"),
            Some(&operator),
            json!({"name": unique("esc"), "source": image, "config": {"security.privileged": "true"}}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    let bad = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/projects/{project}"),
                Some(&admin),
            )
            .json(&json!({"config": {"user.lxgate.allow.config": "volatile.*"}})),
        )
        .await;
    bad.assert_problem(400, "invalid_config");

    // A snapshot's config is user data: taken while nesting was allowed,
    // it cannot bring nesting back once the admin withdrew the allowance.
    let inst = format!("/api/v1/instances/{widened}");
    let r = app
        .post(
            &format!("{inst}/snapshots?project={project}&wait=60"),
            Some(&operator),
            json!({"name": "nested"}),
        )
        .await;
    wait_ok(&app, &operator, r).await;
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("{inst}?project={project}"),
                Some(&operator),
            )
            .json(&json!({"config": {"security.nesting": "false"}})),
        )
        .await;
    wait_ok(&app, &operator, r).await;
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/projects/{project}"),
                Some(&admin),
            )
            .json(&json!({"config": {"user.lxgate.allow.config": ""}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["policy"]["allow_config"], json!([]));
    assert_eq!(
        incus_text(&["project", "get", &project, "restricted.containers.nesting"]),
        "block"
    );
    let r = app
        .post(
            &format!("{inst}/snapshots/nested/restore?project={project}&wait=60"),
            Some(&operator),
            json!({}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "config.security.nesting");
    assert_eq!(
        incus_text(&[
            "config",
            "get",
            &widened,
            "security.nesting",
            "--project",
            &project
        ]),
        "false"
    );
}

/// A profile an admin put a key into that a project's allow list widened
/// is usable in that project only: judged where an instance uses it, under
/// that instance's project. On Incus a project without profiles of its own
/// (`features.profiles=false`) uses the `default` project's; writing those
/// is writing `default`.
#[tokio::test]
async fn incus_a_widened_profile_is_usable_only_where_it_was_widened() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let wide = unique("wide");
    let shared = unique("shared");
    let (nest, nest_default) = (unique("nest"), unique("nestd"));
    let (ok1, ok2, esc) = (unique("ok"), unique("ok"), unique("esc"));
    let _undo = IncusUndo::new(&[
        &["profile", "delete", &nest, "--project", &wide],
        &["profile", "delete", &nest_default, "--project", "default"],
        &["project", "delete", &wide],
        &["project", "delete", &shared],
    ]);
    let _cleanup = Cleanup(vec![
        (wide.clone(), ok1.clone()),
        (shared.clone(), ok2.clone()),
        (shared.clone(), esc.clone()),
    ]);
    for (name, config) in [
        (
            &wide,
            json!({"features.images": "false", "user.lxgate.allow.config": "security.nesting"}),
        ),
        (
            &shared,
            json!({"features.images": "false", "features.profiles": "false", "restricted": "false"}),
        ),
    ] {
        let r = app
            .post(
                "/api/v1/projects",
                Some(&admin),
                json!({"name": name, "config": config}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let operator = app.user_with_role(&admin, "xop", None).await;
    app.grant(&admin, "xop", &wide, "operator").await;
    app.grant(&admin, "xop", &shared, "operator").await;
    let image = json!({"type": "image", "alias": incus_alias()});

    // An admin's profile holding what operators may not set there is not
    // theirs to rename (onto a name a check just judged) or to delete.
    let privp = unique("priv");
    let r = app
        .post(
            &format!("/api/v1/profiles?project={wide}"),
            Some(&admin),
            json!({"name": privp, "config": {"security.privileged": "true"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    app.post(
        &format!("/api/v1/profiles/{privp}/rename?project={wide}"),
        Some(&operator),
        json!({"name": unique("mine")}),
    )
    .await
    .assert_problem(403, "policy_denied");
    app.delete(
        &format!("/api/v1/profiles/{privp}?project={wide}"),
        Some(&operator),
    )
    .await
    .assert_problem(403, "policy_denied");
    let r = app
        .delete(
            &format!("/api/v1/profiles/{privp}?project={wide}"),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);

    // Where nesting was allowed, an admin's profile with it is usable, and
    // an operator may write the key too.
    let r = app
        .post(
            &format!("/api/v1/profiles?project={wide}"),
            Some(&admin),
            json!({"name": nest, "config": {"security.nesting": "true"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .post(
            &format!("/api/v1/instances?project={wide}&wait=60"),
            Some(&operator),
            json!({"name": ok1, "source": image, "profiles": ["default", nest]}),
        )
        .await;
    wait_ok(&app, &operator, r).await;
    assert_eq!(
        incus_text(&[
            "config",
            "get",
            "--expanded",
            &ok1,
            "security.nesting",
            "--project",
            &wide
        ]),
        "true"
    );

    // The same key in a profile the other project sees (the default
    // project's, an admin's) is refused to its operator.
    let r = app
        .post(
            "/api/v1/profiles?project=default",
            Some(&admin),
            json!({"name": nest_default, "config": {"security.nesting": "true"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let seen = app
        .get(
            &format!("/api/v1/profiles/{nest_default}?project={shared}"),
            Some(&operator),
        )
        .await;
    assert_eq!(seen.status, StatusCode::OK, "{}", seen.text);
    assert_eq!(seen.body["project"], "default");
    let r = app
        .post(
            &format!("/api/v1/instances?project={shared}&wait=60"),
            Some(&operator),
            json!({"name": esc, "source": image, "profiles": ["default", nest_default]}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "config.security.nesting");
    assert!(
        r.body["detail"].as_str().unwrap().contains(&nest_default),
        "{}",
        r.text
    );
    // An empty value of the instance's own masks nothing: Incus stores no
    // empty value, so the profile's key would be in force.
    let r = app
        .post(
            &format!("/api/v1/instances?project={shared}&wait=60"),
            Some(&operator),
            json!({"name": esc, "source": image, "profiles": ["default", nest_default],
                   "config": {"security.nesting": ""}}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "config.security.nesting");
    // The widened project's profile is no profile there at all.
    app.post(
        &format!("/api/v1/instances?project={shared}&wait=60"),
        Some(&operator),
        json!({"name": esc, "source": image, "profiles": ["default", nest]}),
    )
    .await
    .assert_problem(404, "profile_not_found");
    // Its profiles are the default project's: an operator of `shared` alone
    // may not write them.
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/profiles/{nest_default}?project={shared}"),
                Some(&operator),
            )
            .json(&json!({"description": "mine"})),
        )
        .await;
    r.assert_problem(403, "permission_denied");
    assert_eq!(r.body["project"], "default");
    app.post(
        &format!("/api/v1/profiles?project={shared}"),
        Some(&operator),
        json!({"name": unique("p")}),
    )
    .await
    .assert_problem(403, "permission_denied");
    // Nor, through `shared`, the default project's `default` profile that
    // every instance there takes.
    app.send(
        app.request(
            Method::PATCH,
            &format!("/api/v1/profiles/default?project={shared}"),
            Some(&operator),
        )
        .json(&json!({"config": {"security.nesting": "true"}})),
    )
    .await
    .assert_problem(403, "permission_denied");
    // What the shared profiles allow is the operator's to use.
    let r = app
        .post(
            &format!("/api/v1/instances?project={shared}&wait=60"),
            Some(&operator),
            json!({"name": ok2, "source": image}),
        )
        .await;
    wait_ok(&app, &operator, r).await;
    for (project, name) in [(&wide, &ok1), (&shared, &ok2)] {
        let r = app
            .delete(
                &format!("/api/v1/instances/{name}?project={project}&wait=60"),
                Some(&admin),
            )
            .await;
        wait_ok(&app, &admin, r).await;
    }
}

#[tokio::test]
async fn incus_admins_may_do_it_all_and_restrict_existing_projects() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let project = unique("open");
    let _undo = IncusUndo::new(&[&["project", "delete", &project]]);
    let name = unique("priv");
    let _cleanup = Cleanup(vec![(project.clone(), name.clone())]);
    // An admin may opt a new project out of the restriction...
    let made = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": project, "config": {"features.images": "false", "restricted": "false"}}),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    assert_eq!(made.body["policy"]["restricted"], false);

    // ...and put everything of the escape suite into an instance there.
    let config = json!({"security.privileged": "true", "security.nesting": "true",
        "linux.kernel_modules": "bridge", "security.syscalls.deny_default": "true"});
    let devices = json!({
        "h": {"type": "disk", "source": "/tmp", "path": "/host"},
        "null": {"type": "unix-char", "source": "/dev/null", "path": "/dev/lxgate-null"},
        "p": {"type": "proxy", "listen": "tcp:127.0.0.1:65012", "connect": "tcp:127.0.0.1:22"},
    });
    let r = app
        .post(
            &format!("/api/v1/instances?project={project}&wait=60"),
            Some(&admin),
            json!({"name": name, "source": {"type": "image", "alias": incus_alias()},
                "config": config, "devices": devices}),
        )
        .await;
    wait_ok(&app, &admin, r).await;
    assert_eq!(
        incus_text(&[
            "config",
            "get",
            &name,
            "security.privileged",
            "--project",
            &project
        ]),
        "true"
    );
    let shown = incus_text(&["config", "device", "show", &name, "--project", &project]);
    assert!(
        shown.contains("/host") && shown.contains("unix-char"),
        "{shown}"
    );
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/instances/{name}?project={project}"),
                Some(&admin),
            )
            .json(&json!({"config": {"raw.lxc": "lxc.cap.drop = sys_time"}})),
        )
        .await;
    wait_ok(&app, &admin, r).await;

    // In an unrestricted project lxgate's policy still holds operators:
    // nothing admin-only, and removing an admin's `none` mask over a
    // profile's host path disk would hand that disk over.
    let operator = app.user_with_role(&admin, "openop", None).await;
    app.grant(&admin, "openop", &project, "operator").await;
    let r = app
        .post(
            &format!("/api/v1/instances?project={project}"),
            Some(&operator),
            json!({"name": unique("esc"), "source": {"type": "image", "alias": incus_alias()},
                "config": {"security.privileged": "true"}}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    incus_text(&[
        "profile",
        "device",
        "add",
        "default",
        "hostfs",
        "disk",
        "source=/tmp",
        "path=/host",
        "--project",
        &project,
    ]);
    let masked = unique("masked");
    let _masked = Cleanup(vec![(project.clone(), masked.clone())]);
    let r = app
        .post(
            &format!("/api/v1/instances?project={project}&wait=60"),
            Some(&admin),
            json!({"name": masked, "source": {"type": "image", "alias": incus_alias()},
                "devices": {"hostfs": {"type": "none"}, "mask2": {"type": "none"}}}),
        )
        .await;
    wait_ok(&app, &admin, r).await;
    let path = format!("/api/v1/instances/{masked}?project={project}");
    let cur = app.get(&path, Some(&operator)).await;
    let put = |devices: Value| {
        json!({"config": cur.body["config"], "devices": devices,
            "profiles": cur.body["profiles"], "description": ""})
    };
    let r = app
        .put(
            &path,
            Some(&operator),
            put(json!({"mask2": {"type": "none"}})),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "devices.hostfs", "{}", r.text);
    // Removing a device no profile provides is fine.
    let r = app
        .put(
            &path,
            Some(&operator),
            put(json!({"hostfs": {"type": "none"}})),
        )
        .await;
    wait_ok(&app, &operator, r).await;
    let r = app
        .delete(
            &format!("/api/v1/instances/{masked}?project={project}&wait=60"),
            Some(&admin),
        )
        .await;
    wait_ok(&app, &admin, r).await;
    incus_text(&[
        "profile",
        "device",
        "remove",
        "default",
        "hostfs",
        "--project",
        &project,
    ]);

    // Restricting the existing project (emptied first): Incus now refuses
    // what lxgate does.
    let r = app
        .delete(
            &format!("/api/v1/instances/{name}?project={project}&wait=60"),
            Some(&admin),
        )
        .await;
    wait_ok(&app, &admin, r).await;
    let r = app
        .post(
            &format!("/api/v1/projects/{project}/restrict"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["policy"]["restricted"], true, "{}", r.text);
    assert_eq!(
        incus_text(&["project", "get", &project, "restricted"]),
        "true"
    );
    let got = app
        .get(&format!("/api/v1/projects/{project}"), Some(&admin))
        .await;
    assert_eq!(got.body["policy"]["restricted"], true);
    assert_eq!(got.body["config"]["restricted.devices.disk"], "managed");
    let out = incus(&[
        "init",
        &incus_alias(),
        &name,
        "--project",
        &project,
        "-c",
        "security.privileged=true",
    ]);
    assert!(
        !out.status.success(),
        "Incus accepted a privileged container after restrict"
    );
}

#[tokio::test]
async fn embedded_operators_cannot_reach_the_host() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    let operator = app.user_with_role(&admin, "escop", Some("operator")).await;
    let image = json!({"type": "image", "alias": "busybox"});
    let existing = "ok1";
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&operator),
            json!({"name": existing, "source": image,
                "config": {"limits.cpu": "1", "limits.memory": "128MiB", "user.team": "a"}}),
        )
        .await;
    wait_ok(&app, &operator, r).await;
    let lxc_config = host
        .lxcpath()
        .join(format!("default_{existing}"))
        .join("config");
    let on_disk = std::fs::read_to_string(&lxc_config).expect("LXC config");
    refused_everywhere(&app, &operator, "default", existing, image.clone()).await;
    assert_eq!(
        std::fs::read_to_string(&lxc_config).unwrap(),
        on_disk,
        "the LXC config did not change"
    );
    let dirs: Vec<String> = std::fs::read_dir(host.lxcpath())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        dirs,
        vec![format!("default_{existing}")],
        "no refused create touched the host"
    );
    refused_through_profiles(&app, &operator, &admin, "default", existing, image.clone()).await;
    let dirs: Vec<String> = std::fs::read_dir(host.lxcpath())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, vec![format!("default_{existing}")]);

    // A NIC goes on a managed bridge only, never on a host interface.
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/instances/{existing}"),
                Some(&operator),
            )
            .json(&json!({"devices": {"n0": {"type": "nic", "network": "lo"}}})),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "devices.n0.network");

    // Storage volume config from operators is held to the table as well;
    // a volume of the project goes into an instance as a disk.
    let r = app
        .post(
            "/api/v1/storage/pools/default/volumes",
            Some(&operator),
            json!({"name": "v2", "config": {"user.purpose": "data"}}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/instances/{existing}"),
                Some(&operator),
            )
            .json(
                &json!({"devices": {"data": {"type": "disk", "pool": "default",
                    "source": "v2", "path": "/data"}}}),
            ),
        )
        .await;
    wait_ok(&app, &operator, r).await;
    let got = app
        .get(&format!("/api/v1/instances/{existing}"), Some(&operator))
        .await;
    assert_eq!(got.body["devices"]["data"]["source"], "v2", "{}", got.text);
    let r = app
        .post(
            "/api/v1/storage/pools/default/volumes",
            Some(&operator),
            json!({"name": "v1", "config": {"security.shifted": "true"}}),
        )
        .await;
    r.assert_problem(403, "policy_denied");

    // Admins are not held to the policy (what the backend cannot do it
    // says itself, never with the policy's 403).
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "adm1", "source": image, "config": {"raw.lxc": "lxc.cap.drop = sys_time"}}),
        )
        .await;
    assert_ne!(r.body["code"], "policy_denied", "{}", r.text);

    // A privileged container is the admins' alone: its root is the host's,
    // so operators may not exec in it, open its console or move files.
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "priv1", "source": image, "config": {"security.privileged": "true"}}),
        )
        .await;
    wait_ok(&app, &admin, r).await;
    let r = app
        .post(
            "/api/v1/instances/priv1/exec",
            Some(&operator),
            json!({"command": ["id"]}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    app.get(
        "/api/v1/instances/priv1/files?path=/etc/passwd",
        Some(&operator),
    )
    .await
    .assert_problem(403, "policy_denied");
    let r = app
        .post(
            "/api/v1/instances/priv1/exec",
            Some(&admin),
            json!({"command": ["id"]}),
        )
        .await;
    assert_ne!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

    // The embedded backend has no project restrictions: it says so.
    app.post("/api/v1/projects/default/restrict", Some(&admin), json!({}))
        .await
        .assert_problem(501, "not_supported");
}

/// On the embedded backend each project has profiles of its own: one an
/// operator of a widened project may fill with the widened key serves that
/// project only, and the same key in another project's profile (an admin's)
/// is refused to that project's operators.
#[tokio::test]
async fn embedded_a_widened_profile_is_usable_only_where_it_was_widened() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    for (name, config) in [
        (
            "wide",
            json!({"features.images": "false", "user.lxgate.allow.config": "security.privileged"}),
        ),
        ("narrow", json!({"features.images": "false"})),
    ] {
        let r = app
            .post(
                "/api/v1/projects",
                Some(&admin),
                json!({"name": name, "config": config}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let operator = app.user_with_role(&admin, "pop", None).await;
    app.grant(&admin, "pop", "wide", "operator").await;
    app.grant(&admin, "pop", "narrow", "operator").await;
    let image = json!({"type": "image", "alias": "busybox"});
    let priv_profile = json!({"name": "priv", "config": {"security.privileged": "true"}});

    // Widened: the operator's profile may hold the key, and applies.
    let r = app
        .post(
            "/api/v1/profiles?project=wide",
            Some(&operator),
            priv_profile.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .post(
            "/api/v1/instances?project=wide&wait=60",
            Some(&operator),
            json!({"name": "w1", "source": image, "profiles": ["default", "priv"]}),
        )
        .await;
    wait_ok(&app, &operator, r).await;
    let got = app
        .get("/api/v1/instances/w1?project=wide", Some(&operator))
        .await;
    assert_eq!(got.body["expanded_config"]["security.privileged"], "true");
    let lxc_config =
        std::fs::read_to_string(host.lxcpath().join("wide_w1").join("config")).expect("LXC config");
    assert!(!lxc_config.contains("lxc.idmap"), "{lxc_config}");
    // Root in it is the host's root: still the admins' alone to enter.
    app.post(
        "/api/v1/instances/w1/exec?project=wide",
        Some(&operator),
        json!({"command": ["id"]}),
    )
    .await
    .assert_problem(403, "policy_denied");

    // Not widened: the operator may not write it, the other project's
    // profile is no profile here, and an admin's profile with it is refused
    // to the operator's instances.
    let r = app
        .post(
            "/api/v1/profiles?project=narrow",
            Some(&operator),
            priv_profile.clone(),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "config.security.privileged");
    let create = json!({"name": "n1", "source": image, "profiles": ["default", "priv"]});
    app.post(
        "/api/v1/instances?project=narrow&wait=60",
        Some(&operator),
        create.clone(),
    )
    .await
    .assert_problem(404, "profile_not_found");
    let r = app
        .post(
            "/api/v1/profiles?project=narrow",
            Some(&admin),
            priv_profile,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .post(
            "/api/v1/instances?project=narrow&wait=60",
            Some(&operator),
            create,
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "config.security.privileged");
    assert!(!host.lxcpath().join("narrow_n1").exists());
    let r = app
        .delete("/api/v1/instances/w1?project=wide&wait=60", Some(&admin))
        .await;
    wait_ok(&app, &admin, r).await;
}

/// A copy is judged as what it makes (DESIGN §4a): an operator cannot copy
/// an admin's privileged container, nor a snapshot of it, into a
/// privileged one of their own, nor an unprivileged one holding its files.
#[tokio::test]
async fn embedded_a_copy_carries_no_admin_only_key_to_an_operator() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    let r = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": "cp", "config": {"features.images": "false"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let operator = app.user_with_role(&admin, "cpop", None).await;
    app.grant(&admin, "cpop", "cp", "operator").await;
    let r = app
        .post(
            "/api/v1/instances?project=cp&wait=60",
            Some(&admin),
            json!({"name": "priv1", "source": {"type": "image", "alias": "busybox"},
                   "config": {"security.privileged": "true"}}),
        )
        .await;
    wait_ok(&app, &admin, r).await;
    let r = app
        .post(
            "/api/v1/instances/priv1/snapshots?project=cp&wait=60",
            Some(&admin),
            json!({"name": "s0"}),
        )
        .await;
    wait_ok(&app, &admin, r).await;

    // Its files are the admins' (as exec and file transfer there are): no
    // copy of it, nor of its snapshot, even one that would itself be an
    // ordinary unprivileged container.
    let case = Case {
        what: "copy of a privileged container",
        config: json!({}),
        devices: json!({}),
        field: "security.privileged",
    };
    for (from, config) in [
        ("priv1", json!({})),
        ("priv1/s0", json!({})),
        ("priv1", json!({"security.privileged": "false"})),
        ("priv1", json!({"security.privileged": ""})),
    ] {
        let r = app
            .post(
                "/api/v1/instances?project=cp&wait=60",
                Some(&operator),
                json!({"name": "c1", "source": {"type": "copy", "source": from}, "config": config}),
            )
            .await;
        assert_denied(&r, &case, &format!("{from} with {config}"));
        let got = app
            .get("/api/v1/instances/c1?project=cp", Some(&operator))
            .await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", got.text);
        assert!(!host.lxcpath().join("cp_c1").exists());
    }
    // An admin may: a copy that stays privileged, made by the admin.
    let r = app
        .post(
            "/api/v1/instances?project=cp&wait=60",
            Some(&admin),
            json!({"name": "c1", "source": {"type": "copy", "source": "priv1"}}),
        )
        .await;
    wait_ok(&app, &admin, r).await;
    let lxc_config =
        std::fs::read_to_string(host.lxcpath().join("cp_c1").join("config")).expect("LXC config");
    assert!(!lxc_config.contains("lxc.idmap"), "{lxc_config}");

    // Nor may an operator carry its files away in a backup.
    let r = app
        .post(
            "/api/v1/instances/priv1/backups?project=cp&wait=60",
            Some(&admin),
            json!({"name": "b0"}),
        )
        .await;
    wait_ok(&app, &admin, r).await;
    let export = "/api/v1/instances/priv1/backups/b0/export?project=cp";
    let r = app.get(export, Some(&operator)).await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "security.privileged", "{}", r.text);
    let r = app.get(export, Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK);
}
