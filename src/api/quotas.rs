//! Per-user quotas inside a project: how many instances, CPUs, memory and
//! root disk one user's instances may add up to, set by an admin in the
//! project's config (`user.lxgate.limits.*-per-user`) and enforced on
//! create, copy and update on both backends. A user's instances are those
//! lxgate recorded it made (`instance_owners`). Global admins are not
//! counted against them.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::api::ownership::Reservation;
use crate::api::policy;
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::backend::embedded::limits::{parse_cpus, parse_size};
use crate::backend::types::{ConfigMap, DevicesMap, Instance};
use crate::backend::{ListScope, Listing};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::names::{InstanceName, ProjectName};

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

    // Saturating: an absurd amount (`limits.cpu` of 2^64-1) is over any
    // quota, never a wrap-around under it.
    fn add(&mut self, other: &Usage) {
        self.instances = self.instances.saturating_add(other.instances);
        self.cpu = self.cpu.saturating_add(other.cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.disk = self.disk.saturating_add(other.disk);
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
    let mut n: u64 = 0;
    for part in set.split(',') {
        let here = match part.split_once('-') {
            Some((a, b)) => b
                .parse::<u64>()
                .ok()?
                .checked_sub(a.parse().ok()?)?
                .saturating_add(1),
            None => 1,
        };
        n = n.saturating_add(here);
    }
    Some(n)
}

/// What one instance (its expanded config and devices) counts as. An
/// amount that is not set, or not countable (`limits.memory` as a
/// percentage), is `None` for that resource.
fn counted_amounts(
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
    let (instances, cpu, memory, disk) = counted_amounts(config, devices);
    Usage {
        instances,
        cpu: cpu.unwrap_or(0),
        memory: memory.unwrap_or(0),
        disk: disk.unwrap_or(0),
    }
}

/// How long a create in flight is counted by what it reserved, when the
/// backend does not list its instance (an lxgate that stopped before the
/// create finished leaves the record; past this, it counts for nothing).
const RESERVED_FOR_SECS: i64 = 3600;

/// A project's instances with who made them, and the creates in flight
/// the backend does not list yet.
struct Counted {
    listed: Vec<(Instance, Option<db::instance_owners::OwnerRow>)>,
    in_flight: Vec<db::instance_owners::OwnerRow>,
}

impl Counted {
    /// What `user_id`'s instances use, leaving out instance `skip` and the
    /// reservation `own` (what is being judged).
    fn usage_of(&self, user_id: &str, skip: Option<&str>, own: Option<&str>) -> Usage {
        let mut used = Usage::default();
        for (i, o) in &self.listed {
            let theirs = o
                .as_ref()
                .is_some_and(|o| o.user_id.as_deref() == Some(user_id));
            if theirs && Some(i.name.as_str()) != skip {
                used.add(&usage_of(&i.expanded_config, &i.expanded_devices));
            }
        }
        for o in &self.in_flight {
            if o.user_id.as_deref() == Some(user_id) && o.pending.as_deref() != own {
                used.add(&o.reserved());
            }
        }
        used
    }
}

impl db::instance_owners::OwnerRow {
    fn reserved(&self) -> Usage {
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Usage {
            instances: 1,
            cpu: n(self.reserved_cpu),
            memory: n(self.reserved_memory),
            disk: n(self.reserved_disk),
        }
    }
}

/// The project's instances with who made them (read only where somebody
/// made one through lxgate: else there is nothing to count).
async fn counted(state: &AppState, project: &ProjectName) -> ApiResult<Counted> {
    let mut owners: BTreeMap<String, db::instance_owners::OwnerRow> =
        db::instance_owners::of_project(&state.db.pool, project.as_str())
            .await?
            .into_iter()
            .map(|o| (o.name.clone(), o))
            .collect();
    if owners.is_empty() {
        return Ok(Counted {
            listed: Vec::new(),
            in_flight: Vec::new(),
        });
    }
    let listing = state
        .backend
        .list_instances(ListScope {
            project: Some(project),
            filter: None,
            expand: true,
            fresh: true,
        })
        .await?;
    let Listing::Full(instances) = listing else {
        return Ok(Counted {
            listed: Vec::new(),
            in_flight: Vec::new(),
        });
    };
    let listed = instances
        .into_iter()
        .map(|i| {
            let o = owners.remove(&i.name);
            (i, o)
        })
        .collect();
    let since = crate::auth::tokens::now_secs() - RESERVED_FOR_SECS;
    let in_flight = owners
        .into_values()
        .filter(|o| o.pending.is_some() && o.created_at > since)
        .collect();
    Ok(Counted { listed, in_flight })
}

/// Per-user usage of a project (users with at least one instance, or a
/// create in flight).
pub async fn usage_by_user(state: &AppState, project: &ProjectName) -> ApiResult<Vec<UserUsage>> {
    let counted = counted(state, project).await?;
    let mut by: BTreeMap<String, Usage> = BTreeMap::new();
    for (i, owner) in &counted.listed {
        if let Some(o) = owner {
            by.entry(o.username.clone())
                .or_default()
                .add(&usage_of(&i.expanded_config, &i.expanded_devices));
        }
    }
    for o in &counted.in_flight {
        by.entry(o.username.clone()).or_default().add(&o.reserved());
    }
    Ok(by
        .into_iter()
        .map(|(username, usage)| UserUsage { username, usage })
        .collect())
}

/// Records `user` as making instance `name` of `project` as `shape`, and
/// refuses it (403 `quota_exceeded`, the record released) when that takes
/// the user past a per-user quota, creates in flight included. Reserving
/// first and counting after means two creates racing for the last room
/// both see each other: at worst both are refused, never both let in.
pub async fn reserve_create(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    name: &InstanceName,
    shape: policy::Shape<'_>,
) -> ApiResult<Reservation> {
    let limits = if user.is_admin() {
        BTreeMap::new()
    } else {
        let (p, _) = state.backend.get_project(project).await?;
        limits_of(&p.config)?
    };
    let expanded = if limits.is_empty() {
        None
    } else {
        let (config, devices) = policy::expanded(state, project, shape).await?;
        needs_amounts(project, &limits, None, &config, &devices)?;
        Some((config, devices))
    };
    let wanted = expanded
        .as_ref()
        .map_or_else(Usage::default, |(c, d)| usage_of(c, d));
    // A name in use is refused here: a record for it would make the caller
    // the maker of an instance it did not make (one made outside lxgate).
    match state.backend.get_instance(project, name).await {
        Ok(_) => {
            return Err(ApiError::conflict(
                "conflict",
                format!("an instance named `{name}` already exists in project `{project}`"),
            ));
        }
        Err(crate::backend::BackendError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let token = uuid::Uuid::new_v4().to_string();
    let reserved = db::instance_owners::reserve(
        &state.db.pool,
        project.as_str(),
        name.as_str(),
        (&user.id, &user.username),
        &token,
        db::instance_owners::Reserved {
            cpu: n(wanted.cpu),
            memory: n(wanted.memory),
            disk: n(wanted.disk),
        },
    )
    .await?;
    if reserved {
        // This replica's event relay knows at once whose it is.
        state
            .ownership
            .remember(project.as_str(), name.as_str(), Some(&user.id))
            .await;
    }
    let reservation = Reservation::new(state, project, name, user, reserved.then_some(token));
    if expanded.is_some() {
        let counted = match counted(state, project).await {
            Ok(c) => c,
            Err(e) => {
                reservation.release().await;
                return Err(e);
            }
        };
        let used = counted.usage_of(&user.id, None, reservation.token());
        if let Err(e) = judge(
            user,
            project,
            &limits,
            &user.id,
            &used,
            &Usage::default(),
            &wanted,
        ) {
            reservation.release().await;
            return Err(e);
        }
    }
    Ok(reservation)
}

/// Refuses a create (`before` None) or a change that leaves a bounded
/// amount unset: it could not be counted (403 `quota_needs_amount`).
fn needs_amounts(
    project: &ProjectName,
    limits: &BTreeMap<&'static str, u64>,
    before: Option<&Instance>,
    config: &ConfigMap,
    devices: &DevicesMap,
) -> ApiResult<()> {
    let (_, cpu, memory, disk) = counted_amounts(config, devices);
    let before = before.map(|i| counted_amounts(&i.expanded_config, &i.expanded_devices));
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
        if limits.contains_key(what) && !set && (before.is_none() || was_set) {
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
    Ok(())
}

/// Refuses (403 `quota_exceeded`) a change of an instance `current` that
/// would take its owner past a per-user quota of `project`, the instance
/// to be as `shape` (its own config and devices, expanded with its
/// profiles). A change is charged to the instance's owner (the caller,
/// for an instance nobody is recorded as having made) and refused only
/// when it raises what is over a quota; it must keep each amount a quota
/// bounds set (403 `quota_needs_amount`). Creates are judged by
/// [`reserve_create`].
pub async fn check(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    current: &Instance,
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
    needs_amounts(project, &limits, Some(current), &config, &devices)?;
    let counted = counted(state, project).await?;
    let owner = counted
        .listed
        .iter()
        .find(|(i, _)| i.name == current.name)
        .and_then(|(_, o)| o.as_ref())
        .and_then(|o| o.user_id.clone())
        .unwrap_or_else(|| user.id.clone());
    let used = counted.usage_of(&owner, Some(&current.name), None);
    let had = usage_of(&current.expanded_config, &current.expanded_devices);
    judge(
        user,
        project,
        &limits,
        &owner,
        &used,
        &had,
        &usage_of(&config, &devices),
    )
}

/// Refuses what takes `owner` from `used + had` to `used + wanted` past a
/// limit, unless it lowers or keeps what is over a quota set since.
fn judge(
    user: &AuthUser,
    project: &ProjectName,
    limits: &BTreeMap<&'static str, u64>,
    owner: &str,
    used: &Usage,
    had: &Usage,
    wanted: &Usage,
) -> ApiResult<()> {
    for (what, limit) in limits {
        let after = used.get(what).saturating_add(wanted.get(what));
        let was = used.get(what).saturating_add(had.get(what));
        if after > *limit && after > was {
            let shown = |n: u64| match *what {
                "memory" | "disk" => bytesize(n),
                _ => n.to_string(),
            };
            let whose = if owner == user.id {
                "your"
            } else {
                "its owner's"
            };
            return Err(quota_error(
                format!(
                    "quota exceeded: {what} per user in project `{project}` is {}; {whose} instances use {}, this would take it to {}",
                    shown(*limit),
                    shown(was),
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
    let amounts = |pr: &crate::backend::types::Profile| counted_amounts(&pr.config, &pr.devices);
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
