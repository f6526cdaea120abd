//! Networks through lxgate in front of the real private incusd.
//!
//! The test bed cannot give a bridge a subnet (no free range Incus would pick,
//! no traffic leaves 127.0.0.1), but Incus accepts a `bridge` with
//! `ipv4.address=none ipv6.address=none`: an addressless host bridge that
//! carries nothing. That is enough to create, read, change, attach, detach
//! and delete a managed network for real.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::incus_instances::{Cleanup, incus_app, unique};
use crate::incus_storage::{IncusUndo, incus_ok};

#[tokio::test]
async fn host_interfaces_are_listed_unmanaged() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let viewer = app.user_with_role(&admin, "viewer", Some("viewer")).await;
    let list = app.get("/api/v1/networks", Some(&viewer)).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let lo = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "lo")
        .unwrap_or_else(|| panic!("lo is listed: {}", list.text))
        .clone();
    assert_eq!(lo["managed"], false);
    assert_eq!(lo["type"], "loopback");
    let names = app
        .get("/api/v1/networks?expand=false", Some(&viewer))
        .await;
    assert!(
        names.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "lo"),
        "{}",
        names.text
    );
    let got = app.get("/api/v1/networks/lo", Some(&viewer)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["managed"], false);
    let st = app.get("/api/v1/networks/lo/state", Some(&viewer)).await;
    assert_eq!(st.status, StatusCode::OK, "{}", st.text);
    assert_eq!(st.body["type"], "loopback");
    assert!(
        st.body["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["address"] == "127.0.0.1"),
        "{}",
        st.text
    );
    // Leases exist only on managed networks.
    app.get("/api/v1/networks/lo/leases", Some(&viewer))
        .await
        .assert_problem(404, "network_not_found");
    app.get("/api/v1/networks/no-such-net", Some(&viewer))
        .await
        .assert_problem(404, "network_not_found");
    app.get("/api/v1/networks/no-such-net/state", Some(&viewer))
        .await
        .assert_problem(404, "network_not_found");
    app.get("/api/v1/networks/a_b", Some(&viewer))
        .await
        .assert_problem(400, "invalid_name");
    // A host interface is not a network an instance can join.
    let inst = unique("nicl");
    let _instance = Cleanup(vec![("default".into(), inst.clone())]);
    incus_ok(&["init", "busybox", &inst]);
    let r = app
        .post(
            &format!("/api/v1/instances/{inst}/nics"),
            Some(&admin),
            json!({"network": "lo", "device": "eth1"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "network");
}

#[tokio::test]
async fn managed_bridge_lifecycle_and_nics() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let operator = app.user_with_role(&admin, "op", Some("operator")).await;
    let viewer = app.user_with_role(&admin, "viewer", Some("viewer")).await;
    // Bridge names are host interface names: at most 15 characters.
    let net = unique("lxt");
    let _undo = IncusUndo::new(&[&["network", "delete", &net]]);

    let body = json!({"name": net, "description": "test bridge",
        "config": {"ipv4.address": "none", "ipv6.address": "none"}});
    app.post("/api/v1/networks", Some(&operator), body.clone())
        .await
        .assert_problem(403, "permission_denied");
    let r = app
        .post(
            "/api/v1/networks",
            Some(&admin),
            json!({"name": net, "type": "vxlan"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["field"], "type");
    let made = app
        .post("/api/v1/networks", Some(&admin), body.clone())
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    assert_eq!(made.body["name"], net.as_str());
    assert_eq!(made.body["type"], "bridge");
    assert_eq!(made.body["managed"], true);
    assert_eq!(made.body["config"]["ipv4.address"], "none");
    assert!(
        made.header("location")
            .unwrap()
            .starts_with("/api/v1/networks/")
    );
    assert!(incus_ok(&["network", "list", "--format", "csv"]).contains(&net));
    app.post("/api/v1/networks", Some(&admin), body)
        .await
        .assert_problem(409, "conflict");

    // Read, change with ETags.
    let path = format!("/api/v1/networks/{net}");
    let got = app.get(&path, Some(&viewer)).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body["description"], "test bridge");
    let etag = got.header("etag").expect("ETag").to_owned();
    let patch = |etag: &str, note: &str| {
        app.request(Method::PATCH, &path, Some(&admin))
            .header("if-match", etag)
            .json(&json!({"config": {"user.note": note}}))
    };
    let ok = app.send(patch(&etag, "one")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.body["config"]["user.note"], "one");
    assert_eq!(
        ok.body["config"]["ipv4.address"], "none",
        "PATCH merges config"
    );
    app.send(patch(&etag, "two"))
        .await
        .assert_problem(412, "precondition_failed");
    app.send(
        app.request(Method::PATCH, &path, Some(&operator))
            .json(&json!({"description": "x"})),
    )
    .await
    .assert_problem(403, "permission_denied");
    let put = app
        .send(app.request(Method::PUT, &path, Some(&admin)).json(&json!({
            "description": "replaced",
            "config": {"ipv4.address": "none", "ipv6.address": "none"}})))
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    assert_eq!(put.body["description"], "replaced");
    assert!(
        put.body["config"].get("user.note").is_none(),
        "{}",
        put.text
    );
    assert_eq!(
        incus_ok(&["network", "get", &net, "--property", "description"]).trim(),
        "replaced"
    );

    // State and leases of the bridge.
    let st = app.get(&format!("{path}/state"), Some(&viewer)).await;
    assert_eq!(st.status, StatusCode::OK, "{}", st.text);
    assert_eq!(st.body["type"], "broadcast");
    assert!(st.body["bridge"]["id"].is_string(), "{}", st.text);
    assert!(st.body["hwaddr"].as_str().is_some_and(|h| !h.is_empty()));
    let leases = app.get(&format!("{path}/leases"), Some(&viewer)).await;
    assert_eq!(leases.status, StatusCode::OK, "{}", leases.text);
    assert_eq!(leases.body, json!([]));

    // NIC attach / detach on a stopped container.
    let inst = unique("nic");
    let _instance = Cleanup(vec![("default".into(), inst.clone())]);
    incus_ok(&["init", "busybox", &inst]);
    let nics = format!("/api/v1/instances/{inst}/nics");
    let req = json!({"network": net, "device": "eth1"});
    app.post(&nics, Some(&viewer), req.clone())
        .await
        .assert_problem(403, "permission_denied");
    app.post(
        &nics,
        Some(&operator),
        json!({"network": "no-such-net", "device": "eth1"}),
    )
    .await
    .assert_problem(404, "network_not_found");
    let r = app
        .post(
            &nics,
            Some(&operator),
            json!({"network": net, "device": "a-very-long-device-name"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    let r = app.post(&nics, Some(&operator), req.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["devices"]["eth1"],
        json!({"type": "nic", "network": net, "name": "eth1"})
    );
    assert_eq!(
        incus_ok(&["config", "device", "get", &inst, "eth1", "network"]).trim(),
        net
    );
    app.post(&nics, Some(&operator), req)
        .await
        .assert_problem(409, "device_exists");
    let used = app.get(&path, Some(&viewer)).await;
    assert_eq!(
        used.body["used_by"],
        json!([format!("/1.0/instances/{inst}")]),
        "{}",
        used.text
    );
    // Incus refuses to delete a network in use: a conflict with its state.
    let r = app
        .send(app.request(Method::DELETE, &path, Some(&admin)))
        .await;
    r.assert_problem(409, "conflict");
    // Only NICs are detached here.
    app.send(app.request(
        Method::DELETE,
        &format!("{nics}/root?wait=30"),
        Some(&operator),
    ))
    .await
    .assert_problem(409, "device_from_profile");
    let r = app
        .send(app.request(
            Method::DELETE,
            &format!("{nics}/eth1?wait=30"),
            Some(&operator),
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let i = app
        .get(&format!("/api/v1/instances/{inst}"), Some(&viewer))
        .await;
    assert!(i.body["devices"].get("eth1").is_none(), "{}", i.text);
    app.send(app.request(Method::DELETE, &format!("{nics}/eth1"), Some(&operator)))
        .await
        .assert_problem(404, "device_not_found");

    // Delete: admins only.
    app.send(app.request(Method::DELETE, &path, Some(&operator)))
        .await
        .assert_problem(403, "permission_denied");
    let r = app
        .send(app.request(Method::DELETE, &path, Some(&admin)))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    app.get(&path, Some(&viewer))
        .await
        .assert_problem(404, "network_not_found");
    assert!(!incus_ok(&["network", "list", "--format", "csv"]).contains(&net));
}
