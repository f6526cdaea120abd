//! Exec (interactive over WebSocket, and recorded) and the console, through
//! lxgate in front of the real incusd.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::incus_instances::{Cleanup, incus_app, incus_app_with, unique};

/// Creates and starts a busybox container; returns its name.
async fn running_container(app: &TestApp, admin: &str) -> String {
    let name = unique("ex");
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(admin),
            json!({"name": name, "source": {"type": "image", "alias": "busybox"}, "start": true}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    name
}

/// Reads binary output until it contains `needle` (at most `secs` seconds).
async fn read_until(socket: &mut ClientSocket, needle: &str, secs: u64) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(_))) => {}
            _ => panic!("{needle:?} never came; got {seen:?}"),
        }
    }
    seen
}

#[tokio::test]
async fn interactive_exec_relays_io_resize_and_exit_code() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let name = running_container(&app, &admin).await;
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);

    let mut term = app
        .ws_ticketed(
            &admin,
            &format!("/api/v1/instances/{name}/exec/ws?command=sh&width=80&height=24"),
        )
        .await
        .expect("terminal opens");
    term.send(Message::Binary("echo hello-$((6*7))\n".into()))
        .await
        .unwrap();
    read_until(&mut term, "hello-42", 10).await;

    // A resize is accepted and the session goes on.
    term.send(Message::Text(
        json!({"type": "resize", "width": 120, "height": 40})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    term.send(Message::Binary("echo still-$((1+1))\n".into()))
        .await
        .unwrap();
    read_until(&mut term, "still-2", 10).await;

    // The exit code is the last frame before close.
    term.send(Message::Binary("exit 3\n".into())).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let exit = loop {
        match tokio::time::timeout_at(deadline, term.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => break serde_json::from_str::<Value>(&t).unwrap(),
            Ok(Some(Ok(_))) => {}
            other => panic!("no exit frame: {other:?}"),
        }
    };
    assert_eq!(exit, json!({"type": "exit", "exit_code": 3}));
    let closed = tokio::time::timeout(Duration::from_secs(5), term.next()).await;
    assert!(
        matches!(closed, Ok(Some(Ok(Message::Close(_)))) | Ok(None)),
        "{closed:?}"
    );
}

/// Far more data than any buffer in the path holds, through `cat` on a
/// terminal: the relay must keep draining stdout while stdin waits (it once
/// deadlocked here, found by the exec benchmark).
#[tokio::test]
async fn a_large_round_trip_through_cat_does_not_stall() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let name = running_container(&app, &admin).await;
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);

    let term = app
        .ws(&format!(
            "/api/v1/instances/{name}/exec/ws?command=cat&token={admin}"
        ))
        .await
        .expect("terminal opens");
    let (mut tx, mut rx) = term.split();
    const LINES: usize = 4096;
    let line = format!("{}\n", "x".repeat(1023));
    let writer = tokio::spawn(async move {
        for _ in 0..LINES {
            tx.send(Message::Binary(line.clone().into())).await.unwrap();
        }
        tx
    });
    // The terminal echoes each line and cat prints it again. A terminal in
    // canonical mode may drop a few bytes when its line buffer overflows, so
    // ask for nearly all of them: a stalled relay stops far below this.
    let expected = 2 * LINES * 1023 * 9 / 10;
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen < expected {
        match tokio::time::timeout_at(deadline, rx.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen += b.iter().filter(|c| **c == b'x').count(),
            Ok(Some(Ok(_))) => {}
            other => panic!("stalled after {seen} of {expected} bytes: {other:?}"),
        }
    }
    let _ = writer.await.unwrap();
}

#[tokio::test]
async fn recorded_exec_returns_exit_code_and_output() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let name = running_container(&app, &admin).await;
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);

    let r = app
        .post(
            &format!("/api/v1/instances/{name}/exec?wait=30"),
            Some(&admin),
            json!({"command": ["sh", "-c", "echo out-$HELLO; echo err >&2; exit 5"],
                   "environment": {"HELLO": "world"}}),
        )
        .await;
    assert_eq!(r.status, reqwest::StatusCode::OK, "{}", r.text);
    let meta = &r.body["metadata"];
    assert_eq!(meta["exit_code"], 5, "{}", r.text);
    assert_eq!(meta["stdout"], "out-world\n");
    assert_eq!(meta["stderr"], "err\n");

    // Without waiting: 202, and the finished operation carries the output.
    let r = app
        .post(
            &format!("/api/v1/instances/{name}/exec"),
            Some(&admin),
            json!({"command": ["echo", "later"]}),
        )
        .await;
    assert_eq!(r.status, reqwest::StatusCode::ACCEPTED, "{}", r.text);
    let wait = r.body["wait_url"].as_str().unwrap();
    let done = app.get(&format!("{wait}?timeout=30"), Some(&admin)).await;
    assert_eq!(done.body["metadata"]["stdout"], "later\n", "{}", done.text);
    assert_eq!(done.body["metadata"]["exit_code"], 0);

    // Bad commands never reach Incus.
    let r = app
        .post(
            &format!("/api/v1/instances/{name}/exec"),
            Some(&admin),
            json!({"command": []}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "command");
}

#[tokio::test]
async fn console_attaches_and_terminal_errors_are_clear() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let name = running_container(&app, &admin).await;
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);

    let mut console = app
        .ws_ticketed(&admin, &format!("/api/v1/instances/{name}/console/ws"))
        .await
        .expect("console opens");
    console.send(Message::Binary("\n".into())).await.unwrap();
    // Whatever the console prints, the relay answers with data or a clean
    // close, never a broken socket. (Under a loaded full run Incus has been
    // seen ending a console session of a container that had just started;
    // a clean close is fine, an error is not.)
    match tokio::time::timeout(Duration::from_secs(2), console.next()).await {
        Err(_) | Ok(Some(Ok(_))) => {}
        other => panic!("the console socket broke: {other:?}"),
    }
    let _ = console.close(None).await;

    // Errors come back as HTTP before any upgrade.
    let viewer = app.user_with_role(&admin, "viewer1", Some("viewer")).await;
    let r = app
        .ws_ticketed(&viewer, &format!("/api/v1/instances/{name}/exec/ws"))
        .await;
    assert_eq!(ws_refusal(r.unwrap_err()), 403);
    let r = app
        .ws_ticketed(&admin, &format!("/api/v1/instances/{name}/exec/ws?width=0"))
        .await;
    assert_eq!(ws_refusal(r.unwrap_err()), 400);
    let r = app
        .ws_ticketed(&admin, "/api/v1/instances/no-such-one/exec/ws")
        .await;
    assert_eq!(ws_refusal(r.unwrap_err()), 404);
    // Plain HTTP on a WebSocket route: 426 problem+json.
    app.get(&format!("/api/v1/instances/{name}/exec/ws"), Some(&admin))
        .await
        .assert_problem(426, "websocket_required");
}

/// An operator's root shell does not outlive the operator role: the exec
/// socket closes (4403) within 5 s of the project role being removed, and
/// a console closes (4401) when its user is disabled.
#[tokio::test]
async fn terminals_close_when_access_is_revoked() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let name = running_container(&app, &admin).await;
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);

    let op = unique("op");
    let operator = app.user_with_role(&admin, &op, None).await;
    app.grant(&admin, &op, "default", "operator").await;
    let mut term = app
        .ws_ticketed(
            &operator,
            &format!("/api/v1/instances/{name}/exec/ws?command=sh"),
        )
        .await
        .expect("terminal opens");
    term.send(Message::Binary("echo still-$((40+2))\n".into()))
        .await
        .unwrap();
    read_until(&mut term, "still-42", 20).await;
    let r = app
        .delete(
            &format!("/api/v1/users/{op}/projects/default"),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let (code, reason, after) = crate::revocation::closed(&mut term).await;
    assert_eq!(code, 4403, "{reason} after {after:?}");

    let con = unique("con");
    let console_user = app.user_with_role(&admin, &con, Some("operator")).await;
    let mut console = app
        .ws_ticketed(
            &console_user,
            &format!("/api/v1/instances/{name}/console/ws"),
        )
        .await
        .expect("console opens");
    let r = app
        .send(
            app.request(
                reqwest::Method::PATCH,
                &format!("/api/v1/users/{con}"),
                Some(&admin),
            )
            .json(&json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    let (code, reason, _) = crate::revocation::closed(&mut console).await;
    assert_eq!((code, reason.as_str()), (4401, "account disabled"));
}

/// On Incus: each stream of a recorded exec is read back up to
/// EXEC_OUTPUT_MAX_BYTES; `timeout` is refused (Incus cannot stop a recorded
/// command) rather than ignored; MAX_RUNNING_OPERATIONS_PER_USER holds.
#[tokio::test]
async fn recorded_exec_is_bounded_on_incus() {
    let app = incus_app_with(&[
        ("EXEC_OUTPUT_MAX_BYTES", "1000"),
        ("MAX_RUNNING_OPERATIONS_PER_USER", "1"),
    ])
    .await;
    let admin = app.admin_token().await;
    let name = running_container(&app, &admin).await;
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);
    let exec_url = format!("/api/v1/instances/{name}/exec");
    let exec_wait = format!("{exec_url}?wait=60");
    let exec = |body: Value| app.post(&exec_wait, Some(&admin), body);

    let r = exec(json!({"command": ["sh", "-c", "yes abcd | head -c 5000; echo err >&2"]})).await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let meta = &r.body["metadata"];
    assert_eq!(meta["stdout"].as_str().unwrap().len(), 1000, "{}", r.text);
    assert_eq!(meta["stderr"], "err\n");
    assert_eq!(meta["truncated"], true);

    let r = exec(json!({"command": ["sleep", "600"], "timeout": 5})).await;
    r.assert_problem(501, "not_supported");
    assert!(
        r.body["detail"].as_str().unwrap().contains("timeout"),
        "{}",
        r.text
    );

    let slow = app
        .post(&exec_url, Some(&admin), json!({"command": ["sleep", "3"]}))
        .await;
    assert_eq!(slow.status, reqwest::StatusCode::ACCEPTED, "{}", slow.text);
    let refused = exec(json!({"command": ["true"]})).await;
    refused.assert_problem(429, "too_many_operations");
    assert_eq!(refused.header("retry-after"), Some("5"));
    let wait = slow.body["wait_url"].as_str().unwrap();
    let done = app.get(&format!("{wait}?timeout=30"), Some(&admin)).await;
    assert_eq!(done.body["status_code"], 200, "{}", done.text);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = exec(json!({"command": ["true"]})).await;
        if r.status == reqwest::StatusCode::OK {
            assert_eq!(r.body["status_code"], 200, "{}", r.text);
            break;
        }
        r.assert_problem(429, "too_many_operations");
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was not freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
