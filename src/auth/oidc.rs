//! Single sign-on: access tokens of an OpenID Connect identity provider
//! (RS256 or ES256) accepted as bearer tokens beside lxgate's own.
//!
//! The provider's discovery document and keys (JWKS) are fetched and kept;
//! a token signed with a key id lxgate does not know makes it fetch them
//! again (at most every `REFETCH_EVERY`, so made-up ids cannot make it
//! hammer the provider). The groups claim maps to lxgate roles and teams
//! (`OIDC_ROLE_MAP`); the callers sync them into the database, where every
//! check and the socket watcher read them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};

use crate::auth::Role;
use crate::names::{ProjectName, TeamName};

/// Keys are fetched again after this long, and at most this often when a
/// token names an unknown key.
const KEYS_FOR: Duration = Duration::from_secs(3600);
const REFETCH_EVERY: Duration = Duration::from_secs(2);
/// The largest discovery document or key set read.
const MAX_DOC_BYTES: usize = 256 * 1024;
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// What one IdP group gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// A global role.
    Global(Role),
    /// A role in one project.
    Project(Role, ProjectName),
    /// Membership of an lxgate team (and so its grants).
    Team(TeamName),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// Exactly as the provider's tokens name it in `iss`.
    pub issuer: String,
    pub audience: String,
    pub groups_claim: String,
    /// (IdP group, what it gives), in the order configured.
    pub role_map: Vec<(String, Grant)>,
}

impl OidcConfig {
    /// `platform-admins=admin,team-a=operator@team-a,devs=team:web`.
    pub fn parse_role_map(s: &str) -> Result<Vec<(String, Grant)>, String> {
        let mut out = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (group, target) = item.split_once('=').ok_or_else(|| {
                format!("entry {item:?} is not GROUP=ROLE, GROUP=ROLE@PROJECT or GROUP=team:TEAM")
            })?;
            let (group, target) = (group.trim(), target.trim());
            if group.is_empty() {
                return Err(format!("entry {item:?} names no group"));
            }
            let grant = if let Some(team) = target.strip_prefix("team:") {
                Grant::Team(TeamName::parse(team).map_err(|e| format!("entry {item:?}: {e}"))?)
            } else if let Some((role, project)) = target.split_once('@') {
                Grant::Project(
                    role.parse().map_err(|e| format!("entry {item:?}: {e}"))?,
                    ProjectName::parse(project).map_err(|e| format!("entry {item:?}: {e}"))?,
                )
            } else {
                Grant::Global(target.parse().map_err(|e| format!("entry {item:?}: {e}"))?)
            };
            out.push((group.to_owned(), grant));
        }
        Ok(out)
    }

    /// Checks the issuer URL: https, or http to a loopback address (a
    /// provider on the same host, as in development and tests).
    pub fn check_issuer(url: &str) -> Result<(), String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
        match parsed.scheme() {
            "https" => Ok(()),
            "http"
                if matches!(parsed.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
                    || matches!(parsed.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
                    || parsed.host_str() == Some("localhost") =>
            {
                Ok(())
            }
            _ => Err("must be https:// (or http:// to a loopback address)".into()),
        }
    }
}

/// What lxgate reads of a provider's token.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: String,
    /// When the token was issued (`iat`; else `nbf`, else `exp`): a sync
    /// never goes back to an older token's groups.
    pub issued_at: i64,
    pub preferred_username: Option<String>,
    pub groups: Vec<String>,
}

/// What the groups give: the highest global role, the highest role per
/// project, and the mapped teams the user belongs in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapped {
    pub global: Option<Role>,
    pub projects: BTreeMap<String, Role>,
    pub teams: Vec<String>,
    /// Every team the map names (membership of the others is left alone).
    pub mapped_teams: Vec<String>,
}

pub fn map_groups(role_map: &[(String, Grant)], groups: &[String]) -> Mapped {
    let mut m = Mapped::default();
    for (group, grant) in role_map {
        if let Grant::Team(t) = grant
            && !m.mapped_teams.contains(&t.to_string())
        {
            m.mapped_teams.push(t.to_string());
        }
        if !groups.iter().any(|g| g == group) {
            continue;
        }
        match grant {
            Grant::Global(r) => m.global = m.global.max(Some(*r)),
            Grant::Project(r, p) => {
                let e = m.projects.entry(p.to_string()).or_insert(*r);
                *e = (*e).max(*r);
            }
            Grant::Team(t) => {
                if !m.teams.contains(&t.to_string()) {
                    m.teams.push(t.to_string());
                }
            }
        }
    }
    m
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

struct Keys {
    set: JwkSet,
    fetched: Instant,
}

/// The provider: its keys, fetched on demand.
pub struct Oidc {
    pub config: OidcConfig,
    http: reqwest::Client,
    keys: RwLock<Option<Keys>>,
    /// One fetch at a time; the time of the last one.
    fetching: Mutex<Option<Instant>>,
    /// Tokens (by hash) whose groups were synced lately: the same token
    /// used again is not synced again.
    synced: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

/// Tokens remembered as synced; how long.
const SYNCED_MAX: usize = 10_000;
const SYNCED_FOR: Duration = Duration::from_secs(600);

impl Oidc {
    pub fn new(config: OidcConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client for the identity provider");
        Self {
            config,
            http,
            keys: RwLock::new(None),
            fetching: Mutex::new(None),
            synced: std::sync::Mutex::default(),
        }
    }

    /// True the first time (lately) a verified `token` is seen: its groups
    /// are then synced into the database.
    pub fn first_sight(&self, token: &str) -> bool {
        let hash = crate::auth::tokens::hash_token(token);
        let mut synced = self.synced.lock().expect("oidc lock poisoned");
        let now = Instant::now();
        if synced
            .get(&hash)
            .is_some_and(|at| now.duration_since(*at) < SYNCED_FOR)
        {
            return false;
        }
        if synced.len() >= SYNCED_MAX {
            synced.retain(|_, at| now.duration_since(*at) < SYNCED_FOR);
            if synced.len() >= SYNCED_MAX {
                synced.clear();
            }
        }
        synced.insert(hash, now);
        true
    }

    /// Forgets that `token` was synced (its sync failed: the next use tries
    /// again).
    pub fn forget(&self, token: &str) {
        let hash = crate::auth::tokens::hash_token(token);
        self.synced
            .lock()
            .expect("oidc lock poisoned")
            .remove(&hash);
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
            if body.len() + chunk.len() > MAX_DOC_BYTES {
                return Err(format!("GET {url}: larger than {MAX_DOC_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: {e}"))
    }

    async fn fetch_keys(&self) -> Result<JwkSet, String> {
        let base = self.config.issuer.trim_end_matches('/');
        let discovery: Discovery = self
            .get_json(&format!("{base}/.well-known/openid-configuration"))
            .await?;
        if discovery.issuer != self.config.issuer {
            return Err(format!(
                "the provider calls itself {:?}, not OIDC_ISSUER_URL {:?}",
                discovery.issuer, self.config.issuer
            ));
        }
        OidcConfig::check_issuer(&discovery.jwks_uri)
            .map_err(|e| format!("jwks_uri {:?} {e}", discovery.jwks_uri))?;
        self.get_json(&discovery.jwks_uri).await
    }

    /// Fetches the keys again unless that was done within `min_age`.
    async fn refresh(&self, min_age: Duration) {
        // Waiters queue behind a fetch under way and then find it fresh:
        // one fetch, however many requests wanted it.
        let mut last = self.fetching.lock().await;
        if last.is_some_and(|t| t.elapsed() < min_age) {
            return;
        }
        let fetched = self.fetch_keys().await;
        *last = Some(Instant::now());
        match fetched {
            Ok(set) => {
                *self.keys.write().await = Some(Keys {
                    set,
                    fetched: Instant::now(),
                });
            }
            // Keep what was there: the provider may be back soon.
            Err(e) => tracing::warn!(error = %e, "fetching the identity provider's keys failed"),
        }
    }

    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let find = |keys: &Option<Keys>| -> Option<DecodingKey> {
            let set = &keys.as_ref()?.set;
            // Signing keys for this algorithm only (a provider also
            // publishes encryption keys).
            let usable = |k: &&jsonwebtoken::jwk::Jwk| {
                !matches!(
                    k.common.public_key_use,
                    Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                ) && k.common.key_algorithm.is_none_or(|a| {
                    use jsonwebtoken::jwk::KeyAlgorithm as K;
                    matches!(
                        (a, alg),
                        (K::RS256, Algorithm::RS256) | (K::ES256, Algorithm::ES256)
                    )
                })
            };
            let keys: Vec<&jsonwebtoken::jwk::Jwk> = set.keys.iter().filter(usable).collect();
            let jwk = match kid {
                Some(kid) => *keys
                    .iter()
                    .find(|k| k.common.key_id.as_deref() == Some(kid))?,
                // No key id: only a provider with a single key is unambiguous.
                None if keys.len() == 1 => keys[0],
                None => return None,
            };
            DecodingKey::from_jwk(jwk).ok()
        };
        {
            let keys = self.keys.read().await;
            let stale = keys.as_ref().is_none_or(|k| k.fetched.elapsed() > KEYS_FOR);
            if !stale && let Some(key) = find(&keys) {
                return Some(key);
            }
        }
        self.refresh(REFETCH_EVERY).await;
        find(&*self.keys.read().await)
    }

    /// Whether `token` claims to be the provider's (signed with an
    /// algorithm lxgate's own tokens never use).
    pub fn looks_like_ours(token: &str) -> bool {
        jsonwebtoken::decode_header(token)
            .is_ok_and(|h| matches!(h.alg, Algorithm::RS256 | Algorithm::ES256))
    }

    /// Verifies a provider's access token: signature (RS256 or ES256, a
    /// key of the provider's), issuer, audience, expiry.
    pub async fn verify(&self, token: &str) -> Result<Identity, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let key = self
            .key_for(header.kid.as_deref(), header.alg)
            .await
            .ok_or("signed with a key the provider does not publish")?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[&self.config.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<BTreeMap<String, Value>>(token, &key, &v)
            .map_err(|e| e.to_string())?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("no subject")?
            .to_owned();
        let groups = match claims.get(&self.config.groups_claim) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let time = |k: &str| claims.get(k).and_then(Value::as_i64);
        let issued_at = time("iat")
            .or_else(|| time("nbf"))
            .or_else(|| time("exp"))
            .unwrap_or(0);
        Ok(Identity {
            subject,
            issued_at,
            preferred_username: claims
                .get("preferred_username")
                .and_then(Value::as_str)
                .map(str::to_owned),
            groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_maps_parse_and_give_the_highest() {
        let map = OidcConfig::parse_role_map(
            "platform-admins=admin, team-a=operator@team-a,readers=viewer@team-a,devs=team:web",
        )
        .unwrap();
        assert_eq!(map.len(), 4);
        let m = map_groups(&map, &["team-a".into(), "readers".into(), "devs".into()]);
        assert_eq!(m.global, None);
        assert_eq!(m.projects.get("team-a"), Some(&Role::Operator));
        assert_eq!(m.teams, vec!["web".to_owned()]);
        assert_eq!(m.mapped_teams, vec!["web".to_owned()]);
        let m = map_groups(&map, &["platform-admins".into()]);
        assert_eq!(m.global, Some(Role::Admin));
        assert!(m.teams.is_empty());
        assert_eq!(
            map_groups(&map, &["unknown".into()]),
            Mapped {
                mapped_teams: vec!["web".into()],
                ..Mapped::default()
            }
        );
        for bad in ["x", "=admin", "g=root", "g=operator@9bad", "g=team:-x"] {
            assert!(OidcConfig::parse_role_map(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn issuers_are_https_or_loopback() {
        assert!(OidcConfig::check_issuer("https://idp.example.com/realms/x").is_ok());
        assert!(OidcConfig::check_issuer("http://127.0.0.1:8080").is_ok());
        assert!(OidcConfig::check_issuer("http://[::1]:8080").is_ok());
        assert!(OidcConfig::check_issuer("http://idp.example.com").is_err());
        assert!(OidcConfig::check_issuer("ftp://x").is_err());
    }
}
