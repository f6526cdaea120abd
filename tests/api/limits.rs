//! Rate limits (per IP, `X-Forwarded-For` only behind trusted proxies),
//! per-username login throttling, metrics, health probes and CORS.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

const WRONG: &str = "definitely not the password";

async fn login_from(app: &TestApp, forwarded_for: Option<&str>, password: &str) -> Reply {
    let mut rb = app
        .request(Method::POST, "/api/v1/auth/login", None)
        .json(&json!({"username": ADMIN, "password": password}));
    if let Some(ip) = forwarded_for {
        rb = rb.header("x-forwarded-for", ip);
    }
    app.send(rb).await
}

/// A 429 as DESIGN §5 wants it: problem+json, `Retry-After` in whole
/// seconds (at least 1) and the same number in the body.
#[track_caller]
fn assert_rate_limited(r: &Reply) -> u64 {
    r.assert_problem(429, "rate_limited");
    let header = r.header("retry-after").expect("Retry-After header");
    let secs: u64 = header
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is not whole seconds: {header:?}"));
    assert!(secs >= 1, "Retry-After {secs}");
    assert_eq!(r.body["retry_after"], secs, "{}", r.text);
    secs
}

#[tokio::test]
async fn auth_rate_limit_refuses_then_recovers() {
    let app = spawn_app_with(
        Db::Sqlite,
        &[
            ("AUTH_RATE_LIMIT_PER_MINUTE", "600"),
            ("AUTH_RATE_LIMIT_BURST", "3"),
        ],
    )
    .await;
    // Four at once, so they all meet the limiter within the 100 ms the
    // bucket takes to refill one cell: the burst of three passes (to a 401,
    // the password is wrong), the fourth is refused before any hashing.
    let (a, b, c, d) = tokio::join!(
        login_from(&app, None, WRONG),
        login_from(&app, None, WRONG),
        login_from(&app, None, WRONG),
        login_from(&app, None, WRONG),
    );
    let replies = [a, b, c, d];
    let passed = replies
        .iter()
        .filter(|r| r.status == StatusCode::UNAUTHORIZED)
        .count();
    let limited: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(
        (passed, limited.len()),
        (3, 1),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in &replies[..] {
        if r.status == StatusCode::UNAUTHORIZED {
            r.assert_problem(401, "invalid_credentials");
        }
    }
    let secs = assert_rate_limited(limited[0]);
    assert!(secs <= 60, "Retry-After {secs} for a 600/min limit");

    // One cell refills every 100 ms: a moment later a login goes through.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    let mut last = None;
    for _ in 0..60 {
        let r = login_from(&app, None, ADMIN_PASSWORD).await;
        if r.status != StatusCode::TOO_MANY_REQUESTS {
            last = Some(r);
            break;
        }
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = last.expect("the limiter recovered within 3 s");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// A bucket of 2 that refills one cell every 10 s: nothing refills during the test.
const SLOW: [(&str, &str); 2] = [
    ("AUTH_RATE_LIMIT_PER_MINUTE", "6"),
    ("AUTH_RATE_LIMIT_BURST", "2"),
];

/// Spends the bucket of `forwarded_for` and checks it is empty.
async fn exhaust(app: &TestApp, forwarded_for: Option<&str>) {
    for _ in 0..2 {
        let r = login_from(app, forwarded_for, WRONG).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    }
    assert_rate_limited(&login_from(app, forwarded_for, WRONG).await);
}

#[tokio::test]
async fn forwarded_for_is_ignored_from_untrusted_peers() {
    let app = spawn_app_with(Db::Sqlite, &SLOW).await;
    exhaust(&app, Some("203.0.113.7")).await;
    // The peer (127.0.0.1) is not a trusted proxy: the header is the
    // client's word only, and changing it does not buy a new bucket.
    for ip in ["203.0.113.8", "198.51.100.1, 203.0.113.9", "::1"] {
        assert_rate_limited(&login_from(&app, Some(ip), ADMIN_PASSWORD).await);
    }
    assert_rate_limited(&login_from(&app, None, ADMIN_PASSWORD).await);
    // The other rate-limited endpoints share the bucket.
    assert_rate_limited(
        &app.post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": "whatever"}),
        )
        .await,
    );
}

#[tokio::test]
async fn forwarded_for_is_honoured_behind_a_trusted_proxy() {
    let mut env = SLOW.to_vec();
    env.push(("TRUSTED_PROXIES", "127.0.0.1"));
    let app = spawn_app_with(Db::Sqlite, &env).await;
    exhaust(&app, Some("203.0.113.7")).await;
    // Another forwarded client has its own bucket.
    let r = login_from(&app, Some("203.0.113.8"), ADMIN_PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // So does the proxy itself (no header), and the nearest untrusted hop
    // counts: a client cannot pick its bucket by prepending addresses.
    let r = login_from(&app, None, ADMIN_PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = login_from(&app, Some("198.51.100.1, 203.0.113.7"), ADMIN_PASSWORD).await;
    assert_rate_limited(&r);
    assert_rate_limited(&login_from(&app, Some("203.0.113.7"), ADMIN_PASSWORD).await);
}

/// User creation, registration and WebSocket tickets share the per-IP limit
/// (DESIGN §5), checked before authentication.
#[tokio::test]
async fn user_creation_and_tickets_are_rate_limited() {
    let mut env = SLOW.to_vec();
    env.push(("TRUSTED_PROXIES", "127.0.0.1"));
    let app = spawn_app_with(Db::Sqlite, &env).await;
    let token = login_from(&app, Some("192.0.2.1"), ADMIN_PASSWORD).await;
    assert_eq!(token.status, StatusCode::OK, "{}", token.text);
    let token = token.body["access_token"].as_str().unwrap().to_owned();
    let from = |method: Method, path: &str, ip: &str| {
        app.request(method, path, Some(&token))
            .header("x-forwarded-for", ip)
    };
    let new_user = |n: u32| json!({"username": format!("flood{n}"), "password": PASSWORD});
    let events_ticket = json!({"path": "/api/v1/events/ws"});

    // Two user creations spend the bucket of 192.0.2.2 ...
    for n in 0..2 {
        let r = app
            .send(from(Method::POST, "/api/v1/users", "192.0.2.2").json(&new_user(n)))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    // ... then every rate-limited endpoint refuses it.
    let r = app
        .send(from(Method::POST, "/api/v1/users", "192.0.2.2").json(&new_user(2)))
        .await;
    assert_rate_limited(&r);
    let r = app
        .send(from(Method::POST, "/api/v1/auth/register", "192.0.2.2").json(&new_user(3)))
        .await;
    assert_rate_limited(&r);
    let r = app
        .send(from(Method::POST, "/api/v1/auth/ws-ticket", "192.0.2.2").json(&events_ticket))
        .await;
    assert_rate_limited(&r);
    // Endpoints without the limit do not care.
    let r = app
        .send(from(Method::GET, "/api/v1/users", "192.0.2.2"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Another client is unaffected.
    let r = app
        .send(from(Method::POST, "/api/v1/auth/ws-ticket", "192.0.2.3").json(&events_ticket))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .send(from(Method::POST, "/api/v1/auth/register", "192.0.2.3").json(&new_user(4)))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn repeated_failures_lock_one_username() {
    let app = spawn_app_with(
        Db::Sqlite,
        &[
            ("LOGIN_MAX_FAILURES", "3"),
            ("LOGIN_LOCKOUT_SECONDS", "60"),
            ("AUTH_RATE_LIMIT_PER_MINUTE", "100000"),
            ("AUTH_RATE_LIMIT_BURST", "100000"),
        ],
    )
    .await;
    let admin = app.admin_token().await;
    app.user_with_role(&admin, "victim", Some("viewer")).await;
    app.user_with_role(&admin, "bystander", Some("viewer"))
        .await;

    for _ in 0..3 {
        app.login_reply("victim", WRONG)
            .await
            .assert_problem(401, "invalid_credentials");
    }
    // Locked: even the right password is refused for a while.
    let r = app.login_reply("victim", PASSWORD).await;
    let secs = assert_rate_limited(&r);
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    // Other users are unaffected, from the same IP.
    assert_eq!(
        app.login_reply("bystander", PASSWORD).await.status,
        StatusCode::OK
    );
    // Unknown usernames are throttled the same way, so a 429 does not
    // reveal that an account exists.
    for _ in 0..3 {
        app.login_reply("ghost", WRONG)
            .await
            .assert_problem(401, "invalid_credentials");
    }
    assert_rate_limited(&app.login_reply("ghost", WRONG).await);

    // The counters show up in /metrics.
    let m = app.get("/metrics", None).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(
        m.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        m.header("content-type")
    );
    let text = &m.text;
    for name in [
        "lxgate_login_failures_total",
        "lxgate_rate_limited_total",
        "http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total{")
            && l.contains("route=\"/api/v1/auth/login\"")
            && l.contains("status=\"429\"")),
        "http_requests_total with a route label missing:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("lxgate_rate_limited_total{") && l.contains("rate_limited")),
        "{text}"
    );
}

#[tokio::test]
async fn health_probes_need_no_auth() {
    let app = spawn_app(Db::Sqlite).await;
    let r = app.get("/health", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})
    );
    // A bad token does not matter on a public probe.
    let r = app.get("/health", Some("garbage")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let r = app.get("/health/ready", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "ready", "{}", r.text);
    assert_eq!(r.body["database"]["status"], "ok", "{}", r.text);
    assert!(r.body["database"]["latency_ms"].is_number(), "{}", r.text);
    assert_eq!(r.body["backend"]["status"], "ok", "{}", r.text);
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    const DASH: &str = "https://dash.example.com";
    let app = spawn_app_with(Db::Sqlite, &[("CORS_ORIGINS", DASH)]).await;
    let preflight = |origin: &str| {
        app.request(Method::OPTIONS, "/api/v1/auth/me", None)
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
    };

    let r = app.send(preflight(DASH)).await;
    assert!(r.status.is_success(), "{} {}", r.status, r.text);
    assert_eq!(r.header("access-control-allow-origin"), Some(DASH));
    let headers = r
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(headers.contains("authorization"), "{headers:?}");
    let methods = r.header("access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("GET"), "{methods:?}");

    let r = app.send(preflight("https://evil.example.com")).await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Not a prefix match either.
    let r = app
        .send(preflight("https://dash.example.com.evil.test"))
        .await;
    assert_eq!(r.header("access-control-allow-origin"), None);

    // An actual request from the dashboard may read the request id.
    let token = app.admin_token().await;
    let r = app
        .send(
            app.request(Method::GET, "/api/v1/auth/me", Some(&token))
                .header("origin", DASH),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("access-control-allow-origin"), Some(DASH));
    let exposed = r
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(exposed.contains("x-request-id"), "{exposed:?}");
}

/// Failed logins lock one username *from one address*: the attacker's IP is
/// locked out, the real user logs in from another; the lockout is in the
/// database, so a second replica on the same PostgreSQL holds it too; each
/// further failure after a lockout doubles the wait.
#[tokio::test]
async fn lockouts_are_per_address_shared_by_replicas_and_grow() {
    let env = [
        ("LOGIN_MAX_FAILURES", "3"),
        ("LOGIN_LOCKOUT_SECONDS", "2"),
        ("TRUSTED_PROXIES", "127.0.0.1/32"),
    ];
    let a = spawn_app_with(Db::Postgres, &env).await;
    let url = a.config.database_url.clone();
    let mut with_url = env.to_vec();
    with_url.push(("DATABASE_URL", &url));
    let b = spawn_app_with(Db::Postgres, &with_url).await;
    let attacker = Some("203.0.113.66");
    let user = Some("198.51.100.7");
    for _ in 0..3 {
        login_from(&a, attacker, WRONG)
            .await
            .assert_problem(401, "invalid_credentials");
    }
    // Locked for the attacker's address, on both replicas.
    let first = assert_rate_limited(&login_from(&a, attacker, ADMIN_PASSWORD).await);
    assert!((1..=2).contains(&first), "Retry-After {first}");
    assert_rate_limited(&login_from(&b, attacker, ADMIN_PASSWORD).await);
    // The admin, from elsewhere, is not locked out.
    let r = login_from(&b, user, ADMIN_PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Once the lock ends, one more failure locks it again, for longer.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    login_from(&b, attacker, WRONG)
        .await
        .assert_problem(401, "invalid_credentials");
    let second = assert_rate_limited(&login_from(&a, attacker, WRONG).await);
    assert!(
        second >= 3,
        "the second lockout grew: {second}s after {first}s"
    );
}

/// `PUT /auth/me/password` is no password oracle: wrong current passwords
/// are throttled like failed logins.
#[tokio::test]
async fn password_change_is_throttled_like_login() {
    let app = spawn_app_with(
        Db::Sqlite,
        &[("LOGIN_MAX_FAILURES", "3"), ("LOGIN_LOCKOUT_SECONDS", "60")],
    )
    .await;
    let admin = app.admin_token().await;
    let change = |current: &str| {
        app.request(Method::PUT, "/api/v1/auth/me/password", Some(&admin))
            .json(&json!({"current_password": current, "new_password": "a brand new passphrase"}))
    };
    for _ in 0..3 {
        let r = app.send(change(WRONG)).await;
        r.assert_problem(403, "wrong_password");
    }
    // Locked: even the right current password waits.
    assert_rate_limited(&app.send(change(ADMIN_PASSWORD)).await);
}

/// One account may hold only MAX_WEBSOCKETS_PER_USER sockets at once (429
/// past it); a closed socket frees its slot; other accounts are unaffected.
#[tokio::test]
async fn websockets_are_capped_per_user() {
    let app = spawn_app_with(Db::Sqlite, &[("MAX_WEBSOCKETS_PER_USER", "2")]).await;
    let admin = app.admin_token().await;
    let viewer = app.user_with_role(&admin, "watcher", Some("viewer")).await;
    let path = |t: &str| format!("/api/v1/events/ws?token={t}");
    let mut first = app.ws(&path(&viewer)).await.expect("first socket");
    let _second = app.ws(&path(&viewer)).await.expect("second socket");
    let refused = app
        .ws(&path(&viewer))
        .await
        .expect_err("a third is refused");
    assert_eq!(ws_refusal(refused), 429);
    // Somebody else still gets one.
    let _other = app.ws(&path(&admin)).await.expect("another user's socket");
    // Closing one frees its slot (once the server has seen the close).
    first.close(None).await.unwrap();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match app.ws(&path(&viewer)).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(ws_refusal(e), 429);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the slot was not freed: {e}"),
        }
    }
}

#[tokio::test]
async fn minting_tokens_shares_the_login_budget() {
    let app = spawn_app_with(Db::Sqlite, &SLOW).await;
    // The login takes one of the two; the first token the other.
    let admin = app.admin_token().await;
    let mint = || {
        app.post(
            "/api/v1/auth/tokens",
            Some(&admin),
            json!({"name": "burst", "expires_in": 600}),
        )
    };
    let r = mint().await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_rate_limited(&mint().await);
}
