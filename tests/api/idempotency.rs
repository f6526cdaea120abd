//! `Idempotency-Key` (issue 13, item 6): a retried POST that starts an
//! operation answers the first one's operation reference instead of doing
//! the work twice; another request under the same key is 422; a key still
//! in use is 409. On both databases, and an instance create against the
//! real incusd.

use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::*;
use crate::incus_instances::{Cleanup, incus_app, unique};

async fn post_with_key(app: &TestApp, token: &str, path: &str, key: &str, body: Value) -> Reply {
    app.send(
        app.request(Method::POST, path, Some(token))
            .header("Idempotency-Key", key)
            .json(&body),
    )
    .await
}

async fn pool(app: &TestApp) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(&app.config.database_url)
        .await
        .unwrap()
}

const VOLUMES: &str = "/api/v1/storage/pools/default/volumes";

db_test!(a_retry_with_the_same_key_does_the_work_once, |app| {
    let admin = app.admin_token().await;
    let key = uuid::Uuid::new_v4().to_string();
    let first = post_with_key(&app, &admin, VOLUMES, &key, json!({"name": "idem-v1"})).await;
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = post_with_key(&app, &admin, VOLUMES, &key, json!({"name": "idem-v1"})).await;
    assert_eq!(
        again.header("idempotent-replayed"),
        Some("true"),
        "{}",
        again.text
    );
    match first.status.as_u16() {
        // Made at once (the embedded backend): the same answer again.
        201 => {
            assert_eq!(again.status.as_u16(), 201, "{}", again.text);
            assert_eq!(again.body, first.body);
            assert_eq!(again.header("location"), first.header("location"));
        }
        // An operation: its reference, the work not started again.
        200 | 202 => {
            let op_id = first.body["operation_id"]
                .as_str()
                .or(first.body["id"].as_str())
                .unwrap()
                .to_owned();
            assert_eq!(again.status.as_u16(), 202, "{}", again.text);
            assert_eq!(again.body["operation_id"], op_id.as_str(), "{}", again.text);
            assert_eq!(
                again.header("location"),
                Some(format!("/api/v1/operations/{op_id}").as_str())
            );
            let wait = app
                .get(
                    &format!("/api/v1/operations/{op_id}/wait?timeout=30"),
                    Some(&admin),
                )
                .await;
            assert_eq!(wait.body["status_code"], 200, "{}", wait.text);
        }
        other => panic!("{other}: {}", first.text),
    }
    let vols = app.get(VOLUMES, Some(&admin)).await;
    let named = vols.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] == "idem-v1")
        .count();
    assert_eq!(named, 1, "{}", vols.text);

    // `?wait=` says only how long to wait for the same work: still a retry.
    let waited = post_with_key(
        &app,
        &admin,
        &format!("{VOLUMES}?wait=5"),
        &key,
        json!({"name": "idem-v1"}),
    )
    .await;
    assert_eq!(
        waited.header("idempotent-replayed"),
        Some("true"),
        "{}",
        waited.text
    );
    // Another credential (a personal access token of the same user) does
    // not replay what the login's request got.
    let (secret, _) = crate::tokens::pat(&app, &admin, json!({})).await;
    post_with_key(&app, &secret, VOLUMES, &key, json!({"name": "idem-v1"}))
        .await
        .assert_problem(422, "idempotency_key_reused");
    // Another request under the same key: refused, whatever it is.
    post_with_key(&app, &admin, VOLUMES, &key, json!({"name": "idem-v2"}))
        .await
        .assert_problem(422, "idempotency_key_reused");
    // Keys are per user: another user's same key is its own.
    let other = app
        .user_with_role(&admin, "idem-other", Some("admin"))
        .await;
    let r = post_with_key(&app, &other, VOLUMES, &key, json!({"name": "idem-v3"})).await;
    assert!(matches!(r.status.as_u16(), 200..=202), "{}", r.text);
    assert_ne!(r.header("idempotent-replayed"), Some("true"));

    // A refused request forgets its key: the retry runs (and is refused again).
    let bad = uuid::Uuid::new_v4().to_string();
    for _ in 0..2 {
        let r = post_with_key(&app, &admin, VOLUMES, &bad, json!({"name": "idem-v1"})).await;
        assert_eq!(r.status.as_u16(), 409, "the volume exists: {}", r.text);
        assert_eq!(r.header("idempotent-replayed"), None);
    }

    // While the first request with a key runs, a retry is 409; once its
    // replica is gone for good (the lock passed), a retry takes it over.
    let db = pool(&app).await;
    let (user_id,): (String,) = sqlx::query_as("SELECT id FROM users WHERE username = $1")
        .bind(ADMIN)
        .fetch_one(&db)
        .await
        .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let running = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO idempotency_keys (user_id, idem_key, request_hash, created_at, locked_until) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&user_id)
    .bind(&running)
    // What the request below hashes to (credential, method, path, query,
    // type, body).
    .bind(crate::embedded::sha256_hex(&[
        format!("login\nPOST\n{VOLUMES}\n\napplication/json\n").as_bytes(),
        br#"{"name":"idem-v4"}"#,
    ]))
    .bind(now)
    .bind(now + 600)
    .execute(&db)
    .await
    .unwrap();
    post_with_key(&app, &admin, VOLUMES, &running, json!({"name": "idem-v4"}))
        .await
        .assert_problem(409, "idempotency_key_in_use");
    // A key older than 24 h is forgotten: the same key is new again.
    sqlx::query("UPDATE idempotency_keys SET created_at = $1 WHERE idem_key = $2")
        .bind(now - 86_401)
        .bind(&running)
        .execute(&db)
        .await
        .unwrap();
    let r = post_with_key(&app, &admin, VOLUMES, &running, json!({"name": "idem-v4"})).await;
    assert!(matches!(r.status.as_u16(), 200..=202), "{}", r.text);

    // Bad keys, and keys where no operation starts.
    post_with_key(&app, &admin, VOLUMES, "a b", json!({"name": "idem-v5"}))
        .await
        .assert_problem(400, "invalid_header");
    post_with_key(
        &app,
        &admin,
        VOLUMES,
        &"k".repeat(256),
        json!({"name": "idem-v5"}),
    )
    .await
    .assert_problem(400, "invalid_header");
    post_with_key(&app, &admin, "/api/v1/profiles", &key, json!({"name": "p"}))
        .await
        .assert_problem(400, "invalid_header");
    // Without a token: 401 as ever, the key unused.
    let r = app
        .send(
            app.request(Method::POST, VOLUMES, None)
                .header("Idempotency-Key", "x")
                .json(&json!({"name": "idem-v6"})),
        )
        .await;
    r.assert_problem(401, "missing_token");
});

fn incus_instances_named(name: &str) -> usize {
    let out = Command::new("incus")
        .args(["list", "--format", "csv", "--columns", "n", name])
        .env(
            "INCUS_DIR",
            std::env::var("LXGATE_TEST_INCUS_DIR").unwrap_or_default(),
        )
        .output()
        .expect("incus runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim() == name)
        .count()
}

#[tokio::test]
async fn incus_create_retried_at_once_makes_one_instance() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let name = unique("idem");
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);
    let body = json!({"name": name, "source": {"type": "image", "alias": std::env::var("LXGATE_TEST_INCUS_IMAGE_ALIAS").unwrap_or_else(|_| "busybox".into())}});
    let key = uuid::Uuid::new_v4().to_string();
    // A client that timed out and retried at once, twice: one create.
    let (a, b, c) = tokio::join!(
        post_with_key(&app, &admin, "/api/v1/instances", &key, body.clone()),
        post_with_key(&app, &admin, "/api/v1/instances", &key, body.clone()),
        post_with_key(&app, &admin, "/api/v1/instances", &key, body.clone()),
    );
    let mut op_ids = Vec::new();
    for r in [&a, &b, &c] {
        match r.status.as_u16() {
            202 => op_ids.push(r.body["operation_id"].as_str().unwrap().to_owned()),
            409 => assert_eq!(r.body["code"], "idempotency_key_in_use", "{}", r.text),
            other => panic!("{other}: {}", r.text),
        }
    }
    assert!(!op_ids.is_empty(), "one of them started the create");
    op_ids.dedup();
    assert_eq!(
        op_ids.len(),
        1,
        "all answers name one operation: {op_ids:?}"
    );
    let wait = app
        .get(
            &format!("/api/v1/operations/{}/wait?timeout=120", op_ids[0]),
            Some(&admin),
        )
        .await;
    assert_eq!(wait.body["status_code"], 200, "{}", wait.text);
    // Later retries answer the same reference.
    let again = post_with_key(&app, &admin, "/api/v1/instances", &key, body.clone()).await;
    assert_eq!(again.status.as_u16(), 202, "{}", again.text);
    assert_eq!(again.body["operation_id"], op_ids[0].as_str());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(incus_instances_named(&name), 1, "incusd holds exactly one");
}
