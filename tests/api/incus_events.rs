//! The events relay in front of the real incusd.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::incus_instances::{Cleanup, incus_app, unique};

/// Reads events until one matches, for at most `secs` seconds.
async fn next_matching(
    socket: &mut ClientSocket,
    secs: u64,
    pred: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let msg = tokio::time::timeout_at(deadline, socket.next())
            .await
            .ok()??;
        if let Ok(Message::Text(t)) = msg {
            let v: Value = serde_json::from_str(&t).expect("events are JSON");
            if pred(&v) {
                return Some(v);
            }
        }
    }
}

fn is_created(name: &str) -> impl Fn(&Value) -> bool + '_ {
    move |e| {
        e["type"] == "lifecycle"
            && e["metadata"]["action"] == "instance-created"
            && e["metadata"]["source"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("/1.0/instances/{name}")))
    }
}

#[tokio::test]
async fn lifecycle_and_operation_events_reach_subscribers() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let name = unique("ev");
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);

    let path = "/api/v1/events/ws?type=lifecycle,operation";
    let ticket = app.ticket(&admin, path).await;
    let mut events = app
        .ws(&format!("{path}&ticket={ticket}"))
        .await
        .expect("subscribe");
    // The ticket worked once and never again.
    let again = app.ws(&format!("{path}&ticket={ticket}")).await;
    assert_eq!(ws_refusal(again.unwrap_err()), 401);
    let mut ops = app
        .ws(&format!("/api/v1/operations/ws?token={admin}"))
        .await
        .expect("subscribe to operations");
    // Give the upstream connection a moment to be up before acting.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": name, "source": {"type": "image", "alias": "busybox"}}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let op_id = r.body["id"].as_str().unwrap().to_owned();

    let created = next_matching(&mut events, 10, is_created(&name)).await;
    assert!(created.is_some(), "no instance-created event for {name}");
    let created = created.unwrap();
    assert_eq!(created["project"], "default");
    // Incus's `requestor` is lxgate's own identity towards Incus (its
    // certificate, or root on the socket), never the user: not relayed.
    assert!(created["metadata"].get("requestor").is_none(), "{created}");
    // Operation events say who started them through lxgate instead.
    let op_event = next_matching(&mut ops, 10, |e| {
        e["metadata"]["id"] == op_id.as_str() && e["metadata"]["status_code"] == 200
    })
    .await;
    let op_event = op_event.expect("the create operation's events");
    assert_eq!(op_event["type"], "operation");
    assert_eq!(
        op_event["metadata"]["requested_by"],
        json!({"username": ADMIN, "auth_method": "bearer"}),
        "{op_event}"
    );
    assert!(
        op_event["metadata"].get("requestor").is_none(),
        "{op_event}"
    );

    // Through a personal access token: the token, on the operation and
    // its events.
    let r = app
        .post(
            "/api/v1/auth/tokens",
            Some(&admin),
            json!({"name": "events", "expires_in": 600}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text);
    let (secret, token_id) = (
        r.body["token"].as_str().unwrap().to_owned(),
        r.body["id"].as_str().unwrap().to_owned(),
    );
    let r = app
        .delete(&format!("/api/v1/instances/{name}?wait=60"), Some(&secret))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let by = json!({"username": ADMIN, "auth_method": "pat", "token_id": token_id});
    assert_eq!(r.body["requested_by"], by, "{}", r.text);
    let op_id = r.body["id"].as_str().unwrap().to_owned();
    let got = app
        .get(&format!("/api/v1/operations/{op_id}"), Some(&admin))
        .await;
    assert_eq!(got.body["requested_by"], by, "{}", got.text);
    let op_event = next_matching(&mut ops, 10, |e| {
        e["metadata"]["id"] == op_id.as_str() && e["metadata"]["status_code"] == 200
    })
    .await
    .expect("the delete operation's events");
    assert_eq!(op_event["metadata"]["requested_by"], by, "{op_event}");
}

#[tokio::test]
async fn subscribers_only_see_their_projects() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let project = unique("evp");
    let dir = std::env::var("LXGATE_TEST_INCUS_DIR").unwrap();
    let out = std::process::Command::new("incus")
        .args([
            "project",
            "create",
            &project,
            "-c",
            "features.images=false",
            "-c",
            "features.profiles=false",
        ])
        .env("INCUS_DIR", &dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    struct DropProject(String, String);
    impl Drop for DropProject {
        fn drop(&mut self) {
            let _ = std::process::Command::new("incus")
                .args(["project", "delete", &self.1])
                .env("INCUS_DIR", &self.0)
                .output();
        }
    }
    let _p = DropProject(dir, project.clone());
    let in_default = unique("evd");
    let in_project = unique("evq");
    let _cleanup = Cleanup(vec![
        ("default".into(), in_default.clone()),
        (project.clone(), in_project.clone()),
    ]);
    let member = app.user_with_role(&admin, "member", None).await;
    app.grant(&admin, "member", &project, "viewer").await;

    let mut mine = app
        .ws_ticketed(&member, "/api/v1/events/ws?type=lifecycle")
        .await
        .expect("subscribe");
    // Asking for a project it has no role in, or for logging, is refused.
    let refused = app
        .ws_ticketed(&member, "/api/v1/events/ws?project=default")
        .await;
    assert_eq!(ws_refusal(refused.unwrap_err()), 403);
    let refused = app
        .ws_ticketed(&member, "/api/v1/events/ws?type=logging")
        .await;
    assert_eq!(ws_refusal(refused.unwrap_err()), 403);
    let refused = app.ws("/api/v1/events/ws").await;
    assert_eq!(ws_refusal(refused.unwrap_err()), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;

    for (proj, name) in [("default", &in_default), (project.as_str(), &in_project)] {
        let r = app
            .post(
                &format!("/api/v1/instances?project={proj}&wait=60"),
                Some(&admin),
                json!({"name": name, "source": {"type": "image", "alias": "busybox"}}),
            )
            .await;
        assert_eq!(r.body["status_code"], 200, "{}", r.text);
    }
    // Its own project's event arrives; the default project's never does.
    let seen = next_matching(&mut mine, 10, |e| {
        e["metadata"]["action"] == "instance-created"
    })
    .await
    .expect("an instance-created event");
    assert_eq!(seen["project"], project.as_str(), "{seen}");
    let leaked = next_matching(&mut mine, 2, is_created(&in_default)).await;
    assert!(leaked.is_none(), "saw another project's event: {leaked:?}");
}

#[tokio::test]
async fn admins_can_follow_the_backend_log() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let name = unique("evl");
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);
    let mut log = app
        .ws_ticketed(&admin, "/api/v1/events/ws?type=logging")
        .await
        .expect("subscribe to logging");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": name, "source": {"type": "image", "alias": "busybox"}}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let line = next_matching(&mut log, 10, |e| e["type"] == "logging").await;
    let line = line.expect("a logging event from incusd");
    assert!(line["metadata"]["message"].is_string(), "{line}");
}
