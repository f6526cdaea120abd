//! lxgate in front of a real two-member Incus cluster (the test bed's m1 on
//! 127.0.0.2:8443 and m2 on 127.0.0.3:8443, `scripts/testbed-cluster.sh`):
//! members and their status, placement with `?target=`, evacuate and
//! restore, and failover when the member lxgate talks to goes down.
//!
//! The tests share one cluster whose state they change (an evacuated or
//! stopped member), so they run one at a time (`CLUSTER`), each starting
//! from both members online, and leave both online even when they fail.

use std::process::Command;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;
use crate::incus_instances::unique;

/// One cluster test at a time (each test has a runtime of its own: a tokio
/// mutex works across them).
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test` (scripts/testbed-cluster.sh)")
    })
}

fn list(name: &str) -> Vec<String> {
    env(name).split(',').map(str::to_owned).collect()
}

/// Member name -> its INCUS_DIR.
fn member_dir(member: &str) -> String {
    let members = list("LXGATE_TEST_CLUSTER_MEMBERS");
    let i = members
        .iter()
        .position(|m| m == member)
        .expect("a test bed member");
    list("LXGATE_TEST_CLUSTER_DIRS")[i].clone()
}

/// Member name -> its URL.
fn member_url(member: &str) -> String {
    let members = list("LXGATE_TEST_CLUSTER_MEMBERS");
    let i = members
        .iter()
        .position(|m| m == member)
        .expect("a test bed member");
    list("LXGATE_TEST_CLUSTER_URLS")[i].clone()
}

fn ctl(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/cluster-test-ctl.sh"
        ))
        .args(args)
        .output()
        .expect("cluster-test-ctl.sh runs")
}

/// The `incus` CLI on m1 (which holds the cluster database: it answers
/// while m2 is down).
fn incus(args: &[&str]) -> std::process::Output {
    incus_on("m1", args)
}

/// The `incus` CLI on one member, through its own unix socket.
fn incus_on(member: &str, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("120")
        .arg("incus")
        .args(args)
        .env("INCUS_DIR", member_dir(member))
        .env(
            "INCUS_CONF",
            format!("{}/../incus-client", member_dir(member)),
        )
        .env_remove("INCUS_SOCKET")
        .env_remove("INCUS_REMOTE")
        .output()
        .expect("incus runs")
}

/// Each member's status as m1 sees it, e.g. `m1=Online,m2=Online`.
fn statuses() -> String {
    let out = incus(&["query", "/1.0/cluster/members?recursion=1"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut s: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    format!(
                        "{}={}",
                        m["server_name"].as_str().unwrap_or("?"),
                        m["status"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    s.sort();
    s.join(",")
}

/// Both members running and online (restored, restarted if a failed test
/// left one down), within a bounded wait.
fn cluster_up() {
    let out = ctl(&["start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let s = statuses();
        // Online as the cluster sees it, and each member's own API past
        // its start ("Server isn't ready yet" while a restarted one
        // catches up).
        if s == "m1=Online,m2=Online"
            && ["m1", "m2"]
                .iter()
                .all(|m| incus_on(m, &["query", "/1.0/instances"]).status.success())
        {
            return;
        }
        if s.contains("m2=Evacuated") {
            let _ = incus(&["cluster", "restore", "m2", "--force"]);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster is not back: {s}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Undoes what a test did to the cluster, when dropped (also on failure):
/// deletes its instances and volumes and brings every member back.
struct Undo {
    instances: Vec<(String, String)>,
    volumes: Vec<String>,
    projects: Vec<String>,
}

impl Undo {
    fn new() -> Self {
        Self {
            instances: Vec::new(),
            volumes: Vec::new(),
            projects: Vec::new(),
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        // Back first: deleting what sits on a stopped member would fail.
        let _ = ctl(&["start"]);
        let _ = incus(&["cluster", "restore", "m2", "--force"]);
        for (project, name) in &self.instances {
            let _ = incus(&["delete", "--force", "--project", project, name]);
        }
        for v in &self.volumes {
            let pool = env("LXGATE_TEST_CLUSTER_POOL");
            let _ = incus(&["storage", "volume", "delete", &pool, v, "--target", "m2"]);
        }
        for p in &self.projects {
            let _ = incus(&["project", "delete", p]);
        }
    }
}

/// lxgate in front of the cluster over mTLS, with `urls` as its
/// `INCUS_REMOTE_URL`.
async fn cluster_app(urls: &str) -> TestApp {
    spawn_app_with(
        Db::Sqlite,
        &[
            ("BACKEND", "incus"),
            ("INCUS_CONNECTION_MODE", "remote"),
            ("INCUS_REMOTE_URL", urls),
            (
                "INCUS_CLIENT_CERT_PATH",
                &env("LXGATE_TEST_CLUSTER_CLIENT_CERT"),
            ),
            (
                "INCUS_CLIENT_KEY_PATH",
                &env("LXGATE_TEST_CLUSTER_CLIENT_KEY"),
            ),
            (
                "INCUS_SERVER_CERT_PATH",
                &env("LXGATE_TEST_CLUSTER_SERVER_CERT"),
            ),
        ],
    )
    .await
}

/// Creates a busybox container on `target` (admins) and waits for it.
async fn launch(app: &TestApp, token: &str, name: &str, target: &str, start: bool) {
    // A member restarted by the test before may still answer 503 ("not
    // ready yet", which lxgate passes on as such) for a few seconds after
    // the cluster calls it online: a create it refused is tried again; one
    // it started but could not be waited for is followed by its reference.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut r = loop {
        let r = app
            .post(
                &format!("/api/v1/instances?target={target}&wait=120"),
                Some(token),
                json!({"name": name, "source": {"type": "image", "alias": "busybox"}, "start": start}),
            )
            .await;
        if r.status != StatusCode::SERVICE_UNAVAILABLE || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if r.status == StatusCode::ACCEPTED {
        let id = r.body["operation_id"].as_str().unwrap().to_owned();
        for _ in 0..30 {
            r = app
                .get(
                    &format!("/api/v1/operations/{id}/wait?timeout=60"),
                    Some(token),
                )
                .await;
            if r.status == StatusCode::OK && r.body["status_code"] != 103 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // The member the operation ran on was away long enough for the cluster
    // to forget it: lxgate says the outcome is unknown, and what it was
    // working on tells (as its err says).
    if r.body["metadata"]["outcome"] == "unknown" {
        for _ in 0..60 {
            let i = app
                .get(&format!("/api/v1/instances/{name}"), Some(token))
                .await;
            if i.status == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
}

async fn location(app: &TestApp, token: &str, name: &str) -> String {
    let r = app
        .get(&format!("/api/v1/instances/{name}"), Some(token))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["location"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn members_are_listed_with_their_status() {
    let _one = CLUSTER.lock().await;
    cluster_up();
    let app = cluster_app(&env("LXGATE_TEST_CLUSTER_URLS")).await;
    let admin = app.admin_token().await;
    let viewer = app.user_with_role(&admin, "viewer", Some("viewer")).await;

    let r = app.get("/api/v1/cluster/members", Some(&viewer)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["total"], 2, "{}", r.text);
    let items = r.body["items"].as_array().unwrap();
    let names: Vec<&str> = items
        .iter()
        .map(|m| m["server_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m1", "m2"], "{}", r.text);
    for m in items {
        assert_eq!(m["status"], "Online", "{m}");
        assert_eq!(m["message"], "Fully operational", "{m}");
        assert_eq!(m["architecture"], "x86_64", "{m}");
    }
    assert_eq!(items[0]["url"], member_url("m1").as_str());
    // Two members: m1 holds the database, m2 at most stands by.
    assert!(
        items[0]["roles"]
            .as_array()
            .unwrap()
            .contains(&json!("database-leader")),
        "{}",
        r.text
    );
    // (m2's own role comes back with Incus's next rebalance after a restart.)
    assert!(
        !items[1]["roles"]
            .as_array()
            .unwrap()
            .contains(&json!("database-leader")),
        "{}",
        r.text
    );

    let names = app
        .get("/api/v1/cluster/members?expand=false", Some(&viewer))
        .await;
    assert_eq!(names.body["items"], json!(["m1", "m2"]), "{}", names.text);

    let m2 = app.get("/api/v1/cluster/members/m2", Some(&viewer)).await;
    assert_eq!(m2.status, StatusCode::OK, "{}", m2.text);
    assert_eq!(m2.body["server_name"], "m2");
    assert_eq!(m2.body["status"], "Online");
    assert!(m2.header("etag").is_some());
    app.get("/api/v1/cluster/members/m9", Some(&viewer))
        .await
        .assert_problem(404, "member_not_found");
    app.get("/api/v1/cluster/members/-m", Some(&viewer))
        .await
        .assert_problem(400, "invalid_name");

    // Evacuating is for admins; a bad mode never reaches Incus.
    app.post(
        "/api/v1/cluster/members/m2/evacuate",
        Some(&viewer),
        json!({}),
    )
    .await
    .assert_problem(403, "permission_denied");
    app.post(
        "/api/v1/cluster/members/m2/evacuate",
        Some(&admin),
        json!({"mode": "teleport"}),
    )
    .await
    .assert_problem(422, "validation_failed");
    app.post(
        "/api/v1/cluster/members/m9/restore",
        Some(&admin),
        json!({}),
    )
    .await
    .assert_problem(404, "member_not_found");

    let info = app.get("/api/v1/system/info", Some(&viewer)).await;
    assert_eq!(info.body["features"]["clustered"], true, "{}", info.text);
}

#[tokio::test]
async fn placement_with_target() {
    let _one = CLUSTER.lock().await;
    cluster_up();
    let mut undo = Undo::new();
    let app = cluster_app(&env("LXGATE_TEST_CLUSTER_URLS")).await;
    let admin = app.admin_token().await;

    // An admin places an instance on m2: it runs there, and says so.
    let on_m2 = unique("cl-place");
    undo.instances.push(("default".into(), on_m2.clone()));
    launch(&app, &admin, &on_m2, "m2", false).await;
    assert_eq!(location(&app, &admin, &on_m2).await, "m2");
    let listed = app.get("/api/v1/instances", Some(&admin)).await;
    let entry = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == on_m2.as_str())
        .cloned()
        .expect("listed");
    assert_eq!(entry["location"], "m2", "{entry}");
    // And the other member, the other way round.
    let on_m1 = unique("cl-place");
    undo.instances.push(("default".into(), on_m1.clone()));
    launch(&app, &admin, &on_m1, "m1", false).await;
    assert_eq!(location(&app, &admin, &on_m1).await, "m1");

    // Operations show where they ran.
    let r = app
        .post(
            &format!("/api/v1/instances/{on_m2}/start?wait=60"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(r.body["location"], "m2", "{}", r.text);

    // No such member: 404 before anything is created.
    let r = app
        .post(
            "/api/v1/instances?target=m9",
            Some(&admin),
            json!({"name": unique("cl-none"), "source": {"type": "image", "alias": "busybox"}}),
        )
        .await;
    r.assert_problem(404, "member_not_found");
    for bad in ["not_a_name", ""] {
        app.post(
            &format!("/api/v1/instances?target={bad}"),
            Some(&admin),
            json!({"name": unique("cl-none"), "source": {"type": "image", "alias": "busybox"}}),
        )
        .await
        .assert_problem(400, "invalid_name");
    }

    // A volume on m2 (the `local` pool is a directory on each member).
    let pool = env("LXGATE_TEST_CLUSTER_POOL");
    let vol = unique("cl-vol");
    undo.volumes.push(vol.clone());
    let r = app
        .post(
            &format!("/api/v1/storage/pools/{pool}/volumes?target=m2&wait=60"),
            Some(&admin),
            json!({"name": vol}),
        )
        .await;
    assert!(
        r.status == StatusCode::CREATED || r.status == StatusCode::OK,
        "{}",
        r.text
    );
    let got = app
        .get(
            &format!("/api/v1/storage/pools/{pool}/volumes/{vol}"),
            Some(&admin),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["location"], "m2", "{}", got.text);
    let r = app
        .delete(
            &format!("/api/v1/storage/pools/{pool}/volumes/{vol}"),
            Some(&admin),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);

    // Operators choose a member only where an admin allowed it for the
    // project (Incus's own `restricted.cluster.target`).
    let project = unique("cl-team");
    undo.projects.push(project.clone());
    let made = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": project, "config": {"features.images": "false"}}),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let operator = app.user_with_role(&admin, "teamop", None).await;
    app.grant(&admin, "teamop", &project, "operator").await;
    let team_instance = unique("cl-team");
    undo.instances
        .push((project.clone(), team_instance.clone()));
    let create = |token: &str, target: &str| {
        app.request(
            Method::POST,
            &format!("/api/v1/instances?project={project}&target={target}&wait=120"),
            Some(token),
        )
        .json(&json!({"name": team_instance, "source": {"type": "image", "alias": "busybox"}}))
    };
    let refused = app.send(create(&operator, "m2")).await;
    refused.assert_problem(403, "policy_denied");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("restricted.cluster.target"),
        "{}",
        refused.text
    );
    let vol_refused = app
        .post(
            &format!("/api/v1/storage/pools/{pool}/volumes?project={project}&target=m2"),
            Some(&operator),
            json!({"name": unique("cl-vol")}),
        )
        .await;
    vol_refused.assert_problem(403, "policy_denied");
    // Without a target the operator is fine: the cluster picks.
    let allow = app
        .request(
            Method::PATCH,
            &format!("/api/v1/projects/{project}"),
            Some(&admin),
        )
        .json(&json!({"config": {"restricted.cluster.target": "allow"}}));
    let r = app.send(allow).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app.send(create(&operator, "m2")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let r = app
        .get(
            &format!("/api/v1/instances/{team_instance}?project={project}"),
            Some(&operator),
        )
        .await;
    assert_eq!(r.body["location"], "m2", "{}", r.text);
    let r = app
        .delete(
            &format!("/api/v1/instances/{team_instance}?project={project}&wait=60"),
            Some(&operator),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
}

/// lxgate holds one event stream, to m1; a change made on m2 with the
/// `incus` CLI, to an instance that lives there, still shows in lxgate's
/// lists (kept in memory) within a second: members pass each other's
/// events on.
#[tokio::test]
async fn a_change_on_the_other_member_shows_in_lists_within_a_second() {
    let _one = CLUSTER.lock().await;
    cluster_up();
    let mut undo = Undo::new();
    let app = cluster_app(&member_url("m1")).await;
    let admin = app.admin_token().await;
    let name = unique("cl-fresh");
    undo.instances.push(("default".into(), name.clone()));
    launch(&app, &admin, &name, "m2", false).await;
    let fresh = (Duration::from_secs(1), Duration::from_millis(25));
    let entry = |r: &Reply| {
        r.body["items"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == name.as_str()).cloned())
    };
    // Listed (and so kept) before the change: answered from memory.
    let before = crate::incus_list_cache::hits(&app, "instances").await;
    let mut kept = false;
    for _ in 0..50 {
        let r = app.get("/api/v1/instances", Some(&admin)).await;
        assert!(entry(&r).is_some(), "{}", r.text);
        if crate::incus_list_cache::hits(&app, "instances").await > before {
            kept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(kept, "no list was answered from memory");

    let out = incus_on("m2", &["config", "set", &name, "user.fresh=1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.get_until("/api/v1/instances", Some(&admin), fresh, |r| {
        entry(r).is_some_and(|i| i["config"]["user.fresh"] == "1")
    })
    .await;
    let out = incus_on("m2", &["start", &name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = app
        .get_until("/api/v1/instances", Some(&admin), fresh, |r| {
            entry(r).is_some_and(|i| i["status"] == "Running" && i["location"] == "m2")
        })
        .await;
    eprintln!("started on m2: visible through m1 after {took:?}");
}

#[tokio::test]
async fn evacuate_and_restore_a_member() {
    let _one = CLUSTER.lock().await;
    cluster_up();
    let mut undo = Undo::new();
    let app = cluster_app(&env("LXGATE_TEST_CLUSTER_URLS")).await;
    let admin = app.admin_token().await;
    let name = unique("cl-evac");
    undo.instances.push(("default".into(), name.clone()));
    launch(&app, &admin, &name, "m2", true).await;

    // Evacuate: the operation (202, then waited for), the member's status,
    // and its instance moved to the other member (`auto` migrates it).
    let r = app
        .post(
            "/api/v1/cluster/members/m2/evacuate",
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let wait = r.body["wait_url"].as_str().unwrap().to_owned();
    let done = app.get(&format!("{wait}?timeout=120"), Some(&admin)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert_eq!(done.body["status_code"], 200, "{}", done.text);
    let m2 = app.get("/api/v1/cluster/members/m2", Some(&admin)).await;
    assert_eq!(m2.body["status"], "Evacuated", "{}", m2.text);
    assert_eq!(location(&app, &admin, &name).await, "m1");
    // An evacuated member takes no new instances.
    app.post(
        "/api/v1/instances?target=m2&wait=60",
        Some(&admin),
        json!({"name": unique("cl-evac"), "source": {"type": "image", "alias": "busybox"}}),
    )
    .await
    .assert_problem(409, "conflict");

    // Restore: the member is back, and so is its instance.
    let r = app
        .post(
            "/api/v1/cluster/members/m2/restore?wait=120",
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let m2 = app.get("/api/v1/cluster/members/m2", Some(&admin)).await;
    assert_eq!(m2.body["status"], "Online", "{}", m2.text);
    assert_eq!(location(&app, &admin, &name).await, "m2");
    let state = app
        .get(&format!("/api/v1/instances/{name}/state"), Some(&admin))
        .await;
    assert_eq!(state.body["status"], "Running", "{}", state.text);

    // The operations are on record as the admin's.
    let ops = app.get("/api/v1/audit?limit=50", Some(&admin)).await;
    assert!(
        ops.text.contains("/api/v1/cluster/members/m2/evacuate"),
        "{}",
        ops.text
    );
}

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
        if let Ok(Message::Text(t)) = msg
            && let Ok(v) = serde_json::from_str::<Value>(&t)
            && pred(&v)
        {
            return Some(v);
        }
    }
}

/// Reads a terminal's output until it holds `needle` (at most `secs` seconds).
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
async fn failover_when_the_member_in_use_goes_down() {
    let _one = CLUSTER.lock().await;
    cluster_up();
    let mut undo = Undo::new();
    // m2 first: lxgate talks to m2 until it goes down. (m2, not m1: with
    // two members m1 holds the cluster database, without which no member
    // answers.)
    let app = cluster_app(&format!("{},{}", member_url("m2"), member_url("m1"))).await;
    let admin = app.admin_token().await;
    let name = unique("cl-fail");
    undo.instances.push(("default".into(), name.clone()));
    launch(&app, &admin, &name, "m1", true).await;

    let path = "/api/v1/events/ws?type=lifecycle";
    let mut events = app.ws_ticketed(&admin, path).await.expect("subscribe");
    // The event stream works through m2 before anything happens.
    let note = |n: u32| {
        app.request(
            Method::PATCH,
            &format!("/api/v1/instances/{name}"),
            Some(&admin),
        )
        .json(&json!({"config": {"user.note": format!("n{n}")}}))
    };
    let updated = |e: &Value| {
        e["metadata"]["action"] == "instance-updated"
            && e["metadata"]["source"]
                .as_str()
                .is_some_and(|s| s.ends_with(&format!("/instances/{name}")))
    };
    let mut seen = false;
    for n in 0..20 {
        let r = app.send(note(n)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if next_matching(&mut events, 1, updated).await.is_some() {
            seen = true;
            break;
        }
    }
    assert!(seen, "no instance-updated event before the failover");

    // m2 goes down.
    let out = ctl(&["stop", "m2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Lists keep working, through m1.
    let r = app.get("/api/v1/instances", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.text.contains(&name), "{}", r.text);
    let r = app.get("/api/v1/cluster/members/m1", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // A recorded exec, and an interactive one (websockets) too.
    let r = app
        .post(
            &format!("/api/v1/instances/{name}/exec?wait=60"),
            Some(&admin),
            json!({"command": ["echo", "through-m1"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["metadata"]["stdout"], "through-m1\n", "{}", r.text);
    let mut term = app
        .ws_ticketed(
            &admin,
            &format!("/api/v1/instances/{name}/exec/ws?command=sh"),
        )
        .await
        .expect("terminal opens");
    term.send(Message::Binary("echo failed-$((40+2))\n".into()))
        .await
        .unwrap();
    read_until(&mut term, "failed-42", 15).await;
    term.send(Message::Binary("exit\n".into())).await.unwrap();

    // The event stream comes back through m1: the subscriber that was
    // connected all along sees new events (the upstream reconnects with
    // backoff, so each try waits a little).
    let mut seen = false;
    for n in 100..130 {
        let r = app.send(note(n)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if next_matching(&mut events, 1, updated).await.is_some() {
            seen = true;
            break;
        }
    }
    assert!(seen, "no events after the failover");

    // m2 back: lxgate sticks to m1, which works.
    drop(undo);
    let r = app
        .get("/api/v1/instances?expand=false", Some(&admin))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// A standalone Incus (the test bed's single incusd) is a cluster of one:
/// it lists itself, takes its own name as `target` (and no other), and
/// answers evacuate and restore with 501.
#[tokio::test]
async fn a_standalone_server_is_a_cluster_of_one() {
    let app = crate::incus_instances::incus_app().await;
    let admin = app.admin_token().await;
    let r = app.get("/api/v1/cluster/members", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["total"], 1, "{}", r.text);
    let me = r.body["items"][0]["server_name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!me.is_empty(), "{}", r.text);
    assert_eq!(r.body["items"][0]["status"], "Online");
    let got = app
        .get(&format!("/api/v1/cluster/members/{me}"), Some(&admin))
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    app.get("/api/v1/cluster/members/elsewhere", Some(&admin))
        .await
        .assert_problem(404, "member_not_found");
    app.post(
        &format!("/api/v1/cluster/members/{me}/evacuate"),
        Some(&admin),
        json!({}),
    )
    .await
    .assert_problem(501, "not_supported");
    let info = app.get("/api/v1/system/info", Some(&admin)).await;
    assert_eq!(info.body["features"]["clustered"], false, "{}", info.text);

    // The one member as target: a volume is made there (Incus itself would
    // refuse any target on a server that is not clustered).
    let vol = unique("solo-vol");
    let r = app
        .post(
            &format!("/api/v1/storage/pools/default/volumes?target={me}"),
            Some(&admin),
            json!({"name": vol}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app
        .delete(
            &format!("/api/v1/storage/pools/default/volumes/{vol}"),
            Some(&admin),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    app.post(
        "/api/v1/storage/pools/default/volumes?target=elsewhere",
        Some(&admin),
        json!({"name": unique("solo-vol")}),
    )
    .await
    .assert_problem(404, "member_not_found");
}
