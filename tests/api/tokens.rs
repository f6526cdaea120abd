//! Personal access tokens (issue 13, item 2): created after an interactive
//! login, the secret shown once and stored hashed, usable wherever a bearer
//! JWT is, capped below the owner, revoked at once (open sockets too).

use reqwest::Method;
use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::*;
use crate::revocation::closed;

/// Creates a token with `body` (plus a name) as `owner`; returns (secret, id).
pub async fn pat(app: &TestApp, owner: &str, body: Value) -> (String, String) {
    let mut body = body;
    if body.get("name").is_none() {
        body["name"] = json!("test token");
    }
    let r = app.post("/api/v1/auth/tokens", Some(owner), body).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text);
    (
        r.body["token"].as_str().unwrap().to_owned(),
        r.body["id"].as_str().unwrap().to_owned(),
    )
}

async fn pool(app: &TestApp) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(&app.config.database_url)
        .await
        .unwrap()
}

db_test!(
    a_token_is_shown_once_stored_hashed_and_works_like_a_login,
    |app| {
        let admin = app.admin_token().await;
        let alice = app
            .user_with_role(&admin, "pat-alice", Some("operator"))
            .await;
        let r = app
            .post(
                "/api/v1/auth/tokens",
                Some(&alice),
                json!({"name": "ci", "expires_in": 3600}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.text);
        let secret = r.body["token"].as_str().unwrap().to_owned();
        let id = r.body["id"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("lxgpat_"), "{secret}");
        assert_eq!(secret.len(), 7 + 43);
        assert_eq!(r.body["prefix"], &secret[..12]);
        assert_eq!(r.body["projects"], Value::Null);
        assert_eq!(r.body["read_only"], false);
        assert_eq!(
            r.header("location"),
            Some(format!("/api/v1/auth/tokens/{id}").as_str())
        );

        // Used like an access token: the owner.
        let me = app.get("/api/v1/auth/me", Some(&secret)).await;
        assert_eq!(me.status.as_u16(), 200, "{}", me.text);
        assert_eq!(me.body["username"], "pat-alice");
        assert_eq!(me.body["role"], "operator");

        // Listed (with its last use), never with the secret.
        let list = app.get("/api/v1/auth/tokens", Some(&alice)).await;
        assert_eq!(list.status.as_u16(), 200, "{}", list.text);
        assert!(!list.text.contains(&secret), "{}", list.text);
        let items = list.body.as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["id"], id.as_str());
        assert_eq!(items[0]["name"], "ci");
        assert_eq!(items[0]["expired"], false);
        assert_eq!(items[0]["last_used_ip"], "127.0.0.1");
        assert!(items[0]["last_used_at"].is_string(), "{}", list.text);
        assert!(items[0].get("token").is_none());
        let one = app
            .get(&format!("/api/v1/auth/tokens/{id}"), Some(&secret))
            .await;
        assert_eq!(one.status.as_u16(), 200, "{}", one.text);
        assert!(!one.text.contains(&secret));

        // Only the hash is stored.
        let db = pool(&app).await;
        let (hash, prefix): (String, String) =
            sqlx::query_as("SELECT token_hash, prefix FROM personal_access_tokens WHERE id = $1")
                .bind(&id)
                .fetch_one(&db)
                .await
                .unwrap();
        assert_ne!(hash, secret);
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&secret[7..]));
        assert_eq!(prefix, &secret[..12]);

        // Writes are audited as `pat`, with the token's id.
        let r = app
            .post(
                "/api/v1/auth/ws-ticket",
                Some(&secret),
                json!({"path": "/api/v1/events/ws"}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text);
        let (method, token_id): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT auth_method, token_id FROM audit_log WHERE path = '/api/v1/auth/ws-ticket' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db)
    .await
    .unwrap();
        assert_eq!(
            (method.as_deref(), token_id.as_deref()),
            (Some("pat"), Some(id.as_str()))
        );

        // Expired (its row moved to the past): refused like a bad JWT.
        sqlx::query("UPDATE personal_access_tokens SET expires_at = $1 WHERE id = $2")
            .bind(time::OffsetDateTime::now_utc().unix_timestamp() - 1)
            .bind(&id)
            .execute(&db)
            .await
            .unwrap();
        app.get("/api/v1/auth/me", Some(&secret))
            .await
            .assert_problem(401, "invalid_token");
        let list = app.get("/api/v1/auth/tokens", Some(&alice)).await;
        assert_eq!(list.body[0]["expired"], true, "{}", list.text);

        // Unknown secrets too.
        app.get(
            "/api/v1/auth/me",
            Some("lxgpat_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        )
        .await
        .assert_problem(401, "invalid_token");
    }
);

db_test!(
    revoking_a_token_refuses_it_at_once_and_closes_its_sockets,
    |app| {
        let admin = app.admin_token().await;
        let bob = app.user_with_role(&admin, "pat-bob", Some("viewer")).await;
        let (secret, id) = pat(&app, &bob, json!({})).await;
        let mut direct = app
            .ws(&format!("/api/v1/events/ws?token={secret}"))
            .await
            .expect("opens with ?token=");
        let mut ticketed = app
            .ws_ticketed(&secret, "/api/v1/events/ws")
            .await
            .expect("opens with a ticket the token asked for");
        let r = app
            .delete(&format!("/api/v1/auth/tokens/{id}"), Some(&bob))
            .await;
        assert_eq!(r.status.as_u16(), 204, "{}", r.text);
        app.get("/api/v1/auth/me", Some(&secret))
            .await
            .assert_problem(401, "invalid_token");
        for socket in [&mut direct, &mut ticketed] {
            let (code, reason, _) = closed(socket).await;
            assert_eq!((code, reason.as_str()), (4401, "token revoked or expired"));
        }
        // Gone: a second delete finds nothing.
        app.delete(&format!("/api/v1/auth/tokens/{id}"), Some(&bob))
            .await
            .assert_problem(404, "token_not_found");

        // A ticket a token asked for dies with the token.
        let (secret, id) = pat(&app, &bob, json!({})).await;
        let ticket = app.ticket(&secret, "/api/v1/events/ws").await;
        let r = app
            .delete(&format!("/api/v1/auth/tokens/{id}"), Some(&bob))
            .await;
        assert_eq!(r.status.as_u16(), 204, "{}", r.text);
        let e = app
            .ws(&format!("/api/v1/events/ws?ticket={ticket}"))
            .await
            .expect_err("refused");
        assert_eq!(ws_refusal_code(e), (401, "invalid_ticket".to_owned()));
    }
);

db_test!(
    a_token_ends_with_a_password_change_and_follows_its_owner_rights,
    |app| {
        let admin = app.admin_token().await;
        let (carol, _) = {
            app.user_with_role(&admin, "pat-carol", None).await;
            app.login("pat-carol", PASSWORD).await
        };
        let r = app
            .post("/api/v1/projects", Some(&admin), json!({"name": "pat-p"}))
            .await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.text);
        app.grant(&admin, "pat-carol", "pat-p", "viewer").await;
        let (before, _) = pat(&app, &carol, json!({})).await;

        // A password change ends every credential, tokens too (one minted
        // with a stolen session must not outlive the change).
        let new_password = "another long passphrase";
        let r = app
            .put(
                "/api/v1/auth/me/password",
                Some(&carol),
                json!({"current_password": PASSWORD, "new_password": new_password}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 204, "{}", r.text);
        app.get("/api/v1/instances?project=pat-p", Some(&before))
            .await
            .assert_problem(401, "invalid_token");
        let (carol, _) = app.login("pat-carol", new_password).await;
        let (secret, _) = pat(&app, &carol, json!({})).await;
        let r = app
            .get("/api/v1/instances?project=pat-p", Some(&secret))
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text);
        let mut socket = app
            .ws(&format!("/api/v1/events/ws?project=pat-p&token={secret}"))
            .await
            .expect("opens");

        // Losing the project role: the token loses it at once, sockets close.
        let r = app
            .delete("/api/v1/users/pat-carol/projects/pat-p", Some(&admin))
            .await;
        assert_eq!(r.status.as_u16(), 204, "{}", r.text);
        app.get("/api/v1/instances?project=pat-p", Some(&secret))
            .await
            .assert_problem(403, "permission_denied");
        let (code, _, _) = closed(&mut socket).await;
        assert_eq!(code, 4403);

        // Disabling the owner ends its tokens, for good (enabling it again
        // brings none back).
        for disabled in [true, false] {
            let r = app
                .send(
                    app.request(Method::PATCH, "/api/v1/users/pat-carol", Some(&admin))
                        .json(&json!({"disabled": disabled})),
                )
                .await;
            assert_eq!(r.status.as_u16(), 200, "{}", r.text);
        }
        app.get("/api/v1/auth/me", Some(&secret))
            .await
            .assert_problem(401, "invalid_token");
    }
);

db_test!(tokens_are_capped_below_their_owner, |app| {
    let admin = app.admin_token().await;
    for p in ["pat-p", "pat-q"] {
        let r = app
            .post("/api/v1/projects", Some(&admin), json!({"name": p}))
            .await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.text);
    }

    // An admin's token capped to viewer is no admin.
    let (viewer, _) = pat(&app, &admin, json!({"role_cap": "viewer"})).await;
    let me = app.get("/api/v1/auth/me", Some(&viewer)).await;
    assert_eq!(me.body["role"], "viewer", "{}", me.text);
    assert_eq!(me.body["global_permissions"], json!([]));
    app.get("/api/v1/users", Some(&viewer))
        .await
        .assert_problem(403, "permission_denied");
    let r = app
        .post("/api/v1/instances/missing/start", Some(&viewer), json!({}))
        .await;
    r.assert_problem(403, "permission_denied");
    assert_eq!(r.body["permission"], "project:operate");
    let r = app.get("/api/v1/instances", Some(&viewer)).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);

    // Limited to pat-p: nothing else, and nothing server-wide.
    let (only_p, _) = pat(&app, &admin, json!({"projects": ["pat-p"]})).await;
    let r = app
        .get("/api/v1/instances?project=pat-p", Some(&only_p))
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    for q in ["?project=pat-q", "", "?project=default"] {
        app.get(&format!("/api/v1/instances{q}"), Some(&only_p))
            .await
            .assert_problem(403, "permission_denied");
    }
    app.get("/api/v1/audit", Some(&only_p))
        .await
        .assert_problem(403, "permission_denied");
    let projects = app.get("/api/v1/projects", Some(&only_p)).await;
    let names: Vec<&str> = projects
        .body
        .as_array()
        .or_else(|| projects.body["items"].as_array())
        .unwrap_or_else(|| panic!("{}", projects.text))
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["pat-p"], "{}", projects.text);
    let me = app.get("/api/v1/auth/me", Some(&only_p)).await;
    assert_eq!(me.body["role"], Value::Null);
    assert_eq!(
        me.body["projects"],
        json!([{"project": "pat-p", "role": "admin"}])
    );

    // Read-only: no method but GET, no write permission even on GET.
    let (ro, _) = pat(&app, &admin, json!({"read_only": true})).await;
    let r = app.get("/api/v1/audit", Some(&ro)).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    app.post("/api/v1/projects", Some(&ro), json!({"name": "pat-never"}))
        .await
        .assert_problem(403, "read_only_token");
    app.delete("/api/v1/projects/pat-q", Some(&ro))
        .await
        .assert_problem(403, "read_only_token");
    app.get("/api/v1/users", Some(&ro))
        .await
        .assert_problem(403, "permission_denied");
    let e = app
        .ws(&format!("/api/v1/instances/missing/exec/ws?token={ro}"))
        .await
        .expect_err("no exec for a read-only token");
    assert_eq!(ws_refusal_code(e), (403, "permission_denied".to_owned()));

    // Bad requests.
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (json!({"name": "a\u{7}b"}), "name"),
        (json!({"name": "t", "expires_in": 59}), "expires_in"),
        (json!({"name": "t", "expires_in": 31_536_001}), "expires_in"),
        (json!({"name": "t", "projects": []}), "projects"),
        (json!({"name": "t", "projects": ["a", "a"]}), "projects"),
        (json!({"name": "t", "projects": ["Not A Name"]}), "projects"),
    ] {
        let r = app.post("/api/v1/auth/tokens", Some(&admin), body).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["field"], field, "{}", r.text);
    }
});

db_test!(a_token_cannot_manage_credentials, |app| {
    let admin = app.admin_token().await;
    let dave = app.user_with_role(&admin, "pat-dave", Some("viewer")).await;
    let (secret, _) = pat(&app, &dave, json!({})).await;
    app.post("/api/v1/auth/tokens", Some(&secret), json!({"name": "x"}))
        .await
        .assert_problem(403, "token_not_allowed");
    app.put(
        "/api/v1/auth/me/password",
        Some(&secret),
        json!({"current_password": PASSWORD, "new_password": "another long passphrase"}),
    )
    .await
    .assert_problem(403, "token_not_allowed");
    // Even an admin's uncapped token sets no password.
    let (root, _) = pat(&app, &admin, json!({})).await;
    app.post(
        "/api/v1/users",
        Some(&root),
        json!({"username": "pat-new", "password": PASSWORD}),
    )
    .await
    .assert_problem(403, "token_not_allowed");
    let r = app
        .send(
            app.request(Method::PATCH, "/api/v1/users/pat-dave", Some(&root))
                .json(&json!({"password": "yet another passphrase"})),
        )
        .await;
    r.assert_problem(403, "token_not_allowed");
    // Other admin work is fine.
    let r = app.get("/api/v1/users", Some(&root)).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);

    // 50 live tokens at most.
    for i in 1..50 {
        pat(&app, &dave, json!({"name": format!("t{i}")})).await;
    }
    app.post("/api/v1/auth/tokens", Some(&dave), json!({"name": "t51"}))
        .await
        .assert_problem(409, "token_limit_reached");
});

db_test!(admins_list_and_revoke_anyones_tokens, |app| {
    let admin = app.admin_token().await;
    let erin = app
        .user_with_role(&admin, "pat-erin", Some("operator"))
        .await;
    let frank = app
        .user_with_role(&admin, "pat-frank", Some("operator"))
        .await;
    let (secret, id) = pat(&app, &erin, json!({"name": "erin's"})).await;

    // Others' tokens are not confirmed to non-admins.
    app.get(&format!("/api/v1/auth/tokens/{id}"), Some(&frank))
        .await
        .assert_problem(404, "token_not_found");
    app.delete(&format!("/api/v1/auth/tokens/{id}"), Some(&frank))
        .await
        .assert_problem(404, "token_not_found");
    app.get("/api/v1/auth/tokens?user=pat-erin", Some(&frank))
        .await
        .assert_problem(403, "permission_denied");
    let own = app.get("/api/v1/auth/tokens", Some(&frank)).await;
    assert_eq!(own.body, json!([]));

    let list = app
        .get("/api/v1/auth/tokens?user=pat-erin", Some(&admin))
        .await;
    assert_eq!(list.status.as_u16(), 200, "{}", list.text);
    assert_eq!(list.body[0]["id"], id.as_str());
    app.get("/api/v1/auth/tokens?user=pat-nobody", Some(&admin))
        .await
        .assert_problem(404, "user_not_found");
    let r = app
        .delete(&format!("/api/v1/auth/tokens/{id}"), Some(&admin))
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    app.get("/api/v1/auth/me", Some(&secret))
        .await
        .assert_problem(401, "invalid_token");

    // Deleting a user deletes its tokens.
    let (secret, id) = pat(&app, &frank, json!({})).await;
    let r = app.delete("/api/v1/users/pat-frank", Some(&admin)).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    app.get("/api/v1/auth/me", Some(&secret))
        .await
        .assert_problem(401, "invalid_token");
    let db = pool(&app).await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM personal_access_tokens WHERE id = $1")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, 0);
});

db_test!(a_token_sees_and_revokes_only_itself, |app| {
    let admin = app.admin_token().await;
    let dave = app
        .user_with_role(&admin, "pat-dave", Some("operator"))
        .await;
    let (ci, ci_id) = pat(&app, &dave, json!({"name": "ci"})).await;
    let (_, other_id) = pat(&app, &dave, json!({"name": "other"})).await;
    // The login sees both; each token only itself.
    let r = app.get("/api/v1/auth/tokens", Some(&dave)).await;
    assert_eq!(r.body.as_array().unwrap().len(), 2, "{}", r.text);
    let r = app.get("/api/v1/auth/tokens", Some(&ci)).await;
    let ids: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [ci_id.as_str()], "{}", r.text);
    app.get(&format!("/api/v1/auth/tokens/{other_id}"), Some(&ci))
        .await
        .assert_problem(404, "token_not_found");
    app.delete(&format!("/api/v1/auth/tokens/{other_id}"), Some(&ci))
        .await
        .assert_problem(404, "token_not_found");
    // A read-only token still gets WebSocket tickets (with its own caps).
    let (ro, _) = pat(&app, &dave, json!({"name": "ro", "read_only": true})).await;
    let r = app
        .post(
            "/api/v1/auth/ws-ticket",
            Some(&ro),
            json!({"path": "/api/v1/events/ws"}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    // And revoking itself works.
    let r = app
        .delete(&format!("/api/v1/auth/tokens/{ci_id}"), Some(&ci))
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    app.get("/api/v1/auth/me", Some(&ci))
        .await
        .assert_problem(401, "invalid_token");
});
