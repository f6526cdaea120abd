//! Teams (issue 13, item 1): admins group users and grant the team roles
//! in projects; a member's role in a project is the highest of its own and
//! its teams'; changes apply at once, to requests and to open sockets.

use reqwest::Method;
use serde_json::json;

use crate::db_test;
use crate::helpers::*;
use crate::revocation::closed;
use crate::tokens::pat;

async fn project(app: &TestApp, admin: &str, name: &str) {
    let r = app
        .post("/api/v1/projects", Some(admin), json!({"name": name}))
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text);
}

/// Creating a profile needs `project:operate` and no container runtime.
async fn make_profile(app: &TestApp, token: &str, project: &str, name: &str) -> Reply {
    app.post(
        &format!("/api/v1/profiles?project={project}"),
        Some(token),
        json!({"name": name}),
    )
    .await
}

db_test!(teams_grant_their_members_roles_at_once, |app| {
    let admin = app.admin_token().await;
    project(&app, &admin, "tp").await;
    let alice = app.user_with_role(&admin, "tm-alice", None).await;
    app.get("/api/v1/projects/tp", Some(&alice))
        .await
        .assert_problem(403, "permission_denied");

    let r = app
        .post(
            "/api/v1/teams",
            Some(&admin),
            json!({"name": "devs", "description": "the developers"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text);
    assert_eq!(r.header("location"), Some("/api/v1/teams/devs"));
    assert_eq!(
        (&r.body["members"], &r.body["projects"]),
        (&json!([]), &json!([]))
    );
    app.post("/api/v1/teams", Some(&admin), json!({"name": "devs"}))
        .await
        .assert_problem(409, "name_taken");

    // A grant to a team reaches only its members.
    let r = app
        .put(
            "/api/v1/teams/devs/projects/tp",
            Some(&admin),
            json!({"role": "operator"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    assert_eq!(
        r.body["projects"],
        json!([{"project": "tp", "role": "operator"}])
    );
    app.get("/api/v1/projects/tp", Some(&alice))
        .await
        .assert_problem(403, "permission_denied");
    let r = app
        .put(
            "/api/v1/teams/devs/members/tm-alice",
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    assert_eq!(r.body["members"], json!(["tm-alice"]));
    // Adding again changes nothing.
    let r = app
        .put(
            "/api/v1/teams/devs/members/tm-alice",
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.body["members"], json!(["tm-alice"]), "{}", r.text);

    // At once, with the same access token.
    let r = app.get("/api/v1/projects/tp", Some(&alice)).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    let r = make_profile(&app, &alice, "tp", "from-team").await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text);
    let me = app.get("/api/v1/auth/me", Some(&alice)).await;
    assert_eq!(
        me.body["projects"],
        json!([{"project": "tp", "role": "operator"}]),
        "{}",
        me.text
    );
    let u = app.get("/api/v1/users/tm-alice", Some(&admin)).await;
    assert_eq!(
        (&u.body["teams"], &u.body["projects"]),
        (&json!(["devs"]), &json!([])),
        "{}",
        u.text
    );

    // The highest role counts, whichever holds it.
    app.grant(&admin, "tm-alice", "tp", "viewer").await;
    let r = make_profile(&app, &alice, "tp", "own-viewer").await;
    assert_eq!(
        r.status.as_u16(),
        201,
        "team operator beats own viewer: {}",
        r.text
    );
    let r = app
        .put(
            "/api/v1/teams/devs/projects/tp",
            Some(&admin),
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    make_profile(&app, &alice, "tp", "both-viewer")
        .await
        .assert_problem(403, "permission_denied");
    app.grant(&admin, "tm-alice", "tp", "operator").await;
    let r = make_profile(&app, &alice, "tp", "own-operator").await;
    assert_eq!(
        r.status.as_u16(),
        201,
        "own operator beats team viewer: {}",
        r.text
    );

    // A personal access token stays under its cap whatever the teams give.
    app.put(
        "/api/v1/teams/devs/projects/tp",
        Some(&admin),
        json!({"role": "admin"}),
    )
    .await;
    let (capped, _) = pat(&app, &alice, json!({"role_cap": "viewer"})).await;
    make_profile(&app, &capped, "tp", "capped")
        .await
        .assert_problem(403, "permission_denied");
    assert_eq!(
        app.get("/api/v1/projects/tp", Some(&capped))
            .await
            .status
            .as_u16(),
        200
    );

    // Only the team holds a role now; an open socket that needs it closes
    // when the member leaves, and requests are refused at once.
    let r = app
        .delete("/api/v1/users/tm-alice/projects/tp", Some(&admin))
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let mut socket = app
        .ws_ticketed(&alice, "/api/v1/events/ws?project=tp")
        .await
        .expect("opens with the team's role");
    let r = app
        .delete("/api/v1/teams/devs/members/tm-alice", Some(&admin))
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let (code, reason, _) = closed(&mut socket).await;
    assert_eq!(
        (code, reason.as_str()),
        (4403, "permission `project:view` lost in project `tp`")
    );
    app.get("/api/v1/projects/tp", Some(&alice))
        .await
        .assert_problem(403, "permission_denied");
    app.delete("/api/v1/teams/devs/members/tm-alice", Some(&admin))
        .await
        .assert_problem(404, "member_not_found");

    // Deleting the team takes its grants away too.
    app.put(
        "/api/v1/teams/devs/members/tm-alice",
        Some(&admin),
        json!({}),
    )
    .await;
    assert_eq!(
        app.get("/api/v1/projects/tp", Some(&alice))
            .await
            .status
            .as_u16(),
        200
    );
    let mut socket = app
        .ws_ticketed(&alice, "/api/v1/events/ws?project=tp")
        .await
        .expect("opens with the team's role");
    let r = app.delete("/api/v1/teams/devs", Some(&admin)).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let (code, _, _) = closed(&mut socket).await;
    assert_eq!(code, 4403);
    app.get("/api/v1/projects/tp", Some(&alice))
        .await
        .assert_problem(403, "permission_denied");
    app.get("/api/v1/teams/devs", Some(&admin))
        .await
        .assert_problem(404, "team_not_found");
    let u = app.get("/api/v1/users/tm-alice", Some(&admin)).await;
    assert_eq!(u.body["teams"], json!([]), "{}", u.text);
});

db_test!(teams_are_for_admins_and_outlive_nothing, |app| {
    let admin = app.admin_token().await;
    let op = app.user_with_role(&admin, "tm-op", Some("operator")).await;
    app.user_with_role(&admin, "tm-bob", None).await;
    for (method, path, body) in [
        (Method::GET, "/api/v1/teams", None),
        (Method::POST, "/api/v1/teams", Some(json!({"name": "ops"}))),
        (Method::GET, "/api/v1/teams/ops", None),
        (Method::DELETE, "/api/v1/teams/ops", None),
        (Method::PUT, "/api/v1/teams/ops/members/tm-op", None),
        (
            Method::PUT,
            "/api/v1/teams/ops/projects/default",
            Some(json!({"role": "admin"})),
        ),
    ] {
        let mut rb = app.request(method.clone(), path, Some(&op));
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        app.send(rb).await.assert_problem(403, "permission_denied");
    }

    // Bad names are refused before anything is stored.
    for bad in ["9ops", "ops_", "-x", ""] {
        let r = app
            .post("/api/v1/teams", Some(&admin), json!({"name": bad}))
            .await;
        assert!(
            matches!(r.status.as_u16(), 400 | 422),
            "{bad:?}: {} {}",
            r.status,
            r.text
        );
    }
    let r = app
        .post(
            "/api/v1/teams",
            Some(&admin),
            json!({"name": "ops", "description": "a\u{7}b"}),
        )
        .await;
    assert!(matches!(r.status.as_u16(), 400 | 422), "{}", r.text);

    let r = app
        .post("/api/v1/teams", Some(&admin), json!({"name": "ops"}))
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text);
    let r = app
        .send(
            app.request(Method::PATCH, "/api/v1/teams/ops", Some(&admin))
                .json(&json!({"description": "on call"})),
        )
        .await;
    assert_eq!(r.body["description"], "on call", "{}", r.text);

    // Missing things are named.
    app.put("/api/v1/teams/nope/members/tm-bob", Some(&admin), json!({}))
        .await
        .assert_problem(404, "team_not_found");
    app.put("/api/v1/teams/ops/members/nobody", Some(&admin), json!({}))
        .await
        .assert_problem(404, "user_not_found");
    app.delete("/api/v1/teams/ops/projects/default", Some(&admin))
        .await
        .assert_problem(404, "grant_not_found");

    // Adding rights needs a login; taking them away does not.
    let (admin_pat, _) = pat(&app, &admin, json!({})).await;
    app.put(
        "/api/v1/teams/ops/members/tm-bob",
        Some(&admin_pat),
        json!({}),
    )
    .await
    .assert_problem(403, "token_not_allowed");
    app.put(
        "/api/v1/teams/ops/projects/default",
        Some(&admin_pat),
        json!({"role": "admin"}),
    )
    .await
    .assert_problem(403, "token_not_allowed");
    app.put("/api/v1/teams/ops/members/tm-bob", Some(&admin), json!({}))
        .await;
    app.put(
        "/api/v1/teams/ops/projects/default",
        Some(&admin),
        json!({"role": "viewer"}),
    )
    .await;
    let r = app
        .delete("/api/v1/teams/ops/projects/default", Some(&admin_pat))
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);

    // A deleted user leaves its teams; a deleted project its team grants
    // (a project made again under that name gives nobody a role back).
    project(&app, &admin, "gone").await;
    app.put(
        "/api/v1/teams/ops/projects/gone",
        Some(&admin),
        json!({"role": "operator"}),
    )
    .await;
    let bob = app.login("tm-bob", PASSWORD).await.0;
    assert_eq!(
        app.get("/api/v1/projects/gone", Some(&bob))
            .await
            .status
            .as_u16(),
        200
    );
    let r = app.delete("/api/v1/projects/gone", Some(&admin)).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    project(&app, &admin, "gone").await;
    app.get("/api/v1/projects/gone", Some(&bob))
        .await
        .assert_problem(403, "permission_denied");
    let t = app.get("/api/v1/teams/ops", Some(&admin)).await;
    assert_eq!(t.body["projects"], json!([]), "{}", t.text);
    let r = app.delete("/api/v1/users/tm-bob", Some(&admin)).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let t = app.get("/api/v1/teams/ops", Some(&admin)).await;
    assert_eq!(t.body["members"], json!([]), "{}", t.text);

    let list = app.get("/api/v1/teams", Some(&admin)).await;
    assert_eq!(list.body["total"], 1, "{}", list.text);
    assert_eq!(list.body["items"][0]["name"], "ops");
});
