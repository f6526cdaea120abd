//! Login -> refresh -> rotation -> reuse detection -> logout, and token revocation.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::db_test;
use crate::helpers::*;

db_test!(login_refresh_rotate_reuse_logout, |app| {
    let login = app.login_reply(ADMIN, ADMIN_PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    assert_eq!(login.body["token_type"], "Bearer");
    assert_eq!(login.body["expires_in"], 1800);
    assert_eq!(login.body["refresh_expires_in"], 7 * 86400);
    let access = login.body["access_token"].as_str().unwrap().to_owned();
    let r1 = login.body["refresh_token"].as_str().unwrap().to_owned();

    let me = app.get("/api/v1/auth/me", Some(&access)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["username"], ADMIN);
    assert_eq!(me.body["role"], "admin");

    // Rotation: r1 -> r2, both access tokens work.
    let refreshed = app
        .post("/api/v1/auth/refresh", None, json!({"refresh_token": r1}))
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text);
    let r2 = refreshed.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    let access2 = refreshed.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get("/api/v1/auth/me", Some(&access2)).await.status,
        StatusCode::OK
    );

    // r2 -> r3 still works.
    let r3 = app
        .post("/api/v1/auth/refresh", None, json!({"refresh_token": r2}))
        .await;
    assert_eq!(r3.status, StatusCode::OK);
    let r3 = r3.body["refresh_token"].as_str().unwrap().to_owned();

    // Reusing spent r1 is detected and revokes the whole family, r3 included.
    let reuse = app
        .post("/api/v1/auth/refresh", None, json!({"refresh_token": r1}))
        .await;
    reuse.assert_problem(401, "refresh_token_reused");
    assert!(
        reuse
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    app.post("/api/v1/auth/refresh", None, json!({"refresh_token": r3}))
        .await
        .assert_problem(401, "refresh_token_reused");

    // Another login is a new family, unaffected; logout ends it.
    let (_, fresh) = app.login(ADMIN, ADMIN_PASSWORD).await;
    let out = app
        .post("/api/v1/auth/logout", None, json!({"refresh_token": fresh}))
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refresh_token": fresh}),
    )
    .await
    .assert_problem(401, "refresh_token_reused");
    // Logout reveals nothing about unknown tokens.
    let out = app
        .post(
            "/api/v1/auth/logout",
            None,
            json!({"refresh_token": "nope"}),
        )
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refresh_token": "nope"}),
    )
    .await
    .assert_problem(401, "invalid_refresh_token");
});

db_test!(wrong_password_and_unknown_user_look_the_same, |app| {
    let wrong = app.login_reply(ADMIN, "not the password at all").await;
    wrong.assert_problem(401, "invalid_credentials");
    let unknown = app.login_reply("nobody", "not the password at all").await;
    unknown.assert_problem(401, "invalid_credentials");
    assert_eq!(wrong.body["detail"], unknown.body["detail"]);
});

db_test!(token_version_revokes_old_access_tokens, |app| {
    let admin = app.admin_token().await;
    let bob = app.user_with_role(&admin, "bob", Some("operator")).await;
    assert_eq!(
        app.get("/api/v1/auth/me", Some(&bob)).await.status,
        StatusCode::OK
    );

    // A role change ends bob's current tokens at once.
    let r = app
        .send(
            app.request(Method::PATCH, "/api/v1/users/bob", Some(&admin))
                .json(&json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["role"], "viewer");
    app.get("/api/v1/auth/me", Some(&bob))
        .await
        .assert_problem(401, "token_revoked");

    // So does changing one's own password; refresh tokens end too.
    let (bob, bob_refresh) = app.login("bob", PASSWORD).await;
    let r = app
        .send(
            app.request(Method::PUT, "/api/v1/auth/me/password", Some(&bob))
                .json(&json!({"current_password": PASSWORD, "new_password": "another sturdy passphrase"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    app.get("/api/v1/auth/me", Some(&bob))
        .await
        .assert_problem(401, "token_revoked");
    let r = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": bob_refresh}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    app.login_reply("bob", PASSWORD)
        .await
        .assert_problem(401, "invalid_credentials");
    let (bob, _) = app.login("bob", "another sturdy passphrase").await;

    // Disabling: tokens stop, login is refused with a clear reason.
    let r = app
        .send(
            app.request(Method::PATCH, "/api/v1/users/bob", Some(&admin))
                .json(&json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        app.get("/api/v1/auth/me", Some(&bob)).await.status,
        StatusCode::UNAUTHORIZED
    );
    app.login_reply("bob", "another sturdy passphrase")
        .await
        .assert_problem(403, "account_disabled");
});

db_test!(change_password_checks_current_and_policy, |app| {
    let admin = app.admin_token().await;
    let carol = app.user_with_role(&admin, "carol", Some("viewer")).await;
    let put = |body: serde_json::Value| {
        app.request(Method::PUT, "/api/v1/auth/me/password", Some(&carol))
            .json(&body)
    };
    let r = app
        .send(put(json!({"current_password": "wrong wrong wrong", "new_password": "a fine new passphrase"})))
        .await;
    r.assert_problem(403, "wrong_password");
    assert_eq!(r.body["field"], "current_password");
    let r = app
        .send(put(
            json!({"current_password": PASSWORD, "new_password": "short"}),
        ))
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "new_password");
    assert!(r.body["detail"].as_str().unwrap().contains("at least 12"));
});

db_test!(ws_tickets_are_issued_to_authenticated_users, |app| {
    let admin = app.admin_token().await;
    let r = app
        .post(
            "/api/v1/auth/ws-ticket",
            Some(&admin),
            json!({"path": "/api/v1/events/ws"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["expires_in"], 30);
    assert_eq!(r.body["ticket"].as_str().unwrap().len(), 43);
    // Only WebSocket routes, and valid names.
    for bad in [
        json!({}),
        json!({"path": "/api/v1/users"}),
        json!({"path": "/api/v1/instances/../exec/ws"}),
        json!({"path": "/api/v1/instances/a%2Fb/exec/ws"}),
        json!({"path": "/api/v1/events/ws", "project": "no/such"}),
    ] {
        let r = app.post("/api/v1/auth/ws-ticket", Some(&admin), bad).await;
        assert_eq!(r.status.as_u16() / 100, 4, "{}", r.text);
        assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    }
    app.post(
        "/api/v1/auth/ws-ticket",
        None,
        json!({"path": "/api/v1/events/ws"}),
    )
    .await
    .assert_problem(401, "missing_token");
});

/// A WebSocket ticket dies with the tokens of its time: once the user's role
/// changes (its token version is bumped), a ticket issued before is refused,
/// and a new one works.
#[tokio::test]
async fn a_ticket_issued_before_a_role_change_is_refused() {
    let app = spawn_app(Db::Sqlite).await;
    let admin = app.admin_token().await;
    let viewer = app.user_with_role(&admin, "ticketed", Some("viewer")).await;
    let stale = app.ticket(&viewer, "/api/v1/events/ws").await;
    let r = app
        .send(
            app.request(Method::PATCH, "/api/v1/users/ticketed", Some(&admin))
                .json(&json!({"role": "operator"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let refused = app
        .ws(&format!("/api/v1/events/ws?ticket={stale}"))
        .await
        .expect_err("a ticket from before the role change");
    assert_eq!(ws_refusal(refused), 401);
    let (fresh_token, _) = app.login("ticketed", PASSWORD).await;
    app.ws_ticketed(&fresh_token, "/api/v1/events/ws")
        .await
        .expect("a ticket issued after it");
}
