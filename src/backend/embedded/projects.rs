//! Projects on the embedded backend: namespaces for instances and images,
//! with limits checked when an instance is created (as Incus does).
//! `default` always exists; the others are rows in `embedded_projects`.

use std::collections::BTreeMap;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::EmbeddedBackend;
use super::driver_types::VM;
use super::inventory::db;
use super::limits::{parse_cpus, parse_size};
use super::operations::{lifecycle, now, resource_url};
use super::profiles::{in_order, names_of};
use crate::backend::types::{
    ConfigMap, Profile, Project, ProjectCreate, ProjectState, ProjectStateResource, ProjectUpdate,
    expand,
};
use crate::backend::{BackendError, Missing, Projects};
use crate::db::embedded::{self as inv, InstanceRow, ProjectRow};
use crate::names::ProjectName;

pub const DEFAULT: &str = "default";

/// Limit keys and whether a value is a count (else a size in bytes).
const LIMITS: [(&str, bool); 5] = [
    ("limits.instances", true),
    ("limits.containers", true),
    ("limits.virtual-machines", true),
    ("limits.cpu", true),
    ("limits.memory", false),
];

fn check_config(config: &ConfigMap) -> Result<(), BackendError> {
    for (k, v) in config {
        let ok = if let Some((_, count)) = LIMITS.iter().find(|(name, _)| name == k) {
            if *count {
                v.parse::<u32>().is_ok()
            } else {
                parse_size(v).is_some()
            }
        } else if k == "features.profiles" {
            // Profiles are kept per project here (a project's instances use
            // the project's own); sharing the default project's is Incus's.
            if v != "true" {
                return Err(BackendError::BadRequest(
                    "features.profiles: every project of the embedded backend has profiles of its own (only \"true\")".into(),
                ));
            }
            true
        } else if k.starts_with("features.") {
            matches!(v.as_str(), "true" | "false")
        } else if k.starts_with("user.") {
            !v.contains('\0')
        } else {
            return Err(BackendError::BadRequest(format!(
                "Unknown project configuration key: {k}"
            )));
        };
        if !ok {
            return Err(BackendError::BadRequest(format!(
                "Invalid value for project configuration key {k}: {v:?}"
            )));
        }
    }
    Ok(())
}

fn etag(p: &Project) -> String {
    hex::encode(Sha256::digest(json!([p.description, p.config]).to_string()))
}

/// What one instance counts for: the memory and CPUs its expanded config
/// (its profiles' and its own) gives it.
fn instance_usage(config: &ConfigMap) -> (i64, i64) {
    let memory = config
        .get("limits.memory")
        .and_then(|v| parse_size(v))
        .map_or(0, |b| b as i64);
    let cpus = config.get("limits.cpu").map_or(0, |v| {
        v.parse::<i64>().unwrap_or_else(|_| {
            parse_cpus(v).map_or(0, |set| {
                set.split(',')
                    .map(|part| match part.split_once('-') {
                        Some((a, b)) => {
                            b.parse::<i64>().unwrap_or(0) - a.parse::<i64>().unwrap_or(0) + 1
                        }
                        None => 1,
                    })
                    .sum()
            })
        })
    });
    (memory, cpus)
}

impl EmbeddedBackend {
    async fn project_row(&self, name: &str) -> Result<ProjectRow, BackendError> {
        if name == DEFAULT {
            return Ok(ProjectRow {
                name: DEFAULT.into(),
                description: "Default lxgate project".into(),
                config: "{}".into(),
                created_at: String::new(),
            });
        }
        inv::get_project(&self.pool, name)
            .await
            .map_err(db)?
            .ok_or_else(|| BackendError::NotFound(Missing::project(name)))
    }

    /// Where the project's images live: its own store, or the default
    /// project's when it was made with `features.images=false` (as in Incus).
    pub(super) async fn image_project(&self, name: &str) -> Result<String, BackendError> {
        let row = self.project_row(name).await?;
        let config: ConfigMap = serde_json::from_str(&row.config).unwrap_or_default();
        Ok(
            if config.get("features.images").map(String::as_str) == Some("false") {
                DEFAULT.to_owned()
            } else {
                name.to_owned()
            },
        )
    }

    /// 404 unless the project exists.
    pub(super) async fn ensure_project(&self, name: &str) -> Result<(), BackendError> {
        self.project_row(name).await.map(|_| ())
    }

    async fn to_project(&self, row: &ProjectRow) -> Result<Project, BackendError> {
        let mut used_by = Vec::new();
        for i in inv::list_instances(&self.pool, Some(&row.name))
            .await
            .map_err(db)?
        {
            used_by.push(resource_url(&row.name, &format!("instances/{}", i.name)));
        }
        for i in inv::list_images(&self.pool, Some(&row.name))
            .await
            .map_err(db)?
        {
            used_by.push(resource_url(
                &row.name,
                &format!("images/{}", i.fingerprint),
            ));
        }
        // Its profiles but `default`, which every project has (as Incus).
        for p in inv::list_profiles(&self.pool, &row.name)
            .await
            .map_err(db)?
            .iter()
            .filter(|p| p.name != super::profiles::DEFAULT_PROFILE)
        {
            used_by.push(resource_url(&row.name, &format!("profiles/{}", p.name)));
        }
        Ok(Project {
            name: row.name.clone(),
            description: row.description.clone(),
            config: serde_json::from_str(&row.config).unwrap_or_default(),
            used_by,
            policy: Default::default(),
        })
    }
}

#[async_trait::async_trait]
impl Projects for EmbeddedBackend {
    async fn list_projects(&self) -> Result<Vec<Project>, BackendError> {
        let mut rows = vec![self.project_row(DEFAULT).await?];
        rows.extend(inv::list_projects(&self.pool).await.map_err(db)?);
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.to_project(r).await?);
        }
        Ok(out)
    }

    async fn get_project(
        &self,
        name: &ProjectName,
    ) -> Result<(Project, Option<String>), BackendError> {
        let p = self.to_project(&self.project_row(name).await?).await?;
        let tag = etag(&p);
        Ok((p, Some(tag)))
    }

    async fn create_project(&self, req: &ProjectCreate) -> Result<(), BackendError> {
        check_config(&req.config)?;
        if req.name == DEFAULT {
            return Err(BackendError::Conflict("Project already exists".into()));
        }
        inv::insert_project(
            &self.pool,
            &ProjectRow {
                name: req.name.clone(),
                description: req.description.clone(),
                config: serde_json::to_string(&req.config).unwrap_or_else(|_| "{}".into()),
                created_at: now(),
            },
        )
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                BackendError::Conflict("Project already exists".into())
            }
            e => db(e),
        })?;
        lifecycle(
            &self.bus,
            &req.name,
            "project-created",
            &format!("/1.0/projects/{}", req.name),
            json!({}),
        );
        Ok(())
    }

    async fn update_project(
        &self,
        name: &ProjectName,
        update: &ProjectUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(), BackendError> {
        if name.as_str() == DEFAULT {
            return Err(BackendError::NotSupported(
                "the default project of the embedded backend has no settings to change".into(),
            ));
        }
        let mut row = self.project_row(name).await?;
        let current = self.to_project(&row).await?;
        if let Some(tag) = if_match
            && tag.trim_matches('"') != etag(&current)
        {
            return Err(BackendError::PreconditionFailed(
                "ETag doesn't match".into(),
            ));
        }
        let mut config = if replace {
            ConfigMap::new()
        } else {
            current.config
        };
        if let Some(c) = &update.config {
            config.extend(c.clone());
        }
        check_config(&config)?;
        row.config = serde_json::to_string(&config).unwrap_or_else(|_| "{}".into());
        if let Some(d) = &update.description {
            row.description = d.clone();
        } else if replace {
            row.description = String::new();
        }
        inv::update_project(&self.pool, &row).await.map_err(db)?;
        lifecycle(
            &self.bus,
            name,
            "project-updated",
            &format!("/1.0/projects/{name}"),
            json!({}),
        );
        Ok(())
    }

    async fn delete_project(&self, name: &ProjectName) -> Result<(), BackendError> {
        if name.as_str() == DEFAULT {
            return Err(BackendError::BadRequest(
                "The 'default' project cannot be deleted".into(),
            ));
        }
        let p = self.to_project(&self.project_row(name).await?).await?;
        if !p.used_by.is_empty() {
            // What is in it can be removed first: a state conflict (409),
            // as lxgate answers Incus's same refusal.
            return Err(BackendError::Conflict(
                "Only empty projects can be removed".into(),
            ));
        }
        inv::delete_project_profiles(&self.pool, name)
            .await
            .map_err(db)?;
        inv::delete_project(&self.pool, name).await.map_err(db)?;
        lifecycle(
            &self.bus,
            name,
            "project-deleted",
            &format!("/1.0/projects/{name}"),
            json!({}),
        );
        Ok(())
    }

    async fn project_state(&self, name: &ProjectName) -> Result<ProjectState, BackendError> {
        let profiles = self.profiles_of(name).await?;
        self.state_with(name, &profiles).await
    }

    /// None: the embedded backend enforces the policy in lxgate and confines
    /// containers itself.
    fn project_restrictions(&self, _widening: &crate::policy::Widening) -> Option<ConfigMap> {
        None
    }
}

impl EmbeddedBackend {
    /// The project's usage, its instances expanded with `profiles` (its
    /// profiles as they are, or as a profile change would make them).
    async fn state_with(
        &self,
        name: &str,
        profiles: &BTreeMap<String, Profile>,
    ) -> Result<ProjectState, BackendError> {
        let row = self.project_row(name).await?;
        let config: ConfigMap = serde_json::from_str(&row.config).unwrap_or_default();
        let instances = inv::list_instances(&self.pool, Some(name))
            .await
            .map_err(db)?;
        let limit = |k: &str| -> i64 {
            config.get(k).map_or(-1, |v| {
                v.parse::<i64>()
                    .ok()
                    .or_else(|| parse_size(v).map(|b| b as i64))
                    .unwrap_or(-1)
            })
        };
        let vms = instances.iter().filter(|i| i.instance_type == VM).count() as i64;
        let (memory, cpu) = instances
            .iter()
            .map(|r| {
                let (config, _) = expand(
                    in_order(profiles, &names_of(r)),
                    &serde_json::from_str(&r.config).unwrap_or_default(),
                    &Default::default(),
                );
                instance_usage(&config)
            })
            .fold((0, 0), |(m, c), (im, ic)| (m + im, c + ic));
        let mut resources = BTreeMap::new();
        let mut put = |k: &str, limit: i64, usage: i64| {
            resources.insert(k.to_owned(), ProjectStateResource { limit, usage });
        };
        put(
            "instances",
            limit("limits.instances"),
            instances.len() as i64,
        );
        put(
            "containers",
            limit("limits.containers"),
            instances.len() as i64 - vms,
        );
        put("virtual-machines", limit("limits.virtual-machines"), vms);
        put("memory", limit("limits.memory"), memory);
        put("cpu", limit("limits.cpu"), cpu);
        Ok(ProjectState { resources })
    }

    /// Refuses a profile change (`profiles`: the project's profiles with
    /// the change applied) that would take the project over its memory or
    /// CPU limit, or take the limited key away from an instance that has it
    /// (what a project limit asks of every instance). A project already over
    /// a limit an admin lowered is not held to it by changes that add nothing.
    pub(super) async fn check_limits_with(
        &self,
        project: &str,
        profiles: &BTreeMap<String, Profile>,
    ) -> Result<(), BackendError> {
        let now = self.profiles_of(project).await?;
        let (before, after) = (
            self.state_with(project, &now).await?,
            self.state_with(project, profiles).await?,
        );
        let rows = inv::list_instances(&self.pool, Some(project))
            .await
            .map_err(db)?;
        let usage = |profiles: &BTreeMap<String, Profile>, r: &InstanceRow| {
            let (config, _) = expand(
                in_order(profiles, &names_of(r)),
                &serde_json::from_str(&r.config).unwrap_or_default(),
                &Default::default(),
            );
            instance_usage(&config)
        };
        for (key, value, pick) in [
            (
                "memory",
                "limits.memory",
                (|u: (i64, i64)| u.0) as fn((i64, i64)) -> i64,
            ),
            ("cpu", "limits.cpu", |u: (i64, i64)| u.1),
        ] {
            let (Some(b), Some(a)) = (before.resources.get(key), after.resources.get(key)) else {
                continue;
            };
            if a.limit < 0 {
                continue;
            }
            if a.usage > a.limit && a.usage > b.usage {
                return Err(BackendError::BadRequest(format!(
                    "the change would take project \"{project}\" over its {value} ({} of {})",
                    a.usage, a.limit
                )));
            }
            if let Some(r) = rows
                .iter()
                .find(|r| pick(usage(&now, r)) > 0 && pick(usage(profiles, r)) == 0)
            {
                return Err(BackendError::BadRequest(format!(
                    "Project \"{project}\" limits {value}: instance {} would be left without it",
                    r.name
                )));
            }
        }
        Ok(())
    }

    /// Refuses an instance that would take the project over one of its
    /// limits, with the limit named.
    pub(super) async fn check_project_limits(
        &self,
        project: &ProjectName,
        kind: &str,
        config: &ConfigMap,
    ) -> Result<(), BackendError> {
        let state = self.project_state(project).await?;
        let r = |k: &str| state.resources.get(k).cloned().unwrap_or_default();
        let over = |k: &str, adding: i64| {
            let res = r(k);
            res.limit >= 0 && res.usage + adding > res.limit
        };
        let type_key = if kind == VM {
            "virtual-machines"
        } else {
            "containers"
        };
        for key in ["instances", type_key] {
            if over(key, 1) {
                return Err(BackendError::BadRequest(format!(
                    "Reached maximum number of {key} in project \"{project}\" (limits.{key}={})",
                    r(key).limit
                )));
            }
        }
        let (memory, cpu) = instance_usage(config);
        for (key, adding, value) in [
            ("memory", memory, "limits.memory"),
            ("cpu", cpu, "limits.cpu"),
        ] {
            if r(key).limit >= 0 {
                if adding == 0 {
                    return Err(BackendError::BadRequest(format!(
                        "Project \"{project}\" limits {value}: the instance must set {value} too"
                    )));
                }
                if over(key, adding) {
                    return Err(BackendError::BadRequest(format!(
                        "Instance {value} would exceed project \"{project}\"'s limit ({} of {} in use)",
                        r(key).usage,
                        r(key).limit
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_config_is_checked() {
        let mut c = ConfigMap::new();
        c.insert("limits.instances".into(), "2".into());
        c.insert("limits.memory".into(), "1GiB".into());
        c.insert("features.images".into(), "false".into());
        assert!(check_config(&c).is_ok());
        c.insert("limits.instances".into(), "many".into());
        assert!(check_config(&c).is_err());
        let mut c = ConfigMap::new();
        c.insert("restricted".into(), "true".into());
        assert!(check_config(&c).is_err());
    }
}
