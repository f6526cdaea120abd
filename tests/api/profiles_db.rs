//! The embedded backend's profiles in both databases (SQLite and PostgreSQL):
//! `default` gets its row when first changed, then is updated in place;
//! rename and delete. No instance is made (no LXC needed).

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::db_test;

db_test!(profiles_are_kept_per_project, |app| {
    let admin = app.admin_token().await;
    let r = app
        .post(
            "/api/v1/projects",
            Some(&admin),
            json!({"name": "team-p", "config": {"features.images": "false"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // `default` changed twice: first stored, then updated in place.
    for (memory, description) in [("256MiB", "first"), ("512MiB", "second")] {
        let r = app
            .send(
                app.request(
                    Method::PATCH,
                    "/api/v1/profiles/default?project=team-p",
                    Some(&admin),
                )
                .json(&json!({"description": description, "config": {"limits.memory": memory}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["config"]["limits.memory"], memory);
        assert_eq!(r.body["devices"]["root"]["path"], "/", "{}", r.text);
    }
    // Another project's `default` is its own.
    let d = app.get("/api/v1/profiles/default", Some(&admin)).await;
    assert_eq!(d.body["config"], json!({}), "{}", d.text);

    let r = app
        .post(
            "/api/v1/profiles?project=team-p",
            Some(&admin),
            json!({"name": "big", "config": {"limits.cpu": "2"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    app.post(
        "/api/v1/profiles?project=team-p",
        Some(&admin),
        json!({"name": "big"}),
    )
    .await
    .assert_problem(409, "conflict");
    app.get("/api/v1/profiles/big", Some(&admin))
        .await
        .assert_problem(404, "profile_not_found");
    let r = app
        .post(
            "/api/v1/profiles/big/rename?project=team-p",
            Some(&admin),
            json!({"name": "huge"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["config"]["limits.cpu"], "2");
    let list = app
        .get("/api/v1/profiles?project=team-p&expand=false", Some(&admin))
        .await;
    assert_eq!(
        list.body["items"],
        json!(["default", "huge"]),
        "{}",
        list.text
    );
    // A project with profiles of its own but `default` is not empty.
    app.delete("/api/v1/projects/team-p", Some(&admin))
        .await
        .assert_problem(409, "conflict");
    let r = app
        .delete("/api/v1/profiles/huge?project=team-p", Some(&admin))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = app.delete("/api/v1/projects/team-p", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    // A project made again under that name starts with the built-in `default`.
    let r = app
        .post("/api/v1/projects", Some(&admin), json!({"name": "team-p"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let d = app
        .get("/api/v1/profiles/default?project=team-p", Some(&admin))
        .await;
    assert_eq!(d.body["config"], json!({}), "{}", d.text);
    app.get("/api/v1/profiles?project=nope", Some(&admin))
        .await
        .assert_problem(404, "project_not_found");
    app.post(
        "/api/v1/profiles?project=nope",
        Some(&admin),
        json!({"name": "x"}),
    )
    .await
    .assert_problem(404, "project_not_found");
});
