//! Account administration: users CRUD, project grants, last-admin protection,
//! `POST /auth/register`, and the audit log that records all of it.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::*;

const NEW_PASSWORD: &str = "a brand new passphrase";

async fn patch(app: &TestApp, token: &str, username: &str, body: Value) -> Reply {
    app.send(
        app.request(
            Method::PATCH,
            &format!("/api/v1/users/{username}"),
            Some(token),
        )
        .json(&body),
    )
    .await
}

async fn delete(app: &TestApp, token: &str, path: &str) -> Reply {
    app.send(app.request(Method::DELETE, path, Some(token)))
        .await
}

async fn put_grant(app: &TestApp, token: &str, username: &str, project: &str, role: &str) -> Reply {
    app.send(
        app.request(
            Method::PUT,
            &format!("/api/v1/users/{username}/projects/{project}"),
            Some(token),
        )
        .json(&json!({"role": role})),
    )
    .await
}

/// RFC 3339 in UTC as the API writes it: `2026-11-23T22:38:16Z`.
fn is_rfc3339(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T' && s.as_bytes()[4] == b'-'
    })
}

/// No key anywhere in the value mentions a password or a hash.
fn assert_no_secrets(v: &Value) {
    let text = v.to_string().to_lowercase();
    for word in ["password", "hash", "argon2"] {
        assert!(!text.contains(word), "{word} leaked: {text}");
    }
}

db_test!(users_crud, |app| {
    let admin = app.admin_token().await;

    // Create: 201, Location, the user without any secret.
    let r = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": "alice", "password": PASSWORD, "role": "operator"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.header("location"), Some("/api/v1/users/alice"));
    assert_eq!(r.body["username"], "alice");
    assert_eq!(r.body["role"], "operator");
    assert_eq!(r.body["disabled"], false);
    assert_eq!(r.body["projects"], json!([]));
    assert!(is_rfc3339(&r.body["created_at"]), "{}", r.text);
    assert!(is_rfc3339(&r.body["updated_at"]), "{}", r.text);
    assert_eq!(r.body["last_login_at"], Value::Null);
    assert_no_secrets(&r.body);
    let created = r.body.clone();

    // Get: the same user (the Location works).
    let r = app.get("/api/v1/users/alice", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, created);

    // A login shows up as last_login_at.
    let (alice, alice_refresh) = app.login("alice", PASSWORD).await;
    let r = app.get("/api/v1/users/alice", Some(&admin)).await;
    assert!(is_rfc3339(&r.body["last_login_at"]), "{}", r.text);

    // Get of someone unknown.
    app.get("/api/v1/users/nobody", Some(&admin))
        .await
        .assert_problem(404, "user_not_found");

    // List with pagination: admin, alice and five more, ordered by username.
    for i in 1..=5 {
        app.user_with_role(&admin, &format!("user{i}"), Some("viewer"))
            .await;
    }
    let mut want: Vec<String> = vec![ADMIN.into(), "alice".into()];
    want.extend((1..=5).map(|i| format!("user{i}")));
    want.sort();
    let all = app.get("/api/v1/users", Some(&admin)).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    assert_eq!(all.body["total"], 7);
    assert_eq!(all.body["limit"], 100, "default limit");
    assert_eq!(all.body["offset"], 0);
    let names: Vec<String> = all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, want);
    for u in all.body["items"].as_array().unwrap() {
        assert_no_secrets(u);
    }
    let mut paged = Vec::new();
    for offset in (0..8).step_by(3) {
        let r = app
            .get(
                &format!("/api/v1/users?limit=3&offset={offset}"),
                Some(&admin),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["total"], 7);
        assert_eq!(r.body["limit"], 3);
        assert_eq!(r.body["offset"], offset);
        let items = r.body["items"].as_array().unwrap();
        assert_eq!(items.len(), 3.min(7 - offset), "offset {offset}");
        paged.extend(
            items
                .iter()
                .map(|u| u["username"].as_str().unwrap().to_owned()),
        );
    }
    assert_eq!(paged, want, "pages cover every user once, in order");
    let past = app
        .get("/api/v1/users?limit=5&offset=50", Some(&admin))
        .await;
    assert_eq!(past.body["items"], json!([]));
    assert_eq!(past.body["total"], 7);

    // PATCH: role, removing the role, disabling and enabling.
    let r = patch(&app, &admin, "alice", json!({"role": "viewer"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["role"], "viewer");
    let r = patch(&app, &admin, "alice", json!({"role": null})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["role"], Value::Null);
    let r = patch(&app, &admin, "alice", json!({"disabled": true})).await;
    assert_eq!(r.body["disabled"], true, "{}", r.text);
    let r = patch(
        &app,
        &admin,
        "alice",
        json!({"disabled": false, "role": "operator"}),
    )
    .await;
    assert_eq!(
        (r.body["disabled"].clone(), r.body["role"].clone()),
        (json!(false), json!("operator"))
    );
    // `{}` changes nothing.
    let r = patch(&app, &admin, "alice", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["role"], "operator");
    patch(&app, &admin, "nobody", json!({"role": "viewer"}))
        .await
        .assert_problem(404, "user_not_found");

    // The role changes above already ended alice's first session (and
    // disabling her ended its refresh token).
    app.get("/api/v1/auth/me", Some(&alice))
        .await
        .assert_problem(401, "token_revoked");
    let r = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": alice_refresh}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);

    // Password reset by an admin ends every session of the user.
    let (alice, alice_refresh) = app.login("alice", PASSWORD).await;
    assert_eq!(
        app.get("/api/v1/auth/me", Some(&alice)).await.status,
        StatusCode::OK
    );
    let r = patch(&app, &admin, "alice", json!({"password": NEW_PASSWORD})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_no_secrets(&r.body);
    app.get("/api/v1/auth/me", Some(&alice))
        .await
        .assert_problem(401, "token_revoked");
    let r = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": alice_refresh}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "refresh after reset: {}",
        r.text
    );
    app.login_reply("alice", PASSWORD)
        .await
        .assert_problem(401, "invalid_credentials");
    let (alice, _) = app.login("alice", NEW_PASSWORD).await;

    // Delete: 204, then 404 everywhere, and its token stops working.
    let r = delete(&app, &admin, "/api/v1/users/alice").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(r.text.is_empty());
    app.get("/api/v1/users/alice", Some(&admin))
        .await
        .assert_problem(404, "user_not_found");
    delete(&app, &admin, "/api/v1/users/alice")
        .await
        .assert_problem(404, "user_not_found");
    app.get("/api/v1/auth/me", Some(&alice))
        .await
        .assert_problem(401, "invalid_token");
    app.login_reply("alice", NEW_PASSWORD)
        .await
        .assert_problem(401, "invalid_credentials");
    let r = app.get("/api/v1/users", Some(&admin)).await;
    assert_eq!(r.body["total"], 6);
    // The name is free again; the new alice is a new user.
    let r = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": "alice", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["role"], Value::Null);
    assert_eq!(r.body["last_login_at"], Value::Null);
});

db_test!(project_grants, |app| {
    let admin = app.admin_token().await;
    app.user_with_role(&admin, "gina", None).await;

    let r = put_grant(&app, &admin, "gina", "team-a", "viewer").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["username"], "gina");
    assert_eq!(
        r.body["projects"],
        json!([{"project": "team-a", "role": "viewer"}])
    );

    // Re-PUT replaces the role; it does not add a second grant.
    let r = put_grant(&app, &admin, "gina", "team-a", "operator").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["projects"],
        json!([{"project": "team-a", "role": "operator"}])
    );
    let r = put_grant(&app, &admin, "gina", "team-b", "viewer").await;
    let both = json!([
        {"project": "team-a", "role": "operator"},
        {"project": "team-b", "role": "viewer"}
    ]);
    assert_eq!(r.body["projects"], both, "{}", r.text);

    // Visible on GET, in the list, and to gina herself.
    assert_eq!(
        app.get("/api/v1/users/gina", Some(&admin)).await.body["projects"],
        both
    );
    let list = app.get("/api/v1/users", Some(&admin)).await;
    let gina = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "gina")
        .cloned()
        .unwrap();
    assert_eq!(gina["projects"], both);
    let (token, _) = app.login("gina", PASSWORD).await;
    let me = app.get("/api/v1/auth/me", Some(&token)).await;
    assert_eq!(me.body["projects"], both, "{}", me.text);
    assert_eq!(
        me.body["project_permissions"],
        json!({"team-a": ["project:view", "project:operate"], "team-b": ["project:view"]})
    );

    // DELETE: 204, then 404 grant_not_found.
    let r = delete(&app, &admin, "/api/v1/users/gina/projects/team-a").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    delete(&app, &admin, "/api/v1/users/gina/projects/team-a")
        .await
        .assert_problem(404, "grant_not_found");
    let r = app.get("/api/v1/users/gina", Some(&admin)).await;
    assert_eq!(
        r.body["projects"],
        json!([{"project": "team-b", "role": "viewer"}])
    );

    // Unknown users, bad roles.
    put_grant(&app, &admin, "nobody", "team-a", "viewer")
        .await
        .assert_problem(404, "user_not_found");
    delete(&app, &admin, "/api/v1/users/nobody/projects/team-a")
        .await
        .assert_problem(404, "user_not_found");
    let r = put_grant(&app, &admin, "gina", "team-a", "superuser").await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "role");

    // Deleting the user takes its grants with it.
    assert_eq!(
        delete(&app, &admin, "/api/v1/users/gina").await.status,
        StatusCode::NO_CONTENT
    );
    app.user_with_role(&admin, "gina", None).await;
    assert_eq!(
        app.get("/api/v1/users/gina", Some(&admin)).await.body["projects"],
        json!([])
    );
});

db_test!(last_admin_cannot_lock_everyone_out, |app| {
    let admin = app.admin_token().await;

    // Alone: no demotion, no disabling, no deletion of oneself.
    for body in [
        json!({"role": "operator"}),
        json!({"role": "viewer"}),
        json!({"role": null}),
        json!({"disabled": true}),
        json!({"role": "admin", "disabled": true}),
    ] {
        let r = patch(&app, &admin, ADMIN, body.clone()).await;
        r.assert_problem(409, "last_admin");
    }
    delete(&app, &admin, &format!("/api/v1/users/{ADMIN}"))
        .await
        .assert_problem(409, "last_admin");
    // Nothing changed, and the refused changes did not end the session.
    let me = app.get("/api/v1/auth/me", Some(&admin)).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["role"], "admin");
    // Harmless changes to the last admin are fine.
    let r = patch(&app, &admin, ADMIN, json!({"role": "admin"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let admin = app.admin_token().await;

    // A disabled admin does not count.
    let r = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({"username": "sleepy", "password": PASSWORD, "role": "admin", "disabled": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    patch(&app, &admin, ADMIN, json!({"role": "operator"}))
        .await
        .assert_problem(409, "last_admin");

    // With a second enabled admin it works, and the new one is protected in turn.
    let root2 = app.user_with_role(&admin, "root2", Some("admin")).await;
    let r = patch(&app, &admin, ADMIN, json!({"role": "operator"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["role"], "operator");
    for body in [json!({"role": "viewer"}), json!({"disabled": true})] {
        patch(&app, &root2, "root2", body)
            .await
            .assert_problem(409, "last_admin");
    }
    delete(&app, &root2, "/api/v1/users/root2")
        .await
        .assert_problem(409, "last_admin");

    // Re-enabling sleepy makes two admins again: root2 may then go.
    let r = patch(&app, &root2, "sleepy", json!({"disabled": false})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = delete(&app, &root2, "/api/v1/users/root2").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let sleepy = app.login("sleepy", PASSWORD).await.0;
    let r = patch(&app, &sleepy, ADMIN, json!({"role": "admin"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app.get("/api/v1/users", Some(&sleepy)).await;
    let admins: BTreeSet<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["role"] == "admin" && u["disabled"] == false)
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(admins, BTreeSet::from([ADMIN, "sleepy"]));
});

// Two admins demoting each other at the same moment must not both succeed:
// the check "another enabled admin exists" and the change have to be atomic.
db_test!(concurrent_demotions_keep_an_admin, |app| {
    let mut admin = app.admin_token().await;
    for round in 0..20 {
        let a = format!("race-a{round}");
        let b = format!("race-b{round}");
        let ta = app.user_with_role(&admin, &a, Some("admin")).await;
        let tb = app.user_with_role(&admin, &b, Some("admin")).await;
        // The seeded admin steps aside so a and b are the only admins.
        let r = patch(&app, &ta, ADMIN, json!({"role": null})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let (ra, rb) = tokio::join!(
            patch(&app, &ta, &a, json!({"role": "viewer"})),
            patch(&app, &tb, &b, json!({"role": "viewer"})),
        );
        let ok = [&ra, &rb]
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count();
        assert!(
            ok <= 1,
            "round {round}: two admins demoted themselves at the same moment and both \
             succeeded ({} / {}): no enabled admin is left, nobody can administer the server",
            ra.status,
            rb.status,
        );
        for r in [&ra, &rb] {
            if r.status != StatusCode::OK {
                r.assert_problem(409, "last_admin");
            }
        }
        // Back to the start: the seeded admin is admin again, a and b are gone.
        let survivor = if ra.status == StatusCode::OK {
            &tb
        } else {
            &ta
        };
        let r = patch(&app, survivor, ADMIN, json!({"role": "admin"})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        // (That ended the seeded admin's session: log in again.)
        admin = app.admin_token().await;
        for u in [&a, &b] {
            let r = delete(&app, &admin, &format!("/api/v1/users/{u}")).await;
            assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
        }
    }
});

db_test!(register_is_create_user_for_admins, |app| {
    let admin = app.admin_token().await;
    let r = app
        .post(
            "/api/v1/auth/register",
            Some(&admin),
            json!({"username": "reggie", "password": PASSWORD, "role": "viewer"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.header("location"), Some("/api/v1/users/reggie"));
    assert_eq!(r.body["username"], "reggie");
    assert_eq!(r.body["role"], "viewer");
    assert_no_secrets(&r.body);
    let got = app.get("/api/v1/users/reggie", Some(&admin)).await;
    assert_eq!(got.body, r.body);
    let (reggie, _) = app.login("reggie", PASSWORD).await;

    // Same rules as POST /users.
    app.post(
        "/api/v1/auth/register",
        Some(&admin),
        json!({"username": "reggie", "password": PASSWORD}),
    )
    .await
    .assert_problem(409, "user_exists");
    let r = app
        .post(
            "/api/v1/auth/register",
            Some(&admin),
            json!({"username": "shorty", "password": "short"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "password");
    // Not open registration: non-admins and anonymous callers are refused.
    let r = app
        .post(
            "/api/v1/auth/register",
            Some(&reggie),
            json!({"username": "friend", "password": PASSWORD}),
        )
        .await;
    r.assert_problem(403, "permission_denied");
    assert_eq!(r.body["permission"], "users:manage");
    app.post(
        "/api/v1/auth/register",
        None,
        json!({"username": "friend", "password": PASSWORD}),
    )
    .await
    .assert_problem(401, "missing_token");
    app.get("/api/v1/users/friend", Some(&admin))
        .await
        .assert_problem(404, "user_not_found");
});

/// Sends with a chosen request id so the audit entry can be matched.
async fn send_with_id(app: &TestApp, rb: reqwest::RequestBuilder, id: &str) -> Reply {
    let r = app.send(rb.header("x-request-id", id)).await;
    assert_eq!(r.header("x-request-id"), Some(id));
    r
}

fn entry<'a>(items: &'a [Value], request_id: &str) -> &'a Value {
    items
        .iter()
        .find(|e| e["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no audit entry for request {request_id}: {items:#?}"))
}

db_test!(audit_log_records_mutations, |app| {
    const WRONG: &str = "wrong-secret-Passw0rd-xyz";
    let admin = app.admin_token().await;
    let viewer = app.user_with_role(&admin, "watcher", Some("viewer")).await;

    let r = send_with_id(
        &app,
        app.request(Method::POST, "/api/v1/users", Some(&admin))
            .json(&json!({"username": "audited", "password": PASSWORD})),
        "audit-create",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = send_with_id(
        &app,
        app.request(Method::PATCH, "/api/v1/users/audited", Some(&admin))
            .json(&json!({"role": "operator", "password": NEW_PASSWORD})),
        "audit-patch",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = send_with_id(
        &app,
        app.request(
            Method::PUT,
            "/api/v1/users/audited/projects/team-a?project=team-a",
            Some(&admin),
        )
        .json(&json!({"role": "viewer"})),
        "audit-grant",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = send_with_id(
        &app,
        app.request(Method::POST, "/api/v1/auth/login", None)
            .json(&json!({"username": "audited", "password": WRONG})),
        "audit-badlogin",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send_with_id(
        &app,
        app.request(Method::POST, "/api/v1/auth/login", None)
            .json(&json!({"username": "ghost", "password": WRONG})),
        "audit-ghost",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send_with_id(
        &app,
        app.request(Method::POST, "/api/v1/users", Some(&viewer))
            .json(&json!({"username": "sneaky", "password": PASSWORD})),
        "audit-denied",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = send_with_id(
        &app,
        app.request(Method::DELETE, "/api/v1/users/audited", None),
        "audit-anon",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send_with_id(
        &app,
        app.request(Method::DELETE, "/api/v1/users/audited", Some(&admin)),
        "audit-delete",
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // Reads are not recorded.
    send_with_id(
        &app,
        app.request(Method::GET, "/api/v1/users", Some(&admin)),
        "audit-read",
    )
    .await;

    let log = app.get("/api/v1/audit", Some(&admin)).await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.text);
    for secret in [
        PASSWORD,
        NEW_PASSWORD,
        WRONG,
        ADMIN_PASSWORD,
        admin.as_str(),
    ] {
        assert!(
            !log.text.contains(secret),
            "a secret is in the audit log: {secret}"
        );
    }
    let items = log.body["items"].as_array().unwrap();
    assert_eq!(log.body["total"].as_u64().unwrap() as usize, items.len());
    assert!(
        !items.iter().any(|e| e["request_id"] == "audit-read"),
        "a GET was audited"
    );
    // Newest first.
    let ids: Vec<i64> = items.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {ids:?}"
    );
    let ats: Vec<i64> = items.iter().map(|e| e["at"].as_i64().unwrap()).collect();
    assert!(
        ats.windows(2).all(|w| w[0] >= w[1]),
        "times not descending: {ats:?}"
    );
    let order: Vec<&str> = items
        .iter()
        .filter_map(|e| e["request_id"].as_str())
        .filter(|id| id.starts_with("audit-"))
        .collect();
    assert_eq!(
        order,
        [
            "audit-delete",
            "audit-anon",
            "audit-denied",
            "audit-ghost",
            "audit-badlogin",
            "audit-grant",
            "audit-patch",
            "audit-create"
        ]
    );

    let e = entry(items, "audit-create");
    assert_eq!(e["username"], ADMIN);
    assert_eq!(e["method"], "POST");
    assert_eq!(e["path"], "/api/v1/users");
    assert_eq!(e["route"], "/api/v1/users");
    assert_eq!(e["status"], 201);
    assert_eq!(e["client_ip"], "127.0.0.1");
    let e = entry(items, "audit-patch");
    assert_eq!(
        (&e["method"], &e["route"], &e["path"], &e["status"]),
        (
            &json!("PATCH"),
            &json!("/api/v1/users/{username}"),
            &json!("/api/v1/users/audited"),
            &json!(200)
        )
    );
    let e = entry(items, "audit-grant");
    assert_eq!(e["route"], "/api/v1/users/{username}/projects/{project}");
    assert_eq!(e["project"], "team-a");
    let e = entry(items, "audit-badlogin");
    assert_eq!(
        (&e["username"], &e["method"], &e["route"], &e["status"]),
        (
            &json!("audited"),
            &json!("POST"),
            &json!("/api/v1/auth/login"),
            &json!(401)
        )
    );
    let e = entry(items, "audit-ghost");
    assert_eq!(
        (&e["username"], &e["status"]),
        (&json!("ghost"), &json!(401))
    );
    let e = entry(items, "audit-denied");
    assert_eq!(
        (&e["username"], &e["status"]),
        (&json!("watcher"), &json!(403))
    );
    let e = entry(items, "audit-anon");
    assert_eq!((&e["username"], &e["status"]), (&Value::Null, &json!(401)));
    let e = entry(items, "audit-delete");
    assert_eq!(
        (&e["username"], &e["method"], &e["status"]),
        (&json!(ADMIN), &json!("DELETE"), &json!(204))
    );

    // Filters: user=, project=, since=, limit/offset.
    let r = app.get("/api/v1/audit?user=audited", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let got: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["audit-badlogin"], "{}", r.text);
    assert_eq!(r.body["total"], 1);
    let r = app.get("/api/v1/audit?user=watcher", Some(&admin)).await;
    assert!(
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["username"] == "watcher")
    );
    assert!(
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["request_id"] == "audit-denied")
    );
    let r = app
        .get("/api/v1/audit?user=nobody-at-all", Some(&admin))
        .await;
    assert_eq!(
        (&r.body["total"], &r.body["items"]),
        (&json!(0), &json!([]))
    );
    let r = app.get("/api/v1/audit?project=team-a", Some(&admin)).await;
    let got: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["audit-grant"], "{}", r.text);

    let total = log.body["total"].as_i64().unwrap();
    let r = app
        .get("/api/v1/audit?since=1970-01-01T00:00:00Z", Some(&admin))
        .await;
    assert_eq!(r.body["total"], total, "{}", r.text);
    let r = app
        .get("/api/v1/audit?since=2999-01-01T00:00:00Z", Some(&admin))
        .await;
    assert_eq!(
        (&r.body["total"], &r.body["items"]),
        (&json!(0), &json!([]))
    );
    // An offset form (`+` encoded) is RFC 3339 too.
    let r = app
        .get(
            "/api/v1/audit?since=2000-01-01T01:00:00%2B01:00",
            Some(&admin),
        )
        .await;
    assert_eq!(r.body["total"], total, "{}", r.text);
    // since= and user= combine.
    let r = app
        .get(
            "/api/v1/audit?user=audited&since=2000-01-01T00:00:00Z",
            Some(&admin),
        )
        .await;
    assert_eq!(r.body["total"], 1, "{}", r.text);
    for bad in [
        "yesterday",
        "2026-11-23",
        "1700000000",
        "2026-13-01T00:00:00Z",
    ] {
        app.get(&format!("/api/v1/audit?since={bad}"), Some(&admin))
            .await
            .assert_problem(400, "invalid_query");
    }
    let r = app
        .get("/api/v1/audit?limit=2&offset=1", Some(&admin))
        .await;
    assert_eq!(r.body["total"], total);
    assert_eq!(r.body["limit"], 2);
    assert_eq!(r.body["offset"], 1);
    let page: Vec<&Value> = r.body["items"].as_array().unwrap().iter().collect();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["id"], items[1]["id"]);
    assert_eq!(page[1]["id"], items[2]["id"]);

    // Admins only.
    app.get("/api/v1/audit", Some(&viewer))
        .await
        .assert_problem(403, "permission_denied");
});

/// Audit rows say how the caller authenticated; requests without
/// credentials only write rows within a per-IP budget, so a flood of them
/// cannot fill the log.
async fn audit_auth_and_flood(db: Db) {
    let app = spawn_app_with(db, &[("AUDIT_UNAUTHENTICATED_PER_MINUTE", "3")]).await;
    let admin = app.admin_token().await;
    for i in 0..10 {
        let r = send_with_id(
            &app,
            app.request(Method::DELETE, "/api/v1/users/nobody", None),
            &format!("flood-{i}"),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = send_with_id(
        &app,
        app.request(Method::POST, "/api/v1/users", Some(&admin))
            .json(&json!({"username": "counted", "password": PASSWORD})),
        "with-bearer",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let log = app.get("/api/v1/audit?limit=200", Some(&admin)).await;
    let items = log.body["items"].as_array().unwrap();
    let flood = items
        .iter()
        .filter(|e| {
            e["request_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("flood-"))
        })
        .count();
    assert_eq!(flood, 3, "{}", log.text);
    assert!(entry(items, "flood-0")["auth_method"].is_null());
    assert_eq!(entry(items, "with-bearer")["auth_method"], "bearer");
    // The admin's login (admin_token above) was by password.
    assert!(
        items
            .iter()
            .any(|e| e["path"] == "/api/v1/auth/login" && e["auth_method"] == "password"),
        "{}",
        log.text
    );
}

#[tokio::test]
async fn audit_auth_and_flood_sqlite() {
    audit_auth_and_flood(Db::Sqlite).await;
}

#[tokio::test]
async fn audit_auth_and_flood_postgres() {
    audit_auth_and_flood(Db::Postgres).await;
}

/// Rows older than AUDIT_RETENTION_DAYS go when lxgate starts (and every
/// minute after); newer ones stay.
async fn audit_retention(db: Db) {
    let first = spawn_app(db).await;
    let url = first.config.database_url.clone();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for (at, id) in [(now - 3 * 86_400, "old-row"), (now - 3_600, "recent-row")] {
        sqlx::query(
            "INSERT INTO audit_log (at, method, path, status, request_id) VALUES ($1, 'POST', '/x', 200, $2)",
        )
        .bind(at)
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    // `first` stays: its temp dir holds the SQLite file. The second server
    // has a DATA_DIR of its own (one lxgate per DATA_DIR: it is locked).
    let app = spawn_app_with(db, &[("DATABASE_URL", &url), ("AUDIT_RETENTION_DAYS", "1")]).await;
    let admin = app.admin_token().await;
    let log = app.get("/api/v1/audit?limit=200", Some(&admin)).await;
    assert!(!log.text.contains("old-row"), "{}", log.text);
    assert!(log.text.contains("recent-row"), "{}", log.text);
    drop(first);
}

#[tokio::test]
async fn audit_retention_sqlite() {
    audit_retention(Db::Sqlite).await;
}

#[tokio::test]
async fn audit_retention_postgres() {
    audit_retention(Db::Postgres).await;
}
