//! Revocation reaches open sockets and tokens (issue 10, item 3): sockets
//! close with a code and a reason within 5 s of their user being disabled
//! or deleted, changing password, logging out or losing the role they
//! need, on whichever replica the change is made; tickets open only their
//! route and project; logout ends the access token it is called with.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::db_test;
use crate::helpers::*;

/// How long a socket may stay open after its access was revoked.
const WITHIN: Duration = Duration::from_secs(5);

/// Waits (at most `WITHIN`) for the server to close `socket`; returns the
/// close code, the reason and how long it took.
pub async fn closed(socket: &mut ClientSocket) -> (u16, String, Duration) {
    let start = Instant::now();
    loop {
        let msg = tokio::time::timeout_at((start + WITHIN).into(), socket.next())
            .await
            .unwrap_or_else(|_| panic!("the socket is still open {WITHIN:?} after revocation"));
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => {
                let after = start.elapsed();
                eprintln!(
                    "socket closed {} ({}) after {after:?}",
                    frame.code, frame.reason
                );
                return (frame.code.into(), frame.reason.to_string(), after);
            }
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("the socket failed instead of closing: {e}"),
        }
    }
}

/// The socket is still open: no close and no error for a while (events
/// and pings may come).
async fn still_open(socket: &mut ClientSocket, for_: Duration) {
    let deadline = tokio::time::Instant::now() + for_;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("expected the socket to stay open, got {other:?}"),
        }
    }
}

/// Makes project `team` emit a `project-updated` lifecycle event.
async fn touch_project(app: &TestApp, admin: &str, description: &str) {
    let r = app
        .send(
            app.request(Method::PATCH, "/api/v1/projects/team", Some(admin))
                .json(&json!({"description": description})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
}

/// The next text frame within 3 s (`None` if none came; pings are skipped).
async fn next_text(socket: &mut ClientSocket) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("expected an event or nothing, got {other:?}"),
        }
    }
}

async fn patch_user(app: &TestApp, admin: &str, username: &str, body: serde_json::Value) {
    let r = app
        .send(
            app.request(
                Method::PATCH,
                &format!("/api/v1/users/{username}"),
                Some(admin),
            )
            .json(&body),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
}

db_test!(open_sockets_close_when_access_is_revoked, |app| {
    let admin = app.admin_token().await;

    // Disabled: a viewer's events socket (opened with a ticket).
    let viewer = app
        .user_with_role(&admin, "rv-disabled", Some("viewer"))
        .await;
    let mut socket = app
        .ws_ticketed(&viewer, "/api/v1/events/ws")
        .await
        .expect("opens");
    // Untouched users' sockets stay open across checks.
    let bystander = app
        .user_with_role(&admin, "rv-bystander", Some("viewer"))
        .await;
    let mut other = app
        .ws(&format!("/api/v1/events/ws?token={bystander}"))
        .await
        .expect("opens");
    patch_user(&app, &admin, "rv-disabled", json!({"disabled": true})).await;
    let (code, reason, after) = closed(&mut socket).await;
    assert_eq!(
        (code, reason.as_str()),
        (4401, "account disabled"),
        "{after:?}"
    );

    // Deleted.
    let gone = app
        .user_with_role(&admin, "rv-deleted", Some("viewer"))
        .await;
    let mut socket = app
        .ws(&format!("/api/v1/operations/ws?token={gone}"))
        .await
        .expect("opens");
    let r = app.delete("/api/v1/users/rv-deleted", Some(&admin)).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let (code, reason, _) = closed(&mut socket).await;
    assert_eq!((code, reason.as_str()), (4401, "account deleted"));

    // Password changed (by the user itself).
    let (own, _) = {
        app.user_with_role(&admin, "rv-password", Some("operator"))
            .await;
        app.login("rv-password", PASSWORD).await
    };
    let mut socket = app
        .ws_ticketed(&own, "/api/v1/events/ws?project=default")
        .await
        .expect("opens");
    let r = app
        .put(
            "/api/v1/auth/me/password",
            Some(&own),
            json!({"current_password": PASSWORD, "new_password": "another long passphrase"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let (code, reason, _) = closed(&mut socket).await;
    assert_eq!(code, 4401, "{reason}");
    assert!(reason.contains("revoked"), "{reason}");

    // The project role a socket needs is taken away: 4403. A socket without
    // `?project=` needs no particular role and stays, but from then on it
    // gets nothing of that project.
    let r = app
        .post("/api/v1/projects", Some(&admin), json!({"name": "team"}))
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text);
    let member = app.user_with_role(&admin, "rv-member", None).await;
    app.grant(&admin, "rv-member", "team", "viewer").await;
    let mut socket = app
        .ws_ticketed(&member, "/api/v1/events/ws?project=team")
        .await
        .expect("opens");
    let mut unfiltered = app
        .ws_ticketed(&member, "/api/v1/events/ws?type=lifecycle")
        .await
        .expect("opens");
    touch_project(&app, &admin, "before").await;
    let seen = next_text(&mut unfiltered)
        .await
        .expect("an event of `team`");
    assert!(seen.contains("project-updated"), "{seen}");
    let r = app
        .delete("/api/v1/users/rv-member/projects/team", Some(&admin))
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let (code, reason, _) = closed(&mut socket).await;
    assert_eq!(
        (code, reason.as_str()),
        (4403, "permission `project:view` lost in project `team`")
    );
    touch_project(&app, &admin, "after").await;
    assert_eq!(
        next_text(&mut unfiltered).await,
        None,
        "no event of a project it lost"
    );

    // Logout with the access token: sockets opened with it (directly or
    // through a ticket it asked for) close; another login's do not.
    let (first, refresh) = {
        app.user_with_role(&admin, "rv-logout", Some("viewer"))
            .await;
        app.login("rv-logout", PASSWORD).await
    };
    let (second, _) = app.login("rv-logout", PASSWORD).await;
    let mut by_ticket = app
        .ws_ticketed(&first, "/api/v1/events/ws")
        .await
        .expect("opens");
    let mut by_token = app
        .ws(&format!("/api/v1/events/ws?token={first}"))
        .await
        .expect("opens");
    let mut other_login = app
        .ws_ticketed(&second, "/api/v1/events/ws")
        .await
        .expect("opens");
    let r = app
        .post(
            "/api/v1/auth/logout",
            Some(&first),
            json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    for socket in [&mut by_ticket, &mut by_token] {
        let (code, reason, _) = closed(socket).await;
        assert_eq!((code, reason.as_str()), (4401, "logged out"));
    }
    still_open(&mut other_login, Duration::from_secs(3)).await;
    still_open(&mut other, Duration::from_millis(100)).await;
});

db_test!(logout_ends_the_access_token_it_was_called_with, |app| {
    let admin = app.admin_token().await;
    app.user_with_role(&admin, "lo-user", Some("viewer")).await;
    let (access, refresh) = app.login("lo-user", PASSWORD).await;
    let (other, _) = app.login("lo-user", PASSWORD).await;
    // A ticket asked for before the logout dies with its token.
    let ticket = app.ticket(&access, "/api/v1/events/ws").await;
    let r = app
        .post(
            "/api/v1/auth/logout",
            Some(&access),
            json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    app.get("/api/v1/auth/me", Some(&access))
        .await
        .assert_problem(401, "token_revoked");
    let refused = app
        .ws(&format!("/api/v1/events/ws?token={access}"))
        .await
        .expect_err("a logged-out token on a socket");
    assert_eq!(ws_refusal_code(refused), (401, "token_revoked".into()));
    let refused = app
        .ws(&format!("/api/v1/events/ws?ticket={ticket}"))
        .await
        .expect_err("a ticket of a logged-out token");
    assert_eq!(ws_refusal_code(refused), (401, "token_revoked".into()));
    // The refresh token's login is over too; the other login is not.
    let r = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 401, "{}", r.text);
    let r = app.get("/api/v1/auth/me", Some(&other)).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    // Logging out twice, or with a token that does not verify, is harmless.
    let r = app
        .post(
            "/api/v1/auth/logout",
            Some(&access),
            json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
    let r = app
        .post(
            "/api/v1/auth/logout",
            Some("not.a.jwt"),
            json!({"refresh_token": "x"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.text);
});

/// A ticket opens the route and `?project=` it was issued for, nothing
/// else, and is spent by a wrong attempt.
#[tokio::test]
async fn a_ticket_opens_only_its_route_and_project() {
    let app = spawn_app(Db::Sqlite).await;
    let admin = app.admin_token().await;
    let cases = [
        // (issued for, path, project) -> opened on
        (("/api/v1/events/ws", None), "/api/v1/operations/ws"),
        (("/api/v1/events/ws", Some("default")), "/api/v1/events/ws"),
        (
            ("/api/v1/events/ws", None),
            "/api/v1/events/ws?project=default",
        ),
        (
            ("/api/v1/events/ws", Some("default")),
            "/api/v1/events/ws?project=default&project=default",
        ),
        (
            ("/api/v1/instances/c1/exec/ws", None),
            "/api/v1/instances/c2/exec/ws",
        ),
        (
            ("/api/v1/instances/c1/exec/ws", None),
            "/api/v1/instances/c1/console/ws",
        ),
    ];
    for ((path, project), opened_on) in cases {
        let r = app
            .post(
                "/api/v1/auth/ws-ticket",
                Some(&admin),
                json!({"path": path, "project": project}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text);
        let ticket = r.body["ticket"].as_str().unwrap();
        let sep = if opened_on.contains('?') { '&' } else { '?' };
        let refused = app
            .ws(&format!("{opened_on}{sep}ticket={ticket}"))
            .await
            .expect_err("a ticket on another route or project");
        // (A doubled `project` is a malformed query: 400.)
        let status = ws_refusal(refused);
        assert!(
            status == 401 || (status == 400 && opened_on.contains("&project=")),
            "{status}: {path} {project:?} on {opened_on}"
        );
        // Spent by the wrong attempt: not usable on its own route either.
        let q = project.map(|p| format!("project={p}&")).unwrap_or_default();
        let refused = app
            .ws(&format!("{path}?{q}ticket={ticket}"))
            .await
            .expect_err("a spent ticket");
        assert_eq!(ws_refusal(refused), 401);
    }
    // The right route and project open (an exec ticket gets as far as the
    // instance lookup: there is no `c1`).
    let refused = app
        .ws_ticketed(&admin, "/api/v1/instances/c1/exec/ws")
        .await
        .expect_err("no such instance");
    assert_eq!(ws_refusal(refused), 404);
    app.ws_ticketed(&admin, "/api/v1/events/ws?project=default")
        .await
        .expect("its own route");
    app.ws_ticketed(&admin, "/api/v1/operations/ws")
        .await
        .expect("its own route");
}

/// The revocation is in the database, so a socket on one replica closes
/// when the user is disabled through another (two replicas, one PostgreSQL).
#[tokio::test]
async fn revocation_on_one_replica_closes_sockets_on_another() {
    let a = spawn_app(Db::Postgres).await;
    let url = a.config.database_url.clone();
    let b = spawn_app_with(Db::Postgres, &[("DATABASE_URL", &url)]).await;
    let admin = a.admin_token().await;
    let viewer = a.user_with_role(&admin, "replicated", Some("viewer")).await;
    // The ticket is issued by one replica and redeemed by the other.
    let ticket = a.ticket(&viewer, "/api/v1/events/ws").await;
    let mut socket = b
        .ws(&format!("/api/v1/events/ws?ticket={ticket}"))
        .await
        .expect("opens on the other replica");
    patch_user(&a, &admin, "replicated", json!({"disabled": true})).await;
    let (code, reason, _) = closed(&mut socket).await;
    assert_eq!((code, reason.as_str()), (4401, "account disabled"));
}
