//! The `lxgate` binary's shell commands against a real database.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use reqwest::StatusCode;

use crate::helpers::*;

fn lxgate(app: &TestApp, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lxgate"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", &app.config.database_url)
        .env("DATA_DIR", &app.config.data_dir)
        .env("LOG_LEVEL", "warn")
        .current_dir(app.config.data_dir.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lxgate");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn user_commands_manage_accounts_the_api_then_honours() {
    let app = spawn_app(Db::Sqlite).await;

    let out = lxgate(
        &app,
        &["user", "add", "dave", "--role", "operator"],
        Some("dave's long password\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (token, _) = app.login("dave", "dave's long password").await;
    let me = app.get("/api/v1/auth/me", Some(&token)).await;
    assert_eq!(me.body["role"], "operator");

    // A weak password and a duplicate are refused with a clear message.
    let out = lxgate(&app, &["user", "add", "erin"], Some("short\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 12"));
    let out = lxgate(
        &app,
        &["user", "add", "dave"],
        Some("another long password\n"),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    let out = lxgate(&app, &["user", "grant", "dave", "team-a", "admin"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lxgate(&app, &["user", "list"], None);
    let listing = stdout(&out);
    assert!(
        listing.contains("dave") && listing.contains("team-a=admin"),
        "{listing}"
    );

    // passwd and disable end the user's sessions at once.
    let out = lxgate(
        &app,
        &["user", "passwd", "dave"],
        Some("a brand new password\n"),
    );
    assert!(out.status.success());
    app.get("/api/v1/auth/me", Some(&token))
        .await
        .assert_problem(401, "token_revoked");
    let (token, _) = app.login("dave", "a brand new password").await;
    let out = lxgate(&app, &["user", "disable", "dave"], None);
    assert!(out.status.success());
    assert_eq!(
        app.get("/api/v1/auth/me", Some(&token)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let out = lxgate(&app, &["user", "disable", "dave", "--enable"], None);
    assert!(out.status.success());
    app.login("dave", "a brand new password").await;

    let out = lxgate(&app, &["user", "grant", "dave", "../etc", "admin"], None);
    assert!(!out.status.success());
}

#[tokio::test]
async fn serve_refuses_to_start_without_a_jwt_secret_and_names_every_bad_value() {
    let out = Command::new(env!("CARGO_BIN_EXE_lxgate"))
        .arg("serve")
        .env_clear()
        .env("APP_PORT", "notaport")
        .env("BACKEND", "docker")
        .current_dir(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("JWT_SECRET is required"), "{err}");
    assert!(err.contains("APP_PORT"), "{err}");
    assert!(err.contains("BACKEND"), "{err}");
    assert_eq!(err.lines().count(), 3, "{err}");
}

#[tokio::test]
async fn openapi_command_prints_the_document() {
    let out = Command::new(env!("CARGO_BIN_EXE_lxgate"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["paths"]["/api/v1/auth/login"]["post"].is_object());
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lxgate"))
        .arg("serve")
        .env_clear()
        .env("APP_HOST", "127.0.0.1")
        .env("APP_PORT", "0")
        .env("LXGATE_DEV", "1")
        .env("LOG_FORMAT", "json")
        .env("DATA_DIR", dir.path().join("data"))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/data/lxgate.db", dir.path().display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The JSON log line announcing the bound address.
    let addr = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("lxgate listening"))
            {
                return v["addr"].as_str().unwrap().to_owned();
            }
        }
        panic!("lxgate exited before listening");
    })
    .await
    .expect("lxgate starts within 20 s");
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(health.status(), 200);

    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("lxgate stops within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    // JWT secret generated in dev mode, private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("data/jwt_secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// An admin seeded with the example's password in dev mode keeps it when dev
/// mode is switched off: `serve` refuses to start until it is changed, and
/// starts once it is (the stored hash is what is checked).
#[tokio::test]
async fn serve_refuses_an_admin_with_the_example_password_outside_dev_mode() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = format!("sqlite://{}/lxgate.db", data.display());
    let serve = |dev: &str, seed: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lxgate"))
            .arg("serve")
            .env_clear()
            .env("DATABASE_URL", &db)
            .env("DATA_DIR", &data)
            .env("JWT_SECRET", JWT_SECRET)
            .env("LXGATE_DEV", dev)
            .env("SEED_ADMIN_USERNAME", "admin")
            .env("SEED_ADMIN_PASSWORD", seed)
            .env("APP_HOST", "127.0.0.1")
            .env("APP_PORT", "0")
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run lxgate");
        // Started: still running after a moment (then stopped); refused: exited.
        std::thread::sleep(std::time::Duration::from_secs(3));
        match child.try_wait().unwrap() {
            Some(status) => {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                (Some(status), err)
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                (None, String::new())
            }
        }
    };
    let example = "change-me-please-now";
    let (status, err) = serve("1", example);
    assert_eq!(
        status, None,
        "dev mode starts with the example password: {err}"
    );
    let (status, err) = serve("0", "another-sturdy-password");
    assert!(
        status.is_some_and(|s| !s.success()),
        "refused outside dev mode"
    );
    assert!(err.contains("still has the example's password"), "{err}");
    // Changed from the shell: it starts.
    let mut child = Command::new(env!("CARGO_BIN_EXE_lxgate"))
        .args(["user", "passwd", "admin"])
        .env_clear()
        .env("DATABASE_URL", &db)
        .env("DATA_DIR", &data)
        .env("LOG_LEVEL", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"another-sturdy-password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, err) = serve("0", "another-sturdy-password");
    assert_eq!(status, None, "starts once the password changed: {err}");
}
