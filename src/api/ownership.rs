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

use crate::api::owners::settle;
pub use crate::api::owners::{Ownership, RESERVATION_KEY};
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

/// A lookup for a check that takes longer fails the check (503 for a
/// request, no delivery for an event) rather than holding it up.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

fn unsure() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
        "the project's settings could not be read; try again shortly",
    )
}

/// Whether `project` is owner-only, as last read (concurrent readers of an
/// expired entry wait for one read).
async fn owner_only(state: &AppState, project: &str) -> ApiResult<bool> {
    let Ok(name) = ProjectName::parse(project) else {
        // Not a project anything can be in (the handler answers 400).
        return Ok(false);
    };
    let backend = state.backend.clone();
    state
        .ownership
        .settings
        .try_get_with(project.to_owned(), async move {
            match tokio::time::timeout(LOOKUP_TIMEOUT, backend.get_project(&name)).await {
                // A value an admin wrote straight into the backend with a
                // typo keeps the project closed rather than open.
                Ok(Ok((p, _))) => Ok(setting_of(&p.config).unwrap_or(true)),
                // No such project: nothing in it to hide (the handler answers 404).
                Ok(Err(BackendError::NotFound(_))) => Ok(false),
                Ok(Err(e)) => {
                    tracing::warn!(project = %name, error = %e, "reading a project's owner-only setting failed");
                    Err(())
                }
                Err(_) => Err(()),
            }
        })
        .await
        .map_err(|_: std::sync::Arc<()>| unsure())
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

/// How far a check reaches into an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Reading the instance or its state: its maker may while it is being
    /// made.
    Look,
    /// Anything else (acting on it, reaching inside, copying it): only
    /// once its create succeeded.
    Act,
}

/// Refuses `user` instance `name` of `project` (404, as if it did not
/// exist) when the project is owner-only for it and someone else made it,
/// or (`Reach::Act`) its create is still in flight.
pub async fn require_owner(
    state: &AppState,
    user: &AuthUser,
    project: &str,
    name: &str,
    reach: Reach,
) -> ApiResult<()> {
    if !applies(state, user, project).await? {
        return Ok(());
    }
    let row = db::instance_owners::get(&state.db.pool, project, name).await?;
    match row {
        Some(r)
            if r.user_id.as_deref() == Some(user.id.as_str())
                && (r.pending.is_none() || reach == Reach::Look) =>
        {
            Ok(())
        }
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
fn instance_of(url: &str) -> Option<String> {
    used_by_target(url)?.1.filter(|n| !n.is_empty())
}

/// The instances an operation works on.
fn instances_of(op_resources: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(kinds) = op_resources.as_object() {
        for urls in kinds.values() {
            for url in urls.as_array().into_iter().flatten() {
                if let Some(n) = url.as_str().and_then(instance_of) {
                    out.push(n);
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Who made `project/name`, as last read (concurrent readers wait for one
/// read); `None` when nobody is recorded or it could not be read.
async fn owner_of(state: &AppState, project: &str, name: &str) -> Option<String> {
    let pool = state.db.pool.clone();
    let (p, n) = (project.to_owned(), name.to_owned());
    state
        .ownership
        .owners
        .try_get_with((project.to_owned(), name.to_owned()), async move {
            match tokio::time::timeout(LOOKUP_TIMEOUT, db::instance_owners::get(&pool, &p, &n))
                .await
            {
                Ok(Ok(row)) => Ok(row.and_then(|r| r.user_id)),
                _ => Err(()),
            }
        })
        .await
        .ok()
        .flatten()
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
            // (Usernames are unique and never change hands while the user exists.)
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
            Some(n) => vec![n],
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
/// made. A caller without a role in the project is the handler's to refuse.
pub async fn check_request(state: &AppState, parts: &mut Parts, user: &AuthUser) -> ApiResult<()> {
    let Some(t) = target(state, parts).await? else {
        return Ok(());
    };
    if !user.grants.can_see(t.project.as_str()) {
        return Ok(());
    }
    require_owner(state, user, t.project.as_str(), t.name.as_str(), t.reach).await
}

/// `?project=` as every handler reads it: `default` when absent or empty;
/// 400 for a malformed name, or for a project given twice (which project
/// a request means must not depend on who reads its query).
pub fn query_project(parts: &Parts) -> ApiResult<ProjectName> {
    let mut projects = form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "project")
        .map(|(_, v)| v.into_owned());
    match (projects.next(), projects.next()) {
        (_, Some(_)) => Err(ApiError::bad_request(
            "invalid_query",
            "`project` is given more than once",
        )),
        (None, _) => Ok(ProjectName::default()),
        (Some(p), None) if p.is_empty() => Ok(ProjectName::default()),
        (Some(p), None) => {
            ProjectName::parse(&p).map_err(|e| ApiError::bad_request("invalid_name", e))
        }
    }
}

/// What a request to one instance's routes is about.
struct Target {
    project: ProjectName,
    name: InstanceName,
    reach: Reach,
}

/// The routes that only read an instance (its maker may while it is made).
const LOOKING: [&str; 2] = ["/api/v1/instances/{name}", "/api/v1/instances/{name}/state"];

/// The instance and project a request to one instance's routes names
/// (`None` for other routes); 400 for a malformed name or project, as the
/// handler would answer.
async fn target(state: &AppState, parts: &mut Parts) -> ApiResult<Option<Target>> {
    let Some(matched) = parts.extensions.get::<MatchedPath>().cloned() else {
        return Ok(None);
    };
    if !matched.as_str().starts_with(INSTANCE_ROUTES) {
        return Ok(None);
    }
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| ApiError::bad_request("invalid_name", "the instance name is not valid"))?;
    let Some((_, name)) = params.iter().find(|(k, _)| *k == "name") else {
        return Ok(None);
    };
    let name = InstanceName::parse(name).map_err(|e| ApiError::bad_request("invalid_name", e))?;
    let reach = if parts.method == axum::http::Method::GET && LOOKING.contains(&matched.as_str()) {
        Reach::Look
    } else {
        Reach::Act
    };
    Ok(Some(Target {
        project: query_project(parts)?,
        name,
        reach,
    }))
}

/// The layer in front of every route: a request to one instance's routes
/// is authenticated (once: the handler reuses it) and checked with
/// [`check_request`]; whatever stops it here is its answer.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let route = parts.extensions.get::<MatchedPath>().cloned();
    if let Some(route) = route.filter(|r| r.as_str().starts_with(INSTANCE_ROUTES)) {
        // Who first (401 before 400, as the handlers answer), then what.
        let ws = route.as_str().ends_with("/ws");
        let checked = match AuthUser::resolve(&mut parts, &state, ws).await {
            Ok(user) => check_request(&state, &mut parts, &user).await,
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            return e.into_response();
        }
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Objects that list what uses them (`used_by`, as `/1.0/...` URLs).
pub trait UsedBy {
    fn used_by(&mut self) -> &mut Vec<String>;
}

macro_rules! used_by {
    ($($t:ty),*) => {$(
        impl UsedBy for $t {
            fn used_by(&mut self) -> &mut Vec<String> {
                &mut self.used_by
            }
        }
    )*};
}
used_by!(
    crate::backend::types::Profile,
    crate::backend::types::Network,
    crate::backend::types::StoragePool,
    crate::backend::types::StorageVolume,
    crate::backend::types::Project
);

/// The project a `used_by` URL is in, and the instance it names (itself,
/// one of its snapshots, or its volume); `None` for a URL not understood.
fn used_by_target(url: &str) -> Option<(String, Option<String>)> {
    let parsed = url::Url::parse("http://incus").ok()?.join(url).ok()?;
    let project = parsed
        .query_pairs()
        .find(|(k, _)| k == "project")
        .map_or_else(|| "default".to_owned(), |(_, v)| v.into_owned());
    let segments: Vec<String> = parsed
        .path_segments()?
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let instance = match segments
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [
            "1.0",
            "instances" | "containers" | "virtual-machines",
            name,
            ..,
        ] => Some(*name),
        [
            "1.0",
            "storage-pools",
            _,
            "volumes",
            "container" | "virtual-machine",
            name,
            ..,
        ] => Some(*name),
        ["1.0", ..] => None,
        _ => return None,
    };
    Some((project, instance.map(str::to_owned)))
}

/// Keeps in each object's `used_by` only what `user` may see: nothing of a
/// project it holds no role in, and in an owner-only project no instance
/// someone else made (nor a URL lxgate does not understand). Admins see
/// all of it.
pub async fn filter_used_by<T: UsedBy>(
    state: &AppState,
    user: &AuthUser,
    objects: &mut [T],
) -> ApiResult<()> {
    if user.is_admin() {
        return Ok(());
    }
    let mut owns: std::collections::HashMap<String, Option<Own>> = Default::default();
    for object in objects {
        let mut kept = Vec::new();
        for url in std::mem::take(object.used_by()) {
            let Some((project, instance)) = used_by_target(&url) else {
                continue;
            };
            if !user.grants.can_see(&project) {
                continue;
            }
            if let Some(name) = instance {
                if !owns.contains_key(&project) {
                    let own = own(state, user, &project).await?;
                    owns.insert(project.clone(), own);
                }
                if owns
                    .get(&project)
                    .and_then(Option::as_ref)
                    .is_some_and(|o| !o.has(&name))
                {
                    continue;
                }
            }
            kept.push(url);
        }
        *object.used_by() = kept;
    }
    Ok(())
}

/// Refuses a non-admin (403 `policy_denied`, without naming anything) a
/// change to a custom volume used by instances others made in an
/// owner-only project, or by instances of a project the caller holds no
/// role in: it would reach into them (their data, what they boot from), as
/// a profile change would. Each user is judged in its own project.
pub async fn require_volume_unshared(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    pool: &crate::names::PoolName,
    volume: &crate::names::VolumeName,
) -> ApiResult<()> {
    if user.is_admin() {
        return Ok(());
    }
    let (v, _) = state.backend.get_volume(project, pool, volume).await?;
    let mut owns: std::collections::HashMap<String, Option<Own>> = Default::default();
    let mut others = false;
    for url in &v.used_by {
        match used_by_target(url) {
            Some((p, Some(instance))) => {
                if !user.grants.can_see(&p) {
                    others = true;
                    break;
                }
                if !owns.contains_key(&p) {
                    let own = own(state, user, &p).await?;
                    owns.insert(p.clone(), own);
                }
                if owns
                    .get(&p)
                    .and_then(Option::as_ref)
                    .is_some_and(|o| !o.has(&instance))
                {
                    others = true;
                    break;
                }
            }
            Some((_, None)) => {}
            // Not understood: not waved through.
            None => {
                others = true;
                break;
            }
        }
    }
    if others {
        return Err(ApiError::policy_denied(
            "the volume is used by instances other users made in an owner-only project, or in a project you hold no role in; an admin can change it",
        ));
    }
    Ok(())
}

/// [`require_volume_unshared`] for each custom volume a write gives an
/// instance or profile (`will`) that it did not have (`was`): a disk
/// device's `source` is a volume as good as attaching it.
pub async fn check_volume_devices(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    was: &crate::backend::types::DevicesMap,
    will: &crate::backend::types::DevicesMap,
) -> ApiResult<()> {
    if user.is_admin() {
        return Ok(());
    }
    for (name, dev) in will {
        let get = |k: &str| dev.get(k).map(String::as_str);
        let (Some("disk"), Some(pool), Some(source)) = (get("type"), get("pool"), get("source"))
        else {
            continue;
        };
        let before = was.get(name);
        let same = before.is_some_and(|b| {
            b.get("pool").map(String::as_str) == Some(pool)
                && b.get("source").map(String::as_str) == Some(source)
        });
        if same {
            continue;
        }
        // A name lxgate cannot check is not waved through (the attach
        // route refuses it the same way).
        let pool = crate::names::PoolName::parse(pool)
            .map_err(|e| ApiError::invalid_field(&format!("devices.{name}.pool"), e))?;
        let volume = crate::names::VolumeName::parse(source)
            .map_err(|e| ApiError::invalid_field(&format!("devices.{name}.source"), e))?;
        require_volume_unshared(state, user, project, &pool, &volume).await?;
    }
    Ok(())
}

/// A create's record of who is making the instance, written before the
/// backend is asked: the maker sees it while it is made, and quotas count
/// it. Whatever becomes of the create, the record follows what the backend
/// has: [`keep`](Self::keep) on success, [`release`](Self::release) when it
/// was refused before the backend was asked, [`settle`](Self::settle)
/// otherwise (kept if the instance exists, gone if not). Dropped unsettled
/// (a client that went away, a panic, an operation never heard of again),
/// it settles on a task of its own.
pub struct Reservation(Option<Held>);

struct Held {
    state: AppState,
    project: String,
    name: String,
    user_id: String,
    username: String,
    /// `None`: somebody is recorded under the name already (a create of
    /// lxgate's in flight; this one fails, the name being taken, or takes
    /// the record over when it succeeds).
    token: Option<String>,
}

impl Reservation {
    pub fn new(
        state: &AppState,
        project: &ProjectName,
        name: &InstanceName,
        user: &AuthUser,
        token: Option<String>,
    ) -> Self {
        Self(Some(Held {
            state: state.clone(),
            project: project.to_string(),
            name: name.to_string(),
            user_id: user.id.clone(),
            username: user.username.clone(),
            token,
        }))
    }

    /// The reservation's token, if it made a record.
    pub fn token(&self) -> Option<&str> {
        self.0.as_ref().and_then(|h| h.token.as_deref())
    }

    /// The create was refused before the backend was asked: no record.
    pub async fn release(mut self) {
        if let Some(h) = self.0.take()
            && let Some(token) = &h.token
        {
            let pool = &h.state.db.pool;
            if let Err(e) = db::instance_owners::release(pool, &h.project, &h.name, token).await {
                tracing::warn!(error = %e, instance = %h.name, "releasing a create's reservation failed");
            }
        }
    }

    /// The create succeeded: the caller made it, for good.
    pub async fn keep(mut self) {
        if let Some(h) = self.0.take() {
            let pool = &h.state.db.pool;
            h.state
                .ownership
                .remember(&h.project, &h.name, Some(&h.user_id))
                .await;
            let done = match &h.token {
                // A reservation settled meanwhile (the janitor, after a
                // create longer than an hour) is written again.
                Some(token) => match db::instance_owners::confirm(pool, &h.project, &h.name, token)
                    .await
                {
                    Ok(false) => {
                        db::instance_owners::set(pool, &h.project, &h.name, &h.user_id, &h.username)
                            .await
                    }
                    other => other.map(|_| ()),
                },
                // No reservation (the name was recorded for another create,
                // which must have failed): the record is this one's now.
                None => {
                    db::instance_owners::set(pool, &h.project, &h.name, &h.user_id, &h.username)
                        .await
                }
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, instance = %h.name, "recording who made an instance failed");
            }
        }
    }

    /// The create failed, or how it ended is not known: the record stays
    /// if the instance exists and carries this reservation's token (a
    /// create can fail after making it, in a start), else it goes.
    pub async fn settle(mut self) {
        if let Some(h) = self.0.take()
            && let Some(token) = &h.token
        {
            settle(
                &h.state.backend,
                &h.state.db.pool,
                &h.project,
                &h.name,
                token,
            )
            .await;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(h) = self.0.take()
            && let Some(token) = h.token
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                settle(
                    &h.state.backend,
                    &h.state.db.pool,
                    &h.project,
                    &h.name,
                    &token,
                )
                .await
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_urls_name_their_instance() {
        assert_eq!(instance_of("/1.0/instances/web"), Some("web".into()));
        assert_eq!(
            instance_of("/1.0/instances/web?project=p"),
            Some("web".into())
        );
        assert_eq!(
            instance_of("/1.0/instances/web/snapshots/s0"),
            Some("web".into())
        );
        assert_eq!(instance_of("/1.0/containers/db"), Some("db".into()));
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
    fn used_by_urls_say_their_project_and_instance() {
        let t = |u: &str| used_by_target(u);
        assert_eq!(
            t("/1.0/instances/web"),
            Some(("default".into(), Some("web".into())))
        );
        assert_eq!(
            t("/1.0/instances/web/snapshots/s0?project=team"),
            Some(("team".into(), Some("web".into())))
        );
        assert_eq!(
            t("/1.0/storage-pools/default/volumes/container/db?project=p"),
            Some(("p".into(), Some("db".into())))
        );
        assert_eq!(
            t("/1.0/storage-pools/default/volumes/custom/v?project=p"),
            Some(("p".into(), None))
        );
        assert_eq!(t("/1.0/profiles/default"), Some(("default".into(), None)));
        assert_eq!(t("/2.0/whatever"), None);
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
