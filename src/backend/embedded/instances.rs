//! Instances on the embedded backend: the inventory row says what exists,
//! the driver says what runs. Every change runs as an operation under the
//! instance's lock, so two actions on one instance never interleave.

use std::collections::BTreeMap;
use std::path::Path;

use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::driver::Driver;
use super::driver_types::{Attachments, LxcInfo, VM};
use super::idmap::{self, HostRange, IdMap};
use super::instance_config::{is_managed, own_config, user_config};
use super::inventory::db;
use super::lxc::{self, Confinement, Lxc};
use super::networks::nic_network;
use super::operations::{OpCtx, OpError, lifecycle, now, resource_url};
use super::qemu;
use super::{EmbeddedBackend, images, profiles, resources};
use crate::backend::types::{
    ConfigMap, DevicesMap, Instance, InstanceCreate, InstanceState, InstanceStateCpu,
    InstanceStateMemory, InstanceUpdate, Operation, Profile, StateChange, expand,
};
use crate::backend::{BackendError, Instances, ListScope, Listing, Missing};
use crate::db::embedded::{self as inv, InstanceRow, Phase};
use crate::names::{InstanceName, MemberName, ProjectName};

/// lxc-info runs per instance; this many at once when listing.
const INFO_CONCURRENCY: usize = 8;

/// Incus's ETag idea: a hash over what PUT replaces (not the description).
pub fn etag(inst: &Instance) -> String {
    let v = json!([inst.config, inst.devices, inst.profiles, inst.ephemeral]);
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

impl EmbeddedBackend {
    pub(super) async fn row(&self, project: &str, name: &str) -> Result<InstanceRow, BackendError> {
        inv::get_instance(&self.pool, project, name)
            .await
            .map_err(db)?
            .ok_or_else(|| BackendError::NotFound(Missing::instance(name)))
    }

    pub(super) fn driver(&self, row: &InstanceRow) -> Driver {
        if row.instance_type == VM {
            Driver::Qemu(self.qemu.clone())
        } else {
            Driver::Lxc(self.lxc.clone())
        }
    }

    pub(super) async fn info_of(&self, row: &InstanceRow) -> LxcInfo {
        self.driver(row)
            .info(&Lxc::host_name(&row.project, &row.name))
            .await
    }

    /// How a container runs: privileged as recorded in its row, else under
    /// the id map stored in its config at creation.
    pub(super) fn confinement(row: &InstanceRow) -> Result<Confinement, BackendError> {
        if row.privileged != 0 || row.instance_type == VM {
            return Ok(Confinement::Privileged);
        }
        let config: ConfigMap = serde_json::from_str(&row.config).unwrap_or_default();
        IdMap::stored(&config)
            .map(Confinement::Unprivileged)
            .ok_or_else(|| {
                BackendError::Internal(anyhow::anyhow!(
                    "container {}/{} has no id map recorded",
                    row.project,
                    row.name
                ))
            })
    }

    /// Root's id ranges new unprivileged containers get their maps from,
    /// or why this host cannot run them (said in 501s and `system/info`).
    pub(super) async fn unprivileged_range(&self) -> Result<HostRange, String> {
        let range = idmap::host_range().await?;
        lxc::defaults_installed().await?;
        self.lxc.reachable(&range.shared()).await?;
        Ok(range)
    }

    /// The uid bases of every container's map, in every project.
    pub(super) async fn maps_in_use(&self) -> Result<Vec<u32>, BackendError> {
        Ok(inv::list_instances(&self.pool, None)
            .await
            .map_err(db)?
            .iter()
            .filter_map(|r| IdMap::stored(&serde_json::from_str(&r.config).ok()?))
            .map(|m| m.uid_base)
            .collect())
    }

    /// The instance as lxgate shows it; `profiles`: its project's.
    fn build_instance(
        row: &InstanceRow,
        info: &LxcInfo,
        profiles: &BTreeMap<String, Profile>,
    ) -> Instance {
        let (status, code) = lxc::status_of(&info.state);
        let config = own_config(row);
        let devices: DevicesMap = serde_json::from_str(&row.devices).unwrap_or_default();
        let names = profiles::names_of(row);
        let (expanded_config, expanded_devices) =
            expand(profiles::in_order(profiles, &names), &config, &devices);
        Instance {
            name: row.name.clone(),
            instance_type: row.instance_type.clone(),
            status: status.to_owned(),
            status_code: code,
            description: row.description.clone(),
            architecture: row.architecture.clone(),
            created_at: row.created_at.clone(),
            last_used_at: row.last_used_at.clone(),
            location: super::host::member_name().into(),
            project: row.project.clone(),
            profiles: names,
            ephemeral: row.ephemeral != 0,
            stateful: false,
            expanded_config,
            config,
            devices,
            expanded_devices,
        }
    }

    pub(super) async fn to_instance(&self, row: &InstanceRow) -> Result<Instance, BackendError> {
        let info = self.info_of(row).await;
        let profiles = self.profiles_of(&row.project).await?;
        Ok(Self::build_instance(row, &info, &profiles))
    }

    /// The config an instance's driver gets (the LXC configuration, QEMU's
    /// command line): its profiles' and its own, without the keys lxgate
    /// keeps for itself.
    pub(super) async fn driver_config(&self, row: &InstanceRow) -> Result<ConfigMap, BackendError> {
        let profiles = self.profiles_of(&row.project).await?;
        let (config, _) = expand(
            profiles::in_order(&profiles, &profiles::names_of(row)),
            &own_config(row),
            &DevicesMap::new(),
        );
        Ok(user_config(config))
    }

    /// A listing's scope: no filter expressions (Incus's language is not
    /// implemented here), and a project that exists.
    pub(super) async fn check_scope(&self, scope: &ListScope<'_>) -> Result<(), BackendError> {
        if scope.filter.is_some() {
            return Err(BackendError::NotSupported(
                "filter expressions are not supported by the embedded backend".into(),
            ));
        }
        if let Some(p) = scope.project {
            self.ensure_project(p).await?;
        }
        Ok(())
    }

    /// The host name of a running instance and whether it is a VM, or a clear
    /// 409 (the instance's state, which the client can change).
    pub(super) async fn running_instance(
        &self,
        project: &str,
        name: &str,
    ) -> Result<(String, bool), BackendError> {
        let row = self.row(project, name).await?;
        let info = self.info_of(&row).await;
        match info.state.as_str() {
            "RUNNING" => Ok((Lxc::host_name(project, name), row.instance_type == VM)),
            "FROZEN" => Err(BackendError::Conflict("Instance is frozen".into())),
            _ => Err(BackendError::Conflict("Instance is not running".into())),
        }
    }

    /// What the instance's devices are on this host (`host`: its host name).
    pub(super) async fn attachments(
        &self,
        project: &str,
        host: &str,
        devices: &DevicesMap,
        vm: bool,
    ) -> Result<Attachments, BackendError> {
        Ok(Attachments {
            mounts: self.volume_mounts(project, devices, vm).await?,
            nics: self.nics(host, devices).await?,
        })
    }
}

/// What an instance takes from its image: the type must match, and its
/// properties go into `image.*` keys beside `volatile.base_image`.
fn from_image(
    kind: &str,
    image: &inv::ImageRow,
    config: &mut ConfigMap,
) -> Result<(), BackendError> {
    if image.image_type != kind {
        return Err(BackendError::BadRequest(format!(
            "image {} is a {} image, not a {kind} one",
            &image.fingerprint[..12],
            image.image_type
        )));
    }
    let props: BTreeMap<String, String> =
        serde_json::from_str(&image.properties).unwrap_or_default();
    for (k, v) in props {
        config.insert(format!("image.{k}"), v);
    }
    config.insert("volatile.base_image".into(), image.fingerprint.clone());
    Ok(())
}

/// An empty VM's disk: the root disk's `size`, or Incus's default 10 GiB
/// (a qcow2 takes only what the guest writes).
fn blank_disk_size(devices: &DevicesMap) -> Result<u64, BackendError> {
    const DEFAULT: u64 = 10 << 30;
    let size = devices
        .values()
        .find(|d| profiles::is_root_disk(d))
        .and_then(|d| d.get("size"))
        .filter(|s| !s.is_empty());
    match size {
        None => Ok(DEFAULT),
        Some(s) => super::limits::parse_size(s)
            .filter(|n| *n > 0)
            .ok_or_else(|| BackendError::BadRequest(format!("invalid root disk size {s:?}"))),
    }
}

impl EmbeddedBackend {
    /// A new instance's profiles (default `["default"]`, each of the
    /// project) and what it runs with: their config and root disk under its
    /// own, held to what the drivers implement. For creates and copies.
    pub(super) async fn expand_new(
        &self,
        project: &ProjectName,
        kind: &str,
        profiles: Option<&[String]>,
        config: &ConfigMap,
        devices: &DevicesMap,
    ) -> Result<(Vec<String>, ConfigMap, DevicesMap), BackendError> {
        let names = profiles.map_or_else(|| vec![profiles::DEFAULT_PROFILE.into()], <[_]>::to_vec);
        let known = self.profiles_of(project).await?;
        profiles::check_list(&known, &names)?;
        let (expanded, expanded_devices) = profiles::runnable(
            kind,
            &profiles::in_order(&known, &names),
            config,
            devices,
            None,
        )?;
        Ok((names, expanded, expanded_devices))
    }

    /// How a new instance of `kind` runs, from its expanded config, decided
    /// for creates and copies alike: a VM or a container an admin made
    /// privileged has no map; an isolated container gets the next free block
    /// of the host's range, the others the shared map. The map is recorded
    /// in `config`. For an isolated map the guard of `idmap_lock` comes
    /// back too: hold it until the row recording the map is in, so no other
    /// create takes the same block. Also says whether it is privileged.
    pub(super) async fn new_confinement(
        &self,
        kind: &str,
        expanded: &ConfigMap,
        config: &mut ConfigMap,
    ) -> Result<(Confinement, bool, Option<tokio::sync::MutexGuard<'_, ()>>), BackendError> {
        let is_true = |k: &str| expanded.get(k).is_some_and(|v| v == "true");
        let privileged = kind != VM && is_true("security.privileged");
        let isolated = kind != VM && is_true("security.idmap.isolated");
        if privileged && isolated {
            return Err(BackendError::BadRequest(
                "security.idmap.isolated is for unprivileged containers; a privileged one has no id map".into(),
            ));
        }
        if kind == VM || privileged {
            return Ok((Confinement::Privileged, privileged, None));
        }
        let range = self
            .unprivileged_range()
            .await
            .map_err(|why| idmap::unavailable(&why))?;
        let (map, picking) = if isolated {
            let picking = self.idmap_lock.lock().await;
            let map = range
                .free_isolated(&self.maps_in_use().await?)
                .ok_or_else(|| {
                    BackendError::Conflict(format!(
                        "all {} isolated id ranges of this host are in use",
                        range.blocks.saturating_sub(1)
                    ))
                })?;
            // An ACL for the shared root does not let this one through.
            self.lxc
                .reachable(&map)
                .await
                .map_err(|why| idmap::unavailable(&why))?;
            (map, Some(picking))
        } else {
            (range.shared(), None)
        };
        map.store(config);
        Ok((Confinement::Unprivileged(map), false, picking))
    }

    /// 409 when files under `name` exist that no row owns (see `recovery`):
    /// a new instance, or one renamed to `name`, must not take them over.
    pub(super) async fn refuse_strays(
        &self,
        project: &str,
        name: &str,
    ) -> Result<(), BackendError> {
        let host = Lxc::host_name(project, name);
        for dir in [self.lxc.dir(&host), self.qemu.vm_dir(&host)] {
            if tokio::fs::symlink_metadata(&dir).await.is_ok() {
                return Err(BackendError::Conflict(format!(
                    "{} exists on the host but belongs to no instance; an admin must move it away first",
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// Claims a new instance's name with its row: the project's limits
    /// checked and the row inserted under the project's lock (its name is
    /// never empty), so two creates cannot both squeeze under a limit.
    pub(super) async fn claim(
        &self,
        project: &ProjectName,
        kind: &str,
        expanded: &ConfigMap,
        row: &InstanceRow,
    ) -> Result<(), BackendError> {
        let project_lock = self.lock(project, "");
        let _p = project_lock.lock().await;
        self.check_project_limits(project, kind, expanded).await?;
        // Files no row owns (see `recovery`) are never made over, nor
        // removed by this create's cleanup if it fails.
        self.refuse_strays(project, &row.name).await?;
        inv::insert_instance(&self.pool, row)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    BackendError::Conflict("Instance already exists".into())
                }
                e => db(e),
            })
    }
}

#[async_trait::async_trait]
impl Instances for EmbeddedBackend {
    async fn list_instances(
        &self,
        scope: ListScope<'_>,
    ) -> Result<Listing<Instance>, BackendError> {
        self.check_scope(&scope).await?;
        let rows = inv::list_instances(&self.pool, scope.project.map(|p| p.as_str()))
            .await
            .map_err(db)?;
        if !scope.expand {
            return Ok(Listing::Names(rows.into_iter().map(|r| r.name).collect()));
        }
        // Each project's profiles, read once.
        let mut profiles: BTreeMap<String, BTreeMap<String, Profile>> = BTreeMap::new();
        for r in &rows {
            if !profiles.contains_key(&r.project) {
                let of = self.profiles_of(&r.project).await?;
                profiles.insert(r.project.clone(), of);
            }
        }
        let profiles = &profiles;
        // Owned rows keep the stream's futures free of borrowed lifetimes
        // (async_trait needs them Send for any lifetime).
        let out = futures::stream::iter(rows)
            .map(|r| async move {
                let info = self
                    .driver(&r)
                    .info_for_listing(&Lxc::host_name(&r.project, &r.name))
                    .await;
                Self::build_instance(&r, &info, &profiles[&r.project])
            })
            .buffered(INFO_CONCURRENCY)
            .collect()
            .await;
        Ok(Listing::Full(out))
    }

    async fn get_instance(
        &self,
        project: &ProjectName,
        name: &InstanceName,
    ) -> Result<(Instance, Option<String>), BackendError> {
        let row = self.row(project, name).await?;
        let inst = self.to_instance(&row).await?;
        let tag = etag(&inst);
        Ok((inst, Some(tag)))
    }

    async fn create_instance(
        &self,
        project: &ProjectName,
        req: &InstanceCreate,
        target: Option<&MemberName>,
    ) -> Result<Operation, BackendError> {
        if req.source.kind == "copy" {
            return self.copy_instance(project, req, target).await;
        }
        super::cluster::check_target(target)?;
        let remote = req.source.server.is_some();
        if remote && req.source.protocol.as_deref() != Some("simplestreams") {
            return Err(BackendError::NotSupported(
                "the embedded backend pulls images from simplestreams servers; protocol `incus` needs BACKEND=incus".into(),
            ));
        }
        let blank = req.source.kind == "none";
        let kind = req.instance_type.as_deref().unwrap_or("container");
        self.ensure_project(project).await?;
        if kind == VM {
            self.driver_available("qemu").await?;
            lxc::check_config(&req.config)?;
            // The VM-specific meaning of the limits (a CPU count).
            qemu::vm_resources(&req.config)?;
        } else {
            self.driver_available("lxc").await?;
            lxc::check_config(&req.config)?;
        }
        if !req.devices.is_empty() {
            return Err(BackendError::NotSupported(
                "devices on embedded instances are attached with the volume and NIC endpoints"
                    .into(),
            ));
        }
        let (profiles, expanded, expanded_devices) = self
            .expand_new(
                project,
                kind,
                req.profiles.as_deref(),
                &req.config,
                &req.devices,
            )
            .await?;
        if blank && kind != VM {
            return Err(BackendError::BadRequest(
                "source.type `none` makes an empty virtual machine".into(),
            ));
        }
        let disk_size = blank
            .then(|| blank_disk_size(&expanded_devices))
            .transpose()?;
        let images_in = self.image_project(project).await?;
        // A remote image is pulled by the operation, a blank VM has none.
        let image = match (&req.source.alias, &req.source.fingerprint) {
            _ if remote || blank => None,
            (Some(alias), _) => {
                let a = inv::get_alias(&self.pool, &images_in, alias)
                    .await
                    .map_err(db)?
                    .ok_or_else(|| BackendError::NotFound(Missing::image_alias(alias)))?;
                Some(images::find(&self.pool, &images_in, &a.target).await?)
            }
            (None, Some(fp)) => Some(images::find(&self.pool, &images_in, fp).await?),
            (None, None) => {
                return Err(BackendError::BadRequest(
                    "the source needs an image alias or fingerprint".into(),
                ));
            }
        };
        let mut config = req.config.clone();
        if let Some(image) = &image {
            from_image(kind, image, &mut config)?;
        }
        // Unprivileged unless an admin asked otherwise (who may ask is the
        // API's policy; the backend only honours the key). An isolated
        // map's pick is held until the row that records it is in.
        let (confinement, privileged, _picking) =
            self.new_confinement(kind, &expanded, &mut config).await?;
        let now = now();
        let row = InstanceRow {
            project: project.as_str().to_owned(),
            name: req.name.clone(),
            instance_type: kind.to_owned(),
            description: req.description.clone().unwrap_or_default(),
            architecture: image
                .as_ref()
                .map_or_else(|| "x86_64".to_owned(), |i| i.architecture.clone()),
            config: serde_json::to_string(&config).unwrap_or_else(|_| "{}".into()),
            devices: "{}".into(),
            profiles: serde_json::to_string(&profiles).unwrap_or_else(|_| "[]".into()),
            ephemeral: i64::from(req.ephemeral),
            image: image
                .as_ref()
                .map(|i| i.fingerprint.clone())
                .unwrap_or_default(),
            created_at: now.clone(),
            last_used_at: now,
            privileged: i64::from(privileged),
        };
        // Take the instance's lock before the name: whatever comes next for
        // this instance waits until it exists.
        let guard = self.lock(project, &req.name).lock_owned().await;
        self.claim(project, kind, &expanded, &row).await?;

        let (pool, lxc, bus) = (self.pool.clone(), self.lxc.clone(), self.bus.clone());
        let (qemu, driver) = (self.qemu.clone(), self.driver(&row));
        let store = self.images.clone();
        // What the operation pulls first, for a remote source.
        let pull = remote.then(|| (self.puller(&images_in), req.source.clone()));
        let start = req.start;
        let user_config = user_config(expanded);
        let source = resource_url(project, &format!("instances/{}", req.name));
        Ok(self.ops.start(
            project,
            "Creating instance",
            resources("instances", project, &format!("instances/{}", req.name)),
            true,
            move |ctx: OpCtx| async move {
                let _guard = guard;
                let mut row = row;
                let ct = Lxc::host_name(&row.project, &row.name);
                let made = async {
                    let image = match (image, pull) {
                        (Some(image), _) => Some(image),
                        (None, Some((puller, s))) => {
                            ctx.progress(
                                json!({"progress": {"stage": "download", "percent": "0"}}),
                            );
                            let wanted = images::Wanted {
                                server: s.server.as_deref().unwrap_or_default(),
                                alias: s.alias.as_deref(),
                                fingerprint: s.fingerprint.as_deref(),
                                vm: row.instance_type == VM,
                            };
                            let (fp, _) = puller.pull(&ctx, &wanted, &[], false).await?;
                            let image = images::find(&pool, &images_in, &fp).await?;
                            let mut config: ConfigMap =
                                serde_json::from_str(&row.config).unwrap_or_default();
                            from_image(&row.instance_type, &image, &mut config)?;
                            row.config =
                                serde_json::to_string(&config).unwrap_or_else(|_| "{}".into());
                            row.image = image.fingerprint.clone();
                            row.architecture = image.architecture.clone();
                            inv::set_instance_image(&pool, &row).await.map_err(db)?;
                            Some(image)
                        }
                        (None, None) => None,
                    };
                    ctx.check()?;
                    ctx.progress(json!({"progress": {"stage": "unpack", "percent": "0"}}));
                    let cancel = ctx.clone();
                    match (&image, disk_size) {
                        (_, Some(size)) => qemu.create_blank(&ct, size).await,
                        (Some(image), None) if row.instance_type == VM => {
                            let boot = store.boot(&image.fingerprint).await?;
                            qemu.create(&ct, &store.path(&image.fingerprint), &boot)
                                .await
                        }
                        (Some(image), None) => {
                            lxc.create(
                                &ct,
                                &row.name,
                                &store.rootfs(&image.fingerprint),
                                &user_config,
                                &confinement,
                                async move { cancel.cancelled().await },
                            )
                            .await
                        }
                        (None, None) => Err(BackendError::Internal(anyhow::anyhow!(
                            "an instance with no image and no blank disk"
                        ))),
                    }
                    .map_err(|e| {
                        if ctx.is_cancelled() {
                            OpError::Cancelled
                        } else {
                            e.into()
                        }
                    })?;
                    ctx.check()?;
                    // Made: a restart keeps it from now on (`recovery`).
                    inv::set_phase(&pool, &row.project, &row.name, Phase::Ready)
                        .await
                        .map_err(db)?;
                    Ok::<_, OpError>(())
                }
                .await;
                if let Err(e) = made {
                    // A failed or cancelled create leaves nothing behind.
                    let _ = driver.destroy(&ct).await;
                    let _ = inv::delete_instance(&pool, &row.project, &row.name).await;
                    return Err(e);
                }
                lifecycle(
                    &bus,
                    &row.project,
                    "instance-created",
                    &source,
                    json!({"type": row.instance_type}),
                );
                if start {
                    driver
                        .start(&ct, &user_config, &Attachments::default())
                        .await?;
                    lifecycle(&bus, &row.project, "instance-started", &source, json!({}));
                }
                Ok(Value::Null)
            },
        ))
    }

    /// Done before it returns: no operation.
    async fn update_instance(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        update: &InstanceUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<Option<Operation>, BackendError> {
        let lock = self.lock(project, name);
        let _guard = lock.lock().await;
        let mut row = self.row(project, name).await?;
        let known = self.profiles_of(project).await?;
        // The ETag and the config do not depend on the run state: no lxc-info.
        let current = Self::build_instance(&row, &LxcInfo::default(), &known);
        if let Some(tag) = if_match
            && tag.trim_matches('"') != etag(&current)
        {
            return Err(BackendError::PreconditionFailed(
                "ETag doesn't match".into(),
            ));
        }
        // Devices: custom volumes and NICs, checked against the storage and
        // networks (volumes apply at the next start; NICs of a running
        // container are hot-plugged).
        // A PUT replaces the devices; a PATCH merges them by name, as in Incus.
        let mut devices: DevicesMap = match (&update.devices, replace) {
            (Some(d), true) => d.clone(),
            (None, true) => DevicesMap::new(),
            (Some(d), false) => {
                let mut merged = current.devices.clone();
                merged.extend(d.clone());
                merged
            }
            (None, false) => current.devices.clone(),
        };
        let vm = row.instance_type == VM;
        let nics_of = |d: &DevicesMap| -> DevicesMap {
            d.iter()
                .filter(|(_, v)| nic_network(v).is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let nics_changed = nics_of(&devices) != nics_of(&current.devices);
        // Held until the devices are stored: addresses are given out once.
        let _net = match nics_changed {
            true => Some(self.net_lock.lock().await),
            false => None,
        };
        // A running container's NICs are hot-plugged (its init's pid); a
        // running VM's would need the guest's help, so it is stopped first.
        let mut hot = None;
        if nics_changed {
            let info = self.driver(&row).info(&Lxc::host_name(project, name)).await;
            if info.state != "STOPPED" {
                if vm {
                    return Err(BackendError::BadRequest(
                        "NICs of a virtual machine are attached and detached while it is stopped; stop it first"
                            .into(),
                    ));
                }
                hot = Some(info.pid.ok_or_else(|| {
                    BackendError::BadRequest(format!(
                        "the container is {} without a process; try again",
                        info.state.to_lowercase()
                    ))
                })?);
            }
            self.assign_nics(project, name, &mut devices).await?;
        }
        let attached = self
            .attachments(project, &Lxc::host_name(project, name), &devices, vm)
            .await?;
        let names = match &update.profiles {
            Some(p) => {
                profiles::check_list(&known, p)?;
                p.clone()
            }
            None => current.profiles.clone(),
        };
        // Keys lxgate manages stay as they are; the user's keys are checked.
        let (managed, mut user): (ConfigMap, ConfigMap) = current
            .config
            .clone()
            .into_iter()
            .partition(|(k, _)| is_managed(k));
        if let Some(new) = &update.config {
            let new = user_config(new.clone());
            if replace {
                user = new;
            } else {
                user.extend(new);
            }
        }
        lxc::check_config(&user)?;
        let confinement = Self::confinement(&row)?;
        // What it runs with from now on: still something it can run, made
        // as it was (the id map its files belong to).
        let (expanded, _) = profiles::runnable(
            &row.instance_type,
            &profiles::in_order(&known, &names),
            &user,
            &devices,
            Some((&confinement, profiles::isolated(&current.expanded_config))),
        )?;
        let driver_config = user_config(expanded);
        if let Some(map) = confinement.map() {
            let range = idmap::host_range().await.ok();
            for (path, target) in &attached.mounts {
                give_volume(path, target, &map, range.as_ref()).await?;
            }
            self.let_through_to_volumes(&attached.mounts, &map).await?;
        }
        let ct = Lxc::host_name(project, name);
        if let Some(pid) = hot {
            let before = self.nics(&ct, &current.devices).await.unwrap_or_default();
            Self::hotplug(&before, &attached.nics, pid).await?;
        }
        // A VM's is applied at the next start, when the command line is built.
        if !vm {
            self.lxc
                .write_config(&ct, name, &driver_config, &attached, &confinement)
                .await?;
        }
        row.devices = serde_json::to_string(&devices).unwrap_or_else(|_| "{}".into());
        let mut config = managed;
        config.extend(user);
        row.config = serde_json::to_string(&config).unwrap_or_else(|_| "{}".into());
        if let Some(d) = &update.description {
            row.description = d.clone();
        } else if replace {
            row.description = String::new();
        }
        if let Some(p) = &update.profiles {
            row.profiles = serde_json::to_string(p).unwrap_or_else(|_| "[]".into());
        }
        if let Some(e) = update.ephemeral {
            row.ephemeral = i64::from(e);
        }
        inv::update_instance(&self.pool, &row).await.map_err(db)?;
        if nics_changed {
            // DHCP hands out the new reservations (and forgets the old ones).
            let networks: std::collections::BTreeSet<&str> = devices
                .values()
                .chain(current.devices.values())
                .filter_map(nic_network)
                .collect();
            for n in networks {
                if let Err(e) = self.sync_dhcp(n).await {
                    tracing::warn!(network = n, error = %e, "DHCP reservations not updated");
                }
            }
        }
        lifecycle(
            &self.bus,
            project,
            "instance-updated",
            &resource_url(project, &format!("instances/{name}")),
            json!({}),
        );
        Ok(None)
    }

    async fn delete_instance(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        force: bool,
    ) -> Result<Operation, BackendError> {
        let row = self.row(project, name).await?;
        if !force && self.info_of(&row).await.state != "STOPPED" {
            return Err(BackendError::Conflict(
                "The instance is currently running, stop it first (or delete with ?force=true)"
                    .into(),
            ));
        }
        let guard = self.lock(project, name).lock_owned().await;
        let (pool, driver, bus) = (self.pool.clone(), self.driver(&row), self.bus.clone());
        let source = resource_url(project, &format!("instances/{name}"));
        Ok(self.ops.start(
            project,
            "Deleting instance",
            resources("instances", project, &format!("instances/{name}")),
            false,
            move |_ctx| async move {
                let _guard = guard;
                let ct = Lxc::host_name(&row.project, &row.name);
                let state = driver.info(&ct).await.state;
                if state != "STOPPED" {
                    if !force {
                        return Err(OpError::Failed(
                            "The instance is currently running, stop it first".into(),
                        ));
                    }
                    // A frozen container's processes cannot take the kill.
                    if state == "FROZEN" {
                        driver.unfreeze(&ct).await?;
                    }
                    driver.stop(&ct, 0, true).await?;
                    lifecycle(&bus, &row.project, "instance-stopped", &source, json!({}));
                }
                // From here a restart finishes the delete (`recovery`).
                inv::set_phase(&pool, &row.project, &row.name, Phase::Deleting)
                    .await
                    .map_err(db)?;
                if let Err(e) = driver.destroy(&ct).await {
                    // Not deleted after all: a restart must not finish it.
                    let _ = inv::set_phase(&pool, &row.project, &row.name, Phase::Ready).await;
                    return Err(e.into());
                }
                inv::delete_instance(&pool, &row.project, &row.name)
                    .await
                    .map_err(db)?;
                lifecycle(&bus, &row.project, "instance-deleted", &source, json!({}));
                Ok(Value::Null)
            },
        ))
    }

    async fn rename_instance(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        new_name: &InstanceName,
    ) -> Result<Operation, BackendError> {
        let row = self.row(project, name).await?;
        if self.info_of(&row).await.state != "STOPPED" {
            return Err(BackendError::Conflict(
                "Renaming of running instance not allowed".into(),
            ));
        }
        if inv::get_instance(&self.pool, project, new_name)
            .await
            .map_err(db)?
            .is_some()
        {
            return Err(BackendError::Conflict(format!(
                "Name \"{new_name}\" already in use"
            )));
        }
        // Both names locked (in one order, so two renames cannot wait on
        // each other): nothing acts on the row under its new name until
        // its files have followed.
        let (first, second) = if name.as_str() < new_name.as_str() {
            (name.as_str(), new_name.as_str())
        } else {
            (new_name.as_str(), name.as_str())
        };
        let guard = self.lock(project, first).lock_owned().await;
        let guard2 = self.lock(project, second).lock_owned().await;
        // Read again under the lock (a change may have held it meanwhile).
        let row = self.row(project, name).await?;
        if self.info_of(&row).await.state != "STOPPED" {
            return Err(BackendError::BadRequest(
                "Renaming of running instance not allowed".into(),
            ));
        }
        self.refuse_strays(project, new_name).await?;
        let devices: DevicesMap = serde_json::from_str(&row.devices).unwrap_or_default();
        // The NICs' host ends are named after the instance: the new name's.
        let attached = self
            .attachments(
                project,
                &Lxc::host_name(project, new_name),
                &devices,
                row.instance_type == VM,
            )
            .await?;
        let confinement = Self::confinement(&row)?;
        let user = self.driver_config(&row).await?;
        let (pool, driver, bus) = (self.pool.clone(), self.driver(&row), self.bus.clone());
        let old_dir = self.instance_dir(&row);
        let new_name = new_name.to_owned();
        let source = resource_url(project, &format!("instances/{new_name}"));
        Ok(self.ops.start(
            project,
            "Renaming instance",
            resources("instances", project, &format!("instances/{name}")),
            false,
            move |_ctx| async move {
                let _guards = (guard, guard2);
                let (old_ct, new_ct) = (
                    Lxc::host_name(&row.project, &row.name),
                    Lxc::host_name(&row.project, &new_name),
                );
                // The row first, remembering the old name: a kill from here
                // on is finished at the next start (`recovery`).
                inv::begin_rename(&pool, &row.project, &row.name, &new_name)
                    .await
                    .map_err(|e| match e {
                        sqlx::Error::Database(d) if d.is_unique_violation() => {
                            OpError::Failed(format!("Name \"{new_name}\" already in use"))
                        }
                        e => db(e).into(),
                    })?;
                if let Err(e) = driver
                    .rename(&old_ct, &new_ct, &new_name, &user, &attached, &confinement)
                    .await
                {
                    // Back under the old name only if the files are (the
                    // driver moves them back itself); else the row stays
                    // `renaming` and the next start finishes it.
                    if tokio::fs::symlink_metadata(&old_dir).await.is_ok() {
                        let _ = inv::undo_rename(&pool, &row.project, &new_name).await;
                    }
                    return Err(e.into());
                }
                // The owner record too, here: a kill before the API's own
                // hook sees the operation end would leave it behind.
                crate::db::instance_owners::rename(&pool, &row.project, &row.name, &new_name)
                    .await
                    .map_err(|e| OpError::from(db(e)))?;
                inv::end_rename(&pool, &row.project, &new_name)
                    .await
                    .map_err(|e| OpError::from(db(e)))?;
                lifecycle(
                    &bus,
                    &row.project,
                    "instance-renamed",
                    &source,
                    json!({"old_name": row.name}),
                );
                Ok(Value::Null)
            },
        ))
    }

    async fn instance_state(
        &self,
        project: &ProjectName,
        name: &InstanceName,
    ) -> Result<InstanceState, BackendError> {
        let row = self.row(project, name).await?;
        let info = self.info_of(&row).await;
        let (status, code) = lxc::status_of(&info.state);
        let processes = match info.pid {
            Some(pid) => count_processes(pid).await,
            None => 0,
        };
        let network = if info.pid.is_some() {
            let devices: DevicesMap = serde_json::from_str(&row.devices).unwrap_or_default();
            self.nic_states(&Lxc::host_name(project, name), &devices)
                .await
        } else {
            BTreeMap::new()
        };
        Ok(InstanceState {
            status: status.to_owned(),
            status_code: code,
            pid: info.pid.unwrap_or(0),
            processes,
            cpu: InstanceStateCpu {
                usage: info.cpu_ns,
                allocated_time: 0,
            },
            memory: InstanceStateMemory {
                usage: info.memory,
                ..Default::default()
            },
            network,
            ..Default::default()
        })
    }

    async fn change_state(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        change: &StateChange,
    ) -> Result<Operation, BackendError> {
        let action = change.action.as_str();
        let row = self.row(project, name).await?;
        // A quick refusal from a recent state (up to 2 s old; lxgate's own
        // changes clear it), without waiting for the lock or forking
        // lxc-info; the state read under the lock decides.
        if let Some(recent) = self
            .driver(&row)
            .recent_info(&Lxc::host_name(project, name))
        {
            refuse_state_change(action, &recent.state)?;
        }
        let guard = self.lock(project, name).lock_owned().await;
        // Read again under the lock: a change that held it meanwhile (a NIC
        // attached, another start) is what this action must go by.
        let row = self.row(project, name).await?;
        let state = self.info_of(&row).await.state;
        refuse_state_change(action, &state)?;
        let devices: DevicesMap = serde_json::from_str(&row.devices).unwrap_or_default();
        let attached = self
            .attachments(
                project,
                &Lxc::host_name(project, name),
                &devices,
                row.instance_type == VM,
            )
            .await?;
        // Held through the start (see `lock_attached_volumes`).
        let volume_guards = if matches!(action, "start" | "restart") {
            self.lock_attached_volumes(project, &devices).await
        } else {
            Vec::new()
        };
        if matches!(action, "start" | "restart") {
            self.ensure_bridges(&attached.nics).await?;
            // LXC mounts the volumes as the container's root, which must
            // pass through each pool's closed custom/ (storage.rs).
            if let Some(map) = Self::confinement(&row)?.map()
                && !attached.mounts.is_empty()
            {
                self.let_through_to_volumes(&attached.mounts, &map).await?;
            }
        }
        // Started with what its profiles say now: a profile changed since the
        // last start applies from this one (the LXC configuration is written
        // again; a VM's command line is built from it).
        let config = self.driver_config(&row).await?;
        if matches!(action, "start" | "restart") && row.instance_type != VM {
            self.lxc
                .write_config(
                    &Lxc::host_name(project, name),
                    name,
                    &config,
                    &attached,
                    &Self::confinement(&row)?,
                )
                .await?;
        }
        let (driver, bus, pool) = (self.driver(&row), self.bus.clone(), self.pool.clone());
        let change = change.clone();
        let source = resource_url(project, &format!("instances/{name}"));
        let description = match action {
            "start" => "Starting instance",
            "stop" => "Stopping instance",
            "restart" => "Restarting instance",
            "freeze" => "Freezing instance",
            _ => "Unfreezing instance",
        };
        Ok(self.ops.start(
            project,
            description,
            resources("instances", project, &format!("instances/{name}")),
            false,
            move |_ctx| async move {
                let _guard = guard;
                let _volumes = volume_guards;
                let ct = Lxc::host_name(&row.project, &row.name);
                let event = match change.action.as_str() {
                    "start" => {
                        driver.start(&ct, &config, &attached).await?;
                        let _ = inv::touch_instance(&pool, &row.project, &row.name, &now()).await;
                        "instance-started"
                    }
                    "stop" => {
                        if state == "FROZEN" {
                            driver.unfreeze(&ct).await?;
                        }
                        driver.stop(&ct, change.timeout, change.force).await?;
                        "instance-stopped"
                    }
                    "restart" => {
                        if state == "FROZEN" {
                            driver.unfreeze(&ct).await?;
                        }
                        driver.restart(&ct, change.timeout, change.force).await?;
                        "instance-restarted"
                    }
                    "freeze" => {
                        driver.freeze(&ct).await?;
                        "instance-paused"
                    }
                    _ => {
                        driver.unfreeze(&ct).await?;
                        "instance-resumed"
                    }
                };
                lifecycle(&bus, &row.project, event, &source, json!({}));
                Ok(Value::Null)
            },
        ))
    }
}

/// A filesystem volume's top directory made the container root's when it
/// still belongs to the host's root (never used by an unprivileged
/// container), so root in the container can write to it. Its contents are
/// left as they are: files a privileged container wrote there show as
/// nobody inside (shifting them is a re-chown of someone's data). A volume
/// owned by another container map of root's range (an isolated container's,
/// or the shared one for an isolated container) is refused: root inside
/// could not write to it, and chowning it would take it from the others.
pub(super) async fn give_volume(
    path: &Path,
    target: &str,
    map: &IdMap,
    range: Option<&HostRange>,
) -> Result<(), BackendError> {
    use std::os::unix::fs::MetadataExt;
    let m = tokio::fs::symlink_metadata(path)
        .await
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("reading a volume: {e}")))?;
    let owner = m.uid();
    if m.is_dir() && owner == 0 && m.gid() == 0 {
        let (path, map) = (path.to_owned(), *map);
        return tokio::task::spawn_blocking(move || {
            std::os::unix::fs::lchown(&path, Some(map.uid_base), Some(map.gid_base))
        })
        .await
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("volume task: {e}")))?
        .map_err(|e| {
            BackendError::Internal(anyhow::anyhow!("giving a volume to the container: {e}"))
        });
    }
    let ours = map.uid_base <= owner && owner - map.uid_base < map.size;
    if !ours && range.is_some_and(|r| r.holds(owner)) {
        return Err(BackendError::BadRequest(format!(
            "the volume for {target} belongs to another container id map (host uid {owner}): containers with different id maps (security.idmap.isolated) cannot share a volume"
        )));
    }
    Ok(())
}

/// The same refusals Incus gives, before any work starts: 409, as the
/// instance's current state is what the request meets (Incus says 400).
fn refuse_state_change(action: &str, state: &str) -> Result<(), BackendError> {
    let refusal = match (action, state) {
        ("start", "RUNNING") => Some("The instance is already running"),
        ("start", "FROZEN") => Some("The instance is frozen; unfreeze it"),
        ("stop" | "restart", "STOPPED") => Some("The instance is already stopped"),
        ("freeze", "FROZEN") => Some("The instance is already frozen"),
        ("freeze", s) if s != "RUNNING" => Some("The instance is not running"),
        ("unfreeze", s) if s != "FROZEN" => Some("The instance is not frozen"),
        _ => None,
    };
    match refusal {
        Some(msg) => Err(BackendError::Conflict(msg.into())),
        None => Ok(()),
    }
}

/// Processes in the container: those sharing init's PID namespace.
async fn count_processes(init_pid: i64) -> i64 {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let pid = init_pid.to_string();
    tokio::task::spawn_blocking(move || {
        let Some(target) = ns(&pid) else { return 0 };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        dir.filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter(|e| ns(&e.file_name().to_string_lossy()).as_ref() == Some(&target))
            .count() as i64
    })
    .await
    .unwrap_or(0)
}
