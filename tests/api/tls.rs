//! lxgate serves HTTPS itself when TLS_CERT_PATH / TLS_KEY_PATH are set.

use std::process::Command;

use crate::helpers::*;

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    let app = spawn_app_with(
        Db::Sqlite,
        &[
            ("TLS_CERT_PATH", cert.to_str().unwrap()),
            ("TLS_KEY_PATH", key.to_str().unwrap()),
        ],
    )
    .await;
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let url = format!("https://{}/health", app.addr);
    let r = client.get(&url).send().await.expect("HTTPS answers");
    assert_eq!(r.status(), 200);
    // Served over TLS: browsers are told to stay on HTTPS.
    assert_eq!(
        r.headers()
            .get("strict-transport-security")
            .and_then(|v| v.to_str().ok()),
        Some("max-age=31536000")
    );
    assert_eq!(
        r.headers()
            .get("x-content-type-options")
            .and_then(|v| v.to_str().ok()),
        Some("nosniff")
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    // Plain HTTP on the same port is not served.
    let plain = app.client.get(app.url("/health")).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}
