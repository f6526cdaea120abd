//! An instance's logs, console log and files through lxgate in front of the
//! real private incusd.

use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::incus_instances::{Cleanup, incus_app, unique};
use crate::incus_snapshots::{container, pull, push};

#[tokio::test]
async fn logs_and_console_log() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let viewer = app.user_with_role(&admin, "viewer", Some("viewer")).await;
    let name = unique("logs");
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);
    container(&app, &admin, &name, true).await;
    let base = format!("/api/v1/instances/{name}");

    let logs = app.get(&format!("{base}/logs"), Some(&viewer)).await;
    assert_eq!(logs.status, StatusCode::OK, "{}", logs.text);
    let files: Vec<&str> = logs.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(files.contains(&"lxc.log"), "{files:?}");
    let log = app
        .get(&format!("{base}/logs/lxc.log"), Some(&viewer))
        .await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.text);
    assert_eq!(
        log.header("content-type"),
        Some("text/plain; charset=utf-8")
    );

    // Busybox's init greets on the console soon after the start.
    let mut console = String::new();
    for _ in 0..50 {
        let r = app.get(&format!("{base}/console/log"), Some(&viewer)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        console = r.text;
        if !console.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!console.is_empty(), "the console log stayed empty");

    for bad in [
        "a..b",
        "..x",
        "bad%20name",
        &"x".repeat(256),
        "no-such.log",
        "console.log",
    ] {
        app.get(&format!("{base}/logs/{bad}"), Some(&admin))
            .await
            .assert_problem(400, "invalid_name");
    }
    // A container has no qemu.log (names Incus does not serve are refused
    // above, before Incus is asked).
    app.get(&format!("{base}/logs/qemu.log"), Some(&admin))
        .await
        .assert_problem(404, "log_not_found");
    app.get("/api/v1/instances/no-such-instance/logs", Some(&admin))
        .await
        .assert_problem(404, "instance_not_found");
    app.get(
        "/api/v1/instances/no-such-instance/console/log",
        Some(&admin),
    )
    .await
    .assert_problem(404, "instance_not_found");
}

#[tokio::test]
async fn file_push_and_pull() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let viewer = app.user_with_role(&admin, "viewer", Some("viewer")).await;
    let name = unique("files");
    let _cleanup = Cleanup(vec![("default".into(), name.clone())]);
    container(&app, &admin, &name, false).await;
    let files = format!("/api/v1/instances/{name}/files");

    // Every byte value, and more than MAX_BODY_BYTES (1 MiB), streamed in.
    let content: Vec<u8> = (0..3 * 1024 * 1024 + 7)
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        content.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = app
        .send(
            app.request(
                Method::POST,
                &format!("{files}?path=/root/blob.bin&mode=0600&uid=1000&gid=100"),
                Some(&admin),
            )
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);

    let resp = app
        .request(
            Method::GET,
            &format!("{files}?path=/root/blob.bin"),
            Some(&admin),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["content-length"], content.len().to_string().as_str());
    assert_eq!(h["x-file-type"], "file");
    assert_eq!(h["x-file-mode"], "0600");
    assert_eq!(h["x-file-uid"], "1000");
    assert_eq!(h["x-file-gid"], "100");
    assert_eq!(
        h["content-disposition"],
        "attachment; filename=\"blob.bin\""
    );
    let pulled = resp.bytes().await.unwrap();
    assert!(pulled.as_ref() == content.as_slice(), "pulled bytes differ");

    // Incus itself holds the same bytes.
    let dir = std::env::var("LXGATE_TEST_INCUS_DIR").unwrap();
    let out = Command::new("incus")
        .args(["file", "pull", &format!("{name}/root/blob.bin"), "-"])
        .env("INCUS_DIR", &dir)
        .output()
        .expect("incus runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == content, "Incus holds different bytes");

    // Overwrite, then a small round trip through the shared helpers.
    push(&app, &admin, &name, "/root/blob.bin", b"short".to_vec()).await;
    assert_eq!(pull(&app, &admin, &name, "/root/blob.bin").await, b"short");

    // A directory lists its entries as JSON.
    let d = app.get(&format!("{files}?path=/etc"), Some(&admin)).await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.text);
    assert_eq!(d.header("x-file-type"), Some("directory"));
    assert_eq!(d.body["type"], "directory");
    assert_eq!(d.body["path"], "/etc");
    assert!(
        d.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "hostname"),
        "{}",
        d.text
    );

    // Bad input never reaches Incus.
    for bad in ["", "?path=", "?path=etc/hostname", "?path=/etc/a%00b"] {
        app.get(&format!("{files}{bad}"), Some(&admin))
            .await
            .assert_problem(400, "invalid_path");
        app.send(
            app.request(Method::POST, &format!("{files}{bad}"), Some(&admin))
                .body("x"),
        )
        .await
        .assert_problem(400, "invalid_path");
    }
    for bad in ["mode=999", "mode=0o644", "mode=17777", "uid=-1", "gid=x"] {
        app.send(
            app.request(
                Method::POST,
                &format!("{files}?path=/root/x&{bad}"),
                Some(&admin),
            )
            .body("x"),
        )
        .await
        .assert_problem(400, "invalid_query");
    }
    app.get(&format!("{files}?path=/no/such/file"), Some(&admin))
        .await
        .assert_problem(404, "file_not_found");
    app.send(
        app.request(
            Method::POST,
            &format!("{files}?path=/no/such/dir/file"),
            Some(&admin),
        )
        .body("x"),
    )
    .await
    .assert_problem(404, "file_not_found");
    app.get(
        "/api/v1/instances/no-such-instance/files?path=/etc/hostname",
        Some(&admin),
    )
    .await
    .assert_problem(404, "file_not_found");

    // Viewers may neither push nor pull.
    let r = app
        .send(
            app.request(
                Method::POST,
                &format!("{files}?path=/root/x"),
                Some(&viewer),
            )
            .body("x"),
        )
        .await;
    r.assert_problem(403, "permission_denied");
    assert_eq!(r.body["permission"], "project:operate");
    app.get(&format!("{files}?path=/etc/hostname"), Some(&viewer))
        .await
        .assert_problem(403, "permission_denied");
    let out = Command::new("incus")
        .args(["file", "pull", &format!("{name}/root/x"), "-"])
        .env("INCUS_DIR", &dir)
        .output()
        .expect("incus runs");
    assert!(!out.status.success(), "nothing was written by the viewer");

    // A declared length over the limit is refused before anything is read.
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let req = format!(
        "POST {files}?path=/root/huge HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {admin}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        app.addr,
        (1u64 << 30) + 1
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("answered without the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}
