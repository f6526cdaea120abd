//! `spawn_app()`: the real lxgate on 127.0.0.1:0 with a fresh database
//! (SQLite in a temp dir, or a new PostgreSQL database), talked to over HTTP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use lxgate::Config;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::Executor;
use tokio::sync::oneshot;

pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
pub const JWT_SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";
/// A password that satisfies the policy, for users tests create.
pub const PASSWORD: &str = "a sturdy test passphrase";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub config: Config,
    _dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    /// lxgate runs on a multi-threaded runtime of its own, as in production:
    /// a test blocking its own thread (say, running `incus delete`) must not
    /// stop lxgate from reading Incus's event stream (Incus blocks on slow
    /// event readers).
    runtime: Option<tokio::runtime::Runtime>,
}

/// A fresh, empty PostgreSQL database on the server `make test` started.
async fn postgres_database() -> String {
    let admin_url = std::env::var("LXGATE_TEST_POSTGRES_URL").expect(
        "LXGATE_TEST_POSTGRES_URL is not set: run the tests with `make test`, which starts PostgreSQL",
    );
    sqlx::any::install_default_drivers();
    let name = format!("lxgate_t_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::AnyPool::connect(&admin_url)
        .await
        .expect("connect to the test PostgreSQL server");
    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create a test database");
    pool.close().await;
    let (base, _) = admin_url.rsplit_once('/').expect("URL has a database part");
    format!("{base}/{name}")
}

pub async fn spawn_app(db: Db) -> TestApp {
    spawn_app_with(db, &[]).await
}

/// The settings every test server has (a known admin and JWT secret, rate
/// limits out of the way), then `env` (variable, value) pairs over them.
fn test_settings(env: &[(&str, &str)]) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = [
        ("JWT_SECRET", JWT_SECRET),
        ("SEED_ADMIN_USERNAME", ADMIN),
        ("SEED_ADMIN_PASSWORD", ADMIN_PASSWORD),
        // Generous by default; the rate-limit tests set their own.
        ("AUTH_RATE_LIMIT_PER_MINUTE", "100000"),
        ("AUTH_RATE_LIMIT_BURST", "100000"),
        ("LOGIN_MAX_FAILURES", "1000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in env {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    vars
}

/// Starts lxgate with test defaults, overridden by `env` (variable, value) pairs.
pub async fn spawn_app_with(db: Db, env: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let database_url = match db {
        Db::Sqlite => format!("sqlite://{}/lxgate.db", data_dir.display()),
        Db::Postgres => postgres_database().await,
    };
    let data_dir = data_dir.display().to_string();
    let mut settings = vec![
        ("LOG_LEVEL", "warn"),
        ("DATA_DIR", data_dir.as_str()),
        ("DATABASE_URL", database_url.as_str()),
    ];
    settings.extend_from_slice(env);
    let vars = test_settings(&settings);
    let config = Config::from_lookup(&|k| vars.get(k).cloned()).expect("test config is valid");
    if std::env::var_os("LXGATE_TEST_LOG").is_some() {
        lxgate::telemetry::init(lxgate::config::LogFormat::Pretty, "debug");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for lxgate");
    let (tx, rx) = oneshot::channel::<()>();
    let app_config = config.clone();
    let addr = runtime
        .spawn(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0");
            let addr = listener.local_addr().unwrap();
            let state = lxgate::App::build(app_config)
                .await
                .expect("the app starts");
            tokio::spawn(lxgate::serve_state(listener, state, async {
                let _ = rx.await;
            }));
            addr
        })
        .await
        .expect("lxgate starts");
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        config,
        _dir: dir,
        shutdown: Some(tx),
        runtime: Some(runtime),
    }
}

/// lxgate as its own process (the real binary, `serve`), for tests that
/// kill it: the app's client, and the child to kill. The test settings of
/// `spawn_app_with` plus `env` (which must name `DATA_DIR` and
/// `DATABASE_URL`); it logs to `<DATA_DIR>/../lxgate-<pid>.log`.
pub async fn spawn_process(env: &[(&str, &str)]) -> (TestApp, tokio::process::Child) {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut settings = vec![
        ("LOG_LEVEL", "info"),
        ("LOG_FORMAT", "json"),
        ("APP_HOST", "127.0.0.1"),
        ("APP_PORT", "0"),
    ];
    settings.extend_from_slice(env);
    let vars = test_settings(&settings);
    let config = Config::from_lookup(&|k| vars.get(k).cloned()).expect("test config is valid");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lxgate"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&vars)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("lxgate starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("lxgate's log") {
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("lxgate listening"))
            {
                return v["addr"].as_str().expect("an address").to_owned();
            }
        }
        panic!("lxgate exited before listening");
    })
    .await
    .expect("lxgate listens within 60 s");
    // The rest of its log is kept where a failing test can be read.
    let log_path = std::path::Path::new(&vars["DATA_DIR"])
        .with_file_name(format!("lxgate-{}.log", child.id().unwrap_or_default()));
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let Ok(mut log) = tokio::fs::File::create(log_path).await else {
            return;
        };
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log.write_all(format!("{line}\n").as_bytes()).await;
        }
    });
    let addr: SocketAddr = addr.parse().expect("a socket address");
    let app = TestApp {
        addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        config,
        _dir: tempfile::tempdir().expect("temp dir"),
        shutdown: None,
        runtime: None,
    };
    (app, child)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A response read into status, headers and JSON (or text) body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub async fn read(resp: Response) -> Self {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
            text,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json error with this status and code.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "body: {}",
            self.text
        );
        assert_eq!(self.body["code"], code, "body: {}", self.text);
        assert_eq!(self.body["status"], status);
        assert!(self.body["request_id"].is_string(), "body: {}", self.text);
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let rb = self.client.request(method, self.url(path));
        match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub async fn send(&self, rb: RequestBuilder) -> Reply {
        Reply::read(rb.send().await.expect("request reaches the server")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(self.request(Method::GET, path, token)).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.send(self.request(Method::POST, path, token).json(&body))
            .await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.send(self.request(Method::PUT, path, token).json(&body))
            .await
    }

    /// A PUT that must answer 200.
    pub async fn put_ok(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        let r = self.put(path, token, body).await;
        assert_eq!(r.status, StatusCode::OK, "PUT {path}: {}", r.text);
        r
    }

    /// `GET path` every `every` until `done` takes the answer, for at most
    /// `within` (then fails, showing the last answer); how long it took.
    pub async fn get_until(
        &self,
        path: &str,
        token: Option<&str>,
        (within, every): (Duration, Duration),
        done: impl Fn(&Reply) -> bool,
    ) -> Duration {
        let start = std::time::Instant::now();
        loop {
            let r = self.get(path, token).await;
            if done(&r) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "GET {path} is still not as awaited after {:?}: {} {}",
                start.elapsed(),
                r.status,
                r.text
            );
            tokio::time::sleep(every).await;
        }
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(self.request(Method::DELETE, path, token)).await
    }

    pub async fn login_reply(&self, username: &str, password: &str) -> Reply {
        self.post(
            "/api/v1/auth/login",
            None,
            json!({"username": username, "password": password}),
        )
        .await
    }

    /// Logs in and returns (access token, refresh token).
    pub async fn login(&self, username: &str, password: &str) -> (String, String) {
        let r = self.login_reply(username, password).await;
        assert_eq!(r.status, StatusCode::OK, "login {username}: {}", r.text);
        (
            r.body["access_token"].as_str().unwrap().to_owned(),
            r.body["refresh_token"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN, ADMIN_PASSWORD).await.0
    }

    /// Creates a user with an optional global role and returns its access token.
    pub async fn user_with_role(&self, admin: &str, username: &str, role: Option<&str>) -> String {
        let r = self
            .post(
                "/api/v1/users",
                Some(admin),
                json!({"username": username, "password": PASSWORD, "role": role}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "create {username}: {}",
            r.text
        );
        self.login(username, PASSWORD).await.0
    }

    pub async fn grant(&self, admin: &str, username: &str, project: &str, role: &str) {
        let r = self
            .send(
                self.request(
                    Method::PUT,
                    &format!("/api/v1/users/{username}/projects/{project}"),
                    Some(admin),
                )
                .json(&json!({"role": role})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "grant: {}", r.text);
    }
}

/// Runs a test body once against SQLite and once against PostgreSQL.
#[macro_export]
macro_rules! db_test {
    ($name:ident, |$app:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($app: $crate::helpers::TestApp) $body

            #[tokio::test]
            async fn sqlite() {
                run($crate::helpers::spawn_app($crate::helpers::Db::Sqlite).await).await;
            }

            #[tokio::test]
            async fn postgres() {
                run($crate::helpers::spawn_app($crate::helpers::Db::Postgres).await).await;
            }
        }
    };
}

pub type ClientSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl TestApp {
    /// A ticket for the WebSocket at `path_and_query`: bound to its path
    /// and its `?project=` (if any).
    pub async fn ticket(&self, token: &str, path_and_query: &str) -> String {
        let uri: axum::http::Uri = path_and_query.parse().unwrap();
        let project = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "project")
            .map(|(_, v)| v.into_owned());
        let r = self
            .post(
                "/api/v1/auth/ws-ticket",
                Some(token),
                serde_json::json!({"path": uri.path(), "project": project}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "ticket: {}", r.text);
        r.body["ticket"].as_str().unwrap().to_owned()
    }

    /// Opens the WebSocket at `path_and_query` with a ticket issued for it.
    pub async fn ws_ticketed(
        &self,
        token: &str,
        path_and_query: &str,
    ) -> Result<ClientSocket, tokio_tungstenite::tungstenite::Error> {
        let ticket = self.ticket(token, path_and_query).await;
        let sep = if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        self.ws(&format!("{path_and_query}{sep}ticket={ticket}"))
            .await
    }

    /// Opens a WebSocket to `path_and_query` (which carries its own credentials).
    pub async fn ws(
        &self,
        path_and_query: &str,
    ) -> Result<ClientSocket, tokio_tungstenite::tungstenite::Error> {
        let url = format!("ws://{}{path_and_query}", self.addr);
        tokio_tungstenite::connect_async(url).await.map(|(s, _)| s)
    }
}

/// The HTTP status a refused WebSocket handshake got.
/// The problem `code` of a refused WebSocket handshake, with its status.
pub fn ws_refusal_code(e: tokio_tungstenite::tungstenite::Error) -> (u16, String) {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                    .unwrap_or_default();
            let code = body["code"].as_str().unwrap_or_default().to_owned();
            (resp.status().as_u16(), code)
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

pub fn ws_refusal(e: tokio_tungstenite::tungstenite::Error) -> u16 {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => resp.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}
