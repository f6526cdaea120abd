//! Snapshots of the embedded backend's custom volumes: a row each in the
//! inventory, the data a copy of the volume's in the pool's
//! `custom-snapshots/<project>_<volume>/` (a directory only root may enter,
//! so no container reaches a snapshot): `<snap>/` for a filesystem volume,
//! `<snap>.qcow2` for a block one. Taking, deleting and restoring one run
//! as operations, one at a time per volume (`volume_lock`).

use serde_json::{Value, json};

use super::inventory::db;
use super::operations::{OpError, lifecycle, now, resource_url};
use super::snapshots::private_dir;
use super::storage::{copy_volume_data, no_snapshot, remove_volume_data, snapshot_data};
use super::{EmbeddedBackend, resources};
use crate::backend::types::{Operation, StorageVolumeSnapshot, StorageVolumeSnapshotCreate};
use crate::backend::{BackendError, Listing, VolumeSnapshots};
use crate::db::embedded::{self as inv, VolumeSnapshotRow};
use crate::names::{PoolName, ProjectName, SnapshotName, VolumeName};

/// What a snapshot that never expires says (as Incus).
use super::expiry::NEVER;

fn to_snapshot(r: VolumeSnapshotRow, content_type: &str) -> StorageVolumeSnapshot {
    StorageVolumeSnapshot {
        name: r.name,
        description: r.description,
        config: serde_json::from_str(&r.config).unwrap_or_default(),
        content_type: content_type.to_owned(),
        created_at: r.created_at,
        expires_at: r.expires_at,
    }
}

/// The `/1.0/...` URL of a volume snapshot, for operations and events.
fn snapshot_url(project: &str, pool: &str, volume: &str, snap: &str) -> String {
    resource_url(
        project,
        &format!("storage-pools/{pool}/volumes/custom/{volume}/snapshots/{snap}"),
    )
}

impl EmbeddedBackend {
    /// The volume's content type, or its 404.
    async fn volume_content(
        &self,
        project: &str,
        pool: &str,
        volume: &str,
    ) -> Result<String, BackendError> {
        Ok(self.volume_path(pool, project, volume).await?.1)
    }

    async fn volume_snapshot_row(
        &self,
        project: &str,
        pool: &str,
        volume: &str,
        snap: &str,
    ) -> Result<VolumeSnapshotRow, BackendError> {
        inv::get_volume_snapshot(&self.pool, pool, project, volume, snap)
            .await
            .map_err(db)?
            .ok_or_else(|| no_snapshot(pool, volume, snap))
    }
}

#[async_trait::async_trait]
impl VolumeSnapshots for EmbeddedBackend {
    async fn list_volume_snapshots(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        expand: bool,
    ) -> Result<Listing<StorageVolumeSnapshot>, BackendError> {
        let content = self.volume_content(project, pool, volume).await?;
        let rows = inv::list_volume_snapshots(&self.pool, pool, project, volume)
            .await
            .map_err(db)?;
        Ok(if expand {
            Listing::Full(rows.into_iter().map(|r| to_snapshot(r, &content)).collect())
        } else {
            Listing::Names(rows.into_iter().map(|r| r.name).collect())
        })
    }

    async fn get_volume_snapshot(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        snap: &SnapshotName,
    ) -> Result<StorageVolumeSnapshot, BackendError> {
        let content = self.volume_content(project, pool, volume).await?;
        let row = self
            .volume_snapshot_row(project, pool, volume, snap)
            .await?;
        Ok(to_snapshot(row, &content))
    }

    /// A filesystem volume is copied as it is, in use or not (as Incus's
    /// `dir` driver does); a block volume only while no running VM writes
    /// to it.
    async fn create_volume_snapshot(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        req: &StorageVolumeSnapshotCreate,
    ) -> Result<Operation, BackendError> {
        let (from, content) = self.volume_path(pool, project, volume).await?;
        // Taken before the row claims the name (a request that goes away
        // while waiting leaves nothing behind); a VM starting with the
        // volume waits for it (`lock_attached_volumes`).
        let guard = self.volume_lock(pool, project, volume).lock_owned().await;
        if content == "block" {
            let users = self.volume_running_users(pool, project, volume).await?;
            if !users.is_empty() {
                return Err(BackendError::Conflict(format!(
                    "the block volume is in use by running instances ({}): stop them first",
                    users.join(", ")
                )));
            }
        }
        let (vol, _) = crate::backend::Storage::get_volume(self, project, pool, volume).await?;
        let existing = inv::list_volume_snapshots(&self.pool, pool, project, volume)
            .await
            .map_err(db)?;
        let snap = match &req.name {
            Some(n) => n.clone(),
            None => (0..)
                .map(|i| format!("snap{i}"))
                .find(|n| existing.iter().all(|r| &r.name != n))
                .expect("a free name"),
        };
        let row = VolumeSnapshotRow {
            pool: pool.to_string(),
            project: project.to_string(),
            volume: volume.to_string(),
            name: snap.clone(),
            description: vol.description,
            config: serde_json::to_string(&vol.config).unwrap_or_else(|_| "{}".into()),
            created_at: now(),
            expires_at: req.expires_at.clone().unwrap_or_else(|| NEVER.into()),
        };
        let dir = self.volume_snapshot_dir(pool, project, volume).await?;
        // The row claims the name before any data is copied.
        inv::insert_volume_snapshot(&self.pool, &row)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    BackendError::Conflict(format!("Snapshot \"{snap}\" already exists"))
                }
                e => db(e),
            })?;
        self.expiry_changed();
        let to = snapshot_data(&dir, &snap, &content);
        let (db_pool, bus) = (self.pool.clone(), self.bus.clone());
        let url = snapshot_url(project, pool, volume, &snap);
        let (project_owned, pool_owned, volume_owned) =
            (project.to_string(), pool.to_string(), volume.to_string());
        Ok(self.ops.start(
            project,
            "Creating storage volume snapshot",
            resources(
                "storage_volumes",
                project,
                &format!("storage-pools/{pool}/volumes/custom/{volume}"),
            ),
            false,
            move |_ctx| async move {
                let _guard = guard;
                let made = async {
                    // Both levels root's and closed: the copy keeps the
                    // tenant's owners and modes inside.
                    if let Some(parent) = dir.parent() {
                        private_dir(parent).await?;
                    }
                    private_dir(&dir).await?;
                    copy_volume_data(&from, &to, &content).await
                }
                .await;
                if let Err(e) = made {
                    let _ = remove_volume_data(&to).await;
                    let _ = inv::delete_volume_snapshots(
                        &db_pool,
                        &pool_owned,
                        &project_owned,
                        &volume_owned,
                        Some(&row.name),
                    )
                    .await;
                    return Err(OpError::from(e));
                }
                lifecycle(
                    &bus,
                    &project_owned,
                    "storage-volume-snapshot-created",
                    &url,
                    json!({"type": content}),
                );
                Ok(Value::Null)
            },
        ))
    }

    async fn delete_volume_snapshot(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        snap: &SnapshotName,
    ) -> Result<Operation, BackendError> {
        let content = self.volume_content(project, pool, volume).await?;
        self.volume_snapshot_row(project, pool, volume, snap)
            .await?;
        let guard = self.volume_lock(pool, project, volume).lock_owned().await;
        let data = snapshot_data(
            &self.volume_snapshot_dir(pool, project, volume).await?,
            snap,
            &content,
        );
        let (db_pool, bus) = (self.pool.clone(), self.bus.clone());
        let url = snapshot_url(project, pool, volume, snap);
        let (project_owned, pool_owned, volume_owned, snap_owned) = (
            project.to_string(),
            pool.to_string(),
            volume.to_string(),
            snap.to_string(),
        );
        Ok(self.ops.start(
            project,
            "Deleting storage volume snapshot",
            resources(
                "storage_volumes",
                project,
                &format!("storage-pools/{pool}/volumes/custom/{volume}"),
            ),
            false,
            move |_ctx| async move {
                let _guard = guard;
                // The row last: a failure leaves the snapshot listed, to be
                // deleted again.
                remove_volume_data(&data).await?;
                inv::delete_volume_snapshots(
                    &db_pool,
                    &pool_owned,
                    &project_owned,
                    &volume_owned,
                    Some(&snap_owned),
                )
                .await
                .map_err(db)?;
                lifecycle(
                    &bus,
                    &project_owned,
                    "storage-volume-snapshot-deleted",
                    &url,
                    json!({}),
                );
                Ok(Value::Null)
            },
        ))
    }

    /// The snapshot's data is copied next to the volume's, then the two are
    /// swapped by renaming: a failed copy changes nothing. Refused while a
    /// running instance has the volume attached (its mount would keep the
    /// old data), as Incus refuses it.
    async fn restore_volume_snapshot(
        &self,
        project: &ProjectName,
        pool: &PoolName,
        volume: &VolumeName,
        snap: &SnapshotName,
    ) -> Result<Option<Operation>, BackendError> {
        let (path, content) = self.volume_path(pool, project, volume).await?;
        self.volume_snapshot_row(project, pool, volume, snap)
            .await?;
        let refuse_if_used = async || {
            let users = self.volume_running_users(pool, project, volume).await?;
            if users.is_empty() {
                Ok(())
            } else {
                Err(BackendError::Conflict(format!(
                    "Cannot restore custom volume used by running instances ({})",
                    users.join(", ")
                )))
            }
        };
        refuse_if_used().await?;
        let guard = self.volume_lock(pool, project, volume).lock_owned().await;
        // Again under the lock: the snapshot may have gone meanwhile.
        self.volume_snapshot_row(project, pool, volume, snap)
            .await?;
        refuse_if_used().await?;
        let from = snapshot_data(
            &self.volume_snapshot_dir(pool, project, volume).await?,
            snap,
            &content,
        );
        // Beside the volume in `custom/` (so the renames stay on one file
        // system), under names no volume has: theirs never start with `.`.
        let file_name = path
            .file_name()
            .expect("a volume path has a file name")
            .to_string_lossy()
            .into_owned();
        let fresh = path.with_file_name(format!(".restoring-{file_name}"));
        let old = path.with_file_name(format!(".restored-{file_name}"));
        let bus = self.bus.clone();
        let url = resource_url(
            project,
            &format!("storage-pools/{pool}/volumes/custom/{volume}"),
        );
        let (project_owned, snap_owned) = (project.to_string(), snap.to_string());
        Ok(Some(self.ops.start(
            project,
            "Restoring storage volume snapshot",
            resources(
                "storage_volumes",
                project,
                &format!("storage-pools/{pool}/volumes/custom/{volume}"),
            ),
            false,
            move |_ctx| async move {
                let _guard = guard;
                // A restore cut short between its two renames (lxgate
                // killed) left the volume's data aside: put it back first.
                if tokio::fs::symlink_metadata(&path).await.is_err()
                    && tokio::fs::symlink_metadata(&old).await.is_ok()
                {
                    tokio::fs::rename(&old, &path).await.map_err(|e| {
                        OpError::Failed(format!("putting back an interrupted restore: {e}"))
                    })?;
                }
                remove_volume_data(&fresh).await?;
                if let Err(e) = copy_volume_data(&from, &fresh, &content).await {
                    let _ = remove_volume_data(&fresh).await;
                    return Err(OpError::from(e));
                }
                remove_volume_data(&old).await?;
                tokio::fs::rename(&path, &old)
                    .await
                    .map_err(|e| OpError::Failed(format!("moving the volume aside: {e}")))?;
                if let Err(e) = tokio::fs::rename(&fresh, &path).await {
                    // Put the volume back as it was.
                    let _ = tokio::fs::rename(&old, &path).await;
                    return Err(OpError::Failed(format!(
                        "putting the snapshot in place: {e}"
                    )));
                }
                remove_volume_data(&old).await?;
                lifecycle(
                    &bus,
                    &project_owned,
                    "storage-volume-restored",
                    &url,
                    json!({"snapshot": snap_owned}),
                );
                Ok(Value::Null)
            },
        )))
    }
}
