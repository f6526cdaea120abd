//! Per-user quotas inside a project: how many instances, CPUs, memory and
//! root disk one user's instances may add up to, set by an admin in the
//! project's config (`user.lxgate.limits.*-per-user`) and enforced on
//! create, copy and update on both backends. A user's instances are those
//! lxgate recorded it made (`instance_owners`). Global admins are not
//! counted against them.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::api::policy;
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::backend::embedded::limits::{parse_cpus, parse_size};
use crate::backend::types::{ConfigMap, DevicesMap, Instance};
use crate::backend::{ListScope, Listing};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::names::ProjectName;

/// The project config keys, and whether each is a count (else bytes).
pub const KEYS: [(&str, &str, bool); 4] = [
    ("instances", "user.lxgate.limits.instances-per-user", true),
    ("cpu", "user.lxgate.limits.cpu-per-user", true),
    ("memory", "user.lxgate.limits.memory-per-user", false),
    ("disk", "user.lxgate.limits.disk-per-user", false),
];

/// What one user's instances use in a project (CPUs, bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Usage {
    pub instances: u64,
    pub cpu: u64,
    pub memory: u64,
    pub disk: u64,
}

impl Usage {
    fn get(&self, what: &str) -> u64 {
        match what {
            "instances" => self.instances,
            "cpu" => self.cpu,
            "memory" => self.memory,
            _ => self.disk,
        }
    }

    fn add(&mut self, other: &Usage) {
        self.instances += other.instances;
        self.cpu += other.cpu;
        self.memory += other.memory;
        self.disk += other.disk;
    }
}

/// A user's usage, as `GET projects/{name}/state` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserUsage {
    #[schema(example = "alice")]
    pub username: String,
    #[serde(flatten)]
    pub usage: Usage,
}

/// Parses the quotas in a project config: 400 on a malformed value (for
/// the projects endpoints, before anything is written).
pub fn limits_of(config: &ConfigMap) -> Result<BTreeMap<&'static str, u64>, ApiError> {
    let mut out = BTreeMap::new();
    for (what, key, count) in KEYS {
        let Some(v) = config.get(key).filter(|v| !v.is_empty()) else {
            continue;
        };
        let n = if count {
            v.trim().parse::<u64>().ok()
        } else {
            parse_size(v)
        };
        let n = n.ok_or_else(|| {
            ApiError::bad_request(
                "invalid_config",
                format!(
                    "{key}: {v:?} is not {}",
                    if count {
                        "a whole number"
                    } else {
                        "a size such as 4GiB"
                    }
                ),
            )
            .with_field(format!("config.{key}"))
        })?;
        out.insert(what, n);
    }
    Ok(out)
}

/// The CPUs of `limits.cpu` (a count, or a CPU set: its CPUs).
fn cpus(v: &str) -> Option<u64> {
    let v = v.trim();
    if let Ok(n) = v.parse::<u64>() {
        return Some(n);
    }
    let set = parse_cpus(v)?;
    let mut n = 0;
    for part in set.split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => 1,
        };
    }
    Some(n)
}

/// What one instance (its expanded config and devices) counts as. An
/// amount that is not set, or not countable (`limits.memory` as a
/// percentage), is `None` for that resource.
fn counted(
    config: &ConfigMap,
    devices: &DevicesMap,
) -> (u64, Option<u64>, Option<u64>, Option<u64>) {
    let cpu = config.get("limits.cpu").and_then(|v| cpus(v));
    let memory = config.get("limits.memory").and_then(|v| parse_size(v));
    let disk = devices
        .values()
        .find(|d| {
            d.get("type").map(String::as_str) == Some("disk")
                && d.get("path").map(String::as_str) == Some("/")
        })
        .and_then(|d| d.get("size"))
        .and_then(|v| parse_size(v));
    (1, cpu, memory, disk)
}

fn usage_of(config: &ConfigMap, devices: &DevicesMap) -> Usage {
    let (instances, cpu, memory, disk) = counted(config, devices);
    Usage {
        instances,
        cpu: cpu.unwrap_or(0),
        memory: memory.unwrap_or(0),
        disk: disk.unwrap_or(0),
    }
}

/// The project's instances with their owners' usernames.
async fn owned(
    state: &AppState,
    project: &ProjectName,
) -> ApiResult<Vec<(Instance, Option<db::instance_owners::OwnerRow>)>> {
    let listing = state
        .backend
        .list_instances(ListScope {
            project: Some(project),
            filter: None,
            expand: true,
        })
        .await?;
    let Listing::Full(instances) = listing else {
        return Ok(Vec::new());
    };
    let mut owners: BTreeMap<String, db::instance_owners::OwnerRow> =
        db::instance_owners::of_project(&state.db.pool, project.as_str())
            .await?
            .into_iter()
            .map(|o| (o.name.clone(), o))
            .collect();
    Ok(instances
        .into_iter()
        .map(|i| {
            let o = owners.remove(&i.name);
            (i, o)
        })
        .collect())
}

/// Per-user usage of a project (users with at least one instance).
pub async fn usage_by_user(state: &AppState, project: &ProjectName) -> ApiResult<Vec<UserUsage>> {
    // Nobody made an instance here through lxgate: nothing to list the
    // backend's instances for.
    if db::instance_owners::of_project(&state.db.pool, project.as_str())
        .await?
        .is_empty()
    {
        return Ok(Vec::new());
    }
    let mut by: BTreeMap<String, Usage> = BTreeMap::new();
    for (i, owner) in owned(state, project).await? {
        if let Some(o) = owner {
            by.entry(o.username)
                .or_default()
                .add(&usage_of(&i.expanded_config, &i.expanded_devices));
        }
    }
    Ok(by
        .into_iter()
        .map(|(username, usage)| UserUsage { username, usage })
        .collect())
}

/// Refuses (403 `quota_exceeded`) a create (`current` None) or a change
/// of instance `current` that would take its owner past a per-user quota
/// of `project`, the instance to be as `shape` (its own config and
/// devices, expanded with its profiles). A change is charged to the
/// instance's owner (the caller, for an instance nobody is recorded as
/// having made) and refused only when it raises what is over a quota; a
/// create or a change must set each amount a quota bounds (403
/// `quota_needs_amount`), or it could not be counted.
pub async fn check(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    current: Option<&Instance>,
    shape: policy::Shape<'_>,
) -> ApiResult<()> {
    if user.is_admin() {
        return Ok(());
    }
    let (p, _) = state.backend.get_project(project).await?;
    let limits = limits_of(&p.config)?;
    if limits.is_empty() {
        return Ok(());
    }
    let (config, devices) = policy::expanded(state, project, shape).await?;
    let (_, cpu, memory, disk) = counted(&config, &devices);
    let before = current.map(|i| counted(&i.expanded_config, &i.expanded_devices));
    for (what, key, field, set, was_set) in [
        (
            "cpu",
            "limits.cpu",
            "config.limits.cpu",
            cpu.is_some(),
            before.is_some_and(|b| b.1.is_some()),
        ),
        (
            "memory",
            "limits.memory",
            "config.limits.memory",
            memory.is_some(),
            before.is_some_and(|b| b.2.is_some()),
        ),
        (
            "disk",
            "the root disk's `size`",
            "devices.root.size",
            disk.is_some(),
            before.is_some_and(|b| b.3.is_some()),
        ),
    ] {
        // An instance from before the quota keeps what it has; a new one,
        // or a change that takes a counted amount away, must set it.
        if limits.contains_key(what) && !set && (current.is_none() || was_set) {
            let mut e = ApiError::forbidden(
                "quota_needs_amount",
                format!(
                    "project `{project}` limits {what} per user: set {key} (a fixed amount) on the instance or its profiles"
                ),
            );
            e.field = Some(field.to_owned());
            return Err(e);
        }
    }
    let owners = db::instance_owners::of_project(&state.db.pool, project.as_str()).await?;
    let owner = current
        .and_then(|i| owners.iter().find(|o| o.name == i.name))
        .and_then(|o| o.user_id.clone())
        .unwrap_or_else(|| user.id.clone());
    let wanted = usage_of(&config, &devices);
    let had = current.map_or_else(Usage::default, |i| {
        usage_of(&i.expanded_config, &i.expanded_devices)
    });
    let mut used = Usage::default();
    for (i, o) in owned(state, project).await? {
        let theirs = o
            .as_ref()
            .is_some_and(|o| o.user_id.as_deref() == Some(owner.as_str()));
        if theirs && Some(i.name.as_str()) != current.map(|c| c.name.as_str()) {
            used.add(&usage_of(&i.expanded_config, &i.expanded_devices));
        }
    }
    for (what, limit) in &limits {
        let after = used.get(what) + wanted.get(what);
        let was = used.get(what) + had.get(what);
        // Lowering, or keeping, what is over a quota set since is allowed.
        if after > *limit && after > was {
            let shown = |n: u64| match *what {
                "memory" | "disk" => bytesize(n),
                _ => n.to_string(),
            };
            let whose = if owner == user.id {
                "your".to_owned()
            } else {
                "its owner's".to_owned()
            };
            return Err(quota_error(
                format!(
                    "quota exceeded: {what} per user in project `{project}` is {}; {whose} instances use {}, this would take it to {}",
                    shown(*limit),
                    shown(used.get(what) + had.get(what)),
                    shown(after)
                ),
                what,
            ));
        }
    }
    Ok(())
}

/// In a project with per-user quotas, what a profile in use gives in a
/// counted amount (`limits.cpu`, `limits.memory`, the root disk's `size`)
/// is changed by admins only: it changes every instance using it, whoever
/// made them.
pub async fn check_profile(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    before: &crate::backend::types::Profile,
    after: &crate::backend::types::Profile,
) -> ApiResult<()> {
    if user.is_admin() || before.used_by.is_empty() {
        return Ok(());
    }
    let (p, _) = state.backend.get_project(project).await?;
    if limits_of(&p.config)?.is_empty() {
        return Ok(());
    }
    let amounts = |pr: &crate::backend::types::Profile| counted(&pr.config, &pr.devices);
    let (_, c0, m0, d0) = amounts(before);
    let (_, c1, m1, d1) = amounts(after);
    let raw = |pr: &crate::backend::types::Profile, k: &str| pr.config.get(k).cloned();
    if (c0, m0, d0) != (c1, m1, d1)
        || raw(before, "limits.cpu") != raw(after, "limits.cpu")
        || raw(before, "limits.memory") != raw(after, "limits.memory")
    {
        return Err(quota_error(
            format!(
                "project `{project}` has per-user quotas: the CPU, memory or root disk size a profile in use gives is changed by admins only"
            ),
            "profile",
        ));
    }
    Ok(())
}

fn bytesize(n: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if n >= GIB && n.is_multiple_of(MIB) {
        format!("{:.2}GiB", n as f64 / GIB as f64)
    } else if n >= MIB {
        format!("{:.1}MiB", n as f64 / MIB as f64)
    } else {
        format!("{n}B")
    }
}

fn quota_error(detail: String, what: &str) -> ApiError {
    let mut e = ApiError::forbidden("quota_exceeded", detail);
    e.field = Some(format!("quota.{what}"));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_counted_as_incus_writes_them() {
        assert_eq!(cpus("4"), Some(4));
        assert_eq!(cpus("0-3"), Some(4));
        assert_eq!(cpus("0,2-3"), Some(3));
        assert_eq!(cpus("x"), None);
        let config = ConfigMap::from([
            ("limits.cpu".into(), "2".into()),
            ("limits.memory".into(), "512MiB".into()),
        ]);
        let devices = DevicesMap::from([(
            "root".into(),
            BTreeMap::from([
                ("type".into(), "disk".into()),
                ("path".into(), "/".into()),
                ("size".into(), "10GiB".into()),
            ]),
        )]);
        assert_eq!(
            usage_of(&config, &devices),
            Usage {
                instances: 1,
                cpu: 2,
                memory: 512 << 20,
                disk: 10 << 30
            }
        );
        let limits = limits_of(&ConfigMap::from([
            (KEYS[0].1.into(), "3".into()),
            (KEYS[2].1.into(), "2GiB".into()),
        ]))
        .unwrap();
        assert_eq!(limits.get("instances"), Some(&3));
        assert_eq!(limits.get("memory"), Some(&(2 << 30)));
        assert!(limits_of(&ConfigMap::from([(KEYS[1].1.into(), "many".into())])).is_err());
    }
}
