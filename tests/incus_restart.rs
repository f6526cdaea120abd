//! Tests that stop and restart the shared test incusd. They live in a test
//! binary of their own: cargo runs test binaries one after another, so no
//! other test is using incusd meanwhile.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use helpers::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn ctl(cmd: &str) {
    let status = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/incus-test-ctl.sh"
        ))
        .arg(cmd)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("incus-test-ctl.sh runs");
    assert!(status.success(), "incus-test-ctl.sh {cmd} failed");
}

/// Starts incusd again even if the test fails half-way.
struct Restart;
impl Drop for Restart {
    fn drop(&mut self) {
        ctl("start");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incusd_going_away_is_503_and_events_reconnect() {
    let socket = std::env::var("LXGATE_TEST_INCUS_SOCKET").expect("run with `make test`");
    let app = spawn_app_with(
        Db::Sqlite,
        &[("BACKEND", "incus"), ("INCUS_SOCKET_PATH", &socket)],
    )
    .await;
    let admin = app.admin_token().await;
    let mut events = app
        .ws_ticketed(&admin, "/api/v1/events/ws?type=lifecycle")
        .await
        .expect("subscribe");

    let _restart = Restart;
    ctl("stop");
    app.get("/api/v1/instances", Some(&admin))
        .await
        .assert_problem(503, "backend_unavailable");
    assert_eq!(app.get("/health", None).await.status, 200);
    assert_eq!(app.get("/health/ready", None).await.status, 503);
    ctl("start");
    // Ready again within a bounded time.
    let mut ready = false;
    for _ in 0..60 {
        if app.get("/health/ready", None).await.status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(ready, "lxgate never saw incusd come back");
    // The event stream reconnected (backoff is at most 10 s): the same
    // subscriber sees an event caused after the restart.
    let name = format!("rs-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut seen = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    'outer: while tokio::time::Instant::now() < deadline {
        let r = app
            .post(
                "/api/v1/instances?wait=60",
                Some(&admin),
                json!({"name": name, "source": {"type": "image", "alias": "busybox"}}),
            )
            .await;
        if r.body["status_code"] == 200 {
            let until = tokio::time::Instant::now() + Duration::from_secs(15);
            while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, events.next()).await {
                if let Message::Text(t) = msg {
                    let e: Value = serde_json::from_str(&t).unwrap();
                    if e["metadata"]["action"] == "instance-created" {
                        seen = true;
                        break 'outer;
                    }
                }
            }
        }
        let _ = app
            .send(app.request(
                reqwest::Method::DELETE,
                &format!("/api/v1/instances/{name}?wait=30"),
                Some(&admin),
            ))
            .await;
    }
    let _ = Command::new("incus")
        .args(["delete", "--force", &name])
        .env(
            "INCUS_DIR",
            std::env::var("LXGATE_TEST_INCUS_DIR").unwrap_or_default(),
        )
        .output();
    assert!(
        seen,
        "no event reached the subscriber after incusd restarted"
    );
}
