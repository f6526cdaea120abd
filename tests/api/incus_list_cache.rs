//! Lists from memory in front of the real incusd: a change made straight in
//! Incus with the `incus` CLI shows through lxgate within a second, and
//! lists and objects answer `ETag` / `304`.

use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::incus_instances::{incus_app, unique};

/// What the issue asks: visible within one second of the CLI returning.
const FRESH: (Duration, Duration) = (Duration::from_secs(1), Duration::from_millis(25));

fn incus(args: &[&str]) {
    let dir = std::env::var("LXGATE_TEST_INCUS_DIR").unwrap_or_default();
    let out = Command::new("incus")
        .args(args)
        .env("INCUS_DIR", &dir)
        .output()
        .expect("incus runs");
    assert!(
        out.status.success(),
        "incus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A project of the test's own (the default project's profiles), removed
/// with what is in it.
struct Scratch {
    project: String,
    instance: String,
    profile: String,
}

impl Scratch {
    /// Names of its own, and the project made (it uses the default
    /// project's profiles and images).
    fn new(prefix: &str) -> Self {
        let s = Self {
            project: unique(prefix),
            instance: unique(prefix),
            profile: unique(prefix),
        };
        incus(&[
            "project",
            "create",
            &s.project,
            "-c",
            "features.images=false",
            "-c",
            "features.profiles=false",
        ]);
        s
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let dir = std::env::var("LXGATE_TEST_INCUS_DIR").unwrap_or_default();
        for args in [
            vec![
                "delete",
                "--force",
                "--project",
                &self.project,
                &self.instance,
            ],
            vec!["profile", "delete", &self.profile],
            vec!["project", "delete", &self.project],
        ] {
            let _ = Command::new("incus")
                .args(&args)
                .env("INCUS_DIR", &dir)
                .output();
        }
    }
}

fn alias() -> String {
    std::env::var("LXGATE_TEST_INCUS_IMAGE_ALIAS").unwrap_or_else(|_| "busybox".into())
}

fn entry<'a>(list: &'a Reply, name: &str) -> Option<&'a Value> {
    list.body["items"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)
}

/// The list cache's hits so far (every app of this test process counts
/// into one registry, so only growth means anything).
pub async fn hits(app: &TestApp, kind: &str) -> f64 {
    let text = app.get("/metrics", None).await.text;
    let (kind, hit) = (format!("kind=\"{kind}\""), "result=\"hit\"");
    text.lines()
        .filter(|l| {
            l.starts_with("lxgate_list_cache_total{") && l.contains(&kind) && l.contains(hit)
        })
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn incus_a_change_made_with_the_incus_cli_shows_in_lists_within_a_second() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let s = Scratch::new("lc");
    let list = format!("/api/v1/instances?project={}", s.project);
    let names = format!("{list}&expand=false");
    let token = Some(admin.as_str());

    // Once the event stream is up, repeated lists of a quiet project are
    // answered from memory.
    let before = hits(&app, "instances").await;
    let mut kept = false;
    for _ in 0..50 {
        assert_eq!(app.get(&list, token).await.status, StatusCode::OK);
        if hits(&app, "instances").await > before {
            kept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(kept, "no list was answered from memory");

    // Created behind lxgate's back.
    incus(&["init", &alias(), &s.instance, "--project", &s.project]);
    let took = app
        .get_until(&list, token, FRESH, |r| entry(r, &s.instance).is_some())
        .await;
    eprintln!("created: visible after {took:?}");
    app.get_until(&names, token, FRESH, |r| {
        r.body["items"]
            .as_array()
            .is_some_and(|i| i.contains(&json!(s.instance)))
    })
    .await;

    // Its config, its state.
    let key = format!("user.lc={}", s.instance);
    incus(&["config", "set", &s.instance, &key, "--project", &s.project]);
    app.get_until(&list, token, FRESH, |r| {
        entry(r, &s.instance).is_some_and(|i| i["config"]["user.lc"] == s.instance)
    })
    .await;
    incus(&["start", &s.instance, "--project", &s.project]);
    let took = app
        .get_until(&list, token, FRESH, |r| {
            entry(r, &s.instance).is_some_and(|i| i["status"] == "Running")
        })
        .await;
    eprintln!("started: visible after {took:?}");

    // A profile of another project (the default one, which this project
    // uses) reaches the instance's expanded config.
    incus(&["profile", "create", &s.profile]);
    incus(&["profile", "set", &s.profile, "user.from-profile=1"]);
    incus(&[
        "profile",
        "add",
        &s.instance,
        &s.profile,
        "--project",
        &s.project,
    ]);
    app.get_until(&list, token, FRESH, |r| {
        entry(r, &s.instance).is_some_and(|i| i["expanded_config"]["user.from-profile"] == "1")
    })
    .await;
    incus(&["profile", "set", &s.profile, "user.from-profile=2"]);
    app.get_until(&list, token, FRESH, |r| {
        entry(r, &s.instance).is_some_and(|i| i["expanded_config"]["user.from-profile"] == "2")
    })
    .await;
    app.get_until("/api/v1/profiles", token, FRESH, |r| {
        entry(r, &s.profile).is_some_and(|p| p["config"]["user.from-profile"] == "2")
    })
    .await;

    // Renamed, then gone.
    let renamed = format!("{}-b", s.instance);
    incus(&["stop", "--force", &s.instance, "--project", &s.project]);
    incus(&["rename", &s.instance, &renamed, "--project", &s.project]);
    app.get_until(&list, token, FRESH, |r| {
        entry(r, &renamed).is_some_and(|i| i["status"] == "Stopped")
            && entry(r, &s.instance).is_none()
    })
    .await;
    incus(&["delete", &renamed, "--project", &s.project]);
    app.get_until(&list, token, FRESH, |r| {
        r.body["items"].as_array().is_some_and(|i| i.is_empty())
    })
    .await;
}

/// Lists read right after a change made through lxgate show it, without
/// waiting for Incus's event (which may come after the answer).
#[tokio::test]
async fn incus_a_change_made_through_lxgate_shows_in_the_very_next_list() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let s = Scratch::new("rw");
    let token = Some(admin.as_str());
    let list = format!("/api/v1/instances?project={}", s.project);
    let q = format!("?project={}", s.project);
    let r = app
        .post(
            &format!("/api/v1/instances{q}&wait=60"),
            token,
            json!({"name": s.instance, "source": {"type": "image", "alias": alias()}}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    assert!(entry(&app.get(&list, token).await, &s.instance).is_some());
    for round in 0..5 {
        // Kept, then changed through lxgate, then read at once.
        app.get(&list, token).await;
        let value = format!("v{round}");
        let r = app
            .send(
                app.request(
                    Method::PATCH,
                    &format!("/api/v1/instances/{}{q}", s.instance),
                    token,
                )
                .json(&json!({"config": {"user.rw": value}})),
            )
            .await;
        assert!(r.status.is_success(), "{}", r.text);
        let listed = app.get(&list, token).await;
        assert_eq!(
            entry(&listed, &s.instance).map(|i| i["config"]["user.rw"].clone()),
            Some(json!(value)),
            "round {round}: {}",
            listed.text
        );
    }
    let renamed = format!("{}-b", s.instance);
    let r = app
        .post(
            &format!("/api/v1/instances/{}/rename{q}&wait=60", s.instance),
            token,
            json!({"name": renamed}),
        )
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let listed = app.get(&list, token).await;
    assert!(
        entry(&listed, &renamed).is_some() && entry(&listed, &s.instance).is_none(),
        "{}",
        listed.text
    );
    let r = app
        .send(app.request(
            Method::DELETE,
            &format!("/api/v1/instances/{renamed}{q}&wait=60"),
            token,
        ))
        .await;
    assert_eq!(r.body["status_code"], 200, "{}", r.text);
    let listed = app.get(&list, token).await;
    assert!(entry(&listed, &renamed).is_none(), "{}", listed.text);
}

#[tokio::test]
async fn incus_lists_and_objects_answer_etags_and_304() {
    let app = incus_app().await;
    let admin = app.admin_token().await;
    let s = Scratch::new("et");
    incus(&["init", &alias(), &s.instance, "--project", &s.project]);
    let token = Some(admin.as_str());
    let conditional = |path: &str, tag: &str| {
        app.request(Method::GET, path, token)
            .header("if-none-match", tag.to_owned())
    };

    let list = format!("/api/v1/instances?project={}", s.project);
    let first = app.get(&list, token).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let tag = first.header("etag").expect("a list has an ETag").to_owned();
    assert_eq!(first.header("cache-control"), Some("private, no-cache"));
    let again = app.send(conditional(&list, &tag)).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{}", again.text);
    assert!(again.text.is_empty());
    assert_eq!(again.header("etag"), Some(tag.as_str()));
    // Weak or in a list, the same tag matches; another does not.
    let weak = app
        .send(conditional(&list, &format!("\"x\", W/{tag}")))
        .await;
    assert_eq!(weak.status, StatusCode::NOT_MODIFIED);
    let other = app.send(conditional(&list, "\"0123\"")).await;
    assert_eq!(other.status, StatusCode::OK);

    // The object: its backend version in front, then the digest.
    let path = format!("/api/v1/instances/{}?project={}", s.instance, s.project);
    let obj = app.get(&path, token).await;
    assert_eq!(obj.status, StatusCode::OK, "{}", obj.text);
    let obj_tag = obj
        .header("etag")
        .expect("an instance has an ETag")
        .to_owned();
    let (version, digest) = obj_tag
        .trim_matches('"')
        .rsplit_once('.')
        .expect("version.digest");
    assert!(!version.is_empty() && digest.len() == 24, "{obj_tag}");
    assert_eq!(
        app.send(conditional(&path, &obj_tag)).await.status,
        StatusCode::NOT_MODIFIED
    );

    // A change in Incus: the list's and the object's tags move on.
    incus(&[
        "config",
        "set",
        &s.instance,
        "user.et=1",
        "--project",
        &s.project,
    ]);
    app.get_until(&list, token, FRESH, |r| {
        entry(r, &s.instance).is_some_and(|i| i["config"]["user.et"] == "1")
    })
    .await;
    let changed = app.send(conditional(&list, &tag)).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_ne!(changed.header("etag"), Some(tag.as_str()));
    let obj_changed = app.send(conditional(&path, &obj_tag)).await;
    assert_eq!(obj_changed.status, StatusCode::OK);
    let new_tag = obj_changed.header("etag").unwrap().to_owned();

    // If-Match compares the version part: the current tag applies, the
    // one from before the change is 412.
    let patch = |tag: &str| {
        app.request(Method::PATCH, &path, token)
            .header("if-match", tag.to_owned())
            .json(&json!({"config": {"user.et": "2"}}))
    };
    app.send(patch(&obj_tag))
        .await
        .assert_problem(412, "precondition_failed");
    let ok = app.send(patch(&new_tag)).await;
    assert!(ok.status.is_success(), "{} {}", ok.status, ok.text);
}
