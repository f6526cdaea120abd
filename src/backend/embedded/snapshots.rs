//! Snapshots and backups of embedded instances, kept in the instance's own
//! directory (so rename and delete carry them along):
//!
//! * `snapshots/<name>.json` describes a snapshot; a container's copy of its
//!   rootfs is `snapshots/<name>/rootfs` (`cp -a`, frozen while copying), a
//!   VM's is a qcow2 internal snapshot of its disk (taken while stopped).
//! * `backups/<name>.json` + `backups/<name>.tar[.gz|...]`: a tarball of the
//!   instance directory, streamed out on export.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::downloads::download_file;
use super::driver_types::VM;
use super::expiry::NEVER;
use super::idmap::IdMap;
use super::instance_config::{own_config, user_config};
use super::lxc::Lxc;
use super::networks::nic_network;
use super::operations::{OpError, lifecycle, now, resource_url};
use super::process::{self, run};
use super::{EmbeddedBackend, profiles, resources};
use crate::backend::types::{
    Backup, BackupCreate, ConfigMap, DevicesMap, Download, Operation, Snapshot, SnapshotCreate,
    expand,
};
use crate::backend::{BackendError, Backups, Listing, Missing, Snapshots};
use crate::db::embedded::InstanceRow;
use crate::names::{BackupName, InstanceName, ProjectName, SnapshotName};

const COPY_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotRecord {
    name: String,
    created_at: String,
    expires_at: String,
    config: ConfigMap,
    devices: DevicesMap,
    profiles: Vec<String>,
    architecture: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BackupRecord {
    name: String,
    created_at: String,
    expires_at: String,
    instance_only: bool,
    /// File name of the tarball inside `backups/`.
    file: String,
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> BackendError {
    move |e| BackendError::Internal(anyhow::anyhow!("{what}: {e}"))
}

/// What snapshot and backup records share: a JSON file each in their
/// folder, listed by creation time, then name.
trait Record: for<'de> Deserialize<'de> {
    /// The 404 for record `name` of `instance`.
    fn missing(instance: &str, name: &str) -> Missing;
    fn sort_key(&self) -> (&str, &str);
}

impl Record for SnapshotRecord {
    fn missing(instance: &str, name: &str) -> Missing {
        Missing::snapshot(instance, name)
    }
    fn sort_key(&self) -> (&str, &str) {
        (&self.created_at, &self.name)
    }
}

impl Record for BackupRecord {
    fn missing(instance: &str, name: &str) -> Missing {
        Missing::backup(instance, name)
    }
    fn sort_key(&self) -> (&str, &str) {
        (&self.created_at, &self.name)
    }
}

/// Every record in `dir`, oldest first.
async fn read_records<T: Record>(dir: &Path) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return out;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json")
            && let Ok(raw) = tokio::fs::read(&p).await
            && let Ok(r) = serde_json::from_slice(&raw)
        {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    out
}

/// The record `name` of `instance` in `dir`, or 404.
async fn read_record<T: Record>(dir: &Path, instance: &str, name: &str) -> Result<T, BackendError> {
    let raw = tokio::fs::read(dir.join(format!("{name}.json")))
        .await
        .map_err(|_| BackendError::NotFound(T::missing(instance, name)))?;
    serde_json::from_slice(&raw).map_err(|e| BackendError::Internal(e.into()))
}

/// Written whole or not at all (a temporary file renamed over): a kill or
/// a full disk never leaves half a record, which `recovery` would take for
/// a made snapshot.
async fn write_record<T: Serialize>(path: &Path, r: &T) -> Result<(), BackendError> {
    let raw = serde_json::to_vec_pretty(r).map_err(|e| BackendError::Internal(e.into()))?;
    let partial = path.with_extension("json.partial");
    let written = async {
        let mut f = tokio::fs::File::create(&partial).await?;
        tokio::io::AsyncWriteExt::write_all(&mut f, &raw).await?;
        f.sync_all().await?;
        tokio::fs::rename(&partial, path).await
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    written.map_err(io("writing a record"))
}

fn to_snapshot(r: SnapshotRecord, size: i64) -> Snapshot {
    Snapshot {
        name: r.name,
        architecture: r.architecture,
        created_at: r.created_at,
        expires_at: r.expires_at,
        last_used_at: NEVER.into(),
        profiles: r.profiles,
        expanded_config: r.config.clone(),
        config: r.config,
        expanded_devices: r.devices.clone(),
        devices: r.devices,
        size,
        ..Default::default()
    }
}

fn to_backup(r: BackupRecord) -> Backup {
    Backup {
        name: r.name,
        created_at: r.created_at,
        expires_at: r.expires_at,
        instance_only: r.instance_only,
        optimized_storage: false,
    }
}

/// Copies the directory `from` to the new directory `to` with `cp -a`
/// (reflinks where the file system has them), as a child process.
///
/// `cp` walks the tree by path, so a directory swapped for a symlink in
/// the middle of the copy would be followed (`-a` only keeps the links it
/// copies from being followed). For an unprivileged container (`map`) it
/// runs as the container's root, inside its user namespace like the
/// unpack: whatever a swap could point it at, it reads and writes with no
/// more rights than the container's root has, and the files keep their
/// mapped owners. The two trees are handed to it as open descriptors
/// (`/proc/self/fd/N`), since the mapped root may not pass through
/// `snapshots/` on its own. A privileged container's root is host root
/// already, so its copy runs as host root; the copies are only made of a
/// frozen or stopped container, or of a snapshot it cannot reach.
async fn copy_tree(from: &Path, to: &Path, map: Option<IdMap>) -> Result<(), BackendError> {
    let Some(map) = map else {
        return run(
            "cp",
            [
                "-a".as_ref(),
                "--reflink=auto".as_ref(),
                "--".as_ref(),
                from.as_os_str(),
                to.as_os_str(),
            ],
            COPY_TIMEOUT,
        )
        .await
        .map(|_| ());
    };
    tokio::fs::create_dir(to).await.map_err(io("copy target"))?;
    let (target, uid, gid) = (to.to_owned(), map.uid_base, map.gid_base);
    tokio::task::spawn_blocking(move || std::os::unix::fs::lchown(&target, Some(uid), Some(gid)))
        .await
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("chown task: {e}")))?
        .map_err(io("giving the copy target to the container's root"))?;
    let open_dir = |p: &Path| {
        let p = p.to_owned();
        async move {
            tokio::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&p)
                .await
                .map(|f| {
                    std::os::fd::OwnedFd::from(f.try_into_std().expect("no operation in flight"))
                })
                .map_err(io("opening a tree to copy"))
        }
    };
    let (src, dst) = (open_dir(from).await?, open_dir(to).await?);
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    let mut cp = tokio::process::Command::new("lxc-usernsexec");
    cp.args(map.usernsexec_args())
        .args(["--", "cp", "-a", "--reflink=auto", "--"])
        .arg(format!("/proc/self/fd/{SRC_FD}/."))
        .arg(format!("/proc/self/fd/{DST_FD}/"))
        .stdin(std::process::Stdio::null());
    // SAFETY: between fork and exec only fcntl and dup2 run, which are
    // async-signal-safe. They put the two descriptors (close-on-exec in
    // lxgate, so no other child inherits them) where cp finds them, by way
    // of copies above both numbers so that neither overwrites the other.
    unsafe {
        cp.pre_exec(move || {
            let mut high = [0; 2];
            for (i, fd) in [src_fd, dst_fd].into_iter().enumerate() {
                high[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, DST_FD + 1);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (fd, at) in [(high[0], SRC_FD), (high[1], DST_FD)] {
                if libc::dup2(fd, at) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let copied = process::run_group(cp, "cp", COPY_TIMEOUT).await;
    drop((src, dst));
    copied
}

/// Where `copy_tree`'s descriptors sit in the copying process.
const SRC_FD: i32 = 100;
const DST_FD: i32 = 101;

/// A directory only root may enter (snapshots and backups hold copies of
/// a container's files: see `lxc::secure_dir`), made if missing.
pub(super) async fn private_dir(dir: &Path) -> Result<(), BackendError> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io("making a private directory"))?;
    let (d, meta) = (
        dir.to_owned(),
        tokio::fs::symlink_metadata(dir)
            .await
            .map_err(io("reading a private directory"))?,
    );
    if !meta.is_dir() {
        return Err(BackendError::Internal(anyhow::anyhow!(
            "{} is not a directory",
            dir.display()
        )));
    }
    tokio::task::spawn_blocking(move || std::os::unix::fs::lchown(&d, Some(0), Some(0)))
        .await
        .map_err(|e| BackendError::Internal(anyhow::anyhow!("chown task: {e}")))?
        .map_err(io("making a directory root's"))?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .await
        .map_err(io("closing a private directory"))
}

fn tar_flag(algorithm: &str) -> Option<(&'static str, &'static str)> {
    Some(match algorithm {
        "none" => ("", "tar"),
        "gzip" => ("--gzip", "tar.gz"),
        "bzip2" => ("--bzip2", "tar.bz2"),
        "xz" => ("--xz", "tar.xz"),
        "lzma" => ("--lzma", "tar.lzma"),
        "zstd" => ("--zstd", "tar.zst"),
        _ => return None,
    })
}

impl EmbeddedBackend {
    fn snap_dir(&self, row: &InstanceRow) -> PathBuf {
        self.instance_dir(row).join("snapshots")
    }

    fn backup_dir(&self, row: &InstanceRow) -> PathBuf {
        self.instance_dir(row).join("backups")
    }

    async fn snapshot_record(
        &self,
        row: &InstanceRow,
        snap: &str,
    ) -> Result<SnapshotRecord, BackendError> {
        read_record(&self.snap_dir(row), &row.name, snap).await
    }

    /// The instance's snapshots and backups that expire, with when
    /// (`expires_at` as recorded; the never-expiring ones left out).
    pub(super) async fn expiring_of(
        &self,
        row: &InstanceRow,
    ) -> (Vec<(String, String)>, Vec<(String, String)>) {
        let dated = |name: String, at: String| (at != NEVER).then_some((name, at));
        let snaps: Vec<SnapshotRecord> = read_records(&self.snap_dir(row)).await;
        let backups: Vec<BackupRecord> = read_records(&self.backup_dir(row)).await;
        (
            snaps
                .into_iter()
                .filter_map(|r| dated(r.name, r.expires_at))
                .collect(),
            backups
                .into_iter()
                .filter_map(|r| dated(r.name, r.expires_at))
                .collect(),
        )
    }

    /// What an instance copy reads of snapshot `snap` (404 unless it
    /// exists): the devices it recorded (whose NICs' MACs and addresses
    /// are the instance's, not to be handed on) and, for a container, the
    /// copy of its root filesystem. The caller holds the instance's lock.
    pub(super) async fn snapshot_source(
        &self,
        row: &InstanceRow,
        snap: &str,
    ) -> Result<(DevicesMap, PathBuf), BackendError> {
        let record = self.snapshot_record(row, snap).await?;
        Ok((record.devices, self.snap_dir(row).join(snap).join("rootfs")))
    }
}

#[async_trait::async_trait]
impl Snapshots for EmbeddedBackend {
    async fn list_snapshots(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        expand: bool,
    ) -> Result<Listing<Snapshot>, BackendError> {
        let row = self.row(project, name).await?;
        let recs: Vec<SnapshotRecord> = read_records(&self.snap_dir(&row)).await;
        Ok(if expand {
            Listing::Full(recs.into_iter().map(|r| to_snapshot(r, -1)).collect())
        } else {
            Listing::Names(recs.into_iter().map(|r| r.name).collect())
        })
    }

    async fn get_snapshot(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        snap: &SnapshotName,
    ) -> Result<Snapshot, BackendError> {
        let row = self.row(project, name).await?;
        Ok(to_snapshot(self.snapshot_record(&row, snap).await?, -1))
    }

    async fn create_snapshot(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        req: &SnapshotCreate,
    ) -> Result<Operation, BackendError> {
        if req.stateful {
            return Err(BackendError::NotSupported(
                "stateful snapshots (with memory) are not supported by the embedded backend".into(),
            ));
        }
        let row = self.row(project, name).await?;
        let dir = self.snap_dir(&row);
        let existing: Vec<SnapshotRecord> = read_records(&dir).await;
        let snap = match &req.name {
            Some(n) => n.clone(),
            None => (0..)
                .map(|i| format!("snap{i}"))
                .find(|n| existing.iter().all(|r| &r.name != n))
                .expect("a free name"),
        };
        if existing.iter().any(|r| r.name == snap) {
            return Err(BackendError::Conflict(format!(
                "Snapshot \"{snap}\" already exists"
            )));
        }
        let vm = row.instance_type == VM;
        let host = Lxc::host_name(project, name);
        let state = self.driver(&row).info(&host).await.state;
        if vm {
            if !tokio::fs::try_exists(self.instance_dir(&row).join("root.qcow2"))
                .await
                .unwrap_or(false)
            {
                return Err(BackendError::BadRequest(
                    "this VM boots from a kernel and initrd and has no disk to snapshot".into(),
                ));
            }
            if state != "STOPPED" {
                return Err(BackendError::BadRequest(
                    "stop the VM before taking a snapshot of its disk".into(),
                ));
            }
        }
        let guard = self.lock(project, name).lock_owned().await;
        let mut config: ConfigMap = serde_json::from_str(&row.config).unwrap_or_default();
        // As the instance shows it (a container made before ids were mapped
        // has no such key stored), so a restore never asks for a change.
        let map = if vm {
            None
        } else {
            Self::confinement(&row)?.map()
        };
        if !vm && map.is_none() {
            config.insert("security.privileged".into(), "true".into());
        }
        let record = SnapshotRecord {
            name: snap.clone(),
            created_at: now(),
            expires_at: req.expires_at.clone().unwrap_or_else(|| NEVER.into()),
            config,
            devices: serde_json::from_str(&row.devices).unwrap_or_default(),
            profiles: serde_json::from_str(&row.profiles).unwrap_or_default(),
            architecture: row.architecture.clone(),
        };
        let (idir, driver, bus) = (self.instance_dir(&row), self.driver(&row), self.bus.clone());
        let wake = self.expiry_wake.clone();
        let source = resource_url(project, &format!("instances/{name}/snapshots/{snap}"));
        let project_owned = project.to_owned();
        Ok(self.ops.start(
            project,
            "Snapshotting instance",
            resources("instances", project, &format!("instances/{name}")),
            false,
            move |_ctx| async move {
                let _guard = guard;
                let sdir = idir.join("snapshots");
                private_dir(&sdir).await?;
                if vm {
                    run(
                        "qemu-img",
                        [
                            "snapshot".as_ref(),
                            "-c".as_ref(),
                            snap.as_ref(),
                            idir.join("root.qcow2").as_os_str(),
                        ],
                        COPY_TIMEOUT,
                    )
                    .await?;
                } else {
                    let target = sdir.join(&snap);
                    tokio::fs::create_dir(&target)
                        .await
                        .map_err(io("snapshot dir"))?;
                    private_dir(&target).await?;
                    // A running container is frozen so the copy is consistent.
                    let freeze = state == "RUNNING";
                    if freeze {
                        super::recovery::mark_frozen(&idir).await?;
                        driver.freeze(&host).await?;
                    }
                    let copied = copy_tree(&idir.join("rootfs"), &target.join("rootfs"), map).await;
                    if freeze {
                        let _ = driver.unfreeze(&host).await;
                        super::recovery::unmark_frozen(&idir).await;
                    }
                    if let Err(e) = copied {
                        let _ = tokio::fs::remove_dir_all(&target).await;
                        return Err(e.into());
                    }
                }
                write_record(&sdir.join(format!("{snap}.json")), &record).await?;
                // Something that may expire: the expiry task looks again.
                wake.notify_one();
                lifecycle(
                    &bus,
                    &project_owned,
                    "instance-snapshot-created",
                    &source,
                    json!({}),
                );
                Ok(Value::Null)
            },
        ))
    }

    async fn delete_snapshot(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        snap: &SnapshotName,
    ) -> Result<Operation, BackendError> {
        let row = self.row(project, name).await?;
        let record = self.snapshot_record(&row, snap).await?;
        let vm = row.instance_type == VM;
        // QEMU holds a running VM's disk: its internal snapshots can only
        // be removed while it is stopped (as they are taken and restored).
        if vm && self.info_of(&row).await.state != "STOPPED" {
            return Err(BackendError::Conflict(
                "stop the VM before deleting a snapshot of its disk".into(),
            ));
        }
        let guard = self.lock(project, name).lock_owned().await;
        let (idir, bus) = (self.instance_dir(&row), self.bus.clone());
        let snap = snap.to_owned();
        let source = resource_url(project, &format!("instances/{name}/snapshots/{snap}"));
        let project_owned = project.to_owned();
        Ok(self.ops.start(
            project,
            "Deleting snapshot",
            resources("instances", project, &format!("instances/{name}")),
            false,
            move |_ctx| async move {
                let _guard = guard;
                // The record first: a kill after it leaves data without a
                // record, which a restart removes (`recovery`), never a
                // listed snapshot whose data is gone.
                let record_path = idir.join("snapshots").join(format!("{snap}.json"));
                tokio::fs::remove_file(&record_path)
                    .await
                    .map_err(io("removing the snapshot record"))?;
                if vm {
                    let removed = run(
                        "qemu-img",
                        [
                            "snapshot".as_ref(),
                            "-d".as_ref(),
                            snap.as_ref(),
                            idir.join("root.qcow2").as_os_str(),
                        ],
                        COPY_TIMEOUT,
                    )
                    .await;
                    if let Err(e) = removed {
                        // Still there: so is its record.
                        let _ = write_record(&record_path, &record).await;
                        return Err(e.into());
                    }
                } else {
                    let _ =
                        tokio::fs::remove_dir_all(idir.join("snapshots").join(snap.as_str())).await;
                }
                lifecycle(
                    &bus,
                    &project_owned,
                    "instance-snapshot-deleted",
                    &source,
                    json!({}),
                );
                Ok(Value::Null)
            },
        ))
    }

    /// Puts the instance back to the snapshot. A running container is
    /// stopped for it and started again; a VM must be stopped.
    async fn restore_snapshot(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        snap: &SnapshotName,
        stateful: bool,
    ) -> Result<Operation, BackendError> {
        if stateful {
            return Err(BackendError::NotSupported(
                "stateful snapshots are not supported by the embedded backend".into(),
            ));
        }
        let row = self.row(project, name).await?;
        let record = self.snapshot_record(&row, snap).await?;
        let vm = row.instance_type == VM;
        let host = Lxc::host_name(project, name);
        let driver = self.driver(&row);
        let state = driver.info(&host).await.state;
        if vm && state != "STOPPED" {
            return Err(BackendError::BadRequest(
                "stop the VM before restoring a snapshot".into(),
            ));
        }
        let guard = self.lock(project, name).lock_owned().await;
        // Read again under the lock (a change may have held it meanwhile).
        let row = self.row(project, name).await?;
        let state = driver.info(&host).await.state;
        if vm && state != "STOPPED" {
            return Err(BackendError::BadRequest(
                "stop the VM before restoring a snapshot".into(),
            ));
        }
        // NICs stay as they are now: their addresses are live assignments
        // that may have gone to other instances since the snapshot.
        let current: DevicesMap = serde_json::from_str(&row.devices).unwrap_or_default();
        let mut devices: DevicesMap = record
            .devices
            .clone()
            .into_iter()
            .filter(|(_, d)| nic_network(d).is_none())
            .collect();
        devices.extend(
            current
                .into_iter()
                .filter(|(_, d)| nic_network(d).is_some()),
        );
        let attached = self.attachments(project, &host, &devices, vm).await?;
        if state == "RUNNING" || state == "FROZEN" {
            // It is started again afterwards.
            self.ensure_bridges(&attached.nics).await?;
        }
        let confinement = Self::confinement(&row)?;
        // Its profiles go back too: the ones it had then, as they are now
        // (one deleted or renamed since is a 404; a rename does not reach
        // snapshots).
        let known = self.profiles_of(project).await?;
        profiles::check_list(&known, &record.profiles)?;
        let (now, _) = expand(
            profiles::in_order(&known, &profiles::names_of(&row)),
            &own_config(&row),
            &DevicesMap::new(),
        );
        let (expanded, _) = profiles::runnable(
            &row.instance_type,
            &profiles::in_order(&known, &record.profiles),
            &user_config(record.config.clone()),
            &devices,
            Some((&confinement, profiles::isolated(&now))),
        )?;
        let driver_config = user_config(expanded);
        let (idir, bus, pool) = (self.instance_dir(&row), self.bus.clone(), self.pool.clone());
        let lxc = self.lxc.clone();
        let snap = snap.to_owned();
        let source = resource_url(project, &format!("instances/{name}"));
        let mut row = row.clone();
        Ok(self.ops.start(
            project,
            "Restoring snapshot",
            resources("instances", project, &format!("instances/{name}")),
            false,
            move |_ctx| async move {
                let _guard = guard;
                if vm {
                    run(
                        "qemu-img",
                        [
                            "snapshot".as_ref(),
                            "-a".as_ref(),
                            snap.as_ref(),
                            idir.join("root.qcow2").as_os_str(),
                        ],
                        COPY_TIMEOUT,
                    )
                    .await?;
                } else {
                    let was_running = state == "RUNNING" || state == "FROZEN";
                    if state == "FROZEN" {
                        driver.unfreeze(&host).await?;
                    }
                    if was_running {
                        driver.stop(&host, 30, false).await?;
                    }
                    // Copy first, swap after: a failed copy changes nothing.
                    let fresh = idir.join("rootfs.restoring");
                    let _ = tokio::fs::remove_dir_all(&fresh).await;
                    if let Err(e) = copy_tree(
                        &idir.join("snapshots").join(snap.as_str()).join("rootfs"),
                        &fresh,
                        confinement.map(),
                    )
                    .await
                    {
                        let _ = tokio::fs::remove_dir_all(&fresh).await;
                        return Err(e.into());
                    }
                    let old = idir.join("rootfs.old");
                    tokio::fs::rename(idir.join("rootfs"), &old)
                        .await
                        .map_err(io("moving the rootfs aside"))?;
                    tokio::fs::rename(&fresh, idir.join("rootfs"))
                        .await
                        .map_err(io("putting the snapshot in place"))?;
                    let _ = tokio::fs::remove_dir_all(&old).await;
                    // The snapshot's limits and volumes, with today's NICs.
                    lxc.write_config(&host, &row.name, &driver_config, &attached, &confinement)
                        .await?;
                    if was_running {
                        driver.start(&host, &driver_config, &attached).await?;
                    }
                }
                // The configuration goes back too.
                row.config = serde_json::to_string(&record.config).unwrap_or_else(|_| "{}".into());
                row.profiles =
                    serde_json::to_string(&record.profiles).unwrap_or_else(|_| "[]".into());
                row.devices = serde_json::to_string(&devices).unwrap_or_else(|_| "{}".into());
                let _ = crate::db::embedded::update_instance(&pool, &row).await;
                lifecycle(
                    &bus,
                    &row.project,
                    "instance-restored",
                    &source,
                    json!({"snapshot": snap}),
                );
                Ok(Value::Null)
            },
        ))
    }
}

impl EmbeddedBackend {
    // ------------------------------------------------------------ backups ---

    async fn backup_record(
        &self,
        row: &InstanceRow,
        b: &str,
    ) -> Result<BackupRecord, BackendError> {
        read_record(&self.backup_dir(row), &row.name, b).await
    }
}

#[async_trait::async_trait]
impl Backups for EmbeddedBackend {
    async fn list_backups(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        expand: bool,
    ) -> Result<Listing<Backup>, BackendError> {
        let row = self.row(project, name).await?;
        let recs: Vec<BackupRecord> = read_records(&self.backup_dir(&row)).await;
        Ok(if expand {
            Listing::Full(recs.into_iter().map(to_backup).collect())
        } else {
            Listing::Names(recs.into_iter().map(|r| r.name).collect())
        })
    }

    async fn get_backup(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        b: &BackupName,
    ) -> Result<Backup, BackendError> {
        let row = self.row(project, name).await?;
        Ok(to_backup(self.backup_record(&row, b).await?))
    }

    async fn create_backup(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        req: &BackupCreate,
    ) -> Result<Operation, BackendError> {
        if req.optimized_storage {
            return Err(BackendError::NotSupported(
                "optimized (driver-specific) backups are not supported by the embedded backend"
                    .into(),
            ));
        }
        let algorithm = req.compression_algorithm.as_deref().unwrap_or("gzip");
        let (flag, ext) = tar_flag(algorithm).ok_or_else(|| {
            BackendError::NotSupported(format!(
                "compression {algorithm} is not available on the embedded backend"
            ))
        })?;
        let row = self.row(project, name).await?;
        let dir = self.backup_dir(&row);
        let existing: Vec<BackupRecord> = read_records(&dir).await;
        let b = match &req.name {
            Some(n) => n.clone(),
            None => (0..)
                .map(|i| format!("backup{i}"))
                .find(|n| existing.iter().all(|r| &r.name != n))
                .expect("a free name"),
        };
        if existing.iter().any(|r| r.name == b) {
            return Err(BackendError::Conflict(format!(
                "Backup \"{b}\" already exists"
            )));
        }
        let guard = self.lock(project, name).lock_owned().await;
        let record = BackupRecord {
            name: b.clone(),
            created_at: now(),
            expires_at: req.expires_at.clone().unwrap_or_else(|| NEVER.into()),
            instance_only: req.instance_only,
            file: format!("{b}.{ext}"),
        };
        let (idir, bus) = (self.instance_dir(&row), self.bus.clone());
        let wake = self.expiry_wake.clone();
        let source = resource_url(project, &format!("instances/{name}/backups/{b}"));
        let project_owned = project.to_owned();
        Ok(self.ops.start(
            project,
            "Backing up instance",
            resources("instances", project, &format!("instances/{name}")),
            false,
            move |_ctx| async move {
                let _guard = guard;
                let bdir = idir.join("backups");
                private_dir(&bdir).await?;
                let file = bdir.join(&record.file);
                // Made 0600 before tar writes into it (tar keeps the mode of
                // a file that exists): it holds the container's secrets.
                tokio::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&file)
                    .await
                    .map_err(io("creating the backup file"))?;
                tokio::fs::set_permissions(
                    &file,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .await
                .map_err(io("closing the backup file"))?;
                let mut args: Vec<std::ffi::OsString> = vec!["--create".into()];
                if !flag.is_empty() {
                    args.push(flag.into());
                }
                args.extend([
                    "--file".into(),
                    file.clone().into(),
                    "--directory".into(),
                    idir.clone().into(),
                    "--numeric-owner".into(),
                    "--exclude=./backups".into(),
                    // Live sockets and pidfiles of a running VM are not data.
                    "--exclude=./*.sock".into(),
                    "--exclude=./qemu.pid".into(),
                ]);
                if record.instance_only {
                    args.push("--exclude=./snapshots".into());
                }
                args.push(".".into());
                // As host root over a live tree, which is safe: GNU tar
                // walks it by descriptor (openat with O_NOFOLLOW, no `-h`),
                // so a directory the container swaps for a symlink mid-way
                // is archived as that symlink, never followed out of the
                // container; and what it writes goes to the file above only.
                if let Err(e) = run("tar", args, COPY_TIMEOUT).await {
                    let _ = tokio::fs::remove_file(&file).await;
                    return Err(OpError::from(e));
                }
                write_record(&bdir.join(format!("{}.json", record.name)), &record).await?;
                wake.notify_one();
                lifecycle(
                    &bus,
                    &project_owned,
                    "instance-backup-created",
                    &source,
                    json!({}),
                );
                Ok(Value::Null)
            },
        ))
    }

    async fn delete_backup(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        b: &BackupName,
    ) -> Result<Operation, BackendError> {
        let row = self.row(project, name).await?;
        let record = self.backup_record(&row, b).await?;
        let bdir = self.backup_dir(&row);
        let bus = self.bus.clone();
        let source = resource_url(project, &format!("instances/{name}/backups/{b}"));
        let project_owned = project.to_owned();
        Ok(self.ops.start(
            project,
            "Deleting backup",
            resources("instances", project, &format!("instances/{name}")),
            false,
            move |_ctx| async move {
                let _ = tokio::fs::remove_file(bdir.join(&record.file)).await;
                tokio::fs::remove_file(bdir.join(format!("{}.json", record.name)))
                    .await
                    .map_err(io("removing the backup record"))?;
                lifecycle(
                    &bus,
                    &project_owned,
                    "instance-backup-deleted",
                    &source,
                    json!({}),
                );
                Ok(Value::Null)
            },
        ))
    }

    async fn export_backup(
        &self,
        project: &ProjectName,
        name: &InstanceName,
        b: &BackupName,
    ) -> Result<Download, BackendError> {
        let row = self.row(project, name).await?;
        let record = self.backup_record(&row, b).await?;
        download_file(
            &self.backup_dir(&row).join(&record.file),
            "application/octet-stream",
            || Missing::backup(name, b),
        )
        .await
    }
}
