//! `/1.0/projects` on Incus.

use reqwest::Method;
use serde_json::{Value, json};

use super::IncusBackend;
use crate::backend::types::{ConfigMap, Project, ProjectCreate, ProjectState, ProjectUpdate};
use crate::backend::{BackendError, Missing, Projects, ReportMissing};
use crate::names::ProjectName;
use crate::policy::Widening;

/// Device types Incus restricts with `restricted.devices.<type>` = `block`
/// or `allow`.
const BLOCKABLE_DEVICES: [&str; 8] = [
    "gpu",
    "usb",
    "pci",
    "unix-char",
    "unix-block",
    "unix-hotplug",
    "infiniband",
    "proxy",
];

/// Keys a restricted Incus project refuses in containers unless
/// `restricted.containers.lowlevel=allow` (Incus 6.0, project/permissions.go).
/// `boot.host_shutdown_timeout` and `limits.memory.swap` are among them,
/// though DESIGN §4a lets operators set them: in a restricted project Incus
/// refuses them until an admin allows one for the project.
const CONTAINER_LOW_LEVEL: [&str; 10] = [
    "boot.host_shutdown_timeout",
    "limits.memory.swap",
    "linux.kernel_modules",
    "raw.apparmor",
    "raw.idmap",
    "raw.lxc",
    "raw.seccomp",
    "security.devlxd.images",
    "security.idmap.base",
    "security.idmap.size",
];

/// The same for virtual machines.
const VM_LOW_LEVEL: [&str; 6] = [
    "boot.host_shutdown_timeout",
    "limits.memory.hugepages",
    "raw.apparmor",
    "raw.idmap",
    "raw.qemu",
    "raw.qemu.conf",
];

/// The `restricted.*` keys under which Incus refuses what lxgate's instance
/// policy refuses non-admins in a project with `widening` (DESIGN §4a).
pub fn restrictions(widening: &Widening) -> ConfigMap {
    // Low-level keys are allowed in Incus only when the allow list names
    // one of them: allowing `linux.sysctl.*` must not open `raw.lxc` too.
    let any = |keys: &[&str]| keys.iter().any(|k| widening.allows_key(k));
    // (key, allowed by the widening, the value when it is not)
    let mut rules: Vec<(String, bool, &str)> = vec![
        // Operators may take snapshots and backups (DESIGN §4); a
        // restricted project blocks both unless told otherwise.
        ("restricted.snapshots".into(), true, ""),
        ("restricted.backups".into(), true, ""),
        (
            "restricted.containers.privilege".into(),
            widening.allows_key("security.privileged"),
            "unprivileged",
        ),
        (
            "restricted.containers.nesting".into(),
            widening.allows_key("security.nesting"),
            "block",
        ),
        (
            "restricted.containers.interception".into(),
            widening.touches("security.syscalls.intercept."),
            "block",
        ),
        (
            "restricted.containers.lowlevel".into(),
            any(&CONTAINER_LOW_LEVEL),
            "block",
        ),
        (
            "restricted.virtual-machines.lowlevel".into(),
            any(&VM_LOW_LEVEL),
            "block",
        ),
        // `managed`: only disks backed by a pool, only NICs on managed networks.
        (
            "restricted.devices.disk".into(),
            widening.allows_device("disk"),
            "managed",
        ),
        (
            "restricted.devices.nic".into(),
            widening.allows_device("nic"),
            "managed",
        ),
    ];
    rules.extend(BLOCKABLE_DEVICES.iter().map(|t| {
        (
            format!("restricted.devices.{t}"),
            widening.allows_device(t),
            "block",
        )
    }));
    let mut r: ConfigMap = rules
        .into_iter()
        .map(|(k, yes, no)| (k, if yes { "allow" } else { no }.to_owned()))
        .collect();
    r.insert("restricted".into(), "true".into());
    r
}

impl IncusBackend {
    async fn seed_root_disk(&self, project: &str) -> Result<(), BackendError> {
        let (profile, _): (Value, _) = self
            .client
            .query_struct(&["profiles", "default"], &[("project", "default")])
            .await?;
        let Some(root) = profile["devices"]
            .as_object()
            .and_then(|d| d.values().find(|d| d["type"] == "disk" && d["path"] == "/"))
        else {
            return Ok(());
        };
        let patch = json!({"devices": {"root": {
            "type": "disk", "path": "/", "pool": root["pool"].clone()}}});
        self.client
            .query(
                Method::PATCH,
                &["profiles", "default"],
                &[("project", project)],
                Some(&patch),
                None,
            )
            .await
            .map(|_| ())
    }
}

#[async_trait::async_trait]
impl Projects for IncusBackend {
    async fn list_projects(&self) -> Result<Vec<Project>, BackendError> {
        let (items, _): (Option<Vec<Project>>, _) = self
            .client
            .query_struct(&["projects"], &[("recursion", "1")])
            .await?;
        Ok(items.unwrap_or_default())
    }

    async fn get_project(
        &self,
        name: &ProjectName,
    ) -> Result<(Project, Option<String>), BackendError> {
        self.client
            .query_struct(&["projects", name], &[])
            .await
            .missing(|| Missing::project(name))
    }

    async fn create_project(&self, req: &ProjectCreate) -> Result<(), BackendError> {
        let restricted = req.config.get("restricted").map(String::as_str) == Some("true");
        let own_profiles = req.config.get("features.profiles").map(String::as_str) != Some("false");
        if restricted && !own_profiles {
            return Err(BackendError::BadRequest(
                "a restricted project needs profiles of its own: leave features.profiles at true \
                 (lxgate gives its `default` profile the root disk of the `default` project's), \
                 or create the project with restricted=false"
                    .into(),
            ));
        }
        let body = serde_json::to_value(req).map_err(anyhow::Error::from)?;
        self.client
            .query(Method::POST, &["projects"], &[], Some(&body), None)
            .await?;
        if own_profiles {
            // A project with profiles of its own starts with an empty
            // `default` profile: no root disk, so no instance could be
            // created. It gets the `default` project's root disk.
            if let Err(e) = self.seed_root_disk(&req.name).await {
                tracing::warn!(project = %req.name, error = %e, "project created without a root disk in its default profile");
            }
        }
        Ok(())
    }

    async fn update_project(
        &self,
        name: &ProjectName,
        update: &ProjectUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(), BackendError> {
        if replace {
            let body = serde_json::to_value(update).map_err(anyhow::Error::from)?;
            return self
                .client
                .query(Method::PUT, &["projects", name], &[], Some(&body), if_match)
                .await
                .missing(|| Missing::project(name))
                .map(|_| ());
        }
        // Incus 6.0's PATCH of a project replaces the whole config (checked:
        // keys left out, `restricted` included, are gone), so a PATCH is a
        // merge here and a PUT there, pinned to the version merged into.
        let (current, etag) = self.get_project(name).await?;
        let mut config = current.config;
        if let Some(c) = &update.config {
            config.extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        config.retain(|_, v| !v.is_empty());
        let body = json!({
            "description": update.description.clone().unwrap_or(current.description),
            "config": config,
        });
        self.client
            .query(
                Method::PUT,
                &["projects", name],
                &[],
                Some(&body),
                if_match.or(etag.as_deref()),
            )
            .await
            .missing(|| Missing::project(name))
            .map(|_| ())
    }

    async fn delete_project(&self, name: &ProjectName) -> Result<(), BackendError> {
        self.client
            .query(Method::DELETE, &["projects", name], &[], None, None)
            .await
            .missing(|| Missing::project(name))
            .map(|_| ())
    }

    async fn project_state(&self, name: &ProjectName) -> Result<ProjectState, BackendError> {
        self.client
            .query_struct(&["projects", name, "state"], &[])
            .await
            .missing(|| Missing::project(name))
            .map(|(s, _)| s)
    }

    fn project_restrictions(&self, widening: &crate::policy::Widening) -> Option<ConfigMap> {
        Some(restrictions(widening))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ALLOW_CONFIG_KEY, ALLOW_DEVICES_KEY};

    #[test]
    fn restrictions_follow_the_widening() {
        let narrow = restrictions(&Widening::default());
        assert_eq!(narrow["restricted"], "true");
        assert_eq!(narrow["restricted.containers.privilege"], "unprivileged");
        assert_eq!(narrow["restricted.containers.lowlevel"], "block");
        assert_eq!(narrow["restricted.containers.nesting"], "block");
        assert_eq!(narrow["restricted.devices.proxy"], "block");
        assert_eq!(narrow["restricted.devices.disk"], "managed");
        assert_eq!(narrow["restricted.snapshots"], "allow");

        let config = ConfigMap::from([
            (
                ALLOW_CONFIG_KEY.to_owned(),
                "security.nesting,linux.sysctl.*".to_owned(),
            ),
            (ALLOW_DEVICES_KEY.to_owned(), "unix-char".to_owned()),
        ]);
        let wide = restrictions(&Widening::from_project_config(&config).unwrap());
        assert_eq!(wide["restricted.containers.nesting"], "allow");
        assert_eq!(wide["restricted.containers.privilege"], "unprivileged");
        // linux.sysctl.* is no low-level key for Incus: raw.lxc stays blocked.
        assert_eq!(wide["restricted.containers.lowlevel"], "block");
        let raw = ConfigMap::from([(ALLOW_CONFIG_KEY.to_owned(), "raw.lxc".to_owned())]);
        let raw = restrictions(&Widening::from_project_config(&raw).unwrap());
        assert_eq!(raw["restricted.containers.lowlevel"], "allow");
        assert_eq!(raw["restricted.virtual-machines.lowlevel"], "block");
        assert_eq!(wide["restricted.devices.unix-char"], "allow");
        assert_eq!(wide["restricted.devices.unix-block"], "block");
    }
}
