//! `/docs` in a real browser: headless Chromium loads the vendored Swagger UI
//! with every host except 127.0.0.1 unresolvable, and the UI must render every
//! operation of `/openapi.json` and its Authorize button. Proves the docs work
//! offline (DESIGN §6) and that the page is not an empty shell.
//!
//! Needs `LXGATE_TEST_CHROMIUM` (set by `scripts/testbed.sh` through `make test`);
//! without it the test fails rather than skips.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Db, TestApp, spawn_app};

/// Upper bound for one Chromium run (it takes 2-5 s here).
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// Every host name and IP literal resolves to nothing, except 127.0.0.1: a page
/// that needs anything from the internet (a CDN script, a web font) breaks.
pub const OFFLINE_RULES: &str = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1";

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

pub fn chromium_path() -> PathBuf {
    let path = std::env::var_os("LXGATE_TEST_CHROMIUM")
        .map(PathBuf::from)
        .expect(
            "LXGATE_TEST_CHROMIUM is not set: run the tests with `make test` \
         (or `bash scripts/testbed.sh && . target/testbed.env`), which installs chromium",
        );
    assert!(
        path.is_file(),
        "LXGATE_TEST_CHROMIUM={} does not exist or is not a file",
        path.display()
    );
    path
}

pub struct BrowserRun {
    /// `--dump-dom` output: the DOM after scripts ran.
    pub dom: String,
    pub stderr: String,
}

/// Runs headless Chromium once on `url` with a fresh profile under `work`,
/// `extra` flags added, and returns the dumped DOM. Bounded by
/// `CHROMIUM_TIMEOUT`; the whole process group is killed if it overruns.
pub async fn chromium(work: &Path, url: &str, extra: &[String]) -> BrowserRun {
    let profile = tempfile::tempdir_in(work).expect("profile dir");
    let mut cmd = tokio::process::Command::new(chromium_path());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(OFFLINE_RULES)
    // Let the page's scripts fetch /openapi.json and render before dumping.
    .arg("--virtual-time-budget=10000")
    .args(extra)
    .arg("--dump-dom")
    .arg(url)
    // Keep Chromium's crash reports and caches out of the real home directory.
    .env("HOME", work)
    .env("XDG_CONFIG_HOME", work.join(".config"))
    .env("XDG_CACHE_HOME", work.join(".cache"))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0)
    .kill_on_drop(true);
    let child = cmd.spawn().expect("start chromium");
    let pid = child.id().expect("chromium has a pid");
    let out = match tokio::time::timeout(CHROMIUM_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.expect("wait for chromium"),
        Err(_) => {
            // Renderer and GPU processes share the group; take them all down.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            panic!("chromium did not finish within {CHROMIUM_TIMEOUT:?} on {url}");
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "chromium exited with {} on {url}; stderr:\n{}",
        out.status,
        tail(&stderr, 3000)
    );
    BrowserRun {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

fn tail(s: &str, n: usize) -> &str {
    &s[s.ceil_char_boundary(s.len().saturating_sub(n))..]
}

/// The page that serves the UI: `/docs` itself, or where it redirects.
async fn docs_page(app: &TestApp) -> String {
    let r = app.get("/docs", None).await;
    if r.status.is_redirection() {
        let to = r.header("location").expect("a redirect has a Location");
        assert_eq!(to, "/docs/", "/docs redirects somewhere unexpected");
        let page = app.get(to, None).await;
        assert_eq!(page.status, StatusCode::OK, "{to}: {}", page.text);
        to.to_owned()
    } else {
        assert_eq!(r.status, StatusCode::OK, "/docs: {}", r.text);
        "/docs".to_owned()
    }
}

/// (method, path, tag, operationId) of every operation in the OpenAPI document.
fn operations(doc: &Value) -> Vec<(String, String, Option<String>, Option<String>)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for method in HTTP_METHODS {
            if let Some(op) = item.get(method) {
                ops.push((
                    method.to_owned(),
                    path.clone(),
                    op["tags"][0].as_str().map(str::to_owned),
                    op["operationId"].as_str().map(str::to_owned),
                ));
            }
        }
    }
    ops
}

fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR",
        "not a PNG file"
    );
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_renders_every_operation_offline() {
    let app = spawn_app(Db::Sqlite).await;
    let work = tempfile::tempdir().expect("temp dir");
    let page = docs_page(&app).await;

    let doc = app.get("/openapi.json", None).await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.text);
    let ops = operations(&doc.body);
    assert!(
        ops.len() >= 15,
        "openapi.json lists only {} operations",
        ops.len()
    );

    let shot = work.path().join("docs.png");
    let run = chromium(
        work.path(),
        &app.url(&page),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000".to_owned(),
        ],
    )
    .await;
    let dom = &run.dom;
    let context = || {
        format!(
            "\n--- DOM (first 3000 bytes) ---\n{}\n--- chromium stderr (tail) ---\n{}",
            &dom[..dom.floor_char_boundary(3000)],
            tail(&run.stderr, 2000)
        )
    };

    // The UI mounted, loaded the spec and shows no load error.
    assert!(
        dom.contains(r#"class="swagger-ui""#),
        "no swagger-ui root{}",
        context()
    );
    assert!(
        !dom.contains("Failed to load API definition"),
        "Swagger UI could not load /openapi.json{}",
        context()
    );
    let title = doc.body["info"]["title"].as_str().expect("info.title");
    assert!(
        dom.contains(&format!(r#"class="title">{title}<"#)),
        "the API title `{title}` is not rendered{}",
        context()
    );
    assert!(
        dom.contains(r#"<button class="btn authorize"#) && dom.contains(">Authorize<"),
        "no Authorize button (bearer security scheme){}",
        context()
    );

    // Every operation is rendered as an opblock, with its path and method.
    let opblocks = dom.matches(r#"class="opblock opblock-"#).count();
    assert!(
        opblocks >= ops.len(),
        "{opblocks} opblocks rendered for {} operations{}",
        ops.len(),
        context()
    );
    for (method, path, tag, operation_id) in &ops {
        assert!(
            dom.contains(&format!(r#"data-path="{path}""#)),
            "{} {path} is not rendered{}",
            method.to_uppercase(),
            context()
        );
        if let (Some(tag), Some(id)) = (tag, operation_id) {
            // `<div class="opblock opblock-post ..." id="operations-auth-login">`
            let at = dom.find(&format!(r#"id="operations-{tag}-{id}""#));
            let element = at.map(|i| &dom[dom[..i].rfind('<').unwrap_or(0)..i]);
            assert!(
                element.is_some_and(|e| e.contains(&format!("opblock opblock-{method}"))),
                "operation {id} ({} {path}) is not rendered as a {method} opblock{}",
                method.to_uppercase(),
                context()
            );
        }
    }
    for path in ["/api/v1/auth/login", "/api/v1/users"] {
        assert!(
            ops.iter().any(|(_, p, _, _)| p == path),
            "{path} missing from openapi.json"
        );
    }

    // The screenshot shows the rendered page (an empty 1280x2000 page is a few KB).
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {}: {e}; stderr:\n{}",
            shot.display(),
            tail(&run.stderr, 2000)
        )
    });
    assert_eq!(png_size(&png), (1280, 2000), "screenshot size");
    assert!(
        png.len() > 20 * 1024,
        "screenshot is only {} bytes: the page looks blank",
        png.len()
    );

    // Control: the resolver rules really are in force. `localhost` reaches the
    // very same server, but only 127.0.0.1 is exempt, so this load must fail.
    let blocked = chromium(
        work.path(),
        &format!("http://localhost:{}{page}", app.addr.port()),
        &[],
    )
    .await;
    assert!(
        !blocked.dom.contains("swagger-ui"),
        "--host-resolver-rules did not block `localhost`: the offline proof is void"
    );
    assert!(
        blocked.stderr.contains("ERR_NAME_NOT_RESOLVED"),
        "expected ERR_NAME_NOT_RESOLVED for localhost; stderr:\n{}",
        tail(&blocked.stderr, 2000)
    );
}
