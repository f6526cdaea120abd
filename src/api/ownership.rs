//! Owner-only projects: with `user.lxgate.owner-only=true` in a project's
//! config, its operators and viewers see and act on only the instances they
//! made (as `instance_owners` records them), and only the operations and
//! events of those instances or that they started. Admins of the project
//! (global admins, or admins there by a grant or a team) see everything.
//!
//! An instance someone else made is answered as missing (404
//! `instance_not_found`, word for word what a missing one gets), so that
//! nobody learns what others run. Every route under `instances/{name}` is
//! checked by [`guard`], a layer in front of them all: a route added there
//! later is covered without saying so.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use moka::future::Cache;

use crate::app::AppState;
use crate::auth::{AuthUser, Role};
use crate::backend::types::{ConfigMap, Event, Operation, RequestedBy};
use crate::backend::{BackendError, Missing};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::names::{InstanceName, ProjectName};

/// The project config key that turns it on.
pub const KEY: &str = "user.lxgate.owner-only";

/// The route templates the guard checks (every route of one instance).
const INSTANCE_ROUTES: &str = "/api/v1/instances/{name}";

/// How long a project's setting is believed on this replica without
/// reading it again (a change through this replica applies at once).
const SETTING_FOR: Duration = Duration::from_secs(2);
/// How long an instance's recorded maker is believed by the event relay
/// (one lookup for many subscribers). Kept past a delete on purpose: the
/// events of the delete still reach the one who made it.
const OWNER_FOR: Duration = Duration::from_secs(5);

/// What this replica remembers of projects' settings and instances' makers.
pub struct Ownership {
    settings: Cache<String, bool>,
    owners: Cache<(String, String), Option<String>>,
}

impl Default for Ownership {
    fn default() -> Self {
        Self {
            settings: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(SETTING_FOR)
                .build(),
            owners: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(OWNER_FOR)
                .build(),
        }
    }
}

impl Ownership {
    /// A project's config changed (or it is gone) through this replica.
    pub async fn forget_project(&self, project: &str) {
        self.settings.invalidate(project).await;
    }

    /// `project/name` was recorded as made by `user_id`.
    pub async fn remember(&self, project: &str, name: &str, user_id: Option<&str>) {
        self.owners
            .insert(
                (project.to_owned(), name.to_owned()),
                user_id.map(str::to_owned),
            )
            .await;
    }
}

/// Whether `config` turns owner-only on: 400 for a value that is neither
/// `true` nor `false` (for the projects endpoints, before anything is written).
pub fn setting_of(config: &ConfigMap) -> ApiResult<bool> {
    match config.get(KEY).map(|v| v.trim()) {
        None | Some("" | "false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(ApiError::bad_request(
            "invalid_config",
            format!("{KEY}: {v:?} is not `true` or `false`"),
        )
        .with_field(format!("config.{KEY}"))),
    }
}

async fn owner_only(state: &AppState, project: &str) -> ApiResult<bool> {
    if let Some(on) = state.ownership.settings.get(project).await {
        return Ok(on);
    }
    let name = ProjectName::parse(project).map_err(|e| ApiError::invalid_field("project", e))?;
    let on = match state.backend.get_project(&name).await {
        // A value an admin wrote straight into the backend with a typo
        // keeps the project closed rather than open.
        Ok((p, _)) => setting_of(&p.config).unwrap_or(true),
        // No such project: nothing in it to hide (the handler answers 404).
        Err(BackendError::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    state
        .ownership
        .settings
        .insert(project.to_owned(), on)
        .await;
    Ok(on)
}

/// Whether `user` sees only its own instances in `project`: below admin
/// there, in an owner-only project.
pub async fn applies(state: &AppState, user: &AuthUser, project: &str) -> ApiResult<bool> {
    if user.grants.role_in(project) >= Some(Role::Admin) {
        return Ok(false);
    }
    owner_only(state, project).await
}

fn missing(name: &str) -> ApiError {
    BackendError::NotFound(Missing::Instance {
        name: name.to_owned(),
    })
    .into()
}

/// Refuses `user` instance `name` of `project` (404, as if it did not
/// exist) when the project is owner-only for it and someone else made it.
pub async fn require_owner(
    state: &AppState,
    user: &AuthUser,
    project: &str,
    name: &str,
) -> ApiResult<()> {
    if !applies(state, user, project).await? {
        return Ok(());
    }
    let row = db::instance_owners::get(&state.db.pool, project, name).await?;
    match row.and_then(|r| r.user_id) {
        Some(id) if id == user.id => Ok(()),
        _ => Err(missing(name)),
    }
}

/// What a caller may see of a project where owner-only applies to it.
pub struct Own {
    user_id: String,
    names: HashSet<String>,
}

impl Own {
    /// Whether the caller made instance `name`.
    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Whether the caller sees an operation `requester` (its user id, when
    /// lxgate recorded it) started: its own, or one on instances it all made.
    pub fn sees_operation(&self, op: &Operation, requester: Option<&str>) -> bool {
        if requester == Some(self.user_id.as_str()) {
            return true;
        }
        let resources = serde_json::to_value(&op.resources).unwrap_or_default();
        let names = instances_of(&resources);
        !names.is_empty() && names.iter().all(|n| self.has(n))
    }
}

/// What `user` may see of `project`: `None` for everything.
pub async fn own(state: &AppState, user: &AuthUser, project: &str) -> ApiResult<Option<Own>> {
    if !applies(state, user, project).await? {
        return Ok(None);
    }
    let names = db::instance_owners::names_of(&state.db.pool, project, &user.id).await?;
    Ok(Some(Own {
        user_id: user.id.clone(),
        names: names.into_iter().collect(),
    }))
}

/// The instance a `/1.0/instances/...` URL (of it, or of its snapshots,
/// backups, ...) is about.
fn instance_of(url: &str) -> Option<&str> {
    let rest = [
        "/1.0/instances/",
        "/1.0/containers/",
        "/1.0/virtual-machines/",
    ]
    .iter()
    .find_map(|p| url.strip_prefix(p))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|n| !n.is_empty())
}

/// The instances an operation works on.
fn instances_of(op_resources: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(kinds) = op_resources.as_object() {
        for urls in kinds.values() {
            for url in urls.as_array().into_iter().flatten() {
                if let Some(n) = url.as_str().and_then(instance_of) {
                    out.push(n.to_owned());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

async fn owner_of(state: &AppState, project: &str, name: &str) -> Option<String> {
    let key = (project.to_owned(), name.to_owned());
    if let Some(o) = state.ownership.owners.get(&key).await {
        return o;
    }
    let o = db::instance_owners::get(&state.db.pool, project, name)
        .await
        .ok()?
        .and_then(|r| r.user_id);
    state.ownership.owners.insert(key, o.clone()).await;
    o
}

/// Whether an event reaches subscriber `user` (who may see its project):
/// where owner-only applies, an instance's events only reach who made it,
/// an operation's only who started it or made every instance it is on.
/// Unsure (the database not answering) is no.
pub async fn sees_event(
    state: &AppState,
    user: &AuthUser,
    e: &Event,
    by: Option<&RequestedBy>,
) -> bool {
    if e.project.is_empty() {
        return true;
    }
    match applies(state, user, &e.project).await {
        Ok(false) => return true,
        Ok(true) => {}
        Err(_) => return false,
    }
    let names = match e.kind.as_str() {
        "operation" => {
            if by.is_some_and(|b| b.username == user.username) {
                return true;
            }
            let names = instances_of(&e.metadata["resources"]);
            if names.is_empty() {
                return false;
            }
            names
        }
        _ => match e.metadata["source"].as_str().and_then(instance_of) {
            Some(n) => vec![n.to_owned()],
            // Not about an instance (a volume, a network): project-wide.
            None => return true,
        },
    };
    for n in names {
        if owner_of(state, &e.project, &n).await.as_deref() != Some(user.id.as_str()) {
            return false;
        }
    }
    true
}

/// Checks a request to one instance's routes (`instances/{name}/...`) by
/// its caller: 404 for an instance of an owner-only project somebody else
/// made. Anything else (another route, a malformed name or project, no
/// valid credentials, no role in the project) is for the handler to answer.
pub async fn check_request(state: &AppState, parts: &mut Parts, user: &AuthUser) -> ApiResult<()> {
    let Some((project, name)) = target(state, parts).await else {
        return Ok(());
    };
    if !user.grants.can_see(project.as_str()) {
        return Ok(());
    }
    require_owner(state, user, project.as_str(), name.as_str()).await
}

/// The project and instance a request to one instance's routes names.
async fn target(state: &AppState, parts: &mut Parts) -> Option<(ProjectName, InstanceName)> {
    let matched = parts.extensions.get::<MatchedPath>()?;
    if !matched.as_str().starts_with(INSTANCE_ROUTES) {
        return None;
    }
    let params = RawPathParams::from_request_parts(parts, state).await.ok()?;
    let name = params.iter().find(|(k, _)| *k == "name")?.1;
    let name = InstanceName::parse(name).ok()?;
    let mut projects = form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "project")
        .map(|(_, v)| v.into_owned());
    let project = match (projects.next(), projects.next()) {
        (None, _) => "default".to_owned(),
        (Some(p), None) => p,
        // Sent twice: the handler refuses it.
        (Some(_), Some(_)) => return None,
    };
    Some((ProjectName::parse(&project).ok()?, name))
}

/// The layer in front of every route: requests to one instance's routes
/// are checked with [`check_request`].
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    if target(&state, &mut parts).await.is_some() {
        let ws = parts.uri.path().ends_with("/ws");
        // Without valid credentials the handler answers as it does.
        if let Ok(user) = AuthUser::resolve(&mut parts, &state, ws).await
            && let Err(e) = check_request(&state, &mut parts, &user).await
        {
            return e.into_response();
        }
    }
    next.run(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_urls_name_their_instance() {
        assert_eq!(instance_of("/1.0/instances/web"), Some("web"));
        assert_eq!(instance_of("/1.0/instances/web?project=p"), Some("web"));
        assert_eq!(instance_of("/1.0/instances/web/snapshots/s0"), Some("web"));
        assert_eq!(instance_of("/1.0/containers/db"), Some("db"));
        assert_eq!(instance_of("/1.0/instances/"), None);
        assert_eq!(
            instance_of("/1.0/storage-pools/default/volumes/custom/v"),
            None
        );
        let ops = serde_json::json!({
            "instances": ["/1.0/instances/b?project=p", "/1.0/instances/a?project=p"],
            "instances_snapshots": ["/1.0/instances/a/snapshots/s?project=p"],
            "storage_volumes": ["/1.0/storage-pools/default/volumes/custom/v"],
        });
        assert_eq!(instances_of(&ops), vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn the_setting_is_true_or_false() {
        let cfg = |v: &str| ConfigMap::from([(KEY.to_owned(), v.to_owned())]);
        assert!(!setting_of(&ConfigMap::new()).unwrap());
        assert!(!setting_of(&cfg("false")).unwrap());
        assert!(!setting_of(&cfg("")).unwrap());
        assert!(setting_of(&cfg("true")).unwrap());
        assert!(setting_of(&cfg("yes")).is_err());
    }
}
