//! What lxgate must not hand out: Incus websocket secrets, operators' exec
//! output to viewers, a readable database, open metrics, cacheable tokens.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::incus_instances::{Cleanup, incus_app, unique};
use crate::incus_snapshots::{container, incus_query};

/// Reads terminal output until it contains `needle`.
async fn read_until(socket: &mut ClientSocket, needle: &str) {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(_))) => {}
            other => panic!("{needle:?} never came; got {seen:?} then {other:?}"),
        }
    }
}

/// Every text message on an events socket until the operation `id` has
/// finished (at most 20 s).
async fn events_until_done(socket: &mut ClientSocket, id: &str) -> Vec<String> {
    let mut texts = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let ev: Value = serde_json::from_str(&t).unwrap();
                texts.push(t.to_string());
                if ev["metadata"]["id"] == id && ev["metadata"]["status_code"].as_i64() >= Some(200)
                {
                    return texts;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("operation {id} never finished on the events socket: {other:?}"),
        }
    }
}

/// No secret and no `fds` key anywhere in `text`.
fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    assert!(!text.contains("\"fds\""), "{what} carries fds: {text}");
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} carries a secret: {text}"
        );
    }
}

#[tokio::test]
async fn incus_websocket_secrets_never_reach_clients() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let viewer = app.user_with_role(&admin, "watcher", None).await;
    app.grant(&admin, "watcher", "default", "viewer").await;
    let name = unique("fds");
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);
    container(&app, &admin, &name, true).await;

    // Subscribed before the exec starts, so they see its whole life.
    let mut admin_events = app
        .ws(&format!("/api/v1/events/ws?token={admin}"))
        .await
        .expect("admin events");
    let mut viewer_events = app
        .ws(&format!(
            "/api/v1/operations/ws?project=default&token={viewer}"
        ))
        .await
        .expect("viewer events");

    let mut term = app
        .ws(&format!(
            "/api/v1/instances/{name}/exec/ws?command=sh&token={admin}"
        ))
        .await
        .expect("terminal opens");
    term.send(Message::Binary("echo ready-$((2*3))\n".into()))
        .await
        .unwrap();
    read_until(&mut term, "ready-6").await;

    // The running exec operation, found through lxgate.
    let list = app
        .get("/api/v1/operations?project=default", Some(&admin))
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let op = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["class"] == "websocket" && op["status_code"] == 103)
        .unwrap_or_else(|| panic!("no running exec operation: {}", list.text))
        .clone();
    let id = op["id"].as_str().unwrap().to_owned();

    // Incus itself did hand out the secrets (so the checks below can fail).
    let upstream = incus_query(&format!("/1.0/operations/{id}")).expect("Incus has the operation");
    let fds = upstream["metadata"]["fds"]
        .as_object()
        .unwrap_or_else(|| panic!("Incus gave no fds: {upstream}"));
    let secrets: Vec<String> = fds
        .values()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert!(!secrets.is_empty(), "{upstream}");

    for (who, token) in [("admin", &admin), ("viewer", &viewer)] {
        let r = app
            .get("/api/v1/operations?project=default", Some(token))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{who}: {}", r.text);
        assert!(r.text.contains(&id), "{who} sees the operation: {}", r.text);
        assert_clean(&format!("{who}'s list"), &r.text, &secrets);
        let r = app
            .get(&format!("/api/v1/operations/{id}"), Some(token))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{who}: {}", r.text);
        assert_eq!(r.body["class"], "websocket");
        assert_clean(&format!("{who}'s get"), &r.text, &secrets);
    }
    let all = app
        .get("/api/v1/operations?all-projects=true", Some(&admin))
        .await;
    assert_clean("the all-projects list", &all.text, &secrets);

    term.send(Message::Binary("exit 0\n".into())).await.unwrap();
    let done = app
        .get(
            &format!("/api/v1/operations/{id}/wait?timeout=20"),
            Some(&admin),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert_clean("wait", &done.text, &secrets);

    for (who, socket) in [("admin", &mut admin_events), ("viewer", &mut viewer_events)] {
        let texts = events_until_done(socket, &id).await;
        assert!(
            texts.iter().any(|t| t.contains(&id)),
            "{who} saw the operation"
        );
        for t in &texts {
            assert_clean(&format!("{who}'s event"), t, &secrets);
        }
    }

    // The console's operation carries websocket secrets the same way.
    let console = app
        .ws(&format!(
            "/api/v1/instances/{name}/console/ws?token={admin}"
        ))
        .await
        .expect("console opens");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (console_id, upstream) = loop {
        let list = app
            .get("/api/v1/operations?project=default", Some(&viewer))
            .await;
        let running = list.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|op| {
                let oid = op["id"].as_str()?;
                // Not the exec's (finished by now, but listed for a while).
                (op["class"] == "websocket" && op["status_code"] == 103 && oid != id)
                    .then(|| oid.to_owned())
            });
        if let Some(cid) = running
            && let Some(up) = incus_query(&format!("/1.0/operations/{cid}"))
        {
            break (cid, up);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no console operation: {}",
            list.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let secrets: Vec<String> = upstream["metadata"]["fds"]
        .as_object()
        .unwrap_or_else(|| panic!("Incus gave the console no fds: {upstream}"))
        .values()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert!(!secrets.is_empty(), "{upstream}");
    for token in [&admin, &viewer] {
        let r = app
            .get(&format!("/api/v1/operations/{console_id}"), Some(token))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_clean("the console operation", &r.text, &secrets);
        let r = app
            .get("/api/v1/operations?project=default", Some(token))
            .await;
        assert_clean("the list with the console", &r.text, &secrets);
    }
    drop(console);
}

/// Output of a recorded exec must not be in `op` (what a viewer gets).
fn assert_no_output(what: &str, op: &Value) {
    let meta = &op["metadata"];
    for key in ["stdout", "stderr", "output", "environment"] {
        assert!(meta.get(key).is_none(), "{what} shows {key}: {op}");
    }
}

/// Runs a recorded exec as `requester`, then reads the operation as each
/// role: the requester and operators see the output, viewers do not.
async fn exec_output_visibility(app: &TestApp, instance: &str) {
    let admin = app.admin_token().await;
    let requester = app.user_with_role(&admin, "runner", None).await;
    app.grant(&admin, "runner", "default", "operator").await;
    let operator = app.user_with_role(&admin, "colleague", None).await;
    app.grant(&admin, "colleague", "default", "operator").await;
    let viewer = app.user_with_role(&admin, "onlooker", None).await;
    app.grant(&admin, "onlooker", "default", "viewer").await;
    let mut viewer_events = app
        .ws(&format!("/api/v1/events/ws?project=default&token={viewer}"))
        .await
        .expect("viewer events");

    let r = app
        .post(
            &format!("/api/v1/instances/{instance}/exec?wait=30"),
            Some(&requester),
            json!({"command": ["sh", "-c", "echo key-$K"], "environment": {"K": "s3cr3t"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["metadata"]["stdout"], "key-s3cr3t\n", "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();

    for (who, token) in [
        ("requester", &requester),
        ("operator", &operator),
        ("admin", &admin),
    ] {
        for path in [
            format!("/api/v1/operations/{id}"),
            format!("/api/v1/operations/{id}/wait"),
        ] {
            let r = app.get(&path, Some(token)).await;
            assert_eq!(
                r.body["metadata"]["stdout"], "key-s3cr3t\n",
                "{who} {path}: {}",
                r.text
            );
        }
    }

    let r = app
        .get(&format!("/api/v1/operations/{id}"), Some(&viewer))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200);
    assert_no_output("get", &r.body);
    assert!(!r.text.contains("s3cr3t"), "{}", r.text);
    let r = app
        .get(&format!("/api/v1/operations/{id}/wait"), Some(&viewer))
        .await;
    assert_no_output("wait", &r.body);
    let r = app
        .get("/api/v1/operations?project=default", Some(&viewer))
        .await;
    assert!(r.text.contains(&id), "{}", r.text);
    for op in r.body["items"].as_array().unwrap() {
        assert_no_output("list", op);
    }
    assert!(!r.text.contains("s3cr3t"), "{}", r.text);

    // Nor through the instance's log files (Incus keeps recorded output in
    // files of its own; none of them is listed or readable as a log).
    let logs = app
        .get(&format!("/api/v1/instances/{instance}/logs"), Some(&viewer))
        .await;
    assert_eq!(logs.status, StatusCode::OK, "{}", logs.text);
    for file in logs.body["items"].as_array().unwrap() {
        let file = file.as_str().unwrap();
        let r = app
            .get(
                &format!("/api/v1/instances/{instance}/logs/{file}"),
                Some(&viewer),
            )
            .await;
        assert!(!r.text.contains("s3cr3t"), "log {file}: {}", r.text);
    }

    // The viewer's events show the operation, not what it printed.
    let texts = events_until_done(&mut viewer_events, &id).await;
    for t in &texts {
        assert!(!t.contains("s3cr3t"), "a viewer's event: {t}");
        let ev: Value = serde_json::from_str(t).unwrap();
        if ev["type"] == "operation" {
            assert_no_output("event", &ev["metadata"]);
        }
    }
}

#[tokio::test]
async fn incus_exec_output_is_for_the_requester_and_operators() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let name = unique("out");
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);
    container(&app, &admin, &name, true).await;
    exec_output_visibility(&app, &name).await;
}

#[tokio::test]
async fn embedded_exec_output_is_for_the_requester_and_operators() {
    let host = crate::embedded::Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    crate::embedded::import_busybox(&app, &admin).await;
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "o1", "source": {"type": "image", "alias": "busybox"}, "start": true}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    exec_output_visibility(&app, "o1").await;
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_sqlite_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("lxgate.db");
    let url = format!("sqlite://{}", db.display());
    let app = spawn_app_with(Db::Sqlite, &[("DATABASE_URL", &url)]).await;
    // A write, so the WAL and its index exist.
    app.admin_token().await;
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    drop(app);

    // A database an older version left world-readable is closed on start.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let app = spawn_app_with(Db::Sqlite, &[("DATABASE_URL", &url)]).await;
    app.admin_token().await;
    assert_eq!(mode(&db), 0o600);
}

#[tokio::test]
async fn metrics_are_open_without_a_token_and_closed_with_one() {
    let open = spawn_app(Db::Sqlite).await;
    let r = open.get("/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    const TOKEN: &str = "metrics-scraper-token-0123456789";
    let app = spawn_app_with(Db::Sqlite, &[("METRICS_TOKEN", TOKEN)]).await;
    app.get("/metrics", None)
        .await
        .assert_problem(401, "invalid_token");
    app.get("/metrics", Some("metrics-scraper-token-012345678X"))
        .await
        .assert_problem(401, "invalid_token");
    // A user's access token is not the metrics token.
    let admin = app.admin_token().await;
    app.get("/metrics", Some(&admin))
        .await
        .assert_problem(401, "invalid_token");
    let r = app.get("/metrics", Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.text.contains("lxgate_"), "{}", r.text);
}

#[test]
fn a_short_metrics_token_is_refused() {
    let vars = [
        ("JWT_SECRET", "x".repeat(64)),
        ("METRICS_TOKEN", "short".into()),
    ];
    let err = lxgate::config::Config::from_lookup(&|k| {
        vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    })
    .expect_err("a short METRICS_TOKEN is a configuration error");
    assert!(format!("{err:?}").contains("METRICS_TOKEN"), "{err:?}");
}

#[tokio::test]
async fn security_headers() {
    let app = spawn_app(Db::Sqlite).await;
    let nosniff = |r: &Reply| assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    // Every kind of answer: success, problem, fallback.
    let health = app.get("/health", None).await;
    nosniff(&health);
    // Plain HTTP: no HSTS (that is for TLS_CERT_PATH; see tls.rs).
    assert_eq!(health.header("strict-transport-security"), None);
    nosniff(&app.get("/api/v1/instances", None).await);
    nosniff(&app.get("/no/such/route", None).await);

    // Token answers are never cached.
    let login = app.login_reply(ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    nosniff(&login);
    assert_eq!(login.header("cache-control"), Some("no-store"));
    let access = login.body["access_token"].as_str().unwrap().to_owned();
    let refresh = login.body["refresh_token"].as_str().unwrap().to_owned();
    let r = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = app
        .post(
            "/api/v1/auth/ws-ticket",
            Some(&access),
            json!({"path": "/api/v1/events/ws"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // A refused login is not cached either.
    let r = app.login_reply(ADMIN, "wrong-password").await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

/// Incus opens a FIFO and waits for a writer (its HEAD calls it a `file`),
/// so lxgate bounds the wait: the pull answers 400 within seconds.
#[tokio::test]
async fn incus_pull_of_a_fifo_is_refused_in_bounded_time() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let name = unique("fifo");
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);
    container(&app, &admin, &name, true).await;
    let r = app
        .post(
            &format!("/api/v1/instances/{name}/exec?wait=30"),
            Some(&admin),
            json!({"command": ["busybox", "mkfifo", "/tmp/f"]}),
        )
        .await;
    assert_eq!(r.body["metadata"]["exit_code"], 0, "{}", r.text);
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        app.get(
            &format!("/api/v1/instances/{name}/files?path=/tmp/f"),
            Some(&admin),
        ),
    )
    .await
    .expect("a pull of a FIFO answers");
    r.assert_problem(409, "conflict");
    assert!(r.text.contains("FIFO"), "{}", r.text);
    // A regular file next to it still comes through.
    let r = app
        .get(
            &format!("/api/v1/instances/{name}/files?path=/etc/hostname"),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}
