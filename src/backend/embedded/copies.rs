//! Instances made as copies of others (`source.type: copy`) on the embedded
//! backend. The API has already merged the source's config, devices and
//! profiles under the request's and judged the result with the instance
//! policy, so the copy is made with exactly the request's: the source is
//! read for its files only (reading its config again here would reopen the
//! race the policy check closed).
//!
//! * A container gets a confinement of its own from its config, as a new
//!   one does (the shared map, an isolated one, or privileged), so its
//!   files change owners: the source's root filesystem (or a snapshot's) is
//!   packed into a tarball with its ids shifted back to 0, as publishing an
//!   image does, and unpacked the way an image is, inside the new map. A
//!   running source is frozen while it is packed, as for a snapshot.
//! * A VM's disk is written anew (`qemu::Qemu::copy`); the source must be
//!   stopped (its disk is QEMU's while it runs).
//!
//! A copy carries no snapshots, and its NICs get MACs and addresses of
//! their own.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::driver_types::VM;
use super::idmap;
use super::image_pack;
use super::instance_config::user_config;
use super::instances::give_volume;
use super::inventory::db;
use super::lxc::{self, Lxc};
use super::networks::nic_network;
use super::operations::{OpCtx, OpError, lifecycle, now, resource_url};
use super::{EmbeddedBackend, recovery, resources};
use crate::backend::BackendError;
use crate::backend::types::{ConfigMap, DevicesMap, InstanceCreate, Operation};
use crate::db::embedded::{self as inv, InstanceRow, Phase};
use crate::names::{InstanceName, MemberName, ProjectName, SnapshotName};

/// What a copy is made from, as the API normalized it (checked again here:
/// these names reach paths and qemu-img's options).
struct CopySource {
    project: ProjectName,
    instance: InstanceName,
    snapshot: Option<SnapshotName>,
}

impl CopySource {
    fn of(project: &ProjectName, req: &InstanceCreate) -> Result<Self, BackendError> {
        let bad = |e: String| BackendError::BadRequest(format!("source.source: {e}"));
        let from = req.source.source.as_deref().ok_or_else(|| {
            BackendError::BadRequest(
                "a copy needs source.source: `instance` or `instance/snapshot`".into(),
            )
        })?;
        let (instance, snapshot) = match from.split_once('/') {
            Some((i, s)) => (
                InstanceName::parse(i).map_err(bad)?,
                Some(SnapshotName::parse(s).map_err(bad)?),
            ),
            None => (InstanceName::parse(from).map_err(bad)?, None),
        };
        let project = match &req.source.project {
            Some(p) => ProjectName::parse(p)
                .map_err(|e| BackendError::BadRequest(format!("source.project: {e}")))?,
            None => project.clone(),
        };
        Ok(Self {
            project,
            instance,
            snapshot,
        })
    }
}

/// Takes the source's NICs' MACs and addresses out of a copy's devices
/// (`source`: the devices of the instance and, for a snapshot, the ones it
/// recorded), so the copy's NICs get their own: two NICs with one MAC on a
/// bridge, or one address twice, break both instances. What the request
/// set otherwise is kept (and checked by `assign_nics`).
fn forget_source_nics(devices: &mut DevicesMap, source: &[&DevicesMap]) {
    let mut macs = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    for d in source.iter().flat_map(|m| m.values()) {
        let Some(network) = nic_network(d) else {
            continue;
        };
        if let Some(mac) = d.get("hwaddr") {
            macs.insert(mac.to_ascii_lowercase());
        }
        if let Some(a) = d.get("ipv4.address") {
            addresses.insert((network.to_owned(), a.clone()));
        }
    }
    for d in devices.values_mut() {
        let Some(network) = nic_network(d).map(str::to_owned) else {
            continue;
        };
        if d.get("hwaddr")
            .is_some_and(|m| macs.contains(&m.to_ascii_lowercase()))
        {
            d.remove("hwaddr");
        }
        if d.get("ipv4.address")
            .is_some_and(|a| addresses.contains(&(network.clone(), a.clone())))
        {
            d.remove("ipv4.address");
        }
    }
}

impl EmbeddedBackend {
    /// A new instance in `project` copied from `req.source` (see the
    /// module's comment), with exactly `req`'s config, devices and profiles.
    pub(super) async fn copy_instance(
        &self,
        project: &ProjectName,
        req: &InstanceCreate,
        target: Option<&MemberName>,
    ) -> Result<Operation, BackendError> {
        super::cluster::check_target(target)?;
        let from = CopySource::of(project, req)?;
        if from.project == *project && from.instance.as_str() == req.name {
            return Err(BackendError::Conflict("Instance already exists".into()));
        }
        let kind = req.instance_type.as_deref().unwrap_or("container");
        let vm = kind == VM;
        self.ensure_project(project).await?;
        self.driver_available(if vm { "qemu" } else { "lxc" })
            .await?;
        // `""` unsets a key (as the policy reads it); `volatile.*` is the
        // backend's own.
        let mut config: ConfigMap = req
            .config
            .iter()
            .filter(|(k, v)| !v.is_empty() && !k.starts_with("volatile."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        lxc::check_config(&user_config(config.clone()))?;
        let (names, expanded, _) = self
            .expand_new(
                project,
                kind,
                req.profiles.as_deref(),
                &config,
                &req.devices,
            )
            .await?;
        // Before anything changes on the host (the insert decides).
        if inv::get_instance(&self.pool, project, &req.name)
            .await
            .map_err(db)?
            .is_some()
        {
            return Err(BackendError::Conflict("Instance already exists".into()));
        }
        // Taken before the instances' locks, as create takes it.
        let (confinement, privileged, picking) =
            self.new_confinement(kind, &expanded, &mut config).await?;

        // The source's lock keeps it from being deleted, renamed, restored
        // or started while its files are read; the new instance's keeps
        // anything else off it until it exists. Both are taken in one
        // order (project, then name) by every copy, so two copies of each
        // other never wait for each other.
        let (src_lock, dst_lock) = (
            self.lock(&from.project, &from.instance),
            self.lock(project, &req.name),
        );
        let (src_guard, dst_guard) = if (from.project.as_str(), from.instance.as_str())
            < (project.as_str(), req.name.as_str())
        {
            let s = src_lock.lock_owned().await;
            (s, dst_lock.lock_owned().await)
        } else {
            let d = dst_lock.lock_owned().await;
            (src_lock.lock_owned().await, d)
        };
        let src = self.row(&from.project, &from.instance).await?;
        if src.instance_type != kind {
            // Deleted and made again as the other type since the API read it.
            return Err(BackendError::Conflict(format!(
                "the source is a {} now; try again",
                src.instance_type
            )));
        }
        let src_host = Lxc::host_name(&src.project, &src.name);
        let src_dir = self.lxc.dir(&src_host);
        let src_driver = self.driver(&src);
        let src_devices: DevicesMap = serde_json::from_str(&src.devices).unwrap_or_default();
        let (snap_devices, src_rootfs) = match &from.snapshot {
            Some(s) => self.snapshot_source(&src, s).await?,
            None => (DevicesMap::new(), self.instance_dir(&src).join("rootfs")),
        };
        if vm && src_driver.info(&src_host).await.state != "STOPPED" {
            return Err(BackendError::Conflict(
                "stop the VM before copying it or one of its snapshots (its disk is QEMU's while it runs)"
                    .into(),
            ));
        }
        let src_map = if vm {
            None
        } else {
            Self::confinement(&src)?.map()
        };

        // Devices as an update checks them: volumes of the project, NICs on
        // managed networks with addresses given out under `net_lock`, held
        // until the row holding them is in.
        let mut devices = req.devices.clone();
        forget_source_nics(&mut devices, &[&src_devices, &snap_devices]);
        let networks: BTreeSet<String> = devices
            .values()
            .filter_map(nic_network)
            .map(str::to_owned)
            .collect();
        let net = match networks.is_empty() {
            true => None,
            false => Some(self.net_lock.lock().await),
        };
        self.assign_nics(project, &req.name, &mut devices).await?;
        let host = Lxc::host_name(project, &req.name);
        let attached = self.attachments(project, &host, &devices, vm).await?;
        if let Some(map) = confinement.map() {
            let range = idmap::host_range().await.ok();
            for (path, target) in &attached.mounts {
                give_volume(path, target, &map, range.as_ref()).await?;
            }
            self.let_through_to_volumes(&attached.mounts, &map).await?;
        }

        // What create records: the image it comes from (the source's, whose
        // `image.*` keys came in the merged config).
        if !src.image.is_empty() {
            config.insert("volatile.base_image".into(), src.image.clone());
        }
        let created = now();
        let row = InstanceRow {
            project: project.as_str().to_owned(),
            name: req.name.clone(),
            instance_type: kind.to_owned(),
            description: req.description.clone().unwrap_or_default(),
            architecture: src.architecture.clone(),
            config: serde_json::to_string(&config).unwrap_or_else(|_| "{}".into()),
            devices: serde_json::to_string(&devices).unwrap_or_else(|_| "{}".into()),
            profiles: serde_json::to_string(&names).unwrap_or_else(|_| "[]".into()),
            ephemeral: i64::from(req.ephemeral),
            image: src.image.clone(),
            created_at: created.clone(),
            last_used_at: created,
            privileged: i64::from(privileged),
        };
        self.claim(project, kind, &expanded, &row).await?;
        drop(picking);
        if net.is_some() {
            // DHCP hands out the new reservations.
            for n in &networks {
                if let Err(e) = self.sync_dhcp(n).await {
                    tracing::warn!(network = %n, error = %e, "DHCP reservations not updated");
                }
            }
        }
        drop(net);
        let volume_guards = if req.start {
            // As a start does (`change_state`): the bridges there, the
            // volumes held through it.
            if let Err(e) = self.ensure_bridges(&attached.nics).await {
                let _ = inv::delete_instance(&self.pool, project, &req.name).await;
                return Err(e);
            }
            self.lock_attached_volumes(project, &devices).await
        } else {
            Vec::new()
        };

        let (pool, lxc, qemu, bus) = (
            self.pool.clone(),
            self.lxc.clone(),
            self.qemu.clone(),
            self.bus.clone(),
        );
        let (store, driver) = (self.images.clone(), self.driver(&row));
        let base_image = (!src.image.is_empty()).then(|| self.images.rootfs(&src.image));
        let driver_config = user_config(expanded);
        let start = req.start;
        let source = resource_url(project, &format!("instances/{}", req.name));
        Ok(self.ops.start(
            project,
            "Creating instance",
            resources("instances", project, &format!("instances/{}", req.name)),
            true,
            move |ctx: OpCtx| async move {
                let _guard = dst_guard;
                let _volumes = volume_guards;
                let mut src_guard = Some(src_guard);
                let ct = Lxc::host_name(&row.project, &row.name);
                ctx.progress(json!({"progress": {"stage": "copy", "percent": "0"}}));
                let mut spool = None;
                let made = async {
                    ctx.check()?;
                    if vm {
                        let snap = from.snapshot.as_ref().map(|s| s.as_str());
                        tokio::select! {
                            r = qemu.copy(&src_host, &ct, snap, base_image.as_deref()) => r?,
                            () = ctx.cancelled() => return Err(OpError::Cancelled),
                        }
                        src_guard = None;
                    } else {
                        let dir = store.publish_spool().await?;
                        let tarball = dir.join("rootfs.tar");
                        spool = Some(dir.clone());
                        // A running container is frozen so the copy is
                        // consistent (a snapshot stands still anyway).
                        let freeze = from.snapshot.is_none()
                            && src_driver.info(&src_host).await.state == "RUNNING";
                        if freeze {
                            recovery::mark_frozen(&src_dir).await?;
                            src_driver.freeze(&src_host).await?;
                        }
                        let packed = tokio::select! {
                            r = image_pack::pack_rootfs(&dir, &src_rootfs, src_map.as_ref(), &tarball, false) => r.map_err(OpError::from),
                            () = ctx.cancelled() => Err(OpError::Cancelled),
                        };
                        if freeze {
                            let _ = src_driver.unfreeze(&src_host).await;
                            recovery::unmark_frozen(&src_dir).await;
                        }
                        // Its files are read: the source is free again.
                        src_guard = None;
                        packed?;
                        ctx.progress(json!({"progress": {"stage": "unpack", "percent": "50"}}));
                        let cancel = ctx.clone();
                        lxc.create(
                            &ct,
                            &row.name,
                            &tarball,
                            &driver_config,
                            &confinement,
                            async move { cancel.cancelled().await },
                        )
                        .await?;
                        lxc.write_config(&ct, &row.name, &driver_config, &attached, &confinement)
                            .await?;
                    }
                    ctx.check()?;
                    // Made: a restart keeps it from now on (`recovery`).
                    inv::set_phase(&pool, &row.project, &row.name, Phase::Ready)
                        .await
                        .map_err(db)?;
                    Ok::<_, OpError>(())
                }
                .await;
                drop(src_guard);
                if let Some(dir) = spool {
                    let _ = tokio::fs::remove_dir_all(dir).await;
                }
                if let Err(e) = made {
                    // A failed or cancelled copy leaves nothing behind.
                    let _ = driver.destroy(&ct).await;
                    let _ = inv::delete_instance(&pool, &row.project, &row.name).await;
                    return Err(if ctx.is_cancelled() {
                        OpError::Cancelled
                    } else {
                        e
                    });
                }
                lifecycle(
                    &bus,
                    &row.project,
                    "instance-created",
                    &source,
                    json!({"type": row.instance_type}),
                );
                if start {
                    driver.start(&ct, &driver_config, &attached).await?;
                    let _ = inv::touch_instance(&pool, &row.project, &row.name, &now()).await;
                    lifecycle(&bus, &row.project, "instance-started", &source, json!({}));
                }
                Ok(Value::Null)
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn dev(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_copy_gets_nics_of_its_own() {
        let nic = |mac: &str, addr: &str| {
            dev(&[
                ("type", "nic"),
                ("network", "br0"),
                ("hwaddr", mac),
                ("ipv4.address", addr),
            ])
        };
        let instance = DevicesMap::from([("eth0".into(), nic("10:66:6a:00:00:01", "10.0.0.2"))]);
        let snapshot = DevicesMap::from([("eth1".into(), nic("10:66:6A:00:00:02", "10.0.0.3"))]);
        let mut copy = DevicesMap::from([
            ("eth0".into(), nic("10:66:6a:00:00:01", "10.0.0.2")),
            ("eth1".into(), nic("10:66:6a:00:00:02", "10.0.0.3")),
            // Asked for by the request: kept (assign_nics checks them).
            ("eth2".into(), nic("10:66:6a:00:00:09", "10.0.0.9")),
            (
                "data".into(),
                dev(&[("type", "disk"), ("pool", "default"), ("source", "v")]),
            ),
        ]);
        forget_source_nics(&mut copy, &[&instance, &snapshot]);
        for d in ["eth0", "eth1"] {
            assert_eq!(copy[d], dev(&[("type", "nic"), ("network", "br0")]), "{d}");
        }
        assert_eq!(copy["eth2"], nic("10:66:6a:00:00:09", "10.0.0.9"));
        assert_eq!(copy["data"].len(), 3);
    }
}
