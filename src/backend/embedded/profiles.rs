//! Profiles on the embedded backend, kept by lxgate itself: rows of
//! `embedded_profiles`, per project. Every project has `default`; until it
//! is changed it has no row and is the built-in one (the root disk).
//!
//! An instance lists its profiles in its row; what it runs with is their
//! config and devices in order, then its own ([`expand`]). That expanded
//! config is applied when the instance is created and each time it starts
//! (LXC's configuration is written again, QEMU's command line is built), so
//! a profile change reaches a running instance at its next start, never
//! while it runs. A change no instance using the profile could run with (a
//! config key the drivers lack, a VM's CPU count, `security.privileged`
//! against the id map a container was made with, no root disk left, a
//! project limit exceeded) is refused when it is made, as Incus does.
//!
//! Profiles hold config keys the drivers implement and the root disk; the
//! embedded backend attaches volumes and NICs to instances, not to
//! profiles (501 otherwise, as for an instance created with devices).
//!
//! Who may write what into a profile is the API's instance policy, as for
//! an instance's own config.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::driver_types::VM;
use super::inventory::db;
use super::lxc::{self, Confinement};
use super::operations::{lifecycle, now, resource_url};
use super::{EmbeddedBackend, instance_config, qemu};
use crate::backend::types::{ConfigMap, DevicesMap, Profile, ProfileCreate, ProfileUpdate, expand};
use crate::backend::{BackendError, Listing, Missing, Profiles};
use crate::db::embedded::{self as inv, InstanceRow, ProfileRow};
use crate::names::{ProfileName, ProjectName};

pub const DEFAULT_PROFILE: &str = "default";

/// The key of the lock profile writes of a project take (`/` is in no
/// instance name, so it is no instance's lock).
const PROFILES_LOCK: &str = "/profiles";

/// Options of the one device a profile may hold here.
const ROOT_DISK_OPTIONS: [&str; 3] = ["type", "path", "pool"];

/// A project's `default` profile before anybody changed it.
fn builtin_default(project: &str) -> Profile {
    Profile {
        name: DEFAULT_PROFILE.into(),
        description: "Default lxgate profile (the root disk)".into(),
        config: ConfigMap::new(),
        devices: instance_config::root_device(),
        used_by: Vec::new(),
        project: project.into(),
    }
}

/// Incus's ETag idea: a hash over what PUT replaces.
fn etag(p: &Profile) -> String {
    hex::encode(Sha256::digest(
        json!([p.description, p.config, p.devices]).to_string(),
    ))
}

fn from_row(row: &ProfileRow) -> Profile {
    Profile {
        name: row.name.clone(),
        description: row.description.clone(),
        config: serde_json::from_str(&row.config).unwrap_or_default(),
        devices: serde_json::from_str(&row.devices).unwrap_or_default(),
        used_by: Vec::new(),
        project: row.project.clone(),
    }
}

fn to_row(p: &Profile, created_at: String) -> ProfileRow {
    ProfileRow {
        project: p.project.clone(),
        name: p.name.clone(),
        description: p.description.clone(),
        config: serde_json::to_string(&p.config).unwrap_or_else(|_| "{}".into()),
        devices: serde_json::to_string(&p.devices).unwrap_or_else(|_| "{}".into()),
        created_at,
    }
}

fn not_found(name: &str) -> BackendError {
    BackendError::NotFound(Missing::Profile { name: name.into() })
}

/// Whether `d` is a root disk (`type: disk`, `path: /`).
pub(super) fn is_root_disk(d: &BTreeMap<String, String>) -> bool {
    d.get("type").map(String::as_str) == Some("disk")
        && d.get("path").map(String::as_str) == Some("/")
}

/// A root disk as this backend makes them: in the `default` pool (a
/// directory of the instance's own), no options it could not honour (a
/// size on a directory).
pub(super) fn plain_root_disk(d: &BTreeMap<String, String>) -> bool {
    is_root_disk(d)
        && d.keys().all(|k| ROOT_DISK_OPTIONS.contains(&k.as_str()))
        && d.get("pool").is_none_or(|pool| pool == "default")
}

/// What a profile may hold on this backend: config keys the drivers
/// implement (as on an instance) and the root disk. `""` values unset a key.
fn check_profile(p: &mut Profile) -> Result<(), BackendError> {
    p.config.retain(|_, v| !v.is_empty());
    lxc::check_config(&p.config)?;
    for (name, d) in &p.devices {
        if !plain_root_disk(d) {
            return Err(BackendError::NotSupported(format!(
                "device {name}: a profile of the embedded backend holds the root disk only \
                 (`type: disk`, `path: /`, `pool: default`); attach volumes and NICs to instances with their own endpoints"
            )));
        }
    }
    Ok(())
}

/// The profiles `names` names, in order. A name without a profile is
/// skipped: a profile an instance names cannot be deleted, so this is one
/// deleted while the instance was being changed to name it (said in the log).
pub(super) fn in_order<'a>(
    profiles: &'a BTreeMap<String, Profile>,
    names: &[String],
) -> Vec<&'a Profile> {
    names
        .iter()
        .filter_map(|n| {
            let p = profiles.get(n);
            if p.is_none() {
                tracing::warn!(profile = %n, "an instance names a profile that does not exist");
            }
            p
        })
        .collect()
}

/// A profile list asked for: every name a profile of the project, none twice.
pub(super) fn check_list(
    profiles: &BTreeMap<String, Profile>,
    names: &[String],
) -> Result<(), BackendError> {
    let mut seen = BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(BackendError::BadRequest(format!(
                "Duplicate profile found in request: {n}"
            )));
        }
        if !profiles.contains_key(n) {
            return Err(not_found(n));
        }
    }
    Ok(())
}

/// An instance row's profiles (the JSON list it stores).
pub(super) fn names_of(row: &InstanceRow) -> Vec<String> {
    serde_json::from_str(&row.profiles).unwrap_or_default()
}

/// Whether a container's expanded config asks for an id map of its own.
pub(super) fn isolated(expanded: &ConfigMap) -> bool {
    expanded
        .get("security.idmap.isolated")
        .is_some_and(|v| v == "true")
}

/// What an instance with `config` and `devices` (its own) and these
/// profiles runs with, and whether that is something it can run: a root
/// disk, config keys its driver implements, and (an existing container)
/// the confinement it was made with. `made`: an existing container's
/// confinement and whether its map is an isolated one (what its expanded
/// config said until now: no change may flip it).
pub(super) fn runnable(
    kind: &str,
    profiles: &[&Profile],
    config: &ConfigMap,
    devices: &DevicesMap,
    made: Option<(&Confinement, bool)>,
) -> Result<(ConfigMap, DevicesMap), BackendError> {
    let (config, devices) = expand(profiles.iter().copied(), config, devices);
    if !devices.values().any(is_root_disk) {
        return Err(BackendError::BadRequest(
            "No root device could be found: the instance's profiles and devices give it no root disk (`type: disk`, `path: /`)".into(),
        ));
    }
    let user = instance_config::user_config(config.clone());
    lxc::check_config(&user)?;
    if kind == VM {
        qemu::vm_resources(&user)?;
    } else if let Some((confinement, was_isolated)) = made {
        let privileged = *confinement == Confinement::Privileged;
        if user.get("security.privileged").is_some_and(|v| v == "true") != privileged {
            return Err(BackendError::BadRequest(format!(
                "security.privileged cannot be changed on an existing container: its files belong to {} and would have to be shifted; create a new container instead",
                match confinement {
                    Confinement::Privileged => "the host's ids".to_owned(),
                    Confinement::Unprivileged(m) => format!(
                        "its mapped ids ({}-{})",
                        m.uid_base,
                        m.uid_base + m.size - 1
                    ),
                }
            )));
        }
        if !privileged && isolated(&user) != was_isolated {
            return Err(BackendError::BadRequest(
                "security.idmap.isolated cannot be changed on an existing container: its files belong to its current id map and would have to be shifted; create a new container instead".into(),
            ));
        }
    }
    Ok((config, devices))
}

impl EmbeddedBackend {
    /// Every profile of a project by name, `default` included (`used_by`
    /// left empty).
    pub(super) async fn profiles_of(
        &self,
        project: &str,
    ) -> Result<BTreeMap<String, Profile>, BackendError> {
        let mut out = BTreeMap::from([(DEFAULT_PROFILE.to_owned(), builtin_default(project))]);
        for row in inv::list_profiles(&self.pool, project).await.map_err(db)? {
            out.insert(row.name.clone(), from_row(&row));
        }
        Ok(out)
    }

    /// The instances of `project` naming profile `name`.
    async fn users_of(&self, project: &str, name: &str) -> Result<Vec<InstanceRow>, BackendError> {
        Ok(inv::list_instances(&self.pool, Some(project))
            .await
            .map_err(db)?
            .into_iter()
            .filter(|r| names_of(r).iter().any(|n| n == name))
            .collect())
    }

    /// One profile (404 unless it exists), with what uses it.
    async fn profile(&self, project: &str, name: &str) -> Result<Profile, BackendError> {
        self.ensure_project(project).await?;
        let mut p = match inv::get_profile(&self.pool, project, name)
            .await
            .map_err(db)?
        {
            Some(row) => from_row(&row),
            None if name == DEFAULT_PROFILE => builtin_default(project),
            None => return Err(not_found(name)),
        };
        p.used_by = self
            .users_of(project, name)
            .await?
            .iter()
            .map(|r| resource_url(project, &format!("instances/{}", r.name)))
            .collect();
        Ok(p)
    }
}

#[async_trait::async_trait]
impl Profiles for EmbeddedBackend {
    async fn list_profiles(
        &self,
        project: &ProjectName,
        expand: bool,
    ) -> Result<Listing<Profile>, BackendError> {
        self.ensure_project(project).await?;
        let profiles = self.profiles_of(project).await?;
        if !expand {
            return Ok(Listing::Names(profiles.into_keys().collect()));
        }
        let rows = inv::list_instances(&self.pool, Some(project))
            .await
            .map_err(db)?;
        Ok(Listing::Full(
            profiles
                .into_values()
                .map(|mut p| {
                    p.used_by = rows
                        .iter()
                        .filter(|r| names_of(r).contains(&p.name))
                        .map(|r| resource_url(project, &format!("instances/{}", r.name)))
                        .collect();
                    p
                })
                .collect(),
        ))
    }

    async fn get_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
    ) -> Result<(Profile, Option<String>), BackendError> {
        let p = self.profile(project, name).await?;
        let tag = etag(&p);
        Ok((p, Some(tag)))
    }

    async fn create_profile(
        &self,
        project: &ProjectName,
        req: &ProfileCreate,
    ) -> Result<(), BackendError> {
        let lock = self.lock(project, PROFILES_LOCK);
        let _guard = lock.lock().await;
        self.ensure_project(project).await?;
        let mut p = Profile {
            name: req.name.clone(),
            description: req.description.clone(),
            config: req.config.clone(),
            devices: req.devices.clone(),
            used_by: Vec::new(),
            project: project.to_string(),
        };
        check_profile(&mut p)?;
        let taken = || BackendError::Conflict(format!("Profile \"{}\" already exists", req.name));
        if req.name == DEFAULT_PROFILE {
            return Err(taken());
        }
        inv::insert_profile(&self.pool, &to_row(&p, now()))
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => taken(),
                e => db(e),
            })?;
        lifecycle(
            &self.bus,
            project,
            "profile-created",
            &resource_url(project, &format!("profiles/{}", req.name)),
            json!({}),
        );
        Ok(())
    }

    async fn update_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
        update: &ProfileUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(), BackendError> {
        let lock = self.lock(project, PROFILES_LOCK);
        let _guard = lock.lock().await;
        let current = self.profile(project, name).await?;
        if let Some(tag) = if_match
            && tag.trim_matches('"') != etag(&current)
        {
            return Err(BackendError::PreconditionFailed(
                "ETag doesn't match".into(),
            ));
        }
        let mut new = current.updated(update, replace);
        check_profile(&mut new)?;
        // Every instance using the profile must still be one it can run,
        // and the project's limits must hold (the lock creates check them
        // under, so none squeezes in between).
        let project_lock = self.lock(project, "");
        let _p = project_lock.lock().await;
        let mut profiles = self.profiles_of(project).await?;
        profiles.insert(name.to_string(), new.clone());
        let before = self.profiles_of(project).await?;
        for row in self.users_of(project, name).await? {
            let config = instance_config::own_config(&row);
            let devices: DevicesMap = serde_json::from_str(&row.devices).unwrap_or_default();
            let names = names_of(&row);
            let (was, _) = expand(in_order(&before, &names), &config, &devices);
            runnable(
                &row.instance_type,
                &in_order(&profiles, &names),
                &config,
                &devices,
                Some((&Self::confinement(&row)?, isolated(&was))),
            )
            .map_err(|e| match e {
                BackendError::BadRequest(m) => BackendError::BadRequest(format!(
                    "instance {} uses this profile: {m}",
                    row.name
                )),
                e => e,
            })?;
        }
        self.check_limits_with(project, &profiles).await?;
        let created_at = inv::get_profile(&self.pool, project, name)
            .await
            .map_err(db)?
            .map_or_else(now, |r| r.created_at);
        inv::put_profile(&self.pool, &to_row(&new, created_at))
            .await
            .map_err(db)?;
        lifecycle(
            &self.bus,
            project,
            "profile-updated",
            &resource_url(project, &format!("profiles/{name}")),
            json!({}),
        );
        Ok(())
    }

    async fn delete_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
    ) -> Result<(), BackendError> {
        let lock = self.lock(project, PROFILES_LOCK);
        let _guard = lock.lock().await;
        if name.as_str() == DEFAULT_PROFILE {
            return Err(BackendError::Conflict(
                "The \"default\" profile cannot be deleted".into(),
            ));
        }
        let p = self.profile(project, name).await?;
        if !p.used_by.is_empty() {
            return Err(BackendError::Conflict(format!(
                "Profile \"{name}\" is currently in use by {}",
                p.used_by.join(", ")
            )));
        }
        if !inv::delete_profile(&self.pool, project, name)
            .await
            .map_err(db)?
        {
            return Err(not_found(name));
        }
        lifecycle(
            &self.bus,
            project,
            "profile-deleted",
            &resource_url(project, &format!("profiles/{name}")),
            json!({}),
        );
        Ok(())
    }

    async fn rename_profile(
        &self,
        project: &ProjectName,
        name: &ProfileName,
        new_name: &ProfileName,
    ) -> Result<(), BackendError> {
        let lock = self.lock(project, PROFILES_LOCK);
        let _guard = lock.lock().await;
        if name.as_str() == DEFAULT_PROFILE {
            return Err(BackendError::Conflict(
                "The \"default\" profile cannot be renamed".into(),
            ));
        }
        self.profile(project, name).await?;
        let taken = || BackendError::Conflict(format!("Name \"{new_name}\" already in use"));
        if new_name.as_str() == DEFAULT_PROFILE
            || inv::get_profile(&self.pool, project, new_name)
                .await
                .map_err(db)?
                .is_some()
        {
            return Err(taken());
        }
        // The instances naming it are rewritten under their own locks
        // (taken in name order; nothing holding an instance's lock waits
        // for this one), so no change of theirs writes the old name back.
        let users = self.users_of(project, name).await?;
        let locks: Vec<_> = users.iter().map(|r| self.lock(project, &r.name)).collect();
        let mut _held = Vec::with_capacity(locks.len());
        for l in &locks {
            _held.push(l.lock().await);
        }
        let mut lists = Vec::with_capacity(users.len());
        for r in &users {
            // Read again under its lock: the list as it is now.
            let Some(row) = inv::get_instance(&self.pool, project, &r.name)
                .await
                .map_err(db)?
            else {
                continue;
            };
            let renamed: Vec<String> = names_of(&row)
                .into_iter()
                .map(|n| {
                    if n == name.as_str() {
                        new_name.to_string()
                    } else {
                        n
                    }
                })
                .collect();
            lists.push((
                row.name.clone(),
                serde_json::to_string(&renamed).unwrap_or_else(|_| "[]".into()),
            ));
        }
        let renamed = inv::rename_profile(&self.pool, project, name, new_name, &lists)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => taken(),
                e => db(e),
            })?;
        if !renamed {
            return Err(not_found(name));
        }
        lifecycle(
            &self.bus,
            project,
            "profile-renamed",
            &resource_url(project, &format!("profiles/{new_name}")),
            json!({"old_name": name.as_str()}),
        );
        Ok(())
    }
}
