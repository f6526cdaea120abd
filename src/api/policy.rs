//! The instance policy (`crate::policy`) as handlers apply it: who the rules
//! are for (global admins are unrestricted), what the project widened, and
//! the parts of a check that need the backend (profiles, networks).
//!
//! Every handler that writes instance config or devices calls
//! [`for_caller`] and then [`check_instance_write`]; volume config goes
//! through `Policy::check_volume*` directly.

use std::collections::BTreeMap;

use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::backend::types::{
    ConfigMap, DevicesMap, Instance, Profile, Project, ProjectPolicy, expand, instance_of_url,
};
use crate::backend::{BackendError, Missing};
use crate::error::{ApiError, ApiResult};
use crate::names::{InstanceName, MemberName, NetworkName, ProfileName, ProjectName};
use crate::policy::{Denied, Policy, Widening};

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Forbidden { field, detail } => {
                ApiError::policy_denied(detail).with_field(field)
            }
            Denied::Invalid { field, detail } => {
                ApiError::bad_request("invalid_config", detail).with_field(field)
            }
        }
    }
}

/// The policy for `user` writing into `project`.
pub async fn for_caller(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
) -> ApiResult<Policy> {
    if user.is_admin() {
        return Ok(Policy::admin());
    }
    let (p, _) = state.backend.get_project(project).await?;
    // An allow list an admin wrote straight into the backend with a typo
    // must not widen anything: fall back to the narrow default.
    let widening = Widening::from_project_config(&p.config).unwrap_or_else(|e| {
        tracing::warn!(project = %project, error = ?e, "ignoring an invalid policy allow list");
        Widening::default()
    });
    Ok(Policy::restricted(widening))
}

/// The project setting that lets non-admins pick a cluster member: Incus's
/// own, so Incus refuses what lxgate refuses (a restricted project blocks
/// `target` unless it says `allow`).
pub const CLUSTER_TARGET_KEY: &str = "restricted.cluster.target";

/// `?target=` of a create: the member to place it on, checked (400 for a
/// malformed name). Choosing a member is an admin's call, like the
/// infrastructure itself (DESIGN §4); others may only where an admin let the
/// project (`restricted.cluster.target=allow`). Whether the member exists is
/// the backend's answer (404 `member_not_found`).
pub async fn check_placement(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    target: Option<&str>,
) -> ApiResult<Option<MemberName>> {
    // An empty `target=` is a malformed name like any other (400), not
    // "no target": the schema says 1-63 characters.
    let Some(target) = target else {
        return Ok(None);
    };
    let name = MemberName::parse(target).map_err(|e| ApiError::bad_request("invalid_name", e))?;
    if !user.is_admin() {
        let (p, _) = state.backend.get_project(project).await?;
        if p.config.get(CLUSTER_TARGET_KEY).map(String::as_str) != Some("allow") {
            return Err(ApiError::policy_denied(format!(
                "choosing the cluster member (`target`) is for admins in project `{project}`; an admin can allow it for the project (project config `{CLUSTER_TARGET_KEY}=allow`)"
            )));
        }
    }
    Ok(Some(name))
}

/// An instance as the policy sees it: its own config and devices, and the
/// profiles it inherits from.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    pub config: &'a ConfigMap,
    pub devices: &'a DevicesMap,
    pub profiles: &'a [String],
}

impl<'a> Shape<'a> {
    pub fn of(i: &'a Instance) -> Self {
        Shape {
            config: &i.config,
            devices: &i.devices,
            profiles: &i.profiles,
        }
    }
}

/// What an instance of `shape` comes to in `project`: its profiles' config
/// and devices in order, then its own.
pub async fn expanded(
    state: &AppState,
    project: &ProjectName,
    shape: Shape<'_>,
) -> ApiResult<(ConfigMap, DevicesMap)> {
    let profiles = read_profiles(state, project, shape.profiles.iter()).await?;
    let of: Vec<&Profile> = shape
        .profiles
        .iter()
        .filter_map(|n| profiles.get(n))
        .collect();
    Ok(expand(of, shape.config, shape.devices))
}

/// Checks a write of an instance from `before` (None: a create) to `after`.
///
/// Beyond the config and devices themselves (`Policy::check_instance`):
/// * what the instance comes to with its profiles (their config and devices
///   in order, then its own) is judged the same way, before against after:
///   a profile may hold only what the caller could set here, unless it was
///   there already (an admin's, unchanged). So an operator may give an
///   instance any profile of the project the policy accepts, and a profile
///   an admin put a widened key into is usable where the key is allowed
///   (the project it was widened for) and nowhere else;
/// * removing a device of its own must not uncover a profile's device of
///   that name that the caller could not add itself (an admin's `none` mask
///   over a host path disk, say);
/// * a NIC goes on a managed bridge (or OVN) network: a managed `physical`
///   or `macvlan` network hands the host's interface over.
pub async fn check_instance_write(
    state: &AppState,
    user: &AuthUser,
    policy: &Policy,
    project: &ProjectName,
    before: Option<Shape<'_>>,
    after: Shape<'_>,
) -> ApiResult<()> {
    let (no_config, no_devices) = (ConfigMap::new(), DevicesMap::new());
    let b = before.unwrap_or(Shape {
        config: &no_config,
        devices: &no_devices,
        profiles: &[],
    });
    policy.check_instance((b.config, b.devices), (after.config, after.devices))?;
    if policy.is_admin() {
        return Ok(());
    }
    let profiles = read_profiles(state, project, b.profiles.iter().chain(after.profiles)).await?;
    let of = |names: &[String]| -> Vec<&Profile> {
        names.iter().filter_map(|n| profiles.get(n)).collect()
    };
    let (_, inherited) = expand(of(after.profiles), &no_config, &no_devices);
    for name in b.devices.keys().filter(|n| !after.devices.contains_key(*n)) {
        if let Some(dev) = inherited.get(name) {
            policy.check_device(name, dev).map_err(|e| match e {
                Denied::Forbidden { detail, .. } => ApiError::policy_denied(format!("removing device `{name}` would let the profile's device of that name apply, and {detail}"),
                )
                .with_field(format!("devices.{name}")),
                other => other.into(),
            })?;
        }
    }
    let was = match before {
        Some(b) => expand(of(b.profiles), b.config, b.devices),
        None => (ConfigMap::new(), DevicesMap::new()),
    };
    let will = expand(of(after.profiles), after.config, after.devices);
    policy
        .check_instance((&was.0, &was.1), (&will.0, &will.1))
        .map_err(|d| from_profiles(d, &of(after.profiles)))?;
    check_nics(state, policy, project, &was.1, &will.1).await?;
    // A custom volume the write gives the instance (its own devices, its
    // profiles', a restored snapshot's) must not be one others' instances use.
    crate::api::ownership::check_volume_devices(state, user, project, &was.1, &will.1).await
}

/// A refusal of what an instance expands to: the profile that gives the
/// key or device is named (the instance's own config passed already).
fn from_profiles(d: Denied, profiles: &[&Profile]) -> ApiError {
    let Denied::Forbidden { field, detail } = d else {
        return d.into();
    };
    let gives = |p: &&&Profile| match field.strip_prefix("config.") {
        Some(key) => p.config.contains_key(key),
        None => field
            .strip_prefix("devices.")
            .and_then(|rest| rest.split('.').next())
            .is_some_and(|dev| p.devices.contains_key(dev)),
    };
    let detail = match profiles.iter().rev().find(gives) {
        Some(p) => format!("through profile `{}`: {detail}", p.name),
        None => detail,
    };
    ApiError::policy_denied(detail).with_field(field)
}

/// NICs added or changed (from `before` to `after`, devices as they
/// expand) go on managed bridge or OVN networks of `project`, unless NICs
/// of any kind are allowed there.
async fn check_nics(
    state: &AppState,
    policy: &Policy,
    project: &ProjectName,
    before: &DevicesMap,
    after: &DevicesMap,
) -> ApiResult<()> {
    for (name, dev) in after {
        let changed = before.get(name) != Some(dev);
        if changed
            && dev.get("type").map(String::as_str) == Some("nic")
            && !policy.allows_device_type("nic")
            && let Some(network) = dev.get("network").filter(|n| !n.is_empty())
        {
            check_network(state, project, name, network).await?;
        }
    }
    Ok(())
}

/// A profile list sent for an instance: profile names, none twice (400
/// `invalid_config` before anything reaches the backend).
pub fn check_profile_list(names: &[String]) -> ApiResult<()> {
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        ProfileName::parse(n)
            .map_err(|e| ApiError::bad_request("invalid_config", e).with_field("profiles"))?;
        if !seen.insert(n) {
            return Err(ApiError::bad_request(
                "invalid_config",
                format!("profile `{n}` is listed twice"),
            )
            .with_field("profiles"));
        }
    }
    Ok(())
}

/// The profiles named, as `project`'s instances see them (a name that is
/// no profile there: 404 `profile_not_found`, field `profiles`).
async fn read_profiles<'a>(
    state: &AppState,
    project: &ProjectName,
    names: impl Iterator<Item = &'a String>,
) -> ApiResult<BTreeMap<String, Profile>> {
    let mut out = BTreeMap::new();
    for name in names {
        if out.contains_key(name) {
            continue;
        }
        // An instance's own list is Incus's data or was checked by
        // `check_profile_list`: the rule is Incus's, so a name Incus has
        // always passes.
        let parsed = ProfileName::parse(name)
            .map_err(|e| ApiError::bad_request("invalid_config", e).with_field("profiles"))?;
        let (p, _) = state
            .backend
            .get_profile(project, &parsed)
            .await
            .map_err(|e| match e {
                BackendError::NotFound(_) => {
                    ApiError::from(BackendError::NotFound(Missing::Profile {
                        name: name.clone(),
                    }))
                    .with_field("profiles")
                }
                other => other.into(),
            })?;
        out.insert(name.clone(), p);
    }
    Ok(out)
}

/// Checks a write of a profile of `project` (the project it belongs to)
/// from `before` (None: a create) to `after`, for `user`.
///
/// A profile is instance config many instances take: what it holds is
/// judged like an instance's own config and devices, under the policy of
/// its project (keys an admin put there may stay, unchanged). And since a
/// change reaches every instance using the profile, each of them is judged
/// as it would expand, under the policy of its own project, which the
/// caller must also operate in (on Incus, instances of a project without
/// profiles of its own use the `default` project's).
pub async fn check_profile_write(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    before: Option<&Profile>,
    after: &Profile,
) -> ApiResult<()> {
    let policy = for_caller(state, user, project).await?;
    let (no_config, no_devices) = (ConfigMap::new(), DevicesMap::new());
    let (config, devices) = before.map_or((&no_config, &no_devices), |p| (&p.config, &p.devices));
    policy.check_instance((config, devices), (&after.config, &after.devices))?;
    if policy.is_admin() {
        return Ok(());
    }
    check_nics(state, &policy, project, devices, &after.devices).await?;
    let Some(before) = before else {
        return Ok(());
    };
    for url in &before.used_by {
        let Some((iproject, iname)) = instance_of_url(url) else {
            continue;
        };
        // Names from the backend; one lxgate cannot read is not waved
        // through unchecked.
        let unreadable = || {
            ApiError::policy_denied(format!(
                "the profile is used by {url:?}, which lxgate cannot check; an admin can change the profile"
            ))
        };
        let iproject = ProjectName::parse(&iproject).map_err(|_| unreadable())?;
        let iname = InstanceName::parse(&iname).map_err(|_| unreadable())?;
        user.require(Permission::ProjectOperate, iproject.as_str())?;
        // In an owner-only project, a profile change must not reach into
        // others' instances (nor say which they are).
        if let Err(e) = crate::api::ownership::require_owner(
            state,
            user,
            iproject.as_str(),
            iname.as_str(),
            crate::api::ownership::Reach::Act,
        )
        .await
        {
            if e.status != axum::http::StatusCode::NOT_FOUND {
                return Err(e);
            }
            return Err(ApiError::policy_denied(
                "the profile is used by instances other users made in an owner-only project; an admin can change it",
            ));
        }
        let ipolicy = match &iproject == project {
            true => policy.clone(),
            false => for_caller(state, user, &iproject).await?,
        };
        let (inst, _) = state.backend.get_instance(&iproject, &iname).await?;
        let mut profiles = read_profiles(
            state,
            &iproject,
            inst.profiles.iter().filter(|n| **n != before.name),
        )
        .await?;
        let with = |profiles: &BTreeMap<String, Profile>| {
            let list: Vec<&Profile> = inst
                .profiles
                .iter()
                .filter_map(|n| profiles.get(n))
                .collect();
            expand(list, &inst.config, &inst.devices)
        };
        profiles.insert(before.name.clone(), before.clone());
        let was = with(&profiles);
        profiles.insert(before.name.clone(), after.clone());
        let will = with(&profiles);
        let name_it = |mut e: ApiError| {
            e.detail = format!(
                "instance `{iname}` (project `{iproject}`) uses the profile: {}",
                e.detail
            );
            e
        };
        ipolicy
            .check_instance((&was.0, &was.1), (&will.0, &will.1))
            .map_err(|d| name_it(d.into()))?;
        check_nics(state, &ipolicy, &iproject, &was.1, &will.1)
            .await
            .map_err(name_it)?;
    }
    Ok(())
}

/// Exec, console and file transfer reach inside an instance; in a
/// privileged container root is the host's root, so only admins may do them
/// there (containers made before lxgate ran them unprivileged are such).
pub async fn require_inside_access(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    name: &InstanceName,
) -> ApiResult<()> {
    admins_only_if_privileged(
        state,
        user,
        project,
        name,
        "exec, open its console or transfer files",
    )
    .await
}

/// Refuses non-admins `what` on instance `name` when it is a privileged
/// container (the instance is read only for non-admins).
pub async fn admins_only_if_privileged(
    state: &AppState,
    user: &AuthUser,
    project: &ProjectName,
    name: &InstanceName,
    what: &str,
) -> ApiResult<()> {
    if user.is_admin() {
        return Ok(());
    }
    let (i, _) = state.backend.get_instance(project, name).await?;
    refuse_privileged(user, &i, what)
}

/// Whether config (expanded) makes a container privileged, read as Incus
/// reads a boolean (`true`, `1`, `yes`, `on`, any case).
pub fn is_privileged(config: &ConfigMap) -> bool {
    config
        .get("security.privileged")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on"))
}

/// Refuses non-admins `what` on `i` when it is a privileged container
/// (reaching its files is reaching what the host's root wrote there).
pub fn refuse_privileged(user: &AuthUser, i: &Instance, what: &str) -> ApiResult<()> {
    let privileged = i.instance_type == "container" && is_privileged(&i.expanded_config);
    if privileged && !user.is_admin() {
        return Err(ApiError::policy_denied(format!(
            "`{}` is a privileged container (its root is the host's root): only admins may {what}",
            i.name
        ))
        .with_field("security.privileged"));
    }
    Ok(())
}

async fn check_network(
    state: &AppState,
    project: &ProjectName,
    device: &str,
    network: &str,
) -> ApiResult<()> {
    let field = format!("devices.{device}.network");
    // `Policy::check_device` refused a NIC with an invalid network name
    // already; the same answer should one get here.
    let network = NetworkName::parse(network).map_err(|_| {
        ApiError::bad_request(
            "invalid_config",
            format!("network name {network:?} on `{device}` is invalid"),
        )
        .with_field(field.clone())
    })?;
    let (n, _) = state
        .backend
        .get_network(project, &network)
        .await
        .map_err(|e| match e {
            BackendError::NotFound(_) => ApiError::bad_request(
                "network_not_found",
                format!("network `{network}` does not exist"),
            )
            .with_field(field.clone()),
            other => other.into(),
        })?;
    if !n.managed || !matches!(n.network_type.as_str(), "bridge" | "ovn") {
        return Err(ApiError::policy_denied(format!(
                "a NIC on network `{network}` (a {} {} network) is not allowed for non-admins, only managed bridge and OVN networks; an admin can allow NICs of any kind for this project (project config `user.lxgate.allow.devices`)",
                if n.managed { "managed" } else { "host" },
                n.network_type
            ),
        )
        .with_field(field));
    }
    Ok(())
}

/// `volatile.*` is the backend's own record: a PUT or PATCH carries the
/// values the instance has now, whatever the client sent back (a dashboard's
/// GET-modify-PUT holds stale ones, and an empty value would delete one).
/// Changing one on purpose is refused by the policy on create.
pub fn keep_volatile(current: &ConfigMap, config: &mut ConfigMap, replace: bool) {
    config.retain(|k, _| !k.starts_with("volatile."));
    if replace {
        config.extend(
            current
                .iter()
                .filter(|(k, _)| k.starts_with("volatile."))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
}

/// The version a write must apply to: the one the policy judged. A client's
/// own `If-Match` must name that version too (412 otherwise), so nothing
/// can change between the check and the write.
pub fn pin(client: Option<&str>, read: Option<String>) -> ApiResult<Option<String>> {
    match (client, read) {
        (Some(c), Some(r)) if c.trim_matches('"') != r.trim_matches('"') => Err(ApiError::new(
            axum::http::StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the ETag does not match: the resource changed since it was read",
        )),
        (Some(c), None) => Ok(Some(c.to_owned())),
        (_, read) => Ok(read),
    }
}

/// Fills in `project.policy`: the allow lists, and whether the backend
/// enforces the policy too.
pub fn describe(state: &AppState, mut project: Project) -> Project {
    let widening = Widening::from_project_config(&project.config).unwrap_or_default();
    project.policy = ProjectPolicy {
        restricted: state.backend.project_restrictions(&widening).is_some()
            && project.config.get("restricted").map(String::as_str) == Some("true"),
        allow_config: widening.config_patterns(),
        allow_devices: widening.device_types(),
        // As the guard reads it: a bad value keeps the project closed.
        owner_only: crate::api::ownership::setting_of(&project.config).unwrap_or(true),
    };
    project
}

/// The allow lists in a project config an admin is about to write: 400 on a
/// malformed entry (before anything reaches the backend).
pub fn widening_of(config: &ConfigMap) -> ApiResult<Widening> {
    Widening::from_project_config(config).map_err(ApiError::from)
}

/// Puts the backend's restriction keys for `widening` into `config`
/// (overwriting what was there: they follow the allow lists). Nothing when
/// the backend has no restrictions, or when the admin asked for
/// `restricted=false`.
pub fn set_restrictions(state: &AppState, widening: &Widening, config: &mut ConfigMap) {
    if config.get("restricted").map(String::as_str) == Some("false") {
        return;
    }
    if let Some(keys) = state.backend.project_restrictions(widening) {
        config.extend(keys);
    }
}
