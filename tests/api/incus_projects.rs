//! Projects through lxgate in front of the real private incusd: limits,
//! usage, and who sees which project.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::incus_instances::{Cleanup, incus_app, unique};
use crate::incus_storage::{IncusUndo, incus_ok};

fn alias() -> String {
    std::env::var("LXGATE_TEST_INCUS_IMAGE_ALIAS").unwrap_or_else(|_| "busybox".into())
}

#[tokio::test]
async fn project_limits_usage_and_visibility() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let operator = app.user_with_role(&admin, "op", Some("operator")).await;
    let a = unique("prj-a");
    let b = unique("prj-b");
    // Projects go last, after the instances (declared below) are gone.
    let _undo = IncusUndo::new(&[&["project", "delete", &a], &["project", "delete", &b]]);
    let first = unique("one");
    let second = unique("two");
    let _instances = Cleanup(vec![
        (a.clone(), first.clone()),
        (a.clone(), second.clone()),
    ]);

    // Create: admins only. The image comes from `default`; the project is
    // restricted and its own `default` profile gets the root disk.
    let body = json!({"name": a, "description": "team A",
        "config": {"limits.instances": "1", "features.images": "false"}});
    app.post("/api/v1/projects", Some(&operator), body.clone())
        .await
        .assert_problem(403, "permission_denied");
    app.post("/api/v1/projects", Some(&admin), json!({"name": "1bad"}))
        .await
        .assert_problem(422, "validation_failed");
    let made = app
        .post("/api/v1/projects", Some(&admin), body.clone())
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    assert_eq!(made.body["name"], a.as_str());
    assert_eq!(made.body["config"]["limits.instances"], "1");
    assert_eq!(
        made.header("location"),
        Some(format!("/api/v1/projects/{a}").as_str())
    );
    app.post("/api/v1/projects", Some(&admin), body)
        .await
        .assert_problem(409, "conflict");
    let r = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": unique("prj-x"), "config": {"bogus.key": "1"}}),
        )
        .await;
    r.assert_problem(400, "bad_request");
    let made_b = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": b, "config": {"features.images": "false"}}),
        )
        .await;
    assert_eq!(made_b.status, StatusCode::CREATED, "{}", made_b.text);

    // State: usage against the limit.
    let state_path = format!("/api/v1/projects/{a}/state");
    let st = app.get(&state_path, Some(&admin)).await;
    assert_eq!(st.status, StatusCode::OK, "{}", st.text);
    assert_eq!(
        st.body["resources"]["instances"],
        json!({"Limit": 1, "Usage": 0}),
        "{}",
        st.text
    );
    assert_eq!(st.body["resources"]["memory"]["Limit"], -1);

    // One instance fits; the second is refused by Incus with a clear 409.
    let r = app
        .post(
            &format!("/api/v1/instances?project={a}&wait=60"),
            Some(&operator),
            json!({"name": first, "source": {"type": "image", "alias": alias()}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let st = app.get(&state_path, Some(&admin)).await;
    assert_eq!(st.body["resources"]["instances"]["Usage"], 1, "{}", st.text);
    assert_eq!(
        st.body["resources"]["containers"]["Usage"], 1,
        "{}",
        st.text
    );
    let r = app
        .post(
            &format!("/api/v1/instances?project={a}&wait=60"),
            Some(&operator),
            json!({"name": second, "source": {"type": "image", "alias": alias()}}),
        )
        .await;
    r.assert_problem(409, "conflict");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("maximum number of instances"),
        "{}",
        r.text
    );

    // PATCH the description with the ETag; a stale ETag is 412.
    let path = format!("/api/v1/projects/{a}");
    let got = app.get(&path, Some(&admin)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["description"], "team A");
    let etag = got.header("etag").expect("ETag").to_owned();
    let patch = |etag: &str, desc: &str| {
        app.request(Method::PATCH, &path, Some(&admin))
            .header("if-match", etag)
            .json(&json!({"description": desc}))
    };
    let ok = app.send(patch(&etag, "team A, renamed")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.body["description"], "team A, renamed");
    assert_eq!(
        ok.body["config"]["limits.instances"], "1",
        "PATCH keeps config"
    );
    app.send(patch(&etag, "stale"))
        .await
        .assert_problem(412, "precondition_failed");
    app.send(
        app.request(Method::PATCH, &path, Some(&operator))
            .json(&json!({"description": "x"})),
    )
    .await
    .assert_problem(403, "permission_denied");
    assert!(incus_ok(&["project", "show", &a]).contains("team A, renamed"));

    // A user with a role only in A sees only A.
    let scoped = app.user_with_role(&admin, "scoped", None).await;
    app.grant(&admin, "scoped", &a, "viewer").await;
    let list = app.get("/api/v1/projects", Some(&scoped)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let names: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, vec![a.as_str()], "{}", list.text);
    assert_eq!(list.body["total"], 1);
    let list = app
        .get("/api/v1/projects?expand=false", Some(&scoped))
        .await;
    assert_eq!(list.body["items"], json!([a]));
    assert_eq!(app.get(&path, Some(&scoped)).await.status, StatusCode::OK);
    assert_eq!(
        app.get(&state_path, Some(&scoped)).await.status,
        StatusCode::OK
    );
    let r = app
        .get(&format!("/api/v1/projects/{b}"), Some(&scoped))
        .await;
    r.assert_problem(403, "permission_denied");
    assert_eq!(r.body["project"], b.as_str());
    app.get(&format!("/api/v1/projects/{b}/state"), Some(&scoped))
        .await
        .assert_problem(403, "permission_denied");
    app.get("/api/v1/projects/default", Some(&scoped))
        .await
        .assert_problem(403, "permission_denied");
    app.get(&format!("{path}?project={b}"), Some(&scoped))
        .await
        .assert_problem(400, "invalid_query");
    app.send(app.request(Method::DELETE, &path, Some(&scoped)))
        .await
        .assert_problem(403, "permission_denied");
    // Admins (and global roles) see every project.
    let all = app
        .get("/api/v1/projects?limit=1000", Some(&operator))
        .await;
    let names: Vec<&str> = all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for p in ["default", a.as_str(), b.as_str()] {
        assert!(names.contains(&p), "{p} in {names:?}");
    }

    // Deleting: not while it holds an instance, never `default`.
    app.send(app.request(Method::DELETE, &path, Some(&admin)))
        .await
        .assert_problem(409, "conflict");
    app.send(app.request(Method::DELETE, "/api/v1/projects/default", Some(&admin)))
        .await
        .assert_problem(409, "default_project");
    let r = app
        .send(app.request(
            Method::DELETE,
            &format!("/api/v1/instances/{first}?project={a}&wait=60"),
            Some(&operator),
        ))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    for p in [&a, &b] {
        let r = app
            .send(app.request(
                Method::DELETE,
                &format!("/api/v1/projects/{p}"),
                Some(&admin),
            ))
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    }
    app.get(&path, Some(&admin))
        .await
        .assert_problem(404, "project_not_found");
    app.get(&state_path, Some(&admin))
        .await
        .assert_problem(404, "project_not_found");
    assert!(!incus_ok(&["project", "list", "--format", "csv"]).contains(&a));
    // Grants die with their project: re-creating the name gives nobody a role.
    let me = app.get("/api/v1/auth/me", Some(&scoped)).await;
    assert!(
        me.body["projects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["project"] != a.as_str()),
        "{}",
        me.text
    );
}
