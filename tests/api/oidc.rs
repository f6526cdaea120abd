//! Single sign-on (issue 13, item 3): access tokens of an OpenID Connect
//! provider the test runs itself on 127.0.0.1 (discovery and JWKS of keys
//! made with openssl), accepted beside lxgate's own; users made on first
//! sight, their roles and teams following the groups claim.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

const AUDIENCE: &str = "lxgate-test";

/// A signing key of the provider.
struct Key {
    kid: String,
    alg: Algorithm,
    enc: EncodingKey,
    jwk: Jwk,
}

/// A new private key in DER: PKCS#1 for RSA, PKCS#8 for EC (what
/// jsonwebtoken's `from_rsa_der` and `from_ec_der` read).
fn openssl_der(dir: &Path, name: &str, alg: Algorithm) -> Vec<u8> {
    let pem = dir.join(format!("{name}.pem"));
    let der = dir.join(format!("{name}.der"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (pem_s, der_s) = (pem.to_str().unwrap(), der.to_str().unwrap());
    match alg {
        Algorithm::RS256 => {
            run(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                pem_s,
            ]);
            run(&[
                "rsa",
                "-in",
                pem_s,
                "-traditional",
                "-outform",
                "DER",
                "-out",
                der_s,
            ]);
        }
        Algorithm::ES256 => {
            run(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                pem_s,
            ]);
            run(&[
                "pkcs8", "-topk8", "-nocrypt", "-in", pem_s, "-outform", "DER", "-out", der_s,
            ]);
        }
        other => panic!("{other:?}"),
    }
    std::fs::read(der).unwrap()
}

fn key(dir: &Path, kid: &str, alg: Algorithm) -> Key {
    let der = openssl_der(dir, kid, alg);
    let enc = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_der(&der),
        _ => EncodingKey::from_ec_der(&der),
    };
    let mut jwk = Jwk::from_encoding_key(&enc, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    Key {
        kid: kid.to_owned(),
        alg,
        enc,
        jwk,
    }
}

/// The provider: its discovery document and the keys it publishes now.
struct Provider {
    issuer: String,
    published: Arc<Mutex<Vec<Jwk>>>,
}

async fn provider() -> Provider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let published: Arc<Mutex<Vec<Jwk>>> = Arc::default();
    let doc = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")});
    let router = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let doc = doc.clone();
                async move { Json(doc) }
            }),
        )
        .route(
            "/jwks",
            get(|State(keys): State<Arc<Mutex<Vec<Jwk>>>>| async move {
                Json(JwkSet {
                    keys: keys.lock().unwrap().clone(),
                })
            }),
        )
        .with_state(published.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Provider { issuer, published }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn token(key: &Key, claims: Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &claims, &key.enc).unwrap()
}

fn claims(p: &Provider, sub: &str, groups: &[&str]) -> Value {
    json!({
        "iss": p.issuer, "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + 600,
        "preferred_username": format!("sso-{sub}"), "groups": groups,
    })
}

#[tokio::test]
async fn provider_tokens_work_on_sqlite() {
    provider_tokens_are_accepted_and_groups_give_roles(Db::Sqlite).await;
}

#[tokio::test]
async fn provider_tokens_work_on_postgres() {
    provider_tokens_are_accepted_and_groups_give_roles(Db::Postgres).await;
}

async fn provider_tokens_are_accepted_and_groups_give_roles(db: Db) {
    let scratch = tempfile::tempdir().unwrap();
    let rsa = key(scratch.path(), "k1", Algorithm::RS256);
    let ec = key(scratch.path(), "k2", Algorithm::ES256);
    let p = provider().await;
    *p.published.lock().unwrap() = vec![rsa.jwk.clone(), ec.jwk.clone()];
    let app = spawn_app_with(
        db,
        &[
            ("OIDC_ISSUER_URL", &p.issuer),
            ("OIDC_AUDIENCE", AUDIENCE),
            (
                "OIDC_ROLE_MAP",
                "platform-admins=admin,team-a-ops=operator@team-a,web-devs=team:web",
            ),
        ],
    )
    .await;
    let admin = app.admin_token().await;
    for name in ["team-a", "webp"] {
        let r = app
            .post("/api/v1/projects", Some(&admin), json!({"name": name}))
            .await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.text);
    }
    let r = app
        .post("/api/v1/teams", Some(&admin), json!({"name": "web"}))
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text);
    app.put_ok(
        "/api/v1/teams/web/projects/webp",
        Some(&admin),
        json!({"role": "viewer"}),
    )
    .await;

    // RS256, first sight: the user is made, with what its groups give.
    let t = token(&rsa, claims(&p, "u-1", &["team-a-ops", "web-devs"]));
    let me = app.get("/api/v1/auth/me", Some(&t)).await;
    assert_eq!(me.status.as_u16(), 200, "{}", me.text);
    assert_eq!(me.body["username"], "sso-u-1");
    assert_eq!(me.body["role"], Value::Null);
    assert_eq!(
        me.body["projects"],
        json!([{"project": "team-a", "role": "operator"}, {"project": "webp", "role": "viewer"}]),
        "{}",
        me.text
    );
    let u = app.get("/api/v1/users/sso-u-1", Some(&admin)).await;
    assert_eq!(u.body["teams"], json!(["web"]), "{}", u.text);
    let r = app
        .post(
            "/api/v1/profiles?project=team-a",
            Some(&t),
            json!({"name": "sso"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text);
    // Audited as single sign-on.
    let audit = app.get("/api/v1/audit?user=sso-u-1", Some(&admin)).await;
    assert_eq!(
        audit.body["items"][0]["auth_method"], "oidc",
        "{}",
        audit.text
    );
    // No password: a login never works.
    app.login_reply("sso-u-1", "any password at all")
        .await
        .assert_problem(401, "invalid_credentials");

    // ES256 too; a group that gives admin.
    let t = token(&ec, claims(&p, "u-1", &["platform-admins"]));
    let r = app.get("/api/v1/users", Some(&t)).await;
    assert_eq!(r.status.as_u16(), 200, "admin from the group: {}", r.text);
    // The next token without the group: the role, the project grant and
    // the team are gone.
    let t = token(&rsa, claims(&p, "u-1", &[]));
    app.get("/api/v1/users", Some(&t))
        .await
        .assert_problem(403, "permission_denied");
    app.get("/api/v1/projects/team-a", Some(&t))
        .await
        .assert_problem(403, "permission_denied");
    app.get("/api/v1/projects/webp", Some(&t))
        .await
        .assert_problem(403, "permission_denied");
    // A still-valid token issued before that one does not give it back.
    let mut older = claims(&p, "u-1", &["platform-admins"]);
    older["iat"] = json!(now() - 60);
    let r = app.get("/api/v1/users", Some(&token(&rsa, older))).await;
    r.assert_problem(403, "permission_denied");
    // Single sign-on users mint no personal access tokens (they would
    // outlive what the provider says).
    app.post(
        "/api/v1/auth/tokens",
        Some(&t),
        json!({"name": "sso", "expires_in": 600}),
    )
    .await
    .assert_problem(403, "token_not_allowed");
    // A provider name that is an account's in another letter case is not
    // taken: the user gets a name of its own.
    let mut c = claims(&p, "u-3", &[]);
    c["preferred_username"] = json!(ADMIN.to_uppercase());
    let me = app.get("/api/v1/auth/me", Some(&token(&rsa, c))).await;
    assert_eq!(me.status.as_u16(), 200, "{}", me.text);
    assert!(
        me.body["username"].as_str().unwrap().starts_with("oidc-"),
        "{}",
        me.text
    );
    // Unmapped groups give nothing.
    let t = token(&rsa, claims(&p, "u-2", &["somebody-elses"]));
    let me = app.get("/api/v1/auth/me", Some(&t)).await;
    assert_eq!(me.status.as_u16(), 200, "{}", me.text);
    assert_eq!(
        (&me.body["role"], &me.body["projects"]),
        (&Value::Null, &json!([]))
    );

    // Refused: wrong audience, wrong issuer, expired, not yet valid, a key
    // the provider does not publish, a forged signature.
    let mut c = claims(&p, "u-1", &["platform-admins"]);
    c["aud"] = json!("another-app");
    app.get("/api/v1/auth/me", Some(&token(&rsa, c)))
        .await
        .assert_problem(401, "invalid_token");
    let mut c = claims(&p, "u-1", &["platform-admins"]);
    c["iss"] = json!("http://127.0.0.1:1");
    app.get("/api/v1/auth/me", Some(&token(&rsa, c)))
        .await
        .assert_problem(401, "invalid_token");
    let mut c = claims(&p, "u-1", &["platform-admins"]);
    c["exp"] = json!(now() - 120);
    app.get("/api/v1/auth/me", Some(&token(&rsa, c)))
        .await
        .assert_problem(401, "invalid_token");
    let mut c = claims(&p, "u-1", &["platform-admins"]);
    c["nbf"] = json!(now() + 600);
    app.get("/api/v1/auth/me", Some(&token(&rsa, c)))
        .await
        .assert_problem(401, "invalid_token");
    let stranger = key(scratch.path(), "k9", Algorithm::RS256);
    app.get(
        "/api/v1/auth/me",
        Some(&token(&stranger, claims(&p, "u-1", &["platform-admins"]))),
    )
    .await
    .assert_problem(401, "invalid_token");
    let forged = Key {
        kid: "k1".into(),
        ..key(scratch.path(), "k8", Algorithm::RS256)
    };
    app.get(
        "/api/v1/auth/me",
        Some(&token(&forged, claims(&p, "u-1", &["platform-admins"]))),
    )
    .await
    .assert_problem(401, "invalid_token");

    // Key rotation: the provider publishes k3 and drops k1. A token of k3
    // makes lxgate fetch the keys again; k1's tokens stop working.
    let rotated = key(scratch.path(), "k3", Algorithm::RS256);
    *p.published.lock().unwrap() = vec![rotated.jwk.clone(), ec.jwk.clone()];
    // (lxgate fetches at most every 2 s.)
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let t3 = token(&rotated, claims(&p, "u-1", &["team-a-ops"]));
    let r = app.get("/api/v1/projects/team-a", Some(&t3)).await;
    assert_eq!(r.status.as_u16(), 200, "a rotated key: {}", r.text);
    app.get(
        "/api/v1/auth/me",
        Some(&token(&rsa, claims(&p, "u-1", &[]))),
    )
    .await
    .assert_problem(401, "invalid_token");

    // Disabling the user ends its provider tokens at once.
    let r = app
        .send(
            app.request(Method::PATCH, "/api/v1/users/sso-u-1", Some(&admin))
                .json(&json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    app.get("/api/v1/auth/me", Some(&t3))
        .await
        .assert_problem(401, "account_disabled");
}
