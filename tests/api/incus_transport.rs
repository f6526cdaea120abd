//! The Incus backend's transport against the real private incusd that
//! `make test` runs: unix socket, remote mTLS trusted through a real trust
//! token, and the failures a gateway must report clearly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use reqwest::StatusCode;

use crate::helpers::*;

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with `make test`"))
}

pub fn incus_socket() -> String {
    env("LXGATE_TEST_INCUS_SOCKET")
}

pub fn incus_https() -> String {
    env("LXGATE_TEST_INCUS_HTTPS")
}

/// A fresh trust token from the private incusd.
fn trust_token(name: &str) -> String {
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/incus-test-ctl.sh"
        ))
        .args(["trust-token", name])
        .output()
        .expect("incus-test-ctl.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs `lxgate remote trust` with its identity under `data_dir`.
fn remote_trust(data_dir: &Path, url: &str, token: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lxgate"))
        .args(["remote", "trust", url, token])
        .env_clear()
        .env("DATA_DIR", data_dir)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/unused.db", data_dir.display()),
        )
        .current_dir(data_dir)
        .output()
        .expect("lxgate runs")
}

async fn system_info(app: &TestApp) -> Reply {
    let admin = app.admin_token().await;
    app.get("/api/v1/system/info", Some(&admin)).await
}

#[tokio::test]
async fn local_socket_reports_the_real_server() {
    let socket = incus_socket();
    let app = spawn_app_with(
        Db::Sqlite,
        &[("BACKEND", "incus"), ("INCUS_SOCKET_PATH", &socket)],
    )
    .await;
    let info = system_info(&app).await;
    assert_eq!(info.status, StatusCode::OK, "{}", info.text);
    assert_eq!(info.body["backend"], "incus");
    assert!(
        info.body["server_version"]
            .as_str()
            .unwrap()
            .starts_with("incus 6."),
        "{}",
        info.text
    );
    let lxc = &info.body["drivers"][0];
    assert_eq!(lxc["name"], "lxc");
    assert!(lxc["version"].as_str().unwrap().starts_with("5."));
    assert_eq!(info.body["features"]["containers"], true);
    let ready = app.get("/health/ready", None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    assert_eq!(ready.body["backend"]["status"], "ok");
}

#[tokio::test]
async fn unreachable_socket_is_503_while_health_still_answers() {
    let app = spawn_app_with(
        Db::Sqlite,
        &[
            ("BACKEND", "incus"),
            ("INCUS_SOCKET_PATH", "/nonexistent/incus/unix.socket"),
        ],
    )
    .await;
    system_info(&app)
        .await
        .assert_problem(503, "backend_unavailable");
    let ready = app.get("/health/ready", None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["backend"]["status"], "error");
    assert_eq!(ready.body["database"]["status"], "ok");
    // Nothing about the socket path leaks to clients.
    assert!(!ready.text.contains("nonexistent"));
    assert_eq!(app.get("/health", None).await.status, StatusCode::OK);
}

/// A client identity trusted by the private incusd; removed from its trust
/// store when dropped, so test runs leave nothing behind.
struct Trusted {
    dir: tempfile::TempDir,
}

impl Trusted {
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Trusted {
    fn drop(&mut self) {
        let cert =
            lxgate::backend::incus::tls::read_cert(&self.dir.path().join("incus/client.crt"));
        let Ok(cert) = cert else { return };
        let fp = lxgate::backend::incus::tls::fingerprint(&cert);
        let _ = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-X", "DELETE", "--unix-socket"])
            .arg(incus_socket())
            .arg(format!("http://incus/1.0/certificates/{fp}"))
            .status();
    }
}

/// Trusts a fresh identity with a real token.
fn trusted_identity(name: &str) -> Trusted {
    let dir = tempfile::tempdir().unwrap();
    let out = remote_trust(dir.path(), &incus_https(), &trust_token(name));
    assert!(
        out.status.success(),
        "remote trust failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("server certificate fingerprint"),
        "{stdout}"
    );
    for f in ["client.crt", "client.key", "server.crt"] {
        assert!(dir.path().join("incus").join(f).exists(), "{f} missing");
    }
    Trusted { dir }
}

fn remote_env(identity: &Path) -> Vec<(String, String)> {
    let p = |f: &str| identity.join("incus").join(f).display().to_string();
    vec![
        ("BACKEND".into(), "incus".into()),
        ("INCUS_CONNECTION_MODE".into(), "remote".into()),
        ("INCUS_REMOTE_URL".into(), incus_https()),
        ("INCUS_CLIENT_CERT_PATH".into(), p("client.crt")),
        ("INCUS_CLIENT_KEY_PATH".into(), p("client.key")),
        ("INCUS_SERVER_CERT_PATH".into(), p("server.crt")),
    ]
}

/// The environment `incus_app()` starts lxgate with: the unix socket, or with
/// `LXGATE_TEST_INCUS_MODE=remote` mTLS through one identity per test process,
/// trusted with a real token the first time (and kept, like the test image,
/// for the next run: its directory lives in the target dir).
pub fn suite_env() -> Vec<(String, String)> {
    static IDENTITY: OnceLock<PathBuf> = OnceLock::new();
    match std::env::var("LXGATE_TEST_INCUS_MODE").as_deref() {
        Ok("remote") => remote_env(IDENTITY.get_or_init(suite_identity)),
        Ok("local") | Err(_) => vec![
            ("BACKEND".into(), "incus".into()),
            ("INCUS_SOCKET_PATH".into(), incus_socket()),
        ],
        Ok(other) => panic!("LXGATE_TEST_INCUS_MODE={other}: expected local or remote"),
    }
}

fn suite_identity() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("incus-suite-identity");
    std::fs::create_dir_all(&dir).unwrap();
    if !is_trusted(&dir) {
        let out = remote_trust(&dir, &incus_https(), &trust_token("lxgate-test-suite"));
        assert!(
            out.status.success(),
            "remote trust failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// Whether incusd lists this identity's certificate in its trust store.
fn is_trusted(dir: &Path) -> bool {
    let Ok(cert) = lxgate::backend::incus::tls::read_cert(&dir.join("incus/client.crt")) else {
        return false;
    };
    if !dir.join("incus/server.crt").exists() {
        return false;
    }
    let fp = lxgate::backend::incus::tls::fingerprint(&cert);
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(incus_socket())
        .arg(format!("http://incus/1.0/certificates/{fp}"))
        .output()
        .expect("curl runs");
    out.stdout == b"200"
}

async fn spawn_with(vars: &[(String, String)]) -> TestApp {
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_app_with(Db::Sqlite, &pairs).await
}

#[tokio::test]
async fn remote_mtls_with_a_token_trusted_identity() {
    let identity = trusted_identity("lxgate-test-remote");
    let app = spawn_with(&remote_env(identity.path())).await;
    let info = system_info(&app).await;
    assert_eq!(info.status, StatusCode::OK, "{}", info.text);
    assert_eq!(info.body["backend"], "incus");
    assert_eq!(app.get("/health/ready", None).await.status, StatusCode::OK);

    // Trusting again with a new token is harmless.
    let out = remote_trust(
        identity.path(),
        &incus_https(),
        &trust_token("lxgate-test-again"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_untrusted_client_certificate_is_502_backend_forbidden() {
    // Pin the real server certificate but present an identity Incus never trusted.
    let trusted = trusted_identity("lxgate-test-pin-source");
    let stranger = tempfile::tempdir().unwrap();
    let incus_dir = stranger.path().join("incus");
    std::fs::create_dir_all(&incus_dir).unwrap();
    std::fs::copy(
        trusted.path().join("incus/server.crt"),
        incus_dir.join("server.crt"),
    )
    .unwrap();
    make_self_signed(
        &incus_dir.join("client.crt"),
        &incus_dir.join("client.key"),
        "stranger",
    );
    let app = spawn_with(&remote_env(stranger.path())).await;
    system_info(&app)
        .await
        .assert_problem(502, "backend_forbidden");
}

#[tokio::test]
async fn a_server_certificate_other_than_the_pinned_one_is_refused() {
    let trusted = trusted_identity("lxgate-test-wrong-pin");
    // Replace the pinned server certificate with an unrelated one.
    make_self_signed(
        &trusted.path().join("incus/server.crt"),
        &trusted.path().join("incus/other.key"),
        "impostor",
    );
    let app = spawn_with(&remote_env(trusted.path())).await;
    system_info(&app)
        .await
        .assert_problem(502, "backend_tls_failure");
}

#[tokio::test]
async fn a_tls12_only_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("s.crt"), dir.path().join("s.key"));
    make_self_signed(&cert, &key, "tls12");
    let port = free_port();
    let mut server = tokio::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-tls1_2", "-www", "-accept"])
        .arg(port.to_string())
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl s_server starts");
    wait_for_port(port).await;
    let identity = tempfile::tempdir().unwrap();
    let incus_dir = identity.path().join("incus");
    std::fs::create_dir_all(&incus_dir).unwrap();
    std::fs::copy(&cert, incus_dir.join("server.crt")).unwrap();
    make_self_signed(
        &incus_dir.join("client.crt"),
        &incus_dir.join("client.key"),
        "client",
    );
    let mut vars = remote_env(identity.path());
    vars[2].1 = format!("https://127.0.0.1:{port}");
    let app = spawn_with(&vars).await;
    system_info(&app)
        .await
        .assert_problem(502, "backend_tls_failure");
    let _ = server.kill().await;
}

#[tokio::test]
async fn a_server_that_never_answers_is_504() {
    // Accepts TCP connections and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().take(4) {
            held.push(conn);
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
    });
    let identity = tempfile::tempdir().unwrap();
    let incus_dir = identity.path().join("incus");
    std::fs::create_dir_all(&incus_dir).unwrap();
    make_self_signed(
        &incus_dir.join("server.crt"),
        &incus_dir.join("server.key"),
        "silent",
    );
    make_self_signed(
        &incus_dir.join("client.crt"),
        &incus_dir.join("client.key"),
        "client",
    );
    let mut vars = remote_env(identity.path());
    vars[2].1 = format!("https://127.0.0.1:{port}");
    vars.push(("INCUS_TIMEOUT".into(), "1".into()));
    let app = spawn_with(&vars).await;
    system_info(&app)
        .await
        .assert_problem(504, "backend_timeout");
    drop(holder);
}

fn make_self_signed(cert: &PathBuf, key: &PathBuf, cn: &str) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ])
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={cn}"))
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {port} after 5 s");
}
