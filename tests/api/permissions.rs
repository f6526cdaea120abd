//! Explainable permissions (issue 13, item 5): `auth/me/permissions`,
//! `auth/can`, and 403s that name the permission, the project and the
//! role that would grant it.

use serde_json::{Value, json};

use crate::db_test;
use crate::helpers::*;
use crate::tokens::pat;

async fn can(app: &TestApp, token: &str, body: Value) -> Value {
    let r = app.post("/api/v1/auth/can", Some(token), body).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    r.body
}

db_test!(permissions_say_what_and_where_from, |app| {
    let admin = app.admin_token().await;
    for p in ["pa", "pb", "pc"] {
        let r = app
            .post("/api/v1/projects", Some(&admin), json!({"name": p}))
            .await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.text);
    }
    let alice = app
        .user_with_role(&admin, "perm-alice", Some("viewer"))
        .await;
    app.grant(&admin, "perm-alice", "pa", "viewer").await;
    for (team, project, role) in [("web", "pa", "operator"), ("ops", "pb", "admin")] {
        let r = app
            .post("/api/v1/teams", Some(&admin), json!({"name": team}))
            .await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.text);
        app.put_ok(
            &format!("/api/v1/teams/{team}/members/perm-alice"),
            Some(&admin),
            json!({}),
        )
        .await;
        app.put_ok(
            &format!("/api/v1/teams/{team}/projects/{project}"),
            Some(&admin),
            json!({"role": role}),
        )
        .await;
    }

    let r = app.get("/api/v1/auth/me/permissions", Some(&alice)).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    let me = &r.body;
    assert_eq!(me["token"], Value::Null);
    assert_eq!(me["global"]["role"], "viewer", "{}", r.text);
    assert_eq!(me["global"]["permissions"], json!([]));
    assert_eq!(me["every_project"]["permissions"], json!(["project:view"]));
    let projects = me["projects"].as_array().unwrap();
    assert_eq!(projects.len(), 2, "{}", r.text);
    assert_eq!(projects[0]["project"], "pa");
    assert_eq!(projects[0]["role"], "operator");
    assert_eq!(
        projects[0]["permissions"],
        json!(["project:view", "project:operate"])
    );
    assert_eq!(
        projects[0]["sources"],
        json!([
            {"source": "global", "role": "viewer"},
            {"source": "user", "role": "viewer"},
            {"source": "team", "team": "web", "role": "operator"}
        ])
    );
    assert_eq!(projects[1]["project"], "pb");
    assert_eq!(projects[1]["role"], "admin");

    // Asking: allowed, with where the role comes from.
    let a = can(
        &app,
        &alice,
        json!({"action": "project:operate", "project": "pa"}),
    )
    .await;
    assert_eq!(a["allowed"], true, "{a}");
    assert_eq!(
        (&a["role"], &a["required_role"]),
        (&json!("operator"), &json!("operator"))
    );
    assert!(
        a["reason"]
            .as_str()
            .unwrap()
            .contains("team `web` operator"),
        "{a}"
    );
    // Denied: the role held and who could grant the one needed.
    let d = can(
        &app,
        &alice,
        json!({"action": "project:operate", "project": "pc"}),
    )
    .await;
    assert_eq!(d["allowed"], false, "{d}");
    assert_eq!(d["role"], "viewer");
    assert!(
        d["reason"].as_str().unwrap().contains("global viewer"),
        "{d}"
    );
    // `default` when no project is given; server-wide ones have none.
    let d = can(&app, &alice, json!({"action": "project:operate"})).await;
    assert_eq!(d["project"], "default", "{d}");
    let g = can(
        &app,
        &alice,
        json!({"action": "users:manage", "project": "pb"}),
    )
    .await;
    assert_eq!(
        (&g["allowed"], &g["project"], &g["required_role"]),
        (&json!(false), &Value::Null, &json!("admin")),
        "a project admin is no global admin: {g}"
    );
    let r = app
        .post(
            "/api/v1/auth/can",
            Some(&alice),
            json!({"action": "root:everything"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");

    // What `can` says is what the API does: the same denial as a 403 that
    // names the permission, the project and the role needed.
    let r = app
        .post(
            "/api/v1/profiles?project=pc",
            Some(&alice),
            json!({"name": "x"}),
        )
        .await;
    r.assert_problem(403, "permission_denied");
    assert_eq!(
        (
            &r.body["permission"],
            &r.body["project"],
            &r.body["required_role"]
        ),
        (&json!("project:operate"), &json!("pc"), &json!("operator")),
        "{}",
        r.text
    );
    assert!(r.text.contains("the caller is viewer there"), "{}", r.text);
    let r = app
        .post(
            "/api/v1/profiles?project=pa",
            Some(&alice),
            json!({"name": "x"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "can said allowed: {}", r.text);
    // The instance policy's refusals name the role that could: admin.
    let r = app
        .post(
            "/api/v1/profiles?project=pa",
            Some(&alice),
            json!({"name": "priv", "config": {"security.privileged": "true"}}),
        )
        .await;
    r.assert_problem(403, "policy_denied");
    assert_eq!(r.body["required_role"], "admin", "{}", r.text);

    // Through a capped token: the cap is the reason.
    let (capped, id) = pat(&app, &alice, json!({"role_cap": "viewer"})).await;
    let d = can(
        &app,
        &capped,
        json!({"action": "project:operate", "project": "pa"}),
    )
    .await;
    assert_eq!(d["allowed"], false, "{d}");
    assert!(
        d["reason"].as_str().unwrap().contains("capped at viewer"),
        "{d}"
    );
    let me = app.get("/api/v1/auth/me/permissions", Some(&capped)).await;
    assert_eq!(me.body["token"]["id"], id.as_str(), "{}", me.text);
    assert_eq!(me.body["token"]["role_cap"], "viewer");
    assert_eq!(me.body["projects"][0]["role"], "viewer", "{}", me.text);
    // Limited to a project: nothing server-wide, nothing elsewhere.
    let (scoped, _) = pat(&app, &alice, json!({"projects": ["pb"]})).await;
    let me = app.get("/api/v1/auth/me/permissions", Some(&scoped)).await;
    assert_eq!(
        (&me.body["global"], &me.body["every_project"]),
        (&Value::Null, &Value::Null),
        "{}",
        me.text
    );
    assert_eq!(
        me.body["projects"].as_array().unwrap().len(),
        1,
        "{}",
        me.text
    );
    let d = can(
        &app,
        &scoped,
        json!({"action": "project:view", "project": "pa"}),
    )
    .await;
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("not valid in project `pa`"),
        "{d}"
    );
    // A read-only token may ask, and is told it is read-only.
    let (read_only, _) = pat(&app, &alice, json!({"read_only": true})).await;
    let d = can(
        &app,
        &read_only,
        json!({"action": "project:operate", "project": "pb"}),
    )
    .await;
    assert_eq!(d["allowed"], false, "{d}");
    assert!(d["reason"].as_str().unwrap().contains("read-only"), "{d}");
    let v = can(
        &app,
        &read_only,
        json!({"action": "project:view", "project": "pb"}),
    )
    .await;
    assert_eq!(v["allowed"], true, "{v}");
});
