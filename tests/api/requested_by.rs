//! Who did it (issue 13, item 7): operations and their events say which
//! lxgate user started them and how it authenticated (`requested_by`),
//! on both databases. Against the real incusd: incus_events.rs.

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::db_test;
use crate::embedded::import_busybox;
use crate::helpers::*;
use crate::tokens::pat;

/// Reads operation events of `id` until one has `status_code` 200.
async fn finished_event(socket: &mut ClientSocket, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("the operation's events within 30 s")
            .expect("the socket stays open")
            .expect("a frame");
        if let Message::Text(t) = msg {
            let e: Value = serde_json::from_str(&t).unwrap();
            if e["metadata"]["id"] == id && e["metadata"]["status_code"] == 200 {
                return e;
            }
        }
    }
}

db_test!(operations_say_who_started_them, |app| {
    let admin = app.admin_token().await;
    let (secret, token_id) = pat(&app, &admin, json!({"name": "ci"})).await;
    let mut ops = app
        .ws_ticketed(&admin, "/api/v1/operations/ws")
        .await
        .expect("subscribe");

    // Started with a personal access token: its answer, its record and
    // its events say so.
    let fingerprint = import_busybox(&app, &secret).await;
    let list = app
        .get("/api/v1/operations?project=default", Some(&admin))
        .await;
    assert_eq!(list.status.as_u16(), 200, "{}", list.text);
    let op = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["metadata"]["fingerprint"] == fingerprint.as_str())
        .unwrap_or_else(|| panic!("the import among {}", list.text))
        .clone();
    let by = json!({"username": ADMIN, "auth_method": "pat", "token_id": token_id});
    assert_eq!(op["requested_by"], by, "{op}");
    let id = op["id"].as_str().unwrap();
    let one = app
        .get(&format!("/api/v1/operations/{id}"), Some(&admin))
        .await;
    assert_eq!(one.body["requested_by"], by, "{}", one.text);
    let event = finished_event(&mut ops, id).await;
    assert_eq!(event["metadata"]["requested_by"], by, "{event}");

    // Started after a login: `bearer`, no token id.
    let r = app
        .delete(
            &format!("/api/v1/images/{fingerprint}?wait=60"),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    assert_eq!(
        r.body["requested_by"],
        json!({"username": ADMIN, "auth_method": "bearer"}),
        "{}",
        r.text
    );
    let event = finished_event(&mut ops, r.body["id"].as_str().unwrap()).await;
    assert_eq!(
        event["metadata"]["requested_by"]["auth_method"], "bearer",
        "{event}"
    );
});
