//! Entry points for coverage-guided fuzzing: one per parser of outside
//! input, each taking the fuzzer's bytes and checking what must hold for any
//! input, not only that nothing panics. `fuzz/` wraps each in a libFuzzer
//! target (`cargo fuzz run <name>`); `cargo test` runs every one over the
//! inputs committed under `fuzz/regressions/<name>/` (each crash found
//! becomes one). Not part of lxgate's API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use utoipa::PartialSchema;
use utoipa::openapi::{RefOr, Schema};

use crate::backend::BackendError;
use crate::backend::embedded::image_budget::Budget;
use crate::backend::embedded::{image_size, images, limits, lxc, qcow, simplestreams};
use crate::names;

/// A target: the fuzzer's bytes in, a panic when what must hold does not.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/<name>.rs` wraps it.
pub const TARGETS: &[(&str, Target)] = &[
    ("names", names),
    ("backend_url", backend_url),
    ("config_values", config_values),
    ("instance_policy", instance_policy),
    ("lxc_config", lxc_config),
    ("tokens", tokens),
    ("metadata_yaml", metadata_yaml),
    ("tar_listing", tar_listing),
    ("qcow_header", qcow_header),
    ("simplestreams", simplestreams_catalogue),
    ("multipart", multipart),
    ("ws_control", ws_control),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// `(pattern, minLength, maxLength)` of a string schema.
fn string_rules(schema: RefOr<Schema>) -> (regex::Regex, usize, Option<usize>) {
    let RefOr::T(Schema::Object(o)) = schema else {
        panic!("a name's schema is an inline string schema");
    };
    let pattern = o.pattern.expect("a name's schema has a pattern");
    (
        regex::Regex::new(&pattern).expect("the schema's pattern compiles"),
        o.min_length.unwrap_or(0),
        o.max_length,
    )
}

/// What the published schema says of `s`.
fn schema_accepts(rules: &(regex::Regex, usize, Option<usize>), s: &str) -> bool {
    let n = s.chars().count();
    rules.0.is_match(s) && n >= rules.1 && rules.2.is_none_or(|m| n <= m)
}

/// Names: each parser agrees with the pattern and lengths openapi.json
/// publishes for it, and what it accepts is one safe path segment (no `/`,
/// no NUL, not `.` or `..`) that parses back to itself.
pub fn names(data: &[u8]) {
    let Some(s) = text(data) else { return };
    macro_rules! agree {
        ($($ty:ty),*) => {$(
            {
                static RULES: OnceLock<(regex::Regex, usize, Option<usize>)> = OnceLock::new();
                let rules = RULES.get_or_init(|| string_rules(<$ty as PartialSchema>::schema()));
                let parsed = <$ty>::parse(s);
                assert_eq!(
                    parsed.is_ok(),
                    schema_accepts(rules, s),
                    "{} and its schema disagree on {s:?}",
                    stringify!($ty)
                );
                if let Ok(n) = parsed {
                    assert_eq!(n.as_str(), s);
                    assert!(!s.contains(['/', '\0']) && s != "." && s != "..", "{s:?}");
                }
            }
        )*};
    }
    agree!(
        names::ProjectName,
        names::InstanceName,
        names::TeamName,
        names::SnapshotName,
        names::BackupName,
        names::PoolName,
        names::VolumeName,
        names::NetworkName,
        names::DeviceName,
        names::ImageFingerprint,
        names::ImageAliasName,
        names::ProfileName,
        crate::auth::Username
    );
    for ok in [
        names::MemberName::parse(s).is_ok(),
        names::LogFileName::parse(s).is_ok(),
        names::OperationId::parse(s).is_ok(),
    ] {
        if ok {
            assert!(!s.contains(['/', '\0', '\n']) && s != "." && s != "..");
        }
    }
}

/// Names and filter expressions into the Incus API's URLs: whatever the
/// text, each segment and query value reads back exactly as given, and
/// nothing else is added to the path or the query.
pub fn backend_url(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let mut parts = s.splitn(3, '\u{1}');
    let (segment, filter, project) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    use crate::backend::incus::client::{check_segments, url_under};
    let base = reqwest::Url::parse("http://incus.invalid/").expect("a valid base");
    let segments = ["instances", segment, "state"];
    if check_segments(&segments).is_err() {
        // No URL can carry these as themselves: refused before any request.
        assert!(matches!(segment, "." | ".."), "{segment:?} refused");
        return;
    }
    let url = url_under(
        &base,
        &segments,
        &[("project", project), ("filter", filter), ("recursion", "1")],
    );
    assert_eq!(url.origin(), base.origin());
    let segments: Vec<String> = url
        .path_segments()
        .expect("a path")
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8()
                .expect("UTF-8 in, UTF-8 out")
                .into_owned()
        })
        .collect();
    assert_eq!(segments, ["1.0", "instances", segment, "state"], "{url}");
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(
        query,
        [
            ("project".to_owned(), project.to_owned()),
            ("filter".to_owned(), filter.to_owned()),
            ("recursion".to_owned(), "1".to_owned()),
        ],
        "{url}"
    );
    assert!(url.fragment().is_none());
}

/// Sizes and CPU sets as instance config gives them: whatever is accepted
/// is a plain number or a cpuset list, fit for a cgroup file.
pub fn config_values(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Some(n) = limits::parse_size(s) {
        assert!((1..1_000_000_000_000_000_000).contains(&n), "{s:?} -> {n}");
    }
    if let Some(set) = limits::parse_cpus(s) {
        assert!(!set.is_empty());
        assert!(
            set.bytes()
                .all(|b| b.is_ascii_digit() || b == b',' || b == b'-'),
            "{s:?} -> {set:?}"
        );
    }
    static MOUNT_PATH: OnceLock<regex::Regex> = OnceLock::new();
    let mount_path = MOUNT_PATH.get_or_init(|| {
        regex::Regex::new(crate::api::schemas::MOUNT_PATH_PATTERN).expect("a valid pattern")
    });
    assert_eq!(
        crate::backend::embedded::storage::plain_mount_target(s),
        mount_path.is_match(s),
        "the embedded backend and MOUNT_PATH_PATTERN disagree on {s:?}"
    );
    let _ = crate::policy::Widening::from_project_config(&BTreeMap::from([
        (crate::policy::ALLOW_CONFIG_KEY.to_owned(), s.to_owned()),
        (crate::policy::ALLOW_DEVICES_KEY.to_owned(), s.to_owned()),
    ]));
}

/// Config keys and device options that reach the host: the instance policy
/// must never let a non-admin set one, however the request is written.
const HOST_KEYS: &[&str] = &[
    "raw.",
    "security.privileged",
    "security.nesting",
    "security.idmap.base",
    "security.idmap.size",
    "security.syscalls.",
    "linux.",
    "lxc.",
    "volatile.",
    "limits.kernel.",
];
const HOST_DEVICE_OPTIONS: &[&str] = &[
    "nictype",
    "parent",
    "raw.mount.options",
    "shift",
    "propagation",
    "recursive",
    "listen",
    "connect",
    "major",
    "minor",
];

#[derive(serde::Deserialize)]
struct InstanceChange {
    #[serde(default)]
    config: crate::policy::Config,
    #[serde(default)]
    devices: crate::policy::Devices,
}

/// The instance policy (DESIGN §4a) on any create a non-admin could send.
pub fn instance_policy(data: &[u8]) {
    let Ok(change) = serde_json::from_slice::<InstanceChange>(data) else {
        return;
    };
    let policy = crate::policy::Policy::restricted(crate::policy::Widening::default());
    let empty = (Default::default(), Default::default());
    if policy
        .check_instance((&empty.0, &empty.1), (&change.config, &change.devices))
        .is_err()
    {
        return;
    }
    for (k, v) in &change.config {
        if !v.is_empty() {
            assert!(
                !HOST_KEYS.iter().any(|h| k.starts_with(h)),
                "the policy let a non-admin set {k}={v:?}"
            );
        }
    }
    for (name, d) in &change.devices {
        let kind = d.get("type").map(String::as_str).unwrap_or_default();
        assert!(
            matches!(kind, "disk" | "nic" | "none"),
            "the policy let a non-admin add a {kind:?} device ({name})"
        );
        for opt in HOST_DEVICE_OPTIONS {
            assert!(
                d.get(*opt).is_none_or(String::is_empty) || kind == "none",
                "the policy let a non-admin set {opt} on {name}"
            );
        }
        if kind == "disk" && d.get("path").map(String::as_str) != Some("/") {
            let source = d.get("source").map(String::as_str).unwrap_or_default();
            assert!(
                names::check_resource_name("volume", source).is_ok(),
                "the policy let a non-admin mount {source:?} ({name})"
            );
        }
    }
}

#[derive(serde::Deserialize)]
struct ContainerSpec {
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    mounts: Vec<String>,
    #[serde(default)]
    nic_name: String,
    #[serde(default)]
    hwaddr: String,
}

/// The LXC keys lxgate writes (per NIC: `lxc.net.N.<key>`).
const LXC_KEYS: &[&str] = &[
    "lxc.include",
    "lxc.idmap",
    "lxc.hook.post-stop",
    "lxc.uts.name",
    "lxc.rootfs.path",
    "lxc.init.cmd",
    "lxc.mount.auto",
    "lxc.pty.max",
    "lxc.tty.max",
    "lxc.console.logfile",
    "lxc.apparmor.profile",
    "lxc.cgroup.memory.limit_in_bytes",
    "lxc.cgroup.cpuset.cpus",
    "lxc.cgroup.pids.max",
    "lxc.mount.entry",
];
const LXC_NIC_KEYS: &[&str] = &[
    "type",
    "link",
    "veth.pair",
    "name",
    "hwaddr",
    "flags",
    "ipv4.address",
    "ipv4.gateway",
];

/// A container's LXC config file from what a user may give (config, volume
/// mount points, a NIC's name and MAC) once the embedded backend's checks
/// passed: only lxgate's own keys, one line each, nothing a value could add.
pub fn lxc_config(data: &[u8]) {
    use crate::backend::embedded::bridge;
    use crate::backend::embedded::driver_types::Attachments;
    use crate::backend::embedded::networks::Nic;

    let Ok(spec) = serde_json::from_slice::<ContainerSpec>(data) else {
        return;
    };
    let mounts: Vec<(PathBuf, String)> = spec
        .mounts
        .iter()
        .filter(|t| crate::backend::embedded::storage::plain_mount_target(t))
        .map(|t| (PathBuf::from("/var/lib/lxgate/pool/custom/v 1"), t.clone()))
        .collect();
    let nics: Vec<Nic> = (bridge::check_ifname(&spec.nic_name).is_ok()
        && bridge::check_hwaddr(&spec.hwaddr).is_ok())
    .then(|| Nic {
        device: "eth0".into(),
        bridge: "lxgbr0".into(),
        name: spec.nic_name.clone(),
        hwaddr: spec.hwaddr.clone(),
        host_if: bridge::host_ifname("default_c1", "eth0"),
        ipv4: "10.5.0.2/24".parse().ok(),
        gateway: "10.5.0.1".parse().ok(),
    })
    .into_iter()
    .collect();
    let devices = Attachments {
        mounts: mounts.clone(),
        nics,
    };
    let confinement = lxc::Confinement::Unprivileged(crate::backend::embedded::idmap::IdMap {
        uid_base: 1_000_000,
        gid_base: 1_000_000,
        size: 65536,
    });
    let Ok(out) = lxc::render_config(
        Path::new("/var/lib/lxgate/containers/default_c1"),
        "c1",
        &spec.config,
        &devices,
        &confinement,
        true,
    ) else {
        return;
    };
    let mut entries = 0;
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for line in out.lines() {
        let (key, value) = line
            .split_once(" = ")
            .unwrap_or_else(|| panic!("not a `key = value` line: {line:?}"));
        let known = LXC_KEYS.contains(&key)
            || key
                .strip_prefix("lxc.net.")
                .and_then(|k| k.split_once('.'))
                .is_some_and(|(i, k)| i.parse::<u8>().is_ok() && LXC_NIC_KEYS.contains(&k));
        assert!(known, "an unexpected LXC key: {line:?}");
        assert!(!value.contains(['\r', '\0']), "{line:?}");
        // The one hook line lxgate writes clears hooks; none is ever set.
        assert!(
            !key.starts_with("lxc.hook.") || value.is_empty(),
            "{line:?}"
        );
        *seen.entry(key).or_default() += 1;
        if key == "lxc.mount.entry" {
            entries += 1;
            assert_eq!(value.split_whitespace().count(), 6, "{line:?}");
        }
    }
    assert_eq!(entries, mounts.len(), "{out}");
    // Each key as often as lxgate writes it, so no value can have added a
    // line (a newline in a value is a second `key = value`).
    for (key, n) in &seen {
        let most = match *key {
            "lxc.include" | "lxc.idmap" => 2,
            "lxc.mount.entry" => mounts.len(),
            "lxc.apparmor.profile" => 0,
            _ => 1,
        };
        assert!(*n <= most, "{key} written {n} times:\n{out}");
    }
    for key in [
        "lxc.uts.name",
        "lxc.rootfs.path",
        "lxc.init.cmd",
        "lxc.console.logfile",
        "lxc.hook.post-stop",
    ] {
        assert_eq!(seen.get(key), Some(&1), "{key}:\n{out}");
    }
}

fn token_keys() -> &'static crate::auth::tokens::TokenKeys {
    static KEYS: OnceLock<crate::auth::tokens::TokenKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        crate::auth::tokens::TokenKeys::new(
            b"a fuzzing key, 32 bytes or more....",
            "lxgate",
            "lxgate-api",
            Duration::from_secs(3600),
        )
    })
}

/// Bearer tokens: the `Authorization` header, then the JWT. The input is
/// either a whole token, or (first byte 0) edits of a token lxgate issued:
/// whatever verifies must carry exactly the claims lxgate signed.
pub fn tokens(data: &[u8]) {
    let keys = token_keys();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode == 0 {
        let token = keys
            .issue("fuzz-user", "fuzz", None, 7)
            .expect("issuing a token");
        let signed = keys.verify(&token).expect("a fresh token verifies");
        let mut bytes = token.into_bytes();
        for edit in rest.chunks(3) {
            if let [at_hi, at_lo, b] = *edit {
                let at = usize::from(u16::from_be_bytes([at_hi, at_lo]));
                let len = bytes.len().max(1);
                if let Some(slot) = bytes.get_mut(at % len) {
                    *slot = b;
                }
            }
        }
        let Ok(edited) = String::from_utf8(bytes) else {
            return;
        };
        if let Ok(c) = keys.verify(&edited) {
            assert_eq!(
                (&c.sub, &c.jti, c.tv, c.exp, &c.iss, &c.aud),
                (
                    &signed.sub,
                    &signed.jti,
                    signed.tv,
                    signed.exp,
                    &signed.iss,
                    &signed.aud
                ),
                "an edited token verified with other claims: {edited:?}"
            );
        }
        return;
    }
    let Some(s) = text(rest) else { return };
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(v) = axum::http::HeaderValue::from_str(s) {
        headers.insert(axum::http::header::AUTHORIZATION, v);
        if let Ok(Some(token)) = crate::auth::extract::bearer_token(&headers) {
            assert!(!token.is_empty() && s.contains(token));
            assert!(
                keys.verify(token).is_err(),
                "a forged token verified: {token:?}"
            );
        }
    }
    assert!(keys.verify(s).is_err(), "a forged token verified: {s:?}");
    let _ = crate::auth::oidc::Oidc::looks_like_ours(s);
}

/// `metadata.yaml` (at most the size lxgate reads): a clear error or the
/// metadata, and a VM's boot file names are plain when accepted.
pub fn metadata_yaml(data: &[u8]) {
    if data.len() as u64 > images::MAX_METADATA_YAML {
        return;
    }
    match images::parse_metadata(data) {
        Err(e) => assert!(matches!(e, BackendError::BadRequest(_)), "{e}"),
        Ok(meta) => {
            if let Some(boot) = &meta.boot
                && boot.check().is_ok()
            {
                for n in [&boot.kernel, &boot.initrd] {
                    assert!(!n.contains('/') && !n.starts_with(['-', '.']), "{n:?}");
                }
            }
        }
    }
}

/// `tar --list --verbose` output as it streams in: the same sum however the
/// pipe cuts it, and the sum a plain line-by-line reading gives.
pub fn tar_listing(data: &[u8]) {
    let Some((&cut, listing)) = data.split_first() else {
        return;
    };
    let whole = image_size::listing_total([listing]);
    let chunked = image_size::listing_total(listing.chunks(usize::from(cut).max(1)));
    assert_eq!(whole, chunked, "cut every {cut}");
    let mut want: u64 = 0;
    for line in listing.split(|&b| b == b'\n') {
        let mut fields = line
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|f| !f.is_empty());
        let Some(_) = fields.next() else { continue };
        let size = fields.nth(1).map_or(0, |f| {
            if f.iter().all(u8::is_ascii_digit) {
                f.iter().fold(0u64, |n, d| {
                    n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                })
            } else {
                0
            }
        });
        want = want.saturating_add(size).saturating_add(512);
    }
    assert_eq!(whole, want);
}

/// A VM disk's qcow2 header: accepted only when self-contained and within
/// the budget.
pub fn qcow_header(data: &[u8]) {
    let budget = Budget::new(8 << 30);
    let head = &data[..data.len().min(104)];
    match qcow::check_head(head, budget) {
        Ok(size) => {
            assert!(size <= budget.left);
            assert!(head.starts_with(b"QFI\xfb"));
            assert_eq!(&head[8..16], &[0; 8], "a backing file offset");
        }
        Err(e) => assert!(
            matches!(
                e,
                BackendError::BadRequest(_) | BackendError::ImageTooLarge(_)
            ),
            "{e}"
        ),
    }
}

/// A simplestreams index and product catalogue from an image server: what
/// is picked stays on that server, and bad catalogues are clear errors.
pub fn simplestreams_catalogue(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let base = reqwest::Url::parse("https://images.example/").expect("a valid base");
    if let Ok(path) = simplestreams::catalogue_path(&value) {
        let _ = base.join(path);
    }
    for (alias, fingerprint, vm) in [
        (Some("debian/12"), None, false),
        (Some("alpine/edge"), None, true),
        (None, Some("06b8"), false),
    ] {
        let wanted = simplestreams::Wanted {
            alias,
            fingerprint,
            vm,
        };
        match simplestreams::pick(&value, &base, wanted) {
            Ok(found) => {
                for item in [&found.metadata, &found.rootfs] {
                    assert_eq!(item.url.origin(), base.origin(), "{}", item.url);
                }
                if let Some(fp) = fingerprint {
                    assert!(found.combined.is_some_and(|c| c.starts_with(fp)));
                }
            }
            Err(e) => assert!(
                matches!(e, BackendError::BadRequest(_) | BackendError::NotFound(_)),
                "{e}"
            ),
        }
    }
}

/// The boundary every fuzzed upload body uses.
pub const MULTIPART_BOUNDARY: &str = "lxgatefuzz";

/// An image upload's multipart body: a 4xx or the spooled image, never a
/// 5xx, and nothing left in the spool directory once the answer is dropped.
pub fn multipart(data: &[u8]) {
    use axum::extract::FromRequest;

    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    });
    let dir = std::env::temp_dir().join(format!("lxgate-fuzz-multipart-{}", std::process::id()));
    let body = data.to_vec();
    rt.block_on(async {
        let request = axum::http::Request::builder()
            .method("POST")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}"),
            )
            .body(axum::body::Body::from(body))
            .expect("a request");
        let form = axum::extract::Multipart::from_request(request, &()).await;
        match crate::api::upload::receive(form, &dir, 1 << 20).await {
            Ok(spooled) => {
                for f in [&spooled.upload.metadata, &spooled.upload.rootfs] {
                    assert!(f.starts_with(&dir), "{f:?}");
                }
            }
            Err(e) => assert!(e.status.is_client_error(), "{e}"),
        }
    });
    let left = std::fs::read_dir(&dir).map_or(0, |d| d.count());
    assert_eq!(left, 0, "the spool kept files");
}

/// A terminal's text frames: a resize within bounds, or nothing.
pub fn ws_control(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Some(input) = crate::api::ws::control(s) {
        match input {
            crate::backend::types::TerminalInput::Resize { width, height } => {
                assert!((1..=1000).contains(&width) && (1..=1000).contains(&height));
            }
            crate::backend::types::TerminalInput::Data(_) => panic!("a text frame became data"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed input, `fuzz/seeds/<target>/` (where each run
    /// starts) and `fuzz/regressions/<target>/` (what the fuzzer found),
    /// still holds.
    #[test]
    fn committed_inputs_hold() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut ran = 0;
        for (name, target) in TARGETS {
            assert!(
                root.join("seeds").join(name).is_dir(),
                "no seeds for {name}"
            );
            for dir in ["seeds", "regressions"].map(|d| root.join(d).join(name)) {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.expect("a directory entry").path();
                    let data = std::fs::read(&path).expect("a regression input");
                    let run = std::panic::catch_unwind(|| target(&data));
                    assert!(run.is_ok(), "{} fails again", path.display());
                    ran += 1;
                }
            }
        }
        assert!(
            ran >= TARGETS.len(),
            "only {ran} regression inputs were found"
        );
    }
}
