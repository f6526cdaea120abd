//! Hostile and malformed input: every case answers a precise problem+json
//! (status and `code`), carries its request id, and never a 500.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lxgate::auth::tokens::{Claims, TokenKeys, now_secs};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::*;

/// `assert_problem` plus: the `x-request-id` header equals the body's `request_id`.
#[track_caller]
fn problem(r: &Reply, status: u16, code: &str) {
    r.assert_problem(status, code);
    let header = r.header("x-request-id").expect("x-request-id header");
    assert_eq!(
        r.body["request_id"], header,
        "request_id in the body and the header differ: {}",
        r.text
    );
}

/// A 401 also says how to authenticate.
#[track_caller]
fn unauthorized(r: &Reply, code: &str) {
    problem(r, 401, code);
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(www.starts_with("Bearer"), "WWW-Authenticate: {www:?}");
}

/// A raw body with an explicit content type.
async fn post_raw(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Reply {
    app.send(
        app.request(Method::POST, path, token)
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

async fn login_raw(app: &TestApp, body: &str) -> Reply {
    post_raw(
        app,
        "/api/v1/auth/login",
        None,
        "application/json",
        body.to_owned(),
    )
    .await
}

async fn sqlite_app() -> TestApp {
    spawn_app(Db::Sqlite).await
}

// ---- request bodies -------------------------------------------------------

#[tokio::test]
async fn malformed_json_is_400_invalid_json() {
    let app = sqlite_app().await;
    for body in [
        r#"{"username": "admin", "password": "#,
        "{username: admin}",
        "{'a': 1}",
    ] {
        let r = login_raw(&app, body).await;
        problem(&r, 400, "invalid_json");
    }
    // An empty body and bytes that are not UTF-8 are not JSON either.
    problem(&login_raw(&app, "").await, 400, "invalid_json");
    let r = post_raw(
        &app,
        "/api/v1/auth/login",
        None,
        "application/json",
        vec![b'{', 0xff, 0xfe, b'}'],
    )
    .await;
    problem(&r, 400, "invalid_json");
}

#[tokio::test]
async fn wrong_type_is_422_naming_the_field() {
    let app = sqlite_app().await;
    let r = login_raw(&app, r#"{"username": "admin", "password": 5}"#).await;
    problem(&r, 422, "validation_failed");
    assert_eq!(r.body["field"], "password", "{}", r.text);
    let r = login_raw(&app, r#"{"username": ["admin"], "password": "x"}"#).await;
    problem(&r, 422, "validation_failed");
    assert_eq!(r.body["field"], "username", "{}", r.text);
    // Not an object at all.
    let r = login_raw(&app, "[1, 2]").await;
    problem(&r, 422, "validation_failed");
}

#[tokio::test]
async fn unknown_field_is_422_naming_it() {
    let app = sqlite_app().await;
    let r = login_raw(
        &app,
        r#"{"username": "admin", "password": "whatever it is", "admin": true}"#,
    )
    .await;
    problem(&r, 422, "validation_failed");
    assert_eq!(r.body["field"], "admin", "{}", r.text);
    // A field given twice is refused too, naming it.
    let r = login_raw(
        &app,
        r#"{"username": "admin", "username": "root", "password": "whatever it is"}"#,
    )
    .await;
    problem(&r, 422, "validation_failed");
    assert_eq!(r.body["field"], "username", "{}", r.text);
}

#[tokio::test]
async fn missing_field_is_422_naming_it() {
    let app = sqlite_app().await;
    let r = login_raw(&app, r#"{"username": "admin"}"#).await;
    problem(&r, 422, "validation_failed");
    assert_eq!(r.body["field"], "password", "{}", r.text);
}

#[tokio::test]
async fn unknown_enum_value_is_422_naming_the_field() {
    let app = sqlite_app().await;
    let admin = app.admin_token().await;
    let r = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": "eve", "password": PASSWORD, "role": "root"}),
        )
        .await;
    problem(&r, 422, "validation_failed");
    assert_eq!(r.body["field"], "role", "{}", r.text);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = spawn_app_with(Db::Sqlite, &[("MAX_BODY_BYTES", "1024")]).await;
    // A normal login still fits.
    app.login(ADMIN, ADMIN_PASSWORD).await;
    let big = format!(
        r#"{{"username": "admin", "password": "{}"}}"#,
        "x".repeat(8 * 1024)
    );
    let r = login_raw(&app, &big).await;
    problem(&r, 413, "payload_too_large");
    // Also without a Content-Length (chunked), so the limit is enforced while reading.
    let (status, head, body) = raw_chunked_post(&app, "/api/v1/auth/login", 8, 512).await;
    assert_eq!(status, 413, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{head}"
    );
    assert!(body.contains("payload_too_large"), "{body}");
}

/// POSTs `chunks` chunks of `size` bytes with `Transfer-Encoding: chunked`
/// over a raw socket (reqwest here has no streaming bodies) and returns the
/// status, the head and the body of the answer.
async fn raw_chunked_post(
    app: &TestApp,
    path: &str,
    chunks: usize,
    size: usize,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            app.addr
        );
        s.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..chunks {
            let chunk = format!("{size:x}\r\n{}\r\n", "y".repeat(size));
            // The server may answer and close before reading everything.
            if s.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let text = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("raw request answered within 10 s");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let app = sqlite_app().await;
    let body = r#"{"username": "admin", "password": "admin-password-for-tests"}"#;
    let r = post_raw(&app, "/api/v1/auth/login", None, "text/plain", body).await;
    problem(&r, 415, "unsupported_media_type");
    // No content type at all.
    let r = app
        .send(
            app.request(Method::POST, "/api/v1/auth/login", None)
                .body(body),
        )
        .await;
    problem(&r, 415, "unsupported_media_type");
}

// ---- tokens ---------------------------------------------------------------

/// The claims of a real access token, to forge variants of it.
fn claims_of(token: &str) -> Claims {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
        .expect("claims")
}

fn keys(issuer: &str, audience: &str) -> TokenKeys {
    TokenKeys::new(
        JWT_SECRET.as_bytes(),
        issuer,
        audience,
        Duration::from_secs(1800),
    )
}

db_test!(bad_tokens_are_401_invalid_token, |app| {
    let (access, refresh) = app.login(ADMIN, ADMIN_PASSWORD).await;
    let me = |t: String| {
        let app = &app;
        async move { app.get("/api/v1/auth/me", Some(&t)).await }
    };
    let real = claims_of(&access);
    let (iss, aud) = (real.iss.clone(), real.aud.clone());

    // Control: a token we sign ourselves with the server's key and the real
    // claims works, so each failure below is due to its one defect.
    let good = keys(&iss, &aud).sign_claims(&real);
    assert_eq!(me(good).await.status, StatusCode::OK);

    let mut cases: Vec<(&str, String)> = vec![
        ("garbage", "garbage".to_owned()),
        ("three garbage segments", "abc.def.ghi".to_owned()),
    ];

    let now = now_secs();
    let mut expired = real.clone();
    expired.iat = now - 3600;
    expired.nbf = now - 3600;
    expired.exp = now - 60; // well past the 5 s leeway
    cases.push(("expired", keys(&iss, &aud).sign_claims(&expired)));

    let mut future = real.clone();
    future.nbf = now + 3600;
    future.exp = now + 7200;
    cases.push(("not yet valid", keys(&iss, &aud).sign_claims(&future)));

    // Tampered: the payload says someone else, the signature is the original.
    let mut parts: Vec<String> = access.split('.').map(str::to_owned).collect();
    let mut forged = real.clone();
    forged.name = "mallory".into();
    forged.tv += 1;
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
    cases.push(("tampered payload", parts.join(".")));

    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = access.split('.').nth(1).unwrap();
    cases.push(("alg none", format!("{none_header}.{payload}.")));
    cases.push((
        "alg none with the original signature",
        format!(
            "{none_header}.{payload}.{}",
            access.split('.').nth(2).unwrap()
        ),
    ));

    cases.push((
        "wrong audience",
        keys(&iss, "someone-else").sign_claims(&Claims {
            aud: "someone-else".into(),
            ..real.clone()
        }),
    ));
    cases.push((
        "wrong issuer",
        keys("evil", &aud).sign_claims(&Claims {
            iss: "evil".into(),
            ..real.clone()
        }),
    ));
    cases.push((
        "wrong key",
        TokenKeys::new(
            b"another-secret-0123456789abcdef0123456789",
            &iss,
            &aud,
            Duration::from_secs(60),
        )
        .sign_claims(&real),
    ));
    cases.push((
        "unknown user",
        keys(&iss, &aud).sign_claims(&Claims {
            sub: "no-such-user-id".into(),
            ..real.clone()
        }),
    ));
    cases.push(("refresh token as access token", refresh.clone()));

    for (what, token) in cases {
        let r = me(token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text);
        unauthorized(&r, "invalid_token");
    }
});

#[tokio::test]
async fn missing_or_non_bearer_credentials_are_401() {
    let app = sqlite_app().await;
    let r = app.get("/api/v1/auth/me", None).await;
    unauthorized(&r, "missing_token");
    let basic = URL_SAFE_NO_PAD.encode(format!("{ADMIN}:{ADMIN_PASSWORD}"));
    for value in [
        format!("Basic {basic}"),
        "Bearer".to_owned(),
        "Bearer    ".to_owned(),
        "Token abc".to_owned(),
    ] {
        let r = app
            .send(
                app.request(Method::GET, "/api/v1/auth/me", None)
                    .header("authorization", &value),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{value}: {}", r.text);
        unauthorized(&r, "invalid_token");
    }
    // A header that is not even text.
    let r = app
        .send(app.request(Method::GET, "/api/v1/auth/me", None).header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        ))
        .await;
    unauthorized(&r, "invalid_token");
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let admin = app.admin_token().await;
    let r = app
        .send(
            app.request(Method::GET, "/api/v1/auth/me", None)
                .header("authorization", format!("bearer {admin}")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

db_test!(disabled_accounts_are_refused, |app| {
    let admin = app.admin_token().await;
    let dora = app.user_with_role(&admin, "dora", Some("viewer")).await;
    let r = app
        .send(
            app.request(Method::PATCH, "/api/v1/users/dora", Some(&admin))
                .json(&json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["disabled"], true);
    let r = app.get("/api/v1/auth/me", Some(&dora)).await;
    unauthorized(&r, "account_disabled");
    let r = app.login_reply("dora", PASSWORD).await;
    problem(&r, 403, "account_disabled");
    // Created disabled: the same.
    let r = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": "dormant", "password": PASSWORD, "disabled": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    problem(
        &app.login_reply("dormant", PASSWORD).await,
        403,
        "account_disabled",
    );
    // A wrong password for a disabled account says nothing about the account.
    problem(
        &app.login_reply("dormant", "not the right password").await,
        401,
        "invalid_credentials",
    );
});

// ---- users ----------------------------------------------------------------

db_test!(duplicate_username_is_409, |app| {
    let admin = app.admin_token().await;
    app.user_with_role(&admin, "twin", None).await;
    let r = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": "twin", "password": PASSWORD}),
        )
        .await;
    problem(&r, 409, "user_exists");
    assert_eq!(r.body["field"], "username");
    let r = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": ADMIN, "password": PASSWORD, "role": "viewer"}),
        )
        .await;
    problem(&r, 409, "user_exists");
});

db_test!(weak_passwords_are_422_with_a_reason, |app| {
    let admin = app.admin_token().await;
    let cases = [
        ("shorty", "short", "at least 12"),
        ("longusername1", "longusername1", "username"),
        ("longusername2", "LONGUSERNAME2", "username"),
        ("repeater", "aaaaaaaaaaaaaaaa", "repeated"),
    ];
    for (username, password, why) in cases {
        let r = app
            .post(
                "/api/v1/users",
                Some(&admin),
                json!({"username": username, "password": password}),
            )
            .await;
        problem(&r, 422, "validation_failed");
        assert_eq!(r.body["field"], "password", "{username}: {}", r.text);
        let detail = r.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(why),
            "{username}: detail {detail:?} should say {why:?}"
        );
        // Nothing was created.
        assert_eq!(
            app.get(&format!("/api/v1/users/{username}"), Some(&admin))
                .await
                .status,
            StatusCode::NOT_FOUND
        );
    }
    // The same policy on an admin password reset.
    app.user_with_role(&admin, "resetme", None).await;
    let r = app
        .send(
            app.request(Method::PATCH, "/api/v1/users/resetme", Some(&admin))
                .json(&json!({"password": "tiny"})),
        )
        .await;
    problem(&r, 422, "validation_failed");
    assert_eq!(r.body["field"], "password");
});

db_test!(invalid_usernames_are_422, |app| {
    let admin = app.admin_token().await;
    let long = "a".repeat(65);
    for name in [
        "bad\u{7}name",
        "tab\tname",
        long.as_str(),
        "-leading",
        "a/b",
        "",
        "spa ce",
        "émile",
    ] {
        let r = app
            .post(
                "/api/v1/users",
                Some(&admin),
                json!({"username": name, "password": PASSWORD}),
            )
            .await;
        problem(&r, 422, "validation_failed");
        assert_eq!(r.body["field"], "username", "{name:?}: {}", r.text);
    }
    // 64 characters is still fine.
    let max = "b".repeat(64);
    let r = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": max, "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // In a path, a bad username is a 400 before any lookup.
    for path in [
        "/api/v1/users/-x",
        "/api/v1/users/bad%20name",
        "/api/v1/users/a%2Fb",
    ] {
        let r = app.get(path, Some(&admin)).await;
        problem(&r, 400, "invalid_name");
    }
});

db_test!(invalid_project_names_in_grant_paths_are_400, |app| {
    let admin = app.admin_token().await;
    app.user_with_role(&admin, "granted", None).await;
    for project in [
        "bad_name",
        "-x",
        "x-",
        "1abc",
        "a.b",
        "a%2Fb",
        "a%20b",
        // ("..": the client normalises it away before it is sent.)
        &"p".repeat(64),
    ] {
        let path = format!("/api/v1/users/granted/projects/{project}");
        let r = app
            .send(
                app.request(Method::PUT, &path, Some(&admin))
                    .json(&json!({"role": "viewer"})),
            )
            .await;
        problem(&r, 400, "invalid_name");
        let r = app
            .send(app.request(Method::DELETE, &path, Some(&admin)))
            .await;
        problem(&r, 400, "invalid_name");
    }
    let u = app.get("/api/v1/users/granted", Some(&admin)).await;
    assert_eq!(u.body["projects"], json!([]), "no grant was stored");
});

db_test!(invalid_pagination_is_400_invalid_query, |app| {
    let admin = app.admin_token().await;
    for list in ["/api/v1/users", "/api/v1/audit"] {
        for query in [
            "limit=0",
            "limit=5000",
            "limit=-1",
            "offset=-1",
            "limit=abc",
            "offset=1.5",
            "bogus=1",
            "limit=1&limit=2",
            "limit=99999999999999999999",
        ] {
            let r = app.get(&format!("{list}?{query}"), Some(&admin)).await;
            problem(&r, 400, "invalid_query");
        }
        // The edges are fine.
        for query in ["limit=1", "limit=1000", "offset=0", "limit=10&offset=5"] {
            let r = app.get(&format!("{list}?{query}"), Some(&admin)).await;
            assert_eq!(r.status, StatusCode::OK, "{list}?{query}: {}", r.text);
        }
    }
});

// ---- routing and request ids ---------------------------------------------

#[tokio::test]
async fn unknown_route_is_404_route_not_found() {
    let app = sqlite_app().await;
    let admin = app.admin_token().await;
    for path in [
        "/nope",
        "/api/v1/nope",
        "/api/v2/users",
        "/api/v1/users/x/y/z",
    ] {
        problem(&app.get(path, None).await, 404, "route_not_found");
        problem(&app.get(path, Some(&admin)).await, 404, "route_not_found");
    }
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let app = sqlite_app().await;
    let admin = app.admin_token().await;
    for (method, path, allowed) in [
        (Method::DELETE, "/api/v1/auth/login", "POST"),
        (Method::GET, "/api/v1/auth/login", "POST"),
        (Method::POST, "/health", "GET"),
        (Method::PUT, "/api/v1/users", "POST"),
    ] {
        let r = app
            .send(app.request(method.clone(), path, Some(&admin)))
            .await;
        problem(&r, 405, "method_not_allowed");
        // RFC 9110 §15.5.6: a 405 MUST list the allowed methods.
        let allow = r.header("allow").unwrap_or_default();
        assert!(
            allow.contains(allowed),
            "{method} {path}: Allow {allow:?} should contain {allowed}"
        );
    }
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = sqlite_app().await;
    // A usable client id is echoed, on success and on errors (body too).
    let r = app
        .send(
            app.request(Method::GET, "/health", None)
                .header("x-request-id", "my-id-123"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-request-id"), Some("my-id-123"));
    let r = app
        .send(
            app.request(Method::GET, "/api/v1/auth/me", None)
                .header("x-request-id", "my-id-123"),
        )
        .await;
    unauthorized(&r, "missing_token");
    assert_eq!(r.header("x-request-id"), Some("my-id-123"));
    assert_eq!(r.body["request_id"], "my-id-123");

    // A bogus one (spaces, quotes, too long) is replaced by a generated id.
    for bogus in ["has spaces in it", "quote\"d", &"z".repeat(200)] {
        let r = app
            .send(
                app.request(Method::GET, "/api/v1/nope", None)
                    .header("x-request-id", bogus),
            )
            .await;
        problem(&r, 404, "route_not_found");
        let id = r.header("x-request-id").unwrap();
        assert_ne!(id, bogus);
        assert!(!id.is_empty() && !id.contains(' '), "{id:?}");
    }

    // Without one, each response gets its own.
    let a = app.get("/health", None).await;
    let b = app.get("/health", None).await;
    let (a, b) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert_ne!(a, b);
}

/// Every error above, once more in one place: status, code and request id
/// agree, and the body is problem+json (never a bare 500 or an HTML page).
#[tokio::test]
async fn error_responses_always_carry_their_request_id() {
    let app = sqlite_app().await;
    let admin = app.admin_token().await;
    let replies: Vec<(u16, &str, Reply)> = vec![
        (400, "invalid_json", login_raw(&app, "{").await),
        (422, "validation_failed", login_raw(&app, "{}").await),
        (
            401,
            "invalid_credentials",
            app.login_reply(ADMIN, "wrong password here").await,
        ),
        (401, "missing_token", app.get("/api/v1/users", None).await),
        (404, "route_not_found", app.get("/x", None).await),
        (
            404,
            "user_not_found",
            app.get("/api/v1/users/ghost", Some(&admin)).await,
        ),
        (
            405,
            "method_not_allowed",
            app.send(app.request(Method::PATCH, "/health", None)).await,
        ),
        (
            400,
            "invalid_query",
            app.get("/api/v1/users?limit=0", Some(&admin)).await,
        ),
        (
            415,
            "unsupported_media_type",
            post_raw(&app, "/api/v1/auth/login", None, "text/plain", "x").await,
        ),
    ];
    for (status, code, r) in &replies {
        problem(r, *status, code);
        let v: &Value = &r.body;
        assert!(v["type"].as_str().unwrap_or_default().ends_with(code));
        assert!(
            v["title"].is_string() && v["detail"].is_string(),
            "{}",
            r.text
        );
    }
}

/// `30.0` is an integer to JSON Schema (and so to the OpenAPI contract):
/// read as 30, where `30.5` is still refused, and the second reading keeps
/// refusing a key given twice. Through the `Json` extractor (state) and a
/// handler's own optional body (action).
#[tokio::test]
async fn integral_float_is_read_as_the_integer() {
    let app = sqlite_app().await;
    let admin = app.admin_token().await;
    let send = |method: Method, path: &'static str, body: &'static str| {
        let (app, admin) = (&app, &admin);
        async move {
            app.send(
                app.request(method, path, Some(admin))
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await
        }
    };
    for (method, path, ok, fraction, twice) in [
        (
            Method::PUT,
            "/api/v1/instances/nope/state",
            r#"{"action": "stop", "timeout": 30.0}"#,
            r#"{"action": "stop", "timeout": 30.5}"#,
            r#"{"action": "stop", "timeout": 30.0, "force": true, "force": false}"#,
        ),
        (
            Method::POST,
            "/api/v1/instances/nope/stop",
            r#"{"timeout": 30.0}"#,
            r#"{"timeout": 30.5}"#,
            r#"{"timeout": 30.0, "force": true, "force": false}"#,
        ),
    ] {
        // Parsed, so it gets as far as the missing instance.
        problem(
            &send(method.clone(), path, ok).await,
            404,
            "instance_not_found",
        );
        problem(
            &send(method.clone(), path, fraction).await,
            422,
            "validation_failed",
        );
        problem(&send(method, path, twice).await, 422, "validation_failed");
    }
}

/// Every JSON body is an object: serde's derive would read a struct from
/// an array of its fields (`[null, null]` was a valid PATCH on Incus).
/// Through the `Json` extractor (PATCH) and a handler's own optional body
/// (instance action).
#[tokio::test]
async fn json_bodies_must_be_objects() {
    let app = sqlite_app().await;
    let admin = app.admin_token().await;
    for (method, path) in [
        (Method::PATCH, "/api/v1/projects/default"),
        (Method::PATCH, "/api/v1/storage/pools/default"),
        (Method::POST, "/api/v1/instances/nope/stop"),
    ] {
        for body in ["[null, null]", "[]", "null", "3", "\"x\""] {
            let r = app
                .send(
                    app.request(method.clone(), path, Some(&admin))
                        .header("content-type", "application/json")
                        .body(body),
                )
                .await;
            problem(&r, 422, "validation_failed");
        }
    }
}
