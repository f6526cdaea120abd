//! Owner-only projects (issue 13, item 4): with `user.lxgate.owner-only`,
//! operators see and act on only the instances they made, in lists, on
//! every instance route, in operations and in events; the project's admins
//! see everything. And creates in flight count against per-user quotas.
//! Against the real incusd (on PostgreSQL) and real LXC (on SQLite).

use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::embedded::{Host, import_busybox};
use crate::helpers::*;
use crate::incus_instances::{Cleanup, unique};
use crate::incus_storage::IncusUndo;

fn alias() -> String {
    std::env::var("LXGATE_TEST_INCUS_IMAGE_ALIAS").unwrap_or_else(|_| "busybox".into())
}

async fn create(app: &TestApp, token: &str, project: &str, name: &str, wait: bool) -> Reply {
    let wait = if wait { "&wait=120" } else { "" };
    app.post(
        &format!("/api/v1/instances?project={project}{wait}"),
        Some(token),
        json!({"name": name, "source": {"type": "image", "alias": alias()}}),
    )
    .await
}

#[track_caller]
fn made(r: &Reply) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
}

async fn names(app: &TestApp, token: &str, project: &str) -> Vec<String> {
    let r = app
        .get(
            &format!("/api/v1/instances?project={project}&expand=false"),
            Some(token),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mut out: Vec<String> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    out.sort();
    assert_eq!(r.body["total"], out.len(), "{}", r.text);
    out
}

/// Every event a subscriber got until one matches `last` (at most 60 s).
async fn events_until(socket: &mut ClientSocket, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no matching event; got {seen:#?}"))
            .expect("the stream stays open")
            .expect("a message");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            let done = last(&v);
            seen.push(v);
            if done {
                return seen;
            }
        }
    }
}

fn about(e: &Value, name: &str) -> bool {
    let needle = format!("/instances/{name}");
    let hit = |s: &str| {
        s.contains(&format!("{needle}?"))
            || s.ends_with(&needle)
            || s.contains(&format!("{needle}/"))
    };
    e["metadata"]["source"].as_str().is_some_and(hit)
        || e["metadata"]["resources"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .flat_map(|v| v.as_array().cloned().unwrap_or_default())
            .any(|u| u.as_str().is_some_and(hit))
}

/// The story on either backend, in a new project; `n` gives instance names
/// (unique on the shared incusd).
async fn owner_only_holds(app: &TestApp, project: &str, n: &dyn Fn(&str) -> String) {
    let admin = app.admin_token().await;
    let r = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": project, "config": {"user.lxgate.owner-only": "yes"}}),
        )
        .await;
    r.assert_problem(400, "invalid_config");
    assert_eq!(
        r.body["field"], "config.user.lxgate.owner-only",
        "{}",
        r.text
    );
    let r = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": project, "config": {
                "features.images": "false", "user.lxgate.owner-only": "true"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["policy"]["owner_only"], true, "{}", r.text);
    let alice = app
        .user_with_role(&admin, "own-alice", Some("operator"))
        .await;
    let bob = app
        .user_with_role(&admin, "own-bob", Some("operator"))
        .await;
    app.user_with_role(&admin, "own-carol", None).await;
    app.grant(&admin, "own-carol", project, "admin").await;
    let carol = app.login("own-carol", PASSWORD).await.0;
    let viewer = app
        .user_with_role(&admin, "own-viewer", Some("viewer"))
        .await;

    let ev = format!("/api/v1/events/ws?project={project}&type=lifecycle,operation");
    let mut bob_events = app.ws_ticketed(&bob, &ev).await.expect("bob subscribes");
    let mut alice_events = app
        .ws_ticketed(&alice, &ev)
        .await
        .expect("alice subscribes");

    let (a1, b1) = (n("a1"), n("b1"));
    let r = create(app, &alice, project, &a1, true).await;
    made(&r);
    let alice_op = r.body["id"].as_str().unwrap().to_owned();
    made(&create(app, &bob, project, &b1, true).await);

    // Lists: each operator its own; the project's admin and admins all;
    // a viewer, who made nothing, nothing.
    assert_eq!(names(app, &alice, project).await, vec![a1.clone()]);
    assert_eq!(names(app, &bob, project).await, vec![b1.clone()]);
    let both = {
        let mut v = vec![a1.clone(), b1.clone()];
        v.sort();
        v
    };
    assert_eq!(names(app, &carol, project).await, both);
    assert_eq!(names(app, &admin, project).await, both);
    assert!(names(app, &viewer, project).await.is_empty());
    let full = app
        .get(&format!("/api/v1/instances?project={project}"), Some(&bob))
        .await;
    assert_eq!(
        full.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        full.text
    );
    assert_eq!(full.body["items"][0]["name"], b1.as_str(), "{}", full.text);

    // Every route of alice's instance answers bob as if it did not exist,
    // word for word what a missing one gets.
    let missing = app
        .get(
            &format!("/api/v1/instances/{}?project={project}", n("nope")),
            Some(&bob),
        )
        .await;
    missing.assert_problem(404, "instance_not_found");
    let q = format!("project={project}");
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/v1/instances/{a1}?{q}"), None),
        (
            Method::GET,
            format!("/api/v1/instances/{a1}/state?{q}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/instances/{a1}/stop?{q}"),
            Some(json!({})),
        ),
        (
            Method::PATCH,
            format!("/api/v1/instances/{a1}?{q}"),
            Some(json!({"config": {"user.x": "1"}})),
        ),
        (
            Method::POST,
            format!("/api/v1/instances/{a1}/rename?{q}"),
            Some(json!({"name": n("stolen")})),
        ),
        (Method::DELETE, format!("/api/v1/instances/{a1}?{q}"), None),
        (
            Method::GET,
            format!("/api/v1/instances/{a1}/snapshots?{q}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/instances/{a1}/snapshots?{q}"),
            Some(json!({"name": "s0"})),
        ),
        (
            Method::GET,
            format!("/api/v1/instances/{a1}/backups?{q}"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/instances/{a1}/logs?{q}"),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/instances/{a1}/files?{q}&path=/etc/hostname"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/instances/{a1}/exec?{q}"),
            Some(json!({"command": ["true"]})),
        ),
        (
            Method::DELETE,
            format!("/api/v1/instances/{a1}/nics/eth0?{q}"),
            None,
        ),
    ];
    for (method, path, body) in routes {
        let mut rb = app.request(method.clone(), &path, Some(&bob));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = app.send(rb).await;
        r.assert_problem(404, "instance_not_found");
        assert_eq!(
            r.body["detail"].as_str().unwrap().replace(&a1, "X"),
            missing.body["detail"]
                .as_str()
                .unwrap()
                .replace(&n("nope"), "X"),
            "{method} {path}"
        );
    }
    // The exec socket too (and the ticket is spent on the refusal).
    let exec = format!("/api/v1/instances/{a1}/exec/ws?{q}&command=true");
    let refused = app.ws_ticketed(&bob, &exec).await.unwrap_err();
    assert_eq!(ws_refusal_code(refused), (404, "instance_not_found".into()));
    // A project named twice, or left empty, reaches nothing either: the
    // guard and the handler read the query alike.
    let twice = format!("/api/v1/instances/{a1}/exec/ws?{q}&{q}&command=true&token={bob}");
    let (status, _) = ws_refusal_code(app.ws(&twice).await.unwrap_err());
    assert_eq!(status, 400);
    let r = app
        .get(&format!("/api/v1/instances/{a1}?{q}&{q}"), Some(&bob))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    // A profile that alice's instance uses is not a way into it (and the
    // refusal does not say whose instances use it).
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/profiles/default?{q}"),
                Some(&bob),
            )
            .json(&json!({"config": {"environment.PWNED": "1"}})),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert!(!r.text.contains(&a1), "{}", r.text);
    // What uses a profile shows bob only his own instances.
    let r = app
        .get(&format!("/api/v1/profiles/default?{q}"), Some(&bob))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(!r.text.contains(&a1), "{}", r.text);
    assert!(r.text.contains(&b1), "{}", r.text);
    let r = app
        .get(&format!("/api/v1/profiles/default?{q}"), Some(&carol))
        .await;
    assert!(r.text.contains(&a1), "{}", r.text);
    // A volume alice's instance uses is hers to change: bob can neither
    // attach it, snapshot it nor copy it.
    let av = n("av");
    let r = app
        .post(
            &format!("/api/v1/storage/pools/default/volumes?{q}"),
            Some(&alice),
            json!({"name": av}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app
        .post(
            &format!("/api/v1/instances/{a1}/volumes?{q}&wait=60"),
            Some(&alice),
            json!({"pool": "default", "volume": av, "path": "/mnt/av", "device": "av"}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app
        .post(
            &format!("/api/v1/instances/{b1}/volumes?{q}&wait=60"),
            Some(&bob),
            json!({"pool": "default", "volume": av, "path": "/mnt/av", "device": "av"}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert!(!r.text.contains(&a1), "{}", r.text);
    let r = app
        .post(
            &format!("/api/v1/storage/pools/default/volumes/{av}/snapshots?{q}&wait=60"),
            Some(&bob),
            json!({"name": "s0"}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    let r = app
        .post(
            &format!("/api/v1/storage/pools/default/volumes?{q}&wait=60"),
            Some(&bob),
            json!({"name": n("bv"), "source": {"volume": av}}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    // Nor give it to his instance or a profile as a disk device.
    let grab = json!({"x": {"type": "disk", "pool": "default", "source": av, "path": "/mnt/x"}});
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/instances/{b1}?{q}&wait=60"),
                Some(&bob),
            )
            .json(&json!({"devices": grab})),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    let r = app
        .post(
            &format!("/api/v1/profiles?{q}"),
            Some(&bob),
            json!({"name": "grab", "devices": grab}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    // A pool name lxgate cannot check is not a way around it.
    let odd = json!({"x": {"type": "disk", "pool": "odd_pool", "source": av, "path": "/mnt/x"}});
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/instances/{b1}?{q}"),
                Some(&bob),
            )
            .json(&json!({"devices": odd})),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "devices.x.pool", "{}", r.text);
    let r = app
        .get(
            &format!("/api/v1/storage/pools/default/volumes/{av}?{q}"),
            Some(&bob),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(!r.text.contains(&a1), "{}", r.text);
    // Nor can bob copy it.
    let r = app
        .post(
            &format!("/api/v1/instances?{q}&wait=60"),
            Some(&bob),
            json!({"name": n("b2"), "source": {"type": "copy", "source": a1}}),
        )
        .await;
    r.assert_problem(404, "instance_not_found");
    // Alice, the project's admin and admins reach it.
    for t in [&alice, &carol, &admin] {
        let r = app
            .get(&format!("/api/v1/instances/{a1}?{q}"), Some(t))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }

    // Operations: alice's create is hers (and the project admin's) to see.
    let r = app
        .get(&format!("/api/v1/operations/{alice_op}"), Some(&bob))
        .await;
    r.assert_problem(404, "operation_not_found");
    let r = app
        .get(
            &format!("/api/v1/operations/{alice_op}/wait?timeout=1"),
            Some(&bob),
        )
        .await;
    r.assert_problem(404, "operation_not_found");
    for t in [&alice, &carol] {
        let r = app
            .get(&format!("/api/v1/operations/{alice_op}"), Some(t))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let listed = |r: &Reply| -> Vec<String> {
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let r = app
        .get(&format!("/api/v1/operations?{q}"), Some(&bob))
        .await;
    assert!(!listed(&r).contains(&alice_op), "{}", r.text);
    let r = app
        .get(&format!("/api/v1/operations?{q}"), Some(&carol))
        .await;
    if !listed(&r).is_empty() {
        // (An embedded operation is listed while kept; Incus drops done ones.)
        assert!(listed(&r).contains(&alice_op), "{}", r.text);
    }

    // Events: bob's stream carries its own instance's, never alice's; it
    // is in order, so everything about a1 came before b1's creation.
    let seen = events_until(&mut bob_events, |e| {
        e["metadata"]["action"] == "instance-created" && about(e, &b1)
    })
    .await;
    assert!(
        !seen.iter().any(|e| about(e, &a1)),
        "bob saw alice's instance: {seen:#?}"
    );
    let seen = events_until(&mut alice_events, |e| {
        e["metadata"]["action"] == "instance-created" && about(e, &a1)
    })
    .await;
    assert!(seen.iter().any(|e| e["type"] == "operation"), "{seen:#?}");

    // The project's state shows a non-admin only its own usage.
    let st = app
        .get(&format!("/api/v1/projects/{project}/state"), Some(&bob))
        .await;
    assert_eq!(st.status, StatusCode::OK, "{}", st.text);
    let users: Vec<&str> = st.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(users, vec!["own-bob"], "{}", st.text);
    let st = app
        .get(&format!("/api/v1/projects/{project}/state"), Some(&carol))
        .await;
    assert_eq!(st.body["users"].as_array().unwrap().len(), 2, "{}", st.text);

    // Turned off, the project is shared again, at once.
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/projects/{project}"),
                Some(&admin),
            )
            .json(&json!({"config": {"user.lxgate.owner-only": "false"}})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    assert_eq!(names(app, &bob, project).await, both);
    let r = app
        .get(&format!("/api/v1/instances/{a1}?{q}"), Some(&bob))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    for name in [&a1, &b1] {
        let r = app
            .delete(
                &format!("/api/v1/instances/{name}?{q}&force=true&wait=60"),
                Some(&admin),
            )
            .await;
        assert!(r.status.is_success(), "{}", r.text);
    }
    let r = app
        .delete(
            &format!("/api/v1/storage/pools/default/volumes/{av}?{q}&wait=60"),
            Some(&admin),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
}

#[tokio::test]
async fn owner_only_projects_hide_others_instances_on_incus() {
    let vars = crate::incus_transport::suite_env();
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = spawn_app_with(Db::Postgres, &pairs).await;
    let project = unique("own");
    let suffix = unique("o");
    let n = move |x: &str| format!("{x}-{}", &suffix[2..]);
    let _undo = IncusUndo::new(&[&["project", "delete", &project]]);
    let _instances = Cleanup(
        ["a1", "b1", "b2", "stolen", "x1"]
            .iter()
            .map(|x| (project.clone(), n(x)))
            .collect(),
    );
    owner_only_holds(&app, &project, &n).await;

    // An instance made outside lxgate belongs to nobody: creating its name
    // is refused before anything is recorded, so it does not become the
    // creator's (which would open it to them).
    let outside = n("x1");
    crate::incus_storage::incus_ok(&["init", &alias(), &outside, "--project", &project]);
    let admin = app.admin_token().await;
    let bob = app.login("own-bob", PASSWORD).await.0;
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/projects/{project}"),
                Some(&admin),
            )
            .json(&json!({"config": {"user.lxgate.owner-only": "true"}})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = create(&app, &bob, &project, &outside, true).await;
    r.assert_problem(409, "conflict");
    let r = app
        .get(
            &format!("/api/v1/instances/{outside}?project={project}"),
            Some(&bob),
        )
        .await;
    r.assert_problem(404, "instance_not_found");
    let r = app
        .get(
            &format!("/api/v1/instances/{outside}?project={project}"),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn owner_only_projects_hide_others_instances_on_embedded() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    // Names no hex request id can contain (the test looks for them in answers).
    owner_only_holds(&app, "owned", &|x: &str| format!("own-{x}")).await;
}

/// Creates racing for the last room under a quota: counted while in
/// flight, so no more get in than the quota allows (without the
/// reservation, each saw the others as not there yet).
#[tokio::test]
async fn creates_in_flight_count_against_quotas() {
    let app = crate::incus_instances::incus_app().await;
    let admin = app.admin_token().await;
    let project = unique("res");
    let suffix = unique("r");
    let n = move |x: &str| format!("{x}-{}", &suffix[2..]);
    let _undo = IncusUndo::new(&[&["project", "delete", &project]]);
    let _instances = Cleanup(
        (0..4)
            .map(|i| (project.clone(), n(&format!("c{i}"))))
            .collect(),
    );
    let r = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": project, "config": {
                "features.images": "false",
                "user.lxgate.limits.instances-per-user": "1"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let op = app.user_with_role(&admin, "res-op", Some("operator")).await;
    let racing: Vec<String> = (0..3).map(|i| n(&format!("c{i}"))).collect();
    let answers =
        futures::future::join_all(racing.iter().map(|c| create(&app, &op, &project, c, false)))
            .await;
    let accepted = answers
        .iter()
        .filter(|r| r.status == StatusCode::ACCEPTED)
        .count();
    for r in &answers {
        if r.status != StatusCode::ACCEPTED {
            r.assert_problem(403, "quota_exceeded");
        }
    }
    assert!(accepted <= 1, "{accepted} creates got past a quota of one");
    // Once they settle, the user has what the quota allows: one more
    // create gets in only if none did.
    for r in answers.iter().filter(|r| r.status == StatusCode::ACCEPTED) {
        let id = r.body["operation_id"].as_str().unwrap();
        let w = app
            .get(
                &format!("/api/v1/operations/{id}/wait?timeout=120"),
                Some(&op),
            )
            .await;
        assert_eq!(w.body["status_code"], 200, "{}", w.text);
    }
    let last = create(&app, &op, &project, &n("c3"), true).await;
    if accepted == 1 {
        last.assert_problem(403, "quota_exceeded");
    } else {
        made(&last);
    }
    let st = app
        .get(&format!("/api/v1/projects/{project}/state"), Some(&admin))
        .await;
    // A refused create leaves nothing reserved: one instance is counted.
    assert_eq!(st.body["users"][0]["instances"], 1, "{}", st.text);
}
