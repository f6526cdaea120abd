//! The embedded backend with real LXC containers (`make test` installs LXC
//! and builds the busybox image; see scripts/testbed-embedded.sh). Each test
//! has its own DATA_DIR, so its own lxcpath; containers still running when a
//! test ends (or fails) are killed by `Host`'s Drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with `make test`"))
}

/// A DATA_DIR of the test's own that outlives one lxgate process (restart
/// tests start a second one on it).
pub struct Host {
    pub dir: tempfile::TempDir,
}

impl Host {
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let _ = env("LXGATE_TEST_LXC");
        let dir = tempfile::tempdir().expect("temp dir");
        // An unprivileged container's root (a mapped host uid) must pass
        // through every directory above its rootfs; a temp dir is 0700.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod the temp dir");
        Self { dir }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn lxcpath(&self) -> PathBuf {
        self.data().join("lxc")
    }

    pub async fn app(&self) -> TestApp {
        self.app_allowing(&[]).await
    }

    /// An app with these settings besides the test defaults.
    pub async fn app_with(&self, env: &[(&str, &str)]) -> TestApp {
        self.app_allowing_with(&[], env).await
    }

    /// An app that may fetch images from these test servers (base URLs on
    /// 127.0.0.1), which `IMAGE_SERVER_ALLOWLIST` must name.
    pub async fn app_allowing(&self, servers: &[&str]) -> TestApp {
        self.app_allowing_with(servers, &[]).await
    }

    /// `app_allowing` with more settings.
    pub async fn app_allowing_with(&self, servers: &[&str], settings: &[(&str, &str)]) -> TestApp {
        let mut vars = self.settings(servers);
        vars.extend(
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        spawn_app_with(Db::Sqlite, &vars).await
    }

    /// An embedded server's settings on this DATA_DIR (SQLite in it),
    /// allowed to fetch images from `servers` (base URLs on 127.0.0.1).
    pub fn settings(&self, servers: &[&str]) -> Vec<(String, String)> {
        let data = self.data().display().to_string();
        let allow = servers
            .iter()
            .map(|s| {
                let u = reqwest::Url::parse(s).unwrap();
                format!("{}:{}", u.host_str().unwrap(), u.port().unwrap())
            })
            .collect::<Vec<_>>()
            .join(",");
        vec![
            ("BACKEND".into(), "embedded".into()),
            ("DATABASE_URL".into(), format!("sqlite://{data}/lxgate.db")),
            ("DATA_DIR".into(), data),
            ("IMAGE_SERVER_ALLOWLIST".into(), allow),
        ]
    }

    /// `lxc-info` straight from LXC, bypassing lxgate.
    pub fn lxc_state(&self, project: &str, name: &str) -> String {
        let out = Command::new("lxc-info")
            .arg("-P")
            .arg(self.lxcpath())
            .args(["-n", &format!("{project}_{name}"), "-s", "-H"])
            .output()
            .expect("lxc-info runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // VMs' QEMU and bridges' dnsmasq, by pidfile.
        for (dir, pidfile) in [("vms", "qemu.pid"), ("networks", "dnsmasq.pid")] {
            if let Ok(entries) = std::fs::read_dir(self.data().join(dir)) {
                for e in entries.flatten() {
                    if let Ok(pid) = std::fs::read_to_string(e.path().join(pidfile)) {
                        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                    }
                }
            }
        }
        let Ok(entries) = std::fs::read_dir(self.lxcpath()) else {
            return;
        };
        for e in entries.flatten() {
            let _ = Command::new("lxc-stop")
                .arg("-P")
                .arg(self.lxcpath())
                .arg("-n")
                .arg(e.file_name())
                .arg("--kill")
                .output();
        }
    }
}

/// Uploads the test bed's busybox image with the alias `busybox`.
pub async fn import_busybox(app: &TestApp, token: &str) -> String {
    let meta = Part::file(env("LXGATE_TEST_EMBEDDED_IMAGE_META"))
        .await
        .unwrap();
    let rootfs = Part::file(env("LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS"))
        .await
        .unwrap();
    let form = Form::new()
        .part("metadata", meta)
        .part("rootfs", rootfs)
        .text("alias", "busybox");
    upload_image(app, token, form).await
}

/// `POST /images/import` of a multipart form; the new image's fingerprint.
pub async fn upload_image(app: &TestApp, token: &str, form: Form) -> String {
    let r = app
        .send(
            app.request(
                reqwest::Method::POST,
                "/api/v1/images/import?wait=60",
                Some(token),
            )
            .multipart(form),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    r.body["metadata"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub async fn create(app: &TestApp, token: &str, body: Value) -> Reply {
    app.post("/api/v1/instances?wait=60", Some(token), body)
        .await
}

pub async fn action(app: &TestApp, token: &str, name: &str, what: &str) -> Reply {
    let r = app
        .post(
            &format!("/api/v1/instances/{name}/{what}?wait=60"),
            Some(token),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text);
    assert_eq!(r.body["status_code"], 200, "{what}: {}", r.text);
    r
}

/// `name`'s status as the instance list shows it.
pub async fn listed_status(app: &TestApp, token: &str, name: &str) -> String {
    let r = app.get("/api/v1/instances", Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["name"] == name))
        .and_then(|i| i["status"].as_str())
        .unwrap_or_else(|| panic!("{name} in {}", r.text))
        .to_owned()
}

pub async fn status(app: &TestApp, token: &str, name: &str) -> String {
    let r = app
        .get(&format!("/api/v1/instances/{name}"), Some(token))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["status"].as_str().unwrap().to_owned()
}

async fn read_until(ws: &mut ClientSocket, needle: &str) -> String {
    read_until_within(ws, needle, Duration::from_secs(15)).await
}

/// A VM's serial console until its boot marker and then the shell's prompt
/// (which may come in the same frame as the marker).
async fn boot_to_prompt(ws: &mut ClientSocket, marker: &str) {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !seen
        .split_once(marker)
        .is_some_and(|(_, after)| after.contains("# "))
    {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(_))) => {}
            other => panic!("no {marker:?} and then a prompt in {seen:?}: {other:?}"),
        }
    }
}

/// Terminal output until `needle` shows (a VM's boot marker needs longer).
async fn read_until_within(ws: &mut ClientSocket, needle: &str, limit: Duration) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(_))) => {}
            other => panic!("no {needle:?} in {seen:?}: {other:?}"),
        }
    }
    seen
}

#[tokio::test]
async fn container_lifecycle_with_real_lxc() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;

    let info = app.get("/api/v1/system/info", Some(&admin)).await;
    assert_eq!(info.body["backend"], "embedded");
    assert_eq!(
        info.body["features"]["instances_api"], true,
        "{}",
        info.text
    );

    let fp = import_busybox(&app, &admin).await;
    let img = app
        .get(&format!("/api/v1/images/{}", &fp[..12]), Some(&admin))
        .await;
    assert_eq!(img.status, StatusCode::OK, "{}", img.text);
    assert_eq!(img.body["fingerprint"], fp.as_str());
    assert_eq!(img.body["aliases"][0]["name"], "busybox");
    assert_eq!(img.body["properties"]["os"], "busybox");

    // Subscribe before acting: the lifecycle events must arrive.
    let mut events = app
        .ws(&format!("/api/v1/events/ws?type=lifecycle&token={admin}"))
        .await
        .expect("events");

    let r = create(
        &app,
        &admin,
        json!({"name": "c1", "source": {"type": "image", "alias": "busybox"},
               "config": {"limits.memory": "128MiB", "user.team": "a"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(status(&app, &admin, "c1").await, "Stopped");
    assert_eq!(host.lxc_state("default", "c1"), "STOPPED");
    // The name is taken now.
    let dup = create(
        &app,
        &admin,
        json!({"name": "c1", "source": {"type": "image", "alias": "busybox"}}),
    )
    .await;
    dup.assert_problem(409, "conflict");

    action(&app, &admin, "c1", "start").await;
    assert_eq!(status(&app, &admin, "c1").await, "Running");
    assert_eq!(host.lxc_state("default", "c1"), "RUNNING");
    // Listings read a stopped container's state without a process (its
    // monitor's socket is not there): a running one must not look so.
    assert_eq!(listed_status(&app, &admin, "c1").await, "Running");
    let st = app.get("/api/v1/instances/c1/state", Some(&admin)).await;
    assert!(st.body["pid"].as_i64().unwrap() > 1, "{}", st.text);
    assert!(st.body["processes"].as_i64().unwrap() >= 1, "{}", st.text);
    // Starting twice meets the instance's state, said clearly.
    let again = app
        .post("/api/v1/instances/c1/start", Some(&admin), json!({}))
        .await;
    again.assert_problem(409, "conflict");

    // Interactive exec over the WebSocket: output, then the exit code.
    let mut term = app
        .ws(&format!(
            "/api/v1/instances/c1/exec/ws?command=sh&width=80&height=24&token={admin}"
        ))
        .await
        .expect("terminal opens");
    term.send(Message::Binary(
        "echo hello-$((6*7)) on-$(hostname)\n".into(),
    ))
    .await
    .unwrap();
    read_until(&mut term, "hello-42 on-c1").await;
    term.send(Message::Text(
        json!({"type": "resize", "width": 100, "height": 30})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    term.send(Message::Binary("stty size; exit 7\n".into()))
        .await
        .unwrap();
    read_until(&mut term, "30 100").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let exit = loop {
        match tokio::time::timeout_at(deadline, term.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => break serde_json::from_str::<Value>(&t).unwrap(),
            Ok(Some(Ok(_))) => {}
            other => panic!("no exit frame: {other:?}"),
        }
    };
    assert_eq!(exit, json!({"type": "exit", "exit_code": 7}));

    // Recorded exec, and the memory limit really applied by the cgroup.
    let r = app
        .post(
            "/api/v1/instances/c1/exec?wait=30",
            Some(&admin),
            json!({"command": ["sh", "-c", "echo out-$HELLO; echo err >&2; exit 5"],
                   "environment": {"HELLO": "there"}}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(r.body["metadata"]["exit_code"], 5, "{}", r.text);
    assert_eq!(r.body["metadata"]["stdout"], "out-there\n");
    assert_eq!(r.body["metadata"]["stderr"], "err\n");
    let limit = Command::new("lxc-cgroup")
        .arg("-P")
        .arg(host.lxcpath())
        .args(["-n", "default_c1", "memory.limit_in_bytes"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&limit.stdout).trim(), "134217728");

    // Freeze and unfreeze, as LXC sees it.
    action(&app, &admin, "c1", "freeze").await;
    assert_eq!(status(&app, &admin, "c1").await, "Frozen");
    assert_eq!(host.lxc_state("default", "c1"), "FROZEN");
    action(&app, &admin, "c1", "unfreeze").await;
    assert_eq!(host.lxc_state("default", "c1"), "RUNNING");

    // A running instance cannot be deleted (without `?force=true`).
    let del = app.delete("/api/v1/instances/c1", Some(&admin)).await;
    del.assert_problem(409, "conflict");

    let stop = app
        .put(
            "/api/v1/instances/c1/state?wait=60",
            Some(&admin),
            json!({"action": "stop", "timeout": 5}),
        )
        .await;
    assert_eq!(stop.body["status_code"], 200, "{}", stop.text);
    assert_eq!(host.lxc_state("default", "c1"), "STOPPED");

    // Rename while stopped, then delete: nothing left on the host.
    let r = app
        .post(
            "/api/v1/instances/c1/rename?wait=30",
            Some(&admin),
            json!({"name": "c2"}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(status(&app, &admin, "c2").await, "Stopped");
    assert!(!host.lxcpath().join("default_c1").exists());
    let del = app
        .delete("/api/v1/instances/c2?wait=30", Some(&admin))
        .await;
    assert_eq!(del.body["status_code"], 200, "{}", del.text);
    assert!(!host.lxcpath().join("default_c2").exists());
    let gone = app.get("/api/v1/instances/c2", Some(&admin)).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    // `?force=true` stops a running (here: frozen) one first, then deletes.
    let r = create(
        &app,
        &admin,
        json!({"name": "c3", "source": {"type": "image", "alias": "busybox"}, "start": true}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    action(&app, &admin, "c3", "freeze").await;
    assert_eq!(host.lxc_state("default", "c3"), "FROZEN");
    let del = app
        .delete("/api/v1/instances/c3?force=true&wait=60", Some(&admin))
        .await;
    assert_eq!(del.body["status_code"], 200, "{}", del.text);
    assert!(!host.lxcpath().join("default_c3").exists());
    app.get("/api/v1/instances/c3", Some(&admin))
        .await
        .assert_problem(404, "instance_not_found");

    // The lifecycle, as a dashboard subscribed to events saw it.
    let mut actions = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !actions.iter().any(|a| a == "instance-deleted") {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let e: Value = serde_json::from_str(&t).unwrap();
                actions.push(
                    e["metadata"]["action"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("events ended early ({actions:?}): {other:?}"),
        }
    }
    for a in [
        "instance-created",
        "instance-started",
        "instance-paused",
        "instance-resumed",
        "instance-stopped",
        "instance-renamed",
        "instance-deleted",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
}

#[tokio::test]
async fn instances_are_found_again_after_a_restart() {
    let host = Host::new();
    {
        let app = host.app().await;
        let admin = app.admin_token().await;
        import_busybox(&app, &admin).await;
        import_vm_image(&app, &admin, host.dir.path()).await;
        let r = create(
            &app,
            &admin,
            json!({"name": "vm", "type": "virtual-machine", "start": true,
                   "source": {"type": "image", "alias": "tinyvm"}}),
        )
        .await;
        assert_eq!(r.body["status_code"], 200, "{}", r.text);
        for name in ["keep", "dies"] {
            let r = create(
                &app,
                &admin,
                json!({"name": name, "source": {"type": "image", "alias": "busybox"}, "start": true}),
            )
            .await;
            assert_eq!(r.body["status_code"], 200, "{}", r.text);
        }
        for body in [
            json!({"name": "kept"}),
            json!({"name": "disk", "content_type": "block", "config": {"size": "16MiB"}}),
        ] {
            let r = app
                .post("/api/v1/storage/pools/default/volumes", Some(&admin), body)
                .await;
            assert!(r.status.is_success(), "{}", r.text);
        }
        // lxgate goes away; the containers keep running.
    }
    assert_eq!(host.lxc_state("default", "keep"), "RUNNING");
    // An lxgate that left container and VM directories and volumes open
    // (before they were closed): the next one closes them when it starts.
    let custom = host.data().join("storage/default/custom");
    let (vms, vm) = (host.data().join("vms"), host.data().join("vms/default_vm"));
    {
        use std::os::unix::fs::PermissionsExt;
        let open = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let ct = host.lxcpath().join("default_keep");
        open(&ct, 0o755);
        assert!(nobody_can_list(&ct));
        let ok = Command::new("setfacl")
            .arg("-b")
            .arg(&custom)
            .status()
            .unwrap();
        assert!(ok.success());
        open(&custom, 0o755);
        open(&custom.join("default_disk.qcow2"), 0o644);
        open(&vms, 0o755);
        open(&vm, 0o755);
        open(&vm.join("kernel"), 0o644);
        open(&vm.join("qmp.sock"), 0o755);
        assert!(nobody_can_list(&custom.join("default_kept")));
        assert!(nobody_can_list(&vm));
    }
    // One container dies while lxgate is down.
    let killed = Command::new("lxc-stop")
        .arg("-P")
        .arg(host.lxcpath())
        .args(["-n", "default_dies", "--kill"])
        .status()
        .unwrap();
    assert!(killed.success());

    let app = host.app().await;
    let admin = app.admin_token().await;
    let keep = host.lxcpath().join("default_keep");
    assert_eq!(owner_mode(&keep), (sub_base("/etc/subuid"), 0o100));
    assert!(!nobody_can_list(&keep));
    assert_custom_closed(&custom, &[sub_base("/etc/subuid")]);
    assert!(!nobody_can_list(&custom.join("default_kept")));
    assert_eq!(owner_mode(&custom.join("default_disk.qcow2")), (0, 0o600));
    assert_eq!(owner_mode(&vms), (0, 0o700));
    assert_eq!(owner_mode(&vm), (0, 0o700));
    for f in ["kernel", "qmp.sock", "qemu.pid"] {
        assert_eq!(owner_mode(&vm.join(f)), (0, 0o600), "{f}");
    }
    assert!(!nobody_can_list(&vm));
    assert_eq!(status(&app, &admin, "keep").await, "Running");
    assert_eq!(status(&app, &admin, "dies").await, "Stopped");
    // Without a process for the one whose monitor is gone: the same.
    assert_eq!(listed_status(&app, &admin, "dies").await, "Stopped");
    assert_eq!(listed_status(&app, &admin, "keep").await, "Running");
    // The VM is found by its pidfile and still answers on its QMP socket.
    assert_eq!(status(&app, &admin, "vm").await, "Running");
    action(&app, &admin, "vm", "freeze").await;
    assert_eq!(status(&app, &admin, "vm").await, "Frozen");
    let r = app
        .put(
            "/api/v1/instances/vm/state?wait=60",
            Some(&admin),
            json!({"action": "stop", "force": true}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(status(&app, &admin, "vm").await, "Stopped");
    let list = app.get("/api/v1/instances", Some(&admin)).await;
    assert_eq!(list.body["total"], 3, "{}", list.text);
    // And it is still fully usable.
    let r = app
        .post(
            "/api/v1/instances/keep/exec?wait=30",
            Some(&admin),
            json!({"command": ["echo", "still-here"]}),
        )
        .await;
    assert_eq!(r.body["metadata"]["stdout"], "still-here\n", "{}", r.text);
    action(&app, &admin, "keep", "stop").await;
}

#[tokio::test]
async fn bad_requests_are_refused_before_touching_the_host() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    let make = |name: &str, extra: Value| {
        let mut body = json!({"name": name, "source": {"type": "image", "alias": "busybox"}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for name in ["../etc", "a/b", "-x", "x_y", ".."] {
        let r = create(&app, &admin, make(name, json!({}))).await;
        r.assert_problem(422, "validation_failed");
    }
    let r = app
        .get("/api/v1/instances/..%2F..%2Fetc", Some(&admin))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    for (config, why) in [
        (json!({"lxc.hook.start": "/bin/sh"}), "raw LXC keys"),
        (json!({"limits.memory": "lots"}), "a size that is not one"),
        (
            json!({"limits.cpu": "0\nlxc.hook.start = /bin/sh"}),
            "a newline in a value",
        ),
    ] {
        let r = create(&app, &admin, make("bad", json!({"config": config}))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{why}: {}", r.text);
    }
    let r = app
        .post(
            "/api/v1/instances?wait=30",
            Some(&admin),
            json!({"name": "nope", "source": {"type": "image", "alias": "missing"}}),
        )
        .await;
    r.assert_problem(404, "alias_not_found");
    // A container image cannot boot a VM; a VM's CPU limit is a count.
    let r = create(&app, &admin, make("vm", json!({"type": "virtual-machine"}))).await;
    r.assert_problem(400, "bad_request");
    let r = create(
        &app,
        &admin,
        make(
            "vm",
            json!({"type": "virtual-machine", "config": {"limits.cpu": "0-1"}}),
        ),
    )
    .await;
    r.assert_problem(400, "bad_request");
    // Nothing was made on the host.
    let made: Vec<_> = std::fs::read_dir(host.lxcpath())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(made.is_empty(), "{made:?}");
    let list = app.get("/api/v1/instances", Some(&admin)).await;
    assert_eq!(list.body["total"], 0, "{}", list.text);
}

async fn push_bytes(app: &TestApp, token: &str, path: &str, body: &'static [u8]) -> Reply {
    app.send(
        app.request(
            reqwest::Method::POST,
            &format!("/api/v1/instances/f1/files?path={path}&mode=0600&uid=1000"),
            Some(token),
        )
        .body(body),
    )
    .await
}

#[tokio::test]
async fn files_stay_inside_the_container() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "f1", "source": {"type": "image", "alias": "busybox"}, "start": true}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);

    // Push, then read it back through lxgate and from inside the container.
    let r = push_bytes(&app, &admin, "/root/note.txt", b"pushed-by-lxgate\n").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app
        .get(
            "/api/v1/instances/f1/files?path=/root/note.txt",
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.text, "pushed-by-lxgate\n");
    assert_eq!(r.header("x-file-mode"), Some("0600"));
    assert_eq!(r.header("x-file-uid"), Some("1000"));
    let r = app
        .post(
            "/api/v1/instances/f1/exec?wait=30",
            Some(&admin),
            json!({"command": ["cat", "/root/note.txt"]}),
        )
        .await;
    assert_eq!(
        r.body["metadata"]["stdout"], "pushed-by-lxgate\n",
        "{}",
        r.text
    );
    let d = app
        .get("/api/v1/instances/f1/files?path=/etc", Some(&admin))
        .await;
    assert_eq!(d.body["type"], "directory", "{}", d.text);
    assert!(
        d.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "hostname")
    );

    // The container plants links that point out of it, as a hostile one would.
    let r = app
        .post(
            "/api/v1/instances/f1/exec?wait=30",
            Some(&admin),
            json!({"command": ["sh", "-c",
                "ln -s / /escape; ln -s ../../../../../../etc/hostname /rel; ln -s /etc/hostname /root/link; echo planted"]}),
        )
        .await;
    assert_eq!(r.body["metadata"]["stdout"], "planted\n", "{}", r.text);
    let host_hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    for path in ["/escape/etc/hostname", "/rel", "/../../../../etc/hostname"] {
        let r = app
            .get(
                &format!("/api/v1/instances/f1/files?path={path}"),
                Some(&admin),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        // The container's own hostname file, never the host's.
        let inside =
            std::fs::read_to_string(host.lxcpath().join("default_f1/rootfs/etc/hostname")).unwrap();
        assert_eq!(r.text, inside, "{path}");
        if !host_hostname.is_empty() && host_hostname != inside {
            assert_ne!(r.text, host_hostname, "{path} read the host's file");
        }
    }
    // Writing through a link is refused rather than followed.
    let r = push_bytes(&app, &admin, "/root/link", b"x").await;
    r.assert_problem(400, "bad_request");
    let r = push_bytes(&app, &admin, "/escape/tmp/owned", b"x").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(
        host.lxcpath().join("default_f1/rootfs/tmp/owned").exists(),
        "the write landed inside the container"
    );
    assert!(
        !Path::new("/tmp/owned").exists(),
        "the write escaped to the host"
    );
    let r = app
        .get(
            "/api/v1/instances/f1/files?path=/no/such/file",
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    // A FIFO the container made is refused at once, not waited on (an open
    // of it would block until a writer came).
    let r = app
        .post(
            "/api/v1/instances/f1/exec?wait=30",
            Some(&admin),
            json!({"command": ["busybox", "mkfifo", "/tmp/f"]}),
        )
        .await;
    assert_eq!(r.body["metadata"]["exit_code"], 0, "{}", r.text);
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        app.get("/api/v1/instances/f1/files?path=/tmp/f", Some(&admin)),
    )
    .await
    .expect("a pull of a FIFO answers");
    r.assert_problem(409, "conflict");
    assert!(r.text.contains("FIFO"), "{}", r.text);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        push_bytes(&app, &admin, "/tmp/f", b"x"),
    )
    .await
    .expect("a push to a FIFO answers");
    r.assert_problem(409, "conflict");
    assert!(started.elapsed() < Duration::from_secs(5));
    action(&app, &admin, "f1", "stop").await;
}

/// The test bed's kernel + initrd VM image: metadata tarball, and a
/// `rootfs.img` tarball holding the two files metadata.yaml's `boot` names.
pub async fn import_vm_image(app: &TestApp, token: &str, scratch: &Path) -> String {
    let kernel = PathBuf::from(env("LXGATE_TEST_VM_KERNEL"));
    let initrd = PathBuf::from(env("LXGATE_TEST_VM_INITRD"));
    let boot = scratch.join("boot.tar");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&boot)
        .arg("-C")
        .arg(kernel.parent().unwrap())
        .arg(kernel.file_name().unwrap())
        .arg(initrd.file_name().unwrap())
        .status()
        .unwrap();
    assert!(ok.success());
    let form = Form::new()
        .part(
            "metadata",
            Part::file(env("LXGATE_TEST_VM_META")).await.unwrap(),
        )
        .part("rootfs.img", Part::file(&boot).await.unwrap())
        .text("alias", "tinyvm");
    upload_image(app, token, form).await
}

#[tokio::test]
async fn virtual_machine_lifecycle_with_real_qemu() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    let marker = env("LXGATE_TEST_VM_MARKER");

    let info = app.get("/api/v1/system/info", Some(&admin)).await;
    assert_eq!(
        info.body["features"]["virtual_machines"], true,
        "{}",
        info.text
    );
    let qemu = info.body["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "qemu")
        .unwrap()
        .clone();
    // These machines have /dev/kvm but no vmx/svm: the driver must say TCG.
    assert!(qemu["detail"].as_str().unwrap().contains("tcg"), "{qemu}");

    let fp = import_vm_image(&app, &admin, host.dir.path()).await;
    let img = app.get(&format!("/api/v1/images/{fp}"), Some(&admin)).await;
    assert_eq!(img.body["type"], "virtual-machine", "{}", img.text);
    // A VM image cannot make a container, and the reverse.
    let r = create(
        &app,
        &admin,
        json!({"name": "wrong", "source": {"type": "image", "alias": "tinyvm"}}),
    )
    .await;
    r.assert_problem(400, "bad_request");

    let r = create(
        &app,
        &admin,
        json!({"name": "v1", "type": "virtual-machine",
               "source": {"type": "image", "alias": "tinyvm"},
               "config": {"limits.memory": "192MiB", "limits.cpu": "1"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(status(&app, &admin, "v1").await, "Stopped");
    // The VM's files are root's alone: the guest's disk is the tenant's.
    let vms = host.data().join("vms");
    let vm_dir = vms.join("default_v1");
    assert_eq!(owner_mode(&vms), (0, 0o700));
    assert_eq!(owner_mode(&vm_dir), (0, 0o700));
    for f in ["kernel", "initrd", "boot.json"] {
        assert_eq!(owner_mode(&vm_dir.join(f)), (0, 0o600), "{f}");
    }
    assert!(!nobody_can_list(&vms));
    assert!(!nobody_can_list(&vm_dir));

    // Start, then attach the console: under TCG the guest needs seconds to
    // boot, so its boot marker comes through the relay.
    action(&app, &admin, "v1", "start").await;
    assert_eq!(status(&app, &admin, "v1").await, "Running");
    let st = app.get("/api/v1/instances/v1/state", Some(&admin)).await;
    let pid = st.body["pid"].as_i64().unwrap();
    assert!(pid > 1, "{}", st.text);
    // QEMU runs under its seccomp filter and as the test bed's lxgate-qemu
    // user (scripts/host-setup.sh makes it), not as root.
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(field("Seccomp:"), ["2"], "{proc_status}");
    // What QEMU and lxgate made at start is closed too.
    for f in [
        "qmp.sock",
        "console.sock",
        "qemu.pid",
        "console.log",
        "qemu.out",
    ] {
        assert_eq!(owner_mode(&vm_dir.join(f)), (0, 0o600), "{f}");
    }
    let qemu_uid = Command::new("id")
        .args(["-u", "lxgate-qemu"])
        .output()
        .unwrap();
    let qemu_uid = String::from_utf8_lossy(&qemu_uid.stdout).trim().to_owned();
    assert!(
        !qemu_uid.is_empty(),
        "no lxgate-qemu user: run scripts/host-setup.sh"
    );
    assert_eq!(field("Uid:"), [qemu_uid.as_str(); 4], "{proc_status}");
    assert!(
        qemu["detail"]
            .as_str()
            .unwrap()
            .contains("runs as lxgate-qemu"),
        "{qemu}"
    );
    let mut console = app
        .ws(&format!("/api/v1/instances/v1/console/ws?token={admin}"))
        .await
        .expect("console opens");
    // The serial shell answers.
    boot_to_prompt(&mut console, &marker).await;
    console
        .send(Message::Binary("echo vm-$((40+2))\n".into()))
        .await
        .unwrap();
    read_until(&mut console, "\nvm-42\r\n").await;
    drop(console);
    // What the console printed is also kept as the console log.
    let log = app
        .get("/api/v1/instances/v1/console/log", Some(&admin))
        .await;
    assert!(log.text.contains(&marker), "{}", log.text);
    // Exec needs a guest agent: said clearly.
    let r = app
        .post(
            "/api/v1/instances/v1/exec",
            Some(&admin),
            json!({"command": ["true"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.text);

    // Pause and resume through QMP.
    action(&app, &admin, "v1", "freeze").await;
    assert_eq!(status(&app, &admin, "v1").await, "Frozen");
    action(&app, &admin, "v1", "unfreeze").await;
    assert_eq!(status(&app, &admin, "v1").await, "Running");

    // ACPI power-off (the guest handles it), within the timeout.
    let stop = app
        .put(
            "/api/v1/instances/v1/state?wait=60",
            Some(&admin),
            json!({"action": "stop", "timeout": 30}),
        )
        .await;
    assert_eq!(stop.body["status_code"], 200, "{}", stop.text);
    assert_eq!(status(&app, &admin, "v1").await, "Stopped");
    let del = app
        .delete("/api/v1/instances/v1?wait=30", Some(&admin))
        .await;
    assert_eq!(del.body["status_code"], 200, "{}", del.text);
    assert!(!host.dir.path().join("data/vms/default_v1").exists());
}

/// A block volume attached to a VM (before it starts) is its virtio disk,
/// written through by the guest: QEMU opens it before it drops to its user.
#[tokio::test]
async fn a_vm_writes_to_an_attached_block_volume() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_vm_image(&app, &admin, host.dir.path()).await;
    let r = app
        .post(
            "/api/v1/storage/pools/default/volumes",
            Some(&admin),
            json!({"name": "vol", "content_type": "block", "config": {"size": "64MiB"}}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = create(
        &app,
        &admin,
        json!({"name": "vd", "type": "virtual-machine",
               "source": {"type": "image", "alias": "tinyvm"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let r = app
        .post(
            "/api/v1/instances/vd/volumes",
            Some(&admin),
            json!({"pool": "default", "volume": "vol", "device": "vol"}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    action(&app, &admin, "vd", "start").await;
    let mut console = app
        .ws(&format!("/api/v1/instances/vd/console/ws?token={admin}"))
        .await
        .expect("console opens");
    boot_to_prompt(&mut console, &env("LXGATE_TEST_VM_MARKER")).await;
    // The kernel boots from its initrd, so the volume is the first disk.
    console
        .send(Message::Binary(
            "echo lxgate-disk-$((6*7)) > /dev/vda && sync && echo written-$((1+1))\n".into(),
        ))
        .await
        .unwrap();
    read_until(&mut console, "\nwritten-2\r\n").await;
    drop(console);
    let stop = app
        .put(
            "/api/v1/instances/vd/state?wait=60",
            Some(&admin),
            json!({"action": "stop", "timeout": 30}),
        )
        .await;
    assert_eq!(stop.body["status_code"], 200, "{}", stop.text);
    // What the guest wrote is in the volume's qcow2.
    let vol = files_under(&host.data())
        .into_iter()
        .find(|p| p.ends_with("custom/default_vol.qcow2"))
        .expect("the volume's qcow2");
    assert_eq!(owner_mode(&vol), (0, 0o600));
    let raw = host.dir.path().join("vol.raw");
    let ok = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&vol)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(ok.success());
    let mut head = vec![0u8; 64];
    use std::io::Read;
    std::fs::File::open(&raw)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert!(
        String::from_utf8_lossy(&head).starts_with("lxgate-disk-42\n"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
}

/// Files under `dir` (recursively), for "nothing was left on disk".
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                found.extend(files_under(&e.path()));
            } else {
                found.push(e.path());
            }
        }
    }
    found
}

/// A VM disk image with a backing file or an external data file would make
/// QEMU open a host path the uploader chose: refused with 400, nothing kept.
#[tokio::test]
async fn vm_disk_images_that_name_host_files_are_refused() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    let scratch = tempfile::tempdir().unwrap();
    let qemu_img = |args: &[&std::ffi::OsStr]| {
        let ok = Command::new("qemu-img").args(args).status().unwrap();
        assert!(ok.success(), "qemu-img {args:?}");
    };
    let backed = scratch.path().join("backed.qcow2");
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        "qcow2".as_ref(),
        "-b".as_ref(),
        env("LXGATE_TEST_VM_DISK").as_ref(),
        backed.as_os_str(),
    ]);
    let data_file = scratch.path().join("x.raw");
    let external = scratch.path().join("external.qcow2");
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-o".as_ref(),
        format!("data_file={}", data_file.display()).as_ref(),
        external.as_os_str(),
        "64M".as_ref(),
    ]);
    for (disk, why) in [
        (&backed, "it has a backing file"),
        (&external, "it has an external data file"),
    ] {
        let form = Form::new()
            .part(
                "metadata",
                Part::file(env("LXGATE_TEST_VM_META")).await.unwrap(),
            )
            .part("rootfs.img", Part::file(disk).await.unwrap())
            .text("alias", "evil");
        let r = app
            .send(
                app.request(
                    reqwest::Method::POST,
                    "/api/v1/images/import?wait=60",
                    Some(&admin),
                )
                .multipart(form),
            )
            .await;
        r.assert_problem(400, "bad_request");
        assert!(
            r.body["detail"].as_str().unwrap().contains(why),
            "{}",
            r.text
        );
    }
    nothing_stored(&host, &app, &admin).await;

    // A self-contained qcow2 (the test bed's empty disk) is still taken.
    let form = Form::new()
        .part(
            "metadata",
            Part::file(env("LXGATE_TEST_VM_META")).await.unwrap(),
        )
        .part(
            "rootfs.img",
            Part::file(env("LXGATE_TEST_VM_DISK")).await.unwrap(),
        )
        .text("alias", "plain");
    let fp = upload_image(&app, &admin, form).await;
    let img = app.get(&format!("/api/v1/images/{fp}"), Some(&admin)).await;
    assert_eq!(img.body["type"], "virtual-machine", "{}", img.text);
}

/// The same rule for a VM image copied from a simplestreams server: the
/// operation fails with the reason and nothing is kept.
#[tokio::test]
async fn a_copied_vm_disk_with_a_backing_file_is_refused() {
    let host = Host::new();
    let scratch = tempfile::tempdir().unwrap();
    let backed = scratch.path().join("backed.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(env("LXGATE_TEST_VM_DISK"))
        .arg(&backed)
        .status()
        .unwrap();
    assert!(ok.success());
    let meta = std::fs::read(env("LXGATE_TEST_VM_META")).unwrap();
    let disk = std::fs::read(&backed).unwrap();
    let catalogue = json!({"format": "products:1.0", "datatype": "image-downloads", "products": {
    "evil:vm:amd64:default": {
        "aliases": "evil/vm", "arch": "amd64", "os": "busybox", "release": "vm",
        "versions": {"20261130_00:00": {"items": {
            "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": "meta.tar.xz",
                "sha256": sha256_hex(&[&meta]), "size": meta.len(),
                "combined_disk-kvm-img_sha256": sha256_hex(&[&meta, &disk])},
            "disk-kvm.img": {"ftype": "disk-kvm.img", "path": "disk.qcow2",
                "sha256": sha256_hex(&[&disk]), "size": disk.len()},
        }}}}}});
    let server = serve_simplestreams(
        "evil:vm:amd64:default",
        catalogue,
        vec![("/meta.tar.xz", meta), ("/disk.qcow2", disk)],
    )
    .await;
    let app = host.app_allowing(&[&server]).await;
    let admin = app.admin_token().await;

    let r = app
        .post(
            "/api/v1/images?wait=60",
            Some(&admin),
            json!({"source": {"server": server, "protocol": "simplestreams",
                              "alias": "evil/vm", "image_type": "virtual-machine"},
                   "aliases": [{"name": "evil"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 400, "{}", r.text);
    assert!(
        r.body["err"]
            .as_str()
            .unwrap()
            .contains("it has a backing file"),
        "{}",
        r.text
    );
    nothing_stored(&host, &app, &admin).await;
}

async fn run_in(app: &TestApp, token: &str, name: &str, script: &str) -> String {
    let r = app
        .post(
            &format!("/api/v1/instances/{name}/exec?wait=30"),
            Some(token),
            json!({"command": ["sh", "-c", script]}),
        )
        .await;
    assert_eq!(r.body["metadata"]["exit_code"], 0, "{}", r.text);
    r.body["metadata"]["stdout"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn snapshots_and_backups_of_a_container() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "s1", "source": {"type": "image", "alias": "busybox"}, "start": true}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    run_in(&app, &admin, "s1", "echo one > /root/v").await;

    // Snapshot while running (frozen for the copy), then change the file.
    let r = app
        .post(
            "/api/v1/instances/s1/snapshots?wait=60",
            Some(&admin),
            json!({"name": "first"}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let auto = app
        .post(
            "/api/v1/instances/s1/snapshots?wait=60",
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(auto.body["status_code"], 200, "{}", auto.text);
    let dup = app
        .post(
            "/api/v1/instances/s1/snapshots?wait=60",
            Some(&admin),
            json!({"name": "first"}),
        )
        .await;
    dup.assert_problem(409, "conflict");
    assert_eq!(status(&app, &admin, "s1").await, "Running");
    let list = app
        .get("/api/v1/instances/s1/snapshots?expand=false", Some(&admin))
        .await;
    assert_eq!(list.body["total"], 2, "{}", list.text);
    let names: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        names.contains(&"first") && names.contains(&"snap0"),
        "{names:?}"
    );
    let one = app
        .get("/api/v1/instances/s1/snapshots/first", Some(&admin))
        .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    assert_eq!(one.body["name"], "first");
    run_in(&app, &admin, "s1", "echo two > /root/v").await;

    // Restore on a running container: stopped, restored, started again.
    let r = app
        .post(
            "/api/v1/instances/s1/snapshots/first/restore?wait=90",
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(status(&app, &admin, "s1").await, "Running");
    assert_eq!(run_in(&app, &admin, "s1", "cat /root/v").await, "one\n");

    let r = app
        .delete("/api/v1/instances/s1/snapshots/snap0?wait=30", Some(&admin))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let gone = app
        .get("/api/v1/instances/s1/snapshots/snap0", Some(&admin))
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text);

    // A backup, exported as a stream: a tarball holding the rootfs and the
    // remaining snapshot.
    let r = app
        .post(
            "/api/v1/instances/s1/backups?wait=120",
            Some(&admin),
            json!({"name": "nightly"}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let list = app.get("/api/v1/instances/s1/backups", Some(&admin)).await;
    assert_eq!(list.body["items"][0]["name"], "nightly", "{}", list.text);
    let resp = app
        .request(
            reqwest::Method::GET,
            "/api/v1/instances/s1/backups/nightly/export",
            Some(&admin),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.bytes().await.unwrap();
    let tarball = host.dir.path().join("export.tar.gz");
    std::fs::write(&tarball, &bytes).unwrap();
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(&tarball)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("./rootfs/bin/busybox"), "{listing}");
    assert!(
        listing.contains("./snapshots/first/rootfs/root/v"),
        "{listing}"
    );
    assert!(!listing.contains("./backups"), "backups hold no backups");
    // Snapshots and backups (the container's /etc/shadow among them) are
    // root's alone.
    let ct = host.lxcpath().join("default_s1");
    assert_eq!(owner_mode(&ct.join("backups")).1, 0o700);
    assert_eq!(owner_mode(&ct.join("backups/nightly.tar.gz")), (0, 0o600));
    assert_eq!(owner_mode(&ct.join("snapshots")), (0, 0o700));
    let r = app
        .delete("/api/v1/instances/s1/backups/nightly?wait=30", Some(&admin))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let list = app.get("/api/v1/instances/s1/backups", Some(&admin)).await;
    assert_eq!(list.body["total"], 0, "{}", list.text);
    action(&app, &admin, "s1", "stop").await;
}

#[tokio::test]
async fn projects_scope_instances_and_enforce_limits() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;

    let r = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": "team-a", "description": "A team",
                   "config": {"limits.instances": "1", "features.images": "false"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .post("/api/v1/projects", Some(&admin), json!({"name": "team-a"}))
        .await;
    r.assert_problem(409, "conflict");
    let r = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": "bad", "config": {"limits.instances": "lots"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);

    // An operator of team-a only.
    app.user_with_role(&admin, "alice", None).await;
    let r = app
        .send(
            app.request(
                reqwest::Method::PUT,
                "/api/v1/users/alice/projects/team-a",
                Some(&admin),
            )
            .json(&json!({"role": "operator"})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    // A fresh token: grants are read per request, but be explicit.
    let alice = app.login("alice", PASSWORD).await.0;

    // Images come from the default project (features.images=false).
    let r = app
        .post(
            "/api/v1/instances?project=team-a&wait=60",
            Some(&alice),
            json!({"name": "a1", "source": {"type": "image", "alias": "busybox"}}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert!(host.lxcpath().join("team-a_a1").exists());
    // The limit: one instance.
    let r = app
        .post(
            "/api/v1/instances?project=team-a&wait=60",
            Some(&alice),
            json!({"name": "a2", "source": {"type": "image", "alias": "busybox"}}),
        )
        .await;
    r.assert_problem(400, "bad_request");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("limits.instances"),
        "{}",
        r.text
    );
    assert!(!host.lxcpath().join("team-a_a2").exists());
    let st = app.get("/api/v1/projects/team-a/state", Some(&admin)).await;
    assert_eq!(st.body["resources"]["instances"]["Usage"], 1, "{}", st.text);
    assert_eq!(st.body["resources"]["instances"]["Limit"], 1, "{}", st.text);

    // The same name in another project is another instance.
    let r = create(
        &app,
        &admin,
        json!({"name": "a1", "source": {"type": "image", "alias": "busybox"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    // Isolation: alice sees team-a only.
    let mine = app
        .get("/api/v1/instances?project=team-a", Some(&alice))
        .await;
    assert_eq!(mine.body["total"], 1, "{}", mine.text);
    assert_eq!(mine.body["items"][0]["project"], "team-a");
    let other = app
        .get("/api/v1/instances?project=default", Some(&alice))
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.text);
    let r = app
        .get("/api/v1/instances?project=no-such-project", Some(&admin))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    // A project with instances cannot go; an empty one can.
    let r = app.delete("/api/v1/projects/team-a", Some(&admin)).await;
    r.assert_problem(409, "conflict");
    let r = app
        .delete("/api/v1/instances/a1?project=team-a&wait=30", Some(&alice))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let r = app.delete("/api/v1/projects/team-a", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app.delete("/api/v1/projects/default", Some(&admin)).await;
    r.assert_problem(409, "default_project");
}

#[tokio::test]
async fn a_cancelled_create_leaves_nothing_behind() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;

    // An image big enough that unpacking it takes a moment: the busybox
    // rootfs plus 128 MiB of incompressible data.
    let scratch = host.dir.path().join("big");
    std::fs::create_dir_all(scratch.join("rootfs")).unwrap();
    let ok = Command::new("tar")
        .arg("-xf")
        .arg(env("LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS"))
        .arg("-C")
        .arg(scratch.join("rootfs"))
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=128", "status=none"])
        .arg(format!("of={}", scratch.join("rootfs/ballast").display()))
        .status()
        .unwrap();
    assert!(ok.success());
    let big = scratch.join("big.tar");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&big)
        .arg("-C")
        .arg(scratch.join("rootfs"))
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    let form = Form::new()
        .part(
            "metadata",
            Part::file(env("LXGATE_TEST_EMBEDDED_IMAGE_META"))
                .await
                .unwrap(),
        )
        .part("rootfs", Part::file(&big).await.unwrap())
        .text("alias", "big");
    let r = app
        .send(
            app.request(
                reqwest::Method::POST,
                "/api/v1/images/import?wait=120",
                Some(&admin),
            )
            .multipart(form),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);

    // Cancel right after the 202; if the create won the race, try again
    // (bounded): what is checked is the cancelled one.
    for attempt in 0..5 {
        let name = format!("cx{attempt}");
        let r = app
            .post(
                "/api/v1/instances",
                Some(&admin),
                json!({"name": name, "source": {"type": "image", "alias": "big"}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let id = r.body["operation_id"].as_str().unwrap().to_owned();
        let c = app
            .delete(&format!("/api/v1/operations/{id}"), Some(&admin))
            .await;
        let done = app
            .get(
                &format!("/api/v1/operations/{id}/wait?timeout=60"),
                Some(&admin),
            )
            .await;
        if c.status.is_success() {
            assert_eq!(done.body["status_code"], 401, "{}", done.text);
            assert_eq!(done.body["status"], "Cancelled");
            let gone = app
                .get(&format!("/api/v1/instances/{name}"), Some(&admin))
                .await;
            assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text);
            assert!(
                !host.lxcpath().join(format!("default_{name}")).exists(),
                "files of the cancelled create are left"
            );
            // The name is free again.
            let again = create(
                &app,
                &admin,
                json!({"name": name, "source": {"type": "image", "alias": "big"}}),
            )
            .await;
            assert_eq!(again.body["status_code"], 200, "{}", again.text);
            return;
        }
        assert_eq!(done.body["status_code"], 200, "{}", done.text);
    }
    panic!("every create finished before its cancel arrived");
}

pub fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// A simplestreams tree served on 127.0.0.1 by the test itself: the index,
/// the catalogue, and the files, where `rootfs_sha` may lie on purpose.
pub async fn simplestreams_server(rootfs_sha: Option<String>) -> (String, String) {
    let meta = std::fs::read(env("LXGATE_TEST_EMBEDDED_IMAGE_META")).unwrap();
    let rootfs = std::fs::read(env("LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS")).unwrap();
    let fp = sha256_hex(&[&meta, &rootfs]);
    let catalogue = json!({"format": "products:1.0", "datatype": "image-downloads", "products": {
    "busybox:test:amd64:default": {
        "aliases": "busybox/test,busybox/test/default", "arch": "amd64", "os": "busybox",
        "release": "test", "versions": {
            "20261101_00:00": {"items": {
                "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": "images/old/meta.tar.xz",
                    "sha256": "00", "size": 1},
            }},
            "20261124_00:00": {"items": {
                "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": "images/new/meta.tar.xz",
                    "sha256": sha256_hex(&[&meta]), "size": meta.len(),
                    "combined_rootxz_sha256": fp},
                "root.tar.xz": {"ftype": "root.tar.xz", "path": "images/new/rootfs.tar.xz",
                    "sha256": rootfs_sha.unwrap_or_else(|| sha256_hex(&[&rootfs])),
                    "size": rootfs.len()},
            }},
        }}}});
    let base = serve_simplestreams(
        "busybox:test:amd64:default",
        catalogue,
        vec![
            ("/images/new/meta.tar.xz", meta),
            ("/images/new/rootfs.tar.xz", rootfs),
        ],
    )
    .await;
    (base, fp)
}

/// A simplestreams server of the test's own on 127.0.0.1: the index naming
/// `product`, the catalogue, and the files; its base URL.
pub async fn serve_simplestreams(
    product: &str,
    catalogue: Value,
    files: Vec<(&'static str, Vec<u8>)>,
) -> String {
    let index = json!({"format": "index:1.0", "index": {"images": {
        "datatype": "image-downloads", "path": "streams/v1/images.json", "format": "products:1.0",
        "products": [product]}}});
    let mut app = axum::Router::new()
        .route(
            "/streams/v1/index.json",
            axum::routing::get(move || async move { axum::Json(index) }),
        )
        .route(
            "/streams/v1/images.json",
            axum::routing::get(move || async move { axum::Json(catalogue) }),
        );
    for (path, body) in files {
        app = app.route(path, axum::routing::get(move || async move { body }));
    }
    serve(app).await
}

#[tokio::test]
async fn image_copy_from_a_simplestreams_server() {
    let host = Host::new();
    let (server, fp) = simplestreams_server(None).await;
    let app = host.app_allowing(&[&server]).await;
    let admin = app.admin_token().await;
    let mut ops = app
        .ws(&format!("/api/v1/operations/ws?token={admin}"))
        .await
        .expect("operations");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let r = app
        .post(
            "/api/v1/images?wait=60",
            Some(&admin),
            json!({"source": {"server": server, "protocol": "simplestreams", "alias": "busybox/test"},
                   "aliases": [{"name": "from-ss"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(r.body["metadata"]["fingerprint"], fp.as_str(), "{}", r.text);
    // Progress was reported on the way, in the operation's metadata.
    let mut progress = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !progress
        .iter()
        .any(|p: &String| p.starts_with("rootfs: 100%"))
    {
        match tokio::time::timeout_at(deadline, ops.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let e: Value = serde_json::from_str(&t).unwrap();
                if let Some(p) = e["metadata"]["metadata"]["download_progress"].as_str() {
                    progress.push(p.to_owned());
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no download progress ({progress:?}): {other:?}"),
        }
    }
    assert!(
        progress.iter().any(|p| p.starts_with("metadata: ")),
        "{progress:?}"
    );
    let img = app.get(&format!("/api/v1/images/{fp}"), Some(&admin)).await;
    assert_eq!(img.status, StatusCode::OK, "{}", img.text);
    assert_eq!(img.body["aliases"][0]["name"], "from-ss");
    let c = create(
        &app,
        &admin,
        json!({"name": "ss1", "source": {"type": "image", "alias": "from-ss"}}),
    )
    .await;
    assert_eq!(c.body["status_code"], 200, "{}", c.text);

    // Unknown alias: a failed operation naming it; no VM variant either.
    let r = app
        .post(
            "/api/v1/images?wait=60",
            Some(&admin),
            json!({"source": {"server": server, "protocol": "simplestreams", "alias": "nope/1"}}),
        )
        .await;
    assert_eq!(r.body["status_code"], 400, "{}", r.text);
    assert!(
        r.body["err"].as_str().unwrap().contains("nope/1"),
        "{}",
        r.text
    );

    // A server whose hash does not match what it serves: refused, nothing kept.
    let (liar, _) = simplestreams_server(Some("ab".repeat(32))).await;
    let host2 = Host::new();
    let app2 = host2.app_allowing(&[&liar]).await;
    let admin2 = app2.admin_token().await;
    let r = app2
        .post(
            "/api/v1/images?wait=60",
            Some(&admin2),
            json!({"source": {"server": liar, "protocol": "simplestreams", "alias": "busybox/test"}}),
        )
        .await;
    assert_eq!(r.body["status_code"], 400, "{}", r.text);
    assert!(
        r.body["err"].as_str().unwrap().contains("SHA-256"),
        "{}",
        r.text
    );
    let list = app2.get("/api/v1/images", Some(&admin2)).await;
    assert_eq!(list.body["total"], 0, "{}", list.text);
    let images_dir = host2.dir.path().join("data/images");
    let left: Vec<_> = std::fs::read_dir(&images_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let tmp: Vec<_> = std::fs::read_dir(host2.dir.path().join("data/tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "spool left: {tmp:?}");
}

#[tokio::test]
async fn storage_pools_and_volumes_on_dir() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;

    // The implicit default pool, and one more at a source of our own.
    let pools = app.get("/api/v1/storage/pools", Some(&admin)).await;
    assert_eq!(pools.body["items"][0]["name"], "default", "{}", pools.text);
    let source = host.dir.path().join("fastpool");
    let r = app
        .post(
            "/api/v1/storage/pools",
            Some(&admin),
            json!({"name": "fast", "driver": "dir", "config": {"source": source.display().to_string()}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    for (body, why) in [
        (json!({"name": "p2", "driver": "zfs"}), "another driver"),
        (
            json!({"name": "p3", "driver": "dir", "config": {"source": "/etc/lxgate"}}),
            "a system path",
        ),
        (
            json!({"name": "p4", "driver": "dir", "config": {"source": "/tmp/a/../../etc"}}),
            "a path with ..",
        ),
        (
            json!({"name": "p5", "driver": "dir", "config": {"source": "relative/dir"}}),
            "a relative path",
        ),
    ] {
        let r = app.post("/api/v1/storage/pools", Some(&admin), body).await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::NOT_IMPLEMENTED,
            "{why}: {}",
            r.text
        );
    }

    // A filesystem volume, bind-mounted into a container.
    let r = app
        .post(
            "/api/v1/storage/pools/fast/volumes",
            Some(&admin),
            json!({"name": "data"}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app
        .post(
            "/api/v1/storage/pools/fast/volumes",
            Some(&admin),
            json!({"name": "sized", "config": {"size": "1GiB"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.text);
    let r = create(
        &app,
        &admin,
        json!({"name": "st1", "source": {"type": "image", "alias": "busybox"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let r = app
        .post(
            "/api/v1/instances/st1/volumes",
            Some(&admin),
            json!({"pool": "fast", "volume": "data", "path": "/srv/data", "device": "data"}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app
        .post(
            "/api/v1/instances/st1/volumes",
            Some(&admin),
            json!({"pool": "fast", "volume": "missing", "path": "/srv/x", "device": "x"}),
        )
        .await;
    r.assert_problem(404, "volume_not_found");
    action(&app, &admin, "st1", "start").await;
    assert_eq!(
        run_in(
            &app,
            &admin,
            "st1",
            "echo kept > /srv/data/file && cat /srv/data/file"
        )
        .await,
        "kept\n"
    );
    let on_host = source.join("custom/default_data/file");
    assert_eq!(std::fs::read_to_string(&on_host).unwrap(), "kept\n");
    // A pool at a source of its own is closed the same way.
    assert_custom_closed(&source.join("custom"), &[sub_base("/etc/subuid")]);
    assert!(!nobody_can_list(&source.join("custom/default_data")));
    assert!(!nobody_can("stat", &on_host));
    let vol = app
        .get("/api/v1/storage/pools/fast/volumes/data", Some(&admin))
        .await;
    assert_eq!(vol.body["used_by"][0], "/1.0/instances/st1", "{}", vol.text);
    // In use: not deletable (a conflict with its state).
    let r = app
        .delete("/api/v1/storage/pools/fast/volumes/data", Some(&admin))
        .await;
    r.assert_problem(409, "conflict");
    action(&app, &admin, "st1", "stop").await;
    let r = app
        .delete("/api/v1/instances/st1/volumes/data", Some(&admin))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app
        .delete("/api/v1/storage/pools/fast/volumes/data", Some(&admin))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    assert!(!source.join("custom/default_data").exists());

    // A block volume: a qcow2 disk that grows.
    let r = app
        .post(
            "/api/v1/storage/pools/fast/volumes",
            Some(&admin),
            json!({"name": "disk", "content_type": "block", "config": {"size": "64MiB"}}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app
        .post(
            "/api/v1/storage/pools/fast/volumes/disk/resize",
            Some(&admin),
            json!({"size": "128MiB"}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(source.join("custom/default_disk.qcow2"))
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], 128 << 20);
    // Root's alone: QEMU and qemu-img open it as root; the mapped roots
    // that pass through custom/ cannot read another tenant's disk.
    assert_eq!(
        owner_mode(&source.join("custom/default_disk.qcow2")),
        (0, 0o600)
    );
    let r = app
        .delete("/api/v1/storage/pools/fast/volumes/disk", Some(&admin))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app.delete("/api/v1/storage/pools/fast", Some(&admin)).await;
    assert!(r.status.is_success(), "{}", r.text);
}

#[tokio::test]
async fn host_interfaces_are_listed_read_only() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    let list = app.get("/api/v1/networks", Some(&admin)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let lo = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "lo")
        .cloned()
        .expect("lo is listed");
    assert_eq!(lo["type"], "loopback");
    assert_eq!(lo["managed"], false);
    let st = app.get("/api/v1/networks/lo/state", Some(&admin)).await;
    assert_eq!(st.status, StatusCode::OK, "{}", st.text);
    assert!(
        st.body["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["address"] == "127.0.0.1"),
        "{}",
        st.text
    );
    let missing = app.get("/api/v1/networks/nosuchif0", Some(&admin)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text);
    // Only bridges are managed here: said clearly, nothing changed. (Bridges
    // themselves are made in a network namespace of their own, below.)
    let r = app
        .post(
            "/api/v1/networks",
            Some(&admin),
            json!({"name": "lxgmv9", "type": "macvlan"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.text);
    assert!(!Path::new("/sys/class/net/lxgmv9").exists());
}

/// The browser terminal (`/terminal`) in headless Chromium: it trades the
/// token for a ticket, opens exec/ws, shows the output and the exit code.
#[tokio::test]
async fn the_browser_terminal_runs_a_command() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "t1", "source": {"type": "image", "alias": "busybox"}, "start": true}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);

    let page = app.get("/terminal", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("frame-ancestors 'none'")
    );

    let fragment: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("instance", "t1")
        .append_pair("token", &admin)
        .append_pair("command", "sh")
        .append_pair("command", "-c")
        .append_pair("command", "echo term-ok-$((6*7))")
        .append_pair("autoconnect", "1")
        .finish();
    let url = format!("{}/terminal#{fragment}", app.base);
    let screen = browser_screen(host.dir.path(), &url, "[exited 0]").await;
    assert!(screen.contains("term-ok-42"), "{screen}");
    action(&app, &admin, "t1", "stop").await;
}

/// Opens `url` in headless Chromium (real time: the page talks over a
/// WebSocket, which virtual time does not wait for) and reads the terminal's
/// screen over the DevTools protocol until it shows `until` (bounded).
async fn browser_screen(work: &Path, url: &str, until: &str) -> String {
    use tokio::io::AsyncBufReadExt;
    let profile = tempfile::tempdir_in(work).unwrap();
    let mut child = tokio::process::Command::new(crate::docs_ui::chromium_path())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
        ])
        .arg(crate::docs_ui::OFFLINE_RULES)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .env("HOME", work)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(rest) = l.split("ws://127.0.0.1:").nth(1) {
                return rest.split('/').next().unwrap().to_owned();
            }
        }
        panic!("chromium printed no DevTools address");
    })
    .await
    .expect("chromium's DevTools address");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .send()
            .await
        else {
            continue;
        };
        let targets: Value = r.json().await.unwrap_or_default();
        let Some(ws_url) = targets
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        else {
            continue;
        };
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(ws_url).await else {
            continue;
        };
        let ask = json!({"id": 1, "method": "Runtime.evaluate", "params": {
            "expression": "document.getElementById('screen').textContent + '\\n' + document.getElementById('status').textContent",
            "returnByValue": true}});
        if ws
            .send(Message::Text(ask.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                if v["id"] == 1 {
                    last = v["result"]["result"]["value"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    break;
                }
            }
        }
        if last.contains(until) {
            return last;
        }
    }
    panic!("the terminal never showed {until:?}; last screen:\n{last}");
}

#[tokio::test]
async fn snapshots_of_a_vm_disk() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    // A qcow2 VM image: the VM gets an overlay disk on it.
    let form = Form::new()
        .part(
            "metadata",
            Part::file(env("LXGATE_TEST_VM_META")).await.unwrap(),
        )
        .part(
            "rootfs.img",
            Part::file(env("LXGATE_TEST_VM_DISK")).await.unwrap(),
        )
        .text("alias", "diskvm");
    upload_image(&app, &admin, form).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "d1", "type": "virtual-machine", "source": {"type": "image", "alias": "diskvm"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let disk = host.dir.path().join("data/vms/default_d1/root.qcow2");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&disk)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(
        info["backing-filename"]
            .as_str()
            .is_some_and(|b| b.contains("/images/")),
        "an overlay on the image: {info}"
    );

    let r = app
        .post(
            "/api/v1/instances/d1/snapshots?wait=60",
            Some(&admin),
            json!({"name": "s0"}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let listed = |disk: &Path| {
        let out = Command::new("qemu-img")
            .args(["snapshot", "-l"])
            .arg(disk)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(listed(&disk).contains("s0"), "{}", listed(&disk));
    let r = app
        .post(
            "/api/v1/instances/d1/snapshots/s0/restore?wait=60",
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let r = app
        .delete("/api/v1/instances/d1/snapshots/s0?wait=60", Some(&admin))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert!(!listed(&disk).contains("s0"), "{}", listed(&disk));
    let r = app
        .delete("/api/v1/instances/d1?wait=30", Some(&admin))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
}

// --------------------------------------------------- managed bridge networks ---

const NETNS_ENV: &str = "LXGATE_TEST_NETNS";

/// Removes the test's network namespace, whatever happened inside it.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs in it (a failed run's containers, VMs, dnsmasq)
        // would keep the namespace alive: killed first.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Runs `test` (a test of this binary) again inside a network namespace made
/// for it, so the bridges, veths and taps it makes never touch the host's
/// networking. True in the caller (the run inside has passed), false inside
/// the namespace (go on with the test).
fn in_own_netns(test: &str) -> bool {
    if std::env::var_os(NETNS_ENV).is_some() {
        return false;
    }
    let ns = Netns(format!("lxgate-test-{}", std::process::id()));
    let ip = |args: &[&str]| {
        let ok = Command::new("ip").args(args).status().expect("ip runs");
        assert!(ok.success(), "ip {args:?}");
    };
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    // The test binary names tests by their path without the crate.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(std::env::current_exe().expect("the test binary"))
        .args([&format!("{module}::{test}"), "--exact", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(NETNS_ENV, &ns.0)
        .output()
        .expect("the test runs in its namespace");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "inside netns {}:\n{text}",
        ns.0
    );
    println!("{text}");
    true
}

async fn patch(app: &TestApp, token: &str, path: &str, body: Value) -> Reply {
    app.send(
        app.request(reqwest::Method::PATCH, path, Some(token))
            .json(&body),
    )
    .await
}

/// `ip -j addr show dev <name>`'s IPv4 addresses, straight from the kernel.
fn host_ipv4(name: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-j", "-4", "addr", "show", "dev", name])
        .output()
        .expect("ip runs");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// Whether the process runs (a zombie has ended).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The pid of a live dnsmasq named by this pidfile.
fn dhcp_pid(pidfile: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "dnsmasq").then_some(pid)
}

fn ping(addr: &str) -> bool {
    Command::new("busybox")
        .args(["ping", "-c", "1", "-W", "3", addr])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A bridge with an address, a container's veth and a VM's tap on it, real
/// packets between them, and the leases, state and refusals around them. In
/// a network namespace of the test's own.
#[tokio::test]
async fn bridge_networks_and_nics() {
    if in_own_netns("bridge_networks_and_nics") {
        // Nothing leaked into the host's namespace.
        assert!(!Path::new("/sys/class/net/lxgbr0").exists());
        return;
    }
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    let info = app.get("/api/v1/system/info", Some(&admin)).await;
    assert_eq!(
        info.body["features"]["network_bridges"], true,
        "{}",
        info.text
    );

    // Refusals first: nothing reaches the host.
    let net = |body: Value| {
        let (app, admin) = (&app, &admin);
        async move { app.post("/api/v1/networks", Some(admin), body).await }
    };
    net(json!({"name": "a-sixteen-chars0"}))
        .await
        .assert_problem(422, "validation_failed");
    // `all` and `default` are the kernel's (the bridge failed as a 500).
    for name in ["all", "default"] {
        net(json!({"name": name}))
            .await
            .assert_problem(422, "validation_failed");
    }
    net(json!({"name": "lxgbr0", "config": {"ipv4.address": "10.77.0.0/24"}}))
        .await
        .assert_problem(400, "bad_request");
    net(json!({"name": "lxgbr0", "config": {"dns.domain": "x"}}))
        .await
        .assert_problem(400, "bad_request");
    let r = net(json!({"name": "lxgbr0", "config": {"ipv4.nat": "true"}})).await;
    assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{}", r.text);
    net(json!({"name": "lo"}))
        .await
        .assert_problem(409, "conflict");
    assert!(!Path::new("/sys/class/net/lxgbr0").exists());

    // A bridge with the addresses asked for.
    let r = net(json!({"name": "lxgbr0", "description": "lab",
        "config": {"ipv4.address": "10.77.0.1/24", "ipv6.address": "fd42:77::1/64"}}))
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["managed"], true, "{}", r.text);
    assert_eq!(r.body["status"], "Created", "{}", r.text);
    assert_eq!(host_ipv4("lxgbr0"), ["10.77.0.1/24"]);
    net(json!({"name": "lxgbr0"}))
        .await
        .assert_problem(409, "conflict");
    // Another bridge may not take addresses this one has.
    net(json!({"name": "lxgbr2", "config": {"ipv4.address": "10.77.128.1/16"}}))
        .await
        .assert_problem(409, "conflict");
    net(json!({"name": "lxgbr2", "config": {"ipv6.address": "fe80::1/64"}}))
        .await
        .assert_problem(400, "bad_request");
    let dnsmasq = host.data().join("networks/lxgbr0/dnsmasq.pid");
    let first_dhcp = dhcp_pid(&dnsmasq).expect("a dnsmasq serves the bridge");
    // `auto` (the default) picks a free 10.x.y.1/24.
    let r = net(json!({"name": "lxgbr1"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let auto = r.body["config"]["ipv4.address"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(auto.starts_with("10.") && auto.ends_with(".1/24"), "{auto}");
    assert_eq!(host_ipv4("lxgbr1"), [auto]);
    let r = app.delete("/api/v1/networks/lxgbr1", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(!Path::new("/sys/class/net/lxgbr1").exists());

    // A container with a NIC on it: address and MAC fixed at attach time.
    import_busybox(&app, &admin).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "c1", "source": {"type": "image", "alias": "busybox"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let nic = |inst: &'static str, body: Value| {
        let (app, admin) = (&app, &admin);
        async move {
            app.post(&format!("/api/v1/instances/{inst}/nics"), Some(admin), body)
                .await
        }
    };
    nic("c1", json!({"network": "nosuchnet", "device": "eth0"}))
        .await
        .assert_problem(404, "network_not_found");
    nic("c1", json!({"network": "lo", "device": "eth0"}))
        .await
        .assert_problem(422, "validation_failed");
    let r = nic("c1", json!({"network": "lxgbr0", "device": "eth0"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let eth0 = r.body["devices"]["eth0"].clone();
    assert_eq!(eth0["ipv4.address"], "10.77.0.2", "{}", r.text);
    assert!(
        eth0["hwaddr"].as_str().unwrap().starts_with("10:66:6a:"),
        "{eth0}"
    );
    action(&app, &admin, "c1", "start").await;
    let addr = run_in(&app, &admin, "c1", "ip -4 addr show eth0; ip route").await;
    assert!(addr.contains("inet 10.77.0.2/24"), "{addr}");
    assert!(addr.contains("default via 10.77.0.1"), "{addr}");
    run_in(&app, &admin, "c1", "ping -c 1 -W 3 10.77.0.1").await;
    assert!(ping("10.77.0.2"), "the container answers on the bridge");
    // A VM on the same bridge: its tap is in the bridge before it boots; the
    // guest (no DHCP) takes the address lxgate reserved for it.
    import_vm_image(&app, &admin, host.dir.path()).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "v1", "type": "virtual-machine",
        "source": {"type": "image", "alias": "tinyvm"}, "config": {"limits.memory": "192MiB"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let r = nic("v1", json!({"network": "lxgbr0", "device": "eth0"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["devices"]["eth0"]["ipv4.address"], "10.77.0.3",
        "{}",
        r.text
    );
    let vm_mac = r.body["devices"]["eth0"]["hwaddr"]
        .as_str()
        .unwrap()
        .to_owned();
    action(&app, &admin, "v1", "start").await;
    let mut console = app
        .ws(&format!("/api/v1/instances/v1/console/ws?token={admin}"))
        .await
        .expect("console opens");
    let marker = env("LXGATE_TEST_VM_MARKER");
    boot_to_prompt(&mut console, &marker).await;
    console
        .send(Message::Binary(
            "cat /sys/class/net/eth0/address; ip link set eth0 up && udhcpc -i eth0 -n -q -t 5 -s /bin/true && ip addr add 10.77.0.3/24 dev eth0 && ping -c 1 -W 5 10.77.0.2 >/dev/null && echo net-$((40+2))\n"
                .into(),
        ))
        .await
        .unwrap();
    let out = read_until(&mut console, "\nnet-42\r\n").await;
    assert!(
        out.contains(&vm_mac),
        "the guest's NIC has the MAC lxgate gave: {out}"
    );
    // lxgate's dnsmasq offered the guest exactly the address reserved for it.
    assert!(out.contains("lease of 10.77.0.3 obtained"), "DHCP: {out}");
    drop(console);
    run_in(&app, &admin, "c1", "ping -c 1 -W 3 10.77.0.3").await;
    // The instance's state shows the NIC, its address and the traffic.
    let st = app.get("/api/v1/instances/c1/state", Some(&admin)).await;
    let n = &st.body["network"]["eth0"];
    assert_eq!(n["addresses"][0]["address"], "10.77.0.2", "{}", st.text);
    assert_eq!(n["hwaddr"], eth0["hwaddr"], "{}", st.text);
    assert_eq!(n["state"], "up", "{}", st.text);
    assert!(
        n["counters"]["packets_sent"].as_i64().unwrap() >= 3,
        "{}",
        st.text
    );
    assert!(
        n["host_name"].as_str().unwrap().starts_with("lxg"),
        "{}",
        st.text
    );

    // What the API says about it all.
    let r = app.get("/api/v1/networks/lxgbr0", Some(&admin)).await;
    let used: Vec<&str> = r.body["used_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(
        used,
        ["/1.0/instances/c1", "/1.0/instances/v1"],
        "{}",
        r.text
    );
    let etag = r
        .header("etag")
        .expect("a managed network has an ETag")
        .to_owned();
    let st = app.get("/api/v1/networks/lxgbr0/state", Some(&admin)).await;
    let upper = st.body["bridge"]["upper_devices"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(upper.len(), 2, "a veth and a tap: {}", st.text);
    assert!(
        upper.iter().all(|u| u.as_str().unwrap().starts_with("lxg")),
        "{}",
        st.text
    );
    let leases = app
        .get("/api/v1/networks/lxgbr0/leases", Some(&admin))
        .await;
    let got: Vec<(String, String, String)> = leases.body["items"]
        .as_array()
        .or(leases.body.as_array())
        .unwrap()
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            (s("hostname"), s("address"), s("type"))
        })
        .collect();
    let want = |h: &str, a: &str, t: &str| (h.to_owned(), a.to_owned(), t.to_owned());
    assert_eq!(
        got,
        [
            want("lxgbr0.gw", "10.77.0.1", "gateway"),
            want("c1", "10.77.0.2", "static"),
            want("v1", "10.77.0.3", "static")
        ],
        "{}",
        leases.text
    );
    // A running container's NICs are hot-plugged and unplugged; a running
    // VM's are refused (the guest would have to take part).
    let r = nic("c1", json!({"network": "lxgbr0", "device": "eth1"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["devices"]["eth1"]["ipv4.address"], "10.77.0.4",
        "{}",
        r.text
    );
    let mac1 = r.body["devices"]["eth1"]["hwaddr"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run_in(
        &app,
        &admin,
        "c1",
        "cat /sys/class/net/eth1/address; ip -4 addr show eth1",
    )
    .await;
    assert!(
        out.contains(&mac1) && out.contains("inet 10.77.0.4/24"),
        "{out}"
    );
    assert!(ping("10.77.0.4"), "the hot-plugged NIC answers");
    let r = app
        .delete("/api/v1/instances/c1/nics/eth1?wait=30", Some(&admin))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let out = run_in(&app, &admin, "c1", "ls /sys/class/net").await;
    assert!(!out.contains("eth1") && out.contains("eth0"), "{out}");
    assert!(!ping("10.77.0.4"), "the unplugged NIC is gone");
    nic("v1", json!({"network": "lxgbr0", "device": "eth1"}))
        .await
        .assert_problem(400, "bad_request");

    // In use: no delete, no re-addressing; the description may change.
    app.delete("/api/v1/networks/lxgbr0", Some(&admin))
        .await
        .assert_problem(409, "conflict");
    patch(
        &app,
        &admin,
        "/api/v1/networks/lxgbr0",
        json!({"config": {"ipv4.address": "10.78.0.1/24"}}),
    )
    .await
    .assert_problem(400, "bad_request");
    let r = app
        .send(
            app.request(
                reqwest::Method::PATCH,
                "/api/v1/networks/lxgbr0",
                Some(&admin),
            )
            .header("if-match", &etag)
            .json(&json!({"description": "lab bridge"})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    // DHCP off and on again.
    let dhcp = |on: &str| {
        patch(
            &app,
            &admin,
            "/api/v1/networks/lxgbr0",
            json!({"config": {"ipv4.dhcp": on}}),
        )
    };
    assert!(dhcp("false").await.status.is_success());
    assert_eq!(dhcp_pid(&dnsmasq), None);
    assert!(!running(first_dhcp), "dnsmasq stopped");
    assert!(dhcp("true").await.status.is_success());
    assert!(dhcp_pid(&dnsmasq).is_some());
    // A PUT drops what it leaves out: here the subnet, which is in use.
    app.put(
        "/api/v1/networks/lxgbr0",
        Some(&admin),
        json!({"description": "x"}),
    )
    .await
    .assert_problem(400, "bad_request");
    let r = app.get("/api/v1/networks/lxgbr0", Some(&admin)).await;
    assert_eq!(r.body["description"], "lab bridge", "{}", r.text);
    assert_eq!(
        r.body["config"]["ipv4.address"], "10.77.0.1/24",
        "{}",
        r.text
    );

    // Stopped, detached, deleted: the addresses are free again.
    for name in ["c1", "v1"] {
        let r = app
            .put(
                &format!("/api/v1/instances/{name}/state?wait=60"),
                Some(&admin),
                json!({"action": "stop", "force": true}),
            )
            .await;
        assert_eq!(r.body["status_code"], 200, "{}", r.text);
    }
    let r = app
        .delete("/api/v1/instances/c1/nics/eth0?wait=30", Some(&admin))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app.get("/api/v1/instances/c1", Some(&admin)).await;
    assert!(r.body["devices"].get("eth0").is_none(), "{}", r.text);
    let r = app
        .delete("/api/v1/instances/v1?wait=30", Some(&admin))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);

    // A bridge the host lost (a reboot) is made again when lxgate starts.
    drop(app);
    let ok = Command::new("ip")
        .args(["link", "delete", "lxgbr0"])
        .status()
        .unwrap();
    assert!(ok.success());
    let stale = dhcp_pid(&dnsmasq).expect("dnsmasq outlives lxgate");
    let app = host.app().await;
    let admin = app.admin_token().await;
    assert_eq!(host_ipv4("lxgbr0"), ["10.77.0.1/24"]);
    // The dnsmasq of the lost bridge was replaced by one on the new bridge.
    let fresh = dhcp_pid(&dnsmasq).expect("DHCP is back");
    assert_ne!(fresh, stale);
    let r = app.delete("/api/v1/networks/lxgbr0", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(!Path::new("/sys/class/net/lxgbr0").exists());
    let r = app.get("/api/v1/networks/lxgbr0", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert!(!running(fresh), "dnsmasq stopped");
    assert!(!host.data().join("networks/lxgbr0").exists());
}

/// Root's subordinate range start in a subuid/subgid file (the test bed's
/// incus package adds `root:1000000:1000000000`).
fn sub_base(file: &str) -> u32 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 3 && f[0] == "root").then(|| f[1].parse().ok())?
        })
        .next()
        .unwrap_or_else(|| panic!("{file} grants root no range"))
}

/// An exec's exit code and output.
async fn exec_in(app: &TestApp, token: &str, name: &str, script: &str) -> (i64, String) {
    let r = app
        .post(
            &format!("/api/v1/instances/{name}/exec?wait=30"),
            Some(token),
            json!({"command": ["sh", "-c", script]}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let m = &r.body["metadata"];
    (
        m["exit_code"].as_i64().unwrap(),
        format!(
            "{}{}",
            m["stdout"].as_str().unwrap(),
            m["stderr"].as_str().unwrap()
        ),
    )
}

fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A path's owner and permission bits.
fn owner_mode(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.mode() & 0o7777)
}

/// Whether a host user that is neither root nor a mapped id (nobody) can
/// list `path`: asked of the kernel, as that user.
fn nobody_can_list(path: &Path) -> bool {
    nobody_can("ls", path)
}

/// Whether nobody (as above) can run `tool path`: `stat` of a file in a
/// directory needs search permission on every directory above it.
fn nobody_can(tool: &str, path: &Path) -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", tool])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("setpriv runs")
        .success()
}

/// A path's ACL entries (`getfacl`, no header), one per line.
fn acl_of(path: &Path) -> Vec<String> {
    let out = Command::new("getfacl")
        .args(["--omit-header", "--absolute-names", "--"])
        .arg(path)
        .output()
        .expect("getfacl runs");
    assert!(out.status.success(), "getfacl {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A pool's `custom/` as lxgate leaves it: root's, nothing for the group
/// or others, search only for exactly these mapped roots, and nobody else
/// gets in (neither lists it nor reaches a volume below it).
fn assert_custom_closed(custom: &Path, uids: &[u32]) {
    assert_eq!(owner_mode(custom), (0, 0o710), "{}", custom.display());
    let mut want = vec!["user::rwx".to_owned()];
    want.extend(uids.iter().map(|u| format!("user:{u}:--x")));
    want.extend(["group::---", "mask::--x", "other::---"].map(String::from));
    assert_eq!(acl_of(custom), want, "{}", custom.display());
    assert!(!nobody_can_list(custom));
}

#[tokio::test]
async fn containers_are_unprivileged_by_default() {
    use std::os::unix::fs::MetadataExt;
    let (ubase, gbase) = (sub_base("/etc/subuid"), sub_base("/etc/subgid"));
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;

    let info = app.get("/api/v1/system/info", Some(&admin)).await;
    assert_eq!(
        info.body["features"]["unprivileged_containers"], true,
        "{}",
        info.text
    );
    let lxc = info.body["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "lxc")
        .unwrap();
    assert!(
        lxc["detail"].as_str().unwrap().contains(&ubase.to_string()),
        "{lxc}"
    );

    let r = create(
        &app,
        &admin,
        json!({"name": "u1", "source": {"type": "image", "alias": "busybox"}, "start": true}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let inst = app.get("/api/v1/instances/u1", Some(&admin)).await;
    assert_eq!(
        inst.body["config"].get("security.privileged"),
        None,
        "{}",
        inst.text
    );
    assert_eq!(
        inst.body["config"]["volatile.idmap.base"],
        ubase.to_string(),
        "{}",
        inst.text
    );

    // Root inside is a mapped id, not the host's root.
    let (code, map) = exec_in(&app, &admin, "u1", "cat /proc/self/uid_map").await;
    assert_eq!(code, 0, "{map}");
    assert_eq!(words(&map), format!("0 {ubase} 65536"));
    let (_, gmap) = exec_in(&app, &admin, "u1", "cat /proc/self/gid_map").await;
    assert_eq!(words(&gmap), format!("0 {gbase} 65536"));
    // The console (init's shell on /dev/console) answers in the namespace too.
    let mut console = app
        .ws(&format!("/api/v1/instances/u1/console/ws?token={admin}"))
        .await
        .expect("console opens");
    console
        .send(Message::Binary(
            "echo con-$((40+2)) $(wc -l < /proc/self/uid_map)\n".into(),
        ))
        .await
        .unwrap();
    read_until(&mut console, "\ncon-42 1\r").await;
    drop(console);
    // And an interactive exec.
    let mut term = app
        .ws(&format!(
            "/api/v1/instances/u1/exec/ws?token={admin}&command=cat&command=/proc/self/uid_map"
        ))
        .await
        .expect("exec opens");
    read_until(&mut term, &ubase.to_string()).await;
    drop(term);
    // A host block device cannot be made (and so never opened).
    let (code, out) = exec_in(&app, &admin, "u1", "mknod /tmp/b b 254 0").await;
    assert_ne!(code, 0, "mknod succeeded: {out}");
    assert!(!host.lxcpath().join("default_u1/rootfs/tmp/b").exists());
    // LXC's default seccomp filter is on init.
    let (_, seccomp) = exec_in(&app, &admin, "u1", "grep '^Seccomp:' /proc/1/status").await;
    assert_eq!(words(&seccomp), "Seccomp: 2");
    // The rootfs belongs to the mapped ids on the host.
    let etc = std::fs::metadata(host.lxcpath().join("default_u1/rootfs/etc")).unwrap();
    assert_eq!((etc.uid(), etc.gid()), (ubase, gbase));
    // And no other host user can reach it (and run a setuid binary the
    // tenant planted): the container's directory lets its mapped root
    // through, nobody else. The lxcpath itself is open for passing.
    let ct = host.lxcpath().join("default_u1");
    assert_eq!(owner_mode(&ct), (ubase, 0o100));
    assert!(!nobody_can_list(&ct.join("rootfs")));
    assert!(!nobody_can_list(&ct.join("rootfs/bin")));
    assert!(!nobody_can_list(&ct));

    // A file pushed as root (no uid given) is root's inside, the mapped
    // root's on the host, and root inside may write to it.
    let r = app
        .send(
            app.request(
                reqwest::Method::POST,
                "/api/v1/instances/u1/files?path=/root/pushed.txt",
                Some(&admin),
            )
            .body("from-lxgate\n"),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let on_host =
        std::fs::metadata(host.lxcpath().join("default_u1/rootfs/root/pushed.txt")).unwrap();
    assert_eq!((on_host.uid(), on_host.gid()), (ubase, gbase));
    let (code, out) = exec_in(
        &app,
        &admin,
        "u1",
        "echo more >> /root/pushed.txt && stat -c '%u:%g' /root/pushed.txt",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "0:0\n"));
    let r = app
        .get(
            "/api/v1/instances/u1/files?path=/root/pushed.txt",
            Some(&admin),
        )
        .await;
    assert_eq!(r.text, "from-lxgate\nmore\n");
    assert_eq!(r.header("x-file-uid"), Some("0"));
    // Ids outside the map are refused before anything is written.
    let r = app
        .send(
            app.request(
                reqwest::Method::POST,
                "/api/v1/instances/u1/files?path=/root/big.txt&uid=70000",
                Some(&admin),
            )
            .body("x"),
        )
        .await;
    r.assert_problem(400, "bad_request");
    assert!(
        !host
            .lxcpath()
            .join("default_u1/rootfs/root/big.txt")
            .exists()
    );

    // A volume from a pool is writable by the container's root.
    let r = app
        .post(
            "/api/v1/storage/pools/default/volumes",
            Some(&admin),
            json!({"name": "shared"}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    action(&app, &admin, "u1", "stop").await;
    let r = app
        .post(
            "/api/v1/instances/u1/volumes",
            Some(&admin),
            json!({"pool": "default", "volume": "shared", "path": "/srv/shared", "device": "shared"}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    action(&app, &admin, "u1", "start").await;
    let (code, out) = exec_in(
        &app,
        &admin,
        "u1",
        "touch /srv/shared/made-inside && echo ok",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "ok\n"));
    let made = std::fs::metadata(
        host.data()
            .join("storage/default/custom/default_shared/made-inside"),
    )
    .unwrap();
    assert_eq!(made.uid(), ubase);
    // No other host user reaches the volume (and a setuid binary the
    // tenant's root put there): the pool's custom/ lets the mapped root
    // through, nobody else, whatever mode root inside gives the volume.
    let custom = host.data().join("storage/default/custom");
    exec_in(&app, &admin, "u1", "chmod 0777 /srv/shared").await;
    assert_custom_closed(&custom, &[ubase]);
    assert!(!nobody_can_list(&custom.join("default_shared")));
    assert!(!nobody_can(
        "stat",
        &custom.join("default_shared/made-inside")
    ));

    // The confinement is fixed at creation: changing it needs a shift.
    let r = patch(
        &app,
        &admin,
        "/api/v1/instances/u1",
        json!({"config": {"security.privileged": "true"}}),
    )
    .await;
    r.assert_problem(400, "bad_request");
    assert!(r.text.contains("security.privileged"), "{}", r.text);
    // Snapshots restore with the owners intact; a rename keeps the map.
    let r = app
        .post(
            "/api/v1/instances/u1/snapshots?wait=60",
            Some(&admin),
            json!({"name": "before"}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    // The copy was made as the container's root: owners as in the rootfs.
    let snap = host.lxcpath().join("default_u1/snapshots");
    assert_eq!(owner_mode(&snap), (0, 0o700));
    assert_eq!(owner_mode(&snap.join("before")), (0, 0o700));
    let copied = std::fs::metadata(snap.join("before/rootfs/root/pushed.txt")).unwrap();
    assert_eq!((copied.uid(), copied.gid()), (ubase, gbase));
    exec_in(&app, &admin, "u1", "rm /root/pushed.txt").await;
    let r = app
        .post(
            "/api/v1/instances/u1/snapshots/before/restore?wait=60",
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let (code, out) = exec_in(
        &app,
        &admin,
        "u1",
        "stat -c '%u' /root/pushed.txt && cat /proc/self/uid_map",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(words(&out), format!("0 0 {ubase} 65536"));
    action(&app, &admin, "u1", "stop").await;
    let r = app
        .post(
            "/api/v1/instances/u1/rename?wait=60",
            Some(&admin),
            json!({"name": "u2"}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    action(&app, &admin, "u2", "start").await;
    let (_, map) = exec_in(&app, &admin, "u2", "cat /proc/self/uid_map").await;
    assert_eq!(words(&map), format!("0 {ubase} 65536"));
    action(&app, &admin, "u2", "stop").await;
}

/// Makes an instance's row look like one from before ids were mapped: no
/// `privileged` value of its own (the column's default, which is what the
/// migration gives existing rows) and no `security.privileged` key.
async fn make_it_old(db: &Path, name: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let cols = "project, name, instance_type, description, architecture, config, devices, profiles, ephemeral, image, created_at, last_used_at";
    for q in [
        format!(
            "CREATE TEMP TABLE was AS SELECT {cols} FROM embedded_instances WHERE name = '{name}'"
        ),
        format!("DELETE FROM embedded_instances WHERE name = '{name}'"),
        format!("INSERT INTO embedded_instances ({cols}) SELECT {cols} FROM was"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(q))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let (config,): (String,) =
        sqlx::query_as("SELECT config FROM embedded_instances WHERE name = $1")
            .bind(name)
            .fetch_one(&mut c)
            .await
            .unwrap();
    let mut config: serde_json::Map<String, Value> = serde_json::from_str(&config).unwrap();
    config.remove("security.privileged");
    sqlx::query("UPDATE embedded_instances SET config = $1 WHERE name = $2")
        .bind(Value::Object(config).to_string())
        .bind(name)
        .execute(&mut c)
        .await
        .unwrap();
    let (privileged,): (i64,) =
        sqlx::query_as("SELECT privileged FROM embedded_instances WHERE name = $1")
            .bind(name)
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(privileged, 1, "existing rows default to privileged");
}

#[tokio::test]
async fn a_rootfs_with_device_nodes_unpacks_unprivileged() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    // The busybox rootfs plus what debootstrap leaves in dev/: a character
    // device and a directory with another one in it.
    let scratch = host.dir.path().join("devs");
    let rootfs = scratch.join("rootfs");
    std::fs::create_dir_all(rootfs.join("dev/net")).unwrap();
    let ok = Command::new("tar")
        .arg("-xf")
        .arg(env("LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS"))
        .arg("-C")
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(ok.success());
    for (node, major, minor) in [("dev/null", "1", "3"), ("dev/net/tun", "10", "200")] {
        let p = rootfs.join(node);
        let _ = std::fs::remove_file(&p);
        let ok = Command::new("mknod")
            .arg(&p)
            .args(["c", major, minor])
            .status()
            .unwrap();
        assert!(ok.success(), "mknod {node}");
    }
    let tarball = scratch.join("devs.tar.gz");
    let ok = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&rootfs)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    let listing = Command::new("tar")
        .arg("-tvzf")
        .arg(&tarball)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.stdout)
            .lines()
            .any(|l| l.starts_with('c') && l.ends_with("./dev/null")),
        "the image holds a device node"
    );
    let form = Form::new()
        .part(
            "metadata",
            Part::file(env("LXGATE_TEST_EMBEDDED_IMAGE_META"))
                .await
                .unwrap(),
        )
        .part("rootfs", Part::file(&tarball).await.unwrap())
        .text("alias", "devs");
    upload_image(&app, &admin, form).await;

    let r = create(
        &app,
        &admin,
        json!({"name": "d1", "source": {"type": "image", "alias": "devs"}, "start": true}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(status(&app, &admin, "d1").await, "Running");
    let inst = app.get("/api/v1/instances/d1", Some(&admin)).await;
    assert!(
        inst.body["config"].get("volatile.idmap.base").is_some(),
        "{}",
        inst.text
    );
    // dev/ itself is kept, what was in it left out; inside, LXC's own
    // /dev has a working null.
    let on_host = host.lxcpath().join("default_d1/rootfs/dev");
    assert!(on_host.is_dir());
    assert_eq!(std::fs::read_dir(&on_host).unwrap().count(), 0);
    let (code, out) = exec_in(&app, &admin, "d1", "echo gone > /dev/null && echo ok").await;
    assert_eq!((code, out.as_str()), (0, "ok\n"));
    action(&app, &admin, "d1", "stop").await;
}

#[tokio::test]
async fn privileged_containers_only_when_asked_and_old_ones_stay_privileged() {
    let host = Host::new();
    {
        let app = host.app().await;
        let admin = app.admin_token().await;
        import_busybox(&app, &admin).await;
        for name in ["priv", "old"] {
            let r = create(
                &app,
                &admin,
                json!({"name": name, "source": {"type": "image", "alias": "busybox"},
                       "config": {"security.privileged": "true"}, "start": true}),
            )
            .await;
            assert_eq!(r.body["status_code"], 200, "{}", r.text);
        }
        let inst = app.get("/api/v1/instances/priv", Some(&admin)).await;
        assert_eq!(
            inst.body["config"]["security.privileged"], "true",
            "{}",
            inst.text
        );
        assert_eq!(inst.body["config"].get("volatile.idmap.base"), None);
        let (_, map) = exec_in(&app, &admin, "priv", "cat /proc/self/uid_map").await;
        assert_eq!(words(&map), "0 0 4294967295");
        // Its files are host root's: nobody else may come near them.
        let ct = host.lxcpath().join("default_priv");
        assert_eq!(owner_mode(&ct), (0, 0o700));
        assert!(!nobody_can_list(&ct.join("rootfs")));
        let r = patch(
            &app,
            &admin,
            "/api/v1/instances/priv",
            json!({"config": {"security.privileged": "false"}}),
        )
        .await;
        r.assert_problem(400, "bad_request");
    }
    // "old" as a row from before ids were mapped looks: no key in its
    // config, and the column's default (what the migration gives them).
    make_it_old(&host.data().join("lxgate.db"), "old").await;
    // And its directory as open as earlier versions left it.
    {
        use std::os::unix::fs::PermissionsExt;
        let ct = host.lxcpath().join("default_old");
        std::fs::set_permissions(&ct, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // lxgate comes back; the old container kept running and shows what it is.
    assert_eq!(host.lxc_state("default", "old"), "RUNNING");
    let app = host.app().await;
    let admin = app.admin_token().await;
    let inst = app.get("/api/v1/instances/old", Some(&admin)).await;
    assert_eq!(inst.body["status"], "Running", "{}", inst.text);
    assert_eq!(
        inst.body["config"]["security.privileged"], "true",
        "{}",
        inst.text
    );
    assert_eq!(
        inst.body["expanded_config"]["security.privileged"], "true",
        "{}",
        inst.text
    );
    // It is still managed as before: an update writes its old (privileged)
    // configuration, and a restart keeps it privileged.
    let r = patch(
        &app,
        &admin,
        "/api/v1/instances/old",
        json!({"config": {"user.note": "kept"}}),
    )
    .await;
    assert!(r.status.is_success(), "{}", r.text);
    let config = std::fs::read_to_string(host.lxcpath().join("default_old/config")).unwrap();
    assert!(!config.contains("lxc.idmap"), "{config}");
    assert_eq!(owner_mode(&host.lxcpath().join("default_old")), (0, 0o700));
    action(&app, &admin, "old", "restart").await;
    let (_, map) = exec_in(&app, &admin, "old", "cat /proc/self/uid_map").await;
    assert_eq!(words(&map), "0 0 4294967295");
    for name in ["old", "priv"] {
        action(&app, &admin, name, "stop").await;
    }
}

#[tokio::test]
async fn isolated_containers_get_id_ranges_of_their_own() {
    use std::os::unix::fs::MetadataExt;
    let ubase = sub_base("/etc/subuid");
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    let isolated = |name: &str| {
        json!({"name": name, "source": {"type": "image", "alias": "busybox"},
               "config": {"security.idmap.isolated": "true"}})
    };
    for name in ["i1", "i2"] {
        let r = create(&app, &admin, isolated(name)).await;
        assert_eq!(r.body["status_code"], 200, "{}", r.text);
    }
    // Each its own block of 65536 after the shared one.
    for (name, block) in [("i1", 1), ("i2", 2)] {
        action(&app, &admin, name, "start").await;
        let (_, map) = exec_in(&app, &admin, name, "cat /proc/self/uid_map").await;
        assert_eq!(
            words(&map),
            format!("0 {} 65536", ubase + block * 65536),
            "{name}"
        );
    }
    let etc = std::fs::metadata(host.lxcpath().join("default_i2/rootfs/etc")).unwrap();
    assert_eq!(etc.uid(), ubase + 2 * 65536);

    // A volume belongs to the first map it is given to; another container
    // map cannot take it.
    let r = app
        .post(
            "/api/v1/storage/pools/default/volumes",
            Some(&admin),
            json!({"name": "mine"}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let attach = |name: &'static str| {
        let app = &app;
        let admin = &admin;
        async move {
            app.post(
                &format!("/api/v1/instances/{name}/volumes"),
                Some(admin),
                json!({"pool": "default", "volume": "mine", "path": "/srv/mine", "device": "mine"}),
            )
            .await
        }
    };
    let r = attach("i1").await;
    assert!(r.status.is_success(), "{}", r.text);
    // Mounted at the next start, through custom/, which now lets the
    // isolated root through too; root inside writes to it.
    action(&app, &admin, "i1", "stop").await;
    action(&app, &admin, "i1", "start").await;
    let (code, out) = exec_in(
        &app,
        &admin,
        "i1",
        "echo iso > /srv/mine/f && stat -c %u /srv/mine/f",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "0\n"));
    let custom = host.data().join("storage/default/custom");
    let on_host = std::fs::metadata(custom.join("default_mine/f")).unwrap();
    assert_eq!(on_host.uid(), ubase + 65536);
    assert_custom_closed(&custom, &[ubase, ubase + 65536]);
    assert!(!nobody_can("stat", &custom.join("default_mine/f")));
    let r = attach("i2").await;
    r.assert_problem(400, "bad_request");
    assert!(r.text.contains("another container id map"), "{}", r.text);

    // Fixed at creation, and meaningless for a privileged container.
    let r = patch(
        &app,
        &admin,
        "/api/v1/instances/i1",
        json!({"config": {"security.idmap.isolated": "false"}}),
    )
    .await;
    r.assert_problem(400, "bad_request");
    let r = create(
        &app,
        &admin,
        json!({"name": "both", "source": {"type": "image", "alias": "busybox"},
               "config": {"security.idmap.isolated": "true", "security.privileged": "true"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);

    // A deleted container's block is given out again.
    action(&app, &admin, "i1", "stop").await;
    let r = app
        .delete("/api/v1/instances/i1/volumes/mine", Some(&admin))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app
        .delete("/api/v1/instances/i1?wait=60", Some(&admin))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let r = create(&app, &admin, isolated("i3")).await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let i3 = app.get("/api/v1/instances/i3", Some(&admin)).await;
    assert_eq!(
        i3.body["config"]["volatile.idmap.base"],
        (ubase + 65536).to_string(),
        "{}",
        i3.text
    );
    action(&app, &admin, "i2", "stop").await;
}

#[tokio::test]
async fn a_host_that_cannot_map_ids_says_why() {
    use std::os::unix::fs::PermissionsExt;
    let host = Host::new();
    // DATA_DIR under a directory the containers' root cannot pass through.
    std::fs::set_permissions(host.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "c1", "source": {"type": "image", "alias": "busybox"}}),
    )
    .await;
    r.assert_problem(501, "not_supported");
    assert!(
        r.text.contains("cannot reach") && r.text.contains("security.privileged=true"),
        "{}",
        r.text
    );
    assert!(!host.lxcpath().join("default_c1").exists());
    let info = app.get("/api/v1/system/info", Some(&admin)).await;
    assert_eq!(
        info.body["features"]["unprivileged_containers"], false,
        "{}",
        info.text
    );
    assert_eq!(info.body["features"]["containers"], true, "{}", info.text);
    let lxc = info.body["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "lxc")
        .unwrap();
    assert!(
        lxc["detail"].as_str().unwrap().contains("cannot reach"),
        "{lxc}"
    );
    // An admin's privileged container still runs there.
    let r = create(
        &app,
        &admin,
        json!({"name": "p1", "source": {"type": "image", "alias": "busybox"},
               "config": {"security.privileged": "true"}, "start": true}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    action(&app, &admin, "p1", "stop").await;
}

/// No image listed and nothing left in the image store or the spool.
pub async fn nothing_stored(host: &Host, app: &TestApp, admin: &str) {
    let list = app.get("/api/v1/images", Some(admin)).await;
    assert_eq!(list.body["total"], 0, "{}", list.text);
    let data = host.data();
    let left: Vec<_> = [data.join("images"), data.join("tmp")]
        .iter()
        .flat_map(|d| files_under(d))
        .collect();
    assert!(left.is_empty(), "left on disk: {left:?}");
}

/// A server of the test's own on 127.0.0.1 serving `app`; its base URL.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

async fn copy_from(app: &TestApp, admin: &str, server: &str) -> Reply {
    app.post(
        "/api/v1/images?wait=60",
        Some(admin),
        json!({"source": {"server": server, "protocol": "simplestreams", "alias": "busybox/test"}}),
    )
    .await
}

#[tokio::test]
async fn image_copy_does_not_follow_a_redirect_to_another_origin() {
    let host = Host::new();
    // The other origin is a good server, itself on the allow list: the
    // redirect is refused for leaving the origin, not for its address.
    let (good, _) = simplestreams_server(None).await;
    let to = good.trim_end_matches('/').to_owned();
    let redirector = serve(axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let to = to.clone();
        async move { axum::response::Redirect::temporary(&format!("{to}{}", uri.path())) }
    }))
    .await;
    let app = host.app_allowing(&[&good, &redirector]).await;
    let admin = app.admin_token().await;

    let r = copy_from(&app, &admin, &redirector).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 400, "{}", r.text);
    assert_eq!(
        r.body["err"],
        format!("could not fetch {redirector}streams/v1/index.json"),
        "{}",
        r.text
    );
    nothing_stored(&host, &app, &admin).await;
    // The same server asked directly works: it was the redirect.
    let r = copy_from(&app, &admin, &good).await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
}

#[tokio::test]
async fn image_servers_on_refused_addresses_are_refused_at_request_time() {
    let host = Host::new();
    let (open, _) = simplestreams_server(None).await;
    let open_port = reqwest::Url::parse(&open).unwrap().port().unwrap();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Another port of 127.0.0.1 is allowed: the entry is host:port.
    let app = host
        .app_allowing(&[&format!("http://127.0.0.1:{closed_port}/")])
        .await;
    let admin = app.admin_token().await;

    // An open and a closed port answer the same, so the error cannot be
    // used to scan the host; neither is ever connected to.
    for server in [
        format!("https://127.0.0.1:{open_port}/"),
        format!("https://127.0.0.1:{}/", closed_port + 1),
        format!("https://[::ffff:127.0.0.1]:{open_port}/"),
        format!("https://localhost:{open_port}/"),
        "https://169.254.169.254/".to_owned(),
        "https://10.0.0.1/".to_owned(),
        "https://[fe80::1]/".to_owned(),
    ] {
        let started = std::time::Instant::now();
        let r = copy_from(&app, &admin, &server).await;
        r.assert_problem(400, "could_not_fetch");
        let detail = r.body["detail"].as_str().unwrap();
        assert!(detail.starts_with("could not fetch https://"), "{}", r.text);
        for leak in ["refused", "connect", "timed out", "127.0.0.1 (", "loopback"] {
            assert!(!detail.contains(leak), "{server}: {}", r.text);
        }
        // Refused before any connection: an unroutable address would
        // otherwise take the 10 s connect timeout.
        assert!(started.elapsed() < Duration::from_secs(3), "{server}");
    }
    // Plain http to a host not on the list is a validation error.
    for server in [
        "http://169.254.169.254/".to_owned(),
        format!("http://127.0.0.1:{open_port}/"),
    ] {
        let r = copy_from(&app, &admin, &server).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["field"], "source.server", "{}", r.text);
    }
    // The listed port passes the check (then fails to connect, as a failed
    // operation that says no more than the check would).
    let listed = format!("http://127.0.0.1:{closed_port}/");
    let r = copy_from(&app, &admin, &listed).await;
    assert_eq!(r.body["status_code"], 400, "{}", r.text);
    assert_eq!(
        r.body["err"],
        format!("could not fetch {listed}streams/v1/index.json"),
        "{}",
        r.text
    );
    nothing_stored(&host, &app, &admin).await;
}

#[tokio::test]
async fn an_oversized_catalogue_fails_the_copy() {
    let host = Host::new();
    let index = json!({"format": "index:1.0", "index": {"images": {
        "datatype": "image-downloads", "path": "streams/v1/images.json", "format": "products:1.0",
        "products": ["busybox:test:amd64:default"]}}});
    // Streamed without a length, so the cap must hold while reading.
    let huge = || {
        let chunks = (0..17).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1 << 20]));
        axum::body::Body::from_stream(futures::stream::iter(chunks))
    };
    let server = serve(
        axum::Router::new()
            .route(
                "/streams/v1/index.json",
                axum::routing::get(move || async move { axum::Json(index) }),
            )
            .route(
                "/streams/v1/images.json",
                axum::routing::get(move || async move { huge() }),
            ),
    )
    .await;
    let app = host.app_allowing(&[&server]).await;
    let admin = app.admin_token().await;
    let r = copy_from(&app, &admin, &server).await;
    assert_eq!(r.body["status_code"], 400, "{}", r.text);
    let err = r.body["err"].as_str().unwrap();
    assert!(
        err.contains("images.json is larger than the 16 MiB allowed for a catalogue"),
        "{}",
        r.text
    );
    nothing_stored(&host, &app, &admin).await;
}

#[tokio::test]
async fn an_oversized_metadata_yaml_is_refused() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    // 2 MiB of YAML comment: a few KiB once compressed.
    let scratch = tempfile::tempdir().unwrap();
    let mut yaml = b"architecture: x86_64\ncreation_date: 1\n".to_vec();
    yaml.extend(std::iter::repeat_n(b"# padding\n".as_slice(), 200_000).flatten());
    std::fs::write(scratch.path().join("metadata.yaml"), &yaml).unwrap();
    let meta = scratch.path().join("meta.tar.xz");
    let ok = Command::new("tar")
        .arg("-cJf")
        .arg(&meta)
        .arg("-C")
        .arg(scratch.path())
        .arg("metadata.yaml")
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(std::fs::metadata(&meta).unwrap().len() < 64 << 10);
    let form = Form::new()
        .part("metadata", Part::file(&meta).await.unwrap())
        .part(
            "rootfs",
            Part::file(env("LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS"))
                .await
                .unwrap(),
        );
    let r = app
        .send(
            app.request(
                reqwest::Method::POST,
                "/api/v1/images/import?wait=60",
                Some(&admin),
            )
            .multipart(form),
        )
        .await;
    let text = r.text.clone();
    assert!(
        text.contains("metadata.yaml is larger than 1 MiB"),
        "{}: {text}",
        r.status
    );
    nothing_stored(&host, &app, &admin).await;
}

/// Recorded exec is bounded: a timeout kills the command inside the
/// container (the operation fails with `timed_out` and the output so far);
/// each stream keeps EXEC_OUTPUT_MAX_BYTES; finished outputs share
/// EXEC_OUTPUT_TOTAL_BYTES, the oldest expiring first; and one user runs at
/// most MAX_RUNNING_OPERATIONS_PER_USER operations at once (429 past it).
#[tokio::test]
async fn recorded_exec_is_bounded() {
    let host = Host::new();
    let app = host
        .app_with(&[
            ("EXEC_OUTPUT_MAX_BYTES", "1000"),
            ("EXEC_OUTPUT_TOTAL_BYTES", "2500"),
            ("MAX_RUNNING_OPERATIONS_PER_USER", "1"),
        ])
        .await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "b1", "source": {"type": "image", "alias": "busybox"}, "start": true}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let exec = |body: Value| app.post("/api/v1/instances/b1/exec?wait=60", Some(&admin), body);

    // Killed at its timeout, inside the container too.
    let started = std::time::Instant::now();
    let r = exec(json!({"command": ["sh", "-c", "echo before; sleep 600"], "timeout": 2})).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.body["status_code"], 400, "{}", r.text);
    assert!(
        r.body["err"].as_str().unwrap().contains("timeout of 2s"),
        "{}",
        r.text
    );
    assert_eq!(r.body["metadata"]["timed_out"], true, "{}", r.text);
    assert_eq!(r.body["metadata"]["stdout"], "before\n", "{}", r.text);
    let (_, ps) = exec_in(&app, &admin, "b1", "ps | grep '[s]leep 600' || echo none").await;
    assert_eq!(ps, "none\n");
    for bad in [json!(0), json!(86401), json!("soon")] {
        let r = exec(json!({"command": ["true"], "timeout": bad})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    }

    // Each stream keeps its first 1000 bytes.
    let r = exec(
        json!({"command": ["sh", "-c", "yes abcd | head -c 5000; yes efgh | head -c 300 >&2"]}),
    )
    .await;
    let first = r.body["id"].as_str().unwrap().to_owned();
    let meta = &r.body["metadata"];
    assert_eq!(meta["stdout"].as_str().unwrap().len(), 1000, "{}", r.text);
    assert!(meta["stdout"].as_str().unwrap().starts_with("abcd\nabcd"));
    assert_eq!(meta["stderr"].as_str().unwrap().len(), 300);
    assert_eq!(meta["truncated"], true);
    assert_eq!(meta["exit_code"], 0);

    // 1300 + 900 held; 1000 more is over 2500: the oldest output goes.
    let r = exec(json!({"command": ["sh", "-c", "yes ijkl | head -c 900"]})).await;
    let second = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["metadata"]["truncated"], false, "{}", r.text);
    let r = exec(json!({"command": ["sh", "-c", "yes mnop | head -c 1000"]})).await;
    assert_eq!(r.body["metadata"]["stdout"].as_str().unwrap().len(), 1000);
    let op = |id: String| {
        let app = &app;
        let admin = &admin;
        async move {
            app.get(&format!("/api/v1/operations/{id}"), Some(admin))
                .await
        }
    };
    let expired = op(first).await;
    assert_eq!(
        expired.body["metadata"]["output_expired"], true,
        "{}",
        expired.text
    );
    assert_eq!(expired.body["metadata"].get("stdout"), None);
    assert_eq!(expired.body["metadata"]["exit_code"], 0);
    let kept = op(second).await;
    assert_eq!(
        kept.body["metadata"]["stdout"].as_str().unwrap().len(),
        900,
        "{}",
        kept.text
    );
    assert_eq!(kept.body["metadata"].get("output_expired"), None);

    // One running operation per user: the second is refused before it starts.
    let slow = app
        .post(
            "/api/v1/instances/b1/exec",
            Some(&admin),
            json!({"command": ["sleep", "600"]}),
        )
        .await;
    assert_eq!(slow.status, StatusCode::ACCEPTED, "{}", slow.text);
    let refused = exec(json!({"command": ["true"]})).await;
    refused.assert_problem(429, "too_many_operations");
    assert_eq!(refused.header("retry-after"), Some("5"));
    let refused = app
        .post("/api/v1/instances/b1/stop?wait=60", Some(&admin), json!({}))
        .await;
    refused.assert_problem(429, "too_many_operations");
    assert_eq!(status(&app, &admin, "b1").await, "Running");
    // A command without a timeout can be cancelled: it is killed (inside
    // the container too) and its slot freed.
    let id = slow.body["operation_id"].as_str().unwrap();
    let r = app
        .delete(&format!("/api/v1/operations/{id}"), Some(&admin))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let wait = slow.body["wait_url"].as_str().unwrap();
    let done = app.get(&format!("{wait}?timeout=30"), Some(&admin)).await;
    assert_eq!(done.body["status_code"], 401, "{}", done.text);
    // Allowed again once it finished (its slot is freed as it does).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = exec(json!({"command": ["true"]})).await;
        if r.status == StatusCode::OK {
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
    let (_, ps) = exec_in(&app, &admin, "b1", "ps | grep '[s]leep 600' || echo none").await;
    assert_eq!(ps, "none\n");
}

/// A finished operation's answer (`?wait=` long enough): 200 and success.
#[track_caller]
fn assert_done(r: &Reply, what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text);
    assert_eq!(r.body["status_code"], 200, "{what}: {}", r.text);
}

#[tokio::test]
async fn volume_snapshots_restores_and_copies_on_dir() {
    let ubase = sub_base("/etc/subuid");
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    let op = app.user_with_role(&admin, "op", Some("operator")).await;
    let viewer = app.user_with_role(&admin, "viewer", Some("viewer")).await;
    import_busybox(&app, &admin).await;
    let default_custom = host.data().join("storage/default/custom");
    let fast = host.dir.path().join("fastpool");
    let r = app
        .post(
            "/api/v1/storage/pools",
            Some(&admin),
            json!({"name": "fast", "driver": "dir", "config": {"source": fast.display().to_string()}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let vols = "/api/v1/storage/pools/default/volumes";
    let r = app.post(vols, Some(&op), json!({"name": "data"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // Data written through an unprivileged container, one file owned by
    // an unprivileged user inside it.
    let r = create(
        &app,
        &admin,
        json!({"name": "vs1", "source": {"type": "image", "alias": "busybox"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let r = app
        .post(
            "/api/v1/instances/vs1/volumes",
            Some(&op),
            json!({"pool": "default", "volume": "data", "path": "/srv/data", "device": "data"}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    action(&app, &admin, "vs1", "start").await;
    run_in(
        &app,
        &admin,
        "vs1",
        "echo v1 > /srv/data/file && echo mine > /srv/data/owned && busybox chown 1000:1000 /srv/data/owned",
    )
    .await;
    let on_host = default_custom.join("default_data");
    assert_eq!(owner_mode(&on_host.join("owned")).0, ubase + 1000);

    // Snapshots: viewers may not take them; operators do, named or not.
    let snaps = format!("{vols}/data/snapshots");
    app.post(&snaps, Some(&viewer), json!({"name": "s1"}))
        .await
        .assert_problem(403, "permission_denied");
    let r = app.post(&snaps, Some(&op), json!({"name": "s1"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let wait = app
        .get(
            &format!("{}?timeout=60", r.body["wait_url"].as_str().unwrap()),
            Some(&op),
        )
        .await;
    assert_eq!(wait.body["status_code"], 200, "{}", wait.text);
    app.post(
        &format!("{snaps}?wait=60"),
        Some(&op),
        json!({"name": "s1"}),
    )
    .await
    .assert_problem(409, "conflict");
    let r = app
        .post(&snaps, Some(&op), json!({"name": "bad_name"}))
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "name");
    run_in(&app, &admin, "vs1", "echo v2 > /srv/data/file").await;
    let r = app
        .post(&format!("{snaps}?wait=60"), Some(&op), json!({}))
        .await;
    assert_done(&r, "unnamed snapshot");
    let got = app.get(&format!("{snaps}/s1"), Some(&viewer)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["name"], "s1");
    assert_eq!(got.body["content_type"], "filesystem");
    assert_eq!(got.body["expires_at"], "0001-01-01T00:00:00Z");
    assert!(got.body["created_at"].as_str().unwrap().starts_with("20"));
    let list = app
        .get(&format!("{snaps}?expand=false"), Some(&viewer))
        .await;
    assert_eq!(list.body["items"], json!(["s1", "snap0"]), "{}", list.text);
    let list = app.get(&snaps, Some(&viewer)).await;
    assert_eq!(list.body["total"], 2);
    assert_eq!(list.body["items"][1]["name"], "snap0");
    // Kept where no container reaches: root's, closed.
    let snap_root = host.data().join("storage/default/custom-snapshots");
    assert_eq!(owner_mode(&snap_root), (0, 0o700));
    assert_eq!(owner_mode(&snap_root.join("default_data")), (0, 0o700));
    assert_eq!(
        std::fs::read_to_string(snap_root.join("default_data/s1/file")).unwrap(),
        "v1\n"
    );
    assert_eq!(
        owner_mode(&snap_root.join("default_data/s1/owned")).0,
        ubase + 1000,
        "the copy keeps the mapped owners"
    );

    // Restore: not under a running container; stopped, the data goes back.
    let restore = format!("{snaps}/s1/restore?wait=60");
    app.post(&restore, Some(&op), json!({}))
        .await
        .assert_problem(409, "conflict");
    action(&app, &admin, "vs1", "stop").await;
    app.post(&restore, Some(&viewer), json!({}))
        .await
        .assert_problem(403, "permission_denied");
    app.post(&format!("{snaps}/nosuch/restore"), Some(&op), json!({}))
        .await
        .assert_problem(404, "volume_snapshot_not_found");
    let r = app
        .send(app.request(reqwest::Method::POST, &restore, Some(&op)))
        .await;
    assert_done(&r, "restore");
    action(&app, &admin, "vs1", "start").await;
    assert_eq!(
        run_in(&app, &admin, "vs1", "cat /srv/data/file").await,
        "v1\n"
    );
    assert_eq!(
        run_in(&app, &admin, "vs1", "busybox stat -c %u /srv/data/owned").await,
        "1000\n"
    );
    let left: Vec<_> = std::fs::read_dir(&default_custom)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec!["default_data".to_owned()],
        "nothing of the swap left"
    );

    // Copies: of the volume (in use: a filesystem volume may be), across
    // pools; of a snapshot, in the same pool.
    let fast_vols = "/api/v1/storage/pools/fast/volumes";
    let r = app
        .post(
            &format!("{fast_vols}?wait=60"),
            Some(&op),
            json!({"name": "copy1", "source": {"volume": "data", "pool": "default"}}),
        )
        .await;
    assert_done(&r, "copy across pools");
    let copied = fast.join("custom/default_copy1");
    assert_eq!(
        std::fs::read_to_string(copied.join("file")).unwrap(),
        "v1\n"
    );
    assert_eq!(owner_mode(&copied.join("owned")).0, ubase + 1000);
    let got = app.get(&format!("{fast_vols}/copy1"), Some(&viewer)).await;
    assert_eq!(got.body["content_type"], "filesystem", "{}", got.text);
    let r = app
        .post(
            &format!("{vols}?wait=60"),
            Some(&op),
            json!({"name": "fromsnap", "source": {"volume": "data", "snapshot": "snap0"}, "config": {"user.from": "snap0"}}),
        )
        .await;
    assert_done(&r, "copy of a snapshot");
    assert_eq!(
        std::fs::read_to_string(default_custom.join("default_fromsnap/file")).unwrap(),
        "v2\n"
    );
    let got = app.get(&format!("{vols}/fromsnap"), Some(&viewer)).await;
    assert_eq!(got.body["config"], json!({"user.from": "snap0"}));
    // The name is taken; what is missing is named; the content type is the source's.
    app.post(
        &format!("{vols}?wait=60"),
        Some(&op),
        json!({"name": "fromsnap", "source": {"volume": "data"}}),
    )
    .await
    .assert_problem(409, "conflict");
    app.post(
        vols,
        Some(&op),
        json!({"name": "c2", "source": {"volume": "nosuch"}}),
    )
    .await
    .assert_problem(404, "volume_not_found");
    app.post(
        vols,
        Some(&op),
        json!({"name": "c2", "source": {"volume": "data", "snapshot": "nosuch"}}),
    )
    .await
    .assert_problem(404, "volume_snapshot_not_found");
    app.post(
        vols,
        Some(&op),
        json!({"name": "c2", "source": {"volume": "data", "pool": "nosuch"}}),
    )
    .await
    .assert_problem(404, "storage_pool_not_found");
    // Data already where the copy would land (not a volume lxgate knows)
    // is neither overwritten nor removed.
    let stray = default_custom.join("default_c3");
    std::fs::create_dir(&stray).unwrap();
    std::fs::write(stray.join("keep"), "mine").unwrap();
    app.post(
        &format!("{vols}?wait=60"),
        Some(&op),
        json!({"name": "c3", "source": {"volume": "data"}}),
    )
    .await
    .assert_problem(409, "conflict");
    assert_eq!(std::fs::read_to_string(stray.join("keep")).unwrap(), "mine");
    app.get(&format!("{vols}/c3"), Some(&op))
        .await
        .assert_problem(404, "volume_not_found");
    std::fs::remove_dir_all(&stray).unwrap();
    let r = app
        .post(
            vols,
            Some(&op),
            json!({"name": "c2", "content_type": "block", "source": {"volume": "data"}}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "content_type");
    // A copy is a new volume: its config is held to the policy.
    let r = app
        .post(
            vols,
            Some(&op),
            json!({"name": "c2", "source": {"volume": "data"}, "config": {"security.shifted": "true"}}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["field"], "config.security.shifted");

    // Snapshots of a missing volume, a missing snapshot.
    app.get(&format!("{vols}/nosuch/snapshots"), Some(&viewer))
        .await
        .assert_problem(404, "volume_not_found");
    app.get(&format!("{snaps}/nosuch"), Some(&viewer))
        .await
        .assert_problem(404, "volume_snapshot_not_found");

    // Deleting a snapshot; deleting the volume takes the rest.
    let r = app.delete(&format!("{snaps}/s1?wait=60"), Some(&op)).await;
    assert_done(&r, "snapshot delete");
    assert!(!snap_root.join("default_data/s1").exists());
    let list = app
        .get(&format!("{snaps}?expand=false"), Some(&viewer))
        .await;
    assert_eq!(list.body["items"], json!(["snap0"]));
    action(&app, &admin, "vs1", "stop").await;
    let r = app
        .delete("/api/v1/instances/vs1/volumes/data?wait=60", Some(&op))
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = app.delete(&format!("{vols}/data"), Some(&op)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(!snap_root.join("default_data").exists());

    // A block volume: its qcow2 copied, a copy grown on the way.
    let r = app
        .post(
            fast_vols,
            Some(&op),
            json!({"name": "disk", "content_type": "block", "config": {"size": "64MiB"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .post(
            &format!("{fast_vols}/disk/snapshots?wait=60"),
            Some(&op),
            json!({"name": "b1"}),
        )
        .await;
    assert_done(&r, "block snapshot");
    let snap_disk = fast.join("custom-snapshots/default_disk/b1.qcow2");
    assert_eq!(owner_mode(&snap_disk), (0, 0o600));
    let got = app
        .get(&format!("{fast_vols}/disk/snapshots/b1"), Some(&viewer))
        .await;
    assert_eq!(got.body["content_type"], "block");
    assert_eq!(got.body["config"]["size"], "64MiB");
    let r = app
        .post(
            &format!("{fast_vols}?wait=60"),
            Some(&op),
            json!({"name": "bigger", "source": {"volume": "disk", "snapshot": "b1"}, "config": {"size": "128MiB"}}),
        )
        .await;
    assert_done(&r, "block copy");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(fast.join("custom/default_bigger.qcow2"))
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], 128 << 20);
    assert_eq!(
        owner_mode(&fast.join("custom/default_bigger.qcow2")),
        (0, 0o600)
    );
    let r = app
        .post(
            &format!("{fast_vols}?wait=60"),
            Some(&op),
            json!({"name": "smaller", "source": {"volume": "disk"}, "config": {"size": "32MiB"}}),
        )
        .await;
    r.assert_problem(400, "bad_request");
    let r = app
        .post(
            &format!("{fast_vols}/disk/snapshots/b1/restore?wait=60"),
            Some(&op),
            json!({}),
        )
        .await;
    assert_done(&r, "block restore");
}

#[tokio::test]
async fn system_health_and_resources_on_embedded() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    let nobody = app.user_with_role(&admin, "nobody", None).await;
    let op = app.user_with_role(&admin, "op", Some("operator")).await;

    let r = app.get("/api/v1/system/health", Some(&nobody)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "ok");
    assert_eq!(r.body["backend_kind"], "embedded");
    for check in ["database", "backend"] {
        assert_eq!(r.body[check]["status"], "ok", "{}", r.text);
        let ms = r.body[check]["latency_ms"].as_f64().unwrap();
        assert!((0.0..5000.0).contains(&ms), "{check}: {ms}");
        assert!(r.body[check].get("error").is_none());
    }
    app.get("/api/v1/system/health", None)
        .await
        .assert_problem(401, "missing_token");

    app.get("/api/v1/system/resources", Some(&op))
        .await
        .assert_problem(403, "permission_denied");
    let r = app.get("/api/v1/system/resources", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let cpu = &r.body["cpu"];
    assert!(cpu["total"].as_u64().unwrap() >= 1, "{}", r.text);
    assert_eq!(cpu["architecture"], std::env::consts::ARCH);
    assert!(!cpu["sockets"][0]["name"].as_str().unwrap().is_empty());
    let (total, used) = (
        r.body["memory"]["total"].as_u64().unwrap(),
        r.body["memory"]["used"].as_u64().unwrap(),
    );
    assert!(total > 0 && used <= total, "{}", r.text);
    let disks = r.body["storage"]["disks"].as_array().unwrap();
    assert_eq!(r.body["storage"]["total"], disks.len());
    assert!(disks.iter().all(|d| d["size"].as_u64().is_some()));
    let pool = &r.body["storage_pools"][0];
    assert_eq!(pool["name"], "default", "{}", r.text);
    assert_eq!(pool["driver"], "dir");
    let space = &pool["space"];
    assert!(space["total"].as_u64().unwrap() > 0);
    assert!(space["used"].as_u64().unwrap() <= space["total"].as_u64().unwrap());

    // DATA_DIR gone: the backend check fails, 503 with the same body.
    let moved = host.dir.path().join("data-moved");
    std::fs::rename(host.data(), &moved).unwrap();
    let r = app.get("/api/v1/system/health", Some(&nobody)).await;
    std::fs::rename(&moved, host.data()).unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.body["status"], "error");
    assert_eq!(r.body["backend"]["status"], "error");
    assert_eq!(r.body["backend"]["error"], "backend unreachable");
    assert!(
        !r.text.contains(&host.data().display().to_string()),
        "no paths: {}",
        r.text
    );
    let r = app.get("/api/v1/system/health", Some(&nobody)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// `memory.limit_in_bytes` of a running container, read from its cgroup by
/// LXC (bypassing lxgate).
fn memory_limit(host: &Host, ct: &str) -> String {
    let out = Command::new("lxc-cgroup")
        .arg("-P")
        .arg(host.lxcpath())
        .args(["-n", ct, "memory.limit_in_bytes"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn profiles_apply_when_containers_are_created_and_started() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;

    // `default` is every project's: the root disk.
    let list = app.get("/api/v1/profiles", Some(&admin)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.body["total"], 1, "{}", list.text);
    assert_eq!(list.body["items"][0]["name"], "default");
    assert_eq!(list.body["items"][0]["devices"]["root"]["path"], "/");

    let r = app
        .post(
            "/api/v1/profiles",
            Some(&admin),
            json!({"name": "small", "description": "Small",
                   "config": {"limits.memory": "96MiB", "user.tier": "small"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let etag = r.header("etag").expect("an ETag").to_owned();
    // What the drivers do not implement is refused as on an instance.
    app.post(
        "/api/v1/profiles",
        Some(&admin),
        json!({"name": "nest", "config": {"security.nesting": "true"}}),
    )
    .await
    .assert_problem(400, "bad_request");
    app.post(
        "/api/v1/profiles",
        Some(&admin),
        json!({"name": "vol", "devices": {"data": {"type": "disk", "pool": "default",
            "source": "v1", "path": "/data"}}}),
    )
    .await
    .assert_problem(501, "not_supported");
    app.get("/api/v1/profiles/vol", Some(&admin))
        .await
        .assert_problem(404, "profile_not_found");

    // Created and started with its profiles' config under its own.
    let r = create(
        &app,
        &admin,
        json!({"name": "c1", "source": {"type": "image", "alias": "busybox"},
               "profiles": ["default", "small"], "config": {"user.own": "yes"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let i = app.get("/api/v1/instances/c1", Some(&admin)).await;
    assert_eq!(i.body["profiles"], json!(["default", "small"]));
    assert_eq!(i.body["expanded_config"]["limits.memory"], "96MiB");
    assert_eq!(i.body["expanded_config"]["user.own"], "yes");
    assert_eq!(i.body["config"].get("limits.memory"), None, "{}", i.text);
    assert_eq!(i.body["expanded_devices"]["root"]["type"], "disk");
    action(&app, &admin, "c1", "start").await;
    assert_eq!(memory_limit(&host, "default_c1"), "100663296");
    let p = app.get("/api/v1/profiles/small", Some(&admin)).await;
    assert_eq!(
        p.body["used_by"],
        json!(["/1.0/instances/c1"]),
        "{}",
        p.text
    );

    // A change reaches a running container at its next start.
    let stale = app
        .send(
            app.request(reqwest::Method::PUT, "/api/v1/profiles/small", Some(&admin))
                .header("if-match", &etag)
                .json(&json!({"config": {}})),
        )
        .await;
    assert_eq!(stale.status, StatusCode::OK, "{}", stale.text);
    assert_eq!(stale.body["config"], json!({}));
    let r = patch(
        &app,
        &admin,
        "/api/v1/profiles/small",
        json!({"config": {"limits.memory": "64MiB"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let put_again = app
        .send(
            app.request(reqwest::Method::PUT, "/api/v1/profiles/small", Some(&admin))
                .header("if-match", &etag)
                .json(&json!({"config": {}})),
        )
        .await;
    put_again.assert_problem(412, "precondition_failed");
    assert_eq!(memory_limit(&host, "default_c1"), "100663296");
    let i = app.get("/api/v1/instances/c1", Some(&admin)).await;
    assert_eq!(i.body["expanded_config"]["limits.memory"], "64MiB");
    action(&app, &admin, "c1", "restart").await;
    assert_eq!(memory_limit(&host, "default_c1"), "67108864");

    // A change no container using it could run with is refused: its id
    // map is fixed, and it needs a root disk.
    patch(
        &app,
        &admin,
        "/api/v1/profiles/small",
        json!({"config": {"security.privileged": "true"}}),
    )
    .await
    .assert_problem(400, "bad_request");
    let r = app
        .put(
            "/api/v1/profiles/default",
            Some(&admin),
            json!({"description": "none"}),
        )
        .await;
    r.assert_problem(400, "bad_request");
    assert!(
        r.body["detail"].as_str().unwrap().contains("root"),
        "{}",
        r.text
    );
    patch(
        &app,
        &admin,
        "/api/v1/instances/c1",
        json!({"profiles": []}),
    )
    .await
    .assert_problem(400, "bad_request");
    patch(
        &app,
        &admin,
        "/api/v1/instances/c1",
        json!({"profiles": ["default", "nope"]}),
    )
    .await
    .assert_problem(404, "profile_not_found");
    patch(
        &app,
        &admin,
        "/api/v1/instances/c1",
        json!({"profiles": ["default", "default"]}),
    )
    .await
    .assert_problem(400, "invalid_config");

    // In use: not deleted; renamed, the instance follows.
    app.delete("/api/v1/profiles/small", Some(&admin))
        .await
        .assert_problem(409, "conflict");
    let r = app
        .post(
            "/api/v1/profiles/small/rename",
            Some(&admin),
            json!({"name": "tiny"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["used_by"], json!(["/1.0/instances/c1"]));
    let i = app.get("/api/v1/instances/c1", Some(&admin)).await;
    assert_eq!(i.body["profiles"], json!(["default", "tiny"]));
    assert_eq!(i.body["expanded_config"]["limits.memory"], "64MiB");
    app.delete("/api/v1/profiles/default", Some(&admin))
        .await
        .assert_problem(409, "default_profile");
    app.post(
        "/api/v1/profiles/tiny/rename",
        Some(&admin),
        json!({"name": "default"}),
    )
    .await
    .assert_problem(409, "conflict");

    // Taken off the instance (it keeps running as it was), then deleted.
    let r = patch(
        &app,
        &admin,
        "/api/v1/instances/c1",
        json!({"profiles": ["default"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["expanded_config"].get("limits.memory"), None);
    let r = app.delete("/api/v1/profiles/tiny", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);

    // Profiles count towards a project's limits, now and when they change.
    let r = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": "lim", "config": {"limits.memory": "256MiB", "features.images": "false"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .post(
            "/api/v1/profiles?project=lim",
            Some(&admin),
            json!({"name": "mem", "config": {"limits.memory": "128MiB"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = app
        .post(
            "/api/v1/instances?project=lim&wait=60",
            Some(&admin),
            json!({"name": "l1", "source": {"type": "image", "alias": "busybox"},
                   "profiles": ["default", "mem"]}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let st = app.get("/api/v1/projects/lim/state", Some(&admin)).await;
    assert_eq!(
        st.body["resources"]["memory"]["Usage"], 134217728,
        "{}",
        st.text
    );
    let r = patch(
        &app,
        &admin,
        "/api/v1/profiles/mem?project=lim",
        json!({"config": {"limits.memory": "512MiB"}}),
    )
    .await;
    r.assert_problem(400, "bad_request");
    assert!(
        r.body["detail"].as_str().unwrap().contains("limits.memory"),
        "{}",
        r.text
    );
    // A project of the embedded backend keeps profiles of its own.
    app.post(
        "/api/v1/projects",
        Some(&admin),
        json!({"name": "shared", "config": {"features.profiles": "false"}}),
    )
    .await
    .assert_problem(400, "bad_request");

    let r = app
        .post(
            "/api/v1/instances/c1/stop?wait=60",
            Some(&admin),
            json!({"force": true}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
}

/// The host lxgate runs on is the embedded backend's one cluster member:
/// listed, the only `target`, every instance's and operation's location;
/// evacuating it is not supported (nowhere to move instances to).
#[tokio::test]
async fn the_host_is_the_one_cluster_member() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    let operator = app.user_with_role(&admin, "op", Some("operator")).await;
    let me = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .split('.')
        .next()
        .unwrap()
        .to_owned();

    let r = app.get("/api/v1/cluster/members", Some(&operator)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["total"], 1, "{}", r.text);
    let member = &r.body["items"][0];
    assert_eq!(member["server_name"], me.as_str(), "{}", r.text);
    assert_eq!(member["status"], "Online");
    assert_eq!(member["roles"], json!([]));
    let r = app
        .get(&format!("/api/v1/cluster/members/{me}"), Some(&operator))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.get("/api/v1/cluster/members/elsewhere", Some(&operator))
        .await
        .assert_problem(404, "member_not_found");
    for action in ["evacuate", "restore"] {
        let r = app
            .post(
                &format!("/api/v1/cluster/members/{me}/{action}"),
                Some(&admin),
                json!({}),
            )
            .await;
        r.assert_problem(501, "not_supported");
        assert!(
            r.body["detail"].as_str().unwrap().contains("one host"),
            "{}",
            r.text
        );
    }
    let info = app.get("/api/v1/system/info", Some(&operator)).await;
    assert_eq!(info.body["features"]["clustered"], false, "{}", info.text);

    // Volumes: the host is the only target; choosing is an admin's call.
    let r = app
        .post(
            &format!("/api/v1/storage/pools/default/volumes?target={me}"),
            Some(&admin),
            json!({"name": "placed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["location"], me.as_str(), "{}", r.text);
    app.post(
        "/api/v1/storage/pools/default/volumes?target=elsewhere",
        Some(&admin),
        json!({"name": "nowhere"}),
    )
    .await
    .assert_problem(404, "member_not_found");
    app.post(
        &format!("/api/v1/storage/pools/default/volumes?target={me}"),
        Some(&operator),
        json!({"name": "mine"}),
    )
    .await
    .assert_problem(403, "policy_denied");

    // Instances and their operations are located on the host.
    import_busybox(&app, &admin).await;
    let r = app
        .post(
            "/api/v1/instances?target=elsewhere",
            Some(&admin),
            json!({"name": "away", "source": {"type": "image", "alias": "busybox"}}),
        )
        .await;
    r.assert_problem(404, "member_not_found");
    let r = app
        .post(
            &format!("/api/v1/instances?target={me}&wait=60"),
            Some(&admin),
            json!({"name": "here", "source": {"type": "image", "alias": "busybox"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(r.body["location"], me.as_str(), "{}", r.text);
    let r = app.get("/api/v1/instances/here", Some(&operator)).await;
    assert_eq!(r.body["location"], me.as_str(), "{}", r.text);
    let r = app
        .delete("/api/v1/instances/here?wait=60", Some(&admin))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
}

// ------------------------------------------------------- instance copies ---

/// `exec` in an instance of `project`: its stdout (exit code 0 asserted).
async fn run_in_project(
    app: &TestApp,
    token: &str,
    project: &str,
    name: &str,
    script: &str,
) -> String {
    let r = app
        .post(
            &format!("/api/v1/instances/{name}/exec?project={project}&wait=30"),
            Some(token),
            json!({"command": ["sh", "-c", script]}),
        )
        .await;
    assert_eq!(r.body["metadata"]["exit_code"], 0, "{}", r.text);
    r.body["metadata"]["stdout"].as_str().unwrap().to_owned()
}

/// A state change of an instance of `project`, waited for.
async fn action_in_project(app: &TestApp, token: &str, project: &str, name: &str, what: &str) {
    let r = app
        .put(
            &format!("/api/v1/instances/{name}/state?project={project}&wait=60"),
            Some(token),
            json!({"action": what, "timeout": 10}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{what} {name}: {}", r.text);
}

/// The host owner (uid, gid) of a file of a container's rootfs.
fn host_owner(host: &Host, ct: &str, path: &str) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(host.lxcpath().join(ct).join("rootfs").join(path))
        .unwrap_or_else(|e| panic!("{ct}/{path}: {e}"));
    (m.uid(), m.gid())
}

/// Temporary spools of copies and publishes left in the image store.
fn spools_left(host: &Host) -> Vec<String> {
    std::fs::read_dir(host.data().join("images"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".publishing-"))
                .collect()
        })
        .unwrap_or_default()
}

/// A copy of a container (running, or a snapshot of it) is a container of
/// its own: its files owned as in the source, translated to its own id
/// map (the shared one, another project's, an isolated one), its own host
/// name, no snapshots; the source goes on as it was.
#[tokio::test]
async fn containers_are_copied_with_their_owners_translated() {
    let ubase = sub_base("/etc/subuid");
    let gbase = sub_base("/etc/subgid");
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    let fp = import_busybox(&app, &admin).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "src1", "source": {"type": "image", "alias": "busybox"},
               "config": {"user.note": "from-src"}, "start": true}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    run_in(
        &app,
        &admin,
        "src1",
        "echo hello > /root/f && mkdir -p /home/u && echo mine > /home/u/f && chown -R 1000:1000 /home/u",
    )
    .await;
    let r = app
        .post(
            "/api/v1/instances/src1/snapshots?wait=60",
            Some(&admin),
            json!({"name": "s0"}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    run_in(&app, &admin, "src1", "echo later > /root/f").await;

    // From the running container (frozen while it is read), and from the
    // snapshot; the request's config over the source's.
    let r = create(
        &app,
        &admin,
        json!({"name": "c1", "source": {"type": "copy", "source": "src1"},
               "config": {"user.extra": "1"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(status(&app, &admin, "src1").await, "Running");
    let r = create(
        &app,
        &admin,
        json!({"name": "c2", "source": {"type": "copy", "source": "src1/s0"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let c1 = app.get("/api/v1/instances/c1", Some(&admin)).await;
    assert_eq!(c1.body["status"], "Stopped", "{}", c1.text);
    assert_eq!(c1.body["type"], "container");
    assert_eq!(c1.body["config"]["user.note"], "from-src", "{}", c1.text);
    assert_eq!(c1.body["config"]["user.extra"], "1", "{}", c1.text);
    assert_eq!(c1.body["config"]["volatile.base_image"], fp, "{}", c1.text);
    assert_eq!(c1.body["profiles"], json!(["default"]), "{}", c1.text);
    let snaps = app
        .get("/api/v1/instances/c2/snapshots", Some(&admin))
        .await;
    assert_eq!(
        snaps.body["total"], 0,
        "a copy carries no snapshots: {}",
        snaps.text
    );
    for (name, content) in [("c1", "later\n"), ("c2", "hello\n")] {
        let ct = format!("default_{name}");
        assert_eq!(host_owner(&host, &ct, "root/f"), (ubase, gbase), "{name}");
        assert_eq!(
            host_owner(&host, &ct, "home/u/f"),
            (ubase + 1000, gbase + 1000),
            "{name}"
        );
        action(&app, &admin, name, "start").await;
        assert_eq!(run_in(&app, &admin, name, "cat /root/f").await, content);
        assert_eq!(
            run_in(
                &app,
                &admin,
                name,
                "cat /home/u/f; stat -c %u:%g /root/f /home/u /home/u/f"
            )
            .await,
            "mine\n0:0\n1000:1000\n1000:1000\n",
            "{name}"
        );
        assert_eq!(
            run_in(&app, &admin, name, "hostname").await,
            format!("{name}\n")
        );
        action(&app, &admin, name, "stop").await;
    }
    // The source is as it was, and still works.
    assert_eq!(
        run_in(&app, &admin, "src1", "cat /root/f; hostname").await,
        "later\nsrc1\n"
    );
    let snaps = app
        .get("/api/v1/instances/src1/snapshots", Some(&admin))
        .await;
    assert_eq!(snaps.body["total"], 1, "{}", snaps.text);
    assert!(spools_left(&host).is_empty(), "{:?}", spools_left(&host));

    // Into another project, by an operator of both.
    let r = app
        .post("/api/v1/projects", Some(&admin), json!({"name": "other"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let operator = app.user_with_role(&admin, "copier", None).await;
    app.grant(&admin, "copier", "default", "operator").await;
    app.grant(&admin, "copier", "other", "operator").await;
    let r = app
        .post(
            "/api/v1/instances?project=other&wait=60",
            Some(&operator),
            json!({"name": "c3", "source": {"type": "copy", "source": "src1/s0", "project": "default"}}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(
        host_owner(&host, "other_c3", "home/u/f"),
        (ubase + 1000, gbase + 1000)
    );
    action_in_project(&app, &operator, "other", "c3", "start").await;
    assert_eq!(
        run_in_project(
            &app,
            &operator,
            "other",
            "c3",
            "stat -c %u:%g /root/f /home/u/f; hostname"
        )
        .await,
        "0:0\n1000:1000\nc3\n"
    );
    action_in_project(&app, &operator, "other", "c3", "stop").await;

    // Into an isolated map: every owner moves to the new block.
    let r = create(
        &app,
        &admin,
        json!({"name": "iso", "source": {"type": "copy", "source": "src1"},
               "config": {"security.idmap.isolated": "true"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(
        host_owner(&host, "default_iso", "home/u/f"),
        (ubase + 65536 + 1000, gbase + 65536 + 1000)
    );
    assert_eq!(
        host_owner(&host, "default_iso", "root/f"),
        (ubase + 65536, gbase + 65536)
    );
    action(&app, &admin, "iso", "start").await;
    assert_eq!(
        words(&run_in(&app, &admin, "iso", "cat /proc/self/uid_map").await),
        format!("0 {} 65536", ubase + 65536)
    );
    assert_eq!(
        run_in(
            &app,
            &admin,
            "iso",
            "stat -c %u:%g /root/f /home/u/f; cat /home/u/f"
        )
        .await,
        "0:0\n1000:1000\nmine\n"
    );
    action(&app, &admin, "iso", "stop").await;
    action(&app, &admin, "src1", "stop").await;
    assert!(spools_left(&host).is_empty(), "{:?}", spools_left(&host));
}

/// What `qemu-io` says about a qcow2 disk (read-only commands, or writes to
/// a stopped VM's disk).
pub fn qemu_io(disk: &Path, command: &str) -> String {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", command])
        .arg(disk)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "qemu-io {command}: {text}");
    text
}

pub fn sha256_file(path: &Path) -> String {
    sha256_hex(&[&std::fs::read(path).unwrap()])
}

/// A stopped VM, or one of its disk snapshots, copied: the copy's disk is
/// its own (an overlay on the same image, holding the source's data as it
/// was), it starts, and the source's disk is not touched.
#[tokio::test]
async fn vms_are_copied_from_a_stopped_vm_and_from_a_snapshot() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    let form = Form::new()
        .part(
            "metadata",
            Part::file(env("LXGATE_TEST_VM_META")).await.unwrap(),
        )
        .part(
            "rootfs.img",
            Part::file(env("LXGATE_TEST_VM_DISK")).await.unwrap(),
        )
        .text("alias", "diskvm");
    let fp = upload_image(&app, &admin, form).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "d1", "type": "virtual-machine", "source": {"type": "image", "alias": "diskvm"},
               "config": {"limits.memory": "128MiB"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let vms = host.data().join("vms");
    let disk = vms.join("default_d1/root.qcow2");
    qemu_io(&disk, "write -P 0x11 0 64k");
    let r = app
        .post(
            "/api/v1/instances/d1/snapshots?wait=60",
            Some(&admin),
            json!({"name": "s0"}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    qemu_io(&disk, "write -P 0x22 0 64k");
    let before = sha256_file(&disk);

    for (name, from) in [("v1", "d1"), ("v2", "d1/s0")] {
        let r = create(
            &app,
            &admin,
            json!({"name": name, "source": {"type": "copy", "source": from}}),
        )
        .await;
        assert_eq!(r.body["status_code"], 200, "{name}: {}", r.text);
    }
    assert_eq!(sha256_file(&disk), before, "the source's disk is unchanged");
    let listed = |disk: &Path| {
        let out = Command::new("qemu-img")
            .args(["snapshot", "-l"])
            .arg(disk)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(listed(&disk).contains("s0"), "{}", listed(&disk));
    for (name, pattern) in [("v1", "0x22"), ("v2", "0x11")] {
        let copy = vms.join(format!("default_{name}/root.qcow2"));
        let read = qemu_io(&copy, &format!("read -P {pattern} 0 64k"));
        assert!(!read.contains("verification failed"), "{name}: {read}");
        assert!(read.contains("read 65536/65536"), "{name}: {read}");
        assert!(!listed(&copy).contains("s0"), "{name}: {}", listed(&copy));
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&copy)
            .output()
            .unwrap();
        let info: Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(
            info["backing-filename"].as_str(),
            Some(
                host.data()
                    .join("images")
                    .join(&fp)
                    .join("rootfs")
                    .to_str()
                    .unwrap()
            ),
            "{name}: an overlay on the image, as create makes: {info}"
        );
        assert_eq!(owner_mode(&copy), (0, 0o600), "{name}");
        let got = app
            .get(&format!("/api/v1/instances/{name}"), Some(&admin))
            .await;
        assert_eq!(got.body["type"], "virtual-machine", "{}", got.text);
        assert_eq!(
            got.body["config"]["limits.memory"], "128MiB",
            "{}",
            got.text
        );
    }
    // Each starts (QEMU answers QMP, running) and stops.
    for name in ["v1", "v2"] {
        action(&app, &admin, name, "start").await;
        assert_eq!(status(&app, &admin, name).await, "Running", "{name}");
        let stop = app
            .put(
                &format!("/api/v1/instances/{name}/state?wait=60"),
                Some(&admin),
                json!({"action": "stop", "force": true}),
            )
            .await;
        assert_eq!(stop.body["status_code"], 200, "{}", stop.text);
    }
    assert_eq!(sha256_file(&disk), before, "the source's disk is unchanged");

    // A running VM's disk is QEMU's: stop it first.
    action(&app, &admin, "d1", "start").await;
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "v3", "source": {"type": "copy", "source": "d1"}}),
        )
        .await;
    r.assert_problem(409, "conflict");
    let r = app
        .put(
            "/api/v1/instances/d1/state?wait=60",
            Some(&admin),
            json!({"action": "stop", "force": true}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert!(!vms.join("default_v3").exists());
}

/// A copy of nothing is 404, onto a name in use 409, and a cancelled one
/// leaves no row, no files and no spool behind.
#[tokio::test]
async fn instance_copies_that_cannot_be_made_leave_nothing_behind() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    for name in ["a1", "a2"] {
        let r = create(
            &app,
            &admin,
            json!({"name": name, "source": {"type": "image", "alias": "busybox"}}),
        )
        .await;
        assert_eq!(r.body["status_code"], 200, "{}", r.text);
    }
    for from in ["nope", "a1/nosnap"] {
        let r = app
            .post(
                "/api/v1/instances?wait=60",
                Some(&admin),
                json!({"name": "x1", "source": {"type": "copy", "source": from}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{from}: {}", r.text);
    }
    for to in ["a1", "a2"] {
        let r = app
            .post(
                "/api/v1/instances?wait=60",
                Some(&admin),
                json!({"name": to, "source": {"type": "copy", "source": "a1"}}),
            )
            .await;
        r.assert_problem(409, "conflict");
    }
    assert!(!host.lxcpath().join("default_x1").exists());

    // A container big enough that copying it takes a moment (128 MiB of
    // incompressible data), cancelled right after the 202; if the copy won
    // the race, again (bounded).
    fill_with_ballast(&app, &admin).await;
    for attempt in 0..5 {
        let name = format!("cx{attempt}");
        let r = app
            .post(
                "/api/v1/instances",
                Some(&admin),
                json!({"name": name, "source": {"type": "copy", "source": "a1"}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let id = r.body["operation_id"].as_str().unwrap().to_owned();
        let c = app
            .delete(&format!("/api/v1/operations/{id}"), Some(&admin))
            .await;
        let done = app
            .get(
                &format!("/api/v1/operations/{id}/wait?timeout=60"),
                Some(&admin),
            )
            .await;
        if c.status.is_success() {
            assert_eq!(done.body["status_code"], 401, "{}", done.text);
            let gone = app
                .get(&format!("/api/v1/instances/{name}"), Some(&admin))
                .await;
            assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text);
            assert!(
                !host.lxcpath().join(format!("default_{name}")).exists(),
                "files of the cancelled copy are left"
            );
            assert!(spools_left(&host).is_empty(), "{:?}", spools_left(&host));
            // The source is whole and free; the name is free again.
            assert_eq!(status(&app, &admin, "a1").await, "Stopped");
            let again = create(
                &app,
                &admin,
                json!({"name": name, "source": {"type": "copy", "source": "a1"}}),
            )
            .await;
            assert_eq!(again.body["status_code"], 200, "{}", again.text);
            assert!(
                host.lxcpath()
                    .join(format!("default_{name}/rootfs/ballast"))
                    .exists()
            );
            return;
        }
        assert_eq!(done.body["status_code"], 200, "{}", done.text);
    }
    panic!("every copy finished before its cancel arrived");
}

/// Fills container `a1` with 128 MiB of incompressible data (started for
/// it, stopped again).
async fn fill_with_ballast(app: &TestApp, admin: &str) {
    action(app, admin, "a1", "start").await;
    run_in(
        app,
        admin,
        "a1",
        "dd if=/dev/urandom of=/ballast bs=1M count=128 2>/dev/null",
    )
    .await;
    action(app, admin, "a1", "stop").await;
}

/// A VM that boots a kernel and initrd (no disk) is copied with them, and
/// the copy boots.
#[tokio::test]
async fn a_kernel_booting_vm_is_copied_and_boots() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    let marker = env("LXGATE_TEST_VM_MARKER");
    import_vm_image(&app, &admin, host.dir.path()).await;
    let r = create(
        &app,
        &admin,
        json!({"name": "k1", "type": "virtual-machine",
               "source": {"type": "image", "alias": "tinyvm"},
               "config": {"limits.memory": "192MiB"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let r = create(
        &app,
        &admin,
        json!({"name": "k2", "source": {"type": "copy", "source": "k1"}}),
    )
    .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let dir = host.data().join("vms/default_k2");
    for f in ["kernel", "initrd", "boot.json"] {
        assert_eq!(owner_mode(&dir.join(f)), (0, 0o600), "{f}");
    }
    // It has no disk, so no disk snapshots to copy from.
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "k3", "source": {"type": "copy", "source": "k1/s0"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    action(&app, &admin, "k2", "start").await;
    let mut console = app
        .ws(&format!("/api/v1/instances/k2/console/ws?token={admin}"))
        .await
        .expect("console opens");
    boot_to_prompt(&mut console, &marker).await;
    drop(console);
    let stop = app
        .put(
            "/api/v1/instances/k2/state?wait=60",
            Some(&admin),
            json!({"action": "stop", "force": true}),
        )
        .await;
    assert_eq!(stop.body["status_code"], 200, "{}", stop.text);
    assert_eq!(status(&app, &admin, "k1").await, "Stopped");
}
