//! The callers a server keeps in memory follow changes made behind its back
//! (another replica, the shell commands, SQL by hand). A test binary of its
//! own: a change this process makes through lxgate's own code moves the
//! count every server in the process watches, so in the shared binary
//! another test's change could do the work this one checks.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::time::{Duration, Instant};

use serde_json::json;

use helpers::*;

/// `auth/me` of `token` until `done` says its answer shows the change, for
/// at most a second (the view checks the database's count of account
/// changes every 200 ms; PostgreSQL also notifies at once).
async fn within_a_second(app: &TestApp, token: &str, done: impl Fn(&Reply) -> bool) -> Duration {
    app.get_until(
        "/api/v1/auth/me",
        Some(token),
        (Duration::from_secs(1), Duration::from_millis(20)),
        done,
    )
    .await
}

async fn changes_made_elsewhere_reach_the_kept_callers(db: Db) {
    let app = spawn_app(db).await;
    let admin = app.admin_token().await;
    let token = app
        .user_with_role(&admin, "kept-caller", Some("viewer"))
        .await;
    app.put_ok(
        "/api/v1/users/kept-caller/projects/default",
        Some(&admin),
        json!({"role": "operator"}),
    )
    .await;
    for _ in 0..3 {
        let me = app.get("/api/v1/auth/me", Some(&token)).await;
        assert_eq!(me.body["projects"][0]["role"], "operator", "{}", me.text);
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.config.database_url)
        .await
        .unwrap();

    sqlx::query(
        "DELETE FROM project_roles WHERE project = 'default' AND user_id IN (SELECT id FROM users WHERE username = 'kept-caller')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let after = within_a_second(&app, &token, |r| {
        r.status == 200 && r.body["projects"].as_array().is_some_and(|p| p.is_empty())
    })
    .await;
    eprintln!("{db:?}: a removed grant was seen after {after:?}");

    // Without the trigger on `users`, the same kind of change is not seen
    // (for a while): the view does serve what it read, and the trigger is
    // what carries a change made elsewhere.
    let drop_trigger = match db {
        Db::Sqlite => "DROP TRIGGER auth_epoch_users_update",
        Db::Postgres => "DROP TRIGGER auth_epoch ON users",
    };
    // (Once the server has settled the change above: on PostgreSQL it
    // drops what it keeps for a read or two after the count moved.)
    tokio::time::sleep(Duration::from_millis(800)).await;
    sqlx::query(drop_trigger).execute(&pool).await.unwrap();
    assert_eq!(app.get("/api/v1/auth/me", Some(&token)).await.status, 200);
    sqlx::query("UPDATE users SET disabled = 1 WHERE username = 'kept-caller'")
        .execute(&pool)
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let me = app.get("/api/v1/auth/me", Some(&token)).await;
        assert_eq!(me.status, 200, "{db:?}: not kept: {}", me.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Any change the triggers do see brings it in.
    sqlx::query(
        "INSERT INTO project_roles (user_id, project, role, created_at)
         SELECT id, 'other', 'viewer', 0 FROM users WHERE username = 'kept-caller'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let after = within_a_second(&app, &token, |r| r.status == 401).await;
    eprintln!("{db:?}: a disabled account was seen after {after:?}");
    app.get("/api/v1/auth/me", Some(&token))
        .await
        .assert_problem(401, "account_disabled");
}

#[tokio::test]
async fn account_changes_made_elsewhere_reach_the_kept_callers() {
    // One after the other: the two servers would move each other's count.
    changes_made_elsewhere_reach_the_kept_callers(Db::Sqlite).await;
    changes_made_elsewhere_reach_the_kept_callers(Db::Postgres).await;
}
