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

/// One restart at a time (each test has a runtime of its own: a tokio
/// mutex works across them).
static RESTARTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts incusd again even if the test fails half-way.
struct Restart;
impl Drop for Restart {
    fn drop(&mut self) {
        ctl("start");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incusd_going_away_is_503_and_events_reconnect() {
    let _one = RESTARTS.lock().await;
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

    // A list kept in memory before incusd goes...
    let r = app.get("/api/v1/instances", Some(&admin)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(app.get("/api/v1/instances", Some(&admin)).await.status, 200);

    let _restart = Restart;
    ctl("stop");
    // ...is not answered once lxgate has seen the stream end (at once,
    // give or take the read of the close).
    let gone = app
        .get_until(
            "/api/v1/instances",
            Some(&admin),
            (Duration::from_secs(2), Duration::from_millis(20)),
            |r| r.status == 503,
        )
        .await;
    eprintln!("lists answer 503 {gone:?} after incusd stopped");
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
    if seen {
        // The stream is back and lists follow it again: a change made with
        // the CLI shows within a second.
        let out = Command::new("incus")
            .args(["config", "set", &name, "user.after-restart=1"])
            .env(
                "INCUS_DIR",
                std::env::var("LXGATE_TEST_INCUS_DIR").unwrap_or_default(),
            )
            .output()
            .expect("incus runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        app.get_until(
            "/api/v1/instances",
            Some(&admin),
            (Duration::from_secs(1), Duration::from_millis(25)),
            |r| {
                r.body["items"].as_array().is_some_and(|a| {
                    a.iter().any(|i| {
                        i["name"] == name.as_str() && i["config"]["user.after-restart"] == "1"
                    })
                })
            },
        )
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

/// An operation lxgate started is never a 404 and never Running for ever:
/// one incusd forgot when it restarted mid-way reads as failed, saying so;
/// one that finished and that incusd forgot since reads as it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_outlive_the_backend_forgetting_them() {
    let _one = RESTARTS.lock().await;
    let socket = std::env::var("LXGATE_TEST_INCUS_SOCKET").expect("run with `make test`");
    let app = spawn_app_with(
        Db::Sqlite,
        &[("BACKEND", "incus"), ("INCUS_SOCKET_PATH", &socket)],
    )
    .await;
    let admin = app.admin_token().await;
    let name = format!("lost-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let r = app
        .post(
            "/api/v1/instances?wait=120",
            Some(&admin),
            json!({"name": name, "source": {"type": "image", "alias": "busybox"}, "start": true}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let created = r.body["id"].as_str().unwrap().to_owned();
    let r = app
        .post(
            &format!("/api/v1/instances/{name}/exec"),
            Some(&admin),
            json!({"command": ["sleep", "600"]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let running = r.body["operation_id"].as_str().unwrap().to_owned();
    let r = app
        .post(
            &format!("/api/v1/instances/{name}/exec?wait=60"),
            Some(&admin),
            json!({"command": ["sh", "-c", "exit 3"]}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let exited = r.body["id"].as_str().unwrap().to_owned();

    {
        let _restart = Restart;
        ctl("stop");
        ctl("start");
    }
    let mut ready = false;
    for _ in 0..60 {
        if app.get("/health/ready", None).await.status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(ready, "lxgate never saw incusd come back");

    // The exec incusd lost: failed, with why, at once (also to /wait).
    let r = app
        .get(&format!("/api/v1/operations/{running}"), Some(&admin))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status_code"], 400, "{}", r.text);
    assert_eq!(r.body["status"], "Failure", "{}", r.text);
    assert!(
        r.body["err"].as_str().unwrap().contains("restarted"),
        "{}",
        r.text
    );
    let started = std::time::Instant::now();
    let r = app
        .get(
            &format!("/api/v1/operations/{running}/wait?timeout=30"),
            Some(&admin),
        )
        .await;
    assert_eq!(r.body["status_code"], 400, "{}", r.text);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The create, finished before: as it ended.
    let r = app
        .get(&format!("/api/v1/operations/{created}"), Some(&admin))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(r.body["description"], "instance.create", "{}", r.text);
    // An exec, with how its command exited.
    let r = app
        .get(&format!("/api/v1/operations/{exited}"), Some(&admin))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(r.body["metadata"]["return"], 3, "{}", r.text);

    let _ = Command::new("incus")
        .args(["delete", "--force", &name])
        .env(
            "INCUS_DIR",
            std::env::var("LXGATE_TEST_INCUS_DIR").unwrap_or_default(),
        )
        .output();
}
