//! Storage on the embedded backend: `dir` pools (a directory each: the
//! implicit `default` under `DATA_DIR/storage/default`, others under
//! `DATA_DIR/storage/<name>` or an absolute `source`), and custom volumes in
//! them: directories (`filesystem`, bind-mounted into containers) or qcow2
//! disks (`block`, attached to VMs as virtio disks).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::EmbeddedBackend;
use super::driver_types::VM;
use super::idmap::{self, IdMap, lxgate_ids};
use super::inventory::db;
use super::limits::parse_size;
use super::lxc::{Confinement, Lxc};
use super::operations::{OpError, lifecycle, now, resource_url};
use super::process::{read_tail, run};
use super::resources;
use crate::backend::types::{
    ConfigMap, DevicesMap, Operation, StoragePool, StoragePoolCreate, StoragePoolUpdate,
    StorageVolume, StorageVolumeCreate, StorageVolumeUpdate, VolumeCopy,
};
use crate::backend::{BackendError, Listing, Missing, Storage};
use crate::db::embedded::{self as inv, PoolRow, VolumeRow};
use crate::names::{MemberName, PoolName, ProjectName, VolumeName};

pub const DEFAULT_POOL: &str = "default";
/// Size of a block volume created without `size`.
const DEFAULT_BLOCK_SIZE: &str = "1GiB";

/// How long `setfacl` on one directory may take.
const SETFACL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long copying one volume's data (a snapshot, a restore, a copy) may take.
const VOLUME_COPY_TIMEOUT: Duration = Duration::from_secs(3600);

fn io(what: &'static str) -> impl Fn(std::io::Error) -> BackendError {
    move |e| BackendError::Internal(anyhow::anyhow!("{what}: {e}"))
}

/// Whether `close_custom_dir` adds its grants to those already there or
/// makes them the only ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grants {
    /// While lxgate serves: never takes a grant away from a container
    /// being set up at the same moment.
    Add,
    /// At lxgate's start: grants of maps that no longer mount volumes
    /// from the pool (deleted or detached isolated containers) go.
    Exactly,
}

/// Who may enter a pool's volumes (`<pool>/custom/`).
///
/// A filesystem volume is bind-mounted into containers, so it holds
/// whatever a tenant's root put there, setuid binaries included, owned by
/// the mapped root (host uid 1000000 for every container on the shared
/// map): as for a container's rootfs (`lxc::secure_dir`), no other host
/// user may reach it. The volume's own directory cannot be the barrier, as
/// a container's directory is for its rootfs: it is the container's mount
/// point, its root owns it and may chmod it to anything. So the barrier is
/// `custom/`, which no tenant can touch: root's, mode 0700, with a
/// search-only ACL entry (`u:<uid>:x`) for the mapped root of each
/// container map that mounts volumes from the pool. LXC sets a container's
/// mounts up as that uid, so it must pass through; it still cannot list
/// `custom/`. Privileged containers and QEMU open volumes as root (QEMU
/// before it drops to its own user), so they need no entry. The entries
/// go in one `setfacl` call, which rewrites mode and ACL in one step: a
/// container starting meanwhile never finds its entry masked off (as a
/// chmod followed by setfacl would leave it for a moment).
///
/// `setfacl` (Debian's `acl` package, which scripts/host-setup.sh installs)
/// rather than an xattr crate: the ACL's binary layout stays its business.
/// It follows a symbolic link it is handed, so `dir` is checked to be a
/// directory first; it is made by lxgate in a pool directory only root
/// may write to, so nobody can swap it afterwards.
async fn close_custom_dir(
    dir: &Path,
    uids: &BTreeSet<u32>,
    grants: Grants,
) -> Result<(), BackendError> {
    let d = dir.to_owned();
    let empty = uids.is_empty();
    tokio::task::spawn_blocking(move || {
        if !std::fs::symlink_metadata(&d)?.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                d.display()
            )));
        }
        let (uid, gid) = lxgate_ids();
        std::os::unix::fs::lchown(&d, Some(uid), Some(gid))?;
        if empty {
            // No map to let through (a host without subordinate ids). A
            // stale entry is masked off by the mode (the mask is the group
            // bits), so this needs no setfacl.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| BackendError::Internal(anyhow::anyhow!("permissions task: {e}")))?
    .map_err(io("closing the pool's custom/ directory"))?;
    if empty {
        return Ok(());
    }
    let mut spec = String::from("u::rwx,g::---,o::---");
    for uid in uids {
        let _ = write!(spec, ",u:{uid}:x");
    }
    let flag = match grants {
        Grants::Add => "-m",
        Grants::Exactly => {
            spec.push_str(",m::x");
            "--set"
        }
    };
    run(
        "setfacl",
        [flag.as_ref(), spec.as_ref(), "--".as_ref(), dir.as_os_str()],
        SETFACL_TIMEOUT,
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        BackendError::Internal(anyhow::anyhow!(
            "letting container roots through {} ({e}; setfacl is in the acl package, which scripts/host-setup.sh installs)",
            dir.display()
        ))
    })
}

/// A block volume (qcow2) or any other file in `custom/`: lxgate's, 0600.
/// Only root-run tools open it (qemu-img, QEMU before it drops to its
/// user); the mapped roots that may pass through `custom/` must not read
/// another tenant's disk. Not followed if it is a link.
fn close_block_volume(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !std::fs::symlink_metadata(path)?.is_file() {
        return Ok(());
    }
    let (uid, gid) = lxgate_ids();
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// A pool's `source`: an absolute, plain path (it ends up in LXC mount
/// entries and QEMU options).
fn check_source(source: &str) -> Result<(), BackendError> {
    let p = Path::new(source);
    let plain = source
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
    if !p.is_absolute() || !plain || p.components().any(|c| c.as_os_str() == "..") {
        return Err(BackendError::BadRequest(
            "source must be an absolute path of letters, digits, '/', '.', '_' and '-'".into(),
        ));
    }
    for banned in ["/proc", "/sys", "/dev", "/etc", "/boot", "/run"] {
        if p.starts_with(banned) || p == Path::new("/") {
            return Err(BackendError::BadRequest(format!(
                "source {source} is a system path"
            )));
        }
    }
    Ok(())
}

/// Volume `name` is not in pool `pool` (which exists).
fn no_volume(pool: &str, name: &str) -> BackendError {
    BackendError::NotFound(Missing::Volume {
        pool: pool.to_owned(),
        name: name.to_owned(),
        reason: "Storage volume not found".into(),
    })
}

/// Volume `volume` (which exists) has no snapshot `name`.
pub(super) fn no_snapshot(pool: &str, volume: &str, name: &str) -> BackendError {
    BackendError::NotFound(Missing::VolumeSnapshot {
        pool: pool.to_owned(),
        volume: volume.to_owned(),
        name: name.to_owned(),
        reason: "Storage volume snapshot not found".into(),
    })
}

/// A snapshot's data in its volume's snapshot directory (see
/// `volume_snapshot_dir`): a directory, or a qcow2 file for a block volume.
pub(super) fn snapshot_data(dir: &Path, snap: &str, content: &str) -> PathBuf {
    if content == "block" {
        dir.join(format!("{snap}.qcow2"))
    } else {
        dir.join(snap)
    }
}

fn pool_etag(p: &StoragePool) -> String {
    hex::encode(Sha256::digest(json!([p.description, p.config]).to_string()))
}

fn volume_etag(v: &StorageVolume) -> String {
    hex::encode(Sha256::digest(json!([v.description, v.config]).to_string()))
}

/// The shared map's root (host uid), if the host has a range to map.
async fn shared_uid() -> Option<u32> {
    idmap::host_range().await.ok().map(|r| r.shared().uid_base)
}

/// A disk device that names a custom volume.
pub fn volume_device(d: &std::collections::BTreeMap<String, String>) -> Option<(&str, &str)> {
    if d.get("type").map(String::as_str) != Some("disk") || d.get("path").is_some_and(|p| p == "/")
    {
        return None;
    }
    Some((d.get("pool")?.as_str(), d.get("source")?.as_str()))
}

/// A volume's config as the dir driver takes it (create and copy): `size`
/// only on a block volume (a directory cannot be held to one), `user.*`.
fn check_volume_config(content: &str, config: &ConfigMap) -> Result<(), BackendError> {
    for (k, v) in config {
        match k.as_str() {
            "size" if content == "block" => {
                parse_size(v)
                    .ok_or_else(|| BackendError::BadRequest(format!("invalid size {v:?}")))?;
            }
            "size" => {
                return Err(BackendError::NotSupported(
                    "the dir driver cannot enforce the size of a filesystem volume".into(),
                ));
            }
            k if k.starts_with("user.") => {}
            _ => {
                return Err(BackendError::BadRequest(format!(
                    "Unknown storage volume configuration key: {k}"
                )));
            }
        }
    }
    Ok(())
}

/// Copies a volume's data from `from` to the new `to`: a block volume's
/// qcow2 file with `cp` (sparse, reflinked where the file system can),
/// then closed like every block volume; a filesystem volume's tree with
/// `tar_copy`.
pub(super) async fn copy_volume_data(
    from: &Path,
    to: &Path,
    content: &str,
) -> Result<(), BackendError> {
    if content == "block" {
        run(
            "cp",
            [
                "--sparse=always".as_ref(),
                "--reflink=auto".as_ref(),
                "--".as_ref(),
                from.as_os_str(),
                to.as_os_str(),
            ],
            VOLUME_COPY_TIMEOUT,
        )
        .await?;
        let disk = to.to_owned();
        return tokio::task::spawn_blocking(move || close_block_volume(&disk))
            .await
            .map_err(|e| BackendError::Internal(anyhow::anyhow!("volume task: {e}")))?
            .map_err(io("closing the block volume"));
    }
    tokio::fs::create_dir(to)
        .await
        .map_err(io("creating the copy's directory"))?;
    tar_copy(from, to).await
}

/// Copies the tree `from` into the existing, empty directory `to`, owners,
/// modes, ACLs and xattrs kept: `tar --create` piped into `tar --extract`,
/// both as host root.
///
/// As host root over a tree a tenant controls, and possibly live (a running
/// container's volume), which is safe the way the backups' tar is: GNU tar
/// creates by walking the tree by descriptor (openat with O_NOFOLLOW, no
/// `-h`), so a directory swapped for a symlink mid-way is archived as that
/// symlink and never followed out of the volume; `--one-file-system` keeps
/// it off anything mounted inside. The archive it extracts comes from that
/// walk (no `..`, no absolute names), into a directory only lxgate has
/// made, and GNU tar extracts symlinks last, so no member is written
/// through one. Unlike `cp -a` in the container's user namespace (instance
/// snapshots), it needs no id map: a volume can be shared by containers
/// with different maps, and its files keep whatever host ids they have.
async fn tar_copy(from: &Path, to: &Path) -> Result<(), BackendError> {
    use std::process::Stdio;
    let mut create = tokio::process::Command::new("tar");
    create
        .args([
            "--create",
            "--file=-",
            "--numeric-owner",
            "--acls",
            "--xattrs",
            "--xattrs-include=*",
            "--sparse",
            "--one-file-system",
            "--directory",
        ])
        .arg(from)
        .arg(".")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut reader = create.spawn().map_err(io("running tar"))?;
    let pipe: Stdio = reader
        .stdout
        .take()
        .expect("stdout is piped")
        .try_into()
        .map_err(io("piping tar"))?;
    let mut extract = tokio::process::Command::new("tar");
    extract
        .args([
            "--extract",
            "--file=-",
            "--numeric-owner",
            "--same-owner",
            "--preserve-permissions",
            "--acls",
            "--xattrs",
            "--xattrs-include=*",
            "--directory",
        ])
        .arg(to)
        .stdin(pipe)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut writer = extract.spawn().map_err(io("running tar"))?;
    let (reader_err, writer_err) = (reader.stderr.take(), writer.stderr.take());
    let tail = |e: Option<tokio::process::ChildStderr>| async move {
        match e {
            Some(e) => read_tail(e).await,
            None => String::new(),
        }
    };
    // Both ends are killed (kill_on_drop) if the time runs out.
    let (created, extracted, created_err, extracted_err) =
        tokio::time::timeout(VOLUME_COPY_TIMEOUT, async {
            tokio::join!(
                reader.wait(),
                writer.wait(),
                tail(reader_err),
                tail(writer_err)
            )
        })
        .await
        .map_err(|_| {
            BackendError::Timeout(format!(
                "copying a volume did not finish within {}s",
                VOLUME_COPY_TIMEOUT.as_secs()
            ))
        })?;
    let (created, extracted) = (
        created.map_err(io("waiting for tar"))?,
        extracted.map_err(io("waiting for tar"))?,
    );
    // Exit 1 of `tar --create` is "a file changed as it was read": what a
    // copy of a volume in use gets, as consistent as Incus's of a `dir`
    // volume in use.
    if !(created.success() || created.code() == Some(1)) {
        return Err(BackendError::Internal(anyhow::anyhow!(
            "reading the volume failed ({created}): {created_err}"
        )));
    }
    if !extracted.success() {
        return Err(BackendError::Internal(anyhow::anyhow!(
            "writing the copy failed ({extracted}): {extracted_err}"
        )));
    }
    Ok(())
}

/// Removes a volume's (or a snapshot's) data, whichever it is; missing is
/// fine.
pub(super) async fn remove_volume_data(path: &Path) -> Result<(), BackendError> {
    let removed = match tokio::fs::symlink_metadata(path).await {
        Ok(m) if m.is_dir() => tokio::fs::remove_dir_all(path).await,
        Ok(_) => tokio::fs::remove_file(path).await,
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing volume data")(e)),
        _ => Ok(()),
    }
}

impl EmbeddedBackend {
    fn storage_root(&self) -> PathBuf {
        self.data_dir.join("storage")
    }

    pub(super) async fn pool_row(&self, name: &str) -> Result<PoolRow, BackendError> {
        if name == DEFAULT_POOL {
            return Ok(PoolRow {
                name: DEFAULT_POOL.into(),
                driver: "dir".into(),
                description: "Default lxgate storage pool".into(),
                config: "{}".into(),
                created_at: String::new(),
            });
        }
        inv::get_pool(&self.pool, name)
            .await
            .map_err(db)?
            .ok_or_else(|| BackendError::NotFound(Missing::pool(name)))
    }

    pub(super) fn pool_dir(&self, row: &PoolRow) -> PathBuf {
        let config: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&row.config).unwrap_or_default();
        match config.get("source") {
            Some(s) => PathBuf::from(s),
            None => self.storage_root().join(&row.name),
        }
    }

    /// Where a volume's data lives on the host.
    pub(super) async fn volume_path(
        &self,
        pool: &str,
        project: &str,
        name: &str,
    ) -> Result<(PathBuf, String), BackendError> {
        let prow = self.pool_row(pool).await?;
        let v = inv::get_volume(&self.pool, pool, project, name)
            .await
            .map_err(db)?
            .ok_or_else(|| no_volume(pool, name))?;
        let base = self
            .pool_dir(&prow)
            .join("custom")
            .join(format!("{project}_{name}"));
        Ok(if v.content_type == "block" {
            (base.with_extension("qcow2"), v.content_type)
        } else {
            (base, v.content_type)
        })
    }

    /// Where the snapshots of a volume live: `custom-snapshots/<project>_<volume>`
    /// in its pool, out of every container's reach.
    pub(super) async fn volume_snapshot_dir(
        &self,
        pool: &str,
        project: &str,
        volume: &str,
    ) -> Result<PathBuf, BackendError> {
        let prow = self.pool_row(pool).await?;
        Ok(self
            .pool_dir(&prow)
            .join("custom-snapshots")
            .join(format!("{project}_{volume}")))
    }

    /// The instances of `project` running (or frozen) with the volume
    /// attached: a restore would pull its data from under them, a copy of a
    /// block volume would read a disk QEMU is writing.
    /// The locks of the custom volumes `devices` name, taken in order (two
    /// starts sharing volumes cannot wait on each other): a start must not
    /// mount a volume while a restore swaps its data or a snapshot or copy
    /// reads it. Those re-check the volume's running users under the lock.
    pub(super) async fn lock_attached_volumes(
        &self,
        project: &str,
        devices: &DevicesMap,
    ) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let volumes: std::collections::BTreeSet<(String, String)> = devices
            .values()
            .filter_map(volume_device)
            .map(|(p, s)| (p.to_owned(), s.to_owned()))
            .collect();
        let mut guards = Vec::with_capacity(volumes.len());
        for (pool, volume) in volumes {
            guards.push(self.volume_lock(&pool, project, &volume).lock_owned().await);
        }
        guards
    }

    pub(super) async fn volume_running_users(
        &self,
        pool: &str,
        project: &str,
        name: &str,
    ) -> Result<Vec<String>, BackendError> {
        let rows = inv::list_instances(&self.pool, Some(project))
            .await
            .map_err(db)?;
        let mut out = Vec::new();
        for r in rows {
            let devices: DevicesMap = serde_json::from_str(&r.devices).unwrap_or_default();
            if !devices
                .values()
                .filter_map(volume_device)
                .any(|(p, s)| p == pool && s == name)
            {
                continue;
            }
            let state = self
                .driver(&r)
                .info(&Lxc::host_name(&r.project, &r.name))
                .await
                .state;
            if state == "RUNNING" || state == "FROZEN" {
                out.push(r.name);
            }
        }
        Ok(out)
    }

    /// A pool's `custom/`, made if need be and closed (`close_custom_dir`),
    /// with the shared map's root let through.
    async fn custom_dir(&self, prow: &PoolRow) -> Result<PathBuf, BackendError> {
        let dir = self.pool_dir(prow).join("custom");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io("creating the pool directory"))?;
        close_custom_dir(&dir, &shared_uid().await.into_iter().collect(), Grants::Add).await?;
        Ok(dir)
    }

    /// Lets a container map's root through to the pools of the volumes it
    /// mounts (see `close_custom_dir`): on attach and before every start,
    /// so a grant dropped meanwhile (lxgate restarted while the volume was
    /// detached) is back when LXC needs it.
    pub(super) async fn let_through_to_volumes(
        &self,
        mounts: &[(PathBuf, String)],
        map: &IdMap,
    ) -> Result<(), BackendError> {
        let dirs: BTreeSet<&Path> = mounts.iter().filter_map(|(p, _)| p.parent()).collect();
        let mut uids: BTreeSet<u32> = shared_uid().await.into_iter().collect();
        uids.insert(map.uid_base);
        for dir in dirs {
            close_custom_dir(dir, &uids, Grants::Add).await?;
        }
        Ok(())
    }

    /// At startup: every pool's `custom/` closed, with grants for exactly
    /// the shared map and the maps of unprivileged containers that have a
    /// volume of the pool, and block volumes 0600 (pools and volumes made
    /// by lxgate versions that left them open included). Idempotent.
    pub(super) async fn secure_volumes(&self) {
        let mut pools = match self.pool_row(DEFAULT_POOL).await {
            Ok(p) => vec![p],
            Err(_) => return,
        };
        pools.extend(inv::list_pools(&self.pool).await.unwrap_or_default());
        let instances = inv::list_instances(&self.pool, None)
            .await
            .unwrap_or_default();
        let shared = shared_uid().await;
        for prow in pools {
            let dir = self.pool_dir(&prow).join("custom");
            if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
                continue;
            }
            let mut uids: BTreeSet<u32> = shared.into_iter().collect();
            for r in instances.iter().filter(|r| r.instance_type != VM) {
                let Ok(Confinement::Unprivileged(map)) = Self::confinement(r) else {
                    continue;
                };
                let devices: DevicesMap = serde_json::from_str(&r.devices).unwrap_or_default();
                if devices
                    .values()
                    .filter_map(volume_device)
                    .any(|(p, _)| p == prow.name)
                {
                    uids.insert(map.uid_base);
                }
            }
            if let Err(e) = close_custom_dir(&dir, &uids, Grants::Exactly).await {
                tracing::warn!(pool = %prow.name, error = %e, "cannot close the pool's volumes");
                continue;
            }
            let files = dir.clone();
            let closed = tokio::task::spawn_blocking(move || {
                // Filesystem volumes are directories, the tenant's to
                // arrange; every plain file here is a block volume.
                for e in std::fs::read_dir(&files)?.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_file()) {
                        close_block_volume(&e.path())?;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(closed, Ok(Ok(()))) {
                tracing::warn!(pool = %prow.name, "cannot close the pool's block volumes");
            }
        }
    }

    async fn volume_used_by(&self, pool: &str, project: &str, name: &str) -> Vec<String> {
        let rows = inv::list_instances(&self.pool, Some(project))
            .await
            .unwrap_or_default();
        rows.into_iter()
            .filter(|r| {
                let devices: DevicesMap = serde_json::from_str(&r.devices).unwrap_or_default();
                devices
                    .values()
                    .filter_map(volume_device)
                    .any(|(p, s)| p == pool && s == name)
            })
            .map(|r| resource_url(project, &format!("instances/{}", r.name)))
            .collect()
    }

    async fn to_pool(&self, row: &PoolRow) -> Result<StoragePool, BackendError> {
        let mut config: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&row.config).unwrap_or_default();
        config
            .entry("source".into())
            .or_insert_with(|| self.pool_dir(row).display().to_string());
        let used_by = inv::list_volumes(&self.pool, &row.name, None)
            .await
            .map_err(db)?
            .into_iter()
            .map(|v| {
                resource_url(
                    &v.project,
                    &format!("storage-pools/{}/volumes/custom/{}", row.name, v.name),
                )
            })
            .collect();
        Ok(StoragePool {
            name: row.name.clone(),
            description: row.description.clone(),
            driver: row.driver.clone(),
            status: "Created".into(),
            config,
            used_by,
            locations: vec![super::host::member_name().into()],
        })
    }

    async fn to_volume(&self, row: &VolumeRow) -> StorageVolume {
        StorageVolume {
            name: row.name.clone(),
            description: row.description.clone(),
            volume_type: "custom".into(),
            content_type: row.content_type.clone(),
            config: serde_json::from_str(&row.config).unwrap_or_default(),
            used_by: self
                .volume_used_by(&row.pool, &row.project, &row.name)
                .await,
            location: super::host::member_name().into(),
            project: row.project.clone(),
            created_at: row.created_at.clone(),
        }
    }
}

#[async_trait::async_trait]
impl Storage for EmbeddedBackend {
    async fn list_storage_pools(&self, expand: bool) -> Result<Listing<StoragePool>, BackendError> {
        let mut rows = vec![self.pool_row(DEFAULT_POOL).await?];
        rows.extend(inv::list_pools(&self.pool).await.map_err(db)?);
        if !expand {
            return Ok(Listing::Names(rows.into_iter().map(|r| r.name).collect()));
        }
        let mut out = Vec::new();
        for r in &rows {
            out.push(self.to_pool(r).await?);
        }
        Ok(Listing::Full(out))
    }

    async fn get_storage_pool(
        &self,
        name: &PoolName,
    ) -> Result<(StoragePool, Option<String>), BackendError> {
        let p = self.to_pool(&self.pool_row(name).await?).await?;
        let tag = pool_etag(&p);
        Ok((p, Some(tag)))
    }

    async fn create_storage_pool(&self, req: &StoragePoolCreate) -> Result<(), BackendError> {
        if req.driver != "dir" {
            return Err(BackendError::NotSupported(format!(
                "the embedded backend has the dir storage driver only, not {}",
                req.driver
            )));
        }
        for (k, v) in &req.config {
            match k.as_str() {
                "source" => check_source(v)?,
                k if k.starts_with("user.") => {}
                _ => {
                    return Err(BackendError::BadRequest(format!(
                        "Unknown storage pool configuration key: {k}"
                    )));
                }
            }
        }
        if req.name == DEFAULT_POOL
            || inv::get_pool(&self.pool, &req.name)
                .await
                .map_err(db)?
                .is_some()
        {
            return Err(BackendError::Conflict("Storage pool already exists".into()));
        }
        let row = PoolRow {
            name: req.name.clone(),
            driver: "dir".into(),
            description: req.description.clone(),
            config: serde_json::to_string(&req.config).unwrap_or_else(|_| "{}".into()),
            created_at: now(),
        };
        tokio::fs::create_dir_all(self.pool_dir(&row).join("custom"))
            .await
            .map_err(|e| {
                BackendError::BadRequest(format!("cannot use the pool's directory: {e}"))
            })?;
        // Closed before any volume lands in it.
        self.custom_dir(&row).await?;
        inv::insert_pool(&self.pool, &row)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    BackendError::Conflict("Storage pool already exists".into())
                }
                e => db(e),
            })?;
        lifecycle(
            &self.bus,
            "",
            "storage-pool-created",
            &format!("/1.0/storage-pools/{}", req.name),
            json!({}),
        );
        Ok(())
    }

    async fn update_storage_pool(
        &self,
        name: &PoolName,
        update: &StoragePoolUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<(), BackendError> {
        let mut row = self.pool_row(name).await?;
        if name.as_str() == DEFAULT_POOL {
            return Err(BackendError::NotSupported(
                "the default pool of the embedded backend has no settings to change".into(),
            ));
        }
        let current = self.to_pool(&row).await?;
        if let Some(tag) = if_match
            && tag.trim_matches('"') != pool_etag(&current)
        {
            return Err(BackendError::PreconditionFailed(
                "ETag doesn't match".into(),
            ));
        }
        let old: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&row.config).unwrap_or_default();
        let mut config = if replace {
            old.iter()
                .filter(|(k, _)| *k == "source")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            old.clone()
        };
        if let Some(c) = &update.config {
            for (k, v) in c {
                if k == "source" && old.get("source") != Some(v) {
                    return Err(BackendError::BadRequest(
                        "a pool's source cannot change".into(),
                    ));
                }
                if !k.starts_with("user.") && k != "source" {
                    return Err(BackendError::BadRequest(format!(
                        "Unknown storage pool configuration key: {k}"
                    )));
                }
                config.insert(k.clone(), v.clone());
            }
        }
        row.config = serde_json::to_string(&config).unwrap_or_else(|_| "{}".into());
        if let Some(d) = &update.description {
            row.description = d.clone();
        } else if replace {
            row.description = String::new();
        }
        inv::update_pool(&self.pool, &row).await.map_err(db)
    }

    async fn delete_storage_pool(&self, name: &PoolName) -> Result<(), BackendError> {
        if name.as_str() == DEFAULT_POOL {
            // A conflict with what the pool is (it holds the root disks),
            // not a malformed request.
            return Err(BackendError::Conflict(
                "the default pool cannot be deleted".into(),
            ));
        }
        let row = self.pool_row(name).await?;
        if !inv::list_volumes(&self.pool, name, None)
            .await
            .map_err(db)?
            .is_empty()
        {
            return Err(BackendError::Conflict(
                "The storage pool is currently in use".into(),
            ));
        }
        inv::delete_pool(&self.pool, name).await.map_err(db)?;
        // Only lxgate's own directory goes; a configured source stays.
        let dir = self.pool_dir(&row);
        let _ = tokio::fs::remove_dir(dir.join("custom")).await;
        let _ = tokio::fs::remove_dir(dir.join("custom-snapshots")).await;
        if dir.starts_with(self.storage_root()) {
            let _ = tokio::fs::remove_dir(&dir).await;
        }
        lifecycle(
            &self.bus,
            "",
            "storage-pool-deleted",
            &format!("/1.0/storage-pools/{name}"),
            json!({}),
        );
        Ok(())
    }

    async fn list_volumes(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        expand: bool,
    ) -> Result<Listing<StorageVolume>, BackendError> {
        self.ensure_project(project).await?;
        self.pool_row(pool).await?;
        let rows = inv::list_volumes(&self.pool, pool, Some(project))
            .await
            .map_err(db)?;
        if !expand {
            return Ok(Listing::Names(rows.into_iter().map(|r| r.name).collect()));
        }
        let mut out = Vec::new();
        for r in &rows {
            out.push(self.to_volume(r).await);
        }
        Ok(Listing::Full(out))
    }

    async fn get_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        name: &VolumeName,
    ) -> Result<(StorageVolume, Option<String>), BackendError> {
        self.pool_row(pool).await?;
        let row = inv::get_volume(&self.pool, pool, project, name)
            .await
            .map_err(db)?
            .ok_or_else(|| no_volume(pool, name))?;
        let v = self.to_volume(&row).await;
        let tag = volume_etag(&v);
        Ok((v, Some(tag)))
    }

    /// Done before it returns: no operation.
    async fn create_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        req: &StorageVolumeCreate,
        target: Option<&MemberName>,
    ) -> Result<Option<Operation>, BackendError> {
        super::cluster::check_target(target)?;
        self.ensure_project(project).await?;
        let prow = self.pool_row(pool).await?;
        let content = req.content_type.as_deref().unwrap_or("filesystem");
        if !matches!(content, "filesystem" | "block") {
            return Err(BackendError::BadRequest(format!(
                "content_type {content} is not filesystem or block"
            )));
        }
        let mut config = req.config.clone();
        check_volume_config(content, &config)?;
        if content == "block" {
            config
                .entry("size".into())
                .or_insert_with(|| DEFAULT_BLOCK_SIZE.into());
        }
        let row = VolumeRow {
            pool: pool.as_str().to_owned(),
            project: project.as_str().to_owned(),
            name: req.name.clone(),
            content_type: content.to_owned(),
            description: req.description.clone(),
            config: serde_json::to_string(&config).unwrap_or_else(|_| "{}".into()),
            created_at: now(),
        };
        inv::insert_volume(&self.pool, &row)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    BackendError::Conflict("Storage volume already exists".into())
                }
                e => db(e),
            })?;
        let made = async {
            // Closed (also a pool made by an older lxgate) before the
            // volume is made in it.
            let dir = self.custom_dir(&prow).await?;
            let base = dir.join(format!("{project}_{}", req.name));
            if content == "block" {
                let bytes = parse_size(&config["size"]).unwrap_or(1 << 30);
                let disk = base.with_extension("qcow2");
                run(
                    "qemu-img",
                    [
                        "create".as_ref(),
                        "-q".as_ref(),
                        "-f".as_ref(),
                        "qcow2".as_ref(),
                        disk.as_os_str(),
                        bytes.to_string().as_ref(),
                    ],
                    Duration::from_secs(60),
                )
                .await?;
                // qemu-img makes it 0644; nobody but root could reach it
                // through custom/ meanwhile.
                tokio::task::spawn_blocking(move || close_block_volume(&disk))
                    .await
                    .map_err(|e| BackendError::Internal(anyhow::anyhow!("volume task: {e}")))?
                    .map_err(io("closing the block volume"))
            } else {
                // Its mode stays the default (what the container sees on
                // its mount point, and its root's to change); custom/
                // keeps other host users out.
                tokio::fs::create_dir(&base)
                    .await
                    .map_err(io("creating the volume"))
            }
        }
        .await;
        if let Err(e) = made {
            let _ = inv::delete_volume(&self.pool, pool, project, &req.name).await;
            return Err(e);
        }
        lifecycle(
            &self.bus,
            project,
            "storage-volume-created",
            &resource_url(
                project,
                &format!("storage-pools/{pool}/volumes/custom/{}", req.name),
            ),
            json!({"type": content}),
        );
        Ok(None)
    }

    async fn update_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        name: &VolumeName,
        update: &StorageVolumeUpdate,
        if_match: Option<&str>,
    ) -> Result<(), BackendError> {
        let (current, tag) = self.get_volume(project, pool, name).await?;
        if let Some(want) = if_match
            && Some(want.trim_matches('"')) != tag.as_deref()
        {
            return Err(BackendError::PreconditionFailed(
                "ETag doesn't match".into(),
            ));
        }
        let mut row = inv::get_volume(&self.pool, pool, project, name)
            .await
            .map_err(db)?
            .ok_or_else(|| no_volume(pool, name))?;
        let mut config = current.config.clone();
        if let Some(c) = &update.config {
            for (k, v) in c {
                match k.as_str() {
                    "size" if current.content_type == "block" => {
                        let bytes = parse_size(v).ok_or_else(|| {
                            BackendError::BadRequest(format!("invalid size {v:?}"))
                        })?;
                        let old = config.get("size").and_then(|s| parse_size(s)).unwrap_or(0);
                        if bytes < old {
                            return Err(BackendError::BadRequest(
                                "a block volume can grow, not shrink".into(),
                            ));
                        }
                        let (path, _) = self.volume_path(pool, project, name).await?;
                        run(
                            "qemu-img",
                            [
                                "resize".as_ref(),
                                "-q".as_ref(),
                                path.as_os_str(),
                                bytes.to_string().as_ref(),
                            ],
                            Duration::from_secs(60),
                        )
                        .await?;
                    }
                    "size" => {
                        return Err(BackendError::NotSupported(
                            "the dir driver cannot enforce the size of a filesystem volume".into(),
                        ));
                    }
                    k if k.starts_with("user.") => {}
                    _ => {
                        return Err(BackendError::BadRequest(format!(
                            "Unknown storage volume configuration key: {k}"
                        )));
                    }
                }
                config.insert(k.clone(), v.clone());
            }
        }
        row.config = serde_json::to_string(&config).unwrap_or_else(|_| "{}".into());
        if let Some(d) = &update.description {
            row.description = d.clone();
        }
        inv::update_volume(&self.pool, &row).await.map_err(db)
    }

    /// Done before it returns: no operation.
    async fn delete_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        name: &VolumeName,
    ) -> Result<Option<Operation>, BackendError> {
        self.volume_path(pool, project, name).await?;
        // Not while a snapshot, restore or copy of it runs; what it is and
        // who uses it are read under the lock.
        let _guard = self.volume_lock(pool, project, name).lock_owned().await;
        let (path, _) = self.volume_path(pool, project, name).await?;
        if !self.volume_used_by(pool, project, name).await.is_empty() {
            return Err(BackendError::Conflict(
                "The storage volume is attached to an instance; detach it first".into(),
            ));
        }
        let snapshots = self.volume_snapshot_dir(pool, project, name).await?;
        inv::delete_volume(&self.pool, pool, project, name)
            .await
            .map_err(db)?;
        // Its snapshots go with it, as in Incus.
        inv::delete_volume_snapshots(&self.pool, pool, project, name, None)
            .await
            .map_err(db)?;
        remove_volume_data(&path).await?;
        remove_volume_data(&snapshots).await?;
        lifecycle(
            &self.bus,
            project,
            "storage-volume-deleted",
            &resource_url(
                project,
                &format!("storage-pools/{pool}/volumes/custom/{name}"),
            ),
            json!({}),
        );
        Ok(None)
    }

    /// The copy runs as an operation: the data is copied while it holds
    /// the source volume's lock (no restore swaps it meanwhile); the new
    /// volume's row is written first, so its name is taken at once.
    async fn copy_volume(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        req: &VolumeCopy,
        target: Option<&MemberName>,
    ) -> Result<Operation, BackendError> {
        super::cluster::check_target(target)?;
        self.ensure_project(project).await?;
        let prow = self.pool_row(pool).await?;
        let (source_path, content) = self
            .volume_path(&req.source_pool, project, &req.source_volume)
            .await?;
        let from = match &req.source_snapshot {
            Some(snap) => {
                inv::get_volume_snapshot(
                    &self.pool,
                    &req.source_pool,
                    project,
                    &req.source_volume,
                    snap,
                )
                .await
                .map_err(db)?
                .ok_or_else(|| no_snapshot(&req.source_pool, &req.source_volume, snap))?;
                snapshot_data(
                    &self
                        .volume_snapshot_dir(&req.source_pool, project, &req.source_volume)
                        .await?,
                    snap,
                    &content,
                )
            }
            // A block source in use is refused under the lock, below.
            None => source_path,
        };
        let mut config = req.config.clone();
        check_volume_config(&content, &config)?;
        if req.source_pool.as_str() == pool.as_str() && req.source_volume == req.name {
            return Err(BackendError::Conflict(
                "Storage volume already exists".into(),
            ));
        }
        // Both volumes' locks, in order, before the new one's row claims its
        // name: nothing deletes, snapshots or restores the copy while it is
        // made, nothing changes the source while it is read, and a request
        // that goes away while waiting leaves nothing behind.
        let (src_key, dst_key) = (
            (req.source_pool.to_string(), req.source_volume.to_string()),
            (pool.to_string(), req.name.to_string()),
        );
        let mut keys = [&src_key, &dst_key];
        keys.sort();
        let mut guards = Vec::with_capacity(2);
        for (p, v) in keys {
            guards.push(self.volume_lock(p, project, v).lock_owned().await);
        }
        if content == "block" && req.source_snapshot.is_none() {
            // Under the lock: a VM starting with it waits for the copy.
            let users = self
                .volume_running_users(&req.source_pool, project, &req.source_volume)
                .await?;
            if !users.is_empty() {
                return Err(BackendError::Conflict(format!(
                    "the block volume is in use by running instances ({}): stop them, or copy a snapshot",
                    users.join(", ")
                )));
            }
        }
        // A block copy is its source's disk (the volume's, or the
        // snapshot's as it was then), grown if the config asks for more.
        let (source_size, size) = if content == "block" {
            let had = super::qcow::virtual_size(&from).await?;
            let want = match config.get("size") {
                Some(s) => parse_size(s).unwrap_or(0),
                None => {
                    config.insert("size".into(), had.to_string());
                    had
                }
            };
            (had, want)
        } else {
            (0, 0)
        };
        if size < source_size {
            return Err(BackendError::BadRequest(
                "a copy of a block volume can grow, not shrink".into(),
            ));
        }
        // Closed (also a pool made by an older lxgate) before the copy
        // lands in it.
        self.custom_dir(&prow).await?;
        let to = {
            let base = self
                .pool_dir(&prow)
                .join("custom")
                .join(format!("{project}_{}", req.name));
            if content == "block" {
                base.with_extension("qcow2")
            } else {
                base
            }
        };
        // Data already where the copy would go (left by something else, or
        // a pool sharing another's directory) is never overwritten, nor
        // removed by a failed copy.
        if tokio::fs::symlink_metadata(&to).await.is_ok() {
            return Err(BackendError::Conflict(
                "the pool already holds data under this volume's name".into(),
            ));
        }
        let row = VolumeRow {
            pool: pool.as_str().to_owned(),
            project: project.as_str().to_owned(),
            name: req.name.as_str().to_owned(),
            content_type: content.clone(),
            description: req.description.clone(),
            config: serde_json::to_string(&config).unwrap_or_else(|_| "{}".into()),
            created_at: now(),
        };
        inv::insert_volume(&self.pool, &row)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    BackendError::Conflict("Storage volume already exists".into())
                }
                e => db(e),
            })?;
        let (db_pool, bus) = (self.pool.clone(), self.bus.clone());
        let url = resource_url(
            project,
            &format!("storage-pools/{pool}/volumes/custom/{}", req.name),
        );
        let (project_owned, pool_owned, name) =
            (project.to_string(), pool.to_string(), req.name.to_string());
        Ok(self.ops.start(
            project,
            "Copying storage volume",
            resources(
                "storage_volumes",
                project,
                &format!("storage-pools/{pool}/volumes/custom/{}", req.name),
            ),
            false,
            move |_ctx| async move {
                let _guards = guards;
                let copied = async {
                    copy_volume_data(&from, &to, &content).await?;
                    if size > source_size {
                        run(
                            "qemu-img",
                            [
                                "resize".as_ref(),
                                "-q".as_ref(),
                                "-f".as_ref(),
                                "qcow2".as_ref(),
                                to.as_os_str(),
                                size.to_string().as_ref(),
                            ],
                            Duration::from_secs(60),
                        )
                        .await?;
                    }
                    Ok::<_, BackendError>(())
                }
                .await;
                if let Err(e) = copied {
                    let _ = remove_volume_data(&to).await;
                    let _ = inv::delete_volume(&db_pool, &pool_owned, &project_owned, &name).await;
                    return Err(OpError::from(e));
                }
                lifecycle(
                    &bus,
                    &project_owned,
                    "storage-volume-created",
                    &url,
                    json!({"type": content}),
                );
                Ok(serde_json::Value::Null)
            },
        ))
    }
}

impl EmbeddedBackend {
    /// Host paths and targets of an instance's volume devices, checked: the
    /// volumes exist in its project, paths are absolute and plain, and the
    /// content type suits the instance type.
    pub(super) async fn volume_mounts(
        &self,
        project: &str,
        devices: &DevicesMap,
        vm: bool,
    ) -> Result<Vec<(PathBuf, String)>, BackendError> {
        let mut out = Vec::new();
        for (dev, d) in devices {
            // NICs are the networks'; an instance's own root disk (as a
            // profile may hold it) is where its files are anyway.
            if super::networks::nic_network(d).is_some() || super::profiles::plain_root_disk(d) {
                continue;
            }
            let Some((pool, source)) = volume_device(d) else {
                return Err(BackendError::NotSupported(format!(
                    "device {dev}: the embedded backend attaches custom storage volumes (disk devices with pool and source) and NICs on its managed networks only"
                )));
            };
            let (path, content) =
                self.volume_path(pool, project, source)
                    .await
                    .map_err(|e| match e {
                        BackendError::NotFound(_) => BackendError::BadRequest(format!(
                            "device {dev}: volume {source} does not exist in pool {pool}"
                        )),
                        e => e,
                    })?;
            let target = d.get("path").cloned().unwrap_or_default();
            match (vm, content.as_str()) {
                (false, "filesystem") => {
                    if !plain_mount_target(&target) {
                        return Err(BackendError::BadRequest(format!(
                            "device {dev}: path must be an absolute, plain path in the container"
                        )));
                    }
                }
                (true, "block") => {}
                (false, _) => {
                    return Err(BackendError::BadRequest(format!(
                        "device {dev}: a container takes filesystem volumes"
                    )));
                }
                (true, _) => {
                    return Err(BackendError::NotSupported(format!(
                        "device {dev}: a VM takes block volumes (sharing a filesystem needs virtiofs)"
                    )));
                }
            }
            out.push((path, target));
        }
        Ok(out)
    }
}

/// A volume's mount point in a container as it may go into an LXC mount
/// entry, as `MOUNT_PATH_PATTERN` has it: absolute, components that are
/// not empty, `.` or `..` (so not `/` nor `//`, which would leave the
/// entry's target field empty), an optional trailing `/`, only ASCII
/// letters, digits, `/`, `.`, `_` and `-` (no whitespace: fstab fields).
pub(crate) fn plain_mount_target(target: &str) -> bool {
    let Some(rest) = target.strip_prefix('/') else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    !rest.is_empty()
        && rest
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
}
