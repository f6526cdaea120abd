//! lxgate killed with SIGKILL (the real binary, its own process) in the
//! middle of an embedded create, delete and snapshot: once it is started
//! again, no instance row is left without its files, no files without a
//! row, no snapshot data without its record, and the names are free again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::embedded::{
    Host, action, env, import_busybox, import_vm_image, serve, sha256_hex, status,
};
use crate::helpers::*;

/// The real lxgate on `host`'s DATA_DIR, allowed to fetch from `servers`.
async fn start(host: &Host, servers: &[&str]) -> (TestApp, tokio::process::Child) {
    let vars = host.settings(servers);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_process(&vars).await
}

async fn kill9(child: &mut tokio::process::Child) {
    // tokio's kill is SIGKILL.
    child.kill().await.expect("SIGKILL lxgate");
}

/// The row's phase straight from the database (`None`: no row).
async fn phase(host: &Host, name: &str) -> Option<String> {
    let url = format!("sqlite://{}/lxgate.db", host.data().display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.expect("the db");
    sqlx::query_scalar(
        "SELECT phase FROM embedded_instances WHERE project = 'default' AND name = $1",
    )
    .bind(name)
    .fetch_optional(&mut db)
    .await
    .expect("a query")
}

/// Waits (up to 30 s) until `ready` holds, checking every few ms.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut ready: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ready().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A simplestreams server whose rootfs download sends its first KiB and
/// then never another byte: a create from it stays in its download.
async fn hanging_server() -> String {
    let meta = std::fs::read(env("LXGATE_TEST_EMBEDDED_IMAGE_META")).unwrap();
    let rootfs = std::fs::read(env("LXGATE_TEST_EMBEDDED_IMAGE_ROOTFS")).unwrap();
    let catalogue = json!({"format": "products:1.0", "datatype": "image-downloads", "products": {
    "busybox:test:amd64:default": {
        "aliases": "busybox/test", "arch": "amd64", "versions": {
            "20261124_00:00": {"items": {
                "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": "images/meta.tar.xz",
                    "sha256": sha256_hex(&[&meta]), "size": meta.len(),
                    "combined_rootxz_sha256": sha256_hex(&[&meta, &rootfs])},
                "root.tar.xz": {"ftype": "root.tar.xz", "path": "images/rootfs.tar.xz",
                    "sha256": sha256_hex(&[&rootfs]), "size": rootfs.len()},
            }}}}}});
    let index = json!({"format": "index:1.0", "index": {"images": {
        "datatype": "image-downloads", "path": "streams/v1/images.json", "format": "products:1.0",
        "products": ["busybox:test:amd64:default"]}}});
    let first = axum::body::Bytes::from(rootfs[..1024].to_vec());
    let app = axum::Router::new()
        .route(
            "/streams/v1/index.json",
            axum::routing::get(move || async move { axum::Json(index) }),
        )
        .route(
            "/streams/v1/images.json",
            axum::routing::get(move || async move { axum::Json(catalogue) }),
        )
        .route(
            "/images/meta.tar.xz",
            axum::routing::get(move || async move { meta }),
        )
        .route(
            "/images/rootfs.tar.xz",
            axum::routing::get(move || async move {
                let stream = futures::stream::iter([Ok::<_, std::io::Error>(first)])
                    .chain(futures::stream::pending());
                axum::body::Body::from_stream(stream)
            }),
        );
    serve(app).await
}

use futures::StreamExt;

/// The owner of a container's rootfs: its root, mapped.
fn rootfs_owner(rootfs: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(rootfs).expect("the rootfs");
    (m.uid(), m.gid())
}

#[tokio::test]
async fn embedded_sigkill_mid_create_delete_and_snapshot_leaves_nothing_half_done() {
    let host = Host::new();
    let server = hanging_server().await;
    let lxc = host.lxcpath();
    let tmp = host.data().join("tmp");

    // 1. A create killed in its download: the row is claimed, the image is
    //    half fetched, no container directory yet.
    let (app, mut lxgate) = start(&host, &[&server]).await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    let r = app
        .post(
            "/api/v1/instances",
            Some(&admin),
            json!({"name": "k1", "source": {"type": "image", "server": server,
                   "protocol": "simplestreams", "alias": "busybox/test"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    until("the create is downloading", || async {
        phase(&host, "k1").await.as_deref() == Some("creating") && !entries(&tmp).is_empty()
    })
    .await;
    kill9(&mut lxgate).await;
    assert_eq!(phase(&host, "k1").await.as_deref(), Some("creating"));

    let (app, mut lxgate) = start(&host, &[&server]).await;
    let admin = app.admin_token().await;
    app.get("/api/v1/instances/k1", Some(&admin))
        .await
        .assert_problem(404, "instance_not_found");
    assert_eq!(phase(&host, "k1").await, None, "the half-made row is gone");
    assert!(!lxc.join("default_k1").exists());
    assert_eq!(
        entries(&tmp),
        Vec::<String>::new(),
        "the download's spool is gone"
    );
    // The name is free again.
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "k1", "source": {"type": "image", "alias": "busybox"}}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);

    // 2. A delete killed while its files go: 60,000 files take a while.
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "d1", "source": {"type": "image", "alias": "busybox"}}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let junk = lxc.join("default_d1/rootfs/junk");
    let made = junk.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir(&made).unwrap();
        for i in 0..60_000 {
            std::fs::write(made.join(format!("f{i}")), b"x").unwrap();
        }
    })
    .await
    .unwrap();
    let r = app.delete("/api/v1/instances/d1", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    until("the delete is removing files", || async {
        phase(&host, "d1").await.as_deref() == Some("deleting")
    })
    .await;
    kill9(&mut lxgate).await;
    assert!(
        lxc.join("default_d1").exists(),
        "the kill came after the delete's files were gone: the test proves nothing"
    );

    let (app, mut lxgate) = start(&host, &[&server]).await;
    let admin = app.admin_token().await;
    app.get("/api/v1/instances/d1", Some(&admin))
        .await
        .assert_problem(404, "instance_not_found");
    assert_eq!(phase(&host, "d1").await, None);
    assert!(!lxc.join("default_d1").exists(), "the delete was finished");

    // 3. A snapshot killed while it copies a running (so frozen) container.
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "n1", "source": {"type": "image", "alias": "busybox"}, "start": true}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let rootfs = lxc.join("default_n1/rootfs");
    let (uid, gid) = rootfs_owner(&rootfs);
    let big = rootfs.join("big");
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        // Written, not sparse: the copy has all of it to move.
        let mut f = std::fs::File::create(&big).unwrap();
        let block = vec![7u8; 1 << 20];
        for _ in 0..768 {
            f.write_all(&block).unwrap();
        }
        std::os::unix::fs::chown(&big, Some(uid), Some(gid)).unwrap();
    })
    .await
    .unwrap();
    let snaps = lxc.join("default_n1/snapshots");
    let r = app
        .post(
            "/api/v1/instances/n1/snapshots",
            Some(&admin),
            json!({"name": "s1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    until("the snapshot is copying", || async {
        snaps.join("s1/rootfs").exists() && host.lxc_state("default", "n1") == "FROZEN"
    })
    .await;
    kill9(&mut lxgate).await;
    assert!(
        !snaps.join("s1.json").exists(),
        "the kill came after the snapshot was made: the test proves nothing"
    );

    let (app, mut lxgate) = start(&host, &[&server]).await;
    let admin = app.admin_token().await;
    let list = app
        .get("/api/v1/instances/n1/snapshots", Some(&admin))
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.body["items"], json!([]), "{}", list.text);
    assert!(!snaps.join("s1").exists(), "the half copy is gone");
    assert_eq!(host.lxc_state("default", "n1"), "RUNNING", "thawed");
    let r = app
        .post(
            "/api/v1/instances/n1/snapshots?wait=120",
            Some(&admin),
            json!({"name": "s1"}),
        )
        .await;
    assert_eq!(
        r.body["status_code"], 200,
        "the name is free again: {}",
        r.text
    );

    // Every row has its files, and every instance directory its row.
    let listed: Vec<String> = app
        .get("/api/v1/instances?expand=false", Some(&admin))
        .await
        .body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v: &Value| v.as_str().unwrap().to_owned())
        .collect();
    let mut dirs: Vec<String> = entries(&lxc)
        .into_iter()
        .filter(|d| PathBuf::from(&lxc).join(d).is_dir())
        .collect();
    dirs.sort();
    let mut want: Vec<String> = listed.iter().map(|n| format!("default_{n}")).collect();
    want.sort();
    assert_eq!(dirs, want);
    kill9(&mut lxgate).await;
}

/// The pid of the LXC monitor of container `ct` under `lxcpath`.
fn lxc_monitor(lxcpath: &Path, ct: &str) -> Option<i32> {
    let want = format!("[lxc monitor] {} {ct}", lxcpath.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: i32 = p.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline);
        text.trim_end_matches('\0')
            .starts_with(&want)
            .then_some(pid)
    })
}

async fn until_status(app: &TestApp, token: &str, name: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = status(app, token, name).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {now}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A container's LXC monitor or a VM's QEMU killed behind lxgate's back:
/// the instance is reported Stopped (the container's processes die with
/// its monitor) and starts again.
#[tokio::test]
async fn embedded_a_killed_lxc_monitor_or_qemu_is_reported_stopped() {
    let host = Host::new();
    let app = host.app().await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "m1", "source": {"type": "image", "alias": "busybox"}, "start": true}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(status(&app, &admin, "m1").await, "Running");
    let monitor = lxc_monitor(&host.lxcpath(), "default_m1").expect("the container's monitor");
    // SAFETY: kill(2) of the monitor process found above.
    assert_eq!(unsafe { libc::kill(monitor, libc::SIGKILL) }, 0);
    until_status(&app, &admin, "m1", "Stopped").await;
    assert_eq!(host.lxc_state("default", "m1"), "STOPPED");
    action(&app, &admin, "m1", "start").await;
    assert_eq!(status(&app, &admin, "m1").await, "Running");

    import_vm_image(&app, &admin, host.dir.path()).await;
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "q1", "type": "virtual-machine", "start": true,
                   "source": {"type": "image", "alias": "tinyvm"},
                   "config": {"limits.memory": "192MiB", "limits.cpu": "1"}}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert_eq!(status(&app, &admin, "q1").await, "Running");
    let pidfile = host.data().join("vms/default_q1/qemu.pid");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("QEMU's pidfile")
        .trim()
        .parse()
        .expect("a pid");
    // SAFETY: kill(2) of the VM's QEMU, by its pidfile.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    until_status(&app, &admin, "q1", "Stopped").await;
    action(&app, &admin, "q1", "start").await;
    assert_eq!(status(&app, &admin, "q1").await, "Running");
    let r = app
        .post(
            "/api/v1/instances/q1/stop?wait=60",
            Some(&admin),
            json!({"force": true}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
}

/// Every file under `dir` with its size, but the SQLite database's own
/// (which grows with every request).
fn files_besides_the_database(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let (path, meta) = (e.path(), e.metadata().unwrap());
            let name = e.file_name().to_string_lossy().into_owned();
            if meta.is_dir() {
                todo.push(path);
            } else if !name.starts_with("lxgate.db") {
                out.push((path.display().to_string(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

/// A tmpfs of `size` mounted on `dir` for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0711")])
            .arg("tmpfs")
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs on {}", dir.display());
        Self(dir.to_owned())
    }

    /// Bytes free.
    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: a valid path and a statvfs to fill, read only when it returned 0.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) }, 0);
        let st = unsafe { st.assume_init() };
        st.f_bavail * st.f_frsize
    }

    /// Fills it until `leave` bytes are free (a file of its own, `filler`).
    fn fill_leaving(&self, leave: u64) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![1u8; 64 << 10];
        while self.free() > leave + block.len() as u64 {
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// DATA_DIR full (a small tmpfs) during an image upload and an instance
/// create: a clear error, and nothing half-written is left.
#[tokio::test]
async fn embedded_a_full_data_dir_is_a_clear_error_and_leaves_nothing_half_written() {
    let host = Host::new();
    let disk = Tmpfs::mount(&host.data(), "96m");
    // The database elsewhere (as with PostgreSQL): what fills DATA_DIR must
    // not be its own writes.
    let db = format!("sqlite://{}/lxgate.db", host.dir.path().display());
    let app = host.app_with(&[("DATABASE_URL", &db)]).await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    let images_before = app.get("/api/v1/images", Some(&admin)).await.body["items"].clone();
    // The unpacked busybox takes about 2 MB; leave 1 MiB (room for the
    // database's own writes, not for the rootfs).
    disk.fill_leaving(1 << 20);
    let kept = files_besides_the_database(&host.data());

    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "full1", "source": {"type": "image", "alias": "busybox"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 400, "{}", r.text);
    let err = r.body["err"].as_str().unwrap_or_default();
    assert!(err.contains("no space left"), "a clear error: {err}");
    app.get("/api/v1/instances/full1", Some(&admin))
        .await
        .assert_problem(404, "instance_not_found");
    assert!(!host.lxcpath().join("default_full1").exists());
    assert_eq!(
        files_besides_the_database(&host.data()),
        kept,
        "what the create wrote is gone"
    );

    // An upload bigger than what is left: 507, nothing spooled is kept.
    let big = host.dir.path().join("big.tar");
    let mut tar = vec![0u8; 4 << 20];
    tar[257..262].copy_from_slice(b"ustar");
    std::fs::write(&big, &tar).unwrap();
    let form = reqwest::multipart::Form::new()
        .part(
            "metadata",
            reqwest::multipart::Part::file(env("LXGATE_TEST_EMBEDDED_IMAGE_META"))
                .await
                .unwrap(),
        )
        .part(
            "rootfs",
            reqwest::multipart::Part::file(&big).await.unwrap(),
        );
    let r = app
        .send(
            app.request(reqwest::Method::POST, "/api/v1/images/import", Some(&admin))
                .multipart(form),
        )
        .await;
    r.assert_problem(507, "insufficient_storage");
    assert_eq!(entries(&host.data().join("tmp")), Vec::<String>::new());
    assert_eq!(
        app.get("/api/v1/images", Some(&admin)).await.body["items"],
        images_before
    );
    assert_eq!(files_besides_the_database(&host.data()), kept);

    // Room again: the same create works.
    std::fs::remove_file(host.data().join("filler")).unwrap();
    let r = app
        .post(
            "/api/v1/instances?wait=60",
            Some(&admin),
            json!({"name": "full1", "source": {"type": "image", "alias": "busybox"}}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    drop(app);
}

/// A rename killed after its row took the new name: once before the
/// directory moved, once after it moved but before the container's config
/// followed (the states a kill leaves, made by hand: the window between
/// two steps is too short to hit). Both are finished at the next start:
/// the container answers, and starts, under its new name only.
#[tokio::test]
async fn embedded_a_rename_killed_half_way_is_finished_at_the_next_start() {
    let host = Host::new();
    let lxc = host.lxcpath();
    let (app, mut lxgate) = start(&host, &[]).await;
    let admin = app.admin_token().await;
    import_busybox(&app, &admin).await;
    for name in ["r1", "r2"] {
        let r = app
            .post(
                "/api/v1/instances?wait=60",
                Some(&admin),
                json!({"name": name, "source": {"type": "image", "alias": "busybox"}}),
            )
            .await;
        assert_eq!(r.body["status_code"], 200, "{}", r.text);
    }
    // Files under the new name that no instance owns are not taken over.
    std::fs::create_dir(lxc.join("default_taken")).unwrap();
    app.post(
        "/api/v1/instances/r1/rename",
        Some(&admin),
        json!({"name": "taken"}),
    )
    .await
    .assert_problem(409, "conflict");
    kill9(&mut lxgate).await;

    let url = format!("sqlite://{}/lxgate.db", host.data().display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.expect("the db");
    for (old, new) in [("r1", "r1-new"), ("r2", "r2-new")] {
        sqlx::query(
            "UPDATE embedded_instances SET name = $2, phase = 'renaming', renamed_from = $1 \
             WHERE project = 'default' AND name = $1",
        )
        .bind(old)
        .bind(new)
        .execute(&mut db)
        .await
        .expect("the row renamed");
    }
    db.close().await.ok();
    std::fs::rename(lxc.join("default_r2"), lxc.join("default_r2-new")).unwrap();

    let (app, mut lxgate) = start(&host, &[]).await;
    let admin = app.admin_token().await;
    for (old, new) in [("r1", "r1-new"), ("r2", "r2-new")] {
        assert_eq!(phase(&host, new).await.as_deref(), Some("ready"), "{new}");
        assert_eq!(phase(&host, old).await, None, "{old}");
        assert!(
            !lxc.join(format!("default_{old}")).exists(),
            "{old}'s files moved"
        );
        let config = std::fs::read_to_string(lxc.join(format!("default_{new}/config"))).unwrap();
        assert!(
            !config.contains(&format!("default_{old}/")),
            "{new}'s config still names the old directory:\n{config}"
        );
        app.get(&format!("/api/v1/instances/{old}"), Some(&admin))
            .await
            .assert_problem(404, "instance_not_found");
        // Its maker is still its maker under the new name.
        let mut db = sqlx::SqliteConnection::connect(&url).await.expect("the db");
        let owner: Option<String> = sqlx::query_scalar(
            "SELECT name FROM instance_owners WHERE project = 'default' AND name = $1",
        )
        .bind(new)
        .fetch_optional(&mut db)
        .await
        .expect("a query");
        db.close().await.ok();
        assert_eq!(owner.as_deref(), Some(new), "the owner record followed");
        let r = action(&app, &admin, new, "start").await;
        assert_eq!(r.body["status_code"], 200, "{}", r.text);
        assert_eq!(status(&app, &admin, new).await, "Running");
        let r = app
            .send(app.request(
                reqwest::Method::DELETE,
                &format!("/api/v1/instances/{new}?force=true&wait=60"),
                Some(&admin),
            ))
            .await;
        assert_eq!(r.body["status_code"], 200, "{}", r.text);
    }
    kill9(&mut lxgate).await;
}
